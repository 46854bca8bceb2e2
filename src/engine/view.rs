//! Views: the database and its snapshots. A view publishes its current
//! `State` through `arc-swap`; readers load it without locks, writers and memo
//! inserts swap in a new one. `Shared` is what every view of one database has
//! in common (registry, in-flight table, counters, key and interned tables
//! inside the ingredients).

use std::any::Any;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::engine::counters::Counter;
use crate::engine::epoch::Epoch;
use crate::engine::events::{Bus, EngineEvent, Write, Written};
use crate::engine::fetch::Found;
use crate::engine::inflight::{InFlight, Node};
use crate::engine::ingredient::{Ingredient, IngredientKind, Registry};
use crate::engine::journal::Journal;
use crate::engine::limits::{Limits, Swept};
use crate::engine::pending::Pending;
use crate::engine::storage::{
    Dep, DepHash, ForkId, History, IngredientIndex, KeyId, MAIN_FORK, MemoRef, Publish, State,
    Table,
};
use crate::error::Result;
use crate::revision::{Durability, Revision};
use crate::util::{catch, lock, read, write};

/// Everything the views of one database share.
pub(crate) struct Shared {
    registry: Registry,
    inflight: InFlight,
    dependency_checks: Counter,
    next_fork: AtomicU64,
    /// Whether any kind is journaled.
    journaling: bool,
    /// Changes of journaled kinds (see `journal.rs`).
    journal: Mutex<Journal>,
    /// What a layer above keeps per database, opaque to the engine
    /// (persistence: its settings, kinds and cache link).
    attachment: Box<dyn Any + Send + Sync>,
    /// Input changes and executions, for observers.
    events: Bus,
    /// Capacities and the collection rule.
    limits: Limits,
    /// Saves and appends in progress: while any is, no key id is released
    /// (they resolve the ids of the state they write: `engine/epoch.rs`).
    ids_held: Mutex<usize>,
}

impl Shared {
    /// The kinds, frozen at `build()`.
    #[inline]
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Executions claimed and not finished, shared by every view.
    #[inline]
    pub(crate) fn inflight(&self) -> &InFlight {
        &self.inflight
    }

    /// Dependency edges examined by walks.
    #[inline]
    pub(crate) fn dependency_checks(&self) -> &Counter {
        &self.dependency_checks
    }

    /// The journal of persistent changes (appended to by commits and
    /// executions in the main history, drained by saves and appends).
    pub(crate) fn journal(&self) -> &Mutex<Journal> {
        &self.journal
    }

    /// What the layer above attached (opaque here).
    pub(crate) fn attachment(&self) -> &(dyn Any + Send + Sync) {
        &*self.attachment
    }

    /// The event bus.
    #[inline]
    pub(crate) fn events(&self) -> &Bus {
        &self.events
    }

    /// Keeps every retired key id resolvable (no release) while the guard
    /// lives: for a save or an append, which resolve the ids of a state
    /// and of the journal while the database goes on.
    pub(crate) fn hold_ids(self: &Arc<Self>) -> IdsHeld {
        *lock(&self.ids_held) += 1;
        IdsHeld(self.clone())
    }

    /// Notes a change of a persistent kind in the database's history.
    pub(crate) fn note_change(&self, revision: Revision, dep: Dep) {
        if self.journaling
            && self
                .registry
                .get(dep.ingredient)
                .is_ok_and(|ing| ing.journaled())
        {
            lock(&self.journal).push(revision, dep);
        }
    }
}

/// See [`Shared::hold_ids`].
pub(crate) struct IdsHeld(Arc<Shared>);

impl Drop for IdsHeld {
    fn drop(&mut self) {
        let mut held = lock(&self.0.ids_held);
        *held = held.saturating_sub(1);
    }
}

/// One view: the database itself, or a snapshot.
pub(crate) struct ViewCore {
    shared: Arc<Shared>,
    state: ArcSwap<State>,
    /// For a snapshot: the view its memos are offered to (and borrowed from)
    /// while it stays in `parent_fork`, the history it was taken in.
    ///
    /// Weak: a view never keeps another alive (S16: memory is O(live views);
    /// a chain of forks of forks neither leaks its ancestors nor frees them
    /// by one deep recursive drop). Offering work to a view nobody holds any
    /// more is pointless anyway.
    parent: Option<Weak<ViewCore>>,
    parent_fork: ForkId,
    /// This view's current revision, for `View::subscribe_revisions`
    /// (sent after each commit that changed something).
    revisions: watch::Sender<Revision>,
    /// Memos published but not yet merged into `state`.
    pending: Pending,
    /// Memos in `state` at the last merge (to size the next one).
    merged_len: AtomicUsize,
    /// Serializes this view's writers (never taken by readers).
    writer: Mutex<()>,
    /// The largest identity (`changed_at`, or an edge's `seen`) of any memo
    /// published into this view: with memos revalidated from a newer parent
    /// (see `find`), an older snapshot can hold identities from revisions
    /// after its own.
    ///
    /// Architecture invariant: a fork's revision numbers continue from its
    /// base and so alias the main history's later ones; a forked view must
    /// never hold a memo carrying an identity newer than its base, or a fork
    /// memo with an equal `changed_at` would pass for it. When a snapshot
    /// that holds such memos forks, its memo tables are reset to `origin`.
    newest_identity: AtomicU64,
    /// Memo tables known to carry no identity newer than their revision
    /// (the state this snapshot was created with, or an ancestor's).
    origin: Arc<State>,
    /// Publications and merges take this shared; the commit that forks this
    /// view takes it exclusively, so that no memo published on behalf of the
    /// old history lands in the fork after its reset.
    gate: RwLock<()>,
}

/// A publication of at least this many memos of one kind is merged into the
/// state directly instead of going through the pending buffer.
const DIRECT_MERGE: usize = 64;
/// The pending buffer is merged once it holds this many memos, or a quarter
/// of what the state holds if that is more: a merge copies each touched node
/// of the persistent maps once, so merging many memos at a time amortizes
/// the copies (total merge work stays linear in the number of memos).
const MERGE_AT: usize = 1024;

impl ViewCore {
    /// What every view of this database shares.
    #[inline]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The current state (lock-free; a cheap guard).
    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<State>> {
        self.state.load()
    }

    /// The current state, as an owned pointer to pin.
    #[inline]
    pub(crate) fn load_full(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Whether this is a snapshot that has left the history it was taken in
    /// (it set its own inputs).
    pub(crate) fn is_forked(&self) -> bool {
        self.parent.is_some() && self.state.load().fork != self.parent_fork
    }

    /// A receiver of this view's revision, marked as seen at the current one.
    pub(crate) fn subscribe_revisions(&self) -> watch::Receiver<Revision> {
        self.revisions.subscribe()
    }

    pub(crate) fn new_database(
        registry: Registry,
        limits: Limits,
        attachment: Box<dyn Any + Send + Sync>,
    ) -> Arc<ViewCore> {
        let tables: Box<[Table]> = registry.iter().map(|(_, ing)| ing.empty_table()).collect();
        let journaling = registry.iter().any(|(_, ing)| ing.journaled());
        let state = State {
            revision: Revision::FIRST,
            fork: MAIN_FORK,
            last_changed: [Revision::ZERO; Durability::COUNT],
            tables,
            epoch: Epoch::first(),
        };
        let state = Arc::new(state);
        Arc::new(ViewCore {
            shared: Arc::new(Shared {
                registry,
                inflight: InFlight::new(),
                dependency_checks: Counter::default(),
                next_fork: AtomicU64::new(MAIN_FORK + 1),
                journaling,
                journal: Mutex::new(Journal::default()),
                attachment,
                events: Bus::new(),
                limits,
                ids_held: Mutex::new(0),
            }),
            state: ArcSwap::new(state.clone()),
            parent: None,
            parent_fork: MAIN_FORK,
            revisions: watch::Sender::new(Revision::FIRST),
            pending: Pending::new(),
            merged_len: AtomicUsize::new(0),
            writer: Mutex::new(()),
            newest_identity: AtomicU64::new(0),
            // The database never forks (only snapshots reset to their
            // origin), and its first state holds no key: it belongs to no
            // epoch of the database's chain, so it keeps none alive (an
            // epoch is kept by every older one: `epoch.rs`).
            origin: Arc::new(State {
                epoch: Epoch::first(),
                ..State::clone(&state)
            }),
            gate: RwLock::new(()),
        })
    }

    /// A new view of this view's current state: a few pointer copies (after
    /// folding memos still pending in this view into its state, so the
    /// snapshot keeps them even if this view later replaces them).
    pub(crate) fn snapshot(self: &Arc<Self>) -> Arc<ViewCore> {
        self.merge_pending_now(true);
        let state = self.state.load_full();
        // Offer work to the root of this history: the database, or the
        // forked snapshot this one was taken from.
        let (parent, parent_fork) = match &self.parent {
            Some(p) if state.fork == self.parent_fork => (p.clone(), self.parent_fork),
            _ => (Arc::downgrade(self), state.fork),
        };
        let newest = self.newest_identity.load(Ordering::Acquire);
        let origin = if newest <= state.revision.as_u64() {
            state.clone()
        } else {
            self.origin.clone()
        };
        Arc::new(ViewCore {
            shared: self.shared.clone(),
            revisions: watch::Sender::new(state.revision),
            state: ArcSwap::new(state),
            parent: Some(parent),
            parent_fork,
            pending: Pending::new(),
            merged_len: AtomicUsize::new(0),
            writer: Mutex::new(()),
            newest_identity: AtomicU64::new(newest),
            origin,
            gate: RwLock::new(()),
        })
    }

    /// Inserts memos of ingredient `index` into this view's current state,
    /// keeping whatever is newer.
    pub(crate) fn insert_memos(
        &self,
        index: IngredientIndex,
        ing: &dyn Ingredient,
        items: &[Publish],
    ) {
        self.update_tables(|state| {
            let table = state.tables.get(index.as_usize())?;
            let capacity = self.shared.limits.capacity(index);
            Some(vec![(
                index,
                insert_guarded(ing, table, items, state, capacity)?,
            )])
        });
    }

    /// Swaps in a state whose tables `f` replaced (`None`: nothing to do),
    /// retrying if another swap won the race.
    fn update_tables(&self, f: impl Fn(&State) -> Option<Vec<(IngredientIndex, Table)>>) {
        self.update_tables_in(f, false);
    }

    /// `update_tables`; with `next_epoch`, the new state starts the epoch
    /// after its base's (a collection that retired key ids).
    fn update_tables_in(
        &self,
        f: impl Fn(&State) -> Option<Vec<(IngredientIndex, Table)>>,
        next_epoch: bool,
    ) {
        let mut cur = self.state.load_full();
        loop {
            let Some(changes) = f(&cur) else {
                return;
            };
            if changes.is_empty() {
                return;
            }
            let mut next = State::clone(&cur);
            for (index, table) in changes {
                next.tables[index.as_usize()] = table;
            }
            if next_epoch {
                next.epoch = cur.epoch.successor();
            }
            let prev = self.state.compare_and_swap(&cur, Arc::new(next));
            if Arc::ptr_eq(&*prev, &cur) {
                return;
            }
            cur = arc_swap::Guard::into_inner(prev);
        }
    }

    /// Makes memos computed or verified in history `fork` visible in this
    /// view, if it is still in that history: small publications go to the
    /// pending buffer, large ones straight into the state.
    fn publish(
        &self,
        index: IngredientIndex,
        ing: &dyn Ingredient,
        items: &[Publish],
        fork: ForkId,
    ) {
        {
            let _gate = read(&self.gate);
            if self.state.load().fork != fork {
                // This view forked since: what the old history computed is
                // not offered to the fork (see `newest_identity`).
                return;
            }
            let newest = items
                .iter()
                .map(|(_, m, _)| m.meta().newest_identity.as_u64())
                .max()
                .unwrap_or(0);
            self.newest_identity.fetch_max(newest, Ordering::AcqRel);
            // A kind with a capacity is merged at once, so that its bound
            // holds at every publication (not only at the next merge).
            if items.len() >= DIRECT_MERGE || self.shared.limits.capacity(index).is_some() {
                self.insert_memos(index, ing, items);
                return;
            }
            let history = History::of(fork);
            for (key, memo, at) in items {
                self.pending.insert(
                    Dep {
                        ingredient: index,
                        key: *key,
                    },
                    memo,
                    *at,
                    history,
                );
            }
        }
        let threshold = MERGE_AT.max(self.merged_len.load(Ordering::Relaxed) / 4);
        if self.pending.len() >= threshold {
            self.merge_pending();
        }
    }

    /// Merges the pending buffer into the state in one swap (unless another
    /// merge is running).
    pub(crate) fn merge_pending(&self) {
        self.merge_pending_now(false)
    }

    fn merge_pending_now(&self, wait: bool) {
        let registry = &self.shared.registry;
        let gate = read(&self.gate);
        self.pending.merge_with(wait, |entries| {
            let mut by_ingredient: std::collections::HashMap<
                IngredientIndex,
                Vec<Publish>,
                ahash::RandomState,
            > = Default::default();
            for (dep, memo, at) in entries {
                by_ingredient
                    .entry(dep.ingredient)
                    .or_default()
                    .push((dep.key, memo.clone(), *at));
            }
            self.update_tables(|state| {
                let mut changes = Vec::new();
                for (index, items) in &by_ingredient {
                    let (Ok(ing), Some(table)) =
                        (registry.get(*index), state.tables.get(index.as_usize()))
                    else {
                        continue;
                    };
                    let capacity = self.shared.limits.capacity(*index);
                    if let Some(t) = insert_guarded(ing.as_ref(), table, items, state, capacity) {
                        changes.push((*index, t));
                    }
                }
                Some(changes)
            });
        });
        drop(gate);
        let state = self.state.load();
        let len = registry
            .iter()
            .filter_map(|(i, ing)| Some(ing.table_len(state.tables.get(i.as_usize())?)))
            .sum();
        self.merged_len.store(len, Ordering::Relaxed);
    }

    /// The best memo for `dep` in this view for a read at `pinned`'s
    /// revision `r`, with the revision it is known valid at: `r` itself (a
    /// hit), else the latest one — possibly one verified *after* `r` (an
    /// older snapshot reading its database, an access pinned to an older
    /// revision).
    ///
    /// Such a memo is revalidated at `r` like any other (validity is
    /// identity, and inputs come from the pinned state), instead of computing
    /// an equal twin with another `changed_at` — a twin that, once offered
    /// back, would make dependents of either look changed to the other
    /// (`s16_adopted_memo_stays_valid_after_its_snapshot_is_dropped`; S16:
    /// work flowing back never costs work). Only within one history: fork
    /// revision numbers alias the main history's, so a view that left
    /// `pinned`'s history offers only memos verified at or before `r` (all
    /// from before the fork), and a snapshot holding identities newer than
    /// its revision drops them when it forks (see `newest_identity`).
    ///
    /// Checks the pending buffer before the state (see `pending.rs` for why
    /// this order); the state is loaded after the buffer, and a view only
    /// ever leaves the main history, so a state still in `pinned`'s history
    /// proves the buffer held nothing from after a fork.
    ///
    /// `in_pinned` is the entry `pinned` holds for `dep`, if the caller has
    /// it: while the current state is `pinned` itself, it is what the table
    /// lookup would find. `merge_on_read`: a hit in the pending buffer merges
    /// it (see below).
    fn find(
        &self,
        dep: Dep,
        ing: &dyn Ingredient,
        pinned: &Arc<State>,
        in_pinned: Option<Found>,
        merge_on_read: bool,
    ) -> Option<(MemoRef, Revision)> {
        let r = pinned.revision;
        let main = pinned.fork == MAIN_FORK;
        let pending = self.pending.get(dep);
        if let Some((m, v)) = &pending
            && m.meta().effective_verified(*v, r, main) == r
        {
            // Someone reads what is still pending: merge, so the next reads
            // of these memos take the lock-free path. Only for a top-level
            // read: a body's warm reads look in its pinned state, which a
            // merge does not change, and a merge in the middle of a request
            // would make every later lookup of it search the new state
            // instead of using the entry its warm miss found (`in_pinned`);
            // the request merges when it ends.
            if merge_on_read {
                self.merge_pending();
            }
            return Some((m.clone(), r));
        }
        let state = self.state.load();
        let newer_ok = state.fork == pinned.fork;
        let effective = |(m, v): (MemoRef, Revision)| {
            let v = m.meta().effective_verified(v, r, main);
            (v <= r || newer_ok).then_some((m, v))
        };
        let pending = pending.and_then(effective);
        let stored = match in_pinned {
            Some(found) if Arc::ptr_eq(&state, pinned) => Some(found),
            _ => state
                .tables
                .get(dep.ingredient.as_usize())
                .and_then(|table| ing.memo(table, dep.key)),
        }
        .and_then(effective);
        newest(pending, stored)
    }

    /// Applies input changes computed by `f` from the current state, as one
    /// new revision. `f` returns the changed tables with their kinds'
    /// durabilities; returning none is a no-op that keeps the revision.
    pub(crate) fn commit(
        &self,
        f: impl FnOnce(&State, Revision) -> Result<Vec<Change>>,
    ) -> Result<Revision> {
        let _writer = lock(&self.writer);
        let base = self.state.load_full();
        let revision = base.revision.next();
        let changes = f(&base, revision)?;
        if changes.is_empty() {
            return Ok(base.revision);
        }
        // A snapshot that sets its own inputs leaves its original history.
        let forking = self.parent.is_some() && base.fork == self.parent_fork;
        let fork = if forking {
            self.shared.next_fork.fetch_add(1, Ordering::Relaxed)
        } else {
            base.fork
        };
        // Forking: no publication of the old history may land after this,
        // and memos carrying identities newer than the base must go.
        let _gate = forking.then(|| write(&self.gate));
        let reset =
            forking && self.newest_identity.load(Ordering::Acquire) > base.revision.as_u64();
        if reset {
            self.pending.clear();
            self.newest_identity
                .store(self.origin.revision.as_u64(), Ordering::Release);
            tracing::debug!("fork: memos from newer revisions dropped");
        }
        let registry = &self.shared.registry;
        let max_durability = changes
            .iter()
            .map(|c| c.durability)
            .max()
            .unwrap_or(Durability::Low);
        // Memo inserts may race with us; writers are serialized by `writer`,
        // so only memo tables can differ between `base` and the latest state.
        self.state.rcu(|latest| {
            let mut next = State::clone(latest);
            next.revision = revision;
            next.fork = fork;
            for d in 0..=max_durability.index() {
                next.last_changed[d] = revision;
            }
            if reset {
                for (index, ing) in registry.iter() {
                    if ing.kind() == IngredientKind::Query
                        && let Some(t) = self.origin.tables.get(index.as_usize())
                    {
                        next.tables[index.as_usize()] = t.clone();
                    }
                }
            }
            for change in &changes {
                next.tables[change.index.as_usize()] = change.table.clone();
            }
            next
        });
        if self.parent.is_none() {
            let written = || {
                changes.iter().flat_map(|change| {
                    change.keys.iter().map(|&(key, write)| Written {
                        dep: Dep {
                            ingredient: change.index,
                            key,
                        },
                        write,
                    })
                })
            };
            for w in written() {
                self.shared.note_change(revision, w.dep);
            }
            self.shared.events.send_with(|| EngineEvent::Inputs {
                revision,
                written: written().collect(),
                _ids_held: self.state.load().epoch.clone(),
            });
        }
        self.revisions.send_replace(revision);
        tracing::debug!(%revision, changed_kinds = changes.len(), "inputs changed");
        if self.parent.is_none()
            && let Some(rule) = self.shared.limits.collect
            && revision.as_u64().is_multiple_of(rule.every.max(1))
        {
            let before = revision.as_u64().saturating_sub(rule.unused_for);
            self.collect_locked(Revision::from_u64(before));
        }
        Ok(revision)
    }
}

impl ViewCore {
    /// Drops the memos last known valid before `before` and the tombstones
    /// written before it, from this view's current state. Creates no
    /// revision and changes no result: a dropped memo re-executes when next
    /// needed, and a key without a slot reads as absent, like a tombstone
    /// (a memo that saw the tombstone sees a different identity and
    /// re-executes; one that saw the key absent all along stays valid, and
    /// rightly so).
    pub(crate) fn collect(&self, before: Revision) -> Swept {
        let _writer = lock(&self.writer);
        self.collect_locked(before)
    }

    fn collect_locked(&self, before: Revision) -> Swept {
        self.merge_pending_now(true);
        let registry = &self.shared.registry;
        // The database's own collection also reclaims the key ids of what
        // it drops (retired in the current epoch; the swapped-in state
        // starts the next one). A snapshot's collection only drops memos.
        let reclaim = self.parent.is_none();
        let swept = std::cell::Cell::new(Swept::default());
        self.update_tables_in(
            |state| {
                let mut total = Swept::default();
                let mut changes = Vec::new();
                let retire = reclaim.then_some(&state.epoch);
                for (index, ing) in registry.iter() {
                    let Some(table) = state.tables.get(index.as_usize()) else {
                        continue;
                    };
                    let Some(Some((table, n))) = catch(|| ing.sweep(table, before, retire)) else {
                        continue;
                    };
                    match ing.kind() {
                        IngredientKind::Input => total.tombstones += n,
                        _ => total.memos += n,
                    }
                    changes.push((index, table));
                }
                if let Some(epoch) = retire
                    && retire_unused(registry, state, &changes, epoch) > 0
                    && changes.is_empty()
                {
                    // Ids were retired in this epoch: the state moves on to
                    // the next one even though no table changed.
                    if let Some((index, _)) = registry.iter().next()
                        && let Some(table) = state.tables.get(index.as_usize())
                    {
                        changes.push((index, table.clone()));
                    }
                }
                swept.set(total);
                Some(changes)
            },
            reclaim,
        );
        let swept = swept.get();
        let mut released = 0;
        if reclaim {
            // Not while a save or append resolves the ids of its state.
            let held = lock(&self.shared.ids_held);
            if *held == 0 {
                released = registry.iter().map(|(_, ing)| ing.release_keys()).sum();
            }
        }
        if swept != Swept::default() || released > 0 {
            tracing::debug!(
                memos = swept.memos,
                tombstones = swept.tombstones,
                released_key_ids = released,
                "garbage collected"
            );
        }
        swept
    }
}

/// After the database's collection swept `state` into `changes`: retires
/// the ids that nothing holds any more — no entry in their kind's table,
/// no edge of any memo of the new state naming them (see
/// `Ingredient::retire_unused`). Ids that an edge names stay (an absent
/// input a memo read, an evicted child of a live parent): retiring them
/// would make that memo read the edge as changed and re-execute. Ingredient
/// by ingredient, surviving a panic in the user's `Hash`/`Eq` (that kind
/// retires nothing this time). Returns how many were retired.
fn retire_unused(
    registry: &Registry,
    state: &State,
    changes: &[(IngredientIndex, Table)],
    epoch: &Epoch,
) -> usize {
    let table_of = |index: IngredientIndex| {
        changes
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, t)| t)
            .or_else(|| state.tables.get(index.as_usize()))
    };
    let mut referenced: std::collections::HashSet<Dep, DepHash> = Default::default();
    for (index, ing) in registry.iter() {
        if ing.kind() != IngredientKind::Query {
            continue;
        }
        if let Some(table) = table_of(index) {
            ing.each_dep(table, &mut |dep| {
                referenced.insert(dep);
            });
        }
    }
    let mut retired = 0;
    for (index, ing) in registry.iter() {
        if ing.kind() == IngredientKind::Interned {
            continue;
        }
        let Some(table) = table_of(index) else {
            continue;
        };
        let named = |key| {
            referenced.contains(&Dep {
                ingredient: index,
                key,
            })
        };
        match catch(|| ing.retire_unused(table, &named, epoch)) {
            Some(n) => retired += n,
            None => tracing::warn!(
                kind = ing.name(),
                "a key's Hash or Eq panicked while retiring unused key ids"
            ),
        }
    }
    if retired > 0 {
        tracing::debug!(retired, "retired key ids nothing holds");
    }
    retired
}

/// `ing.insert_memos`, then `ing.evict` for a kind with a capacity,
/// surviving a panic in the user's `Hash`/`Eq` of a key: the items are then
/// inserted one by one and those that panic are dropped (their memos simply
/// re-run when next needed), and an eviction that panics evicts nothing. A
/// merge never leaves the engine degraded because of user code.
fn insert_guarded(
    ing: &dyn Ingredient,
    table: &Table,
    items: &[Publish],
    state: &State,
    capacity: Option<usize>,
) -> Option<Table> {
    let inserted = insert_caught(ing, table, items, state)?;
    let Some(keep) = capacity else {
        return Some(inserted);
    };
    // Eviction removes keys, which runs their Hash and Eq: a panic there
    // keeps the table as inserted (over capacity until the next eviction).
    match catch(|| {
        ing.evict(
            &inserted,
            keep,
            History::of(state.fork),
            state.revision,
            items,
        )
    }) {
        Some(evicted) => Some(evicted.unwrap_or(inserted)),
        None => {
            tracing::warn!(
                kind = ing.name(),
                "a key's Hash or Eq panicked while evicting memos; none were evicted"
            );
            Some(inserted)
        }
    }
}

fn insert_caught(
    ing: &dyn Ingredient,
    table: &Table,
    items: &[Publish],
    state: &State,
) -> Option<Table> {
    let history = History::of(state.fork);
    let epoch = state.epoch.seq();
    if let Some(result) = catch(|| ing.insert_memos(table, items, history, epoch)) {
        return result;
    }
    let mut current: Option<Table> = None;
    for item in items {
        let base = current.as_ref().unwrap_or(table);
        match catch(|| ing.insert_memos(base, std::slice::from_ref(item), history, epoch)) {
            Some(Some(next)) => current = Some(next),
            Some(None) => {}
            None => tracing::warn!(
                kind = ing.name(),
                "a key's Hash or Eq panicked while merging memos; the memo is dropped"
            ),
        }
    }
    current
}

/// Input changes of one kind, from one commit.
pub(crate) struct Change {
    pub index: IngredientIndex,
    pub table: Table,
    pub durability: Durability,
    /// Keys whose slots changed, and how.
    pub keys: Vec<(KeyId, Write)>,
}

impl ViewCore {
    /// Installs tables loaded from a cache as revision `revision` of a fresh
    /// database. Every loaded memo is walked once before reuse.
    /// Installs a loaded cache, unless the view was written to since it was
    /// fresh (then returns `false` and changes nothing).
    pub(crate) fn install_loaded(
        &self,
        revision: Revision,
        tables: Vec<(IngredientIndex, Table)>,
    ) -> bool {
        let _writer = lock(&self.writer);
        if self.state.load().revision != Revision::FIRST {
            return false;
        }
        self.state.rcu(|latest| {
            let mut next = State::clone(latest);
            next.revision = revision;
            next.last_changed = [revision; Durability::COUNT];
            for (index, table) in &tables {
                if let Some(slot) = next.tables.get_mut(index.as_usize()) {
                    *slot = table.clone();
                }
            }
            next
        });
        self.merged_len.store(0, Ordering::Relaxed);
        self.revisions.send_replace(revision);
        true
    }
}

/// The context of one read: which view, at which pinned state, on behalf of
/// which in-flight fetch (for dependency cycles), at what depth.
#[derive(Clone)]
pub(crate) struct Access {
    view: Arc<ViewCore>,
    pinned: Arc<State>,
    requester: Option<Arc<Node>>,
    depth: u32,
}

impl Access {
    /// The same access, requested by `node` (work done on behalf of an
    /// in-flight slot is requested by its node, so that cycles through it
    /// are seen).
    pub(crate) fn requested_by(&self, node: Arc<Node>) -> Access {
        Access {
            view: self.view.clone(),
            pinned: self.pinned.clone(),
            requester: Some(node),
            depth: self.depth,
        }
    }

    /// The same access one execution deeper.
    pub(crate) fn deeper(&self) -> Access {
        Access {
            depth: self.depth + 1,
            ..self.clone()
        }
    }

    #[inline]
    pub(crate) fn view(&self) -> &Arc<ViewCore> {
        &self.view
    }

    /// The state every read of this access sees.
    #[inline]
    pub(crate) fn pinned(&self) -> &Arc<State> {
        &self.pinned
    }

    /// The in-flight node on whose behalf this access reads, if any.
    #[inline]
    pub(crate) fn requester(&self) -> Option<&Arc<Node>> {
        self.requester.as_ref()
    }

    /// How many executions deep this access is.
    #[inline]
    pub(crate) fn depth(&self) -> u32 {
        self.depth
    }

    /// A request from outside any execution — or from a body calling the
    /// database through a captured handle, which is then requested by that
    /// execution (see `fetch::running_execution`).
    pub(crate) fn top_level(view: &Arc<ViewCore>, pinned: Arc<State>) -> Access {
        let (requester, depth) = crate::engine::fetch::running_execution(&view.shared);
        Access {
            view: view.clone(),
            pinned,
            requester,
            depth,
        }
    }

    pub(crate) fn revision(&self) -> Revision {
        self.pinned.revision
    }

    /// Whether this access reads the database's main history (not a fork).
    pub(crate) fn in_main_history(&self) -> bool {
        self.pinned.fork == MAIN_FORK
    }

    /// Whether validity at this access's revision can be recorded on the
    /// memo itself (`verified_main`): in the main history, for a memo not
    /// already known valid at a later revision (the mark is a maximum).
    pub(crate) fn marks_on_memo(&self, memo: &MemoRef) -> bool {
        self.in_main_history() && memo.meta().verified_main() <= self.pinned.revision
    }

    /// Records that `memo` is valid at this access's revision: on the memo
    /// itself where possible, else by publishing an entry.
    pub(crate) fn verified(
        &self,
        index: IngredientIndex,
        ing: &dyn Ingredient,
        key: KeyId,
        memo: &MemoRef,
    ) {
        if self.marks_on_memo(memo) {
            memo.meta().mark_verified(self.pinned.revision);
        } else {
            self.publish(index, ing, &[(key, memo.clone(), self.pinned.revision)]);
        }
    }

    fn offers_to_parent(&self) -> Option<Arc<ViewCore>> {
        if self.pinned.fork != self.view.parent_fork {
            return None;
        }
        self.view.parent.as_ref()?.upgrade()
    }

    /// The best memo for (`index`, `key`) for the pinned revision: one
    /// verified at it, or else the most recently verified one (to be
    /// revalidated; see `ViewCore::find`). Looks in this view, then in the
    /// parent view if this view is still in the parent's history.
    pub(crate) fn lookup(
        &self,
        index: IngredientIndex,
        ing: &dyn Ingredient,
        key: KeyId,
    ) -> Option<(MemoRef, Revision)> {
        self.lookup_found(index, ing, key, None)
    }

    /// [`lookup`](Self::lookup), given the entry the pinned state holds for
    /// the key (if the caller found it there).
    pub(crate) fn lookup_found(
        &self,
        index: IngredientIndex,
        ing: &dyn Ingredient,
        key: KeyId,
        in_pinned: Option<Found>,
    ) -> Option<(MemoRef, Revision)> {
        let r = self.pinned.revision;
        let dep = Dep {
            ingredient: index,
            key,
        };
        let top = self.depth == 0;
        let own = self.view.find(dep, ing, &self.pinned, in_pinned, top);
        if matches!(&own, Some((_, v)) if *v == r) {
            return own;
        }
        match self.offers_to_parent() {
            Some(parent) => newest(own, parent.find(dep, ing, &self.pinned, None, top)),
            None => own,
        }
    }

    /// Makes memos (verified at the pinned revision, or earlier) visible to
    /// this view and offers them to its parent.
    pub(crate) fn publish(&self, index: IngredientIndex, ing: &dyn Ingredient, items: &[Publish]) {
        if items.is_empty() {
            return;
        }
        self.view.publish(index, ing, items, self.pinned.fork);
        if let Some(parent) = self.offers_to_parent() {
            parent.publish(index, ing, items, self.pinned.fork);
        }
    }

    /// Merges pending memos of this view (and of the parent it offers to)
    /// where at least `min` are pending.
    pub(crate) fn flush_if(&self, min: usize) {
        if self.view.pending.len() >= min {
            self.view.merge_pending();
        }
        if let Some(parent) = self.offers_to_parent()
            && parent.pending.len() >= min
        {
            parent.merge_pending();
        }
    }
}

fn newest(
    a: Option<(MemoRef, Revision)>,
    b: Option<(MemoRef, Revision)>,
) -> Option<(MemoRef, Revision)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
        (a, b) => a.or(b),
    }
}
