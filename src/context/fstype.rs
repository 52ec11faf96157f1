//! Which filesystems' metadata the context's shortcuts may take at its word: the local
//! ones, whose directories change their times with their names and whose regular files'
//! sizes are their bytes. A network or FUSE filesystem may cache a directory's attributes
//! or take them from elsewhere, and procfs, sysfs and their kind give files of size 0
//! that read bytes. Asked once a filesystem (by device).

use std::collections::HashMap;
use std::path::Path;

use rustix::fd::BorrowedFd;
use rustix::fs::StatFs;

/// The `statfs` types taken at their word: ext2-4, tmpfs, xfs, btrfs, overlayfs, zfs, f2fs.
const LOCAL: &[u32] = &[
    0xEF53,
    0x0102_1994,
    0x5846_5342,
    0x9123_683E,
    0x794C_7630,
    0x2FC1_2FC1,
    0xF2F5_2010,
];

/// Whether each filesystem met (by device) is one of the [`LOCAL`] ones.
#[derive(Debug, Default)]
pub(crate) struct LocalFilesystems(HashMap<u64, bool>);

impl LocalFilesystems {
    /// Whether the filesystem `dev`, which `dir` is on, is a local one.
    pub(crate) fn has(&mut self, dev: u64, dir: BorrowedFd<'_>) -> bool {
        self.ask(dev, || rustix::fs::fstatfs(dir))
    }

    /// [`LocalFilesystems::has`] for the filesystem `dev` that `path` is on.
    pub(crate) fn has_path(&mut self, dev: u64, path: &Path) -> bool {
        self.ask(dev, || rustix::fs::statfs(path))
    }

    fn ask(&mut self, dev: u64, statfs: impl FnOnce() -> rustix::io::Result<StatFs>) -> bool {
        *self
            .0
            .entry(dev)
            .or_insert_with(|| statfs().is_ok_and(|fs| LOCAL.contains(&(fs.f_type as u32))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    /// tmpfs and the temp dir's filesystem are local; procfs (standing in for the network
    /// and FUSE ones, which tests cannot mount) is not, by fd or by path.
    #[test]
    fn local_filesystems_are_told_from_others() {
        let tmp = tempfile::tempdir().unwrap();
        for (path, local) in [
            (Path::new("/dev/shm"), true),
            (tmp.path(), true),
            (Path::new("/proc"), false),
            (Path::new("/proc/self/status"), false),
        ] {
            let dev = std::fs::metadata(path).unwrap().dev();
            let file = std::fs::File::open(path).unwrap();
            assert_eq!(
                LocalFilesystems::default().has(dev, file.as_fd()),
                local,
                "{path:?}"
            );
            assert_eq!(
                LocalFilesystems::default().has_path(dev, path),
                local,
                "{path:?}"
            );
        }
    }
}
