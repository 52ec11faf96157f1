//! Cache keys: sha256 over a canonical, versioned serialization (design.md, "Cache keys").

use serde::Serialize;

use super::KeyMaterial;
use crate::image::Digest;

/// Bump when the meaning of any field changes, so old cache records stop matching.
/// 2: RUN without USER gets root's groups, COPY --chmod creates parents with its mode,
/// sockets copy as empty files (issue 14): steps cached under 1 would differ.
const SCHEMA: u32 = 2;

#[derive(Serialize)]
struct Canonical<'a> {
    schema: u32,
    parent: &'a str,
    material: &'a KeyMaterial,
    content: Option<String>,
}

/// The cache key of a step: sha256 hex over `{schema, parent, material, content}` in
/// canonical JSON (sorted keys, no whitespace). `parent` is the previous step's key, or for
/// a stage's first step the base's key (manifest digest, `scratch`, or the base stage's last
/// key); `content` is the digest of the step's sources (COPY/ADD, bind mounts).
pub fn cache_key(parent: &str, key: &KeyMaterial, content: Option<&Digest>) -> String {
    let canonical = Canonical {
        schema: SCHEMA,
        parent,
        material: key,
        content: content.map(Digest::to_string),
    };
    Digest::of(&crate::image::canonical_json(&canonical))
        .hex()
        .to_string()
}

#[derive(Serialize)]
struct Linked<'a> {
    schema: u32,
    link: bool,
    created_by: &'a str,
    op: &'a super::Op,
    platform: &'a str,
    source_date_epoch: Option<crate::image::SourceDateEpoch>,
    images: &'a std::collections::BTreeMap<String, String>,
    content: Option<String>,
}

/// The key of a `COPY --link` layer, made on an empty filesystem: like [`cache_key`] but
/// with no parent and none of what the stage so far sets (shell, build args in scope), so a
/// new base image, or a changed step before it, finds the same layer (BuildKit's MergeOp).
/// The copy itself (sources, their content, the resolved destination, numeric `--chown`),
/// the platform and `SOURCE_DATE_EPOCH` are all that make the layer.
pub fn link_key(key: &KeyMaterial, content: Option<&Digest>) -> String {
    let linked = Linked {
        schema: SCHEMA,
        link: true,
        created_by: &key.created_by,
        op: &key.op,
        platform: &key.platform,
        source_date_epoch: key.source_date_epoch,
        images: &key.images,
        content: content.map(Digest::to_string),
    };
    Digest::of(&crate::image::canonical_json(&linked))
        .hex()
        .to_string()
}
