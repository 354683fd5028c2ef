//! The stateful TCP generator: both ends of N TCP flows through the proxy under test.
//!
//! ```text
//!   port A (client side)                       port B (server side)
//!   clients 198.18.128.0+i/60000 : 2000+i%60000   backend 198.19.0.2:8080
//!     SYN  -> VIP 198.18.0.10:80  -> [proxy] ->  SYN from a SNAT address:port
//!     ACK  <- SYN-ACK              <- [proxy] <-  SYN-ACK
//!     ACK (per data segment)       -> [proxy] ->  window/ack update
//!     data <- (stamped)            <- [proxy] <-  data segments, round robin over the flows
//!
//!   migrations (optional): the operator asks the proxy's control socket to migrate flow i; the
//!   generator then plays the new device 198.18.192.0+i/60000 : 2000+i%60000, which connects to
//!   the VIP on the migration port the proxy named; the stream continues there, and the old
//!   device answers the proxy's FIN that retires it.
//! ```
//!
//! Invariants and conventions:
//! - a flow is its index `i`: the client address and port are computed from it (A side needs
//!   no table), the client's ISN is `i << 10`, so the SYN that reaches port B names its flow
//!   (the proxy splices sequence numbers unchanged until a migration), and B maps the SNAT
//!   address:port to `i` from then on;
//! - the server side keeps TCP's rules: it sends only within the window the client advertised
//!   (a zero window, as the proxy sends to freeze a server, stops the flow), one segment per
//!   flow per round;
//! - the client side ACKs every data segment (the frame it arrived in becomes the ACK), so the
//!   proxy's per-flow caches never hold more than what is in flight;
//! - every data segment carries, in its first 6 payload bytes, the low 48 bits of the TSC when
//!   it was built, and the receiver records the one-way latency through the forwarder (both ends
//!   share the generator's clock);
//! - the new device of a migrated flow uses the flow's ISN too and ACKs every segment like the
//!   old one; the time from the request to its first data segment is the migration's pause as
//!   the user sees it;
//! - received frames are checked (IPv4 and TCP checksums, that they belong to a known flow,
//!   in-order data) on every `check_every`-th frame; a mismatch is counted, never fatal.

use serde::{Deserialize, Serialize};
use tsmp_core::wire::build::{write_tcp_frame, Endpoints, TcpFields};
use tsmp_core::wire::{checksum, classify, tcp_checksum_ok, Frame, SeqNumber, TcpFlags};

/// The service the generator's clients connect to (the bench profile's VIP and port).
pub const VIP: [u8; 4] = [198, 18, 0, 10];
/// The service port.
pub const VIP_PORT: u16 = 80;
/// The backend the proxy connects to (played by port B).
pub const BACKEND: [u8; 4] = [198, 19, 0, 2];
/// The backend's port.
pub const BACKEND_PORT: u16 = 8080;
/// The proxy's addresses on the two ports (asked for by ARP at start).
pub const PROXY_A: [u8; 4] = [198, 18, 0, 254];
/// The proxy's server-side address.
pub const PROXY_B: [u8; 4] = [198, 19, 0, 254];
const CLIENT_BASE: u32 = u32::from_be_bytes([198, 18, 128, 0]);
/// The new devices of migrated flows (as many addresses as clients, 64 addresses above them).
const TARGET_BASE: u32 = u32::from_be_bytes([198, 18, 192, 0]);
const PORTS_PER_CLIENT: u32 = 60_000;
const PORT_BASE: u32 = 2_000;
/// Most flows a run can have (the ISN carries the index in its top 22 bits).
pub const MAX_FLOWS: u32 = 1 << 22;
/// The window both ends advertise (no scaling).
const WINDOW: u16 = 65_535;
/// Ethernet minimum without FCS: ACKs are padded to it, as a NIC would.
const MIN_FRAME: usize = 60;
const HDR: usize = 54;

/// Payload sizes of data segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sizes {
    /// One frame size on the wire (FCS included).
    Fixed(usize),
    /// Simple IMIX by frame count: 7 x 64 B, 4 x 594 B, 1 x 1518 B.
    Imix,
}

impl Sizes {
    /// Parses `64`, `1500` or `imix`.
    pub fn parse(s: &str) -> Result<Sizes, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(Sizes::Imix);
        }
        let n: usize = s
            .parse()
            .map_err(|_| format!("size {s:?}: a frame size in bytes (64..=1518) or imix"))?;
        if !(64..=1518).contains(&n) {
            return Err(format!("size {n}: frames are 64..=1518 bytes on the wire"));
        }
        Ok(Sizes::Fixed(n))
    }

    /// The frame length without FCS of the `k`-th segment.
    #[inline]
    fn frame_len(&self, k: u64) -> usize {
        const IMIX: [usize; 12] = [64, 594, 64, 64, 594, 64, 1518, 64, 594, 64, 64, 594];
        match self {
            Sizes::Fixed(n) => n - 4,
            Sizes::Imix => IMIX[(k % 12) as usize] - 4,
        }
    }
}

/// The client address and port of flow `i`.
#[inline]
pub fn client_of(i: u32) -> ([u8; 4], u16) {
    let ip = CLIENT_BASE + i / PORTS_PER_CLIENT;
    (ip.to_be_bytes(), (PORT_BASE + i % PORTS_PER_CLIENT) as u16)
}

/// The address and port of flow `i`'s new device (migrations).
#[inline]
pub fn target_of(i: u32) -> ([u8; 4], u16) {
    let ip = TARGET_BASE + i / PORTS_PER_CLIENT;
    (ip.to_be_bytes(), (PORT_BASE + i % PORTS_PER_CLIENT) as u16)
}

/// The flow of an address and port as seen on port A: `(flow, whether it is the new device)`.
#[inline]
fn flow_of_device(ip: [u8; 4], port: u16) -> Option<(u32, bool)> {
    match flow_of(CLIENT_BASE, ip, port) {
        Some(i) if u32::from_be_bytes(ip) < TARGET_BASE => Some((i, false)),
        _ => flow_of(TARGET_BASE, ip, port).map(|i| (i, true)),
    }
}

fn flow_of(base: u32, ip: [u8; 4], port: u16) -> Option<u32> {
    let host = u32::from_be_bytes(ip).checked_sub(base)?;
    let p = u32::from(port).checked_sub(PORT_BASE)?;
    if p >= PORTS_PER_CLIENT {
        return None;
    }
    host.checked_mul(PORTS_PER_CLIENT)?.checked_add(p)
}

fn isn(i: u32) -> u32 {
    i << 10
}

/// Counters of a run (the generator's own view; the forwarder's are in its stats).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TcpCounters {
    /// SYNs sent (first tries and retries).
    pub syns: u64,
    /// SYNs the server side saw (and answered).
    pub syns_at_server: u64,
    /// Handshakes completed at the client (SYN-ACK received, ACK sent).
    pub established: u64,
    /// Data segments sent by the server side.
    pub data_sent: u64,
    /// Data segments received by the client side.
    pub data_received: u64,
    /// Payload bytes received by the client side.
    pub data_bytes: u64,
    /// Wire bytes (FCS included) of the data segments received.
    pub data_wire_bytes: u64,
    /// ACKs sent by the client side.
    pub acks_sent: u64,
    /// ACKs received by the server side.
    pub acks_received: u64,
    /// Data segments that arrived out of order (a gap before them: a loss).
    pub out_of_order: u64,
    /// Frames with a bad IPv4 or TCP checksum.
    pub bad_checksum: u64,
    /// Frames of no known flow, or not TCP/ARP.
    pub unknown: u64,
    /// Frames checked (every check_every-th).
    pub checked: u64,
    /// Latency stamps parsed.
    pub stamps: u64,
    /// RSTs received (either side).
    pub resets: u64,
    /// Zero-window updates received by the server side.
    pub zero_windows: u64,
    /// Frames the generator could not enqueue.
    pub tx_backpressure: u64,
    /// ARP replies sent (for the backend's address).
    pub arp_replies: u64,
    /// Data segments received by flows chosen for migration (before and after their move).
    pub data_received_migrating: u64,
    /// SYNs the new devices sent (first tries and retries).
    pub migration_syns: u64,
    /// New devices whose handshake completed.
    pub migrations_connected: u64,
    /// New devices that received their first data segment (the migration is done for the
    /// user).
    pub migrations_completed: u64,
    /// FINs that retired an old device, answered.
    pub old_devices_closed: u64,
    /// Other frames to an old device after its flow moved (ignored).
    pub to_old_device_after_move: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Client {
    /// 0 idle, 1 SYN sent, 2 established.
    state: u8,
    /// Chosen for migration.
    migrating: bool,
    /// The new device took the flow over (its handshake completed).
    moved: bool,
    rcv_nxt: u32,
    /// TSC when the migration was requested (0: none pending).
    mig_at: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Server {
    /// SNAT address << 16 | port (0: no SYN seen yet).
    peer: u64,
    nxt: u32,
    una: u32,
    wnd: u16,
    est: bool,
}

/// The generator's state for all flows. Sans-IO: it is handed received frames and buffers to
/// fill; the DPDK loop around it only moves mbufs.
#[derive(Debug)]
pub struct TcpGen {
    /// Flows in the run.
    pub flows: u32,
    clients: Vec<Client>,
    servers: Vec<Server>,
    by_peer: Peers,
    /// Server-side flows ready to send, in round-robin order.
    ready: Vec<u32>,
    cursor: usize,
    /// Next flow to send a SYN for.
    pub next_syn: u32,
    /// MACs: port A, port B, the proxy's on A and on B (learned by ARP).
    pub mac_a: [u8; 6],
    /// Port B's MAC.
    pub mac_b: [u8; 6],
    /// The proxy's MAC on A.
    pub proxy_a: Option<[u8; 6]>,
    /// The proxy's MAC on B.
    pub proxy_b: Option<[u8; 6]>,
    /// Data segment sizes.
    pub sizes: Sizes,
    /// Check every n-th received frame (1: all).
    pub check_every: u64,
    seen: u64,
    sent_k: u64,
    /// Counters.
    pub c: TcpCounters,
    filler: Vec<u8>,
    /// TSC cycles from each migration's request to its new device's first data segment.
    pub migration_cycles: Vec<u64>,
    /// TSC cycles from each migration's request to its new device's handshake (SYN-ACK).
    pub connect_cycles: Vec<u64>,
}

/// What a received frame turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to send (the frame can be freed).
    None,
    /// The frame was rewritten in place into a reply of this length, to send on the same port.
    Send(usize),
}

impl TcpGen {
    /// A generator for `flows` flows.
    pub fn new(flows: u32, sizes: Sizes, mac_a: [u8; 6], mac_b: [u8; 6]) -> TcpGen {
        let n = flows as usize;
        TcpGen {
            flows,
            clients: vec![Client::default(); n],
            servers: vec![Server::default(); n],
            by_peer: Peers::new(n),
            ready: Vec::with_capacity(n),
            cursor: 0,
            next_syn: 0,
            mac_a,
            mac_b,
            proxy_a: None,
            proxy_b: None,
            sizes,
            check_every: 64,
            seen: 0,
            sent_k: 0,
            c: TcpCounters::default(),
            filler: (0..1518u32).map(|i| (i * 31 + 7) as u8).collect(),
            migration_cycles: Vec::new(),
            connect_cycles: Vec::new(),
        }
    }

    /// Marks flow `i` as one that will migrate (its data is counted apart).
    pub fn choose_for_migration(&mut self, i: u32) {
        if let Some(c) = self.clients.get_mut(i as usize) {
            c.migrating = true;
        }
    }

    /// Notes that flow `i`'s migration was requested at `now_tsc`.
    pub fn migration_requested(&mut self, i: u32, now_tsc: u64) {
        if let Some(c) = self.clients.get_mut(i as usize) {
            c.mig_at = now_tsc.max(1);
        }
    }

    /// Whether flow `i`'s new device completed its handshake.
    pub fn moved(&self, i: u32) -> bool {
        self.clients.get(i as usize).is_some_and(|c| c.moved)
    }

    /// The SYN of flow `i`'s new device to the VIP's migration port `mport`; `None` until the
    /// proxy's MAC is known.
    pub fn target_syn(&mut self, i: u32, mport: u16, out: &mut [u8]) -> Option<usize> {
        let dst_mac = self.proxy_a?;
        self.c.migration_syns += 1;
        Some(self.syn_frame(i, target_of(i), mport, dst_mac, out))
    }

    /// Handshakes completed.
    pub fn established(&self) -> u64 {
        self.c.established
    }

    /// Server-side flows that may send.
    #[cfg(test)]
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// An ARP request from `mac` for `target` (on the port of `mac`); 42 bytes.
    pub fn arp_request(out: &mut [u8], mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> usize {
        out[..6].fill(0xff);
        out[6..12].copy_from_slice(&mac);
        out[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        out[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        out[22..28].copy_from_slice(&mac);
        out[28..32].copy_from_slice(&ip);
        out[32..38].fill(0);
        out[38..42].copy_from_slice(&target);
        out[42..MIN_FRAME].fill(0);
        MIN_FRAME
    }

    /// Builds the SYN of the next flow into `out`; `None` when all flows have one or the
    /// proxy's MAC is not known yet.
    pub fn next_syn(&mut self, out: &mut [u8]) -> Option<usize> {
        let dst_mac = self.proxy_a?;
        let i = self.next_syn;
        if i >= self.flows {
            return None;
        }
        self.next_syn += 1;
        Some(self.syn(i, dst_mac, out))
    }

    /// Builds a SYN again for flow `i` if it has not completed its handshake.
    pub fn retry_syn(&mut self, i: u32, out: &mut [u8]) -> Option<usize> {
        let dst_mac = self.proxy_a?;
        (self.clients.get(i as usize)?.state == 1).then(|| self.syn(i, dst_mac, out))
    }

    fn syn(&mut self, i: u32, dst_mac: [u8; 6], out: &mut [u8]) -> usize {
        self.clients[i as usize].state = 1;
        self.c.syns += 1;
        self.syn_frame(i, client_of(i), VIP_PORT, dst_mac, out)
    }

    /// A SYN of flow `i` (its ISN, MSS 1460) from `(ip, port)` to the VIP's `dport`.
    fn syn_frame(
        &self,
        i: u32,
        (ip, port): ([u8; 4], u16),
        dport: u16,
        dst_mac: [u8; 6],
        out: &mut [u8],
    ) -> usize {
        let ep = Endpoints {
            src_mac: self.mac_a,
            dst_mac,
            src: ip,
            dst: VIP,
            sport: port,
            dport,
        };
        let f = TcpFields {
            seq: SeqNumber(isn(i)),
            flags: TcpFlags::SYN,
            window: WINDOW,
            mss: Some(1460),
            ..TcpFields::default()
        };
        let n = write_tcp_frame(out, &ep, &f, &[]).unwrap_or(0);
        pad(out, n)
    }

    /// Builds the next data segment of the server side into `out` (round robin over the
    /// established flows with window room), stamped with `now_tsc`; `None` when no flow may
    /// send.
    pub fn next_data(&mut self, out: &mut [u8], now_tsc: u64) -> Option<usize> {
        let dst_mac = self.proxy_b?;
        let len = self.sizes.frame_len(self.sent_k);
        let pay = len - HDR;
        let n = self.ready.len();
        for _ in 0..n.min(64) {
            if self.cursor >= n {
                self.cursor = 0;
            }
            let i = self.ready[self.cursor];
            self.cursor += 1;
            let s = &mut self.servers[i as usize];
            let in_flight = s.nxt.wrapping_sub(s.una);
            if in_flight as usize + pay > usize::from(s.wnd) {
                continue;
            }
            let seq = s.nxt;
            s.nxt = s.nxt.wrapping_add(pay as u32);
            let peer = s.peer;
            let ep = Endpoints {
                src_mac: self.mac_b,
                dst_mac,
                src: BACKEND,
                dst: ((peer >> 16) as u32).to_be_bytes(),
                sport: BACKEND_PORT,
                dport: peer as u16,
            };
            let f = TcpFields {
                seq: SeqNumber(seq),
                ack: SeqNumber(isn(i).wrapping_add(1)),
                flags: TcpFlags::ACK | TcpFlags::PSH,
                window: WINDOW,
                ..TcpFields::default()
            };
            let stamp = (now_tsc & 0xffff_ffff_ffff).to_be_bytes();
            let k = pay.min(6);
            let w = write_tcp_frame(out, &ep, &f, &[&stamp[2..2 + k], &self.filler[..pay - k]])
                .unwrap_or(0);
            self.sent_k += 1;
            self.c.data_sent += 1;
            return Some(w);
        }
        None
    }

    fn check(&mut self) -> bool {
        self.seen += 1;
        self.seen % self.check_every == 0
    }

    /// A frame received on port A (the clients' side). Replies are written in place.
    pub fn on_a(&mut self, f: &mut [u8], now_tsc: u64, lat: &mut impl FnMut(u64)) -> Reply {
        let check = self.check();
        let m = match classify(f) {
            Ok(Frame::Tcp(m)) => m,
            Ok(Frame::Arp) => {
                self.learn_proxy_a(f);
                return Reply::None;
            }
            _ => {
                self.c.unknown += 1;
                return Reply::None;
            }
        };
        if check && !self.checksums_ok(f, &m) {
            return Reply::None;
        }
        let Some((i, target)) = flow_of_device(m.dst, m.dport).filter(|&(i, _)| i < self.flows)
        else {
            self.c.unknown += 1;
            return Reply::None;
        };
        if m.flags.has(TcpFlags::RST) {
            self.c.resets += 1;
            return Reply::None;
        }
        let cl = &mut self.clients[i as usize];
        if cl.moved && !target {
            // The old device of a moved flow: it answers the FIN that retires it, like an
            // application that closes its socket; anything else is late and ignored.
            if !m.flags.has(TcpFlags::FIN) {
                self.c.to_old_device_after_move += 1;
                return Reply::None;
            }
            self.c.old_devices_closed += 1;
            return self.reply_to_a(
                f,
                &m,
                i,
                m.seq.0.wrapping_add(m.payload_len as u32 + 1),
                TcpFlags::FIN | TcpFlags::ACK,
            );
        }
        if m.flags.has(TcpFlags::SYN) {
            if !m.flags.has(TcpFlags::ACK) || m.ack.0 != isn(i).wrapping_add(1) {
                self.c.unknown += 1;
                return Reply::None;
            }
            if cl.state != 2 {
                cl.state = 2;
                self.c.established += 1;
            }
            if target && !cl.moved {
                cl.moved = true;
                self.c.migrations_connected += 1;
                if cl.mig_at != 0 {
                    self.connect_cycles.push(now_tsc.saturating_sub(cl.mig_at));
                }
            }
            cl.rcv_nxt = m.seq.0.wrapping_add(1);
        } else if m.payload_len > 0 {
            if target && cl.mig_at != 0 {
                self.migration_cycles
                    .push(now_tsc.saturating_sub(cl.mig_at));
                cl.mig_at = 0;
                self.c.migrations_completed += 1;
            }
            if cl.migrating {
                self.c.data_received_migrating += 1;
            }
            if m.seq.0 == cl.rcv_nxt {
                cl.rcv_nxt = cl.rcv_nxt.wrapping_add(m.payload_len as u32);
            } else if m.seq.0.wrapping_sub(cl.rcv_nxt) < 1 << 31 {
                self.c.out_of_order += 1;
                cl.rcv_nxt = m.seq.0.wrapping_add(m.payload_len as u32);
            }
            self.c.data_received += 1;
            self.c.data_bytes += m.payload_len as u64;
            self.c.data_wire_bytes += (m.payload + m.payload_len).max(MIN_FRAME) as u64 + 4;
            if m.payload_len >= 6 {
                let mut b = [0u8; 8];
                b[2..].copy_from_slice(&f[m.payload..m.payload + 6]);
                let sent = u64::from_be_bytes(b);
                let now = now_tsc & 0xffff_ffff_ffff;
                if now >= sent {
                    lat(now - sent);
                    self.c.stamps += 1;
                }
            }
        } else {
            return Reply::None;
        }
        let rcv = self.clients[i as usize].rcv_nxt;
        self.c.acks_sent += 1;
        self.reply_to_a(f, &m, i, rcv, TcpFlags::ACK)
    }

    /// Rewrites the frame `m` arrived in into the client side's answer (addresses swapped).
    fn reply_to_a(
        &mut self,
        f: &mut [u8],
        m: &tsmp_core::wire::TcpMeta,
        i: u32,
        ack: u32,
        flags: u8,
    ) -> Reply {
        let Some(dst_mac) = self.proxy_a else {
            return Reply::None;
        };
        let ep = Endpoints {
            src_mac: self.mac_a,
            dst_mac,
            src: m.dst,
            dst: m.src,
            sport: m.dport,
            dport: m.sport,
        };
        let fl = TcpFields {
            seq: SeqNumber(isn(i).wrapping_add(1)),
            ack: SeqNumber(ack),
            flags,
            window: WINDOW,
            ..TcpFields::default()
        };
        let n = write_tcp_frame(f, &ep, &fl, &[]).unwrap_or(0);
        Reply::Send(pad(f, n))
    }

    /// A frame received on port B (the backend's side). Replies are written in place.
    pub fn on_b(&mut self, f: &mut [u8]) -> Reply {
        let check = self.check();
        let m = match classify(f) {
            Ok(Frame::Tcp(m)) => m,
            Ok(Frame::Arp) => return self.arp_b(f),
            _ => {
                self.c.unknown += 1;
                return Reply::None;
            }
        };
        if check && !self.checksums_ok(f, &m) {
            return Reply::None;
        }
        if m.dst != BACKEND || m.dport != BACKEND_PORT {
            self.c.unknown += 1;
            return Reply::None;
        }
        let peer = u64::from(u32::from_be_bytes(m.src)) << 16 | u64::from(m.sport);
        if m.flags.has(TcpFlags::SYN) {
            let i = m.seq.0 >> 10;
            if i >= self.flows || m.seq.0 != isn(i) {
                self.c.unknown += 1;
                return Reply::None;
            }
            self.c.syns_at_server += 1;
            let s = &mut self.servers[i as usize];
            if s.peer != peer {
                if s.peer != 0 {
                    self.by_peer.remove(s.peer);
                }
                s.peer = peer;
                self.by_peer.insert(peer, i);
            }
            let sisn = isn(i) ^ 0x8000_0000;
            s.nxt = sisn.wrapping_add(1);
            s.una = s.nxt;
            s.wnd = 0;
            let Some(dst_mac) = self.proxy_b else {
                return Reply::None;
            };
            let ep = Endpoints {
                src_mac: self.mac_b,
                dst_mac,
                src: BACKEND,
                dst: m.src,
                sport: BACKEND_PORT,
                dport: m.sport,
            };
            let fl = TcpFields {
                seq: SeqNumber(sisn),
                ack: SeqNumber(m.seq.0.wrapping_add(1)),
                flags: TcpFlags::SYN | TcpFlags::ACK,
                window: WINDOW,
                mss: Some(1460),
                ..TcpFields::default()
            };
            let n = write_tcp_frame(f, &ep, &fl, &[]).unwrap_or(0);
            return Reply::Send(pad(f, n));
        }
        let Some(i) = self.by_peer.get(peer) else {
            self.c.unknown += 1;
            return Reply::None;
        };
        if m.flags.has(TcpFlags::RST) {
            self.c.resets += 1;
            return Reply::None;
        }
        let s = &mut self.servers[i as usize];
        if m.flags.has(TcpFlags::ACK) {
            self.c.acks_received += 1;
            let ack = m.ack.0;
            // Only forward movement within what was sent.
            if ack.wrapping_sub(s.una) <= s.nxt.wrapping_sub(s.una) {
                s.una = ack;
            }
            if m.window == 0 && s.wnd != 0 {
                self.c.zero_windows += 1;
            }
            s.wnd = m.window;
            if !s.est {
                s.est = true;
                self.ready.push(i);
            }
        }
        Reply::None
    }

    fn checksums_ok(&mut self, f: &[u8], m: &tsmp_core::wire::TcpMeta) -> bool {
        self.c.checked += 1;
        let ip_ok = f.len() >= 34 && checksum::finish(checksum::sum(0, &f[14..34])) == 0;
        if ip_ok && tcp_checksum_ok(f, m) {
            true
        } else {
            self.c.bad_checksum += 1;
            false
        }
    }

    /// ARP on A: the proxy's reply to our request names its MAC.
    fn learn_proxy_a(&mut self, f: &[u8]) {
        if f.len() < 42 || f[20..22] != [0, 2] || f[28..32] != PROXY_A {
            return;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&f[22..28]);
        self.proxy_a = Some(mac);
    }

    /// ARP on B: replies for the backend's address (the proxy asks for it), learns the proxy's.
    fn arp_b(&mut self, f: &mut [u8]) -> Reply {
        if f.len() < 42 {
            return Reply::None;
        }
        let mut sha = [0u8; 6];
        sha.copy_from_slice(&f[22..28]);
        let spa = [f[28], f[29], f[30], f[31]];
        if spa == PROXY_B {
            self.proxy_b = Some(sha);
        }
        if f[20..22] != [0, 1] || f[38..42] != BACKEND {
            return Reply::None;
        }
        f[0..6].copy_from_slice(&sha);
        f[6..12].copy_from_slice(&self.mac_b);
        f[20..22].copy_from_slice(&[0, 2]);
        f[32..38].copy_from_slice(&sha);
        f[38..42].copy_from_slice(&spa);
        f[22..28].copy_from_slice(&self.mac_b);
        f[28..32].copy_from_slice(&BACKEND);
        self.c.arp_replies += 1;
        Reply::Send(42.max(f.len().min(MIN_FRAME)))
    }
}

/// The server side's map from the proxy's SNAT address:port to the flow: a direct table for the
/// proxy's server-side /24 (every SNAT address of the bench profile; no hashing, one access per
/// frame even with millions of flows), a hash map for anything else.
#[derive(Debug)]
struct Peers {
    direct: Vec<u32>,
    other: hashbrown::HashMap<u64, u32>,
}

const SNAT_NET: u32 = u32::from_be_bytes([198, 19, 0, 0]);

impl Peers {
    fn new(flows: usize) -> Peers {
        Peers {
            direct: vec![u32::MAX; 1 << 24],
            other: hashbrown::HashMap::with_capacity(flows.min(1 << 16)),
        }
    }

    /// Index in `direct` of a peer (address << 16 | port), if it is in the /24.
    fn slot(peer: u64) -> Option<usize> {
        let addr = u32::try_from(peer >> 16).ok()?;
        (addr & 0xffff_ff00 == SNAT_NET)
            .then_some(((addr as usize & 0xff) << 16) | (peer as usize & 0xffff))
    }

    fn get(&self, peer: u64) -> Option<u32> {
        match Self::slot(peer) {
            Some(k) => Some(self.direct[k]).filter(|&i| i != u32::MAX),
            None => self.other.get(&peer).copied(),
        }
    }

    fn insert(&mut self, peer: u64, i: u32) {
        match Self::slot(peer) {
            Some(k) => self.direct[k] = i,
            None => {
                self.other.insert(peer, i);
            }
        }
    }

    fn remove(&mut self, peer: u64) {
        match Self::slot(peer) {
            Some(k) => self.direct[k] = u32::MAX,
            None => {
                self.other.remove(&peer);
            }
        }
    }
}

/// Pads a frame of `n` bytes to the Ethernet minimum (zeros), as a NIC does.
fn pad(out: &mut [u8], n: usize) -> usize {
    if n > 0 && n < MIN_FRAME && out.len() >= MIN_FRAME {
        out[n..MIN_FRAME].fill(0);
        MIN_FRAME
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_round_trip() {
        for i in [0, 1, 59_999, 60_000, 1_000_000, MAX_FLOWS - 1] {
            let (ip, port) = client_of(i);
            assert_eq!(flow_of_device(ip, port), Some((i, false)));
            assert_eq!(ip[0..2], [198, 18]);
            let (ip, port) = target_of(i);
            assert_eq!(flow_of_device(ip, port), Some((i, true)));
        }
        assert_eq!(flow_of_device([198, 18, 0, 1], 5000), None);
    }

    /// The segment in `f` again, with the addresses `ep` gives it (sequence numbers, flags,
    /// window and payload kept), in a buffer with room like an mbuf's (replies may be longer
    /// than the frame).
    fn relay(f: &mut Vec<u8>, ep: impl FnOnce(&tsmp_core::wire::TcpMeta) -> Endpoints) {
        let Ok(Frame::Tcp(m)) = classify(f) else {
            panic!("not TCP");
        };
        let fl = TcpFields {
            seq: m.seq,
            ack: m.ack,
            flags: m.flags.0,
            window: m.window,
            ..TcpFields::default()
        };
        let mut out = vec![0u8; 1600];
        let n = write_tcp_frame(
            &mut out,
            &ep(&m),
            &fl,
            &[&f[m.payload..m.payload + m.payload_len]],
        )
        .unwrap();
        out.truncate(n.max(128));
        *f = out;
    }

    /// Both ends against each other with a forwarder that only swaps MACs (what a splice does to
    /// a flow before any migration: addresses rewritten, sequence numbers not).
    #[test]
    fn handshake_data_and_acks_between_the_two_sides() {
        let mut g = TcpGen::new(
            3,
            Sizes::Fixed(64),
            [2, 0, 0, 0, 0, 0xa],
            [2, 0, 0, 0, 0, 0xb],
        );
        g.check_every = 1;
        g.proxy_a = Some([2, 0, 0, 0, 1, 0xa]);
        g.proxy_b = Some([2, 0, 0, 0, 1, 0xb]);
        let snat = [198, 19, 0, 100];
        // Full NAT by hand: client leg <-> server leg.
        let to_server = |f: &mut Vec<u8>| {
            relay(f, |m| Endpoints {
                src_mac: [2, 0, 0, 0, 1, 0xb],
                dst_mac: [2, 0, 0, 0, 0, 0xb],
                src: snat,
                dst: BACKEND,
                sport: 40_000 + m.sport,
                dport: BACKEND_PORT,
            })
        };
        let to_client = |f: &mut Vec<u8>| {
            relay(f, |m| {
                let (ip, port) = client_of(u32::from(m.dport - 40_000 - PORT_BASE as u16));
                Endpoints {
                    src_mac: [2, 0, 0, 0, 1, 0xa],
                    dst_mac: [2, 0, 0, 0, 0, 0xa],
                    src: VIP,
                    dst: ip,
                    sport: VIP_PORT,
                    dport: port,
                }
            })
        };
        let mut lat = Vec::new();
        for _ in 0..3 {
            let mut f = vec![0u8; 1600];
            let n = g.next_syn(&mut f).unwrap();
            f.truncate(n);
            to_server(&mut f);
            let Reply::Send(n) = g.on_b(&mut f) else {
                panic!("no SYN-ACK")
            };
            f.truncate(n);
            to_client(&mut f);
            let Reply::Send(n) = g.on_a(&mut f, 0, &mut |l| lat.push(l)) else {
                panic!("no ACK")
            };
            f.truncate(n);
            to_server(&mut f);
            assert_eq!(g.on_b(&mut f), Reply::None);
        }
        assert!(g.next_syn(&mut [0u8; 64]).is_none());
        assert_eq!(
            (g.c.syns, g.c.syns_at_server, g.established(), g.ready()),
            (3, 3, 3, 3)
        );
        for k in 0..30u64 {
            let mut f = vec![0u8; 1600];
            let n = g.next_data(&mut f, 1000 + k).unwrap();
            assert_eq!(n, 60);
            f.truncate(n);
            to_client(&mut f);
            let Reply::Send(n) = g.on_a(&mut f, 1500 + k, &mut |l| lat.push(l)) else {
                panic!()
            };
            f.truncate(n);
            to_server(&mut f);
            g.on_b(&mut f);
        }
        assert_eq!(g.c.data_received, 30);
        assert_eq!(g.c.data_bytes, 30 * 6);
        assert_eq!((g.c.bad_checksum, g.c.unknown, g.c.out_of_order), (0, 0, 0));
        assert_eq!(lat, vec![500; 30]);
        assert_eq!(g.c.stamps, 30);
        // A zero window stops a flow; the others go on.
        let mut g2 = g;
        for s in g2.servers.iter_mut().take(2) {
            s.wnd = 0;
        }
        for _ in 0..5 {
            let mut f = vec![0u8; 1600];
            g2.next_data(&mut f, 0).unwrap();
            let m = match classify(&f).unwrap() {
                Frame::Tcp(m) => m,
                _ => panic!(),
            };
            assert_eq!(
                g2.by_peer
                    .get(u64::from(u32::from_be_bytes(m.dst)) << 16 | u64::from(m.dport))
                    .unwrap(),
                2
            );
        }
    }

    #[test]
    fn imix_mean_and_sizes() {
        assert_eq!(Sizes::parse("imix").unwrap(), Sizes::Imix);
        assert!(Sizes::parse("63").is_err());
        assert_eq!(Sizes::Fixed(1500).frame_len(0), 1496);
    }
}
