//! The typed layer for interned kinds: values ↔ dense ids, shared by every
//! view, append-only, outside revisions entirely (S9).

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::keys::KeyTable;
use crate::kinds::{Id, Interned};
use crate::registry::{DatabaseBuilder, Ingredient, IngredientKind, Registry};
use crate::stats::Counters;
use crate::storage::{KeyId, Table};
use crate::util::short_type_name;

pub(crate) struct InternedIngredient<T: Interned> {
    name: String,
    values: KeyTable<T::Value>,
    counters: Counters,
}

impl<T: Interned> InternedIngredient<T> {
    fn register_with() -> String {
        format!(".interned::<{}>()", short_type_name::<T>())
    }

    pub(crate) fn lookup_in(registry: &Registry) -> Result<&Self> {
        registry
            .typed::<T, Self>(IngredientKind::Interned, Self::register_with)
            .map(|(_, ing)| ing)
    }

    pub(crate) fn intern(&self, value: T::Value) -> Result<Id<T>> {
        self.values.intern(&value).map(Id::from_raw).ok_or_else(|| {
            Error::internal(format!("{}: more than 2^32 interned values", self.name))
        })
    }

    pub(crate) fn value(&self, id: Id<T>) -> Result<T::Value> {
        self.values.value(id.raw()).cloned().ok_or_else(|| {
            ErrorKind::UnknownId {
                kind: self.name.clone(),
                id: id.raw(),
            }
            .into()
        })
    }
}

impl<T: Interned> Ingredient for InternedIngredient<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> IngredientKind {
        IngredientKind::Interned
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn empty_table(&self) -> Table {
        Arc::new(())
    }

    fn debug_key(&self, key: KeyId) -> String {
        match self.values.value(key) {
            Some(v) => format!("{v:?}"),
            None => format!("#{key}"),
        }
    }
}

impl DatabaseBuilder {
    /// Registers an interned kind.
    pub fn interned<T: Interned>(self) -> Self {
        self.push::<T>(Arc::new(InternedIngredient::<T> {
            name: short_type_name::<T>(),
            values: KeyTable::new(),
            counters: Counters::default(),
        }))
    }
}
