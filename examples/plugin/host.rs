//! The host side: a client for the plugin process that multiplexes many
//! concurrent render requests over one pipe, and the picante queries that
//! use it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use picante::{AsyncQuery, Database, Error, Input, QueryCx, async_trait};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::protocol::Msg;

// ---------------------------------------------------------------------------
// The plugin client.
// ---------------------------------------------------------------------------

/// A callback from the plugin: "send me template `name`".
pub struct Callback {
    pub cb: u64,
    pub name: String,
}

/// Where the reader task delivers what the plugin says about one request.
struct Pending {
    callbacks: mpsc::UnboundedSender<Callback>,
    done: oneshot::Sender<Result<String, String>>,
}

struct Shared {
    /// Lines to the plugin's stdin (taken on shutdown, which closes stdin).
    to_plugin: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// Requests in flight, by id.
    pending: Mutex<HashMap<u64, Pending>>,
    next_req: AtomicU64,
    requests: AtomicU64,
    callbacks: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

/// A running plugin process.
pub struct Plugin {
    shared: Arc<Shared>,
    child: tokio::sync::Mutex<Option<Child>>,
    pid: Option<u32>,
}

/// Counters of the plugin traffic.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    pub requests: u64,
    pub callbacks: u64,
    pub peak_in_flight: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Plugin {
    /// Starts this same example binary in plugin mode (`--child`), with
    /// piped stdin/stdout, plus one task writing to it and one reading from
    /// it and dispatching replies to the requests waiting for them.
    pub fn spawn() -> Result<Plugin, Box<dyn std::error::Error + Send + Sync>> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this program to start the plugin: {e}"))?;
        let mut child = Command::new(&exe)
            .arg("--child")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the plugin {}: {e}", exe.display()))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the plugin's stdin/stdout are not piped".into());
        };

        let (to_plugin, mut lines_out) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(mut line) = lines_out.recv().await {
                line.push('\n');
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            // Dropping stdin closes the pipe: the plugin sees EOF and exits.
        });

        let shared = Arc::new(Shared {
            to_plugin: Mutex::new(Some(to_plugin)),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            requests: AtomicU64::new(0),
            callbacks: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let reader = shared.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                reader.dispatch(&line);
            }
            // The plugin exited: every request still waiting fails (dropping
            // its `done` sender wakes it up with an error).
            lock(&reader.pending).clear();
        });
        let pid = child.id();
        Ok(Plugin {
            shared,
            child: tokio::sync::Mutex::new(Some(child)),
            pid,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Sends a render request. Callbacks and the result arrive on the
    /// returned [`RenderCall`].
    pub fn start_render(
        &self,
        page: &str,
        template: &str,
        title: &str,
        body: &str,
    ) -> Result<RenderCall, String> {
        let shared = &self.shared;
        let req = shared.next_req.fetch_add(1, Ordering::Relaxed);
        let (callbacks_tx, callbacks) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        lock(&shared.pending).insert(
            req,
            Pending {
                callbacks: callbacks_tx,
                done: done_tx,
            },
        );
        let call = RenderCall {
            shared: shared.clone(),
            req,
            callbacks,
            done,
        };
        let msg = Msg::Render {
            req,
            page: page.to_string(),
            template: template.to_string(),
            title: title.to_string(),
            body: body.to_string(),
        };
        shared.send(msg)?;
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Ok(call)
    }

    pub fn traffic(&self) -> Traffic {
        Traffic {
            requests: self.shared.requests.load(Ordering::Relaxed),
            callbacks: self.shared.callbacks.load(Ordering::Relaxed),
            peak_in_flight: self.shared.peak_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Starts measuring the peak of concurrent requests afresh.
    pub fn reset_peak(&self) {
        self.shared.peak_in_flight.store(0, Ordering::Relaxed);
    }

    /// Closes the plugin's stdin and waits for it to exit.
    pub async fn shutdown(&self) -> Result<(), String> {
        lock(&self.shared.to_plugin).take();
        if let Some(mut child) = self.child.lock().await.take() {
            let status = child.wait().await.map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("the plugin exited with {status}"));
            }
        }
        Ok(())
    }
}

impl Shared {
    fn send(&self, msg: Msg) -> Result<(), String> {
        let guard = lock(&self.to_plugin);
        let tx = guard.as_ref().ok_or("the plugin was shut down")?;
        tx.send(msg.encode())
            .map_err(|_| "the plugin's stdin is closed".to_string())
    }

    /// Routes one line from the plugin to the request it belongs to.
    fn dispatch(&self, line: &str) {
        match Msg::decode(line) {
            Ok(Msg::Fetch { req, cb, name }) => {
                self.callbacks.fetch_add(1, Ordering::Relaxed);
                let delivered = lock(&self.pending)
                    .get(&req)
                    .is_some_and(|p| p.callbacks.send(Callback { cb, name }).is_ok());
                if !delivered {
                    // The request was abandoned (its query was cancelled).
                    let _ = self.send(Msg::Fetched {
                        req,
                        cb,
                        result: Err("request cancelled".to_string()),
                    });
                }
            }
            Ok(Msg::Done { req, result }) => {
                if let Some(p) = lock(&self.pending).remove(&req) {
                    let _ = p.done.send(result);
                }
            }
            Ok(other) => eprintln!("host: unexpected message from the plugin: {other:?}"),
            Err(e) => eprintln!("host: bad line from the plugin: {e}"),
        }
    }
}

/// One render request in flight.
pub struct RenderCall {
    shared: Arc<Shared>,
    req: u64,
    /// Callbacks the plugin makes while rendering this request.
    pub callbacks: mpsc::UnboundedReceiver<Callback>,
    /// The rendered page, or the plugin's error.
    pub done: oneshot::Receiver<Result<String, String>>,
}

impl RenderCall {
    /// A handle that answers this request's callbacks, movable into a task.
    pub fn replier(&self) -> Replier {
        Replier {
            shared: self.shared.clone(),
            req: self.req,
        }
    }
}

impl Drop for RenderCall {
    fn drop(&mut self) {
        // Finished or abandoned: either way, forget it.
        lock(&self.shared.pending).remove(&self.req);
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Replier {
    shared: Arc<Shared>,
    req: u64,
}

impl Replier {
    pub fn reply(&self, cb: u64, result: Result<String, String>) {
        let _ = self.shared.send(Msg::Fetched {
            req: self.req,
            cb,
            result,
        });
    }
}

// ---------------------------------------------------------------------------
// The picante side.
// ---------------------------------------------------------------------------

/// A page's source: its template, title and body.
#[derive(Debug, PartialEq, Eq)]
pub struct PageSource {
    pub template: String,
    pub title: String,
    pub body: String,
}

/// Input: pages by path.
pub struct Page;
impl Input for Page {
    type Key = String;
    type Value = Arc<PageSource>;
}

/// Input: templates and partials by name.
pub struct TemplateFile;
impl Input for TemplateFile {
    type Key = String;
    type Value = Arc<str>;
}

/// A template or partial as the plugin gets it: the file with its
/// `{{! comments }}` removed. Editing only a comment re-runs this query,
/// which then returns the same text: early cutoff, no page re-renders.
pub struct ResolvedPartial;
#[async_trait]
impl AsyncQuery for ResolvedPartial {
    type Key = String;
    type Value = Arc<str>;
    async fn execute(&self, cx: &QueryCx, name: String) -> picante::Result<Arc<str>> {
        let Some(text) = cx.input_opt::<TemplateFile>(&name)? else {
            return Err(Error::msg(format!("no template or partial named {name:?}")));
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = &*text;
        while let Some(start) = rest.find("{{!") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find("}}") else {
                return Err(Error::msg(format!("{name}: `{{{{!` is never closed")));
            };
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        Ok(out.into())
    }
}

/// Renders one page by calling the plugin. The query holds the plugin
/// client: queries are registered as instances and may carry state.
pub struct RenderPage {
    pub plugin: Arc<Plugin>,
}

#[async_trait]
impl AsyncQuery for RenderPage {
    type Key = String;
    type Value = Arc<str>;
    async fn execute(&self, cx: &QueryCx, path: String) -> picante::Result<Arc<str>> {
        let page = cx.input::<Page>(&path)?;
        let mut call = self
            .plugin
            .start_render(&path, &page.template, &page.title, &page.body)
            .map_err(Error::msg)?;

        // While the plugin renders, it calls back for templates. Each
        // callback is answered with `cx.query` made by *this* execution, so
        // picante records ResolvedPartial(name) as a dependency of
        // RenderPage(path) — exactly the partials this page used, as only the
        // plugin knew. Callbacks are answered concurrently, on tasks holding
        // clones of `cx`; every read through a clone is recorded too.
        let mut answers = JoinSet::new();
        let result = loop {
            tokio::select! {
                Some(callback) = call.callbacks.recv() => {
                    let (cx, replier) = (cx.clone(), call.replier());
                    answers.spawn(async move {
                        let text = cx.query::<ResolvedPartial>(callback.name).await;
                        let text = text.map(|t| t.to_string()).map_err(|e| e.to_string());
                        replier.reply(callback.cb, text);
                    });
                }
                done = &mut call.done => break done,
            }
        };
        // Every callback has been answered (the plugin could not finish
        // without them); wait for the tasks so no read outlives the execution.
        while answers.join_next().await.is_some() {}
        match result {
            Ok(Ok(html)) => Ok(html.into()),
            Ok(Err(message)) => Err(Error::msg(format!("plugin failed on {path}: {message}"))),
            Err(_) => Err(Error::msg("the plugin process exited")),
        }
    }
}

pub fn database(plugin: Arc<Plugin>) -> picante::Result<Database> {
    Database::builder()
        .input::<Page>()
        .input::<TemplateFile>()
        .query(ResolvedPartial)
        .query(RenderPage { plugin })
        .build()
}
