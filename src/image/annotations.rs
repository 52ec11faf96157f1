//! `--annotation TYPE[PLATFORM]:K=V` sorted by where BuildKit's image exporters put them.

use std::collections::BTreeMap;

use super::Platform;

type Map = BTreeMap<String, String>;

/// Annotations of a build by level. Per-platform maps are keyed by the platform's normalized
/// spec (`linux/arm64`), the empty key meaning every platform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    /// `manifest:K=V` (and a bare `K=V`): the image manifest's own.
    pub manifest: BTreeMap<String, Map>,
    /// `manifest-descriptor:K=V`: the descriptors pointing at a manifest (an index's entry,
    /// an OCI layout's index.json entry of a single image).
    pub manifest_descriptor: BTreeMap<String, Map>,
    /// `index:K=V`: the index of a multi-platform image.
    pub index: Map,
    /// `index-descriptor:K=V`: the descriptor pointing at that index (an OCI layout's
    /// index.json; a push has no such descriptor).
    pub index_descriptor: Map,
}

impl Annotations {
    /// The manifest annotations of `platform`'s image: those for every platform, then its own.
    pub fn manifest_for(&self, platform: &Platform) -> Map {
        for_platform(&self.manifest, platform)
    }

    /// The annotations of a descriptor pointing at `platform`'s manifest.
    pub fn manifest_descriptor_for(&self, platform: &Platform) -> Map {
        for_platform(&self.manifest_descriptor, platform)
    }
}

fn for_platform(by_platform: &BTreeMap<String, Map>, platform: &Platform) -> Map {
    let mut out = by_platform.get("").cloned().unwrap_or_default();
    if let Some(own) = by_platform.get(&platform.to_spec()) {
        out.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// `Some(map)` unless it is empty: the `annotations` field as OCI JSON leaves it out.
pub fn non_empty(map: Map) -> Option<Map> {
    (!map.is_empty()).then_some(map)
}
