//! `tsmp-agent`: the TSMP device agent (TSMPA). Runs on a user's device, without DPDK.
//!
//! ```text
//! tsmp-agent --state DIR register --names 198.18.0.254:53 --zone tsmp.test --user bob \
//!     --device phone --tsig hmac-sha256:bob:... --address 198.18.0.1 --port 7001 \
//!     --proxy 198.18.0.254:7000 --proxy-key BASE64
//! tsmp-agent --state DIR listen --exec 'cat > /tmp/video'      # or --forward 127.0.0.1:8000
//! tsmp-agent --state DIR migrate 40312 --to pc                 # local port or LOCAL-REMOTE
//! ```
//!
//! `register` creates the device's Ed25519 key (`DIR/device.key`), publishes the device's
//! address, agent port and public key with the naming server (an UPDATE signed with the user's
//! TSIG key) and keeps its settings in `DIR/agent.json`. `listen` waits for MTRs signed by the
//! proxy's key, connects to the proxy's migration port from the device's registered address,
//! and hands the connection to a local application: a command started with the socket as its
//! stdin and stdout (inetd-style), or a local TCP port an unmodified application listens on.
//! `migrate` finds the device's connection in the kernel's table, signs an MFR and prints the
//! proxy's answer and the migration's progress; it exits 0 once the target has resumed it.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tsmp_proto::msg::{
    self, load_or_create_key, now_ms, parse_public, read_sealed, write_sealed, Body, Freshness,
    Mfr, MtrReply, Outcome,
};
use tsmp_proto::names::{self, DeviceId, DeviceRecord, Resolver, TsigKey};

#[derive(Debug, Parser)]
#[command(
    name = "tsmp-agent",
    version,
    about = "TSMP device agent: register a device, take connections over (MTR), move them away (MFR)"
)]
struct Args {
    /// State directory (settings, the device key, connections taken over).
    #[arg(long, default_value = "/var/lib/tsmp-agent")]
    state: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Register this device with the naming server (again after an address change).
    Register {
        /// The naming server (DNS, UDP).
        #[arg(long)]
        names: SocketAddr,
        /// The zone of the naming server.
        #[arg(long, default_value = "tsmp.test")]
        zone: String,
        /// The user.
        #[arg(long)]
        user: String,
        /// This device's name.
        #[arg(long)]
        device: String,
        /// The user's TSIG key, hmac-sha256:<user>:<base64> (from `tsmp-names add-user`), or
        /// @FILE.
        #[arg(long)]
        tsig: String,
        /// This device's address (the one its connections come from).
        #[arg(long)]
        address: Ipv4Addr,
        /// The port `listen` accepts MTRs on.
        #[arg(long, default_value_t = 7001)]
        port: u16,
        /// The proxy's control address (MFR).
        #[arg(long)]
        proxy: SocketAddrV4,
        /// The proxy's public key (base64), or @FILE.
        #[arg(long)]
        proxy_key: String,
    },
    /// Wait for MTRs and take the connections over.
    Listen {
        /// Start this command (sh -c) per connection, the socket as its stdin and stdout.
        #[arg(long, group = "hand")]
        exec: Option<String>,
        /// Listen on this local address: the application connects to it (once per migrated
        /// connection) and gets the connection's bytes relayed both ways.
        #[arg(long, group = "hand")]
        local: Option<SocketAddr>,
        /// Connect to this local address (an application listening) per connection and relay
        /// both ways.
        #[arg(long, group = "hand")]
        forward: Option<SocketAddr>,
        /// Per service: `VIP:PORT=exec:CMD`, `VIP:PORT=local:ADDR` or `VIP:PORT=forward:ADDR`
        /// for the connections of that service (repeatable; the options above serve the rest).
        #[arg(long = "on", value_name = "SERVICE=HOW")]
        routes: Vec<String>,
        /// How long a taken-over connection waits for the application on `--local`, seconds.
        #[arg(long, default_value_t = 60)]
        local_wait: u64,
        /// Exit after this many connections (0: never).
        #[arg(long, default_value_t = 0)]
        count: u32,
    },
    /// Move one of this device's connections to another device of the same user.
    Migrate {
        /// The connection: its local port, or LOCAL_IP:PORT-REMOTE_IP:PORT.
        connection: String,
        /// The target device (`pc`, or `pc.<user>`).
        #[arg(long)]
        to: String,
    },
    /// Print this device's settings and public key.
    Show,
}

/// What `register` keeps.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    names: SocketAddr,
    zone: String,
    user: String,
    device: String,
    address: Ipv4Addr,
    port: u16,
    proxy: SocketAddrV4,
    proxy_key: String,
}

/// A connection this device took over: its migration counter.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Taken {
    /// "local_ip:port-remote_ip:port" -> counter.
    flows: HashMap<String, u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match &args.cmd {
        Cmd::Register {
            names,
            zone,
            user,
            device,
            tsig,
            address,
            port,
            proxy,
            proxy_key,
        } => register(
            &args.state,
            Settings {
                names: *names,
                zone: zone.clone(),
                user: user.clone(),
                device: device.clone(),
                address: *address,
                port: *port,
                proxy: *proxy,
                proxy_key: proxy_key.clone(),
            },
            tsig,
        ),
        Cmd::Listen {
            exec,
            local,
            forward,
            routes,
            local_wait,
            count,
        } => {
            let wait = Duration::from_secs(*local_wait);
            let mut table = Vec::new();
            let default = match (exec, local, forward) {
                (Some(c), _, _) => Some(format!("exec:{c}")),
                (_, Some(a), _) => Some(format!("local:{a}")),
                (_, _, Some(a)) => Some(format!("forward:{a}")),
                _ => None,
            };
            let parsed = routes
                .iter()
                .map(|r| {
                    let (svc, how) = r.split_once('=').ok_or_else(|| {
                        format!(
                            "--on {r:?}: expected VIP:PORT=exec:CMD (or local:ADDR, forward:ADDR)"
                        )
                    })?;
                    let svc: SocketAddrV4 = svc
                        .parse()
                        .map_err(|_| format!("--on {r:?}: {svc:?} is not VIP:PORT"))?;
                    Ok((Some(svc), how.to_owned()))
                })
                .chain(default.map(|d| Ok((None, d))))
                .map(|r: Result<_, String>| r.and_then(|(svc, how)| Ok((svc, hand(&how, wait)?))));
            for r in parsed {
                match r {
                    Ok(x) => table.push(x),
                    Err(e) => {
                        eprintln!("tsmp-agent: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            if table.is_empty() {
                eprintln!(
                    "tsmp-agent: listen needs --exec CMD, --local ADDR, --forward ADDR or \
                     --on VIP:PORT=...: where the connections taken over go"
                );
                return ExitCode::from(2);
            }
            listen(&args.state, table, *count)
        }
        Cmd::Migrate { connection, to } => migrate(&args.state, connection, to),
        Cmd::Show => show(&args.state),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tsmp-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn value_or_file(s: &str) -> Result<String, String> {
    match s.strip_prefix('@') {
        Some(p) => std::fs::read_to_string(p)
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("cannot read {p}: {e}")),
        None => Ok(s.to_owned()),
    }
}

fn settings_path(state: &Path) -> PathBuf {
    state.join("agent.json")
}

fn load(state: &Path) -> Result<(Settings, SigningKey, [u8; 32]), String> {
    let p = settings_path(state);
    let text = std::fs::read_to_string(&p).map_err(|e| {
        format!(
            "{}: {e}; register this device first (tsmp-agent --state {} register ...)",
            p.display(),
            state.display()
        )
    })?;
    let s: Settings = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    let key = load_or_create_key(&state.join("device.key")).map_err(|e| e.to_string())?;
    let proxy = parse_public(&s.proxy_key).map_err(|e| e.to_string())?;
    Ok((s, key, proxy))
}

fn register(state: &Path, mut s: Settings, tsig: &str) -> Result<ExitCode, String> {
    let id = DeviceId::new(&s.device, &s.user).map_err(|e| e.to_string())?;
    let tsig: TsigKey = value_or_file(tsig)?
        .parse()
        .map_err(|e: names::NameError| e.to_string())?;
    if tsig.name != s.user {
        return Err(format!(
            "the TSIG key is {}'s, not {}'s: a user's key registers only that user's devices",
            tsig.name, s.user
        ));
    }
    s.proxy_key = value_or_file(&s.proxy_key)?;
    parse_public(&s.proxy_key).map_err(|e| e.to_string())?;
    let zone = names::zone(&s.zone).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(state)
        .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let key = load_or_create_key(&state.join("device.key")).map_err(|e| e.to_string())?;
    let rec = DeviceRecord {
        addr: s.address,
        agent_port: s.port,
        key: key.verifying_key().to_bytes(),
    };
    Resolver::new(s.names, zone.clone())
        .register(&tsig, &id, &rec)
        .map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?;
    std::fs::write(settings_path(state), text)
        .map_err(|e| format!("cannot write {}: {e}", settings_path(state).display()))?;
    println!(
        "registered {} -> {} agent port {} key {}",
        id.fqdn(&zone).map_err(|e| e.to_string())?,
        s.address,
        s.port,
        msg::public_b64(&key)
    );
    Ok(ExitCode::SUCCESS)
}

fn show(state: &Path) -> Result<ExitCode, String> {
    let (s, key, _) = load(state)?;
    println!(
        "{}.{} address {} agent port {} proxy {} naming server {} zone {}\npublic key {}",
        s.device,
        s.user,
        s.address,
        s.port,
        s.proxy,
        s.names,
        s.zone,
        msg::public_b64(&key)
    );
    Ok(ExitCode::SUCCESS)
}

fn taken_path(state: &Path) -> PathBuf {
    state.join("flows.json")
}

fn flow_key(local: SocketAddrV4, remote: SocketAddrV4) -> String {
    format!("{local}-{remote}")
}

fn load_taken(state: &Path) -> Taken {
    std::fs::read_to_string(taken_path(state))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn save_taken(state: &Path, t: &Taken) {
    if let Ok(text) = serde_json::to_string(t) {
        let tmp = state.join("flows.json.tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(tmp, taken_path(state));
        }
    }
}

/// Connects from `local` (the device's registered address) to `to`, with a timeout.
fn connect_from(
    local: Ipv4Addr,
    to: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    // std cannot bind before connect; the kernel picks the source address by route, which is
    // the registered address on a device with one interface toward the proxy. Check it.
    let s = TcpStream::connect_timeout(&SocketAddr::V4(to), timeout)?;
    match s.local_addr()? {
        SocketAddr::V4(a) if *a.ip() == local => Ok(s),
        a => Err(std::io::Error::other(format!(
            "the connection to {to} leaves from {a}, not from the registered address {local}; \
             register the address this device reaches the proxy from"
        ))),
    }
}

/// Where a connection taken over goes.
#[derive(Debug)]
enum Hand {
    /// A command with the socket as stdin and stdout.
    Exec(String),
    /// An application that connects to this listener.
    Local(TcpListener, Duration),
    /// An application listening at this address.
    Forward(SocketAddr),
}

/// `exec:CMD`, `local:ADDR` or `forward:ADDR`.
fn hand(how: &str, wait: Duration) -> Result<Hand, String> {
    let (kind, arg) = how
        .split_once(':')
        .ok_or_else(|| format!("{how:?}: expected exec:CMD, local:ADDR or forward:ADDR"))?;
    let addr = || {
        arg.parse::<SocketAddr>()
            .map_err(|_| format!("{how:?}: {arg:?} is not IP:PORT"))
    };
    match kind {
        "exec" if !arg.is_empty() => Ok(Hand::Exec(arg.to_owned())),
        "local" => {
            let a = addr()?;
            TcpListener::bind(a)
                .map(|l| Hand::Local(l, wait))
                .map_err(|e| format!("cannot listen on {a} for the application: {e}"))
        }
        "forward" => Ok(Hand::Forward(addr()?)),
        _ => Err(format!(
            "{how:?}: expected exec:CMD, local:ADDR or forward:ADDR"
        )),
    }
}

/// Per service (or any, `None`), where its connections go; the first match wins.
type Routes = Vec<(Option<SocketAddrV4>, Hand)>;

fn listen(state: &Path, routes: Routes, count: u32) -> Result<ExitCode, String> {
    let (s, key, proxy_key) = load(state)?;
    let listener = TcpListener::bind((s.address, s.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", s.address, s.port))?;
    println!(
        "agent {}.{} listening for MTR on {}:{}",
        s.device, s.user, s.address, s.port
    );
    let _ = std::io::stdout().flush();
    let mut fresh = Freshness::new(4096);
    let mut served = 0u32;
    let routes = Arc::new(routes);
    // Serialises the read-modify-write of the connections taken over (flows.json).
    let taken = Arc::new(Mutex::new(()));
    let mut takeovers: Vec<std::thread::JoinHandle<()>> = Vec::new();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(3)));
        let sealed = match read_sealed(&mut conn) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("mtr refused: {e}");
                continue;
            }
        };
        let Body::Mtr(mtr) = &sealed.body else {
            eprintln!("mtr refused: not an MTR");
            continue;
        };
        let route = routes
            .iter()
            .position(|(svc, _)| svc.is_none_or(|s| s == mtr.service));
        let refuse = if !sealed.verify(&proxy_key) {
            Some("not signed by the proxy's key")
        } else if mtr.user != s.user || mtr.device != s.device {
            Some("addressed to another device")
        } else if !Freshness::timely(mtr.ts_ms, now_ms()) {
            Some("stale timestamp (check the clocks)")
        } else if now_ms() > mtr.deadline_ms {
            Some("deadline passed")
        } else if !fresh.first_use(&mtr.nonce, now_ms()) {
            Some("replayed")
        } else if route.is_none() {
            Some("no application on this device takes connections of that service")
        } else {
            None
        };
        let reply = MtrReply {
            migration: mtr.migration,
            accepted: refuse.is_none(),
            detail: refuse.unwrap_or("").to_owned(),
            nonce: mtr.nonce.clone(),
        };
        let _ = write_sealed(&mut conn, &Body::MtrReply(reply), &key);
        drop(conn);
        if let Some(why) = refuse {
            eprintln!("mtr migration={} refused: {why}", mtr.migration);
            continue;
        }
        let Some(route) = route else { continue };
        // Each take-over on its own thread: one application slow to connect to its local port
        // does not hold up another migration to this device.
        let (mtr, routes, taken, address) = (mtr.clone(), routes.clone(), taken.clone(), s.address);
        let state = state.to_path_buf();
        takeovers.push(std::thread::spawn(move || {
            take_over(&state, address, &mtr, &routes[route].1, &taken);
        }));
        takeovers.retain(|h| !h.is_finished());
        served += 1;
        if count > 0 && served >= count {
            break;
        }
    }
    for t in takeovers {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects to the proxy's migration port for `mtr` and hands the connection to the route's
/// application; returns when the application's relays (if any) are done.
fn take_over(state: &Path, address: Ipv4Addr, mtr: &msg::Mtr, hand: &Hand, taken: &Mutex<()>) {
    let t0 = Instant::now();
    let remaining = Duration::from_millis(mtr.deadline_ms.saturating_sub(now_ms()).max(1));
    let stream = match connect_from(address, mtr.connect, remaining.min(Duration::from_secs(5))) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "mtr migration={} cannot connect to {}: {e}",
                mtr.migration, mtr.connect
            );
            return;
        }
    };
    let Ok(SocketAddr::V4(local)) = stream.local_addr() else {
        return;
    };
    {
        let _one_writer = taken.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = load_taken(state);
        t.flows.insert(flow_key(local, mtr.connect), mtr.counter);
        save_taken(state, &t);
    }
    println!(
        "mtr migration={} from={} service={} connected {} -> {} in {:.1} ms",
        mtr.migration,
        mtr.from,
        mtr.service,
        local,
        mtr.connect,
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let _ = std::io::stdout().flush();
    let handed = match hand {
        Hand::Exec(cmd) => hand_to_command(stream, cmd, &mtr.service.to_string(), mtr.migration),
        Hand::Local(l, wait) => accept_local(l, *wait).and_then(|app| relay(stream, app)),
        Hand::Forward(addr) => TcpStream::connect_timeout(addr, Duration::from_secs(3))
            .map_err(|e| format!("cannot connect to the local application on {addr}: {e}"))
            .and_then(|app| relay(stream, app)),
    };
    if let Err(e) = handed {
        eprintln!("mtr migration={}: {e}", mtr.migration);
    }
}

fn hand_to_command(
    stream: TcpStream,
    cmd: &str,
    service: &str,
    migration: u64,
) -> Result<(), String> {
    let input = stream.try_clone().map_err(|e| e.to_string())?;
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TSMP_SERVICE", service)
        .env("TSMP_MIGRATION", migration.to_string())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(input)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(stream)))
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))
}

/// The application's connection to the agent's local port, within `wait`.
fn accept_local(l: &TcpListener, wait: Duration) -> Result<TcpStream, String> {
    let until = Instant::now() + wait;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(format!(
                    "no application connected to {:?} within {wait:?}: {e}",
                    l.local_addr().ok()
                ))
            }
        }
    }
}

/// Relays both ways between the migrated connection and the application, until both
/// directions have ended (each end's write side is shut when its source ends).
fn relay(stream: TcpStream, local: TcpStream) -> Result<(), String> {
    let (Ok(mut s_in), Ok(mut l_out), Ok(mut l_in), Ok(mut s_out)) = (
        stream.try_clone(),
        local.try_clone(),
        local.try_clone(),
        stream.try_clone(),
    ) else {
        return Err("cannot duplicate the sockets".into());
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut l_in, &mut s_out);
        let _ = s_out.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut s_in, &mut l_out);
    let _ = l_out.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
    Ok(())
}

/// The device's established connection named by `spec`: a local port or LOCAL-REMOTE.
fn find_connection(spec: &str) -> Result<(SocketAddrV4, SocketAddrV4), String> {
    let table = std::fs::read_to_string("/proc/net/tcp")
        .map_err(|e| format!("cannot read /proc/net/tcp: {e}"))?;
    let mut conns: Vec<(SocketAddrV4, SocketAddrV4)> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // st 01 = ESTABLISHED
            if f.len() < 4 || f[3] != "01" {
                return None;
            }
            Some((proc_addr(f[1])?, proc_addr(f[2])?))
        })
        .collect();
    // The kernel prints the table in chunks and may repeat a socket when the table changes
    // between two reads: one 4-tuple is one connection.
    conns.sort_unstable();
    conns.dedup();
    let found: Vec<_> = if let Some((l, r)) = spec.split_once('-') {
        let l: SocketAddrV4 = l.parse().map_err(|_| format!("{l:?} is not IP:PORT"))?;
        let r: SocketAddrV4 = r.parse().map_err(|_| format!("{r:?} is not IP:PORT"))?;
        conns.into_iter().filter(|c| *c == (l, r)).collect()
    } else {
        let p: u16 = spec.parse().map_err(|_| {
            format!("{spec:?} is neither a local port nor LOCAL_IP:PORT-REMOTE_IP:PORT")
        })?;
        conns.into_iter().filter(|c| c.0.port() == p).collect()
    };
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no established TCP connection {spec} on this device (see `ss -tn`)"
        )),
        many => Err(format!(
            "{} connections use local port {spec}; name one as LOCAL-REMOTE: {}",
            many.len(),
            many.iter()
                .map(|(l, r)| format!("{l}-{r}"))
                .collect::<Vec<_>>()
                .join(" ")
        )),
    }
}

/// `0100007F:1F90` -> 127.0.0.1:8080 (the kernel prints the address in host order).
fn proc_addr(s: &str) -> Option<SocketAddrV4> {
    let (ip, port) = s.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_le_bytes()), port))
}

fn migrate(state: &Path, spec: &str, to: &str) -> Result<ExitCode, String> {
    let (s, key, proxy_key) = load(state)?;
    let (client, server) = find_connection(spec)?;
    if *client.ip() != s.address {
        return Err(format!(
            "connection {client}-{server} is not from this device's registered address {}",
            s.address
        ));
    }
    let counter = load_taken(state)
        .flows
        .get(&flow_key(client, server))
        .copied()
        .unwrap_or(0);
    let mfr = Mfr {
        user: s.user.clone(),
        device: s.device.clone(),
        client,
        server,
        target: to.to_owned(),
        counter,
        ts_ms: now_ms(),
        nonce: msg::nonce(),
    };
    let t0 = Instant::now();
    let sent_ms = mfr.ts_ms;
    let mut conn = connect_from(s.address, s.proxy, Duration::from_secs(3))
        .map_err(|e| format!("proxy {} unreachable: {e}", s.proxy))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    write_sealed(&mut conn, &Body::Mfr(mfr.clone()), &key)
        .map_err(|e| format!("proxy {}: {e}", s.proxy))?;
    let reply =
        read_sealed(&mut conn).map_err(|e| format!("proxy {} did not answer: {e}", s.proxy))?;
    if !reply.verify(&proxy_key) {
        return Err("the answer is not signed by the proxy's key (check --proxy-key)".into());
    }
    let Body::MfrReply(r) = reply.body else {
        return Err("the proxy answered with something other than an MFR reply".into());
    };
    if r.nonce != mfr.nonce {
        return Err("the proxy's answer is for another request".into());
    }
    match r.outcome {
        Outcome::Refused { reason, detail } => {
            println!("mfr refused: {} ({detail})", reason.name());
            return Ok(ExitCode::from(2));
        }
        Outcome::Accepted {
            target_addr,
            worker,
            flow,
        } => println!(
            "mfr accepted: migration {} of {client}-{server} to {to} ({target_addr}), worker {worker} flow {flow}, {:.1} ms (sent at {sent_ms} ms since the epoch)",
            r.migration,
            t0.elapsed().as_secs_f64() * 1000.0
        ),
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    loop {
        let m = read_sealed(&mut conn).map_err(|e| format!("status from the proxy: {e}"))?;
        if !m.verify(&proxy_key) {
            return Err("a status not signed by the proxy's key".into());
        }
        let Body::Status(st) = m.body else { continue };
        println!(
            "{:>8.1} ms  {:<10} {}",
            st.at_ms.saturating_sub(sent_ms) as f64,
            st.phase,
            st.detail
        );
        let _ = std::io::stdout().flush();
        if st.last {
            return Ok(if st.phase == "resumed" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
}
