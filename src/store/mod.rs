//! The local store: blobs, extracted layers, the build cache and tags (design.md "Store").
//!
//! ```text
//! blobs/sha256/<hex>          content-addressed blobs (layers, configs, manifests)
//! index.json, oci-layout      the store is an OCI layout; tags are ref-name annotations; a
//!                             multi-platform image's tag points at an OCI index blob that
//!                             lists one stored image manifest per platform (indexes.rs)
//! layers/<chain>/diff         extracted layer (overlay format)
//! layers/<chain>/meta.json    diff_id, blobs per compression, size, parent, and for built
//!                             layers how their tar is made from diff/ (no tar blob is kept)
//! cache/<key>.json            step results
//! used/                       when builds last used each cache record (lru.rs)
//! remote/<chain>.json         a layer known from a --cache-from cache, not fetched yet
//!                             (remote.rs)
//! flat/<chain>/root            flattened snapshot of the layers up to <chain>, mounted in
//!                             their place when a stack passes overlay's limit (flat.rs)
//! flat/<chain>/meta.json      how many layers it stands for
//! tmp/<session>/              per-process scratch, guarded by a flock on tmp/<session>/.lock
//! tmp/.trash/                 scratch nobody needs, kept up to a limit (trash.rs)
//! lock                        flock: shared while building, exclusive for prune
//! ```
//! Every record is written inside tmp/, fsynced and renamed into place, so a crash leaves at
//! most garbage in tmp/ (swept by the next `open`), never a half-written record. Records are
//! content-addressed, so when two builds race to create the same one, the loser drops its copy.

mod blobs;
mod cache;
mod claims;
mod flat;
mod images;
mod indexes;
mod layers;
mod lineage;
pub use lineage::MAX_LISTING;
mod lock;
mod lru;
mod mounts;
mod remote;
mod trash;
mod usage;
mod writeback;

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::image::Digest;

pub use cache::{CacheRecord, StepInputs};
pub use claims::KeyClaim;
pub use flat::{flatten_depth, MAX_LOWERS, STACK, STRIDE};
pub use images::{chains_of, ImageRecord, PruneStats};
pub use indexes::{IndexRecord, Stored};
use layers::content_size;
pub use layers::{chain_id, BlobRef, DiffTar, LayerBlobs, LayerBytes, LayerReader, LayerRecord};
pub use lock::{FileLock, LockMode};
pub use lru::PruneOptions;
pub use remote::{BlobSource, RemoteLayer, REFUSAL_KEPT};
pub use usage::{Usage, RECLAIMABLE};
pub use writeback::Writeback;

/// Errors from the store; each names the path or object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest} is not in the store")]
    BlobMissing { digest: Digest },
    #[error("layer {chain} is not in the store")]
    LayerMissing { chain: Digest },
    #[error("blob mismatch: expected {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes)")]
    DigestMismatch {
        expected: Digest,
        expected_size: u64,
        actual: Digest,
        actual_size: u64,
    },
    #[error("layer {chain}: blob {blob} decompresses to {actual}, but the layer's diff_id is {expected}")]
    DiffIdMismatch {
        chain: Digest,
        blob: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("corrupt record `{path}`: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid cache key `{0}`: expected [0-9A-Za-z_-], at most 128 characters")]
    InvalidCacheKey(String),
    #[error("image config lists {config} layers but {given} layer chains were given")]
    LayerCountMismatch { config: usize, given: usize },
    #[error("layer {index} of the image: config says diff_id {config}, layer {chain} has {layer}")]
    ImageDiffIdMismatch {
        index: usize,
        chain: Digest,
        config: Digest,
        layer: Digest,
    },
    #[error(
        "manifest {digest} has media type `{media_type}`, which is not a single-image manifest"
    )]
    NotAnImageManifest { digest: Digest, media_type: String },
    #[error("`{0}` matches more than one image")]
    Ambiguous(String),
    #[error("the store at `{0}` is in use by a build; try again when it finishes")]
    Busy(PathBuf),
    #[error("producing blob: {0}")]
    Producer(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
}

impl StoreError {
    /// Whether this is a broken invariant of rbuild's own (a bug: exit code 101): a cache
    /// key or a layer list rbuild computed itself is wrong. Everything else comes from the
    /// disk (full, unreadable, damaged from outside), the user's input or another process.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidCacheKey(_)
                | StoreError::LayerCountMismatch { .. }
                | StoreError::ImageDiffIdMismatch { .. }
        )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An open store. Holds this process's scratch session in tmp/ (removed on drop).
pub struct Store {
    root: PathBuf,
    session: PathBuf,
    /// Directories that had entries renamed into them and are not fsynced yet. A lost rename
    /// only loses a record (the data was fsynced before it), never leaves a half one, so
    /// these wait for [`Store::sync_pending`]: once per build instead of three times per
    /// step (docs/performance.md).
    pending_dirs: std::sync::Mutex<std::collections::BTreeSet<PathBuf>>,
    /// Threads emptying tmp/.trash (see trash.rs); joined by [`Store::empty_trash`] and when
    /// the store closes.
    discarding: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Trash entries this process has started removing.
    trash_taken: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Layers this process built and committed ([`Store::commit_built_layer`]).
    fresh: std::sync::Mutex<std::collections::HashSet<Digest>>,
    /// The last layer this process built that the store had already (trash.rs).
    rebuilt: std::sync::Mutex<Option<std::sync::Arc<trash::Rebuilt>>>,
    /// Layers whose meta.json this process has read already ([`Store::present_layer`]):
    /// a step reads the record of a new layer only, not of every layer below it again.
    lowers_seen: std::sync::Mutex<std::collections::HashSet<Digest>>,
    /// Listings this process began writing ([`Store::listings_made`]).
    listings_made: std::sync::atomic::AtomicUsize,
    /// `syncfs` calls this process made ([`Store::syncs`]).
    syncs: std::sync::atomic::AtomicUsize,
    /// Cache records this process used, saved by [`Store::save_use`] (lru.rs).
    used: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Cache keys a thread is building now ([`Store::claim_key`]).
    claims: claims::Claims,
    /// Held (exclusive flock) for as long as the store is open: tells `open` in other
    /// processes that `session` is alive.
    _session_lock: FileLock,
}

/// Makes the store root 0700, whatever it was. Layer trees hold what RUN steps and pulled
/// layers made: setuid-root binaries and device nodes that any local user who can reach
/// them could run or open. Docker keeps /var/lib/docker 0710 for the same reason; rbuild
/// has no group to let in. Checked at every start, so a store an older rbuild (or a
/// careless `chmod`) left open is closed again.
fn close_to_others(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(root).map_err(StoreError::io("reading", root))?;
    if meta.permissions().mode() & 0o7777 != 0o700 {
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(StoreError::io("closing to other users", root))?;
    }
    Ok(())
}

/// A held flock on the store's `lock` file; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _lock: FileLock,
}

impl Store {
    /// Open (creating if needed) the store at `root`, and sweep scratch left by dead processes.
    pub fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).map_err(StoreError::io("creating", root))?;
        close_to_others(root)?;
        for dir in ["blobs/sha256", "layers", "cache", "tmp"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(StoreError::io("creating", &p))?;
        }
        let root = fs::canonicalize(root).map_err(StoreError::io("resolving", root))?;
        let lock = root.join("lock");
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&lock)
            .map_err(StoreError::io("creating", &lock))?;

        // Sweeping and creating a session happen under one exclusive lock, so a sweeper never
        // sees a session directory whose owner has not locked it yet.
        let tmp = root.join("tmp");
        let sweep_lock = flock_path(&tmp.join(".lock"), LockMode::Exclusive)?;
        let trash = tmp.join(trash::TRASH);
        fs::create_dir_all(&trash).map_err(StoreError::io("creating", &trash))?;
        trash::sweep_tmp(&tmp, &trash)?;
        let (session, session_lock) = new_session(&tmp)?;
        drop(sweep_lock);

        let store = Store {
            root,
            session,
            pending_dirs: Default::default(),
            discarding: Default::default(),
            trash_taken: Default::default(),
            fresh: Default::default(),
            rebuilt: Default::default(),
            lowers_seen: Default::default(),
            listings_made: Default::default(),
            syncs: Default::default(),
            used: Default::default(),
            claims: Default::default(),
            _session_lock: session_lock,
        };
        store.collect_trash();
        let _ = fs::remove_file(store.root.join(mounts::OLD_STAT_CACHE));
        if !store.root.join("oci-layout").exists() {
            store.write_file_durable(
                &store.root.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )?;
        }
        if !store.root.join("index.json").exists() {
            let _guard = store.index_lock()?;
            if !store.root.join("index.json").exists() {
                store.write_file_durable(
                    &store.root.join("index.json"),
                    &crate::image::canonical_json(&crate::image::Index::default()),
                )?;
            }
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Take the store lock shared (builds); blocks while a prune holds it.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        let lock = flock_path(&self.root.join("lock"), LockMode::Shared)?;
        Ok(StoreLock { _lock: lock })
    }

    /// Take the store lock exclusively (prune); blocks while builds hold it.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        let lock = flock_path(&self.root.join("lock"), LockMode::Exclusive)?;
        Ok(StoreLock { _lock: lock })
    }

    /// Take the store lock exclusively, or fail with [`StoreError::Busy`] at once.
    pub fn try_lock_exclusive(&self) -> Result<StoreLock> {
        let path = self.root.join("lock");
        match FileLock::try_lock(&path, LockMode::Exclusive) {
            Ok(Some(lock)) => Ok(StoreLock { _lock: lock }),
            Ok(None) => Err(StoreError::Busy(self.root.clone())),
            Err(e) => Err(StoreError::io("locking", path)(e)),
        }
    }

    /// This process's scratch directory in the store (removed with the store's drop).
    pub fn session_dir(&self) -> &Path {
        &self.session
    }

    /// A scratch directory on the store's filesystem (so its contents can be renamed into
    /// the store); removed when dropped.
    pub fn tmp_dir(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("d")
            .tempdir_in(&self.session)
            .map_err(StoreError::io("creating scratch dir in", &self.session))
    }

    /// Serializes read-modify-write of index.json between processes. index.json itself is
    /// replaced by rename, so the lock lives on the store root directory, which never changes.
    fn index_lock(&self) -> Result<FileLock> {
        flock_path(&self.root, LockMode::Exclusive)
    }

    /// fsync every directory a record was renamed into since the last call. Called before
    /// index.json changes (a tag must not outlive what it names) and when the store closes.
    pub fn sync_pending(&self) -> Result<()> {
        let dirs =
            std::mem::take(&mut *self.pending_dirs.lock().unwrap_or_else(|e| e.into_inner()));
        for dir in &dirs {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(StoreError::io("syncing", dir))?;
        }
        Ok(())
    }

    /// Flush every file written on the store's filesystem (`syncfs`): one call makes a
    /// whole tree durable (an extracted layer's, a snapshot's) before a record names it,
    /// far cheaper than a fsync per file.
    pub fn sync_filesystem(&self) -> Result<()> {
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fd = fs::File::open(&self.session).map_err(StoreError::io("opening", &self.session))?;
        rustix::fs::syncfs(&fd).map_err(|e| StoreError::io("syncing", &self.session)(e.into()))
    }

    /// How many times this process has synced the store's filesystem (for tests).
    pub fn syncs(&self) -> usize {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Push what is written to the store's filesystem to disk while the returned guard
    /// lives (see [`Writeback`]), so that the [`Store::sync_filesystem`] before a record
    /// finds little left to write: for work that writes only what it keeps.
    pub fn writeback(&self) -> Writeback {
        Writeback::start(&self.session)
    }

    /// Remember that `path` was renamed into its directory (see `pending_dirs`).
    fn sync_parent_later(&self, path: &Path) {
        if let Some(parent) = path.parent() {
            self.pending_dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(parent.to_path_buf());
        }
    }

    /// [`Store::write_file_atomic`] that is durable at once, with every earlier record:
    /// for index.json and oci-layout.
    fn write_file_durable(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        self.sync_pending()?;
        self.write_file_atomic(dest, bytes)?;
        self.sync_pending()
    }

    /// Write `bytes` to `dest` via a fsynced file in the session dir and a rename; the
    /// directory is synced by the next [`Store::sync_pending`].
    fn write_file_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        self.write_file_atomic_with(dest, |f| {
            f.write_all(bytes).map_err(StoreError::io("writing", dest))
        })
    }

    /// [`Store::write_file_atomic`] of what `write` writes into the temp file.
    fn write_file_atomic_with<T>(
        &self,
        dest: &Path,
        write: impl FnOnce(&mut fs::File) -> Result<T>,
    ) -> Result<T> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.session)
            .map_err(StoreError::io("creating temp file in", &self.session))?;
        let written = write(tmp.as_file_mut())?;
        tmp.as_file()
            .sync_all()
            .map_err(StoreError::io("writing", tmp.path()))?;
        tmp.persist(dest)
            .map_err(|e| StoreError::io("renaming into", dest)(e.error))?;
        self.sync_parent_later(dest);
        Ok(written)
    }

    /// Read and parse a JSON record.
    fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
        match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StoreError::Corrupt {
                        path: path.to_path_buf(),
                        source,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("reading", path)(e)),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Best effort, like the sweep below: records whose rename is lost are rebuilt.
        let _ = self.sync_pending();
        // Into the trash before the session goes: removing it here would delay the exit.
        drop(
            self.rebuilt
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        self.close_trash();
        // Best effort: whatever is left is swept by the next `open`.
        let _ = fs::remove_dir_all(&self.session);
    }
}

/// Open (creating) `path` and flock it, waiting for other holders.
fn flock_path(path: &Path, mode: LockMode) -> Result<FileLock> {
    FileLock::wait(path, mode).map_err(StoreError::io("locking", path))
}

/// Create this process's session dir with its lock held.
fn new_session(tmp: &Path) -> Result<(PathBuf, FileLock)> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("s{}-", std::process::id()))
        .tempdir_in(tmp)
        .map_err(StoreError::io("creating session dir in", tmp))?
        .keep();
    // The directory is new and ours: nobody else can hold its lock.
    let path = dir.join(".lock");
    let lock = FileLock::try_lock(&path, LockMode::Exclusive)
        .map_err(StoreError::io("locking", &path))?
        .ok_or_else(|| {
            StoreError::io("locking", &path)(io::Error::from(io::ErrorKind::WouldBlock))
        })?;
    Ok((dir, lock))
}

#[cfg(test)]
mod tests;
