//! The sandbox escapes of issue 13, each performed for real: a hostile Dockerfile, context
//! or base image is built by the rbuild binary as root, and the host side is checked
//! afterwards (device data, host files, the rbuild binary's mode, xattrs and mtime, the
//! kernel keyring, host loopback services, mounts and processes left behind).
//! docs/security.md lists each attack with the test that performs it.
//!
//! Needs root, the test registry (scripts/test-env.sh; debian:bookworm in it for the glibc
//! case), gcc for the attack programs, slirp4netns, and the cgroup pids controller.
//! The tests take turns: the leftover checks look at every process and mount of the host.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use support::attacks::{assert_every_change_refused, cc, EVIL_SO};
use support::{many_files_tempdir, rbuild, rbuild_bin, run, InRegistry, REGISTRY};

const BASE: InRegistry = InRegistry("busybox");
const DEBIAN: InRegistry = InRegistry("debian:bookworm");

static SERIAL: Mutex<()> = Mutex::new(());

fn ready() -> MutexGuard<'static, ()> {
    support::needs_root_and_registry();
    support::require(
        Command::new("gcc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "gcc, to build the attack programs",
    );
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A build context: a Dockerfile and any files.
fn context(dockerfile: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

/// Runs a build to its end and checks that it left nothing running or mounted on the host.
fn build(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_no_leftovers(pid);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn build_ok(cmd: &mut Command) -> String {
    let out = build(cmd);
    assert!(out.status.success(), "build failed:\n{}", stderr(&out));
    stderr(&out)
}

/// The image's filesystem, as `-o type=local` writes it.
fn build_rootfs(store: &Path, ctx: &Path, extra: &[&str]) -> tempfile::TempDir {
    let dest = tempfile::tempdir().unwrap();
    build_ok(
        rbuild(store)
            .args(extra)
            .arg("-o")
            .arg(format!("type=local,dest={}", dest.path().display()))
            .arg(ctx),
    );
    dest
}

/// Nothing the build started (sandbox helpers, the network holder, slirp4netns) outlives
/// it, not even as a zombie: the build ran in a process group of its own, `pgid`, and rbuild
/// waits for its children before it exits. No mount of a step is visible on the host.
fn assert_no_leftovers(pgid: u32) {
    let procs = support::processes_in_group(pgid);
    assert!(procs.is_empty(), "left running after the build: {procs:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mounts.lines() {
        assert!(
            !line.contains("rbuild-sandbox-") && !line.contains("/tmp/.tmp"),
            "a step's mount is visible on the host: {line}"
        );
    }
}

/// (kind, major, minor) of every device node in an uncompressed tar.
fn device_nodes(tar_bytes: &[u8]) -> BTreeMap<String, (char, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let kind = match e.header().entry_type() {
            tar::EntryType::Block => 'b',
            tar::EntryType::Char => 'c',
            _ => continue,
        };
        let h = e.header();
        out.insert(
            e.path().unwrap().to_string_lossy().into_owned(),
            (
                kind,
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
            ),
        );
    }
    out
}

/// A loop device over a 1 MiB file whose first bytes are `mark`; detached on drop.
struct LoopDisk {
    dev: String,
    image: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDisk {
    fn new(mark: &[u8]) -> LoopDisk {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let mut data = vec![0u8; 1 << 20];
        data[..mark.len()].copy_from_slice(mark);
        std::fs::write(&image, data).unwrap();
        let o = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image));
        assert!(o.status.success(), "losetup: {}", stderr(&o));
        LoopDisk {
            dev: String::from_utf8_lossy(&o.stdout).trim().to_string(),
            image,
            _dir: dir,
        }
    }

    fn major_minor(&self) -> (u32, u32) {
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (libc_major(rdev), libc_minor(rdev))
    }

    /// What the disk holds now, read through the device (not the page cache of the file).
    fn head(&self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        std::fs::File::open(&self.dev)
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

/// Issue 13, escape 1: a RUN step makes a block device with the host disk's numbers (and
/// /dev/kmsg's) on every writable mount it has, and tries to read and write them. The
/// nodes reach the layer, as with docker build; none can be opened, the disk keeps its
/// data and the host's kernel log gets nothing.
#[test]
#[ignore = "needs root and a registry"]
fn device_nodes_a_step_makes_cannot_be_opened_but_reach_the_layer() {
    let _serial = ready();
    let mark = format!("RBUILD-DISK-{}", std::process::id());
    let disk = LoopDisk::new(mark.as_bytes());
    let (maj, min) = disk.major_minor();
    let kmsg_mark = format!("rbuild-kmsg-attack-{}", std::process::id());
    let script = format!(
        "try() {{ head -c 16 \"$1\" >/dev/null 2>&1 && echo \"opened-for-read:$1\"; \
           (echo {kmsg_mark} > \"$1\") 2>/dev/null && echo \"opened-for-write:$1\"; true; }}; \
         for d in / /dev /dev/shm /t /c /w; do mknod $d/disk b {maj} {min} && try $d/disk; \
           mknod $d/kmsg c 1 11 && try $d/kmsg; done; echo attack-done"
    );
    let dockerfile = format!(
        "FROM {BASE}\n\
         RUN --mount=type=tmpfs,target=/t --mount=type=cache,target=/c \
             --mount=type=bind,target=/w,rw sh -c '{script}'\n\
         RUN head -c 16 /disk > /from-lower 2>/dev/null && echo lower-$((6*7)) || echo lower-$((6*6))\n"
    );
    let ctx = context(&dockerfile, &[]);
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("fs.tar");
    let log = build_ok(
        rbuild(store.path())
            .arg("-o")
            .arg(format!("type=tar,dest={}", tar.display()))
            .arg(ctx.path()),
    );
    // Outputs are matched where the RUN line printed in the log cannot match them.
    assert!(log.contains(" attack-done\n"), "{log}");
    assert!(
        !log.contains("opened-for-read:/") && !log.contains("opened-for-write:/"),
        "a device node could be opened:\n{log}"
    );
    assert!(
        log.contains("lower-36\n"),
        "the lower layer's node opened:\n{log}"
    );
    assert_eq!(
        disk.head(mark.len()),
        mark.as_bytes(),
        "the disk was written"
    );
    let dmesg = run(&mut Command::new("dmesg"));
    assert!(
        !String::from_utf8_lossy(&dmesg.stdout).contains(&kmsg_mark),
        "the step wrote to the host's kernel log"
    );
    // The nodes of the image's own filesystem are in its layer, as docker build keeps them.
    let nodes = device_nodes(&std::fs::read(&tar).unwrap());
    assert_eq!(nodes.get("disk"), Some(&('b', maj, min)), "{nodes:?}");
    assert_eq!(nodes.get("kmsg"), Some(&('c', 1, 11)), "{nodes:?}");
}

/// A stage (or a registry image) whose files are links out of it: `h -> /`, `t -> <host
/// dir>`, `d/up -> ../../../..`.
fn link_stage_lines(host_dir: &Path) -> String {
    format!(
        "RUN ln -s / /h && ln -s {} /t && mkdir -p /d && ln -s ../../../../../../.. /d/up",
        host_dir.display()
    )
}

/// Issue 13, escape 2: `RUN --mount=type=bind,from=<stage|image>,source=<symlink>` must
/// resolve the link inside the stage, never on the host: `h -> /` is the stage's root.
#[test]
#[ignore = "needs root and a registry"]
fn bind_mount_sources_resolve_inside_the_stage_or_image() {
    let _serial = ready();
    let host = tempfile::tempdir().unwrap();
    let secret = format!("HOST-SECRET-{}", std::process::id());
    std::fs::write(host.path().join("secret.txt"), &secret).unwrap();
    std::fs::create_dir(host.path().join("dir")).unwrap();
    let hp = host.path().display().to_string();

    // The same links, once in a stage and once in an image pushed to the registry.
    let store = tempfile::tempdir().unwrap();
    let image = format!(
        "{REGISTRY}/rbuild-test/security-links:{}",
        std::process::id()
    );
    let ctx = context(
        &format!("FROM {BASE}\n{}\n", link_stage_lines(host.path())),
        &[],
    );
    build_ok(rbuild(store.path()).args(["-t", &image]).arg(ctx.path()));
    support::run_ok(
        Command::new(rbuild_bin())
            .env("RBUILD_ROOT", store.path())
            .args(["push", &image]),
    );
    let _pushed = support::RegistryImage::pushed(&image);

    for from in ["evil", image.as_str()] {
        let attacks = [
            // Reads through a link to / and to the host dir, and a relative climb.
            format!("--mount=type=bind,from={from},source=h,target=/m cat /m{hp}/secret.txt"),
            format!("--mount=type=bind,from={from},source=h,target=/m ls /m"),
            format!("--mount=type=bind,from={from},source=d/up,target=/m cat /m{hp}/secret.txt"),
            format!("--mount=type=bind,from={from},source=t/secret.txt,target=/m cat /m"),
            // Writes through a rw mount of a link.
            format!("--mount=type=bind,from={from},source=h,target=/m,rw touch /m{hp}/dir/pwned"),
            format!("--mount=type=bind,from={from},source=t,target=/m,rw touch /m/dir/pwned"),
        ];
        for attack in attacks {
            let dockerfile = format!(
                "FROM {BASE} AS evil\n{}\nFROM {BASE}\nRUN {attack} > /got 2>&1; true\n",
                link_stage_lines(host.path())
            );
            let ctx = context(&dockerfile, &[]);
            let fresh = tempfile::tempdir().unwrap();
            let dest = tempfile::tempdir().unwrap();
            let out = build(
                rbuild(fresh.path())
                    .arg("-o")
                    .arg(format!("type=local,dest={}", dest.path().display()))
                    .arg(ctx.path()),
            );
            let log = stderr(&out);
            assert!(
                !log.contains(&secret),
                "{attack}: the host file was read:\n{log}"
            );
            let got = std::fs::read_to_string(dest.path().join("got")).unwrap_or_default();
            assert!(
                !got.contains(&secret),
                "{attack}: the host file was read: {got}"
            );
            if attack.contains(" ls /m") {
                // `h -> /` is the stage's own root.
                assert!(out.status.success(), "{attack}:\n{log}");
                let names: Vec<&str> = got.split_whitespace().collect();
                assert!(
                    ["bin", "etc", "h", "t", "d"]
                        .iter()
                        .all(|n| names.contains(n)),
                    "{attack}: {got}"
                );
            }
            assert!(
                !host.path().join("dir/pwned").exists(),
                "{attack}: a host file was created"
            );
        }
    }
}

/// Issue 13, escape 3: `RUN ["/proc/self/exe"]` with `ENV LD_PRELOAD` from a glibc image
/// runs image code in a process whose /proc/self/exe is the executable rbuild started
/// its helper from. Every change to it must fail, and the host binary stays as it was.
#[test]
#[ignore = "needs root and a registry"]
fn the_rbuild_binary_cannot_be_changed_from_a_step() {
    let _serial = ready();
    let bin = rbuild_bin();
    let before = std::fs::metadata(&bin).unwrap();
    let hash_before = support::sha256_file(&bin);
    let evil = cc(EVIL_SO, &["-shared", "-fPIC"]);
    let dockerfile = format!(
        "FROM {DEBIAN}\nCOPY evil.so /evil.so\nENV LD_PRELOAD=/evil.so\n\
         RUN [\"/proc/self/exe\"]\n"
    );
    let ctx = context(&dockerfile, &[("evil.so", &evil)]);
    let store = tempfile::tempdir().unwrap();
    let root = build_rootfs(store.path(), ctx.path(), &[]);
    let report = std::fs::read_to_string(root.path().join("evil-report")).unwrap();
    // It did run inside the step's rbuild process, and got nowhere.
    assert_every_change_refused(&report);
    let after = std::fs::metadata(&bin).unwrap();
    assert_eq!(after.mode(), before.mode(), "mode changed");
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(after.mtime(), before.mtime(), "mtime changed");
    assert_eq!(after.mtime_nsec(), before.mtime_nsec(), "mtime changed");
    let mut buf = [0u8; 64];
    assert!(
        rustix::fs::getxattr(&bin, "security.capability", &mut buf).is_err(),
        "file capabilities were set on {}",
        bin.display()
    );
    assert_eq!(support::sha256_file(&bin), hash_before, "contents changed");
}

/// Issue 13, escape 4: the context's Dockerfile and .dockerignore are links to
/// /proc/self/environ or /dev/zero. rbuild refuses them without printing its environment
/// or reading forever; a Dockerfile outside the context named with -f still works.
#[test]
#[ignore = "needs root and a registry"]
fn dockerfile_and_dockerignore_links_out_of_the_context_are_refused() {
    let _serial = ready();
    let token = format!("CI_TOKEN_{}", std::process::id());
    let store = tempfile::tempdir().unwrap();
    for (file, target) in [
        ("Dockerfile", "/proc/self/environ"),
        ("Dockerfile", "/dev/zero"),
        (".dockerignore", "/proc/self/environ"),
        (".dockerignore", "/dev/zero"),
    ] {
        let ctx = context(&format!("FROM {BASE}\nRUN true\n"), &[]);
        let _ = std::fs::remove_file(ctx.path().join(file));
        std::os::unix::fs::symlink(target, ctx.path().join(file)).unwrap();
        let out = build(
            rbuild(store.path())
                .env("RBUILD_TEST_CI_TOKEN", &token)
                .arg(ctx.path()),
        );
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{file} -> {target}: {log}");
        assert!(
            !log.contains(&token),
            "{file} -> {target} leaked the environment: {log}"
        );
        assert!(
            log.contains(file) && log.contains("not in the build context"),
            "{file} -> {target}: {log}"
        );
    }
    // -f naming a file outside the context is the user's choice, and works.
    let outside = tempfile::tempdir().unwrap();
    let df = outside.path().join("Dockerfile.ci");
    std::fs::write(&df, format!("FROM {BASE}\nRUN true\n")).unwrap();
    let ctx = context("this is not the Dockerfile used", &[]);
    build_ok(rbuild(store.path()).arg("-f").arg(&df).arg(ctx.path()));
}

/// Runs `cmd` as nobody (uid/gid 65534, no groups).
fn as_nobody(args: &[&str]) -> Output {
    run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args))
}

/// Issue 13, escape 5: a setuid-root binary and a device node from a RUN step sit in the
/// store's layer trees; no other local user may reach them.
#[test]
#[ignore = "needs root and a registry"]
fn the_store_is_closed_to_other_users() {
    let _serial = ready();
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = top.path().join("store");
    let ctx = context(
        &format!(
            "FROM {BASE}\nRUN cp /bin/busybox /suid && chmod 4755 /suid && mknod /null c 1 3\n"
        ),
        &[],
    );
    build_ok(rbuild(&store).arg(ctx.path()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&store), 0o700);
    let suid: Vec<PathBuf> = std::fs::read_dir(store.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("diff/suid"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(suid.len(), 1, "the layer with the setuid binary");
    let suid = suid[0].display().to_string();
    let o = as_nobody(&[&suid, "id", "-u"]);
    assert!(
        !o.status.success(),
        "nobody ran {suid}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = as_nobody(&["ls", &store.join("layers").display().to_string()]);
    assert!(!o.status.success(), "nobody listed the store's layers");

    // A store left open by an older rbuild (or by hand) is closed again at start-up.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    support::run_ok(
        Command::new(rbuild_bin())
            .env("RBUILD_ROOT", &store)
            .arg("images"),
    );
    assert_eq!(mode(&store), 0o700);
}

/// Issue 13, escape 6: the step swaps a mount stub's parent for a link to a host directory
/// (BuildKit's CVE-2024-23652); removing the stub must not follow it.
#[test]
#[ignore = "needs root and a registry"]
fn mount_stub_removal_never_follows_a_planted_link() {
    let _serial = ready();
    let host = tempfile::tempdir().unwrap();
    // What the stubs look like: an empty 0755 dir and an empty 0644 file.
    std::fs::create_dir(host.path().join("victim")).unwrap();
    std::fs::set_permissions(
        host.path().join("victim"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(host.path().join("tok"), "").unwrap();
    std::fs::set_permissions(
        host.path().join("tok"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let hp = host.path().display();
    let dockerfile = format!(
        "FROM {BASE}\n\
         RUN --mount=type=tmpfs,target=/n/victim mv /n /n2 && ln -s {hp} /n\n\
         RUN --mount=type=secret,id=s,target=/s/tok mv /s /s2 && ln -s {hp} /s\n"
    );
    let ctx = context(&dockerfile, &[("secret", b"x")]);
    let store = tempfile::tempdir().unwrap();
    let secret = format!("id=s,src={}", ctx.path().join("secret").display());
    build_ok(
        rbuild(store.path())
            .args(["--secret", &secret])
            .arg(ctx.path()),
    );
    assert!(
        host.path().join("victim").is_dir(),
        "a host directory was removed"
    );
    assert!(host.path().join("tok").is_file(), "a host file was removed");
}

const SYSCALLS_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <stddef.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEYCTL_GET_KEYRING_ID 0
#define KEYCTL_SEARCH 10
#define KEYCTL_UNLINK 9
#define KEY_SPEC_USER_KEYRING -4

static void report(const char *what, long r) { printf("%s=%d\n", what, r < 0 ? errno : 0); }

static long i386_syscall(long nr, long a, long b) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b) : "memory");
    return ret;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "find-key")) {
        long id = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, "user", argv[2], 0);
        if (id >= 0) syscall(SYS_keyctl, KEYCTL_UNLINK, id, KEY_SPEC_USER_KEYRING);
        printf("%ld\n", id);
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "forkbomb")) {
        long n = 0;
        for (;;) {
            pid_t p = fork();
            if (p == 0) { pause(); _exit(0); }
            if (p < 0) break;
            n++;
        }
        printf("forked=%ld errno=%d\n", n, errno);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "abstract")) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path + 1, argv[2], sizeof a.sun_path - 2);
        socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(argv[2]);
        report("connect_abstract", connect(s, (struct sockaddr *)&a, len));
        return 0;
    }
    const char *key = argc > 1 ? argv[1] : "rbuild-test";
    report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0));
    report("add_key", syscall(SYS_add_key, "user", key, "x", 1, KEY_SPEC_USER_KEYRING));
    report("request_key", syscall(SYS_request_key, "user", key, NULL, 0));
    report("unshare_newuser", syscall(SYS_unshare, CLONE_NEWUSER));
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("clone_newuser", pid);
    report("clone3", syscall(SYS_clone3, NULL, 0));
    report("bpf", syscall(SYS_bpf, 0, NULL, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    report("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("init_module", syscall(SYS_init_module, NULL, 0, ""));
    report("finit_module", syscall(SYS_finit_module, -1, "", 0));
    report("delete_module", syscall(SYS_delete_module, "rbuild_none", 0));
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
    char buf[64];
    report("syslog", syscall(SYS_syslog, 3, buf, sizeof buf));
    long r = i386_syscall(288, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING);
    printf("i386_keyctl=%ld\n", r < 0 ? -r : 0);
    report("x32_getpid", syscall(0x40000000 | SYS_getpid));
    /* Ordinary calls still work. */
    report("getpid", syscall(SYS_getpid));
    report("unshare_fs", syscall(SYS_unshare, CLONE_FS));
    report("fork", (pid = fork()) == 0 ? (_exit(0), 0) : pid);
    waitpid(pid, NULL, 0);
    return 0;
}
"#;

/// Issue 13, hardening 7: the calls Docker's seccomp profile refuses are refused in RUN,
/// for 64-bit code and through the 32-bit `int 0x80` door; the host root's keyring gets
/// no key from the step.
#[test]
#[ignore = "needs root and a registry"]
fn seccomp_refuses_what_dockers_profile_refuses() {
    let _serial = ready();
    let prog = cc(SYSCALLS_C, &["-static"]);
    let key = format!("rbuild-test-{}", std::process::id());
    let ctx = context(
        &format!("FROM {BASE}\nCOPY --chmod=755 sc /sc\nRUN /sc {key} > /report\n"),
        &[("sc", &prog)],
    );
    let store = tempfile::tempdir().unwrap();
    let root = build_rootfs(store.path(), ctx.path(), &[]);
    let report = std::fs::read_to_string(root.path().join("report")).unwrap();
    let results: BTreeMap<&str, i32> = report
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    for call in [
        "keyctl",
        "add_key",
        "request_key",
        "unshare_newuser",
        "clone_newuser",
        "bpf",
        "userfaultfd",
        "perf_event_open",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "open_by_handle_at",
        "io_uring_setup",
        "syslog",
        "i386_keyctl",
    ] {
        assert_eq!(results.get(call), Some(&libc::EPERM), "{call}: {report}");
    }
    for call in ["clone3", "x32_getpid"] {
        assert_eq!(results.get(call), Some(&libc::ENOSYS), "{call}: {report}");
    }
    for call in ["getpid", "unshare_fs", "fork"] {
        assert_eq!(results.get(call), Some(&0), "{call}: {report}");
    }
    // The host root's user keyring holds no key the step added.
    let host_prog = tempfile::tempdir().unwrap();
    let sc = host_prog.path().join("sc");
    std::fs::write(&sc, &prog).unwrap();
    std::fs::set_permissions(&sc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let found = support::run_ok(Command::new(&sc).args(["find-key", &key]));
    assert!(
        found.trim().starts_with('-'),
        "the step added {key} to the host keyring"
    );
}

/// Issue 13, hardening 8: an rbuild started with an inheritable and ambient CAP_SYS_ADMIN
/// hands neither to a step, root or not.
#[test]
#[ignore = "needs root and a registry"]
fn inherited_capabilities_do_not_reach_a_step() {
    let _serial = ready();
    let ctx = context(
        &format!(
            "FROM {BASE}\nRUN grep ^Cap /proc/self/status > /root-caps\n\
             USER user\nRUN grep ^Cap /proc/self/status > /tmp/user-caps\n"
        ),
        &[],
    );
    let store = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    build_ok(
        Command::new("setpriv")
            .args(["--inh-caps=+sys_admin", "--ambient-caps=+sys_admin", "--"])
            .arg(rbuild_bin())
            .env("RBUILD_ROOT", store.path())
            .arg("-o")
            .arg(format!("type=local,dest={}", dest.path().display()))
            .arg(ctx.path()),
    );
    let caps = |f: &str| std::fs::read_to_string(dest.path().join(f)).unwrap();
    assert_eq!(
        caps("root-caps"),
        "CapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\nCapEff:\t00000000a80425fb\n\
         CapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\n"
    );
    assert_eq!(
        caps("tmp/user-caps"),
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\n"
    );
}

/// Issue 13, hardening 9: by default a step reaches the outside (through slirp4netns) but
/// neither a service on the host's loopback nor the host's abstract unix sockets.
/// `--network=host` gives the host's network as asked; `RUN --network=host` in the
/// Dockerfile needs `--allow network.host`.
#[test]
#[ignore = "needs root and a registry"]
fn the_default_network_keeps_host_loopback_and_abstract_sockets_out_of_reach() {
    let _serial = ready();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = (&stream).write_all(b"HOST-LOOPBACK\n");
        }
    });
    use std::os::linux::net::SocketAddrExt;
    let name = format!("rbuild-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let unix = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let unix_accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let unix_counter = unix_accepted.clone();
    std::thread::spawn(move || {
        for _ in unix.incoming().flatten() {
            unix_counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let prog = cc(SYSCALLS_C, &["-static"]);
    let probe = format!(
        "nc -w 2 127.0.0.1 {port} </dev/null; nc -w 2 10.0.2.2 {port} </dev/null; \
         /sc abstract {name}; \
         wget -q -O /dev/null http://deb.debian.org/debian/dists/bookworm/Release \
           && echo outbound-ok; true"
    );
    let dockerfile = format!("FROM {BASE}\nCOPY --chmod=755 sc /sc\nRUN {probe}\n");
    let ctx = context(&dockerfile, &[("sc", &prog)]);
    let store = tempfile::tempdir().unwrap();

    let log = build_ok(rbuild(store.path()).arg("--no-cache").arg(ctx.path()));
    let load = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);
    assert!(!log.contains("HOST-LOOPBACK"), "{log}");
    assert_eq!(
        load(&accepted),
        0,
        "the host's loopback service was reached:\n{log}"
    );
    assert!(
        log.contains("connect_abstract=111"),
        "ECONNREFUSED expected:\n{log}"
    );
    assert_eq!(
        load(&unix_accepted),
        0,
        "the host's abstract socket was reached"
    );
    assert!(log.contains("outbound-ok"), "no way out:\n{log}");

    // The host network, when asked for, is the host's.
    let log = build_ok(
        rbuild(store.path())
            .args(["--no-cache", "--network", "host"])
            .arg(ctx.path()),
    );
    assert!(log.contains("HOST-LOOPBACK"), "{log}");
    assert!(log.contains("connect_abstract=0"), "{log}");

    // RUN --network=host from the Dockerfile needs the entitlement.
    let ctx = context(
        &format!("FROM {BASE}\nRUN --network=host nc -w 2 127.0.0.1 {port} </dev/null\n"),
        &[],
    );
    let out = build(rbuild(store.path()).arg(ctx.path()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Dockerfile:2: network.host is not allowed")
            && stderr(&out).contains("--allow network.host"),
        "{}",
        stderr(&out)
    );
    let log = build_ok(
        rbuild(store.path())
            .args(["--allow", "network.host"])
            .arg(ctx.path()),
    );
    assert!(log.contains("HOST-LOOPBACK"), "{log}");
}

/// Issue 13, hardening 10: a fork bomb stops at the pids limit (4096 by default,
/// `--pids-limit` to change it); the step's cgroup is gone afterwards.
#[test]
#[ignore = "needs root and a registry"]
fn a_step_cannot_start_more_processes_than_the_limit() {
    let _serial = ready();
    // PID 1 forks children that wait until fork fails, then reports how many it made.
    let prog = cc(SYSCALLS_C, &["-static"]);
    let ctx = context(
        &format!("FROM {BASE}\nCOPY --chmod=755 sc /sc\nRUN [\"/sc\", \"forkbomb\"]\n"),
        &[("sc", &prog)],
    );
    let store = tempfile::tempdir().unwrap();
    for (extra, expected) in [(&[][..], 4096), (&["--pids-limit", "50"][..], 50)] {
        let mut child = rbuild(store.path())
            .arg("--no-cache")
            .args(extra)
            .arg(ctx.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut log = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(child.wait().unwrap().success(), "{log}");
        assert_no_leftovers(pid);
        // The limit counts the step's PID 1 too; fork fails with EAGAIN.
        assert!(
            log.contains(&format!("forked={} errno=11\n", expected - 1)),
            "{extra:?}: {log}"
        );
        for parent in ["/sys/fs/cgroup/pids/rbuild", "/sys/fs/cgroup/rbuild"] {
            for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with(&format!("{pid}-")),
                    "cgroup {name} left behind"
                );
            }
        }
    }
}

/// Issue 13, hardening 10: a secret lives on the step's tmpfs only, never on the store's
/// disk, not even while the step runs.
#[test]
#[ignore = "needs root and a registry"]
fn secrets_never_touch_the_disk() {
    let _serial = ready();
    let value = format!("SECRET-VALUE-{}", std::process::id());
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("s"), &value).unwrap();
    let ctx = context(
        &format!(
            "FROM {BASE}\nRUN --mount=type=secret,id=s,target=/s cat /s >/dev/null && sleep 3\n"
        ),
        &[],
    );
    let store = tempfile::tempdir().unwrap();
    let mut child = rbuild(store.path())
        .args([
            "--secret",
            &format!("id=s,src={}", src.path().join("s").display()),
        ])
        .arg(ctx.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id();
    let mut scans = 0;
    while child.try_wait().unwrap().is_none() {
        let hits = support::files_containing(store.path(), value.as_bytes());
        assert!(hits.is_empty(), "the secret is on disk: {hits:?}");
        scans += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(child.wait().unwrap().success());
    assert!(
        scans >= 10,
        "the build ended before the store could be watched"
    );
    assert!(support::files_containing(store.path(), value.as_bytes()).is_empty());
    assert_no_leftovers(pgid);
}

/// A rootfs tar of `n` empty files in directories of 1000, sorted as builders write them.
fn many_entries_tar(n: usize, path: &Path) {
    let mut b = tar::Builder::new(std::io::BufWriter::new(
        std::fs::File::create(path).unwrap(),
    ));
    for i in 0..n {
        if i % 1000 == 0 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, format!("d{:04}/", i / 1000), std::io::empty())
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        b.append_data(
            &mut h,
            format!("d{:04}/f{:04}", i / 1000, i % 1000),
            std::io::empty(),
        )
        .unwrap();
    }
    b.into_inner().unwrap().flush().unwrap();
}

/// Issue 13, hardening 10: applying a layer keeps nothing per entry (a 1,000,000-entry
/// layer took 245 MB): importing 100,000 entries peaks at the RSS of 10,000.
#[test]
#[ignore = "needs root and a registry"]
fn applying_a_layer_takes_memory_flat_in_its_entries() {
    let _serial = ready();
    let dir = many_files_tempdir(250_000);
    let peak_kb = |n: usize| -> u64 {
        let tar = dir.path().join(format!("{n}.tar"));
        many_entries_tar(n, &tar);
        let out = run(Command::new("/usr/bin/time")
            .args(["-f", "%M"])
            .arg(rbuild_bin())
            .arg("--root")
            .arg(dir.path().join(format!("store{n}")))
            .arg("import")
            .arg(&tar)
            .arg(format!("rbuild-test/many:{n}")));
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out).trim().lines().last().unwrap().parse().unwrap()
    };
    let (small, big) = (peak_kb(10_000), peak_kb(100_000));
    assert!(
        big < small + 8 * 1024,
        "peak RSS {small} KB for 10,000 entries, {big} KB for 100,000"
    );
}

/// A tmpfs made a shared mount (as docker makes /var/lib/docker) with a submount below it
/// (as a container's filesystem is); unmounted on drop.
struct SharedMount {
    dir: tempfile::TempDir,
}

impl SharedMount {
    fn new() -> SharedMount {
        // Not a /tmp/.tmp* name: those are what the leftover check looks for.
        let dir = tempfile::Builder::new()
            .prefix("rbuild-shared-mount-")
            .tempdir()
            .unwrap();
        let top = dir.path().display().to_string();
        let sub = format!("{top}/sub");
        for args in [
            vec!["-t", "tmpfs", "tmpfs", top.as_str()],
            vec!["--make-shared", top.as_str()],
        ] {
            support::run_ok(Command::new("mount").args(&args));
        }
        std::fs::create_dir(&sub).unwrap();
        support::run_ok(Command::new("mount").args(["-t", "tmpfs", "tmpfs", &sub]));
        std::fs::write(format!("{sub}/marker"), "still mounted").unwrap();
        SharedMount { dir }
    }

    fn sub_is_mounted(&self) -> bool {
        let sub = self.dir.path().join("sub");
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*sub.to_string_lossy()))
            && sub.join("marker").exists()
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path())
            .status();
    }
}

/// A build must leave the host's mounts alone, shared ones included: slirp4netns's own
/// sandbox made only `/` private before detaching the old root, so the detach propagated
/// to the host and unmounted docker's container filesystems under /var/lib/docker
/// (seen as `docker export` returning an empty tar while rbuild built next to it).
#[test]
#[ignore = "needs root and a registry"]
fn a_build_leaves_the_hosts_shared_mounts_mounted() {
    let _serial = ready();
    let shared = SharedMount::new();
    assert!(shared.sub_is_mounted());
    let ctx = context(&format!("FROM {BASE}\nRUN echo networked\n"), &[]);
    let store = tempfile::tempdir().unwrap();
    build_ok(rbuild(store.path()).arg("--no-cache").arg(ctx.path()));
    assert!(
        shared.sub_is_mounted(),
        "a mount below a shared mount of the host was unmounted by the build"
    );
}
