//! Reclaimed key ids (issue 11): a churning session reuses the ids of keys
//! that garbage collection removed, and a reused id never makes a memo,
//! a snapshot, an in-flight execution or a cache file mistake one key for
//! another. Every test asserts execution counts, not only values.
//!
//! Two tests fail on a naive reuse (an id freed when its tombstone is
//! collected and handed to the next new key at once):
//! `a_snapshot_from_before_a_collection_answers_right_after_its_ids_are_reused`
//! and `an_execution_in_flight_across_a_collection_is_not_revalidated_against_a_reused_id`
//! — each has a memo whose edge names the freed id with identity "absent",
//! which a naive reuse resolves to the new, absent key and calls unchanged.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Count, TempDir};
use picante::*;
use tokio::sync::Notify;

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    common::within("the test", Duration::from_secs(60), fut).await
}

use common::churn::{File, Len};

/// `File(k) + 1` or 0, like `Len`; the first execution (while `armed`)
/// tells `entered` once it has read its input and waits for `release`.
struct Gate {
    count: Count,
    armed: Arc<AtomicBool>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}
#[async_trait]
impl AsyncQuery for Gate {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.count.hit();
        let v = cx.input_opt::<File>(&k)?.map_or(0, |v| v + 1);
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(v)
    }
}

struct Label;
impl Interned for Label {
    type Value = String;
}

fn build(len: &Count, configure: impl FnOnce(DatabaseBuilder) -> DatabaseBuilder) -> Database {
    let b = Database::builder()
        .persistent_input::<File>()
        .persistent_query(Len(len.clone()))
        .interned::<Label>();
    configure(b).build().expect("build")
}

fn keys(db: &Database, kind: &str) -> usize {
    db.memory().kind(kind).map_or(0, |k| k.keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaimed_ids_keep_a_churning_session_steady() {
    within(async {
        let len = Count::new();
        let db = build(&len, |b| {
            b.collect_garbage(Collect::unused_for(40).every(10))
        });
        let live = 20u32;
        let mut peak = (0, 0);
        for k in 0..5000u32 {
            let mut batch = db.batch();
            batch.set::<File>(k, k);
            if k >= live {
                batch.remove::<File>(&(k - live));
            }
            batch.commit().unwrap();
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
            peak = (peak.0.max(keys(&db, "File")), peak.1.max(keys(&db, "Len")));
        }
        assert_eq!(len.get(), 5000);
        // Bounded by what the rule keeps (the last 40 + 10 revisions' keys
        // and the live ones), not by the 5000 keys that came and went.
        let bound = 2 * (40 + 10) + live as usize;
        assert!(peak.0 <= bound && peak.1 <= bound, "peak keys {peak:?}");
        // The live keys still answer from their memos; a removed one reads
        // as absent, and a key that comes back is a new key.
        for k in 4990..5000 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
        }
        assert_eq!(db.query::<Len>(10).await.unwrap(), 0);
        db.set::<File>(10, 41).unwrap();
        assert_eq!(db.query::<Len>(10).await.unwrap(), 42);
        assert_eq!(len.get(), 5002);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_before_a_collection_answers_right_after_its_ids_are_reused() {
    within(async {
        let len = Count::new();
        let db = build(&len, |b| b);
        db.set::<File>(999, 0).unwrap();
        // Len(1) reads File(1) absent: its edge names File(1)'s id with the
        // identity of an absent key.
        assert_eq!(db.query::<Len>(1).await.unwrap(), 0);
        db.set::<File>(1, 10).unwrap();
        let snap = db.snapshot(); // File(1) = 10 here; Len(1) not yet revalidated
        db.remove::<File>(&1).unwrap();
        db.set::<File>(999, 1).unwrap();
        let report = db.collect(Collect::unused_for(0));
        assert_eq!(report.tombstones, 1);
        assert_eq!(len.take(), 1);
        // New keys come in: a naive reuse hands them File(1)'s id.
        for k in 2..10 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), 0);
        }
        assert_eq!(len.take(), 8);
        // The snapshot still sees File(1) = 10: Len(1) must re-execute there
        // (a naive reuse resolves the edge to an absent new key: "unchanged", 0).
        assert_eq!(snap.query::<Len>(1).await.unwrap(), 11);
        assert_eq!(len.take(), 1);
        assert_eq!(snap.query::<Len>(1).await.unwrap(), 11);
        assert_eq!(len.take(), 0);
        // The database: File(1) is gone.
        assert_eq!(db.query::<Len>(1).await.unwrap(), 0);
        assert_eq!(len.take(), 1);
        // Once the snapshot is gone, a collection frees the ids for good;
        // the next keys reuse them and everything stays right.
        drop(snap);
        db.set::<File>(999, 2).unwrap();
        db.collect(Collect::unused_for(0));
        let before = keys(&db, "File");
        for k in 20..30 {
            db.set::<File>(k, k).unwrap();
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
        }
        assert_eq!(len.take(), 10);
        assert!(keys(&db, "File") <= before + 10);
        db.set::<File>(1, 5).unwrap();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 6);
        assert_eq!(len.take(), 1);
        for k in 20..30 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
        }
        assert_eq!(len.take(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_in_flight_across_a_collection_is_not_revalidated_against_a_reused_id() {
    within(async {
        let (len, gate) = (Count::new(), Count::new());
        let armed = Arc::new(AtomicBool::new(true));
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let db = Database::builder()
            .input::<File>()
            .query(Len(len.clone()))
            .query(Gate {
                count: gate.clone(),
                armed: armed.clone(),
                entered: entered.clone(),
                release: release.clone(),
            })
            .build()
            .unwrap();
        db.set::<File>(999, 0).unwrap();
        // Gate(1) reads File(1) absent at this revision, then waits.
        let task = tokio::spawn({
            let db = db.clone();
            async move { db.query::<Gate>(1).await }
        });
        entered.notified().await;
        // Meanwhile File(1) comes and goes, its tombstone is collected, and
        // new keys come in (a naive reuse gives them File(1)'s id).
        db.set::<File>(1, 10).unwrap();
        db.remove::<File>(&1).unwrap();
        db.set::<File>(999, 1).unwrap();
        assert_eq!(db.collect(Collect::unused_for(0)).tombstones, 1);
        for k in 2..10 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), 0);
        }
        assert_eq!(len.take(), 8);
        // The execution finishes with the value of its own revision.
        release.notify_one();
        assert_eq!(task.await.unwrap().unwrap(), 0);
        assert_eq!(gate.take(), 1);
        // File(1) is set again: Gate(1)'s memo (absent File(1)) is stale.
        // A naive reuse resolves its edge to an absent new key: "unchanged", 0.
        db.set::<File>(1, 7).unwrap();
        assert_eq!(db.query::<Gate>(1).await.unwrap(), 8);
        assert_eq!(gate.take(), 1);
        // And after a collection that frees the ids for good, too.
        db.set::<File>(1, 8).unwrap();
        db.collect(Collect::unused_for(0));
        for k in 20..30 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), 0);
        }
        assert_eq!(db.query::<Gate>(1).await.unwrap(), 9);
        assert_eq!(gate.take(), 1);
        assert_eq!(db.stats().in_flight, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_executions_in_flight_across_collections_stay_right() {
    within(async {
        let len = Count::new();
        let db = build(&len, |b| b.collect_garbage(Collect::unused_for(4).every(2)));
        let mut tasks = tokio::task::JoinSet::new();
        for round in 0..200u32 {
            // Keys come and go while readers of older revisions run.
            let k = round % 50;
            if round % 3 == 0 {
                db.remove::<File>(&k).unwrap();
            } else {
                db.set::<File>(k, round).unwrap();
            }
            let snap = db.snapshot();
            tasks.spawn(async move {
                let mut got = Vec::new();
                for j in 0..50u32 {
                    let want = snap.input_opt::<File>(&j).unwrap().map_or(0, |v| v + 1);
                    got.push((snap.query::<Len>(j).await.unwrap(), want));
                }
                got
            });
        }
        while let Some(result) = tasks.join_next().await {
            for (got, want) in result.unwrap() {
                assert_eq!(got, want);
            }
        }
        for j in 0..50u32 {
            let want = db.input_opt::<File>(&j).unwrap().map_or(0, |v| v + 1);
            assert_eq!(db.query::<Len>(j).await.unwrap(), want);
        }
        assert_eq!(db.stats().in_flight, 0);
        assert!(len.get() > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_after_collection_writes_no_freed_keys_and_loads_right() {
    within(async {
        let dir = TempDir::new("reclaim-save");
        let path = dir.join("cache.bin");
        let len = Count::new();
        let db = build(&len, |b| b);
        for k in 0..10 {
            db.set::<File>(k, k).unwrap();
            db.query::<Len>(k).await.unwrap();
        }
        for k in 0..8 {
            db.remove::<File>(&k).unwrap();
        }
        for n in 0..3 {
            db.set::<File>(100, n).unwrap();
        }
        let report = db.collect(Collect::unused_for(1));
        assert_eq!(report.tombstones, 8);
        // New keys reuse the freed ids.
        for k in 200..205 {
            db.set::<File>(k, k).unwrap();
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
        }
        // Keys 8, 9, 100 and 200..205 are left.
        let saved = db.save_cache(&path).await.unwrap();
        assert_eq!((saved.inputs, saved.memos), (8, 5));

        let len2 = Count::new();
        let fresh = build(&len2, |b| b);
        assert!(
            fresh
                .load_cache(&path, LoadOptions::default())
                .await
                .unwrap()
                .loaded
        );
        assert_eq!(keys(&fresh, "File"), 8, "the file holds no freed key");
        for k in (0..10).chain(200..205) {
            let want = if k < 8 { 0 } else { k + 1 };
            assert_eq!(fresh.query::<Len>(k).await.unwrap(), want);
        }
        // The collected memos (keys 0..10) run again; the saved ones
        // (200..205) are reused.
        assert_eq!(len2.take(), 10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_across_collections_and_reused_ids_load_right() {
    within(async {
        let dir = TempDir::new("reclaim-append");
        let path = dir.join("cache.bin");
        let len = Count::new();
        let db = build(&len, |b| b);
        for k in 0..6 {
            db.set::<File>(k, k).unwrap();
            db.query::<Len>(k).await.unwrap();
        }
        db.save_cache(&path).await.unwrap();
        // 1 and 2 go, are collected (their ids retired), and come back
        // under new ids; 3 goes for good.
        for k in 1..4 {
            db.remove::<File>(&k).unwrap();
        }
        db.set::<File>(100, 0).unwrap();
        db.collect(Collect::unused_for(0));
        for k in 1..3 {
            db.set::<File>(k, 10 + k).unwrap();
            db.query::<Len>(k).await.unwrap();
        }
        // New keys take whatever ids are free.
        for k in 50..60 {
            db.set::<File>(k, k).unwrap();
        }
        db.append_cache(&path).await.unwrap();
        // 2 goes again and is collected; 1 stays.
        db.remove::<File>(&2).unwrap();
        db.set::<File>(100, 1).unwrap();
        db.collect(Collect::unused_for(0));
        for k in 60..70 {
            db.set::<File>(k, k).unwrap();
        }
        db.append_cache(&path).await.unwrap();

        let expect = |k: u32| match k {
            1 => 12,
            2 | 3 => 0,
            k => k + 1,
        };
        for k in (0..6).chain(50..70) {
            assert_eq!(db.query::<Len>(k).await.unwrap(), expect(k), "key {k}");
        }
        let len2 = Count::new();
        let fresh = build(&len2, |b| b);
        assert!(
            fresh
                .load_cache(&path, LoadOptions::default())
                .await
                .unwrap()
                .loaded
        );
        assert_eq!(fresh.input_opt::<File>(&1).unwrap(), Some(11));
        assert_eq!(fresh.input_opt::<File>(&2).unwrap(), None);
        assert_eq!(fresh.input_opt::<File>(&3).unwrap(), None);
        for k in (0..6).chain(50..70) {
            assert_eq!(fresh.query::<Len>(k).await.unwrap(), expect(k), "key {k}");
        }
        // Memos that were saved and are still valid are reused: 0, 4, 5 and 1.
        assert_eq!(len2.take(), 2 + 20);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interned_ids_are_never_reclaimed() {
    within(async {
        let len = Count::new();
        let db = build(&len, |b| b.collect_garbage(Collect::unused_for(2).every(1)));
        let a = db.intern::<Label>("a".to_string()).unwrap();
        for k in 0..100 {
            db.set::<File>(k, k).unwrap();
            db.remove::<File>(&k).unwrap();
            let _ = db.intern::<Label>(format!("v{k}")).unwrap();
        }
        assert_eq!(db.lookup::<Label>(a).unwrap(), "a");
        assert_eq!(db.intern::<Label>("a".to_string()).unwrap(), a);
        assert_eq!(keys(&db, "Label"), 101);
    })
    .await;
}
