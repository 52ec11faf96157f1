//! rbuild: a daemonless Dockerfile image builder.
//!
//! The modules follow the data flow of docs/architecture.md, one per arrow:
//! `dockerfile` (text -> AST -> typed instructions) -> `plan` (stage graph, expanded steps,
//! cache keys) -> `exec` (cache lookup, RUN via `sandbox`, COPY/ADD via `fileop`)
//! -> `layer` (upperdir -> tar) -> `store` and `output`. `registry` pulls and pushes.
//! `check` lints the Dockerfile (BuildKit's rules and rbuild's own) beside the build.
//! Only `sandbox` may use `unsafe`.
#![deny(unsafe_code)]

pub mod cache;
pub mod check;
pub mod cli;
pub mod context;
pub mod dockerfile;
pub mod error;
pub mod exec;
pub mod fileop;
pub mod image;
pub mod layer;
pub mod output;
pub mod plan;
pub mod registry;
#[allow(unsafe_code)]
pub mod sandbox;
pub mod store;
