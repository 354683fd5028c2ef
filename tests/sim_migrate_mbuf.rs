//! The migration simulation over DPDK mbufs: the same world as `sim_migrate.rs`, with every
//! frame the engine receives in an mbuf from a real mempool (EAL without hugepages). The engine
//! keeps the mbufs it caches (a shared reference, no copy: its buffer type is the mbuf) and the
//! pool gets every one of them back when the flows are over.
#![cfg(feature = "dpdk")]

mod common;
#[path = "../crates/core/tests/sim/mod.rs"]
mod sim;

use std::cell::Cell;

use sim::migration::{migrated, scenario, World};
use sim::Link;
use tsmp_dpdk::{Eal, Mbuf, Mempool};

#[test]
fn migrations_cache_mbufs_without_copies_and_return_them_all() {
    common::require_root();
    let args: Vec<String> = [
        "tsmp-sim",
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--no-telemetry",
        "-l",
        "0",
        "--log-level",
        "lib.eal:error",
        "--file-prefix",
        &format!("tsmp-sim-mbuf-{}", std::process::id()),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let eal = Eal::init(&args).expect("EAL starts without hugepages");
    let pool = Mempool::new(&eal, "sim-mbufs", 16_383, 256, 2048 + 128).expect("mempool");

    let mut chat = scenario("mbuf-chat-lossy", 1_000);
    chat.client_bytes = 50_000;
    chat.phone.link.loss = 10;
    chat.pc.link.loss = 10;
    let mut gone = scenario("mbuf-old-gone", 1_001);
    gone.cut_old = true;
    gone.client_bytes = 100_000;
    gone.server_link = Link::new(15_000, 1_000_000_000, 0);
    let mut hops = scenario("mbuf-back-and-forth", 1_002);
    hops.hops = 4;
    hops.total = 900_000;
    hops.migrate_after = 80_000;

    for sc in [chat, gone, hops] {
        let base = pool.in_use();
        let peak = Cell::new(0u32);
        {
            let make = |f: &[u8]| -> Mbuf {
                let mut m = pool.alloc().expect("the pool holds the whole simulation");
                assert!(m.set_len(f.len()), "a frame fits one mbuf");
                m.data_mut().copy_from_slice(f);
                peak.set(peak.get().max(pool.in_use() - base));
                m
            };
            let mut w = World::with_buffers(sc.clone(), Box::new(make));
            w.run();
            w.verify();
            migrated(&w);
        }
        assert!(
            peak.get() > 8,
            "[{}] the caches held mbufs (peak {})",
            sc.name,
            peak.get()
        );
        assert_eq!(
            pool.in_use(),
            base,
            "[{}] every mbuf went back to the pool",
            sc.name
        );
    }
}
