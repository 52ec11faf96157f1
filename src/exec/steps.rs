//! Executing a stage's steps: cache lookup first, then RUN in the sandbox, COPY/ADD and
//! WORKDIR as filesystem jobs over the stage's overlay, then snapshot and commit. Those
//! side effects go through [`Executor`] (executor.rs); the decisions stay here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::context::{self, IgnoreMatcher, StatCache};
use crate::dockerfile::instructions::{MountType, NetworkMode, Security};
use crate::fileop::{CopyJob, CopySrc};
use crate::image::{Digest, History, ImageConfig, Platform};
use crate::layer::Compression;
use crate::output::provenance::Materials;
use crate::plan::{
    self, CopyFrom, CopyOp, CopySource, MountFrom, Op, RunMount, RunOp, Sharing, Stage, Step,
};
use crate::sandbox::{self, FsSource, Mount, Network, Overlay, RunSpec};
use crate::store::{CacheRecord, ImageRecord, Store};

use super::base::Bases;
use super::error::OutputTail;
use super::executor::{Executor, Upper};
use super::remote_cache::RemoteCache;
use super::stage::StageState;
use super::{
    check_interrupted, BuildError, BuildRequest, NamedContext, Reporter, SecretSource, StepId,
};

/// BuildKit's history comment on every step it writes.
const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
/// How many of a failed RUN's last output lines its error repeats.
const FAILED_OUTPUT_LINES: usize = 10;

/// Why a `RUN --security=insecure` does not run: BuildKit's entitlement error, and what to do.
pub(super) const INSECURE_NOT_ALLOWED: &str = "security.insecure is not allowed: \
     RUN --security=insecure needs `--allow security.insecure` on the command line";

/// A `--ulimit` as the sandbox takes it (-1: unlimited).
fn rlimit(u: &plan::Ulimit) -> Result<sandbox::Rlimit, BuildError> {
    let resource = sandbox::RlimitResource::from_name(&u.name)
        .ok_or_else(|| BuildError::Invalid(format!("--ulimit: unknown type `{}`", u.name)))?;
    let limit = |v: i64| match v {
        -1 => Ok(u64::MAX),
        v => u64::try_from(v)
            .map_err(|_| BuildError::Invalid(format!("--ulimit {}: negative limit {v}", u.name))),
    };
    Ok(sandbox::Rlimit {
        resource,
        soft: limit(u.soft)?,
        hard: limit(u.hard)?,
    })
}

/// A step context: one per stage building at a time (see [`Ctx::fork`]).
pub struct Ctx<'a> {
    store: &'a Store,
    /// Where the steps' side effects happen (the sandbox; a recording fake in tests).
    executor: &'a dyn Executor,
    req: &'a BuildRequest,
    reporter: &'a dyn Reporter,
    bases: &'a Bases<'a>,
    /// `--cache-from`: asked for a key the store does not have.
    remote: &'a RemoteCache,
    /// Whether the last cached step came from `remote` (progress says so).
    remote_hit: bool,
    ignore: IgnoreMatcher,
    shared: Arc<Shared>,
    stat_cache_path: PathBuf,
    created: String,
    /// Whether progress labels carry the stage name: BuildKit leaves it out when the
    /// Dockerfile has a single stage and nothing else to build from.
    stage_names: bool,
    /// The platform of the stage being run: images it copies from are pulled for it.
    platform: Platform,
    pub cached: usize,
    pub executed: usize,
    /// Why steps missed the cache (issue 19).
    pub log: super::explain::Log,
    /// The git and URL sources the steps used, for the provenance attestation.
    pub materials: Materials,
}

/// What the contexts of stages building in parallel share.
struct Shared {
    /// Held while a context digest runs: contexts are hashed one at a time.
    stat_cache: Mutex<StatCache>,
    /// Step numbers (`#N`) are unique across the build (and the passes of a multi-platform
    /// build running with it).
    next_id: Arc<AtomicUsize>,
    /// Set when a stage failed: the others stop before their next step.
    cancelled: AtomicBool,
    /// Where the sandbox puts its per-step scratch directories (the build's tmp session).
    scratch_dir: PathBuf,
}

impl<'a> Ctx<'a> {
    pub fn new(
        store: &'a Store,
        executor: &'a dyn Executor,
        req: &'a BuildRequest,
        reporter: &'a dyn Reporter,
        bases: &'a Bases<'a>,
        stage_names: bool,
        scratch_dir: &std::path::Path,
    ) -> Result<Ctx<'a>, BuildError> {
        let ignore = IgnoreMatcher::load(&req.context, req.dockerfile_path.as_deref())?;
        let stat_cache_path = store.stat_cache_path();
        let stat_cache = StatCache::load(&stat_cache_path);
        let created = created_time(req.source_date_epoch);
        Ok(Ctx {
            store,
            executor,
            req,
            reporter,
            bases,
            remote: &super::remote_cache::NO_REMOTE,
            remote_hit: false,
            ignore,
            shared: Arc::new(Shared {
                stat_cache: Mutex::new(stat_cache),
                next_id: req
                    .step_counter
                    .clone()
                    .unwrap_or_else(|| Arc::new(AtomicUsize::new(req.first_step))),
                cancelled: AtomicBool::new(false),
                scratch_dir: scratch_dir.to_path_buf(),
            }),
            stat_cache_path,
            created,
            stage_names,
            platform: req.platform.clone(),
            cached: 0,
            executed: 0,
            log: Default::default(),
            materials: Materials::default(),
        })
    }

    /// Ask `remote` (`--cache-from`) for the keys the store does not have.
    pub fn with_remote(self, remote: &'a RemoteCache) -> Ctx<'a> {
        Ctx { remote, ..self }
    }

    /// A context for another stage building at the same time: it shares the step numbering,
    /// the stat cache and the cancellation flag; its counters start at zero (see
    /// [`Ctx::absorb`]).
    pub fn fork(&self) -> Ctx<'a> {
        Ctx {
            store: self.store,
            executor: self.executor,
            req: self.req,
            reporter: self.reporter,
            bases: self.bases,
            remote: self.remote,
            remote_hit: false,
            ignore: self.ignore.clone(),
            shared: self.shared.clone(),
            stat_cache_path: self.stat_cache_path.clone(),
            created: self.created.clone(),
            stage_names: self.stage_names,
            platform: self.platform.clone(),
            cached: 0,
            executed: 0,
            log: Default::default(),
            materials: Materials::default(),
        }
    }

    /// Add the counters of a forked context that finished.
    pub fn absorb(&mut self, other: Ctx<'a>) {
        self.cached += other.cached;
        self.executed += other.executed;
        self.log.absorb(other.log);
        self.materials.merge(other.materials);
    }

    /// Start the build over (a lazily fetched cache blob was refused): counters, reasons
    /// and cancellation reset; step numbers go on.
    pub fn restart(&mut self) {
        self.shared.cancelled.store(false, Ordering::SeqCst);
        self.cached = 0;
        self.executed = 0;
        self.log = Default::default();
    }

    /// Stop the other stages before their next step (a stage failed).
    pub fn cancel(&self) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
    }

    fn new_id(&mut self) -> StepId {
        self.shared.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// The number the next step would get.
    pub fn next_step(&self) -> StepId {
        self.shared.next_id.load(Ordering::SeqCst)
    }

    fn stat_cache(&self) -> std::sync::MutexGuard<'_, StatCache> {
        // A poisoned lock means a panic elsewhere, which ends the build anyway.
        self.shared
            .stat_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `[build 2/5] ` as BuildKit shows a stage's step: `n` of the stage's vertices.
    fn label(&self, stage: &Stage, n: usize, text: &str) -> String {
        let total = usize::from(matches!(stage.base, plan::Base::Image { .. }))
            + stage
                .steps
                .iter()
                .filter(|s| !matches!(s.op, Op::Config))
                .count();
        // BuildKit pads the index to the width of the total: `[ 2/10]`.
        let width = total.to_string().len();
        let platform = if self.req.platform_labels {
            format!("{} ", stage.platform.to_spec())
        } else {
            String::new()
        };
        if self.stage_names {
            format!(
                "[{platform}{} {n:>width$}/{total}] {text}",
                stage_label(stage)
            )
        } else {
            format!("[{platform}{n:>width$}/{total}] {text}")
        }
    }

    /// The state a stage starts from when its base is an image: its layers pulled if needed.
    pub fn base_image_state(
        &mut self,
        reference: &str,
        stage: &Stage,
    ) -> Result<StageState, BuildError> {
        let id = self.new_id();
        let label = self.label(stage, 1, &format!("FROM {reference}"));
        self.reporter.started(id, &label);
        let started = Instant::now();
        let record = self
            .bases
            .ensure(reference, &stage.platform, self.reporter, id)?;
        self.reporter.done(id, started.elapsed());
        Ok(StageState {
            chains: record.chains.clone(),
            diff_ids: record.config.rootfs.diff_ids.clone(),
            history: record.config.history.clone(),
            base_history: record.config.history.len(),
            key: super::base_key(Some(&record.manifest.digest)),
            layer_steps: Vec::new(),
            steps: Vec::new(),
        })
    }

    /// Run every step of `stage` from `state`; `done` holds the finished stages by index.
    pub fn run_stage(
        &mut self,
        stage: &Stage,
        mut state: StageState,
        done: &BTreeMap<usize, StageState>,
    ) -> Result<StageState, BuildError> {
        self.platform = stage.platform.clone();
        // The FROM of an image is the stage's first vertex; config-only steps are none.
        let mut n = usize::from(matches!(stage.base, plan::Base::Image { .. }));
        self.log.start_stage();
        for step in &stage.steps {
            check_interrupted()?;
            if self.shared.cancelled.load(Ordering::SeqCst) {
                return Err(BuildError::Cancelled);
            }
            let history = History {
                created: Some(self.created.clone()),
                created_by: Some(step.created_by.clone()),
                comment: Some(HISTORY_COMMENT.to_string()),
                empty_layer: false,
                ..Default::default()
            };
            if matches!(step.op, Op::Config) {
                self.config_step(stage, step, &mut state, history)?;
                self.log.step_done(step, None, &state.key);
                continue;
            }
            n += 1;
            let id = self.new_id();
            let label = self.label(stage, n, &step.text);
            self.reporter.started(id, &label);
            let started = Instant::now();
            let layers_before = state.chains.len();
            let result = self.step(stage, step, &mut state, done, history, id);
            if state.chains.len() > layers_before {
                state.layer_steps.resize(layers_before, None);
                state.layer_steps.push(Some((id, step.text.clone())));
            }
            match result {
                Ok(true) => {
                    self.log.cached(step, id);
                    if std::mem::take(&mut self.remote_hit) {
                        self.reporter.cached_remote(id)
                    } else {
                        self.reporter.cached(id)
                    }
                }
                Ok(false) => self.reporter.done(id, started.elapsed()),
                Err(e) => {
                    let e = self.at_step(step, e);
                    // The reporter has shown the step's output already: only the reason here.
                    let reason = e.cause().to_string();
                    self.reporter.failed(id, started.elapsed(), &reason);
                    return Err(e);
                }
            }
            self.log.step_done(step, Some(id), &state.key);
        }
        self.log.finish_stage(self.store, self.req, stage);
        Ok(state)
    }

    /// A step that only changes the config. It is cached too, so its history entry keeps
    /// the time it was first built and a fully cached rebuild gives the same image id, as
    /// under BuildKit.
    fn config_step(
        &mut self,
        stage: &Stage,
        step: &Step,
        state: &mut StageState,
        history: History,
    ) -> Result<(), BuildError> {
        let key = plan::cache_key(&state.key, &step.key, None);
        let _claim = self.store.claim_key(&key);
        let cached = if self.req.no_cache {
            None
        } else {
            self.cache_lookup(&key)
        };
        let history = match cached {
            Some(rec) => {
                self.log.config_cached();
                History {
                    created: rec.history.created,
                    ..history
                }
            }
            None => {
                let history = History {
                    empty_layer: true,
                    ..history
                };
                let record = CacheRecord {
                    chain: state.top().cloned(),
                    new_layer: false,
                    config: ImageConfig::default(),
                    history: history.clone(),
                    inputs: Some(self.explain_miss(stage, step, None, &state.key, &key, None)),
                };
                self.store.put_cache(&key, &record)?;
                history
            }
        };
        if step.history {
            state.history.push(History {
                empty_layer: true,
                ..history
            });
        }
        state.advance(key);
        Ok(())
    }

    /// The cached record of `key`: the store's, else the first `--cache-from` that has it
    /// (its layers fetched only when [`Ctx::lowers`] needs them).
    fn cache_lookup(&mut self, key: &str) -> Option<CacheRecord> {
        if let Some(rec) = self.store.get_cache(key) {
            return Some(rec);
        }
        let rec = self.remote.lookup(self.store, key)?;
        self.remote_hit = true;
        Some(rec)
    }

    /// The directories to stack for `state`'s layers, fetching first those known only from
    /// a cache (lazy import), with `id`'s progress.
    fn lowers(&self, state: &StageState, id: StepId) -> Result<Vec<PathBuf>, BuildError> {
        let registry = self.bases.registry();
        super::remote_cache::materialize(self.store, registry, &state.chains, self.reporter, id)?;
        state.lowers(self.store)
    }

    /// A failure caused by the step's input (a missing source, a bad URL or checksum, a
    /// secret not given) or a failed RUN, located at the step's Dockerfile line, as
    /// BuildKit does; other errors (the store, the sandbox's setup) are not the line's.
    fn at_step(&self, step: &Step, e: BuildError) -> BuildError {
        let cause = match e {
            BuildError::Invalid(_)
            | BuildError::Process { .. }
            | BuildError::Copy(_)
            | BuildError::Context(_)
            | BuildError::Registry(_)
            // The copier and WORKDIR run in the sandbox helper: their message is the user's.
            | BuildError::FileJob(_) => e,
            e => return e,
        };
        BuildError::at(&self.req.dockerfile_name, step.line, &step.text, cause)
    }

    /// Whether `step` runs whatever the cache holds: `--no-cache`, or `--no-cache-filter`
    /// naming its stage, which BuildKit applies to RUN, COPY and ADD (not WORKDIR).
    fn ignores_cache(&self, stage: &Stage, step: &Step) -> bool {
        if self.req.no_cache {
            return true;
        }
        let filtered = stage.name.as_deref().is_some_and(|name| {
            self.req
                .no_cache_stages
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
        });
        filtered && matches!(step.op, Op::Run(_) | Op::Copy(_))
    }

    /// The layer `key` made last time, if the store has its record but `step` runs whatever
    /// the cache holds. Only a file operation's is asked for: its copy makes that layer
    /// again (so its snapshot needs no sync, executor.rs), where a RUN's often differs.
    fn made_before(&self, stage: &Stage, step: &Step, key: &str) -> Option<Digest> {
        if !self.ignores_cache(stage, step) {
            return None;
        }
        let rec = self.store.get_cache(key)?;
        rec.chain.filter(|_| rec.new_layer)
    }

    /// One filesystem step; Ok(true) when it came from the cache.
    fn step(
        &mut self,
        stage: &Stage,
        step: &Step,
        state: &mut StageState,
        done: &BTreeMap<usize, StageState>,
        history: History,
        id: StepId,
    ) -> Result<bool, BuildError> {
        let phase = Instant::now();
        let prepared = self.prepare(step, done)?;
        self.reporter.phase(id, "prepare", phase.elapsed());
        let key = plan::cache_key(&state.key, &step.key, prepared.content.as_ref());
        // Another pass running the same step: wait for it, then take its record.
        let _claim = self.store.claim_key(&key);
        if !self.ignores_cache(stage, step) {
            if let Some(rec) = self.cache_lookup(&key) {
                let layer_ok = rec.chain.as_ref().is_none_or(|c| self.store.layer_known(c));
                if layer_ok {
                    apply_record(state, &rec, key);
                    self.cached += 1;
                    return Ok(true);
                }
            }
        }
        let inputs = self.explain_miss(stage, step, Some(id), &state.key, &key, Some(&prepared));
        if let Op::Copy(copy) = &step.op {
            // BuildKit links only without --chmod (convert_copy.go); with it, a plain copy.
            if copy.link && copy.chmod.is_none() {
                let cached = self.linked_copy(copy, stage, step, &prepared, done, state, id)?;
                self.finish_step(state, history, key, inputs)?;
                return Ok(cached);
            }
        }
        // Reading the layer records, and flattening the oldest of a deep stack when the
        // store has no snapshot for them yet (store/flat.rs).
        let phase = Instant::now();
        let lowers = self.lowers(state, id)?;
        self.reporter.phase(id, "lowers", phase.elapsed());
        let (_tmp, rootfs) = self.scratch_overlay(lowers)?;
        let upper = rootfs.upper.clone();
        let phase = Instant::now();
        let always_layer = match &step.op {
            Op::Run(run) => {
                crate::sandbox::binfmt::check(&self.platform).map_err(|e| {
                    BuildError::at(&self.req.dockerfile_name, step.line, &step.text, e.into())
                })?;
                self.run(run, rootfs, done, id)?;
                true
            }
            Op::Copy(copy) => {
                self.copy(copy, rootfs, &prepared, done, stage)?;
                true
            }
            Op::Workdir { path, user } => {
                self.executor
                    .workdir(&rootfs, path, user, &self.shared.scratch_dir)?;
                false
            }
            Op::Config => unreachable!("config-only steps are handled by the caller"),
        };
        self.executed += 1;
        self.reporter.phase(id, "execute", phase.elapsed());
        let phase = Instant::now();
        let changed = std::fs::read_dir(&upper)
            .map_err(BuildError::io("reading", &upper))?
            .next()
            .is_some();
        let mut history = history;
        if always_layer || changed {
            let expect = match &step.op {
                Op::Copy(_) | Op::Workdir { .. } => self.made_before(stage, step, &key),
                _ => None,
            };
            let upper = Upper {
                dir: upper,
                parent: state.top(),
                source_date_epoch: self.req.source_date_epoch,
                expect,
            };
            let (chain, diff_id) = self.executor.commit(self.store, upper)?;
            state.chains.push(chain);
            state.diff_ids.push(diff_id);
            self.reporter.phase(id, "snapshot+commit", phase.elapsed());
        } else {
            history.empty_layer = true;
        }
        self.finish_step(state, history, key, inputs)?;
        Ok(false)
    }

    /// `COPY --link`: the copy is made on an empty filesystem into a layer of its own, keyed
    /// without the stage below it ([`plan::link_key`]), then stacked on the stage's layers
    /// ([`Store::rebase_layer`]). A layer stored under that key (or in a `--cache-from`) is
    /// stacked without copying anything, whatever the base or the steps before: Ok(true),
    /// the step is cached.
    #[allow(clippy::too_many_arguments)]
    fn linked_copy(
        &mut self,
        copy: &CopyOp,
        stage: &Stage,
        step: &Step,
        prepared: &Prepared,
        done: &BTreeMap<usize, StageState>,
        state: &mut StageState,
        id: StepId,
    ) -> Result<bool, BuildError> {
        let link_key = plan::link_key(&step.key, prepared.content.as_ref());
        let stored = match self.ignores_cache(stage, step) {
            true => None,
            false => match self.cache_lookup(&link_key).and_then(|rec| rec.chain) {
                // A linked layer from a cache is rebased below: its files are needed.
                Some(chain) => {
                    let registry = self.bases.registry();
                    let chains = std::slice::from_ref(&chain);
                    super::remote_cache::materialize(
                        self.store,
                        registry,
                        chains,
                        self.reporter,
                        id,
                    )?;
                    self.store.layer(&chain)
                }
                None => None,
            },
        };
        let (layer, cached) = match stored {
            Some(layer) => (layer, true),
            None => {
                let phase = Instant::now();
                let (_tmp, rootfs) = self.scratch_overlay(Vec::new())?;
                let upper = rootfs.upper.clone();
                self.copy(copy, rootfs, prepared, done, stage)?;
                self.executed += 1;
                self.reporter.phase(id, "execute", phase.elapsed());
                let phase = Instant::now();
                let upper = Upper {
                    dir: upper,
                    parent: None,
                    source_date_epoch: self.req.source_date_epoch,
                    expect: self.made_before(stage, step, &link_key),
                };
                let (chain, diff_id) = self.executor.commit(self.store, upper)?;
                let record = CacheRecord {
                    chain: Some(chain.clone()),
                    new_layer: true,
                    config: ImageConfig {
                        rootfs: crate::image::RootFs {
                            diff_ids: vec![diff_id],
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                    history: History::default(),
                    inputs: None,
                };
                self.store.put_cache(&link_key, &record)?;
                let layer = self
                    .store
                    .try_layer(&chain)?
                    .ok_or(crate::store::StoreError::LayerMissing { chain })?;
                self.reporter.phase(id, "snapshot+commit", phase.elapsed());
                (layer, false)
            }
        };
        let rebased = self.store.rebase_layer(&layer, state.top())?;
        state.chains.push(rebased.chain_id);
        state.diff_ids.push(rebased.diff_id);
        // Exported with the steps, so a runner with another base finds the layer too.
        state.steps.push((String::new(), link_key));
        if cached {
            self.cached += 1;
        }
        Ok(cached)
    }

    /// A step's overlay on `lowers`: a new upper and work dir in a scratch directory of the
    /// store's, removed when the returned guard drops.
    fn scratch_overlay(
        &self,
        lowers: Vec<PathBuf>,
    ) -> Result<(tempfile::TempDir, Overlay), BuildError> {
        let tmp = self.store.tmp_dir()?;
        let upper = tmp.path().join("upper");
        let work = tmp.path().join("work");
        for dir in [&upper, &work] {
            std::fs::create_dir(dir).map_err(BuildError::io("creating", dir))?;
        }
        let rootfs = Overlay {
            lowers,
            upper,
            work,
        };
        Ok((tmp, rootfs))
    }

    /// The end of a step that made its layer (or none): its history entry and cache record.
    fn finish_step(
        &mut self,
        state: &mut StageState,
        history: History,
        key: String,
        inputs: crate::store::StepInputs,
    ) -> Result<(), BuildError> {
        state.history.push(history.clone());
        state.advance(key.clone());
        let new_layer = !history.empty_layer;
        let record = CacheRecord {
            chain: state.top().cloned(),
            new_layer,
            // This step's own layer, not the stage's lists: records the size of the steps
            // before them made an n-step build's records O(n²) (issue 23).
            config: ImageConfig {
                rootfs: crate::image::RootFs {
                    diff_ids: state
                        .diff_ids
                        .last()
                        .filter(|_| new_layer)
                        .cloned()
                        .into_iter()
                        .collect(),
                    ..Default::default()
                },
                ..Default::default()
            },
            history,
            inputs: Some(inputs),
        };
        self.store.put_cache(&key, &record)?;
        Ok(())
    }

    /// Say why `step` (`#id`; none for a config-only step) missed the cache (issue 19),
    /// remember it on its parent and keep its sources' listing: the inputs its record
    /// keeps for the next build's reasons.
    fn explain_miss(
        &mut self,
        stage: &Stage,
        step: &Step,
        id: Option<StepId>,
        parent: &str,
        key: &str,
        prepared: Option<&Prepared>,
    ) -> crate::store::StepInputs {
        use super::explain;
        let content = prepared.and_then(|p| p.content.as_ref());
        let inputs = explain::inputs(parent, stage, step, content.map(Digest::to_string));
        // The sources' listing: kept already for this content, else written from what the
        // key's walk spooled.
        let source = prepared.and_then(|p| p.listing.as_ref());
        let kept = (inputs.content.as_deref())
            .filter(|_| source.is_some())
            .and_then(|c| self.store.listing_path(c));
        let written = match (&kept, source) {
            (None, Some(s)) => s.write(self.store),
            _ => None,
        };
        let listing = kept.as_deref().or(written.as_ref().map(|f| f.path()));
        let reason = if self.req.no_cache {
            plan::explain::Reason::NoCache
        } else if self.ignores_cache(stage, step) {
            plan::explain::Reason::NoCacheFilter(stage_label(stage))
        } else {
            self.remote.seed_lineage(self.store, parent);
            let position = stage.steps.iter().position(|s| std::ptr::eq(s, step));
            let position = position.unwrap_or_default();
            let (store, req) = (self.store, self.req);
            self.log
                .reason(store, req, stage, position, key, &inputs, listing)
        };
        self.log
            .missed(self.req, self.reporter, stage, step, id, reason);
        // Hints for the next build: failing to keep them loses a reason, not a result.
        if let (Some(content), Some(listing)) = (&inputs.content, &written) {
            let _ = self.store.keep_listing(content, listing.path());
        }
        let _ = self.store.add_child(parent, key);
        inputs
    }

    fn run(
        &mut self,
        run: &RunOp,
        rootfs: Overlay,
        done: &BTreeMap<usize, StageState>,
        id: StepId,
    ) -> Result<(), BuildError> {
        // The entitlement was checked for the whole plan before anything ran
        // (check_entitlements); this is the last guard before a privileged step.
        let security = match run.security {
            Security::Sandbox => sandbox::SecurityMode::Sandbox,
            Security::Insecure if self.req.allow_insecure => sandbox::SecurityMode::Insecure,
            Security::Insecure => {
                return Err(BuildError::Invalid(INSECURE_NOT_ALLOWED.to_string()));
            }
        };
        let mut rlimits = Vec::new();
        for u in &run.ulimits {
            rlimits.push(rlimit(u)?);
        }
        let mut env = run.env.clone();
        env.extend(run.proxy_env.iter().cloned());
        let mut mounts = Vec::new();
        // Held until the step ends: cache locks and private cache dirs.
        let mut guards = Vec::new();
        for m in &run.mounts {
            mounts.extend(self.mount(m, done, &mut env, &mut guards)?);
        }
        let network = match run.network {
            NetworkMode::Default => Network::Isolated,
            NetworkMode::None => Network::None,
            NetworkMode::Host => Network::Host,
        };
        let spec = RunSpec {
            rootfs,
            argv: run.argv.clone(),
            env,
            cwd: run.workdir.clone(),
            user: run.user.clone(),
            hostname: run.hostname.clone(),
            network,
            mounts,
            files: run
                .files
                .iter()
                .map(|f| (f.path.clone(), f.content.clone().into_bytes(), f.mode))
                .collect(),
            pids_limit: self.req.pids_limit,
            security,
            extra_hosts: run
                .extra_hosts
                .iter()
                .map(|h| (h.host.clone(), h.ip.clone()))
                .collect(),
            rlimits,
        };
        let reporter = self.reporter;
        let mut tail = OutputTail::new(FAILED_OUTPUT_LINES);
        let exit = self
            .executor
            .run(&spec, &self.shared.scratch_dir, &mut |bytes| {
                tail.push(bytes);
                reporter.output(id, bytes)
            })?;
        check_interrupted()?;
        match exit.failure_message(&run.argv) {
            None => Ok(()),
            Some(message) => Err(BuildError::Process {
                message,
                output: tail.finish(),
            }),
        }
    }

    fn copy(
        &mut self,
        copy: &CopyOp,
        rootfs: Overlay,
        prepared: &Prepared,
        done: &BTreeMap<usize, StageState>,
        _stage: &Stage,
    ) -> Result<(), BuildError> {
        // Sources are copied in their order, as BuildKit chains them: a git repository's
        // tree between the sources before and after it.
        let mut sources = Vec::new();
        for (i, src) in copy.sources.iter().enumerate() {
            if let Some((_, git, resolved)) = prepared.git.iter().find(|(at, ..)| *at == i) {
                if !sources.is_empty() {
                    self.copy_sources(copy, &rootfs, std::mem::take(&mut sources), done)?;
                }
                self.add_git(copy, &rootfs, prepared, i, git, resolved)?;
                continue;
            }
            sources.push(match src {
                CopySource::Path(p) => CopySrc::Path(p.clone()),
                CopySource::Url(_) | CopySource::Heredoc { .. } => {
                    let (name, path, mode) = prepared.files[i]
                        .clone()
                        .expect("prepared with the sources");
                    CopySrc::File {
                        name,
                        host_path: path,
                        mode,
                        // BuildKit extracts a downloaded archive only when asked to.
                        unpack: matches!(src, CopySource::Url(_)) && copy.unpack == Some(true),
                    }
                }
            });
        }
        if sources.is_empty() && !prepared.git.is_empty() {
            return Ok(());
        }
        self.copy_sources(copy, &rootfs, sources, done)
    }

    /// Copies `sources` (context paths, downloaded and heredoc files) as `copy` says.
    fn copy_sources(
        &mut self,
        copy: &CopyOp,
        rootfs: &Overlay,
        sources: Vec<CopySrc>,
        done: &BTreeMap<usize, StageState>,
    ) -> Result<(), BuildError> {
        let job = CopyJob {
            sources,
            dest: copy.dest.clone(),
            workdir: copy.workdir.clone(),
            chown: copy.chown.clone(),
            chmod: copy.chmod.clone(),
            parents: copy.parents,
            excludes: copy.excludes.clone(),
            ignore: match copy.from {
                CopyFrom::Context => self.ignore.patterns(),
                _ => Vec::new(),
            },
            add: copy.add && copy.unpack != Some(false),
            preserve_owner: !matches!(copy.from, CopyFrom::Context | CopyFrom::BuildContext(_)),
        };
        let source = self.source_root(&copy.from, done)?;
        self.executor
            .copy(rootfs, &source, &job, &self.shared.scratch_dir)
    }

    /// `ADD <git url>`: clone the resolved commit and copy its tree (or `:subdir`) as the
    /// context is copied: entries owned by 0:0, symlinks copied as links and never followed
    /// out of the checkout, archives not extracted.
    fn add_git(
        &mut self,
        copy: &CopyOp,
        rootfs: &Overlay,
        prepared: &Prepared,
        at: usize,
        git: &super::git::GitUrl,
        resolved: &super::git::Resolved,
    ) -> Result<(), BuildError> {
        let tmp = prepared.tmp.as_ref().expect("prepared with the sources");
        let dir = tmp.path().join(format!("git-{at}"));
        {
            let (auth, _relay) = self.git_auth(git)?;
            let keep = git.keep_git_dir_with(copy.keep_git_dir)?;
            super::git::checkout(git, resolved, &dir, keep, &auth)?;
        }
        let job = CopyJob {
            sources: vec![CopySrc::Path(
                git.subdir.clone().unwrap_or_else(|| ".".to_string()),
            )],
            dest: copy.dest.clone(),
            workdir: copy.workdir.clone(),
            chown: copy.chown.clone(),
            chmod: copy.chmod.clone(),
            parents: false,
            excludes: copy.excludes.clone(),
            ignore: Vec::new(),
            add: false,
            preserve_owner: false,
        };
        self.executor
            .copy(rootfs, &FsSource::Dir(dir), &job, &self.shared.scratch_dir)
    }

    /// Where a COPY reads from: the context, a named context, or a stage's / image's rootfs.
    fn source_root(
        &mut self,
        from: &CopyFrom,
        done: &BTreeMap<usize, StageState>,
    ) -> Result<FsSource, BuildError> {
        Ok(match from {
            CopyFrom::Context => FsSource::Dir(self.req.context.clone()),
            CopyFrom::BuildContext(name) => match self.req.build_contexts.get(name) {
                Some(NamedContext::Dir(dir)) => FsSource::Dir(dir.clone()),
                Some(NamedContext::Image(_) | NamedContext::OciLayout { .. }) => {
                    self.image_source(name)?
                }
                None => {
                    return Err(BuildError::Invalid(format!(
                        "build context `{name}` was not given"
                    )))
                }
            },
            CopyFrom::Stage(i) => {
                let state = done
                    .get(i)
                    .expect("the plan builds a stage before its users");
                FsSource::Layers(self.lowers(state, 0)?)
            }
            CopyFrom::Image(r) => self.image_source(r)?,
        })
    }

    fn image_source(&mut self, reference: &str) -> Result<FsSource, BuildError> {
        let record = self
            .bases
            .ensure(reference, &self.platform, self.reporter, 0)?;
        let state = StageState {
            chains: record.chains.clone(),
            diff_ids: Vec::new(),
            history: Vec::new(),
            base_history: 0,
            key: String::new(),
            layer_steps: Vec::new(),
            steps: Vec::new(),
        };
        // A base known lazily is fetched here: the copy needs its files.
        Ok(FsSource::Layers(self.lowers(&state, 0)?))
    }

    fn mount(
        &mut self,
        m: &RunMount,
        done: &BTreeMap<usize, StageState>,
        env: &mut Vec<String>,
        guards: &mut Vec<MountGuard>,
    ) -> Result<Option<Mount>, BuildError> {
        let target = m.target.clone();
        let uid = m.uid.unwrap_or(0);
        let gid = m.gid.unwrap_or(0);
        Ok(Some(match m.kind {
            MountType::Bind => {
                let from = match &m.from {
                    None => FsSource::Dir(self.req.context.clone()),
                    Some(from) => self.source_root(&mount_from(from), done)?,
                };
                // The sandbox resolves `source` beneath `from` itself: joining it here would
                // let the kernel follow a link in the stage out to the host.
                Mount::Bind {
                    from,
                    source: m.source.clone().unwrap_or_else(|| "/".to_string()),
                    target,
                    readonly: m.readonly,
                }
            }
            MountType::Cache => {
                let id = m.id.clone().unwrap_or_else(|| m.target.clone());
                let name = cache_mount_name(&id, m.uid, m.gid, m.mode);
                // The sandbox creates the directory itself, with the mount's uid/gid/mode.
                let dir = self.store.cache_mount_dir(&name)?;
                let source = match m.sharing.unwrap_or(Sharing::Shared) {
                    Sharing::Shared => dir,
                    // One writer at a time: wait for the others.
                    Sharing::Locked => {
                        guards.push(MountGuard::Lock(self.store.lock_cache_mount(&name)?));
                        dir
                    }
                    // In use by another step: this one gets a fresh, throwaway directory.
                    Sharing::Private => match self.store.try_lock_cache_mount(&name)? {
                        Some(lock) => {
                            guards.push(MountGuard::Lock(lock));
                            dir
                        }
                        None => {
                            let tmp = self.store.tmp_dir()?;
                            let private = tmp.path().join("cache");
                            guards.push(MountGuard::Dir(tmp));
                            private
                        }
                    },
                };
                Mount::Cache {
                    source,
                    target,
                    uid,
                    gid,
                    mode: m.mode.unwrap_or(0o755),
                }
            }
            MountType::Tmpfs => Mount::Tmpfs {
                target,
                size: m.size,
            },
            MountType::Secret => {
                let id = m.id.clone().unwrap_or_default();
                // An `env=` source whose variable is unset is a secret not given, as with
                // buildx's provider (not an empty secret).
                let value = self.secret(&id)?;
                let Some(value) = value else {
                    if m.required {
                        // BuildKit's words first ("secret X: not found"), then ours.
                        let hint = match self.req.secrets.get(&id) {
                            Some(SecretSource::Env(var)) => {
                                format!("the mount requires it and `{var}` is not set")
                            }
                            _ => format!(
                                "the mount requires it; give it with --secret id={id},src=FILE"
                            ),
                        };
                        return Err(BuildError::Invalid(format!(
                            "secret {id}: not found ({hint})"
                        )));
                    }
                    return Ok(None);
                };
                if let Some(name) = &m.env {
                    env.push(format!("{name}={}", String::from_utf8_lossy(&value)));
                }
                // `env=` without `target=` exposes the secret only as a variable (BuildKit);
                // the plan leaves the target empty then.
                if target.is_empty() {
                    return Ok(None);
                }
                Mount::Secret {
                    data: sandbox::SecretBytes(value),
                    target,
                    uid,
                    gid,
                    mode: m.mode.unwrap_or(0o400),
                }
            }
            MountType::Ssh => {
                let id = m.id.clone().unwrap_or_else(|| "default".to_string());
                let Some(source) = self.req.ssh.get(&id) else {
                    if m.required {
                        // BuildKit's words, then what to do.
                        return Err(BuildError::Invalid(format!(
                            "no SSH key {id:?} forwarded from the client (the mount requires it; give it with --ssh {id}=SOCKET|KEYFILE, or --ssh default for $SSH_AUTH_SOCK)"
                        )));
                    }
                    // Optional and not given: no socket, as BuildKit.
                    return Ok(None);
                };
                let forward = super::ssh::Forward::start(
                    self.store.tmp_dir()?,
                    &id,
                    source,
                    uid,
                    gid,
                    m.mode.unwrap_or(0o600),
                )?;
                let mount = Mount::Ssh {
                    socket: forward.socket().to_path_buf(),
                    target,
                };
                guards.push(MountGuard::Ssh(forward));
                mount
            }
        }))
    }

    /// The value of `--secret id=ID`, None when not given (or an unset `env=`: buildx's
    /// provider treats it as not given, not as empty).
    fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, BuildError> {
        Ok(match self.req.secrets.get(id) {
            Some(SecretSource::File(path)) => {
                Some(std::fs::read(path).map_err(BuildError::io("reading secret", path))?)
            }
            Some(SecretSource::Env(var)) => {
                std::env::var_os(var).map(std::os::unix::ffi::OsStringExt::into_vec)
            }
            None => None,
        })
    }

    /// How git reaches `url`: for ssh URLs the `--ssh default` agent (relayed, so key files
    /// work too; the relay lives as long as the returned guard), for http(s) the secrets
    /// `GIT_AUTH_HEADER[.<host>]` / `GIT_AUTH_TOKEN[.<host>]` (BuildKit's names).
    fn git_auth(
        &self,
        url: &super::git::GitUrl,
    ) -> Result<(super::git::GitAuth, Option<super::ssh::Forward>), BuildError> {
        let mut auth = super::git::GitAuth::default();
        let mut guard = None;
        if url.is_ssh() {
            if let Some(source) = self.req.ssh.get("default") {
                let f = super::ssh::Forward::start(
                    self.store.tmp_dir()?,
                    "default",
                    source,
                    0,
                    0,
                    0o600,
                )?;
                auth.ssh_auth_sock = Some(f.socket().to_path_buf());
                guard = Some(f);
            }
        }
        if let Some(host) = url.http_host() {
            // BuildKit's order: GIT_AUTH_HEADER.<host>, GIT_AUTH_TOKEN.<host>, then both
            // without the host. A header secret is the Authorization value as given.
            for (name, token) in [
                (format!("GIT_AUTH_HEADER.{host}"), false),
                (format!("GIT_AUTH_TOKEN.{host}"), true),
                ("GIT_AUTH_HEADER".to_string(), false),
                ("GIT_AUTH_TOKEN".to_string(), true),
            ] {
                if let Some(value) = self.secret(&name)? {
                    auth.authorization = Some(if token {
                        super::git::GitAuth::token(&value)
                    } else {
                        value
                    });
                    break;
                }
            }
        }
        Ok((auth, guard))
    }

    /// What the cache key holds for the sources a COPY or bind mount reads from `from`: the
    /// content digest of `paths` in the context or a named directory context, the source
    /// stage's last key, or an image's manifest digest.
    fn source_digest(
        &mut self,
        from: &CopyFrom,
        paths: &[String],
        excludes: &[String],
        done: &BTreeMap<usize, StageState>,
        mut listing: Option<&mut Option<super::explain::ListingSource>>,
    ) -> Result<String, BuildError> {
        let mut digest_of =
            |ctx: &mut Self, root: &Path, ignore: &IgnoreMatcher| -> Result<String, BuildError> {
                let excludes = IgnoreMatcher::new(excludes)?;
                let mut spool = listing
                    .is_some()
                    .then(|| super::explain::ListingSource::new(ctx.store));
                let d = context::content_digest(
                    root,
                    paths,
                    ignore,
                    &excludes,
                    true,
                    &mut ctx.stat_cache(),
                    &mut |f| {
                        if let Some(s) = &mut spool {
                            s.push(&f);
                        }
                    },
                )?;
                if let Some(listing) = listing.as_deref_mut() {
                    *listing = spool;
                }
                Ok(d.to_string())
            };
        match from {
            CopyFrom::Context => {
                let (root, ignore) = (self.req.context.clone(), self.ignore.clone());
                digest_of(self, &root, &ignore)
            }
            CopyFrom::Stage(i) => Ok(done.get(i).map(|s| s.key.clone()).unwrap_or_default()),
            CopyFrom::Image(r) => Ok(self
                .bases
                .ensure(r, &self.platform, self.reporter, 0)?
                .manifest
                .digest
                .to_string()),
            CopyFrom::BuildContext(name) => match self.req.build_contexts.get(name) {
                Some(NamedContext::Dir(dir)) => {
                    digest_of(self, &dir.clone(), &IgnoreMatcher::default())
                }
                Some(NamedContext::Image(_) | NamedContext::OciLayout { .. }) => Ok(self
                    .bases
                    .ensure(name, &self.platform, self.reporter, 0)?
                    .manifest
                    .digest
                    .to_string()),
                None => Err(BuildError::Invalid(format!(
                    "build context `{name}` was not given (--build-context {name}=...)"
                ))),
            },
        }
    }

    /// Content digests and prepared files a step's cache key and execution need.
    fn prepare(
        &mut self,
        step: &Step,
        done: &BTreeMap<usize, StageState>,
    ) -> Result<Prepared, BuildError> {
        let mut prepared = Prepared::default();
        match &step.op {
            Op::Copy(copy) => {
                let mut parts: Vec<String> = Vec::new();
                let paths: Vec<String> = copy
                    .sources
                    .iter()
                    .filter_map(|s| match s {
                        CopySource::Path(p) => Some(p.clone()),
                        _ => None,
                    })
                    .collect();
                // Paths are only read from a context: URLs and heredocs are hashed below.
                if !(paths.is_empty() && copy.from == CopyFrom::Context) {
                    let (from, excludes) = (&copy.from, &copy.excludes);
                    let listing = Some(&mut prepared.listing);
                    parts.push(self.source_digest(from, &paths, excludes, done, listing)?);
                }
                let tmp = self.store.tmp_dir()?;
                for src in &copy.sources {
                    let file = match src {
                        CopySource::Path(_) => None,
                        CopySource::Heredoc { name, content, .. } => {
                            let path = tmp.path().join(format!("heredoc-{}", prepared.files.len()));
                            std::fs::write(&path, content)
                                .map_err(BuildError::io("writing", &path))?;
                            Some((name.clone(), path, 0o644))
                        }
                        CopySource::Url(url) if crate::plan::is_git_url(url) => {
                            // The key is the commit the ref names now (the URL's other
                            // options are in the instruction's words); the clone waits for
                            // a cache miss.
                            let git = super::git::GitUrl::parse(url)?;
                            let checksum = git.checksum_with(copy.checksum.as_deref())?;
                            git.keep_git_dir_with(copy.keep_git_dir)?;
                            let (auth, _relay) = self.git_auth(&git)?;
                            let resolved = super::git::resolve(&git, checksum.as_deref(), &auth)?;
                            parts.push(format!("git {}", resolved.commit));
                            self.materials.add_git(url, &resolved.commit);
                            prepared.git.push((prepared.files.len(), git, resolved));
                            None
                        }
                        CopySource::Url(url) => {
                            let path = tmp.path().join(format!("url-{}", prepared.files.len()));
                            let digest = super::fetch::download(
                                self.bases.registry(),
                                url,
                                &path,
                                copy.checksum.as_deref(),
                            )?;
                            parts.push(digest.to_string());
                            self.materials.add_http(url, &digest);
                            Some((super::fetch::file_name(url), path, 0o600))
                        }
                    };
                    prepared.files.push(file);
                }
                prepared.tmp = Some(tmp);
                prepared.content = Some(Digest::of(parts.join("\n").as_bytes()));
            }
            Op::Run(run) => {
                let mut parts = Vec::new();
                for m in run.mounts.iter().filter(|m| m.kind == MountType::Bind) {
                    let source = m.source.clone().unwrap_or_else(|| ".".to_string());
                    let from = m.from.as_ref().map_or(CopyFrom::Context, mount_from);
                    parts.push(self.source_digest(&from, &[source], &[], done, None)?);
                }
                if !parts.is_empty() {
                    prepared.content = Some(Digest::of(parts.join("\n").as_bytes()));
                }
            }
            _ => {}
        }
        Ok(prepared)
    }

    /// Write the target stage's config and manifest into the store.
    pub fn commit_image(
        &mut self,
        stage: &Stage,
        state: StageState,
    ) -> Result<ImageRecord, BuildError> {
        let _ = self.stat_cache().save(&self.stat_cache_path);
        let mut config = stage.config.clone();
        // The image is as old as its newest step: a cached rebuild keeps the image id.
        let newest = state
            .history
            .iter()
            .skip(state.base_history)
            .filter_map(|h| h.created.clone())
            .max();
        config.created = Some(newest.unwrap_or_else(|| self.created.clone()));
        config.architecture = stage.platform.architecture.clone();
        config.os = stage.platform.os.clone();
        config.variant = stage.platform.variant.clone();
        config.rootfs.diff_ids = state.diff_ids.clone();
        config.history = state.history.clone();
        if !self.req.labels.is_empty() {
            let labels = config.config.labels.get_or_insert_with(Default::default);
            labels.extend(self.req.labels.clone());
        }
        Ok(self.store.put_image(
            &config,
            &state.chains,
            Compression::Uncompressed,
            &self.req.manifest_annotations,
        )?)
    }
}

/// What [`Ctx::prepare`] made ready: the content digest for the key, and files for COPY.
#[derive(Default)]
struct Prepared {
    content: Option<Digest>,
    /// Where the files `content` covers are, for COPY/ADD from a directory (naming what
    /// changed).
    listing: Option<super::explain::ListingSource>,
    /// Per source: (name in the image, host path, mode) for URL and heredoc sources.
    files: Vec<Option<(String, PathBuf, u32)>>,
    /// `ADD <git url>` sources: their index, the repository and the commit its ref names.
    git: Vec<(usize, super::git::GitUrl, super::git::Resolved)>,
    tmp: Option<tempfile::TempDir>,
}

fn apply_record(state: &mut StageState, rec: &CacheRecord, key: String) {
    if rec.new_layer {
        if let Some(chain) = &rec.chain {
            state.chains.push(chain.clone());
            if let Some(d) = rec.config.rootfs.diff_ids.last() {
                state.diff_ids.push(d.clone());
            }
        }
    }
    let mut history = rec.history.clone();
    // The cached step's history keeps its own created time, as BuildKit's does.
    history.empty_layer = !rec.new_layer;
    state.history.push(history);
    state.advance(key);
}

/// What a RUN's mounts hold while the step runs.
enum MountGuard {
    /// `sharing=locked` / `private`: the cache directory's flock.
    Lock(#[allow(dead_code)] crate::store::FileLock),
    /// `sharing=private` while the cache is in use: a directory of this step's own.
    Dir(#[allow(dead_code)] tempfile::TempDir),
    /// `type=ssh`: the relay (and agent) serving the step's socket.
    Ssh(#[allow(dead_code)] super::ssh::Forward),
}

/// The directory name of a cache mount in the store. BuildKit keys a cache mount by its id,
/// plus the snapshot that sets its owner and mode when `uid`, `gid` or `mode` is given: a
/// second mount of the same id with other settings gets a cache of its own.
fn cache_mount_name(id: &str, uid: Option<u32>, gid: Option<u32>, mode: Option<u32>) -> String {
    let key = if uid.is_none() && gid.is_none() && mode.is_none() {
        id.to_string()
    } else {
        // The defaults of BuildKit's setCacheUIDGID: the same mkdir, the same cache.
        let (uid, gid, mode) = (uid.unwrap_or(0), gid.unwrap_or(0), mode.unwrap_or(0o755));
        format!("{id}\0{uid}:{gid}:{mode:o}")
    };
    Digest::of(key.as_bytes()).hex().to_string()
}

/// The stage part of a step label: its name, or `stage-N` for an unnamed stage.
fn stage_label(stage: &Stage) -> String {
    match &stage.name {
        Some(name) => name.clone(),
        None => format!("stage-{}", stage.index),
    }
}

/// RFC 3339 in UTC with second precision, as image configs carry it.
fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The `created` time of what this build makes: SOURCE_DATE_EPOCH when set, else now.
pub fn created_time(source_date_epoch: Option<crate::image::SourceDateEpoch>) -> String {
    match source_date_epoch {
        Some(epoch) => epoch.rfc3339(),
        None => rfc3339(std::time::SystemTime::now()),
    }
}

/// A RUN --mount `from=` as a COPY --from (the same three kinds of source).
fn mount_from(from: &MountFrom) -> CopyFrom {
    match from {
        MountFrom::Stage(i) => CopyFrom::Stage(*i),
        MountFrom::Image(r) => CopyFrom::Image(r.clone()),
        MountFrom::BuildContext(n) => CopyFrom::BuildContext(n.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::cache_mount_name;

    /// Regression (issue 14): cache mounts were shared by id alone, so a second mount of
    /// the id with another uid/gid/mode got the first one's owner and mode.
    #[test]
    fn cache_mounts_are_keyed_by_id_and_settings() {
        let plain = cache_mount_name("x", None, None, None);
        let owned = cache_mount_name("x", Some(1001), Some(1002), Some(0o751));
        assert_ne!(plain, owned);
        assert_ne!(
            owned,
            cache_mount_name("x", Some(1001), Some(1002), Some(0o755))
        );
        assert_ne!(plain, cache_mount_name("y", None, None, None));
        // Unset settings take BuildKit's defaults (0, 0, 0755) once any is given.
        assert_eq!(
            cache_mount_name("x", Some(1), None, None),
            cache_mount_name("x", Some(1), Some(0), Some(0o755))
        );
        assert_ne!(plain, cache_mount_name("x", Some(0), None, None));
    }
}
