//! What a layer holds and what it costs: the path listing of an extracted layer (overlay
//! format, design.md "Layers"), its statistics, and the bytes a later layer deletes or
//! overwrites ("wasted", as dive counts them) across an image's layers.
//!
//! The listing is made from a layer's diff dir with metadata calls only (no file is read),
//! and kept beside its meta.json in a small binary file ([`LayerFiles::encode`]), so
//! `rbuild history` never walks or rereads a layer that has a listing.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

impl LayerFiles {
    /// List the extracted layer `dir` (overlay format: whiteouts are char devices 0/0,
    /// opaque directories carry an opaque xattr), reading metadata only. A missing `dir`
    /// is an empty layer.
    pub fn scan(dir: &Path) -> Result<LayerFiles, LayerError> {
        let mut entries = Vec::new();
        // (dev, ino) of multiply-linked files -> index of the first path seen.
        let mut links: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            let abs = dir.join(&rel_dir);
            let listing = match fs::read_dir(&abs) {
                Ok(l) => l,
                Err(e) if e.kind() == io::ErrorKind::NotFound && rel_dir.as_os_str().is_empty() => {
                    return Ok(LayerFiles::default())
                }
                Err(e) => return Err(LayerError::io("reading directory", &abs, e)),
            };
            for entry in listing {
                let entry = entry.map_err(|e| LayerError::io("reading directory", &abs, e))?;
                let rel = rel_dir.join(entry.file_name());
                // DirEntry::metadata does not follow symlinks.
                let md = entry
                    .metadata()
                    .map_err(|e| LayerError::io("inspecting", dir.join(&rel), e))?;
                let ft = md.file_type();
                let (kind, size) = if ft.is_dir() {
                    stack.push(rel.clone());
                    let opaque = is_opaque(&dir.join(&rel));
                    (
                        if opaque {
                            FileKind::OpaqueDir
                        } else {
                            FileKind::Dir
                        },
                        0,
                    )
                } else if ft.is_file() {
                    (FileKind::File, md.len())
                } else if ft.is_symlink() {
                    (FileKind::Symlink, 0)
                } else if ft.is_char_device() && md.rdev() == 0 {
                    (FileKind::Whiteout, 0)
                } else if ft.is_socket() {
                    // Not in the tar either (layer::snapshot skips sockets).
                    continue;
                } else {
                    (FileKind::Other, 0)
                };
                if kind == FileKind::File && md.nlink() > 1 {
                    links
                        .entry((md.dev(), md.ino()))
                        .or_default()
                        .push(entries.len());
                }
                entries.push(FileEntry {
                    path: rel.as_os_str().as_bytes().to_vec(),
                    size,
                    kind,
                });
            }
        }
        // The data of a multiply-linked file goes with its first path in byte order, as in
        // the tar layer::snapshot writes.
        for group in links.values().filter(|g| g.len() > 1) {
            let first = *group
                .iter()
                .min_by(|a, b| entries[**a].path.cmp(&entries[**b].path))
                .expect("a group has members");
            for &i in group.iter().filter(|&&i| i != first) {
                entries[i].kind = FileKind::HardLink;
                entries[i].size = 0;
            }
        }
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(LayerFiles { entries })
    }

    /// The layer's statistics.
    pub fn stats(&self) -> LayerStats {
        let mut s = LayerStats::default();
        let mut files: Vec<&FileEntry> = Vec::new();
        for e in &self.entries {
            match e.kind {
                FileKind::File | FileKind::HardLink => {
                    s.files += 1;
                    s.bytes += e.size;
                    files.push(e);
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
        }
        files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
        s.largest = files
            .into_iter()
            .filter(|e| e.size > 0)
            .take(LARGEST)
            .map(|e| LargeFile {
                path: String::from_utf8_lossy(&e.path).into_owned(),
                size: e.size,
            })
            .collect();
        s
    }

    /// The binary listing kept beside meta.json: `RBFILES1`, the entry count (u64), then per
    /// entry its kind (u8), size (u64), path length (u32) and path bytes, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let paths: usize = self.entries.iter().map(|e| e.path.len() + 13).sum();
        let mut out = Vec::with_capacity(16 + paths);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.push(e.kind.code());
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.path);
        }
        out
    }

    /// Read what [`LayerFiles::encode`] wrote; `None` for anything else (a torn or foreign
    /// file: the caller lists the layer again).
    pub fn decode(bytes: &[u8]) -> Option<LayerFiles> {
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        let (count, mut rest) = take_u64(rest)?;
        // Each entry takes at least 13 bytes: a bogus count cannot reserve much.
        let mut entries = Vec::with_capacity((count as usize).min(rest.len() / 13));
        for _ in 0..count {
            let (&code, r) = rest.split_first()?;
            let (size, r) = take_u64(r)?;
            let (len, r) = r.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            if r.len() < len {
                return None;
            }
            let (path, r) = r.split_at(len);
            entries.push(FileEntry {
                path: path.to_vec(),
                size,
                kind: FileKind::from_code(code)?,
            });
            rest = r;
        }
        rest.is_empty().then_some(LayerFiles { entries })
    }
}

fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
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

/// Cost the layers of an image, bottom first. A layer whose listing is unknown (`None`: not
/// extracted) counts as empty.
pub fn image_cost(layers: &[Option<&LayerFiles>]) -> ImageCost {
    let mut costs = vec![LayerCost::default(); layers.len()];
    let mut pairs: BTreeMap<(usize, usize, Removal), (u64, u64)> = BTreeMap::new();
    let mut visible: BTreeMap<Vec<u8>, Visible> = BTreeMap::new();
    let mut kill = |costs: &mut Vec<LayerCost>, v: Visible, by: usize, how: Removal| {
        if v.dir {
            return;
        }
        costs[v.layer].wasted += v.size;
        let counted = pairs.entry((v.layer, by, how)).or_default();
        counted.0 += v.size;
        counted.1 += 1;
    };
    for (l, files) in layers.iter().enumerate() {
        let Some(files) = files else { continue };
        for e in &files.entries {
            let lower = |v: &Visible| v.layer < l;
            match e.kind {
                FileKind::Whiteout => {
                    let removed = remove_tree(&mut visible, &e.path, true, lower);
                    costs[l].deleted += removed.iter().filter(|v| !v.dir).count() as u64;
                    for v in removed {
                        kill(&mut costs, v, l, Removal::Deleted);
                    }
                }
                FileKind::Dir | FileKind::OpaqueDir => {
                    let mut removed = Vec::new();
                    if visible.get(&e.path).is_some_and(|v| !v.dir && v.layer < l) {
                        removed.extend(visible.remove(&e.path));
                    }
                    if e.kind == FileKind::OpaqueDir {
                        removed.extend(remove_tree(&mut visible, &e.path, false, lower));
                    }
                    costs[l].deleted += removed.iter().filter(|v| !v.dir).count() as u64;
                    for v in removed {
                        kill(&mut costs, v, l, Removal::Deleted);
                    }
                    visible.insert(
                        e.path.clone(),
                        Visible {
                            layer: l,
                            size: 0,
                            dir: true,
                        },
                    );
                }
                FileKind::File | FileKind::HardLink | FileKind::Symlink | FileKind::Other => {
                    match visible.get(&e.path) {
                        Some(v) if v.dir => {
                            // A file in place of a directory hides all of it.
                            let removed = remove_tree(&mut visible, &e.path, true, lower);
                            costs[l].deleted += removed.iter().filter(|v| !v.dir).count() as u64;
                            for v in removed {
                                kill(&mut costs, v, l, Removal::Deleted);
                            }
                            costs[l].added += 1;
                        }
                        Some(_) => {
                            let old = visible.remove(&e.path).expect("just seen");
                            costs[l].changed += 1;
                            kill(&mut costs, old, l, Removal::Overwritten);
                        }
                        None => costs[l].added += 1,
                    }
                    visible.insert(
                        e.path.clone(),
                        Visible {
                            layer: l,
                            size: e.size,
                            dir: false,
                        },
                    );
                }
            }
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
    ImageCost {
        layers: costs,
        waste,
    }
}

/// Remove what is visible below `path` (and `path` itself when `itself`) from lower layers.
fn remove_tree(
    visible: &mut BTreeMap<Vec<u8>, Visible>,
    path: &[u8],
    itself: bool,
    lower: impl Fn(&Visible) -> bool,
) -> Vec<Visible> {
    let mut lo = path.to_vec();
    lo.push(b'/');
    let mut hi = path.to_vec();
    hi.push(b'/' + 1);
    let mut keys: Vec<Vec<u8>> = visible
        .range(lo..hi)
        .filter(|(_, v)| lower(v))
        .map(|(k, _)| k.clone())
        .collect();
    if itself && visible.get(path).is_some_and(&lower) {
        keys.push(path.to_vec());
    }
    keys.iter().filter_map(|k| visible.remove(k)).collect()
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
        let cost = image_cost(&[Some(&base), Some(&second), Some(&third)]);
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
        let cost = image_cost(&[Some(&base), None, Some(&top)]);
        assert_eq!(cost.layers[0].wasted, 10);
        assert_eq!(cost.layers[2].deleted, 2);
        assert_eq!(cost.layers[2].added, 1);
        assert_eq!(cost.layers[1], LayerCost::default());
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
