//! `tsmp-cli`: the operator's view of a running `tsmp-proxy`, over its control socket
//! (`[control] cli_socket`). Needs no DPDK.
//!
//! The socket speaks one JSON request per line and answers one JSON line, `{"ok": ...}` or
//! `{"error": "..."}` (format version 1, documented in `src/control.rs` and the README). Every
//! command prints a human table by default and the proxy's JSON answer with `--json`.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::PossibleValuesParser;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tsmp_proto::control::{SORTS, STATES};

#[derive(Parser)]
#[command(
    name = "tsmp-cli",
    version,
    about = "Inspect and operate a running tsmp-proxy: flows, migrations, counters"
)]
struct Args {
    /// The proxy's control socket ([control] cli_socket).
    #[arg(long, default_value = "/run/tsmp/tsmp.sock")]
    socket: PathBuf,
    /// Print the proxy's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List flows (filtered, sorted, paged).
    Flows {
        /// Tracking state.
        #[arg(long, value_parser = PossibleValuesParser::new(STATES))]
        state: Option<String>,
        /// The device's address, or IP:PORT.
        #[arg(long)]
        client: Option<String>,
        /// The backend's address, or IP:PORT.
        #[arg(long)]
        server: Option<String>,
        /// The device generation holding the flow (0: the one that opened it).
        #[arg(long)]
        device: Option<u32>,
        /// Only flows of this user's registered devices (needs the proxy's naming server).
        #[arg(long)]
        user: Option<String>,
        /// Only flows being migrated.
        #[arg(long, conflicts_with = "not_migrating")]
        migrating: bool,
        /// Only flows not being migrated.
        #[arg(long)]
        not_migrating: bool,
        /// Order.
        #[arg(long, value_parser = PossibleValuesParser::new(SORTS), default_value = "id")]
        sort: String,
        /// Skip this many.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One flow in detail: both legs, NAT mapping, worker, options, offsets, caches, migrations.
    Flow {
        /// `worker:slot` (from `flows`), or the device's IP:PORT.
        flow: String,
        /// The service address (VIP:PORT) when the device has several flows.
        #[arg(long)]
        vip: Option<SocketAddrV4>,
    },
    /// Migrations in progress and recent ones, with per-phase durations and pause percentiles.
    Migrations,
    /// Latency histograms: each worker's processing time per burst, the migration pauses.
    Latency,
    /// Counters and rates (per worker and total) over an interval.
    Stats {
        /// Seconds between the two snapshots rates are computed from.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Refresh in place until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Start a migration of a flow: to a named device (`--to`, through its agent), or for a new
    /// device that then connects to the migration port shown.
    Migrate {
        /// The device's IP:PORT.
        client: SocketAddrV4,
        /// The service address (VIP:PORT) or the migration port the flow talks to.
        vip: SocketAddrV4,
        /// The application's consumed byte offset to resume at (default: the device's last ACK).
        #[arg(long, conflicts_with = "to")]
        offset: Option<u64>,
        /// The device to move it to (`pc.bob`): the proxy resolves it with the naming server
        /// and sends its agent the MTR (needs the proxy's agent control).
        #[arg(long)]
        to: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsmp-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One request, one answer.
fn ask(socket: &Path, req: &Value) -> Result<Value, String> {
    let shown = socket.display();
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no control socket at {shown}: is tsmp-proxy running (with [control] cli_socket = \
             {shown})? Otherwise pass --socket PATH"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("not allowed to use {shown} (owner-only): run as root or as the proxy's user")
        }
        std::io::ErrorKind::ConnectionRefused => format!(
            "{shown} exists but nobody answers: tsmp-proxy stopped without removing it; \
             start the proxy (it replaces a stale socket)"
        ),
        _ => format!("cannot connect to {shown}: {e}"),
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| format!("{shown}: {e}"))?;
    let mut out = String::new();
    BufReader::new(&s)
        .read_line(&mut out)
        .map_err(|e| format!("no answer on {shown}: {e}"))?;
    let v: Value = serde_json::from_str(out.trim())
        .map_err(|e| format!("unreadable answer from the proxy ({e}): {out:?}"))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(format!("the proxy refused: {err}"));
    }
    v.get("ok")
        .cloned()
        .ok_or_else(|| format!("unexpected answer from the proxy: {out}"))
}

fn run(a: &Args) -> Result<(), String> {
    match &a.cmd {
        Cmd::Flows {
            state,
            client,
            server,
            device,
            user,
            migrating,
            not_migrating,
            sort,
            offset,
            limit,
        } => {
            let mut filter = serde_json::Map::new();
            if let Some(s) = state {
                filter.insert("state".into(), json!(s));
            }
            for (k, v) in [("client", client), ("server", server)] {
                if let Some(v) = v {
                    filter.insert(k.into(), json!(addr_or_ip(v)?));
                }
            }
            if let Some(d) = device {
                filter.insert("device".into(), json!(d));
            }
            if *migrating || *not_migrating {
                filter.insert("migrating".into(), json!(*migrating));
            }
            let v = ask(
                &a.socket,
                &json!({"flows": {"filter": filter, "user": user, "sort": sort, "offset": offset, "limit": limit}}),
            )?;
            if a.json {
                println!("{v}");
            } else {
                print_flows(&v);
            }
        }
        Cmd::Flow { flow, vip } => {
            let req = if flow.contains('.') {
                json!({"flow": {"client": flow, "vip": vip}})
            } else {
                json!({"flow": {"id": flow}})
            };
            let v = ask(&a.socket, &req)?;
            if a.json {
                println!("{v}");
            } else {
                print_flow(&v);
            }
        }
        Cmd::Migrations => {
            let v = ask(&a.socket, &json!({"migrations": {}}))?;
            if a.json {
                println!("{v}");
            } else {
                print_migrations(&v);
            }
        }
        Cmd::Latency => {
            let v = ask(&a.socket, &json!({"latency": {}}))?;
            if a.json {
                println!("{v}");
            } else {
                println!(
                    "{:<7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    "WORKER", "BURSTS", "p50 cyc", "p90", "p99", "p99.9", "max", "p50 us", "p99 us"
                );
                for b in v["burst_cycles"].as_array().into_iter().flatten() {
                    println!(
                        "{:<7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.2} {:>9.2}",
                        s(&b["worker"]),
                        s(&b["bursts"]),
                        s(&b["p50"]),
                        s(&b["p90"]),
                        s(&b["p99"]),
                        s(&b["p999"]),
                        s(&b["max"]),
                        b["p50_us"].as_f64().unwrap_or(0.0),
                        b["p99_us"].as_f64().unwrap_or(0.0)
                    );
                }
                let p = &v["migration_pause_ms"];
                println!(
                    "migration pause over {} migration(s): p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
                    s(&p["count"]),
                    s(&p["p50"]),
                    s(&p["p90"]),
                    s(&p["p99"]),
                    s(&p["max"])
                );
            }
        }
        Cmd::Stats { interval, watch } => {
            if !(interval.is_finite() && *interval > 0.0 && *interval <= 3600.0) {
                return Err(format!("--interval {interval}: give seconds in (0, 3600]"));
            }
            let every = Duration::from_secs_f64(*interval);
            let mut before = (Instant::now(), ask(&a.socket, &json!({"stats": {}}))?);
            loop {
                std::thread::sleep(every);
                let now = (Instant::now(), ask(&a.socket, &json!({"stats": {}}))?);
                let dt = now.0.duration_since(before.0).as_secs_f64();
                if a.json {
                    println!("{}", json!({"interval_s": dt, "stats": now.1}));
                } else {
                    if *watch {
                        // Home and clear: refresh in place.
                        print!("\x1b[H\x1b[2J");
                    }
                    print_stats(&before.1, &now.1, dt);
                }
                if !*watch {
                    break;
                }
                before = now;
            }
        }
        Cmd::Migrate {
            client,
            vip,
            offset,
            to,
        } => {
            let req = match to {
                Some(to) => json!({"migrate": {"client": client, "vip": vip, "to": to}}),
                None => json!({"migrate": {"client": client, "vip": vip, "offset": offset}}),
            };
            let v = ask(&a.socket, &req)?;
            if a.json {
                println!("{v}");
            } else if let Some(to) = to {
                println!(
                    "migration {} of flow {}:{} to {to} ({}): MTR {}; it connects to {}:{}",
                    v["migration"],
                    v["worker"],
                    v["flow"],
                    s(&v["target_addr"]),
                    s(&v["mtr"]),
                    vip.ip(),
                    v["migration_port"]
                );
            } else {
                println!(
                    "migrating flow {}:{} (device generation {}); the new device connects to {}:{}",
                    v["worker"],
                    v["flow"],
                    v["device"],
                    vip.ip(),
                    v["migration_port"]
                );
            }
        }
    }
    Ok(())
}

/// `198.18.0.1` or `198.18.0.1:40000` as the filter's IP:PORT (port 0: any).
fn addr_or_ip(s: &str) -> Result<String, String> {
    if s.parse::<SocketAddrV4>().is_ok() {
        return Ok(s.to_owned());
    }
    s.parse::<std::net::Ipv4Addr>()
        .map(|ip| format!("{ip}:0"))
        .map_err(|_| format!("{s:?} is neither an IPv4 address nor IP:PORT"))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n}"),
        10_000..=9_999_999 => format!("{:.1}K", n as f64 / 1024.0),
        _ => format!("{:.1}M", n as f64 / 1048576.0),
    }
}

fn print_flows(v: &Value) {
    let items = v["items"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<8} {:<21} {:<21} {:<21} {:<21} {:<11} {:>3} {:<10} {:>7} {:>8}",
        "ID", "CLIENT", "VIP", "SNAT", "SERVER", "STATE", "DEV", "PHASE", "CACHE", "AGE"
    );
    for f in &items {
        println!(
            "{:<8} {:<21} {:<21} {:<21} {:<21} {:<11} {:>3} {:<10} {:>7} {:>7.1}s",
            s(&f["id"]),
            s(&f["client"]),
            s(&f["vip"]),
            s(&f["snat"]),
            s(&f["backend"]),
            s(&f["state"]),
            s(&f["device"]),
            s(&f["phase"]),
            bytes(f["cache_bytes"].as_u64().unwrap_or(0)),
            f["age_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        );
    }
    let total = v["total"].as_u64().unwrap_or(0);
    let offset = v["offset"].as_u64().unwrap_or(0);
    println!(
        "{} of {total} flow(s){}",
        items.len(),
        if offset > 0 || (items.len() as u64) < total.saturating_sub(offset) {
            format!(" (from {offset}; --offset/--limit page)")
        } else {
            String::new()
        }
    );
}

fn leg(o: &Value) -> String {
    format!(
        "mss {} wscale {} sack {} ts {}",
        s(&o["mss"]),
        s(&o["wscale"]),
        s(&o["sack"]),
        s(&o["ts"])
    )
}

fn print_flow(v: &Value) {
    let f = &v["flow"];
    println!(
        "flow {}  (worker {}, slot {})",
        s(&f["id"]),
        s(&f["worker"]),
        s(&f["slot"])
    );
    println!(
        "  device leg   {} -> {}   {}",
        s(&f["client"]),
        s(&f["vip"]),
        leg(&f["client_opts"])
    );
    println!(
        "  server leg   {} -> {}   {}",
        s(&f["snat"]),
        s(&f["backend"]),
        leg(&f["server_opts"])
    );
    println!(
        "  NAT          {} -> {}  becomes  {} -> {}",
        s(&f["client"]),
        s(&f["vip"]),
        s(&f["snat"]),
        s(&f["backend"])
    );
    println!(
        "  state {}  age {:.1}s  idle timeout in {:.1}s  device generation {}  phase {}  cache {} bytes",
        s(&f["state"]),
        f["age_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
        f["expires_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
        s(&f["device"]),
        s(&f["phase"]),
        s(&f["cache_bytes"])
    );
    println!("  engine:");
    for l in v["engine"].as_array().into_iter().flatten() {
        println!("    {}", s(l));
    }
    let ms = v["migrations"].as_array().cloned().unwrap_or_default();
    println!("  migrations: {}", if ms.is_empty() { "none" } else { "" });
    for m in &ms {
        print_migration(m, "    ");
    }
}

fn print_migration(m: &Value, indent: &str) {
    let steps: Vec<String> = m["durations_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .map(|d| format!("{} +{:.1}ms", s(&d[0]), d[1].as_f64().unwrap_or(0.0)))
        .collect();
    println!(
        "{indent}{}:{}  paused at {} ms since the epoch; {}; pause {}; {}",
        s(&m["worker"]),
        s(&m["flow"]),
        s(&m["started_ms"]),
        if steps.is_empty() {
            "-".into()
        } else {
            steps.join(", ")
        },
        m["pause_ms"]
            .as_f64()
            .map_or("in progress".into(), |p| format!("{p:.1} ms")),
        s(&m["outcome"])
    );
}

fn print_migrations(v: &Value) {
    let active = v["active"].as_array().cloned().unwrap_or_default();
    let recent = v["recent"].as_array().cloned().unwrap_or_default();
    println!("in progress: {}", active.len());
    for m in &active {
        print_migration(m, "  ");
    }
    println!("recent: {}", recent.len());
    for m in &recent {
        print_migration(m, "  ");
    }
    let p = &v["pause_ms"];
    println!(
        "pause over {} migration(s): p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
        s(&p["count"]),
        s(&p["p50"]),
        s(&p["p90"]),
        s(&p["p99"]),
        s(&p["max"])
    );
}

fn print_stats(a: &Value, b: &Value, dt: f64) {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let rate = |x: &Value, y: &Value| n(y).saturating_sub(n(x)) as f64 / dt;
    println!("over {dt:.2} s:");
    println!(
        "{:<7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "WORKER", "RX Mpps", "RX Gbit/s", "TX Mpps", "TX Gbit/s", "TX drop/s", "cycles/pkt"
    );
    let (wa, wb) = (
        a["workers"].as_array().cloned().unwrap_or_default(),
        b["workers"].as_array().cloned().unwrap_or_default(),
    );
    let mut tot = [0.0f64; 5];
    for (i, (x, y)) in wa.iter().zip(&wb).enumerate() {
        let r = [
            rate(&x["rx_pkts"], &y["rx_pkts"]),
            rate(&x["rx_bytes"], &y["rx_bytes"]) * 8.0,
            rate(&x["tx_pkts"], &y["tx_pkts"]),
            rate(&x["tx_bytes"], &y["tx_bytes"]) * 8.0,
            rate(&x["tx_dropped"], &y["tx_dropped"]),
        ];
        for (t, v) in tot.iter_mut().zip(r) {
            *t += v;
        }
        let busy = n(&y["busy_cycles"]).saturating_sub(n(&x["busy_cycles"]));
        let pkts = n(&y["rx_pkts"]).saturating_sub(n(&x["rx_pkts"]));
        println!(
            "{:<7} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>10.0} {:>12}",
            i,
            r[0] / 1e6,
            r[1] / 1e9,
            r[2] / 1e6,
            r[3] / 1e9,
            r[4],
            if pkts > 0 {
                format!("{:.0}", busy as f64 / pkts as f64)
            } else {
                "-".into()
            }
        );
    }
    println!(
        "{:<7} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>10.0}",
        "total",
        tot[0] / 1e6,
        tot[1] / 1e9,
        tot[2] / 1e6,
        tot[3] / 1e9,
        tot[4]
    );
    for (i, p) in b["proxy"].as_array().into_iter().flatten().enumerate() {
        let drops: Vec<String> = p["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| n(v) > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "worker {i}: flows {}/{} ({:.2}% of the table), created {} closed {}, hand-offs out {} in {} ring full {}, snat ports free {}",
            n(&p["flows_active"]),
            n(&p["flow_capacity"]),
            100.0 * n(&p["flows_active"]) as f64 / n(&p["flow_capacity"]).max(1) as f64,
            n(&p["flows_created"]),
            n(&p["flows_closed"]),
            n(&p["handoffs_out"]),
            n(&p["handoffs_in"]),
            n(&p["handoff_ring_full"]),
            n(&p["snat_ports_free"])
        );
        let m = p;
        println!(
            "          migrations started {} done {} cancelled {} reset {}, caches {} bytes in {} mbufs (peak {}), overflow {}",
            n(&m["migrations_started"]),
            n(&m["migrations_done"]),
            n(&m["migrations_cancelled"]),
            n(&m["migrations_reset"]),
            n(&m["cache_bytes"]),
            n(&m["cache_bufs"]),
            n(&m["cache_bufs_peak"]),
            n(&m["cache_overflow"])
        );
        println!(
            "          drops: {}",
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join(" ")
            }
        );
    }
    println!("mempool: {} mbufs in use", n(&b["mempool_in_use"]));
    if let Some(c) = b.get("control").filter(|c| !c.is_null()) {
        let refused: Vec<String> = c["mfr_refused"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "control: connections {} mfr accepted {} refused {} mtr sent {} failed {}",
            n(&c["connections"]),
            n(&c["mfr_accepted"]),
            if refused.is_empty() {
                "none".into()
            } else {
                refused.join(" ")
            },
            n(&c["mtr_sent"]),
            n(&c["mtr_failed"])
        );
    }
}
