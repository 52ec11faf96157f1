//! Dockerfile frontend: `syntax` (text -> AST with spans), `shell` (BuildKit's word
//! expansion), `instructions` (typed, validated instructions). Pure: no I/O.

pub mod instructions;
pub mod shell;
pub mod syntax;

/// What went wrong on a Dockerfile line. The line number and the file name are added by
/// the caller ([`crate::plan::PlanError`]), which also shows the offending line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("unknown instruction `{0}`")]
    UnknownInstruction(String),
    #[error("unknown flag `--{flag}` for {instruction}")]
    UnknownFlag { instruction: String, flag: String },
    #[error("duplicate flag `--{0}`")]
    DuplicateFlag(String),
    #[error("flag `--{0}` needs a value")]
    FlagNeedsValue(String),
    #[error("invalid value `{value}` for flag `--{flag}`: {reason}")]
    InvalidFlagValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("{0} requires at least one argument")]
    MissingArguments(String),
    #[error("{instruction} requires exactly {count} argument(s)")]
    WrongArgumentCount { instruction: String, count: usize },
    #[error("{0} requires at least two arguments, but only one was provided. Destination could not be determined")]
    MissingDestination(String),
    #[error("SHELL requires the arguments to be in JSON form")]
    ShellNotJson,
    #[error("unterminated heredoc `{0}`")]
    UnterminatedHeredoc(String),
    #[error("only one `{0}` parser directive can be used")]
    DuplicateDirective(String),
    #[error("invalid escape token `{0}` does not match ` or \\")]
    InvalidEscape(String),
    #[error("syntax error - can't find = in `{0}`. Must be of the form: name=value")]
    MissingEquals(String),
    #[error("{0}")]
    Syntax(String),
    #[error("ONBUILD {0} is not allowed as a trigger")]
    BadOnbuild(String),
    #[error("invalid --mount `{spec}`: {reason}")]
    BadMount { spec: String, reason: String },
    #[error("expanding `{word}`: {reason}")]
    Expansion { word: String, reason: String },
    #[error("invalid port `{0}`")]
    BadPort(String),
    #[error("COPY --from cannot contain variables: `{0}`")]
    FromWithVariable(String),
    #[error("invalid stage name `{0}`: must start with a letter and contain only letters, digits, `-`, `_` and `.`")]
    BadStageName(String),
    #[error("duplicate stage name `{0}`")]
    DuplicateStageName(String),
    #[error("no build stage `{0}` (stages reference an earlier stage by name or index)")]
    UnknownStage(String),
    #[error("stage `{0}` depends on itself (cycle: {1})")]
    Cycle(String, String),
    /// BuildKit builds stages in file order, so a stage can only use earlier ones.
    #[error(
        "cannot copy from stage `{from}`, it needs to be defined before current stage `{stage}`"
    )]
    CopyFromLaterStage { from: String, stage: String },
    #[error("cannot mount from stage `{from}` to `{target}`, stage needs to be defined before current command")]
    MountFromLaterStage { from: String, target: String },
    #[error("no FROM instruction: the Dockerfile must start with FROM (ARG may come before)")]
    MissingFrom,
    #[error("{0} is not allowed before the first FROM")]
    BeforeFrom(String),
    #[error("target stage `{target}` could not be found{}", target_hint(.stages, .suggestion))]
    UnknownTarget {
        target: String,
        /// Names of the Dockerfile's named stages, in file order.
        stages: Vec<String>,
        suggestion: Option<String>,
    },
    #[error("the Dockerfile has no instructions")]
    Empty,
    #[error("resolving base image `{reference}`: {reason}")]
    Resolve { reference: String, reason: String },
    #[error("when using COPY with more than one source file, the destination must be a directory and end with a /")]
    MultiSourceDest,
    #[error("{0}")]
    Invalid(String),
}

/// The option nearest to `value` (case-insensitive edit distance below 3, as BuildKit's
/// `suggest` package), for "did you mean ...?" hints; `None` for an exact match.
pub fn suggest(value: &str, options: &[String]) -> Option<String> {
    let value = value.to_lowercase();
    let mut best: Option<(usize, &String)> = None;
    for opt in options {
        let d = edit_distance(&value, &opt.to_lowercase());
        if d == 0 {
            return None;
        }
        if d < best.map_or(3, |(b, _)| b) {
            best = Some((d, opt));
        }
    }
    best.map(|(_, o)| o.clone())
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

fn target_hint(stages: &[String], suggestion: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(s) = suggestion {
        out.push_str(&format!(" (did you mean `{s}`?)"));
    }
    if stages.is_empty() {
        out.push_str("; the Dockerfile has no named stages (name one with `FROM ... AS NAME`)");
    } else {
        out.push_str(&format!("; stages: {}", stages.join(", ")));
    }
    out
}

/// The golden `ast` dump: the syntax tree, then each node lowered to its typed instruction
/// (or the error lowering gave).
pub fn dump(text: &str) -> Result<String, syntax::SyntaxError> {
    use std::fmt::Write as _;
    let ast = syntax::parse(text)?;
    let mut out = syntax::dump(&ast);
    out.push_str("--\n");
    for node in &ast.nodes {
        match instructions::lower(node, ast.escape) {
            Ok(i) => {
                let _ = writeln!(out, "{}: {i:?}", node.start.line);
            }
            Err(e) => {
                let _ = writeln!(out, "{}: error: {e}", node.start.line);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn suggest_takes_the_nearest_option_within_two_edits() {
        let opts: Vec<String> = ["build", "runtime", "test"].map(String::from).to_vec();
        assert_eq!(super::suggest("biuld", &opts).as_deref(), Some("build"));
        assert_eq!(super::suggest("RUNTIM", &opts).as_deref(), Some("runtime"));
        assert_eq!(super::suggest("deploy", &opts), None);
        assert_eq!(
            super::suggest("Build", &opts),
            None,
            "an exact match suggests nothing"
        );
        assert_eq!(super::edit_distance("kitten", "sitting"), 3);
    }

    use std::path::Path;

    /// testdata/parse/<case>/{Dockerfile,ast}; `UPDATE_GOLDEN=1` rewrites the `ast` files.
    #[test]
    fn parse_corpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/parse");
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut cases: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        assert!(cases.len() >= 60, "only {} parse cases", cases.len());
        let mut failed = Vec::new();
        for case in cases {
            let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
            let got = match super::dump(&text) {
                Ok(d) => d,
                Err(e) => format!("syntax error at line {}: {}\n", e.line, e.kind),
            };
            let golden = case.join("ast");
            if update {
                std::fs::write(&golden, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&golden).unwrap_or_default();
            if want != got {
                eprintln!("--- {}\n{}", case.display(), got);
                failed.push(case.file_name().unwrap().to_string_lossy().to_string());
            }
        }
        assert!(failed.is_empty(), "golden mismatch: {failed:?}");
    }
}
