//! Content digests of COPY/ADD sources for cache keys (design.md "Cache keys"): sha256
//! over the sorted records (path, type, mode, size, content sha256, link target) of
//! everything the copy would read. mtime is deliberately not part of it, so a `touch` or a
//! fresh checkout does not invalidate the cache; nor are the files' uid/gid: a COPY from a
//! context gives its files root (or `--chown`) ownership whoever owns them on the host, as
//! BuildKit's file sync resets them to 0, so a cache made on one CI runner matches on
//! another checkout (issue 18).
//!
//! The records are hashed as the walks yield them, already in path order (one walk per
//! match, merged), a batch at a time: memory does not grow with the number of files
//! (issue 23). File contents are memoized in the [`StatCache`], so a no-op rebuild reads
//! metadata only.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;
use std::thread::ScopedJoinHandle;

use sha2::{Digest as _, Sha256};

use super::fstype::LocalFilesystems;
use super::lastdir::LastDir;
use super::meta::Meta;
use super::statcache::{StatCache, StatKey};
use super::{walk, ContextError, IgnoreMatcher};
use crate::image::Digest;

/// Bumped whenever the record encoding changes, so old cache keys cannot collide.
/// 2: uid/gid left out (issue 18).
const SCHEMA: &[u8] = b"rbuild-content-digest-v2\n";

/// Records hashed per batch: the files among them the stat cache does not know are read
/// on two threads.
const BATCH: usize = 2048;

/// Batches the walk may run ahead of the hashing (memory: that many batches' records).
const AHEAD: usize = 2;

/// The sha256 of no bytes.
const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// What [`hash_file`] reads at once.
const READ_BUFFER: usize = 256 * 1024;

/// The sha256 of a file's bytes, read through `buf` (one per thread, not one per file: a
/// zeroed 256 KiB buffer a file was 13 % of a first build of 100,000 empty files), and
/// the stat key of what was read, taken once it was read (`None` if that stat failed).
/// Opened in `dir`, the thread's directory of the file before, where it is the same.
fn hash_file(
    path: &Path,
    dir: &mut LastDir,
    buf: &mut [u8],
) -> Result<([u8; 32], Option<StatKey>), ContextError> {
    let mut f = dir.open(path).map_err(|e| ContextError::io(path, e))?;
    let mut h = Sha256::new();
    loop {
        let n = f.read(buf).map_err(|e| ContextError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&h.finalize());
    // By the open file, not its path again: a path walk a file less (issue 23), on the
    // hashing threads rather than the digest's.
    let after = Meta::of(&f).ok().as_ref().and_then(StatKey::of_meta);
    Ok((out, after))
}

struct Record {
    /// The match it is in (its path is the match's name, then `rel`).
    walk: usize,
    /// Where it is; its path below the match starts at `rel_at`.
    host: PathBuf,
    rel_at: usize,
    kind: u8,
    mode: u32,
    size: u64,
    link: Vec<u8>,
    /// A regular file's stat key (`None`: times out of range, never memoized).
    key: Option<StatKey>,
    sha: [u8; 32],
}

impl Record {
    fn rel(&self) -> &[u8] {
        walk::rel_of(&self.host, self.rel_at).as_os_str().as_bytes()
    }

    fn is_file(&self) -> bool {
        self.kind == b'f'
    }
}

fn kind_byte(m: &Meta) -> u8 {
    let t = m.file_type();
    if t.is_dir() {
        b'd'
    } else if t.is_symlink() {
        b'l'
    } else if t.is_file() {
        b'f'
    } else if t.is_char_device() {
        b'c'
    } else if t.is_block_device() {
        b'b'
    } else if t.is_fifo() {
        b'p'
    } else {
        b's'
    }
}

/// One entry of what a content digest covered, for naming the files that changed between
/// two builds (issue 19, docs/explain.md).
/// Its path is borrowed from the digest's record, in two parts: a cached rebuild that only
/// counts the entries makes no string per file (issue 23).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedFile<'a> {
    named: &'a str,
    rel: &'a [u8],
    pub mode: u32,
    /// The file's content sha256, a symlink's target's; zero for anything else.
    pub sha: [u8; 32],
}

impl ListedFile<'_> {
    /// Its path as the digest saw it, in parts to be joined: the source as named, then the
    /// path below it.
    pub fn path_parts(&self) -> [&[u8]; 3] {
        record_path(self.named, self.rel)
    }
}

/// A record's path in its parts: the source as named, `/` if both it and the path below it
/// are there, the path below it.
fn record_path<'a>(named: &'a str, rel: &'a [u8]) -> [&'a [u8]; 3] {
    let sep: &[u8] = if named.is_empty() || rel.is_empty() {
        b""
    } else {
        b"/"
    };
    [named.as_bytes(), sep, rel]
}

/// [`record_path`]'s parts in one buffer.
fn joined_path(named: &str, rel: &[u8]) -> Vec<u8> {
    record_path(named, rel).concat()
}

/// The content digest of what `COPY <sources>` reads from `root`; see the module docs.
/// `ignore` is the context's `.dockerignore` (empty for stage sources), `excludes` the
/// step's `--exclude` patterns. With `follow_top_symlink`, a source naming a symlink is
/// digested as its target (inside `root`), as the copy dereferences it.
/// `listed` gets every entry it covered but directories, in path order (no reads beyond
/// the digest's own), for naming the files that changed since an earlier build.
pub fn content_digest(
    root: &Path,
    sources: &[String],
    ignore: &IgnoreMatcher,
    excludes: &IgnoreMatcher,
    follow_top_symlink: bool,
    stat_cache: &mut StatCache,
    listed: &mut dyn FnMut(ListedFile<'_>),
) -> Result<Digest, ContextError> {
    let mut walks = Vec::new();
    for source in sources {
        for m in walk::resolve(root, source, follow_top_symlink, ignore)? {
            if excludes.matches(base_name(&m.named)) {
                continue;
            }
            walks.push((
                m.named.clone(),
                walk::walk(&m, ignore, excludes)
                    .with_stat_ahead()
                    .with_listings(stat_cache.listings()),
            ));
        }
    }
    let names = walks.iter().map(|(named, _)| named.clone()).collect();
    let mut merged = Merge::new(walks)?;
    let mut records = Records::new(stat_cache, listed, names);
    let mut first = Vec::with_capacity(BATCH);
    if merged.fill(&mut first)? {
        records.add(&mut first)?;
        return Ok(records.digest());
    }
    // More than one batch: the walk (getdents, statx, readlink) runs on a second thread,
    // at most AHEAD batches ahead, while this one looks the files up in the stat cache,
    // hashes the misses and the records (issue 23: the cached rebuild of a large context
    // on two cores). The misses of a batch are read on two threads of their own while this
    // one remembers and hashes the batch before (issue 23: a first build of 1,000,000
    // files kept the CPUs 60 % busy, each batch's reading waiting on the stat cache's
    // work and the other way round). The batches come in order, so the digest and the
    // first error are those of the walk on one thread.
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD);
        // Hashed batches go back to the walker, which frees their records and refills
        // them: memory allocated on one thread is freed on it (cheaper in malloc).
        let (back, returned) = std::sync::mpsc::sync_channel::<Vec<Record>>(AHEAD + 2);
        let walker = s.spawn(move || loop {
            let mut batch = returned.try_recv().unwrap_or_default();
            merged.recycle(&mut batch);
            batch.reserve(BATCH);
            let r = merged.fill(&mut batch);
            let last = !matches!(r, Ok(false));
            // A receiver gone means the hashing failed: stop walking.
            if tx.send(r.map(|_| batch)).is_err() || last {
                return;
            }
        });
        // The batch whose misses are being read, by a thread that hands it back.
        let mut reading: Option<ScopedJoinHandle<'_, Reading>> = None;
        let mut next = Some(Ok(first));
        while let Some(got) = next.take().or_else(|| rx.recv().ok()) {
            let mut batch = match got {
                Ok(batch) => batch,
                Err(e) => {
                    // An error of the batch before comes first.
                    if let Some(job) = reading.take() {
                        records.finish_read(job, &back)?;
                    }
                    return Err(e);
                }
            };
            let last = batch.len() < BATCH;
            let misses = records.look_up(&mut batch);
            if misses.is_empty() {
                // Nothing to read (a cached rebuild): no thread.
                if let Some(before) = reading.take() {
                    records.finish_read(before, &back)?;
                }
                records.finish(&mut batch, &misses, Vec::new());
                let _ = back.try_send(batch);
            } else {
                let job = s.spawn(move || {
                    let read = read_files(&batch, &misses);
                    (batch, misses, read)
                });
                if let Some(before) = reading.replace(job) {
                    records.finish_read(before, &back)?;
                }
            }
            if last {
                if let Some(job) = reading.take() {
                    records.finish_read(job, &back)?;
                }
                return Ok(records.digest());
            }
        }
        // The walker stopped without its last batch: it panicked.
        match walker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the walker sends its last batch before it returns"),
        }
    })
}

/// A batch handed back by the threads that read its misses, with those misses (indices)
/// and what was read of each.
type Reading = (Vec<Record>, Vec<usize>, Result<Vec<FileRead>, ContextError>);

/// A file's sha256, and its stat key once read ([`hash_file`]).
type FileRead = ([u8; 32], Option<StatKey>);

/// The digest's hash, fed batches of records in path order.
struct Records<'c, 'l> {
    h: Sha256,
    stat_cache: &'c mut StatCache,
    listed: &'l mut dyn FnMut(ListedFile<'_>),
    /// The matches' names, by walk.
    names: Vec<String>,
    filesystems: LocalFilesystems,
}

impl<'c, 'l> Records<'c, 'l> {
    fn new(
        stat_cache: &'c mut StatCache,
        listed: &'l mut dyn FnMut(ListedFile<'_>),
        names: Vec<String>,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(SCHEMA);
        Records {
            h,
            stat_cache,
            listed,
            names,
            filesystems: LocalFilesystems::default(),
        }
    }

    /// Hash `batch`'s files and then its records, on this thread's watch.
    fn add(&mut self, batch: &mut [Record]) -> Result<(), ContextError> {
        let misses = self.look_up(batch);
        let read = read_files(batch, &misses)?;
        self.finish(batch, &misses, read);
        Ok(())
    }

    /// Fill in the sha256 of the regular files the stat cache knows and of the empty
    /// ones; the numbers of the others, to be read.
    fn look_up(&mut self, batch: &mut [Record]) -> Vec<usize> {
        let mut misses = Vec::new();
        for (i, r) in batch.iter_mut().enumerate() {
            if r.is_file() {
                // A file the walk saw empty has no bytes to read, on a filesystem whose
                // sizes are its files' bytes (procfs's files of size 0 are not empty):
                // neither opened nor remembered (issue 23: the reading was 14 % of the
                // CPU of a first build of 100,000 empty files). What the stat said is
                // what the key covers, as with a file read.
                if let Some(k) = r.key.filter(|k| k.size == 0) {
                    if self.filesystems.has_path(k.dev, &r.host) {
                        r.sha = EMPTY_SHA256;
                        continue;
                    }
                }
                match r.key.as_ref().and_then(|k| self.stat_cache.lookup(k)) {
                    Some(sha) => r.sha = sha,
                    None => misses.push(i),
                }
            }
        }
        misses
    }

    /// [`Records::finish`] a batch once `job` has read its misses, and hand it `back` to
    /// the walker.
    fn finish_read(
        &mut self,
        job: ScopedJoinHandle<'_, Reading>,
        back: &SyncSender<Vec<Record>>,
    ) -> Result<(), ContextError> {
        let (mut batch, misses, read) = job
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        self.finish(&mut batch, &misses, read?);
        // The walker may have stopped on an error meanwhile: the batch is freed here.
        let _ = back.try_send(batch);
        Ok(())
    }

    /// Fill in what was `read` of the `misses` and remember it, then hash the records.
    fn finish(&mut self, batch: &mut [Record], misses: &[usize], read: Vec<FileRead>) {
        self.stat_cache.count_hashed(read.len() as u64);
        // Remembered in the walk's order, which the stat cache keeps (a rebuild finds the
        // records one after the other).
        for (&i, (sha, after)) in misses.iter().zip(read) {
            let rec = &mut batch[i];
            rec.sha = sha;
            // Only remember the hash if the file read is the one the walk saw, unchanged.
            if let Some(key) = &rec.key {
                if after.as_ref() == Some(key) {
                    self.stat_cache.remember(*key, sha);
                }
            }
        }
        let h = &mut self.h;
        for r in batch.iter() {
            let named = self.names[r.walk].as_str();
            let path = record_path(named, r.rel());
            let len: usize = path.iter().map(|p| p.len()).sum();
            h.update((len as u64).to_le_bytes());
            for part in path {
                h.update(part);
            }
            h.update([r.kind]);
            h.update(r.mode.to_le_bytes());
            h.update(r.size.to_le_bytes());
            h.update(r.sha);
            h.update((r.link.len() as u64).to_le_bytes());
            h.update(&r.link);
            if r.kind != b'd' {
                (self.listed)(ListedFile {
                    named,
                    rel: r.rel(),
                    mode: r.mode,
                    // A symlink changes with its target.
                    sha: if r.kind == b'l' {
                        Sha256::digest(&r.link).into()
                    } else {
                        r.sha
                    },
                });
            }
        }
    }

    fn digest(self) -> Digest {
        Digest::from_raw(&self.h.finalize())
    }
}

/// The walks of all matches merged into one stream of records sorted by (path, type), as
/// the digest has always sorted them; ties keep the sources' order. Each walk is in path
/// order already; matches can interleave (`src/a`, `src/a.txt`, `src/a/b`). One walk (the
/// usual `COPY src dst`) is taken as it comes, without a path made per entry to order it.
struct Merge<'a> {
    walks: Vec<(String, walk::Walk<'a>)>,
    /// The next entry of each walk, by (path, type, walk).
    heads: BinaryHeap<Reverse<(Vec<u8>, u8, usize)>>,
    entries: Vec<Option<walk::Entry>>,
}

impl<'a> Merge<'a> {
    fn new(walks: Vec<(String, walk::Walk<'a>)>) -> Result<Merge<'a>, ContextError> {
        let n = walks.len();
        let mut m = Merge {
            walks,
            heads: BinaryHeap::with_capacity(n),
            entries: (0..n).map(|_| None).collect(),
        };
        if n > 1 {
            for i in 0..n {
                m.advance(i)?;
            }
        }
        Ok(m)
    }

    fn advance(&mut self, i: usize) -> Result<(), ContextError> {
        let (named, walk) = &mut self.walks[i];
        if let Some(e) = walk.next().transpose()? {
            let path = joined_path(named, e.rel().as_os_str().as_bytes());
            self.heads.push(Reverse((path, kind_byte(&e.meta), i)));
            self.entries[i] = Some(e);
        }
        Ok(())
    }

    /// Empty `batch`, its records' paths handed back to the walks to be made again.
    fn recycle(&mut self, batch: &mut Vec<Record>) {
        for r in batch.drain(..) {
            self.walks[r.walk].1.recycle(r.host);
        }
    }

    /// Fill `batch` up to [`BATCH`] records; `true` if the walks are done.
    fn fill(&mut self, batch: &mut Vec<Record>) -> Result<bool, ContextError> {
        while batch.len() < BATCH {
            match self.next()? {
                Some(r) => batch.push(r),
                None => return Ok(true),
            }
        }
        Ok(false)
    }

    fn next(&mut self) -> Result<Option<Record>, ContextError> {
        let (i, e) = if let [(_, walk)] = self.walks.as_mut_slice() {
            match walk.next().transpose()? {
                Some(e) => (0, e),
                None => return Ok(None),
            }
        } else {
            let Some(Reverse((_, _, i))) = self.heads.pop() else {
                return Ok(None);
            };
            let e = self.entries[i].take().expect("a head has its entry");
            self.advance(i)?;
            (i, e)
        };
        let kind = kind_byte(&e.meta);
        let link = if kind == b'l' {
            let t = std::fs::read_link(&e.host).map_err(|err| ContextError::io(&e.host, err))?;
            t.as_os_str().as_bytes().to_vec()
        } else {
            Vec::new()
        };
        let size = match kind {
            b'f' => e.meta.size(),
            b'c' | b'b' => e.meta.rdev(),
            _ => 0,
        };
        let mode = e.meta.mode();
        let key = if kind == b'f' {
            StatKey::of_meta(&e.meta)
        } else {
            None
        };
        Ok(Some(Record {
            walk: i,
            rel_at: e.rel_at(),
            host: e.host,
            kind,
            mode,
            size,
            link,
            key,
            sha: [0u8; 32],
        }))
    }
}

pub(crate) fn base_name(named: &str) -> &str {
    named.rsplit('/').next().unwrap_or(named)
}

/// Read and hash the files of `batch` numbered in `misses`, on two threads: what was read
/// of each, in `misses`' order.
fn read_files(batch: &[Record], misses: &[usize]) -> Result<Vec<FileRead>, ContextError> {
    if misses.is_empty() {
        return Ok(Vec::new());
    }
    let half = misses.len().div_ceil(2);
    let read = |part: &[usize]| {
        let mut buf = vec![0u8; READ_BUFFER];
        let mut dir = LastDir::default();
        part.iter()
            .map(|&i| hash_file(&batch[i].host, &mut dir, &mut buf))
            .collect::<Result<Vec<_>, _>>()
    };
    let (first, second) = misses.split_at(half);
    std::thread::scope(|s| {
        let other = s.spawn(|| read(second));
        let mut out = read(first);
        let rest = other
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // The first half's error is the earlier one.
        if let Ok(out) = &mut out {
            out.extend(rest?);
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::statcache::{DROP_AFTER, HEADER, KEEP_GENERATIONS, RECORD, REFRESH_AFTER};
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::{Duration, SystemTime};

    fn none() -> IgnoreMatcher {
        IgnoreMatcher::default()
    }

    fn cache() -> StatCache {
        let mut c = StatCache::new();
        c.set_racy_window(Duration::ZERO);
        c
    }

    fn ctx() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("src/sub")).unwrap();
        std::fs::write(r.join("src/a.txt"), "alpha").unwrap();
        std::fs::write(r.join("src/sub/b.txt"), "beta").unwrap();
        std::fs::write(r.join("other"), "other").unwrap();
        symlink("a.txt", r.join("src/link")).unwrap();
        t
    }

    fn digest(root: &Path, sources: &[&str], c: &mut StatCache) -> Digest {
        let s: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        content_digest(root, &s, &none(), &none(), true, c, &mut |_| {}).unwrap()
    }

    /// The sha256 of everything `root`'s `source` covers, as the digest listed it, by path.
    fn listed_shas(root: &Path, source: &str, c: &mut StatCache) -> Vec<(String, [u8; 32])> {
        let mut out = Vec::new();
        let sources = [source.to_string()];
        content_digest(root, &sources, &none(), &none(), true, c, &mut |f| {
            let path = String::from_utf8(f.path_parts().concat()).unwrap();
            out.push((path, f.sha));
        })
        .unwrap();
        out
    }

    /// An empty file on a local filesystem is not read, and its record is what reading it
    /// gives; a file that procfs says is empty is read (its size is not its bytes).
    #[test]
    fn empty_files_are_not_read_where_sizes_are_exact() {
        assert_eq!(EMPTY_SHA256, <[u8; 32]>::from(Sha256::digest(b"")));
        let t = ctx();
        let r = t.path();
        std::fs::write(r.join("src/empty"), "").unwrap();
        std::fs::write(r.join("src/sub/empty"), "").unwrap();
        let mut c = cache();
        let listed = listed_shas(r, "src", &mut c);
        assert_eq!(c.files_hashed(), 2, "a.txt and b.txt only: {listed:?}");
        let mut buf = vec![0u8; 64];
        for (path, sha) in &listed {
            if !path.ends_with("link") {
                assert_eq!(
                    *sha,
                    hash_file(&r.join(path), &mut LastDir::default(), &mut buf)
                        .unwrap()
                        .0,
                    "{path}"
                );
            }
        }
        assert_eq!(listed.len(), 5);

        let proc = Path::new("/proc/sys/kernel");
        assert_eq!(std::fs::metadata(proc.join("ostype")).unwrap().len(), 0);
        let mut c = cache();
        let listed = listed_shas(proc, "ostype", &mut c);
        let read = std::fs::read(proc.join("ostype")).unwrap();
        assert!(!read.is_empty());
        assert_eq!(
            listed,
            [("ostype".to_string(), Sha256::digest(&read).into())]
        );
        assert_eq!(c.files_hashed(), 1);
    }

    #[test]
    fn stable_across_touch_changes_with_content_and_mode() {
        let t = ctx();
        let r = t.path();
        let mut c = cache();
        let d0 = digest(r, &["src"], &mut c);
        // touch: new mtime, same bytes.
        let f = std::fs::File::options()
            .write(true)
            .open(r.join("src/a.txt"))
            .unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(12345))
            .unwrap();
        drop(f);
        assert_eq!(digest(r, &["src"], &mut c), d0);
        // Files outside the sources do not matter.
        std::fs::write(r.join("other"), "changed").unwrap();
        assert_eq!(digest(r, &["src"], &mut c), d0);
        // Content change (same size).
        std::fs::write(r.join("src/a.txt"), "ALPHA").unwrap();
        let d1 = digest(r, &["src"], &mut c);
        assert_ne!(d1, d0);
        // Mode change.
        std::fs::set_permissions(r.join("src/a.txt"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let d2 = digest(r, &["src"], &mut c);
        assert_ne!(d2, d1);
        // Symlink target change.
        std::fs::remove_file(r.join("src/link")).unwrap();
        symlink("sub/b.txt", r.join("src/link")).unwrap();
        assert_ne!(digest(r, &["src"], &mut c), d2);
        // The source naming matters (it becomes the destination name).
        assert_ne!(
            digest(r, &["src/a.txt"], &mut c),
            digest(r, &["src/sub/b.txt"], &mut c)
        );
    }

    #[test]
    fn ignore_and_excludes_shape_the_digest() {
        let t = ctx();
        let r = t.path();
        let mut c = cache();
        let s = vec!["src".to_string()];
        let all = content_digest(r, &s, &none(), &none(), true, &mut c, &mut |_| {}).unwrap();
        let ig = IgnoreMatcher::new(&["src/sub".to_string()]).unwrap();
        let ignored = content_digest(r, &s, &ig, &none(), true, &mut c, &mut |_| {}).unwrap();
        assert_ne!(all, ignored);
        // Changing an ignored file does not change the digest.
        std::fs::write(r.join("src/sub/b.txt"), "changed").unwrap();
        assert_eq!(
            content_digest(r, &s, &ig, &none(), true, &mut c, &mut |_| {}).unwrap(),
            ignored
        );
        let ex = IgnoreMatcher::new(&["sub".to_string()]).unwrap();
        assert_eq!(
            content_digest(r, &s, &none(), &ex, true, &mut c, &mut |_| {}).unwrap(),
            ignored
        );
        // Missing literal sources are errors, empty wildcards are not.
        let missing = content_digest(
            r,
            &["nope".into()],
            &none(),
            &none(),
            true,
            &mut c,
            &mut |_| {},
        );
        assert_eq!(missing.unwrap_err().to_string(), "\"/nope\": not found");
        assert!(content_digest(
            r,
            &["nope*".into()],
            &none(),
            &none(),
            true,
            &mut c,
            &mut |_| {}
        )
        .is_ok());
    }

    #[test]
    fn top_level_symlink_digests_its_target() {
        let t = ctx();
        let r = t.path();
        let mut c = cache();
        let s = vec!["src/link".to_string()];
        let followed = content_digest(r, &s, &none(), &none(), true, &mut c, &mut |_| {}).unwrap();
        let kept = content_digest(r, &s, &none(), &none(), false, &mut c, &mut |_| {}).unwrap();
        assert_ne!(followed, kept);
        std::fs::write(r.join("src/a.txt"), "new alpha").unwrap();
        assert_ne!(
            content_digest(r, &s, &none(), &none(), true, &mut c, &mut |_| {}).unwrap(),
            followed
        );
        assert_eq!(
            content_digest(r, &s, &none(), &none(), false, &mut c, &mut |_| {}).unwrap(),
            kept
        );
    }

    /// An aged store: entries of files no build has looked at for DROP_AFTER builds (a CI
    /// runner's old checkouts) are dropped, those of the last KEEP_GENERATIONS builds are
    /// kept; the ones in use stay, whatever their age.
    #[test]
    fn stat_cache_keeps_only_what_recent_builds_used() {
        let t = ctx();
        let r = t.path();
        let file = r.join("statcache");
        let mut c = cache();
        let d0 = digest(r, &["src"], &mut c);
        c.save(&file).unwrap();
        // Another file, digested by every later build; src never again.
        for build in 0..DROP_AFTER {
            let mut c = StatCache::load(&file);
            c.set_racy_window(Duration::ZERO);
            assert_eq!(
                c.len(),
                if build == 0 { 2 } else { 3 },
                "build {build}: src's entries live at least {KEEP_GENERATIONS} builds"
            );
            digest(r, &["other"], &mut c);
            c.save(&file).unwrap();
        }
        let mut c = StatCache::load(&file);
        c.set_racy_window(Duration::ZERO);
        assert_eq!(c.len(), 1, "src's entries outlived {DROP_AFTER} builds");
        assert_eq!(digest(r, &["src"], &mut c), d0);
        assert_eq!(c.files_hashed(), 2);
    }

    /// A cached rebuild that adds nothing leaves the table file as it is (its header counts
    /// the build) until the entries it finds are REFRESH_AFTER builds old: then one save
    /// writes their generation again (issue 23: a million-file context's table is 120 MB).
    #[test]
    fn stat_cache_rewritten_only_when_found_entries_are_due() {
        use std::os::unix::fs::MetadataExt;
        let t = ctx();
        let r = t.path();
        let file = r.join("statcache");
        let inode = || std::fs::metadata(&file).unwrap().ino();
        let mut c = cache();
        let d0 = digest(r, &["src"], &mut c);
        c.save(&file).unwrap();
        let mut table = inode();
        for round in 0..2 {
            for build in 1..=REFRESH_AFTER {
                let mut c = StatCache::load(&file);
                c.set_racy_window(Duration::ZERO);
                assert_eq!(digest(r, &["src"], &mut c), d0);
                assert_eq!(c.files_hashed(), 0, "round {round} build {build}");
                c.save(&file).unwrap();
                let rewritten = inode() != table;
                assert_eq!(
                    rewritten,
                    build == REFRESH_AFTER,
                    "round {round} build {build}"
                );
                table = inode();
            }
        }
        assert_eq!(StatCache::load(&file).len(), 2);
    }

    /// A build that looks nothing up (no COPY) still saves a cache, and counts as a build
    /// the entries were not used in.
    #[test]
    fn stat_cache_saved_by_builds_without_lookups() {
        let t = ctx();
        let r = t.path();
        let file = r.join("statcache");
        StatCache::load(&file).save(&file).unwrap();
        assert!(file.exists());
        let mut c = StatCache::load(&file);
        c.set_racy_window(Duration::ZERO);
        let d0 = digest(r, &["src"], &mut c);
        c.save(&file).unwrap();
        for _ in 0..DROP_AFTER {
            StatCache::load(&file).save(&file).unwrap();
        }
        // Aged out: the next build that saves drops them.
        let mut c = StatCache::load(&file);
        c.set_racy_window(Duration::ZERO);
        digest(r, &["other"], &mut c);
        c.save(&file).unwrap();
        assert_eq!(StatCache::load(&file).len(), 1);
        let mut c = StatCache::load(&file);
        assert_eq!(digest(r, &["src"], &mut c), d0);
    }

    /// A save cut short (a crash after rename without fsync) loads as an empty cache; a
    /// damaged or torn record is a miss, never a wrong hit.
    #[test]
    fn stat_cache_torn_file_is_empty() {
        let t = ctx();
        let r = t.path();
        let file = r.join("statcache");
        let mut c = cache();
        let d0 = digest(r, &["src"], &mut c);
        c.save(&file).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(StatCache::load(&file).len(), 2);
        for cut in [0, 7, HEADER, bytes.len() - 33, bytes.len() - 1] {
            std::fs::write(&file, &bytes[..cut]).unwrap();
            assert!(StatCache::load(&file).is_empty(), "cut at {cut}");
        }
        // One bit flipped in every record, anywhere in it: the checksums catch it.
        for at in [0, 20, 45, RECORD - 9, RECORD - 1] {
            let mut flipped = bytes.clone();
            for rec in flipped[HEADER..].chunks_exact_mut(RECORD) {
                if rec.iter().any(|b| *b != 0) {
                    rec[at] ^= 1;
                }
            }
            std::fs::write(&file, &flipped).unwrap();
            let mut damaged = StatCache::load(&file);
            damaged.set_racy_window(Duration::ZERO);
            assert!(damaged.is_empty(), "flipped at {at}");
            assert_eq!(digest(r, &["src"], &mut damaged), d0);
            assert_eq!(damaged.files_hashed(), 2);
        }
        std::fs::write(&file, vec![0u8; bytes.len()]).unwrap();
        assert!(StatCache::load(&file).is_empty());
    }

    /// A context of several batches is walked on a second thread and hashed on this one
    /// (issue 23), with the digest of the walk on one thread: pinned here, and the same
    /// as the sequential code gave (a store built by it found the step cached). Two
    /// matches interleave (`a` and `a.b` with `a/...`), and the hit path agrees.
    #[test]
    fn digest_of_many_batches_is_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for i in 0..2 * BATCH + 3 {
            let d = r.join(format!("a/d{}", i / 700));
            std::fs::create_dir_all(&d).unwrap();
            let f = d.join(format!("f{i}"));
            std::fs::write(&f, i.to_string()).unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::write(r.join("a.b"), "ab").unwrap();
        for (p, mode) in [("a", 0o755), ("a.b", 0o644)] {
            std::fs::set_permissions(r.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        for d in 0..=(2 * BATCH + 2) / 700 {
            let d = r.join(format!("a/d{d}"));
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut c = cache();
        let mut files = 0;
        let s = vec!["a*".to_string()];
        let d0 = content_digest(r, &s, &none(), &none(), true, &mut c, &mut |_| files += 1);
        let d0 = d0.unwrap();
        assert_eq!(
            d0.to_string(),
            "sha256:318547ed9d55d8c26e42df0fcde4ad96fcc59bd5b4f46352a5e3d04f56b2a25f"
        );
        assert_eq!(files, 2 * BATCH + 4);
        // One match (taken as its walk yields it, without the merge's ordering).
        assert_eq!(
            digest(r, &["a"], &mut c).to_string(),
            "sha256:6d1fdeaac472c074cba3e159bd099b0fb4c9604ef0f4a5b8a81af93a3d943fb4"
        );
        assert_eq!(c.files_hashed() as usize, files);
        assert_eq!(digest(r, &["a*"], &mut c), digest(r, &["a*"], &mut c));
        assert_eq!(
            c.files_hashed() as usize,
            files,
            "the rebuild hit the cache"
        );
        // The files were remembered in the walk's order (hashed on two threads), so a
        // rebuild from the saved cache finds each one where the one before left off.
        let file = r.join("statcache");
        c.save(&file).unwrap();
        let mut loaded = StatCache::load(&file);
        assert_eq!(digest(r, &["a*"], &mut loaded), d0);
        assert_eq!(loaded.files_hashed(), 0);
        assert_eq!(loaded.found_in_order() as usize, files);
    }

    /// A file's hash is remembered under the walk's stat key only if what was read is that
    /// file, unchanged: not a file rewritten after the walk's stat, nor one renamed over it.
    #[test]
    fn hashes_are_remembered_only_for_the_file_the_walk_saw() {
        let t = tempfile::tempdir().unwrap();
        let record = |name: &str| {
            let host = t.path().join(name);
            let meta = Meta::path(&host, false).unwrap();
            Record {
                walk: 0,
                rel_at: host.as_os_str().len() - name.len(),
                host,
                kind: b'f',
                mode: meta.mode(),
                size: meta.size(),
                link: Vec::new(),
                key: StatKey::of_meta(&meta),
                sha: [0; 32],
            }
        };
        let sha = |bytes: &[u8]| -> [u8; 32] { Sha256::digest(bytes).into() };
        for name in ["same", "rewritten", "replaced", "other"] {
            std::fs::write(t.path().join(name), name).unwrap();
        }
        let mut batch = [record("same"), record("rewritten"), record("replaced")];
        std::fs::write(t.path().join("rewritten"), "rewritten, longer").unwrap();
        std::fs::rename(t.path().join("other"), t.path().join("replaced")).unwrap();
        let mut c = cache();
        let mut listed = |_: ListedFile<'_>| {};
        Records::new(&mut c, &mut listed, vec![String::new()])
            .add(&mut batch)
            .unwrap();
        // The digest is of what was read; only the unchanged file is remembered.
        let read: Vec<[u8; 32]> = batch.iter().map(|r| r.sha).collect();
        assert_eq!(
            read,
            [sha(b"same"), sha(b"rewritten, longer"), sha(b"other")]
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(batch[0].key.as_ref().unwrap()), Some(sha(b"same")));
        for r in &batch[1..] {
            assert_eq!(c.lookup(r.key.as_ref().unwrap()), None);
        }
    }

    #[test]
    fn stat_cache_hit_reads_metadata_only_and_survives_save_load() {
        let t = ctx();
        let r = t.path();
        let mut c = cache();
        let d0 = digest(r, &["src"], &mut c);
        assert_eq!(c.files_hashed(), 2);
        assert_eq!(digest(r, &["src"], &mut c), d0);
        assert_eq!(c.files_hashed(), 2, "second run must not read files");

        let file = r.join("statcache");
        c.save(&file).unwrap();
        let mut loaded = StatCache::load(&file);
        loaded.set_racy_window(Duration::ZERO);
        assert_eq!(loaded.len(), 2);
        assert_eq!(digest(r, &["src"], &mut loaded), d0);
        assert_eq!(loaded.files_hashed(), 0);

        // A content change is noticed (new ctime/size) and hashed again.
        std::fs::write(r.join("src/a.txt"), "alpha2").unwrap();
        assert_ne!(digest(r, &["src"], &mut loaded), d0);
        assert_eq!(loaded.files_hashed(), 1);

        // Recently changed files are not remembered with the default racy window.
        let mut racy = StatCache::new();
        digest(r, &["src"], &mut racy);
        assert_eq!(racy.len(), 0);

        // A corrupt cache file is an empty cache.
        std::fs::write(&file, "{not a cache").unwrap();
        assert!(StatCache::load(&file).is_empty());
    }
    /// A rebuild takes the names of directories whose stat key did not change from the
    /// listing cache (issue 23); one whose names changed in any way (added, removed,
    /// renamed, the directory swapped for another) is listed again, so the digest is
    /// always a fresh walk's.
    #[test]
    fn unchanged_directories_are_not_listed_again() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for (dir, files) in [("src/many", 12), ("src/many/deep", 9), ("src/few", 2)] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
            for i in 0..files {
                std::fs::write(r.join(format!("{dir}/f{i:02}")), format!("{i}")).unwrap();
            }
        }
        // A change after a listing is remembered must get another ctime than the one it
        // was remembered with: a timestamp tick is at most 10 ms.
        let tick = || std::thread::sleep(Duration::from_millis(20));
        let fresh = |r: &Path| digest(r, &["src"], &mut cache());
        let file = r.join("statcache");
        let rebuild = |expect_hits: u64| {
            tick();
            let mut c = StatCache::load(&file);
            c.set_racy_window(Duration::ZERO);
            let d = digest(r, &["src"], &mut c);
            let hits = crate::context::statcache::lock(&c.listings()).hits();
            assert_eq!(hits, expect_hits);
            c.save(&file).unwrap();
            d
        };
        let d0 = rebuild(0);
        // Both directories of 8 names or more come from the cache; `few` is listed.
        assert_eq!(rebuild(2), d0);
        assert_eq!(d0, fresh(r));

        let changes: [(&str, &dyn Fn()); 4] = [
            ("a file added", &|| {
                std::fs::write(r.join("src/many/new"), "n").unwrap()
            }),
            ("a file removed", &|| {
                std::fs::remove_file(r.join("src/many/f03")).unwrap()
            }),
            ("a file renamed", &|| {
                std::fs::rename(r.join("src/many/f04"), r.join("src/many/g04")).unwrap()
            }),
            ("a directory swapped for another", &|| {
                let deep = r.join("src/many/deep");
                std::fs::rename(&deep, r.join("old-deep")).unwrap();
                std::fs::create_dir(&deep).unwrap();
                for i in 0..9 {
                    std::fs::write(deep.join(format!("g{i:02}")), format!("{i}")).unwrap();
                }
            }),
        ];
        let mut before = d0;
        for (what, change) in changes {
            change();
            // The changed directory is listed again (`deep` too once it is new).
            let swapped = what.contains("swapped");
            let d = rebuild(if swapped { 0 } else { 1 });
            assert_eq!(d, fresh(r), "{what}");
            assert_ne!(d, before, "{what}");
            assert_eq!(rebuild(2), d, "{what}: remembered again");
            before = d;
        }

        // Directories changed within the racy window (all of these, by now) are not
        // remembered.
        let mut racy = StatCache::new();
        digest(r, &["src"], &mut racy);
        assert_eq!(crate::context::statcache::lock(&racy.listings()).added(), 0);
    }

    /// A directory whose names come to more than `MAX_LISTING` bytes is listed each time,
    /// not remembered: memory stays flat in a directory's size.
    #[test]
    fn a_huge_directory_is_not_remembered() {
        use crate::context::listings::MAX_LISTING;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for (dir, names, len) in [
            ("src/big", MAX_LISTING / 200 + 10, 200),
            ("src/small", 10, 3),
        ] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
            for i in 0..names {
                std::fs::write(r.join(dir).join(format!("{i:0len$}")), "").unwrap();
            }
        }
        let mut c = cache();
        assert_eq!(
            digest(r, &["src"], &mut c),
            digest(r, &["src"], &mut cache())
        );
        // `small` is kept; `big` is not (nor `src`, of two names).
        assert_eq!(crate::context::statcache::lock(&c.listings()).added(), 1);
    }

    /// Random changes to a tree of remembered directories, each a timestamp tick after the
    /// build before: every rebuild's digest is a fresh walk's, and most directories come
    /// from the listing cache.
    #[test]
    fn random_changes_never_get_a_stale_listing() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let dirs = ["src", "src/a", "src/a/b", "src/c"];
        for d in dirs {
            std::fs::create_dir_all(r.join(d)).unwrap();
            for i in 0..10 {
                std::fs::write(r.join(format!("{d}/f{i}")), format!("{i}")).unwrap();
            }
        }
        let file = r.join("statcache");
        let tick = || std::thread::sleep(Duration::from_millis(20));
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut pick = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let mut hits = 0;
        for round in 0..24 {
            tick();
            let mut c = StatCache::load(&file);
            c.set_racy_window(Duration::ZERO);
            let d = digest(r, &["src"], &mut c);
            assert_eq!(d, digest(r, &["src"], &mut cache()), "round {round}");
            hits += crate::context::statcache::lock(&c.listings()).hits();
            c.save(&file).unwrap();
            tick();
            let dir = r.join(dirs[pick(dirs.len())]);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            match (pick(4), files.len()) {
                (0, _) | (1 | 2, 0) => std::fs::write(dir.join(format!("n{round}")), "n").unwrap(),
                (1, n) => std::fs::remove_file(&files[pick(n)]).unwrap(),
                (2, n) => std::fs::rename(&files[pick(n)], dir.join(format!("r{round}"))).unwrap(),
                _ => {
                    let new = dir.join(format!("d{round}"));
                    std::fs::create_dir(&new).unwrap();
                    for i in 0..9 {
                        std::fs::write(new.join(format!("g{i}")), "g").unwrap();
                    }
                }
            }
        }
        assert!(hits > 24, "{hits} listings from the cache in 24 rebuilds");
    }
}
