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

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::wire::build::Endpoints;
use crate::wire::{
    self, checksum, DropReason, Frame, SeqNumber, TcpFlags, TcpMeta, TcpSegmentMut, ETH_LEN,
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

    fn client_segment(&mut self, f: &mut [u8], m: &TcpMeta) -> Verdict {
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

    /// The device generation that currently holds flow `slot`.
    fn current_device(&self, slot: u32) -> u32 {
        if self.current.is_empty() || !self.flows.contains(slot) || !self.flows.get(slot).moved() {
            0
        } else {
            self.current.get(&slot).copied().unwrap_or(0)
        }
    }

    /// Translates a client-side segment of flow `idx` (from device `gen`) toward the server.
    /// `track`: the segment is the current device's and moves the flow's TCP state.
    fn forward_to_server(
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
        if track {
            self.track(idx, true, m);
        }
        self.hit = Some(FlowHit {
            slot: idx,
            from_server: false,
            created,
            device: gen,
            meta: *m,
        });
        Verdict::Tx(self.server.port)
    }

    fn server_segment(&mut self, f: &mut [u8], m: &TcpMeta) -> Verdict {
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
        self.track(idx, false, m);
        self.hit = Some(FlowHit {
            slot: idx,
            from_server: true,
            created: false,
            device: 0,
            meta: *m,
        });
        Verdict::Tx(self.client.port)
    }

    fn create(&mut self, svc: usize, k: &Key, f: &[u8]) -> Result<u32, Cause> {
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
    fn track(&mut self, idx: u32, from_client: bool, m: &TcpMeta) {
        let now = self.now_tick();
        let timeouts = self.timeouts;
        let jitter = if self.jitter_ticks > 0 {
            idx.wrapping_mul(2_654_435_761) % self.jitter_ticks
        } else {
            0
        };
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
        let new_exp = now
            .wrapping_add(timeouts[fl.state as usize])
            .wrapping_add(jitter);
        let shorter = i32::from_ne_bytes(new_exp.wrapping_sub(fl.expires).to_ne_bytes()) < 0;
        fl.expires = new_exp;
        if before != fl.state && shorter {
            self.flows.reschedule(idx);
        }
    }

    fn close(&mut self, idx: u32) {
        let fl = self.flows.remove(idx);
        self.closed.push(idx);
        self.forget_devices(idx);
        if let Some(a) = self.snat_addrs.iter().position(|&x| x == fl.snat.0) {
            self.snat_ports
                .push_back((u8::try_from(a).unwrap_or(0), fl.snat.1));
        }
        self.stats.flows_closed += 1;
    }

    /// The flow the last frame given to [`ProxyCore::process`] belonged to, if it was a
    /// forwarded TCP segment of a flow.
    pub fn last_hit(&self) -> Option<FlowHit> {
        self.hit
    }

    /// Slots of the flows removed (closed, expired, replaced) since the last call: state kept
    /// per slot elsewhere (the migration engine) must go with them, before the slot is reused.
    pub fn take_closed(&mut self) -> impl Iterator<Item = u32> + '_ {
        self.closed.drain(..)
    }

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
    fn forget_devices(&mut self, slot: u32) {
        // The removed flow's entry stays readable until its slot is reused.
        if (self.devices.is_empty() && self.mports.is_empty()) || !self.flows.get(slot).moved() {
            return;
        }
        self.legs.retain(|_, v| v.0 != slot);
        self.devices.retain(|k, _| k.0 != slot);
        self.current.remove(&slot);
        let mut freed = [0u16; 16];
        let mut n = 0;
        self.mports.retain(|p, v| {
            if v.0 == slot && n < freed.len() {
                freed[n] = *p;
                n += 1;
                false
            } else {
                true
            }
        });
        self.mports_free.extend(&freed[..n]);
    }

    /// Expires idle flows (bounded work: at most `max_slots` wheel slots). No allocation: the
    /// SNAT pool only gets back ports it handed out, within its reserved capacity.
    pub fn expire(&mut self, max_slots: u32) {
        let now = self.now_tick();
        let mut pool = std::mem::take(&mut self.snat_ports);
        let addrs = &self.snat_addrs;
        let mut closed = 0u64;
        let gone = &mut self.closed;
        self.flows.advance(now, max_slots, |t, idx| {
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

    fn route(&self, side: Side, dst: u32) -> Option<u32> {
        if side.on_link(dst) {
            Some(dst)
        } else {
            side.gateway
        }
    }

    fn next_hop_mac(&mut self, side: Side, dst: u32) -> Option<[u8; 6]> {
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
    fn sweep_neighbours(&mut self) {
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

    fn arp(&mut self, side: Side, f: &mut [u8]) -> Verdict {
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

    fn icmp(&mut self, side: Side, f: &mut [u8], l4: usize) -> Verdict {
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
