//! End-to-end tests of rbuild's outputs, store commands and registry round trips, checked
//! with the real peers: docker (load, run, export, pull), skopeo, buildah and umoci.
//!
//! One image is built once (with every output at the same time) from a context whose layers
//! hold the awkward cases: a deleted base file (`/etc/group`), a directory replaced by a new
//! one (opaque), a hard link, a symlink, a setuid file, a chowned file and a long unicode name.
//! Each test then checks one output, or builds again into a store of its own.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};
use support::*;

/// 60 two-byte characters: a 120-byte name, past ustar's 100-byte limit.
fn long_name() -> String {
    "é".repeat(60)
}

fn dockerfile() -> String {
    format!(
        r#"FROM {REGISTRY}/busybox
RUN mkdir -p /opq/sub && echo 1 > /opq/old1 && echo 2 > /opq/sub/old2
RUN rm /etc/group \
 && rm -rf /opq && mkdir /opq && echo 3 > /opq/new \
 && mkdir -p /data && echo hello > /data/a && ln /data/a /data/hard \
 && ln -s a /data/sym \
 && echo s > /data/suid && chmod 4755 /data/suid \
 && echo o > /data/owned && chown 1000:50 /data/owned \
 && echo u > "/data/{}"
COPY ctxfile noise /data/
CMD ["sh"]
"#,
        long_name()
    )
}

/// A fresh temp dir under cargo's test tmpdir (same filesystem as the stores).
fn tempdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("outputs-")
        .tempdir_in(base)
        .unwrap();
    support::user::share(dir.path());
    dir
}

/// A build context with the Dockerfile above.
fn context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile()).unwrap();
    std::fs::write(ctx.join("ctxfile"), "from the context\n").unwrap();
    std::fs::write(ctx.join("noise"), noise(300_000)).unwrap();
    ctx
}

/// Bytes no compressor can shrink, the same in every run (reproducibility tests).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A unique image name for this test run (docker, buildah and the registry are shared).
fn unique(what: &str) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        format!("{}-{}", std::process::id(), t.as_nanos() % 1_000_000)
    });
    format!("rbuild-test/outputs-{what}-{run}")
}

/// The shared build: one image, every output kind, two tags.
struct Built {
    store: PathBuf,
    out: PathBuf,
    tags: [String; 2],
    image_id: String,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        // A static is never dropped: a fixed directory, emptied by the next run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("outputs-shared");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        user::share(&dir);
        let ctx = context(&dir);
        let store = dir.join("store");
        let out = dir.join("out");
        let name = unique("shared");
        let tags = [format!("{name}:1"), format!("{name}:2")];
        let iid = dir.join("iid");
        run_ok(
            rbuild(&store)
                .args(["-t", &tags[0], "-t", &tags[1]])
                .arg("--iidfile")
                .arg(&iid)
                .args([
                    "-o",
                    &format!("type=docker,dest={}/d.tar", out.display()),
                    "-o",
                    &format!("type=oci,dest={}/gzip.tar", out.display()),
                    "-o",
                    &format!("type=oci,dest={}/zstd.tar,compression=zstd", out.display()),
                    "-o",
                    &format!(
                        "type=oci,dest={}/plain.tar,compression=uncompressed",
                        out.display()
                    ),
                    "-o",
                    &format!("type=oci,dest={}/layout,tar=false", out.display()),
                    "-o",
                    &format!("type=local,dest={}/local", out.display()),
                    "-o",
                    &format!("type=tar,dest={}/rootfs.tar", out.display()),
                ])
                .arg(&ctx),
        );
        let image_id = std::fs::read_to_string(&iid).unwrap().trim().to_string();
        Built {
            store,
            out,
            tags,
            image_id,
        }
    })
}

/// Every regular file of a tar, by path.
fn tar_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut archive = tar::Archive::new(f);
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.insert(name, bytes);
    }
    files
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every blob of an OCI layout (tar or directory) hashes to its name.
fn check_blob_digests(blobs: &BTreeMap<String, Vec<u8>>) {
    assert!(!blobs.is_empty(), "no blobs");
    for (name, bytes) in blobs {
        let hex = name.rsplit('/').next().unwrap();
        assert_eq!(
            sha256_hex(bytes),
            hex,
            "blob {name} does not match its digest"
        );
    }
}

fn blobs_of(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .filter(|(k, _)| k.starts_with("blobs/sha256/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn needs_skopeo() {
    require(
        Command::new("skopeo").arg("--version").output().is_ok(),
        "skopeo",
    )
}

/// `skopeo inspect --raw` of `image` (a transport:path reference): the manifest.
fn skopeo_manifest(image: &str) -> serde_json::Value {
    json(run_ok(Command::new("skopeo").args(["inspect", "--raw", image])).as_bytes())
}

/// The registry's manifest of busybox:latest, as pulled by every build here.
fn registry_busybox_manifest() -> serde_json::Value {
    registry_manifest("busybox", "latest")
}

/// `repo:tag`'s manifest in the run's registry.
fn registry_manifest(repo: &str, tag: &str) -> serde_json::Value {
    json(registry_manifest_response(repo, tag, "GET").as_bytes())
}

/// The digest the run's registry gives `repo:tag` (Docker-Content-Digest).
fn registry_digest(repo: &str, tag: &str) -> String {
    let head = registry_manifest_response(repo, tag, "HEAD");
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no digest for {repo}:{tag} in {head}"))
}

fn registry_manifest_response(repo: &str, tag: &str, method: &str) -> String {
    run_ok(Command::new("curl").args([
        "-fsS",
        if method == "HEAD" { "-I" } else { "-G" },
        "-H",
        "Accept: application/vnd.docker.distribution.manifest.v2+json",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{}/v2/{repo}/manifests/{tag}", registry_by_ip()),
    ]))
}

fn registry_blob(digest: &str) -> Vec<u8> {
    let out = run(Command::new("curl").args([
        "-fsS",
        &format!("http://{}/v2/busybox/blobs/{digest}", registry_by_ip()),
    ]));
    assert!(out.status.success(), "fetching {digest}");
    out.stdout
}

/// What the image's filesystem must look like, checked on a listing of any of its forms.
fn check_tree(l: &BTreeMap<String, FsEntry>, what: &str) {
    let get = |p: &str| {
        l.get(p)
            .unwrap_or_else(|| panic!("{what}: {p} missing; have {:?}", l.keys()))
    };
    assert!(
        !l.contains_key("etc/group"),
        "{what}: deleted /etc/group is back"
    );
    assert!(
        l.contains_key("etc/passwd"),
        "{what}: base file etc/passwd lost"
    );
    assert!(l.contains_key("bin/busybox"), "{what}: base layer missing");
    // The replaced directory shows only what the new one holds.
    assert!(get("opq").kind == 'd');
    assert!(l.contains_key("opq/new"), "{what}: opq/new missing");
    for gone in ["opq/old1", "opq/sub", "opq/sub/old2"] {
        assert!(
            !l.contains_key(gone),
            "{what}: {gone} survived the opaque dir"
        );
    }
    let a = get("data/a");
    let hard = get("data/hard");
    assert_eq!(
        (a.kind, a.size, &a.sha256),
        ('f', 6, &sha256_hex(b"hello\n"))
    );
    assert_eq!(hard.sha256, a.sha256, "{what}: hard link content");
    // Random bytes: gzip layers hold them as stored blocks (layer/compress.rs).
    let n = get("data/noise");
    assert_eq!(
        (n.kind, &n.sha256),
        ('f', &sha256_hex(&noise(300_000))),
        "{what}: data/noise"
    );
    let sym = get("data/sym");
    assert_eq!((sym.kind, sym.link.as_str()), ('l', "a"), "{what}: symlink");
    assert_eq!(get("data/suid").mode, 0o4755, "{what}: setuid bit");
    let owned = get("data/owned");
    assert_eq!((owned.uid, owned.gid), (1000, 50), "{what}: owner");
    assert_eq!(get(&format!("data/{}", long_name())).size, 2, "{what}");
    assert_eq!(get("data/ctxfile").size, 17, "{what}");
}

/// A listing of a directory tree through GNU tar (hard links as link entries).
fn dir_listing(dir: &Path) -> BTreeMap<String, FsEntry> {
    let out = run(Command::new("tar")
        // No `./` prefix: support::listing resolves hard links by the plain name.
        .args(["--numeric-owner", "--xattrs", "--transform=s,^\\./,,", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."]));
    assert!(out.status.success(), "tar of {}", dir.display());
    let mut l = listing(&out.stdout[..]);
    // The root itself (`./` became `.`): docker export has no entry for it either.
    l.remove(".");
    l
}

/// A listing of a directory rbuild wrote (`type=local`, `-o DIR`), with the image's ids (in
/// the rootless pass the files carry the mapped ones, docs/rootless.md).
fn written_listing(dir: &Path) -> BTreeMap<String, FsEntry> {
    user::image_ids(dir_listing(dir))
}

/// Two paths are the same inode (the hard link survived).
fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    (ma.dev(), ma.ino()) == (mb.dev(), mb.ino())
}

/// Tests that load images into docker and remove them run one at a time: docker 20.10 can
/// lose an image when the same image id is loaded and untagged concurrently.
fn docker_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn docker_rmi(images: &[&str]) {
    let _ = run(docker().arg("rmi").args(images));
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn docker_archive_loads_runs_and_reads_as_docker_and_oci() {
    let _docker = docker_lock();
    needs_root_docker_and_registry();
    needs_skopeo();
    let b = built();
    let archive = b.out.join("d.tar");
    let files = tar_files(&archive);
    check_blob_digests(&blobs_of(&files));

    // docker-save metadata for both tags.
    let manifest = json(&files["manifest.json"]);
    assert_eq!(manifest.as_array().unwrap().len(), 1);
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!([b.tags[0], b.tags[1]])
    );
    assert_eq!(
        manifest[0]["Config"],
        format!("blobs/sha256/{}", b.image_id.trim_start_matches("sha256:"))
    );
    let layers = manifest[0]["Layers"].as_array().unwrap();
    let top = layers.last().unwrap().as_str().unwrap().rsplit('/').next();
    let repos = json(&files["repositories"]);
    let (repo, _) = b.tags[0].rsplit_once(':').unwrap();
    assert_eq!(
        repos,
        serde_json::json!({ repo: { "1": top.unwrap(), "2": top.unwrap() } })
    );
    // Docker archive layers are uncompressed: their digests are the config's diff_ids.
    let config = json(&files[manifest[0]["Config"].as_str().unwrap()]);
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", l.as_str().unwrap().rsplit('/').next().unwrap()))
        .collect();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));

    // docker load + run: the filesystem as built.
    let loaded = run_ok(docker().args(["load", "-i"]).arg(&archive));
    for t in &b.tags {
        assert!(loaded.contains(t.as_str()), "docker load said: {loaded}");
    }
    let script = format!(
        "test ! -e /etc/group && test -f /etc/passwd && test -f /opq/new && test ! -e /opq/old1 \
         && test ! -e /opq/sub && test /data/a -ef /data/hard && test \"$(readlink /data/sym)\" = a \
         && test -u /data/suid && test \"$(stat -c %u:%g /data/owned)\" = 1000:50 \
         && test \"$(cat /data/{})\" = u && cat /data/ctxfile",
        long_name()
    );
    let said = run_ok(docker().args([
        "run",
        "--rm",
        "--network=none",
        &b.tags[1],
        "sh",
        "-c",
        &script,
    ]));
    assert_eq!(said, "from the context\n");
    let inspect = json(run_ok(docker().args(["image", "inspect", &b.tags[0]])).as_bytes());
    assert_eq!(inspect[0]["Id"], b.image_id.as_str());

    // skopeo: docker-archive, and oci-archive (two tags: one index entry each, picked by tag).
    let d = skopeo_manifest(&format!("docker-archive:{}", archive.display()));
    assert_eq!(d["layers"].as_array().unwrap().len(), layers.len());
    for tag in ["1", "2"] {
        let o = skopeo_manifest(&format!("oci-archive:{}:{tag}", archive.display()));
        assert_eq!(
            o["config"]["digest"],
            b.image_id.as_str(),
            "oci-archive tag {tag}"
        );
    }

    // buildah reads it as a docker archive.
    require(
        Command::new("buildah").arg("--version").output().is_ok(),
        "buildah",
    );
    let out = run_ok(
        Command::new("buildah")
            .args(["pull", "-q"])
            .arg(format!("docker-archive:{}", archive.display())),
    );
    let id = out.trim().lines().last().unwrap_or_default().to_string();
    assert_eq!(format!("sha256:{id}"), b.image_id, "buildah's image id");
    let _ = run(Command::new("buildah").args(["rmi", "-f", &id]));
    docker_rmi(&[&b.tags[0], &b.tags[1]]);
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn oci_archives_use_the_requested_codec_and_name_the_tag() {
    needs_root_docker_and_registry();
    needs_skopeo();
    let b = built();
    for (file, layer_type) in [
        ("gzip.tar", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd.tar", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("plain.tar", "application/vnd.oci.image.layer.v1.tar"),
    ] {
        let path = b.out.join(file);
        let files = tar_files(&path);
        check_blob_digests(&blobs_of(&files));
        assert!(!files.contains_key("manifest.json"), "{file}: OCI only");
        assert_eq!(json(&files["oci-layout"])["imageLayoutVersion"], "1.0.0");
        let index = json(&files["index.json"]);
        let refs: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(refs, ["1", "2"], "{file}: ref names");
        for tag in ["1", "2"] {
            let m = skopeo_manifest(&format!("oci-archive:{}:{tag}", path.display()));
            assert_eq!(m["config"]["digest"], b.image_id.as_str(), "{file}");
            let layers = m["layers"].as_array().unwrap();
            assert_eq!(layers.len(), 4, "{file}: base + 2 RUN + COPY");
            for l in layers {
                assert_eq!(l["mediaType"], layer_type, "{file}");
            }
        }
        // skopeo can also copy it out, decompressing every layer.
        let dest = tempdir();
        run_ok(Command::new("skopeo").args([
            "copy",
            "-q",
            &format!("oci-archive:{}:1", path.display()),
            &format!("dir:{}", dest.path().join("x").display()),
        ]));
    }
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn oci_layout_directory_unpacks_with_umoci() {
    needs_root_docker_and_registry();
    require(
        Command::new("umoci").arg("--version").output().is_ok(),
        "umoci",
    );
    let b = built();
    let layout = b.out.join("layout");
    let index = json(&std::fs::read(layout.join("index.json")).unwrap());
    let refs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(refs, ["1", "2"]);
    let work = tempdir();
    let bundle = work.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:1", layout.display()))
            .arg(&bundle),
    );
    let rootfs = bundle.join("rootfs");
    let l = dir_listing(&rootfs);
    check_tree(&l, "umoci bundle");
    assert!(same_inode(
        &rootfs.join("data/a"),
        &rootfs.join("data/hard")
    ));
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn rootfs_outputs_match_docker_export() {
    let _docker = docker_lock();
    needs_root_docker_and_registry();
    let b = built();
    let tar_listing = listing(std::fs::File::open(b.out.join("rootfs.tar")).unwrap());
    check_tree(&tar_listing, "type=tar");
    let local = b.out.join("local");
    let local_listing = written_listing(&local);
    check_tree(&local_listing, "type=local");
    assert!(same_inode(&local.join("data/a"), &local.join("data/hard")));

    // The same image through docker: docker load (by root: in the rootless pass rbuild's
    // `--load` could not reach docker, docs/rootless.md), then docker export of a container.
    let name = unique("export");
    let tag = format!("{name}:1");
    let dir = tempdir();
    let archive = dir.path().join("export.tar");
    run_ok(
        rbuild(&b.store)
            .args(["-t", &tag, "-o"])
            .arg(format!("type=docker,dest={}", archive.display()))
            .arg(b.out.parent().unwrap().join("ctx")),
    );
    run_ok(docker().arg("load").arg("-i").arg(&archive));
    let mut exported = docker_fs(&tag);
    // docker's init layer adds /etc/mtab -> /proc/mounts to every container that lacks it.
    if !tar_listing.contains_key("etc/mtab") {
        exported.remove("etc/mtab");
    }
    docker_rmi(&[&tag]);
    let diffs = diff_listings(&exported, &tar_listing);
    assert!(
        diffs.is_empty(),
        "type=tar vs docker export:\n{}",
        diffs.join("\n")
    );
    let diffs = diff_listings(&exported, &local_listing);
    assert!(
        diffs.is_empty(),
        "type=local vs docker export:\n{}",
        diffs.join("\n")
    );
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn output_shorthands_are_docker_archive_and_local_dir() {
    needs_root_docker_and_registry();
    let b = built();
    let dir = tempdir();
    let file = dir.path().join("short.tar");
    let tree = dir.path().join("tree");
    run_ok(
        rbuild(&b.store)
            .args(["-t", &b.tags[0], "-o"])
            .arg(&file)
            .arg("-o")
            .arg(&tree)
            .arg(b.out.parent().unwrap().join("ctx")),
    );
    let files = tar_files(&file);
    assert!(files.contains_key("manifest.json") && files.contains_key("index.json"));
    assert_eq!(json(&files["manifest.json"])[0]["RepoTags"][0], b.tags[0]);
    check_tree(&written_listing(&tree), "-o DIR");

    // `-o -`: the rootfs tar on stdout, and with -q nothing else there (regression: the
    // image id was printed after the tar). The layers are the cached ones of the shared
    // build, so the stream equals its type=tar file byte for byte.
    let out = run(rbuild(&b.store)
        .args(["-q", "-o", "-"])
        .arg(b.out.parent().unwrap().join("ctx")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == std::fs::read(b.out.join("rootfs.tar")).unwrap(),
        "`-q -o -` differs from the type=tar file ({} bytes)",
        out.stdout.len()
    );
}

/// Everything a build writes that must not depend on the store or the time.
struct Repro {
    image_id: String,
    docker: Vec<u8>,
    oci: Vec<u8>,
    /// The docker archive `rbuild save` writes afterwards.
    saved: Vec<u8>,
}

fn build_repro(ctx: &Path, tag: &str, how: &str) -> Repro {
    let dir = tempdir();
    let store = dir.path().join("store");
    let iid = dir.path().join("iid");
    let mut cmd = rbuild(&store);
    cmd.env_remove("SOURCE_DATE_EPOCH");
    match how {
        "env" => {
            cmd.env("SOURCE_DATE_EPOCH", "1700000000");
        }
        "arg" => {
            cmd.args(["--build-arg", "SOURCE_DATE_EPOCH=1700000000"]);
        }
        _ => {
            cmd.env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["--build-arg", "SOURCE_DATE_EPOCH=1700000000"]);
        }
    }
    run_ok(
        cmd.args(["-t", tag, "--iidfile"])
            .arg(&iid)
            .arg("-o")
            .arg(format!("type=docker,dest={}/d.tar", dir.path().display()))
            .arg("-o")
            .arg(format!("type=oci,dest={}/o.tar", dir.path().display()))
            .arg(ctx),
    );
    // Saved again by another process: the layers' tars are made again from the store and
    // checked against their diff_ids rather than taken on trust from the build.
    let saved = dir.path().join("saved.tar");
    run_ok(
        rbuild_cmd(&store)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["save", tag, "-o"])
            .arg(&saved),
    );
    Repro {
        image_id: std::fs::read_to_string(&iid).unwrap(),
        docker: std::fs::read(dir.path().join("d.tar")).unwrap(),
        oci: std::fs::read(dir.path().join("o.tar")).unwrap(),
        saved: std::fs::read(&saved).unwrap(),
    }
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn source_date_epoch_builds_are_byte_identical_and_keep_base_layers() {
    needs_root_docker_and_registry();
    let dir = tempdir();
    let ctx = context(dir.path());
    let tag = format!("{}:1", unique("repro"));
    let first = build_repro(&ctx, &tag, "env");
    // The files the context and RUN steps make get other mtimes in the second build.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(ctx.join("ctxfile"), "from the context\n").unwrap();
    let second = build_repro(&ctx, &tag, "env");
    assert_eq!(first.image_id, second.image_id);
    assert!(first.docker == second.docker, "docker archives differ");
    assert!(
        first.saved == first.docker,
        "`rbuild save` in another process wrote other bytes than the build's output"
    );
    assert!(first.oci == second.oci, "OCI archives differ");
    // As BuildKit: the build arg alone makes the image reproducible too.
    let by_arg = build_repro(&ctx, &tag, "arg");
    let by_arg_again = build_repro(&ctx, &tag, "arg");
    assert_eq!(by_arg.image_id, by_arg_again.image_id);
    assert!(
        by_arg.oci == by_arg_again.oci,
        "OCI archives differ (build arg)"
    );

    // `created` is the epoch; the base layer is the registry's, byte for byte.
    let tmp = tempdir();
    let oci = tmp.path().join("o.tar");
    std::fs::write(&oci, &first.oci).unwrap();
    let files = tar_files(&oci);
    let config = json(
        &files[&format!(
            "blobs/sha256/{}",
            first.image_id.trim().trim_start_matches("sha256:")
        )],
    );
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    let index = json(&files["index.json"]);
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = json(&files[&format!("blobs/sha256/{}", &mdigest[7..])]);
    let base = registry_busybox_manifest();
    assert_eq!(
        manifest["layers"][0]["digest"], base["layers"][0]["digest"],
        "the base layer was recompressed"
    );
    assert_eq!(manifest["layers"][0]["size"], base["layers"][0]["size"]);
    let base_config = json(&registry_blob(base["config"]["digest"].as_str().unwrap()));
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        base_config["rootfs"]["diff_ids"][0]
    );
    let docker_path = tmp.path().join("d.tar");
    std::fs::write(&docker_path, &first.docker).unwrap();
    let dfiles = tar_files(&docker_path);
    let dmanifest = json(&dfiles["manifest.json"]);
    assert_eq!(
        format!(
            "sha256:{}",
            dmanifest[0]["Layers"][0]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
        ),
        base_config["rootfs"]["diff_ids"][0].as_str().unwrap()
    );
}

/// Regression (issue 15): `--build-arg SOURCE_DATE_EPOCH=N` set the image's timestamps, but
/// the archive's metadata entries took their mtime from the environment variable alone.
#[test]
#[ignore = "needs root"]
fn source_date_epoch_build_arg_alone_dates_archive_entries_and_history() {
    needs_root();
    const N: u64 = 1_600_000_000;
    let dir = tempdir();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY fresh /fresh\nENV A=1\nCOPY fresh /again/\n",
    )
    .unwrap();
    // Written now, so newer than N: the layers clamp its mtime to N.
    std::fs::write(ctx.join("fresh"), "new\n").unwrap();
    let archive = dir.path().join("d.tar");
    run_ok(
        rbuild(&dir.path().join("store"))
            .env_remove("SOURCE_DATE_EPOCH")
            .args(["--build-arg", &format!("SOURCE_DATE_EPOCH={N}"), "-o"])
            .arg(format!("type=docker,dest={}", archive.display()))
            .arg(&ctx),
    );

    let bytes = std::fs::read(&archive).unwrap();
    let mut outer = tar::Archive::new(&bytes[..]);
    let mut files = BTreeMap::new();
    for entry in outer.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        assert_eq!(entry.header().mtime().unwrap(), N, "archive entry {name}");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let manifest = json(&files["manifest.json"]);
    let config = json(&files[manifest[0]["Config"].as_str().unwrap()]);
    assert_eq!(config["created"], "2020-09-13T12:26:40Z");
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    for h in history {
        assert_eq!(h["created"], "2020-09-13T12:26:40Z", "{h}");
    }
    for layer in manifest[0]["Layers"].as_array().unwrap() {
        let layer = &files[layer.as_str().unwrap()];
        for entry in tar::Archive::new(&layer[..]).entries().unwrap() {
            let entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            assert_eq!(entry.header().mtime().unwrap(), N, "layer entry {name}");
        }
    }
}

/// Nothing but `keep` in `dir`.
fn assert_only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, keep, "in {}", dir.display());
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn failed_builds_and_failed_writes_leave_nothing_behind() {
    needs_root_docker_and_registry();
    let dir = tempdir();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {REGISTRY}/busybox\nRUN echo x > /x\nRUN exit 1\n"),
    )
    .unwrap();
    let store = dir.path().join("store");
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let out = run(rbuild(&store)
        .arg("-o")
        .arg(format!("type=docker,dest={}/d.tar", dest.display()))
        .arg("-o")
        .arg(format!("type=local,dest={}/local", dest.display()))
        .arg(&ctx));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exit code: 1"));
    assert_only(&dest, &[]);

    // A destination too small for the image: ENOSPC halfway through the write.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {REGISTRY}/busybox\nRUN echo x > /x\n"),
    )
    .unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&small),
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    for spec in [
        format!("type=docker,dest={}/d.tar", small.display()),
        format!("type=oci,dest={}/o.tar", small.display()),
        format!("type=tar,dest={}/r.tar", small.display()),
        format!("type=oci,dest={}/layout,tar=false", small.display()),
        format!("type=local,dest={}/local", small.display()),
    ] {
        let out = run(rbuild(&store).arg("-o").arg(&spec).arg(&ctx));
        assert!(!out.status.success(), "{spec} fit in 256k?");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No space left"), "{spec}: {err}");
        // Regression (issue 14): the message named the staging file or `<archive>`.
        let dest = spec
            .split_once("dest=")
            .unwrap()
            .1
            .split(',')
            .next()
            .unwrap();
        assert!(err.contains(&format!("`{dest}")), "{spec}: {err}");
        assert!(
            !err.contains(".rbuild-out") && !err.contains("`<"),
            "{spec}: {err}"
        );
        assert_only(&small, &[]);
    }
    // A read-only destination directory: the message names the destination given.
    run_ok(Command::new("mount").args(["-o", "remount,ro"]).arg(&small));
    for (kind, dest) in [
        ("docker", "d.tar"),
        ("oci", "o.tar"),
        ("tar", "r.tar"),
        ("oci,tar=false", "layout"),
        ("local", "local"),
    ] {
        let dest = small.join(dest);
        let out = run(rbuild(&store)
            .arg("-o")
            .arg(format!("type={kind},dest={}", dest.display()))
            .arg(&ctx));
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.lines().last().unwrap(),
            format!(
                "error: writing `{}`: Read-only file system (os error 30)",
                dest.display()
            ),
            "{err}"
        );
        assert_only(&small, &[]);
    }
    // Where no file can be made at all.
    let out = run(rbuild(&store)
        .args(["-o", "type=docker,dest=/proc/x.tar"])
        .arg(&ctx));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: writing `/proc/x.tar`: "), "{err}");
    assert!(!last.contains(".rbuild-out"), "{err}");
}

/// Regression (issue 14): a required secret that was not given carries BuildKit's words.
#[test]
#[ignore = "needs root, docker and a registry"]
fn missing_required_secret_says_not_found_as_buildkit() {
    needs_root_docker_and_registry();
    let dir = tempdir();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {REGISTRY}/busybox\nRUN --mount=type=secret,id=X,required cat /run/secrets/X\n"
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let out = run(rbuild(&store).arg(&ctx));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secret X: not found"), "{err}");
    let unset = "RBUILD_TEST_SURELY_UNSET_VARIABLE";
    let out = run(rbuild(&store)
        .env_remove(unset)
        .args(["--secret", &format!("id=X,env={unset}")])
        .arg(&ctx));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secret X: not found"), "{err}");
    assert!(err.contains(unset), "{err}");
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn store_commands_list_inspect_save_remove_and_prune() {
    needs_root_docker_and_registry();
    needs_skopeo();
    let dir = tempdir();
    let ctx = context(dir.path());
    let store = dir.path().join("store");
    let name = unique("store");
    let tag = format!("{name}:1");
    let build = |extra: &[&str]| {
        let out = run(rbuild(&store).args(["-t", &tag]).args(extra).arg(&ctx));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    build(&[]);

    let images = run_ok(rbuild_cmd(&store).arg("images"));
    let line = images
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("no {name} in:\n{images}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "1");
    assert!(images.contains(&format!("{REGISTRY}/busybox")), "{images}");

    let inspect = json(run_ok(rbuild_cmd(&store).args(["inspect", &tag])).as_bytes());
    let id = inspect["Id"].as_str().unwrap().to_string();
    assert_eq!(inspect["Manifest"]["layers"].as_array().unwrap().len(), 4);
    assert_eq!(
        inspect["Config"]["config"]["Cmd"],
        serde_json::json!(["sh"])
    );
    assert_eq!(inspect["RepoTags"], serde_json::json!([tag]));

    for format in ["oci", "docker"] {
        let file = dir.path().join(format!("saved-{format}.tar"));
        run_ok(
            rbuild_cmd(&store)
                .args(["save", &tag, "--format", format, "-o"])
                .arg(&file),
        );
        // One tag: skopeo finds the single image without being told which.
        let m = skopeo_manifest(&format!("oci-archive:{}", file.display()));
        assert_eq!(m["config"]["digest"], id.as_str(), "save --format {format}");
        if format == "docker" {
            let m = skopeo_manifest(&format!("docker-archive:{}", file.display()));
            assert_eq!(m["config"]["digest"], id.as_str());
            let files = tar_files(&file);
            assert_eq!(
                json(&files["manifest.json"])[0]["RepoTags"],
                serde_json::json!([tag])
            );
        }
    }
    // By image id: the archive names the image by its tags.
    let file = dir.path().join("by-id.tar");
    run_ok(rbuild_cmd(&store).args(["save", &id, "-o"]).arg(&file));
    assert_eq!(
        json(&tar_files(&file)["manifest.json"])[0]["RepoTags"],
        serde_json::json!([tag])
    );

    // prune keeps what a tag uses (and the cache): a rebuild is all cached.
    run_ok(rbuild_cmd(&store).arg("prune"));
    run_ok(rbuild_cmd(&store).args(["inspect", &tag]));
    let again = build(&[]);
    assert!(again.contains("3 steps cached, 0 run"), "{again}");
    // rmi + prune: the image's own layers go, the base stays.
    let rmi = run_ok(rbuild_cmd(&store).args(["rmi", &tag]));
    assert!(rmi.contains(&tag), "{rmi}");
    assert!(!run_ok(rbuild_cmd(&store).arg("images")).contains(&name));
    assert!(!run(rbuild_cmd(&store).args(["inspect", &tag]))
        .status
        .success());
    // Removing it again is an error naming it, as with docker rmi.
    let again_rmi = run(rbuild_cmd(&store).args(["rmi", &tag]));
    assert_eq!(again_rmi.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again_rmi.stderr).contains(&format!("no such image: {tag}")));
    // prune --all drops the build cache: the rebuild runs every step again.
    run_ok(rbuild_cmd(&store).args(["prune", "--all"]));
    let rebuilt = build(&[]);
    assert!(rebuilt.contains("0 steps cached, 3 run"), "{rebuilt}");
    assert_eq!(
        json(run_ok(rbuild_cmd(&store).args(["inspect", &tag])).as_bytes())["Manifest"]["layers"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

/// A busybox rootfs like scripts/lib.sh's make_busybox_rootfs, as a tar.
fn busybox_rootfs_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "root", "home/user"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    run_ok(
        Command::new("chroot")
            .arg(&root)
            .args(["/bin/busybox", "--install", "-s", "/bin"]),
    );
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nstaff:x:50:user\n",
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("1777").arg(root.join("tmp")));
    run_ok(
        Command::new("chown")
            .arg("1000:1000")
            .arg(root.join("home/user")),
    );
    let tar = dir.join("rootfs.tar");
    run_ok(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    tar
}

/// A command cut off from every network (its own net namespace: even loopback is down), so
/// a build that tried the registry would fail.
fn offline(store: &Path) -> Command {
    user::wrapped(Command::new("unshare").arg("-n"), &rbuild(store))
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn imported_rootfs_is_a_base_for_offline_builds() {
    let _docker = docker_lock();
    needs_root_docker_and_registry();
    require(Path::new("/bin/busybox").exists(), "busybox-static");
    let dir = tempdir();
    let store = dir.path().join("store");
    let tar = busybox_rootfs_tar(dir.path());
    let base = format!("{}:base", unique("import"));
    run_ok(rbuild_cmd(&store).arg("import").arg(&tar).arg(&base).args([
        "-c",
        r#"CMD ["sh"]"#,
        "-c",
        "ENV PATH=/bin",
    ]));
    assert!(run_ok(rbuild_cmd(&store).arg("images")).contains(base.rsplit_once(':').unwrap().0));
    let inspect = json(run_ok(rbuild_cmd(&store).args(["inspect", &base])).as_bytes());
    assert_eq!(
        inspect["Config"]["config"]["Cmd"],
        serde_json::json!(["sh"])
    );

    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {base}\nRUN rm /etc/group && echo hi > /hi\nUSER user\nRUN id -u > /tmp/uid\n"
        ),
    )
    .unwrap();
    let tag = format!("{}:1", unique("import"));
    let out_tar = dir.path().join("img.tar");
    run_ok(
        offline(&store)
            .args(["-t", &tag, "-o"])
            .arg(format!("type=docker,dest={}", out_tar.display()))
            .arg(&ctx),
    );
    run_ok(docker().args(["load", "-q", "-i"]).arg(&out_tar));
    let said = run_ok(docker().args([
        "run",
        "--rm",
        "--network=none",
        &tag,
        "sh",
        "-c",
        "test ! -e /etc/group && cat /hi /tmp/uid && echo $PATH",
    ]));
    docker_rmi(&[&tag]);
    assert_eq!(said, "hi\n1000\n/bin\n");
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn push_to_registry_then_docker_pull_and_run() {
    let _docker = docker_lock();
    needs_root_docker_and_registry();
    let dir = tempdir();
    let ctx = context(dir.path());
    let store = dir.path().join("store");
    // The run's registry by IP: to rbuild another registry than the base's `localhost:PORT`.
    let repo = format!("{}/{}", registry_by_ip(), unique("push"));
    let tag = format!("{repo}:1");
    let other = format!("{repo}:2");
    let _pulled = DockerImages(vec![tag.clone(), other.clone()]);
    let built = run(rbuild(&store).args(["--push", "-t", &tag]).arg(&ctx));
    assert!(built.status.success(), "{built:?}");
    let _pushed = RegistryImage::pushed(&tag);
    // Regression (issue 14): the push was `#1000000`; it is the step after the build's.
    let progress = String::from_utf8_lossy(&built.stderr);
    let (build, push) = progress
        .split_once(&format!("pushing {tag}\n"))
        .expect(&progress);
    let ids: Vec<usize> = build
        .lines()
        .filter_map(|l| l.strip_prefix('#')?.split(' ').next()?.parse().ok())
        .collect();
    let push_id: usize = ids.last().copied().unwrap();
    assert_eq!(
        push_id,
        ids[..ids.len() - 1].iter().max().unwrap() + 1,
        "{progress}"
    );
    assert!(push.contains(&format!("#{push_id} DONE")), "{progress}");
    // rbuild push of the stored image under another name.
    let pushed = run_ok(rbuild_cmd(&store).args(["push", &tag, &other]));
    let _pushed_other = RegistryImage::pushed(&other);
    // On the registry the base came from, its layer is mounted from `busybox`, not uploaded.
    let same_registry = format!("{REGISTRY}/{}:1", unique("mount"));
    let mounted = run(rbuild_cmd(&store).args(["push", &tag, &same_registry]));
    assert!(mounted.status.success());
    let _mounted = RegistryImage::pushed(&same_registry);
    let progress = String::from_utf8_lossy(&mounted.stderr);
    assert!(progress.contains("(mount from busybox)"), "{progress}");
    assert!(
        pushed.trim().starts_with(&format!("{repo}@sha256:")),
        "{pushed}"
    );
    for t in [&tag, &other] {
        run_ok(docker().args(["pull", "-q", t]));
        let said = run_ok(docker().args([
            "run",
            "--rm",
            "--network=none",
            t,
            "sh",
            "-c",
            "test ! -e /etc/group && test ! -e /opq/old1 && test -u /data/suid && cat /data/ctxfile",
        ]));
        assert_eq!(said, "from the context\n", "{t}");
    }
    // The base layer goes out as the registry's own blob, not recompressed.
    let path = repo.split_once('/').unwrap().1;
    let pushed_manifest = registry_manifest(path, "1");
    assert_eq!(
        pushed_manifest["layers"][0]["digest"],
        registry_busybox_manifest()["layers"][0]["digest"]
    );
    assert_eq!(
        pushed_manifest["config"]["digest"],
        json(run_ok(rbuild_cmd(&store).args(["inspect", &tag])).as_bytes())["Id"]
    );
    // Both tags name the same manifest; docker sees the image id rbuild built.
    let id = json(run_ok(rbuild_cmd(&store).args(["inspect", &tag])).as_bytes())["Id"].clone();
    for t in [&tag, &other] {
        let v = json(run_ok(docker().args(["image", "inspect", t])).as_bytes());
        assert_eq!(v[0]["Id"], id, "{t}");
    }
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn pulled_image_is_a_base_for_offline_builds() {
    needs_root_docker_and_registry();
    let dir = tempdir();
    let store = dir.path().join("store");
    let busybox = format!("{}/busybox", registry_by_ip());
    let digest = run_ok(rbuild_cmd(&store).args(["pull", &busybox]));
    let base = registry_busybox_manifest();
    let images = run_ok(rbuild_cmd(&store).arg("images"));
    assert!(images.contains(&busybox), "{images}");
    assert!(digest.trim().starts_with("sha256:"), "{digest}");
    let inspect =
        json(run_ok(rbuild_cmd(&store).args(["inspect", &format!("{busybox}:latest")])).as_bytes());
    assert_eq!(
        inspect["Manifest"]["layers"][0]["digest"],
        base["layers"][0]["digest"]
    );

    // Pushed on unchanged, the pulled image keeps its manifest digest and image id
    // (regression: push re-serialized the config, so the id changed).
    let copy = unique("pulled-copy");
    let copy_ref = format!("{}/{copy}:1", registry_by_ip());
    let pushed = run_ok(rbuild_cmd(&store).args(["push", &busybox, &copy_ref]));
    let _pushed = RegistryImage::pushed(&copy_ref);
    let want = registry_digest("busybox", "latest");
    assert_eq!(pushed.trim(), format!("{}/{copy}@{want}", registry_by_ip()));
    assert_eq!(registry_digest(&copy, "1"), want);

    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {busybox}\nRUN echo offline > /o\n"),
    )
    .unwrap();
    let local = dir.path().join("local");
    run_ok(
        offline(&store)
            .arg("-o")
            .arg(format!("type=local,dest={}", local.display()))
            .arg(&ctx),
    );
    assert_eq!(
        std::fs::read_to_string(local.join("o")).unwrap(),
        "offline\n"
    );
    assert!(local.join("bin/busybox").is_file());
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn stdout_closed_early_is_not_a_panic() {
    needs_root_docker_and_registry();
    let b = built();
    // Regression: `rbuild inspect X | head -1` panicked in println! on EPIPE.
    for args in [vec!["inspect", b.tags[0].as_str()], vec!["images"]] {
        let mut child = rbuild_cmd(&b.store)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {err}");
    }
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn docker_archive_names_tags_of_several_repositories() {
    let _docker = docker_lock();
    needs_root_docker_and_registry();
    needs_skopeo();
    let b = built();
    let name = unique("repos");
    let tags = [
        name.clone(),
        format!("docker.io/library/{}:x", name.replace('/', "-")),
        format!("{REGISTRY}/{name}:y"),
    ];
    let want_repo_tags = [
        format!("{name}:latest"),
        format!("{}:x", name.replace('/', "-")),
        format!("{REGISTRY}/{name}:y"),
    ];
    let dir = tempdir();
    let file = dir.path().join("d.tar");
    let mut cmd = rbuild(&b.store);
    for t in &tags {
        cmd.args(["-t", t]);
    }
    run_ok(
        cmd.arg("-o")
            .arg(format!("type=docker,dest={}", file.display()))
            .arg(b.out.parent().unwrap().join("ctx")),
    );
    let files = tar_files(&file);
    let manifest = json(&files["manifest.json"]);
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(want_repo_tags));
    let top = manifest[0]["Layers"][3]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let mut want_repos = serde_json::Map::new();
    for t in &want_repo_tags {
        let (repo, tag) = t.rsplit_once(':').unwrap();
        want_repos.insert(repo.to_string(), serde_json::json!({ tag: top }));
    }
    assert_eq!(
        json(&files["repositories"]),
        serde_json::Value::Object(want_repos)
    );
    for tag in ["latest", "x", "y"] {
        let m = skopeo_manifest(&format!("oci-archive:{}:{tag}", file.display()));
        assert_eq!(m["layers"].as_array().unwrap().len(), 4);
    }
    let loaded = run_ok(docker().args(["load", "-i"]).arg(&file));
    for t in &want_repo_tags {
        assert!(loaded.contains(&format!("Loaded image: {t}\n")), "{loaded}");
    }
    docker_rmi(
        &want_repo_tags
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
}

/// podman (containers/image) loads the docker archive with the same image id and config.
#[test]
#[ignore = "needs root, docker and a registry"]
fn podman_loads_the_docker_archive() {
    let podman = std::process::Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    needs_root_docker_and_registry();
    require(podman, "podman (apt-get install podman)");
    let b = built();
    let archive = b.out.join("d.tar");
    let loaded = run_ok(
        Command::new("podman")
            .args(["load", "-q", "-i"])
            .arg(&archive),
    );
    assert!(
        loaded.contains(b.tags[0].as_str()),
        "podman load said: {loaded}"
    );
    let inspect =
        json(run_ok(Command::new("podman").args(["image", "inspect", &b.tags[0]])).as_bytes());
    assert_eq!(
        format!("sha256:{}", inspect[0]["Id"].as_str().unwrap()),
        b.image_id
    );
    let docker_config = json(&tar_files(&archive)["manifest.json"]);
    assert_eq!(docker_config[0]["RepoTags"].as_array().unwrap().len(), 2);
    assert_eq!(inspect[0]["Config"]["Cmd"], serde_json::json!(["sh"]));
    let _ = run(Command::new("podman").args(["rmi", "-f", &b.tags[0], &b.tags[1]]));
}

/// Regression (issue 14, then issue 17): as another user than root, rbuild got as far as
/// creating a store under $HOME and failed with `changing owner ... Operation not
/// permitted`, never saying why. Now it runs rootless (docs/rootless.md): nobody, who has no
/// /etc/subuid line, gets single-id mode with one warning naming the line, and a store under
/// $HOME (or --root); `--help` and `--version` create nothing.
#[test]
#[ignore = "needs root"]
fn non_root_runs_rootless_with_its_store_under_home() {
    needs_root();
    let dir = tempdir();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in [dir.path(), home.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let as_nobody = |args: &[&str]| {
        let out = run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(rbuild_bin())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &home));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [["--help"], ["--version"]] {
        let (code, stdout, stderr) = as_nobody(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stdout.contains("rbuild"), "{args:?}: {stdout}");
    }
    assert_eq!(
        std::fs::read_dir(&home).unwrap().count(),
        0,
        "something made in $HOME"
    );
    let (code, stdout, _) = as_nobody(&["info"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("mode: rootless, single id"), "{stdout}");
    let store = dir.path().join("store");
    let root_arg = format!("--root={}", store.display());
    for (args, made) in [
        (vec!["images"], home.join(".local/share/rbuild")),
        (vec![root_arg.as_str(), "images"], store.clone()),
    ] {
        let (code, stdout, stderr) = as_nobody(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stdout.starts_with("REPOSITORY"), "{args:?}: {stdout}");
        assert_eq!(
            stderr
                .matches("warning: rootless without subordinate ids")
                .count(),
            1,
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("`nobody:"), "{args:?}: {stderr}");
        assert!(
            made.join("index.json").exists(),
            "{args:?}: no store at {made:?}"
        );
    }
}
