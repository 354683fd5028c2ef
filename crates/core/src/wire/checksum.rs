//! Internet checksums: full computation and RFC 1624 incremental updates.
//!
//! //= rfc1624#section-3
//! //# HC' = ~(C + (-m) + m') = ~(~HC + ~m + m')
//!
//! The update functions take the checksum field as stored in the packet (`HC`), the old and new
//! value of the changed field, and return the new field. They are exact: a differential test
//! compares them with a full recomputation over random packets and rewrites.

/// One's-complement sum of `data` (big-endian 16-bit words, odd byte padded) added to `acc`,
/// folded to 16 bits but not complemented. Eight bytes a step: the sum of big-endian 32-bit
/// words folds to the sum of their 16-bit halves (2^16 = 1 modulo 2^16 - 1, RFC 1071 2(B)),
/// and a 64-bit accumulator cannot overflow on any frame.
#[inline]
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    let mut a = u64::from(acc);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let v = u64::from_be_bytes(b);
        a += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for c in &mut pairs {
        a += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = pairs.remainder() {
        a += u64::from(*b) << 8;
    }
    while a > 0xffff {
        a = (a & 0xffff) + (a >> 16);
    }
    // a <= 0xffff here.
    a as u32
}

/// Folds a sum to 16 bits and complements it: the value to store in a checksum field.
#[inline]
pub fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // acc <= 0xffff here.
    !(acc as u16)
}

/// The checksum field after a 16-bit word changed from `old` to `new` (RFC 1624 eqn. 3).
#[inline]
#[must_use]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!hc) + u32::from(!old) + u32::from(new);
    finish(acc)
}

/// The checksum field after a 32-bit value (two aligned words) changed from `old` to `new`.
#[inline]
#[must_use]
pub fn update32(hc: u16, old: u32, new: u32) -> u16 {
    let acc = u32::from(!hc)
        + u32::from(!((old >> 16) as u16))
        + u32::from(!(old as u16))
        + u32::from((new >> 16) as u16)
        + u32::from(new as u16);
    finish(acc)
}

/// The one's-complement delta of a 32-bit value changing from `old` to `new`, to sum with other
/// deltas and apply once with [`apply_delta`].
#[inline(always)]
#[must_use]
pub fn delta32(old: u32, new: u32) -> u32 {
    u32::from(!((old >> 16) as u16))
        + u32::from(!(old as u16))
        + u32::from((new >> 16) as u16)
        + u32::from(new as u16)
}

/// The checksum field `hc` after the changes summed in `delta` (at most 2^16 terms).
#[inline(always)]
#[must_use]
pub fn apply_delta(hc: u16, delta: u32) -> u16 {
    let acc = (delta & 0xffff) + (delta >> 16) + u32::from(!hc);
    finish(acc)
}

/// The checksum field after the bytes at an even offset changed from `old` to `new` (same length,
/// even length).
#[inline]
#[must_use]
pub fn update_bytes(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    let mut acc = u32::from(!hc);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u32::from(!u16::from_be_bytes([o[0], o[1]]))
            + u32::from(u16::from_be_bytes([n[0], n[1]]));
        if acc >= 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    finish(acc)
}

/// The TCP/UDP pseudo-header sum for IPv4 (`len` = L4 header + payload).
#[inline]
pub fn pseudo_ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    let acc = sum(0, &src);
    let acc = sum(acc, &dst);
    acc + u32::from(proto) + u32::from(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's definition, a 16-bit word at a time.
    fn reference(acc: u32, data: &[u8]) -> u16 {
        let mut a = u64::from(acc);
        for c in data.chunks(2) {
            a += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while a > 0xffff {
            a = (a & 0xffff) + (a >> 16);
        }
        !(a as u16)
    }

    #[test]
    fn wide_sum_equals_the_word_by_word_definition() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in 0..200 {
            for _ in 0..20 {
                let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let acc = (next() as u32) >> (next() % 32);
                assert_eq!(
                    finish(sum(acc, &data)),
                    reference(acc, &data),
                    "{len} bytes"
                );
            }
        }
        let ones = vec![0xffu8; 9000];
        assert_eq!(finish(sum(u32::MAX, &ones)), reference(u32::MAX, &ones));
    }
}
