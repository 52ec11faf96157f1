//! The registry client against real peers: docker-registry (distribution 2.8) started per
//! test on a free loopback port, a small bearer-token front written here (std TcpListener),
//! and the docker engine when one is running.
//!
//! Tests that start docker-registry are `#[ignore = "needs docker-registry"]` (run by
//! scripts/test.sh, `--include-ignored`) and fail when /usr/bin/docker-registry is missing.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use rbuild::image::{
    canonical_json, media, Descriptor, Digest, ImageConfig, Index, Manifest, Platform, Reference,
    RootFs,
};
use rbuild::registry::{Cause, Client, Progress, RegistryOptions};
use support::registry::{free_port, needs_docker_registry, Registry};

fn client(config_dir: Option<&Path>) -> Client {
    let empty = tempfile::tempdir().unwrap().keep();
    Client::new(RegistryOptions {
        insecure_registries: Vec::new(),
        platform: Platform::host(),
        // Never the real ~/.docker: tests must not depend on the machine's logins.
        docker_config_dir: Some(config_dir.map(Path::to_path_buf).unwrap_or(empty)),
    })
    .unwrap()
}

fn platform(spec: &str) -> Platform {
    let mut parts = spec.split('/');
    Platform {
        os: parts.next().unwrap().into(),
        architecture: parts.next().unwrap().into(),
        variant: parts.next().map(Into::into),
        os_version: None,
    }
}

/// A one-layer image written to files: gzip layer, config, docker v2 manifest.
struct TestImage {
    dir: tempfile::TempDir,
    layer: Descriptor,
    config: Descriptor,
    manifest: Vec<u8>,
}

impl TestImage {
    fn new(plat: &Platform, content: &[u8]) -> TestImage {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, "hello.txt", content).unwrap();
        let tar = tar.into_inner().unwrap();
        let diff_id = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer_bytes = gz.finish().unwrap();
        let config = ImageConfig {
            architecture: plat.architecture.clone(),
            os: plat.os.clone(),
            variant: plat.variant.clone(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![diff_id],
            },
            config: rbuild::image::ContainerConfig {
                cmd: Some(vec!["/hello.txt".into()]),
                ..Default::default()
            },
            ..Default::default()
        };
        let config_bytes = canonical_json(&config);
        let layer = Descriptor::new(
            media::DOCKER_LAYER_GZIP,
            Digest::of(&layer_bytes),
            layer_bytes.len() as u64,
        );
        let config_desc = Descriptor::new(
            media::DOCKER_CONFIG,
            Digest::of(&config_bytes),
            config_bytes.len() as u64,
        );
        std::fs::write(dir.path().join(layer.digest.hex()), &layer_bytes).unwrap();
        std::fs::write(dir.path().join(config_desc.digest.hex()), &config_bytes).unwrap();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::DOCKER_MANIFEST.into()),
            config: config_desc.clone(),
            layers: vec![layer.clone()],
            annotations: None,
        };
        TestImage {
            dir,
            layer,
            config: config_desc,
            manifest: canonical_json(&manifest),
        }
    }

    fn path(&self, d: &Descriptor) -> PathBuf {
        self.dir.path().join(d.digest.hex())
    }

    fn bytes(&self, d: &Descriptor) -> Vec<u8> {
        std::fs::read(self.path(d)).unwrap()
    }

    fn push(&self, c: &Client, r: &Reference) -> Digest {
        c.push_blob(r, &self.layer, &self.path(&self.layer), None)
            .unwrap();
        c.push_blob(r, &self.config, &self.path(&self.config), None)
            .unwrap();
        c.push_manifest(r, media::DOCKER_MANIFEST, &self.manifest)
            .unwrap()
    }
}

fn with_digest(r: &Reference, d: &Digest) -> Reference {
    Reference {
        tag: None,
        digest: Some(d.clone()),
        ..r.clone()
    }
}

#[test]
#[ignore = "needs docker-registry"]
fn push_then_pull_by_tag_and_by_digest() {
    needs_docker_registry();
    let reg = Registry::start(None);
    let c = client(None);
    let r = reg.reference("tiny/app:v1");
    let img = TestImage::new(&Platform::host(), b"hello from rbuild\n");
    assert!(!c.blob_exists(&r, &img.layer.digest).unwrap());
    let digest = img.push(&c, &r);
    assert_eq!(digest, Digest::of(&img.manifest));
    assert!(c.blob_exists(&r, &img.layer.digest).unwrap());
    // Pushing again is a no-op (HEAD finds the blobs).
    img.push(&c, &r);

    let got = c.resolve(&r).unwrap();
    assert_eq!(got.manifest_digest, digest);
    assert_eq!(got.manifest_bytes, img.manifest);
    assert_eq!(got.config_bytes, img.bytes(&img.config));
    assert_eq!(got.manifest.layers, vec![img.layer.clone()]);
    assert_eq!(got.config.architecture, Platform::host().architecture);
    assert_eq!(got.index_digest, None);

    let by_digest = c.resolve(&with_digest(&r, &digest)).unwrap();
    assert_eq!(by_digest.manifest_bytes, img.manifest);

    let mut layer = Vec::new();
    c.fetch_blob(&r, &img.layer, &mut layer).unwrap();
    assert_eq!(layer, img.bytes(&img.layer));

    // Cross-repository mount: the blob appears in the other repository without upload.
    let other = reg.reference("other/app:v1");
    c.push_blob(&other, &img.layer, &img.path(&img.layer), Some(&r))
        .unwrap();
    assert!(c.blob_exists(&other, &img.layer.digest).unwrap());
    // A mount from a repository without the blob answers 202: we upload instead.
    let third = reg.reference("third/app:v1");
    let lonely = img.dir.path().join("lonely");
    std::fs::write(&lonely, b"only here").unwrap();
    let lonely_desc = Descriptor::new(media::OCI_LAYER, Digest::of(b"only here"), 9);
    c.push_blob(
        &third,
        &lonely_desc,
        &lonely,
        Some(&reg.reference("empty/app:v1")),
    )
    .unwrap();
    let mut got_back = Vec::new();
    c.fetch_blob(&third, &lonely_desc, &mut got_back).unwrap();
    assert_eq!(got_back, b"only here");

    // A blob above the chunk size goes up in PATCH chunks and comes back intact.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let big_path = img.dir.path().join("big");
    std::fs::write(&big_path, &big).unwrap();
    let big_desc = Descriptor::new(media::OCI_LAYER, Digest::of(&big), big.len() as u64);
    let chunked = client(None).with_chunk_size(64 << 10);
    chunked.push_blob(&r, &big_desc, &big_path, None).unwrap();
    let mut back = Vec::new();
    c.fetch_blob(&r, &big_desc, &mut back).unwrap();
    assert_eq!(Digest::of(&back), big_desc.digest);

    // Several blobs at once, with progress.
    type Buf = Arc<Mutex<Vec<u8>>>;
    let outs: Mutex<HashMap<Digest, Buf>> = Default::default();
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let last: Mutex<HashMap<Digest, Progress>> = Default::default();
    let descs = [img.layer.clone(), img.config.clone(), big_desc.clone()];
    c.fetch_blobs_parallel(
        &r,
        &descs,
        &|d| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            outs.lock().unwrap().insert(d.digest.clone(), buf.clone());
            Ok(Box::new(Shared(buf)))
        },
        &|p| {
            last.lock().unwrap().insert(p.digest.clone(), p.clone());
        },
    )
    .unwrap();
    for d in &descs {
        let data = outs.lock().unwrap()[&d.digest].lock().unwrap().clone();
        assert_eq!(Digest::of(&data), d.digest);
        let p = last.lock().unwrap()[&d.digest].clone();
        assert_eq!((p.done, p.total), (d.size, d.size));
    }
}

#[test]
#[ignore = "needs docker-registry"]
fn unknown_manifest_and_unreachable_registry_name_the_reference() {
    needs_docker_registry();
    let reg = Registry::start(None);
    let c = client(None);
    let r = reg.reference("nope:latest");
    let err = c.resolve(&r).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "pulling `127.0.0.1:{}/nope:latest`: manifest unknown: \
             tag `latest` not found in repository `nope`",
            reg.port
        )
    );
    let by_digest = with_digest(&r, &Digest::of(b"no such manifest"));
    assert_eq!(
        c.resolve(&by_digest).unwrap_err().to_string(),
        format!(
            "pulling `{by_digest}`: manifest unknown: digest `{}` not found in repository `nope`",
            Digest::of(b"no such manifest")
        )
    );
    let dead: Reference = format!("127.0.0.1:{}/x:1", free_port()).parse().unwrap();
    let err = c.resolve(&dead).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "pulling `{dead}`: cannot reach registry 127.0.0.1:"
        )),
        "{err}"
    );
    assert!(err.contains("refused"), "{err}");
}

/// Regression (issue 14): a refused connection was retried with backoff (3 s on loopback,
/// 18 s for an unreachable docker.io). It fails at the first attempt; a connection that
/// breaks is still retried.
#[test]
#[ignore = "needs root"]
fn refused_connections_fail_at_once_and_broken_ones_are_retried() {
    // Root for its last part, the same through the rbuild binary (which refuses other users).
    support::needs_root();
    let c = client(None);
    let dead: Reference = format!("127.0.0.1:{}/x:1", free_port()).parse().unwrap();
    let err = c.resolve(&dead).unwrap_err();
    assert_eq!(err.cause().map(Cause::attempts), Some(1), "{err}");
    assert!(!err.to_string().contains("attempts"), "{err}");

    // A server that reads each request and hangs up without an answer.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            *counter.lock().unwrap() += 1;
            let _ = read_request(&mut stream);
        }
    });
    let r: Reference = format!("127.0.0.1:{port}/x:1").parse().unwrap();
    let err = c.resolve(&r).unwrap_err();
    let attempts = *accepted.lock().unwrap();
    assert!(attempts > 1, "{err}");
    assert_eq!(err.cause().map(Cause::attempts), Some(attempts), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "pulling `{r}`: connection to registry 127.0.0.1:{port} lost: "
        )),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with(&format!("(gave up after {attempts} attempts)")),
        "{err}"
    );

    // The command line says the same, once.
    let store = tempfile::tempdir().unwrap();
    let out = Command::new(support::rbuild_bin())
        .env("RBUILD_ROOT", store.path())
        .args(["pull", &dead.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "error: pulling `{dead}`: cannot reach registry 127.0.0.1:"
        )) && last.ends_with("Connection refused (os error 111)"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs docker-registry"]
fn index_resolves_to_the_host_platform_and_lists_others() {
    needs_docker_registry();
    let reg = Registry::start(None);
    let c = client(None);
    let r = reg.reference("multi/app:latest");
    let mut index = Index {
        media_type: Some(media::DOCKER_MANIFEST_LIST.into()),
        ..Index::default()
    };
    let mut by_arch = HashMap::new();
    for spec in ["linux/amd64", "linux/arm64/v8"] {
        let p = platform(spec);
        let img = TestImage::new(&p, spec.as_bytes());
        let d = img.push(&c, &with_digest(&r, &Digest::of(&img.manifest)));
        let mut desc =
            Descriptor::new(media::DOCKER_MANIFEST, d.clone(), img.manifest.len() as u64);
        desc.platform = Some(p.clone());
        index.manifests.push(desc);
        by_arch.insert(p.architecture.clone(), d);
    }
    let index_bytes = canonical_json(&index);
    let index_digest = c
        .push_manifest(&r, media::DOCKER_MANIFEST_LIST, &index_bytes)
        .unwrap();

    let host = Platform::host();
    let got = c.resolve(&r).unwrap();
    assert_eq!(got.index_digest, Some(index_digest));
    assert_eq!(got.manifest_digest, by_arch[&host.architecture]);
    assert_eq!(got.config.architecture, host.architecture);

    // arm64 without a variant asked for: v8 is implied.
    let arm = Client::new(RegistryOptions {
        platform: platform("linux/arm64"),
        docker_config_dir: Some(tempfile::tempdir().unwrap().keep()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(arm.resolve(&r).unwrap().manifest_digest, by_arch["arm64"]);

    let s390 = Client::new(RegistryOptions {
        platform: platform("linux/s390x"),
        docker_config_dir: Some(tempfile::tempdir().unwrap().keep()),
        ..Default::default()
    })
    .unwrap();
    let err = s390.resolve(&r).unwrap_err();
    assert!(matches!(
        err.cause(),
        Some(Cause::NoMatchingPlatform { .. })
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "pulling `{r}`: no matching manifest for linux/s390x \
             (available: linux/amd64, linux/arm64/v8)"
        )
    );
}

#[test]
#[ignore = "needs docker-registry"]
fn basic_auth_with_credentials_from_docker_config() {
    needs_docker_registry();
    let work = tempfile::tempdir().unwrap();
    let htpasswd = work.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "alice", "s3cret"])
        .output()
        .expect("htpasswd (apache2-utils) is needed for this test");
    assert!(out.status.success());
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let reg = Registry::start(Some(&htpasswd));
    let r = reg.reference("private/app:1");
    let host = format!("127.0.0.1:{}", reg.port);

    // `auth` is base64("user:password"), as `docker login` writes it.
    let auth_dir = work.path().join("auth");
    std::fs::create_dir(&auth_dir).unwrap();
    std::fs::write(
        auth_dir.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#),
    )
    .unwrap();
    let c = client(Some(&auth_dir));
    let img = TestImage::new(&Platform::host(), b"private");
    let digest = img.push(&c, &r);
    assert_eq!(c.resolve(&r).unwrap().manifest_digest, digest);

    // username/password fields work too.
    let up_dir = work.path().join("up");
    std::fs::create_dir(&up_dir).unwrap();
    std::fs::write(
        up_dir.join("config.json"),
        format!(r#"{{"auths":{{"http://{host}":{{"username":"alice","password":"s3cret"}}}}}}"#),
    )
    .unwrap();
    assert_eq!(
        client(Some(&up_dir)).resolve(&r).unwrap().manifest_digest,
        digest
    );

    let err = client(None).resolve(&r).unwrap_err();
    assert!(
        matches!(err.cause(), Some(Cause::NoCredentials { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("pulling `{r}`: authentication required by {host}")),
        "{err}"
    );

    let bad_dir = work.path().join("bad");
    std::fs::create_dir(&bad_dir).unwrap();
    std::fs::write(
        bad_dir.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"username":"alice","password":"wrong"}}}}}}"#),
    )
    .unwrap();
    let err = client(Some(&bad_dir)).resolve(&r).unwrap_err();
    assert!(
        matches!(err.cause(), Some(Cause::AuthRefused { .. })),
        "{err}"
    );
}

#[test]
#[ignore = "needs docker-registry"]
fn tampered_blob_in_registry_storage_is_refused() {
    needs_docker_registry();
    let reg = Registry::start(None);
    let c = client(None);
    let r = reg.reference("tamper/app:1");
    let img = TestImage::new(&Platform::host(), b"the real content");
    img.push(&c, &r);
    // Same length, other bytes: only the digest can tell.
    for d in [&img.layer, &img.config] {
        let file = reg.blob_file(&d.digest);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
    }
    let mut sink = Vec::new();
    let err = c.fetch_blob(&r, &img.layer, &mut sink).unwrap_err();
    assert!(
        matches!(err.cause(), Some(Cause::DigestMismatch { .. })),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "pulling `{r}`: digest mismatch: expected {}, got sha256:",
            img.layer.digest
        )),
        "{err}"
    );
    let err = c.resolve(&r).unwrap_err();
    assert!(
        matches!(err.cause(), Some(Cause::DigestMismatch { .. })),
        "{err}"
    );
}

// ---- a bearer-token registry front written here --------------------------------------

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    let has_len = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_len {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// What the fake registry serves and records.
#[derive(Default)]
struct FakeState {
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    /// Blobs whose first GET answers 503.
    fail_once: Vec<String>,
    /// Blobs whose first GET drops the connection halfway (then Range is honoured).
    cut_once: Vec<String>,
    token_scopes: Vec<String>,
    ranges: Vec<String>,
}

const TOKEN: &str = "fake-token-42";

/// Serves /token and a read-only /v2/test/app behind bearer auth.
fn fake_registry(state: Arc<Mutex<FakeState>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let state = state.clone();
            std::thread::spawn(move || {
                let Some(req) = read_request(&mut stream) else {
                    return;
                };
                serve(&mut stream, &req, port, &state);
            });
        }
    });
    port
}

fn serve(stream: &mut TcpStream, req: &Request, port: u16, state: &Mutex<FakeState>) {
    if let Some(query) = req.path.strip_prefix("/token?") {
        for kv in query.split('&') {
            if let Some(scope) = kv.strip_prefix("scope=") {
                let scope = scope
                    .replace("%3A", ":")
                    .replace("%2C", ",")
                    .replace("%2F", "/");
                state.lock().unwrap().token_scopes.push(scope);
            }
        }
        let body = format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#);
        return respond(stream, "200 OK", &[], body.as_bytes());
    }
    if req.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
        let challenge = format!(
            r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="repository:test/app:pull""#
        );
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        return respond(
            stream,
            "401 Unauthorized",
            &[("WWW-Authenticate", challenge)],
            body,
        );
    }
    let head = req.method == "HEAD";
    if let Some(reference) = req.path.strip_prefix("/v2/test/app/manifests/") {
        let found = state.lock().unwrap().manifests.get(reference).cloned();
        return match found {
            Some((mt, bytes)) => respond(
                stream,
                "200 OK",
                &[("Content-Type", mt)],
                if head { &[] } else { &bytes },
            ),
            None => respond(
                stream,
                "404 Not Found",
                &[],
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            ),
        };
    }
    if let Some(digest) = req.path.strip_prefix("/v2/test/app/blobs/") {
        let mut st = state.lock().unwrap();
        let Some(bytes) = st.blobs.get(digest).cloned() else {
            drop(st);
            return respond(stream, "404 Not Found", &[], b"");
        };
        if let Some(i) = st.fail_once.iter().position(|d| d == digest) {
            st.fail_once.remove(i);
            drop(st);
            return respond(stream, "503 Service Unavailable", &[], b"busy");
        }
        if let Some(i) = st.cut_once.iter().position(|d| d == digest) {
            st.cut_once.remove(i);
            drop(st);
            let len = ("Content-Length", bytes.len().to_string());
            respond(stream, "200 OK", &[len], &bytes[..bytes.len() / 2]);
            let _ = stream.flush();
            return; // dropping the stream cuts the body short
        }
        if let Some(range) = req.headers.get("range") {
            st.ranges.push(range.clone());
            let from: usize = range
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse().ok())
                .unwrap();
            drop(st);
            let cr = format!("bytes {}-{}/{}", from, bytes.len() - 1, bytes.len());
            return respond(
                stream,
                "206 Partial Content",
                &[("Content-Range", cr)],
                &bytes[from..],
            );
        }
        drop(st);
        return respond(stream, "200 OK", &[], if head { &[] } else { &bytes });
    }
    respond(stream, "404 Not Found", &[], b"");
}

#[test]
fn bearer_token_auth_retries_resume_and_digest_check_against_a_fake_front() {
    let img = TestImage::new(&Platform::host(), b"served by the fake front");
    let state = Arc::new(Mutex::new(FakeState::default()));
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let big_desc = Descriptor::new(media::OCI_LAYER, Digest::of(&big), big.len() as u64);
    let bogus = Descriptor::new(media::OCI_LAYER, Digest::of(b"what was promised"), 17);
    {
        let mut st = state.lock().unwrap();
        st.manifests.insert(
            "latest".into(),
            (media::DOCKER_MANIFEST.into(), img.manifest.clone()),
        );
        for d in [&img.layer, &img.config] {
            st.blobs.insert(d.digest.to_string(), img.bytes(d));
        }
        st.manifests.insert(
            "old".into(),
            (
                media::DOCKER_MANIFEST_V1_SIGNED.into(),
                br#"{"schemaVersion":1,"name":"test/app","tag":"old","fsLayers":[]}"#.to_vec(),
            ),
        );
        st.blobs.insert(big_desc.digest.to_string(), big.clone());
        st.blobs.insert(
            bogus.digest.to_string(),
            b"what was delivered".to_vec()[..17].to_vec(),
        );
        st.fail_once.push(img.layer.digest.to_string());
        st.cut_once.push(big_desc.digest.to_string());
    }
    let port = fake_registry(state.clone());
    let r: Reference = format!("127.0.0.1:{port}/test/app:latest").parse().unwrap();
    let c = client(None);

    let got = c.resolve(&r).unwrap();
    assert_eq!(got.manifest_bytes, img.manifest);
    assert_eq!(got.config_bytes, img.bytes(&img.config));
    // 503 on the first try, then the blob.
    let mut layer = Vec::new();
    c.fetch_blob(&r, &img.layer, &mut layer).unwrap();
    assert_eq!(layer, img.bytes(&img.layer));
    // A connection cut halfway resumes where it stopped.
    let mut back = Vec::new();
    c.fetch_blob(&r, &big_desc, &mut back).unwrap();
    assert_eq!(back, big);
    {
        let st = state.lock().unwrap();
        // One token for the pull scope, reused for every request.
        assert_eq!(st.token_scopes, vec!["repository:test/app:pull"]);
        assert_eq!(st.ranges.len(), 1, "{:?}", st.ranges);
        assert_ne!(st.ranges[0], "bytes=0-");
    }
    let err = c.fetch_blob(&r, &bogus, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(err.cause(), Some(Cause::DigestMismatch { .. })),
        "{err}"
    );

    // One client shared by plain threads (concurrent block_on on its runtime).
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    c.fetch_blob(&r, &big_desc, &mut out).unwrap();
                    out == big
                })
            })
            .collect();
        assert!(handles.into_iter().all(|h| h.join().unwrap()));
    });

    // Schema 1 manifests get a clear refusal.
    let v1: Reference = format!("127.0.0.1:{port}/test/app:old").parse().unwrap();
    let err = c.resolve(&v1).unwrap_err();
    assert!(matches!(err.cause(), Some(Cause::Schema1(_))), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "pulling `{v1}`: schema 1 manifests are not supported"
        )),
        "{err}"
    );

    let missing: Reference = format!("127.0.0.1:{port}/test/app:nope").parse().unwrap();
    assert_eq!(
        c.resolve(&missing).unwrap_err().to_string(),
        format!(
            "pulling `{missing}`: manifest unknown: tag `nope` not found in repository `test/app`"
        )
    );
}

/// Regression (issue 14): `manifest unknown` alone did not say which tag was missing where.
#[test]
#[ignore = "needs root and a registry"]
fn pull_of_a_missing_tag_names_the_tag_and_the_repository() {
    support::needs_root_and_registry();
    let store = tempfile::tempdir().unwrap();
    let out = Command::new(support::rbuild_bin())
        .env("RBUILD_ROOT", store.path())
        .args(["pull", &format!("{}/busybox:nope", support::REGISTRY)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().last().unwrap_or_default(),
        format!(
            "error: pulling `{}/busybox:nope`: manifest unknown: \
             tag `nope` not found in repository `busybox`",
            support::REGISTRY
        )
    );
}

fn docker_running() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
#[ignore = "needs docker-registry and docker"]
fn docker_engine_pulls_an_image_pushed_by_us_needs_running_docker() {
    needs_docker_registry();
    support::require(
        docker_running(),
        "a docker engine answering `docker info` (this test never starts one)",
    );
    let reg = Registry::start(None);
    let c = client(None);
    let name = format!("localhost:{}/rbuild-test/tiny:v1", reg.port);
    let r: Reference = name.parse().unwrap();
    let img = TestImage::new(&Platform::host(), b"pulled by docker\n");
    let digest = img.push(&c, &r);
    let _pulled = support::DockerImages(vec![name.clone()]);
    let out = Command::new("docker")
        .args(["pull", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&digest.to_string()), "{stdout}");
    let inspect = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &name])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        img.config.digest.to_string()
    );
}

/// Issue 18, lazy base images: a build keeps the base's layers as remote layers, so a
/// tampered layer blob goes unnoticed while nothing needs it; an output that needs its
/// bytes fetches it, refuses it (digest mismatch, naming the image) and writes nothing:
/// no output file, no blob, no layer in the store.
#[test]
#[ignore = "needs docker-registry"]
fn a_tampered_lazy_base_layer_is_refused_when_an_output_needs_it() {
    needs_docker_registry();
    let reg = Registry::start(None);
    let r = reg.reference("tamper/base:1");
    let img = TestImage::new(&Platform::host(), b"the real base");
    img.push(&client(None), &r);
    let file = reg.blob_file(&img.layer.digest);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (store, ctx) = (dir.path().join("store"), dir.path().join("ctx"));
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {r}\nENV A=1\n")).unwrap();
    let build = |args: &[&str]| {
        Command::new(support::rbuild_bin())
            .env("RBUILD_ROOT", &store)
            .arg("build")
            .args(args)
            .arg(&ctx)
            .output()
            .unwrap()
    };
    let out = build(&[]);
    assert!(out.status.success(), "{out:?}");
    let tar = dir.path().join("out.tar");
    let out = build(&["-o", &format!("type=tar,dest={}", tar.display())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("pulling `{}", r.name()))
            && stderr.contains(&format!("digest mismatch: expected {}", img.layer.digest)),
        "{stderr}"
    );
    assert!(stderr.contains("for the output"), "{stderr}");
    assert!(!stderr.contains("cache"), "{stderr}");
    assert!(!tar.exists());
    assert!(!store
        .join("blobs/sha256")
        .join(img.layer.digest.hex())
        .exists());
    let layers = std::fs::read_dir(store.join("layers")).map_or(0, |d| d.count());
    assert_eq!(layers, 0);
}

/// Issue 18, lazy base images: a base from a registry that wants credentials is kept
/// lazily, and its layers are fetched later with the credentials of the command that needs
/// them (docker's config.json, as the pull): without them the output fails naming the
/// registry's demand; with them it is written.
#[test]
#[ignore = "needs docker-registry"]
fn a_lazy_base_is_fetched_with_the_credentials_of_the_build() {
    needs_docker_registry();
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("htpasswd")
        .args(["-Bbn", "alice", "s3cret"])
        .output()
        .expect("htpasswd (apache2-utils) is needed for this test");
    assert!(out.status.success());
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    let reg = Registry::start(Some(&htpasswd));
    let r = reg.reference("private/base:1");
    let auth = work.path().join("auth");
    std::fs::create_dir(&auth).unwrap();
    std::fs::write(
        auth.join("config.json"),
        format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#,
            reg.port
        ),
    )
    .unwrap();
    let img = TestImage::new(&Platform::host(), b"private base");
    img.push(&client(Some(&auth)), &r);
    let none = work.path().join("none");
    std::fs::create_dir(&none).unwrap();

    let (store, ctx) = (work.path().join("store"), work.path().join("ctx"));
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {r}\nENV A=1\n")).unwrap();
    let tar = work.path().join("out.tar");
    let build = |config: &Path, output: bool| {
        let mut cmd = Command::new(support::rbuild_bin());
        cmd.env("RBUILD_ROOT", &store)
            .env("DOCKER_CONFIG", config)
            .arg("build");
        if output {
            cmd.args(["-o", &format!("type=tar,dest={}", tar.display())]);
        }
        cmd.arg(&ctx).output().unwrap()
    };
    let out = build(&auth, false);
    assert!(out.status.success(), "{out:?}");
    assert!(!store
        .join("blobs/sha256")
        .join(img.layer.digest.hex())
        .exists());
    let out = build(&none, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("authentication required"), "{stderr}");
    assert!(!tar.exists());
    let out = build(&auth, true);
    assert!(out.status.success(), "{out:?}");
    let listing = support::listing(std::fs::File::open(&tar).unwrap());
    assert!(listing.contains_key("hello.txt"), "{listing:?}");
}

/// rbuild with no CA certificates to load: SSL_CERT_FILE and SSL_CERT_DIR (which replace
/// the system's bundle where set) name paths that do not exist.
fn rbuild_without_ca(work: &Path) -> Command {
    let none = work.join("no-ca-certificates");
    let mut cmd = Command::new(support::rbuild_bin());
    cmd.env("RBUILD_ROOT", work.join("store"))
        .env("SSL_CERT_FILE", &none)
        .env("SSL_CERT_DIR", &none);
    cmd
}

/// Regression: the HTTP client loaded the system's CA certificates when it was made and
/// failed without any ("setting up the registry client: ... No CA certificates were loaded
/// from the system"), so a machine without ca-certificates could not even pull from a
/// plain-HTTP loopback registry.
#[test]
#[ignore = "needs docker-registry"]
fn plain_http_registries_need_no_ca_certificates() {
    needs_docker_registry();
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let r = reg.reference("plain/base:1");
    let img = TestImage::new(&Platform::host(), b"no ca");
    img.push(&client(None), &r);
    let out = rbuild_without_ca(work.path())
        .args(["pull", &r.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Without CA certificates an HTTPS registry fails at its first connection, naming the
/// registry and what to install. The registry is a TLS server on loopback reached by a
/// name (`tls-registry.test`, from an /etc/hosts bind-mounted in a mount namespace of the
/// test's own), so rbuild speaks HTTPS to it as to any registry that is not loopback.
#[test]
#[ignore = "needs root"]
fn https_without_ca_certificates_says_what_to_install() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    support::needs_root();
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tls");
    let certs = CertificateDer::pem_file_iter(tls.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(tls.join("key.pem")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(Mutex::new(0));
    let seen = handshakes.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut sock = conn.unwrap();
            let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
            // The client sends its hello and aborts when it sees the certificate.
            let _ = tls.complete_io(&mut sock);
            *seen.lock().unwrap() += 1;
        }
    });
    let work = tempfile::tempdir().unwrap();
    let hosts = work.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost tls-registry.test\n").unwrap();
    let reference = format!("tls-registry.test:{port}/base:1");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#,
        "sh",
    ])
    .arg(&hosts);
    let rbuild = rbuild_without_ca(work.path());
    cmd.arg(rbuild.get_program())
        .envs(rbuild.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .args(["pull", &reference]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot verify the TLS certificate of registry tls-registry.test:{port}: \
             no CA certificates found on this machine"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("apt-get install ca-certificates"),
        "{stderr}"
    );
    assert_eq!(
        *handshakes.lock().unwrap(),
        1,
        "one TLS handshake, not retried"
    );
}
