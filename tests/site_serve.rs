//! End to end: the site example's dev server (`site --serve`,
//! `examples/site/serve.rs`) on a copy of the sample in a temporary
//! directory, over real HTTP on a free port of 127.0.0.1.
//!
//! The example's own modules are compiled into this test as they are; the
//! client is hyper's HTTP/1 connection (no browser). Every wait has a
//! timeout, so a hang fails the test instead of stalling CI. The file
//! watcher is asynchronous by nature: the test waits for its effects (an
//! event, a finished build), never sleeps for them.

mod common;

#[allow(dead_code)]
#[path = "../examples/site/driver.rs"]
mod driver;
#[allow(dead_code)]
#[path = "../examples/site/markup.rs"]
mod markup;
#[allow(dead_code)]
#[path = "../examples/site/queries.rs"]
mod queries;
#[allow(dead_code)]
#[path = "../examples/site/serve.rs"]
mod serve;
#[allow(dead_code)]
#[path = "../examples/site/store.rs"]
mod store;
#[allow(dead_code)]
#[path = "../examples/site/watch.rs"]
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch as channel};

/// The longest any one step may take (a rebuild of the sample takes tens of
/// milliseconds; this is for a loaded CI machine).
const STEP: Duration = Duration::from_secs(20);

/// How long a page's stream is watched to see that nothing arrives on it.
/// This only adds a check: the step after it proves the same thing exactly
/// (the next event on the stream is the one for the page's own edit).
const QUIET: Duration = Duration::from_millis(500);

const HABANERO: &str = "content/peppers/habanero.md";
const CAYENNE: &str = "content/peppers/cayenne.md";
const REAPER: &str = "content/peppers/carolina-reaper.md";

async fn step<F: Future>(what: &str, fut: F) -> F::Output {
    common::within(what, STEP, fut).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_exactly_the_pages_whose_html_changed() {
    let tmp = TempDir::new();
    let src = tmp.0.join("site");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/site/sample"),
        &src,
    );
    let listener = serve::listen(0).await.expect("listening on a free port");
    let site = step("the first build", open_site(&src, &tmp.0)).await;
    let watcher = watch::SourceWatcher::new(&src).expect("watching the site");
    let server = serve::Server::new(site, watcher, listener).expect("a server");
    let addr = server.addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let mut builds = server.builds();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // Pages carry the reload script; other files are served as they are.
    let (status, html) = get(addr, "/peppers/habanero.html").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("then stays."), "{html}");
    let v1 = version(&html);
    // The version is the page's hash in the store: what RenderPage returned.
    assert_eq!(
        v1,
        blake3::hash(without_script(&html).as_bytes())
            .to_hex()
            .as_str()
    );
    let (status, index) = get(addr, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(index.contains("Habanero") && index.contains(serve::EVENTS));
    let (status, css) = get(addr, "/style.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!css.contains("<script"));
    assert_eq!(get(addr, "/../Cargo.toml").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        get(addr, "/peppers/nothing.html").await.0,
        StatusCode::NOT_FOUND
    );

    // Edit the page: its stream says reload, and the page has the new HTML.
    let mut habanero = Events::open(addr, "peppers/habanero.html", &v1).await;
    edit(&src, HABANERO, "then stays.", "then lingers.");
    let v2 = habanero
        .reload("the reload after editing habanero.md")
        .await;
    assert_ne!(v2, v1);
    let (status, html) = get(addr, "/peppers/habanero.html").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("then lingers."), "{html}");
    assert_eq!(version(&html), v2);

    // The browser reloaded: a new stream, at the new version. Editing
    // another page rebuilds that page alone, and this stream stays silent.
    drop(habanero);
    let mut habanero = Events::open(addr, "peppers/habanero.html", &v2).await;
    edit(&src, CAYENNE, "clean, sharp heat", "clean, bright heat");
    let built = wait_build(&mut builds, "the rebuild after editing cayenne.md", |b| {
        b.written.iter().any(|w| w == "peppers/cayenne.html")
    })
    .await;
    assert_eq!(built.written, ["peppers/cayenne.html"]);
    assert_eq!(get(addr, "/peppers/cayenne.html").await.0, StatusCode::OK);
    if let Ok(event) = tokio::time::timeout(QUIET, habanero.next()).await {
        panic!("habanero.html was sent {event:?} after an edit of cayenne.md");
    }
    // A whitespace-only edit of the page itself: re-parsed, same HTML (early
    // cutoff), no reload either.
    let before = built.revision;
    edit(&src, HABANERO, "then lingers.\n", "then lingers.   \n\n");
    let built = wait_build(&mut builds, "the rebuild after a whitespace edit", |b| {
        b.revision > before
    })
    .await;
    assert!(built.written.is_empty(), "{:?}", built.written);
    if let Ok(event) = tokio::time::timeout(QUIET, habanero.next()).await {
        panic!("habanero.html was sent {event:?} after an edit that left its HTML as it was");
    }

    // A broken front matter: the page reloads into an error page, and back
    // into the page once the file is fixed. (This event is also the first
    // one on the stream since it opened: none came from the two edits above.)
    let good = std::fs::read_to_string(src.join(HABANERO)).expect("habanero.md");
    write(&src, HABANERO, "---\ntitle: Habanero\nno closing line\n");
    let v3 = habanero
        .reload("the reload after breaking habanero.md")
        .await;
    assert!(v3.starts_with("error-"), "{v3}");
    let (status, html) = get(addr, "/peppers/habanero.html").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(html.contains("front matter line"), "{html}");
    assert_eq!(version(&html), v3);
    drop(habanero);
    let mut habanero = Events::open(addr, "peppers/habanero.html", &v3).await;
    write(&src, HABANERO, &good);
    let v4 = habanero.reload("the reload after fixing habanero.md").await;
    assert_eq!(v4, v2, "the same HTML as before it broke");
    let (status, html) = get(addr, "/peppers/habanero.html").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("then lingers."), "{html}");
    drop(habanero);

    // A new page, then the same page removed.
    write(
        &src,
        REAPER,
        "---\ntitle: Carolina Reaper\n---\nHotter still.\n",
    );
    wait_build(&mut builds, "the build of a new page", |b| {
        b.written
            .iter()
            .any(|w| w == "peppers/carolina-reaper.html")
    })
    .await;
    let (status, html) = get(addr, "/peppers/carolina-reaper.html").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Hotter still."), "{html}");
    std::fs::remove_file(src.join(REAPER)).expect("removing the page");
    wait_build(&mut builds, "the build after removing a page", |b| {
        b.deleted
            .iter()
            .any(|w| w == "peppers/carolina-reaper.html")
    })
    .await;
    assert_eq!(
        get(addr, "/peppers/carolina-reaper.html").await.0,
        StatusCode::NOT_FOUND
    );
    assert!(!tmp.0.join("out/peppers/carolina-reaper.html").exists());

    // Stop: the server ends by itself (its open streams closed) and leaves
    // the cache as one compacted file.
    let open = Events::open(addr, "index.html", "any").await;
    let _ = stop.send(());
    step("the server to stop", running)
        .await
        .expect("the server task")
        .expect("the server");
    drop(open);
    let cache = tmp.0.join("cache/cache.bin");
    assert!(cache.exists(), "no cache at {}", cache.display());
    let log = driver::log_path(&cache);
    assert!(std::fs::metadata(&log).map_or(true, |m| m.len() == 0));
}

/// The site as `site --serve` opens it (`build_site` in the example's
/// main.rs, without the printing): a new cache, a first build, saved.
async fn open_site(src: &Path, tmp: &Path) -> watch::Site {
    let cache = driver::Cache::new(tmp.join("cache"));
    let store = cache.store().expect("the store");
    let db = queries::database(&store).expect("the database");
    let mut scanner = driver::Scanner::new(src).expect("a site");
    let mut output = driver::Output::new(tmp.join("out"), store).with_static(src.join("static"));
    scanner.sync(&db).await.expect("the scan");
    let build = driver::build(&db, &mut output, false)
        .await
        .expect("the build");
    assert!(build.failed.is_empty(), "{:?}", build.failed);
    assert_eq!(build.pages, 30);
    let mut site = watch::Site {
        db,
        scanner,
        output,
        cache: Some(cache),
    };
    site.update_cache().await;
    site
}

/// Waits for a published build that satisfies `done`.
async fn wait_build(
    builds: &mut channel::Receiver<serve::Built>,
    what: &str,
    done: impl FnMut(&serve::Built) -> bool,
) -> serve::Built {
    step(what, builds.wait_for(done))
        .await
        .expect("the server is running")
        .clone()
}

// ---------------------------------------------------------------------------
// HTTP: one connection per request, hyper's HTTP/1 client.
// ---------------------------------------------------------------------------

async fn request(addr: SocketAddr, path: &str) -> hyper::Response<Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connecting");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("the HTTP handshake");
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a request");
    sender.send_request(request).await.expect("a response")
}

/// `GET path`: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    step(&format!("GET {path}"), async {
        let response = request(addr, path).await;
        let status = response.status();
        let body = response.into_body().collect().await.expect("the body");
        let body = String::from_utf8(body.to_bytes().to_vec()).expect("a UTF-8 body");
        (status, body)
    })
    .await
}

/// The version in a served page's reload script (`?v=...`).
fn version(html: &str) -> String {
    let start = html.find("?v=").expect("the page has the reload script") + 3;
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The page as the build wrote it: without the script the server adds.
fn without_script(html: &str) -> String {
    let start = html.rfind("<script>").expect("the reload script");
    let end = html[start..].find("</script>\n").expect("its end") + start + "</script>\n".len();
    format!("{}{}", &html[..start], &html[end..])
}

/// A page's event stream, as the injected script opens it.
struct Events {
    body: Incoming,
    text: String,
}

impl Events {
    async fn open(addr: SocketAddr, page: &str, version: &str) -> Events {
        let path = format!("{}/{page}?v={version}", serve::EVENTS);
        let response = step(&format!("GET {path}"), request(addr, &path)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/event-stream");
        Events {
            body: response.into_body(),
            text: String::new(),
        }
    }

    /// The next event, as `(name, data)`; keep-alive comments are skipped.
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = value.trim().to_string();
                    }
                }
                if !name.is_empty() || !data.is_empty() {
                    return (name, data);
                }
                continue;
            }
            let frame = self
                .body
                .frame()
                .await
                .expect("the event stream ended")
                .expect("the event stream failed");
            if let Ok(bytes) = frame.into_data() {
                self.text
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8 events"));
            }
        }
    }

    /// Waits for a `reload` event; returns its data, the page's new version.
    async fn reload(&mut self, what: &str) -> String {
        let (name, data) = step(what, self.next()).await;
        assert_eq!(name, "reload", "{what}: got {name}: {data}");
        data
    }
}

// ---------------------------------------------------------------------------
// Files.
// ---------------------------------------------------------------------------

fn edit(root: &Path, rel: &str, from: &str, to: &str) {
    let text = std::fs::read_to_string(root.join(rel)).expect("reading a page");
    assert!(text.contains(from), "{rel} does not contain {from:?}");
    write(root, rel, &text.replacen(from, to, 1));
}

fn write(root: &Path, rel: &str, text: &str) {
    std::fs::write(root.join(rel), text).expect("writing a page");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating a directory");
    for entry in std::fs::read_dir(from).expect("listing the sample") {
        let entry = entry.expect("listing the sample");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copying the sample");
        }
    }
}

/// A directory of this test under the system's temp directory, deleted when
/// dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("picante-site-serve-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
