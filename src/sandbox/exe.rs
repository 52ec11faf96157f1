//! The executable every helper starts from, sealed so that no step can change rbuild.
//!
//! Until it calls execve, a step's process is the helper, that is rbuild's own executable.
//! `RUN ["/proc/self/exe"]` starts rbuild again inside the step, and with `LD_PRELOAD` from
//! the image, image code runs in a process whose /proc/self/exe is the host's rbuild: a
//! root step could chmod it 4755, give it file capabilities, or write it once the process
//! has exited (runc's CVE-2019-5736). So helpers start from a read-only view of the binary:
//! a detached bind mount of that one file (open_tree(OPEN_TREE_CLONE), then
//! mount_setattr(MOUNT_ATTR_RDONLY)). It belongs to no mount namespace, is invisible on the
//! host, and goes away with its last user. Every write, chmod, chown, xattr or utimes
//! through it fails with EROFS, and a step lacks the CAP_SYS_ADMIN it would take to make it
//! writable. runc 1.2 gets the same with a detached overlayfs.
//!
//! Kernels before 5.12 have no mount_setattr. There the binary is copied into a sealed memfd
//! instead (runc's older way), which costs one copy per rbuild process.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mount::OpenTreeFlags;

use super::SandboxError;

/// The sealed executable, made from the first path asked for (the helper executable is
/// fixed for the life of the process).
static SEALED: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

/// A path that executes `exe` from its sealed view: `/proc/self/fd/N`. The fd is
/// close-on-exec; execve resolves the path before it closes it, which works for an ELF
/// executable (fexecve(3)).
pub fn sealed(exe: &Path) -> Result<PathBuf, SandboxError> {
    match SEALED.get_or_init(|| seal(exe).map_err(|e| e.to_string())) {
        Ok(fd) => Ok(PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))),
        Err(e) => Err(SandboxError::Setup(format!(
            "making a read-only view of the helper executable {}: {e}",
            exe.display()
        ))),
    }
}

fn seal(exe: &Path) -> io::Result<OwnedFd> {
    let tree = detached_readonly(exe).or_else(|e| match e.raw_os_error() {
        // Rootless: the user namespace's mount namespace is a copy, and `/proc/self/exe`
        // still names the file on the mount rbuild was started from, which open_tree cannot
        // clone from here (EINVAL). The same file by its path can be, if it is that file.
        Some(libc::EINVAL) => same_file_by_path(exe).ok_or(e),
        _ => Err(e),
    });
    tree.or_else(|e| match e.raw_os_error() {
        // No mount API (before 5.12), or not allowed to use it.
        Some(libc::ENOSYS | libc::EPERM | libc::EINVAL) => sealed_memfd(exe),
        _ => Err(e),
    })
}

/// [`detached_readonly`] of the path `link` (`/proc/self/exe`) points to, if what it
/// opens there is the very file `link` names (same device and inode).
fn same_file_by_path(link: &Path) -> Option<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::read_link(link).ok()?;
    let tree = detached_readonly(&path).ok()?;
    let want = std::fs::metadata(link).ok()?;
    let got = rustix::fs::fstat(&tree).ok()?;
    (got.st_dev == want.dev() && got.st_ino == want.ino()).then_some(tree)
}

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
/// The same number on every architecture (the new syscalls share one table).
const SYS_MOUNT_SETATTR: libc::c_long = 442;

fn detached_readonly(exe: &Path) -> io::Result<OwnedFd> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        exe,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `size` bytes of `attr`, which lives across the call; the
    // empty path is a NUL-terminated static string.
    let r = unsafe {
        libc::syscall(
            SYS_MOUNT_SETATTR,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

fn sealed_memfd(exe: &Path) -> io::Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    // MFD_EXEC (6.3+) keeps the memfd executable where vm.memfd_noexec asks for noexec by
    // default; older kernels refuse the flag.
    let fd = rustix::fs::memfd_create("rbuild", flags | MemfdFlags::EXEC)
        .or_else(|_| rustix::fs::memfd_create("rbuild", flags))?;
    let mut src = std::fs::File::open(exe)?;
    let mut dst = std::fs::File::from(fd);
    io::copy(&mut src, &mut dst)?;
    rustix::fs::fcntl_add_seals(
        &dst,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(dst.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn assert_unchangeable(fd: &OwnedFd, errno: i32) {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        // A read-only mount refuses the open; a sealed memfd the write.
        let refused = match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(mut f) => f.write_all(b"x").unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(refused.raw_os_error(), Some(errno), "writing");
        let f = std::fs::File::open(&path).unwrap();
        let chmod = f.set_permissions(std::fs::Permissions::from_mode(0o4755));
        if errno == libc::EROFS {
            assert_eq!(chmod.unwrap_err().raw_os_error(), Some(libc::EROFS));
        }
        let xattr = rustix::fs::fsetxattr(
            &f,
            "security.capability",
            b"\x01\x00\x00\x02\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00",
            rustix::fs::XattrFlags::empty(),
        );
        if errno == libc::EROFS {
            assert_eq!(xattr.unwrap_err(), rustix::io::Errno::ROFS);
        }
    }

    #[test]
    fn the_detached_view_refuses_every_change() {
        if !crate::layer::testutil::require(
            nix::unistd::geteuid().is_root(),
            "root (open_tree needs CAP_SYS_ADMIN)",
        ) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("exe");
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let fd = detached_readonly(&exe).unwrap();
        assert_unchangeable(&fd, libc::EROFS);
        // The original is untouched and still writable by its owner.
        let m = std::fs::metadata(&exe).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&exe)
            .unwrap()
            .write_all(b"# still mine\n")
            .unwrap();
    }

    #[test]
    fn the_memfd_copy_is_sealed() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("exe");
        std::fs::write(&exe, b"\x7fELF not really").unwrap();
        let fd = sealed_memfd(&exe).unwrap();
        assert_eq!(
            std::fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap(),
            b"\x7fELF not really"
        );
        assert_unchangeable(&fd, libc::EPERM);
    }
}
