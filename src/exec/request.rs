//! What a build is asked to do: the resolved settings the CLI hands to [`super::build`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::dockerfile::instructions::NetworkMode;
use crate::image::{Platform, Reference, SourceDateEpoch};
use crate::plan::BuildOptions;

#[derive(Debug)]
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
    /// Re-resolve base image tags in their registry even when the store has them.
    pub pull: bool,
    pub labels: BTreeMap<String, String>,
    /// Network for RUN steps that don't say (`RUN --network=...` overrides); the plan
    /// resolves it into each step.
    pub network: NetworkMode,
    /// `--allow network.host`: `RUN --network=host` may run (BuildKit's entitlement).
    pub allow_network_host: bool,
    /// Most processes a RUN step may have at once; None: no limit.
    pub pids_limit: Option<u32>,
    pub secrets: BTreeMap<String, SecretSource>,
    pub build_contexts: BTreeMap<String, NamedContext>,
    pub platform: Platform,
    pub source_date_epoch: Option<SourceDateEpoch>,
}

#[derive(Debug, Clone)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
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
        }
    }
}
