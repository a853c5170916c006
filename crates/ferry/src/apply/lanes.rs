//! Parallel lanes for document changes: each event goes to a lane chosen by its namespace and
//! document `_id`, so one document's events stay in source order while different documents are
//! written at the same time, and a hot document holds up only its own lane. Within a lane,
//! consecutive statements for one collection and command travel as one ordered command.
//!
//! The caller flushes the lanes at every barrier (a catalog change, and the start and end of a
//! transaction's events), so nothing is reordered across one.

use std::hash::{Hash, Hasher};

use anyhow::Result;
use mongodb::Client;

use super::batch::Batch;
use super::crud::Writes;
use super::refetch::refetch;
use crate::changes::ChangeEvent;
use crate::id_order::{self, Strings};

/// Events waiting in their lanes, each with its writes.
pub struct Lanes {
    lanes: Vec<Vec<(ChangeEvent, Writes)>>,
}

impl Lanes {
    pub fn new(count: usize) -> Self {
        Self {
            lanes: (0..count.max(1)).map(|_| Vec::new()).collect(),
        }
    }

    /// Puts an event in its document's lane: by namespace and `_id` value as the server
    /// compares it (`strings` says how that collection compares strings), so that a delete of
    /// `5` and a re-insert of `5L` stay in order.
    pub fn push(&mut self, event: ChangeEvent, writes: Writes, strings: Strings) -> Result<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        event.db.hash(&mut hasher);
        event.coll.hash(&mut hasher);
        // By `_id` alone: a sharded source's key also holds the shard key, which an update can
        // change (a delete and an insert of one document under two keys).
        let key = event.document("documentKey")?;
        match key.get("_id")? {
            Some(id) => id_order::hash_as_compared(id, strings, &mut hasher),
            None => key.as_bytes().hash(&mut hasher),
        }
        let lane = (hasher.finish() % self.lanes.len() as u64) as usize;
        self.lanes[lane].push((event, writes));
        Ok(())
    }

    /// Writes every waiting event, the lanes at the same time, and returns once all are
    /// acknowledged. Returns the number of documents refetched from the source.
    pub async fn flush(&mut self, source: &Client, destination: &Client) -> Result<u64> {
        let work = self
            .lanes
            .iter_mut()
            .filter(|lane| !lane.is_empty())
            .map(|lane| apply_lane(source, destination, std::mem::take(lane)));
        let refetched = futures_util::future::try_join_all(work).await?;
        Ok(refetched.into_iter().sum())
    }
}

/// Applies one lane's events in order.
async fn apply_lane(
    source: &Client,
    destination: &Client,
    events: Vec<(ChangeEvent, Writes)>,
) -> Result<u64> {
    let mut refetched = 0;
    let mut batch: Option<Batch> = None;
    for (event, writes) in events {
        let coll = event.coll.clone().unwrap_or_default();
        match writes {
            Writes::Nothing => {}
            Writes::Refetch => {
                if let Some(pending) = batch.take() {
                    refetched += pending.execute(source, destination).await?;
                }
                refetch(source, destination, &event).await?;
                refetched += 1;
            }
            Writes::Statements(command, statements) => {
                if !batch
                    .as_ref()
                    .is_some_and(|b| b.accepts(&event.db, &coll, command, &statements))
                {
                    if let Some(full) = batch.replace(Batch::new(&event.db, &coll, command)) {
                        refetched += full.execute(source, destination).await?;
                    }
                }
                batch
                    .as_mut()
                    .expect("a batch was just ensured")
                    .push(event, statements);
            }
        }
    }
    if let Some(pending) = batch.take() {
        refetched += pending.execute(source, destination).await?;
    }
    Ok(refetched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::crud;
    use mongodb::bson::{rawdoc, Timestamp};

    fn update(coll: &str, id: i32, n: i32) -> ChangeEvent {
        ChangeEvent::decode(rawdoc! {
            "operationType": "update",
            "clusterTime": Timestamp { time: 1, increment: n as u32 },
            "ns": { "db": "d", "coll": coll },
            "documentKey": { "_id": id },
            "updateDescription": { "updatedFields": { "n": n }, "removedFields": [] },
        })
        .unwrap()
    }

    fn push(lanes: &mut Lanes, event: ChangeEvent, strings: Strings) {
        let writes = crud::writes_for(&event, crud::Paths::Disambiguated).unwrap();
        lanes.push(event, writes, strings).unwrap();
    }

    /// The lane holding each event, in push order.
    fn lane_of_each(lanes: &Lanes) -> Vec<usize> {
        let mut placed: Vec<(u32, usize)> = lanes
            .lanes
            .iter()
            .enumerate()
            .flat_map(|(i, lane)| lane.iter().map(move |(e, _)| (e.cluster_time.increment, i)))
            .collect();
        placed.sort();
        placed.into_iter().map(|(_, lane)| lane).collect()
    }

    #[test]
    fn one_ids_value_shares_a_lane_whatever_its_numeric_type() {
        for n in 0..64 {
            let mut lanes = Lanes::new(4);
            let event = |id: mongodb::bson::Bson, increment: u32, op: &str| {
                let mut raw = rawdoc! {
                    "operationType": op,
                    "clusterTime": Timestamp { time: 1, increment },
                    "ns": { "db": "d", "coll": "c" },
                };
                let id = mongodb::bson::RawBson::try_from(id).unwrap();
                raw.append("documentKey", rawdoc! { "_id": id.clone() });
                if op == "insert" {
                    raw.append("fullDocument", rawdoc! { "_id": id });
                }
                ChangeEvent::decode(raw).unwrap()
            };
            push(
                &mut lanes,
                event(mongodb::bson::Bson::Int32(n), 1, "delete"),
                Strings::Simple,
            );
            push(
                &mut lanes,
                event(mongodb::bson::Bson::Int64(n.into()), 2, "insert"),
                Strings::Simple,
            );
            push(
                &mut lanes,
                event(mongodb::bson::Bson::Double(n.into()), 3, "delete"),
                Strings::Simple,
            );
            let placed = lane_of_each(&lanes);
            assert!(
                placed.iter().all(|l| *l == placed[0]),
                "_id {n}: lanes {placed:?}"
            );
        }
    }

    #[test]
    fn under_a_collation_strings_that_may_be_equal_share_a_lane() {
        let event = |id: &str, increment: u32| {
            ChangeEvent::decode(rawdoc! {
                "operationType": "delete",
                "clusterTime": Timestamp { time: 1, increment },
                "ns": { "db": "d", "coll": "c" },
                "documentKey": { "_id": id },
            })
            .unwrap()
        };
        let mut lanes = Lanes::new(4);
        for (i, id) in ["a", "A", "b", "B", "à"].iter().enumerate() {
            push(&mut lanes, event(id, i as u32), Strings::Collated);
        }
        let placed = lane_of_each(&lanes);
        assert!(placed.iter().all(|l| *l == placed[0]), "{placed:?}");
    }

    #[test]
    fn one_documents_events_share_a_lane_in_order_and_documents_spread() {
        let mut lanes = Lanes::new(4);
        for n in 0..200 {
            push(
                &mut lanes,
                update(if n % 2 == 0 { "a" } else { "b" }, n % 50, n),
                Strings::Simple,
            );
        }
        assert!(lanes.lanes.iter().filter(|l| !l.is_empty()).count() > 1);
        for lane in &lanes.lanes {
            let mut last_seen = std::collections::HashMap::new();
            for (event, _) in lane {
                let key = (
                    event.coll.clone(),
                    event.document("documentKey").unwrap().as_bytes().to_vec(),
                );
                let time = event.cluster_time.increment;
                if let Some(previous) = last_seen.insert(key, time) {
                    assert!(previous < time, "a document's events out of order");
                }
            }
        }
        // Every event of one document is in exactly one lane.
        let holding = |coll: &str, id: i32| {
            lanes
                .lanes
                .iter()
                .filter(|lane| {
                    lane.iter().any(|(e, _)| {
                        e.coll.as_deref() == Some(coll)
                            && e.document("documentKey").unwrap().get_i32("_id").unwrap() == id
                    })
                })
                .count()
        };
        assert_eq!(holding("a", 0), 1);
        assert_eq!(holding("b", 1), 1);
    }
}
