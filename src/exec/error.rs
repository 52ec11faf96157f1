use std::path::PathBuf;

use crate::context::ContextError;
use crate::fileop::{CopyError, FileJobError};
use crate::layer::LayerError;
use crate::plan::PlanError;
use crate::registry::RegistryError;
use crate::sandbox::SandboxError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A step failed; shown with the Dockerfile line and the last lines the step printed,
    /// as BuildKit does.
    #[error("{file}:{line}: {message}\n{line:>4} | {text}{}", output_block(output))]
    Step {
        file: String,
        line: usize,
        text: String,
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
    FileJob(#[from] FileJobError),
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
    pub fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { what, path, source }
    }
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
