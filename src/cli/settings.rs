//! Checked settings from the raw arguments (ripgrep's low args -> high args).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::context;
use crate::dockerfile::instructions::NetworkMode;
use crate::exec::{BuildRequest, NamedContext, SecretSource, SshSource};
use crate::image::{Platform, Reference, SourceDateEpoch};
use crate::output::provenance::ProvenanceSpec;
use crate::output::{self, OutputSpec};
use crate::plan::{ExtraHost, Ulimit};

use super::{BuildArgs, UserError};

/// The store directory: `--root`/RBUILD_ROOT, else /var/lib/rbuild for root, else (rootless,
/// also inside its namespace) $XDG_DATA_HOME/rbuild.
pub fn store_root(root: Option<&Path>) -> PathBuf {
    if let Some(root) = root {
        return root.to_path_buf();
    }
    if nix::unistd::geteuid().is_root() && !crate::sandbox::userns::reexecuted() {
        return PathBuf::from("/var/lib/rbuild");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("rbuild"),
        _ => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/rbuild")
        }
    }
}

/// `--call`: build (the default), or print what the Dockerfile offers and uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMethod {
    Build,
    /// The stages and their descriptions (BuildKit's frontend.targets).
    Targets(CallFormat),
    /// The build args, secrets and ssh ids the target uses (frontend.outline).
    Outline(CallFormat),
}

/// `--call NAME,format=...`: buildx's table, or BuildKit's result.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFormat {
    Text,
    Json,
}

/// `--call NAME[,format=text|json]`, as buildx's ParseCallFunc reads it.
fn parse_call(spec: &str) -> Result<CallMethod, String> {
    let mut name = None;
    let mut format = CallFormat::Text;
    for field in spec.split(',') {
        match field.split_once('=') {
            Some(("format", "text")) => format = CallFormat::Text,
            Some(("format", "json")) => format = CallFormat::Json,
            Some(("format", other)) => {
                return Err(format!("unknown format `{other}` (text or json)"))
            }
            Some(("ignorestatus", _)) => {}
            Some((key, _)) => return Err(format!("unknown field `{key}`")),
            None if name.is_some() => return Err("give one method".into()),
            None => name = Some(field),
        }
    }
    match name.unwrap_or("build") {
        "build" => Ok(CallMethod::Build),
        "targets" => Ok(CallMethod::Targets(format)),
        "outline" => Ok(CallMethod::Outline(format)),
        "check" | "lint" => Err(
            "rbuild has no Dockerfile checks yet; rbuild knows build, targets and outline".into(),
        ),
        other => Err(format!(
            "unknown method `{other}` (rbuild knows build, targets and outline)"
        )),
    }
}

pub struct BuildSettings {
    pub call: CallMethod,
    pub request: BuildRequest,
    pub outputs: Vec<OutputSpec>,
    pub iidfile: Option<PathBuf>,
    pub metadata_file: Option<PathBuf>,
    pub push: bool,
    pub load: bool,
    /// `--platform`: one pass each (the request is for the first).
    pub platforms: Vec<Platform>,
    /// `--provenance` / `--attest type=provenance`: an attestation per image.
    pub provenance: Option<ProvenanceSpec>,
    /// `--annotation`, by level (the request has the first platform's manifest ones).
    pub annotations: crate::image::Annotations,
}

fn user(msg: impl Into<String>) -> anyhow::Error {
    UserError(msg.into()).into()
}

pub fn build_settings(args: &BuildArgs) -> anyhow::Result<BuildSettings> {
    let context = args.context.clone().unwrap_or_else(|| PathBuf::from("."));
    if !context.is_dir() {
        return Err(user(format!(
            "build context `{}` is not a directory",
            context.display()
        )));
    }
    let context = context
        .canonicalize()
        .map_err(|e| user(format!("build context `{}`: {e}", context.display())))?;

    let (dockerfile_name, dockerfile_path, dockerfile_text) = match args.file.as_deref() {
        Some(p) if p == Path::new("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(context::MAX_CONTROL_FILE + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| user(format!("reading the Dockerfile from stdin: {e}")))?;
            if bytes.len() as u64 > context::MAX_CONTROL_FILE {
                return Err(user(format!(
                    "the Dockerfile on stdin is larger than {} MiB",
                    context::MAX_CONTROL_FILE >> 20
                )));
            }
            ("-".to_string(), None, dockerfile_text(bytes, "-")?)
        }
        Some(p) => {
            let abs = context::lexical_abs(p);
            let text = read_dockerfile(&context, &abs, &p.display().to_string())?;
            (p.display().to_string(), Some(abs), text)
        }
        None => {
            let p = context.join("Dockerfile");
            let text = read_dockerfile(&context, &p, &p.display().to_string())?;
            ("Dockerfile".to_string(), Some(p), text)
        }
    };

    let tags = args
        .tags
        .iter()
        .map(|t| {
            t.parse::<Reference>()
                .map_err(|e| user(format!("-t {t}: {e}")))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut build_args = BTreeMap::new();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) => {
                build_args.insert(k.to_string(), v.to_string());
            }
            // `--build-arg KEY` takes the value from the environment, and is ignored if unset.
            None => {
                if let Ok(v) = std::env::var(a) {
                    build_args.insert(a.clone(), v);
                }
            }
        }
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_string(), v.to_string());
    }

    let network = match args.network.as_deref() {
        None => NetworkMode::Default,
        Some(word) => NetworkMode::parse(word)
            .ok_or_else(|| user(format!("--network {word}: expected default, host or none")))?,
    };
    // Asking for the host's network on the command line grants it, as in buildx.
    let mut allow_network_host = network == NetworkMode::Host;
    let mut allow_insecure = false;
    for a in &args.allow {
        match a.as_str() {
            "network.host" => allow_network_host = true,
            "security.insecure" => allow_insecure = true,
            other => {
                return Err(user(format!(
                    "--allow {other}: unknown entitlement (rbuild knows network.host and security.insecure)"
                )))
            }
        }
    }
    let extra_hosts = args
        .add_hosts
        .iter()
        .map(|h| parse_add_host(h).map_err(|e| user(format!("--add-host {h}: {e}"))))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let shm_size = match args.shm_size.as_deref() {
        None => None,
        Some(s) => match crate::plan::parse_size(s) {
            // 0 is docker's "the default".
            Some(0) => None,
            Some(n) => Some(n),
            None => {
                return Err(user(format!(
                    "--shm-size {s}: expected a size such as 64m, 1g or a number of bytes"
                )))
            }
        },
    };
    let ulimits = args
        .ulimits
        .iter()
        .map(|u| parse_ulimit(u).map_err(|e| user(format!("--ulimit {u}: {e}"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let no_cache_stages: Vec<String> = args
        .no_cache_filter
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    // -1 is docker's spelling of "no limit", as is 0.
    let pids_limit = match args.pids_limit {
        n if n <= 0 => None,
        n => Some(u32::try_from(n).map_err(|_| user(format!("--pids-limit {n}: too large")))?),
    };

    let mut secrets = BTreeMap::new();
    for s in &args.secrets {
        let (id, source) = parse_secret(s).map_err(|e| user(format!("--secret {s}: {e}")))?;
        secrets.insert(id, source);
    }
    let mut ssh = BTreeMap::new();
    for s in &args.ssh {
        let auth_sock = std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from);
        let (id, source) =
            parse_ssh(s, auth_sock.as_deref()).map_err(|e| user(format!("--ssh {s}: {e}")))?;
        ssh.insert(id, source);
    }

    let mut build_contexts = BTreeMap::new();
    for c in &args.build_contexts {
        let (name, value) = c
            .split_once('=')
            .ok_or_else(|| user(format!("--build-context {c}: expected NAME=VALUE")))?;
        let ctx = if let Some(r) = value.strip_prefix("docker-image://") {
            NamedContext::Image(r.to_string())
        } else if let Some(layout) = value.strip_prefix("oci-layout://") {
            // DIR[:TAG], where a ':' after the last '/' starts the tag.
            let (dir, tag) = match layout.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') => (d, Some(t.to_string())),
                _ => (layout, None),
            };
            let dir = PathBuf::from(dir);
            if !dir.join("index.json").is_file() {
                return Err(user(format!(
                    "--build-context {c}: `{}` is not an OCI layout (no index.json)",
                    dir.display()
                )));
            }
            NamedContext::OciLayout {
                dir: dir.canonicalize()?,
                tag,
            }
        } else if value.contains("://") {
            return Err(user(format!(
                "--build-context {c}: expected a directory, docker-image://REF or oci-layout://DIR[:TAG]"
            )));
        } else {
            let dir = PathBuf::from(value);
            if !dir.is_dir() {
                return Err(user(format!(
                    "--build-context {c}: `{value}` is not a directory"
                )));
            }
            NamedContext::Dir(dir.canonicalize()?)
        };
        build_contexts.insert(name.to_string(), ctx);
    }

    let platforms = match &args.platform {
        Some(p) => {
            super::platforms::parse_list(p).map_err(|e| user(format!("--platform {p}: {e}")))?
        }
        None => vec![Platform::host()],
    };
    let platform = platforms[0].clone();

    let source_date_epoch =
        source_date_epoch(build_args.get("SOURCE_DATE_EPOCH").map(String::as_str))?;

    let outputs = args
        .outputs
        .iter()
        .map(|o| output::parse_output(o).map_err(|e| user(format!("--output {o}: {e}"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.push && tags.is_empty() {
        return Err(user("--push needs a name: add -t REGISTRY/NAME:TAG"));
    }

    let annotations = super::annotations::parse(&args.annotations, &platforms).map_err(user)?;
    let mut outputs = outputs;
    for o in &mut outputs {
        o.annotations = annotations.clone();
    }

    let cache_to = args
        .cache_to
        .iter()
        .map(|c| crate::cache::parse_cache_to(c).map_err(|e| user(format!("--cache-to {c}: {e}"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let inline = cache_to
        .iter()
        .any(|c| c.target == crate::cache::ExportTarget::Inline);
    if inline && !args.push {
        return Err(user(
            "--cache-to type=inline needs --push: the cache rides in the pushed image's manifest",
        ));
    }
    let cache_from = args
        .cache_from
        .iter()
        .map(|c| {
            crate::cache::parse_cache_from(c).map_err(|e| user(format!("--cache-from {c}: {e}")))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let call = match args.call.as_deref() {
        None => CallMethod::Build,
        Some(c) => parse_call(c).map_err(|e| user(format!("--call {c}: {e}")))?,
    };

    Ok(BuildSettings {
        call,
        request: BuildRequest {
            context,
            dockerfile_name,
            dockerfile_path,
            dockerfile_text,
            tags,
            build_args,
            target: args.target.clone(),
            no_cache: args.no_cache,
            explain: args.explain,
            pull: args.pull,
            labels,
            network,
            allow_network_host,
            allow_insecure,
            no_cache_stages,
            extra_hosts,
            shm_size,
            ulimits,
            manifest_annotations: annotations.manifest_for(&platform),
            pids_limit,
            secrets,
            ssh,
            build_contexts,
            platform_labels: platforms.len() > 1 || !crate::sandbox::binfmt::native(&platform),
            platform,
            source_date_epoch,
            cache_from,
            cache_to,
            first_step: 1,
            step_counter: None,
        },
        outputs,
        iidfile: args.iidfile.clone(),
        metadata_file: args.metadata_file.clone(),
        push: args.push,
        load: args.load,
        platforms,
        provenance: provenance_spec(args)?,
        annotations,
    })
}

/// `--provenance` or `--attest type=provenance,...` (buildx's shorthand is an `--attest` of
/// its own: giving both is refused).
fn provenance_spec(args: &BuildArgs) -> anyhow::Result<Option<ProvenanceSpec>> {
    use crate::output::provenance::{parse_attest, parse_provenance};
    let mut spec = None;
    if let Some(v) = &args.provenance {
        spec = Some(parse_provenance(v).map_err(|e| user(format!("--provenance {v}: {e}")))?);
    }
    for a in &args.attest {
        if spec.is_some() {
            return Err(user(format!(
                "--attest {a}: provenance is already asked for (by --provenance or another \
                 --attest): give one"
            )));
        }
        spec = Some(parse_attest(a).map_err(|e| user(format!("--attest {a}: {e}")))?);
    }
    Ok(spec.flatten())
}

/// The build's SOURCE_DATE_EPOCH, from `--build-arg SOURCE_DATE_EPOCH` (`build_arg`) or the
/// environment variable: the one place rbuild reads it. The value goes to the image's
/// timestamps, the layers' mtime clamp and the outputs' archive entries alike.
pub fn source_date_epoch(build_arg: Option<&str>) -> anyhow::Result<Option<SourceDateEpoch>> {
    let env = std::env::var("SOURCE_DATE_EPOCH").ok();
    SourceDateEpoch::resolve(build_arg, env.as_deref()).map_err(|e| user(e.to_string()))
}

/// The Dockerfile at `path` (absolute), opened beneath the context when it is inside it.
fn read_dockerfile(context: &Path, path: &Path, shown: &str) -> anyhow::Result<String> {
    match context::read_control_file(context, path) {
        Ok(Some(bytes)) => dockerfile_text(bytes, shown),
        Ok(None) => Err(user(format!(
            "reading Dockerfile `{shown}`: no such file (name another with -f)"
        ))),
        Err(e) => Err(user(format!("reading Dockerfile `{shown}`: {e}"))),
    }
}

fn dockerfile_text(bytes: Vec<u8>, shown: &str) -> anyhow::Result<String> {
    String::from_utf8(bytes).map_err(|_| {
        user(format!(
            "reading Dockerfile `{shown}`: it is not UTF-8 text"
        ))
    })
}

/// `HOST:IP` or `HOST=IP` (buildx's toBuildkitExtraHosts): `=` is looked for first, so
/// `HOST=::1` works; an address may be in brackets (`[::1]`), several may follow,
/// comma-separated, each giving a line. BuildKit's frontend lowercases the name.
fn parse_add_host(spec: &str) -> Result<Vec<ExtraHost>, String> {
    let (host, ips) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or("expected HOST:IP or HOST=IP")?;
    if host.is_empty() || ips.is_empty() {
        return Err("expected HOST:IP or HOST=IP".into());
    }
    if host.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!("`{host}` is not a host name"));
    }
    if ips == "host-gateway" {
        // buildx asks the docker engine for its gateway; with no engine there is none
        // (buildx's docker-container driver refuses it the same way).
        return Err("host-gateway needs a docker engine's gateway; give the host's IP address (for example its address on the network the build reaches)".into());
    }
    let mut out = Vec::new();
    for ip in ips.split(',') {
        let bare = ip
            .strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(ip);
        let addr: std::net::IpAddr = bare
            .parse()
            .map_err(|_| format!("`{ip}` is not an IP address"))?;
        out.push(ExtraHost {
            host: host.to_lowercase(),
            ip: addr.to_string(),
        });
    }
    Ok(out)
}

/// `TYPE=SOFT[:HARD]` as docker's go-units ParseUlimit reads it: HARD defaults to SOFT,
/// -1 is unlimited, SOFT may not exceed HARD.
fn parse_ulimit(spec: &str) -> Result<Ulimit, String> {
    let (name, limits) = spec
        .split_once('=')
        .ok_or("expected TYPE=SOFT[:HARD], e.g. nofile=1024:2048")?;
    if crate::sandbox::RlimitResource::from_name(name).is_none() {
        let known: Vec<&str> = crate::sandbox::RlimitResource::ALL
            .iter()
            .map(|r| r.name())
            .collect();
        return Err(format!(
            "unknown type `{name}` (known: {})",
            known.join(", ")
        ));
    }
    let number = |v: &str| -> Result<i64, String> {
        match v.parse::<i64>() {
            Ok(n) if n >= -1 => Ok(n),
            _ => Err(format!(
                "`{v}` is not a limit (a number, or -1 for unlimited)"
            )),
        }
    };
    let (soft, hard) = match limits.split(':').collect::<Vec<_>>().as_slice() {
        [soft] => (number(soft)?, number(soft)?),
        [soft, hard] => (number(soft)?, number(hard)?),
        _ => return Err("too many values: expected SOFT[:HARD]".into()),
    };
    if hard != -1 && (soft == -1 || soft > hard) {
        let soft = if soft == -1 {
            "-1 (unlimited)".to_string()
        } else {
            soft.to_string()
        };
        return Err(format!(
            "the soft limit must be less than or equal to the hard limit: {soft} > {hard}"
        ));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// `id=ID,src=PATH` | `id=ID,env=VAR` (also `source=`, `type=file|env`); `id=X` alone reads
/// the environment variable X if set, else the file X, as buildx does.
fn parse_secret(spec: &str) -> Result<(String, SecretSource), String> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    let mut kind = None;
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or(format!("`{field}` is not KEY=VALUE"))?;
        match k {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            "type" => kind = Some(v.to_string()),
            other => return Err(format!("unknown key `{other}`")),
        }
    }
    let id = id.ok_or("missing id=")?;
    let source = match (src, env, kind.as_deref()) {
        (Some(s), None, None | Some("file")) => SecretSource::File(PathBuf::from(s)),
        (Some(s), None, Some("env")) | (None, Some(s), _) => SecretSource::Env(s),
        (None, None, _) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None, _) => SecretSource::File(PathBuf::from(&id)),
        _ => return Err("give either src= or env=".to_string()),
    };
    if let SecretSource::File(p) = &source {
        if !p.is_file() {
            return Err(format!("secret file `{}` does not exist", p.display()));
        }
    }
    Ok((id, source))
}

/// `ID[=PATH[,PATH..]]`, as buildx's parseSSH and sshprovider: without a path the agent is
/// `$SSH_AUTH_SOCK`; one path that is a socket is an agent; otherwise the paths are private
/// key files, served by an agent rbuild starts for each step that mounts them.
fn parse_ssh(spec: &str, auth_sock: Option<&Path>) -> Result<(String, SshSource), String> {
    let (id, paths) = match spec.split_once('=') {
        Some((id, paths)) => (id, Some(paths)),
        None => (spec, None),
    };
    if id.is_empty() {
        return Err("empty id: expected default or ID=SOCKET|KEYFILE[,KEYFILE]".to_string());
    }
    let paths: Vec<PathBuf> = match paths {
        Some(p) => p
            .split(',')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        None => Vec::new(),
    };
    let paths = if paths.is_empty() {
        match auth_sock.filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => vec![p.to_path_buf()],
            None => {
                return Err(
                    "invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set".to_string(),
                )
            }
        }
    } else {
        paths
    };
    let mut socket = false;
    for p in &paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("reading `{}`: {e}", p.display()))?;
        socket = std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type());
        if !socket && !meta.is_file() {
            return Err(format!(
                "`{}` is neither an agent socket nor a key file",
                p.display()
            ));
        }
    }
    let source = if paths.len() == 1 && socket {
        SshSource::Socket(paths[0].clone())
    } else {
        // Key files must be absolute for the agent rbuild starts from elsewhere.
        let keys = paths
            .iter()
            .map(|p| std::path::absolute(p).map_err(|e| format!("`{}`: {e}", p.display())))
            .collect::<Result<Vec<_>, _>>()?;
        SshSource::Keys(keys)
    };
    Ok((id.to_string(), source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_methods_parse_like_buildx() {
        assert_eq!(parse_call("build"), Ok(CallMethod::Build));
        assert_eq!(
            parse_call("targets"),
            Ok(CallMethod::Targets(CallFormat::Text))
        );
        assert_eq!(
            parse_call("outline,format=text"),
            Ok(CallMethod::Outline(CallFormat::Text))
        );
        assert_eq!(
            parse_call("format=json,targets"),
            Ok(CallMethod::Targets(CallFormat::Json))
        );
        for bad in [
            "outline,format=yaml",
            "frob",
            "targets,outline",
            "outline,x=1",
            "check",
        ] {
            assert!(parse_call(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn add_hosts_parse_like_buildx() {
        let one = |host: &str, ip: &str| ExtraHost {
            host: host.into(),
            ip: ip.into(),
        };
        assert_eq!(
            parse_add_host("db:10.0.0.5").unwrap(),
            [one("db", "10.0.0.5")]
        );
        assert_eq!(
            parse_add_host("DB=10.0.0.5").unwrap(),
            [one("db", "10.0.0.5")]
        );
        assert_eq!(parse_add_host("v6=::1").unwrap(), [one("v6", "::1")]);
        assert_eq!(parse_add_host("v6:::1").unwrap(), [one("v6", "::1")]);
        assert_eq!(
            parse_add_host("v6=[2001:db8::1]").unwrap(),
            [one("v6", "2001:db8::1")]
        );
        assert_eq!(
            parse_add_host("two=10.0.0.1,10.0.0.2").unwrap(),
            [one("two", "10.0.0.1"), one("two", "10.0.0.2")]
        );
        for bad in [
            "db",
            "db:",
            ":10.0.0.1",
            "db:nothost",
            "db=host-gateway",
            "a b:1.2.3.4",
        ] {
            assert!(parse_add_host(bad).is_err(), "{bad}");
        }
        assert!(parse_add_host("x=host-gateway")
            .unwrap_err()
            .contains("host-gateway"));
    }

    #[test]
    fn ulimits_parse_like_docker() {
        let u = |name: &str, soft, hard| Ulimit {
            name: name.into(),
            soft,
            hard,
        };
        assert_eq!(
            parse_ulimit("nofile=1024:2048").unwrap(),
            u("nofile", 1024, 2048)
        );
        assert_eq!(parse_ulimit("nproc=50").unwrap(), u("nproc", 50, 50));
        assert_eq!(parse_ulimit("core=-1").unwrap(), u("core", -1, -1));
        assert_eq!(parse_ulimit("core=0:-1").unwrap(), u("core", 0, -1));
        assert!(parse_ulimit("nofile=2048:1024")
            .unwrap_err()
            .contains("soft limit must be less than or equal"));
        assert!(parse_ulimit("core=-1:10").is_err());
        assert!(parse_ulimit("as=1")
            .unwrap_err()
            .contains("unknown type `as`"));
        for bad in ["nofile", "nofile=", "nofile=x", "nofile=1:2:3", "nofile=-2"] {
            assert!(parse_ulimit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ssh_parses_like_buildx() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "k").unwrap();
        assert_eq!(
            parse_ssh("default", Some(&sock)).unwrap(),
            ("default".to_string(), SshSource::Socket(sock.clone()))
        );
        let err = parse_ssh("default", None).unwrap_err();
        assert!(err.contains("SSH_AUTH_SOCK"), "{err}");
        let spec = format!("git={}", sock.display());
        assert_eq!(
            parse_ssh(&spec, None).unwrap().1,
            SshSource::Socket(sock.clone())
        );
        let spec = format!("git={},{}", key.display(), key.display());
        assert_eq!(
            parse_ssh(&spec, None).unwrap().1,
            SshSource::Keys(vec![key.clone(), key.clone()])
        );
        assert!(parse_ssh("x=/nonexistent/key", None).is_err());
        assert!(parse_ssh("=/tmp", None).is_err());
        let spec = format!("x={}", dir.path().display());
        assert!(parse_ssh(&spec, None).is_err());
    }

    #[test]
    fn secrets_parse_like_buildx() {
        let (id, s) = parse_secret("id=tok,env=HOME").unwrap();
        assert_eq!(id, "tok");
        assert!(matches!(s, SecretSource::Env(v) if v == "HOME"));
        let (_, s) = parse_secret("id=x,src=/etc/hostname").unwrap();
        assert!(matches!(s, SecretSource::File(p) if p == Path::new("/etc/hostname")));
        assert!(parse_secret("src=/etc/hostname").is_err());
        assert!(parse_secret("id=x,src=/nonexistent/secret").is_err());
        assert!(parse_secret("id=x,bogus=1").is_err());
    }
}
