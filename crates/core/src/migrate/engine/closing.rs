//! Retiring old devices, closing segments, and the failure paths (cancel back to the old device
//! or reset both ends) with their reasons.

use super::*;

impl<B: SharedBuf> Engine<B> {
    /// Starts closing a former device's sub-connection: the proxy's FIN after the data it
    /// received (its latest ACK), unless it is gone.
    pub(super) fn retire(&mut self, now: u64, mut old: DeviceLeg) {
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
    pub(super) fn closing_segment(
        &mut self,
        now: u64,
        leg: &mut DeviceLeg,
        seg: &Seg,
        accepted: SeqNumber,
    ) {
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

    pub(super) fn on_retiring(&mut self, now: u64, seg: Seg) {
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

    pub(super) fn fail_resuming(
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

    /// //= docs/migration.md step 6: "cancel and resume on C_old where it still exists, else a clean reset
    /// of both ends".
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fail(
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
}
