//! The re-executed helper process: namespaces, mounts, fork and exec.
//!
//! It runs single-threaded from main(), so forking is safe and the child may use ordinary
//! code until execve (no other thread can hold a lock). Errors are strings with context:
//! they travel to the parent as JSON.

use std::ffi::CString;
use std::fmt::Display;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Uid};
use rustix::fs::OFlags;

use super::root::{Kind, Root};
use super::user::ExecUser;
use super::{Exit, Failure, FsJob, FsSource, Job, Mount, Network, Overlay, Reply, RunSpec, Stub};

type Res<T> = Result<T, Failure>;

fn ctx<T, E: Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> Res<T> {
    r.map_err(|e| Failure::Setup(format!("{}: {e}", what())))
}

pub fn main<J: FsJob>() -> ! {
    let args: Vec<String> = std::env::args().collect();
    if args.get(2).map(String::as_str) == Some(super::net::HOLDER_ARG) {
        hold_network_namespace();
    }
    // A helper started ahead of its step (spare.rs) joins the step's cgroup before it reads
    // the job; a failure is the job's answer.
    let cgroup = match (args.get(2).map(String::as_str), args.get(3)) {
        (Some(super::spare::CGROUP_ARG), Some(dir)) => Some(PathBuf::from(dir)),
        _ => None,
    };
    let joined = cgroup.as_deref().map_or(Ok(()), |dir| {
        ctx(super::cgroup::join(dir), || {
            format!("joining the step's cgroup {}", dir.display())
        })
    });
    let reply = match serve::<J>(joined, cgroup.as_deref()) {
        Ok(r) => r,
        Err(f) => Reply::Failed(f),
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_else(|e| e.to_string().into_bytes());
    line.push(b'\n');
    let _ = std::io::stderr().write_all(&line);
    std::process::exit(0)
}

/// The holder of the build's shared network namespace (net.rs): makes it, brings up its
/// loopback, says "ready" on stdout and keeps it until stdin closes, which happens when
/// rbuild exits, however it does.
fn hold_network_namespace() -> ! {
    let made = ctx(nix::sched::unshare(CloneFlags::CLONE_NEWNET), || {
        "unsharing the network namespace".into()
    })
    .and_then(|()| loopback_up());
    if let Err(f) = made {
        let _ = writeln!(std::io::stderr(), "{}", super::SandboxError::from(f));
        std::process::exit(1);
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(b"ready\n").and_then(|()| out.flush());
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    std::process::exit(0)
}

fn serve<J: FsJob>(joined: Res<()>, cgroup: Option<&Path>) -> Res<Reply<J::Output, J::Error>> {
    let mut input = Vec::new();
    ctx(std::io::stdin().read_to_end(&mut input), || {
        "reading the job".into()
    })?;
    if input.is_empty() {
        // A spare that no step took: rbuild has exited.
        if let Some(dir) = cgroup {
            super::cgroup::leave_and_remove(dir);
        }
        std::process::exit(0);
    }
    joined?;
    let job: Job<J> = ctx(serde_json::from_slice(&input), || "parsing the job".into())?;
    let parent = match &job {
        Job::Run { parent, .. } | Job::Fs { parent, .. } => *parent,
    };
    // Die with rbuild; the check closes the race where it died before the prctl.
    ctx(nix::sys::prctl::set_pdeathsig(Signal::SIGKILL), || {
        "PR_SET_PDEATHSIG".into()
    })?;
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(Failure::Setup(
            "rbuild exited before the step started".into(),
        ));
    }
    // Files the sandbox creates get exactly the modes it asks for.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    match job {
        Job::Run {
            spec,
            scratch,
            netns,
            ..
        } => run_step(&spec, &scratch, netns.as_deref())
            .map(|(exit, stubs)| Reply::Run { exit, stubs }),
        Job::Fs {
            rootfs,
            sources,
            job,
            scratch,
            ..
        } => fs_step(&rootfs, &sources, job, &scratch),
    }
}

fn mount_at(
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

fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Makes every mount private and puts a tmpfs on the scratch dir, so nothing the helper
/// mounts or writes there is visible on the host or outlives the namespace.
fn private_scratch(scratch: &Path) -> Res<()> {
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

fn mkdir(p: &Path) -> Res<()> {
    ctx(std::fs::create_dir_all(p), || {
        format!("creating {}", p.display())
    })
}

fn symlink(target: &Path, link: &Path) -> Res<()> {
    ctx(std::os::unix::fs::symlink(target, link), || {
        format!("linking {} -> {}", link.display(), target.display())
    })
}

/// Mounts an overlay at `target`. The lower, upper and work paths are reached through
/// one-character symlinks in `names` (a fresh dir on the scratch tmpfs) and passed
/// relative to it, so any number of layers fits in the one-page option string.
/// Without `upper_work` the overlay is read-only (it then needs two lowers or more).
fn mount_overlay(
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
    let mut opts = format!("lowerdir={}", lower_names.join(":"));
    if let Some((upper, work)) = upper_work {
        symlink(upper, &names.join("u"))?;
        symlink(work, &names.join("w"))?;
        opts.push_str(",upperdir=u,workdir=w");
    }
    opts.push_str(",index=off,metacopy=off,redirect_dir=off");
    // The kernel resolves relative option paths against the mounter's cwd.
    ctx(std::env::set_current_dir(names), || {
        format!("entering {}", names.display())
    })?;
    // nodev: a device node the step makes (mknod of the host disk's numbers) reaches the
    // layer, as in docker build, but cannot be opened. Docker's device cgroup does the
    // same job; a mount flag needs no cgroup.
    let r = mount_at(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(&opts),
    );
    ctx(std::env::set_current_dir("/"), || {
        "leaving the layer names dir".into()
    })?;
    r.map_err(|f| match f {
        Failure::Setup(m) => Failure::Setup(format!(
            "{m} (layers: {})",
            lowers
                .iter()
                .map(|l| l.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        other => other,
    })
}

fn mount_rootfs(rootfs: &Overlay, scratch: &Path) -> Res<PathBuf> {
    let root = scratch.join("root");
    mkdir(&root)?;
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
fn bind(source: &Path, target: &Path, recursive: bool) -> Res<()> {
    let src = source.to_string_lossy();
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    mount_at(Some(&src), target, None, MsFlags::MS_BIND | rec, None)
}

/// The per-mount flags of the mount at `path`, as mount(2) flags.
fn mount_flags(path: &Path) -> Res<MsFlags> {
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
fn remount(target: &Path, add: MsFlags) -> Res<()> {
    let flags = mount_flags(target)? | add;
    mount_at(
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None,
    )
}

fn fs_step<J: FsJob>(
    rootfs: &Overlay,
    sources: &[FsSource],
    job: J,
    scratch: &Path,
) -> Res<Reply<J::Output, J::Error>> {
    ctx(nix::sched::unshare(CloneFlags::CLONE_NEWNS), || {
        "unsharing the mount namespace".into()
    })?;
    private_scratch(scratch)?;
    let root = mount_rootfs(rootfs, scratch)?;
    let mut paths = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let dir = scratch.join(format!("s{i}"));
        mkdir(&dir)?;
        match src {
            FsSource::Dir(p) => {
                bind(p, &dir, true)?;
                remount(&dir, MsFlags::MS_RDONLY | MsFlags::MS_NODEV)?;
            }
            FsSource::Layers(l) if l.is_empty() => {}
            FsSource::Layers(l) if l.len() == 1 => {
                bind(&l[0], &dir, false)?;
                remount(&dir, MsFlags::MS_RDONLY | MsFlags::MS_NODEV)?;
            }
            FsSource::Layers(l) => mount_overlay(&scratch.join(format!("n{i}")), l, None, &dir)?,
        }
        paths.push(dir);
    }
    Ok(Reply::Fs(job.run(&root, &paths)))
}

/// Creates mountpoints in the merged root and remembers what it created.
struct Points<'a> {
    root: &'a Root,
    stubs: Vec<Stub>,
}

impl Points<'_> {
    /// Opens (creating if missing) the mountpoint `target`; returns a path that resolves
    /// to it through /proc/self/fd, plus the fd that keeps that path valid.
    fn make(&mut self, target: &str, kind: Kind, mode: u32) -> Res<(PathBuf, OwnedFd)> {
        let mut created = Vec::new();
        let fd = ctx(
            self.root.ensure(target, kind, mode, None, &mut created),
            || format!("creating mountpoint {target}"),
        )?;
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

    /// Reopens a mounted target so that the path reaches the new mount, not what is under it.
    fn reopen(&self, target: &str) -> Res<(PathBuf, OwnedFd)> {
        let fd = ctx(self.root.open_in(target, OFlags::PATH), || {
            format!("opening {target}")
        })?;
        Ok((fd_path(&fd), fd))
    }

    /// Bind-mounts `source` (not recursively) on `target`, created as `kind` with `mode` if
    /// missing, and adds `add` to the flags the new mount takes from the source's mount.
    fn bind(
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

fn write_file(path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Res<()> {
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

fn mount_dev(points: &mut Points) -> Res<()> {
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
    let pts = dev.join("pts");
    mkdir(&pts)?;
    mount_at(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
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

/// BuildKit's /etc/hosts (executor/oci/hosts.go), with the step's hostname.
fn hosts_file(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

/// The host's resolv.conf as the step's network can use it. Its loopback nameservers
/// (systemd-resolved's 127.0.0.53) are the host's own: in the isolated network they become
/// slirp4netns's resolver, which forwards to the host's; with no network they go, and
/// Google's public servers stand in when none remain (BuildKit's executor/oci/resolvconf.go).
pub fn resolv_conf(host: &str, network: Network) -> String {
    let loopback = |line: &str| {
        let mut w = line.split_whitespace();
        w.next() == Some("nameserver")
            && w.next().is_some_and(|ip| {
                ip.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            })
    };
    let relay = format!("nameserver {}", super::net::DNS);
    let mut out = String::new();
    for line in host.lines() {
        let line = match network {
            Network::Isolated if loopback(line) => relay.as_str(),
            Network::None if loopback(line) => continue,
            _ => line,
        };
        if !out.lines().any(|l| l == line) || !line.starts_with("nameserver") {
            out.push_str(line);
            out.push('\n');
        }
    }
    let has_nameserver = out
        .lines()
        .any(|l| l.split_whitespace().next() == Some("nameserver"));
    if !has_nameserver {
        match network {
            Network::Isolated => out.push_str(&format!("{relay}\n")),
            _ => out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
        }
    }
    out
}

fn loopback_up() -> Res<()> {
    // SAFETY: socket(2) takes no pointers; the result is checked before wrapping it.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Failure::Setup(format!(
            "opening a socket to configure lo: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `raw` is a fresh descriptor owned by nothing else.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq we own; the union field
    // is the one these ioctls use.
    let r = unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req)
        }
    };
    if r < 0 {
        return Err(Failure::Setup(format!(
            "bringing up lo: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn kill_child(_: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe. Killing PID 1 of the step's namespace
        // kills every process in it.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn run_step(spec: &RunSpec, scratch: &Path, netns: Option<&Path>) -> Res<(Exit, Vec<Stub>)> {
    if let Some(ns) = netns {
        let fd = ctx(std::fs::File::open(ns), || {
            format!("opening the build's network namespace {}", ns.display())
        })?;
        ctx(nix::sched::setns(fd, CloneFlags::CLONE_NEWNET), || {
            "joining the build's network namespace".into()
        })?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    ctx(nix::sched::unshare(flags), || "unsharing namespaces".into())?;
    private_scratch(scratch)?;
    if spec.network == Network::None {
        loopback_up()?;
    }
    ctx(nix::unistd::sethostname(&spec.hostname), || {
        format!("setting hostname {}", spec.hostname)
    })?;
    let root_path = mount_rootfs(&spec.rootfs, scratch)?;
    let root = ctx(Root::open(&root_path), || "opening the root".into())?;

    let users = ctx(root.user_db(), || {
        "reading /etc/passwd and /etc/group in the image".into()
    })?;
    let exec_user = users.resolve(&spec.user).map_err(|e| Failure::User {
        spec: spec.user.clone(),
        message: e.to_string(),
    })?;

    // The working directory belongs to the layer (BuildKit creates it, owned by the user).
    ctx(
        root.ensure(
            &spec.cwd,
            Kind::Dir,
            0o755,
            Some((exec_user.uid, exec_user.gid)),
            &mut Vec::new(),
        ),
        || format!("creating working directory {}", spec.cwd),
    )?;

    let mut points = Points {
        root: &root,
        stubs: Vec::new(),
    };
    points.make("proc", Kind::Dir, 0o755)?;
    mount_dev(&mut points)?;
    let (p, _fd) = points.make("sys", Kind::Dir, 0o755)?;
    mount_at(
        Some("sysfs"),
        &p,
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;

    let files_dir = scratch.join("files");
    mkdir(&files_dir)?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let etc = [
        ("etc/resolv.conf", resolv_conf(&host_resolv, spec.network)),
        ("etc/hosts", hosts_file(&spec.hostname)),
    ];
    // Read-only, as in BuildKit: a step cannot change them, and they never reach a layer.
    for (i, (target, data)) in etc.iter().enumerate() {
        let copy = files_dir.join(format!("etc{i}"));
        write_file(&copy, data.as_bytes(), 0o644, None)?;
        points.bind(&copy, target, Kind::File, 0o644, MsFlags::MS_RDONLY)?;
    }

    // Parents before children, so a mount inside another mount lands on top of it.
    // A relative target is below the working directory, as in BuildKit.
    let mut mounts = spec.mounts.clone();
    for m in &mut mounts {
        let t = mount_target_mut(m);
        if !t.starts_with('/') {
            *t = format!("{}/{t}", spec.cwd);
        }
    }
    mounts.sort_by_key(|m| {
        super::root::clean(mount_target_mut(&mut m.clone()))
            .matches('/')
            .count()
    });
    for (i, m) in mounts.iter().enumerate() {
        mount_one(&mut points, m, i, scratch)?;
    }
    for (i, (target, data, mode)) in spec.files.iter().enumerate() {
        let copy = files_dir.join(format!("f{i}"));
        write_file(&copy, data, *mode, None)?;
        points.bind(&copy, target, Kind::File, 0o644, MsFlags::MS_RDONLY)?;
    }
    let stubs = std::mem::take(&mut points.stubs);
    drop(root);

    let exit = spawn_and_wait(spec, &root_path, &exec_user)?;
    Ok((exit, stubs))
}

fn mount_target_mut(m: &mut Mount) -> &mut String {
    match m {
        Mount::Bind { target, .. }
        | Mount::Tmpfs { target, .. }
        | Mount::Cache { target, .. }
        | Mount::Secret { target, .. } => target,
    }
}

fn mount_one(points: &mut Points, m: &Mount, i: usize, scratch: &Path) -> Res<()> {
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
    }
    Ok(())
}

/// Mounts the tree a bind mount reads from at `base`/root: an overlay of the stage's layers
/// (or of the context directory) with a throwaway upper on the step's tmpfs, so a `rw`
/// mount's writes are discarded and a read-only one is made so by its remount. An overlay
/// for read-only mounts too: a bind of the context would bring the host mounts below it
/// along, writable whatever the remount says. Returns the mounted root.
fn bind_source_root(from: &FsSource, base: &Path) -> Res<PathBuf> {
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

/// The environment the command gets: the step's, plus PATH (BuildKit) and HOME (runc)
/// when absent.
pub fn final_env(env: &[String], home: &str) -> Vec<String> {
    let mut out = env.to_vec();
    let has = |k: &str| {
        env.iter()
            .any(|e| e.split_once('=').map(|(n, _)| n) == Some(k))
    };
    if !has("PATH") {
        out.push(super::DEFAULT_PATH.to_string());
    }
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

/// Finds argv[0] like Go's exec.LookPath in runc: names with a slash are used as is,
/// others are searched in the command's own PATH.
fn look_path(name: &str, env: &[String]) -> Result<PathBuf, String> {
    if name.contains('/') {
        // runc stats the program first; its message is what BuildKit users see.
        return match std::fs::metadata(name) {
            Ok(_) => Ok(PathBuf::from(name)),
            Err(e) => Err(format!("exec: \"{name}\": stat {name}: {}", io_message(&e))),
        };
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("");
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return Ok(candidate);
        }
    }
    Err(format!(
        "exec: \"{name}\": executable file not found in $PATH"
    ))
}

/// An io::Error as Go prints it: lowercase, without Rust's " (os error N)".
fn io_message(e: &std::io::Error) -> String {
    let m = e.to_string();
    let m = m.split(" (os error").next().unwrap_or(&m).to_string();
    let mut c = m.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => m,
    }
}

fn cstring(s: &str, what: &str) -> Res<CString> {
    CString::new(s).map_err(|_| Failure::Setup(format!("{what} contains a NUL byte: {s:?}")))
}

fn spawn_and_wait(spec: &RunSpec, root_path: &Path, u: &ExecUser) -> Res<Exit> {
    if spec.argv.is_empty() {
        return Err(Failure::Exec("no command given".into()));
    }
    let env = final_env(&spec.env, &u.home);
    let c_argv = spec
        .argv
        .iter()
        .map(|a| cstring(a, "argument"))
        .collect::<Res<Vec<_>>>()?;
    let c_env = env
        .iter()
        .map(|a| cstring(a, "environment"))
        .collect::<Res<Vec<_>>>()?;
    let (status_r, status_w) = ctx(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC), || {
        "creating a pipe".into()
    })?;
    let (alive_r, alive_w) = ctx(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC), || {
        "creating a pipe".into()
    })?;
    // SAFETY: this process is single-threaded (the helper never starts threads), so the
    // child may run arbitrary code until execve.
    match ctx(unsafe { nix::unistd::fork() }, || "fork".into())? {
        ForkResult::Child => {
            drop(status_r);
            drop(alive_w);
            let failure = match child(spec, root_path, u, &alive_r, &env, &c_argv, &c_env) {
                Err(f) => f,
                Ok(never) => match never {},
            };
            let mut w = std::fs::File::from(status_w);
            let _ = w.write_all(&serde_json::to_vec(&failure).unwrap_or_default());
            drop(w);
            // SAFETY: _exit skips atexit handlers and buffers that belong to the helper.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(status_w);
            drop(alive_r);
            CHILD.store(child.as_raw(), Ordering::SeqCst);
            let handler = SigHandler::Handler(kill_child);
            for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
                // SAFETY: the handler only calls kill(2), which is async-signal-safe.
                let _ = unsafe { signal::signal(sig, handler) };
            }
            let mut report = Vec::new();
            let _ = std::fs::File::from(status_r).read_to_end(&mut report);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break ctx(other, || "waiting for the step".into())?,
                }
            };
            drop(alive_w);
            if !report.is_empty() {
                return Err(serde_json::from_slice(&report).unwrap_or_else(|_| {
                    Failure::Setup(String::from_utf8_lossy(&report).into_owned())
                }));
            }
            match status {
                WaitStatus::Exited(_, code) => Ok(Exit::Code(code)),
                WaitStatus::Signaled(_, sig, _) => Ok(Exit::Signal(sig as i32)),
                other => Err(Failure::Setup(format!("unexpected wait status {other:?}"))),
            }
        }
    }
}

/// containerd's default capabilities, which BuildKit's steps get: CHOWN, DAC_OVERRIDE,
/// FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT,
/// MKNOD, AUDIT_WRITE, SETFCAP (`CapBnd: 00000000a80425fb`).
pub const DEFAULT_CAPS: u64 = 0xa804_25fb;

/// Shrinks the bounding set; a root command's capabilities after execve are exactly it.
/// Needs CAP_SETPCAP, so it runs before setuid.
fn drop_capabilities() -> Res<()> {
    for cap in 0..64u64 {
        if DEFAULT_CAPS & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(Failure::Setup(format!("dropping capability {cap}: {e}")));
        }
    }
    Ok(())
}

/// Empties the ambient and inheritable sets. The bounding set does not limit them: a root
/// command gains its inheritable capabilities at execve whatever the bounding set says, so
/// an rbuild started with an inheritable CAP_SYS_ADMIN would hand it to the step; a non-root
/// one keeps its ambient set, and inheritable ones reach programs with file capabilities.
/// (runc clears them the same way for Docker's default profile, CVE-2022-24769.)
fn clear_inheritable_capabilities() -> Res<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL: a kernel before 4.3, without ambient capabilities.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(Failure::Setup(format!(
                "clearing ambient capabilities: {e}"
            )));
        }
    }
    /// linux/capability.h, version 3: two 32-bit halves of each set.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes one header and two Data structs, which we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(Failure::Setup(format!(
            "reading capabilities: {}",
            std::io::Error::last_os_error()
        )));
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: capset reads the header and two Data structs, which outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if r != 0 {
        return Err(Failure::Setup(format!(
            "clearing inheritable capabilities: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// containerd's default masked and read-only kernel files, applied to the step's fresh
/// /proc and /sys (so plain paths below them are the kernel's own, not the image's).
fn mask_kernel_files(root_path: &Path) -> Res<()> {
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

/// BuildKit (executor/oci, after containerd) puts the primary gid first in the
/// additional groups unless it is already there.
fn additional_gids(u: &ExecUser) -> Vec<u32> {
    if u.sgids.contains(&u.gid) {
        u.sgids.clone()
    } else {
        std::iter::once(u.gid)
            .chain(u.sgids.iter().copied())
            .collect()
    }
}

/// The helper is gone when its end of the alive pipe is closed.
fn helper_alive(alive: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd {
        fd: alive.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    n == 0
}

/// PID 1 of the step: finish the namespace, become the user, exec. Returns only on error.
fn child(
    spec: &RunSpec,
    root_path: &Path,
    u: &ExecUser,
    alive: &OwnedFd,
    env: &[String],
    c_argv: &[CString],
    c_env: &[CString],
) -> Res<std::convert::Infallible> {
    ctx(nix::sys::prctl::set_pdeathsig(Signal::SIGKILL), || {
        "PR_SET_PDEATHSIG".into()
    })?;
    if !helper_alive(alive) {
        return Err(Failure::Setup("the helper died".into()));
    }
    ctx(nix::unistd::setsid(), || "setsid".into())?;
    // A mount namespace of its own, so pivot_root moves only this process's root.
    ctx(nix::sched::unshare(CloneFlags::CLONE_NEWNS), || {
        "unsharing the mount namespace".into()
    })?;
    {
        let root = ctx(Root::open(root_path), || "opening the root".into())?;
        let fd = ctx(root.open_in("proc", OFlags::PATH), || {
            "opening /proc".into()
        })?;
        // Mounted from inside the new PID namespace, so it shows only the step.
        mount_at(
            Some("proc"),
            &fd_path(&fd),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        )?;
    }
    mask_kernel_files(root_path)?;
    ctx(std::env::set_current_dir(root_path), || {
        format!("entering {}", root_path.display())
    })?;
    ctx(nix::unistd::pivot_root(".", "."), || "pivot_root".into())?;
    ctx(nix::mount::umount2(".", MntFlags::MNT_DETACH), || {
        "detaching the old root".into()
    })?;
    ctx(std::env::set_current_dir("/"), || "entering /".into())?;

    let devnull = ctx(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null"),
        || "opening /dev/null".into(),
    )?;
    ctx(nix::unistd::dup2_stdin(&devnull), || {
        "redirecting stdin".into()
    })?;
    ctx(nix::unistd::dup2_stderr(std::io::stdout()), || {
        "redirecting stderr".into()
    })?;
    drop(devnull);

    // While CAP_SYS_ADMIN is still held: a filter needs it (or no_new_privs, which would
    // break setuid programs in the step).
    super::seccomp::install().map_err(Failure::Setup)?;
    drop_capabilities()?;
    clear_inheritable_capabilities()?;
    let gids: Vec<Gid> = additional_gids(u).into_iter().map(Gid::from_raw).collect();
    ctx(nix::unistd::setgroups(&gids), || "setgroups".into())?;
    let gid = Gid::from_raw(u.gid);
    ctx(nix::unistd::setresgid(gid, gid, gid), || {
        format!("setgid {}", u.gid)
    })?;
    let uid = Uid::from_raw(u.uid);
    ctx(nix::unistd::setresuid(uid, uid, uid), || {
        format!("setuid {}", u.uid)
    })?;
    // Changing credentials cleared the parent-death signal.
    ctx(nix::sys::prctl::set_pdeathsig(Signal::SIGKILL), || {
        "PR_SET_PDEATHSIG".into()
    })?;
    if !helper_alive(alive) {
        return Err(Failure::Setup("the helper died".into()));
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    ctx(std::env::set_current_dir(cwd), || {
        format!("chdir to cwd (\"{}\") set in config.json failed", spec.cwd)
    })?;
    let prog = look_path(&spec.argv[0], env).map_err(Failure::Exec)?;
    let c_prog = cstring(&prog.to_string_lossy(), "command")?;
    // The helper works with umask 0; the command gets runc's default.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // Rust ignores SIGPIPE in its own processes; the command must get the default back.
    // SAFETY: resetting a disposition to SIG_DFL installs no handler.
    for sig in [
        Signal::SIGPIPE,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
    }
    let _ = signal::sigprocmask(
        signal::SigmaskHow::SIG_SETMASK,
        Some(&signal::SigSet::empty()),
        None,
    );
    // SAFETY: marks every descriptor above stderr close-on-exec; no memory is involved.
    unsafe {
        libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int);
    }
    let err = nix::unistd::execve(&c_prog, c_argv, c_env).unwrap_err();
    Err(Failure::Exec(format!(
        "exec: \"{}\": {}",
        String::from_utf8_lossy(prog.as_os_str().as_bytes()),
        io_message(&std::io::Error::from(err))
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_path_and_home_only_when_missing() {
        let env = final_env(&["A=1".into()], "/root");
        assert_eq!(env, ["A=1", super::super::DEFAULT_PATH, "HOME=/root"]);
        let env = final_env(&["PATH=/x".into(), "HOME=/h".into()], "/root");
        assert_eq!(env, ["PATH=/x", "HOME=/h"]);
    }

    #[test]
    fn resolv_conf_drops_unreachable_loopback_servers() {
        let host = "nameserver 127.0.0.53\noptions edns0\n";
        assert_eq!(resolv_conf(host, Network::Host), host);
        assert_eq!(
            resolv_conf(host, Network::None),
            "options edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        assert_eq!(
            resolv_conf(host, Network::Isolated),
            "nameserver 10.0.2.3\noptions edns0\n"
        );
        let host = "nameserver ::1\nnameserver 10.0.0.1\nnameserver 127.0.0.1\n";
        assert_eq!(resolv_conf(host, Network::None), "nameserver 10.0.0.1\n");
        assert_eq!(
            resolv_conf(host, Network::Isolated),
            "nameserver 10.0.2.3\nnameserver 10.0.0.1\n"
        );
        assert_eq!(
            resolv_conf("", Network::Host),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        assert_eq!(resolv_conf("", Network::Isolated), "nameserver 10.0.2.3\n");
    }

    #[test]
    fn look_path_uses_the_command_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(look_path("sh", &env).unwrap(), PathBuf::from("/bin/sh"));
        assert_eq!(
            look_path("/bin/sh", &env).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            look_path("/x/y", &env).unwrap_err(),
            "exec: \"/x/y\": stat /x/y: no such file or directory"
        );
        assert_eq!(
            look_path("no-such-cmd", &env).unwrap_err(),
            "exec: \"no-such-cmd\": executable file not found in $PATH"
        );
    }
}
