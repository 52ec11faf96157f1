//! Images: config + manifest blobs, tags in index.json, lookup, prune (indexes.rs: the
//! index of a multi-platform image).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use super::lru::{Live, PruneOptions};
use super::{chain_id, LayerRecord, Result, Store, StoreError, Stored};
use crate::image::{
    canonical_json, media, Descriptor, Digest, ImageConfig, Index, Manifest, Reference,
};
use crate::layer::compress::Compression;

/// An image in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    /// The manifest blob (its digest is what registries call the image digest).
    pub manifest: Descriptor,
    pub manifest_body: Manifest,
    pub config: ImageConfig,
    /// The config blob's digest: docker's image id.
    pub config_digest: Digest,
    /// Layer chain ids, bottom first (one per `config.rootfs.diff_ids`).
    pub chains: Vec<Digest>,
}

impl ImageRecord {
    /// Total content size of the image's layers as stored (uncompressed file bytes where the
    /// layer is extracted, else the manifest's blob size).
    pub fn size(&self, store: &Store) -> u64 {
        self.layer_sizes(store).sum()
    }

    /// Each layer's size as [`ImageRecord::size`] counts it, bottom first.
    pub fn layer_sizes<'a>(&'a self, store: &'a Store) -> impl Iterator<Item = u64> + 'a {
        self.chains
            .iter()
            .zip(
                self.manifest_body
                    .layers
                    .iter()
                    .map(Some)
                    .chain(std::iter::repeat(None)),
            )
            .map(|(chain, desc)| match store.layer(chain) {
                Some(l) => l.size,
                None => desc.map_or(0, |d| d.size),
            })
    }
}

/// What a prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub cache_records: usize,
    pub layers: usize,
    pub blobs: usize,
    /// Flattened snapshots of deep layer stacks (flat.rs). Counted, not in `bytes`: their
    /// files are hard links to the layers' files, so removing one frees no file data.
    pub flats: usize,
    /// Blob bytes, extracted layer content bytes and cache record bytes, with the trash's.
    pub bytes: u64,
}

/// Where [`Store::put_image`] finds a layer's manifest entry: the record read once for the
/// layer (meta.json), or a lazy layer's remote blob.
enum Listed {
    Local(LayerRecord),
    Remote(Descriptor),
}

/// Chain ids for a list of diff ids, bottom first.
pub fn chains_of(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = chain_id(out.last(), d);
        out.push(next);
    }
    out
}

impl Store {
    /// Write the config blob (canonical JSON) and an OCI manifest whose layers are the
    /// layers' blobs in `compression` where the store has them or makes them for free, else
    /// the blobs it holds ([`Store::listed_blob`]). `layers` are chain ids, bottom first,
    /// and must match `config.rootfs.diff_ids`.
    pub fn put_image(
        &self,
        config: &ImageConfig,
        layers: &[Digest],
        compression: Compression,
        annotations: &BTreeMap<String, String>,
    ) -> Result<ImageRecord> {
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(StoreError::LayerCountMismatch {
                config: config.rootfs.diff_ids.len(),
                given: layers.len(),
            });
        }
        let mut descs = Vec::with_capacity(layers.len());
        for (index, (chain, diff_id)) in layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            // A layer not fetched yet (remote.rs) is listed with the blob its cache has.
            let (layer_diff_id, listed) = match self.try_layer(chain)? {
                Some(layer) => (layer.diff_id.clone(), Listed::Local(layer)),
                None => match self.remote_layer(chain) {
                    Some(r) => (r.diff_id, Listed::Remote(r.blob)),
                    None => {
                        return Err(StoreError::LayerMissing {
                            chain: chain.clone(),
                        })
                    }
                },
            };
            if &layer_diff_id != diff_id {
                return Err(StoreError::ImageDiffIdMismatch {
                    index,
                    chain: chain.clone(),
                    config: diff_id.clone(),
                    layer: layer_diff_id,
                });
            }
            descs.push(match listed {
                Listed::Remote(blob) => blob,
                Listed::Local(layer) => self.listed_blob(&layer, compression)?,
            });
        }
        let config_bytes = canonical_json(config);
        let config_digest = self.put_blob_bytes(&config_bytes)?;
        let manifest_body = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            config: Descriptor::new(
                media::OCI_CONFIG,
                config_digest.clone(),
                config_bytes.len() as u64,
            ),
            layers: descs,
            annotations: (!annotations.is_empty()).then(|| annotations.clone()),
        };
        let manifest_bytes = canonical_json(&manifest_body);
        let manifest_digest = self.put_blob_bytes(&manifest_bytes)?;
        Ok(ImageRecord {
            manifest: Descriptor::new(
                media::OCI_MANIFEST,
                manifest_digest,
                manifest_bytes.len() as u64,
            ),
            manifest_body,
            config: config.clone(),
            config_digest,
            chains: layers.to_vec(),
        })
    }

    /// Load the image whose manifest blob is `digest`.
    pub fn image_by_manifest(&self, digest: &Digest) -> Result<ImageRecord> {
        let bytes = self.read_blob(digest)?;
        let path = self.blob_path(digest);
        let corrupt = |source| StoreError::Corrupt {
            path: path.clone(),
            source,
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
        let media_type = value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or(media::OCI_MANIFEST)
            .to_string();
        if value.get("manifests").is_some()
            || !(media_type == media::OCI_MANIFEST || media_type == media::DOCKER_MANIFEST)
        {
            return Err(StoreError::NotAnImageManifest {
                digest: digest.clone(),
                media_type,
            });
        }
        let manifest_body: Manifest = serde_json::from_value(value).map_err(corrupt)?;
        let config_digest = manifest_body.config.digest.clone();
        let config_bytes = self.read_blob(&config_digest)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| StoreError::Corrupt {
                path: self.blob_path(&config_digest),
                source,
            })?;
        let chains = chains_of(&config.rootfs.diff_ids);
        Ok(ImageRecord {
            manifest: Descriptor::new(&media_type, digest.clone(), bytes.len() as u64),
            manifest_body,
            config,
            config_digest,
            chains,
        })
    }

    fn read_index(&self) -> Result<Index> {
        Ok(Store::read_json(&self.root.join("index.json"))?.unwrap_or_default())
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        self.write_file_durable(&self.root.join("index.json"), &canonical_json(index))
    }

    /// Point `reference` (normalized, full form) at `manifest`, replacing an earlier target.
    pub fn tag(&self, reference: &Reference, manifest: &Descriptor) -> Result<()> {
        let name = reference.to_string();
        let _guard = self.index_lock()?;
        let mut index = self.read_index()?;
        index
            .manifests
            .retain(|d| ref_name(d) != Some(name.as_str()));
        let mut desc =
            Descriptor::new(&manifest.media_type, manifest.digest.clone(), manifest.size);
        desc.annotations = Some(BTreeMap::from([(
            media::REF_NAME_ANNOTATION.to_string(),
            name,
        )]));
        index.manifests.push(desc);
        index
            .manifests
            .sort_by(|a, b| ref_name(a).cmp(&ref_name(b)));
        self.write_index(&index)
    }

    /// Remove the tag `reference`; whether it existed.
    pub fn untag(&self, reference: &Reference) -> Result<bool> {
        let name = reference.to_string();
        let _guard = self.index_lock()?;
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index
            .manifests
            .retain(|d| ref_name(d) != Some(name.as_str()));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// Tags and the manifest each points at, sorted by reference.
    pub fn tags(&self) -> Result<Vec<(Reference, Descriptor)>> {
        let index = self.read_index()?;
        Ok(index
            .manifests
            .into_iter()
            .filter_map(|d| {
                let r = ref_name(&d)?.parse::<Reference>().ok()?;
                Some((r, d))
            })
            .collect())
    }

    /// Find an image by tag (`busybox`, normalized), by image id (config digest) or
    /// manifest digest, either full (`sha256:<hex>`) or as a unique hex prefix of a tagged one.
    /// A multi-platform image gives the image that stands for it
    /// ([`IndexRecord::default_image`]); [`Store::lookup`] gives the index.
    pub fn resolve(&self, reference_or_id: &str) -> Result<Option<ImageRecord>> {
        Ok(self
            .lookup(reference_or_id)?
            .map(|s| s.default_image().clone()))
    }

    /// What a tag, digest or id names: an image, or a multi-platform image's index (by its
    /// tag or index digest, full or a unique prefix).
    pub fn lookup(&self, reference_or_id: &str) -> Result<Option<Stored>> {
        let tags = self.tags()?;
        if let Ok(r) = reference_or_id.parse::<Reference>() {
            let name = r.to_string();
            if let Some((_, d)) = tags.iter().find(|(t, _)| t.to_string() == name) {
                return self.stored_by_digest(&d.digest).map(Some);
            }
            // `name@sha256:..`: the manifest itself, when a pull stored it.
            if let Some(d) = &r.digest {
                if self.has_blob(d) {
                    return self.stored_by_digest(d).map(Some);
                }
            }
        }
        let hex = reference_or_id
            .strip_prefix("sha256:")
            .unwrap_or(reference_or_id);
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let hex = hex.to_ascii_lowercase();
        if let Ok(d) = Digest::from_hex(&hex) {
            if self.has_blob(&d) {
                match self.stored_by_digest(&d) {
                    Ok(found) => return Ok(Some(found)),
                    Err(StoreError::NotAnImageManifest { .. } | StoreError::Corrupt { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut found: Option<Stored> = None;
        for (_, d) in &tags {
            let stored = self.stored_by_digest(&d.digest)?;
            let matches = match &stored {
                Stored::Image(img) => {
                    img.config_digest.hex().starts_with(&hex)
                        || img.manifest.digest.hex().starts_with(&hex)
                }
                Stored::Index(x) => x.index.digest.hex().starts_with(&hex),
            };
            if matches {
                match &found {
                    Some(f) if f.descriptor().digest != stored.descriptor().digest => {
                        return Err(StoreError::Ambiguous(reference_or_id.to_string()))
                    }
                    _ => found = Some(stored),
                }
            }
        }
        Ok(found)
    }

    /// Every tag and what it names, sorted by reference.
    pub fn tagged(&self) -> Result<Vec<(Reference, Stored)>> {
        self.tags()?
            .into_iter()
            .map(|(r, d)| Ok((r, self.stored_by_digest(&d.digest)?)))
            .collect()
    }

    /// Every tagged image, sorted by reference; each image of a multi-platform one, under
    /// its tag.
    pub fn images(&self) -> Result<Vec<(Reference, ImageRecord)>> {
        Ok(self
            .tagged()?
            .into_iter()
            .flat_map(|(r, s)| {
                s.images()
                    .iter()
                    .map(|i| (r.clone(), i.clone()))
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    /// Remove the tag(s) `reference_or_id` names: one tag when given a tag; every tag of the
    /// image when given an id (refused if it has several tags, unless `force`, as docker does).
    /// Returns the removed tags; data goes at the next [`Store::prune`].
    pub fn rmi(&self, reference_or_id: &str, force: bool) -> Result<Vec<Reference>> {
        let tags = self.tags()?;
        if let Ok(r) = reference_or_id.parse::<Reference>() {
            if tags.iter().any(|(t, _)| *t == r) && self.untag(&r)? {
                return Ok(vec![r]);
            }
        }
        let Some(found) = self.lookup(reference_or_id)? else {
            return Ok(Vec::new());
        };
        let targets: Vec<Reference> = tags
            .into_iter()
            .filter(|(_, d)| d.digest == found.descriptor().digest)
            .map(|(r, _)| r)
            .collect();
        if targets.len() > 1 && !force {
            return Err(StoreError::Ambiguous(reference_or_id.to_string()));
        }
        for t in &targets {
            self.untag(t)?;
        }
        Ok(targets)
    }

    /// The layer chains and blobs (manifests, configs, layers) the tagged images use: what
    /// prune never removes.
    pub(super) fn tag_pins(&self) -> Result<(BTreeSet<Digest>, BTreeSet<Digest>)> {
        let mut chains = BTreeSet::new();
        let mut blobs = BTreeSet::new();
        for (_, d) in self.tags()? {
            blobs.insert(d.digest.clone());
            let stored = match self.stored_by_digest(&d.digest) {
                Ok(stored) => stored,
                // A tag whose blobs are missing keeps nothing else; it stays for `rmi`.
                Err(StoreError::BlobMissing { .. }) => continue,
                Err(e) => return Err(e),
            };
            // An index keeps every image it lists, whole: never a manifest without its layers.
            for img in stored.images() {
                blobs.insert(img.manifest.digest.clone());
                blobs.insert(img.config_digest.clone());
                blobs.extend(img.manifest_body.layers.iter().map(|l| l.digest.clone()));
                chains.extend(img.chains.iter().cloned());
            }
        }
        Ok((chains, blobs))
    }

    /// The cache records whose layer is here, and the paths of those that are unreadable or
    /// whose layer is gone (a miss forever: prune always removes them).
    pub(super) fn live_records(&self) -> Result<(Vec<Live>, Vec<std::path::PathBuf>)> {
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for (path, rec) in self.cache_records()? {
            match rec.filter(|r| r.chain.as_ref().is_none_or(|c| self.layer_known(c))) {
                Some(record) => live.push(Live { path, record }),
                None => dead.push(path),
            }
        }
        Ok((live, dead))
    }

    /// Remove what no tag needs: layers, blobs, and cache records whose layers are gone;
    /// with `opts.all`, every cache record (and, when no limit is given, the RUN cache
    /// mounts and the context stat cache); with `opts.keep_storage` / `opts.until`, the
    /// least recently used records (lru.rs). Takes the store lock exclusively; fails with
    /// [`StoreError::Busy`] while a build holds it, so what a running build uses stays. The
    /// caller must not hold a [`super::StoreLock`].
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneStats> {
        let _lock = self.try_lock_exclusive()?;
        let mut stats = PruneStats {
            bytes: self.empty_trash(),
            ..Default::default()
        };
        let (mut keep_chains, mut keep_blobs) = self.tag_pins()?;
        let (live, dead) = self.live_records()?;
        // Without a limit, --all takes every record.
        let (live, all) = match opts.all && !opts.limited() {
            true => (Vec::new(), live),
            false => (live, Vec::new()),
        };
        for path in dead.iter().chain(all.iter().map(|l| &l.path)) {
            remove_record(path, &mut stats)?;
        }
        let (used, notes) = self.read_use()?;
        let gone = if opts.limited() {
            self.least_recently_used(&live, &used, &keep_chains, &keep_blobs, opts)?
        } else {
            BTreeSet::new()
        };
        let mut keep_listings = BTreeSet::new();
        let mut keep_keys = BTreeSet::new();
        for Live { path, record } in live {
            if gone.contains(&path) {
                remove_record(&path, &mut stats)?;
                continue;
            }
            keep_keys.extend(path.file_stem().map(|s| s.to_string_lossy().into_owned()));
            keep_listings.extend(record.inputs.and_then(|i| i.content));
            if let Some(c) = record.chain {
                keep_chains.insert(c);
            }
        }
        self.compact_use(used, &notes, &keep_keys)?;
        self.prune_listings(&keep_listings)?;
        // BuildKit keeps cache mounts unless told to drop all of its cache.
        if opts.all && !opts.limited() {
            stats.bytes += self.remove_build_state()?;
        }

        // A kept layer needs its parents (they are its overlay lowerdirs), present or
        // remote (a present layer below a remote one is its lower once it is fetched).
        let mut todo: Vec<Digest> = keep_chains.iter().cloned().collect();
        while let Some(c) = todo.pop() {
            let parent = match self.layer(&c) {
                Some(l) => l.parent,
                None => self.remote_layer(&c).and_then(|r| r.parent),
            };
            if let Some(parent) = parent {
                if keep_chains.insert(parent.clone()) {
                    todo.push(parent);
                }
            }
        }

        for chain in self.layer_ids()? {
            let layer = self.layer(&chain);
            if keep_chains.contains(&chain) {
                if let Some(l) = layer {
                    keep_blobs.extend(l.blobs.iter().map(|(_, b)| b.digest.clone()));
                }
            } else {
                stats.bytes += layer.map_or(0, |l| l.size);
                self.remove_layer(&chain)?;
                stats.layers += 1;
            }
        }

        // Remote layers take no disk but their records: those of kept chains stay.
        self.prune_remote(&keep_chains)?;

        // A snapshot stands for its top layer and those below it: it goes with that layer.
        for chain in self.flat_ids()? {
            if !keep_chains.contains(&chain) {
                self.remove_flat(&chain)?;
                stats.flats += 1;
            }
        }

        let dir = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&dir).map_err(StoreError::io("listing", &dir))? {
            let entry = entry.map_err(StoreError::io("listing", &dir))?;
            let keep = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
                .is_some_and(|d| keep_blobs.contains(&d));
            if !keep {
                let path = entry.path();
                stats.bytes += entry.metadata().map_or(0, |m| m.len());
                fs::remove_file(&path).map_err(StoreError::io("removing", &path))?;
                stats.blobs += 1;
            }
        }
        Ok(stats)
    }
}

/// Remove the cache record file at `path`, counting it and its bytes.
fn remove_record(path: &std::path::Path, stats: &mut PruneStats) -> Result<()> {
    stats.bytes += fs::metadata(path).map_or(0, |m| m.len());
    fs::remove_file(path).map_err(StoreError::io("removing", path))?;
    stats.cache_records += 1;
    Ok(())
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations
        .as_ref()?
        .get(media::REF_NAME_ANNOTATION)
        .map(String::as_str)
}
