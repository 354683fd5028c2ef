//! Pass-through after a migration: the fixed translations between the server's sub-connection
//! (which still believes it talks to the old device) and the new device's sub-connection
//! (docs/migration.md step 5), applied in place to each forwarded segment.
//!
//! Sequence spaces:
//! - server -> device data: the proxy chose its ISN toward the new device so that
//!   `device_seq = server_seq + s2c` with a constant offset (0 when the ISN is the resume point
//!   minus one);
//! - device -> server data: `server_seq = device_seq + c2s`, where `c2s` maps the device's first
//!   byte onto the next byte the server expects from the client side.
//!
//! Windows: the server keeps the old device's window-scale factor for the life of the connection;
//! the device's window (its own scale) is re-encoded in that factor, clamped to 16 bits, and never
//! lets the right edge move left by rounding (RFC 7323 section 2.4). The device was offered the
//! server's own scale factor, so server windows pass unchanged.
//!
//! Timestamps: the server's TSvals pass unchanged (the device saw them from the proxy's SYN-ACK
//! on); the device's TSvals are shifted so that they continue the old device's clock
//! (`server_tsval = device_tsval + ts`), keeping PAWS (RFC 7323 section 5) satisfied at the
//! server, and the server's TSecr is shifted back for the device.
//!
//! SACK: blocks are translated; blocks for ranges the proxy replayed itself are dropped (the
//! server would take them for D-SACK and undo), and the option is stripped toward a leg that did
//! not negotiate SACK.

use crate::wire::{SeqNumber, TcpSegmentMut};

/// Translations of one spliced flow.
#[derive(Debug, Clone, Copy)]
pub struct Splice {
    /// `device_seq = server_seq + s2c` for server -> device data.
    pub s2c: u32,
    /// `server_seq = device_seq + c2s` for device -> server data.
    pub c2s: u32,
    /// Window-scale shift the server uses for windows it receives (the old device's).
    pub server_rcv_wscale: u8,
    /// Window-scale shift of the device's windows.
    pub device_wscale: u8,
    /// `server_tsval = device_tsval + ts`, when both legs use timestamps.
    pub ts: Option<u32>,
    /// SACK negotiated on the server's leg.
    pub server_sack: bool,
    /// SACK negotiated on the device's leg.
    pub device_sack: bool,
    /// Everything below this server sequence number was replayed by the proxy.
    pub replayed_end: SeqNumber,
    /// The highest right edge (server space) advertised to the server so far.
    pub edge: SeqNumber,
    /// The server was told everything below this is acknowledged (server space): a device
    /// segment sent before the splice and arriving after it carries an older ACK, which must not
    /// reach the server (an ACK below SND.UNA; some stacks drop the whole segment, data
    /// included).
    pub ack_floor: SeqNumber,
}

impl Splice {
    /// The raw window field for the server for a device window of `raw` (device scale), given
    /// the acknowledgement number (server space) it goes with. Updates the remembered edge.
    pub fn window_to_server(&mut self, ack: SeqNumber, raw: u16) -> u16 {
        let bytes = u64::from(raw) << self.device_wscale;
        let shift = self.server_rcv_wscale;
        let mut enc = (bytes >> shift).min(0xffff);
        // Rounding down must not pull the edge left of what was already advertised.
        let edge_now = ack + u32::try_from(enc << shift).unwrap_or(u32::MAX);
        if edge_now.diff(self.edge) < 0 {
            let need = u64::from(self.edge.diff(ack).unsigned_abs());
            enc = need.div_ceil(1u64 << shift).min(0xffff);
        }
        let enc = u16::try_from(enc).unwrap_or(u16::MAX);
        let edge = ack + (u32::from(enc) << shift);
        self.edge = self.edge.max_seq(edge);
        enc
    }

    /// Rewrites a segment from the device toward the server (addresses and ports are the NAT's
    /// business): sequence, acknowledgement, window, timestamps, SACK.
    pub fn device_to_server(
        &mut self,
        s: &mut TcpSegmentMut<'_>,
        seq: SeqNumber,
        ack: SeqNumber,
        window: u16,
    ) {
        let srv_ack = (ack - self.s2c).max_seq(self.ack_floor);
        s.set_seq(seq + self.c2s);
        s.set_ack(srv_ack);
        let w = self.window_to_server(srv_ack, window);
        s.set_window(w);
        if let (Some(off), Some((v, e))) = (self.ts, s.timestamps()) {
            s.set_timestamps(v.wrapping_add(off), e);
        }
        if !self.server_sack {
            s.strip_sack();
            return;
        }
        let mut keep = false;
        for i in 0..4 {
            let Some((l, r)) = s.sack_block(i) else { break };
            let (l, r) = (l - self.s2c, r - self.s2c);
            if l.diff(self.replayed_end) < 0 {
                continue;
            }
            keep = true;
            s.set_sack_block(i, l, r);
        }
        if !keep {
            s.strip_sack();
        }
    }

    /// Rewrites a segment from the server toward the device.
    pub fn server_to_device(&self, s: &mut TcpSegmentMut<'_>, seq: SeqNumber, ack: SeqNumber) {
        s.set_seq(seq + self.s2c);
        s.set_ack(ack - self.c2s);
        if let (Some(off), Some((v, e))) = (self.ts, s.timestamps()) {
            s.set_timestamps(v, e.wrapping_sub(off));
        }
        if !self.device_sack {
            s.strip_sack();
            return;
        }
        for i in 0..4 {
            let Some((l, r)) = s.sack_block(i) else { break };
            s.set_sack_block(i, l - self.c2s, r - self.c2s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{checksum, classify, tcp_checksum_ok, Frame, TcpMeta};

    /// A TCP frame with timestamps and one SACK block.
    fn frame(seq: u32, ack: u32, win: u16, ts: (u32, u32), sack: Option<(u32, u32)>) -> Vec<u8> {
        let mut opts = vec![1, 1, 8, 10];
        opts.extend(ts.0.to_be_bytes());
        opts.extend(ts.1.to_be_bytes());
        if let Some((l, r)) = sack {
            opts.extend([1, 1, 5, 10]);
            opts.extend(l.to_be_bytes());
            opts.extend(r.to_be_bytes());
        }
        let tcp_len = 20 + opts.len();
        let mut f = vec![0u8; 34 + tcp_len];
        f[12..14].copy_from_slice(&[8, 0]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[198, 18, 0, 1]);
        f[30..34].copy_from_slice(&[198, 19, 0, 2]);
        let c = checksum::finish(checksum::sum(0, &f[14..34]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[42..46].copy_from_slice(&ack.to_be_bytes());
        f[46] = ((tcp_len / 4) << 4) as u8;
        f[47] = 0x10;
        f[48..50].copy_from_slice(&win.to_be_bytes());
        f[54..54 + opts.len()].copy_from_slice(&opts);
        let acc = checksum::pseudo_ipv4([198, 18, 0, 1], [198, 19, 0, 2], 6, tcp_len as u16);
        let c = checksum::finish(checksum::sum(acc, &f[34..]));
        f[50..52].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn splice() -> Splice {
        Splice {
            s2c: 0,
            c2s: 1_000_000u32.wrapping_sub(5),
            server_rcv_wscale: 7,
            device_wscale: 2,
            ts: Some(40_000u32.wrapping_sub(900)),
            server_sack: true,
            device_sack: true,
            replayed_end: SeqNumber(50_000),
            edge: SeqNumber(50_000),
            ack_floor: SeqNumber(50_000),
        }
    }

    fn apply(f: &mut [u8], dir_to_server: bool, sp: &mut Splice) {
        let m = meta(f);
        let mut s = TcpSegmentMut::new(f, &m).unwrap();
        if dir_to_server {
            sp.device_to_server(&mut s, m.seq, m.ack, m.window);
        } else {
            sp.server_to_device(&mut s, m.seq, m.ack);
        }
        assert!(tcp_checksum_ok(f, &meta(f)), "checksums stay valid");
    }

    fn meta(f: &[u8]) -> TcpMeta {
        let Ok(Frame::Tcp(m)) = classify(f) else {
            panic!("not a TCP frame")
        };
        m
    }

    fn view(f: &mut [u8]) -> TcpSegmentMut<'_> {
        let m = meta(f);
        TcpSegmentMut::new(f, &m).unwrap()
    }

    fn fields(f: &[u8]) -> (u32, u32, u16) {
        let m = meta(f);
        (m.seq.0, m.ack.0, m.window)
    }

    #[test]
    fn device_segment_is_translated_for_the_server() {
        let mut sp = splice();
        // Device: seq 5 (its ISN + 1), acks server byte 60_000, window 40_000 >> 2, TSval 900.
        let mut f = frame(5, 60_000, 10_000, (900, 77), Some((61_000, 62_000)));
        apply(&mut f, true, &mut sp);
        let (seq, ack, win) = fields(&f);
        assert_eq!(
            seq, 1_000_000,
            "device byte 5 is the byte the server expects next"
        );
        assert_eq!(ack, 60_000);
        assert_eq!(
            win, 312,
            "40_000 bytes in the server's scale 7, rounded down: the old edge is behind"
        );
        // Had 100_000 already been advertised as the edge, rounding down would pull it left.
        let mut sp2 = Splice {
            edge: SeqNumber(100_000),
            ..splice()
        };
        assert_eq!(sp2.window_to_server(SeqNumber(60_000), 10_000), 313);
        let s = view(&mut f);
        assert_eq!(
            s.timestamps(),
            Some((40_000, 77)),
            "TSval continues the old device's clock"
        );
        assert_eq!(
            s.sack_block(0),
            Some((SeqNumber(61_000), SeqNumber(62_000)))
        );
    }

    #[test]
    fn window_edge_never_moves_left_by_rounding() {
        let mut sp = splice();
        let mut last_edge = sp.edge;
        let mut ack = SeqNumber(50_000);
        // Windows that do not divide by 128 and an ACK that advances by odd amounts.
        for i in 0..1000u32 {
            ack += (i * 37) % 1500;
            let raw = u16::try_from(1000 + (i * 7919) % 20_000).unwrap();
            let enc = sp.window_to_server(ack, raw);
            let edge = ack + (u32::from(enc) << 7);
            assert!(edge.diff(last_edge) >= 0, "edge moved left at step {i}");
            // Never more than one scale unit beyond what the device offered, unless the old edge
            // required it.
            let offered = ack + (u32::from(raw) << 2);
            assert!(
                edge.diff(offered) < 128
                    || edge == last_edge.max_seq(edge) && edge.diff(last_edge) < 128
            );
            last_edge = edge;
        }
    }

    #[test]
    fn sack_for_replayed_ranges_is_dropped_and_stripped_for_a_leg_without_sack() {
        let mut sp = splice();
        let mut f = frame(5, 49_000, 1000, (900, 77), Some((49_500, 49_800)));
        apply(&mut f, true, &mut sp);
        let s = view(&mut f);
        assert_eq!(
            s.sack_block(0),
            None,
            "a block inside the replayed range is not forwarded"
        );
        let mut sp = Splice {
            server_sack: false,
            ..splice()
        };
        let mut f = frame(5, 60_000, 1000, (900, 77), Some((61_000, 62_000)));
        apply(&mut f, true, &mut sp);
        let s = view(&mut f);
        assert_eq!(s.sack_block(0), None);
    }

    #[test]
    fn server_segment_is_translated_for_the_device() {
        let mut sp = splice();
        // Server: its byte 60_000, acks client byte 1_000_010, echoes the translated TSval.
        let mut f = frame(
            60_000,
            1_000_010,
            500,
            (123_456, 40_100),
            Some((1_000_020, 1_000_030)),
        );
        apply(&mut f, false, &mut sp);
        let (seq, ack, win) = fields(&f);
        assert_eq!(
            (seq, ack, win),
            (60_000, 15, 500),
            "server windows pass unchanged"
        );
        let s = view(&mut f);
        assert_eq!(
            s.timestamps(),
            Some((123_456, 1000)),
            "TSecr back in the device's clock"
        );
        assert_eq!(s.sack_block(0), Some((SeqNumber(25), SeqNumber(35))));
    }
}
