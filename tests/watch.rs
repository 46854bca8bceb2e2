//! Watching queries, revision subscriptions and events (issue 11). Every test
//! counts executions, runs on tokio's multi-thread runtime and has a timeout;
//! none depends on a sleep for correctness.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Count;
use picante::*;
use tokio::sync::{Notify, Semaphore};

/// Fails the test instead of hanging CI.
async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    common::within("the test", Duration::from_secs(20), fut).await
}

struct Text;
impl Input for Text {
    type Key = u32;
    type Value = String;
}

struct Other;
impl Input for Other {
    type Key = u32;
    type Value = u32;
}

/// Number of words of `Text(k)`: edits that keep the count are cut off.
struct Words(Count);
#[async_trait]
impl AsyncQuery for Words {
    type Key = u32;
    type Value = usize;
    async fn execute(&self, cx: &QueryCx, key: u32) -> QueryResult<usize> {
        self.0.hit();
        Ok(cx.input::<Text>(&key)?.split_whitespace().count())
    }
}

/// `Words(k)` squared: re-executes only when the count changes.
struct Square(Count);
#[async_trait]
impl AsyncQuery for Square {
    type Key = u32;
    type Value = usize;
    async fn execute(&self, cx: &QueryCx, key: u32) -> QueryResult<usize> {
        self.0.hit();
        let n = cx.query::<Words>(key).await?;
        Ok(n * n)
    }
}

fn words_db(words: &Count, square: &Count) -> Database {
    Database::builder()
        .input::<Text>()
        .input::<Other>()
        .query(Words(words.clone()))
        .query(Square(square.clone()))
        .build()
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_yields_the_current_value_then_one_item_per_real_change() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        db.set::<Text>(1, "a b".into()).unwrap();
        let mut watch = db.watch::<Square>(1);
        assert_eq!(watch.next_value().await.unwrap(), 4);
        assert_eq!((words.take(), square.take()), (1, 1));

        db.set::<Text>(1, "a b c".into()).unwrap();
        assert_eq!(watch.next_value().await.unwrap(), 9);
        assert_eq!((words.take(), square.take()), (1, 1));

        db.set::<Text>(1, "a".into()).unwrap();
        assert_eq!(watch.next_value().await.unwrap(), 1);
        assert_eq!((words.take(), square.take()), (1, 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_yields_nothing_for_cut_off_edits_or_unrelated_inputs() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        db.set::<Text>(1, "a b".into()).unwrap();
        db.set::<Text>(2, "x".into()).unwrap();
        let mut watch = db.watch::<Square>(1);
        assert_eq!(watch.next_value().await.unwrap(), 4);
        assert_eq!((words.take(), square.take()), (1, 1));

        // Three revisions that do not change the value: an edit cut off at
        // `Words`, an unrelated key of the same kind, an unrelated kind. The
        // watch is already waiting and may look at any of them.
        let polled = tokio::spawn(async move {
            let first = watch.next_value().await;
            (first, watch)
        });
        db.set::<Text>(1, "c d".into()).unwrap();
        db.set::<Text>(2, "y z".into()).unwrap();
        db.set::<Other>(1, 7).unwrap();
        // Then a real change: the first item the watch yields is this one.
        db.set::<Text>(1, "e f g".into()).unwrap();
        let (first, mut watch) = polled.await.unwrap();
        assert_eq!(first.unwrap(), 9);
        // `Square(1)` ran only for the real change; `Words(1)` for it and,
        // if the watch looked at that revision, for the cut-off edit (never
        // for the revisions that did not touch `Text(1)`).
        assert_eq!(square.take(), 1);
        assert!((1..=2).contains(&words.take()));

        // Nothing is queued behind it: the next item is the next change.
        db.set::<Text>(1, "h".into()).unwrap();
        assert_eq!(watch.next_value().await.unwrap(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_skips_to_the_latest_revision_under_a_burst() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        db.set::<Text>(1, "a".into()).unwrap();
        let mut watch = db.watch::<Square>(1);
        assert_eq!(watch.next_value().await.unwrap(), 1);
        assert_eq!((words.take(), square.take()), (1, 1));

        // 50 revisions while nobody polls the watch: it computes once, at
        // the latest, and yields that value only.
        for n in 2..=51 {
            db.set::<Text>(1, vec!["w"; n].join(" ")).unwrap();
        }
        assert_eq!(watch.next_value().await.unwrap(), 51 * 51);
        assert_eq!((words.take(), square.take()), (1, 1));

        db.set::<Text>(1, "a b".into()).unwrap();
        assert_eq!(watch.next_value().await.unwrap(), 4);
        assert_eq!((words.take(), square.take()), (1, 1));
    })
    .await;
}

/// A query whose body waits for a permit, says when it started and when its
/// future was dropped.
struct Gated {
    runs: Count,
    started: Arc<Notify>,
    permits: Arc<Semaphore>,
    dropped: Arc<Notify>,
}

struct OnDrop(Arc<Notify>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

#[async_trait]
impl AsyncQuery for Gated {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, key: u32) -> QueryResult<u32> {
        self.runs.hit();
        let value = cx.input::<Other>(&key)?;
        let guard = OnDrop(self.dropped.clone());
        self.started.notify_one();
        let permit = self.permits.acquire().await.map_err(Error::new)?;
        permit.forget();
        std::mem::forget(guard);
        Ok(value * 10)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_watch_cancels_its_work_and_leaves_nothing_in_flight() {
    within(async {
        let runs = Count::new();
        let started = Arc::new(Notify::new());
        let permits = Arc::new(Semaphore::new(0));
        let dropped = Arc::new(Notify::new());
        let db = Database::builder()
            .input::<Other>()
            .query(Gated {
                runs: runs.clone(),
                started: started.clone(),
                permits: permits.clone(),
                dropped: dropped.clone(),
            })
            .build()
            .unwrap();
        db.set::<Other>(1, 1).unwrap();
        let mut watch = db.watch::<Gated>(1);
        let task = tokio::spawn(async move { watch.next_value().await });
        started.notified().await;
        assert_eq!(db.stats().in_flight, 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        // The body's future was dropped, and its in-flight entry with it.
        dropped.notified().await;
        assert_eq!(db.stats().in_flight, 0);
        assert_eq!(runs.take(), 1);

        // A later reader executes normally.
        permits.add_permits(1);
        assert_eq!(db.query::<Gated>(1).await.unwrap(), 10);
        assert_eq!(runs.take(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_watchers_of_one_key_share_one_execution_per_revision() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        db.set::<Text>(1, "a b".into()).unwrap();
        let mut tasks = Vec::new();
        let ready = Arc::new(tokio::sync::Barrier::new(101));
        let go = Arc::new(Notify::new());
        for _ in 0..100 {
            let mut watch = db.watch::<Square>(1);
            let (ready, go) = (ready.clone(), go.clone());
            tasks.push(tokio::spawn(async move {
                let first = watch.next_value().await.unwrap();
                let go = go.notified();
                ready.wait().await;
                go.await;
                let second = watch.next_value().await.unwrap();
                (first, second)
            }));
        }
        ready.wait().await;
        assert_eq!((words.take(), square.take()), (1, 1));
        db.set::<Text>(1, "a b c".into()).unwrap();
        go.notify_waiters();
        for task in tasks {
            assert_eq!(task.await.unwrap(), (4, 9));
        }
        assert_eq!((words.take(), square.take()), (1, 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_yields_errors_and_recoveries() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        let mut watch = db.watch::<Words>(1);
        let err = watch.next_value().await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::MissingInput { .. }));
        db.set::<Other>(1, 1).unwrap(); // unrelated: the same error, nothing yielded
        db.set::<Text>(1, "a".into()).unwrap();
        assert_eq!(watch.next_value().await.unwrap(), 1);
        db.remove::<Text>(&1).unwrap();
        assert!(watch.next_value().await.is_err());
        assert_eq!(words.take(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_subscription_wakes_only_for_revisions_that_changed_something() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        let mut revisions = db.subscribe_revisions();
        db.set::<Text>(1, "a".into()).unwrap();
        assert!(revisions.has_changed().unwrap());
        assert_eq!(*revisions.borrow_and_update(), db.revision());
        db.set::<Text>(1, "a".into()).unwrap(); // equal: no revision
        assert!(!revisions.has_changed().unwrap());
        // A fork does not move the database's revision.
        let snap = db.snapshot();
        let mut snap_revisions = snap.subscribe_revisions();
        snap.set::<Text>(1, "b".into()).unwrap();
        assert!(!revisions.has_changed().unwrap());
        assert!(snap_revisions.has_changed().unwrap());
        assert_eq!(*snap_revisions.borrow_and_update(), snap.revision());
        assert_eq!(words.get() + square.get(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_name_the_inputs_of_each_commit() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        db.set::<Text>(9, "x".into()).unwrap();
        let mut events = db.subscribe_events(EventFilter::Inputs);
        let r1 = db.set::<Text>(1, "a".into()).unwrap();
        db.set::<Text>(1, "a".into()).unwrap(); // equal: no event
        let r2 = db
            .batch()
            .set::<Other>(2, 5)
            .remove::<Text>(&9)
            .commit()
            .unwrap();
        db.snapshot().set::<Text>(1, "fork".into()).unwrap(); // forks report nothing
        // Executions are not reported to an inputs-only subscription.
        assert_eq!(db.query::<Square>(1).await.unwrap(), 1);
        db.set::<Text>(3, "end".into()).unwrap();

        let Some(Event::InputsChanged {
            revision, changes, ..
        }) = events.recv().await
        else {
            panic!("expected an input event")
        };
        assert_eq!(revision, r1);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to_string(), "Text(1) set");

        let Some(Event::InputsChanged {
            revision, changes, ..
        }) = events.recv().await
        else {
            panic!("expected an input event")
        };
        assert_eq!(revision, r2);
        let mut rendered: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        rendered.sort();
        assert_eq!(rendered, ["Other(2) set", "Text(9) removed"]);
        assert!(
            changes
                .iter()
                .any(|c| c.removed && c.kind == "Text" && c.key == "9")
        );

        let Some(Event::InputsChanged { changes, .. }) = events.recv().await else {
            panic!("expected an input event")
        };
        assert_eq!(changes[0].to_string(), "Text(3) set");
        assert_eq!((words.get(), square.get()), (1, 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_events_say_what_ran_why_and_whether_it_was_cut_off() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        db.set::<Text>(1, "a b".into()).unwrap();
        let mut events = db.subscribe_events(EventFilter::InputsAndExecutions);
        db.query::<Square>(1).await.unwrap();
        db.set::<Text>(1, "c d".into()).unwrap(); // Words re-runs, cut off
        db.query::<Square>(1).await.unwrap();
        assert_eq!((words.take(), square.take()), (2, 1));

        let mut seen = Vec::new();
        for _ in 0..4 {
            match events.recv().await.expect("event") {
                Event::Executed {
                    kind,
                    key,
                    cut_off,
                    reason,
                    ..
                } => seen.push(format!("{kind}({key}) cut_off={cut_off} {reason}")),
                Event::InputsChanged { changes, .. } => seen.push(format!("inputs {}", changes[0])),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            seen,
            [
                "Words(1) cut_off=false no reusable memo",
                "Square(1) cut_off=false no reusable memo",
                "inputs Text(1) set",
                "Words(1) cut_off=true dependency Text(1) changed",
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_how_many_events_it_missed() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        let mut events = db.subscribe_events(EventFilter::Inputs);
        for n in 0..5000 {
            db.set::<Other>(1, n + 1).unwrap();
        }
        let Some(Event::Missed { count, .. }) = events.recv().await else {
            panic!("expected Missed first")
        };
        assert_eq!(count, 5000 - 4096);
        let Some(Event::InputsChanged { changes, .. }) = events.recv().await else {
            panic!("expected the oldest buffered event next")
        };
        assert_eq!(changes[0].key, "1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_subscription_ends_when_the_database_is_dropped() {
    within(async {
        let (words, square) = (Count::new(), Count::new());
        let db = words_db(&words, &square);
        let mut events = db.subscribe_events(EventFilter::InputsAndExecutions);
        drop(db);
        assert!(events.recv().await.is_none());
        assert!(events.recv().await.is_none());
    })
    .await;
}
