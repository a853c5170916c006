//! The copy's primitives: create a namespace on the destination with its (relaxed) options, and
//! copy one `_id` range of a collection as raw BSON, a reader and a writer joined through a
//! bounded channel, checkpointing each acknowledged batch (the last may go with the range's done
//! mark). The orchestration (sizes, ranges, the pool) is the migration's copy stage; the reader
//! is shared with the verifier.

pub mod name_checks;
pub mod ranges;
pub mod reader;
mod replace;
pub mod split;
pub mod write_limit;

use std::sync::Arc;

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::{Client, ClientSession};
use tokio::sync::mpsc;

use crate::background;
use crate::catalog::{self, CollectionSpec, Kind};
use crate::majority;
use crate::progress::Progress;
use crate::server_error::{
    already, is_code, only_duplicates, Already, CAPPED_POSITION_LOST, NAMESPACE_NOT_FOUND,
    QUERY_PLAN_KILLED,
};
use crate::source::{clock, reads};
use crate::state::{CopiedUpTo, Partition, StateStore};
use name_checks::NameChecks;
use reader::{Order, Scan};
use write_limit::WriteLimit;

pub use replace::{replace_with_copy, swap_in};

/// Documents per insert batch (the reader's batch), and the byte size at which a batch is sent
/// early.
const BATCH_DOCUMENTS: usize = reader::BATCH as usize;
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Batches buffered between the reader and the writer of one collection.
const BATCHES_IN_FLIGHT: usize = 2;

/// Creates a namespace on the destination: collections with relaxed options, views exactly.
/// An existing namespace is left as it is.
pub async fn create_namespace(destination: &Client, spec: &CollectionSpec) -> Result<()> {
    let command = spec.create_command(spec.kind == Kind::Collection);
    match majority::command(&destination.database(&spec.db), command).await {
        Err(e) if already(&e, Already::Created) => Ok(()),
        other => other
            .map(drop)
            .with_context(|| format!("creating {} on the destination", spec.ns())),
    }
}

/// Where a partition's copy records its progress.
pub struct Resume<'a> {
    pub store: &'a StateStore,
    /// The partition's index in the collection's stored state.
    pub partition: usize,
}

/// One `_id` range of a collection to copy.
pub struct RangeCopy<'a> {
    pub spec: &'a CollectionSpec,
    /// The destination collection, in the same database, the documents go to.
    pub target: &'a str,
    pub range: &'a Partition,
    /// Every read sees at least this source time: T0, or the event that asked for the copy.
    pub at: Timestamp,
    /// Where each acknowledged batch is checkpointed.
    pub resume: Option<Resume<'a>>,
    /// The shared adaptive limit each insert waits its turn under.
    pub limit: Option<Arc<WriteLimit>>,
    /// The position and end shared with the copy pool, which may cut the range while it runs.
    pub running: Option<Arc<split::Running>>,
    /// A source time no older than the catalog the spec was listed from, read once for many
    /// ranges; `None`: read the source's clock at the range's start.
    pub listed: Option<Timestamp>,
    /// Where the read proves its name holds the incarnation, with the other reads.
    pub checks: &'a NameChecks,
}

/// How often a capped collection's natural-order read starts over after the collection
/// overwrote its position; after that the copy goes on without it, since the commit rebuilds
/// every capped collection from the (then quiescent) source anyway.
const CAPPED_RESTARTS: usize = 3;
/// How often a range's read is begun again after its cursor was killed (a drop or rename under
/// it) before the error stops the attempt.
const KILLED_READS: usize = 10;

/// How a range's copy ended: the documents it wrote, and how far it got when its last batch was
/// left for the range's done mark to record (`StateStore::partition_done`).
pub struct Copied {
    pub documents: u64,
    pub last: Option<CopiedUpTo>,
}

/// Copies the documents of one `_id` range of a collection into the destination collection
/// `target` of the same database, in `_id` order (natural order for capped ones, whose insertion
/// order is part of their content), continuing after the range's last copied `_id`.
///
/// The collection is read as the incarnation the spec names (its UUID), wherever a rename has
/// moved it, and reading stops when that incarnation is gone (its drop or rename is in the
/// change stream): a name alone could lead to another collection (DESIGN rule 11).
pub async fn copy_documents(
    source: &Client,
    destination: &Client,
    progress: &Progress,
    job: RangeCopy<'_>,
) -> Result<Copied> {
    let RangeCopy {
        spec,
        target,
        range,
        at,
        resume,
        limit,
        running,
        listed,
        checks,
    } = job;
    let ns = spec.ns();
    let writer = destination
        .database(&spec.db)
        .collection::<RawDocumentBuf>(target);
    let checkpoint = resume.map(|r| (r.store.clone(), r.partition));
    // Capped collections are read in natural order, so they restart from the beginning; the
    // documents already there are refused as duplicates and skipped.
    let ordered = !spec.is_capped();

    let (batches, mut incoming) = mpsc::channel::<Vec<RawDocumentBuf>>(BATCHES_IN_FLIGHT);
    let write_progress = progress.clone();
    let write_ns = ns.clone();
    // The range's totals acknowledged so far, from where a resumed range had got to.
    let (mut range_documents, mut range_bytes) = (range.documents, range.bytes);
    // The writer runs on its own thread while this task reads; dropping the copy (a stop)
    // aborts it too.
    let write = async move {
        let (mut written, mut last) = (0u64, None);
        while let Some(batch) = incoming.recv().await {
            let documents = batch.len() as u64;
            let bytes: u64 = batch.iter().map(|d| d.as_bytes().len() as u64).sum();
            let last_id = batch
                .last()
                .and_then(|d| d.get("_id").ok().flatten())
                .map(|id| id.to_raw_bson());
            let turn = match &limit {
                Some(limit) => Some(limit.acquire().await),
                None => None,
            };
            let sent = std::time::Instant::now();
            let inserted = writer
                .insert_many(batch)
                .ordered(false)
                .bypass_document_validation(true)
                .await;
            if let (Some(limit), Some(turn)) = (&limit, turn) {
                limit.release(turn, sent.elapsed(), bytes);
            }
            match inserted {
                Ok(_) => {}
                Err(e) if only_duplicates(&e) => {}
                Err(e) => {
                    return Err(anyhow::Error::from(e))
                        .with_context(|| format!("writing documents of {write_ns}"))
                }
            }
            range_documents += documents;
            range_bytes += bytes;
            if let (Some((store, partition)), Some(last_id), true) = (&checkpoint, last_id, ordered)
            {
                let at = CopiedUpTo {
                    last_id: last_id.try_into()?,
                    documents: range_documents,
                    bytes: range_bytes,
                };
                // The reader has ended and no batch follows: the range's done mark records this
                // one (`Copied::last`), a write fewer for each collection one batch holds. A
                // reader that ended on an error leaves it unrecorded, and a resumed copy writes
                // the batch again, refused as duplicates.
                if incoming.is_closed() && incoming.is_empty() {
                    last = Some(at);
                } else {
                    store.copied_up_to(&write_ns, *partition, &at).await?;
                    write_progress.checkpointed();
                }
            }
            written += documents;
            write_progress.add_copied(&write_ns, documents, bytes);
        }
        Ok::<Copied, anyhow::Error>(Copied {
            documents: written,
            last,
        })
    };
    let write = background::spawn_owned(write);

    let read = async {
        let mut session = reads::session_at(source, at).await?;
        // The spec was listed from a catalog no newer than the source's latest write now (or
        // than `listed`, read after the listing): the reads see at least that catalog, so a
        // name the listing gave is read as it named it (or later, which the check once a
        // cursor is open covers).
        let listed = match listed {
            Some(listed) => listed,
            None => {
                clock::read(source)
                    .await
                    .context("reading the source's clock before a copy")?
                    .last_write
            }
        };
        session.advance_operation_time(listed);
        let mut after = range.last_id.clone();
        let (mut capped_restarts, mut killed, mut moved) = (0, 0, 0);
        // The name the incarnation had when the catalog was listed: each read proves it still
        // holds it once its cursor is open, and looks the incarnation up by UUID only if not.
        let mut name = Some(spec.name.clone());
        while let Some(reading) = name.clone() {
            // Taken before the end: a cut in between only makes the read reopen once more.
            let cuts = running.as_ref().map_or(0, |r| r.cuts());
            let filter = if ordered {
                // Up to the range's end now: a cut may have lowered it since it began.
                let range = Partition {
                    hi: running.as_ref().map_or(range.hi.clone(), |r| r.end()),
                    ..range.clone()
                };
                ranges::remaining(&range, after.as_ref())
            } else {
                doc! {}
            };
            let mut handoff = Handoff {
                batches: &batches,
                after: &mut after,
                running: running.as_deref(),
                cuts,
                ordered,
            };
            let read = read_collection(
                &mut session,
                (source, checks),
                spec,
                &reading,
                filter,
                &mut handoff,
            )
            .await;
            match read {
                // A rename or drop kills an open cursor: a read that ended whole read the
                // incarnation to its end.
                Ok(Read::ToTheEnd) => break,
                Ok(Read::Cut) => {}
                Ok(Read::Moved) => {
                    moved += 1;
                    if moved > KILLED_READS {
                        anyhow::bail!("the collection {ns} kept moving while its copy began: retry once its renames stop");
                    }
                    name = incarnation_name(source, &mut session, spec).await?;
                    if let Some(moved) = &name {
                        tracing::info!(namespace = %ns, now = %moved, "the collection was renamed during its copy; reading on under its new name");
                    }
                }
                // The collection was dropped or renamed under the read: see where its
                // incarnation is now, and read on from the last `_id` handed to the writer.
                Err(e) if is_code(&e, &[QUERY_PLAN_KILLED, NAMESPACE_NOT_FOUND]) => {
                    killed += 1;
                    if killed > KILLED_READS {
                        return Err(e);
                    }
                    name = incarnation_name(source, &mut session, spec).await?;
                }
                // A capped collection overwrote the position of the natural-order read.
                Err(e) if is_code(&e, &[CAPPED_POSITION_LOST]) && !ordered => {
                    capped_restarts += 1;
                    if capped_restarts > CAPPED_RESTARTS {
                        tracing::warn!(namespace = %ns, "the capped collection kept overwriting the copy's position; it is rebuilt exactly at commit");
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        drop(batches);
        if let Some(running) = &running {
            running.finish();
        }
        Ok::<(), anyhow::Error>(())
    };
    let read = read.await;
    // The writer's error first: a failed writer closes the channel, which fails the reader too.
    let copied = write.join().await??;
    read?;
    Ok(copied)
}

/// The name the spec's collection incarnation has now in its database, `None` once it is gone.
async fn incarnation_name(
    source: &Client,
    session: &mut ClientSession,
    spec: &CollectionSpec,
) -> Result<Option<String>> {
    match &spec.uuid {
        Some(Bson::Binary(uuid)) => catalog::name_of(source, session, &spec.db, &uuid.bytes).await,
        _ => Ok(Some(spec.name.clone())),
    }
}

/// How a read of a collection by name ended.
enum Read {
    /// Every document the filter selects was handed to the writer.
    ToTheEnd,
    /// The name no longer held the incarnation when the read began: nothing was handed on.
    Moved,
    /// The range's end was lowered during the read: read on up to the new end.
    Cut,
}

/// Reads `filter` of collection `name` (in `_id` order unless capped) into batches sent to
/// `batches`, recording the last `_id` read in `after`, and stopping at the end of `running`
/// when the pool cut it. The name is checked (with the other reads' names, `name_checks`) once
/// the cursor is open, before its first document is handed on: a cursor stays on the
/// collection it opened on (a rename or drop kills it), so this proves every document came
/// from the spec's incarnation, unless that incarnation was renamed onto this name in the
/// moment between the two.
async fn read_collection(
    session: &mut ClientSession,
    (source, checks): (&Client, &NameChecks),
    spec: &CollectionSpec,
    name: &str,
    filter: Document,
    handoff: &mut Handoff<'_>,
) -> Result<Read> {
    let ns = spec.ns();
    let ordered = !spec.is_capped();
    let scan = Scan {
        db: &spec.db,
        coll: name,
        filter,
        order: if ordered { Order::Id } else { Order::Natural },
        limit: None,
    };
    let mut rows = reader::open(source, session, scan)
        .await
        .with_context(|| format!("reading documents of {ns}"))?;
    let holds = match &spec.uuid {
        Some(Bson::Binary(uuid)) => {
            checks
                .holds(source, rows.session(), &spec.db, name, &uuid.bytes)
                .await?
        }
        _ => true,
    };
    if !holds {
        return Ok(Read::Moved);
    }
    let mut batch = Vec::with_capacity(BATCH_DOCUMENTS);
    let mut batch_bytes = 0usize;
    while let Some(document) = rows
        .next()
        .await
        .with_context(|| format!("reading documents of {ns}"))?
    {
        batch_bytes += document.as_bytes().len();
        batch.push(document);
        if batch.len() >= BATCH_DOCUMENTS || batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_DOCUMENTS));
            match handoff.hand_on(full).await {
                Next::Read => {}
                Next::Stop => return Ok(Read::ToTheEnd),
                Next::Reopen => return Ok(Read::Cut),
            }
        }
    }
    handoff.hand_on(batch).await;
    Ok(Read::ToTheEnd)
}

/// Where a read hands its batches: the writer, the last `_id` handed on, and the running range
/// whose end a cut may lower (with how many cuts it had when the read began).
struct Handoff<'x> {
    batches: &'x mpsc::Sender<Vec<RawDocumentBuf>>,
    after: &'x mut Option<Bson>,
    running: Option<&'x split::Running>,
    cuts: u64,
    ordered: bool,
}

/// What reading does after handing a batch on.
#[derive(PartialEq)]
enum Next {
    Read,
    /// The writer is gone (the caller reports its error).
    Stop,
    /// The range's end was lowered: read on up to the new end, as the server bounds it.
    Reopen,
}

impl Handoff<'_> {
    /// Hands a batch to the writer and records its last `_id`.
    async fn hand_on(&mut self, batch: Vec<RawDocumentBuf>) -> Next {
        if batch.is_empty() {
            return Next::Read;
        }
        if let Some(running) = self.running {
            running.note(&batch);
        }
        let last = batch
            .last()
            .and_then(|d| d.get("_id").ok().flatten())
            .and_then(|id| Bson::try_from(id.to_raw_bson()).ok());
        if self.batches.send(batch).await.is_err() {
            return Next::Stop;
        }
        if self.ordered {
            *self.after = last.or(self.after.take());
        }
        match self.running {
            Some(running) if running.cuts() != self.cuts => Next::Reopen,
            _ => Next::Read,
        }
    }
}
