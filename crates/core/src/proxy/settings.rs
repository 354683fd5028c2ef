//! What one worker's [`super::ProxyCore`] is built from: the appliance's validated configuration
//! reduced to plain values (addresses, ranges, limits), so that the core never parses a file and
//! tests and simulations build a core without one.

use std::net::Ipv4Addr;

/// One side (port) of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideSettings {
    /// Port index (into the worker's tx queues and the ports' MACs).
    pub port: usize,
    /// The port's MAC address.
    pub mac: [u8; 6],
    /// The proxy's own address on that side.
    pub ip: Ipv4Addr,
    /// Its prefix length (8..=32).
    pub prefix_len: u8,
    /// The next hop for addresses off the link.
    pub gateway: Option<Ipv4Addr>,
}

/// A service: connections to `vip:port` are spliced to `backend:backend_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSettings {
    /// Service address (VIP).
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// Backend server.
    pub backend: Ipv4Addr,
    /// Backend port.
    pub backend_port: u16,
}

/// Everything a proxy core needs; the appliance's `Config::proxy_settings` builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// The client-facing side.
    pub client: SideSettings,
    /// The server-facing side.
    pub server: SideSettings,
    /// The services.
    pub services: Vec<ServiceSettings>,
    /// SNAT source addresses toward the servers (up to 256 are used).
    pub snat_addresses: Vec<Ipv4Addr>,
    /// SNAT source ports, inclusive.
    pub snat_ports: (u16, u16),
    /// Ports of the VIP that new devices of migrating flows connect to, inclusive.
    pub migration_ports: (u16, u16),
    /// MSS written into SYNs that announce a larger one.
    pub mss_clamp: u16,
    /// Flow-table capacity of one worker.
    pub max_flows: u32,
    /// Neighbour-table capacity.
    pub max_neighbours: u32,
    /// Idle timeouts, seconds: handshake, established, after a FIN, after the close.
    pub timeout_syn_s: u32,
    /// See `timeout_syn_s`.
    pub timeout_established_s: u32,
    /// See `timeout_syn_s`.
    pub timeout_fin_s: u32,
    /// See `timeout_syn_s`.
    pub timeout_close_s: u32,
    /// Random spread added to each expiry, milliseconds.
    pub timeout_jitter_ms: u32,
}

impl ProxySettings {
    /// The embedded default configuration's topology (`dpdk-config/default.toml`; a test in the
    /// appliance holds the two equal): client side 198.18.0.254/24 on port 0, server side
    /// 198.19.0.254/24 on port 1, the web (80 -> 198.19.0.2:8080) and chat (6667 -> :6667)
    /// services on 198.18.0.10, SNAT from 198.19.0.100 ports 1024-65535, migration ports
    /// 40000-40999. For tests and simulations.
    pub fn lab(macs: [[u8; 6]; 2]) -> ProxySettings {
        let backend = Ipv4Addr::new(198, 19, 0, 2);
        let vip = Ipv4Addr::new(198, 18, 0, 10);
        ProxySettings {
            client: SideSettings {
                port: 0,
                mac: macs[0],
                ip: Ipv4Addr::new(198, 18, 0, 254),
                prefix_len: 24,
                gateway: None,
            },
            server: SideSettings {
                port: 1,
                mac: macs[1],
                ip: Ipv4Addr::new(198, 19, 0, 254),
                prefix_len: 24,
                gateway: None,
            },
            services: vec![
                ServiceSettings {
                    vip,
                    port: 80,
                    backend,
                    backend_port: 8080,
                },
                ServiceSettings {
                    vip,
                    port: 6667,
                    backend,
                    backend_port: 6667,
                },
            ],
            snat_addresses: vec![Ipv4Addr::new(198, 19, 0, 100)],
            snat_ports: (1024, 65535),
            migration_ports: (40000, 40999),
            mss_clamp: 1400,
            max_flows: 65536,
            max_neighbours: 4096,
            timeout_syn_s: 10,
            timeout_established_s: 7200,
            timeout_fin_s: 60,
            timeout_close_s: 5,
            timeout_jitter_ms: 500,
        }
    }
}
