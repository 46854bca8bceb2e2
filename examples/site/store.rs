//! A small content-addressed store: files named by the BLAKE3 hash of their
//! bytes, in one directory beside the cache file.
//!
//! This is what keeps the cache lean. A rendered page is large (at 3 000
//! pages, each one carries a sidebar of ~750 links); picante only needs to
//! know *which* HTML a page rendered to, not the HTML itself. So `RenderPage`
//! puts the page here and returns its hash: the memo (and so the cache file)
//! holds 64 hex digits per page, and the output step links the file from the
//! store into the output directory.
//!
//! A blob is never changed once written (its name is its content), so
//! writing one is idempotent and safe to repeat when a query re-runs, and
//! two writers of the same page cannot tear it: each writes a temporary file
//! and renames it into place.
//!
//! Writes are buffered: [`Store::put`] only hashes and keeps the bytes, and
//! the driver's output step writes every new blob in one blocking call
//! ([`Store::flush`]) before it links pages into the output. One hop to the
//! blocking pool per build rather than one per page: on a busy machine each
//! hop waits for a CPU, and 3 000 of them cost seconds.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The hex BLAKE3 hash of a blob: its name in the store.
pub type Hash = Arc<str>;

/// A handle to the store; cheap to clone (queries hold one).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// Blobs put but not written yet.
    pending: Mutex<HashMap<Hash, Vec<u8>>>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: PathBuf) -> io::Result<Store> {
        std::fs::create_dir_all(&dir)?;
        Ok(Store {
            inner: Arc::new(Inner {
                dir,
                pending: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where the blob named `hash` lies.
    pub fn path_of(&self, hash: &str) -> PathBuf {
        self.inner.dir.join(format!("{hash}.html"))
    }

    /// Adds `bytes` to the store and returns its hash. The blob is on disk
    /// once [`Store::flush`] has returned; a blob already there is not
    /// written again.
    pub fn put(&self, bytes: Vec<u8>) -> Hash {
        let hash: Hash = blake3::hash(&bytes).to_hex().as_str().into();
        if !self.path_of(&hash).exists() {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.entry(hash.clone()).or_insert(bytes);
        }
        hash
    }

    /// Writes every pending blob: a temporary file, renamed into place.
    /// Blocking: call it on the blocking pool.
    pub fn flush(&self) -> io::Result<usize> {
        let pending =
            std::mem::take(&mut *self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let tmp = self
            .inner
            .dir
            .join(format!(".write-{}.tmp", std::process::id()));
        for (hash, bytes) in &pending {
            let path = self.path_of(hash);
            let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot write {} to the store: {e}", path.display()),
                ));
            }
        }
        Ok(pending.len())
    }

    /// Empties the store: its directory is renamed to `aside` (to be
    /// deleted later, see below) and a new one is created.
    ///
    /// Why not delete now: on ext4, creating thousands of files right after
    /// deleting thousands is several times slower (the inode allocator skips
    /// recently freed inodes), which would make a cold build look slower
    /// than it is.
    pub fn clear(&self, aside: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(aside) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match std::fs::rename(self.dir(), aside) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(self.dir())
    }

    /// Blobs in the store and their total size.
    pub fn usage(&self) -> (usize, u64) {
        let (mut files, mut bytes) = (0, 0);
        if let Ok(entries) = std::fs::read_dir(self.dir()) {
            for entry in entries.flatten() {
                if let Ok(meta) = entry.metadata()
                    && meta.is_file()
                {
                    files += 1;
                    bytes += meta.len();
                }
            }
        }
        (files, bytes)
    }
}

/// Makes `out` a copy of the blob at `blob`: a hard link when the file
/// system allows it (no bytes copied), a copy otherwise. Returns `false`
/// when `out` already was that blob (nothing to do).
pub fn link_into(blob: &Path, out: &Path) -> io::Result<bool> {
    if same_file(blob, out)? {
        return Ok(false);
    }
    match std::fs::remove_file(out) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if std::fs::hard_link(blob, out).is_err() {
        std::fs::copy(blob, out)?;
    }
    Ok(true)
}

/// Whether `out` holds the blob: the same file (a hard link), or, where
/// links are not possible, the same bytes. A missing blob is an error.
fn same_file(blob: &Path, out: &Path) -> io::Result<bool> {
    let blob_meta = std::fs::metadata(blob).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "the store has no blob {} ({e}); delete the cache directory to rebuild",
                blob.display()
            ),
        )
    })?;
    let out_meta = match std::fs::metadata(out) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if blob_meta.len() != out_meta.len() {
        return Ok(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (blob_meta.dev(), blob_meta.ino()) == (out_meta.dev(), out_meta.ino()) {
            return Ok(true);
        }
    }
    Ok(std::fs::read(blob)? == std::fs::read(out)?)
}
