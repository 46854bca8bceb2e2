//! One or more named tests per semantic rule S2–S11 of DESIGN.md §2, plus
//! bad-use errors. Every test counts executions of the query bodies, not only
//! the values they return.

mod common;

use std::marker::PhantomData;
use std::sync::Arc;

use common::Count;
use picante::*;
use tokio::sync::Notify;

// ---------------------------------------------------------------- fixtures

/// A low-durability input.
struct A;
impl Input for A {
    type Key = u32;
    type Value = i64;
}

/// A second low-durability input kind.
struct B;
impl Input for B {
    type Key = u32;
    type Value = i64;
}

/// `A(k) * 10`; an absent `A(k)` is a `MissingInput` error.
struct ReadA {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for ReadA {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<A>(&k)? * 10)
    }
}

/// `A(k)` as data: absence is `None`.
struct OptA {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for OptA {
    type Key = u32;
    type Value = Option<i64>;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<Option<i64>> {
        self.runs.hit();
        Ok(cx.input_opt::<A>(&k)?)
    }
}

/// `A(k) + B(k)`.
struct SumAB {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for SumAB {
    type Key = u32;
    type Value = (i64, i64);
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<(i64, i64)> {
        self.runs.hit();
        Ok((cx.input::<A>(&k)?, cx.input::<B>(&k)?))
    }
}

fn rev(n: Revision) -> u64 {
    n.as_u64()
}

// ---------------------------------------------------------------- S2

#[tokio::test]
async fn s2_equal_set_is_a_noop() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .query(ReadA { runs: runs.clone() })
        .build()?;
    let r0 = db.revision();
    let r1 = db.set::<A>(1, 5)?;
    assert_eq!(
        rev(r1),
        rev(r0) + 1,
        "a real change advances the revision once"
    );
    assert_eq!(db.revision(), r1);
    assert_eq!(db.query::<ReadA>(1).await?, 50);
    assert_eq!(runs.get(), 1);

    // Same value: no new revision, nothing invalidated, not even revalidated.
    let before = db.stats();
    assert_eq!(db.set::<A>(1, 5)?, r1);
    assert_eq!(db.revision(), r1);
    assert_eq!(db.query::<ReadA>(1).await?, 50);
    assert_eq!(runs.get(), 1);
    let after = db.stats();
    assert_eq!(after.dependency_checks, before.dependency_checks);
    assert_eq!(
        after.query("ReadA").unwrap().revalidations,
        before.query("ReadA").unwrap().revalidations
    );
    assert_eq!(
        after.query("ReadA").unwrap().hits,
        before.query("ReadA").unwrap().hits + 1
    );

    // Removing an absent key is a no-op too.
    assert_eq!(db.remove::<A>(&99)?, r1);
    assert_eq!(db.revision(), r1);

    // A real change: exactly one revision, one re-execution.
    let r2 = db.set::<A>(1, 6)?;
    assert_eq!(rev(r2), rev(r1) + 1);
    assert_eq!(db.query::<ReadA>(1).await?, 60);
    assert_eq!(runs.get(), 2);
    Ok(())
}

#[tokio::test]
async fn s2_remove_of_present_key_advances_once_and_invalidates() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .query(ReadA { runs: runs.clone() })
        .build()?;
    let r1 = db.set::<A>(1, 5)?;
    assert_eq!(db.query::<ReadA>(1).await?, 50);
    assert_eq!(runs.get(), 1);

    let r2 = db.remove::<A>(&1)?;
    assert_eq!(rev(r2), rev(r1) + 1);
    assert_eq!(db.revision(), r2);
    let err = db.query::<ReadA>(1).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::MissingInput { input, key } if input == "A" && key == "1"),
        "{err:?}"
    );
    assert_eq!(runs.get(), 2);
    assert_eq!(db.input_opt::<A>(&1)?, None);

    // Removing it again changes nothing.
    assert_eq!(db.remove::<A>(&1)?, r2);
    assert_eq!(db.revision(), r2);
    assert!(db.query::<ReadA>(1).await.is_err());
    assert_eq!(runs.get(), 2);

    // Setting it back re-runs the query.
    let r3 = db.set::<A>(1, 7)?;
    assert_eq!(rev(r3), rev(r2) + 1);
    assert_eq!(db.query::<ReadA>(1).await?, 70);
    assert_eq!(runs.get(), 3);
    Ok(())
}

#[tokio::test]
async fn s2_absent_read_reruns_when_key_appears() -> Result<()> {
    let opt_runs = Count::new();
    let read_runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .query(OptA {
            runs: opt_runs.clone(),
        })
        .query(ReadA {
            runs: read_runs.clone(),
        })
        .build()?;

    // Absence read as data.
    assert_eq!(db.query::<OptA>(1).await?, None);
    assert_eq!(opt_runs.get(), 1);
    // Absence read through `input` (an error), still a dependency.
    assert!(db.query::<ReadA>(1).await.is_err());
    assert_eq!(read_runs.get(), 1);

    // Another key appearing does not concern them.
    db.set::<A>(2, 1)?;
    assert_eq!(db.query::<OptA>(1).await?, None);
    assert_eq!(opt_runs.get(), 1);

    // The key they read appears: both re-run.
    db.set::<A>(1, 4)?;
    assert_eq!(db.query::<OptA>(1).await?, Some(4));
    assert_eq!(opt_runs.get(), 2);
    assert_eq!(db.query::<ReadA>(1).await?, 40);
    assert_eq!(read_runs.get(), 2);

    // And again when it disappears.
    db.remove::<A>(&1)?;
    assert_eq!(db.query::<OptA>(1).await?, None);
    assert_eq!(opt_runs.get(), 3);
    assert!(db.query::<ReadA>(1).await.is_err());
    assert_eq!(read_runs.get(), 3);
    Ok(())
}

// ---------------------------------------------------------------- S3

#[tokio::test]
async fn s3_batch_is_atomic_and_later_write_wins() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .input::<B>()
        .query(SumAB { runs: runs.clone() })
        .build()?;
    let r0 = db.revision();
    let mut batch = db.batch();
    batch.set::<A>(0, 1).set::<B>(0, 1);
    let r1 = batch.commit()?;
    assert_eq!(rev(r1), rev(r0) + 1, "one revision per batch");
    assert_eq!(db.query::<SumAB>(0).await?, (1, 1));
    assert_eq!(runs.get(), 1);
    let snap = db.snapshot();

    let mut batch = db.batch();
    batch
        .set::<A>(0, 10)
        .set::<B>(0, 20)
        .set::<A>(0, 30) // later write to the same slot wins
        .set::<A>(5, 1)
        .remove::<A>(&5) // ... also when it is a remove
        .remove::<B>(&7)
        .set::<B>(7, 3); // ... and when it is a set after a remove
    // Nothing is visible before commit.
    assert_eq!(db.input::<A>(&0)?, 1);
    assert_eq!(db.revision(), r1);
    let r2 = batch.commit()?;
    assert_eq!(rev(r2), rev(r1) + 1, "one revision for the whole batch");
    assert_eq!(db.revision(), r2);
    assert_eq!(db.input::<A>(&0)?, 30);
    assert_eq!(db.input::<B>(&0)?, 20);
    assert_eq!(db.input_opt::<A>(&5)?, None);
    assert_eq!(db.input::<B>(&7)?, 3);
    assert_eq!(db.query::<SumAB>(0).await?, (30, 20));
    assert_eq!(runs.get(), 2, "both changes seen by one re-execution");

    // A snapshot taken before the batch sees none of it.
    assert_eq!(snap.input::<A>(&0)?, 1);
    assert_eq!(snap.input_opt::<B>(&7)?, None);
    assert_eq!(snap.query::<SumAB>(0).await?, (1, 1));
    assert_eq!(runs.get(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_batch_is_all_or_nothing_for_concurrent_readers() -> Result<()> {
    const ROUNDS: i64 = 300;
    let runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .input::<B>()
        .query(SumAB { runs: runs.clone() })
        .build()?;
    let mut batch = db.batch();
    batch.set::<A>(0, 0).set::<B>(0, 0);
    let start = batch.commit()?;

    let reader_db = db.clone();
    let reader = tokio::spawn(async move {
        let mut observed = 0usize;
        loop {
            let snap = reader_db.snapshot();
            let (a, b) = (snap.input::<A>(&0)?, snap.input::<B>(&0)?);
            assert_eq!(a, b, "torn batch seen through a snapshot");
            let (qa, qb) = snap.query::<SumAB>(0).await?;
            assert_eq!((qa, qb), (a, b), "query at the snapshot's revision");
            let (da, db_) = reader_db.query::<SumAB>(0).await?;
            assert_eq!(da, db_, "torn batch seen by a query on the database");
            observed += 1;
            if a == ROUNDS {
                return Ok::<usize, Error>(observed);
            }
            tokio::task::yield_now().await;
        }
    });
    for i in 1..=ROUNDS {
        let mut batch = db.batch();
        batch.set::<A>(0, i).set::<B>(0, -1).set::<B>(0, i);
        let r = batch.commit()?;
        assert_eq!(rev(r), rev(start) + i as u64);
        tokio::task::yield_now().await;
    }
    let observed = reader.await.expect("reader task")?;
    assert!(observed >= 1);
    // At most one execution per revision the queries ran at.
    assert!(runs.get() >= 1);
    assert!(
        runs.get() <= ROUNDS as usize + 1,
        "{} executions",
        runs.get()
    );
    Ok(())
}

#[tokio::test]
async fn s3_batch_without_changes_is_noop() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .input::<B>()
        .query(SumAB { runs: runs.clone() })
        .build()?;
    let mut batch = db.batch();
    batch.set::<A>(0, 1).set::<B>(0, 2);
    let r1 = batch.commit()?;
    assert_eq!(db.query::<SumAB>(0).await?, (1, 2));
    assert_eq!(runs.get(), 1);
    let checks = db.stats().dependency_checks;

    // Equal values and removes of absent keys.
    let mut batch = db.batch();
    batch.set::<A>(0, 1).set::<B>(0, 2).remove::<A>(&9);
    assert_eq!(batch.commit()?, r1);
    // A slot changed and changed back within the batch.
    let mut batch = db.batch();
    batch.set::<A>(0, 5).set::<A>(0, 1);
    assert_eq!(batch.commit()?, r1);
    // A key set and removed within the batch (it was absent).
    let mut batch = db.batch();
    batch.set::<B>(8, 5).remove::<B>(&8);
    assert_eq!(batch.commit()?, r1);
    // The empty batch.
    assert_eq!(db.batch().commit()?, r1);

    assert_eq!(db.revision(), r1);
    assert_eq!(db.input_opt::<B>(&8)?, None);
    assert_eq!(db.query::<SumAB>(0).await?, (1, 2));
    assert_eq!(runs.get(), 1);
    assert_eq!(
        db.stats().dependency_checks,
        checks,
        "nothing was even revalidated"
    );
    Ok(())
}

// ---------------------------------------------------------------- S4

/// `A(0)` as its own query, for reads through a sub-query.
struct InnerA {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for InnerA {
    type Key = ();
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<A>(&0)?)
    }
}

/// Reads `A(0)`, tells the test it started, waits for the test's go, then
/// reads `A(0)` again, through `InnerA`, and `A(1)`.
struct Straddle {
    runs: Count,
    started: Arc<Notify>,
    go: Arc<Notify>,
}
#[async_trait]
impl AsyncQuery for Straddle {
    type Key = ();
    type Value = (u64, i64, i64, i64, Option<i64>);
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<Self::Value> {
        self.runs.hit();
        let at = cx.revision().as_u64();
        let first = cx.input::<A>(&0)?;
        self.started.notify_one();
        self.go.notified().await;
        let second = cx.input::<A>(&0)?;
        let inner = cx.query::<InnerA>(()).await?;
        let other = cx.input_opt::<A>(&1)?;
        Ok((at, first, second, inner, other))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_access_bound_to_start_revision() -> Result<()> {
    let runs = Count::new();
    let inner_runs = Count::new();
    let started = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let db = Database::builder()
        .input::<A>()
        .query(InnerA {
            runs: inner_runs.clone(),
        })
        .query(Straddle {
            runs: runs.clone(),
            started: started.clone(),
            go: go.clone(),
        })
        .build()?;
    let r1 = db.set::<A>(0, 1)?;

    let db2 = db.clone();
    let running = tokio::spawn(async move { db2.query::<Straddle>(()).await });
    started.notified().await;

    // While it waits: change what it read and what it will read.
    let r2 = db.set::<A>(0, 2)?;
    let r3 = db.set::<A>(1, 5)?;
    assert_eq!(rev(r3), rev(r1) + 2);
    // The database moved on (and computing InnerA at r3 is not blocked).
    assert_eq!(db.query::<InnerA>(()).await?, 2);
    assert_eq!(inner_runs.get(), 1);

    go.notify_one();
    let value = running.await.expect("query task")?;
    assert_eq!(
        value,
        (rev(r1), 1, 1, 1, None),
        "every read at r1, none at r2/r3"
    );
    assert_eq!(runs.get(), 1);
    assert_eq!(
        inner_runs.get(),
        2,
        "InnerA also ran at r1 for the old access"
    );

    // At the current revision the query re-runs and sees the new inputs.
    assert!(r2 < r3);
    go.notify_one(); // a permit for the next execution
    assert_eq!(db.query::<Straddle>(()).await?, (rev(r3), 2, 2, 2, Some(5)));
    assert_eq!(runs.get(), 2);
    assert_eq!(inner_runs.get(), 2, "InnerA's memo at r3 is reused");
    // The late memo from r1 did not replace anything newer.
    assert_eq!(db.query::<InnerA>(()).await?, 2);
    assert_eq!(inner_runs.get(), 2);
    Ok(())
}

// ---------------------------------------------------------------- S5

/// `A(k)`.
struct Dep5 {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Dep5 {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<A>(&k)?)
    }
}

/// Reads in every way a body can: an input, an absent input, a query, an
/// input from a spawned task through a clone of `cx`, two queries in `join!`.
struct Reader5 {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Reader5 {
    type Key = ();
    type Value = Vec<Option<i64>>;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<Vec<Option<i64>>> {
        self.runs.hit();
        let a1 = cx.input::<A>(&1)?;
        let a2 = cx.input_opt::<A>(&2)?;
        let d3 = cx.query::<Dep5>(3).await?;
        let cx2 = cx.clone();
        let b1 = tokio::spawn(async move { cx2.input::<B>(&1) })
            .await
            .map_err(Error::new)??;
        let (d4, d5) = tokio::join!(cx.query::<Dep5>(4), cx.query::<Dep5>(5));
        Ok(vec![Some(a1), a2, Some(d3), Some(b1), Some(d4?), Some(d5?)])
    }
}

#[tokio::test]
async fn s5_every_read_is_a_dependency() -> Result<()> {
    let runs = Count::new();
    let dep_runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .input::<B>()
        .query(Dep5 {
            runs: dep_runs.clone(),
        })
        .query(Reader5 { runs: runs.clone() })
        .build()?;
    let mut batch = db.batch();
    batch
        .set::<A>(1, 1)
        .set::<A>(3, 3)
        .set::<A>(4, 4)
        .set::<A>(5, 5)
        .set::<B>(1, 10);
    batch.commit()?;
    let expect = |a2: Option<i64>, v: [i64; 5]| {
        vec![
            Some(v[0]),
            a2,
            Some(v[1]),
            Some(v[2]),
            Some(v[3]),
            Some(v[4]),
        ]
    };
    assert_eq!(
        db.query::<Reader5>(()).await?,
        expect(None, [1, 3, 10, 4, 5])
    );
    assert_eq!(runs.get(), 1);
    assert_eq!(dep_runs.get(), 3);

    let mut deps = db.inspect::<Reader5>(&())?.expect("memo").dependencies;
    deps.sort();
    assert_eq!(
        deps,
        ["A(1)", "A(2)", "B(1)", "Dep5(3)", "Dep5(4)", "Dep5(5)"]
    );

    // Unrelated changes: no re-run.
    db.set::<A>(9, 0)?;
    db.set::<B>(9, 0)?;
    assert_eq!(
        db.query::<Reader5>(()).await?,
        expect(None, [1, 3, 10, 4, 5])
    );
    assert_eq!(runs.get(), 1);
    assert_eq!(dep_runs.get(), 3);

    // Each dependency, changed alone, re-runs the reader once.
    db.set::<A>(1, 11)?;
    assert_eq!(
        db.query::<Reader5>(()).await?,
        expect(None, [11, 3, 10, 4, 5])
    );
    assert_eq!(runs.get(), 2);
    db.set::<A>(2, 22)?; // the absent read
    assert_eq!(
        db.query::<Reader5>(()).await?,
        expect(Some(22), [11, 3, 10, 4, 5])
    );
    assert_eq!(runs.get(), 3);
    db.set::<A>(3, 33)?; // through a query
    assert_eq!(
        db.query::<Reader5>(()).await?,
        expect(Some(22), [11, 33, 10, 4, 5])
    );
    assert_eq!(runs.get(), 4);
    db.set::<B>(1, 100)?; // read in a spawned task
    assert_eq!(
        db.query::<Reader5>(()).await?,
        expect(Some(22), [11, 33, 100, 4, 5])
    );
    assert_eq!(runs.get(), 5);
    db.set::<A>(5, 55)?; // read in a join! branch
    assert_eq!(
        db.query::<Reader5>(()).await?,
        expect(Some(22), [11, 33, 100, 4, 55])
    );
    assert_eq!(runs.get(), 6);
    // Dep5 ran once more for key 3 and once more for key 5.
    assert_eq!(dep_runs.get(), 5);
    Ok(())
}

// ---------------------------------------------------------------- S6

struct Leaf6 {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Leaf6 {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<A>(&k)?)
    }
}

struct Mid6 {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Mid6 {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<Leaf6>(k).await? + 1)
    }
}

struct Top6 {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Top6 {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<Mid6>(k).await? * 2)
    }
}

#[tokio::test]
async fn s6_revalidation_without_reexecution() -> Result<()> {
    let (leaf, mid, top) = (Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .input::<A>()
        .input::<B>()
        .query(Leaf6 { runs: leaf.clone() })
        .query(Mid6 { runs: mid.clone() })
        .query(Top6 { runs: top.clone() })
        .build()?;
    let r1 = db.set::<A>(1, 1)?;
    assert_eq!(db.query::<Top6>(1).await?, 4);
    assert_eq!((leaf.get(), mid.get(), top.get()), (1, 1, 1));

    // An unrelated change: the chain is revalidated (recursively), not re-run.
    let before = db.stats();
    let r2 = db.set::<A>(2, 7)?;
    assert_eq!(db.query::<Top6>(1).await?, 4);
    assert_eq!((leaf.get(), mid.get(), top.get()), (1, 1, 1));
    let after = db.stats();
    for name in ["Leaf6", "Mid6", "Top6"] {
        assert_eq!(
            after.query(name).unwrap().revalidations,
            before.query(name).unwrap().revalidations + 1,
            "{name}"
        );
        assert_eq!(after.query(name).unwrap().executions, 1, "{name}");
    }
    assert!(after.dependency_checks > before.dependency_checks);
    let info = db.inspect::<Top6>(&1)?.expect("memo");
    assert_eq!(
        (info.verified_at, info.executed_at, info.changed_at),
        (r2, r1, r1)
    );
    // The inner memos were verified at r2 as well: reading them is a hit.
    assert_eq!(db.inspect::<Leaf6>(&1)?.expect("memo").verified_at, r2);
    let hits = db.stats().query("Mid6").unwrap().hits;
    assert_eq!(db.query::<Mid6>(1).await?, 2);
    assert_eq!(db.stats().query("Mid6").unwrap().hits, hits + 1);

    // A change at r3, then an unrelated one at r4: re-run once at r4...
    let r3 = db.set::<A>(1, 5)?;
    let r4 = db.set::<B>(0, 1)?;
    assert!(r3 < r4);
    assert_eq!(db.query::<Top6>(1).await?, 12);
    assert_eq!((leaf.get(), mid.get(), top.get()), (2, 2, 2));
    // ...and then a change at r5 is compared with verified_at = r4, not with
    // the revision the memo was executed at: no re-run.
    let r5 = db.set::<B>(1, 1)?;
    assert_eq!(db.query::<Top6>(1).await?, 12);
    assert_eq!((leaf.get(), mid.get(), top.get()), (2, 2, 2));
    let info = db.inspect::<Top6>(&1)?.expect("memo");
    assert_eq!(
        (info.verified_at, info.executed_at, info.changed_at),
        (r5, r4, r4)
    );
    Ok(())
}

// ---------------------------------------------------------------- S7

/// `A(0)`.
struct D7 {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for D7 {
    type Key = ();
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<A>(&0)?)
    }
}

/// `D7 > 100`.
struct Q7 {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Q7 {
    type Key = ();
    type Value = bool;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<bool> {
        self.runs.hit();
        Ok(cx.query::<D7>(()).await? > 100)
    }
}

/// Depends on `Q7`.
struct Top7 {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Top7 {
    type Key = ();
    type Value = String;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<String> {
        self.runs.hit();
        Ok(format!("big: {}", cx.query::<Q7>(()).await?))
    }
}

#[tokio::test]
async fn s7_early_cutoff_stops_dependents() -> Result<()> {
    let (d, q, top) = (Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .input::<A>()
        .input::<B>()
        .query(D7 { runs: d.clone() })
        .query(Q7 { runs: q.clone() })
        .query(Top7 { runs: top.clone() })
        .build()?;
    let r1 = db.set::<A>(0, 1)?;
    assert_eq!(db.query::<Top7>(()).await?, "big: false");
    assert_eq!((d.get(), q.get(), top.get()), (1, 1, 1));

    // The must-pass case: A=2 → D re-runs, Q re-runs once, same value...
    db.set::<A>(0, 2)?;
    assert!(!db.query::<Q7>(()).await?);
    assert_eq!((d.get(), q.get()), (2, 2));
    assert_eq!(db.stats().query("Q7").unwrap().cutoffs, 1);
    // ...so Q keeps its changed_at and Q's dependent is not re-run.
    assert_eq!(db.inspect::<Q7>(&())?.expect("memo").changed_at, r1);
    assert_eq!(db.query::<Top7>(()).await?, "big: false");
    assert_eq!(top.get(), 1);

    // Then two unrelated input changes: zero more re-runs of anything.
    db.set::<A>(1, 1000)?;
    assert!(!db.query::<Q7>(()).await?);
    db.set::<B>(0, 1000)?;
    assert!(!db.query::<Q7>(()).await?);
    assert_eq!(db.query::<Top7>(()).await?, "big: false");
    assert_eq!(
        (d.get(), q.get(), top.get()),
        (2, 2, 1),
        "re-ran after unrelated changes"
    );

    // A real change of Q's value still propagates.
    db.set::<A>(0, 101)?;
    assert_eq!(db.query::<Top7>(()).await?, "big: true");
    assert_eq!((d.get(), q.get(), top.get()), (3, 3, 2));
    Ok(())
}

/// `A(k) / 10`: many inputs give the same value.
struct Tens {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Tens {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<A>(&k)? / 10)
    }
}

struct AfterTens {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for AfterTens {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<Tens>(k).await? + cx.query::<Tens>(k + 1).await?)
    }
}

#[tokio::test]
async fn s7_cutoff_at_first_level_skips_dependent_execution() -> Result<()> {
    let (tens, after) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<A>()
        .query(Tens { runs: tens.clone() })
        .query(AfterTens {
            runs: after.clone(),
        })
        .build()?;
    let mut batch = db.batch();
    batch.set::<A>(1, 11).set::<A>(2, 22);
    batch.commit()?;
    assert_eq!(db.query::<AfterTens>(1).await?, 3);
    assert_eq!((tens.get(), after.get()), (2, 1));

    db.set::<A>(1, 15)?; // Tens(1) re-runs, still 1
    assert_eq!(db.query::<AfterTens>(1).await?, 3);
    assert_eq!((tens.get(), after.get()), (3, 1));
    let mut batch = db.batch();
    batch.set::<A>(1, 19).set::<A>(2, 29); // both re-run, both equal
    batch.commit()?;
    assert_eq!(db.query::<AfterTens>(1).await?, 3);
    assert_eq!((tens.get(), after.get()), (5, 1));
    let stats = db.stats();
    assert_eq!(stats.query("Tens").unwrap().cutoffs, 3);
    assert_eq!(stats.query("AfterTens").unwrap().executions, 1);

    db.set::<A>(2, 30)?; // Tens(2) changes: 2 → 3
    assert_eq!(db.query::<AfterTens>(1).await?, 4);
    assert_eq!((tens.get(), after.get()), (6, 2));
    Ok(())
}

// ---------------------------------------------------------------- S8

/// Rarely changes.
struct Cfg;
impl Input for Cfg {
    type Key = ();
    type Value = i64;
    const DURABILITY: Durability = Durability::High;
}

/// Changes sometimes.
struct Tpl;
impl Input for Tpl {
    type Key = u32;
    type Value = i64;
    const DURABILITY: Durability = Durability::Medium;
}

/// Low, the default.
struct Src;
impl Input for Src {
    type Key = u32;
    type Value = i64;
}

struct CfgMid {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for CfgMid {
    type Key = ();
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<Cfg>(&())? * 2)
    }
}

struct CfgTop {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for CfgTop {
    type Key = ();
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<CfgMid>(()).await? + 1)
    }
}

/// Depends on `CfgTop` (High) and `Tpl(k)` (Medium).
struct WithTpl {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for WithTpl {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<CfgTop>(()).await? + cx.input::<Tpl>(&k)?)
    }
}

/// Depends on `CfgTop` (High) and `Src(k)` (Low).
struct Mixed {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Mixed {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<CfgTop>(()).await? + cx.input::<Src>(&k)?)
    }
}

#[tokio::test]
async fn s8_durability_skips_dependency_walk() -> Result<()> {
    let (cfg_mid, cfg_top, with_tpl, mixed) =
        (Count::new(), Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .input::<Cfg>()
        .input::<Tpl>()
        .input::<Src>()
        .query(CfgMid {
            runs: cfg_mid.clone(),
        })
        .query(CfgTop {
            runs: cfg_top.clone(),
        })
        .query(WithTpl {
            runs: with_tpl.clone(),
        })
        .query(Mixed {
            runs: mixed.clone(),
        })
        .build()?;
    let mut batch = db.batch();
    batch
        .set::<Cfg>((), 5)
        .set::<Tpl>(1, 100)
        .set::<Src>(1, 1000);
    batch.commit()?;
    assert_eq!(db.query::<CfgTop>(()).await?, 11);
    assert_eq!(db.query::<WithTpl>(1).await?, 111);
    assert_eq!(db.query::<Mixed>(1).await?, 1011);
    assert_eq!(
        (cfg_mid.get(), cfg_top.get(), with_tpl.get(), mixed.get()),
        (1, 1, 1, 1)
    );
    assert_eq!(
        db.inspect::<CfgTop>(&())?.expect("memo").durability,
        Durability::High
    );
    assert_eq!(
        db.inspect::<WithTpl>(&1)?.expect("memo").durability,
        Durability::Medium
    );
    assert_eq!(
        db.inspect::<Mixed>(&1)?.expect("memo").durability,
        Durability::Low
    );

    // Only Low inputs changed: High and Medium memos revalidate with zero
    // dependency checks.
    db.set::<Src>(2, 1)?;
    db.set::<Src>(1, 2000)?;
    let before = db.stats();
    assert_eq!(db.query::<CfgTop>(()).await?, 11);
    assert_eq!(db.query::<WithTpl>(1).await?, 111);
    let after = db.stats();
    assert_eq!(
        after.dependency_checks, before.dependency_checks,
        "no dependency walk"
    );
    assert_eq!(
        after.query("CfgTop").unwrap().revalidations,
        before.query("CfgTop").unwrap().revalidations + 1
    );
    assert_eq!(
        after.query("WithTpl").unwrap().revalidations,
        before.query("WithTpl").unwrap().revalidations + 1
    );
    assert_eq!((cfg_mid.get(), cfg_top.get(), with_tpl.get()), (1, 1, 1));

    // The Low memo does walk (the counter is live), but not below CfgTop.
    db.set::<Src>(3, 1)?;
    let before = db.stats();
    assert_eq!(db.query::<Mixed>(1).await?, 2011); // Src(1) changed earlier
    assert_eq!(mixed.get(), 2);
    db.set::<Src>(4, 1)?;
    let mid = db.stats();
    assert!(mid.dependency_checks > before.dependency_checks);
    assert_eq!(db.query::<Mixed>(1).await?, 2011);
    assert_eq!(mixed.get(), 2);
    let after = db.stats();
    assert_eq!(
        after.dependency_checks - mid.dependency_checks,
        2,
        "Mixed's two edges; CfgTop's subtree is skipped by durability"
    );

    // A Medium change: the Medium memo walks (and stays valid for an
    // unrelated key); the High memo still does not.
    db.set::<Tpl>(2, 7)?;
    let before = db.stats();
    assert_eq!(db.query::<CfgTop>(()).await?, 11);
    assert_eq!(db.stats().dependency_checks, before.dependency_checks);
    assert_eq!(db.query::<WithTpl>(1).await?, 111);
    assert!(db.stats().dependency_checks > before.dependency_checks);
    assert_eq!((cfg_mid.get(), cfg_top.get(), with_tpl.get()), (1, 1, 1));

    // A High change re-runs the High chain and its dependents.
    db.set::<Cfg>((), 6)?;
    assert_eq!(db.query::<WithTpl>(1).await?, 113);
    assert_eq!(db.query::<Mixed>(1).await?, 2013);
    assert_eq!(
        (cfg_mid.get(), cfg_top.get(), with_tpl.get(), mixed.get()),
        (2, 2, 2, 3)
    );
    Ok(())
}

/// A twin of `Cfg` without the durability annotation.
struct CfgLow;
impl Input for CfgLow {
    type Key = ();
    type Value = i64;
}

struct CfgOnly<C>(Count, PhantomData<fn() -> C>);
#[async_trait]
impl<C: Input<Key = (), Value = i64>> AsyncQuery for CfgOnly<C> {
    type Key = ();
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<i64> {
        self.0.hit();
        Ok(cx.input_opt::<C>(&())?.unwrap_or(-1) % 7)
    }
}

struct Combine<C>(Count, PhantomData<fn() -> C>);
#[async_trait]
impl<C: Input<Key = (), Value = i64>> AsyncQuery for Combine<C> {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.0.hit();
        let c = cx.query::<CfgOnly<C>>(()).await?;
        Ok(c * 1000 + cx.input_opt::<Src>(&k)?.unwrap_or(-1))
    }
}

/// Runs a fixed scenario with `C` as the configuration input; returns every
/// observed value, the executions after each step, and the dependency checks.
async fn durability_scenario<C: Input<Key = (), Value = i64>>()
-> Result<(Vec<i64>, Vec<(usize, usize)>, u64)> {
    let (only, combine) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<C>()
        .input::<Src>()
        .query(CfgOnly::<C>(only.clone(), PhantomData))
        .query(Combine::<C>(combine.clone(), PhantomData))
        .build()?;
    let mut values = Vec::new();
    let mut work = Vec::new();
    for step in 0..12i64 {
        let r = match step % 4 {
            0 => db.set::<C>((), step)?,
            1 => db.set::<Src>((step % 3) as u32, step)?,
            2 => db.remove::<Src>(&((step % 3) as u32))?,
            // The same value mod 7: CfgOnly is cut off.
            _ => db.set::<C>((), db.input::<C>(&())? + 7)?,
        };
        assert_eq!(r, db.revision());
        for k in 0..3 {
            values.push(db.query::<Combine<C>>(k).await?);
        }
        values.push(db.query::<CfgOnly<C>>(()).await?);
        work.push((only.get(), combine.get()));
    }
    Ok((values, work, db.stats().dependency_checks))
}

#[tokio::test]
async fn s8_durability_never_changes_results() -> Result<()> {
    let (high_values, high_work, high_checks) = durability_scenario::<Cfg>().await?;
    let (low_values, low_work, low_checks) = durability_scenario::<CfgLow>().await?;
    assert_eq!(high_values, low_values);
    assert_eq!(
        high_work, low_work,
        "same executions with and without durability"
    );
    assert!(
        high_checks < low_checks,
        "durability saved work: {high_checks} vs {low_checks}"
    );
    Ok(())
}

// ---------------------------------------------------------------- S9

struct Label;
impl Interned for Label {
    type Value = String;
}

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

/// Interns a label built from `A(k)`.
struct MakeLabel {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for MakeLabel {
    type Key = u32;
    type Value = Id<Label>;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<Id<Label>> {
        self.runs.hit();
        let a = cx.input::<A>(&k)?;
        // Interning more than it returns must not matter either.
        cx.intern::<Label>(format!("scratch-{a}"))?;
        Ok(cx.intern::<Label>(format!("n{a}"))?)
    }
}

#[tokio::test]
async fn s9_interning_dedups_and_never_invalidates() -> Result<()> {
    let (len_runs, make_runs) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<A>()
        .interned::<Label>()
        .query(LabelLen {
            runs: len_runs.clone(),
        })
        .query(MakeLabel {
            runs: make_runs.clone(),
        })
        .build()?;
    let r1 = db.set::<A>(1, 7)?;

    let a = db.intern::<Label>("a".into())?;
    assert_eq!(db.intern::<Label>("a".into())?, a, "same value, same id");
    let bb = db.intern::<Label>("bb".into())?;
    assert_ne!(a, bb);
    assert_eq!(db.lookup::<Label>(bb)?, "bb");
    assert_eq!(db.revision(), r1, "interning does not advance the revision");

    assert_eq!(db.query::<LabelLen>(bb).await?, 2);
    assert_eq!(db.query::<LabelLen>(a).await?, 1);
    let made = db.query::<MakeLabel>(1).await?;
    assert_eq!(
        made,
        db.intern::<Label>("n7".into())?,
        "cx.intern shares the table"
    );
    assert_eq!((len_runs.get(), make_runs.get()), (2, 1));

    // Interning more values, from the database, a snapshot, and a query:
    // no new revision, nothing re-runs or even needs revalidation.
    let snap = db.snapshot();
    let before = db.stats();
    for i in 0..50 {
        db.intern::<Label>(format!("more-{i}"))?;
    }
    let from_snap = snap.intern::<Label>("from-snapshot".into())?;
    assert_eq!(
        snap.intern::<Label>("bb".into())?,
        bb,
        "shared by all views"
    );
    assert_eq!(
        db.lookup::<Label>(from_snap)?,
        "from-snapshot",
        "shared by all views"
    );
    assert_eq!(db.revision(), r1);
    assert_eq!(snap.revision(), r1);
    assert_eq!(db.query::<LabelLen>(bb).await?, 2);
    assert_eq!(db.query::<MakeLabel>(1).await?, made);
    assert_eq!((len_runs.get(), make_runs.get()), (2, 1));
    let after = db.stats();
    assert_eq!(after.dependency_checks, before.dependency_checks);
    assert_eq!(after.total_executions(), before.total_executions());

    // After a real change of an unrelated input, they revalidate, not re-run.
    db.set::<A>(2, 0)?;
    db.intern::<Label>("later".into())?;
    assert_eq!(db.query::<LabelLen>(bb).await?, 2);
    assert_eq!(db.query::<MakeLabel>(1).await?, made);
    assert_eq!((len_runs.get(), make_runs.get()), (2, 1));

    // Re-executions that intern a new value, then an old one, get their ids.
    db.set::<A>(1, 8)?;
    let n8 = db.query::<MakeLabel>(1).await?;
    assert_eq!(db.lookup::<Label>(n8)?, "n8");
    db.set::<A>(1, 7)?;
    assert_eq!(db.query::<MakeLabel>(1).await?, made);
    assert_eq!(make_runs.get(), 3);

    // Unknown ids are errors, not panics.
    let bogus = Id::<Label>::from_raw(1_000_000);
    assert!(matches!(
        db.lookup::<Label>(bogus).unwrap_err().kind(),
        ErrorKind::UnknownId { .. }
    ));
    Ok(())
}

// ---------------------------------------------------------------- S10

/// `A(k)`, or an error if it is negative.
struct Fallible {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Fallible {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let v = cx.input::<A>(&k)?;
        if v < 0 {
            return Err(QueryError::msg(format!("negative: {v}")));
        }
        Ok(v)
    }
}

/// Panics when `Src(0)` is 13.
struct Panicky {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Panicky {
    type Key = String;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<i64> {
        self.runs.hit();
        let v = cx.input::<Src>(&0)?;
        if v == 13 {
            panic!("boom: {path} had {v}");
        }
        Ok(v)
    }
}

/// Depends on `Panicky`.
struct AfterPanicky {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for AfterPanicky {
    type Key = String;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<Panicky>(path).await? + 1)
    }
}

#[tokio::test]
async fn s10_error_memoized_per_revision() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .query(Fallible { runs: runs.clone() })
        .build()?;
    db.set::<A>(1, -1)?;
    let e1 = db.query::<Fallible>(1).await.unwrap_err();
    assert_eq!(e1.to_string(), "negative: -1");
    assert_eq!(runs.get(), 1);
    let e2 = db.query::<Fallible>(1).await.unwrap_err();
    assert!(e1.same(&e2), "the same memoized error");
    assert_eq!(runs.get(), 1, "not re-run at the same revision");
    let info = db.inspect::<Fallible>(&1)?.expect("memo");
    assert!(info.is_error);

    // A snapshot at this revision shares the memoized error.
    let snap = db.snapshot();
    assert!(snap.query::<Fallible>(1).await.unwrap_err().same(&e1));
    assert_eq!(runs.get(), 1);
    Ok(())
}

#[tokio::test]
async fn s10_retry_at_later_revision() -> Result<()> {
    let (runs, p_runs) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<A>()
        .input::<Src>()
        .query(Fallible { runs: runs.clone() })
        .query(Panicky {
            runs: p_runs.clone(),
        })
        .build()?;
    db.set::<A>(1, -1)?;
    db.set::<Src>(0, 13)?;
    assert!(db.query::<Fallible>(1).await.is_err());
    assert!(
        db.query::<Panicky>("p".into())
            .await
            .unwrap_err()
            .is_panic()
    );
    assert_eq!((runs.get(), p_runs.get()), (1, 1));

    db.set::<A>(1, 3)?;
    db.set::<Src>(0, 4)?;
    assert_eq!(db.query::<Fallible>(1).await?, 3);
    assert_eq!(db.query::<Panicky>("p".into()).await?, 4);
    assert_eq!((runs.get(), p_runs.get()), (2, 2));
    assert!(!db.inspect::<Fallible>(&1)?.expect("memo").is_error);

    // And back to failing.
    db.set::<A>(1, -2)?;
    assert_eq!(
        db.query::<Fallible>(1).await.unwrap_err().to_string(),
        "negative: -2"
    );
    assert_eq!(runs.get(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_panic_memoized_and_named() -> Result<()> {
    let (runs, after) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<A>()
        .input::<Src>()
        .query(Panicky { runs: runs.clone() })
        .query(AfterPanicky {
            runs: after.clone(),
        })
        .query(ReadA { runs: Count::new() })
        .build()?;
    db.set::<Src>(0, 13)?;
    db.set::<A>(1, 1)?;

    let key = "dir/page \"1\".md".to_string();
    let err = db.query::<Panicky>(key.clone()).await.unwrap_err();
    assert!(err.is_panic());
    let shown = err.to_string();
    assert!(shown.contains("Panicky"), "{shown}");
    assert!(
        shown.contains(&format!("{key:?}")),
        "names the key (Debug): {shown}"
    );
    assert!(shown.contains("boom: dir/page \"1\".md had 13"), "{shown}");
    match err.kind() {
        ErrorKind::Panic {
            query,
            key: k,
            message,
        } => {
            assert_eq!(query, "Panicky");
            assert_eq!(k, &format!("{key:?}"));
            assert_eq!(message, "boom: dir/page \"1\".md had 13");
        }
        other => panic!("expected a panic error, got {other:?}"),
    }
    assert_eq!(runs.get(), 1);

    // Memoized at this revision.
    assert!(
        db.query::<Panicky>(key.clone())
            .await
            .unwrap_err()
            .same(&err)
    );
    assert_eq!(runs.get(), 1);

    // Dependents get it as an error.
    let dep_err = db.query::<AfterPanicky>(key.clone()).await.unwrap_err();
    assert!(dep_err.is_panic(), "{dep_err:?}");
    assert_eq!((runs.get(), after.get()), (1, 1));

    // The runtime and other queries are fine, also while panics happen
    // concurrently on the worker threads.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                db.query::<Panicky>(format!("other-{i}"))
                    .await
                    .map(|_| ())
                    .unwrap_err()
                    .is_panic()
            } else {
                db.query::<ReadA>(1).await.unwrap() == 10
            }
        }));
    }
    for t in tasks {
        assert!(t.await.expect("task did not panic"));
    }
    assert_eq!(runs.get(), 9, "one execution per new key");
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test]
async fn s10_non_string_panic_payload_is_an_error() -> Result<()> {
    struct PanicAny {
        runs: Count,
    }
    #[async_trait]
    impl AsyncQuery for PanicAny {
        type Key = u8;
        type Value = u8;
        async fn execute(&self, _cx: &QueryCx, k: u8) -> QueryResult<u8> {
            self.runs.hit();
            std::panic::panic_any(k);
        }
    }
    let runs = Count::new();
    let db = Database::builder()
        .query(PanicAny { runs: runs.clone() })
        .build()?;
    let err = db.query::<PanicAny>(3).await.unwrap_err();
    assert!(err.is_panic());
    assert!(err.to_string().contains("PanicAny(3)"), "{err}");
    assert!(db.query::<PanicAny>(3).await.is_err());
    assert_eq!(runs.get(), 1);
    Ok(())
}

// ---------------------------------------------------------------- S11

struct ReadFile {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for ReadFile {
    type Key = std::path::PathBuf;
    type Value = String;
    async fn execute(&self, _cx: &QueryCx, path: std::path::PathBuf) -> QueryResult<String> {
        self.runs.hit();
        Ok(std::fs::read_to_string(&path)?) // `?` on io::Error
    }
}

struct FileLen {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for FileLen {
    type Key = std::path::PathBuf;
    type Value = usize;
    async fn execute(&self, cx: &QueryCx, path: std::path::PathBuf) -> QueryResult<usize> {
        self.runs.hit();
        Ok(cx.query::<ReadFile>(path).await?.len())
    }
}

/// A user error type wrapping another (its `source`).
#[derive(Debug)]
struct BadNumber {
    key: u32,
    source: std::num::ParseIntError,
}
impl std::fmt::Display for BadNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {} is not a number", self.key)
    }
}
impl std::error::Error for BadNumber {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

struct Text;
impl Input for Text {
    type Key = u32;
    type Value = String;
}

struct ParseNum {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for ParseNum {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        let text = cx.input::<Text>(&k)?;
        if k == 0 {
            return Ok(text.trim().parse::<i64>()?); // `?` on ParseIntError
        }
        text.trim()
            .parse::<i64>()
            .map_err(|source| BadNumber { key: k, source }.into())
    }
}

struct Doubled {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Doubled {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<ParseNum>(k).await? * 2)
    }
}

/// Handles the error of its dependency as data.
struct OrZero {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for OrZero {
    type Key = u32;
    type Value = (i64, Option<String>);
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<(i64, Option<String>)> {
        self.runs.hit();
        Ok(match cx.query::<Doubled>(k).await {
            Ok(v) => (v, None),
            Err(e) => (0, Some(e.to_string())),
        })
    }
}

#[tokio::test]
async fn s11_io_error_downcast_from_dependent() -> Result<()> {
    let (read, len) = (Count::new(), Count::new());
    let db = Database::builder()
        .query(ReadFile { runs: read.clone() })
        .query(FileLen { runs: len.clone() })
        .build()?;
    let missing = std::env::temp_dir()
        .join(format!("picante-no-such-dir-{}", std::process::id()))
        .join("missing.txt");
    let err = db.query::<FileLen>(missing.clone()).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::User(_)), "{err:?}");
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("io::Error kept as source");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert!(err.user_error().is_some());
    // It also travels as a boxed std error, keeping its source.
    let boxed: Box<dyn std::error::Error + Send + Sync> = err.clone().into();
    assert!(
        boxed
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some()
    );
    assert_eq!((read.get(), len.get()), (1, 1));
    // Memoized: both errors come back without re-running.
    assert!(db.query::<FileLen>(missing.clone()).await.is_err());
    assert!(db.query::<ReadFile>(missing).await.is_err());
    assert_eq!((read.get(), len.get()), (1, 1));
    Ok(())
}

#[tokio::test]
async fn s11_user_error_source_chain_downcast() -> Result<()> {
    let (parse, doubled) = (Count::new(), Count::new());
    let db = Database::builder()
        .input::<Text>()
        .query(ParseNum {
            runs: parse.clone(),
        })
        .query(Doubled {
            runs: doubled.clone(),
        })
        .build()?;
    db.set::<Text>(0, "x".into())?;
    db.set::<Text>(1, "y".into())?;
    let e0 = db.query::<Doubled>(0).await.unwrap_err();
    assert!(e0.downcast_ref::<std::num::ParseIntError>().is_some());
    let e1 = db.query::<Doubled>(1).await.unwrap_err();
    assert_eq!(e1.to_string(), "entry 1 is not a number");
    assert_eq!(e1.downcast_ref::<BadNumber>().expect("outer type").key, 1);
    assert!(
        e1.downcast_ref::<std::num::ParseIntError>().is_some(),
        "reachable through source()"
    );
    assert!(e1.downcast_ref::<std::io::Error>().is_none());
    assert_eq!((parse.get(), doubled.get()), (2, 2));
    Ok(())
}

#[tokio::test]
async fn s11_errors_propagate_to_dependents() -> Result<()> {
    let (parse, doubled, or_zero) = (Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .input::<Text>()
        .query(ParseNum {
            runs: parse.clone(),
        })
        .query(Doubled {
            runs: doubled.clone(),
        })
        .query(OrZero {
            runs: or_zero.clone(),
        })
        .build()?;
    db.set::<Text>(1, "oops".into())?;
    let leaf = db.query::<ParseNum>(1).await.unwrap_err();
    let mid = db.query::<Doubled>(1).await.unwrap_err();
    assert_eq!(mid.to_string(), leaf.to_string());
    assert!(mid.downcast_ref::<BadNumber>().is_some());
    assert_eq!(
        db.query::<OrZero>(1).await?,
        (0, Some("entry 1 is not a number".to_string()))
    );
    assert_eq!((parse.get(), doubled.get(), or_zero.get()), (1, 1, 1));
    // A missing input propagates the same way.
    let missing = db.query::<Doubled>(2).await.unwrap_err();
    assert!(
        matches!(missing.kind(), ErrorKind::MissingInput { .. }),
        "{missing:?}"
    );
    assert_eq!((parse.get(), doubled.get()), (2, 2));

    // Fixing the leaf fixes every dependent, each re-run once.
    db.set::<Text>(1, "21".into())?;
    assert_eq!(db.query::<OrZero>(1).await?, (42, None));
    assert_eq!((parse.get(), doubled.get(), or_zero.get()), (3, 3, 2));
    assert_eq!(db.query::<Doubled>(1).await?, 42);
    assert_eq!((parse.get(), doubled.get(), or_zero.get()), (3, 3, 2));
    Ok(())
}

// ---------------------------------------------------------------- bad use

struct Unregistered;
impl Input for Unregistered {
    type Key = u32;
    type Value = u32;
}

struct UnregisteredQuery;
#[async_trait]
impl AsyncQuery for UnregisteredQuery {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, _cx: &QueryCx, k: u32) -> QueryResult<u32> {
        Ok(k)
    }
}

struct UnregisteredLabel;
impl Interned for UnregisteredLabel {
    type Value = String;
}

/// Reads an unregistered input from inside a query.
struct ReadsUnregistered {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for ReadsUnregistered {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.runs.hit();
        Ok(cx.input::<Unregistered>(&k)?)
    }
}

fn assert_unregistered(err: &Error, type_short: &str, call: &str) {
    let shown = err.to_string();
    assert!(
        matches!(err.kind(), ErrorKind::Unregistered { .. }),
        "{err:?}"
    );
    assert!(shown.contains(type_short), "names the type: {shown}");
    assert!(
        shown.contains(call),
        "names the builder call {call}: {shown}"
    );
}

#[tokio::test]
async fn bad_use_unregistered_kind_names_type_and_builder_call() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .query(ReadsUnregistered { runs: runs.clone() })
        .build()?;
    let r = db.revision();
    assert_unregistered(
        &db.input::<Unregistered>(&1).unwrap_err(),
        "Unregistered",
        ".input::<Unregistered>()",
    );
    assert_unregistered(
        &db.set::<Unregistered>(1, 1).unwrap_err(),
        "Unregistered",
        ".input::<Unregistered>()",
    );
    assert_unregistered(
        &db.query::<UnregisteredQuery>(1).await.unwrap_err(),
        "UnregisteredQuery",
        ".query(UnregisteredQuery)",
    );
    assert_unregistered(
        &db.intern::<UnregisteredLabel>("x".into()).unwrap_err(),
        "UnregisteredLabel",
        ".interned::<UnregisteredLabel>()",
    );
    assert!(db.inspect::<UnregisteredQuery>(&1).is_err());
    // Inside a query, too.
    assert_unregistered(
        &db.query::<ReadsUnregistered>(1).await.unwrap_err(),
        "Unregistered",
        ".input::<Unregistered>()",
    );
    assert_eq!(runs.get(), 1);

    // A batch with an unregistered kind applies nothing.
    let mut batch = db.batch();
    batch
        .set::<A>(1, 1)
        .set::<Unregistered>(1, 1)
        .set::<A>(2, 2);
    assert_unregistered(
        &batch.commit().unwrap_err(),
        "Unregistered",
        ".input::<Unregistered>()",
    );
    assert_eq!(db.revision(), r);
    assert_eq!(db.input_opt::<A>(&1)?, None);
    assert_eq!(db.input_opt::<A>(&2)?, None);
    Ok(())
}

/// Both an input and a query, to register one type as two kinds.
struct Both;
impl Input for Both {
    type Key = u32;
    type Value = u32;
}
#[async_trait]
impl AsyncQuery for Both {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, _cx: &QueryCx, k: u32) -> QueryResult<u32> {
        Ok(k)
    }
}

#[test]
fn bad_use_registering_twice_fails_build() {
    let check = |r: Result<Database>, what: &str| {
        let err = r.expect_err(what);
        assert!(
            matches!(err.kind(), ErrorKind::Registration(_)),
            "{what}: {err:?}"
        );
        assert!(
            err.to_string().contains("registered twice"),
            "{what}: {err}"
        );
    };
    check(
        Database::builder()
            .input::<A>()
            .input::<B>()
            .input::<A>()
            .build(),
        "input twice",
    );
    check(
        Database::builder()
            .query(ReadA { runs: Count::new() })
            .query(ReadA { runs: Count::new() })
            .build(),
        "query twice",
    );
    check(
        Database::builder()
            .interned::<Label>()
            .interned::<Label>()
            .build(),
        "interned twice",
    );
    check(
        Database::builder().input::<Both>().query(Both).build(),
        "input and query",
    );
    // Distinct kinds are fine.
    assert!(
        Database::builder()
            .input::<A>()
            .input::<B>()
            .interned::<Label>()
            .build()
            .is_ok()
    );
}

/// A memo cut off at one revision stays reusable at the next: its dependents
/// must not re-run it after an unrelated change, even while an older version
/// of it is still alive (held by a snapshot) and reachable from their
/// dependency edges.
#[tokio::test]
async fn s7_cut_off_memo_is_not_rerun_after_unrelated_change() -> Result<()> {
    let (d, q, top) = (Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .input::<A>()
        .input::<B>()
        .query(D7 { runs: d.clone() })
        .query(Q7 { runs: q.clone() })
        .query(Top7 { runs: top.clone() })
        .build()?;
    db.set::<A>(0, 1)?;
    assert_eq!(db.query::<Top7>(()).await?, "big: false");
    // The snapshot keeps the first versions of every memo alive.
    let old = db.snapshot();
    db.set::<A>(0, 2)?; // D7 changes, Q7 re-runs and is cut off (still false)
    assert_eq!(db.query::<Top7>(()).await?, "big: false");
    assert_eq!((d.get(), q.get(), top.get()), (2, 2, 1));
    db.set::<B>(9, 1)?; // unrelated
    assert_eq!(db.query::<Top7>(()).await?, "big: false");
    assert_eq!((d.get(), q.get(), top.get()), (2, 2, 1), "nothing re-runs");
    db.set::<B>(9, 2)?; // unrelated again
    assert_eq!(db.query::<Top7>(()).await?, "big: false");
    assert_eq!((d.get(), q.get(), top.get()), (2, 2, 1), "nothing re-runs");
    // The snapshot still answers from its own revision.
    assert_eq!(old.query::<Top7>(()).await?, "big: false");
    assert_eq!((d.get(), q.get(), top.get()), (2, 2, 1));
    Ok(())
}
