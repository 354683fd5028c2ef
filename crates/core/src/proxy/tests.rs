//! The proxy core fed hand-made frames, without EAL: each test asserts the exact verdict and the
//! rewritten bytes (addresses, ports, MSS, MACs, valid checksums), state changes and counters.

use super::flow::TcpState;
use super::*;
use crate::wire::tcp_checksum_ok;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc1];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x51];
const PORT_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 0xa0], [2, 0, 0, 0, 0, 0xa1]];
const CLIENT: [u8; 4] = [198, 18, 0, 1];
const VIP: [u8; 4] = [198, 18, 0, 10];
const BACKEND: [u8; 4] = [198, 19, 0, 2];
const SNAT: [u8; 4] = [198, 19, 0, 100];
const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;
const FIN: u8 = TcpFlags::FIN;

fn config(max_flows: u32) -> ProxySettings {
    ProxySettings {
        max_flows,
        timeout_jitter_ms: 0,
        ..ProxySettings::lab(PORT_MACS)
    }
}

fn core(max_flows: u32, worker: usize, workers: usize) -> ProxyCore {
    ProxyCore::new(
        &config(max_flows),
        worker,
        workers,
        FlowHasher::random(),
        0,
        None,
    )
}

#[allow(clippy::too_many_arguments)]
fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    opts: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let tcp_len = 20 + opts.len() + payload.len();
    let mut f = vec![0u8; 34 + tcp_len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[8, 0]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    let c = checksum::finish(checksum::sum(0, &f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let t = 34;
    f[t..t + 2].copy_from_slice(&sport.to_be_bytes());
    f[t + 2..t + 4].copy_from_slice(&dport.to_be_bytes());
    f[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    f[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
    f[t + 12] = (((20 + opts.len()) / 4) << 4) as u8;
    f[t + 13] = flags;
    f[t + 14..t + 16].copy_from_slice(&64240u16.to_be_bytes());
    f[t + 20..t + 20 + opts.len()].copy_from_slice(opts);
    f[t + 20 + opts.len()..].copy_from_slice(payload);
    let acc = checksum::pseudo_ipv4(src, dst, 6, tcp_len as u16);
    let c = checksum::finish(checksum::sum(acc, &f[t..]));
    f[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// A segment from the client to the service (VIP:80).
fn to_vip(sport: u16, seq: u32, ack: u32, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
    tcp(
        CLIENT_MAC,
        PORT_MACS[0],
        CLIENT,
        VIP,
        sport,
        80,
        seq,
        ack,
        flags,
        opts,
        payload,
    )
}

/// A segment from the backend (port 8080) to the SNAT address.
fn from_backend(dport: u16, seq: u32, ack: u32, flags: u8, opts: &[u8], payload: &[u8]) -> Vec<u8> {
    tcp(
        SERVER_MAC,
        PORT_MACS[1],
        BACKEND,
        SNAT,
        8080,
        dport,
        seq,
        ack,
        flags,
        opts,
        payload,
    )
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&[8, 6]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa);
    f[38..42].copy_from_slice(&tpa);
    f
}

fn meta(f: &[u8]) -> TcpMeta {
    match wire::classify(f) {
        Ok(Frame::Tcp(m)) => m,
        other => panic!("not TCP: {other:?}"),
    }
}

const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];

/// A core that knows the backend's MAC (learned from its ARP request).
fn ready(max_flows: u32) -> ProxyCore {
    let mut c = core(max_flows, 0, 1);
    let mut a = arp(1, SERVER_MAC, BACKEND, [198, 19, 0, 254]);
    assert_eq!(
        c.process(1, &mut a),
        Verdict::Tx(1),
        "ARP for our server-side address is answered"
    );
    c
}

#[test]
fn handshake_rewrites_both_directions() {
    let mut c = ready(64);
    let mut syn = to_vip(40000, 1000, 0, SYN, &MSS_1460, &[]);
    assert_eq!(c.process(0, &mut syn), Verdict::Tx(1));
    let m = meta(&syn);
    assert_eq!((m.src, m.dst, m.dport), (SNAT, BACKEND, 8080));
    assert!(m.sport >= 1024);
    assert_eq!(
        (&syn[0..6], &syn[6..12]),
        (&SERVER_MAC[..], &PORT_MACS[1][..])
    );
    assert!(tcp_checksum_ok(&syn, &m), "checksum after rewrite");
    let seg = TcpSegmentMut::new(&mut syn, &m).unwrap();
    assert_eq!(seg.mss(), Some(1400), "MSS clamped to the configured value");
    assert_eq!(c.stats.mss_clamped, 1);

    let mut synack = from_backend(m.sport, 5000, 1001, SYN | ACK, &MSS_1460, &[]);
    assert_eq!(c.process(1, &mut synack), Verdict::Tx(0));
    let r = meta(&synack);
    assert_eq!((r.src, r.sport, r.dst, r.dport), (VIP, 80, CLIENT, 40000));
    assert_eq!(
        (&synack[0..6], &synack[6..12]),
        (&CLIENT_MAC[..], &PORT_MACS[0][..])
    );
    assert!(tcp_checksum_ok(&synack, &r));

    let mut ack = to_vip(40000, 1001, 5001, ACK, &[], b"GET /");
    assert_eq!(c.process(0, &mut ack), Verdict::Tx(1));
    let idx = c
        .flows
        .lookup(&flow::Key {
            src: u32::from_be_bytes(CLIENT),
            dst: u32::from_be_bytes(VIP),
            sport: 40000,
            dport: 80,
        })
        .unwrap();
    let f = c.flows.get(idx);
    assert_eq!(f.state, TcpState::Established);
    assert_eq!(f.client_opts.mss, 1400);
    assert_eq!(f.server_opts.mss, 1460);
    assert_eq!(c.stats.flows_created, 1);
}

#[test]
fn unknown_next_hop_sends_arp_then_forwards() {
    let mut c = core(64, 0, 1);
    // The backend's next hop is resolved at start-up, before any SYN.
    let reqs: Vec<_> = c.take_arp_requests().collect();
    assert_eq!(reqs, vec![(1, u32::from_be_bytes(BACKEND))]);
    let syn = || to_vip(40001, 1, 0, SYN, &[], &[]);
    let mut f = syn();
    assert_eq!(c.process(0, &mut f), Verdict::Drop(Cause::NeighbourMiss));
    assert_eq!(
        c.take_arp_requests().count(),
        0,
        "no second request within 200 ms"
    );
    c.set_time(300);
    let mut f = syn();
    assert_eq!(c.process(0, &mut f), Verdict::Drop(Cause::NeighbourMiss));
    assert_eq!(c.take_arp_requests().count(), 1, "asked again after 200 ms");
    let mut buf = [0xa5u8; 60];
    assert_eq!(
        c.build_arp_request(1, u32::from_be_bytes(BACKEND), &mut buf),
        42
    );
    assert_eq!(&buf[38..42], &BACKEND);
    assert_eq!(&buf[28..32], &[198, 19, 0, 254]);
    // The reply teaches the MAC; the retransmitted SYN goes through on the flow the first made.
    let mut reply = arp(2, SERVER_MAC, BACKEND, [198, 19, 0, 254]);
    assert_eq!(c.process(1, &mut reply), Verdict::Drop(Cause::ArpIgnored));
    let mut f = syn();
    assert_eq!(c.process(0, &mut f), Verdict::Tx(1));
    assert_eq!(c.stats.flows_created, 1);
    assert_eq!(
        c.take_learned().count(),
        1,
        "learned neighbour offered to other workers"
    );
}

#[test]
fn teardown_then_expiry_frees_flow_and_port() {
    let mut c = ready(64);
    let free = c.snat_ports_free();
    let k = |f: &mut Vec<u8>, c: &mut ProxyCore, port| c.process(port, f);
    let mut syn = to_vip(40002, 100, 0, SYN, &[], &[]);
    assert_eq!(k(&mut syn, &mut c, 0), Verdict::Tx(1));
    let sport = meta(&syn).sport;
    let seg = |flags, seq, ack, from_client: bool| {
        if from_client {
            to_vip(40002, seq, ack, flags, &[], &[])
        } else {
            from_backend(sport, seq, ack, flags, &[], &[])
        }
    };
    for (f, p) in [
        (seg(SYN | ACK, 900, 101, false), 1),
        (seg(ACK, 101, 901, true), 0),
        (seg(FIN | ACK, 101, 901, true), 0),
        (seg(ACK, 901, 102, false), 1),
        (seg(FIN | ACK, 901, 102, false), 1),
    ] {
        let mut f = f;
        assert!(matches!(c.process(p, &mut f), Verdict::Tx(_)));
    }
    let idx = c.flows.live_indices().next().unwrap();
    assert_eq!(c.flows.get(idx).state, TcpState::FinWait);
    let mut last = seg(ACK, 102, 902, true);
    assert_eq!(c.process(0, &mut last), Verdict::Tx(1));
    assert_eq!(c.flows.get(idx).state, TcpState::TimeWait);
    // timeout_close_s = 5: nothing happens at 4 s, the flow is gone after 5 s.
    c.set_time(4_000);
    c.expire(u32::MAX);
    assert_eq!(c.flow_count(), 1);
    c.set_time(5_100);
    c.expire(u32::MAX);
    assert_eq!(c.flow_count(), 0);
    assert_eq!(c.snat_ports_free(), free, "SNAT port returned");
    assert_eq!(c.stats.flows_closed, 1);
    let mut late = seg(ACK, 102, 902, true);
    assert_eq!(c.process(0, &mut late), Verdict::Drop(Cause::NoFlow));
}

#[test]
fn activity_keeps_a_flow_alive_across_wheel_revolutions() {
    let mut c = ready(64);
    let mut syn = to_vip(40003, 1, 0, SYN, &[], &[]);
    assert_eq!(c.process(0, &mut syn), Verdict::Tx(1));
    // timeout_syn_s = 10; a retransmitted SYN every 8 s for 3 minutes keeps it (the wheel turns
    // every 65 s, so the flow is revisited and rescheduled several times).
    for t in (8_000..180_000).step_by(8_000) {
        c.set_time(t);
        c.expire(u32::MAX);
        assert_eq!(c.flow_count(), 1, "expired early at {t} ms");
        let mut again = to_vip(40003, 1, 0, SYN, &[], &[]);
        assert_eq!(c.process(0, &mut again), Verdict::Tx(1));
    }
    c.set_time(200_000);
    c.expire(u32::MAX);
    assert_eq!(c.flow_count(), 0);
    assert_eq!(c.stats.flows_created, 1);
}

#[test]
fn full_table_drops_new_syns_not_established_flows() {
    let mut c = ready(16);
    let mut first = to_vip(1, 1, 0, SYN, &[], &[]);
    assert_eq!(c.process(0, &mut first), Verdict::Tx(1));
    for p in 2..=16u16 {
        let mut s = to_vip(p, 1, 0, SYN, &[], &[]);
        assert_eq!(c.process(0, &mut s), Verdict::Tx(1));
    }
    for p in 17..100u16 {
        let mut s = to_vip(p, 1, 0, SYN, &[], &[]);
        assert_eq!(c.process(0, &mut s), Verdict::Drop(Cause::TableFull));
    }
    assert_eq!(c.stats.drops[Cause::TableFull.index()], 83);
    let mut data = to_vip(1, 2, 1, ACK, &[], b"still here");
    assert_eq!(
        c.process(0, &mut data),
        Verdict::Tx(1),
        "existing flow unaffected"
    );
}

#[test]
fn other_traffic_is_counted_by_cause() {
    let mut c = ready(16);
    let mut f = to_vip(5, 1, 1, ACK, &[], &[]);
    assert_eq!(c.process(0, &mut f), Verdict::Drop(Cause::NoFlow));
    let mut f = tcp(
        CLIENT_MAC,
        PORT_MACS[0],
        CLIENT,
        VIP,
        5,
        81,
        1,
        0,
        SYN,
        &[],
        &[],
    );
    assert_eq!(c.process(0, &mut f), Verdict::Drop(Cause::NoService));
    let mut f = tcp(
        CLIENT_MAC,
        PORT_MACS[0],
        CLIENT,
        [198, 18, 0, 77],
        5,
        80,
        1,
        0,
        SYN,
        &[],
        &[],
    );
    assert_eq!(c.process(0, &mut f), Verdict::Drop(Cause::NotForUs));
    let mut f = from_backend(2000, 1, 1, ACK, &[], &[]);
    assert_eq!(c.process(1, &mut f), Verdict::Drop(Cause::NoFlow));
    let mut f = to_vip(5, 1, 0, SYN, &[], &[]);
    f[14] = 0x46;
    assert_eq!(
        c.process(0, &mut f),
        Verdict::Drop(Cause::Wire(DropReason::Ipv4BadChecksum))
    );
    let mut f = vec![0u8; 20];
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(c.process(0, &mut f), Verdict::Drop(Cause::OtherEthertype));
    let mut f = arp(1, CLIENT_MAC, CLIENT, [198, 18, 0, 99]);
    assert_eq!(c.process(0, &mut f), Verdict::Drop(Cause::ArpIgnored));
    assert_eq!(c.stats.drops.iter().sum::<u64>(), 7);
}

#[test]
fn arp_and_ping_for_the_vip() {
    let mut c = core(16, 0, 1);
    let mut a = arp(1, CLIENT_MAC, CLIENT, VIP);
    assert_eq!(c.process(0, &mut a), Verdict::Tx(0));
    assert_eq!(&a[20..22], &[0, 2], "reply");
    assert_eq!(&a[22..28], &PORT_MACS[0], "sender MAC is the port's");
    assert_eq!(&a[28..32], &VIP);
    assert_eq!((&a[32..38], &a[38..42]), (&CLIENT_MAC[..], &CLIENT[..]));
    assert_eq!(&a[0..6], &CLIENT_MAC);

    // ICMP echo request to the VIP, id 7 seq 1, 8 bytes of data.
    let mut f = vec![0u8; 14 + 20 + 16];
    f[0..6].copy_from_slice(&PORT_MACS[0]);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f[12..14].copy_from_slice(&[8, 0]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&36u16.to_be_bytes());
    f[22] = 64;
    f[23] = 1;
    f[26..30].copy_from_slice(&CLIENT);
    f[30..34].copy_from_slice(&VIP);
    let c1 = checksum::finish(checksum::sum(0, &f[14..34]));
    f[24..26].copy_from_slice(&c1.to_be_bytes());
    f[34] = 8;
    f[38..42].copy_from_slice(&[0, 7, 0, 1]);
    f[42..50].copy_from_slice(b"pingdata");
    let c2 = checksum::finish(checksum::sum(0, &f[34..]));
    f[36..38].copy_from_slice(&c2.to_be_bytes());
    assert_eq!(c.process(0, &mut f), Verdict::Tx(0));
    assert_eq!(f[34], 0, "echo reply");
    assert_eq!((&f[26..30], &f[30..34]), (&VIP[..], &CLIENT[..]));
    assert_eq!(
        checksum::finish(checksum::sum(0, &f[34..])),
        0,
        "ICMP checksum valid"
    );
    assert_eq!(
        checksum::finish(checksum::sum(0, &f[14..34])),
        0,
        "IPv4 checksum valid"
    );
    assert_eq!(c.stats.icmp_echo_replies, 1);
}

#[test]
fn both_directions_map_to_the_owner_worker() {
    let cfg = config(64);
    let h = FlowHasher::random();
    let mut w: Vec<ProxyCore> = (0..2)
        .map(|i| ProxyCore::new(&cfg, i, 2, h, 0, None))
        .collect();
    for c in &mut w {
        c.learn(u32::from_be_bytes(BACKEND), SERVER_MAC);
    }
    for cport in 30000..30064u16 {
        let syn = to_vip(cport, 1, 0, SYN, &[], &[]);
        let mut at0 = syn.clone();
        let owner = match w[0].process(0, &mut at0) {
            Verdict::Tx(1) => 0,
            Verdict::HandOff(1) => 1,
            v => panic!("{v:?}"),
        };
        let mut f = syn;
        assert_eq!(w[owner].process(0, &mut f), Verdict::Tx(1));
        let sport = meta(&f).sport;
        assert_eq!(
            usize::from(sport) % 2,
            owner,
            "SNAT port partitioned by owner"
        );
        let reply = from_backend(sport, 9, 2, SYN | ACK, &[], &[]);
        let mut r = reply.clone();
        assert_eq!(w[1 - owner].process(1, &mut r), Verdict::HandOff(owner));
        let mut r = reply;
        assert_eq!(w[owner].process(1, &mut r), Verdict::Tx(0));
    }
    assert!(
        w[0].flow_count() > 10 && w[1].flow_count() > 10,
        "both workers own flows"
    );
}

#[test]
fn flow_entry_is_compact() {
    let size = std::mem::size_of::<Flow>();
    println!("flow entry: {size} bytes");
    // Everything the table holds per flow (entry, index share, free list, liveness), at the
    // capacities where the index's power-of-two rounding is kindest and cruellest.
    for cap in [1u32 << 16, (1 << 16) + 1, 52_429, 52_430, 100_000] {
        let t = FlowTable::new(cap, FlowHasher::random());
        let per_flow = (t.memory_bytes() - 4096 * 4) / cap as usize;
        println!("{cap} flows: {per_flow} bytes per flow");
        assert!(per_flow <= 128, "{per_flow} bytes per flow at {cap}");
    }
}

#[test]
fn neighbours_are_refreshed_and_unanswered_requests_forgotten() {
    let mut c = ready(64);
    let _ = c.take_arp_requests().count();
    // A minute after the backend was heard from, it is asked again; its MAC stays in use.
    c.set_time(NEIGHBOUR_REFRESH_MS + 1_500);
    c.expire(u32::MAX);
    let reqs: Vec<_> = c.take_arp_requests().collect();
    assert_eq!(reqs, vec![(1, u32::from_be_bytes(BACKEND))]);
    let mut syn = to_vip(41_000, 1, 0, SYN, &[], &[]);
    assert_eq!(
        c.process(0, &mut syn),
        Verdict::Tx(1),
        "the known MAC is still used"
    );
    // Its reply refreshes it: no new request a second later.
    let mut reply = arp(2, SERVER_MAC, BACKEND, [198, 19, 0, 254]);
    let _ = c.process(1, &mut reply);
    c.set_time(NEIGHBOUR_REFRESH_MS + 3_000);
    c.expire(u32::MAX);
    assert_eq!(c.take_arp_requests().count(), 0);

    // A gateway that never answers: its pending entry is forgotten after 3 s, so the table
    // cannot fill up with dead addresses.
    let mut k = core(64, 0, 1);
    let _ = k.take_arp_requests().count();
    assert_eq!(
        k.arp_sent.len(),
        1,
        "the backend's start-up request is pending"
    );
    k.set_time(ARP_GIVE_UP_MS + SWEEP_MS);
    k.expire(u32::MAX);
    assert_eq!(k.arp_sent.len(), 0);
    let mut syn = to_vip(41_001, 1, 0, SYN, &[], &[]);
    assert_eq!(k.process(0, &mut syn), Verdict::Drop(Cause::NeighbourMiss));
    assert_eq!(
        k.take_arp_requests().count(),
        1,
        "asked again once forgotten"
    );
}
