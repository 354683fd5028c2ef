//! The flow table of one worker: a slab of compact [`Flow`] entries, two index entries per flow
//! (one per direction, see [`super::index`]), and an intrusive timing wheel for idle timeouts.
//!
//! Invariants:
//! - capacity is fixed at construction (slab, index and wheel are pre-allocated and written, so
//!   resident; the platform may back them with huge pages): inserting into a full table fails
//!   and is counted by the caller; nothing allocates afterwards;
//! - a live flow is in the index under exactly its two keys and in exactly one wheel slot; an
//!   index value is the flow's slot shifted left by one, the low bit telling which of its keys
//!   (0: client side, 1: server side);
//! - the hash is keyed with per-process random seeds: tuples are chosen by peers.

use super::index::{prefaulted, Advise, FlowHasher, FlowIndex};
use crate::wire::SeqNumber;

pub use crate::wire::Key;

/// Connection tracking state (the proxy's view of both sub-connections). Serialised by its
/// [`TcpState::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum TcpState {
    /// The client's SYN was forwarded.
    SynSent,
    /// The server's SYN-ACK was forwarded.
    SynRecv,
    /// The client acknowledged the SYN-ACK.
    Established,
    /// At least one side sent a FIN.
    FinWait,
    /// Both FINs were sent and acknowledged.
    TimeWait,
    /// A RST was seen.
    Closed,
}

impl TcpState {
    /// Stable name for the CLI.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Closed => "CLOSED",
        }
    }
}

/// TCP options one side announced in its SYN (needed by migration: window scale, MSS, SACK, TS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LegOptions {
    /// MSS announced (after clamping), 0 if absent.
    pub mss: u16,
    /// Window-scale shift, `None` if not offered.
    pub wscale: Option<u8>,
    /// SACK permitted.
    pub sack: bool,
    /// Timestamps offered.
    pub ts: bool,
}

/// Flag bits of [`Flow::fin`]: the FIN exchange, and whether the flow ever changed devices.
pub mod fin {
    /// A migration of the flow was started at least once (a migration port was reserved): it
    /// may have entries in the proxy's device maps, and only such flows are looked up there
    /// per segment or cleaned from them when removed.
    pub const MIGRATED: u8 = 16;
    /// The client sent a FIN.
    pub const CLIENT_SENT: u8 = 1;
    /// The server sent a FIN.
    pub const SERVER_SENT: u8 = 2;
    /// The server acknowledged the client's FIN.
    pub const CLIENT_ACKED: u8 = 4;
    /// The client acknowledged the server's FIN.
    pub const SERVER_ACKED: u8 = 8;
}

/// One spliced connection. Compact: see the size test.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// Client address and port.
    pub client: (u32, u16),
    /// Service address and port the client connected to.
    pub vip: (u32, u16),
    /// Backend address and port.
    pub backend: (u32, u16),
    /// Source-NAT address and port toward the backend.
    pub snat: (u32, u16),
    /// MAC the client's frames came from (client or its router): return traffic goes there.
    pub client_mac: [u8; 6],
    /// Tracking state.
    pub state: TcpState,
    /// FIN bits and [`fin::MIGRATED`] (see [`fin`]).
    pub fin: u8,
    /// Client's FIN sequence end (valid with `fin::CLIENT_SENT`).
    pub client_fin_end: SeqNumber,
    /// Server's FIN sequence end (valid with `fin::SERVER_SENT`).
    pub server_fin_end: SeqNumber,
    /// Client-side options.
    pub client_opts: LegOptions,
    /// Server-side options.
    pub server_opts: LegOptions,
    /// Expiry, in wheel ticks.
    pub expires: u32,
    /// Creation time, in wheel ticks.
    pub created: u32,
    /// Index of the service in the configuration.
    pub service: u16,
    /// The wheel slot this flow is linked in (`expires` may have moved since: updates are lazy).
    slot: u16,
    next: u32,
    prev: u32,
}

const NIL: u32 = u32::MAX;

/// Wheel granularity in milliseconds.
pub const TICK_MS: u64 = 16;
const SLOTS: usize = 4096;

/// The slab, index and wheel.
#[derive(Debug)]
pub struct FlowTable {
    flows: Vec<Flow>,
    live: Vec<bool>,
    free: Vec<u32>,
    index: FlowIndex,
    hasher: FlowHasher,
    wheel: Vec<u32>,
    wheel_tick: u32,
    capacity: u32,
}

impl FlowTable {
    /// A table for `capacity` flows; `hasher` must be shared by all workers (owner selection).
    pub fn new(capacity: u32, hasher: FlowHasher) -> FlowTable {
        FlowTable::with_advice(capacity, hasher, None)
    }

    /// [`FlowTable::new`], offering the slab and the index to `advise` before they are touched
    /// (the data plane asks for huge pages there).
    pub fn with_advice(capacity: u32, hasher: FlowHasher, advise: Option<Advise>) -> FlowTable {
        let cap = capacity as usize;
        let blank = Flow::new((0, 0), (0, 0), (0, 0), (0, 0), [0; 6], 0);
        FlowTable {
            flows: prefaulted(cap, || blank, advise),
            live: vec![false; cap],
            free: (0..capacity).rev().collect(),
            index: FlowIndex::new(cap * 2, advise),
            hasher,
            wheel: vec![NIL; SLOTS],
            wheel_tick: 0,
            capacity,
        }
    }

    /// Live flows.
    pub fn len(&self) -> usize {
        self.capacity as usize - self.free.len()
    }

    /// Whether the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The timing wheel's current tick ([`TICK_MS`] each): ages and expiries are relative to it.
    pub fn tick(&self) -> u32 {
        self.wheel_tick
    }

    /// Bytes the table holds for its capacity (flow entries, the index at its reserved size,
    /// the free list, the liveness bits and the timing wheel): all allocated up front.
    pub fn memory_bytes(&self) -> usize {
        self.flows.capacity() * std::mem::size_of::<Flow>()
            + self.live.capacity()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.index.memory_bytes()
            + self.wheel.capacity() * std::mem::size_of::<u32>()
    }

    /// Maximum number of flows.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Whether another flow fits.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// The flow indexed by `k`.
    #[inline]
    pub fn lookup(&self, k: &Key) -> Option<u32> {
        self.lookup_hashed(k, self.hasher.key(k))
    }

    /// The flow indexed by `k`, whose hash `h` the caller computed already.
    #[inline]
    pub fn lookup_hashed(&self, k: &Key, h: u64) -> Option<u32> {
        self.index.find(h, |v| self.key_of(v) == *k).map(|v| v >> 1)
    }

    /// Brings the index bucket of hash `h` toward the cache (a burst's lookups overlap); `both`:
    /// the secondary one too (a new flow's lookup misses, then its insert reads both).
    #[inline(always)]
    pub fn prefetch_bucket(&self, h: u64, both: bool, prefetch: impl Fn(*const u8)) {
        let [a, b] = self.index.bucket_addrs(h);
        prefetch(a);
        if both {
            prefetch(b);
        }
    }

    /// The slot of the first entry whose signature matches hash `h`, without comparing keys
    /// (a prefetch hint: see [`super::ProxyCore::prefetch_flow`]).
    #[inline(always)]
    pub fn candidate(&self, h: u64) -> Option<u32> {
        self.index.find(h, |_| true).map(|v| v >> 1)
    }

    /// Brings flow `idx`'s entry toward the cache.
    #[inline(always)]
    pub fn prefetch_flow(&self, idx: u32, prefetch: impl Fn(*const u8)) {
        if let Some(f) = self.flows.get(idx as usize) {
            prefetch(std::ptr::from_ref(f).cast());
        }
    }

    #[inline(always)]
    fn key_of(&self, v: u32) -> Key {
        let f = &self.flows[(v >> 1) as usize];
        if v & 1 == 0 {
            client_key(f)
        } else {
            server_key(f)
        }
    }

    /// Moves the client side of flow `idx` to another device: `client` and `vip` change, and
    /// the client-side key with them (the server side is untouched). `false` if the new key is
    /// taken by another flow.
    pub fn rekey_client(&mut self, idx: u32, client: (u32, u16), vip: (u32, u16)) -> bool {
        if !self.contains(idx) {
            return false;
        }
        let mut f = self.flows[idx as usize];
        let old = client_key(&f);
        f.client = client;
        f.vip = vip;
        let new = client_key(&f);
        if self.lookup(&new).is_some_and(|i| i != idx) {
            return false;
        }
        if new == old {
            self.flows[idx as usize] = f;
            return true;
        }
        self.index.remove(self.hasher.key(&old), idx << 1);
        if !self.index.insert(self.hasher.key(&new), idx << 1) {
            // No room under the new key: keep the flow where it was.
            self.index.insert(self.hasher.key(&old), idx << 1);
            return false;
        }
        self.flows[idx as usize] = f;
        true
    }

    /// Whether slot `idx` holds a live flow.
    pub fn contains(&self, idx: u32) -> bool {
        self.live.get(idx as usize).copied().unwrap_or(false)
    }

    /// The flow at `idx`.
    #[inline]
    pub fn get(&self, idx: u32) -> &Flow {
        &self.flows[idx as usize]
    }

    /// The flow at `idx`, mutably.
    #[inline]
    pub fn get_mut(&mut self, idx: u32) -> &mut Flow {
        &mut self.flows[idx as usize]
    }

    /// Inserts a flow under its two keys and schedules it. `None` when full.
    pub fn insert(&mut self, mut f: Flow, now: u32) -> Option<u32> {
        let idx = *self.free.last()?;
        let (hc, hs) = (
            self.hasher.key(&client_key(&f)),
            self.hasher.key(&server_key(&f)),
        );
        // No room in the index for a key (see `super::index`) fails like a full slab: the
        // caller counts both as `table_full`.
        if !self.index.insert(hc, idx << 1) {
            return None;
        }
        if !self.index.insert(hs, (idx << 1) | 1) {
            self.index.remove(hc, idx << 1);
            return None;
        }
        self.free.pop();
        f.next = NIL;
        f.prev = NIL;
        f.created = now;
        let i = idx as usize;
        self.flows[i] = f;
        self.live[i] = true;
        self.link(idx);
        Some(idx)
    }

    /// Removes a flow; returns it (its SNAT port goes back to the pool by the caller).
    ///
    /// Removing a flow that is not live is a caller bug; it is ignored (and asserted in tests).
    pub fn remove(&mut self, idx: u32) -> Flow {
        debug_assert!(self.live[idx as usize], "flow {idx} removed twice");
        if !self.live[idx as usize] {
            return self.flows[idx as usize];
        }
        self.unlink(idx);
        let f = self.flows[idx as usize];
        self.index
            .remove(self.hasher.key(&client_key(&f)), idx << 1);
        self.index
            .remove(self.hasher.key(&server_key(&f)), (idx << 1) | 1);
        self.live[idx as usize] = false;
        self.free.push(idx);
        f
    }

    /// Moves a flow to the wheel slot of its (changed) `expires`.
    pub fn reschedule(&mut self, idx: u32) {
        self.unlink(idx);
        self.link(idx);
    }

    fn link(&mut self, idx: u32) {
        let slot = self.flows[idx as usize].expires as usize % SLOTS;
        let head = self.wheel[slot];
        {
            let f = &mut self.flows[idx as usize];
            f.prev = NIL;
            f.next = head;
            f.slot = slot as u16;
        }
        if head != NIL {
            self.flows[head as usize].prev = idx;
        }
        self.wheel[slot] = idx;
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next, slot) = {
            let f = &self.flows[idx as usize];
            (f.prev, f.next, usize::from(f.slot))
        };
        if prev == NIL {
            if self.wheel[slot] == idx {
                self.wheel[slot] = next;
            }
        } else {
            self.flows[prev as usize].next = next;
        }
        if next != NIL {
            self.flows[next as usize].prev = prev;
        }
        let f = &mut self.flows[idx as usize];
        f.next = NIL;
        f.prev = NIL;
    }

    /// Advances the wheel to `now` (at most `max_slots` slots per call), calling `expire` for each
    /// flow whose `expires` has passed (the callback removes it). Flows touched since they were
    /// scheduled are moved to their new slot instead.
    pub fn advance(
        &mut self,
        now: u32,
        max_slots: u32,
        mut expire: impl FnMut(&mut FlowTable, u32),
    ) {
        let mut n = 0;
        while self.wheel_tick != now && n < max_slots {
            self.wheel_tick = self.wheel_tick.wrapping_add(1);
            n += 1;
            let slot = self.wheel_tick as usize % SLOTS;
            let mut cur = std::mem::replace(&mut self.wheel[slot], NIL);
            while cur != NIL {
                let next = self.flows[cur as usize].next;
                self.flows[cur as usize].next = NIL;
                self.flows[cur as usize].prev = NIL;
                if next != NIL {
                    self.flows[next as usize].prev = NIL;
                }
                let exp = self.flows[cur as usize].expires;
                if i32::from_ne_bytes(exp.wrapping_sub(self.wheel_tick).to_ne_bytes()) <= 0 {
                    // Still linked nowhere; link it so that `remove` can unlink it uniformly.
                    self.link(cur);
                    expire(self, cur);
                } else {
                    self.link(cur);
                }
                cur = next;
            }
        }
    }

    /// Starts the wheel at `now` (call once before the first insert).
    pub fn start(&mut self, now: u32) {
        self.wheel_tick = now;
    }

    /// Indices of live flows (for snapshots; not on the fast path).
    pub fn live_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.live
            .iter()
            .enumerate()
            .filter(|(_, l)| **l)
            .map(|(i, _)| i as u32)
    }

    /// The hasher (shared by all workers for owner selection).
    pub fn hasher(&self) -> &FlowHasher {
        &self.hasher
    }
}

/// The key of the client -> VIP direction.
pub fn client_key(f: &Flow) -> Key {
    Key::client(f.client, f.vip)
}

/// The key of the backend -> SNAT direction.
pub fn server_key(f: &Flow) -> Key {
    Key {
        src: f.backend.0,
        dst: f.snat.0,
        sport: f.backend.1,
        dport: f.snat.1,
    }
}

impl Flow {
    /// Whether a migration of the flow was ever started ([`fin::MIGRATED`]).
    #[inline]
    pub fn moved(&self) -> bool {
        self.fin & fin::MIGRATED != 0
    }

    /// A new flow in `SynSent`.
    pub fn new(
        client: (u32, u16),
        vip: (u32, u16),
        backend: (u32, u16),
        snat: (u32, u16),
        client_mac: [u8; 6],
        service: u16,
    ) -> Flow {
        Flow {
            client,
            vip,
            backend,
            snat,
            client_mac,
            state: TcpState::SynSent,
            fin: 0,
            client_fin_end: SeqNumber(0),
            server_fin_end: SeqNumber(0),
            client_opts: LegOptions::default(),
            server_opts: LegOptions::default(),
            expires: 0,
            created: 0,
            service,
            slot: 0,
            next: NIL,
            prev: NIL,
        }
    }
}
