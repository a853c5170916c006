//! Document changes as absolute, replay-safe writes (DESIGN rule 2): replace becomes a
//! replace-with-upsert by document key, insert an insert of the full document (which the batch
//! turns into that upsert when the document is there already: a replay, or the copy's version),
//! update becomes `$set`/`$unset` of the changed fields (after truncating shortened arrays),
//! delete becomes a delete by key. An update that cannot apply as a delta (ambiguous paths) asks
//! for a read-back (`refetch`) instead.

use anyhow::{bail, Context, Result};
use mongodb::bson::{rawdoc, RawArrayBuf, RawDocument, RawDocumentBuf};

use crate::changes::{ChangeEvent, Op};

/// The server command a statement belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Inserts of full documents: an upsert's effect when the document is absent, at a fraction
    /// of its cost on the server.
    Insert,
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
        Op::Insert => Ok(Writes::Statements(
            Command::Insert,
            vec![event.document("fullDocument")?.to_owned()],
        )),
        Op::Replace => Ok(Writes::Statements(Command::Update, vec![upsert(event)?])),
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

/// The replace-with-upsert of an insert or replace event's full document, by its key.
pub fn upsert(event: &ChangeEvent) -> Result<RawDocumentBuf> {
    let mut statement = RawDocumentBuf::new();
    statement.append_ref("q", event.document("documentKey")?);
    statement.append_ref("u", event.document("fullDocument")?);
    statement.append("upsert", true);
    Ok(statement)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::testing::event;

    #[test]
    fn insert_becomes_an_insert_and_replace_an_upsert_of_the_full_document() {
        let full = rawdoc! { "fullDocument": { "_id": 7, "b": 1, "a": 2 } };
        assert_eq!(
            writes_for(&event("insert", full.clone()), Paths::Disambiguated).unwrap(),
            Writes::Statements(Command::Insert, vec![rawdoc! { "_id": 7, "b": 1, "a": 2 }])
        );
        let upsert =
            rawdoc! { "q": { "_id": 7 }, "u": { "_id": 7, "b": 1, "a": 2 }, "upsert": true };
        assert_eq!(
            writes_for(&event("replace", full.clone()), Paths::Disambiguated).unwrap(),
            Writes::Statements(Command::Update, vec![upsert.clone()])
        );
        assert_eq!(super::upsert(&event("insert", full)).unwrap(), upsert);
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
