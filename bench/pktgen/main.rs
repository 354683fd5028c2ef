//! `tsmp-pktgen`: traffic generator, sink and benchmark harness on the project's DPDK layer.
//!
//! The harness puts a forwarder under test between two memif ports of a generator process:
//!
//! ```text
//!   tsmp-pktgen gen (lcore 0)                 forwarder (worker on lcore 1)
//!   port A: memif server  a.sock  <------>  memif client  (port 0)
//!   port B: memif server  b.sock  <------>  memif client  (port 1)
//! ```
//!
//! Subcommands:
//! - `compare`: the pass-through benchmark: `dpdk-testpmd --forward-mode=io` and `tsmp-proxy`
//!   in pass-through mode, interleaved over several rounds, at 64 B and 1500 B; prints a table
//!   with Mpps, busy cycles per packet and the ratio to testpmd measured in the same run.
//! - `verify`: sends frames of varying sizes both ways through `tsmp-proxy` and checks that each
//!   arrives exactly once with every byte intact (used by the test suite).
//! - `gen`: the generator/sink process itself (started by the two above).
//!
//! Shutdown follows the order memif needs: the generator freezes (stops polling), the forwarder
//! stops and closes its ports, then the generator exits.

mod frames;
mod harness;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tsmp-pktgen",
    about = "Traffic generator and benchmark harness for the TSMP appliance"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Pass-through forwarding rate of tsmp-proxy as a ratio to dpdk-testpmd io, same harness.
    Compare(harness::CompareArgs),
    /// Check that frames cross tsmp-proxy intact, both ways.
    Verify(harness::VerifyArgs),
    /// The generator/sink process (internal; started by `compare` and `verify`).
    Gen(harness::GenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Compare(a) => harness::compare(&a),
        Cmd::Verify(a) => harness::verify(&a),
        Cmd::Gen(a) => harness::gen(&a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsmp-pktgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}
