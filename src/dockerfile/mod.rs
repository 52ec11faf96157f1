//! Dockerfile frontend: `syntax` (text -> AST with spans), `shell` (BuildKit's word
//! expansion), `instructions` (typed, validated instructions). Pure: no I/O.

pub mod shell;
