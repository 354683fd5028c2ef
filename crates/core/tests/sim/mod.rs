//! A deterministic discrete-event harness: virtual clock, seeded RNG, links with delay, rate,
//! loss and reordering carrying raw IPv4 packets between real TCP stacks (smoltcp, with its
//! documented limits: no SACK use, no PAWS, 1 s minimum RTO, hidden cwnd) and whatever sits in
//! the middle (the proxy core here; the migration engine next).
//!
//! Everything is a function of the seed: a failing test prints it, and re-running with the same
//! seed replays the same packets at the same virtual times. `drive` fails a scenario that
//! livelocks (bounded steps and virtual time).
#![allow(dead_code)]

pub mod dataplane;
pub mod migration;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address};

/// xorshift64*: seedable, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        (self.next() % 1000) < u64::from(per_mille)
    }
}

/// One direction of a link.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// Propagation delay, microseconds.
    pub delay_us: u64,
    /// Bits per second (0: unlimited).
    pub rate_bps: u64,
    /// Loss probability, per mille.
    pub loss: u32,
    /// Probability that a packet is held back by an extra `reorder_us`, per mille.
    pub reorder: u32,
    /// Extra delay of a reordered packet.
    pub reorder_us: u64,
    busy_until: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Vec<u8>)>>,
    seq: u64,
    /// Packets dropped by this link.
    pub dropped: u64,
    /// Packets carried.
    pub carried: u64,
}

impl Link {
    pub fn new(delay_us: u64, rate_bps: u64, loss: u32) -> Link {
        Link {
            delay_us,
            rate_bps,
            loss,
            reorder_us: 3_000,
            ..Link::default()
        }
    }

    /// Puts a packet on the link at `now`.
    pub fn send(&mut self, now: u64, pkt: Vec<u8>, rng: &mut Rng) {
        if rng.chance(self.loss) {
            self.dropped += 1;
            return;
        }
        let start = now.max(self.busy_until);
        let tx = (pkt.len() as u64 * 8 * 1_000_000)
            .checked_div(self.rate_bps)
            .unwrap_or(0);
        self.busy_until = start + tx;
        let mut at = start + tx + self.delay_us;
        if rng.chance(self.reorder) {
            at += self.reorder_us;
        }
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, pkt)));
        self.carried += 1;
    }

    /// Packets whose arrival time has come, in arrival order.
    pub fn due(&mut self, now: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self
            .queue
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            if let Some(Reverse((_, _, p))) = self.queue.pop() {
                out.push(p);
            }
        }
        out
    }

    /// Removes the first packet in arrival order for which `pick` holds; returns whether one
    /// was.
    pub fn drop_first(&mut self, pick: impl Fn(&[u8]) -> bool) -> bool {
        let mut all: Vec<_> = std::mem::take(&mut self.queue).into_sorted_vec();
        all.reverse(); // into_sorted_vec of Reverse(..) is latest first
        let hit = all.iter().position(|Reverse((_, _, p))| pick(p));
        if let Some(i) = hit {
            all.remove(i);
            self.dropped += 1;
        }
        self.queue = all.into_iter().collect();
        hit.is_some()
    }

    /// The next arrival time.
    pub fn next(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }
}

/// A device that hands smoltcp the packets the harness delivers and collects what it sends.
#[derive(Debug, Default)]
pub struct SimDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
    pub mtu: usize,
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}

impl Device for SimDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxToken(p), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

fn instant(us: u64) -> Instant {
    Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
}

/// A host: an smoltcp interface with one TCP socket.
pub struct Host {
    pub iface: Interface,
    pub dev: SimDevice,
    pub sockets: SocketSet<'static>,
    pub tcp: SocketHandle,
}

impl Host {
    /// A host at `addr/prefix` with a default route via `gw`, a TCP socket with `buf`-byte
    /// buffers and an MTU of `mtu`.
    pub fn new(addr: [u8; 4], prefix: u8, gw: [u8; 4], buf: usize, mtu: usize) -> Host {
        Host::build(addr, prefix, gw, (buf, buf), mtu, 0)
    }

    /// A host with separate receive/transmit buffer sizes (the receive buffer decides smoltcp's
    /// window-scale shift: log2(size) - 16) and its own random seed (ISNs).
    pub fn build(
        addr: [u8; 4],
        prefix: u8,
        gw: [u8; 4],
        (rx, tx): (usize, usize),
        mtu: usize,
        seed: u64,
    ) -> Host {
        let mut dev = SimDevice {
            mtu,
            ..SimDevice::default()
        };
        let mut iface_cfg = Config::new(HardwareAddress::Ip);
        iface_cfg.random_seed = seed;
        let mut iface = Interface::new(iface_cfg, &mut dev, Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(
                IpAddress::v4(addr[0], addr[1], addr[2], addr[3]),
                prefix,
            ))
            .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(gw[0], gw[1], gw[2], gw[3]))
            .unwrap();
        let mut sockets = SocketSet::new(Vec::new());
        let sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; tx]),
        );
        let tcp = sockets.add(sock);
        Host {
            iface,
            dev,
            sockets,
            tcp,
        }
    }

    pub fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.tcp)
    }

    /// Runs the stack at `now`; returns the packets it sent.
    pub fn poll(&mut self, now: u64) -> Vec<Vec<u8>> {
        self.iface
            .poll(instant(now), &mut self.dev, &mut self.sockets);
        std::mem::take(&mut self.dev.tx)
    }

    /// When the stack wants to run next.
    pub fn poll_at(&mut self, now: u64) -> Option<u64> {
        self.iface
            .poll_at(instant(now), &self.sockets)
            .map(|i| u64::try_from(i.total_micros()).unwrap_or(0))
    }
}

/// The deterministic byte stream a server sends: byte `i` of stream `id`.
pub fn stream_byte(id: u64, i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(id.wrapping_mul(0x2545_f491))
        >> 56) as u8
}

thread_local! {
    static CLOCK_US: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Sets the virtual clock the timestamp generators read.
pub fn set_clock(us: u64) {
    CLOCK_US.with(|c| c.set(us));
}

fn clock_ms() -> u32 {
    CLOCK_US.with(|c| (c.get() / 1000) as u32)
}

/// TSval clocks with unrelated bases, as Linux randomises them per connection: one for servers,
/// one near the wrap for phones, one for PCs.
pub fn ts_server() -> u32 {
    0x1234_5678u32.wrapping_add(clock_ms())
}
pub fn ts_phone() -> u32 {
    0xffff_f000u32.wrapping_add(clock_ms())
}
pub fn ts_pc() -> u32 {
    0x0000_0100u32.wrapping_add(clock_ms())
}
