//! Deterministic simulations through the data plane (full NAT and the flows' engines, the glue
//! the worker runs) between two smoltcp TCP stacks,
//! over seeded links with delay, rate, loss and reordering. Each scenario checks from the
//! outside that the client received exactly the server's stream, that the handshake saw the
//! clamped MSS, and that the flow left the proxy's table after the close.

mod sim;

use sim::dataplane::{Net, SERVER};
use sim::{stream_byte, Host, Link};
use smoltcp::socket::tcp::State;
use smoltcp::wire::IpAddress;
use tsmp_core::migrate::engine::EngineConfig;
use tsmp_core::proxy::ProxySettings;

struct Outcome {
    received: u64,
    mismatch: Option<u64>,
    flows_after: usize,
    engines_after: u64,
    finished_at: u64,
    dropped: u64,
    mss_clamped: u64,
}

/// Runs one download of `total` bytes through the data plane; `links` are (client side,
/// server side).
fn download(seed: u64, client_link: Link, server_link: Link, total: u64) -> Outcome {
    let settings = ProxySettings {
        timeout_jitter_ms: 0,
        ..ProxySettings::lab(sim::dataplane::PORT_MACS)
    };
    let server = Host::new(SERVER, 24, [198, 19, 0, 254], 64 * 1024, 1500);
    let mut net = Net::new(seed, &settings, EngineConfig::default(), server);
    net.s_up = server_link.clone();
    net.s_down = server_link;
    let client = Host::new([198, 18, 0, 1], 24, [198, 18, 0, 254], 64 * 1024, 1500);
    let c = net.add_device(client, [198, 18, 0, 1], [2, 0, 0, 0, 0, 0xc1], client_link);
    net.server.socket().listen(8080).unwrap();
    let host = &mut net.devices[c].host;
    let cx = host.iface.context();
    host.sockets
        .get_mut::<smoltcp::socket::tcp::Socket>(host.tcp)
        .connect(cx, (IpAddress::v4(198, 18, 0, 10), 80), 49152)
        .unwrap();

    let (mut sent, mut received, mut mismatch) = (0u64, 0u64, None);
    let mut finished_at = None;
    let mut buf = vec![0u8; 16 * 1024];
    for _step in 0..2_000_000 {
        // Applications.
        let s = net.server.socket();
        while sent < total && s.can_send() {
            let n = ((total - sent) as usize).min(buf.len());
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = stream_byte(seed, sent + i as u64);
            }
            let k = s.send_slice(&buf[..n]).unwrap_or(0);
            sent += k as u64;
            if k == 0 {
                break;
            }
        }
        if sent == total && s.state() == State::Established {
            s.close();
        }
        let c = net.devices[c].host.socket();
        while c.can_recv() {
            let k = c.recv_slice(&mut buf).unwrap_or(0);
            for (i, b) in buf[..k].iter().enumerate() {
                if mismatch.is_none() && *b != stream_byte(seed, received + i as u64) {
                    mismatch = Some(received + i as u64);
                }
            }
            received += k as u64;
            if k == 0 {
                break;
            }
        }
        if c.state() == State::CloseWait {
            c.close();
        }
        if finished_at.is_none() && received == total && !c.may_recv() {
            finished_at = Some(net.now);
        }
        if let Some(t) = finished_at {
            // After the close, let the proxy's close timeout (5 s) pass.
            if net.now > t + 7_000_000 {
                break;
            }
        }
        net.step(16_000);
        assert!(
            net.now < 600_000_000,
            "seed {seed}: no end after 600 virtual seconds (received {received} of {total})"
        );
    }
    let d = &net.devices[c];
    Outcome {
        received,
        mismatch,
        flows_after: net.dp.core().flow_count(),
        engines_after: net.dp.stats().migration.engines_active,
        finished_at: finished_at.unwrap_or(u64::MAX),
        dropped: d.up.dropped + d.down.dropped + net.s_up.dropped + net.s_down.dropped,
        mss_clamped: net.dp.core().stats.mss_clamped,
    }
}

fn check(name: &str, seed: u64, o: &Outcome, total: u64) {
    assert_eq!(
        o.mismatch, None,
        "{name} seed {seed}: stream differs at byte {:?}",
        o.mismatch
    );
    assert_eq!(
        o.received, total,
        "{name} seed {seed}: received {} of {total}",
        o.received
    );
    assert!(
        o.finished_at < u64::MAX,
        "{name} seed {seed}: the connection did not close"
    );
    assert_eq!(
        o.flows_after, 0,
        "{name} seed {seed}: flow still in the proxy after the timeouts"
    );
    assert_eq!(
        o.engines_after, 0,
        "{name} seed {seed}: the flow's engine outlived it"
    );
    // smoltcp announces MSS 1460 on a 1500-byte MTU; the proxy lowers it to its 1400 default.
    assert_eq!(
        o.mss_clamped, 1,
        "{name} seed {seed}: the client's SYN was not clamped"
    );
}

#[test]
fn clean_links() {
    let total = 2 << 20;
    let o = download(
        1,
        Link::new(20_000, 10_000_000, 0),
        Link::new(5_000, 100_000_000, 0),
        total,
    );
    check("clean", 1, &o, total);
    // 2 MiB at 10 Mbit/s takes at least 1.7 s; smoltcp's slow start adds little.
    assert!(
        o.finished_at > 1_600_000 && o.finished_at < 10_000_000,
        "finished at {} us",
        o.finished_at
    );
}

#[test]
fn loss_and_reordering_on_both_sides() {
    let total = 512 << 10;
    for seed in 1..=6u64 {
        let mut phone = Link::new(40_000, 10_000_000, 10);
        phone.reorder = 10;
        let mut srv = Link::new(5_000, 100_000_000, 5);
        srv.reorder = 5;
        let o = download(seed, phone, srv, total);
        check("lossy", seed, &o, total);
        assert!(o.dropped > 0, "seed {seed}: the links dropped nothing");
    }
}
