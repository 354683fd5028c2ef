//! [`Dataplane`]: one worker's proxy core and its flows' migration engines, joined. Everything a
//! poll-mode worker does between rx and tx that is not DPDK lives here, so that the appliance's
//! worker and the deterministic simulations run the same glue: the engine arena, the cache
//! budget, timers, the slow path's requests, segments the engines originate, expiry and the
//! release of closed flows.
//!
//! A driver (the DPDK worker, a simulation) calls, in this order:
//! 1. [`Dataplane::set_time`] once per pass (the driver owns the clock);
//! 2. for each received burst, [`Dataplane::prefetch_burst`] over its frames, then
//!    [`Dataplane::handle`] for each frame: its fate and everything it caused go to the driver's
//!    [`Io`] (frames to transmit or hand off, migration events, neighbours learned);
//! 3. between bursts, at the driver's drain interval, [`Dataplane::housekeeping`] (ARP
//!    requests, expiry, timers) and the slow path's requests ([`Dataplane::start_migration`],
//!    [`Dataplane::flow_page`], [`Dataplane::flow_detail`]).
//!
//! Invariants:
//! - every buffer handed in leaves exactly once: to [`Io::tx`], to [`Io::handoff`] (or back and
//!   dropped, counted, when the ring is full), into an engine's cache, or dropped;
//! - a flow's engine lives exactly as long as the flow's slot: created with the SYN that created
//!   the flow, released (its cached buffers returned to the budget) when the core removes it;
//! - a slot is in the timer list exactly when its engine has a deadline (checked after every
//!   engine call), so timers cost nothing for flows that are not migrating;
//! - nothing here allocates after construction except what the slow path's own requests
//!   return (flow pages, descriptions).

pub mod stats;
pub mod view;

use std::net::SocketAddrV4;

use crate::buf::FrameBuf;
use crate::migrate::cache::Budget;
use crate::migrate::engine::{Engine, EngineConfig, Event, Leg, Phase, Verdict as EngineVerdict};
use crate::proxy::arena::Arena;
use crate::proxy::index::Advise;
use crate::proxy::{FlowHit, ProxyCore, Verdict};
use crate::refusal::{Reason, Refusal};
use crate::wire::build::{tcp_frame_len, write_tcp_frame_gather};

pub use stats::{DataplaneStats, MigrationCounters};
use view::{FlowDetail, FlowFilter, FlowInfo, FlowPage, Migrating};

/// The most frames one [`Dataplane::prefetch_burst`] call prefetches (longer bursts are
/// prefetched in their first `MAX_BURST` frames only).
pub const MAX_BURST: usize = 64;

/// What a [`Dataplane`] needs from its driver: where frames go and where events are reported.
pub trait Io<B> {
    /// Transmits `b` on port index `port`.
    fn tx(&mut self, port: usize, b: B);
    /// Hands `b`, unchanged, to worker `worker`; gives it back if that worker's ring is full.
    ///
    /// # Errors
    /// The ring is full: the buffer comes back, the data plane drops and counts it.
    fn handoff(&mut self, worker: usize, b: B) -> Result<(), B>;
    /// An empty buffer for a frame the data plane builds (`None`: the pool is exhausted, counted).
    fn alloc(&mut self) -> Option<B>;
    /// Migration progress of the flow in `slot`, for the slow path.
    fn event(&mut self, slot: u32, ev: Event);
    /// A neighbour this worker learned, for the other workers (their
    /// [`Dataplane::learn`]).
    fn learned(&mut self, ip: u32, mac: [u8; 6]);
}

/// One worker's data plane over buffers of type `B`.
#[derive(Debug)]
pub struct Dataplane<B> {
    /// The NAT, flow table and neighbours (read by the driver for its counters).
    core: ProxyCore,
    /// This worker's index.
    worker: usize,
    /// The migration engine of each flow, by flow slot.
    engines: Arena<Engine<B>>,
    /// The engines' configuration.
    engine_cfg: EngineConfig,
    /// What all of this worker's segment caches may hold.
    budget: Budget,
    /// Microseconds on the engines' clock.
    now_us: u64,
    /// Slots whose engine has a deadline.
    timers: Vec<u32>,
    /// `timers` membership, by slot.
    timer_set: Vec<bool>,
    /// Counters besides the core's.
    stats: DataplaneStats,
}

impl<B: FrameBuf> Dataplane<B> {
    /// Worker `worker`'s data plane around `core`: an engine per flow configured by
    /// `engine_cfg`, all engines' caches together bounded by `budget`; `advise` is offered the
    /// engine arena's chunks (huge pages) before they are touched.
    pub fn new(
        mut core: ProxyCore,
        worker: usize,
        engine_cfg: EngineConfig,
        budget: Budget,
        advise: Option<Advise>,
    ) -> Dataplane<B> {
        // A segment moves its flow's tracking only once its engine accepted it.
        core.defer_tracking();
        let capacity = core.flows.capacity();
        let engines = Arena::new(capacity, advise);
        let timer_set = vec![false; capacity];
        let stats = DataplaneStats {
            engine_size: std::mem::size_of::<Engine<B>>() as u64,
            flow_capacity: capacity as u64,
            flow_table_bytes: (core.flows.memory_bytes()
                + engines.directory_bytes()
                + timer_set.capacity()) as u64,
            ..DataplaneStats::default()
        };
        Dataplane {
            core,
            worker,
            engines,
            engine_cfg,
            budget,
            now_us: 0,
            timers: Vec::with_capacity(1024),
            timer_set,
            stats,
        }
    }

    /// The proxy core (flow table, counters).
    pub fn core(&self) -> &ProxyCore {
        &self.core
    }

    /// The proxy core, for set-up (exception path, neighbours).
    pub fn core_mut(&mut self) -> &mut ProxyCore {
        &mut self.core
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The data plane's counters, current as of the last call.
    pub fn stats(&self) -> &DataplaneStats {
        &self.stats
    }

    /// The cache budget's current use.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The engine of the flow in `slot`, if any (for inspection).
    pub fn engine(&self, slot: u32) -> Option<&Engine<B>> {
        self.engines.get(slot as usize).and_then(Option::as_ref)
    }

    /// Sets the clock: microseconds since the data plane started (monotonic; once per pass).
    #[inline]
    pub fn set_time(&mut self, now_us: u64) {
        self.now_us = now_us;
        self.core.set_time(now_us / 1000);
    }

    /// The clock, microseconds.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// Overlaps a burst's table misses: every frame's index bucket, then every flow entry and
    /// migration engine, before the first frame is processed ([`FrameBuf::prefetch`] is the
    /// hint; a no-op for plain buffers).
    #[inline(always)]
    pub fn prefetch_burst<'a>(&self, frames: impl Iterator<Item = &'a [u8]>) {
        let mut keys = [None; MAX_BURST];
        let mut n = 0;
        for (k, f) in keys.iter_mut().zip(frames) {
            *k = self.core.prefetch_index(f, B::prefetch);
            n += 1;
        }
        for k in &keys[..n] {
            if let Some(slot) = self.core.prefetch_flow(*k, B::prefetch) {
                if let Some(Some(e)) = self.engines.get(slot as usize) {
                    B::prefetch(std::ptr::from_ref(e).cast());
                }
            }
        }
    }

    /// One frame received on port index `port` (or handed over by another worker): its fate
    /// and whatever it caused go to `io`.
    #[inline(always)]
    pub fn handle(&mut self, port: usize, mut b: B, io: &mut impl Io<B>) {
        let csum = b.rx_checksum();
        let v = self.core.process_checked(port, b.as_mut(), csum);
        self.release_closed();
        match v {
            Verdict::Tx(p) => match self.core.last_hit() {
                Some(hit) => self.through_engine(hit, b, p, io),
                None => io.tx(p, b),
            },
            Verdict::HandOff(w) => {
                if let Err(b) = io.handoff(w, b) {
                    self.stats.handoff_ring_full += 1;
                    drop(b);
                }
            }
            Verdict::Drop(_) => drop(b),
        }
    }

    /// A frame another worker received for a flow this one owns, on port index `port`.
    #[inline]
    pub fn handle_handed_over(&mut self, port: usize, b: B, io: &mut impl Io<B>) {
        self.stats.handoffs_in += 1;
        self.handle(port, b, io);
    }

    /// A neighbour another worker learned.
    pub fn learn(&mut self, ip: u32, mac: [u8; 6]) {
        self.core.learn(ip, mac);
    }

    /// A TCP segment of a flow, already translated by the NAT, passes its flow's engine: it is
    /// forwarded (rewritten in place; the rolling cache keeps a shared reference), or consumed;
    /// then whatever the engine originates is built and sent.
    #[inline(always)]
    fn through_engine(&mut self, hit: FlowHit, b: B, port: usize, io: &mut impl Io<B>) {
        let slot = hit.slot as usize;
        if hit.created {
            if let Some(e) = self.engines.slot(slot) {
                *e = Some(Engine::new(self.engine_cfg));
                self.stats.migration.engines_active += 1;
            }
        }
        let Some(Some(e)) = self.engines.get_mut(slot) else {
            // A flow older than its engine (none is): forward as the NAT decided.
            self.core.commit(&hit, b.as_ref());
            io.tx(port, b);
            return;
        };
        let from = if hit.from_server {
            Leg::Server
        } else {
            Leg::Device(hit.device)
        };
        let before = e.stats;
        match e.on_classified(self.now_us, from, b, &hit.meta, &mut self.budget) {
            // The NAT already translated the frame toward the leg the engine forwards it to
            // (server segments to the current device, device segments to the server).
            EngineVerdict::Forward(_, b) => {
                self.core.commit(&hit, b.as_ref());
                io.tx(port, b);
            }
            // Absorbed on the flow's behalf (cached, answered): the flow is not idle, and its
            // tracking does not see what its peer never will (an old device's FIN or RST).
            EngineVerdict::Consumed => self.core.touch(&hit),
            // Refused (blind, out of window): the flow is as it was.
            EngineVerdict::Drop(_) => {}
        }
        let (after, m) = (&e.stats, &mut self.stats.migration);
        m.cache_overflow += after.rolling_overflow - before.rolling_overflow;
        m.blind_dropped += after.blind_dropped - before.blind_dropped;
        m.challenged += after.challenged - before.challenged;
        self.after_engine(hit.slot, io);
    }

    /// After an engine ran: send what it originated, pass its events on (switching the NAT to
    /// a device that took the flow over), and keep its deadline in the timer list.
    fn after_engine(&mut self, slot: u32, io: &mut impl Io<B>) {
        self.emit(slot, io);
        let i = slot as usize;
        let Some(Some(e)) = self.engines.get_mut(i) else {
            return;
        };
        let current = self.core.device_of(slot);
        while let Some(ev) = e.poll_event() {
            let m = &mut self.stats.migration;
            match ev {
                Event::Paused { .. } => m.migrations_started += 1,
                Event::Resumed { device, .. } => {
                    if device != current && self.core.switch_device(slot, current, device) {
                        m.migrations_done += 1;
                    }
                    self.core.end_migration(slot);
                }
                Event::Cancelled { .. } => {
                    m.migrations_cancelled += 1;
                    self.core.end_migration(slot);
                }
                Event::Reset { .. } => {
                    m.migrations_reset += 1;
                    self.core.reset_tracking(slot);
                    self.core.end_migration(slot);
                }
                _ => {}
            }
            io.event(slot, ev);
        }
        if e.poll_timeout().is_some() && !self.timer_set.get(i).copied().unwrap_or(true) {
            self.timer_set[i] = true;
            self.timers.push(slot);
        }
    }

    /// Builds and sends the segments the engine of `slot` originates, each gathered from as
    /// many cached buffers as its range spans.
    fn emit(&mut self, slot: u32, io: &mut impl Io<B>) {
        let Some(Some(e)) = self.engines.get_mut(slot as usize) else {
            return;
        };
        while let Some(t) = e.poll_transmit(self.now_us) {
            let device = match t.to {
                Leg::Server => None,
                Leg::Device(g) => Some(g),
            };
            let Some((port, ep)) = self.core.endpoints(slot, device) else {
                continue;
            };
            let Some(mut b) = io.alloc() else {
                self.stats.mempool_exhausted += 1;
                continue;
            };
            let len = tcp_frame_len(&t.fields, t.payload_len as usize);
            if !b.set_len(len) {
                continue;
            }
            let plen = t.payload_len as usize;
            match write_tcp_frame_gather(b.as_mut(), &ep, &t.fields, plen, e.payload(&t)) {
                Ok(_) => {
                    self.stats.migration.engine_emitted += 1;
                    io.tx(port, b);
                }
                // The cache no longer holds what the engine asked for: nothing leaves that is
                // shorter than its headers say (counted; the sender's timer sends it again).
                Err(_) => self.stats.migration.emit_failed += 1,
            }
        }
    }

    /// Engines of flows the core removed go with them (their cached buffers back to the pool).
    fn release_closed(&mut self) {
        for slot in self.core.take_closed() {
            if let Some(mut e) = self.engines.get_mut(slot as usize).and_then(Option::take) {
                e.release(&mut self.budget);
                let m = &mut self.stats.migration;
                m.engines_active = m.engines_active.saturating_sub(1);
            }
            if self.timer_set.get(slot as usize).copied().unwrap_or(false) {
                self.timer_set[slot as usize] = false;
                self.timers.retain(|&t| t != slot);
            }
        }
    }

    /// Runs the engines whose deadline passed (bounded by the number of migrating flows).
    fn run_timers(&mut self, io: &mut impl Io<B>) {
        let mut k = 0;
        while k < self.timers.len() {
            let slot = self.timers[k];
            let due = match self.engines.get(slot as usize) {
                Some(Some(e)) => e.poll_timeout(),
                _ => None,
            };
            match due {
                None => {
                    self.timers.swap_remove(k);
                    if let Some(f) = self.timer_set.get_mut(slot as usize) {
                        *f = false;
                    }
                    continue;
                }
                Some(t) if t <= self.now_us => {
                    if let Some(Some(e)) = self.engines.get_mut(slot as usize) {
                        e.on_timeout(self.now_us, &mut self.budget);
                    }
                    self.after_engine(slot, io);
                }
                Some(_) => {}
            }
            k += 1;
        }
    }

    /// Between bursts: send ARP requests (at most 16 a call), share learned neighbours, expire
    /// up to `expire_slots` flows, release closed flows' engines, run due timers, and refresh
    /// the counters.
    pub fn housekeeping(&mut self, expire_slots: u32, io: &mut impl Io<B>) {
        let mut reqs = [(0usize, 0u32); 16];
        let mut n = 0;
        for r in self.core.take_arp_requests() {
            if n < reqs.len() {
                reqs[n] = r;
                n += 1;
            }
        }
        for &(port, ip) in &reqs[..n] {
            let Some(mut b) = io.alloc() else {
                self.stats.mempool_exhausted += 1;
                continue;
            };
            if !b.set_len(60) {
                continue;
            }
            b.as_mut().fill(0);
            if self.core.build_arp_request(port, ip, b.as_mut()) > 0 {
                io.tx(port, b);
            }
        }
        for (ip, mac) in self.core.take_learned() {
            io.learned(ip, mac);
        }
        let (engines, held) = (&self.engines, &mut self.stats.migration.expiry_held);
        self.core.expire_holding(expire_slots, |slot| {
            let migrating = engines
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|e| matches!(e.phase(), Phase::Paused | Phase::Resuming));
            *held += u64::from(migrating);
            migrating
        });
        self.release_closed();
        self.run_timers(io);
        self.refresh_stats();
    }

    /// Brings the gauges of [`Dataplane::stats`] up to date.
    pub fn refresh_stats(&mut self) {
        let m = &mut self.stats.migration;
        m.cache_bytes = self.budget.used;
        m.cache_bufs = self.budget.bufs;
        m.cache_bufs_peak = m.cache_bufs_peak.max(self.budget.bufs);
        self.stats.flows_active = self.core.flow_count() as u64;
        self.stats.snat_ports_free = self.core.snat_ports_free() as u64;
        self.stats.migration.migration_ports_free = self.core.migration_ports_free() as u64;
    }

    /// An accepted migration request for the flow of `client` to `vip`: freeze it and reserve
    /// the port its target connects to. `offset` is the application's consumed byte offset,
    /// `counter` the flow's migration counter the requester knows (refused when another device
    /// generation holds the flow), `expect` the only source address the migration port
    /// accepts.
    ///
    /// # Errors
    /// No such flow, an old counter, no migration port left, or the engine's own refusal; the
    /// flow is unchanged.
    pub fn start_migration(
        &mut self,
        client: (u32, u16),
        vip: (u32, u16),
        offset: Option<u64>,
        counter: Option<u32>,
        expect: Option<u32>,
        io: &mut impl Io<B>,
    ) -> Result<Migrating, Refusal> {
        let slot = self.core.lookup_client(client, vip).ok_or_else(|| {
            Refusal::new(
                Reason::NoFlow,
                "no flow of that client to that service address (closed, or never seen)",
            )
        })?;
        let service = self.core.service_of(slot).unwrap_or(vip);
        let Some(Some(e)) = self.engines.get_mut(slot as usize) else {
            return Err(Refusal::new(
                Reason::NoFlow,
                "the flow has no migration engine (it started before this proxy)",
            ));
        };
        if let Some(c) = counter {
            if c != e.device() {
                return Err(Refusal::new(
                    Reason::StaleCounter,
                    format!(
                        "the flow's migration counter is {}, the request says {c}: an old request",
                        e.device()
                    ),
                ));
            }
        }
        let gen = e.next_device();
        let port = self
            .core
            .reserve_migration(slot, gen, expect)
            .ok_or_else(|| {
                Refusal::new(
                    Reason::Engine,
                    "no migration port left on this worker (raise [migration] port_max)",
                )
            })?;
        if let Err(r) = e.migrate(self.now_us, offset, &mut self.budget) {
            self.core.release_migration(port);
            return Err(r.into());
        }
        self.after_engine(slot, io);
        Ok(Migrating {
            worker: self.worker,
            flow: slot,
            device: gen,
            migration_port: port,
            service: SocketAddrV4::new(service.0.into(), service.1),
        })
    }

    /// Up to [`view::SCAN_SLOTS`] slots of the table from `cursor`: the live flows `filter`
    /// selects.
    pub fn flow_page(&self, filter: &FlowFilter, cursor: u32) -> FlowPage {
        view::flow_page(&self.core, &self.engines, self.worker, filter, cursor)
    }

    /// The operator's view of the flow in `slot`, if one lives there.
    pub fn flow_info(&self, slot: u32) -> Option<FlowInfo> {
        view::flow_info(&self.core, &self.engines, self.worker, slot)
    }

    /// The flow in `slot` in detail: its summary and its engine's own account.
    pub fn flow_detail(&self, slot: u32) -> Option<FlowDetail> {
        self.flow_info(slot).map(|flow| FlowDetail {
            engine: self
                .engine(slot)
                .map(|e| e.describe().lines().map(str::to_owned).collect())
                .unwrap_or_default(),
            flow,
        })
    }
}

#[cfg(test)]
mod tests;
