//! A cache you can trust across releases and processes (DESIGN.md S18b,
//! S18c; issue 10): one writer per cache file, appends that never apply
//! records to another base's keys, code versions, async I/O.
//!
//! Every test runs under a timeout; concurrency tests use a multi-thread
//! runtime and no sleeps for correctness.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Count, TempDir};
use picante::*;

// ---------------------------------------------------------------------------
// Fixtures

/// Fails the test if `f` takes longer than a minute.
async fn timeout<T>(f: impl Future<Output = T>) -> T {
    common::within("the test", Duration::from_secs(60), f).await
}

/// A persistent input: text by name.
struct Src;
impl Input for Src {
    type Key = String;
    type Value = String;
}

/// Length of a text.
struct Len(Count);
#[async_trait]
impl AsyncQuery for Len {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, key: String) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.input::<Src>(&key)?.len() as u64)
    }
}

/// The text, upper-cased.
struct Shout(Count);
#[async_trait]
impl AsyncQuery for Shout {
    type Key = String;
    type Value = String;
    async fn execute(&self, cx: &QueryCx, key: String) -> QueryResult<String> {
        self.0.hit();
        Ok(cx.input::<Src>(&key)?.to_uppercase())
    }
}

#[derive(Clone, Default)]
struct Counts {
    len: Count,
    shout: Count,
}

fn build(c: &Counts) -> Database {
    build_waiting(c, Duration::from_secs(10))
}

/// `build`, waiting at most `wait` for a cache's lock.
fn build_waiting(c: &Counts, wait: Duration) -> Database {
    Database::builder()
        .cache_lock_timeout(wait)
        .persistent_input::<Src>()
        .persistent_query(Len(c.len.clone()))
        .persistent_query(Shout(c.shout.clone()))
        .build()
        .expect("build")
}

/// Every input, sorted, with what the queries answer for it; panics if a
/// query's answer does not match its input (a memo applied to the wrong
/// key).
async fn consistent_state(db: &Database) -> Vec<(String, String)> {
    let mut inputs = db.inputs::<Src>().expect("inputs");
    inputs.sort();
    for (k, v) in &inputs {
        let len = db.query::<Len>(k.clone()).await.expect("Len");
        assert_eq!(
            len,
            v.len() as u64,
            "Len({k}) does not match its input {v:?}"
        );
        let shout = db.query::<Shout>(k.clone()).await.expect("Shout");
        assert_eq!(shout, v.to_uppercase(), "Shout({k}) does not match {v:?}");
    }
    inputs
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

async fn warm(db: &Database) {
    for (k, _) in db.inputs::<Src>().expect("inputs") {
        db.query::<Len>(k.clone()).await.expect("Len");
        db.query::<Shout>(k).await.expect("Shout");
    }
}

fn is_replaced(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::CacheReplaced { .. })
}

fn is_locked(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::CacheLocked { .. })
}

fn lock_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

// ---------------------------------------------------------------------------
// S18c: one writer per cache file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18c_an_append_never_applies_records_to_keys_of_another_database() {
    timeout(async {
        let dir = TempDir::new("two-dbs-append");
        let path = dir.join("cache.bin");
        let c = Counts::default();

        // A saves; B loads the same base: both number keys alike.
        let a = build(&c);
        a.set::<Src>("k0".into(), "zero".into()).unwrap();
        warm(&a).await;
        a.save_cache(&path).await.unwrap();
        let b = build(&c);
        assert!(
            b.load_cache(&path, LoadOptions::default())
                .await
                .unwrap()
                .loaded
        );

        // Each creates a different new key (file-local key number 1 in both).
        a.set::<Src>("from-a".into(), "aaaa".into()).unwrap();
        warm(&a).await;
        b.set::<Src>("from-b".into(), "bb".into()).unwrap();
        warm(&b).await;
        a.append_cache(&path).await.unwrap();
        let e = b.append_cache(&path).await.unwrap_err();
        assert!(is_replaced(&e), "{e:?}");
        assert!(e.to_string().contains("save_cache"), "{e}");

        // The cache is exactly A's.
        let c2 = Counts::default();
        let fresh = build(&c2);
        assert!(
            fresh
                .load_cache(&path, LoadOptions::default())
                .await
                .unwrap()
                .loaded
        );
        assert_eq!(
            consistent_state(&fresh).await,
            pairs(&[("k0", "zero"), ("from-a", "aaaa")])
        );
        assert_eq!((c2.len.get(), c2.shout.get()), (0, 0), "all memos reused");

        // B keeps failing rather than writing, until it saves.
        let e = b.append_cache(&path).await.unwrap_err();
        assert!(is_replaced(&e), "{e:?}");
        b.save_cache(&path).await.unwrap();
        b.set::<Src>("more-b".into(), "b".into()).unwrap();
        warm(&b).await;
        b.append_cache(&path).await.unwrap();
        let e = a.append_cache(&path).await.unwrap_err();
        assert!(is_replaced(&e), "{e:?}");
        let c3 = Counts::default();
        let fresh = build(&c3);
        fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert_eq!(
            consistent_state(&fresh).await,
            pairs(&[("k0", "zero"), ("from-b", "bb"), ("more-b", "b")])
        );
        assert_eq!((c3.len.get(), c3.shout.get()), (0, 0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18c_an_append_after_another_database_replaced_the_base_fails() {
    timeout(async {
        let dir = TempDir::new("two-dbs-base");
        let path = dir.join("cache.bin");
        let c = Counts::default();
        let a = build(&c);
        let b = build(&c);
        a.set::<Src>("a".into(), "from a".into()).unwrap();
        warm(&a).await;
        b.set::<Src>("b".into(), "from b".into()).unwrap();
        warm(&b).await;
        a.save_cache(&path).await.unwrap();
        a.set::<Src>("a2".into(), "x".into()).unwrap();
        warm(&a).await;
        a.append_cache(&path).await.unwrap();
        b.save_cache(&path).await.unwrap();
        a.set::<Src>("a3".into(), "y".into()).unwrap();
        warm(&a).await;
        let e = a.append_cache(&path).await.unwrap_err();
        assert!(is_replaced(&e), "{e:?}");

        // A second database that loaded A's log also cannot extend it once
        // the base is gone.
        let fresh = build(&Counts::default());
        fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert_eq!(consistent_state(&fresh).await, pairs(&[("b", "from b")]));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18c_a_held_lock_makes_save_append_and_load_wait_then_fail_clearly() {
    timeout(async {
        let dir = TempDir::new("locked");
        let path = dir.join("cache.bin");
        let c = Counts::default();
        let wait = Duration::from_millis(100);
        let a = build_waiting(&c, wait);
        a.set::<Src>("a".into(), "text".into()).unwrap();
        warm(&a).await;
        a.save_cache(&path).await.unwrap();
        a.set::<Src>("b".into(), "more".into()).unwrap();

        // Another process (here: another open file) holds the lock and does
        // not let go: each operation waits `wait`, then fails clearly.
        let other = std::fs::File::open(lock_file(&path)).expect("lock file exists");
        other.lock().expect("lock");
        let e = a.save_cache(&path).await.unwrap_err();
        assert!(is_locked(&e), "{e:?}");
        assert!(e.to_string().contains("locked"), "{e}");
        let e = a.append_cache(&path).await.unwrap_err();
        assert!(is_locked(&e), "{e:?}");
        let fresh = build_waiting(&Counts::default(), wait);
        let e = fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap_err();
        assert!(is_locked(&e), "{e:?}");
        let report = fresh
            .load_cache(&path, LoadOptions::ignore_errors())
            .await
            .unwrap();
        assert!(!report.loaded);
        assert!(report.ignored_error.as_ref().is_some_and(is_locked));
        assert!(fresh.inputs::<Src>().unwrap().is_empty(), "untouched");

        // A shared holder (a load in progress) still lets loads in, not
        // writers.
        other.unlock().expect("unlock");
        other.lock_shared().expect("lock shared");
        let fresh = build_waiting(&Counts::default(), wait);
        let report = fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert!(report.loaded);
        assert!(is_locked(&a.append_cache(&path).await.unwrap_err()));

        // Released: the refused append lost nothing.
        drop(other);
        a.append_cache(&path).await.unwrap();
        let fresh = build(&Counts::default());
        fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert_eq!(
            consistent_state(&fresh).await,
            pairs(&[("a", "text"), ("b", "more")])
        );

        // A holder that lets go while a save waits for it: the save goes
        // through once it is released.
        let other = std::fs::File::open(lock_file(&path)).expect("lock file");
        other.lock().expect("lock");
        let patient = build_waiting(&Counts::default(), Duration::from_secs(30));
        patient.set::<Src>("p".into(), "patient".into()).unwrap();
        warm(&patient).await;
        let save = tokio::spawn({
            let patient = patient.clone();
            let path = path.clone();
            async move { patient.save_cache(&path).await }
        });
        tokio::task::yield_now().await;
        drop(other);
        save.await.unwrap().unwrap();
        let fresh = build(&Counts::default());
        fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert_eq!(consistent_state(&fresh).await, pairs(&[("p", "patient")]));
    })
    .await
}

// ---------------------------------------------------------------------------
// S18c: two processes on one cache file.
//
// The parent re-invokes this test binary twice with `PICANTE_TRUST_CHILD`
// set; each child runs `s18c_child_process_worker`, which loads, changes its
// own keys, and saves or appends, many times. Meanwhile the parent loads
// repeatedly. Every load must succeed with a consistent state or fail with
// a lock error; every write must succeed or fail with a lock or "replaced"
// error — never a checksum failure or a misapplied record.

const CHILD_ENV: &str = "PICANTE_TRUST_CHILD";
const CHILD_ROUNDS: usize = 150;

/// The acceptable failures of one operation when others write the cache.
fn tolerated(e: &Error) -> bool {
    is_locked(e) || is_replaced(e)
}

/// The value a writer gives key `k`: a record applied to the wrong key shows.
fn value_of(k: &str) -> String {
    format!("v({k})")
}

/// A loaded state is consistent: queries match inputs (checked by
/// `consistent_state`), and every input holds the value of its own key.
fn check_writers(state: &[(String, String)]) {
    for (k, v) in state {
        assert_eq!(
            *v,
            value_of(k),
            "input {k} holds another key's value: {state:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18c_child_process_worker() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // Only meaningful when started by the parent test.
    };
    let (me, path) = spec.split_once('=').expect("name=path");
    let path = PathBuf::from(path);
    timeout(async {
        for round in 0..CHILD_ROUNDS {
            let db = build(&Counts::default());
            let linked = match db.load_cache(&path, LoadOptions::default()).await {
                Ok(r) => r.loaded,
                Err(e) if is_locked(&e) => false,
                Err(e) => panic!("{me}: load failed: {e:?}"),
            };
            check_writers(&consistent_state(&db).await);
            // New keys every round (new file-local key numbers), and the
            // previous round's keys removed, so the state stays small.
            let mut batch = db.batch();
            for (k, _) in db.inputs::<Src>().unwrap() {
                if k.starts_with(&format!("{me}/")) {
                    batch.remove::<Src>(&k);
                }
            }
            for k in ["a", "b", "c"] {
                let key = format!("{me}/{round}/{k}");
                batch.set::<Src>(key.clone(), value_of(&key));
            }
            batch.commit().unwrap();
            warm(&db).await;
            let result = if linked && round % 8 != 0 {
                db.append_cache(&path).await.map(|_| ())
            } else {
                db.save_cache(&path).await.map(|_| ())
            };
            if let Err(e) = result {
                assert!(tolerated(&e), "{me}: write failed: {e:?}");
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18c_two_processes_on_one_cache_never_corrupt_or_misapply() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    timeout(async {
        let dir = TempDir::new("two-processes");
        let path = dir.join("cache.bin");
        let exe = std::env::current_exe().expect("test binary");
        let spawn = |name: &str| {
            tokio::process::Command::new(&exe)
                .args(["--exact", "s18c_child_process_worker", "--nocapture"])
                .env(CHILD_ENV, format!("{name}={}", path.display()))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn child")
        };
        let children = [spawn("p1"), spawn("p2")];
        let waits = tokio::spawn(async move {
            let mut outs = Vec::new();
            for child in children {
                outs.push(child.wait_with_output().await.expect("child"));
            }
            outs
        });
        let (mut loads, mut loaded) = (0, 0);
        while !waits.is_finished() {
            let db = build(&Counts::default());
            match db.load_cache(&path, LoadOptions::default()).await {
                Ok(r) => {
                    loaded += usize::from(r.loaded);
                    check_writers(&consistent_state(&db).await);
                }
                Err(e) => assert!(is_locked(&e), "load failed: {e:?}"),
            }
            loads += 1;
            tokio::task::yield_now().await;
        }
        for out in waits.await.expect("join") {
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The final state is consistent too.
        let db = build(&Counts::default());
        assert!(
            db.load_cache(&path, LoadOptions::default())
                .await
                .unwrap()
                .loaded
        );
        check_writers(&consistent_state(&db).await);
        eprintln!("parent: {loads} loads, {loaded} loaded while children wrote");
    })
    .await
}

// ---------------------------------------------------------------------------
// S18b: code versions

/// Length of a text, at code version `V` (one kind across builds: same
/// stable name, same types).
struct LenAt<const V: u32>(Count);
#[async_trait]
impl<const V: u32> AsyncQuery for LenAt<V> {
    type Key = String;
    type Value = u64;
    const VERSION: u32 = V;
    async fn execute(&self, cx: &QueryCx, key: String) -> QueryResult<u64> {
        self.0.hit();
        // What version 1 computes differs from version 0.
        Ok(cx.input::<Src>(&key)?.len() as u64 + 1000 * u64::from(V))
    }
}

/// Twice the length: a dependent of `LenAt<V>` whose own code did not change.
struct TwiceAt<const V: u32>(Count);
#[async_trait]
impl<const V: u32> AsyncQuery for TwiceAt<V> {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, key: String) -> QueryResult<u64> {
        self.0.hit();
        Ok(cx.query::<LenAt<V>>(key).await? * 2)
    }
}

#[derive(Clone, Default)]
struct VersionCounts {
    len: Count,
    twice: Count,
    shout: Count,
}

impl VersionCounts {
    fn take(&self) -> (usize, usize, usize) {
        (self.len.take(), self.twice.take(), self.shout.take())
    }
}

/// A build of the program whose `LenAt` is at version `V`, declaring
/// application code version `app` (or none: the executable's fingerprint).
fn build_at<const V: u32>(c: &VersionCounts, app: Option<&str>) -> Database {
    let mut b = Database::builder();
    if let Some(app) = app {
        b = b.code_version(app);
    }
    b.persistent_input::<Src>()
        .persistent_query_as(LenAt::<V>(c.len.clone()), "len")
        .persistent_query_as(TwiceAt::<V>(c.twice.clone()), "twice")
        .persistent_query(Shout(c.shout.clone()))
        .build()
        .expect("build")
}

const KEYS: [&str; 3] = ["a", "bb", "ccc"];

async fn read_all<const V: u32>(db: &Database) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for k in KEYS {
        let twice = db.query::<TwiceAt<V>>(k.into()).await.expect("twice");
        let shout = db.query::<Shout>(k.into()).await.expect("shout");
        out.push((twice, shout));
    }
    out
}

async fn save_at<const V: u32>(path: &Path, app: Option<&str>) -> Vec<(u64, String)> {
    let c = VersionCounts::default();
    let db = build_at::<V>(&c, app);
    for k in KEYS {
        db.set::<Src>(k.into(), k.repeat(2)).unwrap();
    }
    let values = read_all::<V>(&db).await;
    db.save_cache(path).await.unwrap();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18b_a_bumped_query_version_drops_only_that_kinds_memos() {
    timeout(async {
        let dir = TempDir::new("kind-version");
        let path = dir.join("cache.bin");
        let expected = save_at::<0>(&path, Some("1.0")).await;

        // Same versions: everything reused.
        let c = VersionCounts::default();
        let db = build_at::<0>(&c, Some("1.0"));
        let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
        assert!(report.loaded && report.code_changed.is_none() && report.stale_kinds.is_empty());
        assert_eq!(read_all::<0>(&db).await, expected);
        assert_eq!(c.take(), (0, 0, 0));

        // LenAt bumped to version 1: its memos are dropped and it
        // re-executes; its dependent revalidates normally (and, the new Len
        // memo having no old value to cut off against, re-runs); Shout is
        // untouched.
        let c = VersionCounts::default();
        let db = build_at::<1>(&c, Some("1.0"));
        let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
        assert!(report.loaded);
        assert!(report.code_changed.is_none());
        assert_eq!(
            report.stale_kinds,
            vec!["len: version 0 in the cache, 1 now"]
        );
        assert_eq!(report.dropped_memos, KEYS.len());
        assert_eq!(report.inputs, KEYS.len());
        assert_eq!(db.revision(), report.revision);
        let now: Vec<_> = expected
            .iter()
            .map(|(t, s)| (t + 2000, s.clone()))
            .collect();
        assert_eq!(
            read_all::<1>(&db).await,
            now,
            "no result of the old code is served"
        );
        let (len, twice, shout) = c.take();
        assert_eq!(
            (len, shout),
            (KEYS.len(), 0),
            "only the bumped kind re-executes"
        );
        assert_eq!(twice, KEYS.len(), "dependents re-verify normally");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18b_another_declared_code_version_drops_every_memo_and_keeps_inputs() {
    timeout(async {
        let dir = TempDir::new("app-version");
        let path = dir.join("cache.bin");
        let expected = save_at::<0>(&path, Some("1.0")).await;

        let c = VersionCounts::default();
        let db = build_at::<0>(&c, Some("2.0"));
        let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
        assert!(report.loaded);
        let why = report.code_changed.expect("code_changed says why");
        assert!(why.contains("\"1.0\"") && why.contains("\"2.0\""), "{why}");
        assert_eq!(report.memos, 0);
        assert_eq!(report.dropped_memos, 3 * KEYS.len());
        assert_eq!(report.inputs, KEYS.len(), "inputs survive");
        assert_eq!(read_all::<0>(&db).await, expected);
        assert_eq!(c.take(), (KEYS.len(), KEYS.len(), KEYS.len()));

        // Saved by the default fingerprint, loaded under a declared version
        // (and back): memos dropped both ways.
        save_at::<0>(&path, None).await;
        let c = VersionCounts::default();
        let db = build_at::<0>(&c, Some("1.0"));
        let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
        assert!(report.code_changed.is_some());
        assert_eq!(read_all::<0>(&db).await, expected);
        assert_eq!(c.take(), (KEYS.len(), KEYS.len(), KEYS.len()));
        save_at::<0>(&path, Some("1.0")).await;
        let c = VersionCounts::default();
        let db = build_at::<0>(&c, None);
        assert!(
            db.load_cache(&path, LoadOptions::default())
                .await
                .unwrap()
                .code_changed
                .is_some()
        );
        assert_eq!(read_all::<0>(&db).await, expected);
        assert_eq!(c.take(), (KEYS.len(), KEYS.len(), KEYS.len()));
    })
    .await
}

const LOAD_ENV: &str = "PICANTE_TRUST_LOAD";

/// Child side of the next test: loads the cache under the default
/// fingerprint and prints what it had to execute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18b_child_load_worker() {
    let Ok(path) = std::env::var(LOAD_ENV) else {
        return; // Only meaningful when started by the parent test.
    };
    timeout(async {
        let c = VersionCounts::default();
        let db = build_at::<0>(&c, None);
        let report = db.load_cache(&path, LoadOptions::default()).await.unwrap();
        read_all::<0>(&db).await;
        let (len, twice, shout) = c.take();
        println!(
            "RESULT loaded={} code_changed={} executions={}",
            report.loaded,
            report.code_changed.is_some(),
            len + twice + shout
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18b_by_default_another_build_of_the_program_drops_every_memo() {
    if std::env::var(LOAD_ENV).is_ok() {
        return;
    }
    timeout(async {
        let dir = TempDir::new("exe-fingerprint");
        let path = dir.join("cache.bin");
        save_at::<0>(&path, None).await;
        let exe = std::env::current_exe().expect("test binary");
        // "Another build": a copy of this binary (same code, new file, new
        // modification time, so another fingerprint, as after a rebuild).
        let rebuilt = dir.join("rebuilt-test-binary");
        std::fs::copy(&exe, &rebuilt).expect("copy the test binary");
        let run = |bin: PathBuf| {
            let path = path.clone();
            async move {
                let out = tokio::process::Command::new(bin)
                    .args(["--exact", "s18b_child_load_worker", "--nocapture"])
                    .env(LOAD_ENV, &path)
                    .output()
                    .await
                    .expect("run child");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let stdout = String::from_utf8_lossy(&out.stdout).to_string();
                stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("RESULT ").map(str::to_string))
                    .unwrap_or_else(|| panic!("no result in {stdout}"))
            }
        };
        // The same executable reuses every memo.
        assert_eq!(
            run(exe.clone()).await,
            "loaded=true code_changed=false executions=0"
        );
        // Another build re-runs them all (inputs still loaded).
        assert_eq!(
            run(rebuilt).await,
            format!(
                "loaded=true code_changed=true executions={}",
                3 * KEYS.len()
            )
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// S18c: save and load are async and keep blocking work off the runtime

#[tokio::test(flavor = "current_thread")]
async fn s18c_async_save_and_load_let_other_tasks_run_on_a_current_thread_runtime() {
    timeout(async {
        let dir = TempDir::new("async-io");
        let path = dir.join("cache.bin");
        let c = Counts::default();
        let db = build(&c);
        let mut batch = db.batch();
        for i in 0..4000 {
            batch.set::<Src>(format!("k{i}"), format!("{i:>1000}"));
        }
        batch.commit().unwrap();
        warm(&db).await;

        // A ticker on the same (only) runtime thread.
        let ticks = std::sync::Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            }
        });
        tokio::task::yield_now().await;

        // The save's encoding and fsync run on the blocking pool: the
        // ticker keeps ticking while it is awaited.
        let before = ticks.load(Ordering::SeqCst);
        let saved = db.save_cache(&path).await.unwrap();
        let during_save = ticks.load(Ordering::SeqCst) - before;
        assert_eq!(saved.memos, 8000);
        assert!(
            during_save > 0,
            "the runtime thread was blocked by the save"
        );

        let fresh = build(&Counts::default());
        let before = ticks.load(Ordering::SeqCst);
        let report = fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        let during_load = ticks.load(Ordering::SeqCst) - before;
        assert!(report.loaded);
        assert_eq!(report.memos, 8000);
        assert!(
            during_load > 0,
            "the runtime thread was blocked by the load"
        );

        // And an append, of enough changes that its blocking work takes
        // longer than the first poll of its hand-off (an append of one
        // small change can finish on the blocking pool before the awaiting
        // task ever yields, and the ticker then rightly never ran).
        let mut batch = db.batch();
        for i in 0..2000 {
            batch.set::<Src>(format!("k{i}"), format!("changed {i:>1000}"));
        }
        batch.commit().unwrap();
        warm(&db).await;
        let before = ticks.load(Ordering::SeqCst);
        db.append_cache(&path).await.unwrap();
        assert!(ticks.load(Ordering::SeqCst) > before);
        ticker.abort();
    })
    .await
}

// ---------------------------------------------------------------------------
// S18/S18c: the smaller guarantees

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_stale_temporary_files_of_this_cache_are_removed_on_the_next_save() {
    timeout(async {
        let dir = TempDir::new("stale-temps");
        let path = dir.join("cache.bin");
        // Left by saves killed mid-write (base and log), and files that are
        // not this cache's temporaries.
        let ours = [".cache.bin.tmp-4242-deadbeef", ".cache.bin.log.tmp-7-1"];
        let theirs = [
            ".other.bin.tmp-1-2",
            "cache.bin.tmp-not-hidden",
            ".cache.binary.tmp-3",
        ];
        for name in ours.iter().chain(&theirs) {
            std::fs::write(dir.join(name), b"half a cache").unwrap();
        }
        let db = build(&Counts::default());
        db.set::<Src>("a".into(), "text".into()).unwrap();
        warm(&db).await;
        db.save_cache(&path).await.unwrap();
        for name in ours {
            assert!(!dir.join(name).exists(), "{name} was not removed");
        }
        for name in theirs {
            assert!(
                dir.join(name).exists(),
                "{name} is not ours but was removed"
            );
        }
        let mut left: Vec<String> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".cache.bin.") && n.contains(".tmp-"))
            .collect();
        left.sort();
        assert!(left.is_empty(), "{left:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18c_after_a_load_the_revision_is_the_saved_revision() {
    timeout(async {
        let dir = TempDir::new("revision");
        let path = dir.join("cache.bin");
        let c = Counts::default();
        let db = build(&c);
        for i in 0..5 {
            db.set::<Src>("a".into(), format!("v{i}")).unwrap();
            db.set::<Src>(format!("k{i}"), "x".repeat(i)).unwrap();
        }
        warm(&db).await;
        let saved = db.save_cache(&path).await.unwrap();
        assert_eq!(saved.revision, db.revision());

        let c2 = Counts::default();
        let fresh = build(&c2);
        let report = fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert_eq!(report.revision, saved.revision);
        assert_eq!(fresh.revision(), saved.revision);
        // Memos are reused (revalidated, not re-run) at that revision...
        assert_eq!(consistent_state(&fresh).await.len(), 6);
        assert_eq!((c2.len.take(), c2.shout.take()), (0, 0));
        // ...and the next change is the next revision, and is seen.
        let next = fresh.set::<Src>("a".into(), "changed".into()).unwrap();
        assert_eq!(next.as_u64(), saved.revision.as_u64() + 1);
        assert_eq!(fresh.query::<Len>("a".into()).await.unwrap(), 7);
        assert_eq!((c2.len.take(), c2.shout.take()), (1, 0));

        // Through a log too: the revision the last append reached.
        db.set::<Src>("a".into(), "again".into()).unwrap();
        warm(&db).await;
        let appended = db.append_cache(&path).await.unwrap();
        let again = build(&Counts::default());
        let report = again
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert_eq!(report.revision, appended.revision);
        assert_eq!(again.revision(), db.revision());
    })
    .await
}

/// A bogus "cache" whose body never ends (a FIFO whose writer stays open):
/// a loader that read the whole file before checking the header would hang.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_load_checks_the_header_before_reading_the_body() {
    timeout(async {
        let dir = TempDir::new("header-first");
        let path = dir.join("cache.bin");
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                // Not a picante header, then (as far as the reader knows) a
                // body of any size.
                let _ = f.write_all(&[0xAB; 4096]);
                let _ = done_rx.recv();
            }
        });
        let db = build(&Counts::default());
        let options = LoadOptions {
            max_bytes: u64::MAX,
            ..LoadOptions::default()
        };
        let e = db.load_cache(&path, options).await.unwrap_err();
        assert!(e.to_string().contains("not a picante cache"), "{e}");
        assert!(db.inputs::<Src>().unwrap().is_empty());
        done_tx.send(()).unwrap();
        writer.join().unwrap();

        // A large bogus regular file is refused as fast, from its header.
        let big = dir.join("big.bin");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(4 << 30).unwrap(); // sparse: 4 GiB of zeros
        drop(f);
        let db = build(&Counts::default());
        let options = LoadOptions {
            max_bytes: u64::MAX,
            ..LoadOptions::default()
        };
        let e = db.load_cache(&big, options).await.unwrap_err();
        assert!(e.to_string().contains("not a picante cache"), "{e}");
    })
    .await
}

/// An interned kind whose ids are persisted in keys and values.
struct Label;
impl Interned for Label {
    type Value = String;
}

/// Links between labels: keyed by an id, valued by ids.
struct Links;
impl Input for Links {
    type Key = Id<Label>;
    type Value = Vec<Id<Label>>;
}

/// The linked labels' texts, with the first link's id.
struct Linked(Count);
#[async_trait]
impl AsyncQuery for Linked {
    type Key = Id<Label>;
    type Value = (Option<Id<Label>>, Vec<String>);
    async fn execute(&self, cx: &QueryCx, key: Id<Label>) -> QueryResult<Self::Value> {
        self.0.hit();
        let links = cx.input::<Links>(&key)?;
        let mut names = Vec::new();
        for id in &links {
            names.push(cx.lookup::<Label>(*id)?);
        }
        Ok((links.first().copied(), names))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_interned_ids_persist_as_keys_and_values() {
    timeout(async {
        let dir = TempDir::new("ids");
        let path = dir.join("cache.bin");
        let build_ids = |c: &Count| {
            Database::builder()
                .persistent_interned::<Label>()
                .persistent_input::<Links>()
                .persistent_query(Linked(c.clone()))
                .build()
                .expect("Id<T> is accepted as a persistent key and value")
        };
        let c = Count::new();
        let db = build_ids(&c);
        let [a, b, z] = ["a", "b", "z"].map(|s| db.intern::<Label>(s.into()).unwrap());
        db.set::<Links>(a, vec![b, z]).unwrap();
        db.set::<Links>(z, vec![a]).unwrap();
        let expected_a = db.query::<Linked>(a).await.unwrap();
        let expected_z = db.query::<Linked>(z).await.unwrap();
        assert_eq!(
            expected_a,
            (Some(b), vec!["b".to_string(), "z".to_string()])
        );
        db.save_cache(&path).await.unwrap();

        let c2 = Count::new();
        let fresh = build_ids(&c2);
        let report = fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        assert!(
            report.loaded && report.dropped_kinds.is_empty(),
            "{report:?}"
        );
        let mut links = fresh.inputs::<Links>().unwrap();
        links.sort();
        assert_eq!(links, vec![(a, vec![b, z]), (z, vec![a])]);
        assert_eq!(fresh.lookup::<Label>(z).unwrap(), "z");
        assert_eq!(fresh.query::<Linked>(a).await.unwrap(), expected_a);
        assert_eq!(fresh.query::<Linked>(z).await.unwrap(), expected_z);
        assert_eq!(c2.get(), 0, "memos keyed and valued by ids are reused");
        // Interning again finds the same ids.
        assert_eq!(fresh.intern::<Label>("b".into()).unwrap(), b);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18c_one_database_saving_and_appending_concurrently_never_stalls_or_fails() {
    timeout(async {
        let dir = TempDir::new("save-and-append");
        let path = dir.join("cache.bin");
        let c = Counts::default();
        // A stall (each waiting for what the other holds) would end in a
        // lock error after this long.
        let db = build_waiting(&c, Duration::from_secs(2));
        db.set::<Src>("k".into(), "v0".into()).unwrap();
        warm(&db).await;
        db.save_cache(&path).await.unwrap();
        for round in 1..=20 {
            db.set::<Src>("k".into(), format!("v{round}")).unwrap();
            db.set::<Src>(format!("k{round}"), "new".into()).unwrap();
            warm(&db).await;
            let (saved, appended) = tokio::join!(
                tokio::spawn({
                    let db = db.clone();
                    let path = path.clone();
                    async move { db.save_cache(&path).await }
                }),
                tokio::spawn({
                    let db = db.clone();
                    let path = path.clone();
                    async move { db.append_cache(&path).await }
                }),
            );
            saved.unwrap().unwrap();
            appended.unwrap().unwrap();
        }
        let fresh = build(&Counts::default());
        fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        let state = consistent_state(&fresh).await;
        assert_eq!(state.len(), 21);
        assert!(state.contains(&("k".to_string(), "v20".to_string())));
    })
    .await
}
