//! Full saves (a new base file, crash-safe) and incremental appends to the
//! log beside it.

use super::{CacheOperation, CacheStep, Progress};
use super::{IdMap, KeyIndex, Persistence};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::format::{self, Enc, FileKind};
use super::{AppendReport, Link, PersistKind, SaveReport, tag};
use crate::engine::ingredient::{Ingredient, IngredientKind};
use crate::engine::storage::{Dep, DepHash, IngredientIndex, KeyId, MAIN_FORK, MemoRef, State};
use crate::engine::view::ViewCore;
use crate::error::{Error, Result};
use crate::util::lock;

/// The persistent kinds of a registry: section number = position.
struct Sections<'a> {
    list: Vec<(
        IngredientIndex,
        &'a Arc<dyn Ingredient>,
        &'a dyn PersistKind,
    )>,
    by_ingredient: IdMap<IngredientIndex, usize>,
}

impl<'a> Sections<'a> {
    fn of(view: &'a ViewCore) -> Self {
        let list: Vec<_> = match Persistence::of(view) {
            Ok(p) => p
                .kinds()
                .filter_map(|(i, kind)| Some((i, view.shared().registry().get(i).ok()?, kind)))
                .collect(),
            Err(_) => Vec::new(),
        };
        let by_ingredient = list
            .iter()
            .enumerate()
            .map(|(s, (i, _, _))| (*i, s))
            .collect();
        Sections {
            list,
            by_ingredient,
        }
    }
}

/// Key tables being written: per section, key id → file index.
#[derive(Default)]
struct KeyMaps {
    maps: IdMap<usize, (KeyIndex, usize)>,
    /// Keys first referenced by this write, per section, in file order.
    fresh: IdMap<usize, Vec<KeyId>>,
}

impl KeyMaps {
    fn index(&mut self, section: usize, key: KeyId) -> usize {
        let (map, count) = self.maps.entry(section).or_default();
        *map.entry(key).or_insert_with(|| {
            let i = *count;
            *count += 1;
            self.fresh.entry(section).or_default().push(key);
            i
        })
    }

    /// Whether `key` has a place in section `section` already.
    fn known(&self, section: usize, key: KeyId) -> bool {
        self.maps
            .get(&section)
            .is_some_and(|(map, _)| map.contains_key(&key))
    }

    /// KEYS records for keys first referenced since the last call.
    fn flush(&mut self, sections: &Sections<'_>, out: &mut Vec<u8>) -> Result<usize> {
        let mut records = 0;
        let mut fresh: Vec<_> = std::mem::take(&mut self.fresh).into_iter().collect();
        fresh.sort_by_key(|(s, _)| *s);
        for (section, keys) in fresh {
            let (_, _, kind) = sections.list[section];
            let count = self.maps.get(&section).map_or(0, |m| m.1);
            let mut e = Enc::default();
            e.var(section as u64)
                .var((count - keys.len()) as u64)
                .bytes(&kind.encode_keys(&keys)?);
            format::push_record(out, tag::KEYS, &e.buf)?;
            records += 1;
        }
        Ok(records)
    }
}

/// A memo worth persisting: not an error, and every dependency persistent.
/// Nor one whose key or an edge names a key id reclaimed since (such a
/// memo reads as changed anyway, and its key could not be written:
/// `typed/keys.rs`).
fn persistable(memo: &MemoRef, section: usize, sections: &Sections<'_>) -> bool {
    let meta = memo.meta();
    memo.error().is_none()
        && sections.list[section].1.names_key(meta.key)
        && meta.deps.iter().all(|e| {
            sections
                .by_ingredient
                .get(&e.dep.ingredient)
                .is_some_and(|&s| sections.list[s].1.names_key(e.dep.key))
        })
}

/// Appends one memo to a MEMOS payload.
fn encode_memo(
    e: &mut Enc,
    keys: &mut KeyMaps,
    sections: &Sections<'_>,
    section: usize,
    memo: &MemoRef,
    verified_at: crate::revision::Revision,
    value: &[u8],
) {
    let meta = memo.meta();
    e.var(keys.index(section, meta.key) as u64)
        .var(verified_at.as_u64())
        .var(meta.changed_at.as_u64())
        .var(meta.executed_at.as_u64())
        .u8(meta.durability.index() as u8)
        .var(meta.deps.len() as u64);
    for edge in meta.deps.iter() {
        let s = sections.by_ingredient[&edge.dep.ingredient];
        e.var(s as u64)
            .var(keys.index(s, edge.dep.key) as u64)
            .var(edge.seen.as_u64());
    }
    e.bytes(value);
}

/// What a save writes: `view`'s state at the moment the save was asked
/// for, and where the journal stood then.
pub(crate) struct SaveSnapshot {
    cut: u64,
    state: Arc<State>,
}

/// Takes the state a save will write (cheap: pointer clones), so the save
/// is of the revision current when it was asked for, however long the
/// writing takes and whatever the database does meanwhile.
pub(crate) fn snapshot_for_save(view: &ViewCore) -> SaveSnapshot {
    view.merge_pending();
    // Journal entries from before this point are covered by the state we
    // are about to read (if at or before its revision).
    let cut = lock(view.shared().journal()).end();
    let state = view.load_full();
    SaveSnapshot { cut, state }
}

/// Writes a full base file for `snapshot`, holding the cache's lock
/// (S18c). Blocking: run off the runtime's worker threads.
pub(crate) fn save(
    view: &Arc<ViewCore>,
    path: &Path,
    snapshot: SaveSnapshot,
) -> Result<SaveReport> {
    let _lock = format::lock_cache(
        path,
        format::LockMode::Exclusive,
        Persistence::of(view)?.cache_lock_timeout,
    )?;
    let mut progress = Progress::new(
        Persistence::of(view)?.progress.clone(),
        CacheOperation::Save,
    );
    let result = save_locked(view, path, snapshot, &mut progress);
    progress.done();
    result
}

fn save_locked(
    view: &Arc<ViewCore>,
    path: &Path,
    snapshot: SaveSnapshot,
    progress: &mut Progress,
) -> Result<SaveReport> {
    let started = std::time::Instant::now();
    let SaveSnapshot { cut, state } = snapshot;
    tracing::info!(path = %path.display(), revision = %state.revision, "saving cache");
    format::remove_stale_temps(path);
    let sections = Sections::of(view);
    let base_id = format::new_base_id();
    let mut report = SaveReport {
        revision: state.revision,
        ..SaveReport::default()
    };
    let mut keys = KeyMaps::default();
    let mut body: Vec<u8> = Vec::new();
    let mut records = 0usize;
    let mut interned_counts = HashMap::new();
    let table = |i: IngredientIndex| {
        state
            .tables
            .get(i.as_usize())
            .ok_or_else(|| Error::internal("missing table"))
    };

    // Inputs, memos and interned values first (they register keys), keys
    // after; the loader accepts any order of records.
    for (s, (index, ing, kind)) in sections.list.iter().enumerate() {
        tracing::debug!(
            kind = kind.codec_name(),
            section = s,
            of = sections.list.len(),
            "saving kind"
        );
        match ing.kind() {
            IngredientKind::Input => {
                let (slots, blob) = kind.encode_inputs(table(*index)?, None)?;
                if slots.is_empty() {
                    continue;
                }
                let mut e = Enc::default();
                e.var(s as u64).var(slots.len() as u64);
                for (key, changed_at, present) in &slots {
                    e.var(keys.index(s, *key) as u64)
                        .var(changed_at.as_u64())
                        .u8(u8::from(*present));
                    report.inputs += usize::from(*present);
                }
                e.bytes(&blob);
                format::push_record(&mut body, tag::INPUTS, &e.buf)?;
                records += 1;
            }
            IngredientKind::Query => {
                let memos = ing.memos(table(*index)?);
                let mut e = Enc::default();
                let mut count = 0u64;
                let mut payload = Enc::default();
                let main = state.fork == MAIN_FORK;
                for (_, memo, entry_verified) in &memos {
                    let verified_at =
                        &memo
                            .meta()
                            .effective_verified(*entry_verified, state.revision, main);
                    if !persistable(memo, s, &sections) {
                        report.skipped_memos += 1;
                        continue;
                    }
                    let Some(value) = kind.encode_memo_value(memo)? else {
                        report.skipped_memos += 1;
                        continue;
                    };
                    encode_memo(
                        &mut payload,
                        &mut keys,
                        &sections,
                        s,
                        memo,
                        *verified_at,
                        &value,
                    );
                    count += 1;
                    progress.at(
                        CacheStep::Encoding,
                        (report.inputs + report.memos) as u64 + count,
                        0,
                    );
                }
                if count == 0 {
                    continue;
                }
                report.memos += count as usize;
                e.var(s as u64).var(count);
                e.buf.extend_from_slice(&payload.buf);
                format::push_record(&mut body, tag::MEMOS, &e.buf)?;
                records += 1;
            }
            IngredientKind::Interned => {
                let n = kind.interned_len();
                interned_counts.insert(*index, n);
                if n == 0 {
                    continue;
                }
                let mut e = Enc::default();
                e.var(s as u64).var(0).bytes(&kind.encode_interned(0, n)?);
                format::push_record(&mut body, tag::INTERNED, &e.buf)?;
                records += 1;
                report.interned += n as usize;
            }
        }
    }

    let mut out = format::header(FileKind::Base, base_id).to_vec();
    let code = super::code::code_version(Persistence::of(view)?.code_version.as_deref());
    let mut e = Enc::default();
    e.var(state.revision.as_u64())
        .var(sections.list.len() as u64)
        .str(&code);
    format::push_record(&mut out, tag::META, &e.buf)?;
    for (s, (_, ing, kind)) in sections.list.iter().enumerate() {
        let mut e = Enc::default();
        e.var(s as u64)
            .str(kind.codec_name())
            .u8(ing.kind() as u8)
            .u64(kind.fingerprint())
            .str(kind.description())
            .var(u64::from(kind.version()));
        format::push_record(&mut out, tag::SECTION, &e.buf)?;
    }
    records += 1 + sections.list.len();
    records += keys.flush(&sections, &mut out)?;
    out.extend_from_slice(&body);
    let mut e = Enc::default();
    e.u64(records as u64);
    format::push_record(&mut out, tag::END, &e.buf)?;

    format::write_atomic(path, &out, progress)?;
    // The old log belongs to the old base (its base id no longer matches);
    // remove it so it does not linger.
    let _ = std::fs::remove_file(format::log_path(path));
    report.bytes = out.len() as u64;

    // A forked snapshot's history is not the database's: do not link it.
    if state.fork == MAIN_FORK {
        link_after_save(
            view,
            path,
            base_id,
            &state,
            &sections,
            keys,
            interned_counts,
        )?;
        lock(view.shared().journal()).saved(cut, state.revision);
    }
    tracing::info!(
        path = %path.display(),
        bytes = report.bytes,
        inputs = report.inputs,
        memos = report.memos,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache saved"
    );
    Ok(report)
}

fn link_after_save(
    view: &ViewCore,
    path: &Path,
    base_id: u64,
    state: &State,
    sections: &Sections<'_>,
    keys: KeyMaps,
    interned: HashMap<IngredientIndex, u32>,
) -> Result<()> {
    let keys = keys
        .maps
        .into_iter()
        .map(|(s, m)| (sections.list[s].0, m))
        .collect();
    *lock(&Persistence::of(view)?.link) = Some(Link {
        path: path.to_path_buf(),
        base_id,
        revision: state.revision,
        keys,
        loaded_keys: HashMap::new(),
        interned,
        log_len: 0,
        log_tail: [0; 8],
    });
    Ok(())
}

/// Appends the changes since the last save/append/load to the log beside
/// `path`, as one atomic unit (ended by a `COMMIT` record). Falls back to a
/// full save if the journal overflowed.
///
/// Holds the cache's lock, and first checks that the files on disk are still
/// the ones this database saved, loaded or appended to (S18c): if another
/// database replaced the base or extended the log, nothing is written and the
/// error says to `save_cache`.
pub(crate) fn append(view: &Arc<ViewCore>, path: &Path) -> Result<AppendReport> {
    let mut progress = Progress::new(
        Persistence::of(view)?.progress.clone(),
        CacheOperation::Append,
    );
    let result = append_reporting(view, path, &mut progress);
    progress.done();
    result
}

fn append_reporting(
    view: &Arc<ViewCore>,
    path: &Path,
    progress: &mut Progress,
) -> Result<AppendReport> {
    let not_linked = || {
        Error::persist(format!(
            "{} is not this database's cache: call save_cache (or load_cache) on it first",
            path.display()
        ))
    };
    if lock(&Persistence::of(view)?.link)
        .as_ref()
        .is_none_or(|l| l.path != path)
    {
        return Err(not_linked());
    }
    // The file lock before the link's mutex, as in a save (which takes the
    // mutex at its end, holding the file lock): never the other way round.
    let _lock = format::lock_cache(
        path,
        format::LockMode::Exclusive,
        Persistence::of(view)?.cache_lock_timeout,
    )?;
    let mut link_guard = lock(&Persistence::of(view)?.link);
    let Some(link) = link_guard.as_mut().filter(|l| l.path == path) else {
        return Err(not_linked());
    };
    check_owned(path, link)?;
    view.merge_pending();
    // The journal's entries and the state name key ids: none is released
    // while they are written.
    let _held = view.shared().hold_ids();
    let (entries, overflowed) = {
        let mut journal = lock(view.shared().journal());
        (journal.take(), journal.overflowed)
    };
    if overflowed {
        drop(link_guard);
        let saved = save_locked(view, path, snapshot_for_save(view), progress)?;
        return Ok(AppendReport {
            revision: saved.revision,
            bytes: saved.bytes,
            inputs: saved.inputs,
            memos: saved.memos,
            interned: saved.interned,
            full_save: true,
        });
    }
    let state = view.load_full();
    match write_append(view, path, link, &state, &entries, progress) {
        Ok(report) => Ok(report),
        Err(e) => {
            // Nothing was recorded as written: keep the changes for next time.
            lock(view.shared().journal()).restore(entries);
            Err(e)
        }
    }
}

/// Checks that the base at `path` is the one `link` names and that its log
/// holds exactly what this database knows of (plus, at most, an uncommitted
/// torn tail): otherwise another database wrote the cache since, and records
/// of this one would name keys by the wrong numbers.
fn check_owned(path: &Path, link: &Link) -> Result<()> {
    let replaced = |what: &str| Err(Error::cache_replaced(path, what));
    let Some(head) = format::read_at(path, 0, format::HEADER_LEN)? else {
        return replaced("the base file is gone");
    };
    match format::read_header(&head) {
        Ok((FileKind::Base, id)) if id == link.base_id => {}
        Ok(_) => return replaced("the base file was written by another database"),
        Err(_) => return replaced("the base file is no longer a picante cache"),
    }
    let log = format::log_path(path);
    let on_disk = match std::fs::metadata(&log) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::persist(format!("reading {}: {e}", log.display()))),
    };
    let Some(len) = on_disk else {
        return if link.log_len == 0 {
            Ok(())
        } else {
            replaced("its log was removed")
        };
    };
    let head = format::read_at(&log, 0, format::HEADER_LEN)?.unwrap_or_default();
    let ours = matches!(format::read_header(&head), Ok((FileKind::Log, id)) if id == link.base_id);
    if link.log_len == 0 {
        // A log of another base is a leftover (it is replaced); a log of this
        // base that holds a committed append was written by a database that
        // loaded this base.
        if ours && committed_after(&log, format::HEADER_LEN as u64, len)? {
            return replaced("another database appended to its log");
        }
        return Ok(());
    }
    if !ours {
        return replaced("its log was replaced");
    }
    if len < link.log_len {
        return replaced("its log is shorter than this database wrote");
    }
    let tail = format::read_at(&log, link.log_len - 8, 8)?.unwrap_or_default();
    if tail[..] != link.log_tail[..] {
        return replaced("its log was rewritten");
    }
    if committed_after(&log, link.log_len, len)? {
        return replaced("another database appended to its log");
    }
    Ok(())
}

/// Whether the log's bytes `from..len` hold a complete, committed append.
fn committed_after(log: &Path, from: u64, len: u64) -> Result<bool> {
    if len <= from {
        return Ok(false);
    }
    let bytes = format::read_at(log, from, (len - from) as usize)?.unwrap_or_default();
    let mut records = format::Records::at(&bytes, 0);
    while let Some(next) = records.next_record() {
        match next {
            Ok(record) if record.tag == tag::COMMIT => return Ok(true),
            Ok(_) => {}
            Err(_) => return Ok(false),
        }
    }
    Ok(false)
}

fn write_append(
    view: &ViewCore,
    path: &Path,
    link: &mut Link,
    state: &State,
    entries: &[(u64, crate::revision::Revision, Dep)],
    progress: &mut Progress,
) -> Result<AppendReport> {
    let sections = Sections::of(view);
    let mut keys = KeyMaps::default();
    for (index, ids) in std::mem::take(&mut link.loaded_keys) {
        let map = ids.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        link.keys.insert(index, (map, ids.len()));
    }
    for (index, m) in &link.keys {
        if let Some(&s) = sections.by_ingredient.get(index) {
            keys.maps.insert(s, m.clone());
        }
    }
    let mut report = AppendReport {
        revision: state.revision,
        ..AppendReport::default()
    };
    let mut out = Vec::new();
    if link.log_len == 0 {
        out.extend_from_slice(&format::header(FileKind::Log, link.base_id));
    }
    let mut e = Enc::default();
    e.var(state.revision.as_u64());
    format::push_record(&mut out, tag::REVISION, &e.buf)?;
    let mut records = 1u64;

    // Interned values first: memos and keys below may name them.
    let mut interned_now = HashMap::new();
    for (s, (index, ing, kind)) in sections.list.iter().enumerate() {
        if ing.kind() != IngredientKind::Interned {
            continue;
        }
        let before = link.interned.get(index).copied().unwrap_or(0);
        let now = kind.interned_len();
        interned_now.insert(*index, now);
        if now > before {
            let mut e = Enc::default();
            e.var(s as u64)
                .var(u64::from(before))
                .bytes(&kind.encode_interned(before, now)?);
            format::push_record(&mut out, tag::INTERNED, &e.buf)?;
            records += 1;
            report.interned += (now - before) as usize;
        }
    }

    // The latest state of each changed slot or memo, once.
    let mut seen: HashSet<Dep, DepHash> = HashSet::default();
    for (_, _, dep) in entries.iter().rev() {
        if !seen.insert(*dep) {
            continue;
        }
        let Some(&s) = sections.by_ingredient.get(&dep.ingredient) else {
            continue;
        };
        let (index, ing, kind) = sections.list[s];
        let Some(table) = state.tables.get(index.as_usize()) else {
            continue;
        };
        let mut e = Enc::default();
        let record = match ing.kind() {
            IngredientKind::Input => {
                let (slots, blob) = kind.encode_inputs(table, Some(&[dep.key]))?;
                let Some((key, changed_at, present)) = slots.first() else {
                    continue;
                };
                // Absent, never set, and not in the file under this id:
                // nothing to overwrite (and the id may name no key any
                // more: its key was collected and the id reclaimed).
                if !present
                    && *changed_at == crate::revision::Revision::ZERO
                    && !keys.known(s, *key)
                {
                    continue;
                }
                e.var(s as u64)
                    .var(1)
                    .var(keys.index(s, *key) as u64)
                    .var(changed_at.as_u64())
                    .u8(u8::from(*present))
                    .bytes(&blob);
                report.inputs += 1;
                tag::INPUTS
            }
            IngredientKind::Query => {
                let Some((memo, entry_verified)) = ing.memo(table, dep.key) else {
                    continue;
                };
                if !persistable(&memo, s, &sections) {
                    continue;
                }
                let Some(value) = kind.encode_memo_value(&memo)? else {
                    continue;
                };
                let verified_at =
                    memo.meta()
                        .effective_verified(entry_verified, state.revision, true);
                e.var(s as u64).var(1);
                encode_memo(&mut e, &mut keys, &sections, s, &memo, verified_at, &value);
                report.memos += 1;
                tag::MEMOS
            }
            IngredientKind::Interned => continue,
        };
        // Keys first referenced by this record go before it.
        records += keys.flush(&sections, &mut out)? as u64;
        format::push_record(&mut out, record, &e.buf)?;
        records += 1;
    }
    let mut e = Enc::default();
    e.u64(records);
    format::push_record(&mut out, tag::COMMIT, &e.buf)?;

    let log = format::log_path(path);
    if link.log_len == 0 {
        format::write_atomic(&log, &out, progress)?;
    } else {
        // Cut a torn tail left by an append that failed or crashed.
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&log)
            && f.metadata().is_ok_and(|m| m.len() > link.log_len)
        {
            f.set_len(link.log_len)
                .map_err(|e| Error::persist(format!("truncating {}: {e}", log.display())))?;
        }
        format::append(&log, &out, progress)?;
    }
    link.log_len += out.len() as u64;
    if let Some(tail) = out.last_chunk::<8>() {
        link.log_tail = *tail;
    }
    link.revision = state.revision;
    for (s, m) in keys.maps {
        link.keys.insert(sections.list[s].0, m);
    }
    link.interned = interned_now;
    report.bytes = out.len() as u64;
    Ok(report)
}
