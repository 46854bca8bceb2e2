//! The in-flight table: which (ingredient, key, revision, fork) is being
//! fetched right now, by whom, and who waits for whom.
//!
//! Shared by every view of a database. It gives:
//! - S13: the first request claims the slot and fetches; concurrent requests
//!   for the same slot wait for its result.
//! - S14: the claim is a guard; dropping it without completing (the caller's
//!   future was dropped or aborted) marks the slot abandoned and wakes the
//!   waiters, one of which claims it again. Nothing stays "running" with
//!   nobody running it.
//! - S12: a wait-for graph between in-flight slots (edge requester → target
//!   while a request is outstanding, whether the target runs inline in the
//!   requester's task, in another task, or in a `join!` sibling). A request
//!   that would wait on a slot that (transitively) waits on the requester is a
//!   cycle, reported with its path instead of deadlocking.
//!
//!   The edge from the requester that *claimed* a slot is the slot's `parent`
//!   (set once, free); only requests that wait on someone else's slot are
//!   kept in a map. Cycle checks walk the graph backwards from the requester.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::error::{Error, ErrorKind, Result};
use crate::registry::Registry;
use crate::revision::Revision;
use crate::storage::{Dep, ForkId, KeyId, MemoRef};
use crate::util::lock;

/// One fetch of one memo at one revision of one history.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct SlotKey {
    pub ingredient: u32,
    pub key: KeyId,
    pub revision: Revision,
    pub fork: ForkId,
}

impl SlotKey {
    pub(crate) fn dep(&self) -> Dep {
        Dep {
            ingredient: self.ingredient,
            key: self.key,
        }
    }
}

enum NodeState {
    Running,
    Done(MemoRef),
    Abandoned,
}

/// An in-flight fetch.
pub(crate) struct Node {
    id: u64,
    pub slot: SlotKey,
    state: Mutex<NodeState>,
    notify: Notify,
    /// The in-flight fetch that claimed this one (it waits on it), if any.
    parent: Option<Arc<Node>>,
    /// Whether anyone ever waited on this node (set under the table lock,
    /// before the node can leave the table), so completing an unwatched node
    /// skips waking.
    watched: std::sync::atomic::AtomicBool,
}

impl Drop for Node {
    /// Frees the chain of requesters iteratively: a node holds its parent, so
    /// a chain 100 000 deep (a deep in-flight chain whose caller went away)
    /// would otherwise be freed by one recursive drop per level and overflow
    /// the stack (`s14_cancelling_a_deep_chain_does_not_overflow`).
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(parent) = next {
            next = match Arc::into_inner(parent) {
                Some(mut node) => node.parent.take(),
                None => None,
            };
        }
    }
}

struct Inner {
    nodes: HashMap<SlotKey, Arc<Node>, ahash::RandomState>,
    /// target node id → requesters waiting on it (a multiset).
    waiters: HashMap<u64, Vec<Arc<Node>>, ahash::RandomState>,
}

pub(crate) struct InFlight {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    /// Incremented whenever an owner completes (after it published).
    completions: AtomicU64,
}

/// The outcome of [`InFlight::claim`].
pub(crate) enum Claim<'a> {
    /// The caller now owns the slot and must fetch it.
    Owner(Owner<'a>),
    /// Someone else is fetching it.
    Wait(Waiter<'a>),
}

/// A requester waiting on someone else's slot; removed when dropped.
struct WaitEdge<'a> {
    table: &'a InFlight,
    requester: Arc<Node>,
    target: u64,
}

impl Drop for WaitEdge<'_> {
    fn drop(&mut self) {
        let mut inner = lock(&self.table.inner);
        if let Some(list) = inner.waiters.get_mut(&self.target) {
            if let Some(pos) = list.iter().position(|r| Arc::ptr_eq(r, &self.requester)) {
                list.swap_remove(pos);
            }
            if list.is_empty() {
                inner.waiters.remove(&self.target);
            }
        }
    }
}

/// Ownership of an in-flight slot. Complete it, or drop it to abandon.
pub(crate) struct Owner<'a> {
    table: &'a InFlight,
    node: Arc<Node>,
    done: bool,
}

impl Owner<'_> {
    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Publishes the result to every waiter and frees the slot.
    pub(crate) fn complete(mut self, memo: MemoRef) {
        self.finish(NodeState::Done(memo));
    }

    fn finish(&mut self, state: NodeState) {
        self.done = true;
        if matches!(state, NodeState::Done(_)) {
            self.table.completions.fetch_add(1, Ordering::SeqCst);
        }
        *lock(&self.node.state) = state;
        {
            let mut inner = lock(&self.table.inner);
            if let Some(n) = inner.nodes.get(&self.node.slot)
                && Arc::ptr_eq(n, &self.node)
            {
                inner.nodes.remove(&self.node.slot);
            }
        }
        // Waiters register under the table lock while the node is in the
        // table, so after the removal above this flag is final.
        if self.node.watched.load(Ordering::Acquire) {
            self.node.notify.notify_waiters();
        }
    }
}

impl Drop for Owner<'_> {
    fn drop(&mut self) {
        if !self.done {
            tracing::trace!(slot = ?self.node.slot, "in-flight fetch abandoned");
            self.finish(NodeState::Abandoned);
        }
    }
}

/// A wait for someone else's fetch.
pub(crate) struct Waiter<'a> {
    node: Arc<Node>,
    _edge: Option<WaitEdge<'a>>,
}

impl Waiter<'_> {
    /// The result, or `None` if the owner abandoned the slot (the caller
    /// should then try to claim it itself).
    pub(crate) async fn wait(self) -> Option<MemoRef> {
        loop {
            let notified = self.node.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match &*lock(&self.node.state) {
                NodeState::Done(memo) => return Some(memo.clone()),
                NodeState::Abandoned => return None,
                NodeState::Running => {}
            }
            notified.await;
        }
    }
}

impl InFlight {
    pub(crate) fn new() -> Self {
        InFlight {
            inner: Mutex::new(Inner {
                nodes: HashMap::with_hasher(ahash::RandomState::new()),
                waiters: HashMap::with_hasher(ahash::RandomState::new()),
            }),
            next_id: AtomicU64::new(1),
            completions: AtomicU64::new(0),
        }
    }

    /// A counter that changes whenever some fetch completes. A caller that
    /// read it before missing a lookup and then claimed a slot only needs to
    /// look again if it changed.
    pub(crate) fn completions(&self) -> u64 {
        self.completions.load(Ordering::SeqCst)
    }

    /// Number of slots currently in flight.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).nodes.len()
    }

    /// Claims `slot` for `requester` (the in-flight fetch making the request,
    /// if any), or returns a waiter on whoever holds it, or a cycle error.
    pub(crate) fn claim<'a>(
        &'a self,
        slot: SlotKey,
        requester: Option<&Arc<Node>>,
        registry: &Registry,
    ) -> Result<Claim<'a>> {
        let mut inner = lock(&self.inner);
        if let Some(node) = inner.nodes.get(&slot).cloned() {
            node.watched.store(true, Ordering::Release);
            let edge = match requester {
                Some(req) => {
                    if let Some(path) = cycle_path(&inner, req, node.id) {
                        drop(inner);
                        return Err(cycle_error(&path, registry));
                    }
                    inner.waiters.entry(node.id).or_default().push(req.clone());
                    Some(WaitEdge {
                        table: self,
                        requester: req.clone(),
                        target: node.id,
                    })
                }
                None => None,
            };
            return Ok(Claim::Wait(Waiter { node, _edge: edge }));
        }
        let node = Arc::new(Node {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            slot,
            state: Mutex::new(NodeState::Running),
            notify: Notify::new(),
            parent: requester.cloned(),
            watched: std::sync::atomic::AtomicBool::new(false),
        });
        inner.nodes.insert(slot, node.clone());
        Ok(Claim::Owner(Owner {
            table: self,
            node,
            done: false,
        }))
    }
}

/// If `target` (transitively) waits on `requester`, the cycle as a path from
/// `target` forward to `requester`. Walks backwards from `requester`: the
/// fetches waiting on a node are its `parent` and its registered waiters.
fn cycle_path(inner: &Inner, requester: &Arc<Node>, target: u64) -> Option<Vec<Arc<Node>>> {
    // node id → (node, the node it waits on, towards the requester).
    let mut next_of: HashMap<u64, (Arc<Node>, u64), ahash::RandomState> = HashMap::default();
    next_of.insert(requester.id, (requester.clone(), requester.id));
    let mut stack = vec![requester.clone()];
    while let Some(n) = stack.pop() {
        if n.id == target {
            // Follow the chain from the target forward to the requester.
            let mut path = vec![n.clone()];
            let mut cur = n.id;
            while cur != requester.id {
                cur = next_of.get(&cur)?.1;
                path.push(next_of.get(&cur)?.0.clone());
            }
            return Some(path);
        }
        let preds = n
            .parent
            .iter()
            .chain(inner.waiters.get(&n.id).into_iter().flatten());
        for p in preds {
            if next_of.contains_key(&p.id) {
                continue;
            }
            next_of.insert(p.id, (p.clone(), n.id));
            stack.push(p.clone());
        }
    }
    None
}

/// `path` runs from the slot being requested to the requester; the cycle is
/// that path closed by the request itself.
fn cycle_error(path: &[Arc<Node>], registry: &Registry) -> Error {
    let mut names: Vec<String> = path
        .iter()
        .map(|n| describe(n.slot.dep(), registry))
        .collect();
    if let Some(first) = names.first().cloned() {
        names.push(first);
    }
    tracing::debug!(path = %names.join(" → "), "query cycle detected");
    ErrorKind::Cycle { path: names }.into()
}

/// `Kind(key)`.
pub(crate) fn describe(dep: Dep, registry: &Registry) -> String {
    match registry.get(dep.ingredient) {
        Ok(ing) => format!("{}({})", ing.name(), ing.debug_key(dep.key)),
        Err(_) => format!("?{}({})", dep.ingredient, dep.key),
    }
}
