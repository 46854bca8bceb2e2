//! What happened, for observers: the current revision of each view (a
//! `tokio::sync::watch` cell) and a broadcast of input changes and, for
//! observers that ask, executions.
//!
//! Architecture invariant: nobody listening costs the hot path nothing. A
//! warm hit never touches the bus; an execution reads one atomic counter
//! (`wants_executions`) and builds no event unless it is non-zero; a commit
//! builds its event only when some receiver exists.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;

use crate::engine::epoch::Epoch;
use crate::engine::storage::{Dep, Reason};
use crate::revision::Revision;

/// Events buffered per receiver before a slow receiver starts missing some
/// (it is then told how many it missed). The ring is allocated by the first
/// subscription (about 230 KB), not by every database.
const CAPACITY: usize = 4096;

/// What a commit did to one input slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// The slot has a new value.
    Set,
    /// The slot is now a tombstone.
    Remove,
}

/// One input slot changed by a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    pub dep: Dep,
    pub write: Write,
}

/// An erased event; the API layer names kinds and keys.
#[derive(Clone, Debug)]
pub(crate) enum EngineEvent {
    /// The inputs written by one commit of the database (not of forks).
    Inputs {
        revision: Revision,
        written: Arc<[Written]>,
        /// The committed state's epoch: while the event is undelivered, the
        /// key ids it names stay resolvable (a collection cannot release
        /// them), so a late receiver still names the keys.
        _ids_held: Epoch,
    },
    /// A query body ran (in the database's history) and its memo was built.
    Executed {
        revision: Revision,
        dep: Dep,
        reason: Reason,
        /// The value equalled the previous one: dependents keep theirs.
        cut_off: bool,
        /// The execution's state's epoch (see `Inputs::_ids_held`).
        _ids_held: Epoch,
    },
}

/// The database's event bus.
pub(crate) struct Bus {
    /// Created by the first `subscribe`: a database nobody observes never
    /// allocates the ring.
    tx: OnceLock<broadcast::Sender<EngineEvent>>,
    /// Live subscriptions that want execution events.
    executions: AtomicUsize,
}

impl Bus {
    pub(crate) fn new() -> Bus {
        Bus {
            tx: OnceLock::new(),
            executions: AtomicUsize::new(0),
        }
    }

    /// A new receiver. A receiver that wants executions must be paired with
    /// one `wants_executions(+1)` now and one `(-1)` when it is dropped.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.tx
            .get_or_init(|| broadcast::channel(CAPACITY).0)
            .subscribe()
    }

    pub(crate) fn count_execution_listener(&self, listening: Listening) {
        match listening {
            Listening::Started => self.executions.fetch_add(1, Ordering::AcqRel),
            Listening::Stopped => self.executions.fetch_sub(1, Ordering::AcqRel),
        };
    }

    #[inline]
    pub(crate) fn wants_executions(&self) -> bool {
        self.executions.load(Ordering::Relaxed) != 0
    }

    /// Sends `event` if anyone listens (built lazily).
    pub(crate) fn send_with(&self, event: impl FnOnce() -> EngineEvent) {
        if let Some(tx) = self.tx.get()
            && tx.receiver_count() != 0
        {
            // An error only means every receiver went away meanwhile.
            let _ = tx.send(event());
        }
    }
}

/// A subscription to execution events starting or ending.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Listening {
    Started,
    Stopped,
}
