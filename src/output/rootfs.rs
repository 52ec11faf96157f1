//! The image's merged root filesystem, from the store's extracted layers
//! (layers/<chain>/diff, overlay format): applied bottom up, a char device 0/0 deletes the
//! path below it, a directory marked opaque hides everything below it in lower layers.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::OutputError;
use crate::image::Digest;
use crate::layer::tar::{read_xattrs, Entry, Writer, Xattrs};
use crate::store::Store;

/// One path of the merged tree and the layer file that provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedEntry {
    /// Relative to the image root, e.g. `etc/passwd`.
    pub path: PathBuf,
    /// The file in a layer's diff dir.
    pub source: PathBuf,
}

/// The merged tree of `chains` (bottom first), parents before children, sorted.
pub fn merged_entries(store: &Store, chains: &[Digest]) -> Result<Vec<MergedEntry>, OutputError> {
    // Path's Ord compares component by component, so a directory's descendants directly
    // follow it: subtree removal is a range scan.
    let mut tree: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for chain in chains {
        let layer = store
            .layer(chain)
            .filter(|l| l.diff.is_dir())
            .ok_or_else(|| OutputError::LayerMissing {
                chain: chain.clone(),
            })?;
        apply_layer(&layer.diff, Path::new(""), &mut tree)?;
    }
    Ok(tree
        .into_iter()
        .map(|(path, source)| MergedEntry { path, source })
        .collect())
}

fn apply_layer(
    root: &Path,
    rel: &Path,
    tree: &mut BTreeMap<PathBuf, PathBuf>,
) -> Result<(), OutputError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(OutputError::io("listing layer dir", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(OutputError::io("listing layer dir", &dir))?;
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let source = root.join(&path);
        let md = fs::symlink_metadata(&source).map_err(OutputError::io("reading", &source))?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            remove_subtree(tree, &path, true);
        } else if ft.is_dir() {
            if crate::sandbox::userns::is_opaque(&source) {
                remove_subtree(tree, &path, false);
            }
            tree.insert(path.clone(), source);
            apply_layer(root, &path, tree)?;
        } else {
            remove_subtree(tree, &path, true);
            tree.insert(path, source);
        }
    }
    Ok(())
}

fn remove_subtree(tree: &mut BTreeMap<PathBuf, PathBuf>, path: &Path, itself: bool) {
    let doomed: Vec<PathBuf> = tree
        .range(path.to_path_buf()..)
        .take_while(|(p, _)| p.starts_with(path))
        .filter(|(p, _)| itself || p.as_path() != path)
        .map(|(p, _)| p.clone())
        .collect();
    for p in doomed {
        tree.remove(&p);
    }
}

/// The xattrs of a layer file that belong in an image: the layers' one rule
/// ([`crate::layer::tar::keep_xattr`]).
fn image_xattrs(path: &Path) -> Result<Xattrs, OutputError> {
    // The opaque marker was applied when the tree was merged; it is never copied.
    Ok(read_xattrs(path, None, b"trusted.overlay.opaque")?.0)
}

/// Copy the merged tree into `dir` (an empty directory), keeping ownership (when running as
/// root), modes, xattrs, hard links and mtimes.
pub(super) fn materialize(entries: &[MergedEntry], dir: &Path) -> Result<(), OutputError> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for e in entries {
        let dest = dir.join(&e.path);
        let md = fs::symlink_metadata(&e.source).map_err(OutputError::io("reading", &e.source))?;
        let ft = md.file_type();
        let made = if ft.is_dir() {
            fs::create_dir(&dest).map(|_| true)
        } else if ft.is_file() {
            match links.get(&(md.dev(), md.ino())) {
                Some(first) => fs::hard_link(first, &dest).map(|_| false),
                None => {
                    if md.nlink() > 1 {
                        links.insert((md.dev(), md.ino()), dest.clone());
                    }
                    fs::copy(&e.source, &dest).map(|_| true)
                }
            }
        } else if ft.is_symlink() {
            fs::read_link(&e.source)
                .and_then(|target| std::os::unix::fs::symlink(target, &dest))
                .map(|_| true)
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else {
                nix::sys::stat::SFlag::S_IFIFO
            };
            let perm = nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777);
            nix::sys::stat::mknod(&dest, kind, perm, md.rdev())
                .map(|_| true)
                .map_err(io::Error::from)
        } else {
            // Sockets have no place in an image.
            continue;
        };
        let made = made.map_err(OutputError::io("creating", &dest))?;
        if !made {
            continue;
        }
        // Ownership first: chown clears setuid/setgid bits, the chmod below restores them.
        match std::os::unix::fs::lchown(&dest, Some(md.uid()), Some(md.gid())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(OutputError::io("changing owner of", &dest)(e)),
        }
        for (name, value) in image_xattrs(&e.source)? {
            // Unprivileged or on a filesystem without xattrs: keep going without them.
            let _ = rustix::fs::lsetxattr(
                &dest,
                std::ffi::OsStr::from_bytes(&name),
                &value,
                rustix::fs::XattrFlags::empty(),
            );
        }
        if !ft.is_symlink() {
            fs::set_permissions(&dest, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(OutputError::io("setting mode of", &dest))?;
        }
    }
    // Children first, so creating entries does not bump a directory's mtime afterwards.
    for e in entries.iter().rev() {
        let dest = dir.join(&e.path);
        let md = fs::symlink_metadata(&e.source).map_err(OutputError::io("reading", &e.source))?;
        let t = nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec());
        if fs::symlink_metadata(&dest).is_ok() {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &dest,
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| OutputError::io("setting mtime of", &dest)(e.into()))?;
        }
    }
    Ok(())
}

/// Write the merged tree as one tar with the layers' encoder: entries sorted, numeric
/// uid/gid, no user names, PAX for long names and xattrs, hard links as link entries.
pub(super) fn write_tar(entries: &[MergedEntry], w: &mut dyn Write) -> Result<(), OutputError> {
    let out = "<rootfs tar>";
    let mut tar = Writer::new(w);
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for e in entries {
        let md = fs::symlink_metadata(&e.source).map_err(OutputError::io("reading", &e.source))?;
        let ft = md.file_type();
        let name = e.path.as_os_str().as_bytes().to_vec();
        let mut entry = Entry::new(Vec::new(), tar::EntryType::Regular, md.mode() & 0o7777);
        entry.uid = u64::from(md.uid());
        entry.gid = u64::from(md.gid());
        entry.mtime = md.mtime().max(0) as u64;
        entry.xattrs = image_xattrs(&e.source)?;
        let mut data = None;
        if ft.is_dir() {
            // Named without a trailing slash, as this output always wrote them.
            entry.kind = tar::EntryType::Directory;
        } else if ft.is_file() {
            match links.get(&(md.dev(), md.ino())) {
                Some(first) => {
                    entry.kind = tar::EntryType::Link;
                    entry.link = Some(first.clone());
                    entry.xattrs.clear();
                }
                None => {
                    if md.nlink() > 1 {
                        links.insert((md.dev(), md.ino()), name.clone());
                    }
                    entry.size = md.len();
                    data = Some(
                        fs::File::open(&e.source).map_err(OutputError::io("reading", &e.source))?,
                    );
                }
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&e.source).map_err(OutputError::io("reading", &e.source))?;
            entry.kind = tar::EntryType::Symlink;
            entry.link = Some(target.into_os_string().into_vec());
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            entry.kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            let rdev = md.rdev();
            entry.device = Some((rustix::fs::major(rdev), rustix::fs::minor(rdev)));
        } else {
            // Sockets have no place in an image.
            continue;
        }
        entry.name = name;
        let written = match data {
            Some(f) => tar.append(&entry, f),
            None => tar.append(&entry, io::empty()),
        };
        written.map_err(|err| match err.kind() {
            // The file shrank while it was being archived.
            io::ErrorKind::UnexpectedEof => OutputError::io("reading", &e.source)(err),
            _ => OutputError::io("writing", out)(err),
        })?;
    }
    tar.finish()
        .map(drop)
        .map_err(OutputError::io("writing", out))
}
