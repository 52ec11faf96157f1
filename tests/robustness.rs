//! Robustness and security of the real binary (docs/security.md): crashes and interrupts
//! leave a consistent store and no processes or mounts; a full disk fails cleanly;
//! concurrent builds and prune share a store; hostile contexts, base images and
//! Dockerfiles are refused without reading or writing outside; RUN is isolated like a
//! BuildKit step. Run as root with the test registry up (scripts/test-env.sh).

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rbuild::image::{
    canonical_json, media, ContainerConfig, Descriptor, Digest, ImageConfig, Manifest, Platform,
    Reference, RootFs,
};
use rbuild::registry::{Client, RegistryOptions};
use support::{processes_with, rbuild, rbuild_cmd, wait_for, InRegistry, RegistryImage, REGISTRY};

const BASE: InRegistry = InRegistry("busybox");

/// A build context holding `files` (path, content).
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A build that must succeed; returns its stderr (the plain progress).
fn build_ok(cmd: &mut Command) -> String {
    let out = support::run(cmd);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stderr
}

/// A command that must fail as a user error (exit 1), never with a panic; returns stderr.
fn fails_cleanly(cmd: &mut Command) -> String {
    let out = support::run(cmd);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{cmd:?}: expected a clean failure:\n{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{cmd:?} panicked:\n{stderr}");
    stderr
}

/// The parent pid of `pid`, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Lines of the host's mount table that mention `needle`.
fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// The store's records: blobs, layers and cache records by name (tmp/ excluded).
fn records(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in ["blobs/sha256", "layers", "cache"] {
        if let Ok(entries) = std::fs::read_dir(store.join(dir)) {
            for e in entries.flatten() {
                out.insert(format!("{dir}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Entries of `store/tmp` besides its lock and trash dir: the scratch of live or dead
/// processes, and (as `.trash/NAME`) trash not removed yet.
fn tmp_entries(store: &Path) -> Vec<String> {
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let tmp = store.join("tmp");
    let mut out: Vec<String> = names(&tmp)
        .into_iter()
        .filter(|n| n != ".lock" && n != ".trash")
        .collect();
    out.extend(
        names(&tmp.join(".trash"))
            .into_iter()
            .map(|n| format!(".trash/{n}")),
    );
    out
}

/// The store is consistent: every blob matches its digest, every layer has its diff and a
/// meta.json whose blobs and parent exist, every cache record and index entry points at
/// something present. Records are only ever renamed into place, so a crash can never
/// break this.
fn check_store(store: &Path) {
    let blobs = store.join("blobs/sha256");
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(e.path()).unwrap();
        assert_eq!(
            Digest::of(&bytes).hex(),
            name,
            "blob {name} does not match its digest"
        );
    }
    let blob_exists = |d: &str| blobs.join(d.trim_start_matches("sha256:")).is_file();
    let layers = store.join("layers");
    for e in std::fs::read_dir(&layers).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(e.path().join("meta.json"))
                .unwrap_or_else(|err| panic!("layer {name} has no meta.json: {err}")),
        )
        .unwrap_or_else(|err| panic!("layer {name}: corrupt meta.json: {err}"));
        assert_eq!(meta["chain_id"], format!("sha256:{name}"), "layer {name}");
        assert!(e.path().join("diff").is_dir(), "layer {name} has no diff/");
        for (_, b) in meta["blobs"].as_object().unwrap() {
            assert!(
                blob_exists(b["digest"].as_str().unwrap()),
                "layer {name}: blob {} missing",
                b["digest"]
            );
        }
        if let Some(parent) = meta["parent"].as_str() {
            assert!(
                layers.join(parent.trim_start_matches("sha256:")).is_dir(),
                "layer {name}: parent {parent} missing"
            );
        }
    }
    for e in std::fs::read_dir(store.join("cache")).unwrap().flatten() {
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap())
            .unwrap_or_else(|err| panic!("corrupt cache record {:?}: {err}", e.path()));
        // A layer a build has not needed yet (a base image's, a cache's) is a remote
        // record (store/remote.rs), fetched when needed.
        if let Some(chain) = rec["chain"].as_str() {
            let hex = chain.trim_start_matches("sha256:");
            assert!(
                layers.join(hex).is_dir() || store.join(format!("remote/{hex}.json")).is_file(),
                "cache record {:?} names missing layer {chain}",
                e.path()
            );
        }
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    for m in index["manifests"].as_array().unwrap() {
        assert!(blob_exists(m["digest"].as_str().unwrap()), "index: {m}");
    }
}

/// The label of step `n` of the plain progress (`#3 [stage-0 3/3] RUN ...`) and whether
/// that step was answered from the cache.
fn step_cached(progress: &str, instruction: &str) -> bool {
    let id = progress
        .lines()
        .find(|l| l.starts_with('#') && l.contains(instruction))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no step `{instruction}` in:\n{progress}"));
    progress.lines().any(|l| l == format!("{id} CACHED"))
}

/// Sends `sig` to `pid`.
fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn spawn_build(store: &Path, ctx: &Path, extra: &[&str]) -> Child {
    rbuild(store)
        .args(extra)
        .arg(ctx)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

/// Every file name below `dir`, at any depth.
fn walk_names(dir: &std::path::Path) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            names.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                names.extend(walk_names(&e.path()));
            }
        }
    }
    names
}

#[test]
#[ignore = "needs root and a registry"]
fn kill_9_during_run_leaves_no_process_no_mount_and_a_usable_cache() {
    support::needs_root_and_registry();
    let store = tempfile::tempdir().unwrap();
    let marker = "sleep 3017";
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {BASE}\nRUN echo one > /one\nRUN {marker}\n"),
    )]);
    let mut child = spawn_build(store.path(), ctx.path(), &[]);
    wait_for("the long RUN to start", || {
        !processes_with(marker).is_empty()
    });
    let pid = child.id();
    // The build's network: the namespace holder and slirp4netns, children of rbuild.
    let network: Vec<u32> = ["__sandbox-helper netns", "slirp4netns"]
        .iter()
        .flat_map(|m| processes_with(m))
        .filter(|p| parent_of(*p) == Some(pid))
        .collect();
    assert_eq!(network.len(), 2, "the build's network processes");
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();

    // The step dies with rbuild (PR_SET_PDEATHSIG on the helper and the step's PID 1), and
    // so does its network (both read a pipe that only rbuild holds open).
    wait_for("the step's processes to die", || {
        processes_with(marker).is_empty()
    });
    wait_for("the build's network processes to exit", || {
        network
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    });
    let store_path = store.path().canonicalize().unwrap();
    assert_eq!(
        mounts_mentioning(&store_path.to_string_lossy()),
        Vec::<String>::new()
    );
    assert_eq!(
        mounts_mentioning(rbuild::sandbox::SCRATCH_PREFIX),
        Vec::<String>::new()
    );
    check_store(store.path());
    let dead_session: Vec<String> = tmp_entries(store.path())
        .into_iter()
        .filter(|n| n.starts_with(&format!("s{pid}-")))
        .collect();
    assert!(
        !dead_session.is_empty(),
        "the killed build left no scratch (nothing to sweep?)"
    );
    // The step's sandbox scratch dir is inside that session, so the sweep takes it too
    // (it is never left in the system temp dir).
    let in_session = |name: &String| {
        walk_names(&store.path().join("tmp").join(name))
            .iter()
            .any(|n| n.starts_with(rbuild::sandbox::SCRATCH_PREFIX))
    };
    assert!(
        dead_session.iter().any(in_session),
        "no sandbox scratch dir in the dead session"
    );

    // The next build reuses what finished before the kill and sweeps the dead scratch.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {BASE}\nRUN echo one > /one\nRUN echo two > /two\n"),
    )
    .unwrap();
    let out = store.path().join("rootfs.tar");
    let progress = build_ok(
        rbuild(store.path())
            .arg("-o")
            .arg(format!("type=tar,dest={}", out.display()))
            .arg(ctx.path()),
    );
    assert!(step_cached(&progress, "RUN echo one"), "{progress}");
    assert!(!step_cached(&progress, "RUN echo two"), "{progress}");
    let files = support::listing(std::fs::File::open(&out).unwrap());
    assert!(files.contains_key("one") && files.contains_key("two"));
    for dead in dead_session {
        assert!(
            !store.path().join("tmp").join(&dead).exists(),
            "tmp/{dead} of the killed build was not swept"
        );
    }
    check_store(store.path());
}

/// Issue 18, lazy base images: the base's layers are fetched and extracted when the first
/// RUN needs them. A kill -9 in the middle of that (while the layer is being extracted)
/// leaves no layer, record or blob half-written, and the next build fetches the base again
/// and runs.
#[test]
#[ignore = "needs root and a registry"]
fn kill_9_while_a_lazy_base_is_fetched_leaves_a_usable_store() {
    support::needs_root_and_registry();
    // A base with a 30 MB layer of random bytes: long enough to extract to be caught at it.
    let base = format!("{REGISTRY}/rbuild-test/lazy-kill-{}:1", std::process::id());
    let publisher = tempfile::tempdir().unwrap();
    let big = context(&[(
        "Dockerfile",
        &format!("FROM {BASE}\nRUN head -c 30000000 /dev/urandom > /big\n"),
    )]);
    build_ok(
        rbuild(publisher.path())
            .args(["--push", "-t", &base])
            .arg(big.path()),
    );
    let _pushed = RegistryImage::pushed(&base);
    drop(publisher);
    let store = tempfile::tempdir().unwrap();
    let ctx = context(&[("Dockerfile", &format!("FROM {base}\nRUN echo ran > /ran\n"))]);
    let mut child = spawn_build(store.path(), ctx.path(), &[]);
    // extract_layer unpacks into tmp/<session>/<dir>/diff before one rename publishes it.
    let extracting = || {
        walk_names(&store.path().join("tmp"))
            .iter()
            .any(|n| n == "diff")
    };
    let start = std::time::Instant::now();
    while !extracting() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before its base was extracted"
        );
        assert!(start.elapsed().as_secs() < 120, "no extraction began");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    signal(child.id(), nix::sys::signal::Signal::SIGKILL);
    child.wait().unwrap();
    check_store(store.path());
    // Busybox's layer may be in; the big one is not.
    let layers = std::fs::read_dir(store.path().join("layers")).map_or(0, |d| d.count());
    assert!(layers <= 1, "a layer was published by a killed extraction");

    let progress = build_ok(rbuild(store.path()).arg(ctx.path()));
    assert!(!step_cached(&progress, "RUN echo ran"), "{progress}");
    let layers = std::fs::read_dir(store.path().join("layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 3, "the base's two and the RUN's");
    check_store(store.path());
}

#[test]
#[ignore = "needs root and a registry"]
fn sigint_during_run_stops_the_step_and_exits_130_leaving_nothing_half_written() {
    support::needs_root_and_registry();
    let store = tempfile::tempdir().unwrap();
    let marker = "sleep 3023";
    let ctx = context(&[("Dockerfile", &format!("FROM {BASE}\nRUN echo one > /one\n"))]);
    build_ok(rbuild(store.path()).arg(ctx.path()));
    let before = records(store.path());

    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {BASE}\nRUN echo one > /one\nRUN {marker} && echo late > /late\n"),
    )
    .unwrap();
    let dest_dir = tempfile::tempdir().unwrap();
    let dest = dest_dir.path().join("out.tar");
    let child = spawn_build(
        store.path(),
        ctx.path(),
        &["-o", &format!("type=docker,dest={}", dest.display())],
    );
    wait_for("the long RUN to start", || {
        !processes_with(marker).is_empty()
    });
    // Only rbuild gets the signal, as when a CI runner cancels a job: the step runs in a
    // session of its own, so rbuild itself must kill it.
    signal(child.id(), nix::sys::signal::Signal::SIGINT);
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    wait_for("the step's processes to die", || {
        processes_with(marker).is_empty()
    });

    assert_eq!(
        records(store.path()),
        before,
        "the interrupted step left records"
    );
    assert_eq!(tmp_entries(store.path()), Vec::<String>::new());
    check_store(store.path());
    let left: Vec<_> = std::fs::read_dir(dest_dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files at the -o destination: {left:?}");
}

/// A tmpfs of `size`, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        support::run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size}"))
                .arg("rbuild-robust")
                .arg(dir.path()),
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
#[ignore = "needs root and a registry"]
fn full_disk_fails_cleanly_without_partial_records_or_outputs() {
    support::needs_root_and_registry();
    let fs = Tmpfs::new("8m");
    let store = fs.path().join("store");
    let prefix = format!("FROM {BASE}\nRUN echo small > /small\n");
    let ctx = context(&[("Dockerfile", &prefix)]);
    build_ok(rbuild(&store).arg(ctx.path()));
    let before = records(&store);

    // The command itself hits ENOSPC in the upperdir (on the store's filesystem).
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("{prefix}RUN dd if=/dev/zero of=/big bs=1M count=20\n"),
    )
    .unwrap();
    let err = fails_cleanly(rbuild(&store).arg(ctx.path()));
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(records(&store), before);
    assert_eq!(tmp_entries(&store), Vec::<String>::new());
    check_store(&store);

    // Two thirds of the free space fit in the upperdir, and the build succeeds: a built
    // layer is kept once, as its diff dir, with no tar blob beside it.
    let vfs = nix::sys::statvfs::statvfs(fs.path()).unwrap();
    let size = vfs.blocks_available() as u64 * vfs.fragment_size() as u64 * 2 / 3;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("{prefix}RUN head -c {size} /dev/urandom > /big\n"),
    )
    .unwrap();
    build_ok(rbuild(&store).arg(ctx.path()));
    let before = records(&store);
    // A gzip blob of that layer (random data: as big again) does not fit in the store;
    // the OCI output that needs it fails cleanly, wherever it was to go.
    let elsewhere = tempfile::tempdir().unwrap();
    let err = fails_cleanly(
        rbuild(&store)
            .arg("-o")
            .arg(format!(
                "type=oci,dest={}/oci.tar",
                elsewhere.path().display()
            ))
            .arg(ctx.path()),
    );
    assert!(err.contains("No space left on device"), "{err}");
    // The small layer's gzip blob fit and stays recorded (check_store verifies it).
    let after = records(&store);
    assert!(
        after.is_superset(&before),
        "records lost: {before:?} -> {after:?}"
    );
    assert!(after.len() <= before.len() + 1, "{before:?} -> {after:?}");
    assert_eq!(tmp_entries(&store), Vec::<String>::new());
    check_store(&store);
    let left: Vec<_> = std::fs::read_dir(elsewhere.path()).unwrap().collect();
    assert!(left.is_empty(), "left {left:?}");

    // Outputs to a full filesystem leave nothing at (or beside) the destination.
    std::fs::write(ctx.path().join("Dockerfile"), &prefix).unwrap();
    let small = Tmpfs::new("512k");
    let big_store = tempfile::tempdir().unwrap();
    for output in [
        format!("type=docker,dest={}/out.tar", small.path().display()),
        format!("type=oci,dest={}/oci,tar=false", small.path().display()),
        format!("type=local,dest={}/rootfs", small.path().display()),
    ] {
        let err = fails_cleanly(
            rbuild(big_store.path())
                .args(["-o", &output])
                .arg(ctx.path()),
        );
        assert!(err.contains("No space left on device"), "{output}: {err}");
        let left: Vec<_> = std::fs::read_dir(small.path()).unwrap().collect();
        assert!(left.is_empty(), "{output}: left {left:?}");
    }
}

#[test]
#[ignore = "needs root and a registry"]
fn a_layer_changed_in_the_store_fails_later_outputs_naming_it() {
    support::needs_root_and_registry();
    let store = tempfile::tempdir().unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {BASE}\nRUN echo original > /marker\n"),
    )]);
    build_ok(
        rbuild(store.path())
            .args(["-t", "changed:1"])
            .arg(ctx.path()),
    );
    // The built layer is kept only as its directory; edit it behind rbuild's back (same
    // size, other bytes).
    let marker = std::fs::read_dir(store.path().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("diff/marker"))
        .find(|p| p.exists())
        .expect("the RUN layer's diff dir");
    std::fs::write(&marker, "tampered\n").unwrap();
    let layer_dir = marker.parent().unwrap().to_path_buf();

    let out = tempfile::tempdir().unwrap();
    for format in ["docker", "oci"] {
        let dest = out.path().join(format!("{format}.tar"));
        let err = fails_cleanly(
            rbuild_cmd(store.path())
                .args(["save", "changed:1", "--format", format, "-o"])
                .arg(&dest),
        );
        assert!(
            err.contains("no longer matches its digest"),
            "{format}: {err}"
        );
        assert!(
            err.contains(&layer_dir.display().to_string()),
            "{format}: {err}"
        );
        assert!(!dest.exists(), "{format}: an archive was written");
    }
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(left.is_empty(), "left {left:?}");
    check_store(store.path());
}

#[test]
#[ignore = "needs root and a registry"]
fn four_concurrent_builds_on_one_store_all_succeed() {
    support::needs_root_and_registry();
    // A fresh store, so the four also race to pull and extract the shared base.
    let store = tempfile::tempdir().unwrap();
    let dockerfiles = [
        (format!("FROM {BASE}\nRUN echo a > /a\n"), "a"),
        (format!("FROM {BASE}\nRUN echo b > /b\nCOPY f /f\n"), "f"),
        (format!("FROM {BASE}\nRUN echo same > /same\n"), "same"),
        (format!("FROM {BASE}\nRUN echo same > /same\n"), "same"),
    ];
    let outs = tempfile::tempdir().unwrap();
    let mut running = Vec::new();
    for (i, (df, file)) in dockerfiles.iter().enumerate() {
        let ctx = context(&[("Dockerfile", df), ("f", "from the context\n")]);
        let out = outs.path().join(format!("{i}.tar"));
        let child = spawn_build(
            store.path(),
            ctx.path(),
            &["-o", &format!("type=tar,dest={}", out.display())],
        );
        running.push((child, ctx, out, *file));
    }
    for (child, _ctx, out, file) in running {
        let o = child.wait_with_output().unwrap();
        let (_, stderr) = text(&o);
        assert!(o.status.success(), "{stderr}");
        let files = support::listing(std::fs::File::open(&out).unwrap());
        assert!(files.contains_key(file), "{} lacks /{file}", out.display());
    }
    // The racers that lost with a layer already committed left their copy in the trash,
    // sized (kept until the trash grows past its limit or `prune`); no other scratch.
    for entry in tmp_entries(store.path()) {
        let name = entry.strip_prefix(".trash/").unwrap_or_else(|| {
            panic!("scratch left outside the trash: {entry}");
        });
        let mut parts = name.splitn(3, '-');
        let (ms, bytes) = (parts.next().unwrap(), parts.next().unwrap_or(""));
        assert!(
            ms.len() == 13 && bytes.parse::<u64>().is_ok(),
            "unsized trash {name}"
        );
    }
    check_store(store.path());
    support::run_ok(rbuild_cmd(store.path()).arg("prune"));
    assert_eq!(tmp_entries(store.path()), Vec::<String>::new());
}

#[test]
#[ignore = "needs root and a registry"]
fn prune_while_a_build_runs_reports_busy_and_removes_nothing() {
    support::needs_root_and_registry();
    let store = tempfile::tempdir().unwrap();
    let marker = "echo robust-prune-4031";
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {BASE}\nRUN echo one > /one\nRUN sleep 5 && {marker} > /x\n"),
    )]);
    let out = store.path().join("..").join(format!(
        "robust-prune-{}.tar",
        store.path().file_name().unwrap().to_string_lossy()
    ));
    let child = spawn_build(
        store.path(),
        ctx.path(),
        &["-o", &format!("type=tar,dest={}", out.display())],
    );
    wait_for("the RUN to start", || !processes_with(marker).is_empty());
    let before = records(store.path());
    // Every kind of prune, over and over while the build runs (the LRU ones too: what a
    // running build uses is not "least recently used").
    let kinds: [&[&str]; 4] = [
        &["--all"],
        &[],
        &["--keep-storage", "0"],
        &["--filter", "until=0s", "--all"],
    ];
    for args in kinds.iter().cycle().take(12) {
        let prune = support::run(rbuild_cmd(store.path()).arg("prune").args(*args));
        let still_running = !processes_with(marker).is_empty();
        let (_, prune_err) = text(&prune);
        assert!(!prune_err.contains("panicked"), "{prune_err}");
        if still_running {
            // The store's lock is shared while building, exclusive for prune: prune says so.
            assert_eq!(prune.status.code(), Some(1), "{args:?}: {prune_err}");
            assert!(prune_err.contains("in use by a build"), "{prune_err}");
            assert!(before.is_subset(&records(store.path())));
        }
    }
    let o = child.wait_with_output().unwrap();
    let (_, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let files = support::listing(std::fs::File::open(&out).unwrap());
    std::fs::remove_file(&out).unwrap();
    assert!(files.contains_key("x") && files.contains_key("one"));
    check_store(store.path());

    // Once the build is over, prune runs and leaves a consistent store.
    support::run_ok(rbuild_cmd(store.path()).args(["prune", "--keep-storage", "0"]));
    check_store(store.path());
    support::run_ok(rbuild_cmd(store.path()).args(["prune", "--all"]));
    check_store(store.path());
}

// ---------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------

/// The bytes of every file in a tree (symlinks not followed).
fn tree_contains(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(e.path());
                }
            }
        }
    }
    hits
}

#[test]
#[ignore = "needs root and a registry"]
fn context_escapes_never_read_outside_the_context() {
    support::needs_root_and_registry();
    let top = tempfile::tempdir().unwrap();
    let secret = format!("OUTSIDE-SECRET-{}", std::process::id());
    let outside = top.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), &secret).unwrap();
    std::fs::write(top.path().join("x"), &secret).unwrap();
    let ctx = top.path().join("ctx");
    std::fs::create_dir_all(ctx.join("dir")).unwrap();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, ctx.join(name));
    link(&outside.join("secret.txt"), "link-abs").unwrap();
    link(Path::new("../outside/secret.txt"), "link-rel").unwrap();
    link(&outside, "link-dir").unwrap();
    link(Path::new("/etc/shadow"), "dir/shadow").unwrap();
    link(&outside.join("secret.txt"), "dir/secret").unwrap();
    std::fs::write(ctx.join("dir/plain"), "inside\n").unwrap();

    let store = tempfile::tempdir().unwrap();
    let host_passwd = std::fs::read("/etc/passwd").unwrap();
    let shadow = std::fs::read("/etc/shadow").unwrap_or_default();
    let cases = [
        "COPY link-abs /got",
        "COPY link-rel /got",
        "COPY link-dir/secret.txt /got",
        "COPY link-dir /got/",
        "COPY ../x /got",
        "COPY ../outside/secret.txt /got",
        "COPY /etc/passwd /got",
        "COPY /etc/shadow /got",
        "COPY dir /got/",
        "COPY . /got/",
        "ADD link-abs /got",
        "ADD link-dir /got/",
        "COPY --from=ctxdir link-abs /got",
        "RUN --mount=type=bind,source=link-dir,target=/m cat /m/secret.txt > /got || true",
        "RUN --mount=type=bind,source=link-abs,target=/m cat /m > /got || true",
        "RUN --mount=type=bind,source=link-dir/secret.txt,target=/m cat /m > /got || true",
        "RUN --mount=type=bind,source=link-dir,target=/m,rw cat /m/secret.txt > /got || true",
        "RUN --mount=type=bind,source=../outside,target=/m cat /m/secret.txt > /got || true",
    ];
    for case in cases {
        let dockerfile = format!("FROM {BASE}\n{case}\n");
        std::fs::write(ctx.join("Dockerfile"), &dockerfile).unwrap();
        let out = top.path().join("out.tar");
        let _ = std::fs::remove_file(&out);
        let o = support::run(
            rbuild(store.path())
                .args(["--build-context", &format!("ctxdir={}", ctx.display())])
                .arg("-o")
                .arg(format!("type=tar,dest={}", out.display()))
                .arg(&ctx),
        );
        let (stdout, stderr) = text(&o);
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
        assert!(
            o.status.code() == Some(0) || o.status.code() == Some(1),
            "{case}: {stderr}"
        );
        assert!(
            !stderr.contains(&secret) && !stdout.contains(&secret),
            "{case}: the outside file's content leaked into the output:\n{stderr}"
        );
        if o.status.success() {
            let bytes = std::fs::read(&out).unwrap();
            let has = |n: &[u8]| !n.is_empty() && bytes.windows(n.len()).any(|w| w == n);
            assert!(!has(secret.as_bytes()), "{case}: the image holds {secret}");
            assert!(
                !has(&shadow),
                "{case}: the image holds the host's /etc/shadow"
            );
            let files = support::listing(&bytes[..]);
            if let Some(got) = files.get("got") {
                let host = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&host_passwd));
                assert_ne!(
                    got.sha256, host,
                    "{case}: the image holds the host's /etc/passwd"
                );
            }
        }
    }
    // Not even a cache record or scratch file in the store holds it.
    assert_eq!(
        tree_contains(store.path(), secret.as_bytes()),
        Vec::<PathBuf>::new()
    );
}

/// ADD of an archive whose entries climb out (`..`, absolute names, through its own
/// symlinks) and a COPY whose second source meets the first's link to the host: nothing
/// lands outside the image, on a base's overlay as on an empty stack, whose file jobs
/// write their upper through a bind mount (`FROM scratch`, `--link`; issue 23).
#[test]
#[ignore = "needs root and a registry"]
fn add_of_a_hostile_local_archive_writes_nothing_outside_the_image() {
    support::needs_root_and_registry();
    let top = tempfile::tempdir().unwrap();
    let victim = top.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let rel = victim.to_string_lossy().trim_start_matches('/').to_string();
    let entries = [
        Entry::file(&format!("{}{rel}/escaped-dotdot", "../".repeat(16)), "x"),
        Entry::file(&format!("/{rel}/escaped-abs"), "x"),
        Entry::symlink("esc", &victim.to_string_lossy()),
        Entry::file("esc/escaped-link", "x"),
        Entry::symlink("up", "../../../../../../../../../.."),
        Entry::file(&format!("up/{rel}/escaped-up"), "x"),
    ];
    let ctx = top.path().join("ctx");
    std::fs::create_dir_all(ctx.join("a")).unwrap();
    std::fs::create_dir_all(ctx.join("b/esc")).unwrap();
    std::os::unix::fs::symlink(&victim, ctx.join("a/esc")).unwrap();
    std::fs::write(ctx.join("b/esc/escaped-copy"), "x").unwrap();
    std::fs::write(ctx.join("evil.tar"), raw_tar(&entries)).unwrap();
    let cases = [
        (format!("FROM {BASE}\nADD evil.tar /unpacked/\n"), true),
        ("FROM scratch\nADD evil.tar /unpacked/\n".to_string(), true),
        (
            format!("FROM {BASE}\nADD --link evil.tar /unpacked/\n"),
            true,
        ),
        (format!("FROM {BASE}\nCOPY a b /dst/\n"), false),
        ("FROM scratch\nCOPY a b /dst/\n".to_string(), false),
    ];
    for (dockerfile, succeeds) in cases {
        std::fs::write(ctx.join("Dockerfile"), &dockerfile).unwrap();
        let store = tempfile::tempdir().unwrap();
        let o = support::run(rbuild(store.path()).arg(&ctx));
        let (_, stderr) = text(&o);
        assert!(!stderr.contains("panicked"), "{dockerfile}{stderr}");
        match succeeds {
            // The applier drops the entries that climb out and keeps the rest.
            true => assert!(
                matches!(o.status.code(), Some(0 | 1)),
                "{dockerfile}{stderr}"
            ),
            // BuildKit's refusal to merge a directory through a symlink, at the line.
            false => assert!(
                o.status.code() == Some(1)
                    && stderr.contains("Dockerfile:2")
                    && stderr.contains("cannot copy to non-directory: /dst/esc"),
                "{dockerfile}{stderr}"
            ),
        }
        let left: Vec<_> = std::fs::read_dir(&victim).unwrap().collect();
        assert!(
            left.is_empty(),
            "{dockerfile}wrote outside the image: {left:?}\n{stderr}"
        );
        check_store(store.path());
    }
}

/// A tar entry written with its name exactly as given (the tar crate refuses `..`).
struct Entry {
    name: String,
    kind: tar::EntryType,
    link: String,
    data: Vec<u8>,
}

impl Entry {
    fn file(name: &str, data: &str) -> Entry {
        Entry {
            name: name.into(),
            kind: tar::EntryType::Regular,
            link: String::new(),
            data: data.as_bytes().to_vec(),
        }
    }
    fn symlink(name: &str, target: &str) -> Entry {
        Entry {
            name: name.into(),
            kind: tar::EntryType::Symlink,
            link: target.into(),
            data: Vec::new(),
        }
    }
    fn hardlink(name: &str, target: &str) -> Entry {
        Entry {
            kind: tar::EntryType::Link,
            ..Entry::symlink(name, target)
        }
    }
}

fn raw_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            assert!(e.name.len() < old.name.len() && e.link.len() < old.linkname.len());
            old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn registry_client() -> Client {
    let empty = tempfile::tempdir().unwrap().keep();
    Client::new(RegistryOptions {
        insecure_registries: Vec::new(),
        platform: Platform::host(),
        docker_config_dir: Some(empty),
    })
    .unwrap()
}

/// Push a one-layer image made of `entries` to the run's registry: its reference, and the
/// guard that deletes it again.
fn push_layer_image(name: &str, entries: &[Entry]) -> (String, RegistryImage) {
    let tar = raw_tar(entries);
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    let plat = Platform::host();
    let config = canonical_json(&ImageConfig {
        architecture: plat.architecture.clone(),
        os: plat.os.clone(),
        variant: plat.variant.clone(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
        config: ContainerConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        },
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let layer_desc = Descriptor::new(
        media::DOCKER_LAYER_GZIP,
        Digest::of(&layer),
        layer.len() as u64,
    );
    let config_desc = Descriptor::new(
        media::DOCKER_CONFIG,
        Digest::of(&config),
        config.len() as u64,
    );
    std::fs::write(dir.path().join("layer"), &layer).unwrap();
    std::fs::write(dir.path().join("config"), &config).unwrap();
    let manifest = canonical_json(&Manifest {
        schema_version: 2,
        media_type: Some(media::DOCKER_MANIFEST.into()),
        config: config_desc.clone(),
        layers: vec![layer_desc.clone()],
        annotations: None,
    });
    let reference = format!(
        "{REGISTRY}/rbuild-test/robust-evil-{name}:{}",
        std::process::id()
    );
    let r: Reference = reference.parse().unwrap();
    let c = registry_client();
    c.push_blob(&r, &layer_desc, &dir.path().join("layer"), None)
        .unwrap();
    c.push_blob(&r, &config_desc, &dir.path().join("config"), None)
        .unwrap();
    c.push_manifest(&r, media::DOCKER_MANIFEST, &manifest)
        .unwrap();
    let pushed = RegistryImage::pushed(&reference);
    (reference, pushed)
}

#[test]
#[ignore = "needs root and a registry"]
fn hostile_base_image_layers_are_refused_when_pulled() {
    support::needs_root_and_registry();
    let top = tempfile::tempdir().unwrap();
    let victim = top.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let host_file = top.path().join("host-file");
    std::fs::write(&host_file, "host\n").unwrap();
    let rel = victim.to_string_lossy().trim_start_matches('/').to_string();
    let v = victim.to_string_lossy().into_owned();
    let images: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "dotdot",
            vec![Entry::file(
                &format!("{}{rel}/pwned", "../".repeat(16)),
                "x",
            )],
            "unsafe",
        ),
        (
            "absolute",
            vec![Entry::file(&format!("/{rel}/pwned"), "x")],
            "unsafe",
        ),
        (
            "symlink",
            vec![Entry::symlink("esc", &v), Entry::file("esc/pwned", "x")],
            "unsafe",
        ),
        (
            "symlink-dotdot",
            vec![
                Entry::symlink("up", "../../../../../../../../../.."),
                Entry::file(&format!("up/{rel}/pwned"), "x"),
            ],
            "unsafe",
        ),
        (
            "hardlink",
            vec![Entry::hardlink("hl", &host_file.to_string_lossy())],
            "hard link",
        ),
    ];
    let store = tempfile::tempdir().unwrap();
    for (name, entries, says) in images {
        let (reference, _pushed) = push_layer_image(name, &entries);
        let err = fails_cleanly(rbuild_cmd(store.path()).args(["pull", &reference]));
        assert!(err.contains(says), "{name}: {err}");
        let ctx = context(&[("Dockerfile", &format!("FROM {reference}\nRUN true\n"))]);
        let err = fails_cleanly(rbuild(store.path()).arg(ctx.path()));
        assert!(err.contains(says), "{name}: {err}");
        let left: Vec<_> = std::fs::read_dir(&victim).unwrap().collect();
        assert!(left.is_empty(), "{name}: wrote outside the store: {left:?}");
        assert_eq!(std::fs::metadata(&host_file).unwrap().nlink(), 1, "{name}");
        assert_eq!(
            std::fs::read_dir(store.path().join("layers"))
                .unwrap()
                .count(),
            0,
            "{name}: a refused layer stayed in the store"
        );
        assert_eq!(tmp_entries(store.path()), Vec::<String>::new());
        check_store(store.path());
    }
}

#[test]
#[ignore = "needs root and a registry"]
fn malformed_dockerfiles_and_arguments_never_panic() {
    support::needs_root_and_registry();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/parse-negative");
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    // The corpus's bases become the local registry's, so each case fails where the corpus
    // says (its `error`, checked here as the binary prints it) instead of at a pull from
    // docker.io.
    let local = |text: &str| {
        text.replace(
            "missing/image:1",
            &format!("{REGISTRY}/rbuild-test/robust-missing:1"),
        )
        .replace("alpine", &BASE.to_string())
    };
    let mut corpus: Vec<(String, String, Vec<String>, String)> = Vec::new();
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
        let (Some(df), Some(error)) = (read("Dockerfile"), read("error")) else {
            continue;
        };
        let mut args = Vec::new();
        for line in read("options").unwrap_or_default().lines() {
            match line.split_once(' ') {
                Some(("target", t)) => args.extend(["--target".to_string(), t.to_string()]),
                Some(("arg", a)) => args.extend(["--build-arg".to_string(), a.to_string()]),
                _ => {}
            }
        }
        let first = local(error.lines().next().unwrap_or_default());
        corpus.push((
            e.file_name().to_string_lossy().into_owned(),
            local(&df),
            args,
            first,
        ));
    }
    assert!(corpus.len() > 10, "the parse-negative corpus is missing");
    let nest = |n: usize| format!("{}x{}", "${a:-".repeat(n), "}".repeat(n));
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("nul bytes", b"FROM scratch\n\0\0\0RUN \0\n".to_vec()),
        (
            "invalid utf-8",
            b"FROM scratch\nLABEL a=\xff\xfe\xc3\n".to_vec(),
        ),
        (
            "binary",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        ("continuation at eof", b"FROM scratch\nRUN echo \\".to_vec()),
        (
            "unterminated heredoc",
            b"FROM scratch\nRUN <<EOF\necho\n".to_vec(),
        ),
        ("no from", b"RUN true\n".to_vec()),
        ("from without image", b"FROM\n".to_vec()),
        ("stage named like a keyword", b"FROM scratch AS\n".to_vec()),
        (
            "copy from a missing stage",
            b"FROM scratch\nCOPY --from=nope / /\n".to_vec(),
        ),
        ("stage cycle", b"FROM a AS b\nFROM b AS a\n".to_vec()),
        (
            "deep nesting",
            format!("FROM scratch\nARG v={}\nENV e=$v\n", nest(20000)).into_bytes(),
        ),
        (
            "huge line",
            format!("FROM scratch\nBOGUS {}\n", "k".repeat(1 << 20)).into_bytes(),
        ),
        ("bad escape", b"# escape=xx\nFROM scratch\n".to_vec()),
        (
            "unknown flag",
            b"FROM scratch\nCOPY --bogus=1 a b\n".to_vec(),
        ),
        ("bad substitution", b"FROM scratch\nARG a=${\n".to_vec()),
        (
            "bad chown",
            b"FROM scratch\nCOPY --chown=:::: a b\n".to_vec(),
        ),
        ("target missing", b"FROM scratch AS one\n".to_vec()),
    ];
    let run_case = |name: &str, bytes: &[u8], extra: &[String]| {
        std::fs::write(ctx.path().join("Dockerfile"), bytes).unwrap();
        let out = support::run(rbuild(store.path()).args(extra).arg(ctx.path()));
        let (_, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: exit {}:\n{stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{name}:\n{stderr}");
        assert!(
            stderr.contains("error"),
            "{name}: no error message:\n{stderr}"
        );
        stderr
    };
    for (name, df, args, first) in &corpus {
        let stderr = run_case(name, df.as_bytes(), args);
        if !name.contains("resolve-failure") {
            assert!(
                stderr.contains(&format!("error: {first}")),
                "{name}: expected `{first}`:\n{stderr}"
            );
        }
    }
    for (name, bytes) in &garbage {
        let extra: Vec<String> = if *name == "target missing" {
            vec!["--target".into(), "two".into()]
        } else {
            Vec::new()
        };
        run_case(name, bytes, &extra);
    }

    // Bad arguments: clap's usage errors exit 2, checked ones 1 (a few, like an empty
    // build-arg name, are accepted as docker accepts them); never a panic.
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let bad_args: &[&[&str]] = &[
        &["-o", "type=bogus,dest=x"],
        &["-o", "type=docker"],
        &["-o", ""],
        &["--secret", "id="],
        &["--secret", "src=/nonexistent"],
        &["--secret", "id=a,src=/nonexistent/file"],
        &["--build-arg", "=v"],
        &["--platform", "plan9/mips"],
        &["--build-context", "=x"],
        &["--build-context", "a=docker-image://"],
        &["--network", "bridge"],
        &["--label", "=x"],
        &["-t", "UPPER/Case::bad"],
        &["-f", "/nonexistent/Dockerfile"],
        &["--progress", "fancy"],
        &["--iidfile", "/nonexistent/dir/iid"],
        &["-f", "/"],
    ];
    for args in bad_args {
        let out = support::run(rbuild(store.path()).args(*args).arg(ctx.path()));
        let (_, stderr) = text(&out);
        assert!(
            matches!(out.status.code(), Some(0..=2)),
            "{args:?}: exit {}:\n{stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
    }
    for args in [
        &["/nonexistent-context"][..],
        &["rmi", "nope:1"],
        &["inspect", "sha256:zz"],
        &["push", "nope:1", "localhost:1/x:1"],
        &["save", "-o", "/nonexistent/x.tar", "nope:1"],
    ] {
        let out = support::run(rbuild_cmd(store.path()).args(args));
        let (_, stderr) = text(&out);
        assert!(
            matches!(out.status.code(), Some(0..=2)),
            "{args:?}: exit {}:\n{stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
    }
}

// ---------------------------------------------------------------------------------------
// Isolation of RUN
// ---------------------------------------------------------------------------------------

/// Builds `dockerfile` into a rootfs directory and returns it.
fn build_rootfs(store: &Path, dockerfile: &str, extra: &[&str]) -> tempfile::TempDir {
    let ctx = context(&[("Dockerfile", dockerfile)]);
    let out = tempfile::tempdir().unwrap();
    build_ok(
        rbuild(store)
            .args(extra)
            .arg("-o")
            .arg(format!("type=local,dest={}", out.path().display()))
            .arg(ctx.path()),
    );
    out
}

fn interfaces(proc_net_dev: &str) -> BTreeSet<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
#[ignore = "needs root and a registry"]
fn run_is_isolated_like_a_buildkit_step() {
    support::needs_root_and_registry();
    let store = tempfile::tempdir().unwrap();
    let dockerfile = format!(
        "FROM {BASE}
RUN mkdir -m 777 /r && cp /bin/busybox /busybox-suid && chmod 4755 /busybox-suid \\
 && printf '[SUID]\\ncat = ssx root.root\\n' > /etc/busybox.conf && chmod 600 /etc/busybox.conf
RUN for p in /proc/[0-9]*; do cat $p/comm; done > /r/comm; cat /proc/self/mountinfo > /r/mountinfo; \\
 grep -E '^Cap(Eff|Bnd)' /proc/self/status > /r/caps; cat /proc/net/dev > /r/net-default
RUN --network=none cat /proc/net/dev > /r/net-none
USER user
RUN /busybox-suid cat /proc/self/status > /r/suid-status; id -u > /r/uid
"
    );
    let root = build_rootfs(store.path(), &dockerfile, &[]);
    let r = |f: &str| std::fs::read_to_string(root.path().join("r").join(f)).unwrap();

    // Its own PID namespace: only the step's shell and its cats.
    let comms: BTreeSet<String> = r("comm").lines().map(String::from).collect();
    assert!(
        comms.iter().all(|c| c == "sh" || c == "cat"),
        "host processes visible: {comms:?}"
    );
    // Its own mount namespace: the rootfs, kernel filesystems and the injected files only.
    let allowed = |mp: &str| {
        mp == "/"
            || ["/proc", "/dev", "/sys"]
                .iter()
                .any(|p| mp == *p || mp.starts_with(&format!("{p}/")))
            || mp == "/etc/resolv.conf"
            || mp == "/etc/hosts"
    };
    for line in r("mountinfo").lines() {
        let mp = line.split(' ').nth(4).unwrap();
        assert!(allowed(mp), "host mount visible in RUN: {line}");
    }
    // Docker's default capability set, effective and bounding.
    assert_eq!(
        r("caps"),
        "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n"
    );
    // --network=none: loopback only. The default: a namespace of its own whose way out is
    // slirp4netns's tap device (tests/security.rs checks what it can and cannot reach).
    assert_eq!(
        interfaces(&r("net-none")),
        BTreeSet::from(["lo".to_string()])
    );
    assert_eq!(
        interfaces(&r("net-default")),
        BTreeSet::from(["lo".to_string(), "tap0".to_string()])
    );
    // A setuid-root binary run by USER user gets euid 0 (no no_new_privs, as in docker).
    assert_eq!(r("uid"), "1000\n");
    let uid_line = r("suid-status")
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert_eq!(uid_line, "Uid:\t1000\t0\t0\t0");

    // `--network none` on the command line is the default for every RUN.
    let root = build_rootfs(
        store.path(),
        &format!("FROM {BASE}\nRUN cat /proc/net/dev > /net\n"),
        &["--network", "none"],
    );
    let net = std::fs::read_to_string(root.path().join("net")).unwrap();
    assert_eq!(interfaces(&net), BTreeSet::from(["lo".to_string()]));
    // `--network host` gives every RUN the host's network, as asked.
    let root = build_rootfs(
        store.path(),
        &format!("FROM {BASE}\nRUN cat /proc/net/dev > /net\n"),
        &["--network", "host"],
    );
    let net = std::fs::read_to_string(root.path().join("net")).unwrap();
    let host = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert_eq!(interfaces(&net), host);
}

#[test]
#[ignore = "needs root and a registry"]
fn secrets_appear_in_no_layer_history_record_or_cache_key() {
    support::needs_root_and_registry();
    let store = tempfile::tempdir().unwrap();
    let top = tempfile::tempdir().unwrap();
    let value = format!("S3CRET-VALUE-{}", std::process::id());
    let secret_file = top.path().join("token");
    std::fs::write(&secret_file, &value).unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {BASE}\nRUN --mount=type=secret,id=tok,required=true \
             sha256sum /run/secrets/tok | cut -d' ' -f1 > /tok.sha && ls -la /run/secrets > /listing\n"
        ),
    )]);
    let out = top.path().join("image.tar");
    let build = |secret: &Path, out: &Path| {
        build_ok(
            rbuild(store.path())
                .args(["--secret", &format!("id=tok,src={}", secret.display())])
                .args(["-o", &format!("type=docker,dest={}", out.display())])
                .arg(ctx.path()),
        )
    };
    let progress = build(&secret_file, &out);
    assert!(!progress.contains(&value), "{progress}");

    // The step could read it ...
    let image = std::fs::read(&out).unwrap();
    let rootfs = docker_archive_rootfs(&image);
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(value.as_bytes()));
    let tok_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("{want}\n")));
    assert_eq!(
        rootfs.get("tok.sha").map(|e| e.sha256.as_str()),
        Some(tok_sha.as_str()),
        "the step did not read the secret"
    );
    // ... and it is nowhere: not in the archive (layers, config, history), not in the
    // store (blobs, extracted layers, cache records), not even its mountpoint.
    let has = |hay: &[u8], n: &[u8]| hay.windows(n.len()).any(|w| w == n);
    assert!(!has(&image, value.as_bytes()), "the image holds the secret");
    assert_eq!(
        tree_contains(store.path(), value.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert!(
        !rootfs.keys().any(|k| k.starts_with("run/secrets")),
        "the secret's mountpoint is in the layer"
    );

    // BuildKit leaves secrets out of the cache key: another value reuses the step.
    let other = top.path().join("other");
    std::fs::write(&other, "another value").unwrap();
    let progress = build(&other, &top.path().join("image2.tar"));
    assert!(
        step_cached(&progress, "RUN --mount=type=secret"),
        "{progress}"
    );
}

/// The merged rootfs of a one-stage docker archive (layers applied in order, no whiteouts
/// expected in these tests).
fn docker_archive_rootfs(archive: &[u8]) -> std::collections::BTreeMap<String, support::FsEntry> {
    let mut blobs = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(archive);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        blobs.insert(path, bytes);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&blobs["manifest.json"]).unwrap();
    let mut merged = std::collections::BTreeMap::new();
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        merged.extend(support::listing(&blobs[layer.as_str().unwrap()][..]));
    }
    merged
}

/// The processes a build keeps between steps (the spare helper, the network namespace's
/// holder, slirp4netns) end before rbuild exits: nothing of its process group is left, not
/// even a zombie for init to reap (farm-bench saw them outlive every RUN build).
#[test]
#[ignore = "needs root and a registry"]
fn nothing_a_build_started_outlives_it() {
    use std::os::unix::process::CommandExt;
    support::needs_root_and_registry();
    let store = tempfile::tempdir().unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {BASE}\nRUN echo one > /one\nRUN echo two > /two\n"),
    )]);
    let mut child = rbuild(store.path())
        .args(["--no-cache", "-q"])
        .arg(ctx.path())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    // The group's id is the pid rbuild had; whatever is still in it is rbuild's.
    let group = support::processes_in_group(pid);
    assert!(group.is_empty(), "left running: {group:?}");
}
