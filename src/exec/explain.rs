//! Why each step missed the cache (issue 19, docs/explain.md): on a miss, find the nearest
//! earlier build of the step and let [`plan::explain`] name the first input that differs.
//! One [`Log`] per step context (a stage building at a time) keeps what the metadata file
//! and the next build need.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::progress::{Reporter, StepId};
use super::request::BuildRequest;
use crate::context::spool::Spool;
use crate::context::ListedFile;
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

/// A content digest's file listing, written to a temp file in the store, in the format
/// records keep ([`Store::put_listing`]'s): a million-file context holds no listing in
/// memory (issue 23). Its one caller, [`ListingSource::write`], never has more than
/// [`MAX_LISTING`] files to write.
struct ListingWriter {
    out: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
    count: usize,
}

impl ListingWriter {
    /// A writer into a new temp file; one that cannot be made writes nothing (a listing is
    /// a hint).
    fn new(store: &Store) -> ListingWriter {
        let out = store.listing_tmp().ok().and_then(|f| {
            let mut out = std::io::BufWriter::new(f);
            out.write_all(b"[").ok()?;
            Some(out)
        });
        ListingWriter { out, count: 0 }
    }

    /// A file's path, mode and the first bytes of its sha256 ([`LISTED_DIGEST`] digits).
    fn push(&mut self, path: &[u8], mode: u32, sha: &[u8]) {
        self.count += 1;
        let Some(out) = &mut self.out else {
            return;
        };
        let entry = Entry {
            path: String::from_utf8_lossy(path).into_owned(),
            mode,
            // The prefix's bytes only, through the hex crate: formatting all 32 bytes one
            // String each was ~15% of a 100k-file cached rebuild (perf, issue 23).
            digest: hex::encode(sha),
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
    fn finish(self) -> Option<tempfile::NamedTempFile> {
        let mut out = self.out?;
        out.write_all(b"]").ok()?;
        out.into_inner().ok()
    }
}

/// What a content digest listed, spooled as the walk that makes the key goes, to be
/// written as a listing if the step misses ([`ListingSource::write`]). The digest, and so
/// the hit, is known only at the walk's end: the spool is compact and mostly in memory,
/// as a cached rebuild drops it (a listing written as JSON during the walk was ~6 MB per
/// rebuild of a 100,000-file context), and a miss writes it without walking the sources
/// again (a second walk was ~8 % of a first build of 100,000 files, issue 23). Each entry:
/// the path's length (u32 LE), the path, the mode (u32 LE), the sha256's first bytes.
pub struct ListingSource {
    /// The entries; `None` once over [`MAX_LISTING`] files, or if a spill failed: no
    /// listing.
    spool: Option<Spool>,
    /// The entries pushed.
    files: usize,
}

/// Bytes of a [`ListingSource`] held in memory before they go to its temp file.
const SPOOL_HELD: usize = 1 << 18;

impl ListingSource {
    /// An empty spool whose spill goes to a temp file in `store`.
    pub fn new(store: &Store) -> ListingSource {
        let dir = store.session_dir().to_path_buf();
        ListingSource {
            spool: Some(Spool::new(Some(dir), SPOOL_HELD)),
            files: 0,
        }
    }

    /// Spool what the digest listed of a file.
    pub fn push(&mut self, f: &ListedFile<'_>) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        self.files += 1;
        if self.files > MAX_LISTING {
            self.spool = None;
            return;
        }
        let parts = f.path_parts();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let pushed = spool.push(&(len as u32).to_le_bytes()).and_then(|()| {
            parts.iter().try_for_each(|part| spool.push(part))?;
            spool.push(&f.mode.to_le_bytes())?;
            spool.push(&f.sha[..LISTED_DIGEST / 2])
        });
        if pushed.is_err() {
            self.spool = None;
        }
    }

    /// The listing, written to a temp file in `store`; `None` over [`MAX_LISTING`] files
    /// or when the spool could not be kept.
    pub fn write(&self, store: &Store) -> Option<tempfile::NamedTempFile> {
        let spool = self.spool.as_ref()?;
        let mut files = ListingWriter::new(store);
        // The entry at the start of `bytes` written, and its length; `None` if it is not
        // all there.
        let mut entry = |bytes: &[u8]| -> Option<usize> {
            let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            let path = bytes.get(4..4 + len)?;
            let mode = bytes.get(4 + len..8 + len)?;
            let sha = bytes.get(8 + len..8 + len + LISTED_DIGEST / 2)?;
            files.push(path, u32::from_le_bytes(mode.try_into().ok()?), sha);
            Some(8 + len + LISTED_DIGEST / 2)
        };
        // A run ends where an entry does only by chance: the tail of one starts the next.
        let mut buf = Vec::new();
        spool
            .each(|run| {
                buf.extend_from_slice(run);
                let mut at = 0;
                while let Some(used) = entry(&buf[at..]) {
                    at += used;
                }
                buf.drain(..at);
                Ok(())
            })
            .ok()?;
        buf.is_empty().then(|| files.finish())?
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{content_digest, IgnoreMatcher, StatCache};
    use sha2::{Digest as _, Sha256};

    /// The listing a spool writes is the digest walk's, entry for entry, whether its
    /// entries stayed in memory or went to its temp file and back in reads that end
    /// inside entries; over [`MAX_LISTING`] files it writes none.
    #[test]
    fn a_spooled_listing_is_what_the_walk_listed() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let ctx = t.path().join("ctx");
        std::fs::create_dir_all(ctx.join("src")).unwrap();
        // Long names: more than SPOOL_HELD bytes of entries, so some are spilled.
        let n = 2 * SPOOL_HELD / 200 + 7;
        let mut want = Vec::new();
        for i in 0..n {
            let name = format!("{i:06}{}", "x".repeat(190 + i % 7));
            let content = format!("file {i}");
            let path = ctx.join("src").join(&name);
            std::fs::write(&path, &content).unwrap();
            let mode = if i % 3 == 0 { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
            want.push(Entry {
                path: format!("src/{name}"),
                mode: 0o100000 | mode,
                digest: hex::encode(&Sha256::digest(content.as_bytes())[..LISTED_DIGEST / 2]),
            });
        }
        let none = IgnoreMatcher::default();
        let mut cache = StatCache::new();
        let mut spooled = |source: &str, spool: &mut ListingSource| {
            let sources = [source.to_string()];
            content_digest(&ctx, &sources, &none, &none, true, &mut cache, &mut |f| {
                spool.push(&f)
            })
            .unwrap();
        };
        let mut spool = ListingSource::new(&store);
        spooled("src", &mut spool);
        let (spilled, held) = spool.spool.as_ref().unwrap().state();
        assert!(spilled && held > 0);
        let written = spool.write(&store).expect("a listing");
        let got = read_listing(written.path()).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((&g.path, g.mode, &g.digest), (&w.path, w.mode, &w.digest));
        }

        // One file over the limit: no listing.
        let mut over = ListingSource::new(&store);
        over.files = MAX_LISTING;
        spooled("src/000000*", &mut over);
        assert!(over.write(&store).is_none());
    }
}
