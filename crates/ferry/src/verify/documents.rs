//! Document comparison that stays cheap and bounded: each side's `_id` range is hashed
//! (xxh3-128 over the raw BSON of its documents in `_id` order) one partition at a time, and only
//! a partition whose hashes differ is read again and merged document by document to name the
//! missing, extra and different `_id`s. Memory holds one document per side, never a key set.
//! During a migration the differences go to the re-check queue instead of the report, since a
//! change may still be in flight.

use std::cmp::Ordering;

use anyhow::Result;
use mongodb::bson::{Bson, Document};
use xxhash_rust::xxh3::Xxh3;

use super::compare::{comparable_bytes, field_diff, id, id_of, mismatch, Sides};
use super::expiry::Expiry;
use super::recheck::RecheckQueue;
use super::report::{Mismatch, NamespaceReport};
use super::store::{Place, VerifyStore};
use crate::copy::reader::{self, Order, Scan};
use crate::id_order;
use crate::namespace::Namespace;
use crate::source::reads;

/// Documents per partition of the source's `_id` space.
const PARTITION: i64 = 10_000;

/// Where the differences a range comparison finds go.
#[derive(Clone, Copy)]
pub enum Differences<'a> {
    /// Into the report: the clusters are not expected to change under a one-off verification.
    Report,
    /// Into the re-check queue: during a migration a difference may be a change in flight.
    Queue(&'a RecheckQueue),
}

/// Hashes `scan` of one side, in a session of its own.
async fn hash(sides: &Sides<'_>, on_source: bool, scan: Scan<'_>) -> Result<RangeHash> {
    let (client, at) = sides.side(on_source);
    let mut session = reads::session(client, at).await?;
    let mut rows = reader::open(client, &mut session, scan).await?;
    let mut hasher = Xxh3::new();
    let mut count = 0;
    let mut last = None;
    while let Some(document) = rows.next().await? {
        hasher.update(&comparable_bytes(&document, sides.comparison)?);
        count += 1;
        last = Some(document);
    }
    Ok(RangeHash {
        hash: hasher.digest128(),
        count,
        last_id: last.as_ref().map(id_of).transpose()?,
    })
}

/// Verifies the documents of one collection, resuming after the last finished partition.
pub async fn verify_documents(
    sides: &Sides<'_>,
    db: &str,
    coll: &str,
    store: &VerifyStore,
    differences: Differences<'_>,
    expiry: &mut Expiry<'_>,
    report: &mut NamespaceReport,
) -> Result<()> {
    let scan = |filter: Document, limit: Option<i64>| Scan {
        db,
        coll,
        filter,
        order: Order::Id,
        limit,
    };
    let ns = Namespace::new(db, coll).to_string();
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
        let source_side = hash(sides, true, scan(lower.clone(), Some(PARTITION))).await?;
        let range = match (&after, &source_side.last_id) {
            (Some(first), Some(last)) => id_order::between(first, last),
            (None, Some(last)) => id_order::up_to(last),
            // Past the source's last document: anything left on the destination is extra.
            (_, None) => lower.clone(),
        };
        let destination_side = hash(sides, false, scan(range.clone(), None)).await?;
        report.documents_checked += source_side.count;
        if source_side.hash != destination_side.hash || source_side.count != destination_side.count
        {
            let range_on_source = if source_side.last_id.is_some() {
                range.clone()
            } else {
                lower
            };
            let found = descend(
                sides,
                scan(range_on_source, Some(PARTITION)),
                scan(range, None),
                expiry,
            )
            .await?;
            match differences {
                Differences::Report => found.into_iter().for_each(|(_, m)| report.record(m)),
                Differences::Queue(queue) => {
                    let mut entries = Vec::new();
                    for (id, mismatch) in found {
                        match mismatch.kind {
                            "expired" => report.record(mismatch),
                            _ => entries.push((ns.clone(), id)),
                        }
                    }
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

/// Merges both sides of a differing range in `_id` order and returns each mismatch with its
/// `_id` (at most a partition's worth).
async fn descend(
    sides: &Sides<'_>,
    source_range: Scan<'_>,
    destination_range: Scan<'_>,
    expiry: &mut Expiry<'_>,
) -> Result<Vec<(Bson, Mismatch)>> {
    let namespace = Namespace::new(source_range.db, source_range.coll);
    let (source, source_at) = sides.side(true);
    let (destination, _) = sides.side(false);
    let mut a_session = reads::session(source, source_at).await?;
    let mut b_session = reads::session(destination, None).await?;
    let mut a_side = reader::open(source, &mut a_session, source_range).await?;
    let mut b_side = reader::open(destination, &mut b_session, destination_range).await?;
    let mut found = Vec::new();
    let mut a = a_side.next().await?;
    let mut b = b_side.next().await?;
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
                expiry.documents_read();
                let judged = expiry.one_sided("missing", &namespace, &x).await?;
                found.push((id_of(&x)?, judged));
                a = a_side.next().await?;
            }
            Ordering::Greater => {
                let y = b.take().expect("compared");
                expiry.documents_read();
                let judged = expiry.one_sided("extra", &namespace, &y).await?;
                found.push((id_of(&y)?, judged));
                b = b_side.next().await?;
            }
            Ordering::Equal => {
                let (x, y) = (a.take().expect("compared"), b.take().expect("compared"));
                let comparison = sides.comparison;
                if comparable_bytes(&x, comparison)? != comparable_bytes(&y, comparison)? {
                    let diff = field_diff(&x, &y)?;
                    found.push((id_of(&x)?, mismatch("different", &x, diff)?));
                }
                a = a_side.next().await?;
                b = b_side.next().await?;
            }
        }
    }
}
