//! S19: counters, memo inspection ("why did this re-execute?"), the
//! dependency graph, and a `picante.execute` tracing span per execution.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::Count;
use picante::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id as SpanId};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

struct A;
impl Input for A {
    type Key = u32;
    type Value = i64;
}

/// `A(k) / 10`.
struct Leaf {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Leaf {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.input::<A>(&k)? / 10)
    }
}

/// `Leaf(k) + A(100)` if present.
struct Top {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Top {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
        self.runs.hit();
        Ok(cx.query::<Leaf>(k).await? + cx.input_opt::<A>(&100)?.unwrap_or(0))
    }
}

fn db_with(leaf: &Count, top: &Count) -> Result<Database> {
    Database::builder()
        .input::<A>()
        .query(Leaf { runs: leaf.clone() })
        .query(Top { runs: top.clone() })
        .build()
}

fn counters(db: &Database, name: &str) -> (u64, u64, u64, u64) {
    let s = db.stats();
    let q = s
        .query(name)
        .unwrap_or_else(|| panic!("no stats for {name}"));
    (q.executions, q.hits, q.revalidations, q.cutoffs)
}

#[tokio::test]
async fn s19_counters_in_a_small_scenario() -> Result<()> {
    let (leaf, top) = (Count::new(), Count::new());
    let db = db_with(&leaf, &top)?;
    // (executions, hits, revalidations, cutoffs)
    assert_eq!(counters(&db, "Leaf"), (0, 0, 0, 0));
    assert_eq!(db.stats().total_executions(), 0);

    db.set::<A>(1, 1)?;
    assert_eq!(db.query::<Top>(1).await?, 0);
    assert_eq!(counters(&db, "Top"), (1, 0, 0, 0));
    assert_eq!(counters(&db, "Leaf"), (1, 0, 0, 0));

    // Warm reads are hits.
    db.query::<Top>(1).await?;
    db.query::<Top>(1).await?;
    db.query::<Leaf>(1).await?;
    assert_eq!(counters(&db, "Top"), (1, 2, 0, 0));
    assert_eq!(counters(&db, "Leaf"), (1, 1, 0, 0));

    // Unrelated change: both revalidated.
    db.set::<A>(2, 0)?;
    assert_eq!(db.query::<Top>(1).await?, 0);
    assert_eq!(counters(&db, "Top"), (1, 2, 1, 0));
    assert_eq!(counters(&db, "Leaf"), (1, 1, 1, 0));

    // Leaf re-runs to the same value: a cutoff; Top revalidated.
    db.set::<A>(1, 5)?;
    assert_eq!(db.query::<Top>(1).await?, 0);
    assert_eq!(counters(&db, "Leaf"), (2, 1, 1, 1));
    assert_eq!(counters(&db, "Top"), (1, 2, 2, 0));

    // Leaf changes: Top re-runs (and its new value differs: no cutoff).
    // Leaf was re-executed while revalidating Top, so Top's body reading it
    // is a hit.
    db.set::<A>(1, 25)?;
    assert_eq!(db.query::<Top>(1).await?, 2);
    assert_eq!(counters(&db, "Leaf"), (3, 2, 1, 1));
    assert_eq!(counters(&db, "Top"), (2, 2, 2, 0));

    let stats = db.stats();
    assert_eq!(stats.total_executions(), 5);
    assert_eq!(stats.total_executions() as usize, leaf.get() + top.get());
    assert_eq!(stats.in_flight, 0);
    assert!(stats.dependency_checks > 0);
    let table = stats.to_string();
    assert!(table.contains("Leaf") && table.contains("Top") && table.contains("dependency checks"));
    Ok(())
}

#[tokio::test]
async fn s19_inspect_explains_reexecution() -> Result<()> {
    let (leaf, top) = (Count::new(), Count::new());
    let db = db_with(&leaf, &top)?;
    assert!(db.inspect::<Top>(&1)?.is_none(), "no memo yet");

    let r1 = db.set::<A>(1, 10)?;
    db.query::<Top>(1).await?;
    let info = db.inspect::<Top>(&1)?.expect("memo");
    assert_eq!(info.name, "Top(1)");
    assert_eq!(info.reason, ExecutionReason::New);
    assert_eq!(info.dependencies, ["Leaf(1)", "A(100)"]);
    assert_eq!(
        (info.executed_at, info.changed_at, info.verified_at),
        (r1, r1, r1)
    );
    assert!(!info.is_error);
    assert_eq!(
        db.inspect::<Leaf>(&1)?.expect("memo").dependencies,
        ["A(1)"]
    );

    // A(1) changes: Leaf re-runs because of A(1), Top because of Leaf(1).
    let r2 = db.set::<A>(1, 20)?;
    assert_eq!(db.query::<Top>(1).await?, 2);
    assert_eq!((leaf.get(), top.get()), (2, 2));
    let leaf_info = db.inspect::<Leaf>(&1)?.expect("memo");
    assert_eq!(
        leaf_info.reason,
        ExecutionReason::DependencyChanged(QueryRef::new("A", "1"))
    );
    let info = db.inspect::<Top>(&1)?.expect("memo");
    assert_eq!(
        info.reason,
        ExecutionReason::DependencyChanged(QueryRef::new("Leaf", "1"))
    );
    assert_eq!(
        (info.executed_at, info.changed_at, info.verified_at),
        (r2, r2, r2)
    );
    assert!(info.to_string().contains("Leaf(1)"), "{info}");

    // The absent A(100) appears: Top re-runs because of it, Leaf does not.
    let r3 = db.set::<A>(100, 1)?;
    assert_eq!(db.query::<Top>(1).await?, 3);
    assert_eq!((leaf.get(), top.get()), (2, 3));
    let info = db.inspect::<Top>(&1)?.expect("memo");
    assert_eq!(
        info.reason,
        ExecutionReason::DependencyChanged(QueryRef::new("A", "100"))
    );
    assert_eq!(info.executed_at, r3);
    // Leaf was revalidated, not re-executed: its reason is unchanged.
    let leaf_info = db.inspect::<Leaf>(&1)?.expect("memo");
    assert_eq!((leaf_info.executed_at, leaf_info.verified_at), (r2, r3));

    // Every memo is listed.
    let mut names: Vec<String> = db.memos().into_iter().map(|m| m.name).collect();
    names.sort();
    assert_eq!(names, ["Leaf(1)", "Top(1)"]);
    Ok(())
}

#[tokio::test]
async fn s19_reasons_carry_kind_and_key_apart() -> Result<()> {
    let (leaf, top) = (Count::new(), Count::new());
    let db = db_with(&leaf, &top)?;
    db.set::<A>(4, 10)?;
    db.query::<Top>(4).await?;
    db.set::<A>(4, 20)?;
    db.query::<Top>(4).await?;
    let info = db.inspect::<Leaf>(&4)?.expect("memo");
    let ExecutionReason::DependencyChanged(changed) = &info.reason else {
        panic!("expected DependencyChanged, got {:?}", info.reason);
    };
    assert_eq!((changed.kind.as_str(), changed.key.as_str()), ("A", "4"));
    assert_eq!(info.reason.to_string(), "dependency A(4) changed");
    let top_info = db.inspect::<Top>(&4)?.expect("memo");
    assert_eq!(
        top_info.reason,
        ExecutionReason::DependencyChanged(QueryRef::new("Leaf", "4"))
    );
    assert_eq!((leaf.get(), top.get()), (2, 2));
    Ok(())
}

mod elsewhere {
    use super::*;

    /// Another kind with the short name `Leaf`, in another module.
    pub struct Leaf {
        pub runs: Count,
    }
    #[async_trait]
    impl AsyncQuery for Leaf {
        type Key = u32;
        type Value = i64;
        async fn execute(&self, _cx: &QueryCx, k: u32) -> QueryResult<i64> {
            self.runs.hit();
            Ok(k as i64)
        }
    }
}

#[tokio::test]
async fn s19_typed_stats_accessor() -> Result<()> {
    let (leaf, top, other) = (Count::new(), Count::new(), Count::new());
    let db = Database::builder()
        .input::<A>()
        .query(Leaf { runs: leaf.clone() })
        .query(Top { runs: top.clone() })
        .query(elsewhere::Leaf {
            runs: other.clone(),
        })
        .build()?;
    db.set::<A>(1, 10)?;
    db.query::<Top>(1).await?;
    db.query::<Top>(1).await?;
    db.query::<elsewhere::Leaf>(5).await?;
    db.query::<elsewhere::Leaf>(6).await?;
    let stats = db.stats();
    let top_stats = stats.of::<Top>().expect("registered");
    assert_eq!((top_stats.executions, top_stats.hits), (1, 1));
    assert_eq!(Some(top_stats), stats.query("Top"));
    // Two kinds named `Leaf`: the typed lookup tells them apart.
    assert_eq!(stats.of::<Leaf>().map(|s| s.executions), Some(1));
    assert_eq!(stats.of::<elsewhere::Leaf>().map(|s| s.executions), Some(2));
    assert_eq!((leaf.get(), top.get(), other.get()), (1, 1, 2));
    // A kind the database was not built with.
    struct NotRegistered;
    #[async_trait]
    impl AsyncQuery for NotRegistered {
        type Key = ();
        type Value = ();
        async fn execute(&self, _cx: &QueryCx, _: ()) -> QueryResult<()> {
            Ok(())
        }
    }
    assert!(stats.of::<NotRegistered>().is_none());
    // Per-step views keep the typed lookup.
    let before = db.stats();
    db.set::<A>(1, 30)?;
    db.query::<Top>(1).await?;
    let step = db.stats().since(&before);
    assert_eq!(step.of::<Leaf>().map(|s| s.executions), Some(1));
    assert_eq!(step.of::<Top>().map(|s| s.executions), Some(1));
    assert_eq!(step.of::<elsewhere::Leaf>().map(|s| s.executions), Some(0));
    Ok(())
}

#[tokio::test]
async fn s19_dependency_graph_has_the_edges() -> Result<()> {
    let (leaf, top) = (Count::new(), Count::new());
    let db = db_with(&leaf, &top)?;
    db.set::<A>(1, 1)?;
    db.set::<A>(2, 2)?;
    db.query::<Top>(1).await?;
    db.query::<Top>(2).await?;
    assert_eq!((leaf.get(), top.get()), (2, 2));
    let dot = db.dependency_graph();
    assert!(dot.starts_with("digraph"), "{dot}");
    for edge in [
        r#""Top(1)" -> "Leaf(1)""#,
        r#""Top(1)" -> "A(100)""#,
        r#""Leaf(1)" -> "A(1)""#,
        r#""Top(2)" -> "Leaf(2)""#,
        r#""Leaf(2)" -> "A(2)""#,
    ] {
        assert!(dot.contains(edge), "missing {edge} in\n{dot}");
    }
    assert!(!dot.contains(r#""Top(1)" -> "Leaf(2)""#), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 6, "{dot}");
    Ok(())
}

// ---------------------------------------------------------------- tracing

#[derive(Clone, Debug)]
struct SpanRecord {
    name: String,
    fields: HashMap<String, String>,
    /// Index of the closest recorded ancestor span, if any.
    parent: Option<usize>,
}

#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    /// Live span id → index in `spans`.
    live: Arc<Mutex<HashMap<u64, usize>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);
impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &SpanId, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let live = self.live.lock().unwrap();
        let parent = ctx.span(id).and_then(|s| {
            s.scope()
                .skip(1)
                .find_map(|p| live.get(&p.id().into_u64()).copied())
        });
        drop(live);
        let mut spans = self.spans.lock().unwrap();
        spans.push(SpanRecord {
            name: attrs.metadata().name().to_string(),
            fields,
            parent,
        });
        let index = spans.len() - 1;
        self.live.lock().unwrap().insert(id.into_u64(), index);
    }

    fn on_close(&self, id: SpanId, _ctx: Context<'_, S>) {
        self.live.lock().unwrap().remove(&id.into_u64());
    }
}

#[test]
fn s19_execute_spans_name_query_and_key() -> Result<()> {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    // tracing caches each callsite's interest process-wide; while at most one
    // dispatcher exists it is computed against the *registering* thread's
    // default, so another test thread (no subscriber) reaching picante's span
    // first would cache `never` and this thread would see nothing. A second
    // live dispatcher makes the cache consult every dispatcher, and creating
    // it rebuilds the cache.
    let _anchor = tracing::Dispatch::new(tracing_subscriber::registry());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (leaf, top) = (Count::new(), Count::new());

    rt.block_on(async {
        let db = db_with(&leaf, &top)?;
        db.set::<A>(7, 70)?;
        assert_eq!(db.query::<Top>(7).await?, 7);
        assert_eq!(db.query::<Top>(7).await?, 7); // a hit: no span
        db.set::<A>(7, 80)?;
        assert_eq!(db.query::<Top>(7).await?, 8);
        Ok::<(), Error>(())
    })?;
    assert_eq!((leaf.get(), top.get()), (2, 2));

    let spans = capture.spans.lock().unwrap().clone();
    let executes: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.name == "picante.execute")
        .collect();
    assert_eq!(
        executes.len(),
        leaf.get() + top.get(),
        "one span per execution: {spans:#?}"
    );
    let of = |query: &str| {
        executes
            .iter()
            .filter(|s| s.fields.get("query").map(String::as_str) == Some(query))
            .collect::<Vec<_>>()
    };
    let (tops, leaves) = (of("Top"), of("Leaf"));
    assert_eq!((tops.len(), leaves.len()), (2, 2), "{executes:#?}");
    for s in tops.iter().chain(&leaves) {
        assert_eq!(s.fields.get("key").map(String::as_str), Some("7"), "{s:?}");
    }
    // Leaf's first execution ran inside Top's.
    let first_leaf = leaves[0];
    let parent = first_leaf.parent.map(|i| &spans[i]);
    let mut ancestor = parent;
    while let Some(a) = ancestor {
        if a.name == "picante.execute" {
            break;
        }
        ancestor = a.parent.map(|i| &spans[i]);
    }
    let ancestor = ancestor.expect("Leaf's span nested in Top's");
    assert_eq!(
        ancestor.fields.get("query").map(String::as_str),
        Some("Top")
    );
    Ok(())
}
