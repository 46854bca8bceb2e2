//! W5: snapshot creation with 1 000 / 10 000 / 100 000 memos.
//!
//! `cargo bench --bench snapshot`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use picante::*;

struct Base;
impl Input for Base {
    type Key = u32;
    type Value = u64;
}

struct Derived;
#[async_trait]
impl AsyncQuery for Derived {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u64> {
        Ok(cx.input::<Base>(&k)? + 1)
    }
}

fn snapshot(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("W5_snapshot");
    g.measurement_time(Duration::from_secs(3));
    for n in [1_000u32, 10_000, 100_000] {
        let db = Database::builder()
            .input::<Base>()
            .query(Derived)
            .build()
            .unwrap();
        let mut batch = db.batch();
        for k in 0..n {
            batch.set::<Base>(k, k as u64);
        }
        batch.commit().unwrap();
        rt.block_on(async {
            for k in 0..n {
                db.query::<Derived>(k).await.unwrap();
            }
        });
        assert_eq!(db.memos().len(), n as usize);
        g.bench_with_input(BenchmarkId::new("db.snapshot()", n), &n, |b, _| {
            b.iter(|| black_box(db.snapshot()))
        });
    }
    g.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
