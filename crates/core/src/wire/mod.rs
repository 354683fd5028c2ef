//! Wire formats: bytes <-> fields, zero-copy, no allocation, no panic on any input.
//!
//! smoltcp's `wire` module is the reference: its views build and check frames in the tests (and
//! will emit segments in the migration simulation). The fast path needs what it lacks:
//! - [`SeqNumber`], total (never panicking) serial arithmetic for peer-chosen values;
//! - [`checksum`]: RFC 1624 incremental updates, so a rewrite touches only the changed words;
//! - [`classify`]: one pass over an Ethernet frame that either yields the offsets and fields the
//!   fast path needs ([`TcpMeta`]) or a [`DropReason`] to count (smoltcp's `new_checked` views
//!   report one generic error, and walking Ethernet, IPv4 and TCP views separately re-reads the
//!   same header bytes);
//! - [`TcpSegmentMut`]: in-place rewriting of addresses, ports, sequence/ack numbers, window and
//!   TCP options (MSS clamp, timestamps, SACK blocks, stripping), keeping both checksums valid.
//!
//! Invariant: after [`classify`] returned `Ok(Frame::Tcp(meta))` for a buffer, every accessor of a
//! [`TcpSegmentMut`] built from that buffer and `meta` is in bounds; nothing here indexes a slice
//! with a value it has not checked against the slice's length.

#![forbid(unsafe_code)]

pub mod build;
pub mod checksum;
mod seq;
mod tcp;

pub use seq::SeqNumber;
pub use tcp::{TcpOptionOffsets, TcpOptionsError, TcpSegmentMut};

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;

/// Why a frame is not handled by the fast path. Every reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than the headers it claims.
    Truncated,
    /// IPv4 version field is not 4.
    Ipv4BadVersion,
    /// IPv4 header length below 20 bytes or beyond the frame.
    Ipv4BadHeaderLen,
    /// IPv4 options present (not supported on the fast path).
    Ipv4Options,
    /// A fragment (MF set or non-zero offset).
    Ipv4Fragment,
    /// IPv4 header checksum wrong.
    Ipv4BadChecksum,
    /// IPv4 total length larger than the frame or smaller than the header.
    Ipv4BadTotalLen,
    /// TCP data offset below 5 words or beyond the IP payload.
    TcpBadDataOffset,
    /// TCP options whose lengths overrun the header.
    TcpBadOptions,
    /// TCP checksum wrong (checked by the NIC or in software, before the segment moves any
    /// state or is cached: a corrupted segment is never acknowledged on its sender's behalf).
    TcpBadChecksum,
}

impl DropReason {
    /// Number of reasons (for counter arrays).
    pub const COUNT: usize = 10;

    /// All reasons, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Truncated,
        DropReason::Ipv4BadVersion,
        DropReason::Ipv4BadHeaderLen,
        DropReason::Ipv4Options,
        DropReason::Ipv4Fragment,
        DropReason::Ipv4BadChecksum,
        DropReason::Ipv4BadTotalLen,
        DropReason::TcpBadDataOffset,
        DropReason::TcpBadOptions,
        DropReason::TcpBadChecksum,
    ];

    /// Stable name for counters and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Ipv4BadVersion => "ipv4_bad_version",
            DropReason::Ipv4BadHeaderLen => "ipv4_bad_header_len",
            DropReason::Ipv4Options => "ipv4_options",
            DropReason::Ipv4Fragment => "ipv4_fragment",
            DropReason::Ipv4BadChecksum => "ipv4_bad_checksum",
            DropReason::Ipv4BadTotalLen => "ipv4_bad_total_len",
            DropReason::TcpBadDataOffset => "tcp_bad_data_offset",
            DropReason::TcpBadOptions => "tcp_bad_options",
            DropReason::TcpBadChecksum => "tcp_bad_checksum",
        }
    }
}

/// TCP header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;

    /// Whether all bits of `f` are set.
    #[inline]
    pub fn has(self, f: u8) -> bool {
        self.0 & f == f
    }
}

/// What the fast path needs to know about a TCP/IPv4 frame, with its offsets checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMeta {
    /// Offset of the TCP header in the frame.
    pub l4: usize,
    /// TCP header length (data offset * 4).
    pub tcp_hdr_len: usize,
    /// Offset of the payload.
    pub payload: usize,
    /// Payload length (from the IP total length, not the frame: Ethernet padding excluded).
    pub payload_len: usize,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: SeqNumber,
    /// Acknowledgement number.
    pub ack: SeqNumber,
    /// Flags.
    pub flags: TcpFlags,
    /// Raw (unscaled) window.
    pub window: u16,
}

impl TcpMeta {
    /// Sequence space the segment occupies (payload, plus one each for SYN and FIN).
    pub fn seq_len(&self) -> u32 {
        let n = u32::try_from(self.payload_len).unwrap_or(u32::MAX);
        n + u32::from(self.flags.has(TcpFlags::SYN)) + u32::from(self.flags.has(TcpFlags::FIN))
    }

    /// Length of the IPv4 packet (header + TCP header + payload).
    pub fn ip_total_len(&self) -> usize {
        self.payload + self.payload_len - ETH_LEN
    }
}

/// A classified frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// TCP over IPv4 without options or fragmentation, all offsets checked.
    Tcp(TcpMeta),
    /// ARP.
    Arp,
    /// ICMP over IPv4 (header checked); `l4` is the ICMP header's offset.
    Icmp {
        /// Offset of the ICMP header.
        l4: usize,
        /// Source address.
        src: [u8; 4],
        /// Destination address.
        dst: [u8; 4],
    },
    /// Another IPv4 protocol.
    OtherIpv4 {
        /// Protocol number.
        proto: u8,
        /// Destination address.
        dst: [u8; 4],
    },
    /// Another EtherType (IPv6, VLAN, LLDP, ...).
    OtherEther(u16),
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn addr(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

/// A directional 4-tuple as it appears in a packet (source first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl Key {
    /// The key of `client` talking to service address `vip` (the client -> VIP direction).
    pub fn client(client: (u32, u16), vip: (u32, u16)) -> Key {
        Key {
            src: client.0,
            dst: vip.0,
            sport: client.1,
            dport: vip.1,
        }
    }
}

/// The 4-tuple and the flags of what looks like a TCP/IPv4 frame, without validation: a
/// prefetch hint only ([`classify`] decides what the frame is).
#[inline]
pub fn tuple_of(f: &[u8]) -> Option<(Key, u8)> {
    let ip = ETH_LEN;
    if f.len() < ip + 20 || be16(f, 12) != ETHERTYPE_IPV4 || f[ip + 9] != PROTO_TCP {
        return None;
    }
    let l4 = ip + usize::from(f[ip] & 0x0f) * 4;
    if f.len() < l4 + 14 {
        return None;
    }
    let k = Key {
        src: u32::from_be_bytes(addr(f, ip + 12)),
        dst: u32::from_be_bytes(addr(f, ip + 16)),
        sport: be16(f, l4),
        dport: be16(f, l4 + 2),
    };
    Some((k, f[l4 + 13]))
}

/// Classifies an Ethernet frame in one pass. Never panics; checks the IPv4 header checksum but
/// not the TCP checksum (see [`tcp_checksum_ok`]) and validates TCP option lengths.
pub fn classify(f: &[u8]) -> Result<Frame, DropReason> {
    if f.len() < ETH_LEN {
        return Err(DropReason::Truncated);
    }
    let ethertype = be16(f, 12);
    match ethertype {
        ETHERTYPE_IPV4 => {}
        ETHERTYPE_ARP => return Ok(Frame::Arp),
        other => return Ok(Frame::OtherEther(other)),
    }
    let ip = ETH_LEN;
    if f.len() < ip + 20 {
        return Err(DropReason::Truncated);
    }
    let vihl = f[ip];
    if vihl >> 4 != 4 {
        return Err(DropReason::Ipv4BadVersion);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 || ip + ihl > f.len() {
        return Err(DropReason::Ipv4BadHeaderLen);
    }
    if checksum::finish(checksum::sum(0, &f[ip..ip + ihl])) != 0 {
        return Err(DropReason::Ipv4BadChecksum);
    }
    let total = usize::from(be16(f, ip + 2));
    if total < ihl || ip + total > f.len() {
        return Err(DropReason::Ipv4BadTotalLen);
    }
    let frag = be16(f, ip + 6);
    if frag & 0x3fff != 0 {
        return Err(DropReason::Ipv4Fragment);
    }
    let proto = f[ip + 9];
    let src = addr(f, ip + 12);
    let dst = addr(f, ip + 16);
    let l4 = ip + ihl;
    match proto {
        PROTO_TCP => {}
        PROTO_ICMP => return Ok(Frame::Icmp { l4, src, dst }),
        proto => return Ok(Frame::OtherIpv4 { proto, dst }),
    }
    // TCP is handled only without IP options: every rewrite assumes a 20-byte IP header.
    if ihl != 20 {
        return Err(DropReason::Ipv4Options);
    }
    let end = ip + total;
    if l4 + 20 > end {
        return Err(DropReason::Truncated);
    }
    let doff = usize::from(f[l4 + 12] >> 4) * 4;
    if doff < 20 || l4 + doff > end {
        return Err(DropReason::TcpBadDataOffset);
    }
    if TcpOptionOffsets::parse(&f[l4 + 20..l4 + doff]).is_err() {
        return Err(DropReason::TcpBadOptions);
    }
    Ok(Frame::Tcp(TcpMeta {
        l4,
        tcp_hdr_len: doff,
        payload: l4 + doff,
        payload_len: end - (l4 + doff),
        src,
        dst,
        sport: be16(f, l4),
        dport: be16(f, l4 + 2),
        seq: SeqNumber(be32(f, l4 + 4)),
        ack: SeqNumber(be32(f, l4 + 8)),
        flags: TcpFlags(f[l4 + 13]),
        window: be16(f, l4 + 14),
    }))
}

/// Whether the TCP checksum of a classified segment is correct (a full pass over the segment).
pub fn tcp_checksum_ok(f: &[u8], m: &TcpMeta) -> bool {
    let len = m.tcp_hdr_len + m.payload_len;
    let Some(seg) = f.get(m.l4..m.l4 + len) else {
        return false;
    };
    let Ok(len16) = u16::try_from(len) else {
        return false;
    };
    let acc = checksum::pseudo_ipv4(m.src, m.dst, PROTO_TCP, len16);
    checksum::finish(checksum::sum(acc, seg)) == 0
}

#[cfg(test)]
mod tests;
