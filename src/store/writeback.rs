//! Early writeback of what an extraction writes, while it writes.
//!
//! Pulled layers are made durable by one `syncfs` before they are recorded
//! (`exec::extract`): design.md "Store", every record is fsynced before it is renamed into
//! place. But that sync started only at the end: the `ci` job's lowers spent 0.5-1.2 s
//! waiting for the disk after their extraction (docs/performance.md, session 21).
//!
//! While a guard lives, a thread calls `syncfs` on the filesystem of a directory again and
//! again, so the disk writes what was written so far while the writing goes on, and the
//! last sync finds little left. Work that ends before [`FIRST_SYNC`] never syncs here.
//!
//! Steps do not use it. Their overlay is mounted `volatile`, and the executor syncs the
//! upper's filesystem while it hashes the snapshot (`exec::executor::commit_upper`). The
//! snapshot's hash is CPU work, so the disk writes in the meantime. A COPY step used this
//! guard until session 23: its syncs slowed the copy itself, and the unmount then waited
//! for the rest. A RUN step never used it: a compiler's or apt's temporary files, written
//! and deleted within the step, would all be forced to disk.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a step runs before its writes are pushed to disk.
const FIRST_SYNC: Duration = Duration::from_millis(100);
/// The pause between two syncs: each `syncfs` also flushes the disk's cache.
const PAUSE: Duration = Duration::from_millis(50);

/// Pushes `dir`'s filesystem to disk while it lives; dropping it stops the thread and waits
/// for a sync in progress (the sync that follows would wait for it anyway).
pub struct Writeback {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Writeback {
    /// Start syncing the filesystem of `dir` (the store's session dir).
    /// Nothing happens if it cannot be opened: the last sync still makes the data durable.
    pub(super) fn start(dir: &Path) -> Writeback {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = File::open(dir).ok().map(|fd| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut wait = FIRST_SYNC;
                while !stopped_within(&stop, wait) {
                    // An error here only means the unmount has it all to do.
                    let _ = rustix::fs::syncfs(&fd);
                    wait = PAUSE;
                }
            })
        });
        Writeback { stop, thread }
    }
}

/// Wait up to `wait` for the stop flag; whether it is set.
fn stopped_within(stop: &(Mutex<bool>, Condvar), wait: Duration) -> bool {
    let (flag, cond) = stop;
    let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
    let (guard, _) = cond
        .wait_timeout_while(guard, wait, |stopped| !*stopped)
        .unwrap_or_else(|e| e.into_inner());
    *guard
}

impl Drop for Writeback {
    fn drop(&mut self) {
        let (flag, cond) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cond.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A step shorter than FIRST_SYNC never syncs: stopping is immediate, so small COPY
    /// steps pay only for starting and stopping a thread.
    #[test]
    fn a_short_step_stops_at_once_without_syncing() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        drop(Writeback::start(dir.path()));
        assert!(start.elapsed() < FIRST_SYNC / 2, "{:?}", start.elapsed());
    }

    /// A longer step has the thread running past its first syncs; dropping it ends the
    /// thread (the drop joins it), so no sync outlives the step.
    #[test]
    fn keeps_syncing_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 1 << 20]).unwrap();
        let wb = Writeback::start(dir.path());
        assert!(wb.thread.is_some());
        std::thread::sleep(FIRST_SYNC + PAUSE * 2);
        drop(wb);
    }

    /// A directory that cannot be opened starts no thread (the unmount still syncs).
    #[test]
    fn a_missing_dir_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wb = Writeback::start(&dir.path().join("gone"));
        assert!(wb.thread.is_none());
    }
}
