//! Helpers are started one step ahead.
//!
//! Starting a helper costs an exec of rbuild and, with a pids limit, moving it into its
//! step's cgroup. In cgroup v1 that move waits for an RCU grace period (the kernel's
//! threadgroup lock is a per-cpu rwsem whose writers call synchronize_rcu): 5-20 ms a step
//! on the test machines, which doubled the time of a small RUN. So one helper always waits
//! ahead, started and moved into a fresh cgroup while the previous step runs; it reads its
//! job from stdin when one comes.
//!
//! One thread, living as long as rbuild, starts every helper: PR_SET_PDEATHSIG fires when
//! the thread that forked a process ends, so a helper started by a stage's thread would die
//! with that thread. [`stop`] ends the spare and waits for it before rbuild exits; a spare
//! of a process that dies first sees its stdin close, and removes its cgroup itself
//! (helper.rs).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use super::cgroup::StepCgroup;
use super::SandboxError;

/// The helper argument that names the cgroup a helper moves itself into before it reads
/// its job.
pub const CGROUP_ARG: &str = "--cgroup";

/// A started helper, waiting for its job.
pub struct Helper {
    pub child: Child,
    /// Removed when this is dropped, after the helper has exited.
    pub cgroup: Option<StepCgroup>,
}

/// What a caller needs: a helper for a RUN step with this pids limit, or any helper (a
/// filesystem job runs nothing of the image's, so any limit will do).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Want {
    Run(Option<u32>),
    Any,
}

enum Request {
    Take(Want, Sender<Result<Helper, SandboxError>>),
    /// End the spare, wait for it, and answer: rbuild is about to exit.
    Stop(Sender<()>),
}

static SPAWNER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();

/// A helper started from `exe`, ready for a job.
pub fn take(exe: PathBuf, want: Want) -> Result<Helper, SandboxError> {
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("rbuild-helpers".into())
            .spawn(move || serve(exe, rx))
            .expect("starting the helper thread");
        Mutex::new(tx)
    });
    let (reply, answer) = channel();
    let gone = || SandboxError::Setup("the thread that starts sandbox helpers is gone".into());
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Request::Take(want, reply))
        .map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// End the waiting spare and wait for it to exit (its cgroup removed), so that nothing of
/// rbuild's outlives it. Later [`take`]s fail.
pub fn stop() {
    let Some(spawner) = SPAWNER.get() else {
        return;
    };
    let (done, stopped) = channel();
    let sent = spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(Request::Stop(done));
    if sent.is_ok() {
        let _ = stopped.recv();
    }
}

fn serve(exe: PathBuf, requests: Receiver<Request>) {
    // The spare and the pids limit it was started for.
    let mut spare: Option<(Option<u32>, Result<Helper, SandboxError>)> = None;
    for request in requests {
        let (want, reply) = match request {
            Request::Take(want, reply) => (want, reply),
            Request::Stop(done) => {
                if let Some((_, helper)) = spare.take() {
                    discard(helper);
                }
                let _ = done.send(());
                return;
            }
        };
        let (helper, limit) = match (spare.take(), want) {
            (Some((limit, helper)), Want::Any) => (helper, limit),
            (Some((limit, helper)), Want::Run(wanted)) if limit == wanted => (helper, limit),
            (Some((_, unwanted)), Want::Run(wanted)) => {
                discard(unwanted);
                (start(&exe, wanted), wanted)
            }
            (None, Want::Run(wanted)) => (start(&exe, wanted), wanted),
            (None, Want::Any) => (start(&exe, None), None),
        };
        let _ = reply.send(helper);
        spare = Some((limit, start(&exe, limit)));
    }
}

fn start(exe: &Path, pids_limit: Option<u32>) -> Result<Helper, SandboxError> {
    // Rootless, nobody delegated a cgroup to the user: no pids limit (docs/rootless.md).
    let pids_limit = pids_limit.filter(|_| !super::userns::in_user_namespace());
    let cgroup = pids_limit.map(StepCgroup::create).transpose()?;
    let args: &[&OsStr] = match &cgroup {
        Some(c) => &[CGROUP_ARG.as_ref(), c.dir().as_os_str()],
        None => &[],
    };
    Ok(Helper {
        child: spawn_helper(exe, args)?,
        cgroup,
    })
}

/// Starts the helper executable with `args` after [`super::HELPER_ARG`], its stdin,
/// stdout and stderr piped to us (the job in, the answer out).
pub fn spawn_helper(exe: &Path, args: &[&OsStr]) -> Result<Child, SandboxError> {
    Command::new(exe)
        .arg(super::HELPER_ARG)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SandboxError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })
}

fn discard(helper: Result<Helper, SandboxError>) {
    if let Ok(mut h) = helper {
        let _ = h.child.kill();
        let _ = h.child.wait();
    }
}
