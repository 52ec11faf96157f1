//! SOURCE_DATE_EPOCH (<https://reproducible-builds.org/specs/source-date-epoch/>): the one
//! time a reproducible build uses for `created`, history entries, clamped layer mtimes and
//! archive metadata. Parsed and resolved once, at the command line, then passed down.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

/// Seconds since 1970-01-01 UTC.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct SourceDateEpoch(i64);

/// A SOURCE_DATE_EPOCH that is not a whole number of seconds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SOURCE_DATE_EPOCH `{value}`: expected seconds since 1970")]
pub struct EpochError {
    pub value: String,
}

impl SourceDateEpoch {
    pub fn from_seconds(seconds: i64) -> SourceDateEpoch {
        SourceDateEpoch(seconds)
    }

    /// One value: an empty one means unset (`SOURCE_DATE_EPOCH=` turns it off, as in buildx).
    pub fn parse(value: &str) -> Result<Option<SourceDateEpoch>, EpochError> {
        if value.is_empty() {
            return Ok(None);
        }
        value
            .parse::<i64>()
            .map(|s| Some(SourceDateEpoch(s)))
            .map_err(|_| EpochError {
                value: value.to_string(),
            })
    }

    /// The build's epoch from `--build-arg SOURCE_DATE_EPOCH` and the environment variable:
    /// both count and the build arg wins, as buildx passes the client's variable on only when
    /// no build arg of that name was given (docker/buildx#1482).
    pub fn resolve(
        build_arg: Option<&str>,
        env: Option<&str>,
    ) -> Result<Option<SourceDateEpoch>, EpochError> {
        match build_arg.or(env) {
            Some(v) => SourceDateEpoch::parse(v),
            None => Ok(None),
        }
    }

    pub fn seconds(self) -> i64 {
        self.0
    }

    /// As a tar mtime: ustar and most image tooling cannot express times before 1970.
    pub fn tar_mtime(self) -> u64 {
        self.0.max(0) as u64
    }

    /// RFC 3339 in UTC with second precision, as image configs and history carry it.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.tar_mtime()))
            .to_string()
    }
}

impl fmt::Display for SourceDateEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_arg_wins_over_the_environment_and_empty_means_unset() {
        let e = |s| Some(SourceDateEpoch::from_seconds(s));
        assert_eq!(SourceDateEpoch::resolve(Some("5"), Some("7")), Ok(e(5)));
        assert_eq!(SourceDateEpoch::resolve(None, Some("7")), Ok(e(7)));
        assert_eq!(SourceDateEpoch::resolve(Some(""), Some("7")), Ok(None));
        assert_eq!(SourceDateEpoch::resolve(None, Some("")), Ok(None));
        assert_eq!(SourceDateEpoch::resolve(None, None), Ok(None));
        let err = SourceDateEpoch::resolve(Some("yesterday"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SOURCE_DATE_EPOCH `yesterday`: expected seconds since 1970"
        );
    }

    #[test]
    fn formats_as_config_time_and_tar_mtime() {
        let e = SourceDateEpoch::from_seconds(1_700_000_000);
        assert_eq!(e.rfc3339(), "2023-11-14T22:13:20Z");
        assert_eq!(e.tar_mtime(), 1_700_000_000);
        assert_eq!(e.to_string(), "1700000000");
        assert_eq!(serde_json::to_string(&Some(e)).unwrap(), "1700000000");
        assert_eq!(SourceDateEpoch::from_seconds(-5).tar_mtime(), 0);
        assert_eq!(
            SourceDateEpoch::from_seconds(-5).rfc3339(),
            "1970-01-01T00:00:00Z"
        );
    }
}
