//! The check configuration: `skip=A,B|all;error=true|false;experimental=A,B|all`, as
//! BuildKit's `linter.ParseLintOptions` reads it from the `# check=` directive or the
//! `BUILDKIT_DOCKERFILE_CHECK` build arg.

use std::collections::BTreeSet;

use super::Rule;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    pub skip_all: bool,
    pub skip: BTreeSet<String>,
    pub experimental_all: bool,
    pub experimental: BTreeSet<String>,
    /// `error=true`: a rule that fires fails the build (exit 1 for `rbuild check`).
    pub error: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid check option `{0}` (expected skip=RULES|all, error=true|false or experimental=RULES|all)")]
    Invalid(String),
    #[error("invalid check option `{0}`: expected true or false")]
    NotBool(String),
}

impl CheckConfig {
    /// Parse a configuration string. As BuildKit, at most three `;`-separated parts are
    /// read (a third part keeps any further `;`), rule names are not checked (a misspelt
    /// name skips nothing), and an empty string is the default configuration.
    pub fn parse(text: &str) -> Result<CheckConfig, ConfigError> {
        let mut config = CheckConfig::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(config);
        }
        for part in text.splitn(3, ';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(ConfigError::Invalid(part.to_string()));
            };
            let value = value.trim();
            let names =
                || -> BTreeSet<String> { value.split(',').map(|n| n.trim().to_string()).collect() };
            match key.trim() {
                "skip" if value == "all" => config.skip_all = true,
                "skip" => config.skip = names(),
                "experimental" if value == "all" => config.experimental_all = true,
                "experimental" => config.experimental = names(),
                // Go's strconv.ParseBool.
                "error" => {
                    config.error = match value {
                        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                        _ => return Err(ConfigError::NotBool(part.to_string())),
                    }
                }
                other => return Err(ConfigError::Invalid(other.to_string())),
            }
        }
        Ok(config)
    }

    /// Whether `rule` runs: an experimental rule only when asked for (skip lists do not
    /// apply to it, as in BuildKit), any other unless skipped.
    pub fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !(self.skip_all || self.skip.contains(rule.name))
        }
    }

    /// This configuration with the first `check=` comment among `comments` merged in
    /// (skip and experimental lists add up; `error` stays the file's). A comment that does
    /// not parse changes nothing, as in BuildKit.
    pub fn merged_with_comments(&self, comments: &[String]) -> CheckConfig {
        let mut merged = self.clone();
        for comment in comments {
            let Some((key, value)) = comment.split_once('=') else {
                continue;
            };
            if !key.trim().eq_ignore_ascii_case("check") {
                continue;
            }
            let value = value.trim();
            let value = value.split(' ').next().unwrap_or("");
            let Ok(other) = CheckConfig::parse(value) else {
                return merged;
            };
            merged.skip_all |= other.skip_all;
            merged.experimental_all |= other.experimental_all;
            merged.skip.extend(other.skip);
            merged.experimental.extend(other.experimental);
            return merged;
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_buildkit() {
        let c = CheckConfig::parse("skip=A, B;error=true").unwrap();
        assert_eq!(c.skip, ["A", "B"].map(String::from).into());
        assert!(c.error && !c.skip_all);
        let c = CheckConfig::parse(" skip=all ").unwrap();
        assert!(c.skip_all);
        assert_eq!(CheckConfig::parse("").unwrap(), CheckConfig::default());
        assert_eq!(
            CheckConfig::parse("error=1;experimental=all").unwrap(),
            CheckConfig {
                error: true,
                experimental_all: true,
                ..Default::default()
            }
        );
        assert_eq!(
            CheckConfig::parse("skip"),
            Err(ConfigError::Invalid("skip".into()))
        );
        assert_eq!(
            CheckConfig::parse("nope=x"),
            Err(ConfigError::Invalid("nope".into()))
        );
        assert_eq!(
            CheckConfig::parse("error=yes"),
            Err(ConfigError::NotBool("error=yes".into()))
        );
    }

    #[test]
    fn comments_add_skips_but_not_error_level() {
        let file = CheckConfig::parse("skip=A").unwrap();
        let merged = file.merged_with_comments(&[
            "a plain comment".into(),
            "check=skip=B;error=true".into(),
            "check=skip=C".into(),
        ]);
        assert_eq!(merged.skip, ["A", "B"].map(String::from).into());
        assert!(!merged.error);
        // An unparsable comment changes nothing.
        assert_eq!(file.merged_with_comments(&["check=bogus".into()]), file);
    }

    #[test]
    fn experimental_rules_need_asking() {
        use crate::check::rules;
        let c = CheckConfig::default();
        assert!(!c.enabled(&rules::INVALID_DEFINITION_DESCRIPTION));
        assert!(c.enabled(&rules::FROM_AS_CASING));
        let c = CheckConfig::parse("skip=all;experimental=InvalidDefinitionDescription").unwrap();
        assert!(c.enabled(&rules::INVALID_DEFINITION_DESCRIPTION));
        assert!(!c.enabled(&rules::FROM_AS_CASING));
    }
}
