//! The per-flow migration engine: the state machine that ties the rolling cache, the freeze, the
//! resumption sender and the splice together (draft section 4.3; docs/migration.md).
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

mod closing;
mod forwarding;
mod guard;
mod output;
mod paused;
mod resuming;
mod state;
mod timers;

use state::*;

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
    /// Least time between two challenge ACKs of one flow, microseconds (Linux:
    /// `tcp_invalid_ratelimit`, 500 ms): a flood of blind RSTs or SYNs gets few answers.
    pub challenge_interval_us: u64,
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
            challenge_interval_us: 500_000,
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
    /// Segments refused as blind (see the guard: out of window, an ACK of unsent bytes).
    pub blind_dropped: u64,
    /// Challenge ACKs sent on an end's behalf.
    pub challenged: u64,
    /// RSTs sent at an end's own ACK after the proxy reset the flow (the first RST missed its
    /// RCV.NXT and the end challenged it).
    pub resets_answered: u64,
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
    /// When the last challenge ACK left (`None`: never).
    challenged_at: Option<u64>,
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
            challenged_at: None,
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
        if matches!(self.state, State::Forwarding(_)) && !self.accept(now, from, &seg) {
            return Verdict::Drop(buf);
        }
        let state = std::mem::replace(&mut self.state, State::Closed(None));
        // Every (state, input) pair is decided here; each arm's handler returns the next state.
        let (state, v) = match (state, from) {
            // //= rfc9293#section-3.5: the handshake passes through; options are learned.
            (State::Handshake, from) => self.handshake(from, seg, buf),
            // //= draft 4.2: "TSMPP ... splices and rewrites" segments between the two
            // sub-connections; docs/migration.md step 2: the rolling caches keep what is unacknowledged.
            (State::Forwarding(c), Leg::Server) => self.fwd_from_server(c, seg, buf, budget),
            (State::Forwarding(c), Leg::Device(g)) if g == self.dev.gen => {
                self.fwd_from_device(c, seg, buf, budget)
            }
            // //= draft 4.3.1: "generate and send their ACK packets to the sender in advance on
            // behalf of the new receiver ... window size (zero)".
            (State::Paused(p), Leg::Server) => self.paused_from_server(now, p, seg, buf, budget),
            // docs/migration.md step 2: "C_old's ACKs are consumed by P ... never let C_old's FIN/RST reach
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
            // The server stays frozen until the replay is acknowledged (docs/migration.md step 4).
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
            // After the proxy reset both ends: an end that still answers (its RCV.NXT was not
            // where the reset was aimed, so it sent a challenge ACK, RFC 5961 3.2) gets the
            // RST a closed connection sends, at its own ACK (RFC 9293 3.10.7.1): exact.
            (State::Closed(Some(f)), from) => {
                if let (Some(ack), false) = (seg.ack, seg.has(TcpFlags::RST)) {
                    self.stats.resets_answered += 1;
                    self.push(Emit {
                        to: from,
                        fields: TcpFields {
                            seq: ack,
                            flags: TcpFlags::RST,
                            ..TcpFields::default()
                        },
                        payload_seq: ack,
                        payload_len: 0,
                    });
                }
                (State::Closed(Some(f)), Verdict::Drop(buf))
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
}

#[cfg(test)]
mod tests;
