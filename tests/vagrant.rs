//! Keeps the Vagrant setup (vagrant/) from rotting where no VM can run: the Vagrantfile parses
//! (`ruby -c`) and, loaded against a stand-in for Vagrant's API (tests/vagrant/vagrant_stub.rb),
//! defines the topology that the appliance profile, the provisioning and the demo assume; the
//! NIC binder finds the data NICs by MAC on a made-up sysfs tree and writes a configuration that
//! `tsmp-proxy --check` accepts; the shell scripts parse; the systemd units run what the
//! provisioning installs. The virtio data path itself is tests/virtio_vhost.rs.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tsmp::config::Config;

mod common;

use common::output_text as text;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/setup.sh installs it)"))
}

fn profile() -> Config {
    Config::load(&root().join("dpdk-config/vagrant-virtio.toml")).expect("vagrant-virtio.toml")
}

/// "5254001800fe" or "52:54:00:18:00:FE" -> "52:54:00:18:00:fe".
fn mac(s: &str) -> String {
    let hex: String = s
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_lowercase();
    assert_eq!(hex.len(), 12, "{s} is not a MAC");
    (0..6)
        .map(|i| &hex[2 * i..2 * i + 2])
        .collect::<Vec<_>>()
        .join(":")
}

fn in_net(ip: Ipv4Addr, cidr: &str) -> bool {
    let (a, len) = cidr.split_once('/').unwrap();
    let a: Ipv4Addr = a.parse().unwrap();
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(a) & mask
}

#[test]
fn vagrantfile_parses() {
    let out = run(Command::new("ruby")
        .arg("-c")
        .arg(root().join("vagrant/Vagrantfile")));
    assert!(out.status.success(), "ruby -c: {}", text(&out));
    assert!(text(&out).contains("Syntax OK"));
}

#[test]
fn vagrantfile_topology_matches_the_profile_and_the_demo() {
    let out = run(Command::new("ruby")
        .arg(root().join("tests/vagrant/vagrant_stub.rb"))
        .arg("Vagrantfile")
        .current_dir(root().join("vagrant")));
    assert!(out.status.success(), "Vagrantfile: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("stub JSON");
    let machines = v["machines"].as_object().expect("machines");
    let names: HashSet<&str> = machines.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        HashSet::from(["appliance", "alice", "phone", "pc"]),
        "the draft's topology"
    );
    assert_eq!(
        v["synced"][0]["dst"], "/vagrant",
        "provision.sh reads the repo at /vagrant"
    );
    assert_eq!(v["synced"][0]["src"], "..");

    let cfg = profile();
    let port_net: HashMap<&str, &str> = cfg
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.ip.as_deref().expect("port ip")))
        .collect();
    let mut macs = HashSet::new();
    let mut used: Vec<Ipv4Addr> = Vec::new();
    let mut host_ips: Vec<Ipv4Addr> = Vec::new();
    for (name, m) in machines {
        for n in m["networks"].as_array().unwrap() {
            assert!(
                macs.insert(mac(n["mac"].as_str().unwrap())),
                "{name}: MAC reused"
            );
            assert_eq!(n["nic_type"], "virtio", "{name}: VirtualBox NIC type");
            assert!(
                n["virtualbox__intnet"].is_string() && n["libvirt__network_name"].is_string(),
                "{name}: both providers"
            );
            assert_eq!(n["libvirt__dhcp_enabled"], false);
            used.push(n["ip"].as_str().unwrap().parse().unwrap());
            host_ips.push(n["libvirt__host_ip"].as_str().unwrap().parse().unwrap());
        }
        for p in ["libvirt", "virtualbox"] {
            let s = &m["providers"][p];
            assert!(
                s["cpus"].as_i64().unwrap() >= 1 && s["memory"].as_i64().unwrap() >= 512,
                "{name}: {p} size"
            );
        }
        let prov = &m["provisions"][0];
        assert_eq!(prov["type"], "shell");
        assert!(root()
            .join("vagrant")
            .join(prov["path"].as_str().unwrap())
            .exists());
    }

    // The appliance: data NICs not configured by the kernel, one per [[port]] (same network as
    // the port's address), their MACs handed to the binder in TSMP_NICS under the port's name.
    let app = &machines["appliance"];
    assert_eq!(app["primary"], true);
    let nics = app["networks"].as_array().unwrap();
    assert_eq!(nics.len(), cfg.ports.len(), "one data NIC per [[port]]");
    let prov = &app["provisions"][0];
    assert_eq!(prov["args"][0], "appliance");
    let given: HashMap<String, String> = prov["env"]["TSMP_NICS"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|e| {
            let (p, m) = e.split_once('=').unwrap();
            (p.to_owned(), mac(m))
        })
        .collect();
    assert_eq!(given.len(), cfg.ports.len());
    for n in nics {
        assert_eq!(
            n["auto_config"], false,
            "the kernel must leave DPDK's NICs alone"
        );
        let ip: Ipv4Addr = n["ip"].as_str().unwrap().parse().unwrap();
        let port = port_net
            .iter()
            .find(|(_, cidr)| in_net(ip, cidr))
            .map(|(p, _)| *p)
            .unwrap_or_else(|| panic!("appliance NIC {ip} is on no port's network"));
        assert_eq!(
            given.get(port),
            Some(&mac(n["mac"].as_str().unwrap())),
            "TSMP_NICS names port {port} by its NIC's MAC"
        );
    }
    let cpus = app["providers"]["libvirt"]["cpus"].as_u64().unwrap();
    assert!(
        usize::try_from(cpus).unwrap() > cfg.workers.len(),
        "the appliance needs a CPU per worker plus the main lcore"
    );
    assert!(
        app["providers"]["libvirt"]["memory"].as_u64().unwrap() > 2 * u64::from(cfg.eal.memory_mb),
        "hugepages plus the OS and the build"
    );

    // The hosts: the addresses the demo and the profile's services use.
    let ip_of = |m: &str| -> Ipv4Addr {
        machines[m]["networks"][0]["ip"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    for s in &cfg.services {
        assert_eq!(
            s.backend,
            ip_of("alice"),
            "service {} backend is Alice's VM",
            s.name
        );
        assert!(in_net(s.vip, port_net["client"]));
    }
    let demo = std::fs::read_to_string(root().join("vagrant/demo.sh")).unwrap();
    for (dev, addr) in [("phone", ip_of("phone")), ("pc", ip_of("pc"))] {
        assert!(
            in_net(addr, port_net["client"]),
            "{dev} on the client network"
        );
        assert!(
            demo.contains(&format!("{dev}:{addr}")),
            "demo.sh registers {dev} as {addr}"
        );
        assert_eq!(machines[dev]["provisions"][0]["args"][0], "device");
        assert_eq!(machines[dev]["provisions"][0]["args"][2], addr.to_string());
    }
    assert!(in_net(ip_of("alice"), port_net["server"]));
    assert_eq!(machines["alice"]["provisions"][0]["args"][0], "server");
    // No address is used twice: the libvirt host bridges stay off the VIP, the SNAT pool and
    // every VM's address.
    let mut taken: Vec<Ipv4Addr> = cfg.services.iter().map(|s| s.vip).collect();
    taken.dedup(); // services share a VIP
    taken.extend(&cfg.snat.addresses);
    taken.extend(
        machines
            .iter()
            .filter(|(n, _)| n.as_str() != "appliance")
            .map(|(n, _)| ip_of(n)),
    );
    for h in &host_ips {
        assert!(!taken.contains(h), "libvirt host address {h} collides");
    }
    let mut all = taken.clone();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), taken.len(), "an address used twice: {taken:?}");
}

/// A sysfs tree with kernel interfaces `(name, mac, pci)`.
fn fake_sysfs(dir: &Path, nics: &[(&str, &str, &str)]) {
    for (name, mac, pci) in nics {
        let dev = dir.join("devices/pci0000:00").join(pci);
        std::fs::create_dir_all(&dev).unwrap();
        let net = dir.join("class/net").join(name);
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("address"), format!("{mac}\n")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../../devices/pci0000:00/{pci}"),
            net.join("device"),
        )
        .unwrap();
    }
}

fn bind(sysfs: &Path, nics: &str, out: &Path, state: &Path) -> Output {
    run(Command::new(root().join("vagrant/tsmp-bind-nics"))
        .arg("--render-only")
        .arg(root().join("dpdk-config/vagrant-virtio.toml"))
        .arg(out)
        .env("SYSFS", sysfs)
        .env("TSMP_NICS", nics)
        .env("TSMP_NIC_STATE", state))
}

#[test]
fn nic_binder_writes_the_pci_addresses_it_finds_by_mac() {
    let dir = std::env::temp_dir().join(format!("tsmp-vagrant-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sysfs = dir.join("sys");
    // VirtualBox-like numbering, management NIC first, the data NICs in the other order.
    fake_sysfs(
        &sysfs,
        &[
            ("eth0", "08:00:27:aa:bb:cc", "0000:00:03.0"),
            ("eth1", "52:54:00:19:00:fe", "0000:00:08.0"),
            ("eth2", "52:54:00:18:00:fe", "0000:00:09.0"),
        ],
    );
    let state = dir.join("nics");
    let out = dir.join("appliance.toml");
    let o = bind(
        &sysfs,
        "client=5254001800fe server=52:54:00:19:00:FE",
        &out,
        &state,
    );
    assert!(o.status.success(), "{}", text(&o));
    let cfg = Config::load(&out).expect("rendered configuration");
    let pci: HashMap<&str, Option<&str>> = cfg
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.pci.as_deref()))
        .collect();
    assert_eq!(pci["client"], Some("0000:00:09.0"));
    assert_eq!(pci["server"], Some("0000:00:08.0"));
    let check = run(Command::new(env!("CARGO_BIN_EXE_tsmp-proxy"))
        .arg("--config")
        .arg(&out)
        .arg("--check"));
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("-a 0000:00:09.0 -a 0000:00:08.0"),
        "{}",
        text(&check)
    );
    // Everything but the pci lines is the profile, byte for byte.
    let a = std::fs::read_to_string(root().join("dpdk-config/vagrant-virtio.toml")).unwrap();
    let b = std::fs::read_to_string(&out).unwrap();
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("pci"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));

    // A MAC that no NIC has: named in the error, nothing written.
    let bad = dir.join("bad.toml");
    let o = bind(
        &sysfs,
        "client=5254001800fe server=5254001900ff",
        &bad,
        &state,
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no NIC with MAC 52:54:00:19:00:ff (port server)"),
        "{}",
        text(&o)
    );
    assert!(!bad.exists());
    // A port of the profile without a NIC, and a NIC for no port.
    let o = bind(&sysfs, "client=5254001800fe", &bad, &state);
    assert!(
        !o.status.success() && text(&o).contains("port server of the template has no NIC"),
        "{}",
        text(&o)
    );
    let o = bind(
        &sysfs,
        "client=5254001800fe server=5254001900fe mgmt=080027aabbcc",
        &bad,
        &state,
    );
    assert!(
        !o.status.success() && text(&o).contains("names port mgmt"),
        "{}",
        text(&o)
    );
    assert!(!bad.exists());
    let o = bind(&sysfs, "client=52540018", &bad, &state);
    assert!(
        !o.status.success() && text(&o).contains("is not a MAC address"),
        "{}",
        text(&o)
    );

    // Bound to DPDK, a NIC has no kernel interface: the record of the last binding serves.
    std::fs::remove_dir_all(sysfs.join("class/net/eth2")).unwrap();
    std::fs::write(&state, "52:54:00:18:00:fe 0000:00:09.0 client\n").unwrap();
    let again = dir.join("again.toml");
    let o = bind(
        &sysfs,
        "client=5254001800fe server=5254001900fe",
        &again,
        &state,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&again).unwrap(), b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scripts_parse_and_units_run_what_provisioning_installs() {
    for s in [
        "vagrant/provision.sh",
        "vagrant/demo.sh",
        "vagrant/tsmp-bind-nics",
        "scripts/setup.sh",
    ] {
        let o = run(Command::new("bash").arg("-n").arg(root().join(s)));
        assert!(o.status.success(), "{s}: {}", text(&o));
    }
    let prov = std::fs::read_to_string(root().join("vagrant/provision.sh")).unwrap();
    assert!(
        prov.contains("scripts/setup.sh\" --persist"),
        "the appliance reuses the README's set-up, hugepages persisted"
    );
    let units = root().join("vagrant/systemd");
    let mut n = 0;
    for e in std::fs::read_dir(&units).unwrap() {
        let p = e.unwrap().path();
        let unit = p.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            prov.contains(&format!("unit {unit}")),
            "provision.sh installs {unit}"
        );
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            let Some(cmd) = line
                .strip_prefix("ExecStart=")
                .or_else(|| line.strip_prefix("ExecStartPre="))
            else {
                continue;
            };
            let prog = cmd.split_whitespace().next().unwrap();
            let name = Path::new(prog).file_name().unwrap().to_str().unwrap();
            let installed = if name == "tsmp-bind-nics" {
                prov.contains("vagrant/tsmp-bind-nics\" /usr/local/sbin/tsmp-bind-nics")
                    && prog == "/usr/local/sbin/tsmp-bind-nics"
            } else {
                prog == format!("/usr/local/bin/{name}")
                    && prov.lines().any(|l| {
                        l.trim_start().starts_with("build ")
                            && l.split_whitespace().any(|w| w == name)
                    })
            };
            assert!(
                installed,
                "{unit}: {prog} is not what provision.sh installs"
            );
            n += 1;
        }
    }
    assert!(n >= 4, "units with commands: {n}");
    // The binder's template and output are where the units look for them.
    let bind_unit = std::fs::read_to_string(units.join("tsmp-bind-nics.service")).unwrap();
    assert!(prov.contains("/usr/local/share/tsmp/vagrant-virtio.toml"));
    assert!(
        bind_unit.contains("/usr/local/share/tsmp/vagrant-virtio.toml /etc/tsmp/appliance.toml")
    );
}
