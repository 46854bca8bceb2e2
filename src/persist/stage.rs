//! The typed staging area of a load: decoded keys, input values and
//! interned values of one kind, validated before anything is installed.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use super::{Codec, LoadedMemo, Stage};
use crate::engine::storage::{Encoded, Entry, InputSlot, InputTable, KeyId, Memo, Table, new_map};
use crate::error::{Error, Result};
use crate::revision::Revision;
use crate::typed::keys::{KeyIds, KeyTable, RetirementHeld};

/// Staging for an input or query kind.
pub(crate) struct KeyedStage<'a, K, V> {
    codec: &'a Codec<K, V>,
    table: &'a KeyIds<K>,
    keys: Vec<K>,
    inputs: HashMap<usize, (Revision, Option<V>)>,
    /// From `install_keys` until this stage is dropped (after the install):
    /// no collection retires the ids the load gave its keys before the
    /// tables holding them are in the database (`KeyIds::hold_retirement`).
    hold: Option<RetirementHeld<'a, K>>,
}

impl<'a, K, V> KeyedStage<'a, K, V> {
    pub(crate) fn new(codec: &'a Codec<K, V>, table: &'a KeyIds<K>) -> Self {
        KeyedStage {
            codec,
            table,
            keys: Vec::new(),
            inputs: HashMap::new(),
            hold: None,
        }
    }
}

/// Staging for an interned kind.
pub(crate) struct InternedStage<'a, V> {
    codec: &'a Codec<(), V>,
    table: &'a KeyTable<V>,
    values: Vec<V>,
}

impl<'a, V> InternedStage<'a, V> {
    pub(crate) fn new(codec: &'a Codec<(), V>, table: &'a KeyTable<V>) -> Self {
        InternedStage {
            codec,
            table,
            values: Vec::new(),
        }
    }
}

fn wrong_kind() -> Error {
    Error::persist("record does not fit its section's kind (corrupt file)")
}

impl<V> Stage for InternedStage<'_, V>
where
    V: Clone + Eq + Hash + Send + Sync + 'static,
{
    fn add_keys(&mut self, _first: usize, _blob: &[u8]) -> Result<()> {
        Err(wrong_kind())
    }

    fn key_count(&self) -> usize {
        0
    }

    fn set_inputs(&mut self, _slots: &[(usize, Revision, bool)], _blob: &[u8]) -> Result<()> {
        Err(wrong_kind())
    }

    fn add_interned(&mut self, first: u32, blob: &[u8]) -> Result<()> {
        if first as usize != self.values.len() {
            return Err(Error::persist(
                "interned records out of order (corrupt file)",
            ));
        }
        self.values.extend((self.codec.decode_values)(blob)?);
        let distinct: HashSet<&V> = self.values.iter().collect();
        if distinct.len() != self.values.len() {
            return Err(Error::persist("interned values repeat (corrupt file)"));
        }
        Ok(())
    }

    fn interned_count(&self) -> usize {
        self.values.len()
    }

    fn input_count(&self) -> usize {
        0
    }

    fn install_keys(&mut self) -> Result<Vec<KeyId>> {
        Ok(Vec::new())
    }

    fn install_interned(&mut self) -> Result<()> {
        for (id, value) in self.values.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| Error::internal("too many interned values"))?;
            if !self.table.intern_at(value, KeyId::new(id)) {
                return Err(Error::internal("interned ids could not be restored"));
            }
        }
        Ok(())
    }

    fn input_table(&mut self, _key_ids: &[KeyId]) -> Result<Table> {
        Err(wrong_kind())
    }

    fn memo_table(
        &mut self,
        _count: usize,
        _memos: &mut dyn Iterator<Item = LoadedMemo>,
    ) -> Result<Table> {
        Err(wrong_kind())
    }
}

impl<K, V> Stage for KeyedStage<'_, K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn add_keys(&mut self, first: usize, blob: &[u8]) -> Result<()> {
        if first != self.keys.len() {
            return Err(Error::persist("key records out of order (corrupt file)"));
        }
        self.keys.extend((self.codec.decode_keys)(blob)?);
        Ok(())
    }

    fn key_count(&self) -> usize {
        self.keys.len()
    }

    fn set_inputs(&mut self, slots: &[(usize, Revision, bool)], blob: &[u8]) -> Result<()> {
        let values = (self.codec.decode_values)(blob)?;
        if values.len() != slots.iter().filter(|s| s.2).count() {
            return Err(Error::persist(
                "input values do not match their slots (corrupt file)",
            ));
        }
        let mut values = values.into_iter();
        for &(key, changed_at, present) in slots {
            let value = if present { values.next() } else { None };
            self.inputs.insert(key, (changed_at, value));
        }
        Ok(())
    }

    fn add_interned(&mut self, _first: u32, _blob: &[u8]) -> Result<()> {
        Err(wrong_kind())
    }

    fn interned_count(&self) -> usize {
        0
    }

    fn input_count(&self) -> usize {
        self.inputs.values().filter(|(_, v)| v.is_some()).count()
    }

    fn install_keys(&mut self) -> Result<Vec<KeyId>> {
        self.hold
            .get_or_insert_with(|| self.table.hold_retirement());
        self.table
            .intern_all(&self.keys)
            .ok_or_else(|| Error::internal("key table full"))
    }

    fn install_interned(&mut self) -> Result<()> {
        Ok(())
    }

    fn input_table(&mut self, key_ids: &[KeyId]) -> Result<Table> {
        let mut map = InputTable::<K, V>::new();
        // The staged values move into the table (no second copy of them).
        for (file_key, (changed_at, value)) in std::mem::take(&mut self.inputs) {
            let (Some(key), Some(&id)) = (self.keys.get(file_key), key_ids.get(file_key)) else {
                continue;
            };
            // One key can have several places in a cache whose log was
            // appended across collections that reclaimed its id
            // (`typed/keys.rs`): the record of its current slot is the one
            // that changed last (present over absent at one revision); the
            // older places were written as absent when the key left them.
            if map.get(key).is_some_and(|old: &InputSlot<V>| {
                (old.changed_at, old.value.is_some()) > (changed_at, value.is_some())
            }) {
                continue;
            }
            map.insert(
                key.clone(),
                InputSlot {
                    key: id,
                    value,
                    changed_at,
                },
            );
        }
        Ok(Arc::new(map))
    }

    fn verified_main_at_most(&self, table: &Table, at: Revision) {
        if let Some(map) = table.downcast_ref::<crate::engine::storage::MemoTable<K, V>>() {
            for entry in map.values() {
                entry
                    .memo
                    .meta
                    .verified_main
                    .fetch_min(at.as_u64(), std::sync::atomic::Ordering::AcqRel);
            }
        }
    }

    fn memo_table(
        &mut self,
        _count: usize,
        memos: &mut dyn Iterator<Item = LoadedMemo>,
    ) -> Result<Table> {
        let mut map = new_map::<K, Entry<V>>();
        for m in memos {
            let Some(key) = self.keys.get(m.file_key) else {
                continue;
            };
            let entry = Entry {
                memo: Arc::new(Memo::loaded(
                    m.meta,
                    Encoded {
                        bytes: m.bytes,
                        range: m.value,
                        decode: self.codec.decode_value,
                    },
                )),
                verified_at: m.verified_at,
            };
            // A key in several places (see `input_table`): the memo
            // verified last. Any of them would be sound (validity is
            // identity); this one is the likeliest to be reused as is.
            // One lookup per memo: a base holds each key once, so an entry
            // is rarely replaced, and put back if it was the newer one.
            if let Some(old) = map.insert(key.clone(), entry)
                && old.verified_at > m.verified_at
            {
                map.insert(key.clone(), old);
            }
        }
        Ok(Arc::new(map))
    }
}
