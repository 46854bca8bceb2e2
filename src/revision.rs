//! Revisions and durabilities: the two small value types every rule is stated in.

use std::fmt;

/// A point in the history of a database.
///
/// Every real change to the inputs (a [`set`](crate::View::set) of a different
/// value, a [`remove`](crate::View::remove) of a present key, or a
/// [`Batch`](crate::Batch) that changes anything) advances the revision by
/// exactly one. Each query access is bound to the revision current when it
/// started.
///
/// ```
/// use picante::Revision;
/// assert!(Revision::ZERO < Revision::from_u64(1));
/// assert_eq!(Revision::from_u64(7).as_u64(), 7);
/// assert_eq!(Revision::from_u64(7).to_string(), "r7");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Revision(u64);

impl Revision {
    /// The revision before anything was ever set; absent inputs "changed" here.
    pub const ZERO: Revision = Revision(0);

    /// The revision of a freshly built database.
    pub(crate) const FIRST: Revision = Revision(1);

    /// The revision number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// A revision from its number (useful in tests and when comparing reports).
    pub const fn from_u64(n: u64) -> Self {
        Revision(n)
    }

    pub(crate) fn next(self) -> Self {
        Revision(self.0.saturating_add(1))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// How often an input kind is expected to change: `Low < Medium < High`.
///
/// A memo that (transitively) depends only on inputs of durability `≥ D`
/// skips its whole dependency walk when nothing of durability `≥ D` changed
/// since it was last verified. Durability never changes results, only work.
///
/// ```
/// use picante::Durability;
/// assert!(Durability::Low < Durability::Medium && Durability::Medium < Durability::High);
/// assert_eq!(Durability::default(), Durability::Low);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub enum Durability {
    /// Changes often (source files being edited). The default.
    #[default]
    Low,
    /// Changes sometimes (configuration, templates).
    Medium,
    /// Rarely changes (the standard library, vendored data).
    High,
}

impl Durability {
    pub(crate) const COUNT: usize = 3;

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}
