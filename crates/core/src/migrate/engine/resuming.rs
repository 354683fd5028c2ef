//! Resumption: the proxy as a TCP endpoint toward the new device, the replay of the cache, and
//! the splice back to pass-through when everything cached is acknowledged.

use super::*;

impl<B: SharedBuf> Engine<B> {
    /// //= rfc9293#section-3.5 the SYN-ACK toward the target: ISN = resume - 1; the server's
    /// window-scale factor offered (docs/migration.md rule 7: "offer S's own scale factor to C_new"); MSS and
    /// SACK-permitted; TSval seeded with the server's latest TSval (RFC 7323 4.3).
    pub(super) fn syn_ack(&mut self, r: &Resuming<B>) {
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

    pub(super) fn resuming_from_server(
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

    pub(super) fn resuming_from_target(
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

    /// //= docs/migration.md step 4: "When everything cached is acknowledged, P forwards C_new's latest
    /// ACK (non-zero window) to S - an explicit window update - and returns to pass-through".
    pub(super) fn check_resumed(
        &mut self,
        now: u64,
        r: Box<Resuming<B>>,
        budget: &mut Budget,
    ) -> State<B> {
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
}
