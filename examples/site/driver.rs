//! The driver: everything outside the queries. It scans the site directory
//! into inputs, builds all pages concurrently on a snapshot, writes the files
//! whose HTML changed, keeps the on-disk cache, and prints what picante did
//! (from `db.stats()`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use picante::{AppendReport, Database, LoadOptions, LoadReport, QueryStats, SaveReport, Stats};
use tokio::task::JoinSet;

use crate::queries::{
    self, ConfigFile, FileStamp, PageList, RenderPage, ScanStamps, SiteIndex, SourceFile,
    TemplateFile,
};
use crate::store::{self, Hash, Store};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Scanning: directory → inputs.
// ---------------------------------------------------------------------------

/// Which input a file feeds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
enum FileKind {
    /// `content/**/*.md` → `SourceFile`
    Page,
    /// `templates/**/*.html` → `TemplateFile`
    Template,
    /// `site.toml` → `ConfigFile`
    Config,
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
        self.seed(db)?;
        let root = self.root.clone();
        let listing = tokio::task::spawn_blocking(move || list_site(&root)).await??;

        // Read what is new, modified, or modified too recently to trust.
        let now = SystemTime::now();
        let to_read: Vec<(FileKind, String, Stamp)> = listing
            .iter()
            .filter(|(kind, key, stamp)| {
                let racy = now
                    .duration_since(stamp.modified)
                    .map_or(true, |age| age < RACY);
                racy || self.seen.get(&(*kind, key.clone())) != Some(stamp)
            })
            .cloned()
            .collect();
        let (fresh, errors) = read_files(&self.root, to_read).await?;

        // The files the database holds. After a warm start these include
        // files this scanner never saw: any of them deleted since the cache
        // was saved must be removed all the same.
        let held = held_files(db)?;
        let present: HashSet<(FileKind, &str)> = listing
            .iter()
            .map(|(k, key, _)| (*k, key.as_str()))
            .collect();
        let gone: Vec<(FileKind, String)> = held
            .iter()
            .filter(|(kind, key)| !present.contains(&(*kind, key.as_str())))
            .cloned()
            .collect();
        // The pages are the files that are present and were read at least
        // once, by this scanner (now or before) or before the cache was saved.
        let read: HashSet<(FileKind, &str)> = fresh
            .iter()
            .map(|(kind, key, _, _)| (*kind, key.as_str()))
            .collect();
        let pages: Vec<String> = listing
            .iter()
            .filter(|(kind, key, _)| {
                *kind == FileKind::Page
                    && (read.contains(&(*kind, key.as_str()))
                        || held.contains(&(*kind, key.clone())))
            })
            .map(|(_, key, _)| key.clone())
            .collect();
        self.commit(db, fresh, gone, pages, errors)
    }

    /// A new scanner on a database loaded from the cache: start from the
    /// stamps of the files as they were read then, so that only files
    /// changed since are read again.
    fn seed(&mut self, db: &Database) -> Result<()> {
        if self.seen.is_empty() {
            for stamp in db.input_opt::<ScanStamps>(&())?.unwrap_or_default().iter() {
                let kind = match stamp.kind {
                    0 => FileKind::Page,
                    1 => FileKind::Template,
                    _ => FileKind::Config,
                };
                let held = match kind {
                    FileKind::Page => db.input_opt::<SourceFile>(&stamp.key)?.is_some(),
                    FileKind::Template => db.input_opt::<TemplateFile>(&stamp.key)?.is_some(),
                    FileKind::Config => db.input_opt::<ConfigFile>(&stamp.key)?.is_some(),
                };
                if held {
                    let modified = SystemTime::UNIX_EPOCH + Duration::from_nanos(stamp.modified_ns);
                    let stamp_ = Stamp {
                        modified,
                        len: stamp.len,
                    };
                    self.seen.insert((kind, stamp.key.clone()), stamp_);
                }
            }
        }
        Ok(())
    }

    /// Like [`Scanner::sync`], for what a file watcher reported: `paths` are
    /// files or directories under the root, present or gone. Every site file
    /// at or under them is read; every file the database holds under them
    /// that is gone is removed; the page list gains the new pages and loses
    /// the removed ones. All of it is one batch, as in [`Scanner::sync`].
    /// Paths that feed no input (`static/`, the cache) are ignored.
    ///
    /// The files are read here and only here: queries never touch the file
    /// system, they read the inputs this sets (see `queries.rs`).
    pub async fn sync_paths(&mut self, db: &Database, paths: &[PathBuf]) -> Result<SyncReport> {
        self.seed(db)?;
        // What each path covers: one input key, or a directory of them.
        let mut scopes: Vec<(FileKind, String)> = paths
            .iter()
            .filter_map(|path| scope_of(path.strip_prefix(&self.root).ok()?))
            .collect();
        scopes.sort();
        scopes.dedup();
        let (root, listed) = (self.root.clone(), scopes.clone());
        let mut listing = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (kind, sub) in &listed {
                list_under(&root, *kind, sub, &mut out)?;
            }
            Ok::<_, BoxError>(out)
        })
        .await??;
        listing.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        listing.dedup_by(|a, b| (a.0, &a.1) == (b.0, &b.1));
        // The watcher said these changed: read them whatever their stamps.
        let (fresh, errors) = read_files(&self.root, listing.clone()).await?;

        let present: HashSet<(FileKind, &str)> = listing
            .iter()
            .map(|(k, key, _)| (*k, key.as_str()))
            .collect();
        let gone: Vec<(FileKind, String)> = held_files(db)?
            .into_iter()
            .filter(|(kind, key)| {
                scopes.iter().any(|(k, sub)| k == kind && covers(sub, key))
                    && !present.contains(&(*kind, key.as_str()))
            })
            .collect();
        let mut pages: BTreeSet<String> = db
            .input_opt::<PageList>(&())?
            .unwrap_or_default()
            .iter()
            .cloned()
            .collect();
        for (_, key) in gone.iter().filter(|(kind, _)| *kind == FileKind::Page) {
            pages.remove(key);
        }
        for (_, key, _, _) in fresh.iter().filter(|(kind, ..)| *kind == FileKind::Page) {
            pages.insert(key.clone());
        }
        self.commit(db, fresh, gone, pages.into_iter().collect(), errors)
    }

    /// Applies what a sync found as one batch: sets the files read, removes
    /// the files gone, sets the page list (`pages`, sorted here) and the
    /// stamps. One new revision, or none at all if nothing changed; no
    /// reader ever sees half of the update.
    fn commit(
        &mut self,
        db: &Database,
        fresh: Vec<(FileKind, String, Stamp, Arc<str>)>,
        mut gone: Vec<(FileKind, String)>,
        mut pages: Vec<String>,
        errors: Vec<String>,
    ) -> Result<SyncReport> {
        // One batch for everything. Setting a value equal to the stored one
        // is a no-op in picante, so re-read but unchanged files cost nothing.
        let before = db.revision();
        let mut changed = Vec::new();
        let mut batch = db.batch();
        for (kind, key, stamp, text) in fresh {
            let old = match kind {
                FileKind::Page => db.input_opt::<SourceFile>(&key)?,
                FileKind::Template => db.input_opt::<TemplateFile>(&key)?,
                FileKind::Config => db.input_opt::<ConfigFile>(&key)?,
            };
            match old {
                None => changed.push(format!("{} (new)", path_of(kind, &key))),
                Some(old) if old != text => changed.push(path_of(kind, &key)),
                Some(_) => {}
            }
            match kind {
                FileKind::Page => batch.set::<SourceFile>(key.clone(), text),
                FileKind::Template => batch.set::<TemplateFile>(key.clone(), text),
                FileKind::Config => batch.set::<ConfigFile>(key.clone(), text),
            };
            self.seen.insert((kind, key), stamp);
        }
        gone.sort();
        for (kind, key) in &gone {
            changed.push(format!("{} (removed)", path_of(*kind, key)));
            match kind {
                FileKind::Page => batch.remove::<SourceFile>(key),
                FileKind::Template => batch.remove::<TemplateFile>(key),
                FileKind::Config => batch.remove::<ConfigFile>(key),
            };
            self.seen.remove(&(*kind, key.clone()));
        }
        pages.sort();
        batch.set::<PageList>((), pages.into());
        let mut stamps: Vec<FileStamp> = self
            .seen
            .iter()
            .filter_map(|((kind, key), stamp)| {
                let since = stamp.modified.duration_since(SystemTime::UNIX_EPOCH).ok()?;
                Some(FileStamp {
                    kind: match kind {
                        FileKind::Page => 0,
                        FileKind::Template => 1,
                        FileKind::Config => 2,
                    },
                    key: key.clone(),
                    modified_ns: u64::try_from(since.as_nanos()).ok()?,
                    len: stamp.len,
                })
            })
            .collect();
        stamps.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        batch.set::<ScanStamps>((), Arc::new(stamps));
        let revision = batch.commit()?;
        changed.sort();
        Ok(SyncReport {
            changed,
            errors,
            new_revision: revision != before,
        })
    }
}

/// The path of a file relative to the site root: `content/<key>`,
/// `templates/<key>`, or the config file's name.
fn path_of(kind: FileKind, key: &str) -> String {
    match kind {
        FileKind::Config => key.to_string(),
        kind => format!("{}/{key}", dir_of(kind)),
    }
}

fn dir_of(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Page => "content",
        FileKind::Template => "templates",
        FileKind::Config => "",
    }
}

/// The site's configuration file, at the root of the site (optional).
pub const CONFIG: &str = "site.toml";

/// Every page and template under `root`, and the config file, with its key
/// and stamp.
fn list_site(root: &Path) -> Result<Vec<(FileKind, String, Stamp)>> {
    let mut out = Vec::new();
    for kind in [FileKind::Config, FileKind::Page, FileKind::Template] {
        list_under(root, kind, "", &mut out)?;
    }
    Ok(out)
}

/// Appends to `out` every file of `kind` at or under `sub` (one key, a
/// directory of keys, or `""` for all of them), with its key and stamp.
/// What is missing is simply not listed: files come and go while a watcher
/// runs.
fn list_under(
    root: &Path,
    kind: FileKind,
    sub: &str,
    out: &mut Vec<(FileKind, String, Stamp)>,
) -> Result<()> {
    let (base, extension) = match kind {
        FileKind::Config => (root.to_path_buf(), "toml"),
        FileKind::Page => (root.join(dir_of(kind)), "md"),
        FileKind::Template => (root.join(dir_of(kind)), "html"),
    };
    let start = match (kind, sub) {
        (FileKind::Config, _) => root.join(CONFIG),
        (_, "") => base.clone(),
        (_, sub) => base.join(sub),
    };
    let not_found = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut dirs = Vec::new();
    let mut push = |path: &Path, meta: &std::fs::Metadata| -> Result<()> {
        if path.extension().and_then(|e| e.to_str()) != Some(extension) {
            return Ok(());
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
        Ok(())
    };
    match std::fs::metadata(&start) {
        Err(e) if not_found(&e) => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", start.display()).into()),
        Ok(meta) if meta.is_dir() && kind != FileKind::Config => dirs.push(start),
        Ok(meta) if meta.is_file() => return push(&start, &meta),
        Ok(_) => return Ok(()),
    }
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if not_found(&e) => continue,
            entries => entries.map_err(|e| format!("cannot list {}: {e}", dir.display()))?,
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue; // hidden files, editor swap files
            }
            let meta = match entry.metadata() {
                Err(e) if not_found(&e) => continue,
                meta => meta?,
            };
            if meta.is_dir() {
                dirs.push(path);
            } else {
                push(&path, &meta)?;
            }
        }
    }
    Ok(())
}

/// What a path relative to the site root stands for among the inputs:
/// `(kind, key)` for one file, `(kind, directory)` for the keys under a
/// directory, `(kind, "")` for all of a kind; `None` for the rest (`static/`,
/// the cache, hidden files such as editors' swap files).
fn scope_of(rel: &Path) -> Option<(FileKind, String)> {
    let rel = rel.to_str()?.replace('\\', "/");
    if rel == CONFIG {
        return Some((FileKind::Config, CONFIG.to_string()));
    }
    for kind in [FileKind::Page, FileKind::Template] {
        let Some(rest) = rel.strip_prefix(dir_of(kind)) else {
            continue;
        };
        let key = match rest.strip_prefix('/') {
            Some(key) => key,
            None if rest.is_empty() => "",
            None => continue, // `contents/`, not `content/`
        };
        if key.split('/').any(|part| part.starts_with('.')) {
            return None;
        }
        return Some((kind, key.to_string()));
    }
    None
}

/// Whether the scope `sub` (from [`scope_of`]) covers the key `key`.
fn covers(sub: &str, key: &str) -> bool {
    sub.is_empty()
        || key == sub
        || key
            .strip_prefix(sub)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Reads `files` on the blocking pool: a few tasks, each reading its share
/// of the files in turn (one task per file would pay a hop to the pool per
/// file, and waiting for a CPU on each hop is slow on a busy machine).
/// Returns the texts, and (sorted) why the others could not be read.
async fn read_files(
    root: &Path,
    files: Vec<(FileKind, String, Stamp)>,
) -> Result<(Vec<(FileKind, String, Stamp, Arc<str>)>, Vec<String>)> {
    const READERS: usize = 4;
    let mut reads = JoinSet::new();
    for chunk in files.chunks(files.len().div_ceil(READERS).max(1)) {
        let chunk: Vec<_> = chunk
            .iter()
            .map(|(kind, key, stamp)| (*kind, key.clone(), *stamp, root.join(path_of(*kind, key))))
            .collect();
        reads.spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|(kind, key, stamp, path)| {
                    let text = match std::fs::read(&path) {
                        Ok(bytes) => String::from_utf8(bytes)
                            .map_err(|_| format!("{} is not valid UTF-8", path.display())),
                        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                    };
                    (kind, key, stamp, text)
                })
                .collect::<Vec<_>>()
        });
    }
    let mut fresh = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = reads.join_next().await {
        for read in joined? {
            match read {
                (kind, key, stamp, Ok(text)) => fresh.push((kind, key, stamp, Arc::from(text))),
                (_, _, _, Err(e)) => errors.push(e),
            }
        }
    }
    errors.sort();
    Ok((fresh, errors))
}

/// Every file the database holds, as `(kind, key)`.
fn held_files(db: &Database) -> Result<HashSet<(FileKind, String)>> {
    let mut held = HashSet::new();
    for (key, _) in db.inputs::<SourceFile>()? {
        held.insert((FileKind::Page, key));
    }
    for (key, _) in db.inputs::<TemplateFile>()? {
        held.insert((FileKind::Template, key));
    }
    for (key, _) in db.inputs::<ConfigFile>()? {
        held.insert((FileKind::Config, key));
    }
    Ok(held)
}

// ---------------------------------------------------------------------------
// Building: render every page concurrently on a snapshot, write what changed.
// ---------------------------------------------------------------------------

/// The output directory and what was last written to it.
pub struct Output {
    dir: PathBuf,
    /// Where the rendered pages are, by hash.
    store: Store,
    /// The hash of what each output file holds, as far as this process knows.
    written: HashMap<String, Hash>,
    /// Files an earlier process wrote (see [`Output::resume`]).
    earlier: HashSet<String>,
    /// The site's `static/` directory, copied as it is into the output.
    static_dir: Option<PathBuf>,
}

/// What one build did.
pub struct BuildReport {
    pub pages: usize,
    /// Output files (re)written because their HTML changed, sorted. A file
    /// that already held the right page is not rewritten (and not listed).
    pub written: Vec<String>,
    /// Output files deleted because their page is gone.
    pub deleted: Vec<String>,
    /// Files of `static/` copied because they were new or changed.
    pub copied: Vec<String>,
    /// Pages (or the index) that failed, with the error.
    pub failed: Vec<(String, picante::Error)>,
    /// Time spent in queries (rendering or revalidating), and in the output
    /// step (linking pages from the store, checking unchanged ones).
    pub queries: Duration,
    pub output: Duration,
}

impl Output {
    pub fn new(dir: PathBuf, store: Store) -> Output {
        Output {
            dir,
            store,
            written: HashMap::new(),
            earlier: HashSet::new(),
            static_dir: None,
        }
    }

    /// Copies the files of `dir` (the site's `static/`: stylesheets,
    /// images) into the output on every build, when new or changed.
    pub fn with_static(mut self, dir: PathBuf) -> Output {
        self.static_dir = Some(dir);
        self
    }

    /// Copies the static files that are missing from the output or differ
    /// from it, and returns their paths. They are not queries: nothing is
    /// derived from them. Files are compared byte for byte, which is fine for
    /// a stylesheet; a site with large assets would keep stamps instead, as
    /// the scanner does.
    pub async fn sync_static(&self) -> Result<Vec<String>> {
        let Some(from) = self.static_dir.clone() else {
            return Ok(Vec::new());
        };
        let to = self.dir.clone();
        tokio::task::spawn_blocking(move || copy_static(&from, &to)).await?
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store the output links its pages from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// After a warm start: the pages of the loaded cache were written by an
    /// earlier process, so those that are gone now are deleted by the next
    /// build. (The others are checked against the store: a file that is
    /// already a link to its page's blob is left alone.)
    pub fn resume(&mut self, db: &Database) -> Result<()> {
        let pages = db.input_opt::<PageList>(&())?.unwrap_or_default();
        self.earlier = pages.iter().map(|p| queries::url_of(p)).collect();
        Ok(())
    }
}

/// Builds the site: a snapshot of the database, one task per page. With
/// `progress`, large builds print a counter on stderr.
pub async fn build(db: &Database, output: &mut Output, progress: bool) -> Result<BuildReport> {
    // A snapshot is a frozen, consistent view of the database at its current
    // revision, made in O(1). Clones of it are cheap and `'static`, so every
    // page can render on its own task (tokio spreads them over the worker
    // threads). Memos computed on the snapshot flow back to the database.
    let start = Instant::now();
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
    let queries = start.elapsed();

    // Write only what changed since the last build: a page's value is the
    // hash of its HTML, so comparing hashes is enough. A page this process has
    // not written yet is checked on disk (see `store::link_into`). Pages that
    // failed keep their previous output; pages that are gone lose it.
    let mut live: HashSet<String> = pages.iter().map(|p| queries::url_of(p)).collect();
    live.insert("index.html".to_string());
    let mut deleted: Vec<String> = output
        .written
        .keys()
        .chain(
            output
                .earlier
                .iter()
                .filter(|u| !output.written.contains_key(*u)),
        )
        .filter(|url| !live.contains(url.as_str()))
        .cloned()
        .collect();
    deleted.sort();
    let changed: Vec<(String, Hash)> = rendered
        .into_iter()
        .filter(|(url, hash)| output.written.get(url) != Some(hash))
        .collect();
    let to_write: Vec<(PathBuf, PathBuf)> = changed
        .iter()
        .map(|(url, hash)| (output.store.path_of(hash), output.dir.join(url)))
        .collect();
    let to_delete: Vec<PathBuf> = deleted.iter().map(|url| output.dir.join(url)).collect();
    let store = output.store.clone();
    let wrote = tokio::task::spawn_blocking(move || -> Result<Vec<bool>> {
        store.flush()?;
        write_files(to_write, to_delete)
    })
    .await??;
    let output_time = start.elapsed() - queries;

    let mut written = Vec::with_capacity(changed.len());
    for ((url, hash), wrote) in changed.into_iter().zip(wrote) {
        if wrote {
            written.push(url.clone());
        }
        output.written.insert(url, hash);
    }
    for url in &deleted {
        output.written.remove(url);
    }
    output.earlier.clear();
    written.sort();
    let copied = output.sync_static().await?;
    Ok(BuildReport {
        pages: pages.len(),
        written,
        deleted,
        copied,
        failed,
        queries,
        output: output_time,
    })
}

/// Copies every file under `from` to the same place under `to`, unless it
/// is there already with the same bytes. Returns the copied files' paths.
fn copy_static(from: &Path, to: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    if !from.is_dir() {
        return Ok(copied);
    }
    let mut dirs = vec![from.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(from).map_err(|e| e.to_string())?;
            let target = to.join(rel);
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if std::fs::read(&target).is_ok_and(|old| old == bytes) {
                continue;
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::write(&target, &bytes)
                .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
            copied.push(format!(
                "static/{}",
                rel.to_string_lossy().replace('\\', "/")
            ));
        }
    }
    copied.sort();
    Ok(copied)
}

/// Links each `(blob, output file)` pair and deletes `to_delete`. Returns,
/// per pair, whether the file had to be (re)written.
fn write_files(to_write: Vec<(PathBuf, PathBuf)>, to_delete: Vec<PathBuf>) -> Result<Vec<bool>> {
    let mut wrote = Vec::with_capacity(to_write.len());
    let mut made = HashSet::new();
    for (blob, path) in to_write {
        if let Some(parent) = path.parent()
            && !made.contains(parent)
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            made.insert(parent.to_path_buf());
        }
        let linked = store::link_into(&blob, &path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        wrote.push(linked);
    }
    for path in to_delete {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot delete {}: {e}", path.display()).into());
            }
            _ => {}
        }
    }
    Ok(wrote)
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
// The cache: the database on disk, so that the next process starts warm.
// ---------------------------------------------------------------------------

/// Redraws one line on stderr while a cache save, load or append takes long
/// (set on the database with `DatabaseBuilder::cache_progress`, called on
/// the thread doing the I/O). Quiet for the first 300 ms, so small caches
/// print nothing extra, and when stderr is not a terminal (a log gets the
/// summary line the caller prints anyway); the line is cleared at the end.
pub fn cache_progress(p: &picante::CacheProgress) {
    use picante::{CacheOperation, CacheStep};
    use std::sync::atomic::{AtomicBool, Ordering};
    static DRAWN: AtomicBool = AtomicBool::new(false);
    if p.step == CacheStep::Done {
        if DRAWN.swap(false, Ordering::Relaxed) {
            let _ = write!(std::io::stderr().lock(), "\r{:100}\r", "");
        }
        return;
    }
    if p.elapsed < Duration::from_millis(300) || !std::io::stderr().is_terminal() {
        return;
    }
    let operation = match p.operation {
        CacheOperation::Save => "saving",
        CacheOperation::Load => "loading",
        CacheOperation::Append => "appending to",
        _ => "using",
    };
    let step = match p.step {
        CacheStep::Reading => "reading",
        CacheStep::Decoding => "decoding",
        CacheStep::Installing => "installing",
        CacheStep::Encoding => "encoding",
        CacheStep::Writing => "writing",
        CacheStep::Syncing => "syncing",
        _ => "working",
    };
    let amount = match (p.step, p.total) {
        (CacheStep::Syncing, _) => String::new(),
        (CacheStep::Reading | CacheStep::Decoding | CacheStep::Writing, 0) => {
            format!(" {}", size(p.done))
        }
        (CacheStep::Reading | CacheStep::Decoding | CacheStep::Writing, total) => format!(
            " {} of {} ({}%)",
            size(p.done),
            size(total),
            100 * p.done / total
        ),
        (_, 0) => format!(" {} entries", p.done),
        (_, total) => format!(" {} of {total} entries ({}%)", p.done, 100 * p.done / total),
    };
    let mut err = std::io::stderr().lock();
    let line = format!(
        "  cache: {operation} the cache, {step}{amount} ({})",
        millis(p.elapsed)
    );
    let _ = write!(err, "\r{line:100}");
    let _ = err.flush();
    DRAWN.store(true, Ordering::Relaxed);
}

/// A log larger than this is folded into a new base file by a full save.
pub const COMPACT_AFTER: u64 = 1 << 20;

/// The cache directory of one site:
///
/// ```text
/// DIR/cache.bin      the base written by `save_cache`: inputs and memos of
///                    every persistent kind (page hashes, not pages)
/// DIR/cache.bin.log  what each build changed since, appended
/// DIR/store/         the rendered pages, named by their hash (see `store.rs`)
/// ```
pub struct Cache {
    dir: PathBuf,
    path: PathBuf,
    /// The database loaded or saved this file, so it can append to its log.
    linked: bool,
    /// Size of the log, and appends to it since the last full save.
    log_bytes: u64,
    appends: usize,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache {
            path: dir.join("cache.bin"),
            dir,
            linked: false,
            log_bytes: 0,
            appends: 0,
        }
    }

    /// Size of the log, and the appends this process made to it since the
    /// last load or full save.
    pub fn log(&self) -> (u64, usize) {
        (self.log_bytes, self.appends)
    }

    /// Opens the store of rendered pages in this directory.
    pub fn store(&self) -> Result<Store> {
        let dir = self.dir.join("store");
        Store::open(dir.clone())
            .map_err(|e| format!("cannot create the store {}: {e}", dir.display()).into())
    }

    /// Size of the cache file and its log: what picante keeps.
    pub fn bytes(&self) -> u64 {
        [self.path.clone(), log_path(&self.path)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Loads the file into `db`, which must be fresh. A missing or unusable
    /// file is not an error: the build starts cold, and the next save
    /// replaces it. Returns the report and one line saying how the build
    /// starts.
    pub async fn load(&mut self, db: &Database, store: &Store) -> Result<(LoadReport, String)> {
        let start = Instant::now();
        // The memos hold hashes of pages in the store: without the store they
        // point nowhere. A cache whose store was deleted is discarded.
        let mut discarded = None;
        if self.path.exists() && store.usage().0 == 0 {
            for file in [self.path.clone(), log_path(&self.path)] {
                match std::fs::remove_file(&file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(format!("cannot remove {}: {e}", file.display()).into());
                    }
                    _ => {}
                }
            }
            discarded = Some(format!(
                "cold start: the store {} is empty, so the cache (which holds page hashes, \
                 not pages) was discarded",
                store.dir().display()
            ));
        }
        let report = db
            .load_cache(&self.path, LoadOptions::ignore_errors())
            .await?;
        let path = self.path.display();
        self.linked = report.loaded;
        self.appends = 0;
        self.log_bytes = match report.loaded {
            true => std::fs::metadata(log_path(&self.path)).map_or(0, |m| m.len()),
            false => 0,
        };
        let line = if report.loaded {
            let mut line = format!(
                "warm start: loaded {} and {} from {path}{} (revision {}) in {}",
                plural(report.memos, "memo"),
                plural(report.inputs, "input"),
                if report.log_records > 0 {
                    " and its log"
                } else {
                    ""
                },
                report.revision.as_u64(),
                millis(start.elapsed()),
            );
            if report.torn_tail {
                line += "; ignored an incomplete last append";
            }
            if let Some(why) = &report.code_changed {
                line += &format!("\n  dropped every memo: {why}");
            }
            for kind in &report.stale_kinds {
                line += &format!("\n  dropped the memos of {kind}");
            }
            for kind in &report.dropped_kinds {
                line += &format!("\n  dropped {kind}");
            }
            if report.dropped_memos > 0 && report.code_changed.is_none() {
                line += &format!(
                    "\n  dropped {} that read a dropped kind",
                    plural(report.dropped_memos, "memo")
                );
            }
            line
        } else if let Some(line) = discarded {
            line
        } else if let Some(e) = &report.ignored_error {
            format!("cold start: cache ignored: {e}")
        } else {
            format!("cold start: no cache yet at {path}")
        };
        Ok((report, line))
    }

    /// Saves the whole database as a new base; the log is dropped.
    pub async fn save(&mut self, db: &Database) -> Result<(SaveReport, String)> {
        let start = Instant::now();
        let report = db.save_cache(&self.path).await?;
        (self.linked, self.log_bytes, self.appends) = (true, 0, 0);
        let line = format!(
            "cache: saved {} and {} to {} ({}, {})",
            plural(report.memos, "memo"),
            plural(report.inputs, "input"),
            self.path.display(),
            size(report.bytes),
            millis(start.elapsed()),
        );
        Ok((report, line))
    }

    /// Appends what changed since the last load, save or append to the log.
    /// The database must be linked to the file (see [`Cache::update`]).
    pub async fn append(&mut self, db: &Database) -> Result<(AppendReport, String)> {
        let start = Instant::now();
        let report = db.append_cache(&self.path).await?;
        let line = if report.full_save {
            (self.log_bytes, self.appends) = (0, 0);
            format!(
                "cache: saved {} and {} to {} ({}): too many changes to append",
                plural(report.memos, "memo"),
                plural(report.inputs, "input"),
                self.path.display(),
                size(report.bytes),
            )
        } else {
            self.log_bytes += report.bytes;
            self.appends += 1;
            format!(
                "cache: appended {} and {} to {} ({}, {})",
                plural(report.memos, "memo"),
                plural(report.inputs, "input"),
                log_path(&self.path).display(),
                size(report.bytes),
                millis(start.elapsed()),
            )
        };
        Ok((report, line))
    }

    /// After a build: appends to the log, or saves in full if the database
    /// is not linked to the file yet (a cold start) or the log has grown past
    /// [`COMPACT_AFTER`].
    pub async fn update(&mut self, db: &Database) -> Result<String> {
        if !self.linked {
            return Ok(self.save(db).await?.1);
        }
        if self.log_bytes > COMPACT_AFTER {
            let log = self.log_bytes;
            let (_, line) = self.save(db).await?;
            return Ok(format!(
                "cache: the log reached {}: compacted into a new base\n  {line}",
                size(log)
            ));
        }
        Ok(self.append(db).await?.1)
    }
}

/// Where the log of the cache at `path` lies: `path` + `.log`.
pub fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// `3 memos`, `1 memo`.
pub fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

pub fn size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} KB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

pub fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------
// Reporting: what picante did in one step, from the cumulative counters.
// ---------------------------------------------------------------------------

/// Per-query counters for one step: `after - before`, one row per query
/// kind in registration order.
pub struct Delta(Stats);

impl Delta {
    pub fn between(before: &Stats, after: &Stats) -> Delta {
        Delta(after.since(before))
    }

    fn get(&self, name: &str) -> QueryStats {
        self.0.query(name).cloned().unwrap_or_default()
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
        self.0.total_executions()
    }

    /// Prints the step's table.
    pub fn print(&self) {
        println!(
            "    {:<17} {:>8} {:>8} {:>12} {:>6}",
            "query", "executed", "cut off", "revalidated", "hits"
        );
        for q in &self.0.queries {
            println!(
                "    {:<17} {:>8} {:>8} {:>12} {:>6}",
                q.name, q.executions, q.cutoffs, q.revalidations, q.hits
            );
        }
    }
}

/// Saves or appends to the cache. A cache that cannot be written is not
/// worth failing a build for: say so and go on without it.
pub async fn update_cache(db: &Database, cache: &mut Option<Cache>) {
    let Some(c) = cache else { return };
    match c.update(db).await {
        Ok(line) => println!("  {line}"),
        Err(e) => {
            eprintln!("  warning: cannot write the cache, going on without it: {e}");
            *cache = None;
        }
    }
}

/// One line per step: what changed, what was written, how long the scan
/// (listing and reading files), the queries and the output step took.
pub fn print_summary(changed: &[String], build: &BuildReport, scan: Duration) {
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
    let deleted = match build.copied.len() {
        0 => deleted,
        n => format!("{deleted}, {n} static copied"),
    };
    println!(
        "  {changed}{} pages · {written} written{deleted} · scan {}, queries {}, output {}",
        build.pages,
        millis(scan),
        millis(build.queries),
        millis(build.output),
    );
}

/// Prints failed pages, one line per distinct error (a broken partial fails
/// every page that includes it with the same memoized error).
pub fn print_failures(build: &BuildReport) {
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
