//! The source's notion of "now": the optime of its latest write, read from `hello`.
//!
//! Lag is measured on this clock (source latest write minus latest applied change), never on the
//! machine's wall clock, and the commit barrier is a point on it.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Timestamp};
use mongodb::Client;

/// The source's latest write and the latest write known to be majority-committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceClock {
    pub last_write: Timestamp,
    pub majority: Timestamp,
}

/// Reads the source's clock. Fails when the server is not a replica set member.
pub async fn read(client: &Client) -> Result<SourceClock> {
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .context("asking the source for its latest write time (hello)")?;
    let last_write = hello
        .get_document("lastWrite")
        .context("the source's hello reply has no lastWrite: it is not a replica set member")?;
    let ts = |field: &str| -> Result<Timestamp> {
        last_write
            .get_document(field)
            .and_then(|optime| optime.get_timestamp("ts"))
            .with_context(|| format!("the source's hello reply has no lastWrite.{field}.ts"))
    };
    Ok(SourceClock {
        last_write: ts("opTime")?,
        majority: ts("majorityOpTime")?,
    })
}

/// Whole seconds from `earlier` to `later` on the source's clock (0 when `later` is not later).
pub fn seconds_between(earlier: Timestamp, later: Timestamp) -> u64 {
    u64::from(later.time.saturating_sub(earlier.time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_between_never_goes_negative() {
        let t = |time| Timestamp { time, increment: 1 };
        assert_eq!(seconds_between(t(10), t(15)), 5);
        assert_eq!(seconds_between(t(15), t(10)), 0);
    }
}
