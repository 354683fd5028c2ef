//! The slow path's control socket and its channels to the workers.
//!
//! The main lcore serves a Unix socket (`[control] cli_socket`): one JSON request per line, one
//! JSON reply per line. It never touches a worker's tables: a request becomes a [`Command`] on
//! the owning worker's bounded lock-free ring, the worker answers on the command's own reply
//! channel, and migration progress comes back as events on a shared ring.
//!
//! Requests (version 1):
//!
//! ```text
//! {"migrate": {"client": "198.18.0.1:40000", "vip": "198.18.0.10:80", "offset": 123456}}
//!   -> {"ok": {"worker": 0, "flow": 3, "device": 1, "migration_port": 40001}}
//!   -> {"error": "resume offset 10 is no longer cached (...)"}
//! ```
//!
//! `offset` (optional) is the application's consumed byte offset; without it the flow resumes
//! at the old device's last acknowledged byte. The target device then connects to the VIP on
//! `migration_port`. (Authentication of requests and the naming server come with the control
//! plane; this socket is the operator's, protected by its file permissions.)
#![forbid(unsafe_code)]

use std::collections::hash_map::RandomState;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddrV4;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};

use crate::migrate::engine::Event;
use crate::msg::Reason;
use crate::proxy::ProxyCore;

/// The largest request accepted, bytes.
pub const MAX_REQUEST: usize = 4096;

/// A migration the owning worker started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Migrating {
    /// The owning worker.
    pub worker: usize,
    /// The flow's slot in that worker's table.
    pub flow: u32,
    /// The target's device generation.
    pub device: u32,
    /// The port of the flow's VIP the target connects to.
    pub migration_port: u16,
    /// The service the flow's first device connected to (VIP and service port).
    pub service: SocketAddrV4,
}

/// Why a worker did not start a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The counted reason.
    pub reason: Reason,
    /// What happened and what to do.
    pub detail: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}

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
    },
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ok(Migrating),
    Error(String),
}

fn addr(a: SocketAddrV4) -> (u32, u16) {
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
    hasher: RandomState,
    migration_ports: (u16, u16),
}

impl Workers {
    /// The workers behind `rings` (hashing flows with `hasher`), migration ports `lo..=hi`.
    pub fn new(rings: CommandRings, hasher: RandomState, migration_ports: (u16, u16)) -> Self {
        Workers {
            rings,
            hasher,
            migration_ports,
        }
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
        let (tx, rx) = sync_channel(1);
        let cmd = Command::Migrate {
            client: r.client,
            vip: r.vip,
            offset: r.offset,
            counter: r.counter,
            expect: r.expect,
            reply: tx,
        };
        let Some(ring) = self.rings.get(w) else {
            return Err(Refusal::new(Reason::Busy, "no worker"));
        };
        if ring.push(cmd).is_err() {
            return Err(Refusal::new(
                Reason::Busy,
                format!("worker {w} is busy; retry"),
            ));
        }
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(r) => r,
            Err(_) => Err(Refusal::new(
                Reason::Busy,
                format!("worker {w} did not answer"),
            )),
        }
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
    /// when there are none.
    pub fn poll(&self) {
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = self.serve(stream);
        }
    }

    fn serve(&self, mut stream: UnixStream) -> std::io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        BufReader::new((&stream).take(MAX_REQUEST as u64)).read_line(&mut line)?;
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Reply::Error(format!(
                "bad request ({e}); expected one JSON line such as \
                 {{\"migrate\": {{\"client\": \"198.18.0.1:40000\", \"vip\": \"198.18.0.10:80\"}}}}"
            )),
            Ok(req) => self.dispatch(req),
        };
        let mut out = serde_json::to_string(&reply).unwrap_or_default();
        out.push('\n');
        stream.write_all(out.as_bytes())
    }

    fn dispatch(&self, req: Request) -> Reply {
        match req {
            Request::Migrate {
                client,
                vip,
                offset,
            } => match self.workers.migrate(MigrateRequest {
                client: addr(client),
                vip: addr(vip),
                offset,
                counter: None,
                expect: None,
            }) {
                Ok(m) => Reply::Ok(m),
                Err(r) => Reply::Error(r.detail),
            },
        }
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
