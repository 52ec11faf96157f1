//! The stat cache: file sha256s memoized by (dev, inode, size, mtime_ns, ctime_ns), so a
//! no-op rebuild reads metadata only (design.md "Cache keys"). Any write or chmod changes
//! ctime, so an unchanged key means unchanged bytes.
//!
//! It lives on disk, not in memory, so a context of a million files costs no more memory
//! than one of ten (issue 23): an open-addressing hash table of fixed-size records in a
//! file, read with `pread`. Entries found this build are marked in a bitset (one bit per
//! slot); entries added go to a second table of the same kind in an unnamed temp file.
//! Saving writes a new table (the old one copied record by record with its used entries'
//! generations bumped, the added ones inserted) and renames it into place, so a build
//! reading the old file is never disturbed and concurrent builds cost each other only
//! work: the last to save wins. A build that added nothing and found only entries
//! refreshed in the last [`REFRESH_AFTER`] builds writes the header's generation alone:
//! a cached rebuild of a million files does not copy its 120 MB table every time.
//!
//! Every record carries a checksum: a torn or damaged record is a miss, never a wrong hit.
//! No count cap: the table is as large as the contexts the store serves, less what no
//! build used for [`KEEP_GENERATIONS`] builds (at most [`DROP_AFTER`]).

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

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
const KEY_BYTES: usize = 40;

impl StatKey {
    fn bytes(&self) -> [u8; KEY_BYTES] {
        let mut b = [0u8; KEY_BYTES];
        b[0..8].copy_from_slice(&self.dev.to_le_bytes());
        b[8..16].copy_from_slice(&self.ino.to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.mtime_ns.to_le_bytes());
        b[32..40].copy_from_slice(&self.ctime_ns.to_le_bytes());
        b
    }
}

/// Builds an unused entry survives at least (a dev machine switching between a few
/// projects keeps them all; a CI runner's old checkouts go).
pub(crate) const KEEP_GENERATIONS: u32 = 8;

/// A found entry's generation is written again only once it is this many builds old: until
/// then, a build that found it and added nothing leaves the table as it is.
pub(crate) const REFRESH_AFTER: u32 = 8;

/// Builds after its generation an entry is dropped by the next save, which rewrites the
/// table for it ([`Table::oldest`] says when one is due). An entry last found
/// [`REFRESH_AFTER`] - 1 builds after its generation was written still has
/// [`KEEP_GENERATIONS`] builds to live.
pub(crate) const DROP_AFTER: u32 = KEEP_GENERATIONS + REFRESH_AFTER;

/// File layout: HEADER bytes (MAGIC, slots u64, live u64, used u64, generation u32, the
/// oldest entry's generation u32: zero in files of older versions, which then count as due
/// for a rewrite), then `slots` records of RECORD bytes. A record: dev, ino, size, mtime_ns,
/// ctime_ns (8 bytes each, LE), sha256 (32), generation (u32 LE), check (u64 LE). All zero
/// is an empty slot; a record whose check does not match is dead (a removed entry, or a
/// torn write): probing goes past it, lookups never return it.
/// 4: home slots grouped by inode (see [`Table::home`]).
const MAGIC: &[u8; 8] = b"rbsc\0\0\0\x04";
pub(crate) const HEADER: usize = 40;
const GENERATION_AT: u64 = 32;
pub(crate) const RECORD: usize = 84;
/// Tables are kept at most this full (tenths), so probes stay short.
const LOAD: u64 = 7;
/// Slots read at once by a lookup. The window is kept for the next lookup, which a walk
/// usually answers from it: files made one after the other (a checkout's, an unpacked
/// tarball's) have consecutive inodes, and those get neighbouring home slots.
const WINDOW: usize = 64;
/// Slots read at once by an insert (its table changes under it: nothing is kept).
const INSERT_WINDOW: usize = 16;
/// Slots after the last record found that a lookup of the next inode of its group tries
/// before it probes from the home ([`Table::find`]).
const NEXT_IN_GROUP: usize = 16;
/// Inodes per group of neighbouring home slots: 2^GROUP_BITS. Larger groups serve more
/// lookups per read but make longer probes (the table clusters by groups).
const GROUP_BITS: u32 = 3;

/// Memoized file sha256s; see the module docs.
#[derive(Debug)]
pub struct StatCache {
    /// The table loaded from the store, read only; `None` if there was none (or it was
    /// not a table this version reads).
    old: Option<Table>,
    /// One bit per slot of `old`: found this build.
    found: Vec<u64>,
    /// Whether this build found an entry due for a refresh ([`REFRESH_AFTER`]).
    stale_found: bool,
    /// The slots of `old` read last, and the last entry found in it.
    old_window: Window,
    old_hit: Option<Hit>,
    /// Entries added this build; made on the first one.
    added: Option<Table>,
    /// Where temp files go: beside the cache file.
    dir: Option<PathBuf>,
    /// The generation of this build: one more than the last saved one.
    generation: u32,
    hashed: AtomicU64,
    /// Files changed this recently are hashed but not remembered: a write in the same
    /// timestamp tick after hashing would leave the key unchanged (git's "racy clean").
    racy_window: Duration,
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
            old_window: Window::new(WINDOW),
            old_hit: None,
            added: None,
            dir: None,
            generation: 1,
            hashed: AtomicU64::new(0),
            racy_window: Duration::from_secs(2),
        }
    }

    /// Open a cache saved by [`StatCache::save`]; a missing or unreadable file (another
    /// version, truncated) gives an empty cache, since it only saves work.
    pub fn load(path: &Path) -> StatCache {
        let mut cache = StatCache::new();
        cache.dir = path.parent().map(Path::to_path_buf);
        if let Some((table, generation)) = File::open(path).ok().and_then(Table::open) {
            cache.generation = generation.wrapping_add(1).max(1);
            cache.found = vec![0; table.slots.div_ceil(64) as usize];
            cache.old = Some(table);
        }
        cache
    }

    /// Write the cache to `path` atomically (temp file in the same dir, then rename),
    /// without the entries unused for [`DROP_AFTER`] builds. A build that added nothing,
    /// found nothing due for a refresh and has nothing to drop only counts itself in the
    /// file's header (every entry aged a build).
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let none_added = self.added.as_ref().is_none_or(|t| t.live == 0);
        let none_due = |old: &Table| self.generation.wrapping_sub(old.oldest) < DROP_AFTER;
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
        let added = self.added.as_ref().map_or(0, |t| t.live);
        // The age of the oldest entry kept (the added ones are this build's).
        let age = Cell::new(0);
        let mut table = match &self.old {
            // Room for the added entries: copy the old table slot for slot.
            Some(old) if (old.used + added) * 10 <= old.slots * LOAD => {
                self.copy_old(old, tmp.as_file(), &age).map_err(err)?
            }
            _ => {
                let old_live = self.old.as_ref().map_or(0, |t| t.live);
                let mut table =
                    Table::create(tmp.as_file().try_clone().map_err(err)?, old_live + added)
                        .map_err(err)?;
                if let Some(old) = &self.old {
                    old.each(|slot, rec| match self.kept(slot, rec, &age) {
                        Some(r) => table.insert(&r).map(|_| ()),
                        None => Ok(()),
                    })
                    .map_err(err)?;
                }
                table
            }
        };
        if let Some(new) = &self.added {
            new.each(|_, rec| table.insert(rec).map(|_| ()))
                .map_err(err)?;
        }
        let oldest = self.generation.wrapping_sub(age.get());
        table.write_header(self.generation, oldest).map_err(err)?;
        tmp.persist(path)
            .map_err(|e| ContextError::io(path, e.error))?;
        Ok(())
    }

    /// An old entry as the next table keeps it: its generation bumped if this build found
    /// it, `None` once it is [`DROP_AFTER`] builds old. `age` keeps the oldest kept.
    fn kept(&self, slot: u64, rec: &Record, age: &Cell<u32>) -> Option<Record> {
        let found = self.found[(slot / 64) as usize] & (1 << (slot % 64)) != 0;
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

    /// `old` copied slot for slot into `file` (same hashing, same places), dropped entries
    /// left dead so the probes past them still work.
    fn copy_old(&self, old: &Table, file: &File, age: &Cell<u32>) -> std::io::Result<Table> {
        let (mut live, mut used) = (0, 0);
        let mut out = Vec::with_capacity(1 << 16);
        let mut at = HEADER as u64;
        old.raw_slots(|slot, raw| {
            let copy = match Record::decode(raw) {
                Slot::Empty => [0u8; RECORD],
                Slot::Dead => Record::DEAD,
                Slot::Live(rec) => match self.kept(slot, &rec, age) {
                    Some(r) => {
                        live += 1;
                        r.encode()
                    }
                    None => Record::DEAD,
                },
            };
            used += u64::from(copy != [0u8; RECORD]);
            out.extend_from_slice(&copy);
            if out.len() >= 1 << 16 {
                file.write_all_at(&out, at)?;
                at += out.len() as u64;
                out.clear();
            }
            Ok(())
        })?;
        file.write_all_at(&out, at)?;
        Ok(Table {
            file: file.try_clone()?,
            slots: old.slots,
            live,
            used,
            oldest: 0,
        })
    }

    /// How many files were read and hashed (cache misses) since this cache was made.
    pub fn files_hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    pub(crate) fn count_hashed(&self) {
        self.hashed.fetch_add(1, Ordering::Relaxed);
    }

    /// How many entries it holds: the loaded ones that check out (reads the table: for
    /// tests and tools) and the added ones.
    pub fn len(&self) -> usize {
        let mut n = 0;
        if let Some(old) = &self.old {
            let _ = old.each(|_, _| {
                n += 1;
                Ok(())
            });
        }
        n + self.added.as_ref().map_or(0, |t| t.live as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    pub(crate) fn set_racy_window(&mut self, d: Duration) {
        self.racy_window = d;
    }

    pub(crate) fn lookup(&mut self, key: &StatKey) -> Option<[u8; 32]> {
        if let Some(old) = &self.old {
            let after = self.old_hit.as_ref();
            if let Ok(Some((slot, rec))) = old.find(key, &mut self.old_window, after) {
                self.old_hit = Some(Hit {
                    slot,
                    dev: key.dev,
                    ino: key.ino,
                });
                self.found[(slot / 64) as usize] |= 1 << (slot % 64);
                self.stale_found |= self.generation.wrapping_sub(rec.generation) >= REFRESH_AFTER;
                return Some(rec.sha);
            }
        }
        let added = self.added.as_ref()?;
        let mut window = Window::new(INSERT_WINDOW);
        added
            .find(key, &mut window, None)
            .ok()
            .flatten()
            .map(|(_, rec)| rec.sha)
    }

    pub(crate) fn remember(&mut self, key: StatKey, sha: [u8; 32]) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let newest = key.mtime_ns.max(key.ctime_ns) as i128;
        if now - newest < self.racy_window.as_nanos() as i128 {
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
            Some(t) => t,
            None => {
                let file = match &self.dir {
                    Some(dir) => tempfile::tempfile_in(dir)?,
                    None => tempfile::tempfile()?,
                };
                self.added.insert(Table::create(file, 1024)?)
            }
        };
        if (added.used + 1) * 10 > added.slots * LOAD {
            let file = match &self.dir {
                Some(dir) => tempfile::tempfile_in(dir)?,
                None => tempfile::tempfile()?,
            };
            let mut bigger = Table::create(file, added.live * 2)?;
            added.each(|_, r| bigger.insert(r).map(|_| ()))?;
            *added = bigger;
        }
        added.insert(rec)?;
        Ok(())
    }
}

/// Where a lookup found a file's entry.
#[derive(Debug)]
struct Hit {
    slot: u64,
    dev: u64,
    ino: u64,
}

/// One entry.
#[derive(Debug, Clone, Copy)]
struct Record {
    key: StatKey,
    sha: [u8; 32],
    generation: u32,
}

enum Slot {
    Empty,
    Dead,
    Live(Record),
}

impl Record {
    const DEAD: [u8; RECORD] = {
        let mut r = [0u8; RECORD];
        r[RECORD - 8] = 1;
        r
    };

    fn encode(&self) -> [u8; RECORD] {
        let mut r = [0u8; RECORD];
        r[..KEY_BYTES].copy_from_slice(&self.key.bytes());
        r[40..72].copy_from_slice(&self.sha);
        r[72..76].copy_from_slice(&self.generation.to_le_bytes());
        let check = check(&r[..76]);
        r[76..84].copy_from_slice(&check.to_le_bytes());
        r
    }

    fn is_empty(r: &[u8]) -> bool {
        r.iter().all(|b| *b == 0)
    }

    fn decode(r: &[u8]) -> Slot {
        if Record::is_empty(r) {
            return Slot::Empty;
        }
        // Fixed offsets inside a record of exactly RECORD bytes: the conversions cannot fail.
        let u64_at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap());
        if u64_at(76) != check(&r[..76]) {
            return Slot::Dead;
        }
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&r[40..72]);
        Slot::Live(Record {
            key: StatKey {
                dev: u64_at(0),
                ino: u64_at(8),
                size: u64_at(16),
                mtime_ns: u64_at(24) as i64,
                ctime_ns: u64_at(32) as i64,
            },
            sha,
            generation: u32::from_le_bytes(r[72..76].try_into().unwrap()),
        })
    }
}

/// A 64-bit checksum of a record's fields: catches torn and damaged records. Bit 1 is
/// always set, so neither an empty slot (0) nor [`Record::DEAD`] (1) ever checks out.
fn check(bytes: &[u8]) -> u64 {
    mix(
        0x7262_7363_7633,
        bytes.chunks(8).map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        }),
    ) | 2
}

fn mix(seed: u64, words: impl Iterator<Item = u64>) -> u64 {
    let mut h = seed;
    for w in words {
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
    }
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// Slots of a [`Table`] as last read: up to `size` from `first`.
#[derive(Debug)]
struct Window {
    size: u64,
    first: u64,
    bytes: Vec<u8>,
}

impl Window {
    fn new(size: usize) -> Window {
        Window {
            size: size as u64,
            first: 0,
            bytes: Vec::new(),
        }
    }

    /// The raw bytes of `slot` if this window holds it.
    fn held(&self, slot: u64) -> Option<&[u8]> {
        let i = slot.checked_sub(self.first)? as usize;
        self.bytes.get(i * RECORD..(i + 1) * RECORD)
    }

    /// The raw bytes of `slot` of `table`, read with the slots after it unless this
    /// window holds it already.
    fn slot(&mut self, table: &Table, slot: u64) -> std::io::Result<&[u8]> {
        let held = (self.bytes.len() / RECORD) as u64;
        if slot < self.first || slot >= self.first + held {
            let n = self.size.min(table.slots - slot) as usize;
            self.bytes.resize(n * RECORD, 0);
            self.first = slot;
            let at = HEADER as u64 + slot * RECORD as u64;
            if let Err(e) = table.file.read_exact_at(&mut self.bytes, at) {
                self.bytes.clear();
                return Err(e);
            }
        }
        let at = (slot - self.first) as usize * RECORD;
        Ok(&self.bytes[at..at + RECORD])
    }
}

/// A hash table of [`Record`]s in a file.
#[derive(Debug)]
struct Table {
    file: File,
    slots: u64,
    /// Live records.
    live: u64,
    /// Live and dead records: what probes walk past.
    used: u64,
    /// The generation of its oldest entry, as its header says (0 for a table being made).
    oldest: u32,
}

impl Table {
    /// An empty table with room for `entries`.
    fn create(file: File, entries: u64) -> std::io::Result<Table> {
        let slots = (entries * 10 / LOAD + 1).max(1024);
        file.set_len(HEADER as u64 + slots * RECORD as u64)?;
        Ok(Table {
            file,
            slots,
            live: 0,
            used: 0,
            oldest: 0,
        })
    }

    fn open(file: File) -> Option<(Table, u32)> {
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, 0).ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        let (slots, live, used) = (u64_at(8), u64_at(16), u64_at(24));
        let len = file.metadata().ok()?.len();
        let expected = slots
            .checked_mul(RECORD as u64)?
            .checked_add(HEADER as u64)?;
        if &h[..8] != MAGIC || slots == 0 || len != expected || used > slots {
            return None;
        }
        let generation = u32::from_le_bytes(h[32..36].try_into().unwrap());
        let table = Table {
            file,
            slots,
            live,
            used,
            oldest: u32::from_le_bytes(h[36..40].try_into().unwrap()),
        };
        Some((table, generation))
    }

    fn write_header(&mut self, generation: u32, oldest: u32) -> std::io::Result<()> {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&self.slots.to_le_bytes());
        h[16..24].copy_from_slice(&self.live.to_le_bytes());
        h[24..32].copy_from_slice(&self.used.to_le_bytes());
        h[32..36].copy_from_slice(&generation.to_le_bytes());
        h[36..40].copy_from_slice(&oldest.to_le_bytes());
        self.file.write_all_at(&h, 0)
    }

    /// Where `key`'s probe starts: its group of 2^[`GROUP_BITS`] inodes is placed by a
    /// hash of (dev, inode / group), the inode by its place in the group, so neighbouring
    /// inodes have neighbouring homes and one read serves a run of lookups. The other
    /// versions of a file (size, times) share its home.
    fn home(&self, key: &StatKey) -> u64 {
        let h = mix(0x5eed, [key.dev, key.ino >> GROUP_BITS].into_iter());
        let group = ((h as u128 * self.slots as u128) >> 64) as u64;
        (group + (key.ino & ((1 << GROUP_BITS) - 1))) % self.slots
    }

    /// Walk the probe sequence of `key`: `f` gets each slot and its raw bytes until it
    /// returns a result or an empty slot ends the sequence (then `f` gets that one too).
    /// The slots are read through `window`, which must not hold slots changed since.
    fn probe<T>(
        &self,
        key: &StatKey,
        window: &mut Window,
        mut f: impl FnMut(u64, &[u8]) -> Option<T>,
    ) -> std::io::Result<Option<T>> {
        let mut slot = self.home(key);
        for _ in 0..self.slots {
            let raw = window.slot(self, slot)?;
            if let Some(t) = f(slot, raw) {
                return Ok(Some(t));
            }
            if Record::is_empty(raw) {
                return Ok(None);
            }
            slot = (slot + 1) % self.slots;
        }
        Ok(None)
    }

    /// `key`'s live record and its slot. A walk looks up files made one after the other,
    /// whose records were mostly inserted one after the other: when `after` (the record
    /// found before) is of the key's group of inodes, the slots after it that the window
    /// holds are tried first (up to [`NEXT_IN_GROUP`], to an empty one). A probe from the
    /// home passes the records of other groups (groups of neighbouring homes cluster: ~19
    /// slots a probe in a cached rebuild of a million files), so a slot is first told apart
    /// by its inode, one word, and decoded (its check computed) only when it holds the
    /// key's bytes. Keys are unique in a table, so a live record with the key is the one
    /// the probe would find.
    fn find(
        &self,
        key: &StatKey,
        window: &mut Window,
        after: Option<&Hit>,
    ) -> std::io::Result<Option<(u64, Record)>> {
        let want = key.bytes();
        let live = |raw: &[u8]| {
            let ino = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
            if ino != key.ino || raw[..KEY_BYTES] != want {
                return None;
            }
            match Record::decode(raw) {
                Slot::Live(r) => Some(r),
                _ => None,
            }
        };
        let group = |dev: u64, ino: u64| (dev, ino >> GROUP_BITS);
        if let Some(hit) = after.filter(|h| group(h.dev, h.ino) == group(key.dev, key.ino)) {
            let mut slot = hit.slot;
            for _ in 0..NEXT_IN_GROUP {
                slot = (slot + 1) % self.slots;
                let Some(raw) = window.held(slot) else { break };
                if let Some(r) = live(raw) {
                    return Ok(Some((slot, r)));
                }
                if Record::is_empty(raw) {
                    break;
                }
            }
        }
        self.probe(key, window, |slot, raw| live(raw).map(|r| (slot, r)))
    }

    /// Insert or replace; the table must have room (callers grow it first).
    fn insert(&mut self, rec: &Record) -> std::io::Result<()> {
        #[derive(Clone, Copy)]
        enum Place {
            Replace,
            Dead,
            Empty,
        }
        let mut dead = None;
        let mut window = Window::new(INSERT_WINDOW);
        let target = self.probe(&rec.key, &mut window, |slot, raw| {
            match Record::decode(raw) {
                Slot::Live(r) if r.key == rec.key => Some((slot, Place::Replace)),
                Slot::Dead if dead.is_none() => {
                    dead = Some(slot);
                    None
                }
                Slot::Empty => Some(dead.map_or((slot, Place::Empty), |d| (d, Place::Dead))),
                _ => None,
            }
        })?;
        let Some((slot, into)) = target.or(dead.map(|d| (d, Place::Dead))) else {
            return Err(std::io::Error::other("stat cache table is full"));
        };
        match into {
            Place::Replace => {}
            Place::Dead => self.live += 1,
            Place::Empty => {
                self.live += 1;
                self.used += 1;
            }
        }
        self.file
            .write_all_at(&rec.encode(), HEADER as u64 + slot * RECORD as u64)
    }

    /// Every slot's raw bytes, in slot order, read a chunk at a time.
    fn raw_slots(
        &self,
        mut f: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        const CHUNK: u64 = 1024;
        let mut buf = vec![0u8; CHUNK as usize * RECORD];
        let mut slot = 0;
        while slot < self.slots {
            let n = CHUNK.min(self.slots - slot);
            let bytes = &mut buf[..n as usize * RECORD];
            self.file
                .read_exact_at(bytes, HEADER as u64 + slot * RECORD as u64)?;
            for raw in bytes.chunks_exact(RECORD) {
                f(slot, raw)?;
                slot += 1;
            }
        }
        Ok(())
    }

    /// Every live record, in slot order.
    fn each(&self, mut f: impl FnMut(u64, &Record) -> std::io::Result<()>) -> std::io::Result<()> {
        self.raw_slots(|slot, raw| match Record::decode(raw) {
            Slot::Live(rec) => f(slot, &rec),
            _ => Ok(()),
        })
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

    /// A stat cache file holding keys `0..n`, each with its own sha, and the temp dir that
    /// holds it.
    fn saved(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statcache");
        let mut cache = StatCache::load(&path);
        for i in 0..n {
            cache.remember(key(i), sha(i));
        }
        cache.save(&path).unwrap();
        (dir, path)
    }

    /// Every key of a table filled to its load is found with its own sha, by probes that
    /// its first read answers and by those that go on past it (both occur at this size), and
    /// a key not in it is not.
    #[test]
    fn a_full_table_finds_every_key_near_home_and_far_from_it() {
        let n = 50_000;
        let (_dir, path) = saved(n);

        let mut cache = StatCache::load(&path);
        let table = cache.old.as_ref().unwrap();
        assert!(
            table.used * 10 > table.slots * (LOAD - 1),
            "not near its load"
        );
        let mut farthest = 0;
        for i in 0..n {
            let (slot, _) = table
                .find(&key(i), &mut Window::new(16), None)
                .unwrap()
                .unwrap();
            farthest = farthest.max((slot + table.slots - table.home(&key(i))) % table.slots);
        }
        assert!(
            farthest >= 16,
            "no probe went past its first read (farthest {farthest})"
        );
        for i in 0..n {
            assert_eq!(cache.lookup(&key(i)), Some(sha(i)), "key {i}");
        }
        assert_eq!(cache.lookup(&key(n + 1)), None);
    }

    /// A lookup of the next inode of the last one found's group first tries the slots
    /// after it: a record there answers only if it is the key's and checks out. Keys looked
    /// up in order, every other one (the slots after the last hit then hold other keys
    /// first), and one whose record was damaged right after a hit all give what a probe
    /// from home gives; most lookups in order are answered after the last hit.
    #[test]
    fn the_slots_after_the_last_hit_answer_only_for_their_own_key() {
        let n = 5_000;
        let (_dir, path) = saved(n);

        // Damage key 101's record: its key bytes stay, its sha no longer checks out.
        let probe = StatCache::load(&path);
        let table = probe.old.as_ref().unwrap();
        let (slot, _) = table
            .find(&key(101), &mut Window::new(WINDOW), None)
            .unwrap()
            .unwrap();
        let at = HEADER as u64 + slot * RECORD as u64 + 50;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], at).unwrap();

        let mut cache = StatCache::load(&path);
        let mut after_last = 0;
        for i in (0..n).chain((0..n).step_by(2)).chain([100, 101, 102]) {
            let before = cache.old_hit.as_ref().map(|h| h.slot);
            let found = cache.lookup(&key(i));
            let expected = (i != 101).then(|| sha(i));
            assert_eq!(found, expected, "key {i}");
            let now = cache.old_hit.as_ref().map(|h| h.slot);
            if found.is_some() && before.zip(now).is_some_and(|(b, s)| s > b && s - b < 16) {
                after_last += 1;
            }
        }
        assert!(after_last > n / 2, "{after_last} keys were after the last");
        assert_eq!(cache.lookup(&key(n + 1)), None);
    }

    /// Consecutive inodes get consecutive homes, so a walk's lookups read neighbouring
    /// slots, which one kept window answers.
    #[test]
    fn neighbouring_inodes_have_neighbouring_homes() {
        let file = tempfile::tempfile().unwrap();
        let table = Table::create(file, 100_000).unwrap();
        let group = 1u64 << GROUP_BITS;
        for g in [0, 1, 977, 123_456_789] {
            let first = table.home(&key(g * group));
            for j in 1..group {
                assert_eq!(table.home(&key(g * group + j)), (first + j) % table.slots);
            }
        }
    }
}
