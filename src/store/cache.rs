//! Build cache records under cache/<key>.json.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};
use crate::image::{Digest, History, ImageConfig};

/// What a step produced, enough to reuse it without running it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The layer chain id after this step. `None` when the image has no layers at all yet
    /// (a config-only step on `scratch`); a step that made no layer repeats its parent's.
    pub chain: Option<Digest>,
    /// Whether this step added a layer (RUN/COPY/ADD, WORKDIR creating its dir).
    pub new_layer: bool,
    /// What the step changed in the image config: the diff_id of the layer it added, as
    /// the last of `rootfs.diff_ids`. Records the store writes hold that one only (a whole
    /// list per record makes an n-step build's records O(n²), issue 23); records written
    /// before, and exported ones, hold the chain's whole list (an importer records the
    /// chain's layers from it).
    pub config: ImageConfig,
    /// This step's history entry (also the last entry of `config.history`).
    pub history: History,
    /// What the key was made from, to say why a later build missed it (issue 19). Absent
    /// in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<StepInputs>,
}

/// A cache key's inputs before hashing (src/plan/key.rs): kept so that a miss can name the
/// first one that differs (src/plan/explain.rs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInputs {
    /// The parent key.
    pub parent: String,
    /// The step's key material, as it was hashed.
    pub material: serde_json::Value,
    /// The content digest of the step's sources, if it has any. Its file listing, for
    /// COPY/ADD from a directory, is stored once per digest (see [`Store::put_listing`]).
    #[serde(default)]
    pub content: Option<String>,
    /// The instruction as written, for naming it.
    #[serde(default)]
    pub text: String,
    /// For a stage's first step on an image: the image as the FROM names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

impl Store {
    fn cache_path(&self, key: &str) -> Result<PathBuf> {
        let name = key.strip_prefix("sha256:").unwrap_or(key);
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(StoreError::InvalidCacheKey(key.to_string()));
        }
        Ok(self.root.join("cache").join(format!("{name}.json")))
    }

    /// The cached result of the step with cache key `key` (hex, or `sha256:<hex>`). A record
    /// whose layer has been pruned counts as a miss, unless it can be fetched (remote.rs).
    /// A hit is noted as a use (lru.rs).
    pub fn get_cache(&self, key: &str) -> Option<CacheRecord> {
        let path = self.cache_path(key).ok()?;
        let rec: CacheRecord = Store::read_json(&path).ok().flatten()?;
        match &rec.chain {
            Some(chain) if !self.layer_known(chain) => None,
            _ => {
                if let Some(name) = path.file_stem() {
                    self.note_use(&name.to_string_lossy());
                }
                Some(rec)
            }
        }
    }

    /// The record under `key` even when its layer has been pruned (explaining a miss).
    pub fn cache_record(&self, key: &str) -> Option<CacheRecord> {
        let path = self.cache_path(key).ok()?;
        Store::read_json(&path).ok().flatten()
    }

    pub fn put_cache(&self, key: &str, rec: &CacheRecord) -> Result<()> {
        let path = self.cache_path(key)?;
        self.write_file_atomic(&path, &crate::image::canonical_json(rec))
    }

    /// Every cache record, with its file name stem (prune).
    pub(crate) fn cache_records(&self) -> Result<Vec<(PathBuf, Option<CacheRecord>)>> {
        let dir = self.root.join("cache");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io("listing", &dir))? {
            let entry = entry.map_err(StoreError::io("listing", &dir))?;
            let path = entry.path();
            let rec = match Store::read_json::<CacheRecord>(&path) {
                Ok(r) => r,
                Err(StoreError::Corrupt { .. }) => None,
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    None
                }
                Err(e) => return Err(e),
            };
            out.push((path, rec));
        }
        Ok(out)
    }
}
