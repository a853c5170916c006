//! Changes to one collection sent as one ordered `insert`, `update` or `delete` command, within
//! the server's command limit. An insert refused as a duplicate (its document is there: a replay,
//! or the copy's version) is written, with the inserts after it, as replace-upserts; any other
//! statement the destination refuses is replaced by a read-back of its document, and the batch
//! goes on after it.

use anyhow::{bail, Context, Result};
use mongodb::bson::{Document, RawArrayBuf, RawBson, RawDocumentBuf};
use mongodb::Client;

use super::crud::{self, Command};
use super::refetch::refetch;
use crate::changes::ChangeEvent;
use crate::majority;
use crate::reply::number;
use crate::server_error::DUPLICATE_KEY;

/// Statements per command, and the byte size up to which a batch takes more statements: well
/// under the server's command limit (16 MiB + 16 KiB), which one statement alone may approach.
const MAX_STATEMENTS: usize = 1000;
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// Consecutive statements for one collection and one command, in event order.
pub struct Batch {
    pub db: String,
    pub coll: String,
    pub command: Command,
    statements: Vec<RawDocumentBuf>,
    /// For each statement, the index in `events` of the event it came from.
    owners: Vec<usize>,
    events: Vec<ChangeEvent>,
    bytes: usize,
}

impl Batch {
    pub fn new(db: &str, coll: &str, command: Command) -> Self {
        Self {
            db: db.to_string(),
            coll: coll.to_string(),
            command,
            statements: Vec::new(),
            owners: Vec::new(),
            events: Vec::new(),
            bytes: 0,
        }
    }

    /// Whether `statements` for (`db`, `coll`, `command`) can join this batch: an empty batch
    /// takes anything, others only what keeps them within [`MAX_STATEMENTS`] and [`MAX_BYTES`].
    pub fn accepts(
        &self,
        db: &str,
        coll: &str,
        command: Command,
        statements: &[RawDocumentBuf],
    ) -> bool {
        let bytes: usize = statements.iter().map(|s| s.as_bytes().len()).sum();
        self.db == db
            && self.coll == coll
            && self.command == command
            && (self.statements.is_empty()
                || (self.statements.len() + statements.len() <= MAX_STATEMENTS
                    && self.bytes + bytes <= MAX_BYTES))
    }

    pub fn push(&mut self, event: ChangeEvent, statements: Vec<RawDocumentBuf>) {
        let owner = self.events.len();
        for statement in statements {
            self.bytes += statement.as_bytes().len();
            self.statements.push(statement);
            self.owners.push(owner);
        }
        self.events.push(event);
    }

    /// Sends the batch as ordered commands. An insert refused as a duplicate turns it and the
    /// inserts after it into replace-upserts; another statement the server refuses is replaced
    /// by a refetch of its document, and the batch continues after that event's statements.
    /// Returns the number of refetched documents.
    pub async fn execute(self, source: &Client, destination: &Client) -> Result<u64> {
        let database = destination.database(&self.db);
        let mut batch = self;
        let mut refetched = 0;
        let mut start = 0;
        while start < batch.statements.len() {
            let end = batch.command_end(start);
            let command = batch.command_for(&batch.statements[start..end]);
            let reply = majority::raw_command(&database, command)
                .await
                .with_context(|| {
                    format!(
                        "applying changes to {}.{} on the destination",
                        batch.db, batch.coll
                    )
                })?;
            let Some((failed, code)) = first_write_error(&reply)? else {
                start = end;
                continue;
            };
            let failed = start + failed;
            let owner = batch.owners[failed];
            if batch.command == Command::Insert && code == Some(DUPLICATE_KEY) {
                batch = batch.into_upserts_from(owner)?;
                start = 0;
                continue;
            }
            refetch(source, destination, &batch.events[owner]).await?;
            refetched += 1;
            start = failed;
            while start < batch.statements.len() && batch.owners[start] == owner {
                start += 1;
            }
        }
        Ok(refetched)
    }

    /// The batch's events, in the order it writes them.
    #[cfg(test)]
    pub fn into_events(self) -> Vec<ChangeEvent> {
        self.events
    }

    /// The inserts of this batch's events from `first` on, as replace-upserts.
    fn into_upserts_from(self, first: usize) -> Result<Batch> {
        let mut upserts = Batch::new(&self.db, &self.coll, Command::Update);
        for event in self.events.into_iter().skip(first) {
            let statement = crud::upsert(&event)?;
            upserts.push(event, vec![statement]);
        }
        Ok(upserts)
    }

    /// Where the command sent from statement `start` ends: within [`MAX_STATEMENTS`] and
    /// [`MAX_BYTES`] (with at least one statement). A batch is built within them, but inserts
    /// turned into upserts grow by their keys.
    fn command_end(&self, start: usize) -> usize {
        let mut bytes = 0;
        let mut end = start;
        for statement in &self.statements[start..] {
            bytes += statement.as_bytes().len();
            if end > start && (end - start >= MAX_STATEMENTS || bytes > MAX_BYTES) {
                break;
            }
            end += 1;
        }
        end
    }

    fn command_for(&self, statements: &[RawDocumentBuf]) -> RawDocumentBuf {
        let mut list = RawArrayBuf::new();
        for statement in statements {
            list.push(RawBson::Document(statement.clone()));
        }
        let (name, field) = match self.command {
            Command::Insert => ("insert", "documents"),
            Command::Update => ("update", "updates"),
            Command::Delete => ("delete", "deletes"),
        };
        let mut command = RawDocumentBuf::new();
        command.append(name, self.coll.as_str());
        command.append(field, list);
        command.append("ordered", true);
        command.append("bypassDocumentValidation", true);
        command
    }
}

/// The index and error code of the first failed statement of an ordered write reply.
fn first_write_error(reply: &Document) -> Result<Option<(usize, Option<i32>)>> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok(None);
    };
    let Some(first) = errors.first().and_then(|e| e.as_document()) else {
        return Ok(None);
    };
    let Some(index) = number(first, "index") else {
        bail!("the destination's write error has no statement index: {first}");
    };
    let code = number(first, "code").map(|c| c as i32);
    Ok(Some((index as usize, code)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::testing::event;
    use mongodb::bson::rawdoc;

    #[test]
    fn inserts_turned_into_upserts_are_sent_within_the_byte_bound() {
        // Documents that are mostly their `_id`: as upserts ({q: key, u: document}) a full batch
        // of them nearly doubles, past the server's command limit in one command.
        let id = |n: i32| format!("{n:09}{}", "k".repeat(9000));
        let mut batch = Batch::new("d", "c", Command::Insert);
        let mut n = 0;
        loop {
            let document = rawdoc! { "_id": id(n) };
            if !batch.accepts("d", "c", Command::Insert, std::slice::from_ref(&document)) {
                break;
            }
            let e = ChangeEvent::decode(rawdoc! {
                "operationType": "insert",
                "clusterTime": mongodb::bson::Timestamp { time: 1, increment: 1 },
                "ns": { "db": "d", "coll": "c" },
                "documentKey": { "_id": id(n) },
                "fullDocument": document.clone(),
            })
            .unwrap();
            batch.push(e, vec![document]);
            n += 1;
        }
        let upserts = batch.into_upserts_from(0).unwrap();
        assert_eq!(upserts.statements.len(), n as usize);
        let (mut start, mut commands) = (0, 0);
        while start < upserts.statements.len() {
            let end = upserts.command_end(start);
            let bytes: usize = upserts.statements[start..end]
                .iter()
                .map(|s| s.as_bytes().len())
                .sum();
            assert!(
                end > start && bytes <= MAX_BYTES,
                "{bytes} bytes in one command"
            );
            (start, commands) = (end, commands + 1);
        }
        assert!(commands >= 2, "{commands} commands");
    }

    #[test]
    fn a_batch_never_grows_past_its_byte_bound_with_the_next_statement() {
        let big = |n: usize| rawdoc! { "q": { "_id": 1 }, "u": { "pad": "x".repeat(n) } };
        let mut batch = Batch::new("d", "c", Command::Update);
        let first = vec![big(MAX_BYTES - 1000)];
        assert!(batch.accepts("d", "c", Command::Update, &first));
        batch.push(event("delete", rawdoc! {}), first);
        // A statement that would carry the batch past the bound starts a batch of its own,
        // however large it is.
        let large = vec![big(15 * 1024 * 1024)];
        assert!(!batch.accepts("d", "c", Command::Update, &large));
        assert!(Batch::new("d", "c", Command::Update).accepts("d", "c", Command::Update, &large));
        assert!(batch.accepts("d", "c", Command::Update, &[big(100)]));
    }
}
