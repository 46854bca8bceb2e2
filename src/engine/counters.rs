//! Counters (executions, hits, revalidations, cutoffs, dependency checks),
//! striped so the warm-hit path never contends on one cache line.

use std::sync::atomic::{AtomicU64, Ordering};

const STRIPES: usize = 4;

#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// A counter striped over cache lines so that concurrent hits on different
/// threads do not fight over one line.
#[derive(Default)]
pub(crate) struct Counter {
    stripes: [Stripe; STRIPES],
}

/// A stripe for the current thread, from the address of a local: threads
/// have disjoint stacks, so concurrent threads mostly pick different stripes
/// — without a thread-local lookup on the warm-hit path.
#[inline]
fn stripe() -> usize {
    let marker = 0u8;
    let addr = std::ptr::addr_of!(marker) as usize;
    (addr >> 16) % STRIPES
}

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn incr(&self) {
        self.add(1)
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Per-kind counters, shared by every view of a database.
#[derive(Default)]
pub(crate) struct Counters {
    pub executions: Counter,
    pub hits: Counter,
    pub revalidations: Counter,
    pub cutoffs: Counter,
    /// Memos dropped by the kind's capacity.
    pub evictions: Counter,
}
