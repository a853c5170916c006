//! What change application tells the migration's verification: every document it writes is
//! queued for re-check (the first pass may already have compared it), and a catalog change that
//! moves or replaces a collection's documents (create, drop, rename) marks the namespace dirty,
//! so that it is verified again from the start.

use std::collections::HashMap;

use anyhow::{Context, Result};
use mongodb::bson::Bson;
use mongodb::Client;

use super::recheck::{self, RecheckQueue};
use super::store::{self, VerifyStore};
use crate::changes::{ChangeEvent, Op};
use crate::namespace::Namespace;

pub struct ChangeTracker {
    queue: RecheckQueue,
    store: VerifyStore,
    /// Documents written since the last flush, by (namespace, `_id` bytes).
    touched: HashMap<(String, Vec<u8>), Bson>,
}

impl ChangeTracker {
    pub fn new(destination: &Client, state_db: &str) -> Self {
        Self {
            queue: RecheckQueue::new(destination, state_db),
            store: VerifyStore::new(destination, state_db, store::MIGRATION),
            touched: HashMap::new(),
        }
    }

    /// Notes a document change that is being applied.
    pub fn document_changed(&mut self, event: &ChangeEvent) -> Result<()> {
        let id = event
            .document("documentKey")?
            .get("_id")?
            .with_context(|| format!("a change event on {} without a document _id", event.ns()))?;
        let id = Bson::try_from(id.to_raw_bson())?;
        let key = (event.ns(), recheck::id_key(&id)?);
        self.touched.entry(key).or_insert(id);
        Ok(())
    }

    /// Marks the namespaces a catalog change moves or replaces.
    pub async fn catalog_changed(&self, event: &ChangeEvent) -> Result<()> {
        match event.op {
            Op::Create | Op::Drop => self.store.mark_dirty(&event.ns()).await,
            Op::Rename => {
                let (db, coll) = event.rename_target()?;
                self.store.mark_dirty(&event.ns()).await?;
                self.store
                    .mark_dirty(&Namespace::new(&db, &coll).to_string())
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Queues the documents noted since the last flush; called once they are written.
    pub async fn flush(&mut self) -> Result<()> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let entries = self.touched.drain().map(|((ns, _), id)| (ns, id)).collect();
        self.queue.queue(entries).await
    }
}
