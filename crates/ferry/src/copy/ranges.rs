//! How a collection is cut into `_id` ranges for a parallel copy, and what is left of a range
//! once part of it is copied. Bounds are sorted in MongoDB's cross-type `_id` order
//! (`id_order`), which the range reader's simple collation shares.

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;

use crate::catalog::CollectionSpec;
use crate::id_order;
use crate::state::Partition;

/// Bytes per range of a large collection, and the most ranges one collection gets.
const PARTITION_BYTES: u64 = 16 * 1024 * 1024;
const MAX_PARTITIONS: u64 = 64;
/// Sampled `_id`s per partition boundary.
const SAMPLES_PER_PARTITION: u64 = 20;

/// How many `_id` ranges a collection of `bytes` is copied in: about [`PARTITION_BYTES`] each.
/// Small and capped collections are one range (a capped one is copied in natural order), and so
/// is a collated one: its reads use the simple collation, which cannot use its `_id` index, so
/// every range would scan the whole collection.
pub fn range_count(spec: &CollectionSpec, bytes: u64) -> u64 {
    let count = (bytes / PARTITION_BYTES).min(MAX_PARTITIONS);
    if spec.is_capped() || spec.is_collated() || count < 2 {
        1
    } else {
        count
    }
}

/// The `_id`s that split a collection into `count` ranges of about equal size, in `_id` order,
/// from a random sample of its `_id`s (any mix of `_id` types).
pub async fn sample_bounds(
    source: &Client,
    spec: &CollectionSpec,
    count: u64,
) -> Result<Vec<Bson>> {
    let sample: Vec<RawDocumentBuf> = source
        .database(&spec.db)
        .collection::<RawDocumentBuf>(&spec.name)
        .aggregate([
            doc! { "$sample": { "size": (count * SAMPLES_PER_PARTITION) as i64 } },
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
    ids.sort_by(compare_bson);
    ids.dedup();
    let mut bounds: Vec<Bson> = (1..count)
        .filter_map(|i| ids.get((i * ids.len() as u64 / count) as usize).cloned())
        .collect();
    bounds.dedup();
    Ok(bounds)
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

fn compare_bson(a: &Bson, b: &Bson) -> std::cmp::Ordering {
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
        assert_eq!(remaining(&first, None), id_order::up_to(&Bson::Int32(10)));
        let resumed = Partition {
            lo: Some(Bson::Int32(10)),
            hi: Some(Bson::Int32(20)),
            last_id: Some(Bson::Int32(15)),
            done: false,
        };
        assert_eq!(
            remaining(&resumed, resumed.last_id.as_ref()),
            doc! { "_id": { "$gt": 15, "$lte": 20 } }
        );
    }

    #[test]
    fn only_large_plain_collections_are_cut_into_ranges() {
        let spec = |options: Document| CollectionSpec {
            db: "d".into(),
            name: "c".into(),
            kind: crate::catalog::Kind::Collection,
            options,
            uuid: None,
            indexes: vec![],
        };
        let large = 10 * PARTITION_BYTES;
        assert_eq!(range_count(&spec(doc! {}), large), 10);
        assert_eq!(range_count(&spec(doc! {}), PARTITION_BYTES), 1);
        assert_eq!(
            range_count(&spec(doc! {}), 1000 * PARTITION_BYTES),
            MAX_PARTITIONS
        );
        let capped = doc! { "capped": true, "size": 1_i64 << 40 };
        assert_eq!(range_count(&spec(capped), large), 1);
        let collated = doc! { "collation": { "locale": "fr", "strength": 1 } };
        assert_eq!(range_count(&spec(collated), large), 1);
    }
}
