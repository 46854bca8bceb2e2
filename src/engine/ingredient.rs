//! The erased ingredient interface (what the engine needs from an input,
//! query or interned kind) and the registry of a database's ingredients,
//! indexed densely and by `TypeId`, frozen at `build()`. The typed layers
//! implement [`Ingredient`] thinly.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::counters::Counters;
use crate::engine::epoch::Epoch;
use crate::engine::execution::Execution;
use crate::engine::storage::{
    Dep, History, IngredientIndex, KeyId, MemoRef, Publish, Table, UNTRACKED,
};
use crate::error::Result;
use crate::revision::{Durability, Revision};
use crate::util::BoxFuture;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum IngredientKind {
    Input = 1,
    Query = 2,
    Interned = 3,
}

impl IngredientKind {
    pub(crate) fn noun(self) -> &'static str {
        match self {
            IngredientKind::Input => "an input",
            IngredientKind::Query => "a query",
            IngredientKind::Interned => "an interned kind",
        }
    }
}

/// What the erased engine needs from an ingredient. Methods that do not apply
/// to a kind have inert defaults.
pub(crate) trait Ingredient: Any + Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> IngredientKind;
    fn counters(&self) -> &Counters;
    /// A new, empty table for a fresh `State`.
    fn empty_table(&self) -> Table;
    /// `Debug` rendering of the key with this id.
    fn debug_key(&self, key: KeyId) -> String;

    /// Whether changes of this kind (input sets, executions) are recorded
    /// in the journal (for persistence's incremental appends).
    fn journaled(&self) -> bool {
        false
    }

    /// Inputs: the kind's durability.
    fn durability(&self) -> Durability {
        Durability::High
    }
    /// Inputs: when the slot last changed (`ZERO` if never set), or `None`
    /// if `key` names no key any more (its id was reclaimed: whatever read
    /// it reads it as changed).
    fn input_changed_at(&self, _table: &Table, _key: KeyId) -> Option<Revision> {
        Some(Revision::ZERO)
    }
    /// Whether `key` still names a key of this kind (false once the id was
    /// reclaimed, see `typed/keys.rs`).
    fn names_key(&self, _key: KeyId) -> bool {
        true
    }
    /// Whether a memo under `key` may be in a state of epoch `epoch`: the
    /// id is its key's current one, or was retired no earlier than that
    /// epoch (see `typed/keys.rs`). A walk reads an edge to a query key for
    /// which this is false as changed instead of fetching it (what it
    /// computed would not be kept).
    fn key_live_in(&self, _key: KeyId, _epoch: u64) -> bool {
        true
    }

    /// Queries: the memo stored for `key` and the revision it was verified at.
    fn memo(&self, _table: &Table, _key: KeyId) -> Option<(MemoRef, Revision)> {
        None
    }
    /// Queries: every memo in the table (for inspection and persistence).
    fn memos(&self, _table: &Table) -> Vec<(KeyId, MemoRef, Revision)> {
        Vec::new()
    }
    /// Queries: number of memos in the table.
    fn table_len(&self, _table: &Table) -> usize {
        0
    }
    /// Queries: `table` (of a state in `history` and of epoch `epoch`) with
    /// `items` inserted where they are verified later than what it holds,
    /// or `None` if nothing would change. An item under a key id retired
    /// before `epoch` is left out (a state newer than a retirement never
    /// holds a memo under the retired id: `typed/keys.rs`).
    fn insert_memos(
        &self,
        _table: &Table,
        _items: &[Publish],
        _history: History,
        _epoch: u64,
    ) -> Option<Table> {
        None
    }
    /// Queries: `table` (of a state in `history`) keeping only the `keep`
    /// memos verified most recently (the rest are dropped entirely and
    /// re-execute on demand), or `None` if it holds few enough (an eighth
    /// over `keep` is tolerated, so that eviction runs once per many
    /// inserts). Among memos verified at one revision, those of `fresh`
    /// (just inserted) are kept first. A memo that read something untracked
    /// and is verified at `now` (the state's revision) is never dropped: a
    /// re-execution at that revision would be a twin with its identity and
    /// maybe another value, and could vouch for the first one's dependents.
    fn evict(
        &self,
        _table: &Table,
        _keep: usize,
        _history: History,
        _now: Revision,
        _fresh: &[Publish],
    ) -> Option<Table> {
        None
    }
    /// Garbage: `table` without the memos last known valid before `before`
    /// (queries) or the tombstones written before `before` (inputs), and
    /// how many entries went; `None` if none qualifies. With `retire` (the
    /// database's own table, in that epoch), the ids of the keys dropped are
    /// retired, and memos under ids retired earlier are dropped too.
    fn sweep(
        &self,
        _table: &Table,
        _before: Revision,
        _retire: Option<&Epoch>,
    ) -> Option<(Table, usize)> {
        None
    }
    /// Queries: `f` of the dependency of every edge of every memo in
    /// `table`.
    fn each_dep(&self, _table: &Table, _f: &mut dyn FnMut(Dep)) {}
    /// Inputs and queries (the database's own collection, after its
    /// sweep): retires, in `epoch`, the ids of this kind's keys that have
    /// no entry in `table` and are not `referenced` (by an edge of a memo
    /// of the state being made), unless interned since the previous call
    /// (see `KeyIds::retire_unused` in `typed/keys.rs`). Returns how many.
    fn retire_unused(
        &self,
        _table: &Table,
        _referenced: &dyn Fn(KeyId) -> bool,
        _epoch: &Epoch,
    ) -> usize {
        0
    }
    /// Key ids retired in epochs that have ended become reusable; returns
    /// how many.
    fn release_keys(&self) -> usize {
        0
    }
    /// An estimate of what `table` holds (shallow: heap data owned by keys
    /// and values is not followed).
    fn footprint(&self, _table: &Table) -> Footprint {
        Footprint::default()
    }
    /// Queries: runs the body for `key` as `execution` (which records its
    /// reads) and builds the memo, comparing with `old` for early cutoff.
    fn execute(
        self: Arc<Self>,
        _execution: Execution,
        _key: KeyId,
        _old: Option<MemoRef>,
    ) -> BoxFuture<'static, Result<MemoRef>> {
        Box::pin(async {
            Err(crate::Error::internal(
                "execute called on a non-query ingredient",
            ))
        })
    }
}

/// What one ingredient's table holds, estimated.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Footprint {
    /// Memos (queries) or slots with a value (inputs) or values (interned).
    pub entries: usize,
    /// Input slots that are tombstones.
    pub tombstones: usize,
    /// Keys (or values) known to the kind's id table.
    pub keys: usize,
    /// Estimated bytes of all the above.
    pub bytes: usize,
}

/// `TypeId`s are already hashes: use their bits directly.
#[derive(Default, Clone, Copy)]
pub(crate) struct TypeIdHasher(u64);

impl std::hash::Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

pub(crate) type TypeIdMap =
    HashMap<TypeId, IngredientIndex, std::hash::BuildHasherDefault<TypeIdHasher>>;

/// All ingredients of a database, frozen at `build()`.
pub(crate) struct Registry {
    by_type: TypeIdMap,
    ingredients: Vec<Arc<dyn Ingredient>>,
}

impl Registry {
    /// A registry of `ingredients` (the index is the position), found by
    /// kind through `by_type`.
    pub(crate) fn new(by_type: TypeIdMap, ingredients: Vec<Arc<dyn Ingredient>>) -> Registry {
        Registry {
            by_type,
            ingredients,
        }
    }

    pub(crate) fn get(&self, index: IngredientIndex) -> Result<&Arc<dyn Ingredient>> {
        self.ingredients
            .get(index.as_usize())
            .ok_or_else(|| crate::Error::internal(format!("no ingredient {index}")))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (IngredientIndex, &Arc<dyn Ingredient>)> {
        self.ingredients
            .iter()
            .enumerate()
            .map(|(i, ing)| (IngredientIndex::new(i as u32), ing))
    }

    /// `Kind(key)`, for messages and reports.
    pub(crate) fn describe(&self, dep: Dep) -> String {
        if dep == UNTRACKED {
            return String::from("an untracked read");
        }
        match self.get(dep.ingredient) {
            Ok(ing) => format!("{}({})", ing.name(), ing.debug_key(dep.key)),
            Err(_) => format!("?{}({})", dep.ingredient, dep.key),
        }
    }

    /// The index of the ingredient registered for the kind with `type_id`.
    #[inline]
    pub(crate) fn index_of(&self, type_id: TypeId) -> Option<IngredientIndex> {
        self.by_type.get(&type_id).copied()
    }

    /// The ingredient at `index` as its concrete (typed) type.
    #[inline]
    pub(crate) fn downcast<T: Ingredient>(&self, index: IngredientIndex) -> Option<&T> {
        let ing = self.ingredients.get(index.as_usize())?;
        let any: &dyn Any = ing.as_ref();
        any.downcast_ref::<T>()
    }
}
