//! Code versions (S18b): which build of the program wrote a cache.
//!
//! By default a cache records a fingerprint of the running executable, and a
//! load by a different executable drops every memo (inputs and interned
//! values survive). A database built with
//! [`DatabaseBuilder::code_version`](crate::DatabaseBuilder::code_version)
//! records the declared version instead.

use std::io::{Read, Seek, SeekFrom};
use std::sync::OnceLock;

use super::format::checksum;

/// How much of the start and of the end of the executable is hashed.
const SAMPLE: u64 = 64 * 1024;

/// The code version recorded when none is declared: `exe:` and a hash of
/// the executable's size, modification time and first and last 64 KiB (not
/// its path: a moved binary is the same program). Computed once per process.
pub(crate) fn program_fingerprint() -> &'static str {
    static FINGERPRINT: OnceLock<String> = OnceLock::new();
    FINGERPRINT.get_or_init(|| match exe_hash() {
        Ok(h) => format!("exe:{h:016x}"),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot fingerprint the running executable: cached memos will not be reused \
                 (declare a code version with DatabaseBuilder::code_version)"
            );
            UNAVAILABLE.to_string()
        }
    })
}

/// Recorded when the executable cannot be read; never matches anything.
const UNAVAILABLE: &str = "exe:unavailable";

fn exe_hash() -> std::io::Result<u64> {
    let path = std::env::current_exe()?;
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let len = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let mut head = Vec::new();
    (&mut file).take(SAMPLE).read_to_end(&mut head)?;
    let mut tail = Vec::new();
    if len > SAMPLE {
        file.seek(SeekFrom::Start(len - SAMPLE))?;
        file.take(SAMPLE).read_to_end(&mut tail)?;
    }
    Ok(checksum(&[
        &len.to_le_bytes(),
        &mtime.to_le_bytes(),
        &head,
        &tail,
    ]))
}

/// The code version a database records: the declared one (`app:` + it) or
/// the program's fingerprint.
pub(crate) fn code_version(declared: Option<&str>) -> String {
    match declared {
        Some(v) => format!("app:{v}"),
        None => program_fingerprint().to_string(),
    }
}

/// Why the memos of a cache written by code `cached` cannot be served by
/// code `now`, if they cannot.
pub(crate) fn mismatch(cached: &str, now: &str) -> Option<String> {
    if cached == now && cached != UNAVAILABLE {
        return None;
    }
    let describe = |v: &str| {
        if let Some(app) = v.strip_prefix("app:") {
            format!("declared code version {app:?}")
        } else if v == UNAVAILABLE {
            "an executable that could not be fingerprinted".to_string()
        } else {
            format!("executable {}", v.trim_start_matches("exe:"))
        }
    };
    Some(format!(
        "the cache was written by {}, this is {}: every memo was dropped \
         (inputs and interned values were kept)",
        describe(cached),
        describe(now)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_stable_and_versions_compare() {
        assert_eq!(program_fingerprint(), program_fingerprint());
        assert!(program_fingerprint().starts_with("exe:"));
        assert!(mismatch("app:1", "app:1").is_none());
        assert!(mismatch("app:1", "app:2").is_some());
        assert!(mismatch(UNAVAILABLE, UNAVAILABLE).is_some());
        assert!(mismatch("exe:00", "app:00").is_some());
    }
}
