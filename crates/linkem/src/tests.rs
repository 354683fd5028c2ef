use super::*;

fn frame(i: u64, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..8].copy_from_slice(&i.to_be_bytes());
    f
}

fn id(f: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&f[..8]);
    u64::from_be_bytes(b)
}

/// Feeds `n` frames of `len` bytes, one every `gap_us`, and collects (departure, id).
fn run(spec: Spec, seed: u64, n: u64, len: usize, gap_us: u64) -> (Vec<(u64, u64)>, Counters) {
    let mut s = Shaper::new(spec, seed);
    let mut out = Vec::new();
    let mut now = 0;
    for i in 0..n {
        s.push(now, frame(i, len));
        now += gap_us;
        while let Some(at) = s.next_due().filter(|&a| a <= now) {
            out.push((at, id(&s.pop_due(at).unwrap())));
        }
    }
    while let Some(at) = s.next_due() {
        out.push((at, id(&s.pop_due(at).unwrap())));
    }
    (out, s.counters)
}

#[test]
fn specs_parse_and_bad_ones_say_what_is_wrong() {
    let s: Spec = "delay=20ms,jitter=500us,rate=10mbit,queue=64kb,loss=0.5%,burst=1%:30%,reorder=2%:5ms,dup=0.1%,corrupt=0.01%"
        .parse()
        .unwrap();
    assert_eq!(
        (s.delay_us, s.jitter_us, s.rate_bps, s.queue_bytes),
        (20_000, 500, 10_000_000, 64_000)
    );
    assert_eq!(s.burst, Some((0.01, 0.3)));
    assert_eq!(s.reorder, (0.02, 5_000));
    assert_eq!("".parse::<Spec>().unwrap(), Spec::default());
    assert_eq!(
        "speed=1".parse::<Spec>(),
        Err(SpecError::Key("speed".into()))
    );
    let e = "delay=20".parse::<Spec>().unwrap_err().to_string();
    assert!(e.contains("a duration like 20ms"), "{e}");
    let e = "loss=200%".parse::<Spec>().unwrap_err().to_string();
    assert!(e.contains("percentage"), "{e}");
    assert!(matches!("delay".parse::<Spec>(), Err(SpecError::Syntax(_))));
}

#[test]
fn delay_and_rate_shape_departures_in_order() {
    // 10 Mbit/s: a 1250-byte frame takes 1 ms on the wire; arrivals every 0.5 ms queue up.
    let spec = Spec {
        delay_us: 20_000,
        rate_bps: 10_000_000,
        ..Spec::default()
    };
    let (out, c) = run(spec, 1, 100, 1250, 500);
    assert_eq!(c.sent, 100);
    for (k, (at, i)) in out.iter().enumerate() {
        assert_eq!(*i, k as u64, "in order");
        assert_eq!(*at, 20_000 + 1_000 * (k as u64 + 1), "frame {k}");
    }
}

#[test]
fn jitter_never_reorders_and_stays_within_bounds() {
    let spec = Spec {
        delay_us: 10_000,
        jitter_us: 3_000,
        ..Spec::default()
    };
    let (out, _) = run(spec, 7, 2_000, 100, 100);
    let mut last = 0;
    for (k, (at, i)) in out.iter().enumerate() {
        assert_eq!(*i, k as u64);
        assert!(*at >= last);
        let arrival = k as u64 * 100;
        assert!(*at >= arrival + 7_000, "frame {k} early");
        last = *at;
    }
}

#[test]
fn losses_duplicates_reordering_and_corruption_come_at_their_rates_and_are_counted() {
    let spec = Spec {
        delay_us: 1_000,
        loss: 0.01,
        reorder: (0.02, 3_000),
        duplicate: 0.005,
        corrupt: 0.003,
        ..Spec::default()
    };
    let n = 100_000;
    let (out, c) = run(spec.clone(), 3, n, 200, 50);
    let near = |x: u64, p: f64| (x as f64 - p * n as f64).abs() < 0.2 * p * n as f64 + 30.0;
    assert!(near(c.lost, 0.01), "{c:?}");
    assert!(near(c.reordered, 0.02 * 0.99), "{c:?}");
    assert!(near(c.duplicated, 0.005 * 0.99), "{c:?}");
    assert!(near(c.corrupted, 0.003 * 0.99), "{c:?}");
    assert_eq!(c.received, n);
    assert_eq!(c.sent, n - c.lost + c.duplicated);
    assert_eq!(out.len() as u64, c.sent);
    let overtaken = out.windows(2).filter(|w| w[1].1 < w[0].1).count();
    assert!(overtaken > 0, "reordering reorders");
    // The same seed decides the same way.
    assert_eq!(run(spec, 3, n, 200, 50).1, c);
}

#[test]
fn bursts_lose_runs_of_frames() {
    let spec = Spec {
        burst: Some((0.01, 0.25)),
        ..Spec::default()
    };
    let (out, c) = run(spec, 9, 50_000, 100, 10);
    assert!(c.lost_burst > 0);
    let ids: Vec<u64> = out.iter().map(|o| o.1).collect();
    let longest = ids.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap();
    assert!(longest >= 4, "bursts are runs: longest gap {longest}");
}

#[test]
fn a_full_queue_drops_the_tail() {
    // 1 Mbit/s behind a 10 kB queue, fed at 10 Mbit/s: most frames are dropped, and what
    // waits never exceeds the queue.
    let spec = Spec {
        rate_bps: 1_000_000,
        queue_bytes: 10_000,
        ..Spec::default()
    };
    let (out, c) = run(spec, 1, 1_000, 1_000, 800);
    assert!(c.queue_drops > 800, "{c:?}");
    assert_eq!(c.sent + c.queue_drops, 1_000);
    // At 1 Mbit/s a 1000-byte frame takes 8 ms: departures are 8 ms apart.
    for w in out.windows(2) {
        assert!(w[1].0 - w[0].0 >= 8_000);
    }
}
