//! The workloads on picante (trait-based queries, async bodies on tokio).

use std::sync::Arc;
use std::time::Duration;

use picante::{AsyncQuery, Database, Input, QueryCx, QueryResult, async_trait};

use crate::common::{self, OTHER, PARSE, RENDER, SITE, bump};

// ---- W2 / W3: the site -------------------------------------------------

pub struct SourceFile;
impl Input for SourceFile {
    type Key = u32;
    type Value = Arc<str>;
}

pub struct TemplateFile;
impl Input for TemplateFile {
    type Key = u32;
    type Value = Arc<str>;
}

/// How many files the site has (an input, so the site query reads it).
pub struct FileCount;
impl Input for FileCount {
    type Key = ();
    type Value = u32;
}

pub struct Parse;
#[async_trait]
impl AsyncQuery for Parse {
    type Key = u32;
    type Value = Arc<common::Parsed>;
    async fn execute(&self, cx: &QueryCx, file: u32) -> QueryResult<Arc<common::Parsed>> {
        bump(&PARSE);
        let text = cx.input::<SourceFile>(&file)?;
        Ok(Arc::new(common::parse_text(&text)))
    }
}

pub struct Render;
#[async_trait]
impl AsyncQuery for Render {
    type Key = u32;
    type Value = Arc<str>;
    async fn execute(&self, cx: &QueryCx, file: u32) -> QueryResult<Arc<str>> {
        bump(&RENDER);
        let page = cx.query::<Parse>(file).await?;
        let template = cx.input::<TemplateFile>(&page.template)?;
        Ok(common::render_text(&page, &template))
    }
}

pub struct Site;
#[async_trait]
impl AsyncQuery for Site {
    type Key = ();
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u64> {
        bump(&SITE);
        let n = cx.input::<FileCount>(&())?;
        let mut total = 0;
        for f in 0..n {
            total += cx.query::<Render>(f).await?.len() as u64;
        }
        Ok(total)
    }
}

pub fn site_db() -> Database {
    Database::builder()
        .input::<SourceFile>()
        .input::<TemplateFile>()
        .input::<FileCount>()
        .query(Parse)
        .query(Render)
        .query(Site)
        .build()
        .expect("db")
}

pub fn fill_site(db: &Database, sources: &[Arc<str>], templates: &[Arc<str>]) {
    let mut batch = db.batch();
    for (f, s) in sources.iter().enumerate() {
        batch.set::<SourceFile>(f as u32, s.clone());
    }
    for (t, s) in templates.iter().enumerate() {
        batch.set::<TemplateFile>(t as u32, s.clone());
    }
    batch.set::<FileCount>((), sources.len() as u32);
    batch.commit().expect("commit");
}

// ---- W1: warm hits -------------------------------------------------------

pub struct Base;
impl Input for Base {
    type Key = u32;
    type Value = u64;
}

pub struct Nonce;
impl Input for Nonce {
    type Key = ();
    type Value = u64;
}

pub struct Derived;
#[async_trait]
impl AsyncQuery for Derived {
    type Key = u32;
    type Value = Arc<u64>;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<Arc<u64>> {
        Ok(Arc::new(cx.input::<Base>(&k)? + 1))
    }
}

/// Reads the nonce (so it really re-executes after a nonce change), then
/// `n` already-verified `Derived` memos through the `QueryCx`.
pub struct Reader;
#[async_trait]
impl AsyncQuery for Reader {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, n: u32) -> QueryResult<u64> {
        bump(&OTHER);
        let mut sum = cx.input::<Nonce>(&())?;
        for k in 0..n {
            sum += *cx.query::<Derived>(k).await?;
        }
        Ok(sum)
    }
}

pub fn hit_db(n: u32) -> Database {
    let db = Database::builder()
        .input::<Base>()
        .input::<Nonce>()
        .query(Derived)
        .query(Reader)
        .build()
        .expect("db");
    fill_bases(&db, n);
    db
}

/// `Base(k) = k` for `k < n`, and the nonce.
fn fill_bases(db: &Database, n: u32) {
    let mut batch = db.batch();
    for k in 0..n {
        batch.set::<Base>(k, u64::from(k));
    }
    batch.set::<Nonce>((), 0);
    batch.commit().expect("commit");
}

// ---- memory: a small u64 -> u64 query over one input each -----------------

/// `Base(k) + 1`, unboxed (the memory comparison's W1-like memo).
#[allow(dead_code)] // used by the `memory` bin only
pub struct Small;
#[async_trait]
impl AsyncQuery for Small {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u64> {
        bump(&OTHER);
        Ok(cx.input::<Base>(&k)? + 1)
    }
}

/// The W1 inputs (`n` bases) with only [`Small`] registered.
#[allow(dead_code)] // used by the `memory` bin only
pub fn small_db(n: u32) -> Database {
    let db = Database::builder()
        .input::<Base>()
        .input::<Nonce>()
        .query(Small)
        .build()
        .expect("db");
    fill_bases(&db, n);
    db
}

// ---- W4: chain -------------------------------------------------------------

pub struct ChainBase;
impl Input for ChainBase {
    type Key = ();
    type Value = u64;
}

pub struct Unrelated;
impl Input for Unrelated {
    type Key = ();
    type Value = u64;
}

pub struct Chain;
#[async_trait]
impl AsyncQuery for Chain {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, i: u32) -> QueryResult<u64> {
        bump(&OTHER);
        if i == 0 {
            Ok(cx.input::<ChainBase>(&())? / 2)
        } else {
            Ok(cx.query::<Chain>(i - 1).await? + 1)
        }
    }
}

pub fn chain_db() -> Database {
    let db = Database::builder()
        .input::<ChainBase>()
        .input::<Unrelated>()
        .query(Chain)
        .build()
        .expect("db");
    db.set::<ChainBase>((), 2).expect("set");
    db.set::<Unrelated>((), 0).expect("set");
    db
}

/// The top of the chain, queried from a tokio worker (2 MiB stack).
pub async fn chain_top(db: &Database, depth: u32) -> u64 {
    let db = db.clone();
    tokio::spawn(async move { db.query::<Chain>(depth).await.expect("chain") })
        .await
        .expect("join")
}

// ---- W7: persistence --------------------------------------------------------

pub struct Seed;
impl Input for Seed {
    type Key = u32;
    type Value = u64;
}

pub struct Item;
#[async_trait]
impl AsyncQuery for Item {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u64> {
        bump(&OTHER);
        Ok(common::item_value(cx.input::<Seed>(&0)?, k))
    }
}

pub fn persist_db() -> Database {
    Database::builder()
        .persistent_input::<Seed>()
        .persistent_query(Item)
        .build()
        .expect("db")
}

// ---- W8: async I/O fan-out ------------------------------------------------

pub struct PageCount;
impl Input for PageCount {
    type Key = ();
    type Value = u32;
}

/// A parse that awaits a 1 ms simulated remote call.
pub struct RemoteParse;
#[async_trait]
impl AsyncQuery for RemoteParse {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, page: u32) -> QueryResult<u64> {
        bump(&PARSE);
        let _ = cx.input::<PageCount>(&())?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(common::remote_value(page))
    }
}

/// Fans out: every page's parse as its own task (clones of the `QueryCx`).
pub struct FanSite;
#[async_trait]
impl AsyncQuery for FanSite {
    type Key = ();
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, _: ()) -> QueryResult<u64> {
        bump(&SITE);
        let n = cx.input::<PageCount>(&())?;
        let mut set = tokio::task::JoinSet::new();
        for p in 0..n {
            let cx = cx.clone();
            set.spawn(async move { cx.query::<RemoteParse>(p).await });
        }
        let mut total = 0;
        while let Some(r) = set.join_next().await {
            total += r.expect("join")?;
        }
        Ok(total)
    }
}

pub fn fan_db(pages: u32) -> Database {
    let db = Database::builder()
        .input::<PageCount>()
        .query(RemoteParse)
        .query(FanSite)
        .build()
        .expect("db");
    db.set::<PageCount>((), pages).expect("set");
    db
}
