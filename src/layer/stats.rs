//! What a layer holds and what it costs: the path listing of an extracted layer (overlay
//! format, design.md "Layers"), its statistics, and the bytes a later layer deletes or
//! overwrites ("wasted", as dive counts them) across an image's layers.
//!
//! The listing is made from a layer's diff dir with metadata calls only (no file is read),
//! and kept beside its meta.json in a small binary file ([`LayerFiles::encode`]), so
//! `rbuild history` never walks or rereads a layer that has a listing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layer::order::SortedNames;
use crate::layer::{is_opaque, LayerError};

/// How many of a layer's largest files its statistics name.
pub const LARGEST: usize = 5;

/// What a path of a layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file whose data is in this layer.
    File,
    /// Another path of a regular file already listed in this layer (its data counts once,
    /// on the first path in byte order, as the tar has it).
    HardLink,
    Dir,
    /// A directory that hides everything below it in lower layers.
    OpaqueDir,
    Symlink,
    /// A deletion of this path (and everything below it) in lower layers.
    Whiteout,
    /// A device node or fifo.
    Other,
}

impl FileKind {
    fn code(self) -> u8 {
        match self {
            FileKind::File => 0,
            FileKind::HardLink => 1,
            FileKind::Dir => 2,
            FileKind::OpaqueDir => 3,
            FileKind::Symlink => 4,
            FileKind::Whiteout => 5,
            FileKind::Other => 6,
        }
    }

    fn from_code(c: u8) -> Option<FileKind> {
        Some(match c {
            0 => FileKind::File,
            1 => FileKind::HardLink,
            2 => FileKind::Dir,
            3 => FileKind::OpaqueDir,
            4 => FileKind::Symlink,
            5 => FileKind::Whiteout,
            6 => FileKind::Other,
            _ => return None,
        })
    }
}

/// One path of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the layer root, no leading or trailing slash.
    pub path: Vec<u8>,
    /// Bytes of data this entry carries (0 for everything but [`FileKind::File`]).
    pub size: u64,
    pub kind: FileKind,
}

/// Every path of a layer, sorted byte-wise (a directory before what is below it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerFiles {
    pub entries: Vec<FileEntry>,
}

/// A file named among a layer's largest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LargeFile {
    pub path: String,
    pub size: u64,
}

/// A layer's statistics, kept in its meta.json.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerStats {
    /// Regular files, hard links included.
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Whiteouts (deleted paths) and opaque directories.
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Device nodes and fifos.
    pub other: u64,
    /// Bytes of file data (hard links counted once).
    pub bytes: u64,
    /// The largest files, largest first (ties by path), at most [`LARGEST`].
    pub largest: Vec<LargeFile>,
}

const MAGIC: &[u8; 8] = b"RBFILES1";
/// Listings up to this size are read whole (and their file closed): an image of a thousand
/// small layers holds no thousand open files or buffers while it is costed.
const SMALL_LISTING: u64 = 64 * 1024;

impl LayerFiles {
    /// List the extracted layer `dir` (overlay format: whiteouts are char devices 0/0,
    /// opaque directories carry an opaque xattr), reading metadata only. A missing `dir`
    /// is an empty layer.
    pub fn scan(dir: &Path) -> Result<LayerFiles, LayerError> {
        let mut entries = Vec::new();
        scan_each(dir, &mut |e| {
            entries.push(e);
            Ok(())
        })?;
        Ok(LayerFiles { entries })
    }

    /// The layer's statistics.
    pub fn stats(&self) -> LayerStats {
        let mut count = StatsCount::default();
        self.entries.iter().for_each(|e| count.add(e));
        count.finish()
    }

    /// The binary listing kept beside meta.json: `RBFILES1`, the entry count (u64), then per
    /// entry its kind (u8), size (u64), path length (u32) and path bytes, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            put_entry(&mut out, e).expect("a Vec takes every write");
        }
        out
    }

    /// Read what [`LayerFiles::encode`] wrote; `None` for anything else (a torn or foreign
    /// file: the caller lists the layer again).
    pub fn decode(bytes: &[u8]) -> Option<LayerFiles> {
        let listing = Listing::from_bytes(bytes.to_vec())?;
        let entries = listing.collect::<Result<Vec<_>, _>>().ok()?;
        Some(LayerFiles { entries })
    }
}

/// Walk the extracted layer `dir` in byte order of whole paths (layer/order.rs, the order
/// of the layer's tar), handing `each` every path as it goes: nothing per entry is kept
/// but the inodes of multiply-linked files (issue 23). A missing `dir` has no paths.
fn scan_each(
    dir: &Path,
    each: &mut dyn FnMut(FileEntry) -> Result<(), LayerError>,
) -> Result<(), LayerError> {
    let names = match list_names(dir) {
        Err(LayerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(())
        }
        other => other?,
    };
    // (dev, ino) of multiply-linked files seen: the data goes with the first path in byte
    // order, as in the tar layer::snapshot writes (files sort the same in both orders).
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![(Vec::<u8>::new(), names)];
    while let Some((rel_dir, names)) = stack.last_mut() {
        let Some(visit) = names.next() else {
            stack.pop();
            continue;
        };
        let mut rel = rel_dir.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(names.name(&visit));
        let abs = dir.join(OsStr::from_bytes(&rel));
        if visit.contents {
            let names = list_names(&abs)?;
            stack.push((rel, names));
            continue;
        }
        let md = fs::symlink_metadata(&abs).map_err(|e| LayerError::io("inspecting", &abs, e))?;
        let ft = md.file_type();
        let (kind, size) = if ft.is_dir() {
            let kind = if is_opaque(&abs) {
                FileKind::OpaqueDir
            } else {
                FileKind::Dir
            };
            (kind, 0)
        } else if ft.is_file() {
            if md.nlink() > 1 && !linked.insert((md.dev(), md.ino())) {
                (FileKind::HardLink, 0)
            } else {
                (FileKind::File, md.len())
            }
        } else if ft.is_symlink() {
            (FileKind::Symlink, 0)
        } else if ft.is_char_device() && md.rdev() == 0 {
            (FileKind::Whiteout, 0)
        } else {
            (FileKind::Other, 0)
        };
        each(FileEntry {
            path: rel,
            size,
            kind,
        })?;
    }
    Ok(())
}

/// The names in `dir` that a listing holds (sockets are not in the tar either: layer::snapshot
/// skips them), in the order to visit them.
fn list_names(dir: &Path) -> Result<SortedNames, LayerError> {
    let listing = fs::read_dir(dir).map_err(|e| LayerError::io("reading directory", dir, e))?;
    let mut names = SortedNames::default();
    for entry in listing {
        let entry = entry.map_err(|e| LayerError::io("reading directory", dir, e))?;
        let ft = entry
            .file_type()
            .map_err(|e| LayerError::io("inspecting", entry.path(), e))?;
        if !ft.is_socket() {
            names.add(entry.file_name().as_bytes(), ft.is_dir(), 0);
        }
    }
    names.sort();
    Ok(names)
}

/// List the extracted layer `dir` (as [`LayerFiles::scan`]) straight into `out`, in the
/// format of [`LayerFiles::encode`], and count its statistics on the way: memory flat in
/// the layer's entries.
pub fn write_listing<W: Write + Seek>(dir: &Path, out: W) -> Result<LayerStats, LayerError> {
    let mut out = io::BufWriter::new(out);
    out.write_all(MAGIC).map_err(LayerError::Write)?;
    out.write_all(&0u64.to_le_bytes())
        .map_err(LayerError::Write)?;
    let (mut count, mut entries) = (StatsCount::default(), 0u64);
    scan_each(dir, &mut |e| {
        count.add(&e);
        entries += 1;
        put_entry(&mut out, &e).map_err(LayerError::Write)
    })?;
    let mut out = out
        .into_inner()
        .map_err(|e| LayerError::Write(e.into_error()))?;
    out.seek(SeekFrom::Start(MAGIC.len() as u64))
        .and_then(|_| out.write_all(&entries.to_le_bytes()))
        .and_then(|_| out.flush())
        .map_err(LayerError::Write)?;
    Ok(count.finish())
}

fn put_entry(out: &mut impl Write, e: &FileEntry) -> io::Result<()> {
    out.write_all(&[e.kind.code()])?;
    out.write_all(&e.size.to_le_bytes())?;
    out.write_all(&(e.path.len() as u32).to_le_bytes())?;
    out.write_all(&e.path)
}

/// A layer's statistics, counted one entry at a time.
#[derive(Default)]
struct StatsCount {
    stats: LayerStats,
    /// The largest files so far, largest first (ties by path), at most [`LARGEST`].
    largest: Vec<(u64, Vec<u8>)>,
}

impl StatsCount {
    fn add(&mut self, e: &FileEntry) {
        let s = &mut self.stats;
        match e.kind {
            FileKind::File | FileKind::HardLink => {
                s.files += 1;
                s.bytes += e.size;
            }
            FileKind::Dir => s.dirs += 1,
            FileKind::OpaqueDir => {
                s.dirs += 1;
                s.opaque_dirs += 1;
            }
            FileKind::Symlink => s.symlinks += 1,
            FileKind::Whiteout => s.whiteouts += 1,
            FileKind::Other => s.other += 1,
        }
        let ranks =
            |a: &(u64, Vec<u8>), b: &(u64, Vec<u8>)| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1));
        let candidate = (e.size, e.path.clone());
        let fits = self.largest.len() < LARGEST
            || self
                .largest
                .last()
                .is_some_and(|last| ranks(&candidate, last).is_lt());
        if e.size > 0 && fits {
            self.largest.push(candidate);
            self.largest.sort_by(ranks);
            self.largest.truncate(LARGEST);
        }
    }

    fn finish(mut self) -> LayerStats {
        self.stats.largest = self
            .largest
            .into_iter()
            .map(|(size, path)| LargeFile {
                path: String::from_utf8_lossy(&path).into_owned(),
                size,
            })
            .collect();
        self.stats
    }
}

/// A listing ([`LayerFiles::encode`]'s format) read entry by entry.
pub struct Listing {
    input: Box<dyn BufRead + Send>,
    left: u64,
    /// The file, for errors.
    path: PathBuf,
}

impl Listing {
    /// The listing in file `path`, checked whole first (a torn or foreign file is `None`:
    /// the caller lists the layer again); a missing file is `None` too.
    pub fn open(path: &Path) -> io::Result<Option<Listing>> {
        let mut file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() <= SMALL_LISTING {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            return Ok(Listing::from_bytes(bytes).map(|l| Listing {
                path: path.to_path_buf(),
                ..l
            }));
        }
        let check = Listing::start(Box::new(io::BufReader::new(file.try_clone()?)));
        if !check.is_some_and(Listing::whole) {
            return Ok(None);
        }
        file.seek(SeekFrom::Start(0))?;
        Ok(
            Listing::start(Box::new(io::BufReader::new(file))).map(|l| Listing {
                path: path.to_path_buf(),
                ..l
            }),
        )
    }

    fn from_bytes(bytes: Vec<u8>) -> Option<Listing> {
        let check = Listing::start(Box::new(io::Cursor::new(bytes.as_slice().to_vec())))?;
        check
            .whole()
            .then(|| Listing::start(Box::new(io::Cursor::new(bytes))))
            .flatten()
    }

    fn start(mut input: Box<dyn BufRead + Send>) -> Option<Listing> {
        let mut head = [0u8; 16];
        input.read_exact(&mut head).ok()?;
        let (magic, count) = head.split_at(8);
        (magic == MAGIC).then(|| Listing {
            input,
            left: u64::from_le_bytes(count.try_into().expect("8 bytes")),
            path: PathBuf::new(),
        })
    }

    /// Whether every entry reads and nothing follows the last one.
    fn whole(mut self) -> bool {
        for e in self.by_ref() {
            if e.is_err() {
                return false;
            }
        }
        matches!(self.input.fill_buf(), Ok(rest) if rest.is_empty())
    }

    fn read_entry(&mut self) -> io::Result<FileEntry> {
        let mut head = [0u8; 13];
        self.input.read_exact(&mut head)?;
        let kind = FileKind::from_code(head[0])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown entry kind"))?;
        let size = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes"));
        let mut path = Vec::new();
        (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut path)?;
        if path.len() != len as usize {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(FileEntry { path, size, kind })
    }
}

impl Iterator for Listing {
    type Item = Result<FileEntry, LayerError>;

    fn next(&mut self) -> Option<Result<FileEntry, LayerError>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let entry = self.read_entry();
        if entry.is_err() {
            self.left = 0;
        }
        Some(entry.map_err(|e| LayerError::io("reading layer listing", &self.path, e)))
    }
}

/// How a later layer made an earlier layer's bytes dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    /// A whiteout, an opaque directory, or a directory or file put in place of a directory.
    Deleted,
    /// The same path written again.
    Overwritten,
}

/// Bytes added in layer `added_in` that layer `removed_in` deletes or overwrites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Waste {
    pub added_in: usize,
    pub removed_in: usize,
    pub how: Removal,
    pub bytes: u64,
    /// Paths (files, symlinks, ...) removed.
    pub files: u64,
}

/// Per-layer figures that depend on the layers below it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LayerCost {
    /// Non-directory paths that no lower layer has (visible).
    pub added: u64,
    /// Non-directory paths that replace a visible one of a lower layer.
    pub changed: u64,
    /// Visible non-directory paths of lower layers that this layer removes (whiteouts,
    /// opaque directories, a directory put in place of a file and the other way round).
    pub deleted: u64,
    /// Bytes this layer adds that a later layer deletes or overwrites.
    pub wasted: u64,
}

/// An image's layers, costed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageCost {
    /// One per layer, bottom first.
    pub layers: Vec<LayerCost>,
    /// Every (added in, removed in, how), largest first (ties by layer).
    pub waste: Vec<Waste>,
}

/// What is visible at a path after the layers seen so far.
struct Visible {
    layer: usize,
    size: u64,
    dir: bool,
}

/// Cost the layers of an image, bottom first, from their listings (each in byte order of
/// paths, as [`LayerFiles`] has them). A layer whose listing is unknown (`None`: not
/// extracted) counts as empty.
///
/// The listings are merged path by path, so memory is one entry per layer plus the
/// directories whose lower contents a layer removes that the merge is inside: not one
/// record per path of the image (issue 23). A later layer removes a lower path at the path
/// itself (same group of the merge) or through a directory above it: a whiteout, an opaque
/// directory, or a non-directory put in place of a directory. Those are kept as `cuts` by
/// the prefix they remove (`dir/`), until the merge has passed every path under it.
pub fn image_cost<I, E>(layers: Vec<Option<I>>) -> Result<ImageCost, E>
where
    I: Iterator<Item = Result<FileEntry, E>>,
{
    let mut costs = vec![LayerCost::default(); layers.len()];
    let mut pairs: BTreeMap<(usize, usize, Removal), (u64, u64)> = BTreeMap::new();
    let mut kill = |costs: &mut Vec<LayerCost>, v: Visible, by: usize, how: Removal| {
        if v.dir {
            return;
        }
        if how == Removal::Deleted {
            costs[by].deleted += 1;
        }
        costs[v.layer].wasted += v.size;
        let counted = pairs.entry((v.layer, by, how)).or_default();
        counted.0 += v.size;
        counted.1 += 1;
    };
    // The next entry of each layer: its path in the heap, the rest here.
    let mut inputs: Vec<Option<I>> = layers;
    let mut heads: Vec<(u64, FileKind)> = vec![(0, FileKind::Dir); inputs.len()];
    let mut heap: BinaryHeap<Reverse<(Vec<u8>, usize)>> = BinaryHeap::new();
    let advance = |inputs: &mut Vec<Option<I>>,
                   heads: &mut Vec<(u64, FileKind)>,
                   heap: &mut BinaryHeap<Reverse<(Vec<u8>, usize)>>,
                   l: usize|
     -> Result<(), E> {
        if let Some(e) = inputs[l].as_mut().and_then(Iterator::next).transpose()? {
            heads[l] = (e.size, e.kind);
            heap.push(Reverse((e.path, l)));
        }
        Ok(())
    };
    for l in 0..inputs.len() {
        advance(&mut inputs, &mut heads, &mut heap, l)?;
    }
    // Prefix `dir/` -> the layers that remove what lower layers have under it.
    let mut cuts: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    let mut group: Vec<(usize, u64, FileKind)> = Vec::new();
    while let Some(Reverse((path, l))) = heap.pop() {
        // Every layer's entry at `path`, bottom first.
        group.clear();
        group.push((l, heads[l].0, heads[l].1));
        advance(&mut inputs, &mut heads, &mut heap, l)?;
        while let Some(Reverse((p, l))) = heap.peek() {
            if *p != path {
                break;
            }
            let l = *l;
            heap.pop();
            group.push((l, heads[l].0, heads[l].1));
            advance(&mut inputs, &mut heads, &mut heap, l)?;
        }
        // Cuts the merge has gone past for good, then those above this path.
        let mut above: Vec<usize> = Vec::new();
        if !cuts.is_empty() {
            cuts.retain(|prefix, _| path.starts_with(prefix) || path < *prefix);
            for (i, _) in path.iter().enumerate().filter(|(_, b)| **b == b'/') {
                above.extend(cuts.get(&path[..=i]).into_iter().flatten());
            }
            above.sort_unstable();
        }
        let mut visible: Option<Visible> = None;
        let mut cut_here = Vec::new();
        let mut above = above.into_iter().peekable();
        for &(l, size, kind) in &group {
            // A directory above removed this path in a layer at or below this entry's.
            while let Some(by) = above.next_if(|by| *by <= l) {
                if let Some(v) = visible.take_if(|v| v.layer < by) {
                    kill(&mut costs, v, by, Removal::Deleted);
                }
            }
            let was_dir = visible.as_ref().is_some_and(|v| v.dir);
            match kind {
                FileKind::Whiteout => {
                    if let Some(v) = visible.take() {
                        kill(&mut costs, v, l, Removal::Deleted);
                    }
                    if was_dir {
                        cut_here.push(l);
                    }
                }
                FileKind::Dir | FileKind::OpaqueDir => {
                    if let Some(v) = visible.take_if(|v| !v.dir) {
                        kill(&mut costs, v, l, Removal::Deleted);
                    }
                    if kind == FileKind::OpaqueDir && was_dir {
                        cut_here.push(l);
                    }
                    visible = Some(Visible {
                        layer: l,
                        size: 0,
                        dir: true,
                    });
                }
                FileKind::File | FileKind::HardLink | FileKind::Symlink | FileKind::Other => {
                    match visible.take() {
                        Some(v) if v.dir => {
                            // A file in place of a directory hides all of it.
                            cut_here.push(l);
                            costs[l].added += 1;
                        }
                        Some(old) => {
                            costs[l].changed += 1;
                            kill(&mut costs, old, l, Removal::Overwritten);
                        }
                        None => costs[l].added += 1,
                    }
                    visible = Some(Visible {
                        layer: l,
                        size,
                        dir: false,
                    });
                }
            }
        }
        for by in above {
            if let Some(v) = visible.take_if(|v| v.layer < by) {
                kill(&mut costs, v, by, Removal::Deleted);
            }
        }
        if !cut_here.is_empty() {
            let mut prefix = path;
            prefix.push(b'/');
            cuts.entry(prefix).or_default().extend(cut_here);
        }
    }
    let mut waste: Vec<Waste> = pairs
        .into_iter()
        .filter(|(_, (bytes, _))| *bytes > 0)
        .map(|((added_in, removed_in, how), (bytes, files))| Waste {
            added_in,
            removed_in,
            how,
            bytes,
            files,
        })
        .collect();
    waste.sort_by_key(|w| std::cmp::Reverse(w.bytes));
    Ok(ImageCost {
        layers: costs,
        waste,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, u64, FileKind)]) -> LayerFiles {
        let mut entries: Vec<FileEntry> = entries
            .iter()
            .map(|(p, size, kind)| FileEntry {
                path: p.as_bytes().to_vec(),
                size: *size,
                kind: *kind,
            })
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        LayerFiles { entries }
    }

    use FileKind::*;

    fn cost(layers: &[Option<&LayerFiles>]) -> ImageCost {
        let listings = layers
            .iter()
            .map(|l| l.map(|f| f.entries.iter().cloned().map(Ok::<_, ()>)))
            .collect();
        image_cost(listings).unwrap()
    }

    #[test]
    fn encoding_round_trips_and_rejects_torn_files() {
        let files = layer(&[
            ("a", 0, Dir),
            ("a/b", 7, File),
            ("a/c", 0, HardLink),
            ("d", 0, Whiteout),
            ("e", 0, OpaqueDir),
            ("f", 0, Symlink),
            ("g", 0, Other),
        ]);
        let bytes = files.encode();
        assert_eq!(LayerFiles::decode(&bytes), Some(files.clone()));
        for cut in [0, 8, 16, bytes.len() - 1] {
            assert_eq!(LayerFiles::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(LayerFiles::decode(&longer), None);
        assert_eq!(
            LayerFiles::decode(b"RBFILES1\xff\xff\xff\xff\xff\xff\xff\xff"),
            None
        );
    }

    #[test]
    fn stats_count_kinds_and_name_the_largest_files() {
        let files = layer(&[
            ("a", 0, Dir),
            ("a/big", 300, File),
            ("a/link", 0, HardLink),
            ("b", 0, OpaqueDir),
            ("c", 100, File),
            ("d", 200, File),
            ("e", 0, Whiteout),
            ("f", 0, Symlink),
        ]);
        let s = files.stats();
        assert_eq!(
            (
                s.files,
                s.dirs,
                s.opaque_dirs,
                s.whiteouts,
                s.symlinks,
                s.bytes
            ),
            (4, 2, 1, 1, 1, 600)
        );
        let largest: Vec<(&str, u64)> = s.largest.iter().map(|f| (&*f.path, f.size)).collect();
        assert_eq!(largest, [("a/big", 300), ("d", 200), ("c", 100)]);
    }

    #[test]
    fn waste_is_charged_to_the_layer_that_added_the_bytes() {
        let base = layer(&[
            ("etc", 0, Dir),
            ("etc/conf", 10, File),
            ("big", 1000, File),
            ("cache", 0, Dir),
            ("cache/a", 30, File),
            ("cache/b", 40, File),
            ("keep", 5, File),
        ]);
        let second = layer(&[
            ("etc", 0, Dir),
            ("etc/conf", 12, File),
            ("new", 7, File),
            ("cache", 0, OpaqueDir),
            ("cache/c", 50, File),
        ]);
        let third = layer(&[
            ("big", 0, Whiteout),
            ("etc", 0, Dir),
            ("etc/conf", 0, Whiteout),
            ("new", 9, File),
        ]);
        let cost = cost(&[Some(&base), Some(&second), Some(&third)]);
        assert_eq!(
            cost.layers,
            [
                LayerCost {
                    added: 5,
                    changed: 0,
                    deleted: 0,
                    wasted: 1000 + 10 + 30 + 40
                },
                LayerCost {
                    added: 2,
                    changed: 1,
                    deleted: 2,
                    wasted: 12 + 7
                },
                LayerCost {
                    added: 0,
                    changed: 1,
                    deleted: 2,
                    wasted: 0
                },
            ]
        );
        let pairs: Vec<(usize, usize, Removal, u64, u64)> = cost
            .waste
            .iter()
            .map(|w| (w.added_in, w.removed_in, w.how, w.bytes, w.files))
            .collect();
        assert_eq!(
            pairs,
            [
                (0, 2, Removal::Deleted, 1000, 1),
                (0, 1, Removal::Deleted, 70, 2),
                (1, 2, Removal::Deleted, 12, 1),
                (0, 1, Removal::Overwritten, 10, 1),
                (1, 2, Removal::Overwritten, 7, 1),
            ]
        );
    }

    #[test]
    fn a_directory_replaced_by_a_file_wastes_all_below_it() {
        let base = layer(&[
            ("d", 0, Dir),
            ("d/x", 4, File),
            ("d/y", 0, Dir),
            ("d/y/z", 6, File),
        ]);
        let top = layer(&[("d", 3, File), ("dd", 0, Whiteout)]);
        let cost = cost(&[Some(&base), None, Some(&top)]);
        assert_eq!(cost.layers[0].wasted, 10);
        assert_eq!(cost.layers[2].deleted, 2);
        assert_eq!(cost.layers[2].added, 1);
        assert_eq!(cost.layers[1], LayerCost::default());
    }

    /// The merge meets paths that sort between a directory and its contents (`d-1`,
    /// `d.txt` come after `d`, before `d/x`): removals through `d` skip them.
    #[test]
    fn removals_through_a_directory_reach_only_what_is_below_it() {
        let base = layer(&[
            ("d", 0, Dir),
            ("d-1", 1, File),
            ("d.txt", 2, File),
            ("d/x", 4, File),
            ("d/y", 0, Dir),
            ("d/y/z", 8, File),
        ]);
        let file = layer(&[("d", 3, File)]);
        let dir = layer(&[("d", 0, Dir), ("d/x", 5, File)]);
        let gone = layer(&[("d", 0, Whiteout)]);
        let cost = cost(&[Some(&base), Some(&file), Some(&dir), Some(&gone)]);
        let counts: Vec<(u64, u64, u64, u64)> = cost
            .layers
            .iter()
            .map(|c| (c.added, c.changed, c.deleted, c.wasted))
            .collect();
        assert_eq!(
            counts,
            [(4, 0, 0, 12), (1, 0, 2, 3), (1, 0, 1, 5), (0, 0, 1, 0)]
        );
        let pairs: Vec<(usize, usize, u64, u64)> = cost
            .waste
            .iter()
            .map(|w| (w.added_in, w.removed_in, w.bytes, w.files))
            .collect();
        assert_eq!(pairs, [(0, 1, 12, 2), (2, 3, 5, 1), (1, 2, 3, 1)]);
    }

    #[test]
    #[ignore = "needs root (mknod of a whiteout, trusted.* xattrs)"]
    fn scan_reads_overlay_whiteouts_opaque_dirs_and_hard_links() {
        crate::layer::testutil::needs_root();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("opq/sub")).unwrap();
        rustix::fs::setxattr(
            root.join("opq"),
            crate::layer::opaque_xattr(),
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        fs::write(root.join("opq/sub/f"), vec![1u8; 33]).unwrap();
        fs::write(root.join("b"), vec![1u8; 100]).unwrap();
        fs::hard_link(root.join("b"), root.join("a")).unwrap();
        std::os::unix::fs::symlink("b", root.join("s")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .unwrap();
        let files = LayerFiles::scan(root).unwrap();
        let listing: Vec<(String, u64, FileKind)> = files
            .entries
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.path).into_owned(),
                    e.size,
                    e.kind,
                )
            })
            .collect();
        let expected = [
            ("a", 100, File),
            ("b", 0, HardLink),
            ("gone", 0, Whiteout),
            ("opq", 0, OpaqueDir),
            ("opq/sub", 0, Dir),
            ("opq/sub/f", 33, File),
            ("s", 0, Symlink),
        ]
        .map(|(p, s, k)| (p.to_string(), s, k));
        assert_eq!(listing, expected);
        assert_eq!(files.stats().bytes, 133);
        assert_eq!(
            LayerFiles::scan(&root.join("missing")).unwrap(),
            LayerFiles::default()
        );
    }
}
