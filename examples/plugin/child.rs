//! The plugin: a separate process that renders pages. It knows nothing about
//! picante. It serves the [`Renderer`] trait over remoc on its stdin/stdout,
//! and whenever it needs a template or a partial it calls back into the host
//! through the [`HostClient`] it got with the request. Several requests are
//! rendered at once (remoc runs each call on its own task), each with its own
//! callbacks in flight.
//!
//! The plugin keeps no cache: every template it uses, it asks for, every
//! time. That is what lets the host see, and picante record, exactly what
//! each page used. The host answers from picante's memos, so asking is cheap.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use remoc::rch;
use remoc::rtc::ServerShared;
use tokio::task::JoinSet;

use crate::rpc::{
    Host, HostClient, RenderRequest, Renderer, RendererClient, RendererServerShared, RpcError,
};

/// The exit status of a plugin told to die mid-call (`--exit-while-rendering`).
pub const CRASH_EXIT_CODE: i32 = 70;

struct Plugin {
    /// Crash test: exit the process in the middle of rendering this page.
    exit_while_rendering: Option<String>,
}

/// The plugin's main loop: connects to the host over stdin/stdout, hands it
/// a [`RendererClient`], and serves render calls until the host drops it.
pub async fn run(
    exit_while_rendering: Option<String>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (conn, mut to_host, _from_host): (
        _,
        rch::base::Sender<RendererClient>,
        rch::base::Receiver<()>,
    ) = remoc::Connect::io_buffered(
        crate::rpc::connection_cfg(),
        tokio::io::stdin(),
        tokio::io::stdout(),
        8192,
    )
    .await
    .map_err(|e| format!("plugin: cannot connect to the host: {e}"))?;
    tokio::spawn(conn);

    let (server, client) = RendererServerShared::new(
        Arc::new(Plugin {
            exit_while_rendering,
        }),
        64,
    );
    to_host
        .send(client)
        .await
        .map_err(|e| format!("plugin: cannot send the renderer to the host: {e}"))?;
    // `true`: every call runs on its own task, so renders overlap. Returns
    // when the host drops its client (or the connection ends).
    server
        .serve(true)
        .await
        .map_err(|e| format!("plugin: serving the host failed: {e}"))?;
    Ok(())
}

impl Renderer for Plugin {
    async fn render(&self, request: RenderRequest, host: HostClient) -> Result<String, RpcError> {
        let RenderRequest {
            page,
            template,
            title,
            body,
        } = request;
        // Pretend rendering takes a moment, so that requests overlap.
        tokio::time::sleep(Duration::from_millis(20)).await;

        if self.exit_while_rendering.as_deref() == Some(page.as_str()) {
            // Crash test: one callback answered, then the process dies with
            // this call (and its callback server) in flight.
            let _ = host.partial(template.clone()).await;
            eprintln!("  [plugin] exiting on purpose while rendering {page} (crash test)");
            std::process::exit(CRASH_EXIT_CODE);
        }

        let (layout, content) = tokio::join!(
            async {
                let layout = fetch(&host, &template).await?;
                expand(&host, layout, 0).await
            },
            // Pages may use partials in their body too (`{{> newsletter}}`):
            // which partials a page needs is only known once the plugin reads it.
            expand(&host, body, 0),
        );
        let (layout, content) = (layout?, content?);
        Ok(layout
            .replace("{{title}}", &title)
            .replace("{{page}}", &page)
            .replace("{{content}}", &content))
    }
}

/// A callback: asks the host for the template or partial `name`.
async fn fetch(host: &HostClient, name: &str) -> Result<String, RpcError> {
    host.partial(name.to_string()).await.map_err(|e| match e {
        RpcError::Failed(message) => RpcError::Failed(format!("{name}: {message}")),
        call => call,
    })
}

/// Replaces every `{{> name}}` in `text` with the partial `name` (itself
/// expanded), fetching the partials of one level concurrently.
fn expand(
    host: &HostClient,
    text: String,
    depth: usize,
) -> Pin<Box<dyn Future<Output = Result<String, RpcError>> + Send + '_>> {
    Box::pin(async move {
        let failed = |m: &str| RpcError::Failed(m.to_string());
        if depth > 8 {
            return Err(failed(
                "partials nested more than 8 deep (an include cycle?)",
            ));
        }
        // Split into text and includes.
        let mut parts: Vec<Result<&str, String>> = Vec::new(); // Ok(text) | Err(partial name)
        let mut rest = text.as_str();
        while let Some(start) = rest.find("{{>") {
            let Some(end) = rest[start..].find("}}") else {
                return Err(failed("`{{>` is never closed"));
            };
            parts.push(Ok(&rest[..start]));
            parts.push(Err(rest[start + 3..start + end].trim().to_string()));
            rest = &rest[start + end + 2..];
        }
        parts.push(Ok(rest));

        // Fetch every distinct partial of this level at once: several
        // callbacks of one request in flight together.
        let mut fetches = JoinSet::new();
        let mut asked = HashSet::new();
        for name in parts.iter().filter_map(|p| p.as_ref().err()) {
            if asked.insert(name.clone()) {
                let (host, name) = (host.clone(), name.clone());
                fetches.spawn(async move {
                    let text = fetch(&host, &name).await?;
                    let text = expand(&host, text, depth + 1).await?;
                    Ok::<_, RpcError>((name, text))
                });
            }
        }
        let mut expanded = HashMap::new();
        while let Some(joined) = fetches.join_next().await {
            let (name, text) = joined.map_err(|e| RpcError::Failed(e.to_string()))??;
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
