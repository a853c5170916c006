//! Joining a split change event: a source that splits events over 16 MiB
//! (`$changeStreamSplitLargeEvent`) sends each in fragments, each holding some of the event's
//! top-level fields and its own resume token.

use anyhow::{bail, Context, Result};
use mongodb::bson::RawDocumentBuf;

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
    use crate::changes::{ChangeEvent, Op};
    use mongodb::bson::{rawdoc, Timestamp};

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
}
