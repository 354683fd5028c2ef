//! TSMP's protocol pieces shared by the appliance and the tools (agent, CLI, naming server):
//! - [`admission`]: the MFR checks as a pure function (message, sender, time, directory,
//!   nonce store), one unit test per refusal;
//! - [`msg`]: the signed control messages (MFR, MTR, statuses) and their framing;
//! - [`names`]: the naming service's client (DNS queries and TSIG-signed updates) and its
//!   names (`device.user.zone`);
//! - [`control`]: the operator socket's vocabulary (flow states, listing orders).
//!
//! It does no data-plane work and never links DPDK; it may open sockets (the naming client).
#![deny(unsafe_code)]

pub mod admission;
pub mod msg;
pub mod names;

/// The operator socket's vocabulary that the CLI offers as choices.
pub mod control {
    pub use tsmp_core::dataplane::view::STATES;

    /// The orders of a `flows` listing.
    pub const SORTS: [&str; 6] = ["id", "age", "client", "server", "cache", "state"];
}
