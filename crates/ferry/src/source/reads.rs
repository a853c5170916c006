//! Reads from the source that see at least a given time (DESIGN rule 8).
//!
//! A change stream opened at T0 delivers every change after T0, but a plain majority read may be
//! served from a snapshot older than T0 (the majority point lags the latest write on a real
//! replica set, and a secondary lags further): a write between the two would be in neither the
//! copy nor the stream. A causally consistent session advanced to T0 makes every read in it
//! carry `readConcern: {level: "majority", afterClusterTime: T0}`, so the server waits until its
//! majority snapshot holds T0. A catalog lookup (`listCollections`) carries no read concern and
//! reads the primary's latest catalog, but its reply advances the session's operation time, so a
//! read that follows it in the same session sees at least that catalog.

use anyhow::{Context, Result};
use mongodb::bson::Timestamp;
use mongodb::{Client, ClientSession};

/// A causally consistent session whose reads see at least the source time `at`.
pub async fn session_at(source: &Client, at: Timestamp) -> Result<ClientSession> {
    session(source, Some(at)).await
}

/// A causally consistent session on `client`, whose reads see at least `at` when given.
pub async fn session(client: &Client, at: Option<Timestamp>) -> Result<ClientSession> {
    let mut session = client
        .start_session()
        .causal_consistency(true)
        .await
        .context("starting a session")?;
    if let Some(at) = at {
        session.advance_operation_time(at);
    }
    Ok(session)
}
