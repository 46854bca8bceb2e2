mod common;
use common::Count;
use picante::*;

struct A;
impl Input for A {
    type Key = u32;
    type Value = i64;
}

struct D {
    runs: Count,
}
#[async_trait]
impl AsyncQuery for D {
    type Key = u32;
    type Value = i64;
    async fn execute(&self, cx: &QueryCx, k: u32) -> Result<i64> {
        self.runs.hit();
        Ok(cx.input::<A>(&k)? * 10)
    }
}

#[tokio::test]
async fn smoke() -> Result<()> {
    let runs = Count::new();
    let db = Database::builder()
        .input::<A>()
        .query(D { runs: runs.clone() })
        .build()?;
    db.set::<A>(1, 5)?;
    assert_eq!(db.query::<D>(1).await?, 50);
    assert_eq!(db.query::<D>(1).await?, 50);
    assert_eq!(runs.get(), 1);
    db.set::<A>(2, 5)?;
    assert_eq!(db.query::<D>(1).await?, 50);
    assert_eq!(runs.get(), 1);
    db.set::<A>(1, 6)?;
    assert_eq!(db.query::<D>(1).await?, 60);
    assert_eq!(runs.get(), 2);
    Ok(())
}
