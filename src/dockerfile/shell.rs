//! BuildKit's shell lexer: variable expansion and quote removal for Dockerfile words.
//!
//! This follows the semantics of BuildKit's `frontend/dockerfile/shell` package (`Lex`),
//! which is *not* a POSIX shell: it knows `$name`, `${name}`, the modifiers
//! `:- - :+ + :? ? # ## % %% / //`, single quotes, double quotes and one escape character
//! (`\`, or `` ` `` under `# escape=``). Command substitution, arithmetic and globbing do
//! not exist here; RUN's shell form is handed to the real shell unexpanded.
//!
//! # Modes and the instructions that use them
//!
//! BuildKit toggles four options on its lexer; [`Lexer`] has the same ones:
//!
//! | instruction / place                                   | escape    | options                                  | call |
//! |-------------------------------------------------------|-----------|------------------------------------------|------|
//! | ENV, ARG, LABEL, WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL, COPY/ADD sources, dest and flags, RUN --mount etc. flags, FROM (global ARGs only), ONBUILD is *not* expanded | directive | none                                     | [`Lexer::expand_word`] per word |
//! | COPY/ADD heredoc *content* whose delimiter is unquoted | `\` always | [`Lexer::with_skip_quotes`]              | `expand_word` |
//! | parser: finding heredoc words on an instruction line  | `\` always | `raw_quotes` + `raw_escapes` + `skip_unset`, empty env | [`Lexer::expand_words`] |
//! | parser: heredoc delimiter (quoted ⇒ no expansion)     | `\` always | `skip_unset`, once with and once without `raw_quotes`; quoted if quote counts differ | `expand_words` |
//! | RUN step's display name in progress output            | directive | `raw_quotes` + `skip_unset`              | `expand_word` |
//!
//! RUN/CMD/ENTRYPOINT/SHELL command text and exec-form JSON arrays are never expanded by
//! the builder.
//!
//! # Known differences from BuildKit
//!
//! * `${name` with nothing after the name reports `syntax error: missing '}'` (BuildKit
//!   says `unsupported modifier (\u{FFFD}) in substitution`).
//! * Names use Unicode *Alphabetic*/*Numeric* where Go uses categories L and Nd; this only
//!   matters for exotic characters such as Roman numerals.
//! * Pattern errors in `${v%pat}` name the pattern as written, not reversed.
//! * Nesting of `${...}` is limited to [`MAX_NESTING`] levels (an error, not a crash).
//! * Errors carry only the inner message; BuildKit wraps it as
//!   `failed to process "<word>": <message>`, which callers add with their own context.

use std::collections::BTreeSet;

use regex::Regex;

/// Variables visible to an expansion. `None` means unset, `Some("")` set but empty: the
/// `:`-less modifiers (`${v-w}`, `${v+w}`, `${v?m}`) tell the two apart.
pub trait Env {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Env for std::collections::BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        std::collections::BTreeMap::get(self, name).map(String::as_str)
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        std::collections::HashMap::get(self, name).map(String::as_str)
    }
}

/// How deeply `${...}` may nest inside modifier words before expansion gives up; real
/// Dockerfiles use two or three levels, and the limit keeps hostile input off the stack.
pub const MAX_NESTING: usize = 100;

/// Why a word could not be expanded. Messages follow BuildKit's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// The modifier as written, e.g. `=` for `${v=w}` or `:#` for `${v:#p}`.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// `${v?msg}` / `${v:?msg}` failed; `message` is `msg`, or BuildKit's default
    /// `is not allowed to be unset` / `is not allowed to be empty`.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    #[error("substitutions nested more than {MAX_NESTING} levels deep")]
    TooDeep,
}

/// The result of one expansion with everything BuildKit's `ProcessWordWithMatches` reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expansion {
    /// The word with variables substituted and quotes removed, no splitting (ProcessWord).
    pub word: String,
    /// The same split on unquoted whitespace; empty words are dropped (ProcessWords).
    pub words: Vec<String>,
    /// Names that were looked up and set (possibly empty).
    pub matched: BTreeSet<String>,
    /// Names that were looked up and unset.
    pub unmatched: BTreeSet<String>,
}

/// The lexer, parameterized by the Dockerfile's escape character (`\\` or `` ` ``).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    pub escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset: bool,
    skip_quotes: bool,
}

impl Lexer {
    pub fn new(escape: char) -> Lexer {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset: false,
            skip_quotes: false,
        }
    }

    /// Keep quote characters in the output (they still group words and still stop `$`
    /// inside single quotes). BuildKit's `RawQuotes`.
    pub fn with_raw_quotes(self, on: bool) -> Lexer {
        Lexer {
            raw_quotes: on,
            ..self
        }
    }

    /// Keep the escape character in the output (it still escapes). BuildKit's
    /// `RawEscapes`; patterns of `${v#p}`, `${v%p}` and `${v/p/r}` always use it.
    pub fn with_raw_escapes(self, on: bool) -> Lexer {
        Lexer {
            raw_escapes: on,
            ..self
        }
    }

    /// Leave references to unset variables as written (`$v`, `${v}`, `${v:-w}`, ...)
    /// instead of substituting. BuildKit's `SkipUnsetEnv`.
    pub fn with_skip_unset(self, on: bool) -> Lexer {
        Lexer {
            skip_unset: on,
            ..self
        }
    }

    /// Treat `'` and `"` as ordinary characters. BuildKit's `SkipProcessQuotes`.
    pub fn with_skip_quotes(self, on: bool) -> Lexer {
        Lexer {
            skip_quotes: on,
            ..self
        }
    }

    /// Expand one word: variables substituted, quotes removed, no word splitting.
    pub fn expand_word(&self, word: &str, env: &dyn Env) -> Result<String, ExpandError> {
        Ok(self.expand(word, env)?.word)
    }

    /// Expand and split into words on unquoted whitespace (as BuildKit's ProcessWords).
    pub fn expand_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ExpandError> {
        Ok(self.expand(word, env)?.words)
    }

    /// [`Lexer::expand_word`] plus every variable name the word looked up, set or not
    /// (including names inside modifier words that did not end up in the result, as
    /// BuildKit counts them). Intersect with the build args to find the used ones.
    pub fn expand_word_tracking(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<(String, BTreeSet<String>), ExpandError> {
        let e = self.expand(word, env)?;
        let mut names = e.matched;
        names.extend(e.unmatched);
        Ok((e.word, names))
    }

    /// The full expansion: word, split words, and the names looked up.
    pub fn expand(&self, word: &str, env: &dyn Env) -> Result<Expansion, ExpandError> {
        let mut chars: Vec<char> = word.chars().collect();
        // Go's text/scanner, which BuildKit reads words with, drops a leading BOM.
        if chars.first() == Some(&'\u{feff}') {
            chars.remove(0);
        }
        let mut sw = ShellWord {
            lex: self,
            env,
            chars,
            pos: 0,
            raw_escapes: self.raw_escapes,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let (word, words) = sw.process_stop_on(None, self.raw_escapes)?;
        Ok(Expansion {
            word,
            words,
            matched: sw.matched,
            unmatched: sw.unmatched,
        })
    }
}

/// Accumulates the split words alongside the unsplit result.
#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
}

impl Words {
    /// A character that came from unquoted text or a variable's value: whitespace splits.
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
            }
        } else {
            self.buf.push(c);
        }
    }

    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    /// Quoted or escaped text: never splits.
    fn add_raw_char(&mut self, c: char) {
        self.buf.push(c);
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

struct ShellWord<'a> {
    lex: &'a Lexer,
    env: &'a dyn Env,
    chars: Vec<char>,
    pos: usize,
    /// Dynamically scoped like BuildKit's: pattern words turn it on for everything
    /// nested inside them, including double quotes.
    raw_escapes: bool,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

fn is_special_param(c: char) -> bool {
    // POSIX special parameters, which BuildKit looks up like names:
    // https://pubs.opengroup.org/onlinepubs/009695399/utilities/xcu_chap02.html#tag_02_05_02
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

impl ShellWord<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let value = self.env.get(name).map(str::to_string);
        if !name.is_empty() {
            let set = if value.is_some() {
                &mut self.matched
            } else {
                &mut self.unmatched
            };
            set.insert(name.to_string());
        }
        value
    }

    /// `<` or `<<`; `<<` takes the blanks after it along, so `<<  EOF` stays one word and the
    /// parser finds the heredoc in it (BuildKit's `processPossibleHeredoc`, moby/buildkit
    /// "dockerfile: allow whitespace in heredocs").
    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut out = String::from("<<");
        while let Some(c @ (' ' | '\t' | '\r')) = self.peek() {
            out.push(c);
            self.next();
        }
        out
    }

    /// Process up to `stop` (consumed) or the end of input when `stop` is None.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), ExpandError> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    words.add_string(&value);
                }
                '<' => {
                    let value = self.process_possible_heredoc();
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                '\'' | '"' if !self.lex.skip_quotes => {
                    let value = if ch == '\'' {
                        self.process_single_quote()?
                    } else {
                        self.process_double_quote()?
                    };
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                _ => {
                    self.next();
                    let mut out = ch;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // An escape at the very end is dropped, like a line continuation.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        out = escaped;
                    } else {
                        words.add_char(ch);
                    }
                    result.push(out);
                }
            }
        }
        match stop {
            Some('}') => Err(ExpandError::MissingBrace),
            Some('/') => Err(ExpandError::MissingSlash),
            // Only '}' and '/' are ever stop characters.
            Some(_) => Err(ExpandError::MissingBrace),
            None => Ok((result, words.finish())),
        }
    }

    fn process_single_quote(&mut self) -> Result<String, ExpandError> {
        // Everything up to the next ' is literal; a ' cannot be escaped inside.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(ExpandError::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ExpandError> {
        // Literal except `$` and the escape character, which escapes only `"`, `$` and
        // itself (sh's rule, with ` not special since nothing is executed here).
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(ExpandError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(ch) => {
                    self.next();
                    let mut out = ch;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                                self.next();
                                out = n;
                            }
                            // BuildKit writes a kept escape twice in raw-escape mode; only
                            // heredoc detection sees that, and it only counts quotes.
                            Some(_) => {}
                        }
                    }
                    result.push(out);
                }
            }
        }
    }

    /// A name after `$` or `${`: a run of digits (`$1`, `$10`), one special parameter,
    /// or letters/digits/underscores. Empty when none of those follows.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && is_digit(c) {
                while let Some(d) = self.peek().filter(|&d| is_digit(d)) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(c) {
                self.next();
                return c.to_string();
            }
            if !c.is_alphabetic() && !is_digit(c) && c != '_' {
                break;
            }
            self.next();
            name.push(c);
        }
        name
    }

    fn process_dollar(&mut self) -> Result<String, ExpandError> {
        self.next(); // the '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                // `$` before a non-name character is literal.
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.next(); // the '{'
        match self.peek() {
            None => return Err(ExpandError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ExpandError::BadSubstitution),
            Some(_) => {}
        }
        if self.depth >= MAX_NESTING {
            return Err(ExpandError::TooDeep);
        }
        self.depth += 1;
        let r = self.process_braced();
        self.depth -= 1;
        r
    }

    /// After `${` and before the name.
    fn process_braced(&mut self) -> Result<String, ExpandError> {
        let name = self.process_name();
        let Some(ch) = self.next() else {
            return Err(ExpandError::MissingBrace);
        };
        match ch {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' => {
                let Some(m) = self.next() else {
                    return Err(ExpandError::MissingBrace);
                };
                self.process_modifier(&name, m, true)
            }
            '+' | '-' | '?' | '#' | '%' => self.process_modifier(&name, ch, false),
            '/' => self.process_replace(&name),
            other => Err(ExpandError::UnsupportedModifier(other.to_string())),
        }
    }

    /// `${name<m>word}` or, with `null_is_unset`, `${name:<m>word}`; the modifier is
    /// consumed, the word and the closing brace are not.
    fn process_modifier(
        &mut self,
        name: &str,
        m: char,
        null_is_unset: bool,
    ) -> Result<String, ExpandError> {
        let chs = if null_is_unset {
            format!(":{m}")
        } else {
            m.to_string()
        };
        let pattern_word = m == '#' || m == '%';
        if null_is_unset && pattern_word {
            return Err(ExpandError::UnsupportedModifier(chs));
        }
        // Patterns keep their escapes so that `\*` reaches the glob as a literal star.
        let (word, _) = self
            .process_stop_on(Some('}'), pattern_word)
            .map_err(|e| self.brace_error(e))?;
        let value = self.get_env(name);
        let set = value.is_some();
        if self.lex.skip_unset && !set {
            return Ok(format!("${{{name}{chs}{word}}}"));
        }
        let value = value.unwrap_or_default();
        let null = !set || (null_is_unset && value.is_empty());
        match m {
            '-' => Ok(if null { word } else { value }),
            '+' => Ok(if null { String::new() } else { word }),
            '?' => {
                if null {
                    let message = if !word.is_empty() {
                        word
                    } else if !set {
                        "is not allowed to be unset".to_string()
                    } else {
                        "is not allowed to be empty".to_string()
                    };
                    Err(ExpandError::Required {
                        name: name.to_string(),
                        message,
                    })
                } else {
                    Ok(value)
                }
            }
            '#' | '%' => {
                // `#`/`%` remove the shortest match, `##`/`%%` the longest.
                let (greedy, pattern) = match word.strip_prefix(m) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                if m == '#' {
                    trim_prefix(pattern, &value, greedy)
                } else {
                    trim_suffix(pattern, &value, greedy)
                }
            }
            _ => Err(ExpandError::UnsupportedModifier(chs)),
        }
    }

    /// An error from inside `${...}` that ran into the end of input means the brace
    /// was never closed, whatever the inner problem was.
    fn brace_error(&self, e: ExpandError) -> ExpandError {
        if self.at_end() {
            ExpandError::MissingBrace
        } else {
            e
        }
    }

    /// `${name/pattern/replacement}` (first match) or `${name//pattern/replacement}` (all);
    /// the first `/` is consumed.
    fn process_replace(&mut self, name: &str) -> Result<String, ExpandError> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let (pattern, _) = self.process_stop_on(Some('/'), true).map_err(|e| {
            if self.at_end() {
                ExpandError::MissingSlash
            } else {
                e
            }
        })?;
        let (replacement, _) = self
            .process_stop_on(Some('}'), true)
            .map_err(|e| self.brace_error(e))?;
        let Some(value) = self.get_env(name) else {
            if self.lex.skip_unset {
                // BuildKit writes a single '/' back even for `//`.
                return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        let re = glob_regex(&pattern, true, false)?;
        if all {
            // Like Go's ReplaceAllString, `$0`/`${0}` in the replacement insert the
            // match and `$$` a dollar; any other `$name` is empty.
            Ok(re.replace_all(&value, replacement.as_str()).into_owned())
        } else {
            Ok(match re.find(&value) {
                Some(m) => format!(
                    "{}{}{}",
                    &value[..m.start()],
                    replacement,
                    &value[m.end()..]
                ),
                None => value,
            })
        }
    }
}

/// Translate a shell pattern to a regex: `*` any run (`.*`, or `.*?` when not greedy), `?`
/// one character, `\*` `\?` `\\` literal, `\}` and `\/` the character itself (they had to
/// be escaped to get into `${}`), everything else literal. Bracket expressions are not
/// supported, as in BuildKit: `[` is literal. `.` keeps Go's meaning (no newline).
fn glob_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, ExpandError> {
    let invalid = |reason: String| ExpandError::InvalidPattern {
        pattern: pattern.to_string(),
        reason,
    };
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let mut it = pattern.chars().peekable();
    let mut buf = [0u8; 4];
    while let Some(c) = it.next() {
        match c {
            '*' => out.push_str(if greedy { ".*" } else { ".*?" }),
            '?' => out.push('.'),
            '\\' => {
                if matches!(it.peek(), Some('}' | '/')) {
                    continue;
                }
                match it.next() {
                    Some(e @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(e);
                    }
                    Some(e) => return Err(invalid(format!("invalid escape '\\{e}'"))),
                    None => return Err(invalid("trailing '\\'".to_string())),
                }
            }
            _ => out.push_str(&regex::escape(c.encode_utf8(&mut buf))),
        }
    }
    Regex::new(&out).map_err(|e| invalid(e.to_string()))
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let re = glob_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// The shortest or longest suffix is the shortest or longest prefix of the reversed
/// value matched by the reversed pattern (escape pairs stay in order).
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let mut tokens: Vec<String> = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        let mut t = c.to_string();
        if c == '\\' {
            t.extend(it.next());
        }
        tokens.push(t);
    }
    let reversed_pattern: String = tokens.into_iter().rev().collect();
    let reversed_value: String = value.chars().rev().collect();
    let re = glob_regex(&reversed_pattern, greedy, true).map_err(|e| match e {
        ExpandError::InvalidPattern { reason, .. } => ExpandError::InvalidPattern {
            pattern: pattern.to_string(),
            reason,
        },
        other => other,
    })?;
    let trimmed = match re.find(&reversed_value) {
        Some(m) => &reversed_value[m.end()..],
        None => reversed_value.as_str(),
    };
    Ok(trimmed.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// One row of testdata/expand/table.txt; see the header of that file for the format.
    struct Row {
        line: usize,
        input: String,
        lexer: Lexer,
        env: BTreeMap<String, String>,
        expected: Expected,
    }

    enum Expected {
        Word(String),
        Words(Vec<String>),
        Error(String),
    }

    fn unescape_env_value(raw: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut it = raw.chars();
        while let Some(c) = it.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some(',') => out.push(','),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                other => return Err(format!("bad escape in env value: \\{other:?}")),
            }
        }
        Ok(out)
    }

    /// Split an env field on commas not preceded by a backslash escape.
    fn split_env_items(field: &str) -> Vec<String> {
        let mut items = vec![String::new()];
        let mut it = field.chars();
        while let Some(c) = it.next() {
            match c {
                ',' => items.push(String::new()),
                '\\' => {
                    let last = items.last_mut().expect("never empty");
                    last.push('\\');
                    last.extend(it.next());
                }
                _ => items.last_mut().expect("never empty").push(c),
            }
        }
        items
    }

    fn parse_row(line_no: usize, line: &str) -> Result<Row, String> {
        let fields: Vec<&str> = line.split(" | ").collect();
        let [input, env_field, expected] = fields[..] else {
            return Err(format!(
                "expected 3 fields separated by ` | `, got {}",
                fields.len()
            ));
        };
        let mut lexer = Lexer::new('\\');
        let mut env = BTreeMap::new();
        if env_field != "-" {
            for item in split_env_items(env_field) {
                match item.as_str() {
                    "@escape=backtick" => lexer.escape = '`',
                    "@raw_quotes" => lexer = lexer.with_raw_quotes(true),
                    "@raw_escapes" => lexer = lexer.with_raw_escapes(true),
                    "@skip_unset" => lexer = lexer.with_skip_unset(true),
                    "@skip_quotes" => lexer = lexer.with_skip_quotes(true),
                    _ => {
                        let (k, v) = item
                            .split_once('=')
                            .ok_or_else(|| format!("env item {item:?} has no `=`"))?;
                        env.insert(k.to_string(), unescape_env_value(v)?);
                    }
                }
            }
        }
        let expected = if let Some(msg) = expected.strip_prefix("error: ") {
            Expected::Error(msg.to_string())
        } else if expected.starts_with('[') {
            Expected::Words(serde_json::from_str(expected).map_err(|e| e.to_string())?)
        } else {
            Expected::Word(serde_json::from_str(expected).map_err(|e| e.to_string())?)
        };
        Ok(Row {
            line: line_no,
            input: input.to_string(),
            lexer,
            env,
            expected,
        })
    }

    fn check_row(row: &Row) -> Result<(), String> {
        let word = row.lexer.expand_word(&row.input, &row.env);
        let words = row.lexer.expand_words(&row.input, &row.env);
        match &row.expected {
            Expected::Word(want) => match word {
                Ok(got) if &got == want => Ok(()),
                other => Err(format!("expand_word gave {other:?}, want {want:?}")),
            },
            Expected::Words(want) => match words {
                Ok(got) if &got == want => Ok(()),
                other => Err(format!("expand_words gave {other:?}, want {want:?}")),
            },
            Expected::Error(want) => match (word, words) {
                (Err(a), Err(b)) if a.to_string() == *want && a == b => Ok(()),
                (a, b) => Err(format!(
                    "want error {want:?}; expand_word gave {a:?}, expand_words gave {b:?}"
                )),
            },
        }
    }

    #[test]
    fn expansion_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/expand/table.txt");
        let text = std::fs::read_to_string(path).expect("read testdata/expand/table.txt");
        let mut failures = Vec::new();
        let mut rows = 0;
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            rows += 1;
            let result = parse_row(line_no, line).and_then(|row| check_row(&row));
            if let Err(e) = result {
                failures.push(format!("table.txt:{line_no}: `{line}`\n    {e}"));
            }
        }
        assert!(rows >= 100, "only {rows} rows in the table");
        assert!(
            failures.is_empty(),
            "{} of {rows} rows failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn table_rows_name_their_line() {
        let row = parse_row(7, "$v | v=1 | \"2\"").unwrap();
        assert_eq!(row.line, 7);
        assert!(check_row(&row).is_err(), "a wrong expectation must fail");
        assert!(parse_row(1, "only | two").is_err());
    }

    #[test]
    fn tracking_reports_every_name_looked_up() {
        let lex = Lexer::new('\\');
        let e = env(&[("FOO", "x"), ("EMPTY", "")]);
        let cases: &[(&str, &str, &[&str])] = &[
            ("plain", "plain", &[]),
            ("x ${UNUSED}", "x ", &["UNUSED"]),
            ("$FOO-$EMPTY", "x-", &["EMPTY", "FOO"]),
            // BAR is expanded as part of the default word even though FOO is set.
            ("${FOO:-$BAR}", "x", &["BAR", "FOO"]),
            ("'$A' \"$B\" \\$C", "$A  $C", &["B"]),
            ("${A/$B/$C}", "", &["A", "B", "C"]),
            ("${A#$B}${C%%$D}", "", &["A", "B", "C", "D"]),
            ("$1 $@ ${#}", "  ", &["#", "1", "@"]),
            ("$ $. ${FOO}", "$ $. x", &["FOO"]),
        ];
        for (input, want_word, want_names) in cases {
            let (word, names) = lex.expand_word_tracking(input, &e).unwrap();
            assert_eq!(&word, want_word, "word of {input:?}");
            assert_eq!(names, set(want_names), "names of {input:?}");
        }
    }

    #[test]
    fn expand_splits_matched_from_unmatched() {
        let lex = Lexer::new('\\');
        let e = env(&[("FOO", "xxx"), ("BAR", "")]);
        let got = lex.expand("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", &e).unwrap();
        assert_eq!(got.word, "xxx  ccc");
        assert_eq!(got.words, vec!["xxx", "ccc"]);
        assert_eq!(got.matched, set(&["BAR", "FOO"]));
        assert_eq!(got.unmatched, set(&["BAZ"]));
    }

    #[test]
    fn tracking_fails_with_the_expansion() {
        let lex = Lexer::new('\\');
        let err = lex
            .expand_word_tracking("${NEED:?set NEED}", &env(&[]))
            .unwrap_err();
        assert_eq!(err.to_string(), "NEED: set NEED");
    }

    #[test]
    fn whitespace_that_the_table_cannot_hold() {
        let lex = Lexer::new('\\');
        let e = env(&[("V", "a\tb\nc"), ("M", "l1\nl2")]);
        assert_eq!(lex.expand_words("$V", &e).unwrap(), vec!["a", "b", "c"]);
        assert_eq!(lex.expand_words("\"$V\"", &e).unwrap(), vec!["a\tb\nc"]);
        assert_eq!(lex.expand_words("x\n y", &e).unwrap(), vec!["x", "y"]);
        assert_eq!(lex.expand_word("a\\\nb", &e).unwrap(), "a\nb");
        // Glob `?` and `*` do not match a newline (Go regexp `.`).
        assert_eq!(lex.expand_word("${M#*1?}", &e).unwrap(), "l1\nl2");
        assert_eq!(lex.expand_word("${M%\n*}", &e).unwrap(), "l1");
        // A leading byte-order mark is dropped, as Go's text/scanner does.
        assert_eq!(lex.expand_word("\u{feff}$V", &e).unwrap(), "a\tb\nc");
        assert_eq!(lex.expand_word("a\u{feff}", &e).unwrap(), "a\u{feff}");
    }

    #[test]
    fn nesting_is_bounded() {
        let lex = Lexer::new('\\');
        let ok = format!("{}x{}", "${a:-".repeat(50), "}".repeat(50));
        assert_eq!(lex.expand_word(&ok, &env(&[])).unwrap(), "x");
        let deep = format!("{}x{}", "${a:-".repeat(5000), "}".repeat(5000));
        assert_eq!(lex.expand_word(&deep, &env(&[])), Err(ExpandError::TooDeep));
    }

    #[test]
    fn large_input_is_handled() {
        let lex = Lexer::new('\\');
        let e = env(&[("v", &"ab".repeat(1_000))]);
        // 200 `?` remove the first 200 characters.
        let many_stars = format!("${{v#{}}}", "*?".repeat(200));
        assert_eq!(lex.expand_word(&many_stars, &e).unwrap(), "ab".repeat(900));
        let long_pattern = format!("${{v%%{}}}", "a*".repeat(500));
        // Either a result or a pattern error (regex size limit), never a crash.
        match lex.expand_word(&long_pattern, &e) {
            Ok(_) | Err(ExpandError::InvalidPattern { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
        let long_word = "$v ".repeat(2_000);
        assert_eq!(lex.expand_words(&long_word, &e).unwrap().len(), 2_000);
    }

    /// Deterministic fuzzing: many short strings over the characters the lexer cares
    /// about must expand or fail without panicking, identically in both entry points.
    #[test]
    fn no_panic_on_generated_input() {
        const ALPHABET: &[char] = &[
            '$', '{', '}', ':', '-', '+', '?', '#', '%', '/', '\\', '`', '\'', '"', '*', '[', ']',
            '.', '@', '0', '1', 'a', 'b', '_', ' ', '\n', 'é', '日', '\u{feff}', '=',
        ];
        let e = env(&[("a", "a*b"), ("b", ""), ("ab", "日本 語"), ("1", "one")]);
        let lexers = [
            Lexer::new('\\'),
            Lexer::new('`'),
            Lexer::new('\\')
                .with_raw_quotes(true)
                .with_raw_escapes(true)
                .with_skip_unset(true),
            Lexer::new('\\').with_skip_quotes(true),
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (rand() % 14) as usize;
            let input: String = (0..len)
                .map(|_| ALPHABET[(rand() % ALPHABET.len() as u64) as usize])
                .collect();
            let lex = &lexers[(rand() % lexers.len() as u64) as usize];
            let word = lex.expand_word(&input, &e);
            let words = lex.expand_words(&input, &e);
            assert_eq!(word.is_ok(), words.is_ok(), "{input:?} with {lex:?}");
            if let (Err(a), Err(b)) = (&word, &words) {
                assert_eq!(a, b, "{input:?}");
            }
        }
    }
}
