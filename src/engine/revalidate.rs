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

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::engine::fetch::{Fault, Hint, fetch};
use crate::engine::ingredient::IngredientKind;
use crate::engine::storage::{
    Dep, DepHash, IngredientIndex, KeyId, MemoRef, Publish, Reason, UNSEEN, UNTRACKED,
};
use crate::engine::view::Access;
use crate::revision::Revision;

/// What a walk does at a dependency it cannot verify without executing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stale {
    /// Fetch it (which may execute it).
    Execute,
    /// Stop with `Verdict::Blocked`, to be resumed by a caller that may.
    Stop,
}

/// The outcome of a walk.
pub(crate) enum Verdict {
    /// Every dependency is unchanged: the memo is valid at the new revision.
    Unchanged,
    /// The memo must be re-executed, for this reason.
    Changed(Reason),
    /// (Without execution only.) Deciding needs a dependency executed.
    Blocked,
}

/// What a walk step decided.
enum Step {
    Done(Verdict),
    /// Fetch this dependency with this hint, then resume (`Then`).
    Fetch(Dep, Hint, Then),
}

/// What the fetched dependency's `changed_at` is compared with when the walk
/// resumes: the top frame's current edge either way.
#[derive(Clone, Copy)]
enum Then {
    /// The top frame's edge, whose dependency had no usable memo.
    Edge,
    /// A stale frame, just popped and re-executed (the top is its parent).
    Frame,
}

type Resume = (Dep, Then, Result<MemoRef, Fault>);

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

type Seen = HashSet<Dep, DepHash>;

/// A dependency walk over `memo` (for `index`/`key`) at an access's
/// revision, resumable: run without execution first (claiming nothing, running
/// no user code — such a revalidation is idempotent), and if that is
/// `Blocked`, claim the root and resume the same walk with execution.
pub(crate) struct Walk {
    stack: Vec<Frame>,
    on_stack: OnStack,
    /// Memos verified during this walk, in a fork (in the main history they
    /// are marked on the memo itself, so lookups see them).
    verified: HashMap<Dep, MemoRef, DepHash>,
    unpublished: Vec<(Dep, MemoRef)>,
    /// The top frame has this changed dependency (the walk stopped before
    /// re-executing the frame).
    changed: Option<Dep>,
}

impl Walk {
    pub(crate) fn new(index: IngredientIndex, key: KeyId, memo: MemoRef) -> Walk {
        let root = Dep {
            ingredient: index,
            key,
        };
        let mut on_stack = OnStack::default();
        on_stack.push(root);
        let mut stack = take_stack();
        stack.push(Frame {
            dep: root,
            memo,
            next: 0,
        });
        Walk {
            stack,
            on_stack,
            verified: HashMap::default(),
            unpublished: Vec::new(),
            changed: None,
        }
    }

    /// The memo at the root of the walk.
    pub(crate) fn root(&self) -> Option<&MemoRef> {
        self.stack.first().map(|f| &f.memo)
    }

    /// Continues the walk at `acc`'s revision, fetching (executing) stale or
    /// missing dependencies; `acc.requester` must be the root's in-flight
    /// node.
    pub(crate) async fn run(&mut self, acc: &Access) -> Verdict {
        let mut resume = None;
        loop {
            match self.step(acc, Stale::Execute, resume.take()) {
                Step::Done(verdict) => return verdict,
                Step::Fetch(dep, hint, then) => {
                    let result = fetch(acc, dep.ingredient, dep.key, hint).await;
                    resume = Some((dep, then, result));
                }
            }
        }
    }

    /// Continues the walk at `acc`'s revision without executing anything
    /// (synchronously: it never awaits). It stops with `Blocked` where it
    /// would have to execute something, and can then be resumed by
    /// [`run`](Self::run) once the root is claimed.
    pub(crate) fn run_now(&mut self, acc: &Access) -> Verdict {
        match self.step(acc, Stale::Stop, None) {
            Step::Done(verdict) => verdict,
            Step::Fetch(..) => {
                debug_assert!(false, "a walk without execution never fetches");
                Verdict::Blocked
            }
        }
    }

    /// Runs the walk until it is decided or needs a fetch (`Stale::Execute`
    /// only); `resume` is the result of the fetch the previous step asked for.
    fn step(&mut self, acc: &Access, stale: Stale, resume: Option<Resume>) -> Step {
        let execute = stale == Stale::Execute;
        let shared = acc.view().shared();
        let registry = shared.registry();
        let r = acc.revision();
        if let Some((dep, then, result)) = resume {
            let Some(top) = self.stack.last_mut() else {
                debug_assert!(false, "a fetch was asked for with a frame on the stack");
                return Step::Done(Verdict::Changed(Reason::Unverifiable));
            };
            match (then, result) {
                // The top frame's edge to `dep` (which had no usable memo).
                (Then::Edge, Ok(m)) if m.meta().changed_at == top.seen() => top.next += 1,
                // A stale frame re-executed: `top` is its parent.
                (Then::Frame, Ok(m)) if m.meta().changed_at == top.seen() => {
                    if !acc.marks_on_memo(&m) {
                        self.verified.insert(dep, m);
                    }
                    top.next += 1;
                }
                _ => self.changed = Some(dep),
            }
        }
        loop {
            if self.changed.is_none() {
                let Some(top) = self.stack.last_mut() else {
                    debug_assert!(false, "a walk always has its root frame until it ends");
                    return Step::Done(Verdict::Changed(Reason::Unverifiable));
                };
                if let Some(edge) = top.memo.meta().deps.get(top.next) {
                    shared.dependency_checks().incr();
                    let (dep, seen) = (edge.dep, edge.seen);
                    if dep == UNTRACKED {
                        // Valid at the revision it ran at only (a hit there
                        // never walks).
                        self.changed = Some(dep);
                        continue;
                    }
                    // In the main history, follow the memo the edge read, if
                    // it still exists, instead of looking the key up.
                    let followed = match &edge.memo {
                        Some(weak) if acc.in_main_history() => weak.upgrade(),
                        _ => None,
                    };
                    let Ok(dep_ing) = registry.get(dep.ingredient) else {
                        debug_assert!(false, "an edge names an unregistered ingredient");
                        return Step::Done(Verdict::Changed(Reason::Unverifiable));
                    };
                    let dep_changed_at: Option<Revision> = match dep_ing.kind() {
                        IngredientKind::Interned => Some(Revision::ZERO),
                        IngredientKind::Input => acc
                            .pinned()
                            .tables
                            .get(dep.ingredient.as_usize())
                            .and_then(|t| dep_ing.input_changed_at(t, dep.key)),
                        IngredientKind::Query => {
                            if let Some(m) = self.verified.get(&dep) {
                                Some(m.meta().changed_at)
                            } else {
                                let found = followed
                                    .map(|m| {
                                        let v = m.meta().verified_main();
                                        (m, v)
                                    })
                                    .or_else(|| acc.lookup(dep.ingredient, &**dep_ing, dep.key));
                                match found {
                                    Some((m, v)) if v == r => Some(m.meta().changed_at),
                                    Some((m, v))
                                        if acc.pinned().durable_since(m.meta().durability, v) =>
                                    {
                                        dep_ing.counters().revalidations.incr();
                                        let c = m.meta().changed_at;
                                        self.record(acc, dep, m);
                                        Some(c)
                                    }
                                    Some((m, _)) if !self.on_stack.contains(dep, &self.stack) => {
                                        self.on_stack.push(dep);
                                        self.stack.push(Frame {
                                            dep,
                                            memo: m,
                                            next: 0,
                                        });
                                        continue;
                                    }
                                    // An edge to a key whose id was
                                    // reclaimed: that key is gone from the
                                    // database (what a fetch under the old id
                                    // computed would not be kept): changed.
                                    _ if !dep_ing
                                        .key_live_in(dep.key, acc.pinned().epoch.seq()) =>
                                    {
                                        self.changed = Some(dep);
                                        continue;
                                    }
                                    // No memo, or a cycle among the old
                                    // dependencies: fetch it for real (a cycle
                                    // is then detected by the in-flight table
                                    // and reported as an error).
                                    _ => {
                                        self.publish(acc);
                                        if !execute {
                                            return Step::Done(Verdict::Blocked);
                                        }
                                        return Step::Fetch(dep, Hint::None, Then::Edge);
                                    }
                                }
                            }
                        }
                    };
                    match dep_changed_at {
                        Some(c) if c == seen => {
                            if let Some(top) = self.stack.last_mut() {
                                top.next += 1;
                            }
                        }
                        _ => self.changed = Some(dep),
                    }
                } else {
                    // Every dependency of the top frame is unchanged: it is valid.
                    let Some(done) = self.stack.pop() else {
                        debug_assert!(false, "the top frame was just examined");
                        return Step::Done(Verdict::Changed(Reason::Unverifiable));
                    };
                    self.on_stack.pop(done.dep);
                    let Some(parent) = self.stack.last_mut() else {
                        self.publish(acc);
                        return Step::Done(Verdict::Unchanged);
                    };
                    if let Ok(ing) = registry.get(done.dep.ingredient) {
                        ing.counters().revalidations.incr();
                    }
                    if done.memo.meta().changed_at != parent.seen() {
                        self.changed = Some(done.dep);
                    } else {
                        parent.next += 1;
                    }
                    self.record(acc, done.dep, done.memo);
                }
            }

            // The top frame has a changed dependency: re-execute it (unless
            // it is the root) and let its new `changed_at` decide for its
            // parent.
            if let Some(cause) = self.changed {
                if self.stack.len() <= 1 {
                    self.publish(acc);
                    self.changed = None;
                    return Step::Done(Verdict::Changed(Reason::DependencyChanged(cause)));
                }
                self.publish(acc);
                if !execute {
                    return Step::Done(Verdict::Blocked);
                }
                let Some(frame) = self.stack.pop() else {
                    debug_assert!(false, "a non-root frame is on the stack");
                    return Step::Done(Verdict::Changed(Reason::Unverifiable));
                };
                self.on_stack.pop(frame.dep);
                self.changed = None;
                let Ok(frame_ing) = registry.get(frame.dep.ingredient) else {
                    debug_assert!(false, "a frame names an unregistered ingredient");
                    return Step::Done(Verdict::Changed(Reason::Unverifiable));
                };
                // A frame reached through an edge whose key id was reclaimed
                // since: its parent reads it as changed (see above).
                if !frame_ing.key_live_in(frame.dep.key, acc.pinned().epoch.seq()) {
                    self.changed = Some(frame.dep);
                    continue;
                }
                // The frame's memo may be an older one an edge led to, not
                // the one now in the table (which may well be valid): only
                // call the table's memo stale if it is this one.
                let current = acc.lookup(frame.dep.ingredient, &**frame_ing, frame.dep.key);
                let hint = match current {
                    Some((m, _)) if Arc::ptr_eq(&m, &frame.memo) => {
                        Hint::Stale(Reason::DependencyChanged(cause))
                    }
                    _ => Hint::None,
                };
                return Step::Fetch(frame.dep, hint, Then::Frame);
            }
        }
    }

    /// Records that `memo` is valid at the access's revision.
    fn record(&mut self, acc: &Access, dep: Dep, memo: MemoRef) {
        record(acc, &mut self.verified, &mut self.unpublished, dep, memo);
    }

    fn publish(&mut self, acc: &Access) {
        publish(acc, &mut self.unpublished);
    }
}

thread_local! {
    /// Emptied walk stacks, reused by the next walk on this thread: a
    /// verify-only read allocates nothing for its walk.
    static STACKS: RefCell<Vec<Vec<Frame>>> = const { RefCell::new(Vec::new()) };
}

/// Stacks kept per thread, and the largest capacity kept (a deep chain's
/// stack is freed, not kept).
const POOLED: usize = 8;
const POOLED_CAPACITY: usize = 64;

/// An empty stack: a pooled one, or a new one with room for the few frames
/// most walks need (a page, its parse, its template).
fn take_stack() -> Vec<Frame> {
    STACKS
        .try_with(|pool| pool.try_borrow_mut().ok().and_then(|mut p| p.pop()))
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(8))
}

impl Drop for Walk {
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.stack);
        if stack.capacity() > POOLED_CAPACITY {
            return;
        }
        // Frames are dropped before the pool is touched (dropping a memo
        // may run any code).
        stack.clear();
        let _ = STACKS.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut()
                && pool.len() < POOLED
            {
                pool.push(stack);
            }
        });
    }
}

/// Records that `memo` is valid at the access's revision: on the memo itself
/// in the main history; in a fork, in the walk's map and queued for
/// publication.
fn record(
    acc: &Access,
    verified: &mut HashMap<Dep, MemoRef, DepHash>,
    unpublished: &mut Vec<(Dep, MemoRef)>,
    dep: Dep,
    memo: MemoRef,
) {
    if acc.marks_on_memo(&memo) {
        memo.meta().mark_verified(acc.revision());
    } else {
        verified.insert(dep, memo.clone());
        unpublished.push((dep, memo));
    }
}

/// The dependencies on the walk's stack (to stop at cycles among old
/// dependencies). Short walks scan the stack; a set takes over past
/// `SCAN_LIMIT` frames so deep chains stay linear.
#[derive(Default)]
struct OnStack {
    set: Option<Seen>,
    depth: usize,
}

const SCAN_LIMIT: usize = 32;

impl OnStack {
    fn push(&mut self, dep: Dep) {
        self.depth += 1;
        if let Some(set) = &mut self.set {
            set.insert(dep);
        }
    }

    fn pop(&mut self, dep: Dep) {
        self.depth = self.depth.saturating_sub(1);
        if let Some(set) = &mut self.set {
            set.remove(&dep);
        }
    }

    fn contains(&mut self, dep: Dep, stack: &[Frame]) -> bool {
        if self.set.is_none() && self.depth >= SCAN_LIMIT {
            self.set = Some(stack.iter().map(|f| f.dep).collect());
        }
        match &self.set {
            Some(set) => set.contains(&dep),
            None => stack.iter().any(|f| f.dep == dep),
        }
    }
}

/// Publishes the memos verified so far (forks only), one state swap per ingredient.
fn publish(acc: &Access, pending: &mut Vec<(Dep, MemoRef)>) {
    if pending.is_empty() {
        return;
    }
    let r = acc.revision();
    let mut by_ingredient: HashMap<IngredientIndex, Vec<Publish>, DepHash> = HashMap::default();
    for (dep, memo) in pending.drain(..) {
        by_ingredient
            .entry(dep.ingredient)
            .or_default()
            .push((dep.key, memo, r));
    }
    for (index, items) in by_ingredient {
        if let Ok(ing) = acc.view().shared().registry().get(index) {
            acc.publish(index, &**ing, &items);
        }
    }
}
