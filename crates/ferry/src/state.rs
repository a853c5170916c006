//! The migration's durable state, kept on the destination in its own database (`--state-db`,
//! default `__ferry`) and never mixed with user data. Written with majority write concern, and a
//! checkpoint only ever names changes the destination has acknowledged (DESIGN rule 5).

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, DateTime, Document, Timestamp};
use mongodb::options::WriteConcern;
use mongodb::{Client, Collection};

use crate::progress::{Phase, State};

const STATE_ID: &str = "migration";

/// The state document's collection on the destination.
#[derive(Clone)]
pub struct StateStore {
    collection: Collection<Document>,
}

/// Where change application stands: the resume token of the last acknowledged batch and the
/// source time it reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub resume_token: Bson,
    pub applied_time: Timestamp,
}

impl StateStore {
    pub fn new(destination: &Client, state_db: &str) -> Self {
        let collection = destination
            .database(state_db)
            .collection_with_options(
                "migration",
                mongodb::options::CollectionOptions::builder()
                    .write_concern(WriteConcern::majority())
                    .build(),
            );
        Self { collection }
    }

    /// Whether a migration has left its state on this destination.
    pub async fn exists(&self) -> Result<bool> {
        Ok(self
            .collection
            .find_one(doc! { "_id": STATE_ID })
            .await
            .context("reading Ferry's state on the destination")?
            .is_some())
    }

    /// Drops the state database: the destination forgets any earlier migration.
    pub async fn clear(&self) -> Result<()> {
        self.collection
            .client()
            .database(self.collection.namespace().db.as_str())
            .drop()
            .await
            .context("dropping Ferry's state database on the destination")
    }

    /// Records the migration's start: the plan it runs and the change stream's starting point.
    pub async fn start(&self, plan: Document, start_token: Bson) -> Result<()> {
        self.collection
            .insert_one(doc! {
                "_id": STATE_ID,
                "state": State::Running.as_str(),
                "phase": Phase::Validating.as_str(),
                "plan": plan,
                "startToken": start_token,
                "startedAt": DateTime::now(),
            })
            .await
            .context("recording the migration's start on the destination")?;
        Ok(())
    }

    /// Records a state or phase change (and the error of a FAILED migration).
    pub async fn set_state(&self, state: State, phase: Phase, error: Option<&str>) -> Result<()> {
        self.set(doc! {
            "state": state.as_str(),
            "phase": phase.as_str(),
            "error": error,
        })
        .await
    }

    /// Records how far change application has got.
    pub async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<()> {
        self.set(doc! {
            "resumeToken": checkpoint.resume_token.clone(),
            "appliedTime": checkpoint.applied_time,
        })
        .await
    }

    async fn set(&self, mut fields: Document) -> Result<()> {
        fields.insert("updatedAt", DateTime::now());
        self.collection
            .update_one(doc! { "_id": STATE_ID }, doc! { "$set": fields })
            .await
            .context("writing Ferry's state on the destination")?;
        Ok(())
    }
}
