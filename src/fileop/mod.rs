//! File operations that write an image root: COPY and ADD (`copy`), run inside the
//! sandbox helper over the step's overlay. Reading the build context (ignore files,
//! walking, digests) is `context`'s; this module only writes.

pub mod copy;

pub use copy::{copy, CopyError, CopyJob, CopySrc, CopyStats};
