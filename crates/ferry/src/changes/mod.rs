//! The source's change stream: where it starts and how it is opened (`open`), split events
//! joined (`fragments`), events read in rounds and what each round settles (`rounds`), and each
//! raw event decoded just enough to route it. The event itself stays raw BSON so documents reach
//! the destination byte for byte.

pub mod fragments;
pub mod open;
pub mod rounds;

pub use open::{start_time, Capture, StreamFrom};

use anyhow::{bail, Context, Result};
use mongodb::bson::{Bson, RawDocument, RawDocumentBuf, Timestamp};

/// The kind of a change event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Replace,
    Delete,
    Create,
    Drop,
    Rename,
    DropDatabase,
    CreateIndexes,
    DropIndexes,
    Modify,
    Invalidate,
    /// Events Ferry does not act on (sharding events on a replica set source, future kinds).
    Other(String),
}

impl Op {
    fn parse(name: &str) -> Self {
        match name {
            "insert" => Op::Insert,
            "update" => Op::Update,
            "replace" => Op::Replace,
            "delete" => Op::Delete,
            "create" => Op::Create,
            "drop" => Op::Drop,
            "rename" => Op::Rename,
            "dropDatabase" => Op::DropDatabase,
            "createIndexes" => Op::CreateIndexes,
            "dropIndexes" => Op::DropIndexes,
            "modify" => Op::Modify,
            "invalidate" => Op::Invalidate,
            other => Op::Other(other.to_string()),
        }
    }

    /// Whether this event writes one document (as opposed to changing the catalog).
    pub fn is_crud(&self) -> bool {
        matches!(self, Op::Insert | Op::Update | Op::Replace | Op::Delete)
    }
}

/// One change event, decoded for routing; `raw` is the event as the server sent it.
#[derive(Clone, Debug)]
pub struct ChangeEvent {
    pub op: Op,
    pub db: String,
    /// The collection, absent for database-wide events.
    pub coll: Option<String>,
    pub cluster_time: Timestamp,
    /// The UUID of the collection the event happened to (bytes of the BSON binary).
    pub collection_uuid: Option<Vec<u8>>,
    pub raw: RawDocumentBuf,
}

impl ChangeEvent {
    pub fn decode(raw: RawDocumentBuf) -> Result<Self> {
        let op = Op::parse(
            raw.get_str("operationType")
                .context("change event without operationType")?,
        );
        let cluster_time = raw
            .get_timestamp("clusterTime")
            .context("change event without clusterTime")?;
        let (db, coll) = match raw.get_document("ns") {
            Ok(ns) => (
                ns.get_str("db").unwrap_or_default().to_string(),
                ns.get_str("coll").ok().map(str::to_string),
            ),
            Err(_) => (String::new(), None),
        };
        let collection_uuid = match raw.get("collectionUUID") {
            Ok(Some(mongodb::bson::RawBsonRef::Binary(binary))) => Some(binary.bytes.to_vec()),
            _ => None,
        };
        Ok(Self {
            op,
            db,
            coll,
            cluster_time,
            collection_uuid,
            raw,
        })
    }

    /// The event's resume token (its `_id`): resuming after it continues with the next event.
    pub fn resume_token(&self) -> Result<Bson> {
        let id = self.raw.get("_id")?.with_context(|| {
            format!(
                "{:?} event on {} without a resume token",
                self.op,
                self.ns()
            )
        })?;
        Ok(Bson::try_from(id.to_raw_bson())?)
    }

    /// The transaction the event belongs to, as (session id bytes, transaction number).
    pub fn transaction(&self) -> Option<(Vec<u8>, i64)> {
        let session = self.raw.get_document("lsid").ok()?;
        let number = self.raw.get_i64("txnNumber").ok()?;
        Some((session.as_bytes().to_vec(), number))
    }

    pub fn ns(&self) -> String {
        match &self.coll {
            Some(coll) => format!("{}.{coll}", self.db),
            None => self.db.clone(),
        }
    }

    /// A sub-document of the event (`documentKey`, `fullDocument`, `operationDescription`, ...).
    pub fn document(&self, field: &str) -> Result<&RawDocument> {
        self.raw
            .get_document(field)
            .with_context(|| format!("{:?} event on {} has no {field}", self.op, self.ns()))
    }

    /// The target of a rename event as (db, collection).
    pub fn rename_target(&self) -> Result<(String, String)> {
        let to = self.document("to")?;
        match (to.get_str("db"), to.get_str("coll")) {
            (Ok(db), Ok(coll)) => Ok((db.to_string(), coll.to_string())),
            _ => bail!("rename event on {} has a malformed `to`", self.ns()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{rawdoc, spec::BinarySubtype, Binary};

    #[test]
    fn decodes_routing_fields_and_keeps_the_raw_event() {
        let raw = rawdoc! {
            "_id": { "_data": "x" },
            "operationType": "rename",
            "clusterTime": Timestamp { time: 7, increment: 2 },
            "ns": { "db": "shop", "coll": "a" },
            "to": { "db": "shop", "coll": "b" },
            "collectionUUID": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1; 16] },
        };
        let event = ChangeEvent::decode(raw.clone()).unwrap();
        assert_eq!(event.op, Op::Rename);
        assert_eq!(event.ns(), "shop.a");
        assert_eq!(
            event.cluster_time,
            Timestamp {
                time: 7,
                increment: 2
            }
        );
        assert_eq!(event.collection_uuid, Some(vec![1; 16]));
        assert_eq!(event.rename_target().unwrap(), ("shop".into(), "b".into()));
        assert_eq!(event.raw, raw);
    }

    #[test]
    fn events_of_sources_before_6_0_carry_no_collection_uuid() {
        // As 4.2 to 5.0 report a rename: its target, and no collectionUUID (the applier then
        // copies the target again rather than guess which incarnation it holds).
        let rename = rawdoc! {
            "_id": { "_data": "x" },
            "operationType": "rename",
            "clusterTime": Timestamp { time: 7, increment: 2 },
            "ns": { "db": "shop", "coll": "a" },
            "to": { "db": "shop", "coll": "b" },
        };
        let event = ChangeEvent::decode(rename).unwrap();
        assert_eq!(
            (event.op.clone(), event.collection_uuid.clone()),
            (Op::Rename, None)
        );
        assert_eq!(event.rename_target().unwrap(), ("shop".into(), "b".into()));
    }

    #[test]
    fn database_events_have_no_collection() {
        let raw = rawdoc! {
            "operationType": "dropDatabase",
            "clusterTime": Timestamp { time: 1, increment: 1 },
            "ns": { "db": "shop" },
        };
        let event = ChangeEvent::decode(raw).unwrap();
        assert_eq!(event.op, Op::DropDatabase);
        assert_eq!(event.coll, None);
        assert_eq!(event.ns(), "shop");
    }
}
