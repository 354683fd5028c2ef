//! The migration engine, sans-IO (`#![forbid(unsafe_code)]`, no clock reads, no DPDK): the
//! draft's section 4.3, transient pause and resumption, made exact. It is generic over the
//! buffer type, so it holds DPDK mbufs in the appliance ([`crate::dpdk::Mbuf`] is an
//! [`engine::SharedBuf`]: caching a forwarded segment raises its reference count, the payload is
//! never copied) and plain byte vectors in tests.
//!
//! - [`engine`]: the per-flow state machine (`Handshake -> Forwarding -> Paused -> Resuming ->
//!   Forwarding`, or `Closed(reason)`), its inputs (segments from the server or a device, a
//!   migration request, time), outputs (the verdict for each frame, segments the proxy
//!   originates, events, the next deadline), refusals and failure paths. Its module docs hold
//!   the state diagram and the invariants.
//! - [`cache`]: the zero-copy, bounded segment cache the rolling caches (server data forwarded
//!   and not yet acknowledged by the device; client data not yet acknowledged by the server)
//!   and the pause cache are made of, charged to a per-worker [`cache::Budget`];
//! - [`freeze`]: the server-facing side of the transient pause: for each segment the server
//!   sends while the flow is frozen, what to cache and which zero-window ACK to answer with;
//! - [`sender`]: the resumption sender toward the new device (slow start, AIMD, NewReno fast
//!   retransmit and recovery, RFC 6298 RTO, receiver window and MSS respected, persist probes);
//! - [`splice`]: the translations after a migration (sequence offsets, window re-encoding that
//!   never moves the edge left, TSval/TSecr shifts that keep PAWS, SACK translation/stripping,
//!   an ACK floor at the splice point).
//!
//! Proof: `tests/sim_migrate.rs` runs the engine between smoltcp stacks over seeded lossy links
//! (every scenario of the design, plus a randomized sweep), and `tests/sim_migrate_mbuf.rs` runs
//! the same world with every frame in a DPDK mbuf.
#![forbid(unsafe_code)]

pub mod cache;
pub mod engine;
pub mod freeze;
pub mod sender;
pub mod splice;
