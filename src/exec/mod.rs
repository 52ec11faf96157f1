//! The executor: walks the plan, reuses cached steps, runs RUN in the sandbox and COPY/ADD
//! through the copier, snapshots each step's upperdir into a layer and commits the image.

mod base;
mod error;
mod executor;
mod explain;
mod extract;
#[cfg(test)]
mod fake;
mod fetch;
mod git;
mod import;
pub mod progress;
mod provenance;
mod push;
mod remote_cache;
mod request;
mod ssh;
mod stage;
mod steps;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub use error::BuildError;
pub use explain::StepCache;
pub use import::{import_oci_layout, import_rootfs};
pub use progress::{Reporter, Silent, StepId};
pub use push::{push, push_index, PushHints};
pub use remote_cache::{export as export_cache, CacheSteps, Exported};
pub use remote_cache::{materialize, refused as blob_refused};
pub use request::{BuildRequest, NamedContext, SecretSource, SshSource};

use crate::image::{canonical_json, Digest};
use crate::plan::{self, Base, Plan, Stage};
use crate::registry::Client;
use crate::store::{ImageRecord, Store};

use base::Bases;
pub use base::{pull, Bases as PlanResolver};
use stage::StageState;

/// Set by the SIGINT/SIGTERM handler (signal-hook needs an `Arc`).
static SIGNALLED: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Whether SIGINT or SIGTERM arrived; the build stops at the next chance and exits 130.
pub fn interrupted() -> bool {
    SIGNALLED
        .get()
        .is_some_and(|flag| flag.load(Ordering::SeqCst))
}

/// Turn SIGINT/SIGTERM into [`interrupted`] instead of dying mid-write, and kill the running
/// steps: a step runs in a session of its own, so a signal sent to rbuild alone (`kill -INT`,
/// a CI runner cancelling the job) never reaches it. The executor then stops and cleans up.
pub fn install_signal_handlers() {
    let flag = SIGNALLED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    std::thread::spawn(|| loop {
        if interrupted() {
            // Keep at it: a helper started just before the executor saw the flag must not
            // run its step to the end either.
            crate::sandbox::terminate_all();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    });
}

/// `RUN --network=host` in the Dockerfile needs `--allow network.host`, and
/// `RUN --security=insecure` needs `--allow security.insecure`, as in BuildKit: a
/// Dockerfile from a pull request must not choose the host's network or full privileges by
/// itself. Checked for
/// every step the target needs before anything runs, cached or not.
fn check_entitlements(plan: &Plan, req: &BuildRequest) -> Result<(), BuildError> {
    use crate::dockerfile::instructions::{NetworkMode, Security};
    let needed = plan.waves().into_iter().flatten();
    for stage in needed.filter_map(|i| plan.stage(i)) {
        for step in &stage.steps {
            let plan::Op::Run(run) = &step.op else {
                continue;
            };
            let refused = if run.network == NetworkMode::Host && !req.allow_network_host {
                "network.host is not allowed: RUN --network=host needs \
                 `--allow network.host` on the command line"
            } else if run.security == Security::Insecure && !req.allow_insecure {
                steps::INSECURE_NOT_ALLOWED
            } else {
                continue;
            };
            return Err(BuildError::at(
                &req.dockerfile_name,
                step.line,
                &step.text,
                BuildError::Invalid(refused.to_string()),
            ));
        }
    }
    Ok(())
}

/// A registry repository known to hold some blobs, with their digests: a push to another
/// repository of the same registry mounts them from it.
pub type BlobHome = (crate::image::Reference, Vec<Digest>);

/// What a finished build produced.
#[derive(Debug)]
pub struct BuildOutcome {
    pub image: ImageRecord,
    /// Steps answered from the cache / steps executed.
    pub cached: usize,
    pub executed: usize,
    /// The number after the build's last `#N`: what comes next (a push) continues from
    /// here, as BuildKit numbers its export vertices after the build's.
    pub next_step: StepId,
    /// What `--cache-to` exports of this build (a build of several platforms exports its
    /// passes' together, with [`export_cache`]).
    pub cache_steps: CacheSteps,
    /// Per layer of the image, bottom first: the step that made it (`#N` and its text), or
    /// none for a layer of the base image.
    pub layer_steps: Vec<Option<(StepId, String)>>,
    /// What a `--push` of the image should know.
    pub push: PushHints,
    /// Every RUN/COPY/ADD/WORKDIR step: cached, or why not (docs/explain.md).
    pub steps: Vec<StepCache>,
    /// What a provenance attestation of the image records (`--provenance`).
    pub provenance: crate::output::provenance::BuildFacts,
}

/// Build `req` into `store`: plan, execute the stages the target needs, commit the image and
/// tag it. Outputs (`-o`), push and load are the caller's next steps.
pub fn build(
    store: &Store,
    registry: &Client,
    req: &BuildRequest,
    reporter: &dyn Reporter,
) -> Result<BuildOutcome, BuildError> {
    build_with(store, registry, req, reporter, &executor::Sandboxed)
}

/// [`build`] with the steps' side effects going to `executor`.
fn build_with(
    store: &Store,
    registry: &Client,
    req: &BuildRequest,
    reporter: &dyn Reporter,
    executor: &dyn executor::Executor,
) -> Result<BuildOutcome, BuildError> {
    let _lock = store.lock_shared()?;
    let started = std::time::SystemTime::now();
    let scratch = store.tmp_dir()?;
    // Dropped before the lock: the records this build used are noted for prune's LRU.
    let _note = NoteUse(store);
    let mut bases = Bases::new(store, registry, req);
    for (name, context) in &req.build_contexts {
        if let NamedContext::OciLayout { dir, tag } = context {
            bases.preload(
                name,
                import_oci_layout(store, dir, tag.as_deref(), &req.platform, reporter)?,
            );
        }
    }
    let plan = plan::plan(&req.dockerfile_text, &req.plan_options(), &mut bases)?;
    for w in &plan.warnings {
        reporter.warn(w);
    }
    check_entitlements(&plan, req)?;
    let remote = remote_cache::RemoteCache::load(registry, &req.cache_from, reporter);

    // The sandbox's scratch directories live in the store's tmp session for the build, so a
    // killed build's leftovers are swept with it.
    let mut ctx = steps::Ctx::new(
        store,
        executor,
        req,
        reporter,
        &bases,
        stage_names(&plan),
        scratch.path(),
    )?
    .with_remote(&remote);
    let mut done = loop {
        match build_waves(&mut ctx, &plan) {
            // A cache blob fetched lazily failed its digest: the steps answered from it
            // are built again, the blob refused (BuildKit's import checks every blob too).
            Err(e) if remote_cache::refused(&e) => {
                reporter.warn(&format!("{e}: building again without it"));
                ctx.restart();
            }
            done => break done?,
        }
    };
    let target = &plan.stages[plan.target];
    let state = done
        .remove(&target.index)
        .expect("the target stage was built");
    let mut layer_steps = state.layer_steps.clone();
    layer_steps.resize(state.chains.len(), None);
    let target_state = state.clone();
    let image = ctx.commit_image(target, state)?;
    for tag in &req.tags {
        store.tag(tag, &image.manifest)?;
    }
    let cache_steps = remote_cache::CacheSteps::of(&target_state, &done);
    let exported = remote_cache::export(
        store,
        registry,
        &req.cache_to,
        &cache_steps,
        reporter,
        ctx.next_step(),
    )?;
    let mut blob_homes = exported.blob_homes;
    blob_homes.extend(remote.registry_blobs());
    let mut materials = crate::output::provenance::Materials::default();
    for image in bases.materials() {
        materials.add_image(image);
    }
    materials.merge(std::mem::take(&mut ctx.materials));
    let steps = std::mem::take(&mut ctx.log.steps);
    let provenance = provenance::facts(req, &plan, materials, &layer_steps, &steps, started);
    Ok(BuildOutcome {
        image,
        cached: ctx.cached,
        executed: ctx.executed,
        next_step: exported.next_step,
        cache_steps,
        layer_steps,
        push: PushHints {
            blob_homes,
            inline_cache: exported.inline,
            ..PushHints::default()
        },
        steps,
        provenance,
    })
}

/// Saves the cache records a build used when it ends, failed or not ([`Store::save_use`]).
struct NoteUse<'a>(&'a Store);

impl Drop for NoteUse<'_> {
    fn drop(&mut self) {
        // Best effort: a lost note only makes the records look older to prune.
        let _ = self.0.save_use();
    }
}

/// Build the plan's stages, wave by wave; the finished stages by index.
fn build_waves(
    ctx: &mut steps::Ctx,
    plan: &Plan,
) -> Result<BTreeMap<usize, StageState>, BuildError> {
    let mut done: BTreeMap<usize, StageState> = BTreeMap::new();
    for wave in plan.waves() {
        check_interrupted()?;
        let stages: Vec<&Stage> = wave
            .iter()
            .map(|i| plan.stage(*i).expect("waves hold planned stages"))
            .collect();
        let built = match stages[..] {
            [stage] => vec![(stage.index, build_stage(ctx, stage, &done)?)],
            _ => build_parallel(ctx, &stages, &done)?,
        };
        done.extend(built);
    }
    Ok(done)
}

/// Whether progress labels name the stage, as BuildKit's: not when the Dockerfile has a single
/// stage and it copies or mounts from no image or named context (BuildKit counts those as
/// stages too).
fn stage_names(plan: &Plan) -> bool {
    let external_copy = |op: &plan::Op| match op {
        plan::Op::Copy(c) => matches!(
            c.from,
            plan::CopyFrom::Image(_) | plan::CopyFrom::BuildContext(_)
        ),
        plan::Op::Run(r) => r.mounts.iter().any(|m| {
            matches!(
                m.from,
                Some(plan::MountFrom::Image(_) | plan::MountFrom::BuildContext(_))
            )
        }),
        _ => false,
    };
    plan.stages_in_file > 1
        || plan
            .stages
            .iter()
            .any(|s| s.steps.iter().any(|step| external_copy(&step.op)))
}

/// One stage from its base to its last step; `done` holds the finished stages by index.
fn build_stage(
    ctx: &mut steps::Ctx,
    stage: &Stage,
    done: &BTreeMap<usize, StageState>,
) -> Result<StageState, BuildError> {
    let state = match &stage.base {
        Base::Scratch => StageState::scratch(),
        Base::Image { reference, .. } => ctx.base_image_state(reference, stage)?,
        Base::Stage(i) => done
            .get(i)
            .cloned()
            .expect("waves build a stage's base before it"),
    };
    ctx.run_stage(stage, state, done)
}

/// Stages that don't depend on each other, each on a thread of its own with its own step
/// context. The sandbox ties a RUN's container to the thread that started it, so the
/// threads are scoped: they outlive every step they run. The first stage to fail cancels
/// the others (they stop before their next step) and its error is the build's.
fn build_parallel(
    ctx: &mut steps::Ctx,
    stages: &[&Stage],
    done: &BTreeMap<usize, StageState>,
) -> Result<Vec<(usize, StageState)>, BuildError> {
    let first_error: Mutex<Option<BuildError>> = Mutex::new(None);
    let finished = std::thread::scope(|scope| {
        let threads: Vec<_> = stages
            .iter()
            .map(|&stage| {
                let mut stage_ctx = ctx.fork();
                let first_error = &first_error;
                scope.spawn(move || {
                    let state = match build_stage(&mut stage_ctx, stage, done) {
                        Ok(state) => Some(state),
                        Err(e) => {
                            // Record before cancelling: a stage cancelled by this error
                            // then always finds it in place and its own is dropped.
                            first_error
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert(e);
                            stage_ctx.cancel();
                            None
                        }
                    };
                    (stage.index, state, stage_ctx)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Vec<_>>()
    });
    let mut built = Vec::new();
    for (index, state, stage_ctx) in finished {
        ctx.absorb(stage_ctx);
        built.extend(state.map(|s| (index, s)));
    }
    match first_error
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
    {
        Some(e) => Err(e),
        None => Ok(built),
    }
}

fn check_interrupted() -> Result<(), BuildError> {
    if interrupted() {
        Err(BuildError::Interrupted)
    } else {
        Ok(())
    }
}

/// The cache key of a stage's starting point: the base's resolved digest, or `scratch`.
fn base_key(digest: Option<&Digest>) -> String {
    match digest {
        Some(d) => d.hex().to_string(),
        None => Digest::of(b"scratch").hex().to_string(),
    }
}

/// `--metadata-file` contents, as docker buildx writes them (`image.name` lists the tags,
/// comma-separated, when there are any; `buildx.build.provenance`, the provenance predicate,
/// when `--provenance` asked for one), plus `rbuild.steps`: each step, cached or why not
/// (docs/explain.md).
/// A multi-platform build's keys name its index and have no config digest, as BuildKit's.
pub fn metadata_json(
    built: &crate::store::Stored,
    tags: &[crate::image::Reference],
    steps: &[StepCache],
    provenance: Option<serde_json::Value>,
) -> Vec<u8> {
    let mut v = serde_json::json!({
        "containerimage.digest": built.descriptor().digest.to_string(),
        "containerimage.descriptor": built.descriptor(),
        "rbuild.steps": steps,
    });
    if let crate::store::Stored::Image(image) = built {
        v["containerimage.config.digest"] = image.config_digest.to_string().into();
    }
    if !tags.is_empty() {
        let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        v["image.name"] = serde_json::Value::String(names.join(","));
    }
    if let Some(p) = provenance {
        v["buildx.build.provenance"] = p;
    }
    canonical_json(&v)
}
#[cfg(test)]
mod tests;
