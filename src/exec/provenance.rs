//! The facts a provenance attestation records (output/provenance.rs), gathered from what the
//! build already knows: the request, the plan, the images the bases resolved, and the git
//! commits and URL digests the steps' cache keys were made of. Nothing is fetched again.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::dockerfile::instructions::{MountType, NetworkMode};
use crate::output::provenance::{invocation_id, BuildFacts, Materials};
use crate::plan::{secret_and_ssh_mounts, Op, Plan};

use super::{BuildRequest, NamedContext, StepCache, StepId};

/// The facts of one platform's build of `req` by `plan`.
pub fn facts(
    req: &BuildRequest,
    plan: &Plan,
    materials: Materials,
    layer_steps: &[Option<(StepId, String)>],
    steps: &[StepCache],
    started: SystemTime,
) -> BuildFacts {
    // The frontend options buildx sends for a Dockerfile build (BuildKit drops the
    // host-specific ones, `platform` among them, from the provenance).
    let mut args = BTreeMap::new();
    args.insert("filename".to_string(), req.dockerfile_name.clone());
    if let Some(t) = &req.target {
        args.insert("target".to_string(), t.clone());
    }
    if req.no_cache {
        args.insert("no-cache".to_string(), String::new());
    }
    for (k, v) in &req.build_args {
        args.insert(format!("build-arg:{k}"), v.clone());
    }
    for (k, v) in &req.labels {
        args.insert(format!("label:{k}"), v.clone());
    }
    let mut locals = vec!["context".to_string(), "dockerfile".to_string()];
    for (name, c) in &req.build_contexts {
        let value = match c {
            NamedContext::Dir(_) => {
                locals.push(name.clone());
                format!("local:{name}")
            }
            NamedContext::Image(r) => format!("docker-image://{r}"),
            NamedContext::OciLayout { tag, .. } => {
                format!("oci-layout://{name}:{}", tag.as_deref().unwrap_or("latest"))
            }
        };
        args.insert(format!("context:{name}"), value);
    }

    // Secret and ssh ids the built stages mount (ids only; optional unless required).
    let mut secrets: Vec<(String, bool)> = Vec::new();
    let mut ssh: Vec<(String, bool)> = Vec::new();
    let network = (plan.stages.iter().flat_map(|s| &s.steps))
        .any(|step| matches!(&step.op, Op::Run(r) if r.network != NetworkMode::None));
    for stage in &plan.stages {
        for (_, m) in secret_and_ssh_mounts(&stage.steps) {
            let list = match m.kind {
                MountType::Secret => &mut secrets,
                _ => &mut ssh,
            };
            let id = m.id.clone().unwrap_or_default();
            match list.iter_mut().find(|(i, _)| *i == id) {
                // Capture.AddSecret: required anywhere means required.
                Some(entry) => entry.1 &= !m.required,
                None => list.push((id, !m.required)),
            }
        }
    }

    BuildFacts {
        args,
        secrets,
        ssh,
        locals,
        materials,
        dockerfile_name: req.dockerfile_name.clone(),
        dockerfile_text: req.dockerfile_text.clone(),
        network,
        layer_steps: layer_steps
            .iter()
            .map(|s| s.as_ref().map(|(id, _)| *id))
            .collect(),
        steps: steps
            .iter()
            .map(|s| (s.step, s.instruction.clone()))
            .collect(),
        started,
        finished: SystemTime::now(),
        invocation_id: invocation_id(),
    }
}
