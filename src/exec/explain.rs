//! Why each step missed the cache (issue 19, docs/explain.md): on a miss, find the nearest
//! earlier build of the step and let [`plan::explain`] name the first input that differs.
//! One [`Log`] per step context (a stage building at a time) keeps what the metadata file
//! and the next build need.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::progress::{Reporter, StepId};
use super::request::BuildRequest;
use crate::context::{self, IgnoreMatcher, ListedFile, StatCache};
use crate::image::Digest;
use crate::plan::explain::{self as why, Entry, Parent, Reason};
use crate::plan::{self, Stage, Step};
use crate::store::{StepInputs, Store, MAX_LISTING};

/// Hex digits of a file's sha256 a listing keeps: enough to tell two versions apart.
const LISTED_DIGEST: usize = 16;

/// A step's line in `--metadata-file`'s `rbuild.steps` (docs/explain.md).
#[derive(Debug, Clone, Serialize)]
pub struct StepCache {
    /// The `#N` progress showed it under.
    pub step: StepId,
    /// The instruction as written.
    pub instruction: String,
    pub cached: bool,
    /// Why it missed the cache (`null` when cached).
    pub reason: Option<String>,
}

/// What the step context remembers of the stage it is building.
#[derive(Default)]
pub struct Log {
    /// The previous step of the stage, as a reason names it.
    prev: Option<String>,
    /// Whether this stage printed a reason already (plain progress prints the first only).
    printed: bool,
    /// The stage's step keys so far.
    keys: Vec<String>,
    /// Why the config-only steps since the last filesystem step missed: a later step
    /// rebuilt because of them gives this reason, not "previous step ... was rebuilt".
    pending: Option<Reason>,
    /// Every filesystem step of the build so far (for `--metadata-file`).
    pub steps: Vec<StepCache>,
}

/// The names a stage's last build is remembered under: by tag and target, then by
/// Dockerfile and stage.
fn build_names(req: &BuildRequest, stage: &Stage) -> Vec<String> {
    let target = req.target.as_deref().unwrap_or("");
    let mut names: Vec<String> = req
        .tags
        .iter()
        .map(|t| format!("tag {t}\0target {target}\0stage {}", stage.index))
        .collect();
    let file = match &req.dockerfile_path {
        Some(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
        None => req.context.join(&req.dockerfile_name),
    };
    names.push(format!("file {}\0stage {}", file.display(), stage.index));
    names
}

impl Log {
    pub fn start_stage(&mut self) {
        self.prev = None;
        self.printed = false;
        self.keys.clear();
        self.pending = None;
    }

    /// A config-only step came from the cache.
    pub fn config_cached(&mut self) {
        self.pending = None;
    }

    /// A step finished with key `key`; `id` is its `#N` (none for a config-only step).
    pub fn step_done(&mut self, step: &Step, id: Option<StepId>, key: &str) {
        if id.is_some() {
            self.pending = None;
        }
        self.prev = Some(match id {
            Some(id) => format!("#{id}"),
            None => format!("`{}` (line {})", step.text, step.line),
        });
        self.keys.push(key.to_string());
    }

    pub fn cached(&mut self, step: &Step, id: StepId) {
        self.steps.push(StepCache {
            step: id,
            instruction: step.text.clone(),
            cached: true,
            reason: None,
        });
    }

    /// Remember the stage's keys as its last build, for the next build's reasons.
    pub fn finish_stage(&self, store: &Store, req: &BuildRequest, stage: &Stage) {
        for name in build_names(req, stage) {
            // A hint only: failing to keep it costs the next build a reason, not a result.
            let _ = store.put_last_build(&name, &self.keys);
        }
    }

    /// Merge the steps a forked context logged.
    pub fn absorb(&mut self, other: Log) {
        self.steps.extend(other.steps);
        self.steps.sort_by_key(|s| s.step);
    }

    /// Say why `step` (progress `#id`) missed: to the reporter for the stage's first miss or
    /// with `--explain`, and to the metadata log always. A config-only step (no `id`) says
    /// nothing: its reason waits for the next filesystem step.
    pub fn missed(
        &mut self,
        req: &BuildRequest,
        reporter: &dyn Reporter,
        stage: &Stage,
        step: &Step,
        id: Option<StepId>,
        reason: Reason,
    ) {
        let reason = match (reason, &self.pending) {
            (Reason::Previous(_), Some(pending)) => pending.clone(),
            (reason, _) => reason,
        };
        let reason = match reason {
            Reason::Env {
                name,
                old,
                new,
                set_by: None,
            } => Reason::Env {
                set_by: env_setter(stage, step, &name),
                name,
                old,
                new,
            },
            r => r,
        };
        let Some(id) = id else {
            self.pending = Some(reason);
            return;
        };
        let text = reason.to_string();
        if req.explain || !self.printed {
            reporter.cache_miss(id, &text);
            self.printed = true;
        }
        self.steps.push(StepCache {
            step: id,
            instruction: step.text.clone(),
            cached: false,
            reason: Some(text),
        });
    }

    /// Why the step with inputs `new` and key `key` missed: the nearest earlier record is
    /// the last build of the stage (by tag, then by Dockerfile) at this position when it
    /// has the same parent, else the newest step built on the same parent, else the last
    /// build's step at this position whatever its parent.
    #[allow(clippy::too_many_arguments)]
    pub fn reason(
        &self,
        store: &Store,
        req: &BuildRequest,
        stage: &Stage,
        position: usize,
        key: &str,
        new: &StepInputs,
        listing: Option<&Path>,
    ) -> Reason {
        let at_position: Vec<String> = build_names(req, stage)
            .iter()
            .filter_map(|n| store.last_build(n)?.get(position).cloned())
            .collect();
        let records = |k: &String| store.cache_record(k).map(|r| (k.clone(), r));
        let same_parent = at_position
            .iter()
            .filter_map(records)
            .find(|(_, r)| r.inputs.as_ref().is_some_and(|i| i.parent == new.parent));
        let children = || {
            let kids: Vec<_> = store
                .children(&new.parent)
                .iter()
                .rev()
                .filter_map(records)
                .filter(|(_, r)| r.inputs.is_some())
                .collect();
            let pick = |f: &dyn Fn(&StepInputs) -> bool| {
                kids.iter()
                    .find(|(_, r)| r.inputs.as_ref().is_some_and(f))
                    .cloned()
            };
            pick(&|i| i.text == new.text)
                .or_else(|| pick(&|i| i.material["instruction"] == new.material["instruction"]))
                .or_else(|| kids.first().cloned())
        };
        let found = same_parent.or_else(children).or_else(|| {
            at_position
                .iter()
                .filter_map(records)
                .find(|(_, r)| r.inputs.is_some())
        });
        let Some((old_key, old)) = found else {
            return Reason::NoEarlierBuild;
        };
        if old_key == key {
            return Reason::Pruned;
        }
        let old = old.inputs.expect("found records have inputs");
        // Both listings are read only to compare them: a changed COPY that has both.
        let old_listing: Option<Vec<Entry>> = match (&old.content, listing) {
            (Some(c), Some(_)) if old.content != new.content => store.listing(c),
            _ => None,
        };
        let new_listing = old_listing.as_ref().and(listing).and_then(read_listing);
        let parent = self.parent(stage, position);
        why::explain(
            &side(&old, old_listing.as_deref()),
            &side(new, new_listing.as_deref()),
            &parent,
        )
        // Every input the same yet another key: the key's schema changed.
        .unwrap_or_else(|| Reason::Option("the cache key's format".into()))
    }

    fn parent(&self, stage: &Stage, position: usize) -> Parent {
        if position > 0 {
            return Parent::Step(self.prev.clone().unwrap_or_default());
        }
        match &stage.base {
            plan::Base::Scratch => Parent::Scratch,
            plan::Base::Image { reference, .. } => Parent::Image(reference.clone()),
            plan::Base::Stage(i) => Parent::Stage(i.to_string()),
        }
    }
}

/// The inputs of a step's key, as a cache record keeps them.
pub fn inputs(parent: &str, stage: &Stage, step: &Step, content: Option<String>) -> StepInputs {
    let first = stage.steps.first().is_some_and(|s| std::ptr::eq(s, step));
    let base = match &stage.base {
        plan::Base::Image { reference, .. } if first => Some(reference.clone()),
        _ => None,
    };
    StepInputs {
        parent: parent.to_string(),
        material: serde_json::to_value(&step.key).expect("key material serializes"),
        content,
        text: step.text.clone(),
        base,
    }
}

/// A content digest's file listing, written to a temp file in the store as the digest
/// makes it, in the format records keep ([`Store::put_listing`]'s): a million-file context
/// holds no listing in memory (issue 23). None is kept over [`MAX_LISTING`] files.
pub struct ListingWriter {
    out: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
    count: usize,
}

impl ListingWriter {
    /// A writer into a new temp file; one that cannot be made writes nothing (a listing is
    /// a hint).
    pub fn new(store: &Store) -> ListingWriter {
        let out = store.listing_tmp().ok().and_then(|f| {
            let mut out = std::io::BufWriter::new(f);
            out.write_all(b"[").ok()?;
            Some(out)
        });
        ListingWriter { out, count: 0 }
    }

    pub fn push(&mut self, f: ListedFile) {
        self.count += 1;
        if self.count > MAX_LISTING {
            self.out = None;
        }
        let Some(out) = &mut self.out else {
            return;
        };
        let entry = Entry {
            path: f.path(),
            mode: f.mode,
            // The prefix's bytes only, through the hex crate: formatting all 32 bytes one
            // String each was ~15% of a 100k-file cached rebuild (perf, issue 23).
            digest: hex::encode(&f.sha[..LISTED_DIGEST / 2]),
        };
        let sep: &[u8] = if self.count > 1 { b"," } else { b"" };
        let written = out
            .write_all(sep)
            .and_then(|_| serde_json::to_writer(&mut *out, &entry).map_err(Into::into));
        if written.is_err() {
            self.out = None;
        }
    }

    /// The listing's file, complete; `None` if it was too long or could not be written.
    pub fn finish(self) -> Option<tempfile::NamedTempFile> {
        let mut out = self.out?;
        out.write_all(b"]").ok()?;
        out.into_inner().ok()
    }
}

/// What a content digest walked, to walk it again for its listing. The walk that makes the
/// key lists nothing, as the digest is known only at its end: a cache hit then writes no
/// listing (on a 100,000-file context that was ~6 MB written and deleted per rebuild, issue
/// 23). A miss that needs one walks again, the files' digests now in the stat cache.
pub struct ListingSource {
    pub root: PathBuf,
    pub paths: Vec<String>,
    pub ignore: IgnoreMatcher,
    pub excludes: IgnoreMatcher,
    /// What the first walk gave.
    pub digest: Digest,
    /// How many entries it listed.
    pub files: usize,
}

impl ListingSource {
    /// The listing, written to a temp file in `store`; `None` over [`MAX_LISTING`] files or
    /// when the sources changed since the key's walk (that listing would not be the key's).
    pub fn write(
        &self,
        store: &Store,
        stat_cache: &mut StatCache,
    ) -> Option<tempfile::NamedTempFile> {
        if self.files > MAX_LISTING {
            return None;
        }
        let mut files = ListingWriter::new(store);
        let again = context::content_digest(
            &self.root,
            &self.paths,
            &self.ignore,
            &self.excludes,
            true,
            stat_cache,
            &mut |f| files.push(f),
        )
        .ok()?;
        (again == self.digest).then(|| files.finish())?
    }
}

/// A listing [`ListingWriter`] wrote.
fn read_listing(path: &Path) -> Option<Vec<Entry>> {
    let file = std::fs::File::open(path).ok()?;
    serde_json::from_reader(std::io::BufReader::new(file)).ok()
}

/// The ENV step of the stage before `step` that set variable `name` last, as a reason names
/// it; the base image when none did.
fn env_setter(stage: &Stage, step: &Step, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    let setter = stage
        .steps
        .iter()
        .take_while(|s| !std::ptr::eq(*s, step))
        .filter(|s| s.key.instruction == "ENV")
        .filter(|s| {
            s.created_by
                .split_whitespace()
                .any(|w| w.starts_with(&prefix))
        })
        .last();
    match setter {
        Some(s) => Some(format!("line {}", s.line)),
        None => matches!(stage.base, plan::Base::Image { .. }).then(|| "the base image".into()),
    }
}

/// One side of [`why::explain`]'s comparison.
fn side<'a>(i: &'a StepInputs, listing: Option<&'a [Entry]>) -> why::Inputs<'a> {
    why::Inputs {
        parent: &i.parent,
        material: &i.material,
        content: i.content.as_deref(),
        text: &i.text,
        base: i.base.as_deref(),
        listing,
    }
}
