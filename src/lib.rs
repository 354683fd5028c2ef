//! TSMP appliance: a DPDK TCP splice proxy that moves live TCP connections between a user's
//! devices without the server noticing.
//!
//! Layers, each a module that owns one thing and may not reach into the others' state:
//! - [`config`]: the TOML configuration and its validation (no DPDK).
//! - [`stats`]: per-worker counters, written by one worker, read lock-free by the slow path.
//! - `dpdk` (feature `dpdk`): the one thin, audited layer over DPDK; the only `unsafe` code
//!   outside the `dpdk-sys` binding crate.
//! - `worker` (feature `dpdk`): the poll-mode loop in DPDK l3fwd's shape; a driver of the
//!   sans-IO logic, it only moves mbufs.
#![deny(unsafe_code)]

pub mod agents;
pub mod config;
pub mod control;
pub mod metrics;
pub mod migrate;
pub mod msg;
pub mod names;
pub mod proxy;
pub mod stats;
pub mod wire;

#[cfg(feature = "dpdk")]
pub mod app;
#[cfg(feature = "dpdk")]
pub mod dpdk;
#[cfg(feature = "dpdk")]
pub mod worker;
