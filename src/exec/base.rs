//! Base images: resolving `FROM` references for the planner (store first, registry when the
//! store lacks the tag or `--pull`), and keeping them in the store: lazily for a build (their
//! layers are remote layers until something needs the files), whole for `rbuild pull`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::image::{Descriptor, Digest, Platform, Reference};
use crate::layer;
use crate::plan::{BaseResolver, ResolvedBase};
use crate::registry::{Client, ResolvedImage};
use crate::store::{chain_id, BlobSource, ImageRecord, RemoteLayer, Store, Stored};

use super::{BuildError, BuildRequest, NamedContext, Reporter, StepId};

/// A base image as far as the build knows it: already complete in the store, or resolved in
/// its registry with layers still to fetch.
#[derive(Clone)]
pub enum Known {
    Stored(Box<ImageRecord>),
    Remote(Box<ResolvedImage>),
}

pub struct Bases<'a> {
    store: &'a Store,
    registry: &'a Client,
    pull: bool,
    /// `--build-context NAME=docker-image://REF`: `FROM NAME` means REF.
    aliases: HashMap<String, String>,
    /// By platform (`os/arch[/variant]`) and reference.
    known: Mutex<HashMap<(String, String), Known>>,
    /// The platform a named context's image (preloaded) stands for: it serves every stage.
    preloaded: Mutex<HashMap<String, Known>>,
    /// The preloaded names the build looked up: its provenance materials.
    preloaded_used: Mutex<std::collections::BTreeSet<String>>,
    fetching: Mutex<()>,
}

impl<'a> Bases<'a> {
    pub fn new(store: &'a Store, registry: &'a Client, req: &BuildRequest) -> Bases<'a> {
        let aliases = req
            .build_contexts
            .iter()
            .filter_map(|(name, c)| match c {
                NamedContext::Image(r) => Some((name.clone(), r.clone())),
                _ => None,
            })
            .collect();
        Bases {
            store,
            registry,
            pull: req.pull,
            aliases,
            known: Mutex::new(HashMap::new()),
            preloaded: Mutex::new(HashMap::new()),
            preloaded_used: Mutex::new(Default::default()),
            fetching: Mutex::new(()),
        }
    }

    /// The registry client, whose HTTP stack `ADD <url>` shares.
    pub fn registry(&self) -> &'a Client {
        self.registry
    }

    /// Make `name` mean an image already in the store (an `oci-layout://` context).
    pub fn preload(&self, name: &str, record: ImageRecord) {
        self.preloaded
            .lock()
            .unwrap()
            .insert(name.to_string(), Known::Stored(Box::new(record)));
    }

    /// The images resolved so far (bases, `COPY --from` and mount images), as provenance
    /// materials: the reference as resolved, the platform, the manifest digest.
    /// Images of `oci-layout://` contexts count as local ones (a `pkg:oci` purl named after
    /// the context, as BuildKit names them after their layout).
    pub fn materials(&self) -> Vec<crate::output::provenance::ImageMaterial> {
        let known = self.known.lock().unwrap();
        let preloaded = self.preloaded.lock().unwrap();
        let used = self.preloaded_used.lock().unwrap();
        let remote = known.iter().map(|((_, r), k)| (r, k, false));
        let local = (preloaded.iter())
            .filter(|(name, _)| used.contains(*name))
            .map(|(name, k)| (name, k, true));
        let mut out: Vec<_> = remote
            .chain(local)
            .filter_map(|(reference, k, local)| {
                let reference: Reference = reference.parse().ok()?;
                let (digest, platform) = match k {
                    Known::Stored(r) => (r.manifest.digest.clone(), r.config.platform()),
                    Known::Remote(r) => (r.manifest_digest.clone(), r.config.platform()),
                };
                Some(crate::output::provenance::ImageMaterial {
                    reference,
                    platform,
                    digest,
                    local,
                })
            })
            .collect();
        out.sort_by_key(|m| (m.reference.to_string(), m.platform.to_spec()));
        out
    }

    fn lookup(&self, reference: &str, platform: &Platform) -> Result<Known, BuildError> {
        if let Some(k) = self.preloaded.lock().unwrap().get(reference) {
            self.preloaded_used
                .lock()
                .unwrap()
                .insert(reference.to_string());
            return Ok(k.clone());
        }
        let key = (platform.to_spec(), reference.to_string());
        if let Some(k) = self.known.lock().unwrap().get(&key) {
            return Ok(k.clone());
        }
        if let Some(target) = self.aliases.get(reference) {
            return self.lookup(target, platform);
        }
        let r: Reference = reference
            .parse()
            .map_err(|e| BuildError::Invalid(format!("{e}")))?;
        // A multi-platform image in the store serves the platform it has (variant-aware, as
        // a registry's index); a single image of another platform is no answer.
        let stored = match self.store.lookup(&r.to_string())? {
            Some(Stored::Image(record)) => Some(record).filter(|i| i.config.is_for(platform)),
            Some(Stored::Index(index)) => crate::registry::platform::choose(&index.body, platform)
                .ok()
                .and_then(|d| {
                    index
                        .images
                        .into_iter()
                        .find(|i| i.manifest.digest == d.digest)
                }),
            None => None,
        };
        let known = match (self.pull, stored) {
            (false, Some(record)) => Known::Stored(Box::new(record)),
            // A digest reference can't change: the store's copy is as good as the registry's.
            (true, Some(record)) if r.digest.is_some() => Known::Stored(Box::new(record)),
            _ => Known::Remote(Box::new(self.registry.resolve_for(&r, platform)?)),
        };
        self.known.lock().unwrap().insert(key, known.clone());
        Ok(known)
    }

    /// The base image in the store: its manifest and config, its layers present or known as
    /// remote layers ([`Layers::Lazy`]), fetched when something needs their files.
    pub fn ensure(
        &self,
        reference: &str,
        platform: &Platform,
        reporter: &dyn Reporter,
        id: StepId,
    ) -> Result<ImageRecord, BuildError> {
        if let Known::Stored(record) = self.lookup(reference, platform)? {
            return Ok(*record);
        }
        // One fetch at a time: two stages of a wave on the same base must not both download
        // and extract it. Whoever waited finds it stored.
        let _fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        match self.lookup(reference, platform)? {
            Known::Stored(record) => Ok(*record),
            Known::Remote(resolved) => {
                let (store, registry) = (self.store, self.registry);
                let record = keep(store, registry, &resolved, Layers::Lazy, reporter, id)?;
                self.known.lock().unwrap().insert(
                    (platform.to_spec(), reference.to_string()),
                    Known::Stored(Box::new(record.clone())),
                );
                Ok(record)
            }
        }
    }
}

impl BaseResolver for Bases<'_> {
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedBase, String> {
        match self
            .lookup(reference, platform)
            .map_err(|e| e.to_string())?
        {
            Known::Stored(record) => Ok(ResolvedBase {
                id: record.manifest.digest.clone(),
                config: record.config,
            }),
            Known::Remote(r) => Ok(ResolvedBase {
                id: r.manifest_digest.clone(),
                config: r.config.clone(),
            }),
        }
    }
}

/// What [`keep`] does with the layers of an image the store lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layers {
    /// Record them as remote layers of the image's repository (store/remote.rs), as a
    /// `--cache-from` hit records the cache's: no layer byte moves here. A build whose
    /// steps are all cached never fetches them, a push to the same registry mounts them, and
    /// [`materialize`](super::remote_cache::materialize) fetches, checks and extracts them
    /// when a step that runs, a `COPY --from` or an output needs them (BuildKit pulls
    /// lazily too). A layer of a media type the store cannot name is fetched at once.
    Lazy,
    /// Fetch and extract them now, so later builds find them offline (`rbuild pull`).
    Whole,
}

/// Keep `image` in the store: its layers as `layers` says, then its manifest and config,
/// then its tag (last: a tag never names an image the store cannot produce).
pub fn keep(
    store: &Store,
    registry: &Client,
    image: &ResolvedImage,
    layers: Layers,
    reporter: &dyn Reporter,
    id: StepId,
) -> Result<ImageRecord, BuildError> {
    check_layer_count(image)?;
    let recorded = layers == Layers::Lazy && record_lazily(store, image);
    if !recorded {
        fetch_missing(store, registry, image, reporter, id)?;
    }
    keep_image(store, image)
}

/// Fetch and extract every layer of `image` the store has not extracted, as a lazy base's
/// are when needed (exec/extract.rs: several at once, recorded bottom first).
fn fetch_missing(
    store: &Store,
    registry: &Client,
    image: &ResolvedImage,
    reporter: &dyn Reporter,
    id: StepId,
) -> Result<(), BuildError> {
    let diff_ids = &image.config.rootfs.diff_ids;
    let source = BlobSource::Registry(image.reference.to_string());
    let missing: Vec<RemoteLayer> = missing_layers(store, &image.manifest.layers, diff_ids)
        .into_iter()
        .map(|(desc, diff_id, parent)| RemoteLayer {
            chain_id: chain_id(parent.as_ref(), diff_id),
            diff_id: diff_id.clone(),
            parent,
            blob: desc.clone(),
            source: source.clone(),
        })
        .collect();
    super::extract::fetch_and_extract(store, registry, &missing, reporter, id)
}

/// Record the layers of `image` the store lacks as remote layers ([`Layers::Lazy`]);
/// false when one cannot be (an unknown media type, a refused blob): then they are fetched.
fn record_lazily(store: &Store, image: &ResolvedImage) -> bool {
    if image.manifest.layers.is_empty() {
        return true;
    }
    // The blob as the store lists it when the layer is present: the OCI media type of its
    // compression. A pushed manifest is then the same, digest for digest, however the base
    // was had.
    let blobs: Option<Vec<Descriptor>> = (image.manifest.layers.iter())
        .map(|d| {
            let codec = layer::Compression::from_media_type(&d.media_type)?;
            Some(Descriptor::new(
                codec.oci_media_type(),
                d.digest.clone(),
                d.size,
            ))
        })
        .collect();
    let Some(blobs) = blobs else {
        return false;
    };
    // The reference as given: messages name the image as the FROM did.
    let source = BlobSource::Registry(image.reference.to_string());
    let diff_ids = &image.config.rootfs.diff_ids;
    super::remote_cache::record_remote_layers(store, diff_ids, source, |i, _| blobs.get(i).cloned())
        .is_some()
}

/// Whether the manifest and the config of `image` agree on its layers.
fn check_layer_count(image: &ResolvedImage) -> Result<(), BuildError> {
    let diff_ids = &image.config.rootfs.diff_ids;
    if diff_ids.len() != image.manifest.layers.len() {
        return Err(BuildError::Invalid(format!(
            "image `{}`: manifest has {} layers but its config lists {} diff_ids",
            image.reference,
            image.manifest.layers.len(),
            diff_ids.len()
        )));
    }
    Ok(())
}

/// Store the manifest and config of `image`, whose layers are present or remote, and tag
/// it (last: a tag never names an image the store cannot produce).
fn keep_image(store: &Store, image: &ResolvedImage) -> Result<ImageRecord, BuildError> {
    store.put_blob_bytes(&image.config_bytes)?;
    let manifest_digest = store.put_blob_bytes(&image.manifest_bytes)?;
    let desc = Descriptor::new(
        &image.manifest_media_type,
        manifest_digest,
        image.manifest_bytes.len() as u64,
    );
    // The store keeps one image per tag, the host's: a foreign platform's base is kept by
    // digest (and resolved in its registry again by the next build, its layers stored).
    if image.config.is_for(&Platform::host()) {
        store.tag(&image.reference, &desc)?;
    }
    let record = store.resolve(&desc.digest.to_string())?;
    record.ok_or_else(|| {
        BuildError::Invalid(format!(
            "image `{}` vanished from the store",
            image.reference
        ))
    })
}

/// The layers of an image the store has not extracted yet, bottom first, each with its
/// parent's chain id.
pub fn missing_layers<'a>(
    store: &Store,
    layers: &'a [Descriptor],
    diff_ids: &'a [Digest],
) -> Vec<(&'a Descriptor, &'a Digest, Option<Digest>)> {
    let mut missing = Vec::new();
    let mut parent: Option<Digest> = None;
    for (desc, diff_id) in layers.iter().zip(diff_ids) {
        let chain = chain_id(parent.as_ref(), diff_id);
        if store.layer(&chain).is_none() {
            missing.push((desc, diff_id, parent.clone()));
        }
        parent = Some(chain);
    }
    missing
}

/// `rbuild pull REF`: resolve and fetch into the store.
pub fn pull(
    store: &Store,
    registry: &Client,
    reference: &Reference,
    reporter: &dyn Reporter,
) -> Result<ImageRecord, BuildError> {
    let _lock = store.lock_shared()?;
    reporter.started(1, &format!("pull {reference}"));
    let started = std::time::Instant::now();
    let resolved = registry.resolve(reference)?;
    let record = keep(store, registry, &resolved, Layers::Whole, reporter, 1)?;
    reporter.done(1, started.elapsed());
    Ok(record)
}
