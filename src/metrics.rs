//! The Prometheus text endpoint (`[control] metrics`): the same counters as `tsmp-cli stats`
//! and `--stats-json`, and the migration pause percentiles, in the text exposition format
//! (version 0.0.4), served by the slow path.
//!
//! Naming: `tsmp_<group>_<counter>` with labels for the worker, port, drop reason and refusal
//! reason; monotonic counters end in `_total`. Invariants: rendering reads only the snapshot it
//! is given (no worker table), the server answers one request per connection and a request
//! larger than [`MAX_REQUEST`] is refused.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use serde_json::Value;

use crate::control::PauseStats;

/// The largest HTTP request read, bytes.
pub const MAX_REQUEST: usize = 4096;

/// Gauges (not monotonic): everything else numeric is a counter.
const GAUGES: &[&str] = &[
    "flows_active",
    "flow_capacity",
    "flow_table_bytes",
    "engine_bytes",
    "snat_ports_free",
    "migration_ports_free",
    "engines_active",
    "cache_bytes",
    "cache_bufs",
    "cache_bufs_peak",
    "cycles_per_packet",
    "mempool_in_use",
    "tsc_hz",
    "lcore",
];

/// Samples grouped by family (the format wants each family's samples together, under one
/// `# TYPE` line), in a stable order.
type Families = std::collections::BTreeMap<String, (&'static str, Vec<String>)>;

fn metric(out: &mut Families, name: &str, labels: &[(&str, String)], v: f64) {
    let gauge = GAUGES.iter().any(|g| name.ends_with(g));
    let full = if gauge {
        format!("tsmp_{name}")
    } else {
        format!("tsmp_{name}_total")
    };
    let l = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(",");
    let line = if l.is_empty() {
        format!("{full} {v}")
    } else {
        format!("{full}{{{l}}} {v}")
    };
    out.entry(full)
        .or_insert((if gauge { "gauge" } else { "counter" }, Vec::new()))
        .1
        .push(line);
}

/// Every numeric leaf of `obj` as `<prefix>_<key>`, maps one level down as a label `label`.
fn leaves(out: &mut Families, prefix: &str, obj: &Value, labels: &[(&str, String)], label: &str) {
    let Some(map) = obj.as_object() else { return };
    for (k, v) in map {
        match v {
            Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    metric(out, &format!("{prefix}_{k}"), labels, x);
                }
            }
            Value::Object(inner) => {
                for (ik, iv) in inner {
                    if let Some(x) = iv.as_f64() {
                        let mut l = labels.to_vec();
                        l.push((label, ik.clone()));
                        metric(out, &format!("{prefix}_{k}"), &l, x);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The exposition text for the counters `stats` (as `--stats-json` writes them), the
/// migration pauses and the workers' cycles per burst (`control::Workers::latency`).
pub fn render(stats: &Value, pauses: &PauseStats, bursts: &[Value]) -> String {
    let mut f = Families::new();
    for (i, w) in stats["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        leaves(&mut f, "worker", w, &[("worker", i.to_string())], "kind");
    }
    for (i, p) in stats["proxy"].as_array().into_iter().flatten().enumerate() {
        leaves(&mut f, "proxy", p, &[("worker", i.to_string())], "reason");
    }
    for p in stats["ports"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("").to_owned();
        leaves(&mut f, "port", p, &[("port", name)], "kind");
    }
    if stats["control"].is_object() {
        leaves(&mut f, "control", &stats["control"], &[], "reason");
    }
    if let Some(m) = stats["mempool_in_use"].as_f64() {
        metric(&mut f, "mempool_in_use", &[], m);
    }
    let mut out = String::new();
    for (name, (kind, lines)) in &f {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }
    let _ = writeln!(out, "# TYPE tsmp_migration_pause_seconds summary");
    for (q, v) in [
        ("0.5", pauses.p50),
        ("0.9", pauses.p90),
        ("0.99", pauses.p99),
        ("1", pauses.max),
    ] {
        let _ = writeln!(
            out,
            "tsmp_migration_pause_seconds{{quantile=\"{q}\"}} {}",
            v / 1000.0
        );
    }
    let _ = writeln!(out, "tsmp_migration_pause_seconds_count {}", pauses.count);
    if !bursts.is_empty() {
        let _ = writeln!(out, "# TYPE tsmp_worker_burst_cycles summary");
        for b in bursts {
            let w = &b["worker"];
            for (q, k) in [
                ("0.5", "p50"),
                ("0.9", "p90"),
                ("0.99", "p99"),
                ("0.999", "p999"),
                ("1", "max"),
            ] {
                let _ = writeln!(
                    out,
                    "tsmp_worker_burst_cycles{{worker=\"{w}\",quantile=\"{q}\"}} {}",
                    b[k]
                );
            }
        }
        for b in bursts {
            let _ = writeln!(
                out,
                "tsmp_worker_burst_cycles_count{{worker=\"{}\"}} {}",
                b["worker"], b["bursts"]
            );
        }
    }
    out
}

/// The endpoint: a non-blocking listener the slow path polls.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Listens on `addr`.
    pub fn bind(addr: SocketAddr) -> Result<Self, String> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr} for metrics ([control] metrics): {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("metrics listener: {e}"))?;
        Ok(MetricsServer { listener })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers the scrapes waiting now; `body` renders the page.
    pub fn poll(&self, body: &dyn Fn() -> String) {
        while let Ok((mut s, _)) = self.listener.accept() {
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < MAX_REQUEST {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req);
            let resp = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
                let b = body();
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nGET /metrics\n".into()
            };
            let _ = s.write_all(resp.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_labels_and_the_pause_summary() {
        let stats = serde_json::json!({
            "workers": [{"lcore": 1, "rx_pkts": 10, "cycles_per_packet": 150.5}],
            "proxy": [{"flows_active": 2, "flow_capacity": 100, "drops": {"no_flow": 3}}],
            "ports": [{"name": "client", "rx_packets": 7}],
            "control": {"mfr_accepted": 1, "mfr_refused": {"stale": 2}},
            "mempool_in_use": 42
        });
        let p = PauseStats {
            count: 3,
            p50: 2.0,
            p90: 3.0,
            p99: 4.0,
            max: 5.0,
        };
        let bursts = [
            serde_json::json!({"worker": 0, "bursts": 9, "p50": 100, "p90": 200,
            "p99": 300, "p999": 400, "max": 500}),
        ];
        let t = render(&stats, &p, &bursts);
        for want in [
            "# TYPE tsmp_worker_rx_pkts_total counter\ntsmp_worker_rx_pkts_total{worker=\"0\"} 10\n",
            "tsmp_worker_cycles_per_packet{worker=\"0\"} 150.5\n",
            "# TYPE tsmp_proxy_flows_active gauge\ntsmp_proxy_flows_active{worker=\"0\"} 2\n",
            "tsmp_proxy_drops_total{worker=\"0\",reason=\"no_flow\"} 3\n",
            "tsmp_port_rx_packets_total{port=\"client\"} 7\n",
            "tsmp_control_mfr_accepted_total 1\n",
            "tsmp_control_mfr_refused_total{reason=\"stale\"} 2\n",
            "tsmp_mempool_in_use 42\n",
            "tsmp_migration_pause_seconds{quantile=\"0.5\"} 0.002\n",
            "tsmp_migration_pause_seconds_count 3\n",
            "tsmp_worker_burst_cycles{worker=\"0\",quantile=\"0.99\"} 300\n",
            "tsmp_worker_burst_cycles_count{worker=\"0\"} 9\n",
        ] {
            assert!(t.contains(want), "no {want:?} in\n{t}");
        }
        // One TYPE line per family, its samples right after it.
        let types: Vec<&str> = t.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut uniq = types.clone();
        uniq.dedup();
        assert_eq!(types.len(), uniq.len(), "{t}");
        // Every sample line is `name{labels} value` or `name value`.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
