//! `--platform a,b,c`: the list parsed, and a build of several platforms driven one pass
//! per platform, its images gathered into one index for the outputs and the push.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::exec::{self, BuildError, Reporter, StepId};
use crate::image::Platform;
use crate::output;
use crate::registry::Client;
use crate::store::{ImageRecord, IndexRecord, Store, Stored};

use super::settings::BuildSettings;
use super::UserError;

/// What the passes of a build made: one image per platform, in `--platform` order.
pub struct Built {
    pub images: Vec<ImageRecord>,
    pub cached: usize,
    pub executed: usize,
    pub next_step: StepId,
    /// The first image's (see [`exec::BuildOutcome::layer_steps`]).
    pub layer_steps: Vec<Option<(StepId, String)>>,
    /// Every pass's steps, cached or why not (`--metadata-file`), in pass order.
    pub steps: Vec<exec::StepCache>,
    /// For a push of a single image: its blobs' other homes and inline cache.
    pub push: exec::PushHints,
    /// Per image, what its provenance attestation records.
    pub provenance: Vec<crate::output::provenance::BuildFacts>,
    /// Of several platforms: their index, stored and tagged with the build's tags.
    pub index: Option<IndexRecord>,
}

impl Built {
    /// What the build made as the store holds it: its one image, or the index of several
    /// (what `--iidfile` and `--metadata-file` name, as buildx names the exported index).
    pub fn stored(&self) -> Stored {
        match &self.index {
            Some(index) => Stored::Index(index.clone()),
            None => Stored::Image(self.images[0].clone()),
        }
    }
}

/// Refuse what cannot take several platforms before anything is built: a docker archive
/// output, `--load` (docker 20.10 loads one platform) and an inline cache.
pub fn check(settings: &BuildSettings) -> anyhow::Result<()> {
    let names: Vec<String> = settings.platforms.iter().map(Platform::to_spec).collect();
    for spec in &settings.outputs {
        output::check_platform_count(spec, &names).map_err(|e| UserError(e.to_string()))?;
    }
    if settings.load && names.len() > 1 {
        return Err(UserError(format!(
            "--load: docker loads one platform, and this build makes several ({}): \
             use `-o type=oci,dest=FILE` or `--push`",
            names.join(", ")
        ))
        .into());
    }
    let inline = settings
        .request
        .cache_to
        .iter()
        .any(|c| matches!(c.target, crate::cache::ExportTarget::Inline));
    if inline && names.len() > 1 {
        // The inline cache rides in a single image's manifest; an index has several.
        return Err(UserError(format!(
            "--cache-to type=inline: this build makes several platforms ({}): \
             use --cache-to type=registry or type=local, which hold every platform's steps",
            names.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// One pass per platform, as many at a time as the machine has cores (or
/// `RBUILD_MAX_PARALLELISM`, as buildkitd's `max-parallelism`), their steps numbered from one
/// counter. Stages pinned to `$BUILDPLATFORM` have the same cache keys in every pass: one
/// pass runs each such step while the others wait for its record ([`Store::claim_key`]).
/// With several platforms the store keeps an index of their images and the tags name it
/// (store/indexes.rs). After a failed pass no other starts; the first failure in
/// `--platform` order is the build's.
pub fn build_each(
    store: &Store,
    registry: &Client,
    settings: &BuildSettings,
    report: &dyn Reporter,
) -> Result<Built, BuildError> {
    let mut req = settings.request.clone();
    let several = settings.platforms.len() > 1;
    if several {
        req.tags = Vec::new();
        // Exported once, after the last pass, with every pass's steps.
        req.cache_to = Vec::new();
    }
    let counter = Arc::new(AtomicUsize::new(req.first_step));
    req.step_counter = Some(counter.clone());
    let platforms = &settings.platforms;
    let results: Mutex<Vec<Option<Result<exec::BuildOutcome, BuildError>>>> =
        Mutex::new(platforms.iter().map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let pass = || loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= platforms.len() || failed.load(Ordering::SeqCst) {
            return;
        }
        let mut req = req.clone();
        req.platform = platforms[i].clone();
        req.manifest_annotations = settings.annotations.manifest_for(&platforms[i]);
        let outcome = exec::build(store, registry, &req, report);
        if outcome.is_err() {
            failed.store(true, Ordering::SeqCst);
        }
        results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(outcome);
    };
    match parallel_passes().min(platforms.len()) {
        1 => pass(),
        jobs => std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(pass);
            }
        }),
    }

    let mut cache_steps = exec::CacheSteps::default();
    let mut built = Built {
        images: Vec::new(),
        cached: 0,
        executed: 0,
        next_step: counter.load(Ordering::SeqCst),
        layer_steps: Vec::new(),
        steps: Vec::new(),
        push: exec::PushHints::default(),
        provenance: Vec::new(),
        index: None,
    };
    // Passes start in order, so every one before a failed one ran: the first error met
    // here is the first in `--platform` order.
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    for outcome in results.into_iter().flatten() {
        let outcome = outcome?;
        built.cached += outcome.cached;
        built.executed += outcome.executed;
        built.next_step = built.next_step.max(outcome.next_step);
        if built.images.is_empty() {
            built.layer_steps = outcome.layer_steps;
        }
        built.steps.extend(outcome.steps);
        built.push = outcome.push;
        built.provenance.push(outcome.provenance);
        built.images.push(outcome.image);
        cache_steps.add(outcome.cache_steps);
    }
    if several {
        let exported = exec::export_cache(
            store,
            registry,
            &settings.request.cache_to,
            &cache_steps,
            report,
            built.next_step,
        )?;
        built.next_step = exported.next_step;
        built.push.blob_homes.extend(exported.blob_homes);
        // Best effort, as at the end of each pass: a lost note makes records look older.
        let _ = store.save_use();
        let index = store.put_index(&built.images, &settings.annotations)?;
        for tag in &settings.request.tags {
            store.tag(tag, &index.index)?;
        }
        built.index = Some(index);
    }
    Ok(built)
}

/// How many platform passes run at once: `RBUILD_MAX_PARALLELISM` when set to a number
/// (buildkitd's `max-parallelism` setting), else the cores this process may use.
fn parallel_passes() -> usize {
    std::env::var("RBUILD_MAX_PARALLELISM")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `linux/amd64,linux/arm64`: each normalized, repeats refused (BuildKit dedups them, but a
/// repeat is always a typo for another platform).
pub fn parse_list(spec: &str) -> Result<Vec<Platform>, String> {
    let mut out: Vec<Platform> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = Platform::parse(part)?;
        if p.os != "linux" {
            return Err(format!(
                "platform `{part}`: rbuild builds linux images only (linux/amd64, linux/arm64, ...)"
            ));
        }
        if out.iter().any(|q| q.same_as(&p)) {
            return Err(format!("platform `{part}` is given twice"));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err("no platform given".into());
    }
    Ok(out)
}

/// The platforms `rbuild binfmt` reports on.
const LISTED: &[&str] = &[
    "linux/amd64",
    "linux/386",
    "linux/arm64",
    "linux/arm/v7",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
];

/// `rbuild binfmt [--install]`: register the missing handlers if asked, then list whether
/// each common platform runs here, and how.
pub fn binfmt(install: bool) -> anyhow::Result<()> {
    use crate::sandbox::binfmt;
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if install {
        let registered = binfmt::install().map_err(|e| UserError(e.to_string()))?;
        if registered.is_empty() {
            writeln!(out, "no handler was missing")?;
        } else {
            writeln!(out, "registered {}", registered.join(", "))?;
        }
    }
    for spec in LISTED {
        let p = Platform::parse(spec).expect("the listed platforms parse");
        let how = if binfmt::native(&p) {
            "native".to_string()
        } else {
            match binfmt::check(&p) {
                Ok(()) => "qemu-user (binfmt_misc)".to_string(),
                Err(e) => format!("cannot run: {e}"),
            }
        };
        writeln!(out, "{spec:<14} {how}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_normalized_and_checked() {
        let specs = |s: &str| -> Vec<String> {
            parse_list(s)
                .unwrap()
                .iter()
                .map(Platform::to_spec)
                .collect()
        };
        assert_eq!(
            specs("linux/amd64, linux/aarch64,linux/arm"),
            ["linux/amd64", "linux/arm64", "linux/arm/v7"]
        );
        assert_eq!(specs("linux/arm64/v8"), ["linux/arm64"]);
        assert!(parse_list("linux/arm64,linux/arm64/v8")
            .unwrap_err()
            .contains("twice"));
        assert!(parse_list("linux").unwrap_err().contains("OS/ARCH"));
        assert!(parse_list(",").unwrap_err().contains("no platform"));
        assert!(parse_list("plan9/mips")
            .unwrap_err()
            .contains("linux images only"));
    }
}
