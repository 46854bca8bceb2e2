//! S17 / S18b: loaded memos served without revalidation — and only when the
//! whole load vouches for them. A cache whose memos were all verified at the
//! saved revision, and hold everything they read, is served at that revision
//! as hits (no dependency walk); a changed input after the load still
//! re-executes exactly its dependents; a bumped query `VERSION`, or a log
//! that moved the revision past some memos, falls back to revalidating every
//! loaded memo, with exact counts.

mod common;

use common::{Count, TempDir};
use picante::*;

struct Src;
impl Input for Src {
    type Key = u32;
    type Value = u64;
}

/// `Src(k)` times a factor that depends on the code version `V`.
struct ScaleAt<const V: u32>(Count);
#[async_trait]
impl<const V: u32> AsyncQuery for ScaleAt<V> {
    type Key = u32;
    type Value = u64;
    const VERSION: u32 = V;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.input::<Src>(&k)? * (10 + u64::from(V)))
    }
}

/// The sum of `ScaleAt<V>` over `0..N` (its own code never changes).
struct TotalAt<const V: u32>(Count);
#[async_trait]
impl<const V: u32> AsyncQuery for TotalAt<V> {
    type Key = ();
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u64> {
        self.0.hit();
        let mut sum = 0;
        for k in 0..N {
            sum += cx.query::<ScaleAt<V>>(k).await?;
        }
        Ok(sum)
    }
}

const N: u32 = 50;

#[derive(Clone, Default)]
struct Counts {
    scale: Count,
    total: Count,
}

fn build<const V: u32>(c: &Counts) -> Database {
    Database::builder()
        .code_version("test")
        .persistent_input::<Src>()
        .persistent_query_as(ScaleAt::<V>(c.scale.clone()), "scale")
        .persistent_query_as(TotalAt::<V>(c.total.clone()), "total")
        .build()
        .unwrap()
}

/// Reads every memo; returns the total.
async fn read_all<const V: u32>(db: &Database) -> u64 {
    for k in 0..N {
        db.query::<ScaleAt<V>>(k).await.unwrap();
    }
    db.query::<TotalAt<V>>(()).await.unwrap()
}

fn expected(factor: u64, changed: Option<(u32, u64)>) -> u64 {
    (0..N)
        .map(|k| match changed {
            Some((ck, v)) if ck == k => v * factor,
            _ => u64::from(k) * factor,
        })
        .sum()
}

/// A database at version `V` with `Src(k) = k`, every memo computed, saved.
async fn saved<const V: u32>(path: &std::path::Path) {
    let c = Counts::default();
    let db = build::<V>(&c);
    let mut batch = db.batch();
    for k in 0..N {
        batch.set::<Src>(k, u64::from(k));
    }
    batch.commit().unwrap();
    assert_eq!(read_all::<V>(&db).await, expected(10 + u64::from(V), None));
    db.save_cache(path).await.unwrap();
}

fn revalidations(db: &Database, name: &str) -> u64 {
    db.stats().query(name).unwrap().revalidations
}

#[tokio::test]
async fn s17_memos_verified_at_the_saved_revision_are_hits_after_a_load() {
    let dir = TempDir::new("persist-verified");
    let path = dir.join("cache");
    saved::<0>(&path).await;

    let c = Counts::default();
    let db = build::<0>(&c);
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded && report.verified, "{report:?}");
    assert_eq!(report.memos, N as usize + 1);
    assert_eq!(read_all::<0>(&db).await, expected(10, None));
    // Every read was a hit: nothing ran, nothing walked its dependencies.
    assert_eq!((c.scale.take(), c.total.take()), (0, 0));
    assert_eq!(revalidations(&db, "ScaleAt<0>"), 0);
    assert_eq!(revalidations(&db, "TotalAt<0>"), 0);
    assert_eq!(db.stats().query("ScaleAt<0>").unwrap().hits, u64::from(N));
    assert_eq!(db.stats().query("TotalAt<0>").unwrap().hits, 1);

    // A changed input after the load re-executes exactly its dependents.
    db.set::<Src>(7, 1000).unwrap();
    assert_eq!(read_all::<0>(&db).await, expected(10, Some((7, 1000))));
    assert_eq!((c.scale.take(), c.total.take()), (1, 1));
    assert_eq!(revalidations(&db, "ScaleAt<0>"), u64::from(N) - 1);
}

#[tokio::test]
async fn s18b_a_bumped_version_after_a_load_revalidates_every_dependent() {
    let dir = TempDir::new("persist-verified-version");
    let path = dir.join("cache");
    saved::<0>(&path).await;

    // The next build changed ScaleAt's code (factor 11) and bumped VERSION.
    let c = Counts::default();
    let db = build::<1>(&c);
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded && !report.verified, "{report:?}");
    assert_eq!(report.stale_kinds.len(), 1, "{report:?}");
    // Serving the loaded total would be the old code's 10 × Σk.
    assert_eq!(read_all::<1>(&db).await, expected(11, None));
    assert_eq!((c.scale.take(), c.total.take()), (N as usize, 1));
}

#[tokio::test]
async fn s17_a_log_past_some_memos_revalidates_every_loaded_memo() {
    let dir = TempDir::new("persist-verified-log");
    let path = dir.join("cache");
    saved::<0>(&path).await;

    // Load, change one input, recompute only the total, append: the log is
    // at a later revision than the untouched memos of the base.
    let c = Counts::default();
    let db = build::<0>(&c);
    assert!(
        db.load_cache(&path, LoadOptions::default())
            .await
            .unwrap()
            .verified
    );
    db.set::<Src>(3, 500).unwrap();
    assert_eq!(
        db.query::<TotalAt<0>>(()).await.unwrap(),
        expected(10, Some((3, 500)))
    );
    assert_eq!((c.scale.take(), c.total.take()), (1, 1));
    db.append_cache(&path).await.unwrap();
    drop(db);

    let c = Counts::default();
    let db = build::<0>(&c);
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded && !report.verified, "{report:?}");
    assert_eq!(
        read_all::<0>(&db).await,
        expected(10, Some((3, 500))),
        "{report:?}"
    );
    // Nothing re-ran: the memos revalidated against the loaded inputs.
    assert_eq!((c.scale.take(), c.total.take()), (0, 0));
    assert!(revalidations(&db, "ScaleAt<0>") >= u64::from(N) - 1);
}
