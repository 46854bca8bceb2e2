//! One execution of a query body: its pinned access and the recorder of its
//! reads. Every read through the execution (or through any clone of it, in
//! any `join!` branch or spawned task) becomes an edge of the one memo it
//! builds. The public `QueryCx` is a thin wrapper over it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::engine::events::EngineEvent;
use crate::engine::storage::{
    AnyMemo, Dep, Edge, IngredientIndex, KeyId, MAIN_FORK, MemoMeta, Reason, UNTRACKED,
};
use crate::engine::view::Access;
use crate::error::{Error, ErrorKind, Result};
use crate::revision::{Durability, Revision};
use crate::util::lock;

/// An execution in progress. Cheap to clone; clones are the same execution.
#[derive(Clone)]
pub(crate) struct Execution {
    inner: Arc<Inner>,
}

struct Inner {
    access: Access,
    /// What is being executed.
    index: IngredientIndex,
    key: KeyId,
    reason: Reason,
    recorder: Mutex<Recorder>,
    /// `Recorder::finished`, readable without the lock (`check_open`).
    finished: AtomicBool,
}

struct Recorder {
    deps: Reads,
    durability: Durability,
    finished: bool,
    /// Warm hits recorded and not yet added to their kind's counter: the
    /// kind (ingredient index) and how many. Counting them here, under the
    /// lock the read takes anyway, spares each hit an atomic add; they are
    /// added when the kind changes, at `finish`, or when the execution is
    /// dropped unfinished.
    hits: (IngredientIndex, u64),
}

/// A recorder's hit count with nothing counted.
const NO_HITS: (IngredientIndex, u64) = (IngredientIndex::new(0), 0);

impl Inner {
    /// Adds the recorder's uncounted hits to their kind's counter.
    fn flush_hits(&self, hits: &mut (IngredientIndex, u64)) {
        let (index, n) = std::mem::replace(hits, NO_HITS);
        if n > 0
            && let Ok(ing) = self.access.view().shared().registry().get(index)
        {
            ing.counters().hits.add(n);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let rec = match self.recorder.get_mut() {
            Ok(rec) => rec,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut hits = std::mem::replace(&mut rec.hits, NO_HITS);
        self.flush_hits(&mut hits);
    }
}

impl Execution {
    /// `reads` is how many reads to make room for (the previous memo's, on
    /// a re-execution: bodies usually read as much as last time).
    pub(crate) fn new(
        access: Access,
        index: IngredientIndex,
        key: KeyId,
        reason: Reason,
        reads: usize,
    ) -> Execution {
        Execution {
            inner: Arc::new(Inner {
                access,
                index,
                key,
                reason,
                recorder: Mutex::new(Recorder {
                    deps: Reads::with_capacity(reads),
                    durability: Durability::High,
                    finished: false,
                    hits: NO_HITS,
                }),
                finished: AtomicBool::new(false),
            }),
        }
    }

    /// The access the body reads through (pinned state, requester, depth).
    #[inline]
    pub(crate) fn access(&self) -> &Access {
        &self.inner.access
    }

    /// The revision this execution reads at.
    #[inline]
    pub(crate) fn revision(&self) -> Revision {
        self.inner.access.revision()
    }

    fn finished_error(&self) -> Error {
        let shared = &self.inner.access.view().shared();
        let query = shared
            .registry()
            .get(self.inner.index)
            .map(|ing| format!("{}({})", ing.name(), ing.debug_key(self.inner.key)))
            .unwrap_or_default();
        ErrorKind::ExecutionFinished { query }.into()
    }

    /// Records a read of `dep` that saw the identity `seen`; refused once
    /// the body has returned.
    pub(crate) fn record(
        &self,
        dep: Dep,
        seen: Revision,
        durability: Durability,
        memo: Option<Weak<dyn AnyMemo>>,
    ) -> Result<()> {
        let mut rec = lock(&self.inner.recorder);
        if rec.finished {
            drop(rec);
            return Err(self.finished_error());
        }
        rec.deps.push(Edge { dep, seen, memo });
        rec.durability = rec.durability.min(durability);
        Ok(())
    }

    /// Records a warm hit of `dep` (a memo verified at this revision) that
    /// saw `seen`, and counts the hit; refused once the body has returned
    /// (the hit is then not counted).
    pub(crate) fn record_hit(
        &self,
        dep: Dep,
        seen: Revision,
        durability: Durability,
        memo: Weak<dyn AnyMemo>,
    ) -> Result<()> {
        let mut rec = lock(&self.inner.recorder);
        if rec.finished {
            drop(rec);
            return Err(self.finished_error());
        }
        rec.deps.push(Edge {
            dep,
            seen,
            memo: Some(memo),
        });
        rec.durability = rec.durability.min(durability);
        if rec.hits.0 != dep.ingredient && rec.hits.1 > 0 {
            self.inner.flush_hits(&mut rec.hits);
        }
        rec.hits = (dep.ingredient, rec.hits.1 + 1);
        Ok(())
    }

    /// Records that the body read something the engine cannot track: the
    /// memo it builds is valid at this revision only.
    pub(crate) fn record_untracked(&self) -> Result<()> {
        self.record(UNTRACKED, self.revision(), Durability::Low, None)
    }

    /// An error if the body has already returned.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.finished.load(Ordering::Acquire) {
            return Err(self.finished_error());
        }
        Ok(())
    }

    /// Closes the recorder and builds the memo's metadata. `equal_to` is the
    /// old memo when the new value equals its value: the new memo then keeps
    /// the old `changed_at` (early cutoff, S7) — if it has the old memo's
    /// durability. A `changed_at` is an identity that dependents compare
    /// with; dependents record the durability of the memo they read, so two
    /// memos of one identity must have one durability. Backdating a less
    /// durable memo would let dependents of the old one keep a durability
    /// higher than what they now depend on and skip walks they need (S8:
    /// durability never changes results; salsa refuses the same backdate);
    /// backdating a more durable one does the same to its own dependents as
    /// soon as they are checked against the old twin (kept by an older
    /// snapshot). Either way it counts as a change instead.
    pub(crate) fn finish(&self, equal_to: Option<&MemoMeta>) -> MemoMeta {
        let (deps, durability) = {
            let mut rec = lock(&self.inner.recorder);
            rec.finished = true;
            self.inner.finished.store(true, Ordering::Release);
            self.inner.flush_hits(&mut rec.hits);
            (std::mem::take(&mut rec.deps), rec.durability)
        };
        let r = self.revision();
        let unchanged_since = equal_to
            .filter(|old| durability == old.durability)
            .map(|old| old.changed_at);
        let main = self.inner.access.pinned().fork == MAIN_FORK;
        let deps = deps.into_edges();
        let changed_at = unchanged_since.unwrap_or(r);
        let shared = &self.inner.access.view().shared();
        if main && shared.events().wants_executions() {
            shared.events().send_with(|| EngineEvent::Executed {
                revision: r,
                dep: Dep {
                    ingredient: self.inner.index,
                    key: self.inner.key,
                },
                reason: self.inner.reason,
                cut_off: unchanged_since.is_some(),
                _ids_held: self.inner.access.pinned().epoch.clone(),
            });
        }
        MemoMeta {
            key: self.inner.key,
            newest_identity: MemoMeta::identity_bound(changed_at, &deps),
            deps,
            changed_at,
            durability,
            executed_at: r,
            reason: self.inner.reason,
            verified_main: AtomicU64::new(if main { r.as_u64() } else { 0 }),
        }
    }
}

/// Reads recorded in place before the heap.
const INLINE: usize = 2;

/// The recorder's reads: up to [`INLINE`] in place, so a body that reads
/// little allocates nothing while it runs and its memo's edges are
/// allocated once at their exact size (no growth, no shrinking
/// reallocation at the end); more go to the heap (sized from the previous
/// memo's reads on a re-execution).
#[derive(Default)]
struct Reads {
    inline: [Option<Edge>; INLINE],
    /// How many of `inline` are used (0 once the reads are on the heap).
    len: usize,
    /// The reads, once there are more than `INLINE` (or room was made
    /// for more): then `inline` is empty.
    heap: Vec<Edge>,
}

impl Reads {
    fn with_capacity(reads: usize) -> Reads {
        Reads {
            heap: if reads > INLINE {
                Vec::with_capacity(reads)
            } else {
                Vec::new()
            },
            ..Reads::default()
        }
    }

    #[inline]
    fn push(&mut self, edge: Edge) {
        if self.heap.capacity() != 0 {
            self.heap.push(edge);
        } else if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = Some(edge);
            self.len += 1;
        } else {
            self.spill(edge);
        }
    }

    /// Moves the reads in place to the heap, then adds `edge`.
    #[cold]
    fn spill(&mut self, edge: Edge) {
        self.heap.reserve(4 * INLINE);
        let used = std::mem::take(&mut self.len);
        self.heap
            .extend(self.inline.iter_mut().take(used).filter_map(Option::take));
        self.heap.push(edge);
    }

    /// The memo's edges: deduplicated, first-read order.
    fn into_edges(mut self) -> Box<[Edge]> {
        if self.heap.capacity() > 0 {
            return dedup(self.heap).into_boxed_slice();
        }
        let used = self.len;
        let mut edges = Vec::with_capacity(used);
        for edge in self.inline.iter_mut().take(used).filter_map(Option::take) {
            if !edges.iter().any(|e: &Edge| e.dep == edge.dep) {
                edges.push(edge);
            }
        }
        // Exact capacity unless a repeat was dropped (then this shrinks).
        edges.into_boxed_slice()
    }
}

/// Removes repeated dependencies, keeping first-read order (in place: no
/// second vector per execution).
fn dedup(mut deps: Vec<Edge>) -> Vec<Edge> {
    if deps.len() <= 16 {
        // deps[..kept] are the first reads so far; each later first read
        // moves down to `kept` (what it swaps with is a repeat).
        let mut kept = 0;
        for i in 0..deps.len() {
            let dep = deps[i].dep;
            if !deps[..kept].iter().any(|o| o.dep == dep) {
                deps.swap(kept, i);
                kept += 1;
            }
        }
        deps.truncate(kept);
        deps
    } else {
        let mut seen = DepSet::with_capacity(deps.len());
        deps.retain(|e| seen.insert(e.dep));
        deps
    }
}

/// A set of `Dep`s for [`dedup`]: open addressing over packed `Dep`s
/// (ingredient and slot in a `u64`, the key's generation beside it) with
/// linear probing, sized once (at most half full). Cheaper per insert than
/// a general hash set, which matters for a body that reads thousands of
/// memos (W1's reader, W3's site query). Two ids of one slot under
/// different generations are different dependencies, as in the small path.
struct DepSet {
    slots: Vec<(u64, u32)>,
    mask: usize,
    /// Whether the one `Dep` that packs to `EMPTY` was inserted.
    has_empty: bool,
}

const EMPTY: (u64, u32) = (u64::MAX, u32::MAX);

impl DepSet {
    fn with_capacity(n: usize) -> DepSet {
        let size = (2 * n).next_power_of_two().max(16);
        DepSet {
            slots: vec![EMPTY; size],
            mask: size - 1,
            has_empty: false,
        }
    }

    /// Inserts `dep`; false if it was already there.
    fn insert(&mut self, dep: Dep) -> bool {
        let packed = (
            (u64::from(dep.ingredient.get()) << 32) | u64::from(dep.key.get()),
            dep.key.generation(),
        );
        if packed == EMPTY {
            return !std::mem::replace(&mut self.has_empty, true);
        }
        let mut i = (packed.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask;
        loop {
            match self.slots.get_mut(i) {
                Some(slot) if *slot == EMPTY => {
                    *slot = packed;
                    return true;
                }
                Some(slot) if *slot == packed => return false,
                Some(_) => i = (i + 1) & self.mask,
                // Unreachable: `i` is masked to the table's size.
                None => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(ingredient: u32, key: u32) -> Edge {
        Edge {
            dep: Dep {
                ingredient: IngredientIndex::new(ingredient),
                key: KeyId::new(key),
            },
            seen: Revision::ZERO,
            memo: None,
        }
    }

    #[test]
    fn reads_in_place_or_on_the_heap_keep_first_reads_in_order() {
        for hint in [0usize, 1, 2, 3, 10] {
            for n in 0u32..12 {
                let mut reads = Reads::with_capacity(hint);
                let mut expected: Vec<Dep> = Vec::new();
                for i in 0..n {
                    // Repeats: 0, 1, 0, 2, 1, 3, ...
                    let e = edge(1, if i % 2 == 0 { i / 2 } else { i / 4 });
                    if !expected.contains(&e.dep) {
                        expected.push(e.dep);
                    }
                    reads.push(e);
                }
                let edges = reads.into_edges();
                let got: Vec<Dep> = edges.iter().map(|e| e.dep).collect();
                assert_eq!(got, expected, "hint {hint}, {n} reads");
            }
        }
    }

    #[test]
    fn dedup_keeps_first_reads_in_order() {
        for n in [3u32, 16, 17, 1000] {
            let mut deps = Vec::new();
            for k in 0..n {
                deps.push(edge(k % 3, k));
                deps.push(edge(k % 3, k / 2));
            }
            deps.push(edge(u32::MAX, u32::MAX));
            deps.push(edge(u32::MAX, u32::MAX));
            let mut expected: Vec<Dep> = Vec::new();
            for e in &deps {
                if !expected.contains(&e.dep) {
                    expected.push(e.dep);
                }
            }
            let got: Vec<Dep> = dedup(deps).iter().map(|e| e.dep).collect();
            assert_eq!(got, expected, "n = {n}");
        }
    }

    #[test]
    fn dedup_tells_generations_of_one_slot_apart() {
        let at = |slot: u32, generation: u32| Edge {
            dep: Dep {
                ingredient: IngredientIndex::new(1),
                key: KeyId::at(slot, generation),
            },
            seen: Revision::ZERO,
            memo: None,
        };
        // Below and above the small path's 16 reads.
        for n in [4u32, 40] {
            let mut deps = Vec::new();
            for k in 0..n {
                deps.push(at(k, 0));
                deps.push(at(k, 1));
                deps.push(at(k, 0));
            }
            deps.push(at(u32::MAX, u32::MAX));
            deps.push(at(u32::MAX, u32::MAX));
            let got = dedup(deps);
            assert_eq!(got.len(), 2 * n as usize + 1, "n = {n}");
            assert_eq!(got[1].dep.key, KeyId::at(0, 1));
        }
    }
}
