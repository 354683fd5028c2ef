//! What the proxy accepts from the ends while it forwards: RFC 9293 3.10.7.4's acceptability
//! test and RFC 5961's defences, applied as the receiving end would apply them, so that a
//! segment the real receiver would refuse never moves the engine's view of the legs (next
//! sequence numbers, ACKs, TSvals: what a later freeze or resumption is built from) nor the
//! flow's tracking (the data plane commits only what the engine forwards).
//!
//! - An RST is believed only at a sequence number the receiver accepts (RFC 5961 3.2: its last
//!   ACK, or where the sender's stream ends): then it is forwarded and the flow closes.
//! - An RST elsewhere in the window, and a SYN on a live connection (anything but the first
//!   device's retransmitted SYN), are dropped and answered with a challenge ACK toward their
//!   sender on the receiver's behalf (rate-limited per flow, `challenge_interval_us`): a genuine
//!   sender that lost its connection answers it with an RST at the exact number; a blind
//!   attacker learns nothing, and the real ends never see either segment.
//! - An RST outside the window, data far from the receiver's window and an ACK of bytes the
//!   receiver never sent, or older than a window (RFC 5961 5.2), are dropped.
//! - Segments just below the window pass unchanged: keep-alives and window probes (one below
//!   what the receiver acknowledged, RFC 9293 3.8.4), retransmissions of acknowledged data. The
//!   receiver answers them, as it must.
//!
//! Every refusal is counted: `blind_dropped`, `challenged`.

use super::*;

/// How far from the receiver's left edge a segment may start: twice the larger of the window
/// and 64 KiB (the window may have shrunk since the sender looked; a blind guess still has to
/// land in a span of a few windows out of 2^32).
fn reach(window: u32) -> i32 {
    i32::try_from(window.clamp(65_535, 1 << 29) * 2).unwrap_or(i32::MAX)
}

fn near(seq: SeqNumber, base: SeqNumber, reach: i32) -> bool {
    (-reach..=reach).contains(&seq.diff(base))
}

impl<B: SharedBuf> Engine<B> {
    /// Whether a segment of the forwarding phase from `from` may go on; a refused one is
    /// counted and may have queued a challenge ACK.
    pub(super) fn accept(&mut self, now: u64, from: Leg, seg: &Seg) -> bool {
        let ok = match from {
            Leg::Server => self.accept_from_server(now, seg),
            Leg::Device(g) if g == self.dev.gen => self.accept_from_device(now, seg),
            // Not this flow's device: the state machine drops it.
            Leg::Device(_) => true,
        };
        if !ok {
            self.stats.blind_dropped += 1;
        }
        ok
    }

    /// The server's segment toward the device (the device is the receiver).
    fn accept_from_server(&mut self, now: u64, seg: &Seg) -> bool {
        let (s, d) = (&self.srv, &self.dev);
        if seg.has(TcpFlags::SYN) {
            // A retransmitted SYN-ACK (the device's ACK of the first was lost) passes.
            return seg.seq == s.s_isn;
        }
        let base = d.ack;
        let window = d
            .wnd_bytes()
            .max(d.sp.edge.diff(base).max(0).unsigned_abs());
        if seg.has(TcpFlags::RST) {
            let end = s.s_next;
            if seg.seq == base || seg.seq == end || (s.s_fin && seg.seq == end + 1) {
                return true;
            }
            if seg.seq.diff(base) > 0 && seg.seq.diff(base) <= reach(window) {
                self.challenge(now, Leg::Server);
            }
            return false;
        }
        if let Some(a) = seg.ack {
            // Client bytes the server acknowledges: sent, and not older than a window.
            if a.diff(s.c_next) > 0 || a.diff(s.c_una) < -reach(s.wnd) {
                return false;
            }
        }
        near(seg.seq, base, reach(window))
    }

    /// The device's segment toward the server (the server is the receiver).
    fn accept_from_device(&mut self, now: u64, seg: &Seg) -> bool {
        let (s, d) = (&self.srv, &self.dev);
        if seg.has(TcpFlags::SYN) {
            // The first device's SYN again (the SYN-ACK was lost on the way to it) passes;
            // any other SYN on the live tuple gets the server's challenge ACK (RFC 5961 4.2).
            if d.gen == 0 && seg.seq == d.isn && seg.ack.is_none() {
                return true;
            }
            self.challenge(now, Leg::Device(d.gen));
            return false;
        }
        let cseq = seg.seq + d.sp.c2s;
        let base = s.c_una;
        if seg.has(TcpFlags::RST) {
            if cseq == base || cseq == s.c_next {
                return true;
            }
            if cseq.diff(base) > 0 && cseq.diff(base) <= reach(s.wnd) {
                self.challenge(now, Leg::Device(d.gen));
            }
            return false;
        }
        if let Some(a) = seg.ack {
            // Server bytes the device acknowledges: the server sent them (its FIN included),
            // and they are not older than a window.
            let a = a - d.sp.s2c;
            let end = s.s_next + u32::from(s.s_fin);
            if a.diff(end) > 0 || a.diff(d.ack) < -reach(d.wnd_bytes()) {
                return false;
            }
        }
        near(cseq, base, reach(s.wnd))
    }

    /// A challenge ACK toward `to` on behalf of the other end: that end's next sequence number
    /// and latest ACK, as the real end would send it (RFC 5961 3.2); at most one per
    /// `challenge_interval_us`.
    fn challenge(&mut self, now: u64, to: Leg) {
        if self
            .challenged_at
            .is_some_and(|t| now < t + self.cfg.challenge_interval_us)
        {
            return;
        }
        self.challenged_at = Some(now);
        self.stats.challenged += 1;
        match to {
            Leg::Server => {
                let d = self.dev;
                let mut sp = d.sp;
                let window = sp.window_to_server(d.ack, d.wnd_raw);
                self.dev.sp = sp;
                let ts = self.server_ts(self.srv.ts_recent);
                self.push(Emit {
                    to: Leg::Server,
                    fields: TcpFields {
                        seq: self.srv.c_next,
                        ack: d.ack,
                        flags: TcpFlags::ACK,
                        window,
                        ts,
                        ..TcpFields::default()
                    },
                    payload_seq: self.srv.c_next,
                    payload_len: 0,
                });
            }
            Leg::Device(_) => {
                let (s, d) = (self.srv, self.dev);
                let seq = s.s_next + u32::from(s.s_fin) + d.sp.s2c;
                let ack = (s.c_una - d.sp.c2s).max_seq(d.isn + 1);
                self.send_to_device(&d, seq, ack, TcpFlags::ACK);
            }
        }
    }
}
