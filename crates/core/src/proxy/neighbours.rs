//! Neighbours and the appliance's own traffic: routes and next hops, ARP (answers, requests,
//! learning, the sweep) and ICMP echo to the proxy's addresses.

use super::*;

impl ProxyCore {
    pub(super) fn route(&self, side: Side, dst: u32) -> Option<u32> {
        if side.on_link(dst) {
            Some(dst)
        } else {
            side.gateway
        }
    }

    pub(super) fn next_hop_mac(&mut self, side: Side, dst: u32) -> Option<[u8; 6]> {
        let hop = self.route(side, dst)?;
        if let Some(n) = self.neighbours.get(&hop) {
            return Some(n.mac);
        }
        let now = self.now_ms;
        let due = self
            .arp_sent
            .get(&hop)
            .is_none_or(|&t| now.saturating_sub(t) >= 200);
        if due
            && self.arp_out.len() < self.arp_out.capacity()
            && self.arp_sent.len() < self.max_neighbours
        {
            self.arp_sent.insert(hop, now);
            self.arp_out.push((side.port, hop));
        }
        None
    }

    /// Learns a neighbour (also used for entries learned by other workers).
    pub fn learn(&mut self, ip: u32, mac: [u8; 6]) {
        if self.neighbours.len() < self.max_neighbours || self.neighbours.contains_key(&ip) {
            self.neighbours.insert(
                ip,
                Neighbour {
                    mac,
                    seen_ms: self.now_ms,
                },
            );
            self.arp_sent.remove(&ip);
        }
    }

    /// Once a second: forget ARP requests nobody answered, and ask again neighbours not heard
    /// from for a while (their MAC stays in use until a reply updates it). Bounded by the tables'
    /// sizes (at most `max_neighbours` entries each), no allocation.
    pub(super) fn sweep_neighbours(&mut self) {
        let now = self.now_ms;
        if now.saturating_sub(self.last_sweep_ms) < SWEEP_MS {
            return;
        }
        self.last_sweep_ms = now;
        self.arp_sent
            .retain(|_, t| now.saturating_sub(*t) < ARP_GIVE_UP_MS);
        for (&ip, n) in &self.neighbours {
            if self.arp_out.len() == self.arp_out.capacity()
                || self.arp_sent.len() >= self.max_neighbours
            {
                break;
            }
            if now.saturating_sub(n.seen_ms) >= NEIGHBOUR_REFRESH_MS
                && !self.arp_sent.contains_key(&ip)
            {
                let port = if self.server.on_link(ip) {
                    self.server.port
                } else {
                    self.client.port
                };
                self.arp_sent.insert(ip, now);
                self.arp_out.push((port, ip));
            }
        }
    }

    /// Neighbours learned by this worker since the last call (to share with other workers).
    pub fn take_learned(&mut self) -> impl Iterator<Item = (u32, [u8; 6])> + '_ {
        self.learned.drain(..)
    }

    /// ARP requests to send: (port index, target address).
    pub fn take_arp_requests(&mut self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.stats.arp_requests += self.arp_out.len() as u64;
        self.arp_out.drain(..)
    }

    /// Writes an ARP request for `target` from port `port` into `buf` (>= 42 bytes); returns the
    /// frame length (0 if `buf` is too small or the port is not one of ours).
    pub fn build_arp_request(&self, port: usize, target: u32, buf: &mut [u8]) -> usize {
        let side = if port == self.client.port {
            self.client
        } else if port == self.server.port {
            self.server
        } else {
            return 0;
        };
        if buf.len() < 42 {
            return 0;
        }
        buf[0..6].fill(0xff);
        buf[6..12].copy_from_slice(&side.mac);
        buf[12..14].copy_from_slice(&wire::ETHERTYPE_ARP.to_be_bytes());
        buf[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        buf[22..28].copy_from_slice(&side.mac);
        buf[28..32].copy_from_slice(&side.ip.to_be_bytes());
        buf[32..38].fill(0);
        buf[38..42].copy_from_slice(&target.to_be_bytes());
        42
    }

    pub(super) fn arp(&mut self, side: Side, f: &mut [u8]) -> Verdict {
        if f.len() < ETH_LEN + 28 || f[14..20] != [0, 1, 8, 0, 6, 4] {
            return Verdict::Drop(Cause::ArpIgnored);
        }
        let op = u16::from_be_bytes([f[20], f[21]]);
        let mut sha = [0u8; 6];
        sha.copy_from_slice(&f[22..28]);
        let spa = u32::from_be_bytes([f[28], f[29], f[30], f[31]]);
        let tpa = u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
        if side.on_link(spa) && spa != side.ip && sha[0] & 1 == 0 {
            if self.neighbours.get(&spa).map(|n| n.mac) != Some(sha)
                && self.learned.len() < self.learned.capacity()
            {
                self.learned.push((spa, sha));
            }
            self.learn(spa, sha);
        }
        if op != 1 || !self.is_ours(side, tpa) {
            return Verdict::Drop(Cause::ArpIgnored);
        }
        // Turn the request into the reply, in place.
        f[20..22].copy_from_slice(&2u16.to_be_bytes());
        f[32..38].copy_from_slice(&sha);
        f[38..42].copy_from_slice(&spa.to_be_bytes());
        f[22..28].copy_from_slice(&side.mac);
        f[28..32].copy_from_slice(&tpa.to_be_bytes());
        set_macs(f, sha, side.mac);
        self.stats.arp_replies += 1;
        Verdict::Tx(side.port)
    }

    pub(super) fn icmp(&mut self, side: Side, f: &mut [u8], l4: usize) -> Verdict {
        if f.len() < l4 + 8 || f[l4] != 8 || f[l4 + 1] != 0 {
            return Verdict::Drop(Cause::IcmpOther);
        }
        // Echo reply in place: swap addresses (the IPv4 checksum is unchanged by a swap), type 0.
        let mut src = [0u8; 4];
        src.copy_from_slice(&f[ETH_LEN + 12..ETH_LEN + 16]);
        f.copy_within(ETH_LEN + 16..ETH_LEN + 20, ETH_LEN + 12);
        f[ETH_LEN + 16..ETH_LEN + 20].copy_from_slice(&src);
        let hc = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
        f[l4] = 0;
        f[l4 + 2..l4 + 4].copy_from_slice(&checksum::update16(hc, 0x0800, 0x0000).to_be_bytes());
        let mut peer = [0u8; 6];
        peer.copy_from_slice(&f[6..12]);
        set_macs(f, peer, side.mac);
        self.stats.icmp_echo_replies += 1;
        Verdict::Tx(side.port)
    }
}
