//! Content digests of COPY/ADD sources for cache keys (design.md "Cache keys"): sha256
//! over the sorted records (path, type, mode, size, content sha256, link target) of
//! everything the copy would read. mtime is deliberately not part of it, so a `touch` or a
//! fresh checkout does not invalidate the cache; nor are the files' uid/gid: a COPY from a
//! context gives its files root (or `--chown`) ownership whoever owns them on the host, as
//! BuildKit's file sync resets them to 0, so a cache made on one CI runner matches on
//! another checkout (issue 18).
//!
//! File contents are memoized in a [`StatCache`] keyed by (dev, inode, size, mtime_ns,
//! ctime_ns): any write or chmod changes ctime, so an unchanged key means unchanged bytes
//! and a no-op rebuild reads metadata only.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

use super::{walk, ContextError, IgnoreMatcher};
use crate::image::Digest;

/// Bumped whenever the record encoding changes, so old cache keys cannot collide.
/// 2: uid/gid left out (issue 18).
const SCHEMA: &[u8] = b"rbuild-content-digest-v2\n";

/// Memoized file sha256s; see the module docs.
///
/// A long-lived store serves many contexts, and every fresh checkout brings new inodes, so
/// entries are kept only while they are used: each save is a generation, and an entry not
/// looked up or added in the last [`KEEP_GENERATIONS`] builds is dropped. The file is a
/// fixed-size binary record per entry (no parsing to speak of), written without fsync: it
/// only saves work, and a torn or truncated file fails its checksum and loads empty.
#[derive(Debug, Default)]
pub struct StatCache {
    entries: HashMap<StatKey, Entry>,
    /// The generation of this build: one more than the last saved one.
    generation: u32,
    hashed: AtomicU64,
    /// Files changed this recently are hashed but not remembered: a write in the same
    /// timestamp tick after hashing would leave the key unchanged (git's "racy clean").
    racy_window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

#[derive(Debug, Clone)]
struct Entry {
    sha: [u8; 32],
    /// The last generation that looked it up or added it.
    generation: u32,
}

/// Builds an unused entry survives (a dev machine switching between a few projects keeps
/// them all; a CI runner's old checkouts go).
const KEEP_GENERATIONS: u32 = 8;
/// At most this many entries are saved (the most recently used first).
const MAX_ENTRIES: usize = 200_000;

/// File layout: MAGIC, generation (u32 LE), count (u64 LE), count records of RECORD bytes,
/// then the sha256 of everything before it.
const MAGIC: &[u8; 8] = b"rbsc\0\0\0\x02";
const RECORD: usize = 8 * 3 + 16 * 2 + 32 + 4;
const HEADER: usize = MAGIC.len() + 4 + 8;

impl StatCache {
    pub fn new() -> StatCache {
        StatCache {
            racy_window: Duration::from_secs(2),
            generation: 1,
            ..StatCache::default()
        }
    }

    /// Load a cache saved by [`StatCache::save`]; a missing or unreadable file (another
    /// version, truncated, torn) gives an empty cache, since it only saves work.
    pub fn load(path: &Path) -> StatCache {
        let mut cache = StatCache::new();
        if let Ok(bytes) = std::fs::read(path) {
            if let Some((generation, entries)) = decode(&bytes) {
                cache.generation = generation.wrapping_add(1).max(1);
                cache.entries = entries;
            }
        }
        cache
    }

    /// Write the cache to `path` atomically (temp file in the same dir, then rename),
    /// without the entries unused for [`KEEP_GENERATIONS`] builds.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let mut kept: Vec<(&StatKey, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| self.generation.wrapping_sub(e.generation) < KEEP_GENERATIONS)
            .collect();
        if kept.len() > MAX_ENTRIES {
            kept.sort_by_key(|(_, e)| std::cmp::Reverse(e.generation));
            kept.truncate(MAX_ENTRIES);
        }
        let bytes = encode(self.generation, &kept);
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| ContextError::io(dir, e))?;
        tmp.write_all(&bytes)
            .map_err(|e| ContextError::io(tmp.path(), e))?;
        tmp.persist(path)
            .map_err(|e| ContextError::io(path, e.error))?;
        Ok(())
    }

    /// How many files were read and hashed (cache misses) since this cache was made.
    pub fn files_hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn set_racy_window(&mut self, d: Duration) {
        self.racy_window = d;
    }

    fn lookup(&mut self, key: &StatKey) -> Option<[u8; 32]> {
        let e = self.entries.get_mut(key)?;
        e.generation = self.generation;
        Some(e.sha)
    }

    fn remember(&mut self, key: StatKey, sha: [u8; 32]) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let newest = key.mtime_ns.max(key.ctime_ns);
        if now - newest < self.racy_window.as_nanos() as i128 {
            return;
        }
        self.entries.insert(
            key,
            Entry {
                sha,
                generation: self.generation,
            },
        );
    }
}

fn encode(generation: u32, entries: &[(&StatKey, &Entry)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entries.len() * RECORD + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, e) in entries {
        out.extend_from_slice(&k.dev.to_le_bytes());
        out.extend_from_slice(&k.ino.to_le_bytes());
        out.extend_from_slice(&k.size.to_le_bytes());
        out.extend_from_slice(&k.mtime_ns.to_le_bytes());
        out.extend_from_slice(&k.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.sha);
        out.extend_from_slice(&e.generation.to_le_bytes());
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

fn decode(bytes: &[u8]) -> Option<(u32, HashMap<StatKey, Entry>)> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if body.len() < HEADER || &body[..MAGIC.len()] != MAGIC || Sha256::digest(body)[..] != *sum {
        return None;
    }
    let generation = u32::from_le_bytes(body[8..12].try_into().ok()?);
    let count = usize::try_from(u64::from_le_bytes(body[12..20].try_into().ok()?)).ok()?;
    let records = &body[HEADER..];
    if records.len() != count.checked_mul(RECORD)? {
        return None;
    }
    let mut entries = HashMap::with_capacity(count);
    for r in records.chunks_exact(RECORD) {
        // Fixed offsets inside a record of exactly RECORD bytes: the conversions cannot fail.
        let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap());
        let i128_at = |i: usize| i128::from_le_bytes(r[i..i + 16].try_into().unwrap());
        let key = StatKey {
            dev: u64_at(0),
            ino: u64_at(8),
            size: u64_at(16),
            mtime_ns: i128_at(24),
            ctime_ns: i128_at(40),
        };
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&r[56..88]);
        let generation = u32::from_le_bytes(r[88..92].try_into().unwrap());
        entries.insert(key, Entry { sha, generation });
    }
    Some((generation, entries))
}

fn stat_key(m: &Metadata) -> StatKey {
    StatKey {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    }
}

/// The sha256 of a file's bytes.
pub(crate) fn hash_file(path: &Path) -> Result<[u8; 32], ContextError> {
    let mut f = std::fs::File::open(path).map_err(|e| ContextError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| ContextError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&h.finalize());
    Ok(out)
}

struct Record {
    path: Vec<u8>,
    kind: u8,
    mode: u32,
    size: u64,
    link: Vec<u8>,
    /// Index into the list of files to hash, for regular files.
    file: Option<usize>,
}

fn kind_byte(m: &Metadata) -> u8 {
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedFile {
    /// As the digest saw it: the source as named, then the path below it.
    pub path: String,
    pub mode: u32,
    /// The file's content sha256, a symlink's target's; zero for anything else.
    pub sha: [u8; 32],
}

/// The content digest of what `COPY <sources>` reads from `root`; see the module docs.
/// `ignore` is the context's `.dockerignore` (empty for stage sources), `excludes` the
/// step's `--exclude` patterns. With `follow_top_symlink`, a source naming a symlink is
/// digested as its target (inside `root`), as the copy dereferences it.
/// Also returns the entries it covered, sorted by path (no reads beyond the digest's own),
/// for naming the files that changed since an earlier build.
pub fn content_digest(
    root: &Path,
    sources: &[String],
    ignore: &IgnoreMatcher,
    excludes: &IgnoreMatcher,
    follow_top_symlink: bool,
    stat_cache: &mut StatCache,
) -> Result<(Digest, Vec<ListedFile>), ContextError> {
    let mut records: Vec<Record> = Vec::new();
    let mut files: Vec<(PathBuf, StatKey)> = Vec::new();
    for source in sources {
        for m in walk::resolve(root, source, follow_top_symlink, ignore)? {
            if excludes.matches(base_name(&m.named)) {
                continue;
            }
            for e in walk::walk(&m, ignore, excludes)? {
                let mut path = m.named.as_bytes().to_vec();
                if !e.rel.as_os_str().is_empty() {
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(e.rel.as_os_str().as_bytes());
                }
                let kind = kind_byte(&e.meta);
                let link = if kind == b'l' {
                    let t = std::fs::read_link(&e.host)
                        .map_err(|err| ContextError::io(&e.host, err))?;
                    t.as_os_str().as_bytes().to_vec()
                } else {
                    Vec::new()
                };
                let file = (kind == b'f').then(|| {
                    files.push((e.host.clone(), stat_key(&e.meta)));
                    files.len() - 1
                });
                let size = match kind {
                    b'f' => e.meta.size(),
                    b'c' | b'b' => e.meta.rdev(),
                    _ => 0,
                };
                records.push(Record {
                    path,
                    kind,
                    mode: e.meta.mode(),
                    size,
                    link,
                    file,
                });
            }
        }
    }

    let shas = hash_all(&files, stat_cache)?;

    records.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
    let mut h = Sha256::new();
    h.update(SCHEMA);
    for r in &records {
        h.update((r.path.len() as u64).to_le_bytes());
        h.update(&r.path);
        h.update([r.kind]);
        h.update(r.mode.to_le_bytes());
        h.update(r.size.to_le_bytes());
        h.update(r.file.map(|i| shas[i]).unwrap_or([0u8; 32]));
        h.update((r.link.len() as u64).to_le_bytes());
        h.update(&r.link);
    }
    let listing = records
        .into_iter()
        .filter(|r| r.kind != b'd')
        .map(|r| ListedFile {
            path: String::from_utf8_lossy(&r.path).into_owned(),
            mode: r.mode,
            sha: match r.file {
                Some(i) => shas[i],
                // A symlink changes with its target.
                None if r.kind == b'l' => Sha256::digest(&r.link).into(),
                None => [0u8; 32],
            },
        })
        .collect();
    Ok((Digest::from_raw(&h.finalize()), listing))
}

pub(crate) fn base_name(named: &str) -> &str {
    named.rsplit('/').next().unwrap_or(named)
}

/// Hash every file, taking what the cache knows and reading the rest on two threads.
fn hash_all(
    files: &[(PathBuf, StatKey)],
    cache: &mut StatCache,
) -> Result<Vec<[u8; 32]>, ContextError> {
    let mut shas = vec![[0u8; 32]; files.len()];
    let mut misses: Vec<usize> = Vec::new();
    for (i, (_, key)) in files.iter().enumerate() {
        match cache.lookup(key) {
            Some(sha) => shas[i] = sha,
            None => misses.push(i),
        }
    }
    if misses.is_empty() {
        return Ok(shas);
    }
    let hashed = &cache.hashed;
    type Hashed = Result<Vec<(usize, [u8; 32])>, ContextError>;
    let results: Vec<Hashed> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let mine: Vec<usize> = misses.iter().copied().skip(t).step_by(2).collect();
                s.spawn(move || {
                    let mut out = Vec::with_capacity(mine.len());
                    for i in mine {
                        out.push((i, hash_file(&files[i].0)?));
                        hashed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new())))
            .collect()
    });
    for r in results {
        for (i, sha) in r? {
            shas[i] = sha;
            // Only remember the hash if the file did not change while it was read.
            let (path, key) = &files[i];
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if stat_key(&m) == *key {
                    cache.remember(*key, sha);
                }
            }
        }
    }
    Ok(shas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

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
        content_digest(root, &s, &none(), &none(), true, c)
            .unwrap()
            .0
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
        let all = content_digest(r, &s, &none(), &none(), true, &mut c)
            .unwrap()
            .0;
        let ig = IgnoreMatcher::new(&["src/sub".to_string()]).unwrap();
        let ignored = content_digest(r, &s, &ig, &none(), true, &mut c).unwrap().0;
        assert_ne!(all, ignored);
        // Changing an ignored file does not change the digest.
        std::fs::write(r.join("src/sub/b.txt"), "changed").unwrap();
        assert_eq!(
            content_digest(r, &s, &ig, &none(), true, &mut c).unwrap().0,
            ignored
        );
        let ex = IgnoreMatcher::new(&["sub".to_string()]).unwrap();
        assert_eq!(
            content_digest(r, &s, &none(), &ex, true, &mut c).unwrap().0,
            ignored
        );
        // Missing literal sources are errors, empty wildcards are not.
        let missing = content_digest(r, &["nope".into()], &none(), &none(), true, &mut c);
        assert_eq!(missing.unwrap_err().to_string(), "\"/nope\": not found");
        assert!(content_digest(r, &["nope*".into()], &none(), &none(), true, &mut c).is_ok());
    }

    #[test]
    fn top_level_symlink_digests_its_target() {
        let t = ctx();
        let r = t.path();
        let mut c = cache();
        let s = vec!["src/link".to_string()];
        let followed = content_digest(r, &s, &none(), &none(), true, &mut c)
            .unwrap()
            .0;
        let kept = content_digest(r, &s, &none(), &none(), false, &mut c)
            .unwrap()
            .0;
        assert_ne!(followed, kept);
        std::fs::write(r.join("src/a.txt"), "new alpha").unwrap();
        assert_ne!(
            content_digest(r, &s, &none(), &none(), true, &mut c)
                .unwrap()
                .0,
            followed
        );
        assert_eq!(
            content_digest(r, &s, &none(), &none(), false, &mut c)
                .unwrap()
                .0,
            kept
        );
    }

    /// An aged store: entries of files no build has looked at for KEEP_GENERATIONS builds
    /// (a CI runner's old checkouts) are dropped; the ones in use stay, whatever their age.
    #[test]
    fn stat_cache_keeps_only_what_recent_builds_used() {
        let t = ctx();
        let r = t.path();
        let file = r.join("statcache");
        let mut c = cache();
        let d0 = digest(r, &["src"], &mut c);
        c.save(&file).unwrap();
        // Another file, digested by every later build; src never again.
        for build in 0..KEEP_GENERATIONS {
            let mut c = StatCache::load(&file);
            c.set_racy_window(Duration::ZERO);
            assert_eq!(c.len(), if build == 0 { 2 } else { 3 }, "build {build}");
            digest(r, &["other"], &mut c);
            c.save(&file).unwrap();
        }
        let mut c = StatCache::load(&file);
        c.set_racy_window(Duration::ZERO);
        assert_eq!(
            c.len(),
            1,
            "src's entries outlived {KEEP_GENERATIONS} builds"
        );
        assert_eq!(digest(r, &["src"], &mut c), d0);
        assert_eq!(c.files_hashed(), 2);
    }

    /// A save cut short (a crash after rename without fsync) loads as an empty cache.
    #[test]
    fn stat_cache_torn_file_is_empty() {
        let t = ctx();
        let r = t.path();
        let file = r.join("statcache");
        let mut c = cache();
        digest(r, &["src"], &mut c);
        c.save(&file).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(StatCache::load(&file).len(), 2);
        for cut in [0, 7, HEADER, bytes.len() - 33, bytes.len() - 1] {
            std::fs::write(&file, &bytes[..cut]).unwrap();
            assert!(StatCache::load(&file).is_empty(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[HEADER + 10] ^= 1;
        std::fs::write(&file, &flipped).unwrap();
        assert!(StatCache::load(&file).is_empty());
        std::fs::write(&file, vec![0u8; bytes.len()]).unwrap();
        assert!(StatCache::load(&file).is_empty());
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
}
