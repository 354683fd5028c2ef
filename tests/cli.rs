//! The operator CLI (`tsmp-cli`) against a running proxy on vdevs, with the kernel's TCP on
//! both ends: after a known sequence (one download from the phone, a migration to the PC
//! started with `tsmp-cli migrate`), every command's output says what happened, `--json`
//! parses, filters select, and a missing socket is a clear error.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::bed::*;
use common::Proxy;
use serde_json::Value;

fn cli(sock: &std::path::Path, args: &[&str]) -> Output {
    Command::new(common::tool("tsmp-cli"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .expect("tsmp-cli")
}

/// Runs a command that must succeed; its stdout.
fn ok(sock: &std::path::Path, args: &[&str]) -> String {
    let o = cli(sock, args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "tsmp-cli {args:?} failed: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn json(sock: &std::path::Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ok(sock, &a);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("--json of {args:?}: {e}: {out}"))
}

/// `dpdk-telemetry.py -f prefix` with `cmds` on its stdin; its output.
fn telemetry(prefix: &str, cmds: &[&str]) -> String {
    use std::io::Write;
    let mut c = Command::new("dpdk-telemetry.py")
        .args(["-f", prefix])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("dpdk-telemetry.py");
    let mut input = c.stdin.take().unwrap();
    for cmd in cmds {
        writeln!(input, "{cmd}").unwrap();
    }
    drop(input);
    let o = c.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `GET /metrics`; the body.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.0 200 OK"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[test]
fn every_command_after_a_download_and_a_migration() {
    let b = bed("cli", &[]);
    // The Prometheus endpoint, on a free local port (the last section is [control]).
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut text = std::fs::read_to_string(&b.cfg).unwrap();
    text.push_str(&format!("metrics = \"{metrics}\"\n"));
    std::fs::write(&b.cfg, text).unwrap();
    let mut proxy = Proxy::start(&b.cfg, &[]);
    let total: u64 = 16 << 20;
    let mut srv = start_server(&b, total);
    let files: Vec<_> = ["phone", "pc"].iter().map(|n| b.dir.0.join(n)).collect();
    let mut ph = drain(&b.phone, 80, &files[0]);
    let port = line_from(&mut ph, "port");
    wait_size(&files[0], 1 << 20);
    let sock = &b.sock;
    let phone = format!("198.18.0.1:{port}");

    // One established flow of the phone.
    let v = json(sock, &["flows"]);
    assert_eq!(v["total"], 1, "{v}");
    let f = &v["items"][0];
    assert_eq!(f["client"], phone.as_str(), "{v}");
    assert_eq!(f["vip"], "198.18.0.10:80", "{v}");
    assert_eq!(f["backend"], "198.19.0.2:8080", "{v}");
    assert_eq!(f["state"], "ESTABLISHED", "{v}");
    assert_eq!(f["device"], 0, "{v}");
    assert_eq!(f["migrating"], false, "{v}");
    let id = f["id"].as_str().unwrap().to_owned();
    // Filters select and exclude.
    assert_eq!(json(sock, &["flows", "--client", "198.18.0.1"])["total"], 1);
    assert_eq!(json(sock, &["flows", "--client", "198.18.0.3"])["total"], 0);
    assert_eq!(json(sock, &["flows", "--state", "SYN_SENT"])["total"], 0);
    assert_eq!(
        json(sock, &["flows", "--server", "198.19.0.2:8080"])["total"],
        1
    );
    assert_eq!(json(sock, &["flows", "--migrating"])["total"], 0);
    let table = ok(sock, &["flows", "--sort", "age"]);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&phone) && table.contains("ESTABLISHED"),
        "{table}"
    );
    assert!(table.contains("1 of 1 flow(s)"), "{table}");
    println!("$ tsmp-cli flows --sort age\n{table}");

    // The operator moves it; the PC connects to the port shown.
    let said = ok(sock, &["migrate", &phone, "198.18.0.10:80"]);
    let mport: u64 = said
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    let mut pc = drain(&b.pc, mport, &files[1]);
    let _ = line_from(&mut pc, "port");
    proxy.wait_for(" resumed ", Duration::from_secs(20));
    wait_size(&files[1], 1 << 20);

    // Now the PC's, device generation 1, with its history.
    let v = json(sock, &["flows", "--device", "1"]);
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["items"][0]["id"], id.as_str(), "the same flow: {v}");
    assert!(
        v["items"][0]["client"]
            .as_str()
            .unwrap()
            .starts_with("198.18.0.3:"),
        "{v}"
    );
    let d = json(sock, &["flow", &id]);
    assert_eq!(d["flow"]["device"], 1, "{d}");
    assert!(d["engine"].as_array().is_some_and(|l| !l.is_empty()), "{d}");
    let hist = d["migrations"].as_array().unwrap();
    assert_eq!(hist.len(), 1, "{d}");
    assert!(
        hist[0]["outcome"].as_str().unwrap().starts_with("resumed"),
        "{d}"
    );
    let human = ok(sock, &["flow", &id]);
    println!("$ tsmp-cli flow {id}\n{human}");
    for want in [
        "device leg",
        "server leg",
        "NAT",
        "engine:",
        "migrations:",
        "resumed",
    ] {
        assert!(human.contains(want), "no {want:?} in:\n{human}");
    }
    let m = json(sock, &["migrations"]);
    assert_eq!(m["recent"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m["active"].as_array().unwrap().len(), 0, "{m}");
    assert_eq!(m["pause_ms"]["count"], 1, "{m}");
    assert!(m["pause_ms"]["max"].as_f64().unwrap() > 0.0, "{m}");
    let steps: Vec<&str> = m["recent"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["paused", "connected", "replaying", "resumed"],
        "{m}"
    );
    let human = ok(sock, &["migrations"]);
    println!("$ tsmp-cli migrations\n{human}");
    assert!(human.contains("pause over 1 migration(s)"), "{human}");

    // Latency histograms: bursts processed, the pause recorded.
    let l = json(sock, &["latency"]);
    let w0 = &l["burst_cycles"][0];
    assert!(w0["bursts"].as_u64().unwrap() > 100, "{l}");
    assert!(w0["p50"].as_u64().unwrap() > 0, "{l}");
    assert!(
        w0["max"].as_u64().unwrap() >= w0["p99"].as_u64().unwrap(),
        "{l}"
    );
    assert_eq!(l["migration_pause_ms"]["count"], 1, "{l}");
    let human = ok(sock, &["latency"]);
    println!("$ tsmp-cli latency\n{human}");
    assert!(human.contains("migration pause over 1"), "{human}");

    // Counters and rates while the PC downloads.
    let st = json(sock, &["stats", "--interval", "0.3"]);
    let w = &st["stats"]["workers"][0];
    assert!(w["rx_pkts"].as_u64().unwrap() > 1000, "{st}");
    assert_eq!(st["stats"]["proxy"][0]["flows_active"], 1, "{st}");
    assert_eq!(st["stats"]["proxy"][0]["migrations_done"], 1, "{st}");
    let human = ok(sock, &["stats", "--interval", "0.3"]);
    println!("$ tsmp-cli stats --interval 0.3\n{human}");
    for want in [
        "RX Mpps",
        "total",
        "flows 1/",
        "migrations started 1 done 1",
        "mempool",
    ] {
        assert!(human.contains(want), "no {want:?} in:\n{human}");
    }

    // DPDK's own tools: dpdk-telemetry.py shows our commands next to DPDK's, and
    // dpdk-dumpcap (a secondary process) captures the client port while the PC downloads.
    let cfg_text = std::fs::read_to_string(&b.cfg).unwrap();
    let prefix = cfg_text
        .lines()
        .find_map(|l| l.strip_prefix("file_prefix = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("file_prefix in the bed's profile")
        .to_owned();
    let tel = telemetry(
        &prefix,
        &["/", "/tsmp/stats", "/tsmp/flows", "/ethdev/list"],
    );
    for want in [
        "\"/tsmp/stats\"",
        "\"/tsmp/flows\"",
        "\"w0_flows_active\": 1",
        "\"w0_migrations_done\": 1",
        "ESTABLISHED device 1",
    ] {
        assert!(
            tel.contains(want),
            "no {want} in dpdk-telemetry.py's output:\n{tel}"
        );
    }
    let pcap = b.dir.0.join("client.pcap");
    // Traffic for the whole capture, whatever the download's pace: the phone pings the VIP
    // (the proxy answers itself).
    let mut ping = b
        .phone
        .spawn(&["ping", "-n", "-c", "400", "-i", "0.02", "198.18.0.10"]);
    let o = Command::new("dpdk-dumpcap")
        .arg(format!("--file-prefix={prefix}"))
        .args(["-i", "0", "-P", "-q", "-c", "50", "-a", "duration:10", "-w"])
        .arg(&pcap)
        .output()
        .expect("dpdk-dumpcap");
    assert!(
        o.status.success(),
        "dpdk-dumpcap: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = ping.kill();
    let _ = ping.wait();
    let read = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&pcap)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&read.stdout);
    assert!(
        lines
            .lines()
            .filter(|l| {
                l.contains("198.18.0.10.40000 > 198.18.0.3")
                    || l.contains("198.18.0.10 > 198.18.0.1: ICMP echo reply")
            })
            .count()
            >= 10,
        "the capture holds the proxy's frames (the PC's download or the answers to pings):\n{lines}"
    );

    // The Prometheus endpoint scrapes: the same counters, the pause summary.
    let page = scrape(metrics);
    for want in [
        "# TYPE tsmp_proxy_migrations_done_total counter",
        "tsmp_proxy_migrations_done_total{worker=\"0\"} 1",
        "tsmp_proxy_flows_active{worker=\"0\"} 1",
        "tsmp_migration_pause_seconds_count 1",
        "tsmp_port_rx_packets_total{port=\"client\"}",
        "tsmp_worker_burst_cycles{worker=\"0\",quantile=\"0.99\"}",
    ] {
        assert!(page.contains(want), "no {want:?} in the scrape:\n{page}");
    }

    assert!(srv.wait().unwrap().success());
    for mut c in [ph, pc] {
        let _ = c.wait();
    }
    let out = proxy.stop();
    assert!(out.contains("done=1"), "{out}");

    // The proxy is gone: a clear error, not a panic.
    let o = cli(sock, &["flows"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is tsmp-proxy running"), "{err}");
}
