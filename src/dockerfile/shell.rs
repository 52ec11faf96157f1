//! BuildKit's shell lexer: variable expansion and quote removal for Dockerfile words.
//! (Placeholder interface; the full lexer replaces this.)

/// Variables visible to an expansion.
pub trait Env {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Env for std::collections::BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        std::collections::BTreeMap::get(self, name).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("{0}")]
    Message(String),
}

/// The lexer, parameterized by the Dockerfile's escape character (`\\` or `` ` ``).
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    pub escape: char,
}

impl Lexer {
    pub fn new(escape: char) -> Lexer {
        Lexer { escape }
    }

    /// Expand one word: variables substituted, quotes removed, no word splitting.
    pub fn expand_word(&self, word: &str, env: &dyn Env) -> Result<String, ExpandError> {
        Ok(self.expand_words(word, env)?.join(" "))
    }

    /// Expand and split into words on unquoted whitespace (as BuildKit's ProcessWords).
    pub fn expand_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ExpandError> {
        let _ = env;
        Ok(word.split_whitespace().map(str::to_string).collect())
    }
}
