//! Pulling: manifests (resolved to one platform) and blobs, streamed, verified and resumed.

use std::io::Write;

use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT, RANGE};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use super::client::{op_err, Client, Target};
use super::error::{Action, Cause, ManifestRef, RegistryError};
use super::transport::{
    backoff, content_type, error_message, io_err, net_err, read_limited, status_cause, RETRIES,
};
use super::{platform, Progress, ResolvedImage};
use crate::image::{media, Descriptor, Digest, ImageConfig, Index, Manifest, Platform, Reference};

/// Manifests larger than this are refused (containerd uses the same bound).
const MAX_MANIFEST: u64 = 4 << 20;
/// Image configs larger than this are refused.
const MAX_CONFIG: u64 = 64 << 20;
/// Blobs fetched at once by `fetch_blobs_parallel`.
const PARALLEL: usize = 3;

fn is_index(mt: &str) -> bool {
    mt == media::OCI_INDEX || mt == media::DOCKER_MANIFEST_LIST
}

fn is_manifest(mt: &str) -> bool {
    mt == media::OCI_MANIFEST || mt == media::DOCKER_MANIFEST
}

impl Client {
    /// GET the manifest for `r` (tag or digest); for a list/index pick the client's
    /// platform and fetch that manifest; then fetch and verify the config blob.
    pub fn resolve(&self, r: &Reference) -> Result<ResolvedImage, RegistryError> {
        self.resolve_for(r, &self.platform)
    }

    /// [`Client::resolve`] for `platform` instead of the client's.
    pub fn resolve_for(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let t = Target {
            r,
            action: Action::Pulling,
            push: false,
            mount_from: None,
        };
        self.transport
            .block_on(self.resolve_async(&t, platform))
            .map_err(|c| op_err(&t, c))
    }

    /// GET the manifest (or index) `r` names as it is, unresolved: (bytes, media type,
    /// digest of the bytes). For artifacts that are not images (the build cache).
    pub fn manifest(&self, r: &Reference) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let t = Target {
            r,
            action: Action::Pulling,
            push: false,
            mount_from: None,
        };
        let by = match &r.digest {
            Some(d) => ManifestRef::Digest(d.clone()),
            None => ManifestRef::Tag(r.tag_or_latest().to_string()),
        };
        self.transport
            .block_on(self.get_manifest(&t, by, r.digest.as_ref()))
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
        self.transport
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
        self.transport
            .block_on(work)
            .map(drop)
            .map_err(|c| op_err(t, c))
    }

    /// Whether the repository of `r` has blob `d` (HEAD).
    pub fn blob_exists(&self, r: &Reference, d: &Digest) -> Result<bool, RegistryError> {
        let t = Target {
            r,
            action: Action::Checking,
            push: false,
            mount_from: None,
        };
        self.transport
            .block_on(self.blob_exists_async(&t, d))
            .map_err(|c| op_err(&t, c))
    }

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
                Ok(self.http().get(url.clone()).header(ACCEPT, accept.as_str()))
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
        let bytes = read_limited(&t.peer(), resp, MAX_MANIFEST).await?;
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

    async fn resolve_async(
        &self,
        t: &Target<'_>,
        platform: &Platform,
    ) -> Result<ResolvedImage, Cause> {
        let r = t.r;
        let by = match &r.digest {
            Some(d) => ManifestRef::Digest(d.clone()),
            None => ManifestRef::Tag(r.tag_or_latest().to_string()),
        };
        let wanted = platform;
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
            let chosen = platform::choose(&index, wanted).map_err(|available| {
                Cause::NoMatchingPlatform {
                    wanted: wanted.to_spec(),
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
        // A lone manifest must be for the platform too (containerd's matcher reads its
        // config): an amd64-only base is no base for an arm64 stage.
        let own = config.platform();
        if index_digest.is_none() && !own.architecture.is_empty() && !platform::runs(wanted, &own) {
            return Err(Cause::NoMatchingPlatform {
                wanted: wanted.to_spec(),
                available: own.to_spec(),
            });
        }
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
                    backoff(attempt).await;
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
                let req = self.http().get(url.clone());
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
        while let Some(chunk) = resp.chunk().await.map_err(|e| net_err(t.peer(), &e))? {
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

    pub(super) async fn blob_exists_async(
        &self,
        t: &Target<'_>,
        d: &Digest,
    ) -> Result<bool, Cause> {
        let url = self.url(t.r, &format!("blobs/{d}"))?;
        let resp = self
            .send_retry(t, &|| Ok(self.http().head(url.clone())))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_cause(resp).await),
        }
    }
}
