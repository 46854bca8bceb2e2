//! W7's load in a fresh process: what a program that loads its cache at
//! start-up pays (the side-by-side run loads in the process that just saved
//! and dropped a database, whose freed memory a load on the same thread
//! reuses). Prints wall time, time on CPU and page faults of one load plus
//! the first answer.
//!
//! ```sh
//! cargo run --release --bin fresh-load -- save   # writes the cache once
//! cargo run --release --bin fresh-load -- load   # as `load_cache` is used
//! cargo run --release --bin fresh-load -- inline # polled outside tokio (runs on this thread)
//! ```

use picante::*;
use std::time::Instant;

struct Seed;
impl Input for Seed {
    type Key = u32;
    type Value = u64;
}
struct Item;
#[async_trait]
impl AsyncQuery for Item {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u64> {
        Ok(cx.input::<Seed>(&0)?.wrapping_mul(u64::from(k) + 1))
    }
}
fn db() -> Database {
    Database::builder()
        .persistent_input::<Seed>()
        .persistent_query(Item)
        .code_version("1")
        .build()
        .unwrap()
}
fn cost() -> (u64, u64) {
    let mut cpu = 0;
    let mut faults = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap();
        cpu += s.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        let s = std::fs::read_to_string(t.path().join("stat")).unwrap();
        let rest = &s[s.rfind(')').unwrap() + 1..];
        faults += rest
            .split_whitespace()
            .nth(7)
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    (cpu, faults)
}
fn poll_inline<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "load".into());
    let path = &std::env::temp_dir().join("picante-fresh-load.cache");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    if mode == "save" {
        let d = db();
        d.set::<Seed>(0, 7).unwrap();
        rt.block_on(async {
            for k in 0..100_000 {
                d.query::<Item>(k).await.unwrap();
            }
            d.save_cache(path).await.unwrap();
        });
        return;
    }
    let fresh = db();
    let (c0, f0) = cost();
    let t = Instant::now();
    let report = if mode == "inline" {
        // Outside a runtime, `load_cache` runs on the calling thread.
        poll_inline(fresh.load_cache(path, LoadOptions::default())).unwrap()
    } else {
        rt.block_on(fresh.load_cache(path, LoadOptions::default()))
            .unwrap()
    };
    let first = rt.block_on(fresh.query::<Item>(50_000)).unwrap();
    let wall = t.elapsed();
    let (c1, f1) = cost();
    assert!(report.loaded && first == 7 * 50_001 && report.memos == 100_000);
    println!(
        "{mode}: wall {:.1} ms, cpu {:.1} ms, faults {}",
        wall.as_secs_f64() * 1e3,
        (c1 - c0) as f64 / 1e6,
        f1 - f0
    );
}
