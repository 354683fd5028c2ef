//! The slow path's control socket and its channels to the workers.
//!
//! The main lcore serves a Unix socket (`[control] cli_socket`): one JSON request per line, one
//! JSON reply per line. It never touches a worker's tables: a request becomes a [`Command`] on
//! the owning worker's bounded lock-free ring, the worker answers on the command's own reply
//! channel, and migration progress comes back as events on a shared ring.
//!
//! Requests (version 1), each one JSON line; the answer is `{"ok": ...}` or `{"error": "..."}`
//! with what to do:
//!
//! ```text
//! {"migrate": {"client": "198.18.0.1:40000", "vip": "198.18.0.10:80", "offset": 123456}}
//!   -> {"ok": {"worker": 0, "flow": 3, "device": 1, "migration_port": 40001, "service": "..."}}
//! {"flows": {"filter": {"state": "ESTABLISHED", "client": "198.18.0.1:0", "server": "...",
//!            "device": 1, "migrating": true}, "user": "bob",
//!            "sort": "id|age|client|server|cache|state",
//!            "offset": 0, "limit": 100}}
//!   -> {"ok": {"total": 1, "offset": 0, "items": [FlowInfo, ...]}}
//! {"flow": {"id": "0:3"}}  or  {"flow": {"client": "198.18.0.1:40000", "vip": "198.18.0.10:80"}}
//!   -> {"ok": {"flow": FlowInfo, "engine": ["line", ...], "migrations": [MigrationRecord, ...]}}
//! {"stats": {}}       -> {"ok": the counters, as --stats-json writes them}
//! {"migrations": {}}  -> {"ok": {"active": [...], "recent": [...], "pause_ms": {"count", "p50",
//!                         "p90", "p99", "max"}}}
//! ```
//!
//! `offset` (optional) is the application's consumed byte offset; without it the flow resumes
//! at the old device's last acknowledged byte. The target device then connects to the VIP on
//! `migration_port`. The socket is the operator's, protected by its file permissions.
//!
//! Invariants: the slow path never reads a worker's table; a listing is answered by each worker
//! in pages of at most [`SCAN_SLOTS`] slots between its bursts, so listing a million flows
//! costs forwarding a series of short pauses, never a long one; the migration log is bounded
//! (`[control] migration_history`).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};

use tsmp_core::migrate::engine::Event;
use tsmp_core::proxy::ProxyCore;
use tsmp_proto::msg::Reason;

/// The largest request accepted, bytes.
pub const MAX_REQUEST: usize = 4096;

pub use tsmp_core::dataplane::view::{
    flow_info, flow_page, FlowDetail, FlowFilter, FlowInfo, FlowPage, LegInfo, Migrating,
    SCAN_SLOTS, STATES,
};
pub use tsmp_core::refusal::Refusal;

/// A command for a worker.
#[derive(Debug)]
pub enum Command {
    /// Start migrating the flow of `client` to `vip`.
    Migrate {
        /// The client's address and port (the device that holds the flow).
        client: (u32, u16),
        /// The service address and port it talks to.
        vip: (u32, u16),
        /// The application's consumed byte offset, if given.
        offset: Option<u64>,
        /// The flow's migration counter the requester knows (agents); refused when the flow
        /// is held by another device generation.
        counter: Option<u32>,
        /// The only source address the migration port accepts (the target device's).
        expect: Option<u32>,
        /// Where the worker answers.
        reply: SyncSender<Result<Migrating, Refusal>>,
    },
    /// A page of the worker's flows matching `filter`, scanning at most [`SCAN_SLOTS`] slots
    /// from `cursor`; the answer carries the next cursor (`None`: the table is done).
    Flows {
        /// Which flows.
        filter: FlowFilter,
        /// The first slot to look at.
        cursor: u32,
        /// Where the worker answers.
        reply: SyncSender<FlowPage>,
    },
    /// A copy of the worker's histogram of cycles per burst.
    Latency {
        /// Where the worker answers.
        reply: SyncSender<hdrhistogram::Histogram<u64>>,
    },
    /// One flow in detail.
    Flow {
        /// Its slot.
        slot: u32,
        /// Where the worker answers (`None`: no live flow there).
        reply: SyncSender<Option<FlowDetail>>,
    },
}

/// Command rings, by worker.
pub type CommandRings = Vec<Arc<ArrayQueue<Command>>>;

/// Migration progress from the workers: (worker, flow slot, event).
pub type EventRing = Arc<ArrayQueue<(usize, u32, Event)>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Request {
    Migrate {
        client: SocketAddrV4,
        vip: SocketAddrV4,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        to: Option<String>,
    },
    Flows {
        #[serde(default)]
        filter: FlowFilter,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        sort: Sort,
        #[serde(default)]
        offset: usize,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    Flow {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        client: Option<SocketAddrV4>,
        #[serde(default)]
        vip: Option<SocketAddrV4>,
    },
    Stats {},
    Migrations {},
    Latency {},
}

fn default_limit() -> usize {
    100
}

pub use tsmp_proto::control::SORTS;

/// The order of a `flows` listing (one of [`SORTS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Sort {
    /// Worker, then slot.
    #[default]
    Id,
    /// Oldest first.
    Age,
    /// By the device's address and port.
    Client,
    /// By the backend's address and port.
    Server,
    /// Largest caches first.
    Cache,
    /// By tracking state.
    State,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

/// An address and port as the workers' tables key them.
pub fn tuple(a: SocketAddrV4) -> (u32, u16) {
    (u32::from(*a.ip()), a.port())
}

/// A migration request for the owning worker.
#[derive(Debug, Clone, Copy)]
pub struct MigrateRequest {
    /// The device's address and port.
    pub client: (u32, u16),
    /// The service address (or migration port) the device's connection talks to.
    pub vip: (u32, u16),
    /// The application's consumed byte offset.
    pub offset: Option<u64>,
    /// The flow's migration counter as the requester knows it.
    pub counter: Option<u32>,
    /// The only source address the migration port accepts.
    pub expect: Option<u32>,
}

/// The slow path's handle on the workers: routes a request to the owning worker's command
/// ring and waits for its answer.
#[derive(Debug, Clone)]
pub struct Workers {
    rings: CommandRings,
    hasher: tsmp_core::proxy::FlowHasher,
    migration_ports: (u16, u16),
}

impl Workers {
    /// The workers behind `rings` (hashing flows with `hasher`), migration ports `lo..=hi`.
    pub fn new(
        rings: CommandRings,
        hasher: tsmp_core::proxy::FlowHasher,
        migration_ports: (u16, u16),
    ) -> Self {
        Workers {
            rings,
            hasher,
            migration_ports,
        }
    }

    /// Sends worker `w` the command `make` builds around a reply channel, and waits for the
    /// answer.
    fn ask<T>(&self, w: usize, make: impl FnOnce(SyncSender<T>) -> Command) -> Result<T, String> {
        let ring = self.rings.get(w).ok_or_else(|| format!("no worker {w}"))?;
        let (tx, rx) = sync_channel(1);
        if ring.push(make(tx)).is_err() {
            return Err(format!("worker {w} is busy; retry"));
        }
        rx.recv_timeout(Duration::from_secs(2))
            .map_err(|_| format!("worker {w} did not answer"))
    }

    /// The flows `filter` selects, from every worker, page by page (each page bounded work
    /// for the worker, between its bursts); paging stops once `max` are found.
    pub fn flows(&self, filter: FlowFilter, max: usize) -> Result<Vec<FlowInfo>, String> {
        let mut all = Vec::new();
        for w in 0..self.rings.len() {
            let mut cursor = Some(0);
            while let Some(c) = cursor.filter(|_| all.len() < max) {
                let page = self.ask(w, |reply| Command::Flows {
                    filter,
                    cursor: c,
                    reply,
                })?;
                all.extend(page.flows.into_iter().map(|mut f| {
                    f.id = format!("{}:{}", f.worker, f.slot);
                    f
                }));
                cursor = page.next;
            }
        }
        all.truncate(max);
        Ok(all)
    }

    /// Every worker's cycles-per-burst percentiles ([`burst_stats`]), from a copy of its
    /// histogram.
    pub fn latency(&self, tsc_hz: u64) -> Result<Vec<serde_json::Value>, String> {
        (0..self.rings.len())
            .map(|w| {
                self.ask(w, |reply| Command::Latency { reply })
                    .map(|h| burst_stats(w, &h, tsc_hz))
            })
            .collect()
    }

    /// Flow `slot` of worker `w`, in detail.
    pub fn flow(&self, w: usize, slot: u32) -> Result<Option<FlowDetail>, String> {
        let mut d = self.ask(w, |reply| Command::Flow { slot, reply })?;
        if let Some(d) = d.as_mut() {
            d.flow.id = format!("{w}:{slot}");
        }
        Ok(d)
    }

    /// Asks the owning worker to start a migration.
    pub fn migrate(&self, r: MigrateRequest) -> Result<Migrating, Refusal> {
        // A flow that migrated before talks to a migration port, owned by the worker that
        // reserved it; the others hash their tuple.
        let (lo, hi) = self.migration_ports;
        let w = if (lo..=hi).contains(&r.vip.1) {
            usize::from(r.vip.1) % self.rings.len().max(1)
        } else {
            ProxyCore::owner_of(&self.hasher, self.rings.len(), r.client, r.vip)
        };
        self.ask(w, |reply| Command::Migrate {
            client: r.client,
            vip: r.vip,
            offset: r.offset,
            counter: r.counter,
            expect: r.expect,
            reply,
        })
        .map_err(|e| Refusal::new(Reason::Busy, e))?
    }
}

/// The control socket.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    workers: Workers,
}

/// Why the control socket could not be opened.
#[derive(Debug)]
pub struct BindError(pub String);

impl ControlServer {
    /// Opens the socket at `path` (a stale file from a stopped instance is replaced; a live
    /// instance is an error), owner-only permissions.
    pub fn bind(path: &Path, workers: Workers) -> Result<Self, BindError> {
        let shown = path.display();
        if UnixStream::connect(path).is_ok() {
            return Err(BindError(format!(
                "control socket {shown} is served by another running tsmp-proxy; stop it or \
                 set [control] cli_socket to another path"
            )));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| BindError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| BindError(format!("cannot bind control socket {shown}: {e}")))?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        listener
            .set_nonblocking(true)
            .map_err(|e| BindError(format!("control socket {shown}: {e}")))?;
        Ok(ControlServer {
            listener,
            path: path.to_owned(),
            workers,
        })
    }

    /// Serves the connections waiting now (each: one request, one reply), without blocking
    /// when there are none. `live` answers what the slow path itself knows.
    pub fn poll(&self, live: &Live<'_>) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = self.serve(stream, live);
        }
    }

    fn serve(&self, mut stream: UnixStream, live: &Live<'_>) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut line = String::new();
        BufReader::new((&stream).take(MAX_REQUEST as u64)).read_line(&mut line)?;
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Reply::Error(format!(
                "bad request ({e}); expected one JSON line such as {{\"flows\": {{}}}}, \
                 {{\"stats\": {{}}}} or \
                 {{\"migrate\": {{\"client\": \"198.18.0.1:40000\", \"vip\": \"198.18.0.10:80\"}}}}"
            )),
            Ok(req) => self.dispatch(req, live),
        };
        let mut out = serde_json::to_string(&reply).unwrap_or_default();
        out.push('\n');
        stream.write_all(out.as_bytes())
    }

    fn dispatch(&self, req: Request, live: &Live<'_>) -> Reply {
        let json = |v: Result<serde_json::Value, String>| match v {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(e),
        };
        match req {
            Request::Migrate {
                client,
                vip,
                offset,
                to: Some(to),
            } => match (live.operator, offset) {
                (None, _) => Reply::Error(format!(
                    "cannot migrate to {to}: this proxy has no agent control ([control] agents \
                     and names); migrate without `to` and let the new device connect to the port"
                )),
                (Some(_), Some(_)) => Reply::Error(
                    "`offset` and `to` do not go together: the new device's agent resumes at \
                     the old device's last acknowledged byte"
                        .into(),
                ),
                (Some(op), None) => json(op(client, vip, &to)),
            },
            Request::Migrate {
                client,
                vip,
                offset,
                to: None,
            } => match self.workers.migrate(MigrateRequest {
                client: tuple(client),
                vip: tuple(vip),
                offset,
                counter: None,
                expect: None,
            }) {
                Ok(m) => json(serde_json::to_value(m).map_err(|e| e.to_string())),
                Err(r) => Reply::Error(r.detail),
            },
            Request::Flows {
                filter,
                user,
                sort,
                offset,
                limit,
            } => json(self.flows(filter, user.as_deref(), live, (sort, offset, limit))),
            Request::Flow { id, client, vip } => json(self.flow(id, client, vip, live)),
            Request::Stats {} => Reply::Ok((live.stats)()),
            Request::Latency {} => json(self.latency(live)),
            Request::Migrations {} => {
                json(serde_json::to_value(live.log.report()).map_err(|e| e.to_string()))
            }
        }
    }

    fn latency(&self, live: &Live<'_>) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!({
            "tsc_hz": live.tsc_hz,
            "burst_cycles": self.workers.latency(live.tsc_hz)?,
            "migration_pause_ms": live.log.pause_stats(),
        }))
    }

    fn flows(
        &self,
        filter: FlowFilter,
        user: Option<&str>,
        live: &Live<'_>,
        (sort, offset, limit): (Sort, usize, usize),
    ) -> Result<serde_json::Value, String> {
        let devices = match user {
            None => None,
            Some(u) => Some(live.user_addresses.ok_or_else(|| {
                format!(
                    "cannot select user {u}'s flows: this proxy has no naming server \
                     ([control] names and agents)"
                )
            })?(u)?),
        };
        let mut all = self.workers.flows(filter, usize::MAX)?;
        if let Some(addrs) = devices {
            all.retain(|f| addrs.contains(f.client.ip()));
        }
        match sort {
            Sort::Id => {}
            Sort::Age => all.sort_by_key(|f| std::cmp::Reverse(f.age_ms)),
            Sort::Client => all.sort_by_key(|f| f.client),
            Sort::Server => all.sort_by_key(|f| f.backend),
            Sort::Cache => all.sort_by_key(|f| std::cmp::Reverse(f.cache_bytes)),
            Sort::State => all.sort_by_key(|f| f.state),
        }
        let total = all.len();
        let items: Vec<FlowInfo> = all.into_iter().skip(offset).take(limit).collect();
        Ok(serde_json::json!({ "total": total, "offset": offset, "items": items }))
    }

    fn flow(
        &self,
        id: Option<String>,
        client: Option<SocketAddrV4>,
        vip: Option<SocketAddrV4>,
        live: &Live<'_>,
    ) -> Result<serde_json::Value, String> {
        let (w, slot) = match (id, client) {
            (Some(id), _) => parse_id(&id)?,
            (None, Some(c)) => {
                let hits: Vec<FlowInfo> = self
                    .workers
                    .flows(
                        FlowFilter {
                            client: Some(c),
                            ..FlowFilter::default()
                        },
                        usize::MAX,
                    )?
                    .into_iter()
                    .filter(|f| vip.is_none_or(|v| v == f.vip))
                    .collect();
                match hits.as_slice() {
                    [f] => (f.worker, f.slot),
                    [] => return Err(format!("no flow of {c}")),
                    _ => {
                        return Err(format!(
                            "{} flows of {c}; name the service too (`vip`) or use an id: {}",
                            hits.len(),
                            hits.iter()
                                .map(|f| f.id.as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                        ))
                    }
                }
            }
            (None, None) => return Err("name the flow by `id` (worker:slot) or `client`".into()),
        };
        let d = self
            .workers
            .flow(w, slot)?
            .ok_or_else(|| format!("no flow {w}:{slot} (closed, or never existed)"))?;
        let mut v = serde_json::to_value(d).map_err(|e| e.to_string())?;
        v["migrations"] = serde_json::to_value(live.log.of(w, slot)).map_err(|e| e.to_string())?;
        Ok(v)
    }
}

/// One worker's cycles-per-burst percentiles (and in microseconds, given the TSC rate).
fn burst_stats(worker: usize, h: &hdrhistogram::Histogram<u64>, tsc_hz: u64) -> serde_json::Value {
    let us = |c: u64| {
        if tsc_hz == 0 {
            0.0
        } else {
            c as f64 * 1e6 / tsc_hz as f64
        }
    };
    let q = |p: f64| h.value_at_quantile(p);
    serde_json::json!({
        "worker": worker,
        "bursts": h.len(),
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max(),
        "p50_us": us(q(0.5)), "p99_us": us(q(0.99)), "max_us": us(h.max()),
    })
}

/// `worker:slot`.
fn parse_id(id: &str) -> Result<(usize, u32), String> {
    id.split_once(':')
        .and_then(|(w, s)| Some((w.parse().ok()?, s.parse().ok()?)))
        .ok_or_else(|| format!("{id:?} is not a flow id (worker:slot, as `flows` lists them)"))
}

/// What the slow path itself answers for the control socket.
#[allow(missing_debug_implementations)] // a closure
pub struct Live<'a> {
    /// The counters, as `--stats-json` writes them at exit.
    pub stats: &'a dyn Fn() -> serde_json::Value,
    /// TSC ticks per second (the workers' cycle counts).
    pub tsc_hz: u64,
    /// The migrations the slow path saw.
    pub log: &'a MigrationLog,
    /// An operator's migration to a named device (with agent control).
    pub operator: Option<&'a OperatorMigrate<'a>>,
    /// The addresses of a user's devices (with a naming server).
    pub user_addresses: Option<&'a UserAddresses<'a>>,
}

/// `user` -> the addresses of the user's registered devices.
pub type UserAddresses<'a> = dyn Fn(&str) -> Result<Vec<Ipv4Addr>, String> + 'a;

/// `(client, vip, device.user)` -> the started migration, through the agent control plane.
pub type OperatorMigrate<'a> =
    dyn Fn(SocketAddrV4, SocketAddrV4, &str) -> Result<serde_json::Value, String> + 'a;

/// One migration as the slow path saw it.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationRecord {
    /// The owning worker.
    pub worker: usize,
    /// The flow's slot.
    pub flow: u32,
    /// When the slow path saw it start (the pause), ms since the epoch.
    pub started_ms: u64,
    /// Each step and when it happened, ms on the worker's clock.
    pub steps: Vec<(String, f64)>,
    /// Each step's duration from the previous one, ms.
    pub durations_ms: Vec<(String, f64)>,
    /// `resumed`, `cancelled` or `reset`, with the detail; `None` while in progress.
    pub outcome: Option<String>,
    /// How long the server was frozen (pause to the end), ms.
    pub pause_ms: Option<f64>,
    /// The first step on the worker's clock, us.
    #[serde(skip)]
    first_us: u64,
}

/// The migrations in progress and the recent ones (bounded), with a histogram of pauses.
#[derive(Debug)]
pub struct MigrationLog {
    active: std::collections::HashMap<(usize, u32), MigrationRecord>,
    recent: std::collections::VecDeque<MigrationRecord>,
    keep: usize,
    /// Pause durations, microseconds.
    pauses: hdrhistogram::Histogram<u64>,
}

/// `migrations`' answer.
#[derive(Debug, Serialize)]
pub struct MigrationReport {
    /// In progress.
    pub active: Vec<MigrationRecord>,
    /// Ended, newest last.
    pub recent: Vec<MigrationRecord>,
    /// Pause percentiles over every migration that ended since start, ms.
    pub pause_ms: PauseStats,
}

/// Pause percentiles, ms.
#[derive(Debug, Serialize)]
pub struct PauseStats {
    /// Migrations measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl MigrationLog {
    /// Keeps the last `keep` ended migrations.
    pub fn new(keep: usize) -> Self {
        MigrationLog {
            active: Default::default(),
            recent: Default::default(),
            keep,
            // 1 us .. 1 h, 3 significant digits.
            pauses: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| hdrhistogram::Histogram::new(3).expect("3 digits")),
        }
    }

    /// A worker's migration event, seen at `now_ms` (ms since the epoch).
    pub fn on_event(&mut self, worker: usize, flow: u32, ev: &Event, now_ms: u64) {
        let (name, at, end) = match *ev {
            Event::Paused { at, .. } => ("paused", at, false),
            Event::Connected { at, .. } => ("connected", at, false),
            Event::Replaying { at, .. } => ("replaying", at, false),
            Event::Resumed { at, .. } => ("resumed", at, true),
            Event::Cancelled { at, .. } => ("cancelled", at, true),
            Event::Reset { at, .. } => ("reset", at, true),
        };
        let t = at as f64 / 1000.0;
        let rec = self
            .active
            .entry((worker, flow))
            .or_insert_with(|| MigrationRecord {
                worker,
                flow,
                started_ms: now_ms,
                steps: Vec::new(),
                durations_ms: Vec::new(),
                outcome: None,
                pause_ms: None,
                first_us: at,
            });
        let prev = rec.steps.last().map_or(t, |s| s.1);
        rec.steps.push((name.to_owned(), t));
        rec.durations_ms.push((name.to_owned(), t - prev));
        if end {
            if let Some(mut r) = self.active.remove(&(worker, flow)) {
                let first = r.steps.first().map_or(t, |s| s.1);
                r.pause_ms = Some(t - first);
                r.outcome = Some(describe_event(ev));
                let _ = self.pauses.record(at.saturating_sub(r.first_us).max(1));
                self.recent.push_back(r);
                while self.recent.len() > self.keep {
                    self.recent.pop_front();
                }
            }
        }
    }

    /// In progress, recent, percentiles.
    pub fn report(&self) -> MigrationReport {
        MigrationReport {
            active: self.active.values().cloned().collect(),
            recent: self.recent.iter().cloned().collect(),
            pause_ms: self.pause_stats(),
        }
    }

    /// Pause percentiles over every migration that ended since start.
    pub fn pause_stats(&self) -> PauseStats {
        let q = |p: f64| self.pauses.value_at_quantile(p) as f64 / 1000.0;
        PauseStats {
            count: self.pauses.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: self.pauses.max() as f64 / 1000.0,
        }
    }

    /// The migrations of one flow (the slot may have been reused: the newest are the flow's).
    pub fn of(&self, worker: usize, flow: u32) -> Vec<MigrationRecord> {
        self.recent
            .iter()
            .chain(self.active.values())
            .filter(|r| r.worker == worker && r.flow == flow)
            .cloned()
            .collect()
    }
}

/// One line describing a migration event (times in ms of the worker's clock).
pub fn describe_event(ev: &Event) -> String {
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    match *ev {
        Event::Paused { from, to, at } => {
            format!("paused t={}ms from_device={from} to_device={to}", ms(at))
        }
        Event::Connected {
            device,
            resume_offset,
            client_offset,
            at,
        } => format!(
            "connected t={}ms device={device} resume_offset={resume_offset} client_offset={client_offset}",
            ms(at)
        ),
        Event::Replaying { device, at } => format!("replaying t={}ms device={device}", ms(at)),
        Event::Resumed {
            device,
            replayed,
            at,
        } => format!("resumed t={}ms device={device} replayed_bytes={replayed}", ms(at)),
        Event::Cancelled {
            reason,
            back_to,
            at,
        } => format!("cancelled t={}ms reason={reason} back_to_device={back_to}", ms(at)),
        Event::Reset { reason, at } => format!("reset t={}ms reason={reason}", ms(at)),
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsmp_core::proxy::flow::TcpState;

    #[test]
    fn state_names_are_the_tracking_states() {
        let all = [
            TcpState::SynSent,
            TcpState::SynRecv,
            TcpState::Established,
            TcpState::FinWait,
            TcpState::TimeWait,
            TcpState::Closed,
        ];
        assert_eq!(all.map(TcpState::name), STATES);
        for s in all {
            let back: TcpState = serde_json::from_str(&format!("\"{}\"", s.name())).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn the_log_keeps_steps_durations_outcomes_and_pauses_bounded() {
        let mut log = MigrationLog::new(2);
        for flow in 0..3u32 {
            let base = u64::from(flow) * 1_000_000;
            log.on_event(
                0,
                flow,
                &Event::Paused {
                    from: 0,
                    to: 1,
                    at: base,
                },
                1,
            );
            log.on_event(
                0,
                flow,
                &Event::Connected {
                    device: 1,
                    resume_offset: 10,
                    client_offset: 0,
                    at: base + 2_000,
                },
                2,
            );
            assert_eq!(log.report().active.len(), 1);
            log.on_event(
                0,
                flow,
                &Event::Resumed {
                    device: 1,
                    replayed: 0,
                    at: base + 2_500 + u64::from(flow) * 1000,
                },
                3,
            );
        }
        let r = log.report();
        assert!(r.active.is_empty());
        // Bounded: the oldest went.
        assert_eq!(r.recent.iter().map(|m| m.flow).collect::<Vec<_>>(), [1, 2]);
        let m = &r.recent[1];
        assert_eq!(m.steps.len(), 3);
        assert_eq!(m.durations_ms[1], ("connected".to_owned(), 2.0));
        assert_eq!(m.pause_ms, Some(4.5));
        assert!(m.outcome.as_deref().unwrap().starts_with("resumed"));
        // The histogram counts all three.
        assert_eq!(r.pause_ms.count, 3);
        assert!((r.pause_ms.max - 4.5).abs() < 0.01, "{:?}", r.pause_ms);
        assert_eq!(log.of(0, 2).len(), 1);
        assert!(log.of(0, 0).is_empty());
    }
}
