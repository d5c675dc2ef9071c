//! The tree's files in memory: storages the test keeps a handle to, an
//! opener that serves them by path, and recovery (a writable open, which
//! replays a dirty log).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vhdx::io::{FaultStorage, FileOpener};
use vhdx::{IoError, OpenOptions, Storage};

use crate::common::storage::{eof, read_from, write_into};

/// A writable storage over bytes the test keeps a handle to, shared until
/// first written (a file the operation only reads is never copied), so a
/// snapshot of it costs nothing.
#[derive(Clone, Default)]
pub struct VecStorage(Arc<Mutex<Arc<Vec<u8>>>>);

impl VecStorage {
    pub fn new(bytes: Arc<Vec<u8>>) -> VecStorage {
        VecStorage(Arc::new(Mutex::new(bytes)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the bytes out (the storage is left empty).
    pub fn take(&self) -> Vec<u8> {
        let bytes = std::mem::take(&mut *self.lock());
        Arc::try_unwrap(bytes).unwrap_or_else(|b| b.to_vec())
    }

    /// The bytes as they are now.
    pub fn bytes(&self) -> Arc<Vec<u8>> {
        self.lock().clone()
    }
}

impl Storage for VecStorage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        read_from(&self.lock(), buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        write_into(Arc::make_mut(&mut self.lock()), buf, offset)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
    fn len(&self) -> Result<u64, IoError> {
        Ok(self.lock().len() as u64)
    }
    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        let len = usize::try_from(len).map_err(|_| eof())?;
        Arc::make_mut(&mut self.lock()).resize(len, 0);
        Ok(())
    }
}

/// The path a file opener is asked for, as the key of the tree's files.
pub fn key(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// A file opener serving `storages` by path (any other path is not found),
/// calling `opened(index)` with the index of each one it serves.
pub fn opener_of<S: Storage + Clone + 'static>(
    storages: Vec<(PathBuf, S)>,
    opened: impl Fn(usize) + Send + Sync + 'static,
) -> FileOpener {
    let by_path: BTreeMap<PathBuf, (usize, S)> =
        storages.into_iter().enumerate().map(|(n, (p, s))| (key(&p), (n, s))).collect();
    FileOpener::new(move |path: &Path, _writable| match by_path.get(&key(path)) {
        Some((n, s)) => {
            opened(*n);
            Ok(Box::new(s.clone()) as Box<dyn Storage>)
        }
        None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "not a file of the tree")),
    })
}

/// Opens `bytes` writable on their own, which replays a dirty log in place,
/// and returns the file as the open and a close left it.
pub fn recover(name: &str, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let storage = VecStorage::new(Arc::new(bytes));
    let disk = OpenOptions::new()
        .writable(true)
        .without_parent()
        .open_storage(Box::new(storage.clone()))
        .map_err(|e| format!("{name}: the writable open (recovery) fails — {e}"))?;
    disk.close().map_err(|e| format!("{name}: closing after recovery fails — {e}"))?;
    Ok(storage.take())
}

/// Watches the storages of one run for a full filesystem
/// ([`FaultClock::fill_after`](vhdx::io::FaultClock::fill_after)): counts
/// the operations refused with `ENOSPC` and, when `transient`, frees the
/// space at the first refusal, as when another program deletes a file —
/// the operation sees one `ENOSPC`, and its clean-up has space.
#[derive(Clone, Default)]
pub struct SpaceWatch {
    refusals: Arc<std::sync::atomic::AtomicU64>,
    transient: bool,
}

impl SpaceWatch {
    pub fn new(transient: bool) -> SpaceWatch {
        SpaceWatch { transient, ..SpaceWatch::default() }
    }

    /// Operations refused with `ENOSPC` so far.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `storage`, watched.
    pub fn watch(&self, storage: FaultStorage) -> Watched {
        Watched { storage, watch: self.clone() }
    }

    fn saw<T>(&self, storage: &FaultStorage, r: Result<T, IoError>) -> Result<T, IoError> {
        if r.as_ref().is_err_and(|e| e.kind() == vhdx::IoErrorKind::StorageFull) {
            self.refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.transient {
                storage.fill_after(None);
            }
        }
        r
    }
}

/// A [`FaultStorage`] under a [`SpaceWatch`].
#[derive(Clone)]
pub struct Watched {
    storage: FaultStorage,
    watch: SpaceWatch,
}

impl Storage for Watched {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        self.storage.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        let r = self.storage.write_all_at(buf, offset);
        self.watch.saw(&self.storage, r)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.storage.flush()
    }
    fn len(&self) -> Result<u64, IoError> {
        self.storage.len()
    }
    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        let r = self.storage.set_len(len);
        self.watch.saw(&self.storage, r)
    }
    fn allocate(&mut self, offset: u64, len: u64) -> Result<(), IoError> {
        let r = self.storage.allocate(offset, len);
        self.watch.saw(&self.storage, r)
    }
}
