//! Change application's checkpoints: the resume token of the last acknowledged round, the
//! source time it reached, and which incarnation each destination namespace holds.
//!
//! The incarnations are a megabyte of BSON at 20,000 collections, and a checkpoint is recorded
//! every second. So a run writes them with a stamp (the run and its count of changes,
//! `Incarnations::changes`) and then leaves them out while they are unchanged, on the condition
//! that the stored stamp is still its own: another writer's map (a second Ferry on this
//! destination, an earlier run's write landing late) is never paired with this run's token.

use anyhow::Result;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document, Timestamp};

use super::{incarnations_bson, StateStore};
use crate::incarnations::Incarnations;

/// One run's checkpoints: the run, and the count of changes of the incarnations it last wrote.
pub struct Checkpoints {
    run: ObjectId,
    recorded: Option<u64>,
}

impl Checkpoints {
    /// A run that has written no incarnations yet: its first checkpoint writes them.
    pub fn new_run() -> Self {
        Checkpoints {
            run: ObjectId::new(),
            recorded: None,
        }
    }
}

impl StateStore {
    /// Records how far change application has got: the token and time, and the incarnations
    /// unless the stored ones are this run's and unchanged since.
    pub async fn checkpoint(
        &self,
        checkpoints: &mut Checkpoints,
        resume_token: &Bson,
        applied_time: Timestamp,
        incarnations: &Incarnations,
    ) -> Result<()> {
        let changes = incarnations.changes();
        let stamp = doc! { "run": checkpoints.run, "changes": changes as i64 };
        let mut fields = doc! { "resumeToken": resume_token, "appliedTime": applied_time };
        if checkpoints.recorded == Some(changes) {
            let own = doc! { "incarnationsStamp": &stamp };
            if self.set_where(own, fields.clone()).await? {
                return Ok(());
            }
            // Seen again and again: two Ferrys are writing to this destination.
            tracing::warn!(
                "the stored incarnations are not this run's any more; writing them again"
            );
        }
        fields.insert("incarnations", incarnations_bson(incarnations));
        fields.insert("incarnationsStamp", stamp);
        if !self.set_where(Document::new(), fields).await? {
            anyhow::bail!("Ferry's state on the destination is gone (its state database was dropped during the run); start the migration again with --drop");
        }
        checkpoints.recorded = Some(changes);
        Ok(())
    }
}
