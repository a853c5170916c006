//! The source's oplog window: how much history the source still holds before Ferry's resume
//! point falls off its end (DESIGN rule 6: history lost is loud, and seen coming).

use anyhow::Result;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document, Timestamp};
use mongodb::Client;

/// The time of the oldest entry in the source's oplog: the first in natural order. (A hinted
/// natural scan, not a sort: servers that keep the oplog as an ordinary collection would sort
/// all of it.)
pub async fn oldest_entry(source: &Client) -> Result<Option<Timestamp>> {
    let oldest: Vec<Document> = source
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {})
        .hint(mongodb::options::Hint::Keys(doc! { "$natural": 1 }))
        .limit(1)
        .await?
        .try_collect()
        .await?;
    Ok(oldest
        .first()
        .and_then(|entry| entry.get_timestamp("ts").ok()))
}

/// The message of a migration whose resume point the source no longer holds.
pub fn history_lost_message() -> &'static str {
    "the source's oplog no longer holds the changes since Ferry's resume point (change stream history lost), so the destination cannot be brought up to date: no event was skipped, the migration stops here. Cause: the oplog window was shorter than the copy time or the time Ferry was stopped. Remedy: enlarge the source's oplog (replSetResizeOplog, or oplogMinRetentionHours) to comfortably more than the expected copy time, then start over with `ferry migrate ... --drop` (after a reverse: migrate the new cluster into the old one, never the other way, or the writes made since the cutover are lost)"
}
