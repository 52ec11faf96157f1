//! The listing cache: the names a context directory held, memoized by the directory's
//! stat key (dev, inode, size, mtime_ns, ctime_ns), so a cached rebuild stats each file
//! but does not list the directories that did not change (issue 23: `getdents` was ~40 %
//! of the samples of the walk's thread, the critical one, in a no-op rebuild of 100,000
//! files). Adding, removing or
//! renaming a name changes its directory's mtime and ctime; nothing sets a ctime back, and
//! a directory changed within [`StatCache`]'s racy window of its listing is not remembered,
//! so an unchanged key means unchanged names (git's untracked cache relies on the same).
//! Only on the local filesystems known to keep that promise ([`LocalFilesystems`]): a
//! network or FUSE filesystem may cache a directory's attributes or take them from
//! elsewhere, and its directories are listed each time.
//!
//! It lives in the store beside the stat cache, loaded and saved with it, and follows its
//! layout on a smaller scale: records in the order the builds met them (a rebuild reads
//! them as one stream), each with a checksum (a damaged one is a miss, never a wrong
//! listing) and the generation of the last build that found it (unused ones go after
//! [`DROP_AFTER`] builds). A lookup outside the stream goes through an index of the
//! records read so far, reading on through the file as far as it has to. Only directories
//! of [`MIN_NAMES`] names or more are kept, so that index (and the keys of the listings a
//! build adds) cost a few bytes a file at most, and only listings up to [`MAX_LISTING`]
//! bytes, so no directory's listing is held whole in memory past that. Added listings are held in memory up to
//! [`ADDED_MEMORY`] bytes, then in an unnamed temp file.
//!
//! [`StatCache`]: super::StatCache

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fd::BorrowedFd;

use super::fstype::LocalFilesystems;
use super::spool::Spool;
use super::statcache::{check, mix, now_ns, StatKey, DROP_AFTER, KEY_BYTES, REFRESH_AFTER};

/// Listings larger than this (about 100,000 names) are not kept: a directory that large is
/// listed each time, and memory stays flat in its size.
pub(crate) const MAX_LISTING: usize = 1 << 20;

/// Directories with fewer names are listed each time: listing a few names costs little,
/// and leaving them out keeps the index and the file small.
pub(crate) const MIN_NAMES: usize = 8;

/// File layout: HEADER bytes (MAGIC, generation u32, the oldest record's generation u32),
/// then records: check (u64 LE, over the rest of the record), the key's 40 bytes, the
/// generation (u32 LE), the listing's length (u32 LE), the listing. A listing is its
/// names in the order the directory gave them, each as its length (u8), 1 for a directory
/// or 0, and the name's bytes.
const MAGIC: &[u8; 8] = b"rbdl\0\0\0\x01";
const HEADER: usize = 16;
const GENERATION_AT: u64 = 8;
const HEAD: usize = 8 + KEY_BYTES + 8;
/// What the stream reads at once.
const READ: usize = 256 * 1024;
/// Bytes of added records held in memory before they go to a temp file.
const ADDED_MEMORY: usize = 1 << 20;

/// Memoized directory listings; see the module docs.
#[derive(Debug)]
pub(crate) struct Listings {
    old: Option<Old>,
    /// One bit per record of `old` (in file order): found this build.
    found: Vec<u64>,
    /// Whether this build found a record due for a refresh ([`REFRESH_AFTER`]).
    stale_found: bool,
    added: Added,
    generation: u32,
    racy_window: Duration,
    /// Lookups answered.
    hits: u64,
    filesystems: LocalFilesystems,
}

impl Default for Listings {
    fn default() -> Listings {
        Listings {
            old: None,
            found: Vec::new(),
            stale_found: false,
            added: Added::new(None),
            generation: 1,
            racy_window: Duration::from_secs(2),
            hits: 0,
            filesystems: LocalFilesystems::default(),
        }
    }
}

/// A name of a listing, and whether it is a directory.
pub(crate) type Name<'a> = (&'a [u8], bool);

impl Listings {
    /// Open the file [`Listings::save`] wrote at `path`; a missing or unreadable one gives
    /// an empty cache.
    pub(crate) fn load(path: &Path) -> Listings {
        // Its temp file goes beside the cache file.
        let mut cache = Listings {
            added: Added::new(path.parent().map(Path::to_path_buf)),
            ..Listings::default()
        };
        if let Some(old) = File::open(path).ok().and_then(Old::open) {
            cache.generation = old.generation.wrapping_add(1).max(1);
            cache.old = Some(old);
        }
        cache
    }

    #[cfg(test)]
    pub(crate) fn set_racy_window(&mut self, d: Duration) {
        self.racy_window = d;
    }

    /// Whether directories of the filesystem `dev`, of which `dir` is one, may be
    /// remembered and read from here (a local filesystem's); asked once a filesystem.
    pub(crate) fn usable(&mut self, dev: u64, dir: BorrowedFd<'_>) -> bool {
        self.filesystems.has(dev, dir)
    }

    /// The listing remembered for a directory whose stat key is `key`.
    pub(crate) fn lookup(&mut self, key: &StatKey) -> Option<Vec<u8>> {
        let old = self.old.as_mut()?;
        let (no, rec) = old.find(key).ok().flatten()?;
        let word = (no / 64) as usize;
        if self.found.len() <= word {
            self.found.resize(word + 1, 0);
        }
        self.found[word] |= 1 << (no % 64);
        self.stale_found |= self.generation.wrapping_sub(rec.generation) >= REFRESH_AFTER;
        self.hits += 1;
        Some(rec.listing)
    }

    /// How many lookups found a listing since this cache was made.
    #[cfg(test)]
    pub(crate) fn hits(&self) -> u64 {
        self.hits
    }

    /// How many listings this build added.
    #[cfg(test)]
    pub(crate) fn added(&self) -> u64 {
        self.added.count
    }

    /// Remember `listing` (made with [`push_name`]) for a directory of stat key `key`,
    /// taken before it was listed; not if it has too few names or changed too recently
    /// for its key to tell a later change apart.
    pub(crate) fn remember(&mut self, key: &StatKey, listing: &[u8]) {
        let newest = key.mtime_ns.max(key.ctime_ns) as i128;
        if now_ns() - newest < self.racy_window.as_nanos() as i128 {
            return;
        }
        if listing.len() > MAX_LISTING || names(listing).is_none_or(|n| n.count() < MIN_NAMES) {
            return;
        }
        if !self.added.keys.insert(hash(key)) {
            return;
        }
        let rec = encode(key, self.generation, listing);
        // It only saves work: a cache that cannot grow is a cache that misses.
        let _ = self.added.push(&rec);
    }

    /// Write the cache to `path` atomically, without the records unused for
    /// [`DROP_AFTER`] builds. A build that added nothing, found nothing due for a refresh
    /// and has nothing to drop only counts itself in the file's header.
    pub(crate) fn save(&mut self, path: &Path) -> std::io::Result<()> {
        let none_added = self.added.count == 0;
        let generation = self.generation;
        let none_due = |old: &Old| generation.wrapping_sub(old.oldest) < DROP_AFTER;
        if !self.stale_found && none_added && self.old.as_ref().is_some_and(none_due) {
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            return file.write_all_at(&self.generation.to_le_bytes(), GENERATION_AT);
        }
        if none_added && self.old.is_none() {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, tmp.as_file());
        out.write_all(&[0u8; HEADER])?;
        let mut oldest_age = 0;
        if let Some(old) = &mut self.old {
            let mut no = 0;
            let mut at = HEADER as u64;
            while let Some((next, rec)) = old.record_at(at)? {
                let found = self
                    .found
                    .get((no / 64) as usize)
                    .is_some_and(|w| w & (1 << (no % 64)) != 0);
                let kept = if found { generation } else { rec.generation };
                let age = generation.wrapping_sub(kept);
                if age < DROP_AFTER {
                    oldest_age = oldest_age.max(age);
                    out.write_all(&encode(&rec.key, kept, &rec.listing))?;
                }
                no += 1;
                at = next;
            }
        }
        self.added.records.each(|raw| out.write_all(raw))?;
        out.flush()?;
        drop(out);
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&generation.to_le_bytes());
        header[12..16].copy_from_slice(&generation.wrapping_sub(oldest_age).to_le_bytes());
        tmp.as_file().write_all_at(&header, 0)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Append `name` to a listing being made for [`Listings::remember`].
pub(crate) fn push_name(listing: &mut Vec<u8>, name: &[u8], is_dir: bool) {
    // Linux names are at most 255 bytes; a longer one (another system's) goes as none,
    // which leaves the listing unparsable and so never a hit.
    let len = u8::try_from(name.len()).unwrap_or(0);
    listing.extend_from_slice(&[len, u8::from(is_dir)]);
    listing.extend_from_slice(name);
}

/// The names of a listing, or `None` if any is malformed (empty, longer than the rest,
/// `.`, `..` or with a `/` or NUL in it: only a damaged file has such). Checked whole
/// first, then read as they come (no list of them is made).
pub(crate) fn names(listing: &[u8]) -> Option<impl Iterator<Item = Name<'_>>> {
    let each = || {
        let mut rest = listing;
        std::iter::from_fn(move || {
            let [len, kind, tail @ ..] = rest else {
                return None;
            };
            let len = usize::from(*len);
            let ok = len > 0 && len <= tail.len() && *kind <= 1;
            let (name, after) = tail.split_at(if ok { len } else { 0 });
            rest = after;
            Some(ok.then_some((name, *kind == 1)))
        })
    };
    let mut end = listing;
    for name in each() {
        let (name, _) = name?;
        if name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0) {
            return None;
        }
        end = &end[2 + name.len()..];
    }
    end.is_empty().then(|| each().map_while(|name| name))
}

/// One record as read.
struct Record {
    key: StatKey,
    generation: u32,
    listing: Vec<u8>,
}

fn encode(key: &StatKey, generation: u32, listing: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(HEAD + listing.len());
    rec.extend_from_slice(&[0u8; 8]);
    rec.extend_from_slice(&key.bytes());
    rec.extend_from_slice(&generation.to_le_bytes());
    rec.extend_from_slice(&(listing.len() as u32).to_le_bytes());
    rec.extend_from_slice(listing);
    let check = check(&rec[8..]);
    rec[..8].copy_from_slice(&check.to_le_bytes());
    rec
}

/// The loaded file: read through a window that moves forward as the stream does.
#[derive(Debug)]
struct Old {
    file: File,
    len: u64,
    generation: u32,
    oldest: u32,
    window: Vec<u8>,
    window_at: u64,
    /// Where the record after the last one found starts, and its number.
    next: (u64, u64),
    /// Where the first record not yet indexed starts, and its number.
    scanned: (u64, u64),
    /// Records read so far by a hash of their key: where each starts, and its number.
    index: HashMap<u64, (u64, u64)>,
}

impl Old {
    fn open(file: File) -> Option<Old> {
        let len = file.metadata().ok()?.len();
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, 0).ok()?;
        if &header[..8] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
        let start = (HEADER as u64, 0);
        Some(Old {
            file,
            len,
            generation: u32_at(8),
            oldest: u32_at(12),
            window: Vec::new(),
            window_at: 0,
            next: start,
            scanned: start,
            index: HashMap::new(),
        })
    }

    /// `len` bytes from `at`, through the window; `None` past the end.
    fn bytes(&mut self, at: u64, len: usize) -> std::io::Result<Option<&[u8]>> {
        let end = at.checked_add(len as u64).filter(|&end| end <= self.len);
        let Some(end) = end else {
            return Ok(None);
        };
        let window_end = self.window_at + self.window.len() as u64;
        if at < self.window_at || end > window_end {
            let want = (len.max(READ) as u64).min(self.len - at) as usize;
            self.window.resize(want, 0);
            self.file.read_exact_at(&mut self.window, at)?;
            self.window_at = at;
        }
        let from = (at - self.window_at) as usize;
        Ok(Some(&self.window[from..from + len]))
    }

    /// The record at `at` and where the next one starts; `None` at the end or at a damaged
    /// record (what follows it cannot be trusted to start where it says).
    fn record_at(&mut self, at: u64) -> std::io::Result<Option<(u64, Record)>> {
        let Some(head) = self.bytes(at, HEAD)? else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(head[HEAD - 4..].try_into().unwrap()) as usize;
        if len > MAX_LISTING {
            return Ok(None);
        }
        let Some(raw) = self.bytes(at, HEAD + len)? else {
            return Ok(None);
        };
        if u64::from_le_bytes(raw[..8].try_into().unwrap()) != check(&raw[8..]) {
            return Ok(None);
        }
        let rec = Record {
            key: StatKey::of(&raw[8..8 + KEY_BYTES]),
            generation: u32::from_le_bytes(raw[8 + KEY_BYTES..HEAD - 4].try_into().unwrap()),
            listing: raw[HEAD..].to_vec(),
        };
        Ok(Some((at + (HEAD + len) as u64, rec)))
    }

    /// `key`'s record and its number: the one after the last found, else one already
    /// read, else the first of its key further on.
    fn find(&mut self, key: &StatKey) -> std::io::Result<Option<(u64, Record)>> {
        let (at, no) = self.next;
        if let Some(found) = self.matching(at, no, key)? {
            return Ok(Some(found));
        }
        if let Some(&(at, no)) = self.index.get(&hash(key)) {
            if let Some(found) = self.matching(at, no, key)? {
                return Ok(Some(found));
            }
        }
        while let Some((next, rec)) = self.record_at(self.scanned.0)? {
            let (at, no) = self.scanned;
            self.index.entry(hash(&rec.key)).or_insert((at, no));
            self.scanned = (next, no + 1);
            if rec.key == *key {
                self.next = self.scanned;
                return Ok(Some((no, rec)));
            }
        }
        Ok(None)
    }

    /// The record at `at` (number `no`) if it is `key`'s; the stream goes on after it.
    fn matching(
        &mut self,
        at: u64,
        no: u64,
        key: &StatKey,
    ) -> std::io::Result<Option<(u64, Record)>> {
        let Some((next, rec)) = self.record_at(at)? else {
            return Ok(None);
        };
        if rec.key != *key {
            return Ok(None);
        }
        self.next = (next, no + 1);
        if self.scanned.0 <= at {
            self.index.entry(hash(key)).or_insert((at, no));
            self.scanned = self.next;
        }
        Ok(Some((no, rec)))
    }
}

fn hash(key: &StatKey) -> u64 {
    mix(
        0x6c69_7374,
        [
            key.dev,
            key.ino,
            key.size,
            key.mtime_ns as u64,
            key.ctime_ns as u64,
        ]
        .into_iter(),
    )
}

/// Records added this build, encoded, in the order they were made.
#[derive(Debug)]
struct Added {
    records: Spool,
    count: u64,
    /// Hashes of their keys: a directory listed twice in a build (two COPYs of it) is
    /// added once.
    keys: HashSet<u64>,
}

impl Added {
    /// Nothing added; a temp file, when needed, in `dir`.
    fn new(dir: Option<PathBuf>) -> Added {
        Added {
            records: Spool::new(dir, ADDED_MEMORY),
            count: 0,
            keys: HashSet::new(),
        }
    }

    fn push(&mut self, rec: &[u8]) -> std::io::Result<()> {
        self.records.push(rec)?;
        self.count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64) -> StatKey {
        StatKey {
            dev: 7,
            ino,
            size: 4096,
            mtime_ns: 1_000_000_000,
            ctime_ns: 1_000_000_000,
        }
    }

    fn listing(n: usize) -> Vec<u8> {
        let mut l = Vec::new();
        for i in 0..n {
            push_name(&mut l, format!("f{i}").as_bytes(), i % 3 == 0);
        }
        l
    }

    fn load(path: &Path) -> Listings {
        let mut c = Listings::load(path);
        c.set_racy_window(Duration::ZERO);
        c
    }

    #[test]
    fn listings_survive_save_and_load_in_any_order() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("statcache.dirs");
        let mut c = load(&file);
        // Past what is held in memory: the added records spill to a temp file.
        let (big, small) = (listing(80_000), listing(10));
        assert!(2 * big.len() > ADDED_MEMORY);
        for ino in 1..=5 {
            c.remember(&key(ino), if ino % 2 == 0 { &big } else { &small });
        }
        c.remember(&key(9), &listing(MIN_NAMES - 1));
        c.remember(&key(1), &listing(12));
        assert_eq!(
            c.added(),
            5,
            "too few names, or a key already added, is not kept"
        );
        c.save(&file).unwrap();

        let mut c = load(&file);
        // Out of order, backwards, and one twice: the index and the scan find them.
        for ino in [5, 3, 1, 4, 2, 2] {
            let want = if ino % 2 == 0 { &big } else { &small };
            assert_eq!(c.lookup(&key(ino)).as_ref(), Some(want), "inode {ino}");
        }
        assert_eq!(c.lookup(&key(9)), None);
        assert_eq!(c.lookup(&StatKey { size: 1, ..key(1) }), None);
        assert_eq!(c.hits(), 6);
    }

    /// A file in `dir` holding the listings of keys 1 and 2.
    fn two_saved(dir: &Path) -> PathBuf {
        let file = dir.join("statcache.dirs");
        let mut c = load(&file);
        c.remember(&key(1), &listing(10));
        c.remember(&key(2), &listing(10));
        c.save(&file).unwrap();
        file
    }

    #[test]
    fn a_damaged_record_is_a_miss() {
        let t = tempfile::tempdir().unwrap();
        let file = two_saved(t.path());
        let mut bytes = std::fs::read(&file).unwrap();
        // A name's byte in the first record.
        bytes[HEADER + HEAD + 3] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let mut c = load(&file);
        assert_eq!(c.lookup(&key(1)), None);
        // What follows a damaged record is not trusted to start where it says.
        assert_eq!(c.lookup(&key(2)), None);
        // Cut anywhere: never a listing that is not the one remembered.
        let mut c = load(&file);
        c.remember(&key(3), &listing(10));
        c.save(&file).unwrap();
        let whole = std::fs::read(&file).unwrap();
        for cut in 0..whole.len() {
            std::fs::write(&file, &whole[..cut]).unwrap();
            let got = load(&file).lookup(&key(3));
            assert!(got.is_none() || got == Some(listing(10)), "cut at {cut}");
        }
    }

    #[test]
    fn unused_listings_go_after_drop_after_builds() {
        let t = tempfile::tempdir().unwrap();
        let file = two_saved(t.path());
        // Key 1 is found by every build, key 2 by none.
        for _ in 0..DROP_AFTER + 1 {
            let mut c = load(&file);
            assert!(c.lookup(&key(1)).is_some());
            c.save(&file).unwrap();
        }
        let mut c = load(&file);
        assert!(c.lookup(&key(1)).is_some());
        assert_eq!(c.lookup(&key(2)), None);
    }

    /// Local filesystems that change a directory's times with its names are used; procfs
    /// (standing in for the network and FUSE ones, which tests cannot mount) is not.
    #[test]
    fn only_trusted_filesystems_are_used() {
        let mut c = Listings::default();
        let usable = |c: &mut Listings, path: &str| {
            let dir = std::fs::File::open(path).unwrap();
            let dev = std::os::unix::fs::MetadataExt::dev(&dir.metadata().unwrap());
            c.usable(dev, std::os::fd::AsFd::as_fd(&dir))
        };
        assert!(usable(&mut c, "/dev/shm"), "tmpfs");
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            usable(&mut c, tmp.path().to_str().unwrap()),
            "the temp dir's"
        );
        assert!(!usable(&mut c, "/proc"));
    }

    #[test]
    fn malformed_listings_have_no_names() {
        let ok = listing(3);
        assert_eq!(names(&ok).unwrap().count(), 3);
        for bad in [
            &[0u8, 0][..],
            &[2, 0, b'a'],
            &[1, 2, b'a'],
            &[1, 0, b'/'],
            &[2, 1, b'a', 0],
            &[1, 1, b'.'],
            &[2, 1, b'.', b'.'],
            &[1, 0, b'a', 9],
        ] {
            assert!(names(bad).is_none(), "{bad:?}");
        }
    }
}
