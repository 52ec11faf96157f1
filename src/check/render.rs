//! How warnings read: as text, located like errors (`Dockerfile:3: ...` and the lines), and
//! as JSON for CI annotations (schema in docs/checks/README.md).

use serde::Serialize;

use super::{Report, Warning};

/// One warning as text, without a `warning:` prefix (the caller's renderer adds one):
/// ```text
/// Dockerfile:1: FromAsCasing: 'as' and 'FROM' keywords' casing do not match
///    1 | FROM busybox as base
///    = https://docs.docker.com/go/dockerfile/rule/from-as-casing/
/// ```
pub fn text(file: &str, dockerfile: &str, w: &Warning) -> String {
    // At most 5 lines of a long instruction: the excerpt locates, it does not reproduce.
    let last = w.span.end_line.min(w.span.line + 4);
    format!(
        "{file}:{}: {}: {}\n{}\n   = {}",
        w.span.line,
        w.rule.name,
        w.message,
        crate::dockerfile::excerpt(dockerfile, w.span.line, last),
        w.rule.url
    )
}

/// Every warning as text, each with `prefix` (`warning: `), then the summary line.
pub fn report_text(report: &Report, dockerfile: &str) -> String {
    let mut out = String::new();
    for w in &report.warnings {
        out.push_str("warning: ");
        out.push_str(&text(&report.file, dockerfile, w));
        out.push('\n');
    }
    out.push_str(&summary(report));
    out.push('\n');
    out
}

/// `check complete: no warnings found` / `check complete: 2 warnings found`.
pub fn summary(report: &Report) -> String {
    match report.warnings.len() {
        0 => "check complete: no warnings found".to_string(),
        1 => "check complete: 1 warning found".to_string(),
        n => format!("check complete: {n} warnings found"),
    }
}

/// Schema version of [`json`]; bumped on any incompatible change.
pub const JSON_SCHEMA: u32 = 1;

#[derive(Serialize)]
struct JsonReport<'a> {
    schema: u32,
    file: &'a str,
    warnings: Vec<JsonWarning<'a>>,
    /// BuildKit's `lint violation found for rules: ...` at error level, or why the checks
    /// could not run (the Dockerfile's parse error); else null.
    error: Option<String>,
}

#[derive(Serialize)]
struct JsonWarning<'a> {
    file: &'a str,
    line: usize,
    end_line: usize,
    column: usize,
    end_column: usize,
    rule: &'a str,
    level: &'a str,
    message: &'a str,
    description: &'a str,
    url: &'a str,
}

/// The report as one JSON document (pretty-printed, keys in a fixed order).
pub fn json(report: &Report) -> String {
    let doc = JsonReport {
        schema: JSON_SCHEMA,
        file: &report.file,
        warnings: report
            .warnings
            .iter()
            .map(|w| JsonWarning {
                file: &report.file,
                line: w.span.line,
                end_line: w.span.end_line,
                column: w.span.column,
                end_column: w.span.end_column,
                rule: w.rule.name,
                level: if report.is_error(w) {
                    "error"
                } else {
                    "warning"
                },
                message: &w.message,
                description: w.rule.description,
                url: w.rule.url,
            })
            .collect(),
        error: report.violation(),
    };
    let mut s = serde_json::to_string_pretty(&doc).expect("plain data serializes");
    s.push('\n');
    s
}

/// The JSON document for checks that could not run: no warnings, `error` says why (one
/// line, e.g. `Dockerfile:3: unknown instruction `RUNN` (did you mean `RUN`?)`).
pub fn json_error(file: &str, error: &str) -> String {
    let doc = JsonReport {
        schema: JSON_SCHEMA,
        file,
        warnings: Vec::new(),
        error: Some(error.to_string()),
    };
    let mut s = serde_json::to_string_pretty(&doc).expect("plain data serializes");
    s.push('\n');
    s
}
