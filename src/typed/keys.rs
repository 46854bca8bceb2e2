//! Append-only bijections `T ↔ u32`.
//!
//! Used twice: every ingredient maps its keys to dense ids (so dependency
//! edges are 8 bytes: ingredient index + key id), and interned kinds map their
//! values to [`Id`](crate::Id)s. Both are shared by every view of a database
//! and only ever grow. Reads by id are lock-free; reads by value take a shard's
//! read lock (they are off the warm-hit path).

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use crate::engine::storage::KeyId;
use crate::util::{lock, read, write};

const FIRST_CHUNK: usize = 32;
const CHUNKS: usize = 28; // 32 * (2^28 - 1) > u32::MAX

/// A vector that only grows, with lock-free reads of published elements.
pub(crate) struct AppendVec<T> {
    chunks: [OnceLock<Box<[OnceLock<T>]>>; CHUNKS],
    len: AtomicUsize,
    push: Mutex<()>,
}

fn locate(index: usize) -> (usize, usize) {
    let i = index / FIRST_CHUNK + 1;
    let chunk = (usize::BITS - 1 - i.leading_zeros()) as usize;
    let start = FIRST_CHUNK * ((1usize << chunk) - 1);
    (chunk, index - start)
}

impl<T> AppendVec<T> {
    pub(crate) fn new() -> Self {
        AppendVec {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
            push: Mutex::new(()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len() {
            return None;
        }
        let (chunk, offset) = locate(index);
        self.chunks.get(chunk)?.get()?.get(offset)?.get()
    }

    /// Appends and returns the new element's index, or `None` when full.
    pub(crate) fn push(&self, value: T) -> Option<usize> {
        let _guard = lock(&self.push);
        let index = self.len.load(Ordering::Relaxed);
        let (chunk, offset) = locate(index);
        let slots = self.chunks.get(chunk)?.get_or_init(|| {
            let size = FIRST_CHUNK << chunk;
            (0..size).map(|_| OnceLock::new()).collect()
        });
        slots.get(offset)?.set(value).ok()?;
        self.len.store(index + 1, Ordering::Release);
        Some(index)
    }
}

const SHARDS: usize = 16;

/// Estimated bytes a persistent map spends per entry beyond the entry
/// itself (HAMT nodes and their sparse arrays).
pub(crate) const MAP_OVERHEAD: usize = 24;
/// The counts in front of an `Arc`'s value.
pub(crate) const ARC_OVERHEAD: usize = 16;

/// Estimated bytes a [`KeyTable`] spends per key: the value twice (by id
/// and by value), the id, and the hash map's slot and control byte.
pub(crate) fn key_bytes<T>() -> usize {
    2 * std::mem::size_of::<T>() + 16
}

/// `T ↔ u32`, append-only, deduplicated by value.
pub(crate) struct KeyTable<T> {
    hasher: ahash::RandomState,
    shards: [RwLock<std::collections::HashMap<T, KeyId, ahash::RandomState>>; SHARDS],
    items: AppendVec<T>,
}

impl<T: Clone + Eq + Hash> KeyTable<T> {
    pub(crate) fn new() -> Self {
        KeyTable {
            hasher: ahash::RandomState::new(),
            shards: std::array::from_fn(|_| RwLock::new(Default::default())),
            items: AppendVec::new(),
        }
    }

    fn shard(&self, value: &T) -> &RwLock<std::collections::HashMap<T, KeyId, ahash::RandomState>> {
        let h = self.hasher.hash_one(value) as usize;
        &self.shards[h % SHARDS]
    }

    /// The id of `value`, if it was ever interned.
    pub(crate) fn get(&self, value: &T) -> Option<KeyId> {
        read(self.shard(value)).get(value).copied()
    }

    /// The id of `value`, interning it if new. `None` only if 2^32 ids are used.
    pub(crate) fn intern(&self, value: &T) -> Option<KeyId> {
        if let Some(id) = self.get(value) {
            return Some(id);
        }
        let shard = self.shard(value);
        let mut map = write(shard);
        if let Some(id) = map.get(value) {
            return Some(*id);
        }
        let id = KeyId::new(u32::try_from(self.items.push(value.clone())?).ok()?);
        map.insert(value.clone(), id);
        Some(id)
    }

    /// The ids of `values`, interning the new ones (a load's keys): every
    /// shard is locked once for the whole batch instead of three lock
    /// operations and three hashes per key. `None` only if 2^32 ids are used.
    pub(crate) fn intern_all(&self, values: &[T]) -> Option<Vec<KeyId>> {
        let mut shards: Vec<_> = self.shards.iter().map(write).collect();
        let spread = values.len() / SHARDS + 1;
        for shard in &mut shards {
            shard.reserve(spread);
        }
        let mut ids = Vec::with_capacity(values.len());
        for value in values {
            let h = self.hasher.hash_one(value) as usize;
            let map = &mut shards[h % SHARDS];
            let id = match map.get(value) {
                Some(id) => *id,
                None => {
                    let id = KeyId::new(u32::try_from(self.items.push(value.clone())?).ok()?);
                    map.insert(value.clone(), id);
                    id
                }
            };
            ids.push(id);
        }
        Some(ids)
    }

    /// Interns `value` at exactly `id` (restoring a persisted table, whose
    /// ids must stay stable). False if `id` is not the next free id.
    pub(crate) fn intern_at(&self, value: &T, id: KeyId) -> bool {
        let mut map = write(self.shard(value));
        if let Some(existing) = map.get(value) {
            return *existing == id;
        }
        if self.items.len() != id.as_usize() {
            return false;
        }
        match self.items.push(value.clone()) {
            Some(i) if i == id.as_usize() => {
                map.insert(value.clone(), id);
                true
            }
            _ => false,
        }
    }

    /// Number of values interned.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// `Debug` rendering of the value with id `id` (`#id` if unknown).
    pub(crate) fn debug(&self, id: KeyId) -> String
    where
        T: std::fmt::Debug,
    {
        match self.value(id) {
            Some(v) => crate::util::debug_string(v),
            None => format!("#{id}"),
        }
    }

    /// The value with id `id`.
    pub(crate) fn value(&self, id: KeyId) -> Option<&T> {
        self.items.get(id.as_usize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_covers_chunks_contiguously() {
        let mut expected = (0, 0);
        for i in 0..10_000 {
            let got = locate(i);
            if got.0 != expected.0 {
                assert_eq!(got, (expected.0 + 1, 0));
            } else {
                assert_eq!(got, expected);
            }
            expected = (got.0, got.1 + 1);
        }
    }

    #[test]
    fn interning_dedups_and_round_trips() {
        let t = KeyTable::new();
        let a = t.intern(&"a".to_string()).unwrap();
        let b = t.intern(&"b".to_string()).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.intern(&"a".to_string()), Some(a));
        assert_eq!(t.value(b).map(String::as_str), Some("b"));
        assert_eq!(t.value(KeyId::new(99)), None);
        for i in 0..5000u32 {
            let id = t.intern(&i.to_string()).unwrap();
            assert_eq!(t.value(id), Some(&i.to_string()));
        }
        // In bulk: known values keep their ids, new ones (and repeats in the
        // batch) get one id each.
        let batch: Vec<String> = ["a", "new", "7", "new"].map(String::from).to_vec();
        let ids = t.intern_all(&batch).unwrap();
        assert_eq!(ids[0], a);
        assert_eq!(ids[2], t.get(&"7".to_string()).unwrap());
        assert_eq!(ids[1], ids[3]);
        assert_eq!(t.value(ids[1]).map(String::as_str), Some("new"));
        assert_eq!(t.intern(&"new".to_string()), Some(ids[1]));
    }
}
