//! The migration engine, sans-IO (`#![forbid(unsafe_code)]`, no clock reads, no DPDK): the
//! draft's section 4.3, transient pause and resumption, made exact. It is generic over the
//! buffer type, so it holds DPDK mbufs in the appliance and plain byte vectors in tests.
//!
//! Built so far:
//! - [`cache`]: the zero-copy, bounded segment cache that both the rolling cache (segments
//!   forwarded to the old device and not yet acknowledged) and the pause cache (segments the
//!   server sends while frozen) are made of;
//! - [`freeze`]: the server-facing side of the transient pause: for each segment the server
//!   sends while the flow is frozen, what to cache and which zero-window ACK to answer with;
//! - [`sender`]: the resumption sender toward the new device (slow start, AIMD, NewReno fast
//!   retransmit and recovery, RFC 6298 RTO, receiver window and MSS respected, persist probes);
//! - [`splice`]: the translations after a migration (sequence offsets, window re-encoding that
//!   never moves the edge left, TSval/TSecr shifts that keep PAWS, SACK translation/stripping).
//!
//! The per-flow state machine that drives them (normal -> paused -> resuming -> spliced), its
//! wiring into the proxy core, the proxy's own handshake toward the new device, and the
//! deterministic simulation against smoltcp peers are the next steps.
#![forbid(unsafe_code)]

pub mod cache;
pub mod freeze;
pub mod sender;
pub mod splice;
