//! `--cache-from` and `--cache-to` for the executor (design.md "Shared build cache"). The
//! steps ask [`RemoteCache::lookup`] for a key the store does not have; the build's steps go
//! out through [`export`] once the image is committed. The format is crate::cache's.

use std::collections::{BTreeMap, HashMap};

use crate::cache::{
    self, CacheError, CacheExport, CacheImport, CacheMode, ExportTarget, ExportedRecord, Source,
};
use crate::image::{Descriptor, Digest, Reference};
use crate::layer::Compression;
use crate::registry::Client;
use crate::store::{chain_id, BlobSource, CacheRecord, RemoteLayer, Store, StoreError};

use super::extract::fetch_and_extract;
use super::stage::StageState;
use super::{BlobHome, BuildError, Reporter, StepId};

/// The `--cache-from` sources that could be read, in the order given.
#[derive(Default)]
pub struct RemoteCache {
    sources: Vec<Source>,
}

/// No `--cache-from`: what a step context asks until told otherwise.
pub static NO_REMOTE: RemoteCache = RemoteCache {
    sources: Vec::new(),
};

impl RemoteCache {
    /// Read each source's manifest and config (no layer bytes). A source that cannot be
    /// read (unreachable, missing, not an rbuild cache) is one warning; the build goes on
    /// without it, as BuildKit's does.
    pub fn load(registry: &Client, imports: &[CacheImport], reporter: &dyn Reporter) -> Self {
        let sources = imports
            .iter()
            .filter_map(|import| match Source::load(registry, import) {
                Ok(source) => Some(source),
                Err(e) => {
                    reporter.warn(&format!("importing cache: {e} (building without it)"));
                    None
                }
            })
            .collect();
        RemoteCache { sources }
    }

    /// Before a miss on `parent` is explained: the imported records of steps built on it,
    /// written into the store's cache records and lineage where it lacks them, so the
    /// reason names what differs from the step the exporting machine built (issue 19's
    /// records travel with the cache). Only hints: a store that cannot take them loses a
    /// reason, not a result; a record whose layers are not here is still a miss.
    pub fn seed_lineage(&self, store: &Store, parent: &str) {
        for source in &self.sources {
            for r in source.built_on(parent) {
                if store.cache_record(&r.key).is_none() {
                    let _ = store.put_cache(&r.key, &r.record);
                }
                let _ = store.add_child(parent, &r.key);
            }
        }
    }

    /// The registry caches read, with their layer blobs: mount sources for a push.
    pub fn registry_blobs(&self) -> Vec<BlobHome> {
        self.sources
            .iter()
            .filter_map(Source::registry_blobs)
            .collect()
    }

    /// The record of `key` from the first source that has it, kept in the store's cache.
    /// Nothing is fetched (lazy import): the layers of its chain the store lacks are
    /// recorded as remote layers ([`materialize`] fetches them when something needs their
    /// files). A record whose layers the source does not have, or whose blob was refused,
    /// is a miss.
    pub fn lookup(&self, store: &Store, key: &str) -> Option<CacheRecord> {
        let (source, found) = self
            .sources
            .iter()
            .find_map(|s| s.get(key).map(|r| (s, r)))?;
        let rec = found.record.clone();
        // A config step's record names its chain but lists no layers: the chain must be
        // known already (a step before it was a hit).
        if let Some(chain) = rec.chain.as_ref().filter(|c| !store.layer_known(c)) {
            let diff_ids = &rec.config.rootfs.diff_ids;
            let top = record_remote_layers(store, diff_ids, source.blob_source(), |_, d| {
                source.layer(d).cloned()
            });
            if top.as_ref() != Some(chain) {
                return None;
            }
        }
        // Kept locally too: the next build here, and an export of this one, find it. Only
        // a saving: a store that cannot take it fails the build at its next write anyway.
        let _ = store.put_cache(key, &rec);
        Some(rec)
    }
}

/// Record the layers of `diff_ids` the store lacks as fetchable from `source` (remote
/// layers, store/remote.rs), each with the blob `blob_of(index, diff_id)` names: the one
/// way a cache's layers and a base image's become known without their bytes. The chain id
/// of the top layer; None when a layer cannot be had (no blob, or its blob was refused).
pub(super) fn record_remote_layers(
    store: &Store,
    diff_ids: &[Digest],
    source: BlobSource,
    blob_of: impl Fn(usize, &Digest) -> Option<Descriptor>,
) -> Option<Digest> {
    let mut parent: Option<Digest> = None;
    for (i, diff_id) in diff_ids.iter().enumerate() {
        let c = chain_id(parent.as_ref(), diff_id);
        if store.layer(&c).is_none() && store.remote_layer(&c).is_none() {
            let blob = blob_of(i, diff_id).filter(|b| !store.blob_refused(&b.digest))?;
            let remote = RemoteLayer {
                chain_id: c.clone(),
                diff_id: diff_id.clone(),
                parent: parent.clone(),
                blob,
                source: source.clone(),
            };
            store.put_remote_layer(&remote).ok()?;
        }
        parent = Some(c);
    }
    parent
}

/// The diff_ids of the layers of `chain`, bottom first, from the store's records of its
/// layers (present or remote); `lists` keeps those found, so the steps of one export walk
/// each layer once.
fn chain_diff_ids(
    store: &Store,
    chain: &Digest,
    lists: &mut HashMap<Digest, Vec<Digest>>,
) -> Result<Vec<Digest>, BuildError> {
    let mut above = Vec::new();
    let mut at = Some(chain.clone());
    let mut below = Vec::new();
    while let Some(c) = at {
        if let Some(known) = lists.get(&c) {
            below = known.clone();
            break;
        }
        let (diff_id, parent) = match (store.layer(&c), store.remote_layer(&c)) {
            (Some(l), _) => (l.diff_id, l.parent),
            (None, Some(r)) => (r.diff_id, r.parent),
            (None, None) => return Err(StoreError::LayerMissing { chain: c }.into()),
        };
        above.push(diff_id);
        at = parent;
    }
    below.extend(above.into_iter().rev());
    lists.insert(chain.clone(), below.clone());
    Ok(below)
}

/// Whether `e` is [`materialize`] refusing a blob: the build can start again, the steps
/// that blob answered then miss.
pub fn refused(e: &BuildError) -> bool {
    matches!(e, BuildError::Cache(CacheError::DigestMismatch { .. }))
}

/// Make the layers `chains` (a stage's or an image's, bottom first) present in the store:
/// those known only as remote layers (a cache's, a base image's: store/remote.rs) are
/// fetched, checked against their digests and extracted, several at once, and recorded
/// bottom first (exec/extract.rs), with `id`'s progress. A cache blob that fails its digest
/// is refused and forgotten (the build starts again and rebuilds the step that made it),
/// and is the error; a base image's blob that fails it is a registry error (nothing can
/// build it again). Present layers cost a stat each.
pub fn materialize(
    store: &Store,
    registry: &Client,
    chains: &[Digest],
    reporter: &dyn Reporter,
    id: StepId,
) -> Result<(), BuildError> {
    // Top first: the chain below a stack's top lists every layer under it, so a stack's
    // missing layers are one batch (a lower chain not in it is a stack of its own).
    let mut missing: Vec<RemoteLayer> = Vec::new();
    for chain in chains.iter().rev() {
        if store.present_layer(chain).is_some() || missing.iter().any(|l| l.chain_id == *chain) {
            continue;
        }
        let below = store
            .missing_below(chain)
            .ok_or_else(|| StoreError::LayerMissing {
                chain: chain.clone(),
            })?;
        for layer in below {
            if !missing.iter().any(|l| l.chain_id == layer.chain_id) {
                missing.push(layer);
            }
        }
    }
    fetch_and_extract(store, registry, &missing, reporter, id)
}

/// The blob of the layer `chain` as a registry on `registry` (host) can get it without
/// its bytes passing through this machine: the layer is known only from a registry cache
/// there, whose blob is in `compression`. Its descriptor and the repository holding it
/// (a push HEADs it there or mounts it from there). None for a present layer. With no
/// `registry`, any registry will do (the descriptor of an inline cache: the push moves
/// the blob).
pub fn remote_blob(
    store: &Store,
    chain: &Digest,
    compression: Compression,
    registry: Option<&str>,
) -> Option<(Descriptor, Reference)> {
    if store.layer(chain).is_some() {
        return None;
    }
    let layer = store.remote_layer(chain)?;
    let home: Reference = layer.source.registry()?.parse().ok()?;
    let codec = Compression::from_media_type(&layer.blob.media_type);
    let here = registry.is_none_or(|r| r == home.registry);
    (here && codec == Some(compression)).then_some((layer.blob, home))
}

/// The steps a build exports, per `--cache-to` mode, each as (parent key, key): mode=min
/// the exported image's steps, mode=max every step of every stage built. A build of several
/// platforms gathers its passes' ([`CacheSteps::add`]) and exports them as one cache: the
/// platform is in the keys, so each platform finds its own records in it.
#[derive(Clone, Debug, Default)]
pub struct CacheSteps {
    min: Vec<(String, String)>,
    max: Vec<(String, String)>,
}

impl CacheSteps {
    /// `target` holds the exported image's steps, `built` every stage built.
    pub fn of(target: &StageState, built: &BTreeMap<usize, StageState>) -> CacheSteps {
        let mut steps = CacheSteps::default();
        steps.push(
            target.steps.iter(),
            built.values().chain([target]).flat_map(|s| &s.steps),
        );
        steps
    }

    /// Another pass's steps after these (steps both made are listed once).
    pub fn add(&mut self, other: CacheSteps) {
        self.push(other.min.iter(), other.max.iter());
    }

    fn push<'a>(
        &mut self,
        min: impl Iterator<Item = &'a (String, String)>,
        max: impl Iterator<Item = &'a (String, String)>,
    ) {
        for (list, new) in [
            (&mut self.min, min.collect::<Vec<_>>()),
            (&mut self.max, max.collect()),
        ] {
            for step in new {
                if !list.iter().any(|(_, key)| *key == step.1) {
                    list.push(step.clone());
                }
            }
        }
    }
}

/// Export `steps` to every `--cache-to`, as progress steps `id`, `id + 1`, ... A failed
/// export fails the build unless `ignore-error=true`.
pub fn export(
    store: &Store,
    registry: &Client,
    exports: &[CacheExport],
    steps: &CacheSteps,
    reporter: &dyn Reporter,
    mut id: StepId,
) -> Result<Exported, BuildError> {
    let mut written = Vec::new();
    let mut inline = None;
    for spec in exports {
        let steps: Vec<&(String, String)> = match spec.mode {
            CacheMode::Min => steps.min.iter().collect(),
            CacheMode::Max => steps.max.iter().collect(),
        };
        let label = match &spec.target {
            ExportTarget::Registry(r) => format!("exporting cache to {r}"),
            ExportTarget::Local(dir) => format!("exporting cache to {}", dir.display()),
            ExportTarget::Inline => {
                // The push writes it, with the image's gzip layers.
                let spec = CacheExport {
                    compression: crate::layer::Compression::Gzip,
                    ..spec.clone()
                };
                let (recs, _) = records(store, registry, &steps, &spec, reporter, id)?;
                inline = Some(cache::inline_annotation(recs));
                continue;
            }
        };
        reporter.started(id, &label);
        let started = std::time::Instant::now();
        let result = records(store, registry, &steps, spec, reporter, id).and_then(|recs| {
            let (recs, homes) = recs;
            let blobs: Vec<Digest> = recs
                .iter()
                .filter_map(|r| r.layer.as_ref().map(|l| l.digest.clone()))
                .collect();
            let digest = cache::export(store, registry, spec, recs, &homes)?;
            if let ExportTarget::Registry(r) = &spec.target {
                written.push((r.clone(), blobs));
            }
            Ok(digest)
        });
        match result {
            Ok(digest) => {
                reporter.status(id, &format!("cache manifest {digest}"));
                reporter.done(id, started.elapsed());
            }
            Err(e) if spec.ignore_error => {
                reporter.warn(&format!("{label}: {e} (ignore-error=true)"));
                reporter.done(id, started.elapsed());
            }
            Err(e) => {
                reporter.failed(id, started.elapsed(), &e.to_string());
                return Err(e);
            }
        }
        id += 1;
    }
    Ok(Exported {
        next_step: id,
        blob_homes: written,
        inline,
    })
}

/// What [`export`] did.
pub struct Exported {
    /// The step number after the exports.
    pub next_step: StepId,
    /// The registry caches written, with their layer blobs: mount sources for a push.
    pub blob_homes: Vec<BlobHome>,
    /// `--cache-to type=inline`: the annotation value for the pushed manifest.
    pub inline: Option<String>,
}

/// The exported form of `steps`, each with its layer's blob in `spec`'s compression, and
/// where the blobs of layers not fetched are ([`remote_blob`]). A layer whose blob cannot
/// go from there to `spec`'s target is fetched first.
fn records(
    store: &Store,
    registry: &Client,
    steps: &[&(String, String)],
    spec: &CacheExport,
    reporter: &dyn Reporter,
    id: StepId,
) -> Result<(Vec<ExportedRecord>, Vec<BlobHome>), BuildError> {
    let to = match &spec.target {
        ExportTarget::Registry(r) => Some(Some(r.registry.as_str())),
        ExportTarget::Inline => Some(None),
        ExportTarget::Local(_) => None,
    };
    let mut out = Vec::new();
    let mut homes: Vec<BlobHome> = Vec::new();
    let mut lists = HashMap::new();
    for (parent, key) in steps {
        let Some(mut record) = store.get_cache(key) else {
            continue;
        };
        let layer = match (&record.chain, record.new_layer) {
            (Some(chain), true) => {
                let remote = to.and_then(|to| remote_blob(store, chain, spec.compression, to));
                Some(match remote {
                    Some((desc, home)) => {
                        homes.push((home, vec![desc.digest.clone()]));
                        desc
                    }
                    None => {
                        materialize(store, registry, std::slice::from_ref(chain), reporter, id)?;
                        store.layer_blob(chain, spec.compression)?
                    }
                })
            }
            _ => None,
        };
        let diff_id = layer
            .as_ref()
            .and_then(|_| record.config.rootfs.diff_ids.last().cloned());
        // An importer records the chain's layers from the whole list (record_layers); the
        // store's record keeps its own layer's only.
        if let Some(chain) = &record.chain {
            record.config.rootfs.diff_ids = chain_diff_ids(store, chain, &mut lists)?;
        }
        out.push(ExportedRecord {
            key: key.clone(),
            parent: parent.clone(),
            layer,
            diff_id,
            record,
        });
    }
    Ok((out, homes))
}
