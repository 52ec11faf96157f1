//! The OCI / Docker image model: digests, image config, manifests and indexes.
//! Pure: no I/O. Every JSON blob rbuild writes goes through [`canonical_json`].

pub mod annotations;
pub mod config;
pub mod digest;
pub mod epoch;
pub mod manifest;
pub mod reference;

pub use annotations::Annotations;
pub use config::{ContainerConfig, HealthConfig, History, ImageConfig, RootFs};
pub use digest::{Digest, DigestError, Sha256Writer};
pub use epoch::{EpochError, SourceDateEpoch};
pub use manifest::{media, Descriptor, Index, Manifest, Platform};
pub use reference::{Reference, ReferenceError};

/// Serialize `value` as canonical JSON: object keys sorted, no insignificant whitespace.
/// serde_json's `Map` is a BTreeMap (no `preserve_order`), so going through `Value` sorts keys.
pub fn canonical_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("image types always serialize");
    serde_json::to_vec(&value).expect("a serde_json::Value always serializes")
}
