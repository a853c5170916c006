//! Reading a document back from the source when its change cannot be replayed as a delta: in
//! the event's own collection incarnation, at or after the event's time (DESIGN rules 8 and 11).

use anyhow::{Context, Result};
use mongodb::bson::{Document, RawDocumentBuf};
use mongodb::options::ReadConcern;
use mongodb::Client;

use crate::catalog;
use crate::changes::ChangeEvent;
use crate::source::reads;

/// Makes the destination's copy of the event's document equal to the source's current one in
/// the event's collection incarnation, read at or after the event's time. A document the
/// incarnation no longer holds is deleted; when the incarnation itself is gone (dropped, or
/// renamed to another database) nothing is written: its drop or rename is still to come in the
/// stream, and a read by name could reach another collection.
pub async fn refetch(source: &Client, destination: &Client, event: &ChangeEvent) -> Result<()> {
    let key: Document = event.document("documentKey")?.try_into()?;
    let Some(current) = read_current(source, event, &key).await? else {
        return Ok(());
    };
    let target = destination
        .database(&event.db)
        .collection::<RawDocumentBuf>(event.coll.as_deref().unwrap_or_default());
    match current {
        Some(document) => {
            target
                .replace_one(key, document)
                .upsert(true)
                .bypass_document_validation(true)
                .await
                .with_context(|| {
                    format!("replacing a document of {} on the destination", event.ns())
                })?;
        }
        None => {
            target.delete_one(key).await.with_context(|| {
                format!("deleting a document of {} on the destination", event.ns())
            })?;
        }
    }
    Ok(())
}

/// How often a read is tried again when the collection is renamed while it is read.
const RENAMED_DURING_READ_RETRIES: usize = 5;

/// The source's current document with `key` in the event's collection incarnation: `None` when
/// the incarnation is gone, `Some(None)` when it no longer holds the document. Events without a
/// collection UUID (views' and pre-6.0 sources') are read by name.
async fn read_current(
    source: &Client,
    event: &ChangeEvent,
    key: &Document,
) -> Result<Option<Option<RawDocumentBuf>>> {
    let mut session = reads::session_at(source, event.cluster_time).await?;
    let named = event.coll.clone().unwrap_or_default();
    for _ in 0..RENAMED_DURING_READ_RETRIES {
        let name = match &event.collection_uuid {
            Some(uuid) => match catalog::name_of(source, &mut session, &event.db, uuid).await? {
                Some(name) => name,
                None => return Ok(None),
            },
            None => named.clone(),
        };
        let current = source
            .database(&event.db)
            .collection_with_options::<RawDocumentBuf>(
                &name,
                mongodb::options::CollectionOptions::builder()
                    .read_concern(ReadConcern::majority())
                    .build(),
            )
            .find_one(key.clone())
            .session(&mut session)
            .await
            .with_context(|| {
                format!(
                    "reading the current document of {} from the source",
                    event.ns()
                )
            })?;
        let Some(uuid) = &event.collection_uuid else {
            return Ok(Some(current));
        };
        // Attributed only if the name still held the incarnation after the read.
        if catalog::name_of(source, &mut session, &event.db, uuid).await? == Some(name) {
            return Ok(Some(current));
        }
    }
    anyhow::bail!(
        "the collection of {} was renamed while its document was read, {RENAMED_DURING_READ_RETRIES} times",
        event.ns()
    )
}
