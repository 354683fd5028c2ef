//! The poll-mode worker loop, in the shape of DPDK's l3fwd.
//!
//! Per pass: for each owned rx queue, rx burst -> (prefetch, process) -> buffered tx; then, when
//! the TSC drain interval has passed, flush partly filled tx buffers and publish counters. No
//! allocation, lock or system call happens inside the loop: everything it touches is built before
//! it starts and owned by this worker alone.
//!
//! Invariants:
//! - a worker owns its rx queues and one tx queue per port; no other lcore touches them;
//! - every mbuf received leaves the loop exactly once: transmitted, or freed and counted;
//! - counters are published at least every drain interval, and once more when the loop stops.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::control::{
    Command, EventRing, FlowDetail, FlowFilter, FlowInfo, FlowPage, Migrating, Refusal,
};
use crate::dpdk::{rdtsc, Burst, Mbuf, Mempool, RxQueue, TxQueue, TxResult};
use crate::migrate::cache::Budget;
use crate::migrate::engine::{Engine, EngineConfig, Event, Leg, Verdict as Verdict2};
use crate::msg::Reason;
use crate::proxy::{FlowHit, ProxyCore, Verdict};
use crate::stats::{ProxyCounters, ProxyExtra, WorkerCounters, WorkerSnapshot};
use crate::wire::build::{tcp_frame_len, write_tcp_frame};

/// One rx queue and the index (into the worker's tx queues) of the port its packets leave on.
#[derive(Debug)]
pub struct RxPath<'p> {
    /// The queue polled.
    pub rx: RxQueue<'p>,
    /// Index into [`Passthrough::tx`] of the output port.
    pub out: usize,
}

/// Pass-through forwarding: every frame leaves, untouched, on the other port.
#[derive(Debug)]
pub struct Passthrough<'p> {
    /// Owned rx queues.
    pub rx: Vec<RxPath<'p>>,
    /// This worker's tx queue on each port.
    pub tx: Vec<TxQueue<'p>>,
    /// Packets per rx burst.
    pub burst: u16,
    /// TSC ticks between forced tx flushes.
    pub drain_tsc: u64,
}

#[inline(always)]
fn account(s: &mut WorkerSnapshot, r: TxResult) {
    s.tx_pkts += u64::from(r.sent);
    s.tx_bytes += r.sent_bytes;
    s.tx_dropped += u64::from(r.dropped);
}

impl Passthrough<'_> {
    /// Runs until `stop` is set, publishing counters into `counters`.
    pub fn run(mut self, stop: &AtomicBool, counters: &WorkerCounters) {
        let mut s = WorkerSnapshot::default();
        let mut burst = Burst::default();
        for t in &mut self.tx {
            t.set_threshold(usize::from(self.burst));
        }
        let mut last_drain = rdtsc();
        while !stop.load(Ordering::Relaxed) {
            for path in &mut self.rx {
                s.polls += 1;
                let t0 = rdtsc();
                let n = path.rx.recv(&mut burst, self.burst);
                if n == 0 {
                    continue;
                }
                s.busy_polls += 1;
                s.rx_pkts += n as u64;
                let r = self.tx[path.out].push_burst(&mut burst);
                // Pass-through: what was received is what was offered to tx.
                s.rx_bytes += r.sent_bytes + r.dropped_bytes;
                account(&mut s, r);
                s.busy_cycles += rdtsc().wrapping_sub(t0);
            }
            let now = rdtsc();
            if now.wrapping_sub(last_drain) >= self.drain_tsc {
                for t in &mut self.tx {
                    if t.buffered() > 0 {
                        let t0 = rdtsc();
                        account(&mut s, t.flush());
                        s.busy_cycles += rdtsc().wrapping_sub(t0);
                    }
                }
                counters.publish(&s);
                last_drain = now;
            }
        }
        for t in &mut self.tx {
            account(&mut s, t.flush());
        }
        counters.publish(&s);
    }
}

/// Hand-off rings between workers: `rings[w]` carries frames to worker `w`.
pub type HandoffRings = Vec<std::sync::Arc<crossbeam_queue::ArrayQueue<Mbuf>>>;
/// Neighbour updates between workers: `rings[w]` carries (address, MAC) to worker `w`.
pub type NeighbourRings = Vec<std::sync::Arc<crossbeam_queue::ArrayQueue<(u32, [u8; 6])>>>;

/// Proxy-mode worker: drives a [`ProxyCore`] with mbufs.
#[derive(Debug)]
pub struct ProxyWorker<'p> {
    /// The sans-IO logic.
    pub core: ProxyCore,
    /// Owned rx queues with their port index.
    pub rx: Vec<(RxQueue<'p>, usize)>,
    /// This worker's tx queue on each port (by port index).
    pub tx: Vec<TxQueue<'p>>,
    /// DPDK port id of each port index.
    pub port_ids: Vec<crate::dpdk::PortId>,
    /// Pool for frames the worker builds (ARP requests).
    pub pool: &'p Mempool<'p>,
    /// This worker's index.
    pub index: usize,
    /// Hand-off rings (by destination worker).
    pub handoff: HandoffRings,
    /// Neighbour rings (by destination worker).
    pub neighbours: NeighbourRings,
    /// Packets per rx burst.
    pub burst: u16,
    /// TSC ticks between tx flushes, counter publication and timer runs.
    pub drain_tsc: u64,
    /// TSC ticks per millisecond.
    pub tsc_per_ms: u64,
    /// The migration engine of each flow, by flow slot (created with the flow's SYN).
    pub engines: crate::proxy::arena::Arena<Engine<Mbuf>>,
    /// The engines' configuration.
    pub engine_cfg: EngineConfig,
    /// What all of this worker's segment caches may hold.
    pub budget: Budget,
    /// Microseconds on the engines' clock.
    pub now_us: u64,
    /// TSC cycles each non-empty burst took (receive to the last frame handled); a copy goes to
    /// the slow path on request ([`Command::Latency`]).
    pub burst_cycles: hdrhistogram::Histogram<u64>,
    /// Commands from the slow path.
    pub commands: std::sync::Arc<crossbeam_queue::ArrayQueue<Command>>,
    /// Migration progress to the slow path.
    pub events: EventRing,
    /// Slots whose engine has a deadline (migrating flows), and a flag per slot.
    pub timers: Vec<u32>,
    /// `timers` membership, by slot.
    pub timer_set: Vec<bool>,
}

impl ProxyWorker<'_> {
    /// Overlaps the burst's table misses: every frame's index bucket, then every flow entry
    /// and migration engine, before the first frame is processed.
    #[inline(always)]
    fn prefetch_flows(&self, burst: &Burst) {
        let mut keys = [None; Burst::CAP];
        for (k, m) in keys.iter_mut().zip(burst.iter()) {
            *k = self.core.prefetch_index(m.data());
        }
        for k in &keys[..burst.len()] {
            if let Some(slot) = self.core.prefetch_flow(*k) {
                if let Some(Some(e)) = self.engines.get(slot as usize) {
                    dpdk_sys::prefetch0(std::ptr::from_ref(e).cast());
                }
            }
        }
    }

    #[inline(always)]
    fn handle(&mut self, mut m: Mbuf, port: usize, s: &mut WorkerSnapshot, x: &mut ProxyExtra) {
        let v = self.core.process(port, m.data_mut());
        self.release_closed(x);
        match v {
            Verdict::Tx(p) => match self.core.last_hit() {
                Some(hit) => self.through_engine(hit, m, p, s, x),
                None => account(s, self.tx[p].push(m)),
            },
            Verdict::HandOff(w) => {
                if let Err(m) = self.handoff[w].push(m) {
                    x.handoff_ring_full += 1;
                    drop(m);
                }
            }
            Verdict::Drop(_) => drop(m),
        }
    }

    /// A TCP segment of a flow, already translated by the NAT, passes its flow's engine: it is
    /// forwarded (rewritten in place; the rolling cache keeps a shared reference), or consumed;
    /// then whatever the engine originates is built and sent.
    #[inline(always)]
    fn through_engine(
        &mut self,
        hit: FlowHit,
        m: Mbuf,
        port: usize,
        s: &mut WorkerSnapshot,
        x: &mut ProxyExtra,
    ) {
        let slot = hit.slot as usize;
        if hit.created {
            if let Some(e) = self.engines.slot(slot) {
                *e = Some(Engine::new(self.engine_cfg));
                x.migration.engines_active += 1;
            }
        }
        let Some(Some(e)) = self.engines.get_mut(slot) else {
            // A flow older than its engine (none is): forward as the NAT decided.
            account(s, self.tx[port].push(m));
            return;
        };
        let from = if hit.from_server {
            Leg::Server
        } else {
            Leg::Device(hit.device)
        };
        let overflow = e.stats.rolling_overflow;
        match e.on_classified(self.now_us, from, m, &hit.meta, &mut self.budget) {
            // The NAT already translated the frame toward the leg the engine forwards it to
            // (server segments to the current device, device segments to the server).
            Verdict2::Forward(_, m) => account(s, self.tx[port].push(m)),
            Verdict2::Consumed | Verdict2::Drop(_) => {}
        }
        x.migration.cache_overflow += e.stats.rolling_overflow - overflow;
        self.after_engine(hit.slot, s, x);
    }

    /// After an engine ran: send what it originated, pass its events on (switching the NAT to
    /// a device that took the flow over), and keep its deadline in the timer list.
    fn after_engine(&mut self, slot: u32, s: &mut WorkerSnapshot, x: &mut ProxyExtra) {
        self.emit(slot, s, x);
        let i = slot as usize;
        let Some(Some(e)) = self.engines.get_mut(i) else {
            return;
        };
        let current = self.core.device_of(slot);
        while let Some(ev) = e.poll_event() {
            match ev {
                Event::Paused { .. } => x.migration.migrations_started += 1,
                Event::Resumed { device, .. }
                    if device != current && self.core.switch_device(slot, current, device) =>
                {
                    x.migration.migrations_done += 1;
                }
                Event::Cancelled { .. } => x.migration.migrations_cancelled += 1,
                Event::Reset { .. } => x.migration.migrations_reset += 1,
                _ => {}
            }
            let _ = self.events.push((self.index, slot, ev));
        }
        if e.poll_timeout().is_some() && !self.timer_set.get(i).copied().unwrap_or(true) {
            self.timer_set[i] = true;
            self.timers.push(slot);
        }
    }

    /// Runs the engines whose deadline passed (bounded by the number of migrating flows).
    fn run_timers(&mut self, s: &mut WorkerSnapshot, x: &mut ProxyExtra) {
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
                    self.after_engine(slot, s, x);
                }
                Some(_) => {}
            }
            k += 1;
        }
    }

    /// Commands from the slow path.
    fn run_commands(&mut self, s: &mut WorkerSnapshot, x: &mut ProxyExtra) {
        while let Some(cmd) = self.commands.pop() {
            match cmd {
                Command::Migrate {
                    client,
                    vip,
                    offset,
                    counter,
                    expect,
                    reply,
                } => {
                    let r = self.start_migration(client, vip, offset, counter, expect, s, x);
                    let _ = reply.try_send(r);
                }
                Command::Flows {
                    filter,
                    cursor,
                    reply,
                } => {
                    let _ = reply.try_send(self.flow_page(&filter, cursor));
                }
                Command::Latency { reply } => {
                    let _ = reply.try_send(self.burst_cycles.clone());
                }
                Command::Flow { slot, reply } => {
                    let d = self.flow_info(slot).map(|flow| FlowDetail {
                        engine: self
                            .engines
                            .get(slot as usize)
                            .and_then(|e| e.as_ref())
                            .map(|e| e.describe().lines().map(str::to_owned).collect())
                            .unwrap_or_default(),
                        flow,
                    });
                    let _ = reply.try_send(d);
                }
            }
        }
    }

    /// Up to [`SCAN_SLOTS`] slots of the table from `cursor`: the live flows `filter` selects.
    fn flow_page(&self, filter: &FlowFilter, cursor: u32) -> FlowPage {
        crate::control::flow_page(&self.core, &self.engines, self.index, filter, cursor)
    }

    /// The operator's view of the flow in `slot`, if one lives there.
    fn flow_info(&self, slot: u32) -> Option<FlowInfo> {
        crate::control::flow_info(&self.core, &self.engines, self.index, slot)
    }

    /// An accepted migration request: freeze the flow and reserve the port its target
    /// connects to.
    #[allow(clippy::too_many_arguments)]
    fn start_migration(
        &mut self,
        client: (u32, u16),
        vip: (u32, u16),
        offset: Option<u64>,
        counter: Option<u32>,
        expect: Option<u32>,
        s: &mut WorkerSnapshot,
        x: &mut ProxyExtra,
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
            return Err(Refusal::new(Reason::Engine, r.to_string()));
        }
        self.after_engine(slot, s, x);
        Ok(Migrating {
            worker: self.index,
            flow: slot,
            device: gen,
            migration_port: port,
            service: std::net::SocketAddrV4::new(service.0.into(), service.1),
        })
    }

    /// Builds and sends the segments the engine of `slot` originates.
    fn emit(&mut self, slot: u32, s: &mut WorkerSnapshot, x: &mut ProxyExtra) {
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
            let Some(mut m) = self.pool.alloc() else {
                x.mempool_exhausted += 1;
                continue;
            };
            let len = tcp_frame_len(&t.fields, t.payload_len as usize);
            if !m.set_len(len) {
                continue;
            }
            let mut parts = [&[][..]; 8];
            let mut n = 0;
            for p in e.payload(&t) {
                if n < parts.len() {
                    parts[n] = p;
                    n += 1;
                }
            }
            if write_tcp_frame(m.data_mut(), &ep, &t.fields, &parts[..n]).is_ok() {
                x.migration.engine_emitted += 1;
                account(s, self.tx[port].push(m));
            }
        }
    }

    /// Engines of flows the core removed go with them (their cached mbufs back to the pool).
    fn release_closed(&mut self, x: &mut ProxyExtra) {
        for slot in self.core.take_closed() {
            if let Some(mut e) = self.engines.get_mut(slot as usize).and_then(Option::take) {
                e.release(&mut self.budget);
                x.migration.engines_active = x.migration.engines_active.saturating_sub(1);
            }
            if self.timer_set.get(slot as usize).copied().unwrap_or(false) {
                self.timer_set[slot as usize] = false;
                self.timers.retain(|&t| t != slot);
            }
        }
    }

    /// Runs until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool, counters: &WorkerCounters, proxy: &ProxyCounters) {
        let mut s = WorkerSnapshot::default();
        let mut x = ProxyExtra {
            engine_size: std::mem::size_of::<Engine<Mbuf>>() as u64,
            flow_capacity: self.core.flows.capacity() as u64,
            flow_table_bytes: (self.core.flows.memory_bytes()
                + self.engines.directory_bytes()
                + self.timer_set.capacity()) as u64,
            ..ProxyExtra::default()
        };
        let mut burst = Burst::default();
        for t in &mut self.tx {
            t.set_threshold(usize::from(self.burst));
        }
        let tsc0 = rdtsc();
        let mut last_drain = tsc0;
        let tsc_per_ms = self.tsc_per_ms.max(1);
        while !stop.load(Ordering::Relaxed) {
            let now = rdtsc();
            let elapsed = now.wrapping_sub(tsc0);
            self.core.set_time(elapsed / tsc_per_ms);
            self.now_us = elapsed * 1000 / tsc_per_ms;
            for i in 0..self.rx.len() {
                s.polls += 1;
                let t0 = rdtsc();
                let port = self.rx[i].1;
                let n = self.rx[i].0.recv(&mut burst, self.burst);
                if n == 0 {
                    continue;
                }
                s.busy_polls += 1;
                s.rx_pkts += n as u64;
                for j in 0..n {
                    burst.prefetch(j);
                }
                self.prefetch_flows(&burst);
                for m in burst.drain() {
                    s.rx_bytes += u64::from(m.pkt_len());
                    self.handle(m, port, &mut s, &mut x);
                }
                let took = rdtsc().wrapping_sub(t0);
                s.busy_cycles += took;
                // Saturates at the histogram's bound instead of failing.
                self.burst_cycles.saturating_record(took);
            }
            // Frames other workers received for flows this worker owns.
            for _ in 0..self.burst {
                let Some(m) = self.handoff[self.index].pop() else {
                    break;
                };
                x.handoffs_in += 1;
                let pid = m.port();
                let port = self
                    .port_ids
                    .iter()
                    .position(|&p| p == pid)
                    .unwrap_or(usize::MAX);
                self.handle(m, port, &mut s, &mut x);
            }
            while let Some((ip, mac)) = self.neighbours[self.index].pop() {
                self.core.learn(ip, mac);
            }
            if now.wrapping_sub(last_drain) >= self.drain_tsc {
                self.housekeeping(&mut s, &mut x);
                x.flows_active = self.core.flow_count() as u64;
                x.snat_ports_free = self.core.snat_ports_free() as u64;
                counters.publish(&s);
                proxy.publish(&self.core.stats, &x);
                last_drain = now;
            }
        }
        for t in &mut self.tx {
            account(&mut s, t.flush());
        }
        x.flows_active = self.core.flow_count() as u64;
        counters.publish(&s);
        proxy.publish(&self.core.stats, &x);
    }

    /// Between bursts: send ARP requests, share learned neighbours, flush tx, expire flows.
    fn housekeeping(&mut self, s: &mut WorkerSnapshot, x: &mut ProxyExtra) {
        let mut reqs = [(0usize, 0u32); 16];
        let mut n = 0;
        for r in self.core.take_arp_requests() {
            if n < reqs.len() {
                reqs[n] = r;
                n += 1;
            }
        }
        for &(port, ip) in &reqs[..n] {
            let Some(mut m) = self.pool.alloc() else {
                x.mempool_exhausted += 1;
                continue;
            };
            if !m.set_len(60) {
                continue;
            }
            m.data_mut().fill(0);
            if self.core.build_arp_request(port, ip, m.data_mut()) > 0 {
                account(s, self.tx[port].push(m));
            }
        }
        let mut learned = [(0u32, [0u8; 6]); 16];
        let mut k = 0;
        for l in self.core.take_learned() {
            if k < learned.len() {
                learned[k] = l;
                k += 1;
            }
        }
        for (w, ring) in self.neighbours.iter().enumerate() {
            if w != self.index {
                for &l in &learned[..k] {
                    let _ = ring.push(l);
                }
            }
        }
        for t in &mut self.tx {
            if t.buffered() > 0 {
                account(s, t.flush());
            }
        }
        self.core.expire(64);
        self.release_closed(x);
        self.run_commands(s, x);
        self.run_timers(s, x);
        x.migration.cache_bytes = self.budget.used;
        x.migration.cache_bufs = self.budget.bufs;
        x.migration.cache_bufs_peak = x.migration.cache_bufs_peak.max(self.budget.bufs);
    }
}
