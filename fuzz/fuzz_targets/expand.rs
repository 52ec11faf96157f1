//! The shell lexer on arbitrary words, environments and lexer options; never panics.
//!
//! Input layout: byte 0 picks the escape character (bit 0: backtick) and the lexer
//! options (bits 1-4); the rest, split on NUL, is the word followed by `NAME=value`
//! pairs (a pair without `=` sets NAME to the empty string).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use rbuild::dockerfile::shell::Lexer;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\0');
    let word = parts.next().unwrap_or_default();
    let env: BTreeMap<String, String> = parts
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    let lex = Lexer::new(if flags & 1 != 0 { '`' } else { '\\' })
        .with_raw_quotes(flags & 2 != 0)
        .with_raw_escapes(flags & 4 != 0)
        .with_skip_unset(flags & 8 != 0)
        .with_skip_quotes(flags & 16 != 0);
    let one = lex.expand_word(word, &env);
    let many = lex.expand_words(word, &env);
    let tracked = lex.expand_word_tracking(word, &env);
    // The three entry points run the same expansion: they fail or succeed together.
    assert_eq!(one.is_ok(), many.is_ok());
    assert_eq!(one.as_ref().ok(), tracked.as_ref().ok().map(|(w, _)| w));
    // Text without variables, quotes or escapes comes out as it went in, split on
    // whitespace like Go's unicode.IsSpace (the same set as char::is_whitespace).
    let special = |c: char| matches!(c, '$' | '\'' | '"' | '\u{feff}') || c == lex.escape;
    if !word.contains(special) {
        assert_eq!(one.as_deref(), Ok(word));
        let split: Vec<String> = word.split_whitespace().map(str::to_string).collect();
        assert_eq!(many, Ok(split));
        assert!(tracked.is_ok_and(|(_, names)| names.is_empty()));
    }
});
