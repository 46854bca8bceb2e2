//! Differential test with durability levels and snapshots together (issue 8):
//! a random DAG of queries over inputs of three durabilities, with
//! data-dependent reads (a node reads one set of dependencies or another
//! depending on an input's parity, so durabilities change across
//! re-executions, the case that broke S8), driven by random sequences of
//! sets, removes, batches, snapshots taken and kept, snapshots queried at
//! random later points, forks (sets on snapshots), forks of forks, and
//! dropped views.
//!
//! Checked after every query: the value equals a from-scratch evaluation at
//! that view's inputs. Checked for every query of the database: no node
//! executes unless one of the inputs it (transitively) reads changed since
//! the memo the database holds for it was verified — where that memo may
//! also have come back from a snapshot (S16: work flowing back never costs
//! work). Inputs are compared by version (a set of a new value), so a value
//! changed and changed back counts as a change, as in salsa.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use picante::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const N_INPUTS: u8 = 6;
const MAX_NODES: usize = 10;
const MAX_VIEWS: usize = 4;

macro_rules! input_kind {
    ($name:ident, $d:expr) => {
        struct $name;
        impl Input for $name {
            type Key = u8;
            type Value = i64;
            const DURABILITY: Durability = $d;
        }
    };
}
input_kind!(InLow, Durability::Low);
input_kind!(InMedium, Durability::Medium);
input_kind!(InHigh, Durability::High);

/// Input `i` has durability `i % 3` (Low, Medium, High).
fn read_input(cx: &QueryCx, i: u8) -> Result<i64> {
    let v = match i % 3 {
        0 => cx.input_opt::<InLow>(&i)?,
        1 => cx.input_opt::<InMedium>(&i)?,
        _ => cx.input_opt::<InHigh>(&i)?,
    };
    Ok(v.unwrap_or(-1))
}

fn write_input(batch: &mut Batch<'_>, i: u8, v: Option<i64>) {
    match (i % 3, v) {
        (0, Some(v)) => batch.set::<InLow>(i, v),
        (0, None) => batch.remove::<InLow>(&i),
        (1, Some(v)) => batch.set::<InMedium>(i, v),
        (1, None) => batch.remove::<InMedium>(&i),
        (_, Some(v)) => batch.set::<InHigh>(i, v),
        (_, None) => batch.remove::<InHigh>(&i),
    };
}

#[derive(Clone, Debug)]
enum Read {
    Input(u8),
    Node(u16),
}

#[derive(Clone, Debug)]
struct NodeSpec {
    /// Reads `then` if this input is even (absent counts as odd), else `other`.
    select: Option<u8>,
    then: Vec<Read>,
    other: Vec<Read>,
    modulus: Option<i64>,
}

impl NodeSpec {
    /// What the node reads after its selector input (if any) read `selector`.
    fn reads(&self, selector: Option<i64>) -> &[Read] {
        match selector {
            Some(v) if !(v >= 0 && v % 2 == 0) => &self.other,
            _ => &self.then,
        }
    }
}

type Inputs = BTreeMap<u8, i64>;

/// Input versions: input → the id of the write that gave it its value.
type Versions = BTreeMap<u8, u64>;

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
        let selector = match spec.select {
            Some(s) => Some(read_input(cx, s)?),
            None => None,
        };
        sum = sum.wrapping_add(selector.unwrap_or(0));
        let reads = spec.reads(selector);
        for r in reads {
            let v = match r {
                Read::Input(i) => read_input(cx, *i)?,
                Read::Node(d) => cx.query::<Node>(*d).await?,
            };
            sum = sum.wrapping_add(v);
        }
        Ok(match spec.modulus {
            Some(m) => sum.rem_euclid(m),
            None => sum,
        })
    }
}

/// From-scratch evaluation of node `k`, adding every input it reads
/// (transitively) to `read`.
fn eval(graph: &[NodeSpec], inputs: &Inputs, k: u16, read: &mut Vec<u8>) -> i64 {
    let spec = &graph[k as usize];
    let get = |i: u8, read: &mut Vec<u8>| {
        read.push(i);
        inputs.get(&i).copied().unwrap_or(-1)
    };
    let mut sum = i64::from(k);
    let selector = spec.select.map(|s| get(s, read));
    sum = sum.wrapping_add(selector.unwrap_or(0));
    let reads = spec.reads(selector);
    for r in reads {
        let v = match r {
            Read::Input(i) => get(*i, read),
            Read::Node(d) => eval(graph, inputs, *d, read),
        };
        sum = sum.wrapping_add(v);
    }
    match spec.modulus {
        Some(m) => sum.rem_euclid(m),
        None => sum,
    }
}

/// Value of `k` and the versions of the inputs it reads.
fn eval_with_versions(
    graph: &[NodeSpec],
    inputs: &Inputs,
    versions: &Versions,
    k: u16,
) -> (i64, Versions) {
    let mut read = Vec::new();
    let v = eval(graph, inputs, k, &mut read);
    let vs = read
        .into_iter()
        .map(|i| (i, versions.get(&i).copied().unwrap_or(0)))
        .collect();
    (v, vs)
}

/// Every node `k` reads when evaluated (itself included).
fn reached(graph: &[NodeSpec], inputs: &Inputs, k: u16, out: &mut Vec<u16>) {
    if out.contains(&k) {
        return;
    }
    out.push(k);
    let spec = &graph[k as usize];
    let selector = spec.select.map(|s| inputs.get(&s).copied().unwrap_or(-1));
    let reads = spec.reads(selector);
    for r in reads {
        if let Read::Node(d) = r {
            reached(graph, inputs, *d, out);
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Batch of writes on the database (one write: a plain set/remove).
    Write(Vec<(u8, Option<i64>)>),
    /// Query node (index into the graph) on the database.
    QueryDb(u16),
    /// Take a snapshot of view `v` (0: the database, else a kept view).
    Snapshot(usize),
    /// Query a kept view (index mod the number kept).
    QueryView(usize, u16),
    /// Set an input on a kept view (forks it).
    Fork(usize, u8, Option<i64>),
    /// Drop a kept view.
    Drop(usize),
    /// Collect garbage on the database: what the last n revisions did not use.
    Collect(u64),
}

/// Memory limits of one case (issue 11): results must not depend on them.
#[derive(Clone, Copy, Debug, Default)]
struct Limits {
    /// Capacity of the node kind.
    capacity: Option<usize>,
    /// Automatic collection of what the last n revisions did not use.
    collect: Option<u64>,
}

impl Limits {
    /// Whether memos may be dropped, so that the needless-execution check
    /// (which assumes the database keeps what it computed) does not apply.
    fn drops_memos(&self, case: &Case) -> bool {
        self.capacity.is_some()
            || self.collect.is_some()
            || case.steps.iter().any(|op| matches!(op, Op::Collect(_)))
    }
}

#[derive(Clone, Debug)]
struct Case {
    graph: Vec<NodeSpec>,
    steps: Vec<Op>,
    limits: Limits,
}

fn read_strategy(index: usize) -> BoxedStrategy<Read> {
    if index == 0 {
        (0..N_INPUTS).prop_map(Read::Input).boxed()
    } else {
        prop_oneof![
            (0..N_INPUTS).prop_map(Read::Input),
            (0..index as u16).prop_map(Read::Node),
        ]
        .boxed()
    }
}

fn node_strategy(index: usize) -> BoxedStrategy<NodeSpec> {
    (
        prop::option::weighted(0.4, 0..N_INPUTS),
        prop::collection::vec(read_strategy(index), 0..=3),
        prop::collection::vec(read_strategy(index), 0..=3),
        prop_oneof![Just(None), Just(Some(2)), Just(Some(3))],
    )
        .prop_map(|(select, then, other, modulus)| NodeSpec {
            select,
            then,
            other,
            modulus,
        })
        .boxed()
}

fn value() -> impl Strategy<Value = Option<i64>> {
    prop::option::weighted(0.85, 0i64..4)
}

fn op_strategy(n_nodes: usize, collect_weight: u32) -> impl Strategy<Value = Op> {
    let node = 0..n_nodes as u16;
    prop_oneof![
        4 => prop::collection::vec((0..N_INPUTS, value()), 1..=3).prop_map(Op::Write),
        4 => node.clone().prop_map(Op::QueryDb),
        2 => (0..=MAX_VIEWS).prop_map(Op::Snapshot),
        4 => (any::<usize>(), node).prop_map(|(v, k)| Op::QueryView(v, k)),
        1 => (any::<usize>(), 0..N_INPUTS, value()).prop_map(|(v, i, x)| Op::Fork(v, i, x)),
        1 => any::<usize>().prop_map(Op::Drop),
        collect_weight => (0u64..4).prop_map(Op::Collect),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (1..=MAX_NODES).prop_flat_map(|n| {
        let graph: Vec<_> = (0..n).map(node_strategy).collect();
        (graph, prop::collection::vec(op_strategy(n, 0), 1..40)).prop_map(|(graph, steps)| Case {
            graph,
            steps,
            limits: Limits::default(),
        })
    })
}

/// Cases with a capacity of 1–3 memos for the node kind, and sometimes
/// automatic and explicit garbage collection.
fn limited_case_strategy() -> impl Strategy<Value = Case> {
    (1..=MAX_NODES).prop_flat_map(|n| {
        let graph: Vec<_> = (0..n).map(node_strategy).collect();
        let limits = (
            prop::option::weighted(0.8, 1usize..=3),
            prop::option::weighted(0.4, 0u64..4),
        )
            .prop_map(|(capacity, collect)| Limits { capacity, collect });
        (
            graph,
            prop::collection::vec(op_strategy(n, 2), 1..40),
            limits,
        )
            .prop_map(|(graph, steps, limits)| Case {
                graph,
                steps,
                limits,
            })
    })
}

struct Kept {
    snap: Snapshot,
    inputs: Inputs,
    versions: Versions,
    /// Still in the database's history (not forked, nor taken from a fork).
    main: bool,
}

fn fail(e: Error) -> TestCaseError {
    TestCaseError::fail(format!("picante error: {e}"))
}

fn counts(runs: &[AtomicUsize]) -> Vec<usize> {
    runs.iter().map(|r| r.load(Ordering::SeqCst)).collect()
}

async fn run_case(case: Case) -> std::result::Result<(), TestCaseError> {
    let graph = Arc::new(case.graph.clone());
    let n = graph.len();
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let mut builder = Database::builder()
        .input::<InLow>()
        .input::<InMedium>()
        .input::<InHigh>()
        .query(Node {
            graph: graph.clone(),
            runs: runs.clone(),
        });
    if let Some(c) = case.limits.capacity {
        builder = builder.capacity::<Node>(c);
    }
    if let Some(n) = case.limits.collect {
        builder = builder.collect_garbage(Collect::unused_for(n).every(1));
    }
    let db = builder.build().map_err(fail)?;
    let check_needless = !case.limits.drops_memos(&case);
    let mut write_id = 0u64;
    let mut inputs = Inputs::new();
    let mut versions = Versions::new();
    // The input versions of the memo the database holds for each node, and
    // the revision it is known verified at.
    let mut db_memo: Vec<Option<(Versions, Revision)>> = vec![None; n];
    let mut kept: Vec<Kept> = Vec::new();

    for (step, op) in case.steps.iter().enumerate() {
        match op {
            Op::Write(writes) => {
                let mut batch = db.batch();
                for (i, v) in writes {
                    write_input(&mut batch, *i, *v);
                    if inputs.get(i).copied() != *v {
                        write_id += 1;
                        versions.insert(*i, write_id);
                        match v {
                            Some(v) => inputs.insert(*i, *v),
                            None => inputs.remove(i),
                        };
                    }
                }
                batch.commit().map_err(fail)?;
            }
            Op::QueryDb(k) => {
                let before = counts(&runs);
                let got = db.query::<Node>(*k).await.map_err(fail)?;
                let (want, _) = eval_with_versions(&graph, &inputs, &versions, *k);
                prop_assert_eq!(got, want, "step {}: db node {}", step, k);
                let after = counts(&runs);
                let r = db.revision();
                let mut nodes = Vec::new();
                reached(&graph, &inputs, *k, &mut nodes);
                for d in nodes {
                    let (_, vs) = eval_with_versions(&graph, &inputs, &versions, d);
                    let ran = after[d as usize] - before[d as usize];
                    if !check_needless {
                        continue;
                    }
                    prop_assert!(ran <= 1, "step {}: node {} ran {} times", step, d, ran);
                    if ran == 1
                        && let Some((held, _)) = &db_memo[d as usize]
                    {
                        prop_assert!(
                            held != &vs,
                            "step {}: node {} re-ran in the database though no input it reads changed",
                            step,
                            d
                        );
                    }
                    db_memo[d as usize] = Some((vs, r));
                }
            }
            Op::Snapshot(v) => {
                if kept.len() >= MAX_VIEWS {
                    kept.remove(0);
                }
                let k = if *v == 0 || kept.is_empty() {
                    Kept {
                        snap: db.snapshot(),
                        inputs: inputs.clone(),
                        versions: versions.clone(),
                        main: true,
                    }
                } else {
                    let from = &kept[(*v - 1) % kept.len()];
                    Kept {
                        snap: from.snap.snapshot(),
                        inputs: from.inputs.clone(),
                        versions: from.versions.clone(),
                        main: from.main,
                    }
                };
                kept.push(k);
            }
            Op::QueryView(v, k) => {
                if kept.is_empty() {
                    continue;
                }
                let view = &kept[v % kept.len()];
                let got = view.snap.query::<Node>(*k).await.map_err(fail)?;
                let (want, _) = eval_with_versions(&graph, &view.inputs, &view.versions, *k);
                prop_assert_eq!(got, want, "step {}: view node {}", step, k);
                // What an unforked snapshot executed flows back to the
                // database if newer than what the database holds.
                if view.main {
                    let r = view.snap.revision();
                    let mut nodes = Vec::new();
                    reached(&graph, &view.inputs, *k, &mut nodes);
                    for d in nodes {
                        let newer = db_memo[d as usize].as_ref().is_none_or(|(_, at)| *at < r);
                        if newer {
                            let (_, vs) =
                                eval_with_versions(&graph, &view.inputs, &view.versions, d);
                            db_memo[d as usize] = Some((vs, r));
                        }
                    }
                }
            }
            Op::Fork(v, i, x) => {
                if kept.is_empty() {
                    continue;
                }
                let len = kept.len();
                let view = &mut kept[v % len];
                let mut batch = view.snap.batch();
                write_input(&mut batch, *i, *x);
                batch.commit().map_err(fail)?;
                if view.inputs.get(i).copied() != *x {
                    view.main = false;
                    write_id += 1;
                    view.versions.insert(*i, write_id);
                    match x {
                        Some(x) => view.inputs.insert(*i, *x),
                        None => view.inputs.remove(i),
                    };
                }
            }
            Op::Drop(v) => {
                if !kept.is_empty() {
                    let len = kept.len();
                    kept.remove(v % len);
                }
            }
            Op::Collect(n) => {
                db.collect(Collect::unused_for(*n));
                if let Some(c) = case.limits.capacity {
                    let memos = db.memory().memos();
                    prop_assert!(
                        memos <= c,
                        "step {}: {} memos over capacity {}",
                        step,
                        memos,
                        c
                    );
                }
            }
        }
    }
    // Every view still answers exactly.
    for (j, view) in kept.iter().enumerate() {
        for k in 0..n as u16 {
            let got = view.snap.query::<Node>(k).await.map_err(fail)?;
            let (want, _) = eval_with_versions(&graph, &view.inputs, &view.versions, k);
            prop_assert_eq!(got, want, "final: view {} node {}", j, k);
        }
    }
    for k in 0..n as u16 {
        let got = db.query::<Node>(k).await.map_err(fail)?;
        let (want, _) = eval_with_versions(&graph, &inputs, &versions, k);
        prop_assert_eq!(got, want, "final: db node {}", k);
    }
    prop_assert_eq!(db.stats().in_flight, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn differential_durability_and_snapshots_match_from_scratch(case in case_strategy()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(run_case(case))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// The same model with capacities of 1–3 memos and garbage collection
    /// (issue 11): eviction and collection never change a result.
    #[test]
    fn differential_with_eviction_and_collection_matches_from_scratch(case in limited_case_strategy()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(run_case(case))?;
    }
}
