//! Schemas of persisted types.
//!
//! A persisted cache is only readable by the types that wrote it. `schema_of`
//! walks a type's facet [`Shape`] and produces a canonical text description of
//! what facet-postcard puts on the wire for it, plus a 64-bit fingerprint of
//! that text. The description is built only from names and structure (field
//! and variant names, scalar kinds, container kinds), never from `TypeId`s,
//! `DeclId`s or addresses, so it is the same in every compilation, process and
//! machine; any change to the encoded structure changes it.
//!
//! The same walk is an allow-list: it accepts only the shapes proven to
//! round-trip through facet-postcard 0.46.1 and picante's codec, by the
//! property tests in `tests/persist_shapes.rs` (generated values, nested two
//! levels deep, end to end through save and load) and the unit tests below,
//! and refuses everything else at registration, naming the type and saying
//! what to use instead:
//!
//! - scalars: `()`, `bool`, `char`, the integers, `f32`, `f64`, `String`,
//!   `Cow<'static, str>`, and `str` behind `Box`/`Arc`/`Rc`;
//! - `Box<T>`, `Arc<T>`, `Rc<T>` of an allowed sized `T`;
//! - `Box<[T]>`, `Arc<[T]>`, `Rc<[T]>` only outside sequences, sets, maps,
//!   arrays, `Result`s and enum variants: facet-postcard 0.46.1 crashes
//!   (SIGSEGV) decoding `Vec<Arc<[T]>>`, `Vec<Box<[T]>>`, a map of them, or
//!   an enum variant holding one, even as a struct field; elsewhere (at the
//!   top, in struct and tuple fields, in `Option`) they round-trip;
//! - `Option<T>`, `Result<T, E>`, `Vec<T>`, `[T; N]`, `HashSet`/`HashMap`
//!   with the default hasher, `BTreeSet`/`BTreeMap`;
//! - tuples, structs (named, tuple, unit, transparent) and externally tagged
//!   enums, with plain fields or format-independent `#[facet(proxy = P)]`s
//!   (container or field) whose `P` is allowed.
//!
//! Refused with a reason observed against facet-postcard 0.46.1: `PathBuf`,
//! `Duration`, `PhantomData`, maps with other hashers, skipped and flattened
//! fields, untagged, internally tagged and `other` enums, references, weak
//! pointers, `Cow<[T]>`. Refused as unverified: opaque `Display`/`FromStr`
//! scalars, facet dynamic values, metadata containers, anything else.
//!
//! The description grammar:
//!
//! ```text
//! scalars   u8 … u128, i8 … i128, usize, isize, f32, f64, bool, char, (),
//!           string (String, str, Cow<str>)
//! wrappers  Box<T>, Rc<T>, Arc<T> describe as T (they encode as T)
//! options   option<T>   result<T,E>
//! sequences list<T> (Vec<T>, [T], Arc<[T]>…)   array<T;N>   set<T>   map<K,V>
//! tuples    (T,U,…)
//! structs   struct Name#n{field:T,…} | struct Name#n(T,…) | struct Name#n
//! enums     enum Name#n{A|B(T,…)|C{field:T,…}}
//! proxies   proxy(Name:P) for a type encoded through its proxy type P;
//!           a field with a proxy describes as proxy(P)
//! back-ref  @n: the struct or enum numbered #n earlier in this description
//! ```
//!
//! Structs and enums are numbered in order of first appearance and described
//! once; every later appearance (a recursive use, or a type used twice) is a
//! back-reference, which keeps recursive types finite and descriptions linear.
//! Field and variant names are the serialized ones (`rename` applies).

use std::alloc::Layout;
use std::collections::HashMap;
use std::hash::RandomState;

use facet::{
    ConstTypeId, Def, Facet, Field, KnownPointer, PointerDef, ScalarType, Shape, StructKind,
    StructType, Type, UserType,
};

/// A stable description of a type's shape, for matching persisted data to
/// the types that read it.
pub(crate) struct Schema {
    /// 64-bit fingerprint, stable across compilations, processes and machines
    /// (never derived from TypeId/ConstTypeId/DeclId or pointer addresses).
    pub fingerprint: u64,
    /// The canonical description the fingerprint hashes (for error messages / debugging).
    // Not needed to match files (the fingerprint is), so possibly unread.
    #[allow(dead_code)]
    pub description: String,
}

/// Mixed into every fingerprint ahead of the description: bump it when the
/// description grammar or the wire encoding (the facet-postcard version)
/// changes, so old caches stop matching.
const FINGERPRINT_TAG: &str = "picante-schema/1 facet-postcard/0.46\n";

/// The format namespace facet-postcard's decoder uses for format proxies.
const POSTCARD: &str = "postcard";

/// Bound on nesting, as a guard against a hand-written `Facet` impl whose
/// structure recurses without passing through a struct or enum.
const MAX_DEPTH: usize = 256;

/// Describes `shape` canonically and checks that facet-postcard can round-trip it faithfully.
/// Err(message) names the offending type and where it occurs, e.g.
/// "`std::path::PathBuf` (at `Page.path`) is not supported by facet-postcard 0.46: use `String` (or a `Utf8PathBuf`-like String newtype) instead".
pub(crate) fn schema_of(shape: &'static Shape) -> Result<Schema, String> {
    let mut walk = Walk {
        out: String::new(),
        path: shape.to_string(),
        numbered: HashMap::new(),
        depth: 0,
        nested: 0,
    };
    walk.describe(shape)?;
    Ok(Schema {
        fingerprint: fingerprint_of(&walk.out),
        description: walk.out,
    })
}

/// FNV-1a over the tag and the description, then a final avalanche (the
/// splitmix64 finalizer) so every input bit reaches every output bit.
fn fingerprint_of(description: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in FINGERPRINT_TAG
        .as_bytes()
        .iter()
        .chain(description.as_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The state of one walk over a type graph.
struct Walk {
    /// The description so far.
    out: String,
    /// Where the walk is, for error messages: `Page.links[].target`.
    path: String,
    /// Structs and enums already described, by in-process identity (used
    /// only to detect repeats, never written out), with their number.
    numbered: HashMap<ConstTypeId, (usize, bool)>,
    depth: usize,
    /// How many sequences, sets, maps, arrays, `Result`s and enum variants
    /// enclose the current position (where a slice behind a pointer
    /// crashes facet-postcard 0.46.1's decoder).
    nested: usize,
}

impl Walk {
    /// Appends the description of `shape`, or refuses it.
    fn describe(&mut self, shape: &'static Shape) -> Result<(), String> {
        if self.depth >= MAX_DEPTH {
            return Err(self.refuse(shape, "nests too deeply to describe"));
        }
        self.depth += 1;
        let result = self.describe_inner(shape);
        self.depth -= 1;
        result
    }

    /// Describes `shape` with `segment` appended to the path meanwhile.
    fn child(&mut self, segment: &str, shape: &'static Shape) -> Result<(), String> {
        let len = self.path.len();
        self.path.push_str(segment);
        let result = self.describe(shape);
        self.path.truncate(len);
        result
    }

    /// The error message for `shape` at the current path.
    fn refuse(&self, shape: &'static Shape, reason: &str) -> String {
        format!("`{}` (at `{}`) {reason}", type_name(shape), self.path)
    }

    /// The checks follow the order in which facet-postcard's serializer
    /// decides how to encode a value, so the description matches the bytes.
    fn describe_inner(&mut self, shape: &'static Shape) -> Result<(), String> {
        if let Type::Pointer(_) = shape.ty {
            return Err(self.refuse(
                shape,
                "is a reference or raw pointer, which cannot be decoded into an owned value: \
                 use an owned type (`String`, `Vec<T>`, `Box<T>`, `Arc<T>`…) instead",
            ));
        }
        if shape.format_proxy(POSTCARD).is_some() {
            return Err(self.refuse(shape, POSTCARD_PROXY));
        }
        if let Some(scalar) = shape.scalar_type() {
            return self.describe_scalar(shape, scalar);
        }
        match shape.def {
            Def::Pointer(pointer) => return self.describe_pointer(shape, pointer),
            Def::Scalar => return self.describe_opaque_scalar(shape),
            _ => {}
        }
        if shape.is_metadata_container() {
            return Err(self.refuse(shape, UNVERIFIED));
        }
        if let Some(proxy) = shape.proxy {
            // Encoded as the proxy type, converted on both ends.
            self.out.push_str("proxy(");
            self.out.push_str(shape.type_identifier);
            self.out.push(':');
            self.child(" as proxy", proxy.shape)?;
            self.out.push(')');
            return Ok(());
        }
        match shape.def {
            Def::Option(def) => self.wrap("option<", &[("?", def.t)], ">"),
            Def::Result(def) => self.nest("result<", &[(".Ok", def.t), (".Err", def.e)], ">"),
            // A slice is only reached behind a pointer (`Arc<[T]>`, `Box<[T]>`),
            // and encodes like a `Vec<T>`: a length, then the elements.
            Def::List(def) => self.nest("list<", &[("[]", def.t)], ">"),
            Def::Slice(def) => self.nest("list<", &[("[]", def.t)], ">"),
            Def::Array(def) => self.nest("array<", &[("[]", def.t)], &format!(";{}>", def.n)),
            Def::Set(def) => {
                self.check_hasher(shape)?;
                self.nest("set<", &[("[]", def.t)], ">")
            }
            Def::Map(def) => {
                self.check_hasher(shape)?;
                self.nest("map<", &[("{key}", def.k), ("{value}", def.v)], ">")
            }
            Def::DynamicValue(_) => Err(self.refuse(
                shape,
                "is a facet dynamic value, which picante has not verified to round-trip: \
                 persist a concrete type instead",
            )),
            Def::Undefined => self.describe_user(shape),
            _ => Err(self.refuse(shape, UNVERIFIED)),
        }
    }

    /// `wrap`, counting as nested for the children.
    fn nest(
        &mut self,
        open: &str,
        children: &[(&str, &'static Shape)],
        close: &str,
    ) -> Result<(), String> {
        self.nested += 1;
        let result = self.wrap(open, children, close);
        self.nested -= 1;
        result
    }

    /// `open`, the children separated by commas, `close`.
    fn wrap(
        &mut self,
        open: &str,
        children: &[(&str, &'static Shape)],
        close: &str,
    ) -> Result<(), String> {
        self.out.push_str(open);
        for (i, (segment, shape)) in children.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.child(segment, shape)?;
        }
        self.out.push_str(close);
        Ok(())
    }

    fn describe_scalar(&mut self, shape: &'static Shape, scalar: ScalarType) -> Result<(), String> {
        let name = match scalar {
            ScalarType::Unit => "()",
            ScalarType::Bool => "bool",
            ScalarType::Char => "char",
            // All encode as a length-prefixed UTF-8 string.
            ScalarType::Str | ScalarType::String | ScalarType::CowStr => "string",
            ScalarType::F32 => "f32",
            ScalarType::F64 => "f64",
            ScalarType::U8 => "u8",
            ScalarType::U16 => "u16",
            ScalarType::U32 => "u32",
            ScalarType::U64 => "u64",
            ScalarType::U128 => "u128",
            ScalarType::USize => "usize",
            ScalarType::I8 => "i8",
            ScalarType::I16 => "i16",
            ScalarType::I32 => "i32",
            ScalarType::I64 => "i64",
            ScalarType::I128 => "i128",
            ScalarType::ISize => "isize",
            ScalarType::ConstTypeId => {
                return Err(self.refuse(
                    shape,
                    "is a process-local type identity and cannot be persisted",
                ));
            }
            // The std::net scalars (present when some crate enables facet's
            // `net` feature): facet-postcard 0.46 fails to encode them.
            _ => {
                return Err(self.refuse(
                    shape,
                    "is not supported by facet-postcard 0.46 (encoding fails): store its text form as a `String` instead",
                ));
            }
        };
        self.out.push_str(name);
        Ok(())
    }

    /// `Box`, `Rc` and `Arc` encode as their pointee; the other pointers are
    /// refused.
    fn describe_pointer(
        &mut self,
        shape: &'static Shape,
        pointer: PointerDef,
    ) -> Result<(), String> {
        match (pointer.known, pointer.pointee) {
            (Some(KnownPointer::Box | KnownPointer::Rc | KnownPointer::Arc), Some(pointee))
                if self.nested > 0 && matches!(pointee.def, Def::Slice(_)) =>
            {
                Err(self.refuse(
                    shape,
                    "is a slice behind a pointer inside a sequence, map, set, array, `Result` or \
                     enum variant, which facet-postcard 0.46 crashes decoding: use `Vec<T>` (or \
                     `Arc<Vec<T>>` to share it) instead",
                ))
            }
            (Some(KnownPointer::Box | KnownPointer::Rc | KnownPointer::Arc), Some(pointee)) => {
                self.describe(pointee)
            }
            (Some(KnownPointer::Cow), _) => Err(self.refuse(
                shape,
                "does not decode in facet-postcard 0.46 (only `Cow<str>` does): use the owned type instead",
            )),
            (Some(KnownPointer::RcWeak | KnownPointer::ArcWeak), _) => Err(self.refuse(
                shape,
                "is a weak pointer, which facet-postcard 0.46 cannot encode: persist the value itself",
            )),
            _ => Err(self.refuse(shape, UNVERIFIED)),
        }
    }

    /// A `Def::Scalar` that is none of facet's known scalars. facet-postcard
    /// encodes it as its `Display` text and decodes it through its proxy, or
    /// else by parsing that text, so only a Display/FromStr pair without a
    /// proxy round-trips.
    fn describe_opaque_scalar(&mut self, shape: &'static Shape) -> Result<(), String> {
        let is = |module: &str, name: &str| {
            shape.module_path == Some(module) && shape.type_identifier == name
        };
        let reason = if is("std::path", "PathBuf") || is("std::path", "Path") {
            "is not supported by facet-postcard 0.46: use `String` (or a `Utf8PathBuf`-like String newtype) instead"
        } else if is("core::time", "Duration") {
            "does not round-trip through facet-postcard 0.46 (it is encoded as display text but decoded as \
             `(secs, nanos)`, giving a wrong value without an error): store `as_nanos()` as a `u128`, or \
             `(as_secs(), subsec_nanos())` as `(u64, u32)`, instead"
        } else if is("core::marker", "PhantomData") {
            "does not decode in facet-postcard 0.46: leave it out of persisted types, or use `()`"
        } else if shape.proxy.is_some() {
            "has a proxy that facet-postcard 0.46 uses when decoding but not when encoding, \
             so it decodes to a wrong value: persist a plain representation of it instead"
        } else if shape.vtable.has_display() && shape.vtable.has_parse() {
            "is an opaque scalar (encoded as its `Display` text, decoded with `FromStr`), which \
             picante has not verified to round-trip: persist its text as a `String` instead"
        } else {
            "is an opaque scalar that facet-postcard 0.46 cannot round-trip: persist a plain representation of it instead"
        };
        Err(self.refuse(shape, reason))
    }

    /// facet's `HashMap`/`HashSet` impls insert decoded entries through a
    /// `HashMap<K, V>`/`HashSet<T>` view, i.e. hashing with std's
    /// `RandomState` whatever the map's own hasher is: with any other hasher
    /// the decoded collection's lookups miss (or worse, as the layouts
    /// differ). A set names its hasher in its shape; a map's hasher shows
    /// only in its size (so a custom hasher exactly the size of
    /// `RandomState` goes unnoticed).
    fn check_hasher(&self, shape: &'static Shape) -> Result<(), String> {
        let std_module = shape
            .module_path
            .is_some_and(|m| m.starts_with("std::collections::hash_"));
        let custom = match (std_module, shape.type_identifier) {
            (true, "HashSet") => shape
                .type_params
                .iter()
                .any(|p| p.name == "S" && p.shape.id != <RandomState as Facet>::SHAPE.id),
            (true, "HashMap") => {
                shape.layout.sized_layout().ok() != Some(Layout::new::<HashMap<(), ()>>())
            }
            _ => false,
        };
        if custom {
            return Err(self.refuse(
                shape,
                "has a non-default hasher, which facet-postcard 0.46 mishandles (decoded entries are hashed \
                 with std's `RandomState`, so lookups fail): use the default hasher or a `BTreeMap`/`BTreeSet`",
            ));
        }
        Ok(())
    }

    /// Structs, tuples and enums.
    fn describe_user(&mut self, shape: &'static Shape) -> Result<(), String> {
        match shape.ty {
            Type::User(UserType::Struct(st)) if st.kind == StructKind::Tuple => {
                // A tuple is not nominal, so cannot recurse: no numbering.
                self.describe_fields(&st)
            }
            Type::User(UserType::Struct(st)) => {
                if self.number(shape, "struct")? {
                    return Ok(());
                }
                self.describe_fields(&st)
            }
            Type::User(UserType::Enum(et)) => {
                let variant_attr = |key| et.variants.iter().any(|v| v.has_builtin_attr(key));
                let reason = if shape.is_untagged() || variant_attr("untagged") {
                    "is an untagged enum, which facet-postcard 0.46 panics decoding: remove `#[facet(untagged)]`"
                } else if shape.tag.is_some() || shape.content.is_some() {
                    "is a tagged enum (`#[facet(tag = …)]`), which facet-postcard 0.46 panics decoding: remove the tag"
                } else if et.variants.iter().any(|v| v.is_other()) {
                    "has a `#[facet(other)]` variant, which facet-postcard 0.46 cannot decode: remove the attribute"
                } else if et.is_cow {
                    UNVERIFIED
                } else {
                    if self.number(shape, "enum")? {
                        return Ok(());
                    }
                    self.out.push('{');
                    for (i, variant) in et.variants.iter().enumerate() {
                        if i > 0 {
                            self.out.push('|');
                        }
                        let name = variant.effective_name();
                        self.out.push_str(name);
                        let len = self.path.len();
                        self.path.push_str("::");
                        self.path.push_str(name);
                        self.nested += 1;
                        let result = self.describe_fields(&variant.data);
                        self.nested -= 1;
                        self.path.truncate(len);
                        result?;
                    }
                    self.out.push('}');
                    return Ok(());
                };
                Err(self.refuse(shape, reason))
            }
            Type::User(UserType::Union(_)) => Err(self.refuse(
                shape,
                "is a union, which facet cannot serialize: use an enum instead",
            )),
            _ => Err(self.refuse(
                shape,
                "is an opaque type that facet-postcard 0.46 cannot serialize: persist a plain representation of it instead",
            )),
        }
    }

    /// Writes `keyword Name#n` for the first appearance of a struct or enum
    /// and returns false; writes the back-reference `@n` for a later one and
    /// returns true.
    ///
    /// A back-reference in a nested position to a type first described
    /// outside one is checked again as nested (its fields may hold a slice
    /// behind a pointer, allowed there but not here): `Err` then.
    fn number(&mut self, shape: &'static Shape, keyword: &str) -> Result<bool, String> {
        if let Some(&(n, seen_nested)) = self.numbered.get(&shape.id) {
            if self.nested > 0 && !seen_nested {
                if let Some(entry) = self.numbered.get_mut(&shape.id) {
                    entry.1 = true;
                }
                let mut check = Walk {
                    out: String::new(),
                    path: self.path.clone(),
                    numbered: HashMap::new(),
                    depth: self.depth,
                    nested: self.nested,
                };
                check.describe_user(shape)?;
            }
            self.out.push_str(&format!("@{n}"));
            return Ok(true);
        }
        let n = self.numbered.len();
        self.numbered.insert(shape.id, (n, self.nested > 0));
        self.out
            .push_str(&format!("{keyword} {}#{n}", shape.type_identifier));
        Ok(false)
    }

    /// The fields of a struct, tuple or variant: `{name:T,…}`, `(T,…)`, or
    /// nothing for a unit.
    fn describe_fields(&mut self, st: &StructType) -> Result<(), String> {
        let (open, close, named) = match st.kind {
            StructKind::Unit => return Ok(()),
            StructKind::Struct => ('{', '}', true),
            StructKind::TupleStruct | StructKind::Tuple => ('(', ')', false),
        };
        self.out.push(open);
        for (i, field) in st.fields.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let segment = if named {
                self.out.push_str(field.effective_name());
                self.out.push(':');
                format!(".{}", field.effective_name())
            } else {
                format!(".{i}")
            };
            self.describe_field(field, &segment)?;
        }
        self.out.push(close);
        Ok(())
    }

    fn describe_field(&mut self, field: &Field, segment: &str) -> Result<(), String> {
        let reason = if field.is_flattened() {
            "is a `#[facet(flatten)]` field, which facet-postcard 0.46 cannot decode: nest it as a plain field"
        } else if field.should_skip_serializing_unconditional() {
            "is a skipped field (`#[facet(skip)]` or `skip_serializing`), which facet-postcard 0.46 omits when \
             encoding but still expects when decoding: persist it, or move it out of the persisted type"
        } else if field.is_metadata() {
            UNVERIFIED
        } else if field.format_proxy(POSTCARD).is_some() {
            POSTCARD_PROXY
        } else {
            return match field.proxy {
                Some(proxy) => {
                    self.out.push_str("proxy(");
                    self.child(&format!("{segment} as proxy"), proxy.shape)?;
                    self.out.push(')');
                    Ok(())
                }
                None => self.child(segment, field.shape()),
            };
        };
        let len = self.path.len();
        self.path.push_str(segment);
        let message = self.refuse(field.shape(), reason);
        self.path.truncate(len);
        Err(message)
    }
}

const UNVERIFIED: &str = "is not supported by picante's persistent cache \
     (not verified to round-trip through facet-postcard 0.46)";

const POSTCARD_PROXY: &str = "has a `postcard`-specific proxy, which facet-postcard 0.46 applies when \
     decoding but not when encoding: use a format-independent `#[facet(proxy = …)]`";

/// A type's name for messages: module path and name with generic arguments.
fn type_name(shape: &'static Shape) -> String {
    match shape.module_path {
        Some(module) => format!("{module}::{shape}"),
        None => shape.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
    use std::fmt::Debug;
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    use std::path::PathBuf;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::Duration;

    use facet::Facet;

    use super::schema_of;

    fn schema(shape: &'static facet::Shape) -> super::Schema {
        match schema_of(shape) {
            Ok(schema) => schema,
            Err(e) => panic!("refused: {e}"),
        }
    }

    fn description(shape: &'static facet::Shape) -> String {
        schema(shape).description
    }

    fn fingerprint(shape: &'static facet::Shape) -> u64 {
        schema(shape).fingerprint
    }

    fn refusal(shape: &'static facet::Shape) -> String {
        match schema_of(shape) {
            Ok(schema) => panic!("accepted as {}", schema.description),
            Err(e) => e,
        }
    }

    /// Accepted by `schema_of`, and really round-trips through facet-postcard.
    fn round_trip<T: Facet<'static> + PartialEq + Debug>(value: T) -> T {
        schema(T::SHAPE);
        let bytes = facet_postcard::to_vec(&value).expect("encode");
        let back: T = facet_postcard::from_slice(&bytes).expect("decode");
        assert_eq!(back, value);
        back
    }

    // Versions of one type, as a schema change across releases would make
    // them: same type name, each in its own module.
    mod v1 {
        #[derive(facet::Facet)]
        pub struct Page {
            pub title: String,
            pub words: u32,
        }
    }
    mod v1_again {
        #[derive(facet::Facet)]
        pub struct Page {
            pub title: String,
            pub words: u32,
        }
    }
    mod renamed_field {
        #[derive(facet::Facet)]
        pub struct Page {
            pub heading: String,
            pub words: u32,
        }
    }
    mod rename_attr {
        #[derive(facet::Facet)]
        pub struct Page {
            #[facet(rename = "heading")]
            pub title: String,
            pub words: u32,
        }
    }
    mod wider_field {
        #[derive(facet::Facet)]
        pub struct Page {
            pub title: String,
            pub words: u64,
        }
    }
    mod extra_field {
        #[derive(facet::Facet)]
        pub struct Page {
            pub title: String,
            pub words: u32,
            pub draft: bool,
        }
    }
    mod reordered {
        #[derive(facet::Facet)]
        pub struct Page {
            pub words: u32,
            pub title: String,
        }
    }
    mod tuple_struct {
        #[derive(facet::Facet)]
        pub struct Page(pub String, pub u32);
    }

    mod e1 {
        #[derive(facet::Facet)]
        #[repr(u8)]
        #[allow(dead_code)]
        pub enum Node {
            Text(String),
            Link { href: String },
        }
    }
    mod e_added {
        #[derive(facet::Facet)]
        #[repr(u8)]
        #[allow(dead_code)]
        pub enum Node {
            Text(String),
            Link { href: String },
            Break,
        }
    }
    mod e_renamed {
        #[derive(facet::Facet)]
        #[repr(u8)]
        #[allow(dead_code)]
        pub enum Node {
            Text(String),
            Anchor { href: String },
        }
    }
    mod e_changed {
        #[derive(facet::Facet)]
        #[repr(u8)]
        #[allow(dead_code)]
        pub enum Node {
            Text(Vec<u8>),
            Link { href: String },
        }
    }

    #[test]
    fn same_type_same_schema() {
        let a = schema(v1::Page::SHAPE);
        let b = schema(v1::Page::SHAPE);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.description, b.description);
        // Module paths and TypeIds do not enter the schema.
        assert_eq!(a.fingerprint, fingerprint(v1_again::Page::SHAPE));
    }

    #[test]
    fn golden_description_and_fingerprint() {
        // Constants, so a change in the grammar or the hash, or anything
        // compilation-dependent sneaking in, fails here.
        assert_eq!(
            description(v1::Page::SHAPE),
            "struct Page#0{title:string,words:u32}"
        );
        assert_eq!(fingerprint(v1::Page::SHAPE), GOLDEN_PAGE);
        assert_eq!(fingerprint(u32::SHAPE), GOLDEN_U32);
    }

    const GOLDEN_PAGE: u64 = 0xa2e949bf52dcbd97;
    const GOLDEN_U32: u64 = 0xef826658dabc9c55;

    #[test]
    fn struct_changes_change_the_fingerprint() {
        let base = fingerprint(v1::Page::SHAPE);
        for changed in [
            renamed_field::Page::SHAPE,
            rename_attr::Page::SHAPE,
            wider_field::Page::SHAPE,
            extra_field::Page::SHAPE,
            reordered::Page::SHAPE,
            tuple_struct::Page::SHAPE,
        ] {
            assert_ne!(base, fingerprint(changed), "{}", description(changed));
        }
        // A serialized rename reads like the renamed field.
        assert_eq!(
            description(rename_attr::Page::SHAPE),
            description(renamed_field::Page::SHAPE)
        );
    }

    #[test]
    fn enum_changes_change_the_fingerprint() {
        assert_eq!(
            description(e1::Node::SHAPE),
            "enum Node#0{Text(string)|Link{href:string}}"
        );
        let base = fingerprint(e1::Node::SHAPE);
        for changed in [
            e_added::Node::SHAPE,
            e_renamed::Node::SHAPE,
            e_changed::Node::SHAPE,
        ] {
            assert_ne!(base, fingerprint(changed), "{}", description(changed));
        }
    }

    #[test]
    fn scalars_are_distinct() {
        let shapes = [
            u8::SHAPE,
            u16::SHAPE,
            u32::SHAPE,
            u64::SHAPE,
            u128::SHAPE,
            usize::SHAPE,
            i8::SHAPE,
            i16::SHAPE,
            i32::SHAPE,
            i64::SHAPE,
            i128::SHAPE,
            isize::SHAPE,
            f32::SHAPE,
            f64::SHAPE,
            bool::SHAPE,
            char::SHAPE,
            String::SHAPE,
            <()>::SHAPE,
        ];
        let fingerprints: HashSet<u64> = shapes.iter().map(|s| fingerprint(s)).collect();
        assert_eq!(fingerprints.len(), shapes.len());
        assert_ne!(fingerprint(u32::SHAPE), fingerprint(u64::SHAPE));
    }

    #[test]
    fn wrappers_describe_as_what_they_encode() {
        // Box, Rc and Arc are transparent; all the owned strings are one kind.
        assert_eq!(description(<Arc<str>>::SHAPE), "string");
        assert_eq!(description(<Box<str>>::SHAPE), "string");
        assert_eq!(description(<Rc<String>>::SHAPE), "string");
        assert_eq!(description(<Cow<'static, str>>::SHAPE), "string");
        assert_eq!(description(<Arc<[u32]>>::SHAPE), "list<u32>");
        assert_eq!(description(<Vec<u32>>::SHAPE), "list<u32>");
        assert_eq!(description(<Option<Box<u32>>>::SHAPE), "option<u32>");
        assert_eq!(description(<[u8; 4]>::SHAPE), "array<u8;4>");
        assert_eq!(description(<(u8, String)>::SHAPE), "(u8,string)");
        assert_eq!(
            description(<BTreeMap<String, u32>>::SHAPE),
            "map<string,u32>"
        );
        assert_eq!(description(<HashSet<u16>>::SHAPE), "set<u16>");
        assert_eq!(
            description(<Result<u8, String>>::SHAPE),
            "result<u8,string>"
        );
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Tree {
        name: String,
        children: Vec<Tree>,
    }

    #[derive(Facet, Debug, PartialEq)]
    #[repr(u8)]
    enum Expr {
        Lit(i64),
        Add(Box<Expr>, Box<Expr>),
        Call { callee: Arc<str>, args: Vec<Expr> },
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Ping {
        pong: Option<Box<Pong>>,
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Pong {
        pings: Vec<Ping>,
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Span {
        lo: u32,
        hi: u32,
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Spanned {
        outer: Span,
        inner: Span,
    }

    #[test]
    fn recursive_types_terminate_with_back_references() {
        assert_eq!(
            description(Tree::SHAPE),
            "struct Tree#0{name:string,children:list<@0>}"
        );
        assert_eq!(
            description(Expr::SHAPE),
            "enum Expr#0{Lit(i64)|Add(@0,@0)|Call{callee:string,args:list<@0>}}"
        );
        assert_eq!(
            description(Ping::SHAPE),
            "struct Ping#0{pong:option<struct Pong#1{pings:list<@0>}>}"
        );
        // A type used twice is described once.
        assert_eq!(
            description(Spanned::SHAPE),
            "struct Spanned#0{outer:struct Span#1{lo:u32,hi:u32},inner:@1}"
        );
        round_trip(Tree {
            name: "a".into(),
            children: vec![Tree {
                name: "b".into(),
                children: vec![],
            }],
        });
        round_trip(Expr::Add(
            Box::new(Expr::Lit(1)),
            Box::new(Expr::Call {
                callee: "f".into(),
                args: vec![Expr::Lit(-2)],
            }),
        ));
        round_trip(Ping {
            pong: Some(Box::new(Pong {
                pings: vec![Ping { pong: None }],
            })),
        });
    }

    // ---- accepted types: each round-trips through facet-postcard 0.46 ----

    #[test]
    fn accepted_std_types_round_trip() {
        let map = round_trip(HashMap::from([
            ("a".to_string(), 1u32),
            ("b".to_string(), 2),
        ]));
        assert_eq!(map.get("a"), Some(&1)); // lookups work, not just iteration
        // The default-hasher check compares layouts, which must not depend
        // on the key and value types.
        let wide = round_trip(HashMap::from([(7u8, [1u64; 8]), (9, [2; 8])]));
        assert_eq!(wide.get(&9), Some(&[2; 8]));
        schema(<HashMap<(), ()>>::SHAPE);
        schema(<HashMap<[u128; 4], Vec<String>>>::SHAPE);
        let set = round_trip(HashSet::from(["a".to_string(), "b".to_string()]));
        assert!(set.contains("b"));
        round_trip(BTreeMap::from([(1u64, vec![1u8]), (2, vec![])]));
        round_trip(BTreeSet::from([3i16, -4]));
        round_trip('é');
        round_trip('\u{1F600}');
        round_trip(i128::MIN);
        round_trip(u128::MAX);
        round_trip(());
        round_trip((1u8, "x".to_string(), true, (2u16,)));
        round_trip(vec![0u8, 1, 255]);
        round_trip(Vec::<u8>::new());
        round_trip([7u8, 8, 9]);
        round_trip(Arc::<str>::from("shared"));
        round_trip(Arc::<[u32]>::from(vec![1, 2, 3]));
        round_trip(Arc::<[String]>::from(vec!["x".to_string()]));
        round_trip(Box::<str>::from("boxed"));
        round_trip(Rc::<str>::from("rc"));
        round_trip(Some(Box::new(3u32)));
        round_trip(None::<Box<u32>>);
        round_trip(Some(None::<u32>));
        let _ = round_trip(Ok::<u32, String>(1));
        let _ = round_trip(Err::<u32, String>("e".into()));
        round_trip(Cow::<'static, str>::Owned("cow".into()));
        round_trip((f32::MIN_POSITIVE, -0.5f64, usize::MAX, isize::MIN));
    }

    #[derive(Facet, Debug, PartialEq)]
    #[facet(transparent)]
    struct Utf8Path(String);

    #[derive(Facet, Debug, PartialEq)]
    struct Unit;

    #[derive(Facet, Debug, PartialEq)]
    #[repr(u16)]
    enum Explicit {
        A = 5,
        B = 300,
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Attributed {
        #[facet(default)]
        a: u32,
        #[facet(skip_serializing_if = Option::is_none)]
        b: Option<u32>,
        #[facet(skip_deserializing, default)]
        c: u32,
    }

    #[derive(Facet, Debug, PartialEq)]
    #[facet(transparent)]
    struct Decimal(String);

    impl TryFrom<Decimal> for u32 {
        type Error = std::num::ParseIntError;
        fn try_from(d: Decimal) -> Result<u32, Self::Error> {
            d.0.parse()
        }
    }

    impl From<&u32> for Decimal {
        fn from(v: &u32) -> Decimal {
            Decimal(v.to_string())
        }
    }

    #[derive(Facet, Debug, PartialEq)]
    struct WithFieldProxy {
        #[facet(proxy = Decimal)]
        count: u32,
    }

    #[derive(Facet, Debug, PartialEq)]
    #[facet(proxy = Decimal)]
    struct Counter {
        n: u32,
    }

    impl TryFrom<Decimal> for Counter {
        type Error = std::num::ParseIntError;
        fn try_from(d: Decimal) -> Result<Counter, Self::Error> {
            Ok(Counter { n: d.0.parse()? })
        }
    }

    impl From<&Counter> for Decimal {
        fn from(c: &Counter) -> Decimal {
            Decimal(c.n.to_string())
        }
    }

    #[test]
    fn accepted_user_types_round_trip() {
        round_trip(Utf8Path("/a/b".into()));
        round_trip(Unit);
        round_trip(Explicit::B);
        round_trip(Attributed {
            a: 1,
            b: None,
            c: 3,
        });
        round_trip(Attributed {
            a: 1,
            b: Some(2),
            c: 3,
        });
        round_trip(WithFieldProxy { count: 42 });
        round_trip(Counter { n: 7 });
        assert_eq!(description(Utf8Path::SHAPE), "struct Utf8Path#0(string)");
        assert_eq!(description(Unit::SHAPE), "struct Unit#0");
        assert_eq!(
            description(WithFieldProxy::SHAPE),
            "struct WithFieldProxy#0{count:proxy(struct Decimal#1(string))}"
        );
        assert_eq!(
            description(Counter::SHAPE),
            "proxy(Counter:struct Decimal#0(string))"
        );
    }

    // ---- refused types: each message names the type and where it is ----

    #[derive(Facet)]
    struct Page {
        path: PathBuf,
    }

    #[test]
    fn refuses_path_buf() {
        assert_eq!(
            refusal(Page::SHAPE),
            "`std::path::PathBuf` (at `Page.path`) is not supported by facet-postcard 0.46: \
             use `String` (or a `Utf8PathBuf`-like String newtype) instead"
        );
        // Observed: encoding fails.
        assert!(facet_postcard::to_vec(&PathBuf::from("/a")).is_err());
    }

    #[derive(Facet)]
    struct Timed {
        spans: Vec<Option<Duration>>,
    }

    #[test]
    fn refuses_duration() {
        let e = refusal(Timed::SHAPE);
        assert!(
            e.starts_with("`core::time::Duration` (at `Timed.spans[]?`) does not round-trip"),
            "{e}"
        );
        // Observed: it decodes, to a different value.
        let d = Duration::new(5, 7);
        let bytes = facet_postcard::to_vec(&d).expect("encode");
        let back: Duration = facet_postcard::from_slice(&bytes).expect("decode");
        assert_ne!(back, d);
    }

    #[derive(Facet)]
    struct Index {
        by_name: HashMap<String, u32, ahash::RandomState>,
    }

    #[derive(Facet)]
    struct DefaultHasherIndex {
        by_name: HashMap<String, u32, BuildHasherDefault<DefaultHasher>>,
    }

    /// A hasher with a `Facet` impl, which `HashSet<T, S>` requires.
    #[derive(Facet, Default, Clone)]
    struct FixedState;

    impl BuildHasher for FixedState {
        type Hasher = DefaultHasher;
        fn build_hasher(&self) -> DefaultHasher {
            DefaultHasher::new()
        }
    }

    #[derive(Facet)]
    struct Tags {
        tags: HashSet<String, FixedState>,
    }

    // (Decoding these is not run here: facet's impls reinterpret the
    // collection as one with std's hasher, which is undefined behaviour when
    // the layouts differ. Observed in a scratch crate: the decoded map has
    // both entries but `get` finds neither.)
    #[test]
    fn refuses_non_default_hashers() {
        let e = refusal(Index::SHAPE);
        assert!(e.starts_with("`std::collections::hash_map::HashMap<String, u32>` (at `Index.by_name`) has a non-default hasher"), "{e}");
        let e = refusal(DefaultHasherIndex::SHAPE);
        assert!(
            e.contains("(at `DefaultHasherIndex.by_name`) has a non-default hasher"),
            "{e}"
        );
        let e = refusal(Tags::SHAPE);
        assert!(e.starts_with("`std::collections::hash_set::HashSet<String>` (at `Tags.tags`) has a non-default hasher"), "{e}");
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Marker {
        m: std::marker::PhantomData<u8>,
    }

    #[derive(Facet, Debug, PartialEq)]
    struct WithRange {
        r: std::ops::Range<u32>,
    }

    #[test]
    fn refuses_opaque_scalars_that_do_not_decode() {
        let e = refusal(Marker::SHAPE);
        assert!(
            e.starts_with("`core::marker::PhantomData` (at `Marker.m`) does not decode"),
            "{e}"
        );
        let bytes = facet_postcard::to_vec(&Marker {
            m: std::marker::PhantomData,
        })
        .expect("encode");
        assert!(facet_postcard::from_slice::<Marker>(&bytes).is_err());

        let e = refusal(WithRange::SHAPE);
        assert!(e.contains("(at `WithRange.r`) is an opaque scalar"), "{e}");
        let bytes = facet_postcard::to_vec(&WithRange { r: 1..2 }).expect("encode");
        assert!(facet_postcard::from_slice::<WithRange>(&bytes).is_err());
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Skipping {
        a: u32,
        #[facet(skip, default)]
        cache: u32,
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Flat {
        a: u32,
        #[facet(flatten)]
        span: Span,
    }

    #[test]
    fn refuses_skipped_and_flattened_fields() {
        let e = refusal(Skipping::SHAPE);
        assert!(
            e.starts_with("`u32` (at `Skipping.cache`) is a skipped field"),
            "{e}"
        );
        let bytes = facet_postcard::to_vec(&Skipping { a: 1, cache: 0 }).expect("encode");
        assert!(facet_postcard::from_slice::<Skipping>(&bytes).is_err());

        let e = refusal(Flat::SHAPE);
        assert!(
            e.contains("(at `Flat.span`) is a `#[facet(flatten)]` field"),
            "{e}"
        );
        let bytes = facet_postcard::to_vec(&Flat {
            a: 1,
            span: Span { lo: 2, hi: 3 },
        })
        .expect("encode");
        assert!(facet_postcard::from_slice::<Flat>(&bytes).is_err());
    }

    #[derive(Facet)]
    #[repr(u8)]
    #[facet(untagged)]
    #[allow(dead_code)]
    enum Loose {
        N(u32),
        S(String),
    }

    #[derive(Facet)]
    #[repr(u8)]
    #[facet(tag = "type")]
    #[allow(dead_code)]
    enum Tagged {
        A { x: u32 },
    }

    #[derive(Facet)]
    #[repr(u8)]
    #[allow(dead_code)]
    enum Open {
        Known(u32),
        #[facet(other)]
        Unknown(String),
    }

    #[derive(Facet)]
    struct Holder {
        items: Vec<(u8, Loose)>,
    }

    // (Not decoded here: facet-postcard 0.46 panics on the first two; an
    // `other` variant fails to decode.)
    #[test]
    fn refuses_enums_postcard_cannot_decode() {
        let e = refusal(Holder::SHAPE);
        assert!(
            e.contains("Loose` (at `Holder.items[].1`) is an untagged enum"),
            "{e}"
        );
        assert!(refusal(Tagged::SHAPE).contains("Tagged` (at `Tagged`) is a tagged enum"));
        assert!(refusal(Open::SHAPE).contains("has a `#[facet(other)]` variant"));
    }

    #[derive(Facet)]
    #[repr(u8)]
    #[allow(dead_code)]
    enum Slot {
        Empty,
        Full { at: Duration },
    }

    #[test]
    fn refusal_paths_go_through_variants_and_containers() {
        let e = refusal(Slot::SHAPE);
        assert!(
            e.starts_with("`core::time::Duration` (at `Slot::Full.at`)"),
            "{e}"
        );
        let e = refusal(<BTreeMap<String, Vec<PathBuf>>>::SHAPE);
        assert!(
            e.contains("(at `BTreeMap<String, Vec<PathBuf>>{value}[]`)"),
            "{e}"
        );
        let e = refusal(<Option<Arc<[PathBuf]>>>::SHAPE);
        assert!(e.contains("(at `Option<Arc<[PathBuf]>>?[]`)"), "{e}");
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Lines {
        lines: Vec<Arc<[String]>>,
    }

    #[derive(Facet, Debug, PartialEq)]
    struct Shared {
        ids: Arc<[u32]>,
    }

    #[derive(Facet, Debug, PartialEq)]
    struct SharedTwice {
        one: Shared,
        many: Vec<Shared>,
    }

    #[derive(Facet, Debug, PartialEq)]
    #[repr(u8)]
    enum Holds {
        Ids(Box<[u32]>),
        Nothing,
    }

    /// facet-postcard 0.46.1 crashes (SIGSEGV, not a panic) decoding a slice
    /// behind a pointer inside a sequence, map or enum variant (observed in
    /// child processes: `Vec<Arc<[String]>>`, `Vec<Arc<[u32]>>`,
    /// `Vec<Box<[u32]>>`, `Vec<Arc<[u8]>>`, `BTreeMap<String, Arc<[u32]>>`,
    /// `HashMap<u32, Arc<[String]>>`, an enum variant holding `Arc<[u32]>`,
    /// also as struct fields), so those are refused at registration with
    /// what to use instead; a slice pointer elsewhere round-trips.
    #[test]
    fn refuses_slice_pointers_where_the_decoder_crashes() {
        for e in [
            refusal(Lines::SHAPE),
            refusal(<Vec<Arc<[u32]>>>::SHAPE),
            refusal(<Vec<Box<[u8]>>>::SHAPE),
            refusal(<BTreeMap<String, Arc<[u32]>>>::SHAPE),
            refusal(<HashMap<u32, Rc<[String]>>>::SHAPE),
            refusal(<[Arc<[u32]>; 2]>::SHAPE),
            refusal(<Result<Arc<[u32]>, String>>::SHAPE),
            refusal(Holds::SHAPE),
            refusal(<Arc<[Arc<[u32]>]>>::SHAPE),
        ] {
            assert!(e.contains("crashes decoding: use `Vec<T>`"), "{e}");
        }
        let e = refusal(Lines::SHAPE);
        assert!(
            e.starts_with("`alloc::sync::Arc<[String]>` (at `Lines.lines[]`)"),
            "{e}"
        );
        // A struct first met outside a sequence, then inside one (a
        // back-reference in the description) is checked there too.
        let e = refusal(SharedTwice::SHAPE);
        assert!(e.contains("(at `SharedTwice.many[]"), "{e}");
        // Elsewhere they round-trip.
        round_trip(Shared {
            ids: Arc::from(vec![1, 2]),
        });
        round_trip(Some(Arc::<[String]>::from(vec!["a".to_string()])));
        round_trip((Box::<[u32]>::from(vec![3]), 1u8));
    }

    #[test]
    fn refuses_pointers_postcard_cannot_handle() {
        let e = refusal(<&'static str>::SHAPE);
        assert!(e.contains("is a reference"), "{e}");
        let bytes = facet_postcard::to_vec(&"abc").expect("encode");
        assert!(facet_postcard::from_slice::<&'static str>(&bytes).is_err());

        let e = refusal(<std::sync::Weak<u32>>::SHAPE);
        assert!(e.contains("is a weak pointer"), "{e}");
        assert!(facet_postcard::to_vec(&std::sync::Weak::<u32>::new()).is_err());

        let e = refusal(<Cow<'static, [String]>>::SHAPE);
        assert!(e.contains("does not decode"), "{e}");
        let cow: Cow<'static, [String]> = Cow::Owned(vec!["a".into()]);
        let bytes = facet_postcard::to_vec(&cow).expect("encode");
        assert!(facet_postcard::from_slice::<Cow<'static, [String]>>(&bytes).is_err());
    }
}
