//! The typed layers: everything generic over a user's kinds (input slots,
//! query bodies and cutoff, interned values, key tables), kept thin; each
//! implements the engine's erased `Ingredient`.

pub(crate) mod input;
pub(crate) mod interned;
pub(crate) mod keys;
pub(crate) mod query;
