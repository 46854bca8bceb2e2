//! Revalidation (S6): is an old memo still valid at a new revision?
//!
//! The walk is iterative, with an explicit stack of frames, so that
//! revalidating a chain 100 000 deep never recurses on the machine stack. Each
//! frame is a memo being checked and the index of its next dependency edge.
//! An edge recorded the `changed_at` of the value it read; the dependency is
//! unchanged iff its `changed_at` at this revision is still that one:
//! - an input's is its slot's `changed_at`;
//! - a derived dependency already verified at this revision gives its memo's;
//!   one with an older memo gets its own frame (checked first, then
//!   compared); one without a memo is fetched.
//!
//! When a frame turns out to have a changed dependency, its body re-runs
//! (through `fetch`, so concurrent walkers share the execution) and the
//! result's `changed_at` decides for its parent: an equal value keeps the old
//! `changed_at` (early cutoff, S7) and the parent may still be valid. Only the
//! root's re-execution is left to the caller, which holds its claim.
//!
//! Memos found valid are marked verified on the memo itself (main history)
//! or published in batches (forks), not one state swap each.

use std::collections::{HashMap, HashSet};

use crate::fetch::{Hint, fetch};
use crate::registry::IngredientKind;
use crate::revision::Revision;
use crate::storage::{Dep, KeyId, MemoRef, Publish, Reason, UNSEEN};
use crate::view::Access;

pub(crate) enum Verdict {
    /// Every dependency is unchanged: the memo is valid at the new revision.
    Unchanged,
    /// The memo must be re-executed, for this reason.
    Changed(Reason),
}

struct Frame {
    dep: Dep,
    memo: MemoRef,
    next: usize,
}

impl Frame {
    /// The `changed_at` the edge being examined saw.
    fn seen(&self) -> Revision {
        self.memo
            .meta()
            .deps
            .get(self.next)
            .map_or(UNSEEN, |e| e.seen)
    }
}

type Seen = HashSet<Dep, ahash::RandomState>;

/// Walks the dependencies of `memo` (for `index`/`key`) at `acc`'s revision. `acc.requester` must be the root's
/// in-flight node.
pub(crate) async fn deep_verify(acc: &Access, index: u32, key: KeyId, memo: MemoRef) -> Verdict {
    let shared = acc.view.shared.clone();
    let registry = &shared.registry;
    let r = acc.revision();
    let root = Dep {
        ingredient: index,
        key,
    };
    let mut stack = vec![Frame {
        dep: root,
        memo,
        next: 0,
    }];
    let mut on_stack: Seen = Seen::default();
    on_stack.insert(root);
    // Memos verified at `r` during this walk.
    let mut verified: HashMap<Dep, MemoRef, ahash::RandomState> = HashMap::default();
    let mut unpublished: Vec<(Dep, MemoRef)> = Vec::new();

    loop {
        let Some(top) = stack.last_mut() else {
            return Verdict::Changed(Reason::Unverifiable);
        };
        let mut changed: Option<Dep> = None;
        if let Some(&edge) = top.memo.meta().deps.get(top.next) {
            shared.dependency_checks.incr();
            let dep = edge.dep;
            let Ok(dep_ing) = registry.get(dep.ingredient) else {
                return Verdict::Changed(Reason::Unverifiable);
            };
            let dep_changed_at: Option<Revision> = match dep_ing.kind() {
                IngredientKind::Interned => Some(Revision::ZERO),
                IngredientKind::Input => acc
                    .pinned
                    .tables
                    .get(dep.ingredient as usize)
                    .map(|t| dep_ing.input_changed_at(t, dep.key)),
                IngredientKind::Query => {
                    if let Some(m) = verified.get(&dep) {
                        Some(m.meta().changed_at)
                    } else {
                        match acc.lookup(dep.ingredient, &**dep_ing, dep.key) {
                            Some((m, v)) if v == r => Some(m.meta().changed_at),
                            Some((m, v)) if acc.pinned.durable_since(m.meta().durability, v) => {
                                dep_ing.counters().revalidations.incr();
                                let c = m.meta().changed_at;
                                verified.insert(dep, m.clone());
                                record(acc, &mut unpublished, dep, m);
                                Some(c)
                            }
                            Some((m, _)) if !on_stack.contains(&dep) => {
                                on_stack.insert(dep);
                                stack.push(Frame {
                                    dep,
                                    memo: m,
                                    next: 0,
                                });
                                continue;
                            }
                            // No memo, or a cycle among the old dependencies:
                            // fetch it for real (a cycle is then detected by
                            // the in-flight table and reported as an error).
                            _ => {
                                publish(acc, &mut unpublished);
                                fetch(acc, dep.ingredient, dep.key, Hint::None)
                                    .await
                                    .ok()
                                    .map(|m| m.meta().changed_at)
                            }
                        }
                    }
                }
            };
            match dep_changed_at {
                Some(c) if c == edge.seen => {
                    if let Some(top) = stack.last_mut() {
                        top.next += 1;
                    }
                }
                _ => changed = Some(dep),
            }
        } else {
            // Every dependency of the top frame is unchanged: it is valid.
            let Some(done) = stack.pop() else {
                return Verdict::Changed(Reason::Unverifiable);
            };
            on_stack.remove(&done.dep);
            let Some(parent) = stack.last_mut() else {
                publish(acc, &mut unpublished);
                return Verdict::Unchanged;
            };
            if let Ok(ing) = registry.get(done.dep.ingredient) {
                ing.counters().revalidations.incr();
            }
            if done.memo.meta().changed_at != parent.seen() {
                changed = Some(done.dep);
            } else {
                parent.next += 1;
            }
            verified.insert(done.dep, done.memo.clone());
            record(acc, &mut unpublished, done.dep, done.memo);
        }

        // The top frame has a changed dependency: re-execute it (unless it is
        // the root) and let its new `changed_at` decide for its parent.
        while let Some(cause) = changed.take() {
            if stack.len() <= 1 {
                publish(acc, &mut unpublished);
                return Verdict::Changed(Reason::DependencyChanged(cause));
            }
            let Some(frame) = stack.pop() else {
                return Verdict::Changed(Reason::Unverifiable);
            };
            on_stack.remove(&frame.dep);
            publish(acc, &mut unpublished);
            let hint = Hint::Stale(Reason::DependencyChanged(cause));
            let result = fetch(acc, frame.dep.ingredient, frame.dep.key, hint).await;
            let Some(parent) = stack.last_mut() else {
                return Verdict::Changed(Reason::Unverifiable);
            };
            match result {
                Ok(m) if m.meta().changed_at == parent.seen() => {
                    verified.insert(frame.dep, m);
                    parent.next += 1;
                }
                _ => changed = Some(frame.dep),
            }
        }
    }
}

/// Records that `memo` is valid at the access's revision: on the memo itself
/// in the main history; in a fork, queued for publication.
fn record(acc: &Access, unpublished: &mut Vec<(Dep, MemoRef)>, dep: Dep, memo: MemoRef) {
    if acc.in_main_history() {
        memo.meta().mark_verified(acc.revision());
    } else {
        unpublished.push((dep, memo));
    }
}

/// Publishes the memos verified so far (forks only), one state swap per ingredient.
fn publish(acc: &Access, pending: &mut Vec<(Dep, MemoRef)>) {
    if pending.is_empty() {
        return;
    }
    let r = acc.revision();
    let mut by_ingredient: HashMap<u32, Vec<Publish>, ahash::RandomState> = HashMap::default();
    for (dep, memo) in pending.drain(..) {
        by_ingredient
            .entry(dep.ingredient)
            .or_default()
            .push((dep.key, memo, r));
    }
    for (index, items) in by_ingredient {
        if let Ok(ing) = acc.view.shared.registry.get(index) {
            acc.publish(index, &**ing, &items);
        }
    }
}
