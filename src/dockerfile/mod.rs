//! Dockerfile frontend: `syntax` (text -> AST with spans), `shell` (BuildKit's word
//! expansion), `instructions` (typed, validated instructions). Pure: no I/O.

pub mod chmod;
pub mod instructions;
pub mod shell;
pub mod syntax;

/// What went wrong on a Dockerfile line. The line number and the file name are added by
/// the caller ([`crate::plan::PlanError`]), which also shows the offending line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// The keyword as written, then a suggestion (` (did you mean `RUN`?)`) or nothing.
    #[error("unknown instruction `{0}`{1}")]
    UnknownInstruction(String, String),
    #[error("unknown flag `--{flag}` for {instruction}{suggestion}")]
    UnknownFlag {
        instruction: String,
        flag: String,
        suggestion: String,
    },
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
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray,
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
    // BuildKit's wording, so that searches for it find the workaround.
    #[error("variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround: `{0}`")]
    FromWithVariable(String),
    #[error("invalid chmod parameter `{0}`: expecting an octal mode between 0 and 07777 or a symbolic mode like u+x,g-w")]
    BadChmod(String),
    #[error("invalid stage name `{0}`: must start with a letter and contain only letters, digits, `-`, `_` and `.`")]
    BadStageName(String),
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
    #[error("dockerfile contains no stages to build: a stage starts with FROM (only ARG may come before it)")]
    MissingFrom,
    #[error("{0} is not allowed before the first FROM")]
    BeforeFrom(String),
    #[error("target stage `{target}` could not be found{suggestion}{}", stage_list(.stages))]
    UnknownTarget {
        target: String,
        /// Names of the Dockerfile's named stages, in file order.
        stages: Vec<String>,
        /// ` (did you mean `build`?)` or empty ([`did_you_mean`]).
        suggestion: String,
    },
    /// `--no-cache-filter` naming no stage (BuildKit ignores it; a typo would silently
    /// keep the cache).
    #[error("--no-cache-filter: stage `{stage}` could not be found{suggestion}{}", stage_list(.stages))]
    UnknownNoCacheStage {
        stage: String,
        stages: Vec<String>,
        suggestion: String,
    },
    #[error("file with no instructions: dockerfile contains no stages to build")]
    Empty,
    #[error("resolving base image `{reference}`: {reason}")]
    Resolve { reference: String, reason: String },
    #[error("when using COPY with more than one source file, the destination must be a directory and end with a /")]
    MultiSourceDest,
    #[error("{0}")]
    Invalid(String),
}

/// Lines `first..=last` of a Dockerfile as an error or a warning shows them, one
/// `   3 | RUN x` row each (the one excerpt format of located messages).
pub fn excerpt(text: &str, first: usize, last: usize) -> String {
    let lines: Vec<&str> = text.trim_start_matches('\u{feff}').lines().collect();
    (first..=last.max(first))
        .map(|n| {
            let line = lines.get(n.saturating_sub(1)).copied().unwrap_or("");
            format!("{n:>4} | {}", line.trim_end_matches('\r'))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn stage_list(stages: &[String]) -> String {
    if stages.is_empty() {
        "; the Dockerfile has no named stages (name one with `FROM ... AS NAME`)".to_string()
    } else {
        format!("; stages: {}", stages.join(", "))
    }
}

/// ` (did you mean `X`?)` when one of `options` is within edit distance 2 of `value`, or
/// nothing. BuildKit's `suggest` package: Levenshtein distance below 3, the first closest
/// option wins, an exact match suggests nothing; without `case_sensitive` the comparison
/// ignores case and the suggestion takes the case of `value` (`RUNN` -> `RUN`, `rnu` ->
/// `run`).
pub(crate) fn did_you_mean(value: &str, options: &[&str], case_sensitive: bool) -> String {
    match suggest(value, options, case_sensitive) {
        Some(found) => format!(" (did you mean `{found}`?)"),
        None => String::new(),
    }
}

/// The option [`did_you_mean`] would suggest, bare (BuildKit's `suggest.Search`).
pub(crate) fn suggest(value: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let val = fold(value);
    let mut best: Option<(usize, String)> = None;
    for opt in options {
        let opt = fold(opt);
        if opt == val {
            return None;
        }
        let dist = levenshtein(&val, &opt);
        if dist < best.as_ref().map_or(3, |(d, _)| *d) {
            best = Some((dist, opt));
        }
    }
    let (_, mut found) = best?;
    if !case_sensitive && value == value.to_uppercase() {
        found = found.to_uppercase();
    }
    Some(found)
}

/// Edit distance in characters (insertions, deletions, substitutions).
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
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
    use std::path::Path;

    #[test]
    fn suggestions_follow_buildkit() {
        use super::did_you_mean;
        let names = ["from", "run", "cmd", "copy"];
        assert_eq!(
            did_you_mean("RUNN", &names, false),
            " (did you mean `RUN`?)"
        );
        assert_eq!(did_you_mean("rnu", &names, false), " (did you mean `run`?)");
        assert_eq!(
            did_you_mean("Cpoy", &names, false),
            " (did you mean `copy`?)"
        );
        assert_eq!(did_you_mean("NOTANINSTRUCTION", &names, false), "");
        assert_eq!(did_you_mean("run", &names, false), "");
        assert_eq!(
            did_you_mean("Cache", &["cache"], true),
            " (did you mean `cache`?)"
        );
    }

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
