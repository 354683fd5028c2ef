//! A per-flow cache of TCP payload, keyed by sequence number, holding the caller's buffers
//! (DPDK mbufs in the appliance, `Vec<u8>` in tests): zero-copy, never copies payload.
//!
//! Invariants:
//! - entries are sorted by sequence number and never overlap: an insert keeps only the bytes not
//!   cached yet (a buffer whose bytes are all cached is handed back as a duplicate);
//! - `bytes()` is the sum of the entries' lengths and never exceeds the per-flow limit; the
//!   caller's [`Budget`] (shared by all flows of a worker) is charged and refunded exactly;
//! - everything below the trim point (`trim_below`) is gone: the cache only holds data some
//!   receiver has not acknowledged.

use std::collections::VecDeque;

use crate::wire::SeqNumber;

/// What all caches of one worker may hold together: payload bytes, and buffers (each cached
/// run keeps one buffer, an mbuf in the appliance, whatever its payload size, so a byte limit
/// alone would let small segments drain the packet pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes held.
    pub used: u64,
    /// The byte limit.
    pub limit: u64,
    /// Buffers held.
    pub bufs: u64,
    /// The buffer limit.
    pub bufs_limit: u64,
}

impl Budget {
    /// A budget of `limit` bytes (and no buffer limit).
    pub fn new(limit: u64) -> Budget {
        Budget {
            used: 0,
            limit,
            bufs: 0,
            bufs_limit: u64::MAX,
        }
    }

    /// The same budget holding at most `n` buffers.
    pub fn with_buffers(self, n: u64) -> Budget {
        Budget {
            bufs_limit: n,
            ..self
        }
    }
}

/// One cached run of payload: `len` bytes at `buf[off..]`, sequence numbers `seq..seq+len`.
#[derive(Debug)]
struct Entry<B> {
    seq: SeqNumber,
    off: usize,
    len: u32,
    buf: B,
}

impl<B> Entry<B> {
    fn end(&self) -> SeqNumber {
        self.seq + self.len
    }
}

/// What happened to an inserted buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted<B> {
    /// Some or all of its bytes were stored (the count is the number of new bytes).
    Stored(u32),
    /// Every byte was already cached (or already trimmed); the buffer comes back.
    Duplicate(B),
    /// Storing it would exceed the flow's or the worker's limit; the buffer comes back.
    OverLimit(B),
}

/// The cache of one direction of one flow.
#[derive(Debug)]
pub struct SegmentCache<B> {
    entries: VecDeque<Entry<B>>,
    bytes: u64,
    limit: u64,
    floor: Option<SeqNumber>,
}

impl<B: AsRef<[u8]>> SegmentCache<B> {
    /// An empty cache holding at most `limit` bytes.
    pub fn new(limit: u64) -> SegmentCache<B> {
        SegmentCache {
            entries: VecDeque::new(),
            bytes: 0,
            limit,
            floor: None,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Runs held.
    pub fn segments(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The lowest sequence number held.
    pub fn first_seq(&self) -> Option<SeqNumber> {
        self.entries.front().map(|e| e.seq)
    }

    /// One past the highest sequence number held.
    pub fn end_seq(&self) -> Option<SeqNumber> {
        self.entries.back().map(Entry::end)
    }

    /// Caches the payload `buf[off..off+len]` whose first byte has sequence number `seq`.
    /// Bytes already held, or below the trim point, are not stored again.
    ///
    /// A buffer that spans holes between existing entries is stored for its first uncovered run
    /// only (the rest comes back with the retransmission that fills the gap); this keeps one
    /// buffer per entry, which is what makes the cache zero-copy.
    pub fn insert(
        &mut self,
        seq: SeqNumber,
        buf: B,
        off: usize,
        len: u32,
        budget: &mut Budget,
    ) -> Inserted<B> {
        let avail = buf.as_ref().len().saturating_sub(off);
        let len = len.min(u32::try_from(avail).unwrap_or(u32::MAX));
        let (mut start, end) = (seq, seq + len);
        if let Some(floor) = self.floor {
            if start.diff(floor) < 0 {
                start = floor;
            }
        }
        if end.diff(start) <= 0 {
            return Inserted::Duplicate(buf);
        }
        // First index whose end is after `start`.
        let mut i = self.entries.partition_point(|e| e.end().diff(start) <= 0);
        // Skip entries that cover the beginning of [start, end).
        while let Some(e) = self.entries.get(i) {
            if e.seq.diff(start) <= 0 {
                start = e.end();
                i += 1;
                if end.diff(start) <= 0 {
                    return Inserted::Duplicate(buf);
                }
            } else {
                break;
            }
        }
        // The uncovered run starts at `start` and ends at the next entry (or `end`).
        let run_end = match self.entries.get(i) {
            Some(e) if e.seq.diff(end) < 0 => e.seq,
            _ => end,
        };
        let n = u32::try_from(run_end.diff(start)).unwrap_or(0);
        if n == 0 {
            return Inserted::Duplicate(buf);
        }
        if self.bytes + u64::from(n) > self.limit
            || budget.used + u64::from(n) > budget.limit
            || budget.bufs >= budget.bufs_limit
        {
            return Inserted::OverLimit(buf);
        }
        let skip = usize::try_from(start.diff(seq)).unwrap_or(0);
        self.entries.insert(
            i,
            Entry {
                seq: start,
                off: off + skip,
                len: n,
                buf,
            },
        );
        self.bytes += u64::from(n);
        budget.used += u64::from(n);
        budget.bufs += 1;
        Inserted::Stored(n)
    }

    /// Forgets everything below `seq` (acknowledged by the receiver); returns the buffers that
    /// are no longer needed, through `release`.
    pub fn trim_below(&mut self, seq: SeqNumber, budget: &mut Budget, mut release: impl FnMut(B)) {
        if self.floor.is_none_or(|f| seq.diff(f) > 0) {
            self.floor = Some(seq);
        }
        while let Some(e) = self.entries.front_mut() {
            if e.end().diff(seq) <= 0 {
                let e = self.entries.pop_front().unwrap_or_else(|| unreachable!());
                self.bytes -= u64::from(e.len);
                budget.used -= u64::from(e.len);
                budget.bufs -= 1;
                release(e.buf);
            } else if e.seq.diff(seq) < 0 {
                let cut = u32::try_from(seq.diff(e.seq)).unwrap_or(0);
                e.seq = seq;
                e.off += cut as usize;
                e.len -= cut;
                self.bytes -= u64::from(cut);
                budget.used -= u64::from(cut);
                break;
            } else {
                break;
            }
        }
    }

    /// The end of the run that starts at `from` and has no hole (`from` itself if `from` is not
    /// cached).
    pub fn contiguous_end(&self, from: SeqNumber) -> SeqNumber {
        let mut at = from;
        let i = self.entries.partition_point(|e| e.end().diff(at) <= 0);
        for e in self.entries.range(i..) {
            if e.seq.diff(at) > 0 {
                break;
            }
            at = e.end();
        }
        at
    }

    /// The cached bytes from `seq` on, as (sequence number, slice) runs in order, up to `max`
    /// bytes (for replay; the slices borrow the cached buffers).
    pub fn runs_from(
        &self,
        seq: SeqNumber,
        max: u32,
    ) -> impl Iterator<Item = (SeqNumber, &[u8])> + '_ {
        let mut left = max;
        self.entries.iter().filter_map(move |e| {
            if left == 0 || e.end().diff(seq) <= 0 {
                return None;
            }
            let skip = u32::try_from(seq.diff(e.seq).max(0)).unwrap_or(0);
            let n = (e.len - skip).min(left);
            left -= n;
            let from = e.off + skip as usize;
            Some((e.seq + skip, &e.buf.as_ref()[from..from + n as usize]))
        })
    }

    /// Drops everything (refunding the budget) and returns the buffers through `release`.
    pub fn clear(&mut self, budget: &mut Budget, mut release: impl FnMut(B)) {
        for e in self.entries.drain(..) {
            budget.used -= u64::from(e.len);
            budget.bufs -= 1;
            release(e.buf);
        }
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(seq: u32, len: u32) -> Vec<u8> {
        (0..len)
            .map(|i| (seq.wrapping_add(i) % 251) as u8)
            .collect()
    }

    fn collect(c: &SegmentCache<Vec<u8>>, from: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = SeqNumber(from);
        for (s, b) in c.runs_from(SeqNumber(from), u32::MAX) {
            assert_eq!(s, at, "runs are contiguous here");
            out.extend_from_slice(b);
            at = s + b.len() as u32;
        }
        out
    }

    #[test]
    fn stores_once_in_order_across_wrap() {
        let mut b = Budget::new(1 << 20);
        let mut c = SegmentCache::new(1 << 20);
        let base = u32::MAX - 1500;
        // Out of order, with duplicates and overlaps, across the 2^32 wrap.
        let segs = [
            (2000u32, 1000u32),
            (0, 1000),
            (1000, 1000),
            (500, 1000),
            (0, 3000),
            (2500, 100),
        ];
        for (o, l) in segs {
            let s = base.wrapping_add(o);
            let _ = c.insert(SeqNumber(s), payload(s, l), 0, l, &mut b);
        }
        assert_eq!(c.bytes(), 3000);
        assert_eq!(b.used, 3000);
        assert_eq!(collect(&c, base), payload(base, 3000));
        assert_eq!(
            c.contiguous_end(SeqNumber(base)),
            SeqNumber(base.wrapping_add(3000))
        );
    }

    #[test]
    fn duplicate_and_over_limit_hand_the_buffer_back() {
        let mut b = Budget::new(1000);
        let mut c = SegmentCache::new(10_000);
        assert_eq!(
            c.insert(SeqNumber(0), payload(0, 800), 0, 800, &mut b),
            Inserted::Stored(800)
        );
        assert!(matches!(
            c.insert(SeqNumber(100), payload(100, 100), 0, 100, &mut b),
            Inserted::Duplicate(_)
        ));
        assert!(
            matches!(
                c.insert(SeqNumber(800), payload(800, 300), 0, 300, &mut b),
                Inserted::OverLimit(_)
            ),
            "worker budget"
        );
        let mut c2: SegmentCache<Vec<u8>> = SegmentCache::new(100);
        assert!(
            matches!(
                c2.insert(SeqNumber(0), payload(0, 101), 0, 101, &mut b),
                Inserted::OverLimit(_)
            ),
            "flow limit"
        );
        assert_eq!(b.used, 800);
    }

    #[test]
    fn holes_and_contiguity() {
        let mut b = Budget::new(1 << 20);
        let mut c = SegmentCache::new(1 << 20);
        let _ = c.insert(SeqNumber(0), payload(0, 100), 0, 100, &mut b);
        let _ = c.insert(SeqNumber(200), payload(200, 100), 0, 100, &mut b);
        assert_eq!(c.contiguous_end(SeqNumber(0)), SeqNumber(100));
        assert_eq!(c.contiguous_end(SeqNumber(150)), SeqNumber(150));
        // A buffer spanning the hole and beyond: only the hole's bytes are stored from it.
        assert_eq!(
            c.insert(SeqNumber(50), payload(50, 400), 0, 400, &mut b),
            Inserted::Stored(100)
        );
        assert_eq!(c.contiguous_end(SeqNumber(0)), SeqNumber(300));
        assert_eq!(
            c.insert(SeqNumber(50), payload(50, 400), 0, 400, &mut b),
            Inserted::Stored(150)
        );
        assert_eq!(collect(&c, 0), payload(0, 450));
    }

    #[test]
    fn trim_releases_and_refunds() {
        let mut b = Budget::new(1 << 20);
        let mut c = SegmentCache::new(1 << 20);
        for i in 0..10u32 {
            let _ = c.insert(SeqNumber(i * 100), payload(i * 100, 100), 0, 100, &mut b);
        }
        let mut released = 0;
        c.trim_below(SeqNumber(350), &mut b, |_| released += 1);
        assert_eq!(released, 3);
        assert_eq!(c.bytes(), 650);
        assert_eq!(b.used, 650);
        assert_eq!(c.first_seq(), Some(SeqNumber(350)));
        assert_eq!(collect(&c, 350), payload(350, 650));
        // Bytes below the trim point are not cached again.
        assert!(matches!(
            c.insert(SeqNumber(0), payload(0, 300), 0, 300, &mut b),
            Inserted::Duplicate(_)
        ));
        assert_eq!(
            c.insert(SeqNumber(300), payload(300, 100), 0, 100, &mut b),
            Inserted::Duplicate(payload(300, 100))
        );
        c.clear(&mut b, |_| {});
        assert_eq!((c.bytes(), b.used), (0, 0));
    }

    #[test]
    fn payload_offset_and_replay_limit() {
        let mut b = Budget::new(1 << 20);
        let mut c = SegmentCache::new(1 << 20);
        // A frame with 54 bytes of headers before the payload.
        let mut frame = vec![0xeeu8; 54];
        frame.extend(payload(1000, 500));
        assert_eq!(
            c.insert(SeqNumber(1000), frame, 54, 500, &mut b),
            Inserted::Stored(500)
        );
        let runs: Vec<_> = c.runs_from(SeqNumber(1100), 50).collect();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].0, SeqNumber(1100));
        assert_eq!(runs[0].1, &payload(1100, 50)[..]);
    }

    #[test]
    fn random_inserts_match_a_model() {
        // Seeded: random segments of one stream (with repeats and overlaps) must reassemble it.
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut rnd = |n: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % u64::from(n)) as u32
        };
        for round in 0..50 {
            let mut b = Budget::new(1 << 24);
            let mut c = SegmentCache::new(1 << 24);
            let base = rnd(u32::MAX);
            let total = 5000;
            let mut covered = vec![false; total as usize];
            let mut segs = Vec::new();
            for _ in 0..200 {
                let o = rnd(total);
                let l = 1 + rnd(total - o).min(700);
                segs.push((base.wrapping_add(o), l));
                covered[o as usize..(o + l) as usize]
                    .iter_mut()
                    .for_each(|v| *v = true);
            }
            // Offer the segments again (as retransmissions would) until nothing new is stored:
            // a buffer spanning holes stores one run per offer.
            loop {
                let mut stored = 0;
                for &(s, l) in &segs {
                    if let Inserted::Stored(n) = c.insert(SeqNumber(s), payload(s, l), 0, l, &mut b)
                    {
                        stored += n;
                    }
                }
                if stored == 0 {
                    break;
                }
            }
            let want = covered.iter().filter(|v| **v).count() as u64;
            assert_eq!(c.bytes(), want, "round {round}");
            assert_eq!(b.used, want);
            assert_eq!(b.bufs, c.segments() as u64, "one buffer per run");
            // Every cached byte is the stream's byte at its sequence number, and runs do not overlap.
            let mut last_end: Option<SeqNumber> = None;
            for (s, bytes) in c.runs_from(SeqNumber(base), u32::MAX) {
                assert_eq!(
                    bytes,
                    &payload(s.0, bytes.len() as u32)[..],
                    "round {round}"
                );
                if let Some(e) = last_end {
                    assert!(s.diff(e) >= 0, "overlap in round {round}");
                }
                last_end = Some(s + bytes.len() as u32);
            }
            let first_hole = covered.iter().position(|v| !*v).unwrap_or(total as usize) as u32;
            if covered[0] {
                assert_eq!(
                    c.contiguous_end(SeqNumber(base)),
                    SeqNumber(base.wrapping_add(first_hole))
                );
            }
        }
    }

    #[test]
    fn the_buffer_limit_bounds_small_segments() {
        let mut b = Budget::new(1 << 20).with_buffers(3);
        let mut c = SegmentCache::new(1 << 20);
        for i in 0..3u32 {
            assert_eq!(
                c.insert(SeqNumber(i * 10), vec![0u8; 10], 0, 10, &mut b),
                Inserted::Stored(10)
            );
        }
        assert!(matches!(
            c.insert(SeqNumber(30), vec![0u8; 10], 0, 10, &mut b),
            Inserted::OverLimit(_)
        ));
        assert_eq!((b.used, b.bufs), (30, 3));
        c.trim_below(SeqNumber(15), &mut b, drop);
        assert_eq!(
            (b.used, b.bufs),
            (15, 2),
            "a partly trimmed run keeps its buffer"
        );
        c.clear(&mut b, drop);
        assert_eq!((b.used, b.bufs), (0, 0));
    }
}
