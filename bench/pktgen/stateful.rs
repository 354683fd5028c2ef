//! The stateful scenarios: the generator's TCP mode (the DPDK loop around [`crate::tcpgen`])
//! and `tsmp-pktgen bench`, the side-by-side runner.

use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use tsmp_dpdk::{rdtsc, tsc_hz, Burst, Mempool, Port, RxQueue, TxQueue};

use crate::harness::{self, Forwarder, GenArgs, GenResult, HarnessArgs, Res};
use crate::tcpgen::{self, Reply, Sizes, TcpCounters, TcpGen, MAX_FLOWS, PROXY_A, PROXY_B};

/// What a TCP-mode run reports.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TcpReport {
    /// Flows asked for.
    pub flows: u32,
    /// Handshakes completed.
    pub established: u64,
    /// From the first SYN to the last handshake, seconds.
    pub setup_seconds: f64,
    /// Handshakes per second over the set-up phase.
    pub setup_rate: f64,
    /// Data-phase measurement window, seconds.
    pub seconds: f64,
    /// Counters over the measurement window (set-up phase excluded).
    pub window: TcpCounters,
    /// Counters over the whole run.
    pub total: TcpCounters,
    /// Data segments lost over the whole data phase (sent - received, after a drain).
    pub lost: u64,
    /// One-way latency through the forwarder, ns: p50, p90, p99, p99.9, max.
    pub latency_ns: [u64; 5],
    /// Offered data segments per second (what the server side sent) in the window.
    pub offered_pps: f64,
    /// Migrations injected during the window (`--migrate-percent`).
    #[serde(default)]
    pub migrations: MigrationReport,
}

/// Migrations injected under load.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct MigrationReport {
    /// Flows chosen to migrate.
    pub chosen: u64,
    /// Requests the proxy accepted (it named a migration port).
    pub accepted: u64,
    /// Requests it refused, and the first refusal's text.
    pub refused: u64,
    /// The first refusal or socket error.
    pub first_error: String,
    /// From the request to the new device's first data segment, us: p50, p90, p99, p99.9, max
    /// (includes waiting for the flow's next turn in the server side's round robin).
    pub time_us: [f64; 5],
    /// From the request to the new device's completed handshake, us (same percentiles).
    pub connect_us: [f64; 5],
    /// The proxy's own pause distribution (`{"migrations": {}}` on its control socket).
    pub proxy_pause_ms: serde_json::Value,
    /// Data segments per second received by the flows that were not chosen, in the window.
    pub others_pps: f64,
}

/// The operator's side of migrations under load: asks the proxy's control socket to migrate
/// each flow of `chosen`, evenly spaced over `span`, and hands each migration port to the
/// generator loop; at the end, reads the proxy's pause distribution.
fn operator(
    socket: std::path::PathBuf,
    chosen: Vec<u32>,
    delay: Duration,
    span: Duration,
    to_loop: std::sync::mpsc::Sender<(u32, u16)>,
    done: std::sync::mpsc::Receiver<()>,
) -> MigrationReport {
    use std::io::{BufRead, BufReader, Write};
    let mut r = MigrationReport {
        chosen: chosen.len() as u64,
        ..MigrationReport::default()
    };
    // One request per connection, as the control socket serves them.
    let ask = |req: serde_json::Value| -> Result<serde_json::Value, String> {
        let err = |e: std::io::Error| format!("{}: {e}", socket.display());
        let mut c = std::os::unix::net::UnixStream::connect(&socket).map_err(err)?;
        writeln!(c, "{req}").map_err(err)?;
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).map_err(err)?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        match v.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => Err(v["error"].as_str().unwrap_or("no answer").to_owned()),
        }
    };
    std::thread::sleep(delay);
    let t0 = Instant::now();
    let n = chosen.len().max(1) as u32;
    for (k, &i) in chosen.iter().enumerate() {
        let due = span * k as u32 / n;
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let (ip, port) = tcpgen::client_of(i);
        let req = serde_json::json!({"migrate": {
            "client": format!("{}:{port}", std::net::Ipv4Addr::from(ip)),
            "vip": format!("{}:{}", std::net::Ipv4Addr::from(tcpgen::VIP), tcpgen::VIP_PORT),
        }});
        match ask(req).map(|ok| ok["migration_port"].as_u64()) {
            Ok(Some(mport)) => {
                r.accepted += 1;
                let _ = to_loop.send((i, u16::try_from(mport).unwrap_or(0)));
            }
            Ok(None) => r.refused += 1,
            Err(e) => {
                r.refused += 1;
                if r.first_error.is_empty() {
                    r.first_error = e;
                }
            }
        }
    }
    // The last migrations complete while the window runs; the distribution comes at the end.
    let _ = done.recv();
    r.proxy_pause_ms = ask(serde_json::json!({"migrations": {}}))
        .map(|v| v["pause_ms"].clone())
        .unwrap_or_default();
    r
}

/// `a - b`, field by field (every counter is a `u64`; through serde so that a new counter
/// needs no line here).
fn sub(a: &TcpCounters, b: &TcpCounters) -> TcpCounters {
    let (Ok(serde_json::Value::Object(mut x)), Ok(serde_json::Value::Object(y))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return TcpCounters::default();
    };
    for (k, v) in &mut x {
        let d = v
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(y[k].as_u64().unwrap_or(0));
        *v = d.into();
    }
    serde_json::from_value(serde_json::Value::Object(x)).unwrap_or_default()
}

/// The generator between its two ports: the flows' state, the four queues it serves, and the
/// latency histogram the client side records into.
struct Wire<'q, 'p> {
    g: TcpGen,
    /// Every rx queue of A (Open vSwitch's PMD sends on its own queue, not the first).
    rxa: Vec<RxQueue<'p>>,
    txa: TxQueue<'p>,
    rxb: Vec<RxQueue<'p>>,
    txb: TxQueue<'p>,
    burst: Burst,
    hist: Histogram<u64>,
    hz: u64,
    pool: &'q Mempool<'q>,
}

impl Wire<'_, '_> {
    /// Receives a burst on one side and sends the in-place replies back out of the same port;
    /// `record`: latency stamps go into the histogram.
    fn serve(&mut self, side_a: bool, record: bool) {
        let (rxs, tx) = if side_a {
            (&mut self.rxa, &mut self.txa)
        } else {
            (&mut self.rxb, &mut self.txb)
        };
        for rx in rxs.iter_mut() {
            if rx.recv(&mut self.burst, 64) == 0 {
                continue;
            }
            Self::answer(
                &mut self.g,
                &mut self.burst,
                tx,
                &mut self.hist,
                self.hz,
                side_a,
                record,
            );
        }
    }

    /// Hands each frame of a received burst to the generator and sends its replies.
    fn answer(
        g: &mut TcpGen,
        burst: &mut Burst,
        tx: &mut TxQueue<'_>,
        hist: &mut Histogram<u64>,
        hz: u64,
        side_a: bool,
        record: bool,
    ) {
        let now = rdtsc();
        for mut m in burst.drain() {
            // Room for a reply longer than the frame (a SYN-ACK with options answering a bare
            // SYN): classification reads the IP length, not the buffer's.
            if m.len() < 128 {
                m.set_len(128);
            }
            let r = if side_a {
                g.on_a(m.data_mut(), now, &mut |ticks| {
                    if record {
                        let ns = u128::from(ticks) * 1_000_000_000 / u128::from(hz.max(1));
                        let _ = hist.record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
                    }
                })
            } else {
                g.on_b(m.data_mut())
            };
            if let Reply::Send(len) = r {
                m.set_len(len);
                let t = tx.push(m);
                g.c.tx_backpressure += u64::from(t.dropped);
            }
        }
    }

    /// Both sides once (latency recorded when `record`).
    fn poll(&mut self, record: bool) {
        self.serve(true, record);
        self.serve(false, false);
    }

    /// Sends what the tx buffers hold. What a full ring refuses was never sent: on B those
    /// are data segments (their flows now have a gap, as after a loss on the server's link).
    fn flush(&mut self) {
        let a = self.txa.flush().dropped;
        let b = self.txb.flush().dropped;
        let c = &mut self.g.c;
        c.tx_backpressure += u64::from(a + b);
        c.data_sent = c.data_sent.saturating_sub(u64::from(b));
    }

    /// Polls and flushes for `d` without sending anything new (the last replies settle).
    fn settle(&mut self, d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            self.poll(false);
            self.flush();
        }
    }

    /// An ARP request for the proxy's address on one side.
    fn ask_proxy(&mut self, side_a: bool) {
        let Some(mut m) = self.pool.alloc() else {
            return;
        };
        m.set_len(60);
        let (mac, ip, target, tx) = if side_a {
            (self.g.mac_a, [198, 18, 0, 1], PROXY_A, &mut self.txa)
        } else {
            (self.g.mac_b, crate::tcpgen::BACKEND, PROXY_B, &mut self.txb)
        };
        TcpGen::arp_request(m.data_mut(), mac, ip, target);
        tx.push(m);
        tx.flush();
    }
}

fn percentiles(h: &Histogram<u64>) -> [u64; 5] {
    if h.is_empty() {
        return [0; 5];
    }
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    ]
}

/// The generator's TCP mode: ARP, set-up of all flows, then data at `--rate` (or as fast as
/// the ports take it) with a warm-up, a measurement window and a drain.
pub fn run_tcp(a: &GenArgs, pool: &Mempool<'_>, ports: &[Port<'_>]) -> Res<GenResult> {
    let o = &a.tcp;
    o.check()?;
    let [pa, pb] = ports else {
        return Err("the TCP mode needs two ports".into());
    };
    let hz = tsc_hz();
    let mut g = TcpGen::new(
        o.flows,
        Sizes::parse(&o.sizes)?,
        pa.info().mac,
        pb.info().mac,
    );
    g.check_every = o.check_every.max(1);
    let q = |e: tsmp_dpdk::Error| e.to_string();
    let rx = |p| {
        (0..a.rx_queues)
            .map(|i| Port::rx_queue(p, i))
            .collect::<Result<_, _>>()
    };
    let mut w = Wire {
        g,
        rxa: rx(pa).map_err(q)?,
        txa: pa.tx_queue(0).map_err(q)?,
        rxb: rx(pb).map_err(q)?,
        txb: pb.tx_queue(0).map_err(q)?,
        burst: Burst::default(),
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| format!("histogram: {e}"))?,
        hz,
        pool,
    };
    let mut out = Burst::default();
    w.txa.set_threshold(32);
    w.txb.set_threshold(32);

    // The proxy's MACs, by ARP on both sides.
    let t0 = Instant::now();
    let mut last_ask = None::<Instant>;
    while w.g.proxy_a.is_none() || w.g.proxy_b.is_none() {
        if last_ask.is_none_or(|t| t.elapsed() > Duration::from_millis(100)) {
            w.ask_proxy(true);
            w.ask_proxy(false);
            last_ask = Some(Instant::now());
        }
        w.poll(false);
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("the forwarder did not answer ARP for 198.18.0.254 / 198.19.0.254 within 10 s (is it the proxy with bench-proxy-memif.toml?)".into());
        }
    }

    // Set-up: SYNs as fast as the port takes them, at most `inflight` handshakes open at a
    // time (more would only overflow the rings); when handshakes stop completing for 200 ms,
    // SYNs of the unfinished flows go again (lost SYNs), until 5 s pass without progress.
    let setup_start = Instant::now();
    let mut last_gain = setup_start;
    let mut last_try = setup_start;
    let mut last_count = 0u64;
    let mut retry_cursor = 0u32;
    let mut retried = 0u64;
    let mut last_progress = Instant::now();
    let open_max = o.inflight.max(32);
    while w.g.established() < u64::from(o.flows) {
        let open = u64::from(w.g.next_syn).saturating_sub(w.g.established());
        let want = (u64::from(o.flows - w.g.next_syn))
            .min(32)
            .min(open_max.saturating_sub(open));
        if want > 0 && pool.alloc_bulk(&mut out, want as usize) {
            for m in out.iter_mut() {
                m.set_len(60);
                if let Some(len) = w.g.next_syn(m.data_mut()) {
                    m.set_len(len);
                }
            }
            let t = w.txa.push_burst(&mut out);
            w.g.c.tx_backpressure += u64::from(t.dropped);
        }
        w.poll(false);
        w.flush();
        if w.g.established() != last_count {
            last_count = w.g.established();
            last_gain = Instant::now();
            last_try = last_gain;
        } else if last_gain.elapsed() > Duration::from_secs(5) {
            break;
        } else if last_try.elapsed() > Duration::from_millis(200) && open > 0 {
            // At most `open_max` SYNs again per pass, from where the last pass stopped.
            let mut sent = 0;
            for _ in 0..w.g.next_syn {
                if retry_cursor >= w.g.next_syn {
                    retry_cursor = 0;
                }
                let i = retry_cursor;
                retry_cursor += 1;
                if let Some(mut m) = pool.alloc() {
                    m.set_len(60);
                    if let Some(len) = w.g.retry_syn(i, m.data_mut()) {
                        m.set_len(len);
                        w.txa.push(m);
                        sent += 1;
                        if sent >= open_max {
                            break;
                        }
                    }
                }
            }
            w.txa.flush();
            retried += sent;
            last_try = Instant::now();
        }
        if a.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "[tcp] set-up {:.1} s: {} of {} flows ({:.0} /s, {retried} SYNs sent again)",
                setup_start.elapsed().as_secs_f64(),
                w.g.established(),
                o.flows,
                w.g.established() as f64 / setup_start.elapsed().as_secs_f64()
            );
        }
    }
    let last_est = last_gain;
    let setup_seconds = last_est.duration_since(setup_start).as_secs_f64().max(1e-9);
    let setup_rate = w.g.established() as f64 / setup_seconds;
    // The last handshake ACKs reach the server side.
    w.settle(Duration::from_millis(200));

    // Migrations: the chosen flows, evenly spread over the flow indices; the operator thread
    // requests them over the first 80% of the window, the loop plays their new devices.
    // In range: 0..=flows (TcpOptions::check).
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    let n_mig = (f64::from(o.flows) * o.migrate_percent / 100.0).round() as u32;
    let chosen: Vec<u32> = (0..n_mig)
        .map(|k| (u64::from(k) * u64::from(o.flows) / u64::from(n_mig.max(1))) as u32)
        .collect();
    for &i in &chosen {
        w.g.choose_for_migration(i);
    }
    let (to_loop, from_op) = std::sync::mpsc::channel::<(u32, u16)>();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let op = (!chosen.is_empty()).then(|| {
        let socket = a.control.clone().unwrap_or_else(|| a.dir.join("tsmp.sock"));
        let (delay, span) = (
            Duration::from_secs_f64(a.warmup),
            Duration::from_secs_f64(a.duration * 0.8),
        );
        std::thread::spawn(move || operator(socket, chosen, delay, span, to_loop, end_rx))
    });
    // New devices whose SYN-ACK has not come yet: (flow, migration port, when sent).
    let mut targets: Vec<(u32, u16, u64)> = Vec::new();

    // Data: warm-up, window, drain.
    let start = rdtsc();
    let warm_end = start + harness::secs_to_tsc(a.warmup, hz);
    let end = warm_end + harness::secs_to_tsc(a.duration, hz);
    let rate = o.rate;
    let mut measuring = false;
    let mut at_start = TcpCounters::default();
    let at_end;
    let mut t_start = 0u64;
    let mut next_report = start + hz;
    let mut i = 0u32;
    loop {
        let now = rdtsc();
        let mut allowed = if rate > 0 {
            let due = u128::from(now - start) * u128::from(rate) / u128::from(hz.max(1));
            let due = u64::try_from(due).unwrap_or(u64::MAX);
            due.saturating_sub(w.g.c.data_sent).min(32) as usize
        } else {
            32
        };
        if o.inflight > 0 {
            let in_flight = w.g.c.data_sent.saturating_sub(w.g.c.data_received);
            allowed = allowed.min(o.inflight.saturating_sub(in_flight) as usize);
        }
        if allowed > 0 && pool.alloc_bulk(&mut out, allowed) {
            let mut k = 0;
            for m in out.iter_mut() {
                m.set_len(1514);
                if let Some(len) = w.g.next_data(m.data_mut(), now) {
                    m.set_len(len);
                    k += 1;
                } else {
                    break;
                }
            }
            out.truncate(k);
            let t = w.txb.push_burst(&mut out);
            // Segments the port refused were never sent (their flows now have a gap, as after
            // a loss on the server's own link).
            w.g.c.tx_backpressure += u64::from(t.dropped);
            w.g.c.data_sent -= u64::from(t.dropped);
        }
        w.poll(measuring);
        i = i.wrapping_add(1);
        if i % 16 == 0 {
            let now = rdtsc();
            while let Ok((f, mport)) = from_op.try_recv() {
                w.g.migration_requested(f, now);
                targets.push((f, mport, 0));
            }
            // A new device's SYN, again every 200 ms until its handshake completes.
            targets.retain(|&(f, _, _)| !w.g.moved(f));
            for t in &mut targets {
                if t.2 == 0 || now.wrapping_sub(t.2) > hz / 5 {
                    t.2 = now;
                    if let Some(mut m) = pool.alloc() {
                        m.set_len(60);
                        if let Some(len) = w.g.target_syn(t.0, t.1, m.data_mut()) {
                            m.set_len(len);
                            w.txa.push(m);
                        }
                    }
                }
            }
            w.flush();
            if !measuring && now >= warm_end {
                measuring = true;
                at_start = w.g.c.clone();
                t_start = now;
            }
            if now >= end {
                at_end = (w.g.c.clone(), now);
                break;
            }
            if a.progress && now >= next_report {
                next_report = now + hz;
                let p = percentiles(&w.hist);
                eprintln!(
                    "[tcp] data {:.1} s: {} segments received, p99 {:.1} us",
                    (now - start) as f64 / hz as f64,
                    w.g.c.data_received,
                    p[2] as f64 / 1e3
                );
            }
        }
    }
    let (c_end, t_end) = at_end;
    w.settle(Duration::from_millis(300));
    let _ = end_tx.send(());
    let seconds = (t_end - t_start) as f64 / hz as f64;
    let window = sub(&c_end, &at_start);
    let mut migrations = match op {
        Some(h) => h.join().unwrap_or_default(),
        None => MigrationReport::default(),
    };
    let us = |cycles: &[u64]| -> Res<[f64; 5]> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .map_err(|e| format!("histogram: {e}"))?;
        for &c in cycles {
            h.saturating_record((u128::from(c) * 1_000_000 / u128::from(hz.max(1))) as u64);
        }
        Ok(if h.is_empty() {
            [0.0; 5]
        } else {
            percentiles(&h).map(|v| v as f64)
        })
    };
    migrations.time_us = us(&w.g.migration_cycles)?;
    migrations.connect_us = us(&w.g.connect_cycles)?;
    migrations.others_pps =
        (window.data_received - window.data_received_migrating) as f64 / seconds;
    let report = TcpReport {
        flows: o.flows,
        established: w.g.established(),
        setup_seconds,
        setup_rate,
        seconds,
        offered_pps: window.data_sent as f64 / seconds,
        lost: w.g.c.data_sent.saturating_sub(w.g.c.data_received),
        latency_ns: percentiles(&w.hist),
        window,
        total: w.g.c.clone(),
        migrations,
    };
    Ok(GenResult {
        sent: report.window.data_sent,
        tx_backpressure: report.window.tx_backpressure,
        received: report.window.data_received + report.window.acks_received,
        received_bytes: report.window.data_wire_bytes,
        seconds,
        tcp: Some(report),
        ..GenResult::default()
    })
}

/// What a TCP-mode run carries: the options `tcp` takes and the generator process receives.
#[derive(Debug, Clone, Args)]
pub struct TcpOptions {
    /// Flows to set up and carry.
    #[arg(long, default_value_t = 1000)]
    pub flows: u32,
    /// Data frame size on the wire (64..=1518) or `imix`.
    #[arg(long, default_value = "64")]
    pub sizes: String,
    /// Data segments per second (0: as fast as the ports take them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Check checksums and flow identity of every n-th frame received (1: all).
    #[arg(long, default_value_t = CHECK_EVERY)]
    pub check_every: u64,
    /// Data segments in flight at most (sent, not yet received), over all flows: keeps a
    /// max-rate run at the forwarder's capacity instead of overflowing rings (0: no limit,
    /// the overload scenario).
    #[arg(long, default_value_t = INFLIGHT)]
    pub inflight: u64,
    /// Percent of the flows to migrate during the measurement window (0..=100), through the
    /// proxy's control socket, the generator playing each new device.
    #[arg(long, default_value_t = 0.0)]
    pub migrate_percent: f64,
    /// Run the flows through Open vSwitch's DPDK datapath doing the same NAT with conntrack
    /// (Debian's openvswitch-switch-dpdk, started by hand in the work directory) instead of
    /// the proxy.
    #[arg(long)]
    pub ovs: bool,
}

/// Default of `--check-every`.
const CHECK_EVERY: u64 = 64;
/// Default of `--inflight`.
const INFLIGHT: u64 = 512;

impl TcpOptions {
    /// `flows` flows of `sizes` frames as fast as the forwarder takes them, with the defaults.
    fn max_rate(flows: u32, sizes: &str) -> TcpOptions {
        TcpOptions {
            flows,
            sizes: sizes.to_owned(),
            rate: 0,
            check_every: CHECK_EVERY,
            inflight: INFLIGHT,
            migrate_percent: 0.0,
            ovs: false,
        }
    }

    /// Refuses what no run can do, before anything starts.
    fn check(&self) -> Res<()> {
        if self.flows == 0 || self.flows > MAX_FLOWS {
            return Err(format!("--flows {}: 1..={MAX_FLOWS}", self.flows));
        }
        if !(0.0..=100.0).contains(&self.migrate_percent) {
            return Err(format!(
                "--migrate-percent {}: give a percentage of the flows, 0..=100",
                self.migrate_percent
            ));
        }
        if self.ovs && self.migrate_percent > 0.0 {
            return Err(
                "--migrate-percent needs the proxy: Open vSwitch does not migrate flows".into(),
            );
        }
        Ok(())
    }

    /// The same options on the generator process's command line.
    fn gen_args(&self) -> Vec<String> {
        [
            ("--flows", self.flows.to_string()),
            ("--sizes", self.sizes.clone()),
            ("--rate", self.rate.to_string()),
            ("--check-every", self.check_every.to_string()),
            ("--inflight", self.inflight.to_string()),
            ("--migrate-percent", self.migrate_percent.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
    }
}

/// Arguments of `tcp`.
#[derive(Debug, Args)]
pub struct TcpArgs {
    #[command(flatten)]
    pub tcp: TcpOptions,
    /// Seconds measured.
    #[arg(long, default_value_t = 4.0)]
    pub duration: f64,
    /// The proxy's profile.
    #[arg(long, default_value_os_t = proxy_config())]
    pub proxy_config: std::path::PathBuf,
    /// Print the whole report as one JSON line (prefixed `REPORT `).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

/// One stateful run; fails when flows did not complete their handshakes or a check failed.
pub fn tcp(a: &TcpArgs) -> Res<()> {
    let dir = harness::work_dir(&a.harness.dir)?;
    let (t, stats) = tcp_run(&dir, &a.proxy_config, &a.tcp, a.duration, a.harness.no_huge)?;
    if a.json {
        println!("REPORT {}", serde_json::to_string(&t).unwrap_or_default());
    }
    print_tcp(&t);
    if a.tcp.ovs {
        println!(
            "ovs-dpdk: {:.1} processing cycles per packet (pmd-stats-show), {} conntrack entries at the end",
            stats["cycles_per_packet"].as_f64().unwrap_or(f64::NAN),
            stats["conntrack_entries"]
        );
    } else {
        print_proxy(&stats, a.tcp.flows);
    }
    let _ = std::fs::remove_dir_all(&dir);
    tcp_verdict(&t)
}

/// The proxy's side of a stateful run, from its final counters.
fn print_proxy(stats: &serde_json::Value, flows: u32) {
    let (table, engine) = bytes_per_flow(stats, flows);
    println!(
        "proxy worker: {:.1} busy cycles per packet (its capacity on this core: {:.2} Mpps)",
        stats["workers"][0]["cycles_per_packet"]
            .as_f64()
            .unwrap_or(f64::NAN),
        capacity_mpps(stats)
    );
    let p = &stats["proxy"][0];
    println!(
        "proxy: flows_created {}, flows_active {}, {:.0} B per flow entry (table, for its capacity) + {:.0} B engine per live flow; mempool in use at exit {}; drops {}; rx {} tx {} tx_dropped {}; ports {}",
        p["flows_created"], p["flows_active"], table, engine, stats["mempool_in_use"], p["drops"],
        stats["workers"][0]["rx_pkts"], stats["workers"][0]["tx_pkts"], stats["workers"][0]["tx_dropped"], stats["ports"]
    );
}

/// The generator's side of a stateful run, in words.
pub fn print_tcp(t: &TcpReport) {
    let w = &t.window;
    println!(
        "flows: {} of {} established in {:.3} s ({:.0} handshakes/s)",
        t.established, t.flows, t.setup_seconds, t.setup_rate
    );
    println!(
        "data: offered {:.3} Mpps, received {:.3} Mpps ({:.2} Gbit/s on the wire), forwarded with ACKs {:.3} Mpps; lost {} of {}",
        t.offered_pps / 1e6,
        w.data_received as f64 / t.seconds / 1e6,
        w.data_wire_bytes as f64 * 8.0 / t.seconds / 1e9,
        fwd_mpps(t),
        t.lost,
        t.total.data_sent
    );
    println!(
        "latency (one way through the forwarder): p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us ({} stamps)",
        t.latency_ns[0] as f64 / 1e3,
        t.latency_ns[1] as f64 / 1e3,
        t.latency_ns[2] as f64 / 1e3,
        t.latency_ns[3] as f64 / 1e3,
        t.latency_ns[4] as f64 / 1e3,
        t.total.stamps
    );
    println!(
        "checks: {} frames checked, {} bad checksums, {} unknown, {} out of order, {} resets",
        t.total.checked,
        t.total.bad_checksum,
        t.total.unknown,
        t.total.out_of_order,
        t.total.resets
    );
    let mg = &t.migrations;
    if mg.chosen > 0 {
        println!(
            "migrations: {} chosen, {} accepted, {} refused, {} new devices connected, {} received data, {} old devices closed{}",
            mg.chosen,
            mg.accepted,
            mg.refused,
            t.total.migrations_connected,
            t.total.migrations_completed,
            t.total.old_devices_closed,
            if mg.first_error.is_empty() { String::new() } else { format!(" (first refusal: {})", mg.first_error) }
        );
        println!(
            "migration time, request to the new device connected: p50 {:.0} us, p99 {:.0} us, max {:.0} us; to its first data: p50 {:.0} us, p99 {:.0} us, max {:.0} us; the proxy's pause (ms) {}",
            mg.connect_us[0], mg.connect_us[2], mg.connect_us[4],
            mg.time_us[0], mg.time_us[2], mg.time_us[4], mg.proxy_pause_ms
        );
        println!(
            "flows not migrating: {:.3} Mpps received ({:.0} pps per flow)",
            mg.others_pps / 1e6,
            mg.others_pps / f64::from(t.flows - u32::try_from(mg.chosen).unwrap_or(0)).max(1.0)
        );
    }
}

/// A stateful run's pass/fail: handshakes, migrations and the generator's checks.
pub(crate) fn tcp_verdict(t: &TcpReport) -> Res<()> {
    if t.established < u64::from(t.flows) {
        return Err(format!(
            "{} of {} flows did not complete their handshake",
            u64::from(t.flows) - t.established,
            t.flows
        ));
    }
    if t.migrations.chosen > 0 && t.total.migrations_completed < t.migrations.chosen {
        return Err(format!(
            "{} of {} migrations did not complete (the new device received no data)",
            t.migrations.chosen - t.total.migrations_completed,
            t.migrations.chosen
        ));
    }
    if t.total.bad_checksum + t.total.unknown + t.total.resets > 0 {
        return Err("frames failed the generator's checks (see above)".into());
    }
    Ok(())
}

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Flow counts for the rate-vs-flows scenario (64 B frames).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,65536,1000000,4000000"
    )]
    pub flows: Vec<u32>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 4.0)]
    pub duration: f64,
    /// Rounds of the 64 B comparison (testpmd io, 5tswap and the proxy interleaved).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Flow counts at which Open vSwitch's conntrack NAT runs (skipped when it is not
    /// installed: scripts/setup.sh --bench).
    #[arg(long, value_delimiter = ',', default_value = "1000,65536,1000000")]
    pub ovs_flows: Vec<u32>,
    /// Flows of the migration scenarios (1% and 10% of them migrate during the window).
    #[arg(long, default_value_t = 65536)]
    pub migration_flows: u32,
    /// Rounds of the migration scenarios (each: without, 1%, 10%; ratios taken within a round).
    #[arg(long, default_value_t = 5)]
    pub migration_rounds: u32,
    /// Offered load of the overload scenario, as multiples of the proxy's measured capacity.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2,4")]
    pub overload: Vec<f64>,
    /// Where the plot goes (SVG).
    #[arg(long, default_value = "target/bench/rate-vs-flows.svg")]
    pub plot: std::path::PathBuf,
    /// The proxy's profile for the stateful runs.
    #[arg(long, default_value_os_t = proxy_config())]
    pub proxy_config: std::path::PathBuf,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

fn proxy_config() -> std::path::PathBuf {
    harness::workspace_root().join("dpdk-config/bench-proxy-memif.toml")
}

/// One stateful run through the proxy; its report and the proxy's final counters.
pub fn tcp_run(
    dir: &std::path::Path,
    config: &std::path::Path,
    o: &TcpOptions,
    duration: f64,
    no_huge: bool,
) -> Res<(TcpReport, serde_json::Value)> {
    let mut gen_args = vec![
        "--mode".to_owned(),
        "tcp".to_owned(),
        "--duration".to_owned(),
        duration.to_string(),
        "--progress".to_owned(),
    ];
    gen_args.extend(o.gen_args());
    if no_huge {
        gen_args.push("--no-huge".to_owned());
    }
    o.check()?;
    let kind = if o.ovs {
        Forwarder::OvsDpdk
    } else {
        Forwarder::TsmpProxy
    };
    if o.ovs {
        // Open vSwitch gives each of its threads a tx queue (its PMD's is the second).
        gen_args.extend(["--rx-queues".to_owned(), "2".to_owned()]);
    }
    let (r, _, stats) = harness::run_once(kind, dir, config, &gen_args, no_huge)?;
    let t = r.tcp.ok_or("the generator returned no TCP report")?;
    Ok((t, stats))
}

#[derive(Debug, Clone)]
struct Row {
    scenario: String,
    forwarder: &'static str,
    frame: String,
    flows: u64,
    mpps: f64,
    gbps: f64,
    extra: String,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Forwarded packets per second through the proxy: data one way, ACKs the other.
/// The proxy worker's capacity from its own busy cycles per packet (what it would forward if
/// the generator, which shares the other core with the proxy's slow path, kept it busy).
fn capacity_mpps(stats: &serde_json::Value) -> f64 {
    let cpp = stats["workers"][0]["cycles_per_packet"]
        .as_f64()
        .unwrap_or(f64::NAN);
    stats["tsc_hz"].as_f64().unwrap_or(f64::NAN) / cpp / 1e6
}

fn fwd_mpps(t: &TcpReport) -> f64 {
    (t.window.data_received + t.window.acks_received) as f64 / t.seconds / 1e6
}

/// Bytes per flow from the proxy's counters: the table's (for its capacity) and the engine's
/// (per live flow).
fn bytes_per_flow(stats: &serde_json::Value, flows: u32) -> (f64, f64) {
    let p = &stats["proxy"][0];
    let table = p["flow_table_bytes"].as_f64().unwrap_or(f64::NAN);
    let cap = p["flow_capacity"].as_f64().unwrap_or(f64::NAN);
    let engines = p["engine_bytes"].as_f64().unwrap_or(f64::NAN);
    let active = p["engines_active"]
        .as_f64()
        .unwrap_or(f64::from(flows))
        .max(1.0);
    (table / cap, engines / active)
}

/// The side-by-side benchmark: stateless forwarding (testpmd io and 5tswap) against the
/// proxy's established flows at 64 B, then the proxy alone across frame sizes and flow-table
/// sizes, and a table of absolute figures and ratios, plus a plot of rate vs flows.
pub fn bench(a: &BenchArgs) -> Res<()> {
    let dir = harness::work_dir(&a.harness.dir)?;
    let nh = a.harness.no_huge;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# memif harness: generator+sink on lcore 0, forwarder worker on lcore 1; {} s per run; loadavg at start: {}",
        a.duration,
        load.trim()
    );
    let mut rows: Vec<Row> = Vec::new();

    // (1) 64 B: testpmd io, testpmd 5tswap (stateless frames) and the proxy (1K established
    // flows, data + ACKs), interleaved rounds, medians.
    let mut io = Vec::new();
    let mut swap = Vec::new();
    let mut px = Vec::new();
    let mut px_last = None;
    let with_ovs = crate::ovs::available();
    let mut ovs_m = Vec::new();
    for round in 0..a.rounds {
        for kind in [Forwarder::TestpmdIo, Forwarder::Testpmd5tswap] {
            let (r, _) = harness::rate_run(kind, &dir, &a.harness.config, 64, a.duration, nh)?;
            let m = r.received as f64 / r.seconds / 1e6;
            eprintln!("  64 B round {round} {:<28} {m:7.3} Mpps", kind.label());
            if kind == Forwarder::TestpmdIo {
                io.push(m)
            } else {
                swap.push(m)
            }
        }
        let (t, s) = tcp_run(
            &dir,
            &a.proxy_config,
            &TcpOptions::max_rate(1000, "64"),
            a.duration,
            nh,
        )?;
        let m = fwd_mpps(&t);
        eprintln!(
            "  64 B round {round} {:<28} {m:7.3} Mpps",
            "tsmp-proxy 1K flows"
        );
        px.push(m);
        px_last = Some((t, s));
        if with_ovs {
            let mut o = TcpOptions::max_rate(1000, "64");
            o.ovs = true;
            let (t, _) = tcp_run(&dir, &a.proxy_config, &o, a.duration, nh)?;
            let m = fwd_mpps(&t);
            eprintln!(
                "  64 B round {round} {:<28} {m:7.3} Mpps",
                "ovs-dpdk 1K flows"
            );
            ovs_m.push(m);
        }
    }
    // Best of the rounds: on a shared host interference only slows a run down, and testpmd's
    // rate here is bimodal between runs (~5 or ~14 Mpps); medians would mix the two modes.
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (io_m, swap_m, px_m) = (best(&io), best(&swap), best(&px));
    let gb = |mpps: f64, frame: f64| mpps * frame * 8.0 / 1e3;
    rows.push(Row {
        scenario: "established, 64 B".into(),
        forwarder: "dpdk-testpmd io",
        frame: "64".into(),
        flows: 0,
        mpps: io_m,
        gbps: gb(io_m, 64.0),
        extra: String::new(),
    });
    rows.push(Row {
        scenario: "established, 64 B".into(),
        forwarder: "dpdk-testpmd 5tswap",
        frame: "64".into(),
        flows: 0,
        mpps: swap_m,
        gbps: gb(swap_m, 64.0),
        extra: String::new(),
    });
    let (t, _) = px_last.ok_or("no proxy run")?;
    rows.push(Row {
        scenario: "established, 64 B".into(),
        forwarder: "tsmp-proxy",
        frame: "64".into(),
        flows: 1000,
        mpps: px_m,
        gbps: gb(px_m, 64.0),
        extra: format!(
            "p50/p99 {:.1}/{:.1} us",
            t.latency_ns[0] as f64 / 1e3,
            t.latency_ns[2] as f64 / 1e3
        ),
    });

    let ovs_1k = (!ovs_m.is_empty()).then(|| best(&ovs_m));
    if let Some(m) = ovs_1k {
        rows.push(Row {
            scenario: "established, 64 B".into(),
            forwarder: "ovs-dpdk conntrack NAT",
            frame: "64".into(),
            flows: 1000,
            mpps: m,
            gbps: gb(m, 64.0),
            extra: format!("tsmp-proxy / ovs-dpdk: **{:.2}x**", px_m / m),
        });
    }

    // (2) The proxy across frame sizes (1K flows).
    for size in ["1500", "imix"] {
        let (t, _) = tcp_run(
            &dir,
            &a.proxy_config,
            &TcpOptions::max_rate(1000, size),
            a.duration,
            nh,
        )?;
        let m = fwd_mpps(&t);
        let g = t.window.data_wire_bytes as f64 * 8.0 / t.seconds / 1e9;
        rows.push(Row {
            scenario: format!("established, {size}"),
            forwarder: "tsmp-proxy",
            frame: size.into(),
            flows: 1000,
            mpps: m,
            gbps: g,
            extra: format!(
                "data {:.2} Mpps, p50/p99 {:.1}/{:.1} us",
                t.window.data_received as f64 / t.seconds / 1e6,
                t.latency_ns[0] as f64 / 1e3,
                t.latency_ns[2] as f64 / 1e3
            ),
        });
    }

    // (3) Rate vs flow-table size, set-up rate, memory per flow (64 B).
    let mut curve = Vec::new();
    for &n in &a.flows {
        let (t, s) = tcp_run(
            &dir,
            &a.proxy_config,
            &TcpOptions::max_rate(n, "64"),
            a.duration,
            nh,
        )?;
        let m = fwd_mpps(&t);
        let (table, engine) = bytes_per_flow(&s, n);
        curve.push((n, m));
        rows.push(Row { scenario: "rate vs flows".into(), forwarder: "tsmp-proxy", frame: "64".into(), flows: u64::from(n), mpps: m, gbps: gb(m, 64.0), extra: format!("set-up {:.2} M/s ({} of {n} in {:.2} s); {:.0} B/flow table + {:.0} B engine; mbufs: {} at most in the caches, {} in use at exit; lost {}", t.setup_rate / 1e6, t.established, t.setup_seconds, table, engine, s["proxy"][0]["cache_bufs_peak"], s["mempool_in_use"], t.lost) });
    }

    // (3b) Open vSwitch at the same flow counts (conntrack holds two entries per flow).
    let mut ovs_curve = Vec::new();
    if with_ovs {
        for &n in &a.ovs_flows {
            let mut o = TcpOptions::max_rate(n, "64");
            o.ovs = true;
            let (t, s) = tcp_run(&dir, &a.proxy_config, &o, a.duration, nh)?;
            let m = fwd_mpps(&t);
            ovs_curve.push((n, m));
            rows.push(Row {
                scenario: "rate vs flows".into(),
                forwarder: "ovs-dpdk conntrack NAT",
                frame: "64".into(),
                flows: u64::from(n),
                mpps: m,
                gbps: gb(m, 64.0),
                extra: format!(
                    "set-up {:.2} M/s ({} of {n} in {:.2} s); {} conntrack entries; {:.0} cycles/packet",
                    t.setup_rate / 1e6,
                    t.established,
                    t.setup_seconds,
                    s["conntrack_entries"],
                    s["cycles_per_packet"].as_f64().unwrap_or(f64::NAN)
                ),
            });
        }
    } else {
        println!("# ovs-dpdk: not installed, skipped (sudo scripts/setup.sh --bench installs it)");
    }

    // (4) Forwarding while 1% and 10% of the flows migrate, each round a run without
    // migrations, one with 1% and one with 10%, back to back: the per-flow rate of the flows
    // that do not migrate against the same in the round's run without (the host's load drifts
    // between rounds by more than the effect measured: ratios are taken within a round, then
    // the median over rounds), and the migrations' pause.
    let nm = a.migration_flows;
    let mut per_flow: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut fwd: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut capacity: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut last: [Option<TcpReport>; 3] = [None, None, None];
    let mut ratio: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut cap_ratio: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..a.migration_rounds.max(1) {
        for (k, pct) in [0.0, 1.0, 10.0].into_iter().enumerate() {
            let mut o = TcpOptions::max_rate(nm, "64");
            o.migrate_percent = pct;
            let (t, s) = tcp_run(&dir, &a.proxy_config, &o, a.duration, nh)?;
            capacity[k].push(capacity_mpps(&s));
            let others = f64::from(nm) - t.migrations.chosen as f64;
            // Without migrations every flow is one of the others (run_tcp sets others_pps
            // whatever the percentage).
            let pf = t.migrations.others_pps / others.max(1.0);
            eprintln!(
                "  migrating {pct}% round {round}: {:.3} Mpps forwarded, {pf:.0} pps per flow not migrating, {} of {} migrations completed",
                fwd_mpps(&t),
                t.total.migrations_completed,
                t.migrations.chosen
            );
            per_flow[k].push(pf);
            fwd[k].push(fwd_mpps(&t));
            if let (Some(&p0), Some(&c0), Some(&c)) =
                (per_flow[0].last(), capacity[0].last(), capacity[k].last())
            {
                ratio[k].push(pf / p0);
                cap_ratio[k].push(c / c0);
            }
            last[k] = Some(t);
        }
    }
    let mut mig_ratio = Vec::new();
    for (k, pct) in [(0usize, 0.0), (1, 1.0), (2, 10.0)] {
        let t = last[k].take().ok_or("no migration run")?;
        let pf = median(&mut per_flow[k]);
        let m = median(&mut fwd[k]);
        let cap = median(&mut capacity[k]);
        let mg = &t.migrations;
        let extra = if k == 0 {
            format!("{pf:.0} pps per flow, the proxy's capacity {cap:.2} Mpps (the reference)")
        } else {
            let rounds: Vec<String> = ratio[k].iter().map(|v| format!("{v:.2}")).collect();
            let (r, c) = (median(&mut ratio[k]), median(&mut cap_ratio[k]));
            mig_ratio.push((pct, r, c));
            format!(
                "flows not migrating: **{r:.2}x** the reference per flow (rounds: {}); the proxy's capacity {cap:.2} Mpps (**{c:.2}x**); {} of {} migrations completed; new device connected p50/p99 {:.0}/{:.0} us; the proxy's pause p50/p99/max {}/{}/{} ms",
                rounds.join(" "),
                t.total.migrations_completed,
                mg.chosen,
                mg.connect_us[0],
                mg.connect_us[2],
                mg.proxy_pause_ms["p50"],
                mg.proxy_pause_ms["p99"],
                mg.proxy_pause_ms["max"]
            )
        };
        rows.push(Row {
            scenario: format!("{pct}% of flows migrating"),
            forwarder: "tsmp-proxy",
            frame: "64".into(),
            flows: u64::from(nm),
            mpps: m,
            gbps: gb(m, 64.0),
            extra,
        });
    }

    // (5) Overload: fixed offered rates around the proxy's capacity (1K flows, no in-flight
    // bound): what it forwards, what is refused at its rings, and that nothing collapses.
    let cap = px_m / 2.0; // data segments per second (the forwarded rate counts ACKs too)
    for &x in &a.overload {
        let mut o = TcpOptions::max_rate(1000, "64");
        o.inflight = 0;
        if !(x > 0.0 && x.is_finite()) {
            return Err(format!(
                "--overload {x}: give positive multiples of the capacity, e.g. 0.5,1,2,4"
            ));
        }
        // Positive after the check above.
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
        let rate = (cap * 1e6 * x) as u64;
        o.rate = rate.max(1);
        let (t, s) = tcp_run(&dir, &a.proxy_config, &o, a.duration, nh)?;
        // memif has no drop counter: a full ring pushes back on the sender, so what the proxy
        // cannot take is what the generator could not enqueue.
        let offered = o.rate as f64 / 1e6;
        let data = t.window.data_received as f64 / t.seconds / 1e6;
        let m = fwd_mpps(&t);
        let dropped: u64 = s["workers"]
            .as_array()
            .map(|ws| ws.iter().filter_map(|w| w["tx_dropped"].as_u64()).sum())
            .unwrap_or(0);
        rows.push(Row {
            scenario: format!("overload {x}x"),
            forwarder: "tsmp-proxy",
            frame: "64".into(),
            flows: 1000,
            mpps: m,
            gbps: gb(m, 64.0),
            extra: format!(
                "data offered {offered:.2} Mpps, forwarded {data:.2} Mpps ({:.0}%, the rest refused by the full ring); proxy tx drops {dropped}; lost after sending {}; p99 {:.0} us",
                100.0 * data / offered.max(1e-9),
                t.lost,
                t.latency_ns[2] as f64 / 1e3
            ),
        });
    }

    println!();
    println!("| scenario | forwarder | frame | flows | Mpps | Gbit/s | ratio to testpmd io | ratio to 5tswap | notes |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2}x | {:.2}x | {} |",
            r.scenario,
            r.forwarder,
            r.frame,
            if r.flows == 0 {
                "-".to_owned()
            } else {
                r.flows.to_string()
            },
            r.mpps,
            r.gbps,
            r.mpps / io_m,
            r.mpps / swap_m,
            r.extra
        );
    }
    if let (Some(first), Some(last)) = (curve.first(), curve.last()) {
        println!();
        println!(
            "rate at {} flows / rate at {} flows: {:.2}x",
            last.0,
            first.0,
            last.1 / first.1
        );
    }
    for (pct, r, c) in &mig_ratio {
        println!("flows not migrating while {pct}% migrate: {r:.2}x their rate without migrations; the proxy's capacity (its busy cycles per packet): {c:.2}x");
    }
    if let Some(m) = ovs_1k {
        println!(
            "tsmp-proxy / ovs-dpdk conntrack NAT at 1000 flows: {:.2}x",
            px_m / m
        );
    }
    plot(&a.plot, &curve, &ovs_curve, io_m, swap_m)?;
    println!("plot: {}", a.plot.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Rate vs flows (log x), with testpmd's stateless rates as reference lines.
fn plot(
    path: &std::path::Path,
    curve: &[(u32, f64)],
    ovs: &[(u32, f64)],
    io: f64,
    swap: f64,
) -> Res<()> {
    let (w, h, l, r, t, b) = (640.0, 360.0, 60.0, 20.0, 30.0, 50.0);
    let ymax = curve.iter().map(|c| c.1).fold(io.max(swap), f64::max) * 1.15;
    let (xmin, xmax) = (2.5f64, 7.0f64); // log10 flows
    let x = |n: f64| l + (n.log10() - xmin) / (xmax - xmin) * (w - l - r);
    let y = |v: f64| h - b - v / ymax * (h - t - b);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{l}\" y=\"18\">Forwarded packets/s (64 B, data + ACKs) vs established flows, one worker core</text>\n");
    s += &format!("<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n", h - b, w - r, h - b, h - b);
    for e in 3..=6 {
        let n = 10f64.powi(e);
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">1e{e}</text>\n",
            x(n),
            h - b + 16.0
        );
    }
    let steps = 5;
    for k in 0..=steps {
        let v = ymax * f64::from(k) / f64::from(steps);
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            l - 6.0,
            y(v) + 4.0
        );
    }
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">flows (log)</text>\n<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">Mpps</text>\n", (l + w - r) / 2.0, h - 12.0, h / 2.0, h / 2.0);
    // The two reference lines: the higher one labelled above, the lower one below (their
    // rates are often close).
    for (v, name, color) in [
        (io, "dpdk-testpmd io (stateless)", "#999"),
        (swap, "dpdk-testpmd 5tswap (stateless)", "#2ca02c"),
    ] {
        let above = v >= io.max(swap);
        let ty = if above { y(v) - 4.0 } else { y(v) + 14.0 };
        s += &format!("<line x1=\"{l}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-dasharray=\"5,4\"/>\n<text x=\"{}\" y=\"{ty:.1}\" fill=\"{color}\" text-anchor=\"end\">{name}</text>\n", y(v), w - r, y(v), w - r);
    }
    for (c, color, name, ty) in [
        (
            curve,
            "#1f77b4",
            "tsmp-proxy (stateful: full NAT, flow table, per-flow caches)",
            205.0,
        ),
        (
            ovs,
            "#d62728",
            "ovs-dpdk (conntrack DNAT + SNAT, same flows)",
            221.0,
        ),
    ] {
        if c.is_empty() {
            continue;
        }
        let pts: Vec<String> = c
            .iter()
            .map(|(n, m)| format!("{:.1},{:.1}", x(f64::from(*n)), y(*m)))
            .collect();
        s += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n",
            pts.join(" ")
        );
        for (n, m) in c {
            s += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\" text-anchor=\"middle\">{m:.2}</text>\n", x(f64::from(*n)), y(*m), x(f64::from(*n)), y(*m) - 8.0);
        }
        s += &format!("<text x=\"70\" y=\"{ty}\" fill=\"{color}\">{name}</text>\n");
    }
    s += "</svg>\n";
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))
}
