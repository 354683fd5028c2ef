//! Every rejection path of the configuration, and the shipped profiles.

use tsmp::config::{Config, Mode};

const BASE: &str = r#"
[eal]
main_lcore = 0
file_prefix = "t"

[[port]]
name = "a"
vdev = "net_null0"

[[port]]
name = "b"
vdev = "net_null1"

[[worker]]
lcore = 1
"#;

fn with(extra: &str) -> String {
    format!("{BASE}\n{extra}")
}

/// Replaces the first occurrence of `from` in BASE.
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "test bug: {from} not in BASE");
    BASE.replacen(from, to, 1)
}

#[track_caller]
fn rejects(text: &str, key: &str, words: &str) {
    match Config::from_toml(text, "test.toml") {
        Ok(_) => panic!("accepted, expected an error at `{key}`:\n{text}"),
        Err(e) => {
            assert_eq!(e.key, key, "wrong key in: {e}");
            let msg = e.to_string();
            assert!(msg.contains(words), "message {msg:?} lacks {words:?}");
            assert!(
                msg.starts_with("test.toml"),
                "message {msg:?} does not name the file"
            );
        }
    }
}

#[test]
fn base_is_valid() {
    let c = Config::from_toml(BASE, "t").expect("base config");
    assert_eq!(c.dataplane.mode, Mode::Passthrough);
    assert_eq!(c.rx_queues(0), 1);
    assert_eq!(c.tx_queues(), 1);
    let args = c.eal_args();
    assert!(
        args.windows(2).any(|w| w == ["--lcores", "0@0,1@1"]),
        "{args:?}"
    );
    assert!(args.contains(&"--no-pci".to_owned()));
}

#[test]
fn syntax_and_unknown_keys() {
    let e = Config::from_toml("[eal\n", "x.toml").unwrap_err();
    assert!(e.to_string().starts_with("x.toml: "), "{e}");
    let e = Config::from_toml(&with("[dataplane]\nburts = 32\n"), "x.toml").unwrap_err();
    assert!(e.to_string().contains("unknown field `burts`"), "{e}");
    let e =
        Config::from_toml(&edit("name = \"a\"", "name = \"a\"\nspeed = 10"), "x.toml").unwrap_err();
    assert!(e.to_string().contains("unknown field `speed`"), "{e}");
    let e = Config::from_toml(&with("[bogus]\nx = 1\n"), "x.toml").unwrap_err();
    assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    let e = Config::from_toml(&edit("lcore = 1", "lcore = \"one\""), "x.toml").unwrap_err();
    assert!(e.to_string().contains("invalid type"), "{e}");
    let e = Config::from_toml("", "x.toml").unwrap_err();
    assert!(e.to_string().contains("missing field `eal`"), "{e}");
}

#[test]
fn eal_values() {
    rejects(
        &edit("main_lcore = 0", "main_lcore = 200"),
        "eal.main_lcore",
        "RTE_MAX_LCORE",
    );
    rejects(
        &edit("file_prefix = \"t\"", "file_prefix = \"a b\""),
        "eal.file_prefix",
        "letters",
    );
    rejects(
        &edit("file_prefix = \"t\"", "file_prefix = \"\""),
        "eal.file_prefix",
        "non-empty",
    );
    rejects(
        &edit("file_prefix = \"t\"", "file_prefix = \"t\"\nmemory_mb = 10"),
        "eal.memory_mb",
        "64..=65536",
    );
    rejects(
        &edit(
            "file_prefix = \"t\"",
            "file_prefix = \"t\"\nlog_level = \"loud\"",
        ),
        "eal.log_level",
        "not one of",
    );
    rejects(
        &edit(
            "file_prefix = \"t\"",
            "file_prefix = \"t\"\nextra_args = [\"--iova-mode=va\", \"--vdev=net_null5\"]",
        ),
        "eal.extra_args[1]",
        "[[port]]",
    );
    rejects(
        &edit(
            "file_prefix = \"t\"",
            "file_prefix = \"t\"\nextra_args = [\"-l\", \"3\"]",
        ),
        "eal.extra_args[0]",
        "set by the config",
    );
}

#[test]
fn port_values() {
    let no_ports = "[eal]\n[[worker]]\nlcore = 1\nport = []\n";
    assert!(Config::from_toml(no_ports, "t").is_err());
    rejects(
        &edit("name = \"b\"", "name = \"a\""),
        "port[1].name",
        "used twice",
    );
    rejects(
        &edit("name = \"b\"", "name = \"b:1\""),
        "port[1].name",
        "without `:`",
    );
    rejects(
        &edit("vdev = \"net_null1\"", "vdev = \"net_null0\""),
        "port[1].vdev",
        "used by two ports",
    );
    rejects(
        &edit("vdev = \"net_null1\"", "vdev = \"null1\""),
        "port[1].vdev",
        "net vdev name",
    );
    rejects(
        &edit(
            "vdev = \"net_null1\"",
            "vdev = \"net_null1\"\npci = \"0000:00:08.0\"",
        ),
        "port[1].pci",
        "not both",
    );
    rejects(&edit("vdev = \"net_null1\"", ""), "port[1].vdev", "pci = ");
    rejects(
        &edit("vdev = \"net_null1\"", "pci = \"00:08\""),
        "port[1].pci",
        "not a PCI address",
    );
    rejects(
        &edit("vdev = \"net_null1\"", "pci = \"0000:00:08.9\""),
        "port[1].pci",
        "not a PCI address",
    );
    rejects(
        &edit(
            "vdev = \"net_null1\"",
            "vdev = \"net_null1\"\nrx_desc = 1000",
        ),
        "port[1].rx_desc",
        "power of two",
    );
    rejects(
        &edit("vdev = \"net_null1\"", "vdev = \"net_null1\"\ntx_desc = 32"),
        "port[1].tx_desc",
        "power of two",
    );
    rejects(
        &edit("vdev = \"net_null1\"", "vdev = \"net_null1\"\nmtu = 100"),
        "port[1].mtu",
        "576..=9600",
    );
    rejects(
        &edit("vdev = \"net_null1\"", "vdev = \"net_null1\"\nmtu = 9000"),
        "port[1].mtu",
        "raise data_room",
    );
    rejects(
        &edit(
            "vdev = \"net_null1\"",
            "vdev = \"net_null1\"\nrss = \"maybe\"",
        ),
        "",
        "unknown variant",
    );
    // A PCI port is accepted in both forms and allow-listed; --no-pci is dropped.
    let c = Config::from_toml(&edit("vdev = \"net_null1\"", "pci = \"00:08.0\""), "t").unwrap();
    let args = c.eal_args();
    assert!(args.windows(2).any(|w| w == ["-a", "00:08.0"]), "{args:?}");
    assert!(!args.contains(&"--no-pci".to_owned()));
}

#[test]
fn mempool_and_dataplane_values() {
    rejects(&with("[mempool]\nmbufs = 100\n"), "mempool.mbufs", "1023..");
    rejects(
        &with("[mempool]\nmbufs = 2047\ncache = 600\n"),
        "mempool.cache",
        "at most 512",
    );
    rejects(
        &with("[mempool]\ndata_room = 512\n"),
        "mempool.data_room",
        "1152..",
    );
    rejects(
        &with("[dataplane]\nburst = 0\n"),
        "dataplane.burst",
        "1..=64",
    );
    rejects(
        &with("[dataplane]\nburst = 128\n"),
        "dataplane.burst",
        "1..=64",
    );
    rejects(
        &with("[dataplane]\ndrain_us = 0\n"),
        "dataplane.drain_us",
        "1..=100000",
    );
    rejects(
        &with("[dataplane]\nmode = \"bridge\"\n"),
        "",
        "unknown variant `bridge`",
    );
    let three = with("[[port]]\nname = \"c\"\nvdev = \"net_null2\"\n");
    rejects(&three, "dataplane.mode", "exactly 2 ports");
    rejects(
        &with("[dataplane]\nmode = \"proxy\"\n"),
        "service",
        "at least one [[service]]",
    );
}

#[test]
fn worker_values() {
    rejects(
        &edit("lcore = 1", "lcore = 0"),
        "worker[0].lcore",
        "main_lcore",
    );
    rejects(
        &edit("lcore = 1", "lcore = 999"),
        "worker[0].lcore",
        "RTE_MAX_LCORE",
    );
    rejects(
        &with("[[worker]]\nlcore = 1\n"),
        "worker[1].lcore",
        "two workers",
    );
    rejects(
        &edit("lcore = 1", "lcore = 1\nrx = []"),
        "worker[0].rx",
        "empty list",
    );
    rejects(
        &edit("lcore = 1", "lcore = 1\nrx = [\"a0\"]"),
        "worker[0].rx[0]",
        "port:queue",
    );
    rejects(
        &edit("lcore = 1", "lcore = 1\nrx = [\"x:0\"]"),
        "worker[0].rx[0]",
        "no port named `x`",
    );
    rejects(
        &edit("lcore = 1", "lcore = 1\nrx = [\"a:z\"]"),
        "worker[0].rx[0]",
        "not a number",
    );
    rejects(
        &edit("lcore = 1", "lcore = 1\nrx = [\"a:5000\"]"),
        "worker[0].rx[0]",
        "above 1023",
    );
    rejects(
        &edit("lcore = 1", "lcore = 1\nrx = [\"a:0\", \"a:0\"]"),
        "worker[0].rx[1]",
        "already polled by worker[0]",
    );
    let two = with("[[worker]]\nlcore = 2\nrx = [\"a:0\"]\n");
    rejects(&two, "worker[1].rx[0]", "already polled");
    let two_default = edit("lcore = 1", "lcore = 1\nrx = [\"a:1\"]") + "[[worker]]\nlcore = 2\n";
    rejects(&two_default, "worker[1].rx", "collides with worker[0]");
    let none: String = "[eal]\n[[port]]\nname=\"a\"\nvdev=\"net_null0\"\n[[port]]\nname=\"b\"\nvdev=\"net_null1\"\n".into();
    rejects(
        &format!("worker = []\n{none}"),
        "worker",
        "at least one [[worker]]",
    );
    // Explicit mapping: two workers, queue counts follow.
    let ok = edit("lcore = 1", "lcore = 1\nrx = [\"a:0\", \"b:1\"]")
        + "[[worker]]\nlcore = 2\nrx = [\"a:1\", \"b:0\"]\n";
    let c = Config::from_toml(&ok, "t").unwrap();
    assert_eq!(c.rx_queues(0), 2);
    assert_eq!(c.rx_queues(1), 2);
    assert_eq!(c.tx_queues(), 2);
}

#[test]
fn limits_services_control() {
    rejects(
        &with("[limits]\nmax_flows_per_worker = 1\n"),
        "limits.max_flows_per_worker",
        "16..",
    );
    rejects(
        &with("[limits]\nflow_cache_bytes = 10\n"),
        "limits.flow_cache_bytes",
        "4096..",
    );
    rejects(
        &with("[limits]\nflow_cache_bytes = 8192\nworker_cache_bytes = 4096\n"),
        "limits.worker_cache_bytes",
        "below",
    );
    rejects(
        &with("[limits]\nhandoff_ring = 1000\n"),
        "limits.handoff_ring",
        "power of two",
    );
    rejects(
        &with("[limits]\nmigration_deadline_ms = 5\n"),
        "limits.migration_deadline_ms",
        "100..",
    );
    let svc = "[[service]]\nname = \"web\"\nvip = \"198.18.0.10\"\nport = 80\nbackend = \"198.19.0.2\"\nbackend_port = 8080\n";
    assert!(Config::from_toml(&with(svc), "t").is_ok());
    rejects(
        &with(&format!("{svc}{svc}")),
        "service[1].name",
        "used twice",
    );
    rejects(
        &with(&svc.replace("198.18.0.10", "0.0.0.0")),
        "service[0].vip",
        "cannot be",
    );
    rejects(
        &with(&svc.replace("198.19.0.2", "224.0.0.1")),
        "service[0].backend",
        "cannot be",
    );
    rejects(
        &with(&svc.replace("\nport = 80\n", "\nport = 0\n")),
        "service[0].port",
        "not a valid TCP port",
    );
    rejects(
        &with(&svc.replace("198.18.0.10", "300.1.1.1")),
        "",
        "invalid IPv4",
    );
    let twice = format!("{svc}{}", svc.replace("\"web\"", "\"web2\""));
    rejects(&with(&twice), "service[1].port", "served twice");
    rejects(
        &with("[control]\nsocket = \"/x\"\n"),
        "",
        "unknown field `socket`",
    );
}

#[test]
fn migration_values() {
    rejects(
        &with("[limits]\nflow_cache_bytes = 65536\n[migration]\nkeep_acked_bytes = 65536\n"),
        "migration.keep_acked_bytes",
        "no room",
    );
    rejects(
        &with("[migration]\nmax_mss = 100\n"),
        "migration.max_mss",
        "536..",
    );
    rejects(
        &with("[migration]\nsynack_retries = 0\n"),
        "migration.synack_retries",
        "1..=10",
    );
    rejects(
        &with("[migration]\nmin_rto_ms = 5000\n"),
        "migration.min_rto_ms",
        "10..=1000",
    );
    rejects(
        &with("[migration]\nretries = 3\n"),
        "",
        "unknown field `retries`",
    );
    let c = Config::from_toml(
        &with("[limits]\nmigration_deadline_ms = 2500\n[migration]\nkeep_acked_bytes = 1000\nmin_rto_ms = 50\n"),
        "t",
    )
    .unwrap();
    let e = c.engine_config();
    assert_eq!(e.deadline_us, 2_500_000);
    assert_eq!(e.keep_acked_bytes, 1000);
    assert_eq!(e.sender.min_rto_us, 50_000);
}

#[test]
fn shipped_profiles_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dpdk-config");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(
        n >= 3,
        "expected default, bench-memif and vagrant-virtio profiles"
    );
    Config::embedded().expect("embedded default");
}

#[test]
fn check_mode_validates_without_eal() {
    let exe = env!("CARGO_BIN_EXE_tsmp-proxy");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dpdk-config");
    for f in [
        "default.toml",
        "passthrough-af_packet.toml",
        "bench-memif.toml",
        "vagrant-virtio.toml",
    ] {
        let out = std::process::Command::new(exe)
            .arg("--config")
            .arg(dir.join(f))
            .arg("--check")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    }
    let bad = std::env::temp_dir().join(format!("tsmp-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, edit("lcore = 1", "lcore = 0")).unwrap();
    let out = std::process::Command::new(exe)
        .arg("--config")
        .arg(&bad)
        .arg("--check")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`worker[0].lcore`") && err.contains("main_lcore"),
        "{err}"
    );
}

#[test]
fn agent_control_needs_the_exception_path_an_own_address_and_a_naming_server() {
    let base = tsmp::config::EMBEDDED_DEFAULT;
    let cut = base
        .find("# == control plane ==")
        .expect("control plane section");
    let (data, _) = base.split_at(cut);
    let ok = "[control]\nagents = \"198.18.0.254:7000\"\nnames = \"198.18.0.254:53\"\n";
    let x = "\n[exception]\ntap = \"t0\"\n";
    assert!(Config::from_toml(&format!("{data}{ok}{x}"), "t").is_ok());
    rejects(&format!("{data}{ok}"), "control.agents", "[exception]");
    rejects(
        &format!(
            "{data}{}{x}",
            ok.replace("198.18.0.254:7000", "198.18.0.77:7000")
        ),
        "control.agents",
        "none of the ports",
    );
    rejects(
        &format!(
            "{data}{}{x}",
            ok.replace("names = \"198.18.0.254:53\"\n", "")
        ),
        "control.names",
        "naming server",
    );
    rejects(
        &format!("{data}{ok}zone = \"bad..zone\"\n{x}"),
        "control.zone",
        "not a domain name",
    );
    rejects(
        &format!("{data}{ok}max_agent_connections = 0\n{x}"),
        "control.max_agent_connections",
        "outside 1..=1024",
    );
}
