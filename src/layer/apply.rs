//! Apply: a layer tar (any codec) -> a directory in overlay format, for pulled or imported
//! layers that become lowerdirs.
//!
//! Security model (design.md "Layers"): nothing is ever written outside `dest`.
//! - Absolute names and `..` components are refused (an error, not a rewrite: a layer built
//!   by any sane tool has neither, so one that does is corrupt or hostile). `.` components
//!   and a leading `./` are accepted.
//! - Every path is resolved one component at a time from a directory fd of `dest` with
//!   `O_NOFOLLOW | O_DIRECTORY`, so a symlink anywhere in a parent path (one this layer
//!   created, like `a -> /tmp` followed by `a/file`) fails the entry instead of being
//!   followed. The final component is created with `O_EXCL`/`mknodat`/`symlinkat`, which do
//!   not follow links either.
//! - A hard link may only name an earlier entry of this layer; it is linked with `linkat`
//!   without `AT_SYMLINK_FOLLOW`. `dest` starts empty and only this layer writes into it, so
//!   "an earlier entry" is "what is in `dest` now", resolved like any other path.
//! - A truncated or corrupt tar, gzip or zstd stream is an error; the whole decompressed
//!   stream is read to its end so that trailers and checksums are verified.
//!
//! Memory does not grow with the number of entries: the only state kept between entries is
//! the path of the latest one (`Applier::open`), so a layer of millions of files
//! applies in as little memory as a small one.
//!
//! Whiteouts become what overlayfs reads: `.wh.NAME` -> a 0/0 char device `NAME`, and
//! `.wh..wh..opq` -> `trusted.overlay.opaque=y` on its directory. Xattrs follow the same
//! policy as snapshot (`user.*` and `security.capability`), and are set only on regular
//! files and directories, the only types the kernel allows `user.*` on.
//!
//! [`extract`] is the same applier for the archives that ADD unpacks into an image
//! directory, with Docker's untar semantics where they differ (it chroots into the
//! destination): `/` and `..` are taken inside the destination and only a name that climbs
//! out of it is refused; a symlink on an entry's path (the image's or the archive's own) is
//! followed with `openat2(RESOLVE_IN_ROOT)`, the destination being the root, so it never
//! leads out; `.wh.` names are ordinary files; the `./` entry leaves the destination alone;
//! a tar without its end-of-archive blocks is accepted, as Go's archive/tar does.
//! Ids out of range are refused in both.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest as _, Sha256};

use crate::image::Digest;
use crate::layer::compress;
use crate::layer::{keep_xattr, opaque_xattr, LayerError, OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::sandbox::root::{self as image_root, Root};

/// What [`apply`] unpacked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries applied (whiteouts and opaque markers included).
    pub entries: u64,
    /// Bytes of regular-file data written.
    pub bytes: u64,
    /// `.wh.NAME` entries turned into whiteout devices.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries turned into opaque directories.
    pub opaque_dirs: u64,
    /// Device nodes left out because this process may not create them (rootless, design.md
    /// "Rootless"), and the first one's path in the layer.
    pub skipped_devices: u64,
    pub first_skipped_device: Option<PathBuf>,
}

/// Unpack the layer tar in `reader` (gzip, zstd or uncompressed, by magic bytes) into
/// `dest`, an existing empty directory, in overlay format.
pub fn apply<R: Read>(reader: R, dest: &Path) -> Result<ApplyStats, LayerError> {
    let applier = Applier::new(dest, Target::Layer)?;
    let stream = compress::decompressor(reader).map_err(LayerError::Read)?;
    unpack(stream, applier)
}

/// Unpack the (already decompressed) tar in `reader` into `dest`, an existing directory of
/// an image root, for ADD (see the module docs). `owner` (`--chown`) replaces the entries'
/// ids and owns the directories made on the way.
pub fn extract<R: Read>(
    reader: R,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<ApplyStats, LayerError> {
    let real =
        std::fs::canonicalize(dest).map_err(|e| LayerError::io("opening directory", dest, e))?;
    let root = Root::open(&real).map_err(|e| LayerError::io("opening directory", dest, e))?;
    let applier = Applier::new(&real, Target::Extract { root, owner })?;
    unpack(reader, applier)
}

/// What a tar is unpacked as.
enum Target {
    /// A layer in overlay format, into an empty directory.
    Layer,
    /// An ADD archive into a directory of an image root, which is the root for every
    /// symlink on the way.
    Extract {
        root: Root,
        owner: Option<(u32, u32)>,
    },
}

fn unpack<R: Read>(stream: R, mut applier: Applier) -> Result<ApplyStats, LayerError> {
    let mut tracked = EofTracker {
        inner: stream,
        eof: false,
    };
    {
        let mut archive = tar::Archive::new(&mut tracked);
        for entry in archive.entries().map_err(LayerError::Read)? {
            let mut entry = entry.map_err(LayerError::Read)?;
            applier.entry(&mut entry)?;
        }
    }
    // The tar crate treats a clean end of input like the end-of-archive marker; a stream
    // that simply stops between entries is a truncated download, not a layer.
    if tracked.eof && matches!(applier.target, Target::Layer) {
        return Err(LayerError::Truncated);
    }
    // Read the rest (the second zero block, record padding, the gzip trailer) so that a
    // corrupt or truncated codec stream fails here and a digest check sees every byte.
    io::copy(&mut tracked, &mut io::sink()).map_err(LayerError::Read)?;
    applier.finish()
}

/// Remembers whether the tar reader ever hit the end of its input.
struct EofTracker<R> {
    inner: R,
    eof: bool,
}

impl<R: Read> Read for EofTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

/// A normalized entry path: its components, none of them empty, `.` or `..`.
type Components = Vec<Vec<u8>>;

/// How many of the open directories keep an fd: the deepest ones, where the next entries
/// go. A deeper path is legal; the shallower directories on it give up their fds and are
/// reopened from the root when the walk returns to them, so a hostile depth costs syscalls,
/// never the fds that the whole process shares.
const OPEN_FDS: usize = 32;

/// A directory on the path of the latest entry ([`Applier::open`]).
struct Frame {
    name: Vec<u8>,
    /// `None` once [`OPEN_FDS`] deeper directories are open.
    fd: Option<OwnedFd>,
    times: Times,
}

/// What a directory's times become when the walk leaves it. Every entry created, replaced
/// or removed in a directory changes them.
enum Times {
    /// Made in this visit for a deeper path: no entry gives it times, they are left alone.
    Made,
    /// Made by an earlier entry, left, and come back to: its times are final, and nothing
    /// has changed it in this visit yet (which is all that most visits do).
    Back,
    /// Set when the walk leaves it: its tar entry's mtime, or, for a directory the walk came
    /// back to, the times it was left with, read before this visit first changed it.
    Set(Timestamps),
}

struct Applier {
    root: OwnedFd,
    dest: PathBuf,
    /// The times of a `./` entry, set at the very end: every top-level entry changes them.
    root_times: Option<Timestamps>,
    /// The directories on the path of the latest entry below the root, outermost first: the
    /// parent of the latest entry, or the latest entry itself if it is a directory. Layers
    /// list a directory's contents right after it, depth first (docker, BuildKit, GNU tar and
    /// rbuild all do), so a directory is complete when the walk leaves it, and its times are
    /// set then. A tar may come back to a directory later; then its times are read before
    /// an entry changes it and set again when the walk leaves it ([`Times`]). This is all
    /// that is kept between entries: it grows with the depth of a path, not with the number
    /// of entries.
    open: Vec<Frame>,
    stats: ApplyStats,
    target: Target,
}

/// The metadata of one tar entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Applier {
    fn new(dest: &Path, target: Target) -> Result<Self, LayerError> {
        let root = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::io("opening layer directory", dest, e.into()))?;
        Ok(Applier {
            root,
            dest: dest.to_path_buf(),
            root_times: None,
            open: Vec::new(),
            stats: ApplyStats::default(),
            target,
        })
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw_path = entry.path_bytes().into_owned();
        let display = PathBuf::from(OsStr::from_bytes(&raw_path));
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            // Global PAX headers carry archive-wide defaults (often just a comment).
            return Ok(());
        }
        let comps = self
            .normalize(&raw_path)
            .map_err(|reason| LayerError::UnsafePath {
                path: display.clone(),
                reason,
            })?;
        let mut meta = read_meta(entry, &display)?;
        if let Target::Extract {
            owner: Some((uid, gid)),
            ..
        } = self.target
        {
            (meta.uid, meta.gid) = (uid, gid);
        }
        self.stats.entries += 1;

        let Some((name, parent_comps)) = comps.split_last() else {
            if let Target::Extract { .. } = self.target {
                // Docker's untar skips `.`: the destination keeps its own metadata.
                return Ok(());
            }
            // `./`: the layer root itself. Only a directory makes sense there.
            if kind != tar::EntryType::Directory {
                return Err(LayerError::UnsafePath {
                    path: display,
                    reason: "the layer root must be a directory",
                });
            }
            self.set_owner_mode_xattrs(self.root.as_fd(), &[], &meta)?;
            // The root is the parent of every top-level entry: its times are set last.
            self.root_times = Some(times(meta.mtime));
            return Ok(());
        };

        if name.starts_with(WHITEOUT_PREFIX) && matches!(self.target, Target::Layer) {
            return self.whiteout(parent_comps, name, &meta, &display);
        }

        self.enter(parent_comps, &display)?;
        let parent = self.top();
        let name_os = OsStr::from_bytes(name);

        match kind {
            tar::EntryType::Directory => {
                let existing = stat_nofollow(parent.as_fd(), name_os);
                if !matches!(existing, Some(FileType::Directory)) {
                    if existing.is_some() {
                        self.remove_existing(parent.as_fd(), name_os, &comps)?;
                    }
                    rustix::fs::mkdirat(parent.as_fd(), name_os, Mode::from_raw_mode(0o700))
                        .map_err(|e| self.err("creating directory", &comps, e.into()))?;
                }
                let fd = rustix::fs::openat(
                    parent.as_fd(),
                    name_os,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.err("opening directory", &comps, e.into()))?;
                self.set_owner_mode_xattrs(fd.as_fd(), &comps, &meta)?;
                // Its contents follow: its times are set when the walk leaves it.
                self.push(Frame {
                    name: name.to_vec(),
                    fd: Some(fd),
                    times: Times::Set(times(meta.mtime)),
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.clear(parent.as_fd(), name_os, &comps)?;
                let fd = rustix::fs::openat(
                    parent.as_fd(),
                    name_os,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.err("creating file", &comps, e.into()))?;
                let mut file = File::from(fd);
                let expected = entry.size();
                let got = io::copy(entry, &mut file).map_err(LayerError::Read)?;
                if got != expected {
                    return Err(LayerError::ShortEntry {
                        path: display,
                        expected,
                        got,
                    });
                }
                self.stats.bytes += got;
                self.set_owner_mode_xattrs(file.as_fd(), &comps, &meta)?;
                rustix::fs::futimens(&file, &times(meta.mtime))
                    .map_err(|e| self.err("setting times of", &comps, e.into()))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::UnsafePath {
                        path: display.clone(),
                        reason: "symlink without a target",
                    })?;
                let target = OsStr::from_bytes(&target).to_os_string();
                self.clear(parent.as_fd(), name_os, &comps)?;
                rustix::fs::symlinkat(&target, parent.as_fd(), name_os)
                    .map_err(|e| self.err("creating symlink", &comps, e.into()))?;
                self.set_at(parent.as_fd(), name_os, &comps, &meta, false)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::UnsafePath {
                        path: display.clone(),
                        reason: "hard link without a target",
                    })?;
                let target_display = PathBuf::from(OsStr::from_bytes(&target));
                let bad = |reason| LayerError::BadHardlink {
                    path: display.clone(),
                    target: target_display.clone(),
                    reason,
                };
                let target = self.normalize(&target).map_err(bad)?;
                let Some((tname, tparent)) = target.split_last() else {
                    return Err(bad("names the layer root"));
                };
                // `dest` started empty and only this layer writes into it, so what is there
                // now is exactly what the earlier entries left: a path no entry wrote, or one
                // a later entry removed or replaced, is missing, and an entry's path never
                // goes through a symlink or a non-directory (it could not have been written).
                let earlier = || bad("does not name an earlier entry of this layer");
                let tparent_fd = match self.resolve(tparent) {
                    Ok(fd) => fd,
                    Err(Resolve::Missing | Resolve::Symlink | Resolve::NotDir) => {
                        return Err(earlier())
                    }
                    Err(Resolve::Io(op, e)) => return Err(self.err(op, tparent, e)),
                };
                let tname = OsStr::from_bytes(tname);
                match rustix::fs::statat(&tparent_fd, tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                        // Directories exist without entries (made for a deeper path), and
                        // cannot be hard linked anyway.
                        FileType::Directory => return Err(bad("names a directory")),
                        // What a `.wh.NAME` entry left: a removal, not something written.
                        FileType::CharacterDevice if st.st_rdev == 0 => {
                            return Err(bad("names a whiteout"))
                        }
                        _ => {}
                    },
                    Err(Errno::NOENT) => return Err(earlier()),
                    Err(e) => return Err(self.err("reading", &target, e.into())),
                }
                self.clear(parent.as_fd(), name_os, &comps)?;
                rustix::fs::linkat(
                    tparent_fd.as_fd(),
                    tname,
                    parent.as_fd(),
                    name_os,
                    AtFlags::empty(),
                )
                .map_err(|e| self.err("creating hard link", &comps, e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    tar::EntryType::Fifo => (FileType::Fifo, 0),
                    other => {
                        let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                        let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                        let ft = if other == tar::EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                self.clear(parent.as_fd(), name_os, &comps)?;
                match rustix::fs::mknodat(parent.as_fd(), name_os, file_type, Mode::empty(), dev) {
                    // A user namespace may make fifos and whiteouts, never devices: a
                    // pulled layer's are left out (its blob, which outputs use, keeps them).
                    Err(Errno::PERM)
                        if file_type != FileType::Fifo
                            && matches!(self.target, Target::Layer)
                            && crate::sandbox::userns::in_user_namespace() =>
                    {
                        self.stats.skipped_devices += 1;
                        self.stats.first_skipped_device.get_or_insert(display);
                        return Ok(());
                    }
                    r => r.map_err(|e| self.err("creating device", &comps, e.into()))?,
                }
                self.set_at(parent.as_fd(), name_os, &comps, &meta, true)?;
            }
            _ => {
                return Err(LayerError::Unsupported {
                    path: display,
                    kind: kind.as_byte(),
                })
            }
        }
        Ok(())
    }

    /// `.wh.NAME` and `.wh..wh..opq`.
    fn whiteout(
        &mut self,
        parent_comps: &[Vec<u8>],
        name: &[u8],
        meta: &Meta,
        display: &Path,
    ) -> Result<(), LayerError> {
        self.enter(parent_comps, display)?;
        let parent = self.top();
        if name == OPAQUE_MARKER {
            rustix::fs::fsetxattr(parent.as_fd(), opaque_xattr(), b"y", XattrFlags::empty())
                .map_err(|e| self.err("marking opaque", parent_comps, e.into()))?;
            self.stats.opaque_dirs += 1;
        } else if name.starts_with(b".wh..wh.") {
            // Other aufs metadata (`.wh..wh.plnk`, `.wh..wh.aufs`) has no overlay meaning.
        } else {
            let target = &name[WHITEOUT_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." {
                return Err(LayerError::UnsafePath {
                    path: display.to_path_buf(),
                    reason: "whiteout of an invalid name",
                });
            }
            let target_os = OsStr::from_bytes(target);
            let mut target_comps = parent_comps.to_vec();
            target_comps.push(target.to_vec());
            self.clear(parent.as_fd(), target_os, &target_comps)?;
            rustix::fs::mknodat(
                parent.as_fd(),
                target_os,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| self.err("creating whiteout", &target_comps, e.into()))?;
            let owner = Meta {
                mode: 0,
                xattrs: Vec::new(),
                ..*meta
            };
            self.set_at(parent.as_fd(), target_os, &target_comps, &owner, true)?;
            self.stats.whiteouts += 1;
        }
        Ok(())
    }

    /// Make `comps` the current path, creating missing directories (mode 0755) on the way:
    /// leave the open directories that are not on it, then go down into the rest. The entry
    /// then changes the deepest one.
    fn enter(&mut self, comps: &[Vec<u8>], display: &Path) -> Result<(), LayerError> {
        let common = self
            .open
            .iter()
            .zip(comps)
            .take_while(|(frame, comp)| frame.name == **comp)
            .count();
        self.leave(common)?;
        for (i, comp) in comps.iter().enumerate().skip(common) {
            let (fd, times) = match self.open_child(self.top(), &comps[..=i]) {
                Ok(fd) => (fd, Times::Back),
                Err(Resolve::Missing) => {
                    self.keep_times(comps)?;
                    let fd = make_dir(self.top(), comp)
                        .and_then(|fd| self.own_made_dir(fd))
                        .map_err(|e| self.parent_err(e, comps, display))?;
                    (fd, Times::Made)
                }
                Err(e) => return Err(self.parent_err(e, comps, display)),
            };
            self.push(Frame {
                name: comp.clone(),
                fd: Some(fd),
                times,
            });
        }
        self.keep_times(comps)
    }

    /// Before the deepest open directory changes: if the walk came back to it, read the
    /// times it was left with, to set them again when the walk leaves it. Only a directory
    /// that an entry changes costs this fstat, not every one that the walk goes through.
    fn keep_times(&mut self, comps: &[Vec<u8>]) -> Result<(), LayerError> {
        let Some(frame) = self.open.last_mut() else {
            return Ok(());
        };
        if let (Times::Back, Some(fd)) = (&frame.times, &frame.fd) {
            match times_of(fd.as_fd()) {
                Ok(times) => frame.times = Times::Set(times),
                Err(e) => return Err(self.err("reading", comps, e.into())),
            }
        }
        Ok(())
    }

    /// The deepest open directory, where the latest entry went.
    fn top(&self) -> BorrowedFd<'_> {
        match self.open.last() {
            None => self.root.as_fd(),
            Some(frame) => frame
                .fd
                .as_ref()
                .expect("the deepest open directory keeps its fd")
                .as_fd(),
        }
    }

    fn push(&mut self, frame: Frame) {
        self.open.push(frame);
        // The fds are a suffix of `open`: the deepest `OPEN_FDS` at most.
        if let Some(shallow) = self.open.len().checked_sub(OPEN_FDS + 1) {
            self.open[shallow].fd = None;
        }
    }

    /// Leave the open directories deeper than `depth`, setting their times (nothing more is
    /// created in them unless a later entry comes back), and make sure the deepest one left
    /// has an fd.
    fn leave(&mut self, depth: usize) -> Result<(), LayerError> {
        // Deepest first, while they have fds: all of them unless the path is deeper than
        // OPEN_FDS.
        while self.open.len() > depth {
            let frame = &self.open[self.open.len() - 1];
            let Some(fd) = &frame.fd else { break };
            if let Times::Set(times) = &frame.times {
                rustix::fs::futimens(fd, times)
                    .map_err(|e| self.open_err("setting times of", self.open.len(), e.into()))?;
            }
            self.open.pop();
        }
        // The rest gave up their fds, and so may have the new deepest one. Reopen them in one
        // walk down from the root, as deep as the deepest of them that needs its times set.
        let set = |frame: &Frame| matches!(frame.times, Times::Set(_));
        let mut walk = match self.open[depth..].iter().rposition(set) {
            Some(i) => depth + i + 1,
            None => 0,
        };
        if depth > 0 && self.open[depth - 1].fd.is_none() {
            walk = walk.max(depth);
        }
        let mut cur: Option<OwnedFd> = None;
        for i in 0..walk {
            let dir = cur.as_ref().map_or(self.root.as_fd(), |fd| fd.as_fd());
            let path: Components = self.open[..=i].iter().map(|f| f.name.clone()).collect();
            let fd = match self.open_child(dir, &path) {
                Ok(fd) => fd,
                Err(Resolve::Io(op, e)) => return Err(self.open_err(op, i + 1, e)),
                // Entries only remove or replace children of the deepest open directory, so
                // an open directory is still a directory where it was.
                Err(Resolve::Missing | Resolve::Symlink | Resolve::NotDir) => {
                    return Err(self.open_err("reopening", i + 1, Errno::NOTDIR.into()))
                }
            };
            if i >= depth {
                if let Times::Set(times) = &self.open[i].times {
                    rustix::fs::futimens(&fd, times)
                        .map_err(|e| self.open_err("setting times of", i + 1, e.into()))?;
                }
            } else if i + 1 == depth && self.open[i].fd.is_none() {
                let kept = fd
                    .try_clone()
                    .map_err(|e| self.open_err("reopening", i + 1, e))?;
                self.open[i].fd = Some(kept);
            }
            cur = Some(fd);
        }
        self.open.truncate(depth);
        Ok(())
    }

    /// Walk `comps` from the root one component at a time, never following a symlink (an
    /// archive for ADD: following them inside the root).
    fn resolve(&self, comps: &[Vec<u8>]) -> Result<OwnedFd, Resolve> {
        if let Target::Extract { root, .. } = &self.target {
            let path = utf8_path(comps)?;
            return root
                .open_in(&path, OFlags::RDONLY | OFlags::DIRECTORY)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOENT) => Resolve::Missing,
                    Some(libc::ENOTDIR) => Resolve::NotDir,
                    _ => Resolve::Io("opening directory", e),
                });
        }
        let mut cur = self
            .root
            .try_clone()
            .map_err(|e| Resolve::Io("opening", e))?;
        for comp in comps {
            cur = open_dir(cur.as_fd(), comp)?;
        }
        Ok(cur)
    }

    /// The last of `path`, a directory beneath `dir`, which holds the rest of it. A symlink
    /// there fails a layer; for ADD it is followed inside the root, and what it names is
    /// made when missing (as the chrooted untar's MkdirAll would).
    fn open_child(&self, dir: BorrowedFd<'_>, path: &[Vec<u8>]) -> Result<OwnedFd, Resolve> {
        let name = path.last().map_or(&[][..], |n| n.as_slice());
        match (open_dir(dir, name), &self.target) {
            (Err(Resolve::Symlink), Target::Extract { root, owner }) => {
                let rel = utf8_path(path)?;
                let found = root
                    .ensure(
                        &rel,
                        image_root::Kind::Dir,
                        0o755,
                        image_root::Created {
                            owner: *owner,
                            ..Default::default()
                        },
                        &mut Vec::new(),
                    )
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::ENOTDIR) | Some(libc::EEXIST) => Resolve::NotDir,
                        _ => Resolve::Io("resolving", e),
                    })?;
                rustix::fs::openat(&found, ".", DIR_FLAGS, Mode::empty())
                    .map_err(|e| Resolve::Io("opening directory", e.into()))
            }
            (other, _) => other,
        }
    }

    /// A directory made for a deeper path: for ADD, owned by `--chown`'s user.
    fn own_made_dir(&self, fd: OwnedFd) -> Result<OwnedFd, Resolve> {
        if let Target::Extract {
            owner: Some((uid, gid)),
            ..
        } = self.target
        {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| Resolve::Io("changing owner of", e.into()))?;
        }
        Ok(fd)
    }

    /// An entry or link name as components: a layer refuses `/` and `..`; an ADD archive
    /// takes them inside the destination and refuses only a climb out of it.
    fn normalize(&self, raw: &[u8]) -> Result<Components, &'static str> {
        match self.target {
            Target::Layer => normalize(raw),
            Target::Extract { .. } => {
                let mut comps: Components = Vec::new();
                for comp in raw.split(|b| *b == b'/') {
                    match comp {
                        b"" | b"." => {}
                        b".." => {
                            comps.pop().ok_or("`..` climbs out of the destination")?;
                        }
                        c => comps.push(c.to_vec()),
                    }
                }
                Ok(comps)
            }
        }
    }

    /// Make room for a non-directory entry at `name`: remove whatever an earlier entry put
    /// there (a later entry of a tar replaces an earlier one).
    fn clear(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        comps: &Components,
    ) -> Result<(), LayerError> {
        if stat_nofollow(parent, name).is_some() {
            self.remove_existing(parent, name, comps)?;
        }
        Ok(())
    }

    /// Remove `name`, a child of the deepest open directory (so no open directory is in
    /// what goes).
    fn remove_existing(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        comps: &Components,
    ) -> Result<(), LayerError> {
        if stat_nofollow(parent, name) == Some(FileType::Directory) {
            remove_tree(parent, name).map_err(|e| self.err("removing", comps, e.into()))
        } else {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(|e| self.err("removing", comps, e.into()))
        }
    }

    /// Owner, then mode (chown clears setuid/setgid), then xattrs (chown also clears file
    /// capabilities), through an open fd.
    fn set_owner_mode_xattrs(
        &self,
        fd: BorrowedFd<'_>,
        comps: &[Vec<u8>],
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let owned = rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        );
        self.owned(owned, comps)?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))
            .map_err(|e| self.err("setting mode of", comps, e.into()))?;
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, OsStr::from_bytes(name), value, XattrFlags::empty())
                .map_err(|e| self.err("setting xattr of", comps, e.into()))?;
        }
        Ok(())
    }

    /// Owner, mode and times of a symlink, device or fifo, by name beneath `parent`. The
    /// entry was just created by this thread, so the name cannot have become a symlink
    /// (for `chmodat`, which follows one) in between.
    fn set_at(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        comps: &[Vec<u8>],
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), LayerError> {
        let owned = rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        self.owned(owned, comps)?;
        if chmod {
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(meta.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| self.err("setting mode of", comps, e.into()))?;
        }
        rustix::fs::utimensat(parent, name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err("setting times of", comps, e.into()))
    }

    /// Leave every open directory, and set the root's times last.
    fn finish(mut self) -> Result<ApplyStats, LayerError> {
        self.leave(0)?;
        if let Some(times) = &self.root_times {
            rustix::fs::futimens(&self.root, times)
                .map_err(|e| self.err("setting times of", &[], e.into()))?;
        }
        Ok(self.stats)
    }

    /// The result of a chown. Rootless with a single id (design.md "Rootless"), a pulled
    /// layer's files of other owners stay the user's (0 inside), as podman's
    /// `ignore_chown_errors`: the blob, which outputs use, keeps the real owners. An ADD
    /// into an image root fails (with the hint the error chain adds).
    fn owned(&self, r: rustix::io::Result<()>, comps: &[Vec<u8>]) -> Result<(), LayerError> {
        match r {
            Err(Errno::INVAL)
                if matches!(self.target, Target::Layer)
                    && matches!(
                        crate::sandbox::userns::current(),
                        crate::sandbox::userns::Mode::SingleId { .. }
                    ) =>
            {
                Ok(())
            }
            r => r.map_err(|e| self.err("changing owner of", comps, e.into())),
        }
    }

    fn err(&self, op: &'static str, comps: &[Vec<u8>], e: io::Error) -> LayerError {
        LayerError::io(op, self.dest.join(join(comps)), e)
    }

    /// An error going down `comps`, the parent path of the entry `display`.
    fn parent_err(&self, e: Resolve, comps: &[Vec<u8>], display: &Path) -> LayerError {
        let unsafe_path = |reason| LayerError::UnsafePath {
            path: display.to_path_buf(),
            reason,
        };
        match e {
            Resolve::Symlink => unsafe_path("its parent path goes through a symlink"),
            Resolve::NotDir => unsafe_path("its parent path goes through a non-directory"),
            Resolve::Missing => self.err("opening directory", comps, Errno::NOENT.into()),
            Resolve::Io(op, e) => self.err(op, comps, e),
        }
    }

    /// An error about the open directory at `depth` (1 is the outermost).
    fn open_err(&self, op: &'static str, depth: usize, e: io::Error) -> LayerError {
        let mut path = self.dest.clone();
        for frame in &self.open[..depth] {
            path.push(OsStr::from_bytes(&frame.name));
        }
        LayerError::io(op, path, e)
    }
}

enum Resolve {
    Missing,
    Symlink,
    NotDir,
    Io(&'static str, io::Error),
}

/// `comps` as a path for [`Root`], which takes UTF-8; other names cannot be followed.
fn utf8_path(comps: &[Vec<u8>]) -> Result<String, Resolve> {
    let path = join(comps);
    path.to_str().map(str::to_string).ok_or(Resolve::Symlink)
}

fn join(comps: &[Vec<u8>]) -> PathBuf {
    let mut p = PathBuf::new();
    for c in comps {
        p.push(OsStr::from_bytes(c));
    }
    p
}

/// Split a tar name into components; refuse absolute names and `..`.
fn normalize(raw: &[u8]) -> Result<Components, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut comps = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("`..` component"),
            c => comps.push(c.to_vec()),
        }
    }
    Ok(comps)
}

/// A numeric header field as Go's archive/tar (and so BuildKit and docker) reads it: a field
/// of only NULs and spaces is 0, not an error.
pub fn lenient(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        other => other,
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, display: &Path) -> Result<Meta, LayerError> {
    let header = entry.header();
    let field = |what: &'static str, r: io::Result<u64>| {
        r.map_err(|e| {
            LayerError::Read(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("entry `{}`: bad {what} field: {e}", display.display()),
            ))
        })
    };
    let old = header.as_old();
    let mode = field("mode", lenient(header.mode().map(u64::from), &old.mode))? as u32;
    let uid = field("uid", lenient(header.uid(), &old.uid))?;
    let gid = field("gid", lenient(header.gid(), &old.gid))?;
    let mut mtime = field("mtime", lenient(header.mtime(), &old.mtime))? as i64;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(LayerError::Read)? {
        for ext in pax {
            let ext = ext.map_err(LayerError::Read)?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                // PAX times are decimal seconds, possibly fractional or negative.
                let value = String::from_utf8_lossy(ext.value_bytes());
                let secs = value.split('.').next().unwrap_or("");
                if let Ok(secs) = secs.parse::<i64>() {
                    mtime = secs;
                }
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if keep_xattr(name) {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    let id = |what: &'static str, v: u64| {
        u32::try_from(v).map_err(|_| LayerError::UnsafePath {
            path: display.to_path_buf(),
            reason: what,
        })
    };
    Ok(Meta {
        mode,
        uid: id("uid out of range", uid)?,
        gid: id("gid out of range", gid)?,
        mtime,
        xattrs,
    })
}

fn times(mtime: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn stat_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> Option<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| FileType::from_raw_mode(st.st_mode))
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// One component of a path: the directory `name` beneath `dir`, opened without following a
/// symlink.
fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Resolve> {
    let name = OsStr::from_bytes(name);
    match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) => Err(Resolve::Missing),
        Err(Errno::LOOP) | Err(Errno::NOTDIR) => Err(match stat_nofollow(dir, name) {
            Some(FileType::Symlink) => Resolve::Symlink,
            _ => Resolve::NotDir,
        }),
        Err(e) => Err(Resolve::Io("opening directory", e.into())),
    }
}

/// Make the missing directory `name` beneath `dir`, for a deeper path, and open it.
fn make_dir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Resolve> {
    let name = OsStr::from_bytes(name);
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
        .map_err(|e| Resolve::Io("creating directory", e.into()))?;
    // mkdirat applies the umask; implied directories are 0755 like docker's.
    let fd = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
        .map_err(|e| Resolve::Io("opening directory", e.into()))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
        .map_err(|e| Resolve::Io("setting mode of", e.into()))?;
    Ok(fd)
}

/// The access and modification times of `fd`, to give back after changing its contents.
fn times_of(fd: BorrowedFd<'_>) -> Result<Timestamps, Errno> {
    let st = rustix::fs::fstat(fd)?;
    let at = |sec, nsec| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    Ok(Timestamps {
        last_access: at(st.st_atime as _, st.st_atime_nsec as _),
        last_modification: at(st.st_mtime as _, st.st_mtime_nsec as _),
    })
}

/// `rm -r` of `name` beneath `parent`, never following symlinks.
fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            children.push((child.to_vec(), entry.file_type()));
        }
    }
    for (child, ft) in children {
        let child = OsStr::from_bytes(&child);
        if ft == FileType::Directory {
            remove_tree(fd.as_fd(), child)?;
        } else {
            rustix::fs::unlinkat(&fd, child, AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// A reader that hashes what passes through it, for verifying a blob while applying it.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Digest,
    read: u64,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            expected,
            read: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Read whatever the consumer left unread, then compare the digest of all the bytes;
    /// returns how many there were.
    pub fn finish(mut self) -> Result<u64, LayerError> {
        io::copy(&mut self, &mut io::sink()).map_err(LayerError::Read)?;
        let actual = Digest::from_raw(&self.hasher.finalize());
        if actual == self.expected {
            Ok(self.read)
        } else {
            Err(LayerError::DigestMismatch {
                expected: self.expected,
                actual,
            })
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::snapshot::{snapshot, snapshot_blob, SnapshotOptions};
    use crate::layer::testutil::*;
    use crate::layer::Compression;
    use pretty_assertions::assert_eq;
    use std::fs;
    use std::io::Write;

    #[test]
    #[ignore = "needs root"]
    fn round_trip_reproduces_the_tree() {
        crate::layer::testutil::needs_root();
        let tmp = tempfile::tempdir().unwrap();
        let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dest).unwrap();
        rich_tree(&src);
        let mut blob = Vec::new();
        let digests = snapshot_blob(
            &src,
            &SnapshotOptions::default(),
            Compression::Gzip,
            None,
            &mut blob,
        )
        .unwrap();
        let mut reader = VerifyingReader::new(&blob[..], digests.digest.clone());
        let stats = apply(&mut reader, &dest).unwrap();
        reader.finish().unwrap();
        assert_eq!(stats.whiteouts, 1);
        assert_eq!(stats.opaque_dirs, 1);
        assert_eq!(list_dir(&dest, true), list_dir(&src, true));
        // And the applied tree snapshots to the very same layer.
        let (again, _, _) = snapshot(&dest, &SnapshotOptions::default(), io::sink()).unwrap();
        assert_eq!(again, digests.diff_id);
    }

    #[test]
    fn verifying_reader_reports_a_mismatch() {
        let blob = b"some blob bytes";
        let mut r = VerifyingReader::new(&blob[..], Digest::of(blob));
        let mut first = [0u8; 4];
        r.read_exact(&mut first).unwrap();
        // finish() reads what the consumer left.
        r.finish().unwrap();
        let wrong = Digest::of(b"other");
        let err = VerifyingReader::new(&blob[..], wrong).finish().unwrap_err();
        assert!(matches!(err, LayerError::DigestMismatch { .. }), "{err}");
    }

    /// A raw tar entry for hostile archives: names are copied verbatim (the tar crate's
    /// builder refuses `..` and absolute names, which is exactly what these tests need).
    #[derive(Clone, Copy)]
    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Char(&'a str, u32, u32),
    }

    fn raw_tar(entries: &[E<'_>]) -> Vec<u8> {
        raw_tar_at(&entries.iter().map(|e| (*e, 0)).collect::<Vec<_>>())
    }

    /// [`raw_tar`] with each entry's mtime.
    fn raw_tar_at(entries: &[(E<'_>, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (e, mtime) in entries {
            let mut h = tar::Header::new_ustar();
            let (name, kind, link, data): (&str, _, Option<&str>, &[u8]) = match e {
                E::File(n, d) => (n, tar::EntryType::Regular, None, d),
                E::Dir(n) => (n, tar::EntryType::Directory, None, b""),
                E::Symlink(n, l) => (n, tar::EntryType::Symlink, Some(l), b""),
                E::Hardlink(n, l) => (n, tar::EntryType::Link, Some(l), b""),
                E::Char(n, ma, mi) => {
                    h.set_device_major(*ma).unwrap();
                    h.set_device_minor(*mi).unwrap();
                    (n, tar::EntryType::Char, None, b"")
                }
            };
            let ustar = h.as_ustar_mut().unwrap();
            ustar.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                ustar.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(*mtime);
            h.set_size(data.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut c = crate::layer::Compressor::new(Vec::new(), Compression::Gzip, None).unwrap();
        c.write_all(data).unwrap();
        c.finish().unwrap()
    }

    /// Apply `blob` into `base/dest` next to a sentinel `base/outside`; return the result
    /// after checking that nothing outside `dest` changed.
    fn apply_hostile(base: &Path, blob: &[u8]) -> Result<ApplyStats, LayerError> {
        let dest = base.join("dest");
        let outside = base.join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "secret").unwrap();
        let before = list_dir(base, true);
        let before = before
            .lines()
            .filter(|l| !l.contains(" dest"))
            .collect::<Vec<_>>()
            .join("\n");
        let result = apply(blob, &dest);
        let after = list_dir(base, true);
        let after = after
            .lines()
            .filter(|l| !l.contains(" dest"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(before, after, "something outside dest changed");
        result
    }

    /// What each refused hostile case must be refused for.
    fn expected_error(case: &str) -> &'static str {
        match case {
            "dotdot" | "dotdot-inner" | "device-dotdot" | "hardlink-dotdot" => "`..` component",
            "absolute" | "hardlink-host-file" => "absolute path",
            "parent-is-a-file" => "goes through a non-directory",
            "whiteout-dotdot" => "whiteout of an invalid name",
            "hardlink-missing" | "hardlink-through-symlink" => "does not name an earlier entry",
            "truncated-in-data" => "data truncated",
            "truncated-at-header" | "empty" => "no end-of-archive marker",
            "truncated-gzip" => "incomplete deflate stream",
            "gzip-bad-crc" => "checksum",
            "garbage" => "reading layer",
            _ => "goes through a symlink",
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn hostile_tars_never_write_outside_dest() {
        crate::layer::testutil::needs_root();
        let tmp = tempfile::tempdir().unwrap();
        let sentinel = tmp.path().join("case").join("outside");
        let abs = sentinel.to_str().unwrap().to_string();
        let abs_pwned = format!("{abs}/pwned");
        let through = |p: &str| format!("{}/{p}", "a");
        let a_pwned = through("pwned");
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            (
                "dotdot",
                raw_tar(&[E::File("../outside/pwned", b"x")]),
                false,
            ),
            (
                "dotdot-inner",
                raw_tar(&[E::File("./a/../../outside/pwned", b"x")]),
                false,
            ),
            ("absolute", raw_tar(&[E::File(&abs_pwned, b"x")]), false),
            (
                "symlink-then-write-through",
                raw_tar(&[E::Symlink("a", &abs), E::File(&a_pwned, b"x")]),
                false,
            ),
            (
                "symlink-then-dir-through",
                raw_tar(&[E::Symlink("a", &abs), E::Dir("a/sub/")]),
                false,
            ),
            (
                "symlink-to-dotdot",
                raw_tar(&[E::Symlink("up", ".."), E::File("up/outside/pwned", b"x")]),
                false,
            ),
            (
                "whiteout-through-symlink",
                raw_tar(&[E::Symlink("a", &abs), E::File("a/.wh.secret", b"")]),
                false,
            ),
            (
                "opaque-through-symlink",
                raw_tar(&[E::Symlink("a", &abs), E::File("a/.wh..wh..opq", b"")]),
                false,
            ),
            ("whiteout-dotdot", raw_tar(&[E::File(".wh..", b"")]), false),
            (
                "hardlink-host-file",
                raw_tar(&[E::Hardlink("l", "/etc/passwd")]),
                false,
            ),
            (
                "hardlink-dotdot",
                raw_tar(&[E::Hardlink("l", "../outside/secret")]),
                false,
            ),
            (
                "hardlink-missing",
                raw_tar(&[E::Hardlink("l", "missing")]),
                false,
            ),
            (
                "hardlink-through-symlink",
                raw_tar(&[E::Symlink("s", &abs), E::Hardlink("l", "s/secret")]),
                false,
            ),
            (
                "device-dotdot",
                raw_tar(&[E::Char("../outside/null", 1, 3)]),
                false,
            ),
            (
                "parent-is-a-file",
                raw_tar(&[E::File("f", b"x"), E::File("f/g", b"x")]),
                false,
            ),
            // Neutralized rather than refused: the later entry replaces the symlink itself.
            (
                "file-over-symlink",
                raw_tar(&[
                    E::Symlink("f", &format!("{abs}/secret")),
                    E::File("f", b"pwned"),
                ]),
                true,
            ),
            (
                "hardlink-to-symlink-then-overwrite",
                raw_tar(&[
                    E::Symlink("s", &format!("{abs}/secret")),
                    E::Hardlink("l", "s"),
                    E::File("l", b"pwned"),
                ]),
                true,
            ),
            (
                "dir-over-symlink",
                raw_tar(&[E::Symlink("d", &abs), E::Dir("d/"), E::File("d/x", b"x")]),
                true,
            ),
        ];
        let good = raw_tar(&[E::Dir("dir/"), E::File("dir/file", &[7u8; 3000])]);
        let gz = gzip(&good);
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 0xff;
        let mut cases = cases;
        cases.extend([
            ("truncated-in-data", good[..1200].to_vec(), false),
            (
                "truncated-at-header",
                good[..512 * 2 + 3072].to_vec(),
                false,
            ),
            ("truncated-gzip", gz[..gz.len() / 2].to_vec(), false),
            ("gzip-bad-crc", bad_crc, false),
            ("garbage", vec![0x5a; 4096], false),
            ("empty", Vec::new(), false),
            ("good-gzip", gz.clone(), true),
        ]);
        for (i, (name, blob, ok)) in cases.iter().enumerate() {
            let base = tmp.path().join("case");
            if base.exists() {
                fs::remove_dir_all(&base).unwrap();
            }
            fs::create_dir(&base).unwrap();
            let result = apply_hostile(&base, blob);
            assert_eq!(result.is_ok(), *ok, "case {i} {name}: {result:?}");
            if let Err(e) = result {
                let want = expected_error(name);
                assert!(
                    e.to_string().contains(want),
                    "case {name}: `{e}` lacks `{want}`"
                );
            }
        }
        // The neutralized cases leave ordinary files in dest.
        let base = tmp.path().join("case");
        fs::remove_dir_all(&base).unwrap();
        fs::create_dir(&base).unwrap();
        apply_hostile(
            &base,
            &raw_tar(&[
                E::Symlink("f", &format!("{abs}/secret")),
                E::File("f", b"pwned"),
            ]),
        )
        .unwrap();
        assert_eq!(fs::read(base.join("dest/f")).unwrap(), b"pwned");
        assert_eq!(fs::read(base.join("outside/secret")).unwrap(), b"secret");
    }

    #[test]
    #[ignore = "needs root"]
    fn whiteouts_and_opaque_markers_become_overlay_format() {
        crate::layer::testutil::needs_root();
        let tmp = tempfile::tempdir().unwrap();
        let blob = raw_tar(&[
            E::File(".wh.gone", b""),
            E::Dir("dir/"),
            E::File("dir/.wh..wh..opq", b""),
            E::File("dir/kept", b"k"),
            E::File("implied/parent/.wh.x", b""),
        ]);
        let stats = apply(&blob[..], tmp.path()).unwrap();
        assert_eq!(stats.whiteouts, 2);
        assert_eq!(stats.opaque_dirs, 1);
        assert_eq!(
            list_dir(tmp.path(), false),
            "\
char gone dev=0,0 mode=0 0:0 xattrs[]
char implied/parent/x dev=0,0 mode=0 0:0 xattrs[]
dir dir  mode=644 0:0 xattrs[trusted.overlay.opaque=\"y\"]
dir implied  mode=755 0:0 xattrs[]
dir implied/parent  mode=755 0:0 xattrs[]
file dir/kept size=1 nlink=1 sha=8254c329a928 mode=644 0:0 xattrs[]"
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn later_entries_replace_earlier_ones() {
        crate::layer::testutil::needs_root();
        let tmp = tempfile::tempdir().unwrap();
        let blob = raw_tar(&[
            E::Dir("x/"),
            E::File("x/inner", b"1"),
            E::File("x", b"now a file"),
            E::File("y", b"old"),
            E::Symlink("y", "target"),
        ]);
        apply(&blob[..], tmp.path()).unwrap();
        assert_eq!(
            list_dir(tmp.path(), false),
            "\
file x size=10 nlink=1 sha=92af885f330e mode=644 0:0 xattrs[]
symlink y -> target mode=777 0:0 xattrs[]"
        );
    }

    /// Hard links are checked against what is in `dest` when they come: every way a path
    /// can be there without being an earlier entry, or be gone although it was one.
    #[test]
    #[ignore = "needs root"]
    fn hard_links_name_only_what_earlier_entries_left() {
        crate::layer::testutil::needs_root();
        use std::os::unix::fs::MetadataExt;
        let refused: &[(&str, &[E<'_>], &str)] = &[
            (
                "implied-dir",
                &[E::File("a/b/f", b"x"), E::Hardlink("l", "a")],
                "names a directory",
            ),
            (
                "implied-by-itself",
                &[E::Hardlink("a/l", "a")],
                "names a directory",
            ),
            (
                "dir",
                &[E::Dir("d/"), E::Hardlink("l", "d/")],
                "names a directory",
            ),
            (
                "removed-with-its-dir",
                &[
                    E::Dir("d/"),
                    E::File("d/f", b"x"),
                    E::File("d", b"now a file"),
                    E::Hardlink("l", "d/f"),
                ],
                "does not name an earlier entry",
            ),
            (
                "whited-out",
                &[
                    E::File("f", b"x"),
                    E::File(".wh.f", b""),
                    E::Hardlink("l", "f"),
                ],
                "names a whiteout",
            ),
            // A 0/0 char device is a whiteout in overlay format, whoever made it.
            (
                "whiteout-device",
                &[E::Char("f", 0, 0), E::Hardlink("l", "f")],
                "names a whiteout",
            ),
            (
                "whiteout-name",
                &[E::File(".wh.f", b""), E::Hardlink("l", ".wh.f")],
                "does not name an earlier entry",
            ),
            ("root", &[E::Hardlink("l", "./")], "names the layer root"),
            (
                "itself",
                &[E::Hardlink("l", "l")],
                "does not name an earlier entry",
            ),
            (
                "through-a-file",
                &[E::File("f", b"x"), E::Hardlink("l", "f/x")],
                "does not name an earlier entry",
            ),
            (
                "through-a-symlink-inside",
                &[
                    E::File("d/x", b"x"),
                    E::Symlink("s", "d"),
                    E::Hardlink("l", "s/x"),
                ],
                "does not name an earlier entry",
            ),
            (
                "dotdot-inside",
                &[E::File("f", b"x"), E::Hardlink("l", "a/../f")],
                "`..` component",
            ),
        ];
        let linked: &[(&str, &[E<'_>])] = &[
            (
                "in-implied-dirs",
                &[E::File("a/b/f", b"x"), E::Hardlink("l", "a/b/f")],
            ),
            (
                "dot-components",
                &[E::File("a/f", b"x"), E::Hardlink("l", "./a/./f")],
            ),
            (
                "replaced",
                &[
                    E::File("f", b"1"),
                    E::File("f", b"2"),
                    E::Hardlink("l", "f"),
                ],
            ),
            ("device", &[E::Char("f", 1, 3), E::Hardlink("l", "f")]),
        ];
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("case");
        let fresh = || {
            if base.exists() {
                fs::remove_dir_all(&base).unwrap();
            }
            fs::create_dir(&base).unwrap();
        };
        for (name, entries, want) in refused {
            fresh();
            let err = apply_hostile(&base, &raw_tar(entries)).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "case {name}: `{err}` lacks `{want}`"
            );
        }
        for (name, entries) in linked {
            fresh();
            apply_hostile(&base, &raw_tar(entries)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let nlink = fs::symlink_metadata(base.join("dest/l")).unwrap().nlink();
            assert_eq!(nlink, 2, "case {name}");
        }
    }

    fn mtime(path: &Path) -> i64 {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(path).unwrap().mtime()
    }

    #[test]
    #[ignore = "needs root"]
    fn directory_times_survive_coming_back_to_a_directory() {
        crate::layer::testutil::needs_root();
        let tmp = tempfile::tempdir().unwrap();
        let blob = raw_tar_at(&[
            (E::Dir("d/"), 100),
            (E::File("d/a", b"a"), 5),
            (E::Dir("e/"), 200),
            // Back into `d` after leaving it, and a directory made for a deeper path in it.
            (E::File("d/b", b"b"), 5),
            (E::File("d/implied/x", b"x"), 5),
            (E::Dir("./"), 300),
            (E::File("top", b"t"), 5),
            // A later entry for the same directory wins.
            (E::Dir("e/"), 250),
            (E::File("e/late", b""), 5),
            (E::Dir("d/sub/"), 400),
            // A directory's entry after its contents.
            (E::File("f/x", b"x"), 5),
            (E::File("f/y", b"y"), 5),
            (E::Dir("f/"), 500),
            (E::File("d/sub/deep/z", b"z"), 5),
            // Back into `g` only to make a directory in it on the way to a deeper one.
            (E::Dir("g/"), 600),
            (E::File("g/x", b"x"), 5),
            (E::Dir("h/"), 700),
            (E::File("g/implied/deeper/y", b"y"), 5),
        ]);
        apply(&blob[..], tmp.path()).unwrap();
        let root = tmp.path();
        assert_eq!(mtime(&root.join("d")), 100);
        assert_eq!(mtime(&root.join("e")), 250);
        assert_eq!(mtime(&root.join("d/sub")), 400);
        assert_eq!(mtime(&root.join("f")), 500);
        assert_eq!(mtime(&root.join("g")), 600);
        assert_eq!(mtime(&root.join("h")), 700);
        assert_eq!(mtime(&root.join("d/b")), 5);
        assert_eq!(mtime(root), 300);
    }

    #[test]
    #[ignore = "needs root"]
    fn directory_times_survive_overwrites_and_removals() {
        crate::layer::testutil::needs_root();
        let tmp = tempfile::tempdir().unwrap();
        let blob = raw_tar_at(&[
            (E::Dir("d/"), 100),
            (E::File("d/f", b"1"), 5),
            (E::Dir("d/sub/"), 150),
            (E::File("d/sub/x", b"x"), 5),
            (E::Dir("d/gone/"), 160),
            (E::File("d/gone/x", b"x"), 5),
            // Replaced while `d` is still the current directory.
            (E::File("d/f", b"2"), 5),
            (E::Dir("e/"), 200),
            (E::Dir("e/sub/"), 210),
            // And after the walk left it: an overwrite, a directory replaced by a file, a
            // whiteout over a directory and over nothing, an opaque marker, a hard link, a
            // symlink over a file, a device.
            (E::File("d/f", b"3"), 5),
            (E::File("d/sub", b"now a file"), 5),
            (E::File("d/.wh.gone", b""), 5),
            (E::File("d/.wh.never", b""), 5),
            (E::File("d/.wh..wh..opq", b""), 5),
            (E::Hardlink("d/link", "d/f"), 5),
            (E::Symlink("d/f", "elsewhere"), 5),
            (E::Char("d/null", 1, 3), 5),
            (E::Dir("d/sub/"), 170),
            (E::File("e/.wh.sub", b""), 5),
        ]);
        apply(&blob[..], tmp.path()).unwrap();
        let root = tmp.path();
        assert_eq!(mtime(&root.join("d")), 100);
        assert_eq!(mtime(&root.join("d/sub")), 170);
        assert_eq!(mtime(&root.join("e")), 200);
        assert_eq!(
            list_dir(root, false),
            "\
char d/gone dev=0,0 mode=0 0:0 xattrs[]
char d/never dev=0,0 mode=0 0:0 xattrs[]
char d/null dev=1,3 mode=644 0:0 xattrs[]
char e/sub dev=0,0 mode=0 0:0 xattrs[]
dir d  mode=644 0:0 xattrs[trusted.overlay.opaque=\"y\"]
dir d/sub  mode=644 0:0 xattrs[]
dir e  mode=644 0:0 xattrs[]
file d/link size=1 nlink=1 sha=4e07408562be mode=644 0:0 xattrs[]
symlink d/f -> elsewhere mode=777 0:0 xattrs[]"
        );
    }

    /// A path deeper than any sane layer's, with a directory entry at every level, left and
    /// come back to at several depths.
    #[test]
    #[ignore = "needs root"]
    fn directory_times_survive_deep_paths() {
        crate::layer::testutil::needs_root();
        const DEPTH: usize = 100;
        let tmp = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..DEPTH).map(|i| format!("{}", i % 10)).collect();
        let dir = |depth: usize| names[..depth].join("/") + "/";
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind, mtime| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o755);
            h.set_mtime(mtime);
            h.set_size(0);
            builder.append_data(&mut h, path, io::empty()).unwrap();
        };
        for depth in 1..=DEPTH {
            add(&dir(depth), tar::EntryType::Directory, depth as u64);
        }
        let file = tar::EntryType::Regular;
        add(&(dir(DEPTH) + "f"), file, 5);
        add(&(dir(DEPTH / 2) + "g"), file, 5);
        add(&(dir(3) + "h"), file, 5);
        add("z/", tar::EntryType::Directory, 7);
        add(&(dir(DEPTH) + "late"), file, 5);
        add(&(dir(DEPTH - 1) + "later"), file, 5);
        let blob = builder.into_inner().unwrap();
        // apply's loop, checking the open fds after every entry.
        let mut applier = Applier::new(tmp.path(), Target::Layer).unwrap();
        let mut most = 0;
        for entry in tar::Archive::new(&blob[..]).entries().unwrap() {
            applier.entry(&mut entry.unwrap()).unwrap();
            let fds: Vec<bool> = applier.open.iter().map(|f| f.fd.is_some()).collect();
            let open = fds.iter().filter(|fd| **fd).count();
            assert!(open <= OPEN_FDS, "{open} fds open");
            assert!(fds.ends_with(&vec![true; open]), "not the deepest: {fds:?}");
            assert!(fds.last().is_none_or(|fd| *fd), "the deepest has none");
            most = most.max(open);
        }
        assert_eq!(most, OPEN_FDS);
        applier.finish().unwrap();
        for depth in 1..=DEPTH {
            let path = tmp.path().join(dir(depth));
            assert_eq!(mtime(&path), depth as i64, "{}", path.display());
        }
        assert_eq!(mtime(&tmp.path().join("z")), 7);
    }
}

/// Interoperability with GNU tar, the reference implementation of PAX and xattr records.
#[cfg(test)]
mod gnu_tar_tests {
    use super::*;
    use crate::layer::snapshot::{snapshot, SnapshotOptions};
    use crate::layer::testutil::*;
    use pretty_assertions::assert_eq;
    use std::fs;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// rich_tree without the overlay markers, which GNU tar knows nothing about.
    fn plain_tree(root: &Path) {
        rich_tree(root);
        fs::remove_file(root.join("home/deleted")).unwrap();
        rustix::fs::lremovexattr(root.join("opaque"), "trusted.overlay.opaque").unwrap();
        set_all_mtimes(root, 1_000_000);
    }

    fn gnu_tar() -> bool {
        Command::new("tar").arg("--version").output().is_ok()
    }

    #[test]
    #[ignore = "needs root"]
    fn gnu_tar_extracts_our_layers() {
        crate::layer::testutil::needs_root();
        if !crate::layer::testutil::require(gnu_tar(), "GNU tar") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&out).unwrap();
        plain_tree(&src);
        let (_, _, bytes) = snapshot(&src, &SnapshotOptions::default(), Vec::new()).unwrap();
        let mut child = Command::new("tar")
            .args([
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-xpf",
                "-",
                "-C",
            ])
            .arg(&out)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        // GNU tar restores directory mtimes too, so the listings match exactly.
        assert_eq!(list_dir(&out, true), list_dir(&src, true));
    }

    #[test]
    #[ignore = "needs root"]
    fn we_apply_gnu_tar_pax_archives() {
        crate::layer::testutil::needs_root();
        if !crate::layer::testutil::require(gnu_tar(), "GNU tar") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
        fs::create_dir(&src).unwrap();
        fs::create_dir(&out).unwrap();
        plain_tree(&src);
        let made = Command::new("tar")
            .args([
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "--format=pax",
                "-cf",
                "-",
                "-C",
            ])
            .arg(&src)
            .arg(".")
            .output()
            .unwrap();
        assert!(made.status.success());
        apply(&made.stdout[..], &out).unwrap();
        assert_eq!(list_dir(&out, true), list_dir(&src, true));
    }
}

#[cfg(test)]
mod lenient_tests {
    use super::lenient;
    use std::io;

    #[test]
    fn blank_numeric_fields_read_as_zero_like_go() {
        let bad = || Err(io::Error::new(io::ErrorKind::InvalidData, "not a number"));
        assert_eq!(lenient(bad(), &[0; 8]).unwrap(), 0);
        assert_eq!(lenient(bad(), b"       \0").unwrap(), 0);
        assert!(lenient(bad(), b"12x4567\0").is_err());
        assert_eq!(lenient(Ok(7), b"0000007\0").unwrap(), 7);
    }
}
