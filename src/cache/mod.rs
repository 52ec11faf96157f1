//! The shared build cache (design.md "Shared build cache"): `--cache-to` / `--cache-from`
//! specs, and the exported format with its two homes, a registry and an OCI layout on
//! disk. The executor only asks "is there a record for key K" of a chain of [`Source`]s
//! (exec/remote_cache.rs) and hands the records of a build to [`export`].
//!
//! The format: an OCI image manifest with `artifactType` [`ARTIFACT_TYPE`], whose config
//! (of the same media type) is a [`CacheConfig`], the list of exported records, and whose
//! layers are the ordinary layer blobs of those records, so a registry shares them with
//! the pushed images (HEAD before upload, cross-repository mounts).

mod remote;
mod spec;

pub use remote::{
    export, fetch_blob, inline_annotation, CacheConfig, CacheError, ExportedRecord, Source,
    ARTIFACT_TYPE, INLINE_ANNOTATION,
};
pub use spec::{
    parse_cache_from, parse_cache_to, CacheExport, CacheImport, CacheMode, ExportTarget,
};
