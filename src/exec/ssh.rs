//! `RUN --mount=type=ssh`: the agent socket a step reaches. For each ssh mount of a step,
//! rbuild listens on a socket of its own (with the mount's uid, gid and mode, as BuildKit's
//! sshforward makes it) and relays every connection to the agent `--ssh` names: the user's
//! socket, or an `ssh-agent` rbuild starts for the step and loads with the key files. The
//! sandbox binds that socket on the mount's target; it exists only while the step runs.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::request::SshSource;
use super::BuildError;

/// A step's view of one `--ssh` id; stops relaying (and stops its agent) when dropped.
pub struct Forward {
    socket: PathBuf,
    /// The listening socket, shut down to end the accept loop.
    listener: UnixListener,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    agent: Option<KeyAgent>,
    // Removed last: the sockets live in it.
    _dir: tempfile::TempDir,
}

impl Forward {
    /// Starts relaying `source` (the `--ssh` entry of `id`) on a socket in `dir`, owned by
    /// `uid`:`gid` with `mode`.
    pub fn start(
        dir: tempfile::TempDir,
        id: &str,
        source: &SshSource,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<Forward, BuildError> {
        let (upstream, agent) = match source {
            SshSource::Socket(path) => (path.clone(), None),
            SshSource::Keys(keys) => {
                let agent = KeyAgent::start(&dir.path().join("a"), id, keys)?;
                (agent.socket.clone(), Some(agent))
            }
        };
        // Fail here, naming the id and the socket, rather than in the step's ssh client.
        UnixStream::connect(&upstream).map_err(|e| {
            BuildError::Invalid(format!(
                "ssh agent for --ssh {id}: connecting to `{}`: {e}",
                upstream.display()
            ))
        })?;
        let socket = dir.path().join("s");
        let io = |what| BuildError::io(what, &socket);
        let listener = UnixListener::bind(&socket).map_err(io("creating ssh socket"))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io("setting the mode of ssh socket"))?;
        std::os::unix::fs::chown(&socket, Some(uid), Some(gid))
            .map_err(io("setting the owner of ssh socket"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let own = listener
            .try_clone()
            .map_err(io("starting the ssh relay for"))?;
        let accept = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ssh-forward".into())
                .spawn(move || relay_all(listener, &upstream, &stop))
                .map_err(io("starting the ssh relay for"))?
        };
        Ok(Forward {
            socket,
            listener: own,
            stop,
            accept: Some(accept),
            agent,
            _dir: dir,
        })
    }

    /// The socket the sandbox binds into the step.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`: shutdown(2) ends a blocked accept
        // on Linux whether or not the socket's path still exists.
        // (std has shutdown only on streams: the listener's fd, as one, takes the call.)
        if let Ok(fd) = self.listener.try_clone() {
            let _ =
                UnixStream::from(std::os::fd::OwnedFd::from(fd)).shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.agent.take();
    }
}

/// Connections one step may hold open at once (each costs rbuild two threads): a hostile
/// step opening thousands is refused past this, where an ssh client needs one or two.
const MAX_CONNECTIONS: usize = 64;

fn relay_all(listener: UnixListener, upstream: &Path, stop: &AtomicBool) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(client) = conn else {
            // Not a passing failure (EMFILE): don't spin on it.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: the client sees the connection closed
        }
        let upstream = upstream.to_path_buf();
        let done = open.clone();
        // A connection lives as long as both ends do; the step's processes die with it.
        let spawned = std::thread::Builder::new()
            .name("ssh-relay".into())
            .spawn(move || {
                relay(client, &upstream);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn relay(client: UnixStream, upstream: &Path) {
    let Ok(server) = UnixStream::connect(upstream) else {
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pump(c2, s2));
    pump(server, client);
    let _ = up.join();
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side.
fn pump(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// An `ssh-agent` (openssh-client) serving `--ssh ID=KEYFILE[,KEYFILE]` for one step.
///
/// The agent runs with a command, `cat` reading a pipe rbuild holds: ssh-agent checks every
/// 10 s that its command lives and exits when it does not, so a killed rbuild (whose pipe
/// then closes) leaves no agent holding the keys for longer than that. PR_SET_PDEATHSIG
/// cannot do it: Debian's ssh-agent is set-group-ID, and such an exec clears the signal.
struct KeyAgent {
    /// `sh` then `cat`, the agent's command; its stdin is the pipe.
    child: Child,
    /// The agent's own pid (its `SSH_AGENT_PID`), stopped when the step ends.
    agent: Option<nix::unistd::Pid>,
    socket: PathBuf,
}

impl KeyAgent {
    fn start(socket: &Path, id: &str, keys: &[PathBuf]) -> Result<KeyAgent, BuildError> {
        let fail = |why: String| BuildError::Invalid(format!("--ssh {id}: {why}"));
        let child = Command::new("ssh-agent")
            .arg("-a")
            .arg(socket)
            .args([
                "--",
                "sh",
                "-c",
                "echo \"$SSH_AGENT_PID\"; exec cat >/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "starting ssh-agent to serve the key files: {e} (install openssh-client)"
                ))
            })?;
        // Dropped on every early return below: the agent is stopped.
        let mut agent = KeyAgent {
            child,
            agent: None,
            socket: socket.to_path_buf(),
        };
        let mut line = String::new();
        if let Some(out) = agent.child.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        agent.agent = line
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 1)
            .map(nix::unistd::Pid::from_raw);
        if agent.agent.is_none() {
            return Err(fail(format!(
                "ssh-agent did not start (it said `{}`)",
                line.trim()
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(fail(format!("ssh-agent exited at start ({status})")));
            }
            if Instant::now() > deadline {
                return Err(fail("ssh-agent did not start within 10s".to_string()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = Command::new("ssh-add")
            .arg("-q")
            .args(keys)
            .env("SSH_AUTH_SOCK", socket)
            // A key with a passphrase fails instead of prompting (buildx cannot use one
            // either).
            .env("SSH_ASKPASS_REQUIRE", "never")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(format!("running ssh-add: {e} (install openssh-client)")))?;
        if !out.status.success() {
            let names: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
            return Err(fail(format!(
                "loading key file `{}`: {}",
                names.join(","),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(agent)
    }
}

impl Drop for KeyAgent {
    fn drop(&mut self) {
        // The agent rbuild started, by the pid it reported; then its command, our child.
        if let Some(pid) = self.agent {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake agent that answers the first message with `reply` (connections that send
    /// nothing, like the relay's probe at start, are skipped).
    fn echo_agent(path: &Path, reply: &'static [u8]) -> JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let mut c = c.unwrap();
                let mut buf = [0u8; 9];
                if c.read_exact(&mut buf).is_err() {
                    continue;
                }
                assert_eq!(&buf, b"\0\0\0\x05\x0bhell");
                c.write_all(reply).unwrap();
                return;
            }
        })
    }

    #[test]
    fn the_socket_relays_to_the_agent_with_the_mounts_owner_and_mode() {
        let up = tempfile::tempdir().unwrap();
        let agent = up.path().join("agent");
        let t = echo_agent(&agent, b"\0\0\0\x01\x0c");
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let fwd = Forward::start(
            tempfile::tempdir().unwrap(),
            "default",
            &SshSource::Socket(agent.clone()),
            uid,
            gid,
            0o741,
        )
        .unwrap();
        let meta = std::fs::metadata(fwd.socket()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o741);
        let mut c = UnixStream::connect(fwd.socket()).unwrap();
        c.write_all(b"\0\0\0\x05\x0bhell").unwrap();
        let mut reply = [0u8; 5];
        c.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"\0\0\0\x01\x0c");
        t.join().unwrap();
        let socket = fwd.socket().to_path_buf();
        // Even with its path gone the relay stops (a wake-up by connecting would hang).
        std::fs::remove_file(&socket).unwrap();
        drop(fwd);
    }

    #[test]
    fn a_step_cannot_hold_more_than_the_connection_limit() {
        let up = tempfile::tempdir().unwrap();
        let agent = up.path().join("agent");
        // An agent that accepts and never answers: every relayed connection stays open.
        let l = UnixListener::bind(&agent).unwrap();
        let held = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for c in l.incoming() {
                conns.push(c);
            }
        });
        let fwd = Forward::start(
            tempfile::tempdir().unwrap(),
            "default",
            &SshSource::Socket(agent),
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            0o600,
        )
        .unwrap();
        let clients: Vec<UnixStream> = (0..MAX_CONNECTIONS)
            .map(|_| UnixStream::connect(fwd.socket()).unwrap())
            .collect();
        // One more is accepted by the kernel, then closed by the relay: EOF.
        let mut extra = UnixStream::connect(fwd.socket()).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(extra.read(&mut buf).unwrap(), 0);
        drop(clients);
        drop(fwd);
        drop(held);
    }

    #[test]
    fn an_agent_that_is_not_there_is_named() {
        let up = tempfile::tempdir().unwrap();
        let missing = up.path().join("nothing");
        let err = Forward::start(
            tempfile::tempdir().unwrap(),
            "work",
            &SshSource::Socket(missing),
            0,
            0,
            0o600,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("--ssh work") && err.contains("nothing"),
            "{err}"
        );
    }
}
