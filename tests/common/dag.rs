//! The query side of the random-DAG models shared by the concurrent
//! differential test and the stress test: node `j` reads its dependencies
//! (inputs or lower nodes) sequentially, two of them in `join!`, or from
//! spawned tasks, yields in between, and combines the values as its test's
//! spec says. Each test keeps its own spec (what a node computes) and
//! from-scratch model.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use picante::{AsyncQuery, Input, QueryCx, QueryError, QueryResult, async_trait};
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug)]
pub enum Dep {
    Input(u32),
    Node(u32),
}

/// `Err(message)` for errors: comparing messages checks that the error that
/// reached a dependent is the one the model predicts.
pub type Outcome = std::result::Result<i64, String>;

/// A node of a test's graph.
pub trait Spec: Send + Sync + 'static {
    fn deps(&self) -> &[Dep];
    /// 0: sequential reads, 1: first two reads in `join!`, 2: spawned reads.
    fn style(&self) -> u8;
    /// `yield_now` calls in the body (abort points, interleavings).
    fn yields(&self) -> u8;
    /// The node's value from its id and its dependencies' outcomes.
    fn combine(&self, j: u32, values: &[Outcome]) -> Outcome;
}

/// Implements [`Spec`] for a test's node type with fields `deps`, `style`,
/// `yields` and a free function `combine(j, &spec, values)`.
#[macro_export]
macro_rules! impl_spec {
    ($t:ty) => {
        impl $crate::common::dag::Spec for $t {
            fn deps(&self) -> &[$crate::common::dag::Dep] {
                &self.deps
            }
            fn style(&self) -> u8 {
                self.style
            }
            fn yields(&self) -> u8 {
                self.yields
            }
            fn combine(
                &self,
                j: u32,
                values: &[$crate::common::dag::Outcome],
            ) -> $crate::common::dag::Outcome {
                combine(j, self, values)
            }
        }
    };
}

pub struct In;
impl Input for In {
    type Key = u32;
    type Value = i64;
}

/// Live helper tasks spawned by bodies (aborted with their body, but
/// asynchronously): tests wait for them before checking `in_flight`.
#[derive(Default)]
pub struct Live {
    pub count: AtomicUsize,
    pub zero: Notify,
}

impl Live {
    pub async fn wait_zero(&self) {
        loop {
            let zero = self.zero.notified();
            tokio::pin!(zero);
            zero.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            zero.await;
        }
    }
}

struct LiveGuard(Arc<Live>);
impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// A future that drops its guard only after the inner future is gone.
struct Tracked<F> {
    fut: std::pin::Pin<Box<F>>,
    _guard: LiveGuard,
}
impl<F: std::future::Future> std::future::Future for Tracked<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.fut.as_mut().poll(cx)
    }
}

/// The graph as a picante query kind.
pub struct NodeQ<S> {
    pub graph: Arc<Vec<S>>,
    pub runs: Arc<Vec<AtomicU32>>,
    pub live: Arc<Live>,
    /// The value of an absent input.
    pub absent: i64,
}

async fn read_dep<S: Spec>(cx: &QueryCx, dep: Dep, absent: i64) -> Outcome {
    match dep {
        Dep::Input(i) => Ok(cx
            .input_opt::<In>(&i)
            .map_err(|e| format!("engine error reading input: {e}"))?
            .unwrap_or(absent)),
        Dep::Node(n) => cx.query::<NodeQ<S>>(n).await.map_err(|e| e.to_string()),
    }
}

#[async_trait]
impl<S: Spec> AsyncQuery for NodeQ<S> {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, j: u32) -> QueryResult<i64> {
        self.runs[j as usize].fetch_add(1, Ordering::Relaxed);
        let spec = &self.graph[j as usize];
        for _ in 0..spec.yields() {
            tokio::task::yield_now().await;
        }
        let deps = spec.deps();
        let absent = self.absent;
        let mut values: Vec<Outcome> = Vec::with_capacity(deps.len());
        match spec.style() {
            0 => {
                for &d in deps {
                    values.push(read_dep::<S>(cx, d, absent).await);
                }
            }
            1 => {
                let mut it = deps.iter().copied();
                match (it.next(), it.next()) {
                    (Some(a), Some(b)) => {
                        let (x, y) = tokio::join!(
                            read_dep::<S>(cx, a, absent),
                            read_dep::<S>(cx, b, absent)
                        );
                        values.push(x);
                        values.push(y);
                    }
                    (Some(a), None) => values.push(read_dep::<S>(cx, a, absent).await),
                    _ => {}
                }
                for d in it {
                    values.push(read_dep::<S>(cx, d, absent).await);
                }
            }
            _ => {
                // Spawned reads; the JoinSet aborts them if this body is dropped.
                let mut set = tokio::task::JoinSet::new();
                for (pos, &d) in deps.iter().enumerate() {
                    let cx = cx.clone();
                    self.live.count.fetch_add(1, Ordering::SeqCst);
                    set.spawn(Tracked {
                        fut: Box::pin(async move { (pos, read_dep::<S>(&cx, d, absent).await) }),
                        _guard: LiveGuard(self.live.clone()),
                    });
                }
                let mut slots: Vec<Option<Outcome>> = vec![None; deps.len()];
                while let Some(joined) = set.join_next().await {
                    let (pos, v) = joined?;
                    slots[pos] = Some(v);
                }
                values = slots
                    .into_iter()
                    .map(|v| v.expect("every read joined"))
                    .collect();
            }
        }
        spec.combine(j, &values).map_err(QueryError::msg)
    }
}
