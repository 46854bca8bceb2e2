//! The public handles: [`Database`], [`Snapshot`], the [`View`] API they share,
//! and [`Batch`].

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::api::cx::fault_error;
use crate::api::events::{EventFilter, Events, Watch};
use crate::api::kinds::{AsyncQuery, Id, Input, Interned};
use crate::api::memory::{Collect, CollectReport, MemoryReport};
use crate::api::registry::DatabaseBuilder;
use crate::api::stats::{ExecutionReason, MemoInfo, QueryStats, Stats};
use crate::engine::fetch::{Found, Hint, fetch_value};
use crate::engine::ingredient::{IngredientKind, Registry};
use crate::engine::limits::Limits;
use crate::engine::storage::{Dep, History, IngredientIndex, MAIN_FORK, MemoRef, State};
use crate::engine::view::{Access, Change, ViewCore};
use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::typed::input::{InputIngredient, InputWrites, PendingWrites};
use crate::typed::interned::InternedIngredient;
use crate::typed::query::{QueryIngredient, Warm};
use crate::util::BoxFuture;

/// A top-level request that left at least this many pending memos merges them.
const FLUSH_AFTER_REQUEST: usize = 64;

/// The read and write API shared by [`Database`] and [`Snapshot`] (both
/// dereference to it). Write functions that take `&View` to accept either.
///
/// Every operation is bound to one revision: a `query` started at revision
/// `r` returns the value at `r` even if inputs change while it runs.
///
/// ```
/// use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult, View};
///
/// struct N;
/// impl Input for N { type Key = (); type Value = u32; }
/// struct Double;
/// #[async_trait]
/// impl AsyncQuery for Double {
///     type Key = ();
///     type Value = u32;
///     async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> {
///         Ok(cx.input::<N>(&())? * 2)
///     }
/// }
///
/// /// Works on the database and on any snapshot.
/// async fn report(view: &View) -> picante::Result<String> {
///     Ok(format!("{} at {}", view.query::<Double>(()).await?, view.revision()))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<N>().query(Double).build()?;
/// let r1 = db.set::<N>((), 1)?;
/// let snap = db.snapshot();
/// let r2 = db.set::<N>((), 2)?;
/// assert_eq!(report(&snap).await?, format!("2 at {r1}"));
/// assert_eq!(report(&db).await?, format!("4 at {r2}"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct View {
    core: Arc<ViewCore>,
}

/// The primary view of a database. Cheap to clone (a pointer); clones are the
/// same database.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use picante::{async_trait, AsyncQuery, Database, Input, QueryCx};
///
/// struct Source;
/// impl Input for Source { type Key = String; type Value = Arc<str>; }
///
/// static RUNS: AtomicUsize = AtomicUsize::new(0);
/// struct Lines;
/// #[async_trait]
/// impl AsyncQuery for Lines {
///     type Key = String;
///     type Value = usize;
///     async fn execute(&self, cx: &QueryCx, path: String) -> picante::QueryResult<usize> {
///         RUNS.fetch_add(1, Ordering::SeqCst);
///         Ok(cx.input::<Source>(&path)?.lines().count())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<Source>().query(Lines).build()?;
/// db.set::<Source>("a.md".into(), "one\ntwo".into())?;
/// assert_eq!(db.query::<Lines>("a.md".into()).await?, 2);
/// assert_eq!(db.query::<Lines>("a.md".into()).await?, 2); // memoized
/// assert_eq!(RUNS.load(Ordering::SeqCst), 1);
///
/// db.set::<Source>("a.md".into(), "one\ntwo\nthree".into())?;
/// assert_eq!(db.query::<Lines>("a.md".into()).await?, 3); // re-ran once
/// assert_eq!(RUNS.load(Ordering::SeqCst), 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Database {
    view: View,
}

/// A view of a database frozen at one revision: `Clone + Send + Sync +
/// 'static`, created in O(1), never torn.
///
/// Queries run in a snapshot see exactly its inputs; the memos it computes
/// are offered back to the database (so the next snapshot does not recompute
/// them). Setting an input on a snapshot forks it: from then on its results
/// reach neither the database nor other views. Clones of a snapshot are the
/// same view; take `snapshot.snapshot()` for an independent one.
///
/// ```
/// # use picante::{Database, Input};
/// # struct Config;
/// # impl Input for Config { type Key = (); type Value = u32; }
/// # fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<Config>().build()?;
/// db.set::<Config>((), 1)?;
/// let snap = db.snapshot();
/// db.set::<Config>((), 2)?;             // the writer does not wait for the snapshot
/// assert_eq!(snap.input::<Config>(&())?, 1);
/// assert_eq!(db.input::<Config>(&())?, 2);
///
/// let fork = db.snapshot();
/// fork.set::<Config>((), 3)?;           // forks: the database is untouched
/// assert_eq!(db.input::<Config>(&())?, 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Snapshot {
    view: View,
}

impl Deref for Database {
    type Target = View;
    fn deref(&self) -> &View {
        &self.view
    }
}

impl Deref for Snapshot {
    type Target = View;
    fn deref(&self) -> &View {
        &self.view
    }
}

impl Database {
    /// Starts registering the kinds of a new database.
    pub fn builder() -> DatabaseBuilder {
        DatabaseBuilder::new()
    }

    pub(crate) fn from_registry(
        registry: Registry,
        limits: Limits,
        attachment: Box<dyn std::any::Any + Send + Sync>,
    ) -> Database {
        Database {
            view: View {
                core: ViewCore::new_database(registry, limits, attachment),
            },
        }
    }
}

impl Database {
    /// Loads the cache saved at `path` (and its log) into this database,
    /// which must be fresh: nothing set or interned yet.
    ///
    /// All or nothing: a missing file is "no cache" (`found: false`); an
    /// unusable one (corrupt, truncated, foreign, larger than
    /// `options.max_bytes`) is an error — or, with [`OnError::Ignore`](crate::OnError::Ignore),
    /// reported in [`LoadReport::ignored_error`](crate::LoadReport::ignored_error) —
    /// and leaves the database exactly as it was. Kinds whose name is unknown
    /// or whose key/value types changed are dropped (see
    /// [`LoadReport::dropped_kinds`](crate::LoadReport::dropped_kinds)).
    /// Loaded memos are reused at once when the load vouches for all of them
    /// ([`LoadReport::verified`](crate::LoadReport::verified)), else
    /// revalidated before reuse; their values are decoded the first time
    /// they are read. Reading and decoding run on tokio's
    /// blocking pool, never on the runtime's worker threads (inline outside a
    /// runtime); the database must not be changed until the load returns.
    /// Holds the cache's lock shared while
    /// reading: it waits for a save or append in progress, up to
    /// [`DatabaseBuilder::cache_lock_timeout`](crate::DatabaseBuilder::cache_lock_timeout),
    /// then fails with [`ErrorKind::CacheLocked`](crate::ErrorKind::CacheLocked)
    /// (ignorable like any unusable file).
    ///
    /// ```
    /// use picante::{async_trait, AsyncQuery, Database, Input, LoadOptions, QueryCx};
    ///
    /// struct Source;
    /// impl Input for Source { type Key = String; type Value = String; }
    /// struct Len;
    /// #[async_trait]
    /// impl AsyncQuery for Len {
    ///     type Key = String;
    ///     type Value = u64;
    ///     async fn execute(&self, cx: &QueryCx, k: String) -> picante::QueryResult<u64> {
    ///         Ok(cx.input::<Source>(&k)?.len() as u64)
    ///     }
    /// }
    /// fn db() -> picante::Result<Database> {
    ///     Database::builder().persistent_input::<Source>().persistent_query(Len).build()
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> picante::Result<()> {
    /// let dir = std::env::temp_dir().join(format!("picante-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).map_err(picante::Error::new)?;
    /// let path = dir.join("cache.bin");
    ///
    /// let first = db()?;
    /// first.set::<Source>("a.md".into(), "hello".into())?;
    /// assert_eq!(first.query::<Len>("a.md".into()).await?, 5);
    /// first.save_cache(&path).await?;
    ///
    /// // A later process: load, then reuse without executing.
    /// let second = db()?;
    /// let report = second.load_cache(&path, LoadOptions::default()).await?;
    /// assert!(report.loaded);
    /// assert_eq!(second.query::<Len>("a.md".into()).await?, 5);
    /// assert_eq!(second.stats().query("Len").unwrap().executions, 0);
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok(()) }
    /// ```
    pub async fn load_cache(
        &self,
        path: impl AsRef<std::path::Path>,
        options: crate::LoadOptions,
    ) -> Result<crate::LoadReport> {
        crate::persist::load(&self.core, path.as_ref(), options).await
    }

    /// Appends the changes since the last save, load or append — input
    /// changes, newly computed memos and interned values of persistent kinds
    /// — to the log beside the cache at `path` (`path` + `.log`). The cost is
    /// proportional to what changed. A crash during an append leaves a torn
    /// record that the next load ignores. Compact with
    /// [`save_cache`](View::save_cache), which writes a new base and drops
    /// the log.
    ///
    /// Runs on tokio's blocking pool, like [`save_cache`](View::save_cache).
    /// Holds the cache's lock (waiting like `save_cache`, then
    /// [`ErrorKind::CacheLocked`](crate::ErrorKind::CacheLocked)). Fails with
    /// [`ErrorKind::CacheReplaced`](crate::ErrorKind::CacheReplaced), writing
    /// nothing, if the cache on disk is no longer the one this database
    /// saved, loaded or appended to (another database replaced the base or
    /// extended the log): call `save_cache` then. The changes are kept for
    /// the next append or save.
    pub async fn append_cache(
        &self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<crate::AppendReport> {
        crate::persist::append(&self.core, path.as_ref()).await
    }
}

impl Snapshot {
    /// Whether this snapshot has set inputs of its own (and so left the
    /// database's history).
    pub fn is_forked(&self) -> bool {
        self.core.is_forked()
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("revision", &self.revision())
            .finish()
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("revision", &self.revision())
            .field("forked", &self.is_forked())
            .finish()
    }
}

impl View {
    fn registry(&self) -> &Registry {
        self.core.shared().registry()
    }

    pub(crate) fn core(&self) -> &Arc<ViewCore> {
        &self.core
    }

    /// A receiver of this view's current revision: it is marked changed
    /// after every commit that changed something (a commit of only equal
    /// values creates no revision and does not wake it). For the database,
    /// also after a cache is loaded. A snapshot's revision changes only when
    /// the snapshot itself is written to (it forks).
    ///
    /// ```
    /// # use picante::{Database, Input};
    /// # struct File;
    /// # impl Input for File { type Key = &'static str; type Value = u32; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<File>().build()?;
    /// let mut revisions = db.subscribe_revisions();
    /// let writer = db.clone();
    /// tokio::spawn(async move { writer.set::<File>("a.md", 1) });
    /// revisions.changed().await.expect("the database is alive");
    /// assert_eq!(*revisions.borrow(), db.revision());
    /// # Ok(()) }
    /// ```
    pub fn subscribe_revisions(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.core.subscribe_revisions()
    }

    /// A subscription to what happens in the database this view belongs to:
    /// which inputs each commit changed and, with
    /// [`EventFilter::InputsAndExecutions`], which query bodies ran and
    /// whether their value was cut off. Events are buffered (4096 per
    /// subscriber); a subscriber that falls further behind receives
    /// [`Event::Missed`](crate::Event::Missed).
    ///
    /// ```
    /// # use picante::{Database, Event, EventFilter, Input};
    /// # struct File;
    /// # impl Input for File { type Key = &'static str; type Value = u32; }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<File>().build()?;
    /// let mut events = db.subscribe_events(EventFilter::Inputs);
    /// db.batch().set::<File>("a.md", 1).remove::<File>(&"b.md").commit()?;
    /// let Some(Event::InputsChanged { revision, changes, .. }) = events.recv().await else {
    ///     panic!("expected an input event")
    /// };
    /// assert_eq!(revision, db.revision());
    /// assert_eq!(changes[0].to_string(), "File(\"a.md\") set");
    /// # Ok(()) }
    /// ```
    pub fn subscribe_events(&self, filter: EventFilter) -> Events {
        Events::new(self.core.shared(), filter)
    }

    /// Drops the memos that the last `rule`'s revisions did not use, and
    /// the input tombstones written before them (see [`Collect`]), from this
    /// view. Creates no revision; results never change, only work (a
    /// collected memo re-executes when next needed). Collected memos are not
    /// in the next saved cache.
    ///
    /// ```
    /// # use picante::{async_trait, AsyncQuery, Collect, Database, Input, QueryCx};
    /// # struct File;
    /// # impl Input for File { type Key = u32; type Value = u32; }
    /// # struct Len;
    /// # #[async_trait] impl AsyncQuery for Len { type Key = u32; type Value = u32;
    /// #   async fn execute(&self, cx: &QueryCx, k: u32) -> picante::QueryResult<u32> {
    /// #     Ok(cx.input_opt::<File>(&k)?.unwrap_or(0)) } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<File>().query(Len).build()?;
    /// db.set::<File>(1, 10)?;
    /// db.query::<Len>(1).await?;
    /// db.remove::<File>(&1)?;                    // the page is deleted
    /// for n in 0..10 { db.set::<File>(2, n)?; }  // and the session goes on
    /// let report = db.collect(Collect::unused_for(5));
    /// assert_eq!((report.memos, report.tombstones), (1, 1));
    /// # Ok(()) }
    /// ```
    pub fn collect(&self, rule: Collect) -> CollectReport {
        let before = self.revision().as_u64().saturating_sub(rule.unused_for);
        let swept = self.core.collect(Revision::from_u64(before));
        CollectReport {
            memos: swept.memos,
            tombstones: swept.tombstones,
        }
    }

    /// What this view holds, per kind: entries, tombstones, keys and
    /// estimated bytes (see [`MemoryReport`]).
    pub fn memory(&self) -> MemoryReport {
        self.core.merge_pending();
        MemoryReport::of(self.registry(), &self.core.load())
    }

    /// Watches query `Q` at `key`: a stream of its value, first the current
    /// one, then one item for each new revision that changes it (see
    /// [`Watch`]).
    ///
    /// ```
    /// # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx};
    /// # struct File;
    /// # impl Input for File { type Key = &'static str; type Value = String; }
    /// struct Words;
    /// #[async_trait]
    /// impl AsyncQuery for Words {
    ///     type Key = &'static str;
    ///     type Value = usize;
    ///     async fn execute(&self, cx: &QueryCx, path: &'static str) -> picante::QueryResult<usize> {
    ///         Ok(cx.input::<File>(&path)?.split_whitespace().count())
    ///     }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<File>().query(Words).build()?;
    /// db.set::<File>("a.md", "one two".into())?;
    /// let mut words = db.watch::<Words>("a.md");
    /// assert_eq!(words.next_value().await?, 2);
    ///
    /// db.set::<File>("a.md", "three four".into())?; // same count: nothing to yield
    /// db.set::<File>("a.md", "five six seven".into())?;
    /// assert_eq!(words.next_value().await?, 3);
    /// # Ok(()) }
    /// ```
    pub fn watch<Q: AsyncQuery>(&self, key: Q::Key) -> Watch<Q> {
        Watch::new(self.clone(), key)
    }

    /// The current revision of this view.
    pub fn revision(&self) -> Revision {
        self.core.load().revision
    }

    /// Reads query `Q` at `key`: a memo verified at the current revision if
    /// there is one (no lock, no allocation), else revalidates or executes.
    ///
    /// Concurrent requests for the same key at the same revision, from any
    /// task or snapshot, execute it once. Dropping the returned future is not
    /// an error; other waiters still get the result.
    pub async fn query<Q: AsyncQuery>(&self, key: Q::Key) -> Result<Q::Value> {
        let (index, ing) = QueryIngredient::<Q>::lookup_in(self.registry())?;
        let state = self.core.load();
        let warm =
            ing.warm::<true>(&state, index, &key, state.revision, History::of(state.fork))?;
        let (hint, found) = match warm {
            Warm::Hit(_, result) => return result,
            miss => miss.into_miss().unwrap_or((Hint::None, None)),
        };
        let pinned = arc_swap::Guard::into_inner(state);
        self.cold::<Q>(ing, index, key, hint, found, pinned).await
    }

    /// The rest of [`query`](Self::query) after a warm miss, boxed and kept
    /// out of line so the hit path stays small. `found` is the entry the
    /// `pinned` state holds for `key`.
    #[inline(never)]
    fn cold<'a, Q: AsyncQuery>(
        &'a self,
        ing: &'a QueryIngredient<Q>,
        index: IngredientIndex,
        key: Q::Key,
        hint: Hint,
        found: Option<Found>,
        pinned: Arc<State>,
    ) -> BoxFuture<'a, Result<Q::Value>> {
        Box::pin(async move {
            let key_id = match &found {
                Some((memo, _)) => memo.meta().key,
                None => ing.key_id(&key)?,
            };
            let access = Access::top_level(&self.core, pinned);
            let result = fetch_value::<Q::Value>(&access, index, key_id, hint, found).await;
            // A request that computed much makes its memos lock-free hits for
            // the next one; small leftovers wait for the next merge.
            access.flush_if(FLUSH_AFTER_REQUEST);
            result.map_err(|fault| fault_error(fault, self.registry()))
        })
    }

    /// Reads input `I` at `key`; an absent key is an error
    /// ([`ErrorKind::MissingInput`](crate::ErrorKind::MissingInput)).
    pub fn input<I: Input>(&self, key: &I::Key) -> Result<I::Value> {
        self.input_opt::<I>(key)?.ok_or_else(|| {
            crate::ErrorKind::MissingInput {
                input: InputIngredient::<I>::name_of(),
                key: crate::util::debug_string(key),
            }
            .into()
        })
    }

    /// Reads input `I` at `key`, `None` if absent.
    pub fn input_opt<I: Input>(&self, key: &I::Key) -> Result<Option<I::Value>> {
        let (index, ing) = InputIngredient::<I>::lookup_in(self.registry())?;
        Ok(ing.read(&self.core.load(), index, key)?.0)
    }

    /// Every present key and value of input kind `I`, in no particular order.
    pub fn inputs<I: Input>(&self) -> Result<Vec<(I::Key, I::Value)>> {
        let (index, ing) = InputIngredient::<I>::lookup_in(self.registry())?;
        ing.entries(&self.core.load(), index)
    }

    /// Sets input `I` at `key`. Returns the new revision, or the current one
    /// if `value` equals the stored value (a no-op: nothing is invalidated).
    ///
    /// ```
    /// # use picante::{Database, Input};
    /// # struct Config;
    /// # impl Input for Config { type Key = (); type Value = u32; }
    /// # fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<Config>().build()?;
    /// let r1 = db.set::<Config>((), 1)?;
    /// assert_eq!(db.set::<Config>((), 1)?, r1);   // same value: no new revision
    /// assert!(db.set::<Config>((), 2)? > r1);
    /// # Ok(()) }
    /// ```
    pub fn set<I: Input>(&self, key: I::Key, value: I::Value) -> Result<Revision> {
        let mut batch = self.batch();
        batch.set::<I>(key, value);
        batch.commit()
    }

    /// Removes input `I` at `key`. A new revision if it was present, else a no-op.
    pub fn remove<I: Input>(&self, key: &I::Key) -> Result<Revision> {
        let mut batch = self.batch();
        batch.remove::<I>(key);
        batch.commit()
    }

    /// Starts a batch of sets and removes applied atomically by
    /// [`Batch::commit`].
    ///
    /// ```
    /// # use picante::{Database, Input};
    /// # struct File;
    /// # impl Input for File { type Key = &'static str; type Value = u32; }
    /// # fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<File>().build()?;
    /// let r0 = db.revision();
    /// let mut batch = db.batch();
    /// batch.set::<File>("a", 1).set::<File>("b", 2).set::<File>("a", 3);
    /// let r1 = batch.commit()?;
    /// assert_eq!(r1.as_u64(), r0.as_u64() + 1);   // one revision for the whole batch
    /// assert_eq!(db.input::<File>(&"a")?, 3);       // the later write wins
    /// # Ok(()) }
    /// ```
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            view: self,
            writes: Vec::new(),
            error: None,
        }
    }

    /// Interns `value`, returning its id (the same id for equal values).
    /// Interning never advances the revision nor invalidates anything.
    pub fn intern<T: Interned>(&self, value: T::Value) -> Result<Id<T>> {
        InternedIngredient::<T>::lookup_in(self.registry())?.intern(value)
    }

    /// The value of an interned id.
    pub fn lookup<T: Interned>(&self, id: Id<T>) -> Result<T::Value> {
        InternedIngredient::<T>::lookup_in(self.registry())?.value(id)
    }

    /// A snapshot of this view at its current revision, in O(1).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            view: View {
                core: self.core.snapshot(),
            },
        }
    }

    /// Saves the inputs, interned values and memos of persistent kinds at
    /// this view's revision to `path`, crash-safely (a temporary file in the
    /// same directory, fsync, atomic rename). Works on a snapshot while the
    /// database moves on. Also compacts: any log beside `path` is dropped.
    ///
    /// The state is taken when the returned future is first polled; encoding
    /// and writing (with fsync) run on tokio's blocking pool
    /// (`spawn_blocking`), never on the runtime's worker threads, so other
    /// tasks keep running. Outside a tokio runtime it runs inline. Once
    /// started, the write completes even if the future is dropped.
    ///
    /// Holds the cache's lock (`path` + `.lock`) while writing: if another
    /// save, append or load of it is in progress, in this process or another,
    /// waits for it up to [`DatabaseBuilder::cache_lock_timeout`](crate::DatabaseBuilder::cache_lock_timeout),
    /// then fails with [`ErrorKind::CacheLocked`](crate::ErrorKind::CacheLocked).
    pub async fn save_cache(&self, path: impl AsRef<std::path::Path>) -> Result<crate::SaveReport> {
        crate::persist::save(&self.core, path.as_ref()).await
    }

    /// Counters of query kind `Q` (summed over all views of the database).
    pub fn query_stats<Q: AsyncQuery>(&self) -> Result<QueryStats> {
        let (_, ing) = QueryIngredient::<Q>::lookup_in(self.registry())?;
        let c = crate::engine::ingredient::Ingredient::counters(ing);
        Ok(QueryStats {
            name: crate::engine::ingredient::Ingredient::name(ing).to_string(),
            executions: c.executions.get(),
            hits: c.hits.get(),
            revalidations: c.revalidations.get(),
            cutoffs: c.cutoffs.get(),
            evictions: c.evictions.get(),
        })
    }

    /// Counters of every query kind (summed over all views of the database).
    pub fn stats(&self) -> Stats {
        let (queries, types) = self
            .registry()
            .iter()
            .filter(|(_, ing)| ing.kind() == IngredientKind::Query)
            .map(|(_, ing)| {
                let c = ing.counters();
                let stats = QueryStats {
                    name: ing.name().to_string(),
                    executions: c.executions.get(),
                    hits: c.hits.get(),
                    revalidations: c.revalidations.get(),
                    cutoffs: c.cutoffs.get(),
                    evictions: c.evictions.get(),
                };
                let any: &dyn std::any::Any = ing.as_ref();
                (stats, any.type_id())
            })
            .unzip();
        Stats {
            queries,
            dependency_checks: self.core.shared().dependency_checks().get(),
            in_flight: self.core.shared().inflight().len(),
            types,
        }
    }

    /// What this view's memo for `Q(key)` records: when it was verified,
    /// executed and last changed, its dependencies, and why it last ran.
    /// `None` if this view holds no memo for it.
    ///
    /// ```
    /// # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, ExecutionReason, QueryRef};
    /// # struct N; impl Input for N { type Key = (); type Value = u32; }
    /// # struct Double;
    /// # #[async_trait] impl AsyncQuery for Double { type Key = (); type Value = u32;
    /// #   async fn execute(&self, cx: &QueryCx, _: ()) -> picante::QueryResult<u32> { Ok(cx.input::<N>(&())? * 2) } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<N>().query(Double).build()?;
    /// db.set::<N>((), 1)?;
    /// db.query::<Double>(()).await?;
    /// db.set::<N>((), 2)?;
    /// db.query::<Double>(()).await?;
    /// let info = db.inspect::<Double>(&())?.expect("memoized");
    /// assert_eq!(info.dependencies, vec!["N(())".to_string()]);
    /// assert_eq!(info.reason, ExecutionReason::DependencyChanged(QueryRef::new("N", "()")));
    /// # Ok(()) }
    /// ```
    pub fn inspect<Q: AsyncQuery>(&self, key: &Q::Key) -> Result<Option<MemoInfo>> {
        let (index, _) = QueryIngredient::<Q>::lookup_in(self.registry())?;
        self.core.merge_pending();
        let state = self.core.load();
        let table: &crate::engine::storage::MemoTable<Q::Key, Q::Value> = state.table(index)?;
        let Some(entry) = table.get(key) else {
            return Ok(None);
        };
        Ok(Some(self.memo_info(
            Dep {
                ingredient: index,
                key: entry.memo.meta.key,
            },
            &(entry.memo.clone() as MemoRef),
            entry.memo.meta.effective_verified(
                entry.verified_at,
                state.revision,
                state.fork == MAIN_FORK,
            ),
        )))
    }

    fn memo_info(&self, dep: Dep, memo: &MemoRef, verified_at: Revision) -> MemoInfo {
        let registry = self.registry();
        let meta = memo.meta();
        MemoInfo {
            name: registry.describe(dep),
            verified_at,
            changed_at: meta.changed_at,
            executed_at: meta.executed_at,
            durability: meta.durability,
            is_error: memo.error().is_some(),
            dependencies: meta.deps.iter().map(|e| registry.describe(e.dep)).collect(),
            reason: ExecutionReason::of(meta.reason, registry),
        }
    }

    /// Every memo this view holds, with its metadata.
    pub fn memos(&self) -> Vec<MemoInfo> {
        self.core.merge_pending();
        let state = self.core.load();
        let mut out = Vec::new();
        for (index, ing) in self.registry().iter() {
            let Some(table) = state.tables.get(index.as_usize()) else {
                continue;
            };
            for (key, memo, entry_verified) in ing.memos(table) {
                let main = state.fork == MAIN_FORK;
                let verified_at =
                    memo.meta()
                        .effective_verified(entry_verified, state.revision, main);
                out.push(self.memo_info(
                    Dep {
                        ingredient: index,
                        key,
                    },
                    &memo,
                    verified_at,
                ));
            }
        }
        out
    }

    /// The dependency graph of every memo this view holds, in Graphviz DOT.
    pub fn dependency_graph(&self) -> String {
        let mut dot = String::from("digraph picante {\n  rankdir=LR;\n");
        for info in self.memos() {
            let shape = if info.is_error { " [color=red]" } else { "" };
            dot.push_str(&format!("  {:?}{shape};\n", info.name));
            for d in &info.dependencies {
                dot.push_str(&format!("  {:?} -> {:?};\n", info.name, d));
            }
        }
        dot.push_str("}\n");
        dot
    }
}

/// Sets and removes applied atomically: readers see all of them or none, and
/// the whole batch advances the revision once (or not at all if every final
/// value equals the stored one). Later writes to the same slot win.
///
/// Built by [`View::batch`]. Using an unregistered input kind makes
/// [`commit`](Batch::commit) fail without applying anything.
///
/// ```
/// # use picante::{Database, Input};
/// struct File;
/// impl Input for File { type Key = &'static str; type Value = String; }
/// struct Unregistered;
/// impl Input for Unregistered { type Key = (); type Value = u32; }
///
/// # fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<File>().build()?;
/// let r = db.batch().set::<File>("a.md", "one".into()).set::<File>("b.md", "two".into()).commit()?;
/// assert_eq!(r, db.revision());
///
/// // All or nothing: one bad write and nothing is applied.
/// let mut batch = db.batch();
/// batch.remove::<File>(&"a.md").set::<Unregistered>((), 1);
/// assert!(batch.commit().is_err());
/// assert_eq!(db.input::<File>(&"a.md")?, "one");
/// assert_eq!(db.revision(), r);
/// # Ok(()) }
/// ```
#[must_use = "a batch does nothing until committed"]
pub struct Batch<'v> {
    view: &'v View,
    writes: Vec<(IngredientIndex, Box<dyn PendingWrites>)>,
    error: Option<Error>,
}

impl Batch<'_> {
    fn push<I: Input>(&mut self, key: I::Key, value: Option<I::Value>) -> &mut Self {
        let found = InputIngredient::<I>::lookup_in(self.view.registry());
        let index = match found {
            Ok((index, _)) => index,
            Err(e) => {
                self.error.get_or_insert(e);
                return self;
            }
        };
        let writes = match self.writes.iter_mut().find(|(i, _)| *i == index) {
            Some((_, w)) => w,
            None => {
                self.writes
                    .push((index, Box::new(InputWrites::<I> { ops: Vec::new() })));
                let Some((_, w)) = self.writes.last_mut() else {
                    return self;
                };
                w
            }
        };
        if let Some(w) = writes.as_any_mut().downcast_mut::<InputWrites<I>>() {
            w.ops.push((key, value));
        }
        self
    }

    /// Sets input `I` at `key` to `value`.
    pub fn set<I: Input>(&mut self, key: I::Key, value: I::Value) -> &mut Self {
        self.push::<I>(key, Some(value))
    }

    /// Removes input `I` at `key`.
    pub fn remove<I: Input>(&mut self, key: &I::Key) -> &mut Self {
        self.push::<I>(key.clone(), None)
    }

    /// Applies the batch (and empties it). Returns the new revision, or the
    /// current one if nothing changed. Takes `&mut self` so that a batch
    /// chains: `db.batch().set::<I>(k, v).remove::<I>(&j).commit()`.
    ///
    /// ```
    /// # use picante::{Database, Input};
    /// # struct File;
    /// # impl Input for File { type Key = &'static str; type Value = u32; }
    /// # fn main() -> picante::Result<()> {
    /// let db = Database::builder().input::<File>().build()?;
    /// db.batch().set::<File>("a", 1).set::<File>("b", 2).commit()?;
    /// assert_eq!(db.input::<File>(&"b")?, 2);
    /// # Ok(()) }
    /// ```
    pub fn commit(&mut self) -> Result<Revision> {
        if let Some(e) = self.error.take() {
            self.writes.clear();
            return Err(e);
        }
        let registry = self.view.registry();
        let writes = std::mem::take(&mut self.writes);
        self.view.core.commit(|state, revision| {
            let mut changes = Vec::new();
            for (index, w) in writes {
                let ing = registry.get(index)?;
                let table = state
                    .tables
                    .get(index.as_usize())
                    .ok_or_else(|| Error::internal("missing input table"))?;
                if let Some((table, keys)) = w.apply(&**ing, table, revision)? {
                    changes.push(Change {
                        index,
                        table,
                        durability: ing.durability(),
                        keys,
                    });
                }
            }
            Ok(changes)
        })
    }
}
