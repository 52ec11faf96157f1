//! A limit on the number of processes of each RUN step (`--pids-limit`, default 4096).
//!
//! A fork bomb in a step would otherwise take every pid of the host: the step runs as real
//! root, which RLIMIT_NPROC does not hold back. Each step gets a cgroup of its own under
//! `rbuild/` in the pids hierarchy (cgroup v2's unified one when it offers the pids
//! controller, else v1's `pids` one), with `pids.max` set; the helper moves itself into it
//! before it forks the step (spare.rs starts it ahead, so the move costs the step nothing),
//! so every process of the step is counted. The helper is one of them, so the cgroup allows
//! one more than the limit.
//!
//! The cgroup is removed when the step ends. A build killed with SIGKILL leaves its empty
//! cgroups behind; the next rbuild removes those whose process is gone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::SandboxError;

/// The directory, in the hierarchy that has the pids controller, that holds the steps'
/// cgroups; found and prepared once per process.
static PARENT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A step's cgroup; removed on drop.
#[derive(Debug)]
pub struct StepCgroup {
    dir: PathBuf,
}

impl StepCgroup {
    /// A new cgroup that lets at most `limit` processes of the step (plus its helper) run.
    pub fn create(limit: u32) -> Result<StepCgroup, SandboxError> {
        let parent = PARENT
            .get_or_init(prepare)
            .as_ref()
            .map_err(|e| SandboxError::Setup(e.clone()))?;
        let dir = parent.join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::Io { what, path, source }
        };
        std::fs::create_dir(&dir).map_err(io("creating cgroup", &dir))?;
        let cgroup = StepCgroup { dir };
        let max = cgroup.dir.join("pids.max");
        std::fs::write(&max, (u64::from(limit) + 1).to_string())
            .map_err(io("setting the step's pids limit in", &max))?;
        Ok(cgroup)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// In a helper: moves the calling process into the cgroup at `dir`.
pub fn join(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// In a helper that got no job (a spare nobody took): moves itself to the hierarchy's root
/// cgroup and removes `dir`, which nobody else will.
pub fn leave_and_remove(dir: &Path) {
    if let Some(root) = dir.parent().and_then(Path::parent) {
        let _ = std::fs::write(root.join("cgroup.procs"), std::process::id().to_string());
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        // The helper has been reaped, but the kernel takes a moment (~0.1 ms) to empty the
        // cgroup; short naps keep that off the step's time (5 ms naps cost 5 ms per step).
        for _ in 0..5000 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_micros(200))
                }
                _ => return,
            }
        }
    }
}

fn prepare() -> Result<PathBuf, String> {
    let unified = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(unified.join("cgroup.controllers"));
    let parent = if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "pids")) {
        let parent = unified.join("rbuild");
        mkdir(&parent)?;
        // v2 gives a child the pids files only when its parent delegates the controller.
        for dir in [unified, &parent] {
            let control = dir.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "pids") {
                std::fs::write(&control, "+pids").map_err(|e| {
                    format!("enabling the pids controller in {}: {e}", control.display())
                })?;
            }
        }
        parent
    } else if Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
        let parent = PathBuf::from("/sys/fs/cgroup/pids/rbuild");
        mkdir(&parent)?;
        parent
    } else {
        return Err(
            "limiting the processes of a RUN step needs the cgroup pids controller, \
             which this machine does not offer (no `pids` in \
             /sys/fs/cgroup/cgroup.controllers, no /sys/fs/cgroup/pids); \
             build with --pids-limit 0 to go without the limit"
                .to_string(),
        );
    };
    sweep(&parent);
    Ok(parent)
}

fn mkdir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(format!("creating cgroup {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Removes the cgroups of rbuild processes that are gone (killed before they could).
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .split_once('-')
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}
