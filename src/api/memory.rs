//! Bounded memory for long sessions: per-kind capacities
//! ([`DatabaseBuilder::capacity`](crate::DatabaseBuilder::capacity)),
//! garbage collection ([`View::collect`](crate::View::collect) and
//! [`DatabaseBuilder::collect_garbage`](crate::DatabaseBuilder::collect_garbage))
//! and a memory report ([`View::memory`](crate::View::memory)).

use std::fmt;

use crate::engine::ingredient::{IngredientKind, Registry};
use crate::engine::limits::CollectRule;
use crate::engine::storage::State;

/// Which memos and tombstones a garbage collection removes: those not used
/// (memos: verified; tombstones: written) in the last `n` revisions.
///
/// Collecting never changes a result: a collected memo re-executes when it
/// is next needed, and a collected tombstone reads as an absent key. It
/// trades memory for work, and only for what nothing used recently — in a
/// dev server, the memos of deleted pages and of keys that came and went.
///
/// ```
/// use picante::Collect;
/// let rule = Collect::unused_for(100); // collect what 100 revisions did not use
/// let rule = rule.every(10);           // automatically: after every 10th revision
/// # let _ = rule;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Collect {
    pub(crate) unused_for: u64,
    pub(crate) every: u64,
}

impl Collect {
    /// Collects what the last `revisions` revisions did not use. As an
    /// automatic policy it runs after every `max(revisions / 2, 1)`-th
    /// revision unless [`every`](Collect::every) says otherwise.
    pub fn unused_for(revisions: u64) -> Collect {
        Collect {
            unused_for: revisions,
            every: (revisions / 2).max(1),
        }
    }

    /// As an automatic policy: run after every `revisions`-th revision
    /// (a collection walks every table, so not after each one).
    pub fn every(self, revisions: u64) -> Collect {
        Collect {
            every: revisions.max(1),
            ..self
        }
    }

    pub(crate) fn rule(self) -> CollectRule {
        CollectRule {
            unused_for: self.unused_for,
            every: self.every,
        }
    }
}

/// What a [`View::collect`](crate::View::collect) removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollectReport {
    /// Memos dropped.
    pub memos: usize,
    /// Input tombstones (left by `remove`) dropped.
    pub tombstones: usize,
}

/// What one kind holds in a view, estimated. See [`MemoryReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindMemory {
    /// The kind's name.
    pub name: String,
    /// `"input"`, `"query"` or `"interned kind"`.
    pub kind: &'static str,
    /// Memos (queries), slots with a value (inputs) or values (interned).
    pub entries: usize,
    /// Input slots that are tombstones.
    pub tombstones: usize,
    /// Key ids in use: keys in the view's tables, keys read (even as
    /// absent), and ids retired by a collection but not yet reusable
    /// (a snapshot from before it is alive). Interned kinds: values ever
    /// interned (interned ids are never reclaimed).
    pub keys: usize,
    /// Estimated bytes: the tables, memo headers, dependency edges and key
    /// ids — shallow: heap data owned by keys and values (a `String`'s
    /// characters, a `Vec`'s elements) is not followed.
    pub bytes: usize,
}

/// Memory held by a view, per kind: see [`View::memory`](crate::View::memory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryReport {
    /// One entry per registered kind, in registration order.
    pub kinds: Vec<KindMemory>,
}

fn kind_name(kind: IngredientKind) -> &'static str {
    match kind {
        IngredientKind::Input => "input",
        IngredientKind::Query => "query",
        IngredientKind::Interned => "interned kind",
    }
}

impl MemoryReport {
    pub(crate) fn of(registry: &Registry, state: &State) -> MemoryReport {
        let kinds = registry
            .iter()
            .filter_map(|(index, ing)| {
                let f = ing.footprint(state.tables.get(index.as_usize())?);
                Some(KindMemory {
                    name: ing.name().to_string(),
                    kind: kind_name(ing.kind()),
                    entries: f.entries,
                    tombstones: f.tombstones,
                    keys: f.keys,
                    bytes: f.bytes,
                })
            })
            .collect();
        MemoryReport { kinds }
    }

    /// The entry of the kind named `name`.
    pub fn kind(&self, name: &str) -> Option<&KindMemory> {
        self.kinds.iter().find(|k| k.name == name)
    }

    /// Memos over all query kinds.
    pub fn memos(&self) -> usize {
        self.kinds
            .iter()
            .filter(|k| k.kind == kind_name(IngredientKind::Query))
            .map(|k| k.entries)
            .sum()
    }

    /// Estimated bytes over all kinds.
    pub fn total_bytes(&self) -> usize {
        self.kinds.iter().map(|k| k.bytes).sum()
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for k in &self.kinds {
            writeln!(
                f,
                "{:<20} {:<13} {:>9} entries {:>7} tombstones {:>9} keys {:>10} B",
                k.name, k.kind, k.entries, k.tombstones, k.keys, k.bytes
            )?;
        }
        write!(f, "total ≈ {} B", self.total_bytes())
    }
}
