//! argv as typed, before any checking beyond syntax (the "low" arguments).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Build an image from a Dockerfile, without a daemon.
#[derive(Debug, Parser)]
#[command(
    name = "rbuild",
    version,
    about = "Build an image from a Dockerfile, without a daemon",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  rbuild -t app:1 .\n  rbuild -f Dockerfile -t app:1 -o type=docker,dest=app.tar .\n  rbuild -t localhost:5000/app:1 --push .\n  rbuild images"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub build: BuildArgs,
}

impl Cli {
    /// Parse argv. The store options may also come before a subcommand
    /// (`rbuild --root DIR images`), which clap alone reads as a build context.
    pub fn parse_argv() -> Cli {
        Cli::parse_from(hoist_globals(std::env::args_os().collect()))
    }
}

/// Options of [`GlobalArgs`] that take a value.
const GLOBAL_OPTIONS: [&str; 2] = ["--root", "--insecure-registry"];

/// `rbuild --root DIR pull REF` -> `rbuild pull --root DIR REF`: when only global options
/// precede a subcommand name, move them after it. Anything else is left alone.
fn hoist_globals(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut i = 1;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        if GLOBAL_OPTIONS.contains(&arg) {
            i += 2;
        } else if GLOBAL_OPTIONS.iter().any(|o| {
            arg.strip_prefix(o)
                .is_some_and(|rest| rest.starts_with('='))
        }) {
            i += 1;
        } else {
            break;
        }
    }
    let Some(name) = args.get(i).and_then(|a| a.to_str()) else {
        return args;
    };
    let cmd = <Cli as clap::CommandFactory>::command();
    if i == 1 || i >= args.len() || cmd.find_subcommand(name).is_none() {
        return args;
    }
    let mut out = vec![args[0].clone(), args[i].clone()];
    out.extend_from_slice(&args[1..i]);
    out.extend_from_slice(&args[i + 1..]);
    out
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Store directory (default /var/lib/rbuild as root, else $XDG_DATA_HOME/rbuild)
    #[arg(long, global = true, env = "RBUILD_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Registry reachable over plain HTTP (loopback registries always are)
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (the default command)
    Build(BuildArgs),
    /// Print the resolved build plan: stages, steps, expanded instructions, cache keys
    Plan(PlanArgs),
    /// Check the Dockerfile against the build checks without building (docs/checks/);
    /// exit 1 when a rule at error level fires
    Check(CheckArgs),
    /// List images in the store
    Images,
    /// Remove image tags from the store
    Rmi {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Remove layers, blobs and cache records no tag uses, and empty tmp/.trash
    Prune {
        /// Also remove the whole build cache, RUN cache mounts included
        #[arg(long, short)]
        all: bool,
        /// Remove least recently used cache records until the store is at most SIZE
        /// (`10GB`, `512MB`: binary units, as docker's)
        #[arg(long, visible_alias = "reserved-space", value_name = "SIZE")]
        keep_storage: Option<String>,
        /// `until=DURATION`: only cache records not used for DURATION (`24h`, `1h30m`)
        #[arg(long, value_name = "FILTER")]
        filter: Vec<String>,
    },
    /// Pull an image from a registry into the store
    Pull { reference: String },
    /// Push an image from the store to a registry
    Push {
        /// Image in the store
        reference: String,
        /// Destination reference (default: the same name)
        destination: Option<String>,
    },
    /// Write an image from the store as a docker or OCI archive
    Save {
        reference: String,
        /// Output file
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = SaveFormat::Docker)]
        format: SaveFormat,
    },
    /// Print an image's manifest and config as JSON (a multi-platform image: its index)
    Inspect {
        reference: String,
        /// Of a multi-platform image, the image of this platform (`linux/arm64`)
        #[arg(long)]
        platform: Option<String>,
    },
    /// Show what each layer of an image costs: size, files added/changed/deleted, bytes a
    /// later layer deletes or overwrites, the largest files (docs/explain.md)
    History {
        /// A tag or id of an image in the store
        #[arg(value_name = "IMAGE")]
        reference: String,
        #[arg(long, value_enum, default_value_t)]
        format: HistoryFormat,
        /// Of a multi-platform image, the image of this platform (default: the host's)
        #[arg(long)]
        platform: Option<String>,
    },
    /// Show the store's disk usage by kind: images, layers, blobs, cache records, cache
    /// mounts, trash
    Du {
        #[arg(long, value_enum, default_value_t)]
        format: HistoryFormat,
    },
    /// Create a base image from a rootfs tarball (like `docker import`)
    Import {
        /// Rootfs tarball (.tar, .tar.gz, .tar.zst)
        tarball: PathBuf,
        /// Name for the image, e.g. busybox:latest
        reference: String,
        /// Dockerfile instruction applied to the config (ENV, CMD, ENTRYPOINT, WORKDIR, USER, LABEL...)
        #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
        changes: Vec<String>,
    },
    /// Show which platforms RUN steps can run for here (natively or through qemu-user's
    /// binfmt_misc handlers); `--install` registers Debian's qemu-user-static handlers
    Binfmt {
        /// Register the handlers of /usr/lib/binfmt.d/qemu-*.conf that are missing (as root)
        #[arg(long)]
        install: bool,
    },
    /// Print how rbuild runs: as root, or rootless with a subordinate id range or a single id
    Info,
    #[command(name = "__sandbox-helper", hide = true)]
    SandboxHelper,
}

/// `rbuild history --format` and `rbuild du --format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum HistoryFormat {
    /// A table (for history: then the largest files, the wasted bytes and a summary)
    #[default]
    Text,
    /// One JSON document (history: schema in docs/explain.md; du: a list of {kind, count,
    /// bytes})
    Json,
}

/// `rbuild check --format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    /// Located warnings with the Dockerfile's lines, as builds print them
    #[default]
    Text,
    /// One JSON document (schema in docs/checks/README.md)
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SaveFormat {
    Docker,
    Oci,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    #[default]
    Auto,
    Tty,
    Plain,
    Quiet,
}

#[derive(Debug, Args, Clone, Default)]
pub struct BuildArgs {
    /// Build context directory
    #[arg(value_name = "CONTEXT")]
    pub context: Option<PathBuf>,
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile; `-` reads stdin)
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Name and optionally a tag, `name:tag` (repeatable)
    #[arg(short, long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Set a build-time variable, `KEY=VALUE` or `KEY` (taken from the environment)
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// Build the named stage (and what it needs) instead of the last one
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Do not use the cache
    #[arg(long)]
    pub no_cache: bool,
    /// Say why every step that missed the cache missed it (by default: each stage's first)
    #[arg(long)]
    pub explain: bool,
    /// Always look up base images in their registry
    #[arg(long)]
    pub pull: bool,
    /// Set a label on the image, `KEY=VALUE`
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Network for RUN steps: default (a namespace of the build's own, with outside access
    /// through slirp4netns), host or none
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,
    /// Allow an entitlement: `network.host` (for `RUN --network=host`), `security.insecure`
    /// (for `RUN --security=insecure`: every capability, no seccomp, /sys writable)
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Add a line to /etc/hosts of RUN steps, `HOST:IP` or `HOST=IP` (repeatable)
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,
    /// Size of /dev/shm in RUN steps, e.g. `128m`, `1g` (default 64m)
    #[arg(long, value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Resource limit for RUN steps, `TYPE=SOFT[:HARD]`, e.g. `nofile=1024:2048` (repeatable)
    #[arg(long = "ulimit", value_name = "TYPE=SOFT[:HARD]")]
    pub ulimits: Vec<String>,
    /// Export the build cache: `type=registry,ref=REF[,mode=min|max][,compression=gzip|zstd]
    /// [,ignore-error=true]` or `type=local,dest=DIR[,...]` (repeatable)
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Import a build cache: `type=registry,ref=REF`, `type=local,src=DIR` or `REF`
    /// (repeatable; the first that has a step wins)
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Do not use the cache for the RUN, COPY and ADD steps of these stages
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Annotation for the image, `[TYPE[,TYPE][\[PLATFORM\]]:]KEY=VALUE`; TYPE is manifest (the
    /// default) or manifest-descriptor (repeatable)
    #[arg(long = "annotation", value_name = "[TYPE:]KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Attach a SLSA provenance attestation: `true`, `false`, or
    /// `mode=min|max[,version=v1|v0.2][,builder-id=ID][,reproducible=true]`
    #[arg(long, value_name = "VALUE")]
    pub provenance: Option<String>,
    /// Attestation, `type=provenance[,mode=..]` (as `--provenance`)
    #[arg(long, value_name = "SPEC")]
    pub attest: Vec<String>,
    /// What to do: `build` (the default), `targets` (list the stages), `outline` (the build
    /// args and secrets the target uses); `,format=json` prints JSON
    #[arg(long, value_name = "METHOD")]
    pub call: Option<String>,
    /// Most processes a RUN step may have at once (0: no limit)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4096,
        allow_negative_numbers = true
    )]
    pub pids_limit: i64,
    /// Secret for RUN --mount=type=secret: `id=ID,src=PATH` or `id=ID,env=VAR`
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// SSH agent for RUN --mount=type=ssh: `default` ($SSH_AUTH_SOCK), `ID=SOCKET` or
    /// `ID=KEYFILE[,KEYFILE]`
    #[arg(long = "ssh", value_name = "ID[=SOCKET|KEYFILE,..]")]
    pub ssh: Vec<String>,
    /// Extra named context: `NAME=DIR`, `NAME=docker-image://REF`, `NAME=oci-layout://DIR[:TAG]`
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// Target platforms, comma-separated (`linux/amd64,linux/arm64`); foreign ones run
    /// through qemu-user (see `rbuild binfmt`)
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Write the image id to the file
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Write build result metadata (JSON) to the file
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Progress output: auto, tty, plain or quiet
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print only the image id
    #[arg(short, long)]
    pub quiet: bool,
    /// Push the image to its registry after the build
    #[arg(long)]
    pub push: bool,
    /// Stream the image into `docker load`
    #[arg(long)]
    pub load: bool,
    /// Output: `type=docker|oci|local|tar,dest=PATH`; for oci `tar=false`; for docker and oci
    /// `compression=gzip|zstd|uncompressed`, `compression-level=N`. Or a path (`F.tar`: docker
    /// archive, `DIR`: rootfs)
    #[arg(short, long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Run the build checks only, do not build (as `rbuild check`)
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub build: BuildArgs,
    /// Output format: text or json
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    pub format: CheckFormat,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub build: BuildArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let argv = std::iter::once("rbuild").chain(args.iter().copied());
        Cli::try_parse_from(hoist_globals(argv.map(Into::into).collect())).unwrap()
    }

    #[test]
    fn store_options_may_come_before_a_subcommand() {
        for args in [
            &["--root", "/s", "pull", "busybox"][..],
            &["--root=/s", "pull", "busybox"],
            &["pull", "--root", "/s", "busybox"],
            &[
                "--insecure-registry",
                "r:5000",
                "--root",
                "/s",
                "pull",
                "busybox",
            ],
        ] {
            let cli = parse(args);
            assert_eq!(cli.global.root.as_deref(), Some(std::path::Path::new("/s")));
            assert!(
                matches!(&cli.command, Some(Command::Pull { reference }) if reference == "busybox"),
                "{args:?}: {:?}",
                cli.command
            );
        }
    }

    #[test]
    fn a_build_with_store_options_stays_a_build() {
        let cli = parse(&["--root", "/s", "-t", "app", "ctx"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.global.root.as_deref(), Some(std::path::Path::new("/s")));
        // A lone global option's value is never taken for a subcommand.
        let cli = parse(&["--root", "images"]);
        assert!(cli.command.is_none());
    }
}
