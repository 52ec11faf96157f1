//! Multi-platform builds (issue 20): `--platform a,b,c` against busybox-multi:latest, the
//! real amd64/arm64/arm-v7 index scripts/test-env.sh seeds from Debian's busybox-static
//! packages. Foreign RUN steps go through the machine's qemu-user binfmt handlers (the test
//! setup registers them); no test here unregisters a handler.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const MULTI: InRegistry = InRegistry("busybox-multi");

/// The cross-compile pattern: a stage pinned to the build platform makes every target's
/// output once; each target copies its own and runs a RUN of its architecture.
fn cross_dockerfile() -> String {
    format!(
        r#"FROM --platform=$BUILDPLATFORM {MULTI} AS build
RUN mkdir /out && for a in amd64 arm64 arm; do echo "for $a on $(uname -m)" > /out/$a; done \
 && cat /proc/sys/kernel/random/uuid > /out/stamp

FROM {MULTI}
ARG TARGETARCH
ARG TARGETPLATFORM
ARG BUILDPLATFORM
COPY --from=build /out/$TARGETARCH /out/stamp /
RUN uname -m > /arch && echo "$TARGETPLATFORM on $BUILDPLATFORM" > /plat
"#
    )
}

/// A fresh temp dir under cargo's test tmpdir (same filesystem as the stores).
fn tempdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::Builder::new()
        .prefix("platforms-")
        .tempdir_in(base)
        .unwrap()
}

/// A context holding `dockerfile`.
fn context(dir: &Path, dockerfile: &str) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

/// A unique repository name in the run's registry.
fn unique(what: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!(
        "rbuild-test/platforms-{what}-{}-{}",
        std::process::id(),
        t.as_nanos() % 1_000_000
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Build `ctx` for `platforms` into DIR/out (`type=local`, a directory per platform).
fn build_local(dir: &Path, ctx: &Path, platforms: &str) -> PathBuf {
    let out = dir.join("out");
    run_ok(
        rbuild(&dir.join("store"))
            .args(["--platform", platforms])
            .arg("-o")
            .arg(format!("type=local,dest={}", out.display()))
            .arg(ctx),
    );
    out
}

/// Run a build that must fail (exit 1, as for bad input); its stderr.
fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

fn needs_qemu() {
    for arch in ["aarch64", "arm"] {
        require(
            Path::new(&format!("/proc/sys/fs/binfmt_misc/qemu-{arch}")).exists(),
            &format!("the qemu-{arch} binfmt_misc handler (scripts/test-env.sh registers it)"),
        );
    }
}

#[test]
#[ignore = "needs root, a registry and qemu binfmt handlers"]
fn each_platform_runs_its_own_arch_and_the_build_stage_runs_once() {
    needs_root_and_registry();
    needs_qemu();
    let dir = tempdir();
    let ctx = context(dir.path(), &cross_dockerfile());
    let out = build_local(dir.path(), &ctx, "linux/amd64,linux/arm64,linux/arm/v7");
    let mut stamps = Vec::new();
    for (dir_name, arch, platform) in [
        ("linux_amd64", "x86_64", "linux/amd64"),
        ("linux_arm64", "aarch64", "linux/arm64"),
        ("linux_arm_v7", "armv7l", "linux/arm/v7"),
    ] {
        let root = out.join(dir_name);
        assert_eq!(read(&root.join("arch")).trim(), arch, "{dir_name}/arch");
        assert_eq!(
            read(&root.join("plat")).trim(),
            format!("{platform} on linux/amd64"),
            "{dir_name}/plat"
        );
        let target_arch = platform.split('/').nth(1).unwrap();
        assert_eq!(
            read(&root.join(target_arch)).trim(),
            format!("for {target_arch} on x86_64"),
            "{dir_name}: the build stage's output for it, made natively"
        );
        stamps.push(read(&root.join("stamp")));
    }
    assert!(
        stamps.windows(2).all(|w| w[0] == w[1]),
        "the $BUILDPLATFORM stage ran more than once: {stamps:?}"
    );
}

#[test]
#[ignore = "needs root, a registry and qemu binfmt handlers"]
fn progress_names_the_platform_of_each_step_and_tar_has_a_directory_each() {
    needs_root_and_registry();
    needs_qemu();
    let dir = tempdir();
    let ctx = context(dir.path(), &format!("FROM {MULTI}\nRUN uname -m > /arch\n"));
    let tar = dir.path().join("rootfs.tar");
    let out = run(rbuild(&dir.path().join("store"))
        .args(["--platform", "linux/amd64,linux/arm64"])
        .arg("-o")
        .arg(format!("type=tar,dest={}", tar.display()))
        .arg(&ctx));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The rootfs tar holds a directory per platform, as `type=local` does.
    let names = run_ok(Command::new("tar").arg("-tf").arg(&tar));
    for name in [
        "linux_amd64/arch",
        "linux_arm64/arch",
        "linux_arm64/bin/busybox",
    ] {
        assert!(names.lines().any(|l| l == name), "no {name} in the tar");
    }
    for label in [
        "[linux/amd64 2/2] RUN uname -m > /arch",
        "[linux/arm64 2/2] RUN uname -m > /arch",
    ] {
        assert!(stderr.contains(label), "no `{label}` in:\n{stderr}");
    }
    // Steps are numbered across the passes: no `#1` twice.
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("#1 [")).count(),
        1,
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root, a registry and qemu binfmt handlers"]
fn pushed_index_and_oci_archive_hold_one_manifest_per_platform() {
    needs_root_and_registry();
    needs_qemu();
    let dir = tempdir();
    let ctx = context(dir.path(), &cross_dockerfile());
    let reference = format!("{}/{}:v1", registry(), unique("index"));
    let archive = dir.path().join("image.oci.tar");
    run_ok(
        rbuild(&dir.path().join("store"))
            .args(["--platform", "linux/amd64,linux/arm64", "--push"])
            .args(["-t", &reference])
            .arg("-o")
            .arg(format!("type=oci,dest={}", archive.display()))
            .arg(&ctx),
    );
    let _pushed = RegistryImage::pushed_index(&reference);

    for source in [
        format!("docker://{reference}"),
        format!("oci-archive:{}", archive.display()),
    ] {
        let raw = run_ok(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &source,
        ]));
        let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            index["mediaType"], "application/vnd.oci.image.index.v1+json",
            "{source}: {raw}"
        );
        let platforms: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap(),
                    m["platform"]["architecture"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{source}");
    }

    // skopeo picks the arm64 image out of the pushed index; its config and files are arm64's.
    let copy = dir.path().join("arm64");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--override-arch",
        "arm64",
        &format!("docker://{reference}"),
        &format!("dir:{}", copy.display()),
    ]));
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&copy.join("manifest.json"))).unwrap();
    let blob = |d: &serde_json::Value| copy.join(d.as_str().unwrap().trim_start_matches("sha256:"));
    let config: serde_json::Value =
        serde_json::from_str(&read(&blob(&manifest["config"]["digest"]))).unwrap();
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["os"], "linux");
    let top = manifest["layers"].as_array().unwrap().last().unwrap();
    let arch = run_ok(
        Command::new("tar")
            .arg("-xzOf")
            .arg(blob(&top["digest"]))
            .arg("arch"),
    );
    assert_eq!(arch.trim(), "aarch64");
}

#[test]
#[ignore = "needs root, a registry and qemu binfmt handlers"]
fn a_single_foreign_platform_makes_a_docker_archive_and_several_are_refused() {
    needs_root_and_registry();
    needs_qemu();
    let dir = tempdir();
    let ctx = context(dir.path(), &format!("FROM {MULTI}\nRUN uname -m > /arch\n"));
    let store = dir.path().join("store");
    let several = dir.path().join("several.tar");
    let stderr = fails(
        rbuild(&store)
            .args(["--platform", "linux/amd64,linux/arm64"])
            .arg("-o")
            .arg(format!("type=docker,dest={}", several.display()))
            .arg(&ctx),
    );
    assert!(
        stderr.contains("a docker archive holds one platform")
            && stderr.contains("linux/amd64, linux/arm64")
            && stderr.contains("type=oci"),
        "{stderr}"
    );
    assert!(!several.exists(), "nothing is written for a refused output");

    let archive = dir.path().join("arm.tar");
    run_ok(
        rbuild(&store)
            .args(["--platform", "linux/arm/v7"])
            .arg("-o")
            .arg(format!("type=docker,dest={}", archive.display()))
            .arg(&ctx),
    );
    let inspect = run_ok(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("docker-archive:{}", archive.display()),
    ]));
    let config: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(config["architecture"], "arm");
    assert_eq!(config["variant"], "v7");
}

#[test]
#[ignore = "needs root and a registry"]
fn a_platform_the_base_lacks_is_an_error_listing_the_available_ones() {
    needs_root_and_registry();
    let dir = tempdir();
    let ctx = context(dir.path(), &format!("FROM {MULTI}\nRUN true\n"));
    let stderr = fails(
        rbuild(&dir.path().join("store"))
            .args(["--platform", "linux/s390x"])
            .arg(&ctx),
    );
    assert!(
        stderr.contains("no matching manifest for linux/s390x")
            && stderr.contains("available: linux/amd64, linux/arm64, linux/arm/v7")
            && stderr.contains("Dockerfile:1"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn a_foreign_run_without_a_handler_says_how_to_register_one() {
    needs_root_and_registry();
    let dir = tempdir();
    let ctx = context(dir.path(), &format!("FROM {MULTI}\nRUN uname -m\n"));
    // An empty stand-in for /proc/sys/fs/binfmt_misc: no handler is registered there, and
    // the machine's handlers stay as they are for the tests running beside this one.
    let empty = dir.path().join("binfmt_misc");
    std::fs::create_dir(&empty).unwrap();
    let stderr = fails(
        rbuild(&dir.path().join("store"))
            .env("RBUILD_TEST_BINFMT_DIR", &empty)
            .args(["--platform", "linux/arm64"])
            .arg(&ctx),
    );
    for part in [
        "Dockerfile:2: no binfmt_misc handler runs linux/arm64 binaries (aarch64 ELF)",
        "rbuild binfmt --install",
        "/usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register",
    ] {
        assert!(stderr.contains(part), "no `{part}` in:\n{stderr}");
    }
}

/// A directory's files: path -> `d`, `l:TARGET` or `f:SHA256`.
fn files(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, "d".into());
                walk(root, &path, out);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("l:{}", target.display()));
            } else {
                out.insert(rel, format!("f:{}", sha256_file(&path)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What buildah's RUN leaves in an image that the Dockerfile did not make (docs/compat.md).
const BUILDAH_INJECTED: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
];

/// A buildah `--manifest` list and its images (by id), removed when dropped; nothing else
/// in buildah's storage, which other tests share.
struct BuildahList {
    name: String,
    members: Vec<String>,
}

impl Drop for BuildahList {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .args(["manifest", "rm", &self.name])
            .output();
        for id in &self.members {
            let _ = Command::new("buildah").args(["rmi", "-f", id]).output();
        }
    }
}

#[test]
#[ignore = "needs root, a registry, buildah and qemu binfmt handlers"]
fn files_per_platform_match_buildah_bud_with_a_manifest() {
    needs_root_and_registry();
    needs_qemu();
    require(
        Command::new("buildah").arg("--version").output().is_ok(),
        "buildah",
    );
    let dir = tempdir();
    let dockerfile = format!(
        "FROM {MULTI}\nARG TARGETARCH\nRUN uname -m > /arch && mkdir -p /d && echo $TARGETARCH > /d/t \
         && ln -s /arch /d/link\nWORKDIR /w\n"
    );
    let ctx = context(dir.path(), &dockerfile);
    let out = build_local(dir.path(), &ctx, "linux/amd64,linux/arm64");

    let mut list = BuildahList {
        name: format!("localhost/{}", unique("bud")),
        members: Vec::new(),
    };
    run_ok(
        Command::new("buildah")
            .args(["bud", "--quiet", "--tls-verify=false"])
            .args([
                "--platform",
                "linux/amd64,linux/arm64",
                "--manifest",
                &list.name,
            ])
            .arg(&ctx),
    );
    let inspect: serde_json::Value = serde_json::from_str(&run_ok(
        Command::new("buildah").args(["manifest", "inspect", &list.name]),
    ))
    .unwrap();
    let mut compared = 0;
    for m in inspect["manifests"].as_array().unwrap() {
        let arch = m["platform"]["architecture"].as_str().unwrap();
        let image = format!("{}@{}", list.name, m["digest"].as_str().unwrap());
        let ctr = run_ok(Command::new("buildah").args(["from", "--quiet", &image]))
            .trim()
            .to_string();
        let id =
            run_ok(Command::new("buildah").args(["inspect", "--format", "{{.FromImageID}}", &ctr]));
        list.members.push(id.trim().to_string());
        let mnt = run_ok(Command::new("buildah").args(["mount", &ctr]))
            .trim()
            .to_string();
        let mut theirs = files(Path::new(&mnt));
        let _ = Command::new("buildah").args(["rm", &ctr]).output();
        // buildah leaves the mountpoints and files of its RUN containers in the image.
        for injected in BUILDAH_INJECTED {
            theirs.remove(*injected);
        }
        let ours = files(&out.join(format!("linux_{arch}")));
        let differ: Vec<(&String, Option<&String>, Option<&String>)> = ours
            .keys()
            .chain(theirs.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| ours.get(*k) != theirs.get(*k))
            .map(|k| (k, ours.get(k), theirs.get(k)))
            .collect();
        assert!(
            differ.is_empty(),
            "linux/{arch}: rbuild's files vs buildah's: {differ:?}"
        );
        assert!(theirs.contains_key("d/t") && theirs.contains_key("w"));
        compared += 1;
    }
    assert_eq!(compared, 2);
}

/// Issue 18: `--cache-to` of a build of several platforms exports one cache holding every
/// platform's steps (the platform is in the keys); a cold runner building the same
/// platforms, or only one of them, from the registry or the local copy runs nothing.
#[test]
#[ignore = "needs root, a registry and qemu binfmt handlers"]
fn one_cache_holds_every_platform_and_each_imports_its_own() {
    needs_root_and_registry();
    needs_qemu();
    let dockerfile = format!(
        "FROM {MULTI}\nARG TARGETARCH\nRUN echo ran-$TARGETARCH | tr a-z A-Z && uname -m > /arch\n"
    );
    let reference = format!("{}/{}:cache", registry(), unique("cache"));
    let a = tempdir();
    let local = a.path().join("cache-dir");
    let ctx = context(a.path(), &dockerfile);
    let progress = run(rbuild(&a.path().join("store"))
        .args(["--platform", "linux/amd64,linux/arm64"])
        .args([
            "--cache-to",
            &format!("type=registry,ref={reference},mode=max"),
        ])
        .args([
            "--cache-to",
            &format!("type=local,dest={}", local.display()),
        ])
        .arg(&ctx));
    let progress_a = String::from_utf8_lossy(&progress.stderr).into_owned();
    assert!(progress.status.success(), "{progress_a}");
    let _cache = RegistryImage::pushed(&reference);
    assert!(
        progress_a.contains("RAN-AMD64") && progress_a.contains("RAN-ARM64"),
        "{progress_a}"
    );
    // One export per --cache-to, after both passes.
    assert_eq!(
        progress_a.matches("exporting cache to").count(),
        2,
        "{progress_a}"
    );

    for (platforms, from) in [
        (
            "linux/amd64,linux/arm64",
            format!("type=registry,ref={reference}"),
        ),
        ("linux/arm64", format!("type=local,src={}", local.display())),
        ("linux/amd64", format!("type=local,src={}", local.display())),
    ] {
        let b = tempdir();
        let ctx = context(b.path(), &dockerfile);
        let out = b.path().join("out");
        let o = run(rbuild(&b.path().join("store"))
            .args(["--platform", platforms, "--cache-from", &from])
            .arg("-o")
            .arg(format!("type=local,dest={}", out.display()))
            .arg(&ctx));
        let progress = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{progress}");
        assert!(
            !progress.contains("RAN-"),
            "{platforms} from {from}:\n{progress}"
        );
        assert!(progress.contains("CACHED (remote)"), "{progress}");
        let arm = if platforms.contains(',') {
            out.join("linux_arm64/arch")
        } else {
            out.join("arch")
        };
        if platforms.contains("arm64") {
            assert_eq!(read(&arm).trim(), "aarch64");
        }
    }
}

/// The store keeps a multi-platform build as an index under its tag, as containerd's store
/// and `buildah manifest` do: `images` lists it once with its platforms, `inspect` shows the
/// index (and one platform's image with `--platform`), `--iidfile` and `--metadata-file`
/// name the index, `FROM` of it picks each platform's image from the store, `push` pushes the
/// index, and prune keeps its images whole until `rmi` drops the tag.
#[test]
#[ignore = "needs root, a registry and qemu binfmt handlers"]
fn a_multi_platform_tag_is_an_index_in_the_store() {
    needs_root_and_registry();
    needs_qemu();
    let dir = tempdir();
    let store = dir.path().join("store");
    let ctx = context(dir.path(), &format!("FROM {MULTI}\nRUN uname -m > /arch\n"));
    // A registry nothing answers at: a FROM of it can only be served by the store.
    let tag = "localhost:9/rbuild-test/multi:1";
    let (iid, meta) = (dir.path().join("iid"), dir.path().join("meta.json"));
    run_ok(
        rbuild(&store)
            .args(["--platform", "linux/amd64,linux/arm64", "-t", tag])
            .arg("--iidfile")
            .arg(&iid)
            .arg("--metadata-file")
            .arg(&meta)
            .arg(&ctx),
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&run_ok(rbuild_cmd(&store).args(["inspect", tag]))).unwrap();
    let index_digest = inspect["Digest"].as_str().unwrap().to_string();
    assert_eq!(
        inspect["MediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        inspect["Platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(inspect["RepoTags"], serde_json::json!([tag]));
    let entries = inspect["Index"]["manifests"].as_array().unwrap();
    assert_eq!(entries[1]["platform"]["architecture"], "arm64");

    // --iidfile and --metadata-file name the index, as buildx does (no config digest).
    assert_eq!(read(&iid), index_digest);
    let meta: serde_json::Value = serde_json::from_str(&read(&meta)).unwrap();
    assert_eq!(meta["containerimage.digest"], index_digest.as_str());
    assert_eq!(
        meta["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert!(meta.get("containerimage.config.digest").is_none(), "{meta}");

    // One row for the tag, with its platforms and the index digest as IMAGE ID.
    let images = run_ok(rbuild_cmd(&store).arg("images"));
    let rows: Vec<&str> = images
        .lines()
        .filter(|l| l.contains("rbuild-test/multi"))
        .collect();
    assert_eq!(rows.len(), 1, "{images}");
    let short = &index_digest["sha256:".len().."sha256:".len() + 12];
    assert!(
        rows[0].contains(short) && rows[0].ends_with("linux/amd64,linux/arm64"),
        "{images}"
    );

    // One platform's image: inspect and history take --platform.
    let arm: serde_json::Value = serde_json::from_str(&run_ok(rbuild_cmd(&store).args([
        "inspect",
        "--platform",
        "linux/arm64",
        tag,
    ])))
    .unwrap();
    assert_eq!(arm["Config"]["architecture"], "arm64");
    assert_eq!(arm["Digest"], entries[1]["digest"]);
    let history: serde_json::Value = serde_json::from_str(&run_ok(rbuild_cmd(&store).args([
        "history",
        "--format",
        "json",
        "--platform",
        "linux/arm64",
        tag,
    ])))
    .unwrap();
    assert_eq!(history["id"], arm["Id"]);
    let err = fails(rbuild_cmd(&store).args(["inspect", "--platform", "linux/s390x", tag]));
    assert!(
        err.contains("has no image for linux/s390x; it has linux/amd64, linux/arm64"),
        "{err}"
    );

    // Prune keeps the index's images whole: a later build takes each platform's from it.
    run_ok(rbuild_cmd(&store).args(["prune", "--all"]));
    let from = context(
        &dir.path().join("from"),
        &format!("FROM {tag}\nRUN cp /arch /base-arch\n"),
    );
    let out = build_local(dir.path(), &from, "linux/amd64,linux/arm64");
    assert_eq!(read(&out.join("linux_amd64/base-arch")).trim(), "x86_64");
    assert_eq!(read(&out.join("linux_arm64/base-arch")).trim(), "aarch64");

    // `rbuild push` of the tag pushes the index.
    let dest = format!("{}/{}:v1", registry(), unique("stored-index"));
    run_ok(rbuild_cmd(&store).args(["push", tag, &dest]));
    let _pushed = RegistryImage::pushed_index(&dest);
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ]));
    let pushed: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(pushed["manifests"].as_array().unwrap().len(), 2, "{raw}");

    // Untagged, prune takes the index and its images.
    run_ok(rbuild_cmd(&store).args(["rmi", tag]));
    run_ok(rbuild_cmd(&store).args(["prune", "--all"]));
    let blobs = store.join("blobs/sha256");
    for digest in std::iter::once(index_digest.as_str())
        .chain(entries.iter().map(|e| e["digest"].as_str().unwrap()))
    {
        assert!(
            !blobs.join(&digest["sha256:".len()..]).exists(),
            "{digest} outlived its tag"
        );
    }
}

/// `--annotation` on a multi-platform build goes where BuildKit's exporters put it: `index`
/// on the index (archive and push), `index-descriptor` on the OCI layout's index.json entry,
/// `manifest-descriptor[P]` on the index's entry for P, `manifest[P]` in P's manifest only.
#[test]
#[ignore = "needs root, a registry and qemu binfmt handlers"]
fn index_annotations_land_on_the_index_and_its_descriptors() {
    needs_root_and_registry();
    needs_qemu();
    let dir = tempdir();
    let ctx = context(dir.path(), &format!("FROM {MULTI}\nRUN uname -m > /arch\n"));
    let reference = format!("{}/{}:v1", registry(), unique("annotated"));
    let archive = dir.path().join("image.oci.tar");
    run_ok(
        rbuild(&dir.path().join("store"))
            .args(["--platform", "linux/amd64,linux/arm64", "--push"])
            .args(["-t", &reference])
            .args(["--annotation", "index:org.example.i=1"])
            .args(["--annotation", "index-descriptor:org.example.d=2"])
            .args([
                "--annotation",
                "manifest-descriptor[linux/arm64]:org.example.md=arm",
            ])
            .args(["--annotation", "manifest[linux/arm64]:org.example.m=arm"])
            .arg("-o")
            .arg(format!("type=oci,dest={}", archive.display()))
            .arg(&ctx),
    );
    let _pushed = RegistryImage::pushed_index(&reference);
    let raw = |source: &str| -> serde_json::Value {
        let out =
            run_ok(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", source]));
        serde_json::from_str(&out).unwrap()
    };
    let layout: serde_json::Value = serde_json::from_str(&run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("index.json"),
    ))
    .unwrap();
    assert_eq!(
        layout["manifests"][0]["annotations"]["org.example.d"], "2",
        "{layout}"
    );
    let repo = reference.rsplit_once(':').unwrap().0;
    for (source, by_digest) in [
        (format!("oci-archive:{}", archive.display()), None),
        (format!("docker://{reference}"), Some(repo)),
    ] {
        let index = raw(&source);
        assert_eq!(
            index["annotations"]["org.example.i"], "1",
            "{source}: {index}"
        );
        assert!(
            index["annotations"].get("org.example.d").is_none(),
            "{index}"
        );
        let entries = index["manifests"].as_array().unwrap();
        assert!(entries[0].get("annotations").is_none(), "{source}: {index}");
        assert_eq!(
            entries[1]["annotations"]["org.example.md"], "arm",
            "{index}"
        );
        if let Some(repo) = by_digest {
            for (entry, want) in entries.iter().zip([None, Some("arm")]) {
                let m = raw(&format!(
                    "docker://{repo}@{}",
                    entry["digest"].as_str().unwrap()
                ));
                assert_eq!(
                    m["annotations"]["org.example.m"].as_str(),
                    want,
                    "{source}: {m}"
                );
            }
        }
    }
}

/// Line numbers in a plain progress log where the step labelled `[PLATFORM ...] TEXT`
/// starts and where it is `DONE`.
fn step_span(log: &str, platform: &str, text: &str) -> (usize, usize) {
    let lines: Vec<&str> = log.lines().collect();
    let (start, id) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| {
            let (id, label) = l.split_once(' ')?;
            (label.starts_with(&format!("[{platform} ")) && label.ends_with(text))
                .then(|| (i, id.to_string()))
        })
        .unwrap_or_else(|| panic!("no [{platform}] {text} in:\n{log}"));
    let done = lines
        .iter()
        .position(|l| l.starts_with(&format!("{id} DONE")))
        .unwrap_or_else(|| panic!("{id} never DONE in:\n{log}"));
    (start, done)
}

/// The passes of a multi-platform build run at the same time where there are cores: each
/// platform's RUN starts before the other's ends (by the progress log's order, not the
/// clock), and the image is the same as the one `RBUILD_MAX_PARALLELISM=1` builds one pass
/// after the other (whose RUNs do not overlap).
#[test]
#[ignore = "needs root, a registry, qemu binfmt handlers and two cores"]
fn platforms_build_at_once_and_make_what_one_at_a_time_makes() {
    needs_root_and_registry();
    needs_qemu();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    require(cores >= 2, "two cores (passes run one at a time on one)");
    let dir = tempdir();
    let ctx = context(
        dir.path(),
        &format!("FROM {MULTI}\nRUN sleep 1 && uname -m > /arch\nCOPY Dockerfile /\n"),
    );
    let build = |name: &str, jobs: Option<&str>| {
        let archive = dir.path().join(format!("{name}.oci.tar"));
        let mut cmd = rbuild(&dir.path().join(name));
        if let Some(jobs) = jobs {
            cmd.env("RBUILD_MAX_PARALLELISM", jobs);
        }
        let out = run(cmd
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["--platform", "linux/amd64,linux/arm64"])
            .arg("-o")
            .arg(format!("type=oci,dest={}", archive.display()))
            .arg(&ctx));
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        let run = "RUN sleep 1 && uname -m > /arch";
        let amd = step_span(&log, "linux/amd64", run);
        let arm = step_span(&log, "linux/arm64", run);
        (archive, amd.0 < arm.1 && arm.0 < amd.1, log)
    };
    let (together, overlapped, log) = build("together", None);
    assert!(overlapped, "the platforms' RUNs did not overlap:\n{log}");
    let (apart, overlapped, log) = build("apart", Some("1"));
    assert!(!overlapped, "RBUILD_MAX_PARALLELISM=1 overlapped:\n{log}");
    assert_eq!(
        sha256_file(&together),
        sha256_file(&apart),
        "the OCI archives of both differ"
    );
}
