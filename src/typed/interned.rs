//! The typed layer for interned kinds: values ↔ dense ids, shared by every
//! view, append-only, outside revisions entirely (S9).

use std::sync::Arc;

use crate::api::kinds::{Id, Interned};
use crate::api::registry::DatabaseBuilder;
use crate::api::registry::TypedLookup;
use crate::engine::counters::Counters;
use crate::engine::ingredient::{Footprint, Ingredient, IngredientKind, Registry};
use crate::engine::storage::{KeyId, Table};
use crate::error::{Error, ErrorKind, Result};
use crate::persist::{Codec, CodecInfo, KIND_INTERNED, PersistKind, Stage, stage::InternedStage};
use crate::typed::keys::KeyTable;
use crate::util::short_type_name;
use facet::Facet;

pub(crate) struct InternedIngredient<T: Interned> {
    name: String,
    values: KeyTable<T::Value>,
    counters: Counters,
    /// Registered as persistent (new values are journaled for appends).
    journaled: bool,
}

impl<T: Interned> InternedIngredient<T> {
    fn new(journaled: bool) -> Self {
        InternedIngredient {
            name: short_type_name::<T>(),
            values: KeyTable::new(),
            counters: Counters::default(),
            journaled,
        }
    }

    fn register_with() -> String {
        format!(".interned::<{}>()", short_type_name::<T>())
    }

    pub(crate) fn lookup_in(registry: &Registry) -> Result<&Self> {
        registry
            .typed::<T, Self>(IngredientKind::Interned, Self::register_with)
            .map(|(_, ing)| ing)
    }

    pub(crate) fn intern(&self, value: T::Value) -> Result<Id<T>> {
        self.values
            .intern(&value)
            .map(|id| Id::from_raw(id.get()))
            .ok_or_else(|| {
                Error::internal(format!("{}: more than 2^32 interned values", self.name))
            })
    }

    pub(crate) fn value(&self, id: Id<T>) -> Result<T::Value> {
        self.values
            .value(KeyId::new(id.raw()))
            .cloned()
            .ok_or_else(|| {
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

    fn journaled(&self) -> bool {
        self.journaled
    }

    fn debug_key(&self, key: KeyId) -> String {
        self.values.debug(key)
    }

    fn footprint(&self, _table: &Table) -> Footprint {
        // Never reclaimed: every value ever interned (S9).
        let n = self.values.len();
        Footprint {
            entries: n,
            tombstones: 0,
            keys: n,
            bytes: n * (2 * std::mem::size_of::<T::Value>() + 16),
        }
    }
}

/// The persisted side of a persistent interned kind.
struct PersistentInterned<T: Interned> {
    ing: Arc<InternedIngredient<T>>,
    codec: Codec<(), T::Value>,
}

impl<T: Interned> PersistKind for PersistentInterned<T> {
    fn info(&self) -> &CodecInfo {
        &self.codec.info
    }

    fn encode_keys(&self, _ids: &[KeyId]) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn interned_len(&self) -> u32 {
        u32::try_from(self.ing.values.len()).unwrap_or(u32::MAX)
    }

    fn encode_interned(&self, from: u32, to: u32) -> Result<Vec<u8>> {
        let values = (from..to)
            .map(|id| self.ing.values.value(KeyId::new(id)).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::internal("unknown interned id"))?;
        (self.codec.encode_values)(&values)
    }

    fn stage(&self) -> Box<dyn Stage + '_> {
        Box::new(InternedStage::new(&self.codec, &self.ing.values))
    }
}

impl DatabaseBuilder {
    /// Registers an interned kind.
    pub fn interned<T: Interned>(self) -> Self {
        self.push::<T>(Arc::new(InternedIngredient::<T>::new(false)))
    }

    /// Registers an interned kind whose values (and so their ids) are saved
    /// by [`save_cache`](crate::View::save_cache), under its short type name.
    pub fn persistent_interned<T: Interned>(self) -> Self
    where
        T::Value: Facet<'static>,
    {
        self.persistent_interned_as::<T>(&short_type_name::<T>())
    }

    /// Registers a persistent interned kind under a stable `name`. Ids are
    /// restored exactly by a load; values interned later get fresh ids.
    pub fn persistent_interned_as<T: Interned>(self, name: &str) -> Self
    where
        T::Value: Facet<'static>,
    {
        match Codec::new(name.to_string(), KIND_INTERNED) {
            Ok(codec) => {
                let ing = Arc::new(InternedIngredient::<T>::new(true));
                let persist = Arc::new(PersistentInterned {
                    ing: ing.clone(),
                    codec,
                });
                self.push_persistent::<T>(ing, persist)
            }
            Err(e) => self.fail(e),
        }
    }
}
