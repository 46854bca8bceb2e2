//! A static site generator on picante.
//!
//! ```text
//! cargo run --release --example site                 # the story, on the built-in sample site
//! cargo run --release --example site -- --pages 3000 # the same story on a 3 000-page copy
//! cargo run --release --example site -- --watch      # build the sample, then rebuild on change
//! cargo run --release --example site -- PATH [--out DIR] [--watch]
//! ```
//!
//! Read it in this order: `queries.rs` (the incremental pipeline, one picante
//! query per step), `driver.rs` (scan → inputs, build on a snapshot, write),
//! then the story below. `markup.rs` holds the plain, non-incremental helpers.

mod driver;
mod markup;
mod queries;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use picante::Database;

use driver::{BuildReport, Delta, Output, Result, Scanner};
use queries::{PageList, ParsePage, RenderPage};

const USAGE: &str = "\
usage: site [PATH] [--out DIR] [--watch] [--pages N]

Without PATH, tells the story of incremental rebuilds on the built-in sample
site (a copy in target/site-src, built into target/site-out).

  PATH       a site directory: PATH/content/**/*.md (Markdown with front
             matter `title:` and `template:`) and PATH/templates/*.html
             (templates with {{var}} and {{> partial}} includes of
             PATH/templates/partials/*.html)
  --out DIR  where to write the HTML (default: PATH/../_site)
  --watch    after the first build, poll for changes and rebuild
  --pages N  (sample only) grow the sample copy to N pages";

struct Args {
    site: Option<PathBuf>,
    out: Option<PathBuf>,
    watch: bool,
    pages: usize,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        site: None,
        out: None,
        watch: false,
        pages: SAMPLE_PAGES,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--watch" => args.watch = true,
            "--out" => args.out = Some(it.next().ok_or("--out needs a directory")?.into()),
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
    Ok(Some(args))
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

async fn run(args: Args) -> Result<()> {
    // One database for the whole run: it holds the inputs and every memo.
    let db = queries::database()?;
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
            let mut scanner = Scanner::new(&site)?;
            let mut output = Output::new(out);
            println!(
                "Building {} into {}",
                site.display(),
                output.dir().display()
            );
            let failed = cold_build(&db, &mut scanner, &mut output).await?;
            if args.watch {
                watch(&db, &mut scanner, &mut output).await
            } else if failed > 0 {
                Err(format!("{failed} page(s) failed").into())
            } else {
                Ok(())
            }
        }
        None => {
            let (src, out) = prepare_sample(args.pages)?;
            let mut scanner = Scanner::new(&src)?;
            let mut output = Output::new(args.out.clone().unwrap_or(out));
            if args.watch {
                println!(
                    "Building a copy of the sample site, {} → {}",
                    src.display(),
                    output.dir().display()
                );
                cold_build(&db, &mut scanner, &mut output).await?;
                watch(&db, &mut scanner, &mut output).await
            } else {
                story(&db, &mut scanner, &mut output).await
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The story: what each edit costs, checked against what picante reports.
// ---------------------------------------------------------------------------

/// Pages in the built-in sample.
const SAMPLE_PAGES: usize = 30;

async fn story(db: &Database, scanner: &mut Scanner, output: &mut Output) -> Result<()> {
    let src = scanner.root().to_path_buf();
    println!("picante site example: a static site generator as a graph of async queries.");
    println!(
        "Sources: {} (a scratch copy of examples/site/sample; the story edits it)",
        src.display()
    );
    println!("Output:  {}", output.dir().display());
    println!();
    println!("Per step, for each query kind: how many times its body was executed, how many");
    println!("of those executions were cut off (same value as before, so nothing downstream");
    println!("re-ran), and how many memos were reused without running the body: revalidated");
    println!("(checked against a new revision) or hit (already checked at this revision).");

    // 1. Cold build.
    heading("1. Cold build: every query runs once");
    println!("  The scan reads every file concurrently and sets them as inputs in one batch;");
    println!("  then every page renders on its own task, all on one snapshot of the database.");
    let (d, b) = step(db, scanner, output, true, || Ok(())).await?;
    let n = b.pages as u64;
    check("ParsePage executions", d.executed("ParsePage"), n)?;
    check("RenderPage executions", d.executed("RenderPage"), n)?;
    check("SiteIndex executions", d.executed("SiteIndex"), 1)?;
    check("files written", b.written.len() as u64, n + 1)?;

    // 2. Nothing changed.
    heading("2. Rebuild with no change: every page is a memo hit");
    println!("  The scan re-sets inputs to equal values, which picante ignores: no new");
    println!("  revision, so every memo is still valid as it is.");
    let (d, b) = step(db, scanner, output, false, || Ok(())).await?;
    check("executions", d.total_executed(), 0)?;
    check("files written", b.written.len() as u64, 0)?;

    // 3a. Body edit.
    let post = "content/blog/market-day.md";
    heading(&format!("3a. Edit the body of {post}"));
    println!("  ParsePage re-runs for that file, then PageTitle, which returns the same title:");
    println!("  cut off, so the navigation and the index are not rebuilt. One page re-renders.");
    let (d, b) = step(db, scanner, output, false, || {
        replace(&src, post, "forty bottles", "fifty bottles")
    })
    .await?;
    check("ParsePage executions", d.executed("ParsePage"), 1)?;
    check("PageTitle cutoffs", d.cut_off("PageTitle"), 1)?;
    check("SiteNav executions", d.executed("SiteNav"), 0)?;
    check("RenderPage executions", d.executed("RenderPage"), 1)?;
    check("SiteIndex executions", d.executed("SiteIndex"), 0)?;
    check_list("files written", &b.written, &["blog/market-day.html"])?;

    // 3b. Title edit.
    heading(&format!("3b. Edit the title of {post}"));
    println!("  Now PageTitle changes, so SiteNav and the index re-run. SectionNav (the sidebar");
    println!("  list of a section) re-runs for the sections that show one, and is cut off: the");
    println!("  blog has no sidebar, so no other page re-renders.");
    let (d, b) = step(db, scanner, output, false, || {
        replace(&src, post, "title: Market day", "title: Market day in June")
    })
    .await?;
    check("ParsePage executions", d.executed("ParsePage"), 1)?;
    check("SiteNav executions", d.executed("SiteNav"), 1)?;
    check(
        "SectionNav cutoffs",
        d.cut_off("SectionNav"),
        d.executed("SectionNav"),
    )?;
    check("RenderPage executions", d.executed("RenderPage"), 1)?;
    check("SiteIndex executions", d.executed("SiteIndex"), 1)?;
    check_list(
        "files written",
        &b.written,
        &["blog/market-day.html", "index.html"],
    )?;

    // 4. Partial edit.
    let partial = "templates/partials/sidebar.html";
    heading(&format!("4. Edit the partial {partial}"));
    println!("  ResolvedTemplate read each include through `cx.query`, so picante knows which");
    println!("  templates included the sidebar, and which pages use those templates.");
    let expected = pages_including(db, &src, "sidebar").await?;
    let (d, b) = step(db, scanner, output, false, || {
        replace(
            &src,
            partial,
            "<h2>In {{section}}</h2>",
            "<h2>More {{section}}</h2>",
        )
    })
    .await?;
    let rerendered = rendered_at_current_revision(db).await?;
    check_list("re-rendered pages", &rerendered, &expected)?;
    check(
        "RenderPage executions",
        d.executed("RenderPage"),
        expected.len() as u64,
    )?;
    check("SiteIndex executions", d.executed("SiteIndex"), 0)?;
    println!(
        "  Re-rendered {} of {} pages, exactly those whose template includes the sidebar:",
        rerendered.len(),
        b.pages
    );
    print_grouped(&rerendered);
    println!(
        "  Not re-rendered: {} pages and the index.",
        b.pages - rerendered.len()
    );
    if let Some(first) = rerendered.first()
        && let Some(info) = db.inspect::<RenderPage>(first)?
    {
        println!("  Why did RenderPage({first:?}) run? {}", info.reason);
    }

    // 5. Whitespace-only edit.
    let page = "content/peppers/habanero.md";
    heading(&format!("5. Whitespace-only edit of {page}"));
    println!("  The file changed, so ParsePage re-runs; the HTML it produces is identical, so");
    println!("  it is cut off and nothing downstream re-runs: 0 renders, 0 files written.");
    let (d, b) = step(db, scanner, output, false, || {
        replace(&src, page, "then stays.\n", "then stays.   \n\n\n")
    })
    .await?;
    check("ParsePage executions", d.executed("ParsePage"), 1)?;
    check("ParsePage cutoffs", d.cut_off("ParsePage"), 1)?;
    check("RenderPage executions", d.executed("RenderPage"), 0)?;
    check("files written", b.written.len() as u64, 0)?;

    println!();
    println!("Every count above was checked by the example itself.");
    println!(
        "Open {} in a browser; try `-- --watch` and edit files under {}.",
        output.dir().join("index.html").display(),
        src.display()
    );
    Ok(())
}

/// Applies `edit` to the files, syncs the inputs, builds, and prints the
/// step's table. Returns the counter deltas and the build report.
async fn step(
    db: &Database,
    scanner: &mut Scanner,
    output: &mut Output,
    cold: bool,
    edit: impl FnOnce() -> Result<()>,
) -> Result<(Delta, BuildReport)> {
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
    let build = driver::build(db, output, cold).await?;
    let times = (scanned - start, scanned.elapsed());
    let delta = Delta::between(&before, &db.stats());
    delta.print();
    print_summary(&sync.changed, &build, times);
    if let Some((page, e)) = build.failed.first() {
        return Err(format!("{page}: {e}").into());
    }
    Ok((delta, build))
}

async fn cold_build(db: &Database, scanner: &mut Scanner, output: &mut Output) -> Result<usize> {
    let before = db.stats();
    let start = Instant::now();
    let sync = scanner.sync(db).await?;
    let scanned = Instant::now();
    let build = driver::build(db, output, true).await?;
    let times = (scanned - start, scanned.elapsed());
    Delta::between(&before, &db.stats()).print();
    print_summary(&sync.changed, &build, times);
    for e in &sync.errors {
        eprintln!("  error: {e}");
    }
    print_failures(&build);
    Ok(build.failed.len() + sync.errors.len())
}

/// One line per step: what changed, what was written, how long the scan
/// (listing and reading files) and the build (queries and writes) took.
fn print_summary(changed: &[String], build: &BuildReport, (scan, work): (Duration, Duration)) {
    let new = changed.iter().filter(|c| c.ends_with(" (new)")).count();
    let changed = match (changed.len(), new) {
        (0, _) => String::new(),
        (1, _) => format!("changed: {} · ", changed[0]),
        (n, new) if n == new => format!("{n} new files · "),
        (n, _) => format!("{n} files changed · "),
    };
    let deleted = match build.deleted.len() {
        0 => String::new(),
        n => format!(", {n} deleted"),
    };
    let written = match build.written.len() {
        1 => "1 file".to_string(),
        n => format!("{n} files"),
    };
    println!(
        "  {changed}{} pages · {written} written{deleted} · scan {:.1} ms, build {:.1} ms",
        build.pages,
        scan.as_secs_f64() * 1e3,
        work.as_secs_f64() * 1e3
    );
}

/// Prints failed pages, one line per distinct error (a broken partial fails
/// every page that includes it with the same memoized error).
fn print_failures(build: &BuildReport) {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for (page, e) in &build.failed {
        let message = e.to_string();
        match groups.iter_mut().find(|(m, _)| *m == message) {
            Some((_, pages)) => pages.push(page),
            None => groups.push((message, vec![page])),
        }
    }
    for (message, pages) in groups {
        match pages.as_slice() {
            [page] if message.contains(page) => eprintln!("  error: {message}"),
            [page] => eprintln!("  error: {page}: {message}"),
            [first, ..] => eprintln!("  error in {} pages ({first}, …): {message}", pages.len()),
            [] => {}
        }
    }
}

// ---------------------------------------------------------------------------
// --watch: poll, apply changes as one batch, rebuild.
// ---------------------------------------------------------------------------

async fn watch(db: &Database, scanner: &mut Scanner, output: &mut Output) -> Result<()> {
    println!();
    println!(
        "Watching {} (polling every 300 ms; Ctrl-C to stop)",
        scanner.root().display()
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last_errors = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
        let before = db.stats();
        let start = Instant::now();
        let sync = scanner.sync(db).await?;
        // An unreadable file is retried on every poll: report it once.
        if sync.errors != last_errors {
            for e in &sync.errors {
                eprintln!("  error: {e}");
            }
            last_errors = sync.errors.clone();
        }
        if !sync.new_revision {
            continue;
        }
        let scanned = Instant::now();
        let build = driver::build(db, output, false).await?;
        let times = (scanned - start, scanned.elapsed());
        println!();
        for file in &sync.changed {
            println!("  changed: {file}");
        }
        Delta::between(&before, &db.stats()).print();
        print_summary(&[], &build, times);
        for url in build.written.iter().take(10) {
            println!("    wrote {url}");
        }
        if build.written.len() > 10 {
            println!("    … and {} more", build.written.len() - 10);
        }
        print_failures(&build);
    }
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

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
/// from the files: pages whose template's text contains `{{> name}}`.
async fn pages_including(db: &Database, src: &Path, name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for path in db.input::<PageList>(&())?.iter() {
        let page = db.query::<ParsePage>(path.clone()).await?;
        let template = src
            .join("templates")
            .join(format!("{}.html", page.template));
        let text = std::fs::read_to_string(&template)
            .map_err(|e| format!("cannot read {}: {e}", template.display()))?;
        if text.contains(&format!("{{{{> {name}}}}}")) {
            out.push(path.clone());
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
        println!("    {section}/ ({}): {}", names.len(), names.join(", "));
    }
}

/// Copies the built-in sample to `target/site-src` (grown to `pages` pages)
/// and returns it with the default output directory, `target/site-out`.
fn prepare_sample(pages: usize) -> Result<(PathBuf, PathBuf)> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = manifest.join("examples/site/sample");
    if !sample.is_dir() {
        return Err(format!(
            "the built-in sample is missing at {}; pass a site directory",
            sample.display()
        )
        .into());
    }
    let (src, out) = (
        manifest.join("target/site-src"),
        manifest.join("target/site-out"),
    );
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
            std::fs::write(original.with_file_name(format!("{stem}-{copy}.md")), text)?;
            count += 1;
        }
    }
    Ok((src, out))
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
        }
    }
    Ok(())
}
