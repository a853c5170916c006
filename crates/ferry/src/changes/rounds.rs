//! Rounds of change events from the source's change stream, read one round ahead of their
//! application, and what each round proves applied (DESIGN rule 9).
//!
//! A round's events are applied whole; the question is which source time every change up to is
//! then applied: the *settled* time that lag and the commit point are measured against. Two
//! facts of a real replica set shape the answer:
//!
//! - All events of one transaction share one `clusterTime` (so do the parts of a batched
//!   multi-delete), and a round may end in the middle of them. A round cut short by its size
//!   therefore settles only the time just before its last event; one that ends because the stream
//!   had nothing more (an empty batch, which the server never sends in the middle of a
//!   transaction) settles its last event's time.
//! - An idle stream says nothing of time passing, and a majority time read from one node says
//!   nothing of what a stream on another node has delivered. So the stream is opened on the
//!   primary, the clock is read from the primary before and after each round, and a round that
//!   drained the stream settles the majority time read before it only when both readings name the
//!   node and term the stream was opened on. After an election the stream is opened again where it
//!   stands, on the new primary.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mongodb::bson::{Bson, RawDocumentBuf, Timestamp};
use mongodb::change_stream::ChangeStream;
use mongodb::Client;

use super::fragments::Fragments;
use super::open::{self, Capture, StreamFrom};
use super::ChangeEvent;
use crate::server_error::{
    self, BSON_OBJECT_TOO_LARGE, CHANGE_STREAM_FATAL, CHANGE_STREAM_HISTORY_LOST,
};
use crate::source::clock::{self, Node, SourceClock};
use crate::source::oplog;

/// A round reads at most this many events, or for at most this long.
const ROUND_EVENTS: usize = 5000;
const ROUND_TIME: Duration = Duration::from_millis(300);
/// How often opening the stream is tried when the primary changes while it opens.
const OPEN_ATTEMPTS: usize = 5;

/// One round of change events.
pub struct Round {
    /// The source's clock, read from its primary just before the round.
    pub clock: SourceClock,
    pub events: Vec<ChangeEvent>,
    /// The stream had nothing more: every event visible to it before the round's last read is in
    /// this round or an earlier one.
    pub caught_up: bool,
    /// The clock was read before and after the round from the node and term the stream reads,
    /// so its majority time says what the stream has delivered.
    pub same_node: bool,
    /// The stream's resume token after the round.
    pub token: Option<Bson>,
}

/// The source time up to which every change is applied once `round` is, given the time settled
/// before it.
pub fn settled_after(previous: Timestamp, round: &Round) -> Timestamp {
    let mut settled = previous;
    if let Some(last) = round.events.last().map(|e| e.cluster_time) {
        settled = settled.max(if round.caught_up {
            last
        } else {
            just_before(last)
        });
    }
    if round.caught_up && round.same_node {
        settled = settled.max(round.clock.majority);
    }
    settled
}

/// The latest time before `t`.
pub fn just_before(t: Timestamp) -> Timestamp {
    match t.increment {
        0 => Timestamp {
            time: t.time.saturating_sub(1),
            increment: u32::MAX,
        },
        increment => Timestamp {
            time: t.time,
            increment: increment - 1,
        },
    }
}

/// Reads rounds from `from` on, one round ahead of the caller: run the returned work beside the
/// caller (`background::beside`) and take the rounds from the receiver; the first error ends it.
/// With `capture.split`, events over 16 MiB are read in fragments and joined.
pub fn read_ahead(
    source: Client,
    from: StreamFrom,
    capture: Capture,
) -> (
    impl std::future::Future<Output = ()>,
    tokio::sync::mpsc::Receiver<Result<Round>>,
) {
    let (rounds, received) = tokio::sync::mpsc::channel(1);
    let reader = async move {
        let mut reader = match Reader::open(source, from, capture).await {
            Ok(reader) => reader,
            Err(e) => {
                let _ = rounds.send(Err(e)).await;
                return;
            }
        };
        loop {
            let round = reader.next_round().await;
            let failed = round.is_err();
            if rounds.send(round).await.is_err() || failed {
                return;
            }
        }
    };
    (reader, received)
}

/// A change stream on the source's primary, with the node it was opened on.
pub struct Reader {
    source: Client,
    stream: ChangeStream<RawDocumentBuf>,
    node: Node,
    /// The clock read just before the stream was opened: the opening's first batch is already
    /// in hand, so the first round after an opening may claim no later majority time.
    opened: Option<SourceClock>,
    from: StreamFrom,
    capture: Capture,
    fragments: Fragments,
}

impl Reader {
    /// Opens the stream on the primary, from `from`.
    pub async fn open(source: Client, from: StreamFrom, capture: Capture) -> Result<Self> {
        let (stream, opened) = open_on_primary(&source, &from, capture).await?;
        Ok(Self {
            source,
            stream,
            node: opened.node.clone(),
            opened: Some(opened),
            from,
            capture,
            fragments: Fragments::default(),
        })
    }

    /// Reads the next round, opening the stream again first if the primary has changed.
    pub async fn next_round(&mut self) -> Result<Round> {
        let mut clock = match self.opened.take() {
            Some(opened) => opened,
            None => clock::read(&self.source).await?,
        };
        while clock.node != self.node {
            tracing::info!(primary = %clock.node.host, "the source elected a primary: following its change stream from where it stands");
            if let Some(token) = self.stream.resume_token() {
                self.from = StreamFrom::Token(mongodb::bson::to_bson(&token)?);
            }
            let (stream, opened) = open_on_primary(&self.source, &self.from, self.capture).await?;
            self.stream = stream;
            self.node = opened.node.clone();
            clock = opened;
        }
        let (events, caught_up) = self
            .read_round()
            .await
            .map_err(|e| explain(e, self.capture.split))?;
        let after = clock::read(&self.source).await?;
        Ok(Round {
            same_node: after.node == self.node,
            clock,
            events,
            caught_up,
            token: self
                .stream
                .resume_token()
                .map(|t| mongodb::bson::to_bson(&t))
                .transpose()?,
        })
    }

    /// Reads one round of whole events: up to [`ROUND_EVENTS`], for about [`ROUND_TIME`], or
    /// until the stream has nothing more (`caught_up`).
    async fn read_round(&mut self) -> Result<(Vec<ChangeEvent>, bool)> {
        let started = Instant::now();
        let mut events = Vec::new();
        loop {
            let raw = self
                .stream
                .next_if_any()
                .await
                .context("reading the source's change stream")?;
            let Some(raw) = raw else {
                if self.fragments.pending() {
                    continue; // the rest of a split event is on its way
                }
                return Ok((events, true));
            };
            let Some(whole) = self.fragments.push(raw)? else {
                continue;
            };
            events.push(ChangeEvent::decode(whole)?);
            if events.len() >= ROUND_EVENTS || started.elapsed() >= ROUND_TIME {
                return Ok((events, false));
            }
        }
    }
}

/// Opens the stream where the driver finds the primary, and returns it with the clock read
/// just before it opened, which names the primary (node and term) when `hello` just after the
/// opening names the same one.
async fn open_on_primary(
    source: &Client,
    from: &StreamFrom,
    capture: Capture,
) -> Result<(ChangeStream<RawDocumentBuf>, SourceClock)> {
    for _ in 0..OPEN_ATTEMPTS {
        let before = clock::read(source).await?;
        let stream = open::open(source, from, capture)
            .await
            .map_err(|e| explain(e, capture.split))?;
        if clock::read(source).await?.node == before.node {
            return Ok((stream, before));
        }
    }
    bail!(
        "the source's primary changed every time its change stream was opened ({OPEN_ATTEMPTS} attempts)"
    )
}

/// Adds cause and remedy to the stream's errors that need them: lost history, and an event too
/// large to read.
pub fn explain(error: anyhow::Error, split: bool) -> anyhow::Error {
    if server_error::is_code(&error, &[CHANGE_STREAM_HISTORY_LOST, CHANGE_STREAM_FATAL]) {
        error.context(oplog::history_lost_message())
    } else if server_error::is_code(&error, &[BSON_OBJECT_TOO_LARGE]) {
        error.context(open::too_large_message(split))
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::rawdoc;

    fn t(time: u32, increment: u32) -> Timestamp {
        Timestamp { time, increment }
    }

    fn event(time: Timestamp) -> ChangeEvent {
        ChangeEvent::decode(rawdoc! {
            "operationType": "insert",
            "clusterTime": time,
            "ns": { "db": "d", "coll": "c" },
        })
        .unwrap()
    }

    fn node(host: &str, term: i32) -> Node {
        Node {
            host: host.into(),
            election: Some(Bson::Int32(term)),
        }
    }

    fn round(events: &[Timestamp], caught_up: bool, same_node: bool, majority: Timestamp) -> Round {
        Round {
            clock: SourceClock {
                last_write: majority,
                majority,
                node: node("a", 1),
            },
            events: events.iter().copied().map(event).collect(),
            caught_up,
            same_node,
            token: None,
        }
    }

    #[test]
    fn a_round_cut_inside_a_transaction_settles_only_what_precedes_it() {
        // A transaction's events all carry t(10, 5); the round ends after two of them.
        let cut = round(&[t(10, 1), t(10, 5), t(10, 5)], false, true, t(10, 5));
        let settled = settled_after(t(0, 0), &cut);
        assert_eq!(settled, t(10, 4));
        assert!(
            settled < t(10, 5),
            "the commit point t(10, 5) is not reached"
        );
        // The next round reads the rest of the transaction and then nothing more.
        let rest = round(&[t(10, 5)], true, true, t(10, 5));
        assert_eq!(settled_after(settled, &rest), t(10, 5));
    }

    #[test]
    fn a_drained_stream_settles_the_majority_time_read_before_it_on_the_same_node() {
        let idle = round(&[], true, true, t(20, 0));
        assert_eq!(settled_after(t(10, 0), &idle), t(20, 0));
        // Read on another node or term (an election during the round): only events count.
        let elsewhere = round(&[t(12, 0)], true, false, t(20, 0));
        assert_eq!(settled_after(t(10, 0), &elsewhere), t(12, 0));
        // A round cut short proves nothing about the majority time.
        let busy = round(&[t(12, 0)], false, true, t(20, 0));
        assert_eq!(settled_after(t(10, 0), &busy), t(11, u32::MAX));
    }

    #[test]
    fn settled_time_never_goes_back() {
        let old = round(&[t(5, 0)], true, true, t(6, 0));
        assert_eq!(settled_after(t(30, 0), &old), t(30, 0));
        assert_eq!(just_before(t(7, 0)), t(6, u32::MAX));
        assert_eq!(just_before(t(7, 3)), t(7, 2));
    }
}
