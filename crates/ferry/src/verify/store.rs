//! Where a verification keeps its place, so that a stopped one continues from its last finished
//! partition: one document per namespace in the state database's `verification` collection,
//! cleared when a verification completes.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::WriteConcern;
use mongodb::{Client, Collection};

use super::report::NamespaceReport;

#[derive(Clone)]
pub struct VerifyStore {
    collection: Collection<Document>,
}

impl VerifyStore {
    pub fn new(destination: &Client, state_db: &str) -> Self {
        Self {
            collection: destination.database(state_db).collection_with_options(
                "verification",
                mongodb::options::CollectionOptions::builder()
                    .write_concern(WriteConcern::majority())
                    .build(),
            ),
        }
    }

    /// The last finished partition's `_id` of an interrupted verification of `ns`, with the
    /// counts so far restored into `report`.
    pub async fn resume_point(
        &self,
        ns: &str,
        report: &mut NamespaceReport,
    ) -> Result<Option<Bson>> {
        let Some(stored) = self
            .collection
            .find_one(doc! { "_id": ns })
            .await
            .context("reading the verification's place")?
        else {
            return Ok(None);
        };
        let count = |field: &str| stored.get_i64(field).unwrap_or(0) as u64;
        report.documents_checked = count("checked");
        report.missing = count("missing");
        report.extra = count("extra");
        report.different = count("different");
        Ok(stored.get("after").cloned())
    }

    /// Records a finished partition of `ns` ending at `last`.
    pub async fn finished_partition(
        &self,
        ns: &str,
        last: &Bson,
        report: &NamespaceReport,
    ) -> Result<()> {
        self.collection
            .replace_one(
                doc! { "_id": ns },
                doc! {
                    "_id": ns,
                    "after": last.clone(),
                    "checked": report.documents_checked as i64,
                    "missing": report.missing as i64,
                    "extra": report.extra as i64,
                    "different": report.different as i64,
                },
            )
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
