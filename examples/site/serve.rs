//! `--serve`: a dev server. It serves the site on `127.0.0.1` (axum),
//! rebuilds on change (`watch.rs`), and reloads each open page whose HTML
//! changed, and only those, over server-sent events.
//!
//! Each HTML page is served with a small script that opens
//! `/__picante/events/<page>?v=<version>`, the version being the hash of the
//! HTML it got (the value of the page's `RenderPage` memo). The server
//! answers with `db.watch::<RenderPage>(page)`: a stream of that page's hash
//! that yields only when a new revision changes it. Edit the page: its
//! stream yields and the tab reloads. Edit another page, or add a space to
//! this one: nothing (picante revalidates the memo, or the re-render is cut
//! off as the same HTML), and the tab stays as it is. Ten tabs on one page
//! share one execution per revision.
//!
//! A page that fails (a template error, a bad front matter) is served as an
//! error page with the same script; its version is the error's, so fixing
//! the file reloads it into the page.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use picante::{Database, Revision, Snapshot, Watch};
use tokio::sync::{mpsc, watch};

use crate::driver::Result;
use crate::queries::{PageList, RenderPage, SiteIndex};
use crate::store::{Hash, Store};
use crate::watch::{Rebuilt, Site, Source, SourceWatcher};

/// Where a page's event stream is: `EVENTS/<page>?v=<version>`.
pub const EVENTS: &str = "/__picante/events";

/// The version of a page that did not exist when it was served.
const MISSING: &str = "missing";

/// A finished build, as the server serves it.
#[derive(Clone)]
pub struct Built {
    pub revision: Revision,
    /// The database at that revision. Pages are served from it, so a request
    /// made during a rebuild gets the previous build whole, never half of
    /// the next one.
    pub snapshot: Snapshot,
    /// Output files written and deleted by the build (empty for the first;
    /// read by the end-to-end test, `tests/site_serve.rs`).
    #[allow(dead_code)]
    pub written: Vec<String>,
    #[allow(dead_code)]
    pub deleted: Vec<String>,
}

/// What the request handlers share.
#[derive(Clone)]
struct App {
    db: Database,
    store: Store,
    out: PathBuf,
    built: watch::Receiver<Built>,
    /// Becomes true at shutdown: event streams end, so connections close.
    stopping: watch::Receiver<bool>,
    /// Counts the builds that copied a static file (a stylesheet): every
    /// open page reloads then.
    statics: watch::Receiver<u64>,
}

/// A built site, bound to its address, ready to [`Server::run`].
pub struct Server {
    site: Site,
    watcher: SourceWatcher,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    built: watch::Sender<Built>,
    stopping: watch::Sender<bool>,
    statics: watch::Sender<u64>,
}

/// Listens on `127.0.0.1:port` (`0`: a free port). Call it before the
/// first build, so that a port in use is said at once.
pub async fn listen(port: u16) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => " (--port 0 picks a free port)",
                _ => "",
            };
            format!("cannot listen on 127.0.0.1:{port}: {e}{hint}").into()
        })
}

impl Server {
    /// The server of `site`, which must be built, on `listener` (from
    /// [`listen`]); `watcher` watches the site's directory.
    pub fn new(
        site: Site,
        watcher: SourceWatcher,
        listener: tokio::net::TcpListener,
    ) -> Result<Server> {
        let addr = listener.local_addr()?;
        let built = Built {
            revision: site.db.revision(),
            snapshot: site.db.snapshot(),
            written: Vec::new(),
            deleted: Vec::new(),
        };
        Ok(Server {
            site,
            watcher,
            listener,
            addr,
            built: watch::Sender::new(built),
            stopping: watch::Sender::new(false),
            statics: watch::Sender::new(0),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The site's directory.
    pub fn root(&self) -> &std::path::Path {
        self.site.scanner.root()
    }

    /// Every finished build, as it is published to the browsers (for the
    /// end-to-end test).
    #[allow(dead_code)]
    pub fn builds(&self) -> watch::Receiver<Built> {
        self.built.subscribe()
    }

    /// Serves and rebuilds on change until `shutdown` resolves; then closes
    /// the connections and saves the cache.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let app = App {
            db: self.site.db.clone(),
            store: self.site.output.store().clone(),
            out: self.site.output.dir().to_path_buf(),
            built: self.built.subscribe(),
            stopping: self.stopping.subscribe(),
            statics: self.statics.subscribe(),
        };
        let router = Router::new()
            .route(&format!("{EVENTS}/{{*page}}"), get(events))
            .route("/", get(root))
            .route("/{*path}", get(file))
            .with_state(app);
        let mut stopping = self.stopping.subscribe();
        let server = tokio::spawn(
            axum::serve(self.listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                })
                .into_future(),
        );

        let (built, statics) = (&self.built, &self.statics);
        crate::watch::run(
            &mut self.site,
            self.watcher,
            shutdown,
            |site: &Site, rebuilt: &Rebuilt| {
                if let Some(build) = &rebuilt.build {
                    built.send_replace(Built {
                        revision: rebuilt.revision,
                        snapshot: site.db.snapshot(),
                        written: build.written.clone(),
                        deleted: build.deleted.clone(),
                    });
                }
                if !rebuilt.copied.is_empty() {
                    statics.send_modify(|n| *n += 1);
                }
            },
        )
        .await;

        println!();
        println!("Stopping: closing connections, saving the cache");
        // Event streams end, so browsers' connections close and the server's
        // graceful shutdown can finish.
        self.stopping.send_replace(true);
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("  error: the server stopped with {e}"),
            Ok(Err(e)) => eprintln!("  error: the server task failed: {e}"),
            Err(_) => eprintln!("  warning: connections still open after 5 s; closed"),
        }
        self.site.close().await
    }
}

// ---------------------------------------------------------------------------
// Pages and files.
// ---------------------------------------------------------------------------

async fn root(State(app): State<App>) -> Response {
    serve_path(&app, "").await
}

async fn file(State(app): State<App>, UrlPath(path): UrlPath<String>) -> Response {
    serve_path(&app, &path).await
}

/// A page from the last build, with the reload script; any other file from
/// the output directory, as it is.
async fn serve_path(app: &App, path: &str) -> Response {
    let Some(rel) = output_path(path) else {
        return not_found(path, None);
    };
    if let Some(source) = Source::of(&rel) {
        let snapshot = app.built.borrow().snapshot.clone();
        if !exists(&snapshot, &source) {
            return not_found(&rel, Some(MISSING));
        }
        // A memo hit: the build verified every page at this revision.
        let result = source.query(&snapshot).await;
        let version = version_of(&result);
        return match result {
            Ok(hash) => match tokio::fs::read(app.store.path_of(&hash)).await {
                Ok(html) => html_response(StatusCode::OK, with_script(html, &version)),
                Err(e) => server_error(&format!("the store has no page {hash}: {e}")),
            },
            Err(e) => {
                let page = error_page(&rel, &e.to_string());
                html_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    with_script(page.into_bytes(), &version),
                )
            }
        };
    }
    match tokio::fs::read(app.out.join(&rel)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(&rel)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            bytes,
        )
            .into_response(),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory
            ) =>
        {
            not_found(&rel, None)
        }
        Err(e) => server_error(&format!("cannot read {rel}: {e}")),
    }
}

/// The file a URL path names, relative to the output directory (`""` and
/// `dir/` name their `index.html`), or `None` for a path that would leave
/// it (`..`) or names a hidden file.
fn output_path(path: &str) -> Option<String> {
    let mut rel = path.trim_start_matches('/').to_string();
    if rel.is_empty() || rel.ends_with('/') {
        rel.push_str("index.html");
    }
    let bad = |part: &str| part.is_empty() || part.starts_with('.') || part.contains('\\');
    (!rel.split('/').any(bad)).then_some(rel)
}

/// Whether the build at `snapshot` has this page.
fn exists(snapshot: &Snapshot, source: &Source) -> bool {
    match source {
        Source::Index => true,
        Source::Page(path) => snapshot
            .input_opt::<PageList>(&())
            .ok()
            .flatten()
            .is_some_and(|pages| pages.contains(path)),
    }
}

/// The version of a page as the browser got it: its hash, or for a page
/// that failed, a hash of the error (so a different error is a change too).
fn version_of(result: &picante::Result<Hash>) -> String {
    match result {
        Ok(hash) => hash.to_string(),
        Err(e) => {
            let hash = blake3::hash(e.to_string().as_bytes()).to_hex();
            format!("error-{}", &hash.as_str()[..16])
        }
    }
}

/// The HTML with the reload script before its last `</body>` (or at the
/// end). The files in the output have no such script: it is added here.
fn with_script(mut html: Vec<u8>, version: &str) -> Vec<u8> {
    let script = format!(
        r#"<script>
// Added by `site --serve`: reload this page when its HTML changes.
(() => {{
  const page = location.pathname.endsWith("/") ? location.pathname + "index.html" : location.pathname;
  const events = new EventSource("{EVENTS}" + page + "?v={version}");
  events.addEventListener("reload", () => location.reload());
}})();
</script>
"#
    );
    let lower = html.to_ascii_lowercase();
    let at = lower
        .windows(7)
        .rposition(|w| w == b"</body>")
        .unwrap_or(html.len());
    html.splice(at..at, script.into_bytes());
    html
}

fn html_response(status: StatusCode, html: Vec<u8>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// A page that failed to build, as the browser shows it.
fn error_page(url: &str, error: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Build error · {url}</title>\n\
         <style>body {{ font: 16px/1.5 system-ui, sans-serif; margin: 2rem; }} \
         pre {{ background: #fde8e8; padding: 1rem; white-space: pre-wrap; }}</style>\n\
         </head>\n<body>\n<h1>{url} failed to build</h1>\n<pre>{}</pre>\n\
         <p>Fix the file and save: this page reloads by itself.</p>\n</body>\n</html>\n",
        escape(error),
        url = escape(url),
    )
}

fn not_found(path: &str, version: Option<&str>) -> Response {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Not found</title>\n</head>\n<body>\n<h1>Not found</h1>\n\
         <p>The site has no /{}.</p>\n</body>\n</html>\n",
        escape(path.trim_start_matches('/'))
    );
    let page = match version {
        // A page that may appear: reload when it does.
        Some(version) => with_script(page.into_bytes(), version),
        None => page.into_bytes(),
    };
    html_response(StatusCode::NOT_FOUND, page)
}

fn server_error(message: &str) -> Response {
    eprintln!("  error: {message}");
    (StatusCode::INTERNAL_SERVER_ERROR, message.to_string()).into_response()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn content_type(path: &str) -> HeaderValue {
    let extension = path.rsplit_once('.').map_or("", |(_, e)| e);
    HeaderValue::from_static(match extension.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    })
}

// ---------------------------------------------------------------------------
// Reload events: one stream per open page, driven by `db.watch`.
// ---------------------------------------------------------------------------

/// `GET EVENTS/<page>?v=<version>`: an event stream that sends `reload`
/// when the page's HTML is no longer `version`.
async fn events(
    State(app): State<App>,
    UrlPath(page): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(source) = output_path(&page).and_then(|rel| Source::of(&rel)) else {
        return not_found(&page, None);
    };
    let version = query.get("v").cloned().unwrap_or_default();
    // The stream is fed by a task of its own; when the browser goes away
    // the stream is dropped, and the task (and its watch) with it.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(follow(app, source, version, tx));
    Sse::new(EventStream(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A page's value over time: `db.watch` on the query that renders it.
enum PageWatch {
    Index(Watch<SiteIndex>),
    Page(Watch<RenderPage>),
}

impl PageWatch {
    fn new(db: &Database, source: &Source) -> PageWatch {
        match source {
            Source::Index => PageWatch::Index(db.watch::<SiteIndex>(())),
            Source::Page(path) => PageWatch::Page(db.watch::<RenderPage>(path.clone())),
        }
    }

    /// The current value first, then each value a new revision changes it
    /// to. Cancel-safe: a call dropped before it returns loses nothing.
    async fn next(&mut self) -> picante::Result<Hash> {
        match self {
            PageWatch::Index(watch) => watch.next_value().await,
            PageWatch::Page(watch) => watch.next_value().await,
        }
    }
}

/// Sends `reload` on `tx` each time the page's value differs from the one
/// the browser has, once the build that wrote the new one has finished (so
/// the reload gets it). Ends when the browser disconnects or the server stops.
async fn follow(app: App, source: Source, mut version: String, tx: mpsc::Sender<Event>) {
    let mut values = PageWatch::new(&app.db, &source);
    let (mut built, mut stopping, mut statics) = (app.built, app.stopping, app.statics);
    statics.mark_unchanged();
    loop {
        let value = tokio::select! {
            value = values.next() => value,
            changed = statics.changed() => match changed {
                Ok(()) => {
                    let reload = Event::default().event("reload").data("static");
                    if tx.send(reload).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(_) => return,
            },
            () = tx.closed() => return,
            () = stopped(&mut stopping) => return,
        };
        let still_missing = version == MISSING && value.is_err() && {
            let pages = app.db.input_opt::<PageList>(&()).ok().flatten();
            !matches!(&source, Source::Page(path) if pages.is_some_and(|p| p.contains(path)))
        };
        let now = version_of(&value);
        if now == version || still_missing {
            continue;
        }
        // The value is at the database's revision (or an older one): the
        // build of that revision has written the page once it is published.
        let revision = app.db.revision();
        tokio::select! {
            done = built_at(&mut built, revision) => {
                if !done {
                    return;
                }
            }
            () = tx.closed() => return,
            () = stopped(&mut stopping) => return,
        }
        let reload = Event::default().event("reload").data(&now);
        version = now;
        if tx.send(reload).await.is_err() {
            return;
        }
    }
}

/// Resolves once the server is stopping.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Resolves once a build at `revision` or later is published: `false` if
/// none will be (the server is gone).
async fn built_at(built: &mut watch::Receiver<Built>, revision: Revision) -> bool {
    built.wait_for(|b| b.revision >= revision).await.is_ok()
}

/// The receiving end of [`follow`]'s channel, as the stream axum's SSE takes.
struct EventStream(mpsc::Receiver<Event>);

impl futures_core::Stream for EventStream {
    type Item = std::result::Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|event| event.map(Ok))
    }
}
