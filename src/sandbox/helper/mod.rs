//! The re-executed helper process: reads its job, joins namespaces and the step's cgroup,
//! and runs a RUN step or a file job. Its parts: `mounts` (the root, /dev, /proc, --mount
//! points, masked files), `network` (hosts, resolv.conf, loopback), `process` (environment,
//! fork, user, capabilities, exec and wait).
//!
//! It runs single-threaded from main(), so forking is safe and the child may use ordinary
//! code until execve (no other thread can hold a lock). Errors are strings with context:
//! they travel to the parent as JSON.

use std::fmt::Display;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

use super::root::{Created, Kind, Root};

mod mounts;
mod network;
mod process;

use mounts::{
    bind, mkdir, mount_at, mount_dev, mount_file_root, mount_one, mount_overlay, mount_rootfs,
    mount_target_mut, private_scratch, remount, write_file, Points,
};
use network::{hosts_file, loopback_up, resolv_conf};
use process::spawn_and_wait;

use super::{
    Exit, Failure, FsJob, FsSource, Job, Network, Overlay, Parent, Reply, RunSpec, SecurityMode,
    Stub,
};

pub(super) type Res<T> = Result<T, Failure>;

pub(super) fn ctx<T, E: Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> Res<T> {
    r.map_err(|e| Failure::Setup(format!("{}: {e}", what())))
}

pub fn main<J: FsJob>() -> ! {
    // Read while /etc/passwd is the host's: single-id mode's hint names the user.
    let _ = super::userns::current();
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
        } => run_step(&spec, &scratch, netns.as_deref()).map(|(exit, stubs, parents)| Reply::Run {
            exit,
            stubs,
            parents,
        }),
        Job::Fs {
            rootfs,
            sources,
            job,
            scratch,
            ..
        } => fs_step(&rootfs, &sources, job, &scratch),
    }
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
    let root = mount_file_root(rootfs, scratch)?;
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

fn run_step(
    spec: &RunSpec,
    scratch: &Path,
    netns: Option<&Path>,
) -> Res<(Exit, Vec<Stub>, Vec<Parent>)> {
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
    let mut made = Vec::new();
    ctx(
        root.ensure(
            &spec.cwd,
            Kind::Dir,
            0o755,
            Created {
                owner: Some((exec_user.uid, exec_user.gid)),
                ..Created::default()
            },
            &mut made,
        ),
        || format!("creating working directory {}", spec.cwd),
    )?;

    let mut points = Points {
        root: &root,
        stubs: Vec::new(),
        made,
        parents: Vec::new(),
    };
    let insecure = spec.security == SecurityMode::Insecure;
    points.make("proc", Kind::Dir, 0o755)?;
    mount_dev(&mut points, insecure)?;
    let (p, _fd) = points.make("sys", Kind::Dir, 0o755)?;
    // Read-write only in insecure mode (containerd's WithWriteableSysfs, as BuildKit).
    let sys_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let sys_flags = if insecure {
        sys_flags
    } else {
        sys_flags | MsFlags::MS_RDONLY
    };
    if super::userns::in_user_namespace() {
        // Rootless: sysfs may be mounted only by the owner of the network namespace, which
        // the host's (--network=host) is not; the host's /sys, bound, serves every network.
        bind(Path::new("/sys"), &p, true)?;
        if !insecure {
            // The new fd is the bind mount's root, not the directory below it.
            let (p, _fd) = points.reopen("sys")?;
            remount(&p, MsFlags::MS_RDONLY)?;
        }
    } else {
        mount_at(Some("sysfs"), &p, Some("sysfs"), sys_flags, None)?;
    }

    let files_dir = scratch.join("files");
    mkdir(&files_dir)?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let etc = [
        ("etc/resolv.conf", resolv_conf(&host_resolv, spec.network)),
        ("etc/hosts", hosts_file(&spec.hostname, &spec.extra_hosts)),
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
    let parents = std::mem::take(&mut points.parents);
    drop(root);

    let exit = spawn_and_wait(spec, &root_path, &exec_user)?;
    Ok((exit, stubs, parents))
}

#[cfg(test)]
mod tests {
    use super::process::final_env;
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
        use super::process::look_path;
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
