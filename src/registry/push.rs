//! Pushing: blobs (cross-repository mount, monolithic or chunked upload) and manifests.

use std::path::Path;

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use super::client::{op_err, Client, Target};
use super::error::{Action, Cause, RegistryError};
use super::transport::{file_body, io_err, status_cause, with_retries};
use crate::image::{Descriptor, Digest, Reference};

impl Client {
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
        self.transport
            .block_on(with_retries(|| self.push_blob_once(&t, desc, path)))
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
        self.transport
            .block_on(self.push_manifest_async(&t, media_type, bytes))
            .map_err(|c| op_err(&t, c))
    }

    async fn push_blob_once(
        &self,
        t: &Target<'_>,
        desc: &Descriptor,
        path: &Path,
    ) -> Result<(), Cause> {
        let what = || format!("reading {}", path.display());
        // A blob the store does not hold (a layer known only from a cache) can still be
        // found there or mounted; its bytes are needed only for an upload.
        let present = match std::fs::metadata(path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(what(), e)),
        };
        let size = present.unwrap_or(desc.size);
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
                Ok(self.http().post(start.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        let mut location = match resp.status() {
            // Mounted: the blob is there now.
            StatusCode::CREATED if t.mount_from.is_some() => return Ok(()),
            StatusCode::ACCEPTED if present.is_none() => {
                let e = std::io::Error::from(std::io::ErrorKind::NotFound);
                return Err(io_err(what(), e));
            }
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
                            .http()
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
                    .http()
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
                    .http()
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
