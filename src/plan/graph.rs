//! The stage graph: stages split at FROM, FROM expanded with the global ARGs (declared before
//! the first FROM) and the automatic platform args, edges from `FROM <stage>`, `COPY --from`
//! and `RUN --mount from=`, cycles refused, pruned to the target.

use std::collections::{BTreeMap, BTreeSet};

use super::{BuildOptions, Source};
use crate::dockerfile::instructions::{Instruction, Located};
use crate::dockerfile::shell::Lexer;
use crate::dockerfile::ErrorKind;
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
}

pub(crate) struct Graph<'a> {
    /// Global ARGs: name -> value (build arg, else expanded default); `None` when unset.
    pub global_args: BTreeMap<String, Option<String>>,
    pub stages: Vec<StageDef<'a>>,
    /// Positions of the needed stages, dependencies first.
    pub order: Vec<usize>,
    pub target: usize,
    /// Every ARG name declared anywhere (for unused --build-arg warnings).
    pub declared: BTreeSet<String>,
}

/// The automatic platform args (BuildKit's TARGET*/BUILD*); rbuild builds for the host only,
/// so the build and target platforms are the same.
pub(crate) fn platform_args(opts: &BuildOptions) -> BTreeMap<String, String> {
    let p = &opts.platform;
    let mut m = BTreeMap::new();
    for prefix in ["TARGET", "BUILD"] {
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
    let mut global_scope = platform_args(opts);
    let mut global_args = BTreeMap::new();
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
            match &value {
                Some(v) => global_scope.insert(name.clone(), v.clone()),
                None => global_scope.remove(&name),
            };
            global_args.insert(name, value);
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
        if let Some(p) = &platform {
            check_platform(p, opts).map_err(|k| src.at(l.line, k))?;
        }
        // FROM names only earlier stages (BuildKit resolves names as it goes).
        let base = if image.eq_ignore_ascii_case("scratch") {
            Ref::Scratch
        } else if let Some(&i) = names.get(&image.to_ascii_lowercase()) {
            Ref::Stage(i)
        } else {
            Ref::Image(image)
        };
        if let Some(name) = &from.name {
            if names.insert(name.clone(), index).is_some() {
                return Err(src.at(l.line, ErrorKind::DuplicateStageName(name.clone())));
            }
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
            let show = |i: usize| {
                stages[i]
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("stage {i}"))
            };
            let text: Vec<String> = cycle.iter().map(|&i| show(i)).collect();
            return Err(src.at(s.line, ErrorKind::Cycle(show(s.index), text.join(" -> "))));
        }
    }

    // Target and pruning.
    let target = match &opts.target {
        None => count - 1,
        Some(t) => match names.get(&t.to_ascii_lowercase()) {
            Some(&i) => i,
            None => return Err(src.file(ErrorKind::UnknownTarget(t.clone()))),
        },
    };
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    visit(&stages, target, &mut seen, &mut order);

    Ok(Graph {
        global_args,
        stages,
        order,
        target,
        declared,
    })
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

fn visit(stages: &[StageDef], i: usize, seen: &mut BTreeSet<usize>, order: &mut Vec<usize>) {
    if !seen.insert(i) {
        return;
    }
    for &d in &stages[i].deps {
        visit(stages, d, seen, order);
    }
    order.push(i);
}

/// rbuild builds for the host platform only; `--platform=$BUILDPLATFORM` and the like pass.
fn check_platform(p: &str, opts: &BuildOptions) -> Result<(), ErrorKind> {
    let mut parts = p.split('/');
    let os = parts.next().unwrap_or("");
    let arch = parts.next().unwrap_or("");
    let norm = |a: &str| match a {
        "x86_64" | "x86-64" => "amd64".to_string(),
        "aarch64" => "arm64".to_string(),
        other => other.to_string(),
    };
    if os == opts.platform.os && norm(arch) == norm(&opts.platform.architecture) {
        Ok(())
    } else {
        Err(ErrorKind::Invalid(format!(
            "platform `{p}` is not supported: rbuild builds for the host platform `{}` only",
            opts.platform.to_spec()
        )))
    }
}
