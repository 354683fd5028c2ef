//! Internet checksums: full computation and RFC 1624 incremental updates.
//!
//! //= rfc1624#section-3
//! //# HC' = ~(C + (-m) + m') = ~(~HC + ~m + m')
//!
//! The update functions take the checksum field as stored in the packet (`HC`), the old and new
//! value of the changed field, and return the new field. They are exact: a differential test
//! compares them with a full recomputation over random packets and rewrites.

/// One's-complement sum of `data` (big-endian 16-bit words, odd byte padded), not folded.
#[inline]
pub fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        if acc >= 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [b] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*b) << 8);
    }
    acc
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
