//! OCI distribution client: pull and push manifests and blobs (design.md "Registry").
//!
//! The API is synchronous: a current-thread tokio runtime lives inside [`Client`] and
//! drives reqwest; callers are plain threads (the runtime supports concurrent `block_on`
//! from several threads, so one `Client` may be shared).
//!
//! The HTTP is written on reqwest directly rather than through `oci-client`: we need raw
//! manifest bytes (the hashed bytes are the stored bytes), blobs streamed into a caller's
//! `Write` with the digest checked on the way and resumed with `Range` after a dropped
//! connection, our own variant-aware platform choice, cross-repo mounts that fall back to
//! an upload on 202, and docker's config.json credentials; each of these needed a detour
//! around oci-client, and the distribution API itself is small.
//!
//! - `transport`: the HTTP client and runtime, retries, failures classified into causes;
//!   `ADD <url>` downloads through it too ([`Client::download`]);
//! - `auth`: challenges, config.json credentials, the token flow and its cache;
//! - `client`: the client's state and addressing; `pull` and `push`: the API calls.

mod auth;
mod client;
mod error;
pub mod platform;
mod pull;
mod push;
mod tls;
mod transport;

use std::path::PathBuf;

pub use auth::{parse_challenge, Challenge, Credentials};
pub use client::Client;
pub use error::{Action, Cause, ManifestRef, Peer, RegistryError};

use crate::image::{Digest, ImageConfig, Manifest, Platform, Reference};

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) that may be reached over plain HTTP. Loopback hosts
    /// (`localhost`, `127.x`, `[::1]`) always may.
    pub insecure_registries: Vec<String>,
    /// The platform to pick from manifest lists / image indexes.
    pub platform: Platform,
    /// Where config.json lives; None means $DOCKER_CONFIG, else ~/.docker.
    pub docker_config_dir: Option<PathBuf>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            platform: Platform::host(),
            docker_config_dir: None,
        }
    }
}

/// A manifest resolved for one platform, with its verified config.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference as asked for (tag and/or digest).
    pub reference: Reference,
    /// Digest of the platform manifest (not of the index): the image's identity.
    pub manifest_digest: Digest,
    /// The manifest exactly as served (and hashed).
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    /// Media type of the platform manifest (docker v2 or OCI).
    pub manifest_media_type: String,
    /// Digest of the manifest list / index the manifest was chosen from, if any.
    pub index_digest: Option<Digest>,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
}

/// Progress of one blob transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub digest: Digest,
    /// Bytes done so far (may go back to 0 when a transfer restarts).
    pub done: u64,
    pub total: u64,
}
