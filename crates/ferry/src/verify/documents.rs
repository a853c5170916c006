//! Document comparison that stays cheap and bounded: each side's `_id` range is hashed
//! (xxh3-128 over the raw BSON of its documents in `_id` order) one partition at a time, and only
//! a partition whose hashes differ is read again and merged document by document to name the
//! missing, extra and different `_id`s. Memory holds one document per side, never a key set.
//! During a migration the differences go to the re-check queue instead of the report, since a
//! change may still be in flight.

use std::cmp::Ordering;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::options::{Collation, ReadConcern};
use mongodb::{Client, Cursor};
use xxhash_rust::xxh3::Xxh3;

use super::recheck::RecheckQueue;
use super::report::{Mismatch, NamespaceReport};
use super::store::{Place, VerifyStore};
use crate::id_order;

/// Documents per partition of the source's `_id` space.
const PARTITION: i64 = 10_000;

/// How documents are compared.
#[derive(Clone, Copy, Debug, Default)]
pub struct Comparison {
    /// Compare field sets and values but not field order (MongoDB itself compares in order).
    pub ignore_field_order: bool,
}

/// Where the differences a range comparison finds go.
#[derive(Clone, Copy)]
pub enum Differences<'a> {
    /// Into the report: the clusters are not expected to change under a one-off verification.
    Report,
    /// Into the re-check queue: during a migration a difference may be a change in flight.
    Queue(&'a RecheckQueue),
}

/// Verifies the documents of one collection, resuming after the last finished partition.
#[allow(clippy::too_many_arguments)]
pub async fn verify_documents(
    source: &Client,
    destination: &Client,
    db: &str,
    coll: &str,
    comparison: Comparison,
    store: &VerifyStore,
    differences: Differences<'_>,
    report: &mut NamespaceReport,
) -> Result<()> {
    let ns = format!("{db}.{coll}");
    let mut after = match store.place(&ns, report).await? {
        Place::Done => {
            report.documents_resumed = report.documents_checked;
            return Ok(());
        }
        Place::After(after) => {
            tracing::info!(namespace = %ns, after_id = %after, "resuming the verification");
            report.documents_resumed = report.documents_checked;
            Some(after)
        }
        Place::Start => None,
    };
    loop {
        let lower = after.as_ref().map(id_order::after).unwrap_or_default();
        let source_side =
            hash_range(source, db, coll, lower.clone(), Some(PARTITION), comparison).await?;
        let range = match (&after, &source_side.last_id) {
            (Some(first), Some(last)) => id_order::between(first, last),
            (None, Some(last)) => id_order::up_to(last),
            // Past the source's last document: anything left on the destination is extra.
            (_, None) => lower.clone(),
        };
        let destination_side =
            hash_range(destination, db, coll, range.clone(), None, comparison).await?;
        report.documents_checked += source_side.count;
        if source_side.hash != destination_side.hash || source_side.count != destination_side.count
        {
            let range_on_source = if source_side.last_id.is_some() {
                range.clone()
            } else {
                lower
            };
            let found = descend(
                source,
                destination,
                db,
                coll,
                range_on_source,
                range,
                comparison,
            )
            .await?;
            match differences {
                Differences::Report => found.into_iter().for_each(|(_, m)| report.record(m)),
                Differences::Queue(queue) => {
                    let entries = found.into_iter().map(|(id, _)| (ns.clone(), id)).collect();
                    queue.queue(entries).await?;
                }
            }
        }
        let Some(last) = source_side.last_id else {
            return store.finished_namespace(&ns).await;
        };
        store.finished_partition(&ns, &last, report).await?;
        after = Some(last);
    }
}

/// The hash, count and last `_id` of one `_id` range of one side.
struct RangeHash {
    hash: u128,
    count: u64,
    last_id: Option<Bson>,
}

pub(super) async fn open(
    client: &Client,
    db: &str,
    coll: &str,
    filter: Document,
    limit: Option<i64>,
) -> Result<Cursor<RawDocumentBuf>> {
    let collection = client
        .database(db)
        .collection_with_options::<RawDocumentBuf>(
            coll,
            mongodb::options::CollectionOptions::builder()
                .read_concern(ReadConcern::majority())
                .build(),
        );
    // The simple collation, so that `_id` order is the same on both sides whatever the
    // collection's default collation.
    let mut find = collection
        .find(filter)
        .sort(doc! { "_id": 1 })
        .collation(Collation::builder().locale("simple").build())
        .batch_size(1000);
    if let Some(limit) = limit {
        find = find.limit(limit);
    }
    find.await
        .with_context(|| format!("reading {db}.{coll} for verification"))
}

async fn hash_range(
    client: &Client,
    db: &str,
    coll: &str,
    filter: Document,
    limit: Option<i64>,
    comparison: Comparison,
) -> Result<RangeHash> {
    let mut cursor = open(client, db, coll, filter, limit).await?;
    let mut hasher = Xxh3::new();
    let mut count = 0;
    let mut last = None;
    while let Some(document) = cursor.try_next().await? {
        hasher.update(&comparable_bytes(&document, comparison)?);
        count += 1;
        last = Some(document);
    }
    let last_id = match last {
        Some(document) => Some(
            document
                .get("_id")?
                .context("a document without _id")?
                .to_raw_bson()
                .try_into()?,
        ),
        None => None,
    };
    Ok(RangeHash {
        hash: hasher.digest128(),
        count,
        last_id,
    })
}

/// The bytes compared: the raw document, or with every document's fields sorted by name.
pub(super) fn comparable_bytes(
    document: &RawDocumentBuf,
    comparison: Comparison,
) -> Result<Vec<u8>> {
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

/// Merges both sides of a differing range in `_id` order and returns each mismatch with its
/// `_id` (at most a partition's worth).
async fn descend(
    source: &Client,
    destination: &Client,
    db: &str,
    coll: &str,
    source_range: Document,
    destination_range: Document,
    comparison: Comparison,
) -> Result<Vec<(Bson, Mismatch)>> {
    let mut found = Vec::new();
    let mut a_side = open(source, db, coll, source_range, Some(PARTITION)).await?;
    let mut b_side = open(destination, db, coll, destination_range, None).await?;
    let mut a = a_side.try_next().await?;
    let mut b = b_side.try_next().await?;
    loop {
        let order = match (&a, &b) {
            (None, None) => return Ok(found),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => id_order::compare(id(x)?, id(y)?),
        };
        match order {
            Ordering::Less => {
                let x = a.take().expect("compared");
                found.push((id_of(&x)?, mismatch("missing", &x, Vec::new())?));
                a = a_side.try_next().await?;
            }
            Ordering::Greater => {
                let y = b.take().expect("compared");
                found.push((id_of(&y)?, mismatch("extra", &y, Vec::new())?));
                b = b_side.try_next().await?;
            }
            Ordering::Equal => {
                let (x, y) = (a.take().expect("compared"), b.take().expect("compared"));
                if comparable_bytes(&x, comparison)? != comparable_bytes(&y, comparison)? {
                    let diff = field_diff(&x, &y)?;
                    found.push((id_of(&x)?, mismatch("different", &x, diff)?));
                }
                a = a_side.try_next().await?;
                b = b_side.try_next().await?;
            }
        }
    }
}

fn id(document: &RawDocumentBuf) -> Result<mongodb::bson::RawBsonRef<'_>> {
    document.get("_id")?.context("a document without _id")
}

pub(super) fn id_of(document: &RawDocumentBuf) -> Result<Bson> {
    Ok(id(document)?.to_raw_bson().try_into()?)
}

pub(super) fn mismatch(
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
