//! The helper's mounts: the step's overlay root, /dev, /proc and /sys, the RUN --mount
//! points (resolved beneath their sources), stubs for mountpoints, masked kernel files.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use rustix::fs::OFlags;

use super::super::root::{Created, Kind, Root};
use super::super::{Failure, FsSource, Mount, Overlay, Parent, Stub};

use super::{ctx, Res};

pub(super) fn mount_at(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Res<()> {
    ctx(
        nix::mount::mount(source, target, fstype, flags, data),
        || {
            format!(
                "mounting {} ({}) on {}",
                source.unwrap_or("-"),
                fstype.unwrap_or("bind"),
                target.display()
            )
        },
    )
}

pub(super) fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Makes every mount private and puts a tmpfs on the scratch dir, so nothing the helper
/// mounts or writes there is visible on the host or outlives the namespace.
pub(super) fn private_scratch(scratch: &Path) -> Res<()> {
    mount_at(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount_at(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=700"),
    )
}

pub(super) fn mkdir(p: &Path) -> Res<()> {
    ctx(std::fs::create_dir_all(p), || {
        format!("creating {}", p.display())
    })
}

pub(super) fn symlink(target: &Path, link: &Path) -> Res<()> {
    ctx(std::os::unix::fs::symlink(target, link), || {
        format!("linking {} -> {}", link.display(), target.display())
    })
}

/// Mounts an overlay at `target`. Each lower goes to the kernel as its own `lowerdir+`
/// (the mount API of Linux 6.8 and later), so any number of layers fits. Older kernels
/// get the lower, upper and work paths through one-character symlinks in `names` (a fresh
/// dir on the scratch tmpfs), passed relative to it in the one-page option string: one
/// symlink per lower and step, which grew with the depth of the stack (issue 23).
/// Without `upper_work` the overlay is read-only (it then needs two lowers or more).
pub(super) fn mount_overlay(
    names: &Path,
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
) -> Res<()> {
    let by_layer = match lowers {
        [] => None,
        _ => mount_overlay_by_layer(lowers, upper_work, target),
    };
    by_layer
        .unwrap_or_else(|| mount_overlay_named(names, lowers, upper_work, target))
        .map_err(|f| match f {
            Failure::Setup(m) => Failure::Setup(format!("{m} ({})", describe_layers(lowers))),
            other => other,
        })
}

/// [`mount_overlay`] through the mount API, one lower at a time. `None`: the kernel does
/// not know `lowerdir+` (before 6.8) or the mount API at all.
fn mount_overlay_by_layer(
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
) -> Option<Res<()>> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
    };
    let fail = |what: String, e: rustix::io::Errno| {
        Failure::Setup(format!(
            "mounting overlay on {}: {what}: {e}",
            target.display()
        ))
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).ok()?;
    for (i, l) in lowers.iter().enumerate() {
        match fsconfig_set_string(&fs, "lowerdir+", l) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) if i == 0 => return None,
            Err(e) => return Some(Err(fail(format!("lower {}", l.display()), e))),
        }
    }
    let mut set = Vec::new();
    if let Some((upper, work)) = upper_work {
        set.push(("upperdir", Some(upper)));
        set.push(("workdir", Some(work)));
        // No sync of the upper filesystem when the helper's namespace unmounts the overlay:
        // the executor syncs it while it hashes the snapshot (exec/executor.rs), before
        // the layer is recorded. Every kernel with `lowerdir+` (6.8) knows `volatile`
        // (5.10).
        set.push(("volatile", None));
    }
    let fixed = overlay_fixed_options(super::super::userns::in_user_namespace());
    set.extend(fixed.iter().map(|(k, v)| (*k, v.map(Path::new))));
    for (key, value) in set {
        let r = match value {
            Some(v) => fsconfig_set_string(&fs, key, v),
            None => fsconfig_set_flag(&fs, key),
        };
        if let Err(e) = r {
            return Some(Err(fail(format!("option {key}"), e)));
        }
    }
    let mounted = fsconfig_create(&fs)
        .and_then(|()| {
            fsmount(
                &fs,
                FsMountFlags::FSMOUNT_CLOEXEC,
                MountAttrFlags::MOUNT_ATTR_NODEV,
            )
        })
        .and_then(|mnt| {
            move_mount(
                &mnt,
                "",
                rustix::fs::CWD,
                target,
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
        });
    Some(mounted.map_err(|e| fail("creating the mount".into(), e)))
}

/// [`mount_overlay`] for kernels without `lowerdir+`: the paths through symlinks in `names`.
fn mount_overlay_named(
    names: &Path,
    lowers: &[PathBuf],
    upper_work: Option<(&Path, &Path)>,
    target: &Path,
) -> Res<()> {
    mkdir(names)?;
    let mut lower_names = Vec::new();
    if lowers.is_empty() {
        mkdir(&names.join("e"))?;
        lower_names.push("e".to_string());
    }
    for (i, l) in lowers.iter().enumerate() {
        let n = format!("{i:x}");
        symlink(l, &names.join(&n))?;
        lower_names.push(n);
    }
    if let Some((upper, work)) = upper_work {
        symlink(upper, &names.join("u"))?;
        symlink(work, &names.join("w"))?;
    }
    let opts = overlay_options(&lower_names, upper_work.is_some());
    // The kernel resolves relative option paths against the mounter's cwd.
    ctx(std::env::set_current_dir(names), || {
        format!("entering {}", names.display())
    })?;
    // nodev: a device node the step makes (mknod of the host disk's numbers) reaches the
    // layer, as in docker build, but cannot be opened. Docker's device cgroup does the
    // same job; a mount flag needs no cgroup.
    let mount = |opts: &str| {
        mount_at(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(opts),
        )
    };
    // `volatile` as in [`mount_overlay_by_layer`]. A kernel older than 5.10 refuses the
    // option: the overlay is mounted without it and its unmount syncs, as before, so
    // the executor's sync finds little left to write.
    let r = match upper_work {
        Some(_) => mount(&format!("{opts},volatile")).or_else(|_| mount(&opts)),
        None => mount(&opts),
    };
    ctx(std::env::set_current_dir("/"), || {
        "leaving the layer names dir".into()
    })?;
    r
}

/// The overlay mount options for the lower names (in `names`), with `u` and `w` as upper
/// and work dirs when `upper`.
fn overlay_options(lower_names: &[String], upper: bool) -> String {
    overlay_options_for(
        lower_names,
        upper,
        super::super::userns::in_user_namespace(),
    )
}

fn overlay_options_for(lower_names: &[String], upper: bool, rootless: bool) -> String {
    let mut opts = format!("lowerdir={}", lower_names.join(":"));
    if upper {
        opts.push_str(",upperdir=u,workdir=w");
    }
    for (key, value) in overlay_fixed_options(rootless) {
        opts.push(',');
        opts.push_str(key);
        if let Some(v) = value {
            opts.push('=');
            opts.push_str(v);
        }
    }
    opts
}

/// The overlay options besides the layers, as (key, value); a flag has no value.
fn overlay_fixed_options(rootless: bool) -> Vec<(&'static str, Option<&'static str>)> {
    let mut opts = vec![("index", Some("off")), ("metacopy", Some("off"))];
    // Rootless (design.md "Rootless"): overlay keeps its marks in user.overlay.* xattrs, and
    // refuses to follow redirects there (`off` still follows them).
    if rootless {
        opts.extend([("redirect_dir", Some("nofollow")), ("userxattr", None)]);
    } else {
        opts.push(("redirect_dir", Some("off")));
    }
    opts
}

/// The layers of a failed overlay mount, for its error: how many, and the top-most and
/// bottom-most paths. A deep stack's every path made tens of kilobytes of error (issue 23).
fn describe_layers(lowers: &[PathBuf]) -> String {
    match lowers {
        [] => "no layers".to_string(),
        [one] => format!("1 layer: {}", one.display()),
        [top, .., bottom] => format!(
            "{} layers: {} (top) ... {} (bottom)",
            lowers.len(),
            top.display(),
            bottom.display()
        ),
    }
}

/// A file job's root (COPY, ADD, WORKDIR: rbuild's own code writes it, no step's process).
/// On an empty stack (`FROM scratch`, `COPY --link`) the upper alone is the root: an
/// overlay over an empty lower only adds its own cost to every entry made (a third of a
/// 100,000-file copy, issue 23), so the upper is bind-mounted instead, as containerd's
/// overlay snapshotter mounts a snapshot without parents. A RUN always gets the overlay,
/// which keeps the step's process from writing overlay's own xattrs in the upper.
pub(super) fn mount_file_root(rootfs: &Overlay, scratch: &Path) -> Res<PathBuf> {
    if !rootfs.lowers.is_empty() {
        return mount_rootfs(rootfs, scratch);
    }
    let root = scratch.join("root");
    mkdir(&root)?;
    bind(&rootfs.upper, &root, false)?;
    // As the overlay is mounted: no device node made here can be opened through it.
    remount(&root, MsFlags::MS_NODEV | MsFlags::MS_NOSUID)?;
    Ok(root)
}

pub(super) fn mount_rootfs(rootfs: &Overlay, scratch: &Path) -> Res<PathBuf> {
    let root = scratch.join("root");
    mkdir(&root)?;
    // A `volatile` mount leaves this mark in its work dir, and the kernel refuses to mount
    // over a marked one: the mark says the upper may have lost writes in a crash. A step
    // that mounts its upper again (a COPY with a git source between its other sources)
    // does so within one build, its writes all in the page cache, so the mark goes.
    let mark = rootfs.work.join("work/incompat/volatile");
    match std::fs::remove_dir_all(&mark) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Failure::Setup(format!("removing {}: {e}", mark.display())))
        }
        _ => {}
    }
    mount_overlay(
        &scratch.join("l"),
        &rootfs.lowers,
        Some((&rootfs.upper, &rootfs.work)),
        &root,
    )?;
    Ok(root)
}

/// Bind-mounts `source` on `target`; the new mount keeps the source mount's flags.
/// `recursive` brings the mounts below `source` along (untouched by [`remount`]).
pub(super) fn bind(source: &Path, target: &Path, recursive: bool) -> Res<()> {
    let src = source.to_string_lossy();
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    mount_at(Some(&src), target, None, MsFlags::MS_BIND | rec, None)
}

/// The per-mount flags of the mount at `path`, as mount(2) flags.
pub(super) fn mount_flags(path: &Path) -> Res<MsFlags> {
    use nix::sys::statvfs::FsFlags;
    let st = ctx(nix::sys::statvfs::statvfs(path), || {
        format!("statfs {}", path.display())
    })?;
    let f = st.flags();
    let mut flags = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(st) {
            flags |= ms;
        }
    }
    Ok(flags)
}

/// Adds `add` to the flags of the bind mount at `target` (a path that resolves to the mount
/// itself). A bind remount sets every per-mount flag at once, so the ones the mount has are
/// passed again, as runc does; dropping one (nosuid, nodev) would loosen the mount.
pub(super) fn remount(target: &Path, add: MsFlags) -> Res<()> {
    let flags = mount_flags(target)? | add;
    mount_at(
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None,
    )
}

/// Creates mountpoints in the merged root and remembers what it created, and what the
/// image's directories above them were before a stub copied them up.
pub(super) struct Points<'a> {
    pub(super) root: &'a Root,
    pub(super) stubs: Vec<Stub>,
    /// Directories the sandbox made that belong to the layer (the working directory's).
    pub(super) made: Vec<String>,
    pub(super) parents: Vec<Parent>,
}

impl Points<'_> {
    /// Opens (creating if missing) the mountpoint `target`; returns a path that resolves
    /// to it through /proc/self/fd, plus the fd that keeps that path valid.
    pub(super) fn make(&mut self, target: &str, kind: Kind, mode: u32) -> Res<(PathBuf, OwnedFd)> {
        let mut created = Vec::new();
        let fd = ctx(
            self.root
                .ensure(target, kind, mode, Created::default(), &mut created),
            || format!("creating mountpoint {target}"),
        )?;
        if let Some(first) = created.first() {
            // Everything above the first path made was there: the image's, now copied up.
            let mut rel = first.as_str();
            while let Some((dir, _)) = rel.rsplit_once('/') {
                self.note_parent(dir);
                rel = dir;
            }
        }
        let n = created.len();
        for (i, path) in created.into_iter().enumerate() {
            let last = i + 1 == n;
            self.stubs.push(Stub {
                path,
                dir: !last || kind == Kind::Dir,
                mode: if last { mode } else { 0o755 },
            });
        }
        Ok((fd_path(&fd), fd))
    }

    /// Records `dir`'s type, mode and owner unless the sandbox made it. A directory under
    /// a mount is left out (the lookup does not cross mounts): its stubs are not in the upper.
    fn note_parent(&mut self, dir: &str) {
        let known = self.parents.iter().any(|p| p.path == dir)
            || self.made.iter().any(|m| m == dir)
            || self.stubs.iter().any(|s| s.path == dir);
        if known {
            return;
        }
        let stat = self
            .root
            .open_beneath(dir, OFlags::PATH)
            .ok()
            .and_then(|fd| rustix::fs::fstat(&fd).ok());
        if let Some(st) = stat {
            self.parents.push(Parent {
                path: dir.to_string(),
                mode: st.st_mode,
                uid: st.st_uid,
                gid: st.st_gid,
            });
        }
    }

    /// Reopens a mounted target so that the path reaches the new mount, not what is under it.
    pub(super) fn reopen(&self, target: &str) -> Res<(PathBuf, OwnedFd)> {
        let fd = ctx(self.root.open_in(target, OFlags::PATH), || {
            format!("opening {target}")
        })?;
        Ok((fd_path(&fd), fd))
    }

    /// Bind-mounts `source` (not recursively) on `target`, created as `kind` with `mode` if
    /// missing, and adds `add` to the flags the new mount takes from the source's mount.
    pub(super) fn bind(
        &mut self,
        source: &Path,
        target: &str,
        kind: Kind,
        mode: u32,
        add: MsFlags,
    ) -> Res<()> {
        let (p, _fd) = self.make(target, kind, mode)?;
        bind(source, &p, false)?;
        if !add.is_empty() {
            let (p, _fd) = self.reopen(target)?;
            remount(&p, add)?;
        }
        Ok(())
    }
}

pub(super) fn write_file(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Res<()> {
    let what = || format!("writing {}", path.display());
    let mut f = ctx(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path),
        what,
    )?;
    ctx(f.write_all(data), what)?;
    ctx(
        f.set_permissions(std::fs::Permissions::from_mode(mode)),
        what,
    )?;
    if let Some((uid, gid)) = owner {
        ctx(std::os::unix::fs::fchown(&f, Some(uid), Some(gid)), what)?;
    }
    Ok(())
}

/// The host's device nodes that BuildKit's insecure mode adds (util/entitlements/security):
/// kmsg, cuse, fuse, kvm, net/tun, loop-control. Loop devices come from [`host_loop_devices`].
const INSECURE_DEVICES: [&str; 6] = ["kmsg", "cuse", "fuse", "kvm", "net/tun", "loop-control"];

/// The host's `/dev/loopN` block devices (BuildKit passes the first free one plus seven;
/// here every one that exists, which includes those).
fn host_loop_devices() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.strip_prefix("loop")
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    out.sort();
    out
}

pub(super) fn mount_dev(points: &mut Points, insecure: bool) -> Res<()> {
    // nodev: the standard nodes below are bind mounts of the host's, which keep the host
    // mount's flags; a node the step makes in /dev cannot be opened.
    let (p, _fd) = points.make("dev", Kind::Dir, 0o755)?;
    mount_at(
        Some("tmpfs"),
        &p,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    let (p, fd) = points.reopen("dev")?;
    // Our own fresh tmpfs: plain paths below its resolved location are safe.
    let dev = ctx(std::fs::read_link(&p), || "resolving /dev".into())?;
    drop(fd);
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let node = dev.join(name);
        write_file(&node, b"", 0o666, None)?;
        bind(&Path::new("/dev").join(name), &node, false)?;
    }
    if insecure {
        let extra = INSECURE_DEVICES
            .iter()
            .map(|n| n.to_string())
            .chain(host_loop_devices());
        for name in extra {
            let host = Path::new("/dev").join(&name);
            let is_device = std::fs::metadata(&host).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_char_device() || m.file_type().is_block_device()
            });
            if !is_device {
                continue;
            }
            let node = dev.join(&name);
            if let Some(parent) = node.parent() {
                mkdir(parent)?;
            }
            write_file(&node, b"", 0o666, None)?;
            // The host's node keeps the host /dev's flags (no nodev), so it opens.
            bind(&host, &node, false)?;
        }
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    // Group tty (5) does not exist in a single-id namespace.
    let single_id = matches!(
        super::super::userns::current(),
        super::super::userns::Mode::SingleId { .. }
    );
    mount_at(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(if single_id {
            "newinstance,ptmxmode=0666,mode=0620"
        } else {
            "newinstance,ptmxmode=0666,mode=0620,gid=5"
        }),
    )?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    mount_at(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    let mq = dev.join("mqueue");
    mkdir(&mq)?;
    mount_at(
        Some("mqueue"),
        &mq,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        symlink(Path::new(target), &dev.join(link))?;
    }
    Ok(())
}

pub(super) fn mount_target_mut(m: &mut Mount) -> &mut String {
    match m {
        Mount::Bind { target, .. }
        | Mount::Tmpfs { target, .. }
        | Mount::Cache { target, .. }
        | Mount::Secret { target, .. }
        | Mount::Ssh { target, .. } => target,
    }
}

pub(super) fn mount_one(points: &mut Points, m: &Mount, i: usize, scratch: &Path) -> Res<()> {
    match m {
        Mount::Bind {
            from,
            source,
            target,
            readonly,
        } => {
            let root = bind_source_root(from, &scratch.join(format!("m{i}")))?;
            // Resolved beneath the mounted root, symlinks followed inside it, as the stage
            // itself would see the path: a link to `/` in the stage is the stage's `/`, never
            // the host's. The mount takes the fd, so nothing is resolved twice.
            let fd = ctx(
                Root::open(&root).and_then(|r| r.open_in(source, OFlags::PATH)),
                || format!("mount source `{source}` (target {target})"),
            )?;
            let st = ctx(rustix::fs::fstat(&fd), || format!("stat {source}"))?;
            let kind = if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() {
                Kind::Dir
            } else {
                Kind::File
            };
            let mode = if kind == Kind::Dir { 0o755 } else { 0o644 };
            let add = if *readonly {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
            points.bind(&fd_path(&fd), target, kind, mode, add)?;
        }
        Mount::Cache { source, target, .. } => {
            points.bind(source, target, Kind::Dir, 0o755, MsFlags::MS_NODEV)?;
        }
        Mount::Tmpfs { target, size } => {
            let (p, _fd) = points.make(target, Kind::Dir, 0o755)?;
            let mut opts = "mode=1777".to_string();
            if let Some(size) = size {
                opts.push_str(&format!(",size={size}"));
            }
            mount_at(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
                Some(&opts),
            )?;
        }
        Mount::Secret {
            data,
            target,
            uid,
            gid,
            mode,
        } => {
            // On the step's tmpfs only: a secret never touches a disk.
            let copy = scratch.join(format!("secret{i}"));
            write_file(&copy, data, *mode, Some((*uid, *gid)))?;
            points.bind(&copy, target, Kind::File, 0o644, MsFlags::MS_RDONLY)?;
        }
        Mount::Ssh { socket, target } => {
            // A socket binds onto a file stub like any non-directory. Not read-only: a
            // client needs write permission on the socket to connect (as BuildKit's).
            points.bind(socket, target, Kind::File, 0o600, MsFlags::MS_NODEV)?;
        }
    }
    Ok(())
}

/// Mounts the tree a bind mount reads from at `base`/root: an overlay of the stage's layers
/// (or of the context directory) with a throwaway upper on the step's tmpfs, so a `rw`
/// mount's writes are discarded and a read-only one is made so by its remount. An overlay
/// for read-only mounts too: a bind of the context would bring the host mounts below it
/// along, writable whatever the remount says. Returns the mounted root.
pub(super) fn bind_source_root(from: &FsSource, base: &Path) -> Res<PathBuf> {
    let lowers = match from {
        FsSource::Dir(d) => std::slice::from_ref(d),
        FsSource::Layers(l) => l.as_slice(),
    };
    let (root, upper, work) = (base.join("root"), base.join("upper"), base.join("work"));
    for d in [&root, &upper, &work] {
        mkdir(d)?;
    }
    // The overlay's root takes the upper's mode and owner: make them the source root's.
    if let Some(meta) = lowers.first().and_then(|l| std::fs::metadata(l).ok()) {
        use std::os::unix::fs::MetadataExt;
        ctx(
            std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(meta.mode())),
            || "setting the mount's upper mode".into(),
        )?;
        ctx(
            std::os::unix::fs::chown(&upper, Some(meta.uid()), Some(meta.gid())),
            || "setting the mount's upper owner".into(),
        )?;
    }
    mount_overlay(&base.join("n"), lowers, Some((&upper, &work)), &root)?;
    Ok(root)
}

/// containerd's default masked and read-only kernel files, applied to the step's fresh
/// /proc and /sys (so plain paths below them are the kernel's own, not the image's).
pub(super) fn mask_kernel_files(root_path: &Path) -> Res<()> {
    let root = ctx(Root::open(root_path), || "opening the root".into())?;
    let resolve = |p: &str| -> Res<PathBuf> {
        let fd = ctx(root.open_in(p, OFlags::PATH), || format!("opening /{p}"))?;
        ctx(std::fs::read_link(fd_path(&fd)), || {
            format!("resolving /{p}")
        })
    };
    let (proc_dir, sys_dir) = (resolve("proc")?, resolve("sys")?);
    let masked = [
        "acpi",
        "asound",
        "kcore",
        "keys",
        "latency_stats",
        "timer_list",
        "timer_stats",
        "sched_debug",
        "scsi",
    ]
    .iter()
    .map(|p| proc_dir.join(p))
    .chain([
        sys_dir.join("firmware"),
        sys_dir.join("devices/virtual/powercap"),
    ]);
    for p in masked {
        match std::fs::symlink_metadata(&p) {
            Err(_) => continue,
            Ok(m) if m.is_dir() => {
                mount_at(Some("tmpfs"), &p, Some("tmpfs"), MsFlags::MS_RDONLY, None)?
            }
            Ok(_) => bind(Path::new("/dev/null"), &p, false)?,
        }
    }
    for p in ["bus", "fs", "irq", "sys", "sysrq-trigger"] {
        let p = proc_dir.join(p);
        if p.exists() {
            bind(&p, &p, false)?;
            remount(&p, MsFlags::MS_RDONLY)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_stack_fits_the_one_page_option_string() {
        // 500: overlay's OVL_MAX_STACK, the most lowers store::lowers ever passes.
        let names: Vec<String> = (0..500).map(|i| format!("{i:x}")).collect();
        let opts = overlay_options(&names, true);
        assert!(opts.len() < 4096, "{} bytes", opts.len());
        assert!(opts.starts_with("lowerdir=0:1:2:"), "{opts}");
        assert!(opts.contains(":1f3,upperdir=u,workdir=w,"), "{opts}");
    }

    #[test]
    fn rootless_overlay_keeps_its_marks_in_user_xattrs() {
        let names = vec!["0".to_string()];
        let root = overlay_options_for(&names, true, false);
        assert!(root.ends_with(",redirect_dir=off"), "{root}");
        let rootless = overlay_options_for(&names, true, true);
        assert!(
            rootless.ends_with(",redirect_dir=nofollow,userxattr"),
            "{rootless}"
        );
    }

    #[test]
    fn a_failed_mount_names_the_count_and_the_ends_of_the_stack() {
        let lowers: Vec<PathBuf> = (0..600)
            .rev()
            .map(|i| PathBuf::from(format!("/var/lib/rbuild/layers/{i:064x}/diff")))
            .collect();
        let m = describe_layers(&lowers);
        assert_eq!(
            m,
            format!(
                "600 layers: /var/lib/rbuild/layers/{:064x}/diff (top) ... \
                 /var/lib/rbuild/layers/{:064x}/diff (bottom)",
                599, 0
            )
        );
        assert!(m.len() < 300, "{} bytes", m.len());
        assert_eq!(
            describe_layers(&lowers[..1]),
            format!("1 layer: /var/lib/rbuild/layers/{:064x}/diff", 599)
        );
        assert_eq!(describe_layers(&[]), "no layers");
    }
}
