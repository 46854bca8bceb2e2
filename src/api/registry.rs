//! The builder: registers kinds into the engine's registry, frozen at
//! `build()`, and looks typed ingredients up for the public API (with the
//! error a user sees for a kind that was not registered).

use std::any::TypeId;
use std::sync::Arc;

use crate::api::memory::Collect;
use crate::engine::ingredient::{Ingredient, IngredientKind, Registry, TypeIdMap};
use crate::engine::limits::Limits;
use crate::engine::storage::IngredientIndex;
use crate::error::{ErrorKind, Result};
use crate::persist::{PersistKind, Persistence};

/// Finding a kind's typed ingredient.
pub(crate) trait TypedLookup {
    /// The typed ingredient `T` registered for the kind `K`, or an error
    /// naming the kind and the builder call that registers it.
    fn typed<K: ?Sized + 'static, T: Ingredient>(
        &self,
        expected: IngredientKind,
        register_with: fn() -> String,
    ) -> Result<(IngredientIndex, &T)>;
}

impl TypedLookup for Registry {
    #[inline]
    fn typed<K: ?Sized + 'static, T: Ingredient>(
        &self,
        expected: IngredientKind,
        register_with: fn() -> String,
    ) -> Result<(IngredientIndex, &T)> {
        let found = self
            .index_of(TypeId::of::<K>())
            .and_then(|index| Some((index, self.downcast::<T>(index)?)));
        found.ok_or_else(|| {
            ErrorKind::Unregistered {
                expected: expected.noun(),
                type_name: std::any::type_name::<K>(),
                register_with: register_with(),
            }
            .into()
        })
    }
}

/// One registered kind.
struct Entry {
    type_id: TypeId,
    type_name: &'static str,
    ingredient: Arc<dyn Ingredient>,
    persist: Option<Arc<dyn PersistKind>>,
}

/// The default of [`DatabaseBuilder::cache_lock_timeout`].
const DEFAULT_CACHE_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Collects ingredients; see [`Database::builder`](crate::Database::builder).
///
/// ```
/// use picante::{async_trait, AsyncQuery, Database, Input, Interned, QueryCx};
///
/// struct Text;
/// impl Input for Text { type Key = u32; type Value = String; }
/// struct Len;
/// #[async_trait]
/// impl AsyncQuery for Len {
///     type Key = u32;
///     type Value = usize;
///     async fn execute(&self, cx: &QueryCx, k: u32) -> picante::QueryResult<usize> {
///         Ok(cx.input::<Text>(&k)?.len())
///     }
/// }
/// struct Word;
/// impl Interned for Word { type Value = String; }
///
/// let db = Database::builder().input::<Text>().query(Len).interned::<Word>().build()?;
///
/// // Registering a kind twice is refused:
/// let err = Database::builder().input::<Text>().input::<Text>().build().unwrap_err();
/// assert!(err.to_string().contains("registered twice"));
/// # Ok::<(), picante::Error>(())
/// ```
#[must_use = "call .build() to get a Database"]
pub struct DatabaseBuilder {
    entries: Vec<Entry>,
    errors: Vec<String>,
    code_version: Option<String>,
    cache_lock_timeout: std::time::Duration,
    cache_progress: Option<crate::persist::ProgressFn>,
    capacities: Vec<(TypeId, &'static str, usize)>,
    collect: Option<Collect>,
}

impl DatabaseBuilder {
    pub(crate) fn new() -> Self {
        DatabaseBuilder {
            entries: Vec::new(),
            errors: Vec::new(),
            code_version: None,
            cache_lock_timeout: DEFAULT_CACHE_LOCK_TIMEOUT,
            cache_progress: None,
            capacities: Vec::new(),
            collect: None,
        }
    }

    /// Bounds the memos query kind `Q` keeps to about `memos` per view (at
    /// most an eighth more between evictions): beyond it, the memos verified
    /// least recently are dropped entirely, and re-execute if needed again.
    /// Results never depend on it; only work does. Recency is the revision
    /// a memo was last used at, which costs the warm-hit path nothing; among
    /// memos last used at one revision, those of the keys first seen
    /// earliest go first (a choice, not an order of use), so give a
    /// capacity above what one revision uses, or every revision recomputes.
    /// `Q` must be registered (before or after this call).
    ///
    /// ```
    /// # use picante::{async_trait, AsyncQuery, Database, QueryCx};
    /// # struct Render;
    /// # #[async_trait] impl AsyncQuery for Render { type Key = u32; type Value = u32;
    /// #   async fn execute(&self, _: &QueryCx, k: u32) -> picante::QueryResult<u32> { Ok(k) } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> picante::Result<()> {
    /// let db = Database::builder().query(Render).capacity::<Render>(100).build()?;
    /// for page in 0..1000 {
    ///     db.query::<Render>(page).await?;
    /// }
    /// assert!(db.memory().memos() <= 100 + 100 / 8);
    /// # Ok(()) }
    /// ```
    pub fn capacity<Q: crate::AsyncQuery>(mut self, memos: usize) -> Self {
        if memos == 0 {
            return self.fail(format!(
                "capacity::<{}>(0): a capacity must be at least 1",
                std::any::type_name::<Q>()
            ));
        }
        self.capacities
            .push((TypeId::of::<Q>(), std::any::type_name::<Q>(), memos));
        self
    }

    /// Collects garbage automatically: after every `rule.every(..)`-th
    /// revision, the memos and tombstones that the last
    /// `Collect::unused_for(..)` revisions did not use are dropped (see
    /// [`Collect`] and [`View::collect`](crate::View::collect)).
    ///
    /// ```
    /// use picante::{Collect, Database};
    /// let db = Database::builder().collect_garbage(Collect::unused_for(200)).build()?;
    /// # Ok::<(), picante::Error>(())
    /// ```
    pub fn collect_garbage(mut self, rule: Collect) -> Self {
        self.collect = Some(rule);
        self
    }

    /// How long `save_cache`, `append_cache` and `load_cache` wait for a
    /// cache file's lock while another process (or another database of this
    /// one) saves, appends or loads it (S18c: one writer per cache file).
    /// After that they fail with
    /// [`ErrorKind::CacheLocked`](crate::ErrorKind::CacheLocked). Default
    /// 10 seconds; `Duration::ZERO` fails at once. The wait happens on
    /// tokio's blocking pool, never on a runtime worker thread.
    ///
    /// ```
    /// use std::time::Duration;
    /// let db = picante::Database::builder()
    ///     .cache_lock_timeout(Duration::from_millis(500))
    ///     .build()?;
    /// # Ok::<(), picante::Error>(())
    /// ```
    pub fn cache_lock_timeout(mut self, wait: std::time::Duration) -> Self {
        self.cache_lock_timeout = wait;
        self
    }

    /// Calls `report` with the progress of this database's
    /// [`save_cache`](crate::View::save_cache),
    /// [`load_cache`](crate::Database::load_cache) and
    /// [`append_cache`](crate::Database::append_cache): at the start of each
    /// step, at most every 50 ms during it, at its end, and once with
    /// [`CacheStep::Done`](crate::CacheStep::Done) when the operation is
    /// over (also after an error). It runs on the thread doing the I/O
    /// (tokio's blocking pool), so it should only record or print. A panic
    /// in it is logged and ignored. The same figures are `debug` tracing
    /// events (`"cache progress"`).
    ///
    /// ```
    /// use picante::{CacheStep, Database};
    /// let db = Database::builder()
    ///     .cache_progress(|p| {
    ///         if p.step != CacheStep::Done && p.total > 0 {
    ///             eprint!("\r{:?} {:?}: {}%", p.operation, p.step, 100 * p.done / p.total);
    ///         }
    ///     })
    ///     .build()?;
    /// # Ok::<(), picante::Error>(())
    /// ```
    pub fn cache_progress(
        mut self,
        report: impl Fn(&crate::CacheProgress) + Send + Sync + 'static,
    ) -> Self {
        self.cache_progress = Some(std::sync::Arc::new(report));
        self
    }

    /// Declares the version of the application's code, for the persisted
    /// cache (S18b). By default a cache records a fingerprint of the running
    /// executable (its size, modification time and a hash of its first and
    /// last 64 KiB), and a load by any other build drops every memo, since
    /// any query's code may have changed. With a declared version, memos are
    /// kept across builds that declare the same version, and each query
    /// kind's [`AsyncQuery::VERSION`](crate::AsyncQuery::VERSION) drops just
    /// that kind's memos when bumped. Declare one only if you bump it (or the
    /// kind's `VERSION`) whenever a persistent query's code changes what it
    /// computes: a memo of the old code is otherwise served.
    ///
    /// ```
    /// use picante::Database;
    /// let db = Database::builder().code_version(env!("CARGO_PKG_VERSION")).build()?;
    /// # Ok::<(), picante::Error>(())
    /// ```
    pub fn code_version(mut self, version: impl Into<String>) -> Self {
        self.code_version = Some(version.into());
        self
    }

    /// Records a registration error; `build()` will report it.
    pub(crate) fn fail(mut self, error: String) -> Self {
        self.errors.push(error);
        self
    }

    /// Registers `ingredient` for the kind `K` (in memory only).
    pub(crate) fn push<K: ?Sized + 'static>(mut self, ingredient: Arc<dyn Ingredient>) -> Self {
        self.entries.push(Entry {
            type_id: TypeId::of::<K>(),
            type_name: std::any::type_name::<K>(),
            ingredient,
            persist: None,
        });
        self
    }

    /// Registers `ingredient` for the kind `K`, persisted through `persist`
    /// (the kind's persisted side: its codec over the ingredient).
    pub(crate) fn push_persistent<K: ?Sized + 'static>(
        mut self,
        ingredient: Arc<dyn Ingredient>,
        persist: Arc<dyn PersistKind>,
    ) -> Self {
        self.entries.push(Entry {
            type_id: TypeId::of::<K>(),
            type_name: std::any::type_name::<K>(),
            ingredient,
            persist: Some(persist),
        });
        self
    }

    /// Freezes the registry. Fails if a kind was registered twice, if two
    /// persistent kinds share a name, or if a persistent kind's types cannot
    /// be persisted faithfully.
    pub fn build(self) -> Result<crate::Database> {
        if !self.errors.is_empty() {
            return Err(ErrorKind::Registration(self.errors.join("; ")).into());
        }
        let mut names = std::collections::HashSet::new();
        for Entry {
            type_name, persist, ..
        } in &self.entries
        {
            if let Some(p) = persist
                && !names.insert(p.codec_name().to_string())
            {
                return Err(ErrorKind::Registration(format!(
                    "two persistent kinds are named {:?} (the second is {type_name}); \
                     give one another name with the `_as` registration",
                    p.codec_name()
                ))
                .into());
            }
        }
        let mut by_type = TypeIdMap::default();
        let mut ingredients = Vec::with_capacity(self.entries.len());
        let mut persist_kinds = Vec::with_capacity(self.entries.len());
        for Entry {
            type_id,
            type_name,
            ingredient: ing,
            persist,
        } in self.entries
        {
            if let Some(&prev) = by_type.get(&type_id) {
                let prev: &Arc<dyn Ingredient> = &ingredients[prev.as_usize()];
                return Err(ErrorKind::Registration(format!(
                    "{type_name} registered twice (as {} and as {})",
                    prev.kind().noun(),
                    ing.kind().noun()
                ))
                .into());
            }
            let index = u32::try_from(ingredients.len())
                .map(IngredientIndex::new)
                .map_err(|_| ErrorKind::Registration("too many kinds".into()))?;
            by_type.insert(type_id, index);
            ingredients.push(ing);
            persist_kinds.push(persist);
        }
        let mut capacity = vec![None; ingredients.len()];
        for (type_id, type_name, memos) in &self.capacities {
            match by_type.get(type_id) {
                Some(&i) if ingredients[i.as_usize()].kind() == IngredientKind::Query => {
                    capacity[i.as_usize()] = Some(*memos);
                }
                _ => {
                    return Err(ErrorKind::Registration(format!(
                        "capacity::<{type_name}>() names a kind that is not registered as a query"
                    ))
                    .into());
                }
            }
        }
        let limits = Limits {
            capacity: capacity.into_boxed_slice(),
            collect: self.collect.map(Collect::rule),
        };
        let persistence = Persistence::new(
            persist_kinds,
            self.code_version,
            self.cache_lock_timeout,
            self.cache_progress,
        );
        Ok(crate::Database::from_registry(
            Registry::new(by_type, ingredients),
            limits,
            Box::new(persistence),
        ))
    }
}
