//! The renderer as a separate process, with tracked callbacks.
//!
//! ```text
//! cargo run --example plugin
//! ```
//!
//! The host (this process) owns a picante database of pages and templates.
//! Rendering is done by a plugin: this same binary started again with
//! `--child`, speaking RPC with [remoc] over its stdin/stdout (`rpc.rs`: a
//! `Renderer` trait the plugin serves and a `Host` trait the host serves).
//! Every render call carries a `HostClient`; while rendering a page, the
//! plugin calls back through it for the templates and partials it needs, and
//! the host answers each callback with a picante query made through the
//! `QueryCx` of the `RenderPage` execution that made the call (`host.rs`), so
//! picante records exactly which partials each page used, even though only
//! the plugin knew. Editing a partial then re-renders exactly the pages whose
//! plugin call asked for it.
//!
//! Step 6 starts a second plugin that exits in the middle of a call: the
//! query gets a clear error, memoized for that revision, and nothing hangs.
//! `cargo run --example plugin -- --crash-test` runs only that step.

mod child;
mod host;
mod rpc;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use picante::Database;

use host::{Page, PageSource, Plugin, RenderPage, TemplateFile, Traffic};

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        [] => host_story().await,
        ["--crash-test"] => crash_story().await,
        ["--child", rest @ ..] => {
            let exit_while_rendering = match rest {
                [] => None,
                ["--exit-while-rendering", page] => Some(page.to_string()),
                _ => {
                    eprintln!("plugin: unexpected arguments {rest:?}");
                    std::process::exit(2);
                }
            };
            let code = match child::run(exit_while_rendering).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            };
            // Not a return from main: the runtime would wait for the
            // blocking read on stdin that tokio's `stdin()` may have pending.
            std::process::exit(code);
        }
        _ => Err("usage: cargo run --example plugin [-- --crash-test]\n  \
                  (no arguments: the whole story; --crash-test: only step 6, \
                  the plugin dying mid-call)"
            .into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// The site: a few pages and templates, in memory.
// ---------------------------------------------------------------------------

/// `(path, template, title, body)`. Bodies may include partials too.
const PAGES: [(&str, &str, &str, &str); 10] = [
    (
        "index",
        "page",
        "Home",
        "<p>Hot sauce, slowly.</p>\n{{> newsletter}}",
    ),
    ("about", "page", "About us", "<p>Two cooks, one stove.</p>"),
    (
        "faq",
        "page",
        "FAQ",
        "<p>Seeds or ribs?</p>\n{{> safety-note}}",
    ),
    (
        "blog/first-batch",
        "post",
        "Our first batch",
        "<p>It started with habaneros.</p>\n{{> newsletter}}",
    ),
    (
        "blog/market-day",
        "post",
        "Market day",
        "<p>Forty bottles, gone by noon.</p>",
    ),
    (
        "blog/why-ferment",
        "post",
        "Why we ferment",
        "<p>Slow is the point.</p>\n{{> newsletter}}",
    ),
    (
        "recipes/classic-red",
        "recipe",
        "Classic red",
        "<p>Chillies, garlic, vinegar.</p>",
    ),
    (
        "recipes/mango-habanero",
        "recipe",
        "Mango habanero",
        "<p>Sweet first, hot second.</p>",
    ),
    (
        "recipes/harissa",
        "recipe",
        "Harissa",
        "<p>A paste more than a sauce.</p>",
    ),
    ("contact", "page", "Contact", "<p>Write to us.</p>"),
];

const TEMPLATES: [(&str, &str); 8] = [
    (
        "page",
        "<html><title>{{title}}</title>{{> header}}<main><h1>{{title}}</h1>{{content}}</main>{{> footer}}</html>",
    ),
    (
        "post",
        "<html><title>{{title}}</title>{{> header}}<article><h1>{{title}}</h1>{{> byline}}{{content}}</article>{{> footer}}</html>",
    ),
    (
        "recipe",
        "<html><title>{{title}}</title>{{> header}}<h1>{{title}}</h1>{{content}}{{> safety-note}}{{> footer}}</html>",
    ),
    (
        "header",
        "<header>Picante Pantry {{! the site name, shown on every page }}</header>",
    ),
    ("footer", "<footer>Built with picante.</footer>"),
    ("byline", "<p class=\"byline\">by the Pantry cooks</p>"),
    (
        "newsletter",
        "<aside>A new recipe every month: subscribe!</aside>",
    ),
    (
        "safety-note",
        "<p class=\"note\">Wear gloves when cutting chillies.</p>",
    ),
];

// ---------------------------------------------------------------------------
// The story.
// ---------------------------------------------------------------------------

/// Sets every page and template of the sample site, in one revision.
fn load_site(db: &Database) -> Result<()> {
    let mut batch = db.batch();
    for (path, template, title, body) in PAGES {
        let source = PageSource {
            template: template.into(),
            title: title.into(),
            body: body.into(),
        };
        batch.set::<Page>(path.into(), Arc::new(source));
    }
    for (name, text) in TEMPLATES {
        batch.set::<TemplateFile>(name.into(), text.into());
    }
    batch.commit()?;
    Ok(())
}

fn pid(plugin: &Plugin) -> String {
    plugin.pid().map_or("?".to_string(), |p| p.to_string())
}

async fn host_story() -> Result<()> {
    let plugin = Arc::new(Plugin::spawn(&[]).await?);
    let db = host::database(plugin.clone())?;
    println!("picante plugin example: pages are rendered by a separate process that calls");
    println!(
        "back into the host for templates, over remoc RPC. Plugin process: pid {}.",
        pid(&plugin)
    );
    load_site(&db)?;

    // 1. Cold render.
    heading("1. Render every page (all calls at once, over one remoc connection)");
    let step = render_all(&db, &plugin).await?;
    check("RenderPage executions", step.rendered.len(), PAGES.len())?;
    println!(
        "  {} render requests, {} callbacks answered through picante queries, up to {} \
         requests in flight at once.",
        step.traffic.requests, step.traffic.callbacks, step.traffic.peak_in_flight
    );
    let index = db.query::<RenderPage>("index".to_string()).await?;
    println!("  index → {}", index.replace('\n', ""));
    println!("  What each page's plugin call asked the host for, as picante recorded it:");
    let asked = recorded_partials(&db)?;
    for (page, partials) in &asked {
        println!("    {page:<24} {}", partials.join(", "));
    }
    // The recorded dependencies must be what the sources say.
    for (page, partials) in &asked {
        check_list(
            &format!("partials recorded for {page}"),
            partials,
            &expected_partials(page)?,
        )?;
    }

    // 2. Edit a partial used by some pages' bodies.
    heading("2. Edit the partial `newsletter`");
    let expected = pages_that_asked(&asked, "newsletter");
    println!(
        "  Pages whose plugin call asked for it in step 1: {}",
        expected.join(", ")
    );
    let step = edit(
        &db,
        &plugin,
        "newsletter",
        "<aside>Subscribe for a recipe a month.</aside>",
    )
    .await?;
    step.print(PAGES.len());
    check_list("re-rendered pages", &step.rendered, &expected)?;
    check(
        "RenderPage executions",
        step.executions[0].0 as usize,
        expected.len(),
    )?;
    check(
        "render requests",
        step.traffic.requests as usize,
        expected.len(),
    )?;
    if let Some(info) = db.inspect::<RenderPage>(&"index".to_string())? {
        println!("  Why did RenderPage(\"index\") run? {}", info.reason);
    }

    // 3. Edit only a comment.
    heading("3. Edit only a comment in the partial `header` (used by every page)");
    println!("  ResolvedPartial(\"header\") re-runs and returns the same text: cut off.");
    let step = edit(
        &db,
        &plugin,
        "header",
        "<header>Picante Pantry {{! the name of the site }}</header>",
    )
    .await?;
    step.print(PAGES.len());
    check("re-rendered pages", step.rendered.len(), 0)?;
    check("render requests", step.traffic.requests as usize, 0)?;

    // 4. A page starts using the partial.
    heading("4. Edit the body of `about` to include {{> newsletter}}");
    let about = PageSource {
        template: "page".into(),
        title: "About us".into(),
        body: "<p>Two cooks, one stove.</p>\n{{> newsletter}}".into(),
    };
    db.set::<Page>("about".into(), Arc::new(about))?;
    let step = render_all(&db, &plugin).await?;
    step.print(PAGES.len());
    check_list("re-rendered pages", &step.rendered, &["about"])?;
    let asked = recorded_partials(&db)?;
    let about_asked = asked.get("about").cloned().unwrap_or_default();
    println!(
        "  `about` now asked for: {} (a new dependency, discovered by the plugin)",
        about_asked.join(", ")
    );
    check_list(
        "partials recorded for about",
        &about_asked,
        &expected_partials_with("about", Some("{{> newsletter}}"))?,
    )?;

    // 5. The same partial edit now reaches `about` too.
    heading("5. Edit `newsletter` again");
    let expected = pages_that_asked(&asked, "newsletter");
    let step = edit(
        &db,
        &plugin,
        "newsletter",
        "<aside>Monthly recipes: subscribe!</aside>",
    )
    .await?;
    step.print(PAGES.len());
    check_list("re-rendered pages", &step.rendered, &expected)?;

    plugin.shutdown().await?;
    println!("  The plugin exited cleanly when the host dropped its client.");

    // 6. The plugin dies mid-call.
    crash_story().await?;

    println!();
    println!("Every count above was checked by the example itself.");
    Ok(())
}

/// How long a query may take before the example calls it a hang.
const HANG: Duration = Duration::from_secs(15);

/// Step 6: a second plugin process, on a database of its own, that exits in
/// the middle of rendering `contact` while the other pages' calls are in
/// flight on the same connection.
async fn crash_story() -> Result<()> {
    heading("6. The plugin process dies in the middle of a call");
    let plugin = Arc::new(Plugin::spawn(&["--exit-while-rendering", "contact"]).await?);
    let db = host::database(plugin.clone())?;
    load_site(&db)?;
    println!(
        "  A second plugin (pid {}), told to exit while rendering `contact`.",
        pid(&plugin)
    );
    let executions = |db: &Database| db.query_stats::<RenderPage>().map(|s| s.executions);
    let want_status = format!("exit status: {}", child::CRASH_EXIT_CODE);

    let about = query_in_time(&db, "about").await?;
    about.map_err(|e| format!("check failed: RenderPage(\"about\") should render: {e}"))?;
    println!("  RenderPage(\"about\") → rendered.");

    // Every page at once: `contact`'s call kills the plugin with the others
    // in flight beside it.
    let (before, requests) = (executions(&db)?, plugin.traffic().requests);
    let start = Instant::now();
    let first = query_every_page(&db).await?;
    let millis = start.elapsed().as_secs_f64() * 1e3;
    let failed: Vec<&str> = first
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(page, _)| *page)
        .collect();
    println!(
        "  Every page at once: {} failed, {} rendered or reused, in {millis:.1} ms (no hang).",
        failed.len(),
        first.len() - failed.len()
    );
    if let Some((_, Err(error))) = first.iter().find(|(page, _)| *page == "contact") {
        println!("  RenderPage(\"contact\") →\n    {error}");
    } else {
        return Err(
            "check failed: RenderPage(\"contact\") succeeded although the plugin died".into(),
        );
    }
    check(
        "plugin exit status",
        usize::from(plugin.exit_status().as_deref() == Some(want_status.as_str())),
        1,
    )?;
    for (page, result) in &first {
        match result {
            Err(e) if !e.to_string().contains(&want_status) => {
                return Err(format!(
                    "check failed: the error for {page} should name the plugin's {want_status}: {e}"
                )
                .into());
            }
            Ok(_) if *page == "about" => {}
            Ok(_) => println!("  ({page} finished before the plugin died.)"),
            Err(_) if *page == "about" => {
                return Err("check failed: RenderPage(\"about\") should be its memo".into());
            }
            Err(_) => {}
        }
    }
    let ran = executions(&db)? - before;
    check("RenderPage executions", ran as usize, PAGES.len() - 1)?;
    let calls = plugin.traffic().requests - requests;
    println!(
        "  {ran} executions (`about` reused its memo), {calls} render calls sent; every \
         failure names the plugin's {want_status}."
    );
    if let Some((page, Err(error))) = first
        .iter()
        .find(|(page, r)| *page != "contact" && r.is_err())
    {
        println!("  A call in flight beside it, RenderPage({page:?}) →\n    {error}");
    }

    // The same revision again: the same results, nothing re-runs.
    let before = executions(&db)?;
    let again = query_every_page(&db).await?;
    let same = first
        .iter()
        .zip(&again)
        .all(|((_, a), (_, b))| match (a, b) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a.to_string() == b.to_string(),
            _ => false,
        });
    check("same results again at this revision", usize::from(same), 1)?;
    check(
        "RenderPage executions at the same revision",
        (executions(&db)? - before) as usize,
        0,
    )?;
    println!("  Asked again at the same revision: the same errors, memoized (0 executions).");

    // A new revision may retry.
    let contact = PageSource {
        template: "page".into(),
        title: "Contact".into(),
        body: "<p>Write to us, or call.</p>".into(),
    };
    db.set::<Page>("contact".into(), Arc::new(contact))?;
    let before = executions(&db)?;
    let start = Instant::now();
    let Err(error) = query_in_time(&db, "contact").await? else {
        return Err("check failed: a dead plugin rendered `contact`".into());
    };
    check(
        "RenderPage executions after an edit (a retry)",
        (executions(&db)? - before) as usize,
        1,
    )?;
    println!(
        "  After editing `contact` (a new revision) the query retries, and fails at once \
         ({:.1} ms):\n    {error}",
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// `RenderPage(page)`, or a failed check if it takes longer than [`HANG`].
async fn query_in_time(db: &Database, page: &str) -> Result<picante::Result<Arc<str>>> {
    tokio::time::timeout(HANG, db.query::<RenderPage>(page.to_string()))
        .await
        .map_err(|_| format!("check failed: RenderPage({page:?}) hung for {HANG:?}").into())
}

/// Every page's `RenderPage` result, queried concurrently on a snapshot.
async fn query_every_page(db: &Database) -> Result<Vec<(&'static str, picante::Result<Arc<str>>)>> {
    let snapshot = db.snapshot();
    let tasks: Vec<_> = PAGES
        .iter()
        .map(|(path, ..)| {
            let snapshot = snapshot.clone();
            tokio::spawn(async move { snapshot.query::<RenderPage>(path.to_string()).await })
        })
        .collect();
    let mut out = Vec::new();
    for ((path, ..), task) in PAGES.iter().zip(tasks) {
        let result = tokio::time::timeout(HANG, task)
            .await
            .map_err(|_| format!("check failed: RenderPage({path:?}) hung for {HANG:?}"))??;
        out.push((*path, result));
    }
    Ok(out)
}

/// What one step did.
struct Step {
    /// Pages whose RenderPage body ran at the current revision.
    rendered: Vec<String>,
    /// RenderPage / ResolvedPartial executions and cutoffs in this step.
    executions: [(u64, u64); 2],
    traffic: Traffic,
    millis: f64,
}

impl Step {
    fn print(&self, total: usize) {
        let [(render, _), (partial, partial_cut)] = self.executions;
        println!(
            "  RenderPage executed {render}, ResolvedPartial executed {partial} ({partial_cut} cut \
             off) · plugin: {} render request{}, {} callbacks · {:.1} ms",
            self.traffic.requests,
            if self.traffic.requests == 1 { "" } else { "s" },
            self.traffic.callbacks,
            self.millis
        );
        if self.rendered.is_empty() {
            println!("  Re-rendered: none.");
        } else {
            println!(
                "  Re-rendered ({}): {}",
                self.rendered.len(),
                self.rendered.join(", ")
            );
        }
        println!(
            "  Not re-rendered: {} of {total} pages.",
            total - self.rendered.len()
        );
    }
}

/// Sets template `name` to `text`, then renders every page.
async fn edit(db: &Database, plugin: &Plugin, name: &str, text: &str) -> Result<Step> {
    db.set::<TemplateFile>(name.into(), text.into())?;
    render_all(db, plugin).await
}

/// Renders every page concurrently on a snapshot (one task per page) and
/// reports what ran (counters are cumulative: the step is the difference).
async fn render_all(db: &Database, plugin: &Plugin) -> Result<Step> {
    let stats = db.stats();
    let traffic = plugin.traffic();
    plugin.reset_peak();
    let start = Instant::now();
    let snapshot = db.snapshot();
    let tasks: Vec<_> = PAGES
        .iter()
        .map(|(path, ..)| {
            let (snapshot, path) = (snapshot.clone(), path.to_string());
            tokio::spawn(async move { snapshot.query::<RenderPage>(path).await })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let millis = start.elapsed().as_secs_f64() * 1e3;
    let after = db.stats();
    let count = |name: &str| {
        let (a, b) = (after.query(name), stats.query(name));
        let get = |q: Option<&picante::QueryStats>| q.map_or((0, 0), |q| (q.executions, q.cutoffs));
        let ((ae, ac), (be, bc)) = (get(a), get(b));
        (ae - be, ac - bc)
    };
    let mut rendered = Vec::new();
    for (path, ..) in PAGES {
        if let Some(info) = db.inspect::<RenderPage>(&path.to_string())?
            && info.executed_at == db.revision()
        {
            rendered.push(path.to_string());
        }
    }
    let now = plugin.traffic();
    Ok(Step {
        rendered,
        executions: [count("RenderPage"), count("ResolvedPartial")],
        traffic: Traffic {
            requests: now.requests - traffic.requests,
            callbacks: now.callbacks - traffic.callbacks,
            peak_in_flight: now.peak_in_flight,
        },
        millis,
    })
}

/// For each page, the partials its RenderPage memo depends on, read from
/// picante's own record of the execution (`View::inspect`).
fn recorded_partials(db: &Database) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for (path, ..) in PAGES {
        let info = db
            .inspect::<RenderPage>(&path.to_string())?
            .ok_or_else(|| format!("no memo for RenderPage({path:?})"))?;
        let mut partials: Vec<String> = info
            .dependencies
            .iter()
            .filter_map(|d| d.strip_prefix("ResolvedPartial(\"")?.strip_suffix("\")"))
            .map(str::to_string)
            .collect();
        partials.sort();
        out.insert(path.to_string(), partials);
    }
    Ok(out)
}

fn pages_that_asked(asked: &BTreeMap<String, Vec<String>>, partial: &str) -> Vec<String> {
    let in_order = PAGES.iter().map(|(path, ..)| path.to_string());
    in_order
        .filter(|page| {
            asked
                .get(page)
                .is_some_and(|p| p.iter().any(|n| n == partial))
        })
        .collect()
}

/// An independent answer, from the sources: the template and every partial
/// a page uses, directly or through other partials.
fn expected_partials(page: &str) -> Result<Vec<String>> {
    expected_partials_with(page, None)
}

fn expected_partials_with(page: &str, extra_body: Option<&str>) -> Result<Vec<String>> {
    let (_, template, _, body) = PAGES
        .iter()
        .find(|(path, ..)| *path == page)
        .ok_or_else(|| format!("no page {page}"))?;
    let mut found = vec![template.to_string()];
    let mut todo = vec![
        template_text(template)?,
        body.to_string(),
        extra_body.unwrap_or("").to_string(),
    ];
    while let Some(text) = todo.pop() {
        for part in text.split("{{>").skip(1) {
            let name = part.split("}}").next().unwrap_or("").trim().to_string();
            if !found.contains(&name) {
                todo.push(template_text(&name)?);
                found.push(name);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn template_text(name: &str) -> Result<String> {
    TEMPLATES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| text.to_string())
        .ok_or_else(|| format!("no template {name}").into())
}

fn heading(title: &str) {
    println!();
    println!("── {title}");
}

fn check(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!("check failed: expected {what} = {want}, got {got}").into())
    }
}

fn check_list(what: &str, got: &[String], want: &[impl AsRef<str>]) -> Result<()> {
    let want: Vec<&str> = want.iter().map(|s| s.as_ref()).collect();
    if got.iter().map(String::as_str).eq(want.iter().copied()) {
        Ok(())
    } else {
        Err(format!("check failed: expected {what} {want:?}, got {got:?}").into())
    }
}
