//! COPY/ADD into an image root, with BuildKit's semantics (dockerfile2llb + fsutil's copy).
//!
//! Runs inside the sandbox helper with the destination root at `dest_root` (possibly the
//! overlay's merged dir) and the source root at `src_root` (the build context, or another
//! stage's rootfs). Rules, as BuildKit applies them:
//! - a directory source copies its contents; a file source onto an existing directory
//!   (or a destination ending in `/`) lands inside it under its base name;
//! - several source arguments need a destination ending in `/`;
//! - wildcards follow Go's filepath.Match; one that matches nothing copies nothing
//!   (AllowEmptyWildcard), a missing literal source is `"/x": not found`;
//! - sources are clamped into `src_root`; a top-level source symlink is dereferenced
//!   inside `src_root`, nested symlinks are copied as links;
//! - the destination is resolved inside `dest_root` following the image's symlinks there
//!   (`/etc -> /x` resolves to `dest_root/x`); nested destination entries are never
//!   written through a symlink;
//! - missing parents are created 0755 (an octal `--chmod`'s permission bits instead),
//!   owned by the `--chown` user (else root), and only when something is copied: a
//!   wildcard that matches nothing creates nothing;
//! - a unix socket becomes an empty regular file with its permission bits (BuildKit's
//!   context transfer cannot send a socket);
//! - ownership becomes 0:0 for context sources (BuildKit's file sync resets it), is kept
//!   for stage sources (`preserve_owner`), and `--chown` overrides both; modes are kept
//!   unless `--chmod`; mtimes are kept; hard links inside the copied set stay links;
//!   `user.*` and `security.capability` xattrs are copied;
//! - ADD extracts local tar archives (plain, gzip, bzip2, xz, zstd; detected by content)
//!   into the destination directory, refusing entries that would leave it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, CWD};
use serde::{Deserialize, Serialize};

use crate::context::digest::base_name;
use crate::context::fstype::LocalFilesystems;
use crate::context::lastdir::LastDir;
use crate::context::meta::Meta;
use crate::context::{host_path, open_root, resolve, walk, ContextError, IgnoreMatcher};
use crate::dockerfile::chmod::Chmod;
use crate::layer::tar::read_xattrs;
use crate::sandbox::root::{clean, Created, Kind, Root};
use crate::sandbox::user::UserError;

/// One COPY/ADD step, as the executor hands it to the sandbox helper.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CopyJob {
    pub sources: Vec<CopySrc>,
    /// As written (expanded); relative to `workdir` unless absolute. A trailing `/` makes
    /// it a directory.
    pub dest: String,
    pub workdir: String,
    /// `user[:group]`, names resolved from `dest_root/etc/passwd` and `/etc/group`.
    pub chown: Option<String>,
    /// Octal (`755`) or symbolic (`u+x,g-w`).
    pub chmod: Option<Chmod>,
    pub parents: bool,
    pub excludes: Vec<String>,
    /// `.dockerignore` patterns; only for context sources.
    pub ignore: Vec<String>,
    /// ADD: extract local archives.
    pub add: bool,
    /// Keep the sources' uid/gid (COPY --from a stage or image). False for the build
    /// context, whose files BuildKit transfers as 0:0.
    #[serde(default)]
    pub preserve_owner: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum CopySrc {
    /// Relative to `src_root`; may contain wildcards.
    Path(String),
    /// A file prepared by the executor (ADD URL download, heredoc), copied as `name`.
    File {
        name: String,
        host_path: PathBuf,
        mode: u32,
        /// Extract it if it is an archive (`ADD --unpack=true <url>`).
        #[serde(default)]
        unpack: bool,
    },
}

/// What a copy wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub specials: u64,
    pub bytes: u64,
    pub archives: u64,
}

#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum CopyError {
    #[error(transparent)]
    Context(#[from] ContextError),
    /// Docker's wording, kept verbatim because users search for it.
    #[error("When using {command} with more than one source file, the destination must be a directory and end with a /")]
    MultipleSourcesNeedDirectory {
        #[serde(with = "crate::sandbox::wire::static_str")]
        command: crate::sandbox::wire::StaticStr,
    },
    #[error("invalid --chown `{0}`")]
    BadChown(String),
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("cannot copy to non-directory: {0}")]
    NotADirectory(String),
    /// A source directory meets a symlink below the destination. BuildKit (fsutil's
    /// copyDirectoryOnly) refuses to merge a directory through it rather than follow it, in
    /// the same words; the rest says where the directory can go instead.
    #[error(
        "cannot copy to non-directory: {path} (a symlink to `{target}` in the image, which \
         BuildKit does not copy a directory through; copy that directory to `{resolved}` \
         instead)"
    )]
    DirectoryThroughSymlink {
        path: String,
        target: String,
        /// Where the link leads, resolved inside the image root, as a directory (`/x/`).
        resolved: String,
    },
    #[error("cannot replace directory {0} with a non-directory")]
    ReplaceDirectory(String),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error("extracting {archive}: {source}")]
    Archive {
        archive: PathBuf,
        #[source]
        source: crate::layer::LayerError,
    },
}

/// A new file at `path` for writing, with at most the permission bits `mode` (never the
/// set-id and sticky bits, which only a mode set after the owner keeps); never through a
/// symlink, never over an entry.
fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode & 0o777)
        .open(path)
}

fn io_err(path: &Path, e: io::Error) -> CopyError {
    CopyError::Context(ContextError::io(path, e))
}

/// Run one COPY/ADD; see the module docs.
pub fn copy(job: &CopyJob, src_root: &Path, dest_root: &Path) -> Result<CopyStats, CopyError> {
    let root = open_root(dest_root)?;
    let owner = match &job.chown {
        Some(spec) => Some(resolve_chown(spec, &root)?),
        None => None,
    };
    let chmod = job.chmod.clone();
    let ignore = IgnoreMatcher::new(&job.ignore)?;
    let excludes = IgnoreMatcher::new(&job.excludes)?;

    let dest_is_dir = job.dest.is_empty()
        || job.dest == "."
        || job.dest.ends_with('/')
        || job.dest.ends_with("/.");
    if job.sources.len() > 1 && !dest_is_dir {
        return Err(CopyError::MultipleSourcesNeedDirectory {
            command: if job.add { "ADD" } else { "COPY" },
        });
    }
    let dest_abs = if job.dest.starts_with('/') {
        job.dest.clone()
    } else {
        format!("{}/{}", job.workdir, job.dest)
    };
    let dest_rel = clean(&dest_abs);

    // fsutil's ensureDstPath: the destination itself when it ends in `/`, else its parent.
    let ensure = if dest_is_dir || job.parents {
        dest_rel.clone()
    } else {
        parent_of(&dest_rel).to_string()
    };
    let mut c = Copier {
        root,
        w: Writer {
            dest_root,
            owner,
            chmod: chmod.clone(),
            preserve_owner: job.preserve_owner,
        },
        // fsutil's MkdirAll gets an octal --chmod as its mode (BuildKit v0.21, fsutil
        // 183e7fb), through Go's os.FileMode, which keeps only the permission bits.
        parent_mode: chmod
            .as_ref()
            .and_then(Chmod::octal)
            .map_or(0o755, |m| m & 0o777),
        ensure,
        inodes: HashMap::new(),
        dirs_to_finish: Vec::new(),
        open: Dirs::default(),
        stats: CopyStats::default(),
    };

    for src in &job.sources {
        match src {
            CopySrc::Path(p) if job.parents => {
                c.copy_parents(p, src_root, &dest_rel, &ignore, &excludes, job.add)?
            }
            CopySrc::Path(p) => {
                for m in walk::resolve(src_root, p, true, &ignore)? {
                    if excludes.matches(base_name(&m.named)) {
                        continue;
                    }
                    if job.add && m.meta.is_file() {
                        if let Some(reader) = open_archive(&m.host)? {
                            let dir = resolve(&c.root, &dest_rel, true)?;
                            c.mkdir_all(&dir, UNPACK_DIR_MODE)?;
                            c.extract(reader, &m.host, &dir)?;
                            continue;
                        }
                    }
                    c.ensure_dest()?;
                    let target =
                        c.prepare_target(m.meta.is_dir(), base_name(&m.named), &dest_rel)?;
                    c.copy_entries(walk::walk(&m, &ignore, &excludes), &target)?;
                }
            }
            CopySrc::File {
                name,
                host_path: file,
                mode,
                unpack,
            } => {
                // `ADD --unpack=true <url>`: a downloaded archive is extracted like a local one.
                if *unpack {
                    if let Some(reader) = open_archive(file)? {
                        let dir = resolve(&c.root, &dest_rel, true)?;
                        c.mkdir_all(&dir, UNPACK_DIR_MODE)?;
                        c.extract(reader, file, &dir)?;
                        continue;
                    }
                }
                let meta = Meta::path(file, true).map_err(|e| io_err(file, e))?;
                c.ensure_dest()?;
                let target = c.prepare_target(false, name, &dest_rel)?;
                let dst = c.host(&target);
                c.copy_one(file, &meta, &dst, ExistingDir::Overwrite, Some(*mode))?;
            }
        }
    }
    c.finish_dirs()?;
    Ok(c.stats)
}

fn parent_of(rel: &str) -> &str {
    match rel.rfind('/') {
        Some(i) => &rel[..i],
        None => "",
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// Directories made for an extracted archive: BuildKit's unpack ignores --chmod.
const UNPACK_DIR_MODE: u32 = 0o755;

/// What happens to a directory that already exists at the destination.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ExistingDir {
    /// Below the copy's top: takes the source directory's metadata.
    Overwrite,
    /// The copy's top directory: keeps owner and mode, takes the source's times.
    KeepRestoreTimes,
    /// A `--parents` intermediate directory: untouched.
    Keep,
}

struct Copier<'a> {
    /// The destination root ([`Writer::dest_root`]), for resolving paths beneath it.
    root: Root,
    /// What every copied entry gets besides its content; the threads copying files share it.
    w: Writer<'a>,
    /// Mode of the directories made on the way to the destination: 0755, or an octal
    /// --chmod's permission bits.
    parent_mode: u32,
    /// The destination directory to make before copying a source (root-relative, not yet
    /// resolved); see [`Copier::ensure_dest`].
    ensure: String,
    /// (dev, ino) of multiply-linked source files -> where the first copy went.
    inodes: HashMap<(u64, u64), PathBuf>,
    /// Directories whose metadata is applied after their contents (so mtimes stick):
    /// (source, destination, source metadata, times only).
    dirs_to_finish: Vec<(PathBuf, PathBuf, Meta, bool)>,
    /// The directories of the last file the walk copied itself.
    open: Dirs,
    stats: CopyStats,
}

impl Copier<'_> {
    fn host(&self, rel: &str) -> PathBuf {
        host_path(self.w.dest_root, rel)
    }

    /// fsutil's ensureDstPath, made before each source is copied (BuildKit copies nothing,
    /// and creates nothing, for a wildcard that matched nothing), resolved inside the root.
    fn ensure_dest(&mut self) -> Result<(), CopyError> {
        let real = resolve(&self.root, &self.ensure, true)?;
        self.mkdir_all(&real, self.parent_mode)
    }

    /// Create `rel` (already resolved inside the root) and its missing parents with `mode`,
    /// owned by the --chown user, as fsutil's MkdirAll does.
    fn mkdir_all(&mut self, rel: &str, mode: u32) -> Result<(), CopyError> {
        let mut created = Vec::new();
        let new = Created {
            parent_mode: mode,
            owner: Some(self.w.owner.unwrap_or((0, 0))),
        };
        match self.root.ensure(rel, Kind::Dir, mode, new, &mut created) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(CopyError::NotADirectory(self.first_non_dir(rel)))
            }
            Err(e) => return Err(io_err(&self.host(rel), e)),
        }
        self.stats.dirs += created.len() as u64;
        Ok(())
    }

    /// The first component of `rel` that exists and is not a directory, as `/a/b` (for
    /// the error when a directory is wanted there).
    fn first_non_dir(&self, rel: &str) -> String {
        let mut cur = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            cur = join(&cur, comp);
            if let Err(e) = self.root.open_in(&cur, OFlags::PATH | OFlags::DIRECTORY) {
                if e.raw_os_error() == Some(libc::ENOTDIR) {
                    break;
                }
            }
        }
        format!("/{cur}")
    }

    /// fsutil's prepareTargetDir: where one source lands, relative to the root.
    fn prepare_target(
        &mut self,
        src_is_dir: bool,
        base: &str,
        dest_rel: &str,
    ) -> Result<String, CopyError> {
        let dest = resolve(&self.root, dest_rel, true)?;
        let existing = fs::metadata(self.host(&dest)).ok();
        let target = match &existing {
            Some(m) if m.is_dir() && !src_is_dir => join(&dest, base),
            _ => dest,
        };
        if src_is_dir && existing.is_none() {
            self.mkdir_all(&target, self.parent_mode)?;
        } else {
            self.mkdir_all(parent_of(&target), self.parent_mode)?;
        }
        Ok(target)
    }

    /// Copy walked entries (the first is the match itself) to `target`. An existing top
    /// directory keeps its own owner and mode (fsutil overwrites only below it).
    /// Copy a walk's entries as they come: nothing of an entry is kept once it is copied
    /// but a directory's metadata (applied last) and a multiply-linked file's first copy.
    ///
    /// This thread walks and makes everything but the regular files, each directory before
    /// what goes in it; threads of their own copy the files with one link ([`Files`]).
    /// Making files is mostly the kernel's work (issue 23), and a file's creation holds
    /// only its directory's lock. Every path of a walk is a different one, and all of them
    /// are written before the directories' metadata ([`Copier::finish_dirs`]) and before
    /// the next source, which may overwrite them.
    fn copy_entries(&mut self, entries: walk::Walk, target: &str) -> Result<(), CopyError> {
        let target_host = self.host(target);
        let w = self.w.clone();
        let files = Files::new(&w);
        let (walked, (copied, failed)) = std::thread::scope(|scope| {
            let mut started = files.start(scope);
            let walked = self.walk_entries(entries, &target_host, &mut started);
            (walked, started.finish())
        });
        self.stats.files += copied.files;
        self.stats.bytes += copied.bytes;
        // The walk's own error came first; a file's is the first a copying thread met.
        walked.and(failed.map_or(Ok(()), Err))
    }

    fn walk_entries(
        &mut self,
        entries: walk::Walk,
        target_host: &Path,
        files: &mut Started,
    ) -> Result<(), CopyError> {
        for e in entries {
            if files.failed() {
                return Ok(());
            }
            let e = e?;
            let is_top = e.rel().as_os_str().is_empty();
            let dst = if is_top {
                target_host.to_path_buf()
            } else {
                target_host.join(e.rel())
            };
            // A multiply-linked file's first copy must be made before its links.
            if e.meta.is_file() && e.meta.nlink() <= 1 {
                files.send(e.host, e.meta, dst);
                continue;
            }
            let existing = if is_top {
                ExistingDir::KeepRestoreTimes
            } else {
                ExistingDir::Overwrite
            };
            self.copy_one(&e.host, &e.meta, &dst, existing, None)?;
        }
        Ok(())
    }

    /// Copy one entry to `dst_host`, whose parent exists and was resolved inside the root;
    /// an existing entry there is replaced, never written through.
    fn copy_one(
        &mut self,
        src: &Path,
        meta: &Meta,
        dst_host: &Path,
        existing_dir: ExistingDir,
        file_mode: Option<u32>,
    ) -> Result<(), CopyError> {
        let ft = meta.file_type();
        if ft.is_file() {
            return self.copy_file(src, meta, dst_host, file_mode);
        }
        let existing = fs::symlink_metadata(dst_host).ok();
        if ft.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {
                    // fsutil: nested directories take the source's metadata; the top
                    // one keeps its own but gets the source's times back.
                    let times_only = match existing_dir {
                        ExistingDir::Overwrite => false,
                        ExistingDir::KeepRestoreTimes => true,
                        ExistingDir::Keep => return Ok(()),
                    };
                    self.dirs_to_finish.push((
                        src.to_path_buf(),
                        dst_host.to_path_buf(),
                        meta.clone(),
                        times_only,
                    ));
                }
                Some(m) if m.is_symlink() => return Err(self.through_symlink(dst_host)),
                Some(_) => return Err(CopyError::NotADirectory(self.display(dst_host))),
                None => {
                    fs::create_dir(dst_host).map_err(|e| io_err(dst_host, e))?;
                    self.stats.dirs += 1;
                    self.dirs_to_finish.push((
                        src.to_path_buf(),
                        dst_host.to_path_buf(),
                        meta.clone(),
                        false,
                    ));
                }
            }
            return Ok(());
        }
        if existing.is_some() {
            self.w.remove_existing(dst_host)?;
        }
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(|e| io_err(src, e))?;
            std::os::unix::fs::symlink(&target, dst_host).map_err(|e| io_err(dst_host, e))?;
            self.stats.symlinks += 1;
        } else if ft.is_socket() {
            // BuildKit sends a socket as an empty regular file with its permission bits
            // (fsutil's mkstat clears the socket bit; the sender cannot open it, so no data
            // follows); apply_meta below gives it those bits.
            create_new(dst_host, 0o600).map_err(|e| io_err(dst_host, e))?;
            self.stats.files += 1;
        } else {
            mknod(dst_host, meta.mode(), meta.rdev())?;
            self.stats.specials += 1;
        }
        self.w
            .apply_meta(src, dst_host, meta, file_mode, None, None)
    }

    /// Copy the regular file `src` to `dst_host` (as [`Copier::copy_one`]): a link to its
    /// first copy when it has several links, else [`Writer::write_file`].
    fn copy_file(
        &mut self,
        src: &Path,
        meta: &Meta,
        dst_host: &Path,
        file_mode: Option<u32>,
    ) -> Result<(), CopyError> {
        if meta.nlink() > 1 {
            if let Some(first) = self.inodes.get(&(meta.dev(), meta.ino())).cloned() {
                if let Err(e) = fs::hard_link(&first, dst_host) {
                    self.w.make_room(e, dst_host)?;
                    fs::hard_link(&first, dst_host).map_err(|e| io_err(dst_host, e))?;
                }
                self.stats.hardlinks += 1;
                return Ok(());
            }
            self.inodes
                .insert((meta.dev(), meta.ino()), dst_host.to_path_buf());
        }
        let n = self
            .w
            .write_file(&mut self.open, src, meta, false, dst_host, file_mode)?;
        self.stats.files += 1;
        self.stats.bytes += n;
        Ok(())
    }

    /// The error for a source directory meeting the image's symlink at `host`.
    fn through_symlink(&self, host: &Path) -> CopyError {
        let path = self.display(host);
        let target = match fs::read_link(host) {
            Ok(t) => t.to_string_lossy().into_owned(),
            Err(e) => return io_err(host, e),
        };
        match resolve(&self.root, &path, true) {
            Ok(resolved) => CopyError::DirectoryThroughSymlink {
                path,
                target,
                resolved: if resolved.is_empty() {
                    "/".to_string()
                } else {
                    format!("/{resolved}/")
                },
            },
            Err(e) => e.into(),
        }
    }

    fn display(&self, host: &Path) -> String {
        self.w.display(host)
    }

    fn finish_dirs(&mut self) -> Result<(), CopyError> {
        // Deepest first: setting a child's times does not touch the parent, but creating
        // entries does, so parents go last.
        let dirs = std::mem::take(&mut self.dirs_to_finish);
        for (src, dst, meta, times_only) in dirs.iter().rev() {
            if *times_only {
                set_times(
                    dst,
                    meta.atime(),
                    meta.atime_nsec(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                )?;
            } else {
                self.w.apply_meta(src, dst, meta, None, None, None)?;
            }
        }
        Ok(())
    }

    /// `COPY --parents`: each match keeps its path relative to the context, or to the
    /// `/./` anchor when the source has one (BuildKit 1.7 labs, stable in 1.9).
    fn copy_parents(
        &mut self,
        source: &str,
        src_root: &Path,
        dest_rel: &str,
        ignore: &IgnoreMatcher,
        excludes: &IgnoreMatcher,
        add: bool,
    ) -> Result<(), CopyError> {
        let anchor = match source.find("/./") {
            Some(i) => clean(&source[..i]),
            None => String::new(),
        };
        let src = open_root(src_root)?;
        for m in walk::resolve(src_root, source, true, ignore)? {
            if excludes.matches(base_name(&m.named)) {
                continue;
            }
            let rel = if anchor.is_empty() {
                m.named.clone()
            } else {
                m.named
                    .strip_prefix(&format!("{anchor}/"))
                    .unwrap_or(base_name(&m.named))
                    .to_string()
            };
            self.ensure_dest()?;
            // Intermediate directories are copies of the source's, not fresh 0755 ones.
            let dest_base = resolve(&self.root, dest_rel, true)?;
            let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
            let mut cur = dest_base.clone();
            for (k, comp) in comps.iter().enumerate().take(comps.len().saturating_sub(1)) {
                cur = join(&cur, comp);
                let src_dir = join(&anchor, &comps[..=k].join("/"));
                let real = resolve(&src, &src_dir, true)?;
                let src_host = host_path(src_root, &real);
                let meta = Meta::path(&src_host, true).map_err(|e| io_err(&src_host, e))?;
                let dst_host = self.host(&cur);
                self.copy_one(&src_host, &meta, &dst_host, ExistingDir::Keep, None)?;
            }
            let target = join(&dest_base, &comps.join("/"));
            if add && m.meta.is_file() {
                if let Some(reader) = open_archive(&m.host)? {
                    self.mkdir_all(&target, UNPACK_DIR_MODE)?;
                    self.extract(reader, &m.host, &target)?;
                    continue;
                }
            }
            self.copy_entries(walk::walk(&m, ignore, excludes), &target)?;
        }
        Ok(())
    }
}

/// What a copied entry gets besides its content (owner, mode, xattrs, times), and the
/// writing of a regular file: all a thread copying files needs ([`Files`]).
#[derive(Clone)]
struct Writer<'a> {
    dest_root: &'a Path,
    owner: Option<(u32, u32)>,
    chmod: Option<Chmod>,
    preserve_owner: bool,
}

impl Writer<'_> {
    /// Write the regular file `src` at `dst_host` with its metadata; what was at
    /// `dst_host` is looked at only when the creation finds something there: a copy into
    /// a new directory makes one path walk through the overlay a file fewer (issue 23).
    /// `own` says that `meta` is `src`'s own (not its target's if it is a symlink). The
    /// bytes copied.
    fn write_file(
        &self,
        dirs: &mut Dirs,
        src: &Path,
        meta: &Meta,
        own: bool,
        dst_host: &Path,
        file_mode: Option<u32>,
    ) -> Result<u64, CopyError> {
        // A file its own stat saw empty, on a filesystem whose sizes are its files' bytes
        // (not procfs), has nothing to read: it is not opened (issue 23: its open, read
        // and close were a fifth of a copying thread's time for 100,000 empty files).
        // The digest took the same stat's word for it.
        let empty = own
            && meta.size() == 0
            && dirs
                .src_is_local(src, meta.dev())
                .map_err(|e| io_err(src, e))?;
        let mut from = match empty {
            true => None,
            false => Some(dirs.open_src(src).map_err(|e| io_err(src, e))?),
        };
        // Created with the owner's and the mode's last values where it can (the owner is
        // ours, no set-id bits): two calls a file fewer for [`Writer::apply_meta`].
        let mode = self.mode(meta, file_mode);
        let mut to = match dirs.create_dst(dst_host, mode) {
            Ok(to) => to,
            Err(e) => {
                self.make_room(e, dst_host)?;
                create_new(dst_host, mode).map_err(|e| io_err(dst_host, e))?
            }
        };
        let n = match from.as_mut() {
            Some(from) => copy_data(from, &mut to).map_err(|e| io_err(dst_host, e))?,
            None => 0,
        };
        // The metadata through the open files: no more path walks through the overlay.
        self.apply_meta(src, dst_host, meta, file_mode, from.as_ref(), Some(&to))?;
        Ok(n)
    }

    /// After `made` failed to create an entry at `dst_host`: room made if something was
    /// there ([`Writer::remove_existing`]), the error otherwise.
    fn make_room(&self, made: std::io::Error, dst_host: &Path) -> Result<(), CopyError> {
        if made.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(io_err(dst_host, made));
        }
        self.remove_existing(dst_host)
    }

    /// Make room at `dst_host` for an entry that is not a directory: what is there goes,
    /// unless it is a directory (an error, as fsutil's).
    fn remove_existing(&self, dst_host: &Path) -> Result<(), CopyError> {
        match fs::symlink_metadata(dst_host) {
            Ok(m) if m.is_dir() => Err(CopyError::ReplaceDirectory(self.display(dst_host))),
            Ok(_) => fs::remove_file(dst_host).map_err(|e| io_err(dst_host, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(dst_host, e)),
        }
    }

    fn display(&self, host: &Path) -> String {
        match host.strip_prefix(self.dest_root) {
            Ok(p) => format!("/{}", p.display()),
            Err(_) => host.display().to_string(),
        }
    }

    /// The owner a copied entry gets.
    fn owner(&self, meta: &Meta) -> (u32, u32) {
        match self.owner {
            Some(o) => o,
            None if self.preserve_owner => (meta.uid(), meta.gid()),
            None => (0, 0),
        }
    }

    /// The mode bits (`0o7777`) a copied entry other than a symlink gets: `file_mode`
    /// or the source's, through `--chmod`.
    fn mode(&self, meta: &Meta, file_mode: Option<u32>) -> u32 {
        let mode = file_mode.unwrap_or(meta.mode()) & 0o7777;
        match &self.chmod {
            Some(spec) => spec.apply(mode, meta.is_dir()),
            None => mode,
        }
    }

    /// Owner, mode, xattrs and times of `dst` from the source entry (fsutil's
    /// copyFileInfo). `file_mode` overrides the source mode (executor-prepared files).
    /// `files` are `src` and `dst` opened, for a regular file just written: everything is
    /// then read and set through them instead of by path.
    fn apply_meta(
        &self,
        src: &Path,
        dst: &Path,
        meta: &Meta,
        file_mode: Option<u32>,
        from: Option<&File>,
        to: Option<&File>,
    ) -> Result<(), CopyError> {
        let file = to;
        let (uid, gid) = self.owner(meta);
        let is_link = meta.file_type().is_symlink();
        let mode = self.mode(meta, file_mode);
        // A file just made has our owner and the bits its creation asked for less the
        // umask (or a default ACL's): its fstat says which calls it still needs, a tenth
        // of a copying thread's time where it needs none (issue 23). A new owner can
        // clear set-id bits: the mode is set after it.
        let (chown, chmod) = match file {
            Some(f) => {
                let st = rustix::fs::fstat(f).map_err(|e| io_err(dst, e.into()))?;
                let chown = (st.st_uid, st.st_gid) != (uid, gid);
                (chown, chown || st.st_mode & 0o7777 != mode)
            }
            None => (true, !is_link),
        };
        if chown {
            match file {
                Some(f) => std::os::unix::fs::fchown(f, Some(uid), Some(gid)),
                None => std::os::unix::fs::lchown(dst, Some(uid), Some(gid)),
            }
            .map_err(|e| io_err(dst, e))?;
        }
        if chmod {
            let perms = fs::Permissions::from_mode(mode);
            match file {
                Some(f) => f.set_permissions(perms),
                None => fs::set_permissions(dst, perms),
            }
            .map_err(|e| io_err(dst, e))?;
        }
        copy_xattrs(src, dst, from, to)?;
        let times = Timestamps {
            last_access: timespec(meta.atime(), meta.atime_nsec()),
            last_modification: timespec(meta.mtime(), meta.mtime_nsec()),
        };
        match file {
            Some(f) => rustix::fs::futimens(f, &times),
            None => rustix::fs::utimensat(CWD, dst, &times, AtFlags::SYMLINK_NOFOLLOW),
        }
        .map_err(|e| io_err(dst, e.into()))
    }
}

/// At most this many threads copy a walk's files.
const FILE_THREADS: usize = 4;
/// Files walked but not yet copied, at most, a thread: memory stays flat in the number of
/// files.
const FILE_QUEUE: usize = 512;
/// Files handed to a thread at once: a thread that had emptied its queue sleeps until the
/// next hand-over, and waking it for every file was two fifths of the walk's time in a
/// first build of 100,000 files (`futex`, issue 23).
const FILE_BATCH: usize = 32;

/// A regular file for a copying thread: its source, what the walk saw, where it goes.
struct FileCopy {
    src: PathBuf,
    meta: Meta,
    dst: PathBuf,
}

/// The source and destination directories of the last file a thread copied, open
/// ([`LastDir`]): the next file of the same directories is opened there by name.
#[derive(Default)]
struct Dirs {
    src: LastDir,
    dst: LastDir,
    local: LocalFilesystems,
}

impl Dirs {
    /// Whether `src`, on the filesystem `dev`, is on a local one ([`LocalFilesystems`]).
    fn src_is_local(&mut self, src: &Path, dev: u64) -> io::Result<bool> {
        let (dir, _) = self.src.at(src)?;
        Ok(self.local.has(dev, dir))
    }

    /// `src` opened to read, as `File::open` would.
    fn open_src(&mut self, src: &Path) -> io::Result<File> {
        self.src.open(src)
    }

    /// [`create_new`] of `dst`.
    fn create_dst(&mut self, dst: &Path, mode: u32) -> io::Result<File> {
        let (dir, name) = self.dst.at(dst)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(mode & 0o777);
        Ok(rustix::fs::openat(dir, name, flags, mode)?.into())
    }
}

/// What the copying threads made.
#[derive(Default)]
struct Copied {
    files: u64,
    bytes: u64,
}

impl Copied {
    fn add(&mut self, other: Copied) {
        self.files += other.files;
        self.bytes += other.bytes;
    }
}

/// What the threads copying a walk's regular files share.
struct Files<'w, 'a> {
    w: &'w Writer<'a>,
    /// A file failed: the rest are not copied and the walk stops.
    failed: AtomicBool,
}

impl<'w, 'a> Files<'w, 'a> {
    fn new(w: &'w Writer<'a>) -> Files<'w, 'a> {
        Files {
            w,
            failed: AtomicBool::new(false),
        }
    }

    /// The walk's side, within `scope`: threads start with the first file sent. As many as
    /// the CPUs the step may use (at most [`FILE_THREADS`]); with one, the walk copies.
    fn start<'scope>(
        &'w self,
        scope: &'scope std::thread::Scope<'scope, 'w>,
    ) -> Started<'scope, 'w, 'a> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Started {
            files: self,
            scope,
            queues: Vec::new(),
            batches: Vec::new(),
            threads: Vec::new(),
            max: threads.min(FILE_THREADS),
            next: 0,
            dir: PathBuf::new(),
            inline: Copied::default(),
            inline_dirs: Dirs::default(),
            inline_error: None,
        }
    }

    /// Copy `f` into `copied`; its error, the first, into `error`, and the rest are not copied.
    fn copy(
        &self,
        dirs: &mut Dirs,
        f: &FileCopy,
        copied: &mut Copied,
        error: &mut Option<CopyError>,
    ) {
        if self.failed.load(Ordering::Relaxed) {
            return;
        }
        match self.w.write_file(dirs, &f.src, &f.meta, true, &f.dst, None) {
            Ok(n) => copied.add(Copied { files: 1, bytes: n }),
            Err(e) => {
                self.failed.store(true, Ordering::Relaxed);
                error.get_or_insert(e);
            }
        }
    }

    /// One copying thread: its queue's files until it closes; after a failure anywhere
    /// only drains it, so that the walk never waits on a full queue.
    fn work(&self, queue: Receiver<Vec<FileCopy>>) -> (Copied, Option<CopyError>) {
        let mut copied = Copied::default();
        let mut error = None;
        let mut dirs = Dirs::default();
        for batch in queue {
            for f in &batch {
                self.copy(&mut dirs, f, &mut copied, &mut error);
            }
        }
        (copied, error)
    }
}

/// The walk's end of [`Files`]: a queue a thread. A directory's files go to one thread,
/// the next directory's to the next: a creation holds its directory's lock, so threads
/// making files in one directory would mostly wait for each other. But a directory of
/// more files than a queue holds goes on to a thread with room when its thread's queue is
/// full: waiting on that queue left the other threads idle with their queues empty, a
/// fifth of the copy's time in directories of 1,000 files (issue 23).
struct Started<'scope, 'w, 'a> {
    files: &'w Files<'w, 'a>,
    scope: &'scope std::thread::Scope<'scope, 'w>,
    queues: Vec<SyncSender<Vec<FileCopy>>>,
    /// The files for each queue not handed over yet.
    batches: Vec<Vec<FileCopy>>,
    threads: Vec<std::thread::ScopedJoinHandle<'scope, (Copied, Option<CopyError>)>>,
    max: usize,
    /// The queue of the directory of the last file sent, and that directory.
    next: usize,
    dir: PathBuf,
    /// Files copied by the walk itself (one CPU).
    inline: Copied,
    inline_dirs: Dirs,
    inline_error: Option<CopyError>,
}

impl Started<'_, '_, '_> {
    fn failed(&self) -> bool {
        self.files.failed.load(Ordering::Relaxed)
    }

    fn send(&mut self, src: PathBuf, meta: Meta, dst: PathBuf) {
        let f = FileCopy { src, meta, dst };
        if self.max <= 1 {
            self.files.copy(
                &mut self.inline_dirs,
                &f,
                &mut self.inline,
                &mut self.inline_error,
            );
            return;
        }
        if self.queues.is_empty() {
            let files = self.files;
            for _ in 0..self.max {
                let (tx, rx) = std::sync::mpsc::sync_channel(FILE_QUEUE / FILE_BATCH);
                self.queues.push(tx);
                self.batches.push(Vec::with_capacity(FILE_BATCH));
                self.threads.push(self.scope.spawn(move || files.work(rx)));
            }
        }
        let dir = f.dst.parent().unwrap_or(Path::new(""));
        if dir != self.dir {
            self.next = (self.next + 1) % self.queues.len();
            self.dir = dir.to_path_buf();
        }
        self.batches[self.next].push(f);
        if self.batches[self.next].len() >= FILE_BATCH {
            self.hand_over();
        }
    }

    /// Hand the batch of the current directory's queue to its thread.
    fn hand_over(&mut self) {
        let batch = std::mem::replace(&mut self.batches[self.next], Vec::with_capacity(FILE_BATCH));
        // Each thread holds its queue until the queue closes: a send cannot fail but by
        // finding the queue full.
        let batch = match self.queues[self.next].try_send(batch) {
            Ok(()) => return,
            Err(TrySendError::Full(batch)) => batch,
            Err(TrySendError::Disconnected(_)) => return,
        };
        // Its thread is a queue behind the walk (a directory larger than a queue): another
        // with room takes the rest of the directory rather than wait idle meanwhile.
        let n = self.queues.len();
        let mut batch = batch;
        for k in 1..n {
            let q = (self.next + k) % n;
            match self.queues[q].try_send(batch) {
                Ok(()) => {
                    self.next = q;
                    return;
                }
                Err(TrySendError::Full(back)) => batch = back,
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        let _ = self.queues[self.next].send(batch);
    }

    /// Close the queues and wait for the threads: all they copied, and the first error.
    fn finish(mut self) -> (Copied, Option<CopyError>) {
        for (queue, batch) in self.queues.iter().zip(self.batches.drain(..)) {
            if !batch.is_empty() {
                let _ = queue.send(batch);
            }
        }
        self.queues.clear();
        let mut copied = std::mem::take(&mut self.inline);
        let mut first = self.inline_error.take();
        for t in self.threads {
            let (c, e) = t
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            copied.add(c);
            if first.is_none() {
                first = e;
            }
        }
        (copied, first)
    }
}

fn mknod(path: &Path, mode: u32, rdev: u64) -> Result<(), CopyError> {
    use rustix::fs::{FileType, Mode, CWD};
    let ft = FileType::from_raw_mode(mode);
    rustix::fs::mknodat(CWD, path, ft, Mode::from_raw_mode(mode & 0o7777), rdev)
        .map_err(|e| io_err(path, e.into()))
}

fn timespec(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

fn set_times(path: &Path, asec: i64, ansec: i64, msec: i64, mnsec: i64) -> Result<(), CopyError> {
    let times = Timestamps {
        last_access: timespec(asec, ansec),
        last_modification: timespec(msec, mnsec),
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_err(path, e.into()))
}

/// Copy `from` to `to` to the end of `from`, in the kernel. `io::copy` would do the same
/// after two `statx` and a `copy_file_range` that always fails here (EXDEV: the context
/// and the overlay are different mounts): three wasted calls per file. A source `sendfile`
/// cannot read goes through `io::copy`.
fn copy_data(from: &mut File, to: &mut File) -> io::Result<u64> {
    const MAX: usize = 1 << 30;
    let mut total = 0u64;
    loop {
        match rustix::fs::sendfile(&*to, &*from, None, MAX) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if total == 0 => {
                return io::copy(from, to);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Copy the xattrs a layer keeps ([`crate::layer::keep_xattr`], design.md "Layers"), read
/// by the layers' one reader ([`read_xattrs`]). A filesystem without xattr support is not
/// an error. `from` and `to`, the source and the destination open (a regular file just
/// copied), are used instead of the paths where there: a context's file listed by path
/// walked its whole path again, 4 % of a first build of 100,000 empty files (issue 23).
fn copy_xattrs(
    src: &Path,
    dst: &Path,
    from: Option<&File>,
    to: Option<&File>,
) -> Result<(), CopyError> {
    // A source is not an overlay directory: no opaque marker to look for.
    let (kept, _) = read_xattrs(src, from, b"")?;
    for (name, value) in &kept {
        let name = std::ffi::OsStr::from_bytes(name);
        let flags = rustix::fs::XattrFlags::empty();
        let set = match to {
            Some(to) => rustix::fs::fsetxattr(to, name, value, flags),
            None => rustix::fs::lsetxattr(dst, name, value, flags),
        };
        match set {
            Ok(()) => {}
            Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM) => {}
            Err(e) => return Err(io_err(dst, e.into())),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// --chown and --chmod

/// `--chown` -> (uid, gid), names from the image's passwd and group (sandbox::user, the
/// one reader of those files, has BuildKit's rules for it).
fn resolve_chown(spec: &str, root: &Root) -> Result<(u32, u32), CopyError> {
    let users = root
        .user_db()
        .map_err(|e| io_err(&root.path().join("etc/passwd"), e))?;
    users.chown(spec).map_err(|e| match e {
        UserError::NoUser(u) => CopyError::UnknownUser(u),
        UserError::NoGroup(g) => CopyError::UnknownGroup(g),
        UserError::Range(_) => CopyError::BadChown(spec.to_string()),
    })
}

// ---------------------------------------------------------------------------------------
// ADD archives

/// If `path` is a tar archive (plain or compressed, by content), a reader of the tar
/// stream. Docker's rule: it is an archive when a tar header can be read from it.
fn open_archive(path: &Path) -> Result<Option<Box<dyn Read>>, CopyError> {
    let probe = decompressing_reader(path)?;
    let mut ar = tar::Archive::new(probe);
    let is_tar = match ar.entries() {
        Ok(mut entries) => matches!(entries.next(), Some(Ok(_))),
        Err(_) => false,
    };
    if !is_tar {
        return Ok(None);
    }
    Ok(Some(decompressing_reader(path)?))
}

fn decompressing_reader(path: &Path) -> Result<Box<dyn Read>, CopyError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let head = r.fill_buf().map_err(|e| io_err(path, e))?.to_vec();
    Ok(if head.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(r))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(r))
    } else {
        crate::layer::compress::decompressor(r).map_err(|e| io_err(path, e))?
    })
}

impl Copier<'_> {
    /// Extract a tar stream into `dir` (root-relative, resolved, existing) with the applier
    /// that pulled layers go through (layer::apply::extract): `dir` is the root for every
    /// path and symlink of the archive, ids out of range are refused.
    fn extract(
        &mut self,
        reader: Box<dyn Read>,
        archive: &Path,
        dir: &str,
    ) -> Result<(), CopyError> {
        let stats = crate::layer::apply::extract(reader, &self.host(dir), self.w.owner).map_err(
            |source| CopyError::Archive {
                archive: archive.to_path_buf(),
                source,
            },
        )?;
        self.stats.files += stats.entries;
        self.stats.bytes += stats.bytes;
        self.stats.archives += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use std::io::Write;
    use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};

    /// A listing like buildah's conformance FSHeader: type path mode uid:gid size link.
    fn listing(root: &Path, under: &str) -> Vec<String> {
        let mut out = Vec::new();
        let start = root.join(under.trim_start_matches('/'));
        list_into(root, &start, &mut out);
        out.sort();
        out.into_iter().map(|(_, line)| line).collect()
    }

    fn list_into(root: &Path, p: &Path, out: &mut Vec<(String, String)>) {
        let m = fs::symlink_metadata(p).unwrap();
        let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
        let t = m.file_type();
        let (kind, size, link) = if t.is_dir() {
            ("d", 0, String::new())
        } else if t.is_symlink() {
            (
                "l",
                0,
                format!(" -> {}", fs::read_link(p).unwrap().display()),
            )
        } else if t.is_file() {
            ("f", m.size(), String::new())
        } else {
            let kind = if t.is_socket() {
                "s"
            } else if t.is_fifo() {
                "p"
            } else {
                "c"
            };
            (kind, 0, String::new())
        };
        out.push((
            rel.clone(),
            format!(
                "{kind} {rel} {:o} {}:{} {size}{link}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ),
        ));
        if t.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                list_into(root, &e.unwrap().path(), out);
            }
        }
    }

    struct Env {
        _t: tempfile::TempDir,
        src: PathBuf,
        dst: PathBuf,
    }

    fn write(path: &Path, content: &str, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::lchown(path, Some(1234), Some(4321)).unwrap();
    }

    /// A context: dir/{a.txt, sub/b.log}, top.txt, two.txt, links, and an image root with
    /// passwd/group and `/etc` being a symlink in some tests.
    fn env() -> Env {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("ctx");
        let dst = t.path().join("root");
        fs::create_dir_all(&dst).unwrap();
        write(&src.join("dir/a.txt"), "aaa", 0o644);
        write(&src.join("dir/sub/b.log"), "bb", 0o600);
        write(&src.join("top.txt"), "top", 0o755);
        write(&src.join("two.txt"), "two!", 0o644);
        symlink("top.txt", src.join("lnk")).unwrap();
        symlink("/etc/passwd", src.join("dir/out")).unwrap();
        symlink("../../../../../etc", src.join("escape")).unwrap();
        Env { _t: t, src, dst }
    }

    fn job(sources: &[&str], dest: &str) -> CopyJob {
        CopyJob {
            sources: sources
                .iter()
                .map(|s| CopySrc::Path(s.to_string()))
                .collect(),
            dest: dest.to_string(),
            workdir: "/".to_string(),
            ..CopyJob::default()
        }
    }

    fn run(e: &Env, j: &CopyJob) -> Result<CopyStats, CopyError> {
        copy(j, &e.src, &e.dst)
    }

    #[test]
    #[ignore = "needs root"]
    fn directory_sources_copy_their_contents() {
        crate::layer::testutil::needs_root();
        let e = env();
        run(&e, &job(&["dir"], "/app")).unwrap();
        assert_eq!(
            listing(&e.dst, "/app"),
            [
                "d /app 755 0:0 0",
                "f /app/a.txt 644 0:0 3",
                "l /app/out 777 0:0 0 -> /etc/passwd",
                "d /app/sub 755 0:0 0",
                "f /app/sub/b.log 600 0:0 2",
            ]
        );
        // Into an existing directory: same result, the directory keeps its metadata.
        fs::create_dir(e.dst.join("exists")).unwrap();
        fs::set_permissions(e.dst.join("exists"), fs::Permissions::from_mode(0o700)).unwrap();
        run(&e, &job(&["dir/"], "/exists/")).unwrap();
        assert_eq!(listing(&e.dst, "/exists")[0], "d /exists 700 0:0 0");
        // ... but takes the source's times (fsutil restores them after adding entries).
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000);
        File::open(e.src.join("dir"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        run(&e, &job(&["dir/"], "/exists/")).unwrap();
        assert_eq!(
            fs::metadata(e.dst.join("exists")).unwrap().mtime(),
            2_000_000
        );
        assert_eq!(listing(&e.dst, "/exists")[0], "d /exists 700 0:0 0");
        assert_eq!(listing(&e.dst, "/exists").len(), 5);
    }

    /// A file copied where the image has an entry replaces a file, a symlink (never
    /// written through) or a hard link, and refuses a directory; the second path of a
    /// hard-linked source does the same. A copy into a new directory creates each file
    /// without looking first, so this is the path taken on `EEXIST`.
    #[test]
    #[ignore = "needs root"]
    fn files_replace_what_is_there_but_directories() {
        crate::layer::testutil::needs_root();
        let e = env();
        fs::hard_link(e.src.join("dir/a.txt"), e.src.join("dir/hard")).unwrap();
        fs::create_dir_all(e.dst.join("d")).unwrap();
        write(&e.dst.join("d/a.txt"), "old", 0o600);
        write(&e.dst.join("elsewhere"), "keep", 0o644);
        symlink("/elsewhere", e.dst.join("d/hard")).unwrap();
        fs::hard_link(e.dst.join("elsewhere"), e.dst.join("d/out")).unwrap();
        let stats = run(&e, &job(&["dir"], "/d/")).unwrap();
        assert_eq!((stats.files, stats.hardlinks), (2, 1));
        assert_eq!(fs::read_to_string(e.dst.join("d/a.txt")).unwrap(), "aaa");
        let (a, hard) = (e.dst.join("d/a.txt"), e.dst.join("d/hard"));
        let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
        assert_eq!(ino(&a), ino(&hard));
        assert!(fs::symlink_metadata(e.dst.join("d/out"))
            .unwrap()
            .is_symlink());
        assert_eq!(fs::read_to_string(e.dst.join("elsewhere")).unwrap(), "keep");
        assert_eq!(fs::metadata(e.dst.join("elsewhere")).unwrap().nlink(), 1);

        fs::create_dir_all(e.dst.join("t/top.txt/inner")).unwrap();
        let err = run(&e, &job(&["top.txt"], "/t/")).unwrap_err();
        assert!(
            matches!(err, CopyError::ReplaceDirectory(ref p) if p == "/t/top.txt"),
            "{err}"
        );
        assert!(e.dst.join("t/top.txt/inner").is_dir());
    }

    /// The xattrs a layer keeps are copied, from a regular file (through the open files),
    /// an empty one (not opened) and a directory (by path); the others are not.
    #[test]
    #[ignore = "needs root"]
    fn kept_xattrs_are_copied_from_files_and_directories() {
        crate::layer::testutil::needs_root();
        let e = env();
        write(&e.src.join("dir/empty"), "", 0o644);
        let none = rustix::fs::XattrFlags::empty();
        for p in ["dir/a.txt", "dir/empty", "dir/sub"] {
            let p = e.src.join(p);
            rustix::fs::lsetxattr(&p, "user.note", b"kept", none).unwrap();
            rustix::fs::lsetxattr(&p, "user.overlay.opaque", b"y", none).unwrap();
            rustix::fs::lsetxattr(&p, "trusted.secret", b"no", none).unwrap();
        }
        run(&e, &job(&["dir"], "/app")).unwrap();
        for p in ["app/a.txt", "app/empty", "app/sub"] {
            let p = e.dst.join(p);
            let mut names = vec![0u8; 1024];
            let n = rustix::fs::llistxattr(&p, &mut names[..]).unwrap();
            let names: Vec<&[u8]> = names[..n]
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .collect();
            assert_eq!(names, [&b"user.note"[..]], "{p:?}");
            let mut value = [0u8; 16];
            let n = rustix::fs::lgetxattr(&p, "user.note", &mut value[..]).unwrap();
            assert_eq!(&value[..n], b"kept", "{p:?}");
        }
    }

    /// Files that procfs says are empty are read all the same: its sizes are not its
    /// files' bytes. (Local filesystems' empty files are not opened.)
    #[test]
    #[ignore = "needs root"]
    fn files_of_size_zero_on_procfs_are_read() {
        crate::layer::testutil::needs_root();
        let t = tempfile::tempdir().unwrap();
        let e = Env {
            src: PathBuf::from("/proc/sys/kernel"),
            dst: t.path().join("root"),
            _t: t,
        };
        fs::create_dir_all(&e.dst).unwrap();
        run(&e, &job(&["random"], "/r")).unwrap();
        for name in ["boot_id", "poolsize"] {
            let src = e.src.join("random").join(name);
            assert_eq!(fs::metadata(&src).unwrap().len(), 0, "{name}");
            let copied = fs::read(e.dst.join("r").join(name)).unwrap();
            assert!(!copied.is_empty(), "{name}");
            assert_eq!(copied, fs::read(&src).unwrap(), "{name}");
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn trailing_slash_and_existing_dirs_decide_file_destinations() {
        crate::layer::testutil::needs_root();
        let e = env();
        run(&e, &job(&["top.txt"], "/x/")).unwrap();
        run(&e, &job(&["top.txt"], "/y")).unwrap();
        fs::create_dir(e.dst.join("z")).unwrap();
        run(&e, &job(&["top.txt"], "/z")).unwrap();
        // Relative to the workdir.
        let mut j = job(&["two.txt"], "rel/");
        j.workdir = "/work".into();
        run(&e, &j).unwrap();
        let mut l = listing(&e.dst, "/");
        l.retain(|s| !s.starts_with("d / "));
        assert_eq!(
            l,
            [
                "d /work 755 0:0 0",
                "d /work/rel 755 0:0 0",
                "f /work/rel/two.txt 644 0:0 4",
                "d /x 755 0:0 0",
                "f /x/top.txt 755 0:0 3",
                "f /y 755 0:0 3",
                "d /z 755 0:0 0",
                "f /z/top.txt 755 0:0 3",
            ]
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn several_sources_need_a_directory_destination() {
        crate::layer::testutil::needs_root();
        let e = env();
        let err = run(&e, &job(&["top.txt", "two.txt"], "/out")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "When using COPY with more than one source file, the destination must be a directory and end with a /"
        );
        run(&e, &job(&["top.txt", "two.txt"], "/out/")).unwrap();
        assert_eq!(listing(&e.dst, "/out").len(), 3);
    }

    #[test]
    #[ignore = "needs root"]
    fn wildcards_and_missing_sources() {
        crate::layer::testutil::needs_root();
        let e = env();
        let stats = run(&e, &job(&["t*.txt"], "/w/")).unwrap();
        assert_eq!(stats.files, 2);
        assert_eq!(
            listing(&e.dst, "/w"),
            [
                "d /w 755 0:0 0",
                "f /w/top.txt 755 0:0 3",
                "f /w/two.txt 644 0:0 4"
            ]
        );
        // BuildKit: an empty wildcard copies nothing; a missing literal fails.
        assert_eq!(run(&e, &job(&["nomatch*"], "/n/")).unwrap().files, 0);
        assert!(
            !e.dst.join("n").exists(),
            "an empty wildcard creates nothing"
        );
        let err = run(&e, &job(&["missing.txt"], "/n/")).unwrap_err();
        assert_eq!(err.to_string(), "\"/missing.txt\": not found");
    }

    #[test]
    #[ignore = "needs root"]
    fn sources_are_clamped_into_the_source_root() {
        crate::layer::testutil::needs_root();
        let e = env();
        run(&e, &job(&["../../top.txt"], "/c/")).unwrap();
        run(&e, &job(&["/dir/../two.txt"], "/c/")).unwrap();
        assert_eq!(
            listing(&e.dst, "/c"),
            [
                "d /c 755 0:0 0",
                "f /c/top.txt 755 0:0 3",
                "f /c/two.txt 644 0:0 4"
            ]
        );
        // A top-level symlink escaping the root resolves inside it (here: missing).
        let err = run(&e, &job(&["escape/passwd"], "/c/")).unwrap_err();
        assert!(
            matches!(err, CopyError::Context(ContextError::NotFound(_))),
            "{err}"
        );
        let err = run(&e, &job(&["dir/out"], "/c/")).unwrap_err();
        assert!(
            matches!(err, CopyError::Context(ContextError::NotFound(_))),
            "{err}"
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn top_symlink_dereferenced_nested_kept() {
        crate::layer::testutil::needs_root();
        let e = env();
        run(&e, &job(&["lnk"], "/s/")).unwrap();
        assert_eq!(
            listing(&e.dst, "/s"),
            ["d /s 755 0:0 0", "f /s/lnk 755 0:0 3"]
        );
        // Nested links are copied as links, even when they point outside.
        run(&e, &job(&["dir"], "/n/")).unwrap();
        assert_eq!(
            fs::read_link(e.dst.join("n/out")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn destination_symlinks_resolve_inside_the_root() {
        crate::layer::testutil::needs_root();
        let e = env();
        let host_dir = tempfile::tempdir().unwrap();
        fs::create_dir(e.dst.join("x")).unwrap();
        symlink("/x", e.dst.join("etc")).unwrap();
        symlink(host_dir.path(), e.dst.join("hostdir")).unwrap();
        run(&e, &job(&["top.txt"], "/etc/")).unwrap();
        run(&e, &job(&["two.txt"], "/hostdir/")).unwrap();
        assert!(e.dst.join("x/top.txt").is_file());
        assert_eq!(fs::read_dir(host_dir.path()).unwrap().count(), 0);
        let inside = e
            .dst
            .join(host_dir.path().strip_prefix("/").unwrap())
            .join("two.txt");
        assert!(inside.is_file(), "{}", inside.display());
        // A nested destination symlink is not written through.
        fs::create_dir_all(e.dst.join("app")).unwrap();
        symlink("/x", e.dst.join("app/sub")).unwrap();
        let err = run(&e, &job(&["dir"], "/app/")).unwrap_err();
        assert!(
            matches!(err, CopyError::DirectoryThroughSymlink { ref path, .. } if path == "/app/sub"),
            "{err}"
        );
        // The destination path itself is resolved too (fs.RootPath), inside the root.
        symlink("/x/top.txt", e.dst.join("through")).unwrap();
        run(&e, &job(&["two.txt"], "/through")).unwrap();
        assert!(fs::symlink_metadata(e.dst.join("through"))
            .unwrap()
            .is_symlink());
        assert_eq!(fs::read_to_string(e.dst.join("x/top.txt")).unwrap(), "two!");
        // Nested entries replace a destination symlink instead of following it.
        fs::create_dir_all(e.dst.join("n")).unwrap();
        symlink("/x/top.txt", e.dst.join("n/a.txt")).unwrap();
        fs::remove_file(e.dst.join("app/sub")).unwrap();
        run(&e, &job(&["dir"], "/n/")).unwrap();
        assert!(fs::symlink_metadata(e.dst.join("n/a.txt"))
            .unwrap()
            .is_file());
        assert_eq!(fs::read_to_string(e.dst.join("x/top.txt")).unwrap(), "two!");
    }

    /// Missing parents of the destination are made inside the root (Root::ensure), each
    /// counted; a file where a parent directory is wanted is named in the error.
    #[test]
    #[ignore = "needs root"]
    fn destination_parents_made_or_refused() {
        crate::layer::testutil::needs_root();
        let e = env();
        write(&e.src.join("a.txt"), "a", 0o644);
        let stats = run(&e, &job(&["a.txt"], "/p/q/r/")).unwrap();
        assert_eq!(fs::read_to_string(e.dst.join("p/q/r/a.txt")).unwrap(), "a");
        assert_eq!(stats.dirs, 3);
        // Through an absolute link, inside the root.
        symlink("/p/q", e.dst.join("lnk")).unwrap();
        run(&e, &job(&["a.txt"], "/lnk/s/")).unwrap();
        assert!(e.dst.join("p/q/s/a.txt").is_file());
        write(&e.dst.join("p/file"), "x", 0o644);
        let err = run(&e, &job(&["a.txt"], "/p/file/sub/")).unwrap_err();
        assert_eq!(err.to_string(), "cannot copy to non-directory: /p/file");
    }

    /// Issue 14: `COPY dir/ /` where the context has `dir/lnk/file` and the image has
    /// `/lnk -> usr/realbin`. Current BuildKit refuses it (fsutil's copyDirectoryOnly
    /// lstats the target: "cannot copy to non-directory"; moby/moby#47367), as does docker
    /// 20.10; rbuild says so and where to copy instead. Named as the destination itself, a
    /// link is followed inside the root, whatever it points at (fs.RootPath).
    #[test]
    #[ignore = "needs root"]
    fn directory_meets_a_symlink_below_the_destination() {
        crate::layer::testutil::needs_root();
        let e = env();
        write(&e.src.join("tree/lnk/file"), "f", 0o644);
        fs::create_dir_all(e.dst.join("usr/realbin")).unwrap();
        symlink("usr/realbin", e.dst.join("lnk")).unwrap();
        let err = run(&e, &job(&["tree/"], "/")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot copy to non-directory: /lnk (a symlink to `usr/realbin` in the image, \
             which BuildKit does not copy a directory through; copy that directory to \
             `/usr/realbin/` instead)"
        );
        assert!(!e.dst.join("usr/realbin/file").exists());
        // The link as the destination: relative, absolute, and one climbing out of the root.
        symlink("/usr/realbin", e.dst.join("abs")).unwrap();
        symlink("../../../../../../usr/realbin", e.dst.join("esc")).unwrap();
        for (dest, file) in [
            ("/lnk/", "file"),
            ("/abs/", "file"),
            ("/esc/sub/", "sub/file"),
        ] {
            run(&e, &job(&["tree/lnk/"], dest)).unwrap();
            let written = e.dst.join("usr/realbin").join(file);
            assert_eq!(fs::read_to_string(&written).unwrap(), "f", "{dest}");
            fs::remove_file(written).unwrap();
        }
        assert!(fs::symlink_metadata(e.dst.join("lnk"))
            .unwrap()
            .is_symlink());
    }

    #[test]
    #[ignore = "needs root"]
    fn chown_by_name_from_the_image() {
        crate::layer::testutil::needs_root();
        let e = env();
        fs::create_dir_all(e.dst.join("etc")).unwrap();
        fs::write(
            e.dst.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(e.dst.join("etc/group"), "root:x:0:\nstaff:x:50:app\n").unwrap();
        let mut j = job(&["top.txt"], "/new/deep/");
        j.chown = Some("app".into());
        run(&e, &j).unwrap();
        assert_eq!(
            listing(&e.dst, "/new"),
            [
                "d /new 755 1000:1001 0",
                "d /new/deep 755 1000:1001 0",
                "f /new/deep/top.txt 755 1000:1001 3"
            ]
        );
        j.chown = Some("app:staff".into());
        j.dest = "/g".into();
        run(&e, &j).unwrap();
        assert_eq!(listing(&e.dst, "/g"), ["f /g 755 1000:50 3"]);
        j.chown = Some("77".into());
        run(&e, &j).unwrap();
        assert_eq!(listing(&e.dst, "/g"), ["f /g 755 77:77 3"]);
        j.chown = Some("nobody".into());
        assert!(matches!(run(&e, &j), Err(CopyError::UnknownUser(u)) if u == "nobody"));
        j.chown = Some("app:nogroup".into());
        assert!(matches!(run(&e, &j), Err(CopyError::UnknownGroup(g)) if g == "nogroup"));
    }

    #[test]
    #[ignore = "needs root"]
    fn ownership_reset_for_context_kept_for_stages() {
        crate::layer::testutil::needs_root();
        let e = env();
        run(&e, &job(&["two.txt"], "/ctx")).unwrap();
        let mut j = job(&["two.txt"], "/stage");
        j.preserve_owner = true;
        run(&e, &j).unwrap();
        assert_eq!(listing(&e.dst, "/ctx"), ["f /ctx 644 0:0 4"]);
        assert_eq!(listing(&e.dst, "/stage"), ["f /stage 644 1234:4321 4"]);
    }

    #[test]
    #[ignore = "needs root"]
    fn chmod_octal_and_symbolic() {
        crate::layer::testutil::needs_root();
        let e = env();
        let mut j = job(&["dir"], "/o/");
        j.chmod = Some(Chmod::parse("0640").unwrap());
        run(&e, &j).unwrap();
        let l = listing(&e.dst, "/o");
        assert!(l.contains(&"f /o/a.txt 640 0:0 3".to_string()), "{l:?}");
        assert!(l.contains(&"d /o/sub 640 0:0 0".to_string()), "{l:?}");
        assert!(
            l.contains(&"l /o/out 777 0:0 0 -> /etc/passwd".to_string()),
            "{l:?}"
        );
        let mut j = job(&["dir"], "/s/");
        j.chmod = Some(Chmod::parse("u+x,g-w,o=r").unwrap());
        run(&e, &j).unwrap();
        let l = listing(&e.dst, "/s");
        assert!(l.contains(&"f /s/a.txt 744 0:0 3".to_string()), "{l:?}");
        assert!(l.contains(&"f /s/sub/b.log 704 0:0 2".to_string()), "{l:?}");
        // The parser's own assertions moved with it to dockerfile::chmod.
    }

    /// Issue 14: directories a `COPY --chmod=<octal>` creates on the way to its destination
    /// take that mode (fsutil's MkdirAll since BuildKit v0.21, moby/buildkit testCopyChmod);
    /// only its permission bits, as Go's os.Mkdir/Chmod drop raw setuid/setgid/sticky bits.
    /// A symbolic --chmod leaves them 0755; existing directories keep their mode.
    #[test]
    #[ignore = "needs root"]
    fn chmod_octal_applies_to_created_parents() {
        crate::layer::testutil::needs_root();
        let e = env();
        let mut j = job(&["top.txt"], "/a/b/c/");
        j.chmod = Some(Chmod::parse("0770").unwrap());
        run(&e, &j).unwrap();
        assert_eq!(
            listing(&e.dst, "/a"),
            [
                "d /a 770 0:0 0",
                "d /a/b 770 0:0 0",
                "d /a/b/c 770 0:0 0",
                "f /a/b/c/top.txt 770 0:0 3"
            ]
        );
        // Without a trailing slash the last component is the file; /a exists and keeps 770.
        let mut j = job(&["two.txt"], "/a/new/f");
        j.chmod = Some(Chmod::parse("0700").unwrap());
        j.chown = Some("7:8".into());
        run(&e, &j).unwrap();
        assert_eq!(
            listing(&e.dst, "/a"),
            [
                "d /a 770 0:0 0",
                "d /a/b 770 0:0 0",
                "d /a/b/c 770 0:0 0",
                "f /a/b/c/top.txt 770 0:0 3",
                "d /a/new 700 7:8 0",
                "f /a/new/f 700 7:8 4"
            ]
        );
        // A directory source: the directory made for its contents and the copied ones.
        let mut j = job(&["dir"], "/d/e");
        j.chmod = Some(Chmod::parse("4750").unwrap());
        run(&e, &j).unwrap();
        let l = listing(&e.dst, "/d");
        assert_eq!(&l[..2], ["d /d 750 0:0 0", "d /d/e 750 0:0 0"], "{l:?}");
        assert!(l.contains(&"f /d/e/a.txt 4750 0:0 3".to_string()), "{l:?}");
        assert!(l.contains(&"d /d/e/sub 4750 0:0 0".to_string()), "{l:?}");
        // Symbolic modes have no single mode for a directory: 0755.
        let mut j = job(&["top.txt"], "/s/t/");
        j.chmod = Some(Chmod::parse("go-rwx").unwrap());
        run(&e, &j).unwrap();
        assert_eq!(
            listing(&e.dst, "/s"),
            [
                "d /s 755 0:0 0",
                "d /s/t 755 0:0 0",
                "f /s/t/top.txt 700 0:0 3"
            ]
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn parents_keep_paths_with_anchors() {
        crate::layer::testutil::needs_root();
        let e = env();
        let mut j = job(&["dir/sub/b.log", "./dir/./a.txt", "dir/./sub"], "/p/");
        j.parents = true;
        run(&e, &j).unwrap();
        assert_eq!(
            listing(&e.dst, "/p"),
            [
                "d /p 755 0:0 0",
                "f /p/a.txt 644 0:0 3",
                "d /p/dir 755 0:0 0",
                "d /p/dir/sub 755 0:0 0",
                "f /p/dir/sub/b.log 600 0:0 2",
                "d /p/sub 755 0:0 0",
                "f /p/sub/b.log 600 0:0 2",
            ]
        );
        // The intermediate directory is a copy of the source's (mode 0750 here).
        fs::set_permissions(e.src.join("dir"), fs::Permissions::from_mode(0o750)).unwrap();
        let mut j = job(&["dir/*.txt"], "/q/");
        j.parents = true;
        run(&e, &j).unwrap();
        assert_eq!(
            listing(&e.dst, "/q"),
            [
                "d /q 755 0:0 0",
                "d /q/dir 750 0:0 0",
                "f /q/dir/a.txt 644 0:0 3"
            ]
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn excludes_and_dockerignore() {
        crate::layer::testutil::needs_root();
        let e = env();
        let mut j = job(&["dir", "t*"], "/e/");
        j.excludes = vec!["**/*.log".into(), "two.txt".into()];
        j.ignore = vec!["dir/out".into()];
        run(&e, &j).unwrap();
        assert_eq!(
            listing(&e.dst, "/e"),
            [
                "d /e 755 0:0 0",
                "f /e/a.txt 644 0:0 3",
                "d /e/sub 755 0:0 0",
                "f /e/top.txt 755 0:0 3"
            ]
        );
        // An ignored literal source is not found, as BuildKit never sees it; the message
        // says which pattern left it out.
        let mut j = job(&["top.txt"], "/i/");
        j.ignore = vec!["*.txt".into()];
        assert_eq!(
            run(&e, &j).unwrap_err().to_string(),
            "\"/top.txt\": not found: top.txt is excluded by .dockerignore (pattern `*.txt`)"
        );
    }

    /// Issue 14: a unix socket arrives as an empty regular file with the socket's
    /// permission bits, as BuildKit's context transfer sends it (fsutil's mkstat clears the
    /// socket bit and the sender's open fails, so no data follows; its copier mknods a
    /// socket with S_IFSOCK cleared, which is a regular file too).
    #[test]
    #[ignore = "needs root"]
    fn sockets_become_empty_regular_files() {
        crate::layer::testutil::needs_root();
        let e = env();
        let sock = e.src.join("dir/app.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o640)).unwrap();
        let stats = run(&e, &job(&["dir"], "/s/")).unwrap();
        assert_eq!(stats.specials, 0);
        let l = listing(&e.dst, "/s");
        assert!(l.contains(&"f /s/app.sock 640 0:0 0".to_string()), "{l:?}");
        // Named alone, and with --chmod.
        let mut j = job(&["dir/app.sock"], "/one");
        j.chmod = Some(Chmod::parse("0600").unwrap());
        run(&e, &j).unwrap();
        assert_eq!(listing(&e.dst, "/one"), ["f /one 600 0:0 0"]);
    }

    /// The files of a walk are copied by threads, each directory's by one ([`Files`]):
    /// every file arrives with its content and metadata, links across directories stay
    /// links, files there are replaced, and a file no thread can write fails the copy
    /// with its own error.
    #[test]
    #[ignore = "needs root"]
    fn files_copied_by_threads_arrive_whole_or_fail_the_copy() {
        crate::layer::testutil::needs_root();
        let e = env();
        let tree = e.src.join("tree");
        let mut want = Vec::new();
        for d in 0..24 {
            for f in 0..40 {
                let rel = format!("d{d:02}/f{f:02}");
                let mode = [0o644, 0o600, 0o755, 0o4755][(d + f) % 4];
                write(&tree.join(&rel), &rel.repeat(f % 3), mode);
                // Again: the chown cleared the set-user-ID bit.
                fs::set_permissions(tree.join(&rel), fs::Permissions::from_mode(mode)).unwrap();
                let mtime = 2_000_000 + (d * 100 + f) as i64;
                set_times(&tree.join(&rel), 1_000_000 + f as i64, 0, mtime, 7).unwrap();
                let size = (rel.len() * (f % 3)) as u64;
                want.push((rel, mode, size, mtime));
            }
        }
        // A directory of more files than a thread's queue holds: its files go on to another
        // thread when the first one's queue is full.
        let big = 3 * FILE_QUEUE;
        for f in 0..big {
            let rel = format!("big/{f:04}");
            write(&tree.join(&rel), &rel, 0o644);
            set_times(&tree.join(&rel), 1_000_000, 0, 3_000_000 + f as i64, 7).unwrap();
            want.push((rel, 0o644, 8, 3_000_000 + f as i64));
        }
        fs::hard_link(tree.join("d03/f01"), tree.join("d20/linked")).unwrap();
        // Below the destination already: a file to replace.
        write(&e.dst.join("out/d05/f05"), "old content", 0o600);
        let stats = run(&e, &job(&["tree"], "/out")).unwrap();
        assert_eq!((stats.files, stats.hardlinks), (24 * 40 + big as u64, 1));
        for (rel, mode, size, mtime) in &want {
            let m = fs::symlink_metadata(e.dst.join("out").join(rel)).unwrap();
            let got = (
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
            );
            assert_eq!(got, (*mode, 0, 0, *size, *mtime, 7), "{rel}");
            let content = fs::read_to_string(e.dst.join("out").join(rel)).unwrap();
            assert_eq!(
                content,
                fs::read_to_string(tree.join(rel)).unwrap(),
                "{rel}"
            );
        }
        let first = fs::metadata(e.dst.join("out/d03/f01")).unwrap();
        let link = fs::metadata(e.dst.join("out/d20/linked")).unwrap();
        assert_eq!((first.ino(), first.nlink()), (link.ino(), 2));

        // A directory where a file goes: the thread's error is the copy's.
        let e = env();
        for d in 0..24 {
            for f in 0..40 {
                write(&e.src.join(format!("tree/d{d:02}/f{f:02}")), "x", 0o644);
            }
        }
        fs::create_dir_all(e.dst.join("out/d17/f09")).unwrap();
        let err = run(&e, &job(&["tree"], "/out")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot replace directory /out/d17/f09 with a non-directory"
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn metadata_hardlinks_and_prepared_files() {
        crate::layer::testutil::needs_root();
        let e = env();
        fs::hard_link(e.src.join("dir/a.txt"), e.src.join("dir/hard")).unwrap();
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(e.src.join("dir/a.txt"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let stats = run(&e, &job(&["dir"], "/h/")).unwrap();
        assert_eq!(stats.hardlinks, 1);
        let a = fs::metadata(e.dst.join("h/a.txt")).unwrap();
        let h = fs::metadata(e.dst.join("h/hard")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (h.ino(), 2));
        assert_eq!(a.mtime(), 1_000_000);

        let prepared = e.dst.parent().unwrap().join("download");
        fs::write(&prepared, "payload").unwrap();
        let j = CopyJob {
            sources: vec![CopySrc::File {
                name: "file.bin".into(),
                host_path: prepared,
                mode: 0o600,
                unpack: false,
            }],
            dest: "/dl/".into(),
            workdir: "/".into(),
            ..CopyJob::default()
        };
        run(&e, &j).unwrap();
        assert_eq!(
            listing(&e.dst, "/dl"),
            ["d /dl 755 0:0 0", "f /dl/file.bin 600 0:0 7"]
        );
    }

    enum Codec {
        None,
        Gzip,
        Bzip2,
        Xz,
        Zstd,
    }

    /// A tar with raw names (so hostile ones can be written), compressed with `codec`.
    fn archive(entries: &[(&str, tar::EntryType, &str)], codec: Codec) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o750 } else { 0o640 });
            h.set_uid(7);
            h.set_gid(8);
            h.set_mtime(1_234_567);
            let body: &[u8] = if kind.is_file() { data.as_bytes() } else { b"" };
            if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                h.set_link_name(data).unwrap();
            }
            h.set_size(body.len() as u64);
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        let tar = b.into_inner().unwrap();
        match codec {
            Codec::None => tar,
            Codec::Gzip => {
                let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                w.write_all(&tar).unwrap();
                w.finish().unwrap()
            }
            Codec::Bzip2 => {
                let mut w = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                w.write_all(&tar).unwrap();
                w.finish().unwrap()
            }
            Codec::Xz => {
                let mut w = liblzma::write::XzEncoder::new(Vec::new(), 1);
                w.write_all(&tar).unwrap();
                w.finish().unwrap()
            }
            Codec::Zstd => zstd::encode_all(&tar[..], 1).unwrap(),
        }
    }

    fn add_job(src: &str, dest: &str) -> CopyJob {
        let mut j = job(&[src], dest);
        j.add = true;
        j
    }

    #[test]
    #[ignore = "needs root"]
    fn add_extracts_archives_by_content() {
        crate::layer::testutil::needs_root();
        use tar::EntryType::*;
        let e = env();
        let entries = [
            ("d/", Directory, ""),
            ("d/f", Regular, "hello"),
            ("d/l", Symlink, "f"),
            ("d/h", Link, "d/f"),
        ];
        let codecs = [
            ("plain.dat", Codec::None),
            ("gz.dat", Codec::Gzip),
            ("bz.dat", Codec::Bzip2),
            ("xz.dat", Codec::Xz),
            ("zst.dat", Codec::Zstd),
        ];
        for (name, codec) in codecs {
            fs::write(e.src.join(name), archive(&entries, codec)).unwrap();
            let stats = run(&e, &add_job(name, &format!("/{name}-out"))).unwrap();
            assert_eq!(stats.archives, 1, "{name}");
            assert_eq!(
                listing(&e.dst, &format!("/{name}-out")),
                [
                    format!("d /{name}-out 755 0:0 0"),
                    format!("d /{name}-out/d 750 7:8 0"),
                    format!("f /{name}-out/d/f 640 7:8 5"),
                    format!("f /{name}-out/d/h 640 7:8 5"),
                    format!("l /{name}-out/d/l 777 7:8 0 -> f"),
                ],
                "{name}"
            );
            assert_eq!(
                fs::metadata(e.dst.join(format!("{name}-out/d/f")))
                    .unwrap()
                    .mtime(),
                1_234_567
            );
        }
        // Not an archive (despite its name): copied as a file. COPY never extracts.
        fs::write(e.src.join("fake.tar.gz"), "not a tar").unwrap();
        run(&e, &add_job("fake.tar.gz", "/fake/")).unwrap();
        assert_eq!(
            listing(&e.dst, "/fake"),
            ["d /fake 755 0:0 0", "f /fake/fake.tar.gz 644 0:0 9"]
        );
        run(&e, &job(&["gz.dat"], "/copied/")).unwrap();
        assert!(e.dst.join("copied/gz.dat").is_file());
    }

    #[test]
    #[ignore = "needs root"]
    fn hostile_archives_stay_inside_or_are_refused() {
        crate::layer::testutil::needs_root();
        use tar::EntryType::*;
        let e = env();
        let outside = e.dst.parent().unwrap().join("evil");
        for (i, entries) in [
            vec![("../evil", Regular, "x")],
            vec![("a/../../evil", Regular, "x")],
            vec![("ok", Regular, "x"), ("h", Link, "../evil")],
        ]
        .into_iter()
        .enumerate()
        {
            let name = format!("bad{i}.tar");
            fs::write(e.src.join(&name), archive(&entries, Codec::None)).unwrap();
            let err = run(&e, &add_job(&name, "/x/")).unwrap_err();
            assert!(matches!(err, CopyError::Archive { .. }), "{i}: {err}");
            assert!(!outside.exists());
        }
        // Writing through an archive's own symlink stays inside the destination.
        let entries = [
            ("l", Symlink, "/"),
            ("l/etc/evil", Regular, "x"),
            ("abs", Symlink, "../../.."),
            ("abs/evil2", Regular, "y"),
        ];
        fs::write(e.src.join("links.tar"), archive(&entries, Codec::Gzip)).unwrap();
        run(&e, &add_job("links.tar", "/y/")).unwrap();
        assert!(e.dst.join("y/etc/evil").is_file());
        assert!(e.dst.join("y/evil2").is_file());
        assert!(!outside.exists());
        assert!(!e.dst.join("etc/evil").exists());
    }
    /// Regression (issue 15): ADD extracted local archives through the copier's own
    /// path-string resolver and cast tar ids with `as u32`, so a base-256 uid of 2^32
    /// became 0 (root). Archives now go through layer::apply, as pulled layers do: an
    /// out-of-range id is refused naming the entry, `..` cannot leave the destination and
    /// the archive's own symlinks resolve inside it.
    #[test]
    #[ignore = "needs root"]
    fn add_archives_go_through_the_hardened_applier() {
        crate::layer::testutil::needs_root();
        use tar::EntryType::*;
        let e = env();
        let host = e.dst.parent().unwrap().to_path_buf();
        let entry = |b: &mut tar::Builder<Vec<u8>>, name: &str, kind, uid: u64, data: &str| {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_uid(uid);
            h.set_gid(0);
            let body: &[u8] = if kind == Symlink {
                b""
            } else {
                data.as_bytes()
            };
            if kind == Symlink {
                h.set_link_name(data).unwrap();
            }
            h.set_size(body.len() as u64);
            h.set_cksum();
            b.append(&h, body).unwrap();
        };
        // A uid of 2^32, written base-256 (GNU binary numbers).
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "fine", Regular, 5, "ok");
        entry(&mut b, "big", Regular, 1 << 32, "root?");
        fs::write(e.src.join("ids.tar"), b.into_inner().unwrap()).unwrap();
        let err = run(&e, &add_job("ids.tar", "/ids/")).unwrap_err();
        assert!(matches!(err, CopyError::Archive { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("big") && msg.contains("uid out of range"),
            "{msg}"
        );
        assert!(!e.dst.join("ids/big").exists());

        // `../x` names a path outside the destination.
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "../x", Regular, 0, "out");
        fs::write(e.src.join("up.tar"), b.into_inner().unwrap()).unwrap();
        let err = run(&e, &add_job("up.tar", "/up/")).unwrap_err();
        assert!(matches!(err, CopyError::Archive { .. }), "{err}");
        assert!(err.to_string().contains("../x"), "{err}");
        assert!(!host.join("x").exists() && !e.dst.join("x").exists());

        // A symlink that climbs out, then a file through it: it lands inside the
        // destination, never on the host.
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "l", Symlink, 0, "../../../../..");
        entry(&mut b, "l/x", Regular, 9, "through");
        entry(&mut b, "abs", Symlink, 0, &host.display().to_string());
        entry(&mut b, "abs/y", Regular, 9, "abs");
        fs::write(e.src.join("links2.tar"), b.into_inner().unwrap()).unwrap();
        run(&e, &add_job("links2.tar", "/in/")).unwrap();
        assert!(!host.join("x").exists() && !host.join("y").exists());
        assert_eq!(fs::read_to_string(e.dst.join("in/x")).unwrap(), "through");
        let inner = e.dst.join("in").join(host.strip_prefix("/").unwrap());
        assert_eq!(fs::read_to_string(inner.join("y")).unwrap(), "abs");
        assert_eq!(fs::symlink_metadata(e.dst.join("in/x")).unwrap().uid(), 9);
    }
}
