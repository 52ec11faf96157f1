//! End-to-end tests of the executor and CLI features: the real `rbuild` binary builds small
//! Dockerfiles (written into a temporary context) on busybox from the run's registry, as root,
//! through the real sandbox, overlay mounts, registry and docker engine. Each test has a store
//! of its own unless sharing one is the point.
//!
//! Covered: `--secret` (file, env, target, required) and that a secret never reaches the store
//! or an output; `ADD <url>` (name, mode, `--checksum`, archives not extracted, unreachable
//! hosts); `--iidfile`, `--metadata-file`, `-q`, plain progress, `-f -`, `--target`, unused
//! `--build-arg` warnings, `--platform`; the build cache (full hits that run nothing,
//! `--no-cache`, COPY sources by content not mtime, build args); `--load`, `--build-context`,
//! ONBUILD, multi-stage graphs; failing steps and bad command lines.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use support::*;

const BASE: InRegistry = InRegistry("busybox");

/// A build context holding `Dockerfile` and `files` (path -> content).
fn context(dockerfile: &str, files: &[(&str, &[u8])]) -> TempDir {
    let dir = tempdir();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Build `ctx` with `args`; panics with the output when the build fails.
fn build_ok(store: &Path, ctx: &Path, args: &[&str]) -> Output {
    let out = run(rbuild(store).args(args).arg(ctx));
    assert!(
        out.status.success(),
        "rbuild {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    assert_no_panic(&out);
    out
}

/// Build `ctx` with `args`, expecting a user error: exit code 1, no panic.
fn build_fails(store: &Path, ctx: &Path, args: &[&str]) -> String {
    let out = run(rbuild(store).args(args).arg(ctx));
    assert_eq!(
        out.status.code(),
        Some(1),
        "rbuild {args:?} should fail with exit code 1:\nstderr:\n{}",
        stderr(&out)
    );
    assert_no_panic(&out);
    stderr(&out)
}

fn assert_no_panic(out: &Output) {
    let err = stderr(out);
    assert!(
        !err.contains("panicked") && out.status.code() != Some(101),
        "rbuild panicked or hit an internal error:\n{err}"
    );
}

/// Build `ctx` into a rootfs directory (`-o type=local`) and return it.
fn build_rootfs(store: &Path, ctx: &Path, args: &[&str]) -> (TempDir, Output) {
    let out_dir = tempdir();
    let dest = out_dir.path().join("rootfs");
    let spec = format!("type=local,dest={}", dest.display());
    let mut all = vec!["-o", &spec];
    all.extend_from_slice(args);
    let out = build_ok(store, ctx, &all);
    (out_dir, out)
}

fn rootfs(dir: &TempDir) -> PathBuf {
    dir.path().join("rootfs")
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `rbuild inspect REF` as JSON (Config, Digest, Id, Manifest, ...).
fn inspect(store: &Path, reference: &str) -> serde_json::Value {
    let out = run_ok(rbuild_cmd(store).args(["inspect", reference]));
    serde_json::from_str(&out).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every regular file under `root` (or `root` itself) whose bytes contain `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p);
            }
        }
    }
    hits
}

/// Lines of the file a cache mount collected: every execution of a counting RUN appends one.
/// Cache mounts live under the store's `mounts/` directory.
fn cache_mount_lines(store: &Path, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![store.join("mounts")];
    while let Some(p) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == name) {
                found.push(path);
            }
        }
    }
    assert!(
        found.len() <= 1,
        "{name} in several cache mounts: {found:?}"
    );
    found
        .first()
        .map(|p| read(p).lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// `#N CACHED` lines of a plain progress log.
fn cached_count(progress: &str) -> usize {
    progress
        .lines()
        .filter(|l| l.starts_with('#') && l.ends_with(" CACHED"))
        .count()
}

/// The label lines (`#N [stage i/n] TEXT`) of a plain progress log whose step was CACHED.
fn cached_steps(progress: &str) -> Vec<String> {
    step_ends(progress)
        .into_iter()
        .filter(|(_, end)| end == "CACHED")
        .map(|(label, _)| label)
        .collect()
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A small HTTP/1.0 server on 127.0.0.1 serving `files` (URL path -> body) from a thread; it
/// answers at most 32 requests and ends with the test process.
fn serve(files: Vec<(&'static str, Vec<u8>)>) -> u16 {
    serve_shared(Arc::new(Mutex::new(files)))
}

/// What [`serve_shared`] serves: URL path -> body, changeable while it runs.
type Served = Arc<Mutex<Vec<(&'static str, Vec<u8>)>>>;

/// [`serve`] with files the test may change while the server runs.
fn serve_shared(files: Served) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(32) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let files = files.lock().unwrap();
            let response = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let mut r = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    port
}

fn tar_gz(name: &str, content: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, content).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. Secrets

#[test]
#[ignore = "needs root, docker and a registry"]
fn secrets_reach_run_as_files_targets_and_env_but_never_the_image_or_store() {
    needs_root_docker_and_registry();
    const FILE_SECRET: &[u8] = b"file-secret-9f3a1c77e2";
    const ENV_SECRET: &str = "env-secret-51be0d4c8a";
    let store = tempdir();
    let secrets = tempdir();
    let secret_file = secrets.path().join("tok");
    std::fs::write(&secret_file, FILE_SECRET).unwrap();
    // The RUNs record only digests of what they saw, so the values must not appear anywhere.
    let ctx = context(
        &format!(
            "FROM {BASE}\n\
             RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && \
             sha256sum /run/secrets/tok | cut -d' ' -f1 > /file-sum && stat -c %a /run/secrets/tok > /file-mode\n\
             RUN --mount=type=secret,id=tok,target=/etc/app/tok.conf \
             sha256sum /etc/app/tok.conf | cut -d' ' -f1 > /target-sum && test ! -e /run/secrets/tok\n\
             RUN --mount=type=secret,id=envtok,env=TOK \
             printf %s \"$TOK\" | sha256sum | cut -d' ' -f1 > /env-sum && test ! -e /run/secrets/envtok\n\
             RUN --mount=type=secret,id=absent true\n"
        ),
        &[],
    );
    let out_dir = tempdir();
    let archive = out_dir.path().join("image.tar");
    let local = out_dir.path().join("rootfs");
    let secret_arg = format!("id=tok,src={}", secret_file.display());
    let out = run(rbuild(store.path())
        .env("RBUILD_TEST_SECRET", ENV_SECRET)
        .args(["--secret", &secret_arg])
        .args(["--secret", "id=envtok,env=RBUILD_TEST_SECRET"])
        .args(["-t", "rbuild-test/features-secrets:1"])
        .arg("-o")
        .arg(format!("type=docker,dest={}", archive.display()))
        .arg("-o")
        .arg(format!("type=local,dest={}", local.display()))
        .arg(ctx.path()));
    assert!(out.status.success(), "build failed:\n{}", stderr(&out));

    let file_sum = sha256_hex(FILE_SECRET);
    assert_eq!(read(local.join("file-sum")).trim(), file_sum);
    assert_eq!(read(local.join("file-mode")).trim(), "400");
    assert_eq!(read(local.join("target-sum")).trim(), file_sum);
    assert_eq!(
        read(local.join("env-sum")).trim(),
        sha256_hex(ENV_SECRET.as_bytes())
    );
    // The mountpoints the sandbox had to create are not part of the layers.
    assert!(!local.join("etc/app/tok.conf").exists());
    assert!(!local.join("run/secrets/tok").exists());

    for needle in [FILE_SECRET, ENV_SECRET.as_bytes()] {
        for root in [store.path(), archive.as_path(), local.as_path()] {
            let hits = files_containing(root, needle);
            assert!(
                hits.is_empty(),
                "secret `{}` leaked into {hits:?}",
                String::from_utf8_lossy(needle)
            );
        }
        assert!(!stderr(&out).contains(std::str::from_utf8(needle).unwrap()));
    }
    // A secret is not part of the cache key (BuildKit): a new value reuses the steps.
    std::fs::write(&secret_file, b"another value").unwrap();
    let again = run(rbuild(store.path())
        .env("RBUILD_TEST_SECRET", "yet another value")
        .args(["--secret", &secret_arg])
        .args(["--secret", "id=envtok,env=RBUILD_TEST_SECRET"])
        .arg(ctx.path()));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(cached_count(&stderr(&again)), 4, "{}", stderr(&again));

    let config = inspect(store.path(), "rbuild-test/features-secrets:1");
    let text = config.to_string();
    assert!(!text.contains("file-secret") && !text.contains("env-secret"));

    // A required secret that was not given stops the build and names it.
    let ctx = context(
        &format!("FROM {BASE}\nRUN --mount=type=secret,id=needed,required=true true\n"),
        &[],
    );
    let err = build_fails(store.path(), ctx.path(), &[]);
    assert!(
        err.contains("secret needed: not found") && err.contains("Dockerfile:2"),
        "unclear error:\n{err}"
    );
    // An env= source whose variable is unset gives no secret, not an empty one.
    let unset = "RBUILD_TEST_SURELY_UNSET_VARIABLE";
    let spec = format!("id=needed,env={unset}");
    let out = run(rbuild(store.path())
        .env_remove(unset)
        .args(["--secret", &spec])
        .arg(ctx.path()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(unset), "{}", stderr(&out));
    let optional = context(
        &format!("FROM {BASE}\nRUN --mount=type=secret,id=needed test ! -e /run/secrets/needed\n"),
        &[],
    );
    let out = run(rbuild(store.path())
        .env_remove(unset)
        .args(["--secret", &spec])
        .arg(optional.path()));
    assert!(out.status.success(), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// 2. ADD <url>

#[test]
#[ignore = "needs root, docker and a registry"]
fn add_url_downloads_with_mode_0600_checks_checksums_and_keeps_archives_whole() {
    needs_root_docker_and_registry();
    let hello = b"hello over http\n".to_vec();
    let archive = tar_gz("inside.txt", b"inside the archive\n");
    let port = serve(vec![
        ("/files/hello.txt", hello.clone()),
        ("/files/bundle.tar.gz", archive.clone()),
    ]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let right = format!("sha256:{}", sha256_hex(&hello));
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\n\
             ADD {} /dl/\n\
             ADD --checksum={right} {} /checked.txt\n\
             ADD {} /archives/\n\
             ADD --unpack=true {} /unpacked/\n",
            url("/files/hello.txt"),
            url("/files/hello.txt"),
            url("/files/bundle.tar.gz"),
            url("/files/bundle.tar.gz"),
        ),
        &[],
    );
    let (out, _) = build_rootfs(store.path(), ctx.path(), &[]);
    let root = rootfs(&out);
    let got = root.join("dl/hello.txt");
    assert_eq!(std::fs::read(&got).unwrap(), hello, "named after the URL");
    assert_eq!(
        std::fs::metadata(&got).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(std::fs::read(root.join("checked.txt")).unwrap(), hello);
    // BuildKit never extracts a remote archive.
    assert_eq!(
        std::fs::read(root.join("archives/bundle.tar.gz")).unwrap(),
        archive
    );
    assert!(!root.join("archives/inside.txt").exists());
    // ... unless --unpack=true asks for it.
    assert_eq!(
        std::fs::read(root.join("unpacked/inside.txt")).unwrap(),
        b"inside the archive\n"
    );
    assert!(!root.join("unpacked/bundle.tar.gz").exists());

    // A git repository is cloned with git (tests/git.rs), never downloaded as a web page:
    // this server speaks no git, so resolving the ref fails and says so.
    let ctx = context(
        &format!("FROM {BASE}\nADD {} /src\n", url("/repo.git#main")),
        &[],
    );
    let err = build_fails(store.path(), ctx.path(), &[]);
    assert!(
        err.contains(&url("/repo.git")) && err.contains("resolving `main`"),
        "{err}"
    );

    // A wrong checksum fails and says which URL and which digests.
    let wrong = format!("sha256:{}", sha256_hex(b"something else"));
    let ctx = context(
        &format!(
            "FROM {BASE}\nADD --checksum={wrong} {} /x\n",
            url("/files/hello.txt")
        ),
        &[],
    );
    let err = build_fails(store.path(), ctx.path(), &[]);
    assert!(
        err.contains(&url("/files/hello.txt"))
            && err.contains("checksum")
            && err.contains(&wrong)
            && err.contains("Dockerfile:2"),
        "unclear checksum error:\n{err}"
    );

    // An unreachable URL names the URL.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!(
        "http://127.0.0.1:{}/gone.txt",
        closed.local_addr().unwrap().port()
    );
    drop(closed);
    let ctx = context(&format!("FROM {BASE}\nADD {dead} /gone.txt\n"), &[]);
    let err = build_fails(store.path(), ctx.path(), &[]);
    assert!(
        err.contains(&dead) && err.contains("Connection refused"),
        "error does not name the URL and the cause:\n{err}"
    );

    // So does a 404.
    let missing = url("/files/missing.txt");
    let ctx = context(&format!("FROM {BASE}\nADD {missing} /m.txt\n"), &[]);
    let err = build_fails(store.path(), ctx.path(), &[]);
    assert!(
        err.contains(&missing) && err.contains("404"),
        "unclear HTTP error:\n{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. CLI: result files, quiet and plain progress, stdin, target, warnings, platform

#[test]
#[ignore = "needs root, docker and a registry"]
fn iidfile_metadata_file_and_quiet_agree_on_the_image() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(&format!("FROM {BASE}\nRUN echo hi > /hi\n"), &[]);
    let files = tempdir();
    let iid = files.path().join("iid");
    let meta = files.path().join("meta.json");
    let out = run(rbuild(store.path())
        .arg("-q")
        .args(["-t", "rbuild-test/features-iid:1"])
        .arg("--iidfile")
        .arg(&iid)
        .arg("--metadata-file")
        .arg(&meta)
        .arg(ctx.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let re = regex::Regex::new(r"^sha256:[0-9a-f]{64}\n$").unwrap();
    assert!(
        re.is_match(&printed),
        "-q must print only the image id: {printed:?}"
    );
    let id = printed.trim();
    assert_eq!(read(&iid), id, "--iidfile holds the image id, no newline");

    let meta: serde_json::Value = serde_json::from_str(&read(&meta)).unwrap();
    let info = inspect(store.path(), "rbuild-test/features-iid:1");
    assert_eq!(meta["containerimage.config.digest"], id);
    assert_eq!(info["Id"], id);
    assert_eq!(meta["containerimage.digest"], info["Digest"]);
    assert_eq!(
        meta["image.name"], "docker.io/rbuild-test/features-iid:1",
        "{meta}"
    );
    assert_eq!(
        meta["containerimage.descriptor"]["digest"], info["Digest"],
        "{meta}"
    );
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn plain_progress_numbers_steps_and_marks_cached_ones() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\nENV A=1\nCOPY a.txt /a.txt\nLABEL l=1\nRUN echo progress-output-line\nCMD [\"sh\"]\n"
        ),
        &[("a.txt", b"a\n")],
    );
    let first = stderr(&build_ok(store.path(), ctx.path(), &[]));
    let re = |s: &str| regex::Regex::new(s).unwrap();
    assert!(
        re(&format!(
            r"(?m)^#\d+ \[1/3\] FROM {}",
            regex::escape(&BASE.to_string())
        ))
        .is_match(&first),
        "a single stage's steps carry no stage name and only FROM, RUN, COPY, ADD and \
         WORKDIR are numbered, as in BuildKit:\n{first}"
    );
    assert!(
        re(r"(?m)^#\d+ \[3/3\] RUN echo progress-output-line$").is_match(&first),
        "{first}"
    );
    assert!(
        re(r"(?m)^#\d+ \d+\.\d+ progress-output-line$").is_match(&first),
        "{first}"
    );
    assert!(re(r"(?m)^#\d+ DONE \d+\.\ds$").is_match(&first), "{first}");
    assert_eq!(cached_count(&first), 0, "{first}");

    let second = stderr(&build_ok(store.path(), ctx.path(), &[]));
    let cached = cached_steps(&second);
    assert_eq!(cached.len(), 2, "{second}");
    assert!(cached[0].ends_with("COPY a.txt /a.txt"), "{cached:?}");
    assert!(
        cached[1].ends_with("RUN echo progress-output-line"),
        "{cached:?}"
    );
    assert!(
        !re(r"(?m)^#\d+ \d+\.\d+ progress-output-line$").is_match(&second),
        "a cached step printed output:\n{second}"
    );
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn dockerfile_from_stdin_and_target_stage() {
    needs_root_docker_and_registry();
    let store = tempdir();
    // The context has no Dockerfile: `-f -` must not need one.
    let ctx = tempdir();
    std::fs::write(ctx.path().join("data.txt"), "data\n").unwrap();
    let dockerfile = format!(
        "FROM {BASE} AS first\nCOPY data.txt /from-first\n\
         FROM {BASE} AS second\nRUN echo second > /from-second\n\
         FROM first AS last\nRUN echo last > /from-last\n"
    );
    let out_dir = tempdir();
    let dest = out_dir.path().join("rootfs");
    let mut child = rbuild(store.path())
        .args(["-f", "-", "--target", "second", "-o"])
        .arg(format!("type=local,dest={}", dest.display()))
        .arg(ctx.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(dest.join("from-second")), "second\n");
    assert!(!dest.join("from-first").exists() && !dest.join("from-last").exists());
    // Stages the target does not need are not built.
    assert!(!stderr(&out).contains("COPY data.txt"), "{}", stderr(&out));

    // Without --target the last stage is the image.
    std::fs::write(ctx.path().join("Dockerfile"), &dockerfile).unwrap();
    let (out, _) = build_rootfs(store.path(), ctx.path(), &[]);
    assert_eq!(read(rootfs(&out).join("from-first")), "data\n");
    assert_eq!(read(rootfs(&out).join("from-last")), "last\n");
    assert!(!rootfs(&out).join("from-second").exists());

    // An unknown target is a user error that names it.
    let err = build_fails(store.path(), ctx.path(), &["--target", "nosuchstage"]);
    assert!(err.contains("nosuchstage"), "{err}");
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn unused_build_arg_warns_and_used_one_does_not() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!("FROM {BASE}\nARG USED\nRUN echo $USED > /v\n"),
        &[],
    );
    let out = build_ok(
        store.path(),
        ctx.path(),
        &["--build-arg", "USED=1", "--build-arg", "NOBODY_USES_ME=2"],
    );
    let err = stderr(&out);
    let warning = err
        .lines()
        .find(|l| l.contains("NOBODY_USES_ME"))
        .unwrap_or_else(|| panic!("no warning about the unused build arg:\n{err}"));
    assert!(
        warning.to_lowercase().contains("warn") && warning.contains("not consumed"),
        "{warning}"
    );
    assert!(!warning.contains("USED]") && !warning.contains("[USED"));
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn a_platform_the_base_lacks_is_refused_and_the_host_is_accepted() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(&format!("FROM {BASE}\nRUN true\n"), &[]);
    let other = if host_arch() == "arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    // busybox:latest is a single-platform image (tests/platforms.rs builds for several).
    let err = build_fails(store.path(), ctx.path(), &["--platform", other]);
    assert!(
        err.contains(&format!("no matching manifest for {other}"))
            && err.contains(&format!("available: linux/{}", host_arch())),
        "unclear platform error:\n{err}"
    );
    let host = format!("linux/{}", host_arch());
    build_ok(store.path(), ctx.path(), &["--platform", &host]);
    let info = inspect_last(store.path(), ctx.path(), &["--platform", &host]);
    assert_eq!(info["Config"]["architecture"], host_arch());
    assert_eq!(info["Config"]["os"], "linux");
}

/// Build with a tag and inspect the result.
fn inspect_last(store: &Path, ctx: &Path, args: &[&str]) -> serde_json::Value {
    let tag = "rbuild-test/features-last:1";
    let mut all = vec!["-t", tag];
    all.extend_from_slice(args);
    build_ok(store, ctx, &all);
    inspect(store, tag)
}

// ---------------------------------------------------------------------------------------------
// 4. The build cache

#[test]
#[ignore = "needs root, docker and a registry"]
fn rebuild_hits_the_cache_for_every_step_and_no_cache_runs_them_again() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\n\
             COPY a.txt /a.txt\n\
             RUN --mount=type=cache,id=counter,target=/cache echo run >> /cache/executions\n\
             WORKDIR /work\n\
             RUN echo second > two\n\
             ENV X=1\n"
        ),
        &[("a.txt", b"a\n")],
    );
    let first = stderr(&build_ok(store.path(), ctx.path(), &[]));
    assert_eq!(cache_mount_lines(store.path(), "executions").len(), 1);
    assert_eq!(cached_count(&first), 0, "{first}");

    let second = stderr(&build_ok(store.path(), ctx.path(), &[]));
    assert_eq!(
        cache_mount_lines(store.path(), "executions").len(),
        1,
        "a cached RUN was executed again:\n{second}"
    );
    // COPY, RUN, WORKDIR, RUN: all from the cache.
    assert_eq!(cached_count(&second), 4, "{second}");
    assert!(
        second.contains("(4 steps cached, 0 run)"),
        "summary:\n{second}"
    );

    let third = stderr(&build_ok(store.path(), ctx.path(), &["--no-cache"]));
    assert_eq!(cache_mount_lines(store.path(), "executions").len(), 2);
    assert_eq!(cached_count(&third), 0, "{third}");

    // Regression (issue 15): exec built the cache mount and stat cache paths itself, so
    // `prune --all` removed neither. Plain prune keeps them, as BuildKit keeps cache mounts.
    let stat_cache = store.path().join("statcache");
    let prune = |all: &[&str]| run_ok(rbuild_cmd(store.path()).arg("prune").args(all));
    prune(&[]);
    assert_eq!(cache_mount_lines(store.path(), "executions").len(), 2);
    assert!(stat_cache.exists());
    prune(&["--all"]);
    assert!(cache_mount_lines(store.path(), "executions").is_empty());
    assert!(!store.path().join("mounts/cache").exists());
    assert!(!stat_cache.exists());
}

/// Issue 23: a rebuild reads the names of directories unchanged since an earlier build
/// from the store (`statcache.dirs`), not from the directory. A name added to, removed
/// from or renamed in such a directory must still reach the COPY, as a fresh build's
/// would. The context's directory is old enough for its listing to be remembered (older
/// than the racy window), as a developer's checkout is.
#[test]
#[ignore = "needs root"]
fn names_changed_in_a_remembered_directory_reach_the_copy() {
    needs_root();
    let store = tempdir();
    let mut files: Vec<(String, &[u8])> =
        (0..12).map(|i| (format!("d/f{i:02}"), &b"x"[..])).collect();
    files.push(("d/sub/inner".into(), b"i"));
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    let ctx = context("FROM scratch\nCOPY d /d\n", &files);
    // Past the racy window (2 s), so the listing of `d` is remembered.
    std::thread::sleep(Duration::from_millis(2200));
    let names = |dir: &TempDir| {
        let mut n: Vec<String> = std::fs::read_dir(rootfs(dir).join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    let (first, _) = build_rootfs(store.path(), ctx.path(), &[]);
    // `d`'s names are remembered (`sub`, with one name, is listed each time).
    let dirs = std::fs::read(store.path().join("statcache.dirs")).unwrap();
    assert!(dirs.windows(3).any(|w| w == b"f11"));
    let (again, out) = build_rootfs(store.path(), ctx.path(), &[]);
    assert_eq!(cached_count(&stderr(&out)), 1, "{}", stderr(&out));
    assert_eq!(names(&again), names(&first));

    let d = ctx.path().join("d");
    let changes: [(&str, &dyn Fn()); 3] = [
        ("added", &|| std::fs::write(d.join("new"), "n").unwrap()),
        ("removed", &|| std::fs::remove_file(d.join("f03")).unwrap()),
        ("renamed", &|| {
            std::fs::rename(d.join("f04"), d.join("g04")).unwrap()
        }),
    ];
    for (what, change) in changes {
        change();
        let (built, out) = build_rootfs(store.path(), ctx.path(), &[]);
        assert_eq!(cached_count(&stderr(&out)), 0, "{what}: {}", stderr(&out));
        let mut want: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        want.sort();
        assert_eq!(names(&built), want, "a name {what} in d");
    }
}

/// `rbuild du` (issue 18): each kind counted as the store's own directories hold it, the
/// cache mount by the bytes a step wrote into it, the image by its layers' file data.
#[test]
#[ignore = "needs root and a registry"]
fn du_counts_what_the_store_holds_by_kind() {
    needs_root_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\n\
             COPY big /big\n\
             RUN --mount=type=cache,id=du,target=/c head -c 12345 /dev/zero > /c/f\n"
        ),
        &[("big", &[7u8; 100_000])],
    );
    build_ok(store.path(), ctx.path(), &["-t", "rbuild-test/du:1"]);
    let json = run_ok(rbuild_cmd(store.path()).args(["du", "--format", "json"]));
    let usage: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let get = |kind: &str| {
        let u = usage
            .iter()
            .find(|u| u["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind} in {json}"));
        (u["count"].as_u64().unwrap(), u["bytes"].as_u64().unwrap())
    };
    let entries = |dir: &str| std::fs::read_dir(store.path().join(dir)).unwrap().count() as u64;
    assert_eq!(get("Cache mounts"), (1, 12345));
    assert_eq!(get("Layers").0, entries("layers"));
    assert_eq!(get("Blobs").0, entries("blobs/sha256"));
    assert_eq!(get("Cache records").0, entries("cache"));
    let (images, image_bytes) = get("Images");
    // Ours and the base the build pulled (the store tags what it pulls).
    assert_eq!(images, 2);
    // Every layer here belongs to a tagged image (busybox, the 100,000-byte COPY, the
    // RUN's empty layer: the mount is not in it), each counted once.
    assert_eq!(image_bytes, get("Layers").1);
    assert!(image_bytes > 100_000, "{image_bytes}");
    let text = run_ok(rbuild_cmd(store.path()).arg("du"));
    assert!(
        text.starts_with("TYPE") && text.contains("Total on disk"),
        "{text}"
    );
}

/// `COPY --link` as BuildKit's MergeOp: the copy is made once on an empty filesystem, so a
/// new base reuses its layer (CACHED, the same diff_id) while the steps on the base run
/// again; a destination through a symlink of the base gets a real directory; `--chmod`
/// turns linking off (a plain copy that follows the symlink); `--chown` takes ids, `root`,
/// never a name. The image loads into docker with the directory where the link was.
#[test]
#[ignore = "needs root, docker and a registry"]
fn copy_link_layer_is_made_once_and_stacked_on_any_base() {
    use std::os::unix::fs::MetadataExt;
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE} AS base\n\
             ARG V\n\
             RUN mkdir /srv && ln -s /srv /app && ln -s /srv /app2 && echo $V > /v\n\
             FROM base\n\
             COPY --link a.txt /app/\n\
             COPY --link --chown=1000:root a.txt /owned/\n\
             COPY --link --chmod=600 a.txt /app2/chmod.txt\n\
             RUN cat /app/a.txt /v > /seen\n"
        ),
        &[("a.txt", b"a\n")],
    );
    let diff_ids = |tag: &str| -> Vec<String> {
        let info = inspect(store.path(), tag);
        info["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect()
    };
    let tag1 = "rbuild-test/link:1";
    let tag2 = "rbuild-test/link:2";
    build_ok(
        store.path(),
        ctx.path(),
        &["-t", tag1, "--build-arg", "V=1"],
    );
    let second = stderr(&build_ok(
        store.path(),
        ctx.path(),
        &["-t", tag2, "--build-arg", "V=2"],
    ));
    let cached = cached_steps(&second);
    assert_eq!(cached.len(), 2, "{second}");
    assert!(cached[0].ends_with("COPY --link a.txt /app/"), "{cached:?}");
    assert!(cached[1].contains("--chown=1000:root"), "{cached:?}");
    let (one, two) = (diff_ids(tag1), diff_ids(tag2));
    let n = one.len();
    assert_eq!(n, two.len());
    // ... base RUN, link, link, chmod copy, RUN: the base's RUN differs, the links do not.
    assert_ne!(one[n - 5], two[n - 5]);
    assert_eq!(one[n - 4..n - 2], two[n - 4..n - 2]);

    let (out, _) = build_rootfs(store.path(), ctx.path(), &["--build-arg", "V=2"]);
    let root = rootfs(&out);
    let app = std::fs::symlink_metadata(root.join("app")).unwrap();
    assert!(app.is_dir(), "/app should be a real directory now");
    assert_eq!(read(root.join("app/a.txt")), "a\n");
    assert!(!root.join("srv/a.txt").exists());
    assert!(std::fs::symlink_metadata(root.join("app2"))
        .unwrap()
        .is_symlink());
    assert_eq!(read(root.join("srv/chmod.txt")), "a\n");
    assert_eq!(read(root.join("seen")), "a\n2\n");
    let owned = std::fs::symlink_metadata(root.join("owned/a.txt")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), user::on_host(1000, 0));

    let archive = store.path().join("link.tar");
    build_ok(
        store.path(),
        ctx.path(),
        &[
            "--build-arg",
            "V=2",
            "-t",
            tag2,
            "-o",
            archive.to_str().unwrap(),
        ],
    );
    run_ok(docker().arg("load").arg("-i").arg(&archive));
    let seen = run_ok(docker().args([
        "run",
        "--rm",
        "--network=none",
        tag2,
        "sh",
        "-c",
        "test -d /app && ! test -L /app && cat /app/a.txt /srv/chmod.txt",
    ]));
    let _ = run(docker().args(["rmi", "-f", tag2]));
    assert_eq!(seen, "a\na\n");

    let named = context(
        &format!("FROM {BASE}\nCOPY --link --chown=nobody a.txt /x/\n"),
        &[("a.txt", b"a\n")],
    );
    let err = build_fails(store.path(), named.path(), &[]);
    assert!(err.contains("--chown=nobody with --link"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn copy_sources_are_cached_by_content_not_mtime() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\n\
             RUN --mount=type=cache,id=before,target=/c echo run >> /c/before-copy\n\
             COPY a.txt /a.txt\n\
             RUN --mount=type=cache,id=after,target=/c echo run >> /c/after-copy\n\
             COPY b.txt /b.txt\n"
        ),
        &[("a.txt", b"version one\n"), ("b.txt", b"b\n")],
    );
    let a = ctx.path().join("a.txt");
    build_ok(store.path(), ctx.path(), &[]);
    assert_eq!(cache_mount_lines(store.path(), "after-copy").len(), 1);

    // Only the mtime changes: every step stays cached.
    let f = std::fs::File::options().write(true).open(&a).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
        .unwrap();
    drop(f);
    let touched = stderr(&build_ok(store.path(), ctx.path(), &[]));
    assert_eq!(cached_count(&touched), 4, "{touched}");
    assert_eq!(cache_mount_lines(store.path(), "after-copy").len(), 1);

    // New content: that COPY and every step after it run again; the one before stays cached.
    std::fs::write(&a, "version two, longer\n").unwrap();
    let (out, log) = build_rootfs(store.path(), ctx.path(), &[]);
    let log = stderr(&log);
    assert_eq!(read(rootfs(&out).join("a.txt")), "version two, longer\n");
    let cached = cached_steps(&log);
    assert_eq!(cached.len(), 1, "{log}");
    assert!(cached[0].contains("before-copy"), "{cached:?}");
    assert_eq!(cache_mount_lines(store.path(), "before-copy").len(), 1);
    assert_eq!(cache_mount_lines(store.path(), "after-copy").len(), 2);
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn a_changed_build_arg_invalidates_the_runs_that_see_it() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\n\
             RUN --mount=type=cache,id=pre,target=/c echo run >> /c/pre-arg\n\
             ARG V\n\
             RUN --mount=type=cache,id=post,target=/c echo \"$V\" >> /c/post-arg\n"
        ),
        &[],
    );
    build_ok(store.path(), ctx.path(), &["--build-arg", "V=one"]);
    let same = stderr(&build_ok(
        store.path(),
        ctx.path(),
        &["--build-arg", "V=one"],
    ));
    assert_eq!(cached_count(&same), 2, "{same}");
    build_ok(store.path(), ctx.path(), &["--build-arg", "V=two"]);
    assert_eq!(cache_mount_lines(store.path(), "pre-arg").len(), 1);
    assert_eq!(cache_mount_lines(store.path(), "post-arg"), ["one", "two"]);
    // Back to the first value: its result is still in the cache.
    build_ok(store.path(), ctx.path(), &["--build-arg", "V=one"]);
    assert_eq!(cache_mount_lines(store.path(), "post-arg"), ["one", "two"]);
    // `--build-arg V` takes the value from the environment.
    let out = run(rbuild(store.path())
        .env("V", "three")
        .args(["--build-arg", "V"])
        .arg(ctx.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cache_mount_lines(store.path(), "post-arg"),
        ["one", "two", "three"]
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Load, named contexts, ONBUILD, stage graphs

#[test]
#[ignore = "needs root, docker and a registry"]
fn load_puts_a_runnable_image_into_docker() {
    needs_root_docker_and_registry();
    let tag = "rbuild-test/features-load:1";
    let _ = run(docker().args(["rmi", "-f", tag]));
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\nMAINTAINER Jane Doe <jane@example.com>\nCOPY msg /msg\nCMD [\"cat\", \"/msg\"]\n"
        ),
        &[("msg", b"loaded by rbuild\n")],
    );
    build_ok(store.path(), ctx.path(), &["-t", tag, "--load"]);
    let out = run_ok(docker().args(["run", "--rm", "--network=none", tag]));
    // MAINTAINER sets the config's author, as BuildKit does.
    let author = run_ok(docker().args(["image", "inspect", "-f", "{{.Author}}", tag]));
    let _ = run(docker().args(["rmi", "-f", tag]));
    assert_eq!(out, "loaded by rbuild\n");
    assert_eq!(author.trim(), "Jane Doe <jane@example.com>");
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn named_build_context_feeds_copy_from() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let extra = tempdir();
    std::fs::create_dir(extra.path().join("sub")).unwrap();
    std::fs::write(
        extra.path().join("sub/conf.txt"),
        "from the named context\n",
    )
    .unwrap();
    let ctx = context(
        &format!("FROM {BASE}\nCOPY --from=extra sub/conf.txt /conf.txt\n"),
        &[],
    );
    let spec = format!("extra={}", extra.path().display());
    let (out, _) = build_rootfs(store.path(), ctx.path(), &["--build-context", &spec]);
    assert_eq!(
        read(rootfs(&out).join("conf.txt")),
        "from the named context\n"
    );

    // Changing the named context's content invalidates the COPY.
    std::fs::write(extra.path().join("sub/conf.txt"), "changed\n").unwrap();
    let (out, log) = build_rootfs(store.path(), ctx.path(), &["--build-context", &spec]);
    assert_eq!(read(rootfs(&out).join("conf.txt")), "changed\n");
    assert_eq!(cached_count(&stderr(&log)), 0);

    // Without it, the build names the missing context.
    let err = build_fails(store.path(), ctx.path(), &[]);
    assert!(err.contains("extra"), "{err}");
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn onbuild_triggers_run_after_from_in_the_child_and_are_not_inherited() {
    needs_root_docker_and_registry();
    // One store: the child's FROM finds the parent by its tag there.
    let store = tempdir();
    let parent_tag = "rbuild-test/features-onbuild-parent:1";
    let parent = context(
        &format!("FROM {BASE}\nONBUILD RUN echo triggered > /t\nRUN echo parent > /p\n"),
        &[],
    );
    build_ok(store.path(), parent.path(), &["-t", parent_tag]);
    let info = inspect(store.path(), parent_tag);
    assert_eq!(
        info["Config"]["config"]["OnBuild"],
        serde_json::json!(["RUN echo triggered > /t"]),
        "{info}"
    );
    // The trigger did not run in the parent itself.
    let (out, _) = build_rootfs(store.path(), parent.path(), &[]);
    assert!(!rootfs(&out).join("t").exists());

    let child_tag = "rbuild-test/features-onbuild-child:1";
    // The step after FROM sees /t: the trigger ran first.
    let child = context(
        &format!("FROM {parent_tag}\nRUN cp /t /seen-by-next-step\n"),
        &[],
    );
    let (out, _) = build_rootfs(store.path(), child.path(), &["-t", child_tag]);
    assert_eq!(read(rootfs(&out).join("t")), "triggered\n");
    assert_eq!(read(rootfs(&out).join("seen-by-next-step")), "triggered\n");
    assert_eq!(read(rootfs(&out).join("p")), "parent\n");
    let info = inspect(store.path(), child_tag);
    let on_build = &info["Config"]["config"]["OnBuild"];
    assert!(
        on_build.is_null() || on_build == &serde_json::json!([]),
        "the child inherited the triggers: {on_build}"
    );

    // A grandchild therefore runs nothing extra.
    let grandchild = context(&format!("FROM {child_tag}\nRUN rm /t\n"), &[]);
    let (out, _) = build_rootfs(store.path(), grandchild.path(), &[]);
    assert!(!rootfs(&out).join("t").exists());
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn two_independent_stages_feed_a_third() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE} AS left\nRUN echo left > /left.txt\n\
             FROM {BASE} AS right\nWORKDIR /out\nRUN echo right > right.txt\n\
             FROM {BASE} AS unused\nRUN echo never > /never\n\
             FROM scratch\nCOPY --from=left /left.txt /\nCOPY --from=right /out/ /r/\n\
             COPY --from=left /bin/busybox /bin/busybox\n"
        ),
        &[],
    );
    let (out, log) = build_rootfs(store.path(), ctx.path(), &[]);
    let root = rootfs(&out);
    assert_eq!(read(root.join("left.txt")), "left\n");
    assert_eq!(read(root.join("r/right.txt")), "right\n");
    assert!(root.join("bin/busybox").is_file());
    let mut names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["bin", "left.txt", "r"]);
    let log = stderr(&log);
    assert!(!log.contains("echo never"), "{log}");
    // Both stages start from the same base at once: it is fetched and extracted once.
    assert_eq!(log.matches(" extracting sha256:").count(), 1, "{log}");
    // Several stages: labels name the stage, `stage-N` when it has no name.
    for label in [
        "[left 2/2] RUN echo left > /left.txt",
        "[right 3/3] RUN echo right > right.txt",
        // FROM scratch is no vertex, so the first COPY is 1/3 (as BuildKit shows `[1/1] COPY`).
        "[stage-3 1/3] COPY --from=left /left.txt /",
    ] {
        assert!(log.contains(label), "no `{label}` in\n{log}");
    }
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn add_url_is_cached_by_the_downloaded_content() {
    needs_root_docker_and_registry();
    let files = Arc::new(Mutex::new(vec![("/v.txt", b"first\n".to_vec())]));
    let port = serve_shared(files.clone());
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\nADD http://127.0.0.1:{port}/v.txt /v.txt\n\
             RUN --mount=type=cache,id=url,target=/c cat /v.txt >> /c/after-url\n"
        ),
        &[],
    );
    build_ok(store.path(), ctx.path(), &[]);
    let same = stderr(&build_ok(store.path(), ctx.path(), &[]));
    assert_eq!(cached_count(&same), 2, "{same}");
    files.lock().unwrap()[0].1 = b"second\n".to_vec();
    let (out, log) = build_rootfs(store.path(), ctx.path(), &[]);
    assert_eq!(cached_count(&stderr(&log)), 0, "{}", stderr(&log));
    assert_eq!(read(rootfs(&out).join("v.txt")), "second\n");
    assert_eq!(
        cache_mount_lines(store.path(), "after-url"),
        ["first", "second"]
    );
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn concurrent_builds_share_one_store() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctxs: Vec<TempDir> = ["one", "two"]
        .iter()
        .map(|n| {
            context(
                &format!("FROM {BASE}\nRUN echo shared > /s\nRUN echo {n} > /n\n"),
                &[],
            )
        })
        .collect();
    let children: Vec<_> = ctxs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rbuild(store.path())
                .args(["-t", &format!("rbuild-test/features-concurrent:{i}")])
                .arg(c.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    for (i, name) in ["one", "two"].iter().enumerate() {
        let (out, _) = build_rootfs(
            store.path(),
            ctxs[i].path(),
            &["-t", &format!("rbuild-test/features-concurrent:{i}")],
        );
        assert_eq!(read(rootfs(&out).join("s")), "shared\n");
        assert_eq!(read(rootfs(&out).join("n")), format!("{name}\n"));
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Failures

#[test]
#[ignore = "needs root, docker and a registry"]
fn a_failing_run_shows_its_output_exit_code_and_line_and_writes_no_output() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\nRUN echo fine\nRUN echo first-line; echo last-words >&2; exit 3\nRUN echo unreached\n"
        ),
        &[],
    );
    let out_dir = tempdir();
    let dest = out_dir.path().join("image.tar");
    let out = run(rbuild(store.path())
        .args(["-t", "rbuild-test/features-fail:1", "-o"])
        .arg(format!("type=docker,dest={}", dest.display()))
        .arg(ctx.path()));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_no_panic(&out);
    // The final error repeats the step's last output lines (so -q and tty users see them).
    let final_error = &err[err.rfind("error: ").expect("an error line")..];
    assert!(
        final_error.contains("first-line") && final_error.contains("last-words"),
        "no output tail in the error:\n{err}"
    );
    assert!(
        err.contains(
            "process \"/bin/sh -c echo first-line; echo last-words >&2; exit 3\" did not complete successfully: exit code: 3"
        ),
        "{err}"
    );
    assert!(err.contains("Dockerfile:3"), "no Dockerfile line:\n{err}");
    assert!(!err.contains("unreached"), "{err}");
    assert!(!dest.exists(), "a failed build wrote {}", dest.display());
    let quiet = run(rbuild(store.path()).arg("-q").arg(ctx.path()));
    assert_eq!(quiet.status.code(), Some(1));
    assert_eq!(
        stdout(&quiet),
        "",
        "-q prints no image id for a failed build"
    );
    assert!(
        stderr(&quiet).contains("last-words") && stderr(&quiet).contains("exit code: 3"),
        "-q hides why the build failed:\n{}",
        stderr(&quiet)
    );
    // Input errors of COPY and ADD name the step's line too.
    let ctx = context(
        &format!("FROM {BASE}\nRUN true\nCOPY not-in-context /x\n"),
        &[],
    );
    let err = build_fails(store.path(), ctx.path(), &["-q"]);
    assert!(
        err.contains("Dockerfile:3") && err.contains("not-in-context"),
        "{err}"
    );
    let tags = run(rbuild_cmd(store.path()).arg("images"));
    assert!(
        !stdout(&tags).contains("features-fail"),
        "{}",
        stdout(&tags)
    );
}

/// Bad command lines and inputs: no registry needed (root: rbuild refuses other users), and
/// never exit code 101.
#[test]
#[ignore = "needs root"]
fn bad_invocations_give_clear_messages_and_user_exit_codes() {
    needs_root();
    let store = tempdir();
    let empty = tempdir();

    let err = build_fails(store.path(), empty.path(), &[]);
    assert!(err.contains("Dockerfile"), "missing Dockerfile:\n{err}");
    let err = build_fails(
        store.path(),
        empty.path(),
        &["-f", "/nonexistent/Dockerfile"],
    );
    assert!(err.contains("/nonexistent/Dockerfile"), "{err}");
    let err = build_fails(store.path(), &empty.path().join("missing-dir"), &[]);
    assert!(err.contains("missing-dir"), "{err}");

    // Every invocation below fails before any base is pulled: no registry needed.
    let ctx = context("FROM scratch\n", &[]);
    for bad in ["UPPER/case:1", "a b", "name:bad:tag:", "x@sha256:zz"] {
        let err = build_fails(store.path(), ctx.path(), &["-t", bad]);
        assert!(err.contains(bad), "-t {bad}:\n{err}");
    }
    for bad in [
        &["--output", "type=nosuch,dest=x"][..],
        &["--secret", "src=/nonexistent"],
        &["--build-context", "novalue"],
        &["--network", "bridge"],
    ] {
        build_fails(store.path(), ctx.path(), bad);
    }

    let out = run(rbuild(store.path()).arg("--no-such-flag").arg(ctx.path()));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--no-such-flag"), "{}", stderr(&out));
    assert_no_panic(&out);

    // `rbuild images | head`: a reader that goes away ends the output, no panic.
    let mut child = rbuild_cmd(store.path())
        .arg("images")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_no_panic(&out);

    // A Dockerfile syntax error names the file and line.
    let ctx = context("FROM scratch\nNOTANINSTRUCTION foo\n", &[]);
    let err = build_fails(store.path(), ctx.path(), &[]);
    assert!(
        err.contains("Dockerfile:2") && err.contains("NOTANINSTRUCTION"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root, docker and a registry"]
fn cache_mounts_honour_sharing_and_ownership() {
    needs_root_docker_and_registry();
    let store = tempdir();
    // Two independent stages run at once; with sharing=locked their critical sections on
    // the cache never interleave. The cache dir is created with the mount's uid and mode.
    let locked = "--mount=type=cache,id=shared-log,target=/c,sharing=locked,uid=1000,mode=0750";
    let ctx = context(
        &format!(
            "FROM {BASE} AS a\n\
             RUN {locked} echo start-a >> /c/log && sleep 1 && echo end-a >> /c/log\n\
             FROM {BASE} AS b\n\
             RUN {locked} echo start-b >> /c/log && sleep 1 && echo end-b >> /c/log\n\
             FROM {BASE}\n\
             COPY --from=a /etc/passwd /a-done\n\
             COPY --from=b /etc/passwd /b-done\n\
             RUN {locked} cp /c/log /log && stat -c '%u %a' /c > /owner\n\
             RUN --mount=type=cache,id=private-one,target=/p,sharing=private touch /p/x && ls /p > /private\n"
        ),
        &[],
    );
    let (out, _) = build_rootfs(store.path(), ctx.path(), &[]);
    let root = rootfs(&out);
    let log: Vec<String> = read(root.join("log")).lines().map(str::to_string).collect();
    assert_eq!(log.len(), 4, "{log:?}");
    for pair in log.chunks(2) {
        let who = pair[0].strip_prefix("start-").expect("a start first");
        assert_eq!(pair[1], format!("end-{who}"), "interleaved: {log:?}");
    }
    assert_eq!(read(root.join("owner")), "1000 750\n");
    assert_eq!(read(root.join("private")), "x\n");
}

// RUN's sandbox flags: --add-host, --shm-size, --ulimit, --security=insecure, and
// --no-cache-filter.

/// `--add-host` lines reach RUN's /etc/hosts exactly as docker build (BuildKit) writes them,
/// and neither the layers, the exported filesystem nor the store hold them; `--shm-size` and
/// `--ulimit` are what the step sees (docker 20.10's BuildKit ignores both, so only the hosts
/// file is compared with it).
#[test]
#[ignore = "needs root, docker and a registry"]
fn add_host_shm_size_and_ulimit_reach_run_but_no_layer() {
    needs_root_docker_and_registry();
    let flags = [
        "--add-host",
        "db.internal:10.9.8.7",
        "--add-host",
        "v6host=[2001:db8::7]",
        "--shm-size",
        "96m",
        "--ulimit",
        "nofile=1234:2345",
    ];
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\n\
             RUN cat /etc/hosts\n\
             RUN df -k /dev/shm | awk 'NR==2 {{print $2}}' > /shm-kb && \
             ulimit -n > /nofile && ulimit -Hn >> /nofile\n"
        ),
        &[],
    );
    let oci = tempdir();
    let oci_spec = format!(
        "type=oci,dest={},tar=false,compression=uncompressed",
        oci.path().join("layout").display()
    );
    let mut args = vec!["-o", &oci_spec];
    args.extend_from_slice(&flags);
    let (dir, out) = build_rootfs(store.path(), ctx.path(), &args);
    let log = stderr(&out);
    assert!(
        log.contains("10.9.8.7\tdb.internal\n") && log.contains("2001:db8::7\tv6host\n"),
        "{log}"
    );
    assert_eq!(read(rootfs(&dir).join("shm-kb")).trim(), "98304");
    assert_eq!(read(rootfs(&dir).join("nofile")), "1234\n2345\n");
    for needle in [&b"db.internal"[..], b"10.9.8.7", b"2001:db8::7"] {
        assert_eq!(
            files_containing(&rootfs(&dir), needle),
            Vec::<PathBuf>::new()
        );
        assert_eq!(files_containing(oci.path(), needle), Vec::<PathBuf>::new());
    }
    // The name is in the cache key (as BuildKit's); the address is nowhere in the store.
    assert_eq!(
        files_containing(store.path(), b"10.9.8.7"),
        Vec::<PathBuf>::new()
    );

    // A new address for the same name hits the cache (BuildKit leaves it out of the key);
    // a new name does not.
    let mut moved = flags.to_vec();
    let full_hit = cached_count(&stderr(&build_ok(store.path(), ctx.path(), &moved)));
    moved[1] = "db.internal:10.9.8.8";
    let out = build_ok(store.path(), ctx.path(), &moved);
    assert_eq!(cached_count(&stderr(&out)), full_hit, "{}", stderr(&out));
    moved[1] = "other:10.9.8.8";
    let out = build_ok(store.path(), ctx.path(), &moved);
    assert_eq!(
        cached_count(&stderr(&out)),
        full_hit - 2,
        "{}",
        stderr(&out)
    );

    // The hosts file against docker build's.
    let tag = "rbuild-test/flags-add-host:docker";
    let compare = context(
        &format!("FROM {BASE}\nRUN cat /etc/hosts > /hosts-seen\n"),
        &[],
    );
    run_ok(
        docker()
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "--network=host", "-q", "--no-cache", "-t", tag])
            .args(["--add-host", "db.internal:10.9.8.7"])
            .arg(compare.path()),
    );
    let theirs =
        run_ok(docker().args(["run", "--rm", "--network=none", tag, "cat", "/hosts-seen"]));
    let _ = run(docker().args(["rmi", "-f", tag]));
    let (dir, _) = build_rootfs(
        store.path(),
        compare.path(),
        &["--add-host", "db.internal:10.9.8.7"],
    );
    assert_eq!(read(rootfs(&dir).join("hosts-seen")), theirs);
}

/// `RUN --security=insecure` needs `--allow security.insecure` (BuildKit's entitlement and
/// message; nothing runs without it, not even the steps before). With it the step holds
/// rbuild's own capabilities and can mount; its mount stays out of the layer and off the
/// host. docker 20.10's frontend has no `--security` (labs syntax only), and its daemon would
/// need the entitlement configured: no comparison.
#[test]
#[ignore = "needs root, docker and a registry"]
fn run_security_insecure_needs_the_entitlement() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE}\n\
             RUN touch /before\n\
             RUN --security=insecure grep CapEff /proc/self/status > /capeff && \
             mkdir -p /mnt/probe && mount -t tmpfs rbuild-e2e-insecure /mnt/probe && \
             touch /mnt/probe/inside && echo mounted > /mounted\n\
             RUN grep CapEff /proc/self/status > /capeff-after\n"
        ),
        &[],
    );
    let err = build_fails(store.path(), ctx.path(), &[]);
    assert!(
        err.contains("Dockerfile:3: security.insecure is not allowed: RUN --security=insecure needs `--allow security.insecure`"),
        "{err}"
    );
    assert!(!err.contains("touch /before"), "a step ran: {err}");
    let err = build_fails(store.path(), ctx.path(), &["--allow", "security.unknown"]);
    assert!(
        err.contains("--allow security.unknown: unknown entitlement"),
        "{err}"
    );

    let (dir, _) = build_rootfs(store.path(), ctx.path(), &["--allow", "security.insecure"]);
    let ours = read("/proc/self/status")
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .to_string();
    let root = rootfs(&dir);
    assert_eq!(read(root.join("capeff")).trim(), ours);
    assert_eq!(read(root.join("mounted")), "mounted\n");
    assert!(root.join("mnt/probe").is_dir() && !root.join("mnt/probe/inside").exists());
    // The next step is back to Docker's defaults.
    assert_eq!(
        read(root.join("capeff-after")).trim(),
        "CapEff:\t00000000a80425fb"
    );
    let mounts = read("/proc/self/mountinfo");
    assert!(!mounts.contains("rbuild-e2e-insecure"), "{mounts}");
}

/// `--no-cache-filter`: the named stage's steps run again, the others come from the cache;
/// a name that is no stage is refused with the stages that exist.
#[test]
#[ignore = "needs root, docker and a registry"]
fn no_cache_filter_reruns_the_named_stage_only() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(
        &format!(
            "FROM {BASE} AS deps\nRUN echo deps > /deps\n\
             FROM {BASE} AS app\nCOPY --from=deps /deps /deps\nRUN echo app > /app\n"
        ),
        &[],
    );
    build_ok(store.path(), ctx.path(), &[]);
    let out = build_ok(store.path(), ctx.path(), &["--no-cache-filter", "app"]);
    let cached = cached_steps(&stderr(&out));
    assert!(cached.iter().any(|l| l.contains("echo deps")), "{cached:?}");
    assert!(!cached.iter().any(|l| l.contains("echo app")), "{cached:?}");
    let err = build_fails(store.path(), ctx.path(), &["--no-cache-filter", "dep"]);
    assert!(
        err.contains("--no-cache-filter: stage `dep` could not be found") && err.contains("deps"),
        "{err}"
    );
}

/// `--call targets` prints the golden text of testdata/call (what `docker buildx build
/// --call targets` prints) without building or pulling anything; `--call outline` resolves
/// the target's bases and lists its build args and secrets; a bad method is a user error.
#[test]
#[ignore = "needs root, docker and a registry"]
fn call_targets_and_outline_print_and_build_nothing() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/call/multi-stage");
    let out = run(rbuild(store.path())
        .args(["--call", "targets", "-f"])
        .arg(case.join("Dockerfile"))
        .arg(&case));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), read(case.join("targets")));
    let out = run(rbuild(store.path())
        .args(["--call", "targets,format=json", "-f"])
        .arg(case.join("Dockerfile"))
        .arg(&case));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), read(case.join("targets.json")));

    let ctx = context(
        &format!(
            "# app the service\nFROM {BASE} AS app\n# LEVEL log level\nARG LEVEL=info\n\
             RUN --mount=type=secret,id=npmrc,required true\n"
        ),
        &[],
    );
    let out = build_ok(
        store.path(),
        ctx.path(),
        &["--call", "outline", "--build-arg", "LEVEL=debug"],
    );
    assert_eq!(
        stdout(&out),
        "TARGET:      app\nDESCRIPTION: the service\n\n\
         BUILD ARG   VALUE   DESCRIPTION\nLEVEL       debug   log level\n\n\
         SECRET   REQUIRED\nnpmrc    true\n\n"
    );
    assert_eq!(inspect_images(store.path()), "", "--call built something");
    let err = build_fails(store.path(), ctx.path(), &["--call", "frobnicate"]);
    assert!(err.contains("--call frobnicate: unknown method"), "{err}");
}

/// What `rbuild images` lists after the header.
fn inspect_images(store: &Path) -> String {
    let out = run_ok(rbuild_cmd(store).arg("images"));
    out.lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// `--annotation`: a plain or `manifest:` one lands in the image manifest (the stored one,
/// the OCI output's and the pushed one); `manifest-descriptor:` on the output's index.json
/// entry, next to the ref name; index types fail as BuildKit fails them for one platform.
#[test]
#[ignore = "needs root, docker and a registry"]
fn annotations_reach_the_manifest_its_descriptor_and_the_registry() {
    needs_root_docker_and_registry();
    let store = tempdir();
    let ctx = context(&format!("FROM {BASE}\nRUN echo hi > /hi\n"), &[]);
    let tag = format!("{}/rbuild-test/flags-annotations:1", registry());
    let out_dir = tempdir();
    let layout = out_dir.path().join("layout");
    let oci = format!("type=oci,dest={},tar=false", layout.display());
    build_ok(
        store.path(),
        ctx.path(),
        &[
            "-t",
            &tag,
            "--push",
            "-o",
            &oci,
            "--annotation",
            "org.example.plain=1",
            "--annotation",
            "manifest,manifest-descriptor:org.example.both=2",
        ],
    );
    let _pushed = RegistryImage::pushed(&tag);
    let json = |p: &Path| -> serde_json::Value { serde_json::from_str(&read(p)).unwrap() };
    let index = json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(entry["annotations"]["org.example.both"], "2", "{index}");
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    assert!(
        entry["annotations"].get("org.example.plain").is_none(),
        "{index}"
    );
    let digest = entry["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap();
    let manifest = json(&layout.join("blobs/sha256").join(digest));
    let want = serde_json::json!({"org.example.both": "2", "org.example.plain": "1"});
    assert_eq!(manifest["annotations"], want, "{manifest}");

    let (host, path) = tag.split_once('/').unwrap();
    let (name, reference) = path.rsplit_once(':').unwrap();
    let pushed = run_ok(Command::new("curl").args([
        "-fsS",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{host}/v2/{name}/manifests/{reference}"),
    ]));
    let pushed: serde_json::Value = serde_json::from_str(&pushed).unwrap();
    assert_eq!(pushed["annotations"], want, "{pushed}");
    // The image id is the config's: annotations do not change it.
    let plain = build_ok(store.path(), ctx.path(), &["-q"]);
    let annotated = build_ok(store.path(), ctx.path(), &["-q", "--annotation", "a=b"]);
    assert_eq!(stdout(&plain), stdout(&annotated));

    let err = build_fails(store.path(), ctx.path(), &["--annotation", "index:k=v"]);
    assert!(
        err.contains(
            "--annotation index:k=v: index annotations not supported for single platform export"
        ),
        "{err}"
    );
}
