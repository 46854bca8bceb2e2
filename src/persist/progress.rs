//! Progress of long cache operations: a callback the user sets with
//! [`DatabaseBuilder::cache_progress`](crate::DatabaseBuilder::cache_progress),
//! and `debug` tracing events with the same figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which cache operation a [`CacheProgress`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOperation {
    /// [`View::save_cache`](crate::View::save_cache).
    Save,
    /// [`Database::load_cache`](crate::Database::load_cache).
    Load,
    /// [`Database::append_cache`](crate::Database::append_cache).
    Append,
}

/// The step of a cache operation. `done` and `total` of a
/// [`CacheProgress`] count bytes while reading, decoding and writing, and
/// entries (input values, memos, interned values) while encoding and
/// installing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheStep {
    /// Save or append: encoding entries (`total` is 0 until known).
    Encoding,
    /// Save or append: writing the file's bytes.
    Writing,
    /// Save or append: waiting for the disk (fsync).
    Syncing,
    /// Load: reading the file's bytes (base, then log).
    Reading,
    /// Load: checking and decoding records, by bytes.
    Decoding,
    /// Load: building the tables, by entries.
    Installing,
    /// Finished (successfully or not); the last report of an operation.
    Done,
}

/// A report of progress, passed to the callback set with
/// [`DatabaseBuilder::cache_progress`](crate::DatabaseBuilder::cache_progress).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheProgress {
    /// The operation reporting.
    pub operation: CacheOperation,
    /// Its current step.
    pub step: CacheStep,
    /// How much of this step is done (bytes or entries, see [`CacheStep`]).
    pub done: u64,
    /// How much the step has in all; 0 when not known.
    pub total: u64,
    /// Time since the operation started.
    pub elapsed: Duration,
}

/// The callback's type.
pub(crate) type ProgressFn = Arc<dyn Fn(&CacheProgress) + Send + Sync>;

/// How often, at most, a step reports (besides its first and last report).
const EVERY: Duration = Duration::from_millis(50);

/// Reports one operation's progress, at most every 50 ms per step, to the
/// callback (if any) and as `debug` events. A panicking callback is logged
/// and ignored: it never fails or half-applies the operation.
pub(crate) struct Progress {
    callback: Option<ProgressFn>,
    operation: CacheOperation,
    started: Instant,
    last: Option<(CacheStep, Instant)>,
    /// Calls since the clock was last read.
    calls: u32,
}

impl Progress {
    pub(crate) fn new(callback: Option<ProgressFn>, operation: CacheOperation) -> Progress {
        Progress {
            callback,
            operation,
            started: Instant::now(),
            last: None,
            calls: 0,
        }
    }

    /// `done` of `total` of `step`. Cheap when called often: the clock is
    /// read every 256 calls of a step (and on its first and last).
    pub(crate) fn at(&mut self, step: CacheStep, done: u64, total: u64) {
        if self.callback.is_none() && !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let same_step = matches!(self.last, Some((s, _)) if s == step);
        let last_of_step = total > 0 && done >= total;
        if same_step && !last_of_step {
            self.calls = self.calls.wrapping_add(1);
            if !self.calls.is_multiple_of(256) {
                return;
            }
        }
        let now = Instant::now();
        if let Some((s, at)) = self.last
            && s == step
            && !last_of_step
            && now.duration_since(at) < EVERY
        {
            return;
        }
        self.last = Some((step, now));
        self.report(step, done, total, now);
    }

    /// The last report: the operation is over.
    pub(crate) fn done(&mut self) {
        self.last = Some((CacheStep::Done, Instant::now()));
        self.report(CacheStep::Done, 1, 1, Instant::now());
    }

    fn report(&self, step: CacheStep, done: u64, total: u64, now: Instant) {
        let progress = CacheProgress {
            operation: self.operation,
            step,
            done,
            total,
            elapsed: now.duration_since(self.started),
        };
        tracing::debug!(
            operation = ?progress.operation,
            step = ?progress.step,
            done,
            total,
            elapsed_ms = progress.elapsed.as_millis() as u64,
            "cache progress"
        );
        if let Some(callback) = &self.callback {
            let call = std::panic::AssertUnwindSafe(|| callback(&progress));
            if std::panic::catch_unwind(call).is_err() {
                tracing::warn!("the cache progress callback panicked; ignored");
            }
        }
    }
}
