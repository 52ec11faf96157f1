//! `RUN --mount=type=ssh` with `--ssh`: a real ssh-agent holding a key made by ssh-keygen,
//! reached from a Debian step by the host's own `ssh-add -l` (the base has no
//! openssh-client; the binary and the libraries the base lacks come in by a bind mount of
//! the context), against docker build where its frontend has the feature.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use support::*;

const DEBIAN: InRegistry = InRegistry("debian:bookworm");

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An ssh-agent of the test's own, killed when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path, keys: &[&Path]) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client)");
        let agent = Agent { child, socket };
        for _ in 0..1000 {
            if std::os::unix::net::UnixStream::connect(&agent.socket).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        run_ok(
            Command::new("ssh-add")
                .arg("-q")
                .args(keys)
                .env("SSH_AUTH_SOCK", &agent.socket),
        );
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new ed25519 key in `dir`; returns its path and `ssh-keygen -l` line (what `ssh-add -l`
/// prints for it).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("rbuild-test-{name}"))
            .arg("-f")
            .arg(&key),
    );
    let line = run_ok(Command::new("ssh-keygen").arg("-lf").arg(&key));
    (key, line)
}

/// The shared libraries of `bin` that `debian:bookworm` lacks (the host is bookworm too).
const NOT_IN_BASE: [&str; 1] = ["libcrypto.so.3"];

/// A context with the Dockerfile and `tools/`: the host's ssh-add and the libraries above.
fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::fs::copy("/usr/bin/ssh-add", tools.join("ssh-add")).unwrap();
    for lib in NOT_IN_BASE {
        let host = Path::new("/lib/x86_64-linux-gnu").join(lib);
        require(host.exists(), &format!("{} (libssl3)", host.display()));
        std::fs::copy(host, tools.join(lib)).unwrap();
    }
    dir
}

/// Runs the host's ssh-add in a step: `LIST` expands to `ssh-add -l`.
const LIST: &str = "LD_LIBRARY_PATH=/tools /tools/ssh-add -l";

fn all_paths(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

#[test]
#[ignore = "needs root and the test registry (scripts/test.sh)"]
fn ssh_mounts_reach_the_agent_and_leave_no_trace() {
    needs_root_and_registry();
    let top = tempfile::tempdir().unwrap();
    let (key_a, line_a) = keygen(top.path(), "a");
    let (key_b, line_b) = keygen(top.path(), "b");
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(agent_dir.path(), &[&key_a]);

    let ctx = context(&format!(
        "FROM {DEBIAN}\n\
         RUN --mount=type=bind,target=/tools,source=tools --mount=type=ssh \
         {LIST} > /seen-default && echo \"$SSH_AUTH_SOCK\" > /env-default && \
         stat -c '%u %g %a %F' \"$SSH_AUTH_SOCK\" > /stat-default\n\
         RUN --mount=type=bind,target=/tools,source=tools \
         --mount=type=ssh,id=keys,target=/k.sock,mode=0741,uid=100,gid=102,required=true \
         {LIST} > /seen-keys && echo \"$SSH_AUTH_SOCK\" > /env-keys && \
         stat -c '%u %g %a %F' /k.sock > /stat-keys\n\
         RUN --mount=type=ssh,id=absent test ! -e /run/buildkit/ssh_agent.0 && \
         echo \"$SSH_AUTH_SOCK\" > /env-absent\n"
    ));
    let store = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("rootfs");
    let ssh_default = format!("default={}", agent.socket.display());
    let ssh_keys = format!("keys={}", key_b.display());
    let build = |ssh_default: &str, dest: &Path| {
        run(rbuild(store.path())
            .args([
                "--ssh",
                ssh_default,
                "--ssh",
                &ssh_keys,
                "-t",
                "rbuild-test/ssh",
            ])
            .arg("-o")
            .arg(format!("type=local,dest={}", dest.display()))
            .arg(ctx.path()))
    };
    let out = build(&ssh_default, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    let read = |f: &str| std::fs::read_to_string(dest.join(f)).unwrap();

    // The user's agent through $SSH_AUTH_SOCK at BuildKit's default target, root's, 0600.
    assert_eq!(read("seen-default"), line_a);
    assert_eq!(read("env-default"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(read("stat-default"), "0 0 600 socket\n");
    // Key files through rbuild's own agent, with the mount's owner and mode; SSH_AUTH_SOCK
    // names the first ssh mount's target, as BuildKit's llb sets it.
    assert_eq!(read("seen-keys"), line_b);
    assert_eq!(read("env-keys"), "/k.sock\n");
    assert_eq!(read("stat-keys"), "100 102 741 socket\n");
    // An optional mount without --ssh: no socket, the variable still set (BuildKit).
    assert_eq!(read("env-absent"), "/run/buildkit/ssh_agent.0\n");

    // In no layer, and not in the image config.
    let paths = all_paths(&dest);
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("run/buildkit") || p == "k.sock"),
        "a socket or its mountpoint is in the image: {paths:?}"
    );
    let config = run_ok(
        Command::new(rbuild_bin())
            .env("RBUILD_ROOT", store.path())
            .args(["inspect", "rbuild-test/ssh"]),
    );
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let env = config["Config"]["config"]["Env"].to_string();
    assert!(
        !env.contains("SSH_AUTH_SOCK") && env.contains("PATH="),
        "{env}"
    );

    // Another agent (another socket, another key) is not part of the cache key: all hit.
    let agent2_dir = tempfile::tempdir().unwrap();
    let agent2 = Agent::start(agent2_dir.path(), &[&key_b]);
    let out = build(
        &format!("default={}", agent2.socket.display()),
        &out_dir.path().join("again"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert_eq!(log.matches(" CACHED").count(), 3, "{log}");
    drop(agent2);

    // required=true without --ssh: BuildKit's error naming the id, exit 1, nothing ran.
    let out = run(rbuild(store.path())
        .arg("--no-cache")
        .arg(ctx.path())
        .args(["--ssh", &ssh_default]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no SSH key \"keys\" forwarded from the client")
            && err.contains("--ssh keys="),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A key file that is not a key: the id and the file are named.
    let junk = top.path().join("junk");
    std::fs::write(&junk, "not a key").unwrap();
    let out = run(rbuild(store.path())
        .arg("--no-cache")
        .args(["--ssh", &ssh_default, "--ssh"])
        .arg(format!("keys={}", junk.display()))
        .arg(ctx.path()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--ssh keys") && err.contains("junk"), "{err}");

    // `--ssh default` with no agent in the environment: buildx's message, a usage error.
    let out = run(rbuild(store.path())
        .env_remove("SSH_AUTH_SOCK")
        .args(["--ssh", "default"])
        .arg(ctx.path()));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("make sure SSH_AUTH_SOCK is set"),
        "{}",
        stderr(&out)
    );
    drop(agent);
}

#[test]
#[ignore = "needs root, docker and the test registry (scripts/test.sh)"]
fn ssh_mounts_match_docker_build() {
    needs_root_docker_and_registry();
    let top = tempfile::tempdir().unwrap();
    let (key, line) = keygen(top.path(), "d");
    let agent = Agent::start(top.path(), &[&key]);
    let ctx = context(&format!(
        "FROM {DEBIAN}\n\
         RUN --mount=type=bind,target=/tools,source=tools --mount=type=ssh \
         {LIST} > /seen && echo \"$SSH_AUTH_SOCK\" > /env && \
         stat -c '%u %g %a %F' \"$SSH_AUTH_SOCK\" > /stat\n\
         RUN --mount=type=ssh,id=other,target=/o.sock,mode=0640,uid=7 \
         stat -c '%u %g %a %F' /o.sock > /stat-other\n"
    ));
    let ssh = format!("default={}", agent.socket.display());
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let out = run(rbuild(store.path())
        .args(["--ssh", &ssh, "--ssh", &format!("other={}", key.display())])
        .arg("-o")
        .arg(format!("type=local,dest={}", ours.path().display()))
        .arg(ctx.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    run_ok(
        docker()
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "--network=host", "--no-cache", "--ssh", &ssh])
            .args(["--ssh", &format!("other={}", key.display())])
            .arg("-o")
            .arg(format!("type=local,dest={}", theirs.path().display()))
            .arg(ctx.path()),
    );
    for f in ["seen", "env", "stat", "stat-other"] {
        let read = |d: &Path| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(read(ours.path()), read(theirs.path()), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(ours.path().join("seen")).unwrap(),
        line
    );
    let mut a = all_paths(ours.path());
    let mut b = all_paths(theirs.path());
    a.sort();
    b.sort();
    // docker 20.10 leaves RUN --mount targets in the image (docs/compat.md); ours has none.
    let extra: Vec<&String> = a.iter().filter(|p| !b.contains(p)).collect();
    assert!(extra.is_empty(), "only in rbuild's image: {extra:?}");
}

/// The pids of processes whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            // Arguments are NUL-separated.
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
#[ignore = "needs root and the test registry (scripts/test.sh)"]
fn a_killed_build_leaves_no_ssh_agent_holding_the_keys() {
    needs_root_and_registry();
    let top = tempfile::tempdir().unwrap();
    let (key, _) = keygen(top.path(), "k");
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN --mount=type=ssh sleep 60\n",
            InRegistry("busybox")
        ),
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let needle = format!("ssh-agent -a {}", store.path().display());
    let mut child = rbuild(store.path())
        .arg("--ssh")
        .arg(format!("default={}", key.display()))
        .arg(ctx.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let agents = loop {
        let found = pids_with(&needle);
        if !found.is_empty() {
            break found;
        }
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no ssh-agent started for the step");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // Our own child, by its pid.
    child.kill().unwrap();
    child.wait().unwrap();
    // ssh-agent notices its command is gone within its 10 s check.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while agents
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists() && !pids_with(&needle).is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "ssh-agent {agents:?} outlived the killed build"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
