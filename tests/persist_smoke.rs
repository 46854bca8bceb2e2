mod common;
use common::Count;
use picante::*;

struct Src;
impl Input for Src {
    type Key = String;
    type Value = String;
}
struct Label;
impl Interned for Label {
    type Value = String;
}
struct Len {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Len {
    type Key = String;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, k: String) -> Result<u64> {
        self.runs.hit();
        Ok(cx.input::<Src>(&k)?.len() as u64)
    }
}
struct Total {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for Total {
    type Key = u32;
    type Value = u64;
    async fn execute(&self, cx: &QueryCx, n: u32) -> Result<u64> {
        self.runs.hit();
        let mut t = 0;
        for i in 0..n {
            t += cx.query::<Len>(format!("f{i}")).await?;
        }
        Ok(t)
    }
}

fn db(a: &Count, b: &Count) -> Database {
    Database::builder()
        .persistent_input::<Src>()
        .persistent_interned::<Label>()
        .persistent_query(Len { runs: a.clone() })
        .persistent_query(Total { runs: b.clone() })
        .build()
        .unwrap()
}

#[tokio::test]
async fn round_trip_and_log() {
    let dir = std::env::temp_dir().join(format!("picante-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.bin");
    let (a, b) = (Count::new(), Count::new());
    let d1 = db(&a, &b);
    for i in 0..10 {
        d1.set::<Src>(format!("f{i}"), "x".repeat(i)).unwrap();
    }
    let l = d1.intern::<Label>("hello".into()).unwrap();
    assert_eq!(d1.query::<Total>(10).await.unwrap(), 45);
    let r = d1.save_cache(&path).unwrap();
    eprintln!("{r:?}");
    d1.set::<Src>("f3".into(), "yyyyyyy".into()).unwrap();
    let l2 = d1.intern::<Label>("world".into()).unwrap();
    assert_eq!(d1.query::<Total>(10).await.unwrap(), 49);
    let ar = d1.append_cache(&path).unwrap();
    eprintln!("{ar:?}");

    let (a2, b2) = (Count::new(), Count::new());
    let d2 = db(&a2, &b2);
    let rep = d2.load_cache(&path, LoadOptions::default()).unwrap();
    eprintln!("{rep:?}");
    assert_eq!(d2.query::<Total>(10).await.unwrap(), 49);
    assert_eq!((a2.get(), b2.get()), (0, 0));
    assert_eq!(d2.lookup::<Label>(l).unwrap(), "hello");
    assert_eq!(d2.lookup::<Label>(l2).unwrap(), "world");
    d2.set::<Src>("f4".into(), "z".into()).unwrap();
    assert_eq!(d2.query::<Total>(10).await.unwrap(), 46);
    assert_eq!((a2.get(), b2.get()), (1, 1));
    std::fs::remove_dir_all(&dir).ok();
}
