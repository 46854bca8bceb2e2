//! Fetching a memo at a revision: reuse, revalidate or execute, with
//! in-flight sharing, cancellation safety and depth cutting.
//!
//! `fetch` is the one entry point of the erased engine. For one
//! (ingredient, key) at the access's pinned revision it:
//! 1. returns a memo already verified at that revision (a hit);
//! 2. revalidates one by durability without claiming anything;
//! 3. otherwise claims the in-flight slot (or waits for its owner, or gets a
//!    cycle error), then revalidates the old memo by walking its dependencies
//!    (`revalidate.rs`) or executes the body, publishes the result and
//!    completes the slot.

use std::sync::Arc;

use tracing::Instrument;

use crate::engine::execution::Execution;
use crate::engine::inflight::{Claim, Cycle, Node, SlotKey};
use crate::engine::ingredient::Ingredient;
use crate::engine::revalidate::{Verdict, Walk};
use crate::engine::storage::{
    Dep, IngredientIndex, KeyId, MAIN_FORK, MemoRef, Reason, typed_memo_ref,
};
use crate::engine::view::{Access, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::revision::Revision;
use crate::util::BoxFuture;

/// Every this many nested executions, the next one continues on a fresh tokio
/// task, so that chains of any depth never grow the machine stack unboundedly.
const SPAWN_EVERY: u32 = 32;

/// What the caller already knows about the memo.
#[derive(Clone)]
pub(crate) enum Hint {
    /// Nothing: reuse, revalidate or execute as needed.
    None,
    /// A dependency walk found it stale: execute unless someone else already
    /// brought it up to date at this revision.
    Stale(Reason),
    /// This memo (loaded from disk) cannot be decoded: execute unless a
    /// different memo is already valid at this revision.
    Replace(MemoRef),
}

impl Hint {
    fn rejects(&self, memo: &MemoRef) -> bool {
        matches!(self, Hint::Replace(bad) if Arc::ptr_eq(bad, memo))
    }
}

/// A memo with the revision its table entry was verified at.
pub(crate) type Found = (MemoRef, Revision);

/// Why a fetch produced no memo.
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    /// The request would wait on itself: the cycle, as data.
    Cycle(Cycle),
    /// Anything else (a cancelled task, an internal error).
    Error(Error),
}

impl From<Error> for Fault {
    fn from(e: Error) -> Fault {
        Fault::Error(e)
    }
}

/// The memo for (`index`, `key`) valid at `acc`'s revision. The memo may hold
/// a user error; `Err` here is the engine's (a cycle, a cancellation).
///
/// A memo that is a hit, or that revalidates without executing anything, is
/// returned at once (no boxed future); only a fetch that must claim, wait or
/// execute is boxed.
pub(crate) fn fetch(acc: &Access, index: IngredientIndex, key: KeyId, hint: Hint) -> Fetch<'_> {
    fetch_found(acc, index, key, hint, None)
}

/// [`fetch`], given the entry that `acc`'s pinned state holds for the key
/// (`pinned`, from a warm miss on that state): while the view's current
/// state is still the pinned one, the lookup uses it instead of searching
/// the table again.
pub(crate) fn fetch_found(
    acc: &Access,
    index: IngredientIndex,
    key: KeyId,
    hint: Hint,
    pinned: Option<Found>,
) -> Fetch<'_> {
    let ing = match acc.view().shared().registry().get(index) {
        Ok(ing) => ing,
        Err(e) => return Fetch::Ready(Some(Err(e.into()))),
    };
    match fetch_now(acc, index, &**ing, key, hint, pinned) {
        Now::Done(memo) => Fetch::Ready(Some(Ok(memo))),
        Now::Later(early) => Fetch::Running(Box::pin(fetch_inner(acc, index, key, early))),
    }
}

/// The future of [`fetch`]: ready at once, or the boxed rest of the fetch.
pub(crate) enum Fetch<'a> {
    Ready(Option<Result<MemoRef, Fault>>),
    Running(BoxFuture<'a, Result<MemoRef, Fault>>),
}

impl Future for Fetch<'_> {
    type Output = Result<MemoRef, Fault>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Fetch::Ready(result) => {
                std::task::Poll::Ready(result.take().unwrap_or_else(|| {
                    Err(Error::internal("fetch polled after it completed").into())
                }))
            }
            Fetch::Running(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// What the synchronous first part of a fetch found, for the rest of it.
struct Early {
    /// `InFlight::completions` before the lookup.
    completions: u64,
    found: Option<Found>,
    hint: Hint,
    /// The unclaimed walk, stopped where something must execute.
    blocked: Option<Walk>,
}

enum Now {
    Done(MemoRef),
    Later(Early),
}

/// The part of a fetch that needs no claim and runs no user code: a hit, a
/// revalidation by durability, or an unclaimed dependency walk that finds
/// nothing to execute (idempotent). Synchronous.
fn fetch_now(
    acc: &Access,
    index: IngredientIndex,
    ing: &dyn Ingredient,
    key: KeyId,
    hint: Hint,
    pinned: Option<Found>,
) -> Now {
    let r = acc.revision();
    let mut hint = hint;
    let mut blocked = None;
    let completions = acc.view().shared().inflight().completions();
    let found = acc.lookup_found(index, ing, key, pinned);
    if let Some((memo, verified_at)) = &found
        && !hint.rejects(memo)
    {
        if *verified_at == r {
            ing.counters().hits.incr();
            return Now::Done(memo.clone());
        }
        if fixed_at(memo, *verified_at, r) {
            ing.counters().revalidations.incr();
            acc.verified(index, ing, key, memo);
            return Now::Done(memo.clone());
        }
        if matches!(hint, Hint::None)
            && acc
                .pinned()
                .durable_since(memo.meta().durability, *verified_at)
        {
            ing.counters().revalidations.incr();
            acc.verified(index, ing, key, memo);
            return Now::Done(memo.clone());
        }
        // Try revalidating without claiming: if no dependency needs to
        // run, nothing is executed and no slot is needed. If something
        // must run, the walk is resumed once the slot is claimed.
        if matches!(hint, Hint::None) {
            let mut walk = Walk::new(index, key, memo.clone());
            match walk.run_now(acc) {
                Verdict::Unchanged => {
                    ing.counters().revalidations.incr();
                    acc.verified(index, ing, key, memo);
                    return Now::Done(memo.clone());
                }
                Verdict::Changed(reason) => hint = Hint::Stale(reason),
                Verdict::Blocked => blocked = Some(walk),
            }
        }
    }
    Now::Later(Early {
        completions,
        found,
        hint,
        blocked,
    })
}

/// `fetch` (with the pinned state's entry, see [`fetch_found`]), then the
/// memo's value; a memo loaded from disk whose value does not decode is
/// recomputed.
pub(crate) async fn fetch_value<V: Clone + Send + Sync + 'static>(
    acc: &Access,
    index: IngredientIndex,
    key: KeyId,
    hint: Hint,
    pinned: Option<Found>,
) -> Result<V, Fault> {
    let mut hint = hint;
    let mut pinned = pinned;
    loop {
        let memo = fetch_found(acc, index, key, hint, pinned.take()).await?;
        match typed_memo_ref::<V>(&memo)?.read() {
            Some(result) => return Ok(result?),
            None => {
                tracing::warn!("a cached value does not decode; recomputing it");
                hint = Hint::Replace(memo);
            }
        }
    }
}

async fn fetch_inner(
    acc: &Access,
    index: IngredientIndex,
    key: KeyId,
    early: Early,
) -> Result<MemoRef, Fault> {
    let shared = acc.view().shared().clone();
    let ing: Arc<dyn Ingredient> = shared.registry().get(index)?.clone();
    let r = acc.revision();
    let mut early = early;
    loop {
        let Early {
            completions,
            found,
            hint,
            blocked,
        } = early;
        let slot = SlotKey {
            ingredient: index,
            key,
            revision: r,
            fork: acc.pinned().fork,
        };
        let owner = match shared
            .inflight()
            .claim(slot, acc.requester())
            .map_err(Fault::Cycle)?
        {
            Claim::Wait(waiter) => match waiter.wait().await {
                Some(memo) => {
                    acc.publish(index, &*ing, &[(key, memo.clone(), r)]);
                    return Ok(memo);
                }
                // The owner went away without finishing: try to take over.
                None => {
                    early = match fetch_now(acc, index, &*ing, key, hint, None) {
                        Now::Done(memo) => return Ok(memo),
                        Now::Later(e) => e,
                    };
                    continue;
                }
            },
            Claim::Owner(owner) => owner,
        };
        // Look again after the claim: someone may have finished between our
        // lookup and our claim (they published before completing).
        let found = if shared.inflight().completions() == completions {
            found
        } else {
            acc.lookup(index, &*ing, key)
        };
        if let Some((memo, verified_at)) = &found
            && (*verified_at == r || fixed_at(memo, *verified_at, r))
            && !hint.rejects(memo)
        {
            owner.complete(memo.clone());
            return Ok(memo.clone());
        }
        // Work done on behalf of this slot (dependency walks, execution) is
        // requested by this slot's node, so that cycles through it are seen.
        let sub = acc.requested_by(owner.node().clone());
        let reason = match (&hint, &found) {
            (Hint::Stale(reason), _) => *reason,
            (Hint::Replace(_), _) => Reason::Unverifiable,
            (Hint::None, None) => Reason::New,
            (Hint::None, Some((memo, _))) => {
                // Resume the unclaimed walk if it was over this same memo.
                let mut walk = match blocked {
                    Some(w) if w.root().is_some_and(|m| Arc::ptr_eq(m, memo)) => w,
                    _ => Walk::new(index, key, memo.clone()),
                };
                match walk.run(&sub).await {
                    Verdict::Unchanged => {
                        ing.counters().revalidations.incr();
                        acc.verified(index, &*ing, key, memo);
                        owner.complete(memo.clone());
                        return Ok(memo.clone());
                    }
                    Verdict::Changed(reason) => reason,
                    Verdict::Blocked => Reason::Unverifiable,
                }
            }
        };
        let old = found.map(|(memo, _)| memo);
        let memo = execute(&sub, index, &ing, key, old, reason).await?;
        debug_assert_eq!(
            memo.meta().executed_at,
            r,
            "executed at the access's revision"
        );
        // Publish before complete: a waiter woken by `complete` (or a reader
        // that finds the slot free) must find the memo in the view.
        acc.publish(index, &*ing, &[(key, memo.clone(), r)]);
        if acc.pinned().fork == MAIN_FORK {
            let dep = Dep {
                ingredient: index,
                key,
            };
            shared.note_change(r, dep);
        }
        owner.complete(memo.clone());
        return Ok(memo);
    }
}

/// Whether `memo`, found verified at `verified_at` after `r` (a later
/// revision of the reader's own history), is an untracked memo whose value
/// is the one its query had at `r`: its identity is `r` itself, and an
/// identity is created by an execution at that revision (later ones only
/// keep it for an equal value). Running the body again at `r` would read
/// the outside world as it is now, and a different value would be a twin
/// with the same identity, which would then vouch for the dependents of
/// either one (S22: one value per revision).
fn fixed_at(memo: &MemoRef, verified_at: Revision, r: Revision) -> bool {
    verified_at > r && memo.meta().changed_at == r && memo.meta().untracked()
}

/// Runs the body of (`index`, `key`) once under a fresh `QueryCx`.
async fn execute(
    sub: &Access,
    index: IngredientIndex,
    ing: &Arc<dyn Ingredient>,
    key: KeyId,
    old: Option<MemoRef>,
    reason: Reason,
) -> Result<MemoRef> {
    let reads = old.as_ref().map_or(0, |m| m.meta().deps.len());
    let execution = Execution::new(sub.deeper(), index, key, reason, reads);
    let depth = execution.access().depth();
    ing.counters().executions.incr();
    let running = Running {
        shared: shared_id(sub.view().shared()),
        node: sub.requester().cloned(),
        depth,
    };
    let fut = RUNNING.scope(running, ing.clone().execute(execution, key, old));
    if depth.is_multiple_of(SPAWN_EVERY)
        && let Ok(handle) = tokio::runtime::Handle::try_current()
    {
        // Continue on a fresh task: its polls start at the bottom of a stack.
        let mut task = AbortOnDrop(handle.spawn(fut.in_current_span()));
        return match (&mut task.0).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(Error::internal(format!("execution task panicked: {e}"))),
            Err(_) => Err(ErrorKind::Cancelled.into()),
        };
    }
    fut.await
}

/// The execution running on this task, while its body is polled.
#[derive(Clone)]
struct Running {
    /// Which database (the address of its `Shared`).
    shared: usize,
    node: Option<Arc<Node>>,
    depth: u32,
}

tokio::task_local! {
    static RUNNING: Running;
}

fn shared_id(shared: &Arc<Shared>) -> usize {
    Arc::as_ptr(shared) as usize
}

/// For a top-level request (`db.query` on a captured handle) made from
/// inside a body of the same database on the same task: the running
/// execution's in-flight node and depth. The request is then treated as made
/// by that execution, so that a body that asks for itself through the
/// database gets a cycle error instead of waiting for itself forever (S12),
/// and deep chains through handles still move to fresh tasks.
pub(crate) fn running_execution(shared: &Arc<Shared>) -> (Option<Arc<Node>>, u32) {
    let id = shared_id(shared);
    RUNNING
        .try_with(|r| {
            if r.shared == id {
                (r.node.clone(), r.depth)
            } else {
                (None, 0)
            }
        })
        .unwrap_or((None, 0))
}

/// Aborts the task when the awaiting future is dropped (S14: a dropped caller
/// stops work nobody waits for; its claim is released by the task's drop).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
