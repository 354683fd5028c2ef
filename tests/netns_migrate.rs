//! A live migration inside the appliance, between the kernel's own TCP stacks: a server, a
//! "phone" and a "PC" in network namespaces (198.18.0.0/15 only), the phone and the PC on one
//! bridge in front of the proxy's client port. The phone downloads a paced stream through the
//! VIP and stops reading; the operator's control socket migrates the connection (resume at the
//! bytes the phone's application consumed); the PC connects to the migration port and receives
//! the rest.
//!
//! Proven from the outside: the phone's bytes and the PC's bytes are, in order, exactly the
//! server's stream; the server's application saw no error; and the server's own TCP counters,
//! read in its namespace, show no retransmission, no timeout, no reset sent, no challenge ACK
//! and no PAWS drop across the migration.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::time::Duration;

use common::bed::*;
use common::{must, run, Netns, Proxy};

/// Connects to `addr:port`, checks every byte against the pattern from `start`; with `stop`,
/// its application consumes exactly that many bytes (prints `consumed <n>`), then the socket
/// keeps being drained (discarded: the server keeps sending at full pace until it is frozen),
/// and a line on stdin closes it; otherwise reads to the end and prints `ok <n>`.
const CLIENT: &str = r#"
import socket, sys
addr, port, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.connect((addr, port))
print("port", s.getsockname()[1], flush=True)
got = 0
while stop == 0 or got < stop:
    want = 65536 if stop == 0 else min(65536, stop - got)
    b = s.recv(want)
    if not b:
        break
    for i, x in enumerate(b):
        if x != (start + got + i) % 251:
            print("mismatch at", start + got + i, flush=True)
            sys.exit(1)
    got += len(b)
if stop:
    print("consumed", got, flush=True)
    while s.recv(65536):
        pass
    sys.stdin.readline()
else:
    print("ok", got, flush=True)
"#;

fn control(sock: &std::path::Path, req: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).expect("control socket");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("reply {out:?}: {e}"))
}

#[test]
fn migrate_a_download_from_phone_to_pc_with_kernel_tcp() {
    // The phone keeps draining after its application stopped: the bytes between the consumed
    // offset and its ACK must stay cached for the explicit resume offset.
    let b = bed(
        "m",
        &[
            ("keep_acked_bytes = 262144", "keep_acked_bytes = 8388608"),
            ("flow_cache_bytes = 4194304", "flow_cache_bytes = 16777216"),
        ],
    );
    let (server, phone, pc, sock, cfg) = (&b.server, &b.phone, &b.pc, &b.sock, &b.cfg);
    let mut proxy = Proxy::start(cfg, &[]);

    let total: u64 = 24 << 20;
    let consumed_target: u64 = 3 << 20;
    let mut srv = start_server(&b, total);
    let start = counters(server);
    for k in WATCHED {
        assert!(
            start.contains_key(k),
            "counter {k} not found in the server's namespace"
        );
    }

    let mut ph = phone_client(phone, "80", 0, consumed_target);
    let phone_port = line_from(&mut ph, "port");
    let consumed: u64 = line_from(&mut ph, "consumed").parse().unwrap();
    assert_eq!(consumed, consumed_target);
    let before = counters(server);

    let reply = control(
        sock,
        &format!(
            r#"{{"migrate": {{"client": "198.18.0.1:{phone_port}", "vip": "198.18.0.10:80", "offset": {consumed}}}}}"#
        ),
    );
    let mport = reply["ok"]["migration_port"]
        .as_u64()
        .unwrap_or_else(|| panic!("migration refused: {reply}"));
    // A second request for the same flow is refused.
    let again = control(
        sock,
        &format!(
            r#"{{"migrate": {{"client": "198.18.0.1:{phone_port}", "vip": "198.18.0.10:80"}}}}"#
        ),
    );
    assert!(again["error"].is_string(), "{again}");

    let pcc = phone_client(pc, &mport.to_string(), consumed, 0);
    // The server is frozen from the MFR until the splice; the target's handshake completes well
    // inside that (the replay follows): read the counters there.
    proxy.wait_for(" replaying ", Duration::from_secs(20));
    let frozen = counters(server);
    proxy.wait_for(" resumed ", Duration::from_secs(20));
    let pc_out = pcc.wait_with_output().unwrap();
    let pc_out = String::from_utf8_lossy(&pc_out.stdout).into_owned();
    let Some(got) = pc_out
        .lines()
        .find_map(|l| l.strip_prefix("ok "))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        let _ = srv.kill();
        panic!(
            "the PC did not receive the stream: {pc_out}\n{}",
            proxy.stop()
        );
    };
    assert_eq!(
        got,
        total - consumed,
        "the PC received the rest of the stream"
    );
    let st = srv.wait().unwrap();
    assert!(st.success(), "the server's application saw an error");
    assert_server_open_at_end(&b);
    // The phone's application hands over: close its socket.
    if let Some(stdin) = ph.stdin.as_mut() {
        let _ = stdin.write_all(b"\n");
    }
    let _ = ph.wait();

    let end = counters(server);
    let out = proxy.stop();
    print_pauses("migrate_a_download_from_phone_to_pc_with_kernel_tcp", &out);
    println!("control reply: {reply}");
    for l in out.lines().filter(|l| l.contains("migration")) {
        println!("{l}");
    }
    // While frozen: nothing at all (no retransmission, not even a tail-loss probe).
    let during = unchanged(&before, &frozen, &WATCHED);
    assert!(
        during.is_empty(),
        "the server's TCP noticed the migration: {during:?}\n{out}"
    );
    // Over the whole connection: never a timeout, a reset, a challenge ACK or a PAWS drop.
    // (A tail-loss probe may follow a burst anywhere in the transfer on this test bed: with
    // af_packet the veth receive work runs in softirqs on the poll-mode worker's own CPU and
    // can wait several milliseconds for it; a NIC does not have that.)
    let ever = unchanged(&start, &end, &NEVER);
    assert!(ever.is_empty(), "{ever:?}\n{out}");
    for ev in ["paused", "connected", "replaying", "resumed"] {
        assert!(
            out.contains(&format!(" {ev} ")),
            "no `{ev}` event in the proxy's log:\n{out}"
        );
    }
    assert!(out.contains("done=1"), "{out}");
}

#[test]
fn a_download_migrates_over_links_with_160_and_80_ms_round_trips() {
    // The phone 160 ms away (20 Mbit/s), the PC 80 ms (50 Mbit/s), through tsmp-linkem: the
    // server's segments are in flight for a long time when it is frozen, its timers scale
    // with its RTT, and nothing it notices may come from the migration.
    let b = bed_with_links(
        "w",
        &[
            ("keep_acked_bytes = 262144", "keep_acked_bytes = 8388608"),
            ("flow_cache_bytes = 4194304", "flow_cache_bytes = 16777216"),
        ],
        (
            "delay=80ms,rate=20mbit,queue=512kb",
            "delay=80ms,rate=20mbit,queue=512kb",
        ),
        (
            "delay=40ms,rate=50mbit,queue=512kb",
            "delay=40ms,rate=50mbit,queue=512kb",
        ),
    );
    let mut proxy = Proxy::start(&b.cfg, &[]);
    let total: u64 = 4 << 20;
    let consumed_target: u64 = 1 << 20;
    let mut srv = start_server(&b, total);
    let start = counters(&b.server);
    let mut ph = phone_client(&b.phone, "80", 0, consumed_target);
    let phone_port = line_from(&mut ph, "port");
    let consumed: u64 = line_from(&mut ph, "consumed").parse().unwrap();
    let before = counters(&b.server);
    let reply = control(
        &b.sock,
        &format!(
            r#"{{"migrate": {{"client": "198.18.0.1:{phone_port}", "vip": "198.18.0.10:80", "offset": {consumed}}}}}"#
        ),
    );
    let mport = reply["ok"]["migration_port"]
        .as_u64()
        .unwrap_or_else(|| panic!("migration refused: {reply}"));
    let pcc = phone_client(&b.pc, &mport.to_string(), consumed, 0);
    proxy.wait_for(" replaying ", Duration::from_secs(20));
    let frozen = counters(&b.server);
    proxy.wait_for(" resumed ", Duration::from_secs(20));
    let pc_out = pcc.wait_with_output().unwrap();
    let pc_out = String::from_utf8_lossy(&pc_out.stdout).into_owned();
    let got = pc_out
        .lines()
        .find_map(|l| l.strip_prefix("ok "))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(stdin) = ph.stdin.as_mut() {
        let _ = stdin.write_all(b"\n");
    }
    let _ = ph.wait();
    let st = srv.wait().unwrap();
    let end = counters(&b.server);
    let out = proxy.stop();
    print_pauses(
        "a_download_migrates_over_links_with_160_and_80_ms_round_trips",
        &out,
    );
    assert_eq!(
        got,
        Some(total - consumed),
        "the PC's stream: {pc_out}\n{out}"
    );
    assert!(st.success(), "the server's application saw an error\n{out}");
    let during = unchanged(&before, &frozen, &WATCHED);
    assert!(
        during.is_empty(),
        "the server's TCP noticed the migration: {during:?}\n{out}"
    );
    let ever = unchanged(&start, &end, &NEVER);
    assert!(ever.is_empty(), "{ever:?}\n{out}");
    assert!(out.contains("done=1"), "{out}");
}

fn phone_client(ns: &Netns, port: &str, start: u64, stop: u64) -> Child {
    app(
        ns,
        120,
        CLIENT,
        &["198.18.0.10", port, &start.to_string(), &stop.to_string()],
    )
}

/// The resume offsets of the `connected` events, in order.
fn resume_offsets(out: &str) -> Vec<u64> {
    out.lines()
        .filter(|l| l.contains(" connected "))
        .filter_map(|l| l.split("resume_offset=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Migrates the flow of `client`; a refusal that asks to retry (the server is repairing a loss,
/// so the resume point is not cached yet) is retried, as an agent would.
fn migrate(sock: &std::path::Path, client: &str, vip_port: u64) -> u64 {
    let req =
        format!(r#"{{"migrate": {{"client": "{client}", "vip": "198.18.0.10:{vip_port}"}}}}"#);
    let mut reply = control(sock, &req);
    for _ in 0..100 {
        if !reply["error"].as_str().is_some_and(|e| e.contains("retry")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        reply = control(sock, &req);
    }
    reply["ok"]["migration_port"]
        .as_u64()
        .unwrap_or_else(|| panic!("migration of {client} refused: {reply}"))
}

#[test]
fn migrate_phone_to_pc_and_back_to_the_phone() {
    let b = bed("f", &[]);
    let mut proxy = Proxy::start(&b.cfg, &[]);
    let total: u64 = 24 << 20;
    let mut srv = start_server(&b, total);
    let start = counters(&b.server);
    let files: Vec<_> = ["phone1", "pc", "phone2"]
        .iter()
        .map(|n| b.dir.0.join(format!("{n}.bin")))
        .collect();

    let mut p1 = drain(&b.phone, 80, &files[0]);
    let p1port = line_from(&mut p1, "port");
    wait_size(&files[0], 2 << 20);
    let m1 = migrate(&b.sock, &format!("198.18.0.1:{p1port}"), 80);
    let mut c1 = drain(&b.pc, m1, &files[1]);
    let c1port = line_from(&mut c1, "port");
    proxy.wait_for(" resumed ", Duration::from_secs(20));
    wait_size(&files[1], 2 << 20);
    // The flow now talks to the migration port: that is how it is named.
    let m2 = migrate(&b.sock, &format!("198.18.0.3:{c1port}"), m1);
    let mut p2 = drain(&b.phone, m2, &files[2]);
    let _ = line_from(&mut p2, "port");
    proxy.wait_for(" resumed ", Duration::from_secs(20));
    assert!(
        srv.wait().unwrap().success(),
        "the server's application saw an error"
    );
    assert_server_open_at_end(&b);
    for mut c in [p1, c1, p2] {
        let _ = c.wait();
    }
    let end = counters(&b.server);
    let out = proxy.stop();
    print_pauses("migrate_phone_to_pc_and_back_to_the_phone", &out);

    assert_stitched(&files, &out, total);
    let moved = unchanged(&start, &end, &NEVER);
    assert!(moved.is_empty(), "{moved:?}\n{out}");
    assert!(out.contains("done=2"), "{out}");
}

#[test]
fn a_target_that_never_connects_returns_the_flow_to_the_phone() {
    let b = bed(
        "n",
        &[(
            "migration_deadline_ms = 10000",
            "migration_deadline_ms = 1000",
        )],
    );
    let mut proxy = Proxy::start(&b.cfg, &[]);
    let total: u64 = 12 << 20;
    let mut srv = start_server(&b, total);
    let start = counters(&b.server);
    let file = b.dir.0.join("phone.bin");
    let mut p = drain(&b.phone, 80, &file);
    let port = line_from(&mut p, "port");
    wait_size(&file, 2 << 20);
    let before = counters(&b.server);
    let _ = migrate(&b.sock, &format!("198.18.0.1:{port}"), 80);
    // Nobody connects. Frozen for most of the deadline (several RTOs): read the server's
    // counters before the flow goes back to the phone.
    proxy.wait_for(" paused ", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(700));
    let frozen = counters(&b.server);
    proxy.wait_for(" cancelled ", Duration::from_secs(10));
    assert!(
        srv.wait().unwrap().success(),
        "the server's application saw an error"
    );
    assert_server_open_at_end(&b);
    let _ = p.wait();
    let end = counters(&b.server);
    let out = proxy.stop();
    print_pauses(
        "a_target_that_never_connects_returns_the_flow_to_the_phone",
        &out,
    );
    assert!(out.contains("reason=deadline back_to_device=0"), "{out}");
    let got = std::fs::read(&file).unwrap();
    assert_eq!(
        got.len() as u64,
        total,
        "the phone got the whole stream:\n{out}"
    );
    if let Err(at) = pattern_from(&got, 0) {
        panic!("byte at {at} is wrong\n{out}");
    }
    // Frozen for 0.7 s of the one-second deadline: the server noticed nothing.
    let during = unchanged(&before, &frozen, &WATCHED);
    assert!(during.is_empty(), "{during:?}\n{out}");
    let moved = unchanged(&start, &end, &NEVER);
    assert!(moved.is_empty(), "{moved:?}\n{out}");
    assert!(out.contains("cancelled=1"), "{out}");
}

#[test]
fn the_old_device_cut_off_right_after_the_request() {
    let b = bed("o", &[]);
    let mut proxy = Proxy::start(&b.cfg, &[]);
    let total: u64 = 16 << 20;
    let mut srv = start_server(&b, total);
    let start = counters(&b.server);
    let (pf, cf) = (b.dir.0.join("phone.bin"), b.dir.0.join("pc.bin"));
    let mut p = drain(&b.phone, 80, &pf);
    let port = line_from(&mut p, "port");
    wait_size(&pf, 3 << 20);
    let m = migrate(&b.sock, &format!("198.18.0.1:{port}"), 80);
    // The phone loses its link at once: whatever was in flight to it never arrives, and it
    // never acknowledges anything again.
    must("ip", &["link", "set", &b._links.1.host, "down"]);
    let mut c = drain(&b.pc, m, &cf);
    let _ = line_from(&mut c, "port");
    proxy.wait_for(" resumed ", Duration::from_secs(20));
    assert!(
        srv.wait().unwrap().success(),
        "the server's application saw an error"
    );
    assert_server_open_at_end(&b);
    let _ = c.wait();
    let _ = p.kill();
    let end = counters(&b.server);
    let out = proxy.stop();
    print_pauses("the_old_device_cut_off_right_after_the_request", &out);
    assert_stitched(&[pf.clone(), cf.clone()], &out, total);
    let moved = unchanged(&start, &end, &NEVER);
    assert!(moved.is_empty(), "{moved:?}\n{out}");
}

#[test]
fn with_nobody_left_to_take_the_flow_the_server_is_reset_without_a_challenge() {
    let b = bed(
        "r",
        &[(
            "migration_deadline_ms = 10000",
            "migration_deadline_ms = 1000",
        )],
    );
    let mut proxy = Proxy::start(&b.cfg, &[]);
    let mut srv = start_server(&b, 256 << 20);
    let file = b.dir.0.join("phone.bin");
    let mut p = drain(&b.phone, 80, &file);
    let port = line_from(&mut p, "port");
    wait_size(&file, 2 << 20);
    let before = counters(&b.server);
    let _ = migrate(&b.sock, &format!("198.18.0.1:{port}"), 80);
    // The phone's application quits (its kernel closes the connection: the proxy answers its
    // FIN or RST, the server never sees it) and no target connects: at the deadline nobody can
    // take the flow, and both ends are reset.
    proxy.wait_for(" paused ", Duration::from_secs(10));
    // (`timeout`, the child, passes SIGTERM on to the application.)
    let _ = run("kill", &["-TERM", &p.id().to_string()]);
    let _ = p.wait();
    let mut out = proxy.wait_for(" reset ", Duration::from_secs(30));
    let mut status = None;
    for _ in 0..100 {
        status = srv.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = run("kill", &["-TERM", &srv.id().to_string()]);
    let _ = srv.wait();
    let after = counters(&b.server);
    let sockets = must(
        "ip",
        &[
            "netns",
            "exec",
            &b.server.name,
            "ss",
            "-tnH",
            "state",
            "established",
        ],
    );
    out += &proxy.stop();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the server's application did not see its connection reset ({status:?}):\n{out}"
    );
    assert!(
        sockets.trim().is_empty(),
        "the server's connection lives: {sockets}\n{out}"
    );
    let d = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(
        d("Tcp:EstabResets"),
        1,
        "the reset was accepted as such\n{out}"
    );
    assert_eq!(
        d("TcpExt:TCPChallengeACK"),
        0,
        "the server challenged the proxy's RST (not at its RCV.NXT)\n{out}"
    );
}

/// `argv[1]` connections, each streaming `argv[2]` bytes of the pattern (paced), one thread each.
const SERVER_MANY: &str = r#"
import socket, sys, threading, time
n, total = int(sys.argv[1]), int(sys.argv[2])
pat = bytes(i % 251 for i in range(251 * 1024))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.19.0.2", 8080)); s.listen(n)
errors = []
def serve(c):
    try:
        sent = 0
        while sent < total:
            k = min(16384, total - sent); off = sent % 251
            c.sendall(pat[off:off + k]); sent += k; time.sleep(0.01)
        c.close()
    except Exception as e:
        errors.append(repr(e))
ts = []
for _ in range(n):
    c, _ = s.accept(); t = threading.Thread(target=serve, args=(c,)); t.start(); ts.append(t)
for t in ts: t.join()
print("errors", len(errors), errors[:3], flush=True)
sys.exit(1 if errors else 0)
"#;

/// Opens one connection to VIP:port for each port in `argv[2..]` (threads), each writing what
/// it receives to `<argv[1]>/<i>.bin`; prints `port <i> <local port>` for each, then `done`.
const DRAIN_MANY: &str = r#"
import socket, sys, threading
d, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
socks = []
for i, p in enumerate(ports):
    try:
        socks.append(socket.create_connection(("198.18.0.10", p), timeout=60))
    except OSError as e:
        print("port", i, "failed", p, e, flush=True)
        sys.exit(1)
for i, s in enumerate(socks):
    print("port", i, s.getsockname()[1], flush=True)
def run(i, s):
    out = open("%s/%d.bin" % (d, i), "wb", buffering=0)
    try:
        while (b := s.recv(65536)): out.write(b)
    except (ConnectionResetError, TimeoutError):
        pass
    out.close()
ts = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(socks)]
for t in ts: t.start()
for t in ts: t.join()
print("done", flush=True)
"#;

fn drain_many(ns: &Netns, dir: &std::path::Path, ports: &[u64]) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let ports: Vec<String> = ports.iter().map(u64::to_string).collect();
    let mut args = vec![dir.to_str().unwrap()];
    args.extend(ports.iter().map(String::as_str));
    app(ns, 120, DRAIN_MANY, &args)
}

#[test]
fn fifty_connections_migrate_at_once() {
    const N: usize = 50;
    let b = bed("x", &[]);
    let mut proxy = Proxy::start(&b.cfg, &[]);
    let total: u64 = 2 << 20;
    let mut srv = server_app(&b, SERVER_MANY, &[&N.to_string(), &total.to_string()]);
    let start = counters(&b.server);
    let (pdir, cdir) = (b.dir.0.join("phone"), b.dir.0.join("pc"));
    let mut ph = drain_many(&b.phone, &pdir, &[80; N]);
    let mut ports = Vec::new();
    for _ in 0..N {
        ports.push(
            line_from(&mut ph, "port")
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_owned(),
        );
    }
    for i in 0..N {
        wait_size(&pdir.join(format!("{i}.bin")), 256 << 10);
    }
    // Every connection at once: the requests, then the PC's connections.
    let mports: Vec<u64> = ports
        .iter()
        .map(|p| migrate(&b.sock, &format!("198.18.0.1:{p}"), 80))
        .collect();
    let mut pc = drain_many(&b.pc, &cdir, &mports);
    for _ in 0..N {
        let l = line_from(&mut pc, "port");
        if l.contains("failed") {
            let _ = srv.kill();
            panic!("the PC could not connect: {l}\n{}", proxy.stop());
        }
    }
    for _ in 0..N {
        proxy.wait_for(" resumed ", Duration::from_secs(30));
    }
    assert!(
        srv.wait().unwrap().success(),
        "a server connection saw an error"
    );
    let _ = line_from(&mut pc, "done");
    let _ = ph.wait();
    let end = counters(&b.server);
    let out = proxy.stop();
    print_pauses("fifty_connections_migrate_at_once", &out);
    // The i-th request went with the i-th phone connection; the proxy's events say each flow's
    // resume offset (`flow=<slot>` order is the request order: one request per flow).
    let mut resumes = std::collections::HashMap::new();
    for l in out.lines().filter(|l| l.contains(" connected ")) {
        let flow = l
            .split("flow=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next());
        let r = l
            .split("resume_offset=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next());
        if let (Some(f), Some(r)) = (flow, r) {
            resumes.insert(f.to_owned(), r.parse::<u64>().unwrap());
        }
    }
    assert_eq!(resumes.len(), N, "{out}");
    let mut checked = 0;
    for i in 0..N {
        let phone = std::fs::read(pdir.join(format!("{i}.bin"))).unwrap();
        let pc = std::fs::read(cdir.join(format!("{i}.bin"))).unwrap();
        // Find this connection's resume point: the one that stitches its two halves.
        let r = total - pc.len() as u64;
        assert!(
            resumes.values().any(|&v| v == r),
            "connection {i}: the PC got {} bytes, no flow resumed at {r}",
            pc.len()
        );
        assert!(
            phone.len() as u64 >= r,
            "connection {i}: the phone lacks bytes before {r}"
        );
        pattern_from(&phone[..usize::try_from(r).unwrap()], 0).unwrap();
        pattern_from(&pc, r).unwrap();
        checked += 1;
    }
    assert_eq!(checked, N);
    assert!(out.contains(&format!("done={N}")), "{out}");
    let moved = unchanged(&start, &end, &NEVER);
    assert!(moved.is_empty(), "{moved:?}\n{out}");
}

/// A line-based chat server: answers each line `<n> ...` with `echo <n>`, records every line
/// it received in order to `argv[1]`, and exits when the client closes.
const CHAT_SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.19.0.2", 8080)); s.listen(1); c, _ = s.accept()
f = c.makefile("rwb", buffering=0); log = open(sys.argv[1], "w")
for line in f:
    log.write(line.decode()); log.flush()
    f.write(b"echo " + line.split()[0] + b"\n")
print("closed", flush=True)
"#;

/// A chat client on VIP:`argv[1]`: sends lines `argv[2]..argv[3]` (one every 5 ms), each
/// waiting for its echo; prints `port`, then `said <n>`; with `argv[4] == "stay"`, keeps the
/// connection open until it ends, else closes it.
const CHAT_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection(("198.18.0.10", int(sys.argv[1])), timeout=30)
print("port", s.getsockname()[1], flush=True)
f = s.makefile("rwb", buffering=0)
for n in range(int(sys.argv[2]), int(sys.argv[3])):
    f.write(b"%d hello from line %d\n" % (n, n))
    echo = f.readline()
    if echo != b"echo %d\n" % n:
        print("bad echo", echo, flush=True); sys.exit(1)
    time.sleep(0.005)
print("said", int(sys.argv[3]) - int(sys.argv[2]), flush=True)
if sys.argv[4] == "stay":
    try:
        while s.recv(4096): pass
    except (ConnectionResetError, TimeoutError):
        pass
s.close()
"#;

fn chat(ns: &Netns, port: u64, from: u32, to: u32, stay: bool) -> Child {
    app(
        ns,
        60,
        CHAT_CLIENT,
        &[
            &port.to_string(),
            &from.to_string(),
            &to.to_string(),
            if stay { "stay" } else { "go" },
        ],
    )
}

#[test]
fn a_chat_session_moves_and_keeps_talking_both_ways() {
    let b = bed("t", &[]);
    let proxy = Proxy::start(&b.cfg, &[]);
    let log = b.dir.0.join("chat.log");
    let mut srv = server_app(&b, CHAT_SERVER, &[log.to_str().unwrap()]);
    let start = counters(&b.server);
    let mut phone = chat(&b.phone, 80, 0, 50, true);
    let port = line_from(&mut phone, "port");
    assert_eq!(line_from(&mut phone, "said"), "50", "the phone chatted");
    let m = migrate(&b.sock, &format!("198.18.0.1:{port}"), 80);
    let mut pc = chat(&b.pc, m, 50, 100, false);
    let _ = line_from(&mut pc, "port");
    assert_eq!(line_from(&mut pc, "said"), "50", "the PC chatted on");
    assert!(
        pc.wait().unwrap().success(),
        "every echo came back to the PC"
    );
    assert!(srv.wait().unwrap().success());
    let _ = phone.wait();
    let end = counters(&b.server);
    let out = proxy.stop();
    print_pauses("a_chat_session_moves_and_keeps_talking_both_ways", &out);
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = (0..100)
        .map(|n| format!("{n} hello from line {n}"))
        .collect();
    assert_eq!(
        lines, want,
        "the server heard every line once, in order:\n{out}"
    );
    let moved = unchanged(&start, &end, &NEVER);
    assert!(moved.is_empty(), "{moved:?}\n{out}");
    assert!(out.contains("done=1"), "{out}");
}

#[test]
fn a_server_in_congestion_avoidance_keeps_its_ssthresh() {
    // One segment toward the phone is lost (the 800th, about 1 MiB in): the server's fast
    // retransmit sets a finite ssthresh, and it is in congestion avoidance from then on. The
    // request goes once the loss is repaired: finite ssthresh, congestion state Open.
    let (run, at_mfr) = lossy_migration(
        "ca",
        "ip saddr 198.18.0.10 tcp sport 80 numgen inc mod 1000000 == 800 counter drop",
        24 << 20,
        |b| {
            server_tcp_info(b)
                .last()
                .copied()
                .filter(|s| s[3] < INFINITE_SSTHRESH && s[1] == 0 && s[4] > 0)
        },
    );
    // Its congestion control saw no loss from the migration: a loss recovery would have set
    // ssthresh again. (A tail-loss probe elsewhere in the transfer is this test bed's, see the
    // README's known limits; the capture holds the freeze itself to zero.)
    // [state, ca_state, cwnd, ssthresh, total_retrans]
    assert_eq!(
        run.last[3], at_mfr[3],
        "ssthresh changed from {at_mfr:?} (at the request) to {:?}\n{}",
        run.last, run.out
    );
    println!(
        "TCP_INFO at the request {at_mfr:?}, at the end {:?}",
        run.last
    );
}

/// The devices' files, in the order the flow visited them, cut at the resume points the
/// proxy's log reports, are the server's stream exactly: each holds at least its part (the
/// pattern from its cut), the last one exactly the rest.
fn assert_stitched(files: &[std::path::PathBuf], out: &str, total: u64) {
    let r = resume_offsets(out);
    assert_eq!(r.len() + 1, files.len(), "migrations in the log:\n{out}");
    let cuts: Vec<u64> = std::iter::once(0).chain(r).chain([total]).collect();
    for (k, f) in files.iter().enumerate() {
        let d = std::fs::read(f).unwrap();
        let want = cuts[k + 1] - cuts[k];
        assert!(
            d.len() as u64 >= want,
            "device {k} has {} bytes, it should hold [{}, {}):\n{out}",
            d.len(),
            cuts[k],
            cuts[k + 1]
        );
        if let Err(at) = pattern_from(&d[..usize::try_from(want).unwrap()], cuts[k]) {
            panic!("device {k}: byte at stream offset {at} is wrong\n{out}");
        }
        if k + 1 == files.len() {
            assert_eq!(
                d.len() as u64,
                want,
                "the last device got exactly the rest:\n{out}"
            );
        }
    }
}

/// Loads an nftables rule into the phone's namespace, applied to frames arriving there (before
/// its TCP sees them).
fn drop_toward_phone(b: &Bed, rule: &str) {
    let rules = write_rules(b, rule);
    let o = b.phone.exec(&["nft", "-f", &rules]);
    assert!(
        o.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An nftables ruleset for the phone's namespace that applies `rule` to frames arriving
/// there (before TCP sees them); its file's path.
fn write_rules(b: &Bed, rule: &str) -> String {
    let path = b.dir.0.join("rules.nft");
    std::fs::write(
        &path,
        format!(
            "table ip tsmp_test {{\n chain pre {{\n  type filter hook prerouting priority -300;\n  {rule}\n }}\n}}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// A capture (tcpdump) on the server's interface, in its namespace.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

/// One TCP segment of the server's connection: time (s), sent by the server, seq, ack,
/// window field, payload length.
struct Seg {
    t: f64,
    out: bool,
    seq: u32,
    win: u16,
    len: u32,
}

impl Capture {
    fn start(b: &Bed) -> Capture {
        let file = b.dir.0.join("server.pcap");
        let mut child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &b.server.name,
                "tcpdump",
                "-i",
                "eth0",
                "-s",
                "128",
            ])
            .args(["-U", "-n", "-w", file.to_str().unwrap(), "tcp port 8080"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tcpdump (scripts/setup.sh installs it)");
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        use std::io::BufRead;
        while err.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("listening on") {
            line.clear();
        }
        assert!(line.contains("listening on"), "tcpdump did not start");
        Capture { child, file }
    }

    /// Stops the capture; the server's segments.
    fn stop(mut self) -> Vec<Seg> {
        let _ = run("kill", &["-TERM", &self.child.id().to_string()]);
        let _ = self.child.wait();
        let data = std::fs::read(&self.file).unwrap_or_default();
        let (mut i, mut segs) = (24, Vec::new());
        let u32le = |d: &[u8], at: usize| u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
        let be16 = |d: &[u8], at: usize| u16::from_be_bytes(d[at..at + 2].try_into().unwrap());
        let be32 = |d: &[u8], at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
        while i + 16 <= data.len() {
            let (sec, usec, caplen) = (u32le(&data, i), u32le(&data, i + 4), u32le(&data, i + 8));
            let f = &data[i + 16..(i + 16 + caplen as usize).min(data.len())];
            i += 16 + caplen as usize;
            if f.len() < 54 || f[12..14] != [8, 0] || f[23] != 6 {
                continue;
            }
            let ihl = usize::from(f[14] & 15) * 4;
            let t = 14 + ihl;
            let hl = u32::from(f[t + 12] >> 4) * 4;
            segs.push(Seg {
                t: f64::from(sec) + f64::from(usec) / 1e6,
                out: be16(f, t) == 8080,
                seq: be32(f, t + 4),
                win: be16(f, t + 14),
                len: u32::from(be16(f, 16)) - ihl as u32 - hl,
            });
        }
        segs
    }
}

/// The time the server first received a zero window, when it was opened again, and the times
/// of the data segments it sent again (their end not beyond what it had sent).
fn freeze_and_resends(segs: &[Seg]) -> (Option<f64>, Option<f64>, Vec<f64>) {
    let zero = segs.iter().find(|s| !s.out && s.win == 0).map(|s| s.t);
    let opened = zero.and_then(|z| {
        segs.iter()
            .find(|s| !s.out && s.t > z && s.win > 0)
            .map(|s| s.t)
    });
    let (mut top, mut again) = (None::<u32>, Vec::new());
    for s in segs.iter().filter(|s| s.out && s.len > 0) {
        let end = s.seq.wrapping_add(s.len);
        match top {
            // `end` at or before `t`, in sequence space.
            Some(t) if t.wrapping_sub(end) < 1 << 31 => again.push(s.t),
            _ => top = Some(end),
        }
    }
    (zero, opened, again)
}

#[test]
fn migrate_under_loss_on_the_phone_link() {
    // 1% of the segments toward the phone are lost before its TCP sees them; the request goes
    // after 4 MiB.
    let (run, ()) = lossy_migration(
        "l",
        "ip saddr 198.18.0.10 tcp sport 80 numgen random mod 1000 < 10 counter drop",
        16 << 20,
        |b| {
            let got = std::fs::metadata(b.dir.0.join("phone")).map_or(0, |m| m.len());
            (got >= 4 << 20).then_some(())
        },
    );
    // The lossy link made the server retransmit before the freeze; the freeze's ACK covered
    // whatever the phone had lost (the PC got it from the proxy's cache).
    assert!(
        run.again.iter().any(|&t| t < run.zero),
        "1% loss before the freeze and no retransmission: is the loss rule in place?"
    );
    println!(
        "{} segments sent again before the freeze, {} after it reopened",
        run.again.iter().filter(|&&t| t < run.zero).count(),
        run.again.iter().filter(|&&t| t > run.opened).count()
    );
}

/// What [`lossy_migration`] leaves for a test to judge further.
struct LossyRun {
    out: String,
    /// The server socket's last TCP_INFO sample.
    last: [u64; 5],
    /// First zero-window ACK the server received, the window's reopening, and every data
    /// segment it sent again (capture times, seconds).
    zero: f64,
    opened: f64,
    again: Vec<f64>,
}

/// A download from the phone while the phone's namespace applies the nftables `rule`, with a
/// capture on the server's interface; once `ready` gives a value, the flow moves to the PC.
/// Checked here for every such run: the devices' bytes stitch into the stream; the server's
/// application saw no error, its socket ends ESTABLISHED and Open, its counters never show a
/// timeout, reset, challenge ACK or PAWS drop; and, from the capture (exact, unlike counters
/// read around it), it sent nothing again while frozen.
fn lossy_migration<R>(
    tag: &str,
    rule: &str,
    total: u64,
    mut ready: impl FnMut(&Bed) -> Option<R>,
) -> (LossyRun, R) {
    let b = bed(tag, &[]);
    drop_toward_phone(&b, rule);
    let mut proxy = Proxy::start(&b.cfg, &[]);
    let cap = Capture::start(&b);
    let mut srv = start_server(&b, total);
    let start = counters(&b.server);
    let files: Vec<_> = ["phone", "pc"].iter().map(|n| b.dir.0.join(n)).collect();
    let mut ph = drain(&b.phone, 80, &files[0]);
    let port = line_from(&mut ph, "port");
    let mut got = None;
    for _ in 0..2000 {
        got = ready(&b);
        if got.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let Some(got) = got else {
        let _ = srv.kill();
        panic!(
            "the moment to migrate never came (server TCP_INFO {:?})\n{}",
            server_tcp_info(&b).last(),
            proxy.stop()
        );
    };
    let m = migrate(&b.sock, &format!("198.18.0.1:{port}"), 80);
    let mut pc = drain(&b.pc, m, &files[1]);
    let _ = line_from(&mut pc, "port");
    proxy.wait_for(" resumed ", Duration::from_secs(20));
    assert!(
        srv.wait().unwrap().success(),
        "the server's application saw an error"
    );
    for mut c in [ph, pc] {
        let _ = c.wait();
    }
    let end = counters(&b.server);
    let segs = cap.stop();
    let out = proxy.stop();
    print_pauses(tag, &out);
    let last = assert_server_open_at_end(&b);
    assert_stitched(&files, &out, total);
    let ever = unchanged(&start, &end, &NEVER);
    assert!(ever.is_empty(), "{ever:?}\n{out}");
    let (zero, opened, again) = freeze_and_resends(&segs);
    let (Some(zero), Some(opened)) = (zero, opened) else {
        panic!(
            "the capture shows no freeze ({} segments)\n{out}",
            segs.len()
        );
    };
    let frozen: Vec<f64> = again
        .iter()
        .filter(|&&t| t >= zero && t <= opened)
        .map(|t| (t - zero) * 1e3)
        .collect();
    assert!(
        frozen.is_empty(),
        "the server sent segments again while frozen, at {frozen:?} ms\n{out}"
    );
    println!("frozen {:.1} ms (capture)", (opened - zero) * 1e3);
    (
        LossyRun {
            out,
            last,
            zero,
            opened,
            again,
        },
        got,
    )
}
