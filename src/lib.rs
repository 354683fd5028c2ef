//! TSMP appliance: a DPDK TCP splice proxy that moves live TCP connections between a user's
//! devices without the server noticing. This crate is the appliance around the sans-IO data
//! plane (`tsmp-core`): configuration, start-up, the poll-mode driver, counters, the operator's
//! control socket, the agents' port and metrics. It never parses or rewrites a packet itself.
//!
//! Modules, each owning one thing and not reaching into the others' state:
//! - [`config`]: the TOML configuration and its validation (no DPDK).
//! - [`stats`]: per-worker counters, written by one worker, read lock-free by the slow path.
//! - [`control`]: the operator's Unix socket and the commands the slow path sends workers.
//! - [`agents`]: the agents' port (MFR in, MTR out) and the naming service lookups.
//! - [`metrics`]: the Prometheus text endpoint.
//! - `app` (feature `dpdk`): start-up (EAL, ports, workers) and the slow-path loop.
//! - `worker` (feature `dpdk`): the poll-mode loop in DPDK l3fwd's shape; a driver of
//!   `tsmp_core::dataplane::Dataplane`, it only moves mbufs.
#![deny(unsafe_code)]

pub mod agents;
pub mod config;
pub mod control;
pub mod metrics;
pub mod stats;

#[cfg(feature = "dpdk")]
pub mod app;
#[cfg(feature = "dpdk")]
pub mod worker;
