//! Collections while a cache loads (a leftover of issue 11): the load gives
//! its keys ids before it installs the tables that hold them, so a
//! collection of the database in between saw those ids held by nothing.
//! Two collections (the first spares a new id once) used to retire them,
//! and release them once their epoch ended: the loaded input slots and
//! memos then named ids that no longer exist, every edge to such an input
//! read as changed, and its dependents re-executed at every new revision
//! until the input was written (never a wrong value, always work). The
//! collections are run from the load's own progress callback, at its
//! first `Installing` report: after the keys got their ids, before the
//! tables are installed. Counts of executions are asserted, not only
//! values.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::churn::{File, Len};
use common::{Count, TempDir};
use picante::*;

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    common::within("the load", Duration::from_secs(20), fut).await
}

/// A database whose load runs `collections` explicit collections of
/// itself from its progress callback, at the first `Installing` report
/// (`ran` counts the ones that ran).
fn db_collecting(len: &Count, collections: usize, ran: &Arc<AtomicUsize>) -> Database {
    let handle: Arc<OnceLock<Database>> = Arc::new(OnceLock::new());
    let (inside, ran) = (handle.clone(), ran.clone());
    let once = AtomicBool::new(false);
    let db = Database::builder()
        .persistent_input::<File>()
        .persistent_query(Len(len.clone()))
        .cache_progress(move |p| {
            if p.operation == CacheOperation::Load
                && p.step == CacheStep::Installing
                && !once.swap(true, Ordering::SeqCst)
                && let Some(db) = inside.get()
            {
                for _ in 0..collections {
                    db.collect(Collect::unused_for(0));
                    ran.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .build()
        .expect("build");
    assert!(handle.set(db.clone()).is_ok());
    db
}

fn plain_db(len: &Count) -> Database {
    Database::builder()
        .persistent_input::<File>()
        .persistent_query(Len(len.clone()))
        .build()
        .expect("build")
}

/// Saves `File(1) = 10, File(2) = 20` and `Len(1)`, `Len(2)` computed.
async fn save(path: &std::path::Path) {
    let len = Count::new();
    let db = plain_db(&len);
    db.set::<File>(1, 10).unwrap();
    db.set::<File>(2, 20).unwrap();
    assert_eq!(db.query::<Len>(1).await.unwrap(), 11);
    assert_eq!(db.query::<Len>(2).await.unwrap(), 21);
    assert_eq!(len.take(), 2);
    db.save_cache(path).await.unwrap();
}

/// After the load: `Len(1)` is read three times, each at a new revision
/// made by an unrelated write (`File(2)`): its memo revalidates against
/// `File(1)`, which did not change. Returns the executions of `Len` at
/// each read.
async fn reads_after_load(db: &Database, len: &Count) -> [usize; 3] {
    let mut runs = [0; 3];
    for (i, runs) in runs.iter_mut().enumerate() {
        db.set::<File>(2, 30 + i as u32).unwrap();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 11);
        *runs = len.take();
    }
    assert_eq!(db.input::<File>(&1).unwrap(), 10);
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collections_during_a_load_leave_no_loaded_key_under_a_retired_id() {
    within(async {
        let dir = TempDir::new("load-collect");
        let path = dir.join("cache.bin");
        save(&path).await;

        let len = Count::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let db = db_collecting(&len, 2, &ran);
        let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
        assert!(report.loaded && report.verified, "{report:?}");
        assert_eq!(report.memos, 2);
        assert_eq!(ran.load(Ordering::SeqCst), 2, "the collections ran");
        // A collection after the load changes nothing either.
        db.collect(Collect::unused_for(0));
        let runs = reads_after_load(&db, &len).await;
        assert!(
            runs[0] + runs[1] <= 1 && runs[2] == 0,
            "Len(1) executions per read after the load: {runs:?}"
        );
        // The values and the cache stay right after a write of the input.
        db.set::<File>(1, 40).unwrap();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 41);
        assert_eq!(len.take(), 1);
        db.set::<File>(2, 50).unwrap();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 41);
        assert_eq!(db.query::<Len>(2).await.unwrap(), 51);
        assert_eq!(len.take(), 1, "only Len(2) re-executes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_collections_a_load_reuses_everything() {
    // The baseline the test above compares with: the same reads execute
    // nothing.
    within(async {
        let dir = TempDir::new("load-collect-none");
        let path = dir.join("cache.bin");
        save(&path).await;
        let len = Count::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let db = db_collecting(&len, 0, &ran);
        let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
        assert!(report.loaded && report.verified, "{report:?}");
        assert_eq!(reads_after_load(&db, &len).await, [0, 0, 0]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_during_a_load_still_reclaim_afterwards() {
    // Holding retirement off during the load does not keep ids forever: a
    // key the loaded database drops is reclaimed by later collections.
    within(async {
        let dir = TempDir::new("load-collect-reclaim");
        let path = dir.join("cache.bin");
        save(&path).await;
        let len = Count::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let db = db_collecting(&len, 2, &ran);
        db.load_cache(&path, LoadOptions::default()).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        let keys = |db: &Database| {
            db.memory()
                .kinds
                .iter()
                .find(|k| k.name.ends_with("File"))
                .map(|k| k.keys)
                .expect("File in the report")
        };
        let before = keys(&db);
        for k in 100..110 {
            db.set::<File>(k, k).unwrap();
            db.remove::<File>(&k).unwrap();
        }
        for n in 0..10 {
            db.set::<File>(2, n).unwrap();
        }
        for _ in 0..3 {
            db.collect(Collect::unused_for(2));
        }
        assert_eq!(keys(&db), before, "the removed keys' ids were reclaimed");
        // Len(1)'s memo went unused for 10 revisions: collected, it runs
        // once more, and then stays valid across unrelated writes.
        assert_eq!(db.query::<Len>(1).await.unwrap(), 11);
        assert!(len.take() <= 1);
        for n in 0..3 {
            db.set::<File>(2, 100 + n).unwrap();
            assert_eq!(db.query::<Len>(1).await.unwrap(), 11);
        }
        assert_eq!(len.take(), 0, "Len(1) revalidates against a live id");
    })
    .await;
}
