//! The public API: kind traits, the builder, `Database`/`Snapshot`/`View`,
//! `QueryCx`, stats and inspection. Thin wrappers over the typed layers and
//! the engine.

pub(crate) mod cx;
pub(crate) mod database;
pub(crate) mod events;
pub(crate) mod kinds;
pub(crate) mod memory;
pub(crate) mod registry;
pub(crate) mod stats;
