//! The registry client: what it holds, and the addressing shared by pull and push.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use reqwest::header::LOCATION;
use reqwest::{RequestBuilder, Response, Url};

use super::auth::{self, AuthState};
use super::error::{Action, Cause, Peer, RegistryError};
use super::transport::{status_cause, with_retries, Transport};
use super::RegistryOptions;
use crate::image::{Digest, Platform, Reference};

/// Uploads above this size go in PATCH chunks of this size.
const DEFAULT_CHUNK: u64 = 64 << 20;

/// What a request is about: the reference (for messages and the repository) and whether
/// the token needs push rights.
pub(super) struct Target<'a> {
    pub(super) r: &'a Reference,
    pub(super) action: Action,
    pub(super) push: bool,
    /// Another repository of the same registry to pull from (cross-repo mount).
    pub(super) mount_from: Option<&'a str>,
}

impl Target<'_> {
    pub(super) fn scopes(&self) -> Vec<String> {
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

    /// The registry, as connection errors name it.
    pub(super) fn peer(&self) -> Peer {
        Peer::Registry(self.r.api_host().to_string())
    }
}

/// A registry client with a synchronous API; see the module docs.
pub struct Client {
    pub(super) transport: Transport,
    insecure: Vec<String>,
    pub(super) platform: Platform,
    pub(super) config_dir: Option<PathBuf>,
    pub(super) chunk_size: u64,
    pub(super) state: Mutex<AuthState>,
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

pub(super) fn op_err(t: &Target, cause: Cause) -> RegistryError {
    RegistryError::Op {
        action: t.action,
        reference: t.r.to_string(),
        cause,
    }
}

impl Client {
    pub fn new(opts: RegistryOptions) -> Result<Client, RegistryError> {
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
            transport: Transport::new()?,
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

    /// The HTTP client requests are built with.
    pub(super) fn http(&self) -> &reqwest::Client {
        self.transport.http()
    }

    /// Download `url` (any web server, not a registry: no authentication) into a new file
    /// at `dest` over the registry's HTTP stack (TLS, proxies, timeouts, retries); returns
    /// the digest of the content.
    pub fn download(&self, url: &str, dest: &Path) -> Result<Digest, RegistryError> {
        self.transport
            .download(url, dest)
            .map_err(|cause| RegistryError::Download {
                url: url.to_string(),
                cause,
            })
    }

    pub(super) fn scheme(&self, r: &Reference) -> &'static str {
        if r.is_loopback() || self.insecure.contains(&r.registry) {
            "http"
        } else {
            "https"
        }
    }

    /// `scheme://host/v2/<repository>/<rest>`
    pub(super) fn url(&self, r: &Reference, rest: &str) -> Result<Url, Cause> {
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
    pub(super) fn location(&self, r: &Reference, resp: &Response) -> Result<Url, Cause> {
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

    /// `send` with retries and backoff on 5xx, 429 and connection failures; for
    /// idempotent requests.
    pub(super) async fn send_retry(
        &self,
        t: &Target<'_>,
        make: &dyn Fn() -> Result<RequestBuilder, Cause>,
    ) -> Result<Response, Cause> {
        with_retries(|| async {
            match self.send(t, make).await {
                Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {
                    Err(status_cause(resp).await)
                }
                other => other,
            }
        })
        .await
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
