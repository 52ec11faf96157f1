//! RUN: the command line (shell or exec form, heredocs), its environment (config Env, ARGs,
//! proxy build args), network, hostname and security, and its `--mount`s, parsed from
//! their expanded values.

use std::collections::{BTreeMap, BTreeSet};

use super::graph::{expand, Ref};
use super::steps::{clean_path, join_path, Ctx, StageState};
use super::{InjectedFile, MountFrom, PlanError, RunMount, RunOp, Sharing};
use crate::dockerfile::instructions::{
    self, CommandForm, MountFlag, MountType, NetworkMode, Security,
};
use crate::dockerfile::syntax;
use crate::dockerfile::ErrorKind;

/// The proxy build args (any letter case): they need no ARG declaration, and reach RUN's
/// environment, but neither history nor the cache key (BuildKit's ProxyEnv).
const PROXY_ARGS: [&str; 5] = [
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "all_proxy",
];

pub(super) fn is_proxy_arg(name: &str) -> bool {
    PROXY_ARGS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// The environment the proxy build args give a RUN step: each given one in both spellings
/// (`HTTP_PROXY` and `http_proxy`), as BuildKit's executor sets them. When several letter
/// cases of one name are given, the last in sorted order wins (BuildKit sorts the keys).
fn proxy_env(build_args: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in PROXY_ARGS {
        let value = build_args
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(p))
            .map(|(_, v)| v)
            .next_back();
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            out.push((p.to_ascii_uppercase(), v.clone()));
            out.push((p.to_string(), v.clone()));
        }
    }
    out
}

/// The hostname RUN steps see unless `--build-arg BUILDKIT_SANDBOX_HOSTNAME` says otherwise.
const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

impl Ctx<'_, '_> {
    pub(super) fn run(
        &mut self,
        line: usize,
        run: &instructions::Run,
        st: &StageState,
        images: &mut BTreeMap<String, String>,
    ) -> Result<RunOp, PlanError> {
        let scope = st.scope();
        let mut files = Vec::new();
        let argv = match &run.command {
            CommandForm::Exec(words) => words.clone(),
            CommandForm::Shell(cmd) => {
                let args = if run.heredocs.is_empty() {
                    cmd.clone()
                } else if syntax::heredoc_marker(cmd.trim()).is_some() {
                    // `RUN <<EOF`: the body is the script. With a shebang it runs as a file.
                    let h = &run.heredocs[0];
                    if h.content.starts_with("#!") {
                        let path = format!("/dev/pipes/{}", h.name);
                        files.push(InjectedFile {
                            path: path.clone(),
                            content: h.content.clone(),
                            mode: 0o755,
                        });
                        path
                    } else {
                        h.content.clone()
                    }
                } else {
                    // `RUN python3 <<EOF`: hand the whole heredoc to the shell.
                    let mut full = cmd.clone();
                    for h in &run.heredocs {
                        full.push('\n');
                        full.push_str(&h.content);
                        full.push_str(&h.name);
                    }
                    full
                };
                let mut v = st.shell();
                v.push(args);
                v
            }
        };
        let workdir = st.workdir();
        let mut mounts = Vec::new();
        let mut ssh_count = 0;
        for m in &run.mounts {
            let mount = self.mount(line, m, &scope, &workdir, &mut ssh_count, images)?;
            mounts.push(mount);
        }
        // `--shm-size`: BuildKit's frontend adds the same tmpfs mount to every RUN.
        if let Some(size) = self.opts.shm_size {
            mounts.push(RunMount {
                kind: MountType::Tmpfs,
                target: "/dev/shm".into(),
                source: None,
                from: None,
                readonly: false,
                id: None,
                sharing: None,
                mode: None,
                uid: None,
                gid: None,
                required: false,
                size: Some(size),
                env: None,
            });
        }

        // Env: config Env, ARG values not shadowed by it, then proxy build args.
        let mut env: Vec<String> = st.config.config.env.clone().unwrap_or_default();
        let mut seen: BTreeSet<String> = env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map_or(kv.as_str(), |(k, _)| k)
                    .to_string()
            })
            .collect();
        for (k, v) in &st.args {
            if let Some(v) = v {
                if seen.insert(k.clone()) {
                    env.push(format!("{k}={v}"));
                }
            }
        }
        // BuildKit's llb exec: SSH_AUTH_SOCK names the first ssh mount's socket unless the
        // step's environment has one (it is in the step's env, so in its cache key, never
        // in the image config).
        if let Some(m) = mounts.iter().find(|m| m.kind == MountType::Ssh) {
            if seen.insert("SSH_AUTH_SOCK".to_string()) {
                env.push(format!("SSH_AUTH_SOCK={}", m.target));
            }
        }
        let proxy_env = proxy_env(&self.opts.build_args)
            .into_iter()
            .filter(|(k, _)| !seen.contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Ok(RunOp {
            argv,
            env,
            user: st.config.config.user.clone().unwrap_or_default(),
            workdir,
            network: match run.network {
                None | Some(NetworkMode::Default) => self.opts.network,
                Some(explicit) => explicit,
            },
            hostname: self.hostname()?,
            mounts,
            security: run.security.unwrap_or(Security::Sandbox),
            files,
            proxy_env,
            extra_hosts: self.opts.extra_hosts.clone(),
            ulimits: self.opts.ulimits.clone(),
        })
    }

    fn hostname(&self) -> Result<String, PlanError> {
        match self.opts.build_args.get("BUILDKIT_SANDBOX_HOSTNAME") {
            None => Ok(DEFAULT_HOSTNAME.to_string()),
            Some(h) if h.is_empty() => Ok(DEFAULT_HOSTNAME.to_string()),
            // The kernel's limit (HOST_NAME_MAX); sethostname would refuse it mid-build.
            Some(h) if h.len() > 64 || h.contains('\0') => {
                Err(self.src.file(ErrorKind::Invalid(format!(
                    "invalid --build-arg BUILDKIT_SANDBOX_HOSTNAME=`{h}`: a hostname is at most 64 bytes"
                ))))
            }
            Some(h) => Ok(h.clone()),
        }
    }

    fn mount(
        &mut self,
        line: usize,
        written: &MountFlag,
        scope: &BTreeMap<String, String>,
        workdir: &str,
        ssh_count: &mut usize,
        images: &mut BTreeMap<String, String>,
    ) -> Result<RunMount, PlanError> {
        // Parsed only now, from expanded values: `type=$T,target=$DIR` works as in BuildKit.
        let m = instructions::parse_mount(&written.raw, &mut |v| expand(&self.lexer, v, scope))
            .map_err(|k| self.src.at(line, k))?;
        let opt: BTreeMap<&str, Option<String>> = m
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let bad = |reason: String| {
            self.src.at(
                line,
                ErrorKind::BadMount {
                    spec: m.raw.clone(),
                    reason,
                },
            )
        };
        let get = |k: &str| opt.get(k).cloned().flatten();
        let flag = |k: &str| -> Result<Option<bool>, PlanError> {
            match opt.get(k) {
                None => Ok(None),
                Some(None) => Ok(Some(true)),
                Some(Some(v)) => match v.as_str() {
                    "true" => Ok(Some(true)),
                    "false" => Ok(Some(false)),
                    other => Err(bad(format!("`{k}={other}`: expecting true or false"))),
                },
            }
        };
        let num = |k: &str, radix: u32| -> Result<Option<u32>, PlanError> {
            get(k)
                .map(|v| {
                    u32::from_str_radix(&v, radix)
                        .map_err(|_| bad(format!("`{k}={v}` is not a valid number")))
                })
                .transpose()
        };
        let target = match get("target") {
            Some(t) if t.starts_with('/') => Some(clean_path(&t)),
            Some(t) => Some(clean_path(&join_path(workdir, &t))),
            None => None,
        };
        let readonly = match m.kind {
            MountType::Bind => match (flag("readwrite")?, flag("readonly")?) {
                (Some(true), _) => false,
                (_, Some(ro)) => ro,
                _ => true,
            },
            MountType::Cache => {
                flag("readonly")?.unwrap_or(false) && flag("readwrite")? != Some(true)
            }
            _ => false,
        };
        let (target, id) = match m.kind {
            MountType::Secret => {
                let id = get("id");
                let target = target.or_else(|| {
                    // With only env=, the secret is not a file.
                    (get("env").is_none())
                        .then(|| format!("/run/secrets/{}", id.clone().unwrap_or_default()))
                });
                let id = id.or_else(|| {
                    target
                        .as_deref()
                        .and_then(|t| t.rsplit('/').next())
                        .map(str::to_string)
                });
                (target.unwrap_or_default(), id)
            }
            MountType::Ssh => {
                let t = target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", *ssh_count));
                *ssh_count += 1;
                (t, Some(get("id").unwrap_or_else(|| "default".into())))
            }
            MountType::Cache => {
                let t = target.unwrap_or_default();
                (t.clone(), Some(get("id").unwrap_or(t)))
            }
            MountType::Bind | MountType::Tmpfs => (target.unwrap_or_default(), None),
        };
        // The unexpanded value, as the stage graph saw it (it cannot hold variables).
        let from = match written.from.as_deref() {
            None => None,
            Some(f) => Some(match self.resolve_from(line, f, images)? {
                Ref::Stage(i) => MountFrom::Stage(i),
                Ref::Context(c) => MountFrom::BuildContext(c),
                Ref::Image(r) => MountFrom::Image(r),
                Ref::Scratch => MountFrom::Image("scratch".into()),
            }),
        };
        let sharing = match (m.kind, get("sharing").as_deref()) {
            (MountType::Cache, None | Some("shared")) => Some(Sharing::Shared),
            (MountType::Cache, Some("private")) => Some(Sharing::Private),
            (MountType::Cache, Some("locked")) => Some(Sharing::Locked),
            (MountType::Cache, Some(other)) => {
                return Err(bad(format!(
                    "sharing `{other}`: expecting shared, private or locked"
                )))
            }
            _ => None,
        };
        let default_mode = match m.kind {
            MountType::Cache => Some(0o755),
            MountType::Secret => Some(0o400),
            MountType::Ssh => Some(0o600),
            _ => None,
        };
        let size = get("size")
            .map(|s| parse_size(&s).ok_or_else(|| bad(format!("invalid size `{s}`"))))
            .transpose()?;
        let owned = matches!(
            m.kind,
            MountType::Cache | MountType::Secret | MountType::Ssh
        );
        Ok(RunMount {
            kind: m.kind,
            target,
            source: get("source"),
            from,
            readonly,
            id,
            sharing,
            mode: num("mode", 8)?.or(default_mode),
            uid: num("uid", 10)?.or(owned.then_some(0)),
            gid: num("gid", 10)?.or(owned.then_some(0)),
            required: flag("required")?.unwrap_or(false),
            size,
            env: get("env"),
        })
    }
}

/// `64m`, `1g`, `4096`, `1.5GB`, `512 MiB` -> bytes: docker's RAMInBytes (binary units
/// whatever the spelling, a number with an optional fraction, an optional space).
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let t = lower.strip_suffix('b').unwrap_or(&lower);
    let t = t
        .strip_suffix('i')
        .filter(|t| !t.ends_with(' '))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 10),
        'm' => (&t[..t.len() - 1], 20),
        'g' => (&t[..t.len() - 1], 30),
        't' => (&t[..t.len() - 1], 40),
        'p' => (&t[..t.len() - 1], 50),
        _ if t.len() < lower.len() && !lower.ends_with('b') => return None,
        _ => (t, 0),
    };
    let num = num.strip_suffix(' ').unwrap_or(num);
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(1 << shift);
    }
    let bytes = num.parse::<f64>().ok()? * (1u64 << shift) as f64;
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("10GB"), Some(10 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1.5gb"), Some(3 << 29));
        assert_eq!(parse_size("2 k"), Some(2048));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("7b"), Some(7));
        for bad in ["", "gb", "1x", "-1m", "1.5.1g", "1i", "m1"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
