//! The RPC interface between the host and the plugin process, as two
//! [remoc] remote traits. remoc generates a client and a server for each; the
//! clients are themselves sendable, so the host passes the plugin a
//! [`HostClient`] with every render call and the plugin calls back through it
//! while that call is in flight.
//!
//! Everything travels over one [remoc] connection on the child's stdin and
//! stdout (length-delimited frames, multiplexed channels): many render calls
//! and their callbacks are in flight at once, each routed by remoc.
//!
//! ```text
//! host ──render(request, host)──▶ plugin            (RendererClient → RendererServerShared)
//! host ◀──host.partial(name)───── plugin, mid-call  (HostClient → HostServerShared)
//! ```

use std::fmt;

use remoc::rtc;
use serde::{Deserialize, Serialize};

/// One page to render.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenderRequest {
    pub page: String,
    pub template: String,
    pub title: String,
    pub body: String,
}

/// Served by the plugin.
#[rtc::remote]
pub trait Renderer {
    /// Renders a page. While rendering, the plugin asks `host` for every
    /// template and partial it needs.
    async fn render(&self, request: RenderRequest, host: HostClient) -> Result<String, RpcError>;
}

/// Served by the host, one server per render call: the callbacks of a call
/// are answered inside the picante execution that made it.
#[rtc::remote]
pub trait Host {
    /// The template or partial `name`, with its comments removed.
    async fn partial(&self, name: String) -> Result<String, RpcError>;
}

/// What can go wrong in a call, on either side.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RpcError {
    /// The callee failed (a bad template, a missing partial…): its message.
    Failed(String),
    /// The call itself failed: the other process is gone, or the connection.
    Call(rtc::CallError),
}

impl From<rtc::CallError> for RpcError {
    fn from(e: rtc::CallError) -> Self {
        RpcError::Call(e)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Failed(message) => f.write_str(message),
            RpcError::Call(e) => write!(f, "RPC call failed ({e})"),
        }
    }
}

impl std::error::Error for RpcError {}

/// The connection settings both ends use. remoc's defaults buffer outgoing
/// data for up to 20 ms before flushing, a good trade-off on a network; on a
/// local pipe, with callbacks that are round trips nested inside a call, we
/// flush as soon as there is nothing more to send.
pub fn connection_cfg() -> remoc::Cfg {
    remoc::Cfg {
        flush_delay: std::time::Duration::ZERO,
        ..Default::default()
    }
}
