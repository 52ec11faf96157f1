//! The RUN sandbox and filesystem jobs (design.md "RUN sandbox").
//!
//! The parent never touches namespaces: it re-executes its own binary (`/proc/self/exe
//! __sandbox-helper`) and sends it a JSON [`Job`] on stdin: a RUN step, or a filesystem job
//! ([`FsJob`], a typed job that a module above implements, fileop's COPY/ADD and WORKDIR),
//! whose answer or typed error comes back the same way. The helper is single-threaded,
//! unshares its namespaces, mounts the overlay and runs the step; every mount lives only
//! in the helper's mount namespace, so a killed build leaves none behind. The helper
//! answers with one JSON [`Reply`] on its stderr; for RUN its stdout carries the step's
//! merged stdout and stderr.
//!
//! Fork/exec in the helper uses `unsafe` (see helper.rs); everything here is safe code.

pub mod binfmt;
mod cgroup;
mod exe;
mod helper;
mod net;
pub mod root;
mod seccomp;
mod spare;
pub mod user;
pub mod userns;
pub mod wire;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rustix::fs::OFlags;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// argv[1] that makes the rbuild binary act as the sandbox helper.
pub const HELPER_ARG: &str = "__sandbox-helper";

/// PATH given to a step whose environment has none (BuildKit's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Prefix of the per-step scratch directory (the helper mounts a tmpfs on it).
pub const SCRATCH_PREFIX: &str = "rbuild-sandbox-";

/// An overlay: read-only layers plus a writable upper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    /// Layer directories, top-most first; empty for `FROM scratch`.
    pub lowers: Vec<PathBuf>,
    /// Receives the step's changes in overlay format (whiteouts, opaque xattrs).
    pub upper: PathBuf,
    /// Overlay's work directory: empty, on the same filesystem as `upper`.
    pub work: PathBuf,
}

/// The network a RUN step gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A namespace of the build's own whose only way out is slirp4netns (net.rs): the
    /// outside world, but neither the host's loopback nor its abstract sockets. The default.
    Isolated,
    /// The host's network namespace (`--network=host`).
    Host,
    /// A namespace with only loopback.
    None,
}

/// Makes the process `cmd` spawns receive SIGKILL when the spawning thread ends
/// (PR_SET_PDEATHSIG), so a tool rbuild runs for a step (ssh-agent, git) dies with a
/// killed rbuild instead of outliving it. Spawn from the step's own thread, which waits for
/// or kills the child before it returns.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure makes only raw, async-signal-safe syscalls
    // (prctl, getppid) and touches no memory but its copied `parent`.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // rbuild died before the prctl: nobody would send the signal.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// A RUN --mount (and the injected files' kin). Targets are container paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// `source` inside `from`, resolved beneath it (symlinks followed inside `from`, never
    /// out of it), on `target`. Writes go to a throwaway upper unless `readonly`.
    Bind {
        from: FsSource,
        source: String,
        target: String,
        readonly: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    /// A persistent directory in the store; created with uid/gid/mode when missing.
    Cache {
        source: PathBuf,
        target: String,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// A secret's value: the helper writes it on the step's tmpfs and binds it read-only,
    /// so it never touches a disk.
    Secret {
        data: SecretBytes,
        target: String,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// `RUN --mount=type=ssh`: a unix socket rbuild serves for the step (exec/ssh.rs),
    /// already carrying the mount's uid, gid and mode, bound on `target`. Only the
    /// bind mount enters the step's namespace; the stub is not part of the layer.
    Ssh {
        socket: PathBuf,
        target: String,
    },
}

/// A secret's bytes; `Debug` does not show them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

impl std::ops::Deref for SecretBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub rootfs: Overlay,
    pub argv: Vec<String>,
    /// Exactly the step's environment; PATH (and HOME, as runc does) are added if absent.
    pub env: Vec<String>,
    pub cwd: String,
    /// Raw USER: "", "name", "uid", "name:group", "uid:gid".
    pub user: String,
    pub hostname: String,
    pub network: Network,
    pub mounts: Vec<Mount>,
    /// Files injected for the step (heredoc scripts): path in the container, content,
    /// mode. They live on the step's tmpfs, bound read-only, never in the layer.
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Most processes the step may have at once (cgroup.rs); None: no limit.
    pub pids_limit: Option<u32>,
    /// `RUN --security=insecure`, once `--allow security.insecure` granted it.
    pub security: SecurityMode,
    /// `--add-host`: (name, address) lines appended to the step's /etc/hosts, which is
    /// bound read-only from the step's tmpfs and never reaches a layer.
    pub extra_hosts: Vec<(String, String)>,
    /// `--ulimit`: resource limits set on the step's first process before it execs.
    pub rlimits: Vec<Rlimit>,
}

/// How much of the sandbox a RUN step gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityMode {
    /// Docker's defaults: its capabilities, its seccomp profile, masked and read-only
    /// kernel files, /sys read-only.
    #[default]
    Sandbox,
    /// BuildKit's insecure mode (util/entitlements/security): every capability the helper
    /// holds (bounding, permitted, effective, inheritable and ambient, so a non-root USER
    /// gets them too), no seccomp filter, no masked or read-only paths, /sys read-write,
    /// and the host's kmsg, fuse, cuse, kvm, net/tun, loop-control and loop devices.
    Insecure,
}

/// One `--ulimit TYPE=SOFT:HARD`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: RlimitResource,
    /// `u64::MAX` is unlimited (docker's -1).
    pub soft: u64,
    pub hard: u64,
}

/// The resources `--ulimit` may name: docker's list (go-units), which leaves out `as`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RlimitResource {
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

impl RlimitResource {
    pub const ALL: [RlimitResource; 15] = [
        RlimitResource::Core,
        RlimitResource::Cpu,
        RlimitResource::Data,
        RlimitResource::Fsize,
        RlimitResource::Locks,
        RlimitResource::Memlock,
        RlimitResource::Msgqueue,
        RlimitResource::Nice,
        RlimitResource::Nofile,
        RlimitResource::Nproc,
        RlimitResource::Rss,
        RlimitResource::Rtprio,
        RlimitResource::Rttime,
        RlimitResource::Sigpending,
        RlimitResource::Stack,
    ];

    /// The name `--ulimit` uses (`nofile`).
    pub fn name(self) -> &'static str {
        match self {
            RlimitResource::Core => "core",
            RlimitResource::Cpu => "cpu",
            RlimitResource::Data => "data",
            RlimitResource::Fsize => "fsize",
            RlimitResource::Locks => "locks",
            RlimitResource::Memlock => "memlock",
            RlimitResource::Msgqueue => "msgqueue",
            RlimitResource::Nice => "nice",
            RlimitResource::Nofile => "nofile",
            RlimitResource::Nproc => "nproc",
            RlimitResource::Rss => "rss",
            RlimitResource::Rtprio => "rtprio",
            RlimitResource::Rttime => "rttime",
            RlimitResource::Sigpending => "sigpending",
            RlimitResource::Stack => "stack",
        }
    }

    pub fn from_name(name: &str) -> Option<RlimitResource> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// BuildKit's error for a step that did not succeed, `None` for exit code 0:
    /// `process "/bin/sh -c exit 3" did not complete successfully: exit code: 3`.
    /// A signal reads as runc reports it, 128 + signal.
    pub fn failure_message(&self, argv: &[String]) -> Option<String> {
        let code = match *self {
            Exit::Code(0) => return None,
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        };
        Some(format!(
            "process \"{}\" did not complete successfully: exit code: {code}",
            argv.join(" ")
        ))
    }
}

/// A read-only tree that a filesystem job can read from (COPY --from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsSource {
    /// An overlay of these layers, top-most first (a stage's or image's rootfs).
    Layers(Vec<PathBuf>),
    /// A host directory (a build context).
    Dir(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("starting the sandbox helper {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the sandbox helper: {0}")]
    Pipe(std::io::Error),
    /// The helper died or answered garbage; `stderr` is whatever it printed.
    #[error("sandbox helper failed ({status}): {stderr}")]
    Helper { status: String, stderr: String },
    /// Setting up the sandbox failed (a mount, pivot_root, ...).
    #[error("setting up the sandbox: {0}")]
    Setup(String),
    #[error("resolving user `{spec}`: {message}")]
    User { spec: String, message: String },
    /// The command could not be started (runc's `exec: "x": executable file not found`).
    #[error("{0}")]
    Exec(String),
}

/// A filesystem job: what the helper runs over a step's root, mounted at `root`, with the
/// job's sources mounted read-only at `sources` (same order). The binary's `main` names
/// the one type of job its helper runs ([`helper_main`]); its answer and its error are
/// typed both sides of the pipe.
pub trait FsJob: Serialize + DeserializeOwned + std::fmt::Debug {
    type Output: Serialize + DeserializeOwned + std::fmt::Debug;
    type Error: std::error::Error + Serialize + DeserializeOwned + std::fmt::Debug;
    fn run(self, root: &Path, sources: &[PathBuf]) -> Result<Self::Output, Self::Error>;
}

/// Parent -> helper. `J` is the filesystem job type ([`FsJob`]); a RUN step sends `Job<()>`.
#[derive(Debug, Serialize, Deserialize)]
enum Job<J> {
    Run {
        spec: Box<RunSpec>,
        scratch: PathBuf,
        parent: u32,
        /// The network namespace to join (/proc/PID/ns/net) for [`Network::Isolated`].
        netns: Option<PathBuf>,
    },
    Fs {
        rootfs: Overlay,
        sources: Vec<FsSource>,
        job: J,
        scratch: PathBuf,
        parent: u32,
    },
}

/// Helper -> parent: `O` and `E` are the filesystem job's answer and error.
#[derive(Debug, Serialize, Deserialize)]
enum Reply<O, E> {
    Run {
        exit: Exit,
        stubs: Vec<Stub>,
        parents: Vec<Parent>,
    },
    Fs(Result<O, E>),
    Failed(Failure),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Failure {
    Setup(String),
    User { spec: String, message: String },
    Exec(String),
}

impl From<Failure> for SandboxError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Setup(m) => SandboxError::Setup(m),
            Failure::User { spec, message } => SandboxError::User { spec, message },
            Failure::Exec(m) => SandboxError::Exec(m),
        }
    }
}

/// A path the sandbox created in the merged root only to mount something on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stub {
    /// Relative to the root.
    path: String,
    dir: bool,
    mode: u32,
}

/// A directory of the image above a stub: making the stub copied it up into the upper.
/// Its type and mode bits and owner as the image had them, seen by the helper through the
/// merged root before the step ran, so that the stub's removal can tell a copy that only
/// held stubs from one the step changed without looking through every lower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Parent {
    /// Relative to the root.
    path: String,
    /// st_mode, type bits included.
    mode: u32,
    uid: u32,
    gid: u32,
}

static HELPER_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Helpers currently running, for [`terminate_all`].
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// End what the sandbox keeps running between steps (the spare helper, the network
/// namespace's holder and slirp4netns) and wait for it: called before rbuild exits, so no
/// process of a build outlives it.
pub fn shutdown() {
    spare::stop();
    net::stop();
}

/// Kills every running step (for a SIGINT handler that wants a clean exit): each helper
/// gets SIGTERM, kills its step's PID namespace and returns, so `run` answers
/// `Exit::Signal(9)`. Without it, rbuild's own death still kills every step.
pub fn terminate_all() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    for pid in live.iter() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Uses `exe` instead of /proc/self/exe as the helper (for test binaries, which are not
/// rbuild). `exe` must dispatch [`HELPER_ARG`] to [`helper_main`]. First call wins.
pub fn set_helper_exe(exe: PathBuf) {
    let _ = HELPER_EXE.set(exe);
}

/// Entry point of the helper process; main() calls it first when argv[1] is [`HELPER_ARG`],
/// naming the filesystem jobs it runs (the parent's [`fs_job`] calls must use that type).
pub fn helper_main<J: FsJob>() -> ! {
    helper::main::<J>()
}

/// Runs a RUN step. A command that fails is `Ok(Exit::Code(n))`; errors are reserved for
/// a sandbox that could not run it. `output` receives the merged stdout/stderr as it comes.
/// The step's scratch directory goes in `scratch_dir` (the store's tmp session, so that
/// what a killed build leaves is swept with it), or the system temp dir with `None`.
///
/// The helper dies with the calling thread (PR_SET_PDEATHSIG), so call this from a thread
/// that lives until it returns (it blocks, so any caller does).
pub fn run(
    spec: &RunSpec,
    scratch_dir: Option<&Path>,
    output: &mut dyn FnMut(&[u8]),
) -> Result<Exit, SandboxError> {
    for m in &spec.mounts {
        if let Mount::Cache {
            source,
            uid,
            gid,
            mode,
            ..
        } = m
        {
            create_cache_dir(source, *uid, *gid, *mode)?;
        }
    }
    let exe = helper_exe()?;
    let netns = match spec.network {
        Network::Isolated => Some(net::shared_namespace(&exe)?),
        Network::Host | Network::None => None,
    };
    let helper = spare::take(exe, spare::Want::Run(spec.pids_limit))?;
    let scratch = Scratch::new(scratch_dir)?;
    let job: Job<()> = Job::Run {
        spec: Box::new(spec.clone()),
        scratch: scratch.0.path().to_path_buf(),
        parent: std::process::id(),
        netns,
    };
    match call_helper::<(), (), ()>(helper, &job, output)? {
        Reply::Run {
            exit,
            stubs,
            parents,
        } => {
            remove_stubs(&spec.rootfs, &stubs, &parents)?;
            Ok(exit)
        }
        Reply::Failed(f) => Err(f.into()),
        other => Err(unexpected(other)),
    }
}

/// Runs `job` in a helper over `rootfs` mounted in a private mount namespace, with
/// `sources` mounted read-only; `scratch_dir` as for [`run`]. The outer error is the
/// sandbox's, the inner result the job's own.
pub fn fs_job<J: FsJob>(
    scratch_dir: Option<&Path>,
    rootfs: &Overlay,
    sources: &[FsSource],
    job: J,
) -> Result<Result<J::Output, J::Error>, SandboxError> {
    let scratch = Scratch::new(scratch_dir)?;
    let job = Job::Fs {
        rootfs: rootfs.clone(),
        sources: sources.to_vec(),
        job,
        scratch: scratch.0.path().to_path_buf(),
        parent: std::process::id(),
    };
    let helper = spare::take(helper_exe()?, spare::Want::Any)?;
    match call_helper::<J, J::Output, J::Error>(helper, &job, &mut |_| {})? {
        Reply::Fs(result) => Ok(result),
        Reply::Failed(f) => Err(f.into()),
        other => Err(unexpected(other)),
    }
}

fn unexpected<O: std::fmt::Debug, E: std::fmt::Debug>(reply: Reply<O, E>) -> SandboxError {
    SandboxError::Helper {
        status: "unexpected reply".into(),
        stderr: format!("{reply:?}"),
    }
}

/// The per-step scratch directory; the helper mounts a tmpfs on it in its own namespace,
/// so on the host it stays an empty directory, removed on drop.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(dir: Option<&Path>) -> Result<Scratch, SandboxError> {
        let parent = dir
            .filter(|d| d.is_dir())
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        tempfile::Builder::new()
            .prefix(SCRATCH_PREFIX)
            .tempdir_in(&parent)
            .map(Scratch)
            .map_err(|source| SandboxError::Io {
                what: "creating scratch dir in",
                path: parent,
                source,
            })
    }
}

fn create_cache_dir(dir: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), SandboxError> {
    if dir.is_dir() {
        return Ok(());
    }
    let io = |source| SandboxError::Io {
        what: "creating cache dir",
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io)
}

/// The executable helpers start from: rbuild itself (or [`set_helper_exe`]'s), sealed.
fn helper_exe() -> Result<PathBuf, SandboxError> {
    let exe = HELPER_EXE
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    exe::sealed(&exe)
}

/// Gives `helper` its job and waits for its answer; the helper has exited when this returns
/// (its cgroup, if any, is removed then).
fn call_helper<J: Serialize, O: DeserializeOwned, E: DeserializeOwned>(
    helper: spare::Helper,
    job: &Job<J>,
    output: &mut dyn FnMut(&[u8]),
) -> Result<Reply<O, E>, SandboxError> {
    let spare::Helper { mut child, cgroup } = helper;
    let pid = child.id() as i32;
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    let reply = talk(&mut child, job, output);
    if reply.is_err() {
        // Never leave a helper (or a zombie) behind an error.
        let _ = child.kill();
        let _ = child.wait();
    }
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
    drop(cgroup);
    reply
}

fn talk<J: Serialize, O: DeserializeOwned, E: DeserializeOwned>(
    child: &mut std::process::Child,
    job: &Job<J>,
    output: &mut dyn FnMut(&[u8]),
) -> Result<Reply<O, E>, SandboxError> {
    let bytes = serde_json::to_vec(job).map_err(|e| SandboxError::Pipe(e.into()))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // The job may exceed a pipe buffer (injected files) while the reply is being
    // produced only after the job is read, so writing first cannot deadlock; the
    // helper's stderr is read on a thread so a chatty failure cannot block it either.
    let write_result = stdin.write_all(&bytes);
    drop(stdin);
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut buf = vec![0u8; 64 * 1024];
    let read_result = loop {
        match stdout.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => output(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let status = child.wait().map_err(SandboxError::Pipe)?;
    let err = err_thread.join().unwrap_or_default();
    read_result.map_err(SandboxError::Pipe)?;
    // A helper that died before reading the job reports through its status and stderr.
    let last = err
        .split(|&b| b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    match serde_json::from_slice::<Reply<O, E>>(last) {
        Ok(reply) if status.success() => Ok(reply),
        _ => {
            let _ = write_result;
            Err(SandboxError::Helper {
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&err).trim().to_string(),
            })
        }
    }
}

/// Removes the mountpoints the sandbox created from the upper, so the layer holds only the
/// command's changes: a stub goes when it is still what the sandbox made (an empty dir or
/// empty file with its mode); then directories that only got copied up to hold a stub go
/// when they are empty, not opaque and unchanged in mode and owner from what the image had
/// (`parents`, which the helper saw before the step: no lookup through the lowers, whose
/// number grows with the Dockerfile).
///
/// The step has had the upper to itself: any path in it may now be a symlink to anywhere
/// (`mv /n /n2 && ln -s /host/dir /n` under a stub at /n/x; BuildKit's CVE-2024-23652).
/// So every lookup here goes beneath the upper without following a link ([`UpperEntry`]),
/// and a path that no longer resolves that way is left alone.
fn remove_stubs(rootfs: &Overlay, stubs: &[Stub], parents: &[Parent]) -> Result<(), SandboxError> {
    let upper = root::Root::open(&rootfs.upper).map_err(|source| SandboxError::Io {
        what: "opening the upper dir",
        path: rootfs.upper.clone(),
        source,
    })?;
    let mut above: Vec<String> = Vec::new();
    // Deepest first, so a stub dir is empty once its stub children are gone.
    let mut sorted: Vec<&Stub> = stubs.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.path.matches('/').count()));
    for stub in sorted {
        if let Some(entry) = UpperEntry::open(&upper, &stub.path) {
            let same_mode = entry.stat.st_mode & 0o7777 == stub.mode;
            let untouched = if stub.dir {
                same_mode && entry.dir_state() == Some(DirState::EmptyPlain)
            } else {
                same_mode && entry.kind().is_file() && entry.stat.st_size == 0
            };
            if untouched {
                entry.remove(rootfs)?;
            }
        }
        let mut rel = stub.path.as_str();
        while let Some((parent, _)) = rel.rsplit_once('/') {
            if !above.iter().any(|q| q == parent) && !stubs.iter().any(|s| s.path == parent) {
                above.push(parent.to_string());
            }
            rel = parent;
        }
    }
    above.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for parent in above {
        let Some(entry) = UpperEntry::open(&upper, &parent) else {
            continue;
        };
        if entry.dir_state() != Some(DirState::EmptyPlain) {
            continue;
        }
        let unchanged = parents.iter().any(|p| {
            p.path == parent
                && rustix::fs::FileType::from_raw_mode(p.mode).is_dir()
                && p.mode == entry.stat.st_mode
                && p.uid == entry.stat.st_uid
                && p.gid == entry.stat.st_gid
        });
        if unchanged {
            entry.remove(rootfs)?;
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum DirState {
    /// Empty and not opaque: nothing of the step's in it.
    EmptyPlain,
    Other,
}

/// A path in an upper dir, reached without following any link: its parent directory open,
/// its name and what it is.
struct UpperEntry {
    parent: std::os::fd::OwnedFd,
    name: String,
    path: String,
    stat: rustix::fs::Stat,
}

impl UpperEntry {
    fn open(upper: &root::Root, rel: &str) -> Option<UpperEntry> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent = upper
            .open_beneath(dir, OFlags::RDONLY | OFlags::DIRECTORY)
            .ok()?;
        let stat = rustix::fs::statat(&parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(UpperEntry {
            parent,
            name: name.to_string(),
            path: rel.to_string(),
            stat,
        })
    }

    fn kind(&self) -> rustix::fs::FileType {
        rustix::fs::FileType::from_raw_mode(self.stat.st_mode)
    }

    /// For a directory: whether it is empty and carries no opaque mark. None otherwise.
    fn dir_state(&self) -> Option<DirState> {
        if !self.kind().is_dir() {
            return None;
        }
        let fd = rustix::fs::openat(
            &self.parent,
            self.name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()?;
        let mut buf = [0u8; 4];
        if rustix::fs::fgetxattr(&fd, userns::opaque_xattr(), &mut buf).is_ok() {
            return Some(DirState::Other);
        }
        let mut dir = rustix::fs::Dir::read_from(&fd).ok()?;
        let empty = dir.all(|e| e.is_ok_and(|e| matches!(e.file_name().to_bytes(), b"." | b"..")));
        Some(if empty {
            DirState::EmptyPlain
        } else {
            DirState::Other
        })
    }

    /// Removes the entry without touching its parent's timestamps (BuildKit's stub cleaner
    /// does the same for reproducible layers, moby/buildkit#3148).
    fn remove(&self, rootfs: &Overlay) -> Result<(), SandboxError> {
        let io = |source: rustix::io::Errno| SandboxError::Io {
            what: "removing mount stub",
            path: rootfs.upper.join(&self.path),
            source: source.into(),
        };
        let times = rustix::fs::fstat(&self.parent).map_err(io)?;
        let flags = if self.kind().is_dir() {
            rustix::fs::AtFlags::REMOVEDIR
        } else {
            rustix::fs::AtFlags::empty()
        };
        rustix::fs::unlinkat(&self.parent, self.name.as_str(), flags).map_err(io)?;
        let ts = |sec: i64, nsec: i64| rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        };
        rustix::fs::futimens(
            &self.parent,
            &rustix::fs::Timestamps {
                last_access: ts(times.st_atime as i64, times.st_atime_nsec as i64),
                last_modification: ts(times.st_mtime as i64, times.st_mtime_nsec as i64),
            },
        )
        .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn failure_message_is_buildkits() {
        let argv: Vec<String> = ["/bin/sh", "-c", "exit 3"].map(String::from).to_vec();
        assert_eq!(
            Exit::Code(3).failure_message(&argv).unwrap(),
            "process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 3"
        );
        assert_eq!(
            Exit::Signal(9).failure_message(&argv).unwrap(),
            "process \"/bin/sh -c exit 3\" did not complete successfully: exit code: 137"
        );
        assert_eq!(Exit::Code(0).failure_message(&argv), None);
    }

    #[test]
    fn stubs_go_but_changes_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("proc")).unwrap();
        std::fs::create_dir_all(upper.join("run/secrets")).unwrap();
        std::fs::write(upper.join("etc/hosts"), "").unwrap();
        std::fs::write(upper.join("run/keep"), "x").unwrap();
        std::fs::write(upper.join("written"), "").unwrap();
        let mode = |p: &str, m: u32| {
            std::fs::set_permissions(upper.join(p), std::fs::Permissions::from_mode(m)).unwrap()
        };
        let lmode = std::fs::metadata(lower.join("etc")).unwrap().mode() & 0o7777;
        mode("etc", lmode);
        mode("proc", 0o755);
        mode("run", 0o755);
        mode("run/secrets", 0o755);
        mode("etc/hosts", 0o644);
        mode("written", 0o600); // a stub path the command replaced with its own file
        let stub = |path: &str, dir: bool, mode: u32| Stub {
            path: path.into(),
            dir,
            mode,
        };
        let rootfs = Overlay {
            lowers: vec![lower],
            upper: upper.clone(),
            work: tmp.path().join("work"),
        };
        let stubs = [
            stub("proc", true, 0o755),
            stub("etc/hosts", false, 0o644),
            stub("run", true, 0o755),
            stub("run/secrets", true, 0o755),
            stub("written", false, 0o644),
        ];
        let etc = std::fs::metadata(rootfs.lowers[0].join("etc")).unwrap();
        let parents = [Parent {
            path: "etc".into(),
            mode: etc.mode(),
            uid: etc.uid(),
            gid: etc.gid(),
        }];
        remove_stubs(&rootfs, &stubs, &parents).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&upper)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // etc was only copied up for the stub; run holds a real file; written changed.
        assert_eq!(left, ["run", "written"]);
        assert!(upper.join("run/keep").exists() && !upper.join("run/secrets").exists());
    }
}
