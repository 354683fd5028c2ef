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
//! Next: the per-flow state machine that drives them, planned as follows (quinn-style: inputs
//! `on_server(now, seg, buf)`, `on_old_device(..)`, `on_new_device(..)`, `on_timeout(now)`;
//! outputs drained with `poll_transmit(now)`; deadline from `poll_timeout()`):
//!
//! ```text
//!            MFR accepted, rolling cache contiguous from the old device's ACK to S.NXT
//!  Normal ─────────────────────────────────────────────────────────────────────► Paused
//!  (rolling cache: S->C segments              Freeze::start: ACK all in flight, window 0;
//!   kept until the device ACKs them)          old device's ACKs trim the cache, its FIN/RST
//!     ▲                                        are swallowed; late S segments -> Freeze
//!     │ all replayed bytes ACKed:                  │ SYN from the new device on the migration
//!     │ window update to S from the device's       │ port (address checked): SYN-ACK with
//!     │ last ACK; Splice installed                 │ ISN = resume - 1, S's window scale, MSS,
//!     │                                            │ SACK, TS seeded with S's TSval
//!  Spliced ◄───────────────────────────────── Resuming (ReplaySender over the cache)
//!
//!  Failed(reason) from any state: deadline before the new device connects (window reopened
//!  toward the old device if it is still there and the cache flushed to it, else RST both ends),
//!  server RST, cache full, the new device resets during replay, a second MFR.
//! ```
//!
//! The cache lives inside the states that need it (`Paused`, `Resuming`), so it cannot outlive
//! them; `tests/sim/` (the deterministic harness with smoltcp peers) is where the issue's
//! scenarios will run against it.
#![forbid(unsafe_code)]

pub mod cache;
pub mod engine;
pub mod freeze;
pub mod sender;
pub mod splice;
