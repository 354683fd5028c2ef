//! TSMP's sans-IO data plane: everything a poll-mode worker does between rx and tx that is not
//! DPDK. It never reads a clock (time is passed in), never opens a socket, never allocates on the
//! per-packet path after construction, and never imports DPDK: the same code runs in the
//! appliance's worker (with mbufs), in the deterministic simulations and in unit tests (with
//! `Vec<u8>`).
//!
//! Layers, bottom up; a module may use the ones above it in this list, never the ones below:
//! - [`buf`]: the buffer traits ([`buf::SharedBuf`], [`buf::FrameBuf`]) the other layers and the
//!   DPDK layer agree on.
//! - [`wire`]: zero-copy views of Ethernet/ARP/IPv4/ICMP/TCP frames, in-place rewrites with
//!   incremental checksums, sequence-number arithmetic, segment building. Never panics on any
//!   input after its length checks.
//! - [`refusal`]: why a migration request or a step of one is refused, one type for every layer.
//! - [`proxy`]: the full NAT's per-worker logic: classification, flow table (keyed index, slab,
//!   timing wheel), tracking, ARP/ICMP, migration ports and device legs.
//! - [`migrate`]: the per-flow migration engine (transient pause, resumption, splice) and its
//!   parts (caches, freeze, sender, translations).
//! - [`dataplane`]: [`dataplane::Dataplane`], the proxy core and its flows' engines joined: what a
//!   frame does, what the engines originate, timers, expiry and the slow path's requests.
//!
//! Everything here forbids `unsafe`.
#![forbid(unsafe_code)]

pub mod buf;
pub mod dataplane;
pub mod migrate;
pub mod proxy;
pub mod refusal;
pub mod wire;
