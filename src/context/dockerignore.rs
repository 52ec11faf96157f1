//! `.dockerignore` and `COPY --exclude` patterns with moby/patternmatcher semantics.
//!
//! Reading (ignorefile.ReadAll): lines starting with `#` are comments, whitespace is
//! trimmed, each pattern is `filepath.Clean`ed and a leading `/` dropped (after a `!`).
//! Matching (MatchesOrParentMatches): patterns apply in order and the last one that
//! matches decides; a pattern also matches when it matches any parent directory, so an
//! excluded directory excludes its children unless a later `!` pattern re-includes them.
//! A pattern compiles to one of patternmatcher's four kinds (exact, prefix `a/**`,
//! suffix `**/a`, regexp), because those shortcuts differ from the regexp at the edges
//! (`**.go` matches `a/b.go` through the suffix rule).

use std::path::{Path, PathBuf};

use regex::Regex;

use super::{glob, ContextError};

/// A compiled list of ignore patterns; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
    /// fsutil's `onlyPrefixExcludeExceptions`: every `!` pattern is a plain path (maybe
    /// with a trailing `/*` or `/**`), so an excluded directory can be skipped unless an
    /// exception names something inside it.
    only_prefix_exceptions: bool,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// As written in the ignore file (trimmed), for messages and for rebuilding the matcher.
    raw: String,
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// `foo/**`: any path starting with `foo/`.
    Prefix,
    /// `**/foo` or `**foo`: any path ending with the rest (or the rest minus its `/`).
    Suffix,
    Regexp(Regex),
}

impl IgnoreMatcher {
    /// Compile patterns as patternmatcher's `New` does after ignorefile's normalisation.
    /// Blank patterns are skipped; comments are not recognised here (see [`Self::parse`]).
    pub fn new(patterns: &[String]) -> Result<Self, ContextError> {
        let mut out = Vec::new();
        for raw in patterns {
            let p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let (exclusion, body) = match p.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, p),
            };
            if exclusion && body.is_empty() {
                return Err(ContextError::BadPattern {
                    pattern: raw.clone(),
                    reason: "illegal exclusion pattern: \"!\"".into(),
                });
            }
            let mut cleaned = go_clean(body);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            glob::validate(&cleaned).map_err(|reason| ContextError::BadPattern {
                pattern: raw.clone(),
                reason,
            })?;
            let kind = compile(&cleaned).map_err(|reason| ContextError::BadPattern {
                pattern: raw.clone(),
                reason,
            })?;
            out.push(Pattern {
                raw: p.to_string(),
                cleaned,
                exclusion,
                kind,
            });
        }
        let only_prefix_exceptions = out
            .iter()
            .filter(|p| p.exclusion)
            .all(|p| !without_trailing_glob(&p.cleaned).contains(['*', '[', ']', '?', '^', '\\']));
        Ok(IgnoreMatcher {
            patterns: out,
            only_prefix_exceptions,
        })
    }

    /// Parse the text of an ignore file (ignorefile.ReadAll): `#` comment lines, a UTF-8
    /// BOM on the first line, surrounding whitespace.
    pub fn parse(text: &str) -> Result<Self, ContextError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        IgnoreMatcher::new(&lines)
    }

    /// Load the ignore file for a build: `<Dockerfile>.dockerignore` beside the Dockerfile
    /// wins over `.dockerignore` in the context root (BuildKit); neither is an empty set.
    pub fn load(context: &Path, dockerfile: Option<&Path>) -> Result<Self, ContextError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(df) = dockerfile {
            let df = if df.is_absolute() {
                df.to_path_buf()
            } else {
                context.join(df)
            };
            if let Some(name) = df.file_name() {
                let mut n = name.to_os_string();
                n.push(".dockerignore");
                candidates.push(df.with_file_name(n));
            }
        }
        candidates.push(context.join(".dockerignore"));
        for file in candidates {
            if let Some(bytes) = super::read_control_file(context, &file)? {
                let text = String::from_utf8_lossy(&bytes);
                return IgnoreMatcher::parse(&text).map_err(|e| ContextError::IgnoreFile {
                    file: file.clone(),
                    source: Box::new(e),
                });
            }
        }
        Ok(IgnoreMatcher::default())
    }

    /// The patterns as written (trimmed, `!` kept), which [`IgnoreMatcher::new`] compiles to
    /// the same matcher, so one can be rebuilt in another process (the copier runs in the
    /// sandbox helper) and still name patterns the way the user wrote them.
    pub fn patterns(&self) -> Vec<String> {
        self.patterns.iter().map(|p| p.raw.clone()).collect()
    }

    /// No patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `rel_path` (slash-separated, relative to the context) is matched, counting
    /// matches on its parent directories (patternmatcher's MatchesOrParentMatches).
    pub fn matches(&self, rel_path: &str) -> bool {
        self.excluded_by(rel_path).is_some()
    }

    /// The pattern that excludes `rel_path` (as written in the ignore file), or None when
    /// the path is kept. Patterns apply in order to the path and its parent directories;
    /// a `!` exception re-includes, and the pattern named is the first that excluded the
    /// path again after the last such exception. This is the pattern to name when a COPY
    /// source exists but is ignored.
    pub fn excluded_by(&self, rel_path: &str) -> Option<&str> {
        let file = rel_path.trim_matches('/');
        if self.patterns.is_empty() || file.is_empty() || file == "." {
            // "Don't let them exclude everything" (patternmatcher).
            return None;
        }
        let parents: Vec<&str> = match file.rfind('/') {
            Some(i) => file[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut decided: Option<&Pattern> = None;
        for p in &self.patterns {
            // patternmatcher skips exceptions while nothing matched and plain patterns once
            // something did: neither could change the outcome.
            if p.exclusion != decided.is_some() {
                continue;
            }
            let hit =
                p.matches(file) || (1..=parents.len()).any(|i| p.matches(&parents[..i].join("/")));
            if hit {
                decided = if p.exclusion { None } else { Some(p) };
            }
        }
        decided.map(|p| p.raw.as_str())
    }

    /// Whether a walk leaves `rel_path` out. For a file this is [`Self::matches`]. For a
    /// directory it is true only when the whole subtree can be skipped: the directory
    /// matches and no `!` exception can re-include anything inside it (fsutil's rule). A
    /// matched directory that may hold exceptions returns false: walk it, and emit the
    /// directory itself only if something inside is kept ([`Self::matches`] tells).
    pub fn is_excluded(&self, rel_path: &str, is_dir: bool) -> bool {
        if !self.matches(rel_path) {
            return false;
        }
        if !is_dir {
            return true;
        }
        if !self.only_prefix_exceptions {
            return false;
        }
        let dir_slash = format!("{}/", rel_path.trim_matches('/'));
        !self
            .patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| format!("{}/", without_trailing_glob(&p.cleaned)).starts_with(&dir_slash))
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Kind::Regexp(re) => re.is_match(path),
        }
    }
}

/// fsutil's patternWithoutTrailingGlob.
fn without_trailing_glob(p: &str) -> &str {
    let p = p.strip_suffix("/**").unwrap_or(p);
    p.strip_suffix("/*").unwrap_or(p)
}

/// patternmatcher's `compile`: translate to a regexp, noting when a cheaper exact, prefix
/// or suffix comparison is what patternmatcher actually uses.
fn compile(pattern: &str) -> Result<Kind, String> {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::from("^");
    let mut detected = Detected::Exact;
    let mut i = 0usize;
    let mut step = 0usize;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        re.push_str(".*");
                        detected = Detected::Regexp;
                    }
                } else {
                    re.push_str("(.*/)?");
                    detected = Detected::Regexp;
                }
                if step == 0 {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                detected = Detected::Regexp;
            }
            '?' => {
                re.push_str("[^/]");
                detected = Detected::Regexp;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.get(i) {
                Some(&next) => {
                    i += 1;
                    // Go's regexp accepts `\` before any punctuation; Rust's rejects
                    // escaped letters, so escape through regex::escape instead.
                    re.push_str(&regex::escape(&next.to_string()));
                    detected = Detected::Regexp;
                }
                None => re.push_str("\\\\"),
            },
            '[' | ']' => {
                re.push(ch);
                detected = Detected::Regexp;
            }
            // Go passes everything else through. Rust's regex additionally gives `&`, `~`
            // and `--` meaning inside classes (set operations), so escape those.
            '&' | '~' => {
                re.push('\\');
                re.push(ch);
            }
            '-' if chars.get(i) == Some(&'-') => re.push_str("\\-"),
            c => re.push(c),
        }
        step += 1;
    }
    Ok(match detected {
        Detected::Exact => Kind::Exact,
        Detected::Prefix => Kind::Prefix,
        Detected::Suffix => Kind::Suffix,
        Detected::Regexp => {
            re.push('$');
            Kind::Regexp(Regex::new(&re).map_err(|e| e.to_string())?)
        }
    })
}

/// Go's `filepath.Clean` on a slash-separated path.
pub(crate) fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> IgnoreMatcher {
        IgnoreMatcher::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// Table: patterns | path | matched. Cases follow patternmatcher_test.go's
    /// TestMatches/TestMatchesOrParentMatches.
    #[test]
    fn match_table() {
        let table: &[(&[&str], &str, bool)] = &[
            (&["fileutils.go"], "fileutils.go", true),
            (&["*.go"], "fileutils.go", true),
            (&["*.go"], "a/fileutils.go", false),
            (&["**"], "file", true),
            (&["**"], "file/", true),
            (&["**/"], "file", true),
            (&["**/"], "file/", true),
            (&["**/**"], "file", true),
            (&["dir/**"], "dir/file", true),
            (&["dir/**"], "dir/file/", true),
            (&["dir/**"], "dir/dir2/file", true),
            (&["dir/**/"], "dir/dir2/file", true),
            (&["**/dir"], "dir", true),
            (&["**/dir"], "dir/file", true),
            (&["**/dir2/*"], "dir/dir2/file", true),
            (&["**/dir2/*"], "dir/dir2/file/", true),
            (&["**/dir2/**"], "dir/dir2/dir3/file", true),
            (&["**file"], "file", true),
            (&["**file"], "dir/file", true),
            (&["**/file"], "dir/dir/file", true),
            (&["**/file*"], "dir/dir/file", true),
            (&["**/file*"], "dir/dir/file.txt", true),
            (&["**/file*txt"], "dir/dir/file.txt", true),
            (&["**/file*.txt"], "dir/dir/file.txt", true),
            (&["**/file*.txt*"], "dir/dir/file.txt", true),
            (&["**/**/*.txt"], "dir/dir/file.txt", true),
            (&["**/**/*.txt2"], "dir/dir/file.txt", false),
            (&["**/*.txt"], "file.txt", true),
            (&["**/**/*.txt"], "file.txt", true),
            (&["a**/*.txt"], "a/file.txt", true),
            (&["a**/*.txt"], "a/dir/file.txt", true),
            (&["a**/*.txt"], "a/dir/dir/file.txt", true),
            (&["a/*.txt"], "a/dir/file.txt", false),
            (&["a/*.txt"], "a/file.txt", true),
            (&["a/*.txt**"], "a/file.txt", true),
            (&["a[b-d]e"], "ae", false),
            (&["a[b-d]e"], "ace", true),
            (&["a[b-d]e"], "aae", false),
            (&["a[^b-d]e"], "aze", true),
            (&[".*"], ".foo", true),
            (&[".*"], "foo", false),
            (&["abc.def"], "abcdef", false),
            (&["abc.def"], "abc.def", true),
            (&["abc.def"], "abcZdef", false),
            (&["abc?def"], "abcZdef", true),
            (&["abc?def"], "abcdef", false),
            (&["a\\\\"], "a\\", true),
            (&["**/foo/bar"], "foo/bar", true),
            (&["**/foo/bar"], "dir/foo/bar", true),
            (&["**/foo/bar"], "dir/dir2/foo/bar", true),
            (&["abc/**"], "abc", false),
            (&["abc/**"], "abc/def", true),
            (&["abc/**"], "abc/def/ghi", true),
            (&["**/.foo"], ".foo", true),
            (&["**/.foo"], "bar.foo", false),
            (&["a(b)c/def"], "a(b)c/def", true),
            (&["a(b)c/def"], "a(b)c/xyz", false),
            (&["a.|)$(}+{bc"], "a.|)$(}+{bc", true),
            (
                &["dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            // Escapes.
            (&["a\\*b"], "a*b", true),
            (&["a\\*b"], "axb", false),
            (&["a\\?b"], "a?b", true),
            // Cleaning: leading slash, `./`, trailing slash, `..`.
            (&["/abc"], "abc", true),
            (&["./abc/"], "abc", true),
            (&["abc/../def"], "def", true),
            // Parent directories: an excluded dir excludes its children.
            (&["dir"], "dir/sub/file", true),
            (&["*/sub"], "dir/sub/file", true),
            (&["dir/*"], "dir", false),
            // Exceptions: last match wins.
            (&["*.md", "!README.md"], "README.md", false),
            (&["*.md", "!README.md"], "CHANGES.md", true),
            (&["*.md", "!README.md", "README.md"], "README.md", true),
            (&["docs", "!docs/keep"], "docs/keep", false),
            (&["docs", "!docs/keep"], "docs/keep/deep", false),
            (&["docs", "!docs/keep"], "docs/drop", true),
            (&["docs", "!docs/keep"], "docs", true),
            (&["**/*.go", "!vendor/**"], "vendor/a/b.go", false),
            (&["**/*.go", "!vendor/**"], "src/b.go", true),
            (&["*", "!dir"], "dir/x", false),
            (&["*", "!dir"], "other", true),
        ];
        for (patterns, path, want) in table {
            assert_eq!(m(patterns).matches(path), *want, "{patterns:?} vs {path}");
        }
    }

    /// The pattern named in "excluded by .dockerignore (pattern `...`)" errors (issue 14).
    #[test]
    fn excluded_by_names_the_deciding_pattern_as_written() {
        let ig = m(&[
            "*.log",
            "/build/",
            "secret*",
            "!secret-ok.txt",
            "docs",
            "!docs/keep",
        ]);
        assert_eq!(ig.excluded_by("a.log"), Some("*.log"));
        assert_eq!(ig.excluded_by("secret.txt"), Some("secret*"));
        // Through a parent directory, and as written (not cleaned to `build`).
        assert_eq!(ig.excluded_by("build/out/x"), Some("/build/"));
        assert_eq!(ig.excluded_by("docs/drop/d"), Some("docs"));
        // Re-included by an exception, or never matched.
        assert_eq!(ig.excluded_by("secret-ok.txt"), None);
        assert_eq!(ig.excluded_by("docs/keep/k"), None);
        assert_eq!(ig.excluded_by("main.rs"), None);
        assert_eq!(ig.excluded_by("."), None);
        // Excluded again after an exception: the pattern that did it.
        let again = m(&["*.md", "!README.md", "README*"]);
        assert_eq!(again.excluded_by("README.md"), Some("README*"));
        // The matcher rebuilt from patterns() (the sandbox helper's copy) says the same.
        let rebuilt = IgnoreMatcher::new(&ig.patterns()).unwrap();
        assert_eq!(rebuilt.excluded_by("build/out/x"), Some("/build/"));
        assert_eq!(rebuilt.excluded_by("secret-ok.txt"), None);
    }

    #[test]
    fn directory_skipping_follows_fsutil() {
        // No exceptions: an excluded dir is skipped whole.
        assert!(m(&["node_modules"]).is_excluded("node_modules", true));
        // An exception naming something inside: walk the dir.
        let keep = m(&["docs", "!docs/keep"]);
        assert!(!keep.is_excluded("docs", true));
        assert!(keep.matches("docs"));
        assert!(keep.is_excluded("docs/drop", false));
        assert!(!keep.is_excluded("docs/keep", false));
        // An exception elsewhere: skip.
        assert!(m(&["docs", "!src/keep"]).is_excluded("docs", true));
        // An exception with wildcards might match anywhere: walk.
        let wild = m(&["vendor", "!**/*.go"]);
        assert!(!wild.is_excluded("vendor", true));
        assert!(!wild.is_excluded("vendor/a.go", false));
        // Trailing globs count as prefixes.
        assert!(!m(&["a", "!a/b/**"]).is_excluded("a", true));
        assert!(!m(&["a"]).is_excluded("b", true));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in ["!", "[", "a[b", "[]"] {
            let err = IgnoreMatcher::new(&[bad.to_string()]).unwrap_err();
            assert!(
                matches!(err, ContextError::BadPattern { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn ignore_file_parsing() {
        let text = "\u{feff}# comment\n  *.log  \n\n!keep.log\n/abs/path\n #notacomment\n";
        let ig = IgnoreMatcher::parse(text).unwrap();
        assert!(ig.matches("x.log"));
        assert!(!ig.matches("keep.log"));
        assert!(ig.matches("abs/path/inner"));
        assert!(ig.matches("#notacomment"));
        assert!(!ig.matches("# comment"));
    }

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path();
        std::fs::create_dir(ctx.join("build")).unwrap();
        std::fs::write(ctx.join(".dockerignore"), "root-only\n").unwrap();
        std::fs::write(ctx.join("build/app.Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(ctx.join("build/app.Dockerfile.dockerignore"), "specific\n").unwrap();

        let specific = IgnoreMatcher::load(ctx, Some(Path::new("build/app.Dockerfile"))).unwrap();
        assert!(specific.matches("specific"));
        assert!(!specific.matches("root-only"));

        let other = IgnoreMatcher::load(ctx, Some(&ctx.join("Dockerfile"))).unwrap();
        assert!(other.matches("root-only"));
        assert!(!other.matches("specific"));

        let none = IgnoreMatcher::load(&ctx.join("build"), None).unwrap();
        assert!(none.is_empty());

        std::fs::write(ctx.join(".dockerignore"), "[\n").unwrap();
        let err = IgnoreMatcher::load(ctx, None).unwrap_err();
        assert!(err.to_string().contains(".dockerignore"), "{err}");
    }

    #[test]
    fn go_clean_matches_go() {
        for (i, o) in [
            ("", "."),
            ("a/../..", ".."),
            ("/../a", "/a"),
            ("a//b/./c/", "a/b/c"),
            ("!a/../b", "b"),
        ] {
            assert_eq!(go_clean(i), o, "{i}");
        }
    }
}
