//! S18c / issue 10: the loader's working memory. A global allocator that
//! tracks live and peak bytes measures `load_cache` alone: the memory the
//! load needed beyond what the loaded database keeps (peak during the load
//! minus live after it) must stay within about 1.2 × the cache's size on
//! disk. (What the database keeps — input values, memo headers, the file's
//! bytes that lazily decoded values point into — is its content, reported
//! but not bounded here: 100 000 small values take more room in memory than
//! in their encoding.)
//!
//! The allocator is process-wide, so this file holds a single test. It is
//! the only place besides `w1_no_alloc.rs` with `unsafe`: a `GlobalAlloc`
//! impl cannot be written without it. The library keeps
//! `forbid(unsafe_code)`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::TempDir;
use picante::*;

struct Tracking;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Bytes live before, at the peak of, and after `load`.
struct Measured {
    file: u64,
    before: usize,
    peak: usize,
    after: usize,
}

impl Measured {
    /// Memory the load needed beyond what it left behind.
    fn working(&self) -> usize {
        self.peak - self.after
    }
    fn ratio(&self) -> f64 {
        self.working() as f64 / self.file as f64
    }
    fn describe(&self, what: &str) -> String {
        format!(
            "{what}: file {:.2} MB, load working memory {:.2} MB ({:.2} x the file), \
             kept by the database {:.2} MB",
            self.file as f64 / 1e6,
            self.working() as f64 / 1e6,
            self.ratio(),
            (self.after - self.before) as f64 / 1e6,
        )
    }
}

fn measure_load(rt: &tokio::runtime::Runtime, db: &Database, path: &std::path::Path) -> Measured {
    let file = std::fs::metadata(path).unwrap().len();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let report = rt
        .block_on(db.load_cache(path, LoadOptions::default()))
        .unwrap();
    let peak = PEAK.load(Ordering::Relaxed);
    let after = LIVE.load(Ordering::Relaxed);
    assert!(report.loaded, "{report:?}");
    drop(report);
    Measured {
        file,
        before,
        peak,
        after,
    }
}

// W7's shape: 100 000 small memos over one input.
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

// A site's shape: 10 000 documents of ~1 KB, 100 000 small values, and a
// memo per document (its title, decoded lazily).
struct Doc;
impl Input for Doc {
    type Key = u32;
    type Value = String;
}
struct Tag;
impl Input for Tag {
    type Key = u32;
    type Value = String;
}
struct Title;
#[async_trait]
impl AsyncQuery for Title {
    type Key = u32;
    type Value = String;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<String> {
        Ok(cx.input::<Doc>(&k)?.chars().take(40).collect())
    }
}

fn small_memos_db() -> Database {
    Database::builder()
        .persistent_input::<Seed>()
        .persistent_query(Item)
        .build()
        .unwrap()
}

fn documents_db() -> Database {
    Database::builder()
        .persistent_input::<Doc>()
        .persistent_input::<Tag>()
        .persistent_query(Title)
        .build()
        .unwrap()
}

#[test]
fn s18c_loader_working_memory_is_at_most_about_the_file_size() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = TempDir::new("persist-alloc");

    // 100 000 small memos.
    let path = dir.join("small.cache");
    {
        let db = small_memos_db();
        db.set::<Seed>(0, 7).unwrap();
        rt.block_on(async {
            for k in 0..100_000 {
                db.query::<Item>(k).await.unwrap();
            }
            db.save_cache(&path).await.unwrap();
        });
    }
    let db = small_memos_db();
    let small = measure_load(&rt, &db, &path);
    assert_eq!(rt.block_on(db.query::<Item>(99_999)).unwrap(), 7 * 100_000);
    drop(db);

    // Documents, small values and lazily decoded memos.
    let path = dir.join("docs.cache");
    {
        let db = documents_db();
        let mut batch = db.batch();
        for k in 0..10_000u32 {
            let line = format!("document {k}: ");
            batch.set::<Doc>(k, line.repeat(1024 / line.len() + 1));
        }
        for k in 0..100_000u32 {
            batch.set::<Tag>(k, format!("t{k}"));
        }
        batch.commit().unwrap();
        rt.block_on(async {
            for k in 0..10_000 {
                db.query::<Title>(k).await.unwrap();
            }
            db.save_cache(&path).await.unwrap();
        });
    }
    let db = documents_db();
    let docs = measure_load(&rt, &db, &path);
    assert!(
        rt.block_on(db.query::<Title>(9_999))
            .unwrap()
            .starts_with("document 9999: ")
    );
    drop(db);

    let small_text = small.describe("100 000 small memos");
    let docs_text = docs.describe("10 000 ~1 KB documents, 100 000 small inputs, 10 000 memos");
    eprintln!("{small_text}\n{docs_text}");
    assert!(small.ratio() <= 1.2, "{small_text}");
    assert!(docs.ratio() <= 1.2, "{docs_text}");
}
