//! Fixed-size chunks of records, found by index, whose fresh memory is
//! touched by a background thread before the store needs it.
//!
//! The memory store keeps its tasks and its execution records in slabs.
//! Writing a record to memory the process has never touched makes the
//! kernel back that page first (zeroing it; on a VM whose host has
//! reclaimed the guest's free memory, likely more). Done under the store's
//! lock, that cost lands on claims and creations: profiles of the slow
//! claim batches at 100,000 fires a second showed half their samples
//! there, and a profile of a million creations on a VM that had been idle,
//! a third (`benches/README.md`).
//!
//! So, once the first chunk is full, a background thread allocates each
//! next chunk and writes every page of it, keeping up to [`SPARE`] ready.
//! A slab that fills a chunk takes a ready one from the thread's channel
//! (which may wake the thread); if none is ready (the thread is behind, or
//! could not be started) it allocates an untouched one itself. The thread
//! ends when the slab is dropped.
//!
//! Slots of removed records are reused, and chunks are never returned to
//! the allocator while the slab lives.

use std::sync::mpsc::{Receiver, sync_channel};

/// Records a chunk holds.
pub(crate) const CHUNK: usize = 8192;

/// Chunks the background thread keeps ready (plus the one it holds while
/// the channel is full).
pub(crate) const SPARE: usize = 4;

/// Where a record lives in a [`Slab`].
pub(crate) type Slot = u32;

/// A record type with a value for slots that hold no record, which is also
/// what the background thread writes over a fresh chunk.
pub(crate) trait Vacant: Send + 'static {
    fn vacant() -> Self;
}

impl<T: Send + 'static> Vacant for Option<T> {
    fn vacant() -> Self {
        None
    }
}

#[derive(Debug)]
pub(crate) struct Slab<T> {
    /// Each of at most [`CHUNK`] records; only the last one has room.
    chunks: Vec<Vec<T>>,
    /// Slots whose record was removed.
    free: Vec<Slot>,
    prefault: Prefault<T>,
    /// The background thread's name.
    thread: &'static str,
}

#[derive(Debug)]
enum Prefault<T> {
    /// The first chunk is still filling.
    NotNeeded,
    /// Ready chunks come from the background thread.
    Running(Receiver<Vec<T>>),
    /// The thread could not be started: chunks are allocated in place.
    Unavailable,
}

impl<T: Vacant> Slab<T> {
    /// An empty slab whose background thread, once started, is called
    /// `thread`.
    pub(crate) fn new(thread: &'static str) -> Self {
        Self {
            chunks: Vec::new(),
            free: Vec::new(),
            prefault: Prefault::NotNeeded,
            thread,
        }
    }

    /// Stores `record` and returns its slot.
    pub(crate) fn insert(&mut self, record: T) -> Slot {
        if let Some(slot) = self.free.pop() {
            *self.get_mut(slot) = record;
            return slot;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            let chunk = self.next_chunk();
            self.chunks.push(chunk);
        }
        let n = self.chunks.len() - 1;
        let last = &mut self.chunks[n];
        last.push(record);
        slot_of(n * CHUNK + last.len() - 1)
    }

    pub(crate) fn get(&self, slot: Slot) -> &T {
        let i = slot as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    pub(crate) fn get_mut(&mut self, slot: Slot) -> &mut T {
        let i = slot as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Takes the record out of `slot` and frees the slot for reuse.
    pub(crate) fn remove(&mut self, slot: Slot) -> T {
        let record = std::mem::replace(self.get_mut(slot), T::vacant());
        self.free.push(slot);
        record
    }

    /// An empty chunk with room for [`CHUNK`] records: a ready one from the
    /// background thread when there is one.
    fn next_chunk(&mut self) -> Vec<T> {
        match &self.prefault {
            Prefault::NotNeeded if self.chunks.is_empty() => {
                // Grows as it fills: a small store never holds a whole chunk.
                return Vec::new();
            }
            Prefault::NotNeeded => {
                self.prefault = start_prefaulting(self.thread);
            }
            Prefault::Running(_) | Prefault::Unavailable => {}
        }
        if let Prefault::Running(ready) = &self.prefault
            && let Ok(chunk) = ready.try_recv()
        {
            return chunk;
        }
        Vec::with_capacity(CHUNK)
    }

    #[cfg(test)]
    pub(crate) fn chunk_capacities(&self) -> Vec<usize> {
        self.chunks.iter().map(Vec::capacity).collect()
    }
}

fn slot_of(index: usize) -> Slot {
    // 2^32 records would be hundreds of gigabytes.
    Slot::try_from(index).expect("fewer than 2^32 records in a memory store's slab")
}

/// Starts the thread that prepares chunks; it stops when the slab (the
/// receiver) is dropped.
fn start_prefaulting<T: Vacant>(name: &str) -> Prefault<T> {
    let (ready, receiver) = sync_channel(SPARE);
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || while ready.send(touched_chunk::<T>()).is_ok() {});
    match spawned {
        Ok(_) => Prefault::Running(receiver),
        Err(_) => Prefault::Unavailable,
    }
}

/// An empty chunk whose memory has been written, so the kernel has already
/// backed every page of it.
fn touched_chunk<T: Vacant>() -> Vec<T> {
    let mut chunk = Vec::with_capacity(CHUNK);
    chunk.resize_with(CHUNK, T::vacant);
    std::hint::black_box(&mut chunk);
    chunk.clear();
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_freed_slots_and_fills_chunks_across_the_prefaulter() {
        let mut slab: Slab<Option<u64>> = Slab::new("tickwheel-test-slab");
        let slots: Vec<Slot> = (0..CHUNK as u64 * 3 + 5)
            .map(|n| slab.insert(Some(n)))
            .collect();
        assert_eq!(slab.chunk_capacities(), vec![CHUNK; 4]);
        assert!(
            matches!(slab.prefault, Prefault::Running(_)),
            "chunks after the first come from the background thread"
        );
        for (n, slot) in slots.iter().enumerate() {
            assert_eq!(*slab.get(*slot), Some(n as u64));
        }
        assert_eq!(slab.remove(slots[10]), Some(10));
        assert_eq!(
            *slab.get(slots[10]),
            None,
            "a removed record's slot is vacant"
        );
        let again = slab.insert(Some(99_999));
        assert_eq!(again, slots[10], "a freed slot is used first");
        assert_eq!(*slab.get(again), Some(99_999));
        assert_eq!(slab.chunk_capacities().len(), 4);
    }
}
