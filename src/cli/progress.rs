//! Renderers for [`Reporter`]: `plain` (BuildKit's `#N` lines, for CI and logs), `tty`
//! (a live line per step with a spinner and the tail of its output) and `quiet`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

    fn cached_remote(&self, id: StepId) {
        self.emit(&format!("#{id} CACHED (remote)"));
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

    fn cache_miss(&self, id: StepId, reason: &str) {
        self.emit(&format!("#{id} cache miss: {reason}"));
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
    fn cached_remote(&self, id: StepId) {
        self.inner.cached_remote(id)
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
    fn cache_miss(&self, id: StepId, reason: &str) {
        self.inner.cache_miss(id, reason)
    }
}

/// A live view on a terminal: a region at the bottom with a spinner line per running step,
/// its status and the last lines of its output; finished steps, warnings and failures are
/// printed above it and stay.
///
/// The region is redrawn by moving the cursor back to its first row, erasing below and
/// drawing again. That is only safe when the renderer knows how many rows it drew (issue
/// 14: apt's `\r` progress made the old renderer move up too far and erase what the shell
/// had printed before), so every row of the region is one line of text that fits the
/// terminal's width (cut, never wrapped) with no control characters, at most height - 1 of
/// them, and the cursor never goes up more rows than the region had.
pub struct Tty {
    live: Arc<Mutex<Live>>,
}

struct Live {
    steps: BTreeMap<StepId, LiveStep>,
    screen: Screen<Box<dyn Write + Send>>,
    /// Ask the terminal for its size at each redraw (false: the fixed size of a test).
    follow_terminal: bool,
    /// Spinner frame.
    frame: usize,
    /// Set when the reporter is dropped: the region is gone and the ticker stops.
    closed: bool,
}

struct LiveStep {
    label: String,
    started: Instant,
    status: Option<String>,
    tail: VecDeque<String>,
    partial: Vec<u8>,
}

const TAIL_LINES: usize = 6;
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

impl Tty {
    /// The renderer on stderr, redrawn every 100 ms for the spinner and elapsed times.
    pub fn new() -> Tty {
        let (width, height) = terminal_size();
        let tty = Tty::with_sink(Box::new(std::io::stderr()), width, height);
        tty.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .follow_terminal = true;
        let weak = Arc::downgrade(&tty.live);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let Some(live) = weak.upgrade() else { return };
            let mut live = live.lock().unwrap_or_else(PoisonError::into_inner);
            if live.closed {
                return;
            }
            live.frame = live.frame.wrapping_add(1);
            live.show(&[]);
        });
        tty
    }

    /// The renderer writing to `out` for a terminal of `width` x `height`, redrawn on each
    /// event only (tests).
    fn with_sink(out: Box<dyn Write + Send>, width: usize, height: usize) -> Tty {
        Tty {
            live: Arc::new(Mutex::new(Live {
                steps: BTreeMap::new(),
                screen: Screen::new(out, width, height),
                follow_terminal: false,
                frame: 0,
                closed: false,
            })),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Tty {
    /// Leave no region behind: whatever is printed next (the build's last line, an error)
    /// goes where the region was, and the ticker cannot draw over it.
    fn drop(&mut self) {
        let mut live = self.live();
        live.steps.clear();
        live.show(&[]);
        live.closed = true;
    }
}

impl Live {
    /// Print `permanent` above the region and redraw the region.
    fn show(&mut self, permanent: &[String]) {
        if self.closed {
            return;
        }
        if self.follow_terminal {
            let (width, height) = terminal_size();
            self.screen.width = width;
            self.screen.height = height;
        }
        let spinner = SPINNER[self.frame % SPINNER.len()];
        let mut rows = Vec::new();
        for (id, step) in &self.steps {
            rows.push(Row::Step {
                head: format!("{spinner} #{id} {}", step.label),
                elapsed: format!(" {:.1}s", step.started.elapsed().as_secs_f64()),
            });
            if let Some(status) = &step.status {
                rows.push(Row::Text(format!("    {status}")));
            }
            let current = current_line(&step.partial);
            for line in step.tail.iter().chain(current.as_ref()) {
                rows.push(Row::Text(format!("    │ {line}")));
            }
        }
        self.screen.draw(permanent, &rows);
    }

    /// End a step's live rows and print `line` (one or more lines) for good.
    fn finish(&mut self, id: StepId, line: String) {
        self.steps.remove(&id);
        let lines: Vec<String> = line.lines().map(clean).collect();
        self.show(&lines);
    }
}

/// One row of the live region.
enum Row {
    /// A step's line: `head` is cut to leave room for `elapsed`.
    Step {
        head: String,
        elapsed: String,
    },
    Text(String),
}

/// The terminal as the renderer drew it: `drawn` rows of the region, the cursor at the
/// start of the row below them.
struct Screen<W: Write> {
    out: W,
    width: usize,
    height: usize,
    drawn: usize,
}

impl<W: Write> Screen<W> {
    fn new(out: W, width: usize, height: usize) -> Screen<W> {
        Screen {
            out,
            width,
            height,
            drawn: 0,
        }
    }

    /// Erase the region, print `permanent` (clean lines, which may wrap: the renderer never
    /// goes back over them), then draw `rows` as the new region.
    fn draw(&mut self, permanent: &[String], rows: &[Row]) {
        if self.drawn == 0 && permanent.is_empty() && rows.is_empty() {
            return;
        }
        let mut buf = String::new();
        if self.drawn > 0 {
            // Up exactly the rows drawn: back on the region's first row, never above it.
            buf.push_str(&format!("\x1b[{}A", self.drawn));
        }
        // Column 0, erase to the end of the screen.
        buf.push_str("\r\x1b[J");
        for line in permanent {
            buf.push_str(line);
            buf.push('\n');
        }
        // One column spare: a line that fills the last column leaves some terminals with
        // a pending wrap, which a newline would turn into a second row.
        let room = self.width.saturating_sub(1).max(1);
        // One row spare: a region as tall as the screen would scroll its first row out
        // of reach of the cursor.
        let max_rows = self.height.saturating_sub(1).max(1);
        let shown = &rows[..rows.len().min(max_rows)];
        for row in shown {
            let line = match row {
                Row::Step { head, elapsed } => {
                    let head_room = room.saturating_sub(console::measure_text_width(elapsed));
                    let head = console::truncate_str(head, head_room, "…");
                    console::truncate_str(&format!("{head}{elapsed}"), room, "…").into_owned()
                }
                Row::Text(text) => console::truncate_str(text, room, "…").into_owned(),
            };
            buf.push_str(&line);
            buf.push('\n');
        }
        self.drawn = shown.len();
        // A closed stderr is no reason to fail a build.
        let _ = self
            .out
            .write_all(buf.as_bytes())
            .and_then(|()| self.out.flush());
    }
}

/// stderr's size as (width, height); 80 x 24 when it cannot be asked.
fn terminal_size() -> (usize, usize) {
    match console::Term::stderr().size_checked() {
        Some((rows, cols)) if rows > 0 && cols > 0 => (cols as usize, rows as usize),
        _ => (80, 24),
    }
}

/// A line of a step's output as the terminal would finally show it, without anything that
/// moves the cursor: the text after the last `\r` (apt's and dpkg's progress redraws a line
/// with `\r`), escape sequences removed, tabs as spaces, other control characters dropped.
fn clean(line: &str) -> String {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let last = line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
    console::strip_ansi_codes(last)
        .chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// The unfinished last line of a step's output, if it shows anything yet.
fn current_line(partial: &[u8]) -> Option<String> {
    let line = clean(&String::from_utf8_lossy(partial));
    (!line.is_empty()).then_some(line)
}

impl Tty {
    /// End step `id`'s live line with the line `line` makes of its label.
    fn finish_with(&self, id: StepId, line: impl FnOnce(&str) -> String) {
        let mut live = self.live();
        let label = live
            .steps
            .get(&id)
            .map(|s| s.label.clone())
            .unwrap_or_default();
        live.finish(id, line(&label));
    }
}

impl Reporter for Tty {
    fn started(&self, id: StepId, label: &str) {
        let mut live = self.live();
        live.steps.insert(
            id,
            LiveStep {
                label: clean(label),
                started: Instant::now(),
                status: None,
                tail: VecDeque::new(),
                partial: Vec::new(),
            },
        );
        live.show(&[]);
    }

    fn cached(&self, id: StepId) {
        self.finish_with(id, |label| format!("  #{id} {label} CACHED"));
    }

    fn cached_remote(&self, id: StepId) {
        self.finish_with(id, |label| format!("  #{id} {label} CACHED (remote)"));
    }

    fn output(&self, id: StepId, bytes: &[u8]) {
        let mut live = self.live();
        let Some(step) = live.steps.get_mut(&id) else {
            return;
        };
        for line in complete_lines(&mut step.partial, bytes) {
            step.tail.push_back(clean(&line));
            if step.tail.len() > TAIL_LINES {
                step.tail.pop_front();
            }
        }
        // The unfinished line takes one of the rows.
        if current_line(&step.partial).is_some() && step.tail.len() == TAIL_LINES {
            step.tail.pop_front();
        }
        live.show(&[]);
    }

    fn status(&self, id: StepId, text: &str) {
        let mut live = self.live();
        if let Some(step) = live.steps.get_mut(&id) {
            step.status = Some(clean(text));
        }
        live.show(&[]);
    }

    fn done(&self, id: StepId, elapsed: Duration) {
        self.finish_with(id, |label| {
            format!("✔ #{id} {label} {:.1}s", elapsed.as_secs_f64())
        });
    }

    fn failed(&self, id: StepId, elapsed: Duration, error: &str) {
        let mut live = self.live();
        let (label, tail) = match live.steps.get(&id) {
            Some(s) => (
                s.label.clone(),
                s.tail
                    .iter()
                    .cloned()
                    .chain(current_line(&s.partial))
                    .map(|l| format!("\n    │ {l}"))
                    .collect::<String>(),
            ),
            None => Default::default(),
        };
        live.finish(
            id,
            format!(
                "✘ #{id} {label} {:.1}s{tail}\n    {error}",
                elapsed.as_secs_f64()
            ),
        );
    }

    fn warn(&self, text: &str) {
        let lines: Vec<String> = format!("WARNING: {text}").lines().map(clean).collect();
        self.live().show(&lines);
    }

    fn cache_miss(&self, id: StepId, reason: &str) {
        // Dimmed (SGR 2): a note on the step, not news.
        let line = format!("\x1b[2m  #{id} cache miss: {}\x1b[0m", clean(reason));
        self.live().show(&[line]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the renderer wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A terminal emulator showing three lines the shell printed before rbuild started, then
    /// everything the renderer writes.
    struct Terminal {
        parser: vt100::Parser,
        sink: Sink,
        fed: usize,
    }

    const BEFORE: [&str; 3] = ["before 1", "before 2", "before 3"];

    impl Terminal {
        fn new(width: u16, height: u16) -> (Terminal, Tty) {
            let mut parser =
                vt100::Parser::new(height.try_into().unwrap(), width.try_into().unwrap(), 1000);
            parser.process(b"before 1\r\nbefore 2\r\nbefore 3\r\n");
            let sink = Sink::default();
            let tty = Tty::with_sink(Box::new(sink.clone()), width.into(), height.into());
            let terminal = Terminal {
                parser,
                sink,
                fed: 0,
            };
            (terminal, tty)
        }

        /// The visible rows after feeding what was written since the last call. The tty
        /// driver's ONLCR turns `\n` into `\r\n` on the way, as on a real terminal.
        fn rows(&mut self) -> Vec<String> {
            let bytes = self.sink.0.lock().unwrap()[self.fed..].to_vec();
            self.fed += bytes.len();
            let mut translated = Vec::new();
            for b in bytes {
                if b == b'\n' {
                    translated.push(b'\r');
                }
                translated.push(b);
            }
            self.parser.process(&translated);
            let (_, width) = self.parser.screen().size();
            self.parser.screen().rows(0, width.get()).collect()
        }

        /// Every line from the top of the scrollback, wrapped rows joined.
        fn history(&mut self) -> Vec<String> {
            self.rows();
            let screen = self.parser.screen_mut();
            screen.set_scrollback(usize::MAX);
            let scrolled = screen.scrollback();
            let (height, width) = screen.size();
            let mut lines: Vec<String> = screen.rows(0, width.get()).collect();
            screen.set_scrollback(0);
            lines.truncate(scrolled);
            let visible: Vec<String> = screen.rows(0, width.get()).collect();
            lines.extend(visible);
            assert!(lines.len() >= usize::from(height.get()));
            while lines.last().is_some_and(|l| l.is_empty()) {
                lines.pop();
            }
            lines
        }
    }

    /// Regression (issue 14): RUN output with `\r` (apt, dpkg) made the renderer move the
    /// cursor up too far and erase lines printed before rbuild started.
    #[test]
    fn carriage_returns_in_output_never_erase_earlier_lines() {
        let (mut term, tty) = Terminal::new(80, 24);
        tty.started(1, "[1/2] FROM localhost:5000/busybox");
        tty.status(1, "pulling sha256:7c1c5395 (1.07MB)");
        tty.done(1, Duration::from_millis(300));
        let run = r#"[2/2] RUN for i in 1 2 3 4 5 6 7 8; do printf "step $i: 10%%\rstep $i: 50%%\rstep $i: 100%%\n"; sleep 0.3; done"#;
        tty.started(2, run);
        for i in 1..=8usize {
            // As the step writes it: the first update alone, then the rest.
            tty.output(2, format!("step {i}: 10%\r").as_bytes());
            let rows = term.rows();
            assert_eq!(rows[..3], BEFORE, "{rows:#?}");
            // The unfinished line shows under the finished ones.
            let last = rows.iter().rposition(|r| !r.is_empty()).unwrap();
            assert_eq!(rows[last], format!("    │ step {i}: 10%"), "{rows:#?}");
            tty.output(2, format!("step {i}: 50%\rstep {i}: 100%\n").as_bytes());
            let rows = term.rows();
            assert_eq!(rows[..3], BEFORE, "{rows:#?}");
            assert_eq!(rows[3], "✔ #1 [1/2] FROM localhost:5000/busybox 0.3s");
            assert!(rows[4].starts_with("⠋ #2 [2/2] RUN for i in"), "{rows:#?}");
            assert!(rows[4].ends_with('s') && rows[4].chars().count() <= 79);
            let tail: Vec<String> = (i.saturating_sub(5).max(1)..=i)
                .map(|n| format!("    │ step {n}: 100%"))
                .collect();
            assert_eq!(rows[5..5 + tail.len()], tail, "{rows:#?}");
            assert!(
                rows[5 + tail.len()..].iter().all(String::is_empty),
                "{rows:#?}"
            );
        }
        tty.done(2, Duration::from_millis(2400));
        drop(tty);
        assert_eq!(
            term.history(),
            [
                "before 1",
                "before 2",
                "before 3",
                "✔ #1 [1/2] FROM localhost:5000/busybox 0.3s",
            ]
            .into_iter()
            .map(String::from)
            // 101 columns: the line wraps once (permanent lines may).
            .chain(wrap(&format!("✔ #2 {run} 2.4s"), 80))
            .collect::<Vec<_>>()
        );
    }

    /// A cache-miss reason is a permanent line above the step, dimmed (issue 19).
    #[test]
    fn cache_miss_reasons_show_dimmed() {
        let (mut term, tty) = Terminal::new(80, 24);
        tty.started(2, "[2/2] COPY a /a");
        tty.cache_miss(2, "context file a changed (sha256:1 -> sha256:2)");
        let rows = term.rows();
        assert_eq!(
            rows[3], "  #2 cache miss: context file a changed (sha256:1 -> sha256:2)",
            "{rows:#?}"
        );
        assert!(rows[4].starts_with("⠋ #2 [2/2] COPY a /a"), "{rows:#?}");
        let cell = term.parser.screen().cell(3, 4).unwrap();
        assert!(cell.dim(), "the reason is dimmed");
        tty.done(2, Duration::from_millis(100));
    }

    /// Long lines, tabs and colours on a narrow, short terminal: every row of the region is
    /// cut to the width and the region to the height, so the cursor comes back exactly.
    #[test]
    fn long_lines_and_many_steps_fit_the_terminal() {
        let (mut term, tty) = Terminal::new(20, 12);
        for id in 1..=3 {
            tty.started(
                id,
                &format!("[{id}/3] RUN a command longer than the terminal"),
            );
        }
        for n in 0..10 {
            for id in 1..=3 {
                let line = format!("\x1b[31mstep {id}\x1b[0m\tline {n} {}\n", "x".repeat(40));
                tty.output(id, line.as_bytes());
                let rows = term.rows();
                // Pushed up into the scrollback by a growing region, never erased.
                let history = term.history();
                assert_eq!(history[..3], BEFORE, "{history:#?}");
                assert!(rows.iter().all(|r| r.chars().count() <= 19), "{rows:#?}");
                assert!(!rows.iter().any(|r| r.contains('\x1b')), "{rows:#?}");
                assert!((0..12).all(|r| !term.parser.screen().row_wrapped(r)));
            }
        }
        tty.warn("something to know");
        tty.failed(2, Duration::from_secs(1), "exit code: 1");
        for id in [1, 3] {
            tty.done(id, Duration::from_secs(2));
        }
        drop(tty);
        let history = term.history();
        assert_eq!(history[..3], BEFORE, "{history:#?}");
        assert_eq!(history[3], "WARNING: something t");
        assert_eq!(history[4], "o know");
        assert!(
            history[5].starts_with("✘ #2 [2/3] RUN a co"),
            "{history:#?}"
        );
        let done = wrap("✔ #3 [3/3] RUN a command longer than the terminal 2.0s", 20);
        assert_eq!(history[history.len() - done.len()..], done, "{history:#?}");
    }

    /// `text` as rows of `width` columns (one column per char here).
    fn wrap(text: &str, width: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(width).map(|c| c.iter().collect()).collect()
    }

    #[test]
    fn output_lines_are_cleaned_as_a_terminal_would_show_them() {
        assert_eq!(clean("10%\r50%\r100%"), "100%");
        assert_eq!(clean("done\r\n".trim_end_matches('\n')), "done");
        assert_eq!(clean("half\r"), "half");
        assert_eq!(clean("\x1b[1;32mok\x1b[0m\tnext\x07"), "ok next");
    }

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
