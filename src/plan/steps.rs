//! Per-stage expansion: walk a stage's instructions with its ARG/ENV scope, turning each
//! into a [`Step`] (op, config after it, history `created_by`, cache-key material). RUN and
//! its mounts are planned in `run.rs`, the longer `created_by` texts written in `history.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::graph::{self, expand, Graph, Ref};
use super::history::{self, go_quote_list};
use super::run::is_proxy_arg;
use super::{
    Base, BaseResolver, BuildOptions, CopyFrom, CopyOp, CopySource, KeyMaterial, Op, Plan,
    PlanError, Source, Stage, Step,
};
use crate::dockerfile::chmod::Chmod;
use crate::dockerfile::instructions::{self, CommandForm, Healthcheck, Instruction, Located};
use crate::dockerfile::shell::Lexer;
use crate::dockerfile::syntax;
use crate::dockerfile::ErrorKind;
use crate::image::{config::Empty, HealthConfig, ImageConfig, Platform};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(super) struct Ctx<'a, 'b> {
    pub(super) src: &'a Source<'a>,
    pub(super) opts: &'a BuildOptions,
    pub(super) lexer: Lexer,
    pub(super) graph: &'a Graph<'b>,
    pub(super) names: BTreeMap<String, usize>,
    resolver: &'a mut dyn BaseResolver,
    /// Resolved images by platform and reference.
    resolved: BTreeMap<(String, String), super::ResolvedBase>,
    /// The platform of the stage being planned: images it names are resolved for it, and
    /// its steps' keys carry it.
    platform: Platform,
}

/// The scope of one stage while its instructions are walked.
pub(super) struct StageState {
    pub(super) config: ImageConfig,
    /// ARGs declared in this stage so far, in order, with their values (latest wins).
    pub(super) args: Vec<(String, Option<String>)>,
    /// Every ARG declaration in order, repeats included (BuildKit's `d.buildArgs`, shown
    /// as `|N K=V ...` in RUN's history).
    arg_history: Vec<(String, Option<String>)>,
    cmd_set: bool,
}

impl StageState {
    pub(super) fn shell(&self) -> Vec<String> {
        self.config
            .config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn arg_values(&self) -> BTreeMap<String, String> {
        self.args
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect()
    }

    /// The expansion scope: ARG values, overridden by the config's Env (ENV beats ARG).
    pub(super) fn scope(&self) -> BTreeMap<String, String> {
        let mut m = self.arg_values();
        for kv in self.config.config.env.as_deref().unwrap_or_default() {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    pub(super) fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

pub(crate) fn plan_stages(
    src: &Source,
    graph: &Graph,
    opts: &BuildOptions,
    resolver: &mut dyn BaseResolver,
    escape: char,
) -> Result<Plan, PlanError> {
    let names = graph
        .stages
        .iter()
        .filter_map(|s| s.name.clone().map(|n| (n, s.index)))
        .collect();
    let mut ctx = Ctx {
        src,
        opts,
        lexer: Lexer::new(escape),
        graph,
        names,
        resolver,
        resolved: BTreeMap::new(),
        platform: opts.platform.clone(),
    };
    // Stages are planned in file order, the order BuildKit dispatches them in. An ONBUILD
    // trigger of a base image can add a `COPY --from` dependency the graph did not know:
    // that stage (and what it needs) joins the plan, ahead of its user.
    let mut pending: BTreeSet<usize> = graph.order.iter().copied().collect();
    let mut planned: BTreeSet<usize> = BTreeSet::new();
    let mut stages: Vec<Stage> = Vec::new();
    while let Some(pos) = pending.pop_first() {
        let stage = ctx.stage(pos, &stages)?;
        planned.insert(pos);
        for &d in &stage.deps {
            // What `d` needs that is not planned yet (visit skips what `seen` holds).
            let mut closure = Vec::new();
            graph::visit(&graph.stages, d, &mut planned.clone(), &mut closure);
            pending.extend(closure);
        }
        stages.push(stage);
    }
    stages.sort_by_key(|s| s.index);
    let target = stages
        .iter()
        .position(|s| s.index == graph.target)
        .unwrap_or(stages.len() - 1);

    let mut unused: Vec<&str> = opts
        .build_args
        .keys()
        .map(String::as_str)
        .filter(|k| {
            !graph.declared.contains(*k)
                && !is_proxy_arg(k)
                && *k != "SOURCE_DATE_EPOCH"
                && !k.starts_with("BUILDKIT_")
        })
        .collect();
    unused.sort_unstable();
    let mut warnings = Vec::new();
    if !unused.is_empty() {
        warnings.push(format!(
            "one or more build-args [{}] were not consumed",
            unused.join(" ")
        ));
    }
    Ok(Plan {
        stages,
        target,
        warnings,
        stages_in_file: graph.stages.len(),
    })
}

impl Ctx<'_, '_> {
    fn resolve(&mut self, line: usize, reference: &str) -> Result<super::ResolvedBase, PlanError> {
        let key = (self.platform.to_spec(), reference.to_string());
        if let Some(r) = self.resolved.get(&key) {
            return Ok(r.clone());
        }
        let r = self
            .resolver
            .resolve(reference, &self.platform)
            .map_err(|reason| {
                self.src.at(
                    line,
                    ErrorKind::Resolve {
                        reference: reference.to_string(),
                        reason,
                    },
                )
            })?;
        self.resolved.insert(key, r.clone());
        Ok(r)
    }

    fn stage(&mut self, pos: usize, done: &[Stage]) -> Result<Stage, PlanError> {
        let graph = self.graph;
        let def = &graph.stages[pos];
        self.platform = def
            .platform
            .clone()
            .unwrap_or_else(|| self.opts.platform.clone());
        let (base, mut config) = match &def.base {
            // BuildKit's empty image: WorkingDir `/` (PATH and platform are set below).
            Ref::Scratch | Ref::Context(_) => {
                let mut config = ImageConfig::default();
                config.config.working_dir = Some("/".into());
                (Base::Scratch, config)
            }
            Ref::Image(r) => {
                let resolved = self.resolve(def.line, r)?;
                let config = resolved.config.clone();
                (
                    Base::Image {
                        reference: r.clone(),
                        resolved,
                    },
                    config,
                )
            }
            Ref::Stage(i) => {
                let cfg = done
                    .iter()
                    .find(|s| s.index == *i)
                    .map(|s| s.config.clone())
                    .unwrap_or_default();
                (Base::Stage(*i), cfg)
            }
        };
        let p = &self.platform;
        if config.os.is_empty() {
            config.os = p.os.clone();
        }
        if config.architecture.is_empty() {
            config.architecture = p.architecture.clone();
            config.variant = p.variant.clone();
        }
        // BuildKit makes sure every stage has a PATH.
        if config.env_var("PATH").is_none() {
            config.set_env("PATH", DEFAULT_PATH);
        }
        // ONBUILD triggers of the base run right after FROM, then are cleared.
        let triggers = config.config.on_build.take().unwrap_or_default();
        let mut body: Vec<Located> = Vec::new();
        for t in &triggers {
            let node =
                syntax::parse_line(t, '\\', def.line).map_err(|e| self.src.at(def.line, e.kind))?;
            let instruction =
                instructions::lower(&node, '\\').map_err(|k| self.src.at(def.line, k))?;
            body.push(Located {
                line: def.line,
                end_line: def.line,
                text: node.text.clone(),
                instruction,
            });
        }
        body.extend(def.body.iter().cloned());
        let mut deps = def.deps.clone();

        let mut st = StageState {
            config,
            args: Vec::new(),
            arg_history: Vec::new(),
            cmd_set: false,
        };
        let mut steps = Vec::new();
        for (n, l) in body.iter().enumerate() {
            if n < triggers.len() {
                graph::check_earlier(
                    &l.instruction,
                    def,
                    &self.names,
                    graph.stages.len(),
                    self.opts,
                )
                .map_err(|k| self.src.at(l.line, k))?;
            }
            for from in graph::refs_of(&l.instruction) {
                if let Ok(Ref::Stage(i)) =
                    graph::resolve_ref(from, &self.names, graph.stages.len(), self.opts)
                {
                    deps.insert(i);
                }
            }
            steps.push(self.step(l, &mut st)?);
        }
        Ok(Stage {
            index: pos,
            name: def.name.clone(),
            line: def.line,
            base,
            deps: deps.into_iter().collect(),
            steps,
            config: st.config,
            platform: self.platform.clone(),
        })
    }

    fn ex(
        &self,
        line: usize,
        word: &str,
        scope: &BTreeMap<String, String>,
    ) -> Result<String, PlanError> {
        expand(&self.lexer, word, scope).map_err(|k| self.src.at(line, k))
    }

    fn step(&mut self, l: &Located, st: &mut StageState) -> Result<Step, PlanError> {
        let line = l.line;
        let scope = st.scope();
        let mut images = BTreeMap::new();
        let (op, created_by) = match &l.instruction {
            Instruction::From(_) => unreachable!("stages are split at FROM"),
            Instruction::Arg(decls) => (Op::Config, self.declare_args(line, decls, st, &scope)?),
            Instruction::Run(run) => {
                let op = self.run(line, run, st, &mut images)?;
                let created_by = format!(
                    "RUN {} # buildkit",
                    history::run_command_string(&op.argv, &st.arg_history, &st.scope())
                );
                (Op::Run(op), created_by)
            }
            Instruction::Copy(c) | Instruction::Add(c) => {
                let (op, created_by) = self.copy(line, c, st, &scope, &mut images)?;
                (Op::Copy(op), created_by)
            }
            Instruction::Workdir(w) => {
                let w = self.ex(line, w, &scope)?;
                let path = clean_path(&join_path(&st.workdir(), &w));
                st.config.config.working_dir = Some(path.clone());
                let user = st.config.config.user.clone().unwrap_or_default();
                (
                    Op::Workdir {
                        path: path.clone(),
                        user,
                    },
                    format!("WORKDIR {path}"),
                )
            }
            Instruction::Env(pairs) | Instruction::Label(pairs) => {
                let is_env = matches!(l.instruction, Instruction::Env(_));
                let mut expanded = Vec::new();
                for kv in pairs {
                    let k = self.ex(line, &kv.key, &scope)?;
                    let v = self.ex(line, &kv.value, &scope)?;
                    expanded.push(format!("{k}={v}"));
                    if is_env {
                        st.config.set_env(&k, &v);
                    } else {
                        st.config
                            .config
                            .labels
                            .get_or_insert_with(BTreeMap::new)
                            .insert(k, v);
                    }
                }
                let kw = if is_env { "ENV" } else { "LABEL" };
                (Op::Config, format!("{kw} {}", expanded.join(" ")))
            }
            Instruction::Expose(ports) => {
                let mut words = Vec::new();
                for p in ports {
                    words.extend(self.lexer.expand_words(p, &scope).map_err(|e| {
                        self.src.at(
                            line,
                            ErrorKind::Expansion {
                                word: p.clone(),
                                reason: e.to_string(),
                            },
                        )
                    })?);
                }
                let exposed = st
                    .config
                    .config
                    .exposed_ports
                    .get_or_insert_with(BTreeMap::new);
                let mut shown = Vec::new();
                for w in &words {
                    for port in parse_ports(w).map_err(|k| self.src.at(line, k))? {
                        exposed.insert(port.clone(), Empty {});
                        shown.push(port);
                    }
                }
                (Op::Config, format!("EXPOSE [{}]", shown.join(" ")))
            }
            Instruction::Volume(vols) => {
                let mut out = Vec::new();
                for v in vols {
                    let v = self.ex(line, v, &scope)?;
                    if v.trim().is_empty() {
                        return Err(self.src.at(
                            line,
                            ErrorKind::Invalid(
                                "VOLUME specified can not be an empty string".into(),
                            ),
                        ));
                    }
                    st.config
                        .config
                        .volumes
                        .get_or_insert_with(BTreeMap::new)
                        .insert(v.clone(), Empty {});
                    out.push(v);
                }
                (Op::Config, format!("VOLUME [{}]", out.join(" ")))
            }
            Instruction::User(u) => {
                let u = self.ex(line, u, &scope)?;
                st.config.config.user = Some(u.clone());
                (Op::Config, format!("USER {u}"))
            }
            Instruction::Stopsignal(s) => {
                let s = self.ex(line, s, &scope)?;
                let ok = s.chars().all(|c| c.is_ascii_digit())
                    || (s.to_ascii_uppercase().starts_with("SIG")
                        && s.len() > 3
                        && s[3..]
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-'));
                if !ok {
                    return Err(self
                        .src
                        .at(line, ErrorKind::Invalid(format!("invalid signal `{s}`"))));
                }
                st.config.config.stop_signal = Some(s.clone());
                (Op::Config, format!("STOPSIGNAL {s}"))
            }
            // Not expanded, as in BuildKit.
            Instruction::Maintainer(m) => {
                st.config.author = Some(m.clone());
                (Op::Config, format!("MAINTAINER {m}"))
            }
            Instruction::Onbuild(o) => {
                st.config
                    .config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(o.expression.clone());
                (Op::Config, format!("ONBUILD {}", o.expression))
            }
            Instruction::Shell(words) => {
                st.config.config.shell = Some(words.clone());
                (Op::Config, format!("SHELL [{}]", words.join(" ")))
            }
            Instruction::Cmd(form) | Instruction::Entrypoint(form) => {
                let argv = match form {
                    CommandForm::Exec(w) => w.clone(),
                    CommandForm::Shell(s) => {
                        let mut v = st.shell();
                        v.push(s.clone());
                        v
                    }
                };
                let text = go_quote_list(&argv);
                if matches!(l.instruction, Instruction::Cmd(_)) {
                    st.config.config.cmd = Some(argv);
                    st.cmd_set = true;
                    (Op::Config, format!("CMD {text}"))
                } else {
                    st.config.config.entrypoint = Some(argv);
                    // A new ENTRYPOINT drops the base image's CMD (not one set in this stage).
                    if !st.cmd_set {
                        st.config.config.cmd = None;
                    }
                    (Op::Config, format!("ENTRYPOINT {text}"))
                }
            }
            Instruction::Healthcheck(h) => {
                let hc = match h {
                    Healthcheck::None => HealthConfig {
                        test: Some(vec!["NONE".into()]),
                        ..Default::default()
                    },
                    Healthcheck::Check {
                        test,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => HealthConfig {
                        test: Some(test.clone()),
                        interval: *interval,
                        timeout: *timeout,
                        start_period: *start_period,
                        start_interval: *start_interval,
                        retries: *retries,
                    },
                };
                let text = history::healthcheck(&hc);
                st.config.config.healthcheck = Some(hc);
                (Op::Config, text)
            }
        };
        let key = KeyMaterial {
            instruction: l.instruction.keyword().to_string(),
            created_by: created_by.clone(),
            op: op.clone(),
            shell: st.shell(),
            build_args: st.arg_values(),
            platform: self.platform.to_spec(),
            source_date_epoch: self.opts.source_date_epoch,
            images,
        };
        Ok(Step {
            line,
            text: l.text.clone(),
            // BuildKit records no history entry for ONBUILD.
            history: !matches!(l.instruction, Instruction::Onbuild(_)),
            created_by,
            op,
            config: st.config.config.clone(),
            key,
        })
    }

    fn declare_args(
        &self,
        line: usize,
        decls: &[instructions::ArgDecl],
        st: &mut StageState,
        scope: &BTreeMap<String, String>,
    ) -> Result<String, PlanError> {
        let mut shown = Vec::new();
        for d in decls {
            let name = self.ex(line, &d.name, scope)?;
            let value = if let Some(v) = self.opts.build_args.get(&name) {
                Some(v.clone())
            } else if let Some(def) = &d.default {
                Some(self.ex(line, def, scope)?)
            } else if let Some(v) = self.graph.global_scope.get(&name) {
                Some(v.clone())
            } else if name == "SOURCE_DATE_EPOCH" {
                self.opts.source_date_epoch.map(|e| e.to_string())
            } else {
                None
            };
            shown.push(match &value {
                Some(v) => format!("{name}={v}"),
                None => name.clone(),
            });
            st.args.retain(|(k, _)| *k != name);
            st.args.push((name.clone(), value.clone()));
            st.arg_history.push((name, value));
        }
        Ok(format!("ARG {}", shown.join(" ")))
    }

    fn image_digest(
        &mut self,
        line: usize,
        reference: &str,
        images: &mut BTreeMap<String, String>,
    ) -> Result<(), PlanError> {
        let r = self.resolve(line, reference)?;
        images.insert(reference.to_string(), r.id.to_string());
        Ok(())
    }

    /// What `COPY --from=` or `RUN --mount from=` names, unexpanded as the stage graph saw
    /// it: a stage, a named context or an image, whose id then goes into the step's key.
    pub(super) fn resolve_from(
        &mut self,
        line: usize,
        from: &str,
        images: &mut BTreeMap<String, String>,
    ) -> Result<Ref, PlanError> {
        let r = graph::resolve_ref(from, &self.names, self.graph.stages.len(), self.opts)
            .map_err(|k| self.src.at(line, k))?;
        if let Ref::Image(image) = &r {
            self.image_digest(line, image, images)?;
        }
        Ok(r)
    }

    fn copy(
        &mut self,
        line: usize,
        c: &instructions::Copy,
        st: &StageState,
        scope: &BTreeMap<String, String>,
        images: &mut BTreeMap<String, String>,
    ) -> Result<(CopyOp, String), PlanError> {
        let from = match &c.from {
            None => CopyFrom::Context,
            Some(f) => match self.resolve_from(line, f, images)? {
                Ref::Stage(i) => CopyFrom::Stage(i),
                Ref::Context(n) => CopyFrom::BuildContext(n),
                Ref::Image(r) => CopyFrom::Image(r),
                Ref::Scratch => CopyFrom::Image("scratch".into()),
            },
        };
        let mut sources = Vec::new();
        let mut shown = Vec::new();
        let mut heredoc_names = Vec::new();
        for s in &c.sources {
            match s {
                instructions::CopySource::Path(p) => {
                    let p = self.ex(line, p, scope)?;
                    shown.push(p.clone());
                    let is_url = is_remote_source(&p);
                    if is_url && !c.add {
                        return Err(self.src.at(
                            line,
                            ErrorKind::Invalid(format!("source can't be a URL for COPY: `{p}`")),
                        ));
                    }
                    sources.push(if is_url && from == CopyFrom::Context {
                        CopySource::Url(p)
                    } else {
                        CopySource::Path(p)
                    });
                }
                instructions::CopySource::Heredoc(h) => {
                    let content = if h.expand {
                        expand_heredoc(&h.content, scope).map_err(|k| self.src.at(line, k))?
                    } else {
                        h.content.clone()
                    };
                    heredoc_names.push(format!("<<{}", h.name));
                    sources.push(CopySource::Heredoc {
                        name: h.name.clone(),
                        content,
                    });
                }
            }
        }
        let dest_raw = self.ex(line, &c.dest, scope)?;
        let workdir = st.workdir();
        let dest = dest_path(&workdir, &dest_raw);
        if sources.len() > 1 && !dest.ends_with('/') {
            return Err(self.src.at(line, ErrorKind::MultiSourceDest));
        }
        let opt_ex = |v: &Option<String>| -> Result<Option<String>, PlanError> {
            v.as_deref().map(|v| self.ex(line, v, scope)).transpose()
        };
        let chmod = match opt_ex(&c.chmod)? {
            Some(m) => Some(
                Chmod::parse(&m).map_err(|_| self.src.at(line, ErrorKind::BadChmod(m.clone())))?,
            ),
            None => None,
        };
        let git = sources
            .iter()
            .any(|s| matches!(s, CopySource::Url(u) if is_git_url(u)));
        let mut chown = opt_ex(&c.chown)?;
        // A linked layer is made on an empty filesystem (BuildKit's MergeOp, used when no
        // --chmod is given): there is no /etc/passwd to look a name up in. BuildKit refuses
        // such names at parse time (moby/buildkit#7134); `root` and numbers need no lookup.
        if c.link && chmod.is_none() {
            if let Some(ch) = &chown {
                let named = ch
                    .split(':')
                    .any(|part| part != "root" && part.parse::<u32>().is_err());
                if named {
                    return Err(self.src.at(
                        line,
                        ErrorKind::Invalid(format!(
                            "--chown={ch} with --link: a linked layer is made without the image's /etc/passwd and /etc/group, so names cannot be looked up; give numeric ids (--chown=UID:GID) or drop --link"
                        )),
                    ));
                }
                // BuildKit reads `root` as id 0 without a lookup (llb's parseUID).
                let ids: Vec<&str> = ch
                    .split(':')
                    .map(|part| if part == "root" { "0" } else { part })
                    .collect();
                chown = Some(ids.join(":"));
            }
        }
        let checksum = opt_ex(&c.checksum)?;
        if checksum.is_some() {
            let http = matches!(sources.as_slice(), [CopySource::Url(u)] if u.starts_with("http"));
            if !http && !git {
                return Err(self.src.at(
                    line,
                    ErrorKind::Invalid(
                        "checksum can only be specified for a single HTTP(S) source".into(),
                    ),
                ));
            }
        }
        let mut excludes = Vec::new();
        for e in &c.excludes {
            excludes.push(self.ex(line, e, scope)?);
        }
        let op = CopyOp {
            add: c.add,
            sources,
            dest,
            workdir,
            from,
            chown,
            chmod,
            link: c.link,
            parents: c.parents,
            excludes,
            checksum,
            keep_git_dir: c.keep_git_dir,
            unpack: c.unpack,
        };
        let created_by = history::copy(&op, shown, heredoc_names, dest_raw);
        Ok((op, created_by))
    }
}

/// A COPY/ADD source that names something to fetch (http(s), or a git repository by
/// `git@host:`, `git://` or `ssh://`) rather than a path in the context.
pub fn is_remote_source(src: &str) -> bool {
    ["http://", "https://", "git@", "git://", "ssh://"]
        .iter()
        .any(|scheme| src.starts_with(scheme))
}

/// Whether BuildKit would clone `url` rather than download it: `git://`, `git@host:`,
/// `ssh://`, or a path ending in `.git` (before a `?query` or `#ref` fragment).
pub fn is_git_url(url: &str) -> bool {
    let path = url.split(['#', '?']).next().unwrap_or(url);
    url.starts_with("git://")
        || url.starts_with("git@")
        || url.starts_with("ssh://")
        || path.trim_end_matches('/').ends_with(".git")
}

/// Expand a COPY/ADD heredoc body whose delimiter is unquoted, as BuildKit's `ExpandRaw`
/// does: its lexer with `\` whatever the escape directive says and quotes left alone
/// (`SkipProcessQuotes`). `$name` is substituted and escapes act as outside quotes
/// (`\\` -> `\`, `\$` -> `$`, `\x` -> `x`, a `\` before a newline is dropped), while `'`
/// and `"` are file content.
fn expand_heredoc(content: &str, scope: &BTreeMap<String, String>) -> Result<String, ErrorKind> {
    expand(&Lexer::new('\\').with_skip_quotes(true), content, scope)
}

/// `dest` made absolute against `workdir`; a trailing `/` (or `.`) means a directory and is
/// kept as a trailing `/`.
pub(crate) fn dest_path(workdir: &str, dest: &str) -> String {
    let dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest.is_empty();
    let p = clean_path(&join_path(workdir, dest));
    if dir && p != "/" {
        format!("{p}/")
    } else {
        p
    }
}

pub(crate) fn join_path(base: &str, p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), p)
    }
}

/// Go's `path.Clean` for absolute paths, with the one lexical cleaner.
pub(crate) fn clean_path(p: &str) -> String {
    format!("/{}", crate::sandbox::root::clean(p))
}

/// `80`, `80/udp`, `8000-8002/tcp` -> `["80/tcp"]`, ... (docker's nat.ParsePortSpecs).
pub(crate) fn parse_ports(spec: &str) -> Result<Vec<String>, ErrorKind> {
    let bad = || ErrorKind::BadPort(spec.to_string());
    let (range, proto) = match spec.split_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let port = |s: &str| s.parse::<u16>().map_err(|_| bad());
    let (lo, hi) = match range.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(range)?, port(range)?),
    };
    if hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(dest_path("/app", "."), "/app/");
        assert_eq!(dest_path("/app", "x/../y"), "/app/y");
        assert_eq!(dest_path("/", "/etc/"), "/etc/");
        assert_eq!(dest_path("/a", "/"), "/");
        assert_eq!(clean_path("/a/./b//c/.."), "/a/b");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(parse_ports("53-54/UDP").unwrap(), vec!["53/udp", "54/udp"]);
        assert!(parse_ports("80/foo").is_err());
        assert!(parse_ports("9-1").is_err());
        assert!(parse_ports("70000").is_err());
    }
}
