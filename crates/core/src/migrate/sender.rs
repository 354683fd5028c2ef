//! The resumption sender: the proxy acts as a TCP sender toward the new device for the bytes it
//! cached (draft section 4.3.2: "As a TCP sender, TSMPP maintains some connection states:
//! Congestion_Window, and Congestion_Threshold ... slow-start ... AIMD").
//!
//! Sans-IO, quinn-style: `on_ack(now, ..)` and `on_timeout(now)` are the inputs,
//! `poll_transmit(now)` yields the next segment to send (sequence range of the cache) and
//! `poll_timeout()` the next deadline. Times are microseconds on the caller's clock.
//!
//! Algorithms, each from its RFC:
//! - initial window: //= rfc6928#section-2 "min (10*MSS, max (2*MSS, 14600))";
//! - slow start and congestion avoidance: RFC 5681 section 3.1 (appropriate byte counting with
//!   L = 2*SMSS per ACK, RFC 3465), cwnd += SMSS*SMSS/cwnd per ACK in congestion avoidance;
//! - fast retransmit on the third duplicate ACK and NewReno recovery: RFC 6582 section 3.2
//!   (partial ACKs retransmit the next hole and deflate cwnd; a full ACK sets cwnd = ssthresh);
//! - retransmission timer: RFC 6298 (SRTT, RTTVAR, RTO = SRTT + max(G, 4*RTTVAR), initial 1 s,
//!   Karn's rule: no samples from retransmitted data, exponential backoff, go-back-N);
//! - flow control: never beyond SND.UNA + the device's window (Linux 6.17+ drops what lies
//!   beyond); a zero window is probed with an empty segment at SND.UNA - 1 on the RTO schedule.
//!
//! Invariants: SND.UNA <= SND.NXT <= end (+1 for a FIN); every byte in [start, end) is sent at
//! least once and the sender is `done()` only when the device acknowledged all of it.

use crate::wire::SeqNumber;

/// One segment to send, in the server's sequence space (the caller translates and fills the
/// payload from the cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// First sequence number.
    pub seq: SeqNumber,
    /// Payload bytes.
    pub len: u32,
    /// Carries the FIN.
    pub fin: bool,
    /// A retransmission (not a first transmission).
    pub retransmit: bool,
    /// A zero-window probe (empty, seq = SND.UNA - 1).
    pub probe: bool,
}

/// Sender counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Segments sent (first transmissions).
    pub segments: u64,
    /// Segments retransmitted.
    pub retransmits: u64,
    /// Fast retransmits (entries into recovery).
    pub fast_retransmits: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Zero-window probes.
    pub probes: u64,
}

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct SenderConfig {
    /// Lower bound of the RTO, microseconds (Linux uses 200 ms; RFC 6298 suggests 1 s).
    pub min_rto_us: u64,
    /// Upper bound of the RTO, microseconds.
    pub max_rto_us: u64,
    /// Clock granularity G, microseconds.
    pub granularity_us: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            min_rto_us: 200_000,
            max_rto_us: 60_000_000,
            granularity_us: 1_000,
        }
    }
}

/// The replay of `[start, end)` (and optionally a FIN at `end`) to the new device.
#[derive(Debug, Clone)]
pub struct ReplaySender {
    cfg: SenderConfig,
    end: SeqNumber,
    fin: bool,
    mss: u32,
    snd_una: SeqNumber,
    snd_nxt: SeqNumber,
    /// Highest sequence number ever sent + 1 (for recovery and Karn).
    snd_max: SeqNumber,
    cwnd: u32,
    ssthresh: u32,
    rwnd: u32,
    srtt_us: Option<u64>,
    rttvar_us: u64,
    rto_us: u64,
    timed: Option<(SeqNumber, u64)>,
    rto_deadline: Option<u64>,
    dupacks: u32,
    recover: SeqNumber,
    in_recovery: bool,
    retransmit_next: bool,
    probe_due: bool,
    /// Timeouts since the last ACK that acknowledged new data.
    backoffs: u64,
    start: SeqNumber,
    /// Counters.
    pub stats: SenderStats,
}

impl ReplaySender {
    /// A sender for `[start, end)` (plus a FIN at `end` if `fin`), to a device that announced
    /// `mss` and a window of `rwnd` bytes (already scaled).
    pub fn new(
        cfg: SenderConfig,
        start: SeqNumber,
        end: SeqNumber,
        fin: bool,
        mss: u32,
        rwnd: u32,
    ) -> ReplaySender {
        let mss = mss.max(64);
        ReplaySender {
            cfg,
            end,
            fin,
            mss,
            snd_una: start,
            snd_nxt: start,
            snd_max: start,
            cwnd: (10 * mss).min((2 * mss).max(14_600)),
            ssthresh: u32::MAX,
            rwnd,
            srtt_us: None,
            rttvar_us: 0,
            rto_us: 1_000_000,
            timed: None,
            rto_deadline: None,
            dupacks: 0,
            recover: start,
            in_recovery: false,
            retransmit_next: false,
            probe_due: false,
            backoffs: 0,
            start,
            stats: SenderStats::default(),
        }
    }

    fn final_seq(&self) -> SeqNumber {
        self.end + u32::from(self.fin)
    }

    /// The receiver was already sent `[start, until)` by someone else (the bytes the proxy
    /// forwarded to the old device before a cancelled migration): they count as in flight, so
    /// they are retransmitted only on loss (duplicate ACKs or the timer), never sent twice.
    pub fn with_in_flight(mut self, now: u64, until: SeqNumber) -> ReplaySender {
        let until = if until.diff(self.end) > 0 {
            self.end
        } else {
            until
        };
        if until.diff(self.snd_una) > 0 {
            self.snd_nxt = until;
            self.snd_max = until;
            self.recover = until;
            self.arm(now);
        }
        self
    }

    /// More data to send: the server's late segments arrived in the pause cache while the
    /// replay runs. `end` never moves back; a FIN is taken only once and only at the end.
    pub fn extend(&mut self, end: SeqNumber, fin: bool) {
        if self.fin {
            return;
        }
        if end.diff(self.end) > 0 {
            self.end = end;
        }
        self.fin = fin && end == self.end;
    }

    /// The first byte of the replay.
    pub fn start(&self) -> SeqNumber {
        self.start
    }

    /// One past the highest sequence number sent (SND.MAX): the sequence number of a pure ACK.
    pub fn snd_max(&self) -> SeqNumber {
        self.snd_max
    }

    /// Retransmission timeouts since the device last acknowledged new data.
    pub fn consecutive_timeouts(&self) -> u64 {
        self.backoffs
    }

    /// One past the last byte to send (the FIN not counted).
    pub fn end(&self) -> SeqNumber {
        self.end
    }

    /// Whether the device acknowledged everything (and the FIN).
    pub fn done(&self) -> bool {
        self.snd_una == self.final_seq()
    }

    /// SND.UNA.
    pub fn snd_una(&self) -> SeqNumber {
        self.snd_una
    }

    /// Congestion window, bytes.
    pub fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// Slow-start threshold, bytes.
    pub fn ssthresh(&self) -> u32 {
        self.ssthresh
    }

    /// Current RTO, microseconds.
    pub fn rto_us(&self) -> u64 {
        self.rto_us
    }

    fn flight(&self) -> u32 {
        u32::try_from(self.snd_nxt.diff(self.snd_una)).unwrap_or(0)
    }

    fn arm(&mut self, now: u64) {
        self.rto_deadline = Some(now + self.rto_us);
    }

    fn rtt_sample(&mut self, r: u64) {
        //= rfc6298#section-2
        match self.srtt_us {
            None => {
                self.srtt_us = Some(r);
                self.rttvar_us = r / 2;
            }
            Some(srtt) => {
                self.rttvar_us = (3 * self.rttvar_us + srtt.abs_diff(r)) / 4;
                self.srtt_us = Some((7 * srtt + r) / 8);
            }
        }
        let srtt = self.srtt_us.unwrap_or(r);
        self.rto_us = (srtt + self.cfg.granularity_us.max(4 * self.rttvar_us))
            .clamp(self.cfg.min_rto_us, self.cfg.max_rto_us);
    }

    /// Handles an ACK from the device: acknowledgement number (server space) and its window in
    /// bytes (already scaled).
    pub fn on_ack(&mut self, now: u64, ack: SeqNumber, wnd: u32) {
        if ack.diff(self.snd_max) > 0 {
            if ack.diff(self.final_seq()) > 0 {
                return; // beyond everything this replay covers: ignore
            }
            // The receiver holds bytes it got before the replay started (the old device when a
            // migration is cancelled): they count as sent and acknowledged, without an RTT
            // sample.
            self.snd_max = ack;
            self.snd_nxt = ack;
            self.timed = None;
        }
        let window_changed = wnd != self.rwnd;
        self.rwnd = wnd;
        if wnd > 0 {
            self.probe_due = false;
        }
        let acked = ack.diff(self.snd_una);
        if acked > 0 {
            let acked = acked.unsigned_abs();
            if let Some((seq, at)) = self.timed {
                if ack.diff(seq) > 0 {
                    self.rtt_sample(now.saturating_sub(at));
                    self.timed = None;
                }
            }
            self.snd_una = ack;
            self.backoffs = 0;
            if self.snd_nxt.diff(ack) < 0 {
                self.snd_nxt = ack;
            }
            self.dupacks = 0;
            if self.in_recovery {
                if ack.diff(self.recover) >= 0 {
                    //= rfc6582#section-3.2 step 3 (full acknowledgment): cwnd = ssthresh
                    self.cwnd = self.ssthresh.max(self.mss);
                    self.in_recovery = false;
                } else {
                    // Partial acknowledgment: retransmit the next hole, deflate, keep the timer.
                    self.retransmit_next = true;
                    self.cwnd = self
                        .cwnd
                        .saturating_sub(acked)
                        .saturating_add(self.mss)
                        .max(self.mss);
                }
            } else if self.cwnd < self.ssthresh {
                self.cwnd = self.cwnd.saturating_add(acked.min(2 * self.mss));
            } else {
                let inc = (u64::from(self.mss) * u64::from(self.mss) / u64::from(self.cwnd.max(1)))
                    .max(1);
                self.cwnd = self
                    .cwnd
                    .saturating_add(u32::try_from(inc).unwrap_or(u32::MAX));
            }
            if self.flight() > 0 || !self.done() {
                self.arm(now);
            } else {
                self.rto_deadline = None;
            }
            if self.done() {
                self.rto_deadline = None;
            }
        } else if acked == 0 && self.flight() > 0 && !window_changed {
            //= rfc5681#section-2 duplicate acknowledgment
            self.dupacks += 1;
            if self.in_recovery {
                self.cwnd = self.cwnd.saturating_add(self.mss);
            } else if self.dupacks == 3 && self.snd_una.diff(self.recover) >= 0 {
                self.ssthresh = (self.flight() / 2).max(2 * self.mss);
                self.recover = self.snd_max;
                self.cwnd = self.ssthresh + 3 * self.mss;
                self.in_recovery = true;
                self.retransmit_next = true;
                self.stats.fast_retransmits += 1;
            }
        }
    }

    /// The next deadline (RTO or persist), if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.rto_deadline
    }

    /// The deadline passed.
    pub fn on_timeout(&mut self, now: u64) {
        if self.rto_deadline.is_none_or(|d| now < d) || self.done() {
            return;
        }
        if self.flight() == 0 && self.rwnd == 0 {
            // Persist: probe the closed window.
            self.probe_due = true;
        } else {
            //= rfc5681#section-3.1 equation (4) and "set cwnd to no more than ... one full-sized segment"
            self.ssthresh = (self.flight() / 2).max(2 * self.mss);
            self.cwnd = self.mss;
            self.recover = self.snd_max;
            self.in_recovery = false;
            self.dupacks = 0;
            self.snd_nxt = self.snd_una; // go-back-N
            self.timed = None; // Karn
            self.stats.timeouts += 1;
            self.backoffs += 1;
        }
        //= rfc6298#section-5 (5.5) back off the timer
        self.rto_us = (self.rto_us * 2).min(self.cfg.max_rto_us);
        self.arm(now);
    }

    /// The next segment to send now, if any.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Transmit> {
        if self.done() {
            return None;
        }
        if self.probe_due {
            self.probe_due = false;
            self.stats.probes += 1;
            return Some(Transmit {
                seq: self.snd_una - 1,
                len: 0,
                fin: false,
                retransmit: false,
                probe: true,
            });
        }
        if self.retransmit_next {
            self.retransmit_next = false;
            let t = self.segment_at(self.snd_una, u32::MAX)?;
            self.stats.retransmits += 1;
            if self.rto_deadline.is_none() {
                self.arm(now);
            }
            return Some(Transmit {
                retransmit: true,
                ..t
            });
        }
        let window = self.cwnd.min(self.rwnd);
        let room = window.saturating_sub(self.flight());
        if self.rwnd == 0 && self.flight() == 0 && self.rto_deadline.is_none() {
            self.arm(now); // persist timer
        }
        let t = self.segment_at(self.snd_nxt, room)?;
        let first = t.seq.diff(self.snd_max) >= 0;
        // Avoid silly segments: a short one only when it is the tail or nothing is in flight.
        let tail = t.seq + t.len == self.end;
        if t.len < self.mss && !tail && !t.fin && self.flight() > 0 {
            return None;
        }
        self.snd_nxt = t.seq + t.len + u32::from(t.fin);
        if self.snd_nxt.diff(self.snd_max) > 0 {
            self.snd_max = self.snd_nxt;
        }
        if first {
            self.stats.segments += 1;
            if self.timed.is_none() {
                self.timed = Some((t.seq, now));
            }
        } else {
            self.stats.retransmits += 1;
        }
        if self.rto_deadline.is_none() {
            self.arm(now);
        }
        Some(Transmit {
            retransmit: !first,
            ..t
        })
    }

    /// The segment starting at `seq`, at most `room` bytes of window (the FIN needs none).
    fn segment_at(&self, seq: SeqNumber, room: u32) -> Option<Transmit> {
        let left = u32::try_from(self.end.diff(seq)).unwrap_or(0);
        let len = left.min(self.mss).min(room);
        let fin = self.fin && len == left && seq.diff(self.final_seq()) < 0;
        if len == 0 && !fin {
            return None;
        }
        Some(Transmit {
            seq,
            len,
            fin,
            retransmit: false,
            probe: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver with a fixed window that accepts in-order data, keeps out-of-order segments,
    /// and acknowledges every segment at once (so duplicates show up as duplicate ACKs).
    struct Receiver {
        rcv_nxt: SeqNumber,
        ooo: Vec<(SeqNumber, u32, bool)>,
        window: u32,
        got_fin: bool,
        delivered: u64,
        max_beyond_window: i64,
    }

    impl Receiver {
        fn on_segment(&mut self, t: Transmit) -> (SeqNumber, u32) {
            if !t.probe {
                let edge = self.rcv_nxt + self.window;
                self.max_beyond_window = self
                    .max_beyond_window
                    .max(i64::from((t.seq + t.len).diff(edge)));
                self.ooo.push((t.seq, t.len, t.fin));
                loop {
                    let before = self.rcv_nxt;
                    for &(s, l, f) in &self.ooo {
                        if s.diff(self.rcv_nxt) <= 0 && (s + l).diff(self.rcv_nxt) > 0 {
                            self.delivered += u64::from((s + l).diff(self.rcv_nxt).unsigned_abs());
                            self.rcv_nxt = s + l;
                        }
                        if f && s + l == self.rcv_nxt && !self.got_fin {
                            self.got_fin = true;
                            self.rcv_nxt += 1;
                        }
                    }
                    if before == self.rcv_nxt {
                        break;
                    }
                }
            }
            (self.rcv_nxt, self.window)
        }
    }

    /// Drives sender and receiver over a link with a one-way delay; `lose(i)` drops the i-th
    /// data segment sent. Returns (sender, receiver, finish time). Fails on livelock.
    fn run(
        bytes: u32,
        mss: u32,
        window: u32,
        delay_us: u64,
        lose: impl Fn(u64, &Transmit) -> bool,
    ) -> (ReplaySender, Receiver, u64) {
        let start = SeqNumber(u32::MAX - 5_000);
        let mut s = ReplaySender::new(
            SenderConfig::default(),
            start,
            start + bytes,
            true,
            mss,
            window,
        );
        let mut r = Receiver {
            rcv_nxt: start,
            ooo: Vec::new(),
            window,
            got_fin: false,
            delivered: 0,
            max_beyond_window: i64::MIN,
        };
        let mut now = 0u64;
        let mut in_flight: Vec<(u64, Transmit)> = Vec::new();
        let mut acks: Vec<(u64, SeqNumber, u32)> = Vec::new();
        let mut sent = 0u64;
        for _ in 0..1_000_000 {
            while let Some(t) = s.poll_transmit(now) {
                sent += 1;
                if !lose(sent, &t) {
                    in_flight.push((now + delay_us, t));
                }
            }
            if s.done() {
                return (s, r, now);
            }
            // Next event: a segment arrival, an ACK arrival, or the sender's timer.
            let next = in_flight
                .iter()
                .map(|x| x.0)
                .chain(acks.iter().map(|x| x.0))
                .chain(s.poll_timeout())
                .min()
                .expect("no event: livelock");
            now = next.max(now);
            let (arrive, keep): (Vec<_>, Vec<_>) = in_flight.drain(..).partition(|x| x.0 <= now);
            in_flight = keep;
            for (_, t) in arrive {
                let (a, w) = r.on_segment(t);
                acks.push((now + delay_us, a, w));
            }
            let (arrive, keep): (Vec<_>, Vec<_>) = acks.drain(..).partition(|x| x.0 <= now);
            acks = keep;
            for (_, a, w) in arrive {
                s.on_ack(now, a, w);
            }
            s.on_timeout(now);
        }
        panic!("livelock: sender never finished");
    }

    #[test]
    fn lossless_replay_delivers_everything_with_slow_start() {
        let (s, r, t) = run(1_000_000, 1448, 1 << 20, 5_000, |_, _| false);
        assert_eq!(r.delivered, 1_000_000);
        assert!(r.got_fin);
        assert_eq!(s.stats.retransmits, 0);
        assert_eq!(s.stats.timeouts, 0);
        // IW10 doubling per RTT (10 ms): 1 MB in about 7 RTTs, well under 15.
        assert!(t < 15 * 10_000, "took {t} us");
        assert!(
            s.srtt_us.unwrap().abs_diff(10_000) < 2_000,
            "RTT measured: {:?}",
            s.srtt_us
        );
    }

    #[test]
    fn single_loss_is_repaired_by_fast_retransmit_not_timeout() {
        let (s, r, _) = run(500_000, 1000, 1 << 20, 5_000, |i, t| {
            i == 30 && !t.retransmit
        });
        assert_eq!(r.delivered, 500_000);
        assert_eq!(s.stats.fast_retransmits, 1);
        assert_eq!(s.stats.timeouts, 0);
        assert!(s.ssthresh() < u32::MAX, "loss halved the window");
    }

    #[test]
    fn tail_loss_is_repaired_by_the_retransmission_timer() {
        // Lose the FIN-carrying last segment once: no later data to trigger duplicate ACKs.
        let (s, r, _) = run(20_000, 1000, 1 << 20, 5_000, |_, t| t.fin && !t.retransmit);
        assert!(r.got_fin);
        assert_eq!(r.delivered, 20_000);
        assert_eq!(s.stats.timeouts, 1);
    }

    #[test]
    fn several_losses_in_one_window_use_newreno_partial_acks() {
        let (s, r, _) = run(300_000, 1000, 1 << 20, 5_000, |i, t| {
            matches!(i, 40 | 43 | 47) && !t.retransmit
        });
        assert_eq!(r.delivered, 300_000);
        assert_eq!(
            s.stats.fast_retransmits, 1,
            "one recovery episode for the whole window"
        );
        assert_eq!(s.stats.timeouts, 0);
        assert!(s.stats.retransmits >= 3);
    }

    #[test]
    fn respects_the_receiver_window_and_a_smaller_mss() {
        let (s, r, _) = run(200_000, 536, 8_192, 2_000, |_, _| false);
        assert_eq!(r.delivered, 200_000);
        assert!(
            r.max_beyond_window <= 0,
            "sent {} bytes beyond the window",
            r.max_beyond_window
        );
        assert_eq!(s.stats.retransmits, 0);
    }

    #[test]
    fn random_loss_always_completes() {
        for seed in 0..20u64 {
            let lose = move |i: u64, _: &Transmit| {
                (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d))
                    % 100
                    < 5
            };
            let (_, r, _) = run(100_000, 1000, 64 * 1024, 3_000, lose);
            assert_eq!(r.delivered, 100_000, "seed {seed}");
            assert!(r.got_fin, "seed {seed}");
        }
    }

    #[test]
    fn zero_window_is_probed_then_resumed() {
        let start = SeqNumber(1000);
        let mut s = ReplaySender::new(SenderConfig::default(), start, start + 3000, false, 1000, 0);
        assert_eq!(s.poll_transmit(0), None, "nothing fits a closed window");
        let d = s.poll_timeout().expect("persist timer armed");
        s.on_timeout(d);
        let p = s.poll_transmit(d).expect("probe");
        assert!(p.probe && p.len == 0 && p.seq == start - 1);
        s.on_ack(d + 10, start, 4000);
        let t = s
            .poll_transmit(d + 10)
            .expect("data after the window opens");
        assert_eq!((t.seq, t.len), (start, 1000));
        assert_eq!(
            s.stats.timeouts, 0,
            "persist is not a retransmission timeout"
        );
    }
}
