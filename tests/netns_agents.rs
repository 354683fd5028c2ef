//! The control plane end to end, with the kernel's TCP on every end: the naming server
//! (`tsmp-names`) and the proxy's agent port live behind the appliance's exception path, the
//! devices run `tsmp-agent`, and a stream moves from the phone to the PC only through the
//! agents' command lines. The attacks on the control plane (forged, replayed, stale, foreign
//! requests, a SYN to the migration port from the wrong address) are each refused with their
//! reason and counted, and the flow they aim at keeps forwarding untouched.

mod common;

use std::io::Read;
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::bed::*;
use common::{Netns, Proxy};
use ed25519_dalek::SigningKey;
use tsmp::agents::in_netns;
use tsmp_proto::msg::{self, Body, Mfr, MtrReply, Outcome, Reason};

/// A child process killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn names_bin() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| common::tool("tsmp-names").to_string_lossy().into_owned())
}

fn agent_bin() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| common::tool("tsmp-agent").to_string_lossy().into_owned())
}

fn in_ns(ns: &Netns, prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, prog]).args(args);
    c
}

fn output(mut c: Command) -> Output {
    c.output().expect("run")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The control plane around a test bed: naming server with users bob and eve, the proxy
/// (started), bob's phone and PC registered.
struct Plane {
    b: Bed,
    proxy: Option<Proxy>,
    _names: Guard,
    stats: PathBuf,
    proxy_pub: String,
    keys: std::collections::HashMap<String, String>,
}

impl Plane {
    fn new(tag: &str) -> Plane {
        let b = bed_with_agents(tag, &[]);
        let nd = b.dir.0.join("names");
        let mut keys = std::collections::HashMap::new();
        for user in ["bob", "eve"] {
            let o = output({
                let mut c = Command::new(names_bin());
                c.args(["--dir", nd.to_str().unwrap(), "add-user", user]);
                c
            });
            assert!(o.status.success(), "add-user {user}: {}", text(&o));
            keys.insert(
                user.to_owned(),
                String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            );
        }
        let o = output({
            let mut c = Command::new(env!("CARGO_BIN_EXE_tsmp-proxy"));
            c.args(["--config", b.cfg.to_str().unwrap(), "--public-key"]);
            c
        });
        assert!(o.status.success(), "{}", text(&o));
        let proxy_pub = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let stats = b.dir.0.join("stats.json");
        let proxy = Proxy::start(&b.cfg, &["--stats-json", stats.to_str().unwrap()]);
        assert!(
            proxy.output.iter().any(|l| l.contains("agents: MFR on")),
            "{:?}",
            proxy.output
        );
        let appliance = b.appliance.as_ref().expect("appliance namespace");
        let names = Guard(
            in_ns(
                appliance,
                names_bin(),
                &[
                    "--dir",
                    nd.to_str().unwrap(),
                    "serve",
                    "--listen",
                    "0.0.0.0:53",
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tsmp-names"),
        );
        std::thread::sleep(Duration::from_millis(400));
        let p = Plane {
            b,
            proxy: Some(proxy),
            _names: names,
            stats,
            proxy_pub,
            keys,
        };
        p.register(&p.b.phone, "bob", "phone", "198.18.0.1");
        p.register(&p.b.pc, "bob", "pc", "198.18.0.3");
        p
    }

    fn state(&self, device: &str) -> PathBuf {
        self.b.dir.0.join(format!("agent-{device}"))
    }

    fn agent(&self, ns: &Netns, device: &str, args: &[&str]) -> Command {
        let st = self.state(device);
        let mut v = vec!["--state", st.to_str().unwrap()];
        v.extend_from_slice(args);
        let mut c = in_ns(ns, "timeout", &[&["60", agent_bin()][..], &v[..]].concat());
        c.stdin(Stdio::null());
        c
    }

    fn register(&self, ns: &Netns, user: &str, device: &str, addr: &str) {
        let o = output(self.agent(
            ns,
            device,
            &[
                "register",
                "--names",
                &format!("{APPLIANCE}:53"),
                "--zone",
                "tsmp.test",
                "--user",
                user,
                "--device",
                device,
                "--tsig",
                &self.keys[user],
                "--address",
                addr,
                "--port",
                "7001",
                "--proxy",
                &format!("{APPLIANCE}:{AGENTS_PORT}"),
                "--proxy-key",
                &self.proxy_pub,
            ],
        ));
        assert!(
            o.status.success() && text(&o).contains("registered"),
            "register {device}.{user}: {}",
            text(&o)
        );
    }

    fn device_key(&self, device: &str) -> SigningKey {
        msg::load_or_create_key(&self.state(device).join("device.key")).unwrap()
    }

    /// Stops the proxy; its output and final counters.
    fn stop(&mut self) -> (String, serde_json::Value) {
        let out = self.proxy.take().unwrap().stop();
        let s = std::fs::read_to_string(&self.stats).unwrap();
        (out, serde_json::from_str(&s).unwrap())
    }
}

fn read_file(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

/// An unmodified application on the PC: connects to the agent's local port (retrying until
/// the agent has taken a connection over) and writes what it reads to a file.
const LOCAL_APP: &str = r#"
import socket, sys, time
for _ in range(400):
    try:
        s = socket.create_connection(("127.0.0.1", 9000), timeout=60); break
    except OSError:
        time.sleep(0.05)
out = open(sys.argv[1], "wb", buffering=0)
while (b := s.recv(65536)):
    out.write(b)
"#;

#[test]
fn a_stream_moves_from_phone_to_pc_through_the_agents_command_lines() {
    stream_moves("g", false, false);
}

#[test]
fn the_pc_agent_hands_the_stream_to_an_application_on_its_local_port() {
    stream_moves("l", true, false);
}

#[test]
fn an_operator_moves_a_stream_to_a_device_by_name() {
    stream_moves("op", false, true);
}

/// The phone downloads; `tsmp-agent migrate` (or, with `operator`, `tsmp-cli migrate --to
/// pc.bob`) moves the download to the PC, whose agent hands it to `cat` (or, with `local`, to
/// an application connecting to the agent's local port).
fn stream_moves(tag: &str, local: bool, operator: bool) {
    let mut p = Plane::new(tag);
    let total: u64 = 24 << 20;
    let mut srv = start_server(&p.b, total);
    let before = counters(&p.b.server);
    let pc_out = p.b.dir.0.join("pc.out");
    let phone_out = p.b.dir.0.join("phone.out");
    let cat = format!("cat > {}", pc_out.display());
    let hand: [&str; 2] = if local {
        ["--local", "127.0.0.1:9000"]
    } else {
        ["--exec", &cat]
    };
    let mut listen = Guard(
        p.agent(&p.b.pc, "pc", &["listen", hand[0], hand[1], "--count", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _app = local.then(|| Guard(app(&p.b.pc, 60, LOCAL_APP, &[pc_out.to_str().unwrap()])));
    let mut ph = drain(&p.b.phone, 80, &phone_out);
    let port = line_from(&mut ph, "port");
    wait_size(&phone_out, 3 << 20);

    if operator {
        let o = output({
            let mut c = Command::new(common::tool("tsmp-cli"));
            c.arg("--socket").arg(&p.b.sock).args([
                "migrate",
                &format!("198.18.0.1:{port}"),
                "198.18.0.10:80",
                "--to",
                "pc.bob",
            ]);
            c
        });
        let said = text(&o);
        assert!(o.status.success(), "tsmp-cli migrate --to: {said}");
        assert!(said.contains("to pc.bob (198.18.0.3): MTR sent"), "{said}");
        // The operator selects a user's flows by name (the naming server's device list).
        for (user, want) in [("bob", 1), ("eve", 0)] {
            let mut c = Command::new(common::tool("tsmp-cli"));
            c.arg("--socket")
                .arg(&p.b.sock)
                .args(["flows", "--user", user, "--json"]);
            let o = output(c);
            let v: serde_json::Value = serde_json::from_str(text(&o).trim()).unwrap();
            assert_eq!(v["total"], want, "flows of {user}: {v}");
        }
    } else {
        let o = output(p.agent(&p.b.phone, "phone", &["migrate", &port, "--to", "pc"]));
        let said = text(&o);
        assert!(o.status.success(), "tsmp-agent migrate: {said}");
        assert!(
            said.contains("mfr accepted") && said.contains("resumed"),
            "{said}"
        );
    }

    let phone_bytes: u64 = line_from(&mut ph, "done").parse().unwrap();
    let _ = ph.wait();
    let taken = line_from(&mut listen.0, "mtr migration=");
    let from = if operator {
        "from=operator"
    } else {
        "from=phone"
    };
    assert!(taken.contains(from), "{taken}");
    wait_size(&pc_out, total - phone_bytes);
    let sent = line_from(&mut srv, "sent");
    assert_eq!(
        sent,
        total.to_string(),
        "the server's application saw an error"
    );
    assert_server_open_at_end(&p.b);

    // The two applications' bytes, concatenated, are the server's stream.
    let a = read_file(&phone_out);
    let b = read_file(&pc_out);
    assert_eq!(a.len() as u64, phone_bytes);
    assert_eq!(
        a.len() as u64 + b.len() as u64,
        total,
        "phone {} + pc {}",
        a.len(),
        b.len()
    );
    assert_eq!(pattern_from(&a, 0), Ok(()));
    assert_eq!(pattern_from(&b, phone_bytes), Ok(()), "the PC's stream");
    assert!(phone_bytes < total, "the migration came after the end");

    let after = counters(&p.b.server);
    let moved = unchanged(&before, &after, &NEVER);
    assert!(moved.is_empty(), "server-side counters moved: {moved:?}");
    let (out, s) = p.stop();
    print_pauses("stream_moves", &out);
    if operator {
        assert!(out.contains("operator migration=1"), "{out}");
        assert_eq!(s["control"]["mfr_accepted"], 0, "{s:#}");
    } else {
        assert!(out.contains("mfr migration=1"), "{out}");
        assert_eq!(s["control"]["mfr_accepted"], 1, "{s:#}");
    }
    assert_eq!(s["control"]["mtr_sent"], 1, "{s:#}");
}

/// Sends `frame` to the proxy's agent port from inside `ns`; the proxy's answer.
fn send(ns: &Netns, frame: Vec<u8>) -> Result<(Option<msg::MfrReply>, bool), String> {
    let ns = ns.name.clone();
    let to = SocketAddrV4::new(APPLIANCE.parse().unwrap(), AGENTS_PORT);
    in_netns(Some(&ns), move || {
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        use std::io::Write;
        s.write_all(&frame).map_err(|e| e.to_string())?;
        match msg::read_sealed(&mut s) {
            Ok(m) => match m.body {
                Body::MfrReply(r) => Ok((Some(r), true)),
                _ => Err("not a reply".into()),
            },
            Err(e) => Err(e.to_string()),
        }
    })?
}

fn refusal(r: &msg::MfrReply) -> Option<Reason> {
    match &r.outcome {
        Outcome::Refused { reason, .. } => Some(*reason),
        Outcome::Accepted { .. } => None,
    }
}

#[test]
fn forged_replayed_stale_and_foreign_requests_are_refused_and_the_flow_keeps_forwarding() {
    let mut p = Plane::new("h");
    p.register(&p.b.pc, "eve", "tv", "198.18.0.3");
    let total: u64 = 24 << 20;
    let mut srv = start_server(&p.b, total);
    let before = counters(&p.b.server);
    let phone_out = p.b.dir.0.join("phone.out");
    let mut ph = drain(&p.b.phone, 80, &phone_out);
    let port: u16 = line_from(&mut ph, "port").parse().unwrap();
    wait_size(&phone_out, 1 << 20);

    let phone_key = p.device_key("phone");
    let pc_key = p.device_key("pc");
    let tv_key = p.device_key("tv");
    let flow = |device: &str, user: &str, client: &str, target: &str| Mfr {
        user: user.into(),
        device: device.into(),
        client: format!("{client}:{port}").parse().unwrap(),
        server: "198.18.0.10:80".parse().unwrap(),
        target: target.into(),
        counter: 0,
        ts_ms: msg::now_ms(),
        nonce: msg::nonce(),
    };
    let phone_flow = |target: &str| flow("phone", "bob", "198.18.0.1", target);
    let seal = |m: &Mfr, k: &SigningKey| msg::seal(&Body::Mfr(m.clone()), k);
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let replayed = seal(&phone_flow("laptop"), &phone_key);
    let mut stale = phone_flow("pc");
    stale.ts_ms -= 120_000;
    let mut old_counter = phone_flow("pc");
    old_counter.counter = 3;
    let mut oversized = (10_000u32).to_be_bytes().to_vec();
    oversized.extend(std::iter::repeat_n(b'x', 100));
    let (phone, pc) = (&p.b.phone, &p.b.pc);
    let cases: Vec<(&str, &Netns, Vec<u8>, Reason)> = vec![
        (
            "garbage",
            phone,
            [&5u32.to_be_bytes()[..], b"hello"].concat(),
            Reason::Garbage,
        ),
        ("oversized", phone, oversized, Reason::Oversized),
        (
            "forged signature",
            phone,
            seal(&phone_flow("pc"), &stranger),
            Reason::BadSignature,
        ),
        (
            "unknown device",
            phone,
            seal(&flow("ghost", "bob", "198.18.0.1", "pc"), &phone_key),
            Reason::UnknownDevice,
        ),
        (
            "unknown target",
            phone,
            replayed.clone(),
            Reason::UnknownTarget,
        ),
        ("replayed", phone, replayed, Reason::Replayed),
        (
            "stale timestamp",
            phone,
            seal(&stale, &phone_key),
            Reason::Stale,
        ),
        (
            "phone's key, PC's address",
            pc,
            seal(&phone_flow("pc"), &phone_key),
            Reason::NotFromDevice,
        ),
        (
            "the PC claims the phone's flow",
            pc,
            seal(&flow("pc", "bob", "198.18.0.1", "phone"), &pc_key),
            Reason::NotHolder,
        ),
        (
            "eve's device claims bob's flow",
            pc,
            seal(&flow("tv", "eve", "198.18.0.1", "tv"), &tv_key),
            Reason::NotHolder,
        ),
        (
            "target of another user",
            phone,
            seal(&phone_flow("tv.eve"), &phone_key),
            Reason::TargetOtherUser,
        ),
        (
            "target is the holder",
            phone,
            seal(&phone_flow("phone"), &phone_key),
            Reason::TargetIsHolder,
        ),
        (
            "old migration counter",
            phone,
            seal(&old_counter, &phone_key),
            Reason::StaleCounter,
        ),
    ];
    let mut expected: std::collections::BTreeMap<String, u64> = Default::default();
    for (what, ns, frame, want) in cases {
        let (reply, _) = send(ns, frame).unwrap_or_else(|e| panic!("{what}: {e}"));
        let reply = reply.unwrap();
        assert_eq!(refusal(&reply), Some(want), "{what}: {reply:?}");
        *expected.entry(want.name().to_owned()).or_default() += 1;
    }

    // The migration port accepts the target's address only. The test plays the PC's agent
    // (with the PC's key) to hold the MTR while the phone knocks on the port first.
    let mtr_listener = in_netns(Some(&pc.name), || TcpListener::bind("198.18.0.3:7001"))
        .unwrap()
        .unwrap();
    let (reply, _) = send(phone, seal(&phone_flow("pc"), &phone_key)).unwrap();
    let reply = reply.unwrap();
    assert_eq!(refusal(&reply), None, "{reply:?}");
    let (mut c, _) = mtr_listener.accept().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mtr = msg::read_sealed(&mut c).unwrap();
    assert!(
        mtr.verify(&msg::parse_public(&p.proxy_pub).unwrap()),
        "MTR signed by the proxy"
    );
    let Body::Mtr(mtr) = mtr.body else {
        panic!("not an MTR")
    };
    assert_eq!(
        (mtr.device.as_str(), mtr.from.as_str(), mtr.counter),
        ("pc", "phone", 1)
    );
    msg::write_sealed(
        &mut c,
        &Body::MtrReply(MtrReply {
            migration: mtr.migration,
            accepted: true,
            detail: String::new(),
            nonce: mtr.nonce.clone(),
        }),
        &pc_key,
    )
    .unwrap();
    let connect = mtr.connect;
    let wrong = in_netns(Some(&phone.name), move || {
        TcpStream::connect_timeout(&connect.into(), Duration::from_millis(1500))
    })
    .unwrap();
    assert!(wrong.is_err(), "the phone got into the migration port");
    let t = Instant::now();
    let mut right = in_netns(Some(&pc.name), move || {
        TcpStream::connect_timeout(&connect.into(), Duration::from_secs(3))
    })
    .unwrap()
    .expect("the PC connects to the migration port");
    right
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Once: a second connection, even from the target, is refused.
    let second = in_netns(Some(&pc.name), move || {
        TcpStream::connect_timeout(&connect.into(), Duration::from_millis(1500))
    })
    .unwrap();
    assert!(
        second.is_err(),
        "a second connection got into the migration port"
    );
    let phone_bytes: u64 = line_from(&mut ph, "done").parse().unwrap();
    let mut rest = Vec::new();
    let _ = right.read_to_end(&mut rest);
    let sent = line_from(&mut srv, "sent");
    assert_eq!(sent, total.to_string());
    let a = read_file(&phone_out);
    assert_eq!(pattern_from(&a, 0), Ok(()));
    assert_eq!(
        a.len() as u64 + rest.len() as u64,
        total,
        "after {:?}",
        t.elapsed()
    );
    assert_eq!(pattern_from(&rest, phone_bytes), Ok(()));
    let moved = unchanged(&before, &counters(&p.b.server), &NEVER);
    assert!(moved.is_empty(), "server-side counters moved: {moved:?}");

    let (_, s) = p.stop();
    let refused: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(s["control"]["mfr_refused"].clone()).unwrap();
    assert_eq!(refused, expected, "{s:#}");
    assert_eq!(s["control"]["mfr_accepted"], 1, "{s:#}");
    let drops = &s["proxy"][0]["drops"];
    assert!(
        drops["migration_syn_refused"].as_u64().unwrap_or(0) >= 2,
        "the phone's and the second SYN were not counted: {drops:#}"
    );
}
