//! Every shape the persistent cache accepts round-trips (DESIGN.md S18c;
//! issue 10): property tests over generated values, nested two levels deep,
//! end to end — set as inputs and computed as memos, saved, loaded into a
//! fresh database, read back equal with nothing re-executed — plus keys.
//! The allow-list in `src/persist/schema.rs` accepts exactly the shapes
//! proven here (and in its unit tests); the rest is refused at `build()`.
//!
//! 64 cases per property, so the suite stays fast enough for CI.

// The point of these tests is the nesting of their types.
#![allow(clippy::type_complexity)]

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use facet::Facet;
use picante::*;
use proptest::collection::{btree_map, btree_set, hash_map, hash_set, vec};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

// ---------------------------------------------------------------------------
// The harness

/// A persistent input holding `T`s.
struct In<T>(PhantomData<fn() -> T>);
impl<T: Value + Debug> Input for In<T> {
    type Key = u32;
    type Value = T;
}

/// A persistent query whose memo is a `T` (its input's value).
struct Q<T>(PhantomData<fn() -> T>);
#[async_trait]
impl<T: Value + Debug + Facet<'static>> AsyncQuery for Q<T> {
    type Key = u32;
    type Value = T;
    async fn execute(&self, cx: &QueryCx, key: u32) -> QueryResult<T> {
        Ok(cx.input::<In<T>>(&key)?)
    }
}

/// A persistent input keyed by `K`s.
struct Keyed<K>(PhantomData<fn() -> K>);
impl<K: Key> Input for Keyed<K> {
    type Key = K;
    type Value = u32;
}

fn temp_path() -> (PathBuf, PathBuf) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "picante-shapes-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("cache.bin");
    (dir, path)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(60), f)
                .await
                .expect("timed out")
        })
}

/// Saves `values` as inputs and memos, loads them into a fresh database,
/// and checks they read back equal without re-executing anything.
fn values_round_trip<T: Value + Debug + Facet<'static>>(
    values: Vec<T>,
) -> std::result::Result<(), TestCaseError> {
    let build = || {
        Database::builder()
            .persistent_input::<In<T>>()
            .persistent_query(Q::<T>(PhantomData))
            .build()
    };
    let db = build().map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
    let (dir, path) = temp_path();
    let result = block_on(async {
        for (k, v) in values.iter().enumerate() {
            db.set::<In<T>>(k as u32, v.clone()).unwrap();
            db.query::<Q<T>>(k as u32).await.unwrap();
        }
        db.save_cache(&path).await.unwrap();
        let fresh = build().unwrap();
        let report = fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        prop_assert!(report.loaded);
        prop_assert_eq!(report.inputs, values.len());
        prop_assert_eq!(report.memos, values.len());
        for (k, v) in values.iter().enumerate() {
            prop_assert_eq!(&fresh.input::<In<T>>(&(k as u32)).unwrap(), v);
            prop_assert_eq!(&fresh.query::<Q<T>>(k as u32).await.unwrap(), v);
        }
        prop_assert_eq!(fresh.stats().total_executions(), 0);
        Ok(())
    });
    let _ = std::fs::remove_dir_all(dir);
    result
}

/// Saves inputs keyed by `keys`, loads them, and checks every key is found.
fn keys_round_trip<K: Key + Facet<'static>>(
    keys: Vec<K>,
) -> std::result::Result<(), TestCaseError> {
    let build = || Database::builder().persistent_input::<Keyed<K>>().build();
    let db = build().map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
    let (dir, path) = temp_path();
    let result = block_on(async {
        for (i, k) in keys.iter().enumerate() {
            db.set::<Keyed<K>>(k.clone(), i as u32).unwrap();
        }
        db.save_cache(&path).await.unwrap();
        let fresh = build().unwrap();
        fresh
            .load_cache(&path, LoadOptions::default())
            .await
            .unwrap();
        for k in &keys {
            prop_assert_eq!(
                fresh.input::<Keyed<K>>(k).unwrap(),
                db.input::<Keyed<K>>(k).unwrap()
            );
        }
        prop_assert_eq!(
            fresh.inputs::<Keyed<K>>().unwrap().len(),
            db.inputs::<Keyed<K>>().unwrap().len()
        );
        Ok(())
    });
    let _ = std::fs::remove_dir_all(dir);
    result
}

// ---------------------------------------------------------------------------
// Strategies and user types

fn text() -> impl Strategy<Value = String> {
    "[a-zé😀 ]{0,6}"
}

fn float64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN is not equal to itself", |x| !x.is_nan())
}

fn float32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN is not equal to itself", |x| !x.is_nan())
}

#[derive(Facet, Clone, PartialEq, Eq, Hash, Debug)]
struct Page {
    title: String,
    words: u32,
    tags: Vec<String>,
    links: Option<Vec<(String, u32)>>,
    meta: BTreeMap<String, String>,
}

fn page() -> impl Strategy<Value = Page> {
    (
        text(),
        any::<u32>(),
        vec(text(), 0..3),
        proptest::option::of(vec((text(), any::<u32>()), 0..3)),
        btree_map(text(), text(), 0..3),
    )
        .prop_map(|(title, words, tags, links, meta)| Page {
            title,
            words,
            tags,
            links,
            meta,
        })
}

#[derive(Facet, Clone, PartialEq, Eq, Hash, Debug)]
struct Pair(u32, String);

#[derive(Facet, Clone, PartialEq, Eq, Hash, Debug)]
struct Unit;

#[derive(Facet, Clone, PartialEq, Eq, Hash, Debug)]
#[facet(transparent)]
struct Name(String);

#[derive(Facet, Clone, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
enum Node {
    Leaf,
    Text(String),
    Pair(u32, Vec<String>),
    Rec { name: String, kids: Vec<u32> },
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        Just(Node::Leaf),
        text().prop_map(Node::Text),
        (any::<u32>(), vec(text(), 0..3)).prop_map(|(a, b)| Node::Pair(a, b)),
        (text(), vec(any::<u32>(), 0..3)).prop_map(|(name, kids)| Node::Rec { name, kids }),
    ]
}

/// Slices behind pointers, where they are allowed (not inside a sequence,
/// map, set, array, `Result` or enum variant).
#[derive(Facet, Clone, PartialEq, Debug)]
struct SlicePointers {
    lines: Arc<[String]>,
    ids: Option<Box<[u32]>>,
    bytes: (Arc<[u8]>, u8),
}

struct Label;
impl Interned for Label {
    type Value = String;
}

// ---------------------------------------------------------------------------
// The properties: one per family of shapes, each nested two levels deep.

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn s18c_shape_unsigned_and_signed_integers(
        v in vec(((any::<(u8, u16, u32)>(), any::<(u64, u128, usize)>()),
                  (any::<(i8, i16, i32)>(), any::<(i64, i128, isize)>())), 0..4)
    ) {
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_other_scalars(
        v in vec(((any::<bool>(), any::<char>(), float32()), (float64(), Just(()), text())), 0..4)
    ) {
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_strings_behind_pointers_and_boxes(
        v in vec((text(), text(), text(), any::<u32>(), text()), 0..4)
    ) {
        type Strings = ((Box<str>, Arc<str>, Cow<'static, str>), (Box<u32>, Arc<String>));
        let v: Vec<Strings> = v
            .into_iter()
            .map(|(a, b, c, d, e)| ((a.into(), b.into(), Cow::Owned(c)), (Box::new(d), Arc::new(e))))
            .collect();
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_sequences_of_scalars(
        v in vec(((vec(any::<u8>(), 0..8), vec(any::<i64>(), 0..4), vec(text(), 0..4)),
                  (vec(any::<bool>(), 0..4), vec(any::<char>(), 0..4), vec(float64(), 0..4))), 0..4)
    ) {
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_options_nested(
        v in vec((proptest::option::of(any::<u32>()),
                  proptest::option::of(proptest::option::of(text())),
                  proptest::option::of(vec(any::<u16>(), 0..4)),
                  vec(proptest::option::of(text()), 0..4)), 0..4)
    ) {
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_maps_and_sets(
        v in vec((hash_map(text(), any::<u32>(), 0..4),
                  hash_set(any::<u64>(), 0..4),
                  btree_map(any::<u32>(), text(), 0..4),
                  btree_set(text(), 0..4)), 0..4)
    ) {
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_maps_and_sets_nested(
        v in vec(((hash_map(text(), vec(text(), 0..3), 0..3),
                   btree_map(text(), proptest::option::of(any::<u32>()), 0..3)),
                  (vec(hash_map(any::<u8>(), text(), 0..3), 0..3),
                   vec(btree_set(any::<i32>(), 0..3), 0..3),
                   hash_map(any::<u32>(), hash_set(text(), 0..3), 0..3))), 0..3)
    ) {
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_arrays_and_results(
        v in vec(((any::<[u8; 4]>(), [text(), text()], vec(any::<[u16; 3]>(), 0..3)),
                  (proptest::result::maybe_ok(any::<u32>(), text()),
                   vec(proptest::result::maybe_ok(text(), any::<u8>()), 0..3),
                   proptest::option::of(proptest::result::maybe_err(any::<u8>(), text())))), 0..3)
    ) {
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_sized_pointers_nested(
        v in vec((vec(any::<u32>(), 0..3), vec(text(), 0..3), proptest::option::of(text()),
                  vec(any::<u32>(), 0..3), vec(text(), 0..3), hash_map(text(), text(), 0..3)), 0..3)
    ) {
        type Pointers = ((Vec<Box<u32>>, Vec<Arc<String>>, Option<Box<String>>),
                         (Arc<Vec<u32>>, Vec<Arc<str>>, HashMap<String, Arc<str>>));
        let v: Vec<Pointers> = v
            .into_iter()
            .map(|(a, b, c, d, e, f)| ((
                a.into_iter().map(Box::new).collect(),
                b.into_iter().map(Arc::new).collect(),
                c.map(Box::new),
            ), (
                Arc::new(d),
                e.into_iter().map(Into::into).collect(),
                f.into_iter().map(|(k, v)| (k, v.into())).collect(),
            )))
            .collect();
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_slice_pointers_where_allowed(
        v in vec((vec(text(), 0..4), proptest::option::of(vec(any::<u32>(), 0..4)),
                  vec(any::<u8>(), 0..4), any::<u8>()), 0..3)
    ) {
        let structs: Vec<SlicePointers> = v
            .iter()
            .map(|(l, i, b, n)| SlicePointers {
                lines: l.clone().into(),
                ids: i.clone().map(Into::into),
                bytes: (b.clone().into(), *n),
            })
            .collect();
        values_round_trip(structs)?;
        let top: Vec<(Arc<[String]>, Option<Arc<[u32]>>)> = v
            .into_iter()
            .map(|(l, i, _, _)| (l.into(), i.map(Into::into)))
            .collect();
        values_round_trip(top)?;
    }

    #[test]
    fn s18c_shape_structs_nested(
        v in vec((page(), vec(page(), 0..2), any::<u32>(), text()), 0..3)
    ) {
        let v: Vec<((Page, Vec<Page>), (Pair, Unit, Name))> = v
            .into_iter()
            .map(|(p, ps, n, s)| ((p, ps), (Pair(n, s.clone()), Unit, Name(s))))
            .collect();
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_enums_nested(
        v in vec((node(), vec(node(), 0..3), proptest::option::of(node()),
                  hash_map(text(), node(), 0..3)), 0..3)
    ) {
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_interned_ids(
        v in vec((any::<u32>(), vec(any::<u32>(), 0..4), proptest::option::of(any::<u32>())), 0..4)
    ) {
        let v: Vec<(Id<Label>, Vec<Id<Label>>, Option<Id<Label>>)> = v
            .into_iter()
            .map(|(a, b, c)| (Id::from_raw(a), b.into_iter().map(Id::from_raw).collect(), c.map(Id::from_raw)))
            .collect();
        values_round_trip(v)?;
    }

    #[test]
    fn s18c_shape_keys(
        k in vec(((text(), any::<u32>()), (vec(any::<u8>(), 0..3), proptest::option::of(any::<char>()),
                  any::<bool>())), 0..6),
        pages in vec(page(), 0..3),
        nodes in vec(node(), 0..3),
    ) {
        keys_round_trip(k)?;
        keys_round_trip(pages)?;
        keys_round_trip(nodes)?;
    }
}

// ---------------------------------------------------------------------------
// What facet-postcard 0.46 cannot decode is refused at build()

#[derive(Facet, Clone, PartialEq, Debug)]
struct Document {
    title: String,
    /// The case from issue 10: accepted, saved and loaded, then a SIGSEGV on
    /// the first read. Now refused at registration.
    paragraphs: Vec<Arc<[String]>>,
}

#[test]
fn s18c_vec_of_slice_pointers_in_a_struct_field_is_refused_with_what_to_use() {
    let e = Database::builder()
        .persistent_input::<In<Document>>()
        .build()
        .unwrap_err();
    let message = e.to_string();
    assert!(matches!(e.kind(), ErrorKind::Registration(_)), "{e:?}");
    assert!(message.contains("Document.paragraphs[]"), "{message}");
    assert!(message.contains("use `Vec<T>`"), "{message}");
    for refused in [
        Database::builder()
            .persistent_input::<In<Vec<Arc<[u32]>>>>()
            .build(),
        Database::builder()
            .persistent_input::<In<BTreeMap<String, Box<[u8]>>>>()
            .build(),
    ] {
        let e = refused.unwrap_err();
        assert!(e.to_string().contains("crashes decoding"), "{e}");
    }
    // What it says to use instead round-trips.
    #[derive(Facet, Clone, PartialEq, Debug)]
    struct Fixed {
        paragraphs: Vec<Vec<String>>,
        shared: Vec<Arc<Vec<String>>>,
    }
    values_round_trip(vec![Fixed {
        paragraphs: vec![vec!["a".into()], vec![]],
        shared: vec![Arc::new(vec!["b".into()])],
    }])
    .unwrap();
}

#[test]
fn s18c_unverified_shapes_are_refused() {
    // A Display/FromStr scalar picante has not verified.
    let e = Database::builder()
        .persistent_input::<In<std::ops::Range<u32>>>()
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("Range"), "{e}");
}
