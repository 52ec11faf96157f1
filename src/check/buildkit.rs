//! BuildKit's rules, in the order BuildKit's frontend runs them: while parsing
//! (NoEmptyContinuation, MaintainerDeprecated, StageNameCasing, FromAsCasing,
//! InvalidDefinitionDescription), over the whole file (ReservedStageName,
//! DuplicateStageName, ConsistentInstructionCasing, InvalidDefaultArgInFrom), per FROM
//! (UndefinedArgInFrom, RedundantTargetPlatform, FromPlatformFlagConstDisallowed,
//! InvalidBaseImagePlatform), then per instruction of every stage that is dispatched
//! (the target's stages, or all of them for `rbuild check`), with the stage's ARG/ENV scope
//! (UndefinedVar, WorkdirRelativePath, LegacyKeyValueFormat, SecretsUsedInArgOrEnv,
//! JSONArgsRecommended, MultipleInstructionsDisallowed, ExposeProtoCasing,
//! ExposeInvalidFormat, CopyIgnoredFile). rbuild's own rules ([`super::hygiene`]) run in
//! the same walk.
//!
//! The scope is the checks' own light walk, not the planner's: the planner plans only the
//! target's stages, with build args applied and bases resolved for real, while BuildKit's
//! lint also walks unused stages and judges FROM with default arguments.

use std::collections::{BTreeMap, BTreeSet};

use super::rules::*;
use super::{BaseImage, BaseImages, CheckError, CheckOptions, Linter, Span};
use crate::dockerfile::instructions::{self, CommandForm, CopySource, Instruction};
use crate::dockerfile::shell::{Expansion, Lexer};
use crate::dockerfile::syntax::{self, Node};
use crate::dockerfile::{suggest, ErrorKind};
use crate::plan::{BuildOptions, Source};

/// Args that never become environment variables (BuildKit's `nonEnvArgs`).
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

const RESERVED_STAGE_NAMES: [&str; 2] = ["context", "scratch"];

/// One stage: its FROM node and the instructions up to the next FROM.
struct StageDef {
    from: usize,
    /// `FROM image AS Name`: the name as written.
    name_as_written: Option<String>,
    /// Lowercased, as BuildKit compares stage names.
    name: Option<String>,
    image: String,
    platform: Option<String>,
    body: std::ops::Range<usize>,
}

/// The scope at the end of a stage, inherited by a stage built `FROM` it.
#[derive(Clone, Default)]
pub(super) struct Scope {
    pub env: BTreeMap<String, String>,
    /// ARG names declared in the stage (with or without a value).
    pub declared: BTreeSet<String>,
    /// Whether the base's env is known (an unresolved base makes UndefinedVar guess).
    pub env_known: bool,
    /// A SHELL is set (by the base image's config or a SHELL instruction).
    pub shell: Option<Vec<String>>,
    /// A WORKDIR was set in this stage or a stage it is built on.
    pub workdir_set: bool,
}

pub(super) fn run(
    text: &str,
    opts: &CheckOptions,
    bases: &mut dyn BaseImages,
    lint: &mut Linter,
) -> Result<(), CheckError> {
    let src = Source {
        name: opts.file_name,
        text,
    };
    let (ast, located) = instructions::parse(text).map_err(|e| src.line_error(e))?;
    let nodes = &ast.nodes;
    let typed: Vec<&Instruction> = located.iter().map(|l| &l.instruction).collect();
    let lexer = Lexer::new(ast.escape);

    // While parsing.
    for node in nodes {
        if let Some(line) = node.empty_continuation {
            let span = lint.line_span(line);
            lint.at_span(
                &NO_EMPTY_CONTINUATION,
                span,
                "Empty continuation line".into(),
            );
        }
    }
    for (node, instruction) in nodes.iter().zip(&typed) {
        match instruction {
            Instruction::Maintainer(_) => lint.at(
                &MAINTAINER_DEPRECATED,
                node,
                "Maintainer instruction is deprecated in favor of using label".into(),
            ),
            Instruction::From(from) => {
                let words: Vec<&str> = node.args.split_whitespace().collect();
                if let [_, as_kw, name] = words.as_slice() {
                    if *name != name.to_lowercase() {
                        lint.at(
                            &STAGE_NAME_CASING,
                            node,
                            format!("Stage name '{name}' should be lowercase"),
                        );
                    }
                    if !from_matches_as(&node.keyword, as_kw) {
                        lint.at(
                            &FROM_AS_CASING,
                            node,
                            format!(
                                "'{as_kw}' and '{}' keywords' casing do not match",
                                node.keyword
                            ),
                        );
                    }
                }
                if let Some(name) = &from.name {
                    definition_description(lint, node, "FROM", &[name.as_str()]);
                }
            }
            Instruction::Arg(decls) => {
                let keys: Vec<&str> = decls.iter().map(|d| d.name.as_str()).collect();
                definition_description(lint, node, "ARG", &keys);
            }
            _ => {}
        }
    }

    // Stages.
    let Some(first_from) = typed.iter().position(|i| matches!(i, Instruction::From(_))) else {
        return Err(src.file(ErrorKind::MissingFrom).into());
    };
    let mut stages = Vec::new();
    for (i, instruction) in typed.iter().enumerate() {
        if let Instruction::From(from) = instruction {
            let words: Vec<&str> = nodes[i].args.split_whitespace().collect();
            stages.push(StageDef {
                from: i,
                name_as_written: words.get(2).map(|s| s.to_string()),
                name: from.name.clone(),
                image: from.image.clone(),
                platform: from.platform.clone(),
                body: i + 1..typed.len(),
            });
        }
    }
    for k in 1..stages.len() {
        stages[k - 1].body.end = stages[k].from;
    }

    // Whole file.
    let mut seen = BTreeSet::new();
    for st in &stages {
        let Some(name) = &st.name else { continue };
        let span = lint.span_of(&nodes[st.from]);
        if RESERVED_STAGE_NAMES.contains(&name.as_str()) {
            lint.at_span(
                &RESERVED_STAGE_NAME,
                span,
                format!("Stage name should not use the same name as reserved stage \"{name}\""),
            );
        }
        if !seen.insert(name.clone()) {
            lint.at_span(
                &DUPLICATE_STAGE_NAME,
                span,
                format!("Duplicate stage name \"{name}\", stage names should be unique"),
            );
        }
    }
    instruction_casing(lint, nodes, first_from);

    // Global ARGs: with defaults only (InvalidDefaultArgInFrom), then with the build args.
    let last_name = stages.last().and_then(|s| s.name_as_written.as_deref());
    let automatic = crate::plan::automatic_args(
        &BuildOptions {
            target: opts.target.map(str::to_string),
            platform: opts.platform.clone(),
            ..Default::default()
        },
        last_name,
    );
    let meta: Vec<&instructions::ArgDecl> = typed[..first_from]
        .iter()
        .filter_map(|i| match i {
            Instruction::Arg(decls) => Some(decls.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    let no_args = BTreeMap::new();
    if let Some(defaults) = meta_args(&lexer, &automatic, &meta, &no_args) {
        for st in &stages {
            let Ok(e) = lexer.expand(&st.image, &defaults) else {
                break;
            };
            if e.word.parse::<crate::image::Reference>().is_err() {
                let span = lint.span_of(&nodes[st.from]);
                lint.at_span(
                    &INVALID_DEFAULT_ARG_IN_FROM,
                    span,
                    format!(
                        "Default value for ARG {} results in empty or invalid base image name",
                        st.image
                    ),
                );
            }
        }
    }
    let global = meta_args(&lexer, &automatic, &meta, &opts.build_args).unwrap_or_default();
    let mut arg_keys: BTreeSet<String> = meta.iter().map(|d| d.name.clone()).collect();
    arg_keys.extend(global.keys().cloned());
    let arg_keys: Vec<&str> = arg_keys.iter().map(String::as_str).collect();

    // Per FROM, every stage.
    let mut images: Vec<Option<String>> = Vec::new();
    for st in &stages {
        let node = &nodes[st.from];
        let base = lexer.expand(&st.image, &global).ok();
        if let Some(e) = &base {
            undefined_in_from(lint, node, e, &arg_keys);
        }
        images.push(base.map(|e| e.word));
        let Some(platform) = &st.platform else {
            continue;
        };
        let Ok(e) = lexer.expand(platform, &global) else {
            continue;
        };
        undefined_in_from(lint, node, &e, &arg_keys);
        if e.unmatched.is_empty()
            && e.matched.len() == 1
            && e.matched.contains("TARGETPLATFORM")
            && global.get("TARGETPLATFORM") == Some(&e.word)
        {
            lint.at(
                &REDUNDANT_TARGET_PLATFORM,
                node,
                format!("Setting platform to predefined {platform} in FROM is redundant as this is the default behavior"),
            );
        }
        if e.matched.is_empty() && e.unmatched.is_empty() {
            if let Some((os, arch)) = parse_platform(&e.word) {
                let name = st.name.as_deref().unwrap_or("");
                if !name.contains(&os) && !name.contains(&arch) {
                    lint.at(
                        &FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                        node,
                        format!(
                            "FROM --platform flag should not use constant value \"{}\"",
                            e.word
                        ),
                    );
                }
            }
        }
    }

    // Per instruction, in the stages that are dispatched.
    let dispatched = dispatched_stages(&stages, &typed, opts)
        .map_err(|kind| CheckError::from(src.file(kind)))?;
    let mut scopes: Vec<Option<Scope>> = vec![None; stages.len()];
    for (k, st) in stages.iter().enumerate() {
        if !dispatched.contains(&k) {
            continue;
        }
        let image = images[k].clone().unwrap_or_default();
        let from_stage = stages[..k]
            .iter()
            .position(|s| s.name.as_deref() == Some(image.to_lowercase().as_str()));
        // A stage built on another starts with its scope: env, declared args, SHELL and
        // whether WORKDIR was set (BuildKit's dispatchState.init).
        let mut scope = match from_stage.and_then(|b| scopes[b].clone()) {
            Some(parent) => parent,
            None if image == "scratch" => Scope {
                env_known: true,
                ..Default::default()
            },
            None => match bases.lookup(&image) {
                Some(base) => {
                    base_platform(
                        lint,
                        &nodes[st.from],
                        st,
                        &image,
                        &base,
                        &global,
                        &lexer,
                        opts,
                    );
                    Scope {
                        env: base.env.into_iter().collect(),
                        env_known: true,
                        shell: base.shell.then(Vec::new),
                        declared: BTreeSet::new(),
                        workdir_set: false,
                    }
                }
                None => Scope::default(),
            },
        };
        // BuildKit sets PATH when the image has none.
        scope.env.entry("PATH".into()).or_insert_with(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        let mut walk = StageWalk {
            lint: &mut *lint,
            lexer,
            scope,
            global: &global,
            opts,
            cmd: None,
            entrypoint: None,
            healthcheck: None,
            hygiene: super::hygiene::Stage::default(),
        };
        for i in st.body.clone() {
            walk.instruction(&nodes[i], typed[i]);
        }
        scopes[k] = Some(walk.scope);
    }
    Ok(())
}

/// BuildKit's `doesFromCaseMatchAsCase`: only judged when FROM itself is all lower or all
/// upper case (mixed case is ConsistentInstructionCasing's business).
fn from_matches_as(from: &str, as_kw: &str) -> bool {
    if from == from.to_lowercase() {
        as_kw == as_kw.to_lowercase()
    } else if from == from.to_uppercase() {
        as_kw == as_kw.to_uppercase()
    } else {
        true
    }
}

/// InvalidDefinitionDescription (experimental): the comment right above a named FROM or an
/// ARG must start with the name it describes.
fn definition_description(lint: &mut Linter, node: &Node, instruction: &str, keys: &[&str]) {
    let (Some(last), Some(first_key)) = (node.comments.last(), keys.first()) else {
        return;
    };
    let first_word = last.split(' ').next().unwrap_or("");
    if keys.contains(&first_word) {
        return;
    }
    let example = if keys.len() > 1 {
        "<arg_key>"
    } else {
        first_key
    };
    lint.at(
        &INVALID_DEFINITION_DESCRIPTION,
        node,
        format!("Comment for {instruction} should follow the format: `# {example} <description>`"),
    );
}

/// ConsistentInstructionCasing over the FROMs and the instructions of every stage (not the
/// global ARGs): the majority casing wins, ties go to upper case.
fn instruction_casing(lint: &mut Linter, nodes: &[Node], first_from: usize) {
    let staged = &nodes[first_from..];
    let (mut lower, mut upper) = (0, 0);
    for n in staged {
        if n.keyword == n.keyword.to_lowercase() {
            lower += 1;
        } else if n.keyword == n.keyword.to_uppercase() {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for n in staged {
        let wrong = if majority_lower {
            (n.keyword != n.keyword.to_lowercase()).then_some("lowercase")
        } else {
            (n.keyword != n.keyword.to_uppercase()).then_some("uppercase")
        };
        if let Some(casing) = wrong {
            let span = lint.span_of(n);
            lint.at_span(
                &CONSISTENT_INSTRUCTION_CASING,
                span,
                format!(
                    "Command '{}' should match the case of the command majority ({casing})",
                    n.keyword
                ),
            );
        }
    }
}

/// BuildKit's `buildMetaArgs`: the automatic args, then each global ARG's build arg, else
/// its expanded default. `None` when a default does not expand.
fn meta_args(
    lexer: &Lexer,
    automatic: &BTreeMap<String, String>,
    meta: &[&instructions::ArgDecl],
    build_args: &BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let mut scope = automatic.clone();
    for decl in meta {
        if let Some(v) = build_args.get(&decl.name) {
            scope.insert(decl.name.clone(), v.clone());
        } else if let Some(default) = &decl.default {
            let v = lexer.expand_word(default, &scope).ok()?;
            scope.insert(decl.name.clone(), v);
        }
    }
    Some(scope)
}

fn undefined_in_from(lint: &mut Linter, node: &Node, e: &Expansion, arg_keys: &[&str]) {
    for name in &e.unmatched {
        if arg_keys.contains(&name.as_str()) {
            continue;
        }
        let message = match suggest(name, arg_keys, true) {
            Some(s) => format!("FROM argument '{name}' is not declared (did you mean {s}?)"),
            None => format!("FROM argument '{name}' is not declared"),
        };
        lint.at(&UNDEFINED_ARG_IN_FROM, node, message);
    }
}

/// containerd's `platforms.Parse`, reduced to what the rule needs: the OS and the
/// architecture (normalized), or None when `spec` is no platform.
fn parse_platform(spec: &str) -> Option<(String, String)> {
    const OSES: [&str; 8] = [
        "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos",
    ];
    let norm = |a: &str| -> String {
        match a.to_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".into(),
            "aarch64" => "arm64".into(),
            "i386" | "i686" => "386".into(),
            "armhf" | "armel" => "arm".into(),
            other => other.into(),
        }
    };
    let parts: Vec<&str> = spec.split('/').collect();
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !parts.iter().all(|p| valid(p)) {
        return None;
    }
    match parts.as_slice() {
        [one] if OSES.contains(&one.to_lowercase().as_str()) => {
            Some((one.to_lowercase(), std::env::consts::ARCH.into()))
        }
        [one] => Some(("linux".into(), norm(one))),
        [os, arch] | [os, arch, _] => Some((os.to_lowercase(), norm(arch))),
        _ => None,
    }
}

/// InvalidBaseImagePlatform: the image's config says another OS or architecture than the
/// stage's platform (`FROM --platform`, else the build's).
#[allow(clippy::too_many_arguments)]
fn base_platform(
    lint: &mut Linter,
    node: &Node,
    st: &StageDef,
    image: &str,
    base: &BaseImage,
    global: &BTreeMap<String, String>,
    lexer: &Lexer,
    opts: &CheckOptions,
) {
    if base.os.is_empty() || base.architecture.is_empty() {
        return;
    }
    let mut expected = opts.platform.clone();
    if let Some(p) = &st.platform {
        let Ok(word) = lexer.expand_word(p, global) else {
            return;
        };
        let Some((os, arch)) = parse_platform(&word) else {
            return;
        };
        let variant = word.split('/').nth(2).map(str::to_string);
        expected = crate::image::Platform {
            os,
            architecture: arch,
            variant,
            os_version: None,
        };
    }
    if expected.os != base.os || expected.architecture != base.architecture {
        let actual = match &base.variant {
            Some(v) => format!("{}/{}/{v}", base.os, base.architecture),
            None => format!("{}/{}", base.os, base.architecture),
        };
        let span = lint.span_of(node);
        lint.at_span(
            &INVALID_BASE_IMAGE_PLATFORM,
            span,
            format!(
                "Base image {image} was pulled with platform \"{actual}\", expected \"{}\" for current build",
                expected.to_spec()
            ),
        );
    }
}

/// The stages a build dispatches: every stage for `rbuild check` without a target, else the
/// target and what it needs (FROM a stage, `COPY --from`, `RUN --mount from=`).
fn dispatched_stages(
    stages: &[StageDef],
    typed: &[&Instruction],
    opts: &CheckOptions,
) -> Result<BTreeSet<usize>, ErrorKind> {
    if opts.all_stages && opts.target.is_none() {
        return Ok((0..stages.len()).collect());
    }
    let find = |name: &str, before: usize| -> Option<usize> {
        let lower = name.to_lowercase();
        stages[..before]
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().filter(|i| *i < before))
    };
    let target = match opts.target {
        None => stages.len() - 1,
        Some(t) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_lowercase().as_str()))
            .ok_or_else(|| ErrorKind::UnknownTarget {
                target: t.to_string(),
                stages: stages.iter().filter_map(|s| s.name.clone()).collect(),
                suggestion: String::new(),
            })?,
    };
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(k) = todo.pop() {
        if !needed.insert(k) {
            continue;
        }
        let st = &stages[k];
        let mut refs: Vec<&str> = vec![st.image.as_str()];
        for i in st.body.clone() {
            match typed[i] {
                Instruction::Copy(c) => refs.extend(c.from.as_deref()),
                Instruction::Run(r) => {
                    refs.extend(r.mounts.iter().filter_map(|m| m.from.as_deref()))
                }
                _ => {}
            }
        }
        todo.extend(refs.into_iter().filter_map(|r| find(r, k)));
    }
    Ok(needed)
}

/// One stage's instructions in order, with its scope.
struct StageWalk<'l, 't, 'o> {
    lint: &'l mut Linter<'t>,
    lexer: Lexer,
    scope: Scope,
    global: &'o BTreeMap<String, String>,
    opts: &'o CheckOptions<'o>,
    cmd: Option<Span>,
    entrypoint: Option<Span>,
    healthcheck: Option<Span>,
    hygiene: super::hygiene::Stage,
}

impl StageWalk<'_, '_, '_> {
    /// Expand `word` in the stage's scope, reporting UndefinedVar for `node`.
    fn expand(&mut self, node: &Node, word: &str) -> Option<String> {
        let e = self.lexer.expand(word, &self.scope.env).ok()?;
        self.undefined(node, &e.unmatched);
        Some(e.word)
    }

    fn undefined(&mut self, node: &Node, unmatched: &BTreeSet<String>) {
        if !self.scope.env_known {
            return;
        }
        let keys: Vec<&str> = self.scope.env.keys().map(String::as_str).collect();
        for name in unmatched {
            if self.scope.declared.contains(name) || NON_ENV_ARGS.contains(&name.as_str()) {
                continue;
            }
            let message = match suggest(name, &keys, true) {
                Some(s) => format!("Usage of undefined variable '${name}' (did you mean ${s}?)"),
                None => format!("Usage of undefined variable '${name}'"),
            };
            self.lint.at(&UNDEFINED_VAR, node, message);
        }
    }

    fn legacy_key_value(&mut self, node: &Node) {
        let words = syntax::split_words(&node.args, self.lexer.escape);
        if words.first().is_some_and(|w| !w.contains('=')) {
            self.lint.at(
                &LEGACY_KEY_VALUE_FORMAT,
                node,
                format!(
                    "\"{0} key=value\" should be used instead of legacy \"{0} key value\" format",
                    node.keyword
                ),
            );
        }
    }

    fn secret_key(&mut self, node: &Node, instruction: &str, key: &str) {
        if looks_secret(key) {
            self.lint.at(
                &SECRETS_USED_IN_ARG_OR_ENV,
                node,
                format!("Do not use ARG or ENV instructions for sensitive data ({instruction} \"{key}\")"),
            );
        }
    }

    fn instruction(&mut self, node: &Node, instruction: &Instruction) {
        match instruction {
            Instruction::Env(pairs) => {
                self.legacy_key_value(node);
                for kv in pairs {
                    self.secret_key(node, "ENV", &kv.key);
                    let key = self.expand(node, &kv.key).unwrap_or_else(|| kv.key.clone());
                    if let Some(v) = self.expand(node, &kv.value) {
                        self.scope.env.insert(key, v);
                    }
                }
            }
            Instruction::Label(pairs) => {
                self.legacy_key_value(node);
                for kv in pairs {
                    self.expand(node, &kv.key);
                    self.expand(node, &kv.value);
                }
            }
            Instruction::Arg(decls) => {
                for d in decls {
                    self.secret_key(node, "ARG", &d.name);
                    let value = if let Some(v) = self.opts.build_args.get(&d.name) {
                        Some(v.clone())
                    } else if let Some(default) = &d.default {
                        self.expand(node, default)
                    } else {
                        self.global.get(&d.name).cloned()
                    };
                    if let Some(v) = value {
                        if !NON_ENV_ARGS.contains(&d.name.as_str()) {
                            self.scope.env.insert(d.name.clone(), v);
                        }
                    }
                    self.scope.declared.insert(d.name.clone());
                }
            }
            Instruction::Workdir(path) => {
                if let Some(path) = self.expand(node, path) {
                    if !self.scope.workdir_set && !path.starts_with('/') {
                        self.lint.at(
                            &WORKDIR_RELATIVE_PATH,
                            node,
                            format!("Relative workdir \"{path}\" can have unexpected results if the base image changes"),
                        );
                    }
                }
                self.scope.workdir_set = true;
            }
            Instruction::User(word) | Instruction::Stopsignal(word) => {
                self.expand(node, word);
            }
            Instruction::Volume(words) => {
                for w in words {
                    self.expand(node, w);
                }
            }
            // EXPOSE splits its words and does not report unset variables (BuildKit's
            // dispatchExpose uses ProcessWords outside the Expand hook).
            Instruction::Expose(ports) => {
                for p in ports {
                    let words = self
                        .lexer
                        .expand_words(p, &self.scope.env)
                        .unwrap_or_default();
                    for port in words {
                        self.expose(node, &port);
                    }
                }
            }
            Instruction::Copy(c) | Instruction::Add(c) => {
                let mut sources = Vec::new();
                for s in &c.sources {
                    match s {
                        CopySource::Path(p) => {
                            if let Some(p) = self.expand(node, p) {
                                sources.push(p);
                            }
                        }
                        // An unquoted heredoc's body is expanded raw (BuildKit's ExpandRaw:
                        // `\` escapes, quotes kept).
                        CopySource::Heredoc(h) if h.expand => {
                            let raw = Lexer::new('\\').with_skip_quotes(true);
                            if let Ok(e) = raw.expand(&h.content, &self.scope.env) {
                                self.undefined(node, &e.unmatched);
                            }
                        }
                        CopySource::Heredoc(_) => {}
                    }
                }
                self.expand(node, &c.dest);
                for w in [&c.chown, &c.chmod, &c.checksum].into_iter().flatten() {
                    self.expand(node, w);
                }
                if c.from.is_none() {
                    for s in &sources {
                        if !crate::plan::is_remote_source(s) {
                            self.ignored_source(node, c.add, s);
                        }
                    }
                }
                self.hygiene.copy(self.lint, node, c, &sources, self.opts);
            }
            Instruction::Cmd(form) | Instruction::Entrypoint(form) => {
                let is_cmd = matches!(instruction, Instruction::Cmd(_));
                self.once(node, if is_cmd { Slot::Cmd } else { Slot::Entrypoint });
                if matches!(form, CommandForm::Shell(_)) && self.scope.shell.is_none() {
                    self.lint.at(
                        &JSON_ARGS_RECOMMENDED,
                        node,
                        format!(
                            "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                            node.keyword
                        ),
                    );
                }
            }
            Instruction::Healthcheck(_) => self.once(node, Slot::Healthcheck),
            Instruction::Shell(words) => self.scope.shell = Some(words.clone()),
            Instruction::Run(run) => {
                // Mount options are expanded (BuildKit's setMountState); the command is the
                // shell's business.
                for m in &run.mounts {
                    let mut unmatched = BTreeSet::new();
                    let env = &self.scope.env;
                    let lexer = self.lexer;
                    let _ = instructions::parse_mount(&m.raw, &mut |v: &str| {
                        let e = lexer.expand(v, env).map_err(|e| ErrorKind::Expansion {
                            word: v.to_string(),
                            reason: e.to_string(),
                        })?;
                        unmatched.extend(e.unmatched);
                        Ok(e.word)
                    });
                    self.undefined(node, &unmatched);
                }
                self.hygiene
                    .run(self.lint, node, run, self.scope.shell.as_deref());
            }
            Instruction::From(_) | Instruction::Maintainer(_) | Instruction::Onbuild(_) => {}
        }
    }

    /// MultipleInstructionsDisallowed: reported at the earlier instruction, the one that
    /// has no effect, with the later one's `# check=` comments (as BuildKit).
    fn once(&mut self, node: &Node, slot: Slot) {
        let span = self.lint.span_of(node);
        let previous = match slot {
            Slot::Cmd => self.cmd.replace(span),
            Slot::Entrypoint => self.entrypoint.replace(span),
            Slot::Healthcheck => self.healthcheck.replace(span),
        };
        if let Some(previous) = previous {
            self.lint.at_span_with_comments(
                &MULTIPLE_INSTRUCTIONS_DISALLOWED,
                previous,
                node,
                format!(
                    "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                    node.keyword
                ),
            );
        }
    }

    /// CopyIgnoredFile: a local source that .dockerignore excludes. As BuildKit, only when
    /// the ignore file has no `!` exceptions (they make a static answer unreliable).
    fn ignored_source(&mut self, node: &Node, add: bool, src: &str) {
        let Some(ignore) = self.opts.ignore else {
            return;
        };
        let patterns = ignore.patterns();
        if patterns.is_empty() || patterns.iter().any(|p| p.starts_with('!')) {
            return;
        }
        // Go's filepath.Clean, as the message shows it.
        let cleaned = match (src.starts_with('/'), crate::sandbox::root::clean(src)) {
            (true, c) => format!("/{c}"),
            (false, c) if c.is_empty() => ".".to_string(),
            (false, c) => c,
        };
        let hit = if cleaned == "." || cleaned == "/" {
            // The context root: only a pattern that excludes every entry ignores it.
            patterns
                .iter()
                .any(|p| matches!(p.as_str(), "*" | "**" | "**/*"))
        } else {
            ignore.matches(cleaned.trim_start_matches('/'))
        };
        if hit {
            self.lint.at(
                &COPY_IGNORED_FILE,
                node,
                format!(
                    "Attempting to {} file \"{cleaned}\" that is excluded by .dockerignore",
                    if add { "Add" } else { "Copy" }
                ),
            );
        }
    }

    /// ExposeProtoCasing and ExposeInvalidFormat on one expanded port spec
    /// (`[ip:][host:]port[/proto]`).
    fn expose(&mut self, node: &Node, raw: &str) {
        let parts: Vec<&str> = raw.split(':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c] => ("".to_string(), "", *c),
            [h, c] => ("".to_string(), *h, *c),
            [ip, h, c] => (ip.to_string(), *h, *c),
            more => (
                more[..more.len() - 2].join(":"),
                more[more.len() - 2],
                more[more.len() - 1],
            ),
        };
        let proto = container.split_once('/').map_or("tcp", |(_, p)| p);
        if proto != proto.to_lowercase() {
            self.lint.at(
                &EXPOSE_PROTO_CASING,
                node,
                format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase"),
            );
        }
        if !ip.is_empty() || !host.is_empty() {
            self.lint.at(
                &EXPOSE_INVALID_FORMAT,
                node,
                format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"),
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Cmd,
    Entrypoint,
    Healthcheck,
}

/// BuildKit's secrets pattern: a whole key or its first/last `_`-separated word is one of
/// the secret tokens, unless a word is `public`, `file` or `version`. Case-insensitive.
pub(super) fn looks_secret(key: &str) -> bool {
    const DENY: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: [&str; 3] = ["public", "file", "version"];
    let lower = key.to_lowercase();
    let words: Vec<&str> = lower.split('_').collect();
    // `(?:_|^)TOKEN(?:_|$)`: TOKEN is one whole `_`-separated word.
    let has = |list: &[&str]| words.iter().any(|w| list.contains(w));
    has(&DENY) && !has(&ALLOW)
}
