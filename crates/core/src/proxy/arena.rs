//! Per-slot storage allocated in chunks: the migration engines of a worker's flows, by flow
//! slot.
//!
//! Invariants:
//! - slot `i` lives in chunk `i / CHUNK` at `i % CHUNK`; a chunk is allocated (and written,
//!   so resident, on huge pages where the platform grants them) when a slot in it is first
//!   filled, and kept: the memory follows the peak of live flows, bounded by the table's
//!   capacity, and is counted ([`Arena::memory_bytes`]);
//! - flow slots are handed out lowest first, so live flows fill the first chunks;
//! - lookups are two indexations, no hashing; the cost of a chunk allocation (one 2 MiB-scale
//!   region) is paid once per `CHUNK` slots.

use super::index::{prefaulted, Advise};

/// Slots per chunk.
pub const CHUNK: usize = 4096;

/// The chunked slot storage.
#[derive(Debug)]
pub struct Arena<T> {
    chunks: Vec<Option<Vec<Option<T>>>>,
    capacity: usize,
    advise: Option<Advise>,
}

impl<T> Arena<T> {
    /// Room for `capacity` slots, none allocated yet.
    pub fn new(capacity: usize, advise: Option<Advise>) -> Arena<T> {
        Arena {
            chunks: (0..capacity.div_ceil(CHUNK)).map(|_| None).collect(),
            capacity,
            advise,
        }
    }

    /// The slot, if its chunk exists.
    #[inline(always)]
    pub fn get(&self, i: usize) -> Option<&Option<T>> {
        self.chunks.get(i / CHUNK)?.as_ref()?.get(i % CHUNK)
    }

    /// The slot, mutably, if its chunk exists.
    #[inline(always)]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Option<T>> {
        self.chunks.get_mut(i / CHUNK)?.as_mut()?.get_mut(i % CHUNK)
    }

    /// The slot, allocating its chunk if needed; `None` beyond the capacity.
    pub fn slot(&mut self, i: usize) -> Option<&mut Option<T>> {
        if i >= self.capacity {
            return None;
        }
        let advise = self.advise;
        let chunk = self
            .chunks
            .get_mut(i / CHUNK)?
            .get_or_insert_with(|| prefaulted(CHUNK, || None, advise));
        chunk.get_mut(i % CHUNK)
    }

    /// Bytes held: the chunks allocated so far and the chunk directory.
    pub fn memory_bytes(&self) -> usize {
        let n = self.chunks.iter().filter(|c| c.is_some()).count();
        n * CHUNK * std::mem::size_of::<Option<T>>()
            + self.chunks.capacity() * std::mem::size_of::<Option<Vec<Option<T>>>>()
    }

    /// Chunk directory bytes (allocated up front, whatever the load).
    pub fn directory_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Option<Vec<Option<T>>>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_allocate_their_chunk_once_and_stay_bounded() {
        let mut a: Arena<u64> = Arena::new(3 * CHUNK + 5, None);
        assert!(a.get(0).is_none());
        assert_eq!(a.memory_bytes(), a.directory_bytes());
        *a.slot(7).unwrap() = Some(70);
        *a.slot(CHUNK + 1).unwrap() = Some(71);
        assert_eq!(a.get(7), Some(&Some(70)));
        assert_eq!(a.get(8), Some(&None));
        assert!(a.get(2 * CHUNK).is_none(), "chunk 2 not allocated");
        assert_eq!(
            a.memory_bytes() - a.directory_bytes(),
            2 * CHUNK * std::mem::size_of::<Option<u64>>()
        );
        assert!(a.slot(3 * CHUNK + 5).is_none(), "beyond capacity");
        assert!(a.slot(3 * CHUNK + 4).is_some());
        if let Some(s) = a.get_mut(7) {
            *s = None;
        }
        assert_eq!(a.get(7), Some(&None));
    }
}
