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
//! The rest of this page is a guide to the concepts, each with an example
//! that `cargo test` compiles and runs. `ARCHITECTURE.md` in the repository
//! maps the code.
//!
//! # Guide
//!
//! - [Inputs](#inputs)
//! - [Queries](#queries)
//! - [`QueryCx`: how a query reads](#querycx-how-a-query-reads)
//! - [Revisions](#revisions)
//! - [Revalidation and early cutoff](#revalidation-and-early-cutoff)
//! - [Durability](#durability)
//! - [Concurrency and cancellation](#concurrency-and-cancellation)
//! - [Snapshots](#snapshots)
//! - [Interning](#interning)
//! - [Errors](#errors)
//! - [Persistence](#persistence)
//! - [Observability](#observability)
//! - [Long sessions: watching, events, untracked reads, memory](#long-sessions-watching-events-untracked-reads-memory)
//!
//! ## Inputs
//!
//! An [`Input`] kind is a keyed value the outside world sets: a file's
//! text by path, a configuration. [`View::set`] stores a value and returns
//! the new [`Revision`]; setting a value equal (`==`) to the stored one is a
//! no-op (no new revision, nothing invalidated). [`View::remove`] removes a
//! key, and [`View::batch`] applies several writes atomically, as one
//! revision.
//!
//! ```
//! use picante::{Database, Input};
//!
//! struct File;
//! impl Input for File {
//!     type Key = String;   // a path
//!     type Value = String; // its text
//! }
//!
//! # fn main() -> picante::Result<()> {
//! let db = Database::builder().input::<File>().build()?;
//! let r1 = db.set::<File>("a.md".into(), "hello".into())?;
//! assert_eq!(db.set::<File>("a.md".into(), "hello".into())?, r1); // equal: no-op
//! assert_eq!(db.input::<File>(&"a.md".into())?, "hello");
//!
//! // Several writes, one revision; readers see all of them or none.
//! let r2 = db
//!     .batch()
//!     .set::<File>("b.md".into(), "two".into())
//!     .remove::<File>(&"a.md".into())
//!     .commit()?;
//! assert_eq!(r2.as_u64(), r1.as_u64() + 1);
//! assert_eq!(db.input_opt::<File>(&"a.md".into())?, None);
//! # Ok(()) }
//! ```
//!
//! ## Queries
//!
//! An [`AsyncQuery`] kind is an `async fn` from a key to a value, memoized.
//! You register an *instance* with [`DatabaseBuilder::query`], so a query
//! can hold state its body uses — an RPC client, a thread-pool handle, a
//! configuration. Keys are `Clone + Eq + Hash + Debug + Send + Sync`
//! ([`Key`]), values also need `Clone + PartialEq` ([`Value`]): wrap large
//! values in an `Arc`, cloning a memoized value is then a pointer copy.
//!
//! ```
//! use std::sync::Arc;
//! use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
//!
//! struct File;
//! impl Input for File { type Key = String; type Value = Arc<str>; }
//!
//! /// Renders a file with a site-wide prefix: the query holds its settings.
//! struct Render {
//!     prefix: String,
//! }
//! #[async_trait]
//! impl AsyncQuery for Render {
//!     type Key = String;
//!     type Value = Arc<str>;
//!     async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<Arc<str>> {
//!         let text = cx.input::<File>(&path)?;
//!         Ok(format!("{}{}", self.prefix, text.to_uppercase()).into())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder()
//!     .input::<File>()
//!     .query(Render { prefix: "» ".into() })
//!     .build()?;
//! db.set::<File>("a.md".into(), "hi".into())?;
//! assert_eq!(&*db.query::<Render>("a.md".into()).await?, "» HI");
//! # Ok(()) }
//! ```
//!
//! ## `QueryCx`: how a query reads
//!
//! A body reads the database only through its [`QueryCx`], and every read
//! is recorded as a dependency of that one execution: [`QueryCx::input`]
//! (an absent key is an error, and still a dependency), [`QueryCx::input_opt`]
//! (absence as `None`), [`QueryCx::query`]. A `QueryCx` is cheap to clone and
//! `Send + 'static`: `join!` branches and `tokio::spawn`ed tasks with clones
//! record into the same execution. For a dynamic set of keys,
//! [`QueryCx::query_all`] and [`QueryCx::try_query_all`] fan out: each key
//! not already memoized runs on its own task, in parallel on a multi-thread
//! runtime, and they are aborted if the body is dropped.
//!
//! ```
//! use std::sync::Arc;
//! use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
//!
//! struct Page;
//! impl Input for Page { type Key = u32; type Value = Arc<str>; }
//! struct Draft;
//! impl Input for Draft { type Key = u32; type Value = bool; }
//!
//! struct Words;
//! #[async_trait]
//! impl AsyncQuery for Words {
//!     type Key = u32;
//!     type Value = usize;
//!     async fn execute(&self, cx: &QueryCx, page: u32) -> QueryResult<usize> {
//!         // Absence is recorded too: setting Draft(page) later re-runs this.
//!         if cx.input_opt::<Draft>(&page)?.unwrap_or(false) {
//!             return Ok(0);
//!         }
//!         Ok(cx.input::<Page>(&page)?.split_whitespace().count())
//!     }
//! }
//!
//! /// Pages 0..n, read concurrently.
//! struct Total;
//! #[async_trait]
//! impl AsyncQuery for Total {
//!     type Key = u32;
//!     type Value = usize;
//!     async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<usize> {
//!         Ok(cx.try_query_all::<Words>(0..n).await?.into_iter().sum())
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder()
//!     .input::<Page>()
//!     .input::<Draft>()
//!     .query(Words)
//!     .query(Total)
//!     .build()?;
//! db.batch().set::<Page>(0, "a b".into()).set::<Page>(1, "c d e".into()).commit()?;
//! assert_eq!(db.query::<Total>(2).await?, 5);
//!
//! db.set::<Draft>(1, true)?; // was absent: Words(1) read that, so it re-runs
//! assert_eq!(db.query::<Total>(2).await?, 2);
//! let words = db.stats().of::<Words>().map(|s| s.executions);
//! assert_eq!(words, Some(3)); // Words(0), Words(1), Words(1) again
//! # Ok(()) }
//! ```
//!
//! ## Revisions
//!
//! Every real change advances the database's [`Revision`] once. Each query
//! access is bound to the revision current when it started: it returns the
//! value at that revision, never mixing reads from two, whatever writers do
//! meanwhile — and writers never wait for it. [`QueryCx::revision`] is the
//! revision a body reads at.
//!
//! ```
//! # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult, Revision};
//! # struct N; impl Input for N { type Key = (); type Value = u32; }
//! /// Returns the revision it read at, and the input.
//! struct At;
//! #[async_trait]
//! impl AsyncQuery for At {
//!     type Key = ();
//!     type Value = (Revision, u32);
//!     async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<(Revision, u32)> {
//!         Ok((cx.revision(), cx.input::<N>(&())?))
//!     }
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder().input::<N>().query(At).build()?;
//! let r1 = db.set::<N>((), 1)?;
//! assert_eq!(db.query::<At>(()).await?, (r1, 1));
//! let r2 = db.set::<N>((), 2)?;
//! assert!(r2 > r1);
//! assert_eq!(db.query::<At>(()).await?, (r2, 2));
//! # Ok(()) }
//! ```
//!
//! ## Revalidation and early cutoff
//!
//! A memo records what it read. At a new revision it is *revalidated*: if
//! none of its dependencies changed since it was verified, it is valid again
//! without running the body (checked without user code, on an explicit
//! stack, so 100 000-deep chains are fine). If a body re-runs and returns a
//! value equal (`==`) to the old one, the memo keeps its old `changed_at`
//! and its dependents are not re-run: *early cutoff*.
//!
//! ```
//! # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
//! # struct N; impl Input for N { type Key = u32; type Value = i64; }
//! /// `N(k) / 10`: small edits cut off here.
//! struct Tens;
//! #[async_trait]
//! impl AsyncQuery for Tens {
//!     type Key = u32;
//!     type Value = i64;
//!     async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
//!         Ok(cx.input::<N>(&k)? / 10)
//!     }
//! }
//! struct Report;
//! #[async_trait]
//! impl AsyncQuery for Report {
//!     type Key = u32;
//!     type Value = String;
//!     async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<String> {
//!         Ok(format!("{} tens", cx.query::<Tens>(k).await?))
//!     }
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder().input::<N>().query(Tens).query(Report).build()?;
//! db.batch().set::<N>(1, 31).set::<N>(2, 50).commit()?;
//! db.query::<Report>(1).await?;
//!
//! db.set::<N>(2, 60)?; // not read by Report(1): revalidated, nothing runs
//! db.query::<Report>(1).await?;
//! db.set::<N>(1, 35)?; // Tens(1) re-runs, returns 3 again: Report(1) is cut off
//! assert_eq!(db.query::<Report>(1).await?, "3 tens");
//!
//! let stats = db.stats();
//! let (tens, report) = (stats.of::<Tens>().unwrap(), stats.of::<Report>().unwrap());
//! assert_eq!((tens.executions, tens.cutoffs), (2, 1));
//! assert_eq!((report.executions, report.revalidations), (1, 2));
//! # Ok(()) }
//! ```
//!
//! ## Durability
//!
//! An input kind can declare how often it changes
//! ([`Input::DURABILITY`], [`Durability`]: `Low`, `Medium`, `High`). A memo
//! that only depends, transitively, on inputs of durability ≥ D skips its
//! dependency walk entirely when nothing of durability ≥ D changed since it
//! was verified. Durability never changes results, only work.
//!
//! ```
//! # use picante::{async_trait, AsyncQuery, Database, Durability, Input, QueryCx, QueryResult};
//! struct Config;
//! impl Input for Config {
//!     type Key = &'static str;
//!     type Value = String;
//!     const DURABILITY: Durability = Durability::High; // rarely changes
//! }
//! struct Page;
//! impl Input for Page { type Key = u32; type Value = String; } // Low, the default
//!
//! struct Title;
//! #[async_trait]
//! impl AsyncQuery for Title {
//!     type Key = ();
//!     type Value = String;
//!     async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<String> {
//!         Ok(cx.input::<Config>(&"title")?.to_uppercase())
//!     }
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder().input::<Config>().input::<Page>().query(Title).build()?;
//! db.set::<Config>("title", "peppers".into())?;
//! db.query::<Title>(()).await?;
//! let before = db.stats();
//! for i in 0..3 {
//!     db.set::<Page>(i, format!("page {i}"))?; // Low changes only
//!     db.query::<Title>(()).await?;
//! }
//! // Revalidated three times without examining a single dependency.
//! let step = db.stats().since(&before);
//! assert_eq!(step.of::<Title>().unwrap().revalidations, 3);
//! assert_eq!(step.dependency_checks, 0);
//! # Ok(()) }
//! ```
//!
//! ## Concurrency and cancellation
//!
//! Concurrent requests for the same key at the same revision — from any
//! task, any snapshot — execute it once; the others wait for that result.
//! Dropping a caller's future is not an error and records nothing: other
//! waiters still get the result, and the next access completes (nothing is
//! left "running"). A query that needs itself, directly or through other
//! queries, tasks or `join!` branches, gets a cycle error naming the path —
//! never a deadlock.
//!
//! ```
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! # use picante::{async_trait, AsyncQuery, Database, QueryCx, QueryResult};
//! static RUNS: AtomicUsize = AtomicUsize::new(0);
//! struct Slow;
//! #[async_trait]
//! impl AsyncQuery for Slow {
//!     type Key = u32;
//!     type Value = u32;
//!     async fn execute(&self, _cx: &QueryCx, k: u32) -> QueryResult<u32> {
//!         RUNS.fetch_add(1, Ordering::SeqCst);
//!         tokio::task::yield_now().await;
//!         Ok(k * 2)
//!     }
//! }
//! /// Needs itself: a cycle.
//! struct Loop;
//! #[async_trait]
//! impl AsyncQuery for Loop {
//!     type Key = u32;
//!     type Value = u32;
//!     async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
//!         Ok(cx.query::<Loop>(k).await? + 1)
//!     }
//! }
//! # #[tokio::main]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder().query(Slow).query(Loop).build()?;
//! let tasks: Vec<_> = (0..8)
//!     .map(|_| {
//!         let snap = db.snapshot(); // O(1); any view at this revision shares the work
//!         tokio::spawn(async move { snap.query::<Slow>(21).await })
//!     })
//!     .collect();
//! for t in tasks {
//!     assert_eq!(t.await.expect("no panic")?, 42);
//! }
//! assert_eq!(RUNS.load(Ordering::SeqCst), 1, "eight requests, one execution");
//!
//! let err = db.query::<Loop>(1).await.unwrap_err();
//! assert!(err.is_cycle());
//! assert_eq!(err.to_string(), "cycle detected: Loop(1) → Loop(1)");
//! # Ok(()) }
//! ```
//!
//! ## Snapshots
//!
//! [`View::snapshot`] is O(1) and gives a [`Snapshot`]: `Clone + Send +
//! Sync + 'static`, frozen at its revision, so queries on it see exactly its
//! inputs while the database moves on. Memos a snapshot computes are offered
//! back to the database, so work done on a snapshot is not redone. A
//! snapshot that sets its own inputs *forks*: its results never leak into
//! the database or other views.
//!
//! ```
//! # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
//! # struct N; impl Input for N { type Key = (); type Value = u32; }
//! # struct Double;
//! # #[async_trait] impl AsyncQuery for Double { type Key = (); type Value = u32;
//! #   async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u32> { Ok(cx.input::<N>(&())? * 2) } }
//! # #[tokio::main]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder().input::<N>().query(Double).build()?;
//! db.set::<N>((), 1)?;
//! let snap = db.snapshot();
//! db.set::<N>((), 5)?; // the writer does not wait for the snapshot
//! let old = tokio::spawn(async move { snap.query::<Double>(()).await });
//! assert_eq!(old.await.expect("no panic")?, 2);
//! assert_eq!(db.query::<Double>(()).await?, 10);
//!
//! // Work flows back: a snapshot at the current revision computes, the
//! // database reuses it.
//! let snap = db.snapshot();
//! db.set::<N>((), 7)?;
//! let snap_now = db.snapshot();
//! assert_eq!(snap_now.query::<Double>(()).await?, 14);
//! assert_eq!(db.query::<Double>(()).await?, 14);
//! assert_eq!(db.stats().of::<Double>().unwrap().executions, 3);
//!
//! // A fork: its own inputs, its own results.
//! snap.set::<N>((), 100)?;
//! assert!(snap.is_forked());
//! assert_eq!(snap.query::<Double>(()).await?, 200);
//! assert_eq!(db.query::<Double>(()).await?, 14);
//! # Ok(()) }
//! ```
//!
//! ## Interning
//!
//! An [`Interned`] kind maps values to small `Copy` [`Id`]s, deduplicated by
//! value and shared by every view of a database. Interning never advances
//! the revision and never invalidates anything, so an id is a cheap key.
//!
//! ```
//! use picante::{Database, Id, Interned};
//!
//! struct Tag;
//! impl Interned for Tag { type Value = String; }
//!
//! # fn main() -> picante::Result<()> {
//! let db = Database::builder().interned::<Tag>().build()?;
//! let rev = db.revision();
//! let hot: Id<Tag> = db.intern::<Tag>("hot".into())?;
//! assert_eq!(db.intern::<Tag>("hot".into())?, hot); // same value, same id
//! assert_ne!(db.intern::<Tag>("mild".into())?, hot);
//! assert_eq!(db.lookup::<Tag>(hot)?, "hot");
//! assert_eq!(db.revision(), rev); // no new revision
//! # Ok(()) }
//! ```
//!
//! ## Errors
//!
//! A body returns a [`QueryResult`]: `?` works on any `std::error::Error +
//! Send + Sync + 'static` and on picante's own calls, and
//! [`QueryError::msg`] fails with a message. Errors are memoized like
//! values (a later revision may retry) and propagate to dependents as
//! errors, which may also handle them as data. Callers get an [`Error`]:
//! cheap to clone, a `std::error::Error` itself (so `?` carries it into
//! `anyhow::Error`, a `Box<dyn Error>` or a thiserror `#[from]`), with the
//! original as its `source()` and reachable with [`Error::downcast_ref`],
//! also from dependents. A panic in a body becomes an error naming the
//! query, the key and the message; it never takes the runtime down.
//!
//! ```
//! # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryError, QueryResult};
//! # struct Text; impl Input for Text { type Key = u32; type Value = String; }
//! struct Number;
//! #[async_trait]
//! impl AsyncQuery for Number {
//!     type Key = u32;
//!     type Value = i64;
//!     async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
//!         let text = cx.input::<Text>(&k)?;
//!         if text.is_empty() {
//!             return Err(QueryError::msg(format!("entry {k} is empty")));
//!         }
//!         Ok(text.trim().parse::<i64>()?) // ParseIntError
//!     }
//! }
//! struct Doubled;
//! #[async_trait]
//! impl AsyncQuery for Doubled {
//!     type Key = u32;
//!     type Value = i64;
//!     async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<i64> {
//!         Ok(cx.query::<Number>(k).await? * 2) // passes the error on, as it is
//!     }
//! }
//!
//! /// An application function: `?` on a picante::Error into a boxed error.
//! async fn app(db: &picante::Database, k: u32) -> Result<i64, Box<dyn std::error::Error>> {
//!     Ok(db.query::<Doubled>(k).await?)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder().input::<Text>().query(Number).query(Doubled).build()?;
//! db.batch().set::<Text>(1, "x".into()).set::<Text>(2, "".into()).commit()?;
//!
//! let err = db.query::<Doubled>(1).await.unwrap_err();
//! assert!(err.downcast_ref::<std::num::ParseIntError>().is_some());
//! assert_eq!(db.query::<Doubled>(2).await.unwrap_err().to_string(), "entry 2 is empty");
//!
//! let boxed = app(&db, 1).await.unwrap_err();
//! assert!(boxed.source().is_some_and(|s| s.is::<std::num::ParseIntError>()));
//! # Ok(()) }
//! ```
//!
//! ## Persistence
//!
//! Kinds registered as persistent ([`DatabaseBuilder::persistent_input`],
//! [`persistent_query`](DatabaseBuilder::persistent_query),
//! [`persistent_interned`](DatabaseBuilder::persistent_interned)) are saved
//! by [`View::save_cache`] (crash-safe: a temporary file, fsync, rename),
//! extended cheaply by [`Database::append_cache`], and loaded all-or-nothing
//! into a fresh database by [`Database::load_cache`]; loaded memos are
//! revalidated, not re-run. Their keys and values implement
//! [`facet::Facet`]; other kinds keep working in memory. Kinds are matched
//! by name and by the shape of their types, and memos are dropped when the
//! program's code may have changed (see [`DatabaseBuilder::code_version`]).
//!
//! To derive `Facet` through picante's re-export, without a facet
//! dependency of your own, add `#[facet(crate = picante::facet)]`:
//! `#[derive(picante::facet::Facet)]` alone fails with ``cannot find
//! `facet` in the crate root``, because the derive's code names `::facet`.
//! (Or depend on `facet = "0.46"` and write `#[derive(facet::Facet)]`.)
//!
//! ```
//! use picante::facet::Facet;
//! use picante::{async_trait, AsyncQuery, Database, Input, LoadOptions, QueryCx, QueryResult};
//!
//! #[derive(Facet, Clone, PartialEq, Debug)]
//! #[facet(crate = picante::facet)]
//! struct Summary {
//!     title: String,
//!     words: u32,
//! }
//!
//! struct Source;
//! impl Input for Source { type Key = String; type Value = String; }
//!
//! struct Summarize;
//! #[async_trait]
//! impl AsyncQuery for Summarize {
//!     type Key = String;
//!     type Value = Summary;
//!     async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<Summary> {
//!         let text = cx.input::<Source>(&path)?;
//!         let title = text.lines().next().unwrap_or_default().to_string();
//!         Ok(Summary { title, words: text.split_whitespace().count() as u32 })
//!     }
//! }
//!
//! fn database() -> picante::Result<Database> {
//!     Database::builder()
//!         .persistent_input::<Source>()
//!         .persistent_query(Summarize)
//!         .build()
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> picante::Result<()> {
//! let dir = std::env::temp_dir().join(format!("picante-guide-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(picante::Error::new)?;
//! let cache = dir.join("cache.bin");
//!
//! let db = database()?;
//! db.set::<Source>("a.md".into(), "Peppers\nhot ones".into())?;
//! db.query::<Summarize>("a.md".into()).await?;
//! db.save_cache(&cache).await?;
//!
//! // The next start of the program: load, and the memo is reused.
//! let db = database()?;
//! let report = db.load_cache(&cache, LoadOptions::ignore_errors()).await?;
//! assert!(report.loaded);
//! assert_eq!(db.query::<Summarize>("a.md".into()).await?.words, 3);
//! assert_eq!(db.stats().of::<Summarize>().unwrap().executions, 0);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```
//!
//! ## Observability
//!
//! Every execution runs in a `tracing` span `picante.execute` with fields
//! `query`, `key` and `revision`. [`View::stats`] counts, per query kind,
//! executions, hits, revalidations and cutoffs ([`Stats::of`] by type,
//! [`Stats::query`] by name, [`Stats::since`] per step).
//! [`View::inspect`] says what a memo depends on and why it last ran
//! ([`ExecutionReason`], naming the changed dependency as a [`QueryRef`]);
//! [`View::dependency_graph`] renders every memo's edges as Graphviz DOT.
//!
//! ```
//! # use picante::{async_trait, AsyncQuery, Database, ExecutionReason, Input, QueryCx, QueryRef, QueryResult};
//! # struct N; impl Input for N { type Key = u32; type Value = u32; }
//! # struct Double;
//! # #[async_trait] impl AsyncQuery for Double { type Key = u32; type Value = u32;
//! #   async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> { Ok(cx.input::<N>(&k)? * 2) } }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder().input::<N>().query(Double).build()?;
//! db.set::<N>(1, 1)?;
//! db.query::<Double>(1).await?;
//! db.set::<N>(1, 2)?;
//! db.query::<Double>(1).await?;
//!
//! let info = db.inspect::<Double>(&1)?.expect("memoized");
//! assert_eq!(info.reason, ExecutionReason::DependencyChanged(QueryRef::new("N", "1")));
//! assert_eq!(info.to_string().split(" executed").next(), Some("Double(1)"));
//! assert_eq!(db.stats().of::<Double>().unwrap().executions, 2);
//! assert!(db.dependency_graph().contains("\"Double(1)\" -> \"N(1)\""));
//! # Ok(()) }
//! ```
//!
//! ## Long sessions: watching, events, untracked reads, memory
//!
//! A watch-mode program keeps one database for hours. [`View::watch`]
//! yields a query's value, then a new value only when a new revision changes
//! it (after cutoff); [`View::subscribe_revisions`] and
//! [`View::subscribe_events`] say when the database changed and what (which
//! inputs, which bodies ran). A body that reads something picante cannot
//! track (the clock, a file read directly) reports it with
//! [`QueryCx::report_untracked_read`]: its memo is then valid at its own
//! revision only. Memory stays bounded with a per-kind capacity
//! ([`DatabaseBuilder::capacity`]), garbage collection of memos nothing used
//! for a while ([`View::collect`], [`DatabaseBuilder::collect_garbage`]) and
//! a report of what is held ([`View::memory`]); none of them changes a
//! result, only work.
//!
//! ```
//! # use picante::{async_trait, AsyncQuery, Database, Input, QueryCx, QueryResult};
//! # struct File; impl Input for File { type Key = &'static str; type Value = String; }
//! # struct Lines;
//! # #[async_trait] impl AsyncQuery for Lines { type Key = &'static str; type Value = usize;
//! #   async fn execute(&self, cx: &QueryCx, k: &'static str) -> QueryResult<usize> { Ok(cx.input::<File>(&k)?.lines().count()) } }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> picante::Result<()> {
//! let db = Database::builder().input::<File>().query(Lines).build()?;
//! db.set::<File>("a.md", "one".into())?;
//! let mut lines = db.watch::<Lines>("a.md");
//! assert_eq!(lines.next_value().await?, 1);
//! db.set::<File>("a.md", "uno".into())?;      // same count: nothing to yield
//! db.set::<File>("a.md", "one\ntwo".into())?;
//! assert_eq!(lines.next_value().await?, 2);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod api;
mod engine;
mod error;
mod persist;
mod revision;
mod typed;
mod util;

/// The attribute to put on `impl AsyncQuery for …` blocks, so that
/// `execute` can be written as an `async fn` (the
/// [async-trait](https://docs.rs/async-trait) crate, re-exported).
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
pub use persist::{
    AppendReport, CacheOperation, CacheProgress, CacheStep, LoadOptions, LoadReport, OnError,
    SaveReport,
};
pub use revision::{Durability, Revision};

/// The README's examples, compiled and run by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
