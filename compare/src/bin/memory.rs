//! Memory per memo, picante vs salsa 0.28, on the same user code
//! (`common.rs`, the same kinds as the timed comparison):
//!
//! - **small**: `n` memos of a `u64 → u64` query, each reading one input
//!   (W1's shape with an unboxed value), n = 10 000 and 100 000;
//! - **site**: the W2/W3 site, `files` × (parse → render) + 10 templates →
//!   site (2 × files + 1 memos), files = 1 000 and 10 000.
//!
//! Each (engine, workload, size) runs in its own child process, so one's
//! allocator state never carries into another's. Heap is measured with a
//! counting global allocator: live bytes (requested sizes; freed ones do not
//! count) and live allocations, plus the same allocations as glibc chunks
//! (size + 8-byte header, rounded to 16, at least 32), and RSS from
//! `/proc/self/statm`. Three points: before the database exists, after the
//! inputs are set ("inputs only"), after every memo is built. A memo's cost
//! is the difference of the last two divided by the memos, counted exactly
//! (executions of the bodies; picante's `memory().memos()`, salsa's
//! `memory_usage()` counts). For the site, the user's values (the parsed
//! pages and rendered `Arc<str>`s, which both engines hold alike) are
//! measured by a plain recomputation and subtracted too. Every result is
//! checked against the plain recomputation.
//!
//! ```sh
//! cd compare && cargo run --release --bin memory
//! ```

#[allow(dead_code)]
#[path = "../common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../pic.rs"]
mod pic;
#[allow(dead_code)]
#[path = "../sal.rs"]
mod sal;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use common::counts;

// ---- the counting allocator -------------------------------------------------

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);
static CHUNK_BYTES: AtomicIsize = AtomicIsize::new(0);

/// What glibc's malloc spends on a request of `size` bytes (x86_64): an
/// 8-byte header, 16-byte granules, 32 bytes at least. (Large requests are
/// mmapped with a page granule instead; the difference is negligible here.)
fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

/// Live allocations by size: exact below `EXACT` bytes (8-byte steps),
/// then by power of two. Attributes an engine's bytes to its structures.
const EXACT: usize = 4096;
const BUCKETS: usize = EXACT / 8 + 64;
static BY_SIZE: [AtomicIsize; BUCKETS] = [const { AtomicIsize::new(0) }; BUCKETS];

fn bucket(size: usize) -> usize {
    if size < EXACT {
        size.div_ceil(8)
    } else {
        EXACT / 8 + (usize::BITS - size.leading_zeros()) as usize
    }
}

/// The sizes a bucket holds, for printing.
fn bucket_name(b: usize) -> String {
    if b <= EXACT / 8 {
        format!("{} B", b * 8)
    } else {
        let bits = b - EXACT / 8;
        format!(
            "{}–{} KiB",
            (1usize << (bits - 1)) / 1024,
            (1usize << bits) / 1024
        )
    }
}

fn on_alloc(size: usize) {
    LIVE_BYTES.fetch_add(size as isize, Ordering::Relaxed);
    LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
    CHUNK_BYTES.fetch_add(chunk(size), Ordering::Relaxed);
    BY_SIZE[bucket(size)].fetch_add(size as isize, Ordering::Relaxed);
}

fn on_dealloc(size: usize) {
    LIVE_BYTES.fetch_sub(size as isize, Ordering::Relaxed);
    LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    CHUNK_BYTES.fetch_sub(chunk(size), Ordering::Relaxed);
    BY_SIZE[bucket(size)].fetch_sub(size as isize, Ordering::Relaxed);
}

fn by_size() -> Vec<isize> {
    BY_SIZE.iter().map(|b| b.load(Ordering::Relaxed)).collect()
}

/// The size classes holding most of the bytes between two `by_size()`
/// snapshots: "bytes in <size> allocations".
fn size_notes(
    engine: &str,
    phase: &str,
    before: &[isize],
    after: &[isize],
    memos: u64,
) -> Vec<String> {
    let mut d: Vec<(usize, isize)> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a - b)
        .enumerate()
        .filter(|&(_, v)| v != 0)
        .collect();
    d.sort_by_key(|&(_, v)| -v.abs());
    d.iter()
        .take(6)
        .map(|&(b, v)| {
            format!(
                "{engine} {phase}: {:.1} B/memo in {} allocations",
                v as f64 / memos as f64,
                bucket_name(b)
            )
        })
        .collect()
}

// SAFETY: every call is forwarded to `System` unchanged; the counters are
// only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            on_alloc(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            on_alloc(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        on_dealloc(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded; `ptr` came from `System` with this layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            on_dealloc(layout.size());
            on_alloc(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap (requested bytes, allocations, glibc chunk bytes) and RSS.
#[derive(Clone, Copy, Default)]
struct Sample {
    bytes: i64,
    allocs: i64,
    chunks: i64,
    rss: i64,
}

fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn sample() -> Sample {
    Sample {
        bytes: LIVE_BYTES.load(Ordering::Relaxed) as i64,
        allocs: LIVE_ALLOCS.load(Ordering::Relaxed) as i64,
        chunks: CHUNK_BYTES.load(Ordering::Relaxed) as i64,
        rss: rss_bytes(),
    }
}

impl std::ops::Sub for Sample {
    type Output = Sample;
    fn sub(self, o: Sample) -> Sample {
        Sample {
            bytes: self.bytes - o.bytes,
            allocs: self.allocs - o.allocs,
            chunks: self.chunks - o.chunks,
            rss: self.rss - o.rss,
        }
    }
}

// ---- one measurement (in a child process) ------------------------------------

/// What a child reports: the three samples' differences, the memo count and
/// the user values' heap (site only), plus per-kind notes.
struct Measured {
    /// After the inputs minus before the database.
    inputs: Sample,
    /// After the build minus after the inputs.
    memos_delta: Sample,
    memos: u64,
    /// Live bytes / allocations / chunks of the user's values (0 for small).
    values: Sample,
    notes: Vec<String>,
}

/// A `Sample` and the live bytes by size at one point.
struct Snap {
    s: Sample,
    sizes: Vec<isize>,
}

fn snap() -> Snap {
    Snap {
        s: sample(),
        sizes: by_size(),
    }
}

impl Measured {
    /// From the three points (before the database, after the inputs, after
    /// the build); the notes get the size classes of both phases.
    fn new(
        engine: &str,
        p: [Snap; 3],
        memos: u64,
        values: Sample,
        mut notes: Vec<String>,
    ) -> Measured {
        notes.extend(size_notes(
            engine,
            "inputs",
            &p[0].sizes,
            &p[1].sizes,
            memos,
        ));
        notes.extend(size_notes(engine, "build", &p[1].sizes, &p[2].sizes, memos));
        Measured {
            inputs: p[1].s - p[0].s,
            memos_delta: p[2].s - p[1].s,
            memos,
            values,
            notes,
        }
    }
}

fn failed(what: String) -> ! {
    eprintln!("MISMATCH: {what}");
    std::process::exit(1);
}

fn check(ok: bool, what: impl FnOnce() -> String) {
    if !ok {
        failed(what());
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn pic_small(n: u32) -> Measured {
    let rt = runtime();
    let expected: u64 = (1..=u64::from(n)).sum();
    let s0 = snap();
    let db = pic::small_db(n);
    let s1 = snap();
    let c0 = counts();
    let sum = rt.block_on(async {
        let mut sum = 0;
        for k in 0..n {
            sum += db.query::<pic::Small>(k).await.expect("small");
        }
        sum
    });
    let s2 = snap();
    let executed = (counts() - c0).other;
    check(sum == expected, || format!("picante small sum {sum}"));
    let mem = db.memory();
    let memos = mem.memos() as u64;
    check(memos == u64::from(n) && executed == memos, || {
        format!("picante small: {memos} memos, {executed} executions, expected {n}")
    });
    Measured::new(
        "picante",
        [s0, s1, s2],
        memos,
        Sample::default(),
        pic_notes(&mem),
    )
}

fn sal_small(n: u32) -> Measured {
    let expected: u64 = (1..=u64::from(n)).sum();
    let s0 = snap();
    let (mut db, bases, nums) = sal::hit_db(n);
    let s1 = snap();
    let c0 = counts();
    let sum: u64 = bases.iter().map(|&b| sal::small(&db, b)).sum();
    let s2 = snap();
    let executed = (counts() - c0).other;
    check(sum == expected, || format!("salsa small sum {sum}"));
    let (memos, notes) = sal_info(&mut db);
    check(memos == u64::from(n) && executed == memos, || {
        format!("salsa small: {memos} memos, {executed} executions, expected {n}")
    });
    drop((bases, nums));
    Measured::new("salsa", [s0, s1, s2], memos, Sample::default(), notes)
}

/// The heap the user's values take when held outside any engine: every
/// parsed page and every render (the vectors holding them excluded).
fn site_values(sources: &[Arc<str>], templates: &[Arc<str>]) -> Sample {
    let s0 = sample();
    let parsed: Vec<Arc<common::Parsed>> = sources
        .iter()
        .map(|s| Arc::new(common::parse_text(s)))
        .collect();
    let renders: Vec<Arc<str>> = parsed
        .iter()
        .map(|p| common::render_text(p, &templates[p.template as usize]))
        .collect();
    let mut d = sample() - s0;
    for size in [
        parsed.capacity() * size_of::<Arc<common::Parsed>>(),
        renders.capacity() * size_of::<Arc<str>>(),
    ] {
        d.bytes -= size as i64;
        d.allocs -= 1;
        d.chunks -= chunk(size) as i64;
    }
    d.rss = 0;
    d
}

/// Exactly one execution per memo, and 2 × files + 1 memos.
fn site_counts_ok(engine: &str, files: u32, executed: common::Counts, memos: u64) {
    let n = u64::from(files);
    check(
        (executed.parse, executed.render, executed.site) == (n, n, 1),
        || format!("{engine} site: executions {executed:?}"),
    );
    check(memos == 2 * n + 1, || {
        format!("{engine} site: {memos} memos")
    });
}

fn pic_site(files: u32) -> Measured {
    let rt = runtime();
    let (sources, templates) = common::inputs(files);
    let expected = common::plain_site(&sources, &templates);
    let s0 = snap();
    let db = pic::site_db();
    pic::fill_site(&db, &sources, &templates);
    let s1 = snap();
    let c0 = counts();
    let v = rt.block_on(db.query::<pic::Site>(())).expect("site");
    let s2 = snap();
    let executed = counts() - c0;
    check(v == expected, || format!("picante site {v} != {expected}"));
    let mem = db.memory();
    let memos = mem.memos() as u64;
    site_counts_ok("picante", files, executed, memos);
    let notes = pic_notes(&mem);
    Measured::new(
        "picante",
        [s0, s1, s2],
        memos,
        site_values(&sources, &templates),
        notes,
    )
}

fn sal_site(files: u32) -> Measured {
    let (sources, templates) = common::inputs(files);
    let expected = common::plain_site(&sources, &templates);
    let s0 = snap();
    let mut db = sal::Db::default();
    let h = sal::fill_site(&db, &sources, &templates);
    let s1 = snap();
    let c0 = counts();
    let v = sal::site(&db, h.project);
    let s2 = snap();
    let executed = counts() - c0;
    check(v == expected, || format!("salsa site {v} != {expected}"));
    let (memos, notes) = sal_info(&mut db);
    site_counts_ok("salsa", files, executed, memos);
    drop(h);
    Measured::new(
        "salsa",
        [s0, s1, s2],
        memos,
        site_values(&sources, &templates),
        notes,
    )
}

/// picante's own estimate per kind (`db.memory()`).
fn pic_notes(mem: &picante::MemoryReport) -> Vec<String> {
    mem.kinds
        .iter()
        .map(|k| {
            format!(
                "picante memory(): {} ({}): {} entries, {} keys, ≈ {} B",
                k.name, k.kind, k.entries, k.keys, k.bytes
            )
        })
        .collect()
}

/// salsa's memo count and its own estimate (`memory_usage`), per query.
fn sal_info(db: &mut sal::Db) -> (u64, Vec<String>) {
    let info = <dyn salsa::Database>::memory_usage(db);
    let mut memos = 0;
    let mut notes = Vec::new();
    let queries: BTreeMap<_, _> = info.queries.iter().collect();
    for (name, q) in queries {
        memos += q.count() as u64;
        notes.push(format!(
            "salsa memory_usage(): {name}: {} memos, metadata {} B, fields {} B",
            q.count(),
            q.size_of_metadata(),
            q.size_of_fields()
        ));
    }
    (memos, notes)
}

fn child(engine: &str, workload: &str, n: u32) {
    let m = match (engine, workload) {
        ("picante", "small") => pic_small(n),
        ("salsa", "small") => sal_small(n),
        ("picante", "site") => pic_site(n),
        ("salsa", "site") => sal_site(n),
        _ => panic!("unknown child {engine} {workload}"),
    };
    let f = |s: Sample| format!("{} {} {} {}", s.bytes, s.allocs, s.chunks, s.rss);
    println!(
        "RESULT {} | {} | {} | {}",
        m.memos,
        f(m.inputs),
        f(m.memos_delta),
        f(m.values)
    );
    for n in m.notes {
        println!("NOTE {n}");
    }
}

// ---- the parent: one child per measurement, then the tables ---------------------

struct Report {
    memos: u64,
    inputs: Sample,
    delta: Sample,
    values: Sample,
    notes: Vec<String>,
}

fn parse_sample(s: &str) -> Sample {
    let v: Vec<i64> = s
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    Sample {
        bytes: v[0],
        allocs: v[1],
        chunks: v[2],
        rss: v[3],
    }
}

fn run_child(engine: &str, workload: &str, n: u32) -> Report {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--child", engine, workload, &n.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("child");
    if !out.status.success() {
        eprintln!("{engine} {workload} {n}: child failed ({})", out.status);
        std::process::exit(1);
    }
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut report = None;
    let mut notes = Vec::new();
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("RESULT ") {
            let parts: Vec<&str> = r.split(" | ").collect();
            report = Some(Report {
                memos: parts[0].parse().expect("memos"),
                inputs: parse_sample(parts[1]),
                delta: parse_sample(parts[2]),
                values: parse_sample(parts[3]),
                notes: Vec::new(),
            });
        } else if let Some(n) = line.strip_prefix("NOTE ") {
            notes.push(n.to_string());
        }
    }
    let mut report = report.expect("a RESULT line");
    report.notes = notes;
    report
}

fn per(v: i64, memos: u64) -> f64 {
    v as f64 / memos as f64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1], &args[2], args[3].parse().expect("n"));
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "memory per memo, picante vs salsa 0.28.5, one child process each; load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let cases = [
        ("small", 10_000, "small `u64 → u64` query, one input each"),
        ("small", 100_000, "small `u64 → u64` query, one input each"),
        ("site", 1_000, "site: files × (parse → render) + site"),
        ("site", 10_000, "site: files × (parse → render) + site"),
    ];
    let mut rows = Vec::new();
    for (workload, n, label) in cases {
        let p = run_child("picante", workload, n);
        let s = run_child("salsa", workload, n);
        check(p.memos == s.memos, || {
            format!(
                "{workload} {n}: picante {} memos, salsa {}",
                p.memos, s.memos
            )
        });
        rows.push((workload, n, label, p, s));
    }

    println!("Bytes per memo: (live heap after the build − after the inputs) ÷ memos.");
    println!();
    println!(
        "| workload | memos | picante B/memo | salsa B/memo | ratio | picante allocs/memo | salsa allocs/memo | picante glibc B/memo | salsa glibc B/memo | ratio (glibc) | picante RSS B/memo | salsa RSS B/memo |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (workload, n, label, p, s) in &rows {
        let m = p.memos;
        let eng = |r: &Report, v: fn(&Sample) -> i64| per(v(&r.delta) - v(&r.values), m);
        let lines: &[(&str, bool)] = if *workload == "site" {
            &[("total", false), ("excluding the user's values", true)]
        } else {
            &[("", false)]
        };
        for &(what, minus_values) in lines {
            let get = |r: &Report, v: fn(&Sample) -> i64| {
                if minus_values {
                    eng(r, v)
                } else {
                    per(v(&r.delta), m)
                }
            };
            let (pb, sb) = (get(p, |s| s.bytes), get(s, |s| s.bytes));
            let (pc, sc) = (get(p, |s| s.chunks), get(s, |s| s.chunks));
            let rss = |r: &Report| {
                if minus_values {
                    "".to_string()
                } else {
                    format!("{:.0}", per(r.delta.rss, m))
                }
            };
            let name = if what.is_empty() {
                format!("{label}, n = {n}")
            } else {
                format!("{label}, files = {n}: {what}")
            };
            println!(
                "| {name} | {m} | {pb:.1} | {sb:.1} | {:.2}× | {:.2} | {:.2} | {pc:.1} | {sc:.1} | {:.2}× | {} | {} |",
                pb / sb,
                get(p, |s| s.allocs),
                get(s, |s| s.allocs),
                pc / sc,
                rss(p),
                rss(s),
            );
        }
    }
    println!();
    println!(
        "Inputs only (live heap after setting the inputs − before the database), and the user's values (site):"
    );
    println!();
    println!(
        "| workload | picante inputs B | salsa inputs B | picante build B | salsa build B | user values B (both) |"
    );
    println!("|---|---|---|---|---|---|");
    for (_, n, label, p, s) in &rows {
        println!(
            "| {label}, n = {n} | {} | {} | {} | {} | {} |",
            p.inputs.bytes, s.inputs.bytes, p.delta.bytes, s.delta.bytes, p.values.bytes
        );
    }
    println!();
    for (_, n, label, p, s) in &rows {
        println!("{label}, n = {n}:");
        for note in p.notes.iter().chain(&s.notes) {
            println!("  {note}");
        }
    }
}
