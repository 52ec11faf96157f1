//! Bytes a walk produces for later, kept in the order they came: in memory up to a limit,
//! then in an unnamed temp file, so a million-file context holds no more than the limit
//! in memory (issue 23). The listing `rbuild explain` keeps is spooled as the content
//! digest's walk goes, and the directory listings a build adds to the stat cache until it
//! saves.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::statcache::temp_file;

/// What [`Spool::each`] reads from the temp file at once.
const READ: usize = 1 << 16;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Spool {
    /// The bytes not in the file yet.
    held: Vec<u8>,
    /// The temp file once made, and how many bytes it holds.
    spilled: Option<(File, u64)>,
    /// Where the temp file goes (the system's temp dir without one).
    dir: Option<PathBuf>,
    /// Bytes held in memory at most, but for one push larger than that.
    held_max: usize,
}

impl Spool {
    pub(crate) fn new(dir: Option<PathBuf>, held_max: usize) -> Spool {
        Spool {
            held: Vec::new(),
            spilled: None,
            dir,
            held_max,
        }
    }

    /// Append `bytes`; what was held goes to the temp file first if they would pass the
    /// limit.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if !self.held.is_empty() && self.held.len() + bytes.len() > self.held_max {
            let (file, len) = match &mut self.spilled {
                Some(s) => s,
                None => self.spilled.insert((temp_file(&self.dir)?, 0)),
            };
            file.write_all_at(&self.held, *len)?;
            *len += self.held.len() as u64;
            self.held.clear();
        }
        self.held.extend_from_slice(bytes);
        Ok(())
    }

    /// Every byte pushed, in order, in runs that end where a read does (not where a push
    /// did).
    pub(crate) fn each(
        &self,
        mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if let Some((file, len)) = &self.spilled {
            let mut buf = vec![0u8; READ];
            let mut at = 0;
            while at < *len {
                let n = (*len - at).min(READ as u64) as usize;
                file.read_exact_at(&mut buf[..n], at)?;
                f(&buf[..n])?;
                at += n as u64;
            }
        }
        f(&self.held)
    }

    /// Whether some bytes are in the temp file, and how many are held.
    #[cfg(test)]
    pub(crate) fn state(&self) -> (bool, usize) {
        (self.spilled.is_some(), self.held.len())
    }
}
