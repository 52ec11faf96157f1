//! What a COPY reads: source arguments resolved to matches (wildcards per path component,
//! the top-level symlink dereferenced inside the root), then each match walked without
//! following symlinks, filtered by `.dockerignore` and `--exclude`. The content digest and
//! the copier both use this, so the cache key covers exactly what the copy reads.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{openat, Dir as Listing, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::listings::{self, Listings};
use super::meta::Meta;
use super::statcache::{lock, StatKey};
use super::{glob, host_path, open_root, ContextError, IgnoreMatcher};
use crate::layer::order::SortedNames;
use crate::sandbox::root::{clean, Root};

/// One match of a source argument.
#[derive(Debug)]
pub(crate) struct Match {
    /// The path as named by the source (wildcards expanded), relative to the root; its
    /// base name names the destination entry.
    pub named: String,
    /// Where it lives after resolving symlinks inside the root (relative to the root).
    pub real: String,
    pub host: PathBuf,
    pub meta: Meta,
}

/// One entry below (or at) a match.
#[derive(Debug)]
pub(crate) struct Entry {
    pub host: PathBuf,
    /// Where [`Entry::rel`] starts in `host`.
    rel_at: usize,
    pub meta: Meta,
}

impl Entry {
    /// Path relative to the match (`""` for the match itself): the end of `host`, which is
    /// the match's host path and then this path (one allocation per entry, not two: issue
    /// 23's million-file walks).
    pub fn rel(&self) -> &Path {
        rel_of(&self.host, self.rel_at)
    }

    /// Where [`Entry::rel`] starts in `host`.
    pub fn rel_at(&self) -> usize {
        self.rel_at
    }
}

/// The end of `host` from `rel_at`: a path below a match, kept in its host path.
pub(crate) fn rel_of(host: &Path, rel_at: usize) -> &Path {
    Path::new(OsStr::from_bytes(&host.as_os_str().as_bytes()[rel_at..]))
}

/// `name`'s host path in the directory at `host`, whose relative path starts at `rel_at`,
/// and where the child's relative path starts; made in `buf`'s allocation when it has one.
fn child_of(host: &Path, rel_at: usize, name: &OsStr, buf: Option<PathBuf>) -> (PathBuf, usize) {
    let child = child_path_in(host, name, buf.unwrap_or_default());
    let rel_at = if rel_at >= host.as_os_str().len() {
        child.as_os_str().len() - name.len()
    } else {
        rel_at
    };
    (child, rel_at)
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn stat(path: &Path, follow: bool) -> Result<Option<Meta>, ContextError> {
    gone_is_none(path, Meta::path(path, follow))
}

/// `r` for `path`, with "it is not there" (removed while walking, or a parent that is not a
/// directory) as `None`.
fn gone_is_none<T>(path: &Path, r: std::io::Result<T>) -> Result<Option<T>, ContextError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(ContextError::io(path, e)),
    }
}

/// Resolve one source argument under `root`. A literal path that does not exist is
/// `"/path": not found`, one that `.dockerignore` leaves out says so and names the pattern;
/// a wildcard that matches nothing gives no matches (BuildKit's dockerfile frontend sets
/// AllowEmptyWildcard), unless the directory part before the first wildcard is missing or
/// ignored, which BuildKit also reports as an error.
pub(crate) fn resolve(
    root: &Path,
    source: &str,
    follow_top: bool,
    ignore: &IgnoreMatcher,
) -> Result<Vec<Match>, ContextError> {
    let cleaned = clean(source);
    let beneath = &open_root(root)?;
    let components: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).collect();
    let first_meta = components.iter().position(|c| glob::has_meta(c));
    let Some(first_meta) = first_meta else {
        return literal(root, beneath, &cleaned, follow_top, ignore).map(|m| vec![m]);
    };
    for c in &components {
        if glob::has_meta(c) {
            glob::validate(c).map_err(|reason| ContextError::BadPattern {
                pattern: source.to_string(),
                reason,
            })?;
        }
    }
    // The fixed prefix must exist: BuildKit fails with lstat ENOENT there.
    let prefix = components[..first_meta].join("/");
    let prefix_real = super::resolve(beneath, &prefix, true)?;
    match stat(&host_path(root, &prefix_real), false)? {
        Some(m) if m.is_dir() => not_ignored(&prefix, &prefix_real, ignore)?,
        _ => return Err(ContextError::NotFound(prefix)),
    }
    // Candidates as named; expand component by component (Go's filepath.Glob).
    let mut candidates: Vec<String> = vec![prefix];
    for comp in &components[first_meta..] {
        let mut next = Vec::new();
        for cand in &candidates {
            let real = super::resolve(beneath, cand, true)?;
            let dir = host_path(root, &real);
            if glob::has_meta(comp) {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(_) => continue,
                };
                let mut names: Vec<String> = Vec::new();
                for e in rd {
                    let e = e.map_err(|e| ContextError::io(&dir, e))?;
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if glob::matches(comp, &name) {
                        names.push(name.into_owned());
                    }
                }
                names.sort();
                next.extend(names.into_iter().map(|n| join(cand, &n)));
            } else {
                next.push(join(cand, comp));
            }
        }
        candidates = next;
    }
    let mut out = Vec::new();
    for cand in candidates {
        let real = super::resolve(beneath, &cand, follow_top)?;
        let host = host_path(root, &real);
        let Some(meta) = stat(&host, false)? else {
            continue;
        };
        if ignore.matches(&real) {
            continue;
        }
        out.push(Match {
            named: cand,
            real,
            host,
            meta,
        });
    }
    Ok(out)
}

fn literal(
    root: &Path,
    beneath: &Root,
    cleaned: &str,
    follow_top: bool,
    ignore: &IgnoreMatcher,
) -> Result<Match, ContextError> {
    let real = super::resolve(beneath, cleaned, follow_top)?;
    let host = host_path(root, &real);
    let meta = stat(&host, false)?.ok_or_else(|| ContextError::NotFound(cleaned.to_string()))?;
    not_ignored(cleaned, &real, ignore)?;
    Ok(Match {
        named: cleaned.to_string(),
        real,
        host,
        meta,
    })
}

/// A source named `named` that exists at `real` must not be left out by `.dockerignore`:
/// BuildKit never receives it and fails with `not found`; rbuild says which pattern.
fn not_ignored(named: &str, real: &str, ignore: &IgnoreMatcher) -> Result<(), ContextError> {
    match ignore.excluded_by(real) {
        Some(pattern) => Err(ContextError::Ignored {
            path: named.to_string(),
            excluded: real.to_string(),
            pattern: pattern.to_string(),
        }),
        None => Ok(()),
    }
}

/// `dir/name` in one allocation of its final size (`Path::join` copies `dir` and then grows
/// the copy): the walk makes two of these for every file of the context.
fn child_path(dir: &Path, name: &OsStr) -> PathBuf {
    child_path_in(dir, name, PathBuf::new())
}

/// [`child_path`] made in `buf` (its contents dropped, its allocation kept and grown if
/// short).
fn child_path_in(dir: &Path, name: &OsStr, mut buf: PathBuf) -> PathBuf {
    buf.as_mut_os_string().clear();
    buf.reserve(dir.as_os_str().len() + 1 + name.len());
    buf.push(dir);
    buf.push(name);
    buf
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// Walk a match: the match itself first, then everything below a directory, symlinks not
/// followed, in the byte-wise order of the whole path (`a`, `a.txt`, `a/b`: the order the
/// content digest sorts its records in, and parents before children), so the digest and
/// the copy can both consume it as a stream. `ignore` sees paths relative to the root (the
/// context), `excludes` paths relative to the match. A directory that is itself ignored
/// but may hold re-included entries is emitted only when something inside it is.
///
/// Memory: the names of the directories being walked (one per level, in one buffer each),
/// nothing per entry already emitted.
pub(crate) fn walk<'a>(
    m: &Match,
    ignore: &'a IgnoreMatcher,
    excludes: &'a IgnoreMatcher,
) -> Walk<'a> {
    Walk {
        ignore,
        excludes,
        filters: !(ignore.is_empty() && excludes.is_empty()),
        top: Some(Entry {
            host: m.host.clone(),
            rel_at: m.host.as_os_str().len(),
            meta: m.meta.clone(),
        }),
        open: m.meta.is_dir().then(|| Dir {
            host: m.host.clone(),
            rel_at: m.host.as_os_str().len(),
            ctx: m.real.clone(),
        }),
        stack: Vec::new(),
        stat_ahead: false,
        listings: None,
        spare: Vec::new(),
    }
}

/// The stream of [`walk`].
pub(crate) struct Walk<'a> {
    ignore: &'a IgnoreMatcher,
    excludes: &'a IgnoreMatcher,
    /// Whether either matcher has patterns (else no path is made for them).
    filters: bool,
    /// The match itself, until it is yielded.
    top: Option<Entry>,
    /// The match's directory, listed on the first call after the match was yielded.
    open: Option<Dir>,
    stack: Vec<Frame>,
    /// Whether large directories are stat'ed by two threads ([`Ahead`]).
    stat_ahead: bool,
    /// Listings of unchanged directories, read instead of the directories.
    listings: Option<Arc<Mutex<Listings>>>,
    /// Paths of yielded entries handed back ([`Walk::recycle`]), to make the next ones in.
    spare: Vec<PathBuf>,
}

impl Walk<'_> {
    /// Stat the files of large directories on a second thread too ([`Ahead`]): for the
    /// content digest, not for the sandbox's copy (its helper process stays one thread).
    pub(crate) fn with_stat_ahead(mut self) -> Self {
        self.stat_ahead = true;
        self
    }

    /// Read the names of directories that did not change since an earlier build from
    /// `listings`, and remember the others' there: for the content digest, whose stat
    /// cache keeps them, not for the sandbox's copy.
    pub(crate) fn with_listings(mut self, listings: Arc<Mutex<Listings>>) -> Self {
        self.listings = Some(listings);
        self
    }

    /// Take back the path of an entry this walk (or another) yielded: the next entries'
    /// paths are made in such allocations, not new ones (a malloc and a free a file were
    /// ~9 % of a million-file walk's thread: issue 23). At most [`SPARE_MAX`] are kept.
    pub(crate) fn recycle(&mut self, host: PathBuf) {
        if self.spare.len() < SPARE_MAX {
            self.spare.push(host);
        }
    }
}

/// The most paths a walk keeps for reuse: the records of a few of the digest's batches.
const SPARE_MAX: usize = 8192;

/// A directory to list: where it is, relative to the match (the end of `host`, from
/// `rel_at`) and to the context.
struct Dir {
    host: PathBuf,
    rel_at: usize,
    ctx: String,
}

impl Dir {
    fn rel(&self) -> &Path {
        rel_of(&self.host, self.rel_at)
    }

    fn child(&self, name: &OsStr, ctx: String, buf: Option<PathBuf>) -> Dir {
        let (host, rel_at) = child_of(&self.host, self.rel_at, name, buf);
        Dir { host, rel_at, ctx }
    }
}

/// A listed directory: its kept children's names, in the order to visit them, and the
/// directory itself kept open (while the budget lasts) to stat and open them relative to.
struct Frame {
    dir: Dir,
    held: Option<Held>,
    names: SortedNames,
    /// A large directory's stats, shared with the stat-ahead thread, and the index of the
    /// next name to stat (see [`Ahead`]).
    ahead: Option<(Arc<Ahead>, usize)>,
}

/// Directories with fewer names to stat are stat'ed by the walk alone: handing one to the
/// other thread costs more than it saves.
const AHEAD_MIN: usize = 64;

/// The names of a large directory the walk will stat, in walk order, for the stat-ahead
/// thread to stat from the last one backwards while the walk stats from the first one
/// forwards. Each name is stat'ed once, by whichever side claims it first; the walk waits
/// only for a name the other side has claimed and not finished. A cached rebuild of a
/// large context is one statx a file, and on one thread that was the build's critical
/// path (docs/performance.md, issue 23). The walk uses the results as it would its own:
/// same call, same directory (its own fd of it, opened again by "." from the walk's), same
/// order of errors.
struct Ahead {
    dir: OwnedFd,
    names: Vec<u8>,
    spans: Vec<(u32, u32)>,
    claimed: Vec<AtomicBool>,
    done: Vec<OnceLock<std::io::Result<Meta>>>,
    /// The walk waits on `wake` for a name the other side claimed; `waiting` says so.
    waiting: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Ahead {
    /// The stats of `names` (none if too few), queued for the stat-ahead thread.
    fn start(held: &Held, names: &SortedNames) -> Option<Arc<Ahead>> {
        let stats = || names.upcoming().filter(|v| !v.contents);
        if stats().count() < AHEAD_MIN {
            return None;
        }
        let queue = AHEAD_QUEUE.get_or_init(spawn_stat_ahead).as_ref()?;
        // The other thread's fd of the directory: opened again, not duplicated. Each `statx`
        // takes a reference on its dirfd's open file, and two threads taking them on one
        // file contend for its count, so each side stats relative to its own.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = openat(held.fd(), ".", flags, Mode::empty()).ok()?;
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for v in stats() {
            let name = names.name(v);
            spans.push((buf.len() as u32, name.len() as u32));
            buf.extend_from_slice(name);
        }
        let ahead = Arc::new(Ahead {
            dir,
            claimed: spans.iter().map(|_| AtomicBool::new(false)).collect(),
            done: spans.iter().map(|_| OnceLock::new()).collect(),
            names: buf,
            spans,
            waiting: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Arc::clone(&ahead))
            .ok()?;
        Some(ahead)
    }

    fn name(&self, i: usize) -> &Path {
        let (start, len) = self.spans[i];
        Path::new(OsStr::from_bytes(
            &self.names[start as usize..(start + len) as usize],
        ))
    }

    /// The walk's stat of name `i`: its own, relative to `own` (the walk's fd of the same
    /// directory, not [`Ahead::dir`]: see [`Ahead::start`]), or the other side's.
    fn take(&self, i: usize, own: BorrowedFd<'_>) -> std::io::Result<Meta> {
        if !self.claimed[i].swap(true, Ordering::AcqRel) {
            return Meta::at(own, self.name(i), false);
        }
        let done = match self.done[i].get() {
            Some(done) => done,
            // The other side claimed it and is in its statx (or was switched out there):
            // sleep until it says it is done.
            None => {
                self.waiting.store(true, Ordering::SeqCst);
                let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(done) = self.done[i].get() {
                        break done;
                    }
                    guard = self
                        .wake
                        .wait_timeout(guard, std::time::Duration::from_millis(1))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        };
        match done {
            Ok(meta) => Ok(meta.clone()),
            Err(e) => Err(match e.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(e.kind(), e.to_string()),
            }),
        }
    }

    /// The stat-ahead side: from the last name back to the first the walk has claimed.
    /// A walk that is gone (an error, or the digest done) leaves it the only owner.
    fn run_backwards(self: Arc<Ahead>) {
        for i in (0..self.spans.len()).rev() {
            if Arc::strong_count(&self) == 1 || self.claimed[i].swap(true, Ordering::AcqRel) {
                return;
            }
            let _ = self.done[i].set(Meta::at(&self.dir, self.name(i), false));
            // Read before it is swapped: a write every name would take the flag's cache
            // line from the walk's core, which reads the fields beside it every name. A
            // wake missed by the plain read is the walk's 1 ms timeout, at most.
            if self.waiting.load(Ordering::SeqCst) && self.waiting.swap(false, Ordering::SeqCst) {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.wake.notify_all();
            }
        }
    }
}

/// The stat-ahead thread's queue: one thread for the process, started by the first large
/// directory; `None` if it could not be started (the walks then stat on their own).
static AHEAD_QUEUE: OnceLock<Option<Mutex<Sender<Arc<Ahead>>>>> = OnceLock::new();

fn spawn_stat_ahead() -> Option<Mutex<Sender<Arc<Ahead>>>> {
    let (tx, rx) = std::sync::mpsc::channel::<Arc<Ahead>>();
    std::thread::Builder::new()
        .name("stat-ahead".into())
        .spawn(move || {
            for ahead in rx {
                ahead.run_backwards();
            }
        })
        .ok()?;
    Some(Mutex::new(tx))
}

/// The most directories all walks keep open at once. Several walks are open together (the
/// digest merges one per match, and `COPY * /` can match thousands), and the limit on
/// open files is shared with everything else; a directory past the budget is stat'ed and
/// listed by its full path instead (slower, as safe: see [`open_dir`]).
const HELD_LIMIT: usize = 256;
static HELD: AtomicUsize = AtomicUsize::new(0);

/// A directory kept open for the walk below it, counted against [`HELD_LIMIT`].
struct Held(Listing);

impl Held {
    fn take(listing: Listing) -> Option<Held> {
        if HELD.fetch_add(1, Ordering::Relaxed) < HELD_LIMIT {
            Some(Held(listing))
        } else {
            HELD.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.0
            .fd()
            .unwrap_or_else(|_| unreachable!("a Dir always has its fd"))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tags of the names: emit an entry, or (an ignored directory that exceptions may re-include
/// inside) emit it only if something inside is kept.
const EMIT: u8 = 0;
const EMIT_IF_KEPT: u8 = 1;

/// Opens the directory `name` of `parent` (or, without one, `host` from the working
/// directory) to list, never through a symlink in its place: the context is hostile, and
/// a directory swapped for a symlink while it is walked is not followed out of it. `None`
/// if it is gone or is no longer a directory.
fn open_dir(
    parent: Option<BorrowedFd<'_>>,
    name: &OsStr,
    host: &Path,
) -> Result<Option<Listing>, ContextError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd: Result<OwnedFd, Errno> = match parent {
        Some(fd) => openat(fd, name, flags, Mode::empty()),
        None => openat(CWD, host, flags, Mode::empty()),
    };
    match fd.and_then(Listing::new) {
        Ok(listing) => Ok(Some(listing)),
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => Ok(None),
        Err(e) => Err(ContextError::io(host, e.into())),
    }
}

/// `name` in the directory `held`, or `host` by its full path without one; `None` if it
/// is gone.
fn stat_in(held: Option<&Held>, name: &OsStr, host: &Path) -> Result<Option<Meta>, ContextError> {
    match held {
        Some(h) => gone_is_none(host, Meta::at(h.fd(), Path::new(name), false)),
        None => stat(host, false),
    }
}

/// A child of a listed directory, with the paths the matchers see.
struct Child<'n> {
    name: &'n OsStr,
    is_dir: bool,
    ctx: String,
    rel: String,
}

impl Walk<'_> {
    /// The children of `dir` (listed by `listing`) that the matchers do not exclude, in no
    /// particular order; with `seen`, every name listed is added to it
    /// ([`listings::push_name`]) unless they come to more than [`listings::MAX_LISTING`]
    /// bytes, when it is left empty.
    fn children(
        &self,
        dir: &Dir,
        listing: &mut Listing,
        mut seen: Option<&mut Vec<u8>>,
        mut each: impl FnMut(Child, &Listing) -> Result<bool, ContextError>,
    ) -> Result<(), ContextError> {
        while let Some(e) = listing.next() {
            let e = e.map_err(|e| ContextError::io(&dir.host, e.into()))?;
            let name = OsStr::from_bytes(e.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            // d_type from the listing; lstat where the filesystem has none.
            let ft = match e.file_type() {
                FileType::Unknown => {
                    let at = listing
                        .fd()
                        .map_err(|e| ContextError::io(&dir.host, e.into()));
                    match Meta::at(at?, Path::new(name), false) {
                        Ok(m) => m.file_type(),
                        Err(_) => continue, // removed while walking
                    }
                }
                ft => ft,
            };
            let is_dir = ft.is_dir();
            let full = seen.as_deref_mut().is_some_and(|seen| {
                listings::push_name(seen, name.as_bytes(), is_dir);
                seen.len() > listings::MAX_LISTING
            });
            if full {
                // Too large to remember: its memory goes now, and the names are not kept.
                if let Some(seen) = seen.take() {
                    *seen = Vec::new();
                }
            }
            let Some(child) = self.child(dir, name, is_dir) else {
                continue;
            };
            if !each(child, listing)? {
                break;
            }
        }
        Ok(())
    }

    /// `name` in `dir` as a child, unless the matchers exclude it.
    fn child<'n>(&self, dir: &Dir, name: &'n OsStr, is_dir: bool) -> Option<Child<'n>> {
        // Without patterns no matcher reads the paths (and [`Walk::held`] is false): a
        // context without a .dockerignore lists its files without making them.
        let (ctx, rel) = if self.filters {
            let ctx = join(&dir.ctx, &lossy(Path::new(name)));
            let rel = lossy(&child_path(dir.rel(), name));
            if self.ignore.is_excluded(&ctx, is_dir) || self.excludes.is_excluded(&rel, is_dir) {
                return None;
            }
            (ctx, rel)
        } else {
            (String::new(), String::new())
        };
        Some(Child {
            name,
            is_dir,
            ctx,
            rel,
        })
    }

    fn held(&self, c: &Child) -> bool {
        c.is_dir && (self.ignore.matches(&c.ctx) || self.excludes.matches(&c.rel))
    }

    /// List `dir`, opened as `listing`, onto the stack (`None`: it is gone).
    fn push(&mut self, dir: Dir, listing: Option<Listing>) -> Result<(), ContextError> {
        let Some(mut listing) = listing else {
            return Ok(());
        };
        let mut names = SortedNames::default();
        let mut add = |c: Child| {
            let tag = if self.held(&c) { EMIT_IF_KEPT } else { EMIT };
            names.add(c.name.as_bytes(), c.is_dir, tag);
        };
        // The directory's key, taken before it is listed: a change after it shows in the
        // key of the next build.
        let key = self.listings.as_ref().and_then(|listings| {
            let fd = listing.fd().ok()?;
            let meta = Meta::of(fd).ok()?;
            lock(listings).usable(meta.dev(), fd).then_some(())?;
            StatKey::of_meta(&meta)
        });
        let cached = match (&self.listings, &key) {
            (Some(listings), Some(key)) => lock(listings).lookup(key),
            _ => None,
        };
        match cached.as_deref().and_then(listings::names) {
            Some(cached) => {
                for (name, is_dir) in cached {
                    if let Some(c) = self.child(&dir, OsStr::from_bytes(name), is_dir) {
                        add(c);
                    }
                }
            }
            None => {
                let mut seen = key.map(|_| Vec::new());
                self.children(&dir, &mut listing, seen.as_mut(), |c, _| {
                    add(c);
                    Ok(true)
                })?;
                if let (Some(listings), Some(key), Some(seen)) = (&self.listings, &key, seen) {
                    lock(listings).remember(key, &seen);
                }
            }
        }
        names.sort();
        let held = Held::take(listing);
        let ahead = match (&held, self.stat_ahead) {
            (Some(h), true) => Ahead::start(h, &names).map(|a| (a, 0)),
            _ => None,
        };
        self.stack.push(Frame {
            dir,
            held,
            names,
            ahead,
        });
        Ok(())
    }

    /// Whether walking `dir`, opened as `listing`, would emit anything.
    fn keeps_anything(&self, dir: &Dir, listing: Option<Listing>) -> Result<bool, ContextError> {
        let Some(mut listing) = listing else {
            return Ok(false);
        };
        let mut kept = false;
        self.children(dir, &mut listing, None, |c, at| {
            kept = !self.held(&c) || {
                let inner_dir = dir.child(c.name, c.ctx, None);
                let host = &inner_dir.host;
                let at = at.fd().map_err(|e| ContextError::io(host, e.into()))?;
                let inner = open_dir(Some(at), c.name, host)?;
                self.keeps_anything(&inner_dir, inner)?
            };
            Ok(!kept)
        })?;
        Ok(kept)
    }

    fn step(&mut self) -> Result<Option<Entry>, ContextError> {
        if let Some(top) = self.top.take() {
            return Ok(Some(top));
        }
        if let Some(dir) = self.open.take() {
            let listing = open_dir(None, OsStr::new(""), &dir.host)?;
            self.push(dir, listing)?;
        }
        loop {
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(visit) = frame.names.next() else {
                self.stack.pop();
                continue;
            };
            let name = OsStr::from_bytes(frame.names.name(&visit));
            // A file's path as the matchers see it (`ctx`) is not needed again.
            let lists = visit.contents || visit.tag == EMIT_IF_KEPT;
            let ctx = if lists {
                join(&frame.dir.ctx, &lossy(Path::new(name)))
            } else {
                String::new()
            };
            // A file's path is made in the allocation of one the caller is done with.
            let buf = if lists { None } else { self.spare.pop() };
            let dir = frame.dir.child(name, ctx, buf);
            let held = frame.held.as_ref();
            if visit.contents {
                let listing = open_dir(held.map(Held::fd), name, &dir.host)?;
                self.push(dir, listing)?;
                continue;
            }
            // A frame has an `ahead` only with a directory held open (`Ahead::start`).
            let stat = match (frame.ahead.as_mut(), held) {
                (Some((ahead, next)), Some(own)) => {
                    debug_assert_eq!(ahead.name(*next), Path::new(name));
                    *next += 1;
                    gone_is_none(&dir.host, ahead.take(*next - 1, own.fd()))
                }
                _ => stat_in(held, name, &dir.host),
            };
            let Some(meta) = stat? else {
                continue; // removed while walking
            };
            if visit.tag == EMIT_IF_KEPT {
                let listing = open_dir(held.map(Held::fd), name, &dir.host)?;
                if !self.keeps_anything(&dir, listing)? {
                    // Nothing inside is kept either: do not walk it again.
                    if let Some(frame) = self.stack.last_mut() {
                        frame.names.skip_contents(&visit);
                    }
                    continue;
                }
            }
            return Ok(Some(Entry {
                host: dir.host,
                rel_at: dir.rel_at,
                meta,
            }));
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = Result<Entry, ContextError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn ig(p: &[&str]) -> IgnoreMatcher {
        IgnoreMatcher::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// A temp dir with `dirs` and `files` (each holding its own path).
    fn tree_of(dirs: &[&str], files: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in files {
            std::fs::write(t.path().join(f), f).unwrap();
        }
        t
    }

    fn tree() -> tempfile::TempDir {
        let t = tree_of(
            &["a/b", "docs/keep", "docs/drop", "c1", "c2"],
            &[
                "a/b/x.txt",
                "a/y.md",
                "docs/keep/k",
                "docs/drop/d",
                "c1/f",
                "top.txt",
            ],
        );
        symlink("a/b", t.path().join("lnk")).unwrap();
        symlink("/../../etc", t.path().join("out")).unwrap();
        t
    }

    fn rels(entries: Walk) -> Vec<String> {
        entries.map(|e| lossy(e.unwrap().rel())).collect()
    }

    #[test]
    fn wildcards_expand_per_component() {
        let t = tree();
        let none = IgnoreMatcher::default();
        let m = resolve(t.path(), "c*/f", true, &none).unwrap();
        assert_eq!(m.iter().map(|m| &m.named[..]).collect::<Vec<_>>(), ["c1/f"]);
        let m = resolve(t.path(), "./a/../*.txt", true, &none).unwrap();
        assert_eq!(
            m.iter().map(|m| &m.named[..]).collect::<Vec<_>>(),
            ["top.txt"]
        );
        assert!(resolve(t.path(), "nomatch*", true, &none)
            .unwrap()
            .is_empty());
        assert!(matches!(
            resolve(t.path(), "missing/*.txt", true, &none),
            Err(ContextError::NotFound(p)) if p == "missing"
        ));
        assert!(matches!(
            resolve(t.path(), "missing.txt", true, &none),
            Err(ContextError::NotFound(p)) if p == "missing.txt"
        ));
    }

    /// A source that exists but is ignored names the pattern (issue 14), after BuildKit's
    /// `"/path": not found`.
    #[test]
    fn ignored_sources_name_the_pattern() {
        let t = tree();
        let ig = ig(&["*.txt", "a/b", "docs", "!docs/keep"]);
        let err = resolve(t.path(), "top.txt", true, &ig).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"/top.txt\": not found: top.txt is excluded by .dockerignore (pattern `*.txt`)"
        );
        // Through a parent, through the top-level symlink, and as a wildcard's fixed prefix.
        let err = resolve(t.path(), "a/b/x.txt", true, &ig)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("a/b/x.txt is excluded by .dockerignore (pattern `a/b`)"),
            "{err}"
        );
        let err = resolve(t.path(), "lnk", true, &ig).unwrap_err().to_string();
        assert_eq!(
            err,
            "\"/lnk\": not found: a/b is excluded by .dockerignore (pattern `a/b`)"
        );
        let err = resolve(t.path(), "docs/drop/*", true, &ig)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("\"/docs/drop\": not found: docs/drop is excluded"),
            "{err}"
        );
        // Re-included by an exception: found; missing: plain not found.
        assert_eq!(
            resolve(t.path(), "docs/keep/k", true, &ig).unwrap().len(),
            1
        );
        assert!(matches!(
            resolve(t.path(), "missing", true, &ig),
            Err(ContextError::NotFound(p)) if p == "missing"
        ));
    }

    #[test]
    fn top_symlink_followed_inside_root_only() {
        let t = tree();
        let none = IgnoreMatcher::default();
        let m = resolve(t.path(), "lnk", true, &none).unwrap();
        assert_eq!(m[0].real, "a/b");
        assert!(m[0].meta.is_dir());
        let m = resolve(t.path(), "lnk", false, &none).unwrap();
        assert!(m[0].meta.file_type().is_symlink());
        // `out` points at /etc (clamped to root/etc), which does not exist in the root.
        assert!(matches!(
            resolve(t.path(), "out", true, &none),
            Err(ContextError::NotFound(_))
        ));
    }

    #[test]
    fn walk_filters_and_keeps_parents_of_exceptions() {
        let t = tree();
        let m = resolve(t.path(), ".", true, &IgnoreMatcher::default()).unwrap();
        let (ignore, excludes) = (
            ig(&["docs", "!docs/keep", "a/b", "lnk", "out"]),
            ig(&["**/*.md"]),
        );
        assert_eq!(
            rels(walk(&m[0], &ignore, &excludes)),
            [
                "",
                "a",
                "c1",
                "c1/f",
                "c2",
                "docs",
                "docs/keep",
                "docs/keep/k",
                "top.txt"
            ]
        );
        let ignore = ig(&["docs", "!docs/nothing-here/*"]);
        let rels = rels(walk(&m[0], &ignore, &IgnoreMatcher::default()));
        assert!(!rels.contains(&"docs".to_string()), "{rels:?}");
    }

    /// The walk is in the byte order of whole paths, which the content digest hashes its
    /// records in (issue 23: it streams them instead of sorting them all): a directory's
    /// contents sort after names that extend its own with a byte below `/`.
    /// The stat-ahead thread changes who stats a large directory's names, not what the
    /// walk yields: the same entries, metadata and order as a walk on one thread, with an
    /// ignored directory re-included by an exception.
    #[test]
    fn stat_ahead_yields_what_one_thread_does() {
        let t = tempfile::tempdir().unwrap();
        for d in ["big", "big/sub", "big/ign", "small"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for i in 0..(4 * AHEAD_MIN) {
            std::fs::write(t.path().join(format!("big/f{i:04}")), vec![b'x'; i]).unwrap();
            std::fs::write(t.path().join(format!("big/sub/s{i}")), "s").unwrap();
        }
        std::fs::write(t.path().join("big/ign/back"), "b").unwrap();
        std::fs::write(t.path().join("small/one"), "1").unwrap();
        symlink("f0001", t.path().join("big/link")).unwrap();
        let none = IgnoreMatcher::default();
        let ignore = ig(&["big/ign", "!big/ign/back"]);
        let m = resolve(t.path(), ".", true, &none).unwrap();
        let listing = |w: Walk| -> Vec<(String, u64, u64, u32)> {
            w.map(|e| {
                let e = e.unwrap();
                let m = &e.meta;
                (lossy(e.rel()), m.ino(), m.size(), m.mode())
            })
            .collect()
        };
        let one = listing(walk(&m[0], &ignore, &none));
        let two = listing(walk(&m[0], &ignore, &none).with_stat_ahead());
        assert_eq!(one.len(), 2 * 4 * AHEAD_MIN + 8);
        assert!(one.iter().any(|(p, ..)| p == "big/ign/back"));
        assert_eq!(one, two);
    }

    #[test]
    fn walk_is_in_whole_path_order() {
        let t = tree_of(
            &["a/b", "a-z/c", "ab", "kept/x/deep", "ign/in/y"],
            &[
                "a.txt",
                "a/b/f",
                "a/b.c",
                "a!",
                "a-z/c/g",
                "ab/h",
                "kept/x/deep/k",
                "ign/in/y/z",
            ],
        );
        let r = t.path();
        let none = IgnoreMatcher::default();
        let m = resolve(r, ".", true, &none).unwrap();
        let ignore = ig(&["kept", "!kept/x/deep/k", "ign", "!ign/other"]);
        let got = rels(walk(&m[0], &ignore, &none));
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted);
        assert_eq!(
            got,
            [
                "",
                "a",
                "a!",
                "a-z",
                "a-z/c",
                "a-z/c/g",
                "a.txt",
                "a/b",
                "a/b.c",
                "a/b/f",
                "ab",
                "ab/h",
                "kept",
                "kept/x",
                "kept/x/deep",
                "kept/x/deep/k"
            ]
        );
    }

    /// A directory swapped for a symlink after it was listed as one is not followed: its
    /// contents are opened relative to the parent, with O_NOFOLLOW (the context is
    /// hostile; before, the walk listed the symlink's target by path).
    #[test]
    fn directory_swapped_for_symlink_is_not_descended() {
        let outside = tree_of(&[], &["secret"]);
        let t = tree_of(&["a", "z"], &["a/f", "z/g"]);
        let none = IgnoreMatcher::default();
        let m = resolve(t.path(), ".", true, &none).unwrap();
        let mut w = walk(&m[0], &none, &none);
        let first: Vec<String> = w
            .by_ref()
            .take(2)
            .map(|e| lossy(e.unwrap().rel()))
            .collect();
        assert_eq!(first, ["", "a"]);
        std::fs::rename(t.path().join("a"), t.path().join("a.old")).unwrap();
        symlink(outside.path(), t.path().join("a")).unwrap();
        assert_eq!(rels(w), ["z", "z/g"]);
    }

    /// The walk's own join gives what `Path::join` gives for a listed name, whatever the
    /// directory looks like.
    #[test]
    fn child_path_is_path_join() {
        for dir in ["", "a", "a/b", "/abs/dir", "trailing/", "/"] {
            for name in ["f", "é.txt", "with space", ".hidden"] {
                let (dir, name) = (Path::new(dir), OsStr::new(name));
                assert_eq!(child_path(dir, name), dir.join(name), "{dir:?} + {name:?}");
                // In a buffer that held a longer path, and in one that held a shorter one.
                for held in ["/a/much/longer/path/than/any/of/these", "x"] {
                    let buf = PathBuf::from(held);
                    assert_eq!(child_path_in(dir, name, buf), dir.join(name), "{held}");
                }
            }
        }
    }

    /// Past the budget of directories kept open, the walk stats and lists by full path,
    /// with the same result.
    #[test]
    fn walk_past_the_open_directory_budget() {
        let deep = (0..HELD_LIMIT + 5)
            .map(|i| format!("{}", i % 10))
            .collect::<Vec<_>>()
            .join("/");
        let t = tree_of(&[&deep], &[&format!("{deep}/f")]);
        let none = IgnoreMatcher::default();
        let m = resolve(t.path(), ".", true, &none).unwrap();
        let got = rels(walk(&m[0], &none, &none));
        assert_eq!(got.len(), HELD_LIMIT + 5 + 2);
        assert_eq!(got.last().unwrap(), &format!("{deep}/f"));
    }

    /// Paths handed back are made into the next entries' paths: a walk that gets every
    /// entry's path back (and longer and shorter ones beside them) yields what a walk that
    /// gets none does, with the same stats.
    #[test]
    fn recycled_paths_make_the_same_entries() {
        let t = tree();
        let none = IgnoreMatcher::default();
        let m = resolve(t.path(), ".", true, &none).unwrap();
        let entries = |w: Walk, recycle: bool| {
            let mut w = w;
            let mut out = Vec::new();
            while let Some(e) = w.next() {
                let e = e.unwrap();
                out.push((lossy(e.rel()), e.host.clone(), e.meta.ino(), e.meta.mode()));
                if recycle {
                    w.recycle(PathBuf::from("/a/path/longer/than/any/in/the/tree/at/all"));
                    w.recycle(e.host);
                    w.recycle(PathBuf::from("s"));
                }
            }
            out
        };
        let plain = entries(walk(&m[0], &none, &none), false);
        assert!(plain.len() > 10, "{plain:?}");
        assert_eq!(entries(walk(&m[0], &none, &none), true), plain);
    }
}
