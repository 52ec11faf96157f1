//! Shared pieces of the integration tests: prerequisites, the rbuild binary, the docker
//! client, and image filesystem/config listings for comparisons.
//!
//! A test that needs more than a checkout (root, docker, the run's registry) is marked
//! `#[ignore = "needs ..."]`, in one of the wordings of the `needs_*` functions below, and
//! calls that function first. A plain `cargo test` then lists it as ignored, saying what it
//! did not run, instead of reporting a green test that ran nothing; scripts/test.sh passes
//! `--include-ignored`, and there a missing prerequisite fails the test, naming it.
#![allow(dead_code)]

pub mod attacks;
pub mod container;
pub mod registry;
pub mod user;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};

pub mod git;

/// Names the registry of this test run, `localhost:PORT`. scripts/test.sh starts a registry
/// of its own for each run (on a free port, seeded with busybox:latest and debian:bookworm)
/// and sets it; for single test binaries, `eval "$(sudo scripts/test-env.sh)"` sets it to
/// that script's developer registry. Tests never assume a registry they were not given.
pub const REGISTRY_VAR: &str = "RBUILD_TEST_REGISTRY";

/// The run's registry address (`localhost:PORT`, from [`REGISTRY_VAR`]). Tests call
/// [`needs_root_and_registry`] or [`needs_root_docker_and_registry`] before this.
pub fn registry() -> &'static str {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| {
        std::env::var(REGISTRY_VAR).unwrap_or_else(|_| {
            panic!("{REGISTRY_VAR} is not set: run the tests with `sudo scripts/test.sh`")
        })
    })
}

/// The run's registry under its other name, `127.0.0.1:PORT`: the same registry to the
/// network, another registry to an image reference (no cross-repository mounts from
/// `localhost:PORT` images, for instance).
pub fn registry_by_ip() -> String {
    registry().replacen("localhost:", "127.0.0.1:", 1)
}

/// A repository in the run's registry, written `localhost:PORT/NAME` by `Display`, so that
/// Dockerfiles in tests read `format!("FROM {BASE}")` with `const BASE: InRegistry =
/// InRegistry("busybox")`. The empty name writes the registry's address alone.
#[derive(Clone, Copy, Debug)]
pub struct InRegistry(pub &'static str);

impl fmt::Display for InRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => f.write_str(registry()),
            name => write!(f, "{}/{name}", registry()),
        }
    }
}

/// `{REGISTRY}` in a format string: the run registry's address.
pub const REGISTRY: InRegistry = InRegistry("");

/// Fails the test, naming `what`, unless `ok`. Only `#[ignore]`d tests have prerequisites, and
/// they run when asked to (`--include-ignored`): a missing one is an error, never a skip.
pub fn require(ok: bool, what: &str) {
    assert!(
        ok,
        "prerequisite missing: {what} (an #[ignore]d test, run when asked: \
         `sudo scripts/test.sh` sets up what it needs, or `eval \"$(sudo scripts/test-env.sh)\"` \
         before a single test binary)"
    );
}

/// For `#[ignore = "needs root"]`: namespaces, overlay mounts, and rbuild itself (it refuses
/// other users).
pub fn needs_root() {
    require(
        is_root(),
        "root (namespaces and overlay mounts; rbuild refuses other users)",
    );
}

/// For `#[ignore = "needs root and a registry"]`.
pub fn needs_root_and_registry() {
    needs_root();
    needs_registry();
}

/// For `#[ignore = "needs root, docker and a registry"]`: the end-to-end tests.
pub fn needs_root_docker_and_registry() {
    needs_root();
    require(docker_ready(), "a running docker engine");
    needs_registry();
}

pub fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // /proc/self/status avoids a libc dependency in the tests.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Debian's 20.10 docker client: it carries BuildKit itself (a newer CLI without buildx
/// refuses DOCKER_BUILDKIT=1).
pub fn docker_bin() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

pub fn docker() -> Command {
    Command::new(docker_bin())
}

pub fn docker_ready() -> bool {
    docker()
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The run's registry: given ([`REGISTRY_VAR`]) and holding busybox:latest. Part of the
/// `needs_*` above; a test never calls it alone (rbuild needs root).
fn needs_registry() {
    let Ok(addr) = std::env::var(REGISTRY_VAR) else {
        return require(false, &format!("{REGISTRY_VAR}, the run's registry"));
    };
    let answers = Command::new("curl")
        .args(["-fsS", "-o", "/dev/null"])
        .arg(format!("http://{addr}/v2/busybox/manifests/latest"))
        .status()
        .is_ok_and(|s| s.success());
    require(
        answers,
        &format!("the registry {addr} ({REGISTRY_VAR}) holding busybox:latest"),
    )
}

pub fn rbuild_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rbuild"))
}

/// rbuild with a store of its own under `store`. In the rootless pass it runs as the pass's
/// user ([`user::USER_VAR`]), who then owns `store`.
pub fn rbuild(store: &Path) -> Command {
    let mut cmd = rbuild_cmd(store);
    cmd.arg("--progress=plain");
    cmd
}

/// An rbuild subcommand (`images`, `du`, `prune`, `inspect`, ...) on the store under
/// `store`: no build flags.
pub fn rbuild_cmd(store: &Path) -> Command {
    let mut cmd = user::rbuild_on(store);
    cmd.env("RBUILD_ROOT", store);
    cmd
}

/// A store kept between runs under cargo's test tmpdir, `name` (the rootless pass's user has
/// one of its own, `name-USER`: root's holds files the user may not write).
pub fn kept_store(name: &str) -> PathBuf {
    let name = match user::pass_user() {
        Some((user, _)) => format!("{name}-{}", user.name),
        None => name.to_string(),
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A temporary directory for a test's contexts, stores and outputs: in the rootless pass it
/// belongs to the pass's user, so that its rbuild may read and write there.
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    user::share(dir.path());
    dir
}

/// A temporary directory for a test that makes `inodes` files: on /dev/shm when it has room
/// for them (on this machine's ext4, creating files right after many deletions is 10x
/// slower), else where [`tempfile::tempdir`] puts it. Another user of /dev/shm (a bench's
/// million-file tree) must not make the test fail for lack of inodes.
pub fn many_files_tempdir(inodes: u64) -> tempfile::TempDir {
    let room = rustix::fs::statvfs("/dev/shm")
        .is_ok_and(|st| st.f_favail >= inodes * 2 && st.f_bavail * st.f_frsize >= 4 << 30);
    if room {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        eprintln!("/dev/shm has no room for {inodes} files: using the default temp dir");
        tempfile::tempdir().unwrap()
    }
}

/// How each step of a plain progress log ended, with its label (`[stage i/n] TEXT`, empty
/// for a step without one): `CACHED`, `CACHED (remote)` or `DONE`, in the log's order.
pub fn step_ends(progress: &str) -> Vec<(String, String)> {
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut ends = Vec::new();
    for line in progress.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((n, text)) = rest.split_once(' ') else {
            continue;
        };
        let end = match text {
            t if t.starts_with('[') => {
                labels.insert(n.to_string(), t.to_string());
                continue;
            }
            "CACHED" | "CACHED (remote)" => text,
            t if t.starts_with("DONE ") => "DONE",
            _ => continue,
        };
        let label = labels.get(n).cloned().unwrap_or_default();
        ends.push((label, end.to_string()));
    }
    ends
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One entry of an image filesystem, as compared between builders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEntry {
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub sha256: String,
    pub link: String,
}

/// Paths docker itself injects into containers, never part of what a build wrote.
const DOCKER_INJECTED: &[&str] = &[
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    ".dockerenv",
    "dev",
    "proc",
    "sys",
];

/// The merged filesystem of `image` via `docker create` + `docker export`.
pub fn docker_fs(image: &str) -> BTreeMap<String, FsEntry> {
    let id = run_ok(docker().args(["create", image, "/nonexistent"]))
        .trim()
        .to_string();
    let out = run(docker().args(["export", &id]));
    run_ok(docker().args(["rm", &id]));
    assert!(out.status.success(), "docker export {image}");
    listing(&out.stdout[..])
}

/// A listing of a tar stream: hard links resolve to their target's content and are grouped by
/// the link target name, so two builders agree when their hardlink groups agree.
pub fn listing(tar_bytes: impl Read) -> BTreeMap<String, FsEntry> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        let header = entry.header().clone();
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .trim_start_matches("./")
            .to_string();
        if path.is_empty()
            || DOCKER_INJECTED
                .iter()
                .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        {
            continue;
        }
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            _ => '?',
        };
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        let link = entry
            .link_name()
            .ok()
            .flatten()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (kind, size, sha256) = match kind {
            'h' => {
                let target: &FsEntry = out
                    .get(link.trim_start_matches('/'))
                    .expect("hardlink to an earlier entry");
                ('f', target.size, target.sha256.clone())
            }
            'f' => (
                'f',
                content.len() as u64,
                hex::encode(Sha256::digest(&content)),
            ),
            k => (k, 0, String::new()),
        };
        let link = if header.entry_type() == tar::EntryType::Link {
            String::new()
        } else {
            link
        };
        let e = FsEntry {
            kind,
            mode: header.mode().unwrap() & 0o7777,
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            size,
            sha256,
            link,
        };
        out.insert(path, e);
    }
    out
}

/// The differences between two listings, one line each; empty when equal.
pub fn diff_listings(
    want: &BTreeMap<String, FsEntry>,
    got: &BTreeMap<String, FsEntry>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, w) in want {
        match got.get(path) {
            None => diffs.push(format!("missing in rbuild's image: {path} {w:?}")),
            Some(g) if g != w => {
                diffs.push(format!("differs: {path}\n  docker: {w:?}\n  rbuild: {g:?}"))
            }
            Some(_) => {}
        }
    }
    for (path, g) in got {
        if !want.contains_key(path) {
            diffs.push(format!("extra in rbuild's image: {path} {g:?}"));
        }
    }
    diffs
}

/// `docker image inspect` -> the parts of Config that a build defines.
pub fn docker_config(image: &str) -> serde_json::Value {
    let out = run_ok(docker().args(["image", "inspect", image]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = &v[0]["Config"];
    let keep = [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "Labels",
        "StopSignal",
        "Healthcheck",
        "Shell",
        "OnBuild",
    ];
    let mut m = serde_json::Map::new();
    for k in keep {
        let val = c.get(k).cloned().unwrap_or(serde_json::Value::Null);
        // docker reports empty lists/maps and null interchangeably across builders.
        let empty = match &val {
            serde_json::Value::Null => true,
            serde_json::Value::String(s) => s.is_empty(),
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            m.insert(k.to_string(), val);
        }
    }
    serde_json::Value::Object(m)
}

/// The sha256 of a file's contents, in hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// An image a test pushed to the run's registry. Made right after the push, it records the
/// manifest's digest; dropped (also when the test fails), it deletes that manifest and with it
/// every tag naming it. scripts/test.sh fails a run whose tests leave anything in the
/// registry. Only the run's registry (by `localhost` or `127.0.0.1`) is ever touched.
pub struct RegistryImage {
    manifests: String,
    digest: String,
}

impl RegistryImage {
    /// `reference` is `HOST:PORT/NAME:TAG` in the run's registry.
    pub fn pushed(reference: &str) -> RegistryImage {
        let (host, path) = reference
            .split_once('/')
            .unwrap_or_else(|| panic!("`{reference}`: no registry host"));
        let by_ip = registry_by_ip();
        assert!(
            host == registry() || host == by_ip,
            "`{reference}` is not in the run's registry {}",
            registry()
        );
        let (name, tag) = path
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("`{reference}`: no tag"));
        let manifests = format!("http://{by_ip}/v2/{name}/manifests");
        let head = run_ok(Command::new("curl").args([
            "-fsSI",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, \
             application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json",
            &format!("{manifests}/{tag}"),
        ]));
        let digest = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no digest for `{reference}` in:\n{head}"));
        RegistryImage { manifests, digest }
    }

    /// The manifest's digest, `sha256:...`.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

impl RegistryImage {
    /// An index at `reference` (`HOST:PORT/NAME:TAG`) and the manifests it lists, which were
    /// pushed by digest: a guard for each, the index first.
    pub fn pushed_index(reference: &str) -> Vec<RegistryImage> {
        let index = RegistryImage::pushed(reference);
        let body = run_ok(Command::new("curl").args([
            "-fsS",
            "-H",
            "Accept: application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json",
            &format!("{}/{}", index.manifests, index.digest),
        ]));
        let parsed: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("the index of `{reference}`: {e}\n{body}"));
        let members: Vec<RegistryImage> = parsed["manifests"]
            .as_array()
            .unwrap_or_else(|| panic!("`{reference}` is no index:\n{body}"))
            .iter()
            .map(|m| RegistryImage {
                manifests: index.manifests.clone(),
                digest: m["digest"].as_str().unwrap().to_string(),
            })
            .collect();
        std::iter::once(index).chain(members).collect()
    }
}

impl Drop for RegistryImage {
    fn drop(&mut self) {
        let url = format!("{}/{}", self.manifests, self.digest);
        let status = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "DELETE",
                &url,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        // 404: another guard on the same manifest (two tags of one image) deleted it first.
        let deleted = status.as_deref().is_ok_and(|s| s == "202" || s == "404");
        if !deleted && !std::thread::panicking() {
            panic!("deleting {url}: {status:?}");
        }
    }
}

/// Docker images a test made (loaded, built, pulled or tagged), by name: removed when this is
/// dropped, also when the test fails.
pub struct DockerImages(pub Vec<String>);

impl Drop for DockerImages {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = docker()
                .args(["rmi", "-f"])
                .args(&self.0)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Wait (bounded, so a broken build fails the test instead of hanging it) until `cond`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(300),
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Pids of processes whose command line (arguments joined by spaces) contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(marker)
            })
        })
        .collect()
}

/// The processes (command line, or `[comm] <state>` for one without, like a zombie) whose
/// process group is `pgid`: what a command started with `process_group(0)` left behind.
/// Only that group's, so that other builds running on the machine do not count.
pub fn processes_in_group(pgid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|p| p.parse::<u32>().ok()) != Some(pgid) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        found.push(if cmdline.is_empty() {
            format!("[{comm}] {}", fields.first().unwrap_or(&"?"))
        } else {
            cmdline
        });
    }
    found
}

/// The regular files below `dir` whose bytes contain `needle` (a secret, a token): where
/// something that must never reach the disk did.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file()
                && std::fs::read(e.path())
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                hits.push(e.path());
            }
        }
    }
    hits
}
