//! The migration simulation's world (see `tests/sim_migrate.rs` for what every scenario
//! checks): smoltcp hosts, seeded links, the proxy's migration engines, and the harness's NAT and
//! control plane.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ops::Not;

use super::{set_clock, stream_byte, ts_pc, ts_phone, ts_server, Host, Link, Rng};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::IpAddress;
use tsmp_core::migrate::cache::Budget;
use tsmp_core::migrate::engine::{
    Engine, EngineConfig, Event, Failure, Leg, MigrateError, Phase, SharedBuf, Verdict,
};
use tsmp_core::wire::build::{tcp_frame_len, write_tcp_frame, Endpoints};
use tsmp_core::wire::{checksum, classify, Frame, SeqNumber, TcpFlags, TcpMeta, TcpSegmentMut};

const VIP: [u8; 4] = [198, 18, 0, 10];
const SNAT: [u8; 4] = [198, 19, 0, 100];
const SERVER: [u8; 4] = [198, 19, 0, 2];

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Phys {
    Phone,
    Pc,
    Server,
}

impl Phys {
    fn ip(self) -> [u8; 4] {
        match self {
            Phys::Phone => [198, 18, 0, 1],
            Phys::Pc => [198, 18, 0, 3],
            Phys::Server => SERVER,
        }
    }
    fn other(self) -> Phys {
        if self == Phys::Phone {
            Phys::Pc
        } else {
            Phys::Phone
        }
    }
}

/// A device's stack and link.
#[derive(Clone, Debug)]
pub struct DevSpec {
    /// Receive buffer (decides smoltcp's window-scale shift: log2 - 16).
    pub rx_buf: usize,
    pub mtu: usize,
    pub ts: bool,
    pub sack: bool,
    pub link: Link,
}

impl DevSpec {
    fn new(link: Link) -> DevSpec {
        DevSpec {
            rx_buf: 256 * 1024,
            mtu: 1500,
            ts: true,
            sack: true,
            link,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub seed: u64,
    pub flows: usize,
    /// Bytes of each server stream.
    pub total: u64,
    pub server_ts: bool,
    pub server_tx_buf: usize,
    pub server_link: Link,
    pub phone: DevSpec,
    pub pc: DevSpec,
    /// Bytes the holder must have received (since it took the flow) before each MFR.
    pub migrate_after: u64,
    /// Migrations per flow (phone -> PC -> phone ...).
    pub hops: usize,
    pub target_connects: bool,
    /// Cut the old device's link at the MFR.
    pub cut_old: bool,
    /// Loss (per mille) on the server's link until the first MFR (drives the server into
    /// congestion avoidance before it is frozen).
    pub early_server_loss: u32,
    /// Client bytes each device writes while it holds the flow (a chat's lines): the server
    /// must receive the old device's bytes, then the new device's, nothing lost or doubled.
    pub client_bytes: u64,
    /// The MFR carries the application's consumed offset (what the holder's app read).
    pub explicit_offset: bool,
    /// With `cut_old`: the first client segment still in flight from the old device is lost
    /// (later ones arrive), leaving a hole in the client stream nobody can fill.
    pub hole_at_cut: bool,
    /// The target resets its connection as soon as the replay starts.
    pub target_resets: bool,
    pub engine: EngineConfig,
    pub budget: u64,
    pub max_time_us: u64,
}

pub fn scenario(name: &'static str, seed: u64) -> Scenario {
    Scenario {
        name,
        seed,
        flows: 1,
        total: 600_000,
        server_ts: true,
        server_tx_buf: 256 * 1024,
        server_link: Link::new(2_000, 1_000_000_000, 0),
        phone: DevSpec::new(Link::new(20_000, 10_000_000, 0)),
        pc: DevSpec::new(Link::new(5_000, 100_000_000, 0)),
        migrate_after: 150_000,
        hops: 1,
        target_connects: true,
        cut_old: false,
        early_server_loss: 0,
        client_bytes: 0,
        explicit_offset: false,
        hole_at_cut: false,
        target_resets: false,
        engine: EngineConfig {
            deadline_us: 3_000_000,
            ..EngineConfig::default()
        },
        budget: 1 << 30,
        max_time_us: 120_000_000,
    }
}

impl Sock {
    pub fn host_state(&self) -> State {
        self.host.sockets.get::<tcp::Socket>(self.host.tcp).state()
    }

    fn unacked(&self) -> u64 {
        self.host
            .sockets
            .get::<tcp::Socket>(self.host.tcp)
            .send_queue() as u64
    }
}

pub struct Sock {
    pub host: Host,
    pub phys: Phys,
    pub flow: usize,
    pub gen: u32,
    pub rx: Vec<u8>,
    pub sent: u64,
    pub closed: bool,
    pub wake: u64,
}

pub struct FlowRec<B> {
    pub eng: Engine<B>,
    pub snat_port: u16,
    pub server: usize,
    pub devs: HashMap<u32, usize>,
    pub holder: u32,
    /// (generation, resume offset) for every device that took the stream after the first.
    pub resumes: Vec<(u32, u64)>,
    /// (generation, offset in the server's received stream where its data starts).
    pub client_starts: Vec<(u32, u64)>,
    /// What the holder's application had read when the MFR went out.
    pub consumed_at_mfr: Vec<u64>,
    pub refusals: Vec<MigrateError>,
    pub hops_done: usize,
    pub migrating: bool,
    pub cancelled: Option<Failure>,
    pub reset: Option<Failure>,
    pub pending: Option<(u32, Phys, u64)>,
    pub retry_at: u64,
    /// When the server's retransmissions start to count against the migration: the MFR plus
    /// the round trip of the freeze ACK over the server's link.
    pub frozen_from: Option<u64>,
    pub wake: u64,
    pub s_max: Option<SeqNumber>,
    pub s_fin: bool,
    pub retx_migrating: u64,
    pub retx_total: u64,
    /// While frozen: server data segments the proxy received and has not acknowledged yet
    /// (end, when received).
    pub unacked: std::collections::VecDeque<(SeqNumber, u64)>,
    /// (time, stream offset, length) of each server retransmission.
    pub retx_log: Vec<(u64, u32, u32)>,
    pub s_isn: SeqNumber,
    pub c_isn: SeqNumber,
    pub violations: Vec<String>,
    pub timeline: Vec<Event>,
}

/// Turns a frame from the simulated wire into the engine's buffer type.
pub type MakeBuf<'a, B> = Box<dyn Fn(&[u8]) -> B + 'a>;

/// The simulated world: hosts, links, the proxy's engines. `B` is the engine's buffer type
/// (`Vec<u8>`, or DPDK mbufs); `make` turns a frame from the wire into one.
pub struct World<'a, B> {
    make: MakeBuf<'a, B>,
    pub sc: Scenario,
    pub now: u64,
    pub rng: Rng,
    pub socks: Vec<Sock>,
    pub flows: Vec<FlowRec<B>>,
    pub up: HashMap<Phys, Link>,
    pub down: HashMap<Phys, Link>,
    pub by_port: HashMap<(Phys, u16), usize>,
    pub heap: BinaryHeap<Reverse<(u64, bool, usize)>>,
    pub budget: Budget,
    pub steps: u64,
}

/// Reads everything the socket holds into `rx`.
fn read_all(sock: &mut tcp::Socket<'static>, rx: &mut Vec<u8>) -> bool {
    let mut progressed = false;
    while sock.can_recv() {
        let got = sock
            .recv(|b| {
                let n = b.len();
                (n, b.to_vec())
            })
            .unwrap_or_default();
        if got.is_empty() {
            break;
        }
        rx.extend_from_slice(&got);
        progressed = true;
    }
    progressed
}

/// The id of the client stream device `gen` of `flow` writes.
fn client_stream(flow: usize, gen: u32) -> u64 {
    1_000_000 + flow as u64 * 64 + u64::from(gen)
}

fn mport(flow: usize, gen: u32) -> u16 {
    u16::try_from(30_000 + flow * 16 + gen as usize).unwrap()
}

fn local_port(flow: usize, gen: u32) -> u16 {
    u16::try_from(1_024 + flow * 16 + gen as usize).unwrap()
}

fn tcp_meta(ip: &[u8]) -> Option<(Vec<u8>, TcpMeta)> {
    let f = eth(ip);
    match classify(&f) {
        Ok(Frame::Tcp(m)) => Some((f, m)),
        _ => None,
    }
}

fn eth(ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0]);
    f.extend_from_slice(ip);
    f
}

/// A middlebox on a device's path that removes SACK-permitted from its SYN (smoltcp always
/// offers it), so the leg runs without SACK.
fn strip_sack_permitted(frame: &mut [u8], m: &TcpMeta) {
    let start = m.l4 + 20;
    let end = m.l4 + m.tcp_hdr_len;
    let mut i = start;
    while i < end {
        match frame[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(frame.get(i + 1).copied().unwrap_or(2)).max(2);
                if kind == 4 {
                    frame[i] = 1;
                    frame[i + 1] = 1;
                }
                i += len;
            }
        }
    }
    frame[m.l4 + 16] = 0;
    frame[m.l4 + 17] = 0;
    let tcp_len = u16::try_from(m.tcp_hdr_len + m.payload_len).unwrap();
    let acc = checksum::pseudo_ipv4(m.src, m.dst, 6, tcp_len);
    let end = m.l4 + usize::from(tcp_len);
    let c = checksum::finish(checksum::sum(acc, &frame[m.l4..end]));
    frame[m.l4 + 16..m.l4 + 18].copy_from_slice(&c.to_be_bytes());
}

impl<'a, B: SharedBuf> World<'a, B> {
    pub fn new(sc: Scenario) -> World<'a, B>
    where
        B: From<Vec<u8>>,
    {
        World::with_buffers(sc, Box::new(|f: &[u8]| B::from(f.to_vec())))
    }

    pub fn with_buffers(sc: Scenario, make: MakeBuf<'a, B>) -> World<'a, B> {
        let mut rng = Rng::new(sc.seed);
        let mut up = HashMap::new();
        let mut down = HashMap::new();
        for (p, l) in [
            (Phys::Phone, &sc.phone.link),
            (Phys::Pc, &sc.pc.link),
            (Phys::Server, &sc.server_link),
        ] {
            up.insert(p, l.clone());
            down.insert(p, l.clone());
        }
        if sc.early_server_loss > 0 {
            up.get_mut(&Phys::Server).unwrap().loss = sc.early_server_loss;
        }
        let budget = Budget::new(sc.budget);
        let mut w = World {
            make,
            now: 0,
            socks: Vec::new(),
            flows: Vec::new(),
            up,
            down,
            by_port: HashMap::new(),
            heap: BinaryHeap::new(),
            budget,
            steps: 0,
            rng: Rng::new(rng.next()),
            sc,
        };
        for f in 0..w.sc.flows {
            let snat_port = u16::try_from(20_000 + f).unwrap();
            let mut server = Host::build(
                SERVER,
                24,
                [198, 19, 0, 254],
                (64 * 1024, w.sc.server_tx_buf),
                1500,
                rng.next(),
            );
            server.socket().listen(8080).unwrap();
            server
                .socket()
                .set_congestion_control(tcp::CongestionControl::Reno);
            if w.sc.server_ts {
                server.socket().set_tsval_generator(Some(ts_server));
            }
            let si = w.add_sock(server, Phys::Server, f, u32::MAX, snat_port);
            w.flows.push(FlowRec {
                eng: Engine::new(w.sc.engine),
                snat_port,
                server: si,
                devs: HashMap::new(),
                holder: 0,
                resumes: Vec::new(),
                client_starts: Vec::new(),
                consumed_at_mfr: Vec::new(),
                refusals: Vec::new(),
                hops_done: 0,
                migrating: false,
                cancelled: None,
                reset: None,
                pending: None,
                retry_at: 0,
                frozen_from: None,
                wake: u64::MAX,
                s_max: None,
                s_fin: false,
                retx_migrating: 0,
                retx_total: 0,
                retx_log: Vec::new(),
                unacked: std::collections::VecDeque::new(),
                s_isn: SeqNumber(0),
                c_isn: SeqNumber(0),
                violations: Vec::new(),
                timeline: Vec::new(),
            });
            let seed = rng.next();
            w.connect(f, 0, Phys::Phone, 80, seed);
        }
        w
    }

    fn spec(&self, p: Phys) -> &DevSpec {
        if p == Phys::Phone {
            &self.sc.phone
        } else {
            &self.sc.pc
        }
    }

    fn add_sock(&mut self, host: Host, phys: Phys, flow: usize, gen: u32, key_port: u16) -> usize {
        let i = self.socks.len();
        self.socks.push(Sock {
            host,
            phys,
            flow,
            gen,
            rx: Vec::new(),
            sent: 0,
            closed: false,
            wake: 0,
        });
        self.by_port.insert((phys, key_port), i);
        self.heap.push(Reverse((0, false, i)));
        i
    }

    fn connect(&mut self, flow: usize, gen: u32, phys: Phys, vport: u16, seed: u64) {
        let spec = self.spec(phys).clone();
        let mut h = Host::build(
            phys.ip(),
            24,
            [198, 18, 0, 254],
            (spec.rx_buf, 64 * 1024),
            spec.mtu,
            seed,
        );
        if spec.ts {
            h.socket().set_tsval_generator(Some(if phys == Phys::Phone {
                ts_phone
            } else {
                ts_pc
            }));
        }
        let lp = local_port(flow, gen);
        let cx = h.iface.context();
        h.sockets
            .get_mut::<tcp::Socket>(h.tcp)
            .connect(
                cx,
                (IpAddress::v4(VIP[0], VIP[1], VIP[2], VIP[3]), vport),
                lp,
            )
            .unwrap();
        let i = self.add_sock(h, phys, flow, gen, lp);
        self.socks[i].wake = self.now;
        self.heap.push(Reverse((self.now, false, i)));
        self.flows[flow].devs.insert(gen, i);
    }

    pub fn fail(&self, what: &str) -> ! {
        if std::env::var_os("TSMP_SIM_DUMP").is_some() {
            for fr in &self.flows {
                eprintln!("{}", fr.eng.describe());
            }
        }
        panic!(
            "[{} seed={}] t={}ms: {what}",
            self.sc.name,
            self.sc.seed,
            self.now / 1000
        )
    }

    // ---------------------------------------------------------------- the proxy

    fn proxy_in(&mut self, from: Phys, ip: Vec<u8>) {
        let Some((mut frame, m)) = tcp_meta(&ip) else {
            return;
        };
        let (flow, leg) = if from == Phys::Server {
            let Some(&si) = self.by_port.get(&(Phys::Server, m.dport)) else {
                return;
            };
            (self.socks[si].flow, Leg::Server)
        } else {
            let Some(&si) = self.by_port.get(&(from, m.sport)) else {
                return;
            };
            (self.socks[si].flow, Leg::Device(self.socks[si].gen))
        };
        self.trace("in ", flow, leg, &m);
        if leg == Leg::Server {
            self.observe_server_sends(flow, &m);
        } else if !self.spec(from).sack && m.flags.has(TcpFlags::SYN) {
            strip_sack_permitted(&mut frame, &m);
        }
        let now = self.now;
        let fr = &mut self.flows[flow];
        let buf = (self.make)(&frame);
        match fr.eng.on_segment(now, leg, buf, &mut self.budget) {
            Verdict::Forward(to, buf) => self.proxy_out(flow, to, buf.as_ref().to_vec()),
            Verdict::Consumed | Verdict::Drop(_) => {}
        }
        self.drain(flow);
    }

    fn drain(&mut self, flow: usize) {
        let now = self.now;
        while let Some(e) = self.flows[flow].eng.poll_transmit(now) {
            let ep = Endpoints::default();
            let mut buf = vec![0u8; tcp_frame_len(&e.fields, e.payload_len as usize)];
            let parts: Vec<&[u8]> = self.flows[flow].eng.payload(&e).collect();
            let got: usize = parts.iter().map(|p| p.len()).sum();
            if got != e.payload_len as usize {
                self.fail(&format!(
                    "emit of {} bytes found only {got} in the cache ({e:?})",
                    e.payload_len
                ));
            }
            write_tcp_frame(&mut buf, &ep, &e.fields, &parts).unwrap();
            if let Leg::Device(g) = e.to {
                // What the proxy originates must fit the device's MTU (its MSS counts no
                // options; the IP packet is the frame without its Ethernet header).
                let phys = self.socks[self.flows[flow].devs[&g]].phys;
                let mtu = self.spec(phys).mtu;
                if buf.len() - 14 > mtu {
                    self.fail(&format!(
                        "the proxy sent device {g} a {}-byte packet over its {mtu}-byte MTU",
                        buf.len() - 14
                    ));
                }
            }
            self.proxy_out(flow, e.to, buf);
        }
        while let Some(ev) = self.flows[flow].eng.poll_event() {
            self.on_event(flow, ev);
        }
        let wake = self.flows[flow].eng.poll_timeout().unwrap_or(u64::MAX);
        self.flows[flow].wake = wake;
        if wake != u64::MAX {
            self.heap.push(Reverse((wake, true, flow)));
        }
    }

    fn on_event(&mut self, flow: usize, ev: Event) {
        let fr = &mut self.flows[flow];
        fr.timeline.push(ev);
        match ev {
            Event::Connected {
                device,
                resume_offset,
                client_offset,
                ..
            } => {
                fr.resumes.push((device, resume_offset));
                fr.client_starts.push((device, client_offset));
            }
            Event::Replaying { device, .. } => {
                if self.sc.target_resets {
                    let i = fr.devs[&device];
                    self.socks[i].host.socket().abort();
                    self.socks[i].wake = self.now;
                    self.heap.push(Reverse((self.now, false, i)));
                }
            }
            Event::Resumed { device, .. } => {
                fr.unacked.clear();
                if device != fr.holder {
                    fr.hops_done += 1;
                }
                fr.holder = device;
                fr.migrating = false;
            }
            Event::Cancelled { reason, .. } => {
                // The flow is still migrating (back to the old device) until `Resumed`.
                fr.cancelled = Some(reason);
                fr.resumes.clear();
                fr.client_starts.clear();
            }
            Event::Reset { reason, .. } => {
                fr.reset = Some(reason);
                fr.migrating = false;
            }
            Event::Paused { .. } => {}
        }
    }

    /// Rewrites a frame's addresses for `to` (the NAT's job) and puts it on the wire.
    fn proxy_out(&mut self, flow: usize, to: Leg, mut f: Vec<u8>) {
        let Ok(Frame::Tcp(m)) = classify(&f) else {
            self.fail("the engine produced a frame that does not parse")
        };
        let fr = &self.flows[flow];
        let (phys, ep) = match to {
            Leg::Server => (Phys::Server, (SNAT, fr.snat_port, SERVER, 8080u16)),
            Leg::Device(g) => {
                let Some(&si) = fr.devs.get(&g) else {
                    self.fail(&format!("segment for unknown device generation {g}"))
                };
                let s = &self.socks[si];
                let vport = if g == 0 { 80 } else { mport(flow, g) };
                (s.phys, (VIP, vport, s.phys.ip(), local_port(flow, g)))
            }
        };
        {
            let mut v = TcpSegmentMut::new(&mut f, &m).unwrap();
            v.set_src_addr(ep.0);
            v.set_src_port(ep.1);
            v.set_dst_addr(ep.2);
            v.set_dst_port(ep.3);
        }
        let m = match classify(&f) {
            Ok(Frame::Tcp(m)) if tsmp_core::wire::tcp_checksum_ok(&f, &m) => m,
            _ => self.fail("a frame toward a peer has a bad checksum"),
        };
        self.trace("out", flow, to, &m);
        if phys == Phys::Server {
            if m.flags.has(TcpFlags::SYN) {
                self.flows[flow].c_isn = m.seq;
            }
            self.observe_to_server(flow, &m);
        }
        let ip = f[14..].to_vec();
        let now = self.now;
        self.down
            .get_mut(&phys)
            .unwrap()
            .send(now, ip, &mut self.rng);
    }

    /// With `TSMP_SIM_TRACE=<flow>`, prints every segment through the proxy for that flow
    /// (server numbers as stream offsets).
    fn trace(&self, dir: &str, flow: usize, leg: Leg, m: &TcpMeta) {
        let Some(want) = std::env::var("TSMP_SIM_TRACE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        else {
            return;
        };
        if want != flow {
            return;
        }
        let fr = &self.flows[flow];
        let s0 = fr.s_isn.0.wrapping_add(1);
        let c0 = fr.c_isn.0.wrapping_add(1);
        // Server-side segments as stream offsets (server data from s0, client data from c0);
        // device-side ones raw (each device has its own numbers).
        let (seq, ack) = match (leg, dir) {
            (Leg::Server, "in ") => (m.seq.0.wrapping_sub(s0), m.ack.0.wrapping_sub(c0)),
            (Leg::Server, _) => (m.seq.0.wrapping_sub(c0), m.ack.0.wrapping_sub(s0)),
            _ => (m.seq.0, m.ack.0),
        };
        eprintln!(
            "{:>9}us {dir} {leg:?} seq={seq} ack={ack} len={} win={} flags={:#04x}",
            self.now, m.payload_len, m.window, m.flags.0
        );
    }

    // ------------------------------------------------------- what the server sees

    fn observe_server_sends(&mut self, flow: usize, m: &TcpMeta) {
        let fr = &mut self.flows[flow];
        let len = m.payload_len as u32;
        if m.flags.has(TcpFlags::SYN) {
            fr.s_isn = m.seq;
            fr.s_max = Some(m.seq + 1);
            return;
        }
        let Some(max) = fr.s_max else { return };
        // A one-byte segment is smoltcp's zero-window probe, not a retransmission.
        if len > 1 && m.seq.diff(max) < 0 {
            fr.retx_total += 1;
            let off = m.seq.0.wrapping_sub(fr.s_isn.0.wrapping_add(1));
            fr.retx_log.push((self.now, off, len));
            // Blamed on the migration only if the server sent it after the freeze ACK reached it
            // (a retransmission already triggered by duplicate ACKs forwarded before the MFR is
            // ordinary loss recovery racing the freeze).
            if fr.migrating && fr.frozen_from.is_some_and(|t| self.now >= t) {
                fr.retx_migrating += 1;
            }
        }
        let end = m.seq + len + u32::from(m.flags.has(TcpFlags::FIN));
        // A frozen server must get the ACK of every segment at once (Linux fires a tail-loss
        // probe 2*SRTT + a few ms later). One-byte segments are smoltcp's window probes.
        if fr.migrating && len > 1 {
            fr.unacked.push_back((m.seq + len, self.now));
        }
        if end.diff(max) > 0 {
            fr.s_max = Some(end);
        }
        if m.flags.has(TcpFlags::FIN) {
            fr.s_fin = true;
        }
    }

    fn observe_to_server(&mut self, flow: usize, m: &TcpMeta) {
        let fr = &mut self.flows[flow];
        let mut v = Vec::new();
        if m.flags.has(TcpFlags::RST) && fr.reset.is_none() {
            v.push(format!("the server received a RST: {m:?}"));
        }
        if m.flags.has(TcpFlags::FIN) && !fr.s_fin {
            v.push(format!("the server received a FIN before it closed: {m:?}"));
        }
        if m.flags.has(TcpFlags::ACK) {
            while fr.unacked.front().is_some_and(|(e, _)| m.ack.diff(*e) >= 0) {
                fr.unacked.pop_front();
            }
        }
        if let Some(&(e, at)) = fr.unacked.front() {
            if self.now > at + 1_000 {
                v.push(format!(
                    "the frozen server waited {} us for the ACK of its segment ending at {}",
                    self.now - at,
                    e.0
                ));
            }
        }
        if let Some(max) = fr.s_max {
            if m.flags.has(TcpFlags::ACK) && m.ack.diff(max) > 0 {
                v.push(format!(
                    "the server received an ACK for data it never sent (ack {} > {}): {m:?}",
                    m.ack.0, max.0
                ));
            }
        }
        fr.violations.extend(v);
    }

    // ------------------------------------------------------------------ hosts

    fn service(&mut self, i: usize) {
        set_clock(self.now);
        for _ in 0..16 {
            let out = self.socks[i].host.poll(self.now);
            let progressed = self.app(i);
            let phys = self.socks[i].phys;
            let quiet = out.is_empty();
            let now = self.now;
            for p in out {
                self.up.get_mut(&phys).unwrap().send(now, p, &mut self.rng);
            }
            if quiet && !progressed {
                break;
            }
        }
        let now = self.now;
        let at = self.socks[i]
            .host
            .poll_at(now)
            .map_or(u64::MAX, |t| t.max(now + 1));
        self.socks[i].wake = at;
        if at != u64::MAX {
            self.heap.push(Reverse((at, false, i)));
        }
    }

    /// The applications: the server streams its bytes and closes; devices read everything and
    /// close after the end of the stream.
    fn app(&mut self, i: usize) -> bool {
        let total = self.sc.total;
        let s = &mut self.socks[i];
        let flow = s.flow;
        let mut progressed = false;
        if s.phys == Phys::Server {
            let sock = s.host.socket();
            while s.sent < total && sock.can_send() {
                let start = s.sent;
                let n = sock
                    .send(|b| {
                        let n = b.len().min((total - start) as usize);
                        for (k, x) in b[..n].iter_mut().enumerate() {
                            *x = stream_byte(flow as u64, start + k as u64);
                        }
                        (n, n)
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                s.sent += n as u64;
                progressed = true;
            }
            if s.sent == total && !s.closed {
                sock.close();
                s.closed = true;
                progressed = true;
            }
            progressed |= read_all(sock, &mut s.rx);
            return progressed;
        }
        let fr = &self.flows[flow];
        let writing = fr.holder == s.gen && !fr.migrating && s.closed.not();
        let sock = s.host.socket();
        if writing && s.sent < self.sc.client_bytes && sock.can_send() {
            let (start, gen, limit) = (s.sent, s.gen, self.sc.client_bytes);
            let n = sock
                .send(|b| {
                    let n = b.len().min((limit - start) as usize).min(700);
                    for (k, x) in b[..n].iter_mut().enumerate() {
                        *x = stream_byte(client_stream(flow, gen), start + k as u64);
                    }
                    (n, n)
                })
                .unwrap_or(0);
            s.sent += n as u64;
            progressed |= n > 0;
        }
        progressed |= read_all(sock, &mut s.rx);
        if !s.closed && sock.state() == State::CloseWait {
            sock.close();
            s.closed = true;
            progressed = true;
        }
        progressed
    }

    // ------------------------------------------------------------- control plane

    fn control(&mut self) {
        for f in 0..self.flows.len() {
            if let Some(&(e, at)) = self.flows[f].unacked.front() {
                if self.now > at + 1_000 {
                    let waited = self.now - at;
                    let fr = &self.flows[f];
                    self.fail(&format!(
                        "flow {f}: the frozen server waited {waited} us (and counting) for the \
                         ACK of its segment ending at {} ({:?})",
                        e.0, fr.timeline
                    ));
                }
            }
            if let Some((gen, phys, at)) = self.flows[f].pending {
                if self.now >= at {
                    self.flows[f].pending = None;
                    let seed = self.rng.next();
                    self.connect(f, gen, phys, mport(f, gen), seed);
                }
            }
            let fr = &self.flows[f];
            if fr.migrating
                || fr.hops_done >= self.sc.hops
                || fr.cancelled.is_some()
                || fr.reset.is_some()
                || fr.eng.phase() != Phase::Forwarding
            {
                continue;
            }
            let holder = fr.devs[&fr.holder];
            if (self.socks[holder].rx.len() as u64) < self.sc.migrate_after {
                continue;
            }
            let holder_phys = self.socks[holder].phys;
            let now = self.now;
            let fr = &mut self.flows[f];
            if fr.retry_at > now {
                continue;
            }
            let consumed = self.socks[holder].rx.len() as u64;
            let start = fr
                .resumes
                .iter()
                .find(|(g, _)| *g == fr.holder)
                .map_or(0, |r| r.1);
            let offset = self.sc.explicit_offset.then_some(start + consumed);
            let attempt = fr.eng.migrate(now, offset, &mut self.budget);
            if attempt.is_ok() {
                fr.consumed_at_mfr.push(start + consumed);
                // A second request for the same flow is refused and changes nothing.
                let again = fr.eng.migrate(now, None, &mut self.budget);
                if again != Err(MigrateError::AlreadyMigrating) {
                    self.fail(&format!("second MFR: {again:?}"));
                }
            }
            match attempt {
                Err(MigrateError::Gap { .. }) => {
                    // Transient: the control plane retries after a round trip.
                    fr.retry_at = now + 50_000;
                    continue;
                }
                Ok(gen) => {
                    fr.migrating = true;
                    fr.frozen_from = Some(now + 2 * self.sc.server_link.delay_us + 1_000);
                    if self.sc.target_connects {
                        fr.pending = Some((gen, holder_phys.other(), now + 10_000));
                    }
                }
                Err(r @ (MigrateError::CacheLimit { .. } | MigrateError::NotCached { .. })) => {
                    fr.refusals.push(r);
                    fr.cancelled = Some(Failure::CacheFull);
                    continue;
                }
                Err(r) => self.fail(&format!("MFR refused: {r}")),
            }
            if self.sc.early_server_loss > 0 {
                self.up.get_mut(&Phys::Server).unwrap().loss = 0;
            }
            if self.sc.cut_old && self.sc.hole_at_cut {
                let lost = self
                    .up
                    .get_mut(&holder_phys)
                    .unwrap()
                    .drop_first(|p| tcp_meta(p).is_some_and(|(_, m)| m.payload_len > 0));
                if !lost {
                    self.fail("no client data in flight to lose at the cut");
                }
            }
            if self.sc.cut_old {
                self.up.get_mut(&holder_phys).unwrap().loss = 1000;
                self.down.get_mut(&holder_phys).unwrap().loss = 1000;
            }
            self.drain(f);
        }
    }

    fn finished(&self) -> bool {
        self.flows.iter().all(|fr| {
            if fr.reset.is_some() {
                return true;
            }
            if fr.migrating || fr.pending.is_some() {
                return false;
            }
            if fr.cancelled.is_none() && fr.hops_done < self.sc.hops {
                return false;
            }
            let h = &self.socks[fr.devs[&fr.holder]];
            let start = fr
                .resumes
                .iter()
                .find(|(g, _)| *g == fr.holder)
                .map_or(0, |r| r.1);
            let server = &self.socks[fr.server];
            let server_done = self.sc.client_bytes == 0
                || (server.closed
                    && matches!(
                        server.host_state(),
                        State::TimeWait | State::Closed | State::Listen
                    ));
            start + h.rx.len() as u64 >= self.sc.total && h.closed && server_done
        })
    }

    // ------------------------------------------------------------------ driver

    pub fn run(&mut self) {
        while !self.finished() {
            self.step();
        }
    }

    /// One step of the discrete-event driver: deliver what the links carry, fire what is due,
    /// let the control plane act, advance the clock to the next event.
    pub fn step(&mut self) {
        self.steps += 1;
        if self.steps > 20_000_000 || self.now > self.sc.max_time_us {
            self.fail(&format!("did not finish (steps {})", self.steps));
        }
        for p in [Phys::Server, Phys::Phone, Phys::Pc] {
            let now = self.now;
            for pkt in self.up.get_mut(&p).unwrap().due(now) {
                self.proxy_in(p, pkt);
            }
            for pkt in self.down.get_mut(&p).unwrap().due(now) {
                let Some((_, m)) = tcp_meta(&pkt) else {
                    continue;
                };
                let key = if p == Phys::Server {
                    (p, m.sport)
                } else {
                    (p, m.dport)
                };
                if let Some(&i) = self.by_port.get(&key) {
                    self.socks[i].host.dev.rx.push_back(pkt);
                    self.socks[i].wake = now;
                    self.heap.push(Reverse((now, false, i)));
                }
            }
        }
        while let Some(&Reverse((t, is_flow, i))) = self.heap.peek() {
            if t > self.now {
                break;
            }
            self.heap.pop();
            if is_flow {
                if self.flows[i].wake == t {
                    self.flows[i].wake = u64::MAX;
                    let now = self.now;
                    self.flows[i].eng.on_timeout(now, &mut self.budget);
                    self.drain(i);
                }
            } else if self.socks[i].wake == t {
                self.service(i);
            }
        }
        self.control();
        let mut next = u64::MAX;
        for l in self.up.values().chain(self.down.values()) {
            if let Some(t) = l.next() {
                next = next.min(t);
            }
        }
        if let Some(Reverse((t, _, _))) = self.heap.peek() {
            next = next.min(*t);
        }
        for fr in &self.flows {
            if let Some((_, _, at)) = fr.pending {
                next = next.min(at);
            }
            if fr.retry_at > self.now {
                next = next.min(fr.retry_at);
            }
        }
        if next == u64::MAX && !self.finished() {
            self.fail("nothing left to happen, yet the scenario is not finished");
        }
        self.now = next.max(self.now);
    }

    /// The checks every scenario makes from the outside.
    pub fn verify(&self) {
        for (f, fr) in self.flows.iter().enumerate() {
            let ctx = format!("flow {f} timeline {:?}", fr.timeline);
            if let Some(v) = fr.violations.first() {
                self.fail(&format!("{v} ({} violations; {ctx})", fr.violations.len()));
            }
            if fr.reset.is_some() {
                continue;
            }
            if fr.retx_migrating > 0 {
                self.fail(&format!(
                    "the server retransmitted {} segments during the migration {:?} ({ctx})",
                    fr.retx_migrating, fr.retx_log
                ));
            }
            let clean = |l: &Link| l.loss == 0 && l.reorder == 0;
            if clean(&self.sc.phone.link)
                && clean(&self.sc.pc.link)
                && self.sc.early_server_loss == 0
                && fr.retx_total > 0
            {
                self.fail(&format!(
                    "lossless links, yet the server retransmitted {} segments {:?} ({ctx})",
                    fr.retx_total, fr.retx_log
                ));
            }
            // Stitch the stream: device g holds [start_g, start_{next}).
            let mut cuts: Vec<(u32, u64)> = vec![(0, 0)];
            cuts.extend(fr.resumes.iter().copied());
            for (k, &(g, start)) in cuts.iter().enumerate() {
                let rx = &self.socks[fr.devs[&g]].rx;
                for (j, b) in rx.iter().enumerate() {
                    let at = start + j as u64;
                    if at >= self.sc.total || *b != stream_byte(f as u64, at) {
                        self.fail(&format!(
                            "device {g} byte {j} (stream offset {at}) differs from the server's stream ({ctx})"
                        ));
                    }
                }
                let end = cuts.get(k + 1).map_or(self.sc.total, |c| c.1);
                if start + (rx.len() as u64) < end {
                    self.fail(&format!(
                        "device {g} has stream bytes {start}..{} but should have up to {end} ({ctx})",
                        start + rx.len() as u64
                    ));
                }
            }
        }
        if self.sc.client_bytes > 0 {
            self.verify_client_stream();
        }
        if self.budget.used != 0
            && self
                .flows
                .iter()
                .all(|f| f.eng.phase() != Phase::Forwarding)
        {
            self.fail(&format!("{} cache bytes still charged", self.budget.used));
        }
    }
}

impl<B: SharedBuf> World<'_, B> {
    /// The server received each device's client bytes in order: device g's from its start
    /// offset to the next device's, at least everything g's stack saw acknowledged, nothing
    /// lost, doubled or reordered; the last holder's bytes in full.
    fn verify_client_stream(&self) {
        for (f, fr) in self.flows.iter().enumerate() {
            if fr.reset.is_some() {
                continue;
            }
            let rx = &self.socks[fr.server].rx;
            let mut cuts: Vec<(u32, u64)> = vec![(0, 0)];
            cuts.extend(fr.client_starts.iter().copied());
            for (k, &(g, start)) in cuts.iter().enumerate() {
                let last = k + 1 == cuts.len();
                let end = cuts.get(k + 1).map_or(rx.len() as u64, |c| c.1);
                let s = &self.socks[fr.devs[&g]];
                let acked = s.sent - s.unacked();
                let got = end.saturating_sub(start);
                if got < acked {
                    self.fail(&format!(
                        "flow {f}: device {g}'s stack saw {acked} client bytes acknowledged, the \
                         server got {got} ({:?})",
                        fr.timeline
                    ));
                }
                for i in start..end {
                    let want = stream_byte(client_stream(f, g), i - start);
                    if i - start >= s.sent || rx[i as usize] != want {
                        self.fail(&format!(
                            "flow {f}: server byte {i} is not device {g}'s client byte {} ({:?})",
                            i - start,
                            fr.timeline
                        ));
                    }
                }
                if last && got != s.sent {
                    self.fail(&format!(
                        "flow {f}: the last holder wrote {} client bytes, the server got {got}",
                        s.sent
                    ));
                }
            }
        }
    }
}

pub fn run(sc: Scenario) -> World<'static, Vec<u8>> {
    let mut w = World::new(sc);
    w.run();
    w.verify();
    if std::env::var_os("TSMP_SIM_VERBOSE").is_some() {
        for (f, fr) in w.flows.iter().enumerate().take(3) {
            eprintln!(
                "[{} seed={}] flow {f}: t={}ms steps={} resumes={:?} retx={} stats={:?}\n  timeline={:?}",
                w.sc.name, w.sc.seed, w.now / 1000, w.steps, fr.resumes, fr.retx_total, fr.eng.stats, fr.timeline
            );
        }
    }
    w
}

pub fn migrated<B: SharedBuf>(w: &World<'_, B>) {
    for (f, fr) in w.flows.iter().enumerate() {
        assert_eq!(
            fr.hops_done, w.sc.hops,
            "[{} seed={}] flow {f}: {:?}",
            w.sc.name, w.sc.seed, fr.timeline
        );
        assert!(fr.cancelled.is_none() && fr.reset.is_none());
    }
}
