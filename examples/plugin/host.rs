//! The host side: the plugin process and its remoc client, and the picante
//! queries that use it. Each render call carries a [`HostClient`] whose
//! server answers the plugin's callbacks through the calling execution's
//! [`QueryCx`], so they are recorded as that page's dependencies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picante::{AsyncQuery, Database, Error, Input, QueryCx, QueryError, QueryResult, async_trait};
use remoc::rch;
use remoc::rtc::ServerShared;
use tokio::process::Command;
use tokio::sync::{oneshot, watch};

use crate::rpc::{Host, HostServerShared, RenderRequest, Renderer, RendererClient, RpcError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the host waits for the plugin to connect, or to exit when asked.
const PATIENCE: Duration = Duration::from_secs(10);

/// How long one render call (with its callbacks) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The plugin process.
// ---------------------------------------------------------------------------

/// A running plugin process and the remoc client of its [`Renderer`].
pub struct Plugin {
    /// Taken on shutdown: dropping the last client ends the plugin's server.
    renderer: Mutex<Option<RendererClient>>,
    pid: Option<u32>,
    /// `Some(status)` once the process has exited, set by a watcher task.
    exited: watch::Receiver<Option<String>>,
    /// Asks the watcher task to kill the process (also when dropped).
    kill: Mutex<Option<oneshot::Sender<()>>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    callbacks: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
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
    /// Starts this same example binary in plugin mode (`--child`, then
    /// `args`) with piped stdin/stdout, opens a remoc connection over them
    /// and receives the plugin's [`RendererClient`].
    pub async fn spawn(args: &[&str]) -> Result<Plugin, BoxError> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this program to start the plugin: {e}"))?;
        let mut child = Command::new(&exe)
            .arg("--child")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the plugin {}: {e}", exe.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the plugin's stdin/stdout are not piped".into());
        };
        let pid = child.id();

        // The watcher owns the process: it reaps it and publishes its exit
        // status, or kills it when asked (or when the `Plugin` is dropped).
        let (exited_tx, exited) = watch::channel(None);
        let (kill, killed) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = killed => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let status =
                status.map_or_else(|e| format!("an unknown status ({e})"), |s| s.to_string());
            let _ = exited_tx.send(Some(status));
        });

        let connect = async {
            let (conn, _to_plugin, mut from_plugin): (
                _,
                rch::base::Sender<()>,
                rch::base::Receiver<RendererClient>,
            ) = remoc::Connect::io_buffered(crate::rpc::connection_cfg(), stdout, stdin, 8192)
                .await
                .map_err(|e| format!("cannot connect to the plugin: {e}"))?;
            // The connection's dispatcher. It ends when the plugin's end of
            // the pipes closes; every call in flight then fails.
            tokio::spawn(conn);
            let renderer = from_plugin
                .recv()
                .await
                .map_err(|e| format!("the plugin did not send its renderer: {e}"))?
                .ok_or("the plugin closed the connection before sending its renderer")?;
            Ok::<_, BoxError>(renderer)
        };
        let renderer = tokio::time::timeout(PATIENCE, connect)
            .await
            .map_err(|_| format!("the plugin did not connect within {PATIENCE:?}"))??;
        Ok(Plugin {
            renderer: Mutex::new(Some(renderer)),
            pid,
            exited,
            kill: Mutex::new(Some(kill)),
            counters: Arc::default(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn name(&self) -> String {
        match self.pid {
            Some(pid) => format!("the plugin process (pid {pid})"),
            None => "the plugin process".to_string(),
        }
    }

    /// Calls [`Renderer::render`], with `host` answering its callbacks.
    async fn render(
        &self,
        request: RenderRequest,
        host: crate::rpc::HostClient,
    ) -> Result<String, String> {
        let page = request.page.clone();
        if let Some(status) = self.exited.borrow().clone() {
            return Err(format!(
                "{} has exited ({status}); cannot render {page}",
                self.name()
            ));
        }
        let Some(renderer) = lock(&self.renderer).clone() else {
            return Err(format!("the plugin was shut down; cannot render {page}"));
        };
        let counters = &self.counters;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let now = counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        counters.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        let _in_flight = InFlight(counters);

        // A dead plugin fails the call at once (the pipes close); a live
        // one that stops answering would not, so each call has a deadline.
        let call = tokio::time::timeout(CALL_TIMEOUT, renderer.render(request, host));
        let Ok(result) = call.await else {
            return Err(format!(
                "{} did not answer within {CALL_TIMEOUT:?} while rendering {page}",
                self.name()
            ));
        };
        match result {
            Ok(html) => Ok(html),
            Err(RpcError::Failed(message)) => {
                Err(format!("the plugin failed on {page}: {message}"))
            }
            Err(RpcError::Call(e)) => Err(self.lost(&page, e).await),
        }
    }

    /// Explains a failed call: did the process die, or only the connection?
    async fn lost(&self, page: &str, e: remoc::rtc::CallError) -> String {
        let mut exited = self.exited.clone();
        // The pipes close as the process exits; the watcher reaps it a moment later.
        let status =
            tokio::time::timeout(Duration::from_secs(2), exited.wait_for(Option::is_some)).await;
        match status {
            Ok(Ok(status)) => format!(
                "{} exited ({}) while rendering {page} (RPC: {e})",
                self.name(),
                status.as_deref().unwrap_or("?")
            ),
            _ => format!(
                "lost the connection to {} while rendering {page}: {e}",
                self.name()
            ),
        }
    }

    pub fn traffic(&self) -> Traffic {
        let c = &self.counters;
        Traffic {
            requests: c.requests.load(Ordering::Relaxed),
            callbacks: c.callbacks.load(Ordering::Relaxed),
            peak_in_flight: c.peak_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Starts measuring the peak of concurrent requests afresh.
    pub fn reset_peak(&self) {
        self.counters.peak_in_flight.store(0, Ordering::Relaxed);
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// Drops the renderer client (the plugin's server then returns and the
    /// process exits) and waits for the exit; kills it if it takes too long.
    pub async fn shutdown(&self) -> Result<(), String> {
        lock(&self.renderer).take();
        let mut exited = self.exited.clone();
        let waited = tokio::time::timeout(PATIENCE, exited.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(status)) => match status.as_deref() {
                Some("exit status: 0") => Ok(()),
                other => Err(format!(
                    "{} exited with {}",
                    self.name(),
                    other.unwrap_or("?")
                )),
            },
            _ => {
                if let Some(kill) = lock(&self.kill).take() {
                    let _ = kill.send(());
                }
                Err(format!(
                    "{} did not exit within {PATIENCE:?}; killed it",
                    self.name()
                ))
            }
        }
    }
}

/// Counts a render call out of flight, however it ends (also if dropped).
struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
    async fn execute(&self, cx: &QueryCx, name: String) -> QueryResult<Arc<str>> {
        let Some(text) = cx.input_opt::<TemplateFile>(&name)? else {
            return Err(QueryError::msg(format!(
                "no template or partial named {name:?}"
            )));
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = &*text;
        while let Some(start) = rest.find("{{!") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find("}}") else {
                return Err(QueryError::msg(format!("{name}: `{{{{!` is never closed")));
            };
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        Ok(out.into())
    }
}

/// The host's side of one render call: the plugin's callbacks, answered by
/// queries through a clone of the calling execution's `cx`.
struct Callbacks {
    cx: QueryCx,
    counters: Arc<Counters>,
}

impl Host for Callbacks {
    async fn partial(&self, name: String) -> Result<String, RpcError> {
        self.counters.callbacks.fetch_add(1, Ordering::Relaxed);
        // Recorded as a dependency of the RenderPage execution that owns `cx`.
        let text = self.cx.query::<ResolvedPartial>(name).await;
        text.map(|t| t.to_string())
            .map_err(|e| RpcError::Failed(e.to_string()))
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
    async fn execute(&self, cx: &QueryCx, path: String) -> QueryResult<Arc<str>> {
        let page = cx.input::<Page>(&path)?;

        // A callback server for this call only, answering through *this*
        // execution's `cx`: picante records ResolvedPartial(name) as a
        // dependency of RenderPage(path) — exactly the partials this page
        // used, as only the plugin knew. `serve(true)` answers callbacks
        // concurrently, each on its own task with the shared `cx` clone.
        let callbacks = Callbacks {
            cx: cx.clone(),
            counters: self.plugin.counters.clone(),
        };
        let (server, host) = HostServerShared::new(Arc::new(callbacks), 16);
        let _serving = AbortOnDrop(tokio::spawn(async move {
            let _ = server.serve(true).await;
        }));

        let request = RenderRequest {
            page: path.clone(),
            template: page.template.clone(),
            title: page.title.clone(),
            body: page.body.clone(),
        };
        // When the call returns, `_serving` stops the callback server: a
        // callback arriving after the call is over is refused, never recorded
        // (picante would refuse the read anyway: the execution is finished).
        let html = self
            .plugin
            .render(request, host)
            .await
            .map_err(Error::msg)?;
        Ok(html.into())
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
