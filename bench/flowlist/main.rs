//! `tsmp-flowlist`: what listing a large flow table costs forwarding.
//!
//! A worker answers `tsmp-cli flows` in pages of at most `SCAN_SLOTS` table slots, between two
//! bursts; the time one page takes is the longest the worker stops forwarding for a listing.
//! This benchmark fills one worker's proxy core (sans-IO, no DPDK) with N flows through its
//! own SYN path, then measures, in the same run: the time the core takes to process a burst
//! of 32 frames of those flows (the reference), and the time of each page of a full listing.
//! It prints the stall per page in microseconds and in bursts' worth of forwarding, and the
//! flow setup rate of the fill as a by-product. Machines here are shared: read the ratios.
#![forbid(unsafe_code)]

use std::time::Instant;
use tsmp_core::proxy::FlowHasher;

use clap::Parser;
use tsmp::config::Config;
use tsmp_core::dataplane::view::{flow_page, FlowFilter, SCAN_SLOTS};
use tsmp_core::migrate::engine::Engine;
use tsmp_core::proxy::ProxyCore;
use tsmp_core::wire::build::{tcp_frame_len, write_tcp_frame, Endpoints, TcpFields};
use tsmp_core::wire::SeqNumber;

#[derive(Parser)]
#[command(
    name = "tsmp-flowlist",
    about = "Cost of listing a large flow table, per page, against forwarding"
)]
struct Args {
    /// Flows in the table.
    #[arg(long, default_value_t = 1_000_000)]
    flows: u32,
    /// Bursts of 32 frames timed for the reference.
    #[arg(long, default_value_t = 20_000)]
    bursts: u32,
}

const PORT_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 0xa0], [2, 0, 0, 0, 0, 0xa1]];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc1];

/// The i-th client's SYN to the VIP: 198.18.0.0/15 host addresses, ports 1024..65535.
fn syn(i: u32, buf: &mut [u8]) -> usize {
    let host = 1 + i / 60_000;
    let ep = Endpoints {
        src_mac: CLIENT_MAC,
        dst_mac: PORT_MACS[0],
        src: [198, 18, (host >> 8) as u8, (host & 0xff) as u8],
        dst: [198, 18, 0, 10],
        sport: 1024 + (i % 60_000) as u16,
        dport: 80,
    };
    let f = TcpFields {
        seq: SeqNumber(i.wrapping_mul(2_654_435_761)),
        ack: SeqNumber(0),
        flags: 0x02,
        window: 64240,
        mss: Some(1460),
        wscale: Some(7),
        sack_perm: true,
        ts: None,
    };
    write_tcp_frame(buf, &ep, &f, &[]).unwrap_or(0)
}

/// The `pct`-th percentile of sorted values.
fn percentile(sorted: &[f64], pct: usize) -> f64 {
    sorted
        .get((sorted.len().saturating_sub(1)) * pct / 100)
        .copied()
        .unwrap_or(0.0)
}

fn main() -> Result<(), String> {
    let a = Args::parse();
    // One worker, a table for all flows, enough SNAT addresses (64,512 ports each).
    let snat: Vec<String> = (0..a.flows / 64_000 + 1)
        .map(|k| format!("\"198.19.{}.{}\"", 1 + k / 200, 10 + k % 200))
        .collect();
    let text = include_str!("../../dpdk-config/default.toml")
        .replace(
            "max_flows_per_worker = 65536",
            &format!("max_flows_per_worker = {}", a.flows),
        )
        .replace(
            "addresses = [\"198.19.0.100\"]",
            &format!("addresses = [{}]", snat.join(", ")),
        );
    let cfg = Config::from_toml(&text, "flowlist").map_err(|e| e.to_string())?;
    let settings = cfg.proxy_settings(&PORT_MACS)?;
    let mut core = ProxyCore::new(&settings, 0, 1, FlowHasher::random(), 0, None);
    let engines: tsmp_core::proxy::arena::Arena<Engine<Vec<u8>>> =
        tsmp_core::proxy::arena::Arena::new(0, None);

    let len = tcp_frame_len(
        &TcpFields {
            seq: SeqNumber(0),
            ack: SeqNumber(0),
            flags: 2,
            window: 0,
            mss: Some(1460),
            wscale: Some(7),
            sack_perm: true,
            ts: None,
        },
        0,
    );
    let mut buf = vec![0u8; len];
    let t = Instant::now();
    for i in 0..a.flows {
        syn(i, &mut buf);
        let _ = core.process(0, &mut buf);
    }
    let fill = t.elapsed().as_secs_f64();
    let live = core.flows.len();
    if live < a.flows as usize {
        return Err(format!("only {live} of {} flows were created", a.flows));
    }

    // Reference: bursts of 32 frames of existing flows (retransmitted SYNs: lookup, state,
    // rewrite), frames built beforehand.
    let frames: Vec<Vec<u8>> = (0..32 * 64)
        .map(|k| {
            let mut f = vec![0u8; len];
            syn((k * 7919) % a.flows, &mut f);
            f
        })
        .collect();
    let mut work = frames.clone();
    let t = Instant::now();
    for b in 0..a.bursts {
        let base = (b as usize % 64) * 32;
        for k in 0..32 {
            work[base + k].copy_from_slice(&frames[base + k]);
            let _ = core.process(0, &mut work[base + k]);
        }
    }
    let burst_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(a.bursts);

    // The listing, page by page, as a worker answers it.
    let mut pages = Vec::new();
    let (mut cursor, mut listed) = (Some(0), 0usize);
    let t = Instant::now();
    while let Some(c) = cursor {
        let p0 = Instant::now();
        let page = flow_page(&core, &engines, 0, &FlowFilter::default(), c);
        pages.push(p0.elapsed().as_secs_f64() * 1e6);
        listed += page.flows.len();
        cursor = page.next;
    }
    let total = t.elapsed().as_secs_f64();
    let mut sorted = pages.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&sorted, 50),
        percentile(&sorted, 99),
        sorted.last().copied().unwrap_or(0.0),
    );
    println!(
        "flows {live} (filled at {:.2} M SYNs/s through the core), pages of {SCAN_SLOTS} slots: {}",
        f64::from(a.flows) / fill / 1e6,
        pages.len()
    );
    println!("reference: one burst of 32 frames takes {burst_us:.2} us");
    println!(
        "listing all {listed} flows: {total:.2} s in all; per page p50 {p50:.0} us, p99 {p99:.0} us, max {max:.0} us"
    );
    println!(
        "stall per page: p50 {:.0}x, max {:.0}x one burst's processing time",
        p50 / burst_us,
        max / burst_us
    );
    if listed != live {
        return Err(format!("listed {listed} of {live} flows"));
    }
    Ok(())
}
