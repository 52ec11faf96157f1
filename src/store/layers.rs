//! Extracted layers under layers/<chain-id>/{diff,meta.json}.

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Result, Store, StoreError};
use crate::image::{Descriptor, Digest, Sha256Writer};
use crate::layer::compress::{decompressor, sniff, Compression, Compressor};
use crate::layer::stats::{write_listing, Listing};
use crate::layer::{snapshot_blob, LayerError, LayerStats, SnapshotOptions, TarStream};

/// layers/<chain>/files: the layer's path listing ([`crate::layer::LayerFiles::encode`]'s format).
const FILES: &str = "files";

/// The OCI chain id of a layer on top of `parent`:
/// chain(L1) = diff_id(L1); chain(Ln) = sha256(chain(Ln-1) + " " + diff_id(Ln)).
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(p) => Digest::from_raw(&Sha256::digest(format!("{p} {diff_id}").as_bytes())),
    }
}

/// A stored blob of a layer in one codec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// The blobs a layer has in the store, one per codec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlobs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed: Option<BlobRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<BlobRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd: Option<BlobRef>,
}

impl LayerBlobs {
    pub fn get(&self, c: Compression) -> Option<&BlobRef> {
        match c {
            Compression::Uncompressed => self.uncompressed.as_ref(),
            Compression::Gzip => self.gzip.as_ref(),
            Compression::Zstd => self.zstd.as_ref(),
        }
    }

    fn set(&mut self, c: Compression, blob: BlobRef) {
        let slot = match c {
            Compression::Uncompressed => &mut self.uncompressed,
            Compression::Gzip => &mut self.gzip,
            Compression::Zstd => &mut self.zstd,
        };
        *slot = Some(blob);
    }

    /// Every blob, with its codec.
    pub fn iter(&self) -> impl Iterator<Item = (Compression, &BlobRef)> {
        [
            (Compression::Uncompressed, &self.uncompressed),
            (Compression::Gzip, &self.gzip),
            (Compression::Zstd, &self.zstd),
        ]
        .into_iter()
        .filter_map(|(c, b)| b.as_ref().map(|b| (c, b)))
    }
}

/// How the uncompressed tar of a layer rbuild built is made again from its diff dir: a
/// snapshot of layers/<chain>/diff with these options is the tar the layer was built as
/// (diff_id, `size` bytes). Built layers keep no uncompressed blob: writing and fsyncing
/// every layer twice cost more than making the tar again for the outputs that need it
/// (docs/performance.md). The OCI image-layout spec lets a layout's blobs live elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffTar {
    /// Bytes of the tar.
    pub size: u64,
    /// The mtime clamp the snapshot used (SOURCE_DATE_EPOCH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<crate::image::SourceDateEpoch>,
}

/// layers/<chain>/meta.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LayerMeta {
    chain_id: Digest,
    diff_id: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<Digest>,
    /// Bytes of file content in the extracted layer (what `images` sums as SIZE).
    size: u64,
    blobs: LayerBlobs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tar: Option<DiffTar>,
    /// Bytes of a pulled layer's uncompressed tar, counted while it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tar_size: Option<u64>,
    /// Counted when the layer was committed; missing in meta.json written before rbuild
    /// kept them (then [`Store::layer_files`] counts them once and saves them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats: Option<LayerStats>,
}

impl LayerMeta {
    /// A new layer's record, `size` bytes of content (as [`content_size`] counts them).
    fn new(
        parent: Option<&Digest>,
        diff_id: Digest,
        size: u64,
        blobs: LayerBlobs,
        tar: Option<DiffTar>,
    ) -> LayerMeta {
        LayerMeta {
            chain_id: chain_id(parent, &diff_id),
            diff_id,
            parent: parent.cloned(),
            size,
            blobs,
            tar,
            tar_size: None,
            stats: None,
        }
    }
}

/// A layer in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRecord {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    pub size: u64,
    pub blobs: LayerBlobs,
    /// Set for layers rbuild built: their uncompressed tar is made from `diff`.
    pub tar: Option<DiffTar>,
    /// Bytes of the uncompressed tar: a built layer's `tar` size, else what applying a
    /// pulled layer counted ([`Store::record_tar_size`]); None when never counted.
    pub tar_size: Option<u64>,
    /// What the layer holds, if counted yet ([`Store::layer_files`] counts it).
    pub stats: Option<LayerStats>,
    /// layers/<chain>/diff: the extracted layer, usable as an overlay lowerdir.
    pub diff: PathBuf,
}

/// Where an output gets a layer blob's bytes.
pub enum LayerBytes {
    /// A stored blob.
    Blob(PathBuf),
    /// The uncompressed tar, made from the layer's diff dir while it is copied.
    Diff {
        dir: PathBuf,
        diff_id: Digest,
        tar: DiffTar,
        /// Hash the tar again and check it against the diff_id: for every layer but those
        /// this process built (the store's `fresh` set and its rebuilt copy).
        verify: bool,
        /// The rebuilt copy `dir` is, held until the bytes are read (trash.rs).
        kept: Option<std::sync::Arc<super::trash::Rebuilt>>,
    },
}

impl LayerBytes {
    /// A reader of the bytes. For [`LayerBytes::Diff`], call [`LayerReader::finish`] after
    /// copying: it checks the tar against the layer's diff_id.
    pub fn open(&self) -> Result<LayerReader> {
        match self {
            LayerBytes::Blob(path) => fs::File::open(path)
                .map(LayerReader::Blob)
                .map_err(StoreError::io("reading", path)),
            LayerBytes::Diff {
                dir,
                diff_id,
                tar,
                verify,
                kept: _,
            } => {
                let opts = SnapshotOptions {
                    source_date_epoch: tar.source_date_epoch,
                    skip: Vec::new(),
                };
                Ok(LayerReader::Diff(TarStream::new(
                    dir.clone(),
                    opts,
                    diff_id.clone(),
                    tar.size,
                    *verify,
                )))
            }
        }
    }
}

/// See [`LayerBytes::open`].
pub enum LayerReader {
    Blob(fs::File),
    Diff(TarStream),
}

impl LayerReader {
    /// Copy everything (at most `limit` bytes) to `w`; returns how much. A tar made from a
    /// diff dir goes chunk by chunk, without another copy.
    pub fn copy_to(&mut self, w: &mut dyn Write, limit: u64) -> io::Result<u64> {
        match self {
            LayerReader::Blob(f) => io::copy(&mut Read::take(f, limit), w),
            LayerReader::Diff(t) => {
                let mut copied = 0u64;
                while copied < limit {
                    let chunk = t.fill_buf()?;
                    if chunk.is_empty() {
                        break;
                    }
                    let n = chunk.len().min((limit - copied) as usize);
                    w.write_all(&chunk[..n])?;
                    t.consume(n);
                    copied += n as u64;
                }
                Ok(copied)
            }
        }
    }

    /// Check what was read: a tar made from a diff dir must be the one the layer was built as.
    pub fn finish(self) -> Result<()> {
        match self {
            LayerReader::Blob(_) => Ok(()),
            LayerReader::Diff(t) => t.finish().map_err(StoreError::Layer),
        }
    }
}

impl Store {
    fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    /// The layer with chain id `chain`, if the store has it.
    pub fn layer(&self, chain: &Digest) -> Option<LayerRecord> {
        self.try_layer(chain).ok().flatten()
    }

    /// The diff dir of layer `chain` if the store has it extracted, its record read once per
    /// process: each step of a 1,000-step build asks for every layer below it, which read
    /// half a million meta.json files (issue 23). A layer found stays: prune takes the
    /// store's lock exclusively, builds share it.
    pub fn present_layer(&self, chain: &Digest) -> Option<PathBuf> {
        let seen = || self.lowers_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen().contains(chain) {
            return Some(self.layer_dir(chain).join("diff"));
        }
        let diff = self.layer(chain)?.diff;
        seen().insert(chain.clone());
        Some(diff)
    }

    /// Like [`Store::layer`], but a corrupt meta.json is an error rather than absence.
    pub fn try_layer(&self, chain: &Digest) -> Result<Option<LayerRecord>> {
        let dir = self.layer_dir(chain);
        let Some(meta) = Store::read_json::<LayerMeta>(&dir.join("meta.json"))? else {
            return Ok(None);
        };
        Ok(Some(LayerRecord {
            chain_id: meta.chain_id,
            diff_id: meta.diff_id,
            parent: meta.parent,
            size: meta.size,
            blobs: meta.blobs,
            tar_size: meta.tar.as_ref().map(|t| t.size).or(meta.tar_size),
            tar: meta.tar,
            stats: meta.stats,
            diff: dir.join("diff"),
        }))
    }

    /// Every layer chain id in the store.
    pub fn layer_ids(&self) -> Result<Vec<Digest>> {
        digest_names(&self.root.join("layers"))
    }

    /// Record a layer: `diff_dir` (inside [`Store::tmp_dir`]) is renamed to
    /// layers/<chain>/diff, `blob` (already stored, any codec) is recorded as its blob. If the
    /// layer exists already (another build committed it), `diff_dir` is removed and the
    /// existing record returned.
    pub fn commit_layer(
        &self,
        diff_dir: PathBuf,
        parent: Option<&Digest>,
        diff_id: Digest,
        blob: Descriptor,
    ) -> Result<LayerRecord> {
        let chain = chain_id(parent, &diff_id);
        if let Some(existing) = self.try_layer(&chain)? {
            self.discard_dir(diff_dir, existing.size);
            return Ok(existing);
        }
        if !self.has_blob(&blob.digest) {
            return Err(StoreError::BlobMissing {
                digest: blob.digest,
            });
        }
        let compression = match Compression::from_media_type(&blob.media_type) {
            Some(c) => c,
            None => {
                let mut head = [0u8; 4];
                let n = self.open_blob(&blob.digest)?.read(&mut head).unwrap_or(0);
                sniff(&head[..n])
            }
        };
        let mut blobs = LayerBlobs::default();
        blobs.set(
            compression,
            BlobRef {
                digest: blob.digest,
                size: blob.size,
            },
        );
        // Only the size here, in a walk that keeps nothing per entry: applying a layer of a
        // million entries must not hold its listing (tests/security.rs, memory flat in
        // entries). The listing and statistics `rbuild history` and the cost line read are
        // made on first use ([`Store::layer_files`]), metadata only, and kept.
        let size = content_size(&diff_dir)?;
        let meta = LayerMeta::new(parent, diff_id, size, blobs, None);
        self.publish_layer(diff_dir, meta, false)
    }

    /// Record a layer rbuild built from `diff_dir`: its snapshot made `tar`, hashing to
    /// `diff_id`, and counted `size` bytes of content (the snapshot's walk counts them:
    /// another walk of the layer was ~6 % of a first build of 100,000 files, issue 23).
    /// No blob is stored ([`DiffTar`]). Like [`Store::commit_layer`] otherwise.
    ///
    /// `synced` says whether the store's filesystem was synced since `diff_dir` was
    /// written. If not, a new layer is synced here before its record; a copy of a layer the
    /// store has never becomes a record (trash.rs), so it needs no sync.
    pub fn commit_built_layer(
        &self,
        diff_dir: PathBuf,
        parent: Option<&Digest>,
        diff_id: Digest,
        tar: DiffTar,
        size: u64,
        synced: bool,
    ) -> Result<LayerRecord> {
        let chain = chain_id(parent, &diff_id);
        if let Some(existing) = self.try_layer(&chain)? {
            self.keep_rebuilt(&chain, diff_dir, tar, existing.size);
            return Ok(existing);
        }
        if !synced {
            self.sync_filesystem()?;
        }
        let meta = LayerMeta::new(parent, diff_id, size, LayerBlobs::default(), Some(tar));
        self.publish_layer(diff_dir, meta, true)
    }

    /// `layer` stacked on `parent` instead of its own parent: the same diff (a hard-linked
    /// copy of its diff dir, layer/flatten.rs), diff_id, blobs and tar, under the chain id
    /// the new parent gives it. How a `COPY --link` layer, made once on an empty
    /// filesystem, goes onto any base without being made again (BuildKit's MergeOp).
    pub fn rebase_layer(
        &self,
        layer: &LayerRecord,
        parent: Option<&Digest>,
    ) -> Result<LayerRecord> {
        let chain = chain_id(parent, &layer.diff_id);
        if let Some(existing) = self.try_layer(&chain)? {
            return Ok(existing);
        }
        let stage = self.tmp_dir()?;
        let diff = stage.path().join("diff");
        fs::create_dir(&diff).map_err(StoreError::io("creating", &diff))?;
        crate::layer::flatten(std::slice::from_ref(&layer.diff), &diff)?;
        // Not marked fresh: its tar is verified against the diff_id when an output reads it.
        // The same files, linked: the same size.
        let meta = LayerMeta::new(
            parent,
            layer.diff_id.clone(),
            layer.size,
            layer.blobs.clone(),
            layer.tar.clone(),
        );
        self.publish_layer(diff, meta, false)
    }

    /// Whether this process built and committed the layer: its diff dir was hashed moments
    /// ago, so an output need not hash it again (docs/performance.md).
    fn is_fresh(&self, chain: &Digest) -> bool {
        self.fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(chain)
    }

    fn publish_layer(
        &self,
        diff_dir: PathBuf,
        meta: LayerMeta,
        fresh: bool,
    ) -> Result<LayerRecord> {
        let chain = meta.chain_id.clone();
        // Assemble layers/<chain> in scratch, then one rename publishes diff and meta together.
        let stage = self.tmp_dir()?;
        let staged_diff = stage.path().join("diff");
        fs::rename(&diff_dir, &staged_diff).map_err(StoreError::io("moving layer", &diff_dir))?;
        let meta_path = stage.path().join("meta.json");
        write_synced(&meta_path, &crate::image::canonical_json(&meta))?;
        let dest = self.layer_dir(&chain);
        match fs::rename(stage.path(), &dest) {
            Ok(()) => {
                // The TempDir's path is gone now; dropping it is a no-op.
                let _ = stage.keep();
                self.sync_parent_later(&dest);
                if fresh {
                    self.fresh
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(chain.clone());
                }
            }
            // Another build won the race: its layer has the same content; ours is trash.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                self.discard_dir(stage.keep(), meta.size);
            }
            Err(e) => return Err(StoreError::io("renaming layer into", &dest)(e)),
        }
        self.try_layer(&chain)?
            .ok_or(StoreError::LayerMissing { chain })
    }

    /// The layer's blob in `compression`, creating it (by recompressing a stored blob of the
    /// layer, or from its diff dir) and recording it in meta.json if missing. Returns an OCI
    /// layer descriptor. The uncompressed blob of a layer rbuild built is not stored (its
    /// bytes come from [`Store::layer_bytes`]).
    pub fn layer_blob(&self, chain: &Digest, compression: Compression) -> Result<Descriptor> {
        self.layer_bytes(chain, compression, None).map(|(d, _)| d)
    }

    /// The blob an image manifest in the store lists for the layer: the one in `compression`
    /// when the store has it or gets it for free (a built layer's uncompressed tar, made
    /// from its diff dir), else a blob the store already holds (a pulled or imported layer
    /// keeps the registry's), never one made by recompressing. Outputs and pushes make the
    /// encoding they need ([`Store::layer_bytes`]) when they need it; making it here wrote an
    /// uncompressed copy of every pulled layer at each commit (2.3 s for the `ci` bench's
    /// 300 MB base), which is what a lazy (remote) layer's listing already avoids.
    /// `layer` is the record the caller read ([`Store::try_layer`]): an image commit reads
    /// each layer's meta.json once, not once per question asked of it.
    pub fn listed_blob(&self, layer: &LayerRecord, compression: Compression) -> Result<Descriptor> {
        let held = |b: &BlobRef| self.has_blob(&b.digest);
        let free = layer.blobs.get(compression).is_some_and(held)
            || (compression == Compression::Uncompressed && layer.tar.is_some());
        if !free {
            if let Some((c, b)) = layer.blobs.iter().find(|(_, b)| held(b)) {
                return Ok(Descriptor::new(
                    c.oci_media_type(),
                    b.digest.clone(),
                    b.size,
                ));
            }
        }
        self.record_bytes(layer, compression, None).map(|(d, _)| d)
    }

    /// The layer's blob in `compression` (made as [`Store::layer_blob`] does, with `level`
    /// for a blob that has to be made) and where to read its bytes.
    pub fn layer_bytes(
        &self,
        chain: &Digest,
        compression: Compression,
        level: Option<i32>,
    ) -> Result<(Descriptor, LayerBytes)> {
        let layer = self
            .try_layer(chain)?
            .ok_or_else(|| StoreError::LayerMissing {
                chain: chain.clone(),
            })?;
        self.record_bytes(&layer, compression, level)
    }

    /// [`Store::layer_bytes`] for a layer whose record the caller has read.
    fn record_bytes(
        &self,
        layer: &LayerRecord,
        compression: Compression,
        level: Option<i32>,
    ) -> Result<(Descriptor, LayerBytes)> {
        let chain = &layer.chain_id;
        let to_desc =
            |b: &BlobRef| Descriptor::new(compression.oci_media_type(), b.digest.clone(), b.size);
        if let Some(b) = layer.blobs.get(compression) {
            if self.has_blob(&b.digest) {
                return Ok((to_desc(b), LayerBytes::Blob(self.blob_path(&b.digest))));
            }
        }
        if let (Compression::Uncompressed, Some(tar)) = (compression, layer.tar.clone()) {
            // A copy this process made again and hashed, if it has one; else the stored one.
            let rebuilt = self.rebuilt(chain);
            let (dir, tar, verify) = match &rebuilt {
                Some(r) => (r.dir.clone(), r.tar.clone(), false),
                None => (layer.diff.clone(), tar, !self.is_fresh(chain)),
            };
            let desc = Descriptor::new(
                compression.oci_media_type(),
                layer.diff_id.clone(),
                tar.size,
            );
            let bytes = LayerBytes::Diff {
                dir,
                diff_id: layer.diff_id.clone(),
                tar,
                verify,
                kept: rebuilt,
            };
            return Ok((desc, bytes));
        }
        let blob = self.make_layer_blob(layer, compression, level)?;
        self.record_layer_blob(chain, compression, blob.clone())?;
        Ok((
            to_desc(&blob),
            LayerBytes::Blob(self.blob_path(&blob.digest)),
        ))
    }

    /// Store the layer's blob in `compression`, from the cheapest source: an uncompressed or
    /// zstd blob, the diff dir of a built layer, a gzip blob. The source must make the
    /// layer's diff_id, else nothing is stored.
    fn make_layer_blob(
        &self,
        layer: &LayerRecord,
        compression: Compression,
        level: Option<i32>,
    ) -> Result<BlobRef> {
        let stored = |c| layer.blobs.get(c).filter(|b| self.has_blob(&b.digest));
        let source = stored(Compression::Uncompressed).or_else(|| stored(Compression::Zstd));
        let source = match (source, &layer.tar) {
            (Some(b), _) => Some(b),
            (None, Some(_)) => None,
            (None, None) => {
                Some(
                    stored(Compression::Gzip).ok_or_else(|| StoreError::LayerMissing {
                        chain: layer.chain_id.clone(),
                    })?,
                )
            }
        };
        let Some(source) = source else {
            // A built layer: snapshot its diff dir again, straight into the codec.
            let tar = layer.tar.clone().expect("checked above");
            let opts = SnapshotOptions {
                source_date_epoch: tar.source_date_epoch,
                skip: Vec::new(),
            };
            let (digest, size, ()) = self
                .write_blob_prehashed(|w| {
                    let d = snapshot_blob(&layer.diff, &opts, compression, level, w)?;
                    if d.diff_id != layer.diff_id || d.tar_size != tar.size {
                        return Err(LayerError::DiffChanged {
                            dir: layer.diff.clone(),
                            expected: layer.diff_id.clone(),
                            actual: d.diff_id,
                        });
                    }
                    Ok(((), d.digest))
                })
                .map_err(|e| match e {
                    // The layer's own error (it names the diff dir), not "producing blob".
                    StoreError::Producer(p) => match p.downcast::<LayerError>() {
                        Ok(layer_error) => StoreError::Layer(*layer_error),
                        Err(p) => StoreError::Producer(p),
                    },
                    e => e,
                })?;
            return Ok(BlobRef { digest, size });
        };
        let src_path = self.blob_path(&source.digest);
        let (digest, size, diff_id) = self
            .write_blob(|w| -> io::Result<Digest> {
                let mut input =
                    decompressor(self.open_blob(&source.digest).map_err(io::Error::other)?)?;
                let mut out = Sha256Writer::new(Compressor::new(w, compression, level)?);
                io::copy(&mut input, &mut out)?;
                let (diff_id, _, enc) = out.finish();
                enc.finish()?.flush()?;
                Ok(diff_id)
            })
            .map_err(|e| match e {
                StoreError::Producer(source) => StoreError::Io {
                    action: "recompressing layer blob",
                    path: src_path.clone(),
                    source: io::Error::other(source),
                },
                e => e,
            })?;
        if diff_id != layer.diff_id {
            return Err(StoreError::DiffIdMismatch {
                chain: layer.chain_id.clone(),
                blob: source.digest.clone(),
                expected: layer.diff_id.clone(),
                actual: diff_id,
            });
        }
        Ok(BlobRef { digest, size })
    }

    /// The layer's statistics and path listing, `None` if the store has no such layer. The
    /// first call for a layer (or one whose listing is damaged) lists its diff dir, metadata
    /// only, and saves both; later calls read the small listing file. The listing is read
    /// as it is used, never held whole (issue 23).
    pub fn layer_files(&self, chain: &Digest) -> Result<Option<(LayerStats, Listing)>> {
        let dir = self.layer_dir(chain);
        let meta_path = dir.join("meta.json");
        let Some(mut meta) = Store::read_json::<LayerMeta>(&meta_path)? else {
            return Ok(None);
        };
        let files_path = dir.join(FILES);
        let open = || Listing::open(&files_path).map_err(StoreError::io("reading", &files_path));
        if let Some(stats) = &meta.stats {
            if let Some(listing) = open()? {
                return Ok(Some((stats.clone(), listing)));
            }
        }
        let diff = dir.join("diff");
        let stats = self.write_file_atomic_with(&files_path, |f| {
            write_listing(&diff, f).map_err(StoreError::Layer)
        })?;
        if meta.stats.as_ref() != Some(&stats) {
            meta.stats = Some(stats.clone());
            self.write_file_atomic(&meta_path, &crate::image::canonical_json(&meta))?;
        }
        let listing = open()?.ok_or_else(|| StoreError::LayerMissing {
            chain: chain.clone(),
        })?;
        Ok(Some((stats, listing)))
    }

    /// Add a blob to a layer's meta.json. Two processes adding different codecs at once may
    /// lose one entry; that only costs a recompression later (same bytes, same digest).
    fn record_layer_blob(&self, chain: &Digest, c: Compression, blob: BlobRef) -> Result<()> {
        let path = self.layer_dir(chain).join("meta.json");
        let mut meta: LayerMeta =
            Store::read_json(&path)?.ok_or_else(|| StoreError::LayerMissing {
                chain: chain.clone(),
            })?;
        meta.blobs.set(c, blob);
        self.write_file_atomic(&path, &crate::image::canonical_json(&meta))
    }

    /// Record the byte count of a pulled layer's uncompressed tar, counted while its
    /// (compressed) blob was applied: `rbuild history` shows it without reading the blob.
    pub fn record_tar_size(&self, chain: &Digest, size: u64) -> Result<()> {
        let path = self.layer_dir(chain).join("meta.json");
        let mut meta: LayerMeta =
            Store::read_json(&path)?.ok_or_else(|| StoreError::LayerMissing {
                chain: chain.clone(),
            })?;
        if meta.tar.is_some() || meta.tar_size == Some(size) {
            return Ok(());
        }
        meta.tar_size = Some(size);
        self.write_file_atomic(&path, &crate::image::canonical_json(&meta))
    }

    /// Remove a layer (prune). Renamed into scratch first so no half-removed layer is visible.
    pub(crate) fn remove_layer(&self, chain: &Digest) -> Result<()> {
        self.lowers_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(chain);
        self.remove_aside(&self.layer_dir(chain), "removing layer")
    }

    /// Remove the record directory `dir` (a layer, a flattened snapshot): renamed into this
    /// session's scratch first, so no half-removed record is ever visible; gone already is
    /// fine.
    pub(super) fn remove_aside(&self, dir: &Path, what: &'static str) -> Result<()> {
        let trash = self.tmp_dir()?;
        let target = trash.path().join("gone");
        match fs::rename(dir, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(what, dir)(e)),
        }
        fs::remove_dir_all(trash.path()).map_err(StoreError::io("removing", trash.path()))
    }
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(StoreError::io("creating", path))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(StoreError::io("writing", path))
}

/// Sum of regular file sizes under `dir` (hard links counted once), without following links.
pub(super) fn content_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && d == dir => return Ok(0),
            Err(e) => return Err(StoreError::io("listing", &d)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(StoreError::io("listing", &d))?;
            let md = entry
                .metadata()
                .map_err(StoreError::io("reading", entry.path()))?;
            if md.is_dir() {
                stack.push(entry.path());
            } else if md.is_file() && (md.nlink() == 1 || seen.insert((md.dev(), md.ino()))) {
                total += md.len();
            }
        }
    }
    Ok(total)
}

/// The digests named by the entries of `dir` (layers/, flat/), sorted; other names are
/// skipped and a missing `dir` holds none.
pub(super) fn digest_names(dir: &Path) -> Result<Vec<Digest>> {
    let mut ids = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(StoreError::io("listing", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(StoreError::io("listing", dir))?;
        if let Some(d) = entry
            .file_name()
            .to_str()
            .and_then(|n| Digest::from_hex(n).ok())
        {
            ids.push(d);
        }
    }
    ids.sort();
    Ok(ids)
}
