//! Writes to the source after the commit point: an application that still wrote to the old
//! cluster. Ferry applies nothing after the commit point, so each such write is named (namespace,
//! count, first time) before COMMITTED, never dropped silently.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::changes::rounds::Reader;
use crate::changes::{Capture, ChangeEvent, StreamFrom};
use crate::filter::NamespaceFilter;
pub use crate::progress::StrayWrites;
use anyhow::Result;
use mongodb::bson::Timestamp;
use mongodb::Client;

/// How long the source's stream is read past the commit point at most.
const SCAN_TIME: Duration = Duration::from_secs(10);

/// Counts the writes to included namespaces after `point`, reading the source's change stream
/// from `from` (a position at or before the point) until it has nothing more.
pub async fn after(
    source: &Client,
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
        tally(&mut found, &round.events, point, filter);
        if round.caught_up || started.elapsed() >= SCAN_TIME {
            return Ok(found.into_values().collect());
        }
    }
}

/// Adds the included namespaces' events after `point` to `by_namespace`.
pub fn tally(
    by_namespace: &mut BTreeMap<String, StrayWrites>,
    events: &[ChangeEvent],
    point: Timestamp,
    filter: &NamespaceFilter,
) {
    for event in events.iter().filter(|e| e.cluster_time > point) {
        let included = match &event.coll {
            Some(coll) => filter.wants(&event.db, coll),
            None => filter.wants_database(&event.db),
        };
        if !included {
            continue;
        }
        by_namespace
            .entry(event.ns())
            .or_insert_with(|| StrayWrites {
                namespace: event.ns(),
                count: 0,
                first_time: event.cluster_time.time,
            })
            .count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::NsPattern;
    use mongodb::bson::rawdoc;

    fn event(db: &str, coll: &str, time: u32) -> ChangeEvent {
        ChangeEvent::decode(rawdoc! {
            "operationType": "insert",
            "clusterTime": Timestamp { time, increment: 1 },
            "ns": { "db": db, "coll": coll },
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
            event("shop", "orders", 10),
            event("shop", "orders", 12),
            event("shop", "orders", 13),
            event("shop", "items", 14),
            event("logs", "x", 15),
        ];
        let point = Timestamp {
            time: 11,
            increment: 0,
        };
        let mut found = BTreeMap::new();
        tally(&mut found, &events[..2], point, &filter);
        tally(&mut found, &events[2..], point, &filter);
        assert_eq!(
            found.into_values().collect::<Vec<_>>(),
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
}
