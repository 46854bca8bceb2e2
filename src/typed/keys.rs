//! Bijections between values and small ids, shared by every view of a
//! database.
//!
//! - [`KeyIds`]: every input and query kind maps its keys to dense
//!   [`KeyId`]s (slot + generation), so dependency edges are 12 bytes
//!   (ingredient index + key id). The ids of keys that garbage collection
//!   removed are reclaimed and their slots reused under a new generation
//!   (issue 11: a churning dev server holds steady).
//! - [`KeyTable`]: interned kinds map their values to [`Id`](crate::Id)s,
//!   append-only. An interned id is a user-visible handle that may be held
//!   anywhere (in a value, a key, a file), so it is never reclaimed. Reads
//!   by id are lock-free.
//!
//! Reads by value take a shard's read lock (they are off the warm-hit path).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use crate::engine::epoch::{Epoch, EpochWatch};
use crate::engine::storage::{DepHash, KeyId};
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

/// Estimated bytes of a persistent map (`engine::storage::Map`, an `imbl`
/// HAMT) of `len` entries of type `(K, V)`, entries included.
///
/// imbl 7 (branching 32) keeps up to 32 entries in one leaf node and splits
/// a fuller one into a branch node of 32 children; a leaf's slot array is
/// allocated whole whatever its fill (16 slots, or 32 past 16 entries), and
/// a lone entry lives in its parent's slot. With uniform hashes the leaves
/// sit at the first depth `d` where `λ = len / 32^d ≤ 32`, a leaf's fill
/// is Poisson(λ), so `32^d · P(fill ≥ 2)` leaves exist. Node sizes are the
/// ones measured (`benches/README.md`, "Memory per memo"): a leaf is
/// `16 · slot + 48` B (`32 · slot + 48` past 16 entries), a branch
/// `32 · slot + 24`, with `slot` = the entry and its 32-bit hash. Per entry
/// that is ~1.9 slots at 10 000 entries and ~5 at 100 000 (the leaves at
/// depth 3 then hold ~3 entries of 16). Within 2 % of the heap counted by
/// `compare/`'s memory bin for the small query's kind.
pub(crate) fn map_bytes<K, V>(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let slot = std::mem::size_of::<((K, V), u32)>() as f64;
    let n = len as f64;
    let (mut prefixes, mut branches) = (1.0f64, 0.0f64);
    while n / prefixes > 32.0 {
        branches += prefixes;
        prefixes *= 32.0;
    }
    let lambda = n / prefixes;
    let leaf = if lambda > 16.0 { 32.0 } else { 16.0 } * slot + 48.0;
    let leaves = if branches == 0.0 {
        1.0
    } else {
        prefixes * (1.0 - (-lambda).exp() * (1.0 + lambda))
    };
    (leaves * leaf + branches * (32.0 * slot + 24.0)) as usize
}

/// The counts in front of an `Arc`'s value.
pub(crate) const ARC_OVERHEAD: usize = 16;

type Shard<T, I> = RwLock<HashMap<T, I, ahash::RandomState>>;

/// `T → I`, sharded by the value's hash.
struct Shards<T, I> {
    hasher: ahash::RandomState,
    shards: [Shard<T, I>; SHARDS],
}

impl<T: Eq + Hash, I> Shards<T, I> {
    fn new() -> Self {
        Shards {
            hasher: ahash::RandomState::new(),
            shards: std::array::from_fn(|_| RwLock::new(Default::default())),
        }
    }

    fn index(&self, value: &T) -> usize {
        self.hasher.hash_one(value) as usize % SHARDS
    }

    fn shard(&self, value: &T) -> &Shard<T, I> {
        &self.shards[self.index(value)]
    }

    /// The id of `value`, if it has one, after `f` of it ran under the
    /// shard's read lock (so before any change to the shard that follows).
    fn get_then(&self, value: &T, f: impl FnOnce(I)) -> Option<I>
    where
        I: Copy,
    {
        let map = read(self.shard(value));
        let id = map.get(value).copied()?;
        f(id);
        Some(id)
    }

    /// The id of `value`, or the one `new` makes for it (under the shard's
    /// write lock, so two callers never make two).
    fn get_or_insert(
        &self,
        value: &T,
        found: impl Fn(I),
        new: impl FnOnce() -> Option<I>,
    ) -> Option<I>
    where
        T: Clone,
        I: Copy,
    {
        if let Some(id) = self.get_then(value, &found) {
            return Some(id);
        }
        let mut map = write(self.shard(value));
        if let Some(id) = map.get(value) {
            found(*id);
            return Some(*id);
        }
        let id = new()?;
        map.insert(value.clone(), id);
        Some(id)
    }
}

/// `T ↔ KeyId` (generation 0), append-only, deduplicated by value
/// (interned kinds).
pub(crate) struct KeyTable<T> {
    ids: Shards<T, KeyId>,
    items: AppendVec<T>,
}

impl<T: Clone + Eq + Hash> KeyTable<T> {
    pub(crate) fn new() -> Self {
        KeyTable {
            ids: Shards::new(),
            items: AppendVec::new(),
        }
    }

    /// The id of `value`, interning it if new. `None` only if 2^32 ids are used.
    pub(crate) fn intern(&self, value: &T) -> Option<KeyId> {
        self.ids.get_or_insert(
            value,
            |_| {},
            || {
                Some(KeyId::new(
                    u32::try_from(self.items.push(value.clone())?).ok()?,
                ))
            },
        )
    }

    /// Interns `value` at exactly `id` (restoring a persisted table, whose
    /// ids must stay stable). False if `id` is not the next free id.
    pub(crate) fn intern_at(&self, value: &T, id: KeyId) -> bool {
        let mut map = write(self.ids.shard(value));
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

/// Chunks of [`SlotVec`]: groups of `GROUP` chunks of the same size, the
/// size doubling from one group to the next, so at most 1/`GROUP` of the
/// slots allocated is unused (doubling every chunk wastes up to half).
const GROUP: usize = 4;
const SLOT_CHUNKS: usize = 104; // 4 * 32 * (2^26 - 1) > u32::MAX

fn locate_grouped(index: usize) -> (usize, usize) {
    let q = index / (GROUP * FIRST_CHUNK) + 1;
    let group = (usize::BITS - 1 - q.leading_zeros()) as usize;
    let offset = index - GROUP * FIRST_CHUNK * ((1usize << group) - 1);
    let shift = FIRST_CHUNK.trailing_zeros() as usize + group;
    (
        group * GROUP + (offset >> shift),
        offset & ((1usize << shift) - 1),
    )
}

/// The slots of a [`KeyIds`]: allocated a chunk at a time (every slot of a
/// chunk starts free), with lock-free reads of those handed out.
struct SlotVec<T> {
    chunks: [OnceLock<Box<[Slot<T>]>>; SLOT_CHUNKS],
    len: AtomicUsize,
    push: Mutex<()>,
}

impl<T> SlotVec<T> {
    fn new() -> Self {
        SlotVec {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
            push: Mutex::new(()),
        }
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    #[inline]
    fn get(&self, index: usize) -> Option<&Slot<T>> {
        if index >= self.len() {
            return None;
        }
        let (chunk, offset) = locate_grouped(index);
        self.chunks.get(chunk)?.get()?.get(offset)
    }

    fn allocated_bytes(&self) -> usize {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.get().is_some())
            .map(|(i, _)| (FIRST_CHUNK << (i / GROUP)) * std::mem::size_of::<Slot<T>>())
            .sum()
    }

    /// A new slot holding `value` (live, touched, generation 0), or `None`
    /// when 2^32 are in use.
    fn push(&self, value: T) -> Option<u32> {
        let _guard = lock(&self.push);
        let index = self.len.load(Ordering::Relaxed);
        let id = u32::try_from(index).ok()?;
        let (chunk, offset) = locate_grouped(index);
        let slot = self
            .chunks
            .get(chunk)?
            .get_or_init(|| {
                (0..FIRST_CHUNK << (chunk / GROUP))
                    .map(|_| Slot::free())
                    .collect()
            })
            .get(offset)?;
        *write(&slot.key) = Some(value);
        slot.meta.store(LIVE | TOUCHED, Ordering::Release);
        self.len.store(index + 1, Ordering::Release);
        Some(id)
    }
}

/// [`Slot::meta`]: the generation (low 32 bits), the state, and the
/// touched flag.
const GENERATION: u64 = u32::MAX as u64;
const STATE: u64 = 3 << 32;
/// Unused; reusable if on the free list.
const FREE: u64 = 0;
/// The id of a key of the database.
const LIVE: u64 = 1 << 32;
/// Retired by a collection in an epoch (in [`KeyIds::retired_at`]): no
/// longer the id a new read of the key gets, but states of that epoch or
/// older may still hold the key under it, so it still resolves to the key.
const RETIRED: u64 = 2 << 32;
/// Interned (given out by value) since the last
/// [`retire_unused`](KeyIds::retire_unused) looked at the slot.
const TOUCHED: u64 = 1 << 34;

fn generation(meta: u64) -> u32 {
    (meta & GENERATION) as u32
}

/// A key id's slot in [`KeyIds`]: its generation, state and touched flag in
/// one word (read without a lock), and its key (`None` while free), under
/// a read-write lock (a read guard costs no poison check: cheaper than a
/// `Mutex` on the id → key paths, for 8 B more a slot).
///
/// `meta` changes only under the `key` lock (so `with` sees the key and
/// state together), except for the touched flag, set under the key's shard
/// lock and cleared by a compare-exchange.
struct Slot<T> {
    meta: AtomicU64,
    key: RwLock<Option<T>>,
}

impl<T> Slot<T> {
    fn free() -> Self {
        Slot {
            meta: AtomicU64::new(FREE),
            key: RwLock::new(None),
        }
    }
}

/// Retired slots waiting for their epoch to end, and reusable slots.
#[derive(Default)]
struct Reuse {
    limbo: Vec<(EpochWatch, Vec<u32>)>,
    free: Vec<u32>,
}

/// Slot numbers, found by the hash of the key they hold (compared through
/// the slot: the key is stored once), each beside the low half of that
/// hash. The table re-hashes (grows, or rehashes in place) from the stored
/// half only, never by calling the user's `Hash` on the keys: hashbrown
/// drops the entries it has not re-placed yet when a hasher panics during
/// an in-place rehash, and a key lost that way would get a new id (its
/// input read as absent).
type IdShard = RwLock<hashbrown::HashTable<(u32, u32)>>;

/// A shard table's hash of an entry whose key hashes to `hash`: a function
/// of the stored low half alone (the high half picks the shard).
#[inline]
fn table_hash(hash: u64) -> u64 {
    u64::from(hash as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The re-hash of a stored entry (no user code).
#[inline]
fn entry_hash(entry: &(u32, u32)) -> u64 {
    table_hash(u64::from(entry.1))
}

/// The key ids of an input or query kind: `T ↔ KeyId`, deduplicated by
/// value, with ids reclaimed (issue 11).
///
/// Architecture Invariant: an id never names two keys. When a collection
/// of the database drops the last entry of a key (a tombstone, or a memo),
/// or finds an id that nothing holds (`retire_unused`),
/// `retire` takes the key's id away from the key (a later read of the key
/// gets a new id) but keeps resolving it to the key while a state of the
/// collection's epoch (or older) exists (`engine/epoch.rs`); `release` then
/// bumps the slot's generation and lets the next new key have it. Anything
/// that still names the old generation (a memo's edge, a cache link map, an
/// event) resolves to nothing: a walk reads that edge as changed, a save
/// skips that memo. Memos are inserted under a retired id only into states
/// of its epoch or older (`live_in`), and the database's own collection
/// drops those it finds, so a state newer than the retirement never holds a
/// memo under a retired id. A generation that would wrap is never reused.
///
/// Layout (issue 12): a key is stored once, in its slot (16 B of slot
/// header for a `u64` key: `meta` and the lock; `Slot<u64>` is 40 B); the
/// by-value shards hold only slot numbers (4 B a bucket) and compare keys
/// through the slots. Every id in a shard is live, so its key does not
/// change while the shard's lock is held.
pub(crate) struct KeyIds<T> {
    hasher: ahash::RandomState,
    shards: [IdShard; SHARDS],
    slots: SlotVec<T>,
    reuse: Mutex<Reuse>,
    /// Slot → (generation, epoch) of the retired slots (a leaf lock: taken
    /// under a slot's, never the other way round).
    retired_at: Mutex<HashMap<u32, (u32, u64), DepHash>>,
    /// Slots live or retired (not free).
    used: AtomicUsize,
    /// Whether any id was ever retired (until then every id is live).
    retired: AtomicBool,
    /// Whether any slot was ever released (until then every id resolves).
    released: AtomicBool,
    /// Loads between giving their keys ids and installing the tables that
    /// hold them ([`hold_retirement`](Self::hold_retirement)): no id is
    /// retired meanwhile.
    holds: AtomicUsize,
}

/// See [`KeyIds::hold_retirement`].
pub(crate) struct RetirementHeld<'a, T>(&'a KeyIds<T>);

impl<T> Drop for RetirementHeld<'_, T> {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<T: Clone + Eq + Hash> KeyIds<T> {
    pub(crate) fn new() -> Self {
        KeyIds {
            hasher: ahash::RandomState::new(),
            shards: std::array::from_fn(|_| RwLock::new(hashbrown::HashTable::new())),
            slots: SlotVec::new(),
            reuse: Mutex::new(Reuse::default()),
            retired_at: Mutex::new(HashMap::default()),
            used: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            released: AtomicBool::new(false),
            holds: AtomicUsize::new(0),
        }
    }

    /// Keeps every id of this kind from being retired while the guard
    /// lives: for a load, from giving its keys ids until the tables that
    /// hold them are installed. Until then nothing in the database holds
    /// those ids, so a collection meanwhile would retire them (and release
    /// them once its epoch ended) under the loaded slots and memos, whose
    /// dependents would then re-execute at every revision. Ids nothing
    /// holds once the guard is gone are retired by later collections.
    pub(crate) fn hold_retirement(&self) -> RetirementHeld<'_, T> {
        self.holds.fetch_add(1, Ordering::AcqRel);
        RetirementHeld(self)
    }

    /// Whether a load holds retirement off (see `hold_retirement`).
    fn retirement_held(&self) -> bool {
        self.holds.load(Ordering::Acquire) > 0
    }

    #[inline]
    fn hash(&self, value: &T) -> u64 {
        self.hasher.hash_one(value)
    }

    /// The shard of a key of hash `hash` (bits the shard's table does not
    /// use for its buckets or tags).
    #[inline]
    fn shard_index(hash: u64) -> usize {
        (hash >> 32) as usize % SHARDS
    }

    /// Whether slot `s` holds `value`.
    #[inline]
    fn slot_holds(&self, s: u32, value: &T) -> bool {
        self.slots
            .get(s as usize)
            .is_some_and(|slot| read(&slot.key).as_ref() == Some(value))
    }

    /// Whether shard entry `entry` is `value`'s (of hash `hash`).
    #[inline]
    fn entry_holds(&self, entry: &(u32, u32), hash: u64, value: &T) -> bool {
        entry.1 == hash as u32 && self.slot_holds(entry.0, value)
    }

    /// The current id of `value`, if it has one.
    #[cfg(test)]
    pub(crate) fn get(&self, value: &T) -> Option<KeyId> {
        let hash = self.hash(value);
        let table = read(&self.shards[Self::shard_index(hash)]);
        let s = table
            .find(table_hash(hash), |e| self.entry_holds(e, hash, value))?
            .0;
        let meta = self.slots.get(s as usize)?.meta.load(Ordering::Acquire);
        Some(KeyId::at(s, generation(meta)))
    }

    /// The id of `value`, giving it one if it has none. `None` only if
    /// 2^32 ids are in use.
    pub(crate) fn intern(&self, value: &T) -> Option<KeyId> {
        let hash = self.hash(value);
        let shard = &self.shards[Self::shard_index(hash)];
        {
            let table = read(shard);
            if let Some(&(s, _)) =
                table.find(table_hash(hash), |e| self.entry_holds(e, hash, value))
            {
                return self.touch(s);
            }
        }
        let mut table = write(shard);
        if let Some(&(s, _)) = table.find(table_hash(hash), |e| self.entry_holds(e, hash, value)) {
            return self.touch(s);
        }
        let id = self.allocate(value)?;
        table.insert_unique(table_hash(hash), (id.get(), hash as u32), entry_hash);
        Some(id)
    }

    /// The id of live slot `s`, marked as just given out (under its key's
    /// shard lock): the next [`retire_unused`](Self::retire_unused) leaves
    /// it alone.
    #[inline]
    fn touch(&self, s: u32) -> Option<KeyId> {
        let slot = self.slots.get(s as usize)?;
        let meta = slot.meta.load(Ordering::Relaxed);
        if meta & TOUCHED == 0 {
            slot.meta.fetch_or(TOUCHED, Ordering::Relaxed);
        }
        Some(KeyId::at(s, generation(meta)))
    }

    /// The ids of `values`, giving new ones ids (a load's keys): every
    /// shard is locked once for the whole batch. `None` only if 2^32 ids
    /// are in use.
    pub(crate) fn intern_all(&self, values: &[T]) -> Option<Vec<KeyId>> {
        let mut shards: Vec<_> = self.shards.iter().map(write).collect();
        for shard in &mut shards {
            shard.reserve(values.len() / SHARDS + 1, entry_hash);
        }
        let mut ids = Vec::with_capacity(values.len());
        for value in values {
            let hash = self.hash(value);
            let table = &mut shards[Self::shard_index(hash)];
            let id = match table.find(table_hash(hash), |e| self.entry_holds(e, hash, value)) {
                Some(&(s, _)) => self.touch(s)?,
                None => {
                    let id = self.allocate(value)?;
                    table.insert_unique(table_hash(hash), (id.get(), hash as u32), entry_hash);
                    id
                }
            };
            ids.push(id);
        }
        Some(ids)
    }

    /// A slot for `value`: a released one, or a new one.
    fn allocate(&self, value: &T) -> Option<KeyId> {
        let reused = lock(&self.reuse).free.pop();
        let id = match reused {
            Some(s) => {
                let slot = self.slots.get(s as usize)?;
                let mut key = write(&slot.key);
                *key = Some(value.clone());
                let g = generation(slot.meta.load(Ordering::Acquire));
                slot.meta
                    .store(u64::from(g) | LIVE | TOUCHED, Ordering::Release);
                KeyId::at(s, g)
            }
            None => KeyId::new(self.slots.push(value.clone())?),
        };
        self.used.fetch_add(1, Ordering::Relaxed);
        Some(id)
    }

    /// `f` of the key `id` names, if it still names one (live, or retired
    /// and not yet released). Atomic: a concurrent release either happens
    /// before (`None`) or after `f`.
    #[inline]
    pub(crate) fn with<R>(&self, id: KeyId, f: impl FnOnce(&T) -> R) -> Option<R> {
        let slot = self.slots.get(id.get() as usize)?;
        let key = read(&slot.key);
        let meta = slot.meta.load(Ordering::Acquire);
        if generation(meta) != id.generation() || meta & STATE == FREE {
            return None;
        }
        key.as_ref().map(f)
    }

    /// The key `id` names, cloned.
    pub(crate) fn value(&self, id: KeyId) -> Option<T> {
        self.with(id, T::clone)
    }

    /// Whether `id` still names a key (see [`with`](Self::with)).
    #[inline]
    pub(crate) fn names(&self, id: KeyId) -> bool {
        if !self.released.load(Ordering::Acquire) {
            return true;
        }
        self.slots.get(id.get() as usize).is_some_and(|slot| {
            let meta = slot.meta.load(Ordering::Acquire);
            generation(meta) == id.generation() && meta & STATE != FREE
        })
    }

    /// Whether a memo under `id` may go into a state of `epoch`: the id is
    /// live, or retired in that epoch or a later one (the state is as old
    /// as the retirement, so it may hold the key under this id anyway).
    #[inline]
    pub(crate) fn live_in(&self, id: KeyId, epoch: u64) -> bool {
        if !self.retired.load(Ordering::Acquire) {
            // Nothing retired yet (a session without collections): every
            // id given out is live, at generation 0. (A retirement racing
            // with an insert is caught by the collection's sweep: see
            // `Ingredient::insert_memos`.)
            return id.generation() == 0 && id.as_usize() < self.slots.len();
        }
        let Some(slot) = self.slots.get(id.as_usize()) else {
            return false;
        };
        let meta = slot.meta.load(Ordering::Acquire);
        if generation(meta) != id.generation() {
            return false;
        }
        match meta & STATE {
            LIVE => true,
            RETIRED => lock(&self.retired_at)
                .get(&id.get())
                .is_some_and(|&(g, at)| g == id.generation() && epoch <= at),
            _ => false,
        }
    }

    /// Whether `id` is the current id of its key.
    #[inline]
    pub(crate) fn is_live(&self, id: KeyId) -> bool {
        self.live_in(id, u64::MAX)
    }

    /// Takes `ids` away from their keys (the database's collection just
    /// dropped their last entries), in `epoch`: see the type's docs.
    /// Ids already retired or released are left alone. Returns how many
    /// were retired.
    pub(crate) fn retire(&self, ids: &[KeyId], epoch: &Epoch) -> usize {
        self.retire_if(ids, epoch, false)
    }

    /// Retires (as [`retire`](Self::retire), in `epoch`) every live id for
    /// which `keep` is false and that was not interned since the previous
    /// call (nor allocated since: a new id is spared once). The database's
    /// collection calls it with `keep` true for the ids that have an entry
    /// in the kind's table or that an edge of a memo of its new state
    /// names: what is left is an id nothing holds — a key only ever read
    /// as absent, a memo evicted or dropped by a merge — which would
    /// otherwise never be reclaimed (p5, p5b, p9b in
    /// `tests/attack_reclaim.rs`).
    ///
    /// The grace of one call covers a reader that interned an id and has
    /// not published what it computed with it yet: `touched` is set under
    /// the key's shard lock and checked again under its write lock here,
    /// so an id interned after the scan is never retired by it. A reader
    /// that holds an id across a whole period between two collections
    /// without interning it again may see it retired: its memo under that
    /// id is then dropped (`live_in`), and its edges to it resolve to the
    /// key until its epoch ends, then read as changed (a re-execution,
    /// never a wrong value). Returns how many were retired.
    pub(crate) fn retire_unused(&self, keep: &dyn Fn(KeyId) -> bool, epoch: &Epoch) -> usize {
        if self.retirement_held() {
            // A load is installing: its fresh ids keep their grace.
            return 0;
        }
        let mut unused = Vec::new();
        for s in 0..self.slots.len() {
            let Some(slot) = self.slots.get(s) else {
                continue;
            };
            let meta = slot.meta.load(Ordering::Acquire);
            if meta & STATE != LIVE {
                continue;
            }
            if meta & TOUCHED != 0 {
                // Cleared only if nothing changed since the load (a slot
                // retired and reused meanwhile keeps its new flag).
                let _ = slot.meta.compare_exchange(
                    meta,
                    meta & !TOUCHED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                continue;
            }
            let Ok(s) = u32::try_from(s) else {
                continue;
            };
            let id = KeyId::at(s, generation(meta));
            if !keep(id) {
                unused.push(id);
            }
        }
        self.retire_if(&unused, epoch, true)
    }

    /// [`retire_unused`](Self::retire_unused) for a kind whose table has
    /// `entries` entries, under the ids `held`: keeps those and the
    /// `referenced` ones.
    pub(crate) fn retire_unheld(
        &self,
        entries: usize,
        held: impl Iterator<Item = KeyId>,
        referenced: &dyn Fn(KeyId) -> bool,
        epoch: &Epoch,
    ) -> usize {
        // Every id in use has an entry: nothing to look for.
        if self.len() <= entries {
            return 0;
        }
        let held: std::collections::HashSet<KeyId, DepHash> = held.collect();
        self.retire_unused(&|id| held.contains(&id) || referenced(id), epoch)
    }

    /// [`retire`](Self::retire); with `untouched`, an id interned since
    /// it was chosen is left alone.
    fn retire_if(&self, ids: &[KeyId], epoch: &Epoch, untouched: bool) -> usize {
        if ids.is_empty() {
            return 0;
        }
        // Before any slot is marked: `live_in` stops trusting its fast path.
        self.retired.store(true, Ordering::Release);
        let mut retired = Vec::new();
        for &id in ids {
            // Shard, then slot: the order `intern` takes them in.
            let Some(hash) = self.with(id, |k| self.hash(k)) else {
                continue;
            };
            let mut table = write(&self.shards[Self::shard_index(hash)]);
            // Checked under the shard's lock, which a load's `intern_all`
            // takes after its hold: an id it got is never retired here.
            if self.retirement_held() {
                break;
            }
            let Some(slot) = self.slots.get(id.get() as usize) else {
                continue;
            };
            let key = write(&slot.key);
            let meta = slot.meta.load(Ordering::Acquire);
            if generation(meta) != id.generation()
                || meta & STATE != LIVE
                || (untouched && meta & TOUCHED != 0)
            {
                continue;
            }
            // A live id is the one its key's shard holds (compared by slot
            // number: this slot's lock is held).
            if let Ok(entry) = table.find_entry(table_hash(hash), |&(s, _)| s == id.get()) {
                entry.remove();
            }
            // Before the state: a `live_in` that sees it retired finds when.
            lock(&self.retired_at).insert(id.get(), (id.generation(), epoch.seq()));
            slot.meta
                .store(u64::from(id.generation()) | RETIRED, Ordering::Release);
            drop(key);
            retired.push(id.get());
        }
        let n = retired.len();
        if n > 0 {
            lock(&self.reuse).limbo.push((epoch.watch(), retired));
        }
        n
    }

    /// Makes the slots retired in epochs that have ended reusable, under a
    /// new generation. Returns how many.
    pub(crate) fn release(&self) -> usize {
        let mut reuse = lock(&self.reuse);
        let Reuse { limbo, free } = &mut *reuse;
        if !limbo.iter().any(|(watch, _)| watch.ended()) {
            return 0;
        }
        // Before any generation moves: `names` stops trusting the fast path.
        self.released.store(true, Ordering::Release);
        let mut released = 0;
        limbo.retain(|(watch, slots)| {
            if !watch.ended() {
                return true;
            }
            for &s in slots {
                let Some(slot) = self.slots.get(s as usize) else {
                    continue;
                };
                let mut key = write(&slot.key);
                let meta = slot.meta.load(Ordering::Acquire);
                if meta & STATE != RETIRED {
                    continue;
                }
                let old = key.take();
                released += 1;
                // A generation that would wrap is never reused: the slot is
                // given up (one slot per 2^32 reuses of it).
                let g = generation(meta);
                let next = g.checked_add(1);
                slot.meta
                    .store(u64::from(next.unwrap_or(g)) | FREE, Ordering::Release);
                lock(&self.retired_at).remove(&s);
                drop(key);
                drop(old);
                if next.is_some() {
                    free.push(s);
                }
            }
            false
        });
        self.used.fetch_sub(released, Ordering::Relaxed);
        released
    }

    /// Ids in use (live or retired): what the memory report counts.
    pub(crate) fn len(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes: the slots' chunks as allocated, the by-value tables' buckets
    /// (a slot number and a control byte each, at their capacity), and the
    /// reuse lists (shallow: a key's own heap data is not followed).
    pub(crate) fn bytes(&self) -> usize {
        let tables: usize = self
            .shards
            .iter()
            .map(|s| table_bytes(read(s).capacity(), std::mem::size_of::<(u32, u32)>()))
            .sum();
        let reuse = {
            let r = lock(&self.reuse);
            r.free.capacity() * 4 + r.limbo.iter().map(|(_, v)| v.capacity() * 4).sum::<usize>()
        };
        let retired = table_bytes(
            lock(&self.retired_at).capacity(),
            std::mem::size_of::<(u32, (u32, u64))>(),
        );
        self.slots.allocated_bytes() + tables + reuse + retired
    }

    /// `Debug` rendering of the key `id` names (`#id` if none).
    pub(crate) fn debug(&self, id: KeyId) -> String
    where
        T: std::fmt::Debug,
    {
        self.with(id, |v| crate::util::debug_string(v))
            .unwrap_or_else(|| format!("#{id}"))
    }
}

/// Bytes of a hashbrown table (std's `HashMap` is one) of `capacity` with
/// `entry`-byte entries: its buckets (a power of two, 8/7 of the capacity
/// past 8), an entry and a control byte each, and a group of trailing
/// control bytes.
fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        capacity + 1
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (entry + 1) + 16
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
    fn grouped_chunks_are_contiguous_and_sized() {
        let mut expected = (0, 0);
        for i in 0..200_000 {
            let got = locate_grouped(i);
            if got.0 != expected.0 {
                assert_eq!(expected.1, FIRST_CHUNK << (expected.0 / GROUP), "{i}");
                assert_eq!(got, (expected.0 + 1, 0));
            } else {
                assert_eq!(got, expected);
            }
            expected = (got.0, got.1 + 1);
        }
        assert!(locate_grouped(u32::MAX as usize).0 < SLOT_CHUNKS);
    }

    /// The key is stored once: a `u64` key's slot is its key, `meta` and
    /// a lock (issue 12; it was 64 B with the key in the by-value map too).
    #[test]
    #[cfg(all(target_pointer_width = "64", target_os = "linux"))]
    fn a_u64_slot_is_40_bytes() {
        assert_eq!(std::mem::size_of::<Slot<u64>>(), 40);
    }

    #[test]
    fn shard_tables_rehash_without_calling_the_users_hash() {
        use std::sync::atomic::AtomicBool;
        static PANIC: AtomicBool = AtomicBool::new(false);
        // A key whose `Hash` panics, once switched on, for the first 100.
        #[derive(Clone, PartialEq, Eq, Debug)]
        struct Touchy(u64);
        impl Hash for Touchy {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                if self.0 < 100 && PANIC.load(Ordering::Relaxed) {
                    panic!("user Hash panics");
                }
                self.0.hash(state);
            }
        }
        let t = KeyIds::new();
        let kept: Vec<KeyId> = (0..100).map(|i| t.intern(&Touchy(i)).unwrap()).collect();
        PANIC.store(true, Ordering::Relaxed);
        // The tables grow many times (and `intern_all` reserves): before,
        // each growth re-hashed the stored keys through the user's `Hash`,
        // and a panic in an in-place rehash dropped entries.
        for i in 100..20_000 {
            t.intern(&Touchy(i)).unwrap();
        }
        let batch: Vec<Touchy> = (20_000..40_000).map(Touchy).collect();
        t.intern_all(&batch).unwrap();
        PANIC.store(false, Ordering::Relaxed);
        for (i, id) in kept.iter().enumerate() {
            assert_eq!(t.intern(&Touchy(i as u64)), Some(*id), "key {i}");
            assert_eq!(t.value(*id), Some(Touchy(i as u64)));
        }
        assert_eq!(t.len(), 40_000);
    }

    #[test]
    fn key_ids_grow_past_many_chunks_and_resolve() {
        let t = KeyIds::new();
        let ids: Vec<KeyId> = (0..20_000u64).map(|i| t.intern(&i).unwrap()).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(t.value(*id), Some(i as u64));
            assert_eq!(t.intern(&(i as u64)), Some(*id));
        }
        let batch: Vec<u64> = (19_990..20_010).collect();
        let again = t.intern_all(&batch).unwrap();
        assert_eq!(&again[..10], &ids[19_990..]);
        assert_eq!(t.len(), 20_010);
        // Slots of 40 B (in chunks at most 1/4 unused), buckets of 9 B.
        assert!(t.bytes() < 20_010 * 64, "{}", t.bytes());
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
        assert!(t.intern_at(&"a".to_string(), a));
        assert!(!t.intern_at(&"fresh".to_string(), KeyId::new(0)));
    }

    #[test]
    fn key_ids_dedup_in_bulk() {
        let t = KeyIds::new();
        let a = t.intern(&"a".to_string()).unwrap();
        let batch: Vec<String> = ["a", "new", "7", "new"].map(String::from).to_vec();
        let ids = t.intern_all(&batch).unwrap();
        assert_eq!(ids[0], a);
        assert_eq!(ids[2], t.get(&"7".to_string()).unwrap());
        assert_eq!(ids[1], ids[3]);
        assert_eq!(t.value(ids[1]).as_deref(), Some("new"));
        assert_eq!(t.intern(&"new".to_string()), Some(ids[1]));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_retired_id_resolves_until_its_epoch_ends_then_never_again() {
        let t = KeyIds::new();
        let e0 = Epoch::first();
        let k = t.intern(&"k".to_string()).unwrap();
        assert_eq!(t.retire(&[k], &e0), 1);
        assert_eq!(t.retire(&[k], &e0), 0, "retired once");
        // Still the key for states of e0; no longer its id for new reads.
        assert_eq!(t.value(k).as_deref(), Some("k"));
        assert!(!t.is_live(k) && t.live_in(k, 0) && !t.live_in(k, 1));
        let k2 = t.intern(&"k".to_string()).unwrap();
        assert_ne!(k2, k);
        // e0 is alive: nothing is released, a new key gets a new slot.
        let e1 = e0.successor();
        assert_eq!(t.release(), 0);
        let other = t.intern(&"other".to_string()).unwrap();
        assert_ne!(other.get(), k.get());
        drop(e0);
        drop(e1);
        assert_eq!(t.release(), 1);
        assert_eq!(t.value(k), None);
        assert!(!t.names(k) && !t.live_in(k, 0));
        assert_eq!(t.debug(k), format!("#{k}"));
        // The slot is reused under the next generation.
        let next = t.intern(&"next".to_string()).unwrap();
        assert_eq!(next.get(), k.get());
        assert_ne!(next, k);
        assert_eq!(t.value(next).as_deref(), Some("next"));
        assert_eq!(t.value(k), None);
        assert_eq!(t.len(), 3);
    }
}

#[cfg(test)]
mod map_bytes_tests {
    use super::map_bytes;

    /// Against the allocations `compare/src/bin/memory.rs` counted for a
    /// `u32 → Entry<u64>` memo table (32-byte slots): 560 B leaves holding
    /// ~10 entries at 10 000 (56 B/entry, plus branches), ~3 at 100 000
    /// (148 B/entry, plus branches).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn hamt_estimate_matches_measured_nodes() {
        type Slot = crate::engine::storage::Entry<u64>;
        let per = |n: usize| map_bytes::<u32, Slot>(n) / n;
        assert_eq!(map_bytes::<u32, Slot>(0), 0);
        assert!((55..=65).contains(&per(10_000)), "{}", per(10_000));
        assert!((150..=175).contains(&per(100_000)), "{}", per(100_000));
        assert!(per(10) >= 56, "{}", per(10));
    }
}
