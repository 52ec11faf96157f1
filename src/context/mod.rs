//! The build context: `.dockerignore` matching, resolving COPY/ADD sources (wildcards,
//! symlinks clamped to a root), content digests for cache keys, and the copier that runs
//! COPY/ADD inside the sandbox helper.
//!
//! Path semantics follow BuildKit (fsutil and continuity's `fs.RootPath`): every path is
//! resolved beneath a root, `..` stops at the root and absolute symlink targets restart
//! from the root, so nothing outside the root is ever read or written.

pub mod copier;
pub mod digest;
pub mod dockerignore;
mod glob;
mod walk;

use std::io;
use std::path::{Path, PathBuf};

pub use copier::{copy, CopyError, CopyJob, CopySrc, CopyStats};
pub use digest::{content_digest, StatCache};
pub use dockerignore::IgnoreMatcher;

/// Errors from reading the build context (ignore files, sources, digests, stat cache).
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid pattern `{pattern}`: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("{file}: {source}")]
    IgnoreFile {
        file: PathBuf,
        #[source]
        source: Box<ContextError>,
    },
    /// BuildKit's wording: `"/missing.txt": not found`.
    #[error("\"/{0}\": not found")]
    NotFound(String),
    #[error("too many levels of symbolic links resolving `{0}`")]
    SymlinkLoop(String),
    #[error("stat cache {path}: {reason}")]
    StatCache { path: PathBuf, reason: String },
}

impl ContextError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> ContextError {
        ContextError::Io {
            path: path.into(),
            source,
        }
    }
}

/// The most symlinks followed while resolving one path (Linux's MAXSYMLINKS is 40).
const MAX_SYMLINKS: usize = 40;

/// Clean a slash-separated path lexically and make it relative: `a/./b/../c` -> `a/c`,
/// `/x` -> `x`, `../../x` -> `x` (a `..` cannot climb above the root). `""` means the root.
pub fn clean_rel(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Resolve `rel` (slash-separated, relative to `root`) to a host path beneath `root`,
/// following symlinks as if `root` were `/` (continuity's `fs.RootPath`). Components that
/// do not exist are appended as they are. With `follow_last` false, a symlink in the last
/// component is not followed (the path names the link itself).
///
/// Returns the resolved path relative to `root` (slash-separated, `""` for the root).
pub fn resolve_in_root(root: &Path, rel: &str, follow_last: bool) -> Result<String, ContextError> {
    let mut todo: Vec<String> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .rev()
        .map(str::to_string)
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0usize;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        done.push(c);
        if todo.is_empty() && !follow_last {
            break;
        }
        let host = root.join(done.join("/"));
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(m) => m,
            // Missing (or not a directory): the rest is taken literally, as RootPath does.
            Err(_) => {
                while let Some(rest) = todo.pop() {
                    if rest == ".." {
                        done.pop();
                    } else {
                        done.push(rest);
                    }
                }
                break;
            }
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(ContextError::SymlinkLoop(rel.to_string()));
        }
        let target = std::fs::read_link(&host).map_err(|e| ContextError::io(&host, e))?;
        let target = target.to_string_lossy().into_owned();
        done.pop();
        if target.starts_with('/') {
            done.clear();
        }
        todo.extend(
            target
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .rev()
                .map(str::to_string),
        );
    }
    Ok(done.join("/"))
}

/// `root` joined with a relative path from [`resolve_in_root`].
pub(crate) fn host_path(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn clean_rel_clamps_at_root() {
        assert_eq!(clean_rel("a/./b/../c"), "a/c");
        assert_eq!(clean_rel("/x/y/"), "x/y");
        assert_eq!(clean_rel("../../x"), "x");
        assert_eq!(clean_rel("."), "");
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("x/real")).unwrap();
        symlink("/x", r.join("etc")).unwrap();
        symlink("../../../../x/real", r.join("x/up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in_root(r, "etc/passwd", true).unwrap(), "x/passwd");
        assert_eq!(resolve_in_root(r, "/etc", true).unwrap(), "x");
        assert_eq!(resolve_in_root(r, "/etc", false).unwrap(), "etc");
        assert_eq!(resolve_in_root(r, "x/up/f", true).unwrap(), "x/real/f");
        assert_eq!(resolve_in_root(r, "../../etc/../y", true).unwrap(), "y");
        assert!(matches!(
            resolve_in_root(r, "loop/a", true),
            Err(ContextError::SymlinkLoop(_))
        ));
    }
}
