//! The erased engine: memos, states and views, fetching (reuse, revalidate,
//! execute), the in-flight table. It works on `dyn Ingredient`, key ids and
//! erased memos only; it imports nothing of the public API (`crate::api`),
//! the typed layers (`crate::typed`) or persistence (`crate::persist`).

pub(crate) mod counters;
pub(crate) mod dense;
pub(crate) mod epoch;
pub(crate) mod events;
pub(crate) mod execution;
pub(crate) mod fetch;
pub(crate) mod inflight;
pub(crate) mod ingredient;
pub(crate) mod journal;
pub(crate) mod limits;
pub(crate) mod pending;
pub(crate) mod revalidate;
pub(crate) mod storage;
pub(crate) mod view;
