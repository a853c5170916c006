//! Document changes as absolute, replay-safe writes (DESIGN rule 2): insert and replace become a
//! replace-with-upsert by document key, update becomes `$set`/`$unset` of the changed fields
//! (after truncating shortened arrays), delete becomes a delete by key. Consecutive changes to
//! one collection go to the server as one ordered `update` or `delete` command.
//!
//! An update that cannot apply as a delta (a path that no longer fits the document, ambiguous
//! paths) is replaced by the source's current document in the event's own collection
//! incarnation, read at or after the event's time (DESIGN rules 8 and 11).

use anyhow::{bail, Context, Result};
use mongodb::bson::{rawdoc, Document, RawArrayBuf, RawBson, RawDocument, RawDocumentBuf};
use mongodb::options::ReadConcern;
use mongodb::Client;

use crate::catalog;
use crate::changes::{ChangeEvent, Op};
use crate::majority;
use crate::source::reads;

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

/// How to read the paths of an update event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paths {
    /// The source reports ambiguous paths in `disambiguatedPaths` (6.1+): a path it does not
    /// list there means what it says.
    Disambiguated,
    /// The source cannot say whether `a.b` is a field named `a.b` or `b` inside `a` (before
    /// 6.1), so any dotted path is ambiguous.
    Ambiguous,
}

/// Translates one CRUD change event into its absolute writes.
pub fn writes_for(event: &ChangeEvent, paths: Paths) -> Result<Writes> {
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
        Op::Update => update_writes(key, event.document("updateDescription")?, paths),
        _ => bail!("{:?} is not a document change", event.op),
    }
}

fn update_writes(key: &RawDocument, description: &RawDocument, paths: Paths) -> Result<Writes> {
    let ambiguous = match paths {
        Paths::Disambiguated => description
            .get_document("disambiguatedPaths")
            .map(|paths| !paths.is_empty())
            .unwrap_or(false),
        Paths::Ambiguous => has_dotted_path(description)?,
    };
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

/// Whether any path an update names (set, removed or truncated) has a dot in it.
fn has_dotted_path(description: &RawDocument) -> Result<bool> {
    if let Ok(updated) = description.get_document("updatedFields") {
        for field in updated {
            if field?.0.contains('.') {
                return Ok(true);
            }
        }
    }
    if let Ok(removed) = description.get_array("removedFields") {
        for field in removed {
            if field?.as_str().is_some_and(|f| f.contains('.')) {
                return Ok(true);
            }
        }
    }
    if let Ok(truncated) = description.get_array("truncatedArrays") {
        for entry in truncated {
            let field = entry?.as_document().and_then(|e| e.get_str("field").ok());
            if field.is_some_and(|f| f.contains('.')) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

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

    /// Sends the batch as ordered commands. A statement the server refuses is replaced by a
    /// refetch of its document, and the batch continues after that event's statements.
    /// Returns the number of refetched documents.
    pub async fn execute(self, source: &Client, destination: &Client) -> Result<u64> {
        let database = destination.database(&self.db);
        let mut refetched = 0;
        let mut start = 0;
        while start < self.statements.len() {
            let command = self.command_for(&self.statements[start..]);
            let reply = majority::raw_command(&database, command)
                .await
                .with_context(|| {
                    format!(
                        "applying changes to {}.{} on the destination",
                        self.db, self.coll
                    )
                })?;
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
            writes_for(&e, Paths::Disambiguated).unwrap(),
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
            writes_for(&e, Paths::Disambiguated).unwrap(),
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
        assert_eq!(
            writes_for(&ambiguous, Paths::Disambiguated).unwrap(),
            Writes::Refetch
        );
        let empty = event(
            "update",
            rawdoc! { "updateDescription": { "updatedFields": {}, "removedFields": [], "truncatedArrays": [] } },
        );
        assert_eq!(
            writes_for(&empty, Paths::Disambiguated).unwrap(),
            Writes::Nothing
        );
    }

    #[test]
    fn before_6_1_any_dotted_path_is_ambiguous() {
        // A 6.0 update event: `a.b` may be the field `a.b` or `b` inside `a`, and the event
        // does not say which.
        let literal = event(
            "update",
            rawdoc! { "updateDescription": { "updatedFields": { "a.b": 1 }, "removedFields": [] } },
        );
        assert_eq!(
            writes_for(&literal, Paths::Ambiguous).unwrap(),
            Writes::Refetch
        );
        let removed = event(
            "update",
            rawdoc! { "updateDescription": { "updatedFields": {}, "removedFields": ["x.y"] } },
        );
        assert_eq!(
            writes_for(&removed, Paths::Ambiguous).unwrap(),
            Writes::Refetch
        );
        // Top-level paths mean what they say in every version.
        let plain = event(
            "update",
            rawdoc! { "updateDescription": { "updatedFields": { "n": 1 }, "removedFields": [] } },
        );
        assert_eq!(
            writes_for(&plain, Paths::Ambiguous).unwrap(),
            writes_for(&plain, Paths::Disambiguated).unwrap()
        );
        assert_ne!(
            writes_for(&plain, Paths::Ambiguous).unwrap(),
            Writes::Refetch
        );
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

    #[test]
    fn delete_removes_by_key() {
        let e = event("delete", rawdoc! {});
        assert_eq!(
            writes_for(&e, Paths::Disambiguated).unwrap(),
            Writes::Statements(
                Command::Delete,
                vec![rawdoc! { "q": { "_id": 7 }, "limit": 1 }]
            )
        );
    }
}
