//! `--push` and `rbuild push`: publish an image from the store with gzip layers.

use crate::image::annotations::non_empty;
use crate::image::{
    canonical_json, media, Annotations, Descriptor, Digest, Index, Manifest, Reference,
};
use crate::layer::Compression;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};

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
    let desc = push_image(store, registry, &record, dest, false, id, reporter, hints)?;
    reporter.done(id, started.elapsed());
    Ok(desc.digest)
}

/// Push the images of a multi-platform build (one per platform) and then an index of them
/// under `dest`'s tag: a Docker manifest list when every manifest is a Docker one, else an
/// OCI index, as BuildKit's image exporter. Returns the index digest.
pub fn push_index(
    store: &Store,
    registry: &Client,
    images: &[ImageRecord],
    annotations: &Annotations,
    dest: &Reference,
    id: StepId,
    reporter: &dyn Reporter,
) -> Result<Digest, BuildError> {
    let _lock = store.lock_shared()?;
    reporter.started(id, &format!("pushing {dest}"));
    let started = std::time::Instant::now();
    let mut manifests = Vec::with_capacity(images.len());
    for image in images {
        let hints = PushHints::default();
        let mut desc = push_image(store, registry, image, dest, true, id, reporter, &hints)?;
        let platform = image.config.platform();
        desc.annotations = non_empty(annotations.manifest_descriptor_for(&platform));
        desc.platform = Some(platform);
        manifests.push(desc);
    }
    let media_type = if manifests
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
/// alone (`by_digest`, an index's member). Returns the manifest's descriptor.
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
) -> Result<Descriptor, BuildError> {
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
        None => gzip_manifest(store, record, hints.inline_cache.as_deref())?,
    };
    let mut mount_sources = mount_sources(store, dest)?;
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
    Ok(Descriptor::new(&media_type, digest, bytes.len() as u64))
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
/// goes into the manifest's annotations (`--cache-to type=inline`).
fn gzip_manifest(
    store: &Store,
    record: &ImageRecord,
    inline_cache: Option<&str>,
) -> Result<(String, Manifest, Vec<u8>), BuildError> {
    let layers = record
        .chains
        .iter()
        .map(|chain| store.layer_blob(chain, Compression::Gzip))
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
