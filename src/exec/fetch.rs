//! `ADD <url>` (git repositories: exec/git.rs): download to a file (over the registry client's HTTP stack), verify
//! `--checksum`, and name the file as BuildKit does.

use std::path::Path;

use crate::image::Digest;
use crate::registry::Client;

use super::BuildError;

/// Download `url` to `dest` over the registry client's HTTP stack; returns the content
/// digest, checked against `checksum` if given.
pub fn download(
    registry: &Client,
    url: &str,
    dest: &Path,
    checksum: Option<&str>,
) -> Result<Digest, BuildError> {
    let fail = |why: String| BuildError::Invalid(format!("ADD `{url}`: {why}"));
    let digest = registry.download(url, dest)?;
    if let Some(want) = checksum {
        let want: Digest = want.parse().map_err(|_| {
            fail(format!(
                "invalid --checksum `{want}`: expected sha256:<hex>"
            ))
        })?;
        if want != digest {
            return Err(fail(format!(
                "checksum mismatch: expected {want}, got {digest}"
            )));
        }
    }
    Ok(digest)
}

/// The file name BuildKit gives a downloaded URL: the last path segment, else `index.html`.
pub fn file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let path = path.split_once("://").map_or(path, |(_, rest)| rest);
    match path.split_once('/') {
        Some((_, p)) => match p.rsplit('/').next() {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => "index.html".to_string(),
        },
        None => "index.html".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::is_git_url;

    #[test]
    fn names_follow_the_last_path_segment() {
        assert_eq!(file_name("https://example.com/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(file_name("https://example.com/"), "index.html");
        assert_eq!(file_name("https://example.com"), "index.html");
    }

    #[test]
    fn git_sources_are_recognized() {
        assert!(is_git_url("https://github.com/moby/buildkit.git#v0.12.0"));
        assert!(is_git_url("git@github.com:moby/buildkit.git"));
        assert!(is_git_url("git://example.com/repo"));
        assert!(is_git_url("https://example.com/r.git?ref=v1&subdir=d"));
        assert!(!is_git_url("https://example.com/archive.tar.gz"));
        assert!(!is_git_url("https://example.com/dir.git/file.txt"));
    }
}
