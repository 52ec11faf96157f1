//! `--push` and `rbuild push`: publish an image from the store with gzip layers.

use std::collections::BTreeSet;

use crate::image::annotations::non_empty;
use crate::image::{
    canonical_json, media, Annotations, Descriptor, Digest, Index, Manifest, Reference,
};
use crate::layer::Compression;
use crate::output::provenance::IN_TOTO_MEDIA_TYPE;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};

use super::remote_cache::{materialize, remote_blob};
use super::{BlobHome, BuildError, Reporter, StepId};

/// Push the stored image `source` to `dest`, reported as step `id` (after a build, the
/// number after its last step); returns the pushed manifest digest.
pub fn push(
    store: &Store,
    registry: &Client,
    source: &str,
    dest: &Reference,
    id: StepId,
    reporter: &dyn Reporter,
    hints: &PushHints,
) -> Result<crate::image::Digest, BuildError> {
    let _lock = store.lock_shared()?;
    let record = store.resolve(source)?.ok_or_else(|| {
        BuildError::Invalid(format!("pushing `{source}`: no such image in the store"))
    })?;
    reporter.started(id, &format!("pushing {dest}"));
    let started = std::time::Instant::now();
    let (desc, _) = push_image(store, registry, &record, dest, false, id, reporter, hints)?;
    reporter.done(id, started.elapsed());
    Ok(desc.digest)
}

/// Push the images of a multi-platform build (one per platform), or of a build with
/// provenance, and then an index of them under `dest`'s tag: a Docker manifest list when
/// every manifest is a Docker one and there are no attestations, else an OCI index, as
/// BuildKit's image exporter. With `hints.provenance` (one per image, in their order) each
/// image's attestation manifest follows the images in the index. Returns the index digest.
#[allow(clippy::too_many_arguments)] // what to push where, its progress, and the hints
pub fn push_index(
    store: &Store,
    registry: &Client,
    images: &[ImageRecord],
    annotations: &Annotations,
    dest: &Reference,
    id: StepId,
    reporter: &dyn Reporter,
    hints: &PushHints,
) -> Result<Digest, BuildError> {
    let _lock = store.lock_shared()?;
    reporter.started(id, &format!("pushing {dest}"));
    let started = std::time::Instant::now();
    let mut manifests = Vec::with_capacity(images.len());
    let mut layers = Vec::with_capacity(images.len());
    for image in images {
        let (mut desc, image_layers) =
            push_image(store, registry, image, dest, true, id, reporter, hints)?;
        let platform = image.config.platform();
        desc.annotations = non_empty(annotations.manifest_descriptor_for(&platform));
        desc.platform = Some(platform);
        manifests.push(desc);
        layers.push(image_layers);
    }
    let mut attestations = Vec::new();
    for ((image, p), (desc, image_layers)) in images
        .iter()
        .zip(&hints.provenance)
        .zip(manifests.iter().zip(&layers))
    {
        let a = p.attestation(desc, image_layers, &image.config.platform(), &hints.tags);
        // Through the store, so the blob upload has a file to stream like any other.
        let blobs = [
            (IN_TOTO_MEDIA_TYPE, &a.statement),
            (media::OCI_CONFIG, &a.config),
        ];
        for (media_type, (digest, bytes)) in blobs {
            let stored = store.put_blob_bytes(bytes)?;
            debug_assert_eq!(&stored, digest);
            let blob = Descriptor::new(media_type, stored, bytes.len() as u64);
            reporter.status(id, &format!("pushing {}", blob.digest));
            registry.push_blob(dest, &blob, &store.blob_path(&blob.digest), None)?;
        }
        let mut target = dest.clone();
        target.tag = None;
        target.digest = Some(a.descriptor.digest.clone());
        registry.push_manifest(&target, media::OCI_MANIFEST, &a.manifest)?;
        attestations.push(a.descriptor);
    }
    let attested = !attestations.is_empty();
    manifests.extend(attestations);
    let media_type = if !attested
        && manifests
            .iter()
            .all(|d| d.media_type == media::DOCKER_MANIFEST)
    {
        media::DOCKER_MANIFEST_LIST
    } else {
        media::OCI_INDEX
    };
    let index = Index {
        schema_version: 2,
        media_type: Some(media_type.to_string()),
        manifests,
        // `index-descriptor` annotations have no descriptor to go on in a push.
        annotations: non_empty(annotations.index.clone()),
    };
    let digest = registry.push_manifest(dest, media_type, &canonical_json(&index))?;
    reporter.done(id, started.elapsed());
    Ok(digest)
}

/// Push one image's blobs and manifest to `dest`'s repository: under its tag, or by digest
/// alone (`by_digest`, an index's member). Returns the manifest's descriptor and its layers.
#[allow(clippy::too_many_arguments)] // what to push where, its progress, and the hints
fn push_image(
    store: &Store,
    registry: &Client,
    record: &ImageRecord,
    dest: &Reference,
    by_digest: bool,
    id: StepId,
    reporter: &dyn Reporter,
    hints: &PushHints,
) -> Result<(Descriptor, Vec<Descriptor>), BuildError> {
    // Layers known only as remote layers (a cache's, a base image's) go without their
    // bytes when the registry can have them so: from a repository of `dest`'s registry
    // (mounted, or there already), or because `dest`'s repository holds the blob already
    // (HEAD: a runner pushing an image on the base it pushed before, whatever registry the
    // base comes from). The others are fetched first (lazy import, remote_cache.rs).
    let mut lazy: Vec<BlobHome> = Vec::new();
    let mut unfetched: BTreeSet<Digest> = BTreeSet::new();
    for chain in &record.chains {
        if let Some((desc, home)) =
            remote_blob(store, chain, Compression::Gzip, Some(&dest.registry))
        {
            lazy.push((home, vec![desc.digest]));
        } else if let Some((desc, _)) = remote_blob(store, chain, Compression::Gzip, None)
            .filter(|(desc, _)| registry.blob_exists(dest, &desc.digest).unwrap_or(false))
        {
            let name = dest.name();
            reporter.status(id, &format!("{} is in {name} already", desc.digest));
        } else {
            materialize(store, registry, std::slice::from_ref(chain), reporter, id)?;
            continue;
        }
        unfetched.insert(chain.clone());
    }
    let as_stored = match hints.inline_cache {
        Some(_) => None,
        None => pushable_as_stored(store, record)?,
    };
    let (media_type, manifest, bytes) = match as_stored {
        Some(bytes) => (
            record.manifest.media_type.clone(),
            record.manifest_body.clone(),
            bytes,
        ),
        None => gzip_manifest(store, record, hints.inline_cache.as_deref(), &unfetched)?,
    };
    let mut mount_sources = mount_sources(store, dest)?;
    mount_sources.extend(lazy);
    mount_sources.extend(
        hints
            .blob_homes
            .iter()
            .filter(|(r, _)| r.registry == dest.registry && r.repository != dest.repository)
            .cloned(),
    );
    for desc in manifest
        .layers
        .iter()
        .chain(std::iter::once(&manifest.config))
    {
        // A blob another repository of the same registry has (a pulled base image's layer)
        // is mounted across instead of uploaded; the client falls back to an upload.
        let mount_from = mount_sources
            .iter()
            .find(|(_, digests)| digests.contains(&desc.digest))
            .map(|(r, _)| r);
        match mount_from {
            Some(from) => reporter.status(
                id,
                &format!("pushing {} (mount from {})", desc.digest, from.repository),
            ),
            None => reporter.status(id, &format!("pushing {}", desc.digest)),
        }
        registry.push_blob(dest, desc, &store.blob_path(&desc.digest), mount_from)?;
    }
    let target = if by_digest {
        let mut r = dest.clone();
        r.tag = None;
        r.digest = Some(Digest::of(&bytes));
        r
    } else {
        dest.clone()
    };
    let digest = registry.push_manifest(&target, &media_type, &bytes)?;
    let desc = Descriptor::new(&media_type, digest, bytes.len() as u64);
    Ok((desc, manifest.layers))
}

/// What a push learns from the build before it: where else its blobs are, and the inline
/// cache to carry.
#[derive(Debug, Default)]
pub struct PushHints {
    /// Registry repositories known to hold some of the image's blobs (the build's registry
    /// caches): mount sources besides the store's tagged images.
    pub blob_homes: Vec<BlobHome>,
    /// `--cache-to type=inline`: the cache config, for the manifest's annotation.
    pub inline_cache: Option<String>,
    /// `--provenance`: one per image, in their order (a push with these goes through
    /// [`push_index`]), and the names its subjects take.
    pub provenance: Vec<crate::output::provenance::Provenance>,
    pub tags: Vec<Reference>,
}

/// Stored images tagged in another repository of `dest`'s registry, with their blobs: the
/// candidates for cross-repository blob mounts.
fn mount_sources(store: &Store, dest: &Reference) -> Result<Vec<BlobHome>, BuildError> {
    Ok(store
        .images()?
        .into_iter()
        .filter(|(r, _)| r.registry == dest.registry && r.repository != dest.repository)
        .map(|(r, image)| {
            let blobs = image
                .manifest_body
                .layers
                .iter()
                .map(|d| d.digest.clone())
                .collect();
            (r, blobs)
        })
        .collect())
}

/// The stored manifest's bytes when it can go out unchanged: every layer gzip-compressed and
/// present. A pulled image then keeps its digest through `pull` + `push`.
fn pushable_as_stored(store: &Store, record: &ImageRecord) -> Result<Option<Vec<u8>>, BuildError> {
    let gzip = |d: &Descriptor| {
        matches!(
            d.media_type.as_str(),
            media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP
        )
    };
    let layers = &record.manifest_body.layers;
    if !layers.iter().all(|d| gzip(d) && store.has_blob(&d.digest))
        || !store.has_blob(&record.config_digest)
    {
        return Ok(None);
    }
    Ok(Some(store.read_blob(&record.manifest.digest)?))
}

/// An OCI manifest of the image with gzip layers (made where missing) and the stored config
/// blob itself: re-serializing the config would change a pulled image's id. `inline_cache`
/// goes into the manifest's annotations (`--cache-to type=inline`). A layer of `unfetched`
/// has the blob its remote record names ([`remote_blob`]).
fn gzip_manifest(
    store: &Store,
    record: &ImageRecord,
    inline_cache: Option<&str>,
    unfetched: &BTreeSet<Digest>,
) -> Result<(String, Manifest, Vec<u8>), BuildError> {
    let remote = |chain: &Digest| {
        unfetched
            .contains(chain)
            .then(|| remote_blob(store, chain, Compression::Gzip, None))
            .flatten()
    };
    let layers = record
        .chains
        .iter()
        .map(|chain| match remote(chain) {
            Some((desc, _)) => Ok(desc),
            None => store.layer_blob(chain, Compression::Gzip),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config_size = std::fs::metadata(store.blob_path(&record.config_digest))
        .map_err(BuildError::io(
            "reading",
            store.blob_path(&record.config_digest),
        ))?
        .len();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.to_string()),
        config: Descriptor::new(media::OCI_CONFIG, record.config_digest.clone(), config_size),
        layers,
        // `--annotation manifest:K=V`, kept in the stored manifest.
        annotations: record.manifest_body.annotations.clone(),
    };
    let mut manifest = manifest;
    if let Some(cache) = inline_cache {
        manifest
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                crate::cache::INLINE_ANNOTATION.to_string(),
                cache.to_string(),
            );
    }
    let bytes = canonical_json(&manifest);
    Ok((media::OCI_MANIFEST.to_string(), manifest, bytes))
}
