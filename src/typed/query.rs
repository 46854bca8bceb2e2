//! The typed layer for derived queries: memo tables keyed by the query's key,
//! running the body (with panics caught and a tracing span), and early-cutoff
//! comparison. Everything else is the erased engine's.

use std::sync::Arc;

use tracing::Instrument;

use crate::api::cx::QueryCx;
use crate::api::kinds::AsyncQuery;
use crate::api::registry::{DatabaseBuilder, TypedLookup};
use crate::engine::counters::Counters;
use crate::engine::epoch::Epoch;
use crate::engine::execution::Execution;
use crate::engine::fetch::{Found, Hint};
use crate::engine::ingredient::{Footprint, Ingredient, IngredientKind, Registry};
use crate::engine::storage::{
    Dep, Edge, Entry, History, IngredientIndex, KeyId, Memo, MemoRef, MemoTable, Publish, State,
    Table, new_map, typed_memo,
};
use crate::error::{Error, Result};
use crate::persist::{Codec, CodecInfo, KIND_QUERY, PersistKind, Stage, stage::KeyedStage};
use crate::revision::Revision;
use crate::typed::keys::{ARC_OVERHEAD, KeyIds, map_bytes};
use crate::util::{
    BoxFuture, CatchUnwind, SafeDebug, debug_string, lock, short_type_name, values_equal,
};
use facet::Facet;

type TableOf<Q> = MemoTable<<Q as AsyncQuery>::Key, <Q as AsyncQuery>::Value>;

pub(crate) struct QueryIngredient<Q: AsyncQuery> {
    query: Arc<Q>,
    name: String,
    keys: KeyIds<Q::Key>,
    counters: Counters,
    /// Registered as persistent (its new memos are journaled for appends).
    journaled: bool,
    /// After an eviction that could not get down to the capacity (untracked
    /// memos of the current revision are kept), the revision and the size it
    /// stopped at: until the table grows by another eighth at that revision,
    /// evicting again would only sort it again (quadratic in a burst).
    stuck: std::sync::Mutex<Option<(Revision, usize)>>,
}

impl<Q: AsyncQuery> QueryIngredient<Q> {
    fn new(query: Q, journaled: bool) -> Self {
        QueryIngredient {
            query: Arc::new(query),
            name: short_type_name::<Q>(),
            keys: KeyIds::new(),
            counters: Counters::default(),
            journaled,
            stuck: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn register_with() -> String {
        format!(".query({})", short_type_name::<Q>())
    }

    pub(crate) fn key_id(&self, key: &Q::Key) -> Result<KeyId> {
        self.keys
            .intern(key)
            .ok_or_else(|| Error::internal(format!("{}: more than 2^32 keys", self.name)))
    }

    /// Q's index and typed ingredient in `registry`.
    #[inline]
    pub(crate) fn lookup_in(registry: &Registry) -> Result<(IngredientIndex, &Self)> {
        registry.typed::<Q, Self>(IngredientKind::Query, Self::register_with)
    }

    /// The warm-hit path, written once for `View::query` and
    /// `QueryCx::query`: the memo for `key` if `state` holds one verified at
    /// `at` (no lock, no allocation), with its value; else how to fetch it.
    /// A hit is counted here if `COUNT` (`View::query`); `QueryCx::query`
    /// counts its hits in its execution's recorder.
    #[inline]
    pub(crate) fn warm<'s, const COUNT: bool>(
        &self,
        state: &'s State,
        index: IngredientIndex,
        key: &Q::Key,
        at: Revision,
        history: History,
    ) -> Result<Warm<'s, Q::Value>> {
        let table: &TableOf<Q> = state.table(index)?;
        let entry = match table.get(key) {
            Some(entry)
                if entry.verified_at == at
                    || (history == History::Main && entry.memo.meta.verified_main() == at) =>
            {
                entry
            }
            // A memo to revalidate: its key's id is known (no interning),
            // and `fetch` need not look it up again in this state…
            Some(entry) if self.keys.live_in(entry.memo.meta.key, state.epoch.seq()) => {
                return Ok(Warm::Miss(Some(entry)));
            }
            // …unless that id was retired before this state's epoch (its
            // release may come while this read runs): the key is read under
            // its current id. `insert_memos` keeps such memos out of newer
            // states; this guards the one path that copies older tables in
            // (a forking snapshot resetting to its origin's memos).
            Some(_) => return Ok(Warm::Miss(None)),
            None => return Ok(Warm::Miss(None)),
        };
        if COUNT {
            self.counters.hits.incr();
        }
        Ok(match entry.memo.read() {
            Some(result) => Warm::Hit(&entry.memo, result),
            // Loaded from disk and undecodable: recompute it.
            None => {
                if !COUNT {
                    self.counters.hits.incr();
                }
                Warm::Undecodable(entry)
            }
        })
    }

    /// Counts a warm hit of this kind.
    #[inline]
    pub(crate) fn count_hit(&self) {
        self.counters.hits.incr();
    }
}

/// The outcome of [`QueryIngredient::warm`].
pub(crate) enum Warm<'s, V> {
    /// A memo verified at the revision asked, and its value.
    Hit(&'s Arc<Memo<V>>, Result<V>),
    /// No memo verified at the revision: fetch, given the entry the state
    /// holds for the key, if any (its memo gives the key's id).
    Miss(Option<&'s Entry<V>>),
    /// A memo verified at the revision, loaded from disk, whose value does
    /// not decode: fetch to replace it.
    Undecodable(&'s Entry<V>),
}

impl<V: Send + Sync + 'static> Warm<'_, V> {
    /// For a miss: how to fetch, and the entry found (owned).
    #[inline]
    pub(crate) fn into_miss(self) -> Option<(Hint, Option<Found>)> {
        let found = |e: &Entry<V>| -> Found { (e.memo.clone(), e.verified_at) };
        match self {
            Warm::Hit(..) => None,
            Warm::Miss(entry) => Some((Hint::None, entry.map(found))),
            Warm::Undecodable(entry) => {
                Some((Hint::Replace(entry.memo.clone()), Some(found(entry))))
            }
        }
    }
}

impl<Q: AsyncQuery> Ingredient for QueryIngredient<Q> {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> IngredientKind {
        IngredientKind::Query
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn journaled(&self) -> bool {
        self.journaled
    }

    fn empty_table(&self) -> Table {
        Arc::new(new_map::<Q::Key, Entry<Q::Value>>())
    }

    fn debug_key(&self, key: KeyId) -> String {
        self.keys.debug(key)
    }

    fn memo(&self, table: &Table, key: KeyId) -> Option<(MemoRef, Revision)> {
        let table = table.downcast_ref::<TableOf<Q>>()?;
        self.keys
            .with(key, |k| {
                let entry = table.get(k)?;
                Some((entry.memo.clone() as MemoRef, entry.verified_at))
            })
            .flatten()
    }

    fn memos(&self, table: &Table) -> Vec<(KeyId, MemoRef, Revision)> {
        let Some(table) = table.downcast_ref::<TableOf<Q>>() else {
            return Vec::new();
        };
        table
            .values()
            .map(|e| (e.memo.meta.key, e.memo.clone() as MemoRef, e.verified_at))
            .collect()
    }

    fn table_len(&self, table: &Table) -> usize {
        table.downcast_ref::<TableOf<Q>>().map_or(0, |t| t.len())
    }

    fn insert_memos(
        &self,
        table: &Table,
        items: &[Publish],
        history: History,
        epoch: u64,
    ) -> Option<Table> {
        let current = table.downcast_ref::<TableOf<Q>>()?;
        let mut next: Option<TableOf<Q>> = None;
        for (key_id, memo, at) in items {
            // Not under an id retired before this state's epoch (see
            // `KeyIds`): the memo is dropped (it re-runs when next needed).
            // Nor a memo computed under another id that is not (an old
            // memo of the key, verified under the key's new id: its own id
            // would outlive its epoch in this state).
            if !self.keys.live_in(*key_id, epoch) || !self.keys.live_in(memo.meta().key, epoch) {
                continue;
            }
            let (Some(key), Ok(memo)) = (self.keys.value(*key_id), typed_memo::<Q::Value>(memo))
            else {
                continue;
            };
            let map = next.as_ref().unwrap_or(current);
            // Work flowing back never costs work: keep a memo verified at a
            // newer revision (by its entry or, in the main history, on the
            // memo itself) over an older snapshot's.
            if map
                .get(&key)
                .is_some_and(|e| e.memo.meta.latest_verified(e.verified_at, history) >= *at)
            {
                continue;
            }
            next.get_or_insert_with(|| current.clone()).insert(
                key,
                Entry {
                    memo,
                    verified_at: *at,
                },
            );
        }
        next.map(|t| Arc::new(t) as Table)
    }

    fn evict(
        &self,
        table: &Table,
        keep: usize,
        history: History,
        now: Revision,
        fresh: &[Publish],
    ) -> Option<Table> {
        let current = table.downcast_ref::<TableOf<Q>>()?;
        let len = current.len();
        if len <= keep + keep / 8 {
            return None;
        }
        if let Some((at, floor)) = *lock(&self.stuck)
            && at == now
            && len <= floor + floor / 8
        {
            return None;
        }
        let fresh: std::collections::HashSet<KeyId, ahash::RandomState> =
            fresh.iter().map(|(k, _, _)| *k).collect();
        // Least recently verified first, and among equals, what was not
        // just inserted, then the oldest key (lowest id): deterministic,
        // whatever the map's (randomly seeded) order.
        // Untracked and current memos are kept: a re-run now could be a
        // twin with another value (see `Ingredient::evict`).
        type Age = (Revision, bool, KeyId);
        let mut by_age: Vec<(Age, &Q::Key, bool)> = current
            .iter()
            .map(|(k, e)| {
                let at = e.memo.meta.latest_verified(e.verified_at, history);
                let kept = at >= now && e.memo.meta.untracked();
                let id = e.memo.meta.key;
                ((at, fresh.contains(&id), id), k, kept)
            })
            .collect();
        by_age.sort_unstable_by_key(|(age, _, _)| *age);
        let mut next = current.clone();
        let mut dropped = 0;
        for (_, key, kept) in &by_age {
            if dropped == len - keep {
                break;
            }
            if *kept {
                continue;
            }
            next.remove(*key);
            dropped += 1;
        }
        let left = len - dropped;
        *lock(&self.stuck) = (left > keep + keep / 8).then_some((now, left));
        if dropped == 0 {
            return None;
        }
        self.counters.evictions.add(dropped as u64);
        Some(Arc::new(next))
    }

    fn sweep(
        &self,
        table: &Table,
        before: Revision,
        retire: Option<&Epoch>,
    ) -> Option<(Table, usize)> {
        let current = table.downcast_ref::<TableOf<Q>>()?;
        let unused: Vec<(&Q::Key, KeyId)> = current
            .iter()
            .filter(|(_, e)| {
                e.memo.meta.latest_verified(e.verified_at, History::Main) < before
                    // The database's table keeps no memo under a retired id
                    // (one published while this collection retired it).
                    || (retire.is_some() && !self.keys.is_live(e.memo.meta.key))
            })
            .map(|(k, e)| (k, e.memo.meta.key))
            .collect();
        if unused.is_empty() {
            return None;
        }
        let mut next = current.clone();
        for (key, _) in &unused {
            next.remove(*key);
        }
        // The memo was the key's only entry: its id goes.
        if let Some(epoch) = retire {
            let ids: Vec<KeyId> = unused.iter().map(|(_, id)| *id).collect();
            self.keys.retire(&ids, epoch);
        }
        Some((Arc::new(next), unused.len()))
    }

    fn each_dep(&self, table: &Table, f: &mut dyn FnMut(Dep)) {
        let Some(current) = table.downcast_ref::<TableOf<Q>>() else {
            return;
        };
        for e in current.values() {
            for edge in e.memo.meta.deps.iter() {
                f(edge.dep);
            }
        }
    }

    fn retire_unused(
        &self,
        table: &Table,
        referenced: &dyn Fn(KeyId) -> bool,
        epoch: &Epoch,
    ) -> usize {
        let Some(current) = table.downcast_ref::<TableOf<Q>>() else {
            return 0;
        };
        let held = current.values().map(|e| e.memo.meta.key);
        self.keys
            .retire_unheld(current.len(), held, referenced, epoch)
    }

    fn release_keys(&self) -> usize {
        self.keys.release()
    }

    fn names_key(&self, key: KeyId) -> bool {
        self.keys.names(key)
    }

    fn key_live_in(&self, key: KeyId, epoch: u64) -> bool {
        self.keys.live_in(key, epoch)
    }

    fn footprint(&self, table: &Table) -> Footprint {
        let Some(current) = table.downcast_ref::<TableOf<Q>>() else {
            return Footprint::default();
        };
        let edges: usize = current.values().map(|e| e.memo.meta.deps.len()).sum();
        let per_memo = std::mem::size_of::<Memo<Q::Value>>() + ARC_OVERHEAD;
        let keys = self.keys.len();
        Footprint {
            entries: current.len(),
            tombstones: 0,
            keys,
            bytes: map_bytes::<Q::Key, Entry<Q::Value>>(current.len())
                + current.len() * per_memo
                + edges * std::mem::size_of::<Edge>()
                + self.keys.bytes(),
        }
    }

    fn execute(
        self: Arc<Self>,
        execution: Execution,
        key_id: KeyId,
        old: Option<MemoRef>,
    ) -> BoxFuture<'static, Result<MemoRef>> {
        Box::pin(async move {
            // An id reclaimed since it was read (a walk finds it first and
            // reads the edge as changed; this is the rare race).
            let key = self
                .keys
                .value(key_id)
                .ok_or_else(|| Error::internal("unknown key id"))?;
            let span = tracing::debug_span!(
                "picante.execute",
                query = %self.name,
                key = %SafeDebug(&key),
                revision = %execution.revision()
            );
            let cx = QueryCx::new(execution.clone());
            let body = self.query.execute(&cx, key.clone());
            let value = match CatchUnwind::new(body).instrument(span).await {
                Ok(result) => result.map_err(Error::from),
                Err(payload) => {
                    let err = Error::panic(&self.name, debug_string(&key), &*payload);
                    tracing::warn!(error = %err, "query panicked");
                    Err(err)
                }
            };
            let old = old.and_then(|m| typed_memo::<Q::Value>(&m).ok());
            let equal_to = match (&value, &old) {
                (Ok(new), Some(old)) => match old.result() {
                    Ok(prev) if values_equal(prev, new) => Some(&old.meta),
                    _ => None,
                },
                _ => None,
            };
            let meta = execution.finish(equal_to);
            if equal_to.is_some_and(|old| old.changed_at == meta.changed_at) {
                self.counters.cutoffs.incr();
            }
            Ok(Arc::new(Memo::new(meta, value)) as MemoRef)
        })
    }
}

/// The persisted side of a persistent query kind.
struct PersistentQuery<Q: AsyncQuery> {
    ing: Arc<QueryIngredient<Q>>,
    codec: Codec<Q::Key, Q::Value>,
}

impl<Q: AsyncQuery> PersistKind for PersistentQuery<Q> {
    fn info(&self) -> &CodecInfo {
        &self.codec.info
    }

    fn version(&self) -> u32 {
        Q::VERSION
    }

    fn encode_keys(&self, ids: &[KeyId]) -> Result<Vec<u8>> {
        self.codec.encode_key_ids(&self.ing.keys, ids)
    }

    fn encode_memo_value(&self, memo: &MemoRef) -> Result<Option<Vec<u8>>> {
        let memo = typed_memo::<Q::Value>(memo)?;
        // A memo loaded from disk and saved again keeps its bytes.
        if let Some(bytes) = memo.encoded_bytes() {
            return Ok(Some(bytes.to_vec()));
        }
        match memo.result() {
            Ok(value) => (self.codec.encode_value)(value).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn stage(&self) -> Box<dyn Stage + '_> {
        Box::new(KeyedStage::new(&self.codec, &self.ing.keys))
    }
}

impl DatabaseBuilder {
    /// Registers a derived query kind. `query` is an instance: it may hold
    /// state its body uses (an RPC client, a thread pool handle…).
    pub fn query<Q: AsyncQuery>(self, query: Q) -> Self {
        self.push::<Q>(Arc::new(QueryIngredient::new(query, false)))
    }

    /// Registers a derived query kind whose memos are saved by
    /// [`save_cache`](crate::View::save_cache), under its short type name.
    /// See [`persistent_query_as`](Self::persistent_query_as).
    pub fn persistent_query<Q: AsyncQuery>(self, query: Q) -> Self
    where
        Q::Key: Facet<'static>,
        Q::Value: Facet<'static>,
    {
        self.persistent_query_as(query, &short_type_name::<Q>())
    }

    /// Registers a persistent query kind under a stable `name`. A memo is
    /// saved when it is not an error and everything it read is persistent;
    /// others simply re-run after a load. `build()` fails if the key or
    /// value type cannot be persisted faithfully.
    pub fn persistent_query_as<Q: AsyncQuery>(self, query: Q, name: &str) -> Self
    where
        Q::Key: Facet<'static>,
        Q::Value: Facet<'static>,
    {
        match Codec::new(name.to_string(), KIND_QUERY) {
            Ok(codec) => {
                let ing = Arc::new(QueryIngredient::new(query, true));
                let persist = Arc::new(PersistentQuery {
                    ing: ing.clone(),
                    codec,
                });
                self.push_persistent::<Q>(ing, persist)
            }
            Err(e) => self.fail(e),
        }
    }
}
