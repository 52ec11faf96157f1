//! `rbuild prune` flags -> [`PruneOptions`], as `docker buildx prune` reads them.

use std::time::Duration;

use super::UserError;
use crate::store::PruneOptions;

/// `--all`, `--keep-storage SIZE` and `--filter KEY=VALUE`s. The only filter is `until`
/// (`unused-for`, its old name, too), a Go duration as buildx's: it takes no timestamps.
pub(super) fn options(
    all: bool,
    keep_storage: Option<&str>,
    filters: &[String],
) -> Result<PruneOptions, UserError> {
    let keep_storage = keep_storage
        .map(|s| {
            crate::plan::parse_size(s).ok_or_else(|| {
                UserError(format!(
                    "invalid --keep-storage `{s}`: expected a size such as `10GB` or `512MB`"
                ))
            })
        })
        .transpose()?;
    let mut until = None;
    for f in filters {
        let (key, value) = f.split_once('=').unwrap_or((f, ""));
        if key != "until" && key != "unused-for" {
            return Err(UserError(format!(
                "invalid filter `{f}`: rbuild prune supports `until=DURATION` only"
            )));
        }
        if until.is_some() {
            return Err(UserError(format!(
                "filter `{f}`: `until` expects only one value"
            )));
        }
        let ns = crate::dockerfile::instructions::parse_duration(value)
            .and_then(|ns| u64::try_from(ns).ok())
            .ok_or_else(|| {
                UserError(format!(
                    "invalid filter `{f}`: `{key}` expects a duration (e.g., `24h`, `1h30m`)"
                ))
            })?;
        until = Some(Duration::from_nanos(ns));
    }
    Ok(PruneOptions {
        all,
        keep_storage,
        until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(f: &[&str]) -> Result<PruneOptions, UserError> {
        options(
            false,
            None,
            &f.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn sizes_and_durations_as_buildx_reads_them() {
        let o = options(true, Some("1.5gb"), &["until=1h30m".into()]).unwrap();
        assert_eq!(o.keep_storage, Some(3 << 29));
        assert_eq!(o.until, Some(Duration::from_secs(5400)));
        assert!(o.all);
        assert_eq!(
            filters(&["unused-for=24h"]).unwrap().until,
            Some(Duration::from_secs(86400))
        );
        assert_eq!(filters(&[]).unwrap(), PruneOptions::default());
    }

    #[test]
    fn bad_values_name_the_flag_and_what_it_expects() {
        let e = options(false, Some("lots"), &[]).unwrap_err().0;
        assert!(e.contains("--keep-storage `lots`"), "{e}");
        let e = filters(&["until=2024-01-01T00:00:00Z"]).unwrap_err().0;
        assert!(e.contains("expects a duration"), "{e}");
        let e = filters(&["type=regular"]).unwrap_err().0;
        assert!(e.contains("`until=DURATION` only"), "{e}");
        let e = filters(&["until=1h", "until=2h"]).unwrap_err().0;
        assert!(e.contains("only one value"), "{e}");
    }
}
