//! The helper's process side: the step's environment and PATH lookup, fork, the child's
//! user, groups and capabilities, exec, and waiting for it.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Uid};
use rustix::fs::OFlags;

use super::super::root::Root;
use super::super::user::ExecUser;
use super::super::{Exit, Failure, Rlimit, RlimitResource, RunSpec, SecurityMode};

use super::mounts::{bind, fd_path, mask_kernel_files};
use super::{ctx, Res};

pub(super) static CHILD: AtomicI32 = AtomicI32::new(0);

pub(super) extern "C" fn kill_child(_: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe. Killing PID 1 of the step's namespace
        // kills every process in it.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
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
        out.push(super::super::DEFAULT_PATH.to_string());
    }
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

/// Finds argv[0] like Go's exec.LookPath in runc: names with a slash are used as is,
/// others are searched in the command's own PATH.
pub(super) fn look_path(name: &str, env: &[String]) -> Result<PathBuf, String> {
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
pub(super) fn io_message(e: &std::io::Error) -> String {
    let m = e.to_string();
    let m = m.split(" (os error").next().unwrap_or(&m).to_string();
    let mut c = m.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => m,
    }
}

pub(super) fn cstring(s: &str, what: &str) -> Res<CString> {
    CString::new(s).map_err(|_| Failure::Setup(format!("{what} contains a NUL byte: {s:?}")))
}

pub(super) fn spawn_and_wait(spec: &RunSpec, root_path: &Path, u: &ExecUser) -> Res<Exit> {
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
pub(super) fn drop_capabilities() -> Res<()> {
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
pub(super) fn clear_inheritable_capabilities() -> Res<()> {
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
    let mut data = capget()?;
    for d in &mut data {
        d.inheritable = 0;
    }
    capset(&data).map_err(|e| Failure::Setup(format!("clearing inheritable capabilities: {e}")))
}

/// linux/capability.h, version 3: a header, then two 32-bit halves of each set.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's capability sets.
fn capget() -> Res<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes one header and two CapData structs, which we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(Failure::Setup(format!(
            "reading capabilities: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(data)
}

fn capset(data: &[CapData; 2]) -> std::io::Result<()> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two CapData structs, which outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Insecure mode, before the user change: keep the permitted set across setuid to a
/// non-root user (cleared again by execve).
fn keep_capabilities_across_setuid() -> Res<()> {
    ctx(nix::sys::prctl::set_keepcaps(true), || {
        "PR_SET_KEEPCAPS".into()
    })
}

/// Insecure mode, after the user change: every capability the helper holds becomes
/// effective, inheritable and ambient, so the command keeps them after execve whoever it
/// runs as (BuildKit's WithInsecureSpec puts them in all five sets).
fn grant_all_capabilities() -> Res<()> {
    let mut data = capget()?;
    for d in &mut data {
        d.effective = d.permitted;
        d.inheritable = d.permitted;
    }
    capset(&data).map_err(|e| Failure::Setup(format!("granting capabilities: {e}")))?;
    for cap in 0..64u32 {
        let (half, bit) = ((cap / 32) as usize, cap % 32);
        if data[half].permitted & (1 << bit) == 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        if r < 0 {
            return Err(Failure::Setup(format!(
                "raising ambient capability {cap}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// `--ulimit`: set while the helper still holds CAP_SYS_RESOURCE, so a hard limit above
/// rbuild's own can be granted (runc sets them the same way, before it drops privileges).
fn set_rlimits(rlimits: &[Rlimit]) -> Res<()> {
    use nix::sys::resource::Resource;
    for r in rlimits {
        let resource = match r.resource {
            RlimitResource::Core => Resource::RLIMIT_CORE,
            RlimitResource::Cpu => Resource::RLIMIT_CPU,
            RlimitResource::Data => Resource::RLIMIT_DATA,
            RlimitResource::Fsize => Resource::RLIMIT_FSIZE,
            RlimitResource::Locks => Resource::RLIMIT_LOCKS,
            RlimitResource::Memlock => Resource::RLIMIT_MEMLOCK,
            RlimitResource::Msgqueue => Resource::RLIMIT_MSGQUEUE,
            RlimitResource::Nice => Resource::RLIMIT_NICE,
            RlimitResource::Nofile => Resource::RLIMIT_NOFILE,
            RlimitResource::Nproc => Resource::RLIMIT_NPROC,
            RlimitResource::Rss => Resource::RLIMIT_RSS,
            RlimitResource::Rtprio => Resource::RLIMIT_RTPRIO,
            RlimitResource::Rttime => Resource::RLIMIT_RTTIME,
            RlimitResource::Sigpending => Resource::RLIMIT_SIGPENDING,
            RlimitResource::Stack => Resource::RLIMIT_STACK,
        };
        if let Err(e) = nix::sys::resource::setrlimit(resource, r.soft, r.hard) {
            let hint = match e {
                nix::errno::Errno::EPERM => {
                    " (a hard limit above rbuild's own needs CAP_SYS_RESOURCE, which rbuild lacks)"
                }
                _ => "",
            };
            return Err(Failure::Setup(format!(
                "setting --ulimit {}={}:{}: {e}{hint}",
                r.resource.name(),
                show_limit(r.soft),
                show_limit(r.hard)
            )));
        }
    }
    Ok(())
}

/// A limit as docker writes it: -1 for unlimited.
fn show_limit(v: u64) -> String {
    if v == u64::MAX {
        "-1".into()
    } else {
        v.to_string()
    }
}

/// BuildKit (executor/oci, after containerd) puts the primary gid first in the
/// additional groups unless it is already there.
pub(super) fn additional_gids(u: &ExecUser) -> Vec<u32> {
    if u.sgids.contains(&u.gid) {
        u.sgids.clone()
    } else {
        std::iter::once(u.gid)
            .chain(u.sgids.iter().copied())
            .collect()
    }
}

/// The helper is gone when its end of the alive pipe is closed.
pub(super) fn helper_alive(alive: &OwnedFd) -> bool {
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
pub(super) fn child(
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
        let target = fd_path(&fd);
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        match nix::mount::mount(Some("proc"), &target, Some("proc"), flags, None::<&str>) {
            Ok(()) => {}
            // Rootless in a container whose /proc has masked paths (docker's default): the
            // kernel refuses a new proc that would reveal them. As rootless BuildKit without
            // a process sandbox, the step gets the container's /proc, masks and all.
            Err(nix::errno::Errno::EPERM) if super::super::userns::in_user_namespace() => {
                bind(Path::new("/proc"), &target, true)?;
                let _ = writeln!(
                    std::io::stdout(),
                    "rbuild: note: /proc cannot be mounted here (masked paths of a container): \
                     the step sees its container's processes (docs/rootless.md)"
                );
            }
            Err(e) => {
                return Err(Failure::Setup(format!(
                    "mounting proc on {}: {e}",
                    target.display()
                )))
            }
        }
    }
    let insecure = spec.security == SecurityMode::Insecure;
    if !insecure {
        mask_kernel_files(root_path)?;
    }
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

    let pids = super::super::userns::pids_rlimit(spec.pids_limit, &spec.rlimits);
    set_rlimits(&[&spec.rlimits[..], pids.as_slice()].concat())?;
    if insecure {
        keep_capabilities_across_setuid()?;
    } else {
        // While CAP_SYS_ADMIN is still held: a filter needs it (or no_new_privs, which
        // would break setuid programs in the step).
        super::super::seccomp::install().map_err(Failure::Setup)?;
        drop_capabilities()?;
        clear_inheritable_capabilities()?;
    }
    let gids: Vec<Gid> = additional_gids(u).into_iter().map(Gid::from_raw).collect();
    if let Some(hint) = super::super::userns::current().single_id_hint() {
        // Only 0 exists, and setgroups is denied (an unprivileged gid map needs that).
        if u.uid != 0 || u.gid != 0 {
            return Err(Failure::Setup(format!(
                "running the step as uid {} gid {}: {}",
                u.uid, u.gid, hint
            )));
        }
    } else {
        ctx(nix::unistd::setgroups(&gids), || "setgroups".into())?;
    }
    let gid = Gid::from_raw(u.gid);
    ctx(nix::unistd::setresgid(gid, gid, gid), || {
        format!("setgid {}", u.gid)
    })?;
    let uid = Uid::from_raw(u.uid);
    ctx(nix::unistd::setresuid(uid, uid, uid), || {
        format!("setuid {}", u.uid)
    })?;
    if insecure {
        grant_all_capabilities()?;
    }
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
