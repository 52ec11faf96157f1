//! The state of a stage while its steps run: its layers so far, history and cache key.

use std::path::PathBuf;

use crate::image::{Digest, History};
use crate::store::{Store, StoreError};

use super::{BuildError, StepId};

#[derive(Clone, Debug)]
pub struct StageState {
    /// Chain ids of the layers, bottom first.
    pub chains: Vec<Digest>,
    pub diff_ids: Vec<Digest>,
    pub history: Vec<History>,
    /// How many history entries came from the base image (the rest are this build's).
    pub base_history: usize,
    /// The cache key of the last step (or of the base).
    pub key: String,
    /// Per layer of `chains`, the build step that made it (its `#N` and text); none for
    /// the base image's layers. May be shorter than `chains` (the rest are the base's).
    pub layer_steps: Vec<Option<(StepId, String)>>,
    /// The steps that led here, each as (parent key, key), base stages' first, and the
    /// `COPY --link` layers' own records (parent key empty: they follow nothing): what
    /// `--cache-to` exports.
    pub steps: Vec<(String, String)>,
}

impl StageState {
    pub fn scratch() -> StageState {
        StageState {
            chains: Vec::new(),
            diff_ids: Vec::new(),
            history: Vec::new(),
            base_history: 0,
            key: super::base_key(None),
            layer_steps: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// The step with cache key `key` is done: it follows the current key.
    pub fn advance(&mut self, key: String) {
        let parent = std::mem::replace(&mut self.key, key.clone());
        self.steps.push((parent, key));
    }

    pub fn top(&self) -> Option<&Digest> {
        self.chains.last()
    }

    /// The directories to stack for the stage's layers, top-most first, as overlay's
    /// lowerdir wants them: the extracted layers, the oldest of a deep stack flattened
    /// into one snapshot (store/flat.rs).
    pub fn lowers(&self, store: &Store) -> Result<Vec<PathBuf>, BuildError> {
        store.lowers(&self.chains).map_err(|e| match e {
            StoreError::LayerMissing { chain } => BuildError::Invalid(format!(
                "layer {chain} is missing from the store (run `rbuild prune`?)"
            )),
            e => e.into(),
        })
    }
}
