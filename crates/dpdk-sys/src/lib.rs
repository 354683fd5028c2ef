//! Raw FFI bindings to the system DPDK (Debian's 22.11 LTS), generated at build time by bindgen.
//!
//! DPDK's `static inline` fast-path functions (`rte_eth_rx_burst`, `rte_eth_tx_burst`,
//! `rte_pktmbuf_alloc`, `rte_pktmbuf_free`, `rte_mbuf_refcnt_update`, `rte_pktmbuf_clone`,
//! `rte_prefetch0`, `rte_lcore_id`, `rte_rdtsc`, ...) are exported through generated C wrappers
//! with the same names, so they are called like any other function here.
//!
//! Nothing in this crate is safe to call without reading DPDK's documentation; the appliance's
//! `tsmp_dpdk` module is the one safe layer over it.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all, clippy::pedantic, clippy::undocumented_unsafe_blocks)]
#![allow(unsafe_op_in_unsafe_fn, missing_debug_implementations)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// Pointer to the start of an mbuf's data (DPDK's `rte_pktmbuf_mtod` macro).
///
/// # Safety
/// `m` must point to a valid, initialised `rte_mbuf`.
#[inline(always)]
pub unsafe fn rte_pktmbuf_mtod(m: *const rte_mbuf) -> *mut u8 {
    ((*m).buf_addr as *mut u8).add((*m).data_off as usize)
}

/// `rte_prefetch0`: asks the CPU to bring the cache line at `p` into all cache levels. A hint
/// only: it never faults, whatever `p` is, so it is safe to call with any address.
#[inline(always)]
pub fn prefetch0(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is part of SSE, which every x86_64 CPU has; a prefetch does not
    // dereference `p` architecturally (no fault, no read visible to the program).
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `rte_rdtsc`, inlined: the time-stamp counter. Reading it has no preconditions.
#[inline(always)]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC exists on every x86_64 CPU and only reads the counter.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the C wrapper of DPDK's rte_rdtsc has no preconditions.
    unsafe {
        rte_rdtsc()
    }
}
