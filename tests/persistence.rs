//! Persistence (DESIGN.md S17, S18; issue 4): round trips, schema changes,
//! crash safety, the incremental log, load errors and refused types.
//!
//! Every query body counts its executions, so the tests assert how much work
//! a load saves (or redoes), not only the values.

mod common;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Count, TempDir};
use facet::Facet;
use picante::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Fixtures

/// The log beside the cache at `path`.
fn log_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// A persistent input: file text by path.
struct Src;
impl Input for Src {
    type Key = String;
    type Value = String;
}

/// An input kept in memory only.
struct Flag;
impl Input for Flag {
    type Key = String;
    type Value = bool;
}

/// A persistent interned kind.
struct Label;
impl Interned for Label {
    type Value = String;
}

/// An interned kind kept in memory only.
struct Tag;
impl Interned for Tag {
    type Value = String;
}

macro_rules! counts {
    ($($field:ident),* $(,)?) => {
        /// One execution counter per query body.
        #[derive(Clone, Default)]
        struct Counts {
            $($field: Count,)*
        }

        impl Counts {
            /// Executions since the last call, by body, nonzero ones only.
            fn take(&self) -> Vec<(&'static str, usize)> {
                let mut out = Vec::new();
                $(
                    let n = self.$field.take();
                    if n > 0 {
                        out.push((stringify!($field), n));
                    }
                )*
                out
            }
        }
    };
}

counts!(
    len, parity, shout, total, words, upper, flagged, mem, after_mem, wrap, fails,
);

/// Length of a file's text.
struct Len(Count);
#[async_trait]
impl AsyncQuery for Len {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.input::<Src>(&k)?.len() as u64)
    }
}

/// Whether `Len` is even (early cutoff: many lengths, two values).
struct Parity(Count);
#[async_trait]
impl AsyncQuery for Parity {
    type Key = String;
    type Value = bool;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<bool> {
        self.0.hit();
        Ok(cx.query::<Len>(k).await? % 2 == 0)
    }
}

/// Depends on `Parity` only.
struct Shout(Count);
#[async_trait]
impl AsyncQuery for Shout {
    type Key = String;
    type Value = String;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<String> {
        self.0.hit();
        let even = cx.query::<Parity>(k.clone()).await?;
        Ok(format!("{}:{k}", if even { "EVEN" } else { "ODD" }))
    }
}

/// The sum of `Len` over some files.
struct Total(Count);
#[async_trait]
impl AsyncQuery for Total {
    type Key = Vec<String>;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, keys: Vec<String>) -> QueryResult<u64> {
        self.0.hit();
        let mut sum = 0;
        for k in keys {
            sum += cx.query::<Len>(k).await?;
        }
        Ok(sum)
    }
}

/// Interns every word of a file: the ids of its words.
struct Words(Count);
#[async_trait]
impl AsyncQuery for Words {
    type Key = String;
    type Value = Vec<u32>;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<Vec<u32>> {
        self.0.hit();
        let text = cx.input::<Src>(&k)?;
        Ok(text
            .split_whitespace()
            .map(|w| cx.intern::<Label>(w.to_string()).map(|id| id.raw()))
            .collect::<Result<_>>()?)
    }
}

/// An interned label, upper-cased (keyed by the raw id).
struct Upper(Count);
#[async_trait]
impl AsyncQuery for Upper {
    type Key = u32;
    type Value = String;
    async fn execute(&self, cx: &QueryCx, id: u32) -> QueryResult<String> {
        self.0.hit();
        Ok(cx.lookup::<Label>(Id::from_raw(id))?.to_uppercase())
    }
}

/// A persistent query that reads a non-persistent input.
struct Flagged(Count);
#[async_trait]
impl AsyncQuery for Flagged {
    type Key = String;
    type Value = String;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<String> {
        self.0.hit();
        let text = cx.input::<Src>(&k)?;
        let flag = cx.input_opt::<Flag>(&k)?.unwrap_or(false);
        Ok(if flag { format!("{text}!") } else { text })
    }
}

/// A non-persistent query over a persistent one.
struct Mem(Count);
#[async_trait]
impl AsyncQuery for Mem {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.query::<Len>(k).await? * 10)
    }
}

/// A persistent query over the non-persistent `Mem`.
struct AfterMem(Count);
#[async_trait]
impl AsyncQuery for AfterMem {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.query::<Mem>(k).await? + 1)
    }
}

/// A persistent query over `AfterMem` (persistent, but not saved).
struct Wrap(Count);
#[async_trait]
impl AsyncQuery for Wrap {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.query::<AfterMem>(k).await? * 2)
    }
}

/// Fails on a file containing "bad".
struct Fails(Count);
#[async_trait]
impl AsyncQuery for Fails {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<u64> {
        self.0.hit();
        let text = cx.input::<Src>(&k)?;
        if text.contains("bad") {
            return Err(QueryError::msg(format!("bad input at {k}")));
        }
        Ok(text.len() as u64)
    }
}

fn build(c: &Counts) -> Database {
    Database::builder()
        .persistent_input::<Src>()
        .input::<Flag>()
        .persistent_interned::<Label>()
        .interned::<Tag>()
        .persistent_query(Len(c.len.clone()))
        .persistent_query(Parity(c.parity.clone()))
        .persistent_query(Shout(c.shout.clone()))
        .persistent_query(Total(c.total.clone()))
        .persistent_query(Words(c.words.clone()))
        .persistent_query(Upper(c.upper.clone()))
        .persistent_query(Flagged(c.flagged.clone()))
        .query(Mem(c.mem.clone()))
        .persistent_query(AfterMem(c.after_mem.clone()))
        .persistent_query(Wrap(c.wrap.clone()))
        .persistent_query(Fails(c.fails.clone()))
        .build()
        .expect("build")
}

fn show<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("error: {e}"),
    }
}

/// Reads every persistent-kind query over the present `Src` keys and renders
/// the results (interned ids as the labels they stand for, so databases
/// that interned in another order compare equal).
async fn observe(db: &View) -> Vec<String> {
    let mut keys: Vec<String> = db
        .inputs::<Src>()
        .expect("inputs")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    let mut out = Vec::new();
    for k in &keys {
        out.push(format!(
            "Len({k}) = {}",
            show(db.query::<Len>(k.clone()).await)
        ));
        out.push(format!(
            "Shout({k}) = {}",
            show(db.query::<Shout>(k.clone()).await)
        ));
        out.push(format!(
            "Fails({k}) = {}",
            show(db.query::<Fails>(k.clone()).await)
        ));
        let words = db.query::<Words>(k.clone()).await;
        let mut labels = Vec::new();
        if let Ok(ids) = &words {
            for &id in ids {
                let label = db.lookup::<Label>(Id::from_raw(id)).expect("lookup");
                let upper = show(db.query::<Upper>(id).await);
                labels.push(format!("{label}->{upper}"));
            }
        }
        out.push(format!(
            "Words({k}) = {}",
            words.map_or_else(|e| format!("error: {e}"), |_| format!("{labels:?}"))
        ));
    }
    out.push(format!(
        "Total = {}",
        show(db.query::<Total>(keys.clone()).await)
    ));
    out
}

fn sorted_inputs<I: Input>(db: &View) -> Vec<(I::Key, I::Value)>
where
    I::Key: Ord,
{
    let mut v = db.inputs::<I>().expect("inputs");
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Every persistent label, by id (ids are dense from 0).
fn labels(db: &View) -> Vec<String> {
    (0..)
        .map_while(|raw| db.lookup::<Label>(Id::from_raw(raw)).ok())
        .collect()
}

fn set_all(db: &Database, texts: &[(&str, &str)]) {
    for (k, t) in texts {
        db.set::<Src>(k.to_string(), t.to_string()).expect("set");
    }
}

fn assert_persist_error(e: &Error) {
    assert!(matches!(e.kind(), ErrorKind::Persist(_)), "{e:?}");
    assert!(!e.to_string().is_empty());
}

/// A fresh database that a load did not touch.
fn assert_untouched(db: &Database, revision: Revision) {
    assert_eq!(db.revision(), revision);
    assert!(db.inputs::<Src>().unwrap().is_empty());
    assert!(db.lookup::<Label>(Id::from_raw(0)).is_err());
    assert!(db.memos().is_empty(), "{:?}", db.memos());
}

const TEXTS: &[(&str, &str)] = &[
    ("f0", "a"),
    ("f1", "ab"),
    ("f2", "hello world"),
    ("f3", "abc def ghi"),
    ("f4", "ab"),
];

// ---------------------------------------------------------------------------
// S17: round trips

#[tokio::test]
async fn s17_round_trip_reuses_memos() {
    let dir = TempDir::new("round-trip");
    let path = dir.join("c.bin");
    let c1 = Counts::default();
    let db1 = build(&c1);
    set_all(&db1, TEXTS);
    let hello = db1.intern::<Label>("hello".into()).unwrap();
    assert_eq!(hello.raw(), 0);
    let before = observe(&db1).await;
    assert!(!c1.take().is_empty());
    let saved = db1.save_cache(&path).await.unwrap();
    assert_eq!(saved.revision, db1.revision());
    assert_eq!(saved.inputs, TEXTS.len());
    assert_eq!(saved.skipped_memos, 0);
    assert_eq!(saved.memos, db1.memos().len());
    let labels1 = labels(&db1);
    assert_eq!(saved.interned, labels1.len());
    assert_eq!(saved.bytes, std::fs::metadata(&path).unwrap().len());
    assert!(!log_of(&path).exists());

    let c2 = Counts::default();
    let db2 = build(&c2);
    let report = db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.found && report.loaded, "{report:?}");
    assert!(report.ignored_error.is_none());
    assert_eq!(report.inputs, TEXTS.len());
    assert_eq!(report.memos, saved.memos);
    assert_eq!(report.interned, saved.interned);
    assert!(report.dropped_kinds.is_empty(), "{report:?}");
    assert_eq!(report.dropped_memos, 0);
    assert_eq!(report.log_records, 0);
    assert!(!report.torn_tail);
    assert_eq!(report.bytes, saved.bytes);
    assert_eq!(report.revision, db2.revision());
    assert_eq!(
        db2.revision(),
        db1.revision(),
        "S18c: the saved revision exactly"
    );

    // Inputs and interned ids are restored exactly.
    assert_eq!(sorted_inputs::<Src>(&db2), sorted_inputs::<Src>(&db1));
    assert_eq!(labels(&db2), labels1);
    assert_eq!(db2.intern::<Label>("hello".into()).unwrap(), hello);
    assert_eq!(db2.intern::<Label>("world".into()).unwrap().raw(), {
        labels1.iter().position(|l| l == "world").unwrap() as u32
    });

    // Memos are reused: nothing executes.
    assert_eq!(observe(&db2).await, before);
    assert_eq!(c2.take(), vec![]);
    assert_eq!(db2.stats().total_executions(), 0);

    // A value first interned after the load gets a fresh id.
    let fresh = db2.intern::<Label>("brand-new".into()).unwrap();
    assert_eq!(fresh.raw() as usize, labels1.len());
    assert_eq!(db2.lookup::<Label>(fresh).unwrap(), "brand-new");
    assert_eq!(db2.lookup::<Label>(hello).unwrap(), "hello");

    // One change re-runs exactly what depends on it. "ab" -> "ba": Len
    // re-runs with an equal value, so Parity, Shout and Total are cut off.
    db2.set::<Src>("f1".into(), "ba".into()).unwrap();
    let _ = observe(&db2).await;
    assert_eq!(
        c2.take(),
        vec![("len", 1), ("words", 1), ("upper", 1), ("fails", 1)]
    );
    // 11 -> 12 characters: odd -> even, Shout and Total re-run.
    db2.set::<Src>("f3".into(), "abc def ghij".into()).unwrap();
    let _ = observe(&db2).await;
    assert_eq!(
        c2.take(),
        vec![
            ("len", 1),
            ("parity", 1),
            ("shout", 1),
            ("total", 1),
            ("words", 1),
            ("upper", 1),
            ("fails", 1)
        ]
    );
    // 2 -> 4 characters: even -> even, Parity cuts Shout off (a memo loaded
    // from disk is compared with the new value).
    db2.set::<Src>("f4".into(), "abcd".into()).unwrap();
    let after = observe(&db2).await;
    assert_eq!(
        c2.take(),
        vec![
            ("len", 1),
            ("parity", 1),
            ("total", 1),
            ("words", 1),
            ("upper", 1),
            ("fails", 1)
        ]
    );

    // Same values as a database computed from scratch.
    let scratch = build(&Counts::default());
    set_all(
        &scratch,
        &[
            ("f0", "a"),
            ("f1", "ba"),
            ("f2", "hello world"),
            ("f3", "abc def ghij"),
            ("f4", "abcd"),
        ],
    );
    assert_eq!(after, observe(&scratch).await);
}

#[tokio::test]
async fn s17_non_persistent_kinds_stay_in_memory_and_their_dependents_rerun_after_load() {
    let dir = TempDir::new("non-persistent");
    let path = dir.join("c.bin");
    let c1 = Counts::default();
    let db1 = build(&c1);
    set_all(&db1, &[("f0", "abc"), ("f1", "de")]);
    db1.set::<Flag>("f0".into(), true).unwrap();
    assert_eq!(db1.intern::<Tag>("t0".into()).unwrap().raw(), 0);
    assert_eq!(db1.intern::<Tag>("t1".into()).unwrap().raw(), 1);
    assert_eq!(db1.query::<Flagged>("f0".into()).await.unwrap(), "abc!");
    assert_eq!(db1.query::<Flagged>("f1".into()).await.unwrap(), "de");
    assert_eq!(db1.query::<Wrap>("f0".into()).await.unwrap(), 62);
    assert_eq!(db1.query::<Shout>("f1".into()).await.unwrap(), "EVEN:f1");
    assert_eq!(
        c1.take(),
        vec![
            ("len", 2),
            ("parity", 1),
            ("shout", 1),
            ("flagged", 2),
            ("mem", 1),
            ("after_mem", 1),
            ("wrap", 1)
        ]
    );
    let saved = db1.save_cache(&path).await.unwrap();
    // Flagged x2 (reads Flag) and AfterMem (reads Mem) are not saved; Mem
    // is not a persistent kind at all.
    assert_eq!(saved.skipped_memos, 3, "{saved:?}");
    // Len x2, Parity, Shout, and Wrap (whose dependencies are all of
    // persistent kinds).
    assert_eq!(saved.memos, 5, "{saved:?}");
    assert_eq!(saved.inputs, 2);

    let c2 = Counts::default();
    let db2 = build(&c2);
    let report = db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded);
    assert_eq!(report.memos, 5);
    // Neither the in-memory input nor the in-memory interned kind was saved.
    assert!(db2.inputs::<Flag>().unwrap().is_empty());
    assert_eq!(db2.intern::<Tag>("t1".into()).unwrap().raw(), 0);
    assert_eq!(db2.lookup::<Tag>(Id::from_raw(0)).unwrap(), "t1");

    // Memos not depending on in-memory kinds are reused.
    assert_eq!(db2.query::<Shout>("f1".into()).await.unwrap(), "EVEN:f1");
    assert_eq!(db2.query::<Len>("f0".into()).await.unwrap(), 3);
    assert_eq!(c2.take(), vec![]);
    // Those that read them re-run (the flag is absent now).
    assert_eq!(db2.query::<Flagged>("f0".into()).await.unwrap(), "abc");
    assert_eq!(db2.query::<Flagged>("f1".into()).await.unwrap(), "de");
    assert_eq!(c2.take(), vec![("flagged", 2)]);
    // The in-memory query runs once over the loaded Len memo.
    assert_eq!(db2.query::<Mem>("f0".into()).await.unwrap(), 30);
    assert_eq!(c2.take(), vec![("mem", 1)]);
    // AfterMem had no saved memo; Wrap's saved memo depends on it and is
    // at most re-run once (its dependency has no old value to compare).
    assert_eq!(db2.query::<Wrap>("f0".into()).await.unwrap(), 62);
    let runs = c2.take();
    assert_eq!(runs[0], ("after_mem", 1), "{runs:?}");
    assert!(
        runs == vec![("after_mem", 1)] || runs == vec![("after_mem", 1), ("wrap", 1)],
        "{runs:?}"
    );

    // The in-memory kinds keep working normally after the load.
    db2.set::<Flag>("f0".into(), true).unwrap();
    assert_eq!(db2.query::<Flagged>("f0".into()).await.unwrap(), "abc!");
    assert_eq!(db2.query::<Wrap>("f0".into()).await.unwrap(), 62);
    assert_eq!(c2.take(), vec![("flagged", 1)]);
    db2.set::<Src>("f0".into(), "abcd".into()).unwrap();
    assert_eq!(db2.query::<Wrap>("f0".into()).await.unwrap(), 82);
    assert_eq!(
        c2.take(),
        vec![("len", 1), ("mem", 1), ("after_mem", 1), ("wrap", 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_save_from_a_snapshot_while_the_database_moves_on() {
    let dir = TempDir::new("snapshot");
    let path = dir.join("c.bin");
    let c1 = Counts::default();
    let db1 = build(&c1);
    set_all(&db1, TEXTS);
    let _ = observe(&db1).await;
    let snap = db1.snapshot();
    let snap_rev = snap.revision();
    let snap_inputs = sorted_inputs::<Src>(&snap);
    let snap_labels = labels(&snap);
    let expected = observe(&snap).await;
    c1.take();

    // Save from the snapshot on another thread while the database changes
    // and computes.
    let saver = {
        let snap = snap.clone();
        let path = path.clone();
        tokio::spawn(async move { snap.save_cache(&path).await })
    };
    for i in 0..20 {
        db1.set::<Src>("f0".into(), format!("moved on {i}"))
            .unwrap();
        db1.set::<Src>(format!("new{i}"), "fresh words".into())
            .unwrap();
        db1.query::<Words>("f0".into()).await.unwrap();
        tokio::task::yield_now().await;
    }
    let saved = saver.await.unwrap().unwrap();
    assert_eq!(saved.revision, snap_rev);
    assert!(db1.revision() > snap_rev);

    // The file holds the snapshot's revision state.
    let c2 = Counts::default();
    let db2 = build(&c2);
    db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert_eq!(sorted_inputs::<Src>(&db2), snap_inputs);
    // Interned values are shared by all views, so the file may hold labels
    // the database interned after the snapshot; the snapshot's are a prefix.
    assert!(labels(&db2).starts_with(&snap_labels));
    assert_eq!(observe(&db2).await, expected);
    assert_eq!(c2.take(), vec![]);

    // The database appends what happened since the snapshot to that file.
    let latest = observe(&db1).await;
    let latest_inputs = sorted_inputs::<Src>(&db1);
    let appended = db1.append_cache(&path).await.unwrap();
    assert!(!appended.full_save);
    assert!(appended.inputs >= 21, "{appended:?}");
    assert_eq!(appended.revision, db1.revision());
    let c3 = Counts::default();
    let db3 = build(&c3);
    let report = db3.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.log_records > 0);
    assert_eq!(sorted_inputs::<Src>(&db3), latest_inputs);
    assert_eq!(observe(&db3).await, latest);
    assert_eq!(c3.take(), vec![]);
}

/// A snapshot's save includes the memos the database computed before the
/// snapshot was taken (also those not yet merged into its state).
#[tokio::test]
async fn s17_save_from_a_snapshot_includes_the_memos_it_reads_from_the_database() {
    let dir = TempDir::new("snapshot-memos");
    let path = dir.join("c.bin");
    let db1 = build(&Counts::default());
    set_all(&db1, &[("f1", "ab")]);
    assert!(db1.query::<Parity>("f1".into()).await.unwrap());
    let snap = db1.snapshot();
    let saved = snap.save_cache(&path).await.unwrap();
    assert_eq!(saved.memos, 2, "{saved:?}");

    let c2 = Counts::default();
    let db2 = build(&c2);
    db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(db2.query::<Parity>("f1".into()).await.unwrap());
    assert_eq!(c2.take(), vec![]);
}

#[tokio::test]
async fn s17_save_from_a_forked_snapshot_does_not_link_the_database() {
    let dir = TempDir::new("fork");
    let (path, fork_path) = (dir.join("c.bin"), dir.join("fork.bin"));
    let db1 = build(&Counts::default());
    set_all(&db1, TEXTS);
    let _ = observe(&db1).await;
    db1.save_cache(&path).await.unwrap();
    let fork = db1.snapshot();
    fork.set::<Src>("f0".into(), "forked".into()).unwrap();
    assert!(fork.is_forked());
    let expected = observe(&fork).await;
    fork.save_cache(&fork_path).await.unwrap();

    let c2 = Counts::default();
    let db2 = build(&c2);
    db2.load_cache(&fork_path, LoadOptions::default())
        .await
        .unwrap();
    assert_eq!(db2.input::<Src>(&"f0".into()).unwrap(), "forked");
    assert_eq!(observe(&db2).await, expected);
    assert_eq!(c2.take(), vec![]);

    // The database is still linked to its own file, not the fork's.
    assert!(db1.append_cache(&fork_path).await.is_err());
    db1.set::<Src>("f1".into(), "xyz".into()).unwrap();
    let latest = observe(&db1).await;
    db1.append_cache(&path).await.unwrap();
    let c3 = Counts::default();
    let db3 = build(&c3);
    db3.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert_eq!(db3.input::<Src>(&"f0".into()).unwrap(), "a");
    assert_eq!(observe(&db3).await, latest);
    assert_eq!(c3.take(), vec![]);
}

#[tokio::test]
async fn s17_error_memos_are_not_saved_and_retry_after_load() {
    let dir = TempDir::new("errors");
    let path = dir.join("c.bin");
    let c1 = Counts::default();
    let db1 = build(&c1);
    set_all(&db1, &[("f0", "bad"), ("f1", "good")]);
    let e = db1.query::<Fails>("f0".into()).await.unwrap_err();
    assert_eq!(e.to_string(), "bad input at f0");
    assert_eq!(db1.query::<Fails>("f1".into()).await.unwrap(), 4);
    // A missing input: an error memo, propagated to Parity and Shout.
    assert!(db1.query::<Shout>("f9".into()).await.is_err());
    c1.take();
    let saved = db1.save_cache(&path).await.unwrap();
    assert_eq!(saved.memos, 1, "{saved:?}");
    assert_eq!(saved.skipped_memos, 4, "{saved:?}");

    let c2 = Counts::default();
    let db2 = build(&c2);
    let report = db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert_eq!(report.memos, 1);
    assert_eq!(db2.query::<Fails>("f1".into()).await.unwrap(), 4);
    assert_eq!(c2.take(), vec![]);
    // Errors retry after the load, and are memoized again for the revision.
    let e = db2.query::<Fails>("f0".into()).await.unwrap_err();
    assert_eq!(e.to_string(), "bad input at f0");
    assert!(db2.query::<Fails>("f0".into()).await.is_err());
    assert!(db2.query::<Shout>("f9".into()).await.is_err());
    assert!(db2.query::<Shout>("f9".into()).await.is_err());
    assert_eq!(
        c2.take(),
        vec![("len", 1), ("parity", 1), ("shout", 1), ("fails", 1)]
    );
    db2.set::<Src>("f9".into(), "xy".into()).unwrap();
    db2.set::<Src>("f0".into(), "fine".into()).unwrap();
    assert_eq!(db2.query::<Shout>("f9".into()).await.unwrap(), "EVEN:f9");
    assert_eq!(db2.query::<Fails>("f0".into()).await.unwrap(), 4);
}

// ---------------------------------------------------------------------------
// S18: kinds are matched by name and by the fingerprint of their types

#[derive(Facet, Clone, PartialEq, Debug)]
struct PageV1 {
    title: String,
    words: u64,
}

#[derive(Facet, Clone, PartialEq, Debug)]
struct PageV2 {
    title: String,
    words: u64,
    draft: bool,
}

#[derive(Facet, Clone, PartialEq, Debug)]
struct PageRenamed {
    heading: String,
    words: u64,
}

macro_rules! page_query {
    ($name:ident, $value:ident, $make:expr) => {
        struct $name(Count);
        #[async_trait]
        impl AsyncQuery for $name {
            type Key = String;
            type Value = $value;
            async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<$value> {
                self.0.hit();
                let text = cx.input::<Src>(&k)?;
                let make: fn(String, u64) -> $value = $make;
                Ok(make(
                    text.split_whitespace().next().unwrap_or("").to_string(),
                    text.split_whitespace().count() as u64,
                ))
            }
        }
    };
}

page_query!(PageQ1, PageV1, |title, words| PageV1 { title, words });
// Another Rust type with the same key and value types.
page_query!(PageQ1Renamed, PageV1, |title, words| PageV1 {
    title,
    words
});
page_query!(PageQ2, PageV2, |title, words| PageV2 {
    title,
    words,
    draft: false
});
page_query!(PageQ3, PageRenamed, |heading, words| PageRenamed {
    heading,
    words
});

struct Num32;
impl Input for Num32 {
    type Key = String;
    type Value = u32;
}

struct Num64;
impl Input for Num64 {
    type Key = String;
    type Value = u64;
}

struct Twice32(Count);
#[async_trait]
impl AsyncQuery for Twice32 {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<u64> {
        self.0.hit();
        Ok(u64::from(cx.input::<Num32>(&k)?) * 2)
    }
}

struct Twice64(Count);
#[async_trait]
impl AsyncQuery for Twice64 {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.input::<Num64>(&k)? * 2)
    }
}

/// A kind only the first version of the program registers.
struct Extra(Count);
#[async_trait]
impl AsyncQuery for Extra {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: String) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.input::<Src>(&k)?.len() as u64 + 100)
    }
}

/// Version 1 of a program: saves `page` with `PageV1` values and `num` with
/// `u32` values.
async fn save_v1(path: &Path) -> SaveReport {
    let (len, page, twice, extra) = (Count::new(), Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .persistent_input::<Src>()
        .persistent_query(Len(len.clone()))
        .persistent_query_as(PageQ1(page.clone()), "page")
        .persistent_input_as::<Num32>("num")
        .persistent_query_as(Twice32(twice.clone()), "twice")
        .persistent_query(Extra(extra.clone()))
        .build()
        .unwrap();
    set_all(&db, &[("f0", "hello world"), ("f1", "abc")]);
    db.set::<Num32>("n0".into(), 7).unwrap();
    db.set::<Num32>("n1".into(), 8).unwrap();
    for k in ["f0", "f1"] {
        db.query::<Len>(k.into()).await.unwrap();
        db.query::<PageQ1>(k.into()).await.unwrap();
    }
    assert_eq!(db.query::<Twice32>("n0".into()).await.unwrap(), 14);
    assert_eq!(db.query::<Twice32>("n1".into()).await.unwrap(), 16);
    assert_eq!(db.query::<Extra>("f0".into()).await.unwrap(), 111);
    let saved = db.save_cache(path).await.unwrap();
    assert_eq!(saved.memos, 7);
    assert_eq!(saved.inputs, 4);
    saved
}

fn dropped_names(report: &LoadReport) -> Vec<String> {
    let mut names: Vec<String> = report
        .dropped_kinds
        .iter()
        .map(|d| d.split(':').next().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn s18_changed_types_drop_the_kind_and_keep_the_others() {
    let dir = TempDir::new("schema");
    let path = dir.join("c.bin");
    save_v1(&path).await;

    // Version 2: `page` gained a field, `num` became u64, `twice` keeps its
    // types (but reads the changed `num`), `Extra` is gone.
    let (len, page, twice) = (Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .persistent_input::<Src>()
        .persistent_query(Len(len.clone()))
        .persistent_query_as(PageQ2(page.clone()), "page")
        .persistent_input_as::<Num64>("num")
        .persistent_query_as(Twice64(twice.clone()), "twice")
        .build()
        .unwrap();
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded, "{report:?}");
    assert_eq!(
        dropped_names(&report),
        vec!["Extra", "num", "page"],
        "{report:?}"
    );
    for d in &report.dropped_kinds {
        if d.starts_with("page:") || d.starts_with("num:") {
            assert!(d.contains("type changed"), "{d}");
        } else {
            assert!(d.contains("not registered"), "{d}");
        }
    }
    // `twice` memos read a dropped kind: dropped too.
    assert_eq!(report.dropped_memos, 2, "{report:?}");
    assert_eq!(report.memos, 2, "{report:?}");
    assert_eq!(report.inputs, 2, "{report:?}");

    // Kept: Src and Len.
    assert_eq!(db.input::<Src>(&"f0".into()).unwrap(), "hello world");
    assert_eq!(db.query::<Len>("f0".into()).await.unwrap(), 11);
    assert_eq!(db.query::<Len>("f1".into()).await.unwrap(), 3);
    assert_eq!(len.get(), 0);
    // Dropped: the page query re-runs with its new type, the input is gone.
    assert_eq!(
        db.query::<PageQ2>("f0".into()).await.unwrap(),
        PageV2 {
            title: "hello".into(),
            words: 2,
            draft: false
        }
    );
    assert_eq!(db.query::<PageQ2>("f1".into()).await.unwrap().words, 1);
    assert_eq!(page.get(), 2);
    assert_eq!(len.get(), 0);
    assert!(db.input_opt::<Num64>(&"n0".into()).unwrap().is_none());
    assert!(db.query::<Twice64>("n0".into()).await.is_err());
    db.set::<Num64>("n0".into(), 1 << 40).unwrap();
    assert_eq!(db.query::<Twice64>("n0".into()).await.unwrap(), 1 << 41);
    assert_eq!(twice.get(), 2);

    // A renamed field is a changed type too.
    let (len, page) = (Count::new(), Count::new());
    let db = Database::builder()
        .persistent_input::<Src>()
        .persistent_query(Len(len.clone()))
        .persistent_query_as(PageQ3(page.clone()), "page")
        .build()
        .unwrap();
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert_eq!(
        dropped_names(&report),
        vec!["Extra", "num", "page", "twice"],
        "{report:?}"
    );
    assert_eq!(
        db.query::<PageQ3>("f0".into()).await.unwrap().heading,
        "hello"
    );
    assert_eq!(page.get(), 1);
    assert_eq!(db.query::<Len>("f0".into()).await.unwrap(), 11);
    assert_eq!(len.get(), 0);
}

#[tokio::test]
async fn s18_kinds_are_matched_by_their_stable_name() {
    let dir = TempDir::new("names");
    let path = dir.join("c.bin");
    save_v1(&path).await;

    // Another Rust type under the same name and with the same types: kept,
    // and its memos reused.
    let page = Count::new();
    let db = Database::builder()
        .persistent_input::<Src>()
        .persistent_query_as(PageQ1Renamed(page.clone()), "page")
        .build()
        .unwrap();
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded);
    // Len (default name) is not registered here: dropped, and reported.
    assert_eq!(
        dropped_names(&report),
        vec!["Extra", "Len", "num", "twice"],
        "{report:?}"
    );
    assert_eq!(
        db.query::<PageQ1Renamed>("f0".into()).await.unwrap(),
        PageV1 {
            title: "hello".into(),
            words: 2
        }
    );
    assert_eq!(page.get(), 0);

    // The same Rust type under another name: the file's section is unknown.
    let page = Count::new();
    let db = Database::builder()
        .persistent_input::<Src>()
        .persistent_query_as(PageQ1(page.clone()), "page-v2")
        .build()
        .unwrap();
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded);
    assert!(dropped_names(&report).contains(&"page".to_string()));
    assert_eq!(
        db.query::<PageQ1>("f0".into()).await.unwrap().title,
        "hello"
    );
    assert_eq!(page.get(), 1);
}

#[tokio::test]
async fn s18_an_unknown_kind_in_the_file_is_dropped_and_reported() {
    let dir = TempDir::new("unknown-kind");
    let path = dir.join("c.bin");
    save_v1(&path).await;
    // A program that registers none of the file's kinds still loads it.
    let db = build(&Counts::default());
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded);
    assert_eq!(
        dropped_names(&report),
        vec!["Extra", "num", "page", "twice"],
        "{report:?}"
    );
    for d in &report.dropped_kinds {
        assert!(d.contains("not registered as persistent"), "{d}");
    }
    // Src and Len match by name and types (the fixture's Len is the same).
    assert_eq!(report.inputs, 2);
    assert_eq!(db.query::<Len>("f1".into()).await.unwrap(), 3);
}

// ---------------------------------------------------------------------------
// S18: crash safety

#[tokio::test]
async fn s18_a_leftover_temporary_file_does_not_affect_load() {
    let dir = TempDir::new("tmp-leftover");
    let path = dir.join("c.bin");

    // A crash before the first save completed: only a temporary file.
    std::fs::write(dir.join(".c.bin.tmp-4242-deadbeef"), b"half a cache").unwrap();
    let db = build(&Counts::default());
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(!report.found && !report.loaded);

    let c1 = Counts::default();
    let db1 = build(&c1);
    set_all(&db1, TEXTS);
    let expected = observe(&db1).await;
    db1.save_cache(&path).await.unwrap();

    // A crash during a later save: the new contents sit in a temporary file
    // that was never renamed over the target (one complete, one garbage).
    let other = dir.join("other.bin");
    let db_other = build(&Counts::default());
    set_all(&db_other, &[("f0", "something else entirely")]);
    let _ = observe(&db_other).await;
    db_other.save_cache(&other).await.unwrap();
    std::fs::copy(&other, dir.join(".c.bin.tmp-4242-0123abcd")).unwrap();
    let mut garbage = std::fs::read(&other).unwrap();
    garbage.truncate(garbage.len() / 2);
    std::fs::write(dir.join(".c.bin.tmp-4243-feedface"), &garbage).unwrap();

    let c2 = Counts::default();
    let db2 = build(&c2);
    let report = db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded);
    assert_eq!(sorted_inputs::<Src>(&db2), sorted_inputs::<Src>(&db1));
    assert_eq!(observe(&db2).await, expected);
    assert_eq!(c2.take(), vec![]);

    // Saving over the leftovers still works.
    db2.set::<Src>("f0".into(), "zzz".into()).unwrap();
    let expected = observe(&db2).await;
    db2.save_cache(&path).await.unwrap();
    let c3 = Counts::default();
    let db3 = build(&c3);
    db3.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert_eq!(observe(&db3).await, expected);
    assert_eq!(c3.take(), vec![]);
}

/// Builds a base with TEXTS, then two appends: the first changes `f0` and
/// computes everything, the second only sets `f1` to "zz" (so its last
/// record is that input's). Returns the expected views after each append.
async fn base_and_two_appends(path: &Path) -> (Database, Vec<String>) {
    let db = build(&Counts::default());
    set_all(&db, TEXTS);
    let _ = observe(&db).await;
    db.save_cache(path).await.unwrap();
    db.set::<Src>("f0".into(), "changed once".into()).unwrap();
    let after_first = observe(&db).await;
    let a1 = db.append_cache(path).await.unwrap();
    assert!(a1.inputs == 1 && a1.memos > 0, "{a1:?}");
    db.set::<Src>("f1".into(), "zz".into()).unwrap();
    let a2 = db.append_cache(path).await.unwrap();
    assert_eq!((a2.inputs, a2.memos, a2.interned), (1, 0, 0), "{a2:?}");
    (db, after_first)
}

#[tokio::test]
async fn s18_a_torn_log_tail_is_ignored_and_earlier_records_apply() {
    let dir = TempDir::new("torn");
    let path = dir.join("c.bin");
    let (db1, after_first) = base_and_two_appends(&path).await;
    let log = std::fs::read(log_of(&path)).unwrap();

    // The untouched log, for reference.
    let c = Counts::default();
    let db = build(&c);
    let full = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(!full.torn_tail);
    assert_eq!(sorted_inputs::<Src>(&db), sorted_inputs::<Src>(&db1));

    // Cut a few bytes: the second append's input record is torn; the first
    // append (and the rest of the second) still apply.
    for cut in [1, 3, 8] {
        std::fs::write(log_of(&path), &log[..log.len() - cut]).unwrap();
        let c = Counts::default();
        let db = build(&c);
        let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
        assert!(report.loaded && report.torn_tail, "{report:?}");
        // The torn record is not counted (nor, possibly, the rest of its
        // append); the first append's records all are.
        assert!(report.log_records < full.log_records, "{report:?}");
        assert_eq!(db.input::<Src>(&"f0".into()).unwrap(), "changed once");
        assert_eq!(db.input::<Src>(&"f1".into()).unwrap(), "ab");
        assert_eq!(observe(&db).await, after_first);
        assert_eq!(c.take(), vec![]);
    }

    // Half a record appended after the valid log (a crash mid-append).
    let mut torn = log.clone();
    let record_len = 40u32;
    torn.push(4); // an INPUTS tag
    torn.extend_from_slice(&record_len.to_le_bytes());
    torn.extend_from_slice(&[7; 11]);
    std::fs::write(log_of(&path), &torn).unwrap();
    let c = Counts::default();
    let db = build(&c);
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded && report.torn_tail, "{report:?}");
    assert_eq!(report.log_records, full.log_records);
    assert_eq!(sorted_inputs::<Src>(&db), sorted_inputs::<Src>(&db1));
    let expected = observe(&db1).await;
    assert_eq!(observe(&db).await, expected);
    // Only what depends on f1's new value runs ("ab" -> "zz": Len is cut off).
    assert_eq!(
        c.take(),
        vec![("len", 1), ("words", 1), ("upper", 1), ("fails", 1)]
    );

    // The next append cuts the torn tail before writing.
    db.set::<Src>("f2".into(), "after the tear".into()).unwrap();
    let expected = observe(&db).await;
    db.append_cache(&path).await.unwrap();
    let c = Counts::default();
    let db = build(&c);
    let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded && !report.torn_tail, "{report:?}");
    assert_eq!(observe(&db).await, expected);
    assert_eq!(c.take(), vec![]);
}

/// A tear inside an append (a crash mid-append) must not load memos without
/// the interned values their ids name: the first value interned after the
/// load would take such an id, and a reused memo would silently name the
/// wrong value. (Appends are applied whole or not at all.)
#[tokio::test]
async fn s18_a_torn_append_never_leaves_memos_naming_unknown_interned_ids() {
    let dir = TempDir::new("torn-interned");
    let path = dir.join("c.bin");
    let db1 = build(&Counts::default());
    set_all(&db1, &[("f0", "one")]);
    db1.query::<Words>("f0".into()).await.unwrap();
    db1.save_cache(&path).await.unwrap();
    db1.set::<Src>("f1".into(), "two three".into()).unwrap();
    db1.query::<Words>("f1".into()).await.unwrap();
    let appended = db1.append_cache(&path).await.unwrap();
    assert_eq!((appended.memos, appended.interned), (1, 2), "{appended:?}");
    // Tear the last record (the interned values).
    let log = std::fs::read(log_of(&path)).unwrap();
    std::fs::write(log_of(&path), &log[..log.len() - 1]).unwrap();

    let c2 = Counts::default();
    let db2 = build(&c2);
    let report = db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded && report.torn_tail, "{report:?}");
    // The torn append is dropped whole (its input change included), so the
    // application re-sets what it knows, as after any crash.
    db2.intern::<Label>("other".into()).unwrap();
    db2.set::<Src>("f1".into(), "two three".into()).unwrap();
    let ids = db2.query::<Words>("f1".into()).await.unwrap();
    let words: Vec<Result<String>> = ids
        .iter()
        .map(|&id| db2.lookup::<Label>(Id::from_raw(id)))
        .collect();
    assert_eq!(
        words.iter().map(|w| show(w.clone())).collect::<Vec<_>>(),
        vec!["\"two\"", "\"three\""]
    );
}

#[tokio::test]
async fn s18_a_log_of_an_older_base_is_ignored() {
    let dir = TempDir::new("old-log");
    let path = dir.join("c.bin");
    let c1 = Counts::default();
    let db1 = build(&c1);
    set_all(&db1, TEXTS);
    let _ = observe(&db1).await;
    db1.save_cache(&path).await.unwrap();
    db1.set::<Src>("f0".into(), "from the old log".into())
        .unwrap();
    let _ = observe(&db1).await;
    db1.append_cache(&path).await.unwrap();
    let old_log = std::fs::read(log_of(&path)).unwrap();

    db1.set::<Src>("f0".into(), "in the new base".into())
        .unwrap();
    let expected = observe(&db1).await;
    db1.save_cache(&path).await.unwrap();
    assert!(!log_of(&path).exists(), "a full save removes the old log");
    // A crash between writing the new base and removing the old log.
    std::fs::write(log_of(&path), &old_log).unwrap();

    let c2 = Counts::default();
    let db2 = build(&c2);
    let report = db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded);
    assert_eq!(report.log_records, 0, "{report:?}");
    assert_eq!(db2.input::<Src>(&"f0".into()).unwrap(), "in the new base");
    assert_eq!(observe(&db2).await, expected);
    assert_eq!(c2.take(), vec![]);

    // Appending from this database replaces the stale log.
    db2.set::<Src>("f1".into(), "after".into()).unwrap();
    let expected = observe(&db2).await;
    db2.append_cache(&path).await.unwrap();
    let c3 = Counts::default();
    let db3 = build(&c3);
    let report = db3.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.log_records > 0);
    assert_eq!(observe(&db3).await, expected);
    assert_eq!(c3.take(), vec![]);
}

// ---------------------------------------------------------------------------
// S17: the incremental log

#[tokio::test]
async fn s17_log_replays_keys_and_interned_values_created_after_the_base() {
    let dir = TempDir::new("log-new-keys");
    let path = dir.join("c.bin");
    let c1 = Counts::default();
    let db1 = build(&c1);
    set_all(&db1, &[("f0", "one two")]);
    let _ = observe(&db1).await;
    db1.save_cache(&path).await.unwrap();
    let base_labels = labels(&db1).len();

    // New input keys, new query keys (Words, Upper, a new Total key) and new
    // interned values, first created after the base.
    db1.set::<Src>("g1".into(), "three four".into()).unwrap();
    db1.set::<Src>("g2".into(), "two five".into()).unwrap();
    let direct = db1.intern::<Label>("six".into()).unwrap();
    let expected = observe(&db1).await;
    let appended = db1.append_cache(&path).await.unwrap();
    assert_eq!(appended.inputs, 2, "{appended:?}");
    assert_eq!(appended.interned, 4, "{appended:?}");
    assert!(appended.memos > 0);
    let all_labels = labels(&db1);
    assert_eq!(all_labels.len(), base_labels + 4);

    let c2 = Counts::default();
    let db2 = build(&c2);
    let report = db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert!(report.log_records > 0);
    assert_eq!(report.interned, all_labels.len());
    assert_eq!(labels(&db2), all_labels);
    assert_eq!(db2.lookup::<Label>(direct).unwrap(), "six");
    assert_eq!(sorted_inputs::<Src>(&db2), sorted_inputs::<Src>(&db1));
    assert_eq!(observe(&db2).await, expected);
    assert_eq!(c2.take(), vec![]);
    assert_eq!(
        db2.intern::<Label>("seven".into()).unwrap().raw() as usize,
        all_labels.len()
    );
}

/// A memo computed after a save, before any input changes, is journaled at
/// the saved revision, and `append` skips journal entries at or before the
/// revision the file reaches: the memo is lost (it re-runs after a load).
#[tokio::test]
async fn s17_log_appends_memos_computed_at_the_revision_of_the_last_save() {
    let dir = TempDir::new("log-same-revision");
    let path = dir.join("c.bin");
    let db1 = build(&Counts::default());
    set_all(&db1, &[("f0", "abc")]);
    db1.save_cache(&path).await.unwrap();
    // Computed after the save, at the saved revision.
    assert_eq!(db1.query::<Len>("f0".into()).await.unwrap(), 3);
    let appended = db1.append_cache(&path).await.unwrap();
    assert_eq!(appended.memos, 1, "{appended:?}");

    let c2 = Counts::default();
    let db2 = build(&c2);
    db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert_eq!(db2.query::<Len>("f0".into()).await.unwrap(), 3);
    assert_eq!(c2.take(), vec![]);
}

/// The same after an append: the next append skips memos computed at the
/// revision the previous one reached.
#[tokio::test]
async fn s17_log_appends_memos_computed_after_an_append_without_changes() {
    let dir = TempDir::new("log-after-append");
    let path = dir.join("c.bin");
    let db1 = build(&Counts::default());
    set_all(&db1, &[("f0", "abc")]);
    db1.save_cache(&path).await.unwrap();
    db1.set::<Src>("f1".into(), "de".into()).unwrap();
    db1.append_cache(&path).await.unwrap();
    // Computed after the append, at the revision it reached.
    assert_eq!(db1.query::<Len>("f1".into()).await.unwrap(), 2);
    let appended = db1.append_cache(&path).await.unwrap();
    assert_eq!(appended.memos, 1, "{appended:?}");

    let c2 = Counts::default();
    let db2 = build(&c2);
    db2.load_cache(&path, LoadOptions::default()).await.unwrap();
    assert_eq!(db2.query::<Len>("f1".into()).await.unwrap(), 2);
    assert_eq!(c2.take(), vec![]);
}

/// What a database holds, for comparing loads.
#[derive(Debug, PartialEq)]
struct Observed {
    inputs: Vec<(String, String)>,
    labels: Vec<String>,
    results: Vec<String>,
    runs: Vec<(&'static str, usize)>,
}

async fn load_and_observe(path: &Path) -> (Database, Observed) {
    let c = Counts::default();
    let db = build(&c);
    let report = db.load_cache(path, LoadOptions::default()).await.unwrap();
    assert!(report.loaded && !report.torn_tail, "{report:?}");
    let results = observe(&db).await;
    let observed = Observed {
        inputs: sorted_inputs::<Src>(&db),
        labels: labels(&db),
        results,
        runs: c.take(),
    };
    (db, observed)
}

#[derive(Clone, Debug)]
enum Op {
    Set(u8, u8),
    Remove(u8),
    Intern(u8),
    /// Reads the queries of one key (computing new memos).
    Read(u8),
    Append,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..12u8, 0..8u8).prop_map(|(k, t)| Op::Set(k, t)),
        1 => (0..12u8).prop_map(Op::Remove),
        1 => (0..30u8).prop_map(Op::Intern),
        2 => (0..12u8).prop_map(Op::Read),
        2 => Just(Op::Append),
    ]
}

const WORDS: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "ab",
    "ba",
    "x",
    "yy",
    "zzz",
    "alpha beta",
];

fn text(t: u8, k: u8) -> String {
    // Some texts share words (interned once), some lengths share parity.
    format!(
        "{} {}",
        WORDS[t as usize % WORDS.len()],
        WORDS[k as usize % WORDS.len()]
    )
}

/// With `bump`, a non-persistent input changes after the save and after each
/// append, so no memo is ever computed at the revision the file reaches
/// (working around the bug the two tests above pin).
async fn log_equals_full_save(initial: Vec<(u8, u8)>, ops: Vec<Op>, bump: bool) {
    let dir = TempDir::new("log-vs-full");
    let (path, full_path) = (dir.join("c.bin"), dir.join("full.bin"));
    let db = build(&Counts::default());
    for (k, t) in &initial {
        db.set::<Src>(format!("f{k}"), text(*t, *k)).unwrap();
    }
    let _ = observe(&db).await;
    db.save_cache(&path).await.unwrap();
    let mut tick = false;
    let mut bump_revision = || {
        if bump {
            tick = !tick;
            db.set::<Flag>("tick".into(), tick).unwrap();
        }
    };
    bump_revision();
    let mut appends = 0;
    for op in &ops {
        match *op {
            Op::Set(k, t) => {
                db.set::<Src>(format!("f{k}"), text(t, k)).unwrap();
            }
            Op::Remove(k) => {
                db.remove::<Src>(&format!("f{k}")).unwrap();
            }
            Op::Intern(w) => {
                db.intern::<Label>(format!("label{w}")).unwrap();
            }
            Op::Read(k) => {
                let k = format!("f{k}");
                let _ = db.query::<Shout>(k.clone()).await;
                let _ = db.query::<Words>(k.clone()).await;
                let _ = db.query::<Fails>(k).await;
            }
            Op::Append => {
                db.append_cache(&path).await.unwrap();
                appends += 1;
                bump_revision();
            }
        }
    }
    let expected = observe(&db).await;
    let appended = db.append_cache(&path).await.unwrap();
    assert!(!appended.full_save);
    appends += 1;
    // A full save of the same point, elsewhere.
    db.save_cache(&full_path).await.unwrap();

    let (db_log, from_log) = load_and_observe(&path).await;
    let (_db_full, from_full) = load_and_observe(&full_path).await;
    assert_eq!(from_full.results, expected);
    assert_eq!(from_full.inputs, sorted_inputs::<Src>(&db));
    assert_eq!(from_full.labels, labels(&db));
    assert_eq!(from_full.runs, vec![], "nothing re-runs after a full save");
    assert_eq!(from_log, from_full, "after {appends} appends");

    // Compaction: the loaded database writes a new base; the log goes.
    db_log.save_cache(&path).await.unwrap();
    assert!(!log_of(&path).exists());
    let (_db_c, compacted) = load_and_observe(&path).await;
    assert_eq!(compacted, from_full);
}

#[tokio::test]
async fn s17_log_replay_equals_a_full_save_and_compaction() {
    // A fixed sequence: every change is followed by reads, then an append.
    let ops = vec![
        Op::Set(1, 3),
        Op::Read(1),
        Op::Append,
        Op::Set(7, 2),
        Op::Remove(0),
        Op::Intern(3),
        Op::Read(7),
        Op::Read(2),
        Op::Append,
        Op::Set(2, 9),
        Op::Set(10, 1),
        Op::Read(10),
        Op::Append,
        Op::Set(3, 4),
    ];
    log_equals_full_save(vec![(0, 0), (1, 1), (2, 2), (3, 3)], ops, false).await;
}

fn run_log_case(initial: Vec<(u8, u8)>, ops: Vec<Op>, bump: bool) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(log_equals_full_save(initial, ops, bump));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// N random changes (sets, removes, interned values, reads computing new
    /// memos) spread over several appends, replayed: the same state as a
    /// full save at the same point, and as the compacted log.
    #[test]
    fn s17_random_log_replay_equals_a_full_save_and_compaction(
        initial in proptest::collection::vec((0..12u8, 0..8u8), 0..6),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run_log_case(initial, ops, true);
    }

    /// The same without the workaround. Minimal failure: `[Set(0, 0), Append]`
    /// then the final reads and append: the final memos are not appended.
    #[test]
    fn s17_random_log_replay_equals_a_full_save_without_revision_bumps(
        initial in proptest::collection::vec((0..12u8, 0..8u8), 0..6),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run_log_case(initial, ops, false);
    }
}

// ---------------------------------------------------------------------------
// S18: load errors leave the database as it was

#[tokio::test]
async fn s18_load_into_a_database_that_is_not_fresh_is_an_error() {
    let dir = TempDir::new("not-fresh");
    let path = dir.join("c.bin");
    let db1 = build(&Counts::default());
    set_all(&db1, TEXTS);
    let _ = observe(&db1).await;
    db1.save_cache(&path).await.unwrap();

    // Something set.
    let db = build(&Counts::default());
    db.set::<Src>("mine".into(), "x".into()).unwrap();
    let revision = db.revision();
    let e = db
        .load_cache(&path, LoadOptions::default())
        .await
        .unwrap_err();
    assert_persist_error(&e);
    assert!(e.to_string().contains("fresh"), "{e}");
    assert_eq!(db.revision(), revision);
    assert_eq!(
        sorted_inputs::<Src>(&db),
        vec![("mine".to_string(), "x".to_string())]
    );

    // Something interned in a persistent kind.
    let db = build(&Counts::default());
    db.intern::<Label>("mine".into()).unwrap();
    assert!(db.load_cache(&path, LoadOptions::default()).await.is_err());
    assert_eq!(labels(&db), vec!["mine".to_string()]);

    // Loaded once already.
    let db = build(&Counts::default());
    db.load_cache(&path, LoadOptions::default()).await.unwrap();
    let revision = db.revision();
    assert!(db.load_cache(&path, LoadOptions::default()).await.is_err());
    assert_eq!(db.revision(), revision);
    assert_eq!(sorted_inputs::<Src>(&db), sorted_inputs::<Src>(&db1));
}

#[tokio::test]
async fn s18_a_missing_file_is_no_cache() {
    let dir = TempDir::new("missing");
    let path = dir.join("c.bin");
    for options in [LoadOptions::default(), LoadOptions::ignore_errors()] {
        let c = Counts::default();
        let db = build(&c);
        let revision = db.revision();
        let report = db.load_cache(&path, options).await.unwrap();
        assert!(!report.found && !report.loaded, "{report:?}");
        assert!(report.ignored_error.is_none());
        assert_eq!(report.revision, revision);
        assert_untouched(&db, revision);
        // The database works as if nothing happened.
        db.set::<Src>("f0".into(), "abc".into()).unwrap();
        assert_eq!(db.query::<Shout>("f0".into()).await.unwrap(), "ODD:f0");
        assert_eq!(c.take(), vec![("len", 1), ("parity", 1), ("shout", 1)]);
    }
    // A missing directory too.
    let db = build(&Counts::default());
    let report = db
        .load_cache(dir.join("no/such/dir/c.bin"), LoadOptions::default())
        .await
        .unwrap();
    assert!(!report.found);
}

/// A name, base bytes, log bytes (if any), options.
type UnusableCase = (&'static str, Vec<u8>, Option<Vec<u8>>, LoadOptions);

#[tokio::test]
async fn s18_unusable_files_fail_or_are_ignored_and_leave_the_database_unchanged() {
    let dir = TempDir::new("unusable");
    let valid = dir.join("valid.bin");
    let db1 = build(&Counts::default());
    set_all(&db1, TEXTS);
    let _ = observe(&db1).await;
    db1.save_cache(&valid).await.unwrap();
    db1.set::<Src>("f0".into(), "logged".into()).unwrap();
    let expected_logged = observe(&db1).await;
    db1.append_cache(&valid).await.unwrap();
    let base = std::fs::read(&valid).unwrap();
    let log = std::fs::read(log_of(&valid)).unwrap();

    let mut flipped = base.clone();
    flipped[base.len() / 2] ^= 0x10;
    // The valid log and a torn tail, larger than the base.
    let mut big_log = log.clone();
    big_log.push(4);
    big_log.extend_from_slice(&u32::MAX.to_le_bytes());
    big_log.extend_from_slice(&vec![0; base.len()]);
    let mut bad_log = log.clone();
    bad_log[40] ^= 0x01; // inside the first record, with records after it
    let cases: Vec<UnusableCase> = vec![
        ("empty", Vec::new(), None, LoadOptions::default()),
        (
            "text",
            b"not a cache at all".to_vec(),
            None,
            LoadOptions::default(),
        ),
        ("log as base", log.clone(), None, LoadOptions::default()),
        ("bit flip", flipped, None, LoadOptions::default()),
        (
            "truncated",
            base[..base.len() - 9].to_vec(),
            None,
            LoadOptions::default(),
        ),
        (
            "corrupt log",
            base.clone(),
            Some(bad_log),
            LoadOptions::default(),
        ),
        (
            "foreign log",
            base.clone(),
            Some(b"garbage".repeat(20)),
            LoadOptions::default(),
        ),
        (
            "base as log",
            base.clone(),
            Some(base.clone()),
            LoadOptions::default(),
        ),
        (
            "too large",
            base.clone(),
            None,
            LoadOptions {
                max_bytes: base.len() as u64 - 1,
                ..LoadOptions::default()
            },
        ),
        (
            "log too large",
            base.clone(),
            Some(big_log),
            LoadOptions {
                max_bytes: base.len() as u64,
                ..LoadOptions::default()
            },
        ),
    ];
    for (name, base_bytes, log_bytes, options) in cases {
        let path = dir.join(&format!("{}.bin", name.replace(' ', "-")));
        std::fs::write(&path, &base_bytes).unwrap();
        if let Some(l) = &log_bytes {
            std::fs::write(log_of(&path), l).unwrap();
        }
        let c = Counts::default();
        let db = build(&c);
        let revision = db.revision();

        let e = db.load_cache(&path, options.clone()).await.unwrap_err();
        assert_persist_error(&e);
        assert_untouched(&db, revision);

        let ignoring = LoadOptions {
            on_error: OnError::Ignore,
            ..options
        };
        let report = db.load_cache(&path, ignoring).await.unwrap();
        assert!(!report.loaded, "{name}: {report:?}");
        if name != "too large" {
            // (For a base file over the limit, see
            // `s18_a_file_over_the_size_limit_is_reported_as_found`.)
            assert!(report.found, "{name}: {report:?}");
        }
        let ignored = report.ignored_error.expect(name);
        assert_persist_error(&ignored);
        assert_eq!(ignored.to_string(), e.to_string(), "{name}");
        assert_untouched(&db, revision);

        // Still a working, fresh database: a valid file loads into it.
        std::fs::write(&path, &base).unwrap();
        std::fs::write(log_of(&path), &log).unwrap();
        let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
        assert!(report.loaded, "{name}");
        assert_eq!(observe(&db).await, expected_logged, "{name}");
        assert_eq!(c.take(), vec![], "{name}");
    }
}

/// `LoadReport::found` is "a cache file existed at the path", but a base
/// file over `max_bytes` is refused before `found` is set.
#[tokio::test]
async fn s18_a_file_over_the_size_limit_is_reported_as_found() {
    let dir = TempDir::new("too-large");
    let path = dir.join("c.bin");
    std::fs::write(&path, vec![0u8; 100]).unwrap();
    let db = build(&Counts::default());
    let options = LoadOptions {
        max_bytes: 10,
        on_error: OnError::Ignore,
    };
    let report = db.load_cache(&path, options).await.unwrap();
    assert!(report.ignored_error.is_some(), "{report:?}");
    assert!(report.found, "{report:?}");
}

// ---------------------------------------------------------------------------
// Refused types

struct PathKey;
impl Input for PathKey {
    type Key = PathBuf;
    type Value = String;
}

struct DurationValue;
impl Input for DurationValue {
    type Key = String;
    type Value = Duration;
}

struct AhashMapValue;
impl Input for AhashMapValue {
    type Key = String;
    type Value = HashMap<String, u32, ahash::RandomState>;
}

struct DefaultHasherMapValue;
impl Input for DefaultHasherMapValue {
    type Key = String;
    type Value = HashMap<String, u32, BuildHasherDefault<DefaultHasher>>;
}

#[derive(Facet, Clone, PartialEq, Debug)]
struct Page {
    title: String,
    path: PathBuf,
}

struct PageOf(Count);
#[async_trait]
impl AsyncQuery for PageOf {
    type Key = String;
    type Value = Page;
    async fn execute(&self, _cx: &QueryCx, k: String) -> QueryResult<Page> {
        self.0.hit();
        Ok(Page {
            title: k.clone(),
            path: PathBuf::from(k),
        })
    }
}

struct Spans;
impl Interned for Spans {
    type Value = Vec<Duration>;
}

fn refusal(builder: DatabaseBuilder) -> String {
    match builder.build() {
        Ok(_) => panic!("accepted"),
        Err(e) => {
            assert!(matches!(e.kind(), ErrorKind::Registration(_)), "{e:?}");
            e.to_string()
        }
    }
}

#[tokio::test]
async fn s18_unsupported_types_are_refused_at_registration_naming_the_type() {
    let e = refusal(Database::builder().persistent_input::<PathKey>());
    assert!(e.contains("std::path::PathBuf"), "{e}");
    assert!(e.contains("key type of `PathKey`"), "{e}");

    let e = refusal(Database::builder().persistent_input::<DurationValue>());
    assert!(e.contains("Duration"), "{e}");
    assert!(e.contains("value type of `DurationValue`"), "{e}");

    let e = refusal(Database::builder().persistent_input::<AhashMapValue>());
    assert!(e.contains("HashMap"), "{e}");
    assert!(e.contains("non-default hasher"), "{e}");

    let e = refusal(Database::builder().persistent_input_as::<DefaultHasherMapValue>("m"));
    assert!(e.contains("HashMap"), "{e}");
    assert!(e.contains("non-default hasher"), "{e}");

    // Nested in a query's value: the message says where.
    let e = refusal(
        Database::builder()
            .persistent_input::<Src>()
            .persistent_query(PageOf(Count::new())),
    );
    assert!(e.contains("std::path::PathBuf"), "{e}");
    assert!(e.contains("Page.path"), "{e}");

    let e = refusal(Database::builder().persistent_interned::<Spans>());
    assert!(e.contains("Duration"), "{e}");

    // Several refusals are all reported.
    let e = refusal(
        Database::builder()
            .persistent_input::<PathKey>()
            .persistent_input::<DurationValue>(),
    );
    assert!(e.contains("PathBuf") && e.contains("Duration"), "{e}");

    // The same kinds work in memory.
    let page = Count::new();
    let db = Database::builder()
        .input::<PathKey>()
        .input::<DurationValue>()
        .input::<AhashMapValue>()
        .input::<DefaultHasherMapValue>()
        .query(PageOf(page.clone()))
        .interned::<Spans>()
        .build()
        .unwrap();
    db.set::<PathKey>(PathBuf::from("/a/b"), "x".into())
        .unwrap();
    db.set::<DurationValue>("d".into(), Duration::new(5, 7))
        .unwrap();
    let mut m = HashMap::default();
    m.insert("k".to_string(), 1);
    db.set::<AhashMapValue>("m".into(), m).unwrap();
    assert_eq!(
        db.input::<DurationValue>(&"d".into()).unwrap(),
        Duration::new(5, 7)
    );
    assert_eq!(
        db.query::<PageOf>("/p".into()).await.unwrap().path,
        PathBuf::from("/p")
    );
    assert_eq!(page.get(), 1);
    let id = db.intern::<Spans>(vec![Duration::from_secs(1)]).unwrap();
    assert_eq!(
        db.lookup::<Spans>(id).unwrap(),
        vec![Duration::from_secs(1)]
    );
}
