//! `--provenance` / `--attest type=provenance` (issue 21): the SLSA provenance attestation
//! BuildKit attaches, checked in real outputs: an OCI layout and a push to the run's
//! registry (read back by skopeo), built from a base image of that registry, an `ADD` of a
//! git repository a `git daemon` of the test serves, an `ADD` of a URL and a secret. docker
//! 20.10 has no buildx and so no `--provenance`: the checks follow BuildKit's code
//! (exporter/containerimage/writer.go, solver/llbsolver/provenance).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::git::{git, repo, Daemon};
use support::*;

const BASE: InRegistry = InRegistry("busybox");
const MULTI: InRegistry = InRegistry("busybox-multi");
const SECRET: &str = "pr0venance-must-not-see-this";

fn tempdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::Builder::new()
        .prefix("provenance-")
        .tempdir_in(base)
        .unwrap()
}

/// The host's platform as a purl qualifier value (`linux%2Famd64`), as rbuild names it.
fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "linux%2Farm64%2Fv8",
        _ => "linux%2Famd64",
    }
}

fn json_file(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A blob of the OCI layout at `dir` by its digest.
fn blob(dir: &Path, digest: &Value) -> Value {
    let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
    json_file(&dir.join("blobs/sha256").join(hex))
}

/// The index an OCI layout's index.json points at, and that index's entries.
fn layout_index(dir: &Path) -> Vec<Value> {
    let top = json_file(&dir.join("index.json"));
    let entry = &top["manifests"][0];
    assert_eq!(
        entry["mediaType"], "application/vnd.oci.image.index.v1+json",
        "provenance makes the output an index: {top}"
    );
    blob(dir, &entry["digest"])["manifests"]
        .as_array()
        .unwrap()
        .clone()
}

/// The statement of the attestation manifest `att` (an index entry) in the layout at `dir`,
/// after checking the manifest's shape as BuildKit writes it and that it is about `image`
/// (the index entry of the image manifest): reference annotation and subject digest.
fn statement(dir: &Path, image: &Value, att: &Value, predicate_type: &str) -> Value {
    assert_eq!(
        att["annotations"]["vnd.docker.reference.digest"],
        image["digest"]
    );
    assert_eq!(att["platform"]["os"], "unknown", "{att}");
    assert_eq!(att["platform"]["architecture"], "unknown", "{att}");
    assert_eq!(
        att["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    let manifest = blob(dir, &att["digest"]);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.in-toto+json");
    assert_eq!(
        layers[0]["annotations"]["in-toto.io/predicate-type"],
        predicate_type
    );
    let config = blob(dir, &manifest["config"]["digest"]);
    assert_eq!(config["os"], "unknown");
    assert_eq!(config["rootfs"]["diff_ids"][0], layers[0]["digest"]);
    let s = blob(dir, &layers[0]["digest"]);
    assert_eq!(s["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(s["predicateType"], predicate_type);
    let image_hex = image["digest"].as_str().unwrap();
    assert_eq!(
        s["subject"][0]["digest"]["sha256"],
        image_hex.trim_start_matches("sha256:")
    );
    s
}

/// The digest of the manifest `reference` names in the registry (`skopeo inspect --raw`).
fn registry_digest(reference: &str) -> String {
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo");
    assert!(raw.status.success(), "skopeo inspect {reference}");
    sha256_hex(&raw.stdout)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// The git repository the Dockerfile ADDs, served by a daemon of the test: its URL and the
/// commit `main` names.
fn served_repo(dir: &Path) -> (Daemon, String, String) {
    let base = dir.join("git");
    let work = repo(&base, "src", |w| {
        std::fs::write(w.join("hello.txt"), "hello\n").unwrap();
        git(w, &["add", "."]);
        git(w, &["commit", "-q", "-m", "one"]);
    });
    let commit = git(&work, &["rev-parse", "HEAD"]);
    let daemon = Daemon::start(&base);
    let url = format!("{}#main", daemon.url("src.git"));
    (daemon, url, commit)
}

struct Build {
    ctx: PathBuf,
    store: PathBuf,
    secret: PathBuf,
}

impl Build {
    fn new(dir: &Path, dockerfile: &str) -> Build {
        let ctx = dir.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        Build {
            ctx,
            store: dir.join("store"),
            secret,
        }
    }

    /// rbuild with the secret, `args`, then the context.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = rbuild(&self.store);
        cmd.arg("--secret")
            .arg(format!("id=tok,src={}", self.secret.display()))
            .args(args)
            .arg(&self.ctx);
        cmd
    }

    /// [`Build::cmd`], which must succeed; its stdout.
    fn run(&self, args: &[&str]) -> String {
        run_ok(&mut self.cmd(args))
    }
}

#[test]
#[ignore = "needs root and a registry"]
fn attestation_in_oci_layout_and_push_names_image_base_git_url_and_no_secret() {
    needs_root_and_registry();
    let dir = tempdir();
    let (_daemon, git_url, commit) = served_repo(dir.path());
    // The registry answers `/v2/` with a small JSON body: a URL source with known bytes.
    let http_url = format!("http://{}/v2/", registry());
    let http_body = run_ok(Command::new("curl").args(["-fsS", &http_url]));
    let b = Build::new(
        dir.path(),
        &format!(
            "FROM {BASE}\nARG HINT=none\nADD {git_url} /src\nADD {http_url} /v2.json\n\
             RUN --mount=type=secret,id=tok,required=true test -s /run/secrets/tok && echo $HINT > /hint\n"
        ),
    );
    let plain = dir.path().join("plain");
    let attested = dir.path().join("attested");
    let oci = |p: &Path| format!("type=oci,dest={},tar=false", p.display());
    b.run(&["--build-arg", "HINT=abc", "-o", &oci(&plain)]);
    let name = format!(
        "{}/rbuild-test/provenance-{}:1",
        registry(),
        std::process::id()
    );
    b.run(&[
        "--build-arg",
        "HINT=abc",
        "--provenance",
        "mode=max",
        "-t",
        &name,
        "--push",
        "-o",
        &oci(&attested),
    ]);
    let _pushed = RegistryImage::pushed_index(&name);

    // The image manifest is the one a build without provenance writes (as BuildKit: the
    // attestation is beside the image, not in it).
    let plain_top = json_file(&plain.join("index.json"));
    let entries = layout_index(&attested);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let image = &entries[0];
    assert_eq!(image["digest"], plain_top["manifests"][0]["digest"]);
    assert_eq!(image["platform"]["os"], "linux");
    let s = statement(
        &attested,
        image,
        &entries[1],
        "https://slsa.dev/provenance/v1",
    );
    let subject_name = s["subject"][0]["name"].as_str().unwrap();
    assert!(
        subject_name.starts_with(&format!(
            "pkg:docker/{}/rbuild-test/provenance-",
            registry()
        )) && subject_name.ends_with(&format!("@1?platform={}", host_platform())),
        "{subject_name}"
    );
    let p = &s["predicate"];
    let deps = p["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let base_digest = registry_digest(&BASE.to_string());
    assert_eq!(
        deps[0]["uri"],
        format!("pkg:docker/{BASE}@latest?platform={}", host_platform())
    );
    assert_eq!(deps[0]["digest"]["sha256"], base_digest.as_str());
    assert_eq!(deps[1]["uri"], git_url.as_str());
    assert_eq!(deps[1]["digest"]["sha1"], commit.as_str());
    assert_eq!(deps[2]["uri"], http_url.as_str());
    assert_eq!(
        deps[2]["digest"]["sha256"],
        sha256_hex(http_body.as_bytes()).as_str()
    );
    assert_eq!(deps.len(), 3, "{deps:?}");
    // mode=max: build args, the secret's id, the Dockerfile, layers per step.
    let request = &p["buildDefinition"]["externalParameters"]["request"];
    assert_eq!(request["frontend"], "dockerfile.v0");
    assert_eq!(request["args"]["build-arg:HINT"], "abc");
    assert_eq!(request["secrets"], serde_json::json!([{"id": "tok"}]));
    assert_eq!(
        p["buildDefinition"]["externalParameters"]["configSource"]["path"],
        "Dockerfile"
    );
    let metadata = &p["runDetails"]["metadata"];
    let layers = metadata["buildkit_metadata"]["layers"].as_object().unwrap();
    assert_eq!(
        layers.len(),
        3,
        "one per step that made a layer: {layers:?}"
    );
    assert!(metadata["buildkit_metadata"]["source"]["infos"][0]["data"].is_string());
    assert!(metadata["startedOn"].is_string() && metadata["finishedOn"].is_string());
    assert!(
        files_containing(&attested, SECRET.as_bytes()).is_empty(),
        "the secret's value reached the output"
    );

    // The registry and skopeo take the pushed index; its attestation names the pushed image.
    let copy = dir.path().join("copy");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{name}"),
        &format!("oci:{}:1", copy.display()),
    ]));
    let pushed = layout_index(&copy);
    assert_eq!(pushed.len(), 2, "{pushed:?}");
    statement(
        &copy,
        &pushed[0],
        &pushed[1],
        "https://slsa.dev/provenance/v1",
    );
    assert!(files_containing(&copy, SECRET.as_bytes()).is_empty());

    // mode=min, SLSA v0.2: materials stay; build args, secret ids and layers go.
    let min = dir.path().join("min.tar");
    let metadata_file = dir.path().join("metadata.json");
    b.run(&[
        "--build-arg",
        "HINT=abc",
        "--attest",
        "type=provenance,mode=min,version=v0.2",
        "--metadata-file",
        metadata_file.to_str().unwrap(),
        "-o",
        &format!("type=oci,dest={}", min.display()),
    ]);
    // buildx's metadata key carries the predicate too.
    let meta = json_file(&metadata_file);
    let predicate = &meta["buildx.build.provenance"];
    assert_eq!(
        predicate["buildType"], "https://mobyproject.org/buildkit@v1",
        "{meta}"
    );
    assert_eq!(predicate["materials"][1]["digest"]["sha1"], commit.as_str());
    let unpacked = dir.path().join("min");
    std::fs::create_dir(&unpacked).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&min)
            .arg("-C")
            .arg(&unpacked),
    );
    let entries = layout_index(&unpacked);
    let v02 = "https://slsa.dev/provenance/v0.2";
    let s = statement(&unpacked, &entries[0], &entries[1], v02);
    let p = &s["predicate"];
    assert_eq!(p["materials"].as_array().unwrap().len(), 3, "{p}");
    assert_eq!(p["materials"][1]["digest"]["sha1"], commit.as_str());
    let params = &p["invocation"]["parameters"];
    assert!(params.get("secrets").is_none(), "{params}");
    assert!(params.get("args").is_none(), "{params}");
    assert_eq!(p["metadata"]["completeness"]["parameters"], false);
    assert!(
        p["metadata"]["https://mobyproject.org/buildkit@v1#metadata"]
            .get("layers")
            .is_none()
    );

    // A docker archive (`docker load`) holds the image alone, as BuildKit's docker exporter.
    let archive = dir.path().join("image.tar");
    let docker_dest = format!("type=docker,dest={}", archive.display());
    let o = run(&mut b.cmd(&["--provenance", "true", "-o", &docker_dest]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("only OCI outputs (-o type=oci), local outputs and --push carry"),
        "{err}"
    );
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&archive));
    let index = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("index.json"),
    );
    let index: Value = serde_json::from_str(&index).unwrap();
    assert_eq!(
        index["manifests"][0]["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{index}"
    );
    let save = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("manifest.json"),
    );
    let save: Value = serde_json::from_str(&save).unwrap();
    let layers = save[0]["Layers"].as_array().unwrap().len();
    let blobs = listing
        .lines()
        .filter(|l| l.starts_with("blobs/sha256/") && l.len() > 13);
    assert_eq!(
        blobs.count(),
        layers + 2,
        "layers, config and manifest only:\n{listing}"
    );
}

#[test]
#[ignore = "needs root and a registry"]
fn each_platform_gets_its_own_attestation() {
    needs_root_and_registry();
    let dir = tempdir();
    // No RUN: no qemu needed for the foreign platform.
    let dockerfile = format!("FROM {MULTI}\nCOPY Dockerfile /\n");
    let b = Build::new(dir.path(), &dockerfile);
    let out = dir.path().join("out");
    let local = dir.path().join("local");
    b.run(&[
        "--platform",
        "linux/amd64,linux/arm64",
        "--provenance",
        "true",
        "-o",
        &format!("type=oci,dest={},tar=false", out.display()),
        "-o",
        &format!("type=local,dest={}", local.display()),
    ]);
    // A local output gets provenance.json per platform directory, as BuildKit's local
    // exporter: its subjects are the files beside it.
    for arch in ["amd64", "arm64"] {
        let s = json_file(&local.join(format!("linux_{arch}/provenance.json")));
        let subjects = s["subject"].as_array().unwrap();
        let dockerfile_subject = subjects.iter().find(|x| x["name"] == "Dockerfile");
        assert_eq!(
            dockerfile_subject.unwrap()["digest"]["sha256"],
            sha256_hex(dockerfile.as_bytes()).as_str()
        );
        assert!(subjects.iter().any(|x| x["name"] == "bin/busybox"), "{s}");
        let dep = &s["predicate"]["buildDefinition"]["resolvedDependencies"][0];
        assert!(dep["uri"].as_str().unwrap().ends_with(arch), "{dep}");
    }
    let entries = layout_index(&out);
    assert_eq!(entries.len(), 4, "{entries:?}");
    for (image, att) in entries[..2].iter().zip(&entries[2..]) {
        let arch = image["platform"]["architecture"].as_str().unwrap();
        let s = statement(&out, image, att, "https://slsa.dev/provenance/v1");
        let dep = &s["predicate"]["buildDefinition"]["resolvedDependencies"][0];
        assert_eq!(
            dep["uri"],
            format!("pkg:docker/{MULTI}@latest?platform=linux%2F{arch}"),
            "{s}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn bad_provenance_values_are_refused_naming_the_flag_and_value() {
    needs_root();
    let dir = tempdir();
    let b = Build::new(dir.path(), "FROM scratch\n");
    let dest = dir.path().join("out");
    for (args, want) in [
        (
            vec!["--provenance", "mode=mid"],
            "--provenance mode=mid: mode must be min or max, not `mid`",
        ),
        (
            vec!["--provenance", "max"],
            "--provenance max: `max` is not key=value",
        ),
        (
            vec!["--provenance", "mode=max,version=v2"],
            "version must be v0.2 or v1, not `v2`",
        ),
        (
            vec!["--attest", "type=sbom"],
            "--attest type=sbom: attestation type `sbom` is not supported",
        ),
        (
            vec!["--provenance", "true", "--attest", "type=provenance"],
            "provenance is already asked for",
        ),
    ] {
        let out = format!("type=oci,dest={},tar=false", dest.display());
        let o = run(&mut b.cmd(&[&args[..], &["-o", &out]].concat()));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
        assert!(!dest.exists(), "{args:?}: nothing is written");
    }
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn load_into_docker_takes_the_image_without_its_attestation() {
    needs_root_docker_and_registry();
    let dir = tempdir();
    let b = Build::new(dir.path(), &format!("FROM {BASE}\nCOPY Dockerfile /\n"));
    let name = format!("rbuild-test/provenance-load-{}:1", std::process::id());
    let _loaded = DockerImages(vec![name.clone()]);
    let o = run(&mut b.cmd(&["--provenance", "mode=max", "--load", "-t", &name]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("carry the attestation"), "{err}");
    let id = run_ok(docker().args(["image", "inspect", "-f", "{{.Id}}", &name]));
    assert!(id.trim().starts_with("sha256:"), "{id}");
}

#[test]
#[ignore = "needs root and a registry"]
fn an_oci_layout_context_is_a_local_dependency() {
    needs_root_and_registry();
    let dir = tempdir();
    let layout = dir.path().join("layout");
    let first = Build::new(
        &dir.path().join("first"),
        &format!("FROM {BASE}\nCOPY Dockerfile /\n"),
    );
    first.run(&[
        "-t",
        "base:1",
        "-o",
        &format!("type=oci,dest={},tar=false", layout.display()),
    ]);
    let base_manifest = json_file(&layout.join("index.json"))["manifests"][0]["digest"].clone();
    let b = Build::new(
        &dir.path().join("second"),
        "FROM base\nCOPY Dockerfile /again\n",
    );
    let out = dir.path().join("out");
    b.run(&[
        "--build-context",
        &format!("base=oci-layout://{}:1", layout.display()),
        "--provenance",
        "true",
        "-o",
        &format!("type=local,dest={}", out.display()),
    ]);
    let s = json_file(&out.join("provenance.json"));
    let deps = &s["predicate"]["buildDefinition"]["resolvedDependencies"];
    assert_eq!(deps.as_array().unwrap().len(), 1, "{deps}");
    let want = format!("pkg:oci/base@latest?platform={}", host_platform());
    assert_eq!(deps[0]["uri"], want.as_str());
    let hex = base_manifest
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert_eq!(deps[0]["digest"]["sha256"], hex);
}
