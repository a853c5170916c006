//! Document changes as absolute, replay-safe writes (DESIGN rule 2): insert and replace become a
//! replace-with-upsert by document key, update becomes `$set`/`$unset` of the changed fields
//! (after truncating shortened arrays), delete becomes a delete by key. Consecutive changes to
//! one collection go to the server as one ordered `update` or `delete` command.
//!
//! An update that cannot apply as a delta (a path that no longer fits the document, ambiguous
//! paths) is replaced by the source's current document, or a delete when it is gone.

use anyhow::{bail, Context, Result};
use mongodb::bson::{rawdoc, Document, RawArrayBuf, RawBson, RawDocument, RawDocumentBuf};
use mongodb::options::ReadConcern;
use mongodb::Client;

use crate::changes::{ChangeEvent, Op};

/// The server command a statement belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Update,
    Delete,
}

/// What one change event writes.
#[derive(Debug, PartialEq)]
pub enum Writes {
    /// Statements of one command, applied in order.
    Statements(Command, Vec<RawDocumentBuf>),
    /// The event cannot be replayed as a delta: copy the document's current state instead.
    Refetch,
    /// The event changes nothing.
    Nothing,
}

/// Translates one CRUD change event into its absolute writes.
pub fn writes_for(event: &ChangeEvent) -> Result<Writes> {
    let key = event.document("documentKey")?;
    match event.op {
        Op::Insert | Op::Replace => {
            let full = event.document("fullDocument")?;
            let mut statement = RawDocumentBuf::new();
            statement.append_ref("q", key);
            statement.append_ref("u", full);
            statement.append("upsert", true);
            Ok(Writes::Statements(Command::Update, vec![statement]))
        }
        Op::Delete => Ok(Writes::Statements(
            Command::Delete,
            vec![{
                let mut statement = RawDocumentBuf::new();
                statement.append_ref("q", key);
                statement.append("limit", 1);
                statement
            }],
        )),
        Op::Update => update_writes(key, event.document("updateDescription")?),
        _ => bail!("{:?} is not a document change", event.op),
    }
}

fn update_writes(key: &RawDocument, description: &RawDocument) -> Result<Writes> {
    let ambiguous = description
        .get_document("disambiguatedPaths")
        .map(|paths| !paths.is_empty())
        .unwrap_or(false);
    if ambiguous {
        return Ok(Writes::Refetch);
    }
    let mut statements = Vec::new();
    if let Ok(truncated) = description.get_array("truncatedArrays") {
        let mut push = RawDocumentBuf::new();
        for entry in truncated {
            let entry = entry?
                .as_document()
                .context("malformed truncatedArrays entry")?;
            let field = entry.get_str("field")?;
            let new_size = match entry.get("newSize")? {
                Some(mongodb::bson::RawBsonRef::Int32(n)) => i64::from(n),
                Some(mongodb::bson::RawBsonRef::Int64(n)) => n,
                _ => bail!("malformed truncatedArrays entry for {field}"),
            };
            push.append(
                field,
                rawdoc! { "$each": RawArrayBuf::new(), "$slice": new_size },
            );
        }
        if !push.is_empty() {
            statements.push(rawdoc! { "q": key.to_owned(), "u": { "$push": push } });
        }
    }
    let mut modifiers = RawDocumentBuf::new();
    if let Ok(updated) = description.get_document("updatedFields") {
        if !updated.is_empty() {
            modifiers.append_ref("$set", updated);
        }
    }
    if let Ok(removed) = description.get_array("removedFields") {
        let mut unset = RawDocumentBuf::new();
        for field in removed {
            let field = field?.as_str().context("malformed removedFields entry")?;
            unset.append(field, 1);
        }
        if !unset.is_empty() {
            modifiers.append("$unset", unset);
        }
    }
    if !modifiers.is_empty() {
        statements.push(rawdoc! { "q": key.to_owned(), "u": modifiers });
    }
    Ok(if statements.is_empty() {
        Writes::Nothing
    } else {
        Writes::Statements(Command::Update, statements)
    })
}

/// Statements per command, and the byte size after which a batch is sent.
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

    /// Whether statements for (`db`, `coll`, `command`) can join this batch.
    pub fn accepts(&self, db: &str, coll: &str, command: Command) -> bool {
        self.db == db
            && self.coll == coll
            && self.command == command
            && self.statements.len() < MAX_STATEMENTS
            && self.bytes < MAX_BYTES
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

    /// Sends the batch as ordered commands. A statement the server refuses is replaced by a
    /// refetch of its document, and the batch continues after that event's statements.
    /// Returns the number of refetched documents.
    pub async fn execute(self, source: &Client, destination: &Client) -> Result<u64> {
        let database = destination.database(&self.db);
        let mut refetched = 0;
        let mut start = 0;
        while start < self.statements.len() {
            let command = self.command_for(&self.statements[start..]);
            let reply = database.run_raw_command(command).await.with_context(|| {
                format!(
                    "applying changes to {}.{} on the destination",
                    self.db, self.coll
                )
            })?;
            if let Ok(concern) = reply.get_document("writeConcernError") {
                bail!(
                    "the destination did not confirm writes to {}.{}: {concern}",
                    self.db,
                    self.coll
                );
            }
            let Some(failed) = first_write_error(&reply)? else {
                break;
            };
            let failed = start + failed;
            let owner = self.owners[failed];
            refetch(source, destination, &self.events[owner]).await?;
            refetched += 1;
            start = failed;
            while start < self.statements.len() && self.owners[start] == owner {
                start += 1;
            }
        }
        Ok(refetched)
    }

    fn command_for(&self, statements: &[RawDocumentBuf]) -> RawDocumentBuf {
        let mut list = RawArrayBuf::new();
        for statement in statements {
            list.push(RawBson::Document(statement.clone()));
        }
        let (name, field) = match self.command {
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

/// The index of the first failed statement of an ordered write reply.
fn first_write_error(reply: &Document) -> Result<Option<usize>> {
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok(None);
    };
    let Some(first) = errors.first().and_then(|e| e.as_document()) else {
        return Ok(None);
    };
    let index = match first.get("index") {
        Some(mongodb::bson::Bson::Int32(i)) => *i as usize,
        Some(mongodb::bson::Bson::Int64(i)) => *i as usize,
        _ => bail!("the destination's write error has no statement index: {first}"),
    };
    Ok(Some(index))
}

/// Makes the destination's copy of the event's document equal to the source's current one.
pub async fn refetch(source: &Client, destination: &Client, event: &ChangeEvent) -> Result<()> {
    let coll = event.coll.as_deref().unwrap_or_default();
    let key: Document = event.document("documentKey")?.try_into()?;
    let current = source
        .database(&event.db)
        .collection_with_options::<RawDocumentBuf>(
            coll,
            mongodb::options::CollectionOptions::builder()
                .read_concern(ReadConcern::majority())
                .build(),
        )
        .find_one(key.clone())
        .await
        .with_context(|| {
            format!(
                "reading the current document of {} from the source",
                event.ns()
            )
        })?;
    let target = destination
        .database(&event.db)
        .collection::<RawDocumentBuf>(coll);
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

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::Timestamp;

    fn event(op: &str, body: RawDocumentBuf) -> ChangeEvent {
        let mut raw = rawdoc! {
            "operationType": op,
            "clusterTime": Timestamp { time: 1, increment: 1 },
            "ns": { "db": "d", "coll": "c" },
            "documentKey": { "_id": 7 },
        };
        for (key, value) in body.iter().map(Result::unwrap) {
            raw.append_ref(key, value);
        }
        ChangeEvent::decode(raw).unwrap()
    }

    #[test]
    fn insert_and_replace_become_upserts_of_the_full_document() {
        let e = event(
            "insert",
            rawdoc! { "fullDocument": { "_id": 7, "b": 1, "a": 2 } },
        );
        assert_eq!(
            writes_for(&e).unwrap(),
            Writes::Statements(
                Command::Update,
                vec![
                    rawdoc! { "q": { "_id": 7 }, "u": { "_id": 7, "b": 1, "a": 2 }, "upsert": true }
                ]
            )
        );
    }

    #[test]
    fn update_truncates_then_sets_and_unsets() {
        let e = event(
            "update",
            rawdoc! { "updateDescription": {
                "updatedFields": { "a.1": 5, "n": "x" },
                "removedFields": ["gone"],
                "truncatedArrays": [{ "field": "a", "newSize": 2 }],
            }},
        );
        assert_eq!(
            writes_for(&e).unwrap(),
            Writes::Statements(
                Command::Update,
                vec![
                    rawdoc! { "q": { "_id": 7 }, "u": { "$push": { "a": { "$each": [], "$slice": 2_i64 } } } },
                    rawdoc! { "q": { "_id": 7 }, "u": { "$set": { "a.1": 5, "n": "x" }, "$unset": { "gone": 1 } } },
                ]
            )
        );
    }

    #[test]
    fn ambiguous_or_empty_updates_are_not_replayed_as_deltas() {
        let ambiguous = event(
            "update",
            rawdoc! { "updateDescription": {
                "updatedFields": { "a.0": 1 }, "removedFields": [], "truncatedArrays": [],
                "disambiguatedPaths": { "a.0": ["a", "0"] },
            }},
        );
        assert_eq!(writes_for(&ambiguous).unwrap(), Writes::Refetch);
        let empty = event(
            "update",
            rawdoc! { "updateDescription": { "updatedFields": {}, "removedFields": [], "truncatedArrays": [] } },
        );
        assert_eq!(writes_for(&empty).unwrap(), Writes::Nothing);
    }

    #[test]
    fn delete_removes_by_key() {
        let e = event("delete", rawdoc! {});
        assert_eq!(
            writes_for(&e).unwrap(),
            Writes::Statements(
                Command::Delete,
                vec![rawdoc! { "q": { "_id": 7 }, "limit": 1 }]
            )
        );
    }
}
