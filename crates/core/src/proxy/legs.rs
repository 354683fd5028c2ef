//! Migrations' side of the NAT: migration ports reserved for a target device, the devices of a
//! migrating flow (where the engine's own segments go), and the switch of the flow's client side
//! to the device that took it over.

use super::*;

impl ProxyCore {
    /// Where segments the proxy originates for flow `slot` go: the port and the addresses of
    /// the server leg (`device: None`) or of device generation `device` (a migrating flow's
    /// target or former device, or the current one), or `None` if the flow is gone or the
    /// server's next hop is not resolved.
    pub fn endpoints(&mut self, slot: u32, device: Option<u32>) -> Option<(usize, Endpoints)> {
        if !self.flows.contains(slot) {
            return None;
        }
        let fl = *self.flows.get(slot);
        let Some(gen) = device else {
            let mac = self.next_hop_mac(self.server, fl.backend.0)?;
            return Some((
                self.server.port,
                Endpoints {
                    src_mac: self.server.mac,
                    dst_mac: mac,
                    src: fl.snat.0.to_be_bytes(),
                    dst: fl.backend.0.to_be_bytes(),
                    sport: fl.snat.1,
                    dport: fl.backend.1,
                },
            ));
        };
        let d = match self.devices.get(&(slot, gen)) {
            Some(d) => *d,
            None if gen == self.current_device(slot) => DeviceAddr::current(&fl),
            None => return None,
        };
        Some((
            self.client.port,
            Endpoints {
                src_mac: self.client.mac,
                dst_mac: d.mac,
                src: fl.vip.0.to_be_bytes(),
                dst: d.ip.to_be_bytes(),
                sport: d.vport,
                dport: d.port,
            },
        ))
    }

    /// The flow of client `client` talking to service address `vip`, if this worker has it.
    pub fn lookup_client(&self, client: (u32, u16), vip: (u32, u16)) -> Option<u32> {
        self.flows.lookup(&Key::client(client, vip))
    }

    /// The worker that owns the flow of `client` to `vip` (the same hash every worker uses).
    pub fn owner_of(
        hasher: &FlowHasher,
        workers: usize,
        client: (u32, u16),
        vip: (u32, u16),
    ) -> usize {
        owner_of_hash(hasher.key(&Key::client(client, vip)), workers)
    }

    /// Reserves a migration port for device generation `gen` of flow `slot`: the target
    /// connects to the flow's VIP on it, from address `expect` only when given (a SYN from
    /// elsewhere is dropped and counted). `None` when this worker's ports are exhausted.
    pub fn reserve_migration(&mut self, slot: u32, gen: u32, expect: Option<u32>) -> Option<u16> {
        if !self.flows.contains(slot) {
            return None;
        }
        let p = self.mports_free.pop_front()?;
        self.mports.insert(p, (slot, gen, expect));
        self.flows.get_mut(slot).fin |= fin::MIGRATED;
        Some(p)
    }

    /// The service (VIP, service port) flow `slot` was opened to.
    pub fn service_of(&self, slot: u32) -> Option<(u32, u16)> {
        if !self.flows.contains(slot) {
            return None;
        }
        // After a migration the flow's client side names a migration port; the service is the
        // one of that VIP with the flow's backend.
        let fl = self.flows.get(slot);
        self.services
            .iter()
            .find(|s| s.vip == fl.vip.0 && (s.backend, s.backend_port) == fl.backend)
            .map(|s| (s.vip, s.port))
    }

    /// Returns a reserved migration port whose migration did not start.
    pub fn release_migration(&mut self, port: u16) {
        if self.mports.remove(&port).is_some() {
            self.mports_free.push_back(port);
        }
    }

    /// The migration of flow `slot` ended (resumed on a device, cancelled, or reset): its port
    /// goes back to the pool. The device that took the flow keeps talking to that port (its
    /// 4-tuple stays unique: a later target is another address or source port), and a SYN
    /// that arrives on it later is answered with an RST.
    pub fn end_migration(&mut self, slot: u32) {
        if self.mports.is_empty() {
            return;
        }
        let free = &mut self.mports_free;
        self.mports.retain(|p, v| {
            let ours = v.0 == slot;
            if ours {
                free.push_back(*p);
            }
            !ours
        });
    }

    /// Migration ports this worker can still hand out.
    pub fn migration_ports_free(&self) -> usize {
        self.mports_free.len()
    }

    /// Turns a SYN around, in place, into the RST|ACK a closed port answers with (RFC 9293
    /// 3.10.7.1: sequence 0, acknowledging the SYN), back to its sender on the client side.
    pub(super) fn refuse_syn(&mut self, f: &mut [u8], m: &TcpMeta) -> Verdict {
        let (l3, l4, doff) = (ETH_LEN, m.l4, m.tcp_hdr_len);
        if f.len() < l4 + doff || l4 < l3 + 20 {
            return Verdict::Drop(Cause::Wire(DropReason::Truncated));
        }
        let mut peer = [0u8; 6];
        peer.copy_from_slice(&f[6..12]);
        set_macs(f, peer, self.client.mac);
        let ip = &mut f[l3..l4];
        let (src, dst) = (m.src, m.dst);
        ip[12..16].copy_from_slice(&dst);
        ip[16..20].copy_from_slice(&src);
        let total = u16::try_from(ip.len() + doff).unwrap_or(u16::MAX);
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[8] = 64;
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(0, ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let t = &mut f[l4..l4 + doff];
        let (sport, dport) = (m.sport, m.dport);
        t[0..2].copy_from_slice(&dport.to_be_bytes());
        t[2..4].copy_from_slice(&sport.to_be_bytes());
        t[4..8].copy_from_slice(&0u32.to_be_bytes());
        let ack = m.seq + 1 + u32::try_from(m.payload_len).unwrap_or(0);
        t[8..12].copy_from_slice(&ack.0.to_be_bytes());
        t[13] = TcpFlags::RST | TcpFlags::ACK;
        t[14..20].fill(0);
        // The SYN's options become no-ops (the header keeps its length).
        t[20..].fill(1);
        let acc = checksum::pseudo_ipv4(dst, src, 6, u16::try_from(doff).unwrap_or(0));
        let c = checksum::finish(checksum::sum(acc, t));
        t[16..18].copy_from_slice(&c.to_be_bytes());
        self.stats.syn_resets += 1;
        Verdict::Tx(self.client.port)
    }

    /// The device generation that holds flow `slot` (0 until it migrated).
    pub fn device_of(&self, slot: u32) -> u32 {
        self.current_device(slot)
    }

    /// Device `to` took flow `slot` over from device `from` (the engine spliced): the flow's
    /// client side now is `to` (the NAT sends the server's segments there); `from` stays
    /// reachable as a former device until the flow goes.
    pub fn switch_device(&mut self, slot: u32, from: u32, to: u32) -> bool {
        let Some(&d) = self.devices.get(&(slot, to)) else {
            return false;
        };
        if !self.flows.contains(slot) {
            return false;
        }
        let fl = *self.flows.get(slot);
        let old = DeviceAddr::current(&fl);
        if !self
            .flows
            .rekey_client(slot, (d.ip, d.port), (fl.vip.0, d.vport))
        {
            return false;
        }
        self.flows.get_mut(slot).client_mac = d.mac;
        self.legs.remove(&d.key(fl.vip.0));
        self.legs.insert(old.key(fl.vip.0), (slot, from));
        self.devices.insert((slot, from), old);
        self.devices.remove(&(slot, to));
        self.current.insert(slot, to);
        true
    }

    /// Forgets the device legs and returns the migration ports of a removed flow.
    pub(super) fn forget_devices(&mut self, slot: u32) {
        // The removed flow's entry stays readable until its slot is reused.
        if (self.devices.is_empty() && self.mports.is_empty()) || !self.flows.get(slot).moved() {
            return;
        }
        self.legs.retain(|_, v| v.0 != slot);
        self.devices.retain(|k, _| k.0 != slot);
        self.current.remove(&slot);
        self.end_migration(slot);
    }
}
