//! The three kinds a database is built from: inputs, derived (async) queries,
//! and interned values.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use async_trait::async_trait;

use crate::{Durability, QueryCx, QueryResult};

/// Bounds every key satisfies: `Clone + Eq + Hash + Debug + Send + Sync + 'static`.
///
/// Implemented for every such type; you never implement it yourself.
pub trait Key: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static> Key for T {}

/// Bounds every value satisfies: `Clone + PartialEq + Send + Sync + 'static`.
///
/// Early cutoff compares values with `==`. Wrap large values in `Arc` so that
/// cloning a memoized value is a pointer copy.
pub trait Value: Clone + PartialEq + Send + Sync + 'static {}
impl<T: Clone + PartialEq + Send + Sync + 'static> Value for T {}

/// An input kind: values the outside world sets, keyed by `Key`.
///
/// ```
/// use std::sync::Arc;
/// use picante::{Durability, Input};
///
/// struct SourceFile;
/// impl Input for SourceFile {
///     type Key = String;        // a path
///     type Value = Arc<str>;    // its text
/// }
///
/// struct Config;
/// impl Input for Config {
///     type Key = ();
///     type Value = Arc<str>;
///     const DURABILITY: Durability = Durability::High; // rarely changes
/// }
/// ```
pub trait Input: Send + Sync + 'static {
    /// The key type.
    type Key: Key;
    /// The value type.
    type Value: Value;
    /// How often values of this kind change (default `Low`). See [`Durability`].
    const DURABILITY: Durability = Durability::Low;
}

/// A derived query kind: an `async fn` from a key to a value, memoized.
///
/// Every read the body makes through `cx` (inputs, including absent ones, and
/// other queries) is recorded as a dependency of this execution. The body may
/// `join!` sub-queries, fan out with
/// [`QueryCx::query_all`](crate::QueryCx::query_all), or `tokio::spawn` work
/// with clones of `cx`; all reads are recorded.
///
/// Implement it with `#[async_trait]` (re-exported as
/// [`picante::async_trait`](crate::async_trait)) on the impl block, and write
/// `execute` as the plain `async fn` shown here; the attribute turns it into
/// a method returning a boxed `Send` future, which is what lets a database
/// run any query on any worker thread. The body's future must therefore be
/// `Send`: hold no `Rc` or `std::sync::MutexGuard` across an `.await`.
///
/// ```
/// use std::sync::Arc;
/// use picante::{async_trait, AsyncQuery, Input, QueryCx};
///
/// struct SourceFile;
/// impl Input for SourceFile { type Key = String; type Value = Arc<str>; }
///
/// struct WordCount;
/// #[async_trait]
/// impl AsyncQuery for WordCount {
///     type Key = String;
///     type Value = usize;
///     async fn execute(&self, cx: &QueryCx, path: String) -> picante::QueryResult<usize> {
///         let text = cx.input::<SourceFile>(&path)?;
///         Ok(text.split_whitespace().count())
///     }
/// }
/// ```
// Rustdoc shows the trait as written (a plain `async fn execute`), not the
// `#[async_trait]` expansion (lifetimes and a `Pin<Box<dyn Future>>`).
#[cfg_attr(not(doc), async_trait)]
#[cfg_attr(doc, allow(async_fn_in_trait))]
pub trait AsyncQuery: Send + Sync + 'static {
    /// The key type.
    type Key: Key;
    /// The value type.
    type Value: Value;

    /// The version of this query's code, for the persisted cache (S18b):
    /// bump it when `execute` changes what it computes, and memos of this
    /// kind saved under another version are dropped at load (its dependents
    /// revalidate normally). This is what makes a declared
    /// [`code_version`](crate::DatabaseBuilder::code_version) precise;
    /// without one, any change of the executable drops every memo anyway.
    const VERSION: u32 = 0;

    /// Computes the value for `key`, reading the database only through `cx`.
    ///
    /// Returns a [`QueryResult`](crate::QueryResult): `?` converts any
    /// `std::error::Error + Send + Sync` and picante's own errors. Returning
    /// `Err` (or panicking) memoizes the error for this revision; a later
    /// revision at which a dependency changed runs the body again.
    ///
    /// (Written `async fn` through `#[async_trait]`: the implementation
    /// actually returns `Pin<Box<dyn Future<Output = QueryResult<Self::Value>>
    /// + Send + '_>>`.)
    async fn execute(&self, cx: &QueryCx, key: Self::Key) -> QueryResult<Self::Value>;
}

/// An interned kind: values mapped to small copyable [`Id`]s, deduplicated by
/// value, shared by every view of a database, never invalidating anything.
///
/// ```
/// use picante::Interned;
/// struct Label;
/// impl Interned for Label { type Value = String; }
/// ```
pub trait Interned: Send + Sync + 'static {
    /// The interned value type.
    type Value: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;
}

/// The id of an interned value of kind `T`: `Copy`, 4 bytes, usable as a key.
///
/// ```
/// # use picante::{Database, Interned, Id};
/// struct Label;
/// impl Interned for Label { type Value = String; }
/// let db = Database::builder().interned::<Label>().build()?;
/// let a: Id<Label> = db.intern::<Label>("intro".to_string())?;
/// assert_eq!(a, db.intern::<Label>("intro".to_string())?);
/// assert_eq!(db.lookup::<Label>(a)?, "intro");
/// # Ok::<(), picante::Error>(())
/// ```
///
/// `Id<T>` implements [`facet::Facet`] (persisted as its raw `u32`), so ids
/// can be keys and values of persistent kinds. Register `T` with
/// `persistent_interned` too: a load restores its values at the same ids,
/// which is what keeps persisted ids meaningful.
#[derive(facet::Facet)]
#[facet(opaque, proxy = u32)]
pub struct Id<T: ?Sized> {
    raw: u32,
    kind: PhantomData<fn() -> T>,
}

/// The id with this raw number ([`Id::from_raw`]); how a persisted id is
/// decoded.
impl<T: ?Sized> From<u32> for Id<T> {
    fn from(raw: u32) -> Self {
        Id::from_raw(raw)
    }
}

/// The raw number ([`Id::raw`]); how an id is persisted.
impl<T: ?Sized> From<&Id<T>> for u32 {
    fn from(id: &Id<T>) -> Self {
        id.raw
    }
}

impl<T: ?Sized> Id<T> {
    /// An id from its raw number. Looking up an id the database never handed
    /// out is an error, not a panic.
    pub const fn from_raw(raw: u32) -> Self {
        Id {
            raw,
            kind: PhantomData,
        }
    }

    /// The raw number (dense, starting at 0 in interning order).
    pub const fn raw(self) -> u32 {
        self.raw
    }
}

impl<T: ?Sized> Clone for Id<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for Id<T> {}
impl<T: ?Sized> PartialEq for Id<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
impl<T: ?Sized> Eq for Id<T> {}
impl<T: ?Sized> PartialOrd for Id<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T: ?Sized> Ord for Id<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.raw.cmp(&other.raw)
    }
}
impl<T: ?Sized> Hash for Id<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.raw.hash(state)
    }
}
impl<T: ?Sized> fmt::Debug for Id<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", crate::util::short_type_name::<T>(), self.raw)
    }
}
