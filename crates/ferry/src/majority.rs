//! Commands Ferry writes with: every one carries majority, journaled write concern, and an
//! `ok: 1` reply with a `writeConcernError` is an error ([`WriteConcernFailed`]).
//!
//! The driver applies the client's write concern to its own helpers (`insert_many`,
//! `replace_one`, ...) and reports their write concern errors, but a command run through
//! `run_command` carries no write concern unless it says so, and the driver hands its reply back
//! as it came, `writeConcernError` and all. During an election such a write may be rolled back,
//! so treating the reply as success would let a checkpoint name a write that is later lost
//! (DESIGN rule 5).
//!
//! Every write Ferry sends is idempotent (DESIGN rule 2), so one that fails transiently (a
//! write concern error, a dropped connection, a stepdown) is sent again in place a few times
//! before the error reaches the migration, which then retries from its last checkpoint. A retried
//! command may find its work done: a rename whose source is gone, an index that exists; callers
//! already treat those answers as done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::options::{Acknowledgment, WriteConcern};
use mongodb::Database;

use crate::server_error::{self, WriteConcernFailed};

/// How often a write is sent in place before a transient failure is returned, and the first
/// pause between attempts (doubled after each).
const ATTEMPTS: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Writes this process sent again after a transient failure.
static RESENT: AtomicU64 = AtomicU64::new(0);

/// How many writes this process sent again after a transient failure (faults ridden out in
/// place, shown beside the migration's own retries).
pub fn resent() -> u64 {
    RESENT.load(Ordering::Relaxed)
}

/// How long a write waits for a majority before the server answers with a write concern error
/// (transient, so the write is sent again): a destination that lost its majority makes the
/// migration retry, and fail when the retry window runs out, rather than wait forever.
pub const MAJORITY_TIMEOUT: Duration = Duration::from_secs(60);

/// The write concern of the driver's own write helpers: journaled majority, within
/// [`MAJORITY_TIMEOUT`], set on every client whatever its connection string asks.
pub fn write_concern() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .w_timeout(MAJORITY_TIMEOUT)
        .build()
}

/// Runs a write command with majority write concern; fails on a write concern error.
pub async fn command(database: &Database, mut command: Document) -> Result<Document> {
    command.insert(
        "writeConcern",
        doc! { "w": "majority", "j": true, "wtimeout": MAJORITY_TIMEOUT.as_millis() as i64 },
    );
    retried(|| async { Ok(database.run_command(command.clone()).await?) }).await
}

/// [`command`] for a command built as raw BSON (change application's batches).
pub async fn raw_command(database: &Database, mut command: RawDocumentBuf) -> Result<Document> {
    command.append(
        "writeConcern",
        mongodb::bson::rawdoc! { "w": "majority", "j": true, "wtimeout": MAJORITY_TIMEOUT.as_millis() as i64 },
    );
    retried(|| async { Ok(database.run_raw_command(command.clone()).await?) }).await
}

/// Runs an administrative command that waits for a majority by itself and refuses a write
/// concern (`setUserWriteBlockMode`), sent again in place on a transient failure.
pub async fn self_confirming(database: &Database, command: Document) -> Result<Document> {
    retried(|| async { Ok(database.run_command(command.clone()).await?) }).await
}

/// Drops collection `name`; one that is not there counts as dropped.
pub async fn drop(database: &Database, name: &str) -> Result<()> {
    match command(database, doc! { "drop": name }).await {
        Err(e) if server_error::already(&e, server_error::Already::Dropped) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Sends a write until it is confirmed, a non-transient error comes back, or the attempts run
/// out.
async fn retried<F, Fut>(send: F) -> Result<Document>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Document>>,
{
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        let sent = send().await.and_then(|reply| {
            confirmed(&reply)?;
            Ok(reply)
        });
        match sent {
            Err(e) if attempt < ATTEMPTS && server_error::is_transient(&e) => {
                RESENT.fetch_add(1, Ordering::Relaxed);
                let reason = crate::explain::error(&e);
                tracing::warn!(reason = %reason, attempt, "retrying a write: {reason}");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Fails when a reply carries a `writeConcernError`.
fn confirmed(reply: &Document) -> Result<(), WriteConcernFailed> {
    match reply.get_document("writeConcernError") {
        Ok(concern) => Err(WriteConcernFailed {
            code: concern.get_i32("code").unwrap_or_default(),
            message: concern.get_str("errmsg").unwrap_or_default().to_string(),
        }),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_error;

    #[test]
    fn a_write_concern_error_in_an_ok_reply_is_a_transient_failure() {
        assert!(confirmed(&doc! { "ok": 1, "n": 1 }).is_ok());
        let stepped_down = doc! {
            "ok": 1, "n": 1,
            "writeConcernError": { "code": 189, "codeName": "PrimarySteppedDown", "errmsg": "stepped down" },
        };
        let error = anyhow::Error::from(confirmed(&stepped_down).unwrap_err());
        assert_eq!(server_error::code_of(&error), Some(189));
        assert!(server_error::is_transient(&error));
        let unsatisfiable = doc! {
            "ok": 1,
            "writeConcernError": { "code": 100, "codeName": "UnsatisfiableWriteConcern", "errmsg": "not enough data-bearing nodes" },
        };
        let error = anyhow::Error::from(confirmed(&unsatisfiable).unwrap_err());
        assert!(
            !server_error::is_transient(&error),
            "a setting to fix, not a fault"
        );
    }
}
