//! A migration through the [`Dataplane`](tsmp_core::dataplane::Dataplane), the glue the
//! appliance's worker runs (engine arena, timers, emitted segments, the NAT's switch to the new
//! device, expiry and release), between smoltcp stacks over seeded links.
//!
//! The server is a chat: it writes small messages one by one (Nagle off). The phone walks out of
//! coverage (its link goes dead), so the segments forwarded to it stay unacknowledged in the
//! rolling cache: many small ones; when Bob moves the chat to his PC, every replayed segment
//! toward the PC is gathered from many cached buffers (more than the eight a segment used to be
//! cut to). Checked from the outside: the phone's bytes up to the resume point followed by
//! the PC's are exactly the server's stream, the replay really spanned many buffers, the flow
//! ends on the PC, and after the close nothing is left in the tables or the cache.

mod sim;

use sim::dataplane::{tuple, Net, PORT_MACS, SERVER, VIP};
use sim::{stream_byte, ts_pc, ts_phone, ts_server, Host, Link};
use smoltcp::socket::tcp::State;
use smoltcp::wire::IpAddress;
use tsmp_core::migrate::engine::{EngineConfig, Event};
use tsmp_core::proxy::ProxySettings;

const PHONE: [u8; 4] = [198, 18, 0, 1];
const PC: [u8; 4] = [198, 18, 0, 3];
const CHAT_PORT: u16 = 6667;
/// Bytes of one chat message (one segment each: Nagle is off).
const MESSAGE: usize = 60;

fn connect(net: &mut Net, dev: usize, port: u16, local: u16) {
    let host = &mut net.devices[dev].host;
    let cx = host.iface.context();
    host.sockets
        .get_mut::<smoltcp::socket::tcp::Socket>(host.tcp)
        .connect(
            cx,
            (IpAddress::v4(VIP[0], VIP[1], VIP[2], VIP[3]), port),
            local,
        )
        .unwrap();
}

/// Reads what `dev` received into `into`.
fn read(net: &mut Net, dev: usize, into: &mut Vec<u8>) {
    let s = net.devices[dev].host.socket();
    let mut buf = [0u8; 4096];
    while s.can_recv() {
        let k = s.recv_slice(&mut buf).unwrap_or(0);
        if k == 0 {
            break;
        }
        into.extend_from_slice(&buf[..k]);
    }
}

struct Run {
    phone: Vec<u8>,
    pc: Vec<u8>,
    resume_offset: u64,
    replayed: u64,
    total: u64,
    net: Net,
}

/// The chat: `messages` messages, one every 2 ms; after the phone read `lost_after` of them its
/// link goes dead, `dead_us` later the flow is moved to the PC, which connects 20 ms after that.
fn chat(seed: u64, messages: u64, lost_after: u64, dead_us: u64, link: Link) -> Run {
    chat_with(seed, messages, lost_after, dead_us, link, 20_000, 7200)
}

/// [`chat`] with the PC connecting `pc_after_us` after the request, under an idle timeout of
/// `timeout_established_s` for established flows.
fn chat_with(
    seed: u64,
    messages: u64,
    lost_after: u64,
    dead_us: u64,
    link: Link,
    pc_after_us: u64,
    timeout_established_s: u32,
) -> Run {
    let settings = ProxySettings {
        timeout_jitter_ms: 0,
        timeout_established_s,
        ..ProxySettings::lab(PORT_MACS)
    };
    let mut server = Host::new(SERVER, 24, [198, 19, 0, 254], 64 * 1024, 1500);
    server.socket().set_nagle_enabled(false);
    server.socket().set_tsval_generator(Some(ts_server));
    server.socket().listen(CHAT_PORT).unwrap();
    let mut net = Net::new(seed, &settings, EngineConfig::default(), server);
    net.s_up = Link::new(2_000, 100_000_000, 0);
    net.s_down = net.s_up.clone();
    let mut phone = Host::build(
        PHONE,
        24,
        [198, 18, 0, 254],
        (64 * 1024, 64 * 1024),
        1500,
        seed,
    );
    phone.socket().set_tsval_generator(Some(ts_phone));
    let phone = net.add_device(phone, PHONE, [2, 0, 0, 0, 0, 0xc1], link.clone());
    let mut pc = Host::build(
        PC,
        24,
        [198, 18, 0, 254],
        (64 * 1024, 64 * 1024),
        1500,
        !seed,
    );
    pc.socket().set_tsval_generator(Some(ts_pc));
    let pc = net.add_device(pc, PC, [2, 0, 0, 0, 0, 0xc3], link);
    connect(&mut net, phone, CHAT_PORT, 41000);

    let total = messages * MESSAGE as u64;
    let (mut sent, mut next_msg) = (0u64, 0u64);
    let (mut phone_rx, mut pc_rx) = (Vec::new(), Vec::new());
    let mut dead_at = None;
    let mut requested_at = None;
    let mut pc_connected = false;
    let mut closed_at = None;
    for _ in 0..3_000_000 {
        // The server writes a message every gap; it closes after the last.
        let s = net.server.socket();
        if s.state() == State::Established && sent < total && net.now >= next_msg {
            let msg: Vec<u8> = (sent..sent + MESSAGE as u64)
                .map(|i| stream_byte(seed, i))
                .collect();
            if s.send_capacity() - s.send_queue() >= MESSAGE {
                sent += s.send_slice(&msg).unwrap() as u64;
                next_msg = net.now + 2_000;
            }
        }
        if sent == total && s.state() == State::Established {
            s.close();
        }
        if s.state() == State::CloseWait {
            s.close();
        }
        read(&mut net, phone, &mut phone_rx);
        read(&mut net, pc, &mut pc_rx);
        // Bob walks out of coverage once the phone has read `lost_after` messages...
        if dead_at.is_none() && phone_rx.len() as u64 >= lost_after * MESSAGE as u64 {
            dead_at = Some(net.now);
            net.devices[phone].up.loss = 1000;
            net.devices[phone].down.loss = 1000;
        }
        // ... and moves the chat to his PC a while later.
        if requested_at.is_none() && dead_at.is_some_and(|t| net.now >= t + dead_us) {
            let mut io = std::mem::take(&mut net.io);
            let m = net
                .dp
                .start_migration(
                    tuple(PHONE, 41000),
                    tuple(VIP, CHAT_PORT),
                    None,
                    Some(0),
                    Some(u32::from_be_bytes(PC)),
                    &mut io,
                )
                .expect("the data plane accepts the migration");
            net.io = io;
            assert_eq!(m.device, 1);
            requested_at = Some((net.now, m.migration_port));
        }
        if let Some((at, port)) = requested_at {
            if !pc_connected && net.now >= at + pc_after_us {
                connect(&mut net, pc, port, 42000);
                pc_connected = true;
            }
        }
        let done = pc_rx.len() as u64 + resume(&net) >= total;
        let pcs = net.devices[pc].host.socket();
        if pcs.state() == State::CloseWait {
            pcs.close();
        }
        if closed_at.is_none() && done && !pcs.may_recv() {
            closed_at = Some(net.now);
        }
        // After the close, the close timeout takes the flow out of the table: its tracking saw
        // both FINs acknowledged, in the server's numbers (the PC's differ by the splice).
        if closed_at.is_some_and(|t| net.now > t + 8_000_000) {
            break;
        }
        net.step(1_000);
        assert!(
            net.now < 200_000_000,
            "seed {seed}: no end after 120 virtual seconds (phone {} pc {} of {total} bytes; events {:?})",
            phone_rx.len(),
            pc_rx.len(),
            net.events
        );
    }
    let resume_offset = resume(&net);
    let replayed = net
        .event(|e| match e {
            Event::Resumed { replayed, .. } => Some(*replayed),
            _ => None,
        })
        .unwrap_or_else(|| panic!("seed {seed}: never resumed: {:?}", net.events));
    Run {
        phone: phone_rx,
        pc: pc_rx,
        resume_offset,
        replayed,
        total,
        net,
    }
}

/// The resume point the data plane reported (0 before it did).
fn resume(net: &Net) -> u64 {
    net.event(|e| match e {
        Event::Connected { resume_offset, .. } => Some(*resume_offset),
        _ => None,
    })
    .unwrap_or(0)
}

fn check(seed: u64, r: &Run) {
    let at = usize::try_from(r.resume_offset).unwrap();
    assert!(
        r.phone.len() >= at,
        "seed {seed}: resume point {at} beyond what the phone received ({})",
        r.phone.len()
    );
    for (i, b) in r.phone[..at].iter().enumerate() {
        assert_eq!(
            *b,
            stream_byte(seed, i as u64),
            "seed {seed}: phone byte {i}"
        );
    }
    assert_eq!(
        at + r.pc.len(),
        usize::try_from(r.total).unwrap(),
        "seed {seed}: the phone's part up to the resume point and the PC's do not add up to the stream"
    );
    for (i, b) in r.pc.iter().enumerate() {
        let off = r.resume_offset + i as u64;
        assert_eq!(
            *b,
            stream_byte(seed, off),
            "seed {seed}: PC byte at stream offset {off}"
        );
    }
    let dp = &r.net.dp;
    let m = dp.stats().migration;
    assert_eq!(m.migrations_started, 1, "seed {seed}");
    assert_eq!(
        m.migrations_done, 1,
        "seed {seed}: the NAT did not switch to the PC"
    );
    assert_eq!(
        m.emit_failed, 0,
        "seed {seed}: a segment could not be built from the cache"
    );
    assert_eq!(
        dp.core().flow_count(),
        0,
        "seed {seed}: the flow outlived its close: {:?} {:?}",
        (0..4).filter_map(|s| dp.flow_detail(s)).collect::<Vec<_>>(),
        r.net.events
    );
    assert_eq!(
        m.engines_active, 0,
        "seed {seed}: the engine outlived its flow"
    );
    assert_eq!(
        dp.budget().bufs,
        0,
        "seed {seed}: cached buffers left after the flow ended"
    );
    assert_eq!(
        dp.budget().used,
        0,
        "seed {seed}: cached bytes left after the flow ended"
    );
    assert_eq!(r.net.undeliverable, 0, "seed {seed}: frames to nobody");
}

#[test]
fn a_replay_gathers_each_segment_from_many_small_cached_segments() {
    // 300 ms without the phone: ~150 messages of 60 bytes forwarded into the void and cached,
    // so every full-sized replayed segment spans over twenty cached buffers.
    let r = chat(7, 600, 100, 300_000, Link::new(10_000, 50_000_000, 0));
    check(7, &r);
    assert!(
        r.replayed >= 20 * MESSAGE as u64,
        "the replay carried {} bytes: the cache did not fill with small segments",
        r.replayed
    );
}

#[test]
fn a_flow_whose_idle_timer_runs_out_while_frozen_is_held_until_its_migration_ends() {
    // The PC connects 2.5 s after the request, within the deadline (10 s) but past the idle
    // timeout (1 s): the frozen server only probes the zero window, ever more rarely (0.2 s,
    // 0.4 s, 0.8 s, 1.6 s apart), and the idle timer runs out while the flow migrates.
    let r = chat_with(
        5,
        2_000,
        90,
        100_000,
        Link::new(10_000, 50_000_000, 0),
        2_500_000,
        1,
    );
    check(5, &r);
    let m = r.net.dp.stats().migration;
    assert!(m.expiry_held > 0, "the idle timer never ran out: {m:?}");
}

#[test]
fn replays_over_small_segments_survive_loss_and_reordering() {
    for seed in 1..=4u64 {
        let mut link = Link::new(20_000, 20_000_000, 10);
        link.reorder = 10;
        link.reorder_us = 3_000;
        let r = chat(seed, 400, 80, 200_000, link);
        check(seed, &r);
        assert!(
            r.replayed >= 10 * MESSAGE as u64,
            "seed {seed}: replayed {}",
            r.replayed
        );
    }
}

/// A phone with a chat connection through the data plane (established), and a PC beside it;
/// migrations time out after 1 ms.
fn idle_chat() -> (Net, usize, usize) {
    let settings = ProxySettings {
        timeout_jitter_ms: 0,
        ..ProxySettings::lab(PORT_MACS)
    };
    let mut server = Host::new(SERVER, 24, [198, 19, 0, 254], 64 * 1024, 1500);
    server.socket().listen(CHAT_PORT).unwrap();
    let engine = EngineConfig {
        deadline_us: 1_000,
        ..EngineConfig::default()
    };
    let mut net = Net::new(3, &settings, engine, server);
    let link = Link::new(1_000, 100_000_000, 0);
    let phone = Host::new(PHONE, 24, [198, 18, 0, 254], 64 * 1024, 1500);
    let phone = net.add_device(phone, PHONE, [2, 0, 0, 0, 0, 0xc1], link.clone());
    let pc = Host::new(PC, 24, [198, 18, 0, 254], 64 * 1024, 1500);
    let pc = net.add_device(pc, PC, [2, 0, 0, 0, 0, 0xc3], link);
    connect(&mut net, phone, CHAT_PORT, 41000);
    while net.server.socket().state() != State::Established {
        net.step(1_000);
        assert!(net.now < 5_000_000, "no connection");
    }
    (net, phone, pc)
}

#[test]
fn migration_ports_return_to_the_pool_when_their_migrations_end() {
    let (mut net, phone, _) = idle_chat();
    net.dp.refresh_stats();
    let full = net.dp.stats().migration.migration_ports_free;
    assert!(full > 0);
    // 100,000 migrations of the one flow, each cancelled at its deadline (nobody connects):
    // more than the pool holds, so a port kept after its migration would run it dry.
    for i in 0..100_000u64 {
        let mut io = std::mem::take(&mut net.io);
        let m = net.dp.start_migration(
            tuple(PHONE, 41000),
            tuple(VIP, CHAT_PORT),
            None,
            None,
            None,
            &mut io,
        );
        assert!(m.is_ok(), "migration {i}: {m:?}");
        net.now += 2_000;
        net.dp.set_time(net.now);
        net.dp.housekeeping(u32::MAX, &mut io);
        io.out.clear();
        io.events.clear();
        net.io = io;
    }
    net.dp.refresh_stats();
    let m = net.dp.stats().migration;
    assert_eq!(m.migrations_cancelled, 100_000, "{m:?}");
    assert_eq!(m.migration_ports_free, full, "ports leaked: {m:?}");
    // The flow still carries the chat on the phone.
    let msg = b"still here\n";
    net.server.socket().send_slice(msg).unwrap();
    let mut got = Vec::new();
    for _ in 0..2_000 {
        net.step(1_000);
        read(&mut net, phone, &mut got);
        if got.len() >= msg.len() {
            break;
        }
    }
    assert_eq!(got, msg);
}

#[test]
fn a_target_that_connects_after_its_migration_ended_is_refused_with_a_reset() {
    let (mut net, _, pc) = idle_chat();
    let mut io = std::mem::take(&mut net.io);
    let m = net
        .dp
        .start_migration(
            tuple(PHONE, 41000),
            tuple(VIP, CHAT_PORT),
            None,
            None,
            None,
            &mut io,
        )
        .unwrap();
    net.io = io;
    // The deadline passes before the PC connects: cancelled, back on the phone.
    for _ in 0..20 {
        net.step(1_000);
    }
    assert!(net
        .event(|e| matches!(e, Event::Cancelled { .. }).then_some(()))
        .is_some());
    connect(&mut net, pc, m.migration_port, 42000);
    for _ in 0..200 {
        net.step(1_000);
    }
    let s = net.devices[pc].host.socket();
    assert_eq!(
        s.state(),
        State::Closed,
        "the PC's late SYN was answered with a reset, not left hanging"
    );
    assert_eq!(net.dp.core().stats.syn_resets, 1);
}
