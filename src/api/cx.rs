//! `QueryCx`: the only way a query body reads the database. It records every
//! read as a dependency of the one execution it belongs to, from any clone,
//! any `join!` branch, any spawned task.

use std::sync::{Arc, Weak};

use crate::api::kinds::{AsyncQuery, Id, Input, Interned};
use crate::engine::execution::Execution;
use crate::engine::fetch::Fault;
use crate::engine::fetch::{Hint, fetch};
use crate::engine::ingredient::Registry;
use crate::engine::storage::{AnyMemo, Dep, History, Memo, UNSEEN, typed_memo};
use crate::error::{Error, ErrorKind, Result};
use crate::revision::{Durability, Revision};
use crate::typed::input::InputIngredient;
use crate::typed::interned::InternedIngredient;
use crate::typed::query::{QueryIngredient, Warm};

/// The context of one query execution.
///
/// Cheap to clone, `Send + Sync + 'static`: move clones into `join!` branches
/// or `tokio::spawn`ed tasks; every read through any clone is recorded as a
/// dependency of this execution. Reads that arrive after the execution
/// returned are refused with [`ErrorKind::ExecutionFinished`].
///
/// ```
/// use std::sync::Arc;
/// use picante::{async_trait, AsyncQuery, Database, Input, QueryCx};
///
/// struct Page;
/// impl Input for Page { type Key = u32; type Value = Arc<str>; }
///
/// struct Words;
/// #[async_trait]
/// impl AsyncQuery for Words {
///     type Key = u32;
///     type Value = usize;
///     async fn execute(&self, cx: &QueryCx, page: u32) -> picante::QueryResult<usize> {
///         Ok(cx.input::<Page>(&page)?.split_whitespace().count())
///     }
/// }
///
/// /// Sums the words of pages 0..n, reading them concurrently.
/// struct TotalWords;
/// #[async_trait]
/// impl AsyncQuery for TotalWords {
///     type Key = u32;
///     type Value = usize;
///     async fn execute(&self, cx: &QueryCx, n: u32) -> picante::QueryResult<usize> {
///         let mut tasks = Vec::new();
///         for page in 0..n {
///             let cx = cx.clone();
///             tasks.push(tokio::spawn(async move { cx.query::<Words>(page).await }));
///         }
///         let mut total = 0;
///         for t in tasks {
///             total += t.await.map_err(picante::Error::new)??;
///         }
///         Ok(total)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<Page>().query(Words).query(TotalWords).build()?;
/// db.set::<Page>(0, "a b c".into())?;
/// db.set::<Page>(1, "d e".into())?;
/// assert_eq!(db.query::<TotalWords>(2).await?, 5);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct QueryCx {
    exec: Execution,
}

impl QueryCx {
    pub(crate) fn new(exec: Execution) -> QueryCx {
        QueryCx { exec }
    }

    /// The revision this execution reads at. All its reads see exactly the
    /// inputs of this revision, whatever happens to the database meanwhile.
    pub fn revision(&self) -> Revision {
        self.exec.revision()
    }

    fn record(
        &self,
        dep: Dep,
        seen: Revision,
        durability: Durability,
        memo: Option<Weak<dyn AnyMemo>>,
    ) -> Result<()> {
        self.exec.record(dep, seen, durability, memo)
    }

    /// Reads query `Q` at `key` (a recorded dependency), computing it if needed.
    pub async fn query<Q: AsyncQuery>(&self, key: Q::Key) -> Result<Q::Value> {
        let access = self.exec.access();
        let (index, ing) = QueryIngredient::<Q>::lookup_in(access.view().shared().registry())?;
        let state = access.view().load();
        let history = History::of(access.pinned().fork);
        let hint = match ing.warm(&state, index, &key, access.revision(), history)? {
            Warm::Hit(memo, result) => {
                let dep = Dep {
                    ingredient: index,
                    key: memo.meta.key,
                };
                let weak: Weak<dyn AnyMemo> = Arc::downgrade(memo) as Weak<Memo<Q::Value>>;
                self.record(dep, memo.meta.changed_at, memo.meta.durability, Some(weak))?;
                return result;
            }
            Warm::Miss(hint) => hint,
        };
        let mut hint = hint;
        self.exec.check_open()?;
        let key_id = ing.key_id(&key)?;
        let dep = Dep {
            ingredient: index,
            key: key_id,
        };
        loop {
            let memo = match fetch(access, index, key_id, hint).await {
                Ok(memo) => memo,
                Err(fault) => {
                    // The read still happened: a cycle or cancellation depends on it.
                    self.record(dep, UNSEEN, Durability::Low, None)?;
                    return Err(fault_error(fault, access.view().shared().registry()));
                }
            };
            match typed_memo::<Q::Value>(&memo)?.read() {
                Some(result) => {
                    let meta = memo.meta();
                    self.record(
                        dep,
                        meta.changed_at,
                        meta.durability,
                        Some(Arc::downgrade(&memo)),
                    )?;
                    return result;
                }
                // Loaded from disk and undecodable: recompute it.
                None => hint = Hint::Replace(memo),
            }
        }
    }

    /// Reads input `I` at `key` (a recorded dependency). An absent key is an
    /// [`ErrorKind::MissingInput`] error — and still a dependency, so this
    /// query re-runs when the key is set.
    pub fn input<I: Input>(&self, key: &I::Key) -> Result<I::Value> {
        match self.input_opt::<I>(key)? {
            Some(v) => Ok(v),
            None => Err(ErrorKind::MissingInput {
                input: InputIngredient::<I>::name_of(),
                key: crate::util::debug_string(key),
            }
            .into()),
        }
    }

    /// Reads input `I` at `key`, `None` if absent (recorded either way).
    pub fn input_opt<I: Input>(&self, key: &I::Key) -> Result<Option<I::Value>> {
        let access = self.exec.access();
        let (index, ing) = InputIngredient::<I>::lookup_in(access.view().shared().registry())?;
        let (value, key_id, changed_at) = ing.read(access.pinned(), index, key)?;
        let dep = Dep {
            ingredient: index,
            key: key_id,
        };
        self.record(dep, changed_at, I::DURABILITY, None)?;
        Ok(value)
    }

    /// Tells picante that this body read something it cannot track — a file
    /// read with `tokio::fs`, the clock, an environment variable, a network
    /// call. The memo is then valid at this revision only: at every new
    /// revision it re-executes instead of being revalidated (if its value is
    /// unchanged, early cutoff still spares its dependents), and it is never
    /// written to a persisted cache, so a restart does not serve what the
    /// outside world said last time.
    ///
    /// Prefer tracked reads: make the outside world an input (set it from a
    /// file watcher) and read it with [`input`](QueryCx::input); then only
    /// what changed re-runs.
    ///
    /// ```
    /// # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx};
    /// struct Config;
    /// #[async_trait]
    /// impl AsyncQuery for Config {
    ///     type Key = std::path::PathBuf;
    ///     type Value = String;
    ///     async fn execute(&self, cx: &QueryCx, path: std::path::PathBuf) -> picante::QueryResult<String> {
    ///         cx.report_untracked_read()?;
    ///         Ok(tokio::fs::read_to_string(&path).await.unwrap_or_default())
    ///     }
    /// }
    /// # struct Tick;
    /// # impl Input for Tick { type Key = (); type Value = u32; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<Tick>().query(Config).build()?;
    /// let path = std::env::temp_dir().join("picante-untracked-doc.toml");
    /// db.query::<Config>(path.clone()).await?;
    /// db.query::<Config>(path.clone()).await?; // same revision: a hit
    /// db.set::<Tick>((), 1)?;                  // any new revision: it re-reads the file
    /// db.query::<Config>(path).await?;
    /// assert_eq!(db.query_stats::<Config>()?.executions, 2);
    /// # Ok(()) }
    /// ```
    pub fn report_untracked_read(&self) -> Result<()> {
        self.exec.record_untracked()
    }

    /// Interns `value` (not a dependency: interning never invalidates).
    pub fn intern<T: Interned>(&self, value: T::Value) -> Result<Id<T>> {
        InternedIngredient::<T>::lookup_in(self.exec.access().view().shared().registry())?
            .intern(value)
    }

    /// The value of an interned id.
    pub fn lookup<T: Interned>(&self, id: Id<T>) -> Result<T::Value> {
        InternedIngredient::<T>::lookup_in(self.exec.access().view().shared().registry())?.value(id)
    }
}

/// The user-facing error for an engine fault: a cycle gets the names of its
/// path (`Kind(key)` each, closed by the first again).
pub(crate) fn fault_error(fault: Fault, registry: &Registry) -> Error {
    match fault {
        Fault::Error(e) => e,
        Fault::Cycle(cycle) => {
            let mut names: Vec<String> = cycle.0.iter().map(|d| registry.describe(*d)).collect();
            if let Some(first) = names.first().cloned() {
                names.push(first);
            }
            tracing::debug!(path = %names.join(" → "), "query cycle detected");
            ErrorKind::Cycle { path: names }.into()
        }
    }
}
