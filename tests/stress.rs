//! Stress (DESIGN §5, issue 3): 2 000 tokio tasks over random keys of a
//! random DAG of queries, with random aborts and concurrent input changes.
//! Every completed result must equal a from-scratch evaluation of the model
//! at the revision it was read at; at the end nothing is left in flight.
//!
//! Deterministic in what it asserts (a fixed seed for the graph and the
//! choices; the interleaving varies, but every interleaving must pass).
//! Set `PICANTE_STRESS_SEED` to try another seed.
//!
//! Two workloads over the same machinery:
//! - `Values::Small`: small values, removes, equal sets, `% n` nodes: early
//!   cutoff fires constantly, including against memos of older revisions.
//! - `Values::Fresh`: every value ever set is new and nodes are plain sums, so
//!   no value ever repeats and early cutoff never fires. This isolates the
//!   scheduling side (sharing, aborts, forks, leaks) from cutoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::dag::{Dep, In, Live, Outcome};
use picante::*;

const INPUTS: u32 = 12;
const NODES: u32 = 150;
const TASKS: usize = 2_000;
const WAVE: usize = 50;
/// Each test runs this many seeds (a new graph and new choices each time).
const ROUNDS: u64 = 8;

// ---------------------------------------------------------------------------
// Random numbers (xorshift64*), no dependency needed.
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---------------------------------------------------------------------------
// The model: a random DAG evaluated from scratch
// ---------------------------------------------------------------------------

/// See the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Values {
    Small,
    Fresh,
}

#[derive(Clone, Debug)]
struct NodeSpec {
    deps: Vec<Dep>,
    /// 0: `% 1000`, 1: `% 3` (frequent early cutoff), 2: `/ 10 % 50`,
    /// 3: the plain sum (the only op of `Values::Fresh`).
    op: u8,
    /// Fails when the combined value is a multiple of 7.
    fallible: bool,
    /// 0: sequential reads, 1: first two reads in `join!`, 2: reads from
    /// spawned tasks.
    style: u8,
    /// Yields inside the body, to create interleavings and abort points.
    yields: u8,
}

#[derive(Debug)]
struct Graph {
    nodes: Vec<NodeSpec>,
}

fn random_graph(rng: &mut Rng, values: Values) -> Graph {
    let nodes = (0..NODES)
        .map(|j| {
            let n = 1 + rng.below(5) as usize;
            let deps = (0..n)
                .map(|_| {
                    if j == 0 || rng.chance(40) {
                        Dep::Input(rng.below(INPUTS as u64) as u32)
                    } else {
                        Dep::Node(rng.below(j as u64) as u32)
                    }
                })
                .collect();
            NodeSpec {
                deps,
                op: match values {
                    Values::Small => rng.below(3) as u8,
                    Values::Fresh => 3,
                },
                fallible: rng.chance(15),
                style: rng.below(3) as u8,
                yields: rng.below(3) as u8,
            }
        })
        .collect();
    Graph { nodes }
}

type Inputs = Vec<Option<i64>>;

fn absent() -> i64 {
    -1
}

fn combine(j: u32, spec: &NodeSpec, values: &[Outcome]) -> Outcome {
    let mut acc = j as i64;
    for v in values {
        acc = acc.wrapping_add(v.clone()?);
    }
    let acc = match spec.op {
        0 => acc.rem_euclid(1000),
        1 => acc.rem_euclid(3),
        2 => (acc / 10).rem_euclid(50),
        _ => acc,
    };
    if spec.fallible && acc % 7 == 0 {
        return Err(format!("node {j} fails at {acc}"));
    }
    Ok(acc)
}

/// From-scratch evaluation of every node.
fn evaluate(graph: &Graph, inputs: &Inputs) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = Vec::with_capacity(graph.nodes.len());
    for (j, spec) in graph.nodes.iter().enumerate() {
        let values: Vec<Outcome> = spec
            .deps
            .iter()
            .map(|d| match *d {
                Dep::Input(i) => Ok(inputs[i as usize].unwrap_or_else(absent)),
                Dep::Node(n) => out[n as usize].clone(),
            })
            .collect();
        out.push(combine(j as u32, spec, &values));
    }
    out
}

// ---------------------------------------------------------------------------
// The same graph as picante queries
// ---------------------------------------------------------------------------

type NodeQ = common::dag::NodeQ<NodeSpec>;

impl_spec!(NodeSpec);

/// An input a forked snapshot set (`Some`) or removed (`None`).
type ForkEdit = (u32, Option<i64>);

/// A result a task saw: the revision of its snapshot, an optional fork edit
/// applied on top of it, the node, and the outcome.
struct Seen {
    revision: u64,
    fork_edit: Option<ForkEdit>,
    node: u32,
    outcome: Outcome,
}

fn seed() -> u64 {
    std::env::var("PICANTE_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2024)
}

fn stress(values: Values) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for round in 0..ROUNDS {
            tokio::time::timeout(
                Duration::from_secs(120),
                run(seed().wrapping_add(round), values),
            )
            .await
            .expect("stress test hung: deadlock or a lost wake-up");
        }
    });
}

#[test]
fn stress_2000_tasks_random_dag_aborts_and_writes() {
    stress(Values::Small);
}

#[test]
fn stress_2000_tasks_fresh_values_aborts_and_writes() {
    stress(Values::Fresh);
}

async fn run(seed: u64, values: Values) {
    let mut rng = Rng::new(seed);
    let graph = Arc::new(random_graph(&mut rng, values));
    let runs: Arc<Vec<AtomicU32>> = Arc::new((0..NODES).map(|_| AtomicU32::new(0)).collect());
    let live = Arc::new(Live::default());
    let db = Database::builder()
        .input::<In>()
        .query(NodeQ {
            graph: Arc::new(graph.nodes.clone()),
            runs: runs.clone(),
            live: live.clone(),
            absent: absent(),
        })
        .build()
        .expect("build");

    // Initial inputs; the history maps each revision to its inputs.
    let fresh = values == Values::Fresh;
    // A new value: small (values repeat) or a random 62-bit one (never repeats).
    let new_value = move |rng: &mut Rng, offset: i64| {
        if fresh {
            (rng.next() >> 2) as i64
        } else {
            offset + rng.below(100) as i64
        }
    };
    let mut inputs: Inputs = (0..INPUTS).map(|_| Some(new_value(&mut rng, 0))).collect();
    {
        let mut batch = db.batch();
        for (i, v) in inputs.iter().enumerate() {
            batch.set::<In>(i as u32, v.unwrap());
        }
        batch.commit().unwrap();
    }
    let history: Arc<Mutex<HashMap<u64, Inputs>>> = Arc::new(Mutex::new(HashMap::from([(
        db.revision().as_u64(),
        inputs.clone(),
    )])));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));

    // The writer: sets, removes, equal sets (no-ops) and batches, recording
    // the inputs at every revision it creates.
    let writer = {
        let (db, history, stop) = (db.clone(), history.clone(), stop.clone());
        let mut rng = Rng::new(seed ^ 0xA11CE);
        tokio::spawn(async move {
            let mut writes = 0u32;
            while !stop.load(Ordering::SeqCst) && writes < 5_000 {
                let before = db.revision();
                let mut next = inputs.clone();
                let mut batch = db.batch();
                let ops = if rng.chance(20) { 2 + rng.below(3) } else { 1 };
                for _ in 0..ops {
                    let i = rng.below(INPUTS as u64) as u32;
                    // Fresh values: no removes (absence would repeat).
                    match if fresh {
                        1 + rng.below(9)
                    } else {
                        rng.below(10)
                    } {
                        0 => {
                            batch.remove::<In>(&i);
                            next[i as usize] = None;
                        }
                        1 => {
                            // An equal value: a no-op unless it was absent.
                            let v = inputs[i as usize].unwrap_or(7);
                            batch.set::<In>(i, v);
                            next[i as usize] = Some(v);
                        }
                        _ => {
                            let v = new_value(&mut rng, 0);
                            batch.set::<In>(i, v);
                            next[i as usize] = Some(v);
                        }
                    }
                }
                let r = batch.commit().expect("commit");
                if next == inputs {
                    assert_eq!(
                        r, before,
                        "a batch that changes nothing advanced the revision"
                    );
                } else {
                    assert_eq!(
                        r.as_u64(),
                        before.as_u64() + 1,
                        "a change advances exactly once"
                    );
                    history.lock().unwrap().insert(r.as_u64(), next.clone());
                    inputs = next;
                }
                writes += 1;
                // Overlap only: give readers time at each revision.
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            writes
        })
    };

    // The readers, in waves; some are aborted after a random delay.
    let mut handles = Vec::with_capacity(TASKS);
    let mut to_abort = Vec::new();
    let mut completed_tasks = 0usize;
    let mut cancelled_tasks = 0usize;
    for wave in 0..TASKS / WAVE {
        for t in 0..WAVE {
            let id = wave * WAVE + t;
            let mut trng = Rng::new(seed ^ (id as u64 + 1).wrapping_mul(0x1234_5678_9ABC));
            let (db, seen) = (db.clone(), seen.clone());
            let handle = tokio::spawn(async move {
                let snap = db.snapshot();
                // Sometimes a snapshot of the snapshot, sometimes a fork.
                let snap = if trng.chance(10) {
                    snap.snapshot()
                } else {
                    snap
                };
                let revision = snap.revision().as_u64();
                let fork_edit = if trng.chance(5) {
                    let i = trng.below(INPUTS as u64) as u32;
                    if trng.chance(30) {
                        snap.remove::<In>(&i).expect("fork remove");
                        Some((i, None))
                    } else {
                        let v = new_value(&mut trng, 1000);
                        snap.set::<In>(i, v).expect("fork set");
                        Some((i, Some(v)))
                    }
                } else {
                    None
                };
                let n = 1 + trng.below(4);
                for _ in 0..n {
                    let node = trng.below(NODES as u64) as u32;
                    let outcome = snap.query::<NodeQ>(node).await.map_err(|e| e.to_string());
                    seen.lock().unwrap().push(Seen {
                        revision,
                        fork_edit,
                        node,
                        outcome,
                    });
                }
            });
            if rng.chance(25) {
                to_abort.push((handles.len(), rng.below(20)));
            }
            handles.push(Some(handle));
        }
        // Let the wave run a little, aborting the chosen ones on the way.
        to_abort.sort_by_key(|&(_, after)| after);
        let mut step = 0;
        for (index, after) in to_abort.drain(..) {
            while step < after {
                tokio::task::yield_now().await;
                step += 1;
            }
            if let Some(h) = &handles[index] {
                h.abort();
            }
        }
        // Keep a bounded number of waves in flight.
        if wave >= 2 {
            for h in handles[(wave - 2) * WAVE..(wave - 1) * WAVE].iter_mut() {
                if let Some(h) = h.take() {
                    match h.await {
                        Ok(()) => completed_tasks += 1,
                        Err(e) if e.is_cancelled() => cancelled_tasks += 1,
                        Err(e) => panic!("reader task panicked: {e}"),
                    }
                }
            }
        }
    }
    for h in handles.iter_mut() {
        if let Some(h) = h.take() {
            match h.await {
                Ok(()) => completed_tasks += 1,
                Err(e) if e.is_cancelled() => cancelled_tasks += 1,
                Err(e) => panic!("reader task panicked: {e}"),
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.await.expect("writer");

    // Helper tasks of aborted bodies are aborted too; wait until they are gone.
    loop {
        let zero = live.zero.notified();
        tokio::pin!(zero);
        zero.as_mut().enable();
        if live.count.load(Ordering::SeqCst) == 0 {
            break;
        }
        zero.await;
    }
    assert_eq!(db.stats().in_flight, 0, "leaked in-flight entries");

    // Every completed result equals the model at its revision.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let history = history.lock().unwrap().clone();
    let mut models: HashMap<(u64, Option<ForkEdit>), Vec<Outcome>> = HashMap::new();
    let (mut ok, mut errors) = (0, 0);
    for s in &seen {
        let model = models.entry((s.revision, s.fork_edit)).or_insert_with(|| {
            let mut inputs = history
                .get(&s.revision)
                .unwrap_or_else(|| {
                    panic!(
                        "a snapshot at r{} that the writer never created",
                        s.revision
                    )
                })
                .clone();
            if let Some((i, v)) = s.fork_edit {
                inputs[i as usize] = v;
            }
            evaluate(&graph, &inputs)
        });
        assert_eq!(
            s.outcome, model[s.node as usize],
            "node {} at r{} (fork edit {:?})",
            s.node, s.revision, s.fork_edit
        );
        if s.outcome.is_ok() {
            ok += 1;
        } else {
            errors += 1;
        }
    }
    eprintln!(
        "{values:?} seed {seed:#x}: {} results ({ok} ok, {errors} errors) at {} revisions from {completed_tasks} completed \
         and {cancelled_tasks} cancelled tasks; {writes} writes; {} executions",
        seen.len(),
        models.len(),
        runs.iter()
            .map(|r| r.load(Ordering::Relaxed) as u64)
            .sum::<u64>()
    );
    assert!(
        completed_tasks >= TASKS / 2,
        "too few tasks completed: {completed_tasks}"
    );
    assert!(cancelled_tasks > 0, "no task was cancelled mid-way");
    assert!(seen.len() >= TASKS / 2);
    assert!(
        models.len() > 10,
        "the writer barely overlapped the readers"
    );
    assert_eq!(completed_tasks + cancelled_tasks, TASKS);

    // After the storm: the final revision, computed at most once per node,
    // then shared with the database and later snapshots (0 executions).
    let final_model = evaluate(&graph, &inputs_at(&history, db.revision().as_u64()));
    let before = total(&runs);
    let snap = db.snapshot();
    for j in 0..NODES {
        assert_eq!(
            snap.query::<NodeQ>(j).await.map_err(|e| e.to_string()),
            final_model[j as usize]
        );
    }
    assert!(total(&runs) - before <= NODES as u64);
    let before = total(&runs);
    for j in 0..NODES {
        assert_eq!(
            db.query::<NodeQ>(j).await.map_err(|e| e.to_string()),
            final_model[j as usize]
        );
        let again = db
            .snapshot()
            .query::<NodeQ>(j)
            .await
            .map_err(|e| e.to_string());
        assert_eq!(again, final_model[j as usize]);
    }
    assert_eq!(
        total(&runs),
        before,
        "work did not flow back to the database"
    );
    assert_eq!(db.stats().in_flight, 0);
}

fn inputs_at(history: &HashMap<u64, Inputs>, revision: u64) -> Inputs {
    history
        .get(&revision)
        .cloned()
        .expect("the final revision is in the history")
}

fn total(runs: &[AtomicU32]) -> u64 {
    runs.iter().map(|r| r.load(Ordering::Relaxed) as u64).sum()
}
