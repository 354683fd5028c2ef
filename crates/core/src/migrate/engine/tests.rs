//! Engine unit tests: a state built by hand, the exact segments emitted.

use super::*;
use crate::wire::build::{tcp_frame_len, write_tcp_frame, Endpoints};

const S_ISN: u32 = 0xffff_f000; // wraps during the tests
const C_ISN: u32 = 7_000;
const TS_S: u32 = 50_000;

fn frame(f: TcpFields, payload: usize) -> Vec<u8> {
    let data = vec![0xa5u8; payload];
    let mut buf = vec![0u8; tcp_frame_len(&f, payload)];
    write_tcp_frame(&mut buf, &Endpoints::default(), &f, &[&data]).unwrap();
    buf
}

struct T {
    e: Engine<Vec<u8>>,
    b: Budget,
    now: u64,
}

impl T {
    /// A flow through its handshake: both ends offer MSS 1460, window scale 7, SACK and
    /// timestamps.
    fn established(cfg: EngineConfig, budget: u64) -> T {
        let mut t = T {
            e: Engine::new(cfg),
            b: Budget::new(budget),
            now: 0,
        };
        let syn = TcpFields {
            seq: SeqNumber(C_ISN),
            flags: TcpFlags::SYN,
            window: 65_535,
            mss: Some(1460),
            wscale: Some(7),
            sack_perm: true,
            ts: Some((100, 0)),
            ..TcpFields::default()
        };
        t.feed(Leg::Device(0), frame(syn, 0));
        let syn_ack = TcpFields {
            seq: SeqNumber(S_ISN),
            ack: SeqNumber(C_ISN + 1),
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: 65_535,
            mss: Some(1460),
            wscale: Some(7),
            sack_perm: true,
            ts: Some((TS_S, 100)),
        };
        t.feed(Leg::Server, frame(syn_ack, 0));
        t.device_ack(0);
        assert_eq!(t.e.phase(), Phase::Forwarding);
        t
    }

    fn feed(&mut self, from: Leg, f: Vec<u8>) -> bool {
        self.now += 1_000;
        matches!(
            self.e.on_segment(self.now, from, f, &mut self.b),
            Verdict::Forward(..)
        )
    }

    /// Server data at stream offset `off`.
    fn server_data(&mut self, off: u32, len: usize) -> bool {
        let f = TcpFields {
            seq: SeqNumber(S_ISN) + 1 + off,
            ack: SeqNumber(C_ISN + 1),
            flags: TcpFlags::ACK,
            window: 1_000,
            ts: Some((TS_S + off, 100)),
            ..TcpFields::default()
        };
        self.feed(Leg::Server, frame(f, len))
    }

    /// The device acknowledges up to stream offset `off` with a 1 MiB window.
    fn device_ack(&mut self, off: u32) -> bool {
        let f = TcpFields {
            seq: SeqNumber(C_ISN + 1),
            ack: SeqNumber(S_ISN) + 1 + off,
            flags: TcpFlags::ACK,
            window: 8_192,
            ts: Some((200, TS_S)),
            ..TcpFields::default()
        };
        self.feed(Leg::Device(0), frame(f, 0))
    }

    fn sent_to_server(&mut self) -> Vec<TcpFields> {
        let mut v = Vec::new();
        while let Some(e) = self.e.poll_transmit(self.now) {
            if e.to == Leg::Server {
                v.push(e.fields);
            }
        }
        v
    }
}

fn off(a: SeqNumber) -> u32 {
    a.0.wrapping_sub(S_ISN.wrapping_add(1))
}

#[test]
fn refusals_change_nothing() {
    let mut e: Engine<Vec<u8>> = Engine::new(EngineConfig::default());
    let mut b = Budget::new(1 << 20);
    assert_eq!(
        e.migrate(0, None, &mut b),
        Err(MigrateError::NotEstablished)
    );
    let mut t = T::established(EngineConfig::default(), 1 << 20);
    for i in 0..4 {
        assert!(t.server_data(i * 1000, 1000));
    }
    assert!(t.device_ack(3000));
    let now = t.now;
    assert!(matches!(
        t.e.migrate(now, Some(9_000), &mut t.b),
        Err(MigrateError::OffsetBeyondStream {
            offset: 9_000,
            sent: 4_000
        })
    ));
    assert!(matches!(
        t.e.migrate(now, Some(1_000), &mut t.b),
        Err(MigrateError::NotCached {
            offset: 1_000,
            first_cached: 3_000
        })
    ));
    assert_eq!(t.e.phase(), Phase::Forwarding);
    assert_eq!(t.e.migrate(now, None, &mut t.b), Ok(1));
    assert_eq!(
        t.e.migrate(now, None, &mut t.b),
        Err(MigrateError::AlreadyMigrating)
    );
}

#[test]
fn the_freeze_acknowledges_everything_in_flight_with_a_zero_window() {
    let mut t = T::established(EngineConfig::default(), 1 << 20);
    for i in 0..5 {
        t.server_data(i * 1000, 1000);
    }
    t.device_ack(2000);
    let _ = t.sent_to_server();
    let now = t.now;
    t.e.migrate(now, None, &mut t.b).unwrap();
    let acks = t.sent_to_server();
    assert_eq!(acks.len(), 1);
    assert_eq!(off(acks[0].ack), 5000, "everything the server sent");
    assert_eq!(acks[0].window, 0);
    assert_eq!(
        acks[0].ts.map(|t| t.1),
        Some(TS_S + 4000),
        "TSecr echoes S's latest TSval"
    );
    // A late segment is cached and acknowledged at once, still with a zero window.
    assert!(!t.server_data(5000, 1000), "consumed, not forwarded");
    let acks = t.sent_to_server();
    assert_eq!((off(acks[0].ack), acks[0].window), (6000, 0));
    // Linux's probe (an empty segment at SND.UNA - 1) gets ACK(next, 0).
    let probe = TcpFields {
        seq: SeqNumber(S_ISN) + 1 + 5999,
        ack: SeqNumber(C_ISN + 1),
        flags: TcpFlags::ACK,
        window: 1000,
        ..TcpFields::default()
    };
    t.feed(Leg::Server, frame(probe, 0));
    let acks = t.sent_to_server();
    assert_eq!((off(acks[0].ack), acks[0].window), (6000, 0));
    // The old device's ACKs, FIN and RST never reach the server.
    assert!(!t.device_ack(5000));
    let fin = TcpFields {
        seq: SeqNumber(C_ISN + 1),
        ack: SeqNumber(S_ISN) + 1 + 5000,
        flags: TcpFlags::FIN | TcpFlags::ACK,
        window: 8192,
        ..TcpFields::default()
    };
    assert!(!t.feed(Leg::Device(0), frame(fin, 0)));
    assert!(t.sent_to_server().is_empty());
    // The old device's ACK moved the default resume point to 5000: only the late segment
    // [5000, 6000) waits in the cache.
    assert_eq!(t.e.cache_bytes(), 1000);
}

#[test]
fn the_cache_filling_up_while_frozen_cancels_back_to_the_old_device() {
    // The worker's budget holds 6000 bytes: the rolling cache uses 2000 of them, late
    // segments fill the rest and then overflow.
    let mut t = T::established(EngineConfig::default(), 6_000);
    for i in 0..4 {
        t.server_data(i * 1000, 1000);
    }
    t.device_ack(2000);
    let now = t.now;
    t.e.migrate(now, None, &mut t.b).unwrap();
    let _ = t.sent_to_server();
    for i in 4..9 {
        t.server_data(i * 1000, 1000);
    }
    let events: Vec<Event> = std::iter::from_fn(|| t.e.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Cancelled {
                reason: Failure::CacheFull,
                back_to: 0,
                ..
            }
        )),
        "{events:?}"
    );
    // Never an ACK beyond what is cached.
    for a in t.sent_to_server() {
        assert!(off(a.ack) <= 8000, "{a:?}");
    }
    assert!(t.b.used <= t.b.limit);
}

#[test]
fn after_a_cancel_the_old_device_is_whole_again() {
    let mut t = T::established(EngineConfig::default(), 1 << 20);
    for i in 0..3 {
        t.server_data(i * 1000, 1000);
    }
    t.device_ack(3000);
    let now = t.now;
    assert_eq!(t.e.migrate(now, None, &mut t.b), Ok(1));
    // The target connects, then resets: the flow goes back to the phone.
    let syn = TcpFields {
        seq: SeqNumber(90_000),
        flags: TcpFlags::SYN,
        window: 65_535,
        mss: Some(1460),
        ..TcpFields::default()
    };
    t.feed(Leg::Device(1), frame(syn, 0));
    let rst = TcpFields {
        seq: SeqNumber(90_001),
        flags: TcpFlags::RST,
        ..TcpFields::default()
    };
    t.feed(Leg::Device(1), frame(rst, 0));
    t.device_ack(3000);
    assert_eq!(t.e.phase(), Phase::Forwarding, "back on the phone");
    // A second migration: the phone's client data is still accepted and delivered.
    let now = t.now;
    assert_eq!(t.e.migrate(now, None, &mut t.b), Ok(2));
    let data = TcpFields {
        seq: SeqNumber(C_ISN + 1),
        ack: SeqNumber(S_ISN) + 1 + 3000,
        flags: TcpFlags::ACK,
        window: 8_192,
        ts: Some((300, TS_S)),
        ..TcpFields::default()
    };
    assert!(
        t.feed(Leg::Device(0), frame(data, 100)),
        "the phone's data goes to the server"
    );
}
