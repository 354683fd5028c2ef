//! A link emulator for the test bed (this kernel has no netem): frames cross between two
//! interfaces through one [`Shaper`] per direction, which decides what a real link would do
//! with each of them: serialise it at a rate behind a bounded queue, delay it (with jitter),
//! lose it (at random, or in bursts), reorder, duplicate or corrupt it. Seeded: a run is
//! repeatable for the same arrivals.
//!
//! Not in the appliance's data path: it stands where a cable or a radio link would, between a
//! namespace's veth and the appliance's port.
//!
//! Invariants of a [`Shaper`]:
//! - frames leave in arrival order, except those picked for reordering (they are held
//!   `reorder_us` longer and others overtake them); jitter alone never reorders;
//! - a frame never leaves before `delay - jitter` after its arrival nor before the link
//!   finished serialising the frames ahead of it;
//! - the queue in front of the link holds at most `queue_bytes` (beyond: tail drop);
//! - every frame is counted once as received and exactly once as sent, lost or dropped.

#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What one direction of the link does.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// One-way propagation delay, microseconds.
    pub delay_us: u64,
    /// Uniform jitter added to the delay, +- this many microseconds.
    pub jitter_us: u64,
    /// Link rate, bits per second (0: unlimited).
    pub rate_bps: u64,
    /// Bytes the queue in front of a rate-limited link may hold.
    pub queue_bytes: u64,
    /// Probability that a frame is lost at random.
    pub loss: f64,
    /// Bursty loss (Gilbert model): probability of entering the bad state per frame, and of
    /// leaving it; every frame is lost while bad.
    pub burst: Option<(f64, f64)>,
    /// Probability that a frame is held back, and by how much longer (microseconds).
    pub reorder: (f64, u64),
    /// Probability that a frame is sent twice.
    pub duplicate: f64,
    /// Probability that one bit of a frame (beyond its Ethernet header) is flipped.
    pub corrupt: f64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            delay_us: 0,
            jitter_us: 0,
            rate_bps: 0,
            queue_bytes: 1 << 20,
            loss: 0.0,
            burst: None,
            reorder: (0.0, 0),
            duplicate: 0.0,
            corrupt: 0.0,
        }
    }
}

/// A specification that does not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// `key=value` expected.
    #[error("`{0}` is not key=value (keys: delay, jitter, rate, queue, loss, burst, reorder, dup, corrupt)")]
    Syntax(String),
    /// A key this program does not know.
    #[error(
        "unknown key `{0}` (keys: delay, jitter, rate, queue, loss, burst, reorder, dup, corrupt)"
    )]
    Key(String),
    /// A value that is not what the key takes.
    #[error("`{key}={value}`: {want}")]
    Value {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What it takes.
        want: &'static str,
    },
}

/// A value the parser already checked to be in 0..=1e12, rounded.
#[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
fn whole(x: f64) -> u64 {
    x.round().max(0.0) as u64
}

fn duration_us(key: &str, v: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::Value {
        key: key.into(),
        value: v.into(),
        want: "a duration like 20ms, 500us or 1s",
    };
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return Err(bad());
    };
    let x: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..=600e6).contains(&(x * mult)) {
        return Err(bad());
    }
    Ok(whole(x * mult))
}

fn probability(key: &str, v: &str) -> Result<f64, SpecError> {
    let bad = || SpecError::Value {
        key: key.into(),
        value: v.into(),
        want: "a percentage like 0.5%",
    };
    let x: f64 = v
        .strip_suffix('%')
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&x) {
        return Err(bad());
    }
    Ok(x / 100.0)
}

fn amount(key: &str, v: &str, units: &[(&str, f64)], want: &'static str) -> Result<u64, SpecError> {
    let bad = || SpecError::Value {
        key: key.into(),
        value: v.into(),
        want,
    };
    let lower = v.to_ascii_lowercase();
    for (suffix, mult) in units {
        if let Some(n) = lower.strip_suffix(suffix) {
            let x: f64 = n.parse().map_err(|_| bad())?;
            if x < 0.0 || x * mult > 1e12 {
                return Err(bad());
            }
            return Ok(whole(x * mult));
        }
    }
    Err(bad())
}

impl std::str::FromStr for Spec {
    type Err = SpecError;

    /// `delay=20ms,jitter=2ms,rate=10mbit,queue=64kb,loss=0.5%,burst=1%:30%,reorder=1%:5ms,
    /// dup=0.1%,corrupt=0.01%` (any subset; empty: a perfect link).
    fn from_str(s: &str) -> Result<Spec, SpecError> {
        let mut spec = Spec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| SpecError::Syntax(item.into()))?;
            match k {
                "delay" => spec.delay_us = duration_us(k, v)?,
                "jitter" => spec.jitter_us = duration_us(k, v)?,
                "rate" => {
                    spec.rate_bps = amount(
                        k,
                        v,
                        &[("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)],
                        "a rate like 10mbit",
                    )?
                }
                "queue" => {
                    spec.queue_bytes = amount(
                        k,
                        v,
                        &[("mb", 1e6), ("kb", 1e3), ("b", 1.0)],
                        "a size like 64kb",
                    )?
                }
                "loss" => spec.loss = probability(k, v)?,
                "dup" => spec.duplicate = probability(k, v)?,
                "corrupt" => spec.corrupt = probability(k, v)?,
                "burst" | "reorder" => {
                    let (a, b) = v.split_once(':').ok_or_else(|| SpecError::Value {
                        key: k.into(),
                        value: v.into(),
                        want: if k == "burst" {
                            "enter%:leave%, like 1%:30%"
                        } else {
                            "probability%:extra-delay, like 1%:5ms"
                        },
                    })?;
                    if k == "burst" {
                        spec.burst = Some((probability(k, a)?, probability(k, b)?));
                    } else {
                        spec.reorder = (probability(k, a)?, duration_us(k, b)?);
                    }
                }
                _ => return Err(SpecError::Key(k.into())),
            }
        }
        Ok(spec)
    }
}

/// A small seeded generator (SplitMix64): the emulator's decisions repeat for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What happened to the frames of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Frames that arrived.
    pub received: u64,
    /// Frames that left (duplicates included).
    pub sent: u64,
    /// Bytes that left.
    pub sent_bytes: u64,
    /// Frames lost at random.
    pub lost: u64,
    /// Frames lost in a burst.
    pub lost_burst: u64,
    /// Frames dropped because the queue was full.
    pub queue_drops: u64,
    /// Frames held back for reordering.
    pub reordered: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Frames with a flipped bit.
    pub corrupted: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: u64,
    order: u64,
    frame: Vec<u8>,
}

/// One direction of the link.
#[derive(Debug)]
pub struct Shaper {
    spec: Spec,
    rng: Rng,
    /// When the link finishes serialising what it accepted.
    link_free_us: u64,
    /// The latest departure of an in-order frame (later ones never leave before it).
    last_departure_us: u64,
    bad: bool,
    order: u64,
    queue: BinaryHeap<Reverse<Pending>>,
    /// Counters.
    pub counters: Counters,
}

impl Shaper {
    /// A direction behaving as `spec`, its decisions drawn from `seed`.
    pub fn new(spec: Spec, seed: u64) -> Shaper {
        Shaper {
            spec,
            rng: Rng::new(seed),
            link_free_us: 0,
            last_departure_us: 0,
            bad: false,
            order: 0,
            queue: BinaryHeap::new(),
            counters: Counters::default(),
        }
    }

    /// A frame arrived at `now_us`.
    pub fn push(&mut self, now_us: u64, mut frame: Vec<u8>) {
        let c = &mut self.counters;
        c.received += 1;
        if let Some((enter, leave)) = self.spec.burst {
            self.bad = if self.bad {
                !self.rng.chance(leave)
            } else {
                self.rng.chance(enter)
            };
            if self.bad {
                c.lost_burst += 1;
                return;
            }
        }
        if self.rng.chance(self.spec.loss) {
            c.lost += 1;
            return;
        }
        let len = frame.len() as u64;
        let mut ready = now_us;
        if self.spec.rate_bps > 0 {
            let start = self.link_free_us.max(now_us);
            let waiting = (start - now_us) * self.spec.rate_bps / 8_000_000;
            if waiting + len > self.spec.queue_bytes {
                c.queue_drops += 1;
                return;
            }
            self.link_free_us = start + (len * 8_000_000).div_ceil(self.spec.rate_bps);
            ready = self.link_free_us;
        }
        let j = self.spec.jitter_us;
        let delay = if j > 0 {
            (self.spec.delay_us + self.rng.below(2 * j + 1)).saturating_sub(j)
        } else {
            self.spec.delay_us
        };
        let mut at = ready + delay;
        if self.rng.chance(self.spec.reorder.0) {
            c.reordered += 1;
            at += self.spec.reorder.1;
        } else {
            at = at.max(self.last_departure_us);
            self.last_departure_us = at;
        }
        if frame.len() > 14 && self.rng.chance(self.spec.corrupt) {
            c.corrupted += 1;
            let bit = 14 * 8 + self.rng.below((len - 14) * 8);
            frame[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        if self.rng.chance(self.spec.duplicate) {
            c.duplicated += 1;
            self.enqueue(at, frame.clone());
        }
        self.enqueue(at, frame);
    }

    fn enqueue(&mut self, at: u64, frame: Vec<u8>) {
        self.order += 1;
        self.queue.push(Reverse(Pending {
            at,
            order: self.order,
            frame,
        }));
    }

    /// When the next frame is due, if any is waiting.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.peek().map(|p| p.0.at)
    }

    /// A frame due at `now_us`, if any (call until `None`).
    pub fn pop_due(&mut self, now_us: u64) -> Option<Vec<u8>> {
        if self.next_due()? > now_us {
            return None;
        }
        let p = self.queue.pop()?.0;
        self.counters.sent += 1;
        self.counters.sent_bytes += p.frame.len() as u64;
        Some(p.frame)
    }
}

#[cfg(test)]
mod tests;
