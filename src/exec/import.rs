//! `rbuild import ROOTFS.tar NAME:TAG`: a base image from a rootfs tarball, like
//! `docker import`, so an offline machine can start from busybox-static.

use std::collections::BTreeMap;
use std::path::Path;

use crate::image::{media, Descriptor, History, Platform, Reference};
use crate::layer::{compress, Compression};
use crate::plan::{self, BaseResolver, BuildOptions, ResolvedBase};
use crate::store::{ImageRecord, Store};

use super::base::extract_layer;
use super::BuildError;

struct NoBases;

impl BaseResolver for NoBases {
    fn resolve(&mut self, reference: &str) -> Result<ResolvedBase, String> {
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
    source_date_epoch: Option<i64>,
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
    extract_layer(store, &desc, &digest, None)?;

    let created = match source_date_epoch {
        Some(e) => super::steps::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.max(0) as u64),
        ),
        None => super::steps::rfc3339(std::time::SystemTime::now()),
    };
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
    let record = store.put_image(&config, &[digest], Compression::Uncompressed)?;
    store.tag(reference, &record.manifest)?;
    Ok(record)
}
