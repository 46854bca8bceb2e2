//! Progress of long cache operations (issue 10 item 4):
//! `DatabaseBuilder::cache_progress` is called through each step of a save,
//! a load and an append, with figures that add up, exactly once with
//! `CacheStep::Done` at the end; a panicking callback changes nothing.

mod common;

use std::sync::{Arc, Mutex};

use common::{Count, TempDir};
use picante::*;

struct Seed;
impl Input for Seed {
    type Key = u32;
    type Value = u64;
}

struct Item(Count);
#[async_trait]
impl AsyncQuery for Item {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.input::<Seed>(&0)? + u64::from(k))
    }
}

type Seen = Arc<Mutex<Vec<CacheProgress>>>;

fn db(runs: &Count, seen: &Seen) -> Database {
    let seen = seen.clone();
    Database::builder()
        .persistent_input::<Seed>()
        .persistent_query(Item(runs.clone()))
        .cache_progress(move |p| seen.lock().unwrap().push(p.clone()))
        .build()
        .unwrap()
}

/// The reports of one operation: their steps in order (each step once, in
/// a run), each step's `done` never decreasing, one `Done`, last.
fn steps(reports: &[CacheProgress], operation: CacheOperation) -> Vec<CacheStep> {
    assert!(!reports.is_empty());
    assert!(
        reports.iter().all(|p| p.operation == operation),
        "{reports:?}"
    );
    let dones = reports.iter().filter(|p| p.step == CacheStep::Done).count();
    assert_eq!(dones, 1, "{reports:?}");
    assert_eq!(reports.last().map(|p| p.step), Some(CacheStep::Done));
    let mut order: Vec<CacheStep> = Vec::new();
    for w in reports.windows(2) {
        assert!(w[1].elapsed >= w[0].elapsed);
        if w[0].step == w[1].step && w[0].total == w[1].total {
            assert!(w[1].done >= w[0].done, "{:?} then {:?}", w[0], w[1]);
        }
    }
    for p in reports {
        if order.last() != Some(&p.step) {
            order.push(p.step);
        }
    }
    order
}

fn last_of(reports: &[CacheProgress], step: CacheStep) -> &CacheProgress {
    reports.iter().rev().find(|p| p.step == step).unwrap()
}

#[tokio::test]
async fn s18c_cache_progress_reports_every_step_of_save_load_and_append() {
    let dir = TempDir::new("cache-progress");
    let path = dir.join("cache");
    let runs = Count::new();
    let seen: Seen = Arc::default();

    let a = db(&runs, &seen);
    a.set::<Seed>(0, 1).unwrap();
    for k in 0..20_000 {
        a.query::<Item>(k).await.unwrap();
    }
    let saved = a.save_cache(&path).await.unwrap();
    let save = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        steps(&save, CacheOperation::Save),
        [
            CacheStep::Encoding,
            CacheStep::Writing,
            CacheStep::Syncing,
            CacheStep::Done
        ]
    );
    let written = last_of(&save, CacheStep::Writing);
    assert_eq!((written.done, written.total), (saved.bytes, saved.bytes));

    let b = db(&runs, &seen);
    runs.take();
    let loaded = b.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(loaded.loaded);
    let load = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        steps(&load, CacheOperation::Load),
        [
            CacheStep::Reading,
            CacheStep::Decoding,
            CacheStep::Installing,
            CacheStep::Done
        ]
    );
    let read = last_of(&load, CacheStep::Reading);
    assert_eq!((read.done, read.total), (loaded.bytes, loaded.bytes));
    let installed = last_of(&load, CacheStep::Installing);
    assert_eq!(
        (installed.done, installed.total),
        (loaded.memos as u64, 20_000)
    );

    b.set::<Seed>(0, 2).unwrap();
    b.query::<Item>(7).await.unwrap();
    b.append_cache(&path).await.unwrap();
    let append = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        steps(&append, CacheOperation::Append),
        [CacheStep::Writing, CacheStep::Syncing, CacheStep::Done]
    );
    assert_eq!(runs.take(), 1);
}

#[tokio::test]
async fn s18c_a_panicking_progress_callback_changes_nothing() {
    let dir = TempDir::new("cache-progress-panic");
    let path = dir.join("cache");
    let runs = Count::new();
    let build = |runs: &Count| {
        Database::builder()
            .persistent_input::<Seed>()
            .persistent_query(Item(runs.clone()))
            .cache_progress(|_| panic!("progress callback"))
            .build()
            .unwrap()
    };
    let a = build(&runs);
    a.set::<Seed>(0, 1).unwrap();
    for k in 0..100 {
        a.query::<Item>(k).await.unwrap();
    }
    let saved = a.save_cache(&path).await.unwrap();
    assert_eq!(saved.memos, 100);
    let b = build(&runs);
    runs.take();
    let loaded = b.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(loaded.loaded);
    assert_eq!(loaded.memos, 100);
    for k in 0..100 {
        assert_eq!(b.query::<Item>(k).await.unwrap(), 1 + u64::from(k));
    }
    assert_eq!(runs.take(), 0);
}
