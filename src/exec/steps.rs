//! Executing a stage's steps: cache lookup first, then RUN in the sandbox, COPY/ADD and
//! WORKDIR as filesystem jobs over the stage's overlay, then snapshot and commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::context::copier::{CopyJob, CopySrc};
use crate::context::{self, IgnoreMatcher, StatCache};
use crate::dockerfile::instructions::{MountType, NetworkMode, Security};
use crate::image::{media, Descriptor, Digest, History, ImageConfig};
use crate::layer::{self, Compression, SnapshotOptions};
use crate::plan::{
    self, CopyFrom, CopyOp, CopySource, MountFrom, Op, RunMount, RunOp, Stage, Step,
};
use crate::sandbox::{self, FsSource, Mount, Network, Overlay, RunSpec};
use crate::store::{CacheRecord, ImageRecord, Store};

use super::base::Bases;
use super::stage::StageState;
use super::{
    check_interrupted, BuildError, BuildRequest, NamedContext, Reporter, SecretSource, StepId,
};

/// BuildKit's history comment on every step it writes.
const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
/// The hostname RUN steps see, as under BuildKit.
const HOSTNAME: &str = "buildkitsandbox";

pub struct Ctx<'a> {
    store: &'a Store,
    req: &'a BuildRequest,
    reporter: &'a dyn Reporter,
    bases: &'a Bases<'a>,
    ignore: IgnoreMatcher,
    stat_cache: StatCache,
    stat_cache_path: PathBuf,
    created: String,
    secrets_dir: Option<tempfile::TempDir>,
    next_id: StepId,
    pub cached: usize,
    pub executed: usize,
}

impl<'a> Ctx<'a> {
    pub fn new(
        store: &'a Store,
        req: &'a BuildRequest,
        reporter: &'a dyn Reporter,
        bases: &'a Bases<'a>,
    ) -> Result<Ctx<'a>, BuildError> {
        let ignore = IgnoreMatcher::load(&req.context, req.dockerfile_path.as_deref())?;
        let stat_cache_path = store.root().join("statcache.json");
        let stat_cache = StatCache::load(&stat_cache_path);
        let created = match req.source_date_epoch {
            Some(epoch) => {
                rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(epoch.max(0) as u64))
            }
            None => rfc3339(std::time::SystemTime::now()),
        };
        Ok(Ctx {
            store,
            req,
            reporter,
            bases,
            ignore,
            stat_cache,
            stat_cache_path,
            created,
            secrets_dir: None,
            next_id: 1,
            cached: 0,
            executed: 0,
        })
    }

    fn new_id(&mut self) -> StepId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The state a stage starts from when its base is an image: its layers pulled if needed.
    pub fn base_image_state(
        &mut self,
        reference: &str,
        stage: &Stage,
    ) -> Result<StageState, BuildError> {
        let id = self.new_id();
        let label = format!(
            "[{} 1/{}] FROM {reference}",
            stage_label(stage),
            stage.steps.len() + 1
        );
        self.reporter.started(id, &label);
        let started = Instant::now();
        let record = self.bases.ensure(reference, self.reporter, id)?;
        self.reporter.done(id, started.elapsed());
        Ok(StageState {
            chains: record.chains.clone(),
            diff_ids: record.config.rootfs.diff_ids.clone(),
            history: record.config.history.clone(),
            key: super::base_key(Some(&record.manifest.digest)),
        })
    }

    /// Run every step of `stage` from `state`; `done` holds the finished stages by index.
    pub fn run_stage(
        &mut self,
        stage: &Stage,
        mut state: StageState,
        done: &BTreeMap<usize, StageState>,
    ) -> Result<StageState, BuildError> {
        let total = stage.steps.len() + 1;
        for (i, step) in stage.steps.iter().enumerate() {
            check_interrupted()?;
            let history = History {
                created: Some(self.created.clone()),
                created_by: Some(step.created_by.clone()),
                comment: Some(HISTORY_COMMENT.to_string()),
                empty_layer: false,
                ..Default::default()
            };
            if matches!(step.op, Op::Config) {
                state.key = plan::cache_key(&state.key, &step.key, None);
                state.history.push(History {
                    empty_layer: true,
                    ..history
                });
                continue;
            }
            let id = self.new_id();
            let label = format!("[{} {}/{}] {}", stage_label(stage), i + 2, total, step.text);
            self.reporter.started(id, &label);
            let started = Instant::now();
            match self.step(stage, step, &mut state, done, history, id) {
                Ok(true) => self.reporter.cached(id),
                Ok(false) => self.reporter.done(id, started.elapsed()),
                Err(e) => {
                    self.reporter.failed(id, started.elapsed(), &e.to_string());
                    return Err(e);
                }
            }
        }
        Ok(state)
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
        if !self.req.no_cache {
            if let Some(rec) = self.store.get_cache(&key) {
                let layer_ok = rec
                    .chain
                    .as_ref()
                    .is_none_or(|c| self.store.layer(c).is_some());
                if layer_ok {
                    apply_record(state, &rec, key);
                    self.cached += 1;
                    return Ok(true);
                }
            }
        }
        let tmp = self.store.tmp_dir()?;
        let upper = tmp.path().join("upper");
        let work = tmp.path().join("work");
        for dir in [&upper, &work] {
            std::fs::create_dir(dir).map_err(BuildError::io("creating", dir))?;
        }
        let rootfs = Overlay {
            lowers: state.lowers(self.store)?,
            upper: upper.clone(),
            work,
        };
        let phase = Instant::now();
        let always_layer = match &step.op {
            Op::Run(run) => {
                self.run(step, run, rootfs, done, id)?;
                true
            }
            Op::Copy(copy) => {
                self.copy(copy, rootfs, &prepared, done, stage)?;
                true
            }
            Op::Workdir { path, user } => {
                let job = serde_json::json!({ "path": path, "user": user });
                sandbox::fs_job(&rootfs, &[], job, "workdir")?;
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
            let (chain, diff_id) = self.commit_upper(upper, state.top())?;
            state.chains.push(chain);
            state.diff_ids.push(diff_id);
            self.reporter.phase(id, "snapshot+commit", phase.elapsed());
        } else {
            history.empty_layer = true;
        }
        state.history.push(history.clone());
        state.key = key.clone();
        let record = CacheRecord {
            chain: state.top().cloned(),
            new_layer: !history.empty_layer,
            config: ImageConfig {
                rootfs: crate::image::RootFs {
                    diff_ids: state.diff_ids.clone(),
                    ..Default::default()
                },
                history: state.history.clone(),
                ..Default::default()
            },
            history,
        };
        self.store.put_cache(&key, &record)?;
        Ok(false)
    }

    /// Snapshot an upperdir into an uncompressed layer blob and commit it to the store.
    fn commit_upper(
        &self,
        upper: PathBuf,
        parent: Option<&Digest>,
    ) -> Result<(Digest, Digest), BuildError> {
        let opts = SnapshotOptions {
            source_date_epoch: self.req.source_date_epoch,
            skip: Vec::new(),
        };
        let (digest, size, digests) = self.store.write_blob_prehashed(|w| {
            layer::snapshot_blob(&upper, &opts, Compression::Uncompressed, None, w)
                .map(|d| (d.clone(), d.digest))
        })?;
        let desc = Descriptor::new(media::OCI_LAYER, digest, size);
        let record = self
            .store
            .commit_layer(upper, parent, digests.diff_id.clone(), desc)?;
        Ok((record.chain_id, record.diff_id))
    }

    fn run(
        &mut self,
        step: &Step,
        run: &RunOp,
        rootfs: Overlay,
        done: &BTreeMap<usize, StageState>,
        id: StepId,
    ) -> Result<(), BuildError> {
        if run.security == Security::Insecure {
            return Err(BuildError::Step {
                file: self.req.dockerfile_name.clone(),
                line: step.line,
                text: step.text.clone(),
                message:
                    "RUN --security=insecure is not supported: rbuild does not run privileged steps"
                        .to_string(),
            });
        }
        let mut env = run.env.clone();
        let mut mounts = Vec::new();
        for m in &run.mounts {
            mounts.extend(self.mount(m, done, &mut env)?);
        }
        let network = match run.network {
            NetworkMode::Default => self.req.network,
            NetworkMode::None => Network::None,
            NetworkMode::Host => Network::Host,
        };
        let spec = RunSpec {
            rootfs,
            argv: run.argv.clone(),
            env,
            cwd: run.workdir.clone(),
            user: run.user.clone(),
            hostname: HOSTNAME.to_string(),
            network,
            mounts,
            files: run
                .files
                .iter()
                .map(|f| (f.path.clone(), f.content.clone().into_bytes(), f.mode))
                .collect(),
        };
        let reporter = self.reporter;
        let exit = sandbox::run(&spec, &mut |bytes| reporter.output(id, bytes))?;
        check_interrupted()?;
        match exit.failure_message(&run.argv) {
            None => Ok(()),
            Some(message) => Err(BuildError::Step {
                file: self.req.dockerfile_name.clone(),
                line: step.line,
                text: step.text.clone(),
                message,
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
        let mut sources = Vec::new();
        for (i, src) in copy.sources.iter().enumerate() {
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
                    }
                }
            });
        }
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
            link: copy.link,
            preserve_owner: !matches!(copy.from, CopyFrom::Context | CopyFrom::BuildContext(_)),
        };
        let source = self.source_root(&copy.from, done)?;
        let job = serde_json::to_value(&job).expect("a copy job serializes");
        sandbox::fs_job(&rootfs, std::slice::from_ref(&source), job, "copy")?;
        Ok(())
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
                Some(NamedContext::Image(r)) => self.image_source(r)?,
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
                FsSource::Layers(state.lowers(self.store)?)
            }
            CopyFrom::Image(r) => self.image_source(r)?,
        })
    }

    fn image_source(&mut self, reference: &str) -> Result<FsSource, BuildError> {
        let record = self.bases.ensure(reference, self.reporter, 0)?;
        let state = StageState {
            chains: record.chains.clone(),
            diff_ids: Vec::new(),
            history: Vec::new(),
            key: String::new(),
        };
        Ok(FsSource::Layers(state.lowers(self.store)?))
    }

    fn mount(
        &mut self,
        m: &RunMount,
        done: &BTreeMap<usize, StageState>,
        env: &mut Vec<String>,
    ) -> Result<Option<Mount>, BuildError> {
        let target = m.target.clone();
        let uid = m.uid.unwrap_or(0);
        let gid = m.gid.unwrap_or(0);
        Ok(Some(match m.kind {
            MountType::Bind => {
                let source = m.source.clone().unwrap_or_else(|| "/".to_string());
                let root = match &m.from {
                    None => FsSource::Dir(self.req.context.clone()),
                    Some(from) => self.source_root(&mount_from(from), done)?,
                };
                match root {
                    FsSource::Dir(dir) => {
                        let src = clamp_join(&dir, &source);
                        if m.readonly {
                            Mount::Bind {
                                source: src,
                                target,
                                readonly: true,
                            }
                        } else {
                            Mount::BindDiscard {
                                lowers: vec![src],
                                target,
                            }
                        }
                    }
                    // The merged view of a subpath is the overlay of that subpath in each layer.
                    FsSource::Layers(lowers) => {
                        let lowers = lowers
                            .iter()
                            .map(|l| clamp_join(l, &source))
                            .filter(|l| l.exists())
                            .collect();
                        Mount::BindDiscard { lowers, target }
                    }
                }
            }
            MountType::Cache => {
                let id = m.id.clone().unwrap_or_else(|| m.target.clone());
                let dir = self
                    .store
                    .root()
                    .join("mounts/cache")
                    .join(Digest::of(id.as_bytes()).hex());
                std::fs::create_dir_all(&dir)
                    .map_err(BuildError::io("creating cache mount", &dir))?;
                Mount::Cache {
                    source: dir,
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
                let Some(source) = self.req.secrets.get(&id) else {
                    if m.required {
                        return Err(BuildError::Invalid(format!(
                            "secret `{id}` is required but was not given (--secret id={id},src=...)"
                        )));
                    }
                    return Ok(None);
                };
                let value = match source {
                    SecretSource::File(path) => {
                        std::fs::read(path).map_err(BuildError::io("reading secret", path))?
                    }
                    SecretSource::Env(var) => std::env::var(var).unwrap_or_default().into_bytes(),
                };
                if let Some(name) = &m.env {
                    env.push(format!("{name}={}", String::from_utf8_lossy(&value)));
                }
                let source = self.secret_file(&id, &value)?;
                Mount::Secret {
                    source,
                    target,
                    uid,
                    gid,
                    mode: m.mode.unwrap_or(0o400),
                }
            }
            MountType::Ssh => {
                return Err(BuildError::Invalid(
                    "RUN --mount=type=ssh is not supported yet: rbuild has no SSH agent forwarding"
                        .to_string(),
                ))
            }
        }))
    }

    /// A secret's value as a file the sandbox copies onto the step's tmpfs; it lives in the
    /// store's scratch space only until the build ends.
    fn secret_file(&mut self, id: &str, value: &[u8]) -> Result<PathBuf, BuildError> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.secrets_dir.is_none() {
            self.secrets_dir = Some(self.store.tmp_dir()?);
        }
        let dir = self.secrets_dir.as_ref().expect("just made").path();
        let path = dir.join(Digest::of(id.as_bytes()).hex());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(BuildError::io("writing secret", &path))?;
        std::io::Write::write_all(&mut f, value)
            .map_err(BuildError::io("writing secret", &path))?;
        Ok(path)
    }

    /// The content digest of `paths` in the named context `name` (a directory or an image).
    fn named_context_digest(
        &mut self,
        name: &str,
        paths: &[String],
        excludes: &[String],
    ) -> Result<String, BuildError> {
        match self.req.build_contexts.get(name) {
            Some(NamedContext::Dir(dir)) => {
                let none = IgnoreMatcher::new(&[])?;
                let excludes = IgnoreMatcher::new(excludes)?;
                Ok(context::content_digest(
                    dir,
                    paths,
                    &none,
                    &excludes,
                    true,
                    &mut self.stat_cache,
                )?
                .to_string())
            }
            Some(NamedContext::Image(r)) => Ok(self
                .bases
                .ensure(r, self.reporter, 0)?
                .manifest
                .digest
                .to_string()),
            None => Err(BuildError::Invalid(format!(
                "build context `{name}` was not given (--build-context {name}=...)"
            ))),
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
                match &copy.from {
                    CopyFrom::Context => {
                        if !paths.is_empty() {
                            let excludes = IgnoreMatcher::new(&copy.excludes)?;
                            let d = context::content_digest(
                                &self.req.context,
                                &paths,
                                &self.ignore,
                                &excludes,
                                true,
                                &mut self.stat_cache,
                            )?;
                            parts.push(d.to_string());
                        }
                    }
                    CopyFrom::BuildContext(name) => {
                        parts.push(self.named_context_digest(name, &paths, &copy.excludes)?)
                    }
                    CopyFrom::Stage(i) => {
                        parts.push(done.get(i).map(|s| s.key.clone()).unwrap_or_default())
                    }
                    CopyFrom::Image(r) => parts.push(
                        self.bases
                            .ensure(r, self.reporter, 0)?
                            .manifest
                            .digest
                            .to_string(),
                    ),
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
                        CopySource::Url(url) => {
                            let path = tmp.path().join(format!("url-{}", prepared.files.len()));
                            let digest =
                                super::fetch::download(url, &path, copy.checksum.as_deref())?;
                            parts.push(digest.to_string());
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
                    match &m.from {
                        None => {
                            let none = IgnoreMatcher::new(&[])?;
                            let d = context::content_digest(
                                &self.req.context,
                                &[source],
                                &self.ignore,
                                &none,
                                true,
                                &mut self.stat_cache,
                            )?;
                            parts.push(d.to_string());
                        }
                        Some(MountFrom::Stage(i)) => {
                            parts.push(done.get(i).map(|s| s.key.clone()).unwrap_or_default())
                        }
                        Some(MountFrom::Image(r)) => parts.push(
                            self.bases
                                .ensure(r, self.reporter, 0)?
                                .manifest
                                .digest
                                .to_string(),
                        ),
                        Some(MountFrom::BuildContext(name)) => {
                            parts.push(self.named_context_digest(name, &[source], &[])?)
                        }
                    }
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
        let _ = self.stat_cache.save(&self.stat_cache_path);
        let mut config = stage.config.clone();
        config.created = Some(self.created.clone());
        config.architecture = self.req.platform.architecture.clone();
        config.os = self.req.platform.os.clone();
        config.variant = self.req.platform.variant.clone();
        config.rootfs.diff_ids = state.diff_ids.clone();
        config.history = state.history.clone();
        if !self.req.labels.is_empty() {
            let labels = config.config.labels.get_or_insert_with(Default::default);
            labels.extend(self.req.labels.clone());
        }
        Ok(self
            .store
            .put_image(&config, &state.chains, Compression::Uncompressed)?)
    }
}

/// What [`Ctx::prepare`] made ready: the content digest for the key, and files for COPY.
#[derive(Default)]
struct Prepared {
    content: Option<Digest>,
    /// Per source: (name in the image, host path, mode) for URL and heredoc sources.
    files: Vec<Option<(String, PathBuf, u32)>>,
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
    state.key = key;
}

/// `[stage 2/5]` as BuildKit labels a step: the stage name, `stage-N` for an unnamed stage in
/// a multi-stage file, nothing for a single unnamed stage.
fn stage_label(stage: &Stage) -> String {
    match &stage.name {
        Some(name) => name.clone(),
        None => format!("stage-{}", stage.index),
    }
}

/// `dir` joined with a path from the Dockerfile, never leaving `dir` (`..` stops at the top).
fn clamp_join(dir: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    dir.join(out)
}

/// RFC 3339 in UTC with second precision, as image configs carry it.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A RUN --mount `from=` as a COPY --from (the same three kinds of source).
fn mount_from(from: &MountFrom) -> CopyFrom {
    match from {
        MountFrom::Stage(i) => CopyFrom::Stage(*i),
        MountFrom::Image(r) => CopyFrom::Image(r.clone()),
        MountFrom::BuildContext(n) => CopyFrom::BuildContext(n.clone()),
    }
}
