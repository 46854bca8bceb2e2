//! Shared test fixtures: small inputs and queries whose bodies count their
//! executions, so tests can assert how much work was done, not only results.
#![allow(dead_code)]

pub mod churn;
pub mod dag;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A named execution counter.
#[derive(Clone, Default)]
pub struct Count(Arc<AtomicUsize>);

impl Count {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn hit(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    /// Returns the count and resets it to zero.
    pub fn take(&self) -> usize {
        self.0.swap(0, Ordering::SeqCst)
    }
}

/// Runs `f` on a fresh multi-thread runtime on a thread with the tokio
/// default 2 MiB stack.
pub fn on_small_stack<F: FnOnce() + Send + 'static>(f: F) {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .expect("spawn test thread")
        .join()
        .expect("test thread panicked");
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "picante-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `fut`, or a test failure naming `what` if it takes longer than `limit`:
/// a hang fails instead of stalling CI.
pub async fn within<F: std::future::Future>(
    what: &str,
    limit: std::time::Duration,
    fut: F,
) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out ({limit:?}) waiting for {what}: a hang or a lost wake-up"),
    }
}

/// The path of a cycle error (panics on any other error).
pub fn cycle_path(err: &picante::Error) -> Vec<String> {
    match err.kind() {
        picante::ErrorKind::Cycle { path } => path.iter().map(ToString::to_string).collect(),
        other => panic!("expected a cycle error, got {other:?}"),
    }
}
