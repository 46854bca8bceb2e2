//! Observing a database: its revision ([`View::subscribe_revisions`]), what
//! changed at each revision ([`View::subscribe_events`]) and one query's value
//! over time ([`View::watch`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::{broadcast, watch};

use crate::api::database::View;
use crate::api::kinds::AsyncQuery;
use crate::api::stats::ExecutionReason;
use crate::engine::events::{EngineEvent, Listening, Write};
use crate::engine::ingredient::Registry;
use crate::engine::storage::Dep;
use crate::engine::view::Shared;
use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::util::values_equal;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a subscription from [`View::subscribe_events`] receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventFilter {
    /// [`Event::InputsChanged`] only: one event per revision of the database.
    Inputs,
    /// Also [`Event::Executed`] for every query body that ran. While such a
    /// subscription lives, each execution builds one event (a few small
    /// allocations); without one, executions pay a single atomic load.
    InputsAndExecutions,
}

/// One input slot written by a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InputChange {
    /// Name of the input kind.
    pub kind: String,
    /// `Debug` rendering of the key.
    pub key: String,
    /// The key was removed (rather than set to a new value).
    pub removed: bool,
}

impl fmt::Display for InputChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.removed { "removed" } else { "set" };
        write!(f, "{}({}) {verb}", self.kind, self.key)
    }
}

/// Something that happened in a database, from [`View::subscribe_events`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A commit (a `set`, `remove` or batch) created `revision`. Only
    /// commits of the database itself are reported, not those of forked
    /// snapshots.
    #[non_exhaustive]
    InputsChanged {
        /// The revision the commit created.
        revision: Revision,
        /// Every slot whose value changed (writes of an equal value are not
        /// changes and create no revision).
        changes: Vec<InputChange>,
    },
    /// A query body ran in the database's history (in the database or in a
    /// snapshot of it) and returned.
    #[non_exhaustive]
    Executed {
        /// The revision it ran at.
        revision: Revision,
        /// Name of the query kind.
        kind: String,
        /// `Debug` rendering of the key.
        key: String,
        /// Why it ran.
        reason: ExecutionReason,
        /// Its value equalled the previous one (early cutoff): its dependents
        /// keep their memos.
        cut_off: bool,
    },
    /// The subscriber fell behind and this many events were dropped for it
    /// (it keeps receiving from the oldest one still buffered).
    #[non_exhaustive]
    Missed {
        /// How many events were dropped.
        count: u64,
    },
}

/// A subscription to a database's events: call [`recv`](Events::recv), or
/// use it as a [`Stream`]. Created by [`View::subscribe_events`].
///
/// The subscription does not keep the database alive; once every handle of
/// the database is dropped, it ends (`recv` returns `None`).
///
/// ```
/// # use picante::{async_trait, AsyncQuery, Database, Event, EventFilter, Input, QueryCx, QueryResult};
/// # struct File; impl Input for File { type Key = &'static str; type Value = u32; }
/// # struct Twice;
/// # #[async_trait] impl AsyncQuery for Twice { type Key = &'static str; type Value = u32;
/// #   async fn execute(&self, cx: &QueryCx, k: &'static str) -> QueryResult<u32> { Ok(cx.input::<File>(&k)? * 2) } }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> picante::Result<()> {
/// let db = Database::builder().input::<File>().query(Twice).build()?;
/// let mut events = db.subscribe_events(EventFilter::InputsAndExecutions);
/// db.set::<File>("a.md", 1)?;
/// db.query::<Twice>("a.md").await?;
/// let mut seen = Vec::new();
/// while seen.len() < 2 {
///     match events.recv().await {
///         Some(Event::InputsChanged { changes, .. }) => seen.push(changes[0].to_string()),
///         Some(Event::Executed { kind, key, .. }) => seen.push(format!("{kind}({key})")),
///         Some(_) => {}
///         None => break,
///     }
/// }
/// assert_eq!(seen[0], "File(\"a.md\") set");
/// assert_eq!(seen[1], "Twice(\"a.md\")");
/// # Ok(()) }
/// ```
pub struct Events {
    relay: Relay<Receiving, Event>,
}

/// A stream driven by an async step that takes its state by value and gives
/// it back with the item (`None` ends the stream): the state moves into a
/// boxed future while a step is pending, so the stream itself is `Unpin`.
struct Relay<S, T> {
    state: Option<S>,
    pending: Option<BoxFuture<(Option<T>, S)>>,
}

impl<S: Send + 'static, T> Relay<S, T> {
    fn new(state: S) -> Self {
        Relay {
            state: Some(state),
            pending: None,
        }
    }

    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        step: fn(S) -> BoxFuture<(Option<T>, S)>,
    ) -> Poll<Option<T>> {
        if self.pending.is_none() {
            let Some(state) = self.state.take() else {
                return Poll::Ready(None);
            };
            self.pending = Some(step(state));
        }
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        match pending.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((item, state)) => {
                self.pending = None;
                if item.is_some() {
                    self.state = Some(state);
                }
                Poll::Ready(item)
            }
        }
    }
}

struct Receiving {
    rx: broadcast::Receiver<EngineEvent>,
    shared: Weak<Shared>,
    filter: EventFilter,
}

impl Receiving {
    async fn next(mut self) -> (Option<Event>, Receiving) {
        loop {
            let event = match self.rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(count)) => {
                    return (Some(Event::Missed { count }), self);
                }
                Err(broadcast::error::RecvError::Closed) => return (None, self),
            };
            let Some(shared) = self.shared.upgrade() else {
                return (None, self);
            };
            if let Some(event) = name(shared.registry(), event, self.filter) {
                return (Some(event), self);
            }
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if self.filter == EventFilter::InputsAndExecutions
            && let Some(shared) = self.shared.upgrade()
        {
            shared.events().count_execution_listener(Listening::Stopped);
        }
    }
}

fn kind_and_key(registry: &Registry, dep: Dep) -> (String, String) {
    match registry.get(dep.ingredient) {
        Ok(ing) => (ing.name().to_owned(), ing.debug_key(dep.key)),
        Err(_) => (String::from("?"), String::from("?")),
    }
}

/// The public form of an engine event, if the filter lets it through.
fn name(registry: &Registry, event: EngineEvent, filter: EventFilter) -> Option<Event> {
    Some(match event {
        EngineEvent::Inputs {
            revision, written, ..
        } => Event::InputsChanged {
            revision,
            changes: written
                .iter()
                .map(|w| {
                    let (kind, key) = kind_and_key(registry, w.dep);
                    InputChange {
                        kind,
                        key,
                        removed: w.write == Write::Remove,
                    }
                })
                .collect(),
        },
        EngineEvent::Executed {
            revision,
            dep,
            reason,
            cut_off,
            ..
        } => {
            if filter != EventFilter::InputsAndExecutions {
                return None;
            }
            let (kind, key) = kind_and_key(registry, dep);
            Event::Executed {
                revision,
                kind,
                key,
                reason: ExecutionReason::of(reason, registry),
                cut_off,
            }
        }
    })
}

impl Events {
    pub(crate) fn new(shared: &Arc<Shared>, filter: EventFilter) -> Events {
        // Count the listener before subscribing, so no execution that
        // finishes after the subscription exists goes unreported.
        if filter == EventFilter::InputsAndExecutions {
            shared.events().count_execution_listener(Listening::Started);
        }
        Events {
            relay: Relay::new(Receiving {
                rx: shared.events().subscribe(),
                shared: Arc::downgrade(shared),
                filter,
            }),
        }
    }

    /// The next event, or `None` once the database is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.relay.poll_step(cx, |state| Box::pin(state.next()))
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// A query's value over time, as a [`Stream`]: the current value first, then
/// one item each time a new revision changes it. Created by [`View::watch`].
///
/// - An edit that leaves the value equal (early cutoff, or an input the query
///   does not read) yields nothing.
/// - If revisions arrive faster than the query computes, the watch skips to
///   the latest revision: there is no backlog.
/// - Watchers of one key share executions like any other readers (S13), so
///   a hundred watchers of one page cost one execution per revision.
/// - Dropping the stream cancels the work it has in flight.
/// - Errors are items too (`Err`): a query that fails, then succeeds again,
///   yields both.
///
/// See [`View::watch`] for an example, and [`Watch::next_value`] to read it
/// without a `Stream` combinator crate.
pub struct Watch<Q: AsyncQuery> {
    relay: Relay<Watching<Q>, Result<Q::Value>>,
}

/// One item of a watch (always `Some`: a watch never ends), and the state
/// to continue from.
type Step<Q> = (Option<Result<<Q as AsyncQuery>::Value>>, Watching<Q>);

// Never pin-projected: the state moves in and out of the boxed future.
impl<Q: AsyncQuery> Unpin for Watch<Q> {}

struct Watching<Q: AsyncQuery> {
    view: View,
    key: Q::Key,
    revisions: watch::Receiver<Revision>,
    last: Option<Result<Q::Value>>,
}

fn same<V: PartialEq>(a: &Result<V>, b: &Result<V>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => values_equal(a, b),
        (Err(a), Err(b)) => a.to_string() == b.to_string(),
        _ => false,
    }
}

impl<Q: AsyncQuery> Watching<Q> {
    async fn next(mut self) -> Step<Q> {
        loop {
            if self.last.is_some() {
                // The view owns the sender, and we own the view: this only
                // fails if the view is gone, which it cannot be.
                let _ = self.revisions.changed().await;
            }
            self.revisions.borrow_and_update();
            let result = self.view.query::<Q>(self.key.clone()).await;
            if self.last.as_ref().is_some_and(|last| same(last, &result)) {
                continue;
            }
            self.last = Some(result.clone());
            return (Some(result), self);
        }
    }
}

impl<Q: AsyncQuery> Watch<Q> {
    pub(crate) fn new(view: View, key: Q::Key) -> Watch<Q> {
        Watch {
            relay: Relay::new(Watching {
                revisions: view.core().subscribe_revisions(),
                view,
                key,
                last: None,
            }),
        }
    }

    /// The next value (the current one on the first call), waiting for a
    /// revision that changes it. The same as the stream's next item, without
    /// the `Option` (a watch never ends).
    pub async fn next_value(&mut self) -> Result<Q::Value> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .unwrap_or_else(|| Err(Error::internal("a watch was polled after it ended")))
    }
}

impl<Q: AsyncQuery> Stream for Watch<Q> {
    type Item = Result<Q::Value>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.relay.poll_step(cx, |state| Box::pin(state.next()))
    }
}

impl<Q: AsyncQuery> fmt::Debug for Watch<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}
