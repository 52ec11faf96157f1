//! One function per command: settings in, library calls, results out.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use anyhow::Context as _;

use crate::exec;
use crate::image::{Platform, Reference, SourceDateEpoch};
use crate::output::provenance::Provenance;
use crate::output::{self, OutputKind, OutputSpec};
use crate::registry::{Client, RegistryOptions};
use crate::sandbox::userns;
use crate::store::{ImageRecord, Store, Stored};

use super::args::{CheckFormat, Cli, Command, GlobalArgs, HistoryFormat, SaveFormat};
use super::check::Lookup;
use super::settings::{build_settings, source_date_epoch, store_root, CallFormat, CallMethod};
use super::{reporter, UserError};

/// Whether a command runs as root, in a user namespace of its own when started without
/// root (design.md "Rootless"): every command but `info` (which only reads the mode) and
/// the sandbox helper (which runs as whoever its parent made it).
fn needs_root(command: Option<&Command>) -> bool {
    !matches!(command, Some(Command::SandboxHelper | Command::Info))
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // First, so that nothing is read or created before: the store and every mount belong
    // to the namespace.
    if needs_root(cli.command.as_ref()) && !nix::unistd::geteuid().is_root() {
        let mode = userns::current();
        if let Some(hint) = mode.single_id_hint() {
            let _ = writeln!(std::io::stderr(), "warning: {hint}");
        }
        // What stops it is the machine's or the container's setup (seccomp, no_new_privs,
        // newuidmap's privileges): the user's to change, as the error says.
        let code =
            userns::reexec(&mode).map_err(|e| UserError(format!("starting rootless mode: {e}")))?;
        crate::sandbox::shutdown();
        std::process::exit(code);
    }
    let global = cli.global;
    match cli.command {
        None => build(&global, &cli.build),
        Some(Command::Build(args)) => build(&global, &args),
        Some(Command::Plan(args)) => plan(&global, &args.build),
        Some(Command::Check(args)) => check_only(&global, &args.build, args.format),
        Some(Command::Images) => images(&global),
        Some(Command::Du { format }) => du(&global, format),
        Some(Command::Info) => stdout_line(&format!("mode: {}", userns::current().describe())),
        Some(Command::Rmi { images }) => {
            let store = open_store(&global)?;
            let mut missing = Vec::new();
            for image in images {
                let untagged = store.rmi(&image, false)?;
                if untagged.is_empty() {
                    missing.push(image);
                }
                for r in untagged {
                    stdout_line(&format!("Untagged: {}", r.familiar()))?;
                }
            }
            // As docker: the others are still removed, then the missing ones are an error.
            match missing.as_slice() {
                [] => Ok(()),
                names => Err(UserError(format!("no such image: {}", names.join(", "))).into()),
            }
        }
        Some(Command::Prune {
            all,
            keep_storage,
            filter,
        }) => {
            let opts = super::prune::options(all, keep_storage.as_deref(), &filter)?;
            let store = open_store(&global)?;
            let stats = store.prune(&opts)?;
            stdout_line(&format!(
                "Deleted {}, {}, {}, {}; reclaimed {}",
                count(stats.cache_records, "cache record"),
                count(stats.layers, "layer"),
                count(stats.blobs, "blob"),
                count(stats.flats, "flattened snapshot"),
                output::human_size(stats.bytes)
            ))?;
            Ok(())
        }
        Some(Command::Pull { reference }) => {
            let store = open_store(&global)?;
            let r = parse_ref(&reference)?;
            let record = exec::pull(
                &store,
                &registry(&global)?,
                &r,
                &*reporter(super::ProgressMode::Auto, false),
            )?;
            stdout_line(&record.manifest.digest.to_string())?;
            Ok(())
        }
        Some(Command::Push {
            reference,
            destination,
        }) => {
            let store = open_store(&global)?;
            let dest = parse_ref(destination.as_deref().unwrap_or(&reference))?;
            let source = match store.resolve(&reference)? {
                Some(_) => reference.clone(),
                None => parse_ref(&reference)?.to_string(),
            };
            let registry = registry(&global)?;
            let report = reporter(super::ProgressMode::Auto, false);
            let digest = match store.lookup(&source)? {
                Some(Stored::Index(index)) => exec::push_index(
                    &store,
                    &registry,
                    &index.images,
                    &index.annotations(),
                    &dest,
                    1,
                    &*report,
                    &exec::PushHints::default(),
                )?,
                _ => exec::push(
                    &store,
                    &registry,
                    &source,
                    &dest,
                    1,
                    &*report,
                    &exec::PushHints::default(),
                )?,
            };
            stdout_line(&format!("{}@{digest}", dest.name()))?;
            Ok(())
        }
        Some(Command::Save {
            reference,
            output,
            format,
        }) => {
            let store = open_store(&global)?;
            // The same lookup as inspect, so both accept the same names.
            let stored = find_stored(&store, &reference)?;
            let report = reporter(super::ProgressMode::Auto, false);
            for image in stored.images() {
                fetch_layers(&store, &registry(&global)?, image, &*report, 1)?;
            }
            let kind = match format {
                SaveFormat::Docker => OutputKind::Docker { dest: output },
                SaveFormat::Oci => OutputKind::Oci {
                    dest: output,
                    tar: true,
                },
            };
            // output::save names the image by the given tag, or by all its tags when given
            // an id (parsing an id as a reference would name it `sha256:<hex>`).
            output::save(
                &store,
                &reference,
                &OutputSpec::plain(kind),
                source_date_epoch(None)?,
            )?;
            Ok(())
        }
        Some(Command::Inspect {
            reference,
            platform,
        }) => {
            let store = open_store(&global)?;
            let v = match (find_stored(&store, &reference)?, platform) {
                (Stored::Index(index), None) => output::inspect_index(&store, &index)?,
                (stored, platform) => {
                    let image = for_platform(stored, &reference, platform.as_deref())?;
                    output::inspect(&store, &image.manifest.digest.to_string())?
                }
            };
            stdout_line(&serde_json::to_string_pretty(&v)?)?;
            Ok(())
        }
        Some(Command::History {
            reference,
            format,
            platform,
        }) => {
            let store = open_store(&global)?;
            // Counting a layer an older rbuild committed writes into it: not during a prune.
            let _lock = store.lock_shared()?;
            let stored = find_stored(&store, &reference)?;
            let image = for_platform(stored, &reference, platform.as_deref())?;
            let report = output::history(&store, &image)?;
            match format {
                HistoryFormat::Text => stdout_text(&output::render_history(&report)),
                HistoryFormat::Json => stdout_line(&serde_json::to_string_pretty(&report)?),
            }
        }
        Some(Command::Import {
            tarball,
            reference,
            changes,
        }) => {
            let store = open_store(&global)?;
            let r = parse_ref(&reference)?;
            let epoch = source_date_epoch(None)?;
            let report = reporter(super::ProgressMode::Auto, false);
            let record = exec::import_rootfs(&store, &tarball, &r, &changes, epoch, &*report)?;
            stdout_line(&record.config_digest.to_string())?;
            Ok(())
        }
        Some(Command::Binfmt { install }) => super::platforms::binfmt(install),
        Some(Command::SandboxHelper) => crate::sandbox::helper_main::<crate::fileop::FileJob>(),
    }
}

fn parse_ref(s: &str) -> anyhow::Result<Reference> {
    s.parse::<Reference>()
        .map_err(|e| UserError(e.to_string()).into())
}

fn open_store(global: &GlobalArgs) -> anyhow::Result<Store> {
    let root = store_root(global.root.as_deref());
    Store::open(&root).with_context(|| format!("opening the store at `{}`", root.display()))
}

fn registry(global: &GlobalArgs) -> anyhow::Result<Client> {
    Ok(Client::new(RegistryOptions {
        insecure_registries: global.insecure_registries.clone(),
        platform: Platform::host(),
        docker_config_dir: None,
    })?)
}

fn find_stored(store: &Store, reference: &str) -> anyhow::Result<Stored> {
    let by_name = reference.parse::<Reference>().ok().map(|r| r.to_string());
    let found = match store.lookup(reference)? {
        Some(r) => Some(r),
        None => match by_name {
            Some(n) => store.lookup(&n)?,
            None => None,
        },
    };
    found.ok_or_else(|| UserError(format!("no such image in the store: `{reference}`")).into())
}

/// Before an output writes `image`'s layers: fetch those the store knows only as remote
/// layers (a cache's, a base image's: lazy import). A refused cache blob fails here, after
/// the build: the output needs the bytes and the step that made them was answered from the
/// cache.
fn fetch_layers(
    store: &Store,
    registry: &crate::registry::Client,
    image: &crate::store::ImageRecord,
    report: &dyn exec::Reporter,
    id: exec::StepId,
) -> anyhow::Result<()> {
    exec::materialize(store, registry, &image.chains, report, id).map_err(|e| {
        let hint = match exec::blob_refused(&e) {
            true => {
                ". The step that made the layer was answered from that cache; the store has \
                 forgotten the blob, so building again runs the step"
            }
            false => "",
        };
        UserError(format!(
            "fetching the image's layers for the output: {e}{hint}"
        ))
        .into()
    })
}

/// The image of `platform` in what a reference names (variant-aware); without a platform,
/// the one that stands for it (the host's of a multi-platform image).
fn for_platform(
    stored: Stored,
    reference: &str,
    platform: Option<&str>,
) -> anyhow::Result<ImageRecord> {
    let Some(spec) = platform else {
        return Ok(stored.default_image().clone());
    };
    let wanted = Platform::parse(spec).map_err(|e| UserError(format!("--platform: {e}")))?;
    let chosen = match &stored {
        Stored::Index(index) => crate::registry::platform::choose(&index.body, &wanted)
            .map(|d| d.digest.clone())
            .map_err(|have| have.join(", ")),
        Stored::Image(image) if image.config.is_for(&wanted) => Ok(image.manifest.digest.clone()),
        Stored::Image(image) => Err(image.config.platform().to_spec()),
    };
    let digest = chosen.map_err(|have| {
        UserError(format!(
            "`{reference}` has no image for {}; it has {have}",
            wanted.to_spec()
        ))
    })?;
    Ok(stored
        .images()
        .iter()
        .find(|i| i.manifest.digest == digest)
        .expect("the chosen manifest is one of the images")
        .clone())
}

/// `rbuild check` and `rbuild --check`.
fn check_only(
    global: &GlobalArgs,
    args: &super::BuildArgs,
    format: CheckFormat,
) -> anyhow::Result<()> {
    let settings = build_settings(args)?;
    let store = open_store(global)?;
    let registry = registry(global)?;
    let _lock = store.lock_shared()?;
    super::check::command(&store, &registry, &settings.request, format)
}

/// A build, with the build checks: a bad check configuration fails it first; at error
/// level (`# check=error=true`) the checks run first and a warning stops it, as in
/// BuildKit; otherwise the warnings are printed at the end, whether the build succeeded
/// or not.
fn build(global: &GlobalArgs, args: &super::BuildArgs) -> anyhow::Result<()> {
    if args.check {
        return check_only(global, args, CheckFormat::Text);
    }
    let settings = build_settings(args)?;
    match settings.call {
        CallMethod::Build => {}
        CallMethod::Targets(format) => {
            let text = &settings.request.dockerfile_text;
            let targets = crate::plan::targets(text, &settings.request.dockerfile_name)?;
            return stdout_text(&match format {
                CallFormat::Text => crate::plan::render_targets(&targets),
                CallFormat::Json => crate::plan::targets_json(&targets, text),
            });
        }
        CallMethod::Outline(format) => {
            let req = &settings.request;
            let store = open_store(global)?;
            let registry = registry(global)?;
            let mut bases = exec::PlanResolver::new(&store, &registry, req);
            let opts = req.plan_options();
            let plan = crate::plan::plan(&req.dockerfile_text, &opts, &mut bases)?;
            let outline = crate::plan::outline(&req.dockerfile_text, &opts, &plan)?;
            return stdout_text(&match format {
                CallFormat::Text => crate::plan::render_outline(&outline),
                CallFormat::Json => crate::plan::outline_json(&outline, &req.dockerfile_text),
            });
        }
    }
    let config = super::check::validate_config(&settings.request)?;
    let store = open_store(global)?;
    let registry = registry(global)?;
    let report = reporter(args.progress, args.quiet);
    let mode = userns::current();
    if mode.is_rootless() && args.progress == super::ProgressMode::Plain && !args.quiet {
        let _ = writeln!(std::io::stderr(), "mode: {}", mode.describe());
        if let Some(limit) = settings.request.pids_limit {
            let _ = writeln!(std::io::stderr(), "{}", userns::pids_limit_note(limit));
        }
    }
    let req = &settings.request;
    if config.error {
        let checks = super::check::run(&store, &registry, req, false, Lookup::Resolve)?;
        super::check::report_to(&*report, &checks, &req.dockerfile_text);
        super::check::violation(&checks)?;
        return build_image(&store, &registry, &settings, args, &*report);
    }
    let built = build_image(&store, &registry, &settings, args, &*report);
    let quiet = args.quiet || args.progress == super::ProgressMode::Quiet;
    if !quiet {
        if let Ok(checks) = super::check::run(&store, &registry, req, false, Lookup::StoreOnly) {
            super::check::report_to(&*report, &checks, &req.dockerfile_text);
        }
    }
    built
}

fn build_image(
    store: &Store,
    registry: &Client,
    settings: &super::settings::BuildSettings,
    args: &super::BuildArgs,
    report: &dyn exec::Reporter,
) -> anyhow::Result<()> {
    super::platforms::check(settings)?;
    exec::install_signal_handlers();
    // Held until the outputs are written: a prune in between must not take the blobs of an
    // untagged image that is still being exported.
    let _lock = store.lock_shared()?;
    let started = std::time::Instant::now();
    let outcome = super::platforms::build_each(store, registry, settings, report)?;
    super::progress::trace("build", started.elapsed());
    // The first platform's image stands for the build in `--load` and the cost line; the id
    // line, --iidfile and --metadata-file name the index of several; outputs and the push
    // get them all.
    let image = &outcome.images[0];
    let tags = &settings.request.tags;
    let say = |text: String| {
        if !args.quiet && args.progress != super::ProgressMode::Quiet {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    };

    // One attestation per image when asked for; each output makes its statement about the
    // manifest it writes.
    let provenance: Vec<Provenance> = match &settings.provenance {
        Some(spec) => (outcome.provenance.iter())
            .map(|facts| Provenance {
                spec: spec.clone(),
                facts: facts.clone(),
            })
            .collect(),
        None => Vec::new(),
    };
    let carried = settings.push
        || (settings.outputs.iter())
            .any(|o| matches!(o.kind, OutputKind::Oci { .. } | OutputKind::Local { .. }));
    if !provenance.is_empty() && !carried {
        report.warn(
            "--provenance: only OCI outputs (-o type=oci), local outputs and --push carry \
             the attestation; this build has none of them, so none is written (a docker \
             archive drops it, as BuildKit's docker exporter does)",
        );
    }
    if !settings.outputs.is_empty() || settings.load {
        for image in &outcome.images {
            fetch_layers(store, registry, image, report, outcome.next_step)?;
        }
    }
    for spec in &settings.outputs {
        let started = std::time::Instant::now();
        output::write_all(
            store,
            &outcome.images,
            &provenance,
            tags,
            spec,
            settings.request.source_date_epoch,
        )?;
        super::progress::trace("output", started.elapsed());
        say(format!("wrote {}", describe(&spec.kind)));
    }
    if settings.load {
        load_into_docker(store, image, tags, settings.request.source_date_epoch)?;
        say("loaded the image into docker".to_string());
    }
    let stored = outcome.stored();
    if settings.push {
        let hints = exec::PushHints {
            provenance: provenance.clone(),
            tags: tags.clone(),
            ..outcome.push
        };
        for (id, tag) in (outcome.next_step..).zip(tags) {
            let digest = match &outcome.images[..] {
                [one] if hints.provenance.is_empty() => exec::push(
                    store,
                    registry,
                    &one.manifest.digest.to_string(),
                    tag,
                    id,
                    report,
                    &hints,
                )?,
                several => exec::push_index(
                    store,
                    registry,
                    several,
                    &settings.annotations,
                    tag,
                    id,
                    report,
                    &hints,
                )?,
            };
            say(format!("pushed {}@{digest}", tag.name()));
        }
    }
    if let Some(path) = &settings.iidfile {
        write_file(path, stored.id().to_string().as_bytes())?;
    }
    if let Some(path) = &settings.metadata_file {
        // The first image's predicate, with the layers as the store keeps them.
        let predicate = (provenance.first()).map(|p| p.predicate(&image.manifest_body.layers));
        let json = exec::metadata_json(&stored, tags, &outcome.steps, predicate);
        write_file(path, &json)?;
    }
    if !args.quiet && args.progress != super::ProgressMode::Quiet {
        // What the image costs; never fails the build that made it.
        match output::history(store, image) {
            Ok(report) => say(output::build_cost_line(&report, &outcome.layer_steps)),
            Err(e) => report.warn(&format!("costing the image's layers: {e}")),
        }
    }
    say(summary(
        &stored.id().to_string(),
        outcome.cached,
        outcome.executed,
        tags,
    ));
    // `-o -` streams the output on stdout: the id would corrupt it.
    let stdout_taken = settings.outputs.iter().any(|spec| {
        matches!(&spec.kind, OutputKind::Docker { dest } | OutputKind::Oci { dest, .. }
            | OutputKind::Tar { dest } if dest.as_os_str() == "-")
    });
    if (args.quiet || args.progress == super::ProgressMode::Quiet) && !stdout_taken {
        stdout_line(&stored.id().to_string())?;
    }
    Ok(())
}

/// The build's last line: `image sha256:... (1 step cached, 2 run), tagged app:1`.
fn summary(id: &str, cached: usize, executed: usize, tags: &[Reference]) -> String {
    let tagged = if tags.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = tags.iter().map(|t| t.familiar()).collect();
        format!(", tagged {}", names.join(", "))
    };
    format!(
        "image {id} ({} cached, {executed} run){tagged}",
        count(cached, "step")
    )
}

/// `1 step`, `2 steps`, `0 steps`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `--load`: stream a docker archive into `docker load`.
fn load_into_docker(
    store: &Store,
    image: &crate::store::ImageRecord,
    tags: &[Reference],
    epoch: Option<SourceDateEpoch>,
) -> anyhow::Result<()> {
    let mut child = Process::new("docker")
        .args(["load", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| UserError(format!("--load: running `docker load`: {e}")))?;
    let spec = OutputSpec::plain(OutputKind::Docker {
        dest: PathBuf::from("-"),
    });
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let written = output::write_to(store, image, tags, &spec, epoch, &mut stdin);
    drop(stdin);
    let status = child.wait()?;
    // A docker load that failed (no daemon, no permission) closed the pipe early: its failure
    // is the cause, the broken pipe only what followed.
    if !status.success() {
        return Err(UserError(format!(
            "--load: `docker load` failed ({status}): its message is above"
        ))
        .into());
    }
    written?;
    Ok(())
}

fn describe(kind: &OutputKind) -> String {
    match kind {
        OutputKind::Docker { dest } => format!("docker archive {}", dest.display()),
        OutputKind::Oci { dest, tar: true } => format!("OCI archive {}", dest.display()),
        OutputKind::Oci { dest, tar: false } => format!("OCI layout {}", dest.display()),
        OutputKind::Local { dest } => format!("rootfs {}", dest.display()),
        OutputKind::Tar { dest } => format!("rootfs tarball {}", dest.display()),
    }
}

fn write_file(path: &PathBuf, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("rbuild-tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing `{}`", tmp.display()))?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing `{}`", path.display()))?;
    Ok(())
}

fn plan(_global: &GlobalArgs, args: &super::BuildArgs) -> anyhow::Result<()> {
    let settings = build_settings(args)?;
    let req = &settings.request;
    let store = open_store(_global)?;
    let registry = registry(_global)?;
    let mut bases = exec::PlanResolver::new(&store, &registry, req);
    let plan = crate::plan::plan(&req.dockerfile_text, &req.plan_options(), &mut bases)?;
    stdout_text(&crate::plan::render(&plan))?;
    Ok(())
}

fn images(global: &GlobalArgs) -> anyhow::Result<()> {
    let store = open_store(global)?;
    let rows = output::image_rows(&store)?;
    stdout_text(&output::format_images(&rows, std::time::SystemTime::now()))?;
    Ok(())
}

fn du(global: &GlobalArgs, format: HistoryFormat) -> anyhow::Result<()> {
    let store = open_store(global)?;
    let usage = store.disk_usage()?;
    match format {
        HistoryFormat::Json => stdout_line(&serde_json::to_string_pretty(&usage)?),
        HistoryFormat::Text => stdout_text(&output::format_usage(&usage)),
    }
}

/// Print to stdout; a closed pipe (`rbuild inspect X | head -1`) ends the output quietly
/// instead of panicking as `println!` does.
pub(super) fn stdout_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn stdout_line(text: &str) -> anyhow::Result<()> {
    stdout_text(&format!("{text}\n"))
}

#[cfg(test)]
mod tests {
    use super::{count, summary};

    #[test]
    fn counts_are_pluralised() {
        assert_eq!(count(0, "step"), "0 steps");
        assert_eq!(count(1, "step"), "1 step");
        assert_eq!(count(2, "cache record"), "2 cache records");
        // Regression (issue 14): "1 steps cached".
        assert_eq!(
            summary("sha256:abc", 1, 0, &[]),
            "image sha256:abc (1 step cached, 0 run)"
        );
        let tags = ["localhost:5000/app:1".parse().unwrap()];
        assert_eq!(
            summary("sha256:abc", 3, 1, &tags),
            "image sha256:abc (3 steps cached, 1 run), tagged localhost:5000/app:1"
        );
    }
}
