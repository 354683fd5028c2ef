//! The link emulator between two namespaces, with the kernel's TCP and ping on both ends:
//!
//! ```text
//!  ns L 198.18.5.1/24 eth0 == lkaN [tsmp-linkem] lkbN == eth0 198.18.5.2/24 ns R
//! ```
//! Checked from the outside: ping's round trips carry the configured delay, a TCP transfer
//! through loss, reordering, duplication and corruption arrives whole (SHA-256), the emulator's
//! counters saw each impairment, and the receiver's kernel caught the corrupted segments by
//! their checksum.

mod common;

use common::bed::counters;
use common::{tool, Killed, Netns, Veth, SEED_SERVER};
use std::time::Duration;

struct Link {
    left: Netns,
    right: Netns,
    _veths: (Veth, Veth),
    emulator: Option<Killed>,
    stats: std::path::PathBuf,
}

fn link(tag: &str, a_to_b: &str, b_to_a: &str) -> Link {
    common::require_root();
    let t = format!("{tag}{}", common::tag());
    let left = Netns::new(&format!("tsmpt-l{t}"));
    let right = Netns::new(&format!("tsmpt-r{t}"));
    let va = Veth::new(&format!("lka{t}"), &left, "198.18.5.1/24");
    let vb = Veth::new(&format!("lkb{t}"), &right, "198.18.5.2/24");
    let stats = std::env::temp_dir().join(format!("tsmp-linkem-{t}.json"));
    let mut child = std::process::Command::new(tool("tsmp-linkem"))
        .args([
            "--a", &va.host, "--b", &vb.host, "--a-to-b", a_to_b, "--b-to-a", b_to_a,
        ])
        .args(["--seed", "5", "--stats", stats.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tsmp-linkem");
    common::bed::line_from(&mut child, "tsmp-linkem:");
    Link {
        left,
        right,
        _veths: (va, vb),
        emulator: Some(Killed(child)),
        stats,
    }
}

impl Link {
    /// Stops the emulator (SIGTERM: it writes its final counters) and reads them.
    fn stop(&mut self) -> serde_json::Value {
        if let Some(mut k) = self.emulator.take() {
            let _ = common::run("kill", &["-TERM", &k.0.id().to_string()]);
            let _ = k.0.wait();
        }
        let text = std::fs::read_to_string(&self.stats).expect("emulator counters");
        let _ = std::fs::remove_file(&self.stats);
        serde_json::from_str(&text).unwrap()
    }
}

#[test]
fn ping_round_trips_carry_the_configured_delay() {
    let mut l = link("d", "delay=20ms", "delay=15ms,jitter=1ms");
    // The first ping also waits for ARP (a round trip of its own).
    let _ = l.left.exec(&["ping", "-c", "1", "-W", "2", "198.18.5.2"]);
    let out = l
        .left
        .exec(&["ping", "-c", "10", "-i", "0.2", "-W", "2", "198.18.5.2"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let s = l.stop();
    // rtt min/avg/max/mdev = a/b/c/d ms
    let rtt: Vec<f64> = text
        .lines()
        .find(|x| x.contains("min/avg/max"))
        .and_then(|x| x.split('=').nth(1))
        .map(|v| {
            v.trim()
                .trim_end_matches(" ms")
                .split('/')
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(rtt.len(), 4, "ping: {text}");
    assert!(
        rtt[0] >= 34.0 && rtt[2] < 45.0,
        "round trips {rtt:?} for 20 + 15 +- 1 ms:\n{text}"
    );
    assert!(s["a_to_b"]["sent"].as_u64().unwrap() >= 10, "{s}");
}

#[test]
fn a_transfer_through_loss_reordering_duplicates_and_corruption_arrives_whole() {
    let impaired = "delay=5ms,jitter=1ms,rate=50mbit,queue=256kb,loss=1%,burst=0.2%:40%,reorder=2%:3ms,dup=0.5%,corrupt=0.5%";
    let mut l = link("t", impaired, impaired);
    let _server = Killed(
        l.right
            .spawn(&["python3", "-c", SEED_SERVER, "198.18.5.2", "8080"]),
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = counters(&l.left);
    let args = common::seed_client_args("198.18.5.2", 8080, 2, 4 << 20);
    let out = l
        .left
        .exec(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let after = counters(&l.left);
    let s = l.stop();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok 2",
        "{}\nemulator: {s}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ba = &s["b_to_a"];
    for k in ["lost", "lost_burst", "reordered", "duplicated", "corrupted"] {
        assert!(
            ba[k].as_u64().unwrap() > 0,
            "no `{k}` toward the client: {s}"
        );
    }
    let csum = |m: &std::collections::HashMap<String, u64>| {
        m.get("Tcp:InCsumErrors").copied().unwrap_or(0)
            + m.get("Ip:InHdrErrors").copied().unwrap_or(0)
    };
    assert!(
        csum(&after) > csum(&before),
        "the client's kernel caught no corrupted segment (emulator: {s})"
    );
}
