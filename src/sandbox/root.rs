//! Paths inside an image root, resolved the way the container would see them.
//!
//! Every lookup goes through `openat2(RESOLVE_IN_ROOT)`, so a symlink in the image
//! (`/etc/resolv.conf -> /run/...`, or a hostile `x -> ../../..`) resolves inside the root
//! and never to the host. Missing components are created one at a time relative to an
//! already-resolved parent, which is what BuildKit's `fs.RootPath` + `MkdirAll` achieve.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// What to create when a path is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// How [`Root::ensure`] makes what is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// Mode of the parent directories it creates.
    pub parent_mode: u32,
    /// Owner of everything it creates (None: the creating process's).
    pub owner: Option<(u32, u32)>,
}

impl Default for Created {
    fn default() -> Self {
        Created {
            parent_mode: 0o755,
            owner: None,
        }
    }
}

/// An open image root.
pub struct Root {
    fd: OwnedFd,
    abs: PathBuf,
    /// `abs` with its symlinks resolved, as /proc/self/fd shows the paths beneath it.
    real: PathBuf,
}

/// Symlinks followed while creating one path before giving up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Tries of one lookup that the kernel refuses with EAGAIN. A rename or mount anywhere on
/// the system while a `..` is resolved makes openat2(RESOLVE_IN_ROOT) fail with EAGAIN,
/// because the kernel can no longer prove the walk stayed inside the root; openat2(2) says
/// to retry. Parallel stages mounting overlays are enough to hit it.
const EAGAIN_TRIES: usize = 1000;

/// Lexically cleans `path` into components below the root: `/a/./b/../c` -> `a/c`.
/// `..` at the top stays at the top, as it does for a process chrooted there.
pub fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// Where the symlink `name` in the directory `dir` (`parent`, root-relative) leads, as a
/// cleaned root-relative path; `None` when it is not a symlink. ELOOP once `links` links
/// were followed.
fn link_target(
    dir: BorrowedFd<'_>,
    parent: &str,
    name: &str,
    links: usize,
) -> io::Result<Option<String>> {
    let Ok(target) = rustix::fs::readlinkat(dir, name, Vec::new()) else {
        return Ok(None);
    };
    if links >= MAX_LINKS {
        return Err(rustix::io::Errno::LOOP.into());
    }
    let target = target.to_string_lossy();
    Ok(Some(if target.starts_with('/') {
        clean(&target)
    } else {
        clean(&format!("{parent}/{target}"))
    }))
}

impl Root {
    pub fn open(abs: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            abs,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        Ok(Root {
            fd,
            abs: abs.to_path_buf(),
            real,
        })
    }

    pub fn path(&self) -> &Path {
        &self.abs
    }

    /// Opens an existing path, following symlinks inside the root.
    pub fn open_in(&self, path: &str, extra: OFlags) -> io::Result<OwnedFd> {
        self.openat2(
            path,
            extra,
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Opens an existing path beneath the root that must be exactly what it names: any
    /// symlink or mount point on the way fails the lookup (ELOOP, EXDEV) instead of being
    /// followed. For trees a step could have filled with links, like an overlay upper.
    pub fn open_beneath(&self, path: &str, extra: OFlags) -> io::Result<OwnedFd> {
        self.openat2(
            path,
            extra | OFlags::NOFOLLOW,
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        )
    }

    fn openat2(&self, path: &str, extra: OFlags, resolve: ResolveFlags) -> io::Result<OwnedFd> {
        let rel = clean(path);
        let rel = if rel.is_empty() { ".".to_string() } else { rel };
        let mut tries = 1;
        loop {
            match rustix::fs::openat2(
                &self.fd,
                rel.as_str(),
                extra | OFlags::CLOEXEC,
                Mode::empty(),
                resolve,
            ) {
                Err(rustix::io::Errno::AGAIN) if tries < EAGAIN_TRIES => tries += 1,
                result => return Ok(result?),
            }
        }
    }

    /// Reads a file inside the root; `Ok(None)` when it does not exist.
    pub fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.open_in(path, OFlags::RDONLY) {
            Ok(fd) => {
                let mut f = std::fs::File::from(fd);
                let mut buf = Vec::new();
                io::Read::read_to_end(&mut f, &mut buf)?;
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The image's /etc/passwd and /etc/group, for [`super::user::UserDb`].
    pub fn user_db(&self) -> io::Result<super::user::UserDb> {
        let read = |p: &str| -> io::Result<Option<String>> {
            Ok(self
                .read(p)?
                .map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        Ok(super::user::UserDb {
            passwd: read("/etc/passwd")?,
            group: read("/etc/group")?,
        })
    }

    /// The path of an fd opened inside this root, relative to the root ("" for the root).
    pub fn relative(&self, fd: BorrowedFd<'_>) -> io::Result<String> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let rel = link.strip_prefix(&self.real).map_err(|_| {
            io::Error::other(format!(
                "{} resolved outside the root {}",
                link.display(),
                self.abs.display()
            ))
        })?;
        Ok(rel.to_string_lossy().into_owned())
    }

    /// Resolves `path` inside the root as the container would see it, without creating
    /// anything (BuildKit's `fs.RootPath`): symlinks are followed inside the root, components
    /// that do not exist (from the first missing one on) are taken as they are. With
    /// `follow_last` false a symlink in the last component names the link itself. Returns
    /// the path relative to the root (`""` for the root); ELOOP after too many links.
    pub fn resolve(&self, path: &str, follow_last: bool) -> io::Result<String> {
        self.resolve_inner(&clean(path), follow_last, 0)
    }

    fn resolve_inner(&self, rel: &str, follow_last: bool, links: usize) -> io::Result<String> {
        if rel.is_empty() {
            return Ok(String::new());
        }
        let nofollow = if follow_last {
            OFlags::empty()
        } else {
            OFlags::NOFOLLOW
        };
        match self.open_in(rel, OFlags::PATH | nofollow) {
            Ok(fd) => return self.relative(fd.as_fd()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
            Err(e) => return Err(e),
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent = self.resolve_inner(parent, true, links)?;
        let joined = if parent.is_empty() {
            name.to_string()
        } else {
            format!("{parent}/{name}")
        };
        if follow_last {
            // A dangling symlink: where it points, resolved the same way.
            if let Ok(pfd) = self.open_in(&parent, OFlags::PATH | OFlags::DIRECTORY) {
                if let Some(next) = link_target(pfd.as_fd(), &parent, name, links)? {
                    return self.resolve_inner(&next, true, links + 1);
                }
            }
        }
        Ok(joined)
    }

    /// Opens `path` (O_PATH), creating what is missing: parents as directories with
    /// `new.parent_mode`, the last component as `kind` with `mode`; everything created is
    /// chowned to `new.owner` and its root-relative path appended to `created` (parents
    /// first). A component that exists and is not a directory fails with ENOTDIR.
    pub fn ensure(
        &self,
        path: &str,
        kind: Kind,
        mode: u32,
        new: Created,
        created: &mut Vec<String>,
    ) -> io::Result<OwnedFd> {
        self.ensure_inner(&clean(path), kind, mode, new, created, 0)
    }

    fn ensure_inner(
        &self,
        rel: &str,
        kind: Kind,
        mode: u32,
        new: Created,
        created: &mut Vec<String>,
        links: usize,
    ) -> io::Result<OwnedFd> {
        let dir_flag = if kind == Kind::Dir {
            OFlags::DIRECTORY
        } else {
            OFlags::empty()
        };
        match self.open_in(rel, OFlags::PATH | dir_flag) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", rel),
        };
        let pfd = self.ensure_inner(parent, Kind::Dir, new.parent_mode, new, created, links)?;
        let made = match kind {
            Kind::Dir => rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(mode)).map(|_| ()),
            Kind::File => rustix::fs::openat(
                &pfd,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            )
            .map(drop),
        };
        match made {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                // It exists but did not resolve: a dangling symlink. Create its target,
                // resolved from the link's directory, as the container would.
                let next = link_target(pfd.as_fd(), parent, name, links)?
                    .ok_or(rustix::io::Errno::EXIST)?;
                return self.ensure_inner(&next, kind, mode, new, created, links + 1);
            }
            Err(e) => return Err(e.into()),
        }
        // mkdir/open honour the umask; the requested mode is exact.
        rustix::fs::chmodat(
            &pfd,
            name,
            Mode::from_raw_mode(mode),
            rustix::fs::AtFlags::empty(),
        )?;
        if let Some((uid, gid)) = new.owner {
            rustix::fs::chownat(
                &pfd,
                name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        let fd = rustix::fs::openat(
            &pfd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        created.push(self.relative(fd.as_fd())?);
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn clean_stays_below_root() {
        assert_eq!(clean("/a/./b/../c/"), "a/c");
        assert_eq!(clean("../../etc"), "etc");
        assert_eq!(clean("/"), "");
        // Moved from context::clean_rel, the twin this one replaced.
        assert_eq!(clean("a/./b/../c"), "a/c");
        assert_eq!(clean("/x/y/"), "x/y");
        assert_eq!(clean("../../x"), "x");
        assert_eq!(clean("."), "");
    }

    #[test]
    fn ensure_creates_parents_and_follows_links_inside_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root_dir = tmp.path().join("root");
        std::fs::create_dir(&root_dir).unwrap();
        let outside = tmp.path().join("outside");
        // An absolute link and a relative one that climbs out: both must stay inside.
        std::os::unix::fs::symlink(&outside, root_dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../outside", root_dir.join("rel")).unwrap();
        let root = Root::open(&root_dir).unwrap();
        let mut created = Vec::new();
        root.ensure("/a/b", Kind::Dir, 0o700, Created::default(), &mut created)
            .unwrap();
        assert_eq!(created, ["a", "a/b"]);
        let m = std::fs::metadata(root_dir.join("a/b")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);
        assert_eq!(
            std::fs::metadata(root_dir.join("a")).unwrap().mode() & 0o777,
            0o755
        );

        created.clear();
        root.ensure("/abs/x", Kind::Dir, 0o755, Created::default(), &mut created)
            .unwrap();
        root.ensure("rel/f", Kind::File, 0o644, Created::default(), &mut created)
            .unwrap();
        assert!(!outside.exists());
        let inner = format!("{}", outside.display())
            .trim_start_matches('/')
            .to_string();
        assert!(root_dir.join(&inner).join("x").is_dir());
        assert!(root_dir.join("outside/f").is_file());
        assert!(created.contains(&"outside/f".to_string()), "{created:?}");

        // Existing paths are opened, not recreated.
        created.clear();
        root.ensure("a", Kind::Dir, 0o755, Created::default(), &mut created)
            .unwrap();
        assert!(created.is_empty());
        assert_eq!(root.read("/a/../outside/f").unwrap(), Some(Vec::new()));
        assert_eq!(root.read("/nope").unwrap(), None);
    }

    /// Renames elsewhere on the system make the kernel refuse a `..` walk with EAGAIN now
    /// and then; lookups retry instead of failing the step (seen as a flaky mkdir job).
    #[test]
    fn lookups_through_dotdot_survive_concurrent_renames() {
        let tmp = tempfile::tempdir().unwrap();
        let root_dir = tmp.path().join("root");
        std::fs::create_dir_all(root_dir.join("d")).unwrap();
        std::fs::write(root_dir.join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("../../../../d", root_dir.join("l")).unwrap();
        let busy = tmp.path().join("busy");
        std::fs::write(&busy, b"").unwrap();
        let root = Root::open(&root_dir).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let (a, b) = (busy.clone(), tmp.path().join("busy2"));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::rename(&a, &b).unwrap();
                    std::fs::rename(&b, &a).unwrap();
                }
            });
            let result = (|| {
                for _ in 0..20_000 {
                    assert_eq!(root.read("/l/../l/f")?, Some(b"x".to_vec()));
                }
                Ok::<_, io::Error>(())
            })();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            result.unwrap();
        });
    }
}
