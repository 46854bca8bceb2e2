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

use crate::engine::storage::{Dep, ForkId, IngredientIndex, KeyId, MemoRef};
use crate::revision::Revision;
use crate::util::lock;

/// One fetch of one memo at one revision of one history.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct SlotKey {
    pub ingredient: IngredientIndex,
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

type IdMap<V> = HashMap<u64, V, ahash::RandomState>;

struct Inner {
    nodes: HashMap<SlotKey, Arc<Node>, ahash::RandomState>,
    /// target node id → requesters waiting on it (a multiset).
    waiters: IdMap<Vec<Arc<Node>>>,
    /// requester node id → the targets it waits on (a multiset): the
    /// forward direction of `waiters`.
    waits_on: IdMap<Vec<Arc<Node>>>,
    /// node id → the in-flight nodes it claimed (whose `parent` it is): the
    /// forward direction of `Node::parent`.
    children: IdMap<Children>,
}

/// The in-flight nodes one node claimed. Most nodes claim one at a time
/// (a chain, a body awaiting its reads in turn), so one child is kept
/// without a map of its own: no allocation per claim.
enum Children {
    One(Arc<Node>),
    Many(IdMap<Arc<Node>>),
}

impl Children {
    fn iter(&self) -> impl Iterator<Item = &Arc<Node>> {
        let (one, many) = match self {
            Children::One(node) => (Some(node), None),
            Children::Many(map) => (None, Some(map)),
        };
        one.into_iter()
            .chain(many.into_iter().flat_map(|map| map.values()))
    }

    fn insert(&mut self, node: Arc<Node>) {
        match self {
            Children::One(first) => {
                let mut map = IdMap::default();
                map.insert(first.id, first.clone());
                map.insert(node.id, node);
                *self = Children::Many(map);
            }
            Children::Many(map) => {
                map.insert(node.id, node);
            }
        }
    }

    /// Removes the child `id` (if there); whether none is left.
    fn remove(&mut self, id: u64) -> bool {
        match self {
            Children::One(node) => node.id == id,
            Children::Many(map) => {
                map.remove(&id);
                map.is_empty()
            }
        }
    }
}

/// Removes one occurrence of `node` from the multiset `map[key]`.
fn remove_from(map: &mut IdMap<Vec<Arc<Node>>>, key: u64, node: &Arc<Node>) {
    if let Some(list) = map.get_mut(&key) {
        if let Some(pos) = list.iter().position(|n| Arc::ptr_eq(n, node)) {
            list.swap_remove(pos);
        }
        if list.is_empty() {
            map.remove(&key);
        }
    }
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
    target: Arc<Node>,
}

impl Drop for WaitEdge<'_> {
    fn drop(&mut self) {
        let mut inner = lock(&self.table.inner);
        remove_from(&mut inner.waiters, self.target.id, &self.requester);
        remove_from(&mut inner.waits_on, self.requester.id, &self.target);
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
            if let Some(parent) = &self.node.parent
                && let Some(siblings) = inner.children.get_mut(&parent.id)
                && siblings.remove(self.node.id)
            {
                inner.children.remove(&parent.id);
            }
            // Children still in flight (spawned clones outliving the body)
            // are no longer reached through this node.
            inner.children.remove(&self.node.id);
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
                waiters: HashMap::default(),
                waits_on: HashMap::default(),
                children: HashMap::default(),
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
    /// if any), or returns a waiter on whoever holds it, or the cycle the
    /// wait would close (as data: the path of dependencies from the slot
    /// requested to the requester; the layer above names it for the user).
    pub(crate) fn claim<'a>(
        &'a self,
        slot: SlotKey,
        requester: Option<&Arc<Node>>,
    ) -> std::result::Result<Claim<'a>, Cycle> {
        let mut inner = lock(&self.inner);
        if let Some(node) = inner.nodes.get(&slot).cloned() {
            node.watched.store(true, Ordering::Release);
            let edge = match requester {
                Some(req) => {
                    if let Some(path) = cycle_path(&inner, req, &node) {
                        drop(inner);
                        return Err(Cycle(path.iter().map(|n| n.slot.dep()).collect()));
                    }
                    inner.waiters.entry(node.id).or_default().push(req.clone());
                    inner.waits_on.entry(req.id).or_default().push(node.clone());
                    Some(WaitEdge {
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
            parent: requester.cloned(),
            watched: std::sync::atomic::AtomicBool::new(false),
        });
        inner.nodes.insert(slot, node.clone());
        if let Some(req) = requester {
            match inner.children.entry(req.id) {
                std::collections::hash_map::Entry::Occupied(mut siblings) => {
                    siblings.get_mut().insert(node.clone())
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(Children::One(node.clone()));
                }
            }
        }
        Ok(Claim::Owner(Owner {
            table: self,
            node,
            done: false,
        }))
    }
}

/// If `target` (transitively) waits on `requester`, the cycle as a path from
/// `target` forward to `requester`.
///
/// "X waits on Y" is an edge X → Y: a node waits on the nodes it claimed
/// (`children`) and on those it waits for (`waits_on`). The search runs from
/// both ends at once — forward from `target`, backward from `requester`
/// (`parent` and `waiters`) — always growing the smaller side, and stops as
/// soon as they meet or either side runs out. Its cost is about twice the
/// smaller of the two reachable sets, not the depth of the requester's
/// ancestry: a `join!` of two requests for the same key at every level of a
/// chain 20 000 deep checks a handful of nodes per level instead of walking
/// to the root each time (`s12_cycle_checks_are_not_quadratic_in_depth`).
fn cycle_path(inner: &Inner, requester: &Arc<Node>, target: &Arc<Node>) -> Option<Vec<Arc<Node>>> {
    if requester.id == target.id {
        return Some(vec![target.clone()]);
    }
    // node id → (node, the neighbour it was reached from).
    let mut fwd: IdMap<(Arc<Node>, u64)> = HashMap::default();
    let mut bwd: IdMap<(Arc<Node>, u64)> = HashMap::default();
    fwd.insert(target.id, (target.clone(), target.id));
    bwd.insert(requester.id, (requester.clone(), requester.id));
    let mut fwd_queue = std::collections::VecDeque::from([target.clone()]);
    let mut bwd_queue = std::collections::VecDeque::from([requester.clone()]);
    let meet = loop {
        if fwd_queue.len() <= bwd_queue.len() {
            let n = fwd_queue.pop_front()?;
            let next = inner
                .children
                .get(&n.id)
                .into_iter()
                .flat_map(Children::iter)
                .chain(inner.waits_on.get(&n.id).into_iter().flatten());
            let mut met = None;
            for m in next {
                if fwd.contains_key(&m.id) {
                    continue;
                }
                fwd.insert(m.id, (m.clone(), n.id));
                if bwd.contains_key(&m.id) {
                    met = Some(m.id);
                    break;
                }
                fwd_queue.push_back(m.clone());
            }
            if let Some(m) = met {
                break m;
            }
        } else {
            let n = bwd_queue.pop_front()?;
            let prev = n
                .parent
                .iter()
                .chain(inner.waiters.get(&n.id).into_iter().flatten());
            let mut met = None;
            for p in prev {
                if bwd.contains_key(&p.id) {
                    continue;
                }
                bwd.insert(p.id, (p.clone(), n.id));
                if fwd.contains_key(&p.id) {
                    met = Some(p.id);
                    break;
                }
                bwd_queue.push_back(p.clone());
            }
            if let Some(m) = met {
                break m;
            }
        }
    };
    // target → … → meet (following `fwd` back), then meet → … → requester.
    let mut head = Vec::new();
    let mut cur = meet;
    loop {
        let (node, from) = fwd.get(&cur)?;
        head.push(node.clone());
        if cur == target.id {
            break;
        }
        cur = *from;
    }
    head.reverse();
    let mut cur = meet;
    while cur != requester.id {
        cur = bwd.get(&cur)?.1;
        head.push(bwd.get(&cur)?.0.clone());
    }
    Some(head)
}

/// A dependency cycle: the path from the slot being requested to the
/// requester, which the request itself closes.
#[derive(Clone, Debug)]
pub(crate) struct Cycle(pub Vec<Dep>);
