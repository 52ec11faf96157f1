//! What a build is asked to do: the resolved settings the CLI hands to [`super::build`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::dockerfile::instructions::NetworkMode;
use crate::image::{Platform, Reference, SourceDateEpoch};
use crate::plan::{BuildOptions, ExtraHost, Ulimit};

#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// How errors name the Dockerfile (`Dockerfile`, `app/Dockerfile.prod`, `-`).
    pub dockerfile_name: String,
    /// The Dockerfile on disk, for `<Dockerfile>.dockerignore`; None when read from stdin.
    pub dockerfile_path: Option<PathBuf>,
    pub dockerfile_text: String,
    pub tags: Vec<Reference>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub no_cache: bool,
    /// `--explain`: say why every step missed the cache, not only each stage's first.
    pub explain: bool,
    /// Re-resolve base image tags in their registry even when the store has them.
    pub pull: bool,
    pub labels: BTreeMap<String, String>,
    /// Network for RUN steps that don't say (`RUN --network=...` overrides); the plan
    /// resolves it into each step.
    pub network: NetworkMode,
    /// `--allow network.host`: `RUN --network=host` may run (BuildKit's entitlement).
    pub allow_network_host: bool,
    /// `--allow security.insecure`: `RUN --security=insecure` may run (BuildKit's
    /// entitlement).
    pub allow_insecure: bool,
    /// `--no-cache-filter`: stages whose RUN/COPY/ADD steps run whatever the cache holds.
    pub no_cache_stages: Vec<String>,
    /// `--add-host`, `--shm-size` (bytes), `--ulimit`: for every RUN step.
    pub extra_hosts: Vec<ExtraHost>,
    pub shm_size: Option<u64>,
    pub ulimits: Vec<Ulimit>,
    /// `--annotation [manifest:]K=V`: on the image manifest (kept in the store, pushed and
    /// written by outputs). Descriptor annotations travel with the outputs instead.
    pub manifest_annotations: BTreeMap<String, String>,
    /// Most processes a RUN step may have at once; None: no limit.
    pub pids_limit: Option<u32>,
    pub secrets: BTreeMap<String, SecretSource>,
    /// `--ssh ID=...`: the agents RUN --mount=type=ssh reaches, by id.
    pub ssh: BTreeMap<String, SshSource>,
    pub build_contexts: BTreeMap<String, NamedContext>,
    pub platform: Platform,
    pub source_date_epoch: Option<SourceDateEpoch>,
    /// `--cache-from`: where else to look for a step's key, in order (the first that has
    /// it wins); `--cache-to`: where to export the build's steps.
    pub cache_from: Vec<crate::cache::CacheImport>,
    pub cache_to: Vec<crate::cache::CacheExport>,
    /// Progress labels name each stage's platform (`[linux/arm64 build 2/4]`): set when a
    /// build is for several platforms or a foreign one.
    pub platform_labels: bool,
    /// The number of the build's first step (`#N`): a multi-platform build's later passes
    /// go on from where the previous one stopped.
    pub first_step: super::StepId,
    /// Where step numbers come from when other passes of a multi-platform build run at the
    /// same time (so numbers never collide); None: this build's own, from `first_step`.
    pub step_counter: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

#[derive(Debug, Clone)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// What `--ssh ID=...` forwards (buildx's sshprovider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshSource {
    /// An agent's socket: `ID=SOCKET`, or `$SSH_AUTH_SOCK` when no path is given.
    Socket(PathBuf),
    /// Private key files, served by an agent rbuild starts for the step.
    Keys(Vec<PathBuf>),
}

/// `--build-context NAME=...`.
#[derive(Debug, Clone)]
pub enum NamedContext {
    Dir(PathBuf),
    /// `docker-image://REF`.
    Image(String),
    /// `oci-layout://DIR[:TAG]`: an image in an OCI layout on disk.
    OciLayout {
        dir: PathBuf,
        tag: Option<String>,
    },
}

impl BuildRequest {
    /// What the planner sees of this request.
    pub fn plan_options(&self) -> BuildOptions {
        BuildOptions {
            dockerfile_name: self.dockerfile_name.clone(),
            build_args: self.build_args.clone(),
            target: self.target.clone(),
            platform: self.platform.clone(),
            source_date_epoch: self.source_date_epoch,
            named_contexts: self.build_contexts.keys().cloned().collect(),
            network: self.network,
            extra_hosts: self.extra_hosts.clone(),
            shm_size: self.shm_size,
            ulimits: self.ulimits.clone(),
            no_cache_stages: self.no_cache_stages.clone(),
        }
    }
}
