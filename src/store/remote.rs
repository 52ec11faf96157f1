//! Layers the store knows but does not hold: remote/<chain>.json, written when a
//! `--cache-from` hit names a layer or a `FROM` keeps a base image (lazy import, design.md
//! "Shared build cache").
//!
//! A remote layer is a record only: its chain id, diff_id, parent, the blob's descriptor
//! and where the blob lives. It never has a layers/<chain> directory, so
//! [`Store::layer`] does not see it and nothing half-present is ever stacked as a lower.
//! exec/remote_cache.rs `materialize` fetches the blob, checks it and extracts it through
//! the ordinary [`Store::commit_layer`] (one rename publishes it; a racing build that did
//! the same keeps its copy); the record may stay: a present layer wins over it. A cache's
//! blob that failed its digest is remembered in remote/refused/<hex>: no hit records it
//! again for [`REFUSAL_KEPT`], or until a prune. Prune removes the records no tag or cache
//! record needs; `rbuild du` lists them ("Remote layers", a few hundred bytes each).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};
use crate::image::{Descriptor, Digest};

/// Where a remote layer's blob can be fetched from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobSource {
    /// A base image's registry repository: its reference as the build named it (its tag
    /// or digest only name it in messages). A blob that fails its digest is an error:
    /// nothing can build it again.
    Registry(String),
    /// A registry cache's repository (`host/repo`, `--cache-from type=registry`). A blob
    /// that fails its digest is refused and the step that made it built again.
    RegistryCache(String),
    /// An OCI layout directory (`--cache-from type=local`).
    Local(PathBuf),
}

/// How messages name where a blob comes from: `` `host/repo:tag` `` for a base image,
/// `` cache `host/repo` `` or `` cache `/dir` `` for a cache.
impl std::fmt::Display for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobSource::Registry(r) => write!(f, "`{r}`"),
            BlobSource::RegistryCache(r) => write!(f, "cache `{r}`"),
            BlobSource::Local(dir) => write!(f, "cache `{}`", dir.display()),
        }
    }
}

impl BlobSource {
    /// The registry repository (or reference) holding the blob, if a registry does.
    pub fn registry(&self) -> Option<&str> {
        match self {
            BlobSource::Registry(r) | BlobSource::RegistryCache(r) => Some(r),
            BlobSource::Local(_) => None,
        }
    }
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

/// How long a refused blob stays refused: a source that served bad bytes once is not asked
/// again by every build (each would fetch, refuse and start over), but is given another
/// chance a day later, or after a prune, in case it was mended.
pub const REFUSAL_KEPT: Duration = Duration::from_secs(24 * 3600);

/// The entries of `dir`; none when it does not exist.
fn read_dir(dir: &Path) -> Result<impl Iterator<Item = io::Result<fs::DirEntry>>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => Some(entries),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(StoreError::io("listing", dir)(e)),
    };
    Ok(entries.into_iter().flatten())
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("removing", path)(e)),
        _ => Ok(()),
    }
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
        remove_file(&self.remote_path(chain))
    }

    /// Whether the blob `digest` was refused ([`Store::refuse_remote_layer`]) less than
    /// [`REFUSAL_KEPT`] ago.
    pub fn blob_refused(&self, digest: &Digest) -> bool {
        fs::metadata(self.refused_path(digest))
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().map_or(true, |age| age < REFUSAL_KEPT))
    }

    /// For prune: remove the remote records of the layers not in `keep` (nothing a tag or a
    /// cache record uses is fetched through them any more) and every refusal marker (the
    /// next build that meets the blob fetches it once more). Each is a few hundred bytes
    /// at most; how many went.
    pub(super) fn prune_remote(&self, keep: &BTreeSet<Digest>) -> Result<usize> {
        let mut removed = 0;
        for (path, chain) in self.remote_records()? {
            if chain.is_none_or(|c| !keep.contains(&c)) {
                remove_file(&path)?;
                removed += 1;
            }
        }
        let refused = self.root.join("remote").join("refused");
        for entry in read_dir(&refused)? {
            let entry = entry.map_err(StoreError::io("listing", &refused))?;
            remove_file(&entry.path())?;
        }
        Ok(removed)
    }

    /// The remote records on disk (remote/<chain>.json), with their chain ids (None for a
    /// file not named as a record is).
    pub(super) fn remote_records(&self) -> Result<Vec<(PathBuf, Option<Digest>)>> {
        let dir = self.root.join("remote");
        let mut out = Vec::new();
        for entry in read_dir(&dir)? {
            let entry = entry.map_err(StoreError::io("listing", &dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let chain = (path.file_stem().and_then(|s| s.to_str()))
                    .and_then(|hex| Digest::from_hex(hex).ok());
                out.push((path, chain));
            }
        }
        Ok(out)
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
