//! Typed encoders for the keys and values of a persistent kind.
//!
//! The encoding is postcard, through `facet-postcard`. Its reflection-driven
//! decoder costs a few hundred nanoseconds per element, so the common scalar
//! types (integers, `bool`, `String`) take a hand-written path that produces
//! and accepts exactly postcard's bytes; a unit test holds the two to the
//! same output.

use std::any::{Any, TypeId};

use facet::Facet;

use crate::error::{Error, Result};
use crate::persist::schema::schema_of;

/// Encoders for one persistent kind, instantiated where the `Facet` bounds
/// hold so the ingredient types themselves need none.
pub(crate) struct Codec<K, V> {
    pub info: CodecInfo,
    pub encode_keys: fn(&[K]) -> Result<Vec<u8>>,
    pub decode_keys: fn(&[u8]) -> Result<Vec<K>>,
    pub encode_value: fn(&V) -> Result<Vec<u8>>,
    pub decode_value: fn(&[u8]) -> Result<V>,
    pub encode_values: fn(&[V]) -> Result<Vec<u8>>,
    pub decode_values: fn(&[u8]) -> Result<Vec<V>>,
}

/// What identifies a persistent kind in a file.
pub(crate) struct CodecInfo {
    /// The stable name kinds are matched by.
    pub name: String,
    pub fingerprint: u64,
    /// Human-readable key and value schema, stored beside the fingerprint so
    /// a mismatch can say what changed.
    pub description: String,
}

impl<K: Clone, V> Codec<K, V> {
    /// Encodes the keys with these ids, as one blob.
    pub(crate) fn encode_key_ids(
        &self,
        table: &crate::typed::keys::KeyIds<K>,
        ids: &[crate::engine::storage::KeyId],
    ) -> Result<Vec<u8>>
    where
        K: Eq + std::hash::Hash,
    {
        let keys = ids
            .iter()
            .map(|id| table.value(*id))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::internal("unknown key id"))?;
        (self.encode_keys)(&keys)
    }
}

/// Kind tags mixed into the fingerprint, so an input and a query with the same
/// name and types do not match each other.
pub(crate) const KIND_INPUT: u8 = 1;
pub(crate) const KIND_QUERY: u8 = 2;
pub(crate) const KIND_INTERNED: u8 = 3;

impl<K, V> Codec<K, V>
where
    K: Facet<'static> + Clone + 'static,
    V: Facet<'static> + Clone + 'static,
{
    /// Checks both types and builds the codec. The error names the type that
    /// facet-postcard cannot round-trip.
    pub(crate) fn new(name: String, kind: u8) -> std::result::Result<Self, String> {
        let k = schema_of(K::SHAPE).map_err(|e| format!("key type of `{name}`: {e}"))?;
        let v = schema_of(V::SHAPE).map_err(|e| format!("value type of `{name}`: {e}"))?;
        let mut mix = crate::persist::format::checksum(&[
            &[kind],
            &k.fingerprint.to_le_bytes(),
            &v.fingerprint.to_le_bytes(),
        ]);
        if mix == 0 {
            mix = 1;
        }
        Ok(Codec {
            info: CodecInfo {
                name,
                fingerprint: mix,
                description: format!("key: {}; value: {}", k.description, v.description),
            },
            encode_keys: encode_many::<K>,
            decode_keys: decode_many::<K>,
            encode_value: encode_one::<V>,
            decode_value: decode_one::<V>,
            encode_values: encode_many::<V>,
            decode_values: decode_many::<V>,
        })
    }
}

fn encode_error(e: impl std::fmt::Display) -> Error {
    Error::persist(format!("encoding failed: {e}"))
}

fn decode_error(e: impl std::fmt::Display) -> Error {
    Error::persist(format!(
        "decoding failed (corrupt file or changed type): {e}"
    ))
}

fn encode_one<T: Facet<'static> + 'static>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if fast::encode(value, &mut out) {
        return Ok(out);
    }
    facet_postcard::to_vec(value).map_err(encode_error)
}

fn decode_one<T: Facet<'static> + 'static>(bytes: &[u8]) -> Result<T> {
    if let Some(r) = fast::decode_all::<T>(bytes) {
        return r;
    }
    facet_postcard::from_slice(bytes).map_err(decode_error)
}

/// A varint count, then each element: scalars as postcard's `Vec<T>` (so
/// one fast loop decodes them), other types each as a length-prefixed
/// postcard value decoded on its own. (facet-postcard 0.46 crashes decoding
/// a `Vec` of some element types that decode fine alone, e.g. `Arc<[T]>`.)
fn encode_many<T: Facet<'static> + 'static>(items: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    fast::put_var(&mut out, items.len() as u64);
    for item in items {
        if !fast::encode(item, &mut out) {
            let bytes = facet_postcard::to_vec(item).map_err(encode_error)?;
            fast::put_var(&mut out, bytes.len() as u64);
            out.extend_from_slice(&bytes);
        }
    }
    Ok(out)
}

fn decode_many<T: Facet<'static> + 'static>(bytes: &[u8]) -> Result<Vec<T>> {
    if let Some(r) = fast::decode_seq::<T>(bytes) {
        return r;
    }
    let mut r = fast::Reader::new(bytes);
    let n = usize::try_from(r.var(64)?).map_err(decode_error)?;
    if n > bytes.len() {
        return Err(decode_error("element count exceeds the data"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(decode_one::<T>(r.bytes()?)?);
    }
    if !r.at_end() {
        return Err(decode_error("trailing bytes"));
    }
    Ok(out)
}

/// Postcard for scalars, by hand.
mod fast {
    use super::*;

    pub(super) fn put_var(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let byte = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn zigzag(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }

    fn unzigzag(v: u64) -> i64 {
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }

    pub(super) struct Reader<'a> {
        bytes: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        pub(super) fn new(bytes: &'a [u8]) -> Self {
            Reader { bytes, pos: 0 }
        }

        pub(super) fn at_end(&self) -> bool {
            self.pos == self.bytes.len()
        }

        /// Length-prefixed bytes.
        pub(super) fn bytes(&mut self) -> Result<&'a [u8]> {
            let len = usize::try_from(self.var(64)?).map_err(decode_error)?;
            let end = self
                .pos
                .checked_add(len)
                .filter(|&e| e <= self.bytes.len())
                .ok_or_else(|| decode_error("value runs past the end"))?;
            let b = &self.bytes[self.pos..end];
            self.pos = end;
            Ok(b)
        }

        fn byte(&mut self) -> Result<u8> {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| decode_error("unexpected end of data"))?;
            self.pos += 1;
            Ok(b)
        }

        pub(super) fn var(&mut self, max_bits: u32) -> Result<u64> {
            let mut v: u64 = 0;
            let mut shift = 0u32;
            loop {
                let b = self.byte()?;
                let bits = u64::from(b & 0x7F);
                if shift >= 64 || (shift > 0 && bits >> (64 - shift).min(63) > 0 && shift + 7 > 64)
                {
                    return Err(decode_error("varint overflow"));
                }
                v |= bits << shift;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            if max_bits < 64 && v >> max_bits != 0 {
                return Err(decode_error("integer out of range"));
            }
            Ok(v)
        }

        fn string(&mut self) -> Result<String> {
            let len = usize::try_from(self.var(64)?).map_err(decode_error)?;
            let end = self
                .pos
                .checked_add(len)
                .filter(|&e| e <= self.bytes.len())
                .ok_or_else(|| decode_error("string runs past the end"))?;
            let s = std::str::from_utf8(&self.bytes[self.pos..end]).map_err(decode_error)?;
            self.pos = end;
            Ok(s.to_string())
        }
    }

    macro_rules! scalar_types {
        ($m:ident) => {
            $m!(u16, unsigned, 16);
            $m!(u32, unsigned, 32);
            $m!(u64, unsigned, 64);
            $m!(usize, unsigned, 64);
            $m!(i16, signed, 16);
            $m!(i32, signed, 32);
            $m!(i64, signed, 64);
            $m!(isize, signed, 64);
        };
    }

    /// Appends the postcard encoding of `value` if `T` is a scalar we handle.
    pub(super) fn encode<T: 'static>(value: &T, out: &mut Vec<u8>) -> bool {
        let any = value as &dyn Any;
        macro_rules! try_int {
            ($t:ty, unsigned, $bits:expr) => {
                if let Some(v) = any.downcast_ref::<$t>() {
                    put_var(out, *v as u64);
                    return true;
                }
            };
            ($t:ty, signed, $bits:expr) => {
                if let Some(v) = any.downcast_ref::<$t>() {
                    put_var(out, zigzag(*v as i64));
                    return true;
                }
            };
        }
        scalar_types!(try_int);
        if let Some(v) = any.downcast_ref::<u8>() {
            out.push(*v);
        } else if let Some(v) = any.downcast_ref::<i8>() {
            out.push(*v as u8);
        } else if let Some(v) = any.downcast_ref::<bool>() {
            out.push(u8::from(*v));
        } else if let Some(s) = any.downcast_ref::<String>() {
            put_var(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        } else {
            return false;
        }
        true
    }

    fn is_fast<T: 'static>() -> bool {
        let t = TypeId::of::<T>();
        [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<isize>(),
            TypeId::of::<bool>(),
            TypeId::of::<String>(),
        ]
        .contains(&t)
    }

    fn read_one<T: 'static>(r: &mut Reader<'_>) -> Result<T> {
        let t = TypeId::of::<T>();
        let boxed: Box<dyn Any> = {
            macro_rules! try_int {
                ($ty:ty, unsigned, $bits:expr) => {
                    if t == TypeId::of::<$ty>() {
                        let v = r.var($bits)?;
                        let v: Box<dyn Any> = Box::new(<$ty>::try_from(v).map_err(decode_error)?);
                        return v
                            .downcast::<T>()
                            .map(|b| *b)
                            .map_err(|_| decode_error("type"));
                    }
                };
                ($ty:ty, signed, $bits:expr) => {
                    if t == TypeId::of::<$ty>() {
                        let v = unzigzag(r.var($bits)?);
                        let v: Box<dyn Any> = Box::new(<$ty>::try_from(v).map_err(decode_error)?);
                        return v
                            .downcast::<T>()
                            .map(|b| *b)
                            .map_err(|_| decode_error("type"));
                    }
                };
            }
            scalar_types!(try_int);
            if t == TypeId::of::<u8>() {
                Box::new(r.byte()?)
            } else if t == TypeId::of::<i8>() {
                Box::new(r.byte()? as i8)
            } else if t == TypeId::of::<bool>() {
                match r.byte()? {
                    0 => Box::new(false),
                    1 => Box::new(true),
                    b => return Err(decode_error(format!("invalid bool byte {b}"))),
                }
            } else if t == TypeId::of::<String>() {
                Box::new(r.string()?)
            } else {
                return Err(decode_error("not a scalar"));
            }
        };
        boxed
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| decode_error("type"))
    }

    /// Decodes one scalar filling all of `bytes`, if `T` is one we handle.
    pub(super) fn decode_all<T: 'static>(bytes: &[u8]) -> Option<Result<T>> {
        if !is_fast::<T>() {
            return None;
        }
        let mut r = Reader { bytes, pos: 0 };
        Some(read_one::<T>(&mut r).and_then(|v| {
            if r.pos == bytes.len() {
                Ok(v)
            } else {
                Err(decode_error("trailing bytes"))
            }
        }))
    }

    /// Decodes a postcard `Vec<T>` of scalars.
    pub(super) fn decode_seq<T: 'static>(bytes: &[u8]) -> Option<Result<Vec<T>>> {
        if !is_fast::<T>() {
            return None;
        }
        let mut r = Reader { bytes, pos: 0 };
        Some((|| {
            let n = usize::try_from(r.var(64)?).map_err(decode_error)?;
            // Every element takes at least one byte.
            if n > bytes.len() {
                return Err(decode_error("element count exceeds the data"));
            }
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(read_one::<T>(&mut r)?);
            }
            if r.pos != bytes.len() {
                return Err(decode_error("trailing bytes"));
            }
            Ok(out)
        })())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_postcard<T: Facet<'static> + Clone + PartialEq + std::fmt::Debug + 'static>(
        values: Vec<T>,
    ) {
        for v in &values {
            let ours = encode_one(v).unwrap();
            let theirs = facet_postcard::to_vec(v).unwrap();
            assert_eq!(ours, theirs, "{v:?}");
            assert_eq!(&decode_one::<T>(&ours).unwrap(), v);
        }
        let ours = encode_many(&values).unwrap();
        assert_eq!(ours, facet_postcard::to_vec(&values).unwrap());
        assert_eq!(decode_many::<T>(&ours).unwrap(), values);
    }

    #[test]
    fn fast_paths_match_facet_postcard() {
        same_as_postcard(vec![0u8, 1, 127, 128, 255]);
        same_as_postcard(vec![0u16, 1, 300, u16::MAX]);
        same_as_postcard(vec![0u32, 1, 127, 128, 16_384, u32::MAX]);
        same_as_postcard(vec![0u64, 1, 1 << 35, u64::MAX]);
        same_as_postcard(vec![0usize, 7, usize::MAX]);
        same_as_postcard(vec![0i8, -1, 127, -128]);
        same_as_postcard(vec![0i16, -1, 1, i16::MIN, i16::MAX]);
        same_as_postcard(vec![0i32, -1, 1, -64, 64, i32::MIN, i32::MAX]);
        same_as_postcard(vec![0i64, -1, i64::MIN, i64::MAX]);
        same_as_postcard(vec![0isize, -5, isize::MAX]);
        same_as_postcard(vec![true, false]);
        same_as_postcard(vec![String::new(), "é✓".to_string(), "x".repeat(200)]);
    }

    #[test]
    fn non_scalar_sequences_round_trip_element_by_element() {
        // facet-postcard 0.46 crashes decoding `Vec<Arc<[u32]>>` as a whole;
        // element by element it is fine.
        let values: Vec<std::sync::Arc<[u32]>> = vec![vec![1u32, 2].into(), Vec::new().into()];
        let bytes = encode_many(&values).unwrap();
        assert_eq!(
            decode_many::<std::sync::Arc<[u32]>>(&bytes).unwrap(),
            values
        );
        let strings: Vec<Vec<String>> = vec![vec!["a".into()], vec![]];
        let bytes = encode_many(&strings).unwrap();
        assert_eq!(decode_many::<Vec<String>>(&bytes).unwrap(), strings);
        assert!(decode_many::<Vec<String>>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn fast_decoders_reject_garbage() {
        assert!(decode_one::<u32>(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).is_err()); // > u32::MAX
        assert!(decode_one::<u64>(&[0xFF; 11]).is_err());
        assert!(decode_one::<bool>(&[2]).is_err());
        assert!(decode_one::<String>(&[5, b'a']).is_err());
        assert!(decode_one::<String>(&[2, 0xC3, 0x28]).is_err());
        assert!(decode_one::<u16>(&[1, 2]).is_err());
        assert!(decode_many::<u32>(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]).is_err());
        assert!(decode_many::<u64>(&[3, 1, 2]).is_err());
    }
}
