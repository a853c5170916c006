//! How two versions of a document are compared, and how a difference is described: shared by
//! the partition pass (`documents`) and the re-check queue (`recheck`).

use anyhow::{Context, Result};
use mongodb::bson::{Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::Client;

use super::report::Mismatch;

/// How documents are compared.
#[derive(Clone, Copy, Debug, Default)]
pub struct Comparison {
    /// Compare field sets and values but not field order (MongoDB itself compares in order).
    pub ignore_field_order: bool,
}

/// The two sides a verification compares, and how.
#[derive(Clone, Copy)]
pub struct Sides<'a> {
    pub source: &'a Client,
    pub destination: &'a Client,
    /// The source is read at or after this time (the commit point, for a migration's final
    /// pass); the destination's own writes are always visible to it.
    pub source_at: Option<Timestamp>,
    pub comparison: Comparison,
}

impl Sides<'_> {
    /// One side's client, and the time its reads must see.
    pub fn side(&self, on_source: bool) -> (&Client, Option<Timestamp>) {
        if on_source {
            (self.source, self.source_at)
        } else {
            (self.destination, None)
        }
    }
}

/// The bytes compared: the raw document, or with every document's fields sorted by name.
pub fn comparable_bytes(document: &RawDocumentBuf, comparison: Comparison) -> Result<Vec<u8>> {
    if !comparison.ignore_field_order {
        return Ok(document.as_bytes().to_vec());
    }
    let sorted = sort_fields(Bson::Document(Document::try_from(document.as_ref())?));
    let Bson::Document(sorted) = sorted else {
        unreachable!("a document stays a document")
    };
    Ok(mongodb::bson::to_vec(&sorted)?)
}

fn sort_fields(value: Bson) -> Bson {
    match value {
        Bson::Document(document) => {
            let mut fields: Vec<(String, Bson)> = document
                .into_iter()
                .map(|(k, v)| (k, sort_fields(v)))
                .collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Bson::Document(fields.into_iter().collect())
        }
        Bson::Array(items) => Bson::Array(items.into_iter().map(sort_fields).collect()),
        other => other,
    }
}

pub fn id(document: &RawDocumentBuf) -> Result<mongodb::bson::RawBsonRef<'_>> {
    document.get("_id")?.context("a document without _id")
}

pub fn id_of(document: &RawDocumentBuf) -> Result<Bson> {
    Ok(id(document)?.to_raw_bson().try_into()?)
}

pub fn mismatch(
    kind: &'static str,
    document: &RawDocumentBuf,
    diff: Vec<String>,
) -> Result<Mismatch> {
    let id = id_of(document)?;
    Ok(Mismatch {
        kind,
        id: id.into_relaxed_extjson(),
        diff,
    })
}

/// A short, field-level description of how two versions of a document differ.
pub fn field_diff(source: &RawDocumentBuf, destination: &RawDocumentBuf) -> Result<Vec<String>> {
    let a = Document::try_from(source.as_ref())?;
    let b = Document::try_from(destination.as_ref())?;
    let mut lines = Vec::new();
    for (key, value) in &a {
        match b.get(key) {
            None => lines.push(format!(
                "{key}: missing on the destination (source {})",
                short(value)
            )),
            Some(other) if other != value => {
                let (mut a, mut b) = (short(value), short(other));
                if a == b {
                    // Same text, different types (an int32 against an int64, say).
                    a = format!("{a} ({:?})", value.element_type());
                    b = format!("{b} ({:?})", other.element_type());
                }
                lines.push(format!("{key}: source {a}, destination {b}"))
            }
            _ => {}
        }
    }
    for (key, value) in &b {
        if !a.contains_key(key) {
            lines.push(format!("{key}: only on the destination ({})", short(value)));
        }
    }
    if lines.is_empty() {
        let order = |d: &Document| d.keys().cloned().collect::<Vec<_>>().join(", ");
        lines.push(format!(
            "field order differs: source [{}], destination [{}]",
            order(&a),
            order(&b)
        ));
    }
    Ok(lines)
}

fn short(value: &Bson) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::rawdoc;

    #[test]
    fn field_diff_names_changed_missing_extra_and_reordered_fields() {
        let a = rawdoc! { "_id": 1, "x": 1, "y": "keep", "gone": true };
        let b = rawdoc! { "_id": 1, "x": 2, "y": "keep", "new": 0 };
        assert_eq!(
            field_diff(&a, &b).unwrap(),
            [
                "x: source 1, destination 2",
                "gone: missing on the destination (source true)",
                "new: only on the destination (0)",
            ]
        );
        let reordered = rawdoc! { "_id": 1, "y": "keep", "x": 1, "gone": true };
        assert_eq!(
            field_diff(&a, &reordered).unwrap(),
            ["field order differs: source [_id, x, y, gone], destination [_id, y, x, gone]"]
        );
    }

    #[test]
    fn field_diff_shows_types_when_values_print_alike() {
        let a = rawdoc! { "_id": 1, "n": 5_i64 };
        let b = rawdoc! { "_id": 1, "n": 5_i32 };
        assert_eq!(
            field_diff(&a, &b).unwrap(),
            ["n: source 5 (Int64), destination 5 (Int32)"]
        );
    }

    #[test]
    fn order_insensitive_comparison_sorts_nested_fields() {
        let a = rawdoc! { "_id": 1, "n": { "b": 1, "a": [ { "d": 1, "c": 2 } ] } };
        let b = rawdoc! { "n": { "a": [ { "c": 2, "d": 1 } ], "b": 1 }, "_id": 1 };
        let loose = Comparison {
            ignore_field_order: true,
        };
        assert_eq!(
            comparable_bytes(&a, loose).unwrap(),
            comparable_bytes(&b, loose).unwrap()
        );
        assert_ne!(
            comparable_bytes(&a, Comparison::default()).unwrap(),
            comparable_bytes(&b, Comparison::default()).unwrap()
        );
    }
}
