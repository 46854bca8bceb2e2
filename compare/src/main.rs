//! picante vs salsa 0.28, side by side in one process, on the DESIGN.md §4
//! workloads (W1 warm hit, W2 cold site, W3 warm site, W4 deep chain, W7
//! save/load, W8 async I/O fan-out). Same user code (`common.rs`) on both
//! engines; every result is checked against a plain recomputation and the
//! process exits non-zero on any mismatch or unexpected execution count.
//!
//! `cargo run --release` (from `compare/`). Options:
//! `--reps N` (default 5), `--only w1,w3,...` (a subset), `--engine picante|salsa`
//! (run one side only, e.g. under a profiler; no ratios then), `--edit a|b|c|d`
//! (W3: one edit only).

mod common;
mod pic;
mod sal;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Counts, counts};
use salsa::Setter;

static FAILURES: AtomicUsize = AtomicUsize::new(0);

fn check(ok: bool, what: impl FnOnce() -> String) {
    if !ok {
        FAILURES.fetch_add(1, Ordering::Relaxed);
        eprintln!("MISMATCH: {}", what());
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Engines {
    Both,
    Picante,
    Salsa,
}

struct Opts {
    reps: usize,
    only: Option<Vec<String>>,
    engines: Engines,
    /// W3 only one edit: b'a'..=b'd'.
    edit: Option<u8>,
}

impl Opts {
    fn wants(&self, w: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|x| x == w))
    }
    fn pic(&self) -> bool {
        self.engines != Engines::Salsa
    }
    fn sal(&self) -> bool {
        self.engines != Engines::Picante
    }
}

struct Row {
    workload: String,
    unit: &'static str,
    pic: Option<f64>,
    sal: Option<f64>,
    pic_counts: String,
    sal_counts: String,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `reps` repetitions of both sides, interleaved (the order alternates
/// every repetition), and returns the medians.
fn interleave(
    o: &Opts,
    mut p: impl FnMut() -> f64,
    mut s: impl FnMut() -> f64,
) -> (Option<f64>, Option<f64>) {
    let (mut pv, mut sv) = (Vec::new(), Vec::new());
    for rep in 0..o.reps {
        if rep % 2 == 0 {
            if o.pic() {
                pv.push(p());
            }
            if o.sal() {
                sv.push(s());
            }
        } else {
            if o.sal() {
                sv.push(s());
            }
            if o.pic() {
                pv.push(p());
            }
        }
    }
    (median(pv), median(sv))
}

fn pr(c: Counts) -> String {
    format!("{}/{}", c.parse, c.render)
}

// ---- W1 ---------------------------------------------------------------------

fn w1(o: &Opts, rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    const N: u32 = 10_000;
    const READS: u64 = 2_000_000;
    let expected: u64 = (0..READS).map(|i| i % u64::from(N) + 1).sum();

    let pdb = pic::hit_db(N);
    rt.block_on(async {
        for k in 0..N {
            pdb.query::<pic::Derived>(k).await.expect("derived");
        }
    });
    let (mut sdb, bases, nums) = sal::hit_db(N);
    for &b in &bases {
        sal::derived(&sdb, b);
    }

    let (p, s) = interleave(
        o,
        || {
            let (d, sum) = pic_w1_hits(rt, &pdb, READS, N);
            check(sum == expected, || {
                format!("W1 picante sum {sum} != {expected}")
            });
            d.as_secs_f64() * 1e9 / READS as f64
        },
        || {
            let (d, sum) = sal_w1_hits(&sdb, &bases, READS);
            check(sum == expected, || {
                format!("W1 salsa sum {sum} != {expected}")
            });
            d.as_secs_f64() * 1e9 / READS as f64
        },
    );
    rows.push(Row {
        workload: "W1 warm hit, `db.query` top level (10 000 memos)".into(),
        unit: "ns/read",
        pic: p,
        sal: s,
        pic_counts: "0 exec".into(),
        sal_counts: "0 exec".into(),
    });

    // cx.query hit inside a body: one execution of the reader reads all N
    // already-verified memos. The nonce change makes the reader re-execute;
    // the N memos are re-verified at top level outside the timing.
    const INNER: u64 = 10;
    let plain_reader = |nonce: u64| nonce + (1..=u64::from(N)).sum::<u64>();
    let mut pnonce = 0u64;
    let mut snonce = 0u64;
    let (p, s) = interleave(
        o,
        || {
            let mut total = Duration::ZERO;
            for _ in 0..INNER {
                pnonce += 1;
                pdb.set::<pic::Nonce>((), pnonce).expect("set");
                rt.block_on(async {
                    for k in 0..N {
                        pdb.query::<pic::Derived>(k).await.expect("derived");
                    }
                });
                let c0 = counts();
                let start = Instant::now();
                let v = pic_w1_reader(rt, &pdb, N);
                total += start.elapsed();
                let c = counts() - c0;
                check(v == plain_reader(pnonce), || format!("W1 cx picante {v}"));
                check(c.other == 1, || {
                    format!("W1 cx picante reader ran {} times", c.other)
                });
            }
            total.as_secs_f64() * 1e9 / (INNER * u64::from(N)) as f64
        },
        || {
            let mut total = Duration::ZERO;
            for _ in 0..INNER {
                snonce += 1;
                nums.set_nonce(&mut sdb).to(snonce);
                for &b in &bases {
                    sal::derived(&sdb, b);
                }
                let c0 = counts();
                let start = Instant::now();
                let v = sal_w1_reader(&sdb, nums);
                total += start.elapsed();
                let c = counts() - c0;
                check(v == plain_reader(snonce), || format!("W1 cx salsa {v}"));
                check(c.other == 1, || {
                    format!("W1 cx salsa reader ran {} times", c.other)
                });
            }
            total.as_secs_f64() * 1e9 / (INNER * u64::from(N)) as f64
        },
    );
    rows.push(Row {
        workload: "W1 `cx.query` hit inside a body (10 000 reads per execution)".into(),
        unit: "ns/read",
        pic: p,
        sal: s,
        pic_counts: "1 exec".into(),
        sal_counts: "1 exec".into(),
    });
}

// ---- W2 / W3 ------------------------------------------------------------------

fn w2(o: &Opts, rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>, files: u32) {
    let (sources, templates) = common::inputs(files);
    let expected = common::plain_site(&sources, &templates);
    let want = Counts {
        parse: u64::from(files),
        render: u64::from(files),
        site: 1,
        other: 0,
    };
    let mut pc = Counts::default_zero();
    let mut sc = Counts::default_zero();
    let (p, s) = interleave(
        o,
        || {
            let db = pic::site_db();
            let c0 = counts();
            let start = Instant::now();
            let v = pic_w2_build(rt, &db, &sources, &templates);
            let d = start.elapsed();
            pc = counts() - c0;
            check(v == expected, || {
                format!("W2 picante site {v} != {expected}")
            });
            check(pc == want, || format!("W2 picante counts {pc:?}"));
            drop(db);
            ms(d)
        },
        || {
            let db = sal::Db::default();
            let c0 = counts();
            let start = Instant::now();
            let v = sal_w2_build(&db, &sources, &templates);
            let d = start.elapsed();
            sc = counts() - c0;
            check(v == expected, || format!("W2 salsa site {v} != {expected}"));
            check(sc == want, || format!("W2 salsa counts {sc:?}"));
            drop(db);
            ms(d)
        },
    );
    rows.push(Row {
        workload: format!(
            "W2 cold site, {} files (set inputs + build)",
            thousands(files)
        ),
        unit: "ms",
        pic: p,
        sal: s,
        pic_counts: pr(pc),
        sal_counts: pr(sc),
    });
}

/// The plain model of the site W3 edits: sources, templates and per-page
/// render lengths, updated by recomputing only what an edit touches.
struct Model {
    sources: Vec<Arc<str>>,
    templates: Vec<Arc<str>>,
    lens: Vec<u64>,
}

impl Model {
    fn new(files: u32) -> Self {
        let (sources, templates) = common::inputs(files);
        let lens = sources
            .iter()
            .map(|s| common::plain_render(s, &templates).len() as u64)
            .collect();
        Model {
            sources,
            templates,
            lens,
        }
    }
    fn set_source(&mut self, f: u32, s: Arc<str>) {
        self.lens[f as usize] = common::plain_render(&s, &self.templates).len() as u64;
        self.sources[f as usize] = s;
    }
    fn set_template(&mut self, t: u32, s: Arc<str>) {
        self.templates[t as usize] = s;
        for f in 0..self.sources.len() {
            if f as u32 % common::TEMPLATES == t {
                self.lens[f] = common::plain_render(&self.sources[f], &self.templates).len() as u64;
            }
        }
    }
    fn site(&self) -> u64 {
        self.lens.iter().sum()
    }
}

#[derive(Clone, Copy)]
enum Edit {
    File,
    Equal,
    Whitespace,
    Template,
}

const EDITS: [(Edit, &str, u64, u64); 4] = [
    (Edit::File, "W3 (a) edit one file", 1, 1),
    (Edit::Equal, "W3 (b) set an equal value", 0, 0),
    (Edit::Whitespace, "W3 (c) whitespace edit (cutoff)", 1, 0),
    (
        Edit::Template,
        "W3 (d) edit one template (100 renders)",
        0,
        100,
    ),
];

/// One engine's warm site and its model.
struct W3Side<D> {
    db: D,
    model: Model,
    variant: u32,
    ws_odd: bool,
}

impl<D> W3Side<D> {
    /// Applies `edit` to the model; returns what to set: (file or template, value).
    fn next(&mut self, edit: Edit) -> (u32, Arc<str>) {
        self.variant += 1;
        match edit {
            Edit::File => {
                let s = common::source(3, self.variant);
                self.model.set_source(3, s.clone());
                (3, s)
            }
            Edit::Equal => (3, self.model.sources[3].clone()),
            Edit::Whitespace => {
                self.ws_odd = !self.ws_odd;
                let s = common::whitespace(7, self.ws_odd);
                self.model.set_source(7, s.clone());
                (7, s)
            }
            Edit::Template => {
                let s = common::template(4, self.variant);
                self.model.set_template(4, s.clone());
                (4, s)
            }
        }
    }
}

fn w3(o: &Opts, rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    const FILES: u32 = 1_000;
    const ITERS: u32 = 20;
    let mut ps = W3Side {
        db: pic::site_db(),
        model: Model::new(FILES),
        variant: 0,
        ws_odd: false,
    };
    pic::fill_site(&ps.db, &ps.model.sources, &ps.model.templates);
    let v = rt.block_on(ps.db.query::<pic::Site>(())).expect("site");
    check(v == ps.model.site(), || "W3 picante initial build".into());

    let sdb = sal::Db::default();
    let model = Model::new(FILES);
    let h = sal::fill_site(&sdb, &model.sources, &model.templates);
    let mut ss = W3Side {
        db: (sdb, h),
        model,
        variant: 0,
        ws_odd: false,
    };
    let v = sal::site(&ss.db.0, ss.db.1.project);
    check(v == ss.model.site(), || "W3 salsa initial build".into());

    for (edit, label, want_parse, want_render) in EDITS {
        if o.edit.is_some_and(|e| e != label.as_bytes()[4]) {
            continue;
        }
        let mut pc = Counts::default_zero();
        let mut sc = Counts::default_zero();
        let (p, s) = interleave(
            o,
            || {
                let mut total = Duration::ZERO;
                for _ in 0..ITERS {
                    let (k, value) = ps.next(edit);
                    let db = &ps.db;
                    let c0 = counts();
                    let start = Instant::now();
                    let v = pic_w3_step(rt, db, edit, k, value);
                    total += start.elapsed();
                    pc = counts() - c0;
                    check(v == ps.model.site(), || {
                        format!("{label}: picante site {v}")
                    });
                    check((pc.parse, pc.render) == (want_parse, want_render), || {
                        format!(
                            "{label}: picante parse/render {}/{}, expected {want_parse}/{want_render}",
                            pc.parse, pc.render
                        )
                    });
                }
                // Every page against the plain recomputation (outside the timing).
                rt.block_on(async {
                    for f in 0..FILES {
                        let r = ps.db.query::<pic::Render>(f).await.expect("render");
                        let want = common::plain_render(
                            &ps.model.sources[f as usize],
                            &ps.model.templates,
                        );
                        check(r == want, || format!("{label}: picante render({f})"));
                    }
                });
                ms(total) / f64::from(ITERS)
            },
            || {
                let mut total = Duration::ZERO;
                for _ in 0..ITERS {
                    let (k, value) = ss.next(edit);
                    let (db, h) = &mut ss.db;
                    let c0 = counts();
                    let start = Instant::now();
                    let v = sal_w3_step(db, h, edit, k, value);
                    total += start.elapsed();
                    sc = counts() - c0;
                    check(v == ss.model.site(), || format!("{label}: salsa site {v}"));
                }
                let (db, h) = &ss.db;
                for (f, &file) in h.files.iter().enumerate() {
                    let r = sal::render(db, file);
                    let want = common::plain_render(&ss.model.sources[f], &ss.model.templates);
                    check(*r == want, || format!("{label}: salsa render({f})"));
                }
                ms(total) / f64::from(ITERS)
            },
        );
        rows.push(Row {
            workload: label.into(),
            unit: "ms",
            pic: p,
            sal: s,
            pic_counts: pr(pc),
            sal_counts: pr(sc),
        });
    }
}

// The measured sections worth profiling, as named functions (callgrind
// `--toggle-collect=picante_compare::pic_w3_step` etc.).

#[inline(never)]
fn pic_w3_step(
    rt: &tokio::runtime::Runtime,
    db: &picante::Database,
    edit: Edit,
    k: u32,
    value: Arc<str>,
) -> u64 {
    match edit {
        Edit::Template => db.set::<pic::TemplateFile>(k, value),
        _ => db.set::<pic::SourceFile>(k, value),
    }
    .expect("set");
    rt.block_on(db.query::<pic::Site>(())).expect("site")
}

#[inline(never)]
fn sal_w3_step(db: &mut sal::Db, h: &sal::SiteHandles, edit: Edit, k: u32, value: Arc<str>) -> u64 {
    match edit {
        Edit::Template => h.templates[k as usize].set_text(db).to(value),
        _ => h.files[k as usize].set_text(db).to(value),
    };
    sal::site(db, h.project)
}

#[inline(never)]
fn pic_w1_hits(
    rt: &tokio::runtime::Runtime,
    db: &picante::Database,
    reads: u64,
    n: u32,
) -> (Duration, u64) {
    rt.block_on(async {
        let start = Instant::now();
        let mut sum = 0;
        for i in 0..reads {
            let k = black_box((i % u64::from(n)) as u32);
            sum += *black_box(db.query::<pic::Derived>(k).await.expect("hit"));
        }
        (start.elapsed(), sum)
    })
}

#[inline(never)]
fn sal_w1_hits(db: &sal::Db, bases: &[sal::Base], reads: u64) -> (Duration, u64) {
    let start = Instant::now();
    let mut sum = 0;
    for i in 0..reads {
        let b = bases[black_box((i % bases.len() as u64) as usize)];
        sum += **black_box(sal::derived(db, b));
    }
    (start.elapsed(), sum)
}

#[inline(never)]
fn pic_w2_build(
    rt: &tokio::runtime::Runtime,
    db: &picante::Database,
    sources: &[Arc<str>],
    templates: &[Arc<str>],
) -> u64 {
    pic::fill_site(db, sources, templates);
    rt.block_on(db.query::<pic::Site>(())).expect("site")
}

#[inline(never)]
fn sal_w2_build(db: &sal::Db, sources: &[Arc<str>], templates: &[Arc<str>]) -> u64 {
    let h = sal::fill_site(db, sources, templates);
    sal::site(db, h.project)
}

#[inline(never)]
fn pic_w4_cold(rt: &tokio::runtime::Runtime, db: &picante::Database, depth: u32) -> u64 {
    rt.block_on(pic::chain_top(db, depth))
}

#[inline(never)]
fn sal_w4_cold(db: &sal::Db, b: sal::ChainBase, depth: u32) -> u64 {
    sal::chain_top(db, b, depth)
}

#[inline(never)]
fn pic_w1_reader(rt: &tokio::runtime::Runtime, db: &picante::Database, n: u32) -> u64 {
    rt.block_on(db.query::<pic::Reader>(n)).expect("reader")
}

#[inline(never)]
fn sal_w1_reader(db: &sal::Db, nums: sal::Nums) -> u64 {
    sal::reader(db, nums)
}

#[inline(never)]
fn pic_w7_read_all(rt: &tokio::runtime::Runtime, db: &picante::Database, n: u32) -> u64 {
    rt.block_on(async {
        let mut sum = 0u64;
        for k in 0..n {
            sum = sum.wrapping_add(db.query::<pic::Item>(k).await.expect("item"));
        }
        sum
    })
}

// ---- W4 ----------------------------------------------------------------------

fn w4(o: &Opts, rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    const DEPTH: u32 = 100_000;
    const INNER: u32 = 3;
    let cold_want = u64::from(DEPTH) + 1;
    // Each side returns (cold, revalidate, cutoff) in ms and the executions of each.
    type Times = ([f64; 3], [u64; 3]);
    let mut pt: Vec<Times> = Vec::new();
    let mut st: Vec<Times> = Vec::new();
    let (_, _) = interleave(
        o,
        || {
            let db = pic::chain_db();
            let mut base = 2u64;
            let c0 = counts();
            let start = Instant::now();
            let v = pic_w4_cold(rt, &db, DEPTH);
            let cold = ms(start.elapsed());
            let cold_n = (counts() - c0).other;
            check(v == common::plain_chain(base, DEPTH), || {
                format!("W4 picante cold {v}")
            });
            let (mut reval, mut cut) = (0.0, 0.0);
            let (mut reval_n, mut cut_n) = (0, 0);
            for i in 0..INNER {
                db.set::<pic::Unrelated>((), u64::from(i) + 1).expect("set");
                let c0 = counts();
                let start = Instant::now();
                let v = rt.block_on(pic::chain_top(&db, DEPTH));
                reval += ms(start.elapsed());
                reval_n += (counts() - c0).other;
                check(v == common::plain_chain(base, DEPTH), || {
                    format!("W4 picante reval {v}")
                });
                base = if base == 2 { 3 } else { 2 };
                db.set::<pic::ChainBase>((), base).expect("set");
                let c0 = counts();
                let start = Instant::now();
                let v = rt.block_on(pic::chain_top(&db, DEPTH));
                cut += ms(start.elapsed());
                cut_n += (counts() - c0).other;
                check(v == common::plain_chain(base, DEPTH), || {
                    format!("W4 picante cutoff {v}")
                });
            }
            let n = f64::from(INNER);
            pt.push((
                [cold, reval / n, cut / n],
                [cold_n, reval_n / u64::from(INNER), cut_n / u64::from(INNER)],
            ));
            drop(db);
            0.0
        },
        || {
            // salsa recurses on the thread's stack (execution and verification):
            // a 1 GiB stack.
            let t = std::thread::Builder::new()
                .stack_size(1 << 30)
                .spawn(move || {
                    let mut db = sal::Db::default();
                    let mut base = 2u64;
                    let b = sal::ChainBase::new(&db, base);
                    let u = sal::Unrelated::new(&db, 0);
                    let c0 = counts();
                    let start = Instant::now();
                    let v = sal_w4_cold(&db, b, DEPTH);
                    let cold = ms(start.elapsed());
                    let cold_n = (counts() - c0).other;
                    check(v == common::plain_chain(base, DEPTH), || {
                        format!("W4 salsa cold {v}")
                    });
                    let (mut reval, mut cut) = (0.0, 0.0);
                    let (mut reval_n, mut cut_n) = (0, 0);
                    for i in 0..INNER {
                        u.set_value(&mut db).to(u64::from(i) + 1);
                        let c0 = counts();
                        let start = Instant::now();
                        let v = sal::chain_top(&db, b, DEPTH);
                        reval += ms(start.elapsed());
                        reval_n += (counts() - c0).other;
                        check(v == common::plain_chain(base, DEPTH), || {
                            format!("W4 salsa reval {v}")
                        });
                        base = if base == 2 { 3 } else { 2 };
                        b.set_value(&mut db).to(base);
                        let c0 = counts();
                        let start = Instant::now();
                        let v = sal::chain_top(&db, b, DEPTH);
                        cut += ms(start.elapsed());
                        cut_n += (counts() - c0).other;
                        check(v == common::plain_chain(base, DEPTH), || {
                            format!("W4 salsa cutoff {v}")
                        });
                    }
                    let n = f64::from(INNER);
                    let r: Times = (
                        [cold, reval / n, cut / n],
                        [cold_n, reval_n / u64::from(INNER), cut_n / u64::from(INNER)],
                    );
                    drop(db);
                    r
                })
                .expect("spawn");
            st.push(t.join().expect("salsa W4 thread"));
            0.0
        },
    );
    let labels = [
        "W4 chain 100 000 deep: cold",
        "W4 chain: revalidate (unrelated input change)",
        "W4 chain: cutoff at level 1",
    ];
    let want = [cold_want, 0, 1];
    for (i, label) in labels.iter().enumerate() {
        let pn = pt.first().map(|t| t.1[i]);
        let sn = st.first().map(|t| t.1[i]);
        if let Some(n) = pn {
            check(n == want[i], || {
                format!("{label}: picante executions {n}, expected {}", want[i])
            });
        }
        rows.push(Row {
            workload: (*label).into(),
            unit: "ms",
            pic: median(pt.iter().map(|t| t.0[i]).collect()),
            sal: median(st.iter().map(|t| t.0[i]).collect()),
            pic_counts: pn.map_or(String::new(), |n| format!("{n} exec")),
            sal_counts: sn.map_or(String::new(), |n| format!("{n} exec")),
        });
    }
}

// ---- W7 ----------------------------------------------------------------------

/// Time on CPU (ns, user and kernel) and minor page faults of this process,
/// summed over its threads, from `/proc` (Linux; zeros elsewhere). A load's
/// wall time on a shared machine includes waiting for a core; these two
/// do not, and page faults are where memory freshly taken from the kernel
/// costs (kernel time that instruction profiles such as callgrind miss).
#[derive(Clone, Copy, Default)]
struct ProcCost {
    cpu_ns: u64,
    faults: u64,
}

impl ProcCost {
    fn now() -> ProcCost {
        let mut total = ProcCost::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return total;
        };
        for task in tasks.flatten() {
            let path = task.path();
            if let Ok(s) = std::fs::read_to_string(path.join("schedstat")) {
                total.cpu_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Ok(s) = std::fs::read_to_string(path.join("stat")) {
                // Fields after the command's closing parenthesis start at
                // field 3; minflt is field 10.
                if let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) {
                    total.faults += rest
                        .split_whitespace()
                        .nth(10 - 3)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
        total
    }

    fn since(self, earlier: ProcCost) -> ProcCost {
        ProcCost {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            faults: self.faults.saturating_sub(earlier.faults),
        }
    }
}

fn w7(o: &Opts, rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    const N: u32 = 100_000;
    const SEED: u64 = 7;
    let dir = std::env::temp_dir().join(format!("picante-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let expected_all: u64 = (0..N)
        .map(|k| common::item_value(SEED, k))
        .fold(0, u64::wrapping_add);
    // (save, load to first answer, read all after load, load + read all) in ms, file bytes
    let mut pt: Vec<([f64; 4], u64)> = Vec::new();
    let mut st: Vec<([f64; 4], u64)> = Vec::new();
    // The load's CPU time (ms) and page faults, per repetition.
    let mut pcost: Vec<(f64, u64)> = Vec::new();
    let mut scost: Vec<(f64, u64)> = Vec::new();
    let mut pread: Vec<(f64, u64)> = Vec::new();
    let mut sread: Vec<(f64, u64)> = Vec::new();
    let ppath = dir.join("picante.cache");
    let spath = dir.join("salsa.postcard");
    interleave(
        o,
        || {
            let d = pic::persist_db();
            d.set::<pic::Seed>(0, SEED).expect("set");
            rt.block_on(async {
                for k in 0..N {
                    d.query::<pic::Item>(k).await.expect("item");
                }
            });
            let start = Instant::now();
            let saved = rt.block_on(d.save_cache(&ppath)).expect("save");
            let save = ms(start.elapsed());
            drop(d);
            let fresh = pic::persist_db();
            let c0 = counts();
            let cost = ProcCost::now();
            let start = Instant::now();
            let report = rt
                .block_on(fresh.load_cache(&ppath, picante::LoadOptions::default()))
                .expect("load");
            let first = rt.block_on(fresh.query::<pic::Item>(N / 2)).expect("item");
            let load = ms(start.elapsed());
            let cost = ProcCost::now().since(cost);
            pcost.push((cost.cpu_ns as f64 / 1e6, cost.faults));
            check(report.loaded, || "W7 picante: cache not loaded".into());
            check(first == common::item_value(SEED, N / 2), || {
                "W7 picante first".into()
            });
            let cost = ProcCost::now();
            let start = Instant::now();
            let all = pic_w7_read_all(rt, &fresh, N);
            let read = ms(start.elapsed());
            let cost = ProcCost::now().since(cost);
            pread.push((cost.cpu_ns as f64 / 1e6, cost.faults));
            check(all == expected_all, || "W7 picante read all".into());
            let n = (counts() - c0).other;
            check(n == 0, || format!("W7 picante: {n} executions after load"));
            pt.push(([save, load, read, 0.0], saved.bytes));
            0.0
        },
        || {
            let mut d = sal::Db::default();
            sal::Seed::new(&d, SEED);
            let keys: Vec<sal::ItemKey> = (0..N).map(|k| sal::ItemKey::new(&d, k)).collect();
            for &k in &keys {
                sal::item(&d, k);
            }
            let start = Instant::now();
            let bytes = postcard::to_stdvec(&<dyn salsa::Database>::as_serialize(&mut d))
                .expect("serialize");
            write_synced(&spath, &bytes);
            let save = ms(start.elapsed());
            let len = bytes.len() as u64;
            drop((d, bytes));
            let mut fresh = sal::Db::default();
            let c0 = counts();
            let cost = ProcCost::now();
            let start = Instant::now();
            let bytes = std::fs::read(&spath).expect("read");
            <dyn salsa::Database>::deserialize(
                &mut fresh,
                &mut postcard::Deserializer::from_bytes(&bytes),
            )
            .expect("deserialize");
            let first = sal::item(&fresh, keys[N as usize / 2]);
            let load = ms(start.elapsed());
            let cost = ProcCost::now().since(cost);
            scost.push((cost.cpu_ns as f64 / 1e6, cost.faults));
            check(first == common::item_value(SEED, N / 2), || {
                "W7 salsa first".into()
            });
            let cost = ProcCost::now();
            let start = Instant::now();
            let mut all = 0u64;
            for &k in &keys {
                all = all.wrapping_add(sal::item(&fresh, k));
            }
            let read = ms(start.elapsed());
            let cost = ProcCost::now().since(cost);
            sread.push((cost.cpu_ns as f64 / 1e6, cost.faults));
            check(all == expected_all, || "W7 salsa read all".into());
            let n = (counts() - c0).other;
            check(n == 0, || format!("W7 salsa: {n} executions after load"));
            st.push(([save, load, read, 0.0], len));
            0.0
        },
    );
    std::fs::remove_dir_all(&dir).ok();
    let pb = pt.first().map_or(0, |t| t.1);
    let sb = st.first().map_or(0, |t| t.1);
    let labels = [
        "W7 save 100 000 memos (u64)".to_string(),
        "W7 load to first answer".to_string(),
        "W7 read every value after load".to_string(),
        "W7 load + read every value".to_string(),
    ];
    for t in pt.iter_mut().chain(st.iter_mut()) {
        t.0[3] = t.0[1] + t.0[2];
    }
    for (i, label) in labels.into_iter().enumerate() {
        let (pc, sc) = if i == 0 {
            (
                format!("{:.2} MB", pb as f64 / 1e6),
                format!("{:.2} MB", sb as f64 / 1e6),
            )
        } else if i == 1 || i == 2 {
            // Median CPU time and page faults of the load (or the reads),
            // beside the count.
            let (pcost, scost) = if i == 1 {
                (&pcost, &scost)
            } else {
                (&pread, &sread)
            };
            let describe = |c: &[(f64, u64)]| {
                if c.is_empty() {
                    return "0 exec".to_string();
                }
                let cpu = median(c.iter().map(|t| t.0).collect()).unwrap_or(0.0);
                let faults = median(c.iter().map(|t| t.1 as f64).collect()).unwrap_or(0.0);
                format!("0 exec; {cpu:.1} ms on CPU, {faults:.0} page faults")
            };
            (describe(pcost), describe(scost))
        } else {
            ("0 exec".into(), "0 exec".into())
        };
        rows.push(Row {
            workload: label,
            unit: "ms",
            pic: median(pt.iter().map(|t| t.0[i]).collect()),
            sal: median(st.iter().map(|t| t.0[i]).collect()),
            pic_counts: pc,
            sal_counts: sc,
        });
    }
}

fn write_synced(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("fsync");
}

// ---- W8 ----------------------------------------------------------------------

fn w8(o: &Opts, rt: &tokio::runtime::Runtime, rows: &mut Vec<Row>) {
    const PAGES: u32 = 1_000;
    let expected = common::plain_remote_site(PAGES);
    let mut pc = Counts::default_zero();
    let mut sc = Counts::default_zero();
    let (p, s) = interleave(
        o,
        || {
            let db = pic::fan_db(PAGES);
            let c0 = counts();
            let start = Instant::now();
            let d2 = db.clone();
            let v = rt
                .block_on(async move {
                    tokio::spawn(async move { d2.query::<pic::FanSite>(()).await }).await
                })
                .expect("join")
                .expect("site");
            let d = start.elapsed();
            pc = counts() - c0;
            check(v == expected, || format!("W8 picante {v}"));
            check(pc.parse == u64::from(PAGES), || {
                format!("W8 picante parses {}", pc.parse)
            });
            ms(d)
        },
        || {
            let db = sal::Db::default();
            let pages: Vec<sal::Page> = (0..PAGES).map(|n| sal::Page::new(&db, n)).collect();
            let list = sal::Pages::new(&db, pages.clone());
            let c0 = counts();
            let start = Instant::now();
            // salsa 0.28 has no parallel map inside a tracked function: the
            // caller warms the parses on 2 threads (2 database handles), then
            // the site query runs and hits.
            std::thread::scope(|scope| {
                for half in 0..2 {
                    let db = db.clone();
                    let pages = &pages;
                    scope.spawn(move || {
                        for p in pages.iter().skip(half).step_by(2) {
                            sal::remote_parse(&db, *p);
                        }
                    });
                }
            });
            let v = sal::fan_site(&db, list);
            let d = start.elapsed();
            sc = counts() - c0;
            check(v == expected, || format!("W8 salsa {v}"));
            check(sc.parse == u64::from(PAGES), || {
                format!("W8 salsa parses {}", sc.parse)
            });
            ms(d)
        },
    );
    rows.push(Row {
        workload: "W8 async I/O fan-out: 1 000 pages × 1 ms remote call, 2 workers".into(),
        unit: "ms",
        pic: p,
        sal: s,
        pic_counts: format!("{} parses", pc.parse),
        sal_counts: format!("{} parses", sc.parse),
    });
}

// ---- main ----------------------------------------------------------------------

impl Counts {
    fn default_zero() -> Self {
        Counts {
            parse: 0,
            render: 0,
            site: 0,
            other: 0,
        }
    }
}

fn thousands(n: u32) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "–".into(),
        Some(v) if unit == "ns/read" => format!("{v:.1} ns"),
        Some(v) if v < 1.0 => format!("{v:.3} ms"),
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) => format!("{v:.1} ms"),
    }
}

fn main() {
    let mut o = Opts {
        reps: 5,
        only: None,
        engines: Engines::Both,
        edit: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => o.reps = args.next().and_then(|n| n.parse().ok()).expect("--reps N"),
            "--only" => {
                o.only = Some(
                    args.next()
                        .expect("--only w1,w2,...")
                        .split(',')
                        .map(str::to_lowercase)
                        .collect(),
                )
            }
            "--edit" => o.edit = args.next().map(|e| e.as_bytes()[0]),
            "--engine" => {
                o.engines = match args.next().as_deref() {
                    Some("picante") => Engines::Picante,
                    Some("salsa") => Engines::Salsa,
                    _ => panic!("--engine picante|salsa"),
                }
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "picante vs salsa 0.28.5, median of {} interleaved repetitions; load average at start: {}",
        o.reps,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut rows = Vec::new();
    let t0 = Instant::now();
    if o.wants("w1") {
        w1(&o, &rt, &mut rows);
    }
    if o.wants("w2") {
        w2(&o, &rt, &mut rows, 1_000);
        w2(&o, &rt, &mut rows, 10_000);
    }
    if o.wants("w3") {
        w3(&o, &rt, &mut rows);
    }
    if o.wants("w4") {
        w4(&o, &rt, &mut rows);
    }
    if o.wants("w7") {
        w7(&o, &rt, &mut rows);
    }
    if o.wants("w8") {
        w8(&o, &rt, &mut rows);
    }

    println!(
        "| workload | picante | salsa 0.28 | ratio (picante ÷ salsa) | picante counts | salsa counts |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = match (r.pic, r.sal) {
            (Some(p), Some(s)) if s > 0.0 && p / s >= 0.1 => format!("{:.2}×", p / s),
            (Some(p), Some(s)) if s > 0.0 => format!("{:.4}× ({:.0}× faster)", p / s, s / p),
            _ => "–".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.workload,
            fmt(r.pic, r.unit),
            fmt(r.sal, r.unit),
            ratio,
            r.pic_counts,
            r.sal_counts
        );
    }
    println!();
    println!(
        "Counts are executions of parse/render in the last repetition (per edit for W3; \
         W4/W7 count the chain/item query). picante: tokio multi-thread runtime, 2 workers \
         (2 MiB stacks); W4's top query is spawned onto a worker. salsa: the calling thread; \
         W4 on a thread with a 1 GiB stack (salsa recurses on the stack); W8 warms the parses \
         from 2 threads (2 handles) because salsa 0.28 has no parallel map inside a query. \
         W7 salsa: `persistence` feature, postcard, write + fsync."
    );
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
    let failures = FAILURES.load(Ordering::Relaxed);
    if failures > 0 {
        eprintln!("{failures} mismatches");
        std::process::exit(1);
    }
}
