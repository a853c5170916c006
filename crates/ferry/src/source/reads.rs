//! Reads from the source that see at least a given time (DESIGN rule 8).
//!
//! A change stream opened at T0 delivers every change after T0, but a plain majority read may be
//! served from a snapshot older than T0 (the majority point lags the latest write on a real
//! replica set, and a secondary lags further): a write between the two would be in neither the
//! copy nor the stream. A causally consistent session advanced to T0 makes every read in it
//! carry `readConcern: {level: "majority", afterClusterTime: T0}`, so the server waits until its
//! majority snapshot holds T0. Because every reply advances the session's operation time, a read
//! that follows a catalog lookup in the same session also sees the catalog that lookup saw.

use anyhow::{Context, Result};
use mongodb::bson::Timestamp;
use mongodb::{Client, ClientSession};

/// A causally consistent session whose reads see at least the source time `at`.
pub async fn session_at(source: &Client, at: Timestamp) -> Result<ClientSession> {
    let mut session = source
        .start_session()
        .causal_consistency(true)
        .await
        .context("starting a session on the source")?;
    session.advance_operation_time(at);
    Ok(session)
}
