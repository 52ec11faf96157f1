//! When each cache record was last used, and which records `rbuild prune --keep-storage` /
//! `--filter until=` remove (least recently used first; issue 18, long-lived runners).
//!
//! ```text
//! used/index.json            {"<key>": <unix ms>} as of the last prune
//! used/b-<ms>-<session>.json  {"at": <unix ms>, "keys": [...]}: the records one build used
//! ```
//! A build notes the keys it reads from the cache in memory and writes them once, in one
//! small file, when it ends ([`Store::save_use`]): one write per build, not per step or file.
//! Prune (which holds the store lock exclusively, so no build writes meanwhile) folds these
//! files into index.json. A record nobody noted is as old as its file (written when it was
//! made). Losing a note only makes a record look older: it is never a broken store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{CacheRecord, Result, Store, StoreError};
use crate::image::Digest;

const USED: &str = "used";
const INDEX: &str = "index.json";

/// One build's note.
#[derive(Serialize, Deserialize)]
struct BuildUse {
    at: u64,
    keys: BTreeSet<String>,
}

/// What `rbuild prune` removes besides what nothing uses (the flags of `docker buildx prune`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneOptions {
    /// Every cache record; without a limit below, the RUN cache mounts and stat cache too.
    pub all: bool,
    /// `--keep-storage`: remove least recently used records until the store is this small.
    pub keep_storage: Option<u64>,
    /// `--filter until=`: only records not used for this long.
    pub until: Option<Duration>,
}

impl PruneOptions {
    /// Whether records are chosen by their last use (else: all of them, or none).
    pub fn limited(&self) -> bool {
        self.keep_storage.is_some() || self.until.is_some()
    }
}

/// A live cache record as prune weighs it.
pub(super) struct Live {
    pub path: PathBuf,
    pub record: CacheRecord,
}

impl Live {
    /// Whether a tag's image uses the record's layer: BuildKit's "shared" records, which
    /// only `--all` removes (dropping one frees next to nothing and loses that image's cache).
    fn shared(&self, pinned: &BTreeSet<Digest>) -> bool {
        self.record
            .chain
            .as_ref()
            .is_some_and(|c| pinned.contains(c))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn mtime_ms(path: &Path) -> u64 {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// The key a record file stands for (its name without `.json`).
fn key_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Store {
    /// Note that this process used the cache record `name` (a hit).
    pub(super) fn note_use(&self, name: &str) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
    }

    /// Write the records this process used since the last call in one file under used/
    /// (see the module doc). Called at the end of a build, while it still holds the lock.
    pub fn save_use(&self) -> Result<()> {
        let keys = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
        if keys.is_empty() {
            return Ok(());
        }
        let dir = self.root.join(USED);
        fs::create_dir_all(&dir).map_err(StoreError::io("creating", &dir))?;
        let at = now_ms();
        let session = self
            .session
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let path = dir.join(format!("b-{at:013}-{session}.json"));
        self.write_file_atomic(
            &path,
            &serde_json::to_vec(&BuildUse { at, keys }).expect("serializable"),
        )
    }

    /// Every noted last use, in unix ms, with the per-build files read.
    pub(super) fn read_use(&self) -> Result<(BTreeMap<String, u64>, Vec<PathBuf>)> {
        let dir = self.root.join(USED);
        let mut used: BTreeMap<String, u64> = Store::read_json(&dir.join(INDEX))
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut notes = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((used, notes)),
            Err(e) => return Err(StoreError::io("listing", &dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(StoreError::io("listing", &dir))?.path();
            if path.file_name().is_some_and(|n| n == INDEX) {
                continue;
            }
            // A damaged note only makes its records look older.
            if let Ok(Some(note)) = Store::read_json::<BuildUse>(&path) {
                for k in note.keys {
                    let t = used.entry(k).or_default();
                    *t = (*t).max(note.at);
                }
            }
            notes.push(path);
        }
        Ok((used, notes))
    }

    /// Fold the build notes into used/index.json, keeping the keys in `live` only. Prune
    /// calls it with the store lock held exclusively.
    pub(super) fn compact_use(
        &self,
        mut used: BTreeMap<String, u64>,
        notes: &[PathBuf],
        live: &BTreeSet<String>,
    ) -> Result<()> {
        used.retain(|k, _| live.contains(k));
        let dir = self.root.join(USED);
        if used.is_empty() && notes.is_empty() && !dir.join(INDEX).exists() {
            return Ok(());
        }
        fs::create_dir_all(&dir).map_err(StoreError::io("creating", &dir))?;
        self.write_file_atomic(&dir.join(INDEX), &crate::image::canonical_json(&used))?;
        self.sync_pending()?;
        for note in notes {
            fs::remove_file(note).map_err(StoreError::io("removing", note))?;
        }
        Ok(())
    }

    /// The live records `opts` removes, given the last uses `used` ([`Store::read_use`]).
    /// `pinned` are the layer chains tags use (never freed); `pinned_blobs` their blobs.
    /// Records used within `until` are never candidates, nor without `all` shared ones
    /// ([`Live::shared`]). With `keep_storage`, candidates go one at a time, least recently
    /// used first, until what the store would hold after the prune is at most that size;
    /// otherwise every candidate goes.
    pub(super) fn least_recently_used(
        &self,
        live: &[Live],
        used: &BTreeMap<String, u64>,
        pinned: &BTreeSet<Digest>,
        pinned_blobs: &BTreeSet<Digest>,
        opts: &PruneOptions,
    ) -> Result<BTreeSet<PathBuf>> {
        let last_used = |l: &Live| {
            used.get(&key_of(&l.path))
                .copied()
                .unwrap_or_else(|| mtime_ms(&l.path))
        };
        let cutoff = opts
            .until
            .map(|d| now_ms().saturating_sub(d.as_millis() as u64));
        let mut candidates: Vec<(u64, &Live)> = live
            .iter()
            .map(|l| (last_used(l), l))
            .filter(|(t, _)| cutoff.is_none_or(|c| *t <= c))
            .filter(|(_, l)| opts.all || !l.shared(pinned))
            .collect();
        candidates.sort_by(|a, b| (a.0, &a.1.path).cmp(&(b.0, &b.1.path)));

        let mut victims = BTreeSet::new();
        let Some(keep) = opts.keep_storage else {
            victims.extend(candidates.into_iter().map(|(_, l)| l.path.clone()));
            return Ok(victims);
        };
        let mut sizes = Footprint::new(self, live, pinned, pinned_blobs)?;
        for (_, l) in candidates {
            if sizes.total <= keep {
                break;
            }
            sizes.drop_record(l);
            victims.insert(l.path.clone());
        }
        Ok(victims)
    }
}

impl Store {
    /// What `rbuild prune --keep-storage 0` would free now (`rbuild du`): `total`, the
    /// store's bytes as du counts them, less what the tags, the cache records their images
    /// use and the cache mounts keep. With how many cache records would go.
    pub(super) fn reclaimable(&self, total: u64) -> Result<(u64, u64)> {
        let (pinned, pinned_blobs) = self.tag_pins()?;
        let (live, dead) = self.live_records()?;
        let mut after = Footprint::new(self, &live, &pinned, &pinned_blobs)?;
        let mut records = dead.len() as u64;
        for l in &live {
            if !l.shared(&pinned) {
                after.drop_record(l);
                records += 1;
            }
        }
        Ok((total.saturating_sub(after.total), records))
    }
}

/// What the store would hold after a prune, with reference counts so that dropping a record
/// frees exactly the layers (and their blobs) nothing else keeps.
struct Footprint {
    total: u64,
    /// Records, tags' layers and child layers that keep each layer.
    layer_refs: BTreeMap<Digest, usize>,
    /// Kept layers that keep each blob.
    blob_refs: BTreeMap<Digest, usize>,
    layers: BTreeMap<Digest, super::LayerRecord>,
    blob_sizes: BTreeMap<Digest, u64>,
    /// Remote layers (remote.rs): their records' sizes and parents. A kept chain keeps its
    /// record; prune drops the others.
    remote: BTreeMap<Digest, (u64, Option<Digest>)>,
    pinned: BTreeSet<Digest>,
    pinned_blobs: BTreeSet<Digest>,
}

impl Footprint {
    fn new(
        store: &Store,
        live: &[Live],
        pinned: &BTreeSet<Digest>,
        pinned_blobs: &BTreeSet<Digest>,
    ) -> Result<Footprint> {
        let mut f = Footprint {
            total: 0,
            layer_refs: BTreeMap::new(),
            blob_refs: BTreeMap::new(),
            layers: BTreeMap::new(),
            blob_sizes: BTreeMap::new(),
            remote: BTreeMap::new(),
            pinned: pinned.clone(),
            pinned_blobs: pinned_blobs.clone(),
        };
        for chain in store.layer_ids()? {
            if let Some(l) = store.layer(&chain) {
                f.layers.insert(chain, l);
            }
        }
        for (path, chain) in store.remote_records()? {
            if let Some(chain) = chain {
                let parent = store.remote_layer(&chain).and_then(|r| r.parent);
                let size = fs::metadata(&path).map_or(0, |m| m.len());
                f.remote.insert(chain, (size, parent));
            }
        }
        let dir = store.root.join("blobs/sha256");
        for entry in fs::read_dir(&dir).map_err(StoreError::io("listing", &dir))? {
            let entry = entry.map_err(StoreError::io("listing", &dir))?;
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                f.blob_sizes
                    .insert(d, entry.metadata().map_or(0, |m| m.len()));
            }
        }
        f.total += f
            .pinned_blobs
            .iter()
            .filter_map(|b| f.blob_sizes.get(b))
            .sum::<u64>();
        f.total += super::layers::content_size(&store.root.join("mounts/cache"))?;
        for chain in pinned {
            f.keep_layer(chain);
        }
        for l in live {
            f.total += fs::metadata(&l.path).map_or(0, |m| m.len());
            if let Some(c) = &l.record.chain {
                f.keep_layer(c);
            }
        }
        Ok(f)
    }

    /// One more reference to `chain`; the first one counts its bytes and keeps its parent.
    fn keep_layer(&mut self, chain: &Digest) {
        let n = self.layer_refs.entry(chain.clone()).or_default();
        *n += 1;
        if *n > 1 {
            return;
        }
        let remote = self.remote.get(chain).cloned();
        self.total += remote.as_ref().map_or(0, |(size, _)| *size);
        let Some(layer) = self.layers.get(chain) else {
            if let Some(p) = remote.and_then(|(_, parent)| parent) {
                self.keep_layer(&p);
            }
            return;
        };
        self.total += layer.size;
        let (blobs, parent): (Vec<Digest>, _) = (
            layer.blobs.iter().map(|(_, b)| b.digest.clone()).collect(),
            layer.parent.clone(),
        );
        for b in blobs {
            let n = self.blob_refs.entry(b.clone()).or_default();
            *n += 1;
            if *n == 1 && !self.pinned_blobs.contains(&b) {
                self.total += self.blob_sizes.get(&b).copied().unwrap_or(0);
            }
        }
        if let Some(p) = parent {
            self.keep_layer(&p);
        }
    }

    /// One reference fewer to `chain`; the last one frees it (and maybe its parent).
    fn release_layer(&mut self, chain: &Digest) {
        let Some(n) = self.layer_refs.get_mut(chain) else {
            return;
        };
        *n -= 1;
        if *n > 0 || self.pinned.contains(chain) {
            return;
        }
        self.layer_refs.remove(chain);
        let remote = self.remote.get(chain).cloned();
        let freed = remote.as_ref().map_or(0, |(size, _)| *size);
        self.total = self.total.saturating_sub(freed);
        let Some(layer) = self.layers.get(chain) else {
            if let Some(p) = remote.and_then(|(_, parent)| parent) {
                self.release_layer(&p);
            }
            return;
        };
        self.total = self.total.saturating_sub(layer.size);
        let (blobs, parent): (Vec<Digest>, _) = (
            layer.blobs.iter().map(|(_, b)| b.digest.clone()).collect(),
            layer.parent.clone(),
        );
        for b in blobs {
            if let Some(n) = self.blob_refs.get_mut(&b) {
                *n -= 1;
                if *n == 0 && !self.pinned_blobs.contains(&b) {
                    self.total = self
                        .total
                        .saturating_sub(self.blob_sizes.get(&b).copied().unwrap_or(0));
                }
            }
        }
        if let Some(p) = parent {
            self.release_layer(&p);
        }
    }

    fn drop_record(&mut self, l: &Live) {
        self.total = self
            .total
            .saturating_sub(fs::metadata(&l.path).map_or(0, |m| m.len()));
        if let Some(c) = &l.record.chain {
            self.release_layer(c);
        }
    }
}
