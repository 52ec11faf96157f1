//! Build checks (pure): BuildKit's 22 Dockerfile rules with BuildKit's names, conditions and
//! messages (frontend/dockerfile/linter), plus rbuild's own image-hygiene rules. A check
//! reads the Dockerfile's AST, the build's arguments and, through [`BaseImages`], the
//! configs of its base images (UndefinedVar needs their ENV); it never runs anything.
//!
//! Which rules run is BuildKit's configuration: the `# check=skip=A,B;error=true`
//! directive, or the `BUILDKIT_DOCKERFILE_CHECK` build arg, which replaces the directive
//! when given. A `# check=` comment right above an instruction skips rules for that
//! instruction only. docs/checks/ has a page per rule.

mod buildkit;
mod config;
mod hygiene;
pub mod render;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};

use crate::context::IgnoreMatcher;
use crate::dockerfile::syntax::{self, Node};
use crate::image::{ImageConfig, Platform};
use crate::plan::{PlanError, Source};

pub use config::CheckConfig;
pub use rules::{Origin, Rule, RULES};

/// The build arg that replaces the `# check=` directive (BuildKit's).
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// One rule that fired, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub rule: &'static Rule,
    pub message: String,
    pub span: Span,
}

/// 1-based lines and columns; `end_column` is the column of the last character (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
}

/// The result of checking one Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The Dockerfile as messages name it (`Dockerfile`, `-f` as given).
    pub file: String,
    pub warnings: Vec<Warning>,
    /// `error=true`: a warning fails the build or the check.
    pub error_level: bool,
}

impl Report {
    /// BuildKit's `lint violation found for rules: A, B` when the rules are at error level
    /// and at least one of them fired; rule names sorted, each once.
    pub fn violation(&self) -> Option<String> {
        let names: BTreeSet<&str> = self
            .warnings
            .iter()
            .filter(|w| self.is_error(w))
            .map(|w| w.rule.name)
            .collect();
        if names.is_empty() {
            return None;
        }
        Some(format!(
            "lint violation found for rules: {}",
            names.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

impl Report {
    /// Whether `w` is at error level: `error=true`, unless its rule is advice only.
    pub fn is_error(&self, w: &Warning) -> bool {
        self.error_level && !w.rule.warning_only
    }
}

/// Why the checks could not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The Dockerfile does not parse (the same error a build gives).
    #[error(transparent)]
    Dockerfile(#[from] PlanError),
    /// A bad `# check=` directive or `BUILDKIT_DOCKERFILE_CHECK` value; `origin` names it.
    #[error("{origin}: {source}")]
    Config {
        origin: String,
        source: config::ConfigError,
    },
}

/// What a base image tells the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseImage {
    /// `Env` of the image config, in order.
    pub env: Vec<(String, String)>,
    /// The config has a `Shell` (CMD/ENTRYPOINT in shell form then use it).
    pub shell: bool,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl BaseImage {
    pub fn from_config(config: &ImageConfig) -> BaseImage {
        let env = config
            .config
            .env
            .iter()
            .flatten()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect();
        BaseImage {
            env,
            shell: config.config.shell.as_ref().is_some_and(|s| !s.is_empty()),
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
        }
    }
}

/// Looks up base images by their expanded reference; `None` when it cannot be found (the
/// rules that need the image then stay quiet for that stage rather than guess).
pub trait BaseImages {
    fn lookup(&mut self, reference: &str) -> Option<BaseImage>;
}

/// No base images: checks that need one stay quiet.
pub struct NoBases;

impl BaseImages for NoBases {
    fn lookup(&mut self, _: &str) -> Option<BaseImage> {
        None
    }
}

/// The build context, for rules that look at the files a COPY brings (SecretFileCopied).
pub trait ContextFiles: std::fmt::Debug {
    /// Context-relative paths of the regular files `source` copies, after .dockerignore
    /// and `excludes` (COPY --exclude); `None` when that cannot be told.
    fn files(&self, source: &str, excludes: &[String]) -> Option<Vec<String>>;
    /// The contents of a context file (`None` when it cannot be read).
    fn read(&self, path: &str) -> Option<Vec<u8>>;
}

/// The build's inputs the checks see.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions<'a> {
    pub file_name: &'a str,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<&'a str>,
    pub platform: Platform,
    /// Check every stage (`rbuild check` without `--target`, as BuildKit's lint); else only
    /// the stages the target needs, as a build does.
    pub all_stages: bool,
    /// The build's .dockerignore (CopyIgnoredFile); `None` when there is none.
    pub ignore: Option<&'a IgnoreMatcher>,
    /// The build context; without it SecretFileCopied judges the names in the Dockerfile.
    pub context: Option<&'a dyn ContextFiles>,
}

/// The configuration in effect: `BUILDKIT_DOCKERFILE_CHECK` when given, else the
/// `# check=` directive, else every rule at warning level. A bad value is an error before
/// anything is built, as in BuildKit.
pub fn config(
    text: &str,
    file_name: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<CheckConfig, CheckError> {
    if let Some(v) = build_args.get(CHECK_BUILD_ARG) {
        return CheckConfig::parse(v).map_err(|source| CheckError::Config {
            origin: format!("build arg {CHECK_BUILD_ARG}"),
            source,
        });
    }
    let src = Source {
        name: file_name,
        text,
    };
    let ast = syntax::parse(text).map_err(|e| src.line_error(e.into()))?;
    match &ast.directives.check {
        None => Ok(CheckConfig::default()),
        Some(v) => CheckConfig::parse(v).map_err(|source| CheckError::Config {
            origin: format!("{file_name}: `# check=` directive"),
            source,
        }),
    }
}

/// Run every enabled rule over `text`.
pub fn check(
    text: &str,
    opts: &CheckOptions,
    bases: &mut dyn BaseImages,
) -> Result<Report, CheckError> {
    let config = config(text, opts.file_name, &opts.build_args)?;
    let mut lint = Linter::new(text, config);
    buildkit::run(text, opts, bases, &mut lint)?;
    let error_level = lint.config.error;
    let mut warnings = lint.warnings;
    // File order; rules that fired on one line keep the order they ran in.
    warnings.sort_by_key(|w| w.span.line);
    Ok(Report {
        file: opts.file_name.to_string(),
        warnings,
        error_level,
    })
}

/// Collects warnings, honouring the configuration (BuildKit's `linter.Linter`).
pub(crate) struct Linter<'t> {
    config: CheckConfig,
    lines: Vec<&'t str>,
    warnings: Vec<Warning>,
}

impl<'t> Linter<'t> {
    fn new(text: &'t str, config: CheckConfig) -> Linter<'t> {
        let lines = text.trim_start_matches('\u{feff}').lines().collect();
        Linter {
            config,
            lines,
            warnings: Vec::new(),
        }
    }

    /// The span of a whole instruction: its keyword to the end of its last line.
    fn span_of(&self, node: &Node) -> Span {
        Span {
            line: node.start.line,
            column: node.start.column.max(1),
            end_line: node.end_line,
            end_column: self.line_width(node.end_line),
        }
    }

    fn line_span(&self, line: usize) -> Span {
        Span {
            line,
            column: 1,
            end_line: line,
            end_column: self.line_width(line),
        }
    }

    fn line_width(&self, line: usize) -> usize {
        let text = self.lines.get(line.wrapping_sub(1)).copied().unwrap_or("");
        text.trim_end_matches('\r').chars().count().max(1)
    }

    /// Report `rule` at `node` with the file's configuration merged with the `# check=`
    /// comments right above the node (BuildKit's `WithMergedConfigFromComments`).
    fn at(&mut self, rule: &'static Rule, node: &Node, message: String) {
        let span = self.span_of(node);
        let config = self.config.merged_with_comments(&node.comments);
        self.push(&config, rule, span, message);
    }

    /// Report `rule` with the file's configuration only (BuildKit's whole-file
    /// validations, which do not look at comments).
    fn at_span(&mut self, rule: &'static Rule, span: Span, message: String) {
        let config = self.config.clone();
        self.push(&config, rule, span, message);
    }

    /// Report `rule` at `span` with the configuration of `node`'s comments.
    fn at_span_with_comments(
        &mut self,
        rule: &'static Rule,
        span: Span,
        node: &Node,
        message: String,
    ) {
        let config = self.config.merged_with_comments(&node.comments);
        self.push(&config, rule, span, message);
    }

    fn push(&mut self, config: &CheckConfig, rule: &'static Rule, span: Span, message: String) {
        if config.enabled(rule) {
            self.warnings.push(Warning {
                rule,
                message,
                span,
            });
        }
    }
}

#[cfg(test)]
mod tests;
