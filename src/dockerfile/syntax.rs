//! Dockerfile text -> AST, following BuildKit's `frontend/dockerfile/parser`: parser
//! directives, line continuations (comments and blank lines inside them are dropped),
//! builder flags, JSON (exec) form and heredocs. Words stay unexpanded; every node keeps
//! the positions of its keyword, flags and arguments.

use std::fmt::Write as _;

use std::collections::BTreeMap;

use super::shell::Lexer;
use super::ErrorKind;

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Parser directives at the top of the file (`# syntax=`, `# escape=`, `# check=`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directives {
    pub syntax: Option<String>,
    pub escape: Option<String>,
    pub check: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    pub directives: Directives,
    /// The escape character in effect (`\` unless `# escape=` said otherwise).
    pub escape: char,
    pub nodes: Vec<Node>,
}

/// One instruction, untyped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instruction keyword as written (`run`, `RUN`, ...).
    pub keyword: String,
    /// Lowercased keyword.
    pub name: String,
    pub flags: Vec<Flag>,
    /// Everything after the keyword and flags, trimmed (continuations already joined).
    pub args: String,
    /// The parsed JSON array when `args` is one (exec form); `None` for shell form.
    pub json: Option<Vec<String>>,
    pub heredocs: Vec<Heredoc>,
    /// Position of the keyword.
    pub start: Position,
    /// Position of the first character of `args` (start of the line if there are none).
    pub args_start: Position,
    /// Last physical line of the instruction, heredoc bodies included.
    pub end_line: usize,
    /// The logical line (keyword, flags, arguments; continuations joined).
    pub text: String,
    /// The comment lines above the instruction since the previous one, without the `#`
    /// (BuildKit's PrevComment): blank lines keep them, an empty `#` line drops those
    /// before it, directives and comments inside a continuation are not among them. A
    /// stage's or ARG's description is the one that starts with its name (doc_comment);
    /// `# check=skip=...` there applies to this instruction only.
    pub comments: Vec<String>,
    /// The line that ended a continuation which had a blank line in it (BuildKit warns
    /// about those: NoEmptyContinuation).
    pub empty_continuation: Option<usize>,
}

impl Node {
    /// BuildKit's getDocComment: the rest of the first comment line that starts with
    /// `name` and a space (`# build compiles the app` above `FROM ... AS build`).
    pub fn doc_comment(&self, name: &str) -> Option<&str> {
        if name.is_empty() {
            return None;
        }
        self.comments
            .iter()
            .find_map(|c| c.strip_prefix(name)?.strip_prefix(' '))
    }
}

/// A builder flag (`--name=value` or `--name`), quotes already removed like BuildKit does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
    pub start: Position,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    /// The body, one `\n`-terminated line per body line; tabs already stripped for `<<-`.
    pub content: String,
    /// False when the delimiter was quoted: the body is taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs were stripped.
    pub chomp: bool,
    /// A file descriptor prefix, as in `3<<EOF`.
    pub fd: Option<u32>,
}

/// A syntax error at a physical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub kind: ErrorKind,
}

const DIRECTIVES: [&str; 3] = ["syntax", "escape", "check"];

/// Parse a whole Dockerfile.
pub fn parse(text: &str) -> Result<Ast, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // A trailing newline does not make an extra line.
    let count = if text.ends_with('\n') {
        lines.len() - 1
    } else {
        lines.len()
    };
    let lines = &lines[..count];

    let mut directives = Directives::default();
    let mut i = 0;
    // Directives: only a prefix of `# key=value` lines with known keys; anything else
    // (another comment, a blank line, an instruction, an unknown key) ends them.
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        let slot = match key.as_str() {
            "syntax" => &mut directives.syntax,
            "escape" => &mut directives.escape,
            "check" => &mut directives.check,
            _ => break,
        };
        debug_assert!(DIRECTIVES.contains(&key.as_str()));
        if slot.is_some() {
            return Err(SyntaxError {
                line: i + 1,
                kind: ErrorKind::DuplicateDirective(key),
            });
        }
        *slot = Some(value);
        i += 1;
    }
    let escape = match directives.escape.as_deref() {
        None | Some("\\") => '\\',
        Some("`") => '`',
        Some(other) => {
            let line = lines
                .iter()
                .position(|l| directive(l).is_some_and(|(k, _)| k == "escape"))
                .map_or(1, |p| p + 1);
            return Err(SyntaxError {
                line,
                kind: ErrorKind::InvalidEscape(other.to_string()),
            });
        }
    };

    let mut nodes = Vec::new();
    // The comments since the last instruction (BuildKit's `PrevComment`): blank lines keep
    // them, an empty `#` line drops them.
    let mut comments: Vec<String> = Vec::new();
    while i < lines.len() {
        let first = lines[i];
        i += 1;
        if is_comment(first) {
            let comment = first.trim_start()[1..].trim();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_string());
            }
            continue;
        }
        if first.trim().is_empty() {
            continue;
        }
        let start_line = i;
        let mut logical = Logical::default();
        let lead = leading_ws(first);
        let (seg, mut done) = trim_continuation(&first[lead..], escape);
        logical.push(seg, start_line, lead + 1);
        let mut empty_continuation = false;
        while !done && i < lines.len() {
            let line = lines[i];
            i += 1;
            if is_comment(line) {
                continue;
            }
            if line.trim().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (seg, end) = trim_continuation(line, escape);
            logical.push(seg, i, 1);
            done = end;
        }
        if logical.text.trim().is_empty() {
            continue;
        }
        let mut node = node_from_logical(&logical, escape, start_line)?;
        node.comments = std::mem::take(&mut comments);
        // BuildKit places the warning on the instruction's last line before any heredoc.
        node.empty_continuation = empty_continuation.then_some(i);
        if node.json.is_none() && can_contain_heredoc(&node.name) && node.text.contains("<<") {
            for HeredocMarker {
                fd,
                chomp,
                name,
                expand,
            } in heredoc_markers(&node.text)
            {
                let mut content = String::new();
                let mut terminated = false;
                while i < lines.len() {
                    let line = lines[i];
                    i += 1;
                    let candidate = if chomp {
                        line.trim_start_matches('\t')
                    } else {
                        line
                    };
                    if candidate == name {
                        terminated = true;
                        break;
                    }
                    content.push_str(candidate);
                    content.push('\n');
                }
                if !terminated {
                    return Err(SyntaxError {
                        line: start_line,
                        kind: ErrorKind::UnterminatedHeredoc(name),
                    });
                }
                node.heredocs.push(Heredoc {
                    name,
                    content,
                    expand,
                    chomp,
                    fd,
                });
            }
        }
        node.end_line = i.max(start_line);
        nodes.push(node);
    }
    Ok(Ast {
        directives,
        escape,
        nodes,
    })
}

/// Parse a single instruction line (ONBUILD triggers, a base image's `OnBuild` entries).
pub fn parse_line(line: &str, escape: char, line_no: usize) -> Result<Node, SyntaxError> {
    let lead = leading_ws(line);
    let mut logical = Logical::default();
    logical.push(&line[lead..], line_no, lead + 1);
    node_from_logical(&logical, escape, line_no)
}

fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?;
    let rest = rest.trim_start();
    let (key, value) = rest.split_once('=')?;
    let key = key.trim_end();
    let mut chars = key.chars();
    if !chars.next()?.is_ascii_alphabetic() || !chars.all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    // Unknown keys are returned too: the caller treats them as comments that end the
    // directive block (docs: "unknown directives are treated as comments").
    Some((key.to_ascii_lowercase(), value.to_string()))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn leading_ws(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Strip a trailing escape character (optionally followed by blanks). Returns the line and
/// whether the instruction ends here.
///
/// BuildKit's line-continuation regexp is ``([^\\])\\[ \t]*$|^\\[ \t]*$``: the escape
/// continues the line only when it stands alone or follows a character that is not the
/// escape, so `ENV C trailing\\` ends the instruction. Like BuildKit (its comment says Go's
/// regexp cannot look behind), an odd run such as `\\\` does not continue either.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(rest) if !rest.ends_with(escape) => (rest, false),
        _ => (line, true),
    }
}

/// The logical line of an instruction with the physical position of every byte.
#[derive(Default)]
struct Logical {
    text: String,
    pos: Vec<Position>,
}

impl Logical {
    fn push(&mut self, seg: &str, line: usize, first_col: usize) {
        for (col, ch) in seg.chars().enumerate() {
            for _ in 0..ch.len_utf8() {
                self.pos.push(Position {
                    line,
                    column: first_col + col,
                });
            }
        }
        self.text.push_str(seg);
    }

    fn at(&self, offset: usize) -> Position {
        self.pos
            .get(offset)
            .or(self.pos.last())
            .copied()
            .unwrap_or_default()
    }
}

fn node_from_logical(l: &Logical, escape: char, line: usize) -> Result<Node, SyntaxError> {
    let text = l.text.trim_end();
    let key_end = text.find(|c: char| c.is_whitespace()).unwrap_or(text.len());
    let keyword = &text[..key_end];
    let after_key = key_end + leading_ws(&text[key_end..]);
    let (flags, args_off) = extract_flags(text, after_key, escape, l);
    let args = text[args_off..].trim().to_string();
    let name = keyword.to_ascii_lowercase();
    let json = if takes_json(&name) {
        parse_json_array(&args).map_err(|kind| SyntaxError { line, kind })?
    } else {
        None
    };
    Ok(Node {
        keyword: keyword.to_string(),
        name,
        flags,
        args,
        json,
        heredocs: Vec::new(),
        start: l.at(0),
        args_start: l.at(args_off.min(text.len().saturating_sub(1))),
        end_line: l.at(text.len().saturating_sub(1)).line,
        text: text.to_string(),
        comments: Vec::new(),
        empty_continuation: None,
    })
}

fn takes_json(name: &str) -> bool {
    matches!(
        name,
        "run" | "cmd" | "entrypoint" | "shell" | "copy" | "add" | "volume"
    )
}

fn can_contain_heredoc(name: &str) -> bool {
    matches!(name, "run" | "copy" | "add")
}

/// A JSON array of strings, or `None` when `args` is not a JSON array (BuildKit falls back
/// to shell form). A JSON array with an element that is not a string is an error, as in
/// BuildKit's `parseJSON`, not shell form.
pub fn parse_json_array(args: &str) -> Result<Option<Vec<String>>, ErrorKind> {
    if !args.trim_start().starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(args) else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(ErrorKind::NotStringArray),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Leading `--flag[=value]` words, with BuildKit's quote and backslash handling. Returns the
/// flags and the byte offset where the arguments start. A bare `--` ends the flags.
fn extract_flags(text: &str, from: usize, _escape: char, l: &Logical) -> (Vec<Flag>, usize) {
    let bytes = text.as_bytes();
    let mut flags = Vec::new();
    let mut pos = from;
    loop {
        while pos < bytes.len() && (bytes[pos] as char).is_ascii_whitespace() {
            pos += 1;
        }
        if !(bytes.get(pos) == Some(&b'-') && bytes.get(pos + 1) == Some(&b'-')) {
            return (flags, pos);
        }
        let start = pos;
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut chars = text[pos..].char_indices().peekable();
        let mut end = text.len();
        while let Some((off, ch)) = chars.next() {
            match quote {
                None if ch.is_whitespace() => {
                    end = pos + off;
                    break;
                }
                None if ch == '\'' || ch == '"' => quote = Some(ch),
                Some(q) if ch == q => quote = None,
                _ if ch == '\\' => {
                    if let Some((_, next)) = chars.next() {
                        word.push(next);
                    }
                }
                _ => word.push(ch),
            }
        }
        pos = end;
        if word == "--" {
            return (flags, pos);
        }
        let body = &word[2..];
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        flags.push(Flag {
            name,
            value,
            start: l.at(start),
        });
    }
}

/// Split `args` into words on unquoted whitespace, keeping quotes and escapes in the words
/// (BuildKit's `parseWords`, used for ENV/LABEL/ARG pairs).
pub fn split_words(args: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for ch in args.chars() {
        if escaped {
            word.push(ch);
            escaped = false;
            continue;
        }
        if ch == escape {
            escaped = true;
            word.push(ch);
            continue;
        }
        match quote {
            Some(q) if ch == q => {
                quote = None;
                word.push(ch);
            }
            Some(_) => word.push(ch),
            None if ch == '"' || ch == '\'' => {
                quote = Some(ch);
                word.push(ch);
            }
            None if ch.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => word.push(ch),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// A heredoc marker (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`, `<<  EOF`) as BuildKit's
/// `ParseHeredoc` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeredocMarker {
    /// A file descriptor prefix, as in `3<<EOF`.
    pub fd: Option<u32>,
    /// `<<-`: leading tabs are stripped from the body and the terminator.
    pub chomp: bool,
    /// The delimiter with quotes and escapes removed (`<<eo'f'` -> `eof`).
    pub name: String,
    /// False when any part of the delimiter was quoted: the body is taken literally.
    pub expand: bool,
}

/// The heredoc markers among the words of an instruction line, in order (BuildKit's
/// `heredocsFromLine`): the line is split into words by the shell lexer with quotes and
/// escapes kept and no expansion, so `<<'one two'` and `<<  EOF` are one word each while
/// `<<- EOF` is two words and no heredoc. BuildKit lexes with `\` whatever the escape
/// directive says, and a line the lexer cannot split (an unterminated quote) has none.
pub fn heredoc_markers(line: &str) -> Vec<HeredocMarker> {
    let lexer = Lexer::new('\\')
        .with_raw_quotes(true)
        .with_raw_escapes(true)
        .with_skip_unset(true);
    let no_env: BTreeMap<String, String> = BTreeMap::new();
    lexer
        .expand_words(line, &no_env)
        .unwrap_or_default()
        .iter()
        .filter_map(|w| heredoc_marker(w))
        .collect()
}

/// Parse one word as a heredoc marker: BuildKit's regexp `^(\d*)<<(-?)\s*([^<]*)$`, then
/// the rest must lex to exactly one word, which is the delimiter; it is quoted (no
/// expansion of the body) when lexing with and without keeping quotes gives different
/// quote counts.
pub fn heredoc_marker(word: &str) -> Option<HeredocMarker> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (fd, rest) = word.split_at(digits);
    let rest = rest.strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    // Go's `\s`: space, \t, \n, \f, \r.
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\x0c', '\r']);
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let no_env: BTreeMap<String, String> = BTreeMap::new();
    let lexer = Lexer::new('\\').with_skip_unset(true);
    let words = lexer.expand_words(rest, &no_env).ok()?;
    let [name] = words.as_slice() else {
        return None;
    };
    let raw = lexer
        .with_raw_quotes(true)
        .expand_words(rest, &no_env)
        .ok()?;
    let quotes = |w: &str| w.chars().filter(|c| matches!(c, '\'' | '"')).count();
    let expand = raw.len() == 1 && quotes(name) == quotes(&raw[0]);
    Some(HeredocMarker {
        fd: if fd.is_empty() { None } else { fd.parse().ok() },
        chomp,
        name: name.clone(),
        expand,
    })
}

/// A stable, human-readable dump of the AST (the golden `ast` files).
pub fn dump(ast: &Ast) -> String {
    let mut out = String::new();
    let d = &ast.directives;
    for (k, v) in [
        ("syntax", &d.syntax),
        ("escape", &d.escape),
        ("check", &d.check),
    ] {
        if let Some(v) = v {
            let _ = writeln!(out, "directive {k}={v:?}");
        }
    }
    for n in &ast.nodes {
        let _ = writeln!(
            out,
            "{}:{}-{} {}",
            n.start.line, n.start.column, n.end_line, n.name
        );
        for f in &n.flags {
            let _ = writeln!(
                out,
                "  flag {}:{} {}={:?}",
                f.start.line, f.start.column, f.name, f.value
            );
        }
        match &n.json {
            Some(words) => {
                let _ = writeln!(out, "  exec {words:?}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "  args {}:{} {:?}",
                    n.args_start.line, n.args_start.column, n.args
                );
            }
        }
        for h in &n.heredocs {
            let _ = writeln!(
                out,
                "  heredoc {:?} expand={} chomp={} fd={:?} {:?}",
                h.name, h.expand, h.chomp, h.fd, h.content
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_above_an_instruction_are_kept_for_descriptions() {
        let ast = parse(
            "# syntax=docker/dockerfile:1\n# dropped by the empty comment\n#\n\
             # base the image we start from\n\n# second line\nFROM busybox AS base\n\
             RUN a \\\n# inside a continuation\n  b\n# VERSION the version\nARG VERSION=1\n",
        )
        .unwrap();
        let n = &ast.nodes;
        assert_eq!(
            n[0].comments,
            ["base the image we start from", "second line"]
        );
        assert_eq!(n[0].doc_comment("base"), Some("the image we start from"));
        assert_eq!(n[0].doc_comment("bas"), None);
        assert_eq!(n[0].doc_comment(""), None);
        assert!(n[1].comments.is_empty());
        assert_eq!(n[2].doc_comment("VERSION"), Some("the version"));
    }

    #[test]
    fn continuation_skips_comments_and_blank_lines() {
        let ast = parse("RUN a \\\n# c\n\n  && b\n").unwrap();
        assert_eq!(ast.nodes.len(), 1);
        assert_eq!(ast.nodes[0].args, "a   && b");
        assert_eq!(ast.nodes[0].end_line, 4);
    }

    #[test]
    fn directives_only_at_top() {
        let ast = parse("# escape=`\n# syntax=x\nFROM a\n# escape=\\\n").unwrap();
        assert_eq!(ast.escape, '`');
        assert_eq!(ast.directives.syntax.as_deref(), Some("x"));
        let ast = parse("# hello\n# escape=`\nFROM a").unwrap();
        assert_eq!(ast.escape, '\\');
    }

    #[test]
    fn flags_with_quotes() {
        let ast = parse("COPY --chown=\"a b\" --link x y").unwrap();
        let n = &ast.nodes[0];
        assert_eq!(n.flags[0].value.as_deref(), Some("a b"));
        assert_eq!(n.flags[1].name, "link");
        assert_eq!(n.flags[1].start.column, 20);
        assert_eq!(n.args, "x y");
    }

    #[test]
    fn heredoc_chomp_and_quoted() {
        let ast = parse("RUN <<-EOF cat <<'B'\n\techo $x\n\tEOF\nlit $y\nB\nFROM x").unwrap();
        let n = &ast.nodes[0];
        assert_eq!(n.heredocs.len(), 2);
        assert_eq!(n.heredocs[0].content, "echo $x\n");
        assert!(!n.heredocs[1].expand);
        assert_eq!(n.end_line, 5);
        assert_eq!(ast.nodes[1].start.line, 6);
    }

    #[test]
    fn flag_positions_on_continuation_lines() {
        let ast = parse("RUN \\\n  --network=none \\\n    --mount=type=tmpfs,target=/t \\\n  true")
            .unwrap();
        let n = &ast.nodes[0];
        assert_eq!(n.flags[0].start, Position { line: 2, column: 3 });
        assert_eq!(n.flags[1].start, Position { line: 3, column: 5 });
        assert_eq!(n.args_start, Position { line: 4, column: 3 });
        assert_eq!(n.end_line, 4);
    }

    #[test]
    fn unknown_directive_is_a_comment_and_ends_directives() {
        let ast = parse("# foo=bar\n# escape=`\nFROM a").unwrap();
        assert_eq!(ast.directives, Directives::default());
        assert_eq!(ast.nodes.len(), 1);
    }

    #[test]
    fn json_arrays_of_non_strings_are_errors_not_shell_form() {
        assert_eq!(
            parse_json_array(r#"["a", "b"]"#),
            Ok(Some(vec!["a".into(), "b".into()]))
        );
        assert_eq!(parse_json_array(r#"["a", hello]"#), Ok(None));
        assert_eq!(parse_json_array("echo [1]"), Ok(None));
        for bad in [r#"["a", 1]"#, r#"[ "a", [ "b" ] ]"#, "[null]", "[{}]"] {
            assert_eq!(
                parse_json_array(bad),
                Err(ErrorKind::NotStringArray),
                "{bad}"
            );
        }
        let err = parse("FROM a\nHEALTHCHECK CMD [1]\n")
            .map(|ast| super::super::instructions::lower(&ast.nodes[1], '\\').unwrap_err());
        assert_eq!(err, Ok(ErrorKind::NotStringArray));
    }

    #[test]
    fn unterminated_heredoc() {
        let err = parse("FROM a\nRUN <<EOF\necho\n").unwrap_err();
        assert_eq!(err.line, 2);
    }
}
