//! The flow index: a bucketised two-choice (cuckoo) hash table of 32-bit values, and the keyed
//! hash that feeds it and selects a flow's owning worker.
//!
//! A bucket is one cache line: eight 32-bit signatures, then eight 32-bit values (the flow slot
//! and the direction of the key). A key hashes to a primary bucket and a signature; its secondary
//! bucket is the primary XOR a mix of the signature, so an entry's other bucket is computable
//! from where it sits and its signature alone (entries can move without the key). A lookup reads
//! at most two cache lines and compares keys only on a signature match, through a callback that
//! reads the flow entry (which the caller touches next anyway).
//!
//! Invariants:
//! - the bucket array is allocated and written once, at construction; nothing allocates after;
//! - signature 0 marks an empty slot (signatures are forced odd);
//! - every stored value sits in its key's primary or secondary bucket;
//! - an insert fails only when both buckets are full and no entry of either can move to its own
//!   other bucket with room (bounded work: at most `MAX_KICKS` moves); sized for at most 80%
//!   occupancy, with two choices per key this does not happen in practice, and the caller counts
//!   it when it does.
//!
//! The hash is keyed with per-process random seeds (peers choose tuples); it is a folded
//! multiply (two 64x64->128 multiplications per 4-tuple), the cost of a few instructions instead
//! of SipHash's rounds.

use std::hash::{BuildHasher, Hasher};

use crate::wire::Key;

/// Slots per bucket.
const WAYS: usize = 8;
/// Bounded displacement work per insert.
const MAX_KICKS: usize = 8;

#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    sig: [u32; WAYS],
    val: [u32; WAYS],
}

const EMPTY: Bucket = Bucket {
    sig: [0; WAYS],
    val: [0; WAYS],
};

/// Asks the platform to back a freshly reserved, not yet touched region with huge pages:
/// `(address, length in bytes)`. The sans-IO core cannot do it itself; the DPDK layer can.
pub type Advise = fn(usize, usize);

/// Allocates `n` values made by `fill` in one allocation, letting `advise` see the region
/// before any page of it is touched (so that the first touch faults in huge pages), then writes
/// them all (the memory is resident before the first packet).
pub fn prefaulted<T>(n: usize, fill: impl FnMut() -> T, advise: Option<Advise>) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    if let Some(a) = advise {
        a(v.as_ptr() as usize, n * std::mem::size_of::<T>());
    }
    v.resize_with(n, fill);
    v
}

/// The two-choice bucketised index.
#[derive(Debug)]
pub struct FlowIndex {
    buckets: Vec<Bucket>,
    mask: u32,
    len: usize,
}

#[inline(always)]
fn mix(sig: u32) -> u32 {
    sig.wrapping_mul(0x9E37_79B1).rotate_right(13)
}

impl FlowIndex {
    /// An index for up to `keys` entries (at most 80% of the slots used).
    pub fn new(keys: usize, advise: Option<Advise>) -> FlowIndex {
        let need = (keys * 10).div_ceil(8 * WAYS).max(2);
        let n = need.next_power_of_two();
        FlowIndex {
            buckets: prefaulted(n, || EMPTY, advise),
            mask: u32::try_from(n - 1).unwrap_or(u32::MAX),
            len: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the bucket array.
    pub fn memory_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }

    #[inline(always)]
    fn place(&self, h: u64) -> (usize, u32) {
        // Truncations intended: the low half picks the bucket, the high half is the signature.
        #[allow(clippy::cast_possible_truncation)]
        let (lo, hi) = (h as u32, (h >> 32) as u32);
        ((lo & self.mask) as usize, hi | 1)
    }

    #[inline(always)]
    fn other(&self, b: usize, sig: u32) -> usize {
        b ^ (((mix(sig) & self.mask) | 1) as usize)
    }

    /// The addresses of the primary and the secondary bucket of hash `h`, to prefetch before
    /// [`FlowIndex::find`] (a hit is usually in the first; a miss reads both).
    #[inline(always)]
    pub fn bucket_addrs(&self, h: u64) -> [*const u8; 2] {
        let (b, sig) = self.place(h);
        let b2 = self.other(b, sig);
        [
            std::ptr::from_ref(&self.buckets[b]).cast(),
            std::ptr::from_ref(&self.buckets[b2]).cast(),
        ]
    }

    /// The value whose signature matches `h` and for which `is` holds (the key comparison).
    #[inline]
    pub fn find(&self, h: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let (b1, sig) = self.place(h);
        let b2 = self.other(b1, sig);
        for b in [b1, b2] {
            let bk = &self.buckets[b];
            for i in 0..WAYS {
                if bk.sig[i] == sig && is(bk.val[i]) {
                    return Some(bk.val[i]);
                }
            }
        }
        None
    }

    fn free_slot(&self, b: usize) -> Option<usize> {
        self.buckets[b].sig.iter().position(|&s| s == 0)
    }

    fn count(&self, b: usize) -> usize {
        self.buckets[b].sig.iter().filter(|&&s| s != 0).count()
    }

    /// Adds `val` under hash `h` (the caller has checked the key is absent). `false` when no
    /// room could be made (see the module invariants).
    pub fn insert(&mut self, h: u64, val: u32) -> bool {
        let (b1, sig) = self.place(h);
        let b2 = self.other(b1, sig);
        // The emptier bucket keeps the load even (the power of two choices).
        let (first, second) = if self.count(b2) < self.count(b1) {
            (b2, b1)
        } else {
            (b1, b2)
        };
        for b in [first, second] {
            if let Some(i) = self.free_slot(b) {
                self.put(b, i, sig, val);
                return true;
            }
        }
        // Both full: move a resident to its other bucket, a bounded walk from each side.
        for start in [first, second] {
            if let Some((b, i)) = self.make_room(start) {
                self.put(b, i, sig, val);
                return true;
            }
        }
        false
    }

    fn put(&mut self, b: usize, i: usize, sig: u32, val: u32) {
        self.buckets[b].sig[i] = sig;
        self.buckets[b].val[i] = val;
        self.len += 1;
    }

    /// Frees a slot in full bucket `b` by moving entries along their alternative buckets (at
    /// most `MAX_KICKS` moves, undone on failure so the table is unchanged).
    fn make_room(&mut self, b: usize) -> Option<(usize, usize)> {
        let mut path = [(0usize, 0usize); MAX_KICKS];
        let mut cur = b;
        for step in 0..MAX_KICKS {
            // Prefer a resident whose other bucket has room; else walk through a varying slot.
            let bk = self.buckets[cur];
            let direct = (0..WAYS).find(|&i| self.free_slot(self.other(cur, bk.sig[i])).is_some());
            let i = direct.unwrap_or((step * 3 + 1) % WAYS);
            path[step] = (cur, i);
            let next = self.other(cur, bk.sig[i]);
            if next == cur {
                return None;
            }
            if let Some(j) = self.free_slot(next) {
                // Shift the chain: each moved entry goes to its other bucket, last first.
                let mut dst = (next, j);
                for &(pb, pi) in path[..=step].iter().rev() {
                    let (s, v) = (self.buckets[pb].sig[pi], self.buckets[pb].val[pi]);
                    self.buckets[dst.0].sig[dst.1] = s;
                    self.buckets[dst.0].val[dst.1] = v;
                    self.buckets[pb].sig[pi] = 0;
                    dst = (pb, pi);
                }
                return Some(dst);
            }
            cur = next;
        }
        None
    }

    /// Removes `val` stored under hash `h`; `false` if it is not there.
    pub fn remove(&mut self, h: u64, val: u32) -> bool {
        let (b1, sig) = self.place(h);
        let b2 = self.other(b1, sig);
        for b in [b1, b2] {
            let bk = &mut self.buckets[b];
            for i in 0..WAYS {
                if bk.sig[i] == sig && bk.val[i] == val {
                    bk.sig[i] = 0;
                    self.len -= 1;
                    return true;
                }
            }
        }
        false
    }
}

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    // Truncation intended: the two halves of the product are folded together.
    #[allow(clippy::cast_possible_truncation)]
    let (lo, hi) = (p as u64, (p >> 64) as u64);
    lo ^ hi
}

const PI: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

/// The keyed hash of flows (and of the proxy's other tables). One per process, shared by all
/// workers: a flow's owner comes from the high bits of its client key's hash, its index bucket
/// from the low bits.
#[derive(Debug, Clone, Copy)]
pub struct FlowHasher {
    seed: [u64; 2],
}

impl FlowHasher {
    /// Seeds from the system's randomness (fixed, well-mixed seeds if it is unavailable, which
    /// only weakens resistance to chosen tuples).
    pub fn random() -> FlowHasher {
        let mut b = [0u8; 16];
        let _ = getrandom::fill(&mut b);
        let (a, c) = b.split_at(8);
        FlowHasher::with_seed(
            u64::from_le_bytes(a.try_into().unwrap_or([0; 8])),
            u64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
        )
    }

    /// Fixed seeds (tests, reproducible runs).
    pub fn with_seed(a: u64, b: u64) -> FlowHasher {
        FlowHasher {
            seed: [a ^ PI[0], b ^ PI[1]],
        }
    }

    /// The hash of a 4-tuple.
    #[inline(always)]
    pub fn key(&self, k: &Key) -> u64 {
        let a = (u64::from(k.src) << 32) | u64::from(k.dst);
        let b = (u64::from(k.sport) << 16) | u64::from(k.dport);
        let x = fold(a ^ self.seed[0], b ^ self.seed[1] ^ PI[2]);
        fold(x ^ PI[3], self.seed[0] ^ self.seed[1].rotate_left(23))
    }
}

impl Default for FlowHasher {
    fn default() -> Self {
        FlowHasher::random()
    }
}

/// Streaming state of [`FlowHasher`] for `hashbrown` maps.
#[derive(Debug, Clone, Copy)]
pub struct FlowHasherState {
    acc: u64,
    seed: [u64; 2],
}

impl Hasher for FlowHasherState {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.acc = fold(self.acc ^ v ^ self.seed[1], PI[2] ^ self.seed[0]);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn finish(&self) -> u64 {
        fold(self.acc ^ PI[3], self.seed[0] ^ self.seed[1])
    }
}

impl BuildHasher for FlowHasher {
    type Hasher = FlowHasherState;

    fn build_hasher(&self) -> FlowHasherState {
        FlowHasherState {
            acc: self.seed[1],
            seed: self.seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Key {
        Key {
            src: 0xc612_8000 + i,
            dst: 0xc612_000a,
            sport: 2000 + (i % 60000) as u16,
            dport: 80,
        }
    }

    #[test]
    fn inserts_finds_and_removes_at_full_design_load() {
        let h = FlowHasher::with_seed(1, 2);
        let n = 100_000u32;
        let mut ix = FlowIndex::new(n as usize, None);
        for i in 0..n {
            let k = key(i);
            assert!(ix.find(h.key(&k), |v| v == i).is_none());
            assert!(ix.insert(h.key(&k), i), "insert {i} failed");
        }
        assert_eq!(ix.len(), n as usize);
        for i in 0..n {
            assert_eq!(ix.find(h.key(&key(i)), |v| v == i), Some(i));
        }
        // Remove the even ones; the odd ones stay findable (also those moved by kicks).
        for i in (0..n).step_by(2) {
            assert!(ix.remove(h.key(&key(i)), i));
            assert!(!ix.remove(h.key(&key(i)), i));
        }
        for i in 0..n {
            let found = ix.find(h.key(&key(i)), |v| v == i);
            assert_eq!(found.is_some(), i % 2 == 1, "key {i}");
        }
        // Churn: refill with new keys.
        for i in n..n + n / 2 {
            assert!(ix.insert(h.key(&key(i)), i));
        }
        assert_eq!(ix.len(), n as usize);
    }

    #[test]
    fn a_full_index_refuses_and_stays_consistent() {
        let h = FlowHasher::with_seed(3, 4);
        // 16 slots (2 buckets): the 17th insert must fail, the others stay findable.
        let mut ix = FlowIndex::new(1, None);
        let mut ok = Vec::new();
        for i in 0..40u32 {
            if ix.insert(h.key(&key(i)), i) {
                ok.push(i);
            }
        }
        assert_eq!(ok.len(), 16);
        for &i in &ok {
            assert_eq!(ix.find(h.key(&key(i)), |v| v == i), Some(i));
        }
    }

    #[test]
    fn seeds_change_the_hash_and_streaming_hashes_are_stable() {
        let k = key(7);
        assert_ne!(
            FlowHasher::with_seed(1, 2).key(&k),
            FlowHasher::with_seed(1, 3).key(&k)
        );
        let h = FlowHasher::with_seed(5, 6);
        assert_eq!(h.hash_one(k), h.hash_one(k));
        assert_ne!(h.hash_one(1u32), h.hash_one(2u32));
    }
}
