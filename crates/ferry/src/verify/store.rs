//! Where a verification keeps its place, so that a stopped one continues from its last finished
//! partition: one document per namespace, with the last verified `_id`, the counts so far and
//! whether the namespace is done. A one-off `ferry verify` and the migration's verification keep
//! their places apart. During a migration a catalog change marks a namespace dirty: its
//! documents moved or were replaced wholesale, so it is verified again from the start.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Client, Collection};

use super::report::NamespaceReport;

/// The collection of the state database where a one-off `ferry verify` keeps its place.
pub const STANDALONE: &str = "verification";
/// The collection where the migration's verification (`--verify`) keeps its place.
pub const MIGRATION: &str = "migration.verification";

/// Where the verification of one namespace stands.
#[derive(Debug, PartialEq)]
pub enum Place {
    /// Nothing verified yet (or dirty, which starts it over).
    Start,
    /// Verified up to and including this `_id`.
    After(Bson),
    /// Every document verified.
    Done,
}

#[derive(Clone)]
pub struct VerifyStore {
    collection: Collection<Document>,
}

impl VerifyStore {
    pub fn new(destination: &Client, state_db: &str, collection: &str) -> Self {
        // Written with the client's write concern, a journaled majority (`Endpoint::parse`).
        Self {
            collection: destination.database(state_db).collection(collection),
        }
    }

    /// Where the verification of `ns` stands, with the counts so far restored into `report`.
    /// A dirty namespace is forgotten and starts over.
    pub async fn place(&self, ns: &str, report: &mut NamespaceReport) -> Result<Place> {
        // Forgotten in one step, so that a mark made meanwhile is never lost.
        let dirty = self
            .collection
            .find_one_and_delete(doc! { "_id": ns, "dirty": true })
            .await
            .context("starting a changed namespace's verification over")?;
        if dirty.is_some() {
            return Ok(Place::Start);
        }
        let Some(stored) = self
            .collection
            .find_one(doc! { "_id": ns })
            .await
            .context("reading the verification's place")?
        else {
            return Ok(Place::Start);
        };
        let count = |field: &str| stored.get_i64(field).unwrap_or(0) as u64;
        report.documents_checked = count("checked");
        report.missing = count("missing");
        report.extra = count("extra");
        report.different = count("different");
        Ok(
            match (
                stored.get_bool("done").unwrap_or(false),
                stored.get("after"),
            ) {
                (true, _) => Place::Done,
                (false, Some(after)) => Place::After(after.clone()),
                (false, None) => Place::Start,
            },
        )
    }

    /// Records a finished partition of `ns` ending at `last`.
    pub async fn finished_partition(
        &self,
        ns: &str,
        last: &Bson,
        report: &NamespaceReport,
    ) -> Result<()> {
        self.set(
            ns,
            doc! {
                "after": last.clone(),
                "checked": report.documents_checked as i64,
                "missing": report.missing as i64,
                "extra": report.extra as i64,
                "different": report.different as i64,
            },
        )
        .await
    }

    /// Records that every document of `ns` is verified.
    pub async fn finished_namespace(&self, ns: &str) -> Result<()> {
        self.set(ns, doc! { "done": true }).await
    }

    /// Records that a catalog change moved or replaced the documents of `ns`.
    pub async fn mark_dirty(&self, ns: &str) -> Result<()> {
        self.set(ns, doc! { "dirty": true }).await
    }

    async fn set(&self, ns: &str, fields: Document) -> Result<()> {
        self.collection
            .update_one(doc! { "_id": ns }, doc! { "$set": fields })
            .upsert(true)
            .await
            .context("recording the verification's place")?;
        Ok(())
    }

    /// Forgets every place: the next verification starts from the beginning.
    pub async fn clear(&self) -> Result<()> {
        self.collection
            .drop()
            .await
            .context("clearing the verification's place")
    }
}
