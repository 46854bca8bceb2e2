//! Observability: counters (executions, hits, revalidations, cutoffs,
//! dependency checks), memo inspection ("why did this re-execute?") and the
//! dependency graph.

use std::fmt;

use std::any::TypeId;

use crate::api::kinds::AsyncQuery;
use crate::engine::ingredient::Registry;
use crate::engine::storage::{Reason, ReasonKind, UNTRACKED};
use crate::error::QueryRef;
use crate::revision::{Durability, Revision};
use crate::typed::query::QueryIngredient;

/// Counters of one query kind, summed over every view of the database.
///
/// ```
/// # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
/// # struct N; impl Input for N { type Key = u32; type Value = u32; }
/// # struct Double;
/// # #[async_trait] impl AsyncQuery for Double { type Key = u32; type Value = u32;
/// #   async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> { Ok(cx.input::<N>(&k)? * 2) } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<N>().query(Double).build()?;
/// db.set::<N>(1, 1)?;
/// db.query::<Double>(1).await?; // executes
/// db.query::<Double>(1).await?; // a hit
/// db.set::<N>(2, 1)?;           // Double(1) did not read N(2)
/// db.query::<Double>(1).await?; // revalidated
/// let stats = db.query_stats::<Double>()?;
/// assert_eq!(stats.name, "Double");
/// assert_eq!((stats.executions, stats.hits, stats.revalidations, stats.cutoffs), (1, 1, 1, 0));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryStats {
    /// The kind's name.
    pub name: String,
    /// Times the body ran.
    pub executions: u64,
    /// Reads answered by a memo already verified at the reader's revision.
    pub hits: u64,
    /// Memos found still valid at a new revision without running the body
    /// (by walking dependencies or by durability). Revalidation runs no user
    /// code and is not deduplicated between concurrent readers, so under
    /// concurrency one memo may count more than once; `executions` and
    /// `cutoffs` are exact.
    pub revalidations: u64,
    /// Re-executions whose value equalled the previous one, so dependents
    /// kept their memos (early cutoff).
    pub cutoffs: u64,
    /// Memos dropped to keep the kind within its
    /// [capacity](crate::DatabaseBuilder::capacity).
    pub evictions: u64,
}

/// A snapshot of the database's counters. See [`View::stats`](crate::View::stats).
///
/// It displays as a table:
///
/// ```
/// # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
/// # struct N; impl Input for N { type Key = u32; type Value = u32; }
/// # struct Double;
/// # #[async_trait] impl AsyncQuery for Double { type Key = u32; type Value = u32;
/// #   async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> { Ok(cx.input::<N>(&k)? * 2) } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<N>().query(Double).build()?;
/// db.set::<N>(1, 1)?;
/// db.query::<Double>(1).await?;
/// let stats = db.stats();
/// assert_eq!(stats.total_executions(), 1);
/// assert_eq!(stats.in_flight, 0);
/// let table = stats.to_string();
/// assert!(table.starts_with("query"));
/// assert!(table.lines().nth(1).is_some_and(|row| row.starts_with("Double")));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// One entry per registered query kind, in registration order.
    pub queries: Vec<QueryStats>,
    /// Dependency edges examined while revalidating memos.
    pub dependency_checks: u64,
    /// Executions currently in flight (claimed and not finished).
    pub in_flight: usize,
    /// The ingredient type of each entry of `queries` (for [`of`](Self::of)).
    pub(crate) types: Vec<TypeId>,
}

impl Stats {
    /// Counters of the query kind named `name` (its short type name). See
    /// [`of`](Self::of) for the typed lookup.
    pub fn query(&self, name: &str) -> Option<&QueryStats> {
        self.queries.iter().find(|q| q.name == name)
    }

    /// Counters of query kind `Q`, `None` if the database was not built
    /// with it. Typed, so a rename or a typo is a compile error, and two
    /// kinds with the same short name in different modules stay apart.
    ///
    /// ```
    /// # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
    /// # struct N; impl Input for N { type Key = (); type Value = u32; }
    /// struct Twice;
    /// # #[async_trait] impl AsyncQuery for Twice { type Key = (); type Value = u32;
    /// #   async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> { Ok(cx.input::<N>(&())? * 2) } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<N>().query(Twice).build()?;
    /// db.set::<N>((), 1)?;
    /// db.query::<Twice>(()).await?;
    /// db.query::<Twice>(()).await?;
    /// let stats = db.stats();
    /// let twice = stats.of::<Twice>().expect("registered");
    /// assert_eq!((twice.executions, twice.hits), (1, 1));
    /// # Ok(()) }
    /// ```
    pub fn of<Q: AsyncQuery>(&self) -> Option<&QueryStats> {
        let wanted = TypeId::of::<QueryIngredient<Q>>();
        let at = self.types.iter().position(|t| *t == wanted)?;
        self.queries.get(at)
    }

    /// The entry of the same kind: by type when both sides know it (two
    /// kinds may share a short name), else by name.
    fn same_kind(&self, ty: Option<&TypeId>, name: &str) -> Option<&QueryStats> {
        match ty.and_then(|t| self.types.iter().position(|u| u == t)) {
            Some(at) => self.queries.get(at),
            None if ty.is_some() && !self.types.is_empty() => None,
            None => self.query(name),
        }
    }

    /// Sum of executions over all query kinds.
    pub fn total_executions(&self) -> u64 {
        self.queries.iter().map(|q| q.executions).sum()
    }

    /// What happened between `earlier` and `self` (counters only grow, so
    /// this is a per-step view).
    ///
    /// ```
    /// # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx};
    /// # struct N; impl Input for N { type Key = (); type Value = u32; }
    /// # struct Twice;
    /// # #[async_trait] impl AsyncQuery for Twice { type Key = (); type Value = u32;
    /// #   async fn execute(&self, cx: &QueryCx, _: ()) -> picante::QueryResult<u32> { Ok(cx.input::<N>(&())? * 2) } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<N>().query(Twice).build()?;
    /// db.set::<N>((), 1)?;
    /// db.query::<Twice>(()).await?;
    /// let before = db.stats();
    /// db.set::<N>((), 2)?;
    /// db.query::<Twice>(()).await?;
    /// let step = db.stats().since(&before);
    /// assert_eq!(step.query("Twice").unwrap().executions, 1);
    /// # Ok(()) }
    /// ```
    pub fn since(&self, earlier: &Stats) -> Stats {
        let queries = self
            .queries
            .iter()
            .enumerate()
            .map(
                |(i, q)| match earlier.same_kind(self.types.get(i), &q.name) {
                    Some(e) => QueryStats {
                        name: q.name.clone(),
                        executions: q.executions.saturating_sub(e.executions),
                        hits: q.hits.saturating_sub(e.hits),
                        revalidations: q.revalidations.saturating_sub(e.revalidations),
                        cutoffs: q.cutoffs.saturating_sub(e.cutoffs),
                        evictions: q.evictions.saturating_sub(e.evictions),
                    },
                    None => q.clone(),
                },
            )
            .collect();
        Stats {
            queries,
            dependency_checks: self
                .dependency_checks
                .saturating_sub(earlier.dependency_checks),
            in_flight: self.in_flight,
            types: self.types.clone(),
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:>10} {:>10} {:>13} {:>8}",
            "query", "executed", "hits", "revalidated", "cutoffs"
        )?;
        for q in &self.queries {
            writeln!(
                f,
                "{:<24} {:>10} {:>10} {:>13} {:>8}",
                q.name, q.executions, q.hits, q.revalidations, q.cutoffs
            )?;
        }
        write!(f, "dependency checks: {}", self.dependency_checks)
    }
}

/// Why a memo's body last ran.
///
/// ```
/// # use picante::{async_trait, AsyncQuery, Database, ExecutionReason, Input, QueryCx, QueryResult};
/// # struct N; impl Input for N { type Key = u32; type Value = u32; }
/// # struct Double;
/// # #[async_trait] impl AsyncQuery for Double { type Key = u32; type Value = u32;
/// #   async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> { Ok(cx.input::<N>(&k)? * 2) } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<N>().query(Double).build()?;
/// db.set::<N>(7, 1)?;
/// db.query::<Double>(7).await?;
/// let why = |db: &Database| db.inspect::<Double>(&7).map(|m| m.map(|m| m.reason));
/// assert_eq!(why(&db)?, Some(ExecutionReason::New));
///
/// db.set::<N>(7, 2)?;
/// db.query::<Double>(7).await?;
/// match why(&db)? {
///     Some(ExecutionReason::DependencyChanged(dep)) => {
///         assert_eq!((dep.kind.as_str(), dep.key.as_str()), ("N", "7"));
///     }
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecutionReason {
    /// No memo was usable at that revision (first computation, or a memo from
    /// another revision that could not be reused).
    New,
    /// This dependency changed after the memo was last verified (its kind
    /// and key; displayed as `Kind(key)`).
    DependencyChanged(QueryRef),
    /// The previous dependencies could not be revalidated (a cycle among them,
    /// or a dependency that failed).
    Unverifiable,
    /// The previous execution reported an untracked read
    /// ([`QueryCx::report_untracked_read`](crate::QueryCx::report_untracked_read)),
    /// so it was valid at its own revision only.
    UntrackedRead,
}

impl ExecutionReason {
    pub(crate) fn of(reason: Reason, registry: &Registry) -> ExecutionReason {
        match reason.kind() {
            ReasonKind::New => ExecutionReason::New,
            ReasonKind::DependencyChanged(UNTRACKED) => ExecutionReason::UntrackedRead,
            ReasonKind::DependencyChanged(d) => {
                ExecutionReason::DependencyChanged(crate::api::cx::query_ref(registry, d))
            }
            ReasonKind::Unverifiable => ExecutionReason::Unverifiable,
        }
    }
}

impl fmt::Display for ExecutionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionReason::New => f.write_str("no reusable memo"),
            ExecutionReason::DependencyChanged(d) => write!(f, "dependency {d} changed"),
            ExecutionReason::Unverifiable => {
                f.write_str("previous dependencies could not be revalidated")
            }
            ExecutionReason::UntrackedRead => f.write_str("it made an untracked read"),
        }
    }
}

/// What a view knows about one memo. See [`View::inspect`](crate::View::inspect).
///
/// ```
/// # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
/// # struct N; impl Input for N { type Key = u32; type Value = u32; }
/// # struct Double;
/// # #[async_trait] impl AsyncQuery for Double { type Key = u32; type Value = u32;
/// #   async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> { Ok(cx.input::<N>(&k)? * 2) } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<N>().query(Double).build()?;
/// let r = db.set::<N>(3, 1)?;
/// db.query::<Double>(3).await?;
/// let info = db.inspect::<Double>(&3)?.expect("memoized");
/// assert_eq!(info.name, "Double(3)");
/// assert_eq!(info.dependencies, ["N(3)"]);
/// assert_eq!((info.executed_at, info.changed_at, info.verified_at), (r, r, r));
/// assert!(!info.is_error);
/// assert_eq!(
///     info.to_string(),
///     format!("Double(3) executed at {r} (no reusable memo), changed at {r}, verified at {r}")
/// );
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MemoInfo {
    /// The memo as `Kind(key)`.
    pub name: String,
    /// Last revision this view verified the memo at.
    pub verified_at: Revision,
    /// Last revision the value changed at (kept across early cutoff).
    pub changed_at: Revision,
    /// Revision the body last ran at.
    pub executed_at: Revision,
    /// Minimum durability of its dependencies.
    pub durability: Durability,
    /// Whether the memoized result is an error.
    pub is_error: bool,
    /// Dependencies in the order they were first read, as `Kind(key)`.
    pub dependencies: Vec<String>,
    /// Why the body last ran.
    pub reason: ExecutionReason,
}

impl fmt::Display for MemoInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} executed at {} ({}), changed at {}, verified at {}",
            self.name, self.executed_at, self.reason, self.changed_at, self.verified_at
        )
    }
}
