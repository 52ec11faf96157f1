//! The distribution API over reqwest (OCI distribution spec v1.1, Docker registry v2).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};

use super::auth::{self, Challenge, Credentials};
use super::error::{Action, Cause, ManifestRef, RegistryError};
use super::{platform, Progress, RegistryOptions, ResolvedImage};
use crate::image::{media, Descriptor, Digest, ImageConfig, Index, Manifest, Platform, Reference};

/// Manifests larger than this are refused (containerd uses the same bound).
const MAX_MANIFEST: u64 = 4 << 20;
/// Image configs larger than this are refused.
const MAX_CONFIG: u64 = 64 << 20;
/// Uploads above this size go in PATCH chunks of this size.
const DEFAULT_CHUNK: u64 = 64 << 20;
/// Blobs fetched at once by `fetch_blobs_parallel`.
const PARALLEL: usize = 3;
/// Attempts after the first for transient failures (5xx, 429, dropped connections).
const RETRIES: u32 = 4;
const BACKOFF: Duration = Duration::from_millis(200);

/// What a request is about: the reference (for messages and the repository) and whether
/// the token needs push rights.
struct Target<'a> {
    r: &'a Reference,
    action: Action,
    push: bool,
    /// Another repository of the same registry to pull from (cross-repo mount).
    mount_from: Option<&'a str>,
}

impl Target<'_> {
    fn scopes(&self) -> Vec<String> {
        let mut scopes = vec![format!(
            "repository:{}:{}",
            self.r.repository,
            if self.push { "pull,push" } else { "pull" }
        )];
        if let Some(from) = self.mount_from {
            scopes.push(format!("repository:{from}:pull"));
        }
        scopes
    }
}

#[derive(Clone)]
enum AuthHeader {
    Bearer(String),
    Basic(String, String),
}

#[derive(Default)]
struct AuthState {
    /// Tokens per (registry, scopes).
    tokens: HashMap<(String, String), AuthHeader>,
    /// Registries that asked for Basic auth: send credentials up front.
    basic: HashMap<String, AuthHeader>,
    /// config.json lookups per registry.
    creds: HashMap<String, Option<Credentials>>,
}

/// A registry client with a synchronous API; see the module docs.
pub struct Client {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    insecure: Vec<String>,
    platform: Platform,
    config_dir: Option<PathBuf>,
    chunk_size: u64,
    state: Mutex<AuthState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("insecure", &self.insecure)
            .field("platform", &self.platform)
            .field("config_dir", &self.config_dir)
            .finish_non_exhaustive()
    }
}

fn op_err(t: &Target, cause: Cause) -> RegistryError {
    RegistryError::Op {
        action: t.action,
        reference: t.r.to_string(),
        cause,
    }
}

/// The innermost message of an error chain ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A transport error: no connection at all (not retried), or one that broke (retried).
fn net_err(r: &Reference, e: &reqwest::Error) -> Cause {
    let detail = if e.is_timeout() {
        "timed out".to_string()
    } else {
        root_cause(e)
    };
    let host = r.api_host().to_string();
    if e.is_connect() {
        Cause::Unreachable { host, detail }
    } else {
        Cause::ConnectionLost { host, detail }
    }
}

fn io_err(what: impl Into<String>, error: std::io::Error) -> Cause {
    Cause::Io {
        what: what.into(),
        error,
    }
}

/// The cause for an unexpected response: the first message of the distribution error body.
async fn status_cause(resp: Response) -> Cause {
    let (status, message) = error_message(resp).await;
    match status {
        StatusCode::FORBIDDEN => Cause::Denied(message),
        _ => Cause::Status {
            status: status.as_u16(),
            message,
        },
    }
}

/// The status and the first message of the distribution error body (`manifest unknown`),
/// else the start of the body, else the status's reason phrase.
async fn error_message(resp: Response) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let message = serde_json::from_slice::<Errors>(&body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| {
            if e.message.is_empty() {
                e.code
            } else {
                e.message
            }
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("").to_string()
            } else {
                text.to_string()
            }
        });
    (status, message)
}

/// Read a whole (small) body, refusing more than `max` bytes.
async fn read_limited(r: &Reference, mut resp: Response, max: u64) -> Result<Vec<u8>, Cause> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| net_err(r, &e))? {
        if (out.len() + chunk.len()) as u64 > max {
            return Err(Cause::Invalid {
                what: "response",
                detail: format!("larger than {max} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn content_type(h: &HeaderMap) -> Option<String> {
    let v = h.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim().to_string())
}

fn is_index(mt: &str) -> bool {
    mt == media::OCI_INDEX || mt == media::DOCKER_MANIFEST_LIST
}

fn is_manifest(mt: &str) -> bool {
    mt == media::OCI_MANIFEST || mt == media::DOCKER_MANIFEST
}

/// A request body streaming `len` bytes of `path` from `offset`.
fn file_body(path: &Path, offset: u64, len: u64) -> std::io::Result<reqwest::Body> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let reader = file.take(len);
    let stream = futures_util::stream::try_unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; 256 << 10];
        // A blocking read inside the runtime: local file reads are short and the runtime
        // is ours alone, so a blocking pool hop would only add latency.
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), reader)))
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// Make ring rustls's process-wide crypto provider (reqwest is built without one, see
/// Cargo.toml). Installing twice keeps the first, which is this same provider.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Client {
    pub fn new(opts: RegistryOptions) -> Result<Client, RegistryError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RegistryError::Setup(format!("tokio runtime: {e}")))?;
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| RegistryError::Setup(root_cause(&e)))?;
        let insecure = opts
            .insecure_registries
            .iter()
            .map(|h| {
                let h = h
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                h.trim_end_matches('/').to_string()
            })
            .collect();
        Ok(Client {
            rt,
            http,
            insecure,
            platform: opts.platform,
            config_dir: auth::config_dir(opts.docker_config_dir.as_deref()),
            chunk_size: DEFAULT_CHUNK,
            state: Mutex::new(AuthState::default()),
        })
    }

    /// Upload blobs larger than `bytes` in PATCH chunks of `bytes` (default 64 MiB).
    pub fn with_chunk_size(mut self, bytes: u64) -> Client {
        self.chunk_size = bytes.max(1);
        self
    }

    /// The platform manifest lists are resolved for.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// GET the manifest for `r` (tag or digest); for a list/index pick the client's
    /// platform and fetch that manifest; then fetch and verify the config blob.
    pub fn resolve(&self, r: &Reference) -> Result<ResolvedImage, RegistryError> {
        let t = Target {
            r,
            action: Action::Pulling,
            push: false,
            mount_from: None,
        };
        self.rt
            .block_on(self.resolve_async(&t))
            .map_err(|c| op_err(&t, c))
    }

    /// Stream a blob into `out`, verifying size and digest on the way. On a dropped
    /// connection or 5xx/429 the transfer resumes (Range) or restarts with backoff.
    /// On a digest mismatch `out` has received bad bytes: write to a temporary file
    /// and rename only on success.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        out: &mut dyn Write,
    ) -> Result<(), RegistryError> {
        let t = Target {
            r,
            action: Action::Pulling,
            push: false,
            mount_from: None,
        };
        self.rt
            .block_on(self.fetch_blob_async(&t, desc, out, &mut |_| {}))
            .map_err(|c| op_err(&t, c))
    }

    /// Fetch several blobs of one repository, a few at once. `open` gives the writer for
    /// each (called when its transfer starts); `progress` hears about every blob. The first
    /// failure stops the rest and is returned.
    pub fn fetch_blobs_parallel(
        &self,
        r: &Reference,
        descs: &[Descriptor],
        open: &dyn Fn(&Descriptor) -> std::io::Result<Box<dyn Write + Send>>,
        progress: &dyn Fn(&Progress),
    ) -> Result<(), RegistryError> {
        let t = Target {
            r,
            action: Action::Pulling,
            push: false,
            mount_from: None,
        };
        let t = &t;
        let work = futures_util::stream::iter(descs.iter().map(|desc| async move {
            let mut out = open(desc).map_err(|e| io_err(format!("opening {}", desc.digest), e))?;
            let mut report = |done| {
                progress(&Progress {
                    digest: desc.digest.clone(),
                    done,
                    total: desc.size,
                })
            };
            self.fetch_blob_async(t, desc, &mut out, &mut report)
                .await?;
            out.flush()
                .map_err(|e| io_err(format!("writing {}", desc.digest), e))
        }))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>();
        self.rt.block_on(work).map(drop).map_err(|c| op_err(t, c))
    }

    /// Whether the repository of `r` has blob `d` (HEAD).
    pub fn blob_exists(&self, r: &Reference, d: &Digest) -> Result<bool, RegistryError> {
        let t = Target {
            r,
            action: Action::Checking,
            push: false,
            mount_from: None,
        };
        self.rt
            .block_on(self.blob_exists_async(&t, d))
            .map_err(|c| op_err(&t, c))
    }

    /// Upload the blob at `path` (whose digest and size `desc` gives) unless the
    /// repository has it already. With `mount_from` (same registry, other repository) a
    /// cross-repository mount is tried first; a 202 answer falls back to an upload.
    /// Blobs above the chunk size go in PATCH chunks.
    pub fn push_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        path: &Path,
        mount_from: Option<&Reference>,
    ) -> Result<(), RegistryError> {
        let from = mount_from
            .filter(|m| m.registry == r.registry && m.repository != r.repository)
            .map(|m| m.repository.as_str());
        let t = Target {
            r,
            action: Action::Pushing,
            push: true,
            mount_from: from,
        };
        self.rt
            .block_on(async {
                let mut attempt = 0;
                loop {
                    match self.push_blob_once(&t, desc, path).await {
                        Err(c) if c.is_transient() && attempt < RETRIES => {
                            attempt += 1;
                            tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
                        }
                        Err(c) if c.is_transient() => return Err(c.after(attempt + 1)),
                        res => return res,
                    }
                }
            })
            .map_err(|c| op_err(&t, c))
    }

    /// PUT a manifest (or index) exactly as `bytes`, under the tag of `r` (or its digest
    /// when it has no tag). Returns the digest of `bytes`.
    pub fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let t = Target {
            r,
            action: Action::Pushing,
            push: true,
            mount_from: None,
        };
        self.rt
            .block_on(self.push_manifest_async(&t, media_type, bytes))
            .map_err(|c| op_err(&t, c))
    }

    // ---- transport -------------------------------------------------------------------

    fn scheme(&self, r: &Reference) -> &'static str {
        if r.is_loopback() || self.insecure.contains(&r.registry) {
            "http"
        } else {
            "https"
        }
    }

    /// `scheme://host/v2/<repository>/<rest>`
    fn url(&self, r: &Reference, rest: &str) -> Result<Url, Cause> {
        let s = format!(
            "{}://{}/v2/{}/{}",
            self.scheme(r),
            r.api_host(),
            r.repository,
            rest
        );
        Url::parse(&s).map_err(|e| Cause::Invalid {
            what: "registry URL",
            detail: format!("{s}: {e}"),
        })
    }

    /// An upload `Location`, which may be relative to the registry.
    fn location(&self, r: &Reference, resp: &Response) -> Result<Url, Cause> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Cause::Invalid {
                what: "upload response",
                detail: "no Location header".to_string(),
            })?;
        let base = Url::parse(&format!("{}://{}/", self.scheme(r), r.api_host())).map_err(|e| {
            Cause::Invalid {
                what: "registry URL",
                detail: e.to_string(),
            }
        })?;
        base.join(loc).map_err(|e| Cause::Invalid {
            what: "upload Location",
            detail: format!("{loc}: {e}"),
        })
    }

    fn credentials(&self, registry: &str) -> Result<Option<Credentials>, Cause> {
        if let Some(c) = self.state.lock().unwrap().creds.get(registry) {
            return Ok(c.clone());
        }
        let found = match &self.config_dir {
            Some(dir) => auth::lookup(dir, registry).map_err(|detail| Cause::Config {
                path: dir.join("config.json").display().to_string(),
                detail,
            })?,
            None => None,
        };
        self.state
            .lock()
            .unwrap()
            .creds
            .insert(registry.to_string(), found.clone());
        Ok(found)
    }

    fn config_name(&self) -> String {
        match &self.config_dir {
            Some(d) => d.join("config.json").display().to_string(),
            None => "docker config (no $HOME or $DOCKER_CONFIG)".to_string(),
        }
    }

    /// Get a bearer token for `scopes` from `realm` (docker's token protocol; identity
    /// tokens go through the OAuth2 refresh-token POST).
    async fn fetch_token(
        &self,
        t: &Target<'_>,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        creds: Option<&Credentials>,
    ) -> Result<String, Cause> {
        let token_err = |detail: String| Cause::Token {
            realm: realm.to_string(),
            detail,
        };
        let mut url = Url::parse(realm).map_err(|e| token_err(format!("invalid realm: {e}")))?;
        let req = match creds {
            Some(Credentials::IdentityToken(refresh)) => {
                let mut form = Url::parse("x:/").expect("static URL");
                {
                    let mut q = form.query_pairs_mut();
                    q.append_pair("grant_type", "refresh_token");
                    q.append_pair("refresh_token", refresh);
                    q.append_pair("client_id", "rbuild");
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &scopes.join(" "));
                }
                self.http
                    .post(url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.query().unwrap_or("").to_string())
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                }
                let req = self.http.get(url);
                match creds {
                    Some(Credentials::Basic { username, password }) => {
                        req.basic_auth(username, Some(password))
                    }
                    _ => req,
                }
            }
        };
        let resp = req.send().await.map_err(|e| net_err(t.r, &e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = match status_cause(resp).await {
                Cause::Status { message, .. } | Cause::Denied(message) => message,
                other => other.to_string(),
            };
            return Err(if creds.is_some() {
                Cause::AuthRefused {
                    host: t.r.api_host().to_string(),
                    detail,
                }
            } else {
                Cause::NoCredentials {
                    host: t.r.api_host().to_string(),
                    config: self.config_name(),
                }
            });
        }
        if !status.is_success() {
            return Err(token_err(status_cause(resp).await.to_string()));
        }
        let body = read_limited(t.r, resp, 1 << 20).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let tr: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_err(format!("invalid token response: {e}")))?;
        tr.token
            .filter(|s| !s.is_empty())
            .or(tr.access_token)
            .ok_or_else(|| token_err("no token in the response".to_string()))
    }

    /// Send a request built by `make`, answering one 401 challenge (bearer token or basic
    /// credentials) and retrying once. Any other status is returned to the caller.
    async fn send(
        &self,
        t: &Target<'_>,
        make: &dyn Fn() -> Result<RequestBuilder, Cause>,
    ) -> Result<Response, Cause> {
        let registry = t.r.registry.clone();
        let scopes = t.scopes();
        let key = (registry.clone(), scopes.join(" "));
        let mut authed = false;
        loop {
            let cached = {
                let st = self.state.lock().unwrap();
                st.tokens
                    .get(&key)
                    .or_else(|| st.basic.get(&registry))
                    .cloned()
            };
            let mut req = make()?;
            req = match &cached {
                Some(AuthHeader::Bearer(tok)) => req.bearer_auth(tok),
                Some(AuthHeader::Basic(u, p)) => req.basic_auth(u, Some(p)),
                None => req,
            };
            let resp = req.send().await.map_err(|e| net_err(t.r, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let creds = self.credentials(&registry)?;
            if authed {
                // Fresh credentials were refused.
                return Err(match creds {
                    None => Cause::NoCredentials {
                        host: t.r.api_host().to_string(),
                        config: self.config_name(),
                    },
                    Some(_) => Cause::AuthRefused {
                        host: t.r.api_host().to_string(),
                        detail: status_cause(resp).await.to_string(),
                    },
                });
            }
            let challenge = resp
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(auth::parse_challenge);
            match challenge {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    // Our own scopes, not the challenge's: a HEAD before a push must get
                    // a token that also allows the push.
                    let tok = self
                        .fetch_token(t, &realm, service.as_deref(), &scopes, creds.as_ref())
                        .await?;
                    self.state
                        .lock()
                        .unwrap()
                        .tokens
                        .insert(key.clone(), AuthHeader::Bearer(tok));
                }
                Some(Challenge::Basic) => match creds {
                    Some(Credentials::Basic { username, password }) => {
                        self.state
                            .lock()
                            .unwrap()
                            .basic
                            .insert(registry.clone(), AuthHeader::Basic(username, password));
                    }
                    _ => {
                        return Err(Cause::NoCredentials {
                            host: t.r.api_host().to_string(),
                            config: self.config_name(),
                        })
                    }
                },
                None => {
                    return Err(Cause::AuthRefused {
                        host: t.r.api_host().to_string(),
                        detail: "401 without a supported WWW-Authenticate challenge".into(),
                    })
                }
            }
            authed = true;
        }
    }

    /// `send` with retries and backoff on 5xx, 429 and connection failures; for
    /// idempotent requests.
    async fn send_retry(
        &self,
        t: &Target<'_>,
        make: &dyn Fn() -> Result<RequestBuilder, Cause>,
    ) -> Result<Response, Cause> {
        let mut attempt = 0;
        loop {
            let res = match self.send(t, make).await {
                Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {
                    Err(status_cause(resp).await)
                }
                other => other,
            };
            match res {
                Err(c) if c.is_transient() && attempt < RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
                }
                Err(c) if c.is_transient() => return Err(c.after(attempt + 1)),
                other => return other,
            }
        }
    }

    // ---- pull ------------------------------------------------------------------------

    /// GET a manifest by tag or digest: (bytes, media type, digest of the bytes).
    async fn get_manifest(
        &self,
        t: &Target<'_>,
        wanted: ManifestRef,
        expect: Option<&Digest>,
    ) -> Result<(Vec<u8>, String, Digest), Cause> {
        let reference = match &wanted {
            ManifestRef::Tag(tag) => tag.clone(),
            ManifestRef::Digest(d) => d.to_string(),
        };
        let url = self.url(t.r, &format!("manifests/{reference}"))?;
        let accept = [
            media::OCI_INDEX,
            media::DOCKER_MANIFEST_LIST,
            media::OCI_MANIFEST,
            media::DOCKER_MANIFEST,
        ]
        .join(", ");
        let resp = self
            .send_retry(t, &|| {
                Ok(self.http.get(url.clone()).header(ACCEPT, accept.as_str()))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            // The registry's code (`manifest unknown`) alone does not say which tag of
            // which repository was missing.
            let (_, message) = error_message(resp).await;
            return Err(Cause::ManifestUnknown {
                message,
                wanted,
                repository: t.r.repository.clone(),
            });
        }
        if !resp.status().is_success() {
            return Err(status_cause(resp).await);
        }
        let header_type = content_type(resp.headers());
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes = read_limited(t.r, resp, MAX_MANIFEST).await?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = expect.or(header_digest.as_ref()) {
            if *expected != digest {
                return Err(Cause::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            schema_version: u32,
            media_type: Option<String>,
        }
        let probe: Probe = serde_json::from_slice(&bytes).map_err(|e| Cause::Invalid {
            what: "manifest",
            detail: e.to_string(),
        })?;
        // The body's mediaType wins over a generic Content-Type (some servers send
        // application/json).
        let media_type = probe
            .media_type
            .clone()
            .or(header_type.filter(|h| h.starts_with("application/vnd.")))
            .unwrap_or_default();
        if probe.schema_version == 1
            || media_type == media::DOCKER_MANIFEST_V1
            || media_type == media::DOCKER_MANIFEST_V1_SIGNED
        {
            return Err(Cause::Schema1(if media_type.is_empty() {
                "schemaVersion 1".to_string()
            } else {
                media_type
            }));
        }
        Ok((bytes, media_type, digest))
    }

    async fn resolve_async(&self, t: &Target<'_>) -> Result<ResolvedImage, Cause> {
        let r = t.r;
        let by = match &r.digest {
            Some(d) => ManifestRef::Digest(d.clone()),
            None => ManifestRef::Tag(r.tag_or_latest().to_string()),
        };
        let (mut bytes, mut media_type, mut digest) =
            self.get_manifest(t, by, r.digest.as_ref()).await?;
        let mut index_digest = None;
        // An index without a mediaType: tell it from a manifest by its `manifests` field.
        let looks_like_index = media_type.is_empty()
            && serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|v| v.get("manifests").is_some());
        if is_index(&media_type) || looks_like_index {
            let index: Index = serde_json::from_slice(&bytes).map_err(|e| Cause::Invalid {
                what: "manifest list",
                detail: e.to_string(),
            })?;
            let chosen = platform::choose(&index, &self.platform).map_err(|available| {
                Cause::NoMatchingPlatform {
                    wanted: self.platform.to_spec(),
                    available: if available.is_empty() {
                        "none".to_string()
                    } else {
                        available.join(", ")
                    },
                }
            })?;
            index_digest = Some(digest);
            let (b, mt, d) = self
                .get_manifest(
                    t,
                    ManifestRef::Digest(chosen.digest.clone()),
                    Some(&chosen.digest),
                )
                .await?;
            if b.len() as u64 != chosen.size {
                return Err(Cause::SizeMismatch {
                    digest: chosen.digest.clone(),
                    expected: chosen.size,
                    actual: b.len() as u64,
                });
            }
            (bytes, media_type, digest) = (b, mt, d);
            if media_type.is_empty() {
                media_type = chosen.media_type.clone();
            }
        }
        if media_type.is_empty() {
            media_type = media::OCI_MANIFEST.to_string();
        }
        if !is_manifest(&media_type) {
            return Err(Cause::UnsupportedMediaType(media_type));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Cause::Invalid {
            what: "manifest",
            detail: e.to_string(),
        })?;
        if manifest.config.size > MAX_CONFIG {
            return Err(Cause::Invalid {
                what: "image config",
                detail: format!("{} bytes is too large", manifest.config.size),
            });
        }
        let mut config_bytes = Vec::with_capacity(manifest.config.size as usize);
        self.fetch_blob_async(t, &manifest.config, &mut config_bytes, &mut |_| {})
            .await?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| Cause::Invalid {
                what: "image config",
                detail: e.to_string(),
            })?;
        Ok(ResolvedImage {
            reference: r.clone(),
            manifest_digest: digest,
            manifest_bytes: bytes,
            manifest,
            manifest_media_type: media_type,
            index_digest,
            config_bytes,
            config,
        })
    }

    async fn fetch_blob_async(
        &self,
        t: &Target<'_>,
        desc: &Descriptor,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), Cause> {
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let mut attempt = 0;
        // Every request made, for the message when they all failed.
        let mut tries = 0;
        loop {
            let before = done;
            match self
                .fetch_from(t, desc, &mut hasher, &mut done, out, progress)
                .await
            {
                Ok(()) => break,
                // Progress made since the last failure earns fresh retries: a flaky
                // link that keeps delivering should finish.
                Err(c) if c.is_transient() && (attempt < RETRIES || done > before) => {
                    attempt = if done > before { 1 } else { attempt + 1 };
                    tries += 1;
                    tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
                }
                Err(c) if c.is_transient() => return Err(c.after(tries + 1)),
                Err(c) => return Err(c),
            }
        }
        if done != desc.size {
            return Err(Cause::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: done,
            });
        }
        let actual = Digest::from_raw(&hasher.finalize());
        if actual != desc.digest {
            return Err(Cause::DigestMismatch {
                expected: desc.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// One GET of a blob from byte `*done` on (Range), hashing and writing what arrives.
    async fn fetch_from(
        &self,
        t: &Target<'_>,
        desc: &Descriptor,
        hasher: &mut Sha256,
        done: &mut u64,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), Cause> {
        let url = self.url(t.r, &format!("blobs/{}", desc.digest))?;
        let from = *done;
        let mut resp = self
            .send(t, &|| {
                let req = self.http.get(url.clone());
                Ok(if from > 0 {
                    req.header(RANGE, format!("bytes={from}-"))
                } else {
                    req
                })
            })
            .await?;
        // Bytes of the body to drop: all we have already when the server ignored Range.
        let mut skip = match resp.status() {
            StatusCode::OK => from,
            StatusCode::PARTIAL_CONTENT if from > 0 => 0,
            StatusCode::NOT_FOUND => return Err(Cause::BlobUnknown(desc.digest.clone())),
            _ => return Err(status_cause(resp).await),
        };
        let mut last_report = *done;
        progress(*done);
        while let Some(chunk) = resp.chunk().await.map_err(|e| net_err(t.r, &e))? {
            let mut chunk = &chunk[..];
            if skip > 0 {
                let n = skip.min(chunk.len() as u64) as usize;
                chunk = &chunk[n..];
                skip -= n as u64;
            }
            if *done + chunk.len() as u64 > desc.size {
                return Err(Cause::SizeMismatch {
                    digest: desc.digest.clone(),
                    expected: desc.size,
                    actual: *done + chunk.len() as u64,
                });
            }
            out.write_all(chunk)
                .map_err(|e| io_err(format!("writing {}", desc.digest), e))?;
            hasher.update(chunk);
            *done += chunk.len() as u64;
            if *done - last_report >= 256 << 10 {
                progress(*done);
                last_report = *done;
            }
        }
        if skip > 0 {
            // The restarted body was shorter than what we had before.
            return Err(Cause::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: from - skip,
            });
        }
        progress(*done);
        Ok(())
    }

    async fn blob_exists_async(&self, t: &Target<'_>, d: &Digest) -> Result<bool, Cause> {
        let url = self.url(t.r, &format!("blobs/{d}"))?;
        let resp = self
            .send_retry(t, &|| Ok(self.http.head(url.clone())))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_cause(resp).await),
        }
    }

    // ---- push ------------------------------------------------------------------------

    async fn push_blob_once(
        &self,
        t: &Target<'_>,
        desc: &Descriptor,
        path: &Path,
    ) -> Result<(), Cause> {
        let what = || format!("reading {}", path.display());
        let size = std::fs::metadata(path)
            .map_err(|e| io_err(what(), e))?
            .len();
        if size != desc.size {
            return Err(Cause::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: size,
            });
        }
        if self.blob_exists_async(t, &desc.digest).await? {
            return Ok(());
        }
        let mut start = self.url(t.r, "blobs/uploads/")?;
        if let Some(from) = t.mount_from {
            start
                .query_pairs_mut()
                .append_pair("mount", &desc.digest.to_string())
                .append_pair("from", from);
        }
        let resp = self
            .send_retry(t, &|| {
                Ok(self.http.post(start.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        let mut location = match resp.status() {
            // Mounted: the blob is there now.
            StatusCode::CREATED if t.mount_from.is_some() => return Ok(()),
            StatusCode::ACCEPTED => self.location(t.r, &resp)?,
            _ => return Err(status_cause(resp).await),
        };
        if size > self.chunk_size {
            let mut offset = 0;
            while offset < size {
                let len = self.chunk_size.min(size - offset);
                let url = location.clone();
                let resp = self
                    .send(t, &|| {
                        let body = file_body(path, offset, len).map_err(|e| io_err(what(), e))?;
                        Ok(self
                            .http
                            .request(Method::PATCH, url.clone())
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_LENGTH, len)
                            .header("Content-Range", format!("{}-{}", offset, offset + len - 1))
                            .body(body))
                    })
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(status_cause(resp).await);
                }
                location = self.location(t.r, &resp)?;
                offset += len;
            }
        }
        let mut put = location;
        put.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let monolithic = size <= self.chunk_size;
        let resp = self
            .send(t, &|| {
                let req = self
                    .http
                    .put(put.clone())
                    .header(CONTENT_TYPE, "application/octet-stream");
                Ok(if monolithic {
                    let body = file_body(path, 0, size).map_err(|e| io_err(what(), e))?;
                    req.header(CONTENT_LENGTH, size).body(body)
                } else {
                    req.header(CONTENT_LENGTH, 0)
                })
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_cause(resp).await);
        }
        Ok(())
    }

    async fn push_manifest_async(
        &self,
        t: &Target<'_>,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, Cause> {
        let digest = Digest::of(bytes);
        if let Some(expected) = &t.r.digest {
            if *expected != digest && t.r.tag.is_none() {
                return Err(Cause::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        let reference = match &t.r.tag {
            Some(tag) => tag.clone(),
            None => digest.to_string(),
        };
        let url = self.url(t.r, &format!("manifests/{reference}"))?;
        let body = bytes::Bytes::copy_from_slice(bytes);
        let resp = self
            .send_retry(t, &|| {
                Ok(self
                    .http
                    .put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(body.clone()))
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(status_cause(resp).await);
        }
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
        {
            if d != digest {
                return Err(Cause::DigestMismatch {
                    expected: digest,
                    actual: d,
                });
            }
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Client>();
    }

    #[test]
    fn plain_http_only_for_loopback_and_insecure_registries() {
        let c = Client::new(RegistryOptions {
            insecure_registries: vec!["http://reg.lan:5000/".into()],
            ..Default::default()
        })
        .unwrap();
        let scheme = |s: &str| c.scheme(&s.parse::<Reference>().unwrap());
        assert_eq!(scheme("localhost:5000/a"), "http");
        assert_eq!(scheme("127.0.0.1:5000/a"), "http");
        assert_eq!(scheme("reg.lan:5000/a"), "http");
        assert_eq!(scheme("reg.lan/a"), "https");
        assert_eq!(scheme("busybox"), "https");
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(
            c.url(&r, "manifests/latest").unwrap().as_str(),
            "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
        );
    }

    #[test]
    fn token_scopes_cover_push_and_mount_source() {
        let r: Reference = "localhost:5000/a/b:1".parse().unwrap();
        let t = Target {
            r: &r,
            action: Action::Pushing,
            push: true,
            mount_from: Some("c/d"),
        };
        assert_eq!(
            t.scopes(),
            vec!["repository:a/b:pull,push", "repository:c/d:pull"]
        );
    }
}
