//! Depth (issue 3 §8, DESIGN §3 "Depth"): a chain q(i) → q(i-1) 100 000
//! deep computes, revalidates and cuts off on a thread with the tokio default
//! 2 MiB stack, with a 2-worker runtime built on that thread.
//!
//! Levels: `Chain(0) = Base`, `Chain(1) = Chain(0) / 2`,
//! `Chain(i) = Chain(i - 1) + 1` for `i ≥ 2`. Every level counts its own
//! executions, so each phase asserts exactly which bodies ran.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use picante::*;

const DEPTH: u32 = 100_000;

struct Base;
impl Input for Base {
    type Key = ();
    type Value = u64;
}

/// An input the chain never reads.
struct Unrelated;
impl Input for Unrelated {
    type Key = ();
    type Value = u64;
}

struct Chain {
    runs: Arc<Vec<AtomicU32>>,
}
#[async_trait]
impl AsyncQuery for Chain {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u64> {
        self.runs[k as usize].fetch_add(1, Ordering::Relaxed);
        match k {
            0 => Ok(cx.input::<Base>(&())?),
            1 => Ok(cx.query::<Chain>(0).await? / 2),
            _ => Ok(cx.query::<Chain>(k - 1).await? + 1),
        }
    }
}

/// Executions per level since the last call (and resets them).
fn take_runs(runs: &[AtomicU32]) -> Vec<u32> {
    runs.iter().map(|c| c.swap(0, Ordering::Relaxed)).collect()
}

fn expect(base: u64) -> u64 {
    base / 2 + u64::from(DEPTH - 1)
}

#[test]
fn deep_chain_100k_cold_revalidate_cutoff() {
    common::on_small_stack(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_stack_size(2 * 1024 * 1024)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let runs: Arc<Vec<AtomicU32>> =
                Arc::new((0..=DEPTH).map(|_| AtomicU32::new(0)).collect());
            let db = Database::builder()
                .input::<Base>()
                .input::<Unrelated>()
                .query(Chain { runs: runs.clone() })
                .build()
                .expect("build");
            db.set::<Base>((), 0).unwrap();
            db.set::<Unrelated>((), 0).unwrap();

            let run = |db: &Database| {
                let db = db.clone();
                // From a spawned task (a 2 MiB worker stack), and from the
                // small-stack thread itself via block_on: both must hold.
                async move {
                    tokio::time::timeout(
                        std::time::Duration::from_secs(300),
                        tokio::spawn(async move { db.query::<Chain>(DEPTH).await }),
                    )
                    .await
                    .expect("deep chain timed out")
                    .expect("task")
                }
            };

            // Cold: every level runs exactly once.
            assert_eq!(run(&db).await.unwrap(), expect(0));
            let cold = take_runs(&runs);
            assert!(
                cold.iter().all(|&n| n == 1),
                "cold: a level ran {:?} times",
                cold.iter().max()
            );
            assert_eq!(
                db.stats().query("Chain").unwrap().executions,
                u64::from(DEPTH) + 1
            );

            // Warm: a hit, nothing runs.
            assert_eq!(run(&db).await.unwrap(), expect(0));
            assert_eq!(take_runs(&runs).iter().sum::<u32>(), 0);

            // Revalidate after an unrelated change: 0 re-executions.
            db.set::<Unrelated>((), 1).unwrap();
            let before = db.stats().query("Chain").unwrap().revalidations;
            assert_eq!(run(&db).await.unwrap(), expect(0));
            assert_eq!(
                take_runs(&runs).iter().sum::<u32>(),
                0,
                "revalidation re-ran bodies"
            );
            let revalidated = db.stats().query("Chain").unwrap().revalidations - before;
            assert!(
                revalidated >= u64::from(DEPTH),
                "only {revalidated} memos revalidated"
            );

            // Also straight from the small-stack thread's block_on (depth 0 on
            // a 2 MiB stack, not a worker).
            db.set::<Unrelated>((), 2).unwrap();
            assert_eq!(db.query::<Chain>(DEPTH).await.unwrap(), expect(0));
            assert_eq!(take_runs(&runs).iter().sum::<u32>(), 0);

            // Cutoff at level 1: Base 0 → 1 re-runs level 0 (changed) and
            // level 1 (1 / 2 == 0 / 2: same value), and nothing above.
            db.set::<Base>((), 1).unwrap();
            let cutoffs = db.stats().query("Chain").unwrap().cutoffs;
            assert_eq!(run(&db).await.unwrap(), expect(1));
            let cut = take_runs(&runs);
            assert_eq!((cut[0], cut[1]), (1, 1));
            assert_eq!(
                cut[2..].iter().sum::<u32>(),
                0,
                "levels above the cutoff re-ran"
            );
            assert_eq!(db.stats().query("Chain").unwrap().cutoffs - cutoffs, 1);

            // A real change: every level re-runs exactly once.
            db.set::<Base>((), 4).unwrap();
            assert_eq!(run(&db).await.unwrap(), expect(4));
            let all = take_runs(&runs);
            assert!(
                all.iter().all(|&n| n == 1),
                "real change: a level ran {:?} times",
                all.iter().max()
            );

            // A snapshot at that revision reuses everything.
            let snap = db.snapshot();
            let v = tokio::spawn(async move { snap.query::<Chain>(DEPTH).await })
                .await
                .unwrap();
            assert_eq!(v.unwrap(), expect(4));
            assert_eq!(take_runs(&runs).iter().sum::<u32>(), 0);
            assert_eq!(db.stats().in_flight, 0);
        });
    });
}
