//! The full-NAT proxy with the kernel's own TCP on both ends, in network namespaces:
//!
//! ```text
//!  ns client 198.18.0.1/24 == tpcN [client port 198.18.0.254, VIP 198.18.0.10:80 | tsmp-proxy |
//!        server port 198.19.0.254, SNAT 198.19.0.100] tpsN == ns server 198.19.0.2/24 (:8080)
//! ```
//! Everything is checked from the outside: the applications compare SHA-256 hashes of what they
//! received, the server namespace's socket table shows the SNAT address as the peer, and the
//! appliance's counters (its stats file) show the flow tables empty after the timeouts.

mod common;

use common::{must, Netns, Proxy, TempDir, Veth, SEED_CLIENT, SEED_SERVER};
use std::time::Duration;

struct Topology {
    client: Netns,
    server: Netns,
    _veths: (Veth, Veth),
    dir: TempDir,
    cfg: std::path::PathBuf,
    stats: std::path::PathBuf,
    server_app: std::process::Child,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = self.server_app.kill();
        let _ = self.server_app.wait();
    }
}

/// Builds the namespaces and a proxy config with `workers` workers (sharing CPU 1).
fn topology(tag: &str, workers: usize) -> Topology {
    common::require_root();
    let t = format!("{tag}{}", common::tag());
    let dir = TempDir::new(&format!("proxy-{t}"));
    let client = Netns::new(&format!("tsmpt-c{t}"));
    let server = Netns::new(&format!("tsmpt-s{t}"));
    let vc = Veth::new(&format!("tpc{t}"), &client, "198.18.0.1/24");
    let vs = Veth::new(&format!("tps{t}"), &server, "198.19.0.2/24");
    let mut text = common::profile(
        "default.toml",
        &[
            (
                "iface=tsmp-c0,qpairs=1",
                &format!("iface={},qpairs={workers}", vc.host),
            ),
            (
                "iface=tsmp-s0,qpairs=1",
                &format!("iface={},qpairs={workers}", vs.host),
            ),
            (
                "file_prefix = \"tsmp\"",
                &format!("file_prefix = \"tsmpt{t}\""),
            ),
            ("timeout_syn_s = 10", "timeout_syn_s = 2"),
            ("timeout_fin_s = 60", "timeout_fin_s = 2"),
            ("timeout_close_s = 5", "timeout_close_s = 1"),
            ("timeout_jitter_ms = 500", "timeout_jitter_ms = 200"),
        ],
    );
    for w in 1..workers {
        text.push_str(&format!("\n[[worker]]\nlcore = {}\ncpu = 1\n", w + 1));
    }
    let cfg = dir.0.join("proxy.toml");
    std::fs::write(&cfg, text).unwrap();
    let stats = dir.0.join("stats.json");
    let server_app = server.spawn(&["python3", "-c", SEED_SERVER, "198.19.0.2", "8080"]);
    std::thread::sleep(Duration::from_millis(300));
    Topology {
        client,
        server,
        _veths: (vc, vs),
        cfg,
        stats,
        dir,
        server_app,
    }
}

impl Topology {
    fn fetch(&self, conns: usize, bytes: usize) -> String {
        let args = common::seed_client_args("198.18.0.10", 80, conns, bytes);
        let out = self
            .client
            .exec(&args.iter().map(String::as_str).collect::<Vec<_>>());
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.stats).expect("stats file")).unwrap()
    }
}

fn sum(v: &serde_json::Value, key: &str) -> u64 {
    v["proxy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w[key].as_u64().unwrap())
        .sum()
}

/// Waits past the close timeout, stops the proxy and checks that every flow was removed.
fn stop_and_check_empty(t: &Topology, proxy: Proxy, flows: u64) -> serde_json::Value {
    std::thread::sleep(Duration::from_millis(2500));
    let out = proxy.stop();
    assert!(out.contains("stopped cleanly"), "{out}");
    let s = t.stats();
    assert_eq!(
        sum(&s, "flows_active"),
        0,
        "flow tables not empty after the timeouts: {s:#}"
    );
    assert_eq!(sum(&s, "flows_created"), flows, "flows created: {s:#}");
    assert_eq!(sum(&s, "flows_closed"), flows, "flows closed: {s:#}");
    // Every flow had a migration engine; they went with their flows, and with them every mbuf
    // the rolling caches held.
    for k in ["engines_active", "cache_bytes", "cache_bufs"] {
        assert_eq!(sum(&s, k), 0, "{k} after the flows are gone: {s:#}");
    }
    s
}

#[test]
fn download_64mib_and_200_concurrent_connections() {
    let t = topology("a", 1);
    let proxy = Proxy::start(&t.cfg, &["--stats-json", t.stats.to_str().unwrap()]);

    // The appliance answers ARP and ping for its own address and the VIP.
    for a in ["198.18.0.254", "198.18.0.10"] {
        let p = t
            .client
            .exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", a]);
        assert!(
            p.status.success(),
            "ping {a}: {}",
            String::from_utf8_lossy(&p.stdout)
        );
    }
    assert_eq!(
        t.fetch(1, 64 << 20),
        "ok 1",
        "64 MiB download through the proxy"
    );
    assert_eq!(
        t.fetch(200, 256 << 10),
        "ok 200",
        "200 concurrent connections"
    );
    // While a connection is open, the server sees it coming from the SNAT address.
    let mut big = t.client.spawn(&[
        "python3",
        "-c",
        SEED_CLIENT,
        "198.18.0.10",
        "80",
        "1",
        &(64 << 20).to_string(),
    ]);
    let mut seen = String::new();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        seen = must("ip", &["netns", "exec", &t.server.name, "ss", "-tn"]);
        if seen.contains("198.19.0.100:") {
            break;
        }
    }
    let _ = big.kill();
    let _ = big.wait();
    assert!(
        seen.contains("198.19.0.100:"),
        "server does not see the SNAT address as the peer:\n{seen}"
    );
    let s = stop_and_check_empty(&t, proxy, 202);
    assert!(sum(&s, "mss_clamped") == 0 || sum(&s, "mss_clamped") <= 202);
    // The rolling caches held server segments in flight (shared mbufs) during the transfers,
    // never more than half the packet pool (a bulk transfer over veth keeps more than that
    // unacknowledged: the rest is counted as overflow, and forwarding is unaffected).
    let peak = sum(&s, "cache_bufs_peak");
    let text = std::fs::read_to_string(&t.cfg).unwrap();
    let pool = u64::from(
        tsmp::config::Config::from_toml(&text, "test")
            .unwrap()
            .mempool
            .mbufs,
    );
    assert!(
        peak > 0 && peak <= pool / 2,
        "rolling caches held {peak} mbufs of a pool of {pool}: {s:#}"
    );
    drop(t.dir.0.clone());
}

#[test]
fn connection_under_2_percent_loss_completes() {
    let t = topology("l", 1);
    // This kernel has no netem; nftables drops 2% of the TCP segments each namespace receives,
    // before its TCP sees them (indistinguishable from loss on the wire).
    let rules = t.dir.0.join("loss.nft");
    std::fs::write(&rules, "table ip loss {\n chain pre {\n  type filter hook prerouting priority -300;\n  meta l4proto tcp numgen random mod 100 < 2 counter drop\n }\n}\n").unwrap();
    for ns in [&t.client, &t.server] {
        let o = ns.exec(&["nft", "-f", rules.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let proxy = Proxy::start(&t.cfg, &["--stats-json", t.stats.to_str().unwrap()]);
    assert_eq!(
        t.fetch(4, 4 << 20),
        "ok 4",
        "downloads under 2% loss in both directions"
    );
    let retrans = must(
        "ip",
        &[
            "netns",
            "exec",
            &t.server.name,
            "nstat",
            "-az",
            "TcpRetransSegs",
        ],
    );
    let n: u64 = retrans
        .lines()
        .find(|l| l.starts_with("TcpRetransSegs"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(n > 0, "the loss rule dropped nothing? {retrans}");
    stop_and_check_empty(&t, proxy, 4);
}

#[test]
fn two_workers_hand_off_to_the_owner() {
    let t = topology("w", 2);
    let proxy = Proxy::start(&t.cfg, &["--stats-json", t.stats.to_str().unwrap()]);
    assert_eq!(
        t.fetch(100, 64 << 10),
        "ok 100",
        "100 connections through two workers"
    );
    let s = stop_and_check_empty(&t, proxy, 100);
    // Each worker created only flows it owns; frames that reached the other worker were handed
    // over, and every hand-off was received (none lost in the rings).
    let workers = s["proxy"].as_array().unwrap();
    assert!(
        workers
            .iter()
            .all(|w| w["flows_created"].as_u64().unwrap() > 0),
        "both workers own flows: {s:#}"
    );
    assert_eq!(
        sum(&s, "handoffs_out"),
        sum(&s, "handoffs_in"),
        "hand-offs sent = received: {s:#}"
    );
    assert_eq!(sum(&s, "handoff_ring_full"), 0);
}

#[test]
fn hostile_frames_and_syn_flood_leave_established_flows_working() {
    let t = topology("h", 1);
    // A small table: 1024 flows, flooded with 4000 SYNs.
    let text = std::fs::read_to_string(&t.cfg).unwrap().replace(
        "max_flows_per_worker = 65536",
        "max_flows_per_worker = 1024",
    );
    std::fs::write(&t.cfg, text).unwrap();
    let proxy = Proxy::start(&t.cfg, &["--stats-json", t.stats.to_str().unwrap()]);
    assert_eq!(t.fetch(1, 1 << 20), "ok 1", "warm-up connection");

    // An established download runs while the flood arrives.
    let args = common::seed_client_args("198.18.0.10", 80, 1, 48 << 20);
    let download = t
        .client
        .spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(100));
    let flood = t.client.exec(&[
        "python3",
        "-c",
        common::HOSTILE,
        "eth0",
        "198.18.0.10",
        "80",
        "4000",
    ]);
    let sent = String::from_utf8_lossy(&flood.stdout).to_string();
    assert!(
        flood.status.success(),
        "flood: {sent}{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    let out = download.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok 1",
        "download during the flood; sent {sent}"
    );

    let out = proxy.stop();
    assert!(out.contains("stopped cleanly"), "{out}");
    let s = t.stats();
    let drops = &s["proxy"][0]["drops"];
    // Lone fragments are absorbed by the kernel (DPDK's af_packet sets PACKET_FANOUT_FLAG_DEFRAG),
    // so `ipv4_fragment` is exercised by the wire layer's unit test instead.
    for reason in [
        "table_full",
        "truncated",
        "ipv4_bad_checksum",
        "tcp_bad_checksum",
        "ipv4_options",
        "tcp_bad_data_offset",
        "tcp_bad_options",
    ] {
        assert!(
            drops[reason].as_u64().unwrap_or(0) > 0,
            "no `{reason}` drops counted: {drops:#}"
        );
    }
    let created = s["proxy"][0]["flows_created"].as_u64().unwrap();
    assert!(created >= 1024, "the flood filled the table: {created}");
}

#[test]
fn exception_path_reaches_kernel_sockets_on_the_appliance_addresses() {
    let t = topology("x", 1);
    let tag = format!("x{}", common::tag());
    let appliance = Netns::new(&format!("tsmpt-a{tag}"));
    let text = std::fs::read_to_string(&t.cfg).unwrap()
        + &format!(
            "\n[exception]\ntap = \"tpx{tag}\"\nnetns = \"{}\"\n",
            appliance.name
        );
    std::fs::write(&t.cfg, text).unwrap();
    let proxy = Proxy::start(&t.cfg, &["--stats-json", t.stats.to_str().unwrap()]);
    // An ordinary kernel socket on the appliance's addresses, in its namespace.
    let mut app = appliance.spawn(&["python3", "-c", SEED_SERVER, "0.0.0.0", "9000"]);
    std::thread::sleep(Duration::from_millis(300));
    let mut results = Vec::new();
    for (ns, addr) in [(&t.client, "198.18.0.254"), (&t.server, "198.19.0.254")] {
        let out = ns.exec(&[
            "timeout",
            "20",
            "python3",
            "-c",
            SEED_CLIENT,
            addr,
            "9000",
            "3",
            &(1 << 20).to_string(),
        ]);
        results.push((addr, String::from_utf8_lossy(&out.stdout).trim().to_owned()));
    }
    // The service still works next to it.
    let service = t.fetch(2, 1 << 20);
    let _ = app.kill();
    let _ = app.wait();
    let out = proxy.stop();
    assert!(out.contains("stopped cleanly"), "{out}");
    let s = t.stats();
    for (addr, r) in results {
        assert_eq!(
            r, "ok 3",
            "kernel socket on {addr} through the exception path: {s:#}"
        );
    }
    assert_eq!(service, "ok 2");
    assert!(
        s["proxy"][0]["to_kernel"].as_u64().unwrap() > 100
            && s["proxy"][0]["from_kernel"].as_u64().unwrap() > 100,
        "{s:#}"
    );
}

/// A line-echo server (python3, threaded) on `ADDR PORT`; accepted sockets keep alive: idle 1 s,
/// a probe a second, dead after 2 unanswered probes.
const ECHO_SERVER: &str = r#"
import socket, sys, threading
addr, port = sys.argv[1], int(sys.argv[2])
def keepalive(c):
    c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(16)
def serve(c):
    try:
        while True:
            b = c.recv(4096)
            if not b: break
            c.sendall(b)
    except Exception as e:
        print("server error", e, flush=True)
    finally:
        c.close()
print("listening", flush=True)
while True:
    c, _ = s.accept(); keepalive(c)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The chat client: `ADDR PORT LINES GAP_MS IDLE_S` sends LINES numbered lines GAP_MS apart, each
/// checked when it comes back, then stays idle IDLE_S seconds (with the server's keep-alive
/// settings) and sends one more. Prints `ok LINES` or what failed.
const CHAT_CLIENT: &str = r#"
import socket, sys, time
addr, port, lines, gap, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
try:
    c = socket.create_connection((addr, port), timeout=10)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
    f = c.makefile("rb")
    def line(i):
        want = b"line %06d %s\n" % (i, b"x" * 200)
        c.sendall(want)
        got = f.readline()
        if got != want:
            raise Exception("line %d came back as %r" % (i, got[:40]))
    for i in range(lines):
        line(i); time.sleep(gap / 1000)
    time.sleep(idle)
    line(lines)
    print("ok %d" % lines, flush=True)
except Exception as e:
    print("FAILED %s" % e, flush=True)
"#;

/// A blind attacker on `IFACE` (python3, raw socket): `IFACE SPORT|DPORT N KINDS...` learns the
/// live connection from one segment this namespace sends with that source or destination port
/// (its addresses, MACs and numbers; spoofing the local end), then sends each kind of segment
/// 3 times, 50 ms apart. Kinds: rst_far (RST half the sequence space away), rst_inwindow (RST
/// 5000 bytes past the next byte), rst_badsum (RST at the next byte, bad TCP checksum), syn
/// (SYN at a random number on the tuple), data_far (data 2^30 away), ack_far (an ACK of 2^30
/// unsent bytes), data_badsum (100 bytes at the next byte, bad TCP checksum). Prints what it
/// sent.
const BLIND: &str = r#"
import socket, struct, sys, random, time
iface, which, port, kinds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
r = random.Random(11)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); s.bind((iface, 0))
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
s.settimeout(10)
while True:
    f, a = s.recvfrom(65535)
    if a[2] != socket.PACKET_OUTGOING or f[12:14] != b"\x08\x00" or f[23] != 6: continue
    ihl = (f[14] & 15) * 4; t = 14 + ihl
    sp, dp = struct.unpack("!HH", f[t:t + 4])
    if (sp if which == "sport" else dp) != port: continue
    if not f[t + 13] & 0x10: continue
    break
eth, src, dst = f[:14], f[26:30], f[30:34]
sport, dport, seq, ack = struct.unpack("!HHII", f[t:t + 12])
total = struct.unpack("!H", f[16:18])[0]; doff = (f[t + 12] >> 4) * 4
nxt = (seq + total - ihl - doff) & 0xffffffff
def frame(seq, ack, flags, payload=b"", bad=False):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xffffffff, ack & 0xffffffff, 5 << 4, flags, 1000, 0, 0) + payload
    c = csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp) ^ (0x5a5a if bad else 0)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), r.getrandbits(16), 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return eth + ip + tcp
make = {
    "rst_far": lambda: frame(nxt + (1 << 31), 0, 0x04),
    "rst_inwindow": lambda: frame(nxt + 5000, 0, 0x04),
    "rst_badsum": lambda: frame(nxt, ack, 0x14, bad=True),
    "syn": lambda: frame(r.getrandbits(32), 0, 0x02),
    "data_far": lambda: frame(nxt + (1 << 30), ack, 0x18, b"F" * 100),
    "ack_far": lambda: frame(nxt, ack + (1 << 30), 0x10),
    "data_badsum": lambda: frame(nxt, ack, 0x18, b"B" * 100, bad=True),
}
n = {}
for k in kinds:
    for _ in range(3):
        s.send(make[k]()); n[k] = n.get(k, 0) + 1; time.sleep(0.05)
print(" ".join("%s=%d" % kv for kv in sorted(n.items())), flush=True)
"#;

/// Starts the echo server on the chat service's backend (198.19.0.2:6667).
fn echo_server(t: &Topology) -> common::Killed {
    let mut c = t
        .server
        .spawn(&["python3", "-c", ECHO_SERVER, "198.19.0.2", "6667"]);
    // Returns once the server printed `listening` (panics if it exits first).
    common::bed::line_from(&mut c, "listening");
    common::Killed(c)
}

fn chat(t: &Topology, lines: u32, gap_ms: u32, idle_s: u32) -> std::process::Child {
    t.client.spawn(&[
        "timeout",
        "120",
        "python3",
        "-c",
        CHAT_CLIENT,
        "198.18.0.10",
        "6667",
        &lines.to_string(),
        &gap_ms.to_string(),
        &idle_s.to_string(),
    ])
}

fn finish(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn counter(m: &std::collections::HashMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

#[test]
fn keepalives_keep_an_idle_connection_alive_in_both_directions() {
    let t = topology("k", 1);
    let _echo = echo_server(&t);
    let proxy = Proxy::start(&t.cfg, &["--stats-json", t.stats.to_str().unwrap()]);
    let before = common::bed::counters(&t.server);
    // Idle for 6 s: each end probes after 1 s and gives up after 2 unanswered probes (3 s).
    // The probes (sequence number one below what the peer acknowledged, RFC 9293 3.8.4) must
    // reach the peer as they are, or nobody answers them.
    let out = finish(chat(&t, 3, 100, 6));
    let after = common::bed::counters(&t.server);
    let _ = proxy.stop();
    assert_eq!(out, "ok 3", "a chat idle for 6 s with keep-alives");
    let probes = counter(&after, "TcpExt:TCPKeepAlive") - counter(&before, "TcpExt:TCPKeepAlive");
    assert!(probes >= 3, "the server sent {probes} keep-alive probes");
}

#[test]
fn blind_segments_from_either_side_leave_the_flow_alive_and_are_counted() {
    let t = topology("b", 1);
    let _echo = echo_server(&t);
    let proxy = Proxy::start(&t.cfg, &["--stats-json", t.stats.to_str().unwrap()]);
    let (sb, cb) = (
        common::bed::counters(&t.server),
        common::bed::counters(&t.client),
    );
    // 60 lines 100 ms apart: the attacks land while the chat runs; then 3 s idle, longer than
    // the close timeout (1 s) a believed RST would leave the flow.
    let client = chat(&t, 60, 100, 3);
    std::thread::sleep(Duration::from_millis(500));
    let kinds = [
        "rst_far",
        "rst_inwindow",
        "rst_badsum",
        "syn",
        "data_far",
        "ack_far",
        "data_badsum",
    ];
    let client_side = t.client.spawn(
        &[
            &["python3", "-c", BLIND, "eth0", "dport", "6667"][..],
            &kinds[..],
        ]
        .concat(),
    );
    let server_side = t.server.spawn(
        &[
            &["python3", "-c", BLIND, "eth0", "sport", "6667"][..],
            &kinds[..],
        ]
        .concat(),
    );
    let (a, b) = (finish(client_side), finish(server_side));
    let out = finish(client);
    let (sa, ca) = (
        common::bed::counters(&t.server),
        common::bed::counters(&t.client),
    );
    let stopped = proxy.stop();
    assert!(stopped.contains("stopped cleanly"), "{stopped}");
    assert!(
        a.contains("rst_far=3") && b.contains("rst_far=3"),
        "attackers: {a} / {b}"
    );
    assert_eq!(out, "ok 60", "the chat under blind attack from both sides");
    // Nothing the attackers sent reached an end: no end had to challenge a segment or drop
    // one for its checksum (the proxy did both on their behalf).
    for (name, b, a) in [("server", &sb, &sa), ("client", &cb, &ca)] {
        for k in [
            "TcpExt:TCPChallengeACK",
            "Tcp:InCsumErrors",
            "TcpExt:TCPACKSkippedSynRecv",
        ] {
            assert_eq!(
                counter(a, k),
                counter(b, k),
                "{k} in the {name}'s namespace"
            );
        }
        assert_eq!(
            counter(a, "TcpExt:TCPAbortOnData") + counter(a, "Tcp:EstabResets"),
            counter(b, "TcpExt:TCPAbortOnData") + counter(b, "Tcp:EstabResets"),
            "a connection in the {name}'s namespace was reset"
        );
    }
    let s = t.stats();
    let p = &s["proxy"][0];
    assert!(
        p["drops"]["tcp_bad_checksum"].as_u64().unwrap_or(0) >= 12,
        "bad checksums counted: {p:#}"
    );
    for k in ["blind_dropped", "challenged"] {
        assert!(p[k].as_u64().unwrap_or(0) > 0, "`{k}` counted: {p:#}");
    }
}
