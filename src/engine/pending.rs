//! Memos published to a view but not yet merged into its persistent state.
//!
//! Inserting into a persistent map copies a path of nodes; doing that once per
//! executed memo dominated cold builds. Instead, a fresh memo goes into this
//! small sharded buffer (a mutex per shard, only ever touched off the warm-hit
//! path), and the buffer is merged into the view's `State` in bulk — one state
//! swap for hundreds of memos — when it grows, and when a top-level request
//! finishes.
//!
//! Readers that miss the state check this buffer *first* and the state
//! *second*: a merge publishes the new state before removing the merged
//! entries, so an entry is always in at least one of the two places a reader
//! looks, in that order.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::engine::storage::{Dep, DepHash, History, MemoRef};
use crate::revision::Revision;
use crate::util::lock;

const SHARDS: usize = 8;

type Shard = HashMap<Dep, (MemoRef, Revision), DepHash>;

pub(crate) struct Pending {
    shards: [Mutex<Shard>; SHARDS],
    len: AtomicUsize,
    merging: Mutex<()>,
}

impl Pending {
    pub(crate) fn new() -> Self {
        Pending {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::default())),
            len: AtomicUsize::new(0),
            merging: Mutex::new(()),
        }
    }

    fn shard(&self, dep: Dep) -> &Mutex<Shard> {
        let h = dep.key.as_usize().wrapping_mul(0x9E37_79B9) ^ dep.ingredient.as_usize();
        &self.shards[h % SHARDS]
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The entry for `dep`, if any.
    pub(crate) fn get(&self, dep: Dep) -> Option<(MemoRef, Revision)> {
        if self.len() == 0 {
            return None;
        }
        lock(self.shard(dep)).get(&dep).cloned()
    }

    /// Stores `memo` verified at `at` unless an entry verified at least as
    /// late is there (for a view in `history`).
    pub(crate) fn insert(&self, dep: Dep, memo: &MemoRef, at: Revision, history: History) {
        let mut shard = lock(self.shard(dep));
        match shard.get_mut(&dep) {
            Some(existing) if existing.0.meta().latest_verified(existing.1, history) >= at => {}
            Some(existing) => *existing = (memo.clone(), at),
            None => {
                shard.insert(dep, (memo.clone(), at));
                self.len.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            self.len.fetch_sub(shard.len(), Ordering::AcqRel);
            shard.clear();
        }
    }

    /// Runs `merge` over a copy of every entry, then removes the entries it
    /// saw (unless replaced meanwhile). Only one merge runs at a time; if one
    /// is already running this waits for it (`wait`) or returns at once.
    pub(crate) fn merge_with(&self, wait: bool, merge: impl FnOnce(&[(Dep, MemoRef, Revision)])) {
        if self.len() == 0 {
            return;
        }
        let _merging = if wait {
            lock(&self.merging)
        } else {
            match self.merging.try_lock() {
                Ok(guard) => guard,
                // A merge that panicked (in user code) left nothing
                // half-done: the buffer is only trimmed after a merge.
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        let mut entries = Vec::with_capacity(self.len());
        for shard in &self.shards {
            entries.extend(lock(shard).iter().map(|(d, (m, r))| (*d, m.clone(), *r)));
        }
        merge(&entries);
        for (dep, memo, at) in entries {
            let mut shard = lock(self.shard(dep));
            if let Some((m, r)) = shard.get(&dep)
                && *r == at
                && std::sync::Arc::ptr_eq(m, &memo)
            {
                shard.remove(&dep);
                self.len.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}
