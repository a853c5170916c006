//! The re-check queue of a migration's verification: the documents to compare again, kept on
//! the destination (so memory stays bounded and a restart keeps it). Change application queues
//! every document it writes after the first pass may have seen it, and the first pass queues
//! what differed while changes were still in flight. Re-checking compares each queued document
//! on both sides by `_id` and forgets the ones found equal; what stays different once the
//! source is quiescent and every change is applied is a real difference.
//!
//! Each entry carries a version that every queueing increments, and an entry is forgotten only
//! if its version is unchanged since it was read, so a write that lands during a re-check is
//! never lost (a time would not do: a transaction's writes share one, and a resume replays
//! them). An entry's key is one binary value (namespace, then the `_id`'s BSON), so that every
//! queue write is a point lookup in the `_id` index.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::{Client, Collection, Database};

use super::compare::{comparable_bytes, field_diff, id_of, mismatch, Sides};
use super::expiry::Expiry;
use super::report::Mismatch;
use crate::copy::reader::{self, Order, Scan};
use crate::namespace::Namespace;
use crate::source::reads;

/// The collection of the state database that holds the queue.
const COLLECTION: &str = "migration.recheck";
/// Queue entries read, compared and forgotten at a time.
const PAGE: i64 = 1000;

/// What one re-check did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecheckCounts {
    pub checked: u64,
    /// Found equal and forgotten.
    pub cleared: u64,
}

#[derive(Clone)]
pub struct RecheckQueue {
    database: Database,
    collection: Collection<Document>,
}

impl RecheckQueue {
    pub fn new(destination: &Client, state_db: &str) -> Self {
        let database = destination.database(state_db);
        Self {
            collection: database.collection(COLLECTION),
            database,
        }
    }

    /// Queues documents, each as (namespace, `_id`).
    pub async fn queue(&self, entries: Vec<(String, Bson)>) -> Result<()> {
        for chunk in entries.chunks(PAGE as usize) {
            let statements: Vec<Document> = chunk
                .iter()
                .map(|(ns, id)| {
                    Ok(doc! {
                        "q": { "_id": entry_key(ns, id)? },
                        "u": {
                            "$inc": { "v": 1 },
                            "$setOnInsert": { "ns": ns, "id": id.clone() },
                        },
                        "upsert": true,
                    })
                })
                .collect::<Result<_>>()?;
            self.write("update", "updates", statements)
                .await
                .context("queueing documents for re-check")?;
        }
        Ok(())
    }

    /// How many documents wait for a re-check.
    pub async fn len(&self) -> Result<u64> {
        self.collection
            .count_documents(doc! {})
            .await
            .context("counting the re-check queue")
    }

    /// Compares every queued document on both sides, forgets the equal ones and hands each
    /// difference to `found` (with its namespace). The differences stay queued; a document on
    /// one side only that a TTL index has expired is handed over as `expired`, and forgotten.
    pub async fn recheck(
        &self,
        sides: &Sides<'_>,
        found: &mut (dyn FnMut(&str, Mismatch) + Send),
    ) -> Result<RecheckCounts> {
        let comparison = sides.comparison;
        let mut expiry = Expiry::new(*sides);
        let mut counts = RecheckCounts::default();
        let mut after: Option<Bson> = None;
        loop {
            let filter = match &after {
                Some(key) => doc! { "_id": { "$gt": key.clone() } },
                None => doc! {},
            };
            let page: Vec<Document> = self
                .collection
                .find(filter)
                .sort(doc! { "_id": 1 })
                .limit(PAGE)
                .await
                .context("reading the re-check queue")?
                .try_collect()
                .await
                .context("reading the re-check queue")?;
            let Some(last) = page.last() else {
                return Ok(counts);
            };
            after = last.get("_id").cloned();
            let mut by_namespace: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
            for stored in page {
                let entry = Entry::parse(stored)?;
                by_namespace
                    .entry(entry.ns.clone())
                    .or_default()
                    .push(entry);
            }
            let mut equal = Vec::new();
            for (ns, entries) in by_namespace {
                counts.checked += entries.len() as u64;
                let namespace =
                    Namespace::parse(&ns).with_context(|| format!("a re-check entry for {ns}"))?;
                let ids: Vec<Bson> = entries.iter().map(|e| e.id.clone()).collect();
                let reading = || format!("reading {namespace} for verification");
                let on_source = fetch(sides, true, &namespace, &ids)
                    .await
                    .with_context(reading)?;
                let on_destination = fetch(sides, false, &namespace, &ids)
                    .await
                    .with_context(reading)?;
                expiry.documents_read();
                for entry in entries {
                    let key = id_key(&entry.id)?;
                    let mismatch = match (on_source.get(&key), on_destination.get(&key)) {
                        (None, None) => None,
                        (Some(a), None) => Some(expiry.one_sided("missing", &namespace, a).await?),
                        (None, Some(b)) => Some(expiry.one_sided("extra", &namespace, b).await?),
                        (Some(a), Some(b)) => {
                            if comparable_bytes(a, comparison)? == comparable_bytes(b, comparison)?
                            {
                                None
                            } else {
                                Some(mismatch("different", a, field_diff(a, b)?)?)
                            }
                        }
                    };
                    if let Some(mismatch) = mismatch {
                        let settled = mismatch.kind == "expired";
                        found(&ns, mismatch);
                        if !settled {
                            continue;
                        }
                    }
                    equal.push(doc! {
                        "q": { "_id": entry.key, "v": entry.version },
                        "limit": 1,
                    });
                }
            }
            counts.cleared += equal.len() as u64;
            if !equal.is_empty() {
                self.write("delete", "deletes", equal)
                    .await
                    .context("forgetting re-checked documents")?;
            }
        }
    }

    /// Forgets the whole queue.
    pub async fn clear(&self) -> Result<()> {
        self.collection
            .drop()
            .await
            .context("clearing the re-check queue")
    }

    async fn write(&self, command: &str, field: &str, statements: Vec<Document>) -> Result<()> {
        let reply = crate::majority::command(
            &self.database,
            doc! { command: COLLECTION, field: statements, "ordered": false },
        )
        .await?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            anyhow::bail!("the destination refused re-check queue writes: {errors:?}");
        }
        Ok(())
    }
}

/// One queued document.
struct Entry {
    /// The queue's key (see [`entry_key`]).
    key: Bson,
    ns: String,
    id: Bson,
    /// How many times it was queued, when it was read.
    version: Bson,
}

impl Entry {
    fn parse(stored: Document) -> Result<Self> {
        Ok(Self {
            ns: stored
                .get_str("ns")
                .context("a re-check entry without ns")?
                .to_string(),
            id: stored
                .get("id")
                .cloned()
                .context("a re-check entry without id")?,
            version: stored
                .get("v")
                .cloned()
                .context("a re-check entry without version")?,
            key: stored
                .get("_id")
                .cloned()
                .context("a re-check entry without key")?,
        })
    }
}

/// The documents with these `_id`s on one side, by `_id`.
async fn fetch(
    sides: &Sides<'_>,
    on_source: bool,
    ns: &Namespace,
    ids: &[Bson],
) -> Result<HashMap<Vec<u8>, RawDocumentBuf>> {
    let (client, at) = sides.side(on_source);
    let mut session = reads::session(client, at).await?;
    let scan = Scan {
        db: &ns.db,
        coll: &ns.coll,
        filter: doc! { "_id": { "$in": ids } },
        order: Order::Id,
        limit: None,
    };
    let mut rows = reader::open(client, &mut session, scan).await?;
    let mut found = HashMap::new();
    while let Some(document) = rows.next().await? {
        found.insert(id_key(&id_of(&document)?)?, document);
    }
    Ok(found)
}

/// A queue entry's key: the namespace, a zero byte, then the `_id` as [`id_key`] bytes.
fn entry_key(ns: &str, id: &Bson) -> Result<Bson> {
    let mut bytes = ns.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend(id_key(id)?);
    Ok(Bson::Binary(mongodb::bson::Binary {
        subtype: mongodb::bson::spec::BinarySubtype::Generic,
        bytes,
    }))
}

/// An `_id` as bytes that are equal exactly when the values are (type included).
pub(super) fn id_key(id: &Bson) -> Result<Vec<u8>> {
    Ok(mongodb::bson::to_vec(&doc! { "id": id.clone() })?)
}
