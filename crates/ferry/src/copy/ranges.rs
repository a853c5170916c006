//! What a collection's `_id` ranges are made of: how far a collection reaches (its last `_id`,
//! or a sample of its `_id`s when their type has no value to cut by), where between two `_id`s
//! to cut, and what is left of a range once part of it is copied. Bounds are sorted in
//! MongoDB's cross-type `_id` order (`id_order`), which the range reader's simple collation
//! shares.

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::options::{CollectionOptions, ReadConcern};
use mongodb::Client;

use std::sync::Arc;

use crate::catalog::CollectionSpec;
use crate::id_order;
use crate::source::reads;
use crate::state::Partition;

/// How far a collection's `_id`s reach, as far as is known: what tells how much of a running
/// range is left and where to cut it (`split`).
#[derive(Clone, Debug, Default)]
pub enum Reach {
    /// Not looked at yet.
    #[default]
    Unknown,
    /// Its last `_id`, a number or an ObjectId: ranges are cut by value.
    Last(Bson),
    /// `_id`s drawn at random, in order: ranges are cut at the sample's middle.
    Sample(Arc<Vec<Bson>>),
}

/// Documents per range a large collection is cut into before its copy, and the most ranges it
/// gets then: on servers that sort a read's documents before answering (the test server does),
/// a bounded range keeps every read small.
const RANGE_DOCUMENTS: u64 = 16_384;
const MAX_RANGES: u64 = 64;
/// Sampled `_id`s per range bound, where `_id`s have no value to cut by.
const SAMPLES_PER_RANGE: u64 = 20;

/// How many `_id` ranges a collection of about `documents` is cut into before its copy. Capped
/// collections are one range (read in natural order), and so are collated ones: their reads use
/// the simple collation, which cannot use the `_id` index, so every range would scan the whole
/// collection.
pub fn range_count(spec: &CollectionSpec, documents: u64) -> u64 {
    let count = documents.div_ceil(RANGE_DOCUMENTS).min(MAX_RANGES);
    if spec.is_capped() || spec.is_collated() || count < 2 {
        1
    } else {
        count
    }
}

/// The server's count of a collection's documents from its metadata (no scan on a real
/// server); `None` when it cannot say.
pub async fn estimated_count(source: &Client, spec: &CollectionSpec) -> Option<u64> {
    source
        .database(&spec.db)
        .collection::<Document>(&spec.name)
        .estimated_document_count()
        .await
        .ok()
}

/// What a collection holds by its server's metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Size {
    pub documents: u64,
    /// The documents' total BSON size; `None` when the server did not say.
    pub bytes: Option<u64>,
}

/// A collection's count and data size from `$collStats`' storage statistics (metadata on a real
/// server, as the count is), or its count alone where the server does not give those (a view
/// of buckets, or a role without `collStats`); `None` when it cannot say either.
pub async fn estimated_size(source: &Client, spec: &CollectionSpec) -> Option<Size> {
    let stats = source
        .database(&spec.db)
        .collection::<Document>(&spec.name)
        .aggregate([doc! { "$collStats": { "storageStats": {} } }])
        .await;
    let stats: Option<Document> = match stats {
        Ok(mut cursor) => cursor.try_next().await.ok().flatten(),
        Err(_) => None,
    };
    let storage = stats
        .as_ref()
        .and_then(|s| s.get_document("storageStats").ok());
    let number = |field| storage.and_then(|s| crate::reply::number(s, field));
    match (number("count"), number("size")) {
        (Some(documents), bytes) => Some(Size {
            documents: documents as u64,
            bytes: bytes.map(|b| b as u64),
        }),
        _ => estimated_count(source, spec).await.map(|documents| Size {
            documents,
            bytes: None,
        }),
    }
}

/// Cuts a collection into `count` ranges before its copy: by value between its first and last
/// `_id` when both are numbers or both ObjectIds, else at quantiles of a sample of its `_id`s.
/// With the bounds, how far it reaches, for cutting its ranges again as they run.
pub async fn plan(
    source: &Client,
    spec: &CollectionSpec,
    count: u64,
    at: Timestamp,
) -> Result<(Vec<Bson>, Reach)> {
    let Some((first, last)) = ends(source, spec, at).await? else {
        return Ok((Vec::new(), Reach::Unknown));
    };
    if let Some(bounds) = split_between(&first, &last, count) {
        return Ok((bounds, Reach::Last(last)));
    }
    let ids = sample_ids(source, spec, count * SAMPLES_PER_RANGE).await?;
    let mut bounds: Vec<Bson> = (1..count)
        .filter_map(|i| ids.get((i * ids.len() as u64 / count) as usize).cloned())
        .collect();
    bounds.dedup();
    Ok((bounds, Reach::Sample(Arc::new(ids))))
}

/// The ranges a collection is copied in, split at `bounds` (in `_id` order).
pub fn ranges_between(bounds: &[Bson]) -> Vec<Partition> {
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut lo: Option<Bson> = None;
    for hi in bounds {
        ranges.push(Partition {
            lo: lo.clone(),
            hi: Some(hi.clone()),
            ..Default::default()
        });
        lo = Some(hi.clone());
    }
    ranges.push(Partition {
        lo,
        ..Default::default()
    });
    ranges
}

/// The collection's first and last `_id` in `_id` order (two reads of the `_id` index, nothing
/// scanned): how far it reaches. Read like the copy, at or after `at` (T0).
pub async fn ends(
    source: &Client,
    spec: &CollectionSpec,
    at: Timestamp,
) -> Result<Option<(Bson, Bson)>> {
    let collection = source
        .database(&spec.db)
        .collection_with_options::<Document>(
            &spec.name,
            CollectionOptions::builder()
                .read_concern(ReadConcern::majority())
                .build(),
        );
    // One after the other: on the test server each reads the whole collection into memory, and
    // a large collection's count and both ends read at once ran it out of memory at 2,000,000
    // documents (measured).
    let mut session = reads::session_at(source, at).await?;
    let mut ends = Vec::with_capacity(2);
    for order in [1, -1] {
        let end = collection
            .find_one(doc! {})
            .sort(doc! { "_id": order })
            .projection(doc! { "_id": 1 })
            .session(&mut session)
            .await
            .with_context(|| format!("reading the first and last _id of {}", spec.ns()))?;
        let Some(id) = end.and_then(|d| d.get("_id").cloned()) else {
            return Ok(None);
        };
        ends.push(id);
    }
    let [first, last]: [Bson; 2] = ends.try_into().expect("two ends");
    Ok(Some((first, last)))
}

/// About `size` of the collection's `_id`s drawn at random, in `_id` order (any mix of types):
/// where a range whose `_id`s have no value to cut by is cut (`split`).
pub async fn sample_ids(source: &Client, spec: &CollectionSpec, size: u64) -> Result<Vec<Bson>> {
    let sample: Vec<RawDocumentBuf> = source
        .database(&spec.db)
        .collection::<RawDocumentBuf>(&spec.name)
        .aggregate([
            doc! { "$sample": { "size": size as i64 } },
            doc! { "$project": { "_id": 1 } },
        ])
        .with_type::<RawDocumentBuf>()
        .await
        .with_context(|| format!("sampling the _ids of {}", spec.ns()))?
        .try_collect()
        .await?;
    let mut ids: Vec<Bson> = sample
        .iter()
        .filter_map(|d| d.get("_id").ok().flatten())
        .filter_map(|id| id.to_raw_bson().try_into().ok())
        .collect();
    ids.sort_by(compare_ids);
    ids.dedup_by(|a, b| compare_ids(a, b) == std::cmp::Ordering::Equal);
    Ok(ids)
}

/// `count - 1` bounds evenly between `first` and `last`, when both are ObjectIds or both
/// numbers.
fn split_between(first: &Bson, last: &Bson, count: u64) -> Option<Vec<Bson>> {
    // Read at two moments, the first may lie past the last (the collection emptied and filled
    // again meanwhile): then there is no line to cut along.
    if compare_ids(first, last) == std::cmp::Ordering::Greater {
        return None;
    }
    let steps = 1..count;
    let mut bounds: Vec<Bson> = match (first, last) {
        (Bson::ObjectId(a), Bson::ObjectId(b)) => {
            let (a, b) = (oid_number(a), oid_number(b));
            steps
                .map(|i| oid_from(a + (b.saturating_sub(a)) * u128::from(i) / u128::from(count)))
                .collect()
        }
        (a, b) => match (integer(a), integer(b), number(a), number(b)) {
            (Some(a), Some(b), _, _) => steps
                .map(|i| {
                    let at = a + (b - a) * i128::from(i) / i128::from(count);
                    Bson::Int64(at as i64)
                })
                .collect(),
            (_, _, Some(a), Some(b)) if a.is_finite() && b.is_finite() => steps
                .map(|i| Bson::Double(a + (b - a) * i as f64 / count as f64))
                .collect(),
            _ => return None,
        },
    };
    bounds.dedup();
    (!bounds.is_empty()).then_some(bounds)
}

/// Where an `_id` lies on the line its range is cut along: numbers by value, ObjectIds by their
/// 12 bytes as one number; `None` for the types cut by sampling only.
pub fn value_of(id: &Bson) -> Option<f64> {
    match id {
        Bson::ObjectId(oid) => Some(oid_number(oid) as f64),
        other => number(other).filter(|n| n.is_finite()),
    }
}

/// A value halfway between two `_id`s of the types [`value_of`] places.
pub fn midpoint(a: &Bson, b: &Bson) -> Option<Bson> {
    split_between(a, b, 2)?.into_iter().next()
}

fn integer(id: &Bson) -> Option<i128> {
    match id {
        Bson::Int32(n) => Some(i128::from(*n)),
        Bson::Int64(n) => Some(i128::from(*n)),
        _ => None,
    }
}

fn number(id: &Bson) -> Option<f64> {
    match id {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    }
}

/// An ObjectId's 12 bytes as one number, in the order the server compares them.
fn oid_number(id: &mongodb::bson::oid::ObjectId) -> u128 {
    id.bytes()
        .iter()
        .fold(0u128, |n, byte| (n << 8) | u128::from(*byte))
}

fn oid_from(n: u128) -> Bson {
    let bytes = n.to_be_bytes();
    let mut id = [0u8; 12];
    id.copy_from_slice(&bytes[4..]);
    Bson::ObjectId(mongodb::bson::oid::ObjectId::from_bytes(id))
}

/// Compares two `_id`s as the server sorts them.
pub fn compare_ids(a: &Bson, b: &Bson) -> std::cmp::Ordering {
    let (a, b) = (
        mongodb::bson::RawBson::try_from(a.clone()),
        mongodb::bson::RawBson::try_from(b.clone()),
    );
    match (a, b) {
        (Ok(a), Ok(b)) => id_order::compare(a.as_raw_bson_ref(), b.as_raw_bson_ref()),
        _ => std::cmp::Ordering::Equal,
    }
}

/// The filter selecting what is left of a range after `after` (or after its start).
pub fn remaining(range: &Partition, after: Option<&Bson>) -> Document {
    match (after.or(range.lo.as_ref()), &range.hi) {
        (Some(after), Some(hi)) => id_order::between(after, hi),
        (Some(after), None) => id_order::after(after),
        (None, Some(hi)) => id_order::up_to(hi),
        (None, None) => doc! {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_continues_after_its_last_copied_id_up_to_its_end() {
        let whole = Partition::default();
        assert_eq!(remaining(&whole, None), doc! {});
        let first = Partition {
            hi: Some(Bson::Int32(10)),
            ..Default::default()
        };
        // As text: the filter holds a NaN, which is not equal to itself.
        assert_eq!(
            remaining(&first, None).to_string(),
            id_order::up_to(&Bson::Int32(10)).to_string()
        );
        let resumed = Partition {
            lo: Some(Bson::Int32(10)),
            hi: Some(Bson::Int32(20)),
            last_id: Some(Bson::Int32(15)),
            ..Default::default()
        };
        assert_eq!(
            remaining(&resumed, resumed.last_id.as_ref()),
            doc! { "_id": { "$gt": 15, "$lte": 20 } }
        );
    }

    #[test]
    fn numbers_and_object_ids_are_split_by_value() {
        let ints = split_between(&Bson::Int32(0), &Bson::Int64(1_000), 4).unwrap();
        assert_eq!(ints, [Bson::Int64(250), Bson::Int64(500), Bson::Int64(750)]);
        let wide = split_between(&Bson::Int64(i64::MIN), &Bson::Int64(i64::MAX), 2).unwrap();
        assert_eq!(wide, [Bson::Int64(-1)]);
        let mixed = split_between(&Bson::Int32(0), &Bson::Double(1.0), 2).unwrap();
        assert_eq!(mixed, [Bson::Double(0.5)]);
        // A range narrower than the count gives fewer, distinct bounds.
        assert_eq!(
            split_between(&Bson::Int32(0), &Bson::Int32(2), 4).unwrap(),
            [Bson::Int64(0), Bson::Int64(1)]
        );
        let oid = |hex: &str| Bson::ObjectId(mongodb::bson::oid::ObjectId::parse_str(hex).unwrap());
        let ids = split_between(
            &oid("650000000000000000000000"),
            &oid("660000000000000000000000"),
            2,
        )
        .unwrap();
        assert_eq!(ids, [oid("658000000000000000000000")]);
        // The bounds sort between the ends, as the server compares them.
        let sorted = |a: &Bson, b: &Bson| compare_ids(a, b) == std::cmp::Ordering::Less;
        assert!(sorted(&oid("650000000000000000000000"), &ids[0]));
        assert!(sorted(&ids[0], &oid("660000000000000000000000")));
        // Other types, or two types, are sampled instead.
        assert_eq!(
            split_between(&Bson::String("a".into()), &Bson::String("z".into()), 4),
            None
        );
        assert_eq!(
            split_between(&Bson::Int32(1), &oid("650000000000000000000000"), 4),
            None
        );
        assert_eq!(
            split_between(&Bson::Int64(1_000), &Bson::Int32(0), 4),
            None,
            "a first _id past the last, read a moment later"
        );
    }

    #[test]
    fn only_large_plain_collections_are_cut_before_their_copy() {
        let spec = |options: Document| CollectionSpec {
            db: "d".into(),
            name: "c".into(),
            kind: crate::catalog::Kind::Collection,
            options,
            uuid: None,
            indexes: vec![],
        };
        let large = 10 * RANGE_DOCUMENTS;
        assert_eq!(range_count(&spec(doc! {}), large), 10);
        assert_eq!(range_count(&spec(doc! {}), RANGE_DOCUMENTS), 1);
        assert_eq!(
            range_count(&spec(doc! {}), 1000 * RANGE_DOCUMENTS),
            MAX_RANGES
        );
        let capped = doc! { "capped": true, "size": 1_i64 << 40 };
        assert_eq!(range_count(&spec(capped), large), 1);
        let collated = doc! { "collation": { "locale": "fr", "strength": 1 } };
        assert_eq!(range_count(&spec(collated), large), 1);
    }
}
