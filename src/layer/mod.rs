//! Layers: `snapshot` (overlay upperdir -> OCI tar), `apply` (tar -> overlay-format dir),
//! `compress` (the blob codecs), `tar` (the one tar encoder, also used by the outputs),
//! `flatten` (a deep stack of layer dirs -> one dir, for overlay's stack limit) and `stats`
//! (what a layer holds and what it costs).

use std::io;
use std::path::PathBuf;

use crate::image::Digest;

pub mod apply;
pub mod compress;
pub mod flatten;
pub(crate) mod order;
pub mod snapshot;
pub mod stats;
pub mod tar;

pub use apply::{apply, ApplyStats, VerifyingReader};
pub use compress::{Compression, Compressor};
pub use flatten::{flatten, FlattenStats};
pub use snapshot::{
    snapshot, snapshot_blob, snapshot_digest, LayerDigests, SnapshotOptions, TarDigest, TarStream,
};
pub use stats::{image_cost, ImageCost, LayerFiles, LayerStats};

/// Everything that can go wrong turning a directory into a layer or a layer into a directory.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum LayerError {
    /// A filesystem call on the source or destination tree failed.
    #[error("{op} `{}`: {source}", path.display())]
    Io {
        #[serde(with = "crate::sandbox::wire::static_str")]
        op: crate::sandbox::wire::StaticStr,
        path: PathBuf,
        #[source]
        #[serde(with = "crate::sandbox::wire::io_error")]
        source: io::Error,
    },
    /// The output stream (tar, compressor or blob file) refused a write.
    #[error("writing layer: {0}")]
    Write(
        #[source]
        #[serde(with = "crate::sandbox::wire::io_error")]
        io::Error,
    ),
    /// The layer stream is not a valid tar (or its compression is corrupt or truncated).
    #[error("reading layer: {0}")]
    Read(
        #[source]
        #[serde(with = "crate::sandbox::wire::io_error")]
        io::Error,
    ),
    /// The tar stream ends without its end-of-archive marker.
    #[error("reading layer: truncated tar (no end-of-archive marker)")]
    Truncated,
    /// A regular file's data is shorter than its header says.
    #[error("reading layer: entry `{}`: data truncated ({got} of {expected} bytes)", path.display())]
    ShortEntry {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    /// An entry that would write outside the layer root or through a symlink.
    #[error("layer entry `{}` is unsafe: {reason}", path.display())]
    UnsafePath {
        path: PathBuf,
        #[serde(with = "crate::sandbox::wire::static_str")]
        reason: crate::sandbox::wire::StaticStr,
    },
    /// A hard link that does not name an earlier entry of the same layer.
    #[error("layer entry `{}`: hard link to `{}` {reason}", path.display(), target.display())]
    BadHardlink {
        path: PathBuf,
        target: PathBuf,
        #[serde(with = "crate::sandbox::wire::static_str")]
        reason: crate::sandbox::wire::StaticStr,
    },
    /// An entry type rbuild does not unpack (GNU sparse, multi-volume, ...).
    #[error("layer entry `{}`: unsupported tar entry type `{}`", path.display(), char::from(*kind))]
    Unsupported { path: PathBuf, kind: u8 },
    /// A file changed size while it was being archived.
    #[error("`{}` changed while it was being archived", path.display())]
    Changed { path: PathBuf },
    /// The blob's bytes do not hash to the digest it was fetched or stored under.
    #[error("layer digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// A stored layer's directory no longer makes the tar it was built as.
    #[error(
        "the stored layer `{}` no longer matches its digest {expected} (it makes {actual}): it \
         was changed or damaged after it was built; remove the images that use it \
         (`rbuild rmi`), `rbuild prune` and build again",
        dir.display()
    )]
    DiffChanged {
        dir: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    /// Like `DiffChanged`, found by the size alone (the tar was not hashed again).
    #[error(
        "the stored layer `{}` no longer makes a tar of {expected} bytes (it makes {actual}): \
         it was changed after it was built; remove the images that use it (`rbuild rmi`), \
         `rbuild prune` and build again",
        dir.display()
    )]
    DiffResized {
        dir: PathBuf,
        expected: u64,
        actual: u64,
    },
}

impl LayerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> LayerError {
        LayerError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub(crate) use self::tar::keep_xattr;

/// Overlay marks a directory that hides everything below it with an xattr set to `y`:
/// `trusted.overlay.opaque` as root, `user.overlay.opaque` rootless (design.md "Rootless").
pub(crate) use crate::sandbox::userns::{is_opaque, opaque_xattr};
/// The tar name of an overlay whiteout is the deleted name with this prefix (OCI image spec
/// "Representing Changes").
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The tar entry that marks its directory opaque.
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

#[cfg(test)]
pub(crate) mod testutil;
