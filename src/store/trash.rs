//! tmp/.trash: scratch trees nobody needs any more.
//!
//! A `--no-cache` rebuild that makes a layer the store already has leaves that layer's whole
//! upperdir behind, and a killed process leaves its scratch session. Removing 10k files
//! right away costs more than the unlinks: here (ext4 mounted with `discard`, no journal)
//! they take 0.5-1 s, and for a minute after, creating files where they were is several
//! times slower, because ext4 without a journal skips recently deleted inodes one by one
//! (the next no-cache COPY of 10k files took 2.6-3.4 s instead of 0.7 s;
//! docs/performance.md). So, like docker's dangling images and BuildKit's cache, such trees
//! are kept until they exceed a limit (the oldest go first) or `rbuild prune` empties the
//! trash. Trees of unknown size, the scratch of dead processes, go at once.
//!
//! Entries are named `<unix ms, 13 digits>-<bytes or "u">-<tag>`, so that the listing alone
//! says how old and how big each is. Removal runs on background threads. A closing store
//! waits for them only when the trash needs it ([`must_wait`]); else the process's exit
//! ends them and the next `open` takes them up again.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{DiffTar, FileLock, Result, Store, StoreError};
use crate::image::Digest;

pub(super) const TRASH: &str = ".trash";

/// Numbers entries within one process (with the session name, unique in the store).
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Threads one tree is removed with: unlinks wait for the disk, not the CPU.
const REMOVERS: usize = 4;

impl Store {
    pub(super) fn trash_dir(&self) -> PathBuf {
        self.root.join("tmp").join(TRASH)
    }

    /// Move `dir` (scratch of this process holding `bytes` of file content) into the trash;
    /// the oldest trash goes if that takes it over its limit.
    pub(crate) fn discard_dir(&self, dir: PathBuf, bytes: u64) {
        match fs::rename(&dir, self.trash_entry(bytes)) {
            Ok(()) => self.collect_trash(),
            // Cannot happen within one filesystem; remove it then rather than keep it.
            Err(_) => self.remove_in_background(vec![dir]),
        }
    }

    /// A new name in the trash for a tree of this process holding `bytes` of file content.
    fn trash_entry(&self, bytes: u64) -> PathBuf {
        let session = self
            .session
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        self.trash_dir().join(entry_name(
            Some(bytes),
            &format!("{session}-{}", next_seq()),
        ))
    }

    /// Keep `dir`, the diff dir of layer `chain` made again (its tar `tar`, hashed moments
    /// ago), for the outputs of this build instead of discarding it at once: they copy it
    /// without hashing the stored one again ([`Rebuilt`]). It goes to the trash when the
    /// next one is kept or the store closes, once no output holds it.
    pub(super) fn keep_rebuilt(&self, chain: &Digest, dir: PathBuf, tar: DiffTar, bytes: u64) {
        let kept = self.session.join(format!("rebuilt-{}", next_seq()));
        if fs::rename(&dir, &kept).is_err() {
            return self.discard_dir(dir, bytes);
        }
        let rebuilt = Arc::new(Rebuilt {
            chain: chain.clone(),
            dir: kept,
            tar,
            trash: self.trash_entry(bytes),
        });
        let previous = self
            .rebuilt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(rebuilt);
        drop(previous);
        // Room for it in the trash now, as discarding it would have made.
        self.collect_trash_within(trash_limit(&self.root).saturating_sub(bytes));
    }

    /// The rebuilt copy of layer `chain` this process keeps, if any.
    pub(super) fn rebuilt(&self, chain: &Digest) -> Option<Arc<Rebuilt>> {
        self.rebuilt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|r| r.chain == *chain)
            .cloned()
    }

    /// Start removing what the trash holds beyond its limit ([`trash_limit`]) and every
    /// tree of unknown size.
    pub(super) fn collect_trash(&self) {
        self.collect_trash_within(trash_limit(&self.root));
    }

    fn collect_trash_within(&self, limit: u64) {
        let dir = self.trash_dir();
        let names = self.trash_names();
        let mut taken = self.trash_taken.lock().unwrap_or_else(|e| e.into_inner());
        let doomed: Vec<PathBuf> = over_limit(&names, limit)
            .into_iter()
            .filter(|name| taken.insert(name.clone()))
            .map(|name| dir.join(name))
            .collect();
        drop(taken);
        if !doomed.is_empty() {
            self.remove_in_background(doomed);
        }
    }

    fn remove_in_background(&self, trees: Vec<PathBuf>) {
        let handle = std::thread::spawn(move || {
            for tree in trees {
                remove_tree(&tree);
            }
        });
        self.discarding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }

    /// Remove everything in the trash and wait for it (prune reclaims the space now).
    /// Returns the file bytes of the entries whose size is known.
    pub fn empty_trash(&self) -> u64 {
        let bytes = fs::read_dir(self.trash_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| entry_bytes(&e.file_name().to_string_lossy()))
                    .sum()
            })
            .unwrap_or(0);
        self.collect_trash_within(0);
        self.join_trash_threads();
        bytes
    }

    /// When the store closes: wait for the removals under way only if the trash needs them
    /// ([`must_wait`]); else the process's exit ends them and the next `open` takes them up.
    pub(super) fn close_trash(&self) {
        if must_wait(&self.trash_names(), trash_limit(&self.root)) {
            self.join_trash_threads();
        }
    }

    /// The trash's entries (none if it cannot be read).
    fn trash_names(&self) -> Vec<String> {
        fs::read_dir(self.trash_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Wait for the removals started so far.
    pub(super) fn join_trash_threads(&self) {
        let handles =
            std::mem::take(&mut *self.discarding.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }
}

/// A layer's diff dir that a build made again: a `--no-cache` rebuild makes a layer the
/// store has. Its content is the stored layer's (same diff_id), hashed moments ago, in this
/// process's session where nobody else writes; so an output copies it without hashing, where
/// the stored copy would be hashed again to check it (0.15-0.2 s for the `context` bench's
/// 313 MB, docs/performance.md). Dropped, once the store and every output are done with it,
/// it moves to the trash as the discarded tree it would have been.
pub struct Rebuilt {
    chain: Digest,
    pub(super) dir: PathBuf,
    pub(super) tar: DiffTar,
    trash: PathBuf,
}

impl Drop for Rebuilt {
    fn drop(&mut self) {
        // If this fails the tree stays in the session, which is removed when the store closes
        // or swept by the next `open`.
        let _ = fs::rename(&self.dir, &self.trash);
    }
}

fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn entry_name(bytes: Option<u64>, tag: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    match bytes {
        Some(b) => format!("{ms:013}-{b}-{tag}"),
        None => format!("{ms:013}-u-{tag}"),
    }
}

/// The file bytes a trash entry holds, from its name; `None` for entries of unknown size
/// (a dead process's scratch) and names not ours.
pub(super) fn entry_bytes(name: &str) -> Option<u64> {
    let mut parts = name.splitn(3, '-');
    let (ms, bytes, _tag) = (parts.next()?, parts.next()?, parts.next()?);
    if ms.len() != 13 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    bytes.parse().ok()
}

/// The entries to remove so that the newest ones, together, stay within `limit` bytes;
/// entries of unknown size (or names not ours) always.
fn over_limit(names: &[String], limit: u64) -> Vec<String> {
    let mut sized = Vec::new();
    let mut doomed = Vec::new();
    for name in names {
        match entry_bytes(name) {
            Some(bytes) => sized.push((name, bytes)),
            None => doomed.push(name.clone()),
        }
    }
    // Newest first: the zero-padded timestamp sorts like the time.
    sized.sort_by(|a, b| b.0.cmp(a.0));
    let mut kept = 0u64;
    for (name, bytes) in sized {
        kept = kept.saturating_add(bytes);
        if kept > limit {
            doomed.push(name.clone());
        }
    }
    doomed
}

/// Whether a closing store waits for its removals, given what the trash lists (trees still
/// being removed included): only for entries of unknown size (a dead process's scratch, a
/// name not ours) or more than a quarter over `limit`. A `--no-cache` rebuild on a store
/// whose trash is full starts removing its oldest tree when it discards its own, and waiting
/// for that at the exit cost it 0.1-0.3 s for a 313 MB tree (docs/performance.md). Each
/// build adds what it discards and every `open` resumes the removals, so the trash stays
/// within a quarter over its limit plus what one build discards.
fn must_wait(names: &[String], limit: u64) -> bool {
    let mut listed = 0u64;
    for name in names {
        match entry_bytes(name) {
            Some(bytes) => listed = listed.saturating_add(bytes),
            None => return true,
        }
    }
    listed > limit.saturating_add(limit / 4)
}

/// At most this much trash, whatever the disk: it is garbage, not a cache.
const TRASH_CAP: u64 = 10 << 30;

/// How much trash to keep: 10% of the store's filesystem (BuildKit's default GC keeps 10%
/// of the disk for its cache), at most a quarter of its free space and [`TRASH_CAP`].
fn trash_limit(root: &Path) -> u64 {
    match rustix::fs::statvfs(root) {
        Ok(st) => {
            let total = st.f_blocks.saturating_mul(st.f_frsize);
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            (total / 10).min(free / 4).min(TRASH_CAP)
        }
        Err(_) => 0,
    }
}

/// Move every entry of tmp/ that is not a session held by a live process into `trash` (as
/// of unknown size: removed by this `open`, in the background). Best effort: an entry that
/// cannot be moved (say, a mount left by a killed process) is left for a later sweep rather
/// than making the store unusable.
pub(super) fn sweep_tmp(tmp: &Path, trash: &Path) -> Result<()> {
    let entries = fs::read_dir(tmp).map_err(StoreError::io("listing", tmp))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == ".lock" || name == TRASH {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) && FileLock::is_held(&path.join(".lock")) {
            continue;
        }
        let tag = format!("{}-{}", name.to_string_lossy(), next_seq());
        let _ = fs::rename(&path, trash.join(entry_name(None, &tag)));
    }
    Ok(())
}

/// Remove a trash entry: a file, or a tree ([`remove_tree_parallel`]). Best effort; another
/// process may be removing the same tree at the same time.
fn remove_tree(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => remove_tree_parallel(path),
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// `rm -rf` on [`REMOVERS`] threads: they take directories from a shared queue and unlink
/// what is in them; the emptied directories are removed afterwards, deepest first.
fn remove_tree_parallel(root: &Path) {
    use std::sync::{Condvar, Mutex};
    struct Queue {
        todo: Vec<PathBuf>,
        busy: usize,
        dirs: Vec<PathBuf>,
    }
    let queue = Mutex::new(Queue {
        todo: vec![root.to_path_buf()],
        busy: 0,
        dirs: Vec::new(),
    });
    let wake = Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..REMOVERS {
            scope.spawn(|| loop {
                let dir = {
                    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if let Some(d) = q.todo.pop() {
                            q.busy += 1;
                            break d;
                        }
                        if q.busy == 0 {
                            wake.notify_all();
                            return;
                        }
                        q = wake.wait(q).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let mut subdirs = Vec::new();
                if let Ok(entries) = fs::read_dir(&dir) {
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            subdirs.push(entry.path());
                        } else {
                            let _ = fs::remove_file(entry.path());
                        }
                    }
                }
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                q.busy -= 1;
                q.todo.extend(subdirs);
                q.dirs.push(dir);
                wake.notify_all();
            });
        }
    });
    let mut dirs = queue.into_inner().unwrap_or_else(|e| e.into_inner()).dirs;
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(&d);
    }
    // Whatever the walk could not empty (a mount, a racing writer): one plain try.
    let _ = fs::remove_dir_all(root);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_closing_store_waits_only_for_unknown_trash_or_a_quarter_over_the_limit() {
        let sized = names(&["0000000000001-100-a", "0000000000002-100-b"]);
        assert!(!must_wait(&sized, 200), "within the limit");
        assert!(!must_wait(&sized, 160), "a quarter over it at most");
        assert!(must_wait(&sized, 159));
        assert!(!must_wait(&[], 0));
        for other in ["0000000000003-u-dead-session", "stray"] {
            let mut with = sized.clone();
            with.push(other.to_string());
            assert!(must_wait(&with, 1 << 40), "{other}");
        }
    }

    #[test]
    fn the_newest_trash_within_the_limit_is_kept() {
        let all = names(&[
            "0000000000001-100-a",
            "0000000000003-100-c",
            "0000000000002-100-b",
            "0000000000004-u-dead-session",
            "stray",
        ]);
        let mut doomed = over_limit(&all, 250);
        doomed.sort();
        assert_eq!(
            doomed,
            names(&[
                "0000000000001-100-a",
                "0000000000004-u-dead-session",
                "stray"
            ])
        );
        assert_eq!(over_limit(&all, 0).len(), 5);
        assert_eq!(over_limit(&all, 300).len(), 2);
    }

    #[test]
    fn discarded_trees_stay_until_over_the_limit_or_emptied() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let tree = |name: &str| {
            let d = s.tmp_dir().unwrap().keep();
            fs::create_dir_all(d.join("x/y")).unwrap();
            fs::write(d.join("x/y").join(name), vec![0u8; 1000]).unwrap();
            d
        };
        let trash = s.trash_dir();
        let count = || fs::read_dir(&trash).unwrap().count();
        s.discard_dir(tree("a"), 1000);
        std::thread::sleep(std::time::Duration::from_millis(2));
        s.discard_dir(tree("b"), 1000);
        assert_eq!(count(), 2, "kept within the default limit");

        s.collect_trash_within(1500);
        s.join_trash_threads();
        let left: Vec<String> = fs::read_dir(&trash)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(
            trash.join(&left[0]).join("x/y/b").exists(),
            "the newest is kept"
        );

        assert_eq!(s.empty_trash(), 1000, "the one left");
        assert_eq!(count(), 0);
    }

    #[test]
    fn remove_tree_parallel_removes_deep_and_wide_trees() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        for i in 0..20 {
            let d = root.join(format!("d{i}/e/f"));
            fs::create_dir_all(&d).unwrap();
            for j in 0..30 {
                fs::write(d.join(j.to_string()), b"x").unwrap();
            }
            std::os::unix::fs::symlink("/nonexistent", root.join(format!("d{i}/link"))).unwrap();
        }
        remove_tree(&root);
        assert!(!root.exists());
    }
}
