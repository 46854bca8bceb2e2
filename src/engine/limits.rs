//! Bounded memory: per-kind capacities (applied whenever memos are merged
//! into a table) and the garbage-collection rule (applied by
//! `ViewCore::collect`, explicitly or after commits).
//!
//! Architecture invariant: dropping a memo is always sound. A memo is a
//! cache entry; every reader that misses it (a lookup, or a walk whose edge
//! no longer leads anywhere) fetches it again, which re-executes it at the
//! reader's pinned revision. Dropping costs work, never correctness — which
//! is why eviction and collection can use a cheap recency signal (the
//! revision a memo was last verified at) instead of exact reachability.
//!
//! One exception: a memo that read something untracked is not a pure
//! function of its revision. Re-executed at the same revision after being
//! dropped, it is a twin with the same `changed_at` and maybe another value,
//! and the twin would vouch for the dependents of the first one (at the
//! next revision, early cutoff compares with the twin). So eviction keeps
//! untracked memos verified at the state's revision (collection never drops
//! memos verified at it anyway); they may be dropped once it moves on, when
//! a re-execution gets a new identity. (An access pinned to an older
//! revision that finds a later memo whose identity is its revision uses it
//! instead of re-running: `fetch::fixed_at`.)

use crate::engine::storage::IngredientIndex;

/// When unused memos and old tombstones are collected automatically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CollectRule {
    /// Collect what was not used (memos) or written (tombstones) in the
    /// last `unused_for` revisions…
    pub unused_for: u64,
    /// …after every commit whose revision is a multiple of `every`.
    pub every: u64,
}

/// The memory limits of one database.
#[derive(Clone, Debug, Default)]
pub(crate) struct Limits {
    /// Per ingredient index: the most memos its tables keep.
    pub capacity: Box<[Option<usize>]>,
    /// Automatic collection, if any.
    pub collect: Option<CollectRule>,
}

impl Limits {
    #[inline]
    pub(crate) fn capacity(&self, index: IngredientIndex) -> Option<usize> {
        self.capacity.get(index.as_usize()).copied().flatten()
    }
}

/// What one collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Memos dropped.
    pub memos: usize,
    /// Tombstones dropped.
    pub tombstones: usize,
}
