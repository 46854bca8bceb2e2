//! The error type of [picante](https://docs.rs/picante) query bodies,
//! re-exported as `picante::QueryError` and `picante::QueryResult`. Use it
//! through picante; this crate exists only for trait coherence.
//!
//! `QueryError` converts from every `std::error::Error + Send + Sync +
//! 'static`, so `?` works on any error inside a query body. That blanket
//! `From` impl cannot live in picante itself: picante depends (through
//! facet) on smallvec 2.0, whose
//! `impl From<SmallVec<..>> for <Vec<..> as Like>::Type` has a projection as
//! its self type, which rustc's overlap check treats as possibly any type —
//! so every blanket `impl<E: std::error::Error> From<E> for Local` in a crate
//! that has smallvec ≥ 2.0.0-beta.4 among its dependencies is rejected as
//! conflicting. Coherence is checked where an impl is defined, against the
//! defining crate's dependencies; this crate has none.
//!
//! ```
//! use picante_error::{QueryError, QueryResult};
//!
//! fn body(text: &str) -> QueryResult<u32> {
//!     if text.is_empty() {
//!         return Err(QueryError::msg("empty"));
//!     }
//!     Ok(text.trim().parse::<u32>()?) // ParseIntError -> QueryError
//! }
//! assert_eq!(body(" 7 ").unwrap(), 7);
//! assert_eq!(body("x").unwrap_err().to_string(), "invalid digit found in string");
//! assert_eq!(body("").unwrap_err().to_string(), "empty");
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::error::Error as StdError;
use std::fmt;

/// (Defined in the `picante-error` crate, alone only for trait coherence;
/// use it as `picante::QueryResult`.)
pub type QueryResult<T> = std::result::Result<T, QueryError>;

/// (Defined in the `picante-error` crate, alone only for trait coherence —
/// see its crate docs; use it as `picante::QueryError`.)
pub struct QueryError {
    repr: Repr,
}

enum Repr {
    Error(Box<dyn StdError + Send + Sync + 'static>),
    Message(String),
}

/// What a [`QueryError`] holds; how picante unpacks it. Not for user code.
#[doc(hidden)]
pub enum QueryErrorParts {
    /// An error value (possibly a `picante::Error`, to be unboxed).
    Error(Box<dyn StdError + Send + Sync + 'static>),
    /// A message from [`QueryError::msg`].
    Message(String),
}

impl QueryError {
    /// An error from a message (like `picante::Error::msg`).
    ///
    /// ```
    /// let e = picante_error::QueryError::msg(format!("no template named {:?}", "base"));
    /// assert_eq!(e.to_string(), "no template named \"base\"");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        QueryError {
            repr: Repr::Message(message.to_string()),
        }
    }

    /// Wraps any error value (what `?` does).
    pub fn new<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        QueryError {
            repr: Repr::Error(Box::new(error)),
        }
    }

    /// Wraps a boxed error (what `anyhow::Error` and many libraries convert
    /// into): `Err(QueryError::from_boxed(e.into()))`.
    pub fn from_boxed(error: Box<dyn StdError + Send + Sync + 'static>) -> Self {
        QueryError {
            repr: Repr::Error(error),
        }
    }

    /// Takes it apart (picante's conversion into `picante::Error`).
    #[doc(hidden)]
    pub fn into_parts(self) -> QueryErrorParts {
        match self.repr {
            Repr::Error(e) => QueryErrorParts::Error(e),
            Repr::Message(m) => QueryErrorParts::Message(m),
        }
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for QueryError {
    fn from(error: E) -> Self {
        QueryError::new(error)
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Error(e) => fmt::Display::fmt(e, f),
            Repr::Message(m) => f.write_str(m),
        }
    }
}

impl fmt::Debug for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Error(e) => fmt::Debug::fmt(e, f),
            Repr::Message(m) => f.debug_tuple("Message").field(m).finish(),
        }
    }
}
