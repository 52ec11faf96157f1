//! Rootless mode (design.md "Rootless", docs/rootless.md): the built rbuild run as an
//! unprivileged user, with a subordinate id range (`rbuild-rl`) and without (`rbuild-rl1`).
//! Root makes the users, their /etc/subuid lines and the directories they may use, and
//! drops to them with setpriv; root's own builds and docker check what they made.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use support::attacks::{assert_every_change_refused, cc, EVIL_SO};
use support::user::binary;
use support::{docker, processes_with, rbuild, run, run_ok, wait_for, DockerImages, InRegistry};

const BASE: InRegistry = InRegistry("busybox");
/// A user with a range in /etc/subuid and /etc/subgid.
const RANGE_USER: &str = "rbuild-rl";
/// A user without one (single-id mode).
const SINGLE_USER: &str = "rbuild-rl1";
const EPOCH: &str = "1700000000";

/// An unprivileged user, a directory of its own, and the rbuild binary it may execute.
struct User {
    user: support::user::User,
    /// Its $HOME for the test (so its store, ~/.local/share/rbuild, is the test's own).
    dir: tempfile::TempDir,
}

impl User {
    fn new(name: &'static str) -> User {
        setup();
        let user = support::user::User::named(name);
        let dir = tempfile::tempdir().unwrap();
        user.give(dir.path());
        User { user, dir }
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    /// A directory (made by root, then given to the user) holding `files`.
    fn context(&self, files: &[(&str, &str)]) -> PathBuf {
        let ctx = self.home().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        for (name, text) in files {
            std::fs::write(ctx.join(name), text).unwrap();
        }
        run_ok(Command::new("chown").args([
            "-R",
            &format!("{}:{}", self.user.uid, self.user.gid),
            ctx.to_str().unwrap(),
        ]));
        ctx
    }

    /// rbuild as this user (setpriv drops root), in its home.
    fn rbuild(&self) -> Command {
        let mut cmd = self.user.command(binary(), self.home());
        cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .current_dir(self.home());
        cmd
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", stderr(&out));
    stderr(&out)
}

/// Root's work, once per run: the two users and their subordinate ids.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        support::needs_root_docker_and_registry();
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib.sh");
        for (user, range) in [(RANGE_USER, "range"), (SINGLE_USER, "no-range")] {
            run_ok(
                Command::new("bash")
                    .arg("-c")
                    .arg(r#". "$0" && ensure_rootless_user "$1" "$2""#)
                    .arg(&lib)
                    .args([user, range]),
            );
        }
    });
}

/// The image id (config digest) of a docker archive.
fn archive_config(archive: &Path) -> String {
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("manifest.json") {
            let v: serde_json::Value = serde_json::from_reader(&mut e).unwrap();
            return v[0]["Config"].as_str().unwrap().to_string();
        }
    }
    panic!("no manifest.json in {}", archive.display())
}

/// `docker load` of an archive that names `tag`, removed again when the guard is dropped.
fn docker_load(archive: &Path, tag: &str) -> DockerImages {
    let loaded = run_ok(docker().arg("load").arg("-i").arg(archive));
    let guard = DockerImages(vec![tag.into()]);
    assert!(loaded.contains(tag), "{loaded}");
    guard
}

/// The output of `script` (sh) in a container of `image`.
fn in_image(image: &str, script: &str) -> String {
    run_ok(docker().args(["run", "--rm", image, "sh", "-c", script]))
}

const MULTI_STEP: &str = r#"
COPY --chown=1000:1000 f.txt /app/f.txt
RUN mkdir -p /srv/d && chown -R 1000:50 /srv/d && cp /bin/busybox /srv/su && chmod 4755 /srv/su && rm -rf /etc/network
RUN --network=none --mount=type=cache,target=/cache sh -c 'echo c >> /cache/n; wc -l < /cache/n > /count'
RUN --network=host wget -q -O /v2 http://REGISTRY/v2/ && ls /sys/class > /dev/null && ! touch /sys/x 2> /dev/null
USER 1000
RUN id > /tmp/id
USER root
RUN rm -rf /var/spool && mkdir -p /var/spool && echo y > /var/spool/new
"#;

/// A multi-step build with USER switches, chown to 1000, a setuid bit, `--network=none`,
/// `--network=host` (the host's loopback registry) with /sys read-only, a cache mount and
/// COPY: the same image as root's (same digest with SOURCE_DATE_EPOCH),
/// and its archive runs in docker with the image's ids, not the host's subordinate ones.
#[test]
#[ignore = "needs root, docker and a registry"]
fn rootless_build_is_roots_image_and_runs_in_docker() {
    let user = User::new(RANGE_USER);
    let dockerfile = format!("FROM {BASE}\n{MULTI_STEP}").replace("REGISTRY", support::registry());
    let ctx = user.context(&[("Dockerfile", &dockerfile), ("f.txt", "data\n")]);
    let archive = user.home().join("out.tar");
    let log = ok(user
        .rbuild()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args([
            "build",
            "--progress",
            "plain",
            "--allow",
            "network.host",
            "-o",
        ])
        .arg(format!("type=docker,dest={}", archive.display()))
        .args(["-t", "rbuild-test/rootless:1"])
        .arg(&ctx));
    assert!(log.contains("mode: rootless, ids 1-65536"), "{log}");
    // The store is the user's own, under $HOME.
    let store = user.home().join(".local/share/rbuild");
    assert!(store.join("index.json").exists(), "{log}");

    let root_store = tempfile::tempdir().unwrap();
    let root_archive = root_store.path().join("out.tar");
    ok(rbuild(root_store.path())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["--allow", "network.host", "-o"])
        .arg(format!("type=docker,dest={}", root_archive.display()))
        .arg(&ctx));
    assert_eq!(archive_config(&archive), archive_config(&root_archive));

    let _images = docker_load(&archive, "rbuild-test/rootless:1");
    let shown = in_image(
        "rbuild-test/rootless:1",
        "stat -c '%n %u:%g %a' /app/f.txt /srv/d /srv/su; cat /count /tmp/id /v2",
    );
    assert!(shown.contains("/app/f.txt 1000:1000 644"), "{shown}");
    assert!(shown.contains("/srv/d 1000:50 755"), "{shown}");
    assert!(shown.contains("/srv/su 0:0 4755"), "{shown}");
    assert!(shown.contains("uid=1000"), "{shown}");
    assert!(
        shown.contains("{}"),
        "the registry's answer over the host network: {shown}"
    );
}

/// `--pids-limit` rootless, where no cgroup is delegated to the user (this machine): each
/// RUN step's RLIMIT_NPROC, said once in the log. A step that starts 60 background sleeps
/// cannot fork them all under a limit of 25 (and fails: sh stops at `can't fork`), can
/// without a limit, and nothing of either is left on the host afterwards.
#[test]
#[ignore = "needs root, docker and a registry"]
fn pids_limit_rootless_stops_a_fork_bomb_at_the_limit() {
    let user = User::new(RANGE_USER);
    let marker = format!("rbuild-pids-{}", std::process::id());
    let dockerfile = format!(
        "FROM {BASE}\nRUN for i in $(seq 60); do sh -c 'sleep 3' {marker} & done; wait; echo forked-$((6*10))\n"
    );
    let ctx = user.context(&[("Dockerfile", &dockerfile)]);
    let build = |limit: &str| {
        run(user
            .rbuild()
            .args([
                "build",
                "--progress",
                "plain",
                "--no-cache",
                "--pids-limit",
                limit,
            ])
            .arg(&ctx))
    };
    let limited = build("25");
    let log = stderr(&limited);
    assert!(!limited.status.success(), "{log}");
    assert_eq!(
        log.matches("--pids-limit 25 is each RUN step's RLIMIT_NPROC")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("can't fork"), "{log}");
    assert!(!log.contains("forked-60"), "{log}");
    wait_for("the limited step's processes to end", || {
        processes_with(&marker).is_empty()
    });

    let unlimited = build("0");
    let log = stderr(&unlimited);
    assert!(unlimited.status.success(), "{log}");
    assert!(
        log.contains("forked-60") && !log.contains("can't fork"),
        "{log}"
    );
    assert!(!log.contains("RLIMIT_NPROC"), "{log}");
    wait_for("the unlimited step's processes to end", || {
        processes_with(&marker).is_empty()
    });
}

/// `--load` for a user who reaches no docker daemon (docs/rootless.md: the user's
/// supplementary groups stay outside rbuild's namespace): the error names `docker load`,
/// not the broken pipe that followed it.
#[test]
#[ignore = "needs root, docker and a registry"]
fn load_without_a_reachable_docker_names_docker_load() {
    let user = User::new(RANGE_USER);
    let ctx = user.context(&[("Dockerfile", &format!("FROM {BASE}\nCOPY Dockerfile /d\n"))]);
    let mut docker_info = user
        .user
        .command(Path::new(support::docker_bin()), user.home());
    assert!(
        !run(docker_info.arg("info")).status.success(),
        "{RANGE_USER} reaches docker: nothing to test"
    );
    let tag = "rbuild-test/rootless-load:1";
    let out = run(user
        .rbuild()
        .args(["build", "--progress", "plain", "--load", "-t", tag])
        .arg(&ctx));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("error: --load: `docker load` failed"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    assert!(!run(docker().args(["image", "inspect", tag]))
        .status
        .success());
}

/// Without a subordinate range: one warning naming the /etc/subuid line, a build as root
/// works, a step as another user fails with that line, never silently as root.
#[test]
#[ignore = "needs root, docker and a registry"]
fn single_id_mode_builds_as_root_and_refuses_other_users() {
    let user = User::new(SINGLE_USER);
    let info = run_ok(user.rbuild().arg("info"));
    assert!(info.contains("rootless, single id"), "{info}");
    let ctx = user.context(&[
        ("Dockerfile", &format!("FROM {BASE}\nRUN echo hi > /hi\n")),
        (
            "Dockerfile.user",
            &format!("FROM {BASE}\nUSER 1000\nRUN id\n"),
        ),
    ]);
    let log = ok(user
        .rbuild()
        .args(["build", "--progress", "plain"])
        .arg(&ctx));
    let line = format!("`{SINGLE_USER}:");
    assert_eq!(
        log.matches("warning: rootless without subordinate ids")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains(&line) && log.contains("/etc/subuid"), "{log}");

    let out = run(user
        .rbuild()
        .args(["build", "--progress", "plain", "-f"])
        .arg(ctx.join("Dockerfile.user"))
        .arg(&ctx));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: ") && err.contains("running the step as uid 1000"),
        "{err}"
    );
    assert!(err.contains(&line) && err.contains("/etc/subuid"), "{err}");
    assert!(!err.contains("uid=1000"), "the step ran: {err}");
}

/// A base layer with a device node: rootless leaves it out of the extracted layer with one
/// warning, and the output, made from the unchanged blob, is root's image.
#[test]
#[ignore = "needs root, docker and a registry"]
fn device_node_in_a_base_layer_is_left_out_with_one_warning() {
    let user = User::new(RANGE_USER);
    // The base: busybox plus a character device, imported and pushed by root.
    let base_dir = tempfile::tempdir().unwrap();
    let rootfs = base_dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("dev")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    run_ok(
        Command::new("mknod")
            .arg(rootfs.join("dev/mynull"))
            .args(["c", "1", "3"]),
    );
    let tarball = base_dir.path().join("base.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    );
    let base = format!("{}:{}", InRegistry("rootless-devbase"), std::process::id());
    let root_store = tempfile::tempdir().unwrap();
    let root = |cmd: &str| {
        let mut c = Command::new(support::rbuild_bin());
        c.env("RBUILD_ROOT", root_store.path()).arg(cmd);
        c
    };
    run_ok(root("import").arg(&tarball).arg(&base));
    run_ok(root("push").arg(&base));
    let _pushed = support::RegistryImage::pushed(&base);

    let ctx = user.context(&[("Dockerfile", &format!("FROM {base}\nRUN echo ok > /ok\n"))]);
    let archive = user.home().join("out.tar");
    let log = ok(user
        .rbuild()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(["build", "--progress", "plain", "-o"])
        .arg(format!("type=docker,dest={}", archive.display()))
        .arg(&ctx));
    assert_eq!(log.matches("device node").count(), 1, "{log}");
    assert!(
        log.contains("left out 1 device node(s) (first: /dev/mynull)"),
        "{log}"
    );

    let root_archive = root_store.path().join("out.tar");
    ok(rbuild(root_store.path())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("-o")
        .arg(format!("type=docker,dest={}", root_archive.display()))
        .arg(&ctx));
    // The config lists the layers' diff_ids: the base layer is the pushed one, device and all.
    assert_eq!(archive_config(&archive), archive_config(&root_archive));

    // `rbuild import` of the same tarball by the user says the same, once.
    let own = user.home().join("base.tar");
    std::fs::copy(&tarball, &own).unwrap();
    std::os::unix::fs::chown(&own, Some(user.user.uid), Some(user.user.gid)).unwrap();
    let log = ok(user.rbuild().arg("import").arg(&own).arg("devbase:local"));
    assert_eq!(
        log.matches("left out 1 device node(s) (first: /dev/mynull)")
            .count(),
        1,
        "{log}"
    );
}

/// SIGINT to rbuild's pid alone (a CI runner cancelling a job) and kill -9 of it: the
/// namespace's rbuild, its helpers, the step and the network all end; nothing is left in
/// the build's process group.
#[test]
#[ignore = "needs root, docker and a registry"]
fn interrupted_or_killed_rootless_build_leaves_no_process() {
    let user = User::new(RANGE_USER);
    for (sig, marker) in [
        (nix::sys::signal::Signal::SIGINT, "sleep 3041"),
        (nix::sys::signal::Signal::SIGKILL, "sleep 3043"),
    ] {
        let ctx = user.context(&[("Dockerfile", &format!("FROM {BASE}\nRUN {marker}\n"))]);
        let child = user
            .rbuild()
            .args(["build", "--progress", "plain"])
            .arg(&ctx)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_for("the long RUN to start", || {
            !processes_with(marker).is_empty()
        });
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        if sig == nix::sys::signal::Signal::SIGINT {
            assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        }
        wait_for("the step to die", || processes_with(marker).is_empty());
        wait_for("the build's processes to end", || {
            support::processes_in_group(pid).is_empty()
        });
    }
}

/// Rootless inside a docker container without `--privileged` (docs/rootless.md "In an
/// unprivileged container"), in an image rbuild built from Debian's packages
/// (support::container): with the documented flags, rbuild runs in range mode
/// (newuidmap/newgidmap and /etc/subuid of the image), builds a Dockerfile that needs other
/// ids on a base from the run's registry, and its archive, loaded on the host, carries the
/// image's ids. docker's masked /proc cannot be mounted anew: the steps get the container's,
/// with a note; `systempaths=unconfined` gives them their own. Without
/// `seccomp=unconfined`, or with `no-new-privileges`, rbuild fails naming the option, and
/// with Debian's setuid newuidmap (not the image's file capability) naming setcap; a user
/// with no /etc/subuid line runs single-id.
#[test]
#[ignore = "needs root, docker and a registry"]
fn rootless_in_an_unprivileged_docker_container() {
    support::needs_root_docker_and_registry();
    let image = support::container::RbuildImage::build();
    let dir = tempfile::tempdir().unwrap();
    let (ctx, out) = (dir.path().join("ctx"), dir.path().join("out"));
    for d in [&ctx, &out] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {BASE}\n\
             RUN echo f > /f && chown 1234:1234 /f && tr '\\0' ' ' < /proc/1/cmdline > /pid1 && cat /pid1\n\
             USER 1000\n\
             RUN id > /tmp/id && touch /tmp/by1000\n"
        ),
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile.root"),
        format!("FROM {BASE}\nRUN echo hi > /hi\n"),
    )
    .unwrap();
    let container_user = nix::unistd::Uid::from_raw(support::container::UID);
    for path in [dir.path(), &ctx, &out] {
        nix::unistd::chown(path, Some(container_user), None).unwrap();
    }
    const DOCUMENTED: [&str; 4] = [
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        DOCUMENTED.iter().chain(extra).copied().collect()
    };
    // The inner build's image, per test process as the outer one.
    let inner = format!("rbuild-test/in-docker:{}", std::process::id());
    let rbuild_build = |archive: &str| {
        format!(
            "rbuild build --progress plain --network none -t {inner} \
             -o type=docker,dest=/out/{archive} /ctx"
        )
    };
    let build = |flags: &[&str], archive: &str| {
        let script = format!("rbuild info && exec {}", rbuild_build(archive));
        run(&mut image.run(flags, &ctx, &out, &script))
    };
    // A build that `before` (a shell command) and these flags stop before it starts, with a
    // user error; its log.
    let refused = |flags: &[&str], before: &str| {
        let script = format!("{before}{}", rbuild_build("refused.tar"));
        let refused = run(&mut image.run(flags, &ctx, &out, &script));
        let log = stderr(&refused);
        assert_eq!(refused.status.code(), Some(1), "{log}");
        assert!(!out.join("refused.tar").exists());
        log
    };
    const PROC_NOTE: &str = "rbuild: note: /proc cannot be mounted here";

    let built = build(&DOCUMENTED, "a.tar");
    let (info, log) = (String::from_utf8_lossy(&built.stdout), stderr(&built));
    assert!(built.status.success(), "{info}{log}");
    let range = "mode: rootless, ids 1-65536 mapped to uids 100000-165535 and gids 100000-165535";
    assert!(info.contains(range), "{info}");
    assert!(log.contains(range), "{log}");
    assert_eq!(log.matches(PROC_NOTE).count(), 2, "a note per step: {log}");
    let _images = docker_load(&out.join("a.tar"), &inner);
    let fs = support::docker_fs(&inner);
    let owner = |path: &str| {
        let e = fs
            .get(path)
            .unwrap_or_else(|| panic!("no {path} in the image"));
        (e.uid, e.gid)
    };
    assert_eq!(owner("f"), (1234, 1234));
    assert_eq!(owner("tmp/by1000"), (1000, 1000));
    let shown = in_image(&inner, "cat /pid1 /tmp/id");
    // The step saw the container's processes: its pid 1 is the container's rbuild.
    assert!(shown.starts_with("rbuild build "), "{shown}");
    assert!(shown.contains("uid=1000"), "{shown}");

    // The /proc masks lifted: each step has its own pid namespace and /proc again.
    let built = build(
        &with(&["--security-opt", "systempaths=unconfined"]),
        "b.tar",
    );
    let log = stderr(&built);
    assert!(built.status.success(), "{log}");
    assert!(!log.contains(PROC_NOTE), "{log}");
    let own_pid1 = "/bin/sh -c echo f > /f";
    assert!(log.contains(own_pid1), "the step is its pid 1: {log}");

    // docker's seccomp profile refuses the user namespace: a user error naming the flags.
    let log = refused(&DOCUMENTED[2..], "");
    assert!(log.contains("error: unsharing a user namespace"), "{log}");
    assert!(log.contains("--security-opt seccomp=unconfined"), "{log}");

    // no_new_privs: newuidmap cannot gain CAP_SETUID; never a silent single-id build.
    let log = refused(&with(&["--security-opt", "no-new-privileges"]), "");
    let named = log.contains("newuidmap") && log.contains("no-new-privileges");
    assert!(named, "{log}");
    let one_error = !log.contains("waiting for the id map");
    assert!(one_error, "one error, the parent's: {log}");

    // Debian's own newuidmap/newgidmap (setuid root, no file capability), set up by the
    // container's root, which then drops to the user: the kernel refuses their map write
    // (the reason for the image's setcap), and rbuild names the fix.
    let debians = "setcap -r /usr/bin/newuidmap -r /usr/bin/newgidmap \
                   && chmod u+s /usr/bin/newuidmap /usr/bin/newgidmap \
                   && HOME=/home/builder exec setpriv --reuid 1000 --regid 1000 --init-groups ";
    let log = refused(&with(&["--user", "0"]), debians);
    let named = log.contains("a setuid-root newuidmap writes the map as root")
        && log.contains("setcap cap_setuid=ep");
    assert!(named, "{log}");

    // A user without an /etc/subuid line (and a home of its own): single-id mode.
    let other = with(&[
        "--user",
        "1001:1001",
        "-e",
        "HOME=/home/other",
        "--tmpfs",
        "/home/other:exec,uid=1001,gid=1001",
    ]);
    let script = "rbuild build --progress plain --network none -f /ctx/Dockerfile.root /ctx";
    let single = run(&mut image.run(&other, &ctx, &out, script));
    let log = stderr(&single);
    assert!(single.status.success(), "{log}");
    assert!(log.contains("mode: rootless, single id"), "{log}");
}

/// Rootless, rbuild's binary is often the user's own (`~/.cargo/bin/rbuild`), and the
/// namespace's root is that user: a step that reaches the helper's executable through
/// /proc/self/exe (`LD_PRELOAD` from the image, runc's CVE-2019-5736) could rewrite the
/// binary every later build runs. Helpers start from a read-only view of it, as under root
/// (src/sandbox/exe.rs): every change fails with EROFS and the binary stays as it was.
#[test]
#[ignore = "needs root, gcc and a registry"]
fn a_step_cannot_change_the_users_own_rbuild_binary() {
    let user = User::new(RANGE_USER);
    let bin = user.home().join("rbuild");
    std::fs::copy(binary(), &bin).unwrap();
    user.user.give(&bin);
    let before = std::fs::metadata(&bin).unwrap();
    let hash_before = support::sha256_file(&bin);
    let ctx = user.context(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nCOPY evil.so /evil.so\nENV LD_PRELOAD=/evil.so\nRUN [\"/proc/self/exe\"]\n",
            InRegistry("debian:bookworm")
        ),
    )]);
    let evil = ctx.join("evil.so");
    std::fs::write(&evil, cc(EVIL_SO, &["-shared", "-fPIC"])).unwrap();
    user.user.give(&evil);
    let out = user.home().join("out");
    let mut cmd = user.user.command(&bin, user.home());
    cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir(user.home())
        .args(["build", "--progress", "plain", "-o"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&ctx);
    ok(&mut cmd);
    let report = std::fs::read_to_string(out.join("evil-report")).unwrap();
    // It ran inside the helper, whose executable is the user's binary, and got nowhere.
    assert_every_change_refused(&report);
    use std::os::unix::fs::MetadataExt;
    let after = std::fs::metadata(&bin).unwrap();
    assert_eq!(after.mode(), before.mode(), "mode changed");
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec())
    );
    assert_eq!(support::sha256_file(&bin), hash_before, "contents changed");
}
