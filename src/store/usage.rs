//! `rbuild du`: what the store holds, by kind (issue 18, long-lived runners). Sizes are file
//! bytes: a layer's extracted content (hard links once), blobs and records as stored, cache
//! mounts and the trash as their content. Read-only: a running build may add to it meanwhile.

use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

use super::layers::content_size;
use super::{Result, Store, StoreError};

/// The last row of [`Store::disk_usage`]: not a kind but what `prune --keep-storage 0` would
/// free (the cache records it would remove, and the bytes), as `docker buildx du` ends with.
pub const RECLAIMABLE: &str = "Reclaimable";

/// One kind of thing in the store: how many and how many bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub kind: &'static str,
    pub count: u64,
    pub bytes: u64,
}

impl Store {
    /// The store's usage, by kind: tagged images (the content of the layers they use, each
    /// layer once), extracted layers, remote layers (records only), blobs, cache records, cache mounts, the trash; then
    /// what a prune could reclaim ([`RECLAIMABLE`]).
    pub fn disk_usage(&self) -> Result<Vec<Usage>> {
        // Each layer's meta.json read once: the images' sizes come from these.
        let mut sizes = std::collections::BTreeMap::new();
        for chain in self.layer_ids()? {
            if let Some(layer) = self.layer(&chain) {
                sizes.insert(chain, layer.size);
            }
        }
        let layers = Usage {
            kind: "Layers",
            count: sizes.len() as u64,
            bytes: sizes.values().sum(),
        };
        let mut images = Usage {
            kind: "Images",
            ..Usage::default()
        };
        let mut used = std::collections::BTreeSet::new();
        for (_, d) in self.tags()? {
            images.count += 1;
            if let Ok(stored) = self.stored_by_digest(&d.digest) {
                for chain in stored
                    .images()
                    .iter()
                    .flat_map(|i| i.chains.iter().cloned())
                {
                    if let Some(size) = sizes.get(&chain).filter(|_| used.insert(chain.clone())) {
                        images.bytes += size;
                    }
                }
            }
        }
        let files = |kind: &'static str, dir: &Path| -> Result<Usage> {
            let mut u = Usage {
                kind,
                ..Usage::default()
            };
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(u),
                Err(e) => return Err(StoreError::io("listing", dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(StoreError::io("listing", dir))?;
                let md = entry
                    .metadata()
                    .map_err(StoreError::io("reading", entry.path()))?;
                u.count += 1;
                u.bytes += if md.is_dir() {
                    content_size(&entry.path())?
                } else {
                    md.len()
                };
            }
            Ok(u)
        };
        let mounts_dir = self.root.join("mounts/cache");
        let mut mounts = files("Cache mounts", &mounts_dir)?;
        // Only the directories are mounts (locks lie beside them).
        mounts.count = fs::read_dir(&mounts_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .count() as u64
            })
            .unwrap_or(0);
        // Layers known but not fetched (remote.rs): listed, as `buildx du` lists BuildKit's
        // lazy records, with the few bytes their records take.
        let mut remote = Usage {
            kind: "Remote layers",
            ..Usage::default()
        };
        for (path, _) in self.remote_records()? {
            remote.count += 1;
            remote.bytes += fs::metadata(&path).map_or(0, |m| m.len());
        }
        let mut usage = vec![
            images,
            layers,
            remote,
            files("Blobs", &self.root.join("blobs/sha256"))?,
            files("Cache records", &self.root.join("cache"))?,
            mounts,
            files("Trash", &self.trash_dir())?,
        ];
        let total = usage.iter().skip(1).map(|u| u.bytes).sum();
        let (bytes, count) = self.reclaimable(total)?;
        usage.push(Usage {
            kind: RECLAIMABLE,
            count,
            bytes,
        });
        Ok(usage)
    }
}
