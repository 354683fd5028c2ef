//! Appliance configuration: TOML files in `dpdk-config/`, read with serde.
//!
//! Invariants, once [`Config::from_toml`] returns `Ok`:
//! - unknown keys were rejected (every table is `deny_unknown_fields`);
//! - every value is in range, every name is unique, every reference (a worker's rx queue naming a
//!   port) resolves, and each (port, rx queue) is polled by exactly one worker;
//! - no worker runs on the main lcore, and no two workers share an lcore.
//!
//! Errors name the key (`port[1].rx_desc`, `worker[0].rx[2]`) and say what a valid value looks
//! like. Nothing here touches DPDK: `tsmp-proxy --check` runs this module alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use tsmp_core::proxy::{ProxySettings, ServiceSettings, SideSettings};

use serde::Deserialize;

/// The configuration the demo and `tsmp-proxy` without `--config` use.
pub const EMBEDDED_DEFAULT: &str = include_str!("../dpdk-config/default.toml");

/// A configuration error: which key, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the configuration came from (file path or `<embedded default>`).
    pub source: String,
    /// The offending key, e.g. `port[1].rx_desc`; empty for syntax errors.
    pub key: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.source, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole appliance configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// EAL (DPDK environment) settings.
    pub eal: EalConfig,
    /// Network ports, in the order DPDK probes them.
    #[serde(rename = "port")]
    pub ports: Vec<PortConfig>,
    /// Packet buffer pool.
    #[serde(default)]
    pub mempool: MempoolConfig,
    /// What the workers do with packets.
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// Poll-mode workers, one per lcore.
    #[serde(rename = "worker")]
    pub workers: Vec<WorkerConfig>,
    /// Bounds on every table and cache.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The migration engine's tunables (its deadline and caches are in `[limits]`).
    #[serde(default)]
    pub migration: MigrationConfig,
    /// Services (VIP:port -> backend) for proxy mode.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Slow-path thread and control plane endpoints.
    #[serde(default)]
    pub control: ControlConfig,
    /// Source-NAT pool for the server-side sub-connections (proxy mode).
    #[serde(default)]
    pub snat: SnatConfig,
    /// The exception path to the kernel (proxy mode).
    #[serde(default)]
    pub exception: Option<ExceptionConfig>,
}

/// Traffic for the appliance's own addresses that the fast path does not answer (control
/// connections, anything but ARP and ping) goes to the kernel through a TAP interface, so that
/// the slow path can use ordinary sockets on those addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
    /// Name of the kernel interface of the `net_tap` port.
    pub tap: String,
    /// Network namespace to move the interface into (created beforehand by the operator); the
    /// root namespace when absent. The appliance assigns the ports' `ip` addresses to it.
    #[serde(default)]
    pub netns: Option<String>,
}

/// The local addresses and ports the appliance uses toward servers.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SnatConfig {
    /// Addresses on the server-side subnet (the appliance answers ARP for them).
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    /// Lowest source port.
    #[serde(default = "default_snat_port_min")]
    pub port_min: u16,
    /// Highest source port.
    #[serde(default = "default_snat_port_max")]
    pub port_max: u16,
}

fn default_snat_port_min() -> u16 {
    1024
}
fn default_snat_port_max() -> u16 {
    65535
}
fn default_mss_clamp() -> u16 {
    1400
}
fn default_timeout_syn() -> u32 {
    10
}
fn default_timeout_established() -> u32 {
    7200
}
fn default_timeout_fin() -> u32 {
    60
}
fn default_timeout_close() -> u32 {
    5
}
fn default_timeout_jitter() -> u32 {
    500
}
fn default_max_neighbours() -> u32 {
    4096
}

/// Parses `a.b.c.d/len` into address and prefix length.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not CIDR like 198.18.0.254/24"))?;
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
    let len: u8 = l
        .parse()
        .map_err(|_| format!("prefix length `{l}` is not a number"))?;
    if !(8..=32).contains(&len) {
        return Err(format!("prefix length {len} is outside 8..=32"));
    }
    Ok((addr, len))
}

/// EAL settings. The lcore list is derived from `main_lcore` and the workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EalConfig {
    /// The lcore that runs the slow path (and EAL's main thread).
    #[serde(default)]
    pub main_lcore: u32,
    /// `--file-prefix`: distinct per DPDK process on one host.
    #[serde(default = "default_file_prefix")]
    pub file_prefix: String,
    /// Use hugepages (`false` adds `--no-huge`, for hosts without them; slower).
    #[serde(default = "yes")]
    pub hugepages: bool,
    /// Memory to reserve at start-up, in MiB (`-m`).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// EAL log level (`--log-level`): emerg, alert, crit, error, warning, notice, info, debug.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Further EAL arguments passed verbatim (e.g. `["--iova-mode=va"]`).
    #[serde(default)]
    pub extra_args: Vec<String>,
}

/// One port: a PCI device bound to a DPDK-compatible driver, or a virtual device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Our name for the port, used by workers and in counters.
    pub name: String,
    /// PCI address (`0000:00:08.0`), for NICs bound to vfio-pci or uio_pci_generic.
    #[serde(default)]
    pub pci: Option<String>,
    /// Virtual device arguments (`net_af_packet0,iface=veth0`, `net_memif0,role=client`, ...).
    #[serde(default)]
    pub vdev: Option<String>,
    /// Receive descriptors per queue (power of two).
    #[serde(default = "default_desc")]
    pub rx_desc: u16,
    /// Transmit descriptors per queue (power of two).
    #[serde(default = "default_desc")]
    pub tx_desc: u16,
    /// Receive all frames, not only those for the port's MAC.
    #[serde(default = "yes")]
    pub promiscuous: bool,
    /// Receive-side scaling across the port's rx queues.
    #[serde(default)]
    pub rss: RssMode,
    /// MTU to set; the driver's default when absent.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// The appliance's own address on this port's subnet, as CIDR (`198.18.0.254/24`). Proxy
    /// mode answers ARP and ping for it and resolves neighbours on this subnet.
    #[serde(default)]
    pub ip: Option<String>,
    /// Next hop for destinations outside `ip`'s subnet.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
}

/// Receive-side scaling policy for a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RssMode {
    /// RSS when the port has more than one rx queue and the driver supports it.
    #[default]
    Auto,
    /// Never RSS.
    Off,
    /// RSS required: start-up fails if the driver cannot do it.
    On,
}

/// The packet buffer pool shared by all ports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MempoolConfig {
    /// Number of mbufs (best as 2^n - 1).
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    /// Per-lcore cache size (at most 512, and at most mbufs / 1.5).
    #[serde(default = "default_mbuf_cache")]
    pub cache: u32,
    /// Data room per mbuf in bytes, headroom included.
    #[serde(default = "default_data_room")]
    pub data_room: u16,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        Self {
            mbufs: default_mbufs(),
            cache: default_mbuf_cache(),
            data_room: default_data_room(),
        }
    }
}

/// Forwarding mode and loop parameters. Decided once at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// `passthrough` (port 0 <-> port 1, frames untouched) or `proxy` (full-NAT TCP splice).
    #[serde(default)]
    pub mode: Mode,
    /// Packets per rx burst (1..=64).
    #[serde(default = "default_burst")]
    pub burst: u16,
    /// Maximum time a packet waits in a partly filled tx buffer, in microseconds.
    #[serde(default = "default_drain_us")]
    pub drain_us: u32,
    /// Proxy mode: the port facing the clients (VIPs live there).
    #[serde(default)]
    pub client_port: Option<String>,
    /// Proxy mode: the port facing the servers (SNAT addresses live there).
    #[serde(default)]
    pub server_port: Option<String>,
    /// MSS written into clients' SYNs when theirs is larger (so any later device can take the
    /// stream); 0 leaves it alone.
    #[serde(default = "default_mss_clamp")]
    pub mss_clamp: u16,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            burst: default_burst(),
            drain_us: default_drain_us(),
            client_port: None,
            server_port: None,
            mss_clamp: default_mss_clamp(),
        }
    }
}

/// What workers do with packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every frame received on one of the two ports leaves on the other, untouched.
    #[default]
    Passthrough,
    /// Full-NAT TCP splice with migration.
    Proxy,
}

/// One poll-mode worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The lcore id EAL gives this worker.
    pub lcore: u32,
    /// The CPU the lcore's thread is pinned to (default: the lcore id). Several workers may share
    /// one CPU for functional tests on small machines (throughput then suffers).
    #[serde(default)]
    pub cpu: Option<u32>,
    /// Rx queues this worker polls, as `"port:queue"`. When absent, worker `i` polls queue `i` of
    /// every port. Each worker transmits on its own tx queue (its index) of every port.
    #[serde(default)]
    pub rx: Option<Vec<String>>,
}

/// The migration engine's tunables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// Bytes the rolling cache keeps below the device's ACK, so that a migration request with
    /// an explicit application offset (bytes the device received but its application did not
    /// read) can be served. 0: only unacknowledged bytes are kept.
    #[serde(default)]
    pub keep_acked_bytes: u32,
    /// The largest MSS the proxy announces or uses toward a new device.
    #[serde(default = "default_migration_mss")]
    pub max_mss: u16,
    /// SYN-ACK retransmissions to a new device before it is given up.
    #[serde(default = "default_synack_retries")]
    pub synack_retries: u32,
    /// Consecutive retransmission timeouts of the replay before it is given up.
    #[serde(default = "default_replay_timeouts")]
    pub replay_timeouts: u32,
    /// Lower bound of the replay's retransmission timeout, milliseconds (Linux: 200).
    #[serde(default = "default_min_rto_ms")]
    pub min_rto_ms: u32,
    /// FIN retransmissions toward an old device whose sub-connection the proxy closes.
    #[serde(default = "default_fin_retries")]
    pub fin_retries: u32,
    /// Least time between two challenge ACKs the proxy sends for one flow (to a blind RST or
    /// SYN, RFC 5961), milliseconds (Linux: `tcp_invalid_ratelimit`, 500).
    #[serde(default = "default_challenge_interval_ms")]
    pub challenge_interval_ms: u32,
    /// Lowest port of the service addresses a new device connects to (one per migration).
    #[serde(default = "default_migration_port_min")]
    pub port_min: u16,
    /// Highest migration port.
    #[serde(default = "default_migration_port_max")]
    pub port_max: u16,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            keep_acked_bytes: 0,
            max_mss: default_migration_mss(),
            synack_retries: default_synack_retries(),
            replay_timeouts: default_replay_timeouts(),
            min_rto_ms: default_min_rto_ms(),
            fin_retries: default_fin_retries(),
            challenge_interval_ms: default_challenge_interval_ms(),
            port_min: default_migration_port_min(),
            port_max: default_migration_port_max(),
        }
    }
}

fn default_migration_mss() -> u16 {
    1460
}
fn default_synack_retries() -> u32 {
    5
}
fn default_replay_timeouts() -> u32 {
    6
}
fn default_min_rto_ms() -> u32 {
    200
}
fn default_fin_retries() -> u32 {
    4
}
fn default_challenge_interval_ms() -> u32 {
    500
}
fn default_migration_port_min() -> u16 {
    40000
}
fn default_migration_port_max() -> u16 {
    40999
}

/// Bounds on tables and caches. Every one is counted when hit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Flow-table capacity per worker.
    #[serde(default = "default_max_flows")]
    pub max_flows_per_worker: u32,
    /// Segment-cache bytes one flow may hold (rolling cache and migration cache).
    #[serde(default = "default_flow_cache")]
    pub flow_cache_bytes: u32,
    /// Segment-cache bytes all flows of one worker may hold together.
    #[serde(default = "default_worker_cache")]
    pub worker_cache_bytes: u64,
    /// Slots of each inter-worker hand-off ring (power of two).
    #[serde(default = "default_handoff_ring")]
    pub handoff_ring: u32,
    /// How long a migration may take from request to resumption, in milliseconds.
    #[serde(default = "default_migration_deadline_ms")]
    pub migration_deadline_ms: u32,
    /// Idle timeout of a flow whose handshake has not completed, in seconds.
    #[serde(default = "default_timeout_syn")]
    pub timeout_syn_s: u32,
    /// Idle timeout of an established flow, in seconds.
    #[serde(default = "default_timeout_established")]
    pub timeout_established_s: u32,
    /// Idle timeout once a FIN was seen, in seconds.
    #[serde(default = "default_timeout_fin")]
    pub timeout_fin_s: u32,
    /// How long a flow stays after both FINs were acknowledged (or after a RST), in seconds.
    #[serde(default = "default_timeout_close")]
    pub timeout_close_s: u32,
    /// Random extra delay added to each timeout, up to this many milliseconds (spreads expiry).
    #[serde(default = "default_timeout_jitter")]
    pub timeout_jitter_ms: u32,
    /// Neighbour (ARP) entries per worker.
    #[serde(default = "default_max_neighbours")]
    pub max_neighbours: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_flows_per_worker: default_max_flows(),
            flow_cache_bytes: default_flow_cache(),
            worker_cache_bytes: default_worker_cache(),
            handoff_ring: default_handoff_ring(),
            migration_deadline_ms: default_migration_deadline_ms(),
            timeout_syn_s: default_timeout_syn(),
            timeout_established_s: default_timeout_established(),
            timeout_fin_s: default_timeout_fin(),
            timeout_close_s: default_timeout_close(),
            timeout_jitter_ms: default_timeout_jitter(),
            max_neighbours: default_max_neighbours(),
        }
    }
}

/// A service: clients connect to `vip:port`; the appliance splices them to `backend`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name (for counters and the CLI).
    pub name: String,
    /// Virtual IP clients connect to.
    pub vip: Ipv4Addr,
    /// TCP port on the VIP.
    pub port: u16,
    /// Backend server address.
    pub backend: Ipv4Addr,
    /// Backend server port.
    pub backend_port: u16,
}

/// Slow-path thread settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix socket the operator CLI talks to.
    #[serde(default = "default_cli_socket")]
    pub cli_socket: PathBuf,
    /// Seconds between counter lines on stdout (0: none).
    #[serde(default)]
    pub stats_interval_s: u32,
    /// Address of the Prometheus text endpoint (`GET /metrics`), served by the slow path in
    /// the proxy's own namespace. Unset: none.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Ended migrations the slow path remembers for `migrations` and `flow` (bounded).
    #[serde(default = "default_migration_history")]
    pub migration_history: usize,
    /// Address and port the device agents send MFRs to: one of the ports' `ip` addresses,
    /// reached through the exception path (needs `[exception]`). Unset: no agent control.
    #[serde(default)]
    pub agents: Option<std::net::SocketAddrV4>,
    /// The naming server devices are resolved with (DNS, UDP), as seen from the exception
    /// path's namespace.
    #[serde(default)]
    pub names: Option<std::net::SocketAddr>,
    /// The devices' zone.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// The proxy's Ed25519 key (created on first start); agents verify MTRs and replies with
    /// its public half (`tsmp-proxy --public-key`).
    #[serde(default = "default_proxy_key")]
    pub key: PathBuf,
    /// Agent control connections served at once; more are refused (`busy`).
    #[serde(default = "default_agent_connections")]
    pub max_agent_connections: u32,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            cli_socket: default_cli_socket(),
            stats_interval_s: 0,
            migration_history: default_migration_history(),
            metrics: None,
            agents: None,
            names: None,
            zone: default_zone(),
            key: default_proxy_key(),
            max_agent_connections: default_agent_connections(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_file_prefix() -> String {
    "tsmp".into()
}
fn default_memory_mb() -> u32 {
    256
}
fn default_log_level() -> String {
    "notice".into()
}
fn default_desc() -> u16 {
    1024
}
fn default_mbufs() -> u32 {
    16383
}
fn default_mbuf_cache() -> u32 {
    256
}
fn default_data_room() -> u16 {
    2176
}
fn default_burst() -> u16 {
    32
}
fn default_drain_us() -> u32 {
    100
}
fn default_max_flows() -> u32 {
    1 << 20
}
fn default_flow_cache() -> u32 {
    4 << 20
}
fn default_worker_cache() -> u64 {
    256 << 20
}
fn default_handoff_ring() -> u32 {
    4096
}
fn default_migration_deadline_ms() -> u32 {
    10_000
}
fn default_zone() -> String {
    "tsmp.test".into()
}
fn default_proxy_key() -> PathBuf {
    PathBuf::from("/var/lib/tsmp/proxy.key")
}
fn default_migration_history() -> usize {
    1024
}
fn default_agent_connections() -> u32 {
    32
}
fn default_cli_socket() -> PathBuf {
    PathBuf::from("/run/tsmp/tsmp.sock")
}

/// Largest burst a worker may use; fixed-size arrays in the worker are this long.
pub const MAX_BURST: u16 = 64;

/// Where one rx queue is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RxAssignment {
    /// Index into [`Config::ports`].
    pub port: usize,
    /// Rx queue on that port.
    pub queue: u16,
}

impl Config {
    /// The embedded default configuration.
    ///
    /// # Errors
    /// Never in a released build: a test parses it.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::from_toml(EMBEDDED_DEFAULT, "<embedded default>")
    }

    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, has unknown keys or invalid values.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: path.display().to_string(),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates configuration text; `source` names it in errors.
    ///
    /// # Errors
    /// Invalid TOML, unknown keys, or values that fail validation.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError {
            source: source.to_owned(),
            key: String::new(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.validate().map_err(|(key, message)| ConfigError {
            source: source.to_owned(),
            key,
            message,
        })?;
        Ok(cfg)
    }

    /// Rx queues per port: one more than the highest queue any worker polls.
    pub fn rx_queues(&self, port: usize) -> u16 {
        self.rx_assignments()
            .iter()
            .flatten()
            .filter(|a| a.port == port)
            .map(|a| a.queue + 1)
            .max()
            .unwrap_or(1)
    }

    /// Tx queues per port: one per worker.
    pub fn tx_queues(&self) -> u16 {
        u16::try_from(self.workers.len()).unwrap_or(u16::MAX)
    }

    /// For each worker, the rx queues it polls (validated, so this cannot fail).
    pub fn rx_assignments(&self) -> Vec<Vec<RxAssignment>> {
        self.workers
            .iter()
            .enumerate()
            .map(|(i, w)| match &w.rx {
                None => (0..self.ports.len())
                    .map(|port| RxAssignment {
                        port,
                        queue: u16::try_from(i).unwrap_or(u16::MAX),
                    })
                    .collect(),
                Some(list) => list.iter().filter_map(|s| self.parse_rx(s).ok()).collect(),
            })
            .collect()
    }

    /// The EAL command line (after `argv[0]`) this configuration asks for. Ports are not on it:
    /// the DPDK layer probes them one by one so that a missing device gets its own error.
    pub fn eal_args(&self) -> Vec<String> {
        let e = &self.eal;
        let mut lcores = vec![format!("{}@{}", e.main_lcore, e.main_lcore)];
        lcores.extend(
            self.workers
                .iter()
                .map(|w| format!("{}@{}", w.lcore, w.cpu.unwrap_or(w.lcore))),
        );
        let mut args = vec![
            "--lcores".to_owned(),
            lcores.join(","),
            "--main-lcore".to_owned(),
            e.main_lcore.to_string(),
            "--file-prefix".to_owned(),
            e.file_prefix.clone(),
            "--log-level".to_owned(),
            e.log_level.clone(),
            "-m".to_owned(),
            e.memory_mb.to_string(),
        ];
        if !e.hugepages {
            args.push("--no-huge".to_owned());
        }
        let pci: Vec<&str> = self.ports.iter().filter_map(|p| p.pci.as_deref()).collect();
        if pci.is_empty() {
            args.push("--no-pci".to_owned());
        } else {
            for a in pci {
                args.push("-a".to_owned());
                args.push(a.to_owned());
            }
        }
        args.extend(e.extra_args.iter().cloned());
        args
    }

    fn parse_rx(&self, s: &str) -> Result<RxAssignment, String> {
        let (name, q) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not `port:queue` (e.g. \"client:0\")"))?;
        let port = self
            .ports
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();
                format!("no port named `{name}`; ports are {names:?}")
            })?;
        let queue = q
            .parse::<u16>()
            .map_err(|_| format!("queue `{q}` in `{s}` is not a number from 0 to 1023"))?;
        if queue >= 1024 {
            return Err(format!("queue {queue} in `{s}` is above 1023"));
        }
        Ok(RxAssignment { port, queue })
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_owned(), m));
        let e = &self.eal;
        if e.main_lcore >= 128 {
            return err(
                "eal.main_lcore",
                format!("{} is above RTE_MAX_LCORE-1 (127)", e.main_lcore),
            );
        }
        if e.file_prefix.is_empty()
            || !e
                .file_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return err(
                "eal.file_prefix",
                format!(
                    "`{}` must be non-empty letters, digits, `-` or `_`",
                    e.file_prefix
                ),
            );
        }
        if !(64..=65536).contains(&e.memory_mb) {
            return err(
                "eal.memory_mb",
                format!("{} MiB is outside 64..=65536", e.memory_mb),
            );
        }
        const LEVELS: [&str; 8] = [
            "emerg", "alert", "crit", "error", "warning", "notice", "info", "debug",
        ];
        if !LEVELS.contains(&e.log_level.as_str()) {
            return err(
                "eal.log_level",
                format!("`{}` is not one of {LEVELS:?}", e.log_level),
            );
        }
        const OWNED: [&str; 9] = [
            "-l",
            "--lcores",
            "-c",
            "--main-lcore",
            "--file-prefix",
            "-m",
            "--no-huge",
            "--vdev",
            "--log-level",
        ];
        for (i, a) in e.extra_args.iter().enumerate() {
            let flag = a.split('=').next().unwrap_or(a);
            if OWNED.contains(&flag) {
                return err(
                    &format!("eal.extra_args[{i}]"),
                    format!("`{a}` is set by the config itself; use the matching key ([eal] or [[port]]) instead"),
                );
            }
        }

        if self.ports.is_empty() {
            return err("port", "at least one [[port]] is required".into());
        }
        if self.ports.len() > 32 {
            return err(
                "port",
                format!("{} ports; at most 32 are supported", self.ports.len()),
            );
        }
        let mut names = BTreeSet::new();
        let mut devices = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let k = |f: &str| format!("port[{i}].{f}");
            if p.name.is_empty() || p.name.contains(':') || p.name.len() > 32 {
                return err(
                    &k("name"),
                    format!("`{}` must be 1-32 characters without `:`", p.name),
                );
            }
            if !names.insert(p.name.as_str()) {
                return err(&k("name"), format!("port name `{}` is used twice", p.name));
            }
            let dev = match (&p.pci, &p.vdev) {
                (Some(_), Some(_)) => {
                    return err(&k("pci"), "set either `pci` or `vdev`, not both".into())
                }
                (None, None) => {
                    return err(
                        &k("vdev"),
                        "set `pci = \"0000:00:08.0\"` for a NIC or `vdev = \"net_...\"` for a virtual device".into(),
                    )
                }
                (Some(pci), None) => {
                    if !is_pci_address(pci) {
                        return err(
                            &k("pci"),
                            format!("`{pci}` is not a PCI address like 0000:00:08.0 (see `dpdk-devbind.py --status`)"),
                        );
                    }
                    pci.clone()
                }
                (None, Some(v)) => {
                    let name = v.split(',').next().unwrap_or("");
                    if !name.starts_with("net_") || name.len() <= 4 {
                        return err(
                            &k("vdev"),
                            format!("`{v}` must start with a DPDK net vdev name such as net_af_packet0, net_tap0, net_memif0, net_ring0, net_null0, net_virtio_user0"),
                        );
                    }
                    name.to_owned()
                }
            };
            if !devices.insert(dev.clone()) {
                return err(&k("vdev"), format!("device `{dev}` is used by two ports"));
            }
            for (f, d) in [("rx_desc", p.rx_desc), ("tx_desc", p.tx_desc)] {
                if !(64..=32768).contains(&d) || !d.is_power_of_two() {
                    return err(
                        &k(f),
                        format!("{d} must be a power of two from 64 to 32768 (e.g. 1024)"),
                    );
                }
            }
            if let Some(mtu) = p.mtu {
                if !(576..=9600).contains(&mtu) {
                    return err(&k("mtu"), format!("{mtu} is outside 576..=9600"));
                }
                if u32::from(mtu) + 18 + 128 > u32::from(self.mempool.data_room) {
                    return err(
                        &k("mtu"),
                        format!(
                            "an MTU of {mtu} needs mempool.data_room >= {} (frame + headroom); raise data_room",
                            u32::from(mtu) + 18 + 128
                        ),
                    );
                }
            }
        }

        let m = &self.mempool;
        if !(1023..=16 * 1024 * 1024).contains(&m.mbufs) {
            return err(
                "mempool.mbufs",
                format!("{} is outside 1023..=16777216", m.mbufs),
            );
        }
        if m.cache > 512 || u64::from(m.cache) * 3 > u64::from(m.mbufs) * 2 {
            return err(
                "mempool.cache",
                format!(
                    "{} must be at most 512 and at most mbufs/1.5 ({})",
                    m.cache,
                    m.mbufs * 2 / 3
                ),
            );
        }
        if !(1024 + 128..=16384).contains(&m.data_room) {
            return err(
                "mempool.data_room",
                format!("{} is outside 1152..=16384", m.data_room),
            );
        }

        let d = &self.dataplane;
        if d.burst == 0 || d.burst > MAX_BURST {
            return err(
                "dataplane.burst",
                format!("{} is outside 1..={MAX_BURST}", d.burst),
            );
        }
        if !(1..=100_000).contains(&d.drain_us) {
            return err(
                "dataplane.drain_us",
                format!("{} is outside 1..=100000", d.drain_us),
            );
        }
        if d.mode == Mode::Passthrough && self.ports.len() != 2 {
            return err(
                "dataplane.mode",
                format!(
                    "passthrough forwards between exactly 2 ports; {} are configured",
                    self.ports.len()
                ),
            );
        }

        if self.workers.is_empty() {
            return err("worker", "at least one [[worker]] is required".into());
        }
        let mut lcores = BTreeSet::new();
        let mut polled: BTreeMap<RxAssignment, usize> = BTreeMap::new();
        for (i, w) in self.workers.iter().enumerate() {
            let k = format!("worker[{i}].lcore");
            if w.lcore >= 128 {
                return err(&k, format!("{} is above RTE_MAX_LCORE-1 (127)", w.lcore));
            }
            if w.lcore == e.main_lcore {
                return err(
                    &k,
                    format!(
                        "lcore {} is eal.main_lcore, which runs the slow path; pick another lcore",
                        w.lcore
                    ),
                );
            }
            if !lcores.insert(w.lcore) {
                return err(&k, format!("lcore {} is given to two workers", w.lcore));
            }
            if w.rx.is_none() {
                for port in 0..self.ports.len() {
                    let a = RxAssignment {
                        port,
                        queue: u16::try_from(i).unwrap_or(u16::MAX),
                    };
                    if let Some(other) = polled.insert(a, i) {
                        return err(
                            &format!("worker[{i}].rx"),
                            format!(
                                "the default mapping (queue {i} of every port) collides with worker[{other}], which polls `{}:{i}`; list this worker's queues in `rx`",
                                self.ports[port].name
                            ),
                        );
                    }
                }
            }
            if let Some(list) = &w.rx {
                if list.is_empty() {
                    return err(
                        &format!("worker[{i}].rx"),
                        "empty list; omit `rx` for the default mapping".into(),
                    );
                }
                for (j, s) in list.iter().enumerate() {
                    let a = self
                        .parse_rx(s)
                        .map_err(|m| (format!("worker[{i}].rx[{j}]"), m))?;
                    if let Some(other) = polled.insert(a, i) {
                        return err(
                            &format!("worker[{i}].rx[{j}]"),
                            format!("`{s}` is already polled by worker[{other}]; each rx queue has one owner"),
                        );
                    }
                }
            }
        }
        for (i, list) in self.rx_assignments().iter().enumerate() {
            if list.is_empty() {
                return err(
                    &format!("worker[{i}].rx"),
                    "this worker polls no queue".into(),
                );
            }
        }

        let l = &self.limits;
        if !(16..=1 << 26).contains(&l.max_flows_per_worker) {
            return err(
                "limits.max_flows_per_worker",
                format!("{} is outside 16..=67108864", l.max_flows_per_worker),
            );
        }
        if !(4096..=1 << 30).contains(&l.flow_cache_bytes) {
            return err(
                "limits.flow_cache_bytes",
                format!("{} is outside 4096..=1073741824", l.flow_cache_bytes),
            );
        }
        if l.worker_cache_bytes < u64::from(l.flow_cache_bytes) {
            return err(
                "limits.worker_cache_bytes",
                format!("{} is below limits.flow_cache_bytes ({}); one flow could never fill its own cache", l.worker_cache_bytes, l.flow_cache_bytes),
            );
        }
        if !(64..=1 << 20).contains(&l.handoff_ring) || !l.handoff_ring.is_power_of_two() {
            return err(
                "limits.handoff_ring",
                format!(
                    "{} must be a power of two from 64 to 1048576",
                    l.handoff_ring
                ),
            );
        }
        if !(100..=600_000).contains(&l.migration_deadline_ms) {
            return err(
                "limits.migration_deadline_ms",
                format!("{} is outside 100..=600000", l.migration_deadline_ms),
            );
        }

        let m = &self.migration;
        if m.keep_acked_bytes >= l.flow_cache_bytes {
            return err(
                "migration.keep_acked_bytes",
                format!(
                    "{} leaves no room for unacknowledged data in limits.flow_cache_bytes ({}); \
                     keep it well below",
                    m.keep_acked_bytes, l.flow_cache_bytes
                ),
            );
        }
        if !(536..=9000).contains(&m.max_mss) {
            return err(
                "migration.max_mss",
                format!("{} is outside 536..=9000", m.max_mss),
            );
        }
        for (k, v, r) in [
            ("migration.synack_retries", m.synack_retries, 1..=10),
            ("migration.replay_timeouts", m.replay_timeouts, 1..=20),
            ("migration.min_rto_ms", m.min_rto_ms, 10..=1000),
            ("migration.fin_retries", m.fin_retries, 0..=10),
            (
                "migration.challenge_interval_ms",
                m.challenge_interval_ms,
                0..=10_000,
            ),
        ] {
            if !r.contains(&v) {
                return err(k, format!("{v} is outside {}..={}", r.start(), r.end()));
            }
        }

        if m.port_min < 1024 || m.port_min > m.port_max {
            return err(
                "migration.port_min",
                format!(
                    "{}..={} is not a range of unprivileged ports",
                    m.port_min, m.port_max
                ),
            );
        }
        if usize::from(m.port_max - m.port_min) + 1 < self.workers.len() {
            return err(
                "migration.port_max",
                format!(
                    "{}..={} gives some of the {} workers no migration port",
                    m.port_min,
                    m.port_max,
                    self.workers.len()
                ),
            );
        }
        if let Some(s) = self
            .services
            .iter()
            .find(|s| (m.port_min..=m.port_max).contains(&s.port))
        {
            return err(
                "migration.port_min",
                format!(
                    "service `{}` listens on port {}, inside the migration ports {}..={}",
                    s.name, s.port, m.port_min, m.port_max
                ),
            );
        }

        let c = &self.control;
        if !(1..=1_000_000).contains(&c.migration_history) {
            return err(
                "control.migration_history",
                format!("{} is outside 1..=1000000", c.migration_history),
            );
        }
        if let Some(a) = c.agents {
            if self.exception.is_none() {
                return err(
                    "control.agents",
                    format!("agents reach {a} through the exception path: add an [exception] section (tap = \"tsmp-x0\")"),
                );
            }
            let ours = self
                .ports
                .iter()
                .filter_map(|p| p.ip.as_deref().and_then(|ip| parse_cidr(ip).ok()))
                .any(|(ip, _)| ip == *a.ip());
            if !ours {
                return err(
                    "control.agents",
                    format!(
                        "{} is none of the ports' `ip` addresses; use the client port's address",
                        a.ip()
                    ),
                );
            }
            if c.names.is_none() {
                return err(
                    "control.names",
                    "agent control needs the naming server's address (names = \"198.18.0.254:53\")"
                        .into(),
                );
            }
            if let Err(e) = tsmp_proto::names::zone(&c.zone) {
                return err("control.zone", e.to_string());
            }
            if !(1..=1024).contains(&c.max_agent_connections) {
                return err(
                    "control.max_agent_connections",
                    format!("{} is outside 1..=1024", c.max_agent_connections),
                );
            }
        }

        let mut svc_names = BTreeSet::new();
        let mut vips = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let k = |f: &str| format!("service[{i}].{f}");
            if s.name.is_empty() || !svc_names.insert(s.name.as_str()) {
                return err(&k("name"), format!("`{}` is empty or used twice", s.name));
            }
            for (f, a) in [("vip", s.vip), ("backend", s.backend)] {
                if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                    return err(&k(f), format!("{a} cannot be a service or backend address"));
                }
            }
            for (f, p) in [("port", s.port), ("backend_port", s.backend_port)] {
                if p == 0 {
                    return err(&k(f), "port 0 is not a valid TCP port".into());
                }
            }
            if !vips.insert((s.vip, s.port)) {
                return err(&k("port"), format!("{}:{} is served twice", s.vip, s.port));
            }
        }
        if d.mode == Mode::Proxy && self.services.is_empty() {
            return err(
                "service",
                "proxy mode needs at least one [[service]]".into(),
            );
        }
        Ok(())
    }
}

fn is_pci_address(s: &str) -> bool {
    // DDDD:BB:DD.F (domain optional).
    let s = if s.matches(':').count() == 1 {
        format!("0000:{s}")
    } else {
        s.to_owned()
    };
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s[0..4]
            .chars()
            .chain(s[5..7].chars())
            .chain(s[8..10].chars())
            .all(|c| c.is_ascii_hexdigit())
        && matches!(b[11], b'0'..=b'7')
}

impl Config {
    /// The migration engine's configuration: `[migration]` plus the deadline and cache sizes
    /// from `[limits]`.
    pub fn engine_config(&self) -> tsmp_core::migrate::engine::EngineConfig {
        use tsmp_core::migrate::engine::EngineConfig;
        use tsmp_core::migrate::sender::SenderConfig;
        let (l, m) = (&self.limits, &self.migration);
        EngineConfig {
            flow_cache_bytes: u64::from(l.flow_cache_bytes),
            keep_acked_bytes: m.keep_acked_bytes,
            deadline_us: u64::from(l.migration_deadline_ms) * 1000,
            sender: SenderConfig {
                min_rto_us: u64::from(m.min_rto_ms) * 1000,
                ..SenderConfig::default()
            },
            max_mss: m.max_mss,
            synack_retries: m.synack_retries,
            replay_timeouts: u64::from(m.replay_timeouts),
            fin_retries: m.fin_retries,
            challenge_interval_us: u64::from(m.challenge_interval_ms) * 1000,
        }
    }

    /// What a proxy worker's core is built from: the client and server sides (with the ports'
    /// MAC addresses `macs`, by port index), services, SNAT, migration ports and limits.
    ///
    /// # Errors
    /// Not a proxy-mode configuration (`validate` catches this first, with the fix).
    pub fn proxy_settings(&self, macs: &[[u8; 6]]) -> Result<ProxySettings, String> {
        let d = &self.dataplane;
        let side = |name: &Option<String>| -> Result<SideSettings, String> {
            let n = name
                .as_deref()
                .ok_or("proxy mode needs client_port and server_port under [dataplane]")?;
            let port = self
                .ports
                .iter()
                .position(|p| p.name == n)
                .ok_or_else(|| format!("no [[port]] named `{n}`"))?;
            let cidr = self.ports[port]
                .ip
                .as_deref()
                .ok_or_else(|| format!("port `{n}` needs an `ip` (CIDR) in proxy mode"))?;
            let (ip, prefix_len) = parse_cidr(cidr)?;
            Ok(SideSettings {
                port,
                mac: *macs
                    .get(port)
                    .ok_or_else(|| format!("no MAC address for port `{n}`"))?,
                ip,
                prefix_len,
                gateway: self.ports[port].gateway,
            })
        };
        let l = &self.limits;
        Ok(ProxySettings {
            client: side(&d.client_port)?,
            server: side(&d.server_port)?,
            services: self
                .services
                .iter()
                .map(|s| ServiceSettings {
                    vip: s.vip,
                    port: s.port,
                    backend: s.backend,
                    backend_port: s.backend_port,
                })
                .collect(),
            snat_addresses: self.snat.addresses.clone(),
            snat_ports: (self.snat.port_min, self.snat.port_max),
            migration_ports: (self.migration.port_min, self.migration.port_max),
            mss_clamp: d.mss_clamp,
            max_flows: l.max_flows_per_worker,
            max_neighbours: l.max_neighbours,
            timeout_syn_s: l.timeout_syn_s,
            timeout_established_s: l.timeout_established_s,
            timeout_fin_s: l.timeout_fin_s,
            timeout_close_s: l.timeout_close_s,
            timeout_jitter_ms: l.timeout_jitter_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_the_cores_lab_topology() {
        let macs = [[2, 0, 0, 0, 0, 0xa0], [2, 0, 0, 0, 0, 0xa1]];
        let cfg = Config::from_toml(EMBEDDED_DEFAULT, "default").unwrap();
        assert_eq!(
            cfg.proxy_settings(&macs).unwrap(),
            ProxySettings::lab(macs),
            "dpdk-config/default.toml and ProxySettings::lab (the simulations' topology) differ"
        );
    }

    #[test]
    fn proxy_settings_name_what_is_missing() {
        let cfg = Config::from_toml(EMBEDDED_DEFAULT, "default").unwrap();
        let e = cfg.proxy_settings(&[[0; 6]]).unwrap_err();
        assert!(e.contains("no MAC address for port `server`"), "{e}");
    }
}
