//! The operator's view of a data plane's flows: what `tsmp-cli flows` and `flow` show, built by
//! the owning worker between bursts with bounded work ([`SCAN_SLOTS`] slots per page).

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::buf::SharedBuf;
use crate::migrate::engine::{Engine, Phase};
use crate::proxy::ProxyCore;

/// A migration the owning worker started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Migrating {
    /// The owning worker.
    pub worker: usize,
    /// The flow's slot in that worker's table.
    pub flow: u32,
    /// The target's device generation.
    pub device: u32,
    /// The port of the flow's VIP the target connects to.
    pub migration_port: u16,
    /// The service the flow's first device connected to (VIP and service port).
    pub service: SocketAddrV4,
}

/// Slots a worker scans for one the slow path's flow listing: the bound on the time one snapshot
/// request takes from forwarding (`bench/flowlist` measures it against a burst's time).
pub const SCAN_SLOTS: u32 = 1024;

/// What `flows` selects (every field optional; all given must hold). Applied by the owning
/// worker while it scans, so only matching flows cross to the slow path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowFilter {
    /// Tracking state (`ESTABLISHED`, `SYN_SENT`, ...), by [`crate::proxy::flow::TcpState::name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::proxy::flow::TcpState>,
    /// The device's address, and port when not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<SocketAddrV4>,
    /// The backend's address, and port when not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<SocketAddrV4>,
    /// The device generation holding the flow (0: the device that opened it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
    /// Only flows being migrated (paused or resuming), or only the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrating: Option<bool>,
}

impl FlowFilter {
    /// Whether `f` is selected.
    pub fn matches(&self, f: &FlowInfo) -> bool {
        let addr = |want: Option<SocketAddrV4>, have: SocketAddrV4| {
            want.is_none_or(|w| w.ip() == have.ip() && (w.port() == 0 || w.port() == have.port()))
        };
        self.state.is_none_or(|s| s.name() == f.state)
            && addr(self.client, f.client)
            && addr(self.server, f.backend)
            && self.device.is_none_or(|d| d == f.device)
            && self.migrating.is_none_or(|m| m == f.migrating)
    }
}

/// Up to [`SCAN_SLOTS`] slots of `core`'s table from `cursor`: the live flows `filter`
/// selects (worker `index`'s answer to the slow path's flow listing; bounded work, between bursts).
pub fn flow_page<B: SharedBuf>(
    core: &ProxyCore,
    engines: &crate::proxy::arena::Arena<Engine<B>>,
    index: usize,
    filter: &FlowFilter,
    cursor: u32,
) -> FlowPage {
    let cap = u32::try_from(core.flows.capacity()).unwrap_or(u32::MAX);
    let end = cursor.saturating_add(SCAN_SLOTS).min(cap);
    let flows = (cursor..end)
        .filter_map(|slot| flow_info(core, engines, index, slot))
        .filter(|f| filter.matches(f))
        .collect();
    FlowPage {
        flows,
        next: (end < cap).then_some(end),
    }
}

/// The operator's view of the flow in `slot` of worker `index`, if one lives there.
pub fn flow_info<B: SharedBuf>(
    core: &ProxyCore,
    engines: &crate::proxy::arena::Arena<Engine<B>>,
    index: usize,
    slot: u32,
) -> Option<FlowInfo> {
    let t = &core.flows;
    if !t.contains(slot) {
        return None;
    }
    let f = t.get(slot);
    let sa = |(ip, port): (u32, u16)| SocketAddrV4::new(Ipv4Addr::from(ip), port);
    let leg = |o: &crate::proxy::flow::LegOptions| LegInfo {
        mss: o.mss,
        wscale: o.wscale,
        sack: o.sack,
        ts: o.ts,
    };
    let ms = |ticks: u32| u64::from(ticks) * crate::proxy::flow::TICK_MS;
    let engine = engines.get(slot as usize).and_then(|e| e.as_ref());
    let phase = engine.map(|e| e.phase());
    Some(FlowInfo {
        id: String::new(),
        worker: index,
        slot,
        client: sa(f.client),
        vip: sa(f.vip),
        backend: sa(f.backend),
        snat: sa(f.snat),
        state: f.state.name(),
        age_ms: ms(t.tick().wrapping_sub(f.created)),
        expires_ms: ms(f.expires.saturating_sub(t.tick())),
        device: engine.map_or(0, |e| e.device()),
        phase: phase.map_or("none", Phase::name),
        migrating: matches!(phase, Some(Phase::Paused | Phase::Resuming)),
        cache_bytes: engine.map_or(0, |e| e.cache_bytes()),
        client_opts: leg(&f.client_opts),
        server_opts: leg(&f.server_opts),
    })
}

/// A worker's answer to the slow path's flow listing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlowPage {
    /// The matching flows of the scanned slots.
    pub flows: Vec<FlowInfo>,
    /// Where to continue, if the table is not done.
    pub next: Option<u32>,
}

/// One leg's TCP options, as its SYN announced them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegInfo {
    /// MSS (after clamping), 0 if absent.
    pub mss: u16,
    /// Window-scale shift, if offered.
    pub wscale: Option<u8>,
    /// SACK permitted.
    pub sack: bool,
    /// Timestamps.
    pub ts: bool,
}

/// A flow as the operator sees it. Built by the owning worker without allocating (the
/// slow path names it: `id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowInfo {
    /// `worker:slot`, the flow's name for `flow` and `migrate`.
    pub id: String,
    /// The owning worker.
    pub worker: usize,
    /// The slot in its table.
    pub slot: u32,
    /// The device's end.
    pub client: SocketAddrV4,
    /// The service address (or migration port) the device talks to.
    pub vip: SocketAddrV4,
    /// The backend.
    pub backend: SocketAddrV4,
    /// The proxy's source address and port toward the backend.
    pub snat: SocketAddrV4,
    /// Tracking state.
    pub state: &'static str,
    /// Time since the flow's SYN, ms (timing-wheel resolution).
    pub age_ms: u64,
    /// Time until the idle timeout, ms.
    pub expires_ms: u64,
    /// The device generation that holds it (0: the one that opened it).
    pub device: u32,
    /// The migration engine's phase (`forwarding`, `paused`, `resuming`, ...), `none` without
    /// an engine.
    pub phase: &'static str,
    /// Paused or resuming.
    pub migrating: bool,
    /// Bytes the flow's caches hold (both directions).
    pub cache_bytes: u64,
    /// The device leg's options.
    pub client_opts: LegInfo,
    /// The server leg's options.
    pub server_opts: LegInfo,
}

/// One flow in detail: [`FlowInfo`] and the engine's own account (legs, sequence offsets,
/// window scales, caches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowDetail {
    /// The summary.
    pub flow: FlowInfo,
    /// The migration engine's description, one item per line.
    pub engine: Vec<String>,
}

/// The tracking states `flows` filters on ([`crate::proxy::flow::TcpState::name`]).
pub const STATES: [&str; 6] = [
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "TIME_WAIT",
    "CLOSED",
];
