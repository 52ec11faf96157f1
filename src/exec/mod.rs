//! The executor: walks the plan, reuses cached steps, runs RUN in the sandbox and COPY/ADD
//! through the copier, snapshots each step's upperdir into a layer and commits the image.

mod base;
mod error;
mod fetch;
mod import;
pub mod progress;
mod push;
mod request;
mod stage;
mod steps;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use error::BuildError;
pub use import::import_rootfs;
pub use progress::{Reporter, Silent, StepId};
pub use push::push;
pub use request::{BuildRequest, NamedContext, SecretSource};

use crate::image::{canonical_json, Digest};
use crate::plan::{self, Base};
use crate::registry::Client;
use crate::store::{ImageRecord, Store};

use base::Bases;
pub use base::{pull, Bases as PlanResolver};
use stage::StageState;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM arrived; the build stops at the next chance and exits 130.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Turn SIGINT/SIGTERM into [`interrupted`] instead of dying mid-write. A running step gets
/// the terminal's SIGINT itself and ends; the executor then stops and cleans up.
pub fn install_signal_handlers() {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    let flag = flag.clone();
    std::thread::spawn(move || loop {
        if flag.load(Ordering::SeqCst) {
            INTERRUPTED.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    });
}

/// What a finished build produced.
#[derive(Debug)]
pub struct BuildOutcome {
    pub image: ImageRecord,
    /// Steps answered from the cache / steps executed.
    pub cached: usize,
    pub executed: usize,
    pub warnings: Vec<String>,
}

/// Build `req` into `store`: plan, execute the stages the target needs, commit the image and
/// tag it. Outputs (`-o`), push and load are the caller's next steps.
pub fn build(
    store: &Store,
    registry: &Client,
    req: &BuildRequest,
    reporter: &dyn Reporter,
) -> Result<BuildOutcome, BuildError> {
    let _lock = store.lock_shared()?;
    let mut bases = Bases::new(store, registry, req);
    let plan = plan::plan(&req.dockerfile_text, &req.plan_options(), &mut bases)?;
    for w in &plan.warnings {
        reporter.warn(w);
    }

    let mut ctx = steps::Ctx::new(store, req, reporter, &bases)?;
    ctx.multi_stage = plan.stage_count > 1;
    let mut done: BTreeMap<usize, StageState> = BTreeMap::new();
    for stage in &plan.stages {
        check_interrupted()?;
        let state = match &stage.base {
            Base::Scratch => StageState::scratch(),
            Base::Image { reference, .. } => ctx.base_image_state(reference, stage)?,
            Base::Stage(i) => done
                .get(i)
                .cloned()
                .expect("the plan orders a stage's base before it"),
        };
        let state = ctx.run_stage(stage, state, &done)?;
        done.insert(stage.index, state);
    }
    let target = &plan.stages[plan.target];
    let state = done
        .remove(&target.index)
        .expect("the target stage was built");
    let image = ctx.commit_image(target, state)?;
    for tag in &req.tags {
        store.tag(tag, &image.manifest)?;
    }
    Ok(BuildOutcome {
        image,
        cached: ctx.cached,
        executed: ctx.executed,
        warnings: plan.warnings.clone(),
    })
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
/// comma-separated, when there are any).
pub fn metadata_json(image: &ImageRecord, tags: &[crate::image::Reference]) -> Vec<u8> {
    let mut v = serde_json::json!({
        "containerimage.config.digest": image.config_digest.to_string(),
        "containerimage.digest": image.manifest.digest.to_string(),
        "containerimage.descriptor": image.manifest,
    });
    if !tags.is_empty() {
        let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        v["image.name"] = serde_json::Value::String(names.join(","));
    }
    canonical_json(&v)
}
