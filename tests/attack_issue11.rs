//! Adversarial probes of issue 11 (watch and events, untracked reads,
//! bounded memory): eviction and collection racing queries and snapshots,
//! collection combined with persistence, untracked reads combined with
//! eviction, snapshots and persistence, user code that panics while the
//! engine evicts, watchers that are dropped or abort. Each test asserts
//! counts of executions, not only values.

mod common;

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
