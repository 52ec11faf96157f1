//! What a COPY reads: source arguments resolved to matches (wildcards per path component,
//! the top-level symlink dereferenced inside the root), then each match walked without
//! following symlinks, filtered by `.dockerignore` and `--exclude`. The content digest and
//! the copier both use this, so the cache key covers exactly what the copy reads.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{glob, host_path, open_root, ContextError, IgnoreMatcher};
use crate::sandbox::root::{clean, Root};

/// One match of a source argument.
#[derive(Debug)]
pub(crate) struct Match {
    /// The path as named by the source (wildcards expanded), relative to the root; its
    /// base name names the destination entry.
    pub named: String,
    /// Where it lives after resolving symlinks inside the root (relative to the root).
    pub real: String,
    pub host: PathBuf,
    pub meta: Metadata,
}

/// One entry below (or at) a match.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Path relative to the match (`""` for the match itself).
    pub rel: PathBuf,
    pub host: PathBuf,
    pub meta: Metadata,
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn stat(path: &Path, follow: bool) -> Result<Option<Metadata>, ContextError> {
    let r = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    match r {
        Ok(m) => Ok(Some(m)),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(ContextError::io(path, e)),
    }
}

/// Resolve one source argument under `root`. A literal path that does not exist is
/// `"/path": not found`, one that `.dockerignore` leaves out says so and names the pattern;
/// a wildcard that matches nothing gives no matches (BuildKit's dockerfile frontend sets
/// AllowEmptyWildcard), unless the directory part before the first wildcard is missing or
/// ignored, which BuildKit also reports as an error.
pub(crate) fn resolve(
    root: &Path,
    source: &str,
    follow_top: bool,
    ignore: &IgnoreMatcher,
) -> Result<Vec<Match>, ContextError> {
    let cleaned = clean(source);
    let beneath = &open_root(root)?;
    let components: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).collect();
    let first_meta = components.iter().position(|c| glob::has_meta(c));
    let Some(first_meta) = first_meta else {
        return literal(root, beneath, &cleaned, follow_top, ignore).map(|m| vec![m]);
    };
    for c in &components {
        if glob::has_meta(c) {
            glob::validate(c).map_err(|reason| ContextError::BadPattern {
                pattern: source.to_string(),
                reason,
            })?;
        }
    }
    // The fixed prefix must exist: BuildKit fails with lstat ENOENT there.
    let prefix = components[..first_meta].join("/");
    let prefix_real = super::resolve(beneath, &prefix, true)?;
    match stat(&host_path(root, &prefix_real), false)? {
        Some(m) if m.is_dir() => not_ignored(&prefix, &prefix_real, ignore)?,
        _ => return Err(ContextError::NotFound(prefix)),
    }
    // Candidates as named; expand component by component (Go's filepath.Glob).
    let mut candidates: Vec<String> = vec![prefix];
    for comp in &components[first_meta..] {
        let mut next = Vec::new();
        for cand in &candidates {
            let real = super::resolve(beneath, cand, true)?;
            let dir = host_path(root, &real);
            if glob::has_meta(comp) {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(_) => continue,
                };
                let mut names: Vec<String> = Vec::new();
                for e in rd {
                    let e = e.map_err(|e| ContextError::io(&dir, e))?;
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if glob::matches(comp, &name) {
                        names.push(name.into_owned());
                    }
                }
                names.sort();
                next.extend(names.into_iter().map(|n| join(cand, &n)));
            } else {
                next.push(join(cand, comp));
            }
        }
        candidates = next;
    }
    let mut out = Vec::new();
    for cand in candidates {
        let real = super::resolve(beneath, &cand, follow_top)?;
        let host = host_path(root, &real);
        let Some(meta) = stat(&host, false)? else {
            continue;
        };
        if ignore.matches(&real) {
            continue;
        }
        out.push(Match {
            named: cand,
            real,
            host,
            meta,
        });
    }
    Ok(out)
}

fn literal(
    root: &Path,
    beneath: &Root,
    cleaned: &str,
    follow_top: bool,
    ignore: &IgnoreMatcher,
) -> Result<Match, ContextError> {
    let real = super::resolve(beneath, cleaned, follow_top)?;
    let host = host_path(root, &real);
    let meta = stat(&host, false)?.ok_or_else(|| ContextError::NotFound(cleaned.to_string()))?;
    not_ignored(cleaned, &real, ignore)?;
    Ok(Match {
        named: cleaned.to_string(),
        real,
        host,
        meta,
    })
}

/// A source named `named` that exists at `real` must not be left out by `.dockerignore`:
/// BuildKit never receives it and fails with `not found`; rbuild says which pattern.
fn not_ignored(named: &str, real: &str, ignore: &IgnoreMatcher) -> Result<(), ContextError> {
    match ignore.excluded_by(real) {
        Some(pattern) => Err(ContextError::Ignored {
            path: named.to_string(),
            excluded: real.to_string(),
            pattern: pattern.to_string(),
        }),
        None => Ok(()),
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// Walk a match: the match itself first, then everything below a directory in byte-wise
/// name order, parents before children, symlinks not followed. `ignore` sees paths
/// relative to the root (the context), `excludes` paths relative to the match. A
/// directory that is itself ignored but may hold re-included entries is emitted only
/// when something inside it is.
pub(crate) fn walk(
    m: &Match,
    ignore: &IgnoreMatcher,
    excludes: &IgnoreMatcher,
) -> Result<Vec<Entry>, ContextError> {
    let mut out = vec![Entry {
        rel: PathBuf::new(),
        host: m.host.clone(),
        meta: m.meta.clone(),
    }];
    if m.meta.is_dir() {
        let mut pending = Vec::new();
        walk_dir(
            &m.host,
            Path::new(""),
            &m.real,
            ignore,
            excludes,
            &mut pending,
            &mut out,
        )?;
    }
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    rel: &Path,
    ctx_rel: &str,
    ignore: &IgnoreMatcher,
    excludes: &IgnoreMatcher,
    pending: &mut Vec<Entry>,
    out: &mut Vec<Entry>,
) -> Result<(), ContextError> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
        .map_err(|e| ContextError::io(dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| ContextError::io(dir, e))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let host = dir.join(&name);
        let Some(meta) = stat(&host, false)? else {
            continue; // removed while walking
        };
        let child_rel = rel.join(&name);
        let child_rel_s = lossy(&child_rel);
        let child_ctx = join(ctx_rel, &lossy(Path::new(OsStr::new(&name))));
        let is_dir = meta.is_dir();
        if ignore.is_excluded(&child_ctx, is_dir) || excludes.is_excluded(&child_rel_s, is_dir) {
            continue;
        }
        let entry = Entry {
            rel: child_rel.clone(),
            host: host.clone(),
            meta,
        };
        if is_dir {
            let held = ignore.matches(&child_ctx) || excludes.matches(&child_rel_s);
            let depth = pending.len();
            if held {
                pending.push(entry);
            } else {
                out.append(pending);
                out.push(entry);
            }
            walk_dir(
                &host, &child_rel, &child_ctx, ignore, excludes, pending, out,
            )?;
            pending.truncate(depth);
        } else {
            out.append(pending);
            out.push(entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn ig(p: &[&str]) -> IgnoreMatcher {
        IgnoreMatcher::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["a/b", "docs/keep", "docs/drop", "c1", "c2"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            "a/b/x.txt",
            "a/y.md",
            "docs/keep/k",
            "docs/drop/d",
            "c1/f",
            "top.txt",
        ] {
            std::fs::write(r.join(f), f).unwrap();
        }
        symlink("a/b", r.join("lnk")).unwrap();
        symlink("/../../etc", r.join("out")).unwrap();
        t
    }

    fn rels(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| lossy(&e.rel)).collect()
    }

    #[test]
    fn wildcards_expand_per_component() {
        let t = tree();
        let none = IgnoreMatcher::default();
        let m = resolve(t.path(), "c*/f", true, &none).unwrap();
        assert_eq!(m.iter().map(|m| &m.named[..]).collect::<Vec<_>>(), ["c1/f"]);
        let m = resolve(t.path(), "./a/../*.txt", true, &none).unwrap();
        assert_eq!(
            m.iter().map(|m| &m.named[..]).collect::<Vec<_>>(),
            ["top.txt"]
        );
        assert!(resolve(t.path(), "nomatch*", true, &none)
            .unwrap()
            .is_empty());
        assert!(matches!(
            resolve(t.path(), "missing/*.txt", true, &none),
            Err(ContextError::NotFound(p)) if p == "missing"
        ));
        assert!(matches!(
            resolve(t.path(), "missing.txt", true, &none),
            Err(ContextError::NotFound(p)) if p == "missing.txt"
        ));
    }

    /// A source that exists but is ignored names the pattern (issue 14), after BuildKit's
    /// `"/path": not found`.
    #[test]
    fn ignored_sources_name_the_pattern() {
        let t = tree();
        let ig = ig(&["*.txt", "a/b", "docs", "!docs/keep"]);
        let err = resolve(t.path(), "top.txt", true, &ig).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"/top.txt\": not found: top.txt is excluded by .dockerignore (pattern `*.txt`)"
        );
        // Through a parent, through the top-level symlink, and as a wildcard's fixed prefix.
        let err = resolve(t.path(), "a/b/x.txt", true, &ig)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("a/b/x.txt is excluded by .dockerignore (pattern `a/b`)"),
            "{err}"
        );
        let err = resolve(t.path(), "lnk", true, &ig).unwrap_err().to_string();
        assert_eq!(
            err,
            "\"/lnk\": not found: a/b is excluded by .dockerignore (pattern `a/b`)"
        );
        let err = resolve(t.path(), "docs/drop/*", true, &ig)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("\"/docs/drop\": not found: docs/drop is excluded"),
            "{err}"
        );
        // Re-included by an exception: found; missing: plain not found.
        assert_eq!(
            resolve(t.path(), "docs/keep/k", true, &ig).unwrap().len(),
            1
        );
        assert!(matches!(
            resolve(t.path(), "missing", true, &ig),
            Err(ContextError::NotFound(p)) if p == "missing"
        ));
    }

    #[test]
    fn top_symlink_followed_inside_root_only() {
        let t = tree();
        let none = IgnoreMatcher::default();
        let m = resolve(t.path(), "lnk", true, &none).unwrap();
        assert_eq!(m[0].real, "a/b");
        assert!(m[0].meta.is_dir());
        let m = resolve(t.path(), "lnk", false, &none).unwrap();
        assert!(m[0].meta.file_type().is_symlink());
        // `out` points at /etc (clamped to root/etc), which does not exist in the root.
        assert!(matches!(
            resolve(t.path(), "out", true, &none),
            Err(ContextError::NotFound(_))
        ));
    }

    #[test]
    fn walk_filters_and_keeps_parents_of_exceptions() {
        let t = tree();
        let m = resolve(t.path(), ".", true, &IgnoreMatcher::default()).unwrap();
        let e = walk(
            &m[0],
            &ig(&["docs", "!docs/keep", "a/b", "lnk", "out"]),
            &ig(&["**/*.md"]),
        )
        .unwrap();
        assert_eq!(
            rels(&e),
            [
                "",
                "a",
                "c1",
                "c1/f",
                "c2",
                "docs",
                "docs/keep",
                "docs/keep/k",
                "top.txt"
            ]
        );
        let e = walk(
            &m[0],
            &ig(&["docs", "!docs/nothing-here/*"]),
            &IgnoreMatcher::default(),
        )
        .unwrap();
        assert!(!rels(&e).contains(&"docs".to_string()), "{:?}", rels(&e));
    }
}
