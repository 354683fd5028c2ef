//! Per-worker counters.
//!
//! Invariants: each [`WorkerCounters`] is written by exactly one worker (relaxed stores of values
//! it accumulates locally, published between bursts) and read by anyone with relaxed loads; it
//! sits on its own cache lines so that readers never cause false sharing with another worker.
//! Counters only grow; rates are computed by readers from two snapshots.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

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
