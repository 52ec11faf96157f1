//! History: the `created_by` text BuildKit records for an instruction, where it is more than
//! the instruction's keyword and expanded words (RUN's build args, HEALTHCHECK's Go struct
//! print, COPY/ADD's commit message), and the Go formats it uses.

use std::collections::BTreeMap;

use super::CopyOp;
use crate::image::HealthConfig;

/// BuildKit's `runCommandString`: the stage's ARGs as `|N K=V ...` before the command.
pub(super) fn run_command_string(
    argv: &[String],
    arg_history: &[(String, Option<String>)],
    scope: &BTreeMap<String, String>,
) -> String {
    let args: Vec<String> = arg_history
        .iter()
        .map(|(k, v)| {
            let v = scope
                .get(k)
                .cloned()
                .or_else(|| v.clone())
                .unwrap_or_default();
            format!("{k}={v}")
        })
        .collect();
    if args.is_empty() {
        argv.join(" ")
    } else {
        format!("|{} {} {}", args.len(), args.join(" "), argv.join(" "))
    }
}

/// HEALTHCHECK as BuildKit prints its `HealthConfig` (Go's `%v` of a struct pointer).
pub(super) fn healthcheck(hc: &HealthConfig) -> String {
    format!(
        "HEALTHCHECK &{{{} {:?} {:?} {:?} {:?} {}}}",
        go_quote_list(hc.test.as_deref().unwrap_or_default()),
        go_duration(hc.interval.unwrap_or(0)),
        go_duration(hc.timeout.unwrap_or(0)),
        go_duration(hc.start_period.unwrap_or(0)),
        go_duration(hc.start_interval.unwrap_or(0)),
        go_quote_rune(hc.retries.unwrap_or(0)),
    )
}

/// BuildKit's commit message for COPY/ADD: flags that change the result, the sources as
/// written (expanded), heredoc names, the destination as written (expanded).
pub(super) fn copy(
    op: &CopyOp,
    shown: Vec<String>,
    heredoc_names: Vec<String>,
    dest_raw: String,
) -> String {
    let kw = if op.add { "ADD" } else { "COPY" };
    let mut msg = vec![kw.to_string()];
    if op.parents {
        msg.push("--parents".into());
    }
    if let Some(c) = &op.chown {
        msg.push(format!("--chown={c}"));
    }
    if let Some(c) = &op.chmod {
        msg.push(format!("--chmod={c}"));
    }
    msg.extend(shown);
    msg.extend(heredoc_names);
    msg.push(dest_raw);
    format!("{} # buildkit", msg.join(" "))
}

/// Go's `%q` of a `[]string`: `["/bin/sh" "-c" "echo hi"]`.
pub(super) fn go_quote_list(words: &[String]) -> String {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| serde_json::to_string(w).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `%q` of an integer (a quoted rune), as BuildKit's HEALTHCHECK history shows Retries.
pub(super) fn go_quote_rune(n: i64) -> String {
    match u32::try_from(n).ok().and_then(char::from_u32) {
        Some(c) if !c.is_control() && c != '\'' && c != '\\' => format!("'{c}'"),
        _ if (0..=0xff).contains(&n) => format!("'\\x{n:02x}'"),
        _ => format!("'\\u{n:04x}'"),
    }
}

/// Go's `time.Duration.String()`.
pub(super) fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let s = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", trim_frac(u as f64 / 1e3))
    } else if u < 1_000_000_000 {
        format!("{}ms", trim_frac(u as f64 / 1e6))
    } else {
        let h = u / 3_600_000_000_000;
        let m = (u / 60_000_000_000) % 60;
        let secs = (u % 60_000_000_000) as f64 / 1e9;
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&format!("{}s", trim_frac(secs)));
        out
    };
    if neg {
        format!("-{s}")
    } else {
        s
    }
}

fn trim_frac(x: f64) -> String {
    let s = format!("{x:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formats() {
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(300_000_000_000), "5m0s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_quote_rune(3), "'\\x03'");
        assert_eq!(
            go_quote_list(&["a b".into(), "c".into()]),
            "[\"a b\" \"c\"]"
        );
    }
}
