//! The buffer traits every layer above agrees on: the engine caches a [`SharedBuf`], the
//! [`crate::dataplane::Dataplane`] receives and builds [`FrameBuf`]s. The DPDK layer implements
//! both for its mbuf; `Vec<u8>` implements both for tests and simulations.
//!
//! They sit at the bottom of the core so that the DPDK layer depends on these two traits, not on
//! the engine that uses them.

/// A buffer the engine can keep a second handle of while the first is forwarded: an mbuf with
/// its reference count raised in the appliance, a copy in tests. Forwarding rewrites headers in
/// place; the cache only reads the payload, which nothing rewrites.
pub trait SharedBuf: AsRef<[u8]> + AsMut<[u8]> + Sized {
    /// Another handle to the same bytes.
    fn share(&self) -> Self;
}

impl SharedBuf for Vec<u8> {
    fn share(&self) -> Self {
        self.clone()
    }
}

/// What the receiving NIC found of a frame's TCP checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxChecksum {
    /// Not checked (no offload, or not TCP): the data plane checks it in software.
    Unknown,
    /// Checked and correct.
    Good,
    /// Checked and wrong.
    Bad,
}

/// A frame buffer the data plane receives, rewrites and builds segments into.
pub trait FrameBuf: SharedBuf {
    /// Sets the frame's length to `len` bytes (the contents of any new bytes are unspecified);
    /// false if the buffer cannot hold that many.
    fn set_len(&mut self, len: usize) -> bool;

    /// A hint that the cache line at `p` is about to be read (never faults, whatever `p` is).
    /// The default does nothing; the DPDK layer's mbuf issues a prefetch instruction.
    #[inline(always)]
    fn prefetch(p: *const u8) {
        let _ = p;
    }

    /// What the NIC found of the TCP checksum of a received frame (the default: unchecked).
    #[inline(always)]
    fn rx_checksum(&self) -> RxChecksum {
        RxChecksum::Unknown
    }
}

impl FrameBuf for Vec<u8> {
    fn set_len(&mut self, len: usize) -> bool {
        self.resize(len, 0);
        true
    }
}
