//! The index builds: a collection's indexes are built (relaxed) as soon as its copy ends,
//! beside the copies still running (the copy stage starts them), so that the last collection's
//! copy is followed only by its own build. The index-building stage then builds whatever the
//! copy did not (a copy that ended before a restart).

use anyhow::Result;

use super::Migration;
use crate::background;
use crate::catalog::indexes::{self, Build};
use crate::catalog::{self, CollectionSpec, Kind};
use crate::state::CopyStatus;

/// Collections whose indexes the index-building stage builds at the same time.
const STAGE_CONCURRENCY: usize = 4;

impl Migration<'_> {
    /// Builds one copied collection's indexes (relaxed) and, when its copy is `recorded` in
    /// the state, records it indexed.
    pub(super) async fn index_collection(
        &self,
        spec: &CollectionSpec,
        recorded: bool,
    ) -> Result<()> {
        let ns = spec.ns();
        let count = spec
            .indexes
            .iter()
            .filter(|i| !catalog::is_implicit_index(i))
            .count() as u64;
        self.progress.update(|s| {
            if let Some(c) = s.collections.get_mut(&ns) {
                c.phase = "indexing";
                c.indexes_building = count;
            }
        });
        indexes::build(
            &self.destination,
            &spec.db,
            &spec.name,
            &spec.indexes,
            Build::Relaxed,
        )
        .await?;
        self.progress.update(|s| {
            if let Some(c) = s.collections.get_mut(&ns) {
                c.phase = "indexed";
                c.done = true;
                c.indexes_built = count;
                c.indexes_building = 0;
            }
        });
        if recorded {
            self.store.set_copy_status(&ns, CopyStatus::Indexed).await?;
        }
        self.progress.checkpointed();
        Ok(())
    }

    /// Builds the indexes of every collection whose copy did not build them.
    pub(super) async fn build_indexes(&self, specs: &[CollectionSpec]) -> Result<()> {
        // By name: with thousands of collections, a scan of the states for each would not do.
        let stored: std::collections::HashMap<String, _> = self
            .store
            .collections()
            .await?
            .into_iter()
            .map(|c| (c.ns.clone(), c))
            .collect();
        // By position: a closure over borrowed specs cannot be proven `Send` for every
        // lifetime, which spawning the migration needs.
        let left: Vec<(usize, bool)> = specs
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == Kind::Collection)
            .filter_map(|(at, spec)| {
                let state = stored.get(&spec.ns()).filter(|c| c.uuid == spec.uuid);
                match state {
                    Some(c) if c.status == CopyStatus::Indexed => None,
                    state => Some((at, state.is_some())),
                }
            })
            .collect();
        let left = left
            .into_iter()
            .map(|(at, recorded)| self.index_collection(&specs[at], recorded));
        background::at_most(STAGE_CONCURRENCY, left).await
    }
}
