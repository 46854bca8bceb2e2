//! The same workloads on salsa 0.28 (macro-declared inputs and tracked
//! functions, synchronous bodies). Defaults only (durability LOW).

use std::sync::Arc;

use crate::common::{self, OTHER, PARSE, RENDER, SITE, bump};

pub type Db = salsa::DatabaseImpl;

// ---- W2 / W3: the site -------------------------------------------------

#[salsa::input]
pub struct SourceFile {
    pub text: Arc<str>,
}

#[salsa::input]
pub struct TemplateFile {
    pub text: Arc<str>,
}

/// The template handles, by index (salsa keys are handles, not integers).
#[salsa::input(singleton)]
pub struct Templates {
    #[returns(ref)]
    pub list: Vec<TemplateFile>,
}

#[salsa::input]
pub struct Project {
    #[returns(ref)]
    pub files: Vec<SourceFile>,
}

#[salsa::tracked]
pub fn parse(db: &dyn salsa::Database, file: SourceFile) -> Arc<common::Parsed> {
    bump(&PARSE);
    Arc::new(common::parse_text(file.text(db)))
}

#[salsa::tracked]
pub fn render(db: &dyn salsa::Database, file: SourceFile) -> Arc<str> {
    bump(&RENDER);
    let page = parse(db, file);
    let template = Templates::get(db).list(db)[page.template as usize].text(db);
    common::render_text(page, template)
}

#[salsa::tracked(returns(copy))]
pub fn site(db: &dyn salsa::Database, project: Project) -> u64 {
    bump(&SITE);
    let mut total = 0;
    for &f in project.files(db) {
        total += render(db, f).len() as u64;
    }
    total
}

pub struct SiteHandles {
    pub files: Vec<SourceFile>,
    pub templates: Vec<TemplateFile>,
    pub project: Project,
}

pub fn fill_site(db: &Db, sources: &[Arc<str>], templates: &[Arc<str>]) -> SiteHandles {
    let files: Vec<SourceFile> = sources
        .iter()
        .map(|s| SourceFile::new(db, s.clone()))
        .collect();
    let templates: Vec<TemplateFile> = templates
        .iter()
        .map(|s| TemplateFile::new(db, s.clone()))
        .collect();
    Templates::new(db, templates.clone());
    let project = Project::new(db, files.clone());
    SiteHandles {
        files,
        templates,
        project,
    }
}

// ---- W1: warm hits -------------------------------------------------------

#[salsa::input]
pub struct Base {
    #[returns(copy)]
    pub value: u64,
}

#[salsa::input]
pub struct Nums {
    #[returns(ref)]
    pub list: Vec<Base>,
    #[returns(copy)]
    pub nonce: u64,
}

#[salsa::tracked]
pub fn derived(db: &dyn salsa::Database, b: Base) -> Arc<u64> {
    Arc::new(b.value(db) + 1)
}

/// Reads the nonce, then every `derived` memo (already verified).
#[salsa::tracked(returns(copy))]
pub fn reader(db: &dyn salsa::Database, nums: Nums) -> u64 {
    bump(&OTHER);
    let mut sum = nums.nonce(db);
    for &b in nums.list(db) {
        sum += **derived(db, b);
    }
    sum
}

/// `Base + 1`, unboxed (the memory comparison's W1-like memo).
#[salsa::tracked(returns(copy))]
pub fn small(db: &dyn salsa::Database, b: Base) -> u64 {
    bump(&OTHER);
    b.value(db) + 1
}

pub fn hit_db(n: u32) -> (Db, Vec<Base>, Nums) {
    let db = Db::default();
    let bases: Vec<Base> = (0..n).map(|k| Base::new(&db, u64::from(k))).collect();
    let nums = Nums::new(&db, bases.clone(), 0);
    (db, bases, nums)
}

// ---- W4: chain -------------------------------------------------------------

#[salsa::input]
pub struct ChainBase {
    #[returns(copy)]
    pub value: u64,
}

#[salsa::input]
pub struct Unrelated {
    #[returns(copy)]
    pub value: u64,
}

#[salsa::interned]
pub struct Level<'db> {
    #[returns(copy)]
    pub base: ChainBase,
    #[returns(copy)]
    pub i: u32,
}

#[salsa::tracked(returns(copy))]
pub fn chain<'db>(db: &'db dyn salsa::Database, level: Level<'db>) -> u64 {
    bump(&OTHER);
    let i = level.i(db);
    let base = level.base(db);
    if i == 0 {
        base.value(db) / 2
    } else {
        chain(db, Level::new(db, base, i - 1)) + 1
    }
}

pub fn chain_top(db: &Db, base: ChainBase, depth: u32) -> u64 {
    chain(db, Level::new(db, base, depth))
}

// ---- W7: persistence --------------------------------------------------------

#[salsa::input(persist, singleton)]
pub struct Seed {
    #[returns(copy)]
    pub value: u64,
}

#[salsa::input(persist)]
pub struct ItemKey {
    #[returns(copy)]
    pub k: u32,
}

#[salsa::tracked(returns(copy), persist)]
pub fn item(db: &dyn salsa::Database, key: ItemKey) -> u64 {
    bump(&OTHER);
    common::item_value(Seed::get(db).value(db), key.k(db))
}

// ---- W8: blocking I/O fan-out ---------------------------------------------

#[salsa::input]
pub struct Page {
    #[returns(copy)]
    pub n: u32,
}

#[salsa::input]
pub struct Pages {
    #[returns(ref)]
    pub list: Vec<Page>,
}

#[salsa::tracked(returns(copy))]
pub fn remote_parse(db: &dyn salsa::Database, page: Page) -> u64 {
    bump(&PARSE);
    let n = page.n(db);
    std::thread::sleep(std::time::Duration::from_millis(1));
    common::remote_value(n)
}

#[salsa::tracked(returns(copy))]
pub fn fan_site(db: &dyn salsa::Database, pages: Pages) -> u64 {
    bump(&SITE);
    pages.list(db).iter().map(|&p| remote_parse(db, p)).sum()
}
