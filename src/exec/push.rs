//! `--push` and `rbuild push`: publish an image from the store with gzip layers.

use crate::image::Reference;
use crate::layer::Compression;
use crate::registry::Client;
use crate::store::Store;

use super::{BuildError, Reporter};

/// Push the stored image `source` to `dest`; returns the pushed manifest digest.
pub fn push(
    store: &Store,
    registry: &Client,
    source: &str,
    dest: &Reference,
    reporter: &dyn Reporter,
) -> Result<crate::image::Digest, BuildError> {
    let _lock = store.lock_shared()?;
    let record = store.resolve(source)?.ok_or_else(|| {
        BuildError::Invalid(format!("pushing `{source}`: no such image in the store"))
    })?;
    let id = 1_000_000;
    reporter.started(id, &format!("pushing {dest}"));
    let started = std::time::Instant::now();
    // Registries and docker expect compressed layers: a gzip manifest of the same image.
    let gz = store.put_image(&record.config, &record.chains, Compression::Gzip)?;
    for desc in gz
        .manifest_body
        .layers
        .iter()
        .chain(std::iter::once(&gz.manifest_body.config))
    {
        reporter.status(id, &format!("pushing {}", desc.digest));
        registry.push_blob(dest, desc, &store.blob_path(&desc.digest), None)?;
    }
    let bytes = store.read_blob(&gz.manifest.digest)?;
    let digest = registry.push_manifest(dest, &gz.manifest.media_type, &bytes)?;
    reporter.done(id, started.elapsed());
    Ok(digest)
}
