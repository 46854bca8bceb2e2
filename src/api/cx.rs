//! `QueryCx`: the only way a query body reads the database. It records every
//! read as a dependency of the one execution it belongs to, from any clone,
//! any `join!` branch, any spawned task.

use std::future::Future;
use std::sync::{Arc, Weak};

use tracing::Instrument;

use crate::api::kinds::{AsyncQuery, Id, Input, Interned};
use crate::engine::execution::Execution;
use crate::engine::fetch::Fault;
use crate::engine::fetch::{Found, Hint, fetch_found};
use crate::engine::ingredient::Registry;
use crate::engine::storage::{
    AnyMemo, Dep, History, IngredientIndex, Memo, State, UNSEEN, typed_memo_ref,
};
use crate::error::{Error, ErrorKind, QueryRef, Result};
use crate::revision::{Durability, Revision};
use crate::typed::input::InputIngredient;
use crate::typed::interned::InternedIngredient;
use crate::typed::query::{QueryIngredient, Warm};

/// The context of one query execution.
///
/// Cheap to clone, `Send + Sync + 'static`: move clones into `join!` branches
/// or `tokio::spawn`ed tasks; every read through any clone is recorded as a
/// dependency of this execution. Reads that arrive after the execution
/// returned are refused with [`ErrorKind::ExecutionFinished`], so await
/// what you spawn. For a dynamic set of sub-queries,
/// [`query_all`](Self::query_all) and [`try_query_all`](Self::try_query_all)
/// run them concurrently (in parallel on a multi-thread runtime) and abort
/// them if the body is dropped.
///
/// Read through `cx`, not through a captured `Database` handle. A captured
/// handle used on the body's own task is attributed to the execution (so a
/// cycle through it is still an error), but one used from a task the body
/// `tokio::spawn`ed is a read from outside: nothing records it as a
/// dependency, and if it needs the running query itself it waits for it —
/// forever, since the body awaits the task. (A task-local, which is how the
/// attribution works, does not cross `tokio::spawn`.)
///
/// ```
/// use std::sync::Arc;
/// use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
///
/// struct Page;
/// impl Input for Page { type Key = u32; type Value = Arc<str>; }
///
/// struct Words;
/// #[async_trait]
/// impl AsyncQuery for Words {
///     type Key = u32;
///     type Value = usize;
///     async fn execute(&self, cx: &QueryCx, page: u32) -> QueryResult<usize> {
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
///     async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<usize> {
///         Ok(cx.try_query_all::<Words>(0..n).await?.into_iter().sum())
///     }
/// }
///
/// /// A fixed number of reads: `join!` (the branches record into this execution).
/// struct FirstTwo;
/// #[async_trait]
/// impl AsyncQuery for FirstTwo {
///     type Key = ();
///     type Value = usize;
///     async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<usize> {
///         let (a, b) = tokio::join!(cx.query::<Words>(0), cx.query::<Words>(1));
///         Ok(a? + b?)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> picante::Result<()> {
/// let db = Database::builder()
///     .input::<Page>()
///     .query(Words)
///     .query(TotalWords)
///     .query(FirstTwo)
///     .build()?;
/// db.set::<Page>(0, "a b c".into())?;
/// db.set::<Page>(1, "d e".into())?;
/// assert_eq!(db.query::<TotalWords>(2).await?, 5);
/// assert_eq!(db.query::<FirstTwo>(()).await?, 5);
/// assert_eq!(db.stats().of::<Words>().unwrap().executions, 2); // shared
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
        // The pinned state, not the view's current one: no load (two atomic
        // operations) per read, and a miss carries an entry of the pinned
        // state into `fetch`. Memos merged into the view since the pin are
        // found there.
        let hint = match self.warm::<Q>(ing, access.pinned(), index, &key)? {
            Ok(result) => return result,
            Err(miss) => miss,
        };
        self.cold::<Q>(ing, index, key, hint).await
    }

    /// The warm-hit path of [`query`](Self::query): a memo verified at this
    /// execution's revision is recorded and its result returned (`Ok`);
    /// otherwise how to fetch it (`Err`: the hint, and the key's id when
    /// the table holds a memo for it).
    #[inline]
    fn warm<Q: AsyncQuery>(
        &self,
        ing: &QueryIngredient<Q>,
        state: &State,
        index: IngredientIndex,
        key: &Q::Key,
    ) -> Result<std::result::Result<Result<Q::Value>, Miss>> {
        let access = self.exec.access();
        let history = History::of(access.pinned().fork);
        match ing.warm::<false>(state, index, key, access.revision(), history)? {
            Warm::Hit(memo, result) => {
                let dep = Dep {
                    ingredient: index,
                    key: memo.meta.key,
                };
                let weak: Weak<dyn AnyMemo> = Arc::downgrade(memo) as Weak<Memo<Q::Value>>;
                // The hit is counted by the recorder, in bulk.
                if let Err(e) =
                    self.exec
                        .record_hit(dep, memo.meta.changed_at, memo.meta.durability, weak)
                {
                    ing.count_hit();
                    return Err(e);
                }
                Ok(Ok(result))
            }
            miss => Ok(Err(miss.into_miss().unwrap_or((Hint::None, None)))),
        }
    }

    /// The rest of [`query`](Self::query) after a warm miss: fetch (reuse,
    /// revalidate or execute) and record.
    async fn cold<Q: AsyncQuery>(
        &self,
        ing: &QueryIngredient<Q>,
        index: IngredientIndex,
        key: Q::Key,
        (hint, found): Miss,
    ) -> Result<Q::Value> {
        let access = self.exec.access();
        let mut hint = hint;
        let mut found = found;
        self.exec.check_open()?;
        let key_id = match &found {
            Some((memo, _)) => memo.meta().key,
            None => ing.key_id(&key)?,
        };
        let dep = Dep {
            ingredient: index,
            key: key_id,
        };
        loop {
            let memo = match fetch_found(access, index, key_id, hint, found.take()).await {
                Ok(memo) => memo,
                Err(fault) => {
                    // The read still happened: a cycle or cancellation depends on it.
                    self.record(dep, UNSEEN, Durability::Low, None)?;
                    return Err(fault_error(fault, access.view().shared().registry()));
                }
            };
            match typed_memo_ref::<Q::Value>(&memo)?.read() {
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

    /// Reads query `Q` at every key, concurrently: the fan-out of a query
    /// over a dynamic set (a site's index over all its pages). The results
    /// come back in the order of `keys`, one per key; each read is a
    /// recorded dependency of this execution, exactly as with
    /// [`query`](Self::query), and cycles are detected through it as
    /// through `query`. Use [`try_query_all`](Self::try_query_all) to stop
    /// at the first error.
    ///
    /// Keys whose memo is already verified at this revision are answered
    /// at once, without a task. The others each run on their own tokio task
    /// (in a `JoinSet`), so on a multi-thread runtime CPU-heavy sub-queries
    /// run in parallel on every worker — `join!` or polling futures together
    /// would keep them on one thread. Dropping the returned future (the
    /// parent body being cancelled, or another `try_join!` branch failing)
    /// aborts the sub-queries still running, releasing their claims (S14).
    /// A panic outside a sub-query's body (its body's own panics are
    /// memoized errors) is resumed in the caller, as `join!` would.
    /// Without a tokio runtime, the misses are read one after another.
    ///
    /// `keys` is consumed before this returns; the future is `Send`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
    ///
    /// struct Page;
    /// impl Input for Page { type Key = u32; type Value = Arc<str>; }
    ///
    /// struct Words;
    /// #[async_trait]
    /// impl AsyncQuery for Words {
    ///     type Key = u32;
    ///     type Value = usize;
    ///     async fn execute(&self, cx: &QueryCx, page: u32) -> QueryResult<usize> {
    ///         Ok(cx.input::<Page>(&page)?.split_whitespace().count())
    ///     }
    /// }
    ///
    /// /// The word count of pages 0..n, or how many of them are missing.
    /// struct Report;
    /// #[async_trait]
    /// impl AsyncQuery for Report {
    ///     type Key = u32;
    ///     type Value = (usize, usize);
    ///     async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<(usize, usize)> {
    ///         let (mut words, mut missing) = (0, 0);
    ///         for result in cx.query_all::<Words>(0..n).await {
    ///             match result {
    ///                 Ok(w) => words += w,
    ///                 Err(_) => missing += 1,
    ///             }
    ///         }
    ///         Ok((words, missing))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<Page>().query(Words).query(Report).build()?;
    /// db.set::<Page>(0, "a b c".into())?;
    /// db.set::<Page>(2, "d e".into())?;
    /// assert_eq!(db.query::<Report>(3).await?, (5, 1));
    /// # Ok(()) }
    /// ```
    pub fn query_all<Q: AsyncQuery>(
        &self,
        keys: impl IntoIterator<Item = Q::Key>,
    ) -> impl Future<Output = Vec<Result<Q::Value>>> + Send {
        let keys: Vec<Q::Key> = keys.into_iter().collect();
        let cx = self.clone();
        async move {
            cx.fan_out::<Q>(keys, false)
                .await
                .into_iter()
                .map(|slot| slot.unwrap_or_else(|| Err(ErrorKind::Cancelled.into())))
                .collect()
        }
    }

    /// Like [`query_all`](Self::query_all), but all values or the first
    /// error: the error of the first failing key in the order of `keys`
    /// (not the first to fail in time, so the result does not depend on
    /// scheduling). As soon as that error is decided, the sub-queries still
    /// running are aborted.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
    ///
    /// struct Page;
    /// impl Input for Page { type Key = String; type Value = Arc<str>; }
    /// struct Pages;
    /// impl Input for Pages { type Key = (); type Value = Arc<Vec<String>>; }
    ///
    /// struct Title;
    /// #[async_trait]
    /// impl AsyncQuery for Title {
    ///     type Key = String;
    ///     type Value = Arc<str>;
    ///     async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<Arc<str>> {
    ///         Ok(cx.input::<Page>(&path)?.lines().next().unwrap_or_default().into())
    ///     }
    /// }
    ///
    /// /// The site's index: every page's title, read concurrently.
    /// struct Index;
    /// #[async_trait]
    /// impl AsyncQuery for Index {
    ///     type Key = ();
    ///     type Value = Vec<Arc<str>>;
    ///     async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<Vec<Arc<str>>> {
    ///         let pages = cx.input::<Pages>(&())?;
    ///         Ok(cx.try_query_all::<Title>(pages.iter().cloned()).await?)
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> picante::Result<()> {
    /// let db = Database::builder()
    ///     .input::<Page>()
    ///     .input::<Pages>()
    ///     .query(Title)
    ///     .query(Index)
    ///     .build()?;
    /// db.set::<Pages>((), Arc::new(vec!["a.md".into(), "b.md".into()]))?;
    /// db.set::<Page>("a.md".into(), "Peppers\nhot".into())?;
    /// // b.md is missing: the index fails with that error.
    /// let err = db.query::<Index>(()).await.unwrap_err();
    /// assert_eq!(err.to_string(), "input Page(\"b.md\") has no value");
    /// db.set::<Page>("b.md".into(), "Sauces\nred".into())?;
    /// assert_eq!(db.query::<Index>(()).await?, vec!["Peppers".into(), "Sauces".into()]);
    /// # Ok(()) }
    /// ```
    pub fn try_query_all<Q: AsyncQuery>(
        &self,
        keys: impl IntoIterator<Item = Q::Key>,
    ) -> impl Future<Output = Result<Vec<Q::Value>>> + Send {
        let keys: Vec<Q::Key> = keys.into_iter().collect();
        let cx = self.clone();
        async move {
            let mut values = Vec::with_capacity(keys.len());
            for slot in cx.fan_out::<Q>(keys, true).await {
                match slot {
                    Some(Ok(v)) => values.push(v),
                    Some(Err(e)) => return Err(e),
                    None => return Err(ErrorKind::Cancelled.into()),
                }
            }
            Ok(values)
        }
    }

    /// The work of `query_all` and `try_query_all`: one slot per key, `None`
    /// where no result was obtained (after the deciding error when
    /// `first_error` is set, or a task cancelled by a runtime shutdown).
    async fn fan_out<Q: AsyncQuery>(
        &self,
        keys: Vec<Q::Key>,
        first_error: bool,
    ) -> Vec<Option<Result<Q::Value>>> {
        let n = keys.len();
        let mut slots: Vec<Option<Result<Q::Value>>> = Vec::with_capacity(n);
        slots.resize_with(n, || None);
        let registry = self.exec.access().view().shared().registry();
        let (index, ing) = match QueryIngredient::<Q>::lookup_in(registry) {
            Ok(found) => found,
            Err(e) => return slots.into_iter().map(|_| Some(Err(e.clone()))).collect(),
        };
        let mut progress = Progress::new(n, first_error);
        // Warm hits first, in key order, without a task each.
        let mut misses: Vec<(usize, Q::Key, Miss)> = Vec::new();
        {
            let state = self.exec.access().view().load();
            for (i, key) in keys.into_iter().enumerate() {
                if progress.decided_at().is_some_and(|at| at < i) {
                    // Keys after an error do not matter to `try_query_all`:
                    // they are not read.
                    break;
                }
                let result = match self.warm::<Q>(ing, &state, index, &key) {
                    Ok(Ok(result)) => result,
                    Ok(Err(hint)) => {
                        misses.push((i, key, hint));
                        continue;
                    }
                    Err(e) => Err(e),
                };
                progress.filled(i, result.is_err());
                slots[i] = Some(result);
            }
        }
        if progress.done() {
            return slots;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            for (i, key, hint) in misses {
                let result = self.cold::<Q>(ing, index, key, hint).await;
                let failed = result.is_err();
                slots[i] = Some(result);
                if progress.filled(i, failed) {
                    break;
                }
            }
            return slots;
        };
        // Each miss on its own task; the set aborts them all when dropped.
        let mut set = tokio::task::JoinSet::new();
        for (i, key, _) in misses {
            let cx = self.clone();
            set.spawn_on(
                async move { (i, cx.query::<Q>(key).await) }.in_current_span(),
                &runtime,
            );
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, result)) => {
                    let failed = result.is_err();
                    slots[i] = Some(result);
                    if progress.filled(i, failed) {
                        break; // dropping `set` aborts the rest
                    }
                }
                // Not a body's panic (those are memoized errors): one in
                // picante or a key's `Hash`/`Eq`. Resume it here, as
                // `join!` would; dropping `set` aborts the rest.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: the runtime is shutting down. Its slot stays
                // empty and reads as `ErrorKind::Cancelled`.
                Err(_) => {}
            }
        }
        slots
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

/// The kind name and rendered key of `dep`.
pub(crate) fn query_ref(registry: &Registry, dep: Dep) -> QueryRef {
    match registry.get(dep.ingredient) {
        Ok(ing) => QueryRef::new(ing.name(), ing.debug_key(dep.key)),
        Err(_) => QueryRef::new(format!("?{}", dep.ingredient), dep.key.to_string()),
    }
}

/// A warm miss: how to fetch, and the entry the state searched holds for the
/// key, if any (its memo gives the key's id: no interning then).
type Miss = (Hint, Option<Found>);

/// The user-facing error for an engine fault: a cycle gets the names of its
/// path (`Kind(key)` each, closed by the first again).
pub(crate) fn fault_error(fault: Fault, registry: &Registry) -> Error {
    match fault {
        Fault::Error(e) => e,
        Fault::Cycle(cycle) => {
            let mut path: Vec<QueryRef> = cycle.0.iter().map(|d| query_ref(registry, *d)).collect();
            if let Some(first) = path.first().cloned() {
                path.push(first);
            }
            let error: Error = ErrorKind::Cycle { path }.into();
            tracing::debug!(%error, "query cycle detected");
            error
        }
    }
}

/// Which slots of a fan-out are filled, and whether the result is decided:
/// every slot filled, or (for `try_query_all`) an error whose earlier slots
/// are all filled — so the first error in key order, whatever the timing.
struct Progress {
    filled: Vec<bool>,
    /// Slots `0..prefix` are all filled.
    prefix: usize,
    count: usize,
    /// Stop at the first error in key order.
    first_error: bool,
    /// The lowest slot holding an error.
    error_at: Option<usize>,
}

impl Progress {
    fn new(n: usize, first_error: bool) -> Progress {
        Progress {
            filled: vec![false; n],
            prefix: 0,
            count: 0,
            first_error,
            error_at: None,
        }
    }

    /// Records slot `i` as filled (with an error if `failed`); whether the
    /// result is now decided.
    fn filled(&mut self, i: usize, failed: bool) -> bool {
        if let Some(f) = self.filled.get_mut(i)
            && !*f
        {
            *f = true;
            self.count += 1;
        }
        if failed && self.error_at.is_none_or(|at| i < at) {
            self.error_at = Some(i);
        }
        while self.filled.get(self.prefix).copied().unwrap_or(false) {
            self.prefix += 1;
        }
        self.done()
    }

    /// The slot of the deciding error, if any yet (`try_query_all` only).
    fn decided_at(&self) -> Option<usize> {
        self.error_at.filter(|_| self.first_error)
    }

    fn done(&self) -> bool {
        self.count == self.filled.len() || self.decided_at().is_some_and(|at| self.prefix > at)
    }
}
