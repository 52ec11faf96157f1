//! Layers: `snapshot` (overlay upperdir -> OCI tar), `apply` (tar -> overlay-format dir),
//! and `compress` (the blob codecs).

pub mod compress;

pub use compress::{Compression, Compressor};
