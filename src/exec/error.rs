use std::path::PathBuf;

use crate::context::{ContextError, CopyError};
use crate::layer::LayerError;
use crate::plan::PlanError;
use crate::registry::RegistryError;
use crate::sandbox::SandboxError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// An error at a Dockerfile line, as BuildKit's `parser.WithLocation` wraps a dispatch
    /// error once: the typed cause, with the file, the line and the line's text
    /// (`   3 | RUN exit 3`). A failed RUN's last output lines follow the excerpt.
    #[error("{file}:{line}: {}\n{excerpt}{}", chain(source), output_block(source.output()))]
    At {
        file: String,
        line: usize,
        excerpt: String,
        source: Box<BuildError>,
    },
    /// A RUN step's process failed (BuildKit's `process "..." did not complete
    /// successfully: exit code: N`).
    #[error("{message}")]
    Process {
        message: String,
        /// The last lines of the step's output (empty when it printed nothing).
        output: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("{what} `{}`: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("interrupted")]
    Interrupted,
    /// Another stage building in parallel failed first; its error is the build's.
    #[error("cancelled: another stage of the build failed")]
    Cancelled,
}

impl BuildError {
    /// `cause` at line `line` of `file`, whose text is `text`.
    pub fn at(file: &str, line: usize, text: &str, cause: BuildError) -> BuildError {
        BuildError::At {
            file: file.to_string(),
            line,
            excerpt: format!("{line:>4} | {text}"),
            source: Box::new(cause),
        }
    }

    /// The located error's cause (itself when it has no location).
    pub fn cause(&self) -> &BuildError {
        match self {
            BuildError::At { source, .. } => source.cause(),
            e => e,
        }
    }

    /// A failed RUN's last output lines.
    fn output(&self) -> &[String] {
        match self {
            BuildError::Process { output, .. } => output,
            _ => &[],
        }
    }

    pub fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { what, path, source }
    }
}

/// An error's message with the causes it does not already include, `a: b: c`: the
/// location's excerpt goes after the whole chain, never between its links.
fn chain(e: &BuildError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

/// BuildKit's box around a failed step's last output lines.
fn output_block(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n------ last output lines:");
    for l in lines {
        out.push_str("\n > ");
        out.push_str(l);
    }
    out.push_str("\n------");
    out
}

/// The last `max` lines of a byte stream, the unterminated one included.
#[derive(Debug)]
pub struct OutputTail {
    max: usize,
    lines: std::collections::VecDeque<String>,
    partial: Vec<u8>,
}

impl OutputTail {
    pub fn new(max: usize) -> OutputTail {
        OutputTail {
            max,
            lines: Default::default(),
            partial: Vec::new(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.keep(&line[..line.len() - 1]);
        }
        // A step printing one endless line must not grow this without bound.
        if self.partial.len() > 64 * 1024 {
            let line = std::mem::take(&mut self.partial);
            self.keep(&line);
        }
    }

    fn keep(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        self.lines
            .push_back(line.trim_end_matches('\r').to_string());
        if self.lines.len() > self.max {
            self.lines.pop_front();
        }
    }

    pub fn finish(mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.keep(&line);
        }
        self.lines.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_the_unterminated_one() {
        let mut t = OutputTail::new(2);
        t.push(b"one\ntw");
        t.push(b"o\r\nthree\nfou");
        assert_eq!(t.finish(), ["three", "fou"]);
        assert!(OutputTail::new(3).finish().is_empty());
    }
}
