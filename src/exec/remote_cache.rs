//! `--cache-from` and `--cache-to` for the executor (design.md "Shared build cache"). The
//! steps ask [`RemoteCache::lookup`] for a key the store does not have; the build's steps go
//! out through [`export`] once the image is committed. The format is crate::cache's.

use std::collections::BTreeMap;

use crate::cache::{
    self, CacheExport, CacheImport, CacheMode, ExportTarget, ExportedRecord, Source,
};
use crate::image::Digest;
use crate::registry::Client;
use crate::store::{chain_id, CacheRecord, Store};

use super::base::extract_layer;
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

    /// The record of `key` from the first source that has it, kept in the store's cache;
    /// with `layers`, its layers are brought into the store first (fetched and extracted,
    /// the blobs checked against their digests). A layer that cannot be had is a warning
    /// and a miss: the step runs.
    pub fn lookup(
        &self,
        store: &Store,
        registry: &Client,
        key: &str,
        layers: bool,
        reporter: &dyn Reporter,
    ) -> Option<CacheRecord> {
        let (source, found) = self
            .sources
            .iter()
            .find_map(|s| s.get(key).map(|r| (s, r)))?;
        let rec = found.record.clone();
        if layers {
            match materialize(source, store, registry, &rec, reporter) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    reporter.warn(&format!(
                        "cache {}: {}: the step runs instead",
                        source.name(),
                        e
                    ));
                    return None;
                }
            }
        }
        // Kept locally too: the next build here, and an export of this one, find it. Only
        // a saving: a store that cannot take it fails the build at its next write anyway.
        let _ = store.put_cache(key, &rec);
        Some(rec)
    }
}

/// Bring the layers of `rec`'s chain the store lacks into it from `source`. Ok(false) when
/// the source does not have one of them.
fn materialize(
    source: &Source,
    store: &Store,
    registry: &Client,
    rec: &CacheRecord,
    reporter: &dyn Reporter,
) -> Result<bool, BuildError> {
    let Some(chain) = &rec.chain else {
        return Ok(true);
    };
    if store.layer(chain).is_some() {
        return Ok(true);
    }
    let mut parent = None;
    for diff_id in &rec.config.rootfs.diff_ids {
        let c = chain_id(parent.as_ref(), diff_id);
        if store.layer(&c).is_none() {
            let Some(desc) = source.layer(diff_id) else {
                return Ok(false);
            };
            if !store.has_blob(&desc.digest) {
                source.fetch_layer(registry, store, desc)?;
            }
            let name = format!("cache {}", source.name());
            extract_layer(store, desc, diff_id, parent.as_ref(), &name, reporter)?;
        }
        parent = Some(c);
    }
    Ok(parent.as_ref() == Some(chain))
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
                inline = Some(cache::inline_annotation(records(store, &steps, &spec)?));
                continue;
            }
        };
        reporter.started(id, &label);
        let started = std::time::Instant::now();
        let result = records(store, &steps, spec).and_then(|recs| {
            let blobs: Vec<Digest> = recs
                .iter()
                .filter_map(|r| r.layer.as_ref().map(|l| l.digest.clone()))
                .collect();
            let digest = cache::export(store, registry, spec, recs)?;
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

/// The exported form of `steps`, each with its layer's blob in `spec`'s compression.
fn records(
    store: &Store,
    steps: &[&(String, String)],
    spec: &CacheExport,
) -> Result<Vec<ExportedRecord>, BuildError> {
    let mut out = Vec::new();
    for (parent, key) in steps {
        let Some(record) = store.get_cache(key) else {
            continue;
        };
        let (layer, diff_id) = match (&record.chain, record.new_layer) {
            (Some(chain), true) => (
                Some(store.layer_blob(chain, spec.compression)?),
                record.config.rootfs.diff_ids.last().cloned(),
            ),
            _ => (None, None),
        };
        out.push(ExportedRecord {
            key: key.clone(),
            parent: parent.clone(),
            layer,
            diff_id,
            record,
        });
    }
    Ok(out)
}
