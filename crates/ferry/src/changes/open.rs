//! Where the change stream starts (T0, taken before the first document is read, DESIGN rule 1,
//! or a checkpoint's resume token) and how it is opened: cluster-wide, with expanded (DDL)
//! events, on the primary, and splitting events over 16 MiB where the source can.

use std::time::Duration;

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::options::{ReadPreference, SelectionCriteria};
use mongodb::Client;

use crate::source::info::Version;

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

/// What the source's version lets its change stream carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Events over 16 MiB arrive in fragments (`$changeStreamSplitLargeEvent`, 6.0.9+, 7.0+).
    pub split: bool,
    /// Expanded events (6.0+): `create`, `createIndexes`, `dropIndexes`, `modify`, and the
    /// collection UUID on every event. Without them, the catalog is reconciled instead
    /// (`apply::reconcile`) and events are attributed by name.
    pub expanded: bool,
}

impl Capture {
    pub fn of(version: Version) -> Self {
        Self {
            split: version.splits_large_events(),
            expanded: version.expanded_events(),
        }
    }
}

/// Opens the cluster-wide change stream on the source's primary, from `from`, with expanded
/// (DDL) events where the source has them. With `capture.split`, events over 16 MiB arrive in
/// fragments for `fragments` to join. Events come as raw BSON.
pub async fn open(
    source: &Client,
    from: &StreamFrom,
    capture: Capture,
) -> Result<ChangeStream<RawDocumentBuf>> {
    let pipeline = if capture.split {
        vec![doc! { "$changeStreamSplitLargeEvent": {} }]
    } else {
        Vec::new()
    };
    let watch = source
        .watch()
        .pipeline(pipeline)
        .max_await_time(MAX_AWAIT)
        .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary));
    // Only where the server knows the option: before 6.0 `$changeStream` refuses unknown fields.
    let watch = if capture.expanded {
        watch.show_expanded_events(true)
    } else {
        watch
    };
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
