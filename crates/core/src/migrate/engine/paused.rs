//! The transient pause (draft section 4.3): the migration request, the freeze toward the server,
//! the old device's segments while frozen, and the target's handshake.

use super::*;

impl<B: SharedBuf> Engine<B> {
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
        // //= docs/migration.md rule 1: "ACK, and cache, every byte S has in flight in the same ACKs
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
    pub(super) fn frozen_server(
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

    pub(super) fn paused_from_server(
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
    pub(super) fn on_old_device(
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
    pub(super) fn frozen_c2s(
        &mut self,
        leg: &DeviceLeg,
        seg: &Seg,
        mut buf: B,
        rcv_nxt: SeqNumber,
    ) -> B {
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
    pub(super) fn paused_from_target(
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
        // //= docs/migration.md step 5: "choose P's ISN toward C_new so that the offset is constant": the
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
}
