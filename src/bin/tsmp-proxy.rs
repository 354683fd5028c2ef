//! `tsmp-proxy`: the TSMP appliance.
//!
//! ```text
//! tsmp-proxy [--config FILE] [--check] [--stats-json FILE] [--run-for SECONDS]
//! ```
//! Without `--config` it runs the embedded default (`dpdk-config/default.toml`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tsmp::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "tsmp-proxy",
    version,
    about = "TSMP appliance: DPDK TCP splice proxy with live connection migration"
)]
struct Args {
    /// Configuration file (TOML); the embedded default when omitted.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit without starting DPDK.
    #[arg(long)]
    check: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Write final counters as JSON to this file at exit.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    run_for: Option<f64>,
    /// Print the public half of the proxy's key (`[control] key`, created when missing) for
    /// the agents' `--proxy-key`, and exit.
    #[arg(long)]
    public_key: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", tsmp::config::EMBEDDED_DEFAULT);
        return ExitCode::SUCCESS;
    }
    let cfg = match &args.config {
        Some(p) => Config::load(p),
        None => Config::embedded(),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tsmp-proxy: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.public_key {
        return match tsmp_proto::msg::load_or_create_key(&cfg.control.key) {
            Ok(k) => {
                println!("{}", tsmp_proto::msg::public_b64(&k));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tsmp-proxy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check {
        println!(
            "configuration OK: {} port(s), {} worker(s), mode {:?}, EAL args: {}",
            cfg.ports.len(),
            cfg.workers.len(),
            cfg.dataplane.mode,
            cfg.eal_args().join(" ")
        );
        return ExitCode::SUCCESS;
    }
    let run_for = match args.run_for {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            eprintln!("tsmp-proxy: --run-for takes a positive number of seconds, not {s}");
            return ExitCode::from(2);
        }
        s => s.map(Duration::from_secs_f64),
    };
    let opts = tsmp::app::RunOptions {
        run_for,
        stats_json: args.stats_json,
    };
    match tsmp::app::run(&cfg, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsmp-proxy: error: {e}");
            ExitCode::FAILURE
        }
    }
}
