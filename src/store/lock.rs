//! The one flock API: the store lock, index.json's lock, scratch sessions and cache mounts
//! all take their locks here (flock(2): released when the file is closed, so a killed
//! process never leaves one held).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::FlockOperation;

/// How to take a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// A held flock; released on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Open `path` (creating it when it is not a directory) and lock it, waiting for
    /// other holders.
    pub fn wait(path: &Path, mode: LockMode) -> io::Result<FileLock> {
        let file = open(path)?;
        let op = match mode {
            LockMode::Shared => FlockOperation::LockShared,
            LockMode::Exclusive => FlockOperation::LockExclusive,
        };
        rustix::fs::flock(file.as_fd(), op)?;
        Ok(FileLock { _file: file })
    }

    /// [`FileLock::wait`] without waiting: `None` while someone else holds it.
    pub fn try_lock(path: &Path, mode: LockMode) -> io::Result<Option<FileLock>> {
        let file = open(path)?;
        try_file(file, mode)
    }

    /// Whether an existing file is locked by someone (or cannot be locked): `false` when
    /// the file does not exist. Takes (and releases at once) the lock when nobody holds it.
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        !matches!(try_file(file, LockMode::Exclusive), Ok(Some(_)))
    }
}

fn try_file(file: File, mode: LockMode) -> io::Result<Option<FileLock>> {
    let op = match mode {
        LockMode::Shared => FlockOperation::NonBlockingLockShared,
        LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    match rustix::fs::flock(file.as_fd(), op) {
        Ok(()) => Ok(Some(FileLock { _file: file })),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A directory is locked through a read-only descriptor; a file is created if missing.
fn open(path: &Path) -> io::Result<File> {
    if path.is_dir() {
        File::open(path)
    } else {
        OpenOptions::new().create(true).append(true).open(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("lock");
        let a = FileLock::wait(&path, LockMode::Shared).unwrap();
        let b = FileLock::try_lock(&path, LockMode::Shared).unwrap();
        assert!(b.is_some(), "two shared holders");
        assert!(FileLock::try_lock(&path, LockMode::Exclusive)
            .unwrap()
            .is_none());
        assert!(FileLock::is_held(&path));
        drop((a, b));
        let ex = FileLock::try_lock(&path, LockMode::Exclusive).unwrap();
        assert!(ex.is_some());
        assert!(FileLock::is_held(&path));
        drop(ex);
        assert!(!FileLock::is_held(&path));
        assert!(!FileLock::is_held(&t.path().join("missing")));
        // A directory locks too (index.json's lock is on the store root).
        assert!(FileLock::try_lock(t.path(), LockMode::Exclusive)
            .unwrap()
            .is_some());
    }
}
