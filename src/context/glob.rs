//! Go's `path/filepath.Match` for one path component: `*`, `?`, `[...]` with ranges and `^`
//! negation, `\` escapes. COPY/ADD source wildcards use this syntax (BuildKit resolves them
//! with filepath.Match per component).

/// Whether `s` contains a wildcard metacharacter (Go's `hasMeta`).
pub(crate) fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

/// Reject malformed patterns up front, so a bad class is an error and not a silent miss.
pub(crate) fn validate(pattern: &str) -> Result<(), String> {
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return Err("trailing backslash".into());
                }
                i += 2;
            }
            '[' => {
                let (_, next) = class(&p, i, '\0').ok_or("unterminated character class")?;
                i = next;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Whether the component `name` matches `pattern` (no `/` in either).
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_at(&p, 0, &n, 0)
}

fn match_at(p: &[char], mut pi: usize, n: &[char], mut ni: usize) -> bool {
    while pi < p.len() {
        match p[pi] {
            '*' => {
                // Collapse runs of stars, then try every split point.
                while pi < p.len() && p[pi] == '*' {
                    pi += 1;
                }
                if pi == p.len() {
                    return !n[ni..].contains(&'/');
                }
                for k in ni..=n.len() {
                    if k > ni && n[k - 1] == '/' {
                        return false;
                    }
                    if match_at(p, pi, n, k) {
                        return true;
                    }
                }
                return false;
            }
            '?' => {
                if ni >= n.len() || n[ni] == '/' {
                    return false;
                }
                pi += 1;
                ni += 1;
            }
            '[' => {
                if ni >= n.len() || n[ni] == '/' {
                    return false;
                }
                match class(p, pi, n[ni]) {
                    Some((true, next)) => {
                        pi = next;
                        ni += 1;
                    }
                    _ => return false,
                }
            }
            '\\' => {
                let Some(&c) = p.get(pi + 1) else {
                    return false;
                };
                if ni >= n.len() || n[ni] != c {
                    return false;
                }
                pi += 2;
                ni += 1;
            }
            c => {
                if ni >= n.len() || n[ni] != c {
                    return false;
                }
                pi += 1;
                ni += 1;
            }
        }
    }
    ni == n.len()
}

/// Evaluate the class starting at `p[start] == '['` against `c`: (matched, index after `]`),
/// or None when the class is malformed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &ch = p.get(i)?;
        if ch == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let (lo, next) = class_char(p, i)?;
        i = next;
        let mut hi = lo;
        if p.get(i) == Some(&'-') {
            let (h, next) = class_char(p, i + 1)?;
            hi = h;
            i = next;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    Some((matched != negated, i))
}

fn class_char(p: &[char], i: usize) -> Option<(char, usize)> {
    match p.get(i)? {
        '\\' => Some((*p.get(i + 1)?, i + 2)),
        // Go's getEsc: a bare `-` or `]` where a class character belongs is ErrBadPattern.
        '-' | ']' => None,
        &c => Some((c, i + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match_table() {
        // (pattern, name, expected) — cases from Go's filepath.Match documentation and tests.
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*/b", "abc/b", true),
            ("a*", "ab/c", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a?b", "a/b", false),
            ("*.txt", "notes.txt", true),
            ("*.txt", "notes.txtx", false),
            ("[\\]a]", "]", true),
            ("[]a]", "]", false),
            ("[-a]", "a", false),
            ("[a-ζ]*", "α", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(matches(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        assert!(validate("[").is_err());
        assert!(validate("a[b").is_err());
        assert!(validate("x\\").is_err());
        assert!(validate("[]a]").is_err());
        assert!(validate("[-]").is_err());
        assert!(validate("a[b]*").is_ok());
    }
}
