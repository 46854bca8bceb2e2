//! Adversarial probes of issue 11 (watch and events, untracked reads,
//! bounded memory): eviction and collection racing queries and snapshots,
//! collection combined with persistence, untracked reads combined with
//! eviction, snapshots and persistence, user code that panics while the
//! engine evicts, watchers that are dropped or abort. Each test asserts
//! counts of executions, not only values.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{Count, TempDir};
use picante::*;

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    common::within("the probe", Duration::from_secs(20), fut).await
}

// ---------------------------------------------------------------------------
// Shared fixtures.

/// A tracked input (persistent where the test needs it).
struct File;
impl Input for File {
    type Key = u32;
    type Value = u32;
}

/// `File(k) + 1`, or 0 if absent.
struct Len(Count);
#[async_trait]
impl AsyncQuery for Len {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> Result<u32> {
        self.0.hit();
        Ok(cx.input_opt::<File>(&k)?.map_or(0, |v| v + 1))
    }
}

// ---------------------------------------------------------------------------
// Collection + persistence: a collected tombstone must not resurrect the
// value the base file holds when the change is appended.

fn persistent_len_db(len: &Count) -> Database {
    Database::builder()
        .persistent_input::<File>()
        .persistent_query(Len(len.clone()))
        .build()
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_after_a_tombstone_is_collected_still_records_the_removal() {
    within(async {
        let dir = TempDir::new("attack-tombstone-append");
        let path = dir.join("cache.bin");
        let len = Count::new();
        let db = persistent_len_db(&len);
        db.set::<File>(1, 10).unwrap();
        db.set::<File>(2, 20).unwrap();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 11);
        db.save_cache(&path).await.unwrap();

        // The page is deleted, and the session goes on long enough for its
        // tombstone to be collected before the next append.
        db.remove::<File>(&1).unwrap();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 0);
        for n in 0..10 {
            db.set::<File>(2, n).unwrap();
        }
        let report = db.collect(Collect::unused_for(5));
        assert_eq!(report.tombstones, 1);
        assert_eq!(db.input_opt::<File>(&1).unwrap(), None);
        db.append_cache(&path).await.unwrap();
        assert_eq!(len.take(), 2);

        let len2 = Count::new();
        let fresh = persistent_len_db(&len2);
        let loaded = fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert!(loaded.loaded);
        assert_eq!(fresh.revision(), db.revision());
        // The loaded database is the one that appended: key 1 is absent.
        assert_eq!(fresh.input_opt::<File>(&1).unwrap(), None);
        assert_eq!(fresh.input_opt::<File>(&2).unwrap(), Some(9));
        assert_eq!(fresh.query::<Len>(1).await.unwrap(), 0);
        // `Len(1)` read the tombstone (an identity the loaded slot no longer
        // has): it re-verifies by running once, and is a hit afterwards.
        assert!(len2.take() <= 1);
        assert_eq!(fresh.query::<Len>(1).await.unwrap(), 0);
        assert_eq!(len2.take(), 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Untracked reads + append: an older record of an untracked query must not
// vouch for a dependent after a load.

/// "The outside world": a value the engine cannot see.
#[derive(Clone, Default)]
struct World(Arc<AtomicU32>);
impl World {
    fn set(&self, v: u32) {
        self.0.store(v, Ordering::SeqCst);
    }
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Mode;
impl Input for Mode {
    type Key = ();
    type Value = u32;
}

/// `Mode * 100`, except in mode 0, where it reads the world (untracked).
struct Sometimes(Count, World);
#[async_trait]
impl AsyncQuery for Sometimes {
    type Key = ();
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, _: ()) -> Result<u32> {
        self.0.hit();
        let mode = cx.input::<Mode>(&())?;
        if mode == 0 {
            cx.report_untracked_read()?;
            return Ok(self.1.get());
        }
        Ok(mode * 100)
    }
}

/// Whatever `Sometimes` says.
struct Echo(Count);
#[async_trait]
impl AsyncQuery for Echo {
    type Key = ();
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, _: ()) -> Result<u32> {
        self.0.hit();
        cx.query::<Sometimes>(()).await
    }
}

fn sometimes_db(sometimes: &Count, echo: &Count, world: &World) -> Database {
    Database::builder()
        .persistent_input::<Mode>()
        .persistent_query(Sometimes(sometimes.clone(), world.clone()))
        .persistent_query(Echo(echo.clone()))
        .build()
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_never_lets_an_older_record_vouch_for_an_untracked_read() {
    within(async {
        let dir = TempDir::new("attack-untracked-append");
        let path = dir.join("cache.bin");
        let (sometimes, echo, world) = (Count::new(), Count::new(), World::default());
        let db = sometimes_db(&sometimes, &echo, &world);
        db.set::<Mode>((), 1).unwrap();
        assert_eq!(db.query::<Echo>(()).await.unwrap(), 100);
        // The base holds a tracked `Sometimes` memo.
        db.save_cache(&path).await.unwrap();

        // Mode 0: it now reads the world, untracked; `Echo` follows.
        db.set::<Mode>((), 0).unwrap();
        world.set(1);
        assert_eq!(db.query::<Echo>(()).await.unwrap(), 1);
        assert_eq!((sometimes.take(), echo.take()), (2, 2));
        db.append_cache(&path).await.unwrap();

        // Next run: the world changed while the program was not running.
        let (sometimes2, echo2, world2) = (Count::new(), Count::new(), World::default());
        world2.set(2);
        let fresh = sometimes_db(&sometimes2, &echo2, &world2);
        assert!(
            fresh
                .load_cache(&path, LoadOptions::default())
                .await
                .unwrap()
                .loaded
        );
        assert_eq!(fresh.query::<Echo>(()).await.unwrap(), 2, "stale Echo");
        assert_eq!(fresh.query::<Sometimes>(()).await.unwrap(), 2);
        assert_eq!((sometimes2.take(), echo2.take()), (1, 1));
    })
    .await;
}

// ---------------------------------------------------------------------------
// Untracked reads + eviction: an untracked memo evicted and re-run at the
// same revision is a twin with the same identity and maybe another value;
// its dependents must not be validated against the wrong twin.

/// Samples the world, untracked (the key only names the sample).
struct Sample(Count, World);
#[async_trait]
impl AsyncQuery for Sample {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, _: u32) -> Result<u32> {
        self.0.hit();
        cx.report_untracked_read()?;
        Ok(self.1.get())
    }
}

/// Whatever `Sample(0)` says (the key only names the reader).
struct Reader(Count);
#[async_trait]
impl AsyncQuery for Reader {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, _: u32) -> Result<u32> {
        self.0.hit();
        cx.query::<Sample>(0).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_untracked_memo_never_vouches_for_readers_of_its_twin() {
    within(async {
        let (sample, reader, world) = (Count::new(), Count::new(), World::default());
        let db = Database::builder()
            .input::<File>()
            .query(Sample(sample.clone(), world.clone()))
            .query(Reader(reader.clone()))
            .capacity::<Sample>(1)
            .build()
            .unwrap();
        world.set(1);
        assert_eq!(db.query::<Reader>(0).await.unwrap(), 1);
        // Another sample would evict `Sample(0)`; the world moves; a second
        // reader asks for `Sample(0)` at the same revision. An untracked
        // memo of the current revision is not evicted (a re-run would be a
        // twin with its identity and another value): within one revision,
        // every reader agrees with it.
        assert_eq!(db.query::<Sample>(1).await.unwrap(), 1);
        world.set(2);
        assert_eq!(db.query::<Reader>(1).await.unwrap(), 1);
        assert_eq!(db.query::<Sample>(0).await.unwrap(), 1);
        assert_eq!((sample.take(), reader.take()), (2, 2));

        // A new revision: every reader of `Sample(0)` must agree with it.
        db.set::<File>(99, 1).unwrap();
        let s = db.query::<Sample>(0).await.unwrap();
        assert_eq!(s, 2);
        assert_eq!(db.query::<Reader>(1).await.unwrap(), 2);
        assert_eq!(db.query::<Reader>(0).await.unwrap(), 2, "stale reader");
        // `Sample(0)` ran once at this revision, both readers re-ran.
        assert_eq!((sample.take(), reader.take()), (1, 2));
    })
    .await;
}

// ---------------------------------------------------------------------------
// A user `Hash` that panics while the engine evicts.

static PANIC_ON_KEY_ZERO: AtomicBool = AtomicBool::new(false);

#[derive(Clone, PartialEq, Eq, Debug)]
struct Touchy(u32);
impl std::hash::Hash for Touchy {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if self.0 == 0 && PANIC_ON_KEY_ZERO.load(Ordering::SeqCst) {
            panic!("user Hash panics");
        }
        self.0.hash(state);
    }
}

struct ByTouchy(Count);
#[async_trait]
impl AsyncQuery for ByTouchy {
    type Key = Touchy;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: Touchy) -> Result<u32> {
        self.0.hit();
        Ok(cx.input_opt::<File>(&k.0)?.unwrap_or(0) + k.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_hash_during_eviction_is_survived() {
    within(async {
        let runs = Count::new();
        let db = Database::builder()
            .input::<File>()
            .query(ByTouchy(runs.clone()))
            .capacity::<ByTouchy>(1)
            .build()
            .unwrap();
        assert_eq!(db.query::<ByTouchy>(Touchy(0)).await.unwrap(), 0);
        // Publishing `ByTouchy(1)` evicts `ByTouchy(0)`, whose Hash panics.
        PANIC_ON_KEY_ZERO.store(true, Ordering::SeqCst);
        let task = {
            let db = db.clone();
            tokio::spawn(async move { db.query::<ByTouchy>(Touchy(1)).await })
        };
        let result = task.await;
        // So does a collection that would drop it.
        let collected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            db.collect(Collect::unused_for(0))
        }));
        PANIC_ON_KEY_ZERO.store(false, Ordering::SeqCst);
        assert!(collected.is_ok(), "collect let a user panic through");
        assert_eq!(
            result.expect("eviction let a user panic through").unwrap(),
            1
        );
        assert_eq!(runs.take(), 2);
        assert_eq!(db.stats().in_flight, 0);
        // The engine still works.
        db.set::<File>(1, 10).unwrap();
        assert_eq!(db.query::<ByTouchy>(Touchy(1)).await.unwrap(), 11);
        assert_eq!(db.query::<ByTouchy>(Touchy(0)).await.unwrap(), 0);
        assert!(db.memory().kind("ByTouchy").unwrap().entries <= 1);
    })
    .await;
}
