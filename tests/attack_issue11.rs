//! Adversarial probes of issue 11 (watch and events, untracked reads,
//! bounded memory): eviction and collection racing queries and snapshots,
//! collection combined with persistence, untracked reads combined with
//! eviction, snapshots and persistence, user code that panics while the
//! engine evicts, watchers that are dropped or abort. Each test asserts
//! counts of executions, not only values.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{Count, TempDir};
use picante::*;
use tokio::sync::{Notify, Semaphore};

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
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
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
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> {
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
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> {
        self.0.hit();
        Ok(cx.query::<Sometimes>(()).await?)
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
    async fn execute(&self, cx: &QueryCx, _: u32) -> QueryResult<u32> {
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
    async fn execute(&self, cx: &QueryCx, _: u32) -> QueryResult<u32> {
        self.0.hit();
        Ok(cx.query::<Sample>(0).await?)
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
    async fn execute(&self, cx: &QueryCx, k: Touchy) -> QueryResult<u32> {
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

// ---------------------------------------------------------------------------
// Capacity 1 everywhere, on a diamond, read concurrently from snapshots
// while the database changes and callers are aborted: never a stale value.

/// `File(k)`, or 0.
struct Leaf(Count);
#[async_trait]
impl AsyncQuery for Leaf {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.0.hit();
        Ok(cx.input_opt::<File>(&k)?.unwrap_or(0))
    }
}

/// `Leaf(i) * 3 + Leaf((i + 1) % 3)`: the three mids share leaves.
struct Mid(Count);
#[async_trait]
impl AsyncQuery for Mid {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, i: u32) -> QueryResult<u32> {
        self.0.hit();
        let (a, b) = tokio::join!(cx.query::<Leaf>(i), cx.query::<Leaf>((i + 1) % 3));
        Ok(a? * 3 + b?)
    }
}

/// Sum of the three mids.
struct Top(Count);
#[async_trait]
impl AsyncQuery for Top {
    type Key = ();
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> {
        self.0.hit();
        let (a, b, c) = tokio::join!(cx.query::<Mid>(0), cx.query::<Mid>(1), cx.query::<Mid>(2));
        Ok(a? + b? + c?)
    }
}

fn top_from_scratch(v: impl Fn(u32) -> u32) -> u32 {
    (0..3).map(|i| v(i) * 3 + v((i + 1) % 3)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_one_on_a_diamond_under_concurrent_snapshots_and_aborts_is_never_stale() {
    within(async {
        let (leaf, mid, top) = (Count::new(), Count::new(), Count::new());
        let db = Database::builder()
            .input::<File>()
            .query(Leaf(leaf.clone()))
            .query(Mid(mid.clone()))
            .query(Top(top.clone()))
            .capacity::<Leaf>(1)
            .capacity::<Mid>(1)
            .capacity::<Top>(1)
            .collect_garbage(Collect::unused_for(1).every(2))
            .build()
            .unwrap();
        let mut old: Vec<(Snapshot, u32)> = Vec::new();
        for step in 0..40u32 {
            db.set::<File>(step % 3, step * 7 % 11).unwrap();
            let snap = db.snapshot();
            let expect = top_from_scratch(|k| snap.input_opt::<File>(&k).unwrap().unwrap_or(0));
            let mut tasks = Vec::new();
            for t in 0..6 {
                let view: View = if t % 2 == 0 {
                    View::clone(&snap)
                } else {
                    View::clone(&db)
                };
                tasks.push(tokio::spawn(async move {
                    (view.revision(), view.query::<Top>(()).await)
                }));
            }
            // Abort one caller mid-flight.
            tasks[step as usize % 6].abort();
            for task in tasks {
                if let Ok((rev, result)) = task.await {
                    assert_eq!(rev, snap.revision());
                    assert_eq!(result.unwrap(), expect, "step {step}");
                }
            }
            // An older snapshot still answers for its own revision.
            if step % 5 == 0 {
                old.push((snap.clone(), expect));
            }
            for (s, e) in &old {
                assert_eq!(s.query::<Top>(()).await.unwrap(), *e);
            }
        }
        // A repeated read at the current revision is a hit.
        let _ = (leaf.take(), mid.take(), top.take());
        let expect = top_from_scratch(|k| db.input_opt::<File>(&k).unwrap().unwrap_or(0));
        assert_eq!(db.query::<Top>(()).await.unwrap(), expect);
        assert_eq!(db.query::<Top>(()).await.unwrap(), expect);
        assert!(top.take() <= 1);
        assert_eq!(db.stats().in_flight, 0);
        assert!(db.memory().kind("Mid").unwrap().entries <= 1);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Collection while an execution pinned to an older revision is in flight:
// it publishes after the collection; results stay right.

struct GatedLen {
    runs: Count,
    started: Arc<Notify>,
    permits: Arc<Semaphore>,
}
#[async_trait]
impl AsyncQuery for GatedLen {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.runs.hit();
        let v = cx.input_opt::<File>(&k)?.unwrap_or(0);
        self.started.notify_one();
        self.permits.acquire().await.map_err(Error::new)?.forget();
        Ok(v + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_while_an_older_execution_is_in_flight_changes_no_result() {
    within(async {
        let runs = Count::new();
        let started = Arc::new(Notify::new());
        let permits = Arc::new(Semaphore::new(0));
        let db = Database::builder()
            .input::<File>()
            .query(GatedLen {
                runs: runs.clone(),
                started: started.clone(),
                permits: permits.clone(),
            })
            .capacity::<GatedLen>(1)
            .build()
            .unwrap();
        db.set::<File>(1, 10).unwrap();
        let old = db.snapshot();
        let task = {
            let old = old.clone();
            tokio::spawn(async move { old.query::<GatedLen>(1).await })
        };
        started.notified().await;
        // The database moves on, removes the key and collects everything.
        db.remove::<File>(&1).unwrap();
        for n in 0..5 {
            db.set::<File>(2, n).unwrap();
        }
        let swept = db.collect(Collect::unused_for(0));
        assert_eq!(swept.tombstones, 1);
        permits.add_permits(1);
        assert_eq!(task.await.unwrap().unwrap(), 11);
        assert_eq!(runs.take(), 1);
        // The memo published for the old revision is not the current answer.
        permits.add_permits(10);
        assert_eq!(db.query::<GatedLen>(1).await.unwrap(), 1);
        assert_eq!(runs.take(), 1);
        assert_eq!(old.query::<GatedLen>(1).await.unwrap(), 11);
        assert_eq!(db.query::<GatedLen>(1).await.unwrap(), 1);
        assert_eq!(runs.take(), 0);
        assert_eq!(db.stats().in_flight, 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Collection on a snapshot, then fork it, then snapshot the fork.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_on_a_snapshot_then_fork_and_fork_again_keeps_every_view_right() {
    within(async {
        let len = Count::new();
        let db = Database::builder()
            .input::<File>()
            .query(Len(len.clone()))
            .capacity::<Len>(2)
            .build()
            .unwrap();
        for k in 0..4 {
            db.set::<File>(k, k * 10).unwrap();
        }
        db.remove::<File>(&3).unwrap();
        for n in 0..6 {
            db.set::<File>(9, n).unwrap();
        }
        for k in 0..4 {
            db.query::<Len>(k).await.unwrap();
        }
        let snap = db.snapshot();
        let swept = snap.collect(Collect::unused_for(2));
        assert_eq!(swept.tombstones, 1);
        // The database keeps its own tombstone.
        assert_eq!(db.memory().kind("File").unwrap().tombstones, 1);
        assert_eq!(snap.query::<Len>(3).await.unwrap(), 0);
        assert_eq!(db.query::<Len>(3).await.unwrap(), 0);
        // Fork the collected snapshot, then a fork of the fork.
        snap.set::<File>(3, 5).unwrap();
        assert!(snap.is_forked());
        assert_eq!(snap.query::<Len>(3).await.unwrap(), 6);
        let fork2 = snap.snapshot();
        fork2.remove::<File>(&0).unwrap();
        fork2.collect(Collect::unused_for(0));
        assert_eq!(fork2.query::<Len>(0).await.unwrap(), 0);
        assert_eq!(fork2.query::<Len>(3).await.unwrap(), 6);
        fork2.set::<File>(0, 1).unwrap();
        assert_eq!(fork2.query::<Len>(0).await.unwrap(), 2);
        // Nothing leaked back.
        assert_eq!(snap.query::<Len>(0).await.unwrap(), 1);
        assert_eq!(db.query::<Len>(0).await.unwrap(), 1);
        assert_eq!(db.query::<Len>(3).await.unwrap(), 0);
        assert_eq!(db.input_opt::<File>(&3).unwrap(), None);
        for k in 0..3 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), k * 10 + 1);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Collected tombstones and the durability shortcut (S8): set / remove /
// collect / set again, with dependents at high and low durability.

struct Stable;
impl Input for Stable {
    type Key = u32;
    type Value = u32;
    const DURABILITY: Durability = Durability::High;
}

/// `Stable(k)` or 0: high durability.
struct OnStable(Count);
#[async_trait]
impl AsyncQuery for OnStable {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.0.hit();
        Ok(cx.input_opt::<Stable>(&k)?.unwrap_or(0))
    }
}

/// `OnStable(k) + File(k)`: low durability.
struct Both(Count);
#[async_trait]
impl AsyncQuery for Both {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.0.hit();
        Ok(cx.query::<OnStable>(k).await? + cx.input_opt::<File>(&k)?.unwrap_or(0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_tombstones_with_the_durability_shortcut_never_serve_a_stale_value() {
    within(async {
        let (on, both) = (Count::new(), Count::new());
        let db = Database::builder()
            .input::<File>()
            .input::<Stable>()
            .query(OnStable(on.clone()))
            .query(Both(both.clone()))
            .build()
            .unwrap();
        db.set::<File>(1, 1).unwrap();
        for round in 0..3u32 {
            let v = 100 + round;
            db.set::<Stable>(1, v).unwrap();
            assert_eq!(db.query::<Both>(1).await.unwrap(), v + 1);
            assert_eq!((on.take(), both.take()), (1, 1), "round {round}: set");
            db.remove::<Stable>(&1).unwrap();
            assert_eq!(db.query::<Both>(1).await.unwrap(), 1);
            assert_eq!((on.take(), both.take()), (1, 1), "round {round}: remove");
            // Low-durability churn, then the tombstone is collected: the
            // high-durability memo stays valid by the shortcut, rightly.
            for n in 0..4 {
                db.set::<File>(7, n).unwrap();
                assert_eq!(db.query::<Both>(1).await.unwrap(), 1);
            }
            assert_eq!((on.take(), both.take()), (0, 0), "round {round}: churn");
            assert_eq!(db.collect(Collect::unused_for(2)).tombstones, 1);
            assert_eq!(db.query::<OnStable>(1).await.unwrap(), 0);
            assert_eq!(db.query::<Both>(1).await.unwrap(), 1);
            assert_eq!((on.take(), both.take()), (0, 0), "round {round}: collect");
            db.set::<File>(1, 1 + round).unwrap();
            db.set::<File>(1, 1).unwrap();
            assert_eq!(db.query::<Both>(1).await.unwrap(), 1);
            assert_eq!(on.take(), 0, "round {round}: low edit");
            both.take();
        }
        // Set the same value the collected tombstone's key once had.
        db.set::<Stable>(1, 100).unwrap();
        assert_eq!(db.query::<Both>(1).await.unwrap(), 101);
        assert_eq!((on.take(), both.take()), (1, 1));
    })
    .await;
}

// ---------------------------------------------------------------------------
// Automatic collection at every revision of everything not used at it.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collecting_everything_after_every_revision_changes_no_result() {
    within(async {
        let (len, sum) = (Count::new(), Count::new());
        let db = Database::builder()
            .input::<File>()
            .query(Len(len.clone()))
            .query(Sum(sum.clone()))
            .collect_garbage(Collect::unused_for(0).every(1))
            .build()
            .unwrap();
        let mut model: HashMap<u32, u32> = HashMap::new();
        let mut snaps: Vec<(Snapshot, u32)> = Vec::new();
        let mut revisions = 0;
        for step in 0..60u32 {
            let k = step * 5 % 8;
            let before = db.revision();
            if step % 4 == 3 {
                db.remove::<File>(&k).unwrap();
                model.remove(&k);
            } else {
                db.set::<File>(k, step).unwrap();
                model.insert(k, step);
            }
            revisions += usize::from(db.revision() != before);
            let expect: u32 = (0..8).map(|k| model.get(&k).map_or(0, |v| v + 1)).sum();
            assert_eq!(db.query::<Sum>(8).await.unwrap(), expect, "step {step}");
            assert_eq!(db.query::<Sum>(8).await.unwrap(), expect);
            if step % 10 == 0 {
                snaps.push((db.snapshot(), expect));
            }
        }
        for (s, e) in &snaps {
            assert_eq!(s.query::<Sum>(8).await.unwrap(), *e);
        }
        // Everything was collected after each revision: one Sum and every
        // Len per revision, exactly; the snapshots kept their own memos.
        assert_eq!(sum.get(), revisions);
        assert_eq!(len.get(), 8 * revisions);
        let mem = db.memory();
        assert!(mem.kind("File").unwrap().tombstones <= 1);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Watches and events.

/// Drains what `events` has buffered right now.
async fn drain(events: &mut Events) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), events.recv()).await {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_snapshot_is_watched_on_its_own_and_its_work_is_never_reported() {
    within(async {
        let len = Count::new();
        let db = Database::builder()
            .input::<File>()
            .query(Len(len.clone()))
            .build()
            .unwrap();
        db.set::<File>(1, 1).unwrap();
        let mut events = db.subscribe_events(EventFilter::InputsAndExecutions);
        // An unforked snapshot's executions are the database's history.
        let snap = db.snapshot();
        assert_eq!(snap.query::<Len>(1).await.unwrap(), 2);
        let seen = drain(&mut events).await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(matches!(&seen[0], Event::Executed { kind, .. } if kind == "Len"));

        let mut watch = snap.watch::<Len>(1);
        let mut db_watch = db.watch::<Len>(1);
        assert_eq!(watch.next_value().await.unwrap(), 2);
        assert_eq!(db_watch.next_value().await.unwrap(), 2);
        assert_eq!(len.take(), 1);
        // The snapshot forks: its watch follows it, the database's does not
        // move, and nothing of the fork is reported.
        snap.set::<File>(1, 5).unwrap();
        assert_eq!(watch.next_value().await.unwrap(), 6);
        let fork2 = snap.snapshot();
        fork2.set::<File>(1, 7).unwrap();
        assert_eq!(fork2.query::<Len>(1).await.unwrap(), 8);
        assert_eq!(len.take(), 2);
        let seen = drain(&mut events).await;
        assert!(seen.is_empty(), "fork events reported: {seen:?}");
        // The database changes: its watch moves, the fork's does not.
        db.set::<File>(1, 2).unwrap();
        assert_eq!(db_watch.next_value().await.unwrap(), 3);
        let seen = drain(&mut events).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        let next = tokio::time::timeout(Duration::from_millis(50), watch.next_value()).await;
        assert!(next.is_err(), "the fork's watch moved: {next:?}");
        assert_eq!(snap.query::<Len>(1).await.unwrap(), 6);
        assert_eq!(len.take(), 1);
    })
    .await;
}

/// `File(k)`, but panics on 13 and needs itself on 7 (a cycle).
struct Moody(Count);
#[async_trait]
impl AsyncQuery for Moody {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.0.hit();
        let v = cx.input::<File>(&k)?;
        if v == 13 {
            panic!("thirteen");
        }
        if v == 7 {
            return Ok(cx.query::<Moody>(k).await?);
        }
        Ok(v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_yields_panics_cycles_and_recoveries_once_each() {
    within(async {
        let runs = Count::new();
        let db = Database::builder()
            .input::<File>()
            .query(Moody(runs.clone()))
            .build()
            .unwrap();
        let mut watch = db.watch::<Moody>(1);
        // Absent: an error.
        assert!(watch.next_value().await.is_err());
        db.set::<File>(1, 13).unwrap();
        let e = watch.next_value().await.unwrap_err();
        assert!(e.to_string().contains("thirteen"), "{e}");
        // Another revision, the same panic: nothing to yield.
        db.set::<File>(2, 0).unwrap();
        db.set::<File>(1, 7).unwrap();
        let e = watch.next_value().await.unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Cycle { .. }), "{e}");
        db.set::<File>(1, 3).unwrap();
        assert_eq!(watch.next_value().await.unwrap(), 3);
        assert_eq!(db.stats().in_flight, 0);
        // One run per revision the watch computed at (the cycle's body ran
        // once: the inner request is the cycle).
        assert!(runs.take() <= 5);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_with_aborts_share_executions_and_leave_nothing_in_flight() {
    within(async {
        let len = Count::new();
        let db = Database::builder()
            .input::<File>()
            .query(Len(len.clone()))
            .build()
            .unwrap();
        db.set::<File>(1, 0).unwrap();
        let last = 20u32;
        let mut tasks = Vec::new();
        for w in 0..30 {
            let mut watch = db.watch::<Len>(1);
            tasks.push((
                w,
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    loop {
                        let v = watch.next_value().await.unwrap();
                        seen.push(v);
                        if v == last + 1 {
                            return seen;
                        }
                    }
                }),
            ));
        }
        for n in 1..=last {
            db.set::<File>(1, n).unwrap();
            if n % 5 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for (w, task) in tasks {
            if w % 3 == 0 {
                task.abort();
                let _ = task.await;
                continue;
            }
            let seen = task.await.unwrap();
            // Increasing: a watch never goes back to an older value.
            assert!(seen.windows(2).all(|p| p[0] < p[1]), "{seen:?}");
            assert_eq!(seen.last(), Some(&(last + 1)));
        }
        // Watchers shared executions: at most one per revision.
        assert!(len.take() <= last as usize + 1);
        assert_eq!(db.stats().in_flight, 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// User `Drop` and `PartialEq` that panic while the engine evicts, collects
// and compares for a watch: the panic surfaces (Rust semantics for a
// panicking drop), the engine stays consistent and usable.

static PANIC_ON_DROP: AtomicBool = AtomicBool::new(false);
static PANIC_ON_EQ: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Debug)]
struct Fragile(u32);
impl PartialEq for Fragile {
    fn eq(&self, other: &Self) -> bool {
        if PANIC_ON_EQ.load(Ordering::SeqCst) {
            panic!("user PartialEq panics");
        }
        self.0 == other.0
    }
}
impl Drop for Fragile {
    fn drop(&mut self) {
        if PANIC_ON_DROP.swap(false, Ordering::SeqCst) && !std::thread::panicking() {
            panic!("user Drop panics");
        }
    }
}

struct MakeFragile(Count);
#[async_trait]
impl AsyncQuery for MakeFragile {
    type Key = u32;
    type Value = Fragile;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<Fragile> {
        self.0.hit();
        Ok(Fragile(cx.input_opt::<File>(&k)?.unwrap_or(0)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_user_drop_and_eq_leave_the_engine_consistent() {
    within(async {
        let runs = Count::new();
        let db = Database::builder()
            .input::<File>()
            .query(MakeFragile(runs.clone()))
            .capacity::<MakeFragile>(1)
            .build()
            .unwrap();
        for k in 0..3 {
            db.set::<File>(k, k).unwrap();
        }
        assert_eq!(db.query::<MakeFragile>(0).await.unwrap().0, 0);
        // Evicting key 0 drops its value, which panics, somewhere.
        PANIC_ON_DROP.store(true, Ordering::SeqCst);
        for k in 1..3 {
            let db = db.clone();
            let _ = tokio::spawn(async move { db.query::<MakeFragile>(k).await }).await;
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            db.collect(Collect::unused_for(0))
        }));
        PANIC_ON_DROP.store(false, Ordering::SeqCst);
        assert_eq!(db.stats().in_flight, 0);
        for k in 0..3 {
            assert_eq!(db.query::<MakeFragile>(k).await.unwrap().0, k);
        }
        runs.take();

        // A watch whose comparison panics: it yields (a value it cannot
        // compare counts as changed) and keeps working.
        let mut watch = db.watch::<MakeFragile>(1);
        assert_eq!(watch.next_value().await.unwrap().0, 1);
        PANIC_ON_EQ.store(true, Ordering::SeqCst);
        db.set::<File>(1, 5).unwrap();
        assert_eq!(watch.next_value().await.unwrap().0, 5);
        PANIC_ON_EQ.store(false, Ordering::SeqCst);
        db.set::<File>(1, 6).unwrap();
        assert_eq!(watch.next_value().await.unwrap().0, 6);
        // Key 1 was evicted (capacity 1) before the watch: three runs.
        assert_eq!(runs.take(), 3);
        assert_eq!(db.stats().in_flight, 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Untracked reads with cycles, snapshots and high durability.

/// Reads the world untracked, then (in mode 1) needs itself.
struct Loop(Count, World);
#[async_trait]
impl AsyncQuery for Loop {
    type Key = ();
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> {
        self.0.hit();
        cx.report_untracked_read()?;
        if cx.input_opt::<Stable>(&0)? == Some(1) {
            return Ok(cx.query::<Loop>(()).await?);
        }
        Ok(self.1.get())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_reads_with_a_cycle_an_old_snapshot_and_high_durability() {
    within(async {
        let (runs, world) = (Count::new(), World::default());
        let db = Database::builder()
            .input::<File>()
            .input::<Stable>()
            .query(Loop(runs.clone(), world.clone()))
            .build()
            .unwrap();
        db.set::<Stable>(0, 1).unwrap();
        let e = db.query::<Loop>(()).await.unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Cycle { .. }), "{e}");
        // The error is memoized for the revision.
        assert!(db.query::<Loop>(()).await.is_err());
        assert_eq!(runs.take(), 1);
        db.set::<Stable>(0, 0).unwrap();
        world.set(3);
        assert_eq!(db.query::<Loop>(()).await.unwrap(), 3);
        let old = db.snapshot();
        assert_eq!(runs.take(), 1);
        // Only a low input changes: the memo read only a high one, but is
        // untracked, so it re-runs; the old snapshot keeps its value.
        world.set(4);
        db.set::<File>(0, 1).unwrap();
        assert_eq!(db.query::<Loop>(()).await.unwrap(), 4);
        assert_eq!(old.query::<Loop>(()).await.unwrap(), 3);
        assert_eq!(runs.take(), 1);
        // A fork of the old snapshot re-reads the world at its new revision.
        old.set::<File>(0, 2).unwrap();
        assert_eq!(old.query::<Loop>(()).await.unwrap(), 4);
        assert_eq!(runs.take(), 1);
        assert_eq!(db.query::<Loop>(()).await.unwrap(), 4);
        assert_eq!(runs.take(), 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Untracked reads + an older snapshot: re-running an untracked memo at an
// old revision whose value the history already fixed makes a twin.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_snapshot_never_makes_a_twin_of_an_untracked_memo_of_its_revision() {
    within(async {
        let (sample, reader, world) = (Count::new(), Count::new(), World::default());
        let db = Database::builder()
            .input::<File>()
            .query(Sample(sample.clone(), world.clone()))
            .query(Reader(reader.clone()))
            .build()
            .unwrap();
        world.set(1);
        let old = db.snapshot();
        assert_eq!(db.query::<Reader>(0).await.unwrap(), 1);
        // The database moves on; the sample re-runs and is cut off (its
        // identity stays the old revision's).
        db.set::<File>(99, 1).unwrap();
        assert_eq!(db.query::<Sample>(0).await.unwrap(), 1);
        assert_eq!((sample.take(), reader.take()), (2, 1));
        // The world moves; the old snapshot's reader needs the sample at the
        // old revision, where the history already says 1.
        world.set(2);
        assert_eq!(old.query::<Reader>(1).await.unwrap(), 1);
        assert_eq!(old.query::<Sample>(0).await.unwrap(), 1);
        assert_eq!((sample.take(), reader.take()), (0, 1));
        // The world goes back; a new revision: every reader agrees.
        world.set(1);
        db.set::<File>(98, 1).unwrap();
        assert_eq!(db.query::<Sample>(0).await.unwrap(), 1);
        assert_eq!(db.query::<Reader>(0).await.unwrap(), 1);
        assert_eq!(db.query::<Reader>(1).await.unwrap(), 1, "stale reader");
        // The sample re-ran once and was cut off: both readers kept theirs.
        assert_eq!((sample.take(), reader.take()), (1, 0));
    })
    .await;
}
