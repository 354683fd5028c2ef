//! The stateful TCP generator of the benchmark suite (`tsmp-pktgen tcp`, bench/pktgen/tcpgen.rs)
//! checked through the real proxy on memif ports: its own correctness, at a low rate. (Its own
//! test binary: the harness's DPDK processes must not run next to another memif test's.)

mod common;

/// The generator's DPDK processes use fixed file prefixes: one run at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One `tsmp-pktgen tcp --json` run through the proxy (one at a time, in its own directory
/// `name`): its report and its whole output (for assertion messages). Fails the test when the
/// run fails or prints no report.
fn tcp_report(name: &str, args: &[&str]) -> (serde_json::Value, String) {
    common::require_root();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::TempDir::new(name);
    let args: Vec<&str> = ["tcp"]
        .iter()
        .chain(args)
        .chain(&["--json"])
        .copied()
        .collect();
    let (ok, text) = common::pktgen(&args, &dir.0);
    assert!(ok, "tcp run failed:\n{text}");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("REPORT "))
        .unwrap_or_else(|| panic!("no report:\n{text}"));
    let r = serde_json::from_str(line).unwrap();
    (r, text)
}

/// The stateful generator's own correctness, through the proxy at a low rate: every flow
/// completes its handshake through the VIP (the SYN seen at the backend side, the SYN-ACK and
/// the ACK back), every received frame is checked (IPv4 and TCP checksums, known flow,
/// in-order data), every data segment's latency stamp is parsed, nothing is lost, and the
/// proxy's own counters agree on the flows.
#[test]
fn stateful_generator_runs_tcp_flows_through_the_proxy() {
    let (r, text) = tcp_report(
        "tcpgen",
        &[
            "--flows",
            "300",
            "--sizes",
            "imix",
            "--rate",
            "20000",
            "--duration",
            "1",
            "--check-every",
            "1",
        ],
    );
    let t = &r["total"];
    assert_eq!(r["established"], 300, "{text}");
    assert_eq!(
        t["syns_at_server"], t["syns"],
        "every SYN reached the backend side: {text}"
    );
    for k in [
        "bad_checksum",
        "unknown",
        "out_of_order",
        "resets",
        "tx_backpressure",
    ] {
        assert_eq!(t[k], 0, "{k}: {text}");
    }
    assert_eq!(r["lost"], 0, "{text}");
    let received = t["data_received"].as_u64().unwrap();
    // ~20,000 segments/s over the warm-up and the window.
    assert!(received > 15_000, "{text}");
    assert_eq!(t["data_sent"].as_u64().unwrap(), received);
    assert_eq!(
        t["acks_sent"].as_u64().unwrap(),
        received + 300,
        "one ACK per segment and per SYN-ACK"
    );
    // Every frame received on either side was checked: data and SYN-ACKs at A, SYNs and ACKs
    // at B (ARP excluded).
    assert!(
        t["checked"].as_u64().unwrap() >= 2 * received + 600,
        "{text}"
    );
    // IMIX: every segment of 64 B frames and up carries a stamp.
    assert_eq!(t["stamps"].as_u64().unwrap(), received);
    let lat = r["latency_ns"].as_array().unwrap();
    assert!(lat[0].as_u64().unwrap() > 0 && lat[4].as_u64().unwrap() >= lat[0].as_u64().unwrap());
    assert!(
        text.contains("flows_created 300, flows_active 300"),
        "{text}"
    );
}

/// Migrations under load, from the outside: 10% of the flows are moved through the proxy's
/// control socket while data flows, the generator playing each new device (its handshake on
/// the migration port the proxy named) and each old device (the FIN that retires it). Every
/// moved stream continues in order at its new device, nothing is lost or reset, the other
/// flows keep forwarding, and the proxy's own migration log agrees.
#[test]
fn migrations_injected_under_load_complete_without_loss() {
    let (r, text) = tcp_report(
        "tcpgen-mig",
        &[
            "--flows",
            "200",
            "--rate",
            "20000",
            "--duration",
            "2",
            "--check-every",
            "1",
            "--migrate-percent",
            "10",
        ],
    );
    let t = &r["total"];
    let m = &r["migrations"];
    assert_eq!(m["chosen"], 20, "{text}");
    assert_eq!(m["accepted"], 20, "{text}");
    assert_eq!(m["refused"], 0, "{text}");
    for k in [
        "migrations_connected",
        "migrations_completed",
        "old_devices_closed",
    ] {
        assert_eq!(t[k], 20, "{k}: {text}");
    }
    for k in ["bad_checksum", "unknown", "out_of_order", "resets"] {
        assert_eq!(t[k], 0, "{k}: {text}");
    }
    assert_eq!(r["lost"], 0, "{text}");
    // Every segment the server side sent reached a device (a replayed one may arrive twice).
    let sent = t["data_sent"].as_u64().unwrap();
    assert!(t["data_received"].as_u64().unwrap() >= sent, "{text}");
    // The moved flows carried data before and after their move, the others all along.
    let moved = t["data_received_migrating"].as_u64().unwrap();
    assert!(moved > 0 && moved < sent, "{text}");
    assert!(m["others_pps"].as_f64().unwrap() > 10_000.0, "{text}");
    // The proxy logged the same migrations, each with its pause.
    assert_eq!(m["proxy_pause_ms"]["count"], 20, "{text}");
    let connect = m["connect_us"].as_array().unwrap();
    assert!(connect[0].as_f64().unwrap() > 0.0, "{text}");
}
