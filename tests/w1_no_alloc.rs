//! W1 / S19 guard: a warm hit (a memo already verified at the current
//! revision) allocates nothing, and a database costs little before it holds
//! anything. Counted with a global allocator wrapper, so this file holds a
//! single test (the count is process-wide).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use picante::*;

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Base;
impl Input for Base {
    type Key = u32;
    type Value = u64;
}

struct Double;
#[async_trait]
impl AsyncQuery for Double {
    type Key = u32;
    type Value = std::sync::Arc<u64>;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<std::sync::Arc<u64>> {
        Ok(std::sync::Arc::new(cx.input::<Base>(&k)? * 2))
    }
}

#[test]
fn w1_warm_hit_does_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        // An empty database nobody observes: no event ring (it used to
        // allocate a 4 096-slot broadcast buffer, ~230 KB, per database).
        COUNTING.store(true, Ordering::SeqCst);
        let db = Database::builder()
            .input::<Base>()
            .query(Double)
            .build()
            .unwrap();
        COUNTING.store(false, Ordering::SeqCst);
        let built = BYTES.swap(0, Ordering::SeqCst);
        assert!(
            built < 32 * 1024,
            "an empty database allocated {built} bytes"
        );
        ALLOCS.store(0, Ordering::SeqCst);
        let mut batch = db.batch();
        for k in 0..1000 {
            batch.set::<Base>(k, k as u64);
        }
        batch.commit().unwrap();
        for k in 0..1000 {
            assert_eq!(*db.query::<Double>(k).await.unwrap(), 2 * k as u64);
        }
        // Memos computed by many small requests may sit in the view's pending
        // buffer until a read of one of them folds the buffer into the state
        // (one merge). So read every memo once; from then on every read is a
        // warm hit.
        for k in 0..1000 {
            assert_eq!(*db.query::<Double>(k).await.unwrap(), 2 * k as u64);
        }
        let before = db.stats().query("Double").unwrap().clone();

        COUNTING.store(true, Ordering::SeqCst);
        let mut sum = 0;
        for round in 0..10 {
            for k in 0..1000 {
                sum += *db.query::<Double>((k + round) % 1000).await.unwrap();
            }
        }
        COUNTING.store(false, Ordering::SeqCst);

        assert_eq!(sum, 10 * 2 * (0..1000u64).sum::<u64>());
        assert_eq!(ALLOCS.load(Ordering::SeqCst), 0, "warm hits allocated");
        let after = db.stats().query("Double").unwrap().clone();
        assert_eq!(after.executions, before.executions, "warm hits executed");
        assert_eq!(after.hits - before.hits, 10_000);
    });
}
