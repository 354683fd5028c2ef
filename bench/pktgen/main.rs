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
//! - `tcp`: one stateful run through `tsmp-proxy` in proxy mode (`bench-proxy-memif.toml`):
//!   the generator plays the clients on A and the backend on B for N TCP flows (handshakes
//!   through the VIP, data segments with latency stamps, ACKs), and reports set-up rate,
//!   forwarding rate, loss, latency percentiles and its own checks (see `tcpgen.rs`).
//! - `bench`: the side-by-side runner: testpmd io and 5tswap against the proxy's established
//!   flows at 64 B (and Open vSwitch's DPDK datapath doing the same NAT with conntrack, when
//!   installed), the proxy at 1500 B and IMIX, rate vs flow-table size (1K..4M), set-up rate,
//!   memory per flow, forwarding while 1% and 10% of the flows migrate, overload; a table with
//!   ratios and an SVG plot.
//! - `gen`: the generator/sink process itself (started by the others); with `--port-a` and
//!   `--port-b` it runs alone on a hardware testbed's NICs against the appliance (the stateful
//!   scenarios, migrations included, through the appliance's control socket).
//!
//! Shutdown follows the order memif needs: the generator freezes (stops polling), the forwarder
//! stops and closes its ports, then the generator exits.

mod frames;
mod harness;
mod ovs;
mod stateful;
mod tcpgen;

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
    /// One stateful TCP run through tsmp-proxy in proxy mode.
    Tcp(stateful::TcpArgs),
    /// The side-by-side benchmark (testpmd io/5tswap vs the proxy; sizes; flows).
    Bench(stateful::BenchArgs),
    /// The generator/sink process: started by the other subcommands on memif, or alone on a
    /// testbed's NICs (`--port-a`/`--port-b`, e.g. `--mode tcp --migrate-percent 10`).
    Gen(harness::GenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Compare(a) => harness::compare(&a),
        Cmd::Verify(a) => harness::verify(&a),
        Cmd::Tcp(a) => stateful::tcp(&a),
        Cmd::Bench(a) => stateful::bench(&a),
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
