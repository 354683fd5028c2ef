//! Wire-layer tests: a differential test of the incremental checksum updates against smoltcp's
//! full recomputation on random segments and rewrites, every drop reason, and a no-panic sweep
//! over random and mutated frames.

use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Packet, TcpPacket};

use super::*;

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
    fn u16(&mut self) -> u16 {
        (self.next() >> 48) as u16
    }
    fn bytes(&mut self, b: &mut [u8]) {
        for x in b {
            *x = (self.next() >> 56) as u8;
        }
    }
}

/// Random TCP options area (<= 40 bytes, multiple of 4).
fn random_options(r: &mut Rng) -> Vec<u8> {
    let mut o = Vec::new();
    for _ in 0..r.below(6) {
        let pick = r.below(7);
        let add: Vec<u8> = match pick {
            0 => vec![1],
            1 => {
                let m = r.u16();
                vec![2, 4, (m >> 8) as u8, m as u8]
            }
            2 => vec![3, 3, (r.below(15)) as u8],
            3 => vec![4, 2],
            4 => {
                let mut v = vec![8, 10, 0, 0, 0, 0, 0, 0, 0, 0];
                r.bytes(&mut v[2..]);
                v
            }
            5 => {
                let n = 1 + r.below(3) as usize;
                let mut v = vec![5, (2 + 8 * n) as u8];
                v.resize(2 + 8 * n, 0);
                r.bytes(&mut v[2..]);
                v
            }
            _ => vec![1, 1],
        };
        let has = |k: u8| {
            let mut i = 0;
            while i < o.len() {
                if o[i] == 1 {
                    i += 1;
                    continue;
                }
                if o[i] == k {
                    return true;
                }
                i += usize::from(o[i + 1]);
            }
            false
        };
        if add[0] != 1 && has(add[0]) {
            continue;
        }
        if o.len() + add.len() <= 40 {
            o.extend(add);
        }
    }
    while o.len() % 4 != 0 {
        o.push(1);
    }
    o
}

/// A random, valid Ethernet/IPv4/TCP frame (checksums filled by smoltcp), maybe padded.
fn random_frame(r: &mut Rng) -> Vec<u8> {
    let opts = random_options(r);
    let payload = r.below(300) as usize;
    let tcp_len = 20 + opts.len() + payload;
    let total = 20 + tcp_len;
    let pad = if r.below(4) == 0 {
        r.below(20) as usize
    } else {
        0
    };
    let mut f = vec![0u8; ETH_LEN + total + pad];
    r.bytes(&mut f[..12]);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH_LEN..ETH_LEN + total]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(total as u16);
        ip.set_ident(r.u16());
        ip.clear_flags();
        ip.set_dont_frag(r.below(2) == 0);
        ip.set_hop_limit(64);
        ip.set_next_header(smoltcp::wire::IpProtocol::Tcp);
        ip.set_src_addr(Ipv4Address::from_bits(r.u32()));
        ip.set_dst_addr(Ipv4Address::from_bits(r.u32()));
        ip.fill_checksum();
    }
    let l4 = ETH_LEN + 20;
    r.bytes(&mut f[l4..l4 + 20]);
    f[l4 + 12] = (((20 + opts.len()) / 4) << 4) as u8;
    f[l4 + 20..l4 + 20 + opts.len()].copy_from_slice(&opts);
    r.bytes(&mut f[l4 + 20 + opts.len()..ETH_LEN + total]);
    fill_tcp_checksum(&mut f);
    f
}

/// smoltcp's full recomputation of both checksums of a (possibly padded) frame.
fn full_checksums(f: &[u8]) -> (u16, u16) {
    let ip = Ipv4Packet::new_checked(&f[ETH_LEN..]).unwrap();
    let total = usize::from(ip.total_len());
    let mut copy = f[ETH_LEN..ETH_LEN + total].to_vec();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let mut ipm = Ipv4Packet::new_unchecked(&mut copy[..]);
    ipm.fill_checksum();
    let ipc = ipm.checksum();
    let mut tcp = TcpPacket::new_unchecked(&mut copy[20..]);
    tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    (ipc, tcp.checksum())
}

fn fill_tcp_checksum(f: &mut [u8]) {
    let (_, t) = full_checksums(f);
    let at = ETH_LEN + 20 + 16;
    f[at..at + 2].copy_from_slice(&t.to_be_bytes());
}

fn stored(f: &[u8]) -> (u16, u16) {
    let ip = u16::from_be_bytes([f[ETH_LEN + 10], f[ETH_LEN + 11]]);
    let tcp = u16::from_be_bytes([f[ETH_LEN + 36], f[ETH_LEN + 37]]);
    (ip, tcp)
}

#[test]
fn incremental_checksums_equal_full_recomputation() {
    let seed = 0x5eed_1624;
    let mut r = Rng(seed);
    for case in 0..20_000 {
        let mut f = random_frame(&mut r);
        let meta = match classify(&f) {
            Ok(Frame::Tcp(m)) => m,
            other => {
                panic!("case {case} (seed {seed:#x}): random valid frame classified as {other:?}")
            }
        };
        assert!(
            tcp_checksum_ok(&f, &meta),
            "case {case}: generator made a bad checksum"
        );
        let mut s = TcpSegmentMut::new(&mut f, &meta).expect("segment view");
        for _ in 0..1 + r.below(6) {
            match r.below(14) {
                0 => s.set_src_addr(r.u32().to_be_bytes()),
                1 => s.set_dst_addr(r.u32().to_be_bytes()),
                2 => s.set_src_port(r.u16()),
                3 => s.set_dst_port(r.u16()),
                4 => s.set_seq(SeqNumber(r.u32())),
                5 => s.set_ack(SeqNumber(r.u32())),
                6 => s.set_window(r.u16()),
                7 => {
                    let before = s.mss();
                    let max = r.u16();
                    let changed = s.clamp_mss(max);
                    assert_eq!(changed, before.is_some_and(|m| m > max));
                    if let Some(m) = before {
                        assert_eq!(s.mss(), Some(m.min(max)));
                    }
                }
                8 => {
                    let (v, e) = (r.u32(), r.u32());
                    if s.set_timestamps(v, e) {
                        assert_eq!(s.timestamps(), Some((v, e)));
                    }
                }
                9 => {
                    let (a, b) = (SeqNumber(r.u32()), SeqNumber(r.u32()));
                    if s.set_sack_block(0, a, b) {
                        assert_eq!(s.sack_block(0), Some((a, b)));
                    }
                }
                10 => {
                    s.strip_sack();
                    assert_eq!(s.sack_block(0), None);
                }
                11 => {
                    s.strip_timestamps();
                    assert_eq!(s.timestamps(), None);
                }
                12 => s.set_tuple(r.u32(), r.u32(), r.u16(), r.u16()),
                _ => s.set_flags((r.u16() & 0xff) as u8),
            }
        }
        let (want_ip, want_tcp) = full_checksums(&f);
        let (got_ip, got_tcp) = stored(&f);
        assert_eq!(
            got_ip, want_ip,
            "case {case} (seed {seed:#x}): IPv4 checksum"
        );
        assert_eq!(
            got_tcp, want_tcp,
            "case {case} (seed {seed:#x}): TCP checksum"
        );
        let m2 = match classify(&f) {
            Ok(Frame::Tcp(m)) => m,
            other => panic!("case {case}: rewritten frame classified as {other:?}"),
        };
        assert!(tcp_checksum_ok(&f, &m2));
    }
}

#[test]
fn rfc1624_examples() {
    // RFC 1624 section 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
    assert_eq!(checksum::update16(0xdd2f, 0x5555, 0x3285), 0x0000);
    // A no-op update keeps the checksum.
    assert_eq!(checksum::update16(0x1234, 0xabcd, 0xabcd), 0x1234);
    assert_eq!(checksum::update32(0x1234, 0xdead_beef, 0xdead_beef), 0x1234);
}

fn valid() -> Vec<u8> {
    let mut r = Rng(7);
    loop {
        let f = random_frame(&mut r);
        if let Ok(Frame::Tcp(m)) = classify(&f) {
            if m.tcp_hdr_len == 20 && m.payload_len > 4 {
                return f;
            }
        }
    }
}

fn fix_ip_checksum(f: &mut [u8]) {
    f[ETH_LEN + 10] = 0;
    f[ETH_LEN + 11] = 0;
    let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
    let c = checksum::finish(checksum::sum(0, &f[ETH_LEN..ETH_LEN + ihl]));
    f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn every_drop_reason() {
    let base = valid();
    let check = |f: &[u8], want: DropReason| assert_eq!(classify(f), Err(want), "{want:?}");
    check(&base[..10], DropReason::Truncated);
    check(&base[..30], DropReason::Truncated);
    let mut f = base.clone();
    f[ETH_LEN] = 0x65;
    check(&f, DropReason::Ipv4BadVersion);
    let mut f = base.clone();
    f[ETH_LEN] = 0x44;
    check(&f, DropReason::Ipv4BadHeaderLen);
    let mut f = base.clone();
    f[ETH_LEN + 8] ^= 1;
    check(&f, DropReason::Ipv4BadChecksum);
    let mut f = base.clone();
    f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&9000u16.to_be_bytes());
    fix_ip_checksum(&mut f);
    check(&f, DropReason::Ipv4BadTotalLen);
    let mut f = base.clone();
    f[ETH_LEN + 6] = 0x20; // MF
    fix_ip_checksum(&mut f);
    check(&f, DropReason::Ipv4Fragment);
    let mut f = base.clone();
    f[ETH_LEN + 7] = 0x08; // offset 8
    f[ETH_LEN + 6] = 0;
    fix_ip_checksum(&mut f);
    check(&f, DropReason::Ipv4Fragment);
    // IPv4 options: a 24-byte header (one NOP word) in front of TCP.
    let mut f = base[..ETH_LEN + 20].to_vec();
    f.extend([1, 1, 1, 0]);
    f.extend(&base[ETH_LEN + 20..]);
    f[ETH_LEN] = 0x46;
    let total = u16::from_be_bytes([f[ETH_LEN + 2], f[ETH_LEN + 3]]) + 4;
    f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut f);
    check(&f, DropReason::Ipv4Options);
    let l4 = ETH_LEN + 20;
    let mut f = base.clone();
    f[l4 + 12] = 4 << 4;
    check(&f, DropReason::TcpBadDataOffset);
    let mut f = base.clone();
    f[l4 + 12] = 15 << 4;
    check(&f, DropReason::TcpBadDataOffset);
    // Options overrunning: data offset 6 with an MSS option claiming 8 bytes.
    let mut f = base.clone();
    f[l4 + 12] = 6 << 4;
    f[l4 + 20..l4 + 24].copy_from_slice(&[2, 8, 5, 0xb4]);
    check(&f, DropReason::TcpBadOptions);
    let mut f = base.clone();
    f[l4 + 12] = 6 << 4;
    f[l4 + 20..l4 + 24].copy_from_slice(&[1, 1, 1, 2]); // kind with no length byte
    check(&f, DropReason::TcpBadOptions);
    let mut f = base.clone();
    f[l4 + 12] = 6 << 4;
    f[l4 + 20..l4 + 24].copy_from_slice(&[3, 4, 7, 1]); // window scale with length 4
    check(&f, DropReason::TcpBadOptions);
    let mut f = base.clone();
    f[l4 + 12] = 6 << 4;
    f[l4 + 20..l4 + 24].copy_from_slice(&[99, 0, 0, 0]); // length 0
    check(&f, DropReason::TcpBadOptions);
    // A bad TCP checksum is not a classification error, it is reported separately.
    let mut f = base.clone();
    f[l4 + 4] ^= 0xff;
    let Ok(Frame::Tcp(m)) = classify(&f) else {
        panic!("still TCP")
    };
    assert!(!tcp_checksum_ok(&f, &m));
    // Other protocols.
    let mut f = base.clone();
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    assert_eq!(classify(&f), Ok(Frame::OtherEther(0x86dd)));
    let mut f = base.clone();
    f[ETH_LEN + 9] = 17;
    fix_ip_checksum(&mut f);
    assert!(matches!(
        classify(&f),
        Ok(Frame::OtherIpv4 { proto: 17, .. })
    ));
    let mut f = base;
    f[ETH_LEN + 9] = 1;
    fix_ip_checksum(&mut f);
    assert!(matches!(classify(&f), Ok(Frame::Icmp { l4: 34, .. })));
}

#[test]
fn parse_options() {
    let o = TcpOptionOffsets::parse(&[
        2, 4, 5, 0xb4, 1, 3, 3, 7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0,
    ])
    .unwrap();
    assert_eq!(o.mss, Some(0));
    assert_eq!(o.wscale, Some(5));
    assert_eq!(o.sack_perm, Some(8));
    assert_eq!(o.ts, Some(10));
    assert_eq!(o.sack, None);
    let o = TcpOptionOffsets::parse(&[1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
        .unwrap();
    assert_eq!((o.sack, o.sack_blocks), (Some(2), 2));
    assert!(
        TcpOptionOffsets::parse(&[5, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err(),
        "SACK length not 2+8n"
    );
    assert_eq!(
        TcpOptionOffsets::parse(&[0, 99, 99]).unwrap(),
        TcpOptionOffsets::default(),
        "END stops parsing"
    );
}

#[test]
fn no_panic_on_random_or_mutated_frames() {
    let seed = 0xf022;
    let mut r = Rng(seed);
    let mut buf = vec![0u8; 1600];
    for case in 0..200_000u32 {
        let f: Vec<u8> = if case % 2 == 0 {
            let n = r.below(120) as usize;
            r.bytes(&mut buf[..n]);
            if n >= 14 && r.below(2) == 0 {
                buf[12] = 8;
                buf[13] = 0;
                if n > 14 {
                    buf[14] = 0x40 | (r.below(16) as u8);
                }
            }
            buf[..n].to_vec()
        } else {
            let mut f = random_frame(&mut r);
            for _ in 0..1 + r.below(4) {
                let i = r.below(f.len() as u64) as usize;
                f[i] = (r.next() >> 56) as u8;
            }
            if r.below(3) == 0 {
                let cut = r.below(f.len() as u64) as usize;
                f.truncate(cut);
            }
            f
        };
        let mut f = f;
        if let Ok(Frame::Tcp(m)) = classify(&f) {
            let _ = tcp_checksum_ok(&f, &m);
            if let Some(mut s) = TcpSegmentMut::new(&mut f, &m) {
                s.clamp_mss(536);
                let _ = s.timestamps();
                s.set_timestamps(1, 2);
                for i in 0..4 {
                    let _ = s.sack_block(i);
                    s.set_sack_block(i, SeqNumber(1), SeqNumber(2));
                }
                s.strip_sack();
                s.strip_timestamps();
                s.set_src_addr([1, 2, 3, 4]);
                s.set_window(0);
            }
        }
    }
}
