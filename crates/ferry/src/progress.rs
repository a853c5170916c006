//! What a running migration reports: one shared snapshot that the migration updates and that the
//! HTTP API, the terminal view and the log lines read. Its JSON follows mongosync's
//! `/api/v1/progress` reply so that runbooks written for mongosync keep working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::lifecycle::{Direction, Phase, State};
use crate::source::info::Version;

/// Copy progress of one namespace.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionProgress {
    pub namespace: String,
    pub estimated_total_bytes: u64,
    pub estimated_total_documents: u64,
    pub copied_bytes: u64,
    pub copied_documents: u64,
    pub done: bool,
    /// `pending`, `copying`, `copied`, `indexing` or `indexed`.
    pub phase: &'static str,
    /// Indexes built on the destination (besides `_id`).
    pub indexes_built: u64,
    /// Indexes being built on the destination now (besides `_id`).
    pub indexes_building: u64,
}

/// The collections in flight the progress reply lists at most; the rest are paged in
/// `GET /api/v1/collections`.
pub const IN_FLIGHT_ROWS: usize = 32;

/// Every namespace's copy progress in the order first seen, found by name in constant time and
/// shared between snapshots until changed: with tens of thousands of collections, each copied
/// batch must not scan them all, nor each snapshot copy them all.
#[derive(Clone, Debug, Default)]
pub struct Collections(Arc<Rows>);

#[derive(Clone, Debug, Default)]
struct Rows {
    rows: Vec<CollectionProgress>,
    by_name: HashMap<String, usize>,
}

impl Collections {
    /// Adds a namespace's row, or replaces the one it has.
    pub fn set(&mut self, row: CollectionProgress) {
        let rows = Arc::make_mut(&mut self.0);
        match rows.by_name.get(&row.namespace) {
            Some(&at) => rows.rows[at] = row,
            None => {
                rows.by_name.insert(row.namespace.clone(), rows.rows.len());
                rows.rows.push(row);
            }
        }
    }

    pub fn get(&self, namespace: &str) -> Option<&CollectionProgress> {
        Some(&self.0.rows[*self.0.by_name.get(namespace)?])
    }

    pub fn get_mut(&mut self, namespace: &str) -> Option<&mut CollectionProgress> {
        let at = *self.0.by_name.get(namespace)?;
        Some(&mut Arc::make_mut(&mut self.0).rows[at])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, CollectionProgress> {
        self.0.rows.iter()
    }

    pub fn len(&self) -> usize {
        self.0.rows.len()
    }

    /// The rows from `offset` on, at most `limit` of them.
    pub fn page(&self, offset: usize, limit: usize) -> &[CollectionProgress] {
        let rows = &self.0.rows;
        &rows[offset.min(rows.len())..offset.saturating_add(limit).min(rows.len())]
    }

    /// How many collections are in each phase.
    pub fn counts(&self) -> serde_json::Value {
        let mut counts = serde_json::json!({ "total": self.len() });
        for phase in ["pending", "copying", "copied", "indexing", "indexed"] {
            counts[phase] = self.iter().filter(|c| c.phase == phase).count().into();
        }
        counts
    }
}

impl FromIterator<CollectionProgress> for Collections {
    fn from_iter<I: IntoIterator<Item = CollectionProgress>>(rows: I) -> Self {
        let mut collections = Self::default();
        for row in rows {
            collections.set(row);
        }
        collections
    }
}

/// Counts of applied change events by kind.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventCounts {
    pub insert: u64,
    pub update: u64,
    pub replace: u64,
    pub delete: u64,
    pub ddl: u64,
    /// Updates that could not apply as a delta and were replaced by the source's current document.
    pub refetched: u64,
}

impl EventCounts {
    pub fn total(&self) -> u64 {
        self.insert + self.update + self.replace + self.delete + self.ddl
    }
}

/// Throughput measured over the last second, and what it predicts.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    pub documents_per_second: f64,
    pub bytes_per_second: f64,
    pub events_per_second: f64,
    pub inserts_per_second: f64,
    pub updates_per_second: f64,
    pub replaces_per_second: f64,
    pub deletes_per_second: f64,
    pub ddl_per_second: f64,
    /// Seconds until the copy is done, at the current rate.
    pub copy_eta_seconds: Option<f64>,
    /// Seconds until the lag reaches zero, at its current rate of decrease.
    pub catch_up_eta_seconds: Option<f64>,
}

/// Where a verification stands.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationProgress {
    /// `running` (one-off), `first pass`, `re-checking` (while changes are applied),
    /// `final pass` (at commit), then `equal` or `different`.
    pub state: String,
    pub documents_checked: u64,
    /// Differences found; during a migration, only those re-checking did not clear at commit.
    pub mismatches: u64,
    /// Documents waiting to be compared again (changed since checked, or in flight).
    pub recheck_queued: u64,
    /// Documents compared again so far.
    pub rechecked: u64,
}

/// Writes the source took after the commit point in one namespace: not on the destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StrayWrites {
    pub namespace: String,
    pub count: u64,
    /// The source time of the first one (seconds since the epoch).
    pub first_time: u32,
}

/// Everything the migration reports at one moment.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub state: State,
    /// Forward, or a reverse (`ferry reverse`) after a forward migration's commit.
    pub direction: Direction,
    /// The source's version as Ferry treats it, once known.
    #[serde(skip)]
    pub source_version: Option<Version>,
    pub phase: Phase,
    pub can_commit: bool,
    pub can_write: bool,
    pub lag_time_seconds: Option<u64>,
    pub error: Option<String>,
    #[serde(skip)]
    pub collections: Collections,
    pub events: EventCounts,
    pub commit_requested: bool,
    /// Why the migration is retrying, while it rides out a transient fault.
    pub retrying: Option<String>,
    /// Transient faults ridden out, and failures, by kind.
    pub retries: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Why the migration is PAUSED.
    pub paused_reason: Option<String>,
    /// When the cutover window closes (it opens when `canCommit` first turns true).
    #[serde(skip)]
    pub cutover_deadline: Option<Instant>,
    /// The length of the cutover window.
    #[serde(skip)]
    pub cutover_window: std::time::Duration,
    pub rates: Rates,
    /// Seconds of source history between the oldest oplog entry and Ferry's resume point.
    pub oplog_window_seconds: Option<u64>,
    /// The verification, when one runs (`--verify`).
    pub verification: Option<VerificationProgress>,
    /// Why the source's writes will stay open at commit, when they will (see `ferry migrate
    /// --no-block-writes`).
    pub writes_open_at_commit: Option<String>,
    /// Whether the source's user writes were blocked at the commit point (once committing).
    pub source_writes_blocked: Option<bool>,
    /// Writes the source took after the commit point, by namespace.
    pub stray_writes: Vec<StrayWrites>,
    /// The source time change application has reached.
    #[serde(skip)]
    pub resume_time: Option<mongodb::bson::Timestamp>,
    #[serde(skip)]
    pub started: Instant,
    /// The last time the migration made durable progress (a checkpoint).
    #[serde(skip)]
    pub last_progress: Instant,
}

impl Snapshot {
    pub fn copied_bytes(&self) -> u64 {
        self.collections.iter().map(|c| c.copied_bytes).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.collections
            .iter()
            .map(|c| c.estimated_total_bytes.max(c.copied_bytes))
            .sum()
    }

    pub fn copied_documents(&self) -> u64 {
        self.collections.iter().map(|c| c.copied_documents).sum()
    }

    /// The mongosync-shaped reply of `GET /api/v1/progress`.
    pub fn to_api_json(&self) -> serde_json::Value {
        let mut progress = serde_json::json!({
            "state": self.state.as_str(),
            "canCommit": self.can_commit,
            "canWrite": self.can_write,
            "info": self.phase.as_str(),
            "lagTimeSeconds": self.lag_time_seconds,
            "collectionCopy": {
                "estimatedTotalBytes": self.total_bytes(),
                "estimatedCopiedBytes": self.copied_bytes(),
            },
            "direction": self.direction.as_str(),
            "source": self.source_version.map(|v| serde_json::json!({
                "version": v.to_string(),
                "expandedEvents": v.expanded_events(),
            })),
            "directionMapping": match self.direction {
                Direction::Forward => serde_json::json!({ "Source": "cluster0: source", "Destination": "cluster1: destination" }),
                Direction::Reverse => serde_json::json!({ "Source": "cluster1: destination", "Destination": "cluster0: source" }),
            },
            "commitRequested": self.commit_requested,
            "eventsApplied": self.events,
            "collectionCounts": self.collections.counts(),
            "collections": self.collections.iter().filter(|c| c.phase == "copying" || c.phase == "indexing").take(IN_FLIGHT_ROWS).collect::<Vec<_>>(),
            "indexBuilding": self.collections.iter().filter(|c| c.phase == "indexing").map(|c| serde_json::json!({ "namespace": c.namespace, "indexes": c.indexes_building })).collect::<Vec<_>>(),
            "elapsedSeconds": self.started.elapsed().as_secs(),
            "oplogWindowSeconds": self.oplog_window_seconds,
            "verification": self.verification,
            "rates": self.rates,
            "eta": { "copySeconds": self.rates.copy_eta_seconds, "catchUpSeconds": self.rates.catch_up_eta_seconds },
            "cutoverWindowSecondsLeft": self.cutover_deadline.map(|d| d.saturating_duration_since(Instant::now()).as_secs()),
            "retries": self.retries + crate::majority::resent(),
            "writesResent": crate::majority::resent(),
        });
        if let Some(blocked) = self.source_writes_blocked {
            progress["sourceWritesBlocked"] = serde_json::Value::Bool(blocked);
        }
        if !self.stray_writes.is_empty() {
            progress["strayWrites"] = serde_json::json!(self.stray_writes);
        }
        if let Some(reason) = &self.paused_reason {
            progress["pausedReason"] = serde_json::Value::String(reason.clone());
        }
        if let Some(reason) = &self.retrying {
            progress["retrying"] = serde_json::Value::String(reason.clone());
        }
        if let Some(error) = &self.error {
            progress["error"] = serde_json::Value::String(error.clone());
        }
        serde_json::json!({ "progress": progress })
    }
}

/// The shared, lockable progress of one migration.
#[derive(Clone)]
pub struct Progress(Arc<Mutex<Snapshot>>);

impl Progress {
    /// Starts the snapshot over, for the next migration of the same process (a reverse).
    pub fn reset(&self) {
        let fresh = Progress::default().snapshot();
        self.update(|s| *s = fresh);
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Snapshot {
            state: State::Idle,
            direction: Direction::Forward,
            source_version: None,
            phase: Phase::Validating,
            can_commit: false,
            can_write: false,
            lag_time_seconds: None,
            error: None,
            collections: Collections::default(),
            events: EventCounts::default(),
            commit_requested: false,
            retrying: None,
            retries: 0,
            errors: Default::default(),
            paused_reason: None,
            cutover_deadline: None,
            cutover_window: std::time::Duration::from_secs(72 * 3600),
            rates: Rates::default(),
            oplog_window_seconds: None,
            verification: None,
            writes_open_at_commit: None,
            source_writes_blocked: None,
            stray_writes: Vec::new(),
            resume_time: None,
            started: Instant::now(),
            last_progress: Instant::now(),
        })))
    }
}

impl Progress {
    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().expect("progress lock poisoned").clone()
    }

    pub fn update<R>(&self, change: impl FnOnce(&mut Snapshot) -> R) -> R {
        change(&mut self.0.lock().expect("progress lock poisoned"))
    }

    /// Records durable progress (a checkpoint written): the retry window counts from here, and
    /// whatever was being retried has passed.
    pub fn checkpointed(&self) {
        self.update(|s| {
            s.last_progress = Instant::now();
            s.retrying = None;
        });
    }

    /// Adds copied documents to one namespace's counters.
    pub fn add_copied(&self, namespace: &str, documents: u64, bytes: u64) {
        self.update(|s| {
            if let Some(c) = s.collections.get_mut(namespace) {
                c.copied_documents += documents;
                c.copied_bytes += bytes;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_reply_has_mongosync_shape() {
        let progress = Progress::default();
        progress.update(|s| {
            s.state = State::Running;
            s.phase = Phase::CollectionCopy;
            s.collections.set(CollectionProgress {
                namespace: "a.b".into(),
                estimated_total_bytes: 100,
                copied_bytes: 40,
                ..Default::default()
            });
        });
        let json = progress.snapshot().to_api_json();
        assert_eq!(json["progress"]["state"], "RUNNING");
        assert_eq!(json["progress"]["info"], "collection copy");
        assert_eq!(json["progress"]["canCommit"], false);
        assert_eq!(json["progress"]["lagTimeSeconds"], serde_json::Value::Null);
        assert_eq!(
            json["progress"]["collectionCopy"]["estimatedTotalBytes"],
            100
        );
        assert_eq!(
            json["progress"]["collectionCopy"]["estimatedCopiedBytes"],
            40
        );
        assert!(json["progress"].get("error").is_none());
    }

    #[test]
    fn the_reply_stays_small_with_many_collections() {
        let progress = Progress::default();
        progress.update(|s| {
            for i in 0..20_000 {
                s.collections.set(CollectionProgress {
                    namespace: format!("tenant{i:05}.orders_with_a_long_name"),
                    estimated_total_bytes: 1000,
                    phase: match i % 500 {
                        0 => "copying",
                        1 => "indexing",
                        _ => "indexed",
                    },
                    indexes_building: 1,
                    ..Default::default()
                });
            }
        });
        progress.add_copied("tenant00500.orders_with_a_long_name", 3, 30);
        let snapshot = progress.snapshot();
        let reply = snapshot.to_api_json();
        let size = reply.to_string().len();
        assert!(size < 64 * 1024, "{size} bytes");
        let p = &reply["progress"];
        assert_eq!(p["collectionCounts"]["total"], 20_000);
        assert_eq!(p["collectionCounts"]["copying"], 40);
        assert_eq!(p["collectionCounts"]["indexing"], 40);
        assert_eq!(p["collections"].as_array().unwrap().len(), IN_FLIGHT_ROWS);
        assert_eq!(p["indexBuilding"].as_array().unwrap().len(), 40);
        assert_eq!(p["collectionCopy"]["estimatedCopiedBytes"], 30);
        let page = snapshot.collections.page(19_990, 500);
        assert_eq!(page.len(), 10);
        assert_eq!(page[0].namespace, "tenant19990.orders_with_a_long_name");
        assert!(snapshot.collections.page(30_000, 500).is_empty());
    }
}
