//! The kernel's own ping and TCP across the pass-through appliance on net_af_packet ports.
//!
//! ```text
//!  ns client (198.18.1.1/24) eth0 == veth == tpcN  [af_packet port 0 | tsmp-proxy | port 1 af_packet]  tpsN == veth == eth0 ns server (198.18.1.2/24)
//! ```
//! Checked from the outside: ping replies in the client namespace, the sha256 of a 16 MiB
//! download computed by the receiving application equals the file's, and the appliance's own
//! counters saw the traffic and it stopped cleanly on SIGTERM.

mod common;

use common::{must, Netns, Proxy, TempDir, Veth};
use std::time::Duration;

const SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.1.2", 5001)); s.listen(1); s.settimeout(30)
c, _ = s.accept()
with open(sys.argv[1], "rb") as f:
    c.sendall(f.read())
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"#;

const CLIENT: &str = r#"
import socket, hashlib
h = hashlib.sha256(); n = 0
c = socket.create_connection(("198.18.1.2", 5001), timeout=30)
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
c.close(); print(n, h.hexdigest())
"#;

#[test]
fn kernel_ping_and_tcp_cross_af_packet_passthrough() {
    common::require_root();
    let t = common::tag();
    let dir = TempDir::new("netns");
    let client = Netns::new(&format!("tsmpt-c{t}"));
    let server = Netns::new(&format!("tsmpt-s{t}"));
    let vc = Veth::new(&format!("tpc{t}"), &client, "198.18.1.1/24");
    let vs = Veth::new(&format!("tps{t}"), &server, "198.18.1.2/24");

    let cfg = dir.0.join("proxy.toml");
    let text = common::profile(
        "passthrough-af_packet.toml",
        &[
            ("iface=tsmp-c0", &format!("iface={}", vc.host)),
            ("iface=tsmp-s0", &format!("iface={}", vs.host)),
            (
                "file_prefix = \"tsmp\"",
                &format!("file_prefix = \"tsmpt{t}\""),
            ),
        ],
    );
    std::fs::write(&cfg, text).unwrap();
    let stats = dir.0.join("stats.json");
    let proxy = Proxy::start(&cfg, &["--stats-json", stats.to_str().unwrap()]);

    // ARP and ICMP cross the appliance.
    let ping = client.exec(&["ping", "-c", "5", "-i", "0.2", "-W", "2", "198.18.1.2"]);
    assert!(
        ping.status.success(),
        "ping failed:\n{}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );

    // A 16 MiB download, hashed by the receiving application.
    let file = dir.0.join("payload.bin");
    must(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", file.display()),
            "bs=1M",
            "count=16",
            "status=none",
        ],
    );
    let want = must("sha256sum", &[file.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let mut srv = server.spawn(&["python3", "-c", SERVER, file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    let got = client.exec(&["timeout", "60", "python3", "-c", CLIENT]);
    let _ = srv.wait();
    let got = String::from_utf8_lossy(&got.stdout).trim().to_owned();
    assert_eq!(
        got,
        format!("{} {want}", 16 << 20),
        "download through the appliance differs"
    );

    let out = proxy.stop();
    assert!(out.contains("stopped cleanly"), "{out}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let rx = s["workers"][0]["rx_pkts"].as_u64().unwrap();
    assert!(
        rx > 16 * 1024 * 1024 / 1500,
        "the appliance forwarded only {rx} packets"
    );
    assert_eq!(
        s["workers"][0]["rx_pkts"], s["workers"][0]["tx_pkts"],
        "every frame received was sent"
    );
    drop((vc, vs, client, server));
}

/// Starts the appliance on the pass-through profile with `subst` applied (and a file prefix of
/// its own); it must refuse to start with exit code 1. Returns its stderr.
fn start_fails(tag: &str, subst: (&str, &str)) -> String {
    common::require_root();
    let dir = TempDir::new(tag);
    let cfg = dir.0.join("proxy.toml");
    let prefix = format!("file_prefix = \"tsmp{tag}{}\"", common::tag());
    let text = common::profile(
        "passthrough-af_packet.toml",
        &[subst, ("file_prefix = \"tsmp\"", &prefix)],
    );
    std::fs::write(&cfg, text).unwrap();
    let out = common::run(
        env!("CARGO_BIN_EXE_tsmp-proxy"),
        &["--config", cfg.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

#[test]
fn missing_interface_is_a_clear_error_not_a_crash() {
    let err = start_fails("noif", ("iface=tsmp-c0", "iface=tsmp-nonexist"));
    assert!(
        err.contains("tsmp-proxy: error: virtual device `net_af_packet0,iface=tsmp-nonexist"),
        "{err}"
    );
    assert!(err.contains("does the `iface=` interface exist"), "{err}");
}

#[test]
fn missing_lcore_is_a_clear_error_not_a_crash() {
    let err = start_fails("nolcore", ("lcore = 1", "lcore = 97"));
    assert!(
        err.contains("CPU 97 is not online on this machine"),
        "{err}"
    );
    assert!(
        err.contains("change eal.main_lcore, or the worker's lcore"),
        "{err}"
    );
}
