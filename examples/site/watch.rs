//! Rebuilding on change, for `--watch` and `--serve`.
//!
//! The `notify` crate reports file events as the operating system delivers
//! them (inotify, FSEvents, ReadDirectoryChangesW: no polling). A short
//! debounce gathers an editor's burst of writes into one change; the scanner
//! maps the changed paths to inputs, reads those files and sets them, new
//! and removed files included, in one batch (one revision); then the site is
//! rebuilt and the step's story printed: what re-ran, what was reused, why.
//!
//! Files are read the tracked way: here, by the driver, and set as inputs.
//! The queries only ever read those inputs through their `QueryCx`, so every
//! file a page depends on is a recorded dependency and an edit re-runs
//! exactly what read it, and nothing else. A query that read the file system
//! itself (`tokio::fs` in `execute`) would be invisible to picante: its memo
//! would be served stale, unless it called `cx.report_untracked_read()`,
//! which makes it re-run at every revision. This example never needs that.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use picante::{Database, Revision, View};
use tokio::sync::mpsc;

use crate::driver::{self, BuildReport, CONFIG, Cache, Delta, Output, Result, Scanner};
use crate::queries::{RenderPage, SiteIndex};
use crate::store::Hash;

/// Events closer together than this are one change: an editor's save is
/// often several (a temporary file, a rename, a change of mode).
const QUIET: Duration = Duration::from_millis(50);

/// A change waits at most this long for the events to stop (a long `git
/// checkout` is then built in a few steps, each of them consistent).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What changed in the site's directory during one burst of events.
#[derive(Debug, Default)]
pub struct Changes {
    /// Paths under `content/` or `templates/`, and `site.toml`: files or
    /// directories, present or gone (the scanner sorts them out).
    pub inputs: BTreeSet<PathBuf>,
    /// Something under `static/` changed.
    pub statics: bool,
    /// The watcher lost events (its queue overflowed): scan everything.
    pub rescan: bool,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.inputs.is_empty() && !self.statics && !self.rescan
    }
}

/// File events under a site's directory, debounced into [`Changes`].
pub struct SourceWatcher {
    root: PathBuf,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    /// Dropping it stops the events.
    _watcher: RecommendedWatcher,
}

impl SourceWatcher {
    /// Starts watching `root` (recursively). Events that arrive before the
    /// first [`SourceWatcher::next`] are kept, so a change made while the
    /// first build runs is not lost.
    pub fn new(root: &Path) -> Result<SourceWatcher> {
        let (tx, events) = mpsc::unbounded_channel();
        // notify calls this on a thread of its own.
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .map_err(|e| format!("cannot start watching files: {e}"))?;
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| format!("cannot watch {}: {e}", root.display()))?;
        Ok(SourceWatcher {
            root: root.to_path_buf(),
            events,
            _watcher: watcher,
        })
    }

    /// Waits for a change that concerns the site, then until no event has
    /// arrived for [`QUIET`] (at most [`MAX_WAIT`]). `None` if the watcher
    /// stopped.
    pub async fn next(&mut self) -> Option<Changes> {
        let mut changes = Changes::default();
        while changes.is_empty() {
            let event = self.events.recv().await?;
            self.add(&mut changes, event);
        }
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let until = (tokio::time::Instant::now() + QUIET).min(deadline);
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Ok(Some(event)) => self.add(&mut changes, event),
                Ok(None) | Err(_) => return Some(changes),
            }
        }
    }

    fn add(&self, changes: &mut Changes, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                eprintln!("  warning: the file watcher reported {e}; rescanning the site");
                changes.rescan = true;
                return;
            }
        };
        if event.need_rescan() {
            changes.rescan = true;
        }
        if matches!(event.kind, EventKind::Access(_)) {
            return; // reads: nothing changed
        }
        for path in event.paths {
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            match rel.iter().next().and_then(|first| first.to_str()) {
                Some("content" | "templates") => {
                    changes.inputs.insert(path);
                }
                Some(CONFIG) if rel == Path::new(CONFIG) => {
                    changes.inputs.insert(path);
                }
                Some("static") => changes.statics = true,
                None => changes.rescan = true, // the root itself
                // The cache (`.picante/`), editors' files beside the site's.
                Some(_) => {}
            }
        }
    }
}

/// Which query produces an output file: the index, or a page's render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `index.html`: [`SiteIndex`].
    Index,
    /// `a/b.html`: [`RenderPage`] of `a/b.md`.
    Page(String),
}

impl Source {
    /// The source of an output path; `None` if no query produces it
    /// (`style.css`).
    pub fn of(url: &str) -> Option<Source> {
        let stem = url.strip_suffix(".html")?;
        Some(match stem {
            "index" => Source::Index,
            stem => Source::Page(format!("{stem}.md")),
        })
    }

    /// The hash of its HTML in the store, read through `view`.
    pub async fn query(&self, view: &View) -> picante::Result<Hash> {
        match self {
            Source::Index => view.query::<SiteIndex>(()).await,
            Source::Page(path) => view.query::<RenderPage>(path.clone()).await,
        }
    }

    /// Why its query last ran, if it ran at `revision`.
    fn why(&self, db: &Database, revision: Revision) -> Option<String> {
        let info = match self {
            Source::Index => db.inspect::<SiteIndex>(&()),
            Source::Page(path) => db.inspect::<RenderPage>(path),
        };
        let info = info.ok()??;
        (info.executed_at == revision).then(|| info.reason.to_string())
    }
}

/// A site being rebuilt on change: its database, scanner, output and cache.
pub struct Site {
    pub db: Database,
    pub scanner: Scanner,
    pub output: Output,
    /// `None` with `--no-cache`, or once the cache could not be written.
    pub cache: Option<Cache>,
}

/// What one [`Site::rebuild`] did.
pub struct Rebuilt {
    /// The database's revision after the change, the one built.
    pub revision: Revision,
    /// The build, if the change made a new revision (an edit that sets
    /// every file to the text it had makes none).
    pub build: Option<BuildReport>,
    /// Files of `static/` copied into the output.
    pub copied: Vec<String>,
}

impl Site {
    /// Applies `changes` to the inputs in one batch and rebuilds, printing
    /// what changed, the step's table (executed, cut off, revalidated, hits
    /// per query kind), the files written, and why each was re-rendered. The
    /// cache is not updated here (see [`Site::update_cache`]).
    pub async fn rebuild(&mut self, changes: &Changes) -> Result<Rebuilt> {
        let before = self.db.stats();
        let start = Instant::now();
        let sync = if changes.rescan {
            Some(self.scanner.sync(&self.db).await?)
        } else if !changes.inputs.is_empty() {
            let paths: Vec<PathBuf> = changes.inputs.iter().cloned().collect();
            Some(self.scanner.sync_paths(&self.db, &paths).await?)
        } else {
            None
        };
        for e in sync.iter().flat_map(|s| &s.errors) {
            eprintln!("  error: {e}");
        }
        let revision = self.db.revision();
        let Some(sync) = sync.filter(|s| s.new_revision) else {
            // No input changed; a stylesheet may have.
            let copied = match changes.statics || changes.rescan {
                true => self.output.sync_static().await?,
                false => Vec::new(),
            };
            for file in &copied {
                println!("\n  copied {file}");
            }
            return Ok(Rebuilt {
                revision,
                build: None,
                copied,
            });
        };
        let scanned = Instant::now();
        let build = driver::build(&self.db, &mut self.output, false).await?;
        println!();
        for file in &sync.changed {
            println!("  changed: {file}");
        }
        Delta::between(&before, &self.db.stats()).print();
        driver::print_summary(&[], &build, scanned - start);
        const SHOWN: usize = 10;
        for url in build.written.iter().take(SHOWN) {
            let why = Source::of(url).and_then(|source| source.why(&self.db, revision));
            match why {
                Some(why) => println!("    wrote {url}: re-rendered, {why}"),
                None => println!("    wrote {url}"),
            }
        }
        if build.written.len() > SHOWN {
            println!("    … and {} more", build.written.len() - SHOWN);
        }
        for url in &build.deleted {
            println!("    deleted {url}");
        }
        driver::print_failures(&build);
        Ok(Rebuilt {
            revision,
            copied: build.copied.clone(),
            build: Some(build),
        })
    }

    /// Appends what the last rebuild changed to the cache's log.
    pub async fn update_cache(&mut self) {
        driver::update_cache(&self.db, &mut self.cache).await;
    }

    /// On the way out: leaves a compact cache behind, the log folded into a
    /// new base, so the next run starts warm from one file.
    pub async fn close(&mut self) -> Result<()> {
        let Some(cache) = &mut self.cache else {
            return Ok(());
        };
        if cache.log().1 > 0 {
            let (_, line) = cache.save(&self.db).await?;
            println!("  {line}");
        } else {
            println!("  cache: up to date");
        }
        Ok(())
    }
}

/// Rebuilds `site` on every change `watcher` reports, until `shutdown`
/// resolves. `rebuilt` hears of each rebuild before the cache is updated
/// (so that a browser need not wait for the cache's fsync). A rebuild is
/// never cut off halfway: a shutdown during one waits for it to end.
pub async fn run(
    site: &mut Site,
    mut watcher: SourceWatcher,
    shutdown: impl Future<Output = ()>,
    mut rebuilt: impl FnMut(&Site, &Rebuilt),
) {
    tokio::pin!(shutdown);
    loop {
        let changes = tokio::select! {
            changes = watcher.next() => match changes {
                Some(changes) => changes,
                None => break,
            },
            () = &mut shutdown => break,
        };
        match site.rebuild(&changes).await {
            Ok(report) => {
                rebuilt(site, &report);
                if report.build.is_some() {
                    site.update_cache().await;
                }
            }
            Err(e) => eprintln!("  error: {e}"),
        }
    }
}
