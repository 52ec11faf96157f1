//! The command line: argv -> settings -> library calls, and the progress renderers.
//! Errors become exit codes here: 1 for a failed build or bad input, 2 for bad usage
//! (clap), 130 after SIGINT, 101 for an internal error (a bug).

mod annotations;
mod args;
mod check;
mod commands;
mod platforms;
mod progress;
mod prune;
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
            let rendered = crate::error::render_chain(err.as_ref());
            let _ = writeln!(std::io::stderr(), "error: {rendered}");
            // A chown to an id a single-id namespace lacks fails with EINVAL.
            if let Some(hint) = crate::sandbox::userns::current().single_id_hint() {
                let chown = rendered.contains("Invalid argument") && !rendered.contains("mounting");
                if chown && !rendered.contains("/etc/subuid") {
                    let _ = writeln!(std::io::stderr(), "note: {hint}");
                }
            }
            exit_code(&err)
        }
    }
}

/// The exit code of a failed command: 1 for what the user can act on (bad input, a failed
/// step, a missing file, a registry's answer, a full disk), 101 for an internal error (a
/// broken invariant of rbuild's own, decided per variant by `is_internal`; an error of no
/// known kind counts as one too).
fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<UserError>().is_some() {
        return 1;
    }
    let internal = |e: &(dyn std::error::Error + 'static)| {
        e.downcast_ref::<crate::exec::BuildError>()
            .is_some_and(crate::exec::BuildError::is_internal)
            || e.downcast_ref::<crate::store::StoreError>()
                .is_some_and(crate::store::StoreError::is_internal)
    };
    let user = |e: &(dyn std::error::Error + 'static)| {
        e.is::<crate::exec::BuildError>()
            || e.is::<crate::plan::PlanError>()
            || e.is::<crate::registry::RegistryError>()
            || e.is::<crate::store::StoreError>()
            || e.is::<crate::output::OutputError>()
            || e.is::<crate::image::ReferenceError>()
            || e.is::<std::io::Error>()
    };
    if err.chain().any(internal) || !err.chain().any(user) {
        101
    } else {
        1
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::BuildError;
    use crate::store::StoreError;

    #[test]
    fn exit_codes_tell_user_errors_from_bugs() {
        let code = |e: anyhow::Error| exit_code(&e);
        let full = || std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(code(UserError("bad flag".into()).into()), 1);
        assert_eq!(code(BuildError::Invalid("no such stage".into()).into()), 1);
        assert_eq!(code(BuildError::io("writing", "/x")(full()).into()), 1);
        assert_eq!(code(StoreError::Busy("/s".into()).into()), 1);
        assert_eq!(code(full().into()), 1);
        assert_eq!(
            code(anyhow::Error::from(full()).context("writing the iidfile")),
            1
        );
        // A located step error is the user's or a bug as its cause is.
        let at = |cause| BuildError::at("Dockerfile", 3, "RUN x", cause);
        assert_eq!(
            code(
                at(BuildError::Process {
                    message: "exit code: 1".into(),
                    output: Vec::new()
                })
                .into()
            ),
            1
        );
        // Broken invariants are bugs, wherever they sit in the chain.
        assert_eq!(code(BuildError::Cancelled.into()), 101);
        assert_eq!(
            code(BuildError::Store(StoreError::InvalidCacheKey("x/y".into())).into()),
            101
        );
        assert_eq!(
            code(anyhow::Error::from(StoreError::InvalidCacheKey("x".into())).context("saving")),
            101
        );
        // An error of no known kind is a bug too.
        assert_eq!(code(anyhow::anyhow!("unexpected")), 101);
    }

    #[test]
    fn errors_render_their_chain_once() {
        let io = std::io::Error::other("disk on fire");
        let err = anyhow::Error::from(BuildError::io("writing", "/x")(io)).context("exporting");
        assert_eq!(
            crate::error::render_chain(err.as_ref()),
            "exporting: writing `/x`: disk on fire"
        );
    }
}
