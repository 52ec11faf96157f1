//! Build checks on the command line: `rbuild check` / `rbuild --check` (checks only), and
//! the warnings every build prints at its end.

use crate::check::{self, BaseImage, BaseImages, CheckError, CheckOptions, Report};
use crate::context::{self, IgnoreMatcher};
use crate::exec::{self, BuildRequest, Reporter};
use crate::image::Reference;
use crate::plan::BaseResolver as _;
use crate::registry::Client;
use crate::store::Store;

use super::args::CheckFormat;
use super::UserError;

/// Where the checks find base images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Through the build's resolver: the store, else the registry (`rbuild check`, and
    /// error-level checks before a build).
    Resolve,
    /// The store only, never the network: after a build, which put its bases there (and
    /// after a failed one, which must not wait on a registry again for warnings).
    StoreOnly,
}

/// Base images for the checks through the build's resolver.
struct Resolved<'a>(exec::PlanResolver<'a>, crate::image::Platform);

impl BaseImages for Resolved<'_> {
    fn lookup(&mut self, reference: &str) -> Option<BaseImage> {
        let base = self.0.resolve(reference, &self.1).ok()?;
        Some(BaseImage::from_config(&base.config))
    }
}

/// Base images for the checks from the store alone.
/// The store keeps the host's image of a tag: for another target platform it has no answer.
struct Stored<'a>(&'a Store, crate::image::Platform);

impl BaseImages for Stored<'_> {
    fn lookup(&mut self, reference: &str) -> Option<BaseImage> {
        let name = reference.parse::<Reference>().ok()?.to_string();
        let record = self.0.resolve(&name).ok()??;
        if !record.config.is_for(&self.1) {
            return None;
        }
        Some(BaseImage::from_config(&record.config))
    }
}

/// The build context as the checks see it: what a COPY source brings, through the same
/// resolver and walk as the copy, capped (a check of a huge context stays quick).
#[derive(Debug)]
struct Context {
    root: std::path::PathBuf,
    ignore: IgnoreMatcher,
}

/// Files of one source a check looks at, at most.
const CONTEXT_FILES_LIMIT: usize = 10_000;

impl check::ContextFiles for Context {
    fn files(&self, source: &str, excludes: &[String]) -> Option<Vec<String>> {
        let files = context::source_files(
            &self.root,
            source,
            &self.ignore,
            excludes,
            CONTEXT_FILES_LIMIT,
        )
        .ok()?;
        Some(files.into_iter().map(|f| f.path).collect())
    }

    fn read(&self, path: &str) -> Option<Vec<u8>> {
        context::read_control_file(&self.root, &self.root.join(path)).ok()?
    }
}

/// A bad `# check=` directive or `BUILDKIT_DOCKERFILE_CHECK` fails the command before
/// anything is built (as in BuildKit); a Dockerfile that does not parse is left to the
/// build, which names the error itself.
pub fn validate_config(req: &BuildRequest) -> anyhow::Result<check::CheckConfig> {
    match check::config(&req.dockerfile_text, &req.dockerfile_name, &req.build_args) {
        Ok(c) => Ok(c),
        Err(e @ CheckError::Config { .. }) => Err(UserError(e.to_string()).into()),
        Err(CheckError::Dockerfile(_)) => Ok(check::CheckConfig::default()),
    }
}

/// Run the checks for `req`. `all_stages`: every stage (`rbuild check` without
/// `--target`), else the stages the build needs.
pub fn run(
    store: &Store,
    registry: &Client,
    req: &BuildRequest,
    all_stages: bool,
    lookup: Lookup,
) -> anyhow::Result<Report> {
    // A broken ignore file fails the build with its own error; the checks then only lose
    // CopyIgnoredFile.
    let ignore = IgnoreMatcher::load(&req.context, req.dockerfile_path.as_deref()).ok();
    let files = Context {
        root: req.context.clone(),
        ignore: ignore.clone().unwrap_or_default(),
    };
    let opts = CheckOptions {
        file_name: &req.dockerfile_name,
        build_args: req.build_args.clone(),
        target: req.target.as_deref(),
        platform: req.platform.clone(),
        all_stages,
        ignore: ignore.as_ref().filter(|m| !m.is_empty()),
        context: Some(&files),
    };
    let mut resolved;
    let mut stored;
    let bases: &mut dyn BaseImages = match lookup {
        Lookup::Resolve => {
            resolved = Resolved(
                exec::PlanResolver::new(store, registry, req),
                req.platform.clone(),
            );
            &mut resolved
        }
        Lookup::StoreOnly => {
            stored = Stored(store, req.platform.clone());
            &mut stored
        }
    };
    match check::check(&req.dockerfile_text, &opts, bases) {
        Ok(report) => Ok(report),
        Err(CheckError::Dockerfile(e)) => Err(e.into()),
        Err(e @ CheckError::Config { .. }) => Err(UserError(e.to_string()).into()),
    }
}

/// Print a build's warnings through its progress renderer (tty or plain), each located
/// and with its excerpt, then the summary.
pub fn report_to(reporter: &dyn Reporter, report: &Report, dockerfile: &str) {
    for w in &report.warnings {
        reporter.warn(&check::render::text(&report.file, dockerfile, w));
    }
}

/// The error for a report whose rules are at error level and fired.
pub fn violation(report: &Report) -> anyhow::Result<()> {
    match report.violation() {
        Some(v) => Err(UserError(format!("{}: {v}", report.file)).into()),
        None => Ok(()),
    }
}

/// `rbuild check` and `rbuild --check`: the report on stdout, exit 1 when a rule at error
/// level fired.
pub fn command(
    store: &Store,
    registry: &Client,
    req: &BuildRequest,
    format: CheckFormat,
) -> anyhow::Result<()> {
    let report = match run(store, registry, req, true, Lookup::Resolve) {
        Ok(report) => report,
        Err(e) => {
            // CI reads the JSON: it says why there are no warnings (stderr says it too).
            if format == CheckFormat::Json {
                let message = crate::error::render_chain(e.as_ref());
                let first = message.lines().next().unwrap_or_default();
                super::commands::stdout_text(&check::render::json_error(
                    &req.dockerfile_name,
                    first,
                ))?;
            }
            return Err(e);
        }
    };
    let out = match format {
        CheckFormat::Text => check::render::report_text(&report, &req.dockerfile_text),
        CheckFormat::Json => check::render::json(&report),
    };
    super::commands::stdout_text(&out)?;
    violation(&report)
}
