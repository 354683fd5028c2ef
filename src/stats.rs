//! Per-worker counters.
//!
//! Invariants: each [`WorkerCounters`] is written by exactly one worker (relaxed stores of values
//! it accumulates locally, published between bursts) and read by anyone with relaxed loads; it
//! sits on its own cache lines so that readers never cause false sharing with another worker.
//! Counters only grow; rates are computed by readers from two snapshots.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;
pub use tsmp_core::dataplane::{DataplaneStats, MigrationCounters};

/// Counters of one worker, cache-line aligned.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerCounters {
    rx_pkts: AtomicU64,
    rx_bytes: AtomicU64,
    tx_pkts: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    polls: AtomicU64,
    busy_polls: AtomicU64,
    busy_cycles: AtomicU64,
}

/// A plain copy of [`WorkerCounters`], as the worker accumulates them and readers see them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WorkerSnapshot {
    /// Packets received.
    pub rx_pkts: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets handed to a driver's tx ring.
    pub tx_pkts: u64,
    /// Bytes handed to a driver's tx ring.
    pub tx_bytes: u64,
    /// Packets dropped because a tx ring was full.
    pub tx_dropped: u64,
    /// Rx polls made.
    pub polls: u64,
    /// Rx polls that returned packets.
    pub busy_polls: u64,
    /// TSC cycles spent on non-empty polls (receive, process, transmit).
    pub busy_cycles: u64,
}

impl WorkerSnapshot {
    /// Busy TSC cycles per received packet (0 when none was received).
    pub fn cycles_per_packet(&self) -> f64 {
        if self.rx_pkts == 0 {
            0.0
        } else {
            self.busy_cycles as f64 / self.rx_pkts as f64
        }
    }

    /// Field-wise sum.
    pub fn add(&mut self, o: &WorkerSnapshot) {
        self.rx_pkts += o.rx_pkts;
        self.rx_bytes += o.rx_bytes;
        self.tx_pkts += o.tx_pkts;
        self.tx_bytes += o.tx_bytes;
        self.tx_dropped += o.tx_dropped;
        self.polls += o.polls;
        self.busy_polls += o.busy_polls;
        self.busy_cycles += o.busy_cycles;
    }
}

impl WorkerCounters {
    /// Publishes the worker's local totals (called by the owning worker only).
    #[inline]
    pub fn publish(&self, s: &WorkerSnapshot) {
        self.rx_pkts.store(s.rx_pkts, Relaxed);
        self.rx_bytes.store(s.rx_bytes, Relaxed);
        self.tx_pkts.store(s.tx_pkts, Relaxed);
        self.tx_bytes.store(s.tx_bytes, Relaxed);
        self.tx_dropped.store(s.tx_dropped, Relaxed);
        self.polls.store(s.polls, Relaxed);
        self.busy_polls.store(s.busy_polls, Relaxed);
        self.busy_cycles.store(s.busy_cycles, Relaxed);
    }

    /// A snapshot (fields are individually consistent, not a cross-field atomic view).
    pub fn snapshot(&self) -> WorkerSnapshot {
        WorkerSnapshot {
            rx_pkts: self.rx_pkts.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_pkts: self.tx_pkts.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            tx_dropped: self.tx_dropped.load(Relaxed),
            polls: self.polls.load(Relaxed),
            busy_polls: self.busy_polls.load(Relaxed),
            busy_cycles: self.busy_cycles.load(Relaxed),
        }
    }
}

/// Proxy-mode counters of one worker (same discipline as [`WorkerCounters`]: one writer, relaxed
/// atomics, own cache lines).
#[derive(Debug)]
#[repr(align(64))]
pub struct ProxyCounters {
    drops: [AtomicU64; tsmp_core::proxy::CAUSES],
    flows_created: AtomicU64,
    flows_closed: AtomicU64,
    flows_active: AtomicU64,
    flow_capacity: AtomicU64,
    flow_table_bytes: AtomicU64,
    engine_bytes: AtomicU64,
    handoffs_out: AtomicU64,
    handoffs_in: AtomicU64,
    handoff_ring_full: AtomicU64,
    arp_replies: AtomicU64,
    arp_requests: AtomicU64,
    icmp_echo_replies: AtomicU64,
    mss_clamped: AtomicU64,
    syn_resets: AtomicU64,
    snat_ports_free: AtomicU64,
    mempool_exhausted: AtomicU64,
    to_kernel: AtomicU64,
    from_kernel: AtomicU64,
    migration: [AtomicU64; MigrationCounters::N],
}

impl Default for ProxyCounters {
    fn default() -> Self {
        ProxyCounters {
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            flows_created: AtomicU64::new(0),
            flows_closed: AtomicU64::new(0),
            flows_active: AtomicU64::new(0),
            flow_capacity: AtomicU64::new(0),
            flow_table_bytes: AtomicU64::new(0),
            engine_bytes: AtomicU64::new(0),
            handoffs_out: AtomicU64::new(0),
            handoffs_in: AtomicU64::new(0),
            handoff_ring_full: AtomicU64::new(0),
            arp_replies: AtomicU64::new(0),
            arp_requests: AtomicU64::new(0),
            icmp_echo_replies: AtomicU64::new(0),
            mss_clamped: AtomicU64::new(0),
            syn_resets: AtomicU64::new(0),
            snat_ports_free: AtomicU64::new(0),
            mempool_exhausted: AtomicU64::new(0),
            to_kernel: AtomicU64::new(0),
            from_kernel: AtomicU64::new(0),
            migration: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A plain copy of [`ProxyCounters`].
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProxySnapshot {
    /// Drops by cause (only non-zero ones).
    pub drops: std::collections::BTreeMap<&'static str, u64>,
    /// Flows created.
    pub flows_created: u64,
    /// Flows removed.
    pub flows_closed: u64,
    /// Flows in the table.
    pub flows_active: u64,
    /// Flow-table capacity.
    pub flow_capacity: u64,
    /// Bytes of the flow table (and the engine arena's directory and the timer flags),
    /// allocated for the capacity at start.
    pub flow_table_bytes: u64,
    /// Bytes of the live flows' migration engines (the engines' own state; their cached
    /// segments are `cache_bytes`).
    pub engine_bytes: u64,
    /// Frames handed to another worker.
    pub handoffs_out: u64,
    /// Frames received from other workers.
    pub handoffs_in: u64,
    /// Frames dropped because a hand-off ring was full.
    pub handoff_ring_full: u64,
    /// ARP requests answered.
    pub arp_replies: u64,
    /// ARP requests sent.
    pub arp_requests: u64,
    /// Pings answered.
    pub icmp_echo_replies: u64,
    /// SYNs whose MSS was lowered.
    pub mss_clamped: u64,
    /// SYNs to a migration port nobody waits on, answered with an RST.
    pub syn_resets: u64,
    /// SNAT ports free in this worker's pool.
    pub snat_ports_free: u64,
    /// Frames the worker could not build for lack of mbufs.
    pub mempool_exhausted: u64,
    /// Frames passed to the kernel (exception path).
    pub to_kernel: u64,
    /// Frames the kernel sent out (exception path).
    pub from_kernel: u64,
    /// The migration engines.
    #[serde(flatten)]
    pub migration: MigrationCounters,
}

impl ProxyCounters {
    /// Publishes (owning worker only).
    pub fn publish(&self, s: &tsmp_core::proxy::ProxyStats, x: &DataplaneStats) {
        for (a, v) in self.drops.iter().zip(s.drops.iter()) {
            a.store(*v, Relaxed);
        }
        self.flows_created.store(s.flows_created, Relaxed);
        self.flows_closed.store(s.flows_closed, Relaxed);
        self.handoffs_out.store(s.handoffs, Relaxed);
        self.arp_replies.store(s.arp_replies, Relaxed);
        self.arp_requests.store(s.arp_requests, Relaxed);
        self.icmp_echo_replies.store(s.icmp_echo_replies, Relaxed);
        self.mss_clamped.store(s.mss_clamped, Relaxed);
        self.syn_resets.store(s.syn_resets, Relaxed);
        self.to_kernel.store(s.to_kernel, Relaxed);
        self.from_kernel.store(s.from_kernel, Relaxed);
        self.flows_active.store(x.flows_active, Relaxed);
        self.flow_capacity.store(x.flow_capacity, Relaxed);
        self.flow_table_bytes.store(x.flow_table_bytes, Relaxed);
        self.engine_bytes
            .store(x.migration.engines_active * x.engine_size, Relaxed);
        self.handoffs_in.store(x.handoffs_in, Relaxed);
        self.handoff_ring_full.store(x.handoff_ring_full, Relaxed);
        self.snat_ports_free.store(x.snat_ports_free, Relaxed);
        self.mempool_exhausted.store(x.mempool_exhausted, Relaxed);
        for (a, v) in self.migration.iter().zip(x.migration.to_array()) {
            a.store(v, Relaxed);
        }
    }

    /// A snapshot.
    pub fn snapshot(&self) -> ProxySnapshot {
        let names = tsmp_core::proxy::Cause::names();
        ProxySnapshot {
            drops: names
                .iter()
                .zip(self.drops.iter())
                .map(|(n, v)| (*n, v.load(Relaxed)))
                .filter(|(_, v)| *v > 0)
                .collect(),
            flows_created: self.flows_created.load(Relaxed),
            flows_closed: self.flows_closed.load(Relaxed),
            flows_active: self.flows_active.load(Relaxed),
            flow_capacity: self.flow_capacity.load(Relaxed),
            flow_table_bytes: self.flow_table_bytes.load(Relaxed),
            engine_bytes: self.engine_bytes.load(Relaxed),
            handoffs_out: self.handoffs_out.load(Relaxed),
            handoffs_in: self.handoffs_in.load(Relaxed),
            handoff_ring_full: self.handoff_ring_full.load(Relaxed),
            arp_replies: self.arp_replies.load(Relaxed),
            arp_requests: self.arp_requests.load(Relaxed),
            icmp_echo_replies: self.icmp_echo_replies.load(Relaxed),
            mss_clamped: self.mss_clamped.load(Relaxed),
            syn_resets: self.syn_resets.load(Relaxed),
            snat_ports_free: self.snat_ports_free.load(Relaxed),
            mempool_exhausted: self.mempool_exhausted.load(Relaxed),
            to_kernel: self.to_kernel.load(Relaxed),
            from_kernel: self.from_kernel.load(Relaxed),
            migration: MigrationCounters::from_array(
                self.migration.each_ref().map(|a| a.load(Relaxed)),
            ),
        }
    }
}

#[cfg(test)]
mod migration_counter_tests {
    use super::*;

    #[test]
    fn published_counters_come_back_field_for_field() {
        let m = MigrationCounters::from_array(std::array::from_fn(|i| i as u64 + 1));
        assert_eq!(m.engines_active, 1);
        assert_eq!(m.migrations_reset, 10);
        let c = ProxyCounters::default();
        let x = DataplaneStats {
            migration: m,
            ..DataplaneStats::default()
        };
        c.publish(&tsmp_core::proxy::ProxyStats::default(), &x);
        assert_eq!(c.snapshot().migration, m);
        let json = serde_json::to_value(c.snapshot()).unwrap();
        assert_eq!(
            json["cache_bufs_peak"], 4,
            "flattened into the worker's object: {json}"
        );
    }
}
