//! `--call targets` and `--call outline`: what a Dockerfile offers (its stages, with their
//! descriptions) and what a build of its target uses (build args, secrets, ssh sockets),
//! printed as `docker buildx build --call` prints BuildKit's answers
//! (frontend/subrequests/targets and outline, dockerfile2llb's outline capture).
//!
//! A description is a comment right above the instruction that starts with the stage's or
//! ARG's name: `# build compiles the binary` above `FROM golang AS build`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::graph::{automatic_args, expand};
use super::{Op, Plan, PlanError, Source};
use crate::dockerfile::instructions::MountType;
use crate::dockerfile::instructions::{self, Instruction, Located};
use crate::dockerfile::shell::Lexer;
use crate::dockerfile::syntax::Ast;

/// One stage, as BuildKit's targets.Target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Lowercased, as stage names are; None for an unnamed stage.
    pub name: Option<String>,
    pub description: String,
    /// The last stage: what a build without `--target` makes.
    pub default: bool,
    /// FROM's image as written.
    pub base: String,
    pub platform: Option<String>,
    pub line: usize,
    pub end_line: usize,
}

/// The stages of `text`, in file order. Only parses: nothing is resolved.
pub fn targets(text: &str, dockerfile_name: &str) -> Result<Vec<Target>, PlanError> {
    let src = Source {
        name: dockerfile_name,
        text,
    };
    let (ast, located) = instructions::parse(text).map_err(|e| src.line_error(e))?;
    let mut out = Vec::new();
    for (node, l) in ast.nodes.iter().zip(&located) {
        if let Instruction::From(f) = &l.instruction {
            out.push(Target {
                name: f.name.clone(),
                description: f
                    .name
                    .as_deref()
                    .and_then(|n| node.doc_comment(n))
                    .unwrap_or_default()
                    .to_string(),
                default: false,
                base: f.image.clone(),
                platform: f.platform.clone(),
                line: l.line,
                end_line: l.end_line,
            });
        }
    }
    if let Some(last) = out.last_mut() {
        last.default = true;
    }
    Ok(out)
}

/// The text `docker buildx build --call targets` prints (BuildKit's PrintTargets).
pub fn render_targets(targets: &[Target]) -> String {
    let mut rows = vec![vec!["TARGET".to_string(), "DESCRIPTION".to_string()]];
    for t in targets {
        let name = match (&t.name, t.default) {
            (None, true) => "(default)".to_string(),
            (Some(n), true) => format!("{n} (default)"),
            (n, false) => n.clone().unwrap_or_default(),
        };
        rows.push(vec![name, t.description.clone()]);
    }
    tabwriter(&rows, 1)
}

/// What a build of the plan's target uses, as BuildKit's outline.Outline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outline {
    pub name: Option<String>,
    pub description: String,
    pub args: Vec<OutlineArg>,
    /// Secret ids and ssh ids with whether a RUN requires them, by first use.
    pub secrets: Vec<Needed>,
    pub ssh: Vec<Needed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlineArg {
    pub name: String,
    /// The value the build gives it: the build arg, else the expanded default.
    pub value: String,
    pub description: String,
    pub line: usize,
    pub end_line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    pub id: String,
    pub required: bool,
    pub line: usize,
    pub end_line: usize,
}

/// An ARG's entry in the outline, and the global ARGs its default reads (which count as
/// used when it is).
#[derive(Debug, Clone)]
struct ArgInfo {
    arg: OutlineArg,
    deps: BTreeSet<String>,
}

/// The outline of `plan` (made from `text` and `opts`): the build args its stages use, in
/// Dockerfile order. As BuildKit counts them: the global ARGs that a needed stage's FROM
/// reads (and the global ARGs their defaults read), and every ARG a needed stage declares;
/// an `ARG NAME` in a stage without a default and without a build arg shows the global
/// declaration. The automatic platform args appear only when the Dockerfile gives them a
/// default.
pub fn outline(text: &str, opts: &super::BuildOptions, plan: &Plan) -> Result<Outline, PlanError> {
    let src = Source {
        name: &opts.dockerfile_name,
        text,
    };
    let (ast, located) = instructions::parse(text).map_err(|e| src.line_error(e))?;
    let lexer = Lexer::new(ast.escape);

    let froms: Vec<usize> = located
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l.instruction, Instruction::From(_)))
        .map(|(i, _)| i)
        .collect();
    let first_from = froms.first().copied().unwrap_or(located.len());
    let last_name = froms.last().and_then(|&i| match &located[i].instruction {
        Instruction::From(f) => f.name.as_deref(),
        _ => None,
    });

    // Global ARGs (BuildKit's buildMetaArgs): value and the names the default read.
    let mut scope = automatic_args(opts, last_name);
    let mut globals: BTreeMap<String, ArgInfo> = BTreeMap::new();
    for (i, l) in located[..first_from].iter().enumerate() {
        let Instruction::Arg(decls) = &l.instruction else {
            continue;
        };
        let before = scope.clone();
        for d in decls {
            let name = expand(&lexer, &d.name, &before).map_err(|k| src.at(l.line, k))?;
            let mut deps = BTreeSet::new();
            let value = match (opts.build_args.get(&name), &d.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(def)) => {
                    let e = lexer.expand(def, &before).map_err(|e| {
                        src.at(
                            l.line,
                            crate::dockerfile::ErrorKind::Expansion {
                                word: def.clone(),
                                reason: e.to_string(),
                            },
                        )
                    })?;
                    deps = e.matched;
                    if deps.remove(&name) {
                        if let Some(old) = globals.get(&name) {
                            deps.extend(old.deps.iter().cloned());
                        }
                    }
                    Some(e.word)
                }
                (None, None) => None,
            };
            if let Some(v) = &value {
                scope.insert(name.clone(), v.clone());
            }
            globals.insert(
                name.clone(),
                ArgInfo {
                    arg: OutlineArg {
                        description: doc(&ast, i, &name),
                        name,
                        value: value.unwrap_or_default(),
                        line: l.line,
                        end_line: l.end_line,
                    },
                    deps,
                },
            );
        }
    }

    // Per needed stage: the names it uses and the ARG entries it sees.
    struct StageArgs {
        used: BTreeSet<String>,
        infos: BTreeMap<String, ArgInfo>,
        secrets: Vec<Needed>,
        ssh: Vec<Needed>,
    }
    let mut per_stage: BTreeMap<usize, StageArgs> = BTreeMap::new();
    for stage in &plan.stages {
        let Some(&from_at) = froms.get(stage.index) else {
            continue;
        };
        let end = froms.get(stage.index + 1).copied().unwrap_or(located.len());
        let mut used = BTreeSet::new();
        if let Instruction::From(f) = &located[from_at].instruction {
            for word in std::iter::once(&f.image).chain(f.platform.as_ref()) {
                if let Ok(e) = lexer.expand(word, &scope) {
                    used.extend(e.matched);
                }
            }
        }
        let mut infos = globals.clone();
        for (i, l) in located.iter().enumerate().take(end).skip(from_at + 1) {
            let Instruction::Arg(decls) = &l.instruction else {
                continue;
            };
            let values = arg_values(plan, stage.index, l);
            for d in decls {
                let name = d.name.clone();
                used.insert(name.clone());
                let inherited = d.default.is_none()
                    && !opts.build_args.contains_key(&name)
                    && scope.contains_key(&name);
                if inherited {
                    continue;
                }
                let value = values
                    .as_ref()
                    .and_then(|v| v.get(&name).cloned())
                    .unwrap_or_default();
                infos.insert(
                    name.clone(),
                    ArgInfo {
                        arg: OutlineArg {
                            description: doc(&ast, i, &name),
                            name,
                            value,
                            line: l.line,
                            end_line: l.end_line,
                        },
                        deps: BTreeSet::new(),
                    },
                );
            }
        }
        let (mut secrets, mut ssh) = (Vec::new(), Vec::new());
        for (step, m) in secret_and_ssh_mounts(&stage.steps) {
            let list = match m.kind {
                MountType::Secret => &mut secrets,
                _ => &mut ssh,
            };
            let id = m.id.clone().unwrap_or_default();
            if !list.iter().any(|n: &Needed| n.id == id) {
                let end_line = located
                    .iter()
                    .find(|l| l.line == step.line)
                    .map_or(step.line, |l| l.end_line);
                list.push(Needed {
                    id,
                    required: m.required,
                    line: step.line,
                    end_line,
                });
            }
        }
        per_stage.insert(
            stage.index,
            StageArgs {
                used,
                infos,
                secrets,
                ssh,
            },
        );
    }

    // The target first, then its base stage, then the stages it reads from (BuildKit's
    // walk): where two stages declare one name, the first visited wins.
    let target = &plan.stages[plan.target];
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    walk(plan, target.index, &mut seen, &mut order);
    let mut out = Outline {
        name: target.name.clone(),
        description: target
            .name
            .as_deref()
            .and_then(|n| ast.nodes.get(froms[target.index])?.doc_comment(n))
            .unwrap_or_default()
            .to_string(),
        ..Default::default()
    };
    let (mut arg_seen, mut secret_seen, mut ssh_seen) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for i in order {
        let Some(s) = per_stage.get(&i) else {
            continue;
        };
        let mut used = s.used.clone();
        let mut stack: Vec<String> = used.iter().cloned().collect();
        while let Some(k) = stack.pop() {
            if let Some(info) = s.infos.get(&k) {
                for d in &info.deps {
                    if used.insert(d.clone()) {
                        stack.push(d.clone());
                    }
                }
            }
        }
        for k in &used {
            if let Some(info) = s.infos.get(k) {
                if arg_seen.insert(k.clone()) {
                    out.args.push(info.arg.clone());
                }
            }
        }
        for n in &s.secrets {
            if secret_seen.insert(n.id.clone()) {
                out.secrets.push(n.clone());
            }
        }
        for n in &s.ssh {
            if ssh_seen.insert(n.id.clone()) {
                out.ssh.push(n.clone());
            }
        }
    }
    out.args.sort_by_key(|a| a.line);
    out.secrets.sort_by_key(|n| n.line);
    out.ssh.sort_by_key(|n| n.line);
    Ok(out)
}

/// The stage, then its base stage's walk, then its other dependencies'.
fn walk(plan: &Plan, index: usize, seen: &mut BTreeSet<usize>, order: &mut Vec<usize>) {
    if !seen.insert(index) {
        return;
    }
    order.push(index);
    let Some(stage) = plan.stage(index) else {
        return;
    };
    if let super::Base::Stage(b) = stage.base {
        walk(plan, b, seen, order);
    }
    for &d in &stage.deps {
        walk(plan, d, seen, order);
    }
}

/// The build args in scope after the stage's ARG instruction at `l` (its plan step's key).
fn arg_values(plan: &Plan, stage: usize, l: &Located) -> Option<BTreeMap<String, String>> {
    let stage = plan.stage(stage)?;
    stage
        .steps
        .iter()
        .find(|s| s.line == l.line && s.key.instruction == "ARG")
        .map(|s| s.key.build_args.clone())
}

/// The description of `name` from the comments above node `i`.
fn doc(ast: &Ast, i: usize, name: &str) -> String {
    ast.nodes
        .get(i)
        .and_then(|n| n.doc_comment(name))
        .unwrap_or_default()
        .to_string()
}

/// The text `docker buildx build --call outline` prints (BuildKit's PrintOutline).
pub fn render_outline(o: &Outline) -> String {
    let mut out = String::new();
    if o.name.is_some() || !o.description.is_empty() {
        let mut rows = vec![vec![
            "TARGET:".to_string(),
            o.name.clone().unwrap_or_else(|| "(default)".into()),
        ]];
        if !o.description.is_empty() {
            rows.push(vec!["DESCRIPTION:".into(), o.description.clone()]);
        }
        out.push_str(&tabwriter(&rows, 1));
        out.push('\n');
    }
    if !o.args.is_empty() {
        let mut rows = vec![vec![
            "BUILD ARG".to_string(),
            "VALUE".into(),
            "DESCRIPTION".into(),
        ]];
        for a in &o.args {
            rows.push(vec![a.name.clone(), a.value.clone(), a.description.clone()]);
        }
        out.push_str(&tabwriter(&rows, 3));
        out.push('\n');
    }
    for (title, list) in [("SECRET", &o.secrets), ("SSH", &o.ssh)] {
        if list.is_empty() {
            continue;
        }
        let mut rows = vec![vec![title.to_string(), "REQUIRED".into()]];
        for n in list {
            let required = if n.required { "true" } else { "" };
            rows.push(vec![n.id.clone(), required.into()]);
        }
        out.push_str(&tabwriter(&rows, 3));
        out.push('\n');
    }
    out
}

/// BuildKit's pb.Location of an instruction, as Go's encoding/json writes it (zero
/// characters and source index 0 left out).
#[derive(Serialize)]
struct Location {
    ranges: Vec<Range>,
}

#[derive(Serialize)]
struct Range {
    start: Pos,
    end: Pos,
}

#[derive(Serialize)]
struct Pos {
    line: usize,
}

fn location(line: usize, end_line: usize) -> Location {
    Location {
        ranges: vec![Range {
            start: Pos { line },
            end: Pos { line: end_line },
        }],
    }
}

fn is_false(b: &bool) -> bool {
    !b
}

/// BuildKit's result.json: `json.MarshalIndent(v, "", "  ")`, which also escapes `<`, `>`
/// and `&` (they can only occur inside strings), then the newline buildx prints after it.
fn go_json(v: &impl Serialize) -> String {
    let text = serde_json::to_string_pretty(v).expect("plain data serializes");
    let mut out = text
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    out.push('\n');
    out
}

fn sources(text: &str) -> Vec<String> {
    use base64::Engine as _;
    vec![base64::engine::general_purpose::STANDARD.encode(text)]
}

/// `--call targets,format=json`: BuildKit's targets.List.
pub fn targets_json(targets: &[Target], text: &str) -> String {
    #[derive(Serialize)]
    struct JsonTarget<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        #[serde(skip_serializing_if = "is_false")]
        default: bool,
        #[serde(skip_serializing_if = "str::is_empty")]
        description: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        base: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        platform: Option<&'a str>,
        location: Location,
    }
    #[derive(Serialize)]
    struct List<'a> {
        targets: Vec<JsonTarget<'a>>,
        sources: Vec<String>,
    }
    go_json(&List {
        targets: targets
            .iter()
            .map(|t| JsonTarget {
                name: t.name.as_deref(),
                default: t.default,
                description: &t.description,
                base: &t.base,
                platform: t.platform.as_deref().filter(|p| !p.is_empty()),
                location: location(t.line, t.end_line),
            })
            .collect(),
        sources: sources(text),
    })
}

/// `--call outline,format=json`: BuildKit's outline.Outline.
pub fn outline_json(o: &Outline, text: &str) -> String {
    #[derive(Serialize)]
    struct JsonArg<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        description: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        value: &'a str,
        location: Location,
    }
    #[derive(Serialize)]
    struct JsonNeeded<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "is_false")]
        required: bool,
        location: Location,
    }
    #[derive(Serialize)]
    struct JsonOutline<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
        #[serde(skip_serializing_if = "str::is_empty")]
        description: &'a str,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        args: Vec<JsonArg<'a>>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        secrets: Vec<JsonNeeded<'a>>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        ssh: Vec<JsonNeeded<'a>>,
        sources: Vec<String>,
    }
    fn needed(list: &[Needed]) -> Vec<JsonNeeded<'_>> {
        list.iter()
            .map(|n| JsonNeeded {
                name: &n.id,
                required: n.required,
                location: location(n.line, n.end_line),
            })
            .collect()
    }
    go_json(&JsonOutline {
        name: o.name.as_deref(),
        description: &o.description,
        args: o
            .args
            .iter()
            .map(|a| JsonArg {
                name: &a.name,
                description: &a.description,
                value: &a.value,
                location: location(a.line, a.end_line),
            })
            .collect(),
        secrets: needed(&o.secrets),
        ssh: needed(&o.ssh),
        sources: sources(text),
    })
}

/// Go's text/tabwriter as BuildKit's printers use it (minwidth 0, tabwidth 0, pad with
/// spaces, no flags): every cell but a line's last is padded to its column's widest cell
/// plus `padding`; widths count characters.
fn tabwriter(rows: &[Vec<String>], padding: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] + padding - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// The `type=secret` and `type=ssh` mounts of `steps`' RUNs, with their step, in order: what
/// `--call outline` lists and a provenance attestation names (ids only).
pub fn secret_and_ssh_mounts(
    steps: &[super::Step],
) -> impl Iterator<Item = (&super::Step, &super::RunMount)> {
    steps.iter().flat_map(|step| {
        let mounts = match &step.op {
            Op::Run(run) => &run.mounts[..],
            _ => &[],
        };
        mounts
            .iter()
            .filter(|m| matches!(m.kind, MountType::Secret | MountType::Ssh))
            .map(move |m| (step, m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{options, FakeResolver};

    /// Golden output: testdata/call/<case>/{Dockerfile,options?,targets,outline} and their
    /// `.json` forms, what `docker buildx build --call targets|outline[,format=json]` prints
    /// for the same Dockerfile.
    /// `UPDATE_GOLDEN=1` rewrites the files.
    #[test]
    fn call_golden() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/call");
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut cases: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        assert!(!cases.is_empty());
        for case in cases {
            let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
            let mut opts = options();
            let option_text = std::fs::read_to_string(case.join("options")).unwrap_or_default();
            for line in option_text.lines() {
                match line.split_once(' ') {
                    Some(("build-arg", kv)) => {
                        let (k, v) = kv.split_once('=').unwrap();
                        opts.build_args.insert(k.into(), v.into());
                    }
                    Some(("target", t)) => opts.target = Some(t.into()),
                    _ => panic!("bad option line {line:?} in {}", case.display()),
                }
            }
            let t = targets(&text, "Dockerfile").unwrap();
            let plan = super::super::plan(&text, &opts, &mut FakeResolver).unwrap();
            let o = outline(&text, &opts, &plan).unwrap();
            for (file, got) in [
                ("targets", render_targets(&t)),
                ("outline", render_outline(&o)),
                ("targets.json", targets_json(&t, &text)),
                ("outline.json", outline_json(&o, &text)),
            ] {
                let path = case.join(file);
                if update {
                    std::fs::write(&path, &got).unwrap();
                    continue;
                }
                let want = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(got, want, "{}", path.display());
            }
        }
    }

    #[test]
    fn tabwriter_pads_all_but_the_last_cell() {
        let rows = vec![
            vec!["A".to_string(), "bb".into(), "c".into()],
            vec!["dddd".to_string(), "".into(), "".into()],
        ];
        assert_eq!(tabwriter(&rows, 3), "A      bb   c\ndddd        \n");
    }
}
