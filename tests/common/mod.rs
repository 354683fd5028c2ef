//! Helpers for the privileged end-to-end tests: root check, network namespaces and veths that
//! are removed on drop (also when a test fails), and a proxy process that is stopped on drop.
#![allow(dead_code)]

pub mod bed;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Fails the test (it does not skip) when not root: these tests are part of the suite.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|r| r.split_whitespace().next().unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this test needs root (network namespaces, hugepages, DPDK): run `sudo scripts/test.sh`"
    );
}

/// Runs a command, returning its output; panics with the command line if it cannot start.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} {args:?}: {e}"))
}

/// A command's stdout followed by its stderr, for assertions and failure messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a command that must succeed.
#[track_caller]
pub fn must(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        output_text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The path of a workspace binary built beside `tsmp-proxy` (the tools live in their own
/// crates: `cargo build --workspace` builds them into the same target directory).
pub fn tool(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_tsmp-proxy")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: build the whole workspace first (`cargo build --workspace`, as scripts/test.sh does)",
        p.display()
    );
    p
}

/// Runs `tsmp-pktgen ARGS --dir DIR`: whether it succeeded, and its output.
pub fn pktgen(args: &[&str], dir: &Path) -> (bool, String) {
    let o = Command::new(tool("tsmp-pktgen"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run tsmp-pktgen");
    (o.status.success(), output_text(&o))
}

/// A network namespace, deleted on drop (with the veth ends inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = run("ip", &["netns", "del", name]);
        must("ip", &["netns", "add", name]);
        must("ip", &["-n", name, "link", "set", "lo", "up"]);
        Netns {
            name: name.to_owned(),
        }
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut v = vec!["netns", "exec", &self.name];
        v.extend_from_slice(args);
        run("ip", &v)
    }

    /// Spawns a command inside the namespace.
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn in netns")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair: `host` stays in the root namespace (for an af_packet port), the peer becomes
/// `eth0` in `ns` with `addr` (CIDR). Offloads are off on both ends, so af_packet sees full
/// checksums and no GSO/GRO super-frames.
pub struct Veth {
    pub host: String,
}

impl Veth {
    pub fn new(host: &str, ns: &Netns, addr: &str) -> Veth {
        let _ = run("ip", &["link", "del", host]);
        let peer = format!("{host}p");
        must(
            "ip",
            &["link", "add", host, "type", "veth", "peer", "name", &peer],
        );
        let v = Veth {
            host: host.to_owned(),
        };
        must("ip", &["link", "set", &peer, "netns", &ns.name]);
        must(
            "ip",
            &["-n", &ns.name, "link", "set", &peer, "name", "eth0"],
        );
        must("ip", &["-n", &ns.name, "addr", "add", addr, "dev", "eth0"]);
        let _ = run(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{host}.disable_ipv6=1")],
        );
        must("ip", &["link", "set", host, "up"]);
        must("ip", &["-n", &ns.name, "link", "set", "eth0", "up"]);
        for (dev, in_ns) in [(host, false), ("eth0", true)] {
            let args = [
                "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off",
            ];
            let o = if in_ns {
                ns.exec(&[&["ethtool"][..], &args[..]].concat())
            } else {
                run("ethtool", &args)
            };
            assert!(
                o.status.success(),
                "ethtool {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.host]);
    }
}

/// A running `tsmp-proxy`, stopped with SIGTERM (then SIGKILL) on drop.
pub struct Proxy {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub output: Vec<String>,
}

impl Proxy {
    /// Starts the proxy with `config` and waits until it forwards.
    pub fn start(config: &Path, extra: &[&str]) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tsmp-proxy"))
            .arg("--config")
            .arg(config)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tsmp-proxy");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        let mut p = Proxy {
            child,
            lines,
            output: Vec::new(),
        };
        p.wait_for("forwarding", Duration::from_secs(30));
        p
    }

    /// Waits for an output line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    self.output.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "tsmp-proxy did not print {needle:?} in time; output so far:\n{}",
                    self.output.join("\n")
                ),
            }
        }
    }

    /// Sends SIGTERM, waits for a clean exit and returns all output.
    pub fn stop(mut self) -> String {
        let _ = run("kill", &["-TERM", &self.child.id().to_string()]);
        let status = self.child.wait().expect("wait tsmp-proxy");
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.output.push(l);
        }
        let out = self.output.join("\n");
        assert!(status.success(), "tsmp-proxy exited with {status}:\n{out}");
        out
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = run("kill", &["-TERM", &self.child.id().to_string()]);
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A child process killed (and reaped) on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tsmp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A short unique suffix for interface names (IFNAMSIZ is 16).
pub fn tag() -> String {
    format!("{}", std::process::id() % 100_000)
}

/// A TCP server for tests (python3, threaded): each connection sends a line `N SEED`, and gets
/// `N` bytes of `random.Random(SEED).randbytes(N)`, then the server closes.
pub const SEED_SERVER: &str = r#"
import socket, sys, threading, random
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(1024)
def serve(c):
    try:
        f = c.makefile("rb"); n, seed = map(int, f.readline().split())
        c.sendall(random.Random(seed).randbytes(n)); c.shutdown(socket.SHUT_WR)
        c.recv(1)
    except Exception as e:
        print("server error", e, flush=True)
    finally:
        c.close()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The matching client: `ADDR PORT CONNS BYTES` opens CONNS concurrent connections, each asking
/// for BYTES with its own seed, and checks the SHA-256 of what it received against the expected
/// stream. Prints `ok CONNS` or the failures.
pub const SEED_CLIENT: &str = r#"
import socket, sys, threading, random, hashlib
addr, port, conns, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bad = []
def run(i):
    try:
        c = socket.create_connection((addr, port), timeout=60)
        c.sendall(b"%d %d\n" % (size, 1000 + i))
        h = hashlib.sha256(); n = 0
        while True:
            b = c.recv(1 << 16)
            if not b: break
            h.update(b); n += len(b)
        c.close()
        want = hashlib.sha256(random.Random(1000 + i).randbytes(size)).hexdigest()
        if n != size or h.hexdigest() != want:
            bad.append((i, n))
    except Exception as e:
        bad.append((i, str(e)))
ts = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
print("ok %d" % conns if not bad else "FAILED %r" % bad[:10])
"#;

/// Raw-socket sender of hostile frames (python3, in the client namespace): `IFACE VIP PORT SYNS`
/// sends SYNS valid SYNs from random sources to VIP:PORT, then malformed frames of every kind the
/// wire layer rejects (truncated, bad IPv4 checksum, IPv4 options, fragments, TCP data offsets
/// out of range, option lengths that overrun, SYNs with a bad TCP checksum, garbage). Prints how many of each it sent.
pub const HOSTILE: &str = r#"
import socket, struct, sys, random
iface, vip, port, syns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = random.Random(7)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((iface, 0))
mac = s.getsockname()[4]
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
def frame(src, opts=b"", flags=0x02, ipopts=b"", frag=0, doff=None, payload=b"", badip=False, badtcp=False):
    tcp = struct.pack("!HHIIBBHHH", r.randrange(1024, 65535), port, r.getrandbits(32), 0,
                      ((doff if doff is not None else (20 + len(opts)) // 4) << 4), flags, 65535, 0, 0) + opts + payload
    d = socket.inet_aton(vip)
    ph = src + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(ph + tcp) ^ (0x2222 if badtcp else 0)) + tcp[18:]
    ihl = 5 + len(ipopts) // 4
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(tcp), r.getrandbits(16), frag, 64, 6, 0, src, d) + ipopts
    c = csum(ip) ^ (0x1111 if badip else 0)
    ip = ip[:10] + struct.pack("!H", c) + ip[12:]
    return b"\xff" * 6 + mac + b"\x08\x00" + ip + tcp
def rsrc(): return bytes([198, 18, r.randrange(1, 255), r.randrange(1, 255)])
n = {}
def send(kind, f):
    s.send(f); n[kind] = n.get(kind, 0) + 1
for _ in range(syns): send("syn", frame(rsrc()))
for _ in range(200):
    good = frame(rsrc())
    send("truncated", good[:r.randrange(14, 53)])
    send("bad_ip_checksum", frame(rsrc(), badip=True))
    send("bad_tcp_checksum", frame(rsrc(), badtcp=True))
    send("ip_options", frame(rsrc(), ipopts=b"\x01\x01\x01\x00"))
    send("fragment", frame(rsrc(), frag=0x2000))
    send("bad_data_offset", frame(rsrc(), doff=r.choice([0, 1, 4, 15])))
    send("bad_options", frame(rsrc(), opts=bytes([2, 8, 5, 0xb4])))
    send("garbage", bytes(r.getrandbits(8) for _ in range(r.randrange(14, 200))))
print(" ".join("%s=%d" % kv for kv in sorted(n.items())), flush=True)
"#;

/// A shipped profile from `dpdk-config/` with textual substitutions applied (interface names,
/// file prefix, limits), for a test's own copy. Its control plane (from the line
/// `# == control plane ==` on: the exception TAP and the agents' port in the root namespace)
/// is left out: tests that need one add their own, inside their namespaces.
pub fn profile(name: &str, subst: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dpdk-config")
        .join(name);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if let Some(i) = text.find("# == control plane ==") {
        text.truncate(i);
    }
    for (from, to) in subst {
        assert!(text.contains(from), "{name} has no `{from}` to replace");
        text = text.replace(from, to);
    }
    text
}

/// The command line of [`SEED_CLIENT`] fetching `conns` x `bytes` from `addr:port`.
pub fn seed_client_args(addr: &str, port: u16, conns: usize, bytes: usize) -> Vec<String> {
    ["timeout", "120", "python3", "-c", SEED_CLIENT, addr]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([port.to_string(), conns.to_string(), bytes.to_string()])
        .collect()
}
