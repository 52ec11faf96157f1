//! The network RUN steps get by default: a namespace of their own with a way out.
//!
//! Sharing the host's network namespace would let a step reach every service on the
//! host's loopback and every abstract unix socket (the containerd-shim CVE-2020-15257
//! class). BuildKit gives each step a bridged namespace; rbuild, having no daemon and no
//! bridge, gives them a namespace whose only way out is slirp4netns: a userspace TCP/IP
//! stack that makes outgoing connections as ordinary sockets of the host, the way rootless
//! docker and podman do. `--disable-host-loopback` stops it from forwarding to the host's
//! 127.0.0.1; its built-in resolver at [`DNS`] forwards to the host's nameservers.
//!
//! Starting slirp4netns takes some 30 ms, so one namespace serves every step of the
//! process: a holder process (the helper, started as `__sandbox-helper netns`) creates it
//! and keeps it alive, and each step's helper joins it with setns. Steps of the same build
//! see each other's sockets only while they run in parallel; nothing of the host's.
//!
//! Nothing outlives rbuild: [`stop`] ends both and waits for them before rbuild exits, and
//! should rbuild die first, the holder reads its stdin and slirp4netns its exit fd, whose
//! other ends rbuild holds, so they see end-of-file and exit.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use super::SandboxError;

/// The argument after [`super::HELPER_ARG`] that makes the helper a namespace holder.
pub const HOLDER_ARG: &str = "netns";

/// slirp4netns's gateway (the host) and resolver, in its default 10.0.2.0/24.
pub const DNS: &str = "10.0.2.3";

/// The shared namespace, made on first use.
static SHARED: Mutex<Option<Shared>> = Mutex::new(None);

struct Shared {
    /// Where steps join: /proc/<holder>/ns/net. The holder is never waited for while it is
    /// in use, so its pid cannot be reused; if it dies the path stops resolving.
    path: PathBuf,
    holder: Child,
    /// Its end of the holder's stdin: dropped, the holder exits.
    holder_stdin: ChildStdin,
    slirp: Child,
    /// The write end of slirp4netns's exit fd.
    slirp_exit: OwnedFd,
}

/// The path of the build's shared network namespace (/proc/PID/ns/net), starting it the
/// first time.
pub fn shared_namespace(helper_exe: &std::path::Path) -> Result<PathBuf, SandboxError> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = shared.as_ref() {
        if s.path.exists() {
            return Ok(s.path.clone());
        }
    }
    let s = start(helper_exe)?;
    let path = s.path.clone();
    *shared = Some(s);
    Ok(path)
}

/// End the shared namespace's holder and slirp4netns and wait for both.
pub fn stop() {
    let shared = SHARED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut s) = shared {
        drop((s.holder_stdin, s.slirp_exit));
        for child in [&mut s.holder, &mut s.slirp] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn setup(message: String) -> SandboxError {
    SandboxError::Setup(format!("starting the build's network: {message}"))
}

fn start(helper_exe: &std::path::Path) -> Result<Shared, SandboxError> {
    let mut holder = super::spare::spawn_helper(helper_exe, &[HOLDER_ARG.as_ref()])?;
    let stdin = holder.stdin.take().expect("stdin is piped");
    let mut ready = String::new();
    let _ = BufReader::new(holder.stdout.take().expect("stdout is piped")).read_line(&mut ready);
    if ready.trim() != "ready" {
        let mut err = String::new();
        if let Some(mut e) = holder.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = holder.kill();
        let _ = holder.wait();
        return Err(setup(format!(
            "the namespace holder failed: {}",
            err.trim()
        )));
    }
    let pid = holder.id();
    let (slirp, slirp_exit) = match startslirp(pid) {
        Ok(s) => s,
        Err(e) => {
            drop(stdin);
            let _ = holder.wait();
            return Err(e);
        }
    };
    Ok(Shared {
        path: PathBuf::from(format!("/proc/{pid}/ns/net")),
        holder,
        holder_stdin: stdin,
        slirp,
        slirp_exit,
    })
}

/// Starts slirp4netns on the holder's namespace and waits until it has configured it.
fn startslirp(pid: u32) -> Result<(Child, OwnedFd), SandboxError> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| setup(format!("creating a pipe: {e}")))?;
    let (exit_r, exit_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| setup(format!("creating a pipe: {e}")))?;
    let (ready_fd, exit_fd) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
    let mut cmd = Command::new("slirp4netns");
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",
        "--enable-seccomp",
        "--ready-fd=3",
        "--exit-fd=4",
        &pid.to_string(),
        "tap0",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only makes raw syscalls (dup2, unshare,
    // mount), which are async-signal-safe. dup2 gives the two pipe ends the numbers
    // slirp4netns is told (and clears close-on-exec on the copies). The mount namespace:
    // slirp4netns's --enable-sandbox makes only `/` private before it detaches the old
    // root, so on a host with shared mounts (docker's /var/lib/docker is one) the detach
    // propagated and unmounted docker's container filesystems. Started in a namespace
    // whose mounts are all private already, its detach stays its own.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            for (from, to) in [(ready_fd, 3), (exit_fd, 4)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::unshare(libc::CLONE_NEWNS) < 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        setup(if e.kind() == std::io::ErrorKind::NotFound {
            "slirp4netns is not installed (Debian: apt-get install slirp4netns); \
             or give RUN the host's network with --network=host, or none with --network=none"
                .to_string()
        } else {
            format!("running slirp4netns: {e}")
        })
    })?;
    drop(ready_w);
    drop(exit_r);
    // Drained for as long as slirp4netns lives (a full pipe would stall it); the last
    // lines explain a failed start.
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let drain = std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            tail.extend_from_slice(&buf[..n]);
            let excess = tail.len().saturating_sub(4096);
            tail.drain(..excess);
        }
        String::from_utf8_lossy(&tail).trim().to_string()
    });
    let mut byte = [0u8; 1];
    let n = std::fs::File::from(ready_r).read(&mut byte).unwrap_or(0);
    if n != 1 {
        let _ = child.kill();
        let status = child.wait();
        let err = drain.join().unwrap_or_default();
        return Err(setup(format!(
            "slirp4netns failed ({}): {err}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string())
        )));
    }
    Ok((child, exit_w))
}
