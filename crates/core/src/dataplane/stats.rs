//! The data plane's own counters (engines, caches, migrations, hand-offs), beside the proxy
//! core's [`crate::proxy::ProxyStats`]. Plain values owned by one worker; the appliance publishes
//! them as atomics for the slow path.

/// What the data plane counts besides the proxy core's own [`crate::proxy::ProxyStats`]
/// (published by the driver with them).
#[derive(Debug, Default, Clone, Copy)]
pub struct DataplaneStats {
    /// Flows in the table.
    pub flows_active: u64,
    /// Flow-table capacity.
    pub flow_capacity: u64,
    /// Flow table, engine arena directory and timer flags, bytes.
    pub flow_table_bytes: u64,
    /// Bytes of one migration engine (`engine_bytes` = this x live engines).
    pub engine_size: u64,
    /// Frames received from other workers.
    pub handoffs_in: u64,
    /// Hand-off ring full.
    pub handoff_ring_full: u64,
    /// SNAT ports free.
    pub snat_ports_free: u64,
    /// Mbuf allocation failures.
    pub mempool_exhausted: u64,
    /// The migration engines.
    pub migration: MigrationCounters,
}

/// The migration engines' counters of one worker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MigrationCounters {
    /// Flows with a migration engine.
    pub engines_active: u64,
    /// Payload bytes the segment caches hold (rolling and pause caches).
    pub cache_bytes: u64,
    /// Buffers (mbufs) the segment caches hold.
    pub cache_bufs: u64,
    /// The most buffers the caches held at once (sampled between bursts).
    pub cache_bufs_peak: u64,
    /// Segments a rolling cache could not hold (worker or flow limit).
    pub cache_overflow: u64,
    /// Segments the engines originated (ACKs, replay, handshakes).
    pub engine_emitted: u64,
    /// Migrations started (the server frozen).
    pub migrations_started: u64,
    /// Migrations completed (a new device holds the flow).
    pub migrations_done: u64,
    /// Migrations cancelled (the flow went back to the old device).
    pub migrations_cancelled: u64,
    /// Migrations that ended in a reset of both ends.
    pub migrations_reset: u64,
    /// Segments an engine asked for that could not be built from its cache (never sent short).
    pub emit_failed: u64,
    /// Segments refused as blind (RFC 5961: a RST, SYN, data or ACK outside what the ends
    /// sent and accept); the flow is unchanged.
    pub blind_dropped: u64,
    /// Challenge ACKs the proxy sent on an end's behalf (to an in-window RST or a SYN on a live
    /// connection; RFC 5961 3.2, 4.2), instead of forwarding the segment.
    pub challenged: u64,
    /// Idle expiries put off because the flow was migrating (the migration's deadlines bound
    /// it; the flow expires normally after).
    pub expiry_held: u64,
    /// Migration ports this worker can still hand out (a gauge).
    pub migration_ports_free: u64,
}

impl MigrationCounters {
    /// Number of counters.
    pub const N: usize = 15;

    /// The counters in declaration order (for publication as atomics).
    pub fn to_array(self) -> [u64; Self::N] {
        [
            self.engines_active,
            self.cache_bytes,
            self.cache_bufs,
            self.cache_bufs_peak,
            self.cache_overflow,
            self.engine_emitted,
            self.migrations_started,
            self.migrations_done,
            self.migrations_cancelled,
            self.migrations_reset,
            self.emit_failed,
            self.blind_dropped,
            self.challenged,
            self.expiry_held,
            self.migration_ports_free,
        ]
    }

    /// The inverse of [`MigrationCounters::to_array`].
    pub fn from_array(a: [u64; Self::N]) -> Self {
        let [engines_active, cache_bytes, cache_bufs, cache_bufs_peak, cache_overflow, engine_emitted, migrations_started, migrations_done, migrations_cancelled, migrations_reset, emit_failed, blind_dropped, challenged, expiry_held, migration_ports_free] =
            a;
        MigrationCounters {
            engines_active,
            cache_bytes,
            cache_bufs,
            cache_bufs_peak,
            cache_overflow,
            engine_emitted,
            migrations_started,
            migrations_done,
            migrations_cancelled,
            migrations_reset,
            emit_failed,
            blind_dropped,
            challenged,
            expiry_held,
            migration_ports_free,
        }
    }
}
