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

use tsmp_core::dataplane::{Dataplane, Io};
use tsmp_core::migrate::engine::Event;
use tsmp_dpdk::{rdtsc, Burst, Mbuf, Mempool, RxQueue, TxQueue, TxResult};

use crate::control::{Command, EventRing};
use crate::stats::{ProxyCounters, WorkerCounters, WorkerSnapshot};

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

/// Proxy-mode worker: drives a [`Dataplane`] with mbufs. It owns the DPDK side only (queues,
/// pool, rings, the clock); everything between rx and tx is the data plane's.
#[derive(Debug)]
pub struct ProxyWorker<'p> {
    /// The sans-IO data plane (core, engines, timers).
    pub dp: Dataplane<Mbuf>,
    /// Owned rx queues with their port index.
    pub rx: Vec<(RxQueue<'p>, usize)>,
    /// This worker's tx queue on each port (by port index).
    pub tx: Vec<TxQueue<'p>>,
    /// DPDK port id of each port index.
    pub port_ids: Vec<tsmp_dpdk::PortId>,
    /// Pool for frames the data plane builds (ARP requests, engine segments).
    pub pool: &'p Mempool<'p>,
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
    /// TSC cycles each non-empty burst took (receive to the last frame handled); a copy goes to
    /// the slow path on request ([`Command::Latency`]).
    pub burst_cycles: hdrhistogram::Histogram<u64>,
    /// Commands from the slow path.
    pub commands: std::sync::Arc<crossbeam_queue::ArrayQueue<Command>>,
    /// Migration progress to the slow path.
    pub events: EventRing,
}

/// The data plane's view of a worker's DPDK side for one call: tx queues, the pool, the rings.
struct WorkerIo<'a, 'p> {
    tx: &'a mut [TxQueue<'p>],
    pool: &'p Mempool<'p>,
    handoff: &'a HandoffRings,
    neighbours: &'a NeighbourRings,
    events: &'a EventRing,
    index: usize,
    s: &'a mut WorkerSnapshot,
}

impl Io<Mbuf> for WorkerIo<'_, '_> {
    #[inline(always)]
    fn tx(&mut self, port: usize, m: Mbuf) {
        match self.tx.get_mut(port) {
            Some(q) => account(self.s, q.push(m)),
            None => drop(m),
        }
    }

    #[inline(always)]
    fn handoff(&mut self, worker: usize, m: Mbuf) -> Result<(), Mbuf> {
        match self.handoff.get(worker) {
            Some(r) => r.push(m),
            None => Err(m),
        }
    }

    fn alloc(&mut self) -> Option<Mbuf> {
        self.pool.alloc()
    }

    fn event(&mut self, slot: u32, ev: Event) {
        let _ = self.events.push((self.index, slot, ev));
    }

    fn learned(&mut self, ip: u32, mac: [u8; 6]) {
        for (w, ring) in self.neighbours.iter().enumerate() {
            if w != self.index {
                let _ = ring.push((ip, mac));
            }
        }
    }
}

/// The [`Io`] of worker `$w` (its index `$i`) around the snapshot `$s` its transmissions are
/// counted in: borrows the worker's DPDK side, not its data plane.
macro_rules! worker_io {
    ($w:ident, $i:expr, $s:expr) => {
        WorkerIo {
            tx: &mut $w.tx,
            pool: $w.pool,
            handoff: &$w.handoff,
            neighbours: &$w.neighbours,
            events: &$w.events,
            index: $i,
            s: $s,
        }
    };
}

impl ProxyWorker<'_> {
    /// Commands from the slow path.
    fn run_commands(&mut self, s: &mut WorkerSnapshot) {
        let index = self.dp.worker();
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
                    let mut io = worker_io!(self, index, s);
                    let r = self
                        .dp
                        .start_migration(client, vip, offset, counter, expect, &mut io);
                    let _ = reply.try_send(r);
                }
                Command::Flows {
                    filter,
                    cursor,
                    reply,
                } => {
                    let _ = reply.try_send(self.dp.flow_page(&filter, cursor));
                }
                Command::Latency { reply } => {
                    let _ = reply.try_send(self.burst_cycles.clone());
                }
                Command::Flow { slot, reply } => {
                    let _ = reply.try_send(self.dp.flow_detail(slot));
                }
            }
        }
    }

    /// Runs until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool, counters: &WorkerCounters, proxy: &ProxyCounters) {
        let mut s = WorkerSnapshot::default();
        let mut burst = Burst::default();
        for t in &mut self.tx {
            t.set_threshold(usize::from(self.burst));
        }
        let index = self.dp.worker();
        let tsc0 = rdtsc();
        let mut last_drain = tsc0;
        let tsc_per_ms = self.tsc_per_ms.max(1);
        while !stop.load(Ordering::Relaxed) {
            let now = rdtsc();
            let elapsed = now.wrapping_sub(tsc0);
            self.dp.set_time(elapsed * 1000 / tsc_per_ms);
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
                self.dp.prefetch_burst(burst.iter().map(Mbuf::data));
                let mut io = worker_io!(self, index, &mut s);
                for m in burst.drain() {
                    io.s.rx_bytes += u64::from(m.pkt_len());
                    self.dp.handle(port, m, &mut io);
                }
                let took = rdtsc().wrapping_sub(t0);
                s.busy_cycles += took;
                // Saturates at the histogram's bound instead of failing.
                self.burst_cycles.saturating_record(took);
            }
            // Frames other workers received for flows this worker owns.
            {
                let mut io = worker_io!(self, index, &mut s);
                for _ in 0..self.burst {
                    let Some(m) = self.handoff[index].pop() else {
                        break;
                    };
                    let pid = m.port();
                    let port = self
                        .port_ids
                        .iter()
                        .position(|&p| p == pid)
                        .unwrap_or(usize::MAX);
                    self.dp.handle_handed_over(port, m, &mut io);
                }
            }
            while let Some((ip, mac)) = self.neighbours[index].pop() {
                self.dp.learn(ip, mac);
            }
            if now.wrapping_sub(last_drain) >= self.drain_tsc {
                self.housekeeping(&mut s);
                counters.publish(&s);
                proxy.publish(&self.dp.core().stats, self.dp.stats());
                last_drain = now;
            }
        }
        for t in &mut self.tx {
            account(&mut s, t.flush());
        }
        self.dp.refresh_stats();
        counters.publish(&s);
        proxy.publish(&self.dp.core().stats, self.dp.stats());
    }

    /// Between bursts: flush tx, the data plane's housekeeping (ARP, expiry, timers), the slow
    /// path's commands.
    fn housekeeping(&mut self, s: &mut WorkerSnapshot) {
        for t in &mut self.tx {
            if t.buffered() > 0 {
                account(s, t.flush());
            }
        }
        let index = self.dp.worker();
        let mut io = worker_io!(self, index, s);
        self.dp.housekeeping(64, &mut io);
        self.run_commands(s);
    }
}
