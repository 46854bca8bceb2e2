//! The plugin: a separate process that renders pages. It knows nothing about
//! picante. It reads render requests on stdin, and whenever it needs a
//! template or a partial it asks the host over stdout and waits for the
//! answer. Several requests are rendered at once, each with its own
//! callbacks in flight.
//!
//! The plugin keeps no cache: every template it uses, it asks for, every
//! time. That is what lets the host see, and picante record, exactly what
//! each page used. The host answers from picante's memos, so asking is cheap.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::protocol::Msg;

type Waiting = Mutex<HashMap<(u64, u64), oneshot::Sender<Result<String, String>>>>;

/// The plugin's way to talk to the host while rendering request `req`.
#[derive(Clone)]
struct Host {
    req: u64,
    out: mpsc::UnboundedSender<String>,
    waiting: Arc<Waiting>,
    next_cb: Arc<AtomicU64>,
}

impl Host {
    /// A callback: asks the host for the template or partial `name`.
    async fn fetch(&self, name: &str) -> Result<String, String> {
        let cb = self.next_cb.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert((self.req, cb), tx);
        let msg = Msg::Fetch {
            req: self.req,
            cb,
            name: name.to_string(),
        };
        self.out
            .send(msg.encode())
            .map_err(|_| "the host went away".to_string())?;
        rx.await
            .map_err(|_| "the host went away".to_string())?
            .map_err(|e| format!("{name}: {e}"))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The plugin's main loop.
pub async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // One writer task owns stdout, so lines from concurrent renders never
    // interleave.
    let (out, mut lines_out) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(mut line) = lines_out.recv().await {
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });

    let waiting: Arc<Waiting> = Arc::default();
    let next_cb = Arc::new(AtomicU64::new(0));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match Msg::decode(&line)? {
            Msg::Render {
                req,
                page,
                template,
                title,
                body,
            } => {
                let host = Host {
                    req,
                    out: out.clone(),
                    waiting: waiting.clone(),
                    next_cb: next_cb.clone(),
                };
                // Each request renders on its own task: a slow page does not
                // hold up the others.
                tokio::spawn(async move {
                    let result = render(&host, &page, &template, &title, &body).await;
                    let _ = host.out.send(Msg::Done { req, result }.encode());
                });
            }
            Msg::Fetched { req, cb, result } => {
                if let Some(tx) = lock(&waiting).remove(&(req, cb)) {
                    let _ = tx.send(result);
                }
            }
            other => return Err(format!("plugin: unexpected message {other:?}").into()),
        }
    }
    // stdin closed: the host is done with us.
    drop(out);
    let _ = writer.await;
    Ok(())
}

async fn render(
    host: &Host,
    page: &str,
    template: &str,
    title: &str,
    body: &str,
) -> Result<String, String> {
    // Pretend rendering takes a moment, so that requests overlap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (layout, content) = tokio::join!(
        async {
            let layout = host.fetch(template).await?;
            expand(host, layout, 0).await
        },
        // Pages may use partials in their body too (`{{> newsletter}}`):
        // which partials a page needs is only known once the plugin reads it.
        expand(host, body.to_string(), 0),
    );
    let (layout, content) = (layout?, content?);
    Ok(layout
        .replace("{{title}}", title)
        .replace("{{page}}", page)
        .replace("{{content}}", &content))
}

/// Replaces every `{{> name}}` in `text` with the partial `name` (itself
/// expanded), fetching the partials of one level concurrently.
fn expand(
    host: &Host,
    text: String,
    depth: usize,
) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
    Box::pin(async move {
        if depth > 8 {
            return Err("partials nested more than 8 deep (an include cycle?)".to_string());
        }
        // Split into text and includes.
        let mut parts: Vec<Result<&str, String>> = Vec::new(); // Ok(text) | Err(partial name)
        let mut rest = text.as_str();
        while let Some(start) = rest.find("{{>") {
            let Some(end) = rest[start..].find("}}") else {
                return Err("`{{>` is never closed".to_string());
            };
            parts.push(Ok(&rest[..start]));
            parts.push(Err(rest[start + 3..start + end].trim().to_string()));
            rest = &rest[start + end + 2..];
        }
        parts.push(Ok(rest));

        // Fetch every distinct partial of this level at once: several
        // callbacks of one request in flight together.
        let mut fetches = JoinSet::new();
        let mut asked = std::collections::HashSet::new();
        for name in parts.iter().filter_map(|p| p.as_ref().err()) {
            if asked.insert(name.clone()) {
                let (host, name) = (host.clone(), name.clone());
                fetches.spawn(async move {
                    let text = host.fetch(&name).await?;
                    let text = expand(&host, text, depth + 1).await?;
                    Ok::<_, String>((name, text))
                });
            }
        }
        let mut expanded = HashMap::new();
        while let Some(joined) = fetches.join_next().await {
            let (name, text) = joined.map_err(|e| e.to_string())??;
            expanded.insert(name, text);
        }
        let mut out = String::with_capacity(text.len());
        for part in &parts {
            match part {
                Ok(text) => out.push_str(text),
                Err(name) => out.push_str(expanded.get(name).map_or("", String::as_str)),
            }
        }
        Ok(out)
    })
}
