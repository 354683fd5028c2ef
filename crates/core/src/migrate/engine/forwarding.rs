//! Handshake and forwarding (the draft's normal operation): segments pass in both directions,
//! observed for the legs' numbers and kept in the rolling caches, translated after a splice.

use super::*;

impl<B: SharedBuf> Engine<B> {
    /// While frozen, the proxy answers for client bytes it holds that the server has not
    /// acknowledged: keep the delivery timer running whenever there are some (after every
    /// input, so no path can forget it).
    pub(super) fn arm_c2s(&mut self, now: u64) {
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
    pub(super) fn handshake(&mut self, from: Leg, seg: Seg, buf: B) -> (State<B>, Verdict<B>) {
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
    pub(super) fn observe_server(&mut self, seg: &Seg) {
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

    pub(super) fn fwd_from_server(
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
            // //= draft 4.3.1 / docs/migration.md step 2: the rolling cache keeps what was forwarded to the
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
    pub(super) fn rewrite_to_device(&self, buf: &mut B, leg: &DeviceLeg, seg: &Seg) {
        let s_ws = self.srv.s_ws;
        let strip_ts = self.srv.ts && !leg.ts;
        let lift = pure_ack(seg)
            .then_some(leg.ack)
            .filter(|a| liftable(seg.seq, *a));
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
    pub(super) fn observe_device(leg: &mut DeviceLeg, seg: &Seg) {
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

    pub(super) fn fwd_from_device(
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
            // The rolling cache of client data the server has not acknowledged (docs/migration.md step 5:
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
            .filter(|u| liftable(cseq, *u));
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
}
