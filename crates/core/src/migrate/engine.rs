//! The per-flow migration engine: the state machine that ties the rolling cache, the freeze, the
//! resumption sender and the splice together (draft section 4.3; DESIGN.md section 3).
//!
//! Sans-IO, quinn-style. Inputs: [`Engine::on_segment`] (a frame from the server or from a
//! device, with the current time), [`Engine::migrate`] (an accepted MFR),
//! [`Engine::device_gone`] (the control plane learned a device is unreachable) and
//! [`Engine::on_timeout`]. Outputs: the [`Verdict`] for the frame (forward it, rewritten in place;
//! it was consumed; drop it), segments the proxy originates itself drained with
//! [`Engine::poll_transmit`] (their payload read with [`Engine::payload`], borrowing the cache:
//! zero-copy up to the caller's frame builder), events drained with [`Engine::poll_event`], and
//! the next deadline from [`Engine::poll_timeout`]. Times are microseconds on the caller's clock;
//! the engine never reads a clock.
//!
//! The engine is generic over the buffer type `B` ([`SharedBuf`]): DPDK mbufs in the appliance
//! (sharing is a reference count, the cache keeps the mbuf), `Vec<u8>` in tests. Frames are
//! Ethernet + IPv4 + TCP, as [`crate::wire::classify`] accepts them. Addresses and ports are the
//! caller's business (the NAT); the engine owns sequence spaces, windows, options and timing.
//!
//! Sequence spaces: "server space" for server->client data (the server's numbers), "client
//! space" for client->server data as the server sees it. Each device leg has its own numbers
//! related to those by the constant offsets of its [`Splice`].
//!
//! ```text
//!   SYN, SYN-ACK seen                       migrate(): rolling cache contiguous from the resume
//!  Handshake ──────────► Forwarding ─────────────────────────────────────────────► Paused
//!                         rolling caches:      Freeze::start: ACK all in flight, window 0;
//!                         S->C kept until      late S segments cached and ACKed at once;
//!                         the device ACKs,     old device's ACKs consumed (move the default
//!                         C->S until S ACKs    resume point), its FIN answered, never forwarded
//!                            ▲                                  │ SYN from the target device
//!                            │ everything replayed is ACKed     │ SYN-ACK: ISN = resume - 1,
//!                            │ and S holds all old C->S data:   │ S's window scale, MSS, SACK,
//!                            │ window update to S from the      │ TS seeded with S's TSval
//!                            │ device's last ACK; old leg FINed ▼
//!                            └──────────────────────────────── Resuming (ReplaySender)
//!
//!  cancel (deadline before the target connects, target resets or stays silent, replay stalls,
//!  cache full): Resuming toward the old device (what was forwarded to it counts as in flight;
//!  only the bytes cached while frozen are sent, then the window reopens) while it is alive and
//!  the target sent no data; otherwise RST both ends -> Closed(reason). Client bytes the server
//!  is owed and nobody holds (the old device vanished after losing them) -> Closed
//!  (client_data_lost), both ends reset.
//! ```
//!
//! Invariants:
//! - the server never receives, while a migration is in progress, an ACK beyond what it sent, a
//!   window other than 0, a FIN or RST from a device, or anything that repeats an ACK while it
//!   has data outstanding (the freeze acknowledges everything in the same ACK that closes the
//!   window);
//! - every server byte acknowledged to the server by the proxy is in the cache until the device
//!   that takes the stream acknowledged it;
//! - every client byte the proxy acknowledged to a device is in the C->S cache until the server
//!   acknowledged it (the proxy retransmits it to the server while it is responsible);
//! - a device is never acknowledged client bytes the server will not get: once a target
//!   connected, the old device's bytes end where the target's begin (`accept_end`), and the
//!   proxy's FIN toward it acknowledges no more than that;
//! - after a splice, no device ACK below the splice point reaches the server (a segment sent
//!   during the replay may arrive after it), and pure ACKs never carry a sequence number below
//!   what their receiver acknowledged (peers that rewind SND.NXT after a timeout would drop
//!   them as out of window);
//! - every wait is bounded: the MFR deadline until the target's SYN, SYN-ACK retransmissions
//!   until the handshake completes, no progress for a deadline during the replay, and ten
//!   deadlines for a whole resumption;
//! - the caches live in the states that need them and are released (budget refunded) on every
//!   path out of them.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;

use super::cache::{Budget, Inserted, SegmentCache};
use super::freeze::{AckToServer, Disposition, Freeze, ServerSegment};
use super::sender::{ReplaySender, SenderConfig};
use super::splice::Splice;
use crate::wire::build::TcpFields;
use crate::wire::{classify, Frame, SeqNumber, TcpFlags, TcpMeta, TcpSegmentMut};

pub use crate::buf::SharedBuf;

/// One side of the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The server.
    Server,
    /// A device, by generation: 0 opened the connection, each migration target gets the next.
    Device(u32),
}

/// Tunables of the engine (from the appliance's `[limits]` and `[migration]` configuration).
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Bytes each direction's cache of one flow may hold.
    pub flow_cache_bytes: u64,
    /// Bytes the rolling cache keeps below the device's ACK, so that an explicit resume offset
    /// (bytes the device received but its application did not consume) can be served.
    pub keep_acked_bytes: u32,
    /// From the MFR to the target device's SYN, microseconds.
    pub deadline_us: u64,
    /// The replay sender's timers.
    pub sender: SenderConfig,
    /// The largest MSS the proxy announces or uses toward a device.
    pub max_mss: u16,
    /// SYN-ACK retransmissions before the target is given up.
    pub synack_retries: u32,
    /// Consecutive replay timeouts before the replay is given up.
    pub replay_timeouts: u64,
    /// FIN retransmissions toward the old device.
    pub fin_retries: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            flow_cache_bytes: 4 << 20,
            keep_acked_bytes: 0,
            deadline_us: 10_000_000,
            sender: SenderConfig::default(),
            max_mss: 1460,
            synack_retries: 5,
            replay_timeouts: 6,
            fin_retries: 4,
        }
    }
}

/// A segment the proxy originates. The payload, if any, is `payload_len` bytes of the cache at
/// `payload_seq` (server space toward a device, client space toward the server): read it with
/// [`Engine::payload`] before feeding the engine anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emit {
    /// Where it goes.
    pub to: Leg,
    /// Header fields, in the receiving leg's sequence space.
    pub fields: TcpFields,
    /// Cache position of the payload.
    pub payload_seq: SeqNumber,
    /// Payload bytes.
    pub payload_len: u32,
}

/// What to do with a frame the engine was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<B> {
    /// Send it (rewritten in place) to this leg.
    Forward(Leg, B),
    /// The engine took it (cached, or answered and released).
    Consumed,
    /// Not for this flow's current state: drop it.
    Drop(B),
}

/// Why a migration did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The target device did not connect before the deadline.
    Deadline,
    /// The target device reset its connection.
    NewDeviceReset,
    /// The target device did not complete the handshake.
    NewDeviceSilent,
    /// The device receiving the replay stopped acknowledging.
    ReplayStalled,
    /// A cache limit (the flow's or the worker's) was reached while frozen.
    CacheFull,
    /// The server reset the connection.
    ServerReset,
    /// Client bytes the server is owed never reached the proxy and their sender (the old
    /// device) is gone: nobody can deliver them.
    ClientDataLost,
}

impl Failure {
    /// Stable name (counters, CLI, agent messages).
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Deadline => "deadline",
            Failure::NewDeviceReset => "new_device_reset",
            Failure::NewDeviceSilent => "new_device_silent",
            Failure::ReplayStalled => "replay_stalled",
            Failure::CacheFull => "cache_full",
            Failure::ServerReset => "server_reset",
            Failure::ClientDataLost => "client_data_lost",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a migration request was refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrateError {
    /// The connection is not established yet.
    NotEstablished,
    /// A migration of this flow is already in progress.
    AlreadyMigrating,
    /// One side already closed (FIN or RST): nothing left to move.
    Closing,
    /// The requested offset lies beyond what the server has sent.
    OffsetBeyondStream {
        /// Requested application offset.
        offset: u64,
        /// Bytes the server has sent.
        sent: u64,
    },
    /// The bytes from the resume point on are no longer (or not all) cached.
    NotCached {
        /// Requested application offset.
        offset: u64,
        /// The lowest offset still cached.
        first_cached: u64,
    },
    /// Server bytes between the resume point and what the server sent never reached the proxy
    /// (lost between the server and the proxy) or did not fit the cache: the server is still
    /// recovering them. Transient: retry after a round trip.
    Gap {
        /// Application offset of the first missing byte.
        at: u64,
    },
    /// Freezing would need more cache than the flow may hold.
    CacheLimit {
        /// Bytes needed (cached plus the window the server may still fill).
        need: u64,
        /// The flow's limit.
        limit: u64,
    },
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::NotEstablished => f.write_str("the connection is not established yet"),
            MigrateError::AlreadyMigrating => {
                f.write_str("a migration of this flow is in progress")
            }
            MigrateError::Closing => f.write_str("the connection is closing"),
            MigrateError::OffsetBeyondStream { offset, sent } => write!(
                f,
                "resume offset {offset} is beyond the {sent} bytes the server has sent"
            ),
            MigrateError::NotCached {
                offset,
                first_cached,
            } => write!(
                f,
                "resume offset {offset} is no longer cached (oldest cached offset {first_cached}; \
                 raise migration.keep_acked_bytes to serve older offsets)"
            ),
            MigrateError::Gap { at } => write!(
                f,
                "server bytes from offset {at} have not reached the proxy yet (the server is \
                 recovering a loss); retry after a round trip"
            ),
            MigrateError::CacheLimit { need, limit } => write!(
                f,
                "freezing needs {need} bytes of cache, the flow may hold {limit} \
                 (raise limits.flow_cache_bytes)"
            ),
        }
    }
}

/// Progress of a migration, for the control plane and the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The server is frozen; the flow waits for the target device.
    Paused {
        /// The device that held the flow.
        from: u32,
        /// The target's generation (use it for the target's frames).
        to: u32,
        /// When.
        at: u64,
    },
    /// The target's SYN arrived; the resume point is fixed.
    Connected {
        /// The target.
        device: u32,
        /// Resume point as an application offset (bytes of the server's stream, mod 2^32).
        resume_offset: u64,
        /// Where the target's data starts in the stream the server receives (bytes, mod
        /// 2^32): everything before it came from earlier devices.
        client_offset: u64,
        /// When.
        at: u64,
    },
    /// The handshake with the target completed; the replay runs.
    Replaying {
        /// The target.
        device: u32,
        /// When.
        at: u64,
    },
    /// Everything cached was delivered; the flow is a pass-through to `device`.
    Resumed {
        /// The device that now holds the flow.
        device: u32,
        /// Bytes replayed from the cache.
        replayed: u64,
        /// When.
        at: u64,
    },
    /// The migration failed and the flow goes back to the old device.
    Cancelled {
        /// Why.
        reason: Failure,
        /// The device the flow returns to.
        back_to: u32,
        /// When.
        at: u64,
    },
    /// The migration failed and no device can take the flow: both ends were reset.
    Reset {
        /// Why.
        reason: Failure,
        /// When.
        at: u64,
    },
}

/// The phase of a flow, for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the server's SYN-ACK.
    Handshake,
    /// Pass-through.
    Forwarding,
    /// Frozen, waiting for the target device.
    Paused,
    /// Replaying the cache to a device.
    Resuming,
    /// Over (closed by the ends, or reset after a failure).
    Closed,
}

impl Phase {
    /// Stable lower-case name (operator tools).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Forwarding => "forwarding",
            Phase::Paused => "paused",
            Phase::Resuming => "resuming",
            Phase::Closed => "closed",
        }
    }
}

/// Counters of one flow's engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Segments forwarded to the server / to a device.
    pub forwarded: u64,
    /// Segments the proxy originated.
    pub emitted: u64,
    /// Server segments the rolling cache could not hold (a hole: no migration until ACKed).
    pub rolling_overflow: u64,
    /// Migrations completed.
    pub migrations: u64,
    /// Migrations cancelled back to the old device.
    pub cancelled: u64,
    /// Migrations that ended in a reset.
    pub reset: u64,
    /// Client bytes the proxy retransmitted to the server.
    pub c2s_retransmits: u64,
    /// Bytes replayed to devices.
    pub replayed_bytes: u64,
}

/// The server's sub-connection, as the proxy observed and shaped it.
#[derive(Debug, Clone, Copy, Default)]
struct ServerLeg {
    s_isn: SeqNumber,
    /// The client side's ISN as the server knows it.
    c_isn: SeqNumber,
    /// One past the highest server data byte seen (FIN excluded).
    s_next: SeqNumber,
    s_fin: bool,
    ts_recent: Option<u32>,
    /// One past the highest client byte sent to the server (FIN included).
    c_next: SeqNumber,
    /// The server's latest ACK (client space).
    c_una: SeqNumber,
    /// The latest TSval the server received from the client side.
    c_tsval: u32,
    /// Shift of the server's windows.
    s_ws: u8,
    /// Shift the server applies to windows it receives.
    c_ws: u8,
    ts: bool,
    sack: bool,
    mss: u16,
    /// The server's receive window, bytes.
    wnd: u32,
    rst: bool,
}

/// Closing a device's sub-connection from the proxy's side.
#[derive(Debug, Clone, Copy)]
struct Closing {
    /// Sequence number of the proxy's FIN (device space).
    fin_seq: SeqNumber,
    tries: u32,
    next_at: u64,
    acked: bool,
}

/// One device's sub-connection.
#[derive(Debug, Clone, Copy)]
struct DeviceLeg {
    gen: u32,
    sp: Splice,
    /// The device's ISN (device space).
    isn: SeqNumber,
    /// One past the highest sequence number the device sent (device space, FIN included).
    nxt: SeqNumber,
    /// The device's latest ACK (server space).
    ack: SeqNumber,
    /// One past the highest server byte forwarded to it (server space).
    fwd_end: SeqNumber,
    wnd_raw: u16,
    tsval: u32,
    /// Shift of the device's windows.
    ws: u8,
    /// The device's SYN carried the window-scale option.
    ws_offered: bool,
    /// Shift of the windows the proxy sends it.
    our_ws: u8,
    ts: bool,
    sack: bool,
    mss: u16,
    fin: bool,
    gone: bool,
    closing: Option<Closing>,
    /// The highest ACK the device was sent (device space).
    acked: SeqNumber,
    /// Once a target connected: one past the last of this device's bytes the server gets
    /// (device space). The proxy never acknowledges beyond it.
    accept_end: Option<SeqNumber>,
}

impl DeviceLeg {
    /// Payload bytes per segment toward this device: the MSS it announced counts no TCP
    /// options (RFC 9293 3.7.1), so the timestamps option the proxy sends comes off it.
    fn payload_mss(&self) -> u16 {
        self.mss
            .saturating_sub(if self.ts { 12 } else { 0 })
            .max(64)
    }

    /// The ACK field toward a closing device: what was accepted, plus its FIN if that directly
    /// follows.
    fn closing_ack(&self, accepted: SeqNumber) -> SeqNumber {
        if self.fin && accepted + 1 == self.nxt {
            self.nxt
        } else {
            accepted
        }
    }

    fn alive(&self) -> bool {
        !self.gone && !self.fin && self.closing.is_none()
    }

    fn wnd_bytes(&self) -> u32 {
        u32::from(self.wnd_raw) << self.ws
    }
}

/// The two directions' caches of a flow.
#[derive(Debug)]
struct Caches<B> {
    /// Server -> client bytes (server space).
    s2c: SegmentCache<B>,
    /// Client -> server bytes (client space).
    c2s: SegmentCache<B>,
}

impl<B: SharedBuf> Caches<B> {
    fn release(&mut self, budget: &mut Budget) {
        self.s2c.clear(budget, drop);
        self.c2s.clear(budget, drop);
    }
}

/// Delivery of cached client bytes to the server while the proxy is responsible for them.
#[derive(Debug, Clone, Copy)]
struct C2sDelivery {
    rto_us: u64,
    next_at: Option<u64>,
    /// The server's ACK when the timer was last (re)started.
    una: SeqNumber,
}

impl C2sDelivery {
    const INITIAL_RTO_US: u64 = 300_000;

    fn new() -> C2sDelivery {
        C2sDelivery {
            rto_us: Self::INITIAL_RTO_US,
            next_at: None,
            una: SeqNumber(0),
        }
    }
}

/// Where the resume point comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// The old device's latest ACK, until the target connects.
    FollowOld,
    /// An explicit application offset.
    Fixed(SeqNumber),
}

#[derive(Debug)]
struct Paused<B> {
    caches: Caches<B>,
    freeze: Freeze,
    resume: Resume,
    target: u32,
    deadline: u64,
    c2s: C2sDelivery,
}

#[derive(Debug)]
struct Resuming<B> {
    caches: Caches<B>,
    freeze: Freeze,
    sender: ReplaySender,
    /// The target leg; `None` when the flow goes back to the old device (`Engine::dev`).
    leg: Option<DeviceLeg>,
    established: bool,
    /// SYN-ACK retransmissions so far and the next one's time.
    synack: (u32, u64),
    /// Client bytes below this are the old device's (the proxy delivers them).
    c_fixed: SeqNumber,
    /// Stall bound: no progress for a whole migration deadline.
    deadline: u64,
    /// Absolute bound: ten deadlines after the resumption began (a server's one-byte window
    /// probes are progress, yet must not keep a resumption alive forever).
    give_up: u64,
    c2s: C2sDelivery,
}

/// The migration state; the caches live inside the states that need them.
#[derive(Debug)]
enum State<B> {
    Handshake,
    Forwarding(Caches<B>),
    Paused(Box<Paused<B>>),
    Resuming(Box<Resuming<B>>),
    Closed(Option<Failure>),
}

/// What the engine needs of one segment.
#[derive(Debug, Clone, Copy)]
struct Seg {
    seq: SeqNumber,
    ack: Option<SeqNumber>,
    flags: TcpFlags,
    window: u16,
    len: u32,
    off: usize,
    tsval: Option<u32>,
    mss: Option<u16>,
    ws: Option<u8>,
    sack_perm: bool,
    /// The checked offsets of the frame (rewriting in place does not move them).
    meta: TcpMeta,
}

impl Seg {
    fn has(&self, f: u8) -> bool {
        self.flags.has(f)
    }

    fn end(&self) -> SeqNumber {
        self.seq + self.len
    }
}

fn parse(f: &mut [u8], m: TcpMeta) -> Option<Seg> {
    let v = TcpSegmentMut::new(f, &m)?;
    Some(Seg {
        seq: m.seq,
        ack: m.flags.has(TcpFlags::ACK).then_some(m.ack),
        flags: m.flags,
        window: m.window,
        len: u32::try_from(m.payload_len).ok()?,
        off: m.payload,
        tsval: v.timestamps().map(|t| t.0),
        mss: v.mss(),
        ws: v.wscale(),
        sack_perm: v.options().sack_perm.is_some(),
        meta: m,
    })
}

/// Applies `f` to the TCP view of the frame `seg` was parsed from (no second classification:
/// the offsets [`parse`] checked still hold).
fn rewrite<B: SharedBuf>(buf: &mut B, seg: &Seg, f: impl FnOnce(&mut TcpSegmentMut<'_>)) {
    if let Some(mut v) = TcpSegmentMut::new(buf.as_mut(), &seg.meta) {
        f(&mut v);
    }
}

/// The migration engine of one flow.
#[derive(Debug)]
pub struct Engine<B> {
    cfg: EngineConfig,
    srv: ServerLeg,
    /// The device that holds the flow (the old device while a migration is in progress).
    dev: DeviceLeg,
    /// A former device whose sub-connection the proxy is closing.
    retiring: Option<DeviceLeg>,
    state: State<B>,
    out: VecDeque<Emit>,
    events: VecDeque<Event>,
    next_gen: u32,
    /// Counters.
    pub stats: EngineStats,
}

impl<B: SharedBuf> Engine<B> {
    /// An engine for a flow whose first device (generation 0) is about to send its SYN.
    pub fn new(cfg: EngineConfig) -> Engine<B> {
        let sp = Splice {
            s2c: 0,
            c2s: 0,
            server_rcv_wscale: 0,
            device_wscale: 0,
            ts: None,
            server_sack: false,
            device_sack: false,
            replayed_end: SeqNumber(0),
            edge: SeqNumber(0),
            ack_floor: SeqNumber(0),
        };
        Engine {
            cfg,
            srv: ServerLeg::default(),
            dev: DeviceLeg {
                gen: 0,
                sp,
                isn: SeqNumber(0),
                nxt: SeqNumber(0),
                ack: SeqNumber(0),
                fwd_end: SeqNumber(0),
                wnd_raw: 0,
                tsval: 0,
                ws: 0,
                ws_offered: false,
                our_ws: 0,
                ts: false,
                sack: false,
                mss: 536,
                fin: false,
                gone: false,
                closing: None,
                acked: SeqNumber(0),
                accept_end: None,
            },
            retiring: None,
            state: State::Handshake,
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_gen: 1,
            stats: EngineStats::default(),
        }
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Handshake => Phase::Handshake,
            State::Forwarding(_) => Phase::Forwarding,
            State::Paused(_) => Phase::Paused,
            State::Resuming(_) => Phase::Resuming,
            State::Closed(_) => Phase::Closed,
        }
    }

    /// The generation the next migration's target will get.
    pub fn next_device(&self) -> u32 {
        self.next_gen
    }

    /// The device that holds the flow.
    pub fn device(&self) -> u32 {
        self.dev.gen
    }

    /// The generation a migration in progress waits for.
    pub fn target(&self) -> Option<u32> {
        match &self.state {
            State::Paused(p) => Some(p.target),
            State::Resuming(r) => r.leg.map(|l| l.gen),
            _ => None,
        }
    }

    /// Why the flow closed, if a failure closed it.
    pub fn failure(&self) -> Option<Failure> {
        match self.state {
            State::Closed(f) => f,
            _ => None,
        }
    }

    /// Bytes cached (both directions).
    pub fn cache_bytes(&self) -> u64 {
        match &self.state {
            State::Forwarding(c) => c.s2c.bytes() + c.c2s.bytes(),
            State::Paused(p) => p.caches.s2c.bytes() + p.caches.c2s.bytes(),
            State::Resuming(r) => r.caches.s2c.bytes() + r.caches.c2s.bytes(),
            _ => 0,
        }
    }

    /// A multi-line description of the flow's legs and migration state (operator inspection,
    /// test failures).
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "phase {:?}\nserver {:#?}\ndevice {:#?}\n",
            self.phase(),
            self.srv,
            self.dev
        );
        if let Some(r) = &self.retiring {
            let _ = writeln!(out, "retiring {r:#?}");
        }
        let (caches, extra) = match &self.state {
            State::Forwarding(c) => (Some(c), String::new()),
            State::Paused(p) => (
                Some(&p.caches),
                format!(
                    "freeze {:?} resume {:?} target {}",
                    p.freeze, p.resume, p.target
                ),
            ),
            State::Resuming(r) => (
                Some(&r.caches),
                format!(
                    "freeze {:?}\nsender {:?}\ntarget {:#?}\nestablished {} c_fixed {:?}",
                    r.freeze, r.sender, r.leg, r.established, r.c_fixed
                ),
            ),
            _ => (None, String::new()),
        };
        if let Some(c) = caches {
            let _ = writeln!(
                out,
                "s2c cache {} bytes from {:?}; c2s cache {} bytes from {:?} to {:?}",
                c.s2c.bytes(),
                c.s2c.first_seq(),
                c.c2s.bytes(),
                c.c2s.first_seq(),
                c.c2s.end_seq()
            );
        }
        out + &extra
    }

    /// The flow is gone (its table slot closed or expired): every cached buffer is released
    /// and the budget refunded; the engine is `Closed` afterwards.
    pub fn release(&mut self, budget: &mut Budget) {
        match std::mem::replace(&mut self.state, State::Closed(None)) {
            State::Forwarding(mut c) => c.release(budget),
            State::Paused(mut p) => p.caches.release(budget),
            State::Resuming(mut r) => r.caches.release(budget),
            s @ (State::Handshake | State::Closed(_)) => self.state = s,
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn offset_of(&self, seq: SeqNumber) -> u64 {
        u64::from(seq.0.wrapping_sub((self.srv.s_isn + 1).0))
    }

    fn push(&mut self, e: Emit) {
        self.stats.emitted += 1;
        self.out.push_back(e);
    }

    fn ack_to_server(&mut self, a: AckToServer) {
        let ts = self.server_ts(a.tsecr);
        self.push(Emit {
            to: Leg::Server,
            fields: TcpFields {
                seq: a.seq,
                ack: a.ack,
                flags: TcpFlags::ACK,
                window: a.window,
                ts,
                ..TcpFields::default()
            },
            payload_seq: a.seq,
            payload_len: 0,
        });
    }

    /// The window the proxy advertises to a device: the server's receive window in the leg's
    /// scale.
    fn window_to_device(&self, leg: &DeviceLeg) -> u16 {
        u16::try_from((self.srv.wnd >> leg.our_ws).min(0xffff)).unwrap_or(u16::MAX)
    }

    /// The ACK field toward a device.
    fn device_ack_field(&self, leg: &DeviceLeg, c2s: &SegmentCache<B>) -> SeqNumber {
        device_ack(self.srv.c_una, leg, c2s)
    }

    /// The timestamps option toward the server: the client side's latest TSval (the server's
    /// PAWS check sees it never decrease) and `tsecr`; `None` when the server's leg has none.
    fn server_ts(&self, tsecr: Option<u32>) -> Option<(u32, u32)> {
        self.srv.ts.then(|| (self.srv.c_tsval, tsecr.unwrap_or(0)))
    }

    fn device_ts(&self, leg: &DeviceLeg) -> Option<(u32, u32)> {
        leg.ts.then(|| (self.srv.ts_recent.unwrap_or(0), leg.tsval))
    }

    fn send_to_device(&mut self, leg: &DeviceLeg, seq: SeqNumber, ack: SeqNumber, flags: u8) {
        let fields = TcpFields {
            seq,
            ack,
            flags,
            window: self.window_to_device(leg),
            ts: self.device_ts(leg),
            ..TcpFields::default()
        };
        self.push(Emit {
            to: Leg::Device(leg.gen),
            fields,
            payload_seq: seq,
            payload_len: 0,
        });
    }

    /// An RST toward a device, at the sequence number it expects next.
    fn reset_device(&mut self, leg: &DeviceLeg) {
        let seq = leg.ack + leg.sp.s2c;
        self.send_to_device(leg, seq, leg.nxt, TcpFlags::RST | TcpFlags::ACK);
    }

    // ------------------------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------------------------

    /// Handles one frame of this flow from `from` at `now`.
    pub fn on_segment(&mut self, now: u64, from: Leg, buf: B, budget: &mut Budget) -> Verdict<B> {
        match classify(buf.as_ref()) {
            Ok(Frame::Tcp(m)) => self.on_classified(now, from, buf, &m, budget),
            _ => Verdict::Drop(buf),
        }
    }

    /// [`Engine::on_segment`] for a frame the caller classified already (the proxy core did,
    /// before its NAT rewrite, which moves no offset and changes none of the fields used here).
    pub fn on_classified(
        &mut self,
        now: u64,
        from: Leg,
        mut buf: B,
        meta: &TcpMeta,
        budget: &mut Budget,
    ) -> Verdict<B> {
        let Some(seg) = parse(buf.as_mut(), *meta) else {
            return Verdict::Drop(buf);
        };
        let state = std::mem::replace(&mut self.state, State::Closed(None));
        // Every (state, input) pair is decided here; each arm's handler returns the next state.
        let (state, v) = match (state, from) {
            // //= rfc9293#section-3.5: the handshake passes through; options are learned.
            (State::Handshake, from) => self.handshake(from, seg, buf),
            // //= draft 4.2: "TSMPP ... splices and rewrites" segments between the two
            // sub-connections; DESIGN.md 3.2: the rolling caches keep what is unacknowledged.
            (State::Forwarding(c), Leg::Server) => self.fwd_from_server(c, seg, buf, budget),
            (State::Forwarding(c), Leg::Device(g)) if g == self.dev.gen => {
                self.fwd_from_device(c, seg, buf, budget)
            }
            // //= draft 4.3.1: "generate and send their ACK packets to the sender in advance on
            // behalf of the new receiver ... window size (zero)".
            (State::Paused(p), Leg::Server) => self.paused_from_server(now, p, seg, buf, budget),
            // DESIGN.md 3.2: "C_old's ACKs are consumed by P ... never let C_old's FIN/RST reach
            // S".
            (State::Paused(mut p), Leg::Device(g)) if g == self.dev.gen => {
                let trim = p.resume == Resume::FollowOld;
                let rcv_nxt = p.freeze.rcv_nxt();
                let p2 = &mut *p;
                let v = self.on_old_device(
                    now,
                    &mut p2.caches,
                    rcv_nxt,
                    trim,
                    &mut p2.c2s,
                    seg,
                    buf,
                    budget,
                );
                (State::Paused(p), v)
            }
            // //= draft 4.3.2: "TSMPP acts as a TCP server to set up a connection with the
            // new receiver" (the SYN-ACK; the resume point is fixed here).
            (State::Paused(p), Leg::Device(g)) if g == p.target => {
                self.paused_from_target(now, p, seg, buf)
            }
            // The server stays frozen until the replay is acknowledged (DESIGN.md 3.4).
            (State::Resuming(r), Leg::Server) => {
                self.resuming_from_server(now, r, seg, buf, budget)
            }
            // //= draft 4.3.2: "As a TCP sender, TSMPP maintains ... Congestion_Window ...":
            // the target's ACKs drive the replay; the window update ends it.
            (State::Resuming(r), Leg::Device(g))
                if r.leg.is_some_and(|l| l.gen == g) || (r.leg.is_none() && g == self.dev.gen) =>
            {
                self.resuming_from_target(now, r, seg, buf, budget)
            }
            (State::Resuming(mut r), Leg::Device(g)) if g == self.dev.gen => {
                // The resume point is fixed and the client numbers are handed to the target:
                // the old device's ACKs trim nothing, and of its data only what lies below the
                // target's first byte is accepted.
                let rcv_nxt = r.freeze.rcv_nxt();
                let r2 = &mut *r;
                let v = self.on_old_device(
                    now,
                    &mut r2.caches,
                    rcv_nxt,
                    false,
                    &mut r2.c2s,
                    seg,
                    buf,
                    budget,
                );
                (State::Resuming(r), v)
            }
            // //= rfc9293#section-3.6: the old sub-connection is closed from the proxy's side.
            (state, Leg::Device(g)) if self.retiring.is_some_and(|l| l.gen == g) => {
                self.on_retiring(now, seg);
                (state, Verdict::Consumed)
            }
            // A device this flow does not know (or no longer serves), or anything after Closed.
            (state, _) => (state, Verdict::Drop(buf)),
        };
        self.state = state;
        if matches!(v, Verdict::Forward(..)) {
            self.stats.forwarded += 1;
        }
        self.arm_c2s(now);
        v
    }

    /// While frozen, the proxy answers for client bytes it holds that the server has not
    /// acknowledged: keep the delivery timer running whenever there are some (after every
    /// input, so no path can forget it).
    fn arm_c2s(&mut self, now: u64) {
        let una = self.srv.c_una;
        let (d, c2s) = match &mut self.state {
            State::Paused(p) => (&mut p.c2s, &p.caches.c2s),
            State::Resuming(r) => (&mut r.c2s, &r.caches.c2s),
            _ => return,
        };
        let outstanding = c2s.end_seq().is_some_and(|e| e.diff(una) > 0);
        if !outstanding {
            d.next_at = None;
            d.rto_us = C2sDelivery::INITIAL_RTO_US;
        } else if d.next_at.is_none() || una != d.una {
            // //= rfc6298#section-5 (5.3): an ACK of new data restarts the timer.
            if una != d.una {
                d.rto_us = C2sDelivery::INITIAL_RTO_US;
            }
            d.next_at = Some(now + d.rto_us);
        }
        d.una = una;
    }

    /// //= rfc9293#section-3.5 the three-way handshake passes through; the engine learns what
    /// each end offered (MSS, window scale, SACK, timestamps) and sets up identity translations.
    fn handshake(&mut self, from: Leg, seg: Seg, buf: B) -> (State<B>, Verdict<B>) {
        match from {
            Leg::Device(0) if seg.has(TcpFlags::SYN) && seg.ack.is_none() => {
                let d = &mut self.dev;
                d.isn = seg.seq;
                d.nxt = seg.seq + 1;
                d.acked = seg.seq + 1;
                d.mss = seg.mss.unwrap_or(536);
                d.ws = seg.ws.unwrap_or(0);
                d.ws_offered = seg.ws.is_some();
                d.sack = seg.sack_perm;
                d.ts = seg.tsval.is_some();
                d.tsval = seg.tsval.unwrap_or(0);
                d.wnd_raw = seg.window;
                self.srv.c_next = seg.seq + 1;
                self.srv.c_isn = seg.seq;
                self.srv.c_una = seg.seq;
                self.srv.c_tsval = d.tsval;
                (State::Handshake, Verdict::Forward(Leg::Server, buf))
            }
            Leg::Server if seg.has(TcpFlags::SYN | TcpFlags::ACK) => {
                let d = &mut self.dev;
                let s = &mut self.srv;
                // Window scaling is in effect only if both SYNs carried the option (RFC 7323 2.2).
                let ws = seg.ws.is_some() && d.ws_offered;
                s.s_isn = seg.seq;
                s.s_next = seg.seq + 1;
                s.c_una = seg.ack.unwrap_or(s.c_una);
                s.s_ws = if ws { seg.ws.unwrap_or(0).min(14) } else { 0 };
                s.c_ws = if ws { d.ws.min(14) } else { 0 };
                s.ts = d.ts && seg.tsval.is_some();
                s.sack = d.sack && seg.sack_perm;
                s.ts_recent = seg.tsval;
                s.mss = seg.mss.unwrap_or(536);
                s.wnd = u32::from(seg.window);
                d.ws = s.c_ws;
                d.our_ws = s.s_ws;
                d.ts = s.ts;
                d.sack = s.sack;
                d.ack = seg.seq + 1;
                d.fwd_end = seg.seq + 1;
                d.sp = Splice {
                    s2c: 0,
                    c2s: 0,
                    server_rcv_wscale: s.c_ws,
                    device_wscale: s.c_ws,
                    ts: s.ts.then_some(0),
                    server_sack: s.sack,
                    device_sack: s.sack,
                    replayed_end: seg.seq + 1,
                    // The device's SYN window (never scaled) is the first edge the server saw.
                    edge: seg.seq + 1 + u32::from(d.wnd_raw),
                    ack_floor: seg.seq + 1,
                };
                let limit = self.cfg.flow_cache_bytes;
                let caches = Caches {
                    s2c: SegmentCache::new(limit),
                    c2s: SegmentCache::new(limit),
                };
                (
                    State::Forwarding(caches),
                    Verdict::Forward(Leg::Device(0), buf),
                )
            }
            Leg::Server => {
                if seg.has(TcpFlags::RST) {
                    return (State::Closed(None), Verdict::Forward(Leg::Device(0), buf));
                }
                (State::Handshake, Verdict::Forward(Leg::Device(0), buf))
            }
            Leg::Device(0) => (State::Handshake, Verdict::Forward(Leg::Server, buf)),
            Leg::Device(_) => (State::Handshake, Verdict::Drop(buf)),
        }
    }

    /// Records what a server segment says about the server's side (ACK, window, TSval).
    fn observe_server(&mut self, seg: &Seg) {
        let s = &mut self.srv;
        if let Some(a) = seg.ack {
            if a.diff(s.c_una) > 0 && a.diff(s.c_next) <= 0 {
                s.c_una = a;
            }
        }
        s.wnd = u32::from(seg.window) << s.s_ws;
        if seg.has(TcpFlags::RST) {
            s.rst = true;
        }
    }

    fn fwd_from_server(
        &mut self,
        mut c: Caches<B>,
        seg: Seg,
        mut buf: B,
        budget: &mut Budget,
    ) -> (State<B>, Verdict<B>) {
        self.observe_server(&seg);
        let s = &mut self.srv;
        if let Some(v) = seg.tsval {
            s.ts_recent = Some(v);
        }
        if seg.len > 0 {
            // //= draft 4.3.1 / DESIGN.md 3.2: the rolling cache keeps what was forwarded to the
            // device until the device acknowledges it.
            match c.s2c.insert(seg.seq, buf.share(), seg.off, seg.len, budget) {
                Inserted::OverLimit(_) => self.stats.rolling_overflow += 1,
                Inserted::Stored(_) | Inserted::Duplicate(_) => {}
            }
        }
        let s = &mut self.srv;
        if seg.end().diff(s.s_next) > 0 {
            s.s_next = seg.end();
        }
        if seg.has(TcpFlags::FIN) {
            s.s_fin = true;
        }
        c.c2s.trim_below(s.c_una, budget, drop);
        let closed = seg.has(TcpFlags::RST);
        let d = self.dev;
        self.rewrite_to_device(&mut buf, &d, &seg);
        if seg.end().diff(self.dev.fwd_end) > 0 {
            self.dev.fwd_end = seg.end();
        }
        if let Some(a) = seg.ack {
            let a = a - d.sp.c2s;
            if a.diff(self.dev.acked) > 0 {
                self.dev.acked = a;
            }
        }
        let to = Leg::Device(self.dev.gen);
        if closed {
            c.release(budget);
            return (State::Closed(None), Verdict::Forward(to, buf));
        }
        (State::Forwarding(c), Verdict::Forward(to, buf))
    }

    /// Server -> device translation of a forwarded segment.
    fn rewrite_to_device(&self, buf: &mut B, leg: &DeviceLeg, seg: &Seg) {
        let s_ws = self.srv.s_ws;
        let strip_ts = self.srv.ts && !leg.ts;
        let lift = pure_ack(seg)
            .then_some(leg.ack)
            .filter(|a| a.diff(seg.seq) > 0);
        rewrite(buf, seg, |v| {
            leg.sp
                .server_to_device(v, seg.seq, seg.ack.unwrap_or(SeqNumber(0)));
            if let Some(a) = lift {
                v.set_seq(a + leg.sp.s2c);
            }
            if leg.our_ws != s_ws {
                let bytes = u64::from(seg.window) << s_ws;
                v.set_window(u16::try_from((bytes >> leg.our_ws).min(0xffff)).unwrap_or(u16::MAX));
            }
            if strip_ts {
                v.strip_timestamps();
            }
        });
    }

    /// Records what a device segment says (ACK in server space, window, TSval, its next seq).
    fn observe_device(leg: &mut DeviceLeg, seg: &Seg) {
        if let Some(a) = seg.ack {
            let a = a - leg.sp.s2c;
            if a.diff(leg.ack) > 0 {
                leg.ack = a;
            }
            leg.wnd_raw = seg.window;
        }
        if let Some(v) = seg.tsval {
            leg.tsval = v;
        }
        let end = seg.end() + u32::from(seg.has(TcpFlags::FIN));
        if end.diff(leg.nxt) > 0 {
            leg.nxt = end;
        }
    }

    fn fwd_from_device(
        &mut self,
        mut c: Caches<B>,
        seg: Seg,
        mut buf: B,
        budget: &mut Budget,
    ) -> (State<B>, Verdict<B>) {
        Self::observe_device(&mut self.dev, &seg);
        let d = self.dev;
        if seg.has(TcpFlags::FIN) {
            self.dev.fin = true;
        }
        let cseq = seg.seq + d.sp.c2s;
        if seg.len > 0 {
            // The rolling cache of client data the server has not acknowledged (DESIGN.md 3.5:
            // the proxy delivers it if the device leaves before the server ACKs it).
            let _ = c.c2s.insert(cseq, buf.share(), seg.off, seg.len, budget);
        }
        let floor = d.ack - self.cfg.keep_acked_bytes;
        c.s2c.trim_below(floor, budget, drop);
        let mut sp = d.sp;
        let ack = seg.ack.unwrap_or(SeqNumber(0));
        let mut tsval = None;
        let lift = pure_ack(&seg)
            .then_some(self.srv.c_una)
            .filter(|u| u.diff(cseq) > 0);
        rewrite(&mut buf, &seg, |v| {
            if seg.ack.is_some() {
                sp.device_to_server(v, seg.seq, ack, seg.window);
            } else {
                v.set_seq(cseq);
            }
            if let Some(u) = lift {
                v.set_seq(u);
            }
            tsval = v.timestamps().map(|t| t.0);
        });
        self.dev.sp = sp;
        let s = &mut self.srv;
        if let Some(t) = tsval {
            s.c_tsval = t;
        }
        let end = cseq + seg.len + u32::from(seg.has(TcpFlags::FIN));
        if end.diff(s.c_next) > 0 {
            s.c_next = end;
        }
        if seg.has(TcpFlags::RST) {
            c.release(budget);
            return (State::Closed(None), Verdict::Forward(Leg::Server, buf));
        }
        (State::Forwarding(c), Verdict::Forward(Leg::Server, buf))
    }

    /// //= draft 4.3.1: on a migration request the proxy "freezes" the server: it acknowledges
    /// everything the server has in flight with a zero window and caches what is not yet
    /// acknowledged by the old device. `offset` is the application's consumed byte offset, if
    /// the request carried one; by default the resume point follows the old device's ACKs until
    /// the target connects. Returns the target's generation.
    pub fn migrate(
        &mut self,
        now: u64,
        offset: Option<u64>,
        budget: &mut Budget,
    ) -> Result<u32, MigrateError> {
        let c = match &self.state {
            State::Forwarding(c) => c,
            State::Handshake => return Err(MigrateError::NotEstablished),
            State::Paused(_) | State::Resuming(_) => return Err(MigrateError::AlreadyMigrating),
            State::Closed(_) => return Err(MigrateError::Closing),
        };
        let s = self.srv;
        if s.s_fin || s.rst || !self.dev.alive() {
            return Err(MigrateError::Closing);
        }
        let sent = self.offset_of(s.s_next);
        let resume = match offset {
            None => self.dev.ack,
            Some(o) if o > sent => {
                return Err(MigrateError::OffsetBeyondStream { offset: o, sent })
            }
            Some(o) => s.s_isn + 1 + u32::try_from(o & 0xffff_ffff).unwrap_or(0),
        };
        // Every byte from the resume point to what the server sent must be cached.
        if resume != s.s_next {
            let first = c.s2c.first_seq().unwrap_or(s.s_next);
            if first.diff(resume) > 0 {
                let first_cached = self.offset_of(first);
                return Err(MigrateError::NotCached {
                    offset: offset.unwrap_or(self.offset_of(resume)),
                    first_cached,
                });
            }
            let end = c.s2c.contiguous_end(resume);
            if end != s.s_next {
                return Err(MigrateError::Gap {
                    at: self.offset_of(end),
                });
            }
        }
        // Late segments (sent before the freeze ACK reaches the server) must fit too. The server
        // can have at most its congestion window in flight, which the flight observed here
        // bounds; the proxy reserves twice that (at least 64 KiB), never more than the window
        // it advertised.
        let window_left = span(self.dev.sp.edge, s.s_next);
        let held = span(s.s_next, resume);
        let flight = span(s.s_next, self.dev.ack);
        let need = held + window_left.min(2 * flight.max(32 * 1024));
        if need > self.cfg.flow_cache_bytes {
            return Err(MigrateError::CacheLimit {
                need,
                limit: self.cfg.flow_cache_bytes,
            });
        }
        let State::Forwarding(mut caches) = std::mem::replace(&mut self.state, State::Closed(None))
        else {
            unreachable!("checked above")
        };
        caches.s2c.trim_below(resume, budget, drop);
        // //= DESIGN.md 3 rule 1: "ACK, and cache, every byte S has in flight in the same ACKs
        // that close the window".
        let (freeze, ack) = Freeze::start(s.s_next, self.dev.sp.edge, s.c_next, s.ts_recent);
        self.ack_to_server(ack);
        let target = self.next_gen;
        self.next_gen += 1;
        self.events.push_back(Event::Paused {
            from: self.dev.gen,
            to: target,
            at: now,
        });
        self.state = State::Paused(Box::new(Paused {
            caches,
            freeze,
            resume: if offset.is_some() {
                Resume::Fixed(resume)
            } else {
                Resume::FollowOld
            },
            target,
            deadline: now + self.cfg.deadline_us,
            c2s: C2sDelivery::new(),
        }));
        self.arm_c2s(now);
        Ok(target)
    }

    /// A server segment while frozen: cache it and answer with a zero-window ACK.
    fn frozen_server(
        &mut self,
        caches: &mut Caches<B>,
        freeze: &mut Freeze,
        seg: Seg,
        buf: B,
        budget: &mut Budget,
    ) -> Option<Failure> {
        self.observe_server(&seg);
        caches.c2s.trim_below(self.srv.c_una, budget, drop);
        // ACKs carry the client's current next sequence number (data forwarded while frozen
        // moved it).
        freeze.set_our_seq(self.srv.c_next);
        let ss = ServerSegment {
            seq: seg.seq,
            len: seg.len,
            fin: seg.has(TcpFlags::FIN),
            rst: seg.has(TcpFlags::RST),
            ack: seg.ack,
            tsval: seg.tsval,
        };
        let reply = freeze.on_segment(ss, buf, seg.off, &mut caches.s2c, budget);
        self.srv.ts_recent = freeze.ts_recent();
        if seg.end().diff(self.srv.s_next) > 0 {
            self.srv.s_next = seg.end();
        }
        if let Some(a) = reply.ack {
            self.ack_to_server(a);
        }
        match reply.disposition {
            Disposition::Reset(_) => Some(Failure::ServerReset),
            Disposition::CacheFull(_) => Some(Failure::CacheFull),
            Disposition::Cached(_) | Disposition::Returned(_) => None,
        }
    }

    fn paused_from_server(
        &mut self,
        now: u64,
        mut p: Box<Paused<B>>,
        seg: Seg,
        buf: B,
        budget: &mut Budget,
    ) -> (State<B>, Verdict<B>) {
        let (caches, freeze) = (&mut p.caches, &mut p.freeze);
        match self.frozen_server(caches, freeze, seg, buf, budget) {
            None => (State::Paused(p), Verdict::Consumed),
            Some(f) => {
                let p = *p;
                let st = self.fail(now, f, p.caches, p.freeze, None, false, budget);
                (st, Verdict::Consumed)
            }
        }
    }

    /// A segment from the old device while a migration is in progress: its ACKs are consumed
    /// (with `trim`, they move the default resume point), its FIN is answered and its RST
    /// swallowed, never forwarded; its data the proxy acknowledges and delivers to the server
    /// itself, up to the point where a target's bytes begin (`accept_end`): below it, a
    /// retransmission may fill a hole the server waits for.
    #[allow(clippy::too_many_arguments)]
    fn on_old_device(
        &mut self,
        now: u64,
        caches: &mut Caches<B>,
        rcv_nxt: SeqNumber,
        trim: bool,
        c2s: &mut C2sDelivery,
        seg: Seg,
        buf: B,
        budget: &mut Budget,
    ) -> Verdict<B> {
        if seg.has(TcpFlags::RST) {
            self.dev.gone = true;
            return Verdict::Consumed;
        }
        let before = self.dev.ack;
        Self::observe_device(&mut self.dev, &seg);
        if trim && self.dev.ack.diff(before) > 0 {
            let floor = self.dev.ack - self.cfg.keep_acked_bytes;
            caches.s2c.trim_below(floor, budget, drop);
        }
        let mut verdict = Verdict::Consumed;
        let closing = seg.has(TcpFlags::FIN) || self.dev.closing.is_some();
        let d = self.dev;
        let len = d.accept_end.map_or(seg.len, |e| {
            seg.len.min(u32::try_from(span(e, seg.seq)).unwrap_or(0))
        });
        if len > 0 && d.closing.is_none() {
            // Client data: the proxy takes responsibility (caches, ACKs, delivers to the
            // server).
            let stored = matches!(
                caches
                    .c2s
                    .insert(seg.seq + d.sp.c2s, buf.share(), seg.off, len, budget),
                Inserted::Stored(_)
            );
            if !closing {
                let ack = self.device_ack_field(&d, &caches.c2s);
                self.send_to_device(&d, d.ack + d.sp.s2c, ack, TcpFlags::ACK);
                self.dev.acked = self.dev.acked.max_seq(ack);
            }
            if stored && len == seg.len {
                verdict = Verdict::Forward(Leg::Server, self.frozen_c2s(&d, &seg, buf, rcv_nxt));
            } else if stored {
                // Only part of it is the old device's: the delivery timer sends it now.
                c2s.rto_us = C2sDelivery::INITIAL_RTO_US;
                c2s.next_at = Some(now);
            }
        }
        if closing {
            let mut leg = self.dev;
            let mut accepted = self.device_ack_field(&leg, &caches.c2s);
            if let Some(e) = leg.accept_end {
                accepted = accepted.min_seq(e);
            }
            self.closing_segment(now, &mut leg, &seg, accepted);
            self.dev = leg;
        }
        verdict
    }

    /// A device's data segment toward the server while it is frozen: client numbers translated,
    /// the freeze's ACK and a zero window (so it is never a window update or a duplicate ACK),
    /// SACK stripped or translated.
    fn frozen_c2s(&mut self, leg: &DeviceLeg, seg: &Seg, mut buf: B, rcv_nxt: SeqNumber) -> B {
        let mut sp = leg.sp;
        let strip_sack = !self.srv.sack;
        let mut tsval = None;
        rewrite(&mut buf, seg, |v| {
            sp.device_to_server(v, seg.seq, seg.ack.unwrap_or(rcv_nxt), seg.window);
            v.set_ack(rcv_nxt);
            v.set_window(0);
            // A device's FIN never reaches the frozen server.
            v.set_flags(seg.flags.0 & !TcpFlags::FIN);
            if strip_sack {
                v.strip_sack();
            }
            tsval = v.timestamps().map(|t| t.0);
        });
        if let Some(t) = tsval {
            if SeqNumber(t).diff(SeqNumber(self.srv.c_tsval)) > 0 {
                self.srv.c_tsval = t;
            }
        }
        let end = seg.seq + leg.sp.c2s + seg.len;
        if end.diff(self.srv.c_next) > 0 {
            self.srv.c_next = end;
        }
        buf
    }

    /// The target's SYN: fix the resume point and answer as a TCP endpoint.
    fn paused_from_target(
        &mut self,
        now: u64,
        p: Box<Paused<B>>,
        seg: Seg,
        buf: B,
    ) -> (State<B>, Verdict<B>) {
        if !seg.has(TcpFlags::SYN) || seg.ack.is_some() {
            // Anything else from the target before its SYN: not a connection yet.
            return (State::Paused(p), Verdict::Drop(buf));
        }
        let p = *p;
        let resume = match p.resume {
            Resume::Fixed(r) => r,
            Resume::FollowOld => self.dev.ack,
        };
        let s = self.srv;
        let ws = seg.ws.is_some();
        let ts = s.ts && seg.tsval.is_some();
        let isn = seg.seq;
        // //= DESIGN.md 3.5: "choose P's ISN toward C_new so that the offset is constant": the
        // ISN is the resume point minus one, so server and device numbers coincide (s2c = 0).
        let c2s = s.c_next.0.wrapping_sub((isn + 1).0);
        let ts_off = if ts {
            Some(
                s.c_tsval
                    .wrapping_add(1)
                    .wrapping_sub(seg.tsval.unwrap_or(0)),
            )
        } else {
            None
        };
        let mss = seg
            .mss
            .unwrap_or(536)
            .min(self.cfg.max_mss)
            .min(s.mss.max(536));
        let leg = DeviceLeg {
            gen: p.target,
            sp: Splice {
                s2c: 0,
                c2s,
                server_rcv_wscale: s.c_ws,
                device_wscale: if ws { seg.ws.unwrap_or(0).min(14) } else { 0 },
                ts: ts_off,
                server_sack: s.sack,
                device_sack: seg.sack_perm,
                replayed_end: resume,
                edge: resume,
                ack_floor: resume,
            },
            isn,
            nxt: isn + 1,
            ack: resume,
            fwd_end: resume,
            wnd_raw: seg.window,
            tsval: seg.tsval.unwrap_or(0),
            ws: if ws { seg.ws.unwrap_or(0).min(14) } else { 0 },
            ws_offered: ws,
            our_ws: if ws { s.s_ws } else { 0 },
            ts,
            sack: seg.sack_perm,
            mss,
            fin: false,
            gone: false,
            closing: None,
            acked: isn + 1,
            accept_end: None,
        };
        // The old device's bytes end where the target's begin.
        self.dev.accept_end = Some(s.c_next - self.dev.sp.c2s);
        let (end, fin) = data_end(&p.freeze);
        let sender = ReplaySender::new(
            self.cfg.sender,
            resume,
            end,
            fin,
            u32::from(leg.payload_mss()),
            0,
        );
        self.events.push_back(Event::Connected {
            device: p.target,
            resume_offset: self.offset_of(resume),
            client_offset: u64::from(s.c_next.0.wrapping_sub((self.srv.c_isn + 1).0)),
            at: now,
        });
        let r = Resuming {
            caches: p.caches,
            freeze: p.freeze,
            sender,
            leg: Some(leg),
            established: false,
            synack: (0, now + 1_000_000),
            c_fixed: s.c_next,
            // The target connected: the handshake is bounded by the SYN-ACK retransmissions
            // (and the absolute bound), no longer by the MFR deadline.
            deadline: u64::MAX,
            give_up: now + 10 * self.cfg.deadline_us,
            c2s: p.c2s,
        };
        self.syn_ack(&r);
        (State::Resuming(Box::new(r)), Verdict::Consumed)
    }

    /// //= rfc9293#section-3.5 the SYN-ACK toward the target: ISN = resume - 1; the server's
    /// window-scale factor offered (DESIGN.md: "Offer S's own scale factor to C_new"); MSS and
    /// SACK-permitted; TSval seeded with the server's latest TSval (RFC 7323 4.3).
    fn syn_ack(&mut self, r: &Resuming<B>) {
        let Some(leg) = r.leg else { return };
        let fields = TcpFields {
            seq: leg.ack - 1 + leg.sp.s2c,
            ack: leg.isn + 1,
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: u16::try_from(self.srv.wnd.min(0xffff)).unwrap_or(u16::MAX),
            mss: Some(leg.mss),
            wscale: leg.ws_offered.then_some(leg.our_ws),
            sack_perm: leg.sack,
            ts: self.device_ts(&leg),
        };
        self.push(Emit {
            to: Leg::Device(leg.gen),
            fields,
            payload_seq: fields.seq,
            payload_len: 0,
        });
    }

    fn resuming_from_server(
        &mut self,
        now: u64,
        mut r: Box<Resuming<B>>,
        seg: Seg,
        buf: B,
        budget: &mut Budget,
    ) -> (State<B>, Verdict<B>) {
        let una_before = self.srv.c_una;
        let failure = {
            let r = &mut *r;
            self.frozen_server(&mut r.caches, &mut r.freeze, seg, buf, budget)
        };
        if let Some(f) = failure {
            return (self.fail_resuming(now, r, f, budget), Verdict::Consumed);
        }
        let (end, fin) = data_end(&r.freeze);
        r.sender.extend(end, fin);
        if r.established && self.srv.c_una.diff(una_before) > 0 {
            // The server acknowledged client data: tell the device (its data rides to S).
            let leg = r.leg.unwrap_or(self.dev);
            let ack = self.device_ack_field(&leg, &r.caches.c2s);
            self.send_to_device(&leg, r.sender.snd_max() + leg.sp.s2c, ack, TcpFlags::ACK);
        }
        (self.check_resumed(now, r, budget), Verdict::Consumed)
    }

    fn resuming_from_target(
        &mut self,
        now: u64,
        mut r: Box<Resuming<B>>,
        seg: Seg,
        buf: B,
        budget: &mut Budget,
    ) -> (State<B>, Verdict<B>) {
        let mut leg = r.leg.unwrap_or(self.dev);
        if seg.has(TcpFlags::RST) {
            leg.gone = true;
            if let Some(l) = r.leg.as_mut() {
                *l = leg;
            } else {
                self.dev = leg;
            }
            return (
                self.fail_resuming(now, r, Failure::NewDeviceReset, budget),
                Verdict::Consumed,
            );
        }
        if !r.established {
            if seg.has(TcpFlags::SYN) {
                // Our SYN-ACK was lost: send it again.
                self.syn_ack(&r);
                return (State::Resuming(r), Verdict::Consumed);
            }
            if seg.ack != Some(leg.ack + leg.sp.s2c) {
                return (State::Resuming(r), Verdict::Drop(buf));
            }
            r.established = true;
            r.deadline = now + self.cfg.deadline_us;
            self.events.push_back(Event::Replaying {
                device: leg.gen,
                at: now,
            });
        }
        Self::observe_device(&mut leg, &seg);
        if let Some(a) = seg.ack {
            let una = r.sender.snd_una();
            r.sender.on_ack(now, a - leg.sp.s2c, leg.wnd_bytes());
            if r.sender.snd_una() != una {
                // Progress: the stall bound starts again.
                r.deadline = now + self.cfg.deadline_us;
            }
        }
        let mut verdict = Verdict::Consumed;
        if seg.len > 0 {
            // The device's data goes to the server at once (its sequence space translated), with
            // the freeze's ACK and a zero window; it joins the C->S cache.
            let cseq = seg.seq + leg.sp.c2s;
            let _ = r
                .caches
                .c2s
                .insert(cseq, buf.share(), seg.off, seg.len, budget);
            let rcv_nxt = r.freeze.rcv_nxt();
            verdict = Verdict::Forward(Leg::Server, self.frozen_c2s(&leg, &seg, buf, rcv_nxt));
            let ack = self.device_ack_field(&leg, &r.caches.c2s);
            if r.sender.poll_timeout().is_none() {
                self.send_to_device(&leg, r.sender.snd_max() + leg.sp.s2c, ack, TcpFlags::ACK);
            }
        }
        // A FIN from the target during the replay is not acknowledged yet: the device sends it
        // again and it passes through after the splice.
        if let Some(l) = r.leg.as_mut() {
            *l = leg;
        } else {
            self.dev = leg;
        }
        (self.check_resumed(now, r, budget), verdict)
    }

    /// //= DESIGN.md 3.4: "When everything cached is acknowledged, P forwards C_new's latest
    /// ACK (non-zero window) to S - an explicit window update - and returns to pass-through".
    fn check_resumed(&mut self, now: u64, r: Box<Resuming<B>>, budget: &mut Budget) -> State<B> {
        if !(r.established && r.sender.done() && self.srv.c_una.diff(r.c_fixed) >= 0) {
            return State::Resuming(r);
        }
        let mut r = *r;
        let ack = r.freeze.rcv_nxt();
        let mut leg = r.leg.unwrap_or(self.dev);
        leg.sp.replayed_end = r.sender.end();
        leg.sp.edge = ack;
        leg.sp.ack_floor = ack;
        let window = leg.sp.window_to_server(ack, leg.wnd_raw);
        if let Some(off) = leg.sp.ts {
            let v = leg.tsval.wrapping_add(off);
            if SeqNumber(v).diff(SeqNumber(self.srv.c_tsval)) > 0 {
                self.srv.c_tsval = v;
            }
        }
        let fields = TcpFields {
            seq: self.srv.c_next,
            ack,
            flags: TcpFlags::ACK,
            window,
            ts: self.server_ts(self.srv.ts_recent),
            ..TcpFields::default()
        };
        self.push(Emit {
            to: Leg::Server,
            fields,
            payload_seq: fields.seq,
            payload_len: 0,
        });
        let replayed = span(r.sender.end(), r.sender.start());
        self.stats.replayed_bytes += replayed;
        if r.leg.is_some() {
            self.stats.migrations += 1;
            let old = std::mem::replace(&mut self.dev, leg);
            self.retire(now, old);
        } else {
            self.dev = leg;
        }
        self.events.push_back(Event::Resumed {
            device: self.dev.gen,
            replayed,
            at: now,
        });
        let floor = self.dev.ack - self.cfg.keep_acked_bytes;
        r.caches.s2c.trim_below(floor, budget, drop);
        State::Forwarding(r.caches)
    }

    /// Starts closing a former device's sub-connection: the proxy's FIN after the data it
    /// received (its latest ACK), unless it is gone.
    fn retire(&mut self, now: u64, mut old: DeviceLeg) {
        if old.gone {
            return;
        }
        if old.closing.is_none() {
            let fin_seq = old.ack + old.sp.s2c;
            old.acked = old.closing_ack(old.accept_end.unwrap_or(old.acked));
            self.send_to_device(&old, fin_seq, old.acked, TcpFlags::FIN | TcpFlags::ACK);
            old.closing = Some(Closing {
                fin_seq,
                tries: 1,
                next_at: now + 1_000_000,
                acked: false,
            });
        }
        self.retiring = Some(old);
    }

    /// A segment from a device whose sub-connection is closing: answer its FIN, note the ACK of
    /// ours; a late ACK that shows more data received moves our FIN after it.
    fn closing_segment(&mut self, now: u64, leg: &mut DeviceLeg, seg: &Seg, accepted: SeqNumber) {
        if seg.has(TcpFlags::RST) {
            leg.gone = true;
            return;
        }
        Self::observe_device(leg, seg);
        if seg.has(TcpFlags::FIN) {
            leg.fin = true;
        }
        let Some(mut c) = leg.closing else {
            // //= rfc9293#section-3.6 case 2: the device closes first; the proxy answers with its
            // own FIN at once (the old device's stream ends here).
            let fin_seq = leg.ack + leg.sp.s2c;
            leg.closing = Some(Closing {
                fin_seq,
                tries: 1,
                next_at: now + 1_000_000,
                acked: false,
            });
            leg.acked = leg.closing_ack(accepted);
            let l = *leg;
            self.send_to_device(&l, fin_seq, l.acked, TcpFlags::FIN | TcpFlags::ACK);
            return;
        };
        leg.acked = leg.closing_ack(accepted);
        if seg.ack == Some(c.fin_seq + 1) {
            c.acked = true;
        } else if let Some(a) = seg.ack.filter(|a| !c.acked && a.diff(c.fin_seq) > 0) {
            // The device had received more than its last ACK said: our FIN goes after that.
            c.fin_seq = a;
            let l = *leg;
            self.send_to_device(&l, a, l.acked, TcpFlags::FIN | TcpFlags::ACK);
        } else if seg.has(TcpFlags::FIN) || seg.len > 0 {
            let l = *leg;
            let seq = c.fin_seq + u32::from(c.acked);
            let flags = if c.acked {
                TcpFlags::ACK
            } else {
                TcpFlags::FIN | TcpFlags::ACK
            };
            self.send_to_device(&l, seq, l.acked, flags);
        }
        leg.closing = Some(c);
    }

    fn on_retiring(&mut self, now: u64, seg: Seg) {
        let Some(mut leg) = self.retiring else { return };
        let accepted = leg.accept_end.unwrap_or(leg.acked);
        self.closing_segment(now, &mut leg, &seg, accepted);
        let done = leg.gone || (leg.fin && leg.closing.is_some_and(|c| c.acked));
        self.retiring = (!done).then_some(leg);
    }

    /// The control plane learned that device `gen` is unreachable (link down, agent gone).
    pub fn device_gone(&mut self, gen: u32) {
        if self.dev.gen == gen {
            self.dev.gone = true;
        }
        if self.retiring.is_some_and(|l| l.gen == gen) {
            self.retiring = None;
        }
    }

    fn fail_resuming(
        &mut self,
        now: u64,
        r: Box<Resuming<B>>,
        f: Failure,
        budget: &mut Budget,
    ) -> State<B> {
        let r = *r;
        let old_is_target = r.leg.is_none();
        self.fail(now, f, r.caches, r.freeze, r.leg, old_is_target, budget)
    }

    /// //= DESIGN.md 3.6: "cancel and resume on C_old where it still exists, else a clean reset
    /// of both ends".
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &mut self,
        now: u64,
        reason: Failure,
        mut caches: Caches<B>,
        freeze: Freeze,
        target: Option<DeviceLeg>,
        old_is_target: bool,
        budget: &mut Budget,
    ) -> State<B> {
        if let Some(t) = target {
            if !t.gone {
                self.reset_device(&t);
            }
        }
        // The old device can take the flow back only if the target's data did not reach the
        // server (its client numbers continue the old device's).
        let target_sent = target.is_some_and(|t| t.nxt != t.isn + 1);
        let cancellable = !matches!(reason, Failure::ServerReset | Failure::ClientDataLost);
        if self.dev.alive() && !old_is_target && !target_sent && cancellable {
            self.stats.cancelled += 1;
            self.events.push_back(Event::Cancelled {
                reason,
                back_to: self.dev.gen,
                at: now,
            });
            // The old device holds the flow again: its bytes no longer end where the target's
            // would have begun.
            self.dev.accept_end = None;
            let (end, fin) = data_end(&freeze);
            let d = self.dev;
            // Replay what the old device has not acknowledged (or, if the cache starts later
            // because of an explicit resume offset, from the cache's start).
            let from = caches.s2c.first_seq().map_or(d.ack, |f| d.ack.max_seq(f));
            // The old device's last ACK seen lags by a round trip: what the proxy forwarded to it
            // is in flight, not to be sent again (its duplicate ACKs would reach the server
            // after the splice); only the bytes cached while frozen are new to it.
            let sender = ReplaySender::new(
                self.cfg.sender,
                from,
                end,
                fin,
                u32::from(d.payload_mss()),
                d.wnd_bytes(),
            )
            .with_in_flight(now, d.fwd_end);
            let r = Box::new(Resuming {
                caches,
                freeze,
                sender,
                leg: None,
                established: true,
                synack: (0, u64::MAX),
                c_fixed: self.srv.c_next,
                deadline: now + self.cfg.deadline_us,
                give_up: now + 10 * self.cfg.deadline_us,
                c2s: C2sDelivery::new(),
            });
            // Nothing may be left to send (the old device has it all): splice at once.
            return self.check_resumed(now, r, budget);
        }
        // Nobody can take the stream: reset both ends cleanly.
        self.stats.reset += 1;
        self.events.push_back(Event::Reset { reason, at: now });
        if reason != Failure::ServerReset {
            let ts = self.server_ts(self.srv.ts_recent);
            self.push(Emit {
                to: Leg::Server,
                fields: TcpFields {
                    seq: self.srv.c_next,
                    ack: freeze.rcv_nxt(),
                    flags: TcpFlags::RST | TcpFlags::ACK,
                    ts,
                    ..TcpFields::default()
                },
                payload_seq: self.srv.c_next,
                payload_len: 0,
            });
        }
        if !self.dev.gone {
            let d = self.dev;
            self.reset_device(&d);
            self.dev.gone = true;
        }
        caches.release(budget);
        State::Closed(Some(reason))
    }

    // ------------------------------------------------------------------------------------
    // Time
    // ------------------------------------------------------------------------------------

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        let state = match &self.state {
            State::Paused(p) => [Some(p.deadline), p.c2s.next_at, None, None]
                .into_iter()
                .flatten()
                .min(),
            State::Resuming(r) => {
                let hs = (!r.established).then_some(r.synack.1);
                [
                    hs,
                    Some(r.deadline.min(r.give_up)),
                    r.sender.poll_timeout(),
                    r.c2s.next_at,
                ]
                .into_iter()
                .flatten()
                .min()
            }
            _ => None,
        };
        let retiring = self
            .retiring
            .and_then(|l| l.closing)
            .filter(|c| !c.acked)
            .map(|c| c.next_at);
        let closing_old = match &self.state {
            State::Paused(_) | State::Resuming(_) => {
                self.dev.closing.filter(|c| !c.acked).map(|c| c.next_at)
            }
            _ => None,
        };
        [state, retiring, closing_old].into_iter().flatten().min()
    }

    /// Time passed: fire what is due.
    pub fn on_timeout(&mut self, now: u64, budget: &mut Budget) {
        self.retransmit_fins(now);
        let state = std::mem::replace(&mut self.state, State::Closed(None));
        self.state = match state {
            State::Paused(mut p) => {
                if now >= p.deadline {
                    // //= DESIGN.md 3 "bound it by a configurable migration deadline".
                    let p = *p;
                    self.fail(
                        now,
                        Failure::Deadline,
                        p.caches,
                        p.freeze,
                        None,
                        false,
                        budget,
                    )
                } else {
                    let rcv_nxt = p.freeze.rcv_nxt();
                    self.deliver_c2s(now, &mut p.c2s, &p.caches.c2s, rcv_nxt);
                    State::Paused(p)
                }
            }
            State::Resuming(r) => self.resuming_timeout(now, r, budget),
            s => s,
        };
        self.arm_c2s(now);
    }

    fn resuming_timeout(
        &mut self,
        now: u64,
        mut r: Box<Resuming<B>>,
        budget: &mut Budget,
    ) -> State<B> {
        if now >= r.deadline.min(r.give_up) {
            // Before the handshake: the target did not connect in time; after it: the replay
            // made no progress for a whole deadline, or the server still waits for client bytes
            // the proxy never received (the old device would have retransmitted them by now).
            let hole = {
                let una = self.srv.c_una;
                una.diff(r.c_fixed) < 0 && r.caches.c2s.first_seq().is_none_or(|f| f.diff(una) > 0)
            };
            let why = if !r.established {
                Failure::Deadline
            } else if r.sender.done() && hole {
                Failure::ClientDataLost
            } else {
                Failure::ReplayStalled
            };
            return self.fail_resuming(now, r, why, budget);
        }
        if !r.established && now >= r.synack.1 {
            if r.synack.0 >= self.cfg.synack_retries {
                return self.fail_resuming(now, r, Failure::NewDeviceSilent, budget);
            }
            // //= rfc6298#section-5 (5.5): back off the SYN-ACK timer.
            r.synack.0 += 1;
            r.synack.1 = now + (1_000_000u64 << r.synack.0.min(6));
            self.syn_ack(&r);
        }
        r.sender.on_timeout(now);
        if r.sender.consecutive_timeouts() > self.cfg.replay_timeouts {
            return self.fail_resuming(now, r, Failure::ReplayStalled, budget);
        }
        let rcv_nxt = r.freeze.rcv_nxt();
        let r2 = &mut *r;
        self.deliver_c2s(now, &mut r2.c2s, &r2.caches.c2s, rcv_nxt);
        State::Resuming(r)
    }

    /// Client bytes the proxy holds and the server has not acknowledged: send the first
    /// unacknowledged segment again when its timer expires (RFC 6298 backoff).
    fn deliver_c2s(
        &mut self,
        now: u64,
        d: &mut C2sDelivery,
        c2s: &SegmentCache<B>,
        rcv_nxt: SeqNumber,
    ) {
        let una = self.srv.c_una;
        let outstanding = c2s.end_seq().is_some_and(|e| e.diff(una) > 0);
        if !outstanding {
            d.next_at = None;
            d.rto_us = C2sDelivery::INITIAL_RTO_US;
            return;
        }
        match d.next_at {
            None => d.next_at = Some(now + d.rto_us),
            Some(at) if now >= at => {
                let len: u32 = c2s
                    .runs_from(una, u32::from(self.srv.mss.max(536)))
                    .take_while({
                        let mut at = una;
                        move |(s, b)| {
                            let ok = *s == at;
                            at = *s + u32::try_from(b.len()).unwrap_or(0);
                            ok
                        }
                    })
                    .map(|(_, b)| u32::try_from(b.len()).unwrap_or(0))
                    .sum();
                if len > 0 {
                    self.stats.c2s_retransmits += u64::from(len);
                    let ts = self.server_ts(self.srv.ts_recent);
                    self.push(Emit {
                        to: Leg::Server,
                        fields: TcpFields {
                            seq: una,
                            ack: rcv_nxt,
                            flags: TcpFlags::ACK | TcpFlags::PSH,
                            window: 0,
                            ts,
                            ..TcpFields::default()
                        },
                        payload_seq: una,
                        payload_len: len,
                    });
                }
                d.rto_us = (d.rto_us * 2).min(8_000_000);
                d.next_at = Some(now + d.rto_us);
            }
            Some(_) => {}
        }
    }

    fn retransmit_fins(&mut self, now: u64) {
        let max = self.cfg.fin_retries;
        for which in [true, false] {
            let leg = if which {
                self.retiring
            } else if matches!(self.state, State::Paused(_) | State::Resuming(_)) {
                Some(self.dev)
            } else {
                None
            };
            let Some(mut leg) = leg else { continue };
            let Some(mut c) = leg.closing else { continue };
            if c.acked || now < c.next_at {
                continue;
            }
            if c.tries > max {
                // The device does not answer: forget its sub-connection.
                leg.gone = true;
            } else {
                c.tries += 1;
                c.next_at = now + (1_000_000u64 << c.tries.min(6));
                leg.closing = Some(c);
                self.send_to_device(&leg, c.fin_seq, leg.acked, TcpFlags::FIN | TcpFlags::ACK);
            }
            if which {
                self.retiring = (!leg.gone).then_some(leg);
            } else {
                self.dev = leg;
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------------------------

    /// The next segment the proxy originates, if any.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Emit> {
        if let Some(e) = self.out.pop_front() {
            return Some(e);
        }
        let State::Resuming(r) = &mut self.state else {
            return None;
        };
        if !r.established {
            return None;
        }
        let t = r.sender.poll_transmit(now)?;
        let leg = r.leg.unwrap_or(self.dev);
        let ack = device_ack(self.srv.c_una, &leg, &r.caches.c2s);
        let mut flags = TcpFlags::ACK;
        if t.len > 0 {
            flags |= TcpFlags::PSH;
        }
        if t.fin {
            flags |= TcpFlags::FIN;
        }
        let fields = TcpFields {
            seq: t.seq + leg.sp.s2c,
            ack,
            flags,
            window: self.window_to_device(&leg),
            ts: self.device_ts(&leg),
            ..TcpFields::default()
        };
        self.stats.emitted += 1;
        Some(Emit {
            to: Leg::Device(leg.gen),
            fields,
            payload_seq: t.seq,
            payload_len: t.len,
        })
    }

    /// The payload of `e`, as slices of cached buffers, in order.
    pub fn payload(&self, e: &Emit) -> impl Iterator<Item = &[u8]> + '_ {
        let (seq, len) = (e.payload_seq, e.payload_len);
        let cache = match (&self.state, e.to) {
            (State::Paused(p), Leg::Server) => Some(&p.caches.c2s),
            (State::Resuming(r), Leg::Server) => Some(&r.caches.c2s),
            (State::Resuming(r), Leg::Device(_)) => Some(&r.caches.s2c),
            _ => None,
        };
        cache
            .into_iter()
            .flat_map(move |c| c.runs_from(seq, len))
            .map(|(_, b)| b)
    }
}

/// The ACK field toward a device: client bytes the server acknowledged (`c_una`) or the proxy
/// holds, in the device's numbers, never below its first byte and never beyond where its own
/// bytes end (`accept_end`).
fn device_ack<B: AsRef<[u8]>>(
    c_una: SeqNumber,
    leg: &DeviceLeg,
    c2s: &SegmentCache<B>,
) -> SeqNumber {
    let held = c2s.contiguous_end(c_una).max_seq(c_una);
    let ack = (held - leg.sp.c2s).max_seq(leg.isn + 1);
    leg.accept_end.map_or(ack, |e| ack.min_seq(e))
}

/// A segment that occupies no sequence space (no data, SYN, FIN or RST). After a timeout some
/// stacks (smoltcp) rewind SND.NXT and send such ACKs with a sequence number below what the
/// peer already acknowledged; the peer drops them as out of window, ACK included (RFC 9293
/// 3.10.7.4), and two such stacks can livelock. The proxy lifts the number to the receiver's
/// last ACK: the segment means the same and is acceptable.
fn pure_ack(seg: &Seg) -> bool {
    seg.len == 0
        && seg.ack.is_some()
        && !seg.has(TcpFlags::SYN)
        && !seg.has(TcpFlags::FIN)
        && !seg.has(TcpFlags::RST)
}

/// Bytes from `from` up to `to` (0 when `to` is not after `from`).
fn span(to: SeqNumber, from: SeqNumber) -> u64 {
    u64::from(u32::try_from(to.diff(from)).unwrap_or(0))
}

/// The end of the cached server data and whether the server's FIN follows it.
fn data_end(f: &Freeze) -> (SeqNumber, bool) {
    match f.fin() {
        Some(fin) => (fin, true),
        None => (f.rcv_nxt(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::{tcp_frame_len, write_tcp_frame, Endpoints};

    const S_ISN: u32 = 0xffff_f000; // wraps during the tests
    const C_ISN: u32 = 7_000;
    const TS_S: u32 = 50_000;

    fn frame(f: TcpFields, payload: usize) -> Vec<u8> {
        let data = vec![0xa5u8; payload];
        let mut buf = vec![0u8; tcp_frame_len(&f, payload)];
        write_tcp_frame(&mut buf, &Endpoints::default(), &f, &[&data]).unwrap();
        buf
    }

    struct T {
        e: Engine<Vec<u8>>,
        b: Budget,
        now: u64,
    }

    impl T {
        /// A flow through its handshake: both ends offer MSS 1460, window scale 7, SACK and
        /// timestamps.
        fn established(cfg: EngineConfig, budget: u64) -> T {
            let mut t = T {
                e: Engine::new(cfg),
                b: Budget::new(budget),
                now: 0,
            };
            let syn = TcpFields {
                seq: SeqNumber(C_ISN),
                flags: TcpFlags::SYN,
                window: 65_535,
                mss: Some(1460),
                wscale: Some(7),
                sack_perm: true,
                ts: Some((100, 0)),
                ..TcpFields::default()
            };
            t.feed(Leg::Device(0), frame(syn, 0));
            let syn_ack = TcpFields {
                seq: SeqNumber(S_ISN),
                ack: SeqNumber(C_ISN + 1),
                flags: TcpFlags::SYN | TcpFlags::ACK,
                window: 65_535,
                mss: Some(1460),
                wscale: Some(7),
                sack_perm: true,
                ts: Some((TS_S, 100)),
            };
            t.feed(Leg::Server, frame(syn_ack, 0));
            t.device_ack(0);
            assert_eq!(t.e.phase(), Phase::Forwarding);
            t
        }

        fn feed(&mut self, from: Leg, f: Vec<u8>) -> bool {
            self.now += 1_000;
            matches!(
                self.e.on_segment(self.now, from, f, &mut self.b),
                Verdict::Forward(..)
            )
        }

        /// Server data at stream offset `off`.
        fn server_data(&mut self, off: u32, len: usize) -> bool {
            let f = TcpFields {
                seq: SeqNumber(S_ISN) + 1 + off,
                ack: SeqNumber(C_ISN + 1),
                flags: TcpFlags::ACK,
                window: 1_000,
                ts: Some((TS_S + off, 100)),
                ..TcpFields::default()
            };
            self.feed(Leg::Server, frame(f, len))
        }

        /// The device acknowledges up to stream offset `off` with a 1 MiB window.
        fn device_ack(&mut self, off: u32) -> bool {
            let f = TcpFields {
                seq: SeqNumber(C_ISN + 1),
                ack: SeqNumber(S_ISN) + 1 + off,
                flags: TcpFlags::ACK,
                window: 8_192,
                ts: Some((200, TS_S)),
                ..TcpFields::default()
            };
            self.feed(Leg::Device(0), frame(f, 0))
        }

        fn sent_to_server(&mut self) -> Vec<TcpFields> {
            let mut v = Vec::new();
            while let Some(e) = self.e.poll_transmit(self.now) {
                if e.to == Leg::Server {
                    v.push(e.fields);
                }
            }
            v
        }
    }

    fn off(a: SeqNumber) -> u32 {
        a.0.wrapping_sub(S_ISN.wrapping_add(1))
    }

    #[test]
    fn refusals_change_nothing() {
        let mut e: Engine<Vec<u8>> = Engine::new(EngineConfig::default());
        let mut b = Budget::new(1 << 20);
        assert_eq!(
            e.migrate(0, None, &mut b),
            Err(MigrateError::NotEstablished)
        );
        let mut t = T::established(EngineConfig::default(), 1 << 20);
        for i in 0..4 {
            assert!(t.server_data(i * 1000, 1000));
        }
        assert!(t.device_ack(3000));
        let now = t.now;
        assert!(matches!(
            t.e.migrate(now, Some(9_000), &mut t.b),
            Err(MigrateError::OffsetBeyondStream {
                offset: 9_000,
                sent: 4_000
            })
        ));
        assert!(matches!(
            t.e.migrate(now, Some(1_000), &mut t.b),
            Err(MigrateError::NotCached {
                offset: 1_000,
                first_cached: 3_000
            })
        ));
        assert_eq!(t.e.phase(), Phase::Forwarding);
        assert_eq!(t.e.migrate(now, None, &mut t.b), Ok(1));
        assert_eq!(
            t.e.migrate(now, None, &mut t.b),
            Err(MigrateError::AlreadyMigrating)
        );
    }

    #[test]
    fn the_freeze_acknowledges_everything_in_flight_with_a_zero_window() {
        let mut t = T::established(EngineConfig::default(), 1 << 20);
        for i in 0..5 {
            t.server_data(i * 1000, 1000);
        }
        t.device_ack(2000);
        let _ = t.sent_to_server();
        let now = t.now;
        t.e.migrate(now, None, &mut t.b).unwrap();
        let acks = t.sent_to_server();
        assert_eq!(acks.len(), 1);
        assert_eq!(off(acks[0].ack), 5000, "everything the server sent");
        assert_eq!(acks[0].window, 0);
        assert_eq!(
            acks[0].ts.map(|t| t.1),
            Some(TS_S + 4000),
            "TSecr echoes S's latest TSval"
        );
        // A late segment is cached and acknowledged at once, still with a zero window.
        assert!(!t.server_data(5000, 1000), "consumed, not forwarded");
        let acks = t.sent_to_server();
        assert_eq!((off(acks[0].ack), acks[0].window), (6000, 0));
        // Linux's probe (an empty segment at SND.UNA - 1) gets ACK(next, 0).
        let probe = TcpFields {
            seq: SeqNumber(S_ISN) + 1 + 5999,
            ack: SeqNumber(C_ISN + 1),
            flags: TcpFlags::ACK,
            window: 1000,
            ..TcpFields::default()
        };
        t.feed(Leg::Server, frame(probe, 0));
        let acks = t.sent_to_server();
        assert_eq!((off(acks[0].ack), acks[0].window), (6000, 0));
        // The old device's ACKs, FIN and RST never reach the server.
        assert!(!t.device_ack(5000));
        let fin = TcpFields {
            seq: SeqNumber(C_ISN + 1),
            ack: SeqNumber(S_ISN) + 1 + 5000,
            flags: TcpFlags::FIN | TcpFlags::ACK,
            window: 8192,
            ..TcpFields::default()
        };
        assert!(!t.feed(Leg::Device(0), frame(fin, 0)));
        assert!(t.sent_to_server().is_empty());
        // The old device's ACK moved the default resume point to 5000: only the late segment
        // [5000, 6000) waits in the cache.
        assert_eq!(t.e.cache_bytes(), 1000);
    }

    #[test]
    fn the_cache_filling_up_while_frozen_cancels_back_to_the_old_device() {
        // The worker's budget holds 6000 bytes: the rolling cache uses 2000 of them, late
        // segments fill the rest and then overflow.
        let mut t = T::established(EngineConfig::default(), 6_000);
        for i in 0..4 {
            t.server_data(i * 1000, 1000);
        }
        t.device_ack(2000);
        let now = t.now;
        t.e.migrate(now, None, &mut t.b).unwrap();
        let _ = t.sent_to_server();
        for i in 4..9 {
            t.server_data(i * 1000, 1000);
        }
        let events: Vec<Event> = std::iter::from_fn(|| t.e.poll_event()).collect();
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::Cancelled {
                    reason: Failure::CacheFull,
                    back_to: 0,
                    ..
                }
            )),
            "{events:?}"
        );
        // Never an ACK beyond what is cached.
        for a in t.sent_to_server() {
            assert!(off(a.ack) <= 8000, "{a:?}");
        }
        assert!(t.b.used <= t.b.limit);
    }

    #[test]
    fn after_a_cancel_the_old_device_is_whole_again() {
        let mut t = T::established(EngineConfig::default(), 1 << 20);
        for i in 0..3 {
            t.server_data(i * 1000, 1000);
        }
        t.device_ack(3000);
        let now = t.now;
        assert_eq!(t.e.migrate(now, None, &mut t.b), Ok(1));
        // The target connects, then resets: the flow goes back to the phone.
        let syn = TcpFields {
            seq: SeqNumber(90_000),
            flags: TcpFlags::SYN,
            window: 65_535,
            mss: Some(1460),
            ..TcpFields::default()
        };
        t.feed(Leg::Device(1), frame(syn, 0));
        let rst = TcpFields {
            seq: SeqNumber(90_001),
            flags: TcpFlags::RST,
            ..TcpFields::default()
        };
        t.feed(Leg::Device(1), frame(rst, 0));
        t.device_ack(3000);
        assert_eq!(t.e.phase(), Phase::Forwarding, "back on the phone");
        // A second migration: the phone's client data is still accepted and delivered.
        let now = t.now;
        assert_eq!(t.e.migrate(now, None, &mut t.b), Ok(2));
        let data = TcpFields {
            seq: SeqNumber(C_ISN + 1),
            ack: SeqNumber(S_ISN) + 1 + 3000,
            flags: TcpFlags::ACK,
            window: 8_192,
            ts: Some((300, TS_S)),
            ..TcpFields::default()
        };
        assert!(
            t.feed(Leg::Device(0), frame(data, 100)),
            "the phone's data goes to the server"
        );
    }
}
