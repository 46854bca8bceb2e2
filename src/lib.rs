//! # picante — an async incremental query engine
//!
//! picante gives async Rust pipelines (a static site generator, a build
//! tool, a language server) the salsa model — memoized queries, automatic
//! dependency tracking, revisions, early cutoff — with queries that are real
//! `async fn`s on tokio, O(1) snapshots for consistent concurrent reads, and
//! a cache that can persist to disk.
//!
//! ```
//! use std::sync::Arc;
//! use picante::{async_trait, AsyncQuery, Database, Input, QueryCx};
//!
//! /// An input: the text of a source file, by path.
//! struct SourceFile;
//! impl Input for SourceFile {
//!     type Key = String;
//!     type Value = Arc<str>;
//! }
//!
//! /// A derived query: the file's title line.
//! struct Title;
//! #[async_trait]
//! impl AsyncQuery for Title {
//!     type Key = String;
//!     type Value = Arc<str>;
//!     async fn execute(&self, cx: &QueryCx, path: String) -> picante::QueryResult<Arc<str>> {
//!         let text = cx.input::<SourceFile>(&path)?; // a recorded dependency
//!         Ok(text.lines().next().unwrap_or_default().into())
//!     }
//! }
//!
//! /// Depends on another query.
//! struct Shout;
//! #[async_trait]
//! impl AsyncQuery for Shout {
//!     type Key = String;
//!     type Value = String;
//!     async fn execute(&self, cx: &QueryCx, path: String) -> picante::QueryResult<String> {
//!         Ok(cx.query::<Title>(path).await?.to_uppercase())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder()
//!     .input::<SourceFile>()
//!     .query(Title)
//!     .query(Shout)
//!     .build()?;
//!
//! db.set::<SourceFile>("a.md".into(), "hello\nworld".into())?;
//! assert_eq!(db.query::<Shout>("a.md".into()).await?, "HELLO");
//!
//! // Editing the body but not the title re-runs Title (its input changed),
//! // which returns an equal value: Shout is not re-run (early cutoff).
//! db.set::<SourceFile>("a.md".into(), "hello\nthere".into())?;
//! assert_eq!(db.query::<Shout>("a.md".into()).await?, "HELLO");
//! let stats = db.stats();
//! assert_eq!(stats.of::<Title>().unwrap().executions, 2);
//! assert_eq!(stats.of::<Shout>().unwrap().executions, 1);
//! # Ok(()) }
//! ```
//!
//! See [`Database`], [`Snapshot`], [`QueryCx`] and the README for the
//! concepts, and `ARCHITECTURE.md` for a map of the code.
//!
//! Persistent kinds' keys and values implement [`facet::Facet`]. To derive
//! it through picante's re-export (no facet dependency of your own), add
//! `#[facet(crate = picante::facet)]`: `#[derive(picante::facet::Facet)]`
//! alone fails with ``cannot find `facet` in the crate root``. See
//! [`facet`](mod@facet) for an example.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod api;
mod engine;
mod error;
mod persist;
mod revision;
mod typed;
mod util;

pub use async_trait::async_trait;
/// The reflection crate that persistent kinds' keys and values implement
/// ([`facet::Facet`]), re-exported so you need no dependency of your own.
///
/// The derive's generated code names the crate `::facet`, so deriving
/// through the re-export needs `#[facet(crate = picante::facet)]`: without
/// it, `#[derive(picante::facet::Facet)]` fails with ``cannot find `facet` in
/// the crate root``. (Or depend on `facet = "0.46"`, the version picante
/// uses, and write `#[derive(facet::Facet)]`.)
///
/// ```
/// use picante::facet::Facet;
///
/// #[derive(Facet, Clone, PartialEq, Debug)]
/// #[facet(crate = picante::facet)]
/// struct Page {
///     title: String,
///     words: u32,
/// }
///
/// #[derive(Facet, Clone, PartialEq, Debug)]
/// #[facet(crate = picante::facet)]
/// #[repr(u8)]
/// enum Status {
///     Draft,
///     Published { year: u16 },
/// }
///
/// // Both are persistable: register kinds with them via `persistent_input`,
/// // `persistent_query`…
/// let _shapes = (Page::SHAPE, Status::SHAPE);
/// ```
pub use facet;

pub use api::cx::QueryCx;
pub use api::database::{Batch, Database, Snapshot, View};
pub use api::events::{Event, EventFilter, Events, InputChange, Watch};
pub use api::kinds::{AsyncQuery, Id, Input, Interned, Key, Value};
pub use api::memory::{Collect, CollectReport, KindMemory, MemoryReport};
pub use api::registry::DatabaseBuilder;
pub use api::stats::{ExecutionReason, MemoInfo, QueryStats, Stats};
pub use error::{Error, ErrorKind, QueryError, QueryRef, QueryResult, Result};
pub use persist::{AppendReport, LoadOptions, LoadReport, OnError, SaveReport};
pub use revision::{Durability, Revision};

/// The README's examples, compiled and run by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
