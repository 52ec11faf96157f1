//! The stat cache: file sha256s memoized by (dev, inode, size, mtime_ns, ctime_ns), so a
//! no-op rebuild reads metadata only (design.md "Cache keys"). Any write or chmod changes
//! ctime, so an unchanged key means unchanged bytes.
//!
//! It lives on disk, not in memory, so a context of a million files costs no more memory
//! than one of ten (issue 23). The file holds fixed-size records in the order the builds
//! met them, then an open-addressing index of their keys. A build walks its context in
//! the order it walked it last time, so a lookup first tries the record after the last one
//! found, read ahead from the file in long runs: a cached rebuild reads the records as one
//! stream (issue 23: reading them slot by slot at random was a sixth of its CPU). Any other
//! lookup goes through the index. Entries found this build are marked in a bitset (one bit
//! per record); entries added go to a second log and index in unnamed temp files. Saving
//! writes a new file (the old records kept in their order with their generations bumped,
//! then the added ones, then a new index) and renames it into place, so a build reading
//! the old file is never disturbed and concurrent builds cost each other only work: the
//! last to save wins. A build that added nothing and found only entries refreshed in the
//! last [`REFRESH_AFTER`] builds writes the header's generation alone: a cached rebuild of
//! a million files does not copy its 100 MB file every time.
//!
//! Every record carries a checksum: a torn or damaged record is a miss, never a wrong hit.
//! No count cap: the file is as large as the contexts the store serves, less what no build
//! used for [`KEEP_GENERATIONS`] builds (at most [`DROP_AFTER`]).
//!
//! Beside it (`<path>.dirs`), loaded and saved with it, the names of the context's
//! directories by the same key ([`Listings`]), which the walk reads instead of listing a
//! directory that did not change.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::listings::Listings;
use super::meta::Meta;
use super::ContextError;

/// What identifies a file's bytes: if none of these changed, neither did the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// The bytes a record starts with: its key.
pub(super) const KEY_BYTES: usize = 40;

impl StatKey {
    pub(super) fn bytes(&self) -> [u8; KEY_BYTES] {
        let mut b = [0u8; KEY_BYTES];
        b[0..8].copy_from_slice(&self.dev.to_le_bytes());
        b[8..16].copy_from_slice(&self.ino.to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.mtime_ns.to_le_bytes());
        b[32..40].copy_from_slice(&self.ctime_ns.to_le_bytes());
        b
    }

    /// The key of what `m` describes; `None` for times out of range.
    pub(crate) fn of_meta(m: &Meta) -> Option<StatKey> {
        let ns = |s: i64, n: i64| s.checked_mul(1_000_000_000)?.checked_add(n);
        Some(StatKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec())?,
            ctime_ns: ns(m.ctime(), m.ctime_nsec())?,
        })
    }

    /// The key a record's bytes start with (checked or not).
    pub(super) fn of(raw: &[u8]) -> StatKey {
        // Fixed offsets inside a record: the conversions cannot fail.
        let u64_at = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().unwrap());
        StatKey {
            dev: u64_at(0),
            ino: u64_at(8),
            size: u64_at(16),
            mtime_ns: u64_at(24) as i64,
            ctime_ns: u64_at(32) as i64,
        }
    }

    /// Where the key's probe starts in an index of `slots`, and the tag its entries carry.
    fn home_and_tag(&self, slots: u64) -> (u64, u64) {
        let h = mix(
            0x5eed,
            [
                self.dev,
                self.ino,
                self.size,
                self.mtime_ns as u64,
                self.ctime_ns as u64,
            ]
            .into_iter(),
        );
        (((h as u128 * slots as u128) >> 64) as u64, h & TAG_MASK)
    }
}

/// Builds an unused entry survives at least (a dev machine switching between a few
/// projects keeps them all; a CI runner's old checkouts go).
pub(crate) const KEEP_GENERATIONS: u32 = 8;

/// A found entry's generation is written again only once it is this many builds old: until
/// then, a build that found it and added nothing leaves the file as it is.
pub(crate) const REFRESH_AFTER: u32 = 8;

/// Builds after its generation an entry is dropped by the next save, which rewrites the
/// file for it ([`Log::oldest`] says when one is due). An entry last found
/// [`REFRESH_AFTER`] - 1 builds after its generation was written still has
/// [`KEEP_GENERATIONS`] builds to live.
pub(crate) const DROP_AFTER: u32 = KEEP_GENERATIONS + REFRESH_AFTER;

/// File layout: HEADER bytes (MAGIC, records u64, index slots u64, zero u64, generation
/// u32, the oldest entry's generation u32), then `records` records of RECORD bytes, then
/// `index slots` index entries of 8 bytes (u64 LE). A record: dev, ino, size, mtime_ns,
/// ctime_ns (8 bytes each, LE), sha256 (32), generation (u32 LE), check (u64 LE); one whose
/// check does not match (damaged, torn) is never returned. An index entry: 0 for an empty
/// slot, else the record's number plus one in the low [`POS_BITS`] bits and the key's tag
/// above; linear probing from the key's home.
/// 5: records in the order builds met them, and an index (4: a hash table of records).
const MAGIC: &[u8; 8] = b"rbsc\0\0\0\x05";
pub(crate) const HEADER: usize = 40;
const GENERATION_AT: u64 = 32;
pub(crate) const RECORD: usize = 84;
/// Bits of an index entry that number its record.
const POS_BITS: u32 = 40;
const TAG_MASK: u64 = (1 << (64 - POS_BITS)) - 1;
/// Index slots per entry at least: probes stay short.
const SLOTS_PER_ENTRY: u64 = 2;
/// Slots an index probe reads at once.
const PROBE_READ: usize = 8;
/// Records the stream reads at once after a lookup outside it, and at most as a run of
/// lookups goes on in order (each read doubles).
const STREAM_FIRST: usize = 16;
const STREAM_MAX: usize = 1024;
/// Index slots built in memory at a time (2 MB): an index of any size is written in
/// passes over the records, so memory stays flat in their number.
const BUILD_SLOTS: u64 = 1 << 18;
/// Bytes of added records kept in memory before they are written.
const PENDING_BYTES: usize = 1 << 16;
/// Slots of the index of a build's added entries kept in memory (2 MB, 128k entries at
/// most); a larger one is in a temp file.
const MEMORY_SLOTS: u64 = BUILD_SLOTS;

/// Memoized file sha256s; see the module docs.
#[derive(Debug)]
pub struct StatCache {
    /// The file loaded from the store, read only; `None` if there was none (or it was
    /// not one this version reads).
    old: Option<Log>,
    /// One bit per record of `old`: found this build.
    found: Vec<u64>,
    /// Whether this build found an entry due for a refresh ([`REFRESH_AFTER`]).
    stale_found: bool,
    /// `old`'s records as last read, and the one after the last found.
    stream: Stream,
    /// Entries added this build; made on the first one.
    added: Option<Added>,
    /// Where temp files go: beside the cache file.
    dir: Option<PathBuf>,
    /// The generation of this build: one more than the last saved one.
    generation: u32,
    hashed: AtomicU64,
    /// Files changed this recently are hashed but not remembered: a write in the same
    /// timestamp tick after hashing would leave the key unchanged (git's "racy clean").
    racy_window: Duration,
    /// The directory listings, loaded and saved with the hashes; shared with the walk,
    /// which runs on a thread of its own.
    listings: Arc<Mutex<Listings>>,
}

impl Default for StatCache {
    fn default() -> StatCache {
        StatCache::new()
    }
}

impl StatCache {
    pub fn new() -> StatCache {
        StatCache {
            old: None,
            found: Vec::new(),
            stale_found: false,
            stream: Stream::default(),
            added: None,
            dir: None,
            generation: 1,
            hashed: AtomicU64::new(0),
            racy_window: Duration::from_secs(2),
            listings: Arc::default(),
        }
    }

    /// Open a cache saved by [`StatCache::save`]; a missing or unreadable file (another
    /// version, truncated) gives an empty cache, since it only saves work.
    pub fn load(path: &Path) -> StatCache {
        let mut cache = StatCache::new();
        cache.dir = path.parent().map(Path::to_path_buf);
        cache.listings = Arc::new(Mutex::new(Listings::load(&listings_path(path))));
        if let Some((log, generation)) = File::open(path).ok().and_then(Log::open) {
            cache.generation = generation.wrapping_add(1).max(1);
            cache.found = vec![0; log.records.div_ceil(64) as usize];
            cache.old = Some(log);
        }
        cache
    }

    /// Write the cache to `path` atomically (temp file in the same dir, then rename),
    /// without the entries unused for [`DROP_AFTER`] builds. A build that added nothing,
    /// found nothing due for a refresh and has nothing to drop only counts itself in the
    /// file's header (every entry aged a build).
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        self.save_hashes(path)?;
        let listings = listings_path(path);
        lock(&self.listings)
            .save(&listings)
            .map_err(|e| ContextError::io(&listings, e))
    }

    /// The walk's share: the directory listings.
    pub(crate) fn listings(&self) -> Arc<Mutex<Listings>> {
        Arc::clone(&self.listings)
    }

    fn save_hashes(&self, path: &Path) -> Result<(), ContextError> {
        let none_added = self.added.as_ref().is_none_or(|a| a.records.count() == 0);
        let none_due = |old: &Log| self.generation.wrapping_sub(old.oldest) < DROP_AFTER;
        if !self.stale_found && none_added && self.old.as_ref().is_some_and(none_due) {
            // One aligned 4-byte write: a reader sees the old generation or the new one.
            let file = std::fs::OpenOptions::new().write(true).open(path);
            return file
                .and_then(|f| f.write_all_at(&self.generation.to_le_bytes(), GENERATION_AT))
                .map_err(|e| ContextError::io(path, e));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| ContextError::io(dir, e))?;
        let err = |e| ContextError::io(tmp.path(), e);
        // The age of the oldest entry kept (the added ones are this build's).
        let age = Cell::new(0);
        let file = tmp.as_file();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        let records = self.write_records(&mut out, &age).map_err(err)?;
        drop(out);
        let mut log = Log::write(file.try_clone().map_err(err)?, records).map_err(err)?;
        let oldest = self.generation.wrapping_sub(age.get());
        log.write_header(self.generation, oldest).map_err(err)?;
        tmp.persist(path)
            .map_err(|e| ContextError::io(path, e.error))?;
        Ok(())
    }

    /// Room for the header, then the old records kept, in their order, then the added ones
    /// in theirs: a walk as the last one finds them one after the other. How many.
    fn write_records(&self, out: &mut impl Write, age: &Cell<u32>) -> std::io::Result<u64> {
        let mut records = 0;
        out.write_all(&[0u8; HEADER])?;
        if let Some(old) = &self.old {
            each_record(
                &old.file,
                HEADER as u64,
                old.records,
                |pos, raw| match Record::decode(raw).and_then(|rec| self.kept(pos, &rec, age)) {
                    Some(r) => {
                        records += 1;
                        out.write_all(&r.encode())
                    }
                    None => Ok(()),
                },
            )?;
        }
        if let Some(added) = &self.added {
            added.records.each(|raw| {
                records += 1;
                out.write_all(raw)
            })?;
        }
        out.flush()?;
        Ok(records)
    }

    /// An old entry as the next file keeps it: its generation bumped if this build found
    /// it, `None` once it is [`DROP_AFTER`] builds old. `age` keeps the oldest kept.
    fn kept(&self, pos: u64, rec: &Record, age: &Cell<u32>) -> Option<Record> {
        let found = self.found[(pos / 64) as usize] & (1 << (pos % 64)) != 0;
        let generation = if found {
            self.generation
        } else {
            rec.generation
        };
        let its_age = self.generation.wrapping_sub(generation);
        if its_age >= DROP_AFTER {
            return None;
        }
        age.set(age.get().max(its_age));
        Some(Record { generation, ..*rec })
    }

    /// How many files were read and hashed (cache misses) since this cache was made.
    pub fn files_hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    pub(crate) fn count_hashed(&self, files: u64) {
        self.hashed.fetch_add(files, Ordering::Relaxed);
    }

    /// How many entries it holds: the loaded ones that check out (reads the file: for
    /// tests and tools) and the added ones.
    pub fn len(&self) -> usize {
        let mut n = 0;
        if let Some(old) = &self.old {
            let _ = each_record(&old.file, HEADER as u64, old.records, |_, raw| {
                n += usize::from(Record::decode(raw).is_some());
                Ok(())
            });
        }
        n + self
            .added
            .as_ref()
            .map_or(0, |a| a.records.count() as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    pub(crate) fn set_racy_window(&mut self, d: Duration) {
        self.racy_window = d;
        lock(&self.listings).set_racy_window(d);
    }

    /// Lookups the record after the last one found answered, without the index.
    #[cfg(test)]
    pub(crate) fn found_in_order(&self) -> u64 {
        self.stream.guessed
    }

    pub(crate) fn lookup(&mut self, key: &StatKey) -> Option<[u8; 32]> {
        if let Some(old) = &self.old {
            let found = self.stream.find(key, &old.records(), &old.index);
            if let Ok(Some((pos, rec))) = found {
                self.found[(pos / 64) as usize] |= 1 << (pos % 64);
                self.stale_found |= self.generation.wrapping_sub(rec.generation) >= REFRESH_AFTER;
                return Some(rec.sha);
            }
        }
        self.added.as_mut()?.find(key).ok().flatten()
    }

    pub(crate) fn remember(&mut self, key: StatKey, sha: [u8; 32]) {
        let newest = key.mtime_ns.max(key.ctime_ns) as i128;
        if now_ns() - newest < self.racy_window.as_nanos() as i128 {
            return;
        }
        let rec = Record {
            key,
            sha,
            generation: self.generation,
        };
        // It only saves work: a cache that cannot grow is a cache that misses.
        let _ = self.add(&rec);
    }

    fn add(&mut self, rec: &Record) -> std::io::Result<()> {
        let added = match &mut self.added {
            Some(a) => a,
            None => self.added.insert(Added::new(self.dir.clone())?),
        };
        added.add(rec)
    }
}

/// Where the listings of the stat cache at `path` are kept: beside it.
fn listings_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".dirs");
    PathBuf::from(name)
}

/// The listings, whatever a thread that panicked holding them left (they only save work,
/// and each record is whole once added).
pub(crate) fn lock(listings: &Mutex<Listings>) -> std::sync::MutexGuard<'_, Listings> {
    listings.lock().unwrap_or_else(|e| e.into_inner())
}

/// The time now in nanoseconds since the epoch, as stat keys count it.
pub(super) fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// One entry.
#[derive(Debug, Clone, Copy)]
struct Record {
    key: StatKey,
    sha: [u8; 32],
    generation: u32,
}

impl Record {
    fn encode(&self) -> [u8; RECORD] {
        let mut r = [0u8; RECORD];
        r[..KEY_BYTES].copy_from_slice(&self.key.bytes());
        r[40..72].copy_from_slice(&self.sha);
        r[72..76].copy_from_slice(&self.generation.to_le_bytes());
        let check = check(&r[..76]);
        r[76..84].copy_from_slice(&check.to_le_bytes());
        r
    }

    /// The record in `r` (RECORD bytes), if it checks out.
    fn decode(r: &[u8]) -> Option<Record> {
        if u64::from_le_bytes(r[76..84].try_into().unwrap()) != check(&r[..76]) {
            return None;
        }
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&r[40..72]);
        Some(Record {
            key: StatKey::of(r),
            sha,
            generation: u32::from_le_bytes(r[72..76].try_into().unwrap()),
        })
    }

    /// The record in `raw` if it is `key`'s (its bytes `want`) and checks out.
    fn of_key(raw: &[u8], key: &StatKey, want: &[u8; KEY_BYTES]) -> Option<Record> {
        // The inode first: one word tells most other records apart.
        let ino = u64::from_le_bytes(raw[8..16].try_into().unwrap());
        if ino != key.ino || raw[..KEY_BYTES] != want[..] {
            return None;
        }
        Record::decode(raw)
    }
}

/// A 64-bit checksum of a record's fields: catches torn and damaged records. Bit 1 is
/// always set, so all zeros never checks out.
pub(super) fn check(bytes: &[u8]) -> u64 {
    mix(
        0x7262_7363_7633,
        bytes.chunks(8).map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        }),
    ) | 2
}

pub(super) fn mix(seed: u64, words: impl Iterator<Item = u64>) -> u64 {
    let mut h = seed;
    for w in words {
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// Every record of the `count` in `file` from byte `at` on, in order, read in long runs.
fn each_record(
    file: &File,
    at: u64,
    count: u64,
    mut f: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; STREAM_MAX * RECORD];
    let mut pos = 0;
    while pos < count {
        let n = (STREAM_MAX as u64).min(count - pos);
        let bytes = &mut buf[..n as usize * RECORD];
        file.read_exact_at(bytes, at + pos * RECORD as u64)?;
        for raw in bytes.chunks_exact(RECORD) {
            f(pos, raw)?;
            pos += 1;
        }
    }
    Ok(())
}

/// Records a [`Stream`] reads: those before `written` in `file` from byte `base` on, the
/// rest in `pending`.
struct Records<'a> {
    file: &'a File,
    base: u64,
    written: u64,
    pending: &'a [u8],
}

impl Records<'_> {
    fn count(&self) -> u64 {
        self.written + (self.pending.len() / RECORD) as u64
    }
}

/// Records as last read: from `first`, as many as `bytes` holds. A read right after the
/// last one reads twice as many (up to [`STREAM_MAX`]); any other reads [`STREAM_FIRST`],
/// so lookups in another order than the records' read little. `next` is the record after
/// the last one found: the next lookup's first guess.
#[derive(Debug, Default)]
struct Stream {
    first: u64,
    bytes: Vec<u8>,
    next: u64,
    /// Reads made, and lookups the record after the last found answered (for tests).
    reads: u64,
    guessed: u64,
}

impl Stream {
    fn held(&self) -> u64 {
        (self.bytes.len() / RECORD) as u64
    }

    /// The raw bytes of record `pos` of `records`.
    fn record<'s>(&'s mut self, records: &Records<'s>, pos: u64) -> std::io::Result<&'s [u8]> {
        if pos >= records.written {
            let at = (pos - records.written) as usize * RECORD;
            return Ok(&records.pending[at..at + RECORD]);
        }
        if pos < self.first || pos >= self.first + self.held() {
            let n = if pos == self.first + self.held() && self.held() > 0 {
                (self.held() as usize * 2).min(STREAM_MAX)
            } else {
                STREAM_FIRST
            };
            let n = (n as u64).min(records.written - pos) as usize;
            self.bytes.resize(n * RECORD, 0);
            self.first = pos;
            self.reads += 1;
            let at = records.base + pos * RECORD as u64;
            if let Err(e) = records.file.read_exact_at(&mut self.bytes, at) {
                self.bytes.clear();
                return Err(e);
            }
        }
        let at = (pos - self.first) as usize * RECORD;
        Ok(&self.bytes[at..at + RECORD])
    }

    /// `key`'s record and its number among `records`, which `index` indexes. The record
    /// after the last found is tried first: a walk in the order the records were written
    /// finds every file there. Otherwise the index names the candidates.
    fn find(
        &mut self,
        key: &StatKey,
        records: &Records,
        index: &Index,
    ) -> std::io::Result<Option<(u64, Record)>> {
        let want = key.bytes();
        let count = records.count();
        let of_key = |stream: &mut Stream, pos: u64| -> std::io::Result<Option<Record>> {
            if pos >= count {
                return Ok(None);
            }
            Ok(Record::of_key(stream.record(records, pos)?, key, &want))
        };
        let next = self.next;
        let found = match of_key(self, next)? {
            Some(r) => {
                self.guessed += 1;
                Some((next, r))
            }
            None => index.find(key, |pos| Ok(of_key(self, pos)?.map(|r| (pos, r))))?,
        };
        if let Some((pos, _)) = &found {
            self.next = pos + 1;
        }
        Ok(found)
    }
}

/// A saved cache: its records and their index, in one file.
#[derive(Debug)]
struct Log {
    file: File,
    records: u64,
    index: Index,
    /// The generation of its oldest entry, as its header says.
    oldest: u32,
}

impl Log {
    fn open(file: File) -> Option<(Log, u32)> {
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, 0).ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        let (records, slots) = (u64_at(8), u64_at(16));
        let len = file.metadata().ok()?.len();
        let index_at = records
            .checked_mul(RECORD as u64)?
            .checked_add(HEADER as u64)?;
        let expected = slots.checked_mul(8)?.checked_add(index_at)?;
        if &h[..8] != MAGIC || slots <= records || len != expected || records >> POS_BITS != 0 {
            return None;
        }
        let generation = u32::from_le_bytes(h[32..36].try_into().unwrap());
        let log = Log {
            index: Index {
                entries: Slots::File {
                    file: file.try_clone().ok()?,
                    at: index_at,
                    occupied: None,
                },
                slots,
                used: records,
            },
            file,
            records,
            oldest: u32::from_le_bytes(h[36..40].try_into().unwrap()),
        };
        Some((log, generation))
    }

    /// The file of `records` records written from [`HEADER`] on, with their index written
    /// after them.
    fn write(file: File, records: u64) -> std::io::Result<Log> {
        if records >> POS_BITS != 0 {
            return Err(std::io::Error::other("too many stat cache records"));
        }
        let slots = index_slots(records);
        let at = HEADER as u64 + records * RECORD as u64;
        file.set_len(at + slots * 8)?;
        let index = Index::build(file.try_clone()?, at, slots, BUILD_SLOTS, |f| {
            each_record(&file, HEADER as u64, records, |pos, raw| {
                f(pos, &StatKey::of(raw));
                Ok(())
            })
        })?;
        Ok(Log {
            file,
            records,
            index,
            oldest: 0,
        })
    }

    fn write_header(&mut self, generation: u32, oldest: u32) -> std::io::Result<()> {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&self.records.to_le_bytes());
        h[16..24].copy_from_slice(&self.index.slots.to_le_bytes());
        h[32..36].copy_from_slice(&generation.to_le_bytes());
        h[36..40].copy_from_slice(&oldest.to_le_bytes());
        self.file.write_all_at(&h, 0)
    }

    /// Its records, as a [`Stream`] reads them.
    fn records(&self) -> Records<'_> {
        Records {
            file: &self.file,
            base: HEADER as u64,
            written: self.records,
            pending: &[],
        }
    }
}

/// Index slots for `entries`.
fn index_slots(entries: u64) -> u64 {
    (entries * SLOTS_PER_ENTRY).max(64)
}

/// Where an [`Index`]'s entries are.
#[derive(Debug)]
enum Slots {
    /// 8 bytes each (u64 LE) from byte `at` of `file`; with `occupied`, a bit a slot in
    /// memory says which are not empty, for an index this build writes: a probe from an
    /// empty slot (most lookups and inserts at the load it keeps) reads nothing. A first
    /// build of 1,000,000 files made 1.77M `pread`s of its added index without it, 665k
    /// with it (issue 23).
    File {
        file: File,
        at: u64,
        occupied: Option<Vec<u64>>,
    },
    /// In memory: the added entries' index while it is small ([`MEMORY_SLOTS`]). In a temp
    /// file it cost a `pread` a lookup and a `pread` and a `pwrite` an added entry, half
    /// the digest thread's samples in a first build of 100,000 files (issue 23).
    Memory(Vec<u64>),
}

impl Slots {
    /// The entries from `slot` on, as many as `out` holds.
    fn read(&self, slot: u64, out: &mut [u64]) -> std::io::Result<()> {
        match self {
            Slots::File { file, at, .. } => {
                let mut buf = [0u8; PROBE_READ * 8];
                let bytes = &mut buf[..out.len() * 8];
                file.read_exact_at(bytes, at + slot * 8)?;
                for (e, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *e = u64::from_le_bytes(b.try_into().unwrap());
                }
            }
            Slots::Memory(v) => out.copy_from_slice(&v[slot as usize..slot as usize + out.len()]),
        }
        Ok(())
    }

    fn write(&mut self, slot: u64, entry: u64) -> std::io::Result<()> {
        match self {
            Slots::File { file, at, .. } => {
                file.write_all_at(&entry.to_le_bytes(), *at + slot * 8)?;
                self.mark(slot);
                Ok(())
            }
            Slots::Memory(v) => {
                v[slot as usize] = entry;
                Ok(())
            }
        }
    }

    /// Note that `slot` is not empty (written by [`Slots::write`] or around it).
    fn mark(&mut self, slot: u64) {
        if let Slots::File {
            occupied: Some(bits),
            ..
        } = self
        {
            bits[(slot / 64) as usize] |= 1 << (slot % 64);
        }
    }

    /// How many of the `n` slots from `slot` on a probe has to read: up to the first
    /// empty one where that is known, else all.
    fn to_read(&self, slot: u64, n: usize) -> usize {
        match self {
            Slots::File {
                occupied: Some(bits),
                ..
            } => (0..n as u64)
                .take_while(|i| {
                    let s = slot + i;
                    bits[(s / 64) as usize] & (1 << (s % 64)) != 0
                })
                .count(),
            _ => n,
        }
    }
}

/// An open-addressing index of record numbers by key, `slots` entries.
#[derive(Debug)]
struct Index {
    entries: Slots,
    slots: u64,
    used: u64,
}

impl Index {
    /// An index of `slots` empty slots in memory.
    fn in_memory(slots: u64) -> Index {
        Index {
            entries: Slots::Memory(vec![0; slots as usize]),
            slots,
            used: 0,
        }
    }

    /// Walk the probe of `key`: `f` gets the record number of each entry of the key's tag
    /// until it returns a result; `Err` with the first empty slot if none does.
    fn probe<T>(
        &self,
        key: &StatKey,
        mut f: impl FnMut(u64) -> std::io::Result<Option<T>>,
    ) -> std::io::Result<Result<T, u64>> {
        let (home, tag) = key.home_and_tag(self.slots);
        let mut buf = [0u64; PROBE_READ];
        let mut slot = home;
        let mut left = self.slots;
        while left > 0 {
            let n = (PROBE_READ as u64).min(self.slots - slot).min(left) as usize;
            let n = self.entries.to_read(slot, n);
            if n == 0 {
                return Ok(Err(slot));
            }
            self.entries.read(slot, &mut buf[..n])?;
            for &entry in &buf[..n] {
                if entry == 0 {
                    return Ok(Err(slot));
                }
                // A damaged entry may name no record (0): it is no candidate.
                let pos = (entry & ((1 << POS_BITS) - 1)).checked_sub(1);
                if let Some(pos) = pos.filter(|_| entry >> POS_BITS == tag) {
                    if let Some(t) = f(pos)? {
                        return Ok(Ok(t));
                    }
                }
                slot = (slot + 1) % self.slots;
            }
            left -= n as u64;
        }
        Err(std::io::Error::other("stat cache index is full"))
    }

    /// What `is` makes of the first candidate record (by number) it accepts.
    fn find<T>(
        &self,
        key: &StatKey,
        is: impl FnMut(u64) -> std::io::Result<Option<T>>,
    ) -> std::io::Result<Option<T>> {
        Ok(self.probe(key, is)?.ok())
    }

    /// Add record `pos` of `key` unless `is` accepts a candidate (the key is there
    /// already): `false` then. The index must have room.
    fn insert(
        &mut self,
        key: &StatKey,
        pos: u64,
        mut is: impl FnMut(u64) -> std::io::Result<bool>,
    ) -> std::io::Result<bool> {
        let found = self.probe(key, |p| Ok(is(p)?.then_some(())))?;
        let Err(empty) = found else {
            return Ok(false);
        };
        let (_, tag) = key.home_and_tag(self.slots);
        self.entries.write(empty, (tag << POS_BITS) | (pos + 1))?;
        self.used += 1;
        Ok(true)
    }

    /// An index of `slots` (zeros in `file` from `at` on) of the records `each` gives (number
    /// and key), made `chunk` slots at a time in memory: each pass over the records takes
    /// those whose home is in its chunk. A probe that runs past the chunk goes on in the
    /// next one, and one that runs past the last slot from the first on, in the file.
    fn build(
        file: File,
        at: u64,
        slots: u64,
        chunk: u64,
        mut each: impl FnMut(&mut dyn FnMut(u64, &StatKey)) -> std::io::Result<()>,
    ) -> std::io::Result<Index> {
        let mut index = Index {
            entries: Slots::File {
                file: file.try_clone()?,
                at,
                occupied: Some(vec![0; slots.div_ceil(64) as usize]),
            },
            slots,
            used: 0,
        };
        let mut buf = vec![0u64; chunk.min(slots) as usize];
        let mut bytes = Vec::with_capacity(PENDING_BYTES);
        let mut carried: Vec<u64> = Vec::new();
        let mut used = 0;
        let mut lo = 0;
        while lo < slots {
            let hi = (lo + chunk).min(slots);
            let width = (hi - lo) as usize;
            buf[..width].fill(0);
            let mut spilled = Vec::new();
            let mut place = |from: u64, entry: u64| match buf[(from - lo) as usize..width]
                .iter_mut()
                .find(|e| **e == 0)
            {
                Some(e) => *e = entry,
                None => spilled.push(entry),
            };
            for entry in carried.drain(..) {
                place(lo, entry);
            }
            each(&mut |pos, key| {
                let (home, tag) = key.home_and_tag(slots);
                if (lo..hi).contains(&home) {
                    used += 1;
                    place(home, (tag << POS_BITS) | (pos + 1));
                }
            })?;
            for (i, part) in buf[..width].chunks(PENDING_BYTES / 8).enumerate() {
                bytes.clear();
                bytes.extend(part.iter().flat_map(|e| e.to_le_bytes()));
                let slot = lo + (i * PENDING_BYTES / 8) as u64;
                file.write_all_at(&bytes, at + slot * 8)?;
            }
            for (i, _) in buf[..width].iter().enumerate().filter(|(_, e)| **e != 0) {
                index.entries.mark(lo + i as u64);
            }
            carried = spilled;
            lo = hi;
        }
        // Past the last slot: from the first on, as a probe wraps.
        for entry in carried {
            index.put_from(0, entry)?;
        }
        index.used = used;
        Ok(index)
    }

    /// Write `entry` into the first empty slot from `slot` on.
    fn put_from(&mut self, mut slot: u64, entry: u64) -> std::io::Result<()> {
        for _ in 0..self.slots {
            let mut e = [0u64];
            self.entries.read(slot, &mut e)?;
            if e[0] == 0 {
                return self.entries.write(slot, entry);
            }
            slot = (slot + 1) % self.slots;
        }
        Err(std::io::Error::other("stat cache index is full"))
    }
}

/// The entries a build adds: records appended to a temp file in the order they come
/// (the walk's), indexed in another.
#[derive(Debug)]
struct Added {
    records: Appended,
    index: Index,
    /// Its records as last read, and the one after the last found.
    stream: Stream,
    /// Where its temp files go.
    dir: Option<PathBuf>,
}

impl Added {
    fn new(dir: Option<PathBuf>) -> std::io::Result<Added> {
        Ok(Added {
            records: Appended {
                file: temp_file(&dir)?,
                pending: Vec::new(),
                written: 0,
            },
            index: Index::in_memory(index_slots(0)),
            stream: Stream::default(),
            dir,
        })
    }

    /// `key`'s sha ([`Stream::find`]): a second walk of the same files in one build (another
    /// COPY of them) finds them one after the other.
    fn find(&mut self, key: &StatKey) -> std::io::Result<Option<[u8; 32]>> {
        let found = self
            .stream
            .find(key, &self.records.records(), &self.index)?;
        Ok(found.map(|(_, rec)| rec.sha))
    }

    /// Append `rec` unless its key is there already.
    fn add(&mut self, rec: &Record) -> std::io::Result<()> {
        if (self.index.used + 1) * SLOTS_PER_ENTRY > self.index.slots {
            self.grow()?;
        }
        let want = rec.key.bytes();
        // A candidate's record is read on its own (tags rarely match), not through the
        // lookups' stream.
        let (records, mut stream) = (self.records.records(), Stream::default());
        let new = self.index.insert(&rec.key, records.count(), |pos| {
            let raw = stream.record(&records, pos)?;
            Ok(Record::of_key(raw, &rec.key, &want).is_some())
        })?;
        if new {
            self.records.push(rec)?;
        }
        Ok(())
    }

    /// The index made again with twice the slots: in memory up to [`MEMORY_SLOTS`], else
    /// in a new temp file.
    fn grow(&mut self) -> std::io::Result<()> {
        self.records.flush()?;
        let records = &self.records;
        let slots = index_slots(records.count() * 2);
        if slots <= MEMORY_SLOTS {
            let mut index = Index::in_memory(slots);
            each_record(&records.file, 0, records.written, |pos, raw| {
                let (home, tag) = StatKey::of(raw).home_and_tag(slots);
                index.used += 1;
                index.put_from(home, (tag << POS_BITS) | (pos + 1))
            })?;
            self.index = index;
            return Ok(());
        }
        let file = temp_file(&self.dir)?;
        file.set_len(slots * 8)?;
        self.index = Index::build(file, 0, slots, BUILD_SLOTS, |f| {
            each_record(&records.file, 0, records.written, |pos, raw| {
                f(pos, &StatKey::of(raw));
                Ok(())
            })
        })?;
        Ok(())
    }
}

/// An unnamed temp file in `dir` (or the system's temp dir).
pub(super) fn temp_file(dir: &Option<PathBuf>) -> std::io::Result<File> {
    match dir {
        Some(dir) => tempfile::tempfile_in(dir),
        None => tempfile::tempfile(),
    }
}

/// Records appended to a file from its start, the last ones held in memory until there
/// are [`PENDING_BYTES`] of them.
#[derive(Debug)]
struct Appended {
    file: File,
    /// Records written to the file, and those after them, not yet written.
    written: u64,
    pending: Vec<u8>,
}

impl Appended {
    fn count(&self) -> u64 {
        self.records().count()
    }

    /// Its records, as a [`Stream`] reads them.
    fn records(&self) -> Records<'_> {
        Records {
            file: &self.file,
            base: 0,
            written: self.written,
            pending: &self.pending,
        }
    }

    fn push(&mut self, rec: &Record) -> std::io::Result<()> {
        self.pending.extend_from_slice(&rec.encode());
        if self.pending.len() >= PENDING_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file
            .write_all_at(&self.pending, self.written * RECORD as u64)?;
        self.written = self.count();
        self.pending.clear();
        Ok(())
    }

    /// Every record, raw, in the order pushed.
    fn each(&self, mut f: impl FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        each_record(&self.file, 0, self.written, |_, raw| f(raw))?;
        self.pending.chunks_exact(RECORD).try_for_each(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> StatKey {
        StatKey {
            dev: 1,
            ino: i,
            size: i % 7,
            mtime_ns: 1_000,
            ctime_ns: 1_000,
        }
    }

    fn sha(i: u64) -> [u8; 32] {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&i.to_le_bytes());
        s
    }

    fn cache_at(path: &Path) -> StatCache {
        let mut cache = StatCache::load(path);
        cache.set_racy_window(Duration::ZERO);
        cache
    }

    /// A stat cache file holding `keys`, each with its own sha, remembered in that order,
    /// and the temp dir that holds it.
    fn saved(keys: impl Iterator<Item = u64>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statcache");
        let mut cache = cache_at(&path);
        for i in keys {
            cache.remember(key(i), sha(i));
        }
        cache.save(&path).unwrap();
        (dir, path)
    }

    /// The inodes of the records of the file at `path`, in file order.
    fn file_order(path: &Path) -> Vec<u64> {
        let cache = StatCache::load(path);
        let old = cache.old.as_ref().unwrap();
        let mut inos = Vec::new();
        each_record(&old.file, HEADER as u64, old.records, |_, raw| {
            inos.push(StatKey::of(raw).ino);
            Ok(())
        })
        .unwrap();
        inos
    }

    /// A rebuild that looks the files up in the order they were remembered reads the file
    /// as a stream, in reads that grow to STREAM_MAX records, and never needs the index;
    /// lookups in any other order find every key through the index, and a key not there
    /// is not found.
    #[test]
    fn lookups_in_the_saved_order_read_the_records_as_a_stream() {
        let n = 50_000;
        let (_dir, path) = saved(0..n);

        let mut cache = cache_at(&path);
        for i in 0..n {
            assert_eq!(cache.lookup(&key(i)), Some(sha(i)), "key {i}");
        }
        assert_eq!(cache.found_in_order(), n);
        let reads = cache.stream.reads;
        assert!(
            reads <= n / STREAM_MAX as u64 + 8,
            "{reads} reads for {n} records in order"
        );

        let mut cache = cache_at(&path);
        let shuffled = (0..n)
            .rev()
            .chain((0..n).step_by(7))
            .chain((1..n).step_by(2));
        for i in shuffled {
            assert_eq!(cache.lookup(&key(i)), Some(sha(i)), "key {i}");
        }
        assert_eq!(cache.lookup(&key(n + 1)), None);
        let other_time = StatKey {
            mtime_ns: 2_000,
            ..key(5)
        };
        assert_eq!(cache.lookup(&other_time), None);
    }

    /// Records are saved in the order the build met them: the old ones it kept in the old
    /// order, then the ones it added in the order they were remembered.
    #[test]
    fn saves_keep_the_order_builds_meet_the_files_in() {
        let order: Vec<u64> = (0..3_000).map(|i| (i * 7_919) % 3_000).collect();
        let (_dir, path) = saved(order.iter().copied());
        assert_eq!(file_order(&path), order);

        // The next build finds every other old entry, in another order, and adds new ones.
        let mut cache = cache_at(&path);
        for i in (0..3_000).rev().step_by(2) {
            assert_eq!(cache.lookup(&key(i)), Some(sha(i)));
        }
        let added: Vec<u64> = (0..500).map(|i| 10_000 + (i * 31) % 500).collect();
        for &i in &added {
            assert_eq!(cache.lookup(&key(i)), None);
            cache.remember(key(i), sha(i));
        }
        cache.save(&path).unwrap();
        let expected: Vec<u64> = order.iter().copied().chain(added).collect();
        assert_eq!(file_order(&path), expected);
        let mut cache = cache_at(&path);
        for &i in &expected {
            assert_eq!(cache.lookup(&key(i)), Some(sha(i)), "key {i}");
        }
    }

    /// A damaged record is a miss, through the stream and through the index, and the
    /// lookups after it go on finding their own.
    #[test]
    fn a_damaged_record_is_a_miss_and_the_next_ones_still_hit() {
        let n = 5_000;
        let (_dir, path) = saved(0..n);
        // Damage record 101's sha: its key bytes stay, its check no longer matches.
        let at = HEADER as u64 + 101 * RECORD as u64 + 50;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], at).unwrap();

        let mut cache = cache_at(&path);
        for i in (0..n).chain((0..n).rev()).chain([100, 101, 102]) {
            let expected = (i != 101).then(|| sha(i));
            assert_eq!(cache.lookup(&key(i)), expected, "key {i}");
        }

        // An index whose entries name no record, or records past the end, with the tag of
        // the key looked up: misses, not a panic, while the records in order still hit.
        let log = StatCache::load(&path).old.unwrap();
        let (_, tag) = key(7).home_and_tag(log.index.slots);
        let garbage = [tag << POS_BITS, (tag << POS_BITS) | ((1 << POS_BITS) - 1)];
        let entries: Vec<u8> = (0..log.index.slots)
            .flat_map(|i| garbage[i as usize % 2].to_le_bytes())
            .collect();
        let Slots::File { at, .. } = log.index.entries else {
            panic!("a saved index is in its file")
        };
        file.write_all_at(&entries, at).unwrap();
        let mut cache = cache_at(&path);
        assert_eq!(cache.lookup(&key(7)), None);
        for i in 0..5 {
            assert_eq!(cache.lookup(&key(i)), Some(sha(i)), "key {i} in order");
        }
    }

    /// An index built a few slots at a time holds what one built in one pass holds: probes
    /// that run past a pass's slots go on in the next, and those past the last slot from
    /// the first. Keys are picked to home at the ends of passes and at the last slot.
    #[test]
    fn an_index_built_in_passes_finds_every_record() {
        let slots = 64;
        let chunk = 10;
        let homes = |i: u64| key(i).home_and_tag(slots).0;
        let mut keys: Vec<u64> = Vec::new();
        for want in [slots - 1, 9, 19, 29] {
            keys.extend((0..).filter(|i| homes(*i) == want).take(4));
        }
        let others: Vec<u64> = (0..1_000).filter(|i| !keys.contains(i)).take(16).collect();
        keys.extend(others);
        assert!(keys.len() * SLOTS_PER_ENTRY as usize <= slots as usize);

        for chunk in [chunk, slots] {
            let index = Index::build(tempfile::tempfile().unwrap(), 0, slots, chunk, |f| {
                for (pos, i) in keys.iter().enumerate() {
                    f(pos as u64, &key(*i));
                }
                Ok(())
            })
            .unwrap();
            assert_eq!(index.used, keys.len() as u64);
            for (pos, i) in keys.iter().enumerate() {
                let found = index.find(&key(*i), |p| Ok((p == pos as u64).then_some(p)));
                assert_eq!(
                    found.unwrap(),
                    Some(pos as u64),
                    "key {i}, passes of {chunk}"
                );
            }
            // A probe stops at an empty slot: a key not there takes none of the candidates.
            let mut candidates = 0;
            let none = index.find(&key(5_000), |_| {
                candidates += 1;
                Ok(None::<()>)
            });
            assert_eq!(none.unwrap(), None);
            assert!(candidates < keys.len(), "{candidates} candidates");
        }
    }

    /// What a build adds is found in the same build, before and after it is written to
    /// its temp file and its index grows, in memory and then in a temp file; a key
    /// remembered twice is kept once.
    #[test]
    fn added_entries_are_found_in_the_build_that_added_them() {
        let mut cache = StatCache::new();
        cache.set_racy_window(Duration::ZERO);
        let n = MEMORY_SLOTS / SLOTS_PER_ENTRY + 10_000;
        let in_memory =
            |c: &StatCache| matches!(c.added.as_ref().unwrap().index.entries, Slots::Memory(_));
        for i in 0..n {
            cache.remember(key(i), sha(i));
            assert_eq!(cache.lookup(&key(i)), Some(sha(i)), "key {i} just added");
            if i == 20_000 {
                assert!(in_memory(&cache));
                for j in (0..i).rev() {
                    assert_eq!(cache.lookup(&key(j)), Some(sha(j)), "key {j} in memory");
                }
            }
        }
        assert!(!in_memory(&cache), "{n} entries' index in memory");
        cache.remember(key(7), sha(7));
        assert_eq!(cache.len(), n as usize);
        for i in (0..n).rev() {
            assert_eq!(cache.lookup(&key(i)), Some(sha(i)), "key {i}");
        }
        assert_eq!(cache.lookup(&key(n)), None);
        let added = cache.added.as_ref().unwrap();
        assert!(added.records.written > 0 && added.index.slots > index_slots(0));
        // A second walk in the same order finds each one where the last left off, the
        // written ones and those still in memory.
        let (guessed, reads) = (added.stream.guessed, added.stream.reads);
        for i in 0..n {
            assert_eq!(cache.lookup(&key(i)), Some(sha(i)), "key {i} again");
        }
        let added = cache.added.as_ref().unwrap();
        assert_eq!(added.stream.guessed - guessed, n - 1);
        let reads = added.stream.reads - reads;
        assert!(reads <= n / STREAM_MAX as u64 + 8, "{reads} reads");
    }
}
