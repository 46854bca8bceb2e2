//! The registry: every ingredient (input, query or interned kind) as a
//! type-erased trait object, indexed densely and by `TypeId`, frozen at
//! `build()`. The erased engine talks to ingredients only through
//! [`Ingredient`]; the typed layers (`input.rs`, `query.rs`, `interned.rs`)
//! implement it thinly.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use crate::api::cx::QueryCx;
use crate::api::stats::Counters;
use crate::engine::storage::{History, KeyId, MemoRef, Publish, Table};
use crate::error::{ErrorKind, Result};
use crate::revision::{Durability, Revision};
use crate::util::BoxFuture;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum IngredientKind {
    Input = 1,
    Query = 2,
    Interned = 3,
}

impl IngredientKind {
    pub(crate) fn noun(self) -> &'static str {
        match self {
            IngredientKind::Input => "input",
            IngredientKind::Query => "query",
            IngredientKind::Interned => "interned kind",
        }
    }
}

/// What the erased engine needs from an ingredient. Methods that do not apply
/// to a kind have inert defaults.
pub(crate) trait Ingredient: Any + Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> IngredientKind;
    fn counters(&self) -> &Counters;
    /// A new, empty table for a fresh `State`.
    fn empty_table(&self) -> Table;
    /// `Debug` rendering of the key with this id.
    fn debug_key(&self, key: KeyId) -> String;

    /// The kind's persisted form, if it was registered as persistent.
    fn persist(&self) -> Option<&dyn crate::persist::PersistKind> {
        None
    }

    /// Inputs: the kind's durability.
    fn durability(&self) -> Durability {
        Durability::High
    }
    /// Inputs: when the slot last changed (`ZERO` if never set).
    fn input_changed_at(&self, _table: &Table, _key: KeyId) -> Revision {
        Revision::ZERO
    }

    /// Queries: the memo stored for `key` and the revision it was verified at.
    fn memo(&self, _table: &Table, _key: KeyId) -> Option<(MemoRef, Revision)> {
        None
    }
    /// Queries: every memo in the table (for inspection and persistence).
    fn memos(&self, _table: &Table) -> Vec<(KeyId, MemoRef, Revision)> {
        Vec::new()
    }
    /// Queries: number of memos in the table.
    fn table_len(&self, _table: &Table) -> usize {
        0
    }
    /// Queries: `table` (of a state in `history`) with `items` inserted where
    /// they are verified later than what it holds, or `None` if nothing would
    /// change.
    fn insert_memos(&self, _table: &Table, _items: &[Publish], _history: History) -> Option<Table> {
        None
    }
    /// Queries: runs the body for `key` under `cx` and builds the memo,
    /// comparing with `old` for early cutoff.
    fn execute(
        self: Arc<Self>,
        _cx: QueryCx,
        _key: KeyId,
        _old: Option<MemoRef>,
    ) -> BoxFuture<'static, Result<MemoRef>> {
        Box::pin(async {
            Err(crate::Error::internal(
                "execute called on a non-query ingredient",
            ))
        })
    }
}

/// `TypeId`s are already hashes: use their bits directly.
#[derive(Default, Clone, Copy)]
pub(crate) struct TypeIdHasher(u64);

impl std::hash::Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
}

type TypeIdMap = HashMap<TypeId, u32, std::hash::BuildHasherDefault<TypeIdHasher>>;

/// All ingredients of a database, frozen at `build()`.
pub(crate) struct Registry {
    by_type: TypeIdMap,
    ingredients: Vec<Arc<dyn Ingredient>>,
    /// The declared application code version (S18b), if any.
    pub(crate) code_version: Option<String>,
    /// How long cache I/O waits for another holder of a cache's lock (S18c).
    pub(crate) cache_lock_timeout: std::time::Duration,
}

impl Registry {
    pub(crate) fn get(&self, index: u32) -> Result<&Arc<dyn Ingredient>> {
        self.ingredients
            .get(index as usize)
            .ok_or_else(|| crate::Error::internal(format!("no ingredient {index}")))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Arc<dyn Ingredient>)> {
        self.ingredients
            .iter()
            .enumerate()
            .map(|(i, ing)| (i as u32, ing))
    }

    /// The typed ingredient `T` registered for the kind `K`.
    #[inline]
    pub(crate) fn typed<K: ?Sized + 'static, T: Ingredient>(
        &self,
        expected: IngredientKind,
        register_with: fn() -> String,
    ) -> Result<(u32, &T)> {
        let found = self.by_type.get(&TypeId::of::<K>()).and_then(|&index| {
            let ing = self.ingredients.get(index as usize)?;
            let any: &dyn Any = ing.as_ref();
            any.downcast_ref::<T>().map(|typed| (index, typed))
        });
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
///     async fn execute(&self, cx: &QueryCx, k: u32) -> picante::Result<usize> {
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
    entries: Vec<(TypeId, &'static str, Arc<dyn Ingredient>)>,
    errors: Vec<String>,
    code_version: Option<String>,
    cache_lock_timeout: std::time::Duration,
}

impl DatabaseBuilder {
    pub(crate) fn new() -> Self {
        DatabaseBuilder {
            entries: Vec::new(),
            errors: Vec::new(),
            code_version: None,
            cache_lock_timeout: DEFAULT_CACHE_LOCK_TIMEOUT,
        }
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

    pub(crate) fn push<K: ?Sized + 'static>(mut self, ingredient: Arc<dyn Ingredient>) -> Self {
        self.entries
            .push((TypeId::of::<K>(), std::any::type_name::<K>(), ingredient));
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
        for (_, type_name, ing) in &self.entries {
            if let Some(p) = ing.persist()
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
        for (type_id, type_name, ing) in self.entries {
            if let Some(&prev) = by_type.get(&type_id) {
                let prev: &Arc<dyn Ingredient> = &ingredients[prev as usize];
                return Err(ErrorKind::Registration(format!(
                    "{type_name} registered twice (as {} and as {})",
                    prev.kind().noun(),
                    ing.kind().noun()
                ))
                .into());
            }
            let index = u32::try_from(ingredients.len())
                .map_err(|_| ErrorKind::Registration("too many kinds".into()))?;
            by_type.insert(type_id, index);
            ingredients.push(ing);
        }
        Ok(crate::Database::from_registry(Registry {
            by_type,
            ingredients,
            code_version: self.code_version,
            cache_lock_timeout: self.cache_lock_timeout,
        }))
    }
}
