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
    /// A step failed; shown with the Dockerfile line, as BuildKit does.
    #[error("{file}:{line}: {message}\n{line:>4} | {text}")]
    Step {
        file: String,
        line: usize,
        text: String,
        message: String,
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
    pub fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { what, path, source }
    }
}
