//! Small shared helpers: poison-tolerant locks, panic-catching futures, type names.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};

/// A boxed, sendable future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Locks a mutex, ignoring poisoning: picante never leaves its own state
/// half-updated under a lock, and user code (a key's `Hash`) may have panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// `format!("{value:?}")`, or a placeholder if the user's `Debug` panics:
/// formatting keys for errors, spans and reports must never turn a memoized
/// failure into a panic that escapes to the caller.
pub(crate) fn debug_string<T: std::fmt::Debug + ?Sized>(value: &T) -> String {
    catch_unwind(AssertUnwindSafe(|| format!("{value:?}")))
        .unwrap_or_else(|_| String::from("<Debug panicked>"))
}

/// Displays a value through [`debug_string`] (for `tracing` fields, which
/// are formatted only if a subscriber records them).
pub(crate) struct SafeDebug<'a, T: ?Sized>(pub &'a T);

impl<T: std::fmt::Debug + ?Sized> std::fmt::Display for SafeDebug<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&debug_string(self.0))
    }
}

/// Runs `f`, turning a panic in user code it calls (a key's `Hash` or `Eq`
/// while inserting into a table) into `None`.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// Polls a boxed future, turning a panic into `Err(payload)`.
pub(crate) struct CatchUnwind<'a, T> {
    inner: BoxFuture<'a, T>,
}

impl<'a, T> CatchUnwind<'a, T> {
    pub(crate) fn new(inner: BoxFuture<'a, T>) -> Self {
        CatchUnwind { inner }
    }
}

impl<T> Future for CatchUnwind<'_, T> {
    type Output = Result<T, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// `a == b` where `==` is user code: a panicking comparison counts as "different".
pub(crate) fn values_equal<V: PartialEq>(a: &V, b: &V) -> bool {
    catch_unwind(AssertUnwindSafe(|| a == b)).unwrap_or(false)
}

/// `alloc::vec::Vec<my_crate::Foo>` → `Vec<Foo>`: type names without module paths.
pub(crate) fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_names() {
        struct Foo;
        assert_eq!(super::short_type_name::<Foo>(), "Foo");
        assert_eq!(super::short_type_name::<Vec<Foo>>(), "Vec<Foo>");
        assert_eq!(
            super::short_type_name::<std::collections::HashMap<String, Foo>>(),
            "HashMap<String, Foo>"
        );
    }
}
