//! The TCP path: a client segment to the server through the NAT (creating the flow on its SYN,
//! clamping the MSS), a server segment back to the device that holds the flow, and the
//! tracking of both sub-connections' handshake and teardown.

use super::*;

impl ProxyCore {
    pub(super) fn client_segment(&mut self, f: &mut [u8], m: &TcpMeta) -> Verdict {
        let dst = ip_u32(m.dst);
        let k = Key {
            src: ip_u32(m.src),
            dst,
            sport: m.sport,
            dport: m.dport,
        };
        // A migration port belongs to the worker that reserved it (`port % workers`); a service
        // port's flows to the worker the client tuple hashes to.
        let migration = (self.mport_range.0..=self.mport_range.1).contains(&m.dport)
            && self.services.iter().any(|s| s.vip == dst);
        let svc = if migration {
            None
        } else {
            match self
                .services
                .iter()
                .position(|s| s.vip == dst && s.port == m.dport)
            {
                Some(i) => Some(i),
                None => {
                    return Verdict::Drop(if self.is_ours(self.client, dst) {
                        Cause::NoService
                    } else {
                        Cause::NotForUs
                    })
                }
            }
        };
        let h = self.flows.hasher().key(&k);
        let owner = if migration {
            usize::from(m.dport) % self.workers
        } else {
            owner_of_hash(h, self.workers)
        };
        if owner != self.worker {
            return Verdict::HandOff(owner);
        }
        if !self.checksum_ok(f, m) {
            return Verdict::Drop(Cause::Wire(DropReason::TcpBadChecksum));
        }
        let is_syn = m.flags.has(TcpFlags::SYN) && !m.flags.has(TcpFlags::ACK);
        // The flow whose current device this is (most segments end here). A key is in the
        // index or among `legs`, never both: a device leaves the index when it stops being
        // its flow's current one, and joins it when it becomes it.
        let mut idx = self.flows.lookup_hashed(&k, h);
        // A device of a migrating flow other than its current one (the target before the
        // splice, the old device after it): its segments are the engine's business.
        if idx.is_none() && !self.legs.is_empty() {
            if let Some(&(slot, gen)) = self.legs.get(&k) {
                return self.forward_to_server(f, m, slot, gen, false, false);
            }
        }
        if idx.is_none() && migration && is_syn {
            // The target's SYN on the port reserved for its migration.
            if let Some(&(slot, gen, expect)) = self.mports.get(&m.dport) {
                // Only the target's address, and only one connection: a second SYN (another
                // port, or after the target took over) is refused like a stranger's.
                // Retransmissions of the accepted SYN matched `legs` above.
                if expect.is_some_and(|ip| ip != k.src)
                    || self.devices.contains_key(&(slot, gen))
                    || self.current_device(slot) == gen
                {
                    return Verdict::Drop(Cause::MigrationRefused);
                }
                if self.flows.contains(slot) && self.flows.get(slot).vip.0 == dst {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&f[6..12]);
                    self.legs.insert(k, (slot, gen));
                    self.devices.insert(
                        (slot, gen),
                        DeviceAddr {
                            ip: k.src,
                            port: k.sport,
                            mac,
                            vport: m.dport,
                        },
                    );
                    return self.forward_to_server(f, m, slot, gen, false, false);
                }
            }
        }
        if idx.is_none() && migration && is_syn && !self.mports.contains_key(&m.dport) {
            // Nobody waits on this migration port (never reserved, or its migration ended: a
            // target that connects late): answered as a closed port, not left hanging.
            return self.refuse_syn(f, m);
        }
        if let Some(i) = idx {
            // A new SYN on a closed flow's tuple: the client reuses its port; start afresh.
            if is_syn
                && matches!(
                    self.flows.get(i).state,
                    TcpState::TimeWait | TcpState::Closed
                )
            {
                self.close(i);
                idx = None;
            }
        }
        let created = idx.is_none();
        let idx = match (idx, svc) {
            (Some(i), _) => i,
            (None, Some(svc)) if is_syn => match self.create(svc, &k, f) {
                Ok(i) => i,
                Err(c) => return Verdict::Drop(c),
            },
            _ => return Verdict::Drop(Cause::NoFlow),
        };
        let gen = self.current_device(idx);
        self.forward_to_server(f, m, idx, gen, created && is_syn, true)
    }

    /// Whether the segment's TCP checksum is right: the NIC's word when it checked, else one
    /// pass over the segment.
    #[inline]
    fn checksum_ok(&self, f: &[u8], m: &TcpMeta) -> bool {
        match self.rx_checksum {
            RxChecksum::Good => true,
            RxChecksum::Bad => false,
            RxChecksum::Unknown => tcp_checksum_ok(f, m),
        }
    }

    /// The device generation that currently holds flow `slot`.
    pub(super) fn current_device(&self, slot: u32) -> u32 {
        if self.current.is_empty() || !self.flows.contains(slot) || !self.flows.get(slot).moved() {
            0
        } else {
            self.current.get(&slot).copied().unwrap_or(0)
        }
    }

    /// Translates a client-side segment of flow `idx` (from device `gen`) toward the server.
    /// `track`: the segment is the current device's and moves the flow's TCP state.
    pub(super) fn forward_to_server(
        &mut self,
        f: &mut [u8],
        m: &TcpMeta,
        idx: u32,
        gen: u32,
        created: bool,
        track: bool,
    ) -> Verdict {
        let fl = *self.flows.get(idx);
        let Some(mac) = self.next_hop_mac(self.server, fl.backend.0) else {
            return Verdict::Drop(if self.route(self.server, fl.backend.0).is_none() {
                Cause::NoRoute
            } else {
                Cause::NeighbourMiss
            });
        };
        let Some(mut s) = TcpSegmentMut::new(f, m) else {
            return Verdict::Drop(Cause::Wire(DropReason::Truncated));
        };
        let is_syn = m.flags.has(TcpFlags::SYN) && !m.flags.has(TcpFlags::ACK);
        if is_syn && track {
            let o = LegOptions {
                mss: s.mss().map_or(0, |v| {
                    if self.mss_clamp != 0 {
                        v.min(self.mss_clamp)
                    } else {
                        v
                    }
                }),
                wscale: s.wscale(),
                sack: s.options().sack_perm.is_some(),
                ts: s.options().ts.is_some(),
            };
            if self.mss_clamp != 0 && s.clamp_mss(self.mss_clamp) {
                self.stats.mss_clamped += 1;
            }
            self.flows.get_mut(idx).client_opts = o;
        }
        s.set_tuple(fl.snat.0, fl.backend.0, fl.snat.1, fl.backend.1);
        set_macs(f, mac, self.server.mac);
        if track && !self.defer_tracking {
            self.track(idx, true, m);
        }
        self.hit = Some(FlowHit {
            slot: idx,
            from_server: false,
            created,
            device: gen,
            meta: *m,
            track,
        });
        Verdict::Tx(self.server.port)
    }

    pub(super) fn server_segment(&mut self, f: &mut [u8], m: &TcpMeta) -> Verdict {
        let dst = ip_u32(m.dst);
        if !self.is_ours(self.server, dst) {
            return Verdict::Drop(Cause::NotForUs);
        }
        if !self.snat_addrs.contains(&dst) {
            return Verdict::Drop(Cause::NoService);
        }
        let owner = usize::from(m.dport) % self.workers;
        if owner != self.worker {
            return Verdict::HandOff(owner);
        }
        if !self.checksum_ok(f, m) {
            return Verdict::Drop(Cause::Wire(DropReason::TcpBadChecksum));
        }
        let k = Key {
            src: ip_u32(m.src),
            dst,
            sport: m.sport,
            dport: m.dport,
        };
        let Some(idx) = self.flows.lookup(&k) else {
            return Verdict::Drop(Cause::NoFlow);
        };
        let fl = *self.flows.get(idx);
        let Some(mut s) = TcpSegmentMut::new(f, m) else {
            return Verdict::Drop(Cause::Wire(DropReason::Truncated));
        };
        if m.flags.has(TcpFlags::SYN) {
            let o = LegOptions {
                mss: s.mss().unwrap_or(0),
                wscale: s.wscale(),
                sack: s.options().sack_perm.is_some(),
                ts: s.options().ts.is_some(),
            };
            self.flows.get_mut(idx).server_opts = o;
        }
        s.set_tuple(fl.vip.0, fl.client.0, fl.vip.1, fl.client.1);
        set_macs(f, fl.client_mac, self.client.mac);
        if !self.defer_tracking {
            self.track(idx, false, m);
        }
        self.hit = Some(FlowHit {
            slot: idx,
            from_server: true,
            created: false,
            device: 0,
            meta: *m,
            track: true,
        });
        Verdict::Tx(self.client.port)
    }

    pub(super) fn create(&mut self, svc: usize, k: &Key, f: &[u8]) -> Result<u32, Cause> {
        if !self.flows.has_room() {
            return Err(Cause::TableFull);
        }
        let (a, port) = self.snat_ports.pop_front().ok_or(Cause::PortsExhausted)?;
        let s = self.services[svc];
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&f[6..12]);
        // A SNAT port is in the pool only while no flow holds it (ports return when their flow
        // is removed), so the server-side key of the new flow is unique. The FIFO order makes
        // the reuse distance of a port as long as the pool allows (the server may still hold the
        // old tuple in TIME_WAIT).
        let mut fl = Flow::new(
            (k.src, k.sport),
            (s.vip, s.port),
            (s.backend, s.backend_port),
            (self.snat_addrs[usize::from(a)], port),
            mac,
            u16::try_from(svc).unwrap_or(0),
        );
        fl.expires = self.now_tick().wrapping_add(self.timeouts[0]);
        let Some(idx) = self.flows.insert(fl, self.now_tick()) else {
            self.snat_ports.push_back((a, port));
            return Err(Cause::TableFull);
        };
        self.stats.flows_created += 1;
        Ok(idx)
    }

    /// Updates the tracking state of a flow for a segment in one direction, and its expiry.
    pub(super) fn track(&mut self, idx: u32, from_client: bool, m: &TcpMeta) {
        let fl = self.flows.get_mut(idx);
        let before = fl.state;
        let fl_flags = m.flags;
        if fl_flags.has(TcpFlags::RST) {
            fl.state = TcpState::Closed;
        } else {
            match fl.state {
                TcpState::SynSent
                    if !from_client && fl_flags.has(TcpFlags::SYN | TcpFlags::ACK) =>
                {
                    fl.state = TcpState::SynRecv
                }
                TcpState::SynRecv
                    if from_client
                        && fl_flags.has(TcpFlags::ACK)
                        && !fl_flags.has(TcpFlags::SYN) =>
                {
                    fl.state = TcpState::Established
                }
                _ => {}
            }
            if fl_flags.has(TcpFlags::FIN) {
                let end: SeqNumber = m.seq + m.seq_len();
                if from_client {
                    fl.fin |= fin::CLIENT_SENT;
                    fl.client_fin_end = end;
                } else {
                    fl.fin |= fin::SERVER_SENT;
                    fl.server_fin_end = end;
                }
                if matches!(
                    fl.state,
                    TcpState::Established | TcpState::SynRecv | TcpState::SynSent
                ) {
                    fl.state = TcpState::FinWait;
                }
            }
            if fl_flags.has(TcpFlags::ACK) {
                if from_client
                    && fl.fin & fin::SERVER_SENT != 0
                    && m.ack.diff(fl.server_fin_end) >= 0
                {
                    fl.fin |= fin::SERVER_ACKED;
                }
                if !from_client
                    && fl.fin & fin::CLIENT_SENT != 0
                    && m.ack.diff(fl.client_fin_end) >= 0
                {
                    fl.fin |= fin::CLIENT_ACKED;
                }
            }
            if fl.fin & (fin::CLIENT_ACKED | fin::SERVER_ACKED)
                == fin::CLIENT_ACKED | fin::SERVER_ACKED
            {
                fl.state = TcpState::TimeWait;
            }
        }
        self.refresh_expiry(idx, Some(before));
    }

    /// Restarts the idle timer of flow `idx` for its state; `before`: its state before the
    /// segment (a new state with a shorter timeout moves it in the wheel).
    pub(super) fn refresh_expiry(&mut self, idx: u32, before: Option<TcpState>) {
        let now = self.now_tick();
        let jitter = if self.jitter_ticks > 0 {
            idx.wrapping_mul(2_654_435_761) % self.jitter_ticks
        } else {
            0
        };
        let timeout = self.timeouts[self.flows.get(idx).state as usize];
        let fl = self.flows.get_mut(idx);
        let new_exp = now.wrapping_add(timeout).wrapping_add(jitter);
        let shorter = i32::from_ne_bytes(new_exp.wrapping_sub(fl.expires).to_ne_bytes()) < 0;
        fl.expires = new_exp;
        if before.is_some_and(|b| b != fl.state) && shorter {
            self.flows.reschedule(idx);
        }
    }

    pub(super) fn close(&mut self, idx: u32) {
        let fl = self.flows.remove(idx);
        self.closed.push(idx);
        self.forget_devices(idx);
        if let Some(a) = self.snat_addrs.iter().position(|&x| x == fl.snat.0) {
            self.snat_ports
                .push_back((u8::try_from(a).unwrap_or(0), fl.snat.1));
        }
        self.stats.flows_closed += 1;
    }
}
