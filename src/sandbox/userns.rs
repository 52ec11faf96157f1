//! Rootless mode (design.md "Rootless"): a user without root runs rbuild inside a user +
//! mount namespace of its own, as that namespace's root, so every later code path is the
//! one root uses.
//!
//! Started without root, rbuild re-executes itself once ([`reexec`]): the child unshares
//! CLONE_NEWUSER | CLONE_NEWNS first thing in main ([`enter_if_child`]), says so over a
//! socket, and waits; the parent writes the child's uid/gid maps (container 0 -> the user's
//! own id, 1..=N -> the user's range in /etc/subuid and /etc/subgid, with the setuid helpers
//! `newuidmap`/`newgidmap`, as podman and buildah do) and tells it to go on. Without a range
//! only the user's own id is mapped (a map a user may write without help).
//!
//! The mode is read back from /proc/self/uid_map ([`current`]), not from a variable, so the
//! sandbox helper and anything else started inside the namespace knows it too.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::{Rlimit, RlimitResource, SandboxError};

/// Names the inherited socket of a re-executed child (its fd number).
const CHILD_ENV: &str = "_RBUILD_USERNS_FD";

/// Set in the child [`reexec`] started, once it is root of its namespace.
static REEXECUTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is the rbuild a user started, re-executed in its own namespace
/// (then its store is the user's, not /var/lib/rbuild). Root of a container whose user
/// namespace someone else made is not.
pub fn reexecuted() -> bool {
    REEXECUTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A run of subordinate ids: `start`, `start + 1`, ..., `start + count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

/// How rbuild runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Real root (or root of a namespace whose map rbuild did not make, such as a
    /// container's: the whole id space is there).
    Root,
    /// Namespace root with the user's own id as 0 and a subordinate range as 1..=N.
    Range { uids: IdRange, gids: IdRange },
    /// Namespace root with only the user's own id mapped.
    /// `subuid_line`: the /etc/subuid and /etc/subgid line that would give a range, worked
    /// out when the mode is read (while /etc is the host's).
    SingleId { subuid_line: String },
}

impl Mode {
    pub fn is_rootless(&self) -> bool {
        !matches!(self, Mode::Root)
    }

    /// In single-id mode: why a step that needs an id other than 0 cannot run, and the
    /// /etc/subuid line that lifts the limit.
    pub fn single_id_hint(&self) -> Option<String> {
        match self {
            Mode::SingleId { subuid_line } => Some(single_id_hint(subuid_line)),
            _ => None,
        }
    }

    /// One line for `rbuild info` and the start of a plain log.
    pub fn describe(&self) -> String {
        match self {
            Mode::Root => "root".into(),
            Mode::Range { uids, gids } => format!(
                "rootless, ids 1-{} mapped to uids {}-{} and gids {}-{} (/etc/subuid, /etc/subgid)",
                uids.count.min(gids.count),
                uids.start,
                uids.start as u64 + uids.count as u64 - 1,
                gids.start,
                gids.start as u64 + gids.count as u64 - 1,
            ),
            Mode::SingleId { subuid_line } => {
                format!("rootless, single id (only your own id is mapped, as 0; `{subuid_line}` in /etc/subuid and /etc/subgid would map a range)")
            }
        }
    }
}

/// The mode of this process: inside a namespace rbuild made, from its uid/gid map;
/// without root, the mode [`reexec`] would set up.
pub fn current() -> Mode {
    static MODE: std::sync::OnceLock<Mode> = std::sync::OnceLock::new();
    MODE.get_or_init(read_mode).clone()
}

fn read_mode() -> Mode {
    if !nix::unistd::geteuid().is_root() {
        return planned(&user_name());
    }
    let (Ok(uid_map), Ok(gid_map)) = (
        std::fs::read_to_string("/proc/self/uid_map"),
        std::fs::read_to_string("/proc/self/gid_map"),
    ) else {
        return Mode::Root;
    };
    from_maps(&uid_map, &gid_map).unwrap_or(Mode::Root)
}

/// The xattrs overlay marks an opaque directory with (value `y`): `trusted.*` as root
/// mounts it, `user.*` with `userxattr` (rootless). Layers carry neither.
pub const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// The opaque xattr this process's overlay mounts read and its layer dirs get.
pub fn opaque_xattr() -> &'static str {
    OPAQUE_XATTRS[usize::from(in_user_namespace())]
}

/// Whether `path` is a directory marked opaque, by either kind of overlay.
pub fn is_opaque(path: &Path) -> bool {
    let mut buf = [0u8; 4];
    OPAQUE_XATTRS
        .iter()
        .any(|name| matches!(rustix::fs::lgetxattr(path, *name, &mut buf), Ok(1) if buf[0] == b'y'))
}

/// Rootless, `--pids-limit` has no cgroup (nobody delegated one to the user): the step gets
/// RLIMIT_NPROC at the limit instead, unless `--ulimit nproc` set one. The kernel counts it
/// per user id of rbuild's namespace (the user's tasks of that id, threads included: the
/// build's other steps as that user, and for root steps rbuild's own few), and ns root
/// cannot lift it (that needs CAP_SYS_RESOURCE in the initial namespace), so a fork bomb
/// stops at the limit as under root's cgroup. Docker and podman ignore the limit
/// without a delegated cgroup; docs/rootless.md.
pub fn pids_rlimit(pids_limit: Option<u32>, rlimits: &[Rlimit]) -> Option<Rlimit> {
    let limit = u64::from(pids_limit?);
    let set = rlimits.iter().any(|r| r.resource == RlimitResource::Nproc);
    (in_user_namespace() && !set).then_some(Rlimit {
        resource: RlimitResource::Nproc,
        soft: limit,
        hard: limit,
    })
}

/// The note a rootless build with a pids limit prints once at its start.
pub fn pids_limit_note(limit: u32) -> String {
    format!(
        "note: rootless, no cgroup is delegated to this user: --pids-limit {limit} is each RUN \
         step's RLIMIT_NPROC (the tasks of the step's user id in the build), not a pids \
         cgroup (docs/rootless.md)"
    )
}

/// Whether overlay must be mounted with `userxattr` (and opaque directories carry
/// `user.overlay.opaque`): inside a user namespace that is not the initial one.
pub fn in_user_namespace() -> bool {
    static IN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IN.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| !is_identity_map(&m))
    })
}

fn is_identity_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    lines.len() == 1 && lines[0] == ["0", "0", "4294967295"]
}

/// The mode a namespace with these maps runs in; None for the initial namespace or a map
/// of a shape rbuild does not make (then it is root as far as rbuild can tell).
fn from_maps(uid_map: &str, gid_map: &str) -> Option<Mode> {
    if is_identity_map(uid_map) {
        return None;
    }
    let parse = |map: &str| -> Vec<(u32, u32, u32)> {
        map.lines()
            .filter_map(|l| {
                let f: Vec<u32> = l
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                (f.len() == 3).then(|| (f[0], f[1], f[2]))
            })
            .collect()
    };
    let (u, g) = (parse(uid_map), parse(gid_map));
    let range = |m: &[(u32, u32, u32)]| {
        m.iter()
            .find(|(inside, _, _)| *inside == 1)
            .map(|&(_, start, count)| IdRange { start, count })
    };
    match (range(&u), range(&g)) {
        (Some(uids), Some(gids)) => Some(Mode::Range { uids, gids }),
        _ if u.len() == 1 && u[0].0 == 0 && u[0].2 == 1 => Some(Mode::SingleId {
            subuid_line: suggested_line(&host_user_name(u[0].1)),
        }),
        _ => None,
    }
}

/// The invoking user's name (for /etc/subuid), else its uid as a string.
fn user_name() -> String {
    host_user_name(nix::unistd::getuid().as_raw())
}

/// The name of host uid `uid` in the host's /etc/passwd (read before any pivot_root).
fn host_user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// The mode a user gets: its ranges from /etc/subuid and /etc/subgid, both or neither.
fn planned(user: &str) -> Mode {
    let uid = nix::unistd::getuid().as_raw().to_string();
    let find = |file: &str| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        subordinate_range(&text, &[user, &uid])
    };
    match (find("/etc/subuid"), find("/etc/subgid")) {
        (Some(uids), Some(gids)) if which("newuidmap") && which("newgidmap") => {
            Mode::Range { uids, gids }
        }
        _ => Mode::SingleId {
            subuid_line: suggested_line(user),
        },
    }
}

/// The `name:start:count` lines of /etc/subuid or /etc/subgid (text), skipping others.
fn subordinate_lines(text: &str) -> impl Iterator<Item = (&str, IdRange)> {
    text.lines().filter_map(|line| {
        let mut f = line.trim().split(':');
        let (name, start, count) = (f.next()?, f.next()?, f.next()?);
        let range = IdRange {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        Some((name, range))
    })
}

/// The first range of `names` (a user name or uid) in the text of /etc/subuid or /etc/subgid.
fn subordinate_range(text: &str, names: &[&str]) -> Option<IdRange> {
    subordinate_lines(text)
        .find(|(name, range)| names.contains(name) && range.count > 0)
        .map(|(_, range)| range)
}

/// The /etc/subuid (and /etc/subgid) line that would give `user` a range: 65536 ids after
/// the last range the file hands out, from 100000 on (useradd's defaults).
fn suggested_line(user: &str) -> String {
    let text = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    suggested_line_after(user, &text)
}

fn suggested_line_after(user: &str, subuid: &str) -> String {
    let end = subordinate_lines(subuid)
        .map(|(_, r)| u64::from(r.start) + u64::from(r.count))
        .max()
        .unwrap_or(0)
        .max(100_000);
    format!("{user}:{end}:65536")
}

/// Why a step that needs an id other than 0 cannot run in single-id mode, and what lifts it.
fn single_id_hint(line: &str) -> String {
    format!(
        "rootless without subordinate ids: only your own id is mapped (as 0), so other users \
         and groups cannot exist; add `{line}` to /etc/subuid and /etc/subgid (and install \
         uidmap for newuidmap/newgidmap)"
    )
}

fn which(tool: &str) -> bool {
    find_tool(tool).is_some()
}

/// `tool` in PATH, else in /usr/bin.
fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .or_else(|| Some(Path::new("/usr/bin").join(tool)).filter(|p| p.is_file()))
}

/// Runs this same command again as root of a new user + mount namespace mapped per `mode`
/// and returns the exit code to leave with (128 + signal if it was killed). Signals to the
/// parent are passed on ([`Forwarded`]); a SIGKILLed parent takes the child with it
/// (PR_SET_PDEATHSIG).
pub fn reexec(mode: &Mode) -> Result<i32, SandboxError> {
    let setup = |e: std::io::Error, what: &str| SandboxError::Setup(format!("{what}: {e}"));
    let (ours, theirs) = UnixStream::pair().map_err(|e| setup(e, "making a socket pair"))?;
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(std::env::args_os().skip(1))
        .arg0(std::env::args_os().next().unwrap_or_default())
        .env(CHILD_ENV, fd.to_string());
    super::die_with_parent(&mut cmd);
    // SAFETY: between fork and exec the closure makes one raw, async-signal-safe syscall
    // (fcntl) and touches no memory but its copied fd number.
    unsafe {
        cmd.pre_exec(move || {
            // The child's end of the socket survives the exec.
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Caught before the spawn, so that none falls between; exec gives the child the
    // default handlers back, and it installs its own.
    let forwarded = Forwarded::catch();
    let mut child = cmd
        .spawn()
        .map_err(|e| setup(e, "re-executing rbuild in a user namespace"))?;
    drop(theirs);
    let pid = child.id();
    let status = match handshake(ours, pid, mode) {
        Ok(Handshake::Mapped) => forwarded.wait(&mut child),
        // It said why on stderr (unshare refused, say); its exit code is the answer.
        Ok(Handshake::ChildGone) => child.wait(),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    .map_err(|e| setup(e, "waiting for rbuild in the user namespace"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// SIGINT, SIGTERM and SIGHUP to the parent, passed on to the child: a CI runner that
/// cancels a job signals rbuild's pid alone, and the child must clean up as root does.
/// (A terminal's Ctrl-C reaches both; the child takes a second SIGINT like the first.)
struct Forwarded {
    caught: Vec<(libc::c_int, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
    ids: Vec<signal_hook::SigId>,
}

impl Forwarded {
    fn catch() -> Forwarded {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut f = Forwarded {
            caught: Vec::new(),
            ids: Vec::new(),
        };
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let flag = std::sync::Arc::<std::sync::atomic::AtomicBool>::default();
            if let Ok(id) = signal_hook::flag::register(sig, flag.clone()) {
                f.ids.push(id);
            }
            f.caught.push((sig, flag));
        }
        f
    }

    fn wait(self, child: &mut std::process::Child) -> std::io::Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            for (sig, flag) in &self.caught {
                if flag.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(sig) = nix::sys::signal::Signal::try_from(*sig) {
                        let _ = nix::sys::signal::kill(pid, sig);
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        for id in self.ids {
            signal_hook::low_level::unregister(id);
        }
        Ok(status)
    }
}

/// The parent's half: waits for the child to unshare, writes its maps, lets it go on.
fn handshake(mut sock: UnixStream, pid: u32, mode: &Mode) -> Result<Handshake, SandboxError> {
    let mut byte = [0u8; 1];
    if !matches!(sock.read(&mut byte), Ok(1)) {
        return Ok(Handshake::ChildGone);
    }
    write_maps(pid, mode)?;
    sock.write_all(b"1")
        .map_err(|e| SandboxError::Setup(format!("resuming rbuild in the user namespace: {e}")))?;
    Ok(Handshake::Mapped)
}

enum Handshake {
    Mapped,
    /// The child closed the socket before it unshared: it failed, or was killed.
    ChildGone,
}

fn write_maps(pid: u32, mode: &Mode) -> Result<(), SandboxError> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    match mode {
        Mode::Range { uids, gids } => {
            id_map_tool("newuidmap", pid, uid, *uids)?;
            id_map_tool("newgidmap", pid, gid, *gids)
        }
        _ => {
            let proc = |f: &str, text: String| {
                std::fs::write(format!("/proc/{pid}/{f}"), text).map_err(|e| {
                    SandboxError::Setup(format!(
                        "writing /proc/{pid}/{f} of rbuild's user namespace: {e}"
                    ))
                })
            };
            proc("uid_map", format!("0 {uid} 1\n"))?;
            proc("setgroups", "deny\n".into())?;
            proc("gid_map", format!("0 {gid} 1\n"))
        }
    }
}

fn id_map_tool(tool: &str, pid: u32, own: u32, range: IdRange) -> Result<(), SandboxError> {
    let out = Command::new(tool)
        .args([pid, 0, own, 1, 1, range.start, range.count].map(|n| n.to_string()))
        .output()
        .map_err(|e| SandboxError::Setup(format!("running {tool} (package uidmap): {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hint = if stderr.contains("Operation not permitted") {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        map_tool_hint(tool, &status, setuid_root(tool).unwrap_or(false))
    } else {
        String::new()
    };
    Err(SandboxError::Setup(format!(
        "{tool} {pid} 0 {own} 1 1 {} {}: {}{hint}",
        range.start,
        range.count,
        stderr.trim()
    )))
}

/// Why the kernel refused `tool`'s write (EPERM), where a user can act on it. The tool gets
/// CAP_SETUID/CAP_SETGID from its setuid bit or a file capability: `no_new_privs` (docker's
/// `--security-opt no-new-privileges`, Kubernetes' `allowPrivilegeEscalation: false`)
/// disables both. Debian's setuid tools (built without libcap) write the map as root
/// instead of as the namespace's owner, and then the kernel also wants CAP_SYS_ADMIN, which
/// a docker container keeps out of the bounding set: file capabilities avoid that
/// (docs/rootless.md).
fn map_tool_hint(tool: &str, proc_status: &str, setuid_root: bool) -> String {
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let no_new_privs = field("NoNewPrivs") == Some("1");
    // CAP_SYS_ADMIN (21) out of the bounding set: no setuid program gets it (a container).
    let sys_admin_bounded = field("CapBnd")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .is_some_and(|bounding| bounding & (1 << 21) == 0);
    if no_new_privs {
        format!(
            " (no_new_privs is set, so {tool} cannot gain the capability it needs: run without \
             docker's `--security-opt no-new-privileges` or Kubernetes' \
             `allowPrivilegeEscalation: false`; docs/rootless.md)"
        )
    } else if setuid_root && sys_admin_bounded {
        let cap = if tool == "newgidmap" {
            "setgid"
        } else {
            "setuid"
        };
        format!(
            " (a setuid-root {tool} writes the map as root, and in a container without \
             CAP_SYS_ADMIN the kernel refuses that: give it a file capability instead, \
             `chmod u-s $(command -v {tool}) && setcap cap_{cap}=ep $(command -v {tool})`; \
             docs/rootless.md)"
        )
    } else {
        String::new()
    }
}

/// Whether `tool` is a setuid-root file.
fn setuid_root(tool: &str) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(find_tool(tool)?).ok()?;
    Some(meta.uid() == 0 && meta.mode() & 0o4000 != 0)
}

/// The child's half, first thing in main while the process has one thread: when started by
/// [`reexec`], unshares the user and mount namespaces and waits until the parent has written
/// the maps. Exits on failure (there is nobody else to tell).
pub fn enter_if_child() {
    let Some(fd) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    std::env::remove_var(CHILD_ENV);
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        let _ = writeln!(std::io::stderr(), "error: {what}: {e}");
        std::process::exit(1)
    };
    let Some(fd) = fd.to_str().and_then(|s| s.parse::<i32>().ok()) else {
        fail("entering the user namespace", &"bad socket fd");
    };
    // SAFETY: `fd` is the socket reexec left open for this process, used by nothing else.
    let mut sock = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let _ = rustix::io::fcntl_setfd(&sock, rustix::io::FdFlags::CLOEXEC);
    let flags = nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNS;
    if let Err(e) = nix::sched::unshare(flags) {
        let hint = "unprivileged user namespaces may be disabled (sysctl \
                    kernel.unprivileged_userns_clone, user.max_user_namespaces); in a docker \
                    container, run it with --security-opt seccomp=unconfined --security-opt \
                    apparmor=unconfined (docs/rootless.md)";
        fail("unsharing a user namespace", &format!("{e} ({hint})"));
    }
    let mut byte = [0u8; 1];
    if let Err(e) = sock
        .write_all(b"1")
        .and_then(|()| sock.read_exact(&mut byte))
    {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            // The parent could not write the maps and says why itself.
            std::process::exit(1);
        }
        fail("waiting for the id map of the user namespace", &e);
    }
    drop(sock);
    REEXECUTED.store(true, std::sync::atomic::Ordering::Relaxed);
    // The map makes this process's ids 0; the supplementary groups were the user's, which
    // mean nothing here (and are unmapped). setgroups is denied in single-id mode.
    let _ = nix::unistd::setgroups(&[]);
    // Mounts made here (the store's, the helpers') must not reach the host.
    let _ = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_tell_the_mode() {
        assert_eq!(from_maps("         0          0 4294967295\n", ""), None);
        assert_eq!(
            from_maps("0 1000 1\n1 100000 65536\n", "0 1000 1\n1 200000 65536\n"),
            Some(Mode::Range {
                uids: IdRange {
                    start: 100000,
                    count: 65536
                },
                gids: IdRange {
                    start: 200000,
                    count: 65536
                },
            })
        );
        assert!(matches!(
            from_maps("0 1000 1\n", "0 1000 1\n"),
            Some(Mode::SingleId { .. })
        ));
    }

    #[test]
    fn subordinate_range_by_name_or_uid() {
        let text = "bob:100000:65536\n1001:165536:65536\nzero:1:0\n";
        assert_eq!(
            subordinate_range(text, &["alice", "1001"]),
            Some(IdRange {
                start: 165536,
                count: 65536
            })
        );
        assert_eq!(
            subordinate_range(text, &["bob"]),
            Some(IdRange {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(subordinate_range(text, &["zero"]), None);
        assert_eq!(subordinate_range(text, &["carol"]), None);
    }

    #[test]
    fn a_refused_map_write_names_what_to_change() {
        let nnp = map_tool_hint("newuidmap", "Seccomp:\t0\nNoNewPrivs:\t1\n", true);
        assert!(nnp.contains("no-new-privileges"), "{nnp}");
        // docker's default capabilities: no CAP_SYS_ADMIN.
        let docker = "CapBnd:\t00000000a80425fb\nNoNewPrivs:\t0\n";
        let setuid = map_tool_hint("newgidmap", docker, true);
        assert!(setuid.contains("setcap cap_setgid=ep"), "{setuid}");
        assert_eq!(map_tool_hint("newuidmap", docker, false), "");
        let host = "CapBnd:\t000001ffffffffff\nNoNewPrivs:\t0\n";
        assert_eq!(map_tool_hint("newuidmap", host, true), "");
    }

    #[test]
    fn the_suggested_line_follows_the_ranges_handed_out() {
        assert_eq!(suggested_line_after("alice", ""), "alice:100000:65536");
        assert_eq!(
            suggested_line_after("alice", "bob:100000:65536\n# c\ncarol:300000:1000\n"),
            "alice:301000:65536"
        );
    }
}
