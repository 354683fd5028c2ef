//! Deadlines: the next wake-up and what runs when it passes (migration deadline, SYN-ACK and
//! replay retransmissions, FIN retries, the client data still owed to the server).

use super::*;

impl<B: SharedBuf> Engine<B> {
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
                    // //= docs/migration.md rule 9: "bounded by a configurable migration deadline".
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

    pub(super) fn resuming_timeout(
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
    pub(super) fn deliver_c2s(
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

    pub(super) fn retransmit_fins(&mut self, now: u64) {
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
}
