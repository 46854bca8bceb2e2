//! Untracked reads (issue 11): a body that reads the outside world behind the
//! engine's back says so with `cx.report_untracked_read()`; its memo is then
//! valid at its own revision only, early cutoff still spares dependents, and
//! it is never persisted. Counts of executions are asserted throughout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Count, TempDir};
use picante::*;

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    common::within("the test", Duration::from_secs(20), fut).await
}

/// A tracked input, persistent.
struct Src;
impl Input for Src {
    type Key = u32;
    type Value = u32;
}

/// "The outside world": a value the engine cannot see.
#[derive(Clone, Default)]
struct World(Arc<AtomicU32>);

/// Reads the world, untracked.
struct Outside(Count, World);
#[async_trait]
impl AsyncQuery for Outside {
    type Key = ();
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> {
        self.0.hit();
        cx.report_untracked_read()?;
        Ok(self.1.0.load(Ordering::SeqCst))
    }
}

/// Depends on `Outside` and on `Src(0)`.
struct Above(Count);
#[async_trait]
impl AsyncQuery for Above {
    type Key = ();
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> {
        self.0.hit();
        Ok(cx.query::<Outside>(()).await? + cx.input_opt::<Src>(&0)?.unwrap_or(0))
    }
}

/// Tracked only.
struct Tracked(Count);
#[async_trait]
impl AsyncQuery for Tracked {
    type Key = ();
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> {
        self.0.hit();
        Ok(cx.input_opt::<Src>(&0)?.unwrap_or(0) * 2)
    }
}

struct Counts {
    outside: Count,
    above: Count,
    tracked: Count,
    world: World,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            outside: Count::new(),
            above: Count::new(),
            tracked: Count::new(),
            world: World::default(),
        }
    }
    fn take(&self) -> (usize, usize, usize) {
        (self.outside.take(), self.above.take(), self.tracked.take())
    }
}

fn build(c: &Counts) -> Database {
    Database::builder()
        .persistent_input::<Src>()
        .persistent_query(Outside(c.outside.clone(), c.world.clone()))
        .persistent_query(Above(c.above.clone()))
        .persistent_query(Tracked(c.tracked.clone()))
        .build()
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_memo_is_a_hit_at_its_revision_and_reexecutes_at_every_new_one() {
    within(async {
        let c = Counts::new();
        let db = build(&c);
        c.world.0.store(5, Ordering::SeqCst);
        assert_eq!(db.query::<Above>(()).await.unwrap(), 5);
        assert_eq!(db.query::<Above>(()).await.unwrap(), 5);
        assert_eq!(db.snapshot().query::<Above>(()).await.unwrap(), 5);
        assert_eq!(c.take(), (1, 1, 0));

        // A revision that changes nothing the queries read: the untracked
        // body re-runs, finds the same value, and `Above` is cut off.
        db.set::<Src>(99, 1).unwrap();
        assert_eq!(db.query::<Above>(()).await.unwrap(), 5);
        assert_eq!(c.take(), (1, 0, 0));
        let info = db.inspect::<Outside>(&()).unwrap().expect("memo");
        assert_eq!(info.reason, ExecutionReason::UntrackedRead);

        // The world changes, but nobody knows until a new revision.
        c.world.0.store(7, Ordering::SeqCst);
        assert_eq!(db.query::<Above>(()).await.unwrap(), 5);
        assert_eq!(c.take(), (0, 0, 0));
        db.set::<Src>(99, 2).unwrap();
        assert_eq!(db.query::<Above>(()).await.unwrap(), 7);
        assert_eq!(c.take(), (1, 1, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_reads_survive_high_durability_and_tracked_memos_are_unaffected() {
    struct Stable;
    impl Input for Stable {
        type Key = ();
        type Value = u32;
        const DURABILITY: Durability = Durability::High;
    }
    struct Mixed(Count, World);
    #[async_trait]
    impl AsyncQuery for Mixed {
        type Key = ();
        type Value = u32;
        async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> {
            self.0.hit();
            let stable = cx.input::<Stable>(&())?;
            cx.report_untracked_read()?;
            Ok(stable + self.1.0.load(Ordering::SeqCst))
        }
    }
    within(async {
        let c = Counts::new();
        let mixed = Count::new();
        let db = Database::builder()
            .input::<Src>()
            .input::<Stable>()
            .query(Mixed(mixed.clone(), c.world.clone()))
            .query(Tracked(c.tracked.clone()))
            .build()
            .unwrap();
        db.set::<Stable>((), 10).unwrap();
        assert_eq!(db.query::<Mixed>(()).await.unwrap(), 10);
        assert_eq!(db.query::<Tracked>(()).await.unwrap(), 0);
        assert_eq!((mixed.take(), c.tracked.take()), (1, 1));
        // Only a low-durability input changes: the memo read only a
        // high-durability input, but its untracked read makes it low.
        c.world.0.store(1, Ordering::SeqCst);
        db.set::<Src>(5, 1).unwrap();
        assert_eq!(db.query::<Mixed>(()).await.unwrap(), 11);
        assert_eq!(db.query::<Tracked>(()).await.unwrap(), 0);
        assert_eq!((mixed.take(), c.tracked.take()), (1, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_memos_are_never_persisted() {
    within(async {
        let dir = TempDir::new("untracked");
        let path = dir.join("cache.bin");
        let c = Counts::new();
        let db = build(&c);
        db.set::<Src>(0, 3).unwrap();
        c.world.0.store(5, Ordering::SeqCst);
        assert_eq!(db.query::<Above>(()).await.unwrap(), 8);
        assert_eq!(db.query::<Tracked>(()).await.unwrap(), 6);
        assert_eq!(c.take(), (1, 1, 1));
        let saved = db.save_cache(&path).await.unwrap();
        // `Tracked` and `Above`, not `Outside` (it read the world). `Above`
        // is kept: its edge to the missing `Outside` memo makes it verify
        // against a fresh execution after a load.
        assert_eq!(saved.memos, 2);

        // Next run: the world changed while the program was not running.
        let c2 = Counts::new();
        c2.world.0.store(9, Ordering::SeqCst);
        let fresh = build(&c2);
        let report = fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert!(report.loaded);
        assert_eq!(fresh.query::<Tracked>(()).await.unwrap(), 6);
        assert_eq!(fresh.query::<Above>(()).await.unwrap(), 12);
        assert_eq!(c2.take(), (1, 1, 0));
    })
    .await;
}
