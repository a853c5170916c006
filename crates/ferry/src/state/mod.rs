//! The migration's durable state, kept on the destination in its own database (`--state-db`,
//! default `__ferry`) and never mixed with user data. Written with majority write concern; a
//! checkpoint only ever names changes and copied ranges that the destination has acknowledged
//! (DESIGN rule 5). Because it lives on the destination, a migration resumes from any machine.
//!
//! Two collections: `migration` holds one document (state, phase, plan, T0, the change-stream
//! checkpoint, the commit point); `collections` holds one document per copied collection (its
//! source UUID, copy status and the last `_id` written). The copy states are written in `copies`,
//! with the others asked at the same time (`group`); the checkpoints in `checkpoint`.

mod checkpoint;
pub use checkpoint::Checkpoints;
mod copies;
pub use copies::CopiedUpTo;
mod group;

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document, Timestamp};
use mongodb::options::ReadConcern;
use mongodb::{Client, Collection};
use std::sync::Arc;

use crate::incarnations::Incarnations;
use crate::lifecycle::{Phase, State};
use crate::progress::StrayWrites;

const STATE_ID: &str = "migration";

/// The state collections on the destination.
#[derive(Clone)]
pub struct StateStore {
    migration: Collection<Document>,
    collections: Collection<Document>,
    /// The copy states' absolute writes, sent together.
    grouped: Arc<group::Group>,
}

/// Where change application stands: the resume token of the last acknowledged round, the
/// source time it reached, and which incarnation each destination namespace holds.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub resume_token: Bson,
    pub applied_time: Timestamp,
    pub incarnations: Incarnations,
}

/// The stored state of a migration, as read back on a restart.
#[derive(Clone, Debug)]
pub struct Stored {
    pub state: State,
    pub phase: Phase,
    pub plan: Document,
    /// T0: the change stream starts here and every copy read sees at least it.
    pub start_time: Timestamp,
    pub checkpoint: Option<Checkpoint>,
    pub commit: Option<CommitPoint>,
    /// Where a reverse can start (`--reversible`, recorded at COMMITTED).
    pub reverse: Option<ReversePoint>,
}

/// The way back from a committed migration: the destination's time at which it equalled the
/// source (every change applied, constraints restored), and which incarnation of each
/// namespace it then held. A reverse follows the destination's changes from here.
#[derive(Clone, Debug)]
pub struct ReversePoint {
    pub time: Timestamp,
    pub incarnations: Incarnations,
}

/// Where the commit stops applying changes, and whether the source's writes were blocked there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPoint {
    pub time: Timestamp,
    /// `None` when writes were blocked on the source; otherwise why not.
    pub writes_open: Option<String>,
}

/// How far one collection's copy got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStatus {
    Copying,
    Copied,
    Indexed,
}

impl CopyStatus {
    fn as_str(self) -> &'static str {
        match self {
            CopyStatus::Copying => "copying",
            CopyStatus::Copied => "copied",
            CopyStatus::Indexed => "indexed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "copied" => CopyStatus::Copied,
            "indexed" => CopyStatus::Indexed,
            _ => CopyStatus::Copying,
        }
    }
}

/// One `_id` range of a collection's copy: after `lo` (exclusive) up to `hi` (inclusive), open
/// where absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Partition {
    pub lo: Option<Bson>,
    pub hi: Option<Bson>,
    /// The greatest `_id` of this range acknowledged by the destination.
    pub last_id: Option<Bson>,
    pub done: bool,
    /// The documents and bytes of this range acknowledged by the destination: totals, so that
    /// their write is absolute (and can go with others, `group`).
    pub documents: u64,
    pub bytes: u64,
}

/// The stored copy state of one collection.
#[derive(Clone, Debug)]
pub struct CollectionState {
    pub ns: String,
    pub uuid: Option<Bson>,
    pub status: CopyStatus,
    pub partitions: Vec<Partition>,
    pub copied_documents: u64,
    pub copied_bytes: u64,
}

impl StateStore {
    pub fn new(destination: &Client, state_db: &str) -> Self {
        // Written with the client's write concern, a journaled majority (`Endpoint::parse`).
        let options = mongodb::options::CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .build();
        let db = destination.database(state_db);
        Self {
            migration: db.collection_with_options("migration", options.clone()),
            collections: db.collection_with_options("collections", options),
            grouped: Arc::new(group::Group::new(db, "collections")),
        }
    }

    /// Reads the stored state, if a migration has left one.
    pub async fn load(&self) -> Result<Option<Stored>> {
        let Some(document) = self
            .migration
            .find_one(doc! { "_id": STATE_ID })
            .await
            .context("reading Ferry's state on the destination")?
        else {
            return Ok(None);
        };
        let checkpoint = match (
            document.get("resumeToken"),
            document.get_timestamp("appliedTime"),
        ) {
            (Some(token), Ok(applied_time)) => Some(Checkpoint {
                resume_token: token.clone(),
                applied_time,
                incarnations: incarnations_from(document.get_array("incarnations").ok()),
            }),
            _ => None,
        };
        Ok(Some(Stored {
            state: State::parse(document.get_str("state").unwrap_or_default()),
            phase: Phase::parse(document.get_str("phase").unwrap_or_default()),
            plan: document.get_document("plan").cloned().unwrap_or_default(),
            start_time: document.get_timestamp("startTime").context(
                "Ferry's state on the destination has no start time (an older Ferry wrote it): start over with --drop",
            )?,
            checkpoint,
            commit: document
                .get_timestamp("commitPoint")
                .ok()
                .map(|time| CommitPoint {
                    time,
                    writes_open: document.get_str("writesOpen").ok().map(str::to_string),
                }),
            reverse: document
                .get_timestamp("reverseFrom")
                .ok()
                .map(|time| ReversePoint {
                    time,
                    incarnations: incarnations_from(
                        document.get_array("reverseIncarnations").ok(),
                    ),
                }),
        }))
    }

    /// Drops the state database: the destination forgets any earlier migration.
    pub async fn clear(&self) -> Result<()> {
        self.migration
            .client()
            .database(self.migration.namespace().db.as_str())
            .drop()
            .await
            .context("dropping Ferry's state database on the destination")
    }

    /// Records the migration's start: the plan it runs and T0.
    pub async fn start(&self, plan: Document, start_time: Timestamp) -> Result<()> {
        self.migration
            .insert_one(doc! {
                "_id": STATE_ID,
                "state": State::Running.as_str(),
                "phase": Phase::Validating.as_str(),
                "plan": plan,
                "startTime": start_time,
                "startedAt": DateTime::now(),
            })
            .await
            .context("recording the migration's start on the destination")?;
        Ok(())
    }

    /// Records a state or phase change (and the error of a FAILED migration).
    pub async fn set_state(&self, state: State, phase: Phase, error: Option<&str>) -> Result<()> {
        self.set(doc! {
            "state": state.as_str(),
            "phase": phase.as_str(),
            "error": error,
        })
        .await
    }

    /// Records the commit point the migration must reach before COMMITTED.
    pub async fn set_commit_point(&self, point: &CommitPoint) -> Result<()> {
        self.set(doc! {
            "state": State::Committing.as_str(),
            "commitPoint": point.time,
            "writesOpen": point.writes_open.as_deref(),
        })
        .await
    }

    /// Records COMMITTED, with the writes the source took after the commit point.
    pub async fn set_committed(&self, stray: &[StrayWrites]) -> Result<()> {
        let stray: Vec<Document> = stray
            .iter()
            .map(|w| doc! { "namespace": &w.namespace, "count": w.count as i64, "firstTime": i64::from(w.first_time) })
            .collect();
        self.set(doc! {
            "state": State::Committed.as_str(),
            "phase": Phase::Done.as_str(),
            "error": Bson::Null,
            "strayWrites": stray,
        })
        .await
    }

    /// Records where a reverse of this migration can start.
    pub async fn set_reverse_point(&self, point: &ReversePoint) -> Result<()> {
        self.set(doc! {
            "reverseFrom": point.time,
            "reverseIncarnations": incarnations_bson(&point.incarnations),
        })
        .await
    }

    async fn set(&self, fields: Document) -> Result<()> {
        self.set_where(Document::new(), fields).await.map(drop)
    }

    /// Sets `fields` of the migration's document when it also matches `filter`; whether it did.
    async fn set_where(&self, filter: Document, mut fields: Document) -> Result<bool> {
        let mut query = doc! { "_id": STATE_ID };
        query.extend(filter);
        fields.insert("updatedAt", DateTime::now());
        let written = self
            .migration
            .update_one(query, doc! { "$set": fields })
            .await
            .context("writing Ferry's state on the destination")?;
        Ok(written.matched_count == 1)
    }

    /// Every collection's stored copy state, each document turned into its state as it
    /// arrives: at 20,000 collections the documents all read first were tens of MB at once.
    pub async fn collections(&self) -> Result<Vec<CollectionState>> {
        let states = self
            .collections
            .find(doc! {})
            .await
            .context("reading Ferry's copy state")?
            .map_ok(|d| CollectionState {
                ns: d.get_str("_id").unwrap_or_default().to_string(),
                uuid: d.get("uuid").cloned(),
                status: CopyStatus::parse(d.get_str("status").unwrap_or_default()),
                partitions: d
                    .get_array("partitions")
                    .map(|ps| {
                        // Sized to the stored ranges: collected from a filter, a collection's
                        // one range took room for four (29 of the 35 MB that 20,000 states
                        // held, measured with heaptrack).
                        let mut partitions = Vec::with_capacity(ps.len());
                        partitions.extend(ps.iter().filter_map(Bson::as_document).map(|p| {
                            Partition {
                                lo: p.get("lo").cloned().filter(|b| *b != Bson::Null),
                                hi: p.get("hi").cloned().filter(|b| *b != Bson::Null),
                                last_id: p.get("lastId").cloned().filter(|b| *b != Bson::Null),
                                done: p.get_bool("done").unwrap_or(false),
                                documents: count(p, "documents"),
                                bytes: count(p, "bytes"),
                            }
                        }));
                        partitions
                    })
                    .unwrap_or_default(),
                copied_documents: count(&d, "copiedDocuments"),
                copied_bytes: count(&d, "copiedBytes"),
            })
            // The collection's counts are its ranges' (a copy recorded before counts were kept
            // per range has them in its own fields).
            .map_ok(|mut state| {
                for p in &state.partitions {
                    state.copied_documents += p.documents;
                    state.copied_bytes += p.bytes;
                }
                state
            })
            .try_collect()
            .await
            .context("reading Ferry's copy state")?;
        Ok(states)
    }

    /// The incarnation each stored copy is of: its namespace and the source UUID it was copied
    /// from, read without its ranges. Read once the copy has ended, beside the whole catalog:
    /// at 20,000 collections the whole states read then were a third of the run's peak memory.
    pub async fn copied_incarnations(&self) -> Result<Incarnations> {
        let mut incarnations = Incarnations::default();
        let mut states = self
            .collections
            .find(doc! {})
            .projection(doc! { "uuid": 1 })
            .await
            .context("reading Ferry's copy state")?;
        while let Some(state) = states
            .try_next()
            .await
            .context("reading Ferry's copy state")?
        {
            if let (Ok(ns), Some(Bson::Binary(uuid))) = (state.get_str("_id"), state.get("uuid")) {
                incarnations.hold(ns, uuid.bytes.clone());
            }
        }
        Ok(incarnations)
    }
}

/// A stored count, 0 when absent.
fn count(document: &Document, field: &str) -> u64 {
    document.get_i64(field).unwrap_or(0).max(0) as u64
}

fn incarnations_bson(incarnations: &Incarnations) -> Vec<Document> {
    incarnations
        .iter()
        .map(|(ns, uuid)| doc! { "ns": ns, "uuid": uuid_bson(uuid) })
        .collect()
}

fn uuid_bson(uuid: &[u8]) -> Bson {
    Bson::Binary(mongodb::bson::Binary {
        subtype: mongodb::bson::spec::BinarySubtype::Uuid,
        bytes: uuid.to_vec(),
    })
}

fn incarnations_from(stored: Option<&mongodb::bson::Array>) -> Incarnations {
    let mut incarnations = Incarnations::default();
    for entry in stored.into_iter().flatten().filter_map(Bson::as_document) {
        if let (Ok(ns), Some(Bson::Binary(uuid))) = (entry.get_str("ns"), entry.get("uuid")) {
            incarnations.hold(ns, uuid.bytes.clone());
        }
    }
    incarnations
}
