//! Claims on cache keys inside one process: the passes of a multi-platform build run at the
//! same time, and a step they share (a stage pinned to `$BUILDPLATFORM`) must run in one of
//! them while the others wait for its cache record, not run it again.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

use super::Store;

/// The keys being built now, and a signal when one is released.
#[derive(Default)]
pub(super) struct Claims {
    held: Mutex<HashSet<String>>,
    released: Condvar,
}

/// A held claim on a key; released (and waiters woken) on drop.
pub struct KeyClaim<'a> {
    claims: &'a Claims,
    key: String,
}

impl Store {
    /// Claim `key` for this thread, waiting while another thread of this process holds it.
    /// Hold it from the cache lookup to the cache record's write: whoever waited then finds
    /// the record. A step holds one key claim at a time; the layers it fetches are claimed
    /// after it, all in one order (exec/extract.rs), so claims cannot deadlock.
    pub fn claim_key(&self, key: &str) -> KeyClaim<'_> {
        let claims = &self.claims;
        let mut held = claims.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.contains(key) {
            held = claims
                .released
                .wait(held)
                .unwrap_or_else(|e| e.into_inner());
        }
        held.insert(key.to_string());
        KeyClaim {
            claims,
            key: key.to_string(),
        }
    }
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        let mut held = self.claims.held.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&self.key);
        self.claims.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_claimed_key_waits_for_its_holder_and_others_do_not() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let _claim = s.claim_key("k");
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 1, "one holder at a time");
        // Another key is not held up by a claim on `k`.
        let _k = s.claim_key("k");
        let _other = s.claim_key("other");
    }
}
