//! `picante::Error`, what every picante call returns on failure, and
//! `picante::QueryError`, what a query body returns.
//!
//! The split is what lets both compose: `Error` implements
//! `std::error::Error` (so `?` carries it into `anyhow::Error`,
//! `Box<dyn Error>` or a thiserror `#[from]`), and `QueryError` has the
//! blanket `From<E: std::error::Error>` that makes `?` on an `io::Error` work
//! inside `execute` (S11). One type cannot have both: the blanket impl would
//! overlap `From<T> for T` (the reason `anyhow::Error` is not a
//! `std::error::Error` either). `QueryError` lives in the `picante-error`
//! crate: smallvec 2.0 (a dependency of facet) has an impl whose self type
//! is a projection, which makes every blanket `From<E: Error>` impl *defined
//! in picante* a coherence conflict; defined in a crate without
//! dependencies, it is fine. Errors stay cheap to clone: memoized errors are
//! handed to every waiter and dependent as an `Arc`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use picante_error::QueryErrorParts;

/// `Result<T, picante::Error>`: what [`Database::query`](crate::View::query),
/// [`QueryCx::query`](crate::QueryCx::query) and every other picante call
/// return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Result<T, picante::QueryError>`: what a query body
/// ([`AsyncQuery::execute`](crate::AsyncQuery::execute)) returns.
///
/// `?` works on anything a body meets: picante's own calls (`cx.query`,
/// `cx.input`), `io::Error`, parse errors, your own `thiserror` types — any
/// `std::error::Error + Send + Sync + 'static`.
///
/// ```
/// use picante::{async_trait, AsyncQuery, QueryCx, QueryError, QueryResult};
///
/// struct ReadPort;
/// #[async_trait]
/// impl AsyncQuery for ReadPort {
///     type Key = String;
///     type Value = u16;
///     async fn execute(&self, _cx: &QueryCx, path: String) -> QueryResult<u16> {
///         let text = std::fs::read_to_string(&path)?;       // io::Error
///         let port = text.trim().parse::<u16>()?;            // ParseIntError
///         if port == 0 {
///             return Err(QueryError::msg(format!("{path}: port 0")));
///         }
///         Ok(port)
///     }
/// }
/// ```
#[doc(inline)]
pub use picante_error::QueryResult;

/// The error a query body returns: any error, on its way to becoming the
/// memoized [`picante::Error`](Error) that the query's callers see.
///
/// You rarely name it: write `-> picante::QueryResult<V>` and use `?`. It
/// converts from every `std::error::Error + Send + Sync + 'static`, keeping
/// the original (callers can [`downcast_ref`](Error::downcast_ref) it), and
/// from a `picante::Error` (what `cx.query` and `cx.input` return) without
/// wrapping it again: an error a dependency returned reaches this query's
/// callers as the same error — a cycle stays a cycle, a panic a panic. To
/// fail with a message, `return Err(QueryError::msg("…"))`; an
/// `anyhow::Error` goes in with `QueryError::from_boxed(e.into())`.
///
/// `QueryError` does not implement `std::error::Error` itself (that would
/// conflict with its blanket `From`, as it does for `anyhow::Error`): it
/// lives only between a body and picante, and [`Error`] is the one that
/// composes with the rest of a program.
///
/// ```
/// use picante::{Error, ErrorKind, QueryError, QueryResult};
///
/// fn body(fail: bool) -> QueryResult<u32> {
///     if fail {
///         return Err(QueryError::msg("bad front matter"));
///     }
///     Ok("12".parse::<u32>()?)
/// }
/// assert_eq!(body(false).unwrap(), 12);
/// let err: Error = body(true).unwrap_err().into();
/// assert!(matches!(err.kind(), ErrorKind::Message(_)));
///
/// // A picante::Error passed on with `?` is the same error, not a wrapper.
/// let original = Error::msg("from a dependency");
/// let carried: Error = QueryError::from(original.clone()).into();
/// assert!(carried.same(&original));
/// ```
#[doc(inline)]
pub use picante_error::QueryError;

impl From<QueryError> for Error {
    fn from(error: QueryError) -> Self {
        match error.into_parts() {
            QueryErrorParts::Error(e) => Error::from_boxed(e),
            QueryErrorParts::Message(m) => ErrorKind::Message(m).into(),
        }
    }
}

/// An error from picante or from a query body.
///
/// It implements `std::error::Error + Send + Sync + 'static`, so it composes
/// with the rest of a program: `?` turns it into an `anyhow::Error` or a
/// `Box<dyn std::error::Error>`, and a thiserror enum can hold it with
/// `#[from]`. A user error a body returned (an `io::Error`, a parse
/// error…) is kept: [`source()`](std::error::Error::source) is that error,
/// and [`downcast_ref`](Error::downcast_ref) finds it (or anything in its
/// `source()` chain), also from dependents the error propagated to. Errors
/// are memoized like values: cloning is a pointer copy.
///
/// Inside a query body, errors travel as [`QueryError`] (see
/// [`QueryResult`]); `?` converts either way.
///
/// ```
/// use picante::{Error, ErrorKind};
///
/// fn read() -> picante::Result<String> {
///     let text = std::fs::read_to_string("/definitely/not/here").map_err(Error::new)?;
///     Ok(text)
/// }
/// let err = read().unwrap_err();
/// assert!(err.downcast_ref::<std::io::Error>().is_some());
/// assert!(matches!(err.kind(), ErrorKind::User(_)));
///
/// // It is a std error: it boxes, and its source is the io::Error.
/// use std::error::Error as _;
/// assert!(err.source().is_some_and(|s| s.is::<std::io::Error>()));
/// let boxed: Box<dyn std::error::Error + Send + Sync> = Error::msg("bad front matter").into();
/// assert_eq!(boxed.to_string(), "bad front matter");
/// ```
#[derive(Clone)]
pub struct Error {
    inner: Arc<ErrorKind>,
}

/// One query (or input) at one key, as errors and observability name it: the
/// kind's name and the key's `Debug` rendering, as separate fields. It
/// displays as `Kind(key)` and compares equal to that rendering.
///
/// ```
/// use picante::QueryRef;
///
/// let step = QueryRef::new("ParsePage", "\"a.md\"");
/// assert_eq!(step.kind, "ParsePage");
/// assert_eq!(step.key, "\"a.md\"");
/// assert_eq!(step.to_string(), "ParsePage(\"a.md\")");
/// assert_eq!(step, "ParsePage(\"a.md\")");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct QueryRef {
    /// The kind's name (its short type name, e.g. `ParsePage`).
    pub kind: String,
    /// The key's `Debug` rendering (e.g. `"a.md"`, with the quotes).
    pub key: String,
}

impl QueryRef {
    /// A reference from a kind name and a rendered key.
    pub fn new(kind: impl Into<String>, key: impl Into<String>) -> Self {
        QueryRef {
            kind: kind.into(),
            key: key.into(),
        }
    }

    /// Whether `rendered` is this reference's `Kind(key)` rendering.
    fn renders_as(&self, rendered: &str) -> bool {
        rendered
            .strip_prefix(self.kind.as_str())
            .and_then(|rest| rest.strip_prefix('('))
            .and_then(|rest| rest.strip_suffix(')'))
            .is_some_and(|key| key == self.key)
    }
}

impl fmt::Display for QueryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.kind, self.key)
    }
}

impl PartialEq<str> for QueryRef {
    fn eq(&self, other: &str) -> bool {
        self.renders_as(other)
    }
}

impl PartialEq<&str> for QueryRef {
    fn eq(&self, other: &&str) -> bool {
        self.renders_as(other)
    }
}

impl PartialEq<String> for QueryRef {
    fn eq(&self, other: &String) -> bool {
        self.renders_as(other)
    }
}

/// What went wrong. Match on it with [`Error::kind`].
///
/// ```
/// use picante::{Database, ErrorKind, Input};
///
/// struct Config;
/// impl Input for Config { type Key = &'static str; type Value = String; }
///
/// # fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<Config>().build()?;
/// let err = db.input::<Config>(&"title").unwrap_err();
/// match err.kind() {
///     ErrorKind::MissingInput { input, key } => {
///         assert_eq!((input.as_str(), key.as_str()), ("Config", "\"title\""));
///     }
///     other => panic!("unexpected: {other}"),
/// }
/// assert_eq!(err.to_string(), "input Config(\"title\") has no value");
/// # Ok(()) }
/// ```
#[non_exhaustive]
#[derive(Debug)]
pub enum ErrorKind {
    /// An error returned by a query body (converted with `?` or [`Error::new`]).
    User(Box<dyn StdError + Send + Sync + 'static>),
    /// A plain message ([`Error::msg`]).
    Message(String),
    /// A query body panicked. The panic was caught; the runtime and other
    /// queries keep running.
    Panic {
        /// Name of the query kind.
        query: String,
        /// `Debug` rendering of the key.
        key: String,
        /// The panic message (or a placeholder if the payload was not a string).
        message: String,
    },
    /// A query needed itself at the same revision. `path` starts and ends with
    /// the same entry; it renders as `A(1) → B(1) → A(1)`.
    Cycle {
        /// Each step, its kind and key as separate fields; each compares
        /// equal to its rendering (`path == ["A(1)", "B(1)", "A(1)"]`).
        path: Vec<QueryRef>,
    },
    /// A kind was used that the database was not built with.
    Unregistered {
        /// What was asked for: `"input"`, `"query"` or `"interned kind"`.
        expected: &'static str,
        /// The Rust type that was asked for.
        type_name: &'static str,
        /// The builder call that registers it.
        register_with: String,
    },
    /// `DatabaseBuilder::build` refused the registrations.
    Registration(String),
    /// [`View::input`](crate::View::input) or [`QueryCx::input`](crate::QueryCx::input)
    /// read a key that has no value (use `input_opt` to treat absence as data).
    MissingInput {
        /// Name of the input kind.
        input: String,
        /// `Debug` rendering of the key.
        key: String,
    },
    /// A read through a [`QueryCx`](crate::QueryCx) arrived after the
    /// execution it belongs to had finished (for example from a task spawned
    /// by the query and not awaited). The read is not recorded.
    ExecutionFinished {
        /// The query whose context was used.
        query: String,
    },
    /// An interned id that this database never handed out.
    UnknownId {
        /// Name of the interned kind.
        kind: String,
        /// The raw id.
        id: u32,
    },
    /// The execution was cancelled because the runtime shut down under it.
    Cancelled,
    /// Reading, writing or decoding a persisted cache failed.
    Persist(String),
    /// Another save, append or load of the cache at `path` held its lock
    /// for longer than [`DatabaseBuilder::cache_lock_timeout`](crate::DatabaseBuilder::cache_lock_timeout)
    /// (in another process, or another database of this one): each cache
    /// file has one writer at a time (S18c). Nothing was read or written;
    /// retry when the other operation has finished.
    CacheLocked {
        /// The cache file.
        path: String,
    },
    /// An append found that the cache at `path` is no longer the one this
    /// database saved, loaded or last appended to: another database
    /// replaced its base or extended its log. Nothing was written (records
    /// are never applied to another base's keys); call `save_cache` to
    /// write this database's state as a new base.
    CacheReplaced {
        /// The cache file.
        path: String,
        /// What was found.
        what: String,
    },
    /// A broken internal invariant: please report it.
    Internal(String),
}

impl Error {
    /// Wraps any error value, keeping it for [`downcast_ref`](Self::downcast_ref)
    /// and as the [`source()`](std::error::Error::source). A `picante::Error`
    /// is returned as it is, not wrapped again.
    ///
    /// ```
    /// let e = picante::Error::new(std::io::Error::other("disk on fire"));
    /// assert_eq!(e.to_string(), "disk on fire");
    /// assert!(e.downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn new<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        Error::from_boxed(Box::new(error))
    }

    /// Wraps a boxed error (what `anyhow::Error` and many libraries convert
    /// into), like [`new`](Self::new). A boxed `picante::Error` is unboxed,
    /// not wrapped again.
    ///
    /// ```
    /// let boxed: Box<dyn std::error::Error + Send + Sync> = "not a number".into();
    /// let e = picante::Error::from_boxed(boxed);
    /// assert_eq!(e.to_string(), "not a number");
    /// ```
    pub fn from_boxed(error: Box<dyn StdError + Send + Sync + 'static>) -> Self {
        match error.downcast::<Error>() {
            Ok(error) => *error,
            Err(other) => ErrorKind::User(other).into(),
        }
    }

    /// An error from a message.
    ///
    /// ```
    /// let e = picante::Error::msg(format!("no template named {:?}", "base"));
    /// assert_eq!(e.to_string(), "no template named \"base\"");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        ErrorKind::Message(message.to_string()).into()
    }

    /// What kind of error this is.
    pub fn kind(&self) -> &ErrorKind {
        &self.inner
    }

    /// The user error inside, if it is (or wraps, through `source()`) an `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        let ErrorKind::User(err) = self.kind() else {
            return None;
        };
        let mut cur: Option<&(dyn StdError + 'static)> = Some(err.as_ref());
        while let Some(e) = cur {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            cur = e.source();
        }
        None
    }

    /// The user error inside, if any, as a `std::error::Error`.
    pub fn user_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self.kind() {
            ErrorKind::User(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// Whether this is a cycle error.
    pub fn is_cycle(&self) -> bool {
        matches!(self.kind(), ErrorKind::Cycle { .. })
    }

    /// Whether this error came from a panic in a query body.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind(), ErrorKind::Panic { .. })
    }

    /// Whether two errors are the same memoized error (pointer equality).
    pub fn same(&self, other: &Error) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn internal(what: impl fmt::Display) -> Self {
        ErrorKind::Internal(what.to_string()).into()
    }

    pub(crate) fn persist(what: impl fmt::Display) -> Self {
        ErrorKind::Persist(what.to_string()).into()
    }

    pub(crate) fn cache_locked(path: &std::path::Path) -> Self {
        ErrorKind::CacheLocked {
            path: path.display().to_string(),
        }
        .into()
    }

    pub(crate) fn cache_replaced(path: &std::path::Path, what: impl fmt::Display) -> Self {
        ErrorKind::CacheReplaced {
            path: path.display().to_string(),
            what: what.to_string(),
        }
        .into()
    }

    pub(crate) fn panic(query: &str, key: String, payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "<non-string panic payload>".to_string()
        };
        ErrorKind::Panic {
            query: query.to_string(),
            key,
            message,
        }
        .into()
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error {
            inner: Arc::new(kind),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.kind(), f)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.kind(), f)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::User(e) => fmt::Display::fmt(e, f),
            ErrorKind::Message(m) => f.write_str(m),
            ErrorKind::Panic {
                query,
                key,
                message,
            } => write!(f, "query {query}({key}) panicked: {message}"),
            ErrorKind::Cycle { path } => {
                f.write_str("cycle detected: ")?;
                for (i, step) in path.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" → ")?;
                    }
                    fmt::Display::fmt(step, f)?;
                }
                Ok(())
            }
            ErrorKind::Unregistered {
                expected,
                type_name,
                register_with,
            } => write!(
                f,
                "{type_name} is not registered as {expected} in this database; \
                 register it with `{register_with}` before `build()`"
            ),
            ErrorKind::Registration(m) => write!(f, "invalid database registration: {m}"),
            ErrorKind::MissingInput { input, key } => {
                write!(f, "input {input}({key}) has no value")
            }
            ErrorKind::ExecutionFinished { query } => write!(
                f,
                "a read through the QueryCx of {query} arrived after that execution finished; \
                 await spawned work before returning from `execute`"
            ),
            ErrorKind::UnknownId { kind, id } => {
                write!(
                    f,
                    "interned id {id} of {kind} was never handed out by this database"
                )
            }
            ErrorKind::Cancelled => {
                f.write_str("query execution was cancelled (runtime shut down)")
            }
            ErrorKind::Persist(m) => write!(f, "persisted cache: {m}"),
            ErrorKind::CacheLocked { path } => write!(
                f,
                "persisted cache {path} is locked by another process or database \
                 (a save, append or load is in progress); retry when it has finished"
            ),
            ErrorKind::CacheReplaced { path, what } => write!(
                f,
                "persisted cache {path} was replaced or extended by another database \
                 ({what}); nothing was appended: call save_cache to write this database's state"
            ),
            ErrorKind::Internal(m) => write!(f, "picante internal error (please report): {m}"),
        }
    }
}

/// `source()` is the user's error for [`ErrorKind::User`] (so reporters and
/// `anyhow`'s `chain()` reach it), `None` otherwise.
impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self.kind() {
            ErrorKind::User(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}
