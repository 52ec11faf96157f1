//! The exported cache: its config, and reading and writing it in a registry or an OCI
//! layout directory.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{CacheExport, CacheImport, ExportTarget};
use crate::image::{canonical_json, media, Descriptor, Digest, Index, Reference};
use crate::output::OutputError;
use crate::registry::{Cause, Client, RegistryError};
use crate::store::{BlobSource, CacheRecord, Store, StoreError};

/// The artifact type of a cache manifest and the media type of its config.
pub const ARTIFACT_TYPE: &str = "application/vnd.rbuild.cache.v1+json";

/// The annotation of a pushed image's manifest that carries its inline cache
/// (`--cache-to type=inline`): the cache config's JSON. BuildKit keeps its inline cache in
/// the image config's `moby.buildkit.cache.v0` label, which changes the image id; a
/// manifest annotation leaves the image id alone.
pub const INLINE_ANNOTATION: &str = "dev.rbuild.cache.v1";

/// The value of [`INLINE_ANNOTATION`] for `records`.
pub fn inline_annotation(records: Vec<ExportedRecord>) -> String {
    String::from_utf8(canonical_json(&CacheConfig { records })).expect("JSON is UTF-8")
}

/// Cache configs larger than this are refused (a record is ~1 KB: 64 MB is far beyond any
/// real build).
const MAX_CONFIG: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{action} `{path}`: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not an rbuild cache, or a broken one.
    #[error("{source_name}: {detail}")]
    Invalid { source_name: String, detail: String },
    #[error("{source_name}: blob {expected} arrived with digest {actual}: refused")]
    DigestMismatch {
        source_name: String,
        expected: Digest,
        actual: Digest,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io {
        action,
        path,
        source,
    }
}

/// What the cache manifest's config holds: every exported step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub records: Vec<ExportedRecord>,
}

/// One step: its key, the key it follows, the layer it added (blob and diff_id) if any,
/// and the store's cache record as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRecord {
    pub key: String,
    pub parent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    pub record: CacheRecord,
}

/// An imported cache: its records by key and its layer blobs by diff_id.
pub struct Source {
    origin: Origin,
    records: HashMap<String, ExportedRecord>,
    layers: HashMap<Digest, Descriptor>,
}

enum Origin {
    Registry(Reference),
    Local(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Registry(r) => write!(f, "`{r}`"),
            Origin::Local(dir) => write!(f, "`{}`", dir.display()),
        }
    }
}

impl Source {
    /// Read the cache manifest and its config (no layer bytes) from where `import` says.
    pub fn load(registry: &Client, import: &CacheImport) -> Result<Source, CacheError> {
        let origin = match import {
            CacheImport::Registry(r) => Origin::Registry(r.clone()),
            CacheImport::Local(dir) => Origin::Local(dir.clone()),
        };
        let invalid = |detail: String| CacheError::Invalid {
            source_name: format!("cache {origin}"),
            detail,
        };
        let manifest_bytes = match &origin {
            Origin::Registry(r) => registry.manifest(r)?.0,
            Origin::Local(dir) => {
                let path = dir.join("index.json");
                let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
                let index: Index = serde_json::from_slice(&bytes)
                    .map_err(|e| invalid(format!("index.json: {e}")))?;
                let desc = index
                    .manifests
                    .first()
                    .ok_or_else(|| invalid("index.json lists no manifest".to_string()))?;
                read_local_blob(dir, desc, &origin)?
            }
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Artifact {
            artifact_type: Option<String>,
            config: Descriptor,
            #[serde(default)]
            layers: Vec<Descriptor>,
            #[serde(default)]
            annotations: std::collections::BTreeMap<String, String>,
        }
        let manifest: Artifact = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| invalid(format!("not a cache manifest: {e}")))?;
        let ours = manifest.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
            && manifest.config.media_type == ARTIFACT_TYPE;
        let inline = manifest.annotations.get(INLINE_ANNOTATION);
        if ours && manifest.config.size > MAX_CONFIG {
            return Err(invalid(format!(
                "cache config of {} bytes",
                manifest.config.size
            )));
        }
        let config_bytes = match (&origin, inline) {
            (Origin::Registry(r), _) if ours => {
                let mut out = Vec::new();
                registry.fetch_blob(r, &manifest.config, &mut out)?;
                out
            }
            (Origin::Local(dir), _) if ours => read_local_blob(dir, &manifest.config, &origin)?,
            // An image pushed with `--cache-to type=inline`.
            (_, Some(inline)) => inline.as_bytes().to_vec(),
            _ => {
                return Err(invalid(format!(
                    "not an rbuild cache (artifactType {}, config {}, no {INLINE_ANNOTATION} \
                     annotation)",
                    manifest.artifact_type.as_deref().unwrap_or("none"),
                    manifest.config.media_type
                )))
            }
        };
        let config: CacheConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("cache config: {e}")))?;
        let mut layers = HashMap::new();
        for rec in &config.records {
            if let (Some(layer), Some(diff_id)) = (&rec.layer, &rec.diff_id) {
                if !manifest.layers.iter().any(|l| l.digest == layer.digest) {
                    return Err(invalid(format!(
                        "record {} names layer {} the manifest does not list",
                        rec.key, layer.digest
                    )));
                }
                layers.insert(diff_id.clone(), layer.clone());
            }
        }
        let records = config
            .records
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect();
        Ok(Source {
            origin,
            records,
            layers,
        })
    }

    /// Where the cache came from, for messages.
    pub fn name(&self) -> String {
        self.origin.to_string()
    }

    /// The registry repository holding the cache's layer blobs, with their digests: where
    /// a push to the same registry can mount them from.
    pub fn registry_blobs(&self) -> Option<(Reference, Vec<Digest>)> {
        match &self.origin {
            Origin::Registry(r) => Some((
                r.clone(),
                self.layers.values().map(|d| d.digest.clone()).collect(),
            )),
            Origin::Local(_) => None,
        }
    }

    /// The records of steps built on `parent`.
    pub fn built_on<'a>(&'a self, parent: &'a str) -> impl Iterator<Item = &'a ExportedRecord> {
        self.records.values().filter(move |r| r.parent == parent)
    }

    pub fn get(&self, key: &str) -> Option<&ExportedRecord> {
        self.records.get(key)
    }

    /// The blob of the layer with `diff_id`, if the cache has it.
    pub fn layer(&self, diff_id: &Digest) -> Option<&Descriptor> {
        self.layers.get(diff_id)
    }

    /// Where the cache's layer blobs are, as the store records a layer not fetched yet.
    pub fn blob_source(&self) -> BlobSource {
        match &self.origin {
            Origin::Registry(r) => BlobSource::RegistryCache(r.name()),
            Origin::Local(dir) => BlobSource::Local(dir.clone()),
        }
    }
}

/// Copy the layer blob `desc` from `source` into the store, refusing bytes of another
/// digest (they are never stored under `desc`'s digest, so nothing uses them): a cache's
/// are a [`CacheError::DigestMismatch`] (refused, the step built again), a base image's a
/// registry error. `also` is handed every byte as it arrives, once and in order (the
/// layer's extraction, which runs while the blob downloads); what it made of them is only
/// good once this returns `Ok`. Its write errors stop the fetch.
pub fn fetch_blob(
    registry: &Client,
    store: &Store,
    source: &BlobSource,
    desc: &Descriptor,
    also: &mut dyn Write,
) -> Result<(), CacheError> {
    let mismatch = |actual| CacheError::DigestMismatch {
        source_name: source.to_string(),
        expected: desc.digest.clone(),
        actual,
    };
    let (digest, _, ()) = match source {
        BlobSource::Registry(name) | BlobSource::RegistryCache(name) => {
            let r: Reference = name.parse().map_err(|e| CacheError::Invalid {
                source_name: source.to_string(),
                detail: format!("{e}"),
            })?;
            let cache = matches!(source, BlobSource::RegistryCache(_));
            // The client hashes what arrives and fails unless it is `desc`: hashing the
            // bytes again on their way to the store would only cost CPU.
            store
                .write_blob_prehashed(|w| {
                    registry
                        .fetch_blob(&r, desc, &mut Tee(w, also))
                        .map(|()| ((), desc.digest.clone()))
                })
                .map_err(|e| match e {
                    // The registry's own error (it names the reference), not "producing blob".
                    StoreError::Producer(p) => match p.downcast::<RegistryError>() {
                        Ok(e) => match e.cause() {
                            // The client checks every blob as it arrives.
                            Some(Cause::DigestMismatch { actual, .. }) if cache => {
                                mismatch(actual.clone())
                            }
                            _ => CacheError::Registry(*e),
                        },
                        Err(p) => StoreError::Producer(p).into(),
                    },
                    e => e.into(),
                })?
        }
        BlobSource::Local(dir) => {
            let path = blob_path(dir, &desc.digest);
            let mut file = std::fs::File::open(&path).map_err(io_err("opening", &path))?;
            store.write_blob(|w| std::io::copy(&mut file, &mut Tee(w, also)).map(drop))?
        }
    };
    if digest != desc.digest {
        return Err(mismatch(digest));
    }
    Ok(())
}

/// Writes to both: the store's blob file first.
struct Tee<'a>(&'a mut dyn Write, &'a mut dyn Write);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(d.hex())
}

/// A small blob of an OCI layout, checked against its descriptor.
fn read_local_blob(dir: &Path, desc: &Descriptor, origin: &Origin) -> Result<Vec<u8>, CacheError> {
    if desc.size > MAX_CONFIG {
        return Err(CacheError::Invalid {
            source_name: format!("cache {origin}"),
            detail: format!("blob {} of {} bytes", desc.digest, desc.size),
        });
    }
    let path = blob_path(dir, &desc.digest);
    let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
    let actual = Digest::of(&bytes);
    if actual != desc.digest {
        return Err(CacheError::DigestMismatch {
            source_name: format!("cache {origin}"),
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// Write `records` where `spec` says: the layer blobs (in the store under the descriptors
/// the records carry, or, for a registry, in a repository of `homes` to mount them from),
/// the config, then the manifest that names them.
pub fn export(
    store: &Store,
    registry: &Client,
    spec: &CacheExport,
    records: Vec<ExportedRecord>,
    homes: &[(Reference, Vec<Digest>)],
) -> Result<Digest, CacheError> {
    let mut layers: Vec<Descriptor> = Vec::new();
    for layer in records.iter().filter_map(|r| r.layer.as_ref()) {
        if !layers.iter().any(|l| l.digest == layer.digest) {
            layers.push(layer.clone());
        }
    }
    let config_bytes = canonical_json(&CacheConfig { records });
    let config_digest = store.put_blob_bytes(&config_bytes)?;
    let config = Descriptor::new(ARTIFACT_TYPE, config_digest, config_bytes.len() as u64);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": config,
        "layers": layers,
    });
    let manifest_bytes = canonical_json(&manifest);
    let manifest_digest = Digest::of(&manifest_bytes);
    match &spec.target {
        ExportTarget::Registry(r) => {
            // push_blob asks the registry first (HEAD): a layer the image's push or an
            // earlier export uploaded goes up once.
            for desc in layers.iter().chain(std::iter::once(&config)) {
                let home = homes.iter().find(|(_, d)| d.contains(&desc.digest));
                let from = home.map(|(h, _)| h);
                registry.push_blob(r, desc, &store.blob_path(&desc.digest), from)?;
            }
            registry.push_manifest(r, media::OCI_MANIFEST, &manifest_bytes)?;
        }
        // Written by the push (exec/push.rs).
        ExportTarget::Inline => {}
        ExportTarget::Local(dest) => {
            let desc = Descriptor::new(
                media::OCI_MANIFEST,
                manifest_digest.clone(),
                manifest_bytes.len() as u64,
            );
            crate::output::write_dir(dest, |dir| {
                write_layout(
                    store,
                    dir,
                    &layers,
                    (&config, &config_bytes),
                    &manifest_bytes,
                    desc,
                )
                .map_err(|e| OutputError::Io {
                    action: "writing cache",
                    path: dir.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?;
        }
    }
    Ok(manifest_digest)
}

/// An OCI layout in `dir` (empty, staged by the caller): blobs, index.json, oci-layout.
fn write_layout(
    store: &Store,
    dir: &Path,
    layers: &[Descriptor],
    (config, config_bytes): (&Descriptor, &[u8]),
    manifest_bytes: &[u8],
    manifest: Descriptor,
) -> Result<(), CacheError> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
    for desc in layers {
        let (from, to) = (store.blob_path(&desc.digest), blob_path(dir, &desc.digest));
        // A hard link when the layout is on the store's filesystem; blobs are read-only.
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io_err("copying", &from))?;
        }
    }
    let write = |path: PathBuf, bytes: &[u8]| -> Result<(), CacheError> {
        let mut f = std::fs::File::create(&path).map_err(io_err("writing", &path))?;
        f.write_all(bytes).map_err(io_err("writing", &path))
    };
    write(blob_path(dir, &config.digest), config_bytes)?;
    write(blob_path(dir, &manifest.digest), manifest_bytes)?;
    let index = Index {
        manifests: vec![manifest],
        ..Default::default()
    };
    write(dir.join("index.json"), &canonical_json(&index))?;
    write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
}
