//! Writes to the source after the commit point: an application that still wrote to the old
//! cluster. Ferry applies nothing after the commit point, so each such write is named (namespace,
//! count, first time) before COMMITTED, never dropped silently. A delete of a document that a TTL
//! index has expired is not one: the source's TTL monitor deletes on its own when its writes
//! cannot be blocked, and the destination's restored TTL index deletes the same document
//! (`catalog::ttl`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::catalog::ttl::{self, Ttl};
use crate::changes::rounds::Reader;
use crate::changes::{Capture, ChangeEvent, Op, StreamFrom};
use crate::filter::NamespaceFilter;
use crate::namespace::Namespace;
pub use crate::progress::StrayWrites;
use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, RawDocumentBuf, Timestamp};
use mongodb::Client;

/// How long the source's stream is read past the commit point at most.
const SCAN_TIME: Duration = Duration::from_secs(10);
/// Deleted documents looked up on the destination at a time.
const LOOKUP: usize = 1000;

/// One namespace's writes after the point, as read from the stream.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    /// Writes other than deletes, and the source time of the first.
    others: u64,
    first_other: Option<u32>,
    /// Deletes, by `_id` and source time: an expiry may explain them.
    deletes: Vec<(Bson, u32)>,
}

/// The writes to included namespaces after `point`, reading the source's change stream from
/// `from` (a position at or before the point) until it has nothing more, less the deletes a TTL
/// index explains.
pub async fn after(
    source: &Client,
    destination: &Client,
    from: StreamFrom,
    capture: Capture,
    point: Timestamp,
    filter: &NamespaceFilter,
) -> Result<Vec<StrayWrites>> {
    let mut reader = Reader::open(source.clone(), from, capture).await?;
    let started = Instant::now();
    let mut found = BTreeMap::new();
    loop {
        let round = reader.next_round().await?;
        tally(&mut found, &round.events, point, filter)?;
        if round.caught_up || started.elapsed() >= SCAN_TIME {
            break;
        }
    }
    let mut stray = Vec::new();
    for (ns, seen) in found {
        let expired = expired_deletes(source, destination, &ns, &seen.deletes)
            .await
            .with_context(|| format!("telling expired documents of {ns} from stray deletes"))?;
        let count = expired.iter().filter(|e| **e).count();
        if count > 0 {
            tracing::info!(namespace = %ns, count, "documents expired after the commit point: the source's TTL monitor deleted them, and the destination's TTL index deletes them too");
        }
        stray.extend(remaining(ns, seen, &expired));
    }
    Ok(stray)
}

/// Adds the included namespaces' events after `point` to `by_namespace`.
fn tally(
    by_namespace: &mut BTreeMap<String, Seen>,
    events: &[ChangeEvent],
    point: Timestamp,
    filter: &NamespaceFilter,
) -> Result<()> {
    for event in events.iter().filter(|e| e.cluster_time > point) {
        let included = match &event.coll {
            Some(coll) => filter.wants(&event.db, coll),
            None => filter.wants_database(&event.db),
        };
        if !included {
            continue;
        }
        let seen = by_namespace.entry(event.ns()).or_default();
        let time = event.cluster_time.time;
        let id = match event.op {
            Op::Delete => event.document("documentKey")?.get("_id")?,
            _ => None,
        };
        match id {
            Some(id) => seen.deletes.push((id.to_raw_bson().try_into()?, time)),
            None => {
                seen.others += 1;
                seen.first_other = Some(seen.first_other.map_or(time, |t| t.min(time)));
            }
        }
    }
    Ok(())
}

/// For each delete, whether a TTL index of the namespace explains it: its document is expired
/// on the destination, or already gone from it (the destination's TTL monitor was first).
async fn expired_deletes(
    source: &Client,
    destination: &Client,
    ns: &str,
    deletes: &[(Bson, u32)],
) -> Result<Vec<bool>> {
    let namespace = Namespace::parse(ns).with_context(|| format!("{ns} is not a namespace"))?;
    let rules = match deletes.is_empty() {
        true => Ttl::default(),
        false => Ttl::of_namespace(source, destination, &namespace).await?,
    };
    if rules.is_empty() {
        return Ok(vec![false; deletes.len()]);
    }
    let collection = destination
        .database(&namespace.db)
        .collection::<RawDocumentBuf>(&namespace.coll);
    let mut expired = Vec::with_capacity(deletes.len());
    for chunk in deletes.chunks(LOOKUP) {
        let ids: Vec<Bson> = chunk.iter().map(|(id, _)| id.clone()).collect();
        let held: Vec<RawDocumentBuf> = collection
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?;
        let now_ms = ttl::later_clock(source, destination).await?;
        let mut by_id = std::collections::HashMap::new();
        for document in &held {
            let id: Bson = document
                .get("_id")?
                .context("a document without _id")?
                .to_raw_bson()
                .try_into()?;
            by_id.insert(mongodb::bson::to_vec(&doc! { "id": id })?, document);
        }
        for (id, _) in chunk {
            let key = mongodb::bson::to_vec(&doc! { "id": id.clone() })?;
            expired.push(match by_id.get(&key) {
                None => true,
                Some(document) => rules.expired(&collection, document, now_ms).await?,
            });
        }
    }
    Ok(expired)
}

/// What stays stray of a namespace's writes once the deletes `expired` explains are taken out.
fn remaining(namespace: String, seen: Seen, expired: &[bool]) -> Option<StrayWrites> {
    let stray_deletes: Vec<u32> = seen
        .deletes
        .iter()
        .zip(expired)
        .filter(|(_, expired)| !**expired)
        .map(|((_, time), _)| *time)
        .collect();
    Some(StrayWrites {
        namespace,
        count: seen.others + stray_deletes.len() as u64,
        first_time: stray_deletes.into_iter().chain(seen.first_other).min()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::NsPattern;
    use mongodb::bson::rawdoc;

    fn event(op: &str, db: &str, coll: &str, time: u32) -> ChangeEvent {
        ChangeEvent::decode(rawdoc! {
            "operationType": op,
            "clusterTime": Timestamp { time, increment: 1 },
            "ns": { "db": db, "coll": coll },
            "documentKey": { "_id": time as i32 },
        })
        .unwrap()
    }

    #[test]
    fn only_included_writes_after_the_point_are_stray() {
        let filter = NamespaceFilter {
            exclude: vec![NsPattern::parse("logs").unwrap()],
            state_db: "__ferry".into(),
            ..Default::default()
        };
        let events = [
            event("insert", "shop", "orders", 10),
            event("insert", "shop", "orders", 12),
            event("update", "shop", "orders", 13),
            event("delete", "shop", "items", 14),
            event("insert", "logs", "x", 15),
        ];
        let point = Timestamp {
            time: 11,
            increment: 0,
        };
        let mut found = BTreeMap::new();
        tally(&mut found, &events[..2], point, &filter).unwrap();
        tally(&mut found, &events[2..], point, &filter).unwrap();
        let stray: Vec<StrayWrites> = found
            .into_iter()
            .filter_map(|(ns, seen)| {
                let none_expired = vec![false; seen.deletes.len()];
                remaining(ns, seen, &none_expired)
            })
            .collect();
        assert_eq!(
            stray,
            vec![
                StrayWrites {
                    namespace: "shop.items".into(),
                    count: 1,
                    first_time: 14
                },
                StrayWrites {
                    namespace: "shop.orders".into(),
                    count: 2,
                    first_time: 12
                },
            ]
        );
    }

    #[test]
    fn expired_deletes_are_not_stray() {
        let seen = |others: u64, first_other: Option<u32>| Seen {
            others,
            first_other,
            deletes: vec![
                (Bson::Int32(1), 20),
                (Bson::Int32(2), 21),
                (Bson::Int32(3), 22),
            ],
        };
        // The first delete is an expiry: the rest stay stray, from the first that does.
        assert_eq!(
            remaining("d.c".into(), seen(0, None), &[true, false, false]),
            Some(StrayWrites {
                namespace: "d.c".into(),
                count: 2,
                first_time: 21
            })
        );
        assert_eq!(remaining("d.c".into(), seen(0, None), &[true; 3]), None);
        assert_eq!(
            remaining("d.c".into(), seen(2, Some(30)), &[true; 3]),
            Some(StrayWrites {
                namespace: "d.c".into(),
                count: 2,
                first_time: 30
            })
        );
    }
}
