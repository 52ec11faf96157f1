//! Test helpers: directory trees and tars turned into comparable text listings (buildah's
//! conformance `FSHeader` idea), and small tree builders.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};

use crate::image::Digest;

/// Whether a prerequisite of a test holds. In CI (CI=true) a missing one fails the test;
/// elsewhere the test is skipped with a message (tests/support's `require`, for unit tests).
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("prerequisite missing in CI: {what}");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// For unit tests marked `#[ignore = "needs root"]` (scripts/test.sh runs them with
/// `--include-ignored`): fail at once, saying why, instead of on the first EPERM.
pub fn needs_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (chown, mknod, xattrs): run it as root, e.g. scripts/test.sh"
    );
}

/// All xattrs of `path` (not following symlinks), `name=value` joined by `,`.
pub fn xattrs(path: &Path) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut buf[..]) {
        Ok(n) => n,
        Err(_) => return String::new(),
    };
    let mut out = BTreeMap::new();
    for name in buf[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 64 * 1024];
        let m = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut v[..]).unwrap();
        out.insert(
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(&v[..m]).into_owned(),
        );
    }
    out.iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One line per path below `root` (sorted): type, path, link target, size, mode, owner,
/// device, link count for files, mtime (with `mtimes`), xattrs and a content hash.
pub fn list_dir(root: &Path, mtimes: bool) -> String {
    let mut lines = Vec::new();
    walk(root, root, mtimes, &mut lines);
    lines.sort();
    lines.join("\n")
}

fn walk(root: &Path, dir: &Path, mtimes: bool, lines: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let (kind, extra) = if ft.is_dir() {
            ("dir", String::new())
        } else if ft.is_file() {
            let data = fs::read(&path).unwrap();
            (
                "file",
                format!(
                    "size={} nlink={} sha={}",
                    data.len(),
                    meta.nlink(),
                    &Digest::of(&data).hex()[..12]
                ),
            )
        } else if ft.is_symlink() {
            (
                "symlink",
                format!("-> {}", fs::read_link(&path).unwrap().display()),
            )
        } else if ft.is_char_device() || ft.is_block_device() {
            let rdev = meta.rdev();
            (
                if ft.is_char_device() { "char" } else { "block" },
                format!(
                    "dev={},{}",
                    rustix::fs::major(rdev),
                    rustix::fs::minor(rdev)
                ),
            )
        } else if ft.is_fifo() {
            ("fifo", String::new())
        } else {
            ("other", String::new())
        };
        let mtime = if mtimes {
            format!(" mtime={}", meta.mtime())
        } else {
            String::new()
        };
        lines.push(format!(
            "{kind} {rel} {extra} mode={:o} {}:{}{mtime} xattrs[{}]",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            xattrs(&path)
        ));
        if ft.is_dir() {
            walk(root, &path, mtimes, lines);
        }
    }
}

/// One line per tar entry, in archive order.
pub fn list_tar(tar_bytes: &[u8]) -> String {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut lines = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| format!(" -> {}", String::from_utf8_lossy(&l)))
            .unwrap_or_default();
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push(format!(
                        "{name}={:?}",
                        String::from_utf8_lossy(ext.value_bytes())
                    ));
                }
            }
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        let dev = match h.entry_type() {
            tar::EntryType::Char | tar::EntryType::Block => format!(
                " dev={},{}",
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap()
            ),
            _ => String::new(),
        };
        let sha = if data.is_empty() {
            String::new()
        } else {
            format!(" sha={}", &Digest::of(&data).hex()[..12])
        };
        assert!(h.username_bytes().unwrap_or_default().is_empty());
        assert!(h.groupname_bytes().unwrap_or_default().is_empty());
        lines.push(format!(
            "{:?} {path}{link} size={} mode={:o} {}:{} mtime={}{dev}{sha} xattrs[{}]",
            h.entry_type(),
            data.len(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap(),
            xattrs.join(",")
        ));
    }
    lines.join("\n")
}

/// Set the mtime of `path` without following a symlink.
pub fn set_mtime(path: &Path, secs: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Set an xattr on `path` (not following symlinks).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// `mknod` of a char (`c`), block (`b`) device or fifo (`p`).
pub fn mknod(path: &Path, kind: char, major: u32, minor: u32, mode: u32) {
    let ft = match kind {
        'c' => rustix::fs::FileType::CharacterDevice,
        'b' => rustix::fs::FileType::BlockDevice,
        _ => rustix::fs::FileType::Fifo,
    };
    rustix::fs::mknodat(
        CWD,
        path,
        ft,
        rustix::fs::Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(mode)).unwrap();
}

/// Write a file and set its mode.
pub fn write_file(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap();
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(mode)).unwrap();
}

/// Set every mtime below `root` (and root) to `secs`, deepest first.
pub fn set_all_mtimes(root: &Path, secs: i64) {
    for entry in fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            set_all_mtimes(&path, secs);
        }
        set_mtime(&path, secs);
    }
    set_mtime(root, secs);
}

/// Read the whole of `r`.
pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// A tree with every kind of thing a layer carries: special mode bits, owners (one too big
/// for ustar), long and unicode names, a long symlink target, hard links, devices, a fifo,
/// kept xattrs, an overlay whiteout and an opaque directory. Every mtime is 1_000_000.
pub fn rich_tree(root: &Path) {
    use std::os::unix::fs::{chown, symlink};
    fs::create_dir_all(root.join("bin")).unwrap();
    write_file(&root.join("bin/su"), b"setuid binary", 0o4755);
    write_file(&root.join("bin/wall"), b"setgid binary", 0o2755);
    write_file(&root.join("bin/ping"), b"cap binary", 0o755);
    // VFS_CAP_REVISION_2, cap_net_raw effective+permitted.
    let cap: [u8; 20] = [
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    set_xattr(&root.join("bin/ping"), "security.capability", &cap);
    fs::create_dir(root.join("tmp")).unwrap();
    rustix::fs::chmod(root.join("tmp"), rustix::fs::Mode::from_raw_mode(0o1777)).unwrap();
    fs::create_dir(root.join("home")).unwrap();
    fs::create_dir(root.join("home/user")).unwrap();
    write_file(&root.join("home/user/notes"), b"hello\n", 0o640);
    chown(root.join("home/user"), Some(1000), Some(1000)).unwrap();
    chown(root.join("home/user/notes"), Some(1000), Some(100)).unwrap();
    write_file(&root.join("home/big-ids"), b"", 0o600);
    chown(root.join("home/big-ids"), Some(3_000_000), Some(2_100_000)).unwrap();
    set_xattr(&root.join("home/user/notes"), "user.comment", b"kept");
    let long_dir = root.join("d".repeat(60)).join("e".repeat(60));
    fs::create_dir_all(&long_dir).unwrap();
    write_file(&long_dir.join("f".repeat(50)), b"long", 0o644);
    write_file(&root.join("ünïcødé-名前"), b"unicode", 0o644);
    symlink("t".repeat(150), root.join("long-link")).unwrap();
    symlink("../bin/su", root.join("home/su-link")).unwrap();
    write_file(&root.join("hard-a"), b"shared inode", 0o644);
    fs::hard_link(root.join("hard-a"), root.join("hard-b")).unwrap();
    fs::create_dir(root.join("dev")).unwrap();
    mknod(&root.join("dev/null"), 'c', 1, 3, 0o666);
    mknod(&root.join("dev/loop0"), 'b', 7, 0, 0o660);
    mknod(&root.join("dev/fifo"), 'p', 0, 0, 0o644);
    // Overlay's own markers.
    mknod(&root.join("home/deleted"), 'c', 0, 0, 0);
    fs::create_dir(root.join("opaque")).unwrap();
    write_file(&root.join("opaque/new"), b"new", 0o644);
    set_xattr(&root.join("opaque"), "trusted.overlay.opaque", b"y");
    set_all_mtimes(root, 1_000_000);
}
