//! The proxy's per-worker packet logic, sans-IO: it is handed a frame (`&mut [u8]`, an mbuf's
//! data in the appliance, a `Vec<u8>` in tests), the port it came from and the time, rewrites the
//! frame in place and returns its fate as a [`Verdict`]. It never reads a clock, allocates after
//! construction, or touches DPDK; the worker in `crate::worker` only moves mbufs.
//!
//! What it does (the draft's data plane, section 4.2.2, as full NAT):
//! - a client's SYN to a service `vip:port` creates a [`flow::Flow`] gluing two sub-connections:
//!   client <-> vip and snat <-> backend; both directions are rewritten in place (addresses,
//!   ports, MACs; checksums incrementally), and the client's MSS is clamped;
//! - TCP state is tracked (handshake, FINs and their ACKs, RST) with an idle timeout per state
//!   on a timing wheel; a full table drops new SYNs (counted) and leaves established flows alone;
//! - ARP for the appliance's own addresses is answered, neighbours are learned (and asked again
//!   after a minute of silence; unanswered requests are forgotten after 3 s), ping to its own
//!   addresses is answered;
//! - everything else is dropped with a [`Cause`] that has its own counter.
//!
//! Ownership: with `n` workers, the flow of a client tuple belongs to the worker its keyed hash's
//! high bits pick (`(hash * n) >> 64`; the flow index uses the low bits), and its SNAT port is
//! chosen with `port % n == owner`, so both directions map to the owner without any shared
//! state; a packet that arrives at another worker is handed off ([`Verdict::HandOff`]).
//!
//! Bursts: a worker calls [`ProxyCore::prefetch_index`] for every frame of a burst, then
//! [`ProxyCore::prefetch_flow`] for each, then [`ProxyCore::process`]: the table's cache misses
//! of a burst overlap (hints only; `process` alone decides).
#![forbid(unsafe_code)]

pub mod arena;
pub mod flow;
pub mod index;
pub mod settings;

mod legs;
mod neighbours;
mod tcp;

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::buf::RxChecksum;
use crate::wire::build::Endpoints;
use crate::wire::{
    self, checksum, tcp_checksum_ok, DropReason, Frame, SeqNumber, TcpFlags, TcpMeta,
    TcpSegmentMut, ETH_LEN,
};
use flow::{fin, Flow, FlowTable, Key, LegOptions, TcpState, TICK_MS};
pub use index::FlowHasher;
pub use settings::{ProxySettings, ServiceSettings, SideSettings};

/// Why a frame was dropped. Each cause has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The wire layer rejected the frame.
    Wire(DropReason),
    /// Addressed to another host (promiscuous ports see everything).
    NotForUs,
    /// TCP to one of our addresses on a port that is no service.
    NoService,
    /// A non-SYN segment of no known flow.
    NoFlow,
    /// The flow table is full: a new SYN was refused.
    TableFull,
    /// No SNAT port is free.
    PortsExhausted,
    /// The next hop's MAC is not known yet (an ARP request was sent).
    NeighbourMiss,
    /// No route: the backend is off-subnet and no gateway is configured.
    NoRoute,
    /// Non-TCP, non-ICMP traffic to one of our addresses.
    UnsupportedProtocol,
    /// ICMP to us other than an echo request (errors are not translated yet).
    IcmpOther,
    /// Not IPv4 or ARP.
    OtherEthertype,
    /// An ARP frame we do not answer (not for our address, malformed).
    ArpIgnored,
    /// A SYN to a reserved migration port from another address than the target device's, or
    /// after the target's connection was accepted.
    MigrationRefused,
}

/// Number of counters in [`Cause::index`] space.
pub const CAUSES: usize = DropReason::COUNT + 12;

impl Cause {
    /// Counter index.
    pub fn index(self) -> usize {
        match self {
            Cause::Wire(r) => r as usize,
            Cause::NotForUs => DropReason::COUNT,
            Cause::NoService => DropReason::COUNT + 1,
            Cause::NoFlow => DropReason::COUNT + 2,
            Cause::TableFull => DropReason::COUNT + 3,
            Cause::PortsExhausted => DropReason::COUNT + 4,
            Cause::NeighbourMiss => DropReason::COUNT + 5,
            Cause::NoRoute => DropReason::COUNT + 6,
            Cause::UnsupportedProtocol => DropReason::COUNT + 7,
            Cause::IcmpOther => DropReason::COUNT + 8,
            Cause::OtherEthertype => DropReason::COUNT + 9,
            Cause::ArpIgnored => DropReason::COUNT + 10,
            Cause::MigrationRefused => DropReason::COUNT + 11,
        }
    }

    /// Counter names, by index.
    pub fn names() -> [&'static str; CAUSES] {
        let mut n = [""; CAUSES];
        for r in DropReason::ALL {
            n[r as usize] = r.name();
        }
        let rest = [
            "not_for_us",
            "no_service",
            "no_flow",
            "table_full",
            "snat_ports_exhausted",
            "neighbour_miss",
            "no_route",
            "unsupported_protocol",
            "icmp_other",
            "other_ethertype",
            "arp_ignored",
            "migration_syn_refused",
        ];
        n[DropReason::COUNT..].copy_from_slice(&rest);
        n
    }
}

/// A frame's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit (rewritten in place) on this port index.
    Tx(usize),
    /// Another worker owns it: hand the frame, unchanged, to that worker.
    HandOff(usize),
    /// Free it and count the cause.
    Drop(Cause),
}

/// One side (port) of the proxy.
#[derive(Debug, Clone, Copy)]
struct Side {
    port: usize,
    mac: [u8; 6],
    ip: u32,
    mask: u32,
    gateway: Option<u32>,
}

impl Side {
    fn on_link(&self, a: u32) -> bool {
        a & self.mask == self.ip & self.mask
    }
}

/// A configured service.
#[derive(Debug, Clone, Copy)]
struct Service {
    vip: u32,
    port: u16,
    backend: u32,
    backend_port: u16,
}

/// Local counters of the proxy logic (published by the worker).
#[derive(Debug, Clone, Copy)]
pub struct ProxyStats {
    /// Drops by cause.
    pub drops: [u64; CAUSES],
    /// Flows created.
    pub flows_created: u64,
    /// Flows removed (timeout or close).
    pub flows_closed: u64,
    /// Frames handed to another worker.
    pub handoffs: u64,
    /// ARP requests answered.
    pub arp_replies: u64,
    /// ARP requests sent.
    pub arp_requests: u64,
    /// Pings answered.
    pub icmp_echo_replies: u64,
    /// SYNs whose MSS was lowered.
    pub mss_clamped: u64,
    /// Frames passed to the kernel through the exception path.
    pub to_kernel: u64,
    /// Frames the kernel sent out through the exception path.
    pub from_kernel: u64,
    /// SYNs to a migration port nobody waits on (never reserved, or its migration ended)
    /// answered with an RST, as a closed port answers.
    pub syn_resets: u64,
}

impl Default for ProxyStats {
    fn default() -> Self {
        ProxyStats {
            drops: [0; CAUSES],
            flows_created: 0,
            flows_closed: 0,
            handoffs: 0,
            arp_replies: 0,
            arp_requests: 0,
            icmp_echo_replies: 0,
            mss_clamped: 0,
            to_kernel: 0,
            from_kernel: 0,
            syn_resets: 0,
        }
    }
}

/// Per-worker proxy state.
#[derive(Debug)]
pub struct ProxyCore {
    worker: usize,
    workers: usize,
    client: Side,
    server: Side,
    services: Vec<Service>,
    snat_addrs: Vec<u32>,
    snat_ports: VecDeque<(u8, u16)>,
    mss_clamp: u16,
    timeouts: [u32; 6],
    jitter_ticks: u32,
    /// The flow table.
    pub flows: FlowTable,
    neighbours: HashMap<u32, Neighbour, FlowHasher>,
    max_neighbours: usize,
    arp_sent: HashMap<u32, u64, FlowHasher>,
    last_sweep_ms: u64,
    arp_out: Vec<(usize, u32)>,
    learned: Vec<(u32, [u8; 6])>,
    now_ms: u64,
    exception: Option<Exception>,
    /// The flow the last forwarded TCP frame belonged to.
    hit: Option<FlowHit>,
    /// Segments move the flow's tracking only when the caller says so ([`ProxyCore::commit`],
    /// after the migration engine accepted them), not while they are translated.
    defer_tracking: bool,
    /// What the NIC said of the TCP checksum of the frame being processed.
    rx_checksum: RxChecksum,
    /// Slots of flows removed since the last `take_closed` (capacity: the table's).
    closed: Vec<u32>,
    /// Migration ports this worker may hand out (`port % workers == worker`).
    mports_free: VecDeque<u16>,
    /// The configured migration port range.
    mport_range: (u16, u16),
    /// Reserved migration ports -> (flow slot, device generation).
    mports: HashMap<u16, (u32, u32, Option<u32>), FlowHasher>,
    /// Client-side keys of devices other than a flow's current one -> (slot, generation).
    legs: HashMap<Key, (u32, u32), FlowHasher>,
    /// Addresses of devices by (slot, generation), for the segments the engine originates.
    devices: HashMap<(u32, u32), DeviceAddr, FlowHasher>,
    /// The current device generation of migrated flows (absent: 0).
    current: HashMap<u32, u32, FlowHasher>,
    /// Counters.
    pub stats: ProxyStats,
}

/// A resolved next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Neighbour {
    mac: [u8; 6],
    /// When an ARP from it was last seen (ms).
    seen_ms: u64,
}

/// Neighbours heard from longer ago than this are asked again (their MAC stays in use meanwhile).
const NEIGHBOUR_REFRESH_MS: u64 = 60_000;
/// The flow a forwarded TCP segment belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowHit {
    /// The flow's slot in this worker's table.
    pub slot: u32,
    /// The segment came from the server (else from the client).
    pub from_server: bool,
    /// This segment (the client's SYN) created the flow.
    pub created: bool,
    /// From the client side: which device (generation) sent it; 0 until the flow migrates.
    pub device: u32,
    /// The segment's checked offsets and fields (classified before the NAT rewrite, which moves
    /// no offset and changes neither sequence numbers, flags nor window).
    pub meta: TcpMeta,
    /// The segment is the current device's or the server's: once accepted it moves the flow's
    /// tracking ([`ProxyCore::commit`]; with deferred tracking only).
    pub track: bool,
}

/// Where a device of a migrating flow is (the flow's own fields describe the current one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeviceAddr {
    ip: u32,
    port: u16,
    mac: [u8; 6],
    /// The service port it talks to (the VIP's port for the first device, the migration port
    /// for the others).
    vport: u16,
}

impl DeviceAddr {
    /// The device that currently holds `fl` (the flow's own client-side fields).
    fn current(fl: &Flow) -> DeviceAddr {
        DeviceAddr {
            ip: fl.client.0,
            port: fl.client.1,
            mac: fl.client_mac,
            vport: fl.vip.1,
        }
    }

    /// Its client-side key toward service address `vip`.
    fn key(&self, vip: u32) -> Key {
        Key {
            src: self.ip,
            dst: vip,
            sport: self.port,
            dport: self.vport,
        }
    }
}

/// An ARP request unanswered for this long is forgotten, so its slot can serve another address.
const ARP_GIVE_UP_MS: u64 = 3_000;
/// How often the neighbour and pending-ARP tables are swept.
const SWEEP_MS: u64 = 1_000;

/// The exception port and the MAC of its kernel interface.
#[derive(Debug, Clone, Copy)]
struct Exception {
    port: usize,
    mac: [u8; 6],
    kernel_mac: [u8; 6],
}

/// The worker of a key hash: from its high bits (a multiply-shift range reduction), so that the
/// flows of one worker still spread over all buckets of its index (which uses the low bits).
#[inline(always)]
fn owner_of_hash(h: u64, workers: usize) -> usize {
    if workers <= 1 {
        0
    } else {
        // Truncation intended: the product's high half is below `workers`.
        #[allow(clippy::cast_possible_truncation)]
        let w = ((u128::from(h) * workers as u128) >> 64) as usize;
        w
    }
}

fn ip_u32(a: [u8; 4]) -> u32 {
    u32::from_be_bytes(a)
}

fn ticks(ms: u64) -> u32 {
    u32::try_from(ms / TICK_MS).unwrap_or(u32::MAX)
}

impl ProxyCore {
    /// Builds worker `worker` of `workers` from `s`; `hasher` is shared by all workers; `advise`
    /// is offered the flow table's big regions before they are touched (see [`index::Advise`]).
    pub fn new(
        s: &ProxySettings,
        worker: usize,
        workers: usize,
        hasher: FlowHasher,
        now_ms: u64,
        advise: Option<index::Advise>,
    ) -> ProxyCore {
        let side = |c: &SideSettings| Side {
            port: c.port,
            mac: c.mac,
            ip: u32::from(c.ip),
            mask: if c.prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(c.prefix_len.min(32)))
            },
            gateway: c.gateway.map(u32::from),
        };
        let snat_addrs: Vec<u32> = s.snat_addresses.iter().map(|a| u32::from(*a)).collect();
        let mut snat_ports = VecDeque::new();
        for p in s.snat_ports.0..=s.snat_ports.1 {
            if usize::from(p) % workers == worker {
                for a in 0..snat_addrs.len().min(256) {
                    snat_ports.push_back((u8::try_from(a).unwrap_or(0), p));
                }
            }
        }
        let mut neighbours = HashMap::with_hasher(hasher);
        neighbours.reserve(s.max_neighbours as usize);
        let mut arp_sent = HashMap::with_hasher(hasher);
        arp_sent.reserve(s.max_neighbours as usize);
        let mut flows = FlowTable::with_advice(s.max_flows, hasher, advise);
        flows.start(ticks(now_ms));
        let t = |s: u32| ticks(u64::from(s) * 1000).max(1);
        let mut core = ProxyCore {
            worker,
            workers,
            client: side(&s.client),
            server: side(&s.server),
            services: s
                .services
                .iter()
                .map(|s| Service {
                    vip: u32::from(s.vip),
                    port: s.port,
                    backend: u32::from(s.backend),
                    backend_port: s.backend_port,
                })
                .collect(),
            snat_addrs,
            snat_ports,
            mss_clamp: s.mss_clamp,
            timeouts: [
                t(s.timeout_syn_s),
                t(s.timeout_syn_s),
                t(s.timeout_established_s),
                t(s.timeout_fin_s),
                t(s.timeout_close_s),
                t(s.timeout_close_s),
            ],
            jitter_ticks: ticks(u64::from(s.timeout_jitter_ms)),
            flows,
            neighbours,
            max_neighbours: s.max_neighbours as usize,
            arp_sent,
            last_sweep_ms: 0,
            arp_out: Vec::with_capacity(64),
            learned: Vec::with_capacity(64),
            now_ms,
            exception: None,
            hit: None,
            defer_tracking: false,
            rx_checksum: RxChecksum::Unknown,
            closed: Vec::with_capacity(s.max_flows as usize),
            mports_free: (s.migration_ports.0..=s.migration_ports.1)
                .filter(|p| usize::from(*p) % workers == worker)
                .collect(),
            mport_range: s.migration_ports,
            mports: HashMap::with_hasher(hasher),
            legs: HashMap::with_hasher(hasher),
            devices: HashMap::with_hasher(hasher),
            current: HashMap::with_hasher(hasher),
            stats: ProxyStats::default(),
        };
        // Resolve every backend's next hop at once, so that the first SYN does not wait for ARP.
        for i in 0..core.services.len() {
            let b = core.services[i].backend;
            let _ = core.next_hop_mac(core.server, b);
        }
        core
    }

    /// Enables the exception path: port index `port` (a TAP port whose DPDK side has `mac`) leads
    /// to the kernel interface whose MAC is `kernel_mac`.
    pub fn set_exception(&mut self, port: usize, mac: [u8; 6], kernel_mac: [u8; 6]) {
        self.exception = Some(Exception {
            port,
            mac,
            kernel_mac,
        });
    }

    /// Sets the current time (once per burst).
    #[inline]
    pub fn set_time(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    fn now_tick(&self) -> u32 {
        ticks(self.now_ms)
    }

    /// First stage of a burst: the hash of a TCP/IPv4 frame's 4-tuple, with the index bucket it
    /// needs prefetched (`None` for anything else). Call for every frame of a burst,
    /// then [`ProxyCore::prefetch_flow`] for each, then [`ProxyCore::process`]: the cache misses
    /// of the burst's lookups overlap instead of stalling one by one.
    #[inline]
    /// `prefetch` is the platform's prefetch hint (see [`crate::buf::FrameBuf::prefetch`]).
    pub fn prefetch_index(&self, f: &[u8], prefetch: impl Fn(*const u8)) -> Option<u64> {
        let (k, flags) = wire::tuple_of(f)?;
        let h = self.flows.hasher().key(&k);
        let syn = flags & (TcpFlags::SYN | TcpFlags::ACK) == TcpFlags::SYN;
        self.flows.prefetch_bucket(h, syn, prefetch);
        Some(h)
    }

    /// Second stage of a burst: the flow whose signature matches the key's in its bucket (in
    /// cache by now), its entry prefetched; returns that slot. The key itself is not compared
    /// (that would wait for the very entry being prefetched): a rare signature collision only
    /// prefetches the wrong line, [`ProxyCore::process`] decides.
    #[inline]
    pub fn prefetch_flow(&self, h: Option<u64>, prefetch: impl Fn(*const u8)) -> Option<u32> {
        let idx = self.flows.candidate(h?)?;
        self.flows.prefetch_flow(idx, prefetch);
        Some(idx)
    }

    /// Processes one frame received on port index `port`.
    pub fn process(&mut self, port: usize, f: &mut [u8]) -> Verdict {
        self.process_checked(port, f, RxChecksum::Unknown)
    }

    /// [`ProxyCore::process`] for a frame whose TCP checksum the NIC may have checked
    /// (`Unknown`: checked here, in software, once the segment is known to be this worker's).
    pub fn process_checked(&mut self, port: usize, f: &mut [u8], csum: RxChecksum) -> Verdict {
        self.rx_checksum = csum;
        self.hit = None;
        let v = self.process_inner(port, f);
        match v {
            Verdict::Drop(c) => self.stats.drops[c.index()] += 1,
            Verdict::HandOff(_) => self.stats.handoffs += 1,
            Verdict::Tx(_) => {}
        }
        v
    }

    fn process_inner(&mut self, port: usize, f: &mut [u8]) -> Verdict {
        if let Some(x) = self.exception {
            if port == x.port {
                return self.kernel_frame(x, f);
            }
        }
        let v = self.process_wire(port, f);
        // Traffic for our own addresses that the fast path does not answer goes to the kernel.
        match (v, self.exception) {
            (
                Verdict::Drop(Cause::NoService | Cause::UnsupportedProtocol | Cause::IcmpOther),
                Some(x),
            ) if f.len() >= ETH_LEN => {
                set_macs(f, x.kernel_mac, x.mac);
                self.stats.to_kernel += 1;
                Verdict::Tx(x.port)
            }
            _ => v,
        }
    }

    /// A frame the kernel sent through the exception port: answer its ARP (every next hop is
    /// reached through us), route its IPv4 to the right side with real MACs.
    fn kernel_frame(&mut self, x: Exception, f: &mut [u8]) -> Verdict {
        match wire::classify(f) {
            Ok(Frame::Arp) => {
                if f.len() < ETH_LEN + 28 || f[20..22] != [0, 1] {
                    return Verdict::Drop(Cause::ArpIgnored);
                }
                let mut sha = [0u8; 6];
                sha.copy_from_slice(&f[22..28]);
                let mut spa = [0u8; 4];
                spa.copy_from_slice(&f[28..32]);
                let mut tpa = [0u8; 4];
                tpa.copy_from_slice(&f[38..42]);
                f[20..22].copy_from_slice(&2u16.to_be_bytes());
                f[22..28].copy_from_slice(&x.mac);
                f[28..32].copy_from_slice(&tpa);
                f[32..38].copy_from_slice(&sha);
                f[38..42].copy_from_slice(&spa);
                set_macs(f, sha, x.mac);
                Verdict::Tx(x.port)
            }
            Ok(
                Frame::Tcp(TcpMeta { dst, .. })
                | Frame::Icmp { dst, .. }
                | Frame::OtherIpv4 { dst, .. },
            ) => {
                let d = ip_u32(dst);
                let side = if self.server.on_link(d) {
                    self.server
                } else {
                    self.client
                };
                match self.next_hop_mac(side, d) {
                    Some(mac) => {
                        set_macs(f, mac, side.mac);
                        self.stats.from_kernel += 1;
                        Verdict::Tx(side.port)
                    }
                    None if self.route(side, d).is_none() => Verdict::Drop(Cause::NoRoute),
                    None => Verdict::Drop(Cause::NeighbourMiss),
                }
            }
            Ok(Frame::OtherEther(_)) => Verdict::Drop(Cause::OtherEthertype),
            Err(r) => Verdict::Drop(Cause::Wire(r)),
        }
    }

    fn process_wire(&mut self, port: usize, f: &mut [u8]) -> Verdict {
        let side = if port == self.client.port {
            self.client
        } else if port == self.server.port {
            self.server
        } else {
            return Verdict::Drop(Cause::NotForUs);
        };
        match wire::classify(f) {
            Err(r) => Verdict::Drop(Cause::Wire(r)),
            Ok(Frame::Arp) => self.arp(side, f),
            Ok(Frame::OtherEther(_)) => Verdict::Drop(Cause::OtherEthertype),
            Ok(Frame::Icmp { l4, dst, .. }) => {
                if self.is_ours(side, ip_u32(dst)) {
                    self.icmp(side, f, l4)
                } else {
                    Verdict::Drop(Cause::NotForUs)
                }
            }
            Ok(Frame::OtherIpv4 { dst, .. }) => {
                if self.is_ours(side, ip_u32(dst)) {
                    Verdict::Drop(Cause::UnsupportedProtocol)
                } else {
                    Verdict::Drop(Cause::NotForUs)
                }
            }
            Ok(Frame::Tcp(m)) => {
                if port == self.client.port {
                    self.client_segment(f, &m)
                } else {
                    self.server_segment(f, &m)
                }
            }
        }
    }

    fn is_ours(&self, side: Side, a: u32) -> bool {
        if a == side.ip {
            return true;
        }
        if side.port == self.client.port {
            self.services.iter().any(|s| s.vip == a)
        } else {
            self.snat_addrs.contains(&a)
        }
    }

    /// The flow the last frame given to [`ProxyCore::process`] belonged to, if it was a
    /// forwarded TCP segment of a flow.
    pub fn last_hit(&self) -> Option<FlowHit> {
        self.hit
    }

    /// From now on a forwarded segment does not move its flow's tracking (state, FINs, expiry)
    /// by itself: the caller decides, after its own checks, with [`ProxyCore::commit`] (the
    /// segment goes on as it is) or [`ProxyCore::touch`] (it was absorbed: only the idle timer
    /// restarts). A segment the caller drops leaves the flow as it was.
    pub fn defer_tracking(&mut self) {
        self.defer_tracking = true;
    }

    /// The segment of `hit` was accepted and goes on as `frame` (rewritten in place): it moves
    /// its flow's tracking. The tracking compares FINs and ACKs in the numbers the server
    /// uses, so a device's segment is read as rewritten toward the server (after a migration
    /// its device's numbers differ by the splice's offsets), a server's as it came.
    pub fn commit(&mut self, hit: &FlowHit, frame: &[u8]) {
        if !hit.track || !self.flows.contains(hit.slot) {
            return;
        }
        let mut m = hit.meta;
        if !hit.from_server {
            let at = |o: usize| {
                frame
                    .get(m.l4 + o..m.l4 + o + 4)
                    .map(|b| SeqNumber(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
            };
            if let (Some(seq), Some(ack)) = (at(4), at(8)) {
                m.seq = seq;
                m.ack = ack;
            }
        }
        self.track(hit.slot, !hit.from_server, &m);
    }

    /// The proxy reset both ends of flow `slot` (a migration that could not complete): its
    /// tracking is `CLOSED`, and the close timeout removes it.
    pub fn reset_tracking(&mut self, slot: u32) {
        if self.flows.contains(slot) {
            let before = self.flows.get(slot).state;
            self.flows.get_mut(slot).state = TcpState::Closed;
            self.refresh_expiry(slot, Some(before));
        }
    }

    /// The segment of `hit` was absorbed on the flow's behalf: the flow is not idle.
    pub fn touch(&mut self, hit: &FlowHit) {
        if hit.track && self.flows.contains(hit.slot) {
            self.refresh_expiry(hit.slot, None);
        }
    }

    /// Slots of the flows removed (closed, expired, replaced) since the last call: state kept
    /// per slot elsewhere (the migration engine) must go with them, before the slot is reused.
    pub fn take_closed(&mut self) -> impl Iterator<Item = u32> + '_ {
        self.closed.drain(..)
    }

    /// Expires idle flows (bounded work: at most `max_slots` wheel slots). No allocation: the
    /// SNAT pool only gets back ports it handed out, within its reserved capacity.
    pub fn expire(&mut self, max_slots: u32) {
        self.expire_holding(max_slots, |_| false);
    }

    /// [`ProxyCore::expire`], except that flows for which `hold` says so stay (their idle
    /// timer starts again): a flow whose migration is in progress is the migration's to end,
    /// within its own bounded deadlines, not the idle timer's.
    pub fn expire_holding(&mut self, max_slots: u32, mut hold: impl FnMut(u32) -> bool) {
        let now = self.now_tick();
        let mut pool = std::mem::take(&mut self.snat_ports);
        let addrs = &self.snat_addrs;
        let timeouts = self.timeouts;
        let mut closed = 0u64;
        let gone = &mut self.closed;
        self.flows.advance(now, max_slots, |t, idx| {
            if hold(idx) {
                let f = t.get_mut(idx);
                f.expires = now.wrapping_add(timeouts[f.state as usize].max(1));
                t.reschedule(idx);
                return;
            }
            let fl = t.remove(idx);
            gone.push(idx);
            if let Some(i) = addrs.iter().position(|&x| x == fl.snat.0) {
                pool.push_back((u8::try_from(i).unwrap_or(0), fl.snat.1));
            }
            closed += 1;
        });
        self.snat_ports = pool;
        self.stats.flows_closed += closed;
        if !self.devices.is_empty() || !self.mports.is_empty() {
            let n = self.closed.len();
            for k in n - usize::try_from(closed).unwrap_or(0).min(n)..n {
                let slot = self.closed[k];
                self.forget_devices(slot);
            }
        }
        self.sweep_neighbours();
    }

    /// Live flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Free SNAT ports of this worker.
    pub fn snat_ports_free(&self) -> usize {
        self.snat_ports.len()
    }
}

fn set_macs(f: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
}

#[cfg(test)]
mod tests;
