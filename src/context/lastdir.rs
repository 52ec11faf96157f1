//! The directory of the last file a thread opened, held open, so that the next file of the
//! same directory is opened there by its name: a file's whole path walked for each of many
//! files was ~12 % of a copying thread's time in a first build of 100,000 files
//! (`link_path_walk`, issue 23). A directory is opened by its path as the file's path
//! would walk it, symlinks and all, so what a file opens is what its path names. Each
//! thread holds its own: a directory fd shared by threads has its reference count bounce
//! between the CPUs at every open.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags, CWD};

#[derive(Debug, Default)]
pub(crate) struct LastDir(Option<(PathBuf, OwnedFd)>);

impl LastDir {
    /// The open directory of `path` (opened in place of the last one if that is another),
    /// and `path`'s last component.
    pub(crate) fn at<'p>(&mut self, path: &'p Path) -> io::Result<(BorrowedFd<'_>, &'p OsStr)> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // A relative path of one component is in the working directory.
        let dir = match dir.as_os_str().is_empty() {
            true => Path::new("."),
            false => dir,
        };
        if self.0.as_ref().is_none_or(|(p, _)| p != dir) {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(CWD, dir, flags, Mode::empty())?;
            self.0 = Some((dir.to_path_buf(), fd));
        }
        let (_, fd) = self.0.as_ref().expect("opened above");
        Ok((fd.as_fd(), name))
    }

    /// `path` opened to read, as `File::open` would.
    pub(crate) fn open(&mut self, path: &Path) -> io::Result<std::fs::File> {
        let (dir, name) = self.at(path)?;
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Files are opened in their directory, as `File::open` opens them: through a
    /// symlinked directory, after a change of directory, and relative to the working
    /// directory; a path without a name is refused.
    #[test]
    fn opens_what_the_path_names() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("a")).unwrap();
        std::fs::create_dir_all(r.join("b")).unwrap();
        std::fs::write(r.join("a/f"), "in a").unwrap();
        std::fs::write(r.join("b/f"), "in b").unwrap();
        std::os::unix::fs::symlink("b", r.join("link")).unwrap();
        let mut last = LastDir::default();
        let mut read = |p: &Path| {
            let mut s = String::new();
            last.open(p).unwrap().read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(read(&r.join("a/f")), "in a");
        assert_eq!(read(&r.join("b/f")), "in b");
        assert_eq!(read(&r.join("link/f")), "in b");
        assert_eq!(read(&r.join("a/f")), "in a");
        assert_eq!(
            read(Path::new("Cargo.toml")),
            std::fs::read_to_string("Cargo.toml").unwrap()
        );
        assert!(LastDir::default().open(Path::new("/")).is_err());
    }
}
