//! Layers the store knows but does not hold: remote/<chain>.json, written when a
//! `--cache-from` hit names a layer (lazy import, design.md "Shared build cache").
//!
//! A remote layer is a record only: its chain id, diff_id, parent, the blob's descriptor
//! and where the blob lives. It never has a layers/<chain> directory, so
//! [`Store::layer`] does not see it and nothing half-present is ever stacked as a lower.
//! exec/remote_cache.rs `materialize` fetches the blob, checks it and extracts it through
//! the ordinary [`Store::commit_layer`] (one rename publishes it; a racing build that did
//! the same keeps its copy); the record may stay: a present layer wins over it. A blob that
//! failed its digest is remembered in remote/refused/<hex>: no hit records it again.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};
use crate::image::{Descriptor, Digest};

/// Where a remote layer's blob can be fetched from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobSource {
    /// A registry repository: `host/repo` (a cache's), or a base image's reference as
    /// the build named it (its tag or digest only name it in messages).
    Registry(String),
    /// An OCI layout directory (`--cache-from type=local`).
    Local(PathBuf),
}

/// remote/<chain>.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    pub chain_id: Digest,
    pub diff_id: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Digest>,
    /// The layer's blob as the cache has it (compressed).
    pub blob: Descriptor,
    pub source: BlobSource,
}

impl Store {
    fn remote_path(&self, chain: &Digest) -> PathBuf {
        self.root
            .join("remote")
            .join(format!("{}.json", chain.hex()))
    }

    /// Record that `layer` can be fetched. A present layer makes it moot; it is kept anyway
    /// (tiny), so that a prune of the layer leaves it fetchable again.
    pub fn put_remote_layer(&self, layer: &RemoteLayer) -> Result<()> {
        let path = self.remote_path(&layer.chain_id);
        let dir = path.parent().expect("remote/<chain>.json has a parent");
        fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        self.write_file_atomic(&path, &crate::image::canonical_json(layer))
    }

    /// The remote record of `chain`, if any (an unreadable one counts as none).
    pub fn remote_layer(&self, chain: &Digest) -> Option<RemoteLayer> {
        Store::read_json(&self.remote_path(chain)).ok().flatten()
    }

    /// Forget the remote layer `chain`, whose blob arrived with other bytes than its
    /// digest: the blob is refused for good (a cache hit never records it again, so the
    /// step that made it runs).
    pub fn refuse_remote_layer(&self, chain: &Digest, blob: &Digest) -> Result<()> {
        let marker = self.refused_path(blob);
        let dir = marker.parent().expect("remote/refused/<hex> has a parent");
        fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        self.write_file_atomic(&marker, b"")?;
        let path = self.remote_path(chain);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::io("removing", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// Whether the blob `digest` was refused ([`Store::refuse_remote_layer`]).
    pub fn blob_refused(&self, digest: &Digest) -> bool {
        self.refused_path(digest).exists()
    }

    fn refused_path(&self, blob: &Digest) -> PathBuf {
        self.root.join("remote").join("refused").join(blob.hex())
    }

    /// Whether the layer `chain` is present, or it and every layer below it are present or
    /// fetchable: what a cache hit needs.
    pub fn layer_known(&self, chain: &Digest) -> bool {
        self.missing_below(chain).is_some()
    }

    /// The layers of the chain ending at `chain` the store lacks, bottom first, with their
    /// remote records; None when one of them is neither present nor fetchable.
    pub fn missing_below(&self, chain: &Digest) -> Option<Vec<RemoteLayer>> {
        let mut missing = Vec::new();
        let mut next = Some(chain.clone());
        while let Some(c) = next {
            if self.layer(&c).is_some() {
                break;
            }
            let r = self.remote_layer(&c)?;
            next = r.parent.clone();
            missing.push(r);
        }
        missing.reverse();
        Some(missing)
    }
}
