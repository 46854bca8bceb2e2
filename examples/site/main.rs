//! A static site generator on picante.
//!
//! ```text
//! cargo run --release --example site                 # the story, on the built-in sample site
//! cargo run --release --example site -- --pages 3000 # the same story on a 3 000-page copy
//! cargo run --release --example site -- --watch      # build the sample, then rebuild on change
//! cargo run --release --example site -- --serve      # ...and serve it, reloading changed pages
//! cargo run --release --example site -- PATH [--out DIR] [--watch | --serve [--port N]] [--cache DIR | --no-cache]
//! ```
//!
//! Read it in this order: `queries.rs` (the incremental pipeline, one picante
//! query per step), `driver.rs` (scan → inputs, build on a snapshot, write,
//! the on-disk cache), then the story below. `store.rs` is the
//! content-addressed store that keeps rendered pages out of the cache;
//! `markup.rs` holds the plain, non-incremental helpers. `watch.rs` rebuilds
//! on change (`--watch`), and `serve.rs` is the dev server (`--serve`),
//! which reloads a browser's page when `db.watch` says its HTML changed.

mod driver;
mod markup;
mod queries;
mod serve;
mod store;
mod watch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use picante::Database;

use driver::{
    BuildReport, Cache, Delta, Output, Result, Scanner, millis, print_failures, print_summary,
    update_cache,
};
use queries::{PageList, ParsePage, RenderPage, TemplateFile};

const USAGE: &str = "\
usage: site [PATH] [--out DIR] [--watch | --serve [--port N]] [--cache DIR | --no-cache]
            [--pages N]

Without PATH, tells the story of incremental rebuilds on the built-in sample
site (a copy in target/site-src, built into target/site-out).

PATH is a site directory laid out like examples/site/sample:

  PATH/site.toml            optional: title = \"...\", tagline = \"...\"
  PATH/content/**/*.md      the pages: Markdown, with an optional front
                            matter (`title:`, `template:` naming a template
                            without .html; default `page`)
  PATH/templates/*.html     minijinja templates; index.html (the home page)
                            and page.html (the default) are required. Pages
                            see page.title, page.section, page.url, site.*,
                            content, root and section_nav; index.html sees
                            site.* and sections
  PATH/static/              copied as it is into the output (style.css...)
  PATH/templates/partials/  templates included by others ({% include
                            \"partials/x.html\" %}); any template may
                            {% extends %} another
  PATH/.picante/            the cache (written by this program)

Pages go to --out DIR (default PATH/../_site) as content/a/b.md -> DIR/a/b.html.

  --out DIR     where to write the HTML (default: PATH/../_site)
  --watch       after the first build, rebuild on every change (the file
                system's events, debounced; Ctrl-C to stop)
  --serve       --watch, and serve the output on http://127.0.0.1:PORT/;
                each open page reloads when its HTML changed (and only
                then), pages that fail show their error
  --port N      the port for --serve (default 8000; 0 picks a free one)
  --cache DIR   the cache that lets the next run start warm: DIR/cache.bin
                (page hashes, not pages; changes appended to cache.bin.log)
                and DIR/store/ (the rendered pages, named by their hash,
                linked into the output). Default: PATH/.picante, outside
                the output so that deploying it does not publish the cache;
                target/site-cache/ for the sample
  --no-cache    neither read nor write a cache
  --pages N     (sample only) grow the sample copy to N pages";

/// Where the cache goes: the default place, a given directory, or nowhere.
enum CacheArg {
    Default,
    Dir(PathBuf),
    Off,
}

struct Args {
    site: Option<PathBuf>,
    out: Option<PathBuf>,
    watch: bool,
    serve: bool,
    /// `--port`, for `--serve`.
    port: Option<u16>,
    cache: CacheArg,
    pages: usize,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        site: None,
        out: None,
        watch: false,
        serve: false,
        port: None,
        cache: CacheArg::Default,
        pages: SAMPLE_PAGES,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--watch" => args.watch = true,
            "--serve" => args.serve = true,
            "--port" => {
                let n = it.next().ok_or("--port needs a number")?;
                let port = n
                    .parse()
                    .map_err(|_| format!("--port: {n:?} is not a port number (0 to 65535)"))?;
                args.port = Some(port);
            }
            "--out" => args.out = Some(it.next().ok_or("--out needs a directory")?.into()),
            "--cache" => {
                args.cache = CacheArg::Dir(it.next().ok_or("--cache needs a directory")?.into());
            }
            "--no-cache" => args.cache = CacheArg::Off,
            "--pages" => {
                let n = it.next().ok_or("--pages needs a number")?;
                args.pages = n
                    .parse()
                    .map_err(|_| format!("--pages: {n:?} is not a number"))?;
                if args.pages < SAMPLE_PAGES {
                    return Err(format!("--pages must be at least {SAMPLE_PAGES}").into());
                }
            }
            flag if flag.starts_with('-') => {
                return Err(format!("unknown option {flag}\n\n{USAGE}").into());
            }
            path if args.site.is_none() => args.site = Some(path.into()),
            extra => return Err(format!("unexpected argument {extra:?}\n\n{USAGE}").into()),
        }
    }
    if args.port.is_some() && !args.serve {
        return Err("--port goes with --serve".into());
    }
    Ok(Some(args))
}

/// The port `--serve` listens on without `--port`.
const DEFAULT_PORT: u16 = 8000;

/// What to do after the first build.
#[derive(Clone, Copy)]
enum Then {
    Exit,
    Watch,
    Serve(u16),
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match parse_args() {
        Ok(None) => {
            println!("{USAGE}");
            Ok(())
        }
        Ok(Some(args)) => run(args).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn then(args: &Args) -> Then {
    match (args.serve, args.watch) {
        (true, _) => Then::Serve(args.port.unwrap_or(DEFAULT_PORT)),
        (false, true) => Then::Watch,
        (false, false) => Then::Exit,
    }
}

async fn run(args: Args) -> Result<()> {
    let cache_at = |default: PathBuf| match &args.cache {
        CacheArg::Default => Some(default),
        CacheArg::Dir(dir) => Some(dir.clone()),
        CacheArg::Off => None,
    };
    match &args.site {
        Some(site) => {
            let site = std::fs::canonicalize(site)
                .map_err(|e| format!("cannot open {}: {e}", site.display()))?;
            let out = match &args.out {
                Some(out) => out.clone(),
                None => site
                    .parent()
                    .ok_or("the site has no parent directory; pass --out DIR")?
                    .join("_site"),
            };
            println!("Building {} into {}", site.display(), out.display());
            // Beside the sources, not in the output: deploying the output
            // must not publish the cache.
            let cache = cache_at(site.join(".picante"));
            build_site(&site, out, cache, then(&args)).await
        }
        None => {
            let (src, out) = prepare_sample(args.pages)?;
            let out = args.out.clone().unwrap_or(out);
            // One cache per sample size, so that alternating sizes stays warm.
            let cache = cache_at(target_dir().join(match args.pages {
                SAMPLE_PAGES => "site-cache".to_string(),
                n => format!("site-cache-{n}"),
            }));
            if args.watch || args.serve {
                println!(
                    "Building a copy of the sample site, {} → {}",
                    src.display(),
                    out.display()
                );
                build_site(&src, out, cache, then(&args)).await
            } else {
                story(&src, &out, cache).await
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The story: what each edit costs, checked against what picante reports.
// ---------------------------------------------------------------------------

/// Pages in the built-in sample.
const SAMPLE_PAGES: usize = 30;

/// The files the story edits, relative to the site root.
const POST: &str = "content/blog/market-day.md";
const PARTIAL: &str = "templates/partials/sidebar.html";
const PAGE: &str = "content/peppers/habanero.md";

/// `cache`: the directory that the previous run left (read in step 0) and
/// that this run leaves for the next; `None` (--no-cache) uses a scratch
/// directory that is deleted at the end.
async fn story(src: &Path, out: &Path, cache: Option<PathBuf>) -> Result<()> {
    println!("picante site example: a static site generator as a graph of async queries.");
    println!(
        "Sources: {} (a scratch copy of examples/site/sample; the story edits it)",
        src.display()
    );
    println!("Output:  {}", out.display());
    let keep = cache.is_some();
    let cache_dir = match cache {
        Some(dir) => dir,
        None => scratch_dir(),
    };
    let note = if keep {
        ""
    } else {
        " (--no-cache: a scratch directory)"
    };
    println!(
        "Cache:   {}{note}: cache.bin holds page hashes, store/ the pages",
        cache_dir.display()
    );
    let store = Cache::new(cache_dir.clone()).store()?;
    println!();
    println!("Per step, for each query kind: how many times its body was executed, how many");
    println!("of those executions were cut off (same value as before, so nothing downstream");
    println!("re-ran), and how many reads reused a memo without running the body: revalidated");
    println!("(checked against a new revision, possibly by several tasks at once) or hit");
    println!("(already checked at this revision).");

    // 0. The cache of the previous run, if any.
    heading("0. Warm start from the cache of the previous run");
    if keep {
        warm_start(src, out, &cache_dir, &store).await?;
    } else {
        println!("  Skipped: with --no-cache, this run neither reads a cache nor leaves one.");
    }

    // 1. Cold build.
    heading("1. Cold build: every query runs once");
    println!("  A fresh database, without the cache: the store and the output directory are");
    println!("  emptied first, so nothing is reused. The scan reads every file concurrently and");
    println!("  sets them as inputs in one batch; then every page renders on its own task, all");
    println!("  on one snapshot of the database, and puts its HTML in the store; the output");
    println!("  step links each page from the store into the output directory. Then the");
    println!("  database is saved to the cache.");
    // The old store and output are moved aside, and deleted at the end.
    let aside = [cache_dir.join("store.old"), out.with_extension("old")];
    store
        .clear(&aside[0])
        .map_err(|e| format!("cannot empty {}: {e}", store.dir().display()))?;
    let _ = std::fs::remove_dir_all(&aside[1]);
    if out.exists() {
        std::fs::rename(out, &aside[1])
            .map_err(|e| format!("cannot move {} aside: {e}", out.display()))?;
    }
    let start = Instant::now();
    let db = queries::database(&store)?;
    let mut scanner = Scanner::new(src)?;
    let mut output = Output::new(out.to_path_buf(), store.clone()).with_static(src.join("static"));
    let s = step(&db, &mut scanner, &mut output, true, || Ok(())).await?;
    let cold_time = start.elapsed();
    let n = s.build.pages as u64;
    check("ParsePage executions", s.delta.executed("ParsePage"), n)?;
    check("RenderPage executions", s.delta.executed("RenderPage"), n)?;
    check("SiteIndex executions", s.delta.executed("SiteIndex"), 1)?;
    check("files written", s.build.written.len() as u64, n + 1)?;
    let mut cache = Cache::new(cache_dir.clone());
    let (saved, line) = cache.save(&db).await?;
    println!("  {line}");
    // Every memo is saved: none failed, and every kind is persistent.
    check("memos saved", saved.memos as u64, s.delta.total_executed())?;
    check("memos not saved", saved.skipped_memos as u64, 0)?;
    let templates = db.inputs::<TemplateFile>()?.len() as u64;
    // Pages, templates, site.toml, the page list and the scanner's stamps.
    check("inputs saved", saved.inputs as u64, n + templates + 3)?;

    // 2. Restart.
    heading("2. Restart: a new process starts warm from the cache");
    println!("  Drop the database, build a new one and load the file into it. A new scanner");
    println!("  compares each file's stamp with the one saved in the cache and re-reads only");
    println!("  the files changed since (here: none, or those just written, to be safe), so");
    println!("  nothing executes. Every page's value is a hash; each output file is checked");
    println!("  against the store and found to be that page already: no file is written.");
    drop((db, scanner, output));
    let start = Instant::now();
    let db = queries::database(&store)?;
    let mut cache = Cache::new(cache_dir.clone());
    let (loaded, line) = cache.load(&db, &store).await?;
    println!("  {line}");
    check("memos loaded", loaded.memos as u64, saved.memos as u64)?;
    check("inputs loaded", loaded.inputs as u64, saved.inputs as u64)?;
    let mut scanner = Scanner::new(src)?;
    let mut output = Output::new(out.to_path_buf(), store.clone()).with_static(src.join("static"));
    output.resume(&db)?;
    let s = step(&db, &mut scanner, &mut output, true, || Ok(())).await?;
    let warm_time = start.elapsed();
    check("executions", s.delta.total_executed(), 0)?;
    check("files written", s.build.written.len() as u64, 0)?;
    print_figures(cold_time, warm_time, &cache, &store, out);

    // 3. Nothing changed.
    heading("3. Rebuild with no change: every page is a memo hit");
    println!("  The scan re-sets inputs to equal values, which picante ignores: no new");
    println!("  revision, so every memo is still valid as it is. From here on, each build");
    println!("  appends what it changed (inputs set, memos executed) to the cache's log.");
    let s = step(&db, &mut scanner, &mut output, false, || Ok(())).await?;
    check("executions", s.delta.total_executed(), 0)?;
    check("files written", s.build.written.len() as u64, 0)?;
    append(&db, &mut cache, &s).await?;

    // 4a. Body edit.
    heading(&format!("4a. Edit the body of {POST}"));
    println!("  ParsePage re-runs for that file, then PageTitle, which returns the same title:");
    println!("  cut off, so the navigation and the index are not rebuilt. One page re-renders.");
    let s = step(&db, &mut scanner, &mut output, false, || {
        replace(src, POST, "forty bottles", "fifty bottles")
    })
    .await?;
    check("ParsePage executions", s.delta.executed("ParsePage"), 1)?;
    check("PageTitle cutoffs", s.delta.cut_off("PageTitle"), 1)?;
    check("SiteNav executions", s.delta.executed("SiteNav"), 0)?;
    check("RenderPage executions", s.delta.executed("RenderPage"), 1)?;
    check("SiteIndex executions", s.delta.executed("SiteIndex"), 0)?;
    check_list("files written", &s.build.written, &["blog/market-day.html"])?;
    append(&db, &mut cache, &s).await?;

    // 4b. Title edit.
    heading(&format!("4b. Edit the title of {POST}"));
    println!("  Now PageTitle changes, so SiteNav and the index re-run. SectionNav (the sidebar");
    println!("  list of a section) re-runs for the sections that show one, and is cut off: the");
    println!("  blog has no sidebar, so no other page re-renders.");
    let s = step(&db, &mut scanner, &mut output, false, || {
        replace(src, POST, "title: Market day", "title: Market day in June")
    })
    .await?;
    check("ParsePage executions", s.delta.executed("ParsePage"), 1)?;
    check("SiteNav executions", s.delta.executed("SiteNav"), 1)?;
    check(
        "SectionNav cutoffs",
        s.delta.cut_off("SectionNav"),
        s.delta.executed("SectionNav"),
    )?;
    check("RenderPage executions", s.delta.executed("RenderPage"), 1)?;
    check("SiteIndex executions", s.delta.executed("SiteIndex"), 1)?;
    check_list(
        "files written",
        &s.build.written,
        &["blog/market-day.html", "index.html"],
    )?;
    append(&db, &mut cache, &s).await?;

    // 5. Partial edit.
    heading(&format!("5. Edit the partial {PARTIAL}"));
    println!("  minijinja's loader read every template a render used through `cx.input`: the");
    println!("  page's template, what it extends, what it includes. So picante knows which");
    println!("  renders read the sidebar, and re-renders exactly those pages.");
    let sidebar_pages = pages_including(&db, src, "sidebar").await?;
    let s = step(&db, &mut scanner, &mut output, false, || {
        replace(
            src,
            PARTIAL,
            "<h2>In {{ page.section }}</h2>",
            "<h2>More {{ page.section }}</h2>",
        )
    })
    .await?;
    let rerendered = rendered_at_current_revision(&db).await?;
    check_list("re-rendered pages", &rerendered, &sidebar_pages)?;
    check(
        "RenderPage executions",
        s.delta.executed("RenderPage"),
        sidebar_pages.len() as u64,
    )?;
    check("SiteIndex executions", s.delta.executed("SiteIndex"), 0)?;
    println!(
        "  Re-rendered {} of {} pages, exactly those whose template includes the sidebar:",
        rerendered.len(),
        s.build.pages
    );
    print_grouped(&rerendered);
    println!(
        "  Not re-rendered: {} pages and the index.",
        s.build.pages - rerendered.len()
    );
    if let Some(first) = rerendered.first()
        && let Some(info) = db.inspect::<RenderPage>(first)?
    {
        println!("  Why did RenderPage({first:?}) run? {}", info.reason);
    }
    append(&db, &mut cache, &s).await?;

    // 6. Whitespace-only edit.
    heading(&format!("6. Whitespace-only edit of {PAGE}"));
    println!("  The file changed, so ParsePage re-runs; the HTML it produces is identical, so");
    println!("  it is cut off and nothing downstream re-runs: 0 renders, 0 files written.");
    let s = step(&db, &mut scanner, &mut output, false, || {
        replace(src, PAGE, "then stays.\n", "then stays.   \n\n\n")
    })
    .await?;
    check("ParsePage executions", s.delta.executed("ParsePage"), 1)?;
    check("ParsePage cutoffs", s.delta.cut_off("ParsePage"), 1)?;
    check("RenderPage executions", s.delta.executed("RenderPage"), 0)?;
    check("files written", s.build.written.len() as u64, 0)?;
    append(&db, &mut cache, &s).await?;

    // 7. Undo, compact.
    heading("7. Undo the three edits, then compact the cache");
    println!("  The edited files get their original text back, in one batch. The post and the");
    println!("  sidebar pages re-render, the index shows the old title again, and the");
    println!("  whitespace revert is cut off once more. Then a full save folds the log into a");
    println!("  new base: the cache holds the sample as it started, ready for the next run.");
    let mut expected: Vec<String> = sidebar_pages.clone();
    let post = POST.strip_prefix("content/").unwrap_or(POST).to_string();
    if !expected.contains(&post) {
        expected.push(post);
    }
    expected.sort();
    let s = step(&db, &mut scanner, &mut output, false, || {
        restore(src, &[POST, PARTIAL, PAGE])
    })
    .await?;
    check("ParsePage executions", s.delta.executed("ParsePage"), 2)?;
    check("ParsePage cutoffs", s.delta.cut_off("ParsePage"), 1)?;
    check("SiteNav executions", s.delta.executed("SiteNav"), 1)?;
    check("SiteIndex executions", s.delta.executed("SiteIndex"), 1)?;
    check_list(
        "re-rendered pages",
        &rendered_at_current_revision(&db).await?,
        &expected,
    )?;
    let mut written: Vec<String> = expected.iter().map(|p| queries::url_of(p)).collect();
    written.push("index.html".to_string());
    written.sort();
    check_list("files written", &s.build.written, &written)?;
    append(&db, &mut cache, &s).await?;
    let (log, appends) = cache.log();
    let (compacted, line) = cache.save(&db).await?;
    println!(
        "  compacted the log ({}, {}) into a new base:",
        driver::plural(appends, "append"),
        driver::size(log)
    );
    println!("  {line}");
    check("memos saved", compacted.memos as u64, saved.memos as u64)?;
    check("inputs saved", compacted.inputs as u64, saved.inputs as u64)?;

    for dir in &aside {
        let _ = std::fs::remove_dir_all(dir);
    }

    println!();
    println!("Every count above was checked by the example itself.");
    println!(
        "Open {} in a browser, or try `-- --serve` and edit files under {}.",
        out.join("index.html").display(),
        src.display()
    );
    if keep {
        println!("Run the example again: its step 0 starts warm from the cache this run left.");
    } else {
        let _ = std::fs::remove_dir_all(&cache_dir);
    }
    Ok(())
}

/// Step 0: a new process loads the cache that the previous run left.
async fn warm_start(src: &Path, out: &Path, cache_dir: &Path, store: &store::Store) -> Result<()> {
    let db = queries::database(store)?;
    let mut cache = Cache::new(cache_dir.to_path_buf());
    let (loaded, line) = cache.load(&db, store).await?;
    println!("  {line}");
    if !loaded.loaded {
        println!("  This run builds cold below and leaves a cache; run the example again");
        println!("  and this step loads it and rebuilds the site without executing anything.");
        return Ok(());
    }
    println!("  A new process, its database loaded from the file. The previous run left");
    println!("  the files as they are now (unless they were edited in --watch), so the");
    println!("  scan sets every input to the value it already has: all the memos are");
    println!("  reused, none executes. The output directory is new, so every page is");
    println!("  linked into it from the store: written, but not rendered.");
    let mut scanner = Scanner::new(src)?;
    let mut output = Output::new(out.to_path_buf(), store.clone()).with_static(src.join("static"));
    output.resume(&db)?;
    let s = step(&db, &mut scanner, &mut output, true, || Ok(())).await?;
    if s.changed.is_empty() && loaded.dropped_kinds.is_empty() && loaded.dropped_memos == 0 {
        check("executions", s.delta.total_executed(), 0)
    } else {
        println!("  (This cache was left by edits in --watch, or by another build of the");
        println!("  example: what changed re-ran, as it should. The rest of the story does");
        println!("  not use it.)");
        Ok(())
    }
}

/// What one step of the story did.
struct Step {
    /// Per-query counters.
    delta: Delta,
    build: BuildReport,
    /// Files whose content changed, per the scan.
    changed: Vec<String>,
}

/// Applies `edit` to the files, syncs the inputs, builds, and prints the
/// step's table.
async fn step(
    db: &Database,
    scanner: &mut Scanner,
    output: &mut Output,
    progress: bool,
    edit: impl FnOnce() -> Result<()>,
) -> Result<Step> {
    edit()?;
    // Counters are cumulative over the database's life: a step's work is the
    // difference between two readings.
    let before = db.stats();
    let start = Instant::now();
    let sync = scanner.sync(db).await?;
    if let Some(e) = sync.errors.first() {
        return Err(e.clone().into());
    }
    let scanned = Instant::now();
    let build = driver::build(db, output, progress).await?;
    let scan = scanned - start;
    let delta = Delta::between(&before, &db.stats());
    delta.print();
    print_summary(&sync.changed, &build, scan);
    if let Some((page, e)) = build.failed.first() {
        return Err(format!("{page}: {e}").into());
    }
    Ok(Step {
        delta,
        changed: sync.changed,
        build,
    })
}

/// Appends the step's changes to the cache's log, and checks that they are
/// exactly the inputs that changed and the memos that executed.
async fn append(db: &Database, cache: &mut Cache, s: &Step) -> Result<()> {
    let (report, line) = cache.append(db).await?;
    println!("  {line}");
    // The files that changed, and the scanner's stamps if any did.
    let stamps = u64::from(!s.changed.is_empty());
    check(
        "inputs appended",
        report.inputs as u64,
        s.changed.len() as u64 + stamps,
    )?;
    check(
        "memos appended",
        report.memos as u64,
        s.delta.total_executed(),
    )
}

// ---------------------------------------------------------------------------
// A site of your own (or the sample with --watch or --serve): load the
// cache, build, save; then, with --watch or --serve, rebuild on change.
// ---------------------------------------------------------------------------

async fn build_site(src: &Path, out: PathBuf, cache: Option<PathBuf>, then: Then) -> Result<()> {
    // Without a cache, the rendered pages still go through a store: a scratch
    // one, deleted at the end (the output keeps its links to the pages).
    let scratch = match &cache {
        Some(_) => None,
        None => Some(Scratch(scratch_dir())),
    };
    let dir = match (&cache, &scratch) {
        (Some(dir), _) => dir.clone(),
        (None, Some(scratch)) => scratch.0.clone(),
        (None, None) => return Err("no cache directory".into()),
    };
    let store = Cache::new(dir).store()?;
    let db = queries::database(&store)?;
    let mut cache = cache.map(Cache::new);
    match &mut cache {
        Some(cache) => println!("{}", cache.load(&db, &store).await?.1),
        None => println!("cold start: --no-cache"),
    }
    let mut scanner = Scanner::new(src)?;
    // Listen and watch from before the first build: a port in use is said at
    // once, and no edit made during the build is missed.
    let listener = match then {
        Then::Serve(port) => Some(serve::listen(port).await?),
        Then::Exit | Then::Watch => None,
    };
    let watcher = match then {
        Then::Exit => None,
        Then::Watch | Then::Serve(_) => Some(watch::SourceWatcher::new(src)?),
    };
    let mut output = Output::new(out, store.clone()).with_static(src.join("static"));
    output.resume(&db)?;
    let before = db.stats();
    let start = Instant::now();
    let sync = scanner.sync(&db).await?;
    let scanned = Instant::now();
    let build = driver::build(&db, &mut output, true).await?;
    let scan = scanned - start;
    let delta = Delta::between(&before, &db.stats());
    delta.print();
    print_summary(&sync.changed, &build, scan);
    for e in &sync.errors {
        eprintln!("  error: {e}");
    }
    print_failures(&build);
    // A warm start that found nothing to do has nothing to append.
    if sync.new_revision || delta.total_executed() > 0 {
        update_cache(&db, &mut cache).await;
    } else if cache.is_some() {
        println!("  cache: up to date");
    }
    let failed = build.failed.len() + sync.errors.len();
    let mut site = watch::Site {
        db,
        scanner,
        output,
        cache,
    };
    let ctrl_c = async {
        // If Ctrl-C cannot be caught, run until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match (watcher, listener) {
        (Some(watcher), Some(listener)) => {
            let server = serve::Server::new(site, watcher, listener)?;
            println!();
            println!(
                "Serving {} on http://{}/ ; rebuilding on change (Ctrl-C to stop)",
                server.root().display(),
                server.addr()
            );
            server.run(ctrl_c).await
        }
        (Some(watcher), None) => {
            println!();
            println!(
                "Watching {} (Ctrl-C to stop)",
                site.scanner.root().display()
            );
            watch::run(&mut site, watcher, ctrl_c, |_, _| {}).await;
            println!();
            site.close().await
        }
        _ if failed > 0 => Err(format!("{failed} page(s) failed").into()),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// The figures the lean cache is for: a warm start against a cold build, and
/// what the cache keeps against what the output holds.
fn print_figures(cold: Duration, warm: Duration, cache: &Cache, store: &store::Store, out: &Path) {
    let (blobs, store_bytes) = store.usage();
    let (cache_bytes, out_bytes) = (cache.bytes(), dir_size(out));
    println!(
        "  Cold build (new database: scan, render, write):        {:>9}",
        millis(cold)
    );
    println!(
        "  Warm start (load the cache, scan, revalidate, check):  {:>9}  (cold ÷ warm: {:.1}×)",
        millis(warm),
        cold.as_secs_f64() / warm.as_secs_f64().max(1e-9)
    );
    println!(
        "  Cache {} (cache.bin, its log) for an output of {} ({:.1}%); the store holds {} \
         ({}), linked into the output",
        driver::size(cache_bytes),
        driver::size(out_bytes),
        100.0 * cache_bytes as f64 / (out_bytes as f64).max(1.0),
        driver::plural(blobs, "page"),
        driver::size(store_bytes),
    );
    if out_bytes < 1_000_000 {
        println!("  (On a site this small both are fixed costs; try `-- --pages 3000`.)");
    }
}

/// Total size of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => dirs.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A directory of this process under the system's temp directory.
fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("picante-site-{}", std::process::id()))
}

/// Deletes its directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn heading(title: &str) {
    println!();
    println!("── {title}");
}

/// Fails the example if a count is not what the story claims.
fn check(what: &str, got: u64, want: u64) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!("story check failed: expected {what} = {want}, got {got}").into())
    }
}

fn check_list(what: &str, got: &[String], want: &[impl AsRef<str>]) -> Result<()> {
    let want: Vec<&str> = want.iter().map(|s| s.as_ref()).collect();
    if got.iter().map(String::as_str).eq(want.iter().copied()) {
        Ok(())
    } else {
        Err(format!("story check failed: expected {what} {want:?}, got {got:?}").into())
    }
}

/// Replaces `from` by `to` in the file `rel` under `root`.
fn replace(root: &Path, rel: &str, from: &str, to: &str) -> Result<()> {
    let path = root.join(rel);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !text.contains(from) {
        return Err(format!("{} does not contain {from:?}", path.display()).into());
    }
    std::fs::write(&path, text.replacen(from, to, 1))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// An independent answer to "which pages include partial `name`?", straight
/// from the files: pages whose template mentions `"partials/<name>.html"`,
/// directly or through a template it mentions (`extends`, `include`).
async fn pages_including(db: &Database, src: &Path, name: &str) -> Result<Vec<String>> {
    let partial = format!("partials/{name}.html");
    let mut out = Vec::new();
    for path in db.input::<PageList>(&())?.iter() {
        let page = db.query::<ParsePage>(path.clone()).await?;
        let mut todo = vec![format!("{}.html", page.template)];
        let mut seen = BTreeSet::new();
        while let Some(template) = todo.pop() {
            if template == partial {
                out.push(path.clone());
                break;
            }
            if !seen.insert(template.clone()) {
                continue;
            }
            let file = src.join("templates").join(&template);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            // Every quoted "....html" in the text names a template.
            for quoted in text.split('"').skip(1).step_by(2) {
                if quoted.ends_with(".html") && !quoted.contains(' ') {
                    todo.push(quoted.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// The pages whose RenderPage body ran at the current revision, from the
/// memos' own records (`View::inspect`).
async fn rendered_at_current_revision(db: &Database) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for path in db.input::<PageList>(&())?.iter() {
        if let Some(info) = db.inspect::<RenderPage>(path)?
            && info.executed_at == db.revision()
        {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Prints page paths grouped by section.
fn print_grouped(paths: &[String]) {
    let sections: BTreeSet<&str> = paths.iter().map(|p| queries::section_of(p)).collect();
    for section in sections {
        let names: Vec<&str> = paths
            .iter()
            .filter(|p| queries::section_of(p) == section)
            .map(|p| {
                let name = p.rsplit('/').next().unwrap_or(p);
                name.strip_suffix(".md").unwrap_or(name)
            })
            .collect();
        // Large sites: the first few names of each section.
        const SHOWN: usize = 12;
        let more = match names.len() {
            n if n > SHOWN => format!(", … and {} more", n - SHOWN),
            _ => String::new(),
        };
        let shown = &names[..names.len().min(SHOWN)];
        println!(
            "    {section}/ ({}): {}{more}",
            names.len(),
            shown.join(", ")
        );
    }
}

/// The built-in sample site.
fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/site/sample")
}

/// The repository's `target` directory, home of the sample's scratch copy,
/// output and cache.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// Copies the files `rels` from the built-in sample back into `root`.
fn restore(root: &Path, rels: &[&str]) -> Result<()> {
    for rel in rels {
        let (from, to) = (sample_dir().join(rel), root.join(rel));
        std::fs::copy(&from, &to)
            .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Copies the built-in sample to `target/site-src` (grown to `pages` pages)
/// and returns it with the default output directory, `target/site-out`.
fn prepare_sample(pages: usize) -> Result<(PathBuf, PathBuf)> {
    let sample = sample_dir();
    if !sample.is_dir() {
        return Err(format!(
            "the built-in sample is missing at {}; pass a site directory",
            sample.display()
        )
        .into());
    }
    let (src, out) = (target_dir().join("site-src"), target_dir().join("site-out"));
    for dir in [&src, &out] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
        }
    }
    copy_dir(&sample, &src)?;

    // Grow the copy: page `x.md` is duplicated as `x-2.md`, `x-3.md`, ...
    let content = src.join("content");
    let mut originals = Vec::new();
    for section in std::fs::read_dir(&content)? {
        let section = section?.path();
        for page in std::fs::read_dir(&section)? {
            originals.push(page?.path());
        }
    }
    originals.sort();
    let mut count = originals.len();
    'grow: for copy in 2.. {
        for original in &originals {
            if count >= pages {
                break 'grow;
            }
            let text = std::fs::read_to_string(original)?;
            let text: String = text
                .split_inclusive('\n')
                .map(|line| match line.strip_prefix("title: ") {
                    Some(title) => format!("title: {} ({copy})\n", title.trim_end()),
                    None => line.to_string(),
                })
                .collect();
            let stem = original
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("page");
            let path = original.with_file_name(format!("{stem}-{copy}.md"));
            std::fs::write(&path, text)?;
            same_mtime(original, &path)?;
            count += 1;
        }
    }
    Ok((src, out))
}

/// Gives `to` the modification time of `from`. The scratch copy of the
/// sample keeps the sample's times, as a checkout would: the scanner's
/// stamps then tell a warm start that the files did not change since the
/// last run (a fresh time on every copy would make it re-read them all).
fn same_mtime(from: &Path, to: &Path) -> Result<()> {
    let modified = std::fs::metadata(from)?.modified()?;
    std::fs::File::options()
        .write(true)
        .open(to)?
        .set_modified(modified)
        .map_err(|e| format!("cannot set the time of {}: {e}", to.display()))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            same_mtime(&entry.path(), &target)?;
        }
    }
    Ok(())
}
