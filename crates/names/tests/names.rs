//! The naming server (`tsmp-names`) as a DNS server: devices register with signed dynamic
//! updates, standard tools (`dig`, `nsupdate`) interoperate, records survive a restart, and
//! every update that is unsigned, signed with an unknown or another user's key, or replayed is
//! refused and changes nothing.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tsmp_proto::names::{self, DeviceId, DeviceRecord, NameError, Resolver, TsigKey};

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tsmp-names")
}

fn start(dir: &Path, addr: SocketAddr) -> Server {
    let mut child = Command::new(bin())
        .args([
            "--dir",
            dir.to_str().unwrap(),
            "--zone",
            "tsmp.test",
            "serve",
        ])
        .args(["--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tsmp-names");
    // Ready when it answers.
    let r = Resolver::new(addr, names::zone("tsmp.test").unwrap());
    for _ in 0..50 {
        if r.query(r.zone(), hickory_proto::rr::RecordType::SOA)
            .is_ok_and(|v| !v.is_empty())
        {
            return Server { child };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tsmp-names did not start on {addr}");
}

fn add_user(dir: &Path, user: &str) -> TsigKey {
    let o = Command::new(bin())
        .args(["--dir", dir.to_str().unwrap(), "add-user", user])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn free_addr() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn dig(addr: SocketAddr, name: &str, t: &str) -> String {
    let o = Command::new("dig")
        .args([
            "+short",
            "+tries=2",
            "+time=1",
            &format!("@{}", addr.ip()),
            "-p",
            &addr.port().to_string(),
            name,
            t,
        ])
        .output()
        .expect("dig (bind9-dnsutils)");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn nsupdate(addr: SocketAddr, key: Option<&TsigKey>, cmds: &str) -> bool {
    let mut c = Command::new("nsupdate");
    if let Some(k) = key {
        c.args(["-y", &k.to_string()]);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nsupdate (bind9-dnsutils)");
    use std::io::Write;
    let script = format!(
        "server {} {}\nzone tsmp.test\n{cmds}\nsend\n",
        addr.ip(),
        addr.port()
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rec(last: u8, port: u16, key: u8) -> DeviceRecord {
    DeviceRecord {
        addr: Ipv4Addr::new(198, 18, 0, last),
        agent_port: port,
        key: [key; 32],
    }
}

#[test]
fn devices_register_resolve_move_and_survive_a_restart() {
    let dir = Dir(std::env::temp_dir().join(format!("tsmp-names-a-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let bob = add_user(&dir.0, "bob");
    let addr = free_addr();
    let srv = start(&dir.0, addr);
    let r = Resolver::new(addr, names::zone("tsmp.test").unwrap());
    let phone = DeviceId::new("phone", "bob").unwrap();

    assert!(matches!(r.device(&phone), Err(NameError::NotFound(_))));
    r.register(&bob, &phone, &rec(1, 7001, 1)).unwrap();
    assert_eq!(r.device(&phone).unwrap(), rec(1, 7001, 1));
    // Standard DNS: dig sees the same records.
    assert_eq!(dig(addr, "phone.bob.tsmp.test", "A"), "198.18.0.1");
    assert_eq!(
        dig(addr, "_tsmp-agent._tcp.phone.bob.tsmp.test", "SRV"),
        "0 0 7001 phone.bob.tsmp.test."
    );
    assert!(dig(addr, "phone.bob.tsmp.test", "TXT").starts_with("\"tsmp-key=ed25519:"));

    // The user's device list grows with each device, once per device.
    let laptop = DeviceId::new("laptop", "bob").unwrap();
    r.register(&bob, &laptop, &rec(9, 7001, 9)).unwrap();
    r.register(&bob, &laptop, &rec(9, 7001, 9)).unwrap();
    let mut devs: Vec<String> = r
        .devices_of("bob")
        .unwrap()
        .into_iter()
        .map(|d| d.device)
        .collect();
    devs.sort();
    assert_eq!(devs, ["laptop", "phone"]);
    assert!(r.devices_of("eve").unwrap().is_empty());

    // The device moves: its records are replaced, not added to.
    r.register(&bob, &phone, &rec(5, 7002, 2)).unwrap();
    assert_eq!(r.device(&phone).unwrap(), rec(5, 7002, 2));
    assert_eq!(dig(addr, "phone.bob.tsmp.test", "A"), "198.18.0.5");
    // nsupdate with the user's key works too (interoperability with BIND's tools).
    assert!(nsupdate(
        addr,
        Some(&bob),
        "update add tablet.bob.tsmp.test 30 A 198.18.0.7"
    ));
    assert_eq!(dig(addr, "tablet.bob.tsmp.test", "A"), "198.18.0.7");

    drop(srv);
    let _srv = start(&dir.0, addr);
    assert_eq!(
        r.device(&phone).unwrap(),
        rec(5, 7002, 2),
        "after a restart"
    );
    assert_eq!(dig(addr, "tablet.bob.tsmp.test", "A"), "198.18.0.7");
}

#[test]
fn unsigned_foreign_wrongly_signed_and_replayed_updates_change_nothing() {
    let dir = Dir(std::env::temp_dir().join(format!("tsmp-names-b-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let bob = add_user(&dir.0, "bob");
    let eve = add_user(&dir.0, "eve");
    let addr = free_addr();
    let srv = start(&dir.0, addr);
    let r = Resolver::new(addr, names::zone("tsmp.test").unwrap());
    let phone = DeviceId::new("phone", "bob").unwrap();
    // A signed update captured on the wire, sent once: accepted.
    let (captured, id) = r.registration(&bob, &phone, &rec(1, 7001, 1)).unwrap();
    r.send_update(&captured, id, "phone").unwrap();
    let good = r.device(&phone).unwrap();
    r.register(&bob, &phone, &rec(2, 7001, 2)).unwrap();
    let good2 = r.device(&phone).unwrap();
    assert_eq!(good2, rec(2, 7001, 2));
    assert_ne!(good, good2);

    let refused = |e: Result<(), NameError>, code: &str, what: &str| match e {
        Err(NameError::Refused { code: c, .. }) => assert_eq!(c, code, "{what}"),
        other => panic!("{what}: {other:?}"),
    };
    // Replaying the captured update (it would move bob's phone back): refused.
    refused(r.send_update(&captured, id, "phone"), "REFUSED", "replay");
    // Eve's key on bob's name.
    refused(
        r.register(&eve, &phone, &rec(66, 7001, 6)),
        "REFUSED",
        "another user's key",
    );
    // A key the server does not know, named like bob's.
    let forged: TsigKey = "bob:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        .parse()
        .unwrap();
    refused(
        r.register(&forged, &phone, &rec(66, 7001, 6)),
        "NOTAUTH",
        "wrong secret",
    );
    // Unsigned (nsupdate without a key), and eve's key through nsupdate.
    assert!(!nsupdate(
        addr,
        None,
        "update add phone.bob.tsmp.test 30 A 198.18.0.66"
    ));
    assert!(!nsupdate(
        addr,
        Some(&eve),
        "update add phone.bob.tsmp.test 30 A 198.18.0.66"
    ));
    // Even the user's own key may not touch the user's apex or another subtree.
    assert!(!nsupdate(
        addr,
        Some(&bob),
        "update add bob.tsmp.test 30 A 198.18.0.66"
    ));
    assert!(!nsupdate(
        addr,
        Some(&bob),
        "update add x.eve.tsmp.test 30 A 198.18.0.66"
    ));
    // Zone transfers are refused.
    assert!(!dig(addr, "tsmp.test", "AXFR").contains("198.18.0.2"));
    assert_eq!(r.device(&phone).unwrap(), good2, "nothing changed");
    assert_eq!(dig(addr, "phone.bob.tsmp.test", "A"), "198.18.0.2");

    // The replay stays refused across a restart (accepted MACs are persisted).
    drop(srv);
    let _srv = start(&dir.0, addr);
    refused(
        r.send_update(&captured, id, "phone"),
        "REFUSED",
        "replay after restart",
    );
    assert_eq!(r.device(&phone).unwrap(), good2);
}
