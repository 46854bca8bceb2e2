//! Storage: the immutable `State` a view publishes through `arc-swap`, the
//! per-ingredient tables inside it (persistent `imbl` maps), input slots,
//! memos and dependency edges.
//!
//! A `State` is never mutated after publication. Writers and memo inserts build
//! a new `State` that shares everything it did not change (imbl maps share
//! structure), and swap it in. A snapshot is one `Arc` clone of a `State`.

use std::any::Any;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use crate::engine::dense::DenseMap;
use crate::engine::epoch::Epoch;
use crate::revision::{Durability, Revision};
use crate::{Error, Result};

/// Position of an ingredient in the registry, and of its table in every
/// `State`: fixed when the database is built, the same for all its views.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub(crate) struct IngredientIndex(u32);

impl IngredientIndex {
    /// The index of the `i`-th ingredient registered.
    #[inline]
    pub(crate) const fn new(i: u32) -> IngredientIndex {
        IngredientIndex(i)
    }

    #[inline]
    pub(crate) const fn get(self) -> u32 {
        self.0
    }

    /// Its position in `Registry::ingredients` and `State::tables`.
    #[inline]
    pub(crate) const fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for IngredientIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Per-ingredient id of a key (see `typed::keys::KeyIds`): a dense slot
/// and the slot's generation. While a key is in the database it keeps one
/// id; the id of a key that garbage collection removed is reclaimed, and
/// its slot is reused under the next generation, so an old id (in an edge,
/// a cache link map) never names the slot's new key (`engine/epoch.rs`).
/// Interned ids are slots of generation 0, never reclaimed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub(crate) struct KeyId {
    slot: u32,
    generation: u32,
}

impl KeyId {
    /// Slot `id`, generation 0.
    #[inline]
    pub(crate) const fn new(id: u32) -> KeyId {
        KeyId::at(id, 0)
    }

    /// Slot `slot` at `generation`.
    #[inline]
    pub(crate) const fn at(slot: u32, generation: u32) -> KeyId {
        KeyId { slot, generation }
    }

    /// The slot.
    #[inline]
    pub(crate) const fn get(self) -> u32 {
        self.slot
    }

    /// The slot's generation this id was given at.
    #[inline]
    pub(crate) const fn generation(self) -> u32 {
        self.generation
    }

    /// Its position in dense per-key arrays (the slot).
    #[inline]
    pub(crate) const fn as_usize(self) -> usize {
        self.slot as usize
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.generation {
            0 => self.slot.fmt(f),
            g => write!(f, "{}.{g}", self.slot),
        }
    }
}

/// Identifies one history of inputs: the database and the snapshots that
/// did not set anything share `MAIN_FORK`; a snapshot that sets an input
/// gets a fresh fork id, so its revisions never alias the database's.
pub(crate) type ForkId = u64;
pub(crate) const MAIN_FORK: ForkId = 0;

/// Which history a view's state is in: the database's main history (shared
/// by the database and its unforked snapshots, where a memo's
/// `verified_main` is meaningful) or a fork of its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum History {
    Main,
    Fork,
}

impl History {
    pub(crate) fn of(fork: ForkId) -> History {
        if fork == MAIN_FORK {
            History::Main
        } else {
            History::Fork
        }
    }
}

/// A dependency edge: ingredient index + key id (slot and generation), 12
/// bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub(crate) struct Dep {
    pub ingredient: IngredientIndex,
    pub key: KeyId,
}

/// A hasher for `Dep`s (and other small integer keys) in the engine's own
/// hash maps and sets: one multiply per word, no per-map random state. The
/// keys are dense ids chosen by the engine, not by an adversary, so a keyed
/// hash buys nothing; seeding an `ahash::RandomState` per walk and hashing
/// each `Dep` through it cost more than the lookups themselves.
#[derive(Default, Clone, Copy)]
pub(crate) struct DepHasher(u64);

const DEP_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl std::hash::Hasher for DepHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes the bucket from the low bits and the tag from the
        // top 7: fold the well-mixed high half into the low one.
        self.0 ^ (self.0 >> 32)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(DEP_MIX);
        }
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0.rotate_left(32) ^ u64::from(v)).wrapping_mul(DEP_MIX);
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(32) ^ v).wrapping_mul(DEP_MIX);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

/// The `BuildHasher` of [`DepHasher`].
pub(crate) type DepHash = std::hash::BuildHasherDefault<DepHasher>;

/// The dependency a body records when it reads the outside world behind
/// the engine's back (`QueryCx::report_untracked_read`): it never verifies,
/// so the memo re-executes at every new revision (and is never persisted:
/// no persistent ingredient has this index).
pub(crate) const UNTRACKED: Dep = Dep {
    ingredient: IngredientIndex::new(u32::MAX),
    key: KeyId::new(0),
};

/// A recorded read: what was read, and the `changed_at` of the value seen —
/// its identity. A memo is still valid when every dependency's current
/// `changed_at` equals the one it saw. (Comparing identities rather than
/// "changed after I was verified" stays sound when memos computed at
/// different revisions — by snapshots, or by accesses pinned to older
/// revisions — meet in one table.)
#[derive(Clone)]
pub(crate) struct Edge {
    pub dep: Dep,
    pub seen: Revision,
    /// The memo read (for derived dependencies), without keeping it alive:
    /// revalidation follows it instead of looking the key up, when it still
    /// exists.
    pub memo: Option<Weak<dyn AnyMemo>>,
}

/// `seen` of a read that failed (a cycle, a cancellation): never matches.
pub(crate) const UNSEEN: Revision = Revision::from_u64(u64::MAX);

/// Persistent hash map with a fixed ahash hasher.
pub(crate) type Map<K, V> =
    imbl::GenericHashMap<K, V, ahash::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

pub(crate) fn new_map<K, V>() -> Map<K, V> {
    Map::with_hasher(ahash::RandomState::new())
}

/// One ingredient's table, type-erased. Inputs store `InputTable`, queries
/// `MemoTable`, interned kinds a unit placeholder.
pub(crate) type Table = Arc<dyn Any + Send + Sync>;

/// Everything a view sees at one revision.
#[derive(Clone)]
pub(crate) struct State {
    pub revision: Revision,
    pub fork: ForkId,
    /// `last_changed[d]`: the last revision at which an input of durability
    /// `>= d` changed. A memo of durability `d` verified at or after it is
    /// still valid without walking its dependencies.
    pub last_changed: [Revision; Durability::COUNT],
    pub tables: Box<[Table]>,
    /// The epoch this state belongs to: key ids retired in it are not
    /// reused while it (or an older state) exists (`engine/epoch.rs`).
    pub epoch: Epoch,
}

impl State {
    pub(crate) fn table<T: Any>(&self, index: IngredientIndex) -> Result<&T> {
        self.tables
            .get(index.as_usize())
            .and_then(|t| t.downcast_ref::<T>())
            .ok_or_else(|| Error::internal(format!("table {index} has an unexpected type")))
    }

    /// Whether a memo of `durability` verified at `verified_at` is still valid
    /// here without looking at its dependencies.
    /// Only for memos verified at or before this state's revision: this state
    /// knows nothing of changes after it.
    pub(crate) fn durable_since(&self, durability: Durability, verified_at: Revision) -> bool {
        verified_at <= self.revision && self.last_changed[durability.index()] <= verified_at
    }
}

/// An input slot. `value: None` is a tombstone left by `remove`, so that
/// dependents see the removal as a change.
#[derive(Clone)]
pub(crate) struct InputSlot<V> {
    pub key: KeyId,
    pub value: Option<V>,
    pub changed_at: Revision,
}

/// An input kind's table: its slots by key (reads by key, iteration,
/// persistence go through `Deref` to the map), and beside it the
/// `changed_at` of each slot by its key id's slot number, so a walk checks
/// an input edge without resolving the id to its key (a lock in
/// `typed/keys.rs`) and hashing the key again. Both halves are persistent:
/// cloning the table (a snapshot, a batch) is O(1), and each state sees its
/// own revision's slots. Writes go through [`insert`](Self::insert) and
/// [`remove`](Self::remove), which keep the two halves consistent.
///
/// Architecture Invariant: `by_id[s]` is present with generation `g` exactly
/// when the map holds a slot whose `key` is `KeyId::at(s, g)`, and then
/// carries that slot's `changed_at`. A key id names at most one key while
/// any state holding a slot under it exists (`engine/epoch.rs`), so this is
/// the `changed_at` a lookup through the id's key would find; an id with
/// no entry here (an absent key, a stale generation) takes that lookup
/// (`Ingredient::input_changed_at` in `typed/input.rs`).
#[derive(Clone)]
pub(crate) struct InputTable<K, V> {
    slots: Map<K, InputSlot<V>>,
    by_id: DenseMap<ById>,
}

/// One key id slot's entry in [`InputTable::by_id`] (16 bytes).
#[derive(Clone, Copy)]
struct ById {
    changed_at: Revision,
    generation: u32,
    present: bool,
}

const NO_SLOT: ById = ById {
    changed_at: Revision::ZERO,
    generation: 0,
    present: false,
};

impl<K, V> std::ops::Deref for InputTable<K, V> {
    type Target = Map<K, InputSlot<V>>;
    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.slots
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> InputTable<K, V> {
    pub(crate) fn new() -> Self {
        InputTable {
            slots: new_map(),
            by_id: DenseMap::new(NO_SLOT),
        }
    }

    /// Sets `key`'s slot (replacing the one it had).
    pub(crate) fn insert(&mut self, key: K, slot: InputSlot<V>) {
        let (id, changed_at) = (slot.key, slot.changed_at);
        if let Some(old) = self.slots.insert(key, slot)
            && old.key != id
        {
            self.unindex(old.key);
        }
        self.by_id.set(
            id.as_usize(),
            ById {
                changed_at,
                generation: id.generation(),
                present: true,
            },
        );
    }

    /// Removes `key`'s slot, if it has one.
    pub(crate) fn remove(&mut self, key: &K) {
        if let Some(old) = self.slots.remove(key) {
            self.unindex(old.key);
        }
    }

    fn unindex(&mut self, id: KeyId) {
        let e = self.by_id.get(id.as_usize());
        if e.present && e.generation == id.generation() {
            self.by_id.set(id.as_usize(), NO_SLOT);
        }
    }

    /// The `changed_at` of the slot held under `id`, if the table holds one
    /// under exactly this id (see the type's invariant).
    #[inline]
    pub(crate) fn changed_at_by_id(&self, id: KeyId) -> Option<Revision> {
        let e = self.by_id.get(id.as_usize());
        (e.present && e.generation == id.generation()).then_some(e.changed_at)
    }

    /// Bytes the by-id side spends per key id slot it covers.
    pub(crate) const BY_ID_BYTES: usize = std::mem::size_of::<ById>();

    /// Key id slots the by-id side covers (up to the largest held).
    pub(crate) fn by_id_len(&self) -> usize {
        self.by_id.len()
    }
}

/// Why a memo was (re-)executed; kept for `View::inspect`.
///
/// Every memo carries one, so it is one `Dep` (12 bytes; an enum with a
/// `Dep` variant would be 16): the two reasons without a dependency are
/// `Dep`s of ingredient indices no database registers (`u32::MAX - 1` and
/// `- 2`; `UNTRACKED` is `u32::MAX`). It is built and read like the enum
/// it stands for — `Reason::New`, `Reason::DependencyChanged(dep)`,
/// `Reason::Unverifiable`, and [`kind`](Reason::kind) to match on — so the
/// constructors keep the enum's spelling.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reason(Dep);

/// What a [`Reason`] says, to match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReasonKind {
    /// There was no memo usable at this revision.
    New,
    /// This dependency changed after the memo was verified.
    DependencyChanged(Dep),
    /// The previous dependencies could not be revalidated (a cycle among them,
    /// or a dependency whose own fetch failed).
    Unverifiable,
}

const REASON_NEW: IngredientIndex = IngredientIndex::new(u32::MAX - 1);
const REASON_UNVERIFIABLE: IngredientIndex = IngredientIndex::new(u32::MAX - 2);

#[allow(non_upper_case_globals, non_snake_case)]
impl Reason {
    /// There was no memo usable at this revision.
    pub(crate) const New: Reason = Reason(Dep {
        ingredient: REASON_NEW,
        key: KeyId::new(0),
    });
    /// The previous dependencies could not be revalidated (a cycle among them,
    /// or a dependency whose own fetch failed).
    pub(crate) const Unverifiable: Reason = Reason(Dep {
        ingredient: REASON_UNVERIFIABLE,
        key: KeyId::new(0),
    });

    /// This dependency changed after the memo was verified.
    #[inline]
    pub(crate) const fn DependencyChanged(dep: Dep) -> Reason {
        Reason(dep)
    }

    /// What it says.
    #[inline]
    pub(crate) fn kind(self) -> ReasonKind {
        match self.0.ingredient {
            REASON_NEW => ReasonKind::New,
            REASON_UNVERIFIABLE => ReasonKind::Unverifiable,
            _ => ReasonKind::DependencyChanged(self.0),
        }
    }
}

impl std::fmt::Debug for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind().fmt(f)
    }
}

/// The part of a memo the type-erased engine works with.
pub(crate) struct MemoMeta {
    pub key: KeyId,
    pub deps: Box<[Edge]>,
    /// Last revision at which the value changed (kept across early cutoff).
    pub changed_at: Revision,
    /// Minimum durability over the dependencies (`High` with none).
    pub durability: Durability,
    /// The revision the body last ran at.
    pub executed_at: Revision,
    pub reason: Reason,
    /// The latest revision *of the database's main history* at which this
    /// memo is known valid. Whether a memo is valid at revision r depends
    /// only on r's inputs, not on which view checked, so any view in the main
    /// history records a successful revalidation here (an atomic max) instead
    /// of re-inserting a table entry. Forked views ignore it.
    pub verified_main: AtomicU64,
    /// The largest revision number this memo carries as an identity: its
    /// `changed_at` and every edge's `seen` (see `ViewCore::newest_identity`).
    pub newest_identity: Revision,
}

impl MemoMeta {
    /// The largest identity among `changed_at` and the edges' `seen`.
    pub(crate) fn identity_bound(changed_at: Revision, deps: &[Edge]) -> Revision {
        deps.iter()
            .map(|e| e.seen)
            .filter(|s| *s != UNSEEN)
            .fold(changed_at, Revision::max)
    }

    /// Whether the body reported an untracked read (`UNTRACKED` edge).
    pub(crate) fn untracked(&self) -> bool {
        self.deps.iter().any(|e| e.dep == UNTRACKED)
    }

    pub(crate) fn verified_main(&self) -> Revision {
        Revision::from_u64(self.verified_main.load(Ordering::Acquire))
    }

    /// Records that the memo is valid at main-history revision `r`.
    pub(crate) fn mark_verified(&self, r: Revision) {
        self.verified_main.fetch_max(r.as_u64(), Ordering::AcqRel);
    }

    /// The latest revision this memo is known valid at in a table of
    /// `history`, given the entry's own `verified_at`: in the main history,
    /// `verified_main` counts too. Used to keep the newest memo when several
    /// are offered for one key.
    #[inline]
    pub(crate) fn latest_verified(&self, entry: Revision, history: History) -> Revision {
        match history {
            History::Main => entry.max(self.verified_main()),
            History::Fork => entry,
        }
    }

    /// The latest revision ≤ `r` this memo is known valid at, given the
    /// entry's own `verified_at` and, for an access in the main history,
    /// `verified_main`.
    #[inline]
    pub(crate) fn effective_verified(&self, entry: Revision, r: Revision, main: bool) -> Revision {
        if main {
            let v = self.verified_main();
            if v > entry && v <= r {
                return v;
            }
        }
        entry
    }
}

/// A memoized result. Immutable; shared by every view that has it.
///
/// The value is either computed (set at construction) or loaded from a
/// persisted cache and decoded the first time it is read.
pub(crate) struct Memo<V> {
    pub meta: MemoMeta,
    value: OnceLock<Result<V>>,
    /// Boxed: only loaded memos have one, and a computed memo then pays
    /// 8 bytes for it instead of 40.
    encoded: Option<Box<Encoded<V>>>,
}

/// A value still in its persisted encoding.
pub(crate) struct Encoded<V> {
    pub bytes: Arc<[u8]>,
    pub range: Range<usize>,
    pub decode: fn(&[u8]) -> Result<V>,
}

impl<V: Clone> Memo<V> {
    pub(crate) fn new(meta: MemoMeta, value: Result<V>) -> Self {
        Memo {
            meta,
            value: OnceLock::from(value),
            encoded: None,
        }
    }

    pub(crate) fn loaded(meta: MemoMeta, encoded: Encoded<V>) -> Self {
        Memo {
            meta,
            value: OnceLock::new(),
            encoded: Some(Box::new(encoded)),
        }
    }

    /// The result, decoding it on first use if it was loaded from disk.
    #[inline]
    pub(crate) fn result(&self) -> &Result<V> {
        match self.value.get() {
            Some(v) => v,
            None => self.value.get_or_init(|| match &self.encoded {
                Some(e) => match e.bytes.get(e.range.clone()) {
                    Some(bytes) => (e.decode)(bytes),
                    None => Err(Error::persist("memo value out of the file's bounds")),
                },
                None => Err(Error::internal("memo without a value")),
            }),
        }
    }

    /// A clone of the result, or `None` if this memo was loaded from disk
    /// and its value does not decode (it must then be recomputed: loaded
    /// memos are never errors).
    #[inline]
    pub(crate) fn read(&self) -> Option<Result<V>> {
        match self.result() {
            Err(_) if self.encoded.is_some() => None,
            r => Some(r.clone()),
        }
    }

    /// The persisted encoding, if this memo was loaded from disk and its
    /// bytes are not known to be undecodable.
    pub(crate) fn encoded_bytes(&self) -> Option<&[u8]> {
        if matches!(self.value.get(), Some(Err(_))) {
            return None;
        }
        let e = self.encoded.as_ref()?;
        e.bytes.get(e.range.clone())
    }
}

/// Type-erased view of a `Memo<V>`.
pub(crate) trait AnyMemo: Any + Send + Sync {
    fn meta(&self) -> &MemoMeta;
    /// The memoized error, if the result is one (loaded memos are never errors).
    fn error(&self) -> Option<&Error>;
}

impl<V: Send + Sync + 'static> AnyMemo for Memo<V> {
    fn meta(&self) -> &MemoMeta {
        &self.meta
    }
    fn error(&self) -> Option<&Error> {
        self.value.get().and_then(|r| r.as_ref().err())
    }
}

pub(crate) type MemoRef = Arc<dyn AnyMemo>;

/// A memo as stored in a view's table: the shared memo plus the revision this
/// view last verified it at (re-verifying only replaces this small entry).
pub(crate) struct Entry<V> {
    pub memo: Arc<Memo<V>>,
    pub verified_at: Revision,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Entry {
            memo: self.memo.clone(),
            verified_at: self.verified_at,
        }
    }
}

pub(crate) type MemoTable<K, V> = Map<K, Entry<V>>;

/// A memo to publish into a view: key, memo, verified-at.
pub(crate) type Publish = (KeyId, MemoRef, Revision);

/// The typed form of an erased memo, borrowed (no reference count touched).
#[inline]
pub(crate) fn typed_memo_ref<V: Send + Sync + 'static>(memo: &MemoRef) -> Result<&Memo<V>> {
    let any: &dyn Any = &**memo;
    any.downcast_ref::<Memo<V>>()
        .ok_or_else(|| Error::internal("memo has an unexpected value type"))
}

/// Downcasts an erased memo to its typed form.
pub(crate) fn typed_memo<V: Send + Sync + 'static>(memo: &MemoRef) -> Result<Arc<Memo<V>>> {
    let any: Arc<dyn Any + Send + Sync> = memo.clone();
    any.downcast::<Memo<V>>()
        .map_err(|_| Error::internal("memo has an unexpected value type"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// The per-memo sizes the memory report and `benches/README.md` rely
    /// on (64-bit targets): a regression here is a regression in bytes per
    /// memo.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn memo_layout_sizes() {
        assert_eq!(size_of::<Dep>(), 12);
        assert_eq!(size_of::<Reason>(), 12);
        assert_eq!(size_of::<MemoMeta>(), 72);
        assert_eq!(size_of::<Option<Box<Encoded<u64>>>>(), 8);
        assert_eq!(size_of::<Memo<u64>>(), 104);
    }

    #[test]
    fn reason_round_trips() {
        assert_eq!(Reason::New.kind(), ReasonKind::New);
        assert_eq!(Reason::Unverifiable.kind(), ReasonKind::Unverifiable);
        let deps = [
            UNTRACKED,
            Dep {
                ingredient: IngredientIndex::new(0),
                key: KeyId::new(0),
            },
            Dep {
                ingredient: IngredientIndex::new(3),
                key: KeyId::at(7, 2),
            },
        ];
        for dep in deps {
            let r = Reason::DependencyChanged(dep);
            assert_eq!(r.kind(), ReasonKind::DependencyChanged(dep));
            assert_ne!(r, Reason::New);
            assert_ne!(r, Reason::Unverifiable);
        }
        assert_eq!(format!("{:?}", Reason::New), "New");
    }
}
