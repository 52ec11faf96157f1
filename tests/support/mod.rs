//! Shared pieces of the integration tests: prerequisites (fail in CI, skip elsewhere), the
//! rbuild binary, the docker client, and image filesystem/config listings for comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

/// The local registry that scripts/test-env.sh starts and seeds.
pub const REGISTRY: &str = "localhost:5000";

/// Whether a prerequisite holds. In CI (CI=true) a missing one fails the test; elsewhere the
/// test is skipped with a message saying what to run.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("prerequisite missing in CI: {what} (scripts/test-env.sh sets it up)");
    }
    eprintln!("SKIPPED: {what} (run `sudo scripts/test-env.sh` first)");
    false
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

pub fn registry_ready() -> bool {
    Command::new("curl")
        .args([
            "-fsS",
            "-o",
            "/dev/null",
            "http://127.0.0.1:5000/v2/busybox/manifests/latest",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything the end-to-end tests need; false (skip) or panic (CI) when something is missing.
pub fn e2e_ready() -> bool {
    require(is_root(), "root (namespaces and overlay mounts)")
        && require(docker_ready(), "a running docker engine")
        && require(
            registry_ready(),
            "a registry on 127.0.0.1:5000 holding busybox:latest",
        )
}

pub fn rbuild_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rbuild"))
}

/// rbuild with a store of its own under `store`.
pub fn rbuild(store: &Path) -> Command {
    let mut cmd = Command::new(rbuild_bin());
    cmd.env("RBUILD_ROOT", store).arg("--progress=plain");
    cmd
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

/// An image a test pushed to the test registry (`localhost:5000/NAME:TAG`); its manifest
/// is deleted from the registry when this goes out of scope, so tests leave nothing there.
pub struct RegistryImage(pub String);

impl Drop for RegistryImage {
    fn drop(&mut self) {
        let Some((name, tag)) = self
            .0
            .strip_prefix(&format!("{REGISTRY}/"))
            .and_then(|r| r.rsplit_once(':'))
        else {
            return;
        };
        let accept = "Accept: application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json";
        let url = format!("http://127.0.0.1:5000/v2/{name}/manifests");
        let head = Command::new("curl")
            .args(["-fsSI", "-H", accept, &format!("{url}/{tag}")])
            .output();
        let digest = head.ok().and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| v.trim().to_string())
            })
        });
        if let Some(digest) = digest {
            let _ = Command::new("curl")
                .args(["-fsS", "-X", "DELETE", &format!("{url}/{digest}")])
                .output();
        }
    }
}
