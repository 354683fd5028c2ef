//! Deterministic simulations through the proxy core (full NAT) between two smoltcp TCP stacks,
//! over seeded links with delay, rate, loss and reordering. Each scenario checks from the
//! outside that the client received exactly the server's stream, that the handshake saw the
//! clamped MSS, and that the flow left the proxy's table after the close.

mod sim;

use sim::{stream_byte, Host, Link, Rng};
use smoltcp::socket::tcp::State;
use smoltcp::wire::IpAddress;
use tsmp::config::Config;
use tsmp::proxy::FlowHasher;
use tsmp::proxy::{ProxyCore, Verdict};

const PORT_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 0xa0], [2, 0, 0, 0, 0, 0xa1]];
const HOST_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 0xc1], [2, 0, 0, 0, 0, 0x51]];

/// Passes an IPv4 packet that arrived on `port` through the proxy core (wrapped in Ethernet).
fn through(core: &mut ProxyCore, port: usize, ip: Vec<u8>) -> Option<(usize, Vec<u8>)> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&PORT_MACS[port]);
    f.extend_from_slice(&HOST_MACS[port]);
    f.extend_from_slice(&[8, 0]);
    f.extend_from_slice(&ip);
    match core.process(port, &mut f) {
        Verdict::Tx(p) => Some((p, f[14..].to_vec())),
        _ => None,
    }
}

struct Outcome {
    received: u64,
    mismatch: Option<u64>,
    flows_after: usize,
    finished_at: u64,
    dropped: u64,
    mss_clamped: u64,
}

/// Runs one download of `total` bytes; `links` are (client side, server side).
fn download(seed: u64, client_link: Link, server_link: Link, total: u64) -> Outcome {
    let cfg = Config::from_toml(include_str!("../dpdk-config/default.toml"), "default").unwrap();
    let mut core = ProxyCore::new(&cfg, 0, 1, &PORT_MACS, FlowHasher::random(), 0, None).unwrap();
    core.learn(u32::from_be_bytes([198, 19, 0, 2]), HOST_MACS[1]);
    let _ = core.take_arp_requests().count();
    let mut rng = Rng::new(seed);
    let mut client = Host::new([198, 18, 0, 1], 24, [198, 18, 0, 254], 64 * 1024, 1500);
    let mut server = Host::new([198, 19, 0, 2], 24, [198, 19, 0, 254], 64 * 1024, 1500);
    let (mut c2p, mut p2c) = (client_link.clone(), client_link);
    let (mut s2p, mut p2s) = (server_link.clone(), server_link);
    server.socket().listen(8080).unwrap();
    let cx = client.iface.context();
    client
        .sockets
        .get_mut::<smoltcp::socket::tcp::Socket>(client.tcp)
        .connect(cx, (IpAddress::v4(198, 18, 0, 10), 80), 49152)
        .unwrap();

    let (mut sent, mut received, mut mismatch) = (0u64, 0u64, None);
    let mut now = 0u64;
    let mut finished_at = None;
    let mut buf = vec![0u8; 16 * 1024];
    for _step in 0..2_000_000 {
        // Applications.
        let s = server.socket();
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
        let c = client.socket();
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
            finished_at = Some(now);
        }
        // Stacks and links.
        for p in client.poll(now) {
            c2p.send(now, p, &mut rng);
        }
        for p in server.poll(now) {
            s2p.send(now, p, &mut rng);
        }
        core.set_time(now / 1000);
        for p in c2p.due(now) {
            if let Some((1, out)) = through(&mut core, 0, p) {
                p2s.send(now, out, &mut rng);
            }
        }
        for p in s2p.due(now) {
            if let Some((0, out)) = through(&mut core, 1, p) {
                p2c.send(now, out, &mut rng);
            }
        }
        client.dev.rx.extend(p2c.due(now));
        server.dev.rx.extend(p2s.due(now));
        core.expire(u32::MAX);
        if let Some(t) = finished_at {
            // After the close, let the proxy's close timeout (5 s) pass.
            if now > t + 7_000_000 {
                break;
            }
        }
        let pending = !client.dev.rx.is_empty() || !server.dev.rx.is_empty();
        let next = [
            c2p.next(),
            p2c.next(),
            s2p.next(),
            p2s.next(),
            client.poll_at(now),
            server.poll_at(now),
            Some(now + 16_000),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + 1);
        now = if pending { now } else { next.max(now + 1) };
        assert!(
            now < 600_000_000,
            "seed {seed}: no end after 600 virtual seconds (received {received} of {total})"
        );
    }
    Outcome {
        received,
        mismatch,
        flows_after: core.flow_count(),
        finished_at: finished_at.unwrap_or(u64::MAX),
        dropped: c2p.dropped + p2c.dropped + s2p.dropped + p2s.dropped,
        mss_clamped: core.stats.mss_clamped,
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
