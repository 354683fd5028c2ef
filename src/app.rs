//! Appliance start-up and shutdown: config -> EAL -> mempool -> ports -> workers, and the main
//! lcore's loop (signals, periodic counters) while the workers run.
//!
//! Shutdown order on SIGINT/SIGTERM (or `run_for`): the stop flag is set, every worker leaves its
//! loop after flushing its tx buffers and publishing its counters, `Eal::run` joins them, then
//! ports are stopped and closed, the mempool is freed, and EAL is cleaned up (drop order).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::agents::{AgentCounters, AgentPlane, AgentSettings, AgentSnapshot};
use crate::config::{Config, Mode, RssMode};
use crate::control::{
    describe_event, CommandRings, ControlServer, EventRing, Live, MigrationLog, OperatorMigrate,
    UserAddresses, Workers,
};
use crate::stats::{ProxyCounters, ProxySnapshot};
use crate::stats::{WorkerCounters, WorkerSnapshot};
use crate::worker::{HandoffRings, NeighbourRings, Passthrough, ProxyWorker, RxPath};
use tsmp_core::dataplane::Dataplane;
use tsmp_core::migrate::cache::Budget;
use tsmp_core::proxy::ProxyCore;
use tsmp_dpdk::{self as dpdk, Eal, LcoreId, Mempool, Port, PortSetup, PortStats};

/// Options that are not part of the configuration file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this long (for tests and benchmarks); run until a signal when `None`.
    pub run_for: Option<Duration>,
    /// Write final counters as JSON here at exit.
    pub stats_json: Option<std::path::PathBuf>,
}

/// Final counters, as written to `--stats-json`.
#[derive(Debug, Serialize)]
pub struct FinalStats {
    /// Per port: name and driver counters.
    pub ports: Vec<PortReport>,
    /// Per worker: lcore and counters.
    pub workers: Vec<WorkerReport>,
    /// Proxy-mode counters per worker (absent in pass-through mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxy: Vec<ProxySnapshot>,
    /// Mempool in use at exit (after ports stopped this should return to 0).
    pub mempool_in_use: u32,
    /// The agent control plane's counters (when `[control] agents` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<AgentSnapshot>,
    /// TSC frequency, for converting cycles.
    pub tsc_hz: u64,
}

/// One port's final counters.
#[derive(Debug, Serialize)]
pub struct PortReport {
    /// Config name.
    pub name: String,
    /// Driver counters.
    pub rx_packets: u64,
    /// Driver counters.
    pub tx_packets: u64,
    /// Driver counters.
    pub rx_missed: u64,
    /// Driver counters.
    pub tx_errors: u64,
}

/// One worker's final counters.
#[derive(Debug, Serialize)]
pub struct WorkerReport {
    /// The lcore.
    pub lcore: u32,
    /// Counters.
    #[serde(flatten)]
    pub counters: WorkerSnapshot,
    /// Busy cycles per packet.
    pub cycles_per_packet: f64,
}

/// Errors of start-up, each with the fix in its message.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// DPDK refused something.
    #[error(transparent)]
    Dpdk(#[from] dpdk::Error),
    /// The exception interface could not be configured.
    #[error("exception path: {0}")]
    Exception(String),
    /// The proxy logic refused the configuration.
    #[error("proxy configuration: {0}")]
    Proxy(String),
    /// The control socket could not be opened.
    #[error("{0}")]
    Control(String),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// Writing the stats file failed.
    #[error("cannot write {0}: {1}")]
    StatsFile(String, std::io::Error),
}

fn rss_policy(r: RssMode) -> Option<bool> {
    match r {
        RssMode::Auto => None,
        RssMode::On => Some(true),
        RssMode::Off => Some(false),
    }
}

/// Runs the appliance until a signal (or `opts.run_for`), then shuts down cleanly.
///
/// # Errors
/// Start-up failed (see [`AppError`]); nothing is left running.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<(), AppError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(AppError::Signals)?;
    }

    let eal = Eal::init(&cfg.eal_args())?;
    let pool = Mempool::new(
        &eal,
        "tsmp_mbufs",
        cfg.mempool.mbufs,
        cfg.mempool.cache,
        cfg.mempool.data_room,
    )?;

    let mut ports = Vec::with_capacity(cfg.ports.len());
    for (i, p) in cfg.ports.iter().enumerate() {
        let id = match (&p.vdev, &p.pci) {
            (Some(v), _) => eal.probe_vdev(v)?,
            (None, Some(a)) => eal.pci_port(a)?,
            (None, None) => unreachable!("validated: a port has pci or vdev"),
        };
        let setup = PortSetup {
            name: p.name.clone(),
            rx_queues: cfg.rx_queues(i),
            tx_queues: cfg.tx_queues(),
            rx_desc: p.rx_desc,
            tx_desc: p.tx_desc,
            promiscuous: p.promiscuous,
            rss: rss_policy(p.rss),
            mtu: p.mtu,
        };
        let port = Port::start(id, &setup, &pool)?;
        let inf = port.info();
        let mac: Vec<String> = inf.mac.iter().map(|b| format!("{b:02x}")).collect();
        println!(
            "port {} {:<8} driver={} mac={} rxq={} txq={} rss={}",
            id,
            p.name,
            inf.driver,
            mac.join(":"),
            inf.rx_queues,
            inf.tx_queues,
            if inf.rss { "on" } else { "off" }
        );
        ports.push(port);
    }
    // The exception path: a TAP port after the configured ones, its kernel side configured with
    // the appliance's addresses (and moved into a namespace when asked).
    let mut exception = None;
    if let Some(x) = &cfg.exception {
        let id = eal.probe_vdev(&format!("net_tap{},iface={}", cfg.ports.len(), x.tap))?;
        let setup = PortSetup {
            name: "exception".into(),
            rx_queues: 1,
            tx_queues: cfg.tx_queues(),
            rx_desc: 512,
            tx_desc: 512,
            promiscuous: false,
            rss: Some(false),
            mtu: None,
        };
        let port = Port::start(id, &setup, &pool)?;
        let kernel_mac = configure_tap(cfg, x).map_err(AppError::Exception)?;
        println!(
            "port {} exception driver={} kernel iface {} ({}) mac {}",
            id,
            port.info().driver,
            x.tap,
            x.netns.as_deref().unwrap_or("root namespace"),
            kernel_mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        );
        exception = Some((ports.len(), port.info().mac, kernel_mac));
        ports.push(port);
    }
    wait_links(&ports, Duration::from_secs(3));

    let counters: Arc<Vec<WorkerCounters>> = Arc::new(
        cfg.workers
            .iter()
            .map(|_| WorkerCounters::default())
            .collect(),
    );
    let hz = eal.tsc_hz();
    let drain_tsc = hz / 1_000_000 * u64::from(cfg.dataplane.drain_us);
    let assignments = cfg.rx_assignments();
    let proxy_counters: Arc<Vec<ProxyCounters>> = Arc::new(
        cfg.workers
            .iter()
            .map(|_| ProxyCounters::default())
            .collect(),
    );
    let nw = cfg.workers.len();
    let ring = cfg.limits.handoff_ring as usize;
    let handoff: HandoffRings = (0..nw)
        .map(|_| Arc::new(crossbeam_queue::ArrayQueue::new(ring)))
        .collect();
    let neighbours: NeighbourRings = (0..nw)
        .map(|_| Arc::new(crossbeam_queue::ArrayQueue::new(1024)))
        .collect();
    let macs: Vec<[u8; 6]> = ports.iter().map(|p| p.info().mac).collect();
    let port_ids: Vec<dpdk::PortId> = ports.iter().map(Port::id).collect();
    let hasher = tsmp_core::proxy::FlowHasher::random();
    let commands: CommandRings = (0..nw)
        .map(|_| Arc::new(crossbeam_queue::ArrayQueue::new(64)))
        .collect();
    let events: EventRing = Arc::new(crossbeam_queue::ArrayQueue::new(4096));
    let workers = Workers::new(
        commands.clone(),
        hasher,
        (cfg.migration.port_min, cfg.migration.port_max),
    );
    let agent_counters = Arc::new(AgentCounters::default());
    let control = if cfg.dataplane.mode == Mode::Proxy {
        Some(
            ControlServer::bind(&cfg.control.cli_socket, workers.clone())
                .map_err(|e| AppError::Control(e.0))?,
        )
    } else {
        None
    };
    // dpdk-dumpcap attaches as a secondary process; DPDK telemetry lists our commands.
    // Neither is needed to forward: a failure is a warning, not a stop.
    let pdump = eal
        .pdump()
        .map_err(|e| eprintln!("warning: {e}; dpdk-dumpcap cannot attach"))
        .ok();
    if let Err(e) = register_telemetry(
        &counters,
        &proxy_counters,
        &agent_counters,
        (cfg.dataplane.mode == Mode::Proxy).then(|| workers.clone()),
    ) {
        eprintln!("warning: {e}; dpdk-telemetry.py will not show /tsmp/ commands");
    }
    println!(
        "observability: dpdk-telemetry.py -f {fp} (/tsmp/stats, /tsmp/flows), dpdk-dumpcap --file-prefix={fp} -i <port>",
        fp = cfg.eal.file_prefix
    );
    let metrics = match cfg.control.metrics {
        Some(addr) => {
            let m = crate::metrics::MetricsServer::bind(addr).map_err(AppError::Control)?;
            println!("metrics: Prometheus text on http://{addr}/metrics");
            Some(m)
        }
        None => None,
    };
    let mut agents = match (cfg.dataplane.mode, cfg.control.agents, cfg.control.names) {
        (Mode::Proxy, Some(listen), Some(names)) => {
            let key = tsmp_proto::msg::load_or_create_key(&cfg.control.key)
                .map_err(|e| AppError::Control(e.to_string()))?;
            let zone = tsmp_proto::names::zone(&cfg.control.zone)
                .map_err(|e| AppError::Control(e.to_string()))?;
            let plane = AgentPlane::bind(
                AgentSettings {
                    listen,
                    names,
                    zone,
                    key,
                    netns: cfg.exception.as_ref().and_then(|x| x.netns.clone()),
                    max_connections: cfg.control.max_agent_connections as usize,
                    deadline: Duration::from_millis(u64::from(cfg.limits.migration_deadline_ms)),
                },
                workers.clone(),
                agent_counters.clone(),
            )
            .map_err(AppError::Control)?;
            println!(
                "agents: MFR on {listen}, naming server {names} zone {}, proxy key {}",
                cfg.control.zone,
                cfg.control.key.display()
            );
            Some(plane)
        }
        _ => None,
    };
    let mut jobs: Vec<(LcoreId, Box<dyn FnOnce() + Send + '_>)> = Vec::new();
    for (i, w) in cfg.workers.iter().enumerate() {
        let qi = u16::try_from(i).unwrap_or(u16::MAX);
        let tx = ports
            .iter()
            .map(|p| p.tx_queue(qi))
            .collect::<Result<Vec<_>, _>>()?;
        let stop = &*stop;
        let c = &counters[i];
        match cfg.dataplane.mode {
            Mode::Passthrough => {
                let mut rx = Vec::new();
                for a in &assignments[i] {
                    // Pass-through: a frame from port 0 leaves on port 1 and vice versa.
                    rx.push(RxPath {
                        rx: ports[a.port].rx_queue(a.queue)?,
                        out: 1 - a.port,
                    });
                }
                let fwd = Passthrough {
                    rx,
                    tx,
                    burst: cfg.dataplane.burst,
                    drain_tsc,
                };
                jobs.push((LcoreId(w.lcore), Box::new(move || fwd.run(stop, c))));
            }
            Mode::Proxy => {
                let mut rx = Vec::new();
                for a in &assignments[i] {
                    rx.push((ports[a.port].rx_queue(a.queue)?, a.port));
                }
                let settings = cfg.proxy_settings(&macs).map_err(AppError::Proxy)?;
                let mut core =
                    ProxyCore::new(&settings, i, nw, hasher, 0, Some(dpdk::advise_hugepages));
                if let Some((xp, mac, kmac)) = exception {
                    core.set_exception(xp, mac, kmac);
                    if i == 0 {
                        rx.push((ports[xp].rx_queue(0)?, xp));
                    }
                }
                // Cached segments keep their mbufs: at most half of the pool, shared out.
                let budget = Budget::new(cfg.limits.worker_cache_bytes).with_buffers(u64::from(
                    cfg.mempool.mbufs / 2 / u32::try_from(cfg.workers.len()).unwrap_or(1).max(1),
                ));
                let dp = Dataplane::new(
                    core,
                    i,
                    cfg.engine_config(),
                    budget,
                    Some(dpdk::advise_hugepages),
                );
                let pw = ProxyWorker {
                    dp,
                    rx,
                    tx,
                    port_ids: port_ids.clone(),
                    pool: &pool,
                    handoff: handoff.clone(),
                    neighbours: neighbours.clone(),
                    burst: cfg.dataplane.burst,
                    drain_tsc,
                    tsc_per_ms: hz / 1000,
                    // 1 cycle .. 2^40 cycles (minutes), 2 significant digits: a few KiB.
                    burst_cycles: hdrhistogram::Histogram::new_with_bounds(1, 1 << 40, 2)
                        .map_err(|e| AppError::Control(format!("burst histogram: {e}")))?,
                    commands: commands[i].clone(),
                    events: events.clone(),
                };
                let pc = &proxy_counters[i];
                jobs.push((LcoreId(w.lcore), Box::new(move || pw.run(stop, c, pc))));
            }
        }
        println!(
            "worker {i} lcore {} polls {:?}",
            w.lcore,
            assignments[i]
                .iter()
                .map(|a| format!("{}:{}", cfg.ports[a.port].name, a.queue))
                .collect::<Vec<_>>()
        );
    }
    println!(
        "forwarding ({:?} mode); Ctrl-C or SIGTERM stops",
        cfg.dataplane.mode
    );

    let has_agents = agents.is_some();
    let build_report = || FinalStats {
        ports: ports
            .iter()
            .map(|p| {
                let s: PortStats = p.stats();
                PortReport {
                    name: p.name().to_owned(),
                    rx_packets: s.ipackets,
                    tx_packets: s.opackets,
                    rx_missed: s.imissed,
                    tx_errors: s.oerrors,
                }
            })
            .collect(),
        workers: cfg
            .workers
            .iter()
            .zip(counters.iter())
            .map(|(w, c)| {
                let s = c.snapshot();
                WorkerReport {
                    lcore: w.lcore,
                    counters: s,
                    cycles_per_packet: s.cycles_per_packet(),
                }
            })
            .collect(),
        proxy: if cfg.dataplane.mode == Mode::Proxy {
            proxy_counters.iter().map(ProxyCounters::snapshot).collect()
        } else {
            Vec::new()
        },
        mempool_in_use: pool.in_use(),
        control: has_agents.then(|| agent_counters.snapshot()),
        tsc_hz: hz,
    };
    let started = Instant::now();
    let interval = cfg.control.stats_interval_s;
    let mut log = MigrationLog::new(cfg.control.migration_history);
    eal.run(&stop, jobs, || {
        let mut last_print = Instant::now();
        let mut last: Vec<WorkerSnapshot> = counters.iter().map(WorkerCounters::snapshot).collect();
        while !stop.load(Ordering::Relaxed) {
            // The slow path's tick: new control connections and the workers' migration events
            // wait at most this long (a migration's pause is on the workers' clock, not this one).
            std::thread::sleep(Duration::from_millis(1));
            let stats = || serde_json::to_value(build_report()).unwrap_or_default();
            if let Some(c) = &control {
                // With agent control, operators may name devices and users.
                let (op, users);
                let (operator, user_addresses) = match agents.as_ref() {
                    Some(p) => {
                        op = |client, vip, to: &str| p.operator_migrate(client, vip, to);
                        users = |u: &str| p.user_addresses(u);
                        (
                            Some(&op as &OperatorMigrate<'_>),
                            Some(&users as &UserAddresses<'_>),
                        )
                    }
                    None => (None, None),
                };
                c.poll(&Live {
                    stats: &stats,
                    tsc_hz: hz,
                    log: &log,
                    operator,
                    user_addresses,
                });
            }
            if let Some(m) = &metrics {
                m.poll(&|| {
                    let bursts = workers.latency(hz).unwrap_or_default();
                    crate::metrics::render(&stats(), &log.pause_stats(), &bursts)
                });
            }
            if let Some(a) = agents.as_mut() {
                a.poll();
            }
            while let Some((w, flow, ev)) = events.pop() {
                println!("migration worker={w} flow={flow} {}", describe_event(&ev));
                log.on_event(w, flow, &ev, tsmp_proto::msg::now_ms());
                if let Some(a) = agents.as_mut() {
                    a.on_event(w, flow, ev);
                }
            }
            if opts.run_for.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            if interval > 0 && last_print.elapsed() >= Duration::from_secs(u64::from(interval)) {
                let dt = last_print.elapsed().as_secs_f64();
                for (i, c) in counters.iter().enumerate() {
                    let now = c.snapshot();
                    let pps = (now.rx_pkts - last[i].rx_pkts) as f64 / dt;
                    let bps = (now.rx_bytes - last[i].rx_bytes) as f64 * 8.0 / dt;
                    println!(
                        "worker {i}: {:.3} Mpps {:.3} Gbit/s rx={} tx={} tx_dropped={} cycles/pkt={:.0}",
                        pps / 1e6,
                        bps / 1e9,
                        now.rx_pkts,
                        now.tx_pkts,
                        now.tx_dropped,
                        now.cycles_per_packet()
                    );
                    last[i] = now;
                }
                last_print = Instant::now();
            }
        }
    })?;

    let report = build_report();
    for p in &report.ports {
        println!(
            "port {:<8} rx={} tx={} rx_missed={} tx_errors={}",
            p.name, p.rx_packets, p.tx_packets, p.rx_missed, p.tx_errors
        );
    }
    for (i, w) in report.workers.iter().enumerate() {
        println!(
            "worker {i} lcore {}: rx={} tx={} tx_dropped={} busy_cycles/pkt={:.1}",
            w.lcore,
            w.counters.rx_pkts,
            w.counters.tx_pkts,
            w.counters.tx_dropped,
            w.cycles_per_packet
        );
    }
    for (i, p) in report.proxy.iter().enumerate() {
        println!(
            "worker {i} proxy: flows created={} closed={} active={} handoffs out={} in={} arp replies={} requests={} drops={:?}",
            p.flows_created, p.flows_closed, p.flows_active, p.handoffs_out, p.handoffs_in, p.arp_replies, p.arp_requests, p.drops
        );
        println!(
            "worker {i} migration engines: active={} rolling cache bytes={} mbufs={} (peak {}) overflow={} segments originated={} migrations started={} done={} cancelled={} reset={}",
            p.migration.engines_active, p.migration.cache_bytes, p.migration.cache_bufs, p.migration.cache_bufs_peak, p.migration.cache_overflow, p.migration.engine_emitted,
            p.migration.migrations_started, p.migration.migrations_done, p.migration.migrations_cancelled, p.migration.migrations_reset
        );
    }
    if let Some(c) = &report.control {
        println!(
            "control: connections={} mfr accepted={} refused={:?} mtr sent={} failed={} incomplete={}",
            c.connections, c.mfr_accepted, c.mfr_refused, c.mtr_sent, c.mtr_failed, c.incomplete
        );
    }
    if let Some(path) = &opts.stats_json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text)
            .map_err(|e| AppError::StatsFile(path.display().to_string(), e))?;
    }
    drop(handoff);
    drop(ports);
    drop(pool);
    drop(pdump);
    drop(eal);
    println!("stopped cleanly");
    Ok(())
}

/// Reads the TAP interface's MAC, moves it into the configured namespace, assigns the ports'
/// addresses and brings it up. Returns the kernel interface's MAC.
fn configure_tap(cfg: &Config, x: &crate::config::ExceptionConfig) -> Result<[u8; 6], String> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{}/address", x.tap))
        .map_err(|e| format!("interface {} has no MAC: {e}", x.tap))?;
    let mut mac = [0u8; 6];
    for (m, h) in mac.iter_mut().zip(text.trim().split(':')) {
        *m = u8::from_str_radix(h, 16).map_err(|_| format!("unreadable MAC `{}`", text.trim()))?;
    }
    let ip = |args: &[&str]| -> Result<(), String> {
        let mut full: Vec<&str> = Vec::new();
        if let Some(ns) = &x.netns {
            full.extend(["-n", ns.as_str()]);
        }
        full.extend_from_slice(args);
        let o = std::process::Command::new("ip")
            .args(&full)
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`ip {}` failed: {}",
                full.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    };
    if let Some(ns) = &x.netns {
        let o = std::process::Command::new("ip")
            .args(["link", "set", "dev", &x.tap, "netns", ns])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "cannot move {} into namespace {ns}: {} (create it first: ip netns add {ns})",
                x.tap,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    for p in &cfg.ports {
        if let Some(cidr) = &p.ip {
            ip(&["addr", "add", cidr, "dev", &x.tap])?;
        }
    }
    ip(&["link", "set", "dev", &x.tap, "up"])?;
    for p in &cfg.ports {
        if let Some(gw) = p.gateway {
            ip(&[
                "route",
                "add",
                "default",
                "via",
                &gw.to_string(),
                "dev",
                &x.tap,
            ])?;
        }
    }
    Ok(mac)
}

fn wait_links(ports: &[Port<'_>], max: Duration) {
    let t = Instant::now();
    while t.elapsed() < max && !ports.iter().all(|p| p.link().up) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in ports {
        let l = p.link();
        println!(
            "port {} {:<8} link {} {} Mbit/s",
            p.id(),
            p.name(),
            if l.up { "up" } else { "DOWN" },
            l.speed_mbps
        );
    }
}

/// DPDK telemetry commands under `/tsmp/`: they run on DPDK's telemetry thread and read only
/// the counters' atomics and, for the flow list, ask the workers through their command rings
/// (as the control socket does).
fn register_telemetry(
    counters: &Arc<Vec<WorkerCounters>>,
    proxy: &Arc<Vec<ProxyCounters>>,
    control: &Arc<AgentCounters>,
    workers: Option<Workers>,
) -> Result<(), AppError> {
    use tsmp_dpdk::{register_telemetry as reg, TelValue};
    let (c, p, a) = (counters.clone(), proxy.clone(), control.clone());
    reg(
        "/tsmp/stats",
        "TSMP appliance counters, per worker (wN_) and control plane. No parameters",
        Box::new(move |_| {
            let mut d = Vec::new();
            let mut put = |k: String, v: u64| d.push((k, TelValue::U64(v)));
            for (i, w) in c.iter().enumerate() {
                let s = w.snapshot();
                put(format!("w{i}_rx_pkts"), s.rx_pkts);
                put(format!("w{i}_tx_pkts"), s.tx_pkts);
                put(format!("w{i}_rx_bytes"), s.rx_bytes);
                put(format!("w{i}_tx_dropped"), s.tx_dropped);
            }
            for (i, x) in p.iter().enumerate() {
                let s = x.snapshot();
                put(format!("w{i}_flows_active"), s.flows_active);
                put(format!("w{i}_flows_created"), s.flows_created);
                put(format!("w{i}_drops"), s.drops.values().sum());
                put(
                    format!("w{i}_migrations_started"),
                    s.migration.migrations_started,
                );
                put(format!("w{i}_migrations_done"), s.migration.migrations_done);
                put(format!("w{i}_cache_bytes"), s.migration.cache_bytes);
            }
            let s = a.snapshot();
            put("mfr_accepted".into(), s.mfr_accepted);
            put("mfr_refused".into(), s.mfr_refused.values().sum());
            d
        }),
    )?;
    if let Some(w) = workers {
        reg(
            "/tsmp/flows",
            "TSMP flows (at most 200): flow_W_S -> device, service, NAT, backend, state. No parameters",
            Box::new(move |_| {
                w.flows(crate::control::FlowFilter::default(), 200)
                    .map(|fl| {
                        fl.into_iter()
                            .map(|f| {
                                (
                                    // Telemetry names: letters, digits and `_` only.
                                    format!("flow_{}", f.id.replace(':', "_")),
                                    TelValue::Str(format!(
                                        "{} -> {} => {} -> {} {} device {} {}",
                                        f.client,
                                        f.vip,
                                        f.snat,
                                        f.backend,
                                        f.state,
                                        f.device,
                                        f.phase
                                    )),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_else(|e| vec![("error".into(), TelValue::Str(e))])
            }),
        )?;
    }
    Ok(())
}
