//! The metadata of a context entry as the walk reads it: `statx` relative to the open
//! directory being walked (one path component for the kernel to look up, not the whole
//! path again: issue 23), which `std::fs::Metadata` cannot be built from. The digest and
//! the copier read it through the same method names as `MetadataExt`.

use std::path::Path;

use rustix::fd::AsFd;
use rustix::fs::{makedev, statx, AtFlags, FileType, Statx, StatxFlags, StatxTimestamp, CWD};

/// What the digest and the copier read of an entry.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: u64,
    dev: u64,
    ino: u64,
    rdev: u64,
    atime: (i64, u32),
    mtime: (i64, u32),
    ctime: (i64, u32),
}

/// What the walk asks `statx` for: the fields of [`Meta`].
const WANTED: StatxFlags = StatxFlags::BASIC_STATS;

impl Meta {
    /// `name` in the directory `dir` (or a path from the working directory with `CWD`),
    /// symlinks not followed unless `follow`.
    pub(crate) fn at(dir: impl AsFd, name: &Path, follow: bool) -> std::io::Result<Meta> {
        let flags = if follow {
            AtFlags::empty()
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        Ok(Meta::from_statx(&statx(dir, name, flags, WANTED)?))
    }

    /// The file open as `fd`.
    pub(crate) fn of(fd: impl AsFd) -> std::io::Result<Meta> {
        Ok(Meta::from_statx(&statx(
            fd,
            "",
            AtFlags::EMPTY_PATH,
            WANTED,
        )?))
    }

    /// `path` (relative to the working directory, or absolute).
    pub(crate) fn path(path: &Path, follow: bool) -> std::io::Result<Meta> {
        Meta::at(CWD, path, follow)
    }

    fn from_statx(s: &Statx) -> Meta {
        let time = |t: &StatxTimestamp| (t.tv_sec, t.tv_nsec);
        Meta {
            mode: u32::from(s.stx_mode),
            nlink: u64::from(s.stx_nlink),
            uid: s.stx_uid,
            gid: s.stx_gid,
            size: s.stx_size,
            dev: makedev(s.stx_dev_major, s.stx_dev_minor),
            ino: s.stx_ino,
            rdev: makedev(s.stx_rdev_major, s.stx_rdev_minor),
            atime: time(&s.stx_atime),
            mtime: time(&s.stx_mtime),
            ctime: time(&s.stx_ctime),
        }
    }

    pub(crate) fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.file_type().is_dir()
    }

    pub(crate) fn is_file(&self) -> bool {
        self.file_type().is_file()
    }

    /// Type and permission bits, as `st_mode`.
    pub(crate) fn mode(&self) -> u32 {
        self.mode
    }

    pub(crate) fn nlink(&self) -> u64 {
        self.nlink
    }

    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    pub(crate) fn gid(&self) -> u32 {
        self.gid
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// As `st_dev`.
    pub(crate) fn dev(&self) -> u64 {
        self.dev
    }

    pub(crate) fn ino(&self) -> u64 {
        self.ino
    }

    /// As `st_rdev`.
    pub(crate) fn rdev(&self) -> u64 {
        self.rdev
    }

    pub(crate) fn atime(&self) -> i64 {
        self.atime.0
    }

    pub(crate) fn atime_nsec(&self) -> i64 {
        i64::from(self.atime.1)
    }

    pub(crate) fn mtime(&self) -> i64 {
        self.mtime.0
    }

    pub(crate) fn mtime_nsec(&self) -> i64 {
        i64::from(self.mtime.1)
    }

    pub(crate) fn ctime(&self) -> i64 {
        self.ctime.0
    }

    pub(crate) fn ctime_nsec(&self) -> i64 {
        i64::from(self.ctime.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Every field as std's `lstat`/`stat` gives it: the stat cache's keys made before
    /// (from std) still match.
    #[test]
    fn matches_std_metadata() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        for (name, follow) in [("f", false), ("l", false), ("l", true), ("", false)] {
            let p = t.path().join(name);
            let std = if follow {
                std::fs::metadata(&p)
            } else {
                std::fs::symlink_metadata(&p)
            }
            .unwrap();
            let dir = rustix::fs::open(
                t.path(),
                rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            let rel = if name.is_empty() { "." } else { name };
            for m in [
                Meta::path(&p, follow).unwrap(),
                Meta::at(&dir, Path::new(rel), follow).unwrap(),
            ] {
                assert_eq!(
                    (m.mode(), m.nlink(), m.uid(), m.gid(), m.size()),
                    (std.mode(), std.nlink(), std.uid(), std.gid(), std.size())
                );
                assert_eq!(
                    (m.dev(), m.ino(), m.rdev()),
                    (std.dev(), std.ino(), std.rdev())
                );
                assert_eq!(
                    (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()),
                    (std.mtime(), std.mtime_nsec(), std.ctime(), std.ctime_nsec())
                );
                assert_eq!((m.atime(), m.atime_nsec()), (std.atime(), std.atime_nsec()));
                assert_eq!(m.is_dir(), std.is_dir());
                assert_eq!(m.file_type().is_symlink(), std.file_type().is_symlink());
            }
        }
    }
}
