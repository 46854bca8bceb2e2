//! Issue 13, item 1: `picante::Error` composes with the error handling of the
//! rest of a program (`std::error::Error + Send + Sync + 'static`: `?` into
//! `anyhow::Error`, `Box<dyn Error>`, a thiserror `#[from]`, a `source()`
//! chain reaching the user's error), while `?` on any std error still works
//! inside a body (S11) and errors stay downcastable and cheap to clone.
//! Every test counts executions: errors are memoized like values.

mod common;

use std::error::Error as StdError;
use std::path::PathBuf;
use std::time::Duration;

use common::{Count, within};
use picante::*;

const LIMIT: Duration = Duration::from_secs(30);

/// The whole point, checked by the compiler.
fn assert_std_error<E: StdError + Send + Sync + 'static>() {}
fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}

#[test]
fn error_is_a_std_error_and_cheap_to_clone() {
    assert_std_error::<Error>();
    assert_clone_send_sync::<Error>();
    let e = Error::msg("x");
    assert!(e.clone().same(&e), "a clone is the same Arc");
}

/// Reads a file with `?` on `io::Error` inside the body.
struct ReadFile {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for ReadFile {
    type Key = String;
    type Value = String;
    async fn execute(&self, _cx: &QueryCx, path: String) -> QueryResult<String> {
        self.runs.hit();
        Ok(std::fs::read_to_string(PathBuf::from(path))?)
    }
}

/// Depends on `ReadFile`, passing its error on with `?`.
struct FileLen {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for FileLen {
    type Key = String;
    type Value = usize;
    async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<usize> {
        self.runs.hit();
        Ok(cx.query::<ReadFile>(path).await?.len())
    }
}

fn missing_path() -> String {
    std::env::temp_dir()
        .join(format!("picante-errors-compose-{}", std::process::id()))
        .join("missing.txt")
        .display()
        .to_string()
}

fn file_db() -> Result<(Database, Count, Count)> {
    let (read, len) = (Count::new(), Count::new());
    let db = Database::builder()
        .query(ReadFile { runs: read.clone() })
        .query(FileLen { runs: len.clone() })
        .build()?;
    Ok((db, read, len))
}

/// An application function on anyhow: `?` on `picante::Error`, no `map_err`.
async fn app_anyhow(db: &Database, path: String) -> anyhow::Result<usize> {
    let n = db.query::<FileLen>(path).await?;
    Ok(n)
}

#[tokio::test]
async fn question_mark_into_anyhow() -> Result<()> {
    within("anyhow", LIMIT, async {
        let (db, read, len) = file_db()?;
        let err = app_anyhow(&db, missing_path()).await.unwrap_err();
        // The picante::Error is the outermost error, and anyhow's chain
        // reaches the io::Error through source().
        let picante_err = err.downcast_ref::<Error>().expect("a picante::Error");
        assert!(matches!(picante_err.kind(), ErrorKind::User(_)));
        let io = err
            .chain()
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .expect("io::Error in the chain");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(err.chain().count(), 2, "picante::Error, then the io::Error");
        assert_eq!((read.get(), len.get()), (1, 1));
        // Memoized: a second call re-runs nothing.
        assert!(app_anyhow(&db, missing_path()).await.is_err());
        assert_eq!((read.get(), len.get()), (1, 1));
        Ok(())
    })
    .await
}

async fn app_boxed(db: &Database, path: String) -> std::result::Result<usize, Box<dyn StdError>> {
    Ok(db.query::<FileLen>(path).await?)
}

async fn app_boxed_send(
    db: &Database,
    path: String,
) -> std::result::Result<usize, Box<dyn StdError + Send + Sync>> {
    Ok(db.query::<FileLen>(path).await?)
}

#[tokio::test]
async fn question_mark_into_box_dyn_error() -> Result<()> {
    within("boxed", LIMIT, async {
        let (db, read, len) = file_db()?;
        let err = app_boxed(&db, missing_path()).await.unwrap_err();
        assert!(err.is::<Error>());
        assert!(
            err.source()
                .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
        );
        let err = app_boxed_send(&db, missing_path()).await.unwrap_err();
        let back = err.downcast::<Error>().expect("a picante::Error inside");
        assert!(back.downcast_ref::<std::io::Error>().is_some());
        assert_eq!((read.get(), len.get()), (1, 1));
        Ok(())
    })
    .await
}

/// An application error type with thiserror.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("the build failed")]
    Build(#[from] Error),
    #[error("bad configuration: {0}")]
    Config(String),
}

async fn app_thiserror(db: &Database, path: String) -> std::result::Result<usize, AppError> {
    if path.is_empty() {
        return Err(AppError::Config("no path".into()));
    }
    Ok(db.query::<FileLen>(path).await?)
}

#[tokio::test]
async fn thiserror_from_picante_error() -> Result<()> {
    within("thiserror", LIMIT, async {
        let (db, read, len) = file_db()?;
        let err = app_thiserror(&db, missing_path()).await.unwrap_err();
        assert_eq!(err.to_string(), "the build failed");
        let AppError::Build(inner) = &err else {
            panic!("expected AppError::Build, got {err:?}");
        };
        assert!(inner.downcast_ref::<std::io::Error>().is_some());
        // The source chain: AppError -> picante::Error -> io::Error.
        let first = err.source().expect("the picante::Error");
        assert!(first.is::<Error>());
        let second = first.source().expect("the io::Error");
        assert!(second.is::<std::io::Error>());
        assert!(second.source().is_none());
        assert!(matches!(
            app_thiserror(&db, String::new()).await,
            Err(AppError::Config(_))
        ));
        assert_eq!((read.get(), len.get()), (1, 1));
        Ok(())
    })
    .await
}

#[test]
fn source_is_the_user_error_and_only_that() {
    let user = Error::new(std::io::Error::other("disk on fire"));
    let source = user.source().expect("a user error has a source");
    assert!(source.is::<std::io::Error>());
    assert_eq!(source.to_string(), "disk on fire");
    // Picante's own errors have no source: they are the root cause.
    assert!(Error::msg("plain").source().is_none());
    let missing: Error = ErrorKind::Cancelled.into();
    assert!(missing.source().is_none());
}

#[test]
fn wrapping_a_picante_error_does_not_double_wrap() {
    let original = Error::msg("from a dependency");
    assert!(Error::new(original.clone()).same(&original));
    let boxed: Box<dyn StdError + Send + Sync> = Box::new(original.clone());
    assert!(Error::from_boxed(boxed).same(&original));
    let through_body: Error = QueryError::from(original.clone()).into();
    assert!(through_body.same(&original));
    let message: Error = QueryError::msg("bad").into();
    assert!(matches!(message.kind(), ErrorKind::Message(m) if m == "bad"));
}

/// A user error type (thiserror) returned from a body with `?`, wrapping a
/// std error of its own.
#[derive(Debug, thiserror::Error)]
enum FrontMatterError {
    #[error("page {page} has no title")]
    NoTitle { page: u32 },
    #[error("page {page}: bad weight")]
    BadWeight {
        page: u32,
        #[source]
        source: std::num::ParseIntError,
    },
}

struct Page;
impl Input for Page {
    type Key = u32;
    type Value = String;
}

/// `?` on a thiserror type, on a `ParseIntError`, on `cx.input`, and an
/// anyhow error passed through `QueryError::from_boxed`.
struct Weight {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Weight {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, page: u32) -> QueryResult<i64> {
        self.runs.hit();
        let text = cx.input::<Page>(&page)?;
        let Some((title, weight)) = text.split_once('|') else {
            return Err(FrontMatterError::NoTitle { page }.into());
        };
        if title == "anyhow" {
            let e = anyhow::anyhow!("from a library on anyhow").context("while weighing");
            return Err(QueryError::from_boxed(e.into()));
        }
        if title == "plain" {
            return Ok(weight.trim().parse::<i64>()?);
        }
        weight
            .trim()
            .parse::<i64>()
            .map_err(|source| FrontMatterError::BadWeight { page, source }.into())
    }
}

/// Depends on `Weight` and passes its error on.
struct Heaviest {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Heaviest {
    type Key = (u32, u32);
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, (a, b): (u32, u32)) -> QueryResult<i64> {
        self.runs.hit();
        let a = cx.query::<Weight>(a).await?;
        let b = cx.query::<Weight>(b).await?;
        Ok(a.max(b))
    }
}

#[tokio::test]
async fn user_errors_downcast_from_dependents() -> Result<()> {
    within("user errors", LIMIT, async {
        let (weight, heaviest) = (Count::new(), Count::new());
        let db = Database::builder()
            .input::<Page>()
            .query(Weight {
                runs: weight.clone(),
            })
            .query(Heaviest {
                runs: heaviest.clone(),
            })
            .build()?;
        db.set::<Page>(0, "Intro|3".into())?;
        db.set::<Page>(1, "no bar".into())?;
        db.set::<Page>(2, "Other|heavy".into())?;
        db.set::<Page>(3, "plain|x".into())?;
        db.set::<Page>(4, "anyhow|1".into())?;

        assert_eq!(db.query::<Heaviest>((0, 0)).await?, 3);

        let e = db.query::<Heaviest>((0, 1)).await.unwrap_err();
        assert!(matches!(
            e.downcast_ref::<FrontMatterError>(),
            Some(FrontMatterError::NoTitle { page: 1 })
        ));
        // The dependent's error is the leaf's memoized error itself.
        let leaf = db.query::<Weight>(1).await.unwrap_err();
        assert!(e.same(&leaf), "passed on with `?`, not wrapped");

        let e = db.query::<Heaviest>((2, 0)).await.unwrap_err();
        assert_eq!(e.to_string(), "page 2: bad weight");
        assert!(e.downcast_ref::<std::num::ParseIntError>().is_some());
        let chain: Vec<String> = std::iter::successors(e.source(), |s| (*s).source())
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            chain,
            ["page 2: bad weight", "invalid digit found in string"]
        );

        let e = db.query::<Heaviest>((3, 0)).await.unwrap_err();
        assert!(e.downcast_ref::<std::num::ParseIntError>().is_some());

        let e = db.query::<Heaviest>((4, 0)).await.unwrap_err();
        assert_eq!(e.to_string(), "while weighing");
        assert_eq!(
            e.source().and_then(|s| s.source()).map(|s| s.to_string()),
            Some("from a library on anyhow".to_string())
        );

        // Weight ran once per page (0..=4), Heaviest once per key; errors
        // are memoized, so asking again re-runs nothing.
        assert_eq!((weight.get(), heaviest.get()), (5, 5));
        for key in [(0, 1), (2, 0), (3, 0), (4, 0)] {
            assert!(db.query::<Heaviest>(key).await.is_err());
        }
        assert_eq!((weight.get(), heaviest.get()), (5, 5));
        let stats = db.stats();
        assert_eq!(stats.query("Weight").map(|s| s.executions), Some(5));
        Ok(())
    })
    .await
}

/// A cycle and a panic passed on with `?` keep their kind in the dependent.
struct Loop;
#[async_trait]
impl AsyncQuery for Loop {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        Ok(cx.query::<Loop>(k).await? + 1)
    }
}
struct Boom;
#[async_trait]
impl AsyncQuery for Boom {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, _cx: &QueryCx, k: u32) -> QueryResult<u32> {
        if k < 100 {
            panic!("boom {k}");
        }
        Ok(k)
    }
}
struct Above {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Above {
    type Key = (bool, u32);
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, (cycle, k): (bool, u32)) -> QueryResult<u32> {
        self.runs.hit();
        Ok(if cycle {
            cx.query::<Loop>(k).await?
        } else {
            cx.query::<Boom>(k).await?
        })
    }
}

#[tokio::test]
async fn engine_errors_keep_their_kind_through_question_mark() -> Result<()> {
    within("kinds", LIMIT, async {
        let above = Count::new();
        let db = Database::builder()
            .query(Loop)
            .query(Boom)
            .query(Above {
                runs: above.clone(),
            })
            .build()?;
        let cycle = db.query::<Above>((true, 1)).await.unwrap_err();
        assert!(cycle.is_cycle(), "{cycle:?}");
        let panic = db.query::<Above>((false, 1)).await.unwrap_err();
        assert!(panic.is_panic(), "{panic:?}");
        assert!(panic.to_string().contains("boom 1"), "{panic}");
        assert!(panic.source().is_none());
        // Through anyhow, the kind is still there.
        let any: anyhow::Error = panic.clone().into();
        assert!(any.downcast_ref::<Error>().is_some_and(Error::is_panic));
        assert_eq!(above.get(), 2);
        Ok(())
    })
    .await
}
