//! Building TCP/IPv4 frames for the segments the proxy originates itself (ACKs toward a frozen
//! server, the SYN-ACK and the replay toward a new device, resets): header fields and options
//! written into a caller's buffer, payload copied from the caller's slices, both checksums
//! computed. Forwarded segments are never rebuilt: they are rewritten in place
//! ([`super::TcpSegmentMut`]).
//!
//! Invariant: [`write_tcp_frame`] writes exactly [`tcp_frame_len`] bytes or nothing (a buffer too
//! short is an error, not a panic).

use super::{checksum, SeqNumber, ETHERTYPE_IPV4, ETH_LEN, PROTO_TCP};

/// The TCP fields of a segment to build (addresses and ports come with the leg).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFields {
    /// Sequence number.
    pub seq: SeqNumber,
    /// Acknowledgement number (sent with the ACK flag).
    pub ack: SeqNumber,
    /// Flags ([`super::TcpFlags`] bits).
    pub flags: u8,
    /// Raw window field.
    pub window: u16,
    /// MSS option (SYN segments).
    pub mss: Option<u16>,
    /// Window-scale option (SYN segments).
    pub wscale: Option<u8>,
    /// SACK-permitted option (SYN segments).
    pub sack_perm: bool,
    /// Timestamps option: (TSval, TSecr).
    pub ts: Option<(u32, u32)>,
}

/// Where a built segment goes: Ethernet and IPv4 addresses and TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Endpoints {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl Endpoints {
    /// The same path in the other direction.
    pub fn reversed(&self) -> Endpoints {
        Endpoints {
            src_mac: self.dst_mac,
            dst_mac: self.src_mac,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// Why a frame was not built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The frame is larger than the buffer.
    #[error("the frame needs {need} bytes, the buffer is shorter")]
    BufferTooShort {
        /// Bytes needed.
        need: usize,
    },
    /// The payload's parts held fewer bytes than the segment announces.
    #[error("the payload's parts hold {got} of the segment's {want} bytes")]
    ShortPayload {
        /// Bytes the segment carries.
        want: usize,
        /// Bytes the parts held.
        got: usize,
    },
}

fn options_len(f: &TcpFields) -> usize {
    let mut n = 0;
    if f.mss.is_some() {
        n += 4;
    }
    if f.wscale.is_some() {
        n += 4;
    }
    if f.ts.is_some() {
        n += 12; // (NOP NOP | SACK-permitted) + timestamps
    } else if f.sack_perm {
        n += 4;
    }
    n
}

/// Length of the frame for `fields` and `payload` bytes.
pub fn tcp_frame_len(fields: &TcpFields, payload: usize) -> usize {
    ETH_LEN + 20 + 20 + options_len(fields) + payload
}

/// Writes an Ethernet + IPv4 + TCP frame into `out`; returns its length.
///
/// # Errors
/// `out` is too short for the frame.
pub fn write_tcp_frame(
    out: &mut [u8],
    ep: &Endpoints,
    f: &TcpFields,
    payload: &[&[u8]],
) -> Result<usize, BuildError> {
    let plen: usize = payload.iter().map(|p| p.len()).sum();
    write_tcp_frame_gather(out, ep, f, plen, payload.iter().copied())
}

/// Writes an Ethernet + IPv4 + TCP frame with `plen` payload bytes gathered from `parts` (as
/// many parts as it takes: a replay over a chat's small cached segments); returns its length.
/// Parts beyond `plen` bytes are cut.
///
/// # Errors
/// `out` is too short for the frame, or `parts` hold fewer than `plen` bytes (nothing that
/// leaves is shorter than its headers say).
pub fn write_tcp_frame_gather<'a>(
    out: &mut [u8],
    ep: &Endpoints,
    f: &TcpFields,
    plen: usize,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> Result<usize, BuildError> {
    let need = tcp_frame_len(f, plen);
    if out.len() < need {
        return Err(BuildError::BufferTooShort { need });
    }
    let out = &mut out[..need];
    let opt_len = options_len(f);
    let tcp_len = 20 + opt_len + plen;
    let ip_len = 20 + tcp_len;
    // Ethernet.
    out[0..6].copy_from_slice(&ep.dst_mac);
    out[6..12].copy_from_slice(&ep.src_mac);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    // IPv4, DF set, no options.
    let ip = &mut out[ETH_LEN..ETH_LEN + 20];
    ip.copy_from_slice(&[0; 20]);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&u16::try_from(ip_len).unwrap_or(u16::MAX).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[12..16].copy_from_slice(&ep.src);
    ip[16..20].copy_from_slice(&ep.dst);
    let c = checksum::finish(checksum::sum(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    // TCP.
    let l4 = ETH_LEN + 20;
    let t = &mut out[l4..];
    t[0..2].copy_from_slice(&ep.sport.to_be_bytes());
    t[2..4].copy_from_slice(&ep.dport.to_be_bytes());
    t[4..8].copy_from_slice(&f.seq.0.to_be_bytes());
    t[8..12].copy_from_slice(&f.ack.0.to_be_bytes());
    t[12] = u8::try_from((20 + opt_len) / 4).unwrap_or(15) << 4;
    t[13] = f.flags;
    t[14..16].copy_from_slice(&f.window.to_be_bytes());
    t[16..20].copy_from_slice(&[0; 4]);
    let mut o = 20;
    if let Some(m) = f.mss {
        t[o..o + 4].copy_from_slice(&[2, 4, (m >> 8) as u8, (m & 0xff) as u8]);
        o += 4;
    }
    if let Some(w) = f.wscale {
        t[o..o + 4].copy_from_slice(&[1, 3, 3, w.min(14)]);
        o += 4;
    }
    if let Some((val, ecr)) = f.ts {
        let lead = if f.sack_perm { [4, 2] } else { [1, 1] };
        t[o..o + 2].copy_from_slice(&lead);
        t[o + 2..o + 4].copy_from_slice(&[8, 10]);
        t[o + 4..o + 8].copy_from_slice(&val.to_be_bytes());
        t[o + 8..o + 12].copy_from_slice(&ecr.to_be_bytes());
        o += 12;
    } else if f.sack_perm {
        t[o..o + 4].copy_from_slice(&[1, 1, 4, 2]);
        o += 4;
    }
    let end = o + plen;
    for p in parts {
        let n = p.len().min(end - o);
        t[o..o + n].copy_from_slice(&p[..n]);
        o += n;
        if o == end {
            break;
        }
    }
    if o != end {
        return Err(BuildError::ShortPayload {
            want: plen,
            got: plen - (end - o),
        });
    }
    let acc = checksum::pseudo_ipv4(
        ep.src,
        ep.dst,
        PROTO_TCP,
        u16::try_from(tcp_len).unwrap_or(u16::MAX),
    );
    let c = checksum::finish(checksum::sum(acc, &t[..tcp_len]));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Ok(need)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{classify, tcp_checksum_ok, Frame, TcpFlags, TcpSegmentMut};

    #[test]
    fn built_frames_parse_back_with_valid_checksums() {
        let ep = Endpoints {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: [198, 18, 0, 10],
            dst: [198, 18, 0, 1],
            sport: 80,
            dport: 40_000,
        };
        for (mss, ws, sp, ts, pl) in [
            (Some(1460), Some(7), true, Some((5, 6)), 0usize),
            (None, None, false, Some((7, 8)), 1000),
            (Some(536), None, true, None, 0),
            (None, None, false, None, 3),
        ] {
            let f = TcpFields {
                seq: SeqNumber(0xffff_fff0),
                ack: SeqNumber(77),
                flags: TcpFlags::ACK | if mss.is_some() { TcpFlags::SYN } else { 0 },
                window: 4321,
                mss,
                wscale: ws,
                sack_perm: sp,
                ts,
            };
            let data = vec![0xabu8; pl];
            let mut buf = vec![0u8; 2048];
            let n = write_tcp_frame(&mut buf, &ep, &f, &[&data[..pl / 2], &data[pl / 2..]])
                .expect("fits");
            assert_eq!(n, tcp_frame_len(&f, pl));
            let Ok(Frame::Tcp(m)) = classify(&buf[..n]) else {
                panic!("built frame does not classify")
            };
            assert!(tcp_checksum_ok(&buf[..n], &m));
            assert_eq!(
                (m.seq, m.ack, m.window, m.payload_len),
                (f.seq, f.ack, 4321, pl)
            );
            assert_eq!(
                (m.sport, m.dport, m.src, m.dst),
                (80, 40_000, ep.src, ep.dst)
            );
            let v = TcpSegmentMut::new(&mut buf[..n], &m).expect("options parse");
            assert_eq!(v.mss(), mss);
            assert_eq!(v.wscale(), ws);
            assert_eq!(v.timestamps(), ts);
            assert_eq!(v.options().sack_perm.is_some(), sp);
        }
        let f = TcpFields::default();
        assert_eq!(
            write_tcp_frame(&mut [0u8; 10], &ep, &f, &[]),
            Err(BuildError::BufferTooShort { need: 54 })
        );
    }
}
