//! Memory over a long session (issue 11).
//!
//! - **churn**: 1 000 000 keys pass through an input, 1 000 live at a time
//!   (each revision sets key k, removes key k − 1 000 and reads `Len(k)`);
//!   resident memory sampled every 100 000 keys, without and with the
//!   documented policy (`collect_garbage(Collect::unused_for(2_000).every(1_000))`);
//!   key ids in use (`db.memory()`, over both kinds) beside memos and
//!   tombstones.
//! - **edit-one-read-all**: 10 000 files; 10 000 revisions each edit one file
//!   and read `Len` of every file; resident memory sampled every 1 000.
//!
//! `cargo bench --bench memory` (add `-- --keys 200000` for a quick run).
//! Each configuration runs in a child process, so that one's memory does not
//! inflate the next one's figures.

use std::time::Instant;

use picante::*;

struct File;
impl Input for File {
    type Key = u64;
    type Value = u64;
}

struct Len;
#[async_trait]
impl AsyncQuery for Len {
    type Key = u64;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: u64) -> QueryResult<u64> {
        Ok(cx.input_opt::<File>(&k)?.map_or(0, |v| v + 1))
    }
}

/// Resident set size in MB (Linux), 0 elsewhere.
fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / 1e6
}

fn db(policy: bool) -> Database {
    let b = Database::builder().input::<File>().query(Len);
    let b = if policy {
        b.collect_garbage(Collect::unused_for(2_000).every(1_000))
    } else {
        b
    };
    b.build().expect("build")
}

async fn churn(keys: u64, policy: bool) {
    let db = db(policy);
    let live = 1_000;
    let started = Instant::now();
    println!("churn, policy {}", if policy { "on" } else { "off" });
    println!("| keys through | RSS MB | memos | tombstones | key ids | est. bytes |");
    println!("|---|---|---|---|---|---|");
    for k in 0..keys {
        let mut batch = db.batch();
        batch.set::<File>(k, k);
        if k >= live {
            batch.remove::<File>(&(k - live));
        }
        batch.commit().expect("commit");
        db.query::<Len>(k).await.expect("query");
        if (k + 1) % (keys / 10).max(1) == 0 {
            let mem = db.memory();
            let tomb = mem.kind("File").map_or(0, |f| f.tombstones);
            let ids: usize = mem.kinds.iter().map(|k| k.keys).sum();
            println!(
                "| {} | {:.1} | {} | {} | {} | {} |",
                k + 1,
                rss_mb(),
                mem.memos(),
                tomb,
                ids,
                mem.total_bytes()
            );
        }
    }
    println!("({:.1} s)\n", started.elapsed().as_secs_f64());
}

async fn edit_one_read_all(files: u64, revisions: u64) {
    let db = db(true);
    let mut batch = db.batch();
    for k in 0..files {
        batch.set::<File>(k, k);
    }
    batch.commit().expect("commit");
    let started = Instant::now();
    println!("edit one of {files} files, read all, {revisions} revisions");
    println!("| revisions | RSS MB | memos |");
    println!("|---|---|---|");
    for r in 0..revisions {
        db.set::<File>(r % files, r + files).expect("set");
        for k in 0..files {
            db.query::<Len>(k).await.expect("query");
        }
        if (r + 1) % (revisions / 10).max(1) == 0 {
            println!("| {} | {:.1} | {} |", r + 1, rss_mb(), db.memory().memos());
        }
    }
    println!("({:.1} s)\n", started.elapsed().as_secs_f64());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let keys = arg("--keys").unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    match args
        .iter()
        .position(|a| a == "--child")
        .and_then(|i| args.get(i + 1))
    {
        Some(which) => rt.block_on(async {
            match which.as_str() {
                "churn-off" => churn(keys, false).await,
                "churn-on" => churn(keys, true).await,
                _ => edit_one_read_all(10_000, arg("--revisions").unwrap_or(10_000)).await,
            }
        }),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            for which in ["churn-off", "churn-on", "edit"] {
                let mut cmd = std::process::Command::new(&exe);
                cmd.args(["--child", which, "--keys", &keys.to_string()]);
                if let Some(r) = arg("--revisions") {
                    cmd.args(["--revisions", &r.to_string()]);
                }
                let status = cmd.status().expect("run child");
                assert!(status.success(), "{which} failed");
            }
        }
    }
}
