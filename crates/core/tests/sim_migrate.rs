//! Deterministic simulations of live migrations through the migration engine, between real TCP
//! stacks we did not write (smoltcp 0.14 for the server and the devices), over seeded links with
//! delay, rate, loss and reordering.
//!
//! Topology: a server (198.19.0.2:8080) behind the proxy's SNAT address, a phone (198.18.0.1)
//! and a PC (198.18.0.3) in front of its VIP (198.18.0.10). A device opens the connection to
//! VIP:80; a migration target connects to VIP:<migration port>. The harness plays the NAT (it
//! maps legs to addresses and ports) and the control plane (MFR, MTR); everything about TCP is
//! the engine's.
//!
//! Every scenario asserts from the outside:
//! - the bytes delivered across the devices (each device up to the next resume point, the last
//!   one to the end) are exactly the server's stream;
//! - the server's stack never received a RST, a FIN it had not earned, or an ACK for data it
//!   never sent, and never retransmitted between the MFR and the resumption (with lossless device
//!   links: never at all);
//! - the engine's caches are empty (budget refunded) when the flows are over.
//!
//! A bounded drive (steps and virtual time) fails any scenario that livelocks; the seed is in
//! every failure message.

mod sim;

use sim::migration::{migrated, run, scenario, World};
use sim::Link;
use smoltcp::socket::tcp::State;
use tsmp_core::migrate::engine::{Failure, MigrateError, Phase};

// ---------------------------------------------------------------------- scenarios

#[test]
fn migrate_in_slow_start() {
    let mut sc = scenario("slow-start", 1);
    sc.migrate_after = 20_000;
    let w = run(sc);
    migrated(&w);
}

#[test]
fn migrate_in_congestion_avoidance_after_induced_loss() {
    let mut sc = scenario("congestion-avoidance", 2);
    sc.early_server_loss = 20;
    sc.migrate_after = 300_000;
    sc.total = 900_000;
    let w = run(sc);
    migrated(&w);
}

#[test]
fn migrate_under_loss_on_either_device_link() {
    for (i, loss) in [0u32, 10, 50].into_iter().enumerate() {
        for on_phone in [true, false] {
            let mut sc = scenario("device-link-loss", 10 + i as u64 * 2 + u64::from(on_phone));
            if on_phone {
                sc.phone.link.loss = loss;
                sc.phone.link.reorder = 10;
            } else {
                sc.pc.link.loss = loss;
                sc.pc.link.reorder = 10;
            }
            let w = run(sc);
            migrated(&w);
        }
    }
}

#[test]
fn window_scale_combinations() {
    // smoltcp's shift is log2(receive buffer) - 16: 64 KiB -> 0, 8 MiB -> 7, 1 GiB -> 14.
    let sizes = [64 * 1024, 8 << 20, 1 << 30];
    for (a, &old) in sizes.iter().enumerate() {
        for (b, &new) in sizes.iter().enumerate() {
            let mut sc = scenario("wscale", 100 + (a * 3 + b) as u64);
            sc.phone.rx_buf = old;
            sc.pc.rx_buf = new;
            sc.total = 400_000;
            sc.migrate_after = 100_000;
            let w = run(sc);
            migrated(&w);
        }
    }
}

#[test]
fn timestamps_on_and_off_per_leg() {
    for (k, (server, old, new)) in [
        (true, true, true),
        (true, true, false),
        (true, false, true),
        (false, true, true),
        (false, false, false),
    ]
    .into_iter()
    .enumerate()
    {
        let mut sc = scenario("timestamps", 200 + k as u64);
        sc.server_ts = server;
        sc.phone.ts = old;
        sc.pc.ts = new;
        sc.total = 300_000;
        sc.migrate_after = 80_000;
        let w = run(sc);
        migrated(&w);
    }
}

#[test]
fn sack_on_and_off() {
    for (k, (old, new)) in [(true, false), (false, true), (false, false)]
        .into_iter()
        .enumerate()
    {
        let mut sc = scenario("sack", 300 + k as u64);
        sc.phone.sack = old;
        sc.pc.sack = new;
        sc.pc.link.loss = 10;
        sc.total = 300_000;
        sc.migrate_after = 80_000;
        let w = run(sc);
        migrated(&w);
    }
}

#[test]
fn new_device_with_a_smaller_mss() {
    let mut sc = scenario("small-mss", 400);
    sc.pc.mtu = 576;
    let w = run(sc);
    migrated(&w);
    let fr = &w.flows[0];
    assert!(fr.eng.stats.replayed_bytes > 0, "something was replayed");
}

#[test]
fn old_device_gone_without_acking() {
    let mut sc = scenario("old-device-gone", 500);
    sc.cut_old = true;
    let w = run(sc);
    migrated(&w);
    assert!(
        w.flows[0].eng.stats.replayed_bytes > 0,
        "the bytes in flight to the vanished phone came from the cache"
    );
}

#[test]
fn new_device_never_connects_returns_to_the_old_device() {
    let mut sc = scenario("never-connects", 600);
    sc.target_connects = false;
    sc.engine.deadline_us = 500_000;
    let w = run(sc);
    let fr = &w.flows[0];
    assert_eq!(fr.cancelled, Some(Failure::Deadline), "{:?}", fr.timeline);
    assert!(fr.reset.is_none());
    assert_eq!(w.socks[fr.devs[&0]].rx.len() as u64, w.sc.total);
}

#[test]
fn new_device_never_connects_and_old_is_gone_resets_both_ends() {
    let mut sc = scenario("never-connects-old-gone", 601);
    sc.target_connects = false;
    sc.engine.deadline_us = 500_000;
    let mut w: World<Vec<u8>> = World::new(sc);
    // The old device's application closes its socket right after the MFR: the proxy answers
    // its FIN, so no device can take the flow when the deadline passes.
    let mut closed = false;
    while w.flows[0].reset.is_none() {
        if !closed && w.flows[0].migrating {
            let i = w.flows[0].devs[&0];
            w.socks[i].host.socket().close();
            closed = true;
        }
        w.step();
    }
    let fr = &w.flows[0];
    assert_eq!(fr.reset, Some(Failure::Deadline), "{:?}", fr.timeline);
    assert_eq!(fr.eng.phase(), Phase::Closed);
    assert_eq!(w.budget.used, 0, "caches released");
    // Let the RST reach the server.
    let until = w.now + 100_000;
    while w.now < until && w.heap.peek().is_some() {
        w.step();
    }
    let si = w.flows[0].server;
    let state = w.socks[si].host.socket().state();
    assert!(
        matches!(state, State::Closed | State::Listen),
        "the server's connection was reset, not left hanging: {state}"
    );
}

#[test]
fn back_and_forth_ten_times() {
    let mut sc = scenario("back-and-forth", 700);
    sc.hops = 10;
    sc.total = 1_500_000;
    sc.migrate_after = 60_000;
    let w = run(sc);
    migrated(&w);
    assert_eq!(w.flows[0].resumes.len(), 10);
}

#[test]
fn a_thousand_flows_migrate_at_once() {
    let mut sc = scenario("thousand-flows", 800);
    sc.flows = 1000;
    sc.total = 12_000;
    sc.migrate_after = 4_000;
    sc.server_tx_buf = 16 * 1024;
    sc.phone.rx_buf = 16 * 1024;
    sc.pc.rx_buf = 16 * 1024;
    sc.phone.link = Link::new(20_000, 100_000_000, 0);
    sc.pc.link = Link::new(5_000, 1_000_000_000, 0);
    sc.budget = 256 << 20;
    let w = run(sc);
    migrated(&w);
}

#[test]
fn chat_both_ways_across_a_migration() {
    let mut sc = scenario("chat", 900);
    sc.client_bytes = 60_000;
    sc.phone.link.loss = 10;
    let w = run(sc);
    migrated(&w);
    let fr = &w.flows[0];
    assert!(
        fr.client_starts[0].1 > 0,
        "the old device's bytes reached the server first"
    );
    assert_eq!(
        w.socks[fr.devs[&1]].sent, 60_000,
        "the new device wrote its part"
    );
}

#[test]
fn old_device_gone_with_unacknowledged_client_data() {
    // The phone is cut off right after the MFR: whatever of its data the proxy holds and the
    // server has not acknowledged, the proxy delivers itself.
    let mut sc = scenario("chat-old-gone", 901);
    sc.client_bytes = 200_000;
    sc.cut_old = true;
    sc.server_link = Link::new(15_000, 1_000_000_000, 0);
    let w = run(sc);
    migrated(&w);
}

#[test]
fn chat_back_and_forth() {
    let mut sc = scenario("chat-back-and-forth", 902);
    sc.client_bytes = 20_000;
    sc.hops = 4;
    sc.total = 900_000;
    sc.migrate_after = 80_000;
    let w = run(sc);
    migrated(&w);
    assert_eq!(w.flows[0].client_starts.len(), 4);
}

#[test]
fn explicit_resume_offset_is_what_the_application_consumed() {
    let mut sc = scenario("explicit-offset", 903);
    sc.explicit_offset = true;
    let w = run(sc);
    migrated(&w);
    let fr = &w.flows[0];
    assert_eq!(
        fr.resumes[0].1, fr.consumed_at_mfr[0],
        "the new device starts exactly where the old application stopped reading"
    );
}

#[test]
fn explicit_offset_no_longer_cached_is_refused() {
    let mut w: World<Vec<u8>> = World::new(scenario("offset-refused", 904));
    while w.socks[w.flows[0].devs[&0]].rx.len() < 100_000 {
        w.sc.hops = 0; // the harness's control plane stays out of the way
        w.step();
    }
    let now = w.now;
    let r = w.flows[0].eng.migrate(now, Some(10), &mut w.budget);
    assert!(
        matches!(r, Err(MigrateError::NotCached { offset: 10, .. })),
        "{r:?}"
    );
    let r = w.flows[0]
        .eng
        .migrate(now, Some(u64::from(u32::MAX)), &mut w.budget);
    assert!(
        matches!(r, Err(MigrateError::OffsetBeyondStream { .. })),
        "{r:?}"
    );
    assert!(r.unwrap_err().to_string().contains("beyond"));
    assert_eq!(
        w.flows[0].eng.phase(),
        Phase::Forwarding,
        "refusals change nothing"
    );
    w.sc.hops = 0;
    w.run();
    w.verify();
}

#[test]
fn new_device_resets_during_replay_returns_to_the_old_device() {
    let mut sc = scenario("target-resets", 905);
    sc.target_resets = true;
    let w = run(sc);
    let fr = &w.flows[0];
    assert_eq!(
        fr.cancelled,
        Some(Failure::NewDeviceReset),
        "{:?}",
        fr.timeline
    );
    assert_eq!(
        w.socks[fr.devs[&0]].rx.len() as u64,
        w.sc.total,
        "the phone got it all"
    );
}

#[test]
fn flow_cache_limit_refuses_the_migration_and_the_flow_goes_on() {
    let mut sc = scenario("cache-limit", 906);
    sc.engine.flow_cache_bytes = 16 * 1024;
    let w = run(sc);
    let fr = &w.flows[0];
    // The rolling cache could not hold a round trip of data: the resume point is not cached,
    // and the refusal says which limit to raise.
    let r = fr.refusals.first().expect("the MFR was refused");
    assert!(
        matches!(
            r,
            MigrateError::CacheLimit { .. } | MigrateError::NotCached { .. }
        ),
        "{r:?}"
    );
    assert!(r.to_string().contains("raise"), "{r}");
    assert!(fr.eng.stats.rolling_overflow > 0, "the overflow is counted");
    assert_eq!(w.socks[fr.devs[&0]].rx.len() as u64, w.sc.total);
}

/// A scenario drawn from a seed: link loss and reordering on both devices, window scales,
/// timestamps, SACK, a smaller MSS, chat bytes, one to three hops, the old device sometimes cut
/// off. `TSMP_SIM_SEEDS=n` runs n seeds instead of the default 64, `TSMP_SIM_SEED=k`
/// only seed k (with `TSMP_SIM_TRACE=0` to see its packets).
fn random_scenario(seed: u64) -> sim::migration::Scenario {
    let mut r = sim::Rng::new(seed ^ 0x5eed);
    let mut sc = scenario("random", seed);
    let sizes = [64 * 1024, 256 * 1024, 8 << 20];
    for d in [&mut sc.phone, &mut sc.pc] {
        d.link.loss = [0, 0, 5, 10, 30][(r.next() % 5) as usize];
        d.link.reorder = [0, 0, 10][(r.next() % 3) as usize];
        d.rx_buf = sizes[(r.next() % 3) as usize];
        d.ts = r.next() % 4 != 0;
        d.sack = r.next() % 3 != 0;
        d.mtu = if r.next() % 5 == 0 { 576 } else { 1500 };
    }
    sc.server_ts = r.next() % 4 != 0;
    sc.client_bytes = [0, 20_000, 80_000][(r.next() % 3) as usize];
    sc.hops = 1 + (r.next() % 3) as usize;
    sc.migrate_after = 30_000 + r.next() % 80_000;
    // Long enough that every hop happens before the server's FIN (after it, an MFR is refused
    // as "closing", correctly).
    sc.total = (sc.hops as u64 + 2) * sc.migrate_after + r.next() % 300_000;
    // Cutting the old device off while its own link loses client data can leave the server owed
    // bytes that exist nowhere: that ends in a reset (`old_device_gone_leaving_a_hole...`).
    sc.cut_old =
        sc.hops == 1 && r.next() % 4 == 0 && (sc.client_bytes == 0 || sc.phone.link.loss == 0);
    sc
}

#[test]
fn random_scenarios() {
    let n: u64 = std::env::var("TSMP_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let only: Option<u64> = std::env::var("TSMP_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    for seed in only.map_or(0..n, |s| s..s + 1) {
        let sc = random_scenario(seed);
        if only.is_some() {
            eprintln!("{sc:#?}");
        }
        let desc = format!("{sc:?}");
        let w = std::panic::catch_unwind(|| run(sc)).unwrap_or_else(|_| {
            panic!("random scenario seed {seed} failed: {desc}");
        });
        migrated(&w);
    }
}

#[test]
fn old_device_gone_leaving_a_hole_in_its_client_data_resets_both_ends() {
    // The phone's chat segment in flight is lost on its own link, then the phone vanishes: the
    // server is owed bytes nobody has. The engine resets both ends (bounded), it does not splice
    // a stream with a hole.
    let mut sc = scenario("old-gone-with-a-hole", 907);
    sc.cut_old = true;
    sc.hole_at_cut = true;
    sc.client_bytes = 400_000;
    let mut w: World<Vec<u8>> = World::new(sc);
    while w.flows[0].reset.is_none() {
        w.step();
    }
    let fr = &w.flows[0];
    assert_eq!(fr.reset, Some(Failure::ClientDataLost), "{:?}", fr.timeline);
    assert_eq!(fr.eng.phase(), Phase::Closed);
    assert_eq!(w.budget.used, 0, "caches released");
}
