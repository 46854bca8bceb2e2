//! Epochs: when may a reclaimed key id be given to another key?
//!
//! Every `State` carries the `Epoch` it belongs to; a state derived from
//! another (every merge, commit, snapshot) keeps its epoch, and only a
//! collection of the database that retires key ids moves the database's
//! state on to the next epoch. An epoch holds its successor alive, so an
//! epoch is dropped only once no state of it *or of any earlier epoch*
//! exists — no snapshot, no access pinned by an execution in flight, no
//! state a save is writing (and releases wait while a save or an append
//! runs: `Shared::hold_ids`). A load's keys get their ids before its tables
//! are installed: their kinds retire nothing until then
//! (`KeyIds::hold_retirement`).
//!
//! Architecture Invariant: a key id retired in epoch `e` (its key gone from
//! the database's tables at that collection) is reused for another key only
//! after `e` is dropped. Until then every state that may still hold the key
//! under that id resolves the id to it. Afterwards the id's generation is
//! bumped, so what outlives those states and names the old id — an edge of
//! a memo, a link map of a cache file, an event — names a generation that no
//! longer exists, and reads as "changed" (or "unknown"), never as the new
//! key. See `typed/keys.rs`, `KeyIds`.

use std::sync::{Arc, OnceLock, Weak};

/// The epoch of a `State` (cloning is one reference count).
#[derive(Clone)]
pub(crate) struct Epoch(Arc<Token>);

struct Token {
    seq: u64,
    /// The next epoch, once there is one: kept alive by this one.
    next: OnceLock<Arc<Token>>,
}

impl Epoch {
    /// The first epoch of a database.
    pub(crate) fn first() -> Epoch {
        Epoch(Arc::new(Token {
            seq: 0,
            next: OnceLock::new(),
        }))
    }

    /// This epoch's number (epochs are numbered in order).
    #[inline]
    pub(crate) fn seq(&self) -> u64 {
        self.0.seq
    }

    /// The epoch after this one (created on first call).
    pub(crate) fn successor(&self) -> Epoch {
        Epoch(
            self.0
                .next
                .get_or_init(|| {
                    Arc::new(Token {
                        seq: self.0.seq + 1,
                        next: OnceLock::new(),
                    })
                })
                .clone(),
        )
    }

    /// A handle that tells when this epoch (and every earlier one) is gone.
    pub(crate) fn watch(&self) -> EpochWatch {
        EpochWatch(Arc::downgrade(&self.0))
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Epoch({})", self.0.seq)
    }
}

/// Whether an epoch is still alive, without keeping it alive.
pub(crate) struct EpochWatch(Weak<Token>);

impl EpochWatch {
    /// True once no state of this epoch or an earlier one exists.
    pub(crate) fn ended(&self) -> bool {
        self.0.strong_count() == 0
    }
}

impl Drop for Token {
    /// Iterative: an old snapshot dropped after many epochs frees the whole
    /// chain without a deep recursion (S16: drops are never recursive).
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(token) = next {
            next = match Arc::try_unwrap(token) {
                Ok(mut token) => token.next.take(),
                Err(_) => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_ends_only_with_every_earlier_one() {
        let e0 = Epoch::first();
        let e1 = e0.successor();
        let e2 = e1.successor();
        assert_eq!((e0.seq(), e1.seq(), e2.seq()), (0, 1, 2));
        let (w1, w2) = (e1.watch(), e2.watch());
        drop(e1);
        drop(e2);
        assert!(!w1.ended() && !w2.ended(), "e0 keeps its successors alive");
        drop(e0);
        assert!(w1.ended() && w2.ended());
    }

    #[test]
    fn a_long_chain_drops_without_recursion() {
        let first = Epoch::first();
        let mut e = first.clone();
        for _ in 0..1_000_000 {
            e = e.successor();
        }
        drop(e);
        drop(first);
    }
}
