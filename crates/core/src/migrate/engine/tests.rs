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

impl T {
    /// The frame as forwarded (rewritten), or `None` if it was not.
    fn forwarded(&mut self, from: Leg, f: Vec<u8>) -> Option<Vec<u8>> {
        self.now += 1_000;
        match self.e.on_segment(self.now, from, f, &mut self.b) {
            Verdict::Forward(_, b) => Some(b),
            _ => None,
        }
    }

    fn sent(&mut self) -> Vec<Emit> {
        std::iter::from_fn(|| self.e.poll_transmit(self.now)).collect()
    }
}

fn seq_of(f: &[u8]) -> u32 {
    match classify(f) {
        Ok(Frame::Tcp(m)) => m.seq.0,
        other => panic!("not TCP: {other:?}"),
    }
}

/// An established flow where the server sent 3000 bytes and the device acknowledged them.
fn idle_flow() -> T {
    let mut t = T::established(EngineConfig::default(), 1 << 20);
    for i in 0..3 {
        assert!(t.server_data(i * 1000, 1000));
    }
    assert!(t.device_ack(3000));
    let _ = t.sent();
    t
}

#[test]
fn keepalives_and_window_probes_pass_one_below_the_peers_ack() {
    let mut t = idle_flow();
    // The device's keep-alive: SND.UNA - 1, no data (RFC 9293 3.8.4).
    let ka = TcpFields {
        seq: SeqNumber(C_ISN),
        ack: SeqNumber(S_ISN) + 1 + 3000,
        flags: TcpFlags::ACK,
        window: 8_192,
        ts: Some((300, TS_S)),
        ..TcpFields::default()
    };
    let f = t
        .forwarded(Leg::Device(0), frame(ka, 0))
        .expect("forwarded");
    assert_eq!(
        seq_of(&f),
        C_ISN,
        "the server sees it out of window and answers"
    );
    // The server's window probe (or keep-alive) toward the device, at its SND.UNA - 1.
    let probe = TcpFields {
        seq: SeqNumber(S_ISN) + 3000,
        ack: SeqNumber(C_ISN + 1),
        flags: TcpFlags::ACK,
        window: 1_000,
        ts: Some((TS_S + 9_000, 300)),
        ..TcpFields::default()
    };
    let f = t
        .forwarded(Leg::Server, frame(probe, 0))
        .expect("forwarded");
    assert_eq!(seq_of(&f), S_ISN.wrapping_add(3000));
    assert!(t.sent().is_empty(), "the proxy answers nothing itself");
}

#[test]
fn an_in_window_rst_from_the_server_is_challenged_on_the_devices_behalf() {
    let mut t = idle_flow();
    let rst = |off: u32| TcpFields {
        seq: SeqNumber(S_ISN) + 1 + off,
        flags: TcpFlags::RST,
        ..TcpFields::default()
    };
    // In the window but not where the device expects it (3000): dropped, challenged.
    assert!(t.forwarded(Leg::Server, frame(rst(8000), 0)).is_none());
    let sent = t.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let c = sent[0];
    assert_eq!(c.to, Leg::Server);
    assert_eq!(
        (c.fields.seq, off(c.fields.ack)),
        (SeqNumber(C_ISN + 1), 3000)
    );
    assert_eq!(c.fields.flags, TcpFlags::ACK);
    assert_eq!(
        c.fields.ts,
        Some((200, TS_S + 2000)),
        "the device's TSval, the server's TSecr"
    );
    // A second one within the interval: dropped, no second challenge.
    assert!(t.forwarded(Leg::Server, frame(rst(9000), 0)).is_none());
    assert!(t.sent().is_empty());
    // Out of the window: dropped silently.
    assert!(t.forwarded(Leg::Server, frame(rst(1 << 31), 0)).is_none());
    assert_eq!(t.e.phase(), Phase::Forwarding);
    assert_eq!((t.e.stats.blind_dropped, t.e.stats.challenged), (3, 1));
    // The genuine server answers the challenge at the exact number: believed.
    assert!(t.forwarded(Leg::Server, frame(rst(3000), 0)).is_some());
    assert_eq!(t.e.phase(), Phase::Closed);
}

#[test]
fn a_syn_on_the_live_tuple_is_challenged_and_a_blind_ack_changes_nothing() {
    let mut t = idle_flow();
    let syn = TcpFields {
        seq: SeqNumber(0x1234_5678),
        flags: TcpFlags::SYN,
        window: 65_535,
        ..TcpFields::default()
    };
    assert!(t.forwarded(Leg::Device(0), frame(syn, 0)).is_none());
    let sent = t.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let c = sent[0];
    assert_eq!(c.to, Leg::Device(0));
    assert_eq!(
        (off(c.fields.seq), c.fields.ack),
        (3000, SeqNumber(C_ISN + 1)),
        "the server's next byte, the client bytes it acknowledged"
    );
    // The first SYN again (its SYN-ACK lost) still reaches the server.
    let again = TcpFields {
        seq: SeqNumber(C_ISN),
        flags: TcpFlags::SYN,
        window: 65_535,
        ..TcpFields::default()
    };
    assert!(t.forwarded(Leg::Device(0), frame(again, 0)).is_some());
    // An ACK of server bytes never sent, and data half the space away: dropped, and the
    // legs' numbers are unchanged (a migration still freezes at 3000).
    let blind_ack = TcpFields {
        seq: SeqNumber(C_ISN + 1),
        ack: SeqNumber(S_ISN) + 1 + (1 << 30),
        flags: TcpFlags::ACK,
        window: 8_192,
        ..TcpFields::default()
    };
    assert!(t.forwarded(Leg::Device(0), frame(blind_ack, 0)).is_none());
    let blind_data = TcpFields {
        seq: SeqNumber(C_ISN + 1) + (1 << 31),
        ack: SeqNumber(S_ISN) + 1 + 3000,
        flags: TcpFlags::ACK,
        window: 8_192,
        ..TcpFields::default()
    };
    assert!(t
        .forwarded(Leg::Device(0), frame(blind_data, 100))
        .is_none());
    assert_eq!(t.e.stats.blind_dropped, 3);
    let now = t.now;
    assert_eq!(t.e.migrate(now, None, &mut t.b), Ok(1));
    let acks = t.sent_to_server();
    assert_eq!(
        (acks[0].seq, off(acks[0].ack)),
        (SeqNumber(C_ISN + 1), 3000),
        "the freeze ACK is built from the real numbers"
    );
}

#[test]
fn after_a_reset_an_end_that_challenges_it_gets_an_exact_rst() {
    let mut t = idle_flow();
    let now = t.now;
    assert_eq!(t.e.migrate(now, None, &mut t.b), Ok(1));
    // The phone is gone and the target never connects: the deadline resets both ends.
    t.e.device_gone(0);
    let deadline = t.now + EngineConfig::default().deadline_us;
    t.now = deadline;
    t.e.on_timeout(deadline, &mut t.b);
    assert_eq!(t.e.phase(), Phase::Closed);
    let rsts: Vec<Emit> = t
        .sent()
        .into_iter()
        .filter(|e| e.to == Leg::Server)
        .collect();
    assert!(
        rsts.iter().any(|e| e.fields.flags & TcpFlags::RST != 0),
        "{rsts:?}"
    );
    // The server's RCV.NXT was elsewhere: it answers with a challenge ACK.
    let challenge = TcpFields {
        seq: SeqNumber(S_ISN) + 1 + 3000,
        ack: SeqNumber(C_ISN + 1) + 77,
        flags: TcpFlags::ACK,
        window: 1_000,
        ts: Some((TS_S + 50_000, 200)),
        ..TcpFields::default()
    };
    assert!(t.forwarded(Leg::Server, frame(challenge, 0)).is_none());
    let sent = t.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (sent[0].to, sent[0].fields.seq, sent[0].fields.flags),
        (Leg::Server, SeqNumber(C_ISN + 1) + 77, TcpFlags::RST),
        "the RST at the server's own ACK"
    );
    assert_eq!(t.e.stats.resets_answered, 1);
}
