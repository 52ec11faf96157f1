//! AST nodes -> typed, validated instructions (BuildKit's `instructions` package). Flags are
//! checked here (unknown, duplicate, missing value); words stay unexpanded because expansion
//! needs the stage's environment at that point, which only the planner knows.

use std::fmt;

use super::syntax::{self, Heredoc, Node};
use super::ErrorKind;

/// An instruction with the lines it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub end_line: usize,
    /// The logical line as written (keyword, flags, arguments).
    pub text: String,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From(From),
    Run(Run),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Label(Vec<KeyValue>),
    Maintainer(String),
    Expose(Vec<String>),
    Env(Vec<KeyValue>),
    Add(Copy),
    Copy(Copy),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Arg(Vec<ArgDecl>),
    Onbuild(Onbuild),
    Stopsignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
}

impl Instruction {
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Env(_) => "ENV",
            Instruction::Add(_) => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Arg(_) => "ARG",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::Stopsignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
        }
    }
}

/// Shell form (run through SHELL) or exec form (a JSON array, run as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    pub image: String,
    pub platform: Option<String>,
    /// Lowercased, as BuildKit compares stage names case-insensitively.
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub command: CommandForm,
    pub heredocs: Vec<Heredoc>,
    pub mounts: Vec<MountFlag>,
    pub network: Option<NetworkMode>,
    pub security: Option<Security>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Default,
    None,
    Host,
}

impl NetworkMode {
    /// `default`, `none` or `host`, as `RUN --network=` and `rbuild --network` spell them.
    pub fn parse(word: &str) -> Option<NetworkMode> {
        match word {
            "default" => Some(NetworkMode::Default),
            "none" => Some(NetworkMode::None),
            "host" => Some(NetworkMode::Host),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    Sandbox,
    Insecure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl fmt::Display for MountType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        })
    }
}

/// One `--mount=` flag as written. Its values may use the stage's ARG and ENV, so it becomes
/// a [`MountSpec`] only in the planner, through [`parse_mount`] with the stage's expansion
/// (BuildKit's `setMountState`). Only `from` is read here: the stage graph needs it before
/// anything is expanded, so it cannot use variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountFlag {
    pub raw: String,
    /// The `from=` value (the last one), unexpanded.
    pub from: Option<String>,
}

impl MountFlag {
    /// The `target=` (or `dst=`, `destination=`) value as written, for messages.
    pub fn target_as_written(&self) -> Option<&str> {
        mount_fields(&self.raw)
            .filter(|(k, _)| matches!(k.as_str(), "target" | "dst" | "destination"))
            .filter_map(|(_, v)| v)
            .last()
    }

    /// BuildKit's parse-time pass over a mount (`parseMount` without an expander): refuse
    /// a variable in `from` (a `$` anywhere but at the end), defer everything else.
    pub fn new(raw: &str) -> Result<MountFlag, ErrorKind> {
        let mut from = None;
        for (key, value) in mount_fields(raw) {
            if key != "from" {
                continue;
            }
            let Some(value) = value else { continue };
            if value.find('$').is_some_and(|i| i + 1 != value.len()) {
                return Err(ErrorKind::BadMount {
                    spec: raw.to_string(),
                    reason: "'from' doesn't support variable expansion, define alias stage instead"
                        .into(),
                });
            }
            from = Some(value.to_string());
        }
        Ok(MountFlag {
            raw: raw.to_string(),
            from,
        })
    }
}

/// A parsed `--mount`: the type and its options with values expanded and keys normalized
/// (`src` -> `source`, `dst`/`destination` -> `target`, `ro` -> `readonly`, `rw` ->
/// `readwrite`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountType,
    pub options: Vec<(String, Option<String>)>,
    /// The flag as written, for messages.
    pub raw: String,
}

impl MountSpec {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    Path(String),
    Heredoc(Heredoc),
}

/// COPY and ADD (`add` tells which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub add: bool,
    pub sources: Vec<CopySource>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Onbuild {
    /// The trigger as written (`RUN echo hi`), stored in the image's `OnBuild`.
    pub expression: String,
    pub trigger: Box<Instruction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    None,
    Check {
        /// `["CMD", ...]` or `["CMD-SHELL", "..."]`.
        test: Vec<String>,
        interval: Option<i64>,
        timeout: Option<i64>,
        start_period: Option<i64>,
        start_interval: Option<i64>,
        retries: Option<i64>,
    },
}

/// An error at a line, before the file name is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub kind: ErrorKind,
}

impl std::convert::From<syntax::SyntaxError> for LineError {
    fn from(e: syntax::SyntaxError) -> Self {
        LineError {
            line: e.line,
            kind: e.kind,
        }
    }
}

/// Parse the whole file into typed instructions.
pub fn parse(text: &str) -> Result<(syntax::Ast, Vec<Located>), LineError> {
    let ast = syntax::parse(text)?;
    let mut out = Vec::with_capacity(ast.nodes.len());
    for node in &ast.nodes {
        let instruction = lower(node, ast.escape).map_err(|kind| LineError {
            line: node.start.line,
            kind,
        })?;
        out.push(Located {
            line: node.start.line,
            end_line: node.end_line,
            text: node.text.clone(),
            instruction,
        });
    }
    Ok((ast, out))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Str,
    List,
}

/// Validated flags of one instruction.
struct Flags {
    values: Vec<(String, Option<String>)>,
}

impl Flags {
    fn check(node: &Node, allowed: &[(&str, FlagKind)]) -> Result<Flags, ErrorKind> {
        let mut values: Vec<(String, Option<String>)> = Vec::new();
        for flag in &node.flags {
            let Some((_, kind)) = allowed.iter().find(|(n, _)| *n == flag.name) else {
                let known: Vec<String> = allowed.iter().map(|(n, _)| format!("--{n}")).collect();
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                return Err(ErrorKind::UnknownFlag {
                    instruction: node.name.to_ascii_uppercase(),
                    flag: flag.name.clone(),
                    suggestion: super::did_you_mean(&format!("--{}", flag.name), &known, true),
                });
            };
            if *kind != FlagKind::List && values.iter().any(|(n, _)| *n == flag.name) {
                return Err(ErrorKind::DuplicateFlag(flag.name.clone()));
            }
            match (kind, &flag.value) {
                (FlagKind::Bool, Some(v)) if !matches!(v.as_str(), "true" | "false") => {
                    return Err(ErrorKind::InvalidFlagValue {
                        flag: flag.name.clone(),
                        value: v.clone(),
                        reason: "expecting true or false".into(),
                    })
                }
                (FlagKind::Str | FlagKind::List, None) => {
                    return Err(ErrorKind::FlagNeedsValue(flag.name.clone()))
                }
                _ => {}
            }
            values.push((flag.name.clone(), flag.value.clone()));
        }
        Ok(Flags { values })
    }

    fn string(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }

    fn boolean(&self, name: &str) -> Option<bool> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref() != Some("false"))
    }
}

fn require_args(node: &Node) -> Result<(), ErrorKind> {
    if node.args.is_empty() {
        return Err(ErrorKind::MissingArguments(node.name.to_ascii_uppercase()));
    }
    Ok(())
}

fn command_form(node: &Node) -> CommandForm {
    match &node.json {
        Some(words) => CommandForm::Exec(words.clone()),
        None => CommandForm::Shell(node.args.clone()),
    }
}

/// Lower one node into a typed instruction.
pub fn lower(node: &Node, escape: char) -> Result<Instruction, ErrorKind> {
    use FlagKind::*;
    let upper = node.name.to_ascii_uppercase();
    let no_flags = |node: &Node| Flags::check(node, &[]);
    Ok(match node.name.as_str() {
        "from" => {
            let flags = Flags::check(node, &[("platform", Str)])?;
            require_args(node)?;
            let words: Vec<&str> = node.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_] => None,
                [_, kw, name] if kw.eq_ignore_ascii_case("as") => {
                    let name = name.to_ascii_lowercase();
                    let mut chars = name.chars();
                    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                        && chars
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
                    if !ok {
                        return Err(ErrorKind::BadStageName(name));
                    }
                    Some(name)
                }
                _ => {
                    return Err(ErrorKind::Syntax(
                        "FROM requires either one or three arguments".into(),
                    ))
                }
            };
            Instruction::From(From {
                image: words[0].to_string(),
                platform: flags.string("platform"),
                name,
            })
        }
        "run" => {
            let flags = Flags::check(
                node,
                &[("mount", List), ("network", Str), ("security", Str)],
            )?;
            if node.args.is_empty() && node.json.is_none() {
                return Err(ErrorKind::MissingArguments(upper));
            }
            let mounts = flags
                .list("mount")
                .iter()
                .map(|m| MountFlag::new(m))
                .collect::<Result<Vec<_>, _>>()?;
            let network =
                match flags.string("network").as_deref() {
                    None => None,
                    Some(word) => Some(NetworkMode::parse(word).ok_or_else(|| {
                        ErrorKind::InvalidFlagValue {
                            flag: "network".into(),
                            value: word.into(),
                            reason: "expecting default, none or host".into(),
                        }
                    })?),
                };
            let security = match flags.string("security").as_deref() {
                None => None,
                Some("sandbox") => Some(Security::Sandbox),
                Some("insecure") => Some(Security::Insecure),
                Some(other) => {
                    return Err(ErrorKind::InvalidFlagValue {
                        flag: "security".into(),
                        value: other.into(),
                        reason: "expecting sandbox or insecure".into(),
                    })
                }
            };
            Instruction::Run(Run {
                command: command_form(node),
                heredocs: node.heredocs.clone(),
                mounts,
                network,
                security,
            })
        }
        "cmd" | "entrypoint" => {
            no_flags(node)?;
            if node.args.is_empty() {
                return Err(ErrorKind::MissingArguments(upper));
            }
            if node.name == "cmd" {
                Instruction::Cmd(command_form(node))
            } else {
                Instruction::Entrypoint(command_form(node))
            }
        }
        "shell" => {
            no_flags(node)?;
            require_args(node)?;
            match &node.json {
                Some(words) if !words.is_empty() => Instruction::Shell(words.clone()),
                _ => return Err(ErrorKind::ShellNotJson),
            }
        }
        "label" | "env" => {
            no_flags(node)?;
            require_args(node)?;
            let pairs = name_values(&node.args, escape)?;
            if node.name == "env" {
                Instruction::Env(pairs)
            } else {
                Instruction::Label(pairs)
            }
        }
        "maintainer" => {
            no_flags(node)?;
            require_args(node)?;
            Instruction::Maintainer(node.args.clone())
        }
        "expose" => {
            no_flags(node)?;
            require_args(node)?;
            Instruction::Expose(node.args.split_whitespace().map(String::from).collect())
        }
        "volume" => {
            no_flags(node)?;
            require_args(node)?;
            let vols = match &node.json {
                Some(words) => words.clone(),
                None => node.args.split_whitespace().map(String::from).collect(),
            };
            if vols.iter().any(|v| v.trim().is_empty()) {
                return Err(ErrorKind::Invalid(
                    "VOLUME specified can not be an empty string".into(),
                ));
            }
            Instruction::Volume(vols)
        }
        "user" | "workdir" | "stopsignal" => {
            no_flags(node)?;
            require_args(node)?;
            let v = node.args.clone();
            match node.name.as_str() {
                "user" => Instruction::User(v),
                "workdir" => Instruction::Workdir(v),
                _ => Instruction::Stopsignal(v),
            }
        }
        "arg" => {
            no_flags(node)?;
            require_args(node)?;
            let decls = syntax::split_words(&node.args, escape)
                .into_iter()
                .map(|w| match w.split_once('=') {
                    Some((k, v)) => ArgDecl {
                        name: k.to_string(),
                        default: Some(v.to_string()),
                    },
                    None => ArgDecl {
                        name: w,
                        default: None,
                    },
                })
                .collect::<Vec<_>>();
            if decls.iter().any(|d| d.name.is_empty()) {
                return Err(ErrorKind::Syntax("ARG names can not be blank".into()));
            }
            Instruction::Arg(decls)
        }
        "copy" | "add" => lower_copy(node)?,
        "onbuild" => {
            no_flags(node)?;
            require_args(node)?;
            let inner =
                syntax::parse_line(&node.args, escape, node.start.line).map_err(|e| e.kind)?;
            match inner.name.as_str() {
                "onbuild" | "from" | "maintainer" => {
                    return Err(ErrorKind::BadOnbuild(inner.name.to_ascii_uppercase()))
                }
                _ => {}
            }
            let trigger = lower(&inner, escape)?;
            Instruction::Onbuild(Onbuild {
                expression: node.args.clone(),
                trigger: Box::new(trigger),
            })
        }
        "healthcheck" => lower_healthcheck(node, escape)?,
        _ => {
            return Err(ErrorKind::UnknownInstruction(
                node.keyword.clone(),
                super::did_you_mean(&node.keyword, &INSTRUCTIONS, false),
            ))
        }
    })
}

/// Every instruction keyword, for suggestions (BuildKit's `allInstructionNames`).
const INSTRUCTIONS: [&str; 18] = [
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// ENV/LABEL pairs: `k=v k2="v 2"`, or the legacy `KEY value with spaces` form.
fn name_values(args: &str, escape: char) -> Result<Vec<KeyValue>, ErrorKind> {
    let words = syntax::split_words(args, escape);
    let Some(first) = words.first() else {
        return Err(ErrorKind::Syntax("missing arguments".into()));
    };
    if !first.contains('=') {
        // Legacy form: the first word is the key, the rest of the line the value.
        let rest = args[args.find(first.as_str()).unwrap_or(0) + first.len()..].trim();
        if rest.is_empty() {
            return Err(ErrorKind::Syntax(format!(
                "`{first}` needs a value (`KEY value` or `KEY=value`)"
            )));
        }
        return Ok(vec![KeyValue {
            key: first.clone(),
            value: rest.to_string(),
        }]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            }),
            _ => Err(ErrorKind::MissingEquals(w)),
        })
        .collect()
}

fn lower_copy(node: &Node) -> Result<Instruction, ErrorKind> {
    use FlagKind::*;
    let add = node.name == "add";
    let flags = if add {
        Flags::check(
            node,
            &[
                ("chown", Str),
                ("chmod", Str),
                ("link", Bool),
                ("checksum", Str),
                ("keep-git-dir", Bool),
                ("unpack", Bool),
                ("exclude", List),
            ],
        )?
    } else {
        Flags::check(
            node,
            &[
                ("from", Str),
                ("chown", Str),
                ("chmod", Str),
                ("link", Bool),
                ("parents", Bool),
                ("exclude", List),
            ],
        )?
    };
    let upper = node.name.to_ascii_uppercase();
    let words: Vec<String> = match &node.json {
        Some(w) => w.clone(),
        None => node.args.split_whitespace().map(String::from).collect(),
    };
    if words.is_empty() {
        return Err(ErrorKind::MissingArguments(upper));
    }
    if words.len() < 2 {
        return Err(ErrorKind::MissingDestination(upper));
    }
    let (srcs, dest) = words.split_at(words.len() - 1);
    let mut sources = Vec::new();
    for w in srcs {
        let heredoc = node
            .json
            .is_none()
            .then(|| syntax::heredoc_marker(w))
            .flatten();
        match heredoc.and_then(|m| node.heredocs.iter().find(|h| h.name == m.name)) {
            Some(h) => sources.push(CopySource::Heredoc(h.clone())),
            None => sources.push(CopySource::Path(w.clone())),
        }
    }
    if let Some(chmod) = flags.string("chmod") {
        if !valid_chmod(&chmod) {
            return Err(ErrorKind::BadChmod(chmod));
        }
    }
    Ok(Instruction::from_copy(Copy {
        add,
        sources,
        dest: dest[0].clone(),
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.boolean("link").unwrap_or(false),
        parents: flags.boolean("parents").unwrap_or(false),
        excludes: flags.list("exclude"),
        checksum: flags.string("checksum"),
        keep_git_dir: flags.boolean("keep-git-dir").unwrap_or(false),
        unpack: flags.boolean("unpack"),
    }))
}

impl Instruction {
    fn from_copy(c: Copy) -> Instruction {
        if c.add {
            Instruction::Add(c)
        } else {
            Instruction::Copy(c)
        }
    }
}

/// Octal (`755`, `0644`) or symbolic (`u+x,go-w`, `a=rX`) modes; variables are allowed and
/// checked after expansion by the executor.
pub fn valid_chmod(mode: &str) -> bool {
    mode.contains('$') || super::chmod::Chmod::parse(mode).is_ok()
}

/// The `key[=value]` fields of a `--mount` value, keys lowercased, blanks around fields
/// ignored.
fn mount_fields(raw: &str) -> impl Iterator<Item = (String, Option<&str>)> {
    raw.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|field| match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        })
}

/// Every key `--mount` knows, aliases included (BuildKit's list for its suggestions).
const MOUNT_KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// Parse a `--mount` value, each value passed through `expand` first (the stage's ARG and
/// ENV in the planner), as BuildKit's `parseMount` does with its expander. The one parser
/// of mount options.
pub fn parse_mount(
    raw: &str,
    expand: &mut dyn FnMut(&str) -> Result<String, ErrorKind>,
) -> Result<MountSpec, ErrorKind> {
    let bad = |reason: String| ErrorKind::BadMount {
        spec: raw.to_string(),
        reason,
    };
    let mut kind = MountType::Bind;
    let mut options = Vec::new();
    for (key, value) in mount_fields(raw) {
        let value = value.map(&mut *expand).transpose()?;
        let key = match key.as_str() {
            "type" => {
                let value = value.unwrap_or_default();
                kind = match value.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => {
                        let types = ["bind", "cache", "tmpfs", "secret", "ssh"];
                        return Err(bad(format!(
                            "unsupported mount type `{value}`{}",
                            super::did_you_mean(&value, &types, true)
                        )));
                    }
                };
                continue;
            }
            "src" | "source" => "source",
            "dst" | "destination" | "target" => "target",
            "ro" | "readonly" => "readonly",
            "rw" | "readwrite" => "readwrite",
            "from" | "id" | "sharing" | "mode" | "uid" | "gid" | "required" | "size" | "env" => {
                key.as_str()
            }
            _ => {
                return Err(bad(format!(
                    "unknown option `{key}`{}",
                    super::did_you_mean(&key, &MOUNT_KEYS, true)
                )))
            }
        };
        let needs_value = !matches!(key, "readonly" | "readwrite" | "required");
        if needs_value && value.as_deref().is_none_or(str::is_empty) {
            return Err(bad(format!("option `{key}` needs a value")));
        }
        options.push((key.to_string(), value));
    }
    let spec = MountSpec {
        kind,
        options,
        raw: raw.to_string(),
    };
    let allowed: &[&str] = match kind {
        MountType::Bind => &["from", "source", "target", "readonly", "readwrite"],
        MountType::Cache => &[
            "from",
            "source",
            "target",
            "readonly",
            "readwrite",
            "id",
            "sharing",
            "mode",
            "uid",
            "gid",
        ],
        MountType::Tmpfs => &["target", "size"],
        MountType::Secret => &[
            "id", "target", "required", "mode", "uid", "gid", "env", "source",
        ],
        MountType::Ssh => &["id", "target", "required", "mode", "uid", "gid"],
    };
    if let Some((k, _)) = spec
        .options
        .iter()
        .find(|(k, _)| !allowed.contains(&k.as_str()))
    {
        return Err(bad(format!("option `{k}` is not valid for type={kind}")));
    }
    let needs_target = matches!(kind, MountType::Bind | MountType::Cache | MountType::Tmpfs);
    if needs_target && spec.get("target").is_none() {
        return Err(bad("a target is required".into()));
    }
    if kind == MountType::Secret && spec.get("id").is_none() && spec.get("target").is_none() {
        return Err(bad("a secret mount needs an id or a target".into()));
    }
    if let Some(sharing) = spec.get("sharing") {
        if !matches!(sharing, "shared" | "private" | "locked") {
            return Err(bad(format!(
                "sharing `{sharing}`: expecting shared, private or locked"
            )));
        }
    }
    Ok(spec)
}

fn lower_healthcheck(node: &Node, escape: char) -> Result<Instruction, ErrorKind> {
    use FlagKind::*;
    let flags = Flags::check(
        node,
        &[
            ("interval", Str),
            ("timeout", Str),
            ("start-period", Str),
            ("start-interval", Str),
            ("retries", Str),
        ],
    )?;
    require_args(node)?;
    let (first, rest) = match node.args.split_once(char::is_whitespace) {
        Some((f, r)) => (f, r.trim()),
        None => (node.args.as_str(), ""),
    };
    match first.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !rest.is_empty() || !node.flags.is_empty() {
                return Err(ErrorKind::Syntax(
                    "HEALTHCHECK NONE takes no other arguments".into(),
                ));
            }
            Ok(Instruction::Healthcheck(Healthcheck::None))
        }
        "CMD" => {
            if rest.is_empty() {
                return Err(ErrorKind::MissingArguments("HEALTHCHECK CMD".into()));
            }
            let test = match syntax::parse_json_array(rest)? {
                Some(words) => std::iter::once("CMD".to_string()).chain(words).collect(),
                None => vec!["CMD-SHELL".to_string(), rest.to_string()],
            };
            let _ = escape;
            let dur = |name: &str| -> Result<Option<i64>, ErrorKind> {
                flags
                    .string(name)
                    .map(|v| {
                        parse_duration(&v).ok_or_else(|| ErrorKind::InvalidFlagValue {
                            flag: name.into(),
                            value: v.clone(),
                            reason: "expecting a duration like 30s or 1m30s (0 or at least 1ms)"
                                .into(),
                        })
                    })
                    .transpose()
            };
            let retries = flags
                .string("retries")
                .map(|v| {
                    v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                        ErrorKind::InvalidFlagValue {
                            flag: "retries".into(),
                            value: v.clone(),
                            reason: "expecting a number >= 0".into(),
                        }
                    })
                })
                .transpose()?;
            Ok(Instruction::Healthcheck(Healthcheck::Check {
                test,
                interval: dur("interval")?,
                timeout: dur("timeout")?,
                start_period: dur("start-period")?,
                start_interval: dur("start-interval")?,
                retries,
            }))
        }
        other => Err(ErrorKind::Syntax(format!(
            "unknown type `{other}` for HEALTHCHECK (try CMD)"
        ))),
    }
}

/// A Go duration (`1h2m3.5s`, `300ms`, `0`) in nanoseconds. BuildKit refuses durations
/// between 0 and 1ms.
pub fn parse_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    let ns = total as i64;
    (ns == 0 || ns >= 1_000_000).then_some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Instruction, ErrorKind> {
        parse(text)
            .map(|(_, mut v)| v.remove(0).instruction)
            .map_err(|e| e.kind)
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            one("ENV A B C").unwrap(),
            Instruction::Env(vec![KeyValue {
                key: "A".into(),
                value: "B C".into()
            }])
        );
        let Instruction::Env(p) = one("ENV A=1 B=\"x y\"").unwrap() else {
            panic!()
        };
        assert_eq!(p[1].value, "\"x y\"");
        assert!(matches!(one("ENV A=1 B"), Err(ErrorKind::MissingEquals(_))));
    }

    #[test]
    fn flags_are_validated() {
        assert!(matches!(
            one("COPY --nope a b"),
            Err(ErrorKind::UnknownFlag { .. })
        ));
        assert!(matches!(
            one("COPY --from a b"),
            Err(ErrorKind::FlagNeedsValue(_))
        ));
        assert!(matches!(
            one("ADD --from=x a b"),
            Err(ErrorKind::UnknownFlag { .. })
        ));
        assert!(matches!(
            one("RUN --mount=type=cache,target=/x --mount=type=bind,target=/y true"),
            Ok(Instruction::Run(Run { ref mounts, .. })) if mounts.len() == 2
        ));
    }

    #[test]
    fn mounts_are_parsed_after_expansion() {
        let Instruction::Run(run) = one("RUN --mount=type=$T,target=$D,from=stage true").unwrap()
        else {
            panic!()
        };
        assert_eq!(run.mounts[0].from.as_deref(), Some("stage"));
        let env: std::collections::BTreeMap<String, String> =
            [("T".into(), "cache".into()), ("D".into(), "/c".into())].into();
        let lexer = super::super::shell::Lexer::new('\\');
        let mut expand = |v: &str| {
            lexer
                .expand_word(v, &env)
                .map_err(|e| ErrorKind::Expansion {
                    word: v.into(),
                    reason: e.to_string(),
                })
        };
        let m = parse_mount(&run.mounts[0].raw, &mut expand).unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert_eq!(m.get("target"), Some("/c"));
        let err = parse_mount("type=cache,traget=/x", &mut expand).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("unknown option `traget` (did you mean `target`?)"),
            "{err}"
        );
        assert!(matches!(
            one("RUN --mount=from=$S,target=/x true"),
            Err(ErrorKind::BadMount { .. })
        ));
        // A `$` at the very end is no variable (BuildKit's check).
        assert!(one("RUN --mount=from=a$,target=/x true").is_ok());
    }

    #[test]
    fn chmod_forms() {
        for ok in ["755", "0644", "01234", "7777", "u+x", "go-w,u=rwX", "a+rx"] {
            assert!(valid_chmod(ok), "{ok}");
        }
        for bad in ["999", "abc", "u", "+q", "12345"] {
            assert!(!valid_chmod(bad), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("1ns"), None);
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn onbuild_refuses_nested() {
        assert_eq!(
            one("ONBUILD ONBUILD RUN x"),
            Err(ErrorKind::BadOnbuild("ONBUILD".into()))
        );
        assert!(matches!(one("ONBUILD RUN x"), Ok(Instruction::Onbuild(_))));
    }
}
