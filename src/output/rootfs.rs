//! The image's merged root filesystem, from the store's extracted layers
//! (layers/<chain>/diff, overlay format): applied bottom up, a char device 0/0 deletes the
//! path below it, a directory marked opaque hides everything below it in lower layers.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::OutputError;
use crate::image::Digest;
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
            if is_opaque(&source) {
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

fn is_opaque(path: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| {
            let mut buf = [0u8; 8];
            matches!(rustix::fs::lgetxattr(path, *name, &mut buf[..]), Ok(n) if buf[..n] == *b"y")
        })
}

/// The xattrs that belong in an image (design.md "Layers"): `security.capability` and `user.*`.
fn image_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 64 * 1024];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if !(name == "security.capability" || name.starts_with("user."))
            || name.starts_with("user.overlay.")
        {
            continue;
        }
        let mut value = vec![0u8; 64 * 1024];
        if let Ok(len) = rustix::fs::lgetxattr(path, name, &mut value[..]) {
            value.truncate(len);
            out.push((name.to_string(), value));
        }
    }
    out.sort();
    out
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
        for (name, value) in image_xattrs(&e.source) {
            // Unprivileged or on a filesystem without xattrs: keep going without them.
            let _ = rustix::fs::lsetxattr(
                &dest,
                name.as_str(),
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

/// Write the merged tree as one tar: entries sorted, numeric uid/gid, no user names, PAX
/// xattrs, hard links as link entries.
pub(super) fn write_tar(entries: &[MergedEntry], w: &mut dyn Write) -> Result<(), OutputError> {
    let out = "<rootfs tar>";
    let mut builder = tar::Builder::new(w);
    builder.sparse(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for e in entries {
        let md = fs::symlink_metadata(&e.source).map_err(OutputError::io("reading", &e.source))?;
        let ft = md.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(md.uid() as u64);
        h.set_gid(md.gid() as u64);
        h.set_mtime(md.mtime().max(0) as u64);
        h.set_size(0);
        let xattrs = image_xattrs(&e.source);
        if !xattrs.is_empty() {
            let mut records = Vec::new();
            for (k, v) in &xattrs {
                pax_record(&mut records, &format!("SCHILY.xattr.{k}"), v);
            }
            let mut x = tar::Header::new_ustar();
            x.set_entry_type(tar::EntryType::XHeader);
            x.set_mode(0o644);
            x.set_mtime(md.mtime().max(0) as u64);
            x.set_size(records.len() as u64);
            builder
                .append_data(&mut x, "././@PaxHeader", &records[..])
                .map_err(OutputError::io("writing", out))?;
        }
        let res = if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            builder.append_data(&mut h, &e.path, io::empty())
        } else if ft.is_file() {
            match links.get(&(md.dev(), md.ino())) {
                Some(first) => {
                    h.set_entry_type(tar::EntryType::Link);
                    builder.append_link(&mut h, &e.path, first)
                }
                None => {
                    if md.nlink() > 1 {
                        links.insert((md.dev(), md.ino()), e.path.clone());
                    }
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(md.len());
                    let f =
                        fs::File::open(&e.source).map_err(OutputError::io("reading", &e.source))?;
                    builder.append_data(&mut h, &e.path, io::Read::take(f, md.len()))
                }
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&e.source).map_err(OutputError::io("reading", &e.source))?;
            h.set_entry_type(tar::EntryType::Symlink);
            builder.append_link(&mut h, &e.path, target)
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            let rdev = md.rdev();
            h.set_device_major(nix::sys::stat::major(rdev) as u32)
                .and_then(|_| h.set_device_minor(nix::sys::stat::minor(rdev) as u32))
                .and_then(|_| builder.append_data(&mut h, &e.path, io::empty()))
        } else {
            continue;
        };
        res.map_err(OutputError::io("writing", out))?;
    }
    builder
        .into_inner()
        .and_then(|w| w.flush())
        .map_err(OutputError::io("writing", out))
}

/// One PAX record: "<len> <key>=<value>\n", where len counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}
