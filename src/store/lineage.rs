//! Where a cache miss looks for an earlier build of the same step (issue 19): small
//! indexes under `cache-index/`, beside the cache records, so that no lookup scans them.
//!
//! - `children/<h>`: the keys of the steps built on parent key `<h>`, newest last (a
//!   handful: older ones drop off).
//! - `builds/<h>`: the step keys of the last build of a stage, where `<h>` names the stage
//!   by tag and target, or by Dockerfile path and stage.
//! - `listings/<h>`: the files a content digest covered, once per digest (prune removes
//!   those no cache record names).
//!
//! All of it is a hint: a missing or unreadable file means "no earlier build", never an
//! error for the build.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Result, Store, StoreError};
use crate::image::Digest;

/// How many children of one parent are remembered.
const CHILDREN: usize = 16;

/// Listings over this many files are not kept: a reason then names no file.
pub const MAX_LISTING: usize = 100_000;

impl Store {
    fn index_path(&self, kind: &str, name: &str) -> PathBuf {
        // Hashed: parent keys and stage names are not all safe file names.
        let h = Digest::of(name.as_bytes());
        self.root.join("cache-index").join(kind).join(h.hex())
    }

    fn write_hint(&self, path: &std::path::Path, bytes: &[u8]) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        }
        self.write_file_atomic(path, bytes)
    }

    /// Remember that step `key` was built on `parent`.
    pub fn add_child(&self, parent: &str, key: &str) -> Result<()> {
        let mut keys = self.children(parent);
        if keys.last().is_some_and(|k| k == key) {
            return Ok(());
        }
        keys.retain(|k| k != key);
        keys.push(key.to_string());
        let skip = keys.len().saturating_sub(CHILDREN);
        let text: String = keys[skip..].iter().map(|k| format!("{k}\n")).collect();
        self.write_hint(&self.index_path("children", parent), text.as_bytes())
    }

    /// The keys of steps built on `parent`, newest last.
    pub fn children(&self, parent: &str) -> Vec<String> {
        std::fs::read_to_string(self.index_path("children", parent))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Remember the step keys of the last build of the stage `name` names; written only
    /// when they changed, so a cached rebuild writes nothing.
    pub fn put_last_build(&self, name: &str, keys: &[String]) -> Result<()> {
        if self.last_build(name).as_deref() == Some(keys) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(keys).expect("strings serialize");
        self.write_hint(&self.index_path("builds", name), &bytes)
    }

    pub fn last_build(&self, name: &str) -> Option<Vec<String>> {
        Store::read_json(&self.index_path("builds", name))
            .ok()
            .flatten()
    }

    /// Keep the file listing of content digest `content`, once.
    pub fn put_listing<T: Serialize>(&self, content: &str, listing: &[T]) -> Result<()> {
        let path = self.index_path("listings", content);
        if listing.len() > MAX_LISTING || path.exists() {
            return Ok(());
        }
        self.write_hint(
            &path,
            &serde_json::to_vec(listing).expect("listing serializes"),
        )
    }

    /// A temp file in the store to write a listing into as it is made, in the format
    /// [`Store::put_listing`] writes; [`Store::keep_listing`] keeps it.
    pub fn listing_tmp(&self) -> Result<tempfile::NamedTempFile> {
        self.listings_made
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tempfile::NamedTempFile::new_in(&self.session)
            .map_err(StoreError::io("creating temp file in", &self.session))
    }

    /// Keep the listing written to `file` (see [`Store::listing_tmp`]) as the listing of
    /// content digest `content`, once: linked, not copied, so no listing is read back.
    pub fn keep_listing(&self, content: &str, file: &std::path::Path) -> Result<()> {
        let path = self.index_path("listings", content);
        if path.exists() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        }
        match std::fs::hard_link(file, &path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(StoreError::io("linking", &path)(e))
            }
            _ => Ok(()),
        }
    }

    /// Where the listing of content digest `content` is kept, if it is.
    pub fn listing_path(&self, content: &str) -> Option<PathBuf> {
        Some(self.index_path("listings", content)).filter(|p| p.exists())
    }

    /// Remove the listings of content digests no record in `keep` names (prune).
    pub(crate) fn prune_listings(&self, keep: &BTreeSet<String>) -> Result<()> {
        let dir = self.root.join("cache-index").join("listings");
        let kept: BTreeSet<PathBuf> = keep
            .iter()
            .map(|c| self.index_path("listings", c))
            .collect();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("listing", &dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(StoreError::io("listing", &dir))?.path();
            if !kept.contains(&path) {
                std::fs::remove_file(&path).map_err(StoreError::io("removing", &path))?;
            }
        }
        Ok(())
    }

    /// How many listings this process began writing ([`Store::listing_tmp`]).
    pub fn listings_made(&self) -> usize {
        self.listings_made
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn listing<T: DeserializeOwned>(&self, content: &str) -> Option<Vec<T>> {
        Store::read_json(&self.index_path("listings", content))
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn children_keep_the_newest_few() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.children("p").is_empty());
        for i in 0..20 {
            store.add_child("p", &format!("k{i}")).unwrap();
        }
        store.add_child("p", "k5").unwrap();
        let kids = store.children("p");
        assert_eq!(kids.len(), 16);
        assert_eq!(kids.last().unwrap(), "k5");
        assert_eq!(kids[0], "k4");
    }

    #[test]
    fn last_builds_and_listings_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_build("tag app:1 stage 0"), None);
        let keys = vec!["a".to_string(), "b".to_string()];
        store.put_last_build("tag app:1 stage 0", &keys).unwrap();
        assert_eq!(store.last_build("tag app:1 stage 0"), Some(keys));
        store.put_listing("sha256:x", &["f".to_string()]).unwrap();
        store.put_listing("sha256:y", &["g".to_string()]).unwrap();
        // A listing written out as it was made is kept as it is, once.
        let tmp = store.listing_tmp().unwrap();
        std::fs::write(tmp.path(), "[\"h\"]").unwrap();
        store.keep_listing("sha256:z", tmp.path()).unwrap();
        store.keep_listing("sha256:x", tmp.path()).unwrap();
        assert_eq!(
            store.listing::<String>("sha256:z"),
            Some(vec!["h".to_string()])
        );
        assert_eq!(
            store.listing::<String>("sha256:x"),
            Some(vec!["f".to_string()])
        );
        assert_eq!(
            store.listing::<String>("sha256:x"),
            Some(vec!["f".to_string()])
        );
        store
            .prune_listings(&["sha256:y".to_string()].into())
            .unwrap();
        assert_eq!(store.listing::<String>("sha256:x"), None);
        assert!(store.listing::<String>("sha256:y").is_some());
    }
}
