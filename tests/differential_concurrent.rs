//! Concurrent differential test (DESIGN §5, issue 3): a random DAG of queries
//! and a random sequence of edits (sets, removes, batches, fork edits on
//! snapshots). After each step several snapshots are taken — new ones, and
//! older ones kept alive from earlier steps, forks and snapshots of forks —
//! and random nodes are queried from spawned tasks concurrently, some of them
//! aborted. Every completed result must equal a from-scratch evaluation of
//! the model at that view's inputs; afterwards nothing is left in flight.
//!
//! Two workloads (see `Values`): small values that repeat (so early cutoff
//! fires, including against memos of older revisions), and fresh values that
//! never repeat (so cutoff never fires and the scheduling side is isolated).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

mod common;

use common::dag::{Dep, In, Live, Outcome};
use picante::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const MAX_INPUTS: u32 = 5;
const MAX_NODES: u32 = 12;
/// Views (snapshots, forks) kept alive across steps.
const MAX_VIEWS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Values {
    /// Values in 0..3, removes: values repeat and early cutoff fires.
    Small,
    /// Every written value is new, no removes, nodes are plain sums: no value
    /// ever repeats, early cutoff never fires.
    Fresh,
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct NodeSpec {
    deps: Vec<Dep>,
    /// `Some(m)`: the combined value `% m` (frequent cutoffs).
    modulus: Option<i64>,
    /// Fails when the combined value is a multiple of 5.
    fallible: bool,
    /// 0: sequential reads, 1: first two reads in `join!`, 2: spawned reads.
    style: u8,
    /// `yield_now` calls in the body (abort points, interleavings).
    yields: u8,
}

type Inputs = Vec<Option<i64>>;

fn combine(j: u32, spec: &NodeSpec, values: &[Outcome]) -> Outcome {
    let mut acc = i64::from(j);
    for v in values {
        acc = acc.wrapping_add(v.clone()?);
    }
    if let Some(m) = spec.modulus {
        acc = acc.rem_euclid(m);
    }
    if spec.fallible && acc % 5 == 0 {
        return Err(format!("node {j} fails at {acc}"));
    }
    Ok(acc)
}

fn evaluate(graph: &[NodeSpec], inputs: &Inputs) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = Vec::with_capacity(graph.len());
    for (j, spec) in graph.iter().enumerate() {
        let values: Vec<Outcome> = spec
            .deps
            .iter()
            .map(|d| match *d {
                Dep::Input(i) => Ok(inputs[i as usize].unwrap_or(-1)),
                Dep::Node(n) => out[n as usize].clone(),
            })
            .collect();
        out.push(combine(j as u32, spec, &values));
    }
    out
}

// ---------------------------------------------------------------------------
// The queries
// ---------------------------------------------------------------------------

type NodeQ = common::dag::NodeQ<NodeSpec>;

impl_spec!(NodeSpec);

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Edit {
    Set(u32, i64),
    Remove(u32),
    /// Applied in order within one batch.
    Batch(Vec<(u32, Option<i64>)>),
    /// An edit on a kept view (index modulo the number of views): forks it
    /// (or a fork goes on in its own history).
    Fork(usize, u32, Option<i64>),
    /// No edit: only new snapshots and queries.
    Nothing,
}

#[derive(Clone, Debug)]
struct Step {
    edit: Edit,
    /// New snapshots of the database this step (0..=2).
    new_snapshots: u8,
    /// Queries: (view choice, node choice, abort after this many yields).
    queries: Vec<(usize, u32, Option<u8>)>,
    /// Then query every node of every kept view, newest view first (so
    /// older revisions compute after newer ones), checking each result.
    sweep: bool,
}

#[derive(Clone, Debug)]
struct Case {
    n_inputs: u32,
    graph: Vec<NodeSpec>,
    steps: Vec<Step>,
}

fn node_strategy(n_inputs: u32, j: u32, values: Values) -> BoxedStrategy<NodeSpec> {
    let dep = (any::<bool>(), 0u32..1000).prop_map(move |(input, x)| {
        if j == 0 || input {
            Dep::Input(x % n_inputs)
        } else {
            Dep::Node(x % j)
        }
    });
    let modulus = match values {
        Values::Small => {
            prop_oneof![Just(None), Just(Some(2i64)), Just(Some(3)), Just(Some(7))].boxed()
        }
        Values::Fresh => Just(None).boxed(),
    };
    (
        prop::collection::vec(dep, 1..=4),
        modulus,
        prop::bool::weighted(0.2),
        0u8..3,
        0u8..3,
    )
        .prop_map(|(deps, modulus, fallible, style, yields)| NodeSpec {
            deps,
            modulus,
            fallible,
            style,
            yields,
        })
        .boxed()
}

fn edit_strategy(n_inputs: u32) -> impl Strategy<Value = Edit> {
    let key = 0..n_inputs;
    let value = 0i64..3;
    prop_oneof![
        3 => (key.clone(), value.clone()).prop_map(|(k, v)| Edit::Set(k, v)),
        1 => key.clone().prop_map(Edit::Remove),
        2 => prop::collection::vec((key.clone(), prop::option::weighted(0.8, value.clone())), 1..=3)
            .prop_map(Edit::Batch),
        2 => (any::<usize>(), key, prop::option::weighted(0.8, value))
            .prop_map(|(view, k, v)| Edit::Fork(view, k, v)),
        1 => Just(Edit::Nothing),
    ]
}

fn step_strategy(n_inputs: u32) -> impl Strategy<Value = Step> {
    (
        edit_strategy(n_inputs),
        0u8..=2,
        prop::bool::weighted(0.15),
        prop::collection::vec(
            (
                any::<usize>(),
                any::<u32>(),
                prop::option::weighted(0.25, 0u8..6),
            ),
            1..=12,
        ),
    )
        .prop_map(|(edit, new_snapshots, sweep, queries)| Step {
            edit,
            new_snapshots,
            queries,
            sweep,
        })
}

fn case_strategy(values: Values) -> impl Strategy<Value = Case> {
    (1..=MAX_INPUTS, 1..=MAX_NODES).prop_flat_map(move |(n_inputs, n_nodes)| {
        let graph: Vec<BoxedStrategy<NodeSpec>> = (0..n_nodes)
            .map(|j| node_strategy(n_inputs, j, values))
            .collect();
        (graph, prop::collection::vec(step_strategy(n_inputs), 1..12)).prop_map(
            move |(graph, steps)| Case {
                n_inputs,
                graph,
                steps,
            },
        )
    })
}

// ---------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------

fn fail(what: &str, e: Error) -> TestCaseError {
    TestCaseError::fail(format!("{what}: picante error: {e}"))
}

/// Rewrites written values so that they never repeat (`Values::Fresh`):
/// removes become sets of a new value.
struct Fresh {
    on: bool,
    next: i64,
}
impl Fresh {
    fn value(&mut self, v: Option<i64>) -> Option<i64> {
        if !self.on {
            return v;
        }
        self.next += 1;
        Some(1_000_000 * self.next + v.unwrap_or(0))
    }
}

/// A view kept alive across steps, with the inputs it must see.
struct Kept {
    snap: Snapshot,
    inputs: Inputs,
}

async fn run_case(case: Case, values: Values) -> std::result::Result<(), TestCaseError> {
    let graph = Arc::new(case.graph.clone());
    let n = graph.len() as u32;
    let runs: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let live = Arc::new(Live::default());
    let db = Database::builder()
        .input::<In>()
        .query(NodeQ {
            graph: graph.clone(),
            runs: runs.clone(),
            live: live.clone(),
            absent: -1,
        })
        .build()
        .map_err(|e| fail("build", e))?;
    let mut fresh = Fresh {
        on: values == Values::Fresh,
        next: 0,
    };
    let mut db_inputs: Inputs = vec![None; case.n_inputs as usize];
    {
        let mut batch = db.batch();
        for (i, slot) in db_inputs.iter_mut().enumerate() {
            let v = fresh.value(Some(i as i64)).unwrap_or(i as i64);
            batch.set::<In>(i as u32, v);
            *slot = Some(v);
        }
        batch.commit().map_err(|e| fail("initial batch", e))?;
    }
    let mut kept: Vec<Kept> = Vec::new();

    for (step_no, step) in case.steps.iter().enumerate() {
        // 1. The edit.
        let before = db.revision();
        match &step.edit {
            Edit::Set(k, v) => {
                let v = fresh.value(Some(*v)).unwrap_or(*v);
                let old = db_inputs[*k as usize];
                let r = db.set::<In>(*k, v).map_err(|e| fail("set", e))?;
                db_inputs[*k as usize] = Some(v);
                prop_assert_eq!(
                    r.as_u64(),
                    before.as_u64() + u64::from(old != Some(v)),
                    "S2"
                );
            }
            Edit::Remove(k) => {
                let k = *k;
                if fresh.on {
                    let v = fresh.value(None).unwrap_or(0);
                    db.set::<In>(k, v).map_err(|e| fail("set", e))?;
                    db_inputs[k as usize] = Some(v);
                } else {
                    let was = db_inputs[k as usize].is_some();
                    let r = db.remove::<In>(&k).map_err(|e| fail("remove", e))?;
                    db_inputs[k as usize] = None;
                    prop_assert_eq!(r.as_u64(), before.as_u64() + u64::from(was), "S2 remove");
                }
            }
            Edit::Batch(ops) => {
                let mut next = db_inputs.clone();
                let mut batch = db.batch();
                for (k, v) in ops {
                    let v = fresh.value(*v);
                    match v {
                        Some(v) => batch.set::<In>(*k, v),
                        None => batch.remove::<In>(k),
                    };
                    next[*k as usize] = v;
                }
                let r = batch.commit().map_err(|e| fail("batch", e))?;
                prop_assert_eq!(
                    r.as_u64(),
                    before.as_u64() + u64::from(next != db_inputs),
                    "S3"
                );
                db_inputs = next;
            }
            Edit::Fork(view, k, v) => {
                if kept.is_empty() {
                    kept.push(Kept {
                        snap: db.snapshot(),
                        inputs: db_inputs.clone(),
                    });
                }
                let len = kept.len();
                let target = &mut kept[*view % len];
                let v = fresh.value(*v);
                match v {
                    Some(v) => target.snap.set::<In>(*k, v),
                    None => target.snap.remove::<In>(k),
                }
                .map_err(|e| fail("fork edit", e))?;
                target.inputs[*k as usize] = v;
                prop_assert_eq!(db.revision(), before, "a fork edit moved the database");
            }
            Edit::Nothing => {}
        }

        // 2. New snapshots: of the database, or of a kept view (a snapshot
        // of a snapshot sees exactly its inputs).
        for s in 0..step.new_snapshots {
            let view = if s == 1 && !kept.is_empty() {
                let last = kept.len() - 1;
                Kept {
                    snap: kept[last].snap.snapshot(),
                    inputs: kept[last].inputs.clone(),
                }
            } else {
                Kept {
                    snap: db.snapshot(),
                    inputs: db_inputs.clone(),
                }
            };
            kept.push(view);
        }
        if kept.len() > MAX_VIEWS {
            kept.drain(..kept.len() - MAX_VIEWS);
        }

        // 3. Concurrent queries from spawned tasks; some aborted. Choice
        // `kept.len()` is the database itself.
        let mut tasks = Vec::new();
        for &(view, node, abort) in &step.queries {
            let choice = view % (kept.len() + 1);
            let node = node % n;
            let (view, inputs): (View, &Inputs) = match kept.get(choice) {
                Some(k) => ((*k.snap).clone(), &k.inputs),
                None => ((*db).clone(), &db_inputs),
            };
            let expected = evaluate(&graph, inputs)[node as usize].clone();
            let revision = view.revision();
            let handle =
                tokio::spawn(
                    async move { view.query::<NodeQ>(node).await.map_err(|e| e.to_string()) },
                );
            tasks.push((handle, abort, node, choice, revision, expected));
        }
        let mut yields = 0u8;
        let mut order: Vec<usize> = (0..tasks.len()).collect();
        order.sort_by_key(|&i| tasks[i].1);
        for i in order {
            if let Some(after) = tasks[i].1 {
                while yields < after {
                    tokio::task::yield_now().await;
                    yields += 1;
                }
                tasks[i].0.abort();
            }
        }
        for (handle, _, node, choice, revision, expected) in tasks {
            let joined = tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .map_err(|_| TestCaseError::fail(format!("step {step_no}: a query hung")))?;
            match joined {
                Ok(outcome) => prop_assert_eq!(
                    outcome,
                    expected,
                    "step {}: node {} in view {} at {:?}",
                    step_no,
                    node,
                    choice,
                    revision
                ),
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "step {step_no}: task panicked: {e}"
                    )));
                }
            }
        }
        tokio::time::timeout(Duration::from_secs(20), live.wait_zero())
            .await
            .map_err(|_| TestCaseError::fail("helper tasks never finished"))?;
        prop_assert_eq!(
            db.stats().in_flight,
            0,
            "step {}: leaked in-flight entries",
            step_no
        );

        if step.sweep {
            sweep(&graph, &kept, &format!("step {step_no}")).await?;
        }
    }
    sweep(&graph, &kept, "final").await?;

    // Finally: every node from a fresh snapshot, then again from another
    // snapshot and the database at the same revision: 0 executions.
    let expected = evaluate(&graph, &db_inputs);
    let snap = db.snapshot();
    for j in 0..n {
        prop_assert_eq!(
            snap.query::<NodeQ>(j).await.map_err(|e| e.to_string()),
            expected[j as usize].clone()
        );
    }
    let before: u32 = runs.iter().map(|r| r.load(Ordering::Relaxed)).sum();
    let again = db.snapshot();
    for j in 0..n {
        prop_assert_eq!(
            again.query::<NodeQ>(j).await.map_err(|e| e.to_string()),
            expected[j as usize].clone()
        );
        prop_assert_eq!(
            db.query::<NodeQ>(j).await.map_err(|e| e.to_string()),
            expected[j as usize].clone()
        );
    }
    let after: u32 = runs.iter().map(|r| r.load(Ordering::Relaxed)).sum();
    prop_assert_eq!(after, before, "work at one revision was not shared");
    Ok(())
}

/// Every node of every kept view, newest view first (older revisions compute
/// after newer ones), each checked against the model.
async fn sweep(
    graph: &[NodeSpec],
    kept: &[Kept],
    when: &str,
) -> std::result::Result<(), TestCaseError> {
    for (age, k) in kept.iter().enumerate().rev() {
        let expected = evaluate(graph, &k.inputs);
        for j in (0..graph.len() as u32).rev() {
            prop_assert_eq!(
                k.snap.query::<NodeQ>(j).await.map_err(|e| e.to_string()),
                expected[j as usize].clone(),
                "{}: sweep of view {} at {:?}, node {}",
                when,
                age,
                k.snap.revision(),
                j
            );
        }
    }
    Ok(())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Failures print the minimal case; no regression file in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn differential_concurrent_small_values(case in case_strategy(Values::Small)) {
        runtime().block_on(run_case(case, Values::Small))?;
    }

    #[test]
    fn differential_concurrent_fresh_values(case in case_strategy(Values::Fresh)) {
        runtime().block_on(run_case(case, Values::Fresh))?;
    }
}
