//! `--provenance` / `--attest type=provenance`: a SLSA provenance predicate in an in-toto
//! statement, and the attestation manifest that carries it in an image index, as BuildKit
//! makes them (solver/llbsolver/provenance/predicate.go for the predicate,
//! exporter/containerimage/writer.go `commitAttestationsManifest` for the manifest,
//! docs/attestations/attestation-storage.md for its place in the index).
//!
//! The predicate is the same for every output of a platform's image but its subject is not:
//! an OCI layout with gzip layers and a registry push can give one image two manifest
//! digests. So the build gathers [`BuildFacts`] once and each output makes its statement
//! for the manifest it writes ([`Provenance::attestation`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::OutputError;
use crate::image::{canonical_json, media, Descriptor, Digest, Platform, Reference};

/// The in-toto statement type BuildKit writes (`intoto.StatementInTotoV1`).
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// Media type of an attestation layer (`intoto.PayloadType`).
pub const IN_TOTO_MEDIA_TYPE: &str = "application/vnd.in-toto+json";
/// Layer annotation naming the statement's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "in-toto.io/predicate-type";
/// Index-entry annotations of an attestation manifest (util/attestation/types.go).
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
pub const REFERENCE_DIGEST_ANNOTATION: &str = "vnd.docker.reference.digest";
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";

const BUILD_TYPE_V1: &str =
    "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md";
const BUILD_TYPE_V02: &str = "https://mobyproject.org/buildkit@v1";

/// How much the predicate tells (BuildKit's `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Timestamps, frontend, materials; no build arg values, secret or ssh ids, or layers.
    Min,
    /// All of min plus build args, secret and ssh ids, the Dockerfile and layers per step.
    Max,
}

/// The SLSA provenance schema written (BuildKit's `version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlsaVersion {
    V1,
    V02,
}

impl SlsaVersion {
    pub fn predicate_type(self) -> &'static str {
        match self {
            SlsaVersion::V1 => "https://slsa.dev/provenance/v1",
            SlsaVersion::V02 => "https://slsa.dev/provenance/v0.2",
        }
    }
}

/// A provenance attestation as asked for on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenanceSpec {
    pub mode: Mode,
    pub version: SlsaVersion,
    /// `builder-id=`: runDetails.builder.id (BuildKit leaves it empty otherwise).
    pub builder_id: String,
    /// `reproducible=true`: the build is declared reproducible.
    pub reproducible: bool,
}

impl Default for ProvenanceSpec {
    /// buildx's `--provenance true`: mode=min (docs.docker.com: "mode=min (default)"), and
    /// current BuildKit's default schema, SLSA v1 (frontend/attestations/parse.go).
    fn default() -> Self {
        ProvenanceSpec {
            mode: Mode::Min,
            version: SlsaVersion::V1,
            builder_id: String::new(),
            reproducible: false,
        }
    }
}

/// `--provenance VALUE` as buildx reads it: a boolean (`true`, `false`, `1`, `0`...), or
/// `mode=min|max[,version=v0.2|v1][,builder-id=ID][,reproducible=BOOL][,disabled=BOOL]`.
/// `None`: no attestation.
pub fn parse_provenance(value: &str) -> Result<Option<ProvenanceSpec>, String> {
    if let Some(on) = parse_bool(value) {
        return Ok(on.then(ProvenanceSpec::default));
    }
    parse_fields(value, false)
}

/// `--attest type=provenance,...`; other attestation types are refused.
pub fn parse_attest(value: &str) -> Result<Option<ProvenanceSpec>, String> {
    parse_fields(value, true)
}

fn parse_bool(v: &str) -> Option<bool> {
    // Go's strconv.ParseBool, which buildx uses.
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn parse_fields(value: &str, attest: bool) -> Result<Option<ProvenanceSpec>, String> {
    let mut spec = ProvenanceSpec::default();
    let mut disabled = false;
    let mut typed = false;
    for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("`{field}` is not key=value (try `mode=max`)"))?;
        let bool_of =
            |v: &str| parse_bool(v).ok_or_else(|| format!("{k} must be true or false, not `{v}`"));
        match k {
            "type" if attest => {
                if v != "provenance" {
                    return Err(format!(
                        "attestation type `{v}` is not supported (rbuild attaches provenance \
                         only: `type=provenance`)"
                    ));
                }
                typed = true;
            }
            "mode" => {
                spec.mode = match v {
                    "min" => Mode::Min,
                    // BuildKit takes `full` as `max`.
                    "max" | "full" => Mode::Max,
                    _ => return Err(format!("mode must be min or max, not `{v}`")),
                }
            }
            "version" => {
                spec.version = match v {
                    "v1" => SlsaVersion::V1,
                    "v0.2" => SlsaVersion::V02,
                    _ => return Err(format!("version must be v0.2 or v1, not `{v}`")),
                }
            }
            "builder-id" => spec.builder_id = v.to_string(),
            "reproducible" => spec.reproducible = bool_of(v)?,
            "disabled" => disabled = bool_of(v)?,
            _ => {
                return Err(format!(
                    "unknown option `{k}` (mode, version, builder-id, reproducible, disabled)"
                ))
            }
        }
    }
    if attest && !typed {
        return Err("missing `type=provenance`".to_string());
    }
    Ok((!disabled).then_some(spec))
}

/// What the build used from outside its context, as BuildKit's provenance capture records
/// it: images (by platform), git repositories at a commit, URLs with their content digest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Materials {
    pub images: Vec<ImageMaterial>,
    /// (repository URL as written, commit).
    pub git: Vec<(String, String)>,
    /// (URL, digest of its content).
    pub http: Vec<(String, Digest)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMaterial {
    /// The reference as resolved (`docker.io/library/busybox:latest`).
    pub reference: Reference,
    pub platform: Platform,
    /// The platform manifest's digest.
    pub digest: Digest,
    /// From an `oci-layout://` build context: a `pkg:oci` purl, as BuildKit's local images.
    pub local: bool,
}

impl Materials {
    /// A git repository (as written in the Dockerfile) at `commit`, once.
    pub fn add_git(&mut self, url: &str, commit: &str) {
        let g = (redact_credentials(url), commit.to_string());
        if !self.git.contains(&g) {
            self.git.push(g);
        }
    }

    /// A URL whose content had `digest`, once.
    pub fn add_http(&mut self, url: &str, digest: &Digest) {
        let h = (redact_credentials(url), digest.clone());
        if !self.http.contains(&h) {
            self.http.push(h);
        }
    }

    /// A base or `--from` image, once.
    pub fn add_image(&mut self, image: ImageMaterial) {
        if !self.images.contains(&image) {
            self.images.push(image);
        }
    }

    /// Add what `other` has that this lacks (forked stage contexts, several passes).
    pub fn merge(&mut self, other: Materials) {
        for i in other.images {
            self.add_image(i);
        }
        for (url, commit) in other.git {
            self.add_git(&url, &commit);
        }
        for (url, digest) in other.http {
            self.add_http(&url, &digest);
        }
    }

    /// `resolvedDependencies` (v1) / `materials` (v0.2), in BuildKit's order: images, git,
    /// http.
    fn descriptors(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for i in &self.images {
            let kind = if i.local { "oci" } else { "docker" };
            out.push(json!({
                "uri": purl(kind, &i.reference, Some(&i.platform)),
                "digest": {"sha256": i.digest.hex()},
            }));
        }
        for (url, commit) in &self.git {
            // A 64-digit commit is a sha256 repository's.
            let algo = if commit.len() == 64 { "sha256" } else { "sha1" };
            out.push(json!({"uri": url, "digest": {algo: commit}}));
        }
        for (url, digest) in &self.http {
            out.push(json!({"uri": url, "digest": {"sha256": digest.hex()}}));
        }
        out
    }
}

/// `scheme://user:password@host/...` with the password replaced, as BuildKit's
/// urlutil.RedactCredentials: a token in a source URL must not reach the attestation.
pub fn redact_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let redacted = if userinfo.contains(':') {
                format!("{user}:xxxxx")
            } else {
                // A lone user part is often the token itself (`https://TOKEN@host`).
                "xxxxx".to_string()
            };
            format!("{scheme}://{redacted}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// A package URL for an image reference, as BuildKit's util/purl `RefToPURL`:
/// `pkg:docker/ns/name@tag?digest=sha256:..&platform=linux%2Famd64` with docker's familiar
/// name (`busybox`, `localhost:5000/app`).
pub fn purl(kind: &str, reference: &Reference, platform: Option<&Platform>) -> String {
    let mut bare = reference.clone();
    bare.tag = None;
    bare.digest = None;
    let name = bare.familiar();
    let mut out = format!("pkg:{kind}/{name}");
    // A reference with only a digest has no version; a tagged or bare one gets its tag.
    if reference.tag.is_some() || reference.digest.is_none() {
        out.push('@');
        out.push_str(reference.tag_or_latest());
    }
    let mut qualifiers = Vec::new();
    if let Some(d) = &reference.digest {
        qualifiers.push(format!("digest={}", d.to_string().replace(':', "%3A")));
    }
    if let Some(p) = platform {
        qualifiers.push(format!("platform={}", p.to_spec().replace('/', "%2F")));
    }
    if !qualifiers.is_empty() {
        out.push('?');
        out.push_str(&qualifiers.join("&"));
    }
    out
}

/// What one platform's build knew that its provenance records; gathered by the executor
/// from the plan and the steps it ran (never fetched again).
#[derive(Clone, Debug)]
pub struct BuildFacts {
    /// The frontend request's options as buildx sends them (`filename`, `target`,
    /// `build-arg:K`, `label:K`, `context:NAME`).
    pub args: BTreeMap<String, String>,
    /// Secret and ssh ids the built stages mount, with whether they are optional; the
    /// values are never part of the facts.
    pub secrets: Vec<(String, bool)>,
    pub ssh: Vec<(String, bool)>,
    /// Local sources: `context`, `dockerfile`, named context directories.
    pub locals: Vec<String>,
    pub materials: Materials,
    pub dockerfile_name: String,
    pub dockerfile_text: String,
    /// Whether a RUN step had a network (BuildKit: not hermetic then).
    pub network: bool,
    /// Steps of the target stage that made each image layer (`#N`), none for a base layer.
    pub layer_steps: Vec<Option<usize>>,
    /// Every step the build ran or took from the cache: `#N` and the instruction.
    pub steps: Vec<(usize, String)>,
    pub started: SystemTime,
    pub finished: SystemTime,
    pub invocation_id: String,
}

/// A build's provenance for one platform image: the spec and the facts.
#[derive(Clone, Debug)]
pub struct Provenance {
    pub spec: ProvenanceSpec,
    pub facts: BuildFacts,
}

/// The blobs of an attestation manifest and the index entry that points at it.
pub struct Attestation {
    /// The index entry: platform unknown/unknown, the reference annotations.
    pub descriptor: Descriptor,
    pub manifest: Vec<u8>,
    pub config: (Digest, Vec<u8>),
    pub statement: (Digest, Vec<u8>),
}

impl Provenance {
    /// The predicate, as BuildKit's `ProvenanceCreator.Predicate` gives it for
    /// `image_manifest` (the layers of max mode are the ones this output writes).
    pub fn predicate(&self, image_layers: &[Descriptor]) -> Value {
        let f = &self.facts;
        let max = self.spec.mode == Mode::Max;
        let mut args: BTreeMap<String, String> = f.args.clone();
        let mut request_complete = true;
        if !max {
            // scrubMinRequest: build args and labels may carry anything.
            let before = args.len();
            args.retain(|k, _| !k.starts_with("build-arg:") && !k.starts_with("label:"));
            request_complete = args.len() == before;
        }
        // RequestProvenance: `filename` becomes configSource.path.
        let path = args.remove("filename");
        let mut request = Map::new();
        request.insert("frontend".into(), json!("dockerfile.v0"));
        if !args.is_empty() {
            request.insert("args".into(), json!(args));
        }
        let ids = |list: &[(String, bool)]| -> Value {
            list.iter()
                .map(|(id, optional)| match optional {
                    true => json!({"id": id, "optional": true}),
                    false => json!({"id": id}),
                })
                .collect()
        };
        if max && !f.secrets.is_empty() {
            request.insert("secrets".into(), ids(&f.secrets));
        }
        if max && !f.ssh.is_empty() {
            request.insert("ssh".into(), ids(&f.ssh));
        }
        let locals: Vec<Value> = f.locals.iter().map(|n| json!({"name": n})).collect();
        if !locals.is_empty() {
            request.insert("locals".into(), json!(locals));
        }
        let mut config_source = Map::new();
        if let Some(p) = path {
            config_source.insert("path".into(), json!(p));
        }
        // A local context is not a resolved dependency: BuildKit calls the list incomplete.
        let materials_complete = f.locals.is_empty();
        let mut buildkit_metadata = Map::new();
        let mut build_config = None;
        if max {
            let steps: Vec<Value> = f
                .steps
                .iter()
                .map(|(id, text)| json!({"id": format!("step{id}"), "op": {"rbuild": text}}))
                .collect();
            build_config = Some(json!({"llbDefinition": steps}));
            let data = base64::engine::general_purpose::STANDARD.encode(&f.dockerfile_text);
            buildkit_metadata.insert(
                "source".into(),
                json!({"infos": [{
                    "filename": f.dockerfile_name,
                    "language": "Dockerfile",
                    "data": data,
                }]}),
            );
            // Per step that made a layer, the image's layer chain up to it, as this output
            // writes the layers (BuildKit: `stepN:0` -> [[descriptors]]).
            let mut layers = Map::new();
            for (i, step) in f.layer_steps.iter().enumerate() {
                if let (Some(id), Some(_)) = (step, image_layers.get(i)) {
                    let chain: Vec<Value> = image_layers[..=i]
                        .iter()
                        .map(|d| json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size}))
                        .collect();
                    layers.insert(format!("step{id}:0"), json!([chain]));
                }
            }
            if !layers.is_empty() {
                buildkit_metadata.insert("layers".into(), Value::Object(layers));
            }
        }
        let started = rfc3339(f.started);
        let finished = rfc3339(f.finished);
        let hermetic = materials_complete && !f.network;
        let materials = f.materials.descriptors();
        let platform = Platform::host().to_spec();
        match self.spec.version {
            SlsaVersion::V1 => {
                let mut internal = Map::new();
                internal.insert("builderPlatform".into(), json!(platform));
                if let Some(bc) = build_config {
                    internal.insert("buildConfig".into(), bc);
                }
                let mut definition = Map::new();
                definition.insert("buildType".into(), json!(BUILD_TYPE_V1));
                definition.insert(
                    "externalParameters".into(),
                    json!({"configSource": config_source, "request": request}),
                );
                definition.insert("internalParameters".into(), Value::Object(internal));
                if !materials.is_empty() {
                    definition.insert("resolvedDependencies".into(), json!(materials));
                }
                let mut metadata = Map::new();
                metadata.insert("invocationId".into(), json!(f.invocation_id));
                metadata.insert("startedOn".into(), json!(started));
                metadata.insert("finishedOn".into(), json!(finished));
                metadata.insert("buildkit_metadata".into(), Value::Object(buildkit_metadata));
                metadata.insert(
                    "buildkit_completeness".into(),
                    json!({"request": request_complete, "resolvedDependencies": materials_complete}),
                );
                if hermetic {
                    metadata.insert("buildkit_hermetic".into(), json!(true));
                }
                if self.spec.reproducible {
                    metadata.insert("buildkit_reproducible".into(), json!(true));
                }
                json!({
                    "buildDefinition": definition,
                    "runDetails": {
                        "builder": {"id": self.spec.builder_id},
                        "metadata": metadata,
                    },
                })
            }
            SlsaVersion::V02 => {
                let mut predicate = Map::new();
                predicate.insert("builder".into(), json!({"id": self.spec.builder_id}));
                predicate.insert("buildType".into(), json!(BUILD_TYPE_V02));
                if !materials.is_empty() {
                    predicate.insert("materials".into(), json!(materials));
                }
                let mut source = Map::new();
                if let Some(p) = config_source.remove("path") {
                    source.insert("entryPoint".into(), p);
                }
                predicate.insert(
                    "invocation".into(),
                    json!({
                        "configSource": source,
                        "parameters": request,
                        "environment": {"platform": platform},
                    }),
                );
                if let Some(bc) = build_config {
                    predicate.insert("buildConfig".into(), bc);
                }
                let mut metadata = Map::new();
                metadata.insert("buildInvocationID".into(), json!(f.invocation_id));
                metadata.insert("buildStartedOn".into(), json!(started));
                metadata.insert("buildFinishedOn".into(), json!(finished));
                metadata.insert(
                    "completeness".into(),
                    json!({
                        "parameters": request_complete,
                        "environment": true,
                        "materials": materials_complete,
                    }),
                );
                metadata.insert("reproducible".into(), json!(self.spec.reproducible));
                metadata.insert(
                    "https://mobyproject.org/buildkit@v1#metadata".into(),
                    Value::Object(buildkit_metadata),
                );
                if hermetic {
                    metadata.insert(
                        "https://mobyproject.org/buildkit@v1#hermetic".into(),
                        json!(true),
                    );
                }
                predicate.insert("metadata".into(), Value::Object(metadata));
                Value::Object(predicate)
            }
        }
    }

    /// The in-toto statement about the image whose manifest is `image` (its layers
    /// `image_layers`), named after each of `tags` as BuildKit's exporter names its subjects
    /// (a `pkg:docker` purl per image name, with the platform).
    pub fn statement(
        &self,
        image: &Descriptor,
        image_layers: &[Descriptor],
        platform: &Platform,
        tags: &[Reference],
    ) -> Vec<u8> {
        let mut subjects: Vec<(String, Digest)> = tags
            .iter()
            .map(|t| (purl("docker", t, Some(platform)), image.digest.clone()))
            .collect();
        if subjects.is_empty() {
            // BuildKit writes no subject for an unnamed image; a statement about nothing
            // cannot be verified, so rbuild names it `_`, BuildKit's name for "self".
            subjects.push(("_".to_string(), image.digest.clone()));
        }
        self.statement_about(&subjects, image_layers)
    }

    /// The statement with `subjects` (name, sha256 digest).
    fn statement_about(
        &self,
        subjects: &[(String, Digest)],
        image_layers: &[Descriptor],
    ) -> Vec<u8> {
        let subject: Vec<Value> = subjects
            .iter()
            .map(|(name, d)| json!({"name": name, "digest": {"sha256": d.hex()}}))
            .collect();
        canonical_json(&json!({
            "_type": STATEMENT_TYPE,
            "predicateType": self.spec.version.predicate_type(),
            "subject": subject,
            "predicate": self.predicate(image_layers),
        }))
    }

    /// The attestation manifest for the image `image` (with layers `image_layers`): one
    /// in-toto layer, a config with platform unknown/unknown whose diff_ids name it, and the
    /// index entry BuildKit gives it (platform unknown/unknown, reference type and digest).
    pub fn attestation(
        &self,
        image: &Descriptor,
        image_layers: &[Descriptor],
        platform: &Platform,
        tags: &[Reference],
    ) -> Attestation {
        let statement = self.statement(image, image_layers, platform, tags);
        let statement_digest = Digest::of(&statement);
        let mut layer = Descriptor::new(
            IN_TOTO_MEDIA_TYPE,
            statement_digest.clone(),
            statement.len() as u64,
        );
        layer.annotations = Some(BTreeMap::from([(
            PREDICATE_TYPE_ANNOTATION.to_string(),
            self.spec.version.predicate_type().to_string(),
        )]));
        let config = canonical_json(&json!({
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [statement_digest]},
        }));
        let config_digest = Digest::of(&config);
        let manifest = canonical_json(&crate::image::Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            config: Descriptor::new(
                media::OCI_CONFIG,
                config_digest.clone(),
                config.len() as u64,
            ),
            layers: vec![layer],
            annotations: None,
        });
        let mut descriptor = Descriptor::new(
            media::OCI_MANIFEST,
            Digest::of(&manifest),
            manifest.len() as u64,
        );
        descriptor.platform = Some(Platform {
            architecture: "unknown".to_string(),
            os: "unknown".to_string(),
            variant: None,
            os_version: None,
        });
        descriptor.annotations = Some(BTreeMap::from([
            (
                REFERENCE_DIGEST_ANNOTATION.to_string(),
                image.digest.to_string(),
            ),
            (
                REFERENCE_TYPE_ANNOTATION.to_string(),
                ATTESTATION_MANIFEST.to_string(),
            ),
        ]));
        Attestation {
            descriptor,
            manifest,
            config: (config_digest, config),
            statement: (statement_digest, statement),
        }
    }
}

/// `provenance.json` in the root of a `local` output, as BuildKit's local exporter writes
/// it: a statement whose subjects are the output's regular files (path relative to `root`,
/// sha256), mode 0600. `image_layers` are the image's layers as the store keeps them.
pub fn write_beside_files(
    p: &Provenance,
    image_layers: &[Descriptor],
    root: &Path,
) -> Result<(), OutputError> {
    let mut subjects = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let listing = std::fs::read_dir(&dir).map_err(OutputError::io("listing", &dir))?;
        for e in listing {
            let e = e.map_err(OutputError::io("listing", &dir))?;
            let path = e.path();
            let kind = e.file_type().map_err(OutputError::io("reading", &path))?;
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                let mut f =
                    std::fs::File::open(&path).map_err(OutputError::io("reading", &path))?;
                let mut hashed = crate::image::Sha256Writer::new(std::io::sink());
                std::io::copy(&mut f, &mut hashed).map_err(OutputError::io("reading", &path))?;
                let (digest, _, _) = hashed.finish();
                let name = path.strip_prefix(root).unwrap_or(&path);
                subjects.push((name.to_string_lossy().into_owned(), digest));
            }
        }
    }
    subjects.sort();
    let dest = root.join("provenance.json");
    let bytes = p.statement_about(&subjects, image_layers);
    std::fs::write(&dest, bytes).map_err(OutputError::io("writing", &dest))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))
        .map_err(OutputError::io("setting permissions of", &dest))
}

/// RFC 3339 in UTC with nanoseconds, as Go's time.Time marshals.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// A random id for the build (BuildKit's job id), from the kernel's random source.
pub fn invocation_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> BuildFacts {
        BuildFacts {
            args: BTreeMap::from([
                ("filename".to_string(), "Dockerfile".to_string()),
                ("build-arg:TOKEN_HINT".to_string(), "abc".to_string()),
                ("target".to_string(), "app".to_string()),
            ]),
            secrets: vec![("token".to_string(), false)],
            ssh: vec![("default".to_string(), true)],
            locals: vec!["context".to_string(), "dockerfile".to_string()],
            materials: Materials {
                images: vec![ImageMaterial {
                    reference: "localhost:5000/busybox:latest".parse().unwrap(),
                    platform: Platform::host(),
                    digest: Digest::of(b"m"),
                    local: false,
                }],
                git: vec![("http://127.0.0.1:1/r.git#main".to_string(), "a".repeat(40))],
                http: vec![("http://127.0.0.1:1/f".to_string(), Digest::of(b"f"))],
            },
            dockerfile_name: "Dockerfile".to_string(),
            dockerfile_text: "FROM busybox\n".to_string(),
            network: true,
            layer_steps: vec![None, Some(3)],
            steps: vec![(3, "RUN true".to_string())],
            started: SystemTime::UNIX_EPOCH,
            finished: SystemTime::UNIX_EPOCH,
            invocation_id: "x".to_string(),
        }
    }

    #[test]
    fn flags_parse_as_buildx_reads_them_and_bad_values_say_which() {
        assert_eq!(parse_provenance("false").unwrap(), None);
        assert_eq!(
            parse_provenance("true").unwrap(),
            Some(ProvenanceSpec::default())
        );
        let max = parse_provenance("mode=max,version=v0.2").unwrap().unwrap();
        assert_eq!((max.mode, max.version), (Mode::Max, SlsaVersion::V02));
        assert_eq!(parse_provenance("mode=max,disabled=true").unwrap(), None);
        let a = parse_attest("type=provenance,mode=max,builder-id=ci")
            .unwrap()
            .unwrap();
        assert_eq!((a.mode, a.builder_id.as_str()), (Mode::Max, "ci"));
        let err = |r: Result<Option<ProvenanceSpec>, String>| r.unwrap_err();
        assert!(err(parse_provenance("mode=mid")).contains("mode must be min or max, not `mid`"));
        assert!(err(parse_provenance("version=v2")).contains("v0.2 or v1"));
        assert!(err(parse_provenance("max")).contains("`max` is not key=value"));
        assert!(err(parse_provenance("colour=red")).contains("unknown option `colour`"));
        assert!(err(parse_attest("type=sbom")).contains("`sbom` is not supported"));
        assert!(err(parse_attest("mode=max")).contains("missing `type=provenance`"));
    }

    #[test]
    fn credentials_in_source_urls_are_redacted() {
        assert_eq!(
            redact_credentials("https://me:s3cret@git.example/r.git#main"),
            "https://me:xxxxx@git.example/r.git#main"
        );
        assert_eq!(
            redact_credentials("https://TOKEN@host/f?x=a@b"),
            "https://xxxxx@host/f?x=a@b"
        );
        assert_eq!(redact_credentials("git@host:r.git"), "git@host:r.git");
        let mut m = Materials::default();
        m.add_git("https://u:p@h/r.git", "c");
        m.add_git("https://u:p@h/r.git", "c");
        assert_eq!(
            m.git,
            vec![("https://u:xxxxx@h/r.git".to_string(), "c".to_string())]
        );
    }

    #[test]
    fn purls_follow_buildkits_ref_to_purl() {
        let r = |s: &str| s.parse::<Reference>().unwrap();
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
        };
        assert_eq!(
            purl("docker", &r("busybox"), Some(&amd64)),
            "pkg:docker/busybox@latest?platform=linux%2Famd64"
        );
        assert_eq!(
            purl("docker", &r("localhost:5000/a/b:1"), None),
            "pkg:docker/localhost:5000/a/b@1"
        );
        let d = Digest::of(b"x");
        assert_eq!(
            purl("docker", &r(&format!("alpine@{d}")), None),
            format!("pkg:docker/alpine?digest=sha256%3A{}", d.hex())
        );
    }

    #[test]
    fn min_drops_args_secrets_and_layers_max_keeps_ids_never_values() {
        let p = |mode| Provenance {
            spec: ProvenanceSpec {
                mode,
                ..ProvenanceSpec::default()
            },
            facts: facts(),
        };
        let layers = vec![
            Descriptor::new(media::OCI_LAYER_GZIP, Digest::of(b"0"), 1),
            Descriptor::new(media::OCI_LAYER_GZIP, Digest::of(b"1"), 1),
        ];
        let min = p(Mode::Min).predicate(&layers);
        let req = &min["buildDefinition"]["externalParameters"]["request"];
        assert_eq!(req["args"], json!({"target": "app"}));
        assert!(req.get("secrets").is_none() && req.get("ssh").is_none());
        let meta = &min["runDetails"]["metadata"];
        assert_eq!(meta["buildkit_completeness"]["request"], json!(false));
        assert!(meta["buildkit_metadata"].get("layers").is_none());
        assert_eq!(
            min["buildDefinition"]["externalParameters"]["configSource"]["path"],
            json!("Dockerfile")
        );
        let deps = min["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        assert_eq!(deps.len(), 3);
        assert_eq!(deps[1]["digest"]["sha1"], json!("a".repeat(40)));

        let max = p(Mode::Max).predicate(&layers);
        let req = &max["buildDefinition"]["externalParameters"]["request"];
        assert_eq!(req["args"]["build-arg:TOKEN_HINT"], json!("abc"));
        assert_eq!(req["secrets"], json!([{"id": "token"}]));
        assert_eq!(req["ssh"], json!([{"id": "default", "optional": true}]));
        let chain = &max["runDetails"]["metadata"]["buildkit_metadata"]["layers"]["step3:0"];
        assert_eq!(chain[0].as_array().unwrap().len(), 2);

        let v02 = Provenance {
            spec: ProvenanceSpec {
                version: SlsaVersion::V02,
                ..ProvenanceSpec::default()
            },
            facts: facts(),
        }
        .predicate(&layers);
        assert_eq!(v02["buildType"], json!(BUILD_TYPE_V02));
        assert_eq!(v02["materials"].as_array().unwrap().len(), 3);
        assert_eq!(
            v02["invocation"]["configSource"]["entryPoint"],
            json!("Dockerfile")
        );
    }

    #[test]
    fn attestation_manifest_points_at_the_image_as_buildkit_places_it() {
        let p = Provenance {
            spec: ProvenanceSpec::default(),
            facts: facts(),
        };
        let image = Descriptor::new(media::OCI_MANIFEST, Digest::of(b"image"), 5);
        let tags = vec!["localhost:5000/app:1".parse().unwrap()];
        let a = p.attestation(&image, &[], &Platform::host(), &tags);
        let d = &a.descriptor;
        assert_eq!(d.platform.as_ref().unwrap().os, "unknown");
        let ann = d.annotations.as_ref().unwrap();
        assert_eq!(ann[REFERENCE_TYPE_ANNOTATION], ATTESTATION_MANIFEST);
        assert_eq!(ann[REFERENCE_DIGEST_ANNOTATION], image.digest.to_string());
        let m: crate::image::Manifest = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m.layers[0].media_type, IN_TOTO_MEDIA_TYPE);
        assert_eq!(m.layers[0].digest, a.statement.0);
        assert_eq!(m.config.digest, a.config.0);
        let s: Value = serde_json::from_slice(&a.statement.1).unwrap();
        assert_eq!(s["_type"], json!(STATEMENT_TYPE));
        assert_eq!(
            s["subject"][0]["digest"]["sha256"],
            json!(image.digest.hex())
        );
        assert!(s["subject"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("pkg:docker/localhost:5000/app@1?platform="));
    }
}
