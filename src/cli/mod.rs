//! The command line: argv -> settings -> library calls, and the progress renderers.
//! Errors become exit codes here: 1 for a failed build or bad input, 2 for bad usage
//! (clap), 130 after SIGINT, 101 for an internal error (a bug).

mod args;
mod commands;
mod progress;
mod settings;

use std::io::{IsTerminal, Write as _};
use std::sync::Arc;

pub use args::{BuildArgs, Cli, Command, ProgressMode};

use crate::exec::{Reporter, Silent};

/// A failure the user can act on (bad input, a failed step): exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__sandbox-helper")
    {
        crate::sandbox::helper_main::<crate::fileop::FileJob>();
    }
    let cli = Cli::parse_argv();
    match commands::dispatch(cli) {
        Ok(()) => 0,
        Err(err) => {
            if crate::exec::interrupted() {
                let _ = writeln!(std::io::stderr(), "error: interrupted");
                return 130;
            }
            let _ = writeln!(
                std::io::stderr(),
                "error: {}",
                crate::error::render_chain(err.as_ref())
            );
            if err.downcast_ref::<UserError>().is_some() || is_user_error(&err) {
                1
            } else {
                101
            }
        }
    }
}

/// Library errors that come from the user's input rather than from a bug in rbuild.
fn is_user_error(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<crate::exec::BuildError>()
            || e.is::<crate::plan::PlanError>()
            || e.is::<crate::registry::RegistryError>()
            || e.is::<crate::store::StoreError>()
            || e.is::<crate::output::OutputError>()
            || e.is::<crate::image::ReferenceError>()
            || e.is::<std::io::Error>()
    })
}

/// The renderer for `--progress` (auto: tty when stderr is a terminal, else plain).
fn reporter(mode: ProgressMode, quiet: bool) -> Arc<dyn Reporter> {
    let mode = match (mode, quiet) {
        (_, true) => ProgressMode::Quiet,
        (ProgressMode::Auto, _) if std::io::stderr().is_terminal() => ProgressMode::Tty,
        (ProgressMode::Auto, _) => ProgressMode::Plain,
        (m, _) => m,
    };
    let inner: Arc<dyn Reporter> = match mode {
        ProgressMode::Tty => Arc::new(progress::Tty::new()),
        ProgressMode::Plain | ProgressMode::Auto => Arc::new(progress::Plain::new()),
        ProgressMode::Quiet => Arc::new(Silent),
    };
    if progress::trace_enabled() {
        Arc::new(progress::Trace::new(inner))
    } else {
        inner
    }
}
