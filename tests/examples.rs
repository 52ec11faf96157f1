//! The user-facing examples in Dockerfile.examples/ build with rbuild and do what their
//! comments say: each is built against the local registry's bases, written as a docker
//! archive, `docker load`ed and run. Where docker 20.10's BuildKit frontend can build the
//! example (everything but heredocs), its image is compared with rbuild's.
//!
//! Known differences allowed in the comparison: files whose contents record the time of the
//! build (apt/dpkg logs, ldconfig's cache) must exist in both images with the same type, mode
//! and owner, but their contents may differ. See [`TIME_DEPENDENT`].

mod support;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::*;

const BUSYBOX: InRegistry = InRegistry("busybox:latest");
const DEBIAN: InRegistry = InRegistry("debian:bookworm");

/// Files written by apt, dpkg and ldconfig whose contents embed timestamps or inode numbers,
/// so two builds of the same Dockerfile never agree on them byte for byte (apt's package
/// caches record the mtimes of the downloaded lists).
const TIME_DEPENDENT: &[&str] = &[
    "var/log/",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/cache/ldconfig/aux-cache",
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile.examples")
}

/// One store for all examples, kept between runs so the apt layers come from the cache.
fn store() -> &'static Path {
    static STORE: OnceLock<PathBuf> = OnceLock::new();
    STORE.get_or_init(|| kept_store("examples-store"))
}

fn tag(example: &str, builder: &str) -> String {
    format!("rbuild-test/examples-{example}:{builder}")
}

/// Build `example` with rbuild and `extra` arguments, load the archive into docker and return
/// the archive's path (inside the returned temp dir), the image tag, and the guard that
/// removes the image from docker again.
fn rbuild_example(
    example: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, PathBuf, String, DockerImages) {
    let out_dir = tempdir();
    let archive = out_dir.path().join("image.tar");
    let tag = tag(example, "rbuild");
    let mut cmd = rbuild(store());
    cmd.args(["-t", &tag])
        .arg("-o")
        .arg(format!("type=docker,dest={}", archive.display()))
        .args(extra)
        .arg(examples_dir().join(example));
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_ok(&mut cmd);
    let loaded = DockerImages(vec![tag.clone()]);
    run_ok(docker().arg("load").arg("-i").arg(&archive));
    (out_dir, archive, tag, loaded)
}

/// Build `example` with `DOCKER_BUILDKIT=1 docker build` and compare its image with rbuild's.
fn compare_with_docker(example: &str, build_args: &[&str], rbuild_tag: &str) {
    let docker_tag = tag(example, "docker");
    let _built = DockerImages(vec![docker_tag.clone()]);
    run_ok(
        docker()
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "--network=host", "-q", "-t", &docker_tag])
            .args(build_args)
            .arg(examples_dir().join(example)),
    );
    let (want, got) = (docker_fs(&docker_tag), docker_fs(rbuild_tag));
    let diffs = diff_listings(&without_contents(want), &without_contents(got));
    assert!(
        diffs.is_empty(),
        "{example}: filesystems differ:\n{}",
        diffs.join("\n")
    );
    assert_eq!(
        docker_config(rbuild_tag),
        docker_config(&docker_tag),
        "{example}: configs differ (left rbuild, right docker)"
    );
}

/// The listing with the contents of [`TIME_DEPENDENT`] files blanked out.
fn without_contents(mut listing: BTreeMap<String, FsEntry>) -> BTreeMap<String, FsEntry> {
    for (path, entry) in listing.iter_mut() {
        if TIME_DEPENDENT
            .iter()
            .any(|p| path == p.trim_end_matches('/') || (p.ends_with('/') && path.starts_with(p)))
        {
            entry.size = 0;
            entry.sha256.clear();
        }
    }
    listing
}

fn docker_run(image: &str, args: &[&str]) -> String {
    run_ok(
        docker()
            .args(["run", "--rm", "--network=none", image])
            .args(args),
    )
}

/// A TCP port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET / from 127.0.0.1:`port`, retrying while the server starts.
fn http_get(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            use std::io::Write as _;
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        match attempt {
            Ok(body) if !body.is_empty() => return body,
            _ if Instant::now() > deadline => panic!("httpd on port {port} never answered"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn static_site() {
    needs_root_docker_and_registry();
    let args = ["--build-arg", &format!("BASE={BUSYBOX}")];
    let (_dir, _archive, image, _loaded) = rbuild_example("static-site", &args, &[]);
    assert_eq!(docker_run(&image, &["id", "-un"]).trim(), "web");
    assert_eq!(
        docker_run(&image, &["stat", "-c", "%U:%G %a", "/www/index.html"]).trim(),
        "web:web 644"
    );

    // Serve it as the example's CMD does, on a free port of the host.
    let port = free_port().to_string();
    let id = run_ok(docker().args([
        "run",
        "-d",
        "--rm",
        "--network=host",
        &image,
        "httpd",
        "-f",
        "-p",
        &port,
        "-h",
        "/www",
    ]))
    .trim()
    .to_string();
    let response = http_get(port.parse().unwrap());
    run_ok(docker().args(["rm", "-f", &id]));
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let index =
        std::fs::read_to_string(examples_dir().join("static-site/site/index.html")).unwrap();
    assert!(response.ends_with(&index), "{response}");

    compare_with_docker("static-site", &args, &image);
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn python_app() {
    needs_root_docker_and_registry();
    let args = ["--build-arg", &format!("BASE={DEBIAN}")];
    let (_dir, _archive, image, _loaded) = rbuild_example("python-app", &args, &[]);
    let out = docker_run(&image, &[]);
    assert!(
        out.starts_with("hello from python 3.") && out.trim_end().ends_with(" on linux"),
        "{out}"
    );
    assert_eq!(docker_run(&image, &["id", "-un"]).trim(), "nobody");
    compare_with_docker("python-app", &args, &image);
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn c_multistage() {
    needs_root_docker_and_registry();
    let base = format!("BASE={DEBIAN}");
    let runtime = format!("RUNTIME={BUSYBOX}");
    let args = ["--build-arg", &base, "--build-arg", &runtime];
    let (_dir, _archive, image, _loaded) = rbuild_example("c-multistage", &args, &[]);
    assert_eq!(
        docker_run(&image, &[]),
        "hello, world (static C, built in a multi-stage rbuild)\n"
    );
    assert_eq!(
        docker_run(&image, &["rbuild"]),
        "hello, rbuild (static C, built in a multi-stage rbuild)\n"
    );
    // Only the binary ships: nothing of the build stage besides it.
    let fs = docker_fs(&image);
    assert!(fs.contains_key("usr/local/bin/hello"));
    for absent in [
        "src",
        "usr/bin/gcc",
        "var/lib/dpkg",
        "usr/lib/x86_64-linux-gnu",
    ] {
        assert!(
            !fs.contains_key(absent),
            "{absent} leaked into the runtime image"
        );
    }
    compare_with_docker("c-multistage", &args, &image);
}

/// Heredocs need a newer frontend than docker 20.10's, so this example is checked by running
/// the image only.
#[test]
#[ignore = "needs root, docker and a registry"]
fn heredoc_mounts() {
    needs_root_docker_and_registry();
    // As in the example's comment, the secret comes from an environment variable; a value
    // unique to this run makes a leak into a layer detectable.
    let secret = format!("rbuild-example-secret-{}", std::process::id());
    let args = [
        "--build-arg",
        &format!("BASE={BUSYBOX}"),
        "--secret",
        "id=token,env=RBUILD_EXAMPLE_TOKEN",
    ];
    let (_dir, archive, image, _loaded) = rbuild_example(
        "heredoc-mounts",
        &args,
        &[("RBUILD_EXAMPLE_TOKEN", &secret)],
    );

    assert_eq!(docker_run(&image, &[]), "greetings, rbuild\n");
    let cat = |path: &str| docker_run(&image, &["cat", path]);
    assert_eq!(cat("/etc/motd"), "Built by rbuild with heredocs.\n");
    assert_eq!(cat("/data-lines").trim(), "3");
    assert_eq!(cat("/secret-was"), "present\n");
    // The cache mount saw the RUN's write; the mount itself is not in the image.
    assert_eq!(cat("/build-cache-listing"), "last-run\n");
    let fs = docker_fs(&image);
    assert_eq!(fs["usr/local/bin/greet"].mode, 0o755);
    for absent in [
        "var/cache/build/last-run",
        "mnt/data.txt",
        "run/secrets/token",
    ] {
        assert!(!fs.contains_key(absent), "{absent} is in the image");
    }

    // The secret is in no layer: neither as a file nor inside one.
    for (path, content) in layer_files(&archive) {
        assert!(!path.contains("run/secrets"), "layer holds {path}");
        assert!(
            !content
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the secret leaked into {path}"
        );
    }
}

/// Every entry of every layer of a docker archive: (path, contents).
fn layer_files(archive: &Path) -> Vec<(String, Vec<u8>)> {
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut outer = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in outer.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        blobs.insert(path, bytes);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&blobs["manifest.json"]).unwrap();
    let layers = manifest[0]["Layers"].as_array().expect("Layers").clone();
    assert!(!layers.is_empty());
    let mut files = Vec::new();
    for layer in layers {
        let blob = &blobs[layer.as_str().unwrap()];
        let mut inner = tar::Archive::new(&blob[..]);
        for entry in inner.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.push((path, bytes));
        }
    }
    files
}
