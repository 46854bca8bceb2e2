//! W4: a chain q(i) → q(i-1) → … → q(0) → input, 1 000 / 10 000 / 100 000
//! deep: cold build, revalidate after an unrelated change, cutoff at level 1.
//! Runs on a tokio multi-thread runtime whose workers have the default 2 MiB
//! stacks.
//!
//! `cargo bench --bench chain`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use picante::*;

struct Base;
impl Input for Base {
    type Key = ();
    type Value = u64;
}

struct Unrelated;
impl Input for Unrelated {
    type Key = ();
    type Value = u64;
}

struct Chain;
#[async_trait]
impl AsyncQuery for Chain {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, i: u32) -> QueryResult<u64> {
        if i == 0 {
            // Level 1 of the chain: integer halving makes 2 → 3 a cutoff.
            Ok(cx.input::<Base>(&())? / 2)
        } else {
            Ok(cx.query::<Chain>(i - 1).await? + 1)
        }
    }
}

fn db() -> Database {
    let db = Database::builder()
        .input::<Base>()
        .input::<Unrelated>()
        .query(Chain)
        .build()
        .unwrap();
    db.set::<Base>((), 2).unwrap();
    db.set::<Unrelated>((), 0).unwrap();
    db
}

async fn top(db: &Database, depth: u32) -> u64 {
    let db = db.clone();
    // On a worker thread (2 MiB stack), like a real request handler.
    tokio::spawn(async move { db.query::<Chain>(depth).await.unwrap() })
        .await
        .unwrap()
}

fn chain(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("W4_chain");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for depth in [1_000u32, 10_000, 100_000] {
        g.bench_with_input(BenchmarkId::new("cold", depth), &depth, |b, &depth| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let db = db();
                    let start = Instant::now();
                    black_box(rt.block_on(top(&db, depth)));
                    total += start.elapsed();
                    drop(db);
                }
                total
            })
        });
        let db = db();
        rt.block_on(top(&db, depth));
        g.bench_with_input(
            BenchmarkId::new("revalidate", depth),
            &depth,
            |b, &depth| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let v = db.input::<Unrelated>(&()).unwrap();
                        db.set::<Unrelated>((), v + 1).unwrap();
                        let start = Instant::now();
                        black_box(rt.block_on(top(&db, depth)));
                        total += start.elapsed();
                    }
                    total
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("cutoff_at_level_1", depth),
            &depth,
            |b, &depth| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        // 2 <-> 3: Base/2 stays 1, so only level 1 re-executes.
                        let v = db.input::<Base>(&()).unwrap();
                        db.set::<Base>((), if v == 2 { 3 } else { 2 }).unwrap();
                        let start = Instant::now();
                        black_box(rt.block_on(top(&db, depth)));
                        total += start.elapsed();
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, chain);
criterion_main!(benches);
