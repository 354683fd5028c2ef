//! The proxy's side of the agent protocol ([`tsmp_proto::msg`]): MFRs in, MTRs out, migration
//! status back to the requesting agent.
//!
//! The main lcore (the slow path) accepts control connections on `[control] agents` (an
//! appliance address, reached through the exception path) and serves each on a thread of its
//! own, so that naming-server lookups and the MTR's connection never stall the loop. A thread
//! never touches a worker's tables: the migration goes to the owning worker as a command
//! ([`Workers::migrate`]), and the worker's events come back through the loop
//! ([`AgentPlane::on_event`]).
//!
//! An MFR is accepted only when all of these hold, checked in this order, each failure
//! answered with its [`Reason`] and counted, and nothing changed:
//! a well-formed frame of version 1; an MFR; valid names; a timestamp within 30 s; the
//! sending device registered with the naming server; the signature made with that device's
//! published key; the connection coming from the device's registered address; the flow named
//! by the device's own address; a nonce not seen before; a target device of the same user,
//! registered, not the sender (these are [`tsmp_proto::admission::check_mfr`], a pure function
//! with a unit test per refusal); and, at the owning worker, a flow of that tuple whose migration
//! counter is the one in the MFR. The worker then reserves a migration port that accepts a
//! SYN only from the target's registered address, once, until the engine's deadline.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde::Serialize;

use crate::control::{describe_event, tuple, MigrateRequest, Migrating, Workers};
use tsmp_core::migrate::engine::Event;
use tsmp_core::refusal::Refusal;
use tsmp_proto::admission::{check_mfr, lookup};
use tsmp_proto::msg::{
    self, now_ms, read_sealed, Body, FrameError, Freshness, Mfr, MfrReply, Mtr, Outcome, Reason,
    Status,
};
use tsmp_proto::names::{DeviceId, DeviceRecord, Resolver};

/// Control-plane counters.
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// Control connections accepted.
    pub connections: AtomicU64,
    /// MFRs accepted.
    pub mfr_accepted: AtomicU64,
    /// MFRs refused, by [`Reason::index`].
    pub refused: [AtomicU64; Reason::ALL.len()],
    /// MTRs the target agent accepted.
    pub mtr_sent: AtomicU64,
    /// MTRs that could not be delivered or were refused.
    pub mtr_failed: AtomicU64,
    /// Connections that closed or timed out before a whole request.
    pub incomplete: AtomicU64,
}

/// A snapshot of [`AgentCounters`] for the stats JSON.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AgentSnapshot {
    /// Control connections accepted.
    pub connections: u64,
    /// MFRs accepted.
    pub mfr_accepted: u64,
    /// MFRs refused, by reason (only reasons that occurred).
    pub mfr_refused: std::collections::BTreeMap<String, u64>,
    /// MTRs accepted by their target.
    pub mtr_sent: u64,
    /// MTRs not delivered or refused.
    pub mtr_failed: u64,
    /// Connections without a whole request.
    pub incomplete: u64,
}

impl AgentCounters {
    /// Counts a refusal.
    pub fn refuse(&self, r: Reason) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> AgentSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AgentSnapshot {
            connections: g(&self.connections),
            mfr_accepted: g(&self.mfr_accepted),
            mfr_refused: Reason::ALL
                .iter()
                .filter(|r| g(&self.refused[r.index()]) > 0)
                .map(|r| (r.name().to_owned(), g(&self.refused[r.index()])))
                .collect(),
            mtr_sent: g(&self.mtr_sent),
            mtr_failed: g(&self.mtr_failed),
            incomplete: g(&self.incomplete),
        }
    }
}

/// What a connection's thread needs.
#[derive(Debug)]
struct Shared {
    key: SigningKey,
    resolver: Resolver,
    workers: Workers,
    fresh: Mutex<Freshness>,
    counters: Arc<AgentCounters>,
    active: AtomicUsize,
    max_active: usize,
    next_id: AtomicU64,
    deadline: Duration,
    netns: Option<String>,
    subscribe: Mutex<Sender<Subscription>>,
}

/// A connection's wish to hear the events of one flow from `since` on.
#[derive(Debug)]
struct Subscription {
    worker: usize,
    flow: u32,
    since: Instant,
    tx: Sender<(Event, u64)>,
}

/// The agent control plane of the slow path.
#[derive(Debug)]
pub struct AgentPlane {
    listener: TcpListener,
    shared: Arc<Shared>,
    subscriptions: Receiver<Subscription>,
    subs: Vec<Subscription>,
    history: VecDeque<(Instant, u64, usize, u32, Event)>,
}

/// Settings of the agent control plane.
#[derive(Debug)]
pub struct AgentSettings {
    /// Where agents connect.
    pub listen: SocketAddrV4,
    /// The naming server.
    pub names: SocketAddr,
    /// The zone.
    pub zone: hickory_proto::rr::Name,
    /// The proxy's key.
    pub key: SigningKey,
    /// The network namespace of the exception path's kernel side.
    pub netns: Option<String>,
    /// Connections served at once.
    pub max_connections: usize,
    /// The migration deadline (request to the target's SYN).
    pub deadline: Duration,
}

/// Runs `f` on a thread inside network namespace `ns` (the root namespace when `None`):
/// sockets created there stay in that namespace.
pub fn in_netns<R: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    let ns = ns.map(str::to_owned);
    std::thread::spawn(move || {
        enter_netns(ns.as_deref())?;
        Ok(f())
    })
    .join()
    .map_err(|_| "namespace helper thread failed".to_owned())?
}

/// Moves the calling thread into network namespace `ns` (`/run/netns/<ns>`).
pub fn enter_netns(ns: Option<&str>) -> Result<(), String> {
    let Some(ns) = ns else { return Ok(()) };
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path)
        .map_err(|e| format!("network namespace {ns}: cannot open {path}: {e}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("cannot enter network namespace {ns}: {e}"))
}

impl AgentPlane {
    /// An operator's migration (the control socket's `migrate` with `to`): the flow of
    /// `client` -> `vip` moves to device `target` (`pc.bob`), as for an accepted MFR but on the
    /// operator's authority: the target's record from the naming server, the owning worker's
    /// freeze with a migration port only the target's address may use, the signed MTR. Progress
    /// is in the proxy's log and `tsmp-cli migrations`.
    pub fn operator_migrate(
        &self,
        client: SocketAddrV4,
        vip: SocketAddrV4,
        target: &str,
    ) -> Result<serde_json::Value, String> {
        let sh = self.shared.clone();
        let target = target.to_owned();
        let ns = sh.netns.clone();
        in_netns(ns.as_deref(), move || {
            let Some((device, user)) = target.split_once('.') else {
                return Err(format!(
                    "name the device with its user: {target}.<user> (as registered)"
                ));
            };
            let id = DeviceId::new(device, user).map_err(|e| e.to_string())?;
            let rec = lookup(&sh.resolver, &id, Reason::UnknownTarget).map_err(|r| r.detail)?;
            let m = sh
                .workers
                .migrate(MigrateRequest {
                    client: tuple(client),
                    vip: tuple(vip),
                    offset: None,
                    counter: None,
                    expect: Some(u32::from(rec.addr)),
                })
                .map_err(|r| r.detail)?;
            let n = sh.next_id.fetch_add(1, Ordering::Relaxed);
            println!(
                "operator migration={n} {client}-{vip} -> {id} ({}) worker={} flow={} port={}",
                rec.addr, m.worker, m.flow, m.migration_port
            );
            let mtr_result = match send_mtr_for(&sh, n, &id, &rec, "operator", *vip.ip(), &m) {
                Ok(_) => "sent".to_owned(),
                Err(e) => format!("failed: {e}; the flow returns to its device at the deadline"),
            };
            Ok(serde_json::json!({
                "migration": n, "worker": m.worker, "flow": m.flow, "device": m.device,
                "migration_port": m.migration_port, "target": id.to_string(),
                "target_addr": rec.addr.to_string(), "mtr": mtr_result,
            }))
        })?
    }

    /// The addresses of `user`'s registered devices, from the naming server (the device list
    /// each registration adds to, then each device's address record).
    pub fn user_addresses(&self, user: &str) -> Result<Vec<Ipv4Addr>, String> {
        let sh = self.shared.clone();
        let user = user.to_owned();
        let ns = sh.netns.clone();
        in_netns(ns.as_deref(), move || {
            let devices = sh.resolver.devices_of(&user).map_err(|e| e.to_string())?;
            Ok(devices
                .iter()
                .filter_map(|d| sh.resolver.device(d).ok().map(|r| r.addr))
                .collect())
        })?
    }

    /// Binds the agents' address (inside the exception path's namespace).
    pub fn bind(
        s: AgentSettings,
        workers: Workers,
        counters: Arc<AgentCounters>,
    ) -> Result<Self, String> {
        let listen = s.listen;
        let listener =
            in_netns(s.netns.as_deref(), move || TcpListener::bind(listen))?.map_err(|e| {
                format!(
                    "cannot listen for agents on {listen}: {e} (the address must be on the \
                     exception path's interface)"
                )
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("agents socket: {e}"))?;
        let (tx, rx) = channel();
        Ok(AgentPlane {
            listener,
            shared: Arc::new(Shared {
                key: s.key,
                resolver: Resolver::new(s.names, s.zone),
                workers,
                fresh: Mutex::new(Freshness::new(65536)),
                counters,
                active: AtomicUsize::new(0),
                max_active: s.max_connections,
                next_id: AtomicU64::new(1),
                deadline: s.deadline,
                netns: s.netns,
                subscribe: Mutex::new(tx),
            }),
            subscriptions: rx,
            subs: Vec::new(),
            history: VecDeque::new(),
        })
    }

    /// Accepts waiting connections (each served on its own thread) and registers new
    /// subscriptions; never blocks.
    pub fn poll(&mut self) {
        while let Ok((stream, peer)) = self.listener.accept() {
            let sh = self.shared.clone();
            sh.counters.connections.fetch_add(1, Ordering::Relaxed);
            if sh.active.fetch_add(1, Ordering::AcqRel) >= sh.max_active {
                sh.active.fetch_sub(1, Ordering::AcqRel);
                sh.counters.refuse(Reason::Busy);
                let _ = stream.set_nonblocking(false);
                let _ = reply(
                    &sh,
                    &mut &stream,
                    0,
                    refused(Reason::Busy, "too many control connections; retry"),
                    "",
                );
                continue;
            }
            let spawned = std::thread::Builder::new()
                .name("tsmp-mfr".into())
                .spawn(move || {
                    let _ = enter_netns(sh.netns.as_deref());
                    serve(&sh, stream, peer);
                    sh.active.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                self.shared.active.fetch_sub(1, Ordering::AcqRel);
            }
        }
        while let Ok(s) = self.subscriptions.try_recv() {
            // Events that came before the subscription (the worker is fast) are replayed.
            for &(t, at, w, f, ev) in &self.history {
                if w == s.worker && f == s.flow && t >= s.since {
                    let _ = s.tx.send((ev, at));
                }
            }
            self.subs.push(s);
        }
    }

    /// A worker's migration event.
    pub fn on_event(&mut self, worker: usize, flow: u32, ev: Event) {
        let now = Instant::now();
        let at = now_ms();
        self.history.push_back((now, at, worker, flow, ev));
        while self.history.len() > 4096
            || self
                .history
                .front()
                .is_some_and(|h| now.duration_since(h.0) > Duration::from_secs(60))
        {
            self.history.pop_front();
        }
        self.subs
            .retain(|s| !(s.worker == worker && s.flow == flow) || s.tx.send((ev, at)).is_ok());
    }
}

fn refused(reason: Reason, detail: impl Into<String>) -> Outcome {
    Outcome::Refused {
        reason,
        detail: detail.into(),
    }
}

fn reply(
    sh: &Shared,
    w: &mut impl Write,
    migration: u64,
    outcome: Outcome,
    nonce: &str,
) -> std::io::Result<()> {
    let body = Body::MfrReply(MfrReply {
        migration,
        outcome,
        nonce: nonce.to_owned(),
    });
    msg::write_sealed(w, &body, &sh.key)
}

fn serve(sh: &Shared, mut stream: TcpStream, peer: SocketAddr) {
    let t0 = Instant::now();
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(3)));
    let sealed = match read_sealed(&mut stream) {
        Ok(s) => s,
        Err(FrameError::Io(_)) => {
            sh.counters.incomplete.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(FrameError::Refused(r)) => {
            sh.counters.refuse(r);
            let _ = reply(sh, &mut stream, 0, refused(r, explain(r)), "");
            return;
        }
    };
    let Body::Mfr(mfr) = &sealed.body else {
        sh.counters.refuse(Reason::Unexpected);
        let _ = reply(
            sh,
            &mut stream,
            0,
            refused(Reason::Unexpected, "expected an MFR"),
            "",
        );
        return;
    };
    let SocketAddr::V4(peer) = peer else {
        sh.counters.refuse(Reason::NotFromDevice);
        return;
    };
    let t_read = t0.elapsed();
    match check_mfr(
        &sealed,
        mfr,
        *peer.ip(),
        now_ms(),
        &sh.resolver,
        &mut &sh.fresh,
    ) {
        Err(Refusal { reason: r, detail }) => {
            sh.counters.refuse(r);
            eprintln!(
                "mfr from {peer} ({}.{}) refused: {} ({detail})",
                mfr.device,
                mfr.user,
                r.name()
            );
            let _ = reply(sh, &mut stream, 0, refused(r, detail), &mfr.nonce);
        }
        Ok(a) => run(sh, stream, mfr, &a.target, &a.target_record, (t0, t_read)),
    }
}

fn explain(r: Reason) -> &'static str {
    match r {
        Reason::Oversized => "frame larger than 4096 bytes",
        Reason::Version => "this proxy speaks version 1",
        Reason::Garbage => "not a TSMP control frame (4-byte length, JSON envelope)",
        Reason::BadSignature => "signature missing or malformed",
        _ => "refused",
    }
}

fn status(
    sh: &Shared,
    stream: &mut TcpStream,
    migration: u64,
    phase: &str,
    detail: String,
    last: bool,
    at_ms: u64,
) -> bool {
    let body = Body::Status(Status {
        migration,
        phase: phase.to_owned(),
        detail,
        last,
        at_ms,
    });
    msg::write_sealed(stream, &body, &sh.key).is_ok()
}

/// An MFR that passed every check: start the migration, send the MTR, report progress.
fn run(
    sh: &Shared,
    mut stream: TcpStream,
    mfr: &Mfr,
    target: &DeviceId,
    rec: &DeviceRecord,
    (t0, t_read): (Instant, Duration),
) {
    let t_checked = t0.elapsed();
    let since = Instant::now();
    let m: Migrating = match sh.workers.migrate(MigrateRequest {
        client: tuple(mfr.client),
        vip: tuple(mfr.server),
        offset: None,
        counter: Some(mfr.counter),
        expect: Some(u32::from(rec.addr)),
    }) {
        Ok(m) => m,
        Err(r) => {
            sh.counters.refuse(r.reason);
            eprintln!(
                "mfr {}-{} refused by the worker: {}",
                mfr.client, mfr.server, r.detail
            );
            let _ = reply(sh, &mut stream, 0, refused(r.reason, r.detail), &mfr.nonce);
            return;
        }
    };
    let (tx, rx) = channel();
    if let Ok(s) = sh.subscribe.lock() {
        let _ = s.send(Subscription {
            worker: m.worker,
            flow: m.flow,
            since,
            tx,
        });
    }
    sh.counters.mfr_accepted.fetch_add(1, Ordering::Relaxed);
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    println!(
        "mfr migration={id} {}.{} {}-{} -> {target} ({}) worker={} flow={} port={} read={:.1}ms checked={:.1}ms frozen={:.1}ms",
        mfr.device,
        mfr.user,
        mfr.client,
        mfr.server,
        rec.addr,
        m.worker,
        m.flow,
        m.migration_port,
        t_read.as_secs_f64() * 1000.0,
        t_checked.as_secs_f64() * 1000.0,
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let _ = reply(
        sh,
        &mut stream,
        id,
        Outcome::Accepted {
            target_addr: rec.addr,
            worker: m.worker,
            flow: m.flow,
        },
        &mfr.nonce,
    );
    let t_mtr = Instant::now();
    match send_mtr_for(sh, id, target, rec, &mfr.device, *mfr.server.ip(), &m) {
        Ok((agent, connect)) => status(
            sh,
            &mut stream,
            id,
            "mtr_sent",
            format!(
                "to {target} at {agent} in {:.1} ms; it connects to {connect}",
                t_mtr.elapsed().as_secs_f64() * 1000.0,
            ),
            false,
            now_ms(),
        ),
        Err(e) => status(
            sh,
            &mut stream,
            id,
            "mtr_failed",
            format!("{e}; the flow returns to {} at the deadline", mfr.device),
            false,
            now_ms(),
        ),
    };
    // Progress until the migration ends (the engine always ends it: resumed, cancelled at
    // the deadline, or reset).
    let give_up = Instant::now() + sh.deadline * 3 + Duration::from_secs(10);
    while let Some(left) = give_up.checked_duration_since(Instant::now()) {
        let Ok((ev, at)) = rx.recv_timeout(left) else {
            break;
        };
        let (phase, last) = match ev {
            Event::Paused { .. } => ("paused", false),
            Event::Connected { .. } => ("connected", false),
            Event::Replaying { .. } => ("replaying", false),
            Event::Resumed { .. } => ("resumed", true),
            Event::Cancelled { .. } => ("cancelled", true),
            Event::Reset { .. } => ("reset", true),
        };
        let detail = format!(
            "{} (after {:.1} ms)",
            describe_event(&ev),
            since.elapsed().as_secs_f64() * 1000.0
        );
        if !status(sh, &mut stream, id, phase, detail, last, at) || last {
            break;
        }
    }
}

/// Sends `target`'s agent the signed MTR of migration `id` (started by the worker as `m`, on
/// behalf of `from`; the target connects to `vip`'s migration port), counts and logs it.
/// The agent's address and where the target connects, or what failed.
fn send_mtr_for(
    sh: &Shared,
    id: u64,
    target: &DeviceId,
    rec: &DeviceRecord,
    from: &str,
    vip: Ipv4Addr,
    m: &Migrating,
) -> Result<(SocketAddrV4, SocketAddrV4), String> {
    let mtr = Mtr {
        migration: id,
        user: target.user.clone(),
        device: target.device.clone(),
        from: from.to_owned(),
        service: m.service,
        connect: SocketAddrV4::new(vip, m.migration_port),
        counter: m.device,
        deadline_ms: now_ms() + u64::try_from(sh.deadline.as_millis()).unwrap_or(u64::MAX),
        ts_ms: now_ms(),
        nonce: msg::nonce(),
    };
    let agent = SocketAddrV4::new(rec.addr, rec.agent_port);
    match send_mtr(sh, &mtr, agent, &rec.key) {
        Ok(()) => {
            sh.counters.mtr_sent.fetch_add(1, Ordering::Relaxed);
            println!("mtr migration={id} sent to {target} at {agent}");
            Ok((agent, mtr.connect))
        }
        Err(e) => {
            sh.counters.mtr_failed.fetch_add(1, Ordering::Relaxed);
            println!("mtr migration={id} to {target} at {agent} failed: {e}");
            Err(format!("{target} at {agent}: {e}"))
        }
    }
}

fn send_mtr(sh: &Shared, mtr: &Mtr, agent: SocketAddrV4, key: &[u8; 32]) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(agent), Duration::from_secs(2))
        .map_err(|e| format!("agent unreachable: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
    msg::write_sealed(&mut s, &Body::Mtr(mtr.clone()), &sh.key).map_err(|e| e.to_string())?;
    let r = read_sealed(&mut s).map_err(|e| format!("no answer: {e}"))?;
    if !r.verify(key) {
        return Err("answer not signed by the target device".into());
    }
    match r.body {
        Body::MtrReply(a) if a.nonce == mtr.nonce && a.migration == mtr.migration => {
            if a.accepted {
                Ok(())
            } else {
                Err(format!("refused: {}", a.detail))
            }
        }
        _ => Err("unexpected answer".into()),
    }
}
