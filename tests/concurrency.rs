//! Concurrency rules S1, S12–S16 and the `QueryCx` clone contract, on a
//! multi-thread tokio runtime with real `tokio::spawn`, `abort()` and `join!`.
//!
//! Ordering is done with `Notify`, `watch` and `Barrier`; sleeps only create
//! overlap (they never decide an assertion). Everything that could hang is
//! wrapped in a timeout so that a bug fails the test instead of hanging CI.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Count;
use picante::*;
use tokio::sync::{Barrier, Notify, oneshot, watch};

/// Generous bound for anything that should finish "immediately".
const LIMIT: Duration = Duration::from_secs(20);
/// Only used to give other tasks a chance to reach a wait point (overlap).
const OVERLAP: Duration = Duration::from_millis(50);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    common::within(what, LIMIT, f).await
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A plain input: numbers by key.
struct Num;
impl Input for Num {
    type Key = u32;
    type Value = i64;
}

/// An interned kind.
struct Label;
impl Interned for Label {
    type Value = String;
}

/// Lets a test hold query bodies at a known point: each body signals
/// `started` when it enters, then waits until the gate is opened.
struct Gate {
    started: Notify,
    open: watch::Sender<bool>,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            started: Notify::new(),
            open: watch::Sender::new(false),
        })
    }

    async fn pass(&self) {
        self.started.notify_one();
        let mut rx = self.open.subscribe();
        // The sender lives as long as the gate, so this only waits for `true`.
        let _ = rx.wait_for(|open| *open).await;
    }

    async fn wait_started(&self) {
        within("a query body to start", self.started.notified()).await;
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// `Num(k) * 2`, held at the gate. Counts entries (`runs`) and completed
/// bodies (`done`).
struct Gated {
    runs: Count,
    done: Count,
    gate: Arc<Gate>,
}
#[async_trait]
impl AsyncQuery for Gated {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let v = cx.input::<Num>(&k)?;
        self.gate.pass().await;
        self.done.hit();
        Ok(v * 2)
    }
}

/// Fails, after the gate.
struct GatedFail {
    runs: Count,
    gate: Arc<Gate>,
}
#[async_trait]
impl AsyncQuery for GatedFail {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let _ = cx.input_opt::<Num>(&k)?;
        self.gate.pass().await;
        Err(QueryError::msg(format!("boom {k}")))
    }
}

/// `Num(k) * 2`, counted.
struct Double {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Double {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<Num>(&k)? * 2)
    }
}

/// `Num(k) * 3`, counted.
struct Triple {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Triple {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<Num>(&k)? * 3)
    }
}

fn stats_exec(db: &View, name: &str) -> u64 {
    db.stats().query(name).map(|q| q.executions).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// S13: shared in-flight work
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_ten_tasks_one_execution() -> Result<()> {
    let (runs, done, gate) = (Count::new(), Count::new(), Gate::new());
    let db = Database::builder()
        .input::<Num>()
        .query(Gated {
            runs: runs.clone(),
            done: done.clone(),
            gate: gate.clone(),
        })
        .build()?;
    db.set::<Num>(1, 21)?;

    let start = Arc::new(Barrier::new(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (db, start) = (db.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            db.query::<Gated>(1).await
        }));
    }
    gate.wait_started().await;
    tokio::time::sleep(OVERLAP).await; // let the other nine reach the in-flight slot
    assert_eq!(runs.get(), 1, "only one body may be running");
    gate.open();
    for t in tasks {
        assert_eq!(within("a caller", t).await.expect("task")?, 42);
    }
    assert_eq!(runs.get(), 1);
    assert_eq!(done.get(), 1);
    assert_eq!(stats_exec(&db, "Gated"), 1);
    assert_eq!(db.stats().in_flight, 0);
    // And it is memoized for later readers.
    assert_eq!(db.query::<Gated>(1).await?, 42);
    assert_eq!(runs.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_ten_snapshots_one_execution() -> Result<()> {
    let (runs, done, gate) = (Count::new(), Count::new(), Gate::new());
    let db = Database::builder()
        .input::<Num>()
        .query(Gated {
            runs: runs.clone(),
            done: done.clone(),
            gate: gate.clone(),
        })
        .build()?;
    db.set::<Num>(1, 21)?;
    let rev = db.revision();

    let start = Arc::new(Barrier::new(10));
    let mut tasks = Vec::new();
    let base = db.snapshot();
    for i in 0..10 {
        // Mix snapshots of the database and snapshots of a snapshot.
        let snap = if i % 2 == 0 {
            db.snapshot()
        } else {
            base.snapshot()
        };
        assert_eq!(snap.revision(), rev);
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            snap.query::<Gated>(1).await
        }));
    }
    gate.wait_started().await;
    tokio::time::sleep(OVERLAP).await;
    assert_eq!(runs.get(), 1, "only one body may be running");
    gate.open();
    for t in tasks {
        assert_eq!(within("a snapshot caller", t).await.expect("task")?, 42);
    }
    assert_eq!(runs.get(), 1);
    assert_eq!(done.get(), 1);
    assert_eq!(db.stats().in_flight, 0);
    // The work flowed back: the database and a new snapshot reuse it.
    assert_eq!(db.query::<Gated>(1).await?, 42);
    assert_eq!(db.snapshot().query::<Gated>(1).await?, 42);
    assert_eq!(runs.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_failing_query_shared_by_waiters() -> Result<()> {
    let (runs, gate) = (Count::new(), Gate::new());
    let db = Database::builder()
        .input::<Num>()
        .query(GatedFail {
            runs: runs.clone(),
            gate: gate.clone(),
        })
        .build()?;
    db.set::<Num>(7, 1)?;

    let start = Arc::new(Barrier::new(5));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (db, start) = (db.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            if i % 2 == 0 {
                db.query::<GatedFail>(7).await
            } else {
                db.snapshot().query::<GatedFail>(7).await
            }
        }));
    }
    gate.wait_started().await;
    tokio::time::sleep(OVERLAP).await;
    gate.open();
    let mut errors = 0;
    for t in tasks {
        let err = within("a caller", t)
            .await
            .expect("task")
            .expect_err("the query fails");
        assert_eq!(err.to_string(), "boom 7");
        assert!(matches!(err.kind(), ErrorKind::Message(_)), "{err:?}");
        errors += 1;
    }
    assert_eq!(errors, 5);
    assert_eq!(runs.get(), 1, "one execution shared by five callers");
    // The error is memoized for this revision (S10): no re-run.
    assert_eq!(
        db.query::<GatedFail>(7).await.unwrap_err().to_string(),
        "boom 7"
    );
    assert_eq!(runs.get(), 1);
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// S14: cancellation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_abort_executor_waiters_get_value() -> Result<()> {
    let (runs, done, gate) = (Count::new(), Count::new(), Gate::new());
    let db = Database::builder()
        .input::<Num>()
        .query(Gated {
            runs: runs.clone(),
            done: done.clone(),
            gate: gate.clone(),
        })
        .build()?;
    db.set::<Num>(1, 5)?;

    // The executor: the first caller, now parked inside the body.
    let executor = {
        let db = db.clone();
        tokio::spawn(async move { db.query::<Gated>(1).await })
    };
    gate.wait_started().await;

    // Three waiters, from the database and from snapshots at the same revision.
    let mut waiters = Vec::new();
    for i in 0..3 {
        let view: View = if i == 0 {
            (*db).clone()
        } else {
            (*db.snapshot()).clone()
        };
        waiters.push(tokio::spawn(async move { view.query::<Gated>(1).await }));
    }
    tokio::time::sleep(OVERLAP).await; // let them start waiting
    assert_eq!(runs.get(), 1);

    executor.abort();
    let joined = within("the aborted executor", executor).await;
    assert!(joined.unwrap_err().is_cancelled());

    gate.open();
    for w in waiters {
        assert_eq!(within("a waiter", w).await.expect("task")?, 10);
    }
    // Either the execution continued for the waiters (1 run) or one waiter
    // restarted it (2 runs); exactly one body ever completed.
    assert!((1..=2).contains(&runs.get()), "runs = {}", runs.get());
    assert_eq!(done.get(), 1);
    assert_eq!(db.stats().in_flight, 0);
    let info = db.inspect::<Gated>(&1)?.expect("memoized");
    assert!(!info.is_error);
    let before = runs.get();
    assert_eq!(db.query::<Gated>(1).await?, 10);
    assert_eq!(runs.get(), before, "memoized after the waiters got it");
    Ok(())
}

/// Parks forever on its first execution; later executions return at once.
struct FirstHangs {
    runs: Count,
    started: Arc<Notify>,
}
#[async_trait]
impl AsyncQuery for FirstHangs {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let v = cx.input::<Num>(&k)?;
        if self.runs.get() == 1 {
            self.started.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(v + 1)
    }
}

/// Reads `FirstHangs(k)`.
struct Outer {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Outer {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<FirstHangs>(k).await? * 100)
    }
}

fn hang_db() -> Result<(Database, Count, Count, Arc<Notify>)> {
    let (runs, outer, started) = (Count::new(), Count::new(), Arc::new(Notify::new()));
    let db = Database::builder()
        .input::<Num>()
        .query(FirstHangs {
            runs: runs.clone(),
            started: started.clone(),
        })
        .query(Outer {
            runs: outer.clone(),
        })
        .build()?;
    db.set::<Num>(1, 41)?;
    Ok((db, runs, outer, started))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_abort_with_no_waiters_next_access_completes() -> Result<()> {
    let (db, runs, _, started) = hang_db()?;
    let rev = db.revision();
    let executor = {
        let db = db.clone();
        tokio::spawn(async move { db.query::<FirstHangs>(1).await })
    };
    within("the body to start", started.notified()).await;
    assert_eq!(db.stats().in_flight, 1);
    executor.abort();
    assert!(
        within("the aborted executor", executor)
            .await
            .unwrap_err()
            .is_cancelled()
    );
    assert_eq!(
        db.stats().in_flight,
        0,
        "nothing left running with nobody running it"
    );

    // Same view, same revision: completes, with a second execution.
    assert_eq!(db.revision(), rev);
    let v = within("the next access", db.query::<FirstHangs>(1)).await?;
    assert_eq!(v, 42);
    assert_eq!(runs.get(), 2);
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_abort_with_no_waiters_in_snapshot_next_access_completes() -> Result<()> {
    let (db, runs, outer, started) = hang_db()?;
    let snap = db.snapshot();
    let executor = {
        let snap = snap.clone();
        tokio::spawn(async move { snap.query::<Outer>(1).await })
    };
    within("the inner body to start", started.notified()).await;
    executor.abort();
    assert!(
        within("the aborted executor", executor)
            .await
            .unwrap_err()
            .is_cancelled()
    );
    assert_eq!(db.stats().in_flight, 0);

    let v = within("the next access in the snapshot", snap.query::<Outer>(1)).await?;
    assert_eq!(v, 4200);
    assert_eq!(runs.get(), 2);
    assert_eq!(outer.get(), 2);
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_dropped_future_records_no_error() -> Result<()> {
    let (db, runs, outer, started) = hang_db()?;
    {
        // Poll the query until its innermost body is parked, then drop it.
        let fut = db.query::<Outer>(1);
        tokio::select! {
            r = fut => panic!("the first execution never finishes, got {r:?}"),
            _ = within("the inner body to start", started.notified()) => {}
        }
    }
    assert_eq!(runs.get(), 1);
    assert_eq!(outer.get(), 1);
    assert_eq!(db.stats().in_flight, 0);
    // No memo at all, in particular no memoized error.
    assert!(db.inspect::<Outer>(&1)?.is_none());
    assert!(db.inspect::<FirstHangs>(&1)?.is_none());
    assert!(db.memos().iter().all(|m| !m.is_error), "{:?}", db.memos());

    let v = within("the next access", db.query::<Outer>(1)).await?;
    assert_eq!(v, 4200);
    assert_eq!(runs.get(), 2);
    assert_eq!(outer.get(), 2);
    assert!(!db.inspect::<Outer>(&1)?.expect("memoized").is_error);
    Ok(())
}

// ---------------------------------------------------------------------------
// S15: writers never wait
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_set_does_not_wait_for_parked_query() -> Result<()> {
    let (runs, done, gate) = (Count::new(), Count::new(), Gate::new());
    let db = Database::builder()
        .input::<Num>()
        .query(Gated {
            runs: runs.clone(),
            done: done.clone(),
            gate: gate.clone(),
        })
        .build()?;
    let r1 = db.set::<Num>(1, 10)?;
    let snap = db.snapshot();
    let parked = {
        let snap = snap.clone();
        tokio::spawn(async move { snap.query::<Gated>(1).await })
    };
    gate.wait_started().await;

    // The writer runs on a blocking thread so that, if it blocked, the
    // timeout (not the test harness) would report it.
    let writer = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || -> Result<(Revision, Revision)> {
            let r2 = db.set::<Num>(1, 20)?;
            let mut batch = db.batch();
            batch.set::<Num>(1, 30).set::<Num>(2, 1);
            Ok((r2, batch.commit()?))
        })
    };
    let (r2, r3) = within("set while a snapshot query is parked", writer)
        .await
        .expect("writer")?;
    assert!(r1 < r2 && r2 < r3);
    assert!(
        !parked.is_finished(),
        "the parked query was not cancelled or completed by the set"
    );
    assert_eq!(db.input::<Num>(&1)?, 30);
    assert_eq!(snap.input::<Num>(&1)?, 10);

    gate.open();
    assert_eq!(
        within("the parked query", parked).await.expect("task")?,
        20,
        "its own revision's value"
    );
    assert_eq!(runs.get(), 1);
    assert_eq!(done.get(), 1);
    // The database's own revision computes its own value.
    assert_eq!(db.query::<Gated>(1).await?, 60);
    assert_eq!(runs.get(), 2);
    // The snapshot still answers from its revision, without re-running.
    assert_eq!(snap.query::<Gated>(1).await?, 20);
    assert_eq!(runs.get(), 2);
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// S1: snapshots are never torn
// ---------------------------------------------------------------------------

/// Reads both halves of the pair.
struct Pair {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Pair {
    type Key = ();
    type Value = (i64, i64);
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<(i64, i64)> {
        self.runs.hit();
        let a = cx.input::<Num>(&0)?;
        tokio::task::yield_now().await; // let writers in between the two reads
        let b = cx.input::<Num>(&1)?;
        Ok((a, b))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_snapshot_never_torn() -> Result<()> {
    const BATCHES: i64 = 2_000;
    const READERS: usize = 6;
    let runs = Count::new();
    let db = Database::builder()
        .input::<Num>()
        .query(Pair { runs: runs.clone() })
        .build()?;
    {
        let mut b = db.batch();
        b.set::<Num>(0, 0).set::<Num>(1, 0);
        b.commit()?;
    }
    let r0 = db.revision();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(READERS + 1));

    let mut readers = Vec::new();
    for id in 0..READERS {
        let (db, stop, start) = (db.clone(), stop.clone(), start.clone());
        readers.push(tokio::spawn(async move {
            start.wait().await;
            let mut reads = 0u64;
            let mut last_seen = 0i64;
            loop {
                let done = stop.load(Ordering::SeqCst);
                let snap = db.snapshot();
                let a = snap.input::<Num>(&0)?;
                let b = snap.input::<Num>(&1)?;
                assert_eq!(a, b, "torn snapshot at {:?}", snap.revision());
                assert_eq!(
                    snap.revision().as_u64() - r0.as_u64(),
                    a as u64,
                    "revision and inputs disagree"
                );
                assert!(a >= last_seen, "a later snapshot went back in time");
                last_seen = a;
                let (qa, qb) = snap.query::<Pair>(()).await?;
                assert_eq!((qa, qb), (a, a), "query in a snapshot saw another revision");
                // A snapshot of the snapshot is the same revision.
                if id % 2 == 0 {
                    assert_eq!(snap.snapshot().query::<Pair>(()).await?, (a, a));
                }
                // The database itself: one access, one revision.
                let (da, db_) = db.query::<Pair>(()).await?;
                assert_eq!(da, db_, "torn read on the database");
                assert!(da >= a);
                reads += 1;
                if done {
                    return Ok::<u64, Error>(reads);
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let writer = {
        let (db, stop, start) = (db.clone(), stop.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            for i in 1..=BATCHES {
                let mut b = db.batch();
                b.set::<Num>(0, i).set::<Num>(1, i);
                b.commit()?;
                if i % 4 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            stop.store(true, Ordering::SeqCst);
            Ok::<(), Error>(())
        })
    };
    within("the writer", writer).await.expect("writer task")?;
    let mut reads = 0;
    for r in readers {
        reads += within("a reader", r).await.expect("reader task")?;
    }
    assert!(reads >= READERS as u64);
    // Each batch advanced the revision exactly once (S2/S3).
    assert_eq!(db.revision().as_u64(), r0.as_u64() + BATCHES as u64);
    // At most one execution per revision per read; and the final revision is
    // computed once and then shared.
    assert!(
        runs.get() as u64 <= 3 * reads,
        "runs {} reads {reads}",
        runs.get()
    );
    let before = runs.get();
    assert_eq!(db.snapshot().query::<Pair>(()).await?, (BATCHES, BATCHES));
    assert_eq!(db.query::<Pair>(()).await?, (BATCHES, BATCHES));
    assert!(runs.get() - before <= 1);
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// S16: snapshot isolation, work flowing back, forks
// ---------------------------------------------------------------------------

/// The length of an interned label.
struct LabelLen {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for LabelLen {
    type Key = Id<Label>;
    type Value = usize;
    async fn execute(&self, cx: &QueryCx, id: Id<Label>) -> QueryResult<usize> {
        self.runs.hit();
        Ok(cx.lookup::<Label>(id)?.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_snapshot_isolation_per_revision() -> Result<()> {
    let (double, triple, len) = (Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .input::<Num>()
        .interned::<Label>()
        .query(Double {
            runs: double.clone(),
        })
        .query(Triple {
            runs: triple.clone(),
        })
        .query(LabelLen { runs: len.clone() })
        .build()?;
    db.set::<Num>(1, 1)?;
    let s1 = db.snapshot();
    db.set::<Num>(1, 2)?;
    let s2 = db.snapshot();
    db.set::<Num>(1, 3)?;
    let s3 = db.snapshot();
    db.set::<Num>(1, 4)?;
    assert!(
        s1.revision() < s2.revision()
            && s2.revision() < s3.revision()
            && s3.revision() < db.revision()
    );

    // Concurrently, from spawned tasks.
    let (a, b, c, d) = tokio::join!(
        tokio::spawn({
            let s = s1.clone();
            async move { s.query::<Double>(1).await }
        }),
        tokio::spawn({
            let s = s2.clone();
            async move { s.query::<Double>(1).await }
        }),
        tokio::spawn({
            let s = s3.clone();
            async move { s.query::<Double>(1).await }
        }),
        tokio::spawn({
            let s = db.clone();
            async move { s.query::<Double>(1).await }
        }),
    );
    assert_eq!(
        (a.unwrap()?, b.unwrap()?, c.unwrap()?, d.unwrap()?),
        (2, 4, 6, 8)
    );
    assert_eq!(double.get(), 4, "one execution per revision");

    // The database moves on; every snapshot keeps its own values, memoized.
    db.set::<Num>(1, 5)?;
    assert_eq!(db.query::<Double>(1).await?, 10);
    assert_eq!(double.get(), 5);
    for (snap, want) in [(&s1, 1), (&s2, 2), (&s3, 3)] {
        assert_eq!(snap.input::<Num>(&1)?, want);
        assert_eq!(snap.query::<Double>(1).await?, want * 2);
    }
    assert_eq!(double.get(), 5, "snapshots reuse their memos");

    // A snapshot computes a query the database never ran.
    assert!(db.inspect::<Triple>(&1)?.is_none());
    assert_eq!(s2.query::<Triple>(1).await?, 6);
    assert_eq!(triple.get(), 1);
    assert_eq!(s2.query::<Triple>(1).await?, 6);
    assert_eq!(triple.get(), 1);
    // ... and the database, at its own revision, computes its own value.
    assert_eq!(db.query::<Triple>(1).await?, 15);
    assert_eq!(triple.get(), 2);

    // An interned value created after a snapshot is visible in it, and
    // interning moves no revision.
    let (r1, rdb) = (s1.revision(), db.revision());
    let late = db.intern::<Label>("created later".to_string())?;
    assert_eq!(s1.lookup::<Label>(late)?, "created later");
    assert_eq!(s1.intern::<Label>("created later".to_string())?, late);
    let from_snap = s1.intern::<Label>("from the snapshot".to_string())?;
    assert_eq!(db.lookup::<Label>(from_snap)?, "from the snapshot");
    assert_eq!((s1.revision(), db.revision()), (r1, rdb));
    assert_eq!(s1.query::<LabelLen>(late).await?, "created later".len());
    assert_eq!(len.get(), 1);
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_work_flows_back() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .input::<Num>()
        .query(Double { runs: runs.clone() })
        .build()?;
    db.set::<Num>(1, 5)?;
    db.set::<Num>(2, 7)?;

    // Snapshot 1 computes (on another task), then goes away.
    let s1 = db.snapshot();
    let rev = s1.revision();
    let v = tokio::spawn(async move { s1.query::<Double>(1).await })
        .await
        .unwrap()?;
    assert_eq!(v, 10);
    assert_eq!(runs.take(), 1);

    // Snapshot 2 at the same revision reuses it.
    let s2 = db.snapshot();
    assert_eq!(s2.revision(), rev);
    assert_eq!(s2.query::<Double>(1).await?, 10);
    assert_eq!(runs.take(), 0, "same revision: reused");

    // An unrelated change: snapshot 3 revalidates instead of re-running.
    db.set::<Num>(2, 8)?;
    let revalidations = db.stats().query("Double").unwrap().revalidations;
    let s3 = db.snapshot();
    assert!(s3.revision() > rev);
    assert_eq!(s3.query::<Double>(1).await?, 10);
    assert_eq!(runs.take(), 0, "unrelated change: revalidated");
    assert!(db.stats().query("Double").unwrap().revalidations > revalidations);
    // ... and that revalidation flowed back too.
    assert_eq!(db.snapshot().query::<Double>(1).await?, 10);
    assert_eq!(db.query::<Double>(1).await?, 10);
    assert_eq!(runs.take(), 0);

    // A real change re-runs once, shared by the next snapshot and the database.
    db.set::<Num>(1, 6)?;
    let s4 = db.snapshot();
    assert_eq!(s4.query::<Double>(1).await?, 12);
    assert_eq!(runs.take(), 1);
    assert_eq!(db.snapshot().query::<Double>(1).await?, 12);
    assert_eq!(db.query::<Double>(1).await?, 12);
    assert_eq!(runs.take(), 0);
    // Old snapshots still see their own revision without re-running.
    assert_eq!(s3.query::<Double>(1).await?, 10);
    assert_eq!(runs.take(), 0);
    Ok(())
}

/// `Double(k) * 10`.
struct TimesTen {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for TimesTen {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<Double>(k).await? * 10)
    }
}

/// S4/S7/S16 together: a value that changes and changes back (5 → 6 → 5)
/// while snapshots of each revision are alive. The snapshot at r3 re-runs
/// `Double` against the memo of r1 (equal value: cutoff, `changed_at` = r1);
/// the snapshot at r2 then computes `TimesTen` from `Double = 12` and offers
/// it back to the database. At r3, `TimesTen@r2` must not revalidate against
/// `Double`'s `changed_at = r1`: `Double` was different at r2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_cutoff_across_snapshot_revisions() -> Result<()> {
    let (double, ten) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<Num>()
        .query(Double {
            runs: double.clone(),
        })
        .query(TimesTen { runs: ten.clone() })
        .build()?;
    db.set::<Num>(1, 5)?;
    assert_eq!(db.query::<Double>(1).await?, 10); // Double@r1 = 10
    db.set::<Num>(1, 6)?;
    let s2 = db.snapshot(); // r2: Double = 12
    db.set::<Num>(1, 5)?;
    let s3 = db.snapshot(); // r3: Double = 10 again
    assert_eq!(s3.query::<Double>(1).await?, 10);
    assert_eq!(s2.query::<TimesTen>(1).await?, 120);
    assert_eq!((double.get(), ten.get()), (3, 1));
    assert_eq!(
        s3.query::<TimesTen>(1).await?,
        100,
        "TimesTen at r3 reused the r2 memo"
    );
    assert_eq!(db.query::<TimesTen>(1).await?, 100);
    assert_eq!((double.get(), ten.get()), (3, 2));
    Ok(())
}

/// `Num(k) * 2`; while `meet` is on, the body waits at a 2-party barrier, so
/// two executions must be in flight at the same time to get past it.
struct Meet {
    runs: Count,
    meet: Arc<AtomicBool>,
    barrier: Arc<Barrier>,
}
#[async_trait]
impl AsyncQuery for Meet {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let v = cx.input::<Num>(&k)?;
        if self.meet.load(Ordering::SeqCst) {
            self.barrier.wait().await;
        }
        Ok(v * 2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_forks_are_isolated() -> Result<()> {
    let runs = Count::new();
    let meet = Arc::new(AtomicBool::new(true));
    let db = Database::builder()
        .input::<Num>()
        .query(Meet {
            runs: runs.clone(),
            meet: meet.clone(),
            barrier: Arc::new(Barrier::new(2)),
        })
        .build()?;
    db.set::<Num>(1, 1)?;
    let base = db.revision();

    let a = db.snapshot();
    let b = db.snapshot();
    a.set::<Num>(1, 10)?;
    b.set::<Num>(1, 20)?;
    assert!(a.is_forked() && b.is_forked());
    assert_eq!(
        db.revision(),
        base,
        "a fork's set does not advance the database"
    );
    assert_eq!(db.input::<Num>(&1)?, 1);

    // Both forks run concurrently; they must not share in-flight work (the
    // barrier needs both bodies running at once).
    let (ra, rb) = within("both forks at the barrier", async {
        tokio::join!(
            tokio::spawn({
                let a = a.clone();
                async move { a.query::<Meet>(1).await }
            }),
            tokio::spawn({
                let b = b.clone();
                async move { b.query::<Meet>(1).await }
            }),
        )
    })
    .await;
    let (ra, rb) = (ra.expect("task a"), rb.expect("task b"));
    assert_eq!((ra?, rb?), (20, 40));
    assert_eq!(runs.take(), 2);
    meet.store(false, Ordering::SeqCst);

    // The database sees neither: its query executes and gets its own value.
    assert_eq!(db.input::<Num>(&1)?, 1);
    assert!(
        db.inspect::<Meet>(&1)?.is_none(),
        "a fork's memo reached the database"
    );
    assert_eq!(within("db query", db.query::<Meet>(1)).await?, 2);
    assert_eq!(runs.take(), 1);
    // Nor does a fresh snapshot of the database.
    assert_eq!(db.snapshot().query::<Meet>(1).await?, 2);
    assert_eq!(runs.take(), 0);

    // Each fork keeps its own results.
    assert_eq!(a.query::<Meet>(1).await?, 20);
    assert_eq!(b.query::<Meet>(1).await?, 40);
    assert_eq!(runs.take(), 0);

    // A snapshot of a fork shares the fork's work; forking it again isolates
    // it from the fork as well.
    let a2 = a.snapshot();
    assert_eq!(a2.query::<Meet>(1).await?, 20);
    assert_eq!(runs.take(), 0);
    a2.set::<Num>(1, 11)?;
    assert_eq!(a2.query::<Meet>(1).await?, 22);
    assert_eq!(runs.take(), 1);
    assert_eq!(a.query::<Meet>(1).await?, 20);
    assert_eq!(a.input::<Num>(&1)?, 10);
    assert_eq!(db.query::<Meet>(1).await?, 2);
    assert_eq!(runs.take(), 0);
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// S12: cycles across tasks; join! siblings are not a cycle
// ---------------------------------------------------------------------------

/// Needs `CycB(k)`, from a spawned task.
struct CycA {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for CycA {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let cx = cx.clone();
        Ok(tokio::spawn(async move { cx.query::<CycB>(k).await }).await??)
    }
}

/// Needs `CycA(k)`.
struct CycB {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for CycB {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<CycA>(k).await? + 1)
    }
}

use common::cycle_path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_cross_task_cycle() -> Result<()> {
    let (ra, rb) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<Num>()
        .query(CycA { runs: ra.clone() })
        .query(CycB { runs: rb.clone() })
        .build()?;
    let err = within("a cross-task cycle", db.query::<CycA>(1))
        .await
        .expect_err("a cycle");
    assert!(err.is_cycle(), "{err:?}");
    let path = cycle_path(&err);
    assert_eq!(path.len(), 3, "{path:?}");
    assert_eq!(path.first(), path.last(), "{path:?}");
    assert!(path.contains(&"CycA(1)".to_string()), "{path:?}");
    assert!(path.contains(&"CycB(1)".to_string()), "{path:?}");
    assert!(err.to_string().contains("CycA(1)") && err.to_string().contains("CycB(1)"));
    assert_eq!((ra.get(), rb.get()), (1, 1));
    assert_eq!(db.stats().in_flight, 0);

    // Memoized for this revision: no re-run, from the database or a snapshot.
    assert!(
        within("again", db.query::<CycA>(1))
            .await
            .unwrap_err()
            .is_cycle()
    );
    assert!(
        within("from a snapshot", db.snapshot().query::<CycA>(1))
            .await
            .unwrap_err()
            .is_cycle()
    );
    assert_eq!((ra.get(), rb.get()), (1, 1));

    // Entering the cycle from the other side, from a spawned caller, also
    // fails rather than hanging.
    let db2 = db.clone();
    let err = within(
        "cycle entered at B",
        tokio::spawn(async move { db2.query::<CycB>(2).await }),
    )
    .await
    .expect("task")
    .expect_err("a cycle");
    let path = cycle_path(&err);
    assert!(
        path.contains(&"CycA(2)".to_string()) && path.contains(&"CycB(2)".to_string()),
        "{path:?}"
    );
    assert_eq!((ra.get(), rb.get()), (2, 2));
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

/// Joins `Num`-reading work with a branch that needs `JoinCycB`, which needs
/// this query again.
struct JoinCycA {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for JoinCycA {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let (c1, c2) = (cx.clone(), cx.clone());
        let (x, y) = tokio::join!(async move { c1.input::<Num>(&k) }, async move {
            c2.query::<JoinCycB>(k).await
        });
        Ok(x? + y?)
    }
}

struct JoinCycB;
#[async_trait]
impl AsyncQuery for JoinCycB {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        let cx2 = cx.clone();
        Ok(tokio::spawn(async move { cx2.query::<JoinCycA>(k).await }).await??)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_cycle_through_join_branch_and_task() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .input::<Num>()
        .query(JoinCycA { runs: runs.clone() })
        .query(JoinCycB)
        .build()?;
    db.set::<Num>(1, 1)?;
    let err = within("a cycle through join! and spawn", db.query::<JoinCycA>(1))
        .await
        .expect_err("a cycle");
    let path = cycle_path(&err);
    assert_eq!(path.first(), path.last(), "{path:?}");
    assert!(
        path.contains(&"JoinCycA(1)".to_string()) && path.contains(&"JoinCycB(1)".to_string()),
        "{path:?}"
    );
    assert_eq!(runs.get(), 1);
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

/// `Num(k) * 10`, slow enough that both join! branches are in flight together.
struct SlowLeaf {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for SlowLeaf {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let v = cx.input::<Num>(&k)?;
        tokio::time::sleep(Duration::from_millis(20)).await; // overlap only
        Ok(v * 10)
    }
}

/// Two intermediate queries that both need the same leaf.
struct Mid {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Mid {
    type Key = (u8, u32);
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, (_, k): (u8, u32)) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<SlowLeaf>(k).await?)
    }
}

/// Mode 0: `join!` of the same leaf twice; 1: `join!` of two `Mid`s that
/// share the leaf; 2: two spawned tasks reading the same leaf.
struct Siblings {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Siblings {
    type Key = (u8, u32);
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, (mode, k): (u8, u32)) -> QueryResult<i64> {
        self.runs.hit();
        let (c1, c2) = (cx.clone(), cx.clone());
        let (x, y) = match mode {
            0 => tokio::join!(cx.query::<SlowLeaf>(k), c1.query::<SlowLeaf>(k)),
            1 => tokio::join!(cx.query::<Mid>((1, k)), c1.query::<Mid>((2, k))),
            _ => {
                let h1 = tokio::spawn(async move { c1.query::<SlowLeaf>(k).await });
                let h2 = tokio::spawn(async move { c2.query::<SlowLeaf>(k).await });
                let (x, y) = tokio::join!(h1, h2);
                (x.map_err(Error::new)?, y.map_err(Error::new)?)
            }
        };
        Ok(x? + y?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_join_siblings_same_key_not_a_cycle() -> Result<()> {
    let (leaf, mid, sib) = (Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .input::<Num>()
        .query(SlowLeaf { runs: leaf.clone() })
        .query(Mid { runs: mid.clone() })
        .query(Siblings { runs: sib.clone() })
        .build()?;
    for (mode, k) in [(0u8, 1u32), (1, 2), (2, 3)] {
        db.set::<Num>(k, k as i64)?;
        let v = within("join siblings", db.query::<Siblings>((mode, k))).await;
        let v = v.unwrap_or_else(|e| panic!("mode {mode}: siblings reading one key failed: {e:?}"));
        assert_eq!(v, 20 * k as i64);
        assert_eq!(leaf.take(), 1, "mode {mode}: the shared leaf ran once");
        assert_eq!(sib.take(), 1);
    }
    assert_eq!(mid.get(), 2);
    assert!(db.memos().iter().all(|m| !m.is_error));
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

// ---------------------------------------------------------------------------
// QueryCx clones: parallel reads are recorded; late reads are errors
// ---------------------------------------------------------------------------

/// Reads `Num(1)` and `Double(2)` in `join!` branches, `Num(3)` and
/// `Double(4)` from spawned tasks.
struct FanIn {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for FanIn {
    type Key = ();
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<i64> {
        self.runs.hit();
        let (c1, c2, c3, c4) = (cx.clone(), cx.clone(), cx.clone(), cx.clone());
        let (a, b) = tokio::join!(async move { c1.input::<Num>(&1) }, async move {
            c2.query::<Double>(2).await
        });
        let h3 = tokio::spawn(async move {
            tokio::task::yield_now().await;
            c3.input::<Num>(&3)
        });
        let h4 = tokio::spawn(async move { c4.query::<Double>(4).await });
        let c = h3.await.map_err(Error::new)??;
        let d = h4.await.map_err(Error::new)??;
        Ok(a? + b? + c + d)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn querycx_clone_reads_recorded() -> Result<()> {
    let (fan, double) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<Num>()
        .query(Double {
            runs: double.clone(),
        })
        .query(FanIn { runs: fan.clone() })
        .build()?;
    for k in 1..=5 {
        db.set::<Num>(k, k as i64)?;
    }
    assert_eq!(db.query::<FanIn>(()).await?, 1 + 4 + 3 + 8);
    assert_eq!((fan.take(), double.take()), (1, 2));
    let deps = db.inspect::<FanIn>(&())?.expect("memoized").dependencies;
    for d in ["Num(1)", "Double(2)", "Num(3)", "Double(4)"] {
        assert!(deps.contains(&d.to_string()), "{d} missing from {deps:?}");
    }

    // Unrelated: nothing re-runs.
    db.set::<Num>(5, 50)?;
    assert_eq!(db.query::<FanIn>(()).await?, 16);
    assert_eq!((fan.take(), double.take()), (0, 0));

    // Read only by a spawned task (input).
    db.set::<Num>(3, 30)?;
    assert_eq!(db.query::<FanIn>(()).await?, 1 + 4 + 30 + 8);
    assert_eq!((fan.take(), double.take()), (1, 0));

    // Read only by a spawned task (query).
    db.set::<Num>(4, 40)?;
    assert_eq!(db.query::<FanIn>(()).await?, 1 + 4 + 30 + 80);
    assert_eq!((fan.take(), double.take()), (1, 1));

    // Read only by a join! branch (input, then query).
    db.set::<Num>(1, 10)?;
    assert_eq!(db.query::<FanIn>(()).await?, 10 + 4 + 30 + 80);
    assert_eq!((fan.take(), double.take()), (1, 0));
    db.set::<Num>(2, 20)?;
    assert_eq!(db.query::<FanIn>(()).await?, 10 + 40 + 30 + 80);
    assert_eq!((fan.take(), double.take()), (1, 1));

    // Same through a snapshot.
    let snap = db.snapshot();
    db.set::<Num>(3, 3)?;
    assert_eq!(snap.query::<FanIn>(()).await?, 160);
    assert_eq!(db.query::<FanIn>(()).await?, 133);
    assert_eq!((fan.take(), double.take()), (1, 0));
    Ok(())
}

type LateReads = (Result<i64>, Result<i64>);

/// Returns `Num(1)` at once, leaving behind a task that reads `Num(2)` and
/// `Double(2)` through a clone of its context after it is released.
struct Leaky {
    runs: Count,
    release: Arc<Notify>,
    report: std::sync::Mutex<Option<oneshot::Sender<LateReads>>>,
}
#[async_trait]
impl AsyncQuery for Leaky {
    type Key = ();
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<i64> {
        self.runs.hit();
        let report = self.report.lock().unwrap().take();
        let (cx2, release) = (cx.clone(), self.release.clone());
        tokio::spawn(async move {
            release.notified().await;
            let input = cx2.input::<Num>(&2);
            let query = cx2.query::<Double>(2).await;
            if let Some(tx) = report {
                let _ = tx.send((input, query));
            }
        });
        Ok(cx.input::<Num>(&1)?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn querycx_read_after_finish_is_error() -> Result<()> {
    let (runs, double) = (Count::new(), Count::new());
    let release = Arc::new(Notify::new());
    let (tx, rx) = oneshot::channel();
    let db = Database::builder()
        .input::<Num>()
        .query(Double {
            runs: double.clone(),
        })
        .query(Leaky {
            runs: runs.clone(),
            release: release.clone(),
            report: std::sync::Mutex::new(Some(tx)),
        })
        .build()?;
    db.set::<Num>(1, 1)?;
    db.set::<Num>(2, 2)?;
    // Make Double(2) a verified memo too, so the late query read would be a
    // hit if it were not refused.
    assert_eq!(db.query::<Double>(2).await?, 4);
    assert_eq!(db.query::<Leaky>(()).await?, 1);
    release.notify_one();
    let (input, query) = within("the leftover task", rx).await.expect("report");
    for (what, r) in [("input", input), ("query", query)] {
        let err = r.expect_err("a read after the execution finished");
        assert!(
            matches!(err.kind(), ErrorKind::ExecutionFinished { query } if query.contains("Leaky")),
            "{what}: {err:?}"
        );
    }
    // The late reads were not recorded: changing Num(2) does not re-run it.
    let deps = db.inspect::<Leaky>(&())?.expect("memoized").dependencies;
    assert_eq!(deps, vec!["Num(1)".to_string()]);
    db.set::<Num>(2, 20)?;
    assert_eq!(db.query::<Leaky>(()).await?, 1);
    assert_eq!(runs.get(), 1);
    assert_eq!(double.get(), 1);
    Ok(())
}
