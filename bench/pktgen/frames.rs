//! Test frames: Ethernet/IPv4/TCP with valid checksums and a payload derived from a sequence
//! number, so a sink can regenerate and compare every byte it receives.

/// Smallest frame (64 B on the wire, minus the 4 B FCS the NIC adds).
pub const MIN_FRAME: usize = 60;
/// Largest frame (1518 B on the wire minus FCS).
pub const MAX_FRAME: usize = 1514;

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Deterministic payload byte `i` of frame `seq`.
#[inline]
fn payload_byte(seq: u64, i: usize) -> u8 {
    let x = seq
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add((i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    (x >> 56) as u8
}

/// Smallest frame whose payload holds the whole 8-byte sequence number.
pub const MIN_NUMBERED: usize = 54 + 8;

/// Length of frame `seq` in verify mode: spread over 62..=1514.
pub fn verify_len(seq: u64) -> usize {
    MIN_NUMBERED + (seq.wrapping_mul(7919) % (MAX_FRAME - MIN_NUMBERED + 1) as u64) as usize
}

/// Writes frame `seq` of `len` bytes (>= 60) into `buf`: TCP from 198.18.0.1:`sport` to
/// 198.19.0.1:80 with the sequence number in the payload's first 8 bytes when it fits.
pub fn build(buf: &mut [u8], len: usize, seq: u64, sport: u16) {
    let buf = &mut buf[..len];
    buf[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    buf[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let ip = &mut buf[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 19, 0, 1,
    ]);
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    let c = csum_fold(csum_add(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp_len = len - 34;
    {
        let tcp = &mut buf[34..54];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18; // PSH|ACK
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        tcp[16..20].fill(0);
    }
    let pay = &mut buf[54..];
    let n = pay.len().min(8);
    pay[..n].copy_from_slice(&seq.to_be_bytes()[..n]);
    for (i, b) in pay.iter_mut().enumerate().skip(8) {
        *b = payload_byte(seq, i);
    }
    let mut sum = csum_add(0, &[198, 18, 0, 1, 198, 19, 0, 1, 0, 6]);
    sum += tcp_len as u32;
    sum = csum_add(sum, &buf[34..]);
    let c = csum_fold(sum);
    buf[50..52].copy_from_slice(&c.to_be_bytes());
}

/// The sequence number a received frame carries, if it looks like one of ours (>= 8 payload bytes).
pub fn seq_of(frame: &[u8]) -> Option<u64> {
    let b = frame.get(54..62)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let mut buf = [0u8; MAX_FRAME];
        for seq in [0u64, 1, 77, 1 << 40] {
            let len = verify_len(seq);
            build(&mut buf, len, seq, 1234);
            assert_eq!(csum_fold(csum_add(0, &buf[14..34])), 0);
            let mut sum = csum_add(0, &[198, 18, 0, 1, 198, 19, 0, 1, 0, 6]);
            sum += (len - 34) as u32;
            assert_eq!(csum_fold(csum_add(sum, &buf[34..len])), 0);
            assert_eq!(seq_of(&buf[..len]), Some(seq));
        }
    }
}
