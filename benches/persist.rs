//! W7: save / load 100 000 memos (u64 values, and ~1 KB String values):
//! save time, file size, load time to the first answer, time to read every
//! memo after loading, and the cost of appending one input change to the log.
//! Median of 5 runs, printed as a table.
//!
//! `cargo bench --bench persist`

use std::path::Path;
use std::time::{Duration, Instant};

use picante::*;

const N: u32 = 100_000;

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
        let seed = cx.input::<Seed>(&0)?;
        Ok(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(k))
    }
}

struct Text;
#[async_trait]
impl AsyncQuery for Text {
    type Key = u32;
    type Value = String;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<String> {
        let seed = cx.input::<Seed>(&0)?;
        Ok(format!("{k:08}-{seed:016x}-").repeat(40)) // ~1 KB
    }
}

fn db() -> Database {
    Database::builder()
        .persistent_input::<Seed>()
        .persistent_query(Item)
        .persistent_query(Text)
        .build()
        .expect("db")
}

struct Run {
    save: Duration,
    bytes: u64,
    load_first: Duration,
    read_all: Duration,
    append: Duration,
    append_bytes: u64,
}

async fn run_once(dir: &Path, text: bool) -> Run {
    let path = dir.join(if text { "text.bin" } else { "u64.bin" });
    let d = db();
    d.set::<Seed>(0, 7).expect("set");
    d.set::<Seed>(1, 1).expect("set");
    for k in 0..N {
        if text {
            d.query::<Text>(k).await.expect("query");
        } else {
            d.query::<Item>(k).await.expect("query");
        }
    }
    let t = Instant::now();
    let saved = d.save_cache(&path).await.expect("save");
    let save = t.elapsed();

    let fresh = db();
    let t = Instant::now();
    let report = fresh
        .load_cache(&path, LoadOptions::default())
        .await
        .expect("load");
    assert!(report.loaded);
    if text {
        fresh.query::<Text>(N / 2).await.expect("query");
    } else {
        fresh.query::<Item>(N / 2).await.expect("query");
    }
    let load_first = t.elapsed();
    let t = Instant::now();
    for k in 0..N {
        if text {
            std::hint::black_box(fresh.query::<Text>(k).await.expect("query"));
        } else {
            std::hint::black_box(fresh.query::<Item>(k).await.expect("query"));
        }
    }
    let read_all = t.elapsed();
    let s = fresh.stats();
    assert_eq!(s.total_executions(), 0, "loaded memos must be reused");

    fresh.set::<Seed>(1, 2).expect("set");
    let t = Instant::now();
    let appended = fresh.append_cache(&path).await.expect("append");
    let append = t.elapsed();
    Run {
        save,
        bytes: saved.bytes,
        load_first,
        read_all,
        append,
        append_bytes: appended.bytes,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("W7_persist: bench");
        return;
    }
    let dir = std::env::temp_dir().join(format!("picante-w7-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("rt");
    println!("W7 save/load 100 000 memos (median of 5)");
    println!(
        "| values | save | file | load to first answer | read all after load | append 1 input change |"
    );
    println!("|---|---|---|---|---|---|");
    for text in [false, true] {
        let runs: Vec<Run> = (0..5).map(|_| rt.block_on(run_once(&dir, text))).collect();
        let bytes = runs[0].bytes;
        let append_bytes = runs[0].append_bytes;
        println!(
            "| {} | {} | {:.2} MB | {} | {} | {} ({} B) |",
            if text { "~1 KB String" } else { "u64" },
            ms(median(runs.iter().map(|r| r.save).collect())),
            bytes as f64 / 1e6,
            ms(median(runs.iter().map(|r| r.load_first).collect())),
            ms(median(runs.iter().map(|r| r.read_all).collect())),
            ms(median(runs.iter().map(|r| r.append).collect())),
            append_bytes,
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
