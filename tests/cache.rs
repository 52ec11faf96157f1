//! The shared build cache (issue 18): portable cache keys, `--cache-to` / `--cache-from`
//! through the run's registry and a local OCI layout, and their faults. Each test has
//! stores of its own: runner A builds and exports, runner B starts empty and imports.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::chown;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use support::*;

const BASE: InRegistry = InRegistry("busybox");

/// Write `files` (path -> content) under `dir`, with mtimes at `mtime` and owned by
/// `owner` (uid = gid).
fn write_tree(dir: &Path, files: &[(&str, &str)], mtime: SystemTime, owner: u32) {
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(mtime).unwrap();
        chown(&p, Some(owner), Some(owner)).unwrap();
    }
}

/// The cache keys a store holds (the names of its cache records).
fn keys(store: &Path) -> BTreeSet<String> {
    std::fs::read_dir(store.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn multi_stage() -> String {
    format!(
        "FROM {BASE} AS build\n\
         COPY src /src\n\
         RUN echo ran-build | tr a-z A-Z && cat /src/a.txt /src/b.txt > /out.txt\n\
         FROM {BASE}\n\
         WORKDIR /app\n\
         COPY --from=build /out.txt ./out.txt\n\
         COPY extra.txt ./\n\
         RUN echo ran-final | tr a-z A-Z && wc -c out.txt extra.txt > sizes\n\
         ENV MODE=cached\n"
    )
}

const FILES: &[(&str, &str)] = &[
    ("src/a.txt", "alpha\n"),
    ("src/b.txt", "beta\n"),
    ("extra.txt", "extra\n"),
];

/// [`FILES`] with extra.txt changed: what the last COPY of both Dockerfiles reads.
fn extra_changed() -> Vec<(&'static str, &'static str)> {
    FILES
        .iter()
        .map(|&(p, c)| {
            if p == "extra.txt" {
                (p, "changed\n")
            } else {
                (p, c)
            }
        })
        .collect()
}

/// Issue 18: keys must not hold the store's path, the context's path, inodes, mtimes or
/// the owner of the context's files, or a cache made on one CI runner misses on the next.
#[test]
#[ignore = "needs root and a registry"]
fn keys_are_the_same_for_other_stores_paths_mtimes_and_owners() {
    needs_root_and_registry();
    let a = TempDir::new().unwrap();
    let b = TempDir::new().unwrap();
    let ctx_a = a.path().join("ctx-a");
    let ctx_b = b.path().join("elsewhere/ctx-b");
    write_tree(
        &ctx_a,
        FILES,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        0,
    );
    write_tree(&ctx_b, FILES, SystemTime::now(), 4321);
    for ctx in [&ctx_a, &ctx_b] {
        std::fs::write(ctx.join("Dockerfile"), multi_stage()).unwrap();
    }
    let (store_a, store_b) = (a.path().join("store-a"), b.path().join("deeper/store-b"));
    run_ok(rbuild(&store_a).arg("-q").arg(&ctx_a));
    run_ok(rbuild(&store_b).arg("-q").arg(&ctx_b));
    // (The image ids differ: each build's steps carry their own creation time, and COPY
    // keeps the files' mtimes. A build from an imported cache gives the same id: below.)
    assert_eq!(keys(&store_a), keys(&store_b));
    assert!(keys(&store_a).len() >= 6, "{:?}", keys(&store_a));
}

/// A repository of the run's registry no other test uses.
fn cache_ref(name: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("{REGISTRY}/cache-{name}-{}-{n}:cache", std::process::id())
}

/// A runner: a store and a copy of the context of its own, at paths of its own, with the
/// files' mtimes of when it was made (a fresh checkout).
struct Runner {
    dir: TempDir,
}

impl Runner {
    fn new(files: &[(&str, &str)]) -> Runner {
        let dir = TempDir::new().unwrap();
        let ctx = dir.path().join("checkout/ctx");
        write_tree(&ctx, files, SystemTime::now(), 0);
        std::fs::write(ctx.join("Dockerfile"), multi_stage()).unwrap();
        Runner { dir }
    }

    fn ctx(&self) -> std::path::PathBuf {
        self.dir.path().join("checkout/ctx")
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    /// Build with `args`; (image id, progress on stderr).
    fn build(&self, args: &[&str]) -> (String, String) {
        let iid = self.dir.path().join("iid");
        let out = run(rbuild(&self.store())
            .args(args)
            .arg("--iidfile")
            .arg(&iid)
            .arg(self.ctx()));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?} failed:\n{stderr}");
        (std::fs::read_to_string(&iid).unwrap(), stderr)
    }

    fn build_fails(&self, args: &[&str]) -> String {
        let out = run(rbuild(&self.store()).args(args).arg(self.ctx()));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded:\n{stderr}");
        stderr
    }
}

/// The steps of the build (not the FROMs) and whether each ran.
fn ran(progress: &str) -> Vec<(String, bool)> {
    step_ends(progress)
        .into_iter()
        .filter(|(label, _)| label.starts_with('[') && !label.contains("] FROM "))
        .map(|(label, how)| (label, how == "DONE"))
        .collect()
}

fn warnings(progress: &str) -> Vec<&str> {
    progress
        .lines()
        .filter(|l| l.contains("WARNING") && l.contains("cache"))
        .collect()
}

/// Issue 18: runner A exports its multi-stage build (mode=max) to the registry and to a
/// local directory; runners B and C start with empty stores and the context checked out
/// elsewhere: every step is CACHED (remote), no RUN runs (its output never shows), and the
/// image is A's, id for id.
#[test]
#[ignore = "needs root and a registry"]
fn cold_runners_build_nothing_from_a_registry_or_local_cache() {
    needs_root_and_registry();
    let reference = cache_ref("max");
    let a = Runner::new(FILES);
    let local = a.dir.path().join("cache-dir");
    let to_registry = format!("type=registry,ref={reference},mode=max");
    let to_local = format!("type=local,dest={},mode=max", local.display());
    let (id_a, progress) = a.build(&["--cache-to", &to_registry, "--cache-to", &to_local]);
    let _cache = RegistryImage::pushed(&reference);
    assert!(progress.contains("RAN-BUILD") && progress.contains("RAN-FINAL"));
    assert!(local.join("index.json").is_file());

    let b = Runner::new(FILES);
    let (id_b, progress) = b.build(&["--cache-from", &format!("type=registry,ref={reference}")]);
    assert!(!progress.contains("RAN-"), "{progress}");
    let steps_b = ran(&progress);
    assert_eq!(steps_b.len(), 6, "{progress}");
    assert!(steps_b.iter().all(|(_, ran)| !ran), "{progress}");
    assert!(progress.contains("CACHED (remote)"), "{progress}");
    assert_eq!(id_a, id_b);

    let c = Runner::new(FILES);
    let from_local = format!("type=local,src={}", local.display());
    let (id_c, progress) = c.build(&["--cache-from", &from_local]);
    assert!(!progress.contains("RAN-"), "{progress}");
    assert_eq!(id_a, id_c);
    // The store keeps what it imported: a second build is cached locally.
    let (_, progress) = c.build(&[]);
    assert!(
        !progress.contains("RAN-") && !progress.contains("(remote)"),
        "{progress}"
    );
}

/// Issue 18: one source file changed on runner B: the steps from the first one that reads
/// it run, the others come from the cache.
#[test]
#[ignore = "needs root and a registry"]
fn a_changed_source_file_reruns_only_what_depends_on_it() {
    needs_root_and_registry();
    let reference = cache_ref("changed");
    let a = Runner::new(FILES);
    a.build(&[
        "--cache-to",
        &format!("type=registry,ref={reference},mode=max"),
    ]);
    let _cache = RegistryImage::pushed(&reference);
    let changed = extra_changed();
    let b = Runner::new(&changed);
    let (_, progress) = b.build(&["--cache-from", &reference]);
    let ran: Vec<(String, bool)> = ran(&progress);
    let labels_that_ran: Vec<&str> = ran
        .iter()
        .filter(|(_, r)| *r)
        .map(|(l, _)| l.as_str())
        .collect();
    assert!(!progress.contains("RAN-BUILD"), "{progress}");
    assert!(progress.contains("RAN-FINAL"), "{progress}");
    assert_eq!(labels_that_ran.len(), 2, "{progress}");
    assert!(labels_that_ran[0].contains("COPY extra.txt"), "{progress}");
    // Issue 19: the records travel with the cache, so the miss says what changed since
    // runner A's build instead of calling the step one never built.
    assert!(
        progress.contains("cache miss: sources changed"),
        "{progress}"
    );
    assert!(!progress.contains("no earlier build"), "{progress}");
}

/// Issue 18: mode=min exports the image's own steps only: a cold runner reruns the build
/// stage but takes the final stage's steps from the cache; mode=max has them all.
#[test]
#[ignore = "needs root and a registry"]
fn mode_min_holds_the_image_steps_and_max_every_stage() {
    needs_root_and_registry();
    let (min, max) = (cache_ref("min"), cache_ref("max"));
    let a = Runner::new(FILES);
    a.build(&[
        "--cache-to",
        &format!("type=registry,ref={min}"),
        "--cache-to",
        &format!("type=registry,ref={max},mode=max"),
    ]);
    let _cached = (RegistryImage::pushed(&min), RegistryImage::pushed(&max));
    let b = Runner::new(FILES);
    let (_, progress) = b.build(&["--cache-from", &min]);
    assert!(progress.contains("RAN-BUILD"), "{progress}");
    assert!(!progress.contains("RAN-FINAL"), "{progress}");
    let c = Runner::new(FILES);
    let (_, progress) = c.build(&["--cache-from", &max]);
    assert!(!progress.contains("RAN-"), "{progress}");
}

/// Issue 18: a cache that cannot be read is one warning and the build goes on uncached:
/// an unreachable registry, a missing ref, an image that is not a cache, a directory that
/// is not a layout. The first source that has a step wins, after the broken ones.
#[test]
#[ignore = "needs root and a registry"]
fn unreadable_caches_are_a_warning_and_the_build_goes_on() {
    needs_root_and_registry();
    let reference = cache_ref("faults");
    let a = Runner::new(FILES);
    a.build(&[
        "--cache-to",
        &format!("type=registry,ref={reference},mode=max"),
    ]);
    let _cache = RegistryImage::pushed(&reference);
    let b = Runner::new(FILES);
    let not_a_layout = b.dir.path().join("empty");
    std::fs::create_dir(&not_a_layout).unwrap();
    let sources = [
        "localhost:1/nothing:here".to_string(),
        cache_ref("missing"),
        BASE.to_string(),
        format!("type=local,src={}", not_a_layout.display()),
    ];
    let mut args = Vec::new();
    for s in &sources {
        args.extend(["--cache-from", s.as_str()]);
    }
    let (_, progress) = b.build(&args);
    assert_eq!(warnings(&progress).len(), 4, "{progress}");
    assert!(progress.contains("not an rbuild cache"), "{progress}");
    assert!(progress.contains("RAN-BUILD"), "{progress}");
    // The same broken sources, then the good one: it wins.
    args.extend(["--cache-from", reference.as_str()]);
    let c = Runner::new(FILES);
    let (_, progress) = c.build(&args);
    assert_eq!(warnings(&progress).len(), 4, "{progress}");
    assert!(!progress.contains("RAN-"), "{progress}");
}

/// Issue 18: an export that fails fails the build, unless ignore-error=true (BuildKit's).
#[test]
#[ignore = "needs root and a registry"]
fn a_failed_export_fails_the_build_unless_ignore_error() {
    needs_root_and_registry();
    let a = Runner::new(FILES);
    let err = a.build_fails(&["--cache-to", "type=registry,ref=localhost:1/cache:x"]);
    assert!(err.contains("exporting cache"), "{err}");
    let (_, progress) = a.build(&[
        "--cache-to",
        "type=registry,ref=localhost:1/cache:x,ignore-error=true",
    ]);
    assert_eq!(warnings(&progress).len(), 1, "{progress}");
    // An inline cache rides in one image's manifest: not with several platforms.
    let several = a.build_fails(&[
        "--cache-to",
        "type=inline",
        "--push",
        "-t",
        "localhost:1/never/pushed:x",
        "--platform",
        "linux/amd64,linux/arm64",
    ]);
    assert!(several.contains("several platforms"), "{several}");
    let err = a.build_fails(&["--cache-to", "type=registry"]);
    assert!(
        err.contains("--cache-to type=registry: type=registry needs ref="),
        "{err}"
    );
}

/// Issue 18: a layer blob of the cache whose bytes do not match its digest is refused.
/// Import is lazy, so a fully cached build fetches nothing and sees nothing; the first
/// build that needs the files refuses the blob (one warning) and builds again without it:
/// the steps it answered run. An output that needs the bytes of a step answered from the
/// cache fails with an error that says why, writes nothing, and the next build runs it.
#[test]
#[ignore = "needs root and a registry"]
fn a_tampered_cache_blob_is_refused_and_the_step_rebuilt() {
    needs_root_and_registry();
    let a = Runner::new(FILES);
    let local = a.dir.path().join("cache-dir");
    a.build(&[
        "--cache-to",
        &format!("type=local,dest={},mode=max", local.display()),
    ]);
    // Every layer blob of the layout (the config and manifest are not .tar+gzip).
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(local.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        local
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(digest)).unwrap()).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let path = blob(layer["digest"].as_str().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    let from_local = format!("type=local,src={}", local.display());

    // Nothing needs the files: nothing is fetched, nothing refused.
    let b = Runner::new(FILES);
    let (_, progress) = b.build(&["--cache-from", &from_local]);
    assert!(!progress.contains("RAN-"), "{progress}");
    assert!(!progress.contains("refused"), "{progress}");
    // The OCI output needs the bytes: a clear error, no file.
    let out = b.dir.path().join("image.tar");
    let oci = format!("type=oci,dest={}", out.display());
    let err = b.build_fails(&["--cache-from", &from_local, "-o", &oci]);
    assert!(err.contains("for the output"), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!out.exists());
    // The next build runs what the refused blob answered, and writes the output.
    let (_, progress) = b.build(&["--cache-from", &from_local, "-o", &oci]);
    assert!(progress.contains("RAN-"), "{progress}");
    assert!(out.is_file());

    // A step that misses needs the files below it: refused, built again without them.
    let changed = extra_changed();
    let c = Runner::new(&changed);
    let (_, progress) = c.build(&["--cache-from", &from_local]);
    assert!(progress.contains("RAN-BUILD"), "{progress}");
    assert!(progress.contains("RAN-FINAL"), "{progress}");
    assert!(!warnings(&progress).is_empty(), "{progress}");
    assert!(progress.contains("refused"), "{progress}");
    assert!(progress.contains("building again without it"), "{progress}");
}

/// Issue 18: a registry serving a cache layer blob with other bytes than its digest (here:
/// tampered with in its storage) is treated as a local cache's: the blob is refused with
/// one warning naming it and the cache, and the build goes on with the step it answered
/// built again. (A base image's tampered blob stays an error: tests/registry.rs.)
#[test]
#[ignore = "needs root and a registry"]
fn a_tampered_registry_cache_blob_is_refused_and_the_step_rebuilt() {
    needs_root_and_registry();
    support::registry::needs_docker_registry();
    // A registry of the test's own: its blobs are tampered with; the base comes from the
    // run's registry, untouched.
    let reg = support::registry::Registry::start(None);
    let reference = format!("127.0.0.1:{}/cache/app:cache", reg.port);
    let dockerfile = format!(
        "FROM {BASE}\n\
         RUN echo ran-one | tr a-z A-Z && echo one > /one\n\
         COPY extra.txt /\n"
    );
    let a = Runner::new(FILES);
    std::fs::write(a.ctx().join("Dockerfile"), &dockerfile).unwrap();
    let to = format!("type=registry,ref={reference},mode=max");
    let (_, progress) = a.build(&["--cache-to", &to]);
    assert!(progress.contains("RAN-ONE"), "{progress}");
    // Every layer blob (gzip) the registry holds: the RUN's and the COPY's. Same length,
    // other bytes: only the digest can tell.
    let blobs = reg.dir.path().join("data/docker/registry/v2/blobs/sha256");
    let mut tampered = Vec::new();
    for prefix in std::fs::read_dir(&blobs).unwrap() {
        for blob in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let blob = blob.unwrap().path();
            let data = blob.join("data");
            let mut bytes = std::fs::read(&data).unwrap();
            if bytes.starts_with(&[0x1f, 0x8b]) {
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
                std::fs::write(&data, bytes).unwrap();
                let hex = blob.file_name().unwrap().to_string_lossy().into_owned();
                tampered.push(format!("sha256:{hex}"));
            }
        }
    }
    assert_eq!(tampered.len(), 2, "{tampered:?}");

    // The COPY misses: the RUN's layer is fetched for its files, refused, and the RUN runs.
    let b = Runner::new(&extra_changed());
    std::fs::write(b.ctx().join("Dockerfile"), &dockerfile).unwrap();
    let tar = b.dir.path().join("image.tar");
    let from = format!("type=registry,ref={reference}");
    let out = format!("type=tar,dest={}", tar.display());
    let (_, progress) = b.build(&["--cache-from", &from, "-o", &out]);
    let warned = warnings(&progress);
    assert_eq!(warned.len(), 1, "{progress}");
    assert!(warned[0].contains("refused"), "{progress}");
    assert!(
        warned[0].contains("building again without it"),
        "{progress}"
    );
    assert!(warned[0].contains("127.0.0.1"), "{progress}");
    assert!(
        tampered.iter().any(|d| warned[0].contains(d.as_str())),
        "{progress}"
    );
    assert!(progress.contains("RAN-ONE"), "{progress}");
    let file = |name: &str| run_ok(Command::new("tar").arg("-xOf").arg(&tar).arg(name));
    assert_eq!(file("one"), "one\n");
    assert_eq!(file("extra.txt"), "changed\n");
}

/// A TCP proxy to the run's registry that counts what goes through it: the bytes its
/// clients send and receive, whatever the protocol does, and the blobs they GET.
struct CountingProxy {
    addr: String,
    counts: std::sync::Arc<std::sync::Mutex<Counts>>,
}

/// What went through a [`CountingProxy`] since the last [`CountingProxy::take`].
#[derive(Debug, Default)]
struct Counts {
    sent: u64,
    received: u64,
    /// The digest of every `GET /v2/<name>/blobs/<digest>`, in order.
    blob_gets: Vec<String>,
}

impl CountingProxy {
    fn start() -> CountingProxy {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let counts = Arc::new(Mutex::new(Counts::default()));
        let upstream = registry().replacen("localhost:", "127.0.0.1:", 1);
        let shared = counts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream, up: bool| {
                    let counts = shared.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        // The request line being read (client to server only).
                        let mut line: Vec<u8> = Vec::new();
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            let mut c = counts.lock().unwrap();
                            if !up {
                                c.received += n as u64;
                                continue;
                            }
                            c.sent += n as u64;
                            for &b in &buf[..n] {
                                if b != b'\n' {
                                    if line.len() < 512 {
                                        line.push(b);
                                    }
                                    continue;
                                }
                                let text = String::from_utf8_lossy(&line);
                                if let Some(path) = text.strip_prefix("GET /v2/") {
                                    if let Some((_, rest)) = path.split_once("/blobs/") {
                                        let digest = rest.split(' ').next().unwrap_or_default();
                                        c.blob_gets.push(digest.to_string());
                                    }
                                }
                                line.clear();
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    true,
                );
                pipe(server, client, false);
            }
        });
        CountingProxy { addr, counts }
    }

    fn take(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

/// Issue 18: layer blobs go up once. Runner A exports its cache to the registry (the layer
/// goes up), exports again and pushes the image to another repository: nothing goes up, the
/// push mounts the layer from the cache. Runner B builds from that cache and pushes: every
/// layer is mounted, nothing is uploaded but the config and the manifest. Bytes are counted
/// by a proxy in front of the registry, with a 2 MB incompressible layer to count.
#[test]
#[ignore = "needs root and a registry"]
fn layer_blobs_are_uploaded_once_and_a_cached_push_mounts_them() {
    needs_root_and_registry();
    const BIG: u64 = 2_000_000;
    let proxy = CountingProxy::start();
    let dockerfile = format!(
        "FROM {}/busybox\nRUN head -c {BIG} /dev/urandom > /big\nCOPY extra.txt /\n",
        proxy.addr
    );
    let tag = |name: &str| format!("{}/cache-push-{name}-{}:1", proxy.addr, std::process::id());
    // The same repository, named by the registry's own address.
    let in_registry = |reference: &str| reference.replacen(&proxy.addr, &registry_by_ip(), 1);
    let cache = tag("cache");
    let to_cache = format!("type=registry,ref={cache}");
    let a = Runner::new(FILES);
    std::fs::write(a.ctx().join("Dockerfile"), &dockerfile).unwrap();
    a.build(&["--cache-to", &to_cache]);
    let _cache = RegistryImage::pushed(&in_registry(&cache));
    let exported = proxy.take().sent;
    assert!(
        (BIG..BIG * 3 / 2).contains(&exported),
        "the export sent {exported} bytes"
    );
    let (_, progress) = a.build(&["--cache-to", &to_cache, "--push", "-t", &tag("a")]);
    let _a = RegistryImage::pushed(&in_registry(&tag("a")));
    let sent = proxy.take().sent;
    assert!(
        sent < BIG / 2,
        "A's export and push sent {sent} bytes:\n{progress}"
    );
    assert!(progress.contains("mount from"), "{progress}");

    let b = Runner::new(FILES);
    std::fs::write(b.ctx().join("Dockerfile"), &dockerfile).unwrap();
    let (_, progress) = b.build(&["--cache-from", &cache, "--push", "-t", &tag("b")]);
    let _b = RegistryImage::pushed(&in_registry(&tag("b")));
    let sent = proxy.take().sent;
    assert!(ran(&progress).iter().all(|(_, ran)| !ran), "{progress}");
    assert!(
        sent < BIG / 2,
        "B's build and push sent {sent} bytes:\n{progress}"
    );
}

/// The lazy-import tests' layers: a 2 MB incompressible one to count, a small one, a COPY.
const BIG_LAYER: u64 = 2_000_000;

/// A runner for the lazy-import tests, its registry behind `proxy`, with an empty store:
/// the base image's layers are as lazy as the cache's (remote layers of its repository).
fn lazy_runner(proxy: &CountingProxy, files: &[(&str, &str)]) -> Runner {
    let runner = Runner::new(files);
    std::fs::write(runner.ctx().join("Dockerfile"), lazy_dockerfile(proxy, "")).unwrap();
    runner
}

/// The lazy runners' Dockerfile, `more` after its steps.
fn lazy_dockerfile(proxy: &CountingProxy, more: &str) -> String {
    format!(
        "FROM {}/busybox\n\
         RUN head -c {BIG_LAYER} /dev/urandom > /big\n\
         RUN echo ran-small | tr a-z A-Z > /small\n\
         COPY extra.txt /\n{more}",
        proxy.addr
    )
}

/// The config digest and the layer digests (in order) of the image or cache manifest at
/// `reference` (in the run's registry).
fn manifest_digests(reference: &str) -> (String, Vec<String>) {
    let (host, path) = reference.split_once('/').unwrap();
    let (name, tag) = path.rsplit_once(':').unwrap();
    let body = run_ok(Command::new("curl").args([
        "-fsS",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json",
        &format!("http://{host}/v2/{name}/manifests/{tag}"),
    ]));
    let manifest: serde_json::Value = serde_json::from_str(&body).unwrap();
    let layers = manifest["layers"].as_array().unwrap().iter();
    (
        manifest["config"]["digest"].as_str().unwrap().to_string(),
        layers
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect(),
    )
}

/// The blob GETs of `counts`, sorted, but the configs (the cache's, read once at import;
/// the base image's, read once when FROM resolves it).
fn layer_gets(counts: Counts, configs: &[&str]) -> Vec<String> {
    let mut gets: Vec<String> = counts.blob_gets;
    for config in configs {
        let n = gets.iter().filter(|d| d == config).count();
        assert!(n <= 1, "the config {config} was read {n} times");
    }
    gets.retain(|d| !configs.contains(&d.as_str()));
    gets.sort();
    gets
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The steps of a lazy runner's build (not the FROM), with how each ended.
fn step_results(progress: &str) -> Vec<String> {
    step_ends(progress)
        .into_iter()
        .filter(|(label, _)| label.starts_with('[') && !label.contains("] FROM "))
        .map(|(_, how)| how)
        .collect()
}

/// The base image of the lazy runners, as the registry has it: (config, layers).
fn base_digests() -> (String, Vec<String>) {
    manifest_digests(&format!("{}/busybox:latest", registry_by_ip()))
}

/// Issue 18, lazy import: runner B, an empty store, builds from A's registry cache with
/// every step CACHED (remote) and pushes to the same registry: no layer blob is downloaded,
/// neither the cache's nor the base image's (not one layer GET through the proxy), and none
/// uploaded (mounted from the cache and the base's repository), and the pushed manifest is
/// A's, digest for digest, as is the image id.
#[test]
#[ignore = "needs root and a registry"]
fn a_fully_cached_build_and_push_move_no_layer_bytes() {
    needs_root_and_registry();
    let proxy = CountingProxy::start();
    let tag = |name: &str| format!("{}/cache-lazy-{name}-{}:1", proxy.addr, std::process::id());
    let in_registry = |reference: &str| reference.replacen(&proxy.addr, &registry_by_ip(), 1);
    let cache = tag("cache");
    let a = lazy_runner(&proxy, FILES);
    let to_cache = format!("type=registry,ref={cache},mode=max");
    let (id_a, _) = a.build(&["--cache-to", &to_cache, "--push", "-t", &tag("a")]);
    let _cache = RegistryImage::pushed(&in_registry(&cache));
    let pushed_a = RegistryImage::pushed(&in_registry(&tag("a")));
    let (config, _) = manifest_digests(&in_registry(&cache));
    let (base_config, base_layers) = base_digests();

    let b = lazy_runner(&proxy, FILES);
    proxy.take();
    let from_cache = format!("type=registry,ref={cache}");
    let (id_b, progress) = b.build(&["--cache-from", &from_cache, "--push", "-t", &tag("b")]);
    let pushed_b = RegistryImage::pushed(&in_registry(&tag("b")));
    let counts = proxy.take();
    assert_eq!(
        step_results(&progress),
        ["CACHED (remote)"; 3],
        "{progress}"
    );
    assert!(
        counts.received < BIG_LAYER / 4 && counts.sent < BIG_LAYER / 4,
        "{counts:?}\n{progress}"
    );
    assert_eq!(
        layer_gets(counts, &[&config, &base_config]),
        Vec::<String>::new(),
        "{progress}"
    );
    assert!(progress.contains("mount from"), "{progress}");
    assert_eq!(id_a, id_b);
    assert_eq!(pushed_a.digest(), pushed_b.digest());
    // The base's layers are records in B's store, not files.
    let (_, pushed_layers) = manifest_digests(&in_registry(&tag("b")));
    assert!(base_layers.iter().all(|l| pushed_layers.contains(l)));
    for layer in &base_layers {
        let blob = b.store().join("blobs/sha256").join(&layer[7..]);
        assert!(!blob.exists(), "{layer} was fetched");
    }
}

/// Issue 18, lazy import: a layer blob, of the cache or of the base image, is fetched once,
/// when something needs it. An OCI layout output of a fully cached build fetches each of
/// the image's layers once, and is A's image; a change in the last step fetches the layers
/// below it (the base's too), not the one the step made before; a RUN that misses after
/// the cached steps fetches the base and the cache's layers once each.
#[test]
#[ignore = "needs root and a registry"]
fn lazy_layers_are_fetched_once_when_files_or_bytes_are_needed() {
    needs_root_and_registry();
    let proxy = CountingProxy::start();
    let cache = format!("{}/cache-fetch-{}:1", proxy.addr, std::process::id());
    let in_registry = cache.replacen(&proxy.addr, &registry_by_ip(), 1);
    let a = lazy_runner(&proxy, FILES);
    let (id_a, _) = a.build(&["--cache-to", &format!("type=registry,ref={cache},mode=max")]);
    let _cache = RegistryImage::pushed(&in_registry);
    // big, small, COPY: as the steps made them.
    let (config, layers) = manifest_digests(&in_registry);
    assert_eq!(layers.len(), 3, "{layers:?}");
    let (base_config, base_layers) = base_digests();
    let with_base = |mut v: Vec<String>| {
        v.extend(base_layers.iter().cloned());
        sorted(v)
    };

    let b = lazy_runner(&proxy, FILES);
    let out = b.dir.path().join("image.tar");
    proxy.take();
    let (id_b, progress) = b.build(&[
        "--cache-from",
        &cache,
        "-o",
        &format!("type=oci,dest={}", out.display()),
    ]);
    let counts = proxy.take();
    assert_eq!(
        step_results(&progress),
        ["CACHED (remote)"; 3],
        "{progress}"
    );
    assert_eq!(
        layer_gets(counts, &[&config, &base_config]),
        with_base(layers.clone()),
        "{progress}"
    );
    assert_eq!(id_a, id_b);
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&out));
    for layer in layers.iter().chain(&base_layers) {
        let name = format!("blobs/sha256/{}", layer.trim_start_matches("sha256:"));
        assert!(listing.lines().any(|l| l == name), "{name}:\n{listing}");
    }

    let changed = extra_changed();
    let c = lazy_runner(&proxy, &changed);
    proxy.take();
    let (_, progress) = c.build(&["--cache-from", &cache]);
    let counts = proxy.take();
    assert_eq!(
        step_results(&progress),
        ["CACHED (remote)", "CACHED (remote)", "DONE"],
        "{progress}"
    );
    assert_eq!(
        layer_gets(counts, &[&config, &base_config]),
        with_base(layers[..2].to_vec()),
        "{progress}"
    );

    let d = lazy_runner(&proxy, FILES);
    let more = "RUN cat /extra.txt /small > /both\n";
    std::fs::write(d.ctx().join("Dockerfile"), lazy_dockerfile(&proxy, more)).unwrap();
    proxy.take();
    let (_, progress) = d.build(&["--cache-from", &cache]);
    let counts = proxy.take();
    assert_eq!(
        step_results(&progress),
        [
            "CACHED (remote)",
            "CACHED (remote)",
            "CACHED (remote)",
            "DONE"
        ],
        "{progress}"
    );
    assert_eq!(
        layer_gets(counts, &[&config, &base_config]),
        with_base(layers.clone()),
        "{progress}"
    );
}

/// Issue 18, lazy base images: a push to another registry than the base's fetches the
/// base's layers (and uploads them) when the destination lacks them, and fetches nothing
/// when the destination repository has them already (a CI runner pushing a new version of
/// its app): the push asks (HEAD) before it fetches.
#[test]
#[ignore = "needs root and a registry"]
fn a_push_elsewhere_fetches_the_base_only_when_the_destination_lacks_it() {
    needs_root_and_registry();
    let proxy = CountingProxy::start();
    // The registry by its other name: another registry to the references.
    let dest = format!(
        "{}/cache-elsewhere-{}:1",
        registry_by_ip(),
        std::process::id()
    );
    let (base_config, base_layers) = base_digests();
    let job = |n: u32| {
        let runner = Runner::new(FILES);
        let dockerfile = format!("FROM {}/busybox\nENV JOB={n}\n", proxy.addr);
        std::fs::write(runner.ctx().join("Dockerfile"), dockerfile).unwrap();
        proxy.take();
        let (_, progress) = runner.build(&["--push", "-t", &dest]);
        let pushed = RegistryImage::pushed(&dest);
        (layer_gets(proxy.take(), &[&base_config]), progress, pushed)
    };
    let (gets, progress, _first) = job(1);
    assert_eq!(gets, sorted(base_layers.clone()), "{progress}");
    let (gets, progress, _second) = job(2);
    assert_eq!(gets, Vec::<String>::new(), "{progress}");
    assert!(progress.contains("already"), "{progress}");
}

/// Issue 18, lazy base images: a build on an empty store whose steps need no files keeps
/// the base's layers as remote layers (no blob fetched); `images`, `inspect` and `history`
/// show the tag all the same; a docker archive output then fetches them once, and the
/// archive loads in docker and runs.
#[test]
#[ignore = "needs root, docker and a registry"]
fn a_lazy_base_is_listed_and_its_docker_archive_loads_and_runs() {
    needs_root_docker_and_registry();
    let runner = Runner::new(FILES);
    let tag = format!("rbuild-test/lazy-base-{}:1", std::process::id());
    let _images = DockerImages(vec![tag.clone()]);
    std::fs::write(
        runner.ctx().join("Dockerfile"),
        format!("FROM {BASE}\nENV LAZY=yes\nCMD [\"sh\", \"-c\", \"echo lazy-$LAZY\"]\n"),
    )
    .unwrap();
    let (_, progress) = runner.build(&["-t", &tag]);
    let store = runner.store();
    let (_, base_layers) = base_digests();
    let fetched = |layer: &str| store.join("blobs/sha256").join(&layer[7..]).exists();
    assert!(!base_layers.iter().any(|l| fetched(l)), "{progress}");
    assert!(!progress.contains("extracting"), "{progress}");
    let images = run_ok(rbuild_cmd(&store).arg("images"));
    assert!(images.contains(&format!("rbuild-test/lazy-base-{}", std::process::id())));
    let inspect: serde_json::Value =
        serde_json::from_str(&run_ok(rbuild_cmd(&store).args(["inspect", &tag]))).unwrap();
    assert_eq!(
        inspect["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        base_layers.len()
    );
    let history = run_ok(rbuild_cmd(&store).args(["history", &tag]));
    assert!(history.contains("ENV LAZY=yes"), "{history}");

    let archive = runner.dir.path().join("image.tar");
    let dest = format!("type=docker,dest={}", archive.display());
    let (_, progress) = runner.build(&["-t", &tag, "-o", &dest]);
    assert!(base_layers.iter().all(|l| fetched(l)), "{progress}");
    run_ok(docker().arg("load").arg("-i").arg(&archive));
    let out = run_ok(docker().args(["run", "--rm", "--network=none", &tag]));
    assert_eq!(out, "lazy-yes\n");
}

/// Issue 18: `--cache-to type=inline --push` puts the cache (mode=min, as BuildKit's
/// inline cache) in the pushed manifest's annotation; a cold runner with
/// `--cache-from IMAGE` reruns the build stage (not in a min cache) but takes every step
/// of the image from the cache, and gets the same image. Without --push there is nowhere
/// to put it: an error that says so.
#[test]
#[ignore = "needs root and a registry"]
fn inline_cache_rides_in_the_pushed_image() {
    needs_root_and_registry();
    let image = cache_ref("inline");
    let a = Runner::new(FILES);
    let (id_a, _) = a.build(&["--cache-to", "type=inline", "--push", "-t", &image]);
    let _image = RegistryImage::pushed(&image);
    let b = Runner::new(FILES);
    let (id_b, progress) = b.build(&["--cache-from", &image]);
    assert!(progress.contains("RAN-BUILD"), "{progress}");
    assert!(!progress.contains("RAN-FINAL"), "{progress}");
    assert!(progress.contains("CACHED (remote)"), "{progress}");
    assert_eq!(id_a, id_b);
    let err = a.build_fails(&["--cache-to", "type=inline"]);
    assert!(err.contains("type=inline needs --push"), "{err}");
}

/// `rbuild du --format json`: the bytes the store holds, the images aside (they are the
/// layers counted again), and what it says a prune could reclaim.
fn stored_bytes(store: &Path) -> (u64, u64) {
    let out = run_ok(rbuild_cmd(store).args(["du", "--format", "json"]));
    let usage: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let bytes = |u: &serde_json::Value| u["bytes"].as_u64().unwrap();
    let total = usage
        .iter()
        .filter(|u| u["kind"] != "Images" && u["kind"] != "Reclaimable")
        .map(bytes)
        .sum();
    let reclaimable = usage.iter().find(|u| u["kind"] == "Reclaimable").map(bytes);
    (total, reclaimable.expect("du lists what is reclaimable"))
}

/// Issue 18, long-lived runners: `prune --filter until=` removes the records no build used
/// for that long, `prune --keep-storage SIZE` the least recently used ones until the store
/// fits; neither touches what a tag uses, and a build that used a record makes it recent.
#[test]
#[ignore = "needs root and a registry"]
fn prune_removes_the_least_recently_used_records_and_keeps_tags() {
    needs_root_and_registry();
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    // Each build makes a 300 kB layer of its own; `x` is tagged.
    let build = |name: &str| -> String {
        let ctx = dir.path().join(name);
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM {BASE}\nRUN echo ran-{name} | tr a-z A-Z && head -c 300000 /dev/urandom > /{name}\n"
            ),
        )
        .unwrap();
        let mut cmd = rbuild(&store);
        if name == "x" {
            cmd.args(["-t", "lru-x"]);
        }
        let out = run(cmd.arg(&ctx));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let ran =
        |progress: &str, name: &str| progress.contains(&format!("RAN-{}", name.to_uppercase()));
    for name in ["x", "a", "b"] {
        assert!(ran(&build(name), name));
    }
    let prune = |args: &[&str]| run_ok(rbuild_cmd(&store).arg("prune").args(args));

    // b and x were last used over 2 s ago, a was used again just now.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!ran(&build("a"), "a"));
    let before = keys(&store);
    let out = prune(&["--filter", "until=1s"]);
    assert!(out.contains("Deleted 1 cache record, 1 layer"), "{out}");
    assert_eq!(before.difference(&keys(&store)).count(), 1);
    assert!(!ran(&build("a"), "a"), "a was used within the last second");
    assert!(!ran(&build("x"), "x"), "x is tagged");
    assert!(ran(&build("b"), "b"));

    // Now a was used before b: a store just too big for both keeps b.
    let (full, reclaimable) = stored_bytes(&store);
    // a's and b's layers and records, and what the builds left in the trash.
    assert!(
        (600_000..full).contains(&reclaimable),
        "{reclaimable} of {full}"
    );
    let keep = full - 100_000;
    let out = prune(&["--keep-storage", &keep.to_string()]);
    assert!(out.contains("Deleted 1 cache record, 1 layer"), "{out}");
    assert!(stored_bytes(&store).0 <= keep);
    assert!(!ran(&build("b"), "b"));
    assert!(!ran(&build("x"), "x"));
    assert!(ran(&build("a"), "a"));
    // The tag still names a whole image.
    run_ok(
        rbuild_cmd(&store)
            .args(["save", "lru-x", "-o"])
            .arg(dir.path().join("x.tar")),
    );

    // Nothing fits in 0 bytes, but the tag stays (and keeps its cache, as BuildKit's
    // records an image shares); --all takes the tag's records too.
    prune(&["--keep-storage", "0"]);
    assert_eq!(
        stored_bytes(&store).1,
        0,
        "du counts as reclaimable what prune keeps"
    );
    assert!(!ran(&build("x"), "x"));
    assert!(ran(&build("a"), "a") && ran(&build("b"), "b"));
    prune(&["--all", "--keep-storage", "0"]);
    assert!(ran(&build("x"), "x"));

    // Bad values: exit 1, the flag and what it takes named, nothing removed.
    let before = keys(&store);
    for (args, says) in [
        (&["--keep-storage", "lots"][..], "--keep-storage `lots`"),
        (
            &["--filter", "until=2024-01-01T00:00:00Z"],
            "expects a duration",
        ),
        (&["--filter", "type=regular"], "`until=DURATION` only"),
    ] {
        let out = run(rbuild_cmd(&store).arg("prune").args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(keys(&store), before);
}

/// Issue 18: a `COPY --link` layer is made on an empty filesystem and keyed without its
/// base (plan::link_key), so its own record travels with `--cache-to` too: runner B, whose
/// base image moved since A exported, still takes the copy from A's cache (the RUN after
/// it, on the new base, runs).
#[test]
#[ignore = "needs root and a registry"]
fn linked_copies_come_from_the_cache_after_a_base_image_bump() {
    needs_root_and_registry();
    let base = cache_ref("linkbase");
    let push_base = |version: &str| {
        let ctx = TempDir::new().unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            format!("FROM {BASE}\nRUN echo {version} > /version\n"),
        )
        .unwrap();
        let store = ctx.path().join("store");
        run_ok(
            rbuild(&store)
                .args(["-q", "--push", "-t", &base])
                .arg(ctx.path()),
        );
        RegistryImage::pushed(&base)
    };
    let _v1 = push_base("v1");
    let reference = cache_ref("link");
    let dockerfile = format!(
        "FROM {base}\nCOPY --link src /src\nRUN echo ran-after | tr a-z A-Z && cat /version /src/a.txt > /seen\n"
    );
    let a = Runner::new(FILES);
    std::fs::write(a.ctx().join("Dockerfile"), &dockerfile).unwrap();
    a.build(&["--cache-to", &format!("type=registry,ref={reference}")]);
    let _cache = RegistryImage::pushed(&reference);

    let _v2 = push_base("v2");
    let b = Runner::new(FILES);
    std::fs::write(b.ctx().join("Dockerfile"), &dockerfile).unwrap();
    let out = b.dir.path().join("out.tar");
    let (_, progress) = b.build(&[
        "--cache-from",
        &format!("type=registry,ref={reference}"),
        "-o",
        &format!("type=tar,dest={}", out.display()),
    ]);
    let ends = step_ends(&progress);
    let copy = ends
        .iter()
        .find(|(label, _)| label.contains("COPY --link"))
        .unwrap_or_else(|| panic!("no COPY step:\n{progress}"));
    assert_eq!(copy.1, "CACHED (remote)", "{progress}");
    assert!(progress.contains("RAN-AFTER"), "{progress}");
    let files = listing(std::fs::File::open(&out).unwrap());
    assert!(files.contains_key("src/a.txt") && files.contains_key("seen"));
}
