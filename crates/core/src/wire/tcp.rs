//! TCP options and in-place segment rewriting.
//!
//! //= rfc9293#section-3.1
//! //# Options may occupy space at the end of the TCP header and are a multiple of 8 bits in
//! //# length. ... there are two cases for the format of an option: a single octet of option-kind;
//! //# an octet of option-kind, an octet of option-length, and the actual option-data octets.

use super::checksum;
use super::{be32, SeqNumber, TcpMeta, ETH_LEN};

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WSCALE: u8 = 3;
const OPT_SACK_PERM: u8 = 4;
const OPT_SACK: u8 = 5;
const OPT_TS: u8 = 8;

/// Options whose lengths overrun the header, or known options with the wrong length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptionsError;

/// Where the options the proxy cares about sit, relative to the start of the options area.
/// Each offset points at the option's kind byte; lengths were checked by [`Self::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptionOffsets {
    /// MSS (kind 2, length 4).
    pub mss: Option<u8>,
    /// Window scale (kind 3, length 3).
    pub wscale: Option<u8>,
    /// SACK permitted (kind 4, length 2).
    pub sack_perm: Option<u8>,
    /// SACK blocks (kind 5, length 2 + 8n, n = 1..=4).
    pub sack: Option<u8>,
    /// Number of SACK blocks.
    pub sack_blocks: u8,
    /// Timestamps (kind 8, length 10).
    pub ts: Option<u8>,
}

impl TcpOptionOffsets {
    /// Parses an options area (at most 40 bytes). Unknown options are skipped by their length.
    ///
    /// # Errors
    /// An option's length byte is missing, below 2, overruns the area, or a known option has the
    /// wrong length.
    pub fn parse(opts: &[u8]) -> Result<TcpOptionOffsets, TcpOptionsError> {
        let mut o = TcpOptionOffsets::default();
        let mut i = 0usize;
        while i < opts.len() {
            let kind = opts[i];
            match kind {
                OPT_END => break,
                OPT_NOP => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
            let len = usize::from(*opts.get(i + 1).ok_or(TcpOptionsError)?);
            if len < 2 || i + len > opts.len() {
                return Err(TcpOptionsError);
            }
            let at = u8::try_from(i).map_err(|_| TcpOptionsError)?;
            let ok = match kind {
                OPT_MSS => {
                    o.mss = Some(at);
                    len == 4
                }
                OPT_WSCALE => {
                    o.wscale = Some(at);
                    len == 3
                }
                OPT_SACK_PERM => {
                    o.sack_perm = Some(at);
                    len == 2
                }
                OPT_SACK => {
                    o.sack = Some(at);
                    o.sack_blocks = u8::try_from((len - 2) / 8).unwrap_or(0);
                    len >= 10 && (len - 2) % 8 == 0
                }
                OPT_TS => {
                    o.ts = Some(at);
                    len == 10
                }
                _ => true,
            };
            if !ok {
                return Err(TcpOptionsError);
            }
            i += len;
        }
        Ok(o)
    }
}

/// A TCP/IPv4 frame being rewritten in place. Both checksums stay valid after every setter
/// (incremental updates, RFC 1624). Built from a buffer and the [`TcpMeta`] that
/// [`super::classify`] returned for it, which makes every offset used here in bounds.
#[derive(Debug)]
pub struct TcpSegmentMut<'a> {
    f: &'a mut [u8],
    l4: usize,
    opts: TcpOptionOffsets,
    opt_base: usize,
}

const IP: usize = ETH_LEN;
const IP_CSUM: usize = IP + 10;

impl<'a> TcpSegmentMut<'a> {
    /// Wraps a classified frame. Returns `None` if `meta` does not fit `f` (it always does when
    /// both come from one `classify` call).
    pub fn new(f: &'a mut [u8], meta: &TcpMeta) -> Option<TcpSegmentMut<'a>> {
        let end = meta.l4.checked_add(meta.tcp_hdr_len)?;
        if meta.l4 != IP + 20 || end > f.len() || meta.tcp_hdr_len < 20 {
            return None;
        }
        let opts = TcpOptionOffsets::parse(&f[meta.l4 + 20..end]).ok()?;
        Some(TcpSegmentMut {
            f,
            l4: meta.l4,
            opts,
            opt_base: meta.l4 + 20,
        })
    }

    /// The option offsets.
    pub fn options(&self) -> &TcpOptionOffsets {
        &self.opts
    }

    fn tcp_csum_at(&self) -> usize {
        self.l4 + 16
    }

    /// Writes `new` at `at` (anywhere in the TCP segment) and updates the TCP checksum over the
    /// even-aligned (relative to the TCP header) window that contains the change.
    fn write_tcp(&mut self, at: usize, new: &[u8]) {
        // Byte by byte: these are 1 to 8 bytes, a call to memcmp would cost more.
        if self.f[at..at + new.len()]
            .iter()
            .zip(new)
            .fold(true, |same, (a, b)| same & (a == b))
        {
            // Unchanged (an identity translation): nothing to write or to fold in.
            return;
        }
        let rel = at - self.l4;
        let c = self.tcp_csum_at();
        if rel % 2 == 0 && new.len() % 2 == 0 {
            // Aligned words: fold old and new straight into the checksum.
            let hc = u16::from_be_bytes([self.f[c], self.f[c + 1]]);
            let nc = checksum::update_bytes(hc, &self.f[at..at + new.len()], new);
            self.f[at..at + new.len()].copy_from_slice(new);
            self.f[c..c + 2].copy_from_slice(&nc.to_be_bytes());
            return;
        }
        let start = self.l4 + (rel & !1);
        let end = self.l4 + ((rel + new.len() + 1) & !1);
        let mut old = [0u8; 48];
        let w = end - start;
        old[..w].copy_from_slice(&self.f[start..end]);
        self.f[at..at + new.len()].copy_from_slice(new);
        let hc = u16::from_be_bytes([self.f[c], self.f[c + 1]]);
        let nc = checksum::update_bytes(hc, &old[..w], &self.f[start..end]);
        self.f[c..c + 2].copy_from_slice(&nc.to_be_bytes());
    }

    fn write_ip_addr(&mut self, at: usize, new: [u8; 4]) {
        let old = be32(self.f, at);
        let newv = u32::from_be_bytes(new);
        self.f[at..at + 4].copy_from_slice(&new);
        let hc = u16::from_be_bytes([self.f[IP_CSUM], self.f[IP_CSUM + 1]]);
        self.f[IP_CSUM..IP_CSUM + 2]
            .copy_from_slice(&checksum::update32(hc, old, newv).to_be_bytes());
        // The address is part of the TCP pseudo-header too.
        let c = self.tcp_csum_at();
        let hc = u16::from_be_bytes([self.f[c], self.f[c + 1]]);
        self.f[c..c + 2].copy_from_slice(&checksum::update32(hc, old, newv).to_be_bytes());
    }

    /// Rewrites the 4-tuple (addresses and ports) with one incremental update of each checksum
    /// (the NAT's per-packet rewrite; equivalent to the four setters).
    #[inline]
    pub fn set_tuple(&mut self, src: u32, dst: u32, sport: u16, dport: u16) {
        let (os, od) = (be32(self.f, IP + 12), be32(self.f, IP + 16));
        let l4 = self.l4;
        let ports = be32(self.f, l4);
        let addrs = checksum::delta32(os, src) + checksum::delta32(od, dst);
        let tcp = addrs + checksum::delta32(ports, (u32::from(sport) << 16) | u32::from(dport));
        self.f[IP + 12..IP + 16].copy_from_slice(&src.to_be_bytes());
        self.f[IP + 16..IP + 20].copy_from_slice(&dst.to_be_bytes());
        self.f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        self.f[l4 + 2..l4 + 4].copy_from_slice(&dport.to_be_bytes());
        let hc = u16::from_be_bytes([self.f[IP_CSUM], self.f[IP_CSUM + 1]]);
        self.f[IP_CSUM..IP_CSUM + 2]
            .copy_from_slice(&checksum::apply_delta(hc, addrs).to_be_bytes());
        let c = self.tcp_csum_at();
        let hc = u16::from_be_bytes([self.f[c], self.f[c + 1]]);
        self.f[c..c + 2].copy_from_slice(&checksum::apply_delta(hc, tcp).to_be_bytes());
    }

    /// Sets the source IPv4 address.
    pub fn set_src_addr(&mut self, a: [u8; 4]) {
        self.write_ip_addr(IP + 12, a);
    }

    /// Sets the destination IPv4 address.
    pub fn set_dst_addr(&mut self, a: [u8; 4]) {
        self.write_ip_addr(IP + 16, a);
    }

    /// Sets the source port.
    pub fn set_src_port(&mut self, p: u16) {
        self.write_tcp(self.l4, &p.to_be_bytes());
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        self.write_tcp(self.l4 + 2, &p.to_be_bytes());
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, s: SeqNumber) {
        self.write_tcp(self.l4 + 4, &s.0.to_be_bytes());
    }

    /// Sets the acknowledgement number.
    pub fn set_ack(&mut self, s: SeqNumber) {
        self.write_tcp(self.l4 + 8, &s.0.to_be_bytes());
    }

    /// Sets the raw window field.
    pub fn set_window(&mut self, w: u16) {
        self.write_tcp(self.l4 + 14, &w.to_be_bytes());
    }

    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.write_tcp(self.l4 + 13, &[flags]);
    }

    /// The MSS option's value, if present.
    pub fn mss(&self) -> Option<u16> {
        let at = self.opt_base + usize::from(self.opts.mss?) + 2;
        Some(u16::from_be_bytes([self.f[at], self.f[at + 1]]))
    }

    /// Lowers the MSS option to `max` if it is larger. Returns whether it changed.
    pub fn clamp_mss(&mut self, max: u16) -> bool {
        match self.mss() {
            Some(m) if m > max => {
                let at = self.opt_base + usize::from(self.opts.mss.unwrap_or(0)) + 2;
                self.write_tcp(at, &max.to_be_bytes());
                true
            }
            _ => false,
        }
    }

    /// The window-scale option's shift, if present.
    pub fn wscale(&self) -> Option<u8> {
        Some(self.f[self.opt_base + usize::from(self.opts.wscale?) + 2])
    }

    /// The timestamps option (TSval, TSecr), if present.
    pub fn timestamps(&self) -> Option<(u32, u32)> {
        let at = self.opt_base + usize::from(self.opts.ts?) + 2;
        let v = u32::from_be_bytes([self.f[at], self.f[at + 1], self.f[at + 2], self.f[at + 3]]);
        let e = u32::from_be_bytes([
            self.f[at + 4],
            self.f[at + 5],
            self.f[at + 6],
            self.f[at + 7],
        ]);
        Some((v, e))
    }

    /// Rewrites the timestamps option. Returns `false` if the segment has none.
    pub fn set_timestamps(&mut self, tsval: u32, tsecr: u32) -> bool {
        let Some(o) = self.opts.ts else { return false };
        let at = self.opt_base + usize::from(o) + 2;
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&tsval.to_be_bytes());
        b[4..].copy_from_slice(&tsecr.to_be_bytes());
        self.write_tcp(at, &b);
        true
    }

    /// The SACK block `i` (left, right), if present.
    pub fn sack_block(&self, i: u8) -> Option<(SeqNumber, SeqNumber)> {
        if i >= self.opts.sack_blocks {
            return None;
        }
        let at = self.opt_base + usize::from(self.opts.sack?) + 2 + usize::from(i) * 8;
        let l = u32::from_be_bytes([self.f[at], self.f[at + 1], self.f[at + 2], self.f[at + 3]]);
        let r = u32::from_be_bytes([
            self.f[at + 4],
            self.f[at + 5],
            self.f[at + 6],
            self.f[at + 7],
        ]);
        Some((SeqNumber(l), SeqNumber(r)))
    }

    /// Rewrites SACK block `i`. Returns `false` if there is no such block.
    pub fn set_sack_block(&mut self, i: u8, left: SeqNumber, right: SeqNumber) -> bool {
        let Some(o) = self.opts.sack else {
            return false;
        };
        if i >= self.opts.sack_blocks {
            return false;
        }
        let at = self.opt_base + usize::from(o) + 2 + usize::from(i) * 8;
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&left.0.to_be_bytes());
        b[4..].copy_from_slice(&right.0.to_be_bytes());
        self.write_tcp(at, &b);
        true
    }

    /// Replaces the SACK option (all blocks) with NOPs, for a leg that did not negotiate SACK or
    /// when every block covers data the proxy replays itself.
    pub fn strip_sack(&mut self) -> bool {
        let Some(o) = self.opts.sack else {
            return false;
        };
        let at = self.opt_base + usize::from(o);
        let len = 2 + usize::from(self.opts.sack_blocks) * 8;
        let nops = [OPT_NOP; 34];
        self.write_tcp(at, &nops[..len]);
        self.opts.sack = None;
        self.opts.sack_blocks = 0;
        true
    }

    /// Replaces the timestamps option with NOPs.
    pub fn strip_timestamps(&mut self) -> bool {
        let Some(o) = self.opts.ts else { return false };
        let at = self.opt_base + usize::from(o);
        self.write_tcp(at, &[OPT_NOP; 10]);
        self.opts.ts = None;
        true
    }
}
