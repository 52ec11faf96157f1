//! The build context: `.dockerignore` matching, resolving COPY/ADD sources (wildcards,
//! symlinks clamped to a root) and content digests for cache keys. What COPY/ADD write into
//! an image root is `fileop`'s.
//!
//! Path semantics follow BuildKit (fsutil and continuity's `fs.RootPath`): every path is
//! resolved beneath a root, `..` stops at the root and absolute symlink targets restart
//! from the root, so nothing outside the root is ever read or written.

pub mod digest;
pub mod dockerignore;
pub(crate) mod fstype;
mod glob;
pub(crate) mod lastdir;
pub(crate) mod listings;
pub(crate) mod meta;
pub(crate) mod spool;
pub mod statcache;
pub(crate) mod walk;

use std::io;
use std::path::{Path, PathBuf};

use crate::sandbox::root::{clean, Root};

pub use digest::{content_digest, ListedFile};
pub use dockerignore::IgnoreMatcher;
pub use statcache::StatCache;

/// Errors from reading the build context (ignore files, sources, digests, stat cache).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ContextError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        #[serde(with = "crate::sandbox::wire::io_error")]
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
    /// A source that exists but that `.dockerignore` leaves out of the context. BuildKit
    /// never sees it, so it says `not found`; that phrase stays (users search for it) and
    /// the rest says why and which pattern to change.
    #[error(
        "\"/{path}\": not found: {excluded} is excluded by .dockerignore (pattern `{pattern}`)"
    )]
    Ignored {
        /// The source as named (cleaned).
        path: String,
        /// What the pattern matched: the source, or where its symlink leads.
        excluded: String,
        pattern: String,
    },
    #[error("too many levels of symbolic links resolving `{0}`")]
    SymlinkLoop(String),
    #[error("stat cache {path}: {reason}")]
    StatCache { path: PathBuf, reason: String },
    /// A Dockerfile or ignore file that cannot be used as one.
    #[error("{}: {reason}", path.display())]
    ControlFile { path: PathBuf, reason: String },
}

impl ContextError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> ContextError {
        ContextError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `rel` resolved beneath `root` as [`Root::resolve`] does (openat2 RESOLVE_IN_ROOT), with
/// its errors as the context's.
pub(crate) fn resolve(root: &Root, rel: &str, follow_last: bool) -> Result<String, ContextError> {
    root.resolve(rel, follow_last)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ContextError::SymlinkLoop(rel.to_string()),
            _ => ContextError::io(root.path().join(clean(rel)), e),
        })
}

/// Opens `dir` as a [`Root`] to resolve paths beneath.
pub(crate) fn open_root(dir: &Path) -> Result<Root, ContextError> {
    Root::open(dir).map_err(|e| ContextError::io(dir, e))
}

/// `root` joined with a relative path from [`resolve`].
pub(crate) fn host_path(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// The most a Dockerfile or an ignore file may hold: both are read whole, and one that is
/// larger is a mistake or an attack (a link to /dev/zero).
pub const MAX_CONTROL_FILE: u64 = 16 << 20;

/// A regular file a COPY/ADD source would read, for the build checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Slash-separated, relative to the context, as the source names it.
    pub path: String,
    /// Where it is on the host (beneath the context).
    pub host: PathBuf,
}

/// The regular files that `source` brings from the context at `root`, after
/// `.dockerignore` and `excludes`, through the same resolver and walk as the copy itself;
/// at most `limit` of them (a check needs no more).
pub fn source_files(
    root: &Path,
    source: &str,
    ignore: &IgnoreMatcher,
    excludes: &[String],
    limit: usize,
) -> Result<Vec<SourceFile>, ContextError> {
    let excludes = IgnoreMatcher::new(excludes)?;
    let mut out = Vec::new();
    for m in walk::resolve(root, source, true, ignore)? {
        for entry in walk::walk(&m, ignore, &excludes) {
            let entry = entry?;
            if out.len() >= limit {
                return Ok(out);
            }
            if !entry.meta.is_file() {
                continue;
            }
            let rel = entry.rel().to_string_lossy();
            let path = match (m.named.as_str(), rel.as_ref()) {
                (named, "") => named.to_string(),
                ("", rel) => rel.to_string(),
                (named, rel) => format!("{named}/{rel}"),
            };
            out.push(SourceFile {
                path,
                host: entry.host,
            });
        }
    }
    Ok(out)
}

/// Reads a Dockerfile or ignore file at `path` (absolute). One inside `context` is opened
/// beneath it: symlinks resolve inside the context, never out of it (a `Dockerfile ->
/// /proc/self/environ` in a pull request must not print rbuild's environment), and it must
/// be a regular file. One outside the context was named by the user (`-f PATH`) and is
/// read as it is. Either way at most [`MAX_CONTROL_FILE`] bytes. `Ok(None)`: it does not
/// exist.
pub fn read_control_file(context: &Path, path: &Path) -> Result<Option<Vec<u8>>, ContextError> {
    let bad = |reason: String| ContextError::ControlFile {
        path: path.to_path_buf(),
        reason,
    };
    let abs = lexical_abs(path);
    let inside = abs.strip_prefix(context).ok();
    let file = match inside {
        Some(rel) => {
            let root = Root::open(context).map_err(|e| ContextError::io(context, e))?;
            let rel = rel.to_string_lossy();
            match root.open_in(&rel, rustix::fs::OFlags::RDONLY) {
                Ok(fd) => std::fs::File::from(fd),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return match std::fs::read_link(path) {
                        Ok(target) => Err(bad(format!(
                            "it is a symlink to `{}`, which is not in the build context \
                             (links are resolved inside the context; to use a file outside \
                             it, name that file with -f)",
                            target.display()
                        ))),
                        Err(_) => Ok(None),
                    };
                }
                Err(e) => return Err(ContextError::io(path, e)),
            }
        }
        None => match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ContextError::io(path, e)),
        },
    };
    let meta = file.metadata().map_err(|e| ContextError::io(path, e))?;
    if inside.is_some() && !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(&file, MAX_CONTROL_FILE + 1), &mut bytes)
        .map_err(|e| ContextError::io(path, e))?;
    if bytes.len() as u64 > MAX_CONTROL_FILE {
        return Err(bad(format!("larger than {} MiB", MAX_CONTROL_FILE >> 20)));
    }
    Ok(Some(bytes))
}

/// `path` made absolute against the working directory and cleaned of `.` and `..` without
/// looking at the filesystem, so a link in it is not resolved.
pub fn lexical_abs(path: &Path) -> PathBuf {
    use std::path::Component;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("x/real")).unwrap();
        symlink("/x", r.join("etc")).unwrap();
        symlink("../../../../x/real", r.join("x/up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        let root = open_root(r).unwrap();
        let resolve_in_root = |_: &Path, rel: &str, follow| resolve(&root, rel, follow);
        assert_eq!(resolve_in_root(r, "etc/passwd", true).unwrap(), "x/passwd");
        assert_eq!(resolve_in_root(r, "/etc", true).unwrap(), "x");
        assert_eq!(resolve_in_root(r, "/etc", false).unwrap(), "etc");
        assert_eq!(resolve_in_root(r, "x/up/f", true).unwrap(), "x/real/f");
        assert_eq!(resolve_in_root(r, "../../etc/../y", true).unwrap(), "y");
        assert!(matches!(
            resolve_in_root(r, "loop/a", true),
            Err(ContextError::SymlinkLoop(_))
        ));
        // A dangling link resolves to where it points; missing components stay as named.
        symlink("/x/made/later", r.join("dangling")).unwrap();
        assert_eq!(
            resolve_in_root(r, "dangling/f", true).unwrap(),
            "x/made/later/f"
        );
        assert_eq!(resolve_in_root(r, "dangling", false).unwrap(), "dangling");
        assert_eq!(resolve_in_root(r, "no/such/../x", true).unwrap(), "no/x");
    }
    /// A hostile context's Dockerfile or .dockerignore (issue 13): links resolve inside the
    /// context, only regular files are read, and never more than the cap.
    #[test]
    fn control_files_are_read_beneath_the_context() {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        std::fs::create_dir_all(ctx.join("docker")).unwrap();
        std::fs::write(ctx.join("docker/Dockerfile.prod"), "FROM scratch\n").unwrap();
        symlink("docker/Dockerfile.prod", ctx.join("Dockerfile")).unwrap();
        let read = |name: &str| read_control_file(&ctx, &ctx.join(name));
        assert_eq!(read("Dockerfile").unwrap().unwrap(), b"FROM scratch\n");
        assert_eq!(read("missing").unwrap(), None);

        std::env::set_var("RBUILD_CONTROL_FILE_TEST", "tok-8d1f0c");
        for (name, target) in [("environ", "/proc/self/environ"), ("zero", "/dev/zero")] {
            symlink(target, ctx.join(name)).unwrap();
            let err = read(name).unwrap_err().to_string();
            assert!(err.contains("not in the build context"), "{err}");
            assert!(!err.contains("tok-8d1f0c"), "{err}");
        }
        // A directory, and a file over the cap.
        symlink("docker", ctx.join("dir")).unwrap();
        assert!(read("dir")
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        let big = std::fs::File::create(ctx.join("big")).unwrap();
        big.set_len(MAX_CONTROL_FILE + 1).unwrap();
        assert!(read("big")
            .unwrap_err()
            .to_string()
            .contains("larger than 16 MiB"));

        // A file outside the context named by the user is read as it is; a link inside the
        // context to it is not.
        let outside = t.path().join("Dockerfile.outside");
        std::fs::write(&outside, "FROM busybox\n").unwrap();
        assert_eq!(
            read_control_file(&ctx, &outside).unwrap().unwrap(),
            b"FROM busybox\n"
        );
        symlink(&outside, ctx.join("out")).unwrap();
        assert!(read("out").is_err());
        assert_eq!(lexical_abs(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
