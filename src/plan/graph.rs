//! The stage graph: stages split at FROM, FROM expanded with the global ARGs (declared before
//! the first FROM) and the automatic platform args, edges from `FROM <stage>`, `COPY --from`
//! and `RUN --mount from=`, cycles refused, pruned to the target.

use std::collections::{BTreeMap, BTreeSet};

use super::{BuildOptions, Source};
use crate::dockerfile::instructions::{Instruction, Located};
use crate::dockerfile::shell::Lexer;
use crate::dockerfile::ErrorKind;
use crate::image::Platform;
use crate::plan::PlanError;

/// What a FROM, `COPY --from` or `--mount from=` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ref {
    Scratch,
    Stage(usize),
    Image(String),
    Context(String),
}

pub(crate) struct StageDef<'a> {
    pub index: usize,
    pub name: Option<String>,
    pub line: usize,
    pub base: Ref,
    /// Instructions after FROM, up to the next FROM.
    pub body: &'a [Located],
    pub deps: BTreeSet<usize>,
    /// `FROM --platform=...`, expanded and parsed; none: the build's target platform.
    pub platform: Option<Platform>,
}

pub(crate) struct Graph<'a> {
    /// The scope after the global ARGs (declared before the first FROM): the automatic
    /// args, then each global ARG's build arg or expanded default. A stage's `ARG NAME`
    /// without a default takes its value from here.
    pub global_scope: BTreeMap<String, String>,
    pub stages: Vec<StageDef<'a>>,
    /// Positions of the needed stages, dependencies first.
    pub order: Vec<usize>,
    pub target: usize,
    /// Every ARG name declared anywhere (for unused --build-arg warnings).
    pub declared: BTreeSet<String>,
}

/// The automatic args: BuildKit's TARGET*/BUILD* platform args (the target platform of this
/// pass, the host's) and TARGETSTAGE, the `--target` as given, else the last stage's name,
/// else `default`.
pub(crate) fn automatic_args(
    opts: &BuildOptions,
    last_stage_name: Option<&str>,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let target = opts.target.as_deref().or(last_stage_name);
    m.insert("TARGETSTAGE".into(), target.unwrap_or("default").into());
    let build = build_platform();
    for (prefix, p) in [("TARGET", &opts.platform), ("BUILD", &build)] {
        // As BuildKit formats them: normalized, so `linux/arm64`, not `linux/arm64/v8`.
        let p = Platform::parse(&p.to_spec()).unwrap_or_else(|_| p.clone());
        m.insert(format!("{prefix}PLATFORM"), p.to_spec());
        m.insert(format!("{prefix}OS"), p.os.clone());
        m.insert(format!("{prefix}ARCH"), p.architecture.clone());
        m.insert(
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        );
    }
    m
}

pub(crate) fn expand(
    lexer: &Lexer,
    word: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, ErrorKind> {
    lexer
        .expand_word(word, env)
        .map_err(|e| ErrorKind::Expansion {
            word: word.to_string(),
            reason: e.to_string(),
        })
}

pub(crate) fn build<'a>(
    src: &Source,
    located: &'a [Located],
    opts: &BuildOptions,
    escape: char,
) -> Result<Graph<'a>, PlanError> {
    let lexer = Lexer::new(escape);
    if located.is_empty() {
        return Err(src.file(ErrorKind::Empty));
    }
    let mut declared = BTreeSet::new();
    for l in located {
        if let Instruction::Arg(decls) = &l.instruction {
            declared.extend(decls.iter().map(|d| d.name.clone()));
        }
    }

    // Global ARGs.
    let first_from = located
        .iter()
        .position(|l| matches!(l.instruction, Instruction::From(_)));
    let Some(first_from) = first_from else {
        let l = &located[0];
        return Err(match l.instruction {
            Instruction::Arg(_) => src.file(ErrorKind::MissingFrom),
            _ => src.at(
                l.line,
                ErrorKind::BeforeFrom(l.instruction.keyword().into()),
            ),
        });
    };
    let last_stage_name = located.iter().rev().find_map(|l| match &l.instruction {
        Instruction::From(f) => Some(f.name.as_deref()),
        _ => None,
    });
    let mut global_scope = automatic_args(opts, last_stage_name.flatten());
    for l in &located[..first_from] {
        let Instruction::Arg(decls) = &l.instruction else {
            return Err(src.at(
                l.line,
                ErrorKind::BeforeFrom(l.instruction.keyword().into()),
            ));
        };
        // Every default in one ARG sees the scope from before the instruction.
        let before = global_scope.clone();
        for d in decls {
            let name = expand(&lexer, &d.name, &before).map_err(|k| src.at(l.line, k))?;
            let value = match (opts.build_args.get(&name), &d.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(def)) => {
                    Some(expand(&lexer, def, &before).map_err(|k| src.at(l.line, k))?)
                }
                (None, None) => None,
            };
            // Without a value the name keeps what it had: an automatic arg's value, or
            // an earlier global ARG's (BuildKit's buildMetaArgs).
            if let Some(v) = value {
                global_scope.insert(name, v);
            }
        }
    }

    // Split into stages.
    let mut froms: Vec<usize> = located
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l.instruction, Instruction::From(_)))
        .map(|(i, _)| i)
        .collect();
    froms.push(located.len());
    let mut stages: Vec<StageDef> = Vec::new();
    // A name means the latest stage that took it (dispatchStates.statesByName): FROM sees the
    // stages so far, COPY --from, mounts and --target all of them.
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (index, w) in froms.windows(2).enumerate() {
        let l = &located[w[0]];
        let Instruction::From(from) = &l.instruction else {
            unreachable!("split at FROM")
        };
        let image = expand(&lexer, &from.image, &global_scope).map_err(|k| src.at(l.line, k))?;
        let platform = from
            .platform
            .as_deref()
            .map(|p| expand(&lexer, p, &global_scope))
            .transpose()
            .map_err(|k| src.at(l.line, k))?;
        let platform = platform
            .map(|p| Platform::parse(&p).map_err(|e| src.at(l.line, ErrorKind::Invalid(e))))
            .transpose()?;
        // FROM names only earlier stages (BuildKit resolves names as it goes).
        let base = if image.eq_ignore_ascii_case("scratch") {
            Ref::Scratch
        } else if let Some(&i) = names.get(&image.to_ascii_lowercase()) {
            Ref::Stage(i)
        } else {
            Ref::Image(image)
        };
        if let Some(name) = &from.name {
            // A duplicate name is BuildKit's DuplicateStageName warning (check/), not an
            // error: from here on the name means this stage.
            names.insert(name.clone(), index);
        }
        let mut deps = BTreeSet::new();
        if let Ref::Stage(i) = base {
            deps.insert(i);
        }
        stages.push(StageDef {
            index,
            name: from.name.clone(),
            line: l.line,
            base,
            body: &located[w[0] + 1..w[1]],
            deps,
            platform,
        });
    }

    // Edges from COPY --from and RUN --mount from= (any stage, earlier or later).
    let count = stages.len();
    for s in &mut stages {
        for l in s.body {
            for from in refs_of(&l.instruction) {
                // BuildKit's toCommand: COPY --from must read the same once expanded with no
                // variables at all (RUN --mount from= was checked when parsing the flag).
                let empty: BTreeMap<String, String> = BTreeMap::new();
                let is_copy = matches!(l.instruction, Instruction::Copy(_));
                if is_copy && lexer.expand_word(from, &empty).ok().as_deref() != Some(from) {
                    return Err(src.at(l.line, ErrorKind::FromWithVariable(from.to_string())));
                }
                let r = resolve_ref(from, &names, count, opts).map_err(|k| src.at(l.line, k))?;
                if let Ref::Stage(i) = r {
                    s.deps.insert(i);
                }
            }
        }
    }

    // Cycles.
    for s in &stages {
        let mut path = vec![s.index];
        if let Some(cycle) = find_cycle(&stages, s.index, s.index, &mut path) {
            let show = |i: usize| stages[i].display_name();
            let text: Vec<String> = cycle.iter().map(|&i| show(i)).collect();
            return Err(src.at(s.line, ErrorKind::Cycle(show(s.index), text.join(" -> "))));
        }
    }

    // Target and pruning.
    let target = match &opts.target {
        None => count - 1,
        Some(t) => match names.get(&t.to_ascii_lowercase()) {
            Some(&i) => i,
            None => return Err(src.file(unknown_target(t, &stages))),
        },
    };
    for name in &opts.no_cache_stages {
        if !names.contains_key(&name.to_ascii_lowercase()) {
            let (stages, suggestion) = stage_suggestions(name, &stages);
            return Err(src.file(ErrorKind::UnknownNoCacheStage {
                stage: name.clone(),
                stages,
                suggestion,
            }));
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    visit(&stages, target, &mut seen, &mut order);
    // BuildKit dispatches the needed stages in file order, so `COPY --from` and
    // `--mount from=` can only name a stage defined earlier.
    order.sort_unstable();
    for &i in &order {
        let s = &stages[i];
        for l in s.body {
            check_earlier(&l.instruction, s, &names, count, opts).map_err(|k| src.at(l.line, k))?;
        }
    }

    Ok(Graph {
        global_scope,
        stages,
        order,
        target,
        declared,
    })
}

fn unknown_target(target: &str, stages: &[StageDef]) -> ErrorKind {
    let (stages, suggestion) = stage_suggestions(target, stages);
    ErrorKind::UnknownTarget {
        target: target.to_string(),
        suggestion,
        stages,
    }
}

/// The named stages, and ` (did you mean ...?)` for `name`, for an error about a stage name.
fn stage_suggestions(name: &str, stages: &[StageDef]) -> (Vec<String>, String) {
    let named: Vec<String> = stages.iter().filter_map(|s| s.name.clone()).collect();
    let options: Vec<&str> = named.iter().map(String::as_str).collect();
    let suggestion = crate::dockerfile::did_you_mean(name, &options, false);
    (named, suggestion)
}

/// Refuses a `COPY --from` or `--mount from=` in `stage` that names the stage itself or a
/// later one (the error BuildKit gives when such a stage is not dispatched yet).
pub(crate) fn check_earlier(
    i: &Instruction,
    stage: &StageDef,
    names: &BTreeMap<String, usize>,
    count: usize,
    opts: &BuildOptions,
) -> Result<(), ErrorKind> {
    let later = |from: &str| matches!(resolve_ref(from, names, count, opts), Ok(Ref::Stage(d)) if d >= stage.index);
    match i {
        Instruction::Copy(c) => match c.from.as_deref() {
            Some(from) if later(from) => Err(ErrorKind::CopyFromLaterStage {
                from: from.to_string(),
                stage: stage.display_name(),
            }),
            _ => Ok(()),
        },
        Instruction::Run(r) => match r
            .mounts
            .iter()
            .find(|m| m.from.as_deref().is_some_and(later))
        {
            Some(m) => Err(ErrorKind::MountFromLaterStage {
                from: m.from.clone().unwrap_or_default(),
                target: m.target_as_written().unwrap_or_default().to_string(),
            }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

impl StageDef<'_> {
    /// The stage's name, or `stage N` for an unnamed one.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage {}", self.index))
    }
}

/// The raw `--from` values of an instruction (COPY --from, RUN --mount from=).
pub(crate) fn refs_of(i: &Instruction) -> Vec<&str> {
    match i {
        Instruction::Copy(c) => c.from.as_deref().into_iter().collect(),
        Instruction::Run(r) => r.mounts.iter().filter_map(|m| m.from.as_deref()).collect(),
        Instruction::Onbuild(_) => Vec::new(),
        _ => Vec::new(),
    }
}

/// What a `--from` value names: a stage (by name or index), a named build context, or an
/// image. Variables are refused, as the stage graph must be known before expansion.
pub(crate) fn resolve_ref(
    from: &str,
    names: &BTreeMap<String, usize>,
    count: usize,
    opts: &BuildOptions,
) -> Result<Ref, ErrorKind> {
    // ONBUILD triggers of a base image come here without the graph's check.
    if from.find('$').is_some_and(|i| i + 1 != from.len()) {
        return Err(ErrorKind::FromWithVariable(from.to_string()));
    }
    if let Ok(i) = from.parse::<usize>() {
        return if i < count {
            Ok(Ref::Stage(i))
        } else {
            Err(ErrorKind::UnknownStage(from.to_string()))
        };
    }
    if let Some(&i) = names.get(&from.to_ascii_lowercase()) {
        return Ok(Ref::Stage(i));
    }
    if opts.named_contexts.contains(from) {
        return Ok(Ref::Context(from.to_string()));
    }
    if from.eq_ignore_ascii_case("scratch") {
        return Ok(Ref::Scratch);
    }
    Ok(Ref::Image(from.to_string()))
}

fn find_cycle(
    stages: &[StageDef],
    start: usize,
    at: usize,
    path: &mut Vec<usize>,
) -> Option<Vec<usize>> {
    for &d in &stages[at].deps {
        if d == start {
            let mut cycle = path.clone();
            cycle.push(d);
            return Some(cycle);
        }
        if path.contains(&d) {
            continue;
        }
        path.push(d);
        if let Some(c) = find_cycle(stages, start, d, path) {
            return Some(c);
        }
        path.pop();
    }
    None
}

pub(crate) fn visit(
    stages: &[StageDef],
    i: usize,
    seen: &mut BTreeSet<usize>,
    order: &mut Vec<usize>,
) {
    if !seen.insert(i) {
        return;
    }
    for &d in &stages[i].deps {
        visit(stages, d, seen, order);
    }
    order.push(i);
}

/// The platform builds run on: the host's (BUILDPLATFORM).
pub(crate) fn build_platform() -> Platform {
    Platform::host()
}
