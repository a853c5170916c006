//! The copy states' writes: each collection's registration with its `_id` ranges, the ranges'
//! checkpoints and cuts, and its status, all absolute and sent with the others asked at the same
//! time (`group`).

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, Document};

use super::{CopyStatus, Partition, StateStore};

/// Where a range's copy stands: the greatest `_id` the destination acknowledged, and the
/// range's documents and bytes acknowledged in all.
#[derive(Clone, Debug, PartialEq)]
pub struct CopiedUpTo {
    pub last_id: Bson,
    pub documents: u64,
    pub bytes: u64,
}

impl CopiedUpTo {
    /// The fields that record it for partition `index`.
    fn fields(&self, index: usize) -> Document {
        doc! {
            format!("partitions.{index}.lastId"): self.last_id.clone(),
            format!("partitions.{index}.documents"): self.documents as i64,
            format!("partitions.{index}.bytes"): self.bytes as i64,
        }
    }
}

/// A range not begun, after `lo` (exclusive) up to `hi` (inclusive), as stored.
fn new_range(lo: Option<&Bson>, hi: Option<&Bson>) -> Document {
    doc! { "lo": lo.cloned(), "hi": hi.cloned(), "lastId": Bson::Null, "done": false, "documents": 0_i64, "bytes": 0_i64 }
}

impl StateStore {
    /// Registers a collection to copy in the given `_id` ranges (or restarts its copy for a
    /// new incarnation).
    pub async fn begin_copy(
        &self,
        ns: &str,
        uuid: Option<&Bson>,
        partitions: &[Partition],
    ) -> Result<()> {
        let partitions: Vec<Document> = partitions
            .iter()
            .map(|p| new_range(p.lo.as_ref(), p.hi.as_ref()))
            .collect();
        let state = doc! {
            "_id": ns, "uuid": uuid.cloned(), "status": CopyStatus::Copying.as_str(),
            "partitions": partitions, "copiedDocuments": 0_i64, "copiedBytes": 0_i64,
        };
        self.grouped
            .update(doc! { "q": { "_id": ns }, "u": state, "upsert": true })
            .await
            .with_context(|| format!("recording the copy of {ns}"))
    }

    /// Forgets a collection's copy (its destination copy is gone).
    pub async fn forget_copy(&self, ns: &str) -> Result<()> {
        self.collections
            .delete_one(doc! { "_id": ns })
            .await
            .with_context(|| format!("forgetting the copy of {ns}"))?;
        Ok(())
    }

    /// Records how far partition `index` of `ns` is copied.
    pub async fn copied_up_to(&self, ns: &str, index: usize, at: &CopiedUpTo) -> Result<()> {
        self.set_copy_fields(ns, at.fields(index), "progress").await
    }

    /// Records a cut of partition `index` of `ns` at `cut`: it now ends there, and partition
    /// `taken` (the next free index) holds the rest, up to `hi`. One update, so that a crash
    /// leaves both or neither.
    pub async fn split_partition(
        &self,
        ns: &str,
        index: usize,
        cut: &Bson,
        taken: usize,
        hi: Option<&Bson>,
    ) -> Result<()> {
        let set = doc! {
            format!("partitions.{index}.hi"): cut.clone(),
            format!("partitions.{taken}"): new_range(Some(cut), hi),
        };
        self.set_copy_fields(ns, set, "progress").await
    }

    /// Records that partition `index` of `ns` is copied, with how far it got when its last
    /// batch was not recorded on its own (`last`). When it was the last one left, of `all`
    /// partitions, every partition's documents are written: all of them are marked done and
    /// the collection copied, in one write.
    pub async fn partition_done(
        &self,
        ns: &str,
        index: usize,
        last: Option<&CopiedUpTo>,
        all: Option<usize>,
    ) -> Result<()> {
        let mut set = last.map_or_else(Document::new, |last| last.fields(index));
        set.insert(format!("partitions.{index}.done"), true);
        if let Some(all) = all {
            for other in 0..all {
                set.insert(format!("partitions.{other}.done"), true);
            }
            set.insert("status", CopyStatus::Copied.as_str());
        }
        self.set_copy_fields(ns, set, "progress").await
    }

    /// Waits until every copy-state write asked before has been written, refused or given up
    /// (`group`): a new attempt reads and records after the ended one's last writes.
    pub async fn settle(&self) {
        self.grouped.settle().await;
    }

    pub async fn set_copy_status(&self, ns: &str, status: CopyStatus) -> Result<()> {
        self.set_copy_fields(ns, doc! { "status": status.as_str() }, "status")
            .await
    }

    /// Sets `fields` of the copy state of `ns`, with the other writes asked meanwhile; `what`
    /// they record names the copy's progress or status in an error.
    async fn set_copy_fields(&self, ns: &str, fields: Document, what: &str) -> Result<()> {
        self.grouped
            .update(doc! { "q": { "_id": ns }, "u": { "$set": fields } })
            .await
            .with_context(|| format!("recording the copy {what} of {ns}"))
    }
}
