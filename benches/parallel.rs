//! W6: 64 CPU-heavy independent queries requested from spawned tasks, on a
//! tokio runtime with 2 worker threads vs 1. Prints the speed-up (median of 7
//! runs each, measured in one process).
//!
//! `cargo bench --bench parallel`

use std::time::{Duration, Instant};

use picante::*;

struct Seed;
impl Input for Seed {
    type Key = ();
    type Value = u64;
}

/// About 2 ms of pure computation per key.
struct Heavy;
#[async_trait]
impl AsyncQuery for Heavy {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u64> {
        let mut x = cx.input::<Seed>(&())? ^ u64::from(k);
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i) ^ (x >> 29);
        }
        Ok(x)
    }
}

fn run(workers: usize, seed: u64) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("runtime");
    let db = Database::builder()
        .input::<Seed>()
        .query(Heavy)
        .build()
        .expect("db");
    db.set::<Seed>((), seed).expect("set");
    rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..64u32)
            .map(|k| {
                let snap = db.snapshot();
                tokio::spawn(async move { snap.query::<Heavy>(k).await })
            })
            .collect();
        for t in tasks {
            std::hint::black_box(t.await.expect("join").expect("query"));
        }
        let elapsed = start.elapsed();
        assert_eq!(db.stats().query("Heavy").map(|q| q.executions), Some(64));
        elapsed
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("W6_parallel: bench");
        return;
    }
    // Warm up the CPU and allocator.
    run(2, 0);
    let mut one = Vec::new();
    let mut two = Vec::new();
    for i in 0..7 {
        one.push(run(1, i));
        two.push(run(2, i));
    }
    let (m1, m2) = (median(one), median(two));
    println!("W6 64 CPU-heavy queries (median of 7)");
    println!("| workers | time |");
    println!("|---|---|");
    println!("| 1 | {:.1} ms |", m1.as_secs_f64() * 1e3);
    println!("| 2 | {:.1} ms |", m2.as_secs_f64() * 1e3);
    println!(
        "speed-up 2 vs 1: {:.2}x (target >= 1.85x)",
        m1.as_secs_f64() / m2.as_secs_f64()
    );
}
