//! The source's change stream: where it starts (T0, taken before the first document is read,
//! DESIGN rule 1), how it is opened and resumed, and each raw event decoded just enough to route
//! it. The event itself stays raw BSON so documents reach the destination byte for byte.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use mongodb::bson::{doc, Bson, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::options::{ReadPreference, SelectionCriteria};
use mongodb::Client;

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

/// How long one `getMore` waits for new events before answering with an empty batch.
const MAX_AWAIT: Duration = Duration::from_millis(500);

/// Where a change stream starts.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamFrom {
    /// At this source time, events at it included (T0).
    Time(Timestamp),
    /// After the event, or the end of the batch, that this resume token names.
    Token(Bson),
}

/// T0: the source's majority-committed time on its primary. Every change after it is applied,
/// and every copy read sees at least it (`source::reads`), so nothing falls between the two.
pub async fn start_time(source: &Client) -> Result<Timestamp> {
    Ok(crate::source::clock::read(source).await?.majority)
}

/// Opens the cluster-wide change stream with expanded (DDL) events on the source's primary, from
/// `from`. With `split`, events over 16 MiB arrive in fragments (`$changeStreamSplitLargeEvent`)
/// for [`Fragments`] to join. Events come as raw BSON.
pub async fn open(
    source: &Client,
    from: &StreamFrom,
    split: bool,
) -> Result<ChangeStream<RawDocumentBuf>> {
    let pipeline = if split {
        vec![doc! { "$changeStreamSplitLargeEvent": {} }]
    } else {
        Vec::new()
    };
    let watch = source
        .watch()
        .pipeline(pipeline)
        .show_expanded_events(true)
        .max_await_time(MAX_AWAIT)
        .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary));
    let watch = match from {
        StreamFrom::Time(time) => watch.start_at_operation_time(*time),
        StreamFrom::Token(token) => watch.resume_after(Some(
            mongodb::bson::from_bson::<ResumeToken>(token.clone())
                .context("the stored resume token is malformed")?,
        )),
    };
    let stream = watch.await.context(
        "opening the source's change stream (needs a replica set and the changeStream privilege)",
    )?;
    Ok(stream.with_type::<RawDocumentBuf>())
}

/// The message for an event too large to read whole.
pub fn too_large_message(split: bool) -> &'static str {
    if split {
        "a change event on the source is too large even in fragments (one of its fields alone exceeds 16 MiB); shrink that document on the source, then run the same command again"
    } else {
        "a change event on the source exceeds 16 MiB (a document near the size limit), and this source version cannot split events: upgrade the source to MongoDB 6.0.9+ or 7.0+ (Ferry then reads such events in fragments), or shrink that document on the source, then run the same command again"
    }
}

/// Joins the fragments of a split event (`splitEvent: {fragment: n, of: m}`): each holds some
/// of the event's top-level fields, and the last one's `_id` is the whole event's resume token.
#[derive(Default)]
pub struct Fragments {
    joined: Option<RawDocumentBuf>,
}

impl Fragments {
    /// Whether a split event's later fragments are still to come.
    pub fn pending(&self) -> bool {
        self.joined.is_some()
    }

    /// Takes the next raw event or fragment; returns the whole event once it is complete.
    pub fn push(&mut self, raw: RawDocumentBuf) -> Result<Option<RawDocumentBuf>> {
        let Ok(split) = raw.get_document("splitEvent") else {
            if self.joined.is_some() {
                bail!("a change event arrived in the middle of a split event's fragments");
            }
            return Ok(Some(raw));
        };
        let (fragment, of) = (split.get_i32("fragment")?, split.get_i32("of")?);
        let mut joined = match self.joined.take() {
            Some(joined) => joined,
            None if fragment == 1 => RawDocumentBuf::new(),
            None => bail!("a split change event began at fragment {fragment} of {of}"),
        };
        for field in &raw {
            let (key, value) = field?;
            if key != "_id" && key != "splitEvent" {
                joined.append_ref(key, value);
            }
        }
        if fragment < of {
            self.joined = Some(joined);
            return Ok(None);
        }
        let mut whole = RawDocumentBuf::new();
        whole.append_ref("_id", raw.get("_id")?.context("a fragment without _id")?);
        for field in &joined {
            let (key, value) = field?;
            whole.append_ref(key, value);
        }
        Ok(Some(whole))
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
    fn split_events_are_joined_from_their_fragments() {
        let time = Timestamp {
            time: 3,
            increment: 1,
        };
        // As a 7.0 server splits an insert: small fields first, `clusterTime` in one fragment
        // only, each fragment with its own resume token.
        let first = rawdoc! {
            "_id": { "_data": "t1" },
            "operationType": "insert",
            "clusterTime": time,
            "ns": { "db": "d", "coll": "c" },
            "documentKey": { "_id": 1 },
            "splitEvent": { "fragment": 1, "of": 2 },
        };
        let second = rawdoc! {
            "_id": { "_data": "t2" },
            "fullDocument": { "_id": 1, "pad": "x" },
            "splitEvent": { "fragment": 2, "of": 2 },
        };
        let mut fragments = Fragments::default();
        assert_eq!(fragments.push(first).unwrap(), None);
        let whole = fragments.push(second).unwrap().unwrap();
        let event = ChangeEvent::decode(whole.clone()).unwrap();
        assert_eq!(event.op, Op::Insert);
        assert_eq!(event.cluster_time, time);
        assert_eq!(
            event
                .document("fullDocument")
                .unwrap()
                .get_str("pad")
                .unwrap(),
            "x"
        );
        assert_eq!(
            whole.get_document("_id").unwrap().get_str("_data").unwrap(),
            "t2",
            "the whole event resumes after its last fragment"
        );
        assert!(whole.get("splitEvent").unwrap().is_none());
        // Unsplit events pass through; a stream that starts mid-event is refused.
        let plain = rawdoc! { "_id": { "_data": "t3" }, "operationType": "drop" };
        assert_eq!(fragments.push(plain.clone()).unwrap(), Some(plain));
        let orphan = rawdoc! { "_id": { "_data": "t4" }, "splitEvent": { "fragment": 2, "of": 2 } };
        assert!(fragments.push(orphan).is_err());
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
