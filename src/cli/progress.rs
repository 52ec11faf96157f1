//! Renderers for [`Reporter`]: `plain` (BuildKit's `#N` lines, for CI and logs), `tty`
//! (a live line per step with a spinner and the tail of its output) and `quiet`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exec::{Reporter, StepId};

/// BuildKit's plain progress: `#3 [2/4] RUN make`, `#3 0.512 output`, `#3 DONE 1.2s`.
pub struct Plain {
    state: Mutex<HashMap<StepId, PlainStep>>,
}

struct PlainStep {
    start: Instant,
    partial: Vec<u8>,
}

impl Plain {
    pub fn new() -> Plain {
        Plain {
            state: Mutex::new(HashMap::new()),
        }
    }

    fn emit(&self, text: &str) {
        // A closed stderr is no reason to fail a build.
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    fn flush_partial(&self, id: StepId, step: &mut PlainStep) {
        if !step.partial.is_empty() {
            let line = String::from_utf8_lossy(&step.partial).into_owned();
            self.emit(&format!(
                "#{id} {:.3} {line}",
                step.start.elapsed().as_secs_f64()
            ));
            step.partial.clear();
        }
    }
}

impl Reporter for Plain {
    fn started(&self, id: StepId, label: &str) {
        self.state.lock().unwrap().insert(
            id,
            PlainStep {
                start: Instant::now(),
                partial: Vec::new(),
            },
        );
        self.emit(&format!("\n#{id} {label}"));
    }

    fn cached(&self, id: StepId) {
        self.emit(&format!("#{id} CACHED"));
    }

    fn output(&self, id: StepId, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap();
        let Some(step) = state.get_mut(&id) else {
            return;
        };
        for line in complete_lines(&mut step.partial, bytes) {
            self.emit(&format!(
                "#{id} {:.3} {line}",
                step.start.elapsed().as_secs_f64()
            ));
        }
    }

    fn status(&self, id: StepId, text: &str) {
        self.emit(&format!("#{id} {text}"));
    }

    fn done(&self, id: StepId, elapsed: Duration) {
        if let Some(mut step) = self.state.lock().unwrap().remove(&id) {
            self.flush_partial(id, &mut step);
        }
        self.emit(&format!("#{id} DONE {:.1}s", elapsed.as_secs_f64()));
    }

    fn failed(&self, id: StepId, elapsed: Duration, error: &str) {
        if let Some(mut step) = self.state.lock().unwrap().remove(&id) {
            self.flush_partial(id, &mut step);
        }
        self.emit(&format!(
            "#{id} ERROR {:.1}s: {error}",
            elapsed.as_secs_f64()
        ));
    }

    fn warn(&self, text: &str) {
        self.emit(&format!("WARNING: {text}"));
    }
}

/// Whether `RBUILD_TRACE=1` asks for phase timings on stderr (docs/performance.md).
pub fn trace_enabled() -> bool {
    std::env::var_os("RBUILD_TRACE").is_some_and(|v| v == "1")
}

/// Print a `trace:` line with a phase's duration (only when [`trace_enabled`]).
pub fn trace(what: &str, elapsed: Duration) {
    if trace_enabled() {
        let _ = writeln!(
            std::io::stderr().lock(),
            "trace: {what} {:.1}ms",
            elapsed.as_secs_f64() * 1000.0
        );
    }
}

/// `RBUILD_TRACE=1`: another renderer, plus a `trace:` line per step phase.
pub struct Trace {
    inner: std::sync::Arc<dyn Reporter>,
}

impl Trace {
    pub fn new(inner: std::sync::Arc<dyn Reporter>) -> Trace {
        Trace { inner }
    }
}

impl Reporter for Trace {
    fn started(&self, id: StepId, label: &str) {
        self.inner.started(id, label)
    }
    fn cached(&self, id: StepId) {
        self.inner.cached(id)
    }
    fn output(&self, id: StepId, bytes: &[u8]) {
        self.inner.output(id, bytes)
    }
    fn status(&self, id: StepId, text: &str) {
        self.inner.status(id, text)
    }
    fn done(&self, id: StepId, elapsed: Duration) {
        self.inner.done(id, elapsed)
    }
    fn failed(&self, id: StepId, elapsed: Duration, error: &str) {
        self.inner.failed(id, elapsed, error)
    }
    fn warn(&self, text: &str) {
        self.inner.warn(text)
    }
    fn phase(&self, id: StepId, phase: &'static str, elapsed: Duration) {
        trace(&format!("#{id} {phase}"), elapsed);
    }
}

/// A live view: one spinner line per running step with its elapsed time and last output line.
pub struct Tty {
    multi: MultiProgress,
    bars: Mutex<HashMap<StepId, TtyStep>>,
}

struct TtyStep {
    bar: ProgressBar,
    label: String,
    tail: Vec<String>,
    partial: Vec<u8>,
}

const TAIL_LINES: usize = 6;

impl Tty {
    pub fn new() -> Tty {
        Tty {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn finish(&self, id: StepId, line: String) {
        if let Some(step) = self.bars.lock().unwrap().remove(&id) {
            step.bar.finish_and_clear();
            self.multi.remove(&step.bar);
        }
        let _ = self.multi.println(line);
    }
}

impl Reporter for Tty {
    fn started(&self, id: StepId, label: &str) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                .expect("a valid template")
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
        );
        bar.set_message(format!("#{id} {label}"));
        bar.enable_steady_tick(Duration::from_millis(100));
        let step = TtyStep {
            bar,
            label: label.to_string(),
            tail: Vec::new(),
            partial: Vec::new(),
        };
        self.bars.lock().unwrap().insert(id, step);
    }

    fn cached(&self, id: StepId) {
        let label = self
            .bars
            .lock()
            .unwrap()
            .get(&id)
            .map(|s| s.label.clone())
            .unwrap_or_default();
        self.finish(id, format!("  #{id} {label} CACHED"));
    }

    fn output(&self, id: StepId, bytes: &[u8]) {
        let mut bars = self.bars.lock().unwrap();
        let Some(step) = bars.get_mut(&id) else {
            return;
        };
        for line in complete_lines(&mut step.partial, bytes) {
            step.tail.push(line);
            if step.tail.len() > TAIL_LINES {
                step.tail.remove(0);
            }
        }
        let tail: String = step
            .tail
            .iter()
            .map(|l| format!("\n    │ {}", truncate(l, 100)))
            .collect();
        step.bar.set_message(format!("#{id} {}{tail}", step.label));
    }

    fn status(&self, id: StepId, text: &str) {
        if let Some(step) = self.bars.lock().unwrap().get(&id) {
            step.bar
                .set_message(format!("#{id} {} │ {text}", step.label));
        }
    }

    fn done(&self, id: StepId, elapsed: Duration) {
        let label = self
            .bars
            .lock()
            .unwrap()
            .get(&id)
            .map(|s| s.label.clone())
            .unwrap_or_default();
        self.finish(id, format!("✔ #{id} {label} {:.1}s", elapsed.as_secs_f64()));
    }

    fn failed(&self, id: StepId, elapsed: Duration, error: &str) {
        let (label, tail) = match self.bars.lock().unwrap().get(&id) {
            Some(s) => (
                s.label.clone(),
                s.tail
                    .iter()
                    .map(|l| format!("\n    │ {l}"))
                    .collect::<String>(),
            ),
            None => Default::default(),
        };
        self.finish(
            id,
            format!(
                "✘ #{id} {label} {:.1}s{tail}\n    {error}",
                elapsed.as_secs_f64()
            ),
        );
    }

    fn warn(&self, text: &str) {
        let _ = self.multi.println(format!("WARNING: {text}"));
    }
}

/// Append `bytes` to a step's unfinished line and take out every line now complete
/// (output arrives in arbitrary chunks).
fn complete_lines(partial: &mut Vec<u8>, bytes: &[u8]) -> Vec<String> {
    partial.extend_from_slice(bytes);
    let mut lines = Vec::new();
    while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = partial.drain(..=nl).collect();
        lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
    }
    lines
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::complete_lines;

    #[test]
    fn output_chunks_become_whole_lines() {
        let mut partial = Vec::new();
        assert!(complete_lines(&mut partial, b"hal").is_empty());
        assert_eq!(
            complete_lines(&mut partial, b"f\nnext\nta"),
            ["half", "next"]
        );
        assert_eq!(complete_lines(&mut partial, b"il\n"), ["tail"]);
        assert!(partial.is_empty());
    }
}
