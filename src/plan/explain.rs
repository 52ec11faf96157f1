//! Why a step missed the cache (issue 19, docs/explain.md): the first input that differs
//! between an earlier build of the step and this one, named in words and values. Pure: the
//! executor finds the earlier cache record (src/exec/explain.rs) and hands both sides here.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// How many differing files a reason names before it says `...`.
const FILES_SHOWN: usize = 3;

/// What a cache key was made from, on one side of the comparison.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The parent key (the previous step's, or the base's: a manifest digest's hex).
    pub parent: &'a str,
    /// The [`super::KeyMaterial`] as JSON.
    pub material: &'a Value,
    /// The content digest of the step's sources.
    pub content: Option<&'a str>,
    /// The instruction as written (`RUN make`).
    pub text: &'a str,
    /// The image the stage's FROM names, for its first step (None if unknown).
    pub base: Option<&'a str>,
    /// For COPY/ADD from a directory: the files the content digest covered, by path.
    pub listing: Option<&'a [Entry]>,
}

/// One file of a listing: its path, mode and content digest (hex, possibly shortened).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub digest: String,
}

/// What the step's parent is, for naming a parent that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parent {
    /// The stage's first step on an image: the parent key is its manifest digest.
    Image(String),
    /// The stage's first step on another stage (its name or index).
    Stage(String),
    Scratch,
    /// A previous step of the stage, as progress names it (`#4`, or `ENV A=1 (line 3)` for
    /// a step without a vertex).
    Step(String),
}

/// Why a step missed the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    NoCache,
    /// `--no-cache-filter` names the step's stage.
    NoCacheFilter(String),
    NoEarlierBuild,
    /// The earlier record has this very key: its layer is gone from the store.
    Pruned,
    BaseImage {
        reference: String,
        old: String,
        new: String,
    },
    BaseStage(String),
    Previous(String),
    Platform {
        old: String,
        new: String,
    },
    BuildArg {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    Instruction {
        old: String,
        new: String,
    },
    /// An environment variable the step runs with; `set_by` names the step that set it.
    Env {
        name: String,
        old: Option<String>,
        new: Option<String>,
        set_by: Option<String>,
    },
    /// A setting with a name (`USER`, `WORKDIR`, `--network`) and its two values.
    Setting {
        name: String,
        old: String,
        new: String,
    },
    /// An option of the instruction without a useful value to show (`RUN --mount`).
    Option(String),
    /// An image a step copies or mounts from resolves to another digest.
    Image {
        reference: String,
        old: String,
        new: String,
    },
    /// Files of the sources that differ (sorted by path), out of `total` differences.
    Files {
        first: Vec<FileChange>,
        total: usize,
    },
    /// The sources' content digest changed and no listing says which file.
    Sources {
        old: String,
        new: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    Changed {
        path: String,
        old: String,
        new: String,
    },
    Mode {
        path: String,
        old: u32,
        new: u32,
    },
    Added(String),
    Removed(String),
}

impl FileChange {
    fn path(&self) -> &str {
        match self {
            FileChange::Changed { path, .. } | FileChange::Mode { path, .. } => path,
            FileChange::Added(p) | FileChange::Removed(p) => p,
        }
    }
}

/// `sha256:` and the first 12 hex digits: enough to tell two digests apart in a log line.
pub fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

fn or_unset(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("unset")
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoCache => write!(f, "--no-cache"),
            Reason::NoCacheFilter(stage) => write!(f, "--no-cache-filter {stage}"),
            Reason::NoEarlierBuild => write!(f, "no earlier build of this step"),
            Reason::Pruned => write!(f, "its cached result was pruned"),
            Reason::BaseImage {
                reference,
                old,
                new,
            } => write!(
                f,
                "base image {reference} now resolves to {} (was {})",
                short_digest(new),
                short_digest(old)
            ),
            Reason::BaseStage(name) => write!(f, "base stage {name} was rebuilt"),
            Reason::Previous(step) => write!(f, "previous step {step} was rebuilt"),
            Reason::Platform { old, new } => write!(f, "--platform changed ({old} -> {new})"),
            Reason::BuildArg { name, old, new } => write!(
                f,
                "--build-arg {name} changed ({} -> {})",
                or_unset(old),
                or_unset(new)
            ),
            Reason::Instruction { old, new } => write!(f, "instruction changed: {old} -> {new}"),
            Reason::Env {
                name,
                old,
                new,
                set_by,
            } => {
                write!(f, "ENV {name} changed")?;
                if let Some(by) = set_by {
                    write!(f, " by {by}")?;
                }
                write!(f, " ({} -> {})", or_unset(old), or_unset(new))
            }
            Reason::Setting { name, old, new } => write!(f, "{name} changed ({old} -> {new})"),
            Reason::Option(name) => write!(f, "{name} changed"),
            Reason::Image {
                reference,
                old,
                new,
            } => write!(
                f,
                "image {reference} now resolves to {} (was {})",
                short_digest(new),
                short_digest(old)
            ),
            Reason::Files { first, total } => {
                if let ([one], 1) = (&first[..], total) {
                    return match one {
                        FileChange::Changed { path, old, new } => write!(
                            f,
                            "context file {path} changed ({} -> {})",
                            short_digest(old),
                            short_digest(new)
                        ),
                        FileChange::Mode { path, old, new } => {
                            write!(f, "context file {path} mode changed ({old:o} -> {new:o})")
                        }
                        FileChange::Added(path) => write!(f, "context file {path} added"),
                        FileChange::Removed(path) => write!(f, "context file {path} removed"),
                    };
                }
                let names: Vec<String> = first
                    .iter()
                    .map(|c| match c {
                        FileChange::Added(p) => format!("{p} (added)"),
                        FileChange::Removed(p) => format!("{p} (removed)"),
                        c => c.path().to_string(),
                    })
                    .collect();
                write!(f, "{total} context files changed: {}", names.join(", "))?;
                if *total > first.len() {
                    write!(f, ", ...")?;
                }
                Ok(())
            }
            Reason::Sources { old, new } => write!(
                f,
                "sources changed ({} -> {})",
                short_digest(old),
                short_digest(new)
            ),
        }
    }
}

/// The first input that differs between `old` (an earlier build of the step) and `new`,
/// in the order a user would look for it: the base, the platform, build args, the
/// instruction, its settings, the images it uses, its sources, then the previous step.
/// `None` when nothing differs.
pub fn explain(old: &Inputs, new: &Inputs, parent: &Parent) -> Option<Reason> {
    if let Parent::Image(reference) = parent {
        if let Some(was) = old.base.filter(|b| b != reference) {
            return Some(Reason::Instruction {
                old: format!("FROM {was}"),
                new: format!("FROM {reference}"),
            });
        }
        if old.parent != new.parent {
            return Some(Reason::BaseImage {
                reference: reference.clone(),
                old: old.parent.to_string(),
                new: new.parent.to_string(),
            });
        }
    }
    let (om, nm) = (old.material, new.material);
    if om["platform"] != nm["platform"] {
        return Some(Reason::Platform {
            old: text(&om["platform"]),
            new: text(&nm["platform"]),
        });
    }
    if let Some((name, o, n)) =
        first_difference(&strings(&om["build_args"]), &strings(&nm["build_args"]))
    {
        return Some(Reason::BuildArg {
            name,
            old: o,
            new: n,
        });
    }
    if om["instruction"] != nm["instruction"] || om["created_by"] != nm["created_by"] {
        let (o, n) = if old.text != new.text && !old.text.is_empty() {
            (old.text.to_string(), new.text.to_string())
        } else {
            (text(&om["created_by"]), text(&nm["created_by"]))
        };
        return Some(Reason::Instruction { old: o, new: n });
    }
    if let Some(r) = op_difference(&om["op"], &nm["op"], &text(&nm["instruction"])) {
        return Some(r);
    }
    if om["shell"] != nm["shell"] {
        return Some(Reason::Setting {
            name: "SHELL".into(),
            old: om["shell"].to_string(),
            new: nm["shell"].to_string(),
        });
    }
    if let Some((reference, o, n)) =
        first_difference(&strings(&om["images"]), &strings(&nm["images"]))
    {
        return Some(Reason::Image {
            reference,
            old: o.unwrap_or_default(),
            new: n.unwrap_or_default(),
        });
    }
    if let Some(field) = first_key_difference(om, nm) {
        return Some(Reason::Option(field));
    }
    if old.content != new.content {
        if let (Some(ol), Some(nl)) = (old.listing, new.listing) {
            let changes = file_changes(ol, nl);
            if !changes.is_empty() {
                return Some(Reason::Files {
                    total: changes.len(),
                    first: changes.into_iter().take(FILES_SHOWN).collect(),
                });
            }
        }
        return Some(Reason::Sources {
            old: old.content.unwrap_or_default().to_string(),
            new: new.content.unwrap_or_default().to_string(),
        });
    }
    if old.parent != new.parent {
        return Some(match parent {
            Parent::Stage(name) => Reason::BaseStage(name.clone()),
            Parent::Step(step) => Reason::Previous(step.clone()),
            // Image is handled first; scratch is one key.
            Parent::Image(_) | Parent::Scratch => Reason::Option("the base".into()),
        });
    }
    None
}

/// A JSON value as text: strings without quotes.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "unset".into(),
        v => v.to_string(),
    }
}

/// An object of strings (build args, images) as a map.
fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default()
}

/// The first key (in order) whose value differs, with both values.
fn first_difference(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Option<(String, Option<String>, Option<String>)> {
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .find(|k| old.get(*k) != new.get(*k))
        .map(|k| (k.clone(), old.get(k).cloned(), new.get(k).cloned()))
}

/// The first field of two JSON objects that differs.
fn first_key_difference(old: &Value, new: &Value) -> Option<String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return (old != new).then(String::new);
    };
    let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    keys.into_iter()
        .find(|k| o.get(*k) != n.get(*k))
        .map(|k| k.to_string())
}

/// `KEY=VALUE` lines as a map (the first `=` splits).
fn env_map(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

/// What differs in the op (`{"run": {...}}`, `{"copy": {...}}`, `{"workdir": {...}}`).
fn op_difference(old: &Value, new: &Value, instruction: &str) -> Option<Reason> {
    if old == new {
        return None;
    }
    // Externally tagged: one key, the op's kind.
    let inner = |v: &Value| {
        v.as_object()
            .and_then(|o| o.iter().next())
            .map(|(_, inner)| inner.clone())
            .unwrap_or(Value::Null)
    };
    let (o, n) = (inner(old), inner(new));
    let field = first_key_difference(&o, &n)?;
    let setting = |name: &str| Reason::Setting {
        name: name.into(),
        old: text(&o[&field]),
        new: text(&n[&field]),
    };
    Some(match field.as_str() {
        "env" => {
            let (oe, ne) = (env_map(&o["env"]), env_map(&n["env"]));
            match first_difference(&oe, &ne) {
                Some((name, old, new)) => Reason::Env {
                    name,
                    old,
                    new,
                    set_by: None,
                },
                // The same variables in another order.
                None => Reason::Option(format!("{instruction} environment")),
            }
        }
        "user" => setting("USER"),
        "workdir" => setting("WORKDIR"),
        "network" => setting("--network"),
        "hostname" => setting("hostname"),
        "mounts" => Reason::Option(format!("{instruction} --mount")),
        "security" => setting("--security"),
        "extra_hosts" => Reason::Option("--add-host".into()),
        "ulimits" => Reason::Option("--ulimit".into()),
        other => Reason::Option(format!("{instruction} {other}")),
    })
}

/// Every file that differs between two listings sorted by path, sorted by path.
pub fn file_changes(old: &[Entry], new: &[Entry]) -> Vec<FileChange> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) => o.path.cmp(&n.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(FileChange::Removed(old[i].path.clone()));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(FileChange::Added(new[j].path.clone()));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (o, n) = (&old[i], &new[j]);
                if o.digest != n.digest {
                    out.push(FileChange::Changed {
                        path: n.path.clone(),
                        old: o.digest.clone(),
                        new: n.digest.clone(),
                    });
                } else if o.mode != n.mode {
                    out.push(FileChange::Mode {
                        path: n.path.clone(),
                        old: o.mode & 0o7777,
                        new: n.mode & 0o7777,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run_material(args: Value, cmd: &str, env: &[&str], network: &str) -> Value {
        json!({
            "instruction": "RUN",
            "created_by": format!("RUN /bin/sh -c {cmd} # buildkit"),
            "op": {"run": {"argv": ["/bin/sh", "-c", cmd], "env": env, "user": "",
                           "workdir": "/", "network": network, "mounts": []}},
            "shell": ["/bin/sh", "-c"],
            "build_args": args,
            "platform": "linux/amd64",
            "source_date_epoch": null,
            "images": {},
        })
    }

    fn inputs<'a>(parent: &'a str, material: &'a Value, text: &'a str) -> Inputs<'a> {
        Inputs {
            parent,
            material,
            content: None,
            text,
            base: None,
            listing: None,
        }
    }

    fn reason(old: &Inputs, new: &Inputs, parent: &Parent) -> String {
        explain(old, new, parent).unwrap().to_string()
    }

    #[test]
    fn names_a_build_arg_before_the_instruction_it_changes() {
        let a = run_material(json!({"VERSION": "1.2"}), "make", &[], "default");
        let b = run_material(json!({"VERSION": "1.3"}), "make", &[], "default");
        let step = Parent::Step("#4".into());
        assert_eq!(
            reason(
                &inputs("p", &a, "RUN make"),
                &inputs("p", &b, "RUN make"),
                &step
            ),
            "--build-arg VERSION changed (1.2 -> 1.3)"
        );
        let c = run_material(json!({}), "make", &[], "default");
        assert_eq!(
            reason(
                &inputs("p", &a, "RUN make"),
                &inputs("p", &c, "RUN make"),
                &step
            ),
            "--build-arg VERSION changed (1.2 -> unset)"
        );
    }

    #[test]
    fn names_the_instruction_as_written() {
        let a = run_material(json!({}), "make", &[], "default");
        let b = run_material(json!({}), "make -j4", &[], "default");
        let step = Parent::Step("#4".into());
        assert_eq!(
            reason(
                &inputs("p", &a, "RUN make"),
                &inputs("p", &b, "RUN make -j4"),
                &step
            ),
            "instruction changed: RUN make -> RUN make -j4"
        );
    }

    #[test]
    fn names_env_network_and_the_previous_step() {
        let step = Parent::Step("#4".into());
        let a = run_material(json!({}), "make", &["PATH=/bin", "A=1"], "default");
        let b = run_material(json!({}), "make", &["PATH=/usr/bin", "A=1"], "default");
        assert_eq!(
            explain(
                &inputs("p", &a, "RUN make"),
                &inputs("q", &b, "RUN make"),
                &step
            ),
            Some(Reason::Env {
                name: "PATH".into(),
                old: Some("/bin".into()),
                new: Some("/usr/bin".into()),
                set_by: None
            })
        );
        let c = run_material(json!({}), "make", &["PATH=/bin", "A=1"], "host");
        assert_eq!(
            reason(
                &inputs("p", &a, "RUN make"),
                &inputs("p", &c, "RUN make"),
                &step
            ),
            "--network changed (default -> host)"
        );
        assert_eq!(
            reason(
                &inputs("p", &a, "RUN make"),
                &inputs("q", &a, "RUN make"),
                &step
            ),
            "previous step #4 was rebuilt"
        );
        assert_eq!(
            explain(
                &inputs("p", &a, "RUN make"),
                &inputs("p", &a, "RUN make"),
                &step
            ),
            None
        );
    }

    #[test]
    fn a_new_base_digest_comes_first() {
        let a = run_material(json!({"V": "1"}), "make", &[], "default");
        let b = run_material(json!({"V": "2"}), "make", &[], "default");
        let base = Parent::Image("debian:bookworm".into());
        assert_eq!(
            reason(
                &inputs(&"a".repeat(64), &a, "RUN make"),
                &inputs(&"b".repeat(64), &b, "RUN make"),
                &base
            ),
            "base image debian:bookworm now resolves to sha256:bbbbbbbbbbbb (was sha256:aaaaaaaaaaaa)"
        );
        // An earlier build from another image: the FROM changed, not what it resolves to.
        let was = "a".repeat(64);
        let other = Inputs {
            base: Some("busybox"),
            ..inputs(&was, &a, "RUN make")
        };
        assert_eq!(
            reason(&other, &inputs(&"b".repeat(64), &b, "RUN make"), &base),
            "instruction changed: FROM busybox -> FROM debian:bookworm"
        );
    }

    fn entry(path: &str, digest: &str) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o100644,
            digest: digest.into(),
        }
    }

    #[test]
    fn names_the_files_that_changed() {
        let m = run_material(json!({}), "make", &[], "default");
        let old = [entry("a", "11"), entry("b", "22"), entry("c", "33")];
        let one = [entry("a", "11"), entry("b", "29"), entry("c", "33")];
        let side = |content, listing| Inputs {
            parent: "p",
            material: &m,
            content: Some(content),
            text: "COPY . /",
            base: None,
            listing: Some(listing),
        };
        let step = Parent::Step("#2".into());
        assert_eq!(
            reason(&side("x", &old), &side("y", &one), &step),
            "context file b changed (sha256:22 -> sha256:29)"
        );
        let many = [
            entry("a", "12"),
            entry("b", "22"),
            entry("b2", "1"),
            entry("d", "4"),
            entry("e", "5"),
        ];
        assert_eq!(
            reason(&side("x", &old), &side("y", &many), &step),
            "5 context files changed: a, b2 (added), c (removed), ..."
        );
        let mut mode = old.clone();
        mode[2].mode = 0o100755;
        assert_eq!(
            reason(&side("x", &old), &side("y", &mode), &step),
            "context file c mode changed (644 -> 755)"
        );
        let no_listing = Inputs {
            listing: None,
            ..side("sha256:0123456789abcdef", &old)
        };
        assert_eq!(
            reason(&side("sha256:fedcba9876543210", &old), &no_listing, &step),
            "sources changed (sha256:fedcba987654 -> sha256:0123456789ab)"
        );
    }

    #[test]
    fn reasons_without_an_earlier_build() {
        assert_eq!(Reason::NoCache.to_string(), "--no-cache");
        assert_eq!(
            Reason::NoEarlierBuild.to_string(),
            "no earlier build of this step"
        );
        let env = Reason::Env {
            name: "PATH".into(),
            old: Some("/a".into()),
            new: None,
            set_by: Some("line 3".into()),
        };
        assert_eq!(env.to_string(), "ENV PATH changed by line 3 (/a -> unset)");
    }
}
