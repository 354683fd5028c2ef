//! What the engine originates, for the driver to build and send.

use super::*;

impl<B: SharedBuf> Engine<B> {
    /// The next segment the proxy originates, if any.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Emit> {
        if let Some(e) = self.out.pop_front() {
            return Some(e);
        }
        let State::Resuming(r) = &mut self.state else {
            return None;
        };
        if !r.established {
            return None;
        }
        let t = r.sender.poll_transmit(now)?;
        let leg = r.leg.unwrap_or(self.dev);
        let ack = device_ack(self.srv.c_una, &leg, &r.caches.c2s);
        let mut flags = TcpFlags::ACK;
        if t.len > 0 {
            flags |= TcpFlags::PSH;
        }
        if t.fin {
            flags |= TcpFlags::FIN;
        }
        let fields = TcpFields {
            seq: t.seq + leg.sp.s2c,
            ack,
            flags,
            window: self.window_to_device(&leg),
            ts: self.device_ts(&leg),
            ..TcpFields::default()
        };
        self.stats.emitted += 1;
        Some(Emit {
            to: Leg::Device(leg.gen),
            fields,
            payload_seq: t.seq,
            payload_len: t.len,
        })
    }

    /// The payload of `e`, as slices of cached buffers, in order.
    pub fn payload(&self, e: &Emit) -> impl Iterator<Item = &[u8]> + '_ {
        let (seq, len) = (e.payload_seq, e.payload_len);
        let cache = match (&self.state, e.to) {
            (State::Paused(p), Leg::Server) => Some(&p.caches.c2s),
            (State::Resuming(r), Leg::Server) => Some(&r.caches.c2s),
            (State::Resuming(r), Leg::Device(_)) => Some(&r.caches.s2c),
            _ => None,
        };
        cache
            .into_iter()
            .flat_map(move |c| c.runs_from(seq, len))
            .map(|(_, b)| b)
    }
}
