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
    /// An error at a Dockerfile line, as BuildKit's `parser.WithLocation` wraps a dispatch
    /// error once: the typed cause, with the file, the line and the line's text
    /// (`   3 | RUN exit 3`). A failed RUN's last output lines follow the excerpt.
    #[error("{file}:{line}: {}\n{excerpt}{}", crate::error::render_chain(&**source), output_block(source.output()))]
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
    /// `--cache-to`: exporting the build cache failed.
    #[error("exporting cache: {0}")]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A RUN for a platform this machine cannot run.
    #[error(transparent)]
    Binfmt(#[from] crate::sandbox::binfmt::BinfmtError),
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

    /// Whether this is an internal error (a broken invariant of rbuild's: a bug, exit code
    /// 101) rather than one the user can act on (bad input, a failed step, a missing file,
    /// a registry's answer, a full disk: exit code 1).
    pub fn is_internal(&self) -> bool {
        match self {
            BuildError::At { source, .. } => source.is_internal(),
            BuildError::Store(e) => e.is_internal(),
            // The helper died or answered garbage: it is rbuild's own protocol. Setting up
            // the sandbox is not (a kernel without overlay or user namespaces).
            BuildError::Sandbox(SandboxError::Helper { .. } | SandboxError::Pipe(_)) => true,
            // A stage cancelled by another's failure never is the build's error: the first
            // failure is.
            BuildError::Cancelled => true,
            // The executor always gives a copy job its source.
            BuildError::FileJob(FileJobError::NoSource) => true,
            BuildError::Plan(_)
            | BuildError::Process { .. }
            | BuildError::Registry(_)
            | BuildError::Cache(_)
            | BuildError::Layer(_)
            | BuildError::Sandbox(_)
            | BuildError::Binfmt(_)
            | BuildError::Copy(_)
            | BuildError::FileJob(_)
            | BuildError::Context(_)
            | BuildError::Io { .. }
            | BuildError::Invalid(_)
            | BuildError::Interrupted => false,
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
    fn internal_errors_are_the_broken_invariants() {
        let io = || std::io::Error::from(std::io::ErrorKind::StorageFull);
        let internal = [
            BuildError::Cancelled,
            BuildError::Store(StoreError::InvalidCacheKey("../x".into())),
            BuildError::Store(StoreError::LayerCountMismatch {
                config: 1,
                given: 2,
            }),
            BuildError::Sandbox(SandboxError::Helper {
                status: "signal 11".into(),
                stderr: String::new(),
            }),
            BuildError::at(
                "Dockerfile",
                1,
                "RUN x",
                BuildError::Sandbox(SandboxError::Pipe(io())),
            ),
        ];
        for e in &internal {
            assert!(e.is_internal(), "{e:?}");
        }
        let user = [
            BuildError::Invalid("secret x: not found".into()),
            BuildError::Process {
                message: "exit code: 3".into(),
                output: Vec::new(),
            },
            BuildError::io("writing", "/full")(io()),
            BuildError::Store(StoreError::io("writing", "/full")(io())),
            BuildError::Store(StoreError::Busy("/store".into())),
            BuildError::Store(StoreError::BlobMissing {
                digest: crate::image::Digest::of(b""),
            }),
            BuildError::Sandbox(SandboxError::Setup("mounting overlay: EPERM".into())),
            BuildError::Layer(crate::layer::LayerError::Truncated),
            BuildError::Interrupted,
            BuildError::at("Dockerfile", 2, "COPY a b", BuildError::Invalid("x".into())),
        ];
        for e in &user {
            assert!(!e.is_internal(), "{e:?}");
        }
    }

    #[test]
    fn tail_keeps_the_last_lines_and_the_unterminated_one() {
        let mut t = OutputTail::new(2);
        t.push(b"one\ntw");
        t.push(b"o\r\nthree\nfou");
        assert_eq!(t.finish(), ["three", "fou"]);
        assert!(OutputTail::new(3).finish().is_empty());
    }
}
