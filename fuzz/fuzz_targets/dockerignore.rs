//! .dockerignore patterns and paths: compiling and matching never panic, and a directory
//! the walker may skip holds nothing that the patterns keep.
//!
//! Input layout, split on NUL: the .dockerignore text, then paths to test (a trailing
//! `/` marks a directory).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild::context::dockerignore::IgnoreMatcher;

/// A plain relative path: no empty, `.` or `..` components (what the walker produces).
fn plain(path: &str) -> Option<&str> {
    let p = path.trim_end_matches('/');
    let ok = !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then_some(p)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let ignore = parts.next().unwrap_or_default();
    let paths: Vec<&str> = parts.collect();
    let lines: Vec<String> = ignore.lines().map(str::to_string).collect();
    if let Ok(m) = IgnoreMatcher::new(&lines) {
        for path in &paths {
            let _ = m.is_excluded(path, path.ends_with('/'));
        }
    }
    let Ok(m) = IgnoreMatcher::parse(ignore) else {
        return;
    };
    let _ = m.patterns();
    for dir in &paths {
        let excluded = m.is_excluded(dir, dir.ends_with('/'));
        let _ = m.matches(dir);
        let Some(dir) = plain(dir) else { continue };
        if !excluded || !m.is_excluded(dir, true) {
            continue;
        }
        // The walker skips this whole directory: nothing below it may be re-included.
        for path in paths.iter().filter_map(|p| plain(p)) {
            if path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
            {
                assert!(m.matches(path), "{path:?} kept inside skipped {dir:?}");
            }
        }
    }
});
