//! The churn fixture of the memory and key-reclamation tests: an input
//! `File` and a counting query `Len` that reads it (absent reads as 0).

use picante::{AsyncQuery, Input, QueryCx, QueryResult, async_trait};

use super::Count;

pub struct File;
impl Input for File {
    type Key = u32;
    type Value = u32;
}

/// `File(k) + 1`, or 0 if absent.
pub struct Len(pub Count);
#[async_trait]
impl AsyncQuery for Len {
    type Key = u32;
    type Value = u32;
    async fn execute(&self, cx: &QueryCx, k: u32) -> QueryResult<u32> {
        self.0.hit();
        Ok(cx.input_opt::<File>(&k)?.map_or(0, |v| v + 1))
    }
}
