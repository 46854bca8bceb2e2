//! Attacks on the input tables' by-id index (`InputTable::by_id`,
//! `engine/dense.rs`): a walk takes an input edge's `changed_at` from the
//! table's dense side array by key slot and generation instead of through
//! the key. The side array must agree with the slots after every set,
//! remove, batch, collection (tombstones swept, ids retired, slots reused
//! under a new generation), in every snapshot and fork, and after a load.
//! Every step checks values against a model and, where they are
//! deterministic, execution counts: a stale entry reading "unchanged" shows
//! as a missing execution (a wrong value), one reading "changed" as an extra
//! execution.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Count, TempDir};
use picante::*;

use common::churn::{File, Len};

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    common::within("the attack", Duration::from_secs(120), fut).await
}

/// Sum of `Len(j)` for j in 0..k.
struct Sum(Count);
#[async_trait]
impl AsyncQuery for Sum {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.0.hit();
        let mut s = 0;
        for j in 0..k {
            s += cx.query::<Len>(j).await?;
        }
        Ok(s)
    }
}

/// Keys 0..KEYS: more than one 32-wide leaf of the side array.
const KEYS: u32 = 48;

type Model = BTreeMap<u32, u32>;

fn len_of(model: &Model, k: u32) -> u32 {
    model.get(&k).map_or(0, |v| v + 1)
}

fn sum_of(model: &Model) -> u32 {
    (0..KEYS).map(|k| len_of(model, k)).sum()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn build(len: &Count, sum: &Count) -> Database {
    Database::builder()
        .persistent_input::<File>()
        .persistent_query(Len(len.clone()))
        .persistent_query(Sum(sum.clone()))
        .build()
        .expect("build")
}

/// Reads every `Len` and the `Sum` from `view`, checking values.
async fn read_all(view: &View, model: &Model, what: &str) {
    for k in 0..KEYS {
        assert_eq!(
            view.query::<Len>(k).await.unwrap(),
            len_of(model, k),
            "{what}: Len({k})"
        );
    }
    assert_eq!(
        view.query::<Sum>(KEYS).await.unwrap(),
        sum_of(model),
        "{what}: Sum"
    );
}

/// Applies a random write (or batch of writes) to `view` and `model`;
/// returns the keys whose slot changed (final value different: later
/// writes in a batch win).
fn write(rng: &mut Rng, view: &View, model: &mut Model) -> BTreeSet<u32> {
    let before = model.clone();
    let n = 1 + rng.below(3);
    let mut batch = view.batch();
    for _ in 0..n {
        let k = rng.below(u64::from(KEYS)) as u32;
        if rng.below(3) == 0 {
            batch.remove::<File>(&k);
            model.remove(&k);
        } else {
            let v = rng.below(4) as u32;
            batch.set::<File>(k, v);
            model.insert(k, v);
        }
    }
    batch.commit().unwrap();
    (0..KEYS)
        .filter(|k| before.get(k) != model.get(k))
        .collect()
}

async fn attack(seed: u64) {
    let (len, sum) = (Count::new(), Count::new());
    let db = build(&len, &sum);
    let mut rng = Rng(seed);
    let mut model = Model::new();
    read_all(&db, &model, "start").await;
    // What `Len` returned at the last full read (for Sum's cutoff).
    let mut last_read = model.clone();
    let mut touched: BTreeSet<u32> = BTreeSet::new();
    let mut exact = false;
    let mut checked = 0;
    let mut snapshots: Vec<(Snapshot, Model)> = Vec::new();
    let dir = TempDir::new("attack_input_by_id");
    for step in 0..400u32 {
        let what = format!("seed {seed:#x}, step {step}");
        match rng.below(16) {
            0..=5 => touched.extend(write(&mut rng, &db, &mut model)),
            6..=8 => {
                // Read everything: exact counts unless a collection ran
                // since the last full read.
                len.take();
                sum.take();
                read_all(&db, &model, &what).await;
                let changed = (0..KEYS).any(|k| len_of(&model, k) != len_of(&last_read, k));
                if exact {
                    checked += 1;
                    assert_eq!(len.take(), touched.len(), "{what}: Len executions");
                    assert_eq!(sum.take(), usize::from(changed), "{what}: Sum executions");
                }
                touched.clear();
                last_read = model.clone();
                exact = true;
            }
            9 => {
                // Tombstones swept, ids retired, released ones reused.
                db.set::<File>(10_000 + step, step).unwrap();
                db.collect(Collect::unused_for(0));
                exact = false;
            }
            10 => {
                if snapshots.len() < 4 {
                    snapshots.push((db.snapshot(), model.clone()));
                } else {
                    let i = rng.below(snapshots.len() as u64) as usize;
                    snapshots.swap_remove(i);
                }
            }
            11 if !snapshots.is_empty() => {
                // Fork a snapshot: its own writes, its own side array.
                let i = rng.below(snapshots.len() as u64) as usize;
                let (snap, m) = &mut snapshots[i];
                let forked = snap.is_forked();
                write(&mut rng, snap, m);
                read_all(snap, m, &format!("{what}, forked snapshot {i}")).await;
                if !forked {
                    exact = false;
                }
            }
            12 if !snapshots.is_empty() => {
                let i = rng.below(snapshots.len() as u64) as usize;
                let (snap, m) = &snapshots[i];
                read_all(snap, m, &format!("{what}, snapshot {i}")).await;
                // An unforked snapshot offers its memos to the database:
                // an execution there can spare one here.
                if !snap.is_forked() {
                    exact = false;
                }
            }
            13 if step % 3 == 0 => {
                // A loaded table's side array: after the load, one write
                // re-executes exactly its reader.
                let path = dir.join(&format!("c{step}.picante"));
                db.save_cache(&path).await.unwrap();
                let (l2, s2) = (Count::new(), Count::new());
                let other = build(&l2, &s2);
                other
                    .load_cache(&path, LoadOptions::default())
                    .await
                    .unwrap();
                let mut m2 = model.clone();
                read_all(&other, &m2, &format!("{what}, loaded")).await;
                let k = rng.below(u64::from(KEYS)) as u32;
                let v = 100 + step;
                other.set::<File>(k, v).unwrap();
                m2.insert(k, v);
                l2.take();
                s2.take();
                read_all(&other, &m2, &format!("{what}, loaded and set")).await;
                assert_eq!(
                    l2.take(),
                    1,
                    "{what}: Len executions after a load and a set"
                );
                assert_eq!(
                    s2.take(),
                    1,
                    "{what}: Sum executions after a load and a set"
                );
            }
            _ => touched.extend(write(&mut rng, &db, &mut model)),
        }
    }
    assert!(checked >= 20, "seed {seed:#x}: only {checked} exact reads");
    read_all(&db, &model, "end").await;
    for (i, (snap, m)) in snapshots.iter().enumerate() {
        read_all(snap, m, &format!("end, snapshot {i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_by_id_index_agrees_with_the_slots_across_writes_snapshots_collections_and_loads() {
    within(async {
        for seed in [
            0x9e37_79b9_7f4a_7c15u64,
            0x2545_f491_4f6c_dd1d,
            7,
            0xdead_beef,
        ] {
            attack(seed).await;
        }
    })
    .await;
}

/// A key removed, its tombstone collected and its id retired, then set
/// again (a new id) while a snapshot still holds the old slot; then every
/// old snapshot dropped and the slot reused by another key under the next
/// generation: an edge naming the old generation reads as changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_slot_under_a_new_generation_is_not_the_old_key() {
    within(async {
        let (len, sum) = (Count::new(), Count::new());
        let db = build(&len, &sum);
        db.set::<File>(1, 10).unwrap();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 11);
        let old = db.snapshot();
        db.remove::<File>(&1).unwrap();
        db.set::<File>(999, 0).unwrap();
        db.collect(Collect::unused_for(0));
        // Re-set under a new id while `old` holds the old one.
        db.set::<File>(1, 20).unwrap();
        len.take();
        assert_eq!(db.query::<Len>(1).await.unwrap(), 21);
        assert_eq!(old.query::<Len>(1).await.unwrap(), 11);
        assert_eq!(len.take(), 1, "the database re-executes; the snapshot hits");
        drop(old);
        // Release, then new keys take the freed slots.
        db.remove::<File>(&1).unwrap();
        db.set::<File>(998, 0).unwrap();
        db.collect(Collect::unused_for(0));
        db.set::<File>(997, 0).unwrap();
        db.collect(Collect::unused_for(0));
        for k in 50..60 {
            db.set::<File>(k, k).unwrap();
        }
        len.take();
        for k in 50..60 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
        }
        assert_eq!(db.query::<Len>(1).await.unwrap(), 0);
        assert_eq!(len.take(), 11, "every key executes once, none inherits");
        // Unrelated writes: nothing re-executes.
        db.set::<File>(2_000, 1).unwrap();
        for k in 50..60 {
            assert_eq!(db.query::<Len>(k).await.unwrap(), k + 1);
        }
        assert_eq!(db.query::<Len>(1).await.unwrap(), 0);
        assert_eq!(len.take(), 0, "verified through the side array");
    })
    .await;
}
