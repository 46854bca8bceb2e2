//! The driver: everything outside the queries. It scans the site directory
//! into inputs, builds all pages concurrently on a snapshot, writes the files
//! whose HTML changed, and prints what picante did (from `db.stats()`).

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use picante::{Database, QueryStats, Stats};
use tokio::task::JoinSet;

use crate::queries::{self, PageList, RenderPage, SiteIndex, SourceFile, TemplateFile};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Scanning: directory → inputs.
// ---------------------------------------------------------------------------

/// Which input a file feeds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum FileKind {
    /// `content/**/*.md` → `SourceFile`
    Page,
    /// `templates/**/*.html` → `TemplateFile`
    Template,
}

/// What a file looked like when it was last read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: SystemTime,
    len: u64,
}

/// Files modified less than this long ago are re-read even if their stamp
/// looks unchanged (an edit within the file system's timestamp granularity
/// would otherwise be missed; git calls this "racy clean").
const RACY: Duration = Duration::from_secs(2);

/// Keeps the inputs in sync with a site directory laid out as
/// `content/<section>/<page>.md` and `templates/<name>.html`,
/// `templates/partials/<name>.html`.
pub struct Scanner {
    root: PathBuf,
    seen: HashMap<(FileKind, String), Stamp>,
}

/// What one [`Scanner::sync`] did.
pub struct SyncReport {
    /// Files whose content really changed, as `content/...` or
    /// `templates/...` paths, with ` (new)` or ` (removed)` appended for
    /// files that appeared or disappeared.
    pub changed: Vec<String>,
    /// Files that could not be read, with the reason.
    pub errors: Vec<String>,
    /// Whether the database moved to a new revision.
    pub new_revision: bool,
}

impl Scanner {
    pub fn new(root: &Path) -> Result<Scanner> {
        for dir in ["content", "templates"] {
            if !root.join(dir).is_dir() {
                return Err(format!(
                    "{} does not look like a site: expected the directories {0}/content \
                     (Markdown pages) and {0}/templates (HTML templates)",
                    root.display()
                )
                .into());
            }
        }
        Ok(Scanner {
            root: root.to_path_buf(),
            seen: HashMap::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lists the directory, reads new and modified files concurrently, and
    /// applies every change as one batch: one new revision (or none at all if
    /// nothing changed), and no reader ever sees half of the update.
    ///
    /// A file that cannot be read (or is not UTF-8) is reported in
    /// [`SyncReport::errors`] and left as it was: retried on the next sync,
    /// its previous text (if any) still in use.
    pub async fn sync(&mut self, db: &Database) -> Result<SyncReport> {
        let root = self.root.clone();
        let listing = tokio::task::spawn_blocking(move || list_site(&root)).await??;

        // Read what is new, modified, or modified too recently to trust.
        let now = SystemTime::now();
        let mut reads = JoinSet::new();
        for (kind, key, stamp) in &listing {
            let racy = now
                .duration_since(stamp.modified)
                .map_or(true, |age| age < RACY);
            if racy || self.seen.get(&(*kind, key.clone())) != Some(stamp) {
                let path = self.root.join(dir_of(*kind)).join(key);
                let (kind, key, stamp) = (*kind, key.clone(), *stamp);
                reads.spawn(async move {
                    let text = match tokio::fs::read(&path).await {
                        Ok(bytes) => String::from_utf8(bytes)
                            .map_err(|_| format!("{} is not valid UTF-8", path.display())),
                        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                    };
                    (kind, key, stamp, text)
                });
            }
        }
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        while let Some(joined) = reads.join_next().await {
            match joined? {
                (kind, key, stamp, Ok(text)) => fresh.push((kind, key, stamp, Arc::from(text))),
                (_, _, _, Err(e)) => errors.push(e),
            }
        }
        errors.sort();

        // One batch for everything. Setting a value equal to the stored one
        // is a no-op in picante, so re-read but unchanged files cost nothing.
        let before = db.revision();
        let mut changed = Vec::new();
        let mut batch = db.batch();
        for (kind, key, stamp, text) in fresh {
            let old = match kind {
                FileKind::Page => db.input_opt::<SourceFile>(&key)?,
                FileKind::Template => db.input_opt::<TemplateFile>(&key)?,
            };
            match old {
                None => changed.push(format!("{}/{key} (new)", dir_of(kind))),
                Some(old) if old != text => changed.push(format!("{}/{key}", dir_of(kind))),
                Some(_) => {}
            }
            match kind {
                FileKind::Page => batch.set::<SourceFile>(key.clone(), text),
                FileKind::Template => batch.set::<TemplateFile>(key.clone(), text),
            };
            self.seen.insert((kind, key), stamp);
        }
        let present: HashSet<(FileKind, &str)> = listing
            .iter()
            .map(|(k, key, _)| (*k, key.as_str()))
            .collect();
        let gone: Vec<(FileKind, String)> = self
            .seen
            .keys()
            .filter(|(kind, key)| !present.contains(&(*kind, key.as_str())))
            .cloned()
            .collect();
        for (kind, key) in gone {
            changed.push(format!("{}/{key} (removed)", dir_of(kind)));
            match kind {
                FileKind::Page => batch.remove::<SourceFile>(&key),
                FileKind::Template => batch.remove::<TemplateFile>(&key),
            };
            self.seen.remove(&(kind, key));
        }
        // The pages are the files that are present and were read at least once.
        let mut pages: Vec<String> = listing
            .into_iter()
            .filter(|(kind, key, _)| {
                *kind == FileKind::Page && self.seen.contains_key(&(*kind, key.clone()))
            })
            .map(|(_, key, _)| key)
            .collect();
        pages.sort();
        batch.set::<PageList>((), pages.into());
        let revision = batch.commit()?;
        changed.sort();
        Ok(SyncReport {
            changed,
            errors,
            new_revision: revision != before,
        })
    }
}

fn dir_of(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Page => "content",
        FileKind::Template => "templates",
    }
}

/// Every page and template under `root`, with its key and stamp.
fn list_site(root: &Path) -> Result<Vec<(FileKind, String, Stamp)>> {
    let mut out = Vec::new();
    for (kind, extension) in [(FileKind::Page, "md"), (FileKind::Template, "html")] {
        let base = root.join(dir_of(kind));
        let mut dirs = vec![base.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue; // hidden files, editor swap files
                }
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().and_then(|e| e.to_str()) != Some(extension) {
                    continue;
                }
                let rel = path.strip_prefix(&base).map_err(|e| e.to_string())?;
                let Some(rel) = rel.to_str() else {
                    return Err(format!("{} is not a UTF-8 path", path.display()).into());
                };
                let stamp = Stamp {
                    modified: meta.modified()?,
                    len: meta.len(),
                };
                out.push((kind, rel.replace('\\', "/"), stamp));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Building: render every page concurrently on a snapshot, write what changed.
// ---------------------------------------------------------------------------

/// The output directory and what was last written to it.
pub struct Output {
    dir: PathBuf,
    written: HashMap<String, Arc<str>>,
}

/// What one build did.
pub struct BuildReport {
    pub pages: usize,
    /// Output files (re)written because their HTML changed, sorted.
    pub written: Vec<String>,
    /// Output files deleted because their page is gone.
    pub deleted: Vec<String>,
    /// Pages (or the index) that failed, with the error.
    pub failed: Vec<(String, picante::Error)>,
}

impl Output {
    pub fn new(dir: PathBuf) -> Output {
        Output {
            dir,
            written: HashMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Builds the site: a snapshot of the database, one task per page. With
/// `progress`, large builds print a counter on stderr.
pub async fn build(db: &Database, output: &mut Output, progress: bool) -> Result<BuildReport> {
    // A snapshot is a frozen, consistent view of the database at its current
    // revision, made in O(1). Clones of it are cheap and `'static`, so every
    // page can render on its own task (tokio spreads them over the worker
    // threads). Memos computed on the snapshot flow back to the database.
    let snapshot = db.snapshot();
    let pages = snapshot.input_opt::<PageList>(&())?.unwrap_or_default();

    let mut tasks = JoinSet::new();
    for path in pages.iter() {
        let (snapshot, path) = (snapshot.clone(), path.clone());
        tasks.spawn(async move {
            let html = snapshot.query::<RenderPage>(path.clone()).await;
            (path, html)
        });
    }
    let index = {
        let snapshot = snapshot.clone();
        tokio::spawn(async move { snapshot.query::<SiteIndex>(()).await })
    };

    let mut progress = Progress::new(if progress { pages.len() } else { 0 });
    let mut rendered = Vec::with_capacity(pages.len());
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (path, html) = joined?;
        match html {
            Ok(html) => rendered.push((queries::url_of(&path), html)),
            Err(e) => failed.push((format!("content/{path}"), e)),
        }
        progress.tick();
    }
    progress.finish();
    match index.await? {
        Ok(html) => rendered.push(("index.html".to_string(), html)),
        Err(e) => failed.push(("index".to_string(), e)),
    }
    failed.sort_by(|a, b| a.0.cmp(&b.0));

    // Write only what changed since the last build. An unchanged memo hands
    // back the very same `Arc`, so the pointer check is usually enough.
    // Pages that failed keep their previous output; pages that are gone lose it.
    let mut live: HashSet<String> = pages.iter().map(|p| queries::url_of(p)).collect();
    live.insert("index.html".to_string());
    let deleted: Vec<String> = output
        .written
        .keys()
        .filter(|url| !live.contains(url.as_str()))
        .cloned()
        .collect();
    let changed: Vec<(String, Arc<str>)> = rendered
        .into_iter()
        .filter(|(url, html)| {
            !output
                .written
                .get(url)
                .is_some_and(|old| Arc::ptr_eq(old, html) || old == html)
        })
        .collect();
    let to_write: Vec<(PathBuf, Arc<str>)> = changed
        .iter()
        .map(|(url, html)| (output.dir.join(url), html.clone()))
        .collect();
    let to_delete: Vec<PathBuf> = deleted.iter().map(|url| output.dir.join(url)).collect();
    tokio::task::spawn_blocking(move || write_files(to_write, to_delete)).await??;

    let mut written = Vec::with_capacity(changed.len());
    for (url, html) in changed {
        written.push(url.clone());
        output.written.insert(url, html);
    }
    for url in &deleted {
        output.written.remove(url);
    }
    written.sort();
    Ok(BuildReport {
        pages: pages.len(),
        written,
        deleted,
        failed,
    })
}

fn write_files(to_write: Vec<(PathBuf, Arc<str>)>, to_delete: Vec<PathBuf>) -> Result<()> {
    for (path, html) in to_write {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, html.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    for path in to_delete {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot delete {}: {e}", path.display()).into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// A progress counter on stderr for large builds.
struct Progress {
    total: usize,
    done: usize,
    every: usize,
    tty: bool,
}

impl Progress {
    /// Sites smaller than this build too fast for a counter to matter.
    const MIN_PAGES: usize = 200;

    fn new(total: usize) -> Progress {
        let tty = std::io::stderr().is_terminal();
        // On a terminal, redraw one line often; in a log, print a few lines.
        let every = if tty { 50 } else { total.div_ceil(4).max(1) };
        Progress {
            total,
            done: 0,
            every,
            tty,
        }
    }

    fn enabled(&self) -> bool {
        self.total >= Self::MIN_PAGES
    }

    fn tick(&mut self) {
        self.done += 1;
        if !self.enabled() || (!self.done.is_multiple_of(self.every) && self.done != self.total) {
            return;
        }
        let mut err = std::io::stderr().lock();
        let line = format!("  rendering: {}/{} pages", self.done, self.total);
        let _ = if self.tty {
            write!(err, "\r{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled() && self.tty {
            let _ = write!(std::io::stderr().lock(), "\r{:60}\r", "");
        }
    }
}

// ---------------------------------------------------------------------------
// Reporting: what picante did in one step, from the cumulative counters.
// ---------------------------------------------------------------------------

/// Per-query counters for one step: `after - before`.
pub struct Delta {
    queries: Vec<QueryStats>,
}

impl Delta {
    pub fn between(before: &Stats, after: &Stats) -> Delta {
        let queries = queries::QUERY_NAMES
            .iter()
            .map(|name| {
                let zero = QueryStats::default();
                let b = before.query(name).unwrap_or(&zero);
                let a = after.query(name).unwrap_or(&zero);
                QueryStats {
                    name: name.to_string(),
                    executions: a.executions - b.executions,
                    hits: a.hits - b.hits,
                    revalidations: a.revalidations - b.revalidations,
                    cutoffs: a.cutoffs - b.cutoffs,
                }
            })
            .collect();
        Delta { queries }
    }

    fn get(&self, name: &str) -> QueryStats {
        self.queries
            .iter()
            .find(|q| q.name == name)
            .cloned()
            .unwrap_or_default()
    }

    /// Times the query's body ran in this step.
    pub fn executed(&self, name: &str) -> u64 {
        self.get(name).executions
    }

    /// Executions whose value was `==` the previous one (early cutoff).
    pub fn cut_off(&self, name: &str) -> u64 {
        self.get(name).cutoffs
    }

    pub fn total_executed(&self) -> u64 {
        self.queries.iter().map(|q| q.executions).sum()
    }

    /// Prints the step's table.
    pub fn print(&self) {
        println!(
            "    {:<17} {:>8} {:>8} {:>12} {:>6}",
            "query", "executed", "cut off", "revalidated", "hits"
        );
        for q in &self.queries {
            println!(
                "    {:<17} {:>8} {:>8} {:>12} {:>6}",
                q.name, q.executions, q.cutoffs, q.revalidations, q.hits
            );
        }
    }
}
