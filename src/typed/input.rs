//! The typed layer for inputs: slots keyed by the input's key, reads, and the
//! writes of a batch.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use crate::api::kinds::Input;
use crate::api::registry::{DatabaseBuilder, TypedLookup};
use crate::engine::counters::Counters;
use crate::engine::epoch::Epoch;
use crate::engine::events::Write;
use crate::engine::ingredient::{Footprint, Ingredient, IngredientKind, Registry};
use crate::engine::storage::{IngredientIndex, InputSlot, InputTable, KeyId, State, Table};
use crate::error::{Error, Result};
use crate::persist::{
    Codec, CodecInfo, InputsBlob, KIND_INPUT, PersistKind, Stage, stage::KeyedStage,
};
use crate::revision::{Durability, Revision};
use crate::typed::keys::{KeyIds, map_bytes};
use crate::util::{short_type_name, values_equal};
use facet::Facet;

type TableOf<I> = InputTable<<I as Input>::Key, <I as Input>::Value>;

pub(crate) struct InputIngredient<I: Input> {
    name: String,
    keys: KeyIds<I::Key>,
    counters: Counters,
    /// Registered as persistent (its changes are journaled for appends).
    journaled: bool,
}

impl<I: Input> InputIngredient<I> {
    fn new(journaled: bool) -> Self {
        InputIngredient {
            name: short_type_name::<I>(),
            keys: KeyIds::new(),
            counters: Counters::default(),
            journaled,
        }
    }

    /// I's index and typed ingredient in `registry`.
    #[inline]
    pub(crate) fn lookup_in(registry: &Registry) -> Result<(IngredientIndex, &Self)> {
        registry.typed::<I, Self>(IngredientKind::Input, Self::register_with)
    }

    pub(crate) fn name_of() -> String {
        short_type_name::<I>()
    }

    pub(crate) fn register_with() -> String {
        format!(".input::<{}>()", short_type_name::<I>())
    }

    fn key_id(&self, key: &I::Key) -> Result<KeyId> {
        self.keys
            .intern(key)
            .ok_or_else(|| Error::internal(format!("{}: more than 2^32 keys", self.name)))
    }

    /// The value at `key` in `state` (`None` if absent), the key's id and
    /// the revision its slot last changed at.
    pub(crate) fn read(
        &self,
        state: &State,
        index: IngredientIndex,
        key: &I::Key,
    ) -> Result<(Option<I::Value>, KeyId, Revision)> {
        let table: &TableOf<I> = state.table(index)?;
        match table.get(key) {
            Some(slot) => Ok((slot.value.clone(), slot.key, slot.changed_at)),
            None => Ok((None, self.key_id(key)?, Revision::ZERO)),
        }
    }

    /// Every present (key, value) in `state`.
    pub(crate) fn entries(
        &self,
        state: &State,
        index: IngredientIndex,
    ) -> Result<Vec<(I::Key, I::Value)>> {
        let table: &TableOf<I> = state.table(index)?;
        Ok(table
            .iter()
            .filter_map(|(k, slot)| Some((k.clone(), slot.value.clone()?)))
            .collect())
    }
}

impl<I: Input> Ingredient for InputIngredient<I> {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> IngredientKind {
        IngredientKind::Input
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn empty_table(&self) -> Table {
        Arc::new(TableOf::<I>::new())
    }

    fn debug_key(&self, key: KeyId) -> String {
        self.keys.debug(key)
    }

    fn durability(&self) -> Durability {
        I::DURABILITY
    }

    fn journaled(&self) -> bool {
        self.journaled
    }

    fn sweep(
        &self,
        table: &Table,
        before: Revision,
        retire: Option<&Epoch>,
    ) -> Option<(Table, usize)> {
        let current = table.downcast_ref::<TableOf<I>>()?;
        let old: Vec<(&I::Key, KeyId)> = current
            .iter()
            .filter(|(_, slot)| slot.value.is_none() && slot.changed_at < before)
            .map(|(k, slot)| (k, slot.key))
            .collect();
        if old.is_empty() {
            return None;
        }
        let mut next = current.clone();
        for (key, _) in &old {
            next.remove(*key);
        }
        // The tombstone was the key's last entry: its id goes (the
        // database's table is only written under its writer lock, which the
        // collection holds, so no slot for the key comes back meanwhile).
        if let Some(epoch) = retire {
            let ids: Vec<KeyId> = old.iter().map(|(_, id)| *id).collect();
            self.keys.retire(&ids, epoch);
        }
        Some((Arc::new(next), old.len()))
    }

    fn retire_unused(
        &self,
        table: &Table,
        referenced: &dyn Fn(KeyId) -> bool,
        epoch: &Epoch,
    ) -> usize {
        let Some(current) = table.downcast_ref::<TableOf<I>>() else {
            return 0;
        };
        let held = current.values().map(|slot| slot.key);
        self.keys
            .retire_unheld(current.len(), held, referenced, epoch)
    }

    fn release_keys(&self) -> usize {
        self.keys.release()
    }

    fn names_key(&self, key: KeyId) -> bool {
        self.keys.names(key)
    }

    fn footprint(&self, table: &Table) -> Footprint {
        let Some(current) = table.downcast_ref::<TableOf<I>>() else {
            return Footprint::default();
        };
        let tombstones = current.values().filter(|s| s.value.is_none()).count();
        let keys = self.keys.len();
        Footprint {
            entries: current.len() - tombstones,
            tombstones,
            keys,
            bytes: map_bytes::<I::Key, InputSlot<I::Value>>(current.len())
                + current.by_id_len() * TableOf::<I>::BY_ID_BYTES
                + self.keys.bytes(),
        }
    }

    fn input_changed_at(&self, table: &Table, key: KeyId) -> Option<Revision> {
        let table = table.downcast_ref::<TableOf<I>>()?;
        // The slot held under exactly this id, by its number (no key
        // resolution, no hashing); otherwise (an absent key, an id the
        // table does not hold its key under) through the key.
        if let Some(changed_at) = table.changed_at_by_id(key) {
            return Some(changed_at);
        }
        self.keys.with(key, |k| {
            table.get(k).map_or(Revision::ZERO, |s| s.changed_at)
        })
    }
}

/// A kind's table after a batch, and the slots that changed.
pub(crate) type Applied = (Table, Vec<(KeyId, Write)>);

/// The writes of one batch to one input kind, applied atomically with the rest.
pub(crate) trait PendingWrites: Any + Send {
    /// The kind's table with the writes applied (later writes to the same key
    /// win) and the keys whose slots changed, or `None` if every final value
    /// equals the stored one.
    fn apply(
        self: Box<Self>,
        ing: &dyn Ingredient,
        table: &Table,
        revision: Revision,
    ) -> Result<Option<Applied>>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

pub(crate) struct InputWrites<I: Input> {
    pub ops: Vec<(I::Key, Option<I::Value>)>,
}

impl<I: Input> PendingWrites for InputWrites<I> {
    fn apply(
        self: Box<Self>,
        ing: &dyn Ingredient,
        table: &Table,
        revision: Revision,
    ) -> Result<Option<Applied>> {
        let any: &dyn Any = ing;
        let ing = any
            .downcast_ref::<InputIngredient<I>>()
            .ok_or_else(|| Error::internal("input writes applied to another kind"))?;
        let current = table
            .downcast_ref::<TableOf<I>>()
            .ok_or_else(|| Error::internal("input table has an unexpected type"))?;
        // Later writes to the same slot win.
        let mut last: HashMap<I::Key, Option<I::Value>, ahash::RandomState> = HashMap::default();
        for (k, v) in self.ops {
            last.insert(k, v);
        }
        let mut next: Option<TableOf<I>> = None;
        let mut changed = Vec::new();
        for (key, value) in last {
            let slot = current.get(&key);
            let unchanged = match (slot.and_then(|s| s.value.as_ref()), value.as_ref()) {
                (Some(old), Some(new)) => values_equal(old, new),
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            let key_id = match slot {
                Some(s) => s.key,
                None => ing.key_id(&key)?,
            };
            let write = if value.is_some() {
                Write::Set
            } else {
                Write::Remove
            };
            changed.push((key_id, write));
            next.get_or_insert_with(|| current.clone()).insert(
                key,
                InputSlot {
                    key: key_id,
                    value,
                    changed_at: revision,
                },
            );
        }
        Ok(next.map(|t| (Arc::new(t) as Table, changed)))
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The persisted side of a persistent input kind: the ingredient and its
/// codec (a kind registered with `input` has none, and no such side).
struct PersistentInput<I: Input> {
    ing: Arc<InputIngredient<I>>,
    codec: Codec<I::Key, I::Value>,
}

impl<I: Input> PersistKind for PersistentInput<I> {
    fn info(&self) -> &CodecInfo {
        &self.codec.info
    }

    fn encode_keys(&self, ids: &[KeyId]) -> Result<Vec<u8>> {
        self.codec.encode_key_ids(&self.ing.keys, ids)
    }

    fn encode_inputs(&self, table: &Table, only: Option<&[KeyId]>) -> Result<InputsBlob> {
        let table = table
            .downcast_ref::<TableOf<I>>()
            .ok_or_else(|| Error::internal("input table has an unexpected type"))?;
        let mut slots = Vec::new();
        let mut values = Vec::new();
        let mut push = |slot: &InputSlot<I::Value>| {
            slots.push((slot.key, slot.changed_at, slot.value.is_some()));
            if let Some(v) = &slot.value {
                values.push(v.clone());
            }
        };
        match only {
            None => table.values().for_each(&mut push),
            Some(ids) => {
                for &id in ids {
                    let slot = self.ing.keys.with(id, |key| table.get(key).cloned());
                    match slot.flatten() {
                        Some(slot) if slot.key == id => push(&slot),
                        // A slot that changed and is gone since (a collected
                        // tombstone), or that its key holds under a new id
                        // since this one was reclaimed (the new id's record
                        // says what it holds), or an id that names no key
                        // any more: never set under this id. Say so, or the
                        // record it replaces (the value the base holds)
                        // would come back at the next load.
                        _ => push(&InputSlot {
                            key: id,
                            value: None,
                            changed_at: Revision::ZERO,
                        }),
                    }
                }
            }
        }
        Ok((slots, (self.codec.encode_values)(&values)?))
    }

    fn stage(&self) -> Box<dyn Stage + '_> {
        Box::new(KeyedStage::new(&self.codec, &self.ing.keys))
    }
}

impl DatabaseBuilder {
    /// Registers an input kind (kept in memory only).
    pub fn input<I: Input>(self) -> Self {
        self.push::<I>(Arc::new(InputIngredient::<I>::new(false)))
    }

    /// Registers an input kind whose values are saved by
    /// [`save_cache`](crate::View::save_cache), under its short type name.
    /// See [`persistent_input_as`](Self::persistent_input_as).
    pub fn persistent_input<I: Input>(self) -> Self
    where
        I::Key: Facet<'static>,
        I::Value: Facet<'static>,
    {
        self.persistent_input_as::<I>(&short_type_name::<I>())
    }

    /// Registers a persistent input kind under a stable `name` (what a cache
    /// file matches kinds by; keep it when renaming the Rust type). `build()`
    /// fails if the key or value type cannot be persisted faithfully.
    pub fn persistent_input_as<I: Input>(self, name: &str) -> Self
    where
        I::Key: Facet<'static>,
        I::Value: Facet<'static>,
    {
        match Codec::new(name.to_string(), KIND_INPUT) {
            Ok(codec) => {
                let ing = Arc::new(InputIngredient::<I>::new(true));
                let persist = Arc::new(PersistentInput {
                    ing: ing.clone(),
                    codec,
                });
                self.push_persistent::<I>(ing, persist)
            }
            Err(e) => self.fail(e),
        }
    }
}
