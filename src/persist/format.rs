//! The on-disk framing of a persisted cache: header, checksummed records,
//! varint payload encoding, and crash-safe file writes. Everything here reads
//! untrusted bytes: every length is checked, nothing panics.
//!
//! ```text
//! file    := header record*
//! header  := "PICANTE\0" version:u32 kind:u8 0 0 0 base_id:u64 check:u64     (32 bytes)
//! record  := tag:u8 len:u32 payload[len] check:u64   (check over tag, len, payload)
//! ```
//! A base file ends with an `END` record holding the number of records before
//! it, so truncation is detected. A log file (kind 1) names the `base_id` of
//! the base it extends and has no end: a torn last record is ignored.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{CacheStep, Progress};
use crate::error::{Error, Result};

pub(crate) const MAGIC: [u8; 8] = *b"PICANTE\0";
/// 2: the code version in `META` and each kind's version in `SECTION` (S18b).
pub(crate) const VERSION: u32 = 2;
pub(crate) const HEADER_LEN: usize = 32;
const RECORD_OVERHEAD: usize = 1 + 4 + 8;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FileKind {
    Base = 0,
    Log = 1,
}

/// A fast 64-bit checksum over bytes. Each 8-byte word passes through a
/// bijective mix, so any change confined to one word always changes the
/// result; other corruptions collide with probability about 2^-64.
pub(crate) fn checksum(parts: &[&[u8]]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    let mut total = 0u64;
    for part in parts {
        total = total.wrapping_add(part.len() as u64);
        let mut chunks = part.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = (h ^ u64::from_le_bytes(w) ^ 0xFF)
                .wrapping_mul(K)
                .rotate_left(29);
        }
    }
    h ^= total;
    h = (h ^ (h >> 31)).wrapping_mul(K);
    h ^ (h >> 29)
}

pub(crate) fn header(kind: FileKind, base_id: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12] = kind as u8;
    out[16..24].copy_from_slice(&base_id.to_le_bytes());
    let check = checksum(&[&out[..24]]);
    out[24..32].copy_from_slice(&check.to_le_bytes());
    out
}

/// Validates a header; returns the file kind and base id.
pub(crate) fn read_header(bytes: &[u8]) -> Result<(FileKind, u64)> {
    let h = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| Error::persist("file too short to hold a header (not a picante cache)"))?;
    if h[..8] != MAGIC {
        return Err(Error::persist("not a picante cache file (bad magic)"));
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != VERSION {
        return Err(Error::persist(format!(
            "cache format version {version} is not supported (expected {VERSION})"
        )));
    }
    let mut check = [0u8; 8];
    check.copy_from_slice(&h[24..32]);
    if checksum(&[&h[..24]]) != u64::from_le_bytes(check) {
        return Err(Error::persist(
            "cache header checksum mismatch (corrupt file)",
        ));
    }
    let kind = match h[12] {
        0 => FileKind::Base,
        1 => FileKind::Log,
        k => return Err(Error::persist(format!("unknown cache file kind {k}"))),
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[16..24]);
    Ok((kind, u64::from_le_bytes(id)))
}

/// Appends one framed record to `out`.
pub(crate) fn push_record(out: &mut Vec<u8>, tag: u8, payload: &[u8]) -> Result<()> {
    let len =
        u32::try_from(payload.len()).map_err(|_| Error::persist("record larger than 4 GiB"))?;
    let len_bytes = len.to_le_bytes();
    out.push(tag);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(payload);
    out.extend_from_slice(&checksum(&[&[tag], &len_bytes, payload]).to_le_bytes());
    Ok(())
}

/// One record read back.
pub(crate) struct Record<'a> {
    pub tag: u8,
    pub payload: &'a [u8],
    /// Offset of the payload in the whole file (for lazy value ranges).
    pub offset: usize,
}

/// What went wrong reading a record.
pub(crate) enum RecordError {
    /// The record runs past the end of the file, or its checksum fails and
    /// nothing follows it: a write that did not finish.
    Torn,
    /// A damaged record with data after it.
    Corrupt(String),
}

/// Reads the records after the header.
pub(crate) struct Records<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Records<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Records {
            bytes,
            pos: HEADER_LEN,
        }
    }

    /// Reads the records of `bytes` from `pos` on.
    pub(crate) fn at(bytes: &'a [u8], pos: usize) -> Self {
        Records { bytes, pos }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn next_record(&mut self) -> Option<std::result::Result<Record<'a>, RecordError>> {
        let rest = self.bytes.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        if rest.len() < RECORD_OVERHEAD {
            self.pos = self.bytes.len();
            return Some(Err(RecordError::Torn));
        }
        let tag = rest[0];
        let len_bytes = [rest[1], rest[2], rest[3], rest[4]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let Some(end) = len
            .checked_add(RECORD_OVERHEAD)
            .filter(|&e| e <= rest.len())
        else {
            self.pos = self.bytes.len();
            return Some(Err(RecordError::Torn));
        };
        let payload = &rest[5..5 + len];
        let mut check = [0u8; 8];
        check.copy_from_slice(&rest[5 + len..end]);
        let offset = self.pos + 5;
        self.pos += end;
        if checksum(&[&[tag], &len_bytes, payload]) != u64::from_le_bytes(check) {
            return Some(Err(if self.pos == self.bytes.len() {
                RecordError::Torn
            } else {
                RecordError::Corrupt(format!("record at byte {} has a bad checksum", offset - 5))
            }));
        }
        Some(Ok(Record {
            tag,
            payload,
            offset,
        }))
    }
}

/// Builds a payload.
#[derive(Default)]
pub(crate) struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// LEB128.
    pub(crate) fn var(&mut self, mut v: u64) -> &mut Self {
        loop {
            let byte = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return self;
            }
            self.buf.push(byte | 0x80);
        }
    }

    /// Length-prefixed bytes.
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.var(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
}

/// Reads a payload; every read is bounds-checked.
pub(crate) struct Dec<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of `bytes` in the file, for `bytes_at`.
    base: usize,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(record: &Record<'a>) -> Self {
        Dec {
            bytes: record.payload,
            pos: 0,
            base: record.offset,
        }
    }

    /// Reads `bytes` (a whole file) from offset `pos` on.
    pub(crate) fn at(bytes: &'a [u8], pos: usize) -> Self {
        Dec {
            bytes,
            pos,
            base: 0,
        }
    }

    /// The offset of the next byte in the file (for [`Dec::at`]).
    pub(crate) fn position(&self) -> usize {
        self.base + self.pos
    }

    fn truncated() -> Error {
        Error::persist("record payload is truncated (corrupt file)")
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8> {
        let v = *self.bytes.get(self.pos).ok_or_else(Self::truncated)?;
        self.pos += 1;
        Ok(v)
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let b = self
            .bytes
            .get(self.pos..self.pos + 8)
            .ok_or_else(Self::truncated)?;
        self.pos += 8;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }

    #[inline]
    pub(crate) fn var(&mut self) -> Result<u64> {
        // Most varints in a cache (key indexes, small revisions, lengths)
        // are one byte.
        if let Some(&b) = self.bytes.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.var_slow()
    }

    fn var_slow(&mut self) -> Result<u64> {
        // Two and three bytes (key indexes of large kinds, revisions past
        // 127) without the loop.
        if let Some(&[b0, b1, b2]) = self.bytes.get(self.pos..self.pos + 3) {
            let low = u64::from(b0 & 0x7F) | (u64::from(b1 & 0x7F) << 7);
            if b0 >= 0x80 && b1 < 0x80 {
                self.pos += 2;
                return Ok(low);
            }
            if b0 >= 0x80 && b2 < 0x80 {
                self.pos += 3;
                return Ok(low | (u64::from(b2) << 14));
            }
        }
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7F);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::persist("malformed varint (corrupt file)"))
    }

    /// A varint that must fit in `usize` and be at most `limit`.
    #[inline]
    pub(crate) fn len(&mut self, limit: usize) -> Result<usize> {
        let v = self.var()?;
        usize::try_from(v)
            .ok()
            .filter(|&n| n <= limit)
            .ok_or_else(|| Error::persist(format!("length {v} out of range (corrupt file)")))
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32> {
        let v = self.var()?;
        u32::try_from(v)
            .map_err(|_| Error::persist(format!("value {v} out of range (corrupt file)")))
    }

    /// Length-prefixed bytes, with their offset in the file.
    pub(crate) fn bytes_at(&mut self) -> Result<(&'a [u8], usize)> {
        let n = self.len(self.bytes.len())?;
        let b = self
            .bytes
            .get(self.pos..self.pos + n)
            .ok_or_else(Self::truncated)?;
        let offset = self.base + self.pos;
        self.pos += n;
        Ok((b, offset))
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        Ok(self.bytes_at()?.0)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| Error::persist("invalid UTF-8 name (corrupt file)"))
    }
}

/// The log that extends the base file at `path`.
pub(crate) fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// Writes `bytes` to `path` crash-safely: a temporary file in the same
/// directory, fsync, rename over `path`, fsync the directory. A crash at any
/// point leaves the old file or the new one, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], progress: &mut Progress) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::persist(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp-{}-{:x}",
        std::process::id(),
        checksum(&[bytes]) ^ nanos()
    ));
    let tmp = dir.join(tmp_name);
    let io =
        |what: &str, e: std::io::Error| Error::persist(format!("{what} {}: {e}", path.display()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| io("creating a temporary file for", e))?;
        write_reporting(&mut f, bytes, progress).map_err(|e| io("writing", e))?;
        progress.at(CacheStep::Syncing, 0, 0);
        f.sync_all().map_err(|e| io("syncing", e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| io("renaming the temporary file over", e))?;
        sync_dir(&dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes temporary files that saves of the cache at `path` (its base or
/// its log) left behind when they crashed. Call only while holding the
/// cache's exclusive lock: then no save of this cache is writing one.
/// Returns how many were removed; failures are logged, never fatal.
pub(crate) fn remove_stale_temps(path: &Path) -> usize {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return 0;
    };
    let prefixes = [format!(".{name}.tmp-"), format!(".{name}.log.tmp-")];
    let Ok(entries) = fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::debug!(file = n, error = %e, "could not remove a stale temporary file")
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(cache = %path.display(), removed, "removed temporary files left by interrupted saves");
    }
    removed
}

/// Appends `bytes` to the file at `path` and syncs it.
pub(crate) fn append(path: &Path, bytes: &[u8], progress: &mut Progress) -> Result<()> {
    let io =
        |what: &str, e: std::io::Error| Error::persist(format!("{what} {}: {e}", path.display()));
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| io("opening", e))?;
    write_reporting(&mut f, bytes, progress).map_err(|e| io("appending to", e))?;
    progress.at(CacheStep::Syncing, 0, 0);
    f.sync_data().map_err(|e| io("syncing", e))
}

/// Writes `bytes` in 1 MiB pieces, reporting each.
fn write_reporting(f: &mut File, bytes: &[u8], progress: &mut Progress) -> std::io::Result<()> {
    let total = bytes.len() as u64;
    let mut written = 0u64;
    progress.at(CacheStep::Writing, 0, total);
    for chunk in bytes.chunks(1 << 20) {
        f.write_all(chunk)?;
        written += chunk.len() as u64;
        progress.at(CacheStep::Writing, written, total);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable on POSIX file systems; not possible everywhere.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A random id for a new base file (pairs it with its log): the time, the
/// process, a per-process counter and std's per-process random hasher keys,
/// so two databases saving in the same instant still differ.
pub(crate) fn new_base_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u64(nanos());
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// The lock file beside the cache at `path` (`path` + `.lock`). It is never
/// removed (removing a lock file races with the next holder).
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// An advisory lock on one cache (S18c), released when dropped.
pub(crate) struct CacheLock {
    _file: Option<File>,
}

/// How a cache is locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockMode {
    /// For a save or an append: one writer, no readers.
    Exclusive,
    /// For a load: any number of readers.
    Shared,
}

/// Takes the lock of the cache at `path`: exclusive for a save or an
/// append, shared for a load. Held by another process or by another
/// database of this one: waits up to `wait`, then [`Error::cache_locked`].
///
/// A load from a directory that does not exist (there is no cache) or in
/// which the lock file cannot be created (a read-only cache) goes ahead
/// unlocked: nobody can be writing there through picante.
pub(crate) fn lock_cache(
    path: &Path,
    mode: LockMode,
    wait: std::time::Duration,
) -> Result<CacheLock> {
    let exclusive = mode == LockMode::Exclusive;
    let lock = lock_path(path);
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
    {
        Ok(f) => f,
        Err(e)
            if !exclusive
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
        {
            tracing::debug!(lock = %lock.display(), error = %e, "loading without a cache lock");
            return Ok(CacheLock { _file: None });
        }
        Err(e) => {
            return Err(Error::persist(format!(
                "opening the lock file {}: {e}",
                lock.display()
            )));
        }
    };
    // Polls rather than blocking in `File::lock`, so that a holder that
    // never lets go (or a lock inherited for a moment by a child process
    // between fork and exec) costs at most `wait`, then a clear error.
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let taken = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match taken {
            Ok(()) => return Ok(CacheLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => {
                let waited = started.elapsed();
                if waited >= wait {
                    return Err(Error::cache_locked(path));
                }
                std::thread::sleep(pause.min(wait - waited));
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::persist(format!("locking {}: {e}", lock.display())));
            }
        }
    }
}

/// Reads up to `len` bytes at `offset` of the file at `path` (fewer if the
/// file ends first); `None` if the file does not exist.
pub(crate) fn read_at(path: &Path, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| Error::persist(format!("reading {}: {e}", path.display()));
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut out = Vec::new();
    f.take(len as u64).read_to_end(&mut out).map_err(io)?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_garbage() {
        let mut e = Enc::default();
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            e.var(v);
        }
        let mut framed = header(FileKind::Base, 7).to_vec();
        push_record(&mut framed, 3, &e.buf).unwrap();
        let mut records = Records::new(&framed);
        let Some(Ok(rec)) = records.next_record() else {
            panic!("record")
        };
        let mut d = Dec::new(&rec);
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            assert_eq!(d.var().unwrap(), v);
        }
        assert!(d.var().is_err());
        let overlong = [0xFFu8; 11];
        let rec = Record {
            tag: 0,
            payload: &overlong,
            offset: 0,
        };
        assert!(Dec::new(&rec).var().is_err());
    }

    #[test]
    fn short_varints_decode_like_the_loop_at_every_length_and_end() {
        // Two- and three-byte varints take a fast path: values at each
        // boundary, and each one ending the payload (fewer than three
        // bytes left), decode as the general loop does.
        let values = [
            128u64,
            129,
            300,
            16_383,
            16_384,
            16_385,
            1 << 20,
            2_097_151,
            2_097_152,
        ];
        for v in values {
            let mut e = Enc::default();
            e.var(v).u8(0xAB);
            for cut in [e.buf.len(), e.buf.len() - 1] {
                let payload = &e.buf[..cut];
                let rec = Record {
                    tag: 0,
                    payload,
                    offset: 0,
                };
                let mut d = Dec::new(&rec);
                assert_eq!(d.var().unwrap(), v, "{v} in {payload:?}");
                assert_eq!(d.is_empty(), cut < e.buf.len());
            }
        }
        // Non-canonical two- and three-byte forms, as the loop reads them.
        for (bytes, v) in [(&[0x80u8, 0x00][..], 0u64), (&[0x81, 0x80, 0x00], 1)] {
            let rec = Record {
                tag: 0,
                payload: bytes,
                offset: 0,
            };
            assert_eq!(Dec::new(&rec).var().unwrap(), v);
        }
    }

    #[test]
    fn checksum_detects_every_single_bit_flip() {
        let data: Vec<u8> = (0..100u8).collect();
        let c = checksum(&[&data]);
        for i in 0..data.len() * 8 {
            let mut d = data.clone();
            d[i / 8] ^= 1 << (i % 8);
            assert_ne!(checksum(&[&d]), c, "bit {i}");
        }
    }

    #[test]
    fn torn_and_corrupt_records_are_told_apart() {
        let mut f = header(FileKind::Log, 1).to_vec();
        push_record(&mut f, 1, b"first").unwrap();
        push_record(&mut f, 2, b"second").unwrap();
        let full = f.len();
        // Truncated tail: torn.
        let mut r = Records::new(&f[..full - 3]);
        assert!(matches!(r.next_record(), Some(Ok(_))));
        assert!(matches!(r.next_record(), Some(Err(RecordError::Torn))));
        // Damage in the first record with data after it: corrupt.
        let mut g = f.clone();
        g[HEADER_LEN + 6] ^= 0x40;
        let mut r = Records::new(&g);
        assert!(matches!(
            r.next_record(),
            Some(Err(RecordError::Corrupt(_)))
        ));
        assert!(read_header(&g).is_ok());
        g[3] ^= 1;
        assert!(read_header(&g).is_err());
    }
}
