//! `rbuild import ROOTFS.tar NAME:TAG`: a base image from a rootfs tarball, like
//! `docker import`, so an offline machine can start from busybox-static.

use std::collections::BTreeMap;
use std::path::Path;

use crate::image::{
    media, Descriptor, Digest, History, ImageConfig, Index, Manifest, Platform, Reference,
    SourceDateEpoch,
};
use crate::layer::{compress, Compression};
use crate::plan::{self, BaseResolver, BuildOptions, ResolvedBase};
use crate::store::{ImageRecord, Store};

use super::base::missing_layers;
use super::extract::extract_layer;
use super::{BuildError, Reporter};

struct NoBases;

impl BaseResolver for NoBases {
    fn resolve(&mut self, reference: &str, _platform: &Platform) -> Result<ResolvedBase, String> {
        Err(format!("`{reference}`: --change cannot name a base image"))
    }
}

/// Import `tarball` (any codec) as a one-layer image tagged `reference`; `changes` are
/// Dockerfile instructions (ENV, CMD, ...) applied to its config.
pub fn import_rootfs(
    store: &Store,
    tarball: &Path,
    reference: &Reference,
    changes: &[String],
    source_date_epoch: Option<SourceDateEpoch>,
    reporter: &dyn Reporter,
) -> Result<ImageRecord, BuildError> {
    let _lock = store.lock_shared()?;
    // The config first: a bad --change fails before any I/O.
    let dockerfile = format!("FROM scratch\n{}\n", changes.join("\n"));
    let opts = BuildOptions {
        dockerfile_name: "--change".to_string(),
        build_args: BTreeMap::new(),
        target: None,
        platform: Platform::host(),
        source_date_epoch,
        named_contexts: Default::default(),
        ..Default::default()
    };
    let plan = plan::plan(&dockerfile, &opts, &mut NoBases)?;
    let stage = &plan.stages[plan.target];
    if stage
        .steps
        .iter()
        .any(|s| !matches!(s.op, plan::Op::Config))
    {
        return Err(BuildError::Invalid("--change only takes instructions that change the config (ENV, CMD, ENTRYPOINT, WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL)".into()));
    }
    let file = std::fs::File::open(tarball).map_err(BuildError::io("opening", tarball))?;
    let mut plain = compress::decompressor(file).map_err(BuildError::io("reading", tarball))?;
    let (digest, size, ()) = store.write_blob(|w| std::io::copy(&mut plain, w).map(|_| ()))?;
    let desc = Descriptor::new(media::OCI_LAYER, digest.clone(), size);
    // Uncompressed: the blob digest is the diff_id.
    let what = format!("`{}`", tarball.display());
    extract_layer(store, &desc, &digest, None, &what, reporter)?;

    let created = super::steps::created_time(source_date_epoch);
    let mut config = stage.config.clone();
    let host = Platform::host();
    config.architecture = host.architecture;
    config.os = host.os;
    config.variant = host.variant;
    config.created = Some(created.clone());
    config.rootfs.diff_ids = vec![digest.clone()];
    config.history = vec![History {
        created: Some(created),
        created_by: Some(format!(
            "rbuild import {}",
            tarball.file_name().unwrap_or_default().to_string_lossy()
        )),
        comment: Some("Imported from tarball".to_string()),
        ..Default::default()
    }];
    let record = store.put_image(
        &config,
        &[digest],
        Compression::Uncompressed,
        &Default::default(),
    )?;
    store.tag(reference, &record.manifest)?;
    Ok(record)
}

/// `--build-context NAME=oci-layout://DIR[:TAG]`: copy the image of an OCI layout into the
/// store (every blob verified, layers extracted once) and return it. TAG selects the
/// manifest by its `org.opencontainers.image.ref.name`; without one the layout must hold a
/// single image. An index is resolved to `platform`.
pub fn import_oci_layout(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
    reporter: &dyn Reporter,
) -> Result<ImageRecord, BuildError> {
    let fail = |why: String| BuildError::Invalid(format!("OCI layout `{}`: {why}", dir.display()));
    let read_blob = |desc: &Descriptor| -> Result<Vec<u8>, BuildError> {
        let path = dir.join("blobs/sha256").join(desc.digest.hex());
        let bytes = std::fs::read(&path).map_err(BuildError::io("reading", &path))?;
        if Digest::of(&bytes) != desc.digest {
            return Err(fail(format!(
                "blob {} does not match its digest",
                desc.digest
            )));
        }
        Ok(bytes)
    };
    let index_path = dir.join("index.json");
    let index: Index = serde_json::from_slice(
        &std::fs::read(&index_path).map_err(BuildError::io("reading", &index_path))?,
    )
    .map_err(|e| fail(format!("index.json: {e}")))?;
    let ref_name = |d: &Descriptor| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get(media::REF_NAME_ANNOTATION))
            .cloned()
    };
    let mut desc = match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|d| {
                ref_name(d)
                    .is_some_and(|n| n == tag || n.rsplit_once(':').is_some_and(|(_, t)| t == tag))
            })
            .ok_or_else(|| fail(format!("no image tagged `{tag}`")))?
            .clone(),
        None if index.manifests.len() == 1 => index.manifests[0].clone(),
        None => {
            return Err(fail(format!(
                "holds {} images: name one with oci-layout://DIR:TAG",
                index.manifests.len()
            )))
        }
    };
    if desc.media_type == media::OCI_INDEX || desc.media_type == media::DOCKER_MANIFEST_LIST {
        let nested: Index =
            serde_json::from_slice(&read_blob(&desc)?).map_err(|e| fail(format!("index: {e}")))?;
        desc = crate::registry::platform::choose(&nested, platform)
            .map_err(|available| {
                fail(format!(
                    "no image for {} (available: {})",
                    platform.to_spec(),
                    available.join(", ")
                ))
            })?
            .clone();
    }
    let manifest_bytes = read_blob(&desc)?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| fail(format!("manifest: {e}")))?;
    let config_bytes = read_blob(&manifest.config)?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| fail(format!("config: {e}")))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(fail(
            "manifest and config disagree on the number of layers".to_string(),
        ));
    }
    for (layer, diff_id, parent) in missing_layers(store, &manifest.layers, &config.rootfs.diff_ids)
    {
        if !store.has_blob(&layer.digest) {
            let path = dir.join("blobs/sha256").join(layer.digest.hex());
            let file = std::fs::File::open(&path).map_err(BuildError::io("opening", &path))?;
            store.put_blob_verified(layer, file)?;
        }
        let what = format!("OCI layout `{}`", dir.display());
        extract_layer(store, layer, diff_id, parent.as_ref(), &what, reporter)?;
    }
    store.put_blob_bytes(&config_bytes)?;
    let digest = store.put_blob_bytes(&manifest_bytes)?;
    Ok(store.image_by_manifest(&digest)?)
}
