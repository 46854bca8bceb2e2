//! S12 within one task: a query that needs itself at the same revision gets
//! a cycle error naming the whole path, memoized at that revision, never a
//! hang. Every test runs under a timeout so that a deadlock fails the test.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{Count, cycle_path};
use picante::*;

/// Fails the test instead of hanging.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    common::within("a cycle to fail", Duration::from_secs(10), f).await
}

/// Whether the cycle is closed on a toggle.
struct Toggle;
impl Input for Toggle {
    type Key = u32;
    type Value = bool;
}

/// Needs itself.
struct SelfCycle {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for SelfCycle {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.runs.hit();
        Ok(cx.query::<SelfCycle>(k).await? + 1)
    }
}

/// `B(k) + 1`.
struct A {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for A {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.runs.hit();
        Ok(cx.query::<B>(k).await? + 1)
    }
}

/// `A(k)` when `Toggle(k)` is true (a cycle), else 0.
struct B {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for B {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.runs.hit();
        if cx.input::<Toggle>(&k)? {
            Ok(cx.query::<A>(k).await? * 10)
        } else {
            Ok(0)
        }
    }
}

fn ab_db(a: &Count, b: &Count) -> Result<Database> {
    Database::builder()
        .input::<Toggle>()
        .query(A { runs: a.clone() })
        .query(B { runs: b.clone() })
        .build()
}

#[tokio::test]
async fn s12_self_cycle_reports_path() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .query(SelfCycle { runs: runs.clone() })
        .build()?;
    let err = bounded(db.query::<SelfCycle>(7)).await.unwrap_err();
    assert!(err.is_cycle(), "{err:?}");
    assert_eq!(cycle_path(&err), ["SelfCycle(7)", "SelfCycle(7)"]);
    assert!(
        err.to_string().contains("SelfCycle(7) → SelfCycle(7)"),
        "{err}"
    );
    assert_eq!(runs.get(), 1);

    // Memoized at this revision: the body does not run again.
    let again = bounded(db.query::<SelfCycle>(7)).await.unwrap_err();
    assert!(again.is_cycle());
    assert_eq!(runs.get(), 1);
    assert!(db.inspect::<SelfCycle>(&7)?.expect("memo").is_error);
    assert_eq!(db.stats().in_flight, 0, "no leaked in-flight entry");
    Ok(())
}

#[tokio::test]
async fn s12_two_query_cycle_reports_path() -> Result<()> {
    let (a, b) = (Count::new(), Count::new());
    let db = ab_db(&a, &b)?;
    db.set::<Toggle>(1, true)?;

    let err = bounded(db.query::<A>(1)).await.unwrap_err();
    assert!(err.is_cycle(), "{err:?}");
    assert_eq!(cycle_path(&err), ["A(1)", "B(1)", "A(1)"]);
    let shown = err.to_string();
    assert!(shown.contains("A(1) → B(1) → A(1)"), "{shown}");
    assert_eq!((a.get(), b.get()), (1, 1));

    // Memoized at this revision, for both members of the cycle.
    assert!(bounded(db.query::<A>(1)).await.unwrap_err().is_cycle());
    assert!(bounded(db.query::<B>(1)).await.unwrap_err().is_cycle());
    assert_eq!((a.get(), b.get()), (1, 1));
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test]
async fn s12_cycle_entered_from_the_other_member() -> Result<()> {
    let (a, b) = (Count::new(), Count::new());
    let db = ab_db(&a, &b)?;
    db.set::<Toggle>(2, true)?;
    let err = bounded(db.query::<B>(2)).await.unwrap_err();
    assert_eq!(cycle_path(&err), ["B(2)", "A(2)", "B(2)"]);
    assert!(bounded(db.query::<A>(2)).await.unwrap_err().is_cycle());
    assert_eq!((a.get(), b.get()), (1, 1));
    Ok(())
}

/// `Ring(k)` needs `Ring((k + 1) % 3)`: a cycle through three keys.
struct Ring {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Ring {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.runs.hit();
        Ok(cx.query::<Ring>((k + 1) % 3).await? + 1)
    }
}

#[tokio::test]
async fn s12_cycle_through_several_keys_names_each() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .query(Ring { runs: runs.clone() })
        .build()?;
    let err = bounded(db.query::<Ring>(0)).await.unwrap_err();
    assert_eq!(
        cycle_path(&err),
        ["Ring(0)", "Ring(1)", "Ring(2)", "Ring(0)"]
    );
    assert!(
        err.to_string()
            .contains("Ring(0) → Ring(1) → Ring(2) → Ring(0)"),
        "{err}"
    );
    assert_eq!(runs.get(), 3);
    for k in 0..3 {
        assert!(bounded(db.query::<Ring>(k)).await.unwrap_err().is_cycle());
    }
    assert_eq!(runs.get(), 3);
    Ok(())
}

/// A leaf that yields a few times, so that `join!` siblings overlap.
struct SlowLeaf {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for SlowLeaf {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, _cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.runs.hit();
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        Ok(k * 2)
    }
}

/// `join!` of two requests for the same key, and (for odd keys) a branch
/// that cycles back to this query.
struct Joiner {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Joiner {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.runs.hit();
        let (x, y, z) = tokio::join!(cx.query::<SlowLeaf>(k), cx.query::<SlowLeaf>(k), async {
            if k % 2 == 1 {
                cx.query::<Joiner>(k).await
            } else {
                Ok(0)
            }
        });
        Ok(x? + y? + z?)
    }
}

#[tokio::test]
async fn s12_join_siblings_on_same_key_are_not_a_cycle() -> Result<()> {
    let (leaf, joiner) = (Count::new(), Count::new());
    let db = Database::builder()
        .query(SlowLeaf { runs: leaf.clone() })
        .query(Joiner {
            runs: joiner.clone(),
        })
        .build()?;
    assert_eq!(bounded(db.query::<Joiner>(4)).await?, 16);
    assert_eq!(
        (leaf.get(), joiner.get()),
        (1, 1),
        "siblings share one execution"
    );

    // A real cycle in one branch of a join! is still reported.
    let err = bounded(db.query::<Joiner>(3)).await.unwrap_err();
    assert_eq!(cycle_path(&err), ["Joiner(3)", "Joiner(3)"]);
    assert_eq!((leaf.get(), joiner.get()), (2, 2));
    assert!(bounded(db.query::<Joiner>(3)).await.unwrap_err().is_cycle());
    assert_eq!((leaf.get(), joiner.get()), (2, 2));
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test]
async fn s12_cycle_that_goes_away_recomputes() -> Result<()> {
    let (a, b) = (Count::new(), Count::new());
    let db = ab_db(&a, &b)?;
    db.set::<Toggle>(1, true)?;
    assert!(bounded(db.query::<A>(1)).await.unwrap_err().is_cycle());
    assert_eq!((a.get(), b.get()), (1, 1));

    // Open the cycle: both recompute once, correctly.
    db.set::<Toggle>(1, false)?;
    assert_eq!(bounded(db.query::<A>(1)).await?, 1);
    assert_eq!(bounded(db.query::<B>(1)).await?, 0);
    assert_eq!((a.get(), b.get()), (2, 2));
    assert!(!db.inspect::<A>(&1)?.expect("memo").is_error);

    // An unrelated change: revalidated, not re-run.
    db.set::<Toggle>(9, true)?;
    assert_eq!(bounded(db.query::<A>(1)).await?, 1);
    assert_eq!((a.get(), b.get()), (2, 2));

    // Close it again: a cycle again, no hang.
    db.set::<Toggle>(1, true)?;
    let err = bounded(db.query::<A>(1)).await.unwrap_err();
    assert_eq!(cycle_path(&err), ["A(1)", "B(1)", "A(1)"]);
    assert_eq!((a.get(), b.get()), (3, 3));
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test]
async fn s12_cycle_memo_revalidated_at_later_revision_no_hang() -> Result<()> {
    let (a, b) = (Count::new(), Count::new());
    let db = ab_db(&a, &b)?;
    db.set::<Toggle>(1, true)?;
    assert!(bounded(db.query::<A>(1)).await.unwrap_err().is_cycle());
    assert_eq!((a.get(), b.get()), (1, 1));

    // An unrelated change: the old dependencies contain the cycle itself.
    // Whatever revalidation does, it must answer (still a cycle) and not hang,
    // re-running each body at most once for this revision.
    db.set::<Toggle>(2, false)?;
    let err = bounded(db.query::<A>(1)).await.unwrap_err();
    assert!(err.is_cycle(), "{err:?}");
    assert!(bounded(db.query::<B>(1)).await.unwrap_err().is_cycle());
    assert!(a.get() <= 2 && b.get() <= 2, "{} / {}", a.get(), b.get());
    let (a_now, b_now) = (a.get(), b.get());
    assert!(bounded(db.query::<A>(1)).await.unwrap_err().is_cycle());
    assert_eq!(
        (a.get(), b.get()),
        (a_now, b_now),
        "memoized at this revision"
    );
    assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_cycle_in_spawned_execution_does_not_hang() -> Result<()> {
    let (a, b) = (Count::new(), Count::new());
    let db = ab_db(&a, &b)?;
    db.set::<Toggle>(5, true)?;
    let db2 = db.clone();
    let err = bounded(tokio::spawn(async move { db2.query::<B>(5).await }))
        .await
        .expect("task")
        .unwrap_err();
    assert_eq!(cycle_path(&err), ["B(5)", "A(5)", "B(5)"]);
    assert_eq!((a.get(), b.get()), (1, 1));
    Ok(())
}

#[tokio::test]
async fn s12_cycle_path_steps_carry_kind_and_key_apart() -> Result<()> {
    let (a, b) = (Count::new(), Count::new());
    let db = ab_db(&a, &b)?;
    db.set::<Toggle>(7, true)?;
    let err = bounded(db.query::<A>(7)).await.unwrap_err();
    let ErrorKind::Cycle { path } = err.kind() else {
        panic!("expected a cycle, got {err:?}");
    };
    let parts: Vec<(&str, &str)> = path
        .iter()
        .map(|step| (step.kind.as_str(), step.key.as_str()))
        .collect();
    assert_eq!(parts, [("A", "7"), ("B", "7"), ("A", "7")]);
    assert_eq!(path[0], QueryRef::new("A", "7"));
    assert_eq!(path[1], "B(7)", "a step equals its rendering");
    assert_eq!(err.to_string(), "cycle detected: A(7) → B(7) → A(7)");
    assert_eq!((a.get(), b.get()), (1, 1));
    Ok(())
}
