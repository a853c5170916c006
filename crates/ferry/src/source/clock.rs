//! The source's notion of "now", read from its primary's `hello`: the optime of its latest write
//! and of its latest majority-committed write, and which node in which term answered.
//!
//! Lag and the commit point are points on this clock, never on the machine's wall clock. The
//! answering node matters (DESIGN rule 9): a majority time read from one node says nothing about
//! what a change stream on another node has delivered, so a reading only counts for a stream
//! opened on the same primary in the same term (see `changes::position`).

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::options::{ReadPreference, SelectionCriteria};
use mongodb::Client;

/// The node that answered, and its term as primary (`electionId`; absent on a secondary).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub host: String,
    pub election: Option<Bson>,
}

/// The source's latest write and the latest write known to be majority-committed, as one node
/// reported them.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceClock {
    pub last_write: Timestamp,
    pub majority: Timestamp,
    pub node: Node,
}

/// Sends the primary its `hello`, whatever read preference the connection string names.
pub async fn hello(client: &Client) -> mongodb::error::Result<Document> {
    client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        .await
}

/// Reads the source's clock from its primary. Fails when the server is not a replica set member.
pub async fn read(client: &Client) -> Result<SourceClock> {
    let hello = hello(client)
        .await
        .context("asking the source's primary for its latest write time (hello)")?;
    from_hello(&hello)
}

/// The clock in a `hello` reply.
pub fn from_hello(hello: &Document) -> Result<SourceClock> {
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
        node: Node {
            host: hello.get_str("me").unwrap_or_default().to_string(),
            election: hello.get("electionId").cloned(),
        },
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

    #[test]
    fn a_clock_names_the_node_and_term_that_answered() {
        let t = |time| Timestamp { time, increment: 0 };
        let hello = doc! {
            "me": "a:27017",
            "electionId": mongodb::bson::oid::ObjectId::from_bytes([1; 12]),
            "lastWrite": { "opTime": { "ts": t(9) }, "majorityOpTime": { "ts": t(7) } },
        };
        let clock = from_hello(&hello).unwrap();
        assert_eq!((clock.last_write, clock.majority), (t(9), t(7)));
        assert_eq!(clock.node.host, "a:27017");
        assert!(clock.node.election.is_some());
        assert!(from_hello(&doc! { "me": "a:27017" }).is_err());
    }
}
