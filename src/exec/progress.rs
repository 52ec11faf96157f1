//! Progress events. Library code never prints: the executor reports through this trait and
//! the CLI renders it (tty, plain BuildKit-style lines, or nothing).

use std::time::Duration;

/// A step's number in the build, as BuildKit's `#N`.
pub type StepId = usize;

pub trait Reporter: Send + Sync {
    /// A vertex starts: `label` reads like BuildKit's, e.g. `[build 2/5] RUN make`.
    fn started(&self, id: StepId, label: &str);
    /// The step's result came from the cache.
    fn cached(&self, id: StepId);
    /// The step's result came from a `--cache-from` source (`#N CACHED (remote)`).
    fn cached_remote(&self, id: StepId) {
        self.cached(id)
    }
    /// Output of a running step (RUN stdout+stderr, merged), in arbitrary chunks.
    fn output(&self, id: StepId, bytes: &[u8]);
    /// A line of status for the vertex (`extracting sha256:...`, `writing image ...`).
    fn status(&self, id: StepId, text: &str);
    fn done(&self, id: StepId, elapsed: Duration);
    fn failed(&self, id: StepId, elapsed: Duration, error: &str);
    /// Something for the user outside any vertex (warnings).
    fn warn(&self, text: &str);
    /// How long one phase of a step took (`run`, `snapshot`, `commit`): for `RBUILD_TRACE`
    /// and docs/performance.md. Renderers may ignore it.
    fn phase(&self, _id: StepId, _phase: &'static str, _elapsed: Duration) {}
    /// Why a step that is about to run missed the cache (docs/explain.md).
    fn cache_miss(&self, _id: StepId, _reason: &str) {}
}

/// A reporter that drops everything (library tests, `--progress quiet`).
pub struct Silent;

impl Reporter for Silent {
    fn started(&self, _: StepId, _: &str) {}
    fn cached(&self, _: StepId) {}
    fn output(&self, _: StepId, _: &[u8]) {}
    fn status(&self, _: StepId, _: &str) {}
    fn done(&self, _: StepId, _: Duration) {}
    fn failed(&self, _: StepId, _: Duration, _: &str) {}
    fn warn(&self, _: &str) {}
}
