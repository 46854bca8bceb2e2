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
}

struct Inner {
    nodes: HashMap<SlotKey, Arc<Node>, ahash::RandomState>,
    /// requester node id → targets it is currently requesting (a multiset).
    edges: HashMap<u64, Vec<Arc<Node>>, ahash::RandomState>,
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

/// A requester → target edge, removed when dropped.
struct Edge<'a> {
    table: &'a InFlight,
    requester: Arc<Node>,
    target: Arc<Node>,
}

impl Drop for Edge<'_> {
    fn drop(&mut self) {
        let mut inner = lock(&self.table.inner);
        if let Some(targets) = inner.edges.get_mut(&self.requester.id) {
            if let Some(pos) = targets.iter().position(|t| Arc::ptr_eq(t, &self.target)) {
                targets.swap_remove(pos);
            }
            if targets.is_empty() {
                inner.edges.remove(&self.requester.id);
            }
        }
    }
}

/// Ownership of an in-flight slot. Complete it, or drop it to abandon.
pub(crate) struct Owner<'a> {
    table: &'a InFlight,
    node: Arc<Node>,
    done: bool,
    _edge: Option<Edge<'a>>,
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
        self.node.notify.notify_waiters();
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
    _edge: Option<Edge<'a>>,
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
                edges: HashMap::with_hasher(ahash::RandomState::new()),
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
            let edge = match requester {
                Some(req) => {
                    if let Some(path) = path_between(&inner, &node, req.id) {
                        drop(inner);
                        return Err(cycle_error(&path, registry));
                    }
                    inner.edges.entry(req.id).or_default().push(node.clone());
                    Some(Edge {
                        table: self,
                        requester: req.clone(),
                        target: node.clone(),
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
        });
        inner.nodes.insert(slot, node.clone());
        let edge = requester.map(|req| {
            inner.edges.entry(req.id).or_default().push(node.clone());
            Edge {
                table: self,
                requester: req.clone(),
                target: node.clone(),
            }
        });
        Ok(Claim::Owner(Owner {
            table: self,
            node,
            done: false,
            _edge: edge,
        }))
    }
}

/// Path `from → … → to` in the wait-for graph (iterative DFS), if any.
fn path_between(inner: &Inner, from: &Arc<Node>, to: u64) -> Option<Vec<Arc<Node>>> {
    if from.id == to {
        return Some(vec![from.clone()]);
    }
    let mut parent: HashMap<u64, (Arc<Node>, u64), ahash::RandomState> =
        HashMap::with_hasher(ahash::RandomState::new());
    parent.insert(from.id, (from.clone(), 0));
    let mut stack = vec![from.clone()];
    while let Some(n) = stack.pop() {
        for t in inner.edges.get(&n.id).into_iter().flatten() {
            if parent.contains_key(&t.id) {
                continue;
            }
            parent.insert(t.id, (t.clone(), n.id));
            if t.id == to {
                let mut path = vec![t.clone()];
                let mut cur = n.id;
                while let Some((node, up)) = parent.get(&cur) {
                    path.push(node.clone());
                    if cur == from.id {
                        break;
                    }
                    cur = *up;
                }
                path.reverse();
                return Some(path);
            }
            stack.push(t.clone());
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
