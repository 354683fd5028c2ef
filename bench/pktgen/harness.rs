//! The memif harness: a generator/sink process and the orchestration around a forwarder.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use tsmp_dpdk::{rdtsc, tsc_hz, Burst, Eal, Mempool, Port, PortSetup};

use crate::frames;

pub(crate) type Res<T> = Result<T, String>;

/// What the generator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum GenMode {
    /// Send fixed-size frames A -> B as fast as possible and count what arrives.
    Rate,
    /// Send numbered frames both ways and check each arrives once, intact.
    Verify,
    /// Play both ends of N TCP flows through the proxy (bench/pktgen/tcpgen.rs).
    Tcp,
}

/// Arguments of the generator process.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Directory holding the memif sockets a.sock and b.sock.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Port A on a DPDK device instead of the memif server, for a hardware testbed: a PCI
    /// address bound to a DPDK driver (0000:03:00.0) or a vdev's devargs. Needs --port-b; the
    /// run then stands alone (prints its report, does not wait for a harness).
    #[arg(long, requires = "port_b")]
    pub port_a: Option<String>,
    /// Port B on a DPDK device (see --port-a).
    #[arg(long, requires = "port_a")]
    pub port_b: Option<String>,
    /// The proxy's control socket, for --migrate-percent (default: `<dir>/tsmp.sock`, where
    /// the harness puts it; on a testbed, the appliance's `[control] cli_socket`, e.g. through
    /// `ssh -L /tmp/tsmp.sock:/run/tsmp/tsmp.sock appliance`).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Rx queues per port (the forwarder may send on several; the TCP mode polls them all).
    #[arg(long, default_value_t = 1)]
    pub rx_queues: u16,
    /// Lcore (CPU) the generator runs on.
    #[arg(long, default_value_t = 0)]
    pub lcore: u32,
    /// Rate or verify.
    #[arg(long, value_enum, default_value_t = GenMode::Rate)]
    pub mode: GenMode,
    /// Frame size on the wire in bytes, FCS included (rate mode).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Measurement time in seconds (rate mode).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Warm-up time in seconds before measuring (rate mode).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Frames to send (verify mode).
    #[arg(long, default_value_t = 20000)]
    pub count: u64,
    /// Run EAL without hugepages.
    #[arg(long)]
    pub no_huge: bool,
    /// TCP mode: the flows and their traffic.
    #[command(flatten)]
    pub tcp: crate::stateful::TcpOptions,
    /// TCP mode: progress lines on stderr every second.
    #[arg(long)]
    pub progress: bool,
}

/// What the generator reports (one JSON line prefixed by `RESULT `).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct GenResult {
    /// Frames the generator's tx ring accepted.
    pub sent: u64,
    /// Frames the generator could not enqueue (back-pressure).
    pub tx_backpressure: u64,
    /// Frames received at the sink during the measurement.
    pub received: u64,
    /// Bytes received at the sink during the measurement.
    pub received_bytes: u64,
    /// Measurement time in seconds.
    pub seconds: f64,
    /// Verify mode: frames never received.
    pub missing: u64,
    /// Verify mode: frames received more than once.
    pub duplicates: u64,
    /// Verify mode: frames whose bytes differ from what was sent.
    pub corrupt: u64,
    /// Verify mode: frames that arrived on the port they were sent from.
    pub misdirected: u64,
    /// TCP mode: the stateful run's report.
    #[serde(default)]
    pub tcp: Option<crate::stateful::TcpReport>,
}

fn memif(dir: &Path, i: u8, role: &str) -> String {
    let sock = dir.join(if i == 0 { "a.sock" } else { "b.sock" });
    format!(
        "net_memif{i},role={role},id=0,socket={},socket-abstract=no",
        sock.display()
    )
}

/// The generator process: memif servers on A and B, then rate or verify, then freeze and wait.
pub fn gen(a: &GenArgs) -> Res<()> {
    let devices = [a.port_a.as_deref(), a.port_b.as_deref()];
    let standalone = devices.iter().all(Option::is_some);
    let is_pci = |d: &str| !d.starts_with("net_") && d.contains(':');
    let mut args = vec![
        "-l".to_owned(),
        a.lcore.to_string(),
        "--file-prefix".to_owned(),
        format!("tsmp-gen-{}", std::process::id()),
    ];
    let pci: Vec<&str> = devices
        .iter()
        .flatten()
        .copied()
        .filter(|d| is_pci(d))
        .collect();
    if pci.is_empty() {
        args.push("--no-pci".to_owned());
    }
    for d in pci {
        args.extend(["-a".to_owned(), d.to_owned()]);
    }
    args.extend([
        "-m".to_owned(),
        "512".to_owned(),
        "--log-level".to_owned(),
        "warning".to_owned(),
    ]);
    if a.no_huge {
        args.push("--no-huge".to_owned());
    }
    let eal = Eal::init(&args).map_err(|e| e.to_string())?;
    let pool = Mempool::new(&eal, "gen", 65535, 256, 2176).map_err(|e| e.to_string())?;
    let mut ports = Vec::new();
    for i in 0..2u8 {
        let id = match devices[usize::from(i)] {
            Some(d) if is_pci(d) => eal.pci_port(d),
            Some(d) => eal.probe_vdev(d),
            None => eal.probe_vdev(&memif(&a.dir, i, "server")),
        }
        .map_err(|e| e.to_string())?;
        let setup = PortSetup {
            name: if i == 0 { "A".into() } else { "B".into() },
            rx_queues: a.rx_queues,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            promiscuous: false,
            rss: Some(false),
            mtu: None,
        };
        ports.push(Port::start(id, &setup, &pool).map_err(|e| e.to_string())?);
    }
    println!("READY");
    let t = Instant::now();
    while !ports.iter().all(|p| p.link().up) {
        if t.elapsed() > Duration::from_secs(20) {
            return Err(if standalone {
                "the ports' links did not come up within 20 s (cabled to the appliance, which is running?)".into()
            } else {
                "the forwarder did not connect to the memif sockets within 20 s".into()
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let result = if a.mode == GenMode::Tcp {
        crate::stateful::run_tcp(a, &pool, &ports).unwrap_or_else(|e| {
            eprintln!("tsmp-pktgen gen: {e}");
            GenResult::default()
        })
    } else {
        let mut rxa = ports[0].rx_queue(0).map_err(|e| e.to_string())?;
        let mut txa = ports[0].tx_queue(0).map_err(|e| e.to_string())?;
        let mut rxb = ports[1].rx_queue(0).map_err(|e| e.to_string())?;
        let mut txb = ports[1].tx_queue(0).map_err(|e| e.to_string())?;
        if a.mode == GenMode::Rate {
            run_rate(a, &pool, &mut txa, &mut rxa, &mut rxb)
        } else {
            run_verify(a, &pool, [&mut txa, &mut txb], [&mut rxa, &mut rxb])
        }
    };
    println!(
        "RESULT {}",
        serde_json::to_string(&result).unwrap_or_default()
    );
    if standalone {
        // No harness around: the report in words, the verdict as the exit status.
        return match &result.tcp {
            Some(t) => {
                crate::stateful::print_tcp(t);
                crate::stateful::tcp_verdict(t)
            }
            None => Ok(()),
        };
    }
    println!("FROZEN");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(ports);
    drop(pool);
    drop(eal);
    Ok(())
}

/// Seconds to TSC ticks (negative or invalid durations count as 0).
pub(crate) fn secs_to_tsc(s: f64, hz: u64) -> u64 {
    let ns = Duration::try_from_secs_f64(s)
        .unwrap_or_default()
        .as_nanos();
    u64::try_from(ns * u128::from(hz) / 1_000_000_000).unwrap_or(u64::MAX)
}

fn run_rate(
    a: &GenArgs,
    pool: &Mempool<'_>,
    txa: &mut tsmp_dpdk::TxQueue<'_>,
    rxa: &mut tsmp_dpdk::RxQueue<'_>,
    rxb: &mut tsmp_dpdk::RxQueue<'_>,
) -> GenResult {
    let len = a
        .size
        .saturating_sub(4)
        .clamp(frames::MIN_FRAME, frames::MAX_FRAME);
    let mut template = vec![0u8; len];
    frames::build(&mut template, len, 0, 1000);
    let hz = tsc_hz();
    let warm_end = rdtsc() + secs_to_tsc(a.warmup, hz);
    let mut burst = Burst::default();
    let mut rx = Burst::default();
    let mut r = GenResult::default();
    let mut seq = 0u64;
    let mut measuring = false;
    let mut start = 0u64;
    let end = warm_end + secs_to_tsc(a.duration, hz);
    txa.set_threshold(32);
    let mut i = 0u32;
    loop {
        if pool.alloc_bulk(&mut burst, 32) {
            for m in burst.iter_mut() {
                m.set_len(len);
                let d = m.data_mut();
                d.copy_from_slice(&template);
                d[54..58].copy_from_slice(&(seq as u32).to_be_bytes());
                seq += 1;
            }
            let t = txa.push_burst(&mut burst);
            if measuring {
                r.sent += u64::from(t.sent);
                r.tx_backpressure += u64::from(t.dropped);
            }
        }
        let n = rxb.recv(&mut rx, 64);
        if measuring {
            r.received += n as u64;
            for m in rx.drain() {
                r.received_bytes += u64::from(m.pkt_len());
            }
        }
        rxa.recv(&mut rx, 64);
        i = i.wrapping_add(1);
        if i % 64 == 0 {
            let now = rdtsc();
            if !measuring && now >= warm_end {
                measuring = true;
                start = now;
            }
            if now >= end {
                r.seconds = (now - start) as f64 / hz as f64;
                break;
            }
        }
    }
    drop(rx);
    r
}

fn run_verify(
    a: &GenArgs,
    pool: &Mempool<'_>,
    tx: [&mut tsmp_dpdk::TxQueue<'_>; 2],
    rx: [&mut tsmp_dpdk::RxQueue<'_>; 2],
) -> GenResult {
    const WINDOW: u64 = 256;
    let n = a.count;
    let mut seen = vec![false; usize::try_from(n).unwrap_or(0)];
    let mut r = GenResult::default();
    let mut next = [0u64, 1u64]; // even seqs leave on A, odd on B
    let mut got = [0u64; 2];
    let mut expect = vec![0u8; frames::MAX_FRAME];
    let mut burst = Burst::default();
    let mut last_progress = Instant::now();
    let [txa, txb] = tx;
    let [rxa, rxb] = rx;
    let mut txs = [txa, txb];
    let mut rxs = [rxa, rxb];
    for t in txs.iter_mut() {
        t.set_threshold(32);
    }
    let start = Instant::now();
    loop {
        for dir in 0..2 {
            let in_flight = next[dir] / 2 - got[dir];
            let left = n.saturating_sub(next[dir]).div_ceil(2);
            let k = left.min(16).min(WINDOW.saturating_sub(in_flight)) as usize;
            if k > 0 && pool.alloc_bulk(&mut burst, k) {
                for m in burst.iter_mut() {
                    let seq = next[dir];
                    let len = frames::verify_len(seq);
                    m.set_len(len);
                    frames::build(m.data_mut(), len, seq, 2000);
                    next[dir] += 2;
                }
                let mut t = txs[dir].push_burst(&mut burst);
                let f = txs[dir].flush();
                t.sent += f.sent;
                t.dropped += f.dropped;
                r.sent += u64::from(t.sent);
                r.tx_backpressure += u64::from(t.dropped);
            }
        }
        for (port, q) in rxs.iter_mut().enumerate() {
            q.recv(&mut burst, 64);
            for m in burst.drain() {
                let d = m.data();
                let Some(slot) =
                    frames::seq_of(d).and_then(|s| seen.get_mut(usize::try_from(s).ok()?))
                else {
                    r.corrupt += 1;
                    if r.corrupt <= 5 {
                        eprintln!(
                            "unknown frame on port {port}: {} bytes, pkt_len {}, starts {:02x?}",
                            d.len(),
                            m.pkt_len(),
                            &d[..d.len().min(64)]
                        );
                    }
                    continue;
                };
                let seq = frames::seq_of(d).unwrap_or_default();
                // A frame sent on A (even) must arrive on B (port 1), and vice versa.
                let from = (seq % 2) as usize;
                if port == from {
                    r.misdirected += 1;
                    continue;
                }
                if *slot {
                    r.duplicates += 1;
                    continue;
                }
                *slot = true;
                got[from] += 1;
                r.received += 1;
                r.received_bytes += d.len() as u64;
                let len = frames::verify_len(seq);
                frames::build(&mut expect, len, seq, 2000);
                if d != &expect[..len] {
                    r.corrupt += 1;
                    if r.corrupt <= 5 {
                        let at = d.iter().zip(&expect[..len]).position(|(x, y)| x != y);
                        eprintln!("corrupt frame seq={seq}: got {} bytes (segments contiguous: {}), expected {len}; first difference at {at:?}", d.len(), m.is_contiguous());
                    }
                }
                last_progress = Instant::now();
            }
        }
        let done = next[0] >= n && next[1] >= n && got[0] + got[1] == n;
        if done || last_progress.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    r.missing = n - (got[0] + got[1]);
    r
}

/// A running generator child.
struct GenChild {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl GenChild {
    fn spawn(dir: &Path, extra: &[String]) -> Res<GenChild> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("gen")
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the generator: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut g = GenChild {
            child,
            stdin,
            lines,
        };
        g.expect("READY", Duration::from_secs(30))?;
        Ok(g)
    }

    fn expect(&mut self, prefix: &str, timeout: Duration) -> Res<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    return Err(format!("the generator did not print {prefix} in time (it failed; see its messages above)"));
                }
            }
        }
    }

    fn finish(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait();
    }
}

/// The forwarder under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarder {
    /// `dpdk-testpmd --forward-mode=io`.
    TestpmdIo,
    /// `dpdk-testpmd --forward-mode=5tswap` (swaps L2-L4 addresses and ports).
    Testpmd5tswap,
    /// `tsmp-proxy` in pass-through mode (bench-memif.toml).
    Tsmp,
    /// `tsmp-proxy` in proxy mode (bench-proxy-memif.toml).
    TsmpProxy,
    /// Open vSwitch with the DPDK datapath doing the same NAT with conntrack
    /// (bench/pktgen/ovs.rs).
    OvsDpdk,
}

impl Forwarder {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Forwarder::TestpmdIo => "dpdk-testpmd io",
            Forwarder::Testpmd5tswap => "dpdk-testpmd 5tswap",
            Forwarder::Tsmp => "tsmp-proxy passthrough",
            Forwarder::TsmpProxy => "tsmp-proxy proxy",
            Forwarder::OvsDpdk => "ovs-dpdk conntrack NAT",
        }
    }

    fn is_testpmd(self) -> bool {
        matches!(self, Forwarder::TestpmdIo | Forwarder::Testpmd5tswap)
    }
}

struct FwdChild {
    kind: Forwarder,
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    stats: PathBuf,
    ovs: Option<crate::ovs::Ovs>,
}

fn proxy_exe() -> Res<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.with_file_name("tsmp-proxy");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release`",
            p.display()
        ))
    }
}

/// The `bench-memif.toml` profile with its socket directory and file prefix pointed at `dir`.
fn bench_config(config: &Path, dir: &Path) -> Res<PathBuf> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let text = text.replace("/run/tsmp-bench", &dir.display().to_string());
    let out = dir.join("proxy.toml");
    std::fs::write(&out, text).map_err(|e| e.to_string())?;
    Ok(out)
}

impl FwdChild {
    fn spawn(kind: Forwarder, dir: &Path, config: &Path, no_huge: bool) -> Res<FwdChild> {
        let log = dir.join(format!(
            "{}.log",
            match kind {
                Forwarder::TestpmdIo | Forwarder::Testpmd5tswap => "testpmd",
                Forwarder::OvsDpdk => "ovs",
                Forwarder::Tsmp | Forwarder::TsmpProxy => "tsmp",
            }
        ));
        let stats = dir.join("proxy-stats.json");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = match kind {
            Forwarder::TestpmdIo | Forwarder::Testpmd5tswap => {
                let mut c = Command::new("dpdk-testpmd");
                c.args([
                    "-l",
                    "0,1",
                    "--main-lcore",
                    "0",
                    "--file-prefix",
                    "tsmp-bench-testpmd",
                    "--no-pci",
                    "-m",
                    "512",
                ]);
                if no_huge {
                    c.arg("--no-huge");
                }
                c.arg("--vdev").arg(memif(dir, 0, "client"));
                c.arg("--vdev").arg(memif(dir, 1, "client"));
                c.args([
                    "--",
                    if kind == Forwarder::TestpmdIo {
                        "--forward-mode=io"
                    } else {
                        "--forward-mode=5tswap"
                    },
                    "--nb-cores=1",
                    "--record-core-cycles",
                    "--burst=32",
                    "--rxd=1024",
                    "--txd=1024",
                ]);
                c
            }
            Forwarder::OvsDpdk => {
                let (o, child) = crate::ovs::Ovs::start(dir, (out, err), no_huge)?;
                return Ok(FwdChild {
                    kind,
                    child,
                    stdin: None,
                    log,
                    stats,
                    ovs: Some(o),
                });
            }
            Forwarder::Tsmp | Forwarder::TsmpProxy => {
                let cfg = bench_config(config, dir)?;
                let mut c = Command::new(proxy_exe()?);
                c.arg("--config").arg(cfg).arg("--stats-json").arg(&stats);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", kind.label()))?;
        let mut f = FwdChild {
            kind,
            child,
            stdin: None,
            log,
            stats,
            ovs: None,
        };
        f.stdin = f.child.stdin.take();
        Ok(f)
    }

    /// Stops the forwarder (testpmd: Enter on stdin; tsmp: SIGINT) and returns its busy cycles
    /// per packet and (tsmp) its final counters.
    fn stop(mut self) -> Res<(f64, serde_json::Value)> {
        // Open vSwitch's counters are read from the running switch.
        let ovs_stats = self.ovs.as_ref().map(|o| {
            let c = o.cycles_per_packet();
            (
                c,
                serde_json::json!({"conntrack_entries": o.conntrack_entries(), "cycles_per_packet": c}),
            )
        });
        match self.kind {
            Forwarder::TestpmdIo | Forwarder::Testpmd5tswap => {
                if let Some(mut s) = self.stdin.take() {
                    let _ = writeln!(s);
                }
            }
            Forwarder::Tsmp | Forwarder::TsmpProxy | Forwarder::OvsDpdk => {
                let _ = Command::new("kill")
                    .arg("-INT")
                    .arg(self.child.id().to_string())
                    .status();
            }
        }
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                // ovs-vswitchd ends by re-raising the signal it was stopped with.
                let by_our_signal = self.kind == Forwarder::OvsDpdk
                    && std::os::unix::process::ExitStatusExt::signal(&st) == Some(2);
                if !st.success() && !by_our_signal {
                    return Err(format!(
                        "{} exited with {st}; log: {}",
                        self.kind.label(),
                        self.log.display()
                    ));
                }
                break;
            }
            if t.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "{} did not stop within 15 s; log: {}",
                    self.kind.label(),
                    self.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(s) = ovs_stats {
            return Ok(s);
        }
        if self.kind.is_testpmd() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let c = log
                .lines()
                .find_map(|l| l.trim().strip_prefix("CPU cycles/packet="))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            return Ok((c, serde_json::Value::Null));
        }
        let s = std::fs::read_to_string(&self.stats)
            .map_err(|e| format!("{}: {e}", self.stats.display()))?;
        let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| e.to_string())?;
        let c = v["workers"][0]["cycles_per_packet"]
            .as_f64()
            .unwrap_or(f64::NAN);
        Ok((c, v))
    }
}

/// A stateless rate run of `size`-byte frames A -> B.
pub(crate) fn rate_run(
    kind: Forwarder,
    dir: &Path,
    config: &Path,
    size: usize,
    duration: f64,
    no_huge: bool,
) -> Res<(GenResult, f64)> {
    let mut gen_args = vec![
        "--mode".to_owned(),
        "rate".to_owned(),
        "--size".to_owned(),
        size.to_string(),
        "--duration".to_owned(),
        duration.to_string(),
    ];
    if no_huge {
        gen_args.push("--no-huge".to_owned());
    }
    let (r, cycles, _) = run_once(kind, dir, config, &gen_args, no_huge)?;
    Ok((r, cycles))
}

/// One measured run: generator + forwarder; what the generator saw, the forwarder's busy cycles
/// per packet and its final counters (tsmp-proxy's `--stats-json`, Open vSwitch's figures).
pub(crate) fn run_once(
    kind: Forwarder,
    dir: &Path,
    config: &Path,
    gen_args: &[String],
    no_huge: bool,
) -> Res<(GenResult, f64, serde_json::Value)> {
    let _ = std::fs::remove_file(dir.join("a.sock"));
    let _ = std::fs::remove_file(dir.join("b.sock"));
    let mut g = GenChild::spawn(dir, gen_args)?;
    let f = match FwdChild::spawn(kind, dir, config, no_huge) {
        Ok(f) => f,
        Err(e) => {
            g.finish();
            return Err(e);
        }
    };
    let res = g.expect("RESULT ", Duration::from_secs(900));
    let frozen = res.is_ok() && g.expect("FROZEN", Duration::from_secs(10)).is_ok();
    // Order matters for memif: generator frozen, forwarder stopped, then the generator exits.
    let stopped = f.stop();
    g.finish();
    let line = res?;
    if !frozen {
        return Err("the generator did not freeze".into());
    }
    let r: GenResult =
        serde_json::from_str(line.trim_start_matches("RESULT ")).map_err(|e| e.to_string())?;
    let (cycles, stats) = stopped?;
    Ok((r, cycles, stats))
}

fn default_config() -> PathBuf {
    workspace_root().join("dpdk-config/bench-memif.toml")
}

pub(crate) fn work_dir(dir: &Option<PathBuf>) -> Res<PathBuf> {
    let d = dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("tsmp-bench-{}", std::process::id())));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Frames to send (half each way).
    #[arg(long, default_value_t = 20000)]
    pub count: u64,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

/// Options shared by the harness commands.
#[derive(Debug, Args)]
pub struct HarnessArgs {
    /// Forwarder configuration (memif client ports on `<dir>/a.sock` and `<dir>/b.sock`).
    #[arg(long, default_value_os_t = default_config())]
    pub config: PathBuf,
    /// Working directory for sockets and logs (a fresh temporary one by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run EAL without hugepages.
    #[arg(long)]
    pub no_huge: bool,
}

/// Sends `count` numbered frames of 62..=1514 bytes through tsmp-proxy, half each way, and checks
/// that every one arrives exactly once, on the other port, byte for byte.
pub fn verify(a: &VerifyArgs) -> Res<()> {
    let dir = work_dir(&a.harness.dir)?;
    let mut gen_args = vec![
        "--mode".to_owned(),
        "verify".to_owned(),
        "--count".to_owned(),
        a.count.to_string(),
    ];
    if a.harness.no_huge {
        gen_args.push("--no-huge".to_owned());
    }
    let (r, _, _) = run_once(
        Forwarder::Tsmp,
        &dir,
        &a.harness.config,
        &gen_args,
        a.harness.no_huge,
    )?;
    println!(
        "verify: sent={} received={} missing={} duplicates={} corrupt={} misdirected={} backpressure={}",
        r.sent, r.received, r.missing, r.duplicates, r.corrupt, r.misdirected, r.tx_backpressure
    );
    if r.sent == a.count
        && r.received == a.count
        && r.missing + r.duplicates + r.corrupt + r.misdirected == 0
    {
        println!("verify: OK, all {} frames crossed intact", a.count);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    } else {
        Err(format!(
            "frames were lost, doubled or damaged (logs in {})",
            dir.display()
        ))
    }
}

/// Arguments of `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Frame sizes on the wire (FCS included).
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    pub sizes: Vec<usize>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Interleaved rounds (testpmd, tsmp, testpmd, tsmp, ...); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    #[command(flatten)]
    pub harness: HarnessArgs,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Runs testpmd io and tsmp pass-through, interleaved, and prints the table.
pub fn compare(a: &CompareArgs) -> Res<()> {
    let dir = work_dir(&a.harness.dir)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# pass-through forwarding on the memif harness ({} s per run, {} rounds, median)",
        a.duration, a.rounds
    );
    println!(
        "# generator+sink on lcore 0, forwarder worker on lcore 1; loadavg at start: {}",
        load.trim()
    );
    let kinds = [Forwarder::TestpmdIo, Forwarder::Tsmp];
    let mut rows = Vec::new();
    for &size in &a.sizes {
        let mut mpps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut cyc: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..a.rounds {
            for (k, &kind) in kinds.iter().enumerate() {
                let (r, c) = rate_run(
                    kind,
                    &dir,
                    &a.harness.config,
                    size,
                    a.duration,
                    a.harness.no_huge,
                )?;
                let m = r.received as f64 / r.seconds / 1e6;
                eprintln!("  size {size} round {round} {:<24} {m:7.3} Mpps  {c:6.1} cycles/pkt  (sent {} backpressure {})", kind.label(), r.sent, r.tx_backpressure);
                mpps[k].push(m);
                cyc[k].push(c);
            }
        }
        let m = [median(&mut mpps[0]), median(&mut mpps[1])];
        let c = [median(&mut cyc[0]), median(&mut cyc[1])];
        rows.push((size, m, c));
    }
    println!();
    println!("| frame | forwarder | Mpps | Gbit/s | busy cycles/pkt | rate ratio | cycles ratio (testpmd/tsmp) |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for (size, m, c) in &rows {
        for (k, kind) in kinds.iter().enumerate() {
            let gbps = m[k] * (*size as f64) * 8.0 / 1e3;
            let (rr, cr) = if k == 0 {
                ("1.00".to_owned(), "1.00".to_owned())
            } else {
                (
                    format!("**{:.2}x**", m[1] / m[0]),
                    format!("**{:.2}x**", c[0] / c[1]),
                )
            };
            println!(
                "| {size} B | {} | {:.2} | {:.2} | {:.1} | {rr} | {cr} |",
                kind.label(),
                m[k],
                gbps,
                c[k]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The workspace's top directory (this crate is `bench/` in it): where `dpdk-config/` is.
pub fn workspace_root() -> &'static Path {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here)
}
