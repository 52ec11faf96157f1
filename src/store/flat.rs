//! Flattened snapshots of deep layer stacks: `flat/<chain>/root` holds the merged tree of
//! the layers up to and including the layer with chain id `<chain>` (whiteouts and opaque
//! dirs applied, files hard-linked from the layers: `layer::flatten`), `flat/<chain>/
//! meta.json` says how many layers it stands for.
//!
//! Overlayfs stacks at most 500 lower layers (OVL_MAX_STACK in fs/overlayfs/params.h, the
//! same on 6.x kernels; the new mount API's `lowerdir+` lifts the one-page limit of the
//! option string, not this one); rbuild stacks at most [`STACK`], as each lower costs every
//! mount and path lookup. A step above more layers mounts a flattened snapshot of the
//! oldest ones instead of them. Snapshots are cut at multiples of [`STRIDE`] layers, so the
//! next [`STRIDE`] steps reuse one, later builds on the same layers reuse it too (the chain
//! id names exactly the layers below it), and each is made from the one below it plus
//! [`STRIDE`] layers. Images keep one layer per step; only what the sandbox mounts changes.
//! `rbuild prune` removes the snapshots of layers that no tag or cache record keeps.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};
use crate::image::Digest;

/// The most lower layers one overlay mount takes (the kernel's OVL_MAX_STACK).
pub const MAX_LOWERS: usize = 500;

/// The most lower layers rbuild stacks (docker's overlay2 stops at 125 too): each lower
/// costs the mount's setup and every path lookup through the stack, so a 1,000-step build
/// spent ~38% of its time there when it stacked up to [`MAX_LOWERS`] (perf, issue 23).
pub const STACK: usize = 125;

/// Snapshots are made at multiples of this many layers (from the bottom).
pub const STRIDE: usize = 64;

const _: () = assert!(STACK <= MAX_LOWERS && STRIDE < STACK);

/// How many of `n` layers (bottom first) to mount as one flattened snapshot so that at most
/// `max` directories are stacked: `None` when all `n` fit. Otherwise the smallest multiple
/// of `stride` that leaves at most `max - 1` layers above it (`stride` < `max`).
pub fn flatten_depth(n: usize, max: usize, stride: usize) -> Option<usize> {
    if n <= max {
        return None;
    }
    let need = n - (max - 1);
    Some(need.div_ceil(stride) * stride)
}

/// flat/<chain>/meta.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FlatMeta {
    chain_id: Digest,
    /// How many layers, from the bottom, the snapshot stands for.
    layers: usize,
    /// Entries read from the layers while making it.
    entries: u64,
}

impl Store {
    fn flat_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("flat").join(chain.hex())
    }

    /// The merged tree of the flattened snapshot whose top layer is `chain`, if the store has
    /// one.
    pub fn flat(&self, chain: &Digest) -> Option<PathBuf> {
        let dir = self.flat_dir(chain);
        dir.join("meta.json").is_file().then(|| dir.join("root"))
    }

    /// Every chain id with a flattened snapshot in the store.
    pub fn flat_ids(&self) -> Result<Vec<Digest>> {
        super::layers::digest_names(&self.root.join("flat"))
    }

    /// The directories to stack for the layers `chains` (bottom first), top-most first as
    /// overlay's lowerdir wants them: the layers' diff dirs, with the oldest ones replaced
    /// by a flattened snapshot (made now if the store has none) when there are more than
    /// [`STACK`].
    pub fn lowers(&self, chains: &[Digest]) -> Result<Vec<PathBuf>> {
        let (flat, rest) = match flatten_depth(chains.len(), STACK, STRIDE) {
            None => (None, chains),
            Some(k) => (Some(self.ensure_flat(&chains[..k])?), &chains[k..]),
        };
        let mut out = Vec::with_capacity(rest.len() + 1);
        for chain in rest.iter().rev() {
            out.push(self.layer_diff(chain)?);
        }
        out.extend(flat);
        Ok(out)
    }

    fn layer_diff(&self, chain: &Digest) -> Result<PathBuf> {
        self.present_layer(chain)
            .ok_or_else(|| StoreError::LayerMissing {
                chain: chain.clone(),
            })
    }

    /// The flattened snapshot of `chains` (bottom first, a multiple of [`STRIDE`] long),
    /// made from the one of its first `len - STRIDE` layers and the rest if missing.
    fn ensure_flat(&self, chains: &[Digest]) -> Result<PathBuf> {
        let top = chains.last().expect("a snapshot stands for some layers");
        if let Some(root) = self.flat(top) {
            return Ok(root);
        }
        let below = chains.len().saturating_sub(STRIDE);
        let mut dirs = Vec::with_capacity(STRIDE + 1);
        if below > 0 {
            dirs.push(self.ensure_flat(&chains[..below])?);
        }
        for chain in &chains[below..] {
            dirs.push(self.layer_diff(chain)?);
        }

        // Made in scratch, synced, then one rename publishes root and meta together: a crash
        // leaves only garbage in tmp/.
        let stage = self.tmp_dir()?;
        let root = stage.path().join("root");
        fs::create_dir(&root).map_err(StoreError::io("creating", &root))?;
        let stats = crate::layer::flatten(&dirs, &root)?;
        let meta = FlatMeta {
            chain_id: top.clone(),
            layers: chains.len(),
            entries: stats.entries,
        };
        let meta_path = stage.path().join("meta.json");
        super::layers::write_synced(&meta_path, &crate::image::canonical_json(&meta))?;
        // Every directory and link of the tree, at once (one syncfs per snapshot, made
        // every STRIDE steps at most).
        self.sync_filesystem()?;
        let parent = self.root.join("flat");
        fs::create_dir_all(&parent).map_err(StoreError::io("creating", &parent))?;
        let dest = self.flat_dir(top);
        match fs::rename(stage.path(), &dest) {
            Ok(()) => {
                // The TempDir's path is gone now; dropping it is a no-op.
                let _ = stage.keep();
                self.sync_parent_later(&dest);
            }
            // Another build made the same snapshot first; ours is trash.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                self.discard_dir(stage.keep(), 0);
            }
            Err(e) => return Err(StoreError::io("renaming snapshot into", &dest)(e)),
        }
        Ok(dest.join("root"))
    }

    /// Remove the flattened snapshot of `chain` (prune holds the store lock exclusively, so
    /// no step has it mounted).
    pub(super) fn remove_flat(&self, chain: &Digest) -> Result<()> {
        self.remove_aside(&self.flat_dir(chain), "removing snapshot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_stay_within_the_limit_and_snapshots_are_reused() {
        assert_eq!(flatten_depth(0, 500, 250), None);
        assert_eq!(flatten_depth(500, 500, 250), None);
        assert_eq!(flatten_depth(501, 500, 250), Some(250));
        assert_eq!(flatten_depth(749, 500, 250), Some(250));
        assert_eq!(flatten_depth(750, 500, 250), Some(500));
        assert_eq!(flatten_depth(999, 500, 250), Some(500));
        assert_eq!(flatten_depth(1000, 500, 250), Some(750));
        for n in 0..5000 {
            match flatten_depth(n, STACK, STRIDE) {
                None => assert!(n <= STACK),
                Some(k) => {
                    assert_eq!(k % STRIDE, 0);
                    assert!(k < n, "{n}: something stays above the snapshot");
                    assert!(n - k < STACK, "{n}: {k} leaves too many above");
                }
            }
        }
        // Between two cut points every step mounts the same snapshot.
        let cuts: std::collections::BTreeSet<_> = (STACK + 1..2000)
            .filter_map(|n| flatten_depth(n, STACK, STRIDE))
            .collect();
        assert_eq!(cuts.len(), (2000 - STACK - 1) / STRIDE + 1);
    }
}
