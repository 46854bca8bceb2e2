//! Sequential differential test (issue 2, item 6): a data-driven query kind
//! over a random DAG of nodes reading random inputs, driven by random
//! sequences of sets, removes, batches and no-op sets. After every step every
//! node's value must equal a from-scratch evaluation of a plain model, and the
//! executions must be exactly what incremental evaluation allows:
//! - no node re-executes when none of its transitive inputs changed (S6);
//! - with every memo verified at the previous revision, a node re-executes
//!   exactly when one of its direct dependencies changed value (S6 + S7).
//!
//! Also checked per step: the revision advances exactly once iff the inputs
//! changed (S2/S3), and a snapshot of the previous revision still answers the
//! previous values from its memos without executing anything.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use picante::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const MAX_INPUTS: u8 = 5;
const MAX_NODES: usize = 14;

struct In;
impl Input for In {
    type Key = u8;
    type Value = i64;
}

#[derive(Clone, Debug)]
struct NodeSpec {
    inputs: Vec<u8>,
    deps: Vec<u16>,
    modulus: Option<i64>,
}

/// The data-driven query: node `k` combines its inputs (absent = -1) and
/// its lower-numbered dependencies, plus its own id, optionally `% m`.
struct Node {
    graph: Arc<Vec<NodeSpec>>,
    runs: Arc<Vec<AtomicUsize>>,
}

#[async_trait]
impl AsyncQuery for Node {
    type Key = u16;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u16) -> QueryResult<i64> {
        self.runs[k as usize].fetch_add(1, Ordering::SeqCst);
        let spec = &self.graph[k as usize];
        let mut sum = i64::from(k);
        for i in &spec.inputs {
            sum = sum.wrapping_add(cx.input_opt::<In>(i)?.unwrap_or(-1));
        }
        for &d in &spec.deps {
            sum = sum.wrapping_add(cx.query::<Node>(d).await?);
        }
        Ok(match spec.modulus {
            Some(m) => sum.rem_euclid(m),
            None => sum,
        })
    }
}

/// The from-scratch evaluation.
fn eval_all(graph: &[NodeSpec], inputs: &HashMap<u8, i64>) -> Vec<i64> {
    let mut values: Vec<i64> = Vec::with_capacity(graph.len());
    for (k, spec) in graph.iter().enumerate() {
        let mut sum = k as i64;
        for i in &spec.inputs {
            sum = sum.wrapping_add(inputs.get(i).copied().unwrap_or(-1));
        }
        for &d in &spec.deps {
            sum = sum.wrapping_add(values[d as usize]); // deps are lower-numbered
        }
        values.push(match spec.modulus {
            Some(m) => sum.rem_euclid(m),
            None => sum,
        });
    }
    values
}

/// Every input each node reads, directly or through its dependencies.
fn transitive_inputs(graph: &[NodeSpec]) -> Vec<BTreeSet<u8>> {
    let mut out: Vec<BTreeSet<u8>> = Vec::with_capacity(graph.len());
    for spec in graph {
        let mut set: BTreeSet<u8> = spec.inputs.iter().copied().collect();
        for &d in &spec.deps {
            set.extend(out[d as usize].iter().copied());
        }
        out.push(set);
    }
    out
}

#[derive(Clone, Debug)]
enum Op {
    Set(u8, i64),
    Remove(u8),
    /// Applied in order within one batch.
    Batch(Vec<(u8, Option<i64>)>),
    /// Sets the value it already has (or removes an absent key).
    NoopSet(u8),
}

#[derive(Clone, Debug)]
struct Case {
    n_inputs: u8,
    graph: Vec<NodeSpec>,
    initial: Vec<Option<i64>>,
    /// Each step: an operation and whether to query nodes top-down.
    steps: Vec<(Op, bool)>,
}

fn node_strategy(n_inputs: u8, index: usize) -> BoxedStrategy<NodeSpec> {
    let deps = if index == 0 {
        Just(Vec::new()).boxed()
    } else {
        prop::collection::vec(0..index as u16, 0..=3).boxed()
    };
    (
        prop::collection::vec(0..n_inputs, 0..=3),
        deps,
        prop_oneof![Just(None), Just(Some(2)), Just(Some(3)), Just(Some(5))],
    )
        .prop_map(|(inputs, deps, modulus)| NodeSpec {
            inputs,
            deps,
            modulus,
        })
        .boxed()
}

fn value() -> impl Strategy<Value = i64> {
    0i64..4
}

fn op_strategy(n_inputs: u8) -> impl Strategy<Value = Op> {
    let key = 0..n_inputs;
    prop_oneof![
        3 => (key.clone(), value()).prop_map(|(k, v)| Op::Set(k, v)),
        1 => key.clone().prop_map(Op::Remove),
        2 => prop::collection::vec((key.clone(), prop::option::weighted(0.8, value())), 1..=4)
            .prop_map(Op::Batch),
        1 => key.prop_map(Op::NoopSet),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (1..=MAX_INPUTS, 1..=MAX_NODES).prop_flat_map(|(n_inputs, n_nodes)| {
        let graph: Vec<BoxedStrategy<NodeSpec>> =
            (0..n_nodes).map(|i| node_strategy(n_inputs, i)).collect();
        (
            graph,
            prop::collection::vec(prop::option::weighted(0.8, value()), n_inputs as usize),
            prop::collection::vec((op_strategy(n_inputs), any::<bool>()), 1..24),
        )
            .prop_map(move |(graph, initial, steps)| Case {
                n_inputs,
                graph,
                initial,
                steps,
            })
    })
}

fn apply_model(model: &mut HashMap<u8, i64>, op: &Op) {
    let mut write = |k: u8, v: Option<i64>| match v {
        Some(v) => {
            model.insert(k, v);
        }
        None => {
            model.remove(&k);
        }
    };
    match op {
        Op::Set(k, v) => write(*k, Some(*v)),
        Op::Remove(k) => write(*k, None),
        Op::Batch(ops) => ops.iter().for_each(|(k, v)| write(*k, *v)),
        Op::NoopSet(_) => {}
    }
}

fn apply_db(db: &Database, model: &HashMap<u8, i64>, op: &Op) -> Result<Revision> {
    match op {
        Op::Set(k, v) => db.set::<In>(*k, *v),
        Op::Remove(k) => db.remove::<In>(k),
        Op::Batch(ops) => {
            let mut batch = db.batch();
            for (k, v) in ops {
                match v {
                    Some(v) => batch.set::<In>(*k, *v),
                    None => batch.remove::<In>(k),
                };
            }
            batch.commit()
        }
        Op::NoopSet(k) => match model.get(k) {
            Some(v) => db.set::<In>(*k, *v),
            None => db.remove::<In>(k),
        },
    }
}

fn counts(runs: &[AtomicUsize]) -> Vec<usize> {
    runs.iter().map(|r| r.load(Ordering::SeqCst)).collect()
}

async fn query_all(view: &View, n: usize, top_down: bool) -> Result<Vec<i64>> {
    let mut values = vec![0; n];
    let order: Vec<usize> = if top_down {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    };
    for k in order {
        values[k] = view.query::<Node>(k as u16).await?;
    }
    Ok(values)
}

fn fail(e: Error) -> TestCaseError {
    TestCaseError::fail(format!("picante error: {e}"))
}

async fn run_case(case: Case) -> std::result::Result<(), TestCaseError> {
    let graph = Arc::new(case.graph.clone());
    let n = graph.len();
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let db = Database::builder()
        .input::<In>()
        .query(Node {
            graph: graph.clone(),
            runs: runs.clone(),
        })
        .build()
        .map_err(fail)?;
    let transitive = transitive_inputs(&graph);

    // Initial state, in one batch.
    let mut model: HashMap<u8, i64> = HashMap::new();
    let mut batch = db.batch();
    for (k, v) in case.initial.iter().enumerate() {
        if let Some(v) = v {
            batch.set::<In>(k as u8, *v);
            model.insert(k as u8, *v);
        }
    }
    batch.commit().map_err(fail)?;
    let mut expected = eval_all(&graph, &model);
    let values = query_all(&db, n, true).await.map_err(fail)?;
    prop_assert_eq!(&values, &expected, "initial values");
    prop_assert_eq!(
        counts(&runs),
        vec![1; n],
        "each node executes once initially"
    );

    for (step, (op, top_down)) in case.steps.iter().enumerate() {
        let before = model.clone();
        let old_values = expected.clone();
        let old_revision = db.revision();
        let snap = db.snapshot();
        let runs_before = counts(&runs);

        let revision = apply_db(&db, &model, op).map_err(fail)?;
        apply_model(&mut model, op);
        expected = eval_all(&graph, &model);
        let changed_inputs: BTreeSet<u8> = (0..case.n_inputs)
            .filter(|k| before.get(k) != model.get(k))
            .collect();

        // S2/S3: exactly one revision iff something changed.
        let want_revision = if changed_inputs.is_empty() {
            old_revision.as_u64()
        } else {
            old_revision.as_u64() + 1
        };
        prop_assert_eq!(
            revision.as_u64(),
            want_revision,
            "step {} {:?}: revision",
            step,
            op
        );
        prop_assert_eq!(db.revision(), revision);

        let values = query_all(&db, n, *top_down).await.map_err(fail)?;
        prop_assert_eq!(&values, &expected, "step {} {:?}: values", step, op);

        let runs_after = counts(&runs);
        for k in 0..n {
            let executed = runs_after[k] - runs_before[k];
            // The required property: untouched nodes never re-execute.
            if transitive[k].is_disjoint(&changed_inputs) {
                prop_assert_eq!(
                    executed,
                    0,
                    "step {} {:?}: node {} re-ran with no input change",
                    step,
                    op,
                    k
                );
            }
            // The exact one, since every memo was verified at the previous
            // revision: re-run once iff a direct dependency changed value.
            let spec = &graph[k];
            let direct_changed = spec.inputs.iter().any(|i| changed_inputs.contains(i))
                || spec
                    .deps
                    .iter()
                    .any(|&d| old_values[d as usize] != expected[d as usize]);
            prop_assert_eq!(
                executed,
                usize::from(direct_changed),
                "step {} {:?}: node {} executions (direct change: {})",
                step,
                op,
                k,
                direct_changed
            );
        }

        // The snapshot of the previous revision answers from its memos.
        let snap_values = query_all(&snap, n, !*top_down).await.map_err(fail)?;
        prop_assert_eq!(&snap_values, &old_values, "step {}: snapshot values", step);
        prop_assert_eq!(
            counts(&runs),
            runs_after,
            "step {}: snapshot executed something",
            step
        );
    }
    prop_assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn differential_random_dags_match_from_scratch(case in case_strategy()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(run_case(case))?;
    }
}

/// A hand-written case of the same machinery, so a regression shows up with a
/// readable failure before proptest's shrinking output.
#[test]
fn differential_fixed_diamond_with_cutoff() {
    let graph = vec![
        NodeSpec {
            inputs: vec![0],
            deps: vec![],
            modulus: Some(2),
        },
        NodeSpec {
            inputs: vec![1],
            deps: vec![0],
            modulus: None,
        },
        NodeSpec {
            inputs: vec![],
            deps: vec![0],
            modulus: None,
        },
        NodeSpec {
            inputs: vec![2],
            deps: vec![1, 2],
            modulus: Some(3),
        },
    ];
    let case = Case {
        n_inputs: 3,
        graph,
        initial: vec![Some(1), Some(0), None],
        steps: vec![
            (Op::Set(0, 3), true),  // node 0 cut off (odd stays odd)
            (Op::Set(1, 1), false), // node 1 changes, node 3 re-runs
            (Op::NoopSet(1), true),
            (Op::Batch(vec![(2, Some(1)), (2, None)]), true), // no change
            (Op::Remove(0), false),
            (
                Op::Batch(vec![(0, Some(2)), (1, Some(3)), (2, Some(0))]),
                true,
            ),
        ],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(run_case(case)).unwrap();
}
