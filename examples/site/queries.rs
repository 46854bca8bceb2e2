//! The site generator as a graph of picante queries.
//!
//! ```text
//!  SourceFile(path) ─▶ ParsePage(path) ─▶ PageTitle(path) ─▶ SiteNav ─▶ SectionNav(section) ─┐
//!                             │                                  └──────▶ SiteIndex          │
//!                             └──────────────────────────────▶ RenderPage(path) ◀───────────┘
//!  ConfigFile ─▶ SiteConfig ──────────────────────────────────────▶ ┘ (and SiteIndex)
//!  TemplateFile(name) ─────────────────────────────────────────────▶ ┘ (read by minijinja's
//!                              loader: the page's template and all it extends or includes)
//! ```
//!
//! *Inputs* (`SourceFile`, `TemplateFile`, `ConfigFile`, `PageList`) are set by the driver
//! after scanning the directory. Everything else is a *derived query*: an
//! `async fn` whose result picante memoizes, together with the list of every
//! input and query it read through its `QueryCx` (its dependencies). When an
//! input changes, only the memos that (transitively) read it are re-executed;
//! the others are *revalidated*: reused without running their body.
//!
//! Every kind is registered as *persistent* (see [`database`]): the driver
//! saves inputs and memos to a cache file after a build, and the next process
//! loads it and starts warm. That only asks the keys and values to derive
//! `facet::Facet`, which is how picante encodes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior, context};
use picante::{
    AsyncQuery, Database, Durability, Error, Input, QueryCx, QueryError, QueryResult, async_trait,
};

use crate::markup;
use crate::store::{Hash, Store};

// ---------------------------------------------------------------------------
// Inputs: the outside world, set by the driver (see `driver::Scanner`).
// ---------------------------------------------------------------------------

/// The text of one Markdown page, keyed by its path relative to `content/`
/// (`"peppers/habanero.md"`).
pub struct SourceFile;
impl Input for SourceFile {
    type Key = String;
    type Value = Arc<str>;
}

/// The text of a template or partial, keyed by its path relative to
/// `templates/` (`"doc.html"`, `"partials/sidebar.html"`).
pub struct TemplateFile;
impl Input for TemplateFile {
    type Key = String;
    type Value = Arc<str>;
    /// Templates change far less often than content. Memos that only depend
    /// on `Medium` (or higher) inputs skip their dependency walk entirely
    /// when only `Low` inputs (pages) changed: durability saves work, it
    /// never changes results.
    const DURABILITY: Durability = Durability::Medium;
}

/// The text of the site's configuration file, `site.toml` (the key is the
/// file name). Optional: a site without one gets the defaults of [`Config`].
pub struct ConfigFile;
impl Input for ConfigFile {
    type Key = String;
    type Value = Arc<str>;
    const DURABILITY: Durability = Durability::Medium;
}

/// The sorted list of all page paths. Queries cannot enumerate an input
/// kind, so "which pages exist" is itself an input, set by the scan (and
/// only changed when a page is added or removed).
pub struct PageList;
impl Input for PageList {
    type Key = ();
    /// `Arc<Vec<_>>` rather than `Arc<[_]>`: picante 0.1 loads a persisted
    /// `Arc<[T]>` value through facet-postcard 0.46, which crashes decoding it.
    type Value = Arc<Vec<String>>;
}

/// What the scanner saw of each file when it last read it (modification
/// time and size), so that a warm start re-reads only the files whose stamp
/// changed instead of every file. No query reads it: it is the driver's own
/// state, kept in the database so that it is saved and loaded with the cache,
/// consistent with the inputs it describes (the scan sets both in one batch).
pub struct ScanStamps;
impl Input for ScanStamps {
    type Key = ();
    type Value = Arc<Vec<FileStamp>>;
}

/// One file's stamp, for [`ScanStamps`].
#[derive(Clone, Debug, PartialEq, Eq, facet::Facet)]
pub struct FileStamp {
    /// 0: a page (`content/`), 1: a template (`templates/`).
    pub kind: u8,
    /// The file's input key.
    pub key: String,
    /// Modification time, in nanoseconds since the Unix epoch.
    pub modified_ns: u64,
    pub len: u64,
}

// ---------------------------------------------------------------------------
// Values. Every query value must be `Clone + PartialEq`: `==` is what early
// cutoff compares. Large values are wrapped in `Arc` so cloning is cheap.
// Deriving `facet::Facet` lets the memos holding them be saved to the cache.
// ---------------------------------------------------------------------------

/// A parsed page.
#[derive(Debug, PartialEq, Eq, facet::Facet)]
pub struct Page {
    /// First directory of the path (`"peppers"`), or `""` for top-level pages.
    pub section: String,
    /// Output path relative to the output directory (`"peppers/habanero.html"`).
    pub url: String,
    pub title: Arc<str>,
    pub template: String,
    /// The Markdown body rendered to HTML.
    pub html: String,
}

/// The site's configuration, from `site.toml`:
///
/// ```toml
/// title = "Picante Pantry"          # the site's name, in every page
/// tagline = "hot sauce, slowly"     # optional, shown in the header
/// ```
#[derive(Debug, PartialEq, Eq, facet::Facet)]
pub struct Config {
    pub title: String,
    pub tagline: String,
}

/// The navigation: every section and the titles of its pages.
#[derive(Debug, PartialEq, Eq, facet::Facet)]
pub struct Nav {
    pub sections: Vec<NavSection>,
}

#[derive(Debug, PartialEq, Eq, facet::Facet)]
pub struct NavSection {
    pub name: String,
    /// `(url, title)` of each page, in path order.
    pub pages: Vec<(String, Arc<str>)>,
}

/// The section of a page path: its first directory.
pub fn section_of(path: &str) -> &str {
    path.split_once('/').map_or("", |(section, _)| section)
}

/// The output path of a page: `"peppers/habanero.md"` → `"peppers/habanero.html"`.
pub fn url_of(path: &str) -> String {
    format!("{}.html", path.strip_suffix(".md").unwrap_or(path))
}

/// The relative prefix leading from a page back to the output root.
fn root_of(url: &str) -> String {
    "../".repeat(url.matches('/').count())
}

// ---------------------------------------------------------------------------
// Derived queries.
// ---------------------------------------------------------------------------

/// Front matter + Markdown → a [`Page`].
pub struct ParsePage;
#[async_trait]
impl AsyncQuery for ParsePage {
    type Key = String;
    type Value = Arc<Page>;
    async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<Arc<Page>> {
        // Reading an input through `cx` records it as a dependency of this
        // execution: ParsePage(path) re-runs when (and only when) this file
        // changes.
        let text = cx.input::<SourceFile>(&path)?;
        let (front, body) = markup::split_front_matter(&text)
            .map_err(|e| Error::msg(format!("content/{path}: {e}")))?;
        let stem = path.rsplit('/').next().unwrap_or(&path);
        let stem = stem.strip_suffix(".md").unwrap_or(stem);
        Ok(Arc::new(Page {
            section: section_of(&path).to_string(),
            url: url_of(&path),
            title: front.title.unwrap_or_else(|| stem.to_string()).into(),
            template: front.template.unwrap_or_else(|| "page".to_string()),
            html: markup::markdown_to_html(body),
        }))
    }
}

/// `site.toml`, parsed with the `toml` crate. Unknown keys are an error
/// (a typo would otherwise be silently ignored).
pub struct SiteConfig;
#[async_trait]
impl AsyncQuery for SiteConfig {
    type Key = ();
    type Value = Arc<Config>;
    async fn execute(&self, cx: &QueryCx, (): ()) -> QueryResult<Arc<Config>> {
        let mut config = Config {
            title: "Untitled site".to_string(),
            tagline: String::new(),
        };
        // Absent is fine (and recorded: adding the file re-runs this).
        let Some(text) = cx.input_opt::<ConfigFile>(&"site.toml".to_string())? else {
            return Ok(Arc::new(config));
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e| Error::msg(format!("site.toml: {e}")))?;
        for (key, value) in table {
            let field = match key.as_str() {
                "title" => &mut config.title,
                "tagline" => &mut config.tagline,
                _ => {
                    return Err(QueryError::msg(format!(
                        "site.toml: unknown key `{key}` (known keys: title, tagline)"
                    )));
                }
            };
            match value {
                toml::Value::String(s) => *field = s,
                other => {
                    return Err(QueryError::msg(format!(
                        "site.toml: `{key}` must be a string, not {}",
                        other.type_str()
                    )));
                }
            }
        }
        Ok(Arc::new(config))
    }
}

/// Just the title of a page.
///
/// This tiny query is what makes body edits cheap: it re-runs whenever the
/// page is re-parsed, but if the title is unchanged its value is `==` the old
/// one, so picante keeps the old memo's "changed at" revision (*early
/// cutoff*) and nothing that reads titles (the navigation, the index) re-runs.
pub struct PageTitle;
#[async_trait]
impl AsyncQuery for PageTitle {
    type Key = String;
    type Value = Arc<str>;
    async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<Arc<str>> {
        Ok(cx.query::<ParsePage>(path).await?.title.clone())
    }
}

/// Every section with the titles of its pages. Depends on the page list and
/// on titles only, never on page bodies.
pub struct SiteNav;
#[async_trait]
impl AsyncQuery for SiteNav {
    type Key = ();
    type Value = Arc<Nav>;
    async fn execute(&self, cx: &QueryCx, (): ()) -> QueryResult<Arc<Nav>> {
        let pages = cx.input::<PageList>(&())?;
        // Fan the title reads out: `query_all` runs them concurrently (on
        // tasks, in parallel), records each as a dependency of this one
        // SiteNav execution, and returns the results in page order.
        let titles = cx.query_all::<PageTitle>(pages.iter().cloned()).await;
        let mut sections: Vec<NavSection> = Vec::new();
        for (path, title) in pages.iter().zip(titles) {
            // Errors are values too: a page whose front matter is broken
            // fails to render on its own, but should not take the sidebar of
            // every other page down with it. Its read is recorded all the
            // same, so fixing the page re-runs SiteNav.
            let title = match title {
                Ok(title) => title,
                Err(_) => path.rsplit('/').next().unwrap_or(path).into(),
            };
            let name = section_of(path);
            let url = url_of(path);
            match sections.iter_mut().find(|s| s.name == name) {
                Some(section) => section.pages.push((url, title)),
                None => sections.push(NavSection {
                    name: name.to_string(),
                    pages: vec![(url, title)],
                }),
            }
        }
        Ok(Arc::new(Nav { sections }))
    }
}

/// The sidebar list of one section: `(file name, title)` of each page.
///
/// A second level of cutoff: when any title changes, SiteNav changes and
/// every SectionNav re-runs, but only the section that holds the edited page
/// produces a different value, so only that section's pages re-render.
pub struct SectionNav;
#[async_trait]
impl AsyncQuery for SectionNav {
    type Key = String;
    type Value = Arc<Vec<(String, Arc<str>)>>;
    async fn execute(&self, cx: &QueryCx, section: String) -> QueryResult<Self::Value> {
        let nav = cx.query::<SiteNav>(()).await?;
        let links = nav
            .sections
            .iter()
            .filter(|s| s.name == section)
            .flat_map(|s| &s.pages)
            .map(|(url, title)| {
                let file = url.rsplit('/').next().unwrap_or(url);
                (file.to_string(), title.clone())
            })
            .collect();
        Ok(Arc::new(links))
    }
}

// ---------------------------------------------------------------------------
// Templates: minijinja, with every template read through picante.
// ---------------------------------------------------------------------------

/// A minijinja environment whose loader reads templates through `cx`.
///
/// minijinja loads a template the first time a render needs it: the page's
/// own template, then whatever it `{% extends %}`, `{% include %}`s or
/// `{% import %}`s, as the render reaches them. The loader is a plain
/// synchronous closure, and `cx.input` is synchronous too, so each template
/// is a *recorded read* of the `TemplateFile` input, made by the query that
/// renders. The dependencies of a `RenderPage` execution are then exactly
/// the templates its render used: editing `partials/sidebar.html` re-runs the
/// renders that included it, and no other. A missing template is recorded
/// too (as absent): adding it re-runs the pages that asked for it.
///
/// The environment lives for one execution (the loader holds that
/// execution's `cx`, whose reads end when the execution returns). Compiling
/// a handful of small templates per page is cheap next to the rest; what is
/// memoized is the rendered page, not the compiled templates.
fn environment(cx: &QueryCx) -> Environment<'static> {
    let mut env = Environment::new();
    // `{{ typo }}` is an error, not an empty string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let cx = cx.clone();
    env.set_loader(move |name| {
        cx.input_opt::<TemplateFile>(&name.to_string())
            .map(|text| text.map(|text| text.to_string()))
            .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))
    });
    env
}

/// Stands in for `section_nav` during a first render, and notes whether the
/// templates used it.
///
/// The sidebar comes from an async query (`SectionNav`), and a minijinja
/// render is synchronous: it cannot wait for a query. Reading SectionNav
/// for every page up front would make every page depend on it, so a title
/// edit in a section without a sidebar (the blog) would re-render that whole
/// section. Instead the page renders once with this probe in its place; if a
/// template touched it (looped over it, printed it, tested it), the page
/// reads SectionNav through `cx` and renders again with the real list.
#[derive(Debug, Default)]
struct Probe(AtomicBool);

impl Probe {
    fn touch(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Object for Probe {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }
    fn get_value(self: &Arc<Self>, _: &Value) -> Option<Value> {
        self.touch();
        None
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.touch();
        Enumerator::Empty
    }
    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        self.touch();
        Some(0)
    }
    fn is_true(self: &Arc<Self>) -> bool {
        self.touch();
        false
    }
    fn render(self: &Arc<Self>, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.touch();
        Ok(())
    }
}

/// What the templates see of the site: `site.title`, `site.tagline`.
fn site_value(config: &Config) -> Value {
    context! {
        title => config.title.as_str(),
        tagline => config.tagline.as_str(),
    }
}

/// One page, rendered to its final HTML and put in the content-addressed
/// [`Store`]; the value is the page's hash, not its HTML.
///
/// That keeps the memo (and the cache file) small: 64 hex digits per page
/// instead of the page. Early cutoff still works: the same HTML has the same
/// hash. Putting a blob from a query is a side effect, but a safe one: the
/// file is named by its content, so re-running or running twice writes the
/// same bytes to the same name.
///
/// Templates see `page` (`title`, `section`, `url`), `site`, `content` (the
/// page's HTML, marked safe), `root` (the relative path back to the output
/// root) and `section_nav` (the sidebar: `file` and `title` of each page of
/// the section). Everything else is escaped (minijinja escapes `.html`
/// templates by default).
pub struct RenderPage {
    pub store: Store,
}
#[async_trait]
impl AsyncQuery for RenderPage {
    type Key = String;
    type Value = Hash;
    async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<Hash> {
        let (page, config) = tokio::join!(
            cx.query::<ParsePage>(path.clone()),
            cx.query::<SiteConfig>(())
        );
        let (page, config) = (page?, config?);
        let name = format!("{}.html", page.template);
        let env = environment(cx);
        let page_value = context! {
            title => page.title.as_ref(),
            section => page.section.as_str(),
            url => page.url.as_str(),
        };
        let render = |section_nav: Value| {
            let ctx = context! {
                page => page_value.clone(),
                site => site_value(&config),
                content => Value::from_safe_string(page.html.clone()),
                // `../../`: safe as it is (escaping would write `&#x2f;`).
                root => Value::from_safe_string(root_of(&page.url)),
                section_nav => section_nav,
            };
            env.get_template(&name).and_then(|t| t.render(ctx))
        };
        let failed =
            |e: minijinja::Error| Error::msg(format!("content/{path} (template {name}): {e}"));
        let probe = Arc::new(Probe::default());
        let mut html = render(Value::from_dyn_object(probe.clone())).map_err(failed)?;
        // Dependencies are whatever this execution actually read: only pages
        // whose templates show the sidebar depend on SectionNav.
        if probe.0.load(Ordering::Relaxed) {
            let nav = cx.query::<SectionNav>(page.section.clone()).await?;
            let links = Value::from_iter(nav.iter().map(|(file, title)| {
                context! { file => file.as_str(), title => title.as_ref() }
            }));
            html = render(links).map_err(failed)?;
        }
        Ok(self.store.put(html.into_bytes()))
    }
}

/// The home page: every section and page, from the navigation, through
/// `templates/index.html` (which sees `site` and `sections`: `name` and
/// `pages`, each with `url` and `title`). Like [`RenderPage`], its value is
/// the hash of the HTML in the store.
pub struct SiteIndex {
    pub store: Store,
}
#[async_trait]
impl AsyncQuery for SiteIndex {
    type Key = ();
    type Value = Hash;
    async fn execute(&self, cx: &QueryCx, (): ()) -> QueryResult<Hash> {
        // Two independent reads: run them concurrently with `join!`.
        let (nav, config) = tokio::join!(cx.query::<SiteNav>(()), cx.query::<SiteConfig>(()));
        let (nav, config) = (nav?, config?);
        let sections = Value::from_iter(nav.sections.iter().map(|section| {
            let name = match section.name.as_str() {
                "" => "pages",
                name => name,
            };
            let pages = Value::from_iter(section.pages.iter().map(|(url, title)| {
                context! { url => url.as_str(), title => title.as_ref() }
            }));
            context! { name => name, pages => pages }
        }));
        let ctx = context! {
            site => site_value(&config),
            sections => sections,
            root => "",
        };
        let html = environment(cx)
            .get_template("index.html")
            .and_then(|t| t.render(ctx))
            .map_err(|e| Error::msg(format!("templates/index.html: {e}")))?;
        Ok(self.store.put(html.into_bytes()))
    }
}

/// Registers every kind, all of them persistent. A database is built once;
/// its handle is a cheap pointer to share.
///
/// A cache file matches kinds by these names (not by Rust type names, so
/// renaming a type keeps the cache) and by the shape of their key and value
/// types: a kind whose types changed is dropped at load and recomputed. What
/// the names cannot see is a change in what a query *computes*: after
/// editing a query's body, bump its version suffix so old memos are dropped.
///
/// The query kinds print in the step tables in this order of registration.
/// `RenderPage` and `SiteIndex` put their HTML in `store`.
pub fn database(store: &Store) -> picante::Result<Database> {
    Database::builder()
        .persistent_input_as::<SourceFile>("site.source-file")
        .persistent_input_as::<TemplateFile>("site.template-file")
        .persistent_input_as::<ConfigFile>("site.config-file")
        .persistent_input_as::<PageList>("site.page-list")
        .persistent_input_as::<ScanStamps>("site.scan-stamps")
        .persistent_query_as(SiteConfig, "site.site-config.v1")
        .persistent_query_as(ParsePage, "site.parse-page.v1")
        .persistent_query_as(PageTitle, "site.page-title.v1")
        .persistent_query_as(SiteNav, "site.site-nav.v1")
        .persistent_query_as(SectionNav, "site.section-nav.v2")
        .persistent_query_as(
            RenderPage {
                store: store.clone(),
            },
            "site.render-page.v3",
        )
        .persistent_query_as(
            SiteIndex {
                store: store.clone(),
            },
            "site.site-index.v3",
        )
        // A dev server runs for hours while pages come and go: every rebuild
        // reads every page, so what 50 rebuilds did not read is the memos of
        // deleted pages and the tombstones of their files. Collect them
        // (they would otherwise stay in memory and in the cache).
        .collect_garbage(picante::Collect::unused_for(50))
        // A live progress line while a large cache loads or saves.
        .cache_progress(crate::driver::cache_progress)
        .build()
}
