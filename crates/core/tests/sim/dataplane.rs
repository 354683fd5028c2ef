//! A world around one [`Dataplane`], the same glue the appliance's worker runs: smoltcp hosts on
//! both sides of the proxy, seeded links, Ethernet frames in and out of the data plane, ARP
//! requests and engine-originated segments included. Nothing here reaches into the proxy: what
//! the data plane emits is routed by its port and destination address, as a switch would.

use std::net::Ipv4Addr;

use super::{set_clock, Host, Link, Rng};
use tsmp_core::dataplane::{Dataplane, Io};
use tsmp_core::migrate::cache::Budget;
use tsmp_core::migrate::engine::{EngineConfig, Event};
use tsmp_core::proxy::{FlowHasher, ProxyCore, ProxySettings};

/// The proxy's port MACs (client side, server side).
pub const PORT_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 0xa0], [2, 0, 0, 0, 0, 0xa1]];
/// The server's MAC.
pub const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x51];
/// The server behind the proxy.
pub const SERVER: [u8; 4] = [198, 19, 0, 2];
/// The service address.
pub const VIP: [u8; 4] = [198, 18, 0, 10];

/// What the data plane sent during one call, and what it reported.
#[derive(Debug, Default)]
pub struct SimIo {
    /// Frames to transmit: (port index, Ethernet frame).
    pub out: Vec<(usize, Vec<u8>)>,
    /// Migration events: (slot, event).
    pub events: Vec<(u32, Event)>,
    /// Buffers handed out for frames the data plane built.
    pub allocated: u64,
}

impl Io<Vec<u8>> for SimIo {
    fn tx(&mut self, port: usize, b: Vec<u8>) {
        self.out.push((port, b));
    }
    fn handoff(&mut self, _worker: usize, b: Vec<u8>) -> Result<(), Vec<u8>> {
        // One worker: nothing to hand off to.
        Err(b)
    }
    fn alloc(&mut self) -> Option<Vec<u8>> {
        self.allocated += 1;
        // Stale bytes, as a reused mbuf would have: whatever the data plane does not write shows.
        Some(vec![0xa5; 64])
    }
    fn event(&mut self, slot: u32, ev: Event) {
        self.events.push((slot, ev));
    }
    fn learned(&mut self, _ip: u32, _mac: [u8; 6]) {}
}

/// A device on the client side: its stack, its MAC and its link (up toward the proxy, down).
pub struct Device {
    pub host: Host,
    pub ip: [u8; 4],
    pub mac: [u8; 6],
    pub up: Link,
    pub down: Link,
}

/// The world.
pub struct Net {
    pub dp: Dataplane<Vec<u8>>,
    pub io: SimIo,
    pub rng: Rng,
    /// Virtual time, microseconds.
    pub now: u64,
    pub server: Host,
    /// Server -> proxy.
    pub s_up: Link,
    /// Proxy -> server.
    pub s_down: Link,
    pub devices: Vec<Device>,
    /// Every migration event, with its virtual time.
    pub events: Vec<(u64, Event)>,
    /// Frames the data plane sent to an address nobody has (counted, not delivered).
    pub undeliverable: u64,
}

/// Wraps an IPv4 packet in Ethernet.
pub fn eth(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[8, 0]);
    f.extend_from_slice(ip);
    f
}

/// The IPv4 packet inside an Ethernet frame (trimmed to its total length: Ethernet padding
/// does not reach the stack), or `None` for anything else (ARP).
fn ip_of(f: &[u8]) -> Option<Vec<u8>> {
    if f.len() < 34 || f[12..14] != [8, 0] {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    assert!(
        14 + total <= f.len(),
        "the data plane sent a frame shorter than its IPv4 header says"
    );
    Some(f[14..14 + total].to_vec())
}

impl Net {
    /// A data plane with `settings` and `engine`, a server host and no devices yet.
    pub fn new(seed: u64, settings: &ProxySettings, engine: EngineConfig, server: Host) -> Net {
        let core = ProxyCore::new(settings, 0, 1, FlowHasher::random(), 0, None);
        let mut dp = Dataplane::new(core, 0, engine, Budget::new(64 << 20), None);
        dp.learn(u32::from_be_bytes(SERVER), SERVER_MAC);
        let mut io = SimIo::default();
        // The ARP requests the core sends at start for its backends: answered above.
        dp.housekeeping(0, &mut io);
        io.out.clear();
        Net {
            dp,
            io,
            rng: Rng::new(seed),
            now: 0,
            server,
            s_up: Link::default(),
            s_down: Link::default(),
            devices: Vec::new(),
            events: Vec::new(),
            undeliverable: 0,
        }
    }

    /// Adds a device; returns its index.
    pub fn add_device(&mut self, host: Host, ip: [u8; 4], mac: [u8; 6], link: Link) -> usize {
        self.devices.push(Device {
            host,
            ip,
            mac,
            up: link.clone(),
            down: link,
        });
        self.devices.len() - 1
    }

    /// Routes what the data plane sent.
    fn route(&mut self) {
        for (port, f) in std::mem::take(&mut self.io.out) {
            let Some(ip) = ip_of(&f) else {
                continue;
            };
            if port == 1 {
                if f[0..6] == SERVER_MAC {
                    self.s_down.send(self.now, ip, &mut self.rng);
                } else {
                    self.undeliverable += 1;
                }
                continue;
            }
            let dst = [ip[16], ip[17], ip[18], ip[19]];
            match self.devices.iter_mut().find(|d| d.ip == dst) {
                Some(d) if f[0..6] == d.mac => d.down.send(self.now, ip, &mut self.rng),
                _ => self.undeliverable += 1,
            }
        }
        for (_, ev) in self.io.events.drain(..) {
            self.events.push((self.now, ev));
        }
    }

    /// One step of the world: stacks, links, the data plane (and its housekeeping, as the
    /// worker runs it between bursts), then the clock moves to the next thing that happens
    /// (at most `max_step_us` later, so the engines' timers run on time).
    pub fn step(&mut self, max_step_us: u64) {
        set_clock(self.now);
        for p in self.server.poll(self.now) {
            self.s_up.send(self.now, p, &mut self.rng);
        }
        for d in &mut self.devices {
            for p in d.host.poll(self.now) {
                d.up.send(self.now, p, &mut self.rng);
            }
        }
        self.dp.set_time(self.now);
        for i in 0..self.devices.len() {
            let (mac, due) = (self.devices[i].mac, self.devices[i].up.due(self.now));
            for p in due {
                let f = eth(PORT_MACS[0], mac, &p);
                self.dp.handle(0, f, &mut self.io);
                self.route();
            }
        }
        for p in self.s_up.due(self.now) {
            let f = eth(PORT_MACS[1], SERVER_MAC, &p);
            self.dp.handle(1, f, &mut self.io);
            self.route();
        }
        self.server.dev.rx.extend(self.s_down.due(self.now));
        for d in &mut self.devices {
            d.host.dev.rx.extend(d.down.due(self.now));
        }
        self.dp.housekeeping(u32::MAX, &mut self.io);
        self.route();
        let pending = !self.server.dev.rx.is_empty()
            || self.devices.iter().any(|d| !d.host.dev.rx.is_empty());
        if pending {
            return;
        }
        let mut next = [
            self.s_up.next(),
            self.s_down.next(),
            self.server.poll_at(self.now),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX);
        for d in &mut self.devices {
            for t in [d.up.next(), d.down.next(), d.host.poll_at(self.now)]
                .into_iter()
                .flatten()
            {
                next = next.min(t);
            }
        }
        self.now = next.clamp(self.now + 1, self.now + max_step_us);
    }

    /// The migration events seen so far that match `f`.
    pub fn event<T>(&self, f: impl Fn(&Event) -> Option<T>) -> Option<T> {
        self.events.iter().find_map(|(_, e)| f(e))
    }
}

/// An address and port as the data plane keys them.
pub fn tuple(ip: [u8; 4], port: u16) -> (u32, u16) {
    (u32::from(Ipv4Addr::from(ip)), port)
}
