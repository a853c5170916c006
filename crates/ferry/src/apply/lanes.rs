//! Parallel lanes for document changes: each event goes to a lane chosen by its namespace and
//! document `_id`, so one document's events stay in source order while different documents are
//! written at the same time, and a hot document holds up only its own lane.
//!
//! Within a lane only each document's order matters: events of different documents commute
//! (unique constraints are relaxed while syncing, and capped collections are rebuilt at commit),
//! so a statement joins the latest command of its collection and kind unless its document has a
//! later write. A source that interleaves collections, or inserts and updates, still gets a few
//! large commands rather than one per event.
//!
//! The caller flushes the lanes at every barrier (a catalog change, and the start and end of a
//! transaction's events), so nothing is reordered across one.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use anyhow::Result;
use mongodb::Client;

use super::batch::Batch;
use super::crud::{Command, Writes};
use super::refetch::refetch;
use crate::changes::ChangeEvent;
use crate::id_order::{self, Strings};

/// An event waiting in its lane, with its writes, its namespace and its document (by namespace
/// and `_id` as the server compares it), each as a hash: unequal ones may share a value, which
/// only costs batching.
struct Waiting {
    event: ChangeEvent,
    writes: Writes,
    namespace: u64,
    document: u64,
}

/// Events waiting in their lanes.
pub struct Lanes {
    lanes: Vec<Vec<Waiting>>,
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
        let namespace = hasher.clone().finish();
        // By `_id` alone: a sharded source's key also holds the shard key, which an update can
        // change (a delete and an insert of one document under two keys).
        let key = event.document("documentKey")?;
        match key.get("_id")? {
            Some(id) => id_order::hash_as_compared(id, strings, &mut hasher),
            None => key.as_bytes().hash(&mut hasher),
        }
        let document = hasher.finish();
        let lane = (document % self.lanes.len() as u64) as usize;
        self.lanes[lane].push(Waiting {
            event,
            writes,
            namespace,
            document,
        });
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

/// One write of a lane: a batch of statements, or the read-back of one document.
enum Step {
    Batch(Batch),
    Refetch(ChangeEvent),
}

/// A lane's events as the writes that carry them, to run in order: each statement joins the
/// latest batch of its collection and command when its document has no write after that batch,
/// and starts a new batch otherwise, so every document's events keep their order.
fn steps(events: Vec<Waiting>) -> Vec<Step> {
    let mut steps = Vec::new();
    // The step holding each document's latest write.
    let mut latest_of_document: HashMap<u64, usize> = HashMap::new();
    // The latest batch of each collection and command (a batch takes only its own collection's
    // statements, so namespaces that share a hash only start new batches).
    let mut open: HashMap<(u64, Command), usize> = HashMap::new();
    for Waiting {
        event,
        writes,
        namespace,
        document,
    } in events
    {
        let after = latest_of_document.get(&document).copied();
        let at = match writes {
            Writes::Nothing => continue,
            Writes::Refetch => {
                steps.push(Step::Refetch(event));
                steps.len() - 1
            }
            Writes::Statements(command, statements) => {
                let coll = event.coll.as_deref().unwrap_or_default();
                let joins = open.get(&(namespace, command)).copied().filter(|&i| {
                    after.is_none_or(|a| i >= a)
                        && matches!(&steps[i], Step::Batch(b) if b.accepts(&event.db, coll, command, &statements))
                });
                let at = joins.unwrap_or_else(|| {
                    steps.push(Step::Batch(Batch::new(&event.db, coll, command)));
                    steps.len() - 1
                });
                open.insert((namespace, command), at);
                if let Step::Batch(batch) = &mut steps[at] {
                    batch.push(event, statements);
                }
                at
            }
        };
        latest_of_document.insert(document, at);
    }
    steps
}

/// Applies one lane's events, each document's in order. Returns the documents refetched.
async fn apply_lane(source: &Client, destination: &Client, events: Vec<Waiting>) -> Result<u64> {
    let mut refetched = 0;
    for step in steps(events) {
        refetched += match step {
            Step::Batch(batch) => batch.execute(source, destination).await?,
            Step::Refetch(event) => {
                refetch(source, destination, &event).await?;
                1
            }
        };
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
            .flat_map(|(i, lane)| {
                lane.iter()
                    .map(move |w| (w.event.cluster_time.increment, i))
            })
            .collect();
        placed.sort();
        placed.into_iter().map(|(_, lane)| lane).collect()
    }

    /// An event of `op` on `d.<coll>` for `_id` `id` at increment `n`.
    fn event(op: &str, coll: &str, id: i32, n: u32) -> ChangeEvent {
        event_with(op, coll, mongodb::bson::RawBson::Int32(id), n)
    }

    /// An event as [`event`]'s, with any `_id`.
    fn event_with(op: &str, coll: &str, id: mongodb::bson::RawBson, n: u32) -> ChangeEvent {
        let value = i64::from(n);
        let mut raw = rawdoc! {
            "operationType": if op == "ambiguous" { "update" } else { op },
            "clusterTime": Timestamp { time: 1, increment: n },
            "ns": { "db": "d", "coll": coll },
            "documentKey": { "_id": id.clone() },
        };
        match op {
            "insert" | "replace" => raw.append("fullDocument", rawdoc! { "_id": id, "n": value }),
            "update" => raw.append(
                "updateDescription",
                rawdoc! { "updatedFields": { "n": value }, "removedFields": [] },
            ),
            // An update the destination cannot replay as a delta: a read-back.
            "ambiguous" => raw.append(
                "updateDescription",
                rawdoc! { "updatedFields": { "a.0": value }, "removedFields": [], "disambiguatedPaths": { "a.0": ["a", "0"] } },
            ),
            _ => {}
        }
        ChangeEvent::decode(raw).unwrap()
    }

    /// The steps of one lane holding `events`, and the times of their events in the order
    /// the steps write them.
    fn one_lane(events: Vec<ChangeEvent>) -> (usize, Vec<ChangeEvent>) {
        let mut lanes = Lanes::new(1);
        for event in events {
            push(&mut lanes, event, Strings::Simple);
        }
        let steps = steps(lanes.lanes.remove(0));
        let count = steps.len();
        let written = steps
            .into_iter()
            .flat_map(|step| match step {
                Step::Batch(batch) => batch.into_events(),
                Step::Refetch(event) => vec![event],
            })
            .collect();
        (count, written)
    }

    #[test]
    fn interleaved_collections_and_commands_in_a_lane_become_a_few_commands() {
        // A hot document beside another collection's inserts and updates: the old lane sent
        // one command per event.
        let mut events = Vec::new();
        for n in 0..200u32 {
            let id = n as i32;
            events.push(event("insert", "live", id, 3 * n));
            events.push(event("update", "hot", 0, 3 * n + 1));
            if id > 0 {
                events.push(event("update", "live", id - 1, 3 * n + 2));
            }
        }
        let (steps, written) = one_lane(events);
        assert_eq!(steps, 3, "inserts, updates of live, updates of hot");
        assert_eq!(written.len(), 599);
    }

    #[test]
    fn every_documents_events_are_written_in_order_whatever_the_grouping() {
        use rand::{Rng, SeedableRng};
        let seed = std::env::var("FERRY_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random());
        eprintln!("seed {seed} (FERRY_TEST_SEED={seed} repeats it)");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let ops = ["insert", "update", "replace", "delete", "ambiguous"];
        for round in 0..200 {
            // Now and then more events than one command holds.
            let count = if round % 10 == 0 { 2500 } else { 300 };
            let events: Vec<ChangeEvent> = (0..rng.random_range(1..count))
                .map(|n| {
                    let op = ops[rng.random_range(0..ops.len())];
                    let coll = ["a", "b", "c"][rng.random_range(0..3)];
                    // One `_id` value under several numeric types: one document to the server.
                    let id = rng.random_range(0..6);
                    let id = match rng.random_range(0..3) {
                        0 => mongodb::bson::RawBson::Int32(id),
                        1 => mongodb::bson::RawBson::Int64(id.into()),
                        _ => mongodb::bson::RawBson::Double(id.into()),
                    };
                    event_with(op, coll, id, n)
                })
                .collect();
            let pushed = events.len();
            let (_, written) = one_lane(events);
            assert_eq!(
                written.len(),
                pushed,
                "seed {seed}: every event written once"
            );
            let mut latest = HashMap::new();
            for e in &written {
                let mut id = std::collections::hash_map::DefaultHasher::new();
                let key = e
                    .document("documentKey")
                    .unwrap()
                    .get("_id")
                    .unwrap()
                    .unwrap();
                id_order::hash_as_compared(key, Strings::Simple, &mut id);
                let key = (e.coll.clone(), id.finish());
                if let Some(before) = latest.insert(key, e.cluster_time.increment) {
                    assert!(
                        before < e.cluster_time.increment,
                        "seed {seed}: a document's event at {} written after its event at {before}",
                        e.cluster_time.increment
                    );
                }
            }
        }
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
            for Waiting { event, .. } in lane {
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
                    lane.iter().any(|Waiting { event: e, .. }| {
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
