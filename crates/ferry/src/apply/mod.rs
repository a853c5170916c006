//! Change application: routes each decoded change event to its absolute effect on the
//! destination. Document changes go to parallel lanes by document (`lanes`), batched in source
//! order; a catalog change (DDL) and a transaction are barriers: everything before is written
//! first, then the catalog change alone or the transaction's events, then what follows.

mod batch;
mod crud;
mod ddl;
mod lanes;
mod reconcile;
mod refetch;

use std::collections::HashSet;

use anyhow::Result;
use mongodb::Client;

use crate::changes::{ChangeEvent, Op};
use crate::filter::NamespaceFilter;
use crate::id_order::Strings;
use crate::incarnations::Incarnations;
use crate::progress::{EventCounts, Progress};
use crate::verify::ChangeTracker;

pub use crud::Paths;
use crud::Writes;
pub use reconcile::Reconcile;

/// Applies change events to the destination.
pub struct Applier {
    source: Client,
    destination: Client,
    filter: NamespaceFilter,
    incarnations: Incarnations,
    progress: Progress,
    /// With `--verify`: tells the verification what changed.
    verification: Option<ChangeTracker>,
    /// Parallel lanes for document changes.
    lanes: usize,
    /// How the source reports update paths.
    paths: Paths,
    /// Namespaces whose default collation is not the simple one.
    collated: HashSet<String>,
}

impl Applier {
    pub fn new(
        source: Client,
        destination: Client,
        filter: NamespaceFilter,
        incarnations: Incarnations,
        progress: Progress,
    ) -> Self {
        Self {
            source,
            destination,
            filter,
            incarnations,
            progress,
            verification: None,
            lanes: 1,
            paths: Paths::Disambiguated,
            collated: HashSet::new(),
        }
    }

    /// Reads update paths as a source of this kind reports them.
    pub fn with_paths(mut self, paths: Paths) -> Self {
        self.paths = paths;
        self
    }

    /// The namespaces whose default collation is not the simple one: strings that may be equal
    /// under it are routed alike.
    pub fn with_collated(mut self, namespaces: HashSet<String>) -> Self {
        self.collated = namespaces;
        self
    }

    /// Writes document changes in `count` parallel lanes.
    pub fn with_lanes(mut self, count: usize) -> Self {
        self.lanes = count;
        self
    }

    /// Queues every document written for re-check, and marks namespaces a catalog change moves.
    pub fn with_verification(mut self, tracker: ChangeTracker) -> Self {
        self.verification = Some(tracker);
        self
    }

    pub fn incarnations(&self) -> &Incarnations {
        &self.incarnations
    }

    /// Applies events in order and returns once the destination has acknowledged all of them.
    pub async fn apply(&mut self, events: Vec<ChangeEvent>) -> Result<()> {
        let mut counts = EventCounts::default();
        let mut lanes = lanes::Lanes::new(self.lanes);
        // The transaction whose events the lanes hold (`None`: events outside transactions).
        let mut transaction = None;
        for event in events {
            count(&mut counts, &event.op);
            if !event.op.is_crud() {
                counts.refetched += lanes.flush(&self.source, &self.destination).await?;
                self.apply_catalog_change(&event).await?;
                // After the change is applied, so that a verification starting the namespace
                // over sees it changed.
                if let Some(tracker) = &self.verification {
                    tracker.catalog_changed(&event).await?;
                }
                continue;
            }
            let Some(coll) = event.coll.clone() else {
                continue;
            };
            if !self.filter.wants(&event.db, &coll)
                || !self
                    .incarnations
                    .applies(&event.ns(), event.collection_uuid.as_ref())
            {
                continue;
            }
            if let Some(tracker) = &mut self.verification {
                tracker.document_changed(&event)?;
            }
            let writes = crud::writes_for(&event, self.paths)?;
            if writes == Writes::Nothing {
                continue;
            }
            let this_transaction = event.transaction();
            if this_transaction != transaction {
                counts.refetched += lanes.flush(&self.source, &self.destination).await?;
                transaction = this_transaction;
            }
            let strings = if self.collated.contains(&event.ns()) {
                Strings::Collated
            } else {
                Strings::Simple
            };
            lanes.push(event, writes, strings)?;
        }
        counts.refetched += lanes.flush(&self.source, &self.destination).await?;
        if let Some(tracker) = &mut self.verification {
            tracker.flush().await?;
        }
        self.progress.update(|s| {
            s.events.insert += counts.insert;
            s.events.update += counts.update;
            s.events.replace += counts.replace;
            s.events.delete += counts.delete;
            s.events.ddl += counts.ddl;
            s.events.refetched += counts.refetched;
        });
        Ok(())
    }
}

fn count(counts: &mut EventCounts, op: &Op) {
    match op {
        Op::Insert => counts.insert += 1,
        Op::Update => counts.update += 1,
        Op::Replace => counts.replace += 1,
        Op::Delete => counts.delete += 1,
        _ => counts.ddl += 1,
    }
}

/// Change events for the apply tests.
#[cfg(test)]
mod testing {
    use mongodb::bson::{rawdoc, RawDocumentBuf, Timestamp};

    use crate::changes::ChangeEvent;

    /// An `op` event on `d.c` for `_id` 7, with the extra fields of `body`.
    pub fn event(op: &str, body: RawDocumentBuf) -> ChangeEvent {
        let mut raw = rawdoc! {
            "operationType": op,
            "clusterTime": Timestamp { time: 1, increment: 1 },
            "ns": { "db": "d", "coll": "c" },
            "documentKey": { "_id": 7 },
        };
        for (key, value) in body.iter().map(Result::unwrap) {
            raw.append_ref(key, value);
        }
        ChangeEvent::decode(raw).unwrap()
    }
}
