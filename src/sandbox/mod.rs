//! The RUN sandbox and filesystem jobs (design.md "RUN sandbox").
//!
//! The parent never touches namespaces: it re-executes its own binary (`/proc/self/exe
//! __sandbox-helper`) and sends it a JSON [`Job`] on stdin. The helper is single-threaded,
//! unshares its namespaces, mounts the overlay and runs the step; every mount lives only
//! in the helper's mount namespace, so a killed build leaves none behind. The helper
//! answers with one JSON [`Reply`] on its stderr; for RUN its stdout carries the step's
//! merged stdout and stderr.
//!
//! Fork/exec in the helper uses `unsafe` (see helper.rs); everything here is safe code.

mod helper;
pub mod root;
pub mod user;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    Host,
    None,
}

/// A RUN --mount (and the injected files' kin). Targets are container paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    Bind {
        source: PathBuf,
        target: String,
        readonly: bool,
    },
    /// A writable bind whose writes are discarded: an overlay of `lowers` (top-most first)
    /// with a throwaway upper on the step's tmpfs.
    BindDiscard {
        lowers: Vec<PathBuf>,
        target: String,
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
    /// A host file, copied onto the step's tmpfs and bound read-only.
    Secret {
        source: PathBuf,
        target: String,
        uid: u32,
        gid: u32,
        mode: u32,
    },
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
    #[error("filesystem job `{handler}`: {message}")]
    Handler { handler: String, message: String },
}

/// Parent -> helper.
#[derive(Debug, Serialize, Deserialize)]
enum Job {
    Run {
        spec: RunSpec,
        scratch: PathBuf,
        parent: u32,
    },
    Fs {
        rootfs: Overlay,
        sources: Vec<FsSource>,
        job: Value,
        handler: String,
        scratch: PathBuf,
        parent: u32,
    },
}

/// Helper -> parent.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Run { exit: Exit, stubs: Vec<Stub> },
    Fs(Result<Value, String>),
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

static HELPER_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Helpers currently running, for [`terminate_all`].
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

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

/// Where scratch directories go (None: the system temp dir).
static SCRATCH_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Put the per-step scratch directories under `dir` (the store's tmp session, so that the
/// empty directory a killed build leaves behind is swept with the session), or back in the
/// system temp dir with `None`.
pub fn set_scratch_dir(dir: Option<PathBuf>) {
    *SCRATCH_DIR.lock().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// Uses `exe` instead of /proc/self/exe as the helper (for test binaries, which are not
/// rbuild). `exe` must dispatch [`HELPER_ARG`] to [`helper_main`]. First call wins.
pub fn set_helper_exe(exe: PathBuf) {
    let _ = HELPER_EXE.set(exe);
}

/// Entry point of the helper process; main() calls it first when argv[1] is [`HELPER_ARG`].
pub fn helper_main() -> ! {
    helper::main()
}

/// Runs a RUN step. A command that fails is `Ok(Exit::Code(n))`; errors are reserved for
/// a sandbox that could not run it. `output` receives the merged stdout/stderr as it comes.
///
/// The helper dies with the calling thread (PR_SET_PDEATHSIG), so call this from a thread
/// that lives until it returns (it blocks, so any caller does).
pub fn run(spec: &RunSpec, output: &mut dyn FnMut(&[u8])) -> Result<Exit, SandboxError> {
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
    let scratch = Scratch::new()?;
    let job = Job::Run {
        spec: spec.clone(),
        scratch: scratch.0.path().to_path_buf(),
        parent: std::process::id(),
    };
    match call_helper(&job, output)? {
        Reply::Run { exit, stubs } => {
            remove_stubs(&spec.rootfs, &stubs)?;
            Ok(exit)
        }
        Reply::Failed(f) => Err(f.into()),
        other => Err(unexpected(other)),
    }
}

/// Runs the filesystem job `handler_name` (see [`fs_dispatch`]) over `rootfs` mounted in a
/// private mount namespace, with `sources` mounted read-only; returns the handler's answer.
pub fn fs_job(
    rootfs: &Overlay,
    sources: &[FsSource],
    job: Value,
    handler_name: &str,
) -> Result<Value, SandboxError> {
    let scratch = Scratch::new()?;
    let job = Job::Fs {
        rootfs: rootfs.clone(),
        sources: sources.to_vec(),
        job,
        handler: handler_name.to_string(),
        scratch: scratch.0.path().to_path_buf(),
        parent: std::process::id(),
    };
    match call_helper(&job, &mut |_| {})? {
        Reply::Fs(Ok(v)) => Ok(v),
        Reply::Fs(Err(message)) => Err(SandboxError::Handler {
            handler: handler_name.to_string(),
            message,
        }),
        Reply::Failed(f) => Err(f.into()),
        other => Err(unexpected(other)),
    }
}

/// Filesystem job handlers, run inside the helper with the merged root mounted at
/// `merged_root` and the job's sources at `sources` (same order). The integrator adds arms
/// (e.g. the copier).
pub fn fs_dispatch(
    handler_name: &str,
    job: Value,
    merged_root: &Path,
    sources: &[PathBuf],
) -> Result<Value, String> {
    match handler_name {
        "mkdir" => mkdir_handler(job, merged_root),
        "workdir" => workdir_handler(job, merged_root),
        "copy" => {
            let job: crate::context::copier::CopyJob =
                serde_json::from_value(job).map_err(|e| format!("bad job: {e}"))?;
            let source = sources.first().ok_or("the copy job has no source")?;
            let stats = crate::context::copier::copy(&job, source, merged_root)
                .map_err(|e| e.to_string())?;
            serde_json::to_value(stats).map_err(|e| e.to_string())
        }
        other => Err(format!("unknown filesystem job handler `{other}`")),
    }
}

/// Input of the built-in "mkdir" handler (WORKDIR): `mkdir -p` inside the root, symlinks
/// resolved inside it, created directories owned by uid:gid.
#[derive(Debug, Serialize, Deserialize)]
pub struct MkdirJob {
    pub path: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default = "default_dir_mode")]
    pub mode: u32,
}

fn default_dir_mode() -> u32 {
    0o755
}

/// Answer of "mkdir": the root-relative paths it created, parents first.
#[derive(Debug, Serialize, Deserialize)]
pub struct MkdirResult {
    pub created: Vec<String>,
}

fn mkdir_handler(job: Value, merged_root: &Path) -> Result<Value, String> {
    let job: MkdirJob = serde_json::from_value(job).map_err(|e| format!("bad job: {e}"))?;
    let root = root::Root::open(merged_root)
        .map_err(|e| format!("opening {}: {e}", merged_root.display()))?;
    let mut created = Vec::new();
    root.ensure(
        &job.path,
        root::Kind::Dir,
        job.mode,
        Some((job.uid, job.gid)),
        &mut created,
    )
    .map_err(|e| format!("mkdir {}: {e}", job.path))?;
    serde_json::to_value(MkdirResult { created }).map_err(|e| e.to_string())
}

/// Input of the "workdir" handler: WORKDIR creates its directory owned by the stage's USER
/// (names resolved from the image's passwd and group), as BuildKit does.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkdirJob {
    pub path: String,
    pub user: String,
}

fn workdir_handler(job: Value, merged_root: &Path) -> Result<Value, String> {
    let job: WorkdirJob = serde_json::from_value(job).map_err(|e| format!("bad job: {e}"))?;
    let root = root::Root::open(merged_root)
        .map_err(|e| format!("opening {}: {e}", merged_root.display()))?;
    let read = |p: &str| {
        root.read(p)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let (passwd, group) = (read("/etc/passwd"), read("/etc/group"));
    let user =
        user::resolve(&job.user, passwd.as_deref(), group.as_deref()).map_err(|e| e.to_string())?;
    let mut created = Vec::new();
    root.ensure(
        &job.path,
        root::Kind::Dir,
        default_dir_mode(),
        Some((user.uid, user.gid)),
        &mut created,
    )
    .map_err(|e| format!("mkdir {}: {e}", job.path))?;
    serde_json::to_value(MkdirResult { created }).map_err(|e| e.to_string())
}

fn unexpected(reply: Reply) -> SandboxError {
    SandboxError::Helper {
        status: "unexpected reply".into(),
        stderr: format!("{reply:?}"),
    }
}

/// The per-step scratch directory; the helper mounts a tmpfs on it in its own namespace,
/// so on the host it stays an empty directory, removed on drop.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Result<Scratch, SandboxError> {
        let parent = SCRATCH_DIR
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
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

fn call_helper(job: &Job, output: &mut dyn FnMut(&[u8])) -> Result<Reply, SandboxError> {
    let exe = HELPER_EXE
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let mut child = Command::new(&exe)
        .arg(HELPER_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SandboxError::Spawn {
            exe: exe.clone(),
            source,
        })?;
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
    reply
}

fn talk(
    child: &mut std::process::Child,
    job: &Job,
    output: &mut dyn FnMut(&[u8]),
) -> Result<Reply, SandboxError> {
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
    match serde_json::from_slice::<Reply>(last) {
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
/// when they are empty, not opaque and unchanged in mode and owner.
fn remove_stubs(rootfs: &Overlay, stubs: &[Stub]) -> Result<(), SandboxError> {
    let upper = &rootfs.upper;
    let mut parents: Vec<String> = Vec::new();
    // Deepest first, so a stub dir is empty once its stub children are gone.
    let mut sorted: Vec<&Stub> = stubs.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.path.matches('/').count()));
    for stub in sorted {
        let p = upper.join(&stub.path);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let same_mode = meta.mode() & 0o7777 == stub.mode;
        let untouched = if stub.dir {
            meta.is_dir() && same_mode && is_empty_dir(&p) && !is_opaque(&p)
        } else {
            meta.is_file() && same_mode && meta.len() == 0
        };
        if untouched {
            remove_keeping_parent_times(&p, stub.dir)?;
        }
        let mut rel = stub.path.as_str();
        while let Some((parent, _)) = rel.rsplit_once('/') {
            if !parents.iter().any(|q| q == parent) && !stubs.iter().any(|s| s.path == parent) {
                parents.push(parent.to_string());
            }
            rel = parent;
        }
    }
    parents.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for parent in parents {
        let p = upper.join(&parent);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !meta.is_dir() || !is_empty_dir(&p) || is_opaque(&p) {
            continue;
        }
        let lower = rootfs
            .lowers
            .iter()
            .find_map(|l| std::fs::symlink_metadata(l.join(&parent)).ok());
        let unchanged = lower.is_some_and(|l| {
            l.is_dir() && l.mode() == meta.mode() && l.uid() == meta.uid() && l.gid() == meta.gid()
        });
        if unchanged {
            remove_keeping_parent_times(&p, true)?;
        }
    }
    Ok(())
}

/// Removes a stub without touching its parent's timestamps (BuildKit's stub cleaner does
/// the same for reproducible layers, moby/buildkit#3148).
fn remove_keeping_parent_times(p: &Path, dir: bool) -> Result<(), SandboxError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxError::Io {
            what: "removing mount stub",
            path,
            source,
        }
    };
    let parent = p.parent().unwrap_or(p);
    let times = std::fs::metadata(parent).map_err(io(parent))?;
    if dir {
        std::fs::remove_dir(p).map_err(io(p))?;
    } else {
        std::fs::remove_file(p).map_err(io(p))?;
    }
    let times = std::fs::FileTimes::new()
        .set_accessed(times.accessed().map_err(io(parent))?)
        .set_modified(times.modified().map_err(io(parent))?);
    std::fs::File::open(parent)
        .and_then(|f| f.set_times(times))
        .map_err(io(parent))
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

fn is_opaque(p: &Path) -> bool {
    let mut buf = [0u8; 4];
    let path = p.to_path_buf();
    rustix::fs::lgetxattr(&path, "trusted.overlay.opaque", &mut buf).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        remove_stubs(&rootfs, &stubs).unwrap();
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
