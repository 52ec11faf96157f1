//! The RUN sandbox against a real kernel: a busybox rootfs as the lower layer, the
//! rbuild binary as the helper. Needs root, overlayfs and /bin/busybox (busybox-static):
//! the tests are `#[ignore = "needs root"]`, run by scripts/test.sh (`--include-ignored`),
//! and fail naming what is missing.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rbuild::fileop::{FileJob, FileJobError, FileJobOutput, MkdirJob};
use rbuild::sandbox::{
    self, Exit, FsSource, Mount, Network, Overlay, Rlimit, RlimitResource, RunSpec, SandboxError,
    SecurityMode, SCRATCH_PREFIX,
};

/// One step at a time, so "no mount left behind" can look at every process.
static SERIAL: Mutex<()> = Mutex::new(());

struct Fixture {
    _guard: MutexGuard<'static, ()>,
    tmp: tempfile::TempDir,
    lower: PathBuf,
}

const APPLETS: &[&str] = &[
    "sh", "echo", "id", "cat", "ls", "sleep", "hostname", "rm", "touch", "mkdir", "stat", "env",
    "pwd", "grep", "wc", "true", "mount", "df",
];

/// What `#[ignore = "needs root"]` stands for here: root, /bin/busybox and overlayfs.
fn needs_root_busybox_and_overlay() {
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .contains("overlay");
    support::needs_root();
    support::require(Path::new("/bin/busybox").exists(), "/bin/busybox");
    support::require(overlay, "overlayfs");
}

/// A tiny image: busybox, a passwd/group with a user in two extra groups, /etc/motd.
fn make_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nwheel:x:10:user\naudio:x:29:other,user\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/motd"), "welcome\n").unwrap();
}

fn fixture() -> Fixture {
    needs_root_busybox_and_overlay();
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    sandbox::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_rbuild")));
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    make_rootfs(&lower);
    Fixture {
        _guard: guard,
        tmp,
        lower,
    }
}

impl Fixture {
    fn overlay(&self, lowers: Vec<PathBuf>) -> Overlay {
        let n = std::fs::read_dir(self.tmp.path()).unwrap().count();
        let upper = self.tmp.path().join(format!("upper{n}"));
        let work = self.tmp.path().join(format!("work{n}"));
        std::fs::create_dir(&upper).unwrap();
        std::fs::create_dir(&work).unwrap();
        Overlay {
            lowers,
            upper,
            work,
        }
    }

    fn spec(&self, script: &str) -> RunSpec {
        RunSpec {
            rootfs: self.overlay(vec![self.lower.clone()]),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            hostname: "testhost".into(),
            network: Network::Host,
            mounts: Vec::new(),
            files: Vec::new(),
            pids_limit: None,
            security: SecurityMode::Sandbox,
            extra_hosts: Vec::new(),
            rlimits: Vec::new(),
        }
    }
}

fn run(spec: &RunSpec) -> (Exit, String) {
    let mut out = Vec::new();
    let exit = sandbox::run(spec, None, &mut |b| out.extend_from_slice(b)).unwrap();
    assert_no_mounts_left();
    (exit, String::from_utf8(out).unwrap())
}

fn ok(spec: &RunSpec) -> String {
    let (exit, out) = run(spec);
    assert_eq!(exit, Exit::Code(0), "output: {out}");
    out
}

/// Every mount of a step lives in the helper's namespace; none may be visible anywhere
/// once the step is over.
/// Tests of this binary run one at a time: each checks that no sandbox mount of this
/// process tree is left, which a sandbox of a test running beside it would break.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// No sandbox mount is left in this process's namespace or in any process this test binary
/// started. Other sandboxes on the machine (another test binary, a build) are not ours.
fn assert_no_mounts_left() {
    let me = std::process::id();
    let ours: Vec<String> = mounts_matching(SCRATCH_PREFIX)
        .into_iter()
        .filter(|line| {
            let pid: u32 = line.split(':').next().unwrap().parse().unwrap();
            descends_from(pid, me)
        })
        .collect();
    assert_eq!(ours, Vec::<String>::new());
}

/// Whether `pid` is `ancestor` or one of its descendants (following /proc/PID/stat's ppid).
fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    while pid > 1 {
        if pid == ancestor {
            return true;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The command name may hold spaces and parentheses: ppid follows the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return false;
        };
        pid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
    }
    false
}

fn mounts_matching(needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("mountinfo")) else {
            continue;
        };
        hits.extend(
            text.lines()
                .filter(|l| l.contains(needle))
                .map(|l| format!("{}: {l}", name.to_string_lossy())),
        );
    }
    hits
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
#[ignore = "needs root"]
fn echo_output_and_clean_upper() {
    let _serial = serial();
    let fx = fixture();
    let spec = fx.spec("echo hi; echo err >&2");
    assert_eq!(ok(&spec), "hi\nerr\n");
    // No dev, proc, sys, etc/resolv.conf, etc/hosts stubs, no copied-up /etc.
    assert_eq!(listing(&spec.rootfs.upper), Vec::<String>::new());
}

/// A step's overlay is mounted `volatile` (Linux 5.10 and later), so the helper's exit
/// does not wait for the disk: the executor syncs the upper before the layer's record
/// (exec/executor.rs). The mark such a mount leaves in the work dir is removed before the
/// next mount of the same upper, as a COPY with a git source between its others mounts
/// it twice.
#[test]
#[ignore = "needs root"]
fn a_steps_overlay_is_volatile_and_mounts_again_over_the_same_upper() {
    let _serial = serial();
    let fx = fixture();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut version = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (version.next().unwrap(), version.next().unwrap());
    let spec = fx.spec("grep ' / / ' /proc/self/mountinfo; echo one > /f");
    let root_mount = ok(&spec);
    assert_eq!(
        root_mount.contains("volatile"),
        (major, minor) >= (5, 10),
        "kernel {release}: {root_mount}"
    );
    let again = RunSpec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat /f; echo two >> /f".into(),
        ],
        ..spec.clone()
    };
    assert_eq!(ok(&again), "one\n");
    let upper_f = std::fs::read_to_string(spec.rootfs.upper.join("f")).unwrap();
    assert_eq!(upper_f, "one\ntwo\n");
}

#[test]
#[ignore = "needs root"]
fn pid_namespace_and_hostname() {
    let _serial = serial();
    let fx = fixture();
    let out = ok(&fx.spec("echo $$; hostname; ls /proc | grep '^[0-9]*$' | wc -l"));
    // PID 1 is the shell; /proc holds it plus ls and grep (wc, the pipe's last command,
    // is itself a child too), never the host's processes.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1");
    assert_eq!(lines[1], "testhost");
    let procs: usize = lines[2].trim().parse().unwrap();
    assert!((1..=4).contains(&procs), "{out}");
    let hosts = ok(&fx.spec("cat /etc/hosts"));
    assert!(hosts.contains("localhost testhost"), "{hosts}");
}

#[test]
#[ignore = "needs root"]
fn exit_codes_and_start_failures() {
    let _serial = serial();
    let fx = fixture();
    assert_eq!(run(&fx.spec("exit 3")).0, Exit::Code(3));
    let (exit, _) = run(&fx.spec("sh -c 'kill -9 $$'; exit $?"));
    assert_eq!(exit, Exit::Code(137));

    let mut spec = fx.spec("");
    spec.argv = vec!["no-such-command".into()];
    match sandbox::run(&spec, None, &mut |_| {}) {
        Err(SandboxError::Exec(m)) => assert_eq!(
            m,
            "exec: \"no-such-command\": executable file not found in $PATH"
        ),
        other => panic!("{other:?}"),
    }
    spec.argv = vec!["/bin/missing".into()];
    match sandbox::run(&spec, None, &mut |_| {}) {
        Err(SandboxError::Exec(m)) => assert_eq!(
            m,
            "exec: \"/bin/missing\": stat /bin/missing: no such file or directory"
        ),
        other => panic!("{other:?}"),
    }
    let mut spec = fx.spec("true");
    spec.user = "nobody".into();
    match sandbox::run(&spec, None, &mut |_| {}) {
        Err(e @ SandboxError::User { .. }) => assert_eq!(
            e.to_string(),
            "resolving user `nobody`: unable to find user nobody: no matching entries in passwd file"
        ),
        other => panic!("{other:?}"),
    }
    assert_no_mounts_left();
}

#[test]
#[ignore = "needs root"]
fn sigpipe_is_default_again() {
    let _serial = serial();
    // Rust ignores SIGPIPE in the helper; `yes` must die of it when head exits, not get
    // EPIPE.
    let fx = fixture();
    let out = ok(&fx.spec("sh -c 'yes; echo status=$? >&2' | head -n 1"));
    assert_eq!(out, "y\nstatus=141\n");
}

#[test]
#[ignore = "needs root"]
fn deleted_lower_file_is_a_whiteout() {
    let _serial = serial();
    let fx = fixture();
    let spec = fx.spec("rm /etc/motd && touch /new && stat -c %a /new");
    assert_eq!(ok(&spec), "644\n", "umask 022 as in runc");
    let upper = &spec.rootfs.upper;
    let meta = std::fs::symlink_metadata(upper.join("etc/motd")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), 0);
    assert_eq!(listing(upper), ["etc", "etc/motd", "new"]);
}

#[test]
#[ignore = "needs root"]
fn user_resolution_and_groups() {
    let _serial = serial();
    let fx = fixture();
    let id = |user: &str| {
        let mut spec = fx.spec("id");
        spec.user = user.into();
        ok(&spec).trim().to_string()
    };
    assert_eq!(id(""), "uid=0(root) gid=0(root) groups=0(root)");
    // The kernel keeps the group list sorted; the primary gid is in it (BuildKit adds it).
    let full = "uid=1000(user) gid=1000(user) groups=10(wheel),29(audio),1000(user)";
    assert_eq!(id("user"), full);
    assert_eq!(id("1000"), full);
    assert_eq!(
        id("user:audio"),
        "uid=1000(user) gid=29(audio) groups=29(audio)"
    );
    assert_eq!(
        id("1000:10"),
        "uid=1000(user) gid=10(wheel) groups=10(wheel)"
    );
    assert_eq!(id("4242"), "uid=4242 gid=0(root) groups=0(root)");
}

#[test]
#[ignore = "needs root"]
fn workdir_is_created_for_the_user() {
    let _serial = serial();
    let fx = fixture();
    let mut spec = fx.spec("pwd; echo $HOME; touch mine");
    spec.user = "user".into();
    spec.cwd = "/home/user/work".into();
    assert_eq!(ok(&spec), "/home/user/work\n/home/user\n");
    let upper = &spec.rootfs.upper;
    for d in ["home", "home/user", "home/user/work"] {
        let m = std::fs::metadata(upper.join(d)).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (1000, 1000, 0o755),
            "{d}"
        );
    }
    assert_eq!(
        std::fs::metadata(upper.join("home/user/work/mine"))
            .unwrap()
            .uid(),
        1000
    );
}

#[test]
#[ignore = "needs root"]
fn network_none_has_only_loopback() {
    let _serial = serial();
    let fx = fixture();
    let mut spec =
        fx.spec("ls /sys/class/net; cat /sys/class/net/lo/operstate; touch /sys/x || echo ro");
    spec.network = Network::None;
    assert_eq!(
        ok(&spec),
        "lo\nunknown\ntouch: /sys/x: Read-only file system\nro\n"
    );
    let mut spec = fx.spec("ls /sys/class/net | grep -c -v '^lo$'");
    spec.network = Network::Host;
    assert_ne!(
        ok(&spec).trim(),
        "0",
        "host network shows the host's interfaces"
    );
}

#[test]
#[ignore = "needs root"]
fn env_is_exact() {
    let _serial = serial();
    let fx = fixture();
    let mut spec = fx.spec("");
    spec.argv = vec!["/bin/env".into()];
    spec.env = vec!["A=1".into(), "B=two words".into()];
    assert_eq!(
        ok(&spec),
        format!("A=1\nB=two words\n{}\nHOME=/root\n", sandbox::DEFAULT_PATH)
    );
    spec.env = vec!["PATH=/bin:/x".into(), "HOME=/h".into()];
    assert_eq!(ok(&spec), "PATH=/bin:/x\nHOME=/h\n");
}

#[test]
#[ignore = "needs root"]
fn dev_is_minimal_and_usable() {
    let _serial = serial();
    let fx = fixture();
    let out = ok(&fx.spec(
        "ls /dev; echo x > /dev/null; cat /dev/null; ls /dev/pts; test -d /dev/shm && echo shm",
    ));
    assert_eq!(
        out,
        "core\nfd\nfull\nmqueue\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\nptmx\nshm\n"
    );
}

#[test]
#[ignore = "needs root"]
fn mounts_work_and_leave_nothing_in_the_layer() {
    let _serial = serial();
    let fx = fixture();
    let t = fx.tmp.path();
    let src = t.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello"), "hello\n").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cache = t.join("cache/c1");
    let mut spec = fx.spec(
        "cat /mnt/src/hello; touch /mnt/src/new 2>/dev/null || echo ro; \
         echo d > /mnt/disc/new && cat /mnt/disc/hello; stat -c %a /mnt/disc; \
         echo t > /mnt/tmp/t && cat /mnt/tmp/t; \
         echo c > /root/.cache/c; \
         cat /run/secrets/tok; echo; stat -c '%a %u' /run/secrets/tok; \
         /tmp/script.sh",
    );
    spec.mounts = vec![
        Mount::Bind {
            from: FsSource::Dir(src.clone()),
            source: "/".into(),
            target: "/mnt/src".into(),
            readonly: true,
        },
        Mount::Bind {
            from: FsSource::Dir(src.clone()),
            source: ".".into(),
            target: "disc".into(), // relative: below the working directory /mnt
            readonly: false,
        },
        Mount::Tmpfs {
            target: "/mnt/tmp".into(),
            size: Some(1 << 20),
        },
        Mount::Cache {
            source: cache.clone(),
            target: "/root/.cache".into(),
            uid: 1000,
            gid: 1000,
            mode: 0o750,
        },
        Mount::Secret {
            data: sandbox::SecretBytes(b"s3cret".to_vec()),
            target: "/run/secrets/tok".into(),
            uid: 1000,
            gid: 0,
            mode: 0o400,
        },
    ];
    spec.cwd = "/mnt".into();
    spec.files = vec![(
        "/tmp/script.sh".into(),
        b"#!/bin/sh\necho from-script\n".to_vec(),
        0o755,
    )];
    assert_eq!(
        ok(&spec),
        "hello\nro\nhello\n700\nt\ns3cret\n400 1000\nfrom-script\n"
    );
    assert!(!src.join("new").exists(), "discarded bind wrote through");
    assert_eq!(std::fs::read_to_string(cache.join("c")).unwrap(), "c\n");
    let m = std::fs::metadata(&cache).unwrap();
    assert_eq!((m.uid(), m.permissions().mode() & 0o7777), (1000, 0o750));
    // Only the working directory, which belongs to the layer (BuildKit creates it too).
    assert_eq!(listing(&spec.rootfs.upper), ["mnt"]);
}

#[test]
#[ignore = "needs root"]
fn default_capabilities_and_masked_kernel_files() {
    let _serial = serial();
    let fx = fixture();
    let out = ok(&fx.spec(
        "grep CapBnd /proc/self/status; wc -c < /proc/timer_list; ls /sys/firmware | wc -l; \
         echo 1 > /proc/sys/kernel/hostname || echo ro-sys; \
         echo x > /etc/hosts || echo ro-hosts",
    ));
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "CapBnd:\t00000000a80425fb");
    assert_eq!(&lines[1..3], ["0", "0"]);
    assert!(
        lines.contains(&"ro-sys") && lines.contains(&"ro-hosts"),
        "{out}"
    );
    let mut spec = fx.spec("grep CapEff /proc/self/status");
    spec.user = "user".into();
    assert_eq!(ok(&spec).trim(), "CapEff:\t0000000000000000");
}

/// `RUN --security=insecure` (BuildKit's insecure mode): every capability, for root and
/// for a USER alike, no seccomp filter, unmasked /proc, /sys writable, and a mount the step
/// makes stays inside its namespace. The same script in the default sandbox can do none
/// of it.
#[test]
#[ignore = "needs root"]
fn insecure_mode_grants_all_capabilities_and_the_default_none_of_them() {
    let _serial = serial();
    let fx = fixture();
    let host_caps = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .to_string();
    let script = "grep -E '^(CapEff|CapAmb|Seccomp):' /proc/self/status; \
         wc -c < /proc/timer_list; \
         grep -q ' /sys sysfs rw' /proc/mounts && echo sys-rw || echo sys-ro; \
         mkdir -p /mnt && mount -t tmpfs -o size=1236k rbuild-insecure-probe /mnt 2>/dev/null \
           && df -k /mnt | grep -c rbuild-insecure-probe || echo no-mount";
    let mut spec = fx.spec(script);
    spec.security = SecurityMode::Insecure;
    let out = ok(&spec);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], host_caps, "{out}");
    assert!(lines[1].starts_with("CapAmb:"), "{out}");
    assert_eq!(lines[2], "Seccomp:\t0", "{out}");
    assert_ne!(lines[3], "0", "/proc/timer_list is masked: {out}");
    assert_eq!(&lines[4..], ["sys-rw", "1"], "{out}");
    // Host side: the step's mount died with its namespace.
    assert_eq!(
        mounts_matching("rbuild-insecure-probe"),
        Vec::<String>::new()
    );

    // A non-root USER keeps them (ambient), as in BuildKit's spec.
    let mut spec = fx.spec("grep CapEff /proc/self/status; id -u");
    spec.security = SecurityMode::Insecure;
    spec.user = "user".into();
    let out = ok(&spec);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [host_caps.as_str(), "1000"]
    );

    // The default sandbox, same script: Docker's capabilities, the filter, masks, no mount.
    let out = ok(&fx.spec(script));
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "CapEff:\t00000000a80425fb", "{out}");
    assert_eq!(lines[1], "CapAmb:\t0000000000000000", "{out}");
    assert_eq!(lines[2], "Seccomp:\t2", "{out}");
    assert_eq!(&lines[3..], ["0", "sys-ro", "no-mount"], "{out}");
    assert_eq!(
        mounts_matching("rbuild-insecure-probe"),
        Vec::<String>::new()
    );
}

/// `--add-host` lines follow BuildKit's two in the step's /etc/hosts, which stays out of
/// the upper (it is a read-only bind of a file on the step's tmpfs).
#[test]
#[ignore = "needs root"]
fn extra_hosts_reach_etc_hosts_and_never_the_upper() {
    let _serial = serial();
    let fx = fixture();
    let mut spec = fx.spec("cat /etc/hosts");
    spec.extra_hosts = vec![
        ("db".into(), "10.1.2.3".into()),
        ("v6".into(), "2001:db8::1".into()),
    ];
    let out = ok(&spec);
    assert_eq!(
        out,
        "127.0.0.1\tlocalhost testhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         10.1.2.3\tdb\n2001:db8::1\tv6\n"
    );
    assert_eq!(listing(&spec.rootfs.upper), Vec::<String>::new());
}

/// `--ulimit`: the limits the step's processes see, for root and for a USER; raised above
/// rbuild's own hard limit when rbuild holds CAP_SYS_RESOURCE (they are set before the
/// step's capabilities go; a container may have taken it from rbuild already).
#[test]
#[ignore = "needs root"]
fn rlimits_apply_to_the_step() {
    let _serial = serial();
    let fx = fixture();
    let (_, own_hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_RESOURCE: u32 = 24;
    let above = if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        (own_hard + 1000).min(1 << 20)
    } else {
        own_hard
    };
    for user in ["", "user"] {
        let mut spec = fx.spec("ulimit -n; ulimit -Hn; ulimit -Hc");
        spec.user = user.into();
        spec.rlimits = vec![
            Rlimit {
                resource: RlimitResource::Nofile,
                soft: 321,
                hard: above,
            },
            Rlimit {
                resource: RlimitResource::Core,
                soft: u64::MAX,
                hard: u64::MAX,
            },
        ];
        let out = ok(&spec);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["321", above.to_string().as_str(), "unlimited"],
            "user {user:?}"
        );
    }
    // A soft limit above the hard one is the kernel's to refuse: a setup error, not a panic.
    let mut spec = fx.spec("true");
    spec.rlimits = vec![Rlimit {
        resource: RlimitResource::Nofile,
        soft: 10,
        hard: 5,
    }];
    let err = sandbox::run(&spec, None, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--ulimit nofile=10:5"), "{err}");
    // Above rbuild's own hard limit without CAP_SYS_RESOURCE: the error says why.
    if cap_eff & (1 << CAP_SYS_RESOURCE) == 0 {
        let mut spec = fx.spec("true");
        spec.rlimits = vec![Rlimit {
            resource: RlimitResource::Nofile,
            soft: 10,
            hard: own_hard + 1,
        }];
        let err = sandbox::run(&spec, None, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("needs CAP_SYS_RESOURCE"), "{err}");
    }
    assert_no_mounts_left();
}

#[test]
#[ignore = "needs root"]
fn syncs_succeed_without_flushing_and_other_calls_are_untouched() {
    let _serial = serial();
    let fx = fixture();
    // fdatasync on /dev/null fails with EINVAL when it really runs; the step's filter
    // answers it (and fsync, sync) with success before the kernel looks at the file. Other
    // calls keep their errors, and the filter holds for non-root users too.
    for user in ["", "user"] {
        let mut spec = fx.spec(
            "grep -c '^Seccomp:.2' /proc/self/status; sync -d /dev/null && echo datasync-ok; \
             sync /dev/null && echo fsync-ok; sync && echo sync-ok; \
             cat /nonexistent 2>/dev/null || echo enoent",
        );
        spec.user = user.into();
        let out = ok(&spec);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["1", "datasync-ok", "fsync-ok", "sync-ok", "enoent"],
            "user {user:?}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn terminate_all_kills_running_steps() {
    let _serial = serial();
    let fx = fixture();
    let spec = fx.spec("echo started; sleep 1000; echo not-killed");
    let (tx, rx) = std::sync::mpsc::channel();
    let step = std::thread::spawn(move || {
        let mut out = Vec::new();
        let exit = sandbox::run(&spec, None, &mut |b| {
            out.extend_from_slice(b);
            let _ = tx.send(());
        });
        (exit, out)
    });
    rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    sandbox::terminate_all();
    let (exit, out) = step.join().unwrap();
    assert_eq!(exit.unwrap(), Exit::Signal(9));
    assert_eq!(out, b"started\n");
    assert_no_mounts_left();
}

#[test]
#[ignore = "needs root"]
fn removing_stubs_keeps_parent_times() {
    let _serial = serial();
    let fx = fixture();
    // /etc/added makes /etc stay in the upper; the stub removal must not bump its mtime.
    let spec = fx.spec("touch /etc/added; sleep 1.1");
    ok(&spec);
    let etc = std::fs::metadata(spec.rootfs.upper.join("etc")).unwrap();
    let added = std::fs::metadata(spec.rootfs.upper.join("etc/added")).unwrap();
    assert!(
        etc.modified().unwrap() <= added.modified().unwrap(),
        "stub removal changed /etc's mtime"
    );
}

#[test]
#[ignore = "needs root"]
fn stub_in_an_existing_dir_keeps_real_changes() {
    let _serial = serial();
    let fx = fixture();
    // /etc exists below: the resolv.conf stub must go, the command's new file must stay.
    let spec = fx.spec("echo x > /etc/added");
    ok(&spec);
    assert_eq!(listing(&spec.rootfs.upper), ["etc", "etc/added"]);
}

#[test]
#[ignore = "needs root"]
fn stub_parents_go_only_when_the_image_had_them_unchanged() {
    let _serial = serial();
    let fx = fixture();
    // /etc is in the bottom layer only, as in a stack of RUN layers.
    let top = fx.tmp.path().join("top");
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("f"), "").unwrap();
    let stack = || fx.overlay(vec![top.clone(), fx.lower.clone()]);
    let mut spec = fx.spec("true");
    spec.rootfs = stack();
    ok(&spec);
    assert_eq!(listing(&spec.rootfs.upper), Vec::<String>::new());
    let lower_mode = std::fs::metadata(fx.lower.join("etc")).unwrap().mode() & 0o7777;
    for (script, mode, owner) in [
        ("chmod 700 /etc", 0o700, (0, 0)),
        ("chown 5:6 /etc", lower_mode, (5, 6)),
    ] {
        let mut spec = fx.spec(script);
        spec.rootfs = stack();
        ok(&spec);
        assert_eq!(listing(&spec.rootfs.upper), ["etc"], "{script}");
        let etc = std::fs::metadata(spec.rootfs.upper.join("etc")).unwrap();
        assert_eq!(
            (etc.mode() & 0o7777, (etc.uid(), etc.gid())),
            (mode, owner),
            "{script}"
        );
    }
    // The working directory the sandbox made belongs to the layer, even when it only held
    // a mount's stub.
    let mut spec = fx.spec("true");
    spec.cwd = "/app/sub".into();
    spec.mounts = vec![Mount::Tmpfs {
        target: "x".into(),
        size: None,
    }];
    ok(&spec);
    assert_eq!(listing(&spec.rootfs.upper), ["app", "app/sub"]);
    assert_no_mounts_left();
}

#[test]
#[ignore = "needs root"]
fn many_lowers_fit_the_mount_options() {
    let _serial = serial();
    let fx = fixture();
    let long = "a-rather-long-layer-directory-name-to-overflow-the-option-page";
    let mut lowers = Vec::new();
    for i in 0..70 {
        let d = fx.tmp.path().join(format!("{long}-{i:03}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), "").unwrap();
        std::fs::write(d.join("x"), format!("{i}\n")).unwrap();
        lowers.push(d);
    }
    let total: usize = lowers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(total > 4096, "the test must exceed one page ({total})");
    lowers.push(fx.lower.clone());
    let mut spec = fx.spec("cat /x; ls / | grep -c '^f'");
    spec.rootfs = fx.overlay(lowers);
    assert_eq!(ok(&spec), "0\n70\n", "top-most first");
}

#[test]
#[ignore = "needs root"]
fn fs_job_mkdir_stays_inside_the_root() {
    let _serial = serial();
    let fx = fixture();
    std::os::unix::fs::symlink("../../../../..", fx.lower.join("esc")).unwrap();
    let rootfs = fx.overlay(vec![fx.lower.clone()]);
    let job = FileJob::Mkdir(MkdirJob {
        path: "/esc/a/b".into(),
        uid: 7,
        gid: 8,
        mode: 0o755,
    });
    let src = fx.tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let sources = [
        FsSource::Dir(src.clone()),
        FsSource::Layers(vec![fx.lower.clone()]),
        FsSource::Layers(vec![src, fx.lower.clone()]),
    ];
    let out = sandbox::fs_job(None, &rootfs, &sources, job)
        .unwrap()
        .unwrap();
    assert_eq!(out, FileJobOutput::Created(vec!["a".into(), "a/b".into()]));
    let m = std::fs::metadata(rootfs.upper.join("a/b")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (7, 8, 0o755));
    assert_no_mounts_left();

    // FROM scratch: no lowers at all.
    let rootfs = fx.overlay(Vec::new());
    let mkdir = |path: &str| {
        FileJob::Mkdir(MkdirJob {
            path: path.into(),
            uid: 0,
            gid: 0,
            mode: 0o755,
        })
    };
    sandbox::fs_job(None, &rootfs, &[], mkdir("/w"))
        .unwrap()
        .unwrap();
    assert!(rootfs.upper.join("w").is_dir());

    // A job's failure comes back as its own typed error, not a string.
    std::fs::write(rootfs.upper.join("file"), "").unwrap();
    match sandbox::fs_job(None, &rootfs, &[], mkdir("/file/x")) {
        Ok(Err(e @ FileJobError::Mkdir { .. })) => {
            assert_eq!(
                e.to_string(),
                "mkdir /file/x: Not a directory (os error 20)"
            )
        }
        other => panic!("{other:?}"),
    }
    // And in the directory asked for (the store's tmp session): nothing is left there.
    let scratch = fx.tmp.path().join("scratch-session");
    std::fs::create_dir(&scratch).unwrap();
    sandbox::fs_job(Some(&scratch), &rootfs, &[], mkdir("/v"))
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    assert_no_mounts_left();
}

const KILL_ENV: &str = "RBUILD_SANDBOX_KILL_TARGET";

/// The process `kill_9_of_rbuild_kills_the_step` starts and kills: that test, run again by
/// this binary with [`KILL_ENV`] set. (Not a test of its own, which `--include-ignored` would
/// run as a green test that did nothing.)
fn kill_target(sleep_arg: &str) {
    let fx = fixture();
    let spec = fx.spec(&format!("echo started; sleep {sleep_arg}; echo not-killed"));
    let _ = sandbox::run(&spec, None, &mut |b| {
        use std::io::Write;
        let mut o = std::io::stdout();
        o.write_all(b).unwrap();
        o.flush().unwrap();
    });
}

#[test]
#[ignore = "needs root"]
fn kill_9_of_rbuild_kills_the_step() {
    if let Ok(sleep_arg) = std::env::var(KILL_ENV) {
        return kill_target(&sleep_arg);
    }
    let _serial = serial();
    // Holds the lock so the other tests' mount checks do not see this step's mounts.
    let _fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let sleep_arg = format!("{}", 100_000 + std::process::id() % 100_000);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--include-ignored",
            "--exact",
            "kill_9_of_rbuild_kills_the_step",
            "--nocapture",
        ])
        .env(KILL_ENV, &sleep_arg)
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().contains("started")),
        "the step never started"
    );
    let sleeping = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .any(|c| c == format!("sleep\0{sleep_arg}\0").as_bytes())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sleeping() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(sleeping(), "sleep is not running");
    let scratch = tmp.path().display().to_string();
    assert!(
        !mounts_matching(&scratch).is_empty(),
        "the step's mounts are not visible"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (sleeping() || !mounts_matching(&scratch).is_empty())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!sleeping(), "the step survived rbuild");
    assert_eq!(mounts_matching(&scratch), Vec::<String>::new());
}
