//! Bounded memory (issue 11): per-kind capacities, garbage collection and
//! the memory report. Eviction and collection trade work for memory and
//! never change a result; every test asserts counts of executions. (The
//! random-graph differential test runs with capacities 1–3 and collection
//! too: `tests/differential_snapshots.rs`.)

mod common;

use std::time::Duration;

use common::{Count, TempDir};
use picante::*;

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    common::within("the test", Duration::from_secs(30), fut).await
}

use common::churn::{File, Len};

/// Sum of `Len(0..n)`.
struct Sum(Count);
#[async_trait]
impl AsyncQuery for Sum {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<u32> {
        self.0.hit();
        let mut total = 0;
        for k in 0..n {
            total += cx.query::<Len>(k).await?;
        }
        Ok(total)
    }
}

fn build(
    len: &Count,
    sum: &Count,
    configure: impl FnOnce(DatabaseBuilder) -> DatabaseBuilder,
) -> Database {
    let b = Database::builder()
        .persistent_input::<File>()
        .persistent_query(Len(len.clone()))
        .persistent_query(Sum(sum.clone()));
    configure(b).build().expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_bounds_a_kind_and_evicted_memos_reexecute_on_demand() {
    within(async {
        let (len, sum) = (Count::new(), Count::new());
        let db = build(&len, &sum, |b| b.capacity::<Len>(4));
        for k in 0..20 {
            db.set::<File>(k, k).unwrap();
        }
        for k in 0..20 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
        }
        assert_eq!(len.take(), 20);
        let mem = db.memory();
        assert_eq!(mem.kind("Len").unwrap().entries, 4);
        assert_eq!(db.query_stats::<Len>().unwrap().evictions, 16);
        // The most recent stay (all were used at one revision: what was
        // just inserted is newest, and other ties go to the oldest key).
        assert_eq!(db.query::<Len>(19).await.unwrap(), 20);
        assert_eq!(len.take(), 0);
        // An evicted one re-executes, with the right value.
        assert_eq!(db.query::<Len>(0).await.unwrap(), 1);
        assert_eq!(len.take(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_never_changes_results_only_work() {
    within(async {
        let (len_a, sum_a) = (Count::new(), Count::new());
        let (len_b, sum_b) = (Count::new(), Count::new());
        let bounded = build(&len_a, &sum_a, |b| b.capacity::<Len>(2).capacity::<Sum>(1));
        let unbounded = build(&len_b, &sum_b, |b| b);
        for db in [&bounded, &unbounded] {
            for k in 0..10 {
                db.set::<File>(k, k).unwrap();
            }
        }
        for step in 0..30u32 {
            let k = step * 7 % 10;
            for db in [&bounded, &unbounded] {
                db.set::<File>(k, step).unwrap();
            }
            for n in [3, 10, 5] {
                assert_eq!(
                    bounded.query::<Sum>(n).await.unwrap(),
                    unbounded.query::<Sum>(n).await.unwrap(),
                    "step {step}, Sum({n})"
                );
            }
        }
        // The unbounded database ran each Len once per change of its file
        // at most; the bounded one re-ran what it had evicted.
        assert!(len_a.get() > len_b.get());
        assert!(sum_a.get() >= sum_b.get());
        assert!(bounded.memory().kind("Len").unwrap().entries <= 2);
        assert!(bounded.memory().kind("Sum").unwrap().entries <= 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_drops_unused_memos_and_old_tombstones_and_keeps_what_is_used() {
    within(async {
        let (len, sum) = (Count::new(), Count::new());
        let db = build(&len, &sum, |b| b);
        for k in 0..10 {
            db.set::<File>(k, k).unwrap();
            db.query::<Len>(k).await.unwrap();
        }
        // Pages 0..5 are deleted; the session goes on using 5..10.
        let mut batch = db.batch();
        for k in 0..5 {
            batch.remove::<File>(&k);
        }
        batch.commit().unwrap();
        for step in 0..6 {
            db.set::<File>(100, step).unwrap();
            for k in 5..10 {
                db.query::<Len>(k).await.unwrap();
            }
        }
        assert_eq!(len.take(), 10);
        let before = db.memory();
        assert_eq!(before.kind("Len").unwrap().entries, 10);
        assert_eq!(before.kind("File").unwrap().tombstones, 5);

        let report = db.collect(Collect::unused_for(3));
        assert_eq!((report.memos, report.tombstones), (5, 5));
        let after = db.memory();
        assert_eq!(after.kind("Len").unwrap().entries, 5);
        assert_eq!(after.kind("File").unwrap().tombstones, 0);
        assert!(after.total_bytes() < before.total_bytes());
        // Nothing is collected twice, and no revision was created.
        let r = db.revision();
        assert_eq!(db.collect(Collect::unused_for(3)), CollectReport::default());
        assert_eq!(db.revision(), r);

        // What was kept is a hit; what was collected re-executes, right.
        for k in 5..10 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
        }
        assert_eq!(len.take(), 0);
        assert_eq!(db.query::<Len>(0).await.unwrap(), 0);
        assert_eq!(len.take(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collected_tombstone_reads_as_absent_and_dependents_rerun_at_most_once() {
    within(async {
        let (len, sum) = (Count::new(), Count::new());
        let db = build(&len, &sum, |b| b);
        db.set::<File>(1, 5).unwrap();
        db.remove::<File>(&1).unwrap();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 0); // saw the tombstone
        assert_eq!(len.take(), 1);
        for n in 0..5 {
            db.set::<File>(2, n).unwrap();
        }
        let report = db.collect(Collect::unused_for(2));
        assert_eq!(report.tombstones, 1);
        // The memo saw the tombstone's identity; the key now reads as never
        // set: the memo re-executes once (same value), then is a hit.
        assert_eq!(db.query::<Len>(1).await.unwrap(), 0);
        assert_eq!(db.query::<Len>(1).await.unwrap(), 0);
        assert_eq!(len.take(), 1);
        // Setting the key again is seen.
        db.set::<File>(1, 7).unwrap();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 8);
        assert_eq!(len.take(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_leaves_snapshots_alone() {
    within(async {
        let (len, sum) = (Count::new(), Count::new());
        let db = build(&len, &sum, |b| b);
        for k in 0..4 {
            db.set::<File>(k, k).unwrap();
        }
        assert_eq!(db.query::<Sum>(4).await.unwrap(), 10);
        let snap = db.snapshot();
        for n in 0..5 {
            db.set::<File>(10, n).unwrap();
        }
        let report = db.collect(Collect::unused_for(1));
        assert_eq!(report.memos, 5);
        assert_eq!((len.take(), sum.take()), (4, 1));
        // The snapshot still holds its memos: hits.
        assert_eq!(snap.query::<Sum>(4).await.unwrap(), 10);
        assert_eq!((len.take(), sum.take()), (0, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_memos_are_absent_from_a_save() {
    within(async {
        let dir = TempDir::new("collect-save");
        let path = dir.join("cache.bin");
        let (len, sum) = (Count::new(), Count::new());
        let db = build(&len, &sum, |b| b);
        for k in 0..6 {
            db.set::<File>(k, k).unwrap();
            db.query::<Len>(k).await.unwrap();
        }
        for n in 0..4 {
            db.set::<File>(100, n).unwrap();
            db.query::<Len>(0).await.unwrap();
        }
        let report = db.collect(Collect::unused_for(2));
        assert_eq!(report.memos, 5);
        let saved = db.save_cache(&path).await.unwrap();
        assert_eq!(saved.memos, 1);

        let (len2, sum2) = (Count::new(), Count::new());
        let fresh = build(&len2, &sum2, |b| b);
        assert!(
            fresh
                .load_cache(&path, LoadOptions::default())
                .await
                .unwrap()
                .loaded
        );
        for k in 0..6 {
            assert_eq!(fresh.query::<Len>(k).await.unwrap(), k + 1);
        }
        assert_eq!(len2.take(), 5);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_collection_keeps_a_churning_session_bounded() {
    within(async {
        let (len, sum) = (Count::new(), Count::new());
        let db = build(&len, &sum, |b| {
            b.collect_garbage(Collect::unused_for(40).every(10))
        });
        let live = 20u32;
        let mut peak = 0;
        for k in 0..2000u32 {
            let mut batch = db.batch();
            batch.set::<File>(k, k);
            if k >= live {
                batch.remove::<File>(&(k - live));
            }
            batch.commit().unwrap();
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
            let mem = db.memory();
            peak = peak.max(mem.memos() + mem.kind("File").unwrap().tombstones);
        }
        assert_eq!(len.get(), 2000);
        // Bounded by the rule (memos and tombstones of the last 40 + 10
        // revisions), not by the 2000 keys that came and went.
        assert!(peak <= 2 * (40 + 10) + live as usize, "peak {peak}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacities_are_checked_at_build() {
    let (len, sum) = (Count::new(), Count::new());
    let zero = Database::builder()
        .query(Len(len.clone()))
        .capacity::<Len>(0)
        .build();
    assert!(
        matches!(zero.unwrap_err().kind(), ErrorKind::Registration(m) if m.contains("at least 1"))
    );
    let unregistered = Database::builder()
        .query(Len(len))
        .capacity::<Sum>(10)
        .build();
    assert!(
        matches!(unregistered.unwrap_err().kind(), ErrorKind::Registration(m) if m.contains("not registered as a query"))
    );
    drop(sum);
}
