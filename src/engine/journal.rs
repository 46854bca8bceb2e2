//! The journal: which (ingredient, key) changed at which revision — input
//! changes and executions of journaled kinds — since a layer above last took
//! it (persistence appends what changed, not the database).

use crate::engine::storage::Dep;
use crate::revision::Revision;

/// Input changes and executions of journaled kinds since the last save or
/// append, so an append costs what changed, not the database.
#[derive(Default)]
pub(crate) struct Journal {
    /// (sequence number, revision, what changed), in the order pushed.
    pub entries: Vec<(u64, Revision, Dep)>,
    next_seq: u64,
    pub overflowed: bool,
}

/// Beyond this many entries the journal stops recording and the next
/// append writes a full save instead.
pub(crate) const JOURNAL_CAP: usize = 1 << 22;

impl Journal {
    pub(crate) fn push(&mut self, revision: Revision, dep: Dep) {
        if self.entries.len() >= JOURNAL_CAP {
            self.overflowed = true;
            self.entries = Vec::new();
        } else if !self.overflowed {
            self.entries.push((self.next_seq, revision, dep));
        }
        self.next_seq += 1;
    }

    /// Sequence number the next entry will get.
    pub(crate) fn end(&self) -> u64 {
        self.next_seq
    }

    /// After a save of a state at `revision` that began when the journal
    /// ended at `cut`: forgets what the save covered — entries from before
    /// `cut` at or before `revision`. Later entries (even at the same
    /// revision: memos computed after the save began) are kept.
    pub(crate) fn saved(&mut self, cut: u64, revision: Revision) {
        self.entries
            .retain(|(seq, r, _)| *seq >= cut || *r > revision);
        self.overflowed = false;
    }

    /// Takes every entry (for an append).
    pub(crate) fn take(&mut self) -> Vec<(u64, Revision, Dep)> {
        std::mem::take(&mut self.entries)
    }

    /// Puts back entries an append could not write.
    pub(crate) fn restore(&mut self, mut entries: Vec<(u64, Revision, Dep)>) {
        entries.append(&mut self.entries);
        self.entries = entries;
    }
}
