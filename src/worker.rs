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

use crate::dpdk::{rdtsc, Burst, RxQueue, TxQueue, TxResult};
use crate::stats::{WorkerCounters, WorkerSnapshot};

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
