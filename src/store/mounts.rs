//! What builds keep in the store besides step records: RUN --mount=type=cache directories
//! (`mounts/cache/<name>`, each with `<name>.lock` beside it) and the context stat cache
//! (`statcache`, and the files it keeps beside it, `statcache.<what>`). The store owns these
//! paths, so `prune --all` can remove them.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::{content_size, FileLock, LockMode, Result, Store, StoreError};

const CACHE_MOUNTS: &str = "mounts/cache";
const STAT_CACHE: &str = "statcache";
/// The JSON stat cache of rbuild before 0.2 (one ever-growing file), removed at open.
pub(super) const OLD_STAT_CACHE: &str = "statcache.json";

impl Store {
    /// Where the context stat cache is kept (read at a build's start, saved at its end).
    pub fn stat_cache_path(&self) -> PathBuf {
        self.root.join(STAT_CACHE)
    }

    /// The directory of the cache mount `name`, which the sandbox creates itself with the
    /// mount's owner and mode; its parent exists when this returns.
    pub fn cache_mount_dir(&self, name: &str) -> Result<PathBuf> {
        let base = self.root.join(CACHE_MOUNTS);
        fs::create_dir_all(&base).map_err(StoreError::io("creating", &base))?;
        Ok(base.join(name))
    }

    /// Lock the cache mount `name` for one step (`sharing=locked`), waiting for others.
    pub fn lock_cache_mount(&self, name: &str) -> Result<FileLock> {
        let path = self.cache_mount_lock(name)?;
        FileLock::wait(&path, LockMode::Exclusive).map_err(StoreError::io("locking", path))
    }

    /// [`Store::lock_cache_mount`] without waiting (`sharing=private`): `None` while
    /// another step holds it.
    pub fn try_lock_cache_mount(&self, name: &str) -> Result<Option<FileLock>> {
        let path = self.cache_mount_lock(name)?;
        FileLock::try_lock(&path, LockMode::Exclusive).map_err(StoreError::io("locking", path))
    }

    fn cache_mount_lock(&self, name: &str) -> Result<PathBuf> {
        Ok(self
            .cache_mount_dir(name)?
            .with_file_name(format!("{name}.lock")))
    }

    /// Remove every cache mount and the stat cache (`prune --all`); the caller holds the
    /// store lock exclusively, so no step has a cache mounted. Returns the bytes freed.
    pub(super) fn remove_build_state(&self) -> Result<u64> {
        let mut bytes = 0;
        let mounts = self.root.join(CACHE_MOUNTS);
        if mounts.exists() {
            bytes += content_size(&mounts)?;
            fs::remove_dir_all(&mounts).map_err(StoreError::io("removing", &mounts))?;
        }
        let entries = fs::read_dir(&self.root).map_err(StoreError::io("reading", &self.root))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("reading", &self.root))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name != STAT_CACHE && !name.starts_with(&format!("{STAT_CACHE}.")) {
                continue;
            }
            let stat = entry.path();
            match fs::symlink_metadata(&stat) {
                Ok(md) => {
                    bytes += md.len();
                    fs::remove_file(&stat).map_err(StoreError::io("removing", &stat))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("reading", &stat)(e)),
            }
        }
        Ok(bytes)
    }
}
