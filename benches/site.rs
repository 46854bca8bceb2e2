//! W2 / W3: a site-shaped workload. 1 000 source files are parsed, each page
//! is rendered with one of 10 templates (100 pages per template), and the site
//! concatenates every rendered page.
//!
//! - W2 cold build: set 1 000 files + 10 templates in one batch, build.
//! - W3 warm site: after a build, (a) edit one file's text, (b) set a file to
//!   an equal value, (c) a whitespace-only edit (the parse result is equal:
//!   early cutoff), (d) edit one template. Each measured as set + rebuild.
//!   Expected executions: parse 1/0/1/0, render 1/0/0/100 (asserted once
//!   before measuring).
//!
//! `cargo bench --bench site`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use picante::*;

const FILES: u32 = 1_000;
const TEMPLATES: u32 = 10;

struct SourceFile;
impl Input for SourceFile {
    type Key = u32;
    type Value = Arc<str>;
}

struct TemplateFile;
impl Input for TemplateFile {
    type Key = u32;
    type Value = Arc<str>;
}

#[derive(Clone, PartialEq, Debug)]
struct Parsed {
    title: String,
    template: u32,
    body: String,
}

/// Front matter + body, whitespace-normalized (so whitespace edits cut off).
struct ParseFile;
#[async_trait]
impl AsyncQuery for ParseFile {
    type Key = u32;
    type Value = Arc<Parsed>;
    async fn execute(&self, cx: &QueryCx, file: u32) -> QueryResult<Arc<Parsed>> {
        let text = cx.input::<SourceFile>(&file)?;
        let mut lines = text.lines();
        let title = lines.next().unwrap_or_default().trim().to_string();
        let template = lines
            .next()
            .and_then(|l| l.trim().strip_prefix("template: "))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let mut body = String::with_capacity(text.len());
        for word in lines.flat_map(str::split_whitespace) {
            if !body.is_empty() {
                body.push(' ');
            }
            body.push_str(word);
        }
        Ok(Arc::new(Parsed {
            title,
            template,
            body,
        }))
    }
}

struct LoadTemplate;
#[async_trait]
impl AsyncQuery for LoadTemplate {
    type Key = u32;
    type Value = Arc<str>;
    async fn execute(&self, cx: &QueryCx, t: u32) -> QueryResult<Arc<str>> {
        Ok(cx.input::<TemplateFile>(&t)?)
    }
}

struct RenderPage;
#[async_trait]
impl AsyncQuery for RenderPage {
    type Key = u32;
    type Value = Arc<str>;
    async fn execute(&self, cx: &QueryCx, file: u32) -> QueryResult<Arc<str>> {
        let page = cx.query::<ParseFile>(file).await?;
        let template = cx.query::<LoadTemplate>(page.template).await?;
        Ok(template
            .replace("{{title}}", &page.title)
            .replace("{{body}}", &page.body)
            .into())
    }
}

struct AllRendered;
#[async_trait]
impl AsyncQuery for AllRendered {
    type Key = ();
    type Value = Arc<[Arc<str>]>;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<Arc<[Arc<str>]>> {
        let mut pages = Vec::with_capacity(FILES as usize);
        for file in 0..FILES {
            pages.push(cx.query::<RenderPage>(file).await?);
        }
        Ok(pages.into())
    }
}

struct BuildSite;
#[async_trait]
impl AsyncQuery for BuildSite {
    type Key = ();
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u64> {
        let pages = cx.query::<AllRendered>(()).await?;
        Ok(pages.iter().map(|p| p.len() as u64).sum())
    }
}

fn source(file: u32, variant: u32) -> Arc<str> {
    let mut s = format!("Page {file}\ntemplate: {}\n", file % TEMPLATES);
    for line in 0..40 {
        s.push_str(&format!(
            "word{file} line{line} some text about peppers v{variant}\n"
        ));
    }
    s.into()
}

fn template(t: u32, variant: u32) -> Arc<str> {
    format!("<html><!-- t{t} v{variant} --><h1>{{{{title}}}}</h1><main>{{{{body}}}}</main></html>")
        .into()
}

fn database() -> Database {
    Database::builder()
        .input::<SourceFile>()
        .input::<TemplateFile>()
        .query(ParseFile)
        .query(LoadTemplate)
        .query(RenderPage)
        .query(AllRendered)
        .query(BuildSite)
        .build()
        .expect("db")
}

fn fill(db: &Database) {
    let mut batch = db.batch();
    for f in 0..FILES {
        batch.set::<SourceFile>(f, source(f, 0));
    }
    for t in 0..TEMPLATES {
        batch.set::<TemplateFile>(t, template(t, 0));
    }
    batch.commit().expect("commit");
}

fn executions(db: &Database, name: &str) -> u64 {
    db.stats().query(name).map_or(0, |q| q.executions)
}

fn site(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let build = |db: &Database| rt.block_on(db.query::<BuildSite>(())).expect("build");

    let mut g = c.benchmark_group("W2_cold_build");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("1000 files", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let db = database();
                let start = Instant::now();
                fill(&db);
                black_box(build(&db));
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();

    // W3: one database, edits applied in a cycle so each iteration is a real
    // change of the same size.
    let db = database();
    fill(&db);
    build(&db);
    let variant = std::cell::Cell::new(1u32);
    let next = || {
        let v = variant.get();
        variant.set(v + 1);
        v
    };
    let whitespace = |v: u32| -> Arc<str> {
        let base = source(7, 0);
        if v.is_multiple_of(2) {
            base
        } else {
            format!("{base}   \n").replace(" some", "  some").into()
        }
    };

    // Check the counts once (W3's exactness requirement).
    let check = |label: &str, edit: &dyn Fn(), parse: u64, render: u64| {
        let (p0, r0) = (executions(&db, "ParseFile"), executions(&db, "RenderPage"));
        edit();
        build(&db);
        let (p, r) = (
            executions(&db, "ParseFile") - p0,
            executions(&db, "RenderPage") - r0,
        );
        assert_eq!((p, r), (parse, render), "{label}: parse/render executions");
    };
    check(
        "edit one file",
        &|| drop(db.set::<SourceFile>(3, source(3, next()))),
        1,
        1,
    );
    check(
        "equal value",
        &|| drop(db.set::<SourceFile>(3, db.input::<SourceFile>(&3).unwrap())),
        0,
        0,
    );
    check(
        "whitespace edit",
        &|| drop(db.set::<SourceFile>(7, whitespace(1))),
        1,
        0,
    );
    check(
        "edit one template",
        &|| drop(db.set::<TemplateFile>(4, template(4, next()))),
        0,
        100,
    );

    let mut g = c.benchmark_group("W3_warm_site");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("edit one file", |b| {
        b.iter(|| {
            db.set::<SourceFile>(3, source(3, next())).unwrap();
            black_box(build(&db))
        })
    });
    g.bench_function("set an equal value", |b| {
        b.iter(|| {
            db.set::<SourceFile>(3, db.input::<SourceFile>(&3).unwrap())
                .unwrap();
            black_box(build(&db))
        })
    });
    g.bench_function("whitespace edit (cutoff)", |b| {
        b.iter(|| {
            db.set::<SourceFile>(7, whitespace(next())).unwrap();
            black_box(build(&db))
        })
    });
    g.bench_function("edit one template", |b| {
        b.iter(|| {
            db.set::<TemplateFile>(4, template(4, next())).unwrap();
            black_box(build(&db))
        })
    });
    g.finish();
}

criterion_group!(benches, site);
criterion_main!(benches);
