//! The thin safe layer over DPDK: the only module of the appliance allowed to use `unsafe`.
//!
//! What it owns and promises:
//! - [`Eal`] is initialised at most once per process and cleaned up on drop, after everything
//!   created from it: ports and mempools borrow it, so the borrow checker orders their drops.
//! - [`Mempool`] outlives every [`Mbuf`] allocated from it: [`Port`] and the worker queues borrow
//!   the pool, and workers run inside [`Eal::run`], which joins them before returning.
//! - [`Mbuf`] owns exactly one reference to an `rte_mbuf`: dropping it frees it, handing it to
//!   [`TxQueue`] moves the ownership to the driver (or back to us, then freed and counted, if the
//!   driver's ring is full). There is no path that frees an mbuf twice.
//! - [`RxQueue`] and [`TxQueue`] are handed out once per (port, queue) and are `Send` but not
//!   `Sync`: one lcore polls each queue, as DPDK requires.
//! - Every closure DPDK runs on an lcore is wrapped in `catch_unwind`; a panicking worker is
//!   reported as [`Error::WorkerPanicked`] instead of unwinding into C.
//!
//! Errors name the fix: no hugepages mounted, an lcore that does not exist, a device that could
//! not be probed.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};

use dpdk_sys as sys;

/// Errors from the DPDK layer; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// EAL was already initialised in this process.
    #[error("DPDK's EAL can be initialised only once per process")]
    AlreadyInitialised,
    /// Hugepages are requested but unusable.
    #[error(
        "no usable hugepages ({0}). Reserve and mount them as root:\n  \
         mkdir -p /dev/hugepages; mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages\n  \
         echo 512 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages\n\
         or set `hugepages = false` under [eal] to run without them (slower)"
    )]
    NoHugepages(String),
    /// A configured lcore is not a CPU of this machine.
    #[error("CPU {lcore} is not online on this machine (online: {online}); change eal.main_lcore, or the worker's lcore (or its `cpu` when set)")]
    LcoreMissing {
        /// Requested lcore.
        lcore: u32,
        /// The kernel's list of online CPUs.
        online: String,
    },
    /// `rte_eal_init` failed.
    #[error("EAL initialisation failed: {0} (EAL's own log lines above say more; run as root)")]
    EalInit(String),
    /// A virtual device could not be created.
    #[error("virtual device `{devargs}` could not be probed: {reason}{hint}")]
    VdevProbe {
        /// The device arguments.
        devargs: String,
        /// DPDK's error.
        reason: String,
        /// A hint for the usual cause.
        hint: &'static str,
    },
    /// A configured PCI device has no DPDK port.
    #[error("PCI device {0} has no DPDK port: bind it to vfio-pci or uio_pci_generic first (`dpdk-devbind.py --status` shows the bindings)")]
    PciMissing(String),
    /// An ethdev call failed.
    #[error("port {port} ({name}): {what} failed: {reason}")]
    Port {
        /// Port id.
        port: u16,
        /// Port name.
        name: String,
        /// The operation.
        what: &'static str,
        /// DPDK's error.
        reason: String,
    },
    /// A port cannot do what the config asks.
    #[error("port {port} ({name}): {problem}")]
    PortCapability {
        /// Port id.
        port: u16,
        /// Port name.
        name: String,
        /// What is missing, and the fix.
        problem: String,
    },
    /// Mempool creation failed.
    #[error("mempool `{name}` ({n} mbufs) could not be created: {reason}; lower mempool.mbufs or raise eal.memory_mb")]
    Mempool {
        /// Pool name.
        name: String,
        /// Requested size.
        n: u32,
        /// DPDK's error.
        reason: String,
    },
    /// A queue was requested twice.
    #[error("port {port} {kind} queue {queue} is already owned by a worker")]
    QueueTaken {
        /// Port id.
        port: u16,
        /// "rx" or "tx".
        kind: &'static str,
        /// Queue id.
        queue: u16,
    },
    /// Launching a worker failed.
    #[error("cannot launch a worker on lcore {0}: it is busy or not enabled in EAL")]
    Launch(u32),
    /// A worker panicked; the panic message was printed on stderr.
    #[error("the worker on lcore {0} panicked (its message is above)")]
    WorkerPanicked(u32),
    /// DPDK refused a telemetry command name.
    #[error("telemetry command `{0}` could not be registered (name too long, bad characters, or registered twice)")]
    Telemetry(String),
    /// `rte_pdump_init` failed.
    #[error("packet capture (rte_pdump) could not be initialised: {0}")]
    Pdump(String),
}

/// DPDK's description of an error number.
fn strerror(errnum: c_int) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string
    // for any errnum; we copy it out at once.
    unsafe { CStr::from_ptr(sys::rte_strerror(errnum.abs())) }
        .to_string_lossy()
        .into_owned()
}

/// The calling thread's `rte_errno`, as text.
fn last_error() -> String {
    // SAFETY: reads the thread-local rte_errno through the C shim; no preconditions.
    strerror(unsafe { sys::tsmp_rte_errno() })
}

/// A DPDK port id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);
/// A queue index on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u16);
/// An EAL logical core id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LcoreId(pub u32);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl fmt::Display for LcoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

static EAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// The initialised Environment Abstraction Layer. Dropping it calls `rte_eal_cleanup`.
#[derive(Debug)]
pub struct Eal {
    _not_send: PhantomData<*mut ()>,
}

/// The kernel's list of online CPUs (`0-1`), and whether `cpu` is in it.
fn cpu_online(cpu: u32) -> (bool, String) {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let present = online.split(',').any(|r| match r.split_once('-') {
        Some((a, b)) => {
            matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(a), Ok(b)) if (a..=b).contains(&cpu))
        }
        None => r.parse::<u32>() == Ok(cpu),
    });
    (present, online)
}

/// Checks that 2 MiB or 1 GiB hugepages are mounted and some are free.
fn check_hugepages() -> Result<(), Error> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
    {
        return Err(Error::NoHugepages("no hugetlbfs is mounted".into()));
    }
    let free: u64 = ["hugepages-2048kB", "hugepages-1048576kB"]
        .iter()
        .filter_map(|d| {
            std::fs::read_to_string(format!("/sys/kernel/mm/hugepages/{d}/free_hugepages")).ok()
        })
        .filter_map(|s| s.trim().parse::<u64>().ok())
        .sum();
    if free == 0 {
        return Err(Error::NoHugepages(
            "none are reserved or all are in use".into(),
        ));
    }
    Ok(())
}

impl Eal {
    /// Initialises EAL with `args` (without `argv[0]`).
    ///
    /// Before calling into DPDK it checks what DPDK reports badly: that every lcore in `-l` is an
    /// online CPU and, unless `--no-huge` is given, that hugepages are mounted and free.
    ///
    /// # Errors
    /// See [`Error`]; EAL's own log lines on stderr carry the details of an `EalInit` error.
    pub fn init(args: &[String]) -> Result<Eal, Error> {
        if let Some(i) = args.iter().position(|a| a == "-l" || a == "--lcores") {
            for l in args.get(i + 1).map(String::as_str).unwrap_or("").split(',') {
                // `-l 0,1` names CPUs directly; `--lcores 2@1` pins lcore 2 to CPU 1.
                let cpu = l.rsplit('@').next().unwrap_or(l);
                if let Ok(lcore) = cpu.parse::<u32>() {
                    let (ok, online) = cpu_online(lcore);
                    if !ok {
                        return Err(Error::LcoreMissing { lcore, online });
                    }
                }
            }
        }
        if !args.iter().any(|a| a == "--no-huge") {
            check_hugepages()?;
        }
        if EAL_TAKEN.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyInitialised);
        }
        let mut owned: Vec<CString> = std::iter::once("tsmp".to_owned())
            .chain(args.iter().cloned())
            .map(|a| CString::new(a).unwrap_or_default())
            .collect();
        let mut argv: Vec<*mut c_char> = owned.iter_mut().map(|a| a.as_ptr().cast_mut()).collect();
        argv.push(ptr::null_mut());
        let argc = c_int::try_from(owned.len()).unwrap_or(c_int::MAX);
        // SAFETY: argv holds argc valid NUL-terminated strings (kept alive by `owned` until after
        // the call; EAL copies what it keeps) followed by NULL. EAL_TAKEN guarantees this is the
        // only call in the process.
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        drop(owned);
        if ret < 0 {
            return Err(Error::EalInit(last_error()));
        }
        Ok(Eal {
            _not_send: PhantomData,
        })
    }

    /// TSC ticks per second.
    pub fn tsc_hz(&self) -> u64 {
        tsc_hz()
    }

    /// The lcore running the caller, as DPDK sees it.
    pub fn main_lcore(&self) -> LcoreId {
        // SAFETY: rte_get_main_lcore only reads EAL's configuration, valid after init.
        LcoreId(unsafe { sys::rte_get_main_lcore() })
    }

    /// Probes a virtual device from its devargs (`net_af_packet0,iface=veth0`) and returns its port.
    ///
    /// # Errors
    /// The driver refused the arguments or the backing resource is missing.
    pub fn probe_vdev(&self, devargs: &str) -> Result<PortId, Error> {
        let name = devargs.split(',').next().unwrap_or(devargs);
        let hint = if name.starts_with("net_af_packet") {
            " (does the `iface=` interface exist and is it up?)"
        } else if name.starts_with("net_memif") {
            " (is the socket path writable, and is the peer's role the opposite one?)"
        } else if name.starts_with("net_tap") {
            " (is /dev/net/tun available and the iface name free?)"
        } else if name.starts_with("net_virtio_user") {
            " (does the `path=` vhost-user socket exist? this kernel has no /dev/vhost-net)"
        } else {
            " (check the driver's devargs in DPDK's guide)"
        };
        let c = CString::new(devargs).map_err(|_| Error::VdevProbe {
            devargs: devargs.to_owned(),
            reason: "contains a NUL byte".into(),
            hint: "",
        })?;
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call; EAL is
        // initialised (self exists) and we are on the main lcore (Eal is !Send).
        let ret = unsafe { sys::rte_dev_probe(c.as_ptr()) };
        if ret < 0 {
            return Err(Error::VdevProbe {
                devargs: devargs.to_owned(),
                reason: strerror(ret),
                hint,
            });
        }
        port_by_name(name).ok_or_else(|| Error::VdevProbe {
            devargs: devargs.to_owned(),
            reason: "probed, but it created no ethdev port".into(),
            hint: " (is this a net_ device?)",
        })
    }

    /// The port of a PCI device given on the EAL command line (`-a 0000:00:08.0`).
    ///
    /// # Errors
    /// The device is not bound to a DPDK-compatible driver or was not allow-listed.
    pub fn pci_port(&self, addr: &str) -> Result<PortId, Error> {
        let full = if addr.matches(':').count() == 1 {
            format!("0000:{addr}")
        } else {
            addr.to_owned()
        };
        port_by_name(&full).ok_or(Error::PciMissing(full))
    }

    /// Runs `workers` on their lcores and `main` on the calling (main) lcore, then sets `stop` and
    /// joins every worker before returning. Panics in any closure are caught and reported.
    ///
    /// The closures may borrow from the caller's stack: this function does not return before every
    /// launched worker has finished, even when `main` panics.
    ///
    /// # Errors
    /// A worker could not be launched or panicked; the others are still joined.
    pub fn run<'env>(
        &self,
        stop: &AtomicBool,
        workers: Vec<(LcoreId, Box<dyn FnOnce() + Send + 'env>)>,
        main: impl FnOnce(),
    ) -> Result<(), Error> {
        type Job<'a> = Box<dyn FnOnce() + Send + 'a>;
        extern "C" fn trampoline(arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the Box<Job> leaked by `run` below for exactly this call; we take
            // it back once. The 'env lifetime is erased, which is sound because `run` joins this
            // lcore before returning.
            let job: Box<Job<'static>> = unsafe { Box::from_raw(arg.cast::<Job<'static>>()) };
            match catch_unwind(AssertUnwindSafe(move || (*job)())) {
                Ok(()) => 0,
                Err(_) => -1,
            }
        }

        let mut launched = Vec::new();
        let mut first_err = None;
        for (lcore, job) in workers {
            let raw = Box::into_raw(Box::new(job)).cast::<c_void>();
            // SAFETY: trampoline has the lcore_function_t ABI; `raw` stays valid until the
            // trampoline reclaims it. rte_eal_remote_launch returns <0 if the lcore is not a
            // waiting worker, in which case the job was not handed over and we reclaim it.
            let ret = unsafe { sys::rte_eal_remote_launch(Some(trampoline), raw, lcore.0) };
            if ret < 0 {
                // SAFETY: the launch failed, so nothing else owns `raw`; reclaim and drop it.
                drop(unsafe { Box::from_raw(raw.cast::<Job<'env>>()) });
                first_err.get_or_insert(Error::Launch(lcore.0));
                stop.store(true, Ordering::SeqCst);
                break;
            }
            launched.push(lcore);
        }
        if first_err.is_none() && catch_unwind(AssertUnwindSafe(main)).is_err() {
            eprintln!("tsmp: the main lcore's loop panicked; stopping workers");
        }
        stop.store(true, Ordering::SeqCst);
        for lcore in launched {
            // SAFETY: the lcore was launched above; waiting on it is always valid and blocks until
            // its function returned.
            let ret = unsafe { sys::rte_eal_wait_lcore(lcore.0) };
            if ret != 0 {
                first_err.get_or_insert(Error::WorkerPanicked(lcore.0));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: every object created from EAL borrows `self`, so all were dropped; workers were
        // joined inside `run`. After cleanup no DPDK call is made (EAL_TAKEN stays set).
        unsafe {
            sys::rte_eal_cleanup();
        }
    }
}

fn port_by_name(name: &str) -> Option<PortId> {
    let c = CString::new(name).ok()?;
    let mut id: u16 = 0;
    // SAFETY: `c` is NUL-terminated and `id` is a valid out-pointer for the call's duration.
    let ret = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    (ret == 0).then_some(PortId(id))
}

/// TSC ticks per second (valid once EAL is initialised).
pub fn tsc_hz() -> u64 {
    // SAFETY: reads a value EAL calibrated at init; no preconditions.
    unsafe { sys::rte_get_tsc_hz() }
}

/// The current TSC value.
#[inline(always)]
pub fn rdtsc() -> u64 {
    sys::rdtsc()
}

/// Asks the kernel to back the 2 MiB-aligned part of `[addr, addr + len)` with transparent huge
/// pages (`madvise(MADV_HUGEPAGE)`); used for the flow tables, whose random accesses would
/// otherwise miss the TLB on every packet. The region should not be touched yet (pages faulted
/// in afterwards come huge). A hint: when the kernel refuses (THP disabled), nothing changes and
/// the refusal is logged once.
pub fn advise_hugepages(addr: usize, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = addr.next_multiple_of(HUGE);
    let end = (addr + len) & !(HUGE - 1);
    if end <= start {
        return;
    }
    let Some(p) = NonNull::new(start as *mut c_void) else {
        return;
    };
    // SAFETY: MADV_HUGEPAGE changes only how the kernel backs the pages of the range, never
    // their contents or the mapping's protection; on a range that is not a private anonymous
    // mapping the kernel returns an error, which is reported, not acted on.
    let r = unsafe {
        nix::sys::mman::madvise(p, end - start, nix::sys::mman::MmapAdvise::MADV_HUGEPAGE)
    };
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = r {
        if !WARNED.swap(true, Ordering::Relaxed) {
            eprintln!("tsmp: flow tables stay on 4 KiB pages (madvise(MADV_HUGEPAGE): {e}); check /sys/kernel/mm/transparent_hugepage/enabled");
        }
    }
}

/// A pool of packet buffers. Freed on drop; borrowed by everything that allocates from it.
#[derive(Debug)]
pub struct Mempool<'eal> {
    raw: NonNull<sys::rte_mempool>,
    name: String,
    size: u32,
    _eal: PhantomData<&'eal Eal>,
}

// SAFETY: a DPDK mempool is designed for concurrent use from all lcores (lock-free ring plus
// per-lcore caches); the handle itself is an immutable pointer.
unsafe impl Send for Mempool<'_> {}
// SAFETY: as above: every operation we expose is thread-safe in DPDK.
unsafe impl Sync for Mempool<'_> {}

impl<'eal> Mempool<'eal> {
    /// Creates a packet-mbuf pool of `n` mbufs with `data_room` bytes each.
    ///
    /// # Errors
    /// Not enough memory, or the name is taken.
    pub fn new(
        _eal: &'eal Eal,
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
    ) -> Result<Self, Error> {
        let err = |reason: String| Error::Mempool {
            name: name.to_owned(),
            n,
            reason,
        };
        let c = CString::new(name).map_err(|_| err("name contains a NUL byte".into()))?;
        // SAFETY: `c` is NUL-terminated for the call; the other arguments are plain values.
        let raw = unsafe {
            sys::rte_pktmbuf_pool_create(c.as_ptr(), n, cache, 0, data_room, sys::SOCKET_ID_ANY)
        };
        let raw = NonNull::new(raw).ok_or_else(|| err(last_error()))?;
        Ok(Mempool {
            raw,
            name: name.to_owned(),
            size: n,
            _eal: PhantomData,
        })
    }

    /// Mbufs available (in the ring and the lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid while self lives; the count is a racy but safe read.
        unsafe { sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Mbufs allocated and not yet returned.
    pub fn in_use(&self) -> u32 {
        // SAFETY: as for `available`.
        unsafe { sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// The pool's size.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fills `burst` (after emptying it) with `n` fresh mbufs, all or none. Returns `false` when the
    /// pool has fewer than `n` free.
    pub fn alloc_bulk(&self, burst: &mut Burst, n: usize) -> bool {
        burst.clear();
        let n = n.min(Burst::CAP);
        // SAFETY: `pkts` has room for n <= CAP pointers; on success (0) all n are fresh mbufs we
        // own, on failure none was allocated.
        let ret = unsafe {
            sys::rte_pktmbuf_alloc_bulk(self.raw.as_ptr(), burst.pkts.as_mut_ptr(), n as c_uint)
        };
        if ret == 0 {
            burst.len = n;
        }
        ret == 0
    }

    /// Allocates one mbuf (data length 0, default headroom), or `None` when the pool is empty.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid; a non-null result is a fresh mbuf with refcnt 1 that we own.
        NonNull::new(unsafe { sys::rte_pktmbuf_alloc(self.raw.as_ptr()) }).map(|raw| Mbuf { raw })
    }
}

impl Drop for Mempool<'_> {
    fn drop(&mut self) {
        // SAFETY: ports and queues using this pool borrow it and are gone; rte_mempool_free
        // releases the memory. Mbufs still held elsewhere would be a bug in the owner, which the
        // borrow on `'pool` in Port/RxQueue prevents.
        unsafe { sys::rte_mempool_free(self.raw.as_ptr()) }
    }
}

/// An owned packet buffer. Freed on drop.
#[repr(transparent)]
pub struct Mbuf {
    raw: NonNull<sys::rte_mbuf>,
}

// SAFETY: an mbuf we own may be moved to another lcore (hand-off rings do this); DPDK frees it
// into its pool from any lcore.
unsafe impl Send for Mbuf {}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf").field("len", &self.len()).finish()
    }
}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `raw` must be a valid mbuf to which the caller owns one reference, not used afterwards.
    #[inline(always)]
    unsafe fn from_raw(raw: *mut sys::rte_mbuf) -> Mbuf {
        Mbuf {
            // SAFETY: the caller guarantees a valid (so non-null) mbuf.
            raw: unsafe { NonNull::new_unchecked(raw) },
        }
    }

    /// Gives up ownership, returning the raw pointer.
    #[inline(always)]
    fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.raw.as_ptr();
        std::mem::forget(self);
        p
    }

    /// The packet data of the first segment.
    #[inline(always)]
    pub fn data(&self) -> &[u8] {
        // SAFETY: we own the mbuf; buf_addr + data_off points at data_len initialised bytes
        // inside its buffer, valid while self lives.
        unsafe {
            let m = self.raw.as_ptr();
            std::slice::from_raw_parts(sys::rte_pktmbuf_mtod(m), usize::from((*m).data_len))
        }
    }

    /// The packet data of the first segment, writable.
    ///
    /// A [`Mbuf::share`]d mbuf has several owners of the same bytes: a write through one is seen
    /// through the others. The only sharing user, the migration engine, writes the headers of
    /// the handle it forwards and reads the payload through the one it caches; it never writes
    /// the payload.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`; &mut self makes this handle's borrow exclusive, and no borrow
        // through another handle of a shared mbuf is live at the same time (handles are used
        // sequentially on one lcore).
        unsafe {
            let m = self.raw.as_ptr();
            std::slice::from_raw_parts_mut(sys::rte_pktmbuf_mtod(m), usize::from((*m).data_len))
        }
    }

    /// Length of the first segment's data.
    #[inline(always)]
    pub fn len(&self) -> usize {
        // SAFETY: reading a field of an mbuf we own.
        usize::from(unsafe { (*self.raw.as_ptr()).data_len })
    }

    /// Whether the first segment holds no data.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total packet length (all segments).
    #[inline(always)]
    pub fn pkt_len(&self) -> u32 {
        // SAFETY: reading a field of an mbuf we own.
        unsafe { (*self.raw.as_ptr()).pkt_len }
    }

    /// The port the mbuf was received on.
    #[inline(always)]
    pub fn port(&self) -> PortId {
        // SAFETY: reading a field of an mbuf we own.
        PortId(unsafe { (*self.raw.as_ptr()).port })
    }

    /// Whether the packet is a single segment (the only kind the fast path rewrites).
    #[inline(always)]
    pub fn is_contiguous(&self) -> bool {
        // SAFETY: reading a field of an mbuf we own.
        unsafe { (*self.raw.as_ptr()).nb_segs == 1 }
    }

    /// Sets the data length of a single-segment mbuf to `len`, growing into the tailroom.
    /// Returns `false` (and changes nothing) if the buffer is too small or the mbuf is chained.
    pub fn set_len(&mut self, len: usize) -> bool {
        // SAFETY: we own the mbuf; we only write length fields after checking that the buffer
        // (buf_len - data_off bytes after the data start) can hold `len` bytes.
        unsafe {
            let m = self.raw.as_ptr();
            let room = usize::from((*m).buf_len).saturating_sub(usize::from((*m).data_off));
            if (*m).nb_segs != 1 || len > room {
                return false;
            }
            let l = u16::try_from(len).unwrap_or(u16::MAX);
            (*m).data_len = l;
            (*m).pkt_len = u32::from(l);
        }
        true
    }

    /// Another owning handle to the same mbuf: the reference count goes up by one, each handle
    /// drops its own reference, the mbuf returns to its pool with the last. This is how the
    /// migration engine caches a segment it also forwards, without copying the payload. (PMDs
    /// with the `MBUF_FAST_FREE` TX offload assume a count of 1; the appliance never enables
    /// it.)
    pub fn share(&self) -> Mbuf {
        // SAFETY: we own a reference to a valid mbuf; raising the count by one creates the
        // reference the new handle owns (single segment or chain: the count is the first
        // segment's, which rte_pktmbuf_free honours for the whole chain).
        unsafe { sys::rte_mbuf_refcnt_update(self.raw.as_ptr(), 1) };
        Mbuf { raw: self.raw }
    }

    /// The reference count (1 unless shared).
    pub fn refcnt(&self) -> u16 {
        // SAFETY: reading the count of an mbuf we hold a reference to.
        unsafe { sys::rte_mbuf_refcnt_read(self.raw.as_ptr()) }
    }

    /// Prefetches the first cache line of the packet data.
    #[inline(always)]
    pub fn prefetch(&self) {
        // SAFETY: prefetching any address is harmless; this one is inside our buffer.
        unsafe { sys::rte_prefetch0(sys::rte_pktmbuf_mtod(self.raw.as_ptr()).cast::<c_void>()) }
    }
}

impl AsRef<[u8]> for Mbuf {
    fn as_ref(&self) -> &[u8] {
        self.data()
    }
}

impl AsMut<[u8]> for Mbuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.data_mut()
    }
}

impl tsmp_core::buf::SharedBuf for Mbuf {
    fn share(&self) -> Self {
        Mbuf::share(self)
    }
}

impl tsmp_core::buf::FrameBuf for Mbuf {
    #[inline]
    fn set_len(&mut self, len: usize) -> bool {
        Mbuf::set_len(self, len)
    }

    #[inline(always)]
    fn prefetch(p: *const u8) {
        sys::prefetch0(p);
    }

    #[inline(always)]
    fn rx_checksum(&self) -> tsmp_core::buf::RxChecksum {
        use tsmp_core::buf::RxChecksum;
        // SAFETY: reading a field of an mbuf we own.
        let flags = unsafe { (*self.raw.as_ptr()).ol_flags };
        match flags & u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_MASK) {
            f if f == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD) => RxChecksum::Good,
            f if f == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_BAD) => RxChecksum::Bad,
            // UNKNOWN, or NONE (the field was never filled in: the data plane checks it).
            _ => RxChecksum::Unknown,
        }
    }
}

impl Drop for Mbuf {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: we own one reference; rte_pktmbuf_free releases it (and the segments).
        unsafe { sys::rte_pktmbuf_free(self.raw.as_ptr()) }
    }
}

/// A received burst: up to [`Burst::CAP`] owned mbufs in a fixed array (no allocation).
pub struct Burst {
    pkts: [*mut sys::rte_mbuf; Burst::CAP],
    len: usize,
}

// SAFETY: the burst owns its mbufs (see Mbuf's Send).
unsafe impl Send for Burst {}

impl fmt::Debug for Burst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Burst").field("len", &self.len).finish()
    }
}

impl Default for Burst {
    fn default() -> Self {
        Burst {
            pkts: [ptr::null_mut(); Burst::CAP],
            len: 0,
        }
    }
}

impl Burst {
    /// Capacity of a burst.
    pub const CAP: usize = 64;

    /// Number of mbufs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the burst is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Prefetches the data of packet `i` (no-op when out of range).
    #[inline(always)]
    pub fn prefetch(&self, i: usize) {
        if i < self.len {
            // SAFETY: pkts[..len] are valid mbufs we own (reading buf_addr/data_off is sound).
            sys::prefetch0(unsafe { sys::rte_pktmbuf_mtod(self.pkts[i]) });
        }
    }

    /// The mbufs.
    #[inline(always)]
    pub fn iter(&self) -> impl Iterator<Item = &Mbuf> + '_ {
        // SAFETY: as in `iter_mut`, shared.
        unsafe { std::slice::from_raw_parts(self.pkts.as_ptr().cast::<Mbuf>(), self.len) }.iter()
    }

    /// The mbufs, mutably (to fill freshly allocated ones).
    #[inline(always)]
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Mbuf> + '_ {
        // SAFETY: Mbuf is a transparent wrapper around a non-null pointer (repr(transparent)), and
        // pkts[..len] are non-null mbufs we own; handing out &mut Mbuf does not move ownership.
        unsafe { std::slice::from_raw_parts_mut(self.pkts.as_mut_ptr().cast::<Mbuf>(), self.len) }
            .iter_mut()
    }

    /// Takes every mbuf out, in order, leaving the burst empty. Mbufs the caller does not take
    /// from the iterator are freed when it is dropped (like `Vec::drain`).
    #[inline(always)]
    pub fn drain(&mut self) -> Drain<'_> {
        let n = std::mem::take(&mut self.len);
        Drain {
            pkts: &self.pkts[..n],
            pos: 0,
        }
    }

    /// Frees every mbuf held.
    #[inline(always)]
    pub fn clear(&mut self) {
        drop(self.drain());
    }

    /// Keeps the first `n` mbufs and frees the rest (no-op when `n >= len`).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        let end = std::mem::replace(&mut self.len, n);
        for &p in &self.pkts[n..end] {
            // SAFETY: pkts[n..end] were owned by the burst, which no longer counts them (len is
            // n); each is released exactly once here.
            drop(unsafe { Mbuf::from_raw(p) });
        }
    }
}

/// Iterator returned by [`Burst::drain`]; frees the mbufs not taken when dropped.
#[derive(Debug)]
pub struct Drain<'a> {
    pkts: &'a [*mut sys::rte_mbuf],
    pos: usize,
}

impl Iterator for Drain<'_> {
    type Item = Mbuf;

    #[inline(always)]
    fn next(&mut self) -> Option<Mbuf> {
        let p = *self.pkts.get(self.pos)?;
        self.pos += 1;
        // SAFETY: pkts[..n] were valid mbufs owned by the burst, whose length was reset to 0
        // before this iterator was made; each is yielded at most once (pos only grows).
        Some(unsafe { Mbuf::from_raw(p) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.pkts.len() - self.pos;
        (n, Some(n))
    }
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        for m in self.by_ref() {
            drop(m);
        }
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Receive side of one queue of a port; owned by one worker.
#[derive(Debug)]
pub struct RxQueue<'p> {
    port: PortId,
    queue: QueueId,
    _port: PhantomData<&'p ()>,
}

impl RxQueue<'_> {
    /// Receives up to `max` packets into `burst` (replacing its content). Returns how many.
    #[inline(always)]
    pub fn recv(&mut self, burst: &mut Burst, max: u16) -> usize {
        burst.clear();
        let max = max.min(Burst::CAP as u16);
        // SAFETY: the queue was set up and the port started (Port::start precedes handing out
        // queues to workers; Port's drop waits for workers, see Eal::run); `pkts` has room for
        // `max` pointers; the returned ones are mbufs we now own.
        let n = unsafe {
            sys::rte_eth_rx_burst(self.port.0, self.queue.0, burst.pkts.as_mut_ptr(), max)
        };
        burst.len = usize::from(n);
        burst.len
    }

    /// The port this queue belongs to.
    pub fn port(&self) -> PortId {
        self.port
    }

    /// The queue index.
    pub fn queue(&self) -> QueueId {
        self.queue
    }
}

/// Transmit side of one queue of a port, with an l3fwd-style buffer; owned by one worker.
pub struct TxQueue<'p> {
    port: PortId,
    queue: QueueId,
    buf: [*mut sys::rte_mbuf; Burst::CAP],
    len: usize,
    threshold: usize,
    _port: PhantomData<&'p ()>,
}

// SAFETY: the buffered mbufs are owned (see Mbuf's Send); the queue index is used by one lcore.
unsafe impl Send for TxQueue<'_> {}

impl fmt::Debug for TxQueue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxQueue")
            .field("port", &self.port)
            .field("queue", &self.queue)
            .field("buffered", &self.len)
            .finish()
    }
}

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxResult {
    /// Packets the driver took.
    pub sent: u32,
    /// Bytes the driver took.
    pub sent_bytes: u64,
    /// Packets the driver refused (ring full), freed.
    pub dropped: u32,
    /// Bytes of the refused packets.
    pub dropped_bytes: u64,
}

impl TxResult {
    fn add(&mut self, o: TxResult) {
        self.sent += o.sent;
        self.sent_bytes += o.sent_bytes;
        self.dropped += o.dropped;
        self.dropped_bytes += o.dropped_bytes;
    }
}

impl TxQueue<'_> {
    /// Sets how many buffered packets trigger a flush (clamped to 1..=64).
    pub fn set_threshold(&mut self, n: usize) {
        self.threshold = n.clamp(1, Burst::CAP);
    }

    /// Buffers one packet; flushes when the buffer reaches the threshold.
    #[inline(always)]
    pub fn push(&mut self, m: Mbuf) -> TxResult {
        self.buf[self.len] = m.into_raw();
        self.len += 1;
        if self.len >= self.threshold {
            self.flush()
        } else {
            TxResult::default()
        }
    }

    /// Transmits a whole burst: straight from the burst's array when nothing is buffered and the
    /// burst reaches the threshold (no copy), else through the buffer.
    #[inline(always)]
    pub fn push_burst(&mut self, burst: &mut Burst) -> TxResult {
        if self.len == 0 && burst.len >= self.threshold {
            let n = std::mem::take(&mut burst.len);
            return self.transmit(&mut burst.pkts[..n]);
        }
        let mut r = TxResult::default();
        for m in burst.drain() {
            r.add(self.push(m));
        }
        r
    }

    /// Number of packets waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Hands the buffered packets to the driver; frees (and counts) those it refuses.
    #[inline(always)]
    pub fn flush(&mut self) -> TxResult {
        let n = std::mem::take(&mut self.len);
        let (port, queue) = (self.port, self.queue);
        transmit(port, queue, &mut self.buf[..n])
    }

    #[inline(always)]
    fn transmit(&mut self, pkts: &mut [*mut sys::rte_mbuf]) -> TxResult {
        transmit(self.port, self.queue, pkts)
    }
}

/// Transmits `pkts` (owned mbufs; ownership passes to this call) on a tx queue; frees those the
/// driver refuses.
#[inline(always)]
fn transmit(port: PortId, queue: QueueId, pkts: &mut [*mut sys::rte_mbuf]) -> TxResult {
    if pkts.is_empty() {
        return TxResult::default();
    }
    let mut bytes = 0u64;
    for &m in pkts.iter() {
        // SAFETY: the caller passes valid mbufs it owns.
        bytes += u64::from(unsafe { (*m).pkt_len });
    }
    let n = u16::try_from(pkts.len()).unwrap_or(u16::MAX);
    // SAFETY: the queue is set up on a started port and used by this lcore only (TxQueue is
    // !Sync and unique); pkts[..n] are owned mbufs; the driver takes the first `sent`.
    let sent = usize::from(unsafe { sys::rte_eth_tx_burst(port.0, queue.0, pkts.as_mut_ptr(), n) });
    let mut unsent_bytes = 0u64;
    for &m in &pkts[sent..] {
        // SAFETY: the driver did not take these; we still own them and free each once.
        unsafe {
            unsent_bytes += u64::from((*m).pkt_len);
            sys::rte_pktmbuf_free(m);
        }
    }
    TxResult {
        sent: u32::try_from(sent).unwrap_or(u32::MAX),
        sent_bytes: bytes - unsent_bytes,
        dropped: u32::try_from(pkts.len() - sent).unwrap_or(u32::MAX),
        dropped_bytes: unsent_bytes,
    }
}

impl Drop for TxQueue<'_> {
    fn drop(&mut self) {
        for &m in &self.buf[..self.len] {
            // SAFETY: buffered mbufs are ours and never reached the driver.
            unsafe { sys::rte_pktmbuf_free(m) }
        }
        self.len = 0;
    }
}

/// How to set a port up.
#[derive(Debug, Clone)]
pub struct PortSetup {
    /// Name for messages.
    pub name: String,
    /// Rx queues.
    pub rx_queues: u16,
    /// Tx queues.
    pub tx_queues: u16,
    /// Rx descriptors per queue.
    pub rx_desc: u16,
    /// Tx descriptors per queue.
    pub tx_desc: u16,
    /// Enable promiscuous mode.
    pub promiscuous: bool,
    /// RSS: `None` = when possible, `Some(true)` = required, `Some(false)` = never.
    pub rss: Option<bool>,
    /// MTU to set.
    pub mtu: Option<u16>,
}

/// Static facts about a configured port.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// Driver name.
    pub driver: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// Whether RSS is active.
    pub rss: bool,
    /// RSS redirection table size (0 when RSS is off).
    pub reta_size: u16,
    /// Rx queues.
    pub rx_queues: u16,
    /// Tx queues.
    pub tx_queues: u16,
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Whether the link is up.
    pub up: bool,
    /// Speed in Mbit/s (0 if unknown).
    pub speed_mbps: u32,
}

/// Basic port counters (the driver's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Packets the NIC dropped because rx queues were full.
    pub imissed: u64,
    /// Erroneous received packets.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// Rx mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// A configured and started port. Stopped and closed on drop.
#[derive(Debug)]
pub struct Port<'pool> {
    id: PortId,
    info: PortInfo,
    name: String,
    rx_taken: std::cell::RefCell<Vec<bool>>,
    tx_taken: std::cell::RefCell<Vec<bool>>,
    _pool: PhantomData<&'pool Mempool<'pool>>,
}

/// RSS hash functions for IPv4/TCP (DPDK's RTE_ETH_RSS_IPV4 | FRAG_IPV4 | NONFRAG_IPV4_TCP |
/// NONFRAG_IPV4_OTHER; bit macros bindgen cannot translate).
const RSS_IPV4_TCP: u64 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6);
/// RTE_ETH_RX_OFFLOAD_TCP_CKSUM: the NIC checks TCP checksums and says so in the mbuf.
const RX_OFFLOAD_TCP_CKSUM: u64 = 1 << 3;

impl<'pool> Port<'pool> {
    /// Configures queues on `pool`, starts the port and enables promiscuous mode if asked.
    ///
    /// # Errors
    /// The driver refuses the queue counts, descriptors, RSS or MTU.
    pub fn start(id: PortId, setup: &PortSetup, pool: &'pool Mempool<'_>) -> Result<Self, Error> {
        let p = id.0;
        let fail = |what: &'static str, ret: c_int| Error::Port {
            port: p,
            name: setup.name.clone(),
            what,
            reason: strerror(ret),
        };
        let cap = |problem: String| Error::PortCapability {
            port: p,
            name: setup.name.clone(),
            problem,
        };

        let mut dev: sys::rte_eth_dev_info = Default::default();
        // SAFETY: `dev` is a valid out-pointer; the port id came from EAL.
        let ret = unsafe { sys::rte_eth_dev_info_get(p, &mut dev) };
        if ret != 0 {
            return Err(fail("rte_eth_dev_info_get", ret));
        }
        let driver = if dev.driver_name.is_null() {
            String::from("?")
        } else {
            // SAFETY: driver_name is a static NUL-terminated string owned by the driver.
            unsafe { CStr::from_ptr(dev.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        if setup.rx_queues > dev.max_rx_queues || setup.tx_queues > dev.max_tx_queues {
            return Err(cap(format!(
                "needs {} rx / {} tx queues but the {driver} driver offers {} / {} (use fewer workers, or for af_packet raise `qpairs=` in the vdev)",
                setup.rx_queues, setup.tx_queues, dev.max_rx_queues, dev.max_tx_queues
            )));
        }
        let rss_hf = dev.flow_type_rss_offloads & RSS_IPV4_TCP;
        let rss = match setup.rss {
            Some(false) => false,
            None => setup.rx_queues > 1 && rss_hf != 0,
            Some(true) if rss_hf == 0 => {
                return Err(cap(format!(
                    "rss = \"on\" but the {driver} driver has no IPv4/TCP RSS; set rss = \"auto\""
                )))
            }
            Some(true) => true,
        };
        let mut conf: sys::rte_eth_conf = Default::default();
        // Where the NIC can check TCP checksums it does, and the data plane skips its own pass.
        conf.rxmode.offloads |= dev.rx_offload_capa & RX_OFFLOAD_TCP_CKSUM;
        if rss {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
        }
        // SAFETY: `conf` is a valid, fully initialised configuration for the call's duration.
        let ret = unsafe { sys::rte_eth_dev_configure(p, setup.rx_queues, setup.tx_queues, &conf) };
        if ret != 0 {
            return Err(fail("rte_eth_dev_configure", ret));
        }
        let mut rx_desc = setup.rx_desc;
        let mut tx_desc = setup.tx_desc;
        // SAFETY: the port is configured; the out-pointers are valid.
        let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(p, &mut rx_desc, &mut tx_desc) };
        if ret != 0 {
            return Err(fail("rte_eth_dev_adjust_nb_rx_tx_desc", ret));
        }
        if let Some(mtu) = setup.mtu {
            // SAFETY: plain call on a configured port.
            let ret = unsafe { sys::rte_eth_dev_set_mtu(p, mtu) };
            if ret != 0 {
                return Err(fail("rte_eth_dev_set_mtu", ret));
            }
        }
        // SAFETY: plain call on a valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(p) };
        // SOCKET_ID_ANY (-1) reinterpreted as unsigned, as DPDK's own callers pass it.
        let socket = c_uint::try_from(socket).unwrap_or(c_uint::MAX);
        for q in 0..setup.rx_queues {
            // SAFETY: the port is configured with rx_queues queues; NULL rxconf means the driver's
            // defaults; the pool outlives the port ('pool borrow).
            let ret = unsafe {
                sys::rte_eth_rx_queue_setup(p, q, rx_desc, socket, ptr::null(), pool.raw.as_ptr())
            };
            if ret != 0 {
                return Err(fail("rte_eth_rx_queue_setup", ret));
            }
        }
        for q in 0..setup.tx_queues {
            // SAFETY: as above, for tx queues.
            let ret = unsafe { sys::rte_eth_tx_queue_setup(p, q, tx_desc, socket, ptr::null()) };
            if ret != 0 {
                return Err(fail("rte_eth_tx_queue_setup", ret));
            }
        }
        // SAFETY: all queues are set up.
        let ret = unsafe { sys::rte_eth_dev_start(p) };
        if ret != 0 {
            return Err(fail("rte_eth_dev_start", ret));
        }
        if setup.promiscuous {
            // SAFETY: plain call on a started port. Some virtual drivers cannot change it; that
            // is not fatal (they receive everything anyway).
            let ret = unsafe { sys::rte_eth_promiscuous_enable(p) };
            if ret != 0 && ret != -95
            /* ENOTSUP */
            {
                eprintln!(
                    "tsmp: port {p} ({}): promiscuous mode: {}",
                    setup.name,
                    strerror(ret)
                );
            }
        }
        let mut mac: sys::rte_ether_addr = Default::default();
        // SAFETY: `mac` is a valid out-pointer.
        unsafe { sys::rte_eth_macaddr_get(p, &mut mac) };
        let info = PortInfo {
            driver,
            mac: mac.addr_bytes,
            rss,
            reta_size: if rss { dev.reta_size } else { 0 },
            rx_queues: setup.rx_queues,
            tx_queues: setup.tx_queues,
        };
        Ok(Port {
            id,
            info,
            name: setup.name.clone(),
            rx_taken: std::cell::RefCell::new(vec![false; usize::from(setup.rx_queues)]),
            tx_taken: std::cell::RefCell::new(vec![false; usize::from(setup.tx_queues)]),
            _pool: PhantomData,
        })
    }

    /// The port id.
    pub fn id(&self) -> PortId {
        self.id
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Driver, MAC, RSS and queue facts.
    pub fn info(&self) -> &PortInfo {
        &self.info
    }

    /// The rx queue `q`, once.
    ///
    /// # Errors
    /// The queue was already handed out, or does not exist.
    pub fn rx_queue(&self, q: u16) -> Result<RxQueue<'_>, Error> {
        take(&mut self.rx_taken.borrow_mut(), self.id, "rx", q)?;
        Ok(RxQueue {
            port: self.id,
            queue: QueueId(q),
            _port: PhantomData,
        })
    }

    /// The tx queue `q`, once.
    ///
    /// # Errors
    /// The queue was already handed out, or does not exist.
    pub fn tx_queue(&self, q: u16) -> Result<TxQueue<'_>, Error> {
        take(&mut self.tx_taken.borrow_mut(), self.id, "tx", q)?;
        Ok(TxQueue {
            port: self.id,
            queue: QueueId(q),
            buf: [ptr::null_mut(); Burst::CAP],
            len: 0,
            threshold: 32,
            _port: PhantomData,
        })
    }

    /// Current link state (does not wait).
    pub fn link(&self) -> Link {
        let mut l: sys::rte_eth_link = Default::default();
        // SAFETY: `l` is a valid out-pointer.
        let ret = unsafe { sys::rte_eth_link_get_nowait(self.id.0, &mut l) };
        Link {
            up: ret == 0 && u32::from(l.link_status()) == sys::RTE_ETH_LINK_UP,
            speed_mbps: l.link_speed,
        }
    }

    /// The driver's basic counters.
    pub fn stats(&self) -> PortStats {
        let mut s: sys::rte_eth_stats = Default::default();
        // SAFETY: `s` is a valid out-pointer; reading stats is safe from the main lcore while
        // workers run (drivers read counters, they do not touch the queues).
        unsafe { sys::rte_eth_stats_get(self.id.0, &mut s) };
        PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        }
    }

    /// The driver's extended counters, by name.
    pub fn xstats(&self) -> Vec<(String, u64)> {
        // SAFETY: with NULL and 0 the call only returns the count.
        let n = unsafe { sys::rte_eth_xstats_get_names(self.id.0, ptr::null_mut(), 0) };
        let Ok(n) = usize::try_from(n) else {
            return Vec::new();
        };
        let mut names = vec![sys::rte_eth_xstat_name { name: [0; 64] }; n];
        let mut vals = vec![sys::rte_eth_xstat::default(); n];
        let cap = c_uint::try_from(n).unwrap_or(0);
        // SAFETY: both arrays have room for `n` entries.
        let (a, b) = unsafe {
            (
                sys::rte_eth_xstats_get_names(self.id.0, names.as_mut_ptr(), cap),
                sys::rte_eth_xstats_get(self.id.0, vals.as_mut_ptr(), cap),
            )
        };
        if a < 0 || b < 0 {
            return Vec::new();
        }
        vals.iter()
            .take(usize::try_from(b).unwrap_or(0).min(n))
            .filter_map(|v| {
                let name = names.get(usize::try_from(v.id).ok()?)?;
                // SAFETY: names are NUL-terminated within their 64 bytes (DPDK guarantees it).
                let s = unsafe { CStr::from_ptr(name.name.as_ptr()) }
                    .to_string_lossy()
                    .into_owned();
                Some((s, v.value))
            })
            .collect()
    }
}

fn take(taken: &mut [bool], port: PortId, kind: &'static str, q: u16) -> Result<(), Error> {
    match taken.get_mut(usize::from(q)) {
        Some(t) if !*t => {
            *t = true;
            Ok(())
        }
        _ => Err(Error::QueueTaken {
            port: port.0,
            kind,
            queue: q,
        }),
    }
}

impl Drop for Port<'_> {
    fn drop(&mut self) {
        // SAFETY: queues borrow the port, so none is in use (workers were joined by Eal::run).
        // Stop then close releases the driver's resources, including mbufs in its rings.
        unsafe {
            sys::rte_eth_dev_stop(self.id.0);
            sys::rte_eth_dev_close(self.id.0);
        }
    }
}

/// A value in a telemetry answer.
#[derive(Debug, Clone, PartialEq)]
pub enum TelValue {
    /// A counter.
    U64(u64),
    /// Text (truncated by DPDK to its string limit).
    Str(String),
}

/// A telemetry command's handler: given the command's parameters (what follows the comma),
/// the dictionary to answer. Runs on DPDK's telemetry thread, so it may only read shared
/// state (atomics, channels), never a worker's tables.
pub type TelemetryHandler = dyn Fn(&str) -> Vec<(String, TelValue)> + Send + Sync;

static TELEMETRY: std::sync::Mutex<Vec<(CString, Box<TelemetryHandler>)>> =
    std::sync::Mutex::new(Vec::new());

/// The one C callback behind every command we register: finds the handler by name.
unsafe extern "C" fn telemetry_cb(
    cmd: *const c_char,
    params: *const c_char,
    d: *mut sys::rte_tel_data,
) -> c_int {
    let answer = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: DPDK passes the command's and the parameters' NUL-terminated strings (params
        // may be NULL), valid for the duration of the call.
        let (cmd, params) = unsafe {
            (
                CStr::from_ptr(cmd).to_owned(),
                if params.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(params).to_string_lossy().into_owned()
                },
            )
        };
        let handlers = TELEMETRY.lock().unwrap_or_else(|p| p.into_inner());
        handlers
            .iter()
            .find(|(c, _)| *c == cmd)
            .map(|(_, h)| h(&params))
    }));
    let Ok(Some(entries)) = answer else {
        return -1;
    };
    // SAFETY: `d` is the answer DPDK allocated for this call; it is ours to fill until we return.
    unsafe {
        sys::rte_tel_data_start_dict(d);
    }
    for (k, v) in entries {
        let Ok(k) = CString::new(k) else { continue };
        match v {
            // SAFETY: `d` as above; `k` (and `s`) are NUL-terminated and outlive the call, DPDK
            // copies them.
            TelValue::U64(n) => unsafe {
                sys::rte_tel_data_add_dict_u64(d, k.as_ptr(), n);
            },
            TelValue::Str(s) => {
                let Ok(s) = CString::new(s) else { continue };
                // SAFETY: as above.
                unsafe {
                    sys::rte_tel_data_add_dict_string(d, k.as_ptr(), s.as_ptr());
                }
            }
        }
    }
    0
}

/// Registers the telemetry command `cmd` (e.g. `/tsmp/stats`) with `help`; `dpdk-telemetry.py`
/// lists it next to DPDK's own (`/ethdev/stats`, ...).
///
/// # Errors
/// [`Error::Telemetry`] when DPDK refuses the name (too long, bad characters, registered twice).
pub fn register_telemetry(
    cmd: &str,
    help: &str,
    handler: Box<TelemetryHandler>,
) -> Result<(), Error> {
    let c = CString::new(cmd).map_err(|_| Error::Telemetry(cmd.to_owned()))?;
    let h = CString::new(help).map_err(|_| Error::Telemetry(cmd.to_owned()))?;
    // SAFETY: both strings are NUL-terminated; DPDK copies the command name and keeps the help
    // pointer, so `h` is leaked to live as long as the process. The callback is a plain
    // `extern "C"` function that outlives everything.
    let rc =
        unsafe { sys::rte_telemetry_register_cmd(c.as_ptr(), Some(telemetry_cb), h.into_raw()) };
    if rc != 0 {
        return Err(Error::Telemetry(cmd.to_owned()));
    }
    TELEMETRY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((c, handler));
    Ok(())
}

/// Packet capture for `dpdk-dumpcap` (a secondary process): while this lives, the ports'
/// traffic can be captured without stopping the appliance.
#[derive(Debug)]
pub struct Pdump<'e> {
    _eal: PhantomData<&'e Eal>,
}

impl Eal {
    /// Initialises `rte_pdump` so `dpdk-dumpcap --file-prefix=<ours>` can attach.
    ///
    /// # Errors
    /// [`Error::Pdump`] with DPDK's reason.
    pub fn pdump(&self) -> Result<Pdump<'_>, Error> {
        // SAFETY: EAL is initialised (we hold `self`); rte_pdump_init registers its multi-process
        // handler once and is undone by rte_pdump_uninit in Drop, before EAL's cleanup (the
        // guard borrows the Eal).
        let rc = unsafe { sys::rte_pdump_init() };
        if rc != 0 {
            return Err(Error::Pdump(last_error()));
        }
        Ok(Pdump { _eal: PhantomData })
    }
}

impl Drop for Pdump<'_> {
    fn drop(&mut self) {
        // SAFETY: matched with the successful rte_pdump_init of `Eal::pdump`.
        unsafe {
            sys::rte_pdump_uninit();
        }
    }
}
