//! Issue 13, item 2: fan-out inside queries, `QueryCx::query_all` and
//! `QueryCx::try_query_all`. Sub-queries are all in flight at once (and run
//! in parallel on a multi-thread runtime), every read is a recorded
//! dependency, a dropped or failing parent aborts what is still running,
//! and cycles through a fan-out are errors, not hangs. Every test runs under
//! a timeout, waits on barriers and notifications (never on sleeps), and
//! counts executions.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{Count, within};
use picante::*;
use tokio::sync::{Barrier, Notify, watch};

const LIMIT: Duration = Duration::from_secs(60);

struct Num;
impl Input for Num {
    type Key = u32;
    type Value = i64;
}

/// Waits (with a timeout, never a sleep) until `cond` holds, re-checking
/// after every `notify`.
async fn until(what: &str, notify: &Notify, cond: impl Fn() -> bool) {
    within(what, LIMIT, async {
        loop {
            let notified = notify.notified();
            if cond() {
                return;
            }
            notified.await;
        }
    })
    .await
}

/// Waits until nothing is in flight. Aborted tasks release their claims as
/// they are dropped, on their own worker: yield until they have.
async fn until_idle(db: &Database) {
    within("in-flight entries to be released", LIMIT, async {
        while db.stats().in_flight != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// All in flight at once, and in parallel.

/// `Num(k) * 2`, after a barrier that only opens when `parties` bodies wait.
struct AtBarrier {
    runs: Count,
    barrier: Arc<Barrier>,
}
#[async_trait]
impl AsyncQuery for AtBarrier {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let v = cx.input::<Num>(&k)?;
        self.barrier.wait().await;
        Ok(v * 2)
    }
}

/// Sums `AtBarrier` over 0..n with `try_query_all`.
struct SumAll {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for SumAll {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.try_query_all::<AtBarrier>(0..n).await?.into_iter().sum())
    }
}

/// Sums `AtBarrier` over 0..n with `query_all`.
struct SumEach {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for SumEach {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<i64> {
        self.runs.hit();
        let mut sum = 0;
        for r in cx.query_all::<AtBarrier>((0..n).map(|k| k + 100)).await {
            sum += r?;
        }
        Ok(sum)
    }
}

const N: u32 = 16;

async fn all_in_flight_at_once() -> Result<()> {
    let (leaf, all, each) = (Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .input::<Num>()
        .query(AtBarrier {
            runs: leaf.clone(),
            barrier: Arc::new(Barrier::new(N as usize)),
        })
        .query(SumAll { runs: all.clone() })
        .query(SumEach { runs: each.clone() })
        .build()?;
    let mut batch = db.batch();
    for k in 0..N {
        batch.set::<Num>(k, k as i64);
        batch.set::<Num>(k + 100, 1);
    }
    batch.commit()?;
    // The barrier holds N parties: it opens only if all N bodies are
    // waiting at once.
    let v = within("N sub-queries at one barrier", LIMIT, db.query::<SumAll>(N)).await?;
    assert_eq!(v, (0..N as i64).sum::<i64>() * 2);
    assert_eq!((leaf.get(), all.get()), (N as usize, 1));
    let v = within("N more at the barrier", LIMIT, db.query::<SumEach>(N)).await?;
    assert_eq!(v, 2 * N as i64);
    assert_eq!((leaf.get(), each.get()), (2 * N as usize, 1));
    // Warm: answered from memos, nothing re-runs (and the barrier is not
    // reached again).
    assert_eq!(db.query::<SumAll>(N).await?, (0..N as i64).sum::<i64>() * 2);
    assert_eq!((leaf.get(), all.get(), each.get()), (2 * N as usize, 1, 1));
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_sub_queries_are_all_in_flight_at_once() -> Result<()> {
    all_in_flight_at_once().await
}

#[tokio::test(flavor = "current_thread")]
async fn query_all_sub_queries_are_all_in_flight_at_once_on_one_thread() -> Result<()> {
    all_in_flight_at_once().await
}

/// A blocking rendezvous of two threads, with a timeout: `meet` returns
/// whether the other party arrived in time. Two bodies meeting here proves
/// they ran on two threads at once (polled together on one task, the first
/// would block the second).
struct Rendezvous {
    arrived: Mutex<usize>,
    cond: Condvar,
}
impl Rendezvous {
    fn meet(&self) -> bool {
        let mut arrived = self.arrived.lock().unwrap_or_else(|e| e.into_inner());
        *arrived += 1;
        self.cond.notify_all();
        let (arrived, timeout) = self
            .cond
            .wait_timeout_while(arrived, Duration::from_secs(20), |n| *n < 2)
            .unwrap_or_else(|e| e.into_inner());
        *arrived >= 2 && !timeout.timed_out()
    }
}

struct Blocking {
    runs: Count,
    meeting: Arc<Rendezvous>,
}
#[async_trait]
impl AsyncQuery for Blocking {
    type Key = u32;
    type Value = bool;
    async fn execute(&self, _cx: &QueryCx, _k: u32) -> QueryResult<bool> {
        self.runs.hit();
        // Blocks this worker thread, like a CPU-heavy body would.
        Ok(self.meeting.meet())
    }
}

struct BothMet;
#[async_trait]
impl AsyncQuery for BothMet {
    type Key = ();
    type Value = Vec<bool>;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<Vec<bool>> {
        Ok(cx.try_query_all::<Blocking>([1, 2]).await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_runs_sub_queries_in_parallel_on_two_workers() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .query(Blocking {
            runs: runs.clone(),
            meeting: Arc::new(Rendezvous {
                arrived: Mutex::new(0),
                cond: Condvar::new(),
            }),
        })
        .query(BothMet)
        .build()?;
    let met = within("two blocking bodies", LIMIT, db.query::<BothMet>(())).await?;
    assert_eq!(met, [true, true], "both bodies ran at the same time");
    assert_eq!(runs.get(), 2);
    Ok(())
}

// ---------------------------------------------------------------------------
// Cancellation.

/// Counts its drops and notifies.
struct OnDrop(Count, Arc<Notify>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.hit();
        self.1.notify_waiters();
    }
}

/// Held at a gate while `hold` is set; counts starts, drops and finishes.
struct Held {
    runs: Count,
    finished: Count,
    dropped: Count,
    changed: Arc<Notify>,
    hold: Arc<AtomicBool>,
    gate: watch::Sender<bool>,
}
#[async_trait]
impl AsyncQuery for Held {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        let v = cx.input::<Num>(&k)?;
        let _guard = OnDrop(self.dropped.clone(), self.changed.clone());
        self.runs.hit();
        self.changed.notify_waiters();
        if self.hold.load(Ordering::SeqCst) {
            let mut rx = self.gate.subscribe();
            let _ = rx.wait_for(|open| *open).await;
        }
        self.finished.hit();
        Ok(v)
    }
}

/// Sums `Held` over 0..n.
struct FanHeld {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for FanHeld {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<i64> {
        self.runs.hit();
        let mut sum = 0;
        for r in cx.query_all::<Held>(0..n).await {
            sum += r?;
        }
        Ok(sum)
    }
}

/// Fans out over `Held` in one `try_join!` branch and fails in the other
/// once every sub-query has started: the failing parent drops the fan-out.
struct FailBeside {
    runs: Count,
    started: Count,
    changed: Arc<Notify>,
}
#[async_trait]
impl AsyncQuery for FailBeside {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<i64> {
        self.runs.hit();
        let fan = async {
            let mut sum = 0;
            for r in cx.query_all::<Held>(0..n).await {
                sum += r?;
            }
            Ok::<i64, Error>(sum)
        };
        let fail = async {
            until("every sub-query to start", &self.changed, || {
                self.started.get() >= n as usize
            })
            .await;
            Err::<i64, Error>(Error::msg("the other branch failed"))
        };
        let (sum, _) = tokio::try_join!(fan, fail)?;
        Ok(sum)
    }
}

struct HeldSet {
    db: Database,
    runs: Count,
    finished: Count,
    dropped: Count,
    changed: Arc<Notify>,
    hold: Arc<AtomicBool>,
    fan: Count,
    fail_beside: Count,
}

fn held_db(n: u32) -> Result<HeldSet> {
    let (runs, finished, dropped, fan, fail_beside) = (
        Count::new(),
        Count::new(),
        Count::new(),
        Count::new(),
        Count::new(),
    );
    let changed = Arc::new(Notify::new());
    let hold = Arc::new(AtomicBool::new(true));
    let db = Database::builder()
        .input::<Num>()
        .query(Held {
            runs: runs.clone(),
            finished: finished.clone(),
            dropped: dropped.clone(),
            changed: changed.clone(),
            hold: hold.clone(),
            gate: watch::Sender::new(false),
        })
        .query(FanHeld { runs: fan.clone() })
        .query(FailBeside {
            runs: fail_beside.clone(),
            started: runs.clone(),
            changed: changed.clone(),
        })
        .build()?;
    let mut batch = db.batch();
    for k in 0..n {
        batch.set::<Num>(k, k as i64 + 1);
    }
    batch.commit()?;
    Ok(HeldSet {
        db,
        runs,
        finished,
        dropped,
        changed,
        hold,
        fan,
        fail_beside,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_aborted_parent_aborts_its_sub_queries() -> Result<()> {
    let n = 8;
    let t = held_db(n)?;
    let rev = t.db.revision();
    let parent = {
        let db = t.db.clone();
        tokio::spawn(async move { db.query::<FanHeld>(n).await })
    };
    until("every sub-query to start", &t.changed, || {
        t.runs.get() == n as usize
    })
    .await;
    assert_eq!(t.db.stats().in_flight, n as usize + 1);
    parent.abort();
    assert!(
        within("the aborted parent", LIMIT, parent)
            .await
            .unwrap_err()
            .is_cancelled()
    );
    // Every sub-query body observes the drop; none finished.
    until("every sub-query body to be dropped", &t.changed, || {
        t.dropped.get() == n as usize
    })
    .await;
    until_idle(&t.db).await;
    assert_eq!((t.runs.get(), t.finished.get(), t.fan.get()), (8, 0, 1));
    // Dropping records nothing (S14): no memo, no error.
    assert!(t.db.inspect::<FanHeld>(&n)?.is_none());
    assert!((0..n).all(|k| t.db.inspect::<Held>(&k).is_ok_and(|m| m.is_none())));

    // The same keys, same revision, execute normally.
    t.hold.store(false, Ordering::SeqCst);
    assert_eq!(t.db.revision(), rev);
    let v = within("the next access", LIMIT, t.db.query::<FanHeld>(n)).await?;
    assert_eq!(v, (1..=n as i64).sum::<i64>());
    assert_eq!((t.runs.get(), t.finished.get(), t.fan.get()), (16, 8, 2));
    assert_eq!(t.db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_dropped_future_aborts_its_sub_queries() -> Result<()> {
    let n = 6;
    let t = held_db(n)?;
    {
        let fut = t.db.query::<FanHeld>(n);
        tokio::select! {
            r = fut => panic!("the sub-queries are held, got {r:?}"),
            _ = until("every sub-query to start", &t.changed, || t.runs.get() == n as usize) => {}
        }
    }
    until("every sub-query body to be dropped", &t.changed, || {
        t.dropped.get() == n as usize
    })
    .await;
    until_idle(&t.db).await;
    assert_eq!((t.runs.get(), t.finished.get(), t.fan.get()), (6, 0, 1));
    t.hold.store(false, Ordering::SeqCst);
    assert_eq!(
        within("the next access", LIMIT, t.db.query::<FanHeld>(n)).await?,
        21
    );
    assert_eq!((t.runs.get(), t.finished.get(), t.fan.get()), (12, 6, 2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_failing_parent_aborts_its_sub_queries() -> Result<()> {
    let n = 5;
    let t = held_db(n)?;
    let err = within("the failing parent", LIMIT, t.db.query::<FailBeside>(n))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "the other branch failed");
    until("every sub-query body to be dropped", &t.changed, || {
        t.dropped.get() == n as usize
    })
    .await;
    until_idle(&t.db).await;
    assert_eq!(
        (t.runs.get(), t.finished.get(), t.fail_beside.get()),
        (5, 0, 1)
    );
    // The parent's error is memoized; the aborted sub-queries left nothing.
    assert!(t.db.query::<FailBeside>(n).await.is_err());
    assert_eq!(t.fail_beside.get(), 1);
    assert!((0..n).all(|k| t.db.inspect::<Held>(&k).is_ok_and(|m| m.is_none())));
    t.hold.store(false, Ordering::SeqCst);
    assert_eq!(t.db.query::<FanHeld>(n).await?, 15);
    assert_eq!((t.runs.get(), t.finished.get(), t.fan.get()), (10, 5, 1));
    Ok(())
}

// ---------------------------------------------------------------------------
// Errors.

/// Keys below `FAIL` succeed, `FAIL` fails once every key above it has
/// started, keys above it are held while `hold` is set.
struct Mixed {
    runs: Count,
    finished: Count,
    dropped: Count,
    started_above: Count,
    changed: Arc<Notify>,
    hold: Arc<AtomicBool>,
    above: usize,
}
const FAIL: u32 = 3;
#[async_trait]
impl AsyncQuery for Mixed {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        let _guard = OnDrop(self.dropped.clone(), self.changed.clone());
        self.runs.hit();
        let v = cx.input::<Num>(&k)?;
        if k == FAIL {
            until("every later key to start", &self.changed, || {
                self.started_above.get() >= self.above
            })
            .await;
            self.finished.hit();
            return Err(QueryError::msg(format!("key {k} is bad")));
        }
        if k > FAIL && self.hold.load(Ordering::SeqCst) {
            self.started_above.hit();
            self.changed.notify_waiters();
            std::future::pending::<()>().await;
        }
        self.finished.hit();
        Ok(v)
    }
}

struct TryAll {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for TryAll {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.try_query_all::<Mixed>(0..n).await?.into_iter().sum())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_query_all_returns_the_first_error_and_aborts_the_rest() -> Result<()> {
    let n = 8u32;
    let above = (n - FAIL - 1) as usize;
    let (runs, finished, dropped, started_above, parent) = (
        Count::new(),
        Count::new(),
        Count::new(),
        Count::new(),
        Count::new(),
    );
    let changed = Arc::new(Notify::new());
    let hold = Arc::new(AtomicBool::new(true));
    let db = Database::builder()
        .input::<Num>()
        .query(Mixed {
            runs: runs.clone(),
            finished: finished.clone(),
            dropped: dropped.clone(),
            started_above: started_above.clone(),
            changed: changed.clone(),
            hold: hold.clone(),
            above,
        })
        .query(TryAll {
            runs: parent.clone(),
        })
        .build()?;
    let mut batch = db.batch();
    for k in 0..n {
        batch.set::<Num>(k, 1);
    }
    batch.commit()?;

    let err = within("the first error", LIMIT, db.query::<TryAll>(n))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "key 3 is bad");
    // The parent's error is the sub-query's memoized error itself.
    let leaf = db.query::<Mixed>(FAIL).await.unwrap_err();
    assert!(err.same(&leaf));
    // The held keys were aborted once the error was decided.
    until("the held keys to be dropped", &changed, || {
        dropped.get() == n as usize
    })
    .await;
    until_idle(&db).await;
    assert_eq!(
        (runs.get(), finished.get(), parent.get()),
        (8, 4, 1),
        "every key started once; 0..=3 finished; the parent ran once"
    );
    // Memoized: asking again re-runs nothing.
    assert!(db.query::<TryAll>(n).await.unwrap_err().same(&leaf));
    assert_eq!((runs.get(), parent.get()), (8, 1));
    // An aborted key executes normally later.
    hold.store(false, Ordering::SeqCst);
    assert_eq!(db.query::<Mixed>(5).await?, 1);
    assert_eq!((runs.get(), finished.get()), (9, 5));

    // Fixing the bad key fixes the parent: it re-runs once, the keys it
    // already had are reused, the aborted ones run now.
    db.set::<Num>(FAIL, 2)?;
    let err = db.query::<TryAll>(n).await.unwrap_err();
    assert_eq!(err.to_string(), "key 3 is bad", "still bad: the key fails");
    assert_eq!(parent.get(), 2);
    Ok(())
}

/// Every result, errors as data: key 2 is missing, key 4 panics.
struct Flaky {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Flaky {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        if k == 4 {
            panic!("flaky {k}");
        }
        Ok(cx.input::<Num>(&k)? * 10)
    }
}

struct Tally {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Tally {
    type Key = u32;
    type Value = (i64, Vec<String>);
    async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<(i64, Vec<String>)> {
        self.runs.hit();
        let (mut sum, mut errors) = (0, Vec::new());
        for r in cx.query_all::<Flaky>(0..n).await {
            match r {
                Ok(v) => sum += v,
                Err(e) if e.is_panic() => errors.push("panic".to_string()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Ok((sum, errors))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_returns_every_result_in_key_order() -> Result<()> {
    let (flaky, tally) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<Num>()
        .query(Flaky {
            runs: flaky.clone(),
        })
        .query(Tally {
            runs: tally.clone(),
        })
        .build()?;
    for k in [0, 1, 3, 5] {
        db.set::<Num>(k, k as i64)?;
    }
    let (sum, errors) = within("the tally", LIMIT, db.query::<Tally>(6)).await?;
    assert_eq!(sum, 90);
    assert_eq!(errors, ["input Num(2) has no value", "panic"]);
    assert_eq!((flaky.get(), tally.get()), (6, 1));
    // Setting the missing key re-runs the parent and that key only.
    db.set::<Num>(2, 2)?;
    let (sum, errors) = db.query::<Tally>(6).await?;
    assert_eq!((sum, errors.len()), (110, 1));
    // Only Flaky(2) re-ran: Flaky(4)'s panic read nothing, so its memoized
    // error is still valid (S10: a later revision *may* retry).
    assert_eq!((flaky.get(), tally.get()), (7, 2));
    Ok(())
}

// ---------------------------------------------------------------------------
// Dependencies.

struct Keys;
impl Input for Keys {
    type Key = ();
    type Value = Arc<Vec<u32>>;
}

/// `Num(k) / 10`: values that differ by less than ten cut off.
struct Tens {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Tens {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<Num>(&k)? / 10)
    }
}

/// The sum of `Tens` over the keys in `Keys`: a dynamic fan-out.
struct Total {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Total {
    type Key = ();
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<i64> {
        self.runs.hit();
        let keys = cx.input::<Keys>(&())?;
        Ok(cx
            .try_query_all::<Tens>(keys.iter().copied())
            .await?
            .into_iter()
            .sum())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_records_every_read_as_a_dependency() -> Result<()> {
    let (tens, total) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<Num>()
        .input::<Keys>()
        .query(Tens { runs: tens.clone() })
        .query(Total {
            runs: total.clone(),
        })
        .build()?;
    let mut batch = db.batch();
    for k in 0..8 {
        batch.set::<Num>(k, 10 * k as i64);
    }
    batch.set::<Keys>((), Arc::new(vec![0, 1, 2, 3, 4]));
    batch.commit()?;
    let total_now =
        |db: Database| async move { within("Total", LIMIT, db.query::<Total>(())).await };

    assert_eq!(total_now(db.clone()).await?, 10);
    assert_eq!((tens.take(), total.take()), (5, 1));
    let info = db.inspect::<Total>(&())?.expect("a memo");
    let mut deps = info.dependencies.clone();
    deps.sort();
    assert_eq!(
        deps,
        [
            "Keys(())", "Tens(0)", "Tens(1)", "Tens(2)", "Tens(3)", "Tens(4)"
        ],
        "every read, from every sub-query task, is a dependency"
    );

    // One read changes: that sub-query and the parent re-run, once each.
    db.set::<Num>(2, 30)?;
    assert_eq!(total_now(db.clone()).await?, 11);
    assert_eq!((tens.take(), total.take()), (1, 1));

    // A change cut off below: the sub-query re-runs, the parent does not.
    db.set::<Num>(2, 35)?;
    assert_eq!(total_now(db.clone()).await?, 11);
    assert_eq!((tens.take(), total.take()), (1, 0));

    // A key that is not read changes nothing.
    db.set::<Num>(7, 1000)?;
    assert_eq!(total_now(db.clone()).await?, 11);
    assert_eq!((tens.take(), total.take()), (0, 0));

    // The set itself is a dependency: a new key runs once, the rest are reused.
    db.set::<Keys>((), Arc::new(vec![0, 1, 2, 3, 4, 7]))?;
    assert_eq!(total_now(db.clone()).await?, 111);
    assert_eq!((tens.take(), total.take()), (1, 1));
    // And at a revision where nothing it read changed, nothing runs.
    db.set::<Num>(6, 1)?;
    assert_eq!(total_now(db.clone()).await?, 111);
    assert_eq!((tens.take(), total.take()), (0, 0));
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// Cycles and shared keys.

/// Fans out over `Child(k)` and `Child(k + 100)`.
struct Parent;
#[async_trait]
impl AsyncQuery for Parent {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        Ok(cx
            .try_query_all::<Child>([k, k + 100])
            .await?
            .into_iter()
            .sum())
    }
}

/// `Child(k)` for k < 100 asks for `Parent(k)`: a cycle through a fan-out.
struct Child {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Child {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        if k < 100 {
            return Ok(cx.query::<Parent>(k).await? + 1);
        }
        Ok(k as i64)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_cycle_through_a_sub_query_is_an_error_not_a_hang() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .query(Parent)
        .query(Child { runs: runs.clone() })
        .build()?;
    let err = within("a cycle through query_all", LIMIT, db.query::<Parent>(1))
        .await
        .unwrap_err();
    assert!(err.is_cycle(), "{err:?}");
    let path = common::cycle_path(&err);
    assert_eq!(path, ["Parent(1)", "Child(1)", "Parent(1)"], "{err}");
    assert_eq!(db.stats().in_flight, 0);
    assert!(runs.get() <= 2, "Child(1) once, Child(101) at most once");
    Ok(())
}

/// Counts executions of the same key requested many times at once.
struct Slow {
    runs: Count,
    barrier: Arc<Barrier>,
}
#[async_trait]
impl AsyncQuery for Slow {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, _cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        self.barrier.wait().await;
        Ok(k as i64)
    }
}

/// Asks for `Slow(1)` four times and `Slow(2)` once, concurrently.
struct Repeats;
#[async_trait]
impl AsyncQuery for Repeats {
    type Key = ();
    type Value = Vec<i64>;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<Vec<i64>> {
        Ok(cx.try_query_all::<Slow>([1, 1, 2, 1, 1]).await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_shared_keys_execute_once_and_are_no_cycle() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        // Slow(1) and Slow(2) meet at the barrier: both in flight at once.
        .query(Slow {
            runs: runs.clone(),
            barrier: Arc::new(Barrier::new(2)),
        })
        .query(Repeats)
        .build()?;
    let v = within("shared keys", LIMIT, db.query::<Repeats>(())).await?;
    assert_eq!(v, [1, 1, 2, 1, 1]);
    assert_eq!(runs.get(), 2, "one execution per distinct key");
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_of_an_unregistered_kind_is_an_error_for_each_key() -> Result<()> {
    struct Unregistered;
    #[async_trait]
    impl AsyncQuery for Unregistered {
        type Key = u32;
        type Value = u32;
        async fn execute(&self, _cx: &QueryCx, k: u32) -> QueryResult<u32> {
            Ok(k)
        }
    }
    struct Asks;
    #[async_trait]
    impl AsyncQuery for Asks {
        type Key = ();
        type Value = usize;
        async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<usize> {
            let all = cx.query_all::<Unregistered>([1, 2, 3]).await;
            assert!(all.iter().all(|r| r.is_err()));
            cx.try_query_all::<Unregistered>([1]).await?;
            Ok(all.len())
        }
    }
    let db = Database::builder().query(Asks).build()?;
    let err = db.query::<Asks>(()).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unregistered { .. }),
        "{err:?}"
    );
    Ok(())
}

struct Nothing {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Nothing {
    type Key = ();
    type Value = (usize, usize);
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<(usize, usize)> {
        self.runs.hit();
        let all = cx.query_all::<Tens>(Vec::new()).await;
        let values = cx.try_query_all::<Tens>(std::iter::empty()).await?;
        Ok((all.len(), values.len()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_all_of_no_keys_is_empty() -> Result<()> {
    let (tens, nothing) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<Num>()
        .query(Tens { runs: tens.clone() })
        .query(Nothing {
            runs: nothing.clone(),
        })
        .build()?;
    assert_eq!(db.query::<Nothing>(()).await?, (0, 0));
    assert_eq!((tens.get(), nothing.get()), (0, 1));
    Ok(())
}
