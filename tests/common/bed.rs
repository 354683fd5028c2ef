//! The migration test bed: a server, a "phone" and a "PC" in network namespaces (198.18.0.0/15
//! only), the phone and the PC on one bridge in front of the proxy's client port; the
//! applications that run there, and the server-side TCP counters that prove the server did not
//! notice.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::{must, run, Netns, TempDir, Veth};

/// Streams `total` bytes of the pattern `i % 251`, paced, then closes; prints `sent <n>`.
/// The socket uses CUBIC (Linux's default; this host may default to BBR, which keeps no
/// loss-based ssthresh) and its TCP_INFO is recorded every 5 ms into `argv[2]`:
/// `time state ca_state cwnd ssthresh total_retrans`, with a last line after the end.
pub const SERVER: &str = r#"
import socket, struct, sys, threading, time
total, samples = int(sys.argv[1]), open(sys.argv[2], "w", buffering=1)
pat = bytes(i % 251 for i in range(251 * 1024))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.19.0.2", 8080)); s.listen(1)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
done = False
def info():
    b = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    u = struct.unpack_from("24I", b, 8)
    return "%.4f %d %d %d %d %d" % (time.time(), b[0], b[1], u[18], u[17], u[23])
def sample():
    while not done:
        samples.write(info() + "\n"); time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
sent = 0
while sent < total:
    n = min(65536, total - sent)
    off = sent % 251
    c.sendall(pat[off:off + n])
    sent += n
    time.sleep(0.004)
time.sleep(0.3)
done = True; time.sleep(0.02)
samples.write(info() + "\n")
c.close()
print("sent", sent, flush=True)
"#;

/// TCP counters of the server's namespace that must not move because of a migration.
pub const WATCHED: [&str; 9] = [
    "Tcp:RetransSegs",
    "Tcp:OutRsts",
    "TcpExt:TCPTimeouts",
    "TcpExt:TCPLossProbes",
    "TcpExt:TCPSpuriousRTOs",
    "TcpExt:TCPChallengeACK",
    "TcpExt:PAWSEstab",
    "TcpExt:TCPAbortOnData",
    "TcpExt:TCPSlowStartRetrans",
];

/// The kernel's TCP counters in `ns` (/proc/net/snmp and /proc/net/netstat).
pub fn counters(ns: &Netns) -> std::collections::HashMap<String, u64> {
    let mut m = std::collections::HashMap::new();
    for f in ["/proc/net/snmp", "/proc/net/netstat"] {
        let o = ns.exec(&["cat", f]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [h, v] = pair else { continue };
            let (Some((p, names)), Some((_, vals))) = (h.split_once(':'), v.split_once(':')) else {
                continue;
            };
            for (n, v) in names.split_whitespace().zip(vals.split_whitespace()) {
                if let Ok(v) = v.parse() {
                    m.insert(format!("{p}:{n}"), v);
                }
            }
        }
    }
    m
}

pub struct Bridge(pub String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.0]);
    }
}

/// A veth pair with both ends in the host (one for af_packet, one on the bridge).
pub struct HostVeth(pub String);

impl Drop for HostVeth {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.0]);
    }
}

/// The next line of the child's output that starts with `prefix` (read a byte at a time: no
/// buffer may swallow the lines after it).
pub fn line_from(child: &mut Child, prefix: &str) -> String {
    let out = child.stdout.as_mut().expect("piped stdout");
    loop {
        let mut l = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match out.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => l.push(byte[0]),
                _ if l.is_empty() => panic!("no `{prefix}` line from the application"),
                _ => break,
            }
        }
        let l = String::from_utf8_lossy(&l).into_owned();
        if let Some(rest) = l.trim().strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
}

/// The test bed: server, phone and PC namespaces, the bridge, the proxy's configuration (the
/// embedded default with `subst` applied) and its control socket path.
pub struct Bed {
    pub server: Netns,
    pub phone: Netns,
    pub pc: Netns,
    pub dir: TempDir,
    pub sock: std::path::PathBuf,
    pub cfg: std::path::PathBuf,
    /// Link emulators between the devices and the bridge (dropped before the links).
    pub emulators: Vec<super::Killed>,
    pub _links: (Veth, Veth, Veth, HostVeth, Bridge),
    pub _shaped: Vec<HostVeth>,
    /// The appliance's kernel side (exception path), with agent control.
    pub appliance: Option<Netns>,
}

/// The appliance's address on the client side: agents' control port and naming server.
pub const APPLIANCE: &str = "198.18.0.254";
/// The agents' control port on [`APPLIANCE`].
pub const AGENTS_PORT: u16 = 7000;

pub fn bed(tag: &str, subst: &[(&str, &str)]) -> Bed {
    build(tag, subst, false, None)
}

/// The test bed with the phone's and the PC's links emulated by `tsmp-linkem` (each a
/// `(toward the appliance, toward the device)` pair of its link specifications).
pub fn bed_with_links(
    tag: &str,
    subst: &[(&str, &str)],
    phone: (&str, &str),
    pc: (&str, &str),
) -> Bed {
    build(tag, subst, false, Some([phone, pc]))
}

/// The test bed with the control plane: the exception path's kernel side in an "appliance"
/// namespace, where the agents' control port (198.18.0.254:7000) and the naming server
/// (198.18.0.254:53) live, the proxy's key in the bed's directory.
pub fn bed_with_agents(tag: &str, subst: &[(&str, &str)]) -> Bed {
    build(tag, subst, true, None)
}

fn build(tag: &str, subst: &[(&str, &str)], agents: bool, links: Option<[(&str, &str); 2]>) -> Bed {
    super::require_root();
    let t = format!("{tag}{}", super::tag());

    let dir = TempDir::new(&format!("migrate-{t}"));
    let server = Netns::new(&format!("tsmpt-s{t}"));
    let phone = Netns::new(&format!("tsmpt-p{t}"));
    let pc = Netns::new(&format!("tsmpt-c{t}"));
    let vs = Veth::new(&format!("tms{t}"), &server, "198.19.0.2/24");
    let vp = Veth::new(&format!("tmp{t}"), &phone, "198.18.0.1/24");
    let vc = Veth::new(&format!("tmc{t}"), &pc, "198.18.0.3/24");
    // The proxy's client port: one end of a host veth pair; the other end, the phone's and the
    // PC's host ends on one bridge.
    let br = Bridge(format!("tmb{t}"));
    let _ = run("ip", &["link", "del", &br.0]);
    must("ip", &["link", "add", &br.0, "type", "bridge"]);
    let px = HostVeth(format!("tmx{t}"));
    let pxb = format!("tmx{t}b");
    let _ = run("ip", &["link", "del", &px.0]);
    must(
        "ip",
        &["link", "add", &px.0, "type", "veth", "peer", "name", &pxb],
    );
    for dev in [&px.0, &pxb] {
        must(
            "ethtool",
            &[
                "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off",
            ],
        );
    }
    // Shaped: a device's host end goes to its link emulator, whose other side is a veth pair
    // with its far end on the bridge.
    let mut emulators = Vec::new();
    let mut shaped = Vec::new();
    let mut bridged = vec![pxb.clone()];
    for (i, dev) in [&vp.host, &vc.host].into_iter().enumerate() {
        let Some((up, down)) = links.map(|l| l[i]) else {
            bridged.push(dev.clone());
            continue;
        };
        let side = HostVeth(format!("tml{i}{t}"));
        let far = format!("{}b", side.0);
        let _ = run("ip", &["link", "del", &side.0]);
        must(
            "ip",
            &["link", "add", &side.0, "type", "veth", "peer", "name", &far],
        );
        for d in [&side.0, &far] {
            must(
                "ethtool",
                &[
                    "-K", d, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off",
                ],
            );
            let _ = run(
                "sysctl",
                &["-qw", &format!("net.ipv6.conf.{d}.disable_ipv6=1")],
            );
            must("ip", &["link", "set", d, "up"]);
        }
        let mut child = std::process::Command::new("taskset")
            .args(["-c", "0"])
            .arg(super::tool("tsmp-linkem"))
            .args(["--a", dev, "--b", &side.0, "--a-to-b", up, "--b-to-a", down])
            .args(["--seed", &(i + 1).to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tsmp-linkem");
        line_from(&mut child, "tsmp-linkem:");
        emulators.push(super::Killed(child));
        bridged.push(far);
        shaped.push(side);
    }
    for port in &bridged {
        must("ip", &["link", "set", port, "master", &br.0]);
    }
    for dev in [&br.0, &px.0, &pxb] {
        must("ip", &["link", "set", dev, "up"]);
    }
    let sock = dir.0.join("tsmp.sock");
    let (c0, s0, fp) = (
        format!("iface={},qpairs=1", px.0),
        format!("iface={},qpairs=1", vs.host),
        format!("file_prefix = \"tsmpt{t}\""),
    );
    let mut all: Vec<(&str, &str)> = vec![
        ("iface=tsmp-c0,qpairs=1", &c0),
        ("iface=tsmp-s0,qpairs=1", &s0),
        ("file_prefix = \"tsmp\"", &fp),
    ];
    all.extend_from_slice(subst);
    let mut text = super::profile("default.toml", &all);
    text.push_str(&format!(
        "\n[control]\ncli_socket = \"{}\"\n",
        sock.display()
    ));
    let appliance = agents.then(|| Netns::new(&format!("tsmpt-a{t}")));
    if let Some(a) = &appliance {
        text.push_str(&format!(
            "agents = \"{APPLIANCE}:{AGENTS_PORT}\"\nnames = \"{APPLIANCE}:53\"\nzone = \"tsmp.test\"\nkey = \"{}\"\n\n[exception]\ntap = \"tmt{t}\"\nnetns = \"{}\"\n",
            dir.0.join("proxy.key").display(),
            a.name
        ));
    }
    let cfg = dir.0.join("proxy.toml");
    std::fs::write(&cfg, text).unwrap();
    Bed {
        server,
        phone,
        pc,
        dir,
        sock,
        cfg,
        emulators,
        _links: (vs, vp, vc, px, br),
        _shaped: shaped,
        appliance,
    }
}

/// Runs a Python application in `ns` on CPU 0, bounded by `timeout` seconds, stdin and stdout
/// piped. The applications stay off CPU 1: the poll-mode worker's CPU stays its own, as on an
/// appliance (a preempted worker acknowledges late, which a server sees as a tail loss).
pub fn app(ns: &Netns, timeout: u32, script: &str, args: &[&str]) -> Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "timeout", &timeout.to_string()])
        .args(["taskset", "-c", "0", "python3", "-c", script])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("application in its namespace")
}

/// A server application, given a moment to listen.
pub fn server_app(b: &Bed, script: &str, args: &[&str]) -> Child {
    let srv = app(&b.server, 120, script, args);
    std::thread::sleep(Duration::from_millis(300));
    srv
}

/// A device that reads everything into a file until the end of its connection to
/// VIP:`argv[1]`; prints `port <local port>`, then `done <bytes>`.
pub const DRAIN: &str = r#"
import socket, sys
s = socket.create_connection(("198.18.0.10", int(sys.argv[1])), timeout=60)
print("port", s.getsockname()[1], flush=True)
out = open(sys.argv[2], "wb", buffering=0); n = 0
try:
    while (b := s.recv(65536)):
        out.write(b); n += len(b)
except (ConnectionResetError, TimeoutError):
    pass
out.close()
try:
    print("done", n, flush=True)
except BrokenPipeError:
    pass  # the test stopped listening: fine
"#;

pub fn start_server(b: &Bed, total: u64) -> Child {
    let samples = b.dir.0.join("tcp_info");
    server_app(b, SERVER, &[&total.to_string(), samples.to_str().unwrap()])
}

/// ssthresh of a socket that never left slow start.
pub const INFINITE_SSTHRESH: u64 = 0x7fff_ffff;

/// `[state, ca_state, cwnd, ssthresh, total_retrans]` of every TCP_INFO sample of
/// [`start_server`]'s socket so far.
pub fn server_tcp_info(b: &Bed) -> Vec<[u64; 5]> {
    std::fs::read_to_string(b.dir.0.join("tcp_info"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            <[u64; 5]>::try_from(v).ok()
        })
        .collect()
}

/// After [`start_server`]'s application finished: its socket was still established and in
/// congestion state Open (not Disorder, CWR, Recovery or Loss); the last sample.
pub fn assert_server_open_at_end(b: &Bed) -> [u64; 5] {
    let last = *server_tcp_info(b)
        .last()
        .expect("no TCP_INFO sample from the server");
    assert_eq!(
        last[0], 1,
        "the server's socket is not ESTABLISHED at the end: {last:?}"
    );
    assert_eq!(
        last[1], 0,
        "the server's congestion state at the end is not Open: {last:?}"
    );
    last
}

pub fn drain(ns: &Netns, port: u64, file: &std::path::Path) -> Child {
    app(ns, 120, DRAIN, &[&port.to_string(), file.to_str().unwrap()])
}

/// Waits until `file` holds at least `n` bytes.
pub fn wait_size(file: &std::path::Path, n: u64) {
    for _ in 0..2000 {
        if std::fs::metadata(file).map(|m| m.len()).unwrap_or(0) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{} never reached {n} bytes", file.display());
}

/// Whether `bytes` are the server's stream from offset `start`.
pub fn pattern_from(bytes: &[u8], start: u64) -> Result<(), u64> {
    for (i, b) in bytes.iter().enumerate() {
        let at = start + i as u64;
        if u64::from(*b) != at % 251 {
            return Err(at);
        }
    }
    Ok(())
}

/// Counters that must never move over a connection that migrates.
pub const NEVER: [&str; 5] = [
    "Tcp:OutRsts",
    "TcpExt:TCPTimeouts",
    "TcpExt:TCPChallengeACK",
    "TcpExt:PAWSEstab",
    "TcpExt:TCPAbortOnData",
];

pub fn unchanged(
    a: &std::collections::HashMap<String, u64>,
    b: &std::collections::HashMap<String, u64>,
    keys: &[&str],
) -> Vec<String> {
    keys.iter()
        .filter(|k| a.get(**k) != b.get(**k))
        .map(|k| format!("{k} {:?} -> {:?}", a.get(*k), b.get(*k)))
        .collect()
}

/// Each migration's pause from the proxy's log, on the owning worker's clock:
/// `(paused -> connected, connected -> resumed)` in ms, in the order they resumed (a flow
/// that went back to its old device: `(paused -> resumed, 0)`). The first
/// part waits for the new device (in these tests, a program started after the request), the
/// second is its handshake's last step, the replay and the splice.
pub fn pauses(out: &str) -> Vec<(f64, f64)> {
    let mut open: std::collections::HashMap<String, (f64, Option<f64>)> = Default::default();
    let mut done = Vec::new();
    for l in out.lines().filter(|l| l.starts_with("migration worker=")) {
        let mut f = l.split_whitespace();
        let key = format!("{} {}", f.nth(1).unwrap_or(""), f.next().unwrap_or(""));
        let (Some(ev), Some(t)) = (
            f.next(),
            f.next()
                .and_then(|t| t.strip_prefix("t="))
                .and_then(|t| t.strip_suffix("ms"))
                .and_then(|t| t.parse::<f64>().ok()),
        ) else {
            continue;
        };
        match ev {
            "paused" => {
                open.insert(key, (t, None));
            }
            "connected" => {
                if let Some(p) = open.get_mut(&key) {
                    p.1 = Some(t);
                }
            }
            "resumed" => match open.remove(&key) {
                Some((p, Some(c))) => done.push((c - p, t - c)),
                // Back to the old device (the new one never came): all of it was waiting.
                Some((p, None)) => done.push((t - p, 0.0)),
                None => {}
            },
            _ => {}
        }
    }
    done
}

/// Prints [`pauses`] as one line (for the README's table).
pub fn print_pauses(test: &str, out: &str) {
    let p = pauses(out);
    let max = |f: fn(&(f64, f64)) -> f64| p.iter().map(f).fold(0.0f64, f64::max);
    println!(
        "pause {test}: {} migration(s); waiting for the new device up to {:.1} ms; handshake, replay and splice up to {:.1} ms",
        p.len(),
        max(|x| x.0),
        max(|x| x.1)
    );
}
