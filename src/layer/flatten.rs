//! Flatten: layer directories in overlay format -> one directory holding what overlayfs
//! shows when they are stacked, for stacks deeper than one overlay mount takes (issue 23).
//!
//! The layers are merged bottom first, as overlay reads them top down:
//! - a whiteout (char device 0/0) removes what the layers below left at its path, and is
//!   not kept (the flattened directory is the bottom of any stack it is used in);
//! - an opaque directory (`trusted.overlay.opaque` or `user.overlay.opaque` = `y`) empties
//!   what the layers below left in it; the marker is not kept either;
//! - a directory takes the owner, mode, times and xattrs of the top-most layer that has it
//!   (an overlay upper dir holds a full copy-up of every directory it changes);
//! - every other entry is a hard link to the layer's own inode. A step can never change a
//!   lower inode through overlay (any change copies the file up, and the overlay is mounted
//!   with `metacopy=off`), so sharing inodes with the layers is safe, and flattening costs
//!   one link per file, not a copy of its data. A file whose inode has the filesystem's
//!   most links (EMLINK) is copied instead.
//!
//! Memory grows with the depth of the tree (one open `read_dir` per level), not with the
//! number of entries.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Timestamps, XattrFlags, CWD};

use crate::layer::{is_opaque, keep_xattr, LayerError};

/// What [`flatten`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlattenStats {
    /// Entries read from the layers (whiteouts included).
    pub entries: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
    /// Opaque directories applied.
    pub opaque_dirs: u64,
    /// Files copied because their inode had too many links.
    pub copied: u64,
}

/// Merge `layers` (overlay-format directories, bottom first) into `dest`, an existing empty
/// directory.
pub fn flatten(layers: &[PathBuf], dest: &Path) -> Result<FlattenStats, LayerError> {
    let mut stats = FlattenStats::default();
    for layer in layers {
        merge_dir(layer, dest, &mut stats)?;
        set_dir_meta(layer, dest)?;
    }
    Ok(stats)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |e| LayerError::io(op, path, e)
}

/// Merge the contents of the layer directory `src` into `dest` (both directories).
fn merge_dir(src: &Path, dest: &Path, stats: &mut FlattenStats) -> Result<(), LayerError> {
    for entry in fs::read_dir(src).map_err(io_err("listing", src))? {
        let entry = entry.map_err(io_err("listing", src))?;
        let name = entry.file_name();
        let from = entry.path();
        let to = dest.join(&name);
        let md = fs::symlink_metadata(&from).map_err(io_err("reading", &from))?;
        let ft = md.file_type();
        stats.entries += 1;
        if ft.is_char_device() && md.rdev() == 0 {
            remove_any(&to)?;
            stats.whiteouts += 1;
        } else if ft.is_dir() {
            match fs::symlink_metadata(&to) {
                Ok(existing) if existing.is_dir() => {
                    if is_opaque(&from) {
                        clear_dir(&to)?;
                        stats.opaque_dirs += 1;
                    }
                }
                Ok(_) => {
                    fs::remove_file(&to).map_err(io_err("removing", &to))?;
                    fs::create_dir(&to).map_err(io_err("creating directory", &to))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&to).map_err(io_err("creating directory", &to))?;
                }
                Err(e) => return Err(LayerError::io("reading", &to, e)),
            }
            merge_dir(&from, &to, stats)?;
            // After its contents: adding them changed its times.
            set_dir_meta(&from, &to)?;
        } else {
            remove_any(&to)?;
            match fs::hard_link(&from, &to) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {
                    copy_entry(&from, &to, &md)?;
                    stats.copied += 1;
                }
                Err(e) => return Err(LayerError::io("linking", &to, e)),
            }
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (nothing there is fine).
fn remove_any(path: &Path) -> Result<(), LayerError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path).map_err(io_err("removing", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("removing", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LayerError::io("reading", path, e)),
    }
}

fn clear_dir(dir: &Path) -> Result<(), LayerError> {
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        remove_any(&entry.path())?;
    }
    Ok(())
}

/// The xattrs of `path` that layers keep, as (name, value).
fn kept_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, LayerError> {
    let err = |e: rustix::io::Errno| LayerError::io("reading xattrs of", path, e.into());
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !keep_xattr(name) {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, name, &mut value) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(err(e)),
            }
        };
        value.truncate(n);
        out.push((name.to_os_string(), value));
    }
    Ok(out)
}

/// Gives `to` (a directory, or a copied file) the kept xattrs of `from`, and only those.
fn copy_xattrs(from: &Path, to: &Path) -> Result<(), LayerError> {
    let want = kept_xattrs(from)?;
    for (name, _) in kept_xattrs(to)? {
        if !want.iter().any(|(n, _)| *n == name) {
            rustix::fs::lremovexattr(to, &name)
                .map_err(|e| LayerError::io("removing xattr of", to, e.into()))?;
        }
    }
    for (name, value) in &want {
        rustix::fs::lsetxattr(to, name, value, XattrFlags::empty())
            .map_err(|e| LayerError::io("setting xattr of", to, e.into()))?;
    }
    Ok(())
}

/// Owner, mode, xattrs and times of `from` onto `to`: what a directory shows in overlay is
/// its top-most layer's copy.
fn set_dir_meta(from: &Path, to: &Path) -> Result<(), LayerError> {
    let md = fs::symlink_metadata(from).map_err(io_err("reading", from))?;
    set_meta(&md, from, to)
}

/// Owner, mode, xattrs and times of `md` (read from `from`) onto `to`, not a symlink.
fn set_meta(md: &fs::Metadata, from: &Path, to: &Path) -> Result<(), LayerError> {
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))
        .map_err(io_err("changing owner of", to))?;
    // After chown, which clears setuid/setgid.
    rustix::fs::chmod(to, rustix::fs::Mode::from_raw_mode(md.mode() & 0o7777))
        .map_err(|e| LayerError::io("changing mode of", to, e.into()))?;
    copy_xattrs(from, to)?;
    set_times(md, to, AtFlags::empty())
}

fn set_times(md: &fs::Metadata, to: &Path, flags: AtFlags) -> Result<(), LayerError> {
    let ts = |sec: i64, nsec: i64| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let times = Timestamps {
        last_access: ts(md.atime(), md.atime_nsec()),
        last_modification: ts(md.mtime(), md.mtime_nsec()),
    };
    rustix::fs::utimensat(CWD, to, &times, flags)
        .map_err(|e| LayerError::io("setting times of", to, e.into()))
}

/// A copy of `from` at `to`, for an inode that cannot take another link: regular files and
/// symlinks (the entries that share inodes across many layers in practice).
fn copy_entry(from: &Path, to: &Path, md: &fs::Metadata) -> Result<(), LayerError> {
    let ft = md.file_type();
    if ft.is_file() {
        fs::copy(from, to).map_err(io_err("copying", from))?;
        set_meta(md, from, to)
    } else if ft.is_symlink() {
        let target = fs::read_link(from).map_err(io_err("reading", from))?;
        std::os::unix::fs::symlink(&target, to).map_err(io_err("creating symlink", to))?;
        std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))
            .map_err(io_err("changing owner of", to))?;
        set_times(md, to, AtFlags::SYMLINK_NOFOLLOW)
    } else {
        Err(LayerError::io(
            "linking",
            to,
            io::Error::from_raw_os_error(libc::EMLINK),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::userns::OPAQUE_XATTRS;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, body: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
    }

    fn whiteout(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        rustix::fs::mknodat(
            CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
    }

    /// Every path under `root` with its kind and, for files, content, sorted.
    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let md = fs::symlink_metadata(&p).unwrap();
                if md.is_dir() {
                    out.push(format!("{rel}/"));
                    stack.push(p);
                } else if md.file_type().is_symlink() {
                    out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
                } else {
                    out.push(format!("{rel} = {}", fs::read_to_string(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    #[ignore = "needs root"]
    fn whiteouts_and_opaque_dirs_are_applied_and_files_linked() {
        crate::layer::testutil::needs_root();
        let t = tempfile::tempdir().unwrap();
        let l1 = t.path().join("l1");
        let l2 = t.path().join("l2");
        let l3 = t.path().join("l3");
        write(&l1.join("keep"), "1");
        write(&l1.join("gone"), "1");
        write(&l1.join("d/old"), "1");
        write(&l1.join("replaced/x"), "1");
        write(&l1.join("e/old"), "1");
        std::os::unix::fs::symlink("keep", l1.join("link")).unwrap();
        // Layer 2 deletes `gone`, makes `d` opaque with a new file, turns a dir into a file.
        whiteout(&l2.join("gone"));
        write(&l2.join("d/new"), "2");
        rustix::fs::setxattr(
            l2.join("d").as_path(),
            "trusted.overlay.opaque",
            b"y",
            XattrFlags::empty(),
        )
        .unwrap();
        write(&l2.join("replaced"), "2");
        // A rootless layer marks opaque dirs with the user namespace.
        write(&l2.join("e/new"), "2");
        rustix::fs::setxattr(
            l2.join("e").as_path(),
            "user.overlay.opaque",
            b"y",
            XattrFlags::empty(),
        )
        .unwrap();
        // Layer 3 brings `gone` back and changes the mode of `d`.
        write(&l3.join("gone"), "3");
        fs::create_dir(l3.join("d")).unwrap();
        fs::set_permissions(l3.join("d"), fs::Permissions::from_mode(0o711)).unwrap();
        let dest = t.path().join("flat");
        fs::create_dir(&dest).unwrap();
        let stats = flatten(&[l1.clone(), l2, l3.clone()], &dest).unwrap();
        assert_eq!(
            listing(&dest),
            [
                "d/",
                "d/new = 2",
                "e/",
                "e/new = 2",
                "gone = 3",
                "keep = 1",
                "link -> keep",
                "replaced = 2",
            ]
        );
        assert_eq!(stats.whiteouts, 1);
        assert_eq!(stats.opaque_dirs, 2);
        let md = fs::metadata(dest.join("d")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o711);
        for dir in ["d", "e"] {
            for x in OPAQUE_XATTRS {
                assert!(rustix::fs::getxattr(dest.join(dir).as_path(), x, &mut [0u8; 4]).is_err());
            }
        }
        // Files are the layers' own inodes.
        let ino = |p: PathBuf| fs::symlink_metadata(p).unwrap().ino();
        assert_eq!(ino(dest.join("keep")), ino(l1.join("keep")));
        assert_eq!(ino(dest.join("gone")), ino(l3.join("gone")));
    }
}
