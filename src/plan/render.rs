//! `rbuild plan`: a human-readable view of a plan.

use std::fmt::Write as _;

use super::{Base, CopyFrom, CopySource, MountFrom, Op, Plan};

/// Stages, steps, expanded instructions and cache keys (without source content, which only
/// the executor knows).
pub fn render(plan: &Plan) -> String {
    let keys = plan.keys_without_content();
    let mut out = String::new();
    for (pos, s) in plan.stages.iter().enumerate() {
        let name = s
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let target = if pos == plan.target { " [target]" } else { "" };
        let _ = writeln!(out, "stage {}{name}{target}: line {}", s.index, s.line);
        let base = match &s.base {
            Base::Scratch => "scratch".to_string(),
            Base::Image {
                reference,
                resolved,
            } => format!("{reference} {}", resolved.id),
            Base::Stage(i) => format!("stage {i}"),
        };
        let _ = writeln!(out, "  from {base}");
        if !s.deps.is_empty() {
            let deps: Vec<String> = s.deps.iter().map(usize::to_string).collect();
            let _ = writeln!(out, "  needs stages {}", deps.join(", "));
        }
        let stage_keys = keys.get(&s.index);
        for (i, step) in s.steps.iter().enumerate() {
            let _ = writeln!(out, "  {:>3}: {}", step.line, step.text);
            if step.history {
                let _ = writeln!(out, "       history: {}", step.created_by);
            } else {
                let _ = writeln!(out, "       no history ({})", step.created_by);
            }
            match &step.op {
                Op::Run(r) => {
                    let _ = writeln!(out, "       argv: {:?}", r.argv);
                    let _ = writeln!(out, "       env: {:?}", r.env);
                    if !r.proxy_env.is_empty() {
                        let _ =
                            writeln!(out, "       proxy env (not in the key): {:?}", r.proxy_env);
                    }
                    let _ = writeln!(
                        out,
                        "       user: {:?} workdir: {} network: {:?} security: {:?}",
                        r.user, r.workdir, r.network, r.security
                    );
                    for h in &r.extra_hosts {
                        let _ = writeln!(
                            out,
                            "       host {} {} (the address is not in the key)",
                            h.host, h.ip
                        );
                    }
                    for u in &r.ulimits {
                        let _ = writeln!(out, "       ulimit {}={}:{}", u.name, u.soft, u.hard);
                    }
                    for m in &r.mounts {
                        let from = match &m.from {
                            None => String::new(),
                            Some(MountFrom::Stage(i)) => format!(" from=stage {i}"),
                            Some(MountFrom::Image(r)) => format!(" from={r}"),
                            Some(MountFrom::BuildContext(c)) => format!(" from=context {c}"),
                        };
                        let _ = writeln!(
                            out,
                            "       mount {} {}{from} id={:?} ro={} mode={} source={:?}",
                            m.kind,
                            m.target,
                            m.id,
                            m.readonly,
                            m.mode.map_or("-".to_string(), |m| format!("{m:o}")),
                            m.source
                        );
                    }
                    for f in &r.files {
                        let _ =
                            writeln!(out, "       file {} {:o} {:?}", f.path, f.mode, f.content);
                    }
                }
                Op::Copy(c) => {
                    let from = match &c.from {
                        CopyFrom::Context => "context".to_string(),
                        CopyFrom::Stage(i) => format!("stage {i}"),
                        CopyFrom::Image(r) => format!("image {r}"),
                        CopyFrom::BuildContext(n) => format!("build context {n}"),
                    };
                    let srcs: Vec<String> = c
                        .sources
                        .iter()
                        .map(|s| match s {
                            CopySource::Path(p) => p.clone(),
                            CopySource::Url(u) => format!("url {u}"),
                            CopySource::Heredoc { name, content } => {
                                format!("heredoc {name} {content:?}")
                            }
                        })
                        .collect();
                    let _ = writeln!(
                        out,
                        "       {} from {from}: {:?} -> {}",
                        if c.add { "add" } else { "copy" },
                        srcs,
                        c.dest
                    );
                    let mut flags = Vec::new();
                    if let Some(v) = &c.chown {
                        flags.push(format!("chown={v}"));
                    }
                    if let Some(v) = &c.chmod {
                        flags.push(format!("chmod={v}"));
                    }
                    if c.link {
                        flags.push("link".into());
                    }
                    if c.parents {
                        flags.push("parents".into());
                    }
                    for e in &c.excludes {
                        flags.push(format!("exclude={e}"));
                    }
                    if let Some(v) = &c.checksum {
                        flags.push(format!("checksum={v}"));
                    }
                    if c.keep_git_dir {
                        flags.push("keep-git-dir".into());
                    }
                    if let Some(v) = c.unpack {
                        flags.push(format!("unpack={v}"));
                    }
                    if !flags.is_empty() {
                        let _ = writeln!(out, "       flags: {}", flags.join(" "));
                    }
                }
                Op::Workdir { path, user } => {
                    let _ = writeln!(out, "       mkdir {path} (user {user:?})");
                }
                Op::Config => {}
            }
            if let Some(k) = stage_keys.and_then(|k| k.get(i)) {
                let _ = writeln!(out, "       key: {k}");
            }
        }
        let cfg = serde_json::to_string(&s.config.config).unwrap_or_default();
        let _ = writeln!(out, "  config: {cfg}");
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}
