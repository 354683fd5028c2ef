//! The engine's private state: the legs (server, devices), the caches a pause and a resumption
//! own, the phases' data ([`State`] carries it: a cache cannot outlive its phase), the parsed
//! segment, and the small helpers every phase uses.

use super::*;

/// The server's sub-connection, as the proxy observed and shaped it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ServerLeg {
    pub(super) s_isn: SeqNumber,
    /// The client side's ISN as the server knows it.
    pub(super) c_isn: SeqNumber,
    /// One past the highest server data byte seen (FIN excluded).
    pub(super) s_next: SeqNumber,
    pub(super) s_fin: bool,
    pub(super) ts_recent: Option<u32>,
    /// One past the highest client byte sent to the server (FIN included).
    pub(super) c_next: SeqNumber,
    /// The server's latest ACK (client space).
    pub(super) c_una: SeqNumber,
    /// The latest TSval the server received from the client side.
    pub(super) c_tsval: u32,
    /// Shift of the server's windows.
    pub(super) s_ws: u8,
    /// Shift the server applies to windows it receives.
    pub(super) c_ws: u8,
    pub(super) ts: bool,
    pub(super) sack: bool,
    pub(super) mss: u16,
    /// The server's receive window, bytes.
    pub(super) wnd: u32,
    pub(super) rst: bool,
}

/// Closing a device's sub-connection from the proxy's side.
#[derive(Debug, Clone, Copy)]
pub(super) struct Closing {
    /// Sequence number of the proxy's FIN (device space).
    pub(super) fin_seq: SeqNumber,
    pub(super) tries: u32,
    pub(super) next_at: u64,
    pub(super) acked: bool,
}

/// One device's sub-connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct DeviceLeg {
    pub(super) gen: u32,
    pub(super) sp: Splice,
    /// The device's ISN (device space).
    pub(super) isn: SeqNumber,
    /// One past the highest sequence number the device sent (device space, FIN included).
    pub(super) nxt: SeqNumber,
    /// The device's latest ACK (server space).
    pub(super) ack: SeqNumber,
    /// One past the highest server byte forwarded to it (server space).
    pub(super) fwd_end: SeqNumber,
    pub(super) wnd_raw: u16,
    pub(super) tsval: u32,
    /// Shift of the device's windows.
    pub(super) ws: u8,
    /// The device's SYN carried the window-scale option.
    pub(super) ws_offered: bool,
    /// Shift of the windows the proxy sends it.
    pub(super) our_ws: u8,
    pub(super) ts: bool,
    pub(super) sack: bool,
    pub(super) mss: u16,
    pub(super) fin: bool,
    pub(super) gone: bool,
    pub(super) closing: Option<Closing>,
    /// The highest ACK the device was sent (device space).
    pub(super) acked: SeqNumber,
    /// Once a target connected: one past the last of this device's bytes the server gets
    /// (device space). The proxy never acknowledges beyond it.
    pub(super) accept_end: Option<SeqNumber>,
}

impl DeviceLeg {
    /// Payload bytes per segment toward this device: the MSS it announced counts no TCP
    /// options (RFC 9293 3.7.1), so the timestamps option the proxy sends comes off it.
    pub(super) fn payload_mss(&self) -> u16 {
        self.mss
            .saturating_sub(if self.ts { 12 } else { 0 })
            .max(64)
    }

    /// The ACK field toward a closing device: what was accepted, plus its FIN if that directly
    /// follows.
    pub(super) fn closing_ack(&self, accepted: SeqNumber) -> SeqNumber {
        if self.fin && accepted + 1 == self.nxt {
            self.nxt
        } else {
            accepted
        }
    }

    pub(super) fn alive(&self) -> bool {
        !self.gone && !self.fin && self.closing.is_none()
    }

    pub(super) fn wnd_bytes(&self) -> u32 {
        u32::from(self.wnd_raw) << self.ws
    }
}

/// The two directions' caches of a flow.
#[derive(Debug)]
pub(super) struct Caches<B> {
    /// Server -> client bytes (server space).
    pub(super) s2c: SegmentCache<B>,
    /// Client -> server bytes (client space).
    pub(super) c2s: SegmentCache<B>,
}

impl<B: SharedBuf> Caches<B> {
    pub(super) fn release(&mut self, budget: &mut Budget) {
        self.s2c.clear(budget, drop);
        self.c2s.clear(budget, drop);
    }
}

/// Delivery of cached client bytes to the server while the proxy is responsible for them.
#[derive(Debug, Clone, Copy)]
pub(super) struct C2sDelivery {
    pub(super) rto_us: u64,
    pub(super) next_at: Option<u64>,
    /// The server's ACK when the timer was last (re)started.
    pub(super) una: SeqNumber,
}

impl C2sDelivery {
    pub(super) const INITIAL_RTO_US: u64 = 300_000;

    pub(super) fn new() -> C2sDelivery {
        C2sDelivery {
            rto_us: Self::INITIAL_RTO_US,
            next_at: None,
            una: SeqNumber(0),
        }
    }
}

/// Where the resume point comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resume {
    /// The old device's latest ACK, until the target connects.
    FollowOld,
    /// An explicit application offset.
    Fixed(SeqNumber),
}

#[derive(Debug)]
pub(super) struct Paused<B> {
    pub(super) caches: Caches<B>,
    pub(super) freeze: Freeze,
    pub(super) resume: Resume,
    pub(super) target: u32,
    pub(super) deadline: u64,
    pub(super) c2s: C2sDelivery,
}

#[derive(Debug)]
pub(super) struct Resuming<B> {
    pub(super) caches: Caches<B>,
    pub(super) freeze: Freeze,
    pub(super) sender: ReplaySender,
    /// The target leg; `None` when the flow goes back to the old device (`Engine::dev`).
    pub(super) leg: Option<DeviceLeg>,
    pub(super) established: bool,
    /// SYN-ACK retransmissions so far and the next one's time.
    pub(super) synack: (u32, u64),
    /// Client bytes below this are the old device's (the proxy delivers them).
    pub(super) c_fixed: SeqNumber,
    /// Stall bound: no progress for a whole migration deadline.
    pub(super) deadline: u64,
    /// Absolute bound: ten deadlines after the resumption began (a server's one-byte window
    /// probes are progress, yet must not keep a resumption alive forever).
    pub(super) give_up: u64,
    pub(super) c2s: C2sDelivery,
}

/// The migration state; the caches live inside the states that need them.
#[derive(Debug)]
pub(super) enum State<B> {
    Handshake,
    Forwarding(Caches<B>),
    Paused(Box<Paused<B>>),
    Resuming(Box<Resuming<B>>),
    Closed(Option<Failure>),
}

/// What the engine needs of one segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seg {
    pub(super) seq: SeqNumber,
    pub(super) ack: Option<SeqNumber>,
    pub(super) flags: TcpFlags,
    pub(super) window: u16,
    pub(super) len: u32,
    pub(super) off: usize,
    pub(super) tsval: Option<u32>,
    pub(super) mss: Option<u16>,
    pub(super) ws: Option<u8>,
    pub(super) sack_perm: bool,
    /// The checked offsets of the frame (rewriting in place does not move them).
    pub(super) meta: TcpMeta,
}

impl Seg {
    pub(super) fn has(&self, f: u8) -> bool {
        self.flags.has(f)
    }

    pub(super) fn end(&self) -> SeqNumber {
        self.seq + self.len
    }
}

pub(super) fn parse(f: &mut [u8], m: TcpMeta) -> Option<Seg> {
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
pub(super) fn rewrite<B: SharedBuf>(
    buf: &mut B,
    seg: &Seg,
    f: impl FnOnce(&mut TcpSegmentMut<'_>),
) {
    if let Some(mut v) = TcpSegmentMut::new(buf.as_mut(), &seg.meta) {
        f(&mut v);
    }
}

/// The ACK field toward a device: client bytes the server acknowledged (`c_una`) or the proxy
/// holds, in the device's numbers, never below its first byte and never beyond where its own
/// bytes end (`accept_end`).
pub(super) fn device_ack<B: AsRef<[u8]>>(
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
pub(super) fn pure_ack(seg: &Seg) -> bool {
    seg.len == 0
        && seg.ack.is_some()
        && !seg.has(TcpFlags::SYN)
        && !seg.has(TcpFlags::FIN)
        && !seg.has(TcpFlags::RST)
}

/// Whether a pure ACK at `seq` is lifted to the receiver's last ACK `acked`: when it lies below
/// it, except exactly one below. That one is a keep-alive or a zero-window probe (RFC 9293
/// 3.8.4, Linux sends both at SND.UNA - 1): the receiver must see it out of window to answer
/// it, and lifted it would be a duplicate ACK nobody answers (the prober gives up).
pub(super) fn liftable(seq: SeqNumber, acked: SeqNumber) -> bool {
    acked.diff(seq) > 1
}

/// Bytes from `from` up to `to` (0 when `to` is not after `from`).
pub(super) fn span(to: SeqNumber, from: SeqNumber) -> u64 {
    u64::from(u32::try_from(to.diff(from)).unwrap_or(0))
}

/// The end of the cached server data and whether the server's FIN follows it.
pub(super) fn data_end(f: &Freeze) -> (SeqNumber, bool) {
    match f.fin() {
        Some(fin) => (fin, true),
        None => (f.rcv_nxt(), false),
    }
}
