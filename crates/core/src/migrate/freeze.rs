//! The server-facing half of the transient pause (draft section 4.3.1; docs/migration.md step 2).
//!
//! While a flow is frozen the proxy answers the server (S) on behalf of the device that will take
//! the stream. [`Freeze`] decides, for every segment S sends, what goes into the pause cache and
//! which ACK to send back. It follows the rules learned from Linux senders:
//!
//! - //= draft 4.3.1: "TSMPP needs to generate and send their ACK packets to the sender in
//!   advance on behalf of the new receiver ... with ... the expected sequence number and the
//!   window size (zero)". The first ACK ([`Freeze::start`]) acknowledges everything S has in
//!   flight (the rolling cache holds what the old device did not acknowledge) with window 0, so
//!   Linux enters persist mode instead of its retransmission path.
//! - Late segments inside any window already advertised are accepted and cached (RFC 7323 2.4:
//!   the window may shrink, data inside the old edge must not be lost), and acknowledged at once.
//! - Both probe styles get ACK(next expected, window 0): Linux's empty segment with
//!   seq = SND.UNA - 1, and a one-byte probe beyond the window, whose byte is not accepted.
//! - The ACK number never exceeds what S has sent (RFC 5961 would answer with a challenge ACK).
//! - TSecr echoes the latest TSval from S (RFC 7323 TS.Recent), so S's RTT samples stay real.
//!
//! Invariant: `rcv_nxt` (the ACK sent) only grows, and only over bytes that are cached or were
//! already cached when the freeze began.

use super::cache::{Budget, Inserted, SegmentCache};
use crate::wire::SeqNumber;

/// A segment from the server, as the freeze needs it (server sequence space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerSegment {
    /// Sequence number.
    pub seq: SeqNumber,
    /// Payload length.
    pub len: u32,
    /// FIN set.
    pub fin: bool,
    /// RST set.
    pub rst: bool,
    /// The ACK field (client sequence space), when the ACK flag is set.
    pub ack: Option<SeqNumber>,
    /// TSval, when the segment carries timestamps.
    pub tsval: Option<u32>,
}

/// An ACK to send to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToServer {
    /// Sequence number (client sequence space: the next byte S expects from the client side).
    pub seq: SeqNumber,
    /// Acknowledgement number (server sequence space).
    pub ack: SeqNumber,
    /// Raw window field: always 0 while frozen.
    pub window: u16,
    /// TSecr to echo, when timestamps are in use.
    pub tsecr: Option<u32>,
}

/// What the freeze did with a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition<B> {
    /// New bytes were cached.
    Cached(u32),
    /// Nothing to keep (duplicate, empty, or beyond the window): the buffer comes back.
    Returned(B),
    /// The cache limit was hit: the buffer comes back and the migration cannot keep its promise.
    CacheFull(B),
    /// S reset the connection.
    Reset(B),
}

/// The reply to one server segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply<B> {
    /// What happened to the segment's buffer.
    pub disposition: Disposition<B>,
    /// The ACK to send to S, if any.
    pub ack: Option<AckToServer>,
}

/// Counters of one freeze.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FreezeStats {
    /// ACKs sent to S.
    pub acks: u64,
    /// Zero-window probes answered (both styles).
    pub probes: u64,
    /// Bytes cached while frozen.
    pub cached_bytes: u64,
    /// Out-of-order segments (a hole below them: loss between S and the proxy).
    pub out_of_order: u64,
}

/// The server-facing freeze state of one flow.
#[derive(Debug, Clone)]
pub struct Freeze {
    rcv_nxt: SeqNumber,
    right_edge: SeqNumber,
    our_seq: SeqNumber,
    fin: Option<SeqNumber>,
    ts_recent: Option<u32>,
    /// Counters.
    pub stats: FreezeStats,
}

impl Freeze {
    /// Starts a freeze. `s_next` is one past the highest server byte the proxy has seen (S's
    /// SND.NXT as observed); everything below it must be held by the rolling cache or already
    /// acknowledged by the old device (the caller checks that before freezing). `right_edge` is
    /// the highest right window edge ever advertised to S (ack + window << scale); `our_seq` the
    /// next client-side sequence number; `ts_recent` the latest TSval seen from S.
    ///
    /// Returns the freeze and the ACK to send at once: everything in flight acknowledged, window 0.
    pub fn start(
        s_next: SeqNumber,
        right_edge: SeqNumber,
        our_seq: SeqNumber,
        ts_recent: Option<u32>,
    ) -> (Freeze, AckToServer) {
        let mut f = Freeze {
            rcv_nxt: s_next,
            right_edge: right_edge.max_seq(s_next),
            our_seq,
            fin: None,
            ts_recent,
            stats: FreezeStats::default(),
        };
        let ack = f.ack();
        (f, ack)
    }

    /// The next server byte expected (the ACK number sent).
    pub fn rcv_nxt(&self) -> SeqNumber {
        self.rcv_nxt
    }

    /// S's FIN, if it arrived while frozen (its sequence number).
    pub fn fin(&self) -> Option<SeqNumber> {
        self.fin
    }

    /// The latest TSval from S.
    pub fn ts_recent(&self) -> Option<u32> {
        self.ts_recent
    }

    /// Sets the client-side sequence number used in ACKs (when the proxy delivers the old
    /// device's unacknowledged data to S, it advances).
    pub fn set_our_seq(&mut self, s: SeqNumber) {
        self.our_seq = s;
    }

    fn ack(&mut self) -> AckToServer {
        self.stats.acks += 1;
        AckToServer {
            seq: self.our_seq,
            ack: self.rcv_nxt,
            window: 0,
            tsecr: self.ts_recent,
        }
    }

    /// Handles one segment from S whose payload is `buf[off..off+seg.len]`.
    pub fn on_segment<B: AsRef<[u8]>>(
        &mut self,
        seg: ServerSegment,
        buf: B,
        off: usize,
        cache: &mut SegmentCache<B>,
        budget: &mut Budget,
    ) -> Reply<B> {
        if seg.rst {
            return Reply {
                disposition: Disposition::Reset(buf),
                ack: None,
            };
        }
        // RFC 7323 section 4.3: TS.Recent <- SEG.TSval when SEG.SEQ <= Last.ACK.sent.
        if let Some(v) = seg.tsval {
            if seg.seq.diff(self.rcv_nxt) <= 0 {
                self.ts_recent = Some(v);
            }
        }
        if seg.len == 0 && !seg.fin {
            // Linux's zero-window probe: an empty segment with seq = SND.UNA - 1. A pure ACK at
            // rcv_nxt (S acknowledging client data) gets no reply: ACKs are not ACKed.
            if seg.seq == self.rcv_nxt - 1 {
                self.stats.probes += 1;
                return Reply {
                    disposition: Disposition::Returned(buf),
                    ack: Some(self.ack()),
                };
            }
            return Reply {
                disposition: Disposition::Returned(buf),
                ack: None,
            };
        }
        let end = seg.seq + seg.len;
        if seg.len > 0 && seg.seq.diff(self.right_edge) >= 0 {
            // Entirely beyond every window advertised: a one-byte window probe. Not accepted.
            self.stats.probes += 1;
            return Reply {
                disposition: Disposition::Returned(buf),
                ack: Some(self.ack()),
            };
        }
        // Accept only what lies inside the old window edge.
        let inside = u32::try_from(self.right_edge.min_seq(end).diff(seg.seq)).unwrap_or(0);
        let fin_inside = seg.fin && inside == seg.len;
        let disposition = if inside == 0 {
            Disposition::Returned(buf)
        } else {
            match cache.insert(seg.seq, buf, off, inside, budget) {
                Inserted::Stored(n) => {
                    self.stats.cached_bytes += u64::from(n);
                    Disposition::Cached(n)
                }
                Inserted::Duplicate(b) => Disposition::Returned(b),
                Inserted::OverLimit(b) => Disposition::CacheFull(b),
            }
        };
        if seg.seq.diff(self.rcv_nxt) > 0 {
            self.stats.out_of_order += 1;
        }
        self.rcv_nxt = cache.contiguous_end(self.rcv_nxt);
        if fin_inside && self.fin.is_none() && self.rcv_nxt == end {
            // //= rfc9293#section-3.10.7.4: "advance RCV.NXT over the FIN".
            self.fin = Some(end);
            self.rcv_nxt = end + 1;
        }
        Reply {
            disposition,
            ack: Some(self.ack()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    fn data(seq: u32, len: u32) -> ServerSegment {
        ServerSegment {
            seq: SeqNumber(seq),
            len,
            ack: Some(SeqNumber(7)),
            tsval: Some(seq),
            ..Default::default()
        }
    }

    fn buf(len: u32) -> Vec<u8> {
        vec![0x5a; len as usize]
    }

    struct T {
        f: Freeze,
        c: SegmentCache<Vec<u8>>,
        b: Budget,
        highest: SeqNumber,
    }

    /// Frozen after S sent bytes up to 10_000, with 8 segments of window (edge 18_000).
    fn frozen() -> (T, AckToServer) {
        let (f, ack) = Freeze::start(SeqNumber(10_000), SeqNumber(18_000), SeqNumber(7), Some(99));
        (
            T {
                f,
                c: SegmentCache::new(1 << 20),
                b: Budget::new(1 << 20),
                highest: SeqNumber(10_000),
            },
            ack,
        )
    }

    impl T {
        fn send(&mut self, s: ServerSegment) -> Reply<Vec<u8>> {
            if s.len > 0 {
                self.highest = self.highest.max_seq(s.seq + s.len + u32::from(s.fin));
            }
            let r = self
                .f
                .on_segment(s, buf(s.len), 0, &mut self.c, &mut self.b);
            if let Some(a) = r.ack {
                assert!(
                    a.ack.diff(self.highest) <= 0,
                    "ACK {} beyond what S sent ({})",
                    a.ack,
                    self.highest
                );
                assert_eq!(a.window, 0, "window stays closed while frozen");
            }
            r
        }
    }

    #[test]
    fn first_ack_covers_everything_in_flight_with_zero_window() {
        let (_, ack) = frozen();
        assert_eq!(
            ack,
            AckToServer {
                seq: SeqNumber(7),
                ack: SeqNumber(10_000),
                window: 0,
                tsecr: Some(99)
            }
        );
    }

    #[test]
    fn late_segments_in_window_are_cached_and_acked_at_once() {
        let (mut t, _) = frozen();
        for i in 0..3 {
            let r = t.send(data(10_000 + i * MSS, MSS));
            assert_eq!(r.disposition, Disposition::Cached(MSS));
            assert_eq!(r.ack.unwrap().ack, SeqNumber(10_000 + (i + 1) * MSS));
            assert_eq!(
                r.ack.unwrap().tsecr,
                Some(10_000 + i * MSS),
                "TSecr echoes the latest TSval"
            );
        }
        assert_eq!(t.c.bytes(), 3 * u64::from(MSS));
        assert_eq!(t.f.stats.cached_bytes, 3000);
    }

    #[test]
    fn both_probe_styles_get_ack_with_zero_window() {
        let (mut t, _) = frozen();
        // Linux: empty, seq = SND.UNA - 1.
        let r = t.send(ServerSegment {
            seq: SeqNumber(9_999),
            ..Default::default()
        });
        assert_eq!(r.ack.unwrap().ack, SeqNumber(10_000));
        // Others: one byte beyond the window edge; the byte is not accepted.
        let r = t.send(data(18_000, 1));
        assert!(matches!(r.disposition, Disposition::Returned(_)));
        assert_eq!(r.ack.unwrap().ack, SeqNumber(10_000));
        assert_eq!(t.c.bytes(), 0);
        assert_eq!(t.f.stats.probes, 2);
        // A pure ACK from S (for client data) is not answered.
        let r = t.send(ServerSegment {
            seq: SeqNumber(10_000),
            ack: Some(SeqNumber(9)),
            ..Default::default()
        });
        assert_eq!(r.ack, None);
    }

    #[test]
    fn segment_straddling_the_old_edge_is_cut_there() {
        let (mut t, _) = frozen();
        for i in 0..7 {
            t.send(data(10_000 + i * MSS, MSS));
        }
        let r = t.send(data(17_000, 1500));
        assert_eq!(
            r.disposition,
            Disposition::Cached(1000),
            "only the part inside the old window"
        );
        assert_eq!(r.ack.unwrap().ack, SeqNumber(18_000));
    }

    #[test]
    fn hole_keeps_the_ack_until_filled() {
        let (mut t, _) = frozen();
        let r = t.send(data(11_000, MSS));
        assert_eq!(
            r.ack.unwrap().ack,
            SeqNumber(10_000),
            "a real loss between S and the proxy"
        );
        assert_eq!(t.f.stats.out_of_order, 1);
        let r = t.send(data(10_000, MSS));
        assert_eq!(
            r.ack.unwrap().ack,
            SeqNumber(12_000),
            "the retransmission fills the hole"
        );
    }

    #[test]
    fn retransmission_of_cached_data_is_acknowledged_not_cached_twice() {
        let (mut t, _) = frozen();
        t.send(data(10_000, MSS));
        let r = t.send(data(10_000, MSS));
        assert!(matches!(r.disposition, Disposition::Returned(_)));
        assert_eq!(r.ack.unwrap().ack, SeqNumber(11_000));
        assert_eq!(t.c.bytes(), 1000);
    }

    #[test]
    fn fin_is_cached_and_acknowledged() {
        let (mut t, _) = frozen();
        let mut s = data(10_000, 500);
        s.fin = true;
        let r = t.send(s);
        assert_eq!(r.disposition, Disposition::Cached(500));
        assert_eq!(r.ack.unwrap().ack, SeqNumber(10_501));
        assert_eq!(t.f.fin(), Some(SeqNumber(10_500)));
    }

    #[test]
    fn reset_and_cache_limit_are_reported() {
        let (mut t, _) = frozen();
        let r = t.send(ServerSegment {
            seq: SeqNumber(10_000),
            rst: true,
            ..Default::default()
        });
        assert!(matches!(r.disposition, Disposition::Reset(_)));
        assert_eq!(r.ack, None);
        t.b = Budget::new(500);
        let r = t.send(data(10_000, MSS));
        assert!(matches!(r.disposition, Disposition::CacheFull(_)));
        assert_eq!(
            r.ack.unwrap().ack,
            SeqNumber(10_000),
            "nothing acknowledged that is not cached"
        );
    }

    #[test]
    fn wraps_around_the_sequence_space() {
        let start = u32::MAX - 1500;
        let (f, ack) = Freeze::start(
            SeqNumber(start),
            SeqNumber(start) + 8_000,
            SeqNumber(1),
            None,
        );
        assert_eq!(ack.ack, SeqNumber(start));
        let mut t = T {
            f,
            c: SegmentCache::new(1 << 20),
            b: Budget::new(1 << 20),
            highest: SeqNumber(start),
        };
        for i in 0..3 {
            let r = t.send(data(start.wrapping_add(i * MSS), MSS));
            assert_eq!(
                r.ack.unwrap().ack,
                SeqNumber(start.wrapping_add((i + 1) * MSS))
            );
        }
    }
}
