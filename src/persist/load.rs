//! Loading: the base file and its log are parsed and decoded into a staging
//! image first; only if all of it is sound is the image installed, in one
//! state swap. Any failure leaves the database exactly as it was.

use super::Persistence;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::format::{self, Dec, FileKind, Record, RecordError, Records};
use super::{CacheOperation, CacheStep, Progress};
use super::{Link, LoadOptions, LoadReport, LoadedMemo, OnError, Stage, tag};
use crate::engine::ingredient::IngredientKind;
use crate::engine::storage::{Dep, Edge, IngredientIndex, MemoMeta, Reason};
use crate::engine::view::ViewCore;
use crate::error::{Error, Result};
use crate::revision::{Durability, Revision};
use crate::util::lock;
use std::sync::atomic::AtomicU64;

/// A memo as first read: where its record lies and what the install needs
/// to choose which memos to keep. Kept small (12 bytes a memo): a load of
/// many small memos holds one of these per memo until the install, which
/// decodes each kept memo a second time, from the already checked bytes,
/// straight into its final form.
struct ParsedMemo {
    /// Offset of the memo's encoding in its file's bytes: the low 32 bits,
    /// then the next 8 (files are below `MAX_FILE`).
    pos_low: u32,
    pos_high: u8,
    /// Index of its key in its section's key table.
    file_key: u32,
    /// The memo lies in the log's bytes, not the base's.
    in_log: bool,
    /// Every dependency named a live section and a key read before it.
    deps_ok: bool,
}

impl ParsedMemo {
    fn pos(&self) -> usize {
        (usize::from(self.pos_high) << 32) | self.pos_low as usize
    }
}

/// Files (base or log) must be smaller than this (1 TiB), whatever
/// `LoadOptions::max_bytes` says, so a memo's offset fits in 40 bits.
const MAX_FILE: u64 = 1 << 40;

/// The fixed part of a memo's encoding (`key verified changed executed
/// durability ndeps`), followed by `ndeps` × `ingredient key seen` and the
/// value's bytes.
struct MemoHead {
    file_key: usize,
    verified_at: Revision,
    changed_at: Revision,
    executed_at: Revision,
    durability: Durability,
    deps: usize,
}

fn memo_head(d: &mut Dec<'_>, limit: usize) -> Result<MemoHead> {
    let file_key = d.len(usize::MAX)?;
    let verified_at = Revision::from_u64(d.var()?);
    let changed_at = Revision::from_u64(d.var()?);
    let executed_at = Revision::from_u64(d.var()?);
    let durability = match d.u8()? {
        0 => Durability::Low,
        1 => Durability::Medium,
        2 => Durability::High,
        _ => return Err(Error::persist("bad durability (corrupt file)")),
    };
    let deps = d.len(limit)?;
    Ok(MemoHead {
        file_key,
        verified_at,
        changed_at,
        executed_at,
        durability,
        deps,
    })
}

/// One dependency: (section, key index in that section, seen).
fn memo_dep(d: &mut Dec<'_>) -> Result<(u32, u32, Revision)> {
    Ok((d.u32()?, d.u32()?, Revision::from_u64(d.var()?)))
}

/// One section of the file.
enum Section<'a> {
    /// Matched a registered persistent kind.
    Live {
        index: IngredientIndex,
        kind: IngredientKind,
        stage: Box<dyn Stage + 'a>,
        /// Its memos are dropped: its code version changed (S18b).
        stale: bool,
    },
    /// Unknown name or changed types: skipped.
    Dropped,
}

struct Image<'a> {
    revision: Revision,
    sections: Vec<Section<'a>>,
    /// Per section, memos in file order (for a key appearing twice, the
    /// later record wins).
    memos: Vec<Vec<ParsedMemo>>,
    base_id: u64,
    log_len: u64,
    log_tail: [u8; 8],
    /// Every memo is dropped: the cache was written by other code (S18b).
    code_changed: bool,
}

/// Reads a cache file of `kind`; `Ok(None)` if it does not exist. Sets
/// `found` as soon as the file is known to exist (even if it is then
/// refused). The header is read and checked first: a file that is not a
/// picante cache of that kind (or is over `max` bytes) is refused without
/// reading its body, and no more than the file's size is ever read or
/// allocated.
fn read_file(
    path: &Path,
    kind: FileKind,
    max: u64,
    found: &mut bool,
    progress: &mut Progress,
) -> Result<Option<Arc<[u8]>>> {
    use std::io::Read;
    let io = |e: std::io::Error| Error::persist(format!("reading {}: {e}", path.display()));
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    *found = true;
    let len = file.metadata().map_err(io)?.len();
    if len > max || len >= MAX_FILE {
        return Err(Error::persist(format!(
            "{} is {len} bytes, more than the {}-byte limit",
            path.display(),
            max.min(MAX_FILE - 1),
        )));
    }
    let mut file = file.take(len.max(format::HEADER_LEN as u64));
    let read_into = |file: &mut std::io::Take<std::fs::File>, buf: &mut [u8]| {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(filled)
    };
    let mut header = [0u8; format::HEADER_LEN];
    let filled = read_into(&mut file, &mut header)?;
    let (found_kind, _) = format::read_header(&header[..filled])?;
    if found_kind != kind {
        return Err(Error::persist(match kind {
            FileKind::Base => "expected a cache base file, found a log",
            FileKind::Log => "expected a cache log file",
        }));
    }
    // The body: at most what the size said (a file growing meanwhile is
    // read as it was; one shrinking is caught by the record checks). Read
    // straight into the shared buffer memo values will point into: one
    // allocation of the file's size (collecting an exact-size iterator into
    // an `Arc<[u8]>` allocates once), no copy.
    let total = usize::try_from(len)
        .map_err(|_| Error::persist("cache file too large"))?
        .max(format::HEADER_LEN);
    let mut bytes: Arc<[u8]> = std::iter::repeat_n(0u8, total).collect();
    let buf = Arc::get_mut(&mut bytes).ok_or_else(|| Error::internal("file buffer shared"))?;
    buf[..format::HEADER_LEN].copy_from_slice(&header);
    let mut body = 0;
    for chunk in buf[format::HEADER_LEN..].chunks_mut(1 << 20) {
        let n = read_into(&mut file, chunk)?;
        body += n;
        progress.at(
            CacheStep::Reading,
            (format::HEADER_LEN + body) as u64,
            total as u64,
        );
        if n < chunk.len() {
            break;
        }
    }
    let got = format::HEADER_LEN + body;
    if got < total {
        // The file shrank while it was read: keep what was there.
        bytes = bytes[..got].into();
    }
    Ok(Some(bytes))
}

/// Loads the cache at `path` into the fresh database `view`.
pub(crate) fn load(view: &Arc<ViewCore>, path: &Path, options: &LoadOptions) -> Result<LoadReport> {
    let mut progress = Progress::new(
        Persistence::of(view)?.progress.clone(),
        CacheOperation::Load,
    );
    let result = load_reporting(view, path, options, &mut progress);
    progress.done();
    result
}

fn load_reporting(
    view: &Arc<ViewCore>,
    path: &Path,
    options: &LoadOptions,
    progress: &mut Progress,
) -> Result<LoadReport> {
    let persistence = Persistence::of(view)?;
    let fresh = {
        let state = view.load();
        state.revision == Revision::FIRST && persistence.kinds().all(|(_, p)| p.interned_len() == 0)
    };
    if !fresh {
        return Err(Error::persist(
            "load_cache needs a fresh database (nothing set or interned yet)",
        ));
    }
    let mut report = LoadReport::default();
    let started = std::time::Instant::now();
    tracing::info!(path = %path.display(), "loading cache");
    let outcome = (|| {
        // Shared: loads may overlap, but not with a save or an append (S18c),
        // so the base and its log are read as one consistent pair.
        let _lock = format::lock_cache(
            path,
            format::LockMode::Shared,
            persistence.cache_lock_timeout,
        )?;
        let Some(base) = read_file(
            path,
            FileKind::Base,
            options.max_bytes,
            &mut report.found,
            progress,
        )?
        else {
            return Ok(None);
        };
        report.bytes = base.len() as u64;
        let mut image = parse_base(view, &base, &mut report, progress)?;
        let log = read_file(
            &format::log_path(path),
            FileKind::Log,
            options.max_bytes,
            &mut false,
            progress,
        )?;
        if let Some(log) = &log {
            report.bytes += log.len() as u64;
            parse_log(log, &mut image, &mut report, progress)?;
        }
        Ok(Some((image, base, log)))
    })();
    match outcome {
        Ok(None) => {
            report.revision = view.load().revision;
            Ok(report)
        }
        Ok(Some((image, base, log))) => {
            let report = install(view, path, image, &base, log.as_ref(), report, progress)?;
            tracing::info!(
                path = %path.display(),
                bytes = report.bytes,
                inputs = report.inputs,
                memos = report.memos,
                dropped_memos = report.dropped_memos,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "cache loaded"
            );
            Ok(report)
        }
        Err(e) => match options.on_error {
            OnError::Fail => Err(e),
            OnError::Ignore => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cache file");
                Ok(LoadReport {
                    ignored_error: Some(e),
                    revision: view.load().revision,
                    ..report
                })
            }
        },
    }
}

/// Revisions in a file must leave room to count on from them.
fn checked_revision(r: Revision) -> Result<Revision> {
    if r.as_u64() >= MAX_REVISION {
        return Err(Error::persist(format!(
            "revision {r} is out of range (corrupt file)"
        )));
    }
    Ok(r)
}

/// The `seen` of an edge that must never match (its target was not loaded).
const NEVER_SEEN: Revision = Revision::from_u64(u64::MAX);

/// Far beyond any real history (a million revisions a second for 100 000
/// years), far below overflow.
const MAX_REVISION: u64 = 1 << 62;

fn parse_base<'a>(
    view: &'a ViewCore,
    bytes: &[u8],
    report: &mut LoadReport,
    progress: &mut Progress,
) -> Result<Image<'a>> {
    let (kind, base_id) = format::read_header(bytes)?;
    if kind != FileKind::Base {
        return Err(Error::persist("expected a cache base file, found a log"));
    }
    let mut image = Image {
        revision: Revision::ZERO,
        sections: Vec::new(),
        memos: Vec::new(),
        base_id,
        log_len: 0,
        log_tail: [0; 8],
        code_changed: false,
    };
    let mut records = Records::new(bytes);
    let mut count = 0u64;
    let mut ended = false;
    let mut meta_seen = false;
    let mut declared_sections = 0usize;
    while let Some(next) = records.next_record() {
        progress.at(
            CacheStep::Decoding,
            records.position() as u64,
            bytes.len() as u64,
        );
        let record = next.map_err(|e| match e {
            RecordError::Torn => Error::persist("cache file is truncated"),
            RecordError::Corrupt(m) => Error::persist(format!("cache file is corrupt: {m}")),
        })?;
        if ended {
            return Err(Error::persist("data after the end record (corrupt file)"));
        }
        match record.tag {
            tag::META => {
                let mut d = Dec::new(&record);
                image.revision = checked_revision(Revision::from_u64(d.var()?))?;
                declared_sections = d.len(1 << 20)?;
                let cached = d.str()?;
                let now = super::code::code_version(Persistence::of(view)?.code_version.as_deref());
                if let Some(why) = super::code::mismatch(cached, &now) {
                    tracing::info!(reason = %why, "cached memos dropped");
                    image.code_changed = true;
                    report.code_changed = Some(why);
                }
                meta_seen = true;
            }
            tag::SECTION => {
                let section = parse_section(view, &record, image.sections.len(), report)?;
                image.sections.push(section);
            }
            tag::END => {
                let stored = Dec::new(&record).u64()?;
                if stored != count {
                    return Err(Error::persist("record count mismatch (corrupt file)"));
                }
                ended = true;
                continue;
            }
            _ => {
                if !meta_seen {
                    return Err(Error::persist(
                        "cache file does not start with its metadata",
                    ));
                }
                apply_record(&record, &mut image, false)?;
            }
        }
        count += 1;
    }
    if !ended {
        return Err(Error::persist("cache file is truncated (no end record)"));
    }
    if !meta_seen || image.sections.len() != declared_sections {
        return Err(Error::persist(
            "cache file sections do not match its metadata",
        ));
    }
    Ok(image)
}

fn parse_section<'a>(
    view: &'a ViewCore,
    record: &Record<'_>,
    expected: usize,
    report: &mut LoadReport,
) -> Result<Section<'a>> {
    let mut d = Dec::new(record);
    if d.len(1 << 20)? != expected {
        return Err(Error::persist("sections out of order (corrupt file)"));
    }
    let name = d.str()?;
    let kind_byte = d.u8()?;
    let fingerprint = d.u64()?;
    let description = d.str()?;
    let version = d.u32()?;
    if !d.is_empty() {
        return Err(Error::persist("trailing bytes in a record (corrupt file)"));
    }
    let persistence = Persistence::of(view)?;
    let found = persistence.kinds().find_map(|(index, p)| {
        let ing = view.shared().registry().get(index).ok()?;
        (p.codec_name() == name).then_some((index, ing, p))
    });
    let Some((index, ing, p)) = found else {
        tracing::warn!(
            kind = name,
            "cache holds a kind this database does not register as persistent; dropped"
        );
        report
            .dropped_kinds
            .push(format!("{name}: not registered as persistent"));
        return Ok(Section::Dropped);
    };
    if p.fingerprint() != fingerprint || ing.kind() as u8 != kind_byte {
        tracing::warn!(
            kind = name,
            cached = description,
            now = p.description(),
            "cached kind's key/value types changed; dropped"
        );
        report.dropped_kinds.push(format!(
            "{name}: key or value type changed (cached {description}; now {})",
            p.description()
        ));
        return Ok(Section::Dropped);
    }
    let stale = version != p.version();
    if stale {
        tracing::info!(
            kind = name,
            cached = version,
            now = p.version(),
            "query kind's code version changed; its cached memos are dropped"
        );
        report.stale_kinds.push(format!(
            "{name}: version {version} in the cache, {} now",
            p.version()
        ));
    }
    Ok(Section::Live {
        index,
        kind: ing.kind(),
        stage: p.stage(),
        stale,
    })
}

fn section_mut<'i, 'a>(
    image: &'i mut Image<'a>,
    s: usize,
) -> Result<Option<(&'i mut Box<dyn Stage + 'a>, IngredientKind)>> {
    match image.sections.get_mut(s) {
        Some(Section::Live { stage, kind, .. }) => Ok(Some((stage, *kind))),
        Some(Section::Dropped) => Ok(None),
        None => Err(Error::persist(format!(
            "record names section {s}, which does not exist"
        ))),
    }
}

/// Applies a KEYS, INPUTS, MEMOS or INTERNED record to the image.
fn apply_record(record: &Record<'_>, image: &mut Image<'_>, in_log: bool) -> Result<()> {
    if record.tag == tag::MEMOS {
        return parse_memos(record, image, in_log);
    }
    let mut d = Dec::new(record);
    let s = d.len(usize::MAX)?;
    let Some((stage, kind)) = section_mut(image, s)? else {
        return Ok(());
    };
    let limit = record.payload.len();
    match (record.tag, kind) {
        (tag::KEYS, IngredientKind::Input | IngredientKind::Query) => {
            let first = d.len(usize::MAX)?;
            stage.add_keys(first, d.bytes()?)?;
        }
        (tag::INPUTS, IngredientKind::Input) => {
            let n = d.len(limit)?;
            let mut slots = Vec::with_capacity(n);
            for _ in 0..n {
                let key = d.len(usize::MAX)?;
                let changed_at = Revision::from_u64(d.var()?);
                let present = match d.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(Error::persist("bad presence flag (corrupt file)")),
                };
                if key >= stage.key_count() {
                    return Err(Error::persist(
                        "input slot names an unknown key (corrupt file)",
                    ));
                }
                slots.push((key, changed_at, present));
            }
            stage.set_inputs(&slots, d.bytes()?)?;
        }
        (tag::INTERNED, IngredientKind::Interned) => {
            let first = d.u32()?;
            stage.add_interned(first, d.bytes()?)?;
        }
        (t, k) => {
            return Err(Error::persist(format!(
                "record tag {t} does not fit {} section (corrupt file)",
                k.noun()
            )));
        }
    }
    if !d.is_empty() {
        return Err(Error::persist("trailing bytes in a record (corrupt file)"));
    }
    Ok(())
}

/// A MEMOS record: every memo is decoded and checked now, but only where
/// it lies is kept (see `ParsedMemo`); the install decodes it again.
fn parse_memos(record: &Record<'_>, image: &mut Image<'_>, in_log: bool) -> Result<()> {
    let mut d = Dec::new(record);
    let s = d.len(usize::MAX)?;
    match image.sections.get(s) {
        Some(Section::Live {
            kind: IngredientKind::Query,
            ..
        }) => {}
        Some(Section::Live { kind, .. }) => {
            return Err(Error::persist(format!(
                "record tag {} does not fit {} section (corrupt file)",
                tag::MEMOS,
                kind.noun()
            )));
        }
        Some(Section::Dropped) => return Ok(()),
        None => {
            return Err(Error::persist(format!(
                "record names section {s}, which does not exist"
            )));
        }
    }
    // Keys only ever grow, so a dependency on a key read before its memo
    // still resolves after the whole file is read. (Saves and appends
    // write keys before the memos that name them; a memo naming a later
    // key is dropped, which only costs its re-execution.)
    let key_counts: Vec<Option<usize>> = image
        .sections
        .iter()
        .map(|section| match section {
            Section::Live { stage, .. } => Some(stage.key_count()),
            Section::Dropped => None,
        })
        .collect();
    let limit = record.payload.len();
    let n = d.len(limit)?;
    if image.memos.len() <= s {
        image.memos.resize_with(s + 1, Vec::new);
    }
    let list = &mut image.memos[s];
    // A memo takes at least 7 bytes: a crafted count cannot make this
    // reserve more than about twice the record's size.
    list.reserve_exact(n.min(limit / 7));
    for _ in 0..n {
        let pos = d.position();
        let head = memo_head(&mut d, limit)?;
        let file_key =
            u32::try_from(head.file_key).map_err(|_| Error::persist("memo key out of range"))?;
        let mut deps_ok = true;
        for _ in 0..head.deps {
            let (section, key, _seen) = memo_dep(&mut d)?;
            deps_ok &= key_counts
                .get(section as usize)
                .copied()
                .flatten()
                .is_some_and(|count| (key as usize) < count);
        }
        d.bytes()?;
        list.push(ParsedMemo {
            pos_low: pos as u32,
            pos_high: (pos >> 32) as u8,
            file_key,
            in_log,
            deps_ok,
        });
    }
    if !d.is_empty() {
        return Err(Error::persist("trailing bytes in a record (corrupt file)"));
    }
    Ok(())
}

fn parse_log(
    bytes: &[u8],
    image: &mut Image<'_>,
    report: &mut LoadReport,
    progress: &mut Progress,
) -> Result<()> {
    let (kind, base_id) = format::read_header(bytes)?;
    if kind != FileKind::Log {
        return Err(Error::persist("expected a cache log file"));
    }
    if base_id != image.base_id {
        // A log left over from an older base (a crash between writing a new
        // base and removing the old log): it does not apply.
        tracing::warn!("ignoring a cache log that belongs to another base file");
        return Ok(());
    }
    let mut records = Records::new(bytes);
    let mut valid = format::HEADER_LEN;
    // Records of the append being read; applied only once its COMMIT is read,
    // so an append torn by a crash is dropped whole.
    let mut current: Vec<Record<'_>> = Vec::new();
    let mut revision = None;
    while let Some(next) = records.next_record() {
        progress.at(
            CacheStep::Decoding,
            records.position() as u64,
            bytes.len() as u64,
        );
        match next {
            Ok(record) if record.tag == tag::COMMIT => {
                let count = Dec::new(&record).u64()?;
                if count != current.len() as u64 + u64::from(revision.is_some()) {
                    return Err(Error::persist(
                        "cache log append is inconsistent (corrupt file)",
                    ));
                }
                let r = revision.take().ok_or_else(|| {
                    Error::persist("cache log append without a revision (corrupt file)")
                })?;
                image.revision = image.revision.max(checked_revision(r)?);
                for record in current.drain(..) {
                    // Memo values in the log point into the log's bytes.
                    apply_record(&record, image, true)?;
                }
                report.log_records += 1;
                valid = records.position();
            }
            Ok(record) if record.tag == tag::REVISION => {
                if revision.is_some() {
                    return Err(Error::persist(
                        "cache log append is not committed (corrupt file)",
                    ));
                }
                revision = Some(Revision::from_u64(Dec::new(&record).var()?));
            }
            Ok(record) => {
                if revision.is_none() {
                    return Err(Error::persist(
                        "cache log record outside an append (corrupt file)",
                    ));
                }
                current.push(record);
            }
            Err(RecordError::Torn) => break,
            Err(RecordError::Corrupt(m)) => {
                return Err(Error::persist(format!("cache log is corrupt: {m}")));
            }
        }
    }
    if valid < bytes.len() {
        tracing::warn!("ignoring an incomplete append at the end of the cache log");
        report.torn_tail = true;
    }
    image.log_len = valid as u64;
    if let Some(tail) = bytes[..valid].last_chunk::<8>() {
        image.log_tail = *tail;
    }
    Ok(())
}

fn install(
    view: &Arc<ViewCore>,
    path: &Path,
    mut image: Image<'_>,
    base: &Arc<[u8]>,
    log: Option<&Arc<[u8]>>,
    mut report: LoadReport,
    progress: &mut Progress,
) -> Result<LoadReport> {
    // Resolve memos' keys before touching anything.
    let key_counts: Vec<Option<usize>> = image
        .sections
        .iter()
        .map(|s| match s {
            Section::Live { stage, .. } => Some(stage.key_count()),
            Section::Dropped => None,
        })
        .collect();
    let mut memos: Vec<Vec<ParsedMemo>> = std::mem::take(&mut image.memos);
    for (s, list) in memos.iter_mut().enumerate() {
        // Memos of code that changed are dropped (S18b); their keys stay,
        // so dependents in other kinds still resolve and revalidate.
        let stale = image.code_changed
            || matches!(
                image.sections.get(s),
                Some(Section::Live { stale: true, .. })
            );
        if stale {
            report.dropped_memos += list.len();
            list.clear();
        }
        let before = list.len();
        let keys_here = key_counts.get(s).copied().flatten().unwrap_or(0);
        list.retain(|m| m.deps_ok && (m.file_key as usize) < keys_here);
        report.dropped_memos += before - list.len();
        // Later records (the log) win over earlier ones for the same key.
        // (A base holds each key once; only a log repeats them, so the
        // index of the last record per key is built only then.)
        let mut seen = vec![false; keys_here];
        let mut repeated = false;
        for m in list.iter() {
            repeated |= std::mem::replace(&mut seen[m.file_key as usize], true);
        }
        drop(seen);
        if repeated {
            let mut last: Vec<usize> = vec![usize::MAX; keys_here];
            for (i, m) in list.iter().enumerate() {
                last[m.file_key as usize] = i;
            }
            let mut i = 0;
            list.retain(|m| {
                let keep = last[m.file_key as usize] == i;
                i += 1;
                keep
            });
        }
    }
    // A memo that read a query whose memo is not loaded (dropped for its
    // code version or a dropped dependency, an error, not persistable) must
    // not be served on the strength of that edge: the query re-runs at the
    // loaded revision, and its new `changed_at` could equal the one the
    // edge saw in the process that saved it. Such edges never match, so the
    // dependent re-verifies by re-running (and cutoff spares its parents).
    // The same holds for an edge that saw another identity than the loaded
    // memo's: the memo it read was not saved (an append skips memos that
    // are not persistable — an untracked read — and memos evicted since),
    // the loaded one is older, and re-running it at the loaded revision
    // could again produce that identity with another value.
    // (Per query section and key: the index of its kept memo in `memos`,
    // `u32::MAX` for none; the identity is decoded from the memo's record
    // when an edge is resolved, so this costs 4 bytes a key.)
    let loaded: Vec<Option<Vec<u32>>> = image
        .sections
        .iter()
        .enumerate()
        .map(|(s, section)| match section {
            Section::Live {
                kind: IngredientKind::Query,
                stage,
                ..
            } => {
                let mut slots = vec![u32::MAX; stage.key_count()];
                for (i, m) in memos.get(s).into_iter().flatten().enumerate() {
                    if let Some(slot) = slots.get_mut(m.file_key as usize) {
                        *slot = u32::try_from(i).unwrap_or(u32::MAX);
                    }
                }
                Some(slots)
            }
            _ => None,
        })
        .collect();
    // From here on, nothing can fail on the file's account.
    let mut key_ids = Vec::with_capacity(image.sections.len());
    for section in &mut image.sections {
        key_ids.push(match section {
            Section::Live { stage, .. } => stage.install_keys()?,
            Section::Dropped => Vec::new(),
        });
    }
    let index_of: Vec<Option<IngredientIndex>> = image
        .sections
        .iter()
        .map(|s| match s {
            Section::Live { index, .. } => Some(*index),
            Section::Dropped => None,
        })
        .collect();
    // The database resumes at the saved revision R exactly. A loaded memo
    // is served at R without revalidation only if the whole load vouches
    // for it: every loaded memo was verified at R when saved, and everything
    // each one read was loaded with it (its inputs are the inputs at R; no
    // dependency was dropped — for its code version (S18b), its types, an
    // error, a non-persistent read). Such a memo was valid at R in the
    // process that saved it, over the same inputs and the same code, so it
    // is valid here; it is marked verified at R in the main history
    // (`verified_main`). Otherwise every loaded memo counts as verified
    // before R at most and is revalidated (its edges walked) before it is
    // first served; `last_changed` of every durability is R, so the
    // durability shortcut cannot vouch for those either.
    let revision = image.revision;
    let before = Revision::from_u64(revision.as_u64().saturating_sub(1));
    let mut vouched = true;
    let mut query_tables = Vec::new();
    let mut tables = Vec::new();
    for (s, section) in image.sections.iter_mut().enumerate() {
        let Section::Live {
            index, kind, stage, ..
        } = section
        else {
            continue;
        };
        match kind {
            IngredientKind::Input => {
                report.inputs += stage.input_count();
                tables.push((*index, stage.input_table(&key_ids[s])?));
            }
            IngredientKind::Interned => {
                report.interned += stage.interned_count();
                stage.install_interned()?;
            }
            IngredientKind::Query => {
                let list: &[ParsedMemo] = memos.get(s).map_or(&[], Vec::as_slice);
                let count = list.len();
                // Each kept memo is decoded a second time, from bytes the
                // parse already checked, straight into its final form, and
                // handed to the stage one at a time (no second list).
                let mut failed = None;
                let mut built = 0usize;
                let mut parsed = list.iter();
                let files = Files { base, log };
                let resolve = Resolve {
                    key_ids: &key_ids,
                    index_of: &index_of,
                    loaded: &loaded,
                    memos: &memos,
                    files,
                };
                let mut next = || -> Option<LoadedMemo> {
                    let m = parsed.next()?;
                    match build_memo(m, s, &resolve, (revision, before), &mut vouched) {
                        Ok(memo) => {
                            built += 1;
                            if built.is_multiple_of(64) || built == count {
                                progress.at(CacheStep::Installing, built as u64, count as u64);
                            }
                            Some(memo)
                        }
                        Err(e) => {
                            failed = Some(e);
                            None
                        }
                    }
                };
                let table = stage.memo_table(count, &mut std::iter::from_fn(&mut next))?;
                if let Some(e) = failed {
                    return Err(e);
                }
                report.memos += built;
                query_tables.push((s, table.clone()));
                tables.push((*index, table));
            }
        }
    }
    if !vouched {
        // Some memo cannot be vouched for: none is (the ones built before
        // this was known go back to "verified before R").
        for (s, table) in &query_tables {
            if let Some(Section::Live { stage, .. }) = image.sections.get(*s) {
                stage.verified_main_at_most(table, before);
            }
        }
    }
    report.verified = vouched && report.memos > 0;
    if !view.install_loaded(revision, tables) {
        return Err(Error::persist(
            "the database was changed while load_cache ran; nothing was loaded",
        ));
    }
    report.loaded = true;
    report.revision = revision;

    // Link the database to the file so later changes can be appended.
    let mut loaded_keys = HashMap::new();
    for (s, ids) in key_ids.into_iter().enumerate() {
        if let Some(Some(index)) = index_of.get(s) {
            loaded_keys.insert(*index, ids);
        }
    }
    let interned = image
        .sections
        .iter()
        .filter_map(|s| match s {
            Section::Live {
                index,
                kind: IngredientKind::Interned,
                stage,
                ..
            } => Some((*index, stage.interned_count() as u32)),
            _ => None,
        })
        .collect();
    *lock(&Persistence::of(view)?.link) = Some(Link {
        path: path.to_path_buf(),
        base_id: image.base_id,
        revision: image.revision,
        keys: Default::default(),
        loaded_keys,
        interned,
        log_len: image.log_len,
        log_tail: image.log_tail,
    });
    Ok(report)
}

/// The bytes memos lie in.
#[derive(Clone, Copy)]
struct Files<'a> {
    base: &'a Arc<[u8]>,
    log: Option<&'a Arc<[u8]>>,
}

impl<'a> Files<'a> {
    fn of(&self, m: &ParsedMemo) -> Result<&'a Arc<[u8]>> {
        match (m.in_log, self.log) {
            (false, _) => Ok(self.base),
            (true, Some(log)) => Ok(log),
            (true, None) => Err(Error::internal("memo of a log that was not read")),
        }
    }
}

/// What resolving a kept memo's key and edges needs.
struct Resolve<'a> {
    /// Per section: key id by file key.
    key_ids: &'a [Vec<crate::engine::storage::KeyId>],
    /// Per section: its ingredient index.
    index_of: &'a [Option<IngredientIndex>],
    /// Per query section: the kept memo of each file key (index in `memos`).
    loaded: &'a [Option<Vec<u32>>],
    memos: &'a [Vec<ParsedMemo>],
    files: Files<'a>,
}

impl Resolve<'_> {
    /// Whether an edge to key `dk` of section `ds` that saw `seen` must
    /// never match: `ds` is a query section and the key's memo was not
    /// loaded, or was loaded with another identity (see `install`).
    fn unmatched(&self, ds: usize, dk: usize, seen: Revision) -> Result<bool> {
        let Some(Some(slots)) = self.loaded.get(ds) else {
            return Ok(false);
        };
        let Some(memo) = slots
            .get(dk)
            .and_then(|&i| self.memos.get(ds)?.get(i as usize))
        else {
            return Ok(true);
        };
        let mut d = Dec::at(self.files.of(memo)?, memo.pos());
        Ok(memo_head(&mut d, usize::MAX)?.changed_at != seen)
    }
}

/// Decodes a memo the parse kept (`m`, of section `s`) into its final
/// form: keys resolved to ids, edges to memos that were not loaded (or
/// were loaded with another identity) made never to match, verified before
/// the loaded revision at most — or at `revision` in the main history if
/// it was saved as verified there and every edge matched a loaded memo or
/// an input (see `install`); otherwise `vouched` is cleared.
fn build_memo(
    m: &ParsedMemo,
    s: usize,
    r: &Resolve<'_>,
    (revision, before): (Revision, Revision),
    vouched: &mut bool,
) -> Result<LoadedMemo> {
    let (key_ids, index_of) = (r.key_ids, r.index_of);
    let file = r.files.of(m)?;
    let unresolved = || Error::internal("unresolved memo after validation");
    let mut d = Dec::at(file, m.pos());
    let head = memo_head(&mut d, usize::MAX)?;
    let key = *key_ids
        .get(s)
        .and_then(|ids| ids.get(head.file_key))
        .ok_or_else(unresolved)?;
    let mut deps = Vec::with_capacity(head.deps);
    let mut all_loaded = true;
    for _ in 0..head.deps {
        let (ds, dk, seen) = memo_dep(&mut d)?;
        let (ds, dk) = (ds as usize, dk as usize);
        let (Some(Some(ingredient)), Some(&dep_key)) = (
            index_of.get(ds),
            key_ids.get(ds).and_then(|ids| ids.get(dk)),
        ) else {
            return Err(unresolved());
        };
        // A memo that read a query whose memo is not loaded (or another
        // memo than the loaded one) must not be served on the strength of
        // that edge (see `install`).
        let missing = r.unmatched(ds, dk, seen)?;
        all_loaded &= !missing;
        deps.push(Edge {
            dep: Dep {
                ingredient: *ingredient,
                key: dep_key,
            },
            seen: if missing { NEVER_SEEN } else { seen },
            memo: None,
        });
    }
    let (value, offset) = d.bytes_at()?;
    let verified_at = head.verified_at.min(before);
    let vouch = *vouched && all_loaded && head.verified_at == revision;
    *vouched = vouch;
    let verified_main = if vouch { revision } else { verified_at };
    Ok(LoadedMemo {
        meta: MemoMeta {
            key,
            newest_identity: MemoMeta::identity_bound(head.changed_at, &deps),
            deps: deps.into_boxed_slice(),
            changed_at: head.changed_at,
            durability: head.durability,
            executed_at: head.executed_at,
            reason: Reason::New,
            verified_main: AtomicU64::new(verified_main.as_u64()),
        },
        file_key: head.file_key,
        verified_at,
        bytes: file.clone(),
        value: offset..offset + value.len(),
    })
}
