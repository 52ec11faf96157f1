//! The build plan (pure): typed instructions -> stage graph (FROM expanded with global ARGs,
//! edges from `FROM <stage>`, `COPY --from`, `RUN --mount from=`), pruned to the target,
//! then per stage every instruction expanded with the stage's ARG/ENV scope at that point
//! (which starts from the base image's config Env) and given its cache-key material.
//!
//! Stage references everywhere ([`Base::Stage`], [`Stage::deps`], [`CopyFrom::Stage`],
//! [`MountFrom::Stage`]) are positions in the Dockerfile (`Stage::index`); use
//! [`Plan::stage`] to look one up.

pub mod explain;
mod graph;
mod history;
mod key;
mod outline;
mod render;
mod run;
mod steps;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::dockerfile::instructions::{LineError, NetworkMode, Security};
use crate::dockerfile::ErrorKind;
use crate::image::{Digest, ImageConfig, Platform, SourceDateEpoch};

pub(crate) use graph::automatic_args;
pub use key::{cache_key, link_key};
pub use outline::{
    outline, outline_json, render_outline, render_targets, secret_and_ssh_mounts, targets,
    targets_json, Outline, Target,
};
pub use render::render;
pub use run::parse_size;
pub use steps::{is_git_url, is_remote_source};

/// Inputs of a build that the Dockerfile can see.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Shown in errors (`Dockerfile:3: ...`).
    pub dockerfile_name: String,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub platform: Platform,
    pub source_date_epoch: Option<SourceDateEpoch>,
    /// Names given with `--build-context NAME=...`: `COPY --from=NAME` and
    /// `RUN --mount from=NAME` then refer to that context instead of an image.
    /// (`FROM NAME` goes to the resolver, which knows the contexts.)
    pub named_contexts: BTreeSet<String>,
    /// `--network`: what a RUN without `--network` (or with `--network=default`) gets. It
    /// is resolved into each step's [`RunOp::network`], so it is part of the cache key, as
    /// BuildKit's network mode is part of an exec op.
    pub network: NetworkMode,
    /// `--add-host NAME=ADDRESS`, for every RUN step's /etc/hosts.
    pub extra_hosts: Vec<ExtraHost>,
    /// `--shm-size` in bytes: every RUN step gets a tmpfs of that size on /dev/shm, as
    /// BuildKit's frontend adds one to each exec op (so it is part of the cache key).
    pub shm_size: Option<u64>,
    /// `--ulimit`, for every RUN step.
    pub ulimits: Vec<Ulimit>,
    /// `--no-cache-filter`: the stages whose RUN, COPY and ADD steps ignore the cache
    /// (names matched without regard to case, as BuildKit's IsNoCache).
    pub no_cache_stages: Vec<String>,
}

/// One `--add-host`. The cache key has the name only: BuildKit clears the address from an
/// exec op's cache map, so a service that moved does not rebuild the steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtraHost {
    pub host: String,
    #[serde(skip)]
    pub ip: String,
}

/// One `--ulimit TYPE=SOFT:HARD` (BuildKit's pb.Ulimit): -1 is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// A resolved base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBase {
    /// Manifest digest; goes into cache keys.
    pub id: Digest,
    pub config: ImageConfig,
}

/// Looks up base images (registry, store, named contexts). Called for FROM images (not
/// `scratch`, not stage names) and for images named by `COPY --from` / `RUN --mount from=`,
/// with the reference already expanded. The error string is wrapped with file and line.
pub trait BaseResolver {
    /// `platform`: the stage's (its `FROM --platform`, else the build's target).
    fn resolve(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedBase, String>;
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Only the stages the target needs, dependencies first.
    pub stages: Vec<Stage>,
    /// Index into `stages`.
    pub target: usize,
    pub warnings: Vec<String>,
    /// How many stages the Dockerfile has, needed or not.
    pub stages_in_file: usize,
}

#[derive(Debug, Clone)]
pub struct Stage {
    /// Position of the stage in the Dockerfile (0-based).
    pub index: usize,
    pub name: Option<String>,
    /// Line of the FROM instruction.
    pub line: usize,
    pub base: Base,
    /// Dockerfile positions of the stages this one needs, sorted.
    pub deps: Vec<usize>,
    pub steps: Vec<Step>,
    /// Base config plus the effect of every step (rootfs and history left to the executor).
    pub config: ImageConfig,
    /// What the stage is built for: its `FROM --platform`, else the build's target platform.
    pub platform: Platform,
}

// A handful of stages per build: boxing the image variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Base {
    Scratch,
    Image {
        reference: String,
        resolved: ResolvedBase,
    },
    /// Dockerfile position of the base stage.
    Stage(usize),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub line: usize,
    /// The instruction as written, e.g. `RUN echo hi` (for progress).
    pub text: String,
    /// BuildKit-style history `created_by`.
    pub created_by: String,
    /// Whether the step adds a history entry (BuildKit adds none for ONBUILD).
    pub history: bool,
    /// What to do: RUN and COPY/ADD always make a layer, WORKDIR only if it creates the
    /// directory, Config never.
    pub op: Op,
    /// The container config after this step.
    pub config: crate::image::ContainerConfig,
    pub key: KeyMaterial,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Run(RunOp),
    /// COPY and ADD.
    Copy(CopyOp),
    /// Create the directory (owned by `user`) if missing; a layer only if it was created.
    Workdir {
        path: String,
        user: String,
    },
    /// Only changes the config: no layer.
    Config,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunOp {
    /// Shell form already wrapped with SHELL, e.g. `["/bin/sh","-c","echo hi"]`.
    pub argv: Vec<String>,
    /// `KEY=VALUE`: config Env, then ARGs in scope with a value, then proxy build args.
    pub env: Vec<String>,
    pub user: String,
    /// Absolute; `/` when unset.
    pub workdir: String,
    pub network: NetworkMode,
    /// The hostname the step sees: `--build-arg BUILDKIT_SANDBOX_HOSTNAME`, else BuildKit's
    /// `buildkitsandbox`.
    pub hostname: String,
    pub mounts: Vec<RunMount>,
    pub security: Security,
    /// Files to provide read-only to the command (a heredoc with a shebang is run as a
    /// script at `/dev/pipes/<NAME>`, as BuildKit does).
    pub files: Vec<InjectedFile>,
    /// `KEY=VALUE` from the proxy build args, both spellings, after `env`. Not part of the
    /// cache key (BuildKit leaves ProxyEnv out of an exec op's key): a CI runner's proxy
    /// does not change what a step builds.
    #[serde(skip)]
    pub proxy_env: Vec<String>,
    /// `--add-host`; left out of the key material when empty, so keys made before the
    /// flag existed still match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<ExtraHost>,
    /// `--ulimit`; as `extra_hosts`, only in the key when given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InjectedFile {
    pub path: String,
    pub content: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunMount {
    pub kind: crate::dockerfile::instructions::MountType,
    /// Absolute path in the container.
    pub target: String,
    /// Path inside `from` (bind, cache) — relative, `/` when unset.
    pub source: Option<String>,
    pub from: Option<MountFrom>,
    pub readonly: bool,
    /// cache: id (defaults to the target); secret: id (defaults to the target's base
    /// name); ssh: id (defaults to `default`).
    pub id: Option<String>,
    /// cache only.
    pub sharing: Option<Sharing>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub required: bool,
    /// tmpfs size in bytes.
    pub size: Option<u64>,
    /// secret: also (or instead) expose it as this environment variable.
    pub env: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountFrom {
    Stage(usize),
    Image(String),
    BuildContext(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyOp {
    pub add: bool,
    pub sources: Vec<CopySource>,
    /// Absolute (joined with the workdir); a trailing `/` is kept (it means "a directory").
    pub dest: String,
    pub workdir: String,
    pub from: CopyFrom,
    pub chown: Option<String>,
    pub chmod: Option<crate::dockerfile::chmod::Chmod>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopySource {
    Path(String),
    Url(String),
    Heredoc { name: String, content: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFrom {
    Context,
    Stage(usize),
    Image(String),
    BuildContext(String),
}

/// Everything a step's result depends on except the parent key and source content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyMaterial {
    /// `RUN`, `COPY`, `ENV`, ...
    pub instruction: String,
    /// Expanded instruction as in history (`ENV A=b`, `RUN /bin/sh -c ... # buildkit`).
    pub created_by: String,
    pub op: Op,
    pub shell: Vec<String>,
    /// Build args in scope with their values.
    pub build_args: BTreeMap<String, String>,
    /// `os/arch[/variant]`.
    pub platform: String,
    pub source_date_epoch: Option<SourceDateEpoch>,
    /// Images used by `COPY --from` / `RUN --mount from=` -> manifest digest.
    pub images: BTreeMap<String, String>,
}

/// A planning error; Display names the file and line and shows the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{file}:{line}: {kind}\n{excerpt}")]
    At {
        file: String,
        line: usize,
        /// `   3 | NOTANINSTRUCTION foo`
        excerpt: String,
        kind: Box<ErrorKind>,
    },
    #[error("{file}: {kind}")]
    File { file: String, kind: Box<ErrorKind> },
}

impl PlanError {
    pub fn kind(&self) -> &ErrorKind {
        match self {
            PlanError::At { kind, .. } | PlanError::File { kind, .. } => kind,
        }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            PlanError::At { line, .. } => Some(*line),
            PlanError::File { .. } => None,
        }
    }
}

/// Builds [`PlanError`]s for one file.
pub(crate) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn at(&self, line: usize, kind: ErrorKind) -> PlanError {
        PlanError::At {
            file: self.name.to_string(),
            line,
            excerpt: crate::dockerfile::excerpt(self.text, line, line),
            kind: Box::new(kind),
        }
    }

    pub fn file(&self, kind: ErrorKind) -> PlanError {
        PlanError::File {
            file: self.name.to_string(),
            kind: Box::new(kind),
        }
    }

    pub fn line_error(&self, e: LineError) -> PlanError {
        self.at(e.line, e.kind)
    }
}

impl Plan {
    /// The stage at Dockerfile position `index`, if it is part of the plan.
    pub fn stage(&self, index: usize) -> Option<&Stage> {
        self.stages.iter().find(|s| s.index == index)
    }

    pub fn target_stage(&self) -> &Stage {
        &self.stages[self.target]
    }

    /// Stages grouped in waves: every stage of a wave depends only on earlier waves, so the
    /// stages of one wave can build in parallel. Values are Dockerfile positions.
    pub fn waves(&self) -> Vec<Vec<usize>> {
        let mut depth: BTreeMap<usize, usize> = BTreeMap::new();
        for s in &self.stages {
            let d = s
                .deps
                .iter()
                .filter_map(|d| depth.get(d))
                .map(|d| d + 1)
                .max()
                .unwrap_or(0);
            depth.insert(s.index, d);
        }
        let mut waves: Vec<Vec<usize>> = Vec::new();
        for s in &self.stages {
            let d = depth[&s.index];
            if waves.len() <= d {
                waves.resize(d + 1, Vec::new());
            }
            waves[d].push(s.index);
        }
        waves
    }

    /// Chained cache keys of every step without source content (for display and tests):
    /// stage position -> one key per step. The executor computes the real ones with
    /// [`cache_key`] and the content digests.
    pub fn keys_without_content(&self) -> BTreeMap<usize, Vec<String>> {
        let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for s in &self.stages {
            let mut parent = match &s.base {
                Base::Scratch => "scratch".to_string(),
                Base::Image { resolved, .. } => resolved.id.to_string(),
                Base::Stage(i) => out
                    .get(i)
                    .and_then(|k| k.last().cloned())
                    .or_else(|| self.stage(*i).map(|b| stage_root_key(self, b)))
                    .unwrap_or_default(),
            };
            let mut keys = Vec::new();
            for step in &s.steps {
                parent = cache_key(&parent, &step.key, None);
                keys.push(parent.clone());
            }
            out.insert(s.index, keys);
        }
        out
    }
}

fn stage_root_key(plan: &Plan, s: &Stage) -> String {
    match &s.base {
        Base::Scratch => "scratch".to_string(),
        Base::Image { resolved, .. } => resolved.id.to_string(),
        Base::Stage(i) => plan
            .stage(*i)
            .map(|b| stage_root_key(plan, b))
            .unwrap_or_default(),
    }
}

impl fmt::Display for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base::Scratch => f.write_str("scratch"),
            Base::Image {
                reference,
                resolved,
            } => write!(f, "{reference} ({})", resolved.id),
            Base::Stage(i) => write!(f, "stage {i}"),
        }
    }
}

/// Plan a build: parse, build the stage graph, resolve bases, expand every step.
pub fn plan(
    text: &str,
    opts: &BuildOptions,
    resolver: &mut dyn BaseResolver,
) -> Result<Plan, PlanError> {
    let src = Source {
        name: &opts.dockerfile_name,
        text,
    };
    let (ast, located) =
        crate::dockerfile::instructions::parse(text).map_err(|e| src.line_error(e))?;
    let graph = graph::build(&src, &located, opts, ast.escape)?;
    steps::plan_stages(&src, &graph, opts, resolver, ast.escape)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;

    /// A fixed set of base images: the planner is pure, so a table of configs stands in for
    /// the registry. `onbuild*` images carry ONBUILD triggers; `missing*` fail to resolve.
    pub(crate) struct FakeResolver;

    impl BaseResolver for FakeResolver {
        fn resolve(
            &mut self,
            reference: &str,
            _platform: &Platform,
        ) -> Result<ResolvedBase, String> {
            if reference.starts_with("missing") {
                return Err("manifest unknown".into());
            }
            let mut config = ImageConfig {
                architecture: "amd64".into(),
                os: "linux".into(),
                ..Default::default()
            };
            config.set_env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
            config.config.cmd = Some(vec!["/bin/sh".into()]);
            if reference.starts_with("golang") {
                config.set_env("GOPATH", "/go");
                config.config.working_dir = Some("/go".into());
            }
            if reference.starts_with("onbuild-copy") {
                config.config.on_build = Some(vec!["COPY --from=src /a /from-src".into()]);
            } else if reference.starts_with("onbuild") {
                config.config.on_build = Some(vec![
                    "COPY . /app/src".into(),
                    "RUN echo triggered $GOPATH".into(),
                ]);
            }
            Ok(ResolvedBase {
                id: Digest::of(reference.as_bytes()),
                config,
            })
        }
    }

    pub(crate) fn options() -> BuildOptions {
        BuildOptions {
            dockerfile_name: "Dockerfile".into(),
            platform: Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
                variant: None,
                os_version: None,
            },
            ..Default::default()
        }
    }

    /// `options` file lines: `build-arg K=V`, `target NAME`, `epoch N`, `context NAME`,
    /// `network host|none`, `add-host NAME=IP`, `shm-size BYTES`, `ulimit NAME=SOFT:HARD`.
    fn case_options(case: &Path) -> BuildOptions {
        let mut opts = options();
        let text = std::fs::read_to_string(case.join("options")).unwrap_or_default();
        for line in text.lines() {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "build-arg" => {
                    let (a, b) = v.split_once('=').unwrap_or((v, ""));
                    opts.build_args.insert(a.into(), b.into());
                }
                "target" => opts.target = Some(v.into()),
                "epoch" => {
                    opts.source_date_epoch = v.parse().ok().map(SourceDateEpoch::from_seconds)
                }
                "context" => {
                    opts.named_contexts.insert(v.into());
                }
                "network" => {
                    opts.network = NetworkMode::parse(v)
                        .unwrap_or_else(|| panic!("bad network {v} in {}", case.display()))
                }
                "add-host" => {
                    let (host, ip) = v.split_once('=').unwrap();
                    opts.extra_hosts.push(ExtraHost {
                        host: host.into(),
                        ip: ip.into(),
                    });
                }
                "shm-size" => opts.shm_size = Some(v.parse().unwrap()),
                "ulimit" => {
                    let (name, limits) = v.split_once('=').unwrap();
                    let (soft, hard) = limits.split_once(':').unwrap();
                    opts.ulimits.push(Ulimit {
                        name: name.into(),
                        soft: soft.parse().unwrap(),
                        hard: hard.parse().unwrap(),
                    });
                }
                "" => {}
                other => panic!("unknown option {other} in {}", case.display()),
            }
        }
        opts
    }

    fn corpus(dir: &str, file: &str, run: impl Fn(&str, &BuildOptions) -> String) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(dir);
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut cases: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        let mut failed = Vec::new();
        for case in &cases {
            let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
            let got = run(&text, &case_options(case));
            let golden = case.join(file);
            if update {
                std::fs::write(&golden, &got).unwrap();
                continue;
            }
            if std::fs::read_to_string(&golden).unwrap_or_default() != got {
                eprintln!("--- {}\n{got}", case.display());
                failed.push(case.file_name().unwrap().to_string_lossy().to_string());
            }
        }
        assert!(failed.is_empty(), "golden mismatch in {dir}: {failed:?}");
        assert!(!cases.is_empty());
    }

    /// testdata/parse-negative/<case>/{Dockerfile,error}: the full error text.
    #[test]
    fn negative_corpus() {
        corpus("parse-negative", "error", |text, opts| {
            match plan(text, opts, &mut FakeResolver) {
                Ok(_) => "unexpectedly planned\n".into(),
                Err(e) => format!("{e}\n"),
            }
        });
        let n = std::fs::read_dir(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/parse-negative"),
        )
        .unwrap()
        .count();
        assert!(n >= 20, "only {n} negative cases");
    }

    /// testdata/plan/<case>/{Dockerfile,options,plan}: rendered plans incl. cache keys, so
    /// an accidental cache-key change fails here.
    #[test]
    fn plan_corpus() {
        corpus("plan", "plan", |text, opts| {
            match plan(text, opts, &mut FakeResolver) {
                Ok(p) => render(&p),
                Err(e) => format!("error: {e}\n"),
            }
        });
    }

    #[test]
    fn error_display_shows_file_line_and_text() {
        let mut opts = options();
        opts.dockerfile_name = "my.Dockerfile".into();
        let err = plan("FROM a\n\nNOTANINSTRUCTION foo\n", &opts, &mut FakeResolver).unwrap_err();
        assert_eq!(
            err.to_string(),
            "my.Dockerfile:3: unknown instruction `NOTANINSTRUCTION`\n   3 | NOTANINSTRUCTION foo"
        );
    }

    #[test]
    fn cache_key_depends_on_every_input() {
        let p = plan("FROM a\nRUN echo hi\n", &options(), &mut FakeResolver).unwrap();
        let m = &p.stages[0].steps[0].key;
        let k = cache_key("p", m, None);
        assert_eq!(k.len(), 64);
        assert_ne!(k, cache_key("q", m, None));
        assert_ne!(k, cache_key("p", m, Some(&Digest::of(b"x"))));
        let mut opts = options();
        opts.build_args.insert("HTTP_PROXY".into(), "x".into());
        let p2 = plan("FROM a\nRUN echo hi\n", &opts, &mut FakeResolver).unwrap();
        assert_eq!(
            p2.stages[0].steps[0].created_by,
            "RUN /bin/sh -c echo hi # buildkit"
        );
        let p3 = plan("FROM a\nRUN echo ho\n", &options(), &mut FakeResolver).unwrap();
        assert_ne!(k, cache_key("p", &p3.stages[0].steps[0].key, None));
    }

    #[test]
    fn link_key_ignores_what_the_stage_so_far_sets() {
        let key = |text: &str| {
            let p = plan(text, &options(), &mut FakeResolver).unwrap();
            let step = p.stages[0].steps.last().unwrap();
            link_key(&step.key, Some(&Digest::of(b"content")))
        };
        let k = key("FROM a\nCOPY --link f /app/\n");
        assert_eq!(
            k,
            key("FROM b\nENV X=1\nARG Y=2\nSHELL [\"/bin/bash\", \"-c\"]\nCOPY --link f /app/\n")
        );
        assert_ne!(k, key("FROM a\nCOPY --link f /srv/\n"));
        assert_ne!(k, key("FROM a\nCOPY --link --chown=1:1 f /app/\n"));
        assert_ne!(k, key("FROM a\nWORKDIR /w\nCOPY --link f app/\n"));
        let p = plan(
            "FROM a\nCOPY --link f /app/\n",
            &options(),
            &mut FakeResolver,
        )
        .unwrap();
        let m = &p.stages[0].steps[0].key;
        assert_ne!(link_key(m, None), k);
        assert_ne!(
            link_key(m, Some(&Digest::of(b"content"))),
            cache_key("p", m, Some(&Digest::of(b"content")))
        );
    }

    fn one_stage(text: &str, opts: &BuildOptions) -> Stage {
        let mut p = plan(text, opts, &mut FakeResolver).unwrap();
        let t = p.target;
        p.stages.swap_remove(t)
    }

    fn run_op(step: &Step) -> &RunOp {
        match &step.op {
            Op::Run(r) => r,
            other => panic!("not a RUN: {other:?}"),
        }
    }

    /// The RUN steps of a stage.
    fn runs(s: &Stage) -> Vec<&Step> {
        s.steps
            .iter()
            .filter(|s| matches!(s.op, Op::Run(_)))
            .collect()
    }

    #[test]
    fn global_args_need_redeclaring_in_a_stage() {
        let s = one_stage("ARG V=1\nFROM a\nRUN true\nARG V\nRUN true\n", &options());
        let r = runs(&s);
        assert!(!run_op(r[0]).env.iter().any(|e| e.starts_with("V=")));
        assert!(run_op(r[1]).env.contains(&"V=1".to_string()));
        assert_eq!(r[1].created_by, "RUN |1 V=1 /bin/sh -c true # buildkit");
        assert_eq!(s.steps[1].created_by, "ARG V=1");
        assert!(matches!(s.steps[1].op, Op::Config));
    }

    #[test]
    fn build_args_override_defaults_and_unused_ones_warn() {
        let mut opts = options();
        opts.build_args.insert("V".into(), "9".into());
        opts.build_args.insert("NOBODY".into(), "x".into());
        opts.build_args
            .insert("https_proxy".into(), "http://p".into());
        let p = plan("FROM a\nARG V=1\nRUN true\n", &opts, &mut FakeResolver).unwrap();
        let step = runs(&p.stages[0])[0];
        let env = &run_op(step).env;
        assert!(env.contains(&"V=9".to_string()));
        assert!(!step.created_by.contains("proxy"));
        assert_eq!(
            p.warnings,
            vec!["one or more build-args [NOBODY] were not consumed".to_string()]
        );
    }

    /// Regression (issue 14): `--build-arg http_proxy=..` reached RUN only in that
    /// spelling; BuildKit sets both. Proxies stay out of the cache key and history.
    #[test]
    fn proxy_build_args_reach_run_in_both_spellings_outside_the_key() {
        let mut opts = options();
        opts.build_args
            .insert("https_proxy".into(), "http://p".into());
        opts.build_args.insert("NO_PROXY".into(), "a".into());
        opts.build_args.insert("no_proxy".into(), "b".into());
        opts.build_args
            .insert("Ftp_Proxy".into(), "http://f".into());
        let text = "FROM a\nENV http_proxy=from-env\nRUN true\n";
        let p = plan(text, &opts, &mut FakeResolver).unwrap();
        let step = runs(&p.stages[0])[0];
        let run = run_op(step);
        assert_eq!(
            run.proxy_env,
            [
                "HTTPS_PROXY=http://p",
                "https_proxy=http://p",
                "FTP_PROXY=http://f",
                "ftp_proxy=http://f",
                "NO_PROXY=b",
                "no_proxy=b",
            ]
        );
        assert!(!step.created_by.contains("proxy"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let plain = plan(text, &options(), &mut FakeResolver).unwrap();
        assert_eq!(plain.keys_without_content(), p.keys_without_content());
    }

    /// Regression (issue 14): `--build-arg BUILDKIT_SANDBOX_HOSTNAME` was ignored. It sets
    /// the hostname of RUN steps and, like BuildKit's exec meta, is part of their key.
    #[test]
    fn sandbox_hostname_build_arg_sets_the_run_hostname() {
        let text = "FROM a\nRUN hostname\n";
        let hostname = |v: Option<&str>| {
            let mut opts = options();
            if let Some(v) = v {
                opts.build_args
                    .insert("BUILDKIT_SANDBOX_HOSTNAME".into(), v.into());
            }
            plan(text, &opts, &mut FakeResolver).map(|p| {
                let h = run_op(runs(&p.stages[0])[0]).hostname.clone();
                (h, p.keys_without_content(), p.warnings)
            })
        };
        let (default, default_keys, _) = hostname(None).unwrap();
        assert_eq!(default, "buildkitsandbox");
        let (foo, foo_keys, warnings) = hostname(Some("foo")).unwrap();
        assert_eq!(foo, "foo");
        assert_ne!(foo_keys, default_keys);
        assert!(warnings.is_empty(), "{warnings:?}");
        let err = hostname(Some(&"x".repeat(65))).unwrap_err();
        assert!(err.to_string().contains("at most 64 bytes"), "{err}");
    }

    #[test]
    fn env_beats_arg_and_platform_args_are_automatic() {
        let s = one_stage(
            "FROM a\nENV X=env\nARG X=arg\nARG TARGETARCH\nRUN true\n",
            &options(),
        );
        let env = &run_op(runs(&s)[0]).env;
        assert!(env.contains(&"X=env".to_string()));
        assert!(!env.contains(&"X=arg".to_string()));
        assert!(env.contains(&"TARGETARCH=amd64".to_string()));
    }

    /// Regression (issue 14): TARGETSTAGE was never set. BuildKit: the `--target` as
    /// given, else the last stage's name, else `default`; a build arg overrides it.
    #[test]
    fn targetstage_is_the_target_as_given_or_the_last_stage_or_default() {
        let value = |text: &str, target: Option<&str>, arg: Option<&str>| {
            let mut opts = options();
            opts.target = target.map(String::from);
            if let Some(v) = arg {
                opts.build_args.insert("TARGETSTAGE".into(), v.into());
            }
            let p = plan(text, &opts, &mut FakeResolver).unwrap();
            let env = run_op(runs(&p.stages[0])[0]).env.clone();
            env.into_iter()
                .find_map(|e| e.strip_prefix("TARGETSTAGE=").map(String::from))
        };
        let text = "FROM a AS one\nARG TARGETSTAGE\nRUN true\nFROM one AS Two\n";
        assert_eq!(value(text, None, None).as_deref(), Some("two"));
        assert_eq!(value(text, Some("ONE"), None).as_deref(), Some("ONE"));
        assert_eq!(value(text, Some("ONE"), Some("x")).as_deref(), Some("x"));
        let unnamed = "FROM a\nARG TARGETSTAGE\nRUN true\n";
        assert_eq!(value(unnamed, None, None).as_deref(), Some("default"));
        // Like every automatic arg, it needs an ARG to be seen.
        assert_eq!(value("FROM a\nRUN true\n", None, None), None);
    }

    /// Regression: a global `ARG NAME` without a default dropped the value NAME had (an
    /// automatic arg, an earlier global ARG); BuildKit keeps it.
    #[test]
    fn global_arg_without_default_keeps_the_value_in_scope() {
        let p = plan(
            "ARG TARGETARCH\nARG V=1\nARG V\nFROM img-$TARGETARCH-$V\nARG V\nRUN true\n",
            &options(),
            &mut FakeResolver,
        )
        .unwrap();
        let s = p.target_stage();
        assert!(matches!(&s.base, Base::Image { reference, .. } if reference == "img-amd64-1"));
        assert!(run_op(runs(s)[0]).env.contains(&"V=1".to_string()));
    }

    #[test]
    fn entrypoint_drops_the_base_cmd_only() {
        let s = one_stage("FROM a\nENTRYPOINT [\"/e\"]\n", &options());
        assert_eq!(s.config.config.cmd, None);
        let s = one_stage("FROM a\nCMD [\"c\"]\nENTRYPOINT [\"/e\"]\n", &options());
        assert_eq!(s.config.config.cmd, Some(vec!["c".to_string()]));
    }

    #[test]
    fn onbuild_triggers_run_after_from_and_are_cleared() {
        let s = one_stage("FROM onbuild-base\nRUN after\n", &options());
        let texts: Vec<&str> = s.steps.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            ["COPY . /app/src", "RUN echo triggered $GOPATH", "RUN after"]
        );
        assert_eq!(s.steps[0].line, 1);
        assert_eq!(s.config.config.on_build, None);
    }

    #[test]
    fn scratch_gets_a_path_and_workdir_is_absolute() {
        let s = one_stage(
            "FROM scratch\nWORKDIR a\nWORKDIR ../b/./c\nCOPY x .\n",
            &options(),
        );
        assert!(matches!(s.base, Base::Scratch));
        assert_eq!(s.config.env_var("PATH"), Some(steps_default_path()));
        assert!(matches!(&s.steps[1].op, Op::Workdir { path, .. } if path == "/b/c"));
        assert!(matches!(&s.steps[2].op, Op::Copy(c) if c.dest == "/b/c/"));
    }

    fn steps_default_path() -> &'static str {
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    }

    #[test]
    fn run_heredoc_forms() {
        let s = one_stage(
            "FROM a\nRUN <<EOF\necho 1\nEOF\nRUN <<EOF\n#!/bin/py\nx\nEOF\nRUN cat <<A\nz\nA\n",
            &options(),
        );
        assert_eq!(run_op(&s.steps[0]).argv, ["/bin/sh", "-c", "echo 1\n"]);
        let script = run_op(&s.steps[1]);
        assert_eq!(script.argv, ["/bin/sh", "-c", "/dev/pipes/EOF"]);
        assert_eq!(script.files[0].content, "#!/bin/py\nx\n");
        assert_eq!(run_op(&s.steps[2]).argv, ["/bin/sh", "-c", "cat <<A\nz\nA"]);
    }

    /// BuildKit's testCopyHeredocSpecialSymbols and testHeredocVarSubstitution: an unquoted
    /// delimiter processes `\` escapes and `$` (quotes stay), a quoted one keeps the body.
    #[test]
    fn copy_heredoc_body_escapes() {
        let text = "FROM a\nARG name=world\n\
            COPY <<EOF /s1\n\\\nEOF\nCOPY <<EOF /s2\n\\\\\nEOF\nCOPY <<EOF /s3\n\\$\nEOF\n\
            COPY <<EOF /q\nHello \"${name}\" '$name' \\a\nEOF\n\
            COPY <<\"EOF\" /r1\n\\\nEOF\nCOPY <<\"EOF\" /r2\n\\\\\nEOF\nCOPY <<'EOF' /r3\n\\$name\nEOF\n";
        let s = one_stage(text, &options());
        let bodies: Vec<String> = s
            .steps
            .iter()
            .filter_map(|st| match &st.op {
                Op::Copy(c) => match &c.sources[0] {
                    CopySource::Heredoc { content, .. } => Some(content.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(
            bodies,
            [
                "\n",
                "\\\n",
                "$\n",
                "Hello \"world\" 'world' a\n",
                "\\\n",
                "\\\\\n",
                "\\$name\n"
            ]
        );
    }

    #[test]
    fn independent_stages_share_a_wave() {
        let p = plan(
            "FROM a AS x\nFROM b AS y\nFROM c\nCOPY --from=x /a /a\nCOPY --from=y /b /b\n",
            &options(),
            &mut FakeResolver,
        )
        .unwrap();
        assert_eq!(p.waves(), vec![vec![0, 1], vec![2]]);
        assert_eq!(p.target_stage().deps, vec![0, 1]);
    }

    /// Every prefix of every corpus file plans or fails with an error, never panics.
    #[test]
    fn truncated_inputs_never_panic() {
        for dir in ["parse", "parse-negative", "plan"] {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata")
                .join(dir);
            for case in std::fs::read_dir(root).unwrap() {
                let text =
                    std::fs::read_to_string(case.unwrap().path().join("Dockerfile")).unwrap();
                for (i, _) in text.char_indices() {
                    let _ = plan(&text[..i], &options(), &mut FakeResolver);
                }
            }
        }
    }

    #[test]
    fn target_prunes_and_orders_deps_first() {
        let text =
            "FROM a AS one\nFROM b AS three\nFROM c AS two\nCOPY --from=three /x /y\nFROM d\n";
        let mut opts = options();
        opts.target = Some("TWO".into());
        let p = plan(text, &opts, &mut FakeResolver).unwrap();
        let order: Vec<usize> = p.stages.iter().map(|s| s.index).collect();
        assert_eq!(order, vec![1, 2]);
        assert_eq!(p.target_stage().index, 2);
        assert_eq!(p.waves(), vec![vec![1], vec![2]]);
        let all = plan(text, &options(), &mut FakeResolver).unwrap();
        assert_eq!(all.stages.len(), 1);
    }

    /// Regression: stages are dispatched in file order, so BuildKit refuses a `COPY --from`
    /// or `--mount from=` naming a later stage; rbuild used to build it first.
    #[test]
    fn copy_or_mount_from_a_later_stage_is_refused() {
        let mut opts = options();
        opts.target = Some("one".into());
        let text = "FROM a AS one\nCOPY --from=two /x /y\nFROM b AS two\n";
        // Not needed for the default target (the last stage): not dispatched, no error.
        plan(text, &options(), &mut FakeResolver).unwrap();
        let err = plan(text, &opts, &mut FakeResolver).unwrap_err();
        assert_eq!(err.line(), Some(2));
        assert!(
            err.to_string().contains(
                "cannot copy from stage `two`, it needs to be defined before current stage `one`"
            ),
            "{err}"
        );
        let err = plan(
            "FROM a AS one\nRUN --mount=from=1,target=/m true\nFROM b\nFROM one\n",
            &options(),
            &mut FakeResolver,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot mount from stage `1` to `/m`, stage needs to be defined"),
            "{err}"
        );
    }

    /// Regression: a base image's `ONBUILD COPY --from=<stage>` adds a dependency after
    /// the graph was pruned; the executor panicked ("the plan builds a stage before its
    /// users"). The named stage now joins the plan ahead of its user, as in BuildKit.
    #[test]
    fn onbuild_copy_from_a_stage_plans_that_stage_first() {
        let p = plan(
            "FROM a AS base\nFROM base AS src\nFROM b AS unused\nFROM onbuild-copy\nRUN after\n",
            &options(),
            &mut FakeResolver,
        )
        .unwrap();
        let order: Vec<usize> = p.stages.iter().map(|s| s.index).collect();
        assert_eq!(order, vec![0, 1, 3]);
        assert_eq!(p.target_stage().deps, vec![1]);
        assert!(
            matches!(&p.target_stage().steps[0].op, Op::Copy(c) if c.from == CopyFrom::Stage(1))
        );
        assert_eq!(p.waves(), vec![vec![0], vec![1], vec![3]]);

        let err = plan(
            "FROM onbuild-copy AS user\nFROM a AS src\nFROM user\n",
            &options(),
            &mut FakeResolver,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot copy from stage `src`, it needs to be defined before"),
            "{err}"
        );
    }

    #[test]
    fn unknown_target_lists_the_stages_and_suggests_the_nearest() {
        let mut opts = options();
        opts.target = Some("biuld".into());
        let err = plan(
            "FROM a AS build\nFROM b AS test\nFROM c\n",
            &opts,
            &mut FakeResolver,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Dockerfile: target stage `biuld` could not be found (did you mean `build`?); \
             stages: build, test"
        );
    }
}
