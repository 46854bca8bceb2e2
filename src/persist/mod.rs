//! Persistence (S17, S18): saving inputs, interned values and memos of the
//! kinds registered as persistent to a file, loading them into a fresh
//! database, and appending later changes to a log beside it.
//!
//! - `code.rs`: code versions (S18b): the program's fingerprint.
//! - `format.rs`: framing, checksums, crash-safe writes.
//! - `schema.rs`: facet shapes → fingerprints; refuses types facet-postcard
//!   cannot round-trip.
//! - `codec.rs`: typed encoders, instantiated where the `Facet` bounds hold.
//! - `save.rs`: full saves and log appends.
//! - `load.rs`: parsing into a staging image, then installing it at once.
//! - `progress.rs`: the progress callback and events of long operations.
//!
//! Memo values are decoded lazily, the first time they are read.

pub(crate) mod code;
mod codec;
mod format;
mod load;
mod progress;
mod save;
pub(crate) mod schema;
pub(crate) mod stage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::view::ViewCore;
pub(crate) use codec::{Codec, CodecInfo, KIND_INPUT, KIND_INTERNED, KIND_QUERY};
pub use progress::{CacheOperation, CacheProgress, CacheStep};
pub(crate) use progress::{Progress, ProgressFn};

/// Runs blocking cache I/O off the runtime's worker threads
/// (`spawn_blocking`); inline when called outside a tokio runtime. The work
/// runs to completion even if the caller's future is dropped (a save then
/// still leaves the old file or the new one).
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    if tokio::runtime::Handle::try_current().is_err() {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "<non-string panic payload>".to_string());
            Err(Error::internal(format!("cache I/O panicked: {message}")))
        }
        Err(_) => Err(Error::from(crate::error::ErrorKind::Cancelled)),
    }
}

/// [`View::save_cache`](crate::View::save_cache): takes the state now, writes
/// it off the runtime.
pub(crate) async fn save(view: &Arc<ViewCore>, path: &std::path::Path) -> Result<SaveReport> {
    // No key id is released while the save resolves its state's ids.
    let held = view.shared().hold_ids();
    let snapshot = save::snapshot_for_save(view);
    let (view, path) = (view.clone(), path.to_path_buf());
    off_runtime(move || {
        let _held = held;
        save::save(&view, &path, snapshot)
    })
    .await
}

/// [`Database::append_cache`](crate::Database::append_cache), off the runtime.
pub(crate) async fn append(view: &Arc<ViewCore>, path: &std::path::Path) -> Result<AppendReport> {
    let (view, path) = (view.clone(), path.to_path_buf());
    off_runtime(move || save::append(&view, &path)).await
}

/// [`Database::load_cache`](crate::Database::load_cache), off the runtime.
pub(crate) async fn load(
    view: &Arc<ViewCore>,
    path: &std::path::Path,
    options: LoadOptions,
) -> Result<LoadReport> {
    let (view, path) = (view.clone(), path.to_path_buf());
    off_runtime(move || load::load(&view, &path, &options)).await
}

use crate::engine::storage::{IngredientIndex, KeyId, MemoMeta, MemoRef, Table};

/// A hash map keyed by engine ids (ingredient indices, key ids, section
/// positions), hashed with the engine's one-multiply `DepHash`: the keys
/// are dense ids the engine chose, so SipHash's keyed hashing bought
/// nothing and was a third of a save's instructions.
pub(crate) type IdMap<K, V> = HashMap<K, V, crate::engine::storage::DepHash>;
/// Key id → index in the file's key table.
pub(crate) type KeyIndex = IdMap<KeyId, usize>;
use crate::error::{Error, Result};
use crate::revision::Revision;

/// What [`Database::load_cache`](crate::Database::load_cache) does with an
/// unusable file (corrupt, truncated, foreign, too large).
///
/// ```
/// use picante::{Database, Input, LoadOptions, OnError};
///
/// struct Source;
/// impl Input for Source { type Key = String; type Value = String; }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> picante::Result<()> {
/// let dir = std::env::temp_dir().join(format!("picante-onerror-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).map_err(picante::Error::new)?;
/// let path = dir.join("cache.bin");
/// std::fs::write(&path, b"not a picante cache").map_err(picante::Error::new)?;
///
/// let db = Database::builder().persistent_input::<Source>().build()?;
/// // Fail (the default) returns the error…
/// assert!(db.load_cache(&path, LoadOptions::default()).await.is_err());
/// // …Ignore starts cold and says why.
/// let options = LoadOptions { on_error: OnError::Ignore, ..LoadOptions::default() };
/// let report = db.load_cache(&path, options).await?;
/// assert!(report.found && !report.loaded);
/// assert!(report.ignored_error.is_some());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnError {
    /// Return the error. The database is left exactly as it was.
    #[default]
    Fail,
    /// Start without a cache: return `Ok` with the error in
    /// [`LoadReport::ignored_error`]. The database is left exactly as it was.
    Ignore,
}

/// Options for [`Database::load_cache`](crate::Database::load_cache).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Files (base or log) larger than this are refused. Default 1 GiB.
    pub max_bytes: u64,
    /// What to do with an unusable file. Default [`OnError::Fail`].
    pub on_error: OnError,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_bytes: 1 << 30,
            on_error: OnError::Fail,
        }
    }
}

impl LoadOptions {
    /// Default options, but an unusable file is ignored instead of failing.
    pub fn ignore_errors() -> Self {
        LoadOptions {
            on_error: OnError::Ignore,
            ..Self::default()
        }
    }
}

/// What a load found and did.
///
/// ```
/// use picante::{Database, Input, LoadOptions};
///
/// struct Source;
/// impl Input for Source { type Key = String; type Value = String; }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> picante::Result<()> {
/// let dir = std::env::temp_dir().join(format!("picante-reports-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).map_err(picante::Error::new)?;
/// let path = dir.join("cache.bin");
/// let database = || Database::builder().persistent_input::<Source>().build();
///
/// let db = database()?;
/// db.set::<Source>("a.md".into(), "one".into())?;
/// let saved = db.save_cache(&path).await?;     // a SaveReport
/// assert_eq!((saved.inputs, saved.revision), (1, db.revision()));
/// db.set::<Source>("b.md".into(), "two".into())?;
/// let appended = db.append_cache(&path).await?; // an AppendReport
/// assert_eq!(appended.inputs, 1);
///
/// let fresh = database()?;
/// let loaded = fresh.load_cache(&path, LoadOptions::default()).await?;
/// assert!(loaded.found && loaded.loaded);
/// assert_eq!((loaded.inputs, loaded.log_records), (2, 1)); // base and log
/// assert_eq!(loaded.revision, db.revision());
/// assert!(loaded.dropped_kinds.is_empty() && loaded.code_changed.is_none());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LoadReport {
    /// A cache file existed at the path.
    pub found: bool,
    /// Its contents were installed into the database.
    pub loaded: bool,
    /// With [`OnError::Ignore`]: why an existing file was not used.
    pub ignored_error: Option<Error>,
    /// The database's revision after loading.
    pub revision: Revision,
    /// Input values loaded.
    pub inputs: usize,
    /// Memos loaded (values still encoded until first read).
    pub memos: usize,
    /// The loaded memos are served at the loaded revision without
    /// revalidation: every one was verified at the saved revision, and
    /// everything each one read was loaded with it (same inputs, same code).
    /// Otherwise (e.g. a kind's memos were dropped for its code version, or
    /// the log moved the revision past some memos) each loaded memo is
    /// revalidated before its first use.
    pub verified: bool,
    /// Interned values loaded.
    pub interned: usize,
    /// Kinds in the file that were not loaded, as `"name: reason"` (unknown
    /// name, or key/value types changed).
    pub dropped_kinds: Vec<String>,
    /// Memos not loaded: a dependency belongs to a dropped kind, or the
    /// code that computed them changed (see `code_changed` and
    /// `stale_kinds`).
    pub dropped_memos: usize,
    /// Why every memo was dropped, if it was (S18b): the cache was written
    /// by another build of the program (by default, a fingerprint of the
    /// executable) or under another declared
    /// [`code_version`](crate::DatabaseBuilder::code_version). Inputs and
    /// interned values were still loaded; memos re-run or revalidate.
    pub code_changed: Option<String>,
    /// Query kinds whose memos were dropped because their
    /// [`AsyncQuery::VERSION`](crate::AsyncQuery::VERSION) changed, as
    /// `"name: version a in the cache, b now"`. Their dependents were loaded
    /// and revalidate normally.
    pub stale_kinds: Vec<String>,
    /// Records replayed from the log.
    pub log_records: usize,
    /// The log ended in an incomplete record (a crash during an append),
    /// which was ignored.
    pub torn_tail: bool,
    /// Bytes read (base and log).
    pub bytes: u64,
}

/// What a save wrote.
/// See [`LoadReport`] for an example.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SaveReport {
    /// The revision saved.
    pub revision: Revision,
    /// File size in bytes.
    pub bytes: u64,
    /// Input values saved.
    pub inputs: usize,
    /// Memos saved.
    pub memos: usize,
    /// Interned values saved.
    pub interned: usize,
    /// Memos not saved: errors, or memos that read a non-persistent kind
    /// (they re-run after a load).
    pub skipped_memos: usize,
}

/// What an append wrote.
/// See [`LoadReport`] for an example.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct AppendReport {
    /// The revision the log now reaches.
    pub revision: Revision,
    /// Bytes appended (or the size of the new base for a full save).
    pub bytes: u64,
    /// Input changes appended.
    pub inputs: usize,
    /// Memos appended.
    pub memos: usize,
    /// Interned values appended.
    pub interned: usize,
    /// The change journal had overflowed, so a full save was written instead.
    pub full_save: bool,
}

/// How a persistent kind reads and writes its persisted form: implemented
/// by the typed layers' persisted sides (`PersistentInput`,
/// `PersistentQuery`, `PersistentInterned`: a kind's ingredient and its
/// codec), which exist only for kinds registered as persistent.
pub(crate) trait PersistKind: Send + Sync {
    /// Name, fingerprint and description of the kind's codec.
    fn info(&self) -> &CodecInfo;
    fn codec_name(&self) -> &str {
        &self.info().name
    }
    fn fingerprint(&self) -> u64 {
        self.info().fingerprint
    }
    fn description(&self) -> &str {
        &self.info().description
    }
    /// Queries: the kind's code version ([`AsyncQuery::VERSION`](crate::AsyncQuery::VERSION)).
    fn version(&self) -> u32 {
        0
    }
    /// Encodes the keys with these ids, as one blob.
    fn encode_keys(&self, ids: &[KeyId]) -> Result<Vec<u8>>;
    /// Inputs: the slots of `table` (all, or only `only`) as (key id,
    /// changed_at, present), and the present values as one blob. An id of
    /// `only` without a slot (a collected tombstone) is an absent slot
    /// changed at `Revision::ZERO`: what the key reads as now.
    fn encode_inputs(&self, _table: &Table, _only: Option<&[KeyId]>) -> Result<InputsBlob> {
        Ok((Vec::new(), Vec::new()))
    }
    /// Queries: a memo's value, encoded; `None` for an error memo.
    fn encode_memo_value(&self, _memo: &MemoRef) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    /// Interned: number of values interned so far.
    fn interned_len(&self) -> u32 {
        0
    }
    /// Interned: values with ids `from..to`, as one blob.
    fn encode_interned(&self, _from: u32, _to: u32) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }
    /// A staging area for loading this kind.
    fn stage(&self) -> Box<dyn Stage + '_>;
}

/// Slots (key id, changed_at, present) and the present values' blob.
pub(crate) type InputsBlob = (Vec<(KeyId, Revision, bool)>, Vec<u8>);

/// A memo as parsed from a file, its dependencies resolved to key ids.
pub(crate) struct LoadedMemo {
    /// Index of its key in the section's key table.
    pub file_key: usize,
    pub meta: MemoMeta,
    pub verified_at: Revision,
    /// The file (base or log) its encoded value lies in, and where.
    pub bytes: Arc<[u8]>,
    pub value: std::ops::Range<usize>,
}

/// Decoded contents of one kind, not yet visible to the database.
pub(crate) trait Stage: Send {
    /// Decodes keys `first..` of the section's key table.
    fn add_keys(&mut self, first: usize, blob: &[u8]) -> Result<()>;
    fn key_count(&self) -> usize;
    /// Inputs: decodes values and records slots (later records win).
    fn set_inputs(&mut self, slots: &[(usize, Revision, bool)], blob: &[u8]) -> Result<()>;
    /// Interned: decodes values with ids `first..`.
    fn add_interned(&mut self, first: u32, blob: &[u8]) -> Result<()>;
    fn interned_count(&self) -> usize;
    fn input_count(&self) -> usize;
    /// Interns the staged keys; returns key id per file key index.
    fn install_keys(&mut self) -> Result<Vec<KeyId>>;
    /// Interned: installs the staged values at their ids.
    fn install_interned(&mut self) -> Result<()>;
    /// Inputs: the table of staged slots.
    fn input_table(&mut self, key_ids: &[KeyId]) -> Result<Table>;
    /// Queries: lowers the main-history verification of every memo of
    /// `table` (built by `memo_table`) to `at` at most.
    fn verified_main_at_most(&self, _table: &Table, _at: Revision) {}
    /// Queries: the table of `memos` (`count` of them), values decoded
    /// lazily on first read.
    fn memo_table(
        &mut self,
        count: usize,
        memos: &mut dyn Iterator<Item = LoadedMemo>,
    ) -> Result<Table>;
}

/// What persistence keeps per database, attached to the engine's shared
/// state (opaque to the engine): the persisted side of each ingredient (by
/// index), the builder's settings, and the cache file last saved or loaded.
pub(crate) struct Persistence {
    kinds: Vec<Option<Arc<dyn PersistKind>>>,
    /// The declared application code version (S18b), if any.
    pub code_version: Option<String>,
    /// How long cache I/O waits for another holder of a cache's lock (S18c).
    pub cache_lock_timeout: std::time::Duration,
    /// Called with the progress of saves, loads and appends.
    pub progress: Option<ProgressFn>,
    /// The cache file this database was last saved to or loaded from.
    pub link: std::sync::Mutex<Option<Link>>,
}

impl Persistence {
    pub(crate) fn new(
        kinds: Vec<Option<Arc<dyn PersistKind>>>,
        code_version: Option<String>,
        cache_lock_timeout: std::time::Duration,
        progress: Option<ProgressFn>,
    ) -> Persistence {
        Persistence {
            kinds,
            code_version,
            cache_lock_timeout,
            progress,
            link: std::sync::Mutex::new(None),
        }
    }

    /// Every persistent ingredient, by index.
    pub(crate) fn kinds(&self) -> impl Iterator<Item = (IngredientIndex, &dyn PersistKind)> {
        self.kinds
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((IngredientIndex::new(i as u32), k.as_deref()?)))
    }

    /// The persistence attached to `view`'s database.
    pub(crate) fn of(view: &ViewCore) -> Result<&Persistence> {
        view.shared()
            .attachment()
            .downcast_ref::<Persistence>()
            .ok_or_else(|| Error::internal("database without its persistence state"))
    }
}

/// The file a database is linked to after a save or load, so that later
/// changes can be appended to its log.
pub(crate) struct Link {
    pub path: PathBuf,
    pub base_id: u64,
    /// Everything up to this revision is in the base or the log.
    pub revision: Revision,
    /// Per ingredient index: key id → index in the file's key table, and
    /// the number of keys the file holds.
    pub keys: IdMap<IngredientIndex, (KeyIndex, usize)>,
    /// Per ingredient index: the file's key table as key ids, from a load;
    /// turned into `keys` by the first append (so loading does not pay for
    /// maps only appends need).
    pub loaded_keys: HashMap<IngredientIndex, Vec<KeyId>>,
    /// Per interned ingredient: values in the file.
    pub interned: HashMap<IngredientIndex, u32>,
    /// Length of the log's valid prefix (0: no log yet).
    pub log_len: u64,
    /// The last 8 bytes of that prefix (the checksum of the last `COMMIT`
    /// record): an append checks them on disk, so it never extends a log
    /// another database wrote (S18c).
    pub log_tail: [u8; 8],
}

/// Record tags.
pub(crate) mod tag {
    pub const META: u8 = 1;
    pub const SECTION: u8 = 2;
    pub const KEYS: u8 = 3;
    pub const INPUTS: u8 = 4;
    pub const MEMOS: u8 = 5;
    pub const INTERNED: u8 = 6;
    pub const REVISION: u8 = 7;
    /// Ends one append: the log's records since the previous `COMMIT` are
    /// applied only if it is present (a torn append is dropped whole).
    pub const COMMIT: u8 = 8;
    pub const END: u8 = 15;
}
