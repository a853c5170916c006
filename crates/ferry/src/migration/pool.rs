//! The copy pool: every `_id` range left to copy, across all collections, runs in one bounded
//! pool that takes a collection's ranges as soon as they are planned. A worker left idle cuts
//! the running range with the most left and takes its back half (`copy::split`); a collection
//! whose last range ends has its indexes built at once, beside the copies still running.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use futures_util::{FutureExt, StreamExt};
use mongodb::bson::Timestamp;
use tokio::sync::mpsc;

use super::room::{self, Held, Waiting, COPY_CONCURRENCY};
use super::Migration;
use crate::catalog::CollectionSpec;
use crate::copy::name_checks::NameChecks;
use crate::copy::ranges::Reach;
use crate::copy::split::Running;
use crate::copy::{self, write_limit};
use crate::state::{CopyStatus, Partition};

/// How often an idle worker looks for a range to cut.
const CUT_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Plans reading a large collection's ends or a sample of its `_id`s at once, to cut it: on the
/// test server each such read holds the whole collection in memory.
const PLAN_READS: usize = 8;

/// Index builds running beside the copy (each builds one collection's indexes).
const INDEX_CONCURRENCY: usize = 2;

/// A range for the pool: the collection, the range's index in its stored state, and the range.
pub(super) type Job<'a> = (&'a CollectionSpec, usize, Partition);

/// What the pool knows of one collection being copied.
pub(super) struct Tracked {
    /// Ranges not finished, and the documents the finished ones copied.
    pub unfinished: usize,
    pub copied: u64,
    /// Ranges recorded in the collection's state: the next cut's index.
    pub ranges: usize,
    /// How far its `_id`s reach, once looked at, and whether that is being looked at.
    pub reach: Reach,
    pub looking: bool,
    /// What the collection holds when one read batch holds it whole: its ranges run beside
    /// the large ones (`room`).
    pub small: Option<u64>,
}

/// `_id`s drawn to cut a collection whose `_id`s have no value to cut by.
const SAMPLE_IDS: u64 = 20 * COPY_CONCURRENCY as u64;

/// What the pool's ranges share.
pub(super) struct Pool<'a> {
    tracked: Mutex<HashMap<String, Tracked>>,
    /// The ranges being read now, which an idle worker may cut.
    running: Mutex<Vec<(&'a CollectionSpec, usize, Arc<Running>)>>,
    /// Where a collection whose copy ended is announced, for its index build.
    copied: mpsc::UnboundedSender<&'a CollectionSpec>,
    limit: Arc<write_limit::WriteLimit>,
    /// Ranges running now that are not of small collections, and the data the running ranges
    /// of small collections hold.
    large: AtomicU64,
    small: AtomicU64,
    /// A source time read after the catalog the ranges' specs came from was listed.
    listed: Timestamp,
    checks: NameChecks,
    /// Turns to read a large collection's ends or sample while planning its ranges.
    pub plan_reads: tokio::sync::Semaphore,
}

impl<'a> Pool<'a> {
    /// A pool for collections listed before the source time `listed`, and where the
    /// collections it finished copying arrive.
    pub fn new(listed: Timestamp) -> (Self, mpsc::UnboundedReceiver<&'a CollectionSpec>) {
        let (copied, finished) = mpsc::unbounded_channel();
        let pool = Pool {
            tracked: Mutex::new(HashMap::new()),
            running: Mutex::new(Vec::new()),
            copied,
            limit: Arc::new(write_limit::WriteLimit::new()),
            large: AtomicU64::new(0),
            small: AtomicU64::new(0),
            listed,
            checks: NameChecks::default(),
            plan_reads: tokio::sync::Semaphore::new(PLAN_READS),
        };
        (pool, finished)
    }

    /// Starts tracking a collection whose unfinished ranges are about to be handed on.
    pub fn track(&self, ns: String, tracked: Tracked) {
        self.tracked.lock().expect("pool lock").insert(ns, tracked);
    }

    /// A collection worth looking at: one of its ranges has read enough and goes on, and how
    /// far it reaches is not known nor being looked at. Marked as being looked at.
    fn to_look_at(&self) -> Option<&'a CollectionSpec> {
        let running = self.running.lock().expect("pool lock");
        let mut tracked = self.tracked.lock().expect("pool lock");
        running.iter().find_map(|(spec, _, range)| {
            let t = tracked.get_mut(&spec.ns())?;
            let unknown = matches!(t.reach, Reach::Unknown) && !t.looking;
            (unknown && range.worth_a_look()).then(|| {
                t.looking = true;
                *spec
            })
        })
    }

    /// Records how far a collection reaches, for its running ranges and those to come.
    fn reached(&self, spec: &CollectionSpec, reach: Reach) {
        let ns = spec.ns();
        if let Some(t) = self.tracked.lock().expect("pool lock").get_mut(&ns) {
            t.reach = reach.clone();
        }
        for (s, _, range) in self.running.lock().expect("pool lock").iter() {
            if s.ns() == ns {
                range.set_reach(reach.clone());
            }
        }
    }

    /// Queues a planned range to start when there is room for its kind (`room`).
    fn queue(&self, waiting: &mut Waiting<Job<'a>>, job: Job<'a>) {
        let small = {
            let tracked = self.tracked.lock().expect("pool lock");
            tracked.get(&job.0.ns()).and_then(|t| t.small)
        };
        waiting.add(job, small);
    }

    /// How many inserts were in flight at once at the end.
    pub fn write_concurrency(&self) -> usize {
        self.limit.limit()
    }
}

impl Migration<'_> {
    /// Runs the pool until planning has ended and every range is copied and indexed: ranges
    /// arrive on `planned`, copied collections on `finished`.
    pub(super) async fn run_pool<'a>(
        &self,
        pool: &Pool<'a>,
        mut planned: mpsc::UnboundedReceiver<Job<'a>>,
        mut finished: mpsc::UnboundedReceiver<&'a CollectionSpec>,
        at: Timestamp,
    ) -> Result<()> {
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut indexing = futures_util::stream::FuturesUnordered::new();
        let mut looks = futures_util::stream::FuturesUnordered::new();
        let mut to_index = VecDeque::new();
        let mut waiting = Waiting::new();
        let mut planning = true;
        loop {
            // Nothing left to cut once every range has ended.
            if !planning && running.is_empty() {
                looks.clear();
            }
            while let Ok(spec) = finished.try_recv() {
                to_index.push_back(spec);
            }
            while indexing.len() < INDEX_CONCURRENCY {
                let Some(spec) = to_index.pop_front() else {
                    break;
                };
                indexing.push(self.index_collection(spec, true));
            }
            while let Ok(job) = planned.try_recv() {
                pool.queue(&mut waiting, job);
            }
            while let Some((job, held)) = waiting.next((&pool.large, &pool.small), running.len()) {
                running.push(self.copy_range(job, at, pool, held));
            }
            // A worker with nothing queued takes over half of the largest running range; a
            // range that has read enough has its collection's reach looked at, beside.
            while room::has_room(&pool.large, running.len())
                && waiting.is_empty()
                && planned.is_empty()
            {
                let Some(job) = self.cut_largest(pool).await? else {
                    if let Some(spec) = pool.to_look_at() {
                        looks.push(self.look_at(spec, at));
                    }
                    break;
                };
                let large = Held::take(&pool.large, 1);
                running.push(self.copy_range(job, at, pool, large));
            }
            tokio::select! {
                job = planned.recv(), if planning => {
                    match job {
                        Some(job) => pool.queue(&mut waiting, job),
                        None => planning = false,
                    }
                }
                Some(copied) = running.next(), if !running.is_empty() => copied?,
                Some(built) = indexing.next(), if !indexing.is_empty() => built?,
                Some((spec, reach)) = looks.next(), if !looks.is_empty() => pool.reached(spec, reach),
                // A worker is idle: look again for a range to cut once the running ones have
                // read a little (their density tells how much is left).
                () = tokio::time::sleep(CUT_RETRY), if room::has_room(&pool.large, running.len()) && !running.is_empty() => {}
                else => if finished.is_empty() && waiting.is_empty() {
                    return Ok(());
                },
            }
        }
    }

    /// Cuts the running range with the most left, when that is worth another reader: the cut
    /// is recorded first (the new range, and the old one's end), then the reader's end lowered.
    async fn cut_largest<'a>(&self, pool: &Pool<'a>) -> Result<Option<Job<'a>>> {
        let largest = {
            let running = pool.running.lock().expect("pool lock");
            running
                .iter()
                .filter_map(|(spec, index, range)| {
                    Some((range.left()?, *spec, *index, range.clone()))
                })
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        let Some((_, spec, index, range)) = largest else {
            return Ok(None);
        };
        let Some(cut) = range.cut() else {
            return Ok(None);
        };
        let ns = spec.ns();
        let hi = range.end();
        // Counted before it is recorded: the collection is not finished while either half runs.
        let taken = {
            let mut tracked = pool.tracked.lock().expect("pool lock");
            let Some(t) = tracked.get_mut(&ns) else {
                return Ok(None);
            };
            t.unfinished += 1;
            t.ranges += 1;
            t.ranges - 1
        };
        self.store
            .split_partition(&ns, index, &cut, taken, hi.as_ref())
            .await?;
        range.lower_end(cut.clone());
        tracing::info!(namespace = %ns, at = %cut, "an idle copy worker takes over half of a running range");
        let taken_range = Partition {
            lo: Some(cut),
            hi,
            ..Default::default()
        };
        Ok(Some((spec, taken, taken_range)))
    }

    /// How far a collection's `_id`s reach: its last `_id` when the first and the last are both
    /// numbers or both ObjectIds (two reads of the `_id` index), a sample of its `_id`s
    /// otherwise.
    /// A look that fails (the collection dropped or renamed under it, say) leaves the
    /// collection uncut: the copy goes on.
    async fn look_at<'a>(
        &self,
        spec: &'a CollectionSpec,
        at: Timestamp,
    ) -> (&'a CollectionSpec, Reach) {
        let looked = async {
            Ok::<_, anyhow::Error>(match copy::ranges::ends(&self.source, spec, at).await? {
                Some((first, last)) if copy::ranges::midpoint(&first, &last).is_some() => {
                    Reach::Last(last)
                }
                Some(_) => {
                    let ids = copy::ranges::sample_ids(&self.source, spec, SAMPLE_IDS).await?;
                    Reach::Sample(Arc::new(ids))
                }
                None => Reach::Unknown,
            })
        };
        let reach = match looked.await {
            Ok(reach) => reach,
            Err(e) => {
                let reason = crate::explain::error(&e);
                tracing::info!(namespace = %spec.ns(), reason = %reason, "could not tell how far the collection reaches; it is copied as it is");
                Reach::Unknown
            }
        };
        tracing::debug!(namespace = %spec.ns(), ?reach, "how far the collection reaches");
        (spec, reach)
    }

    /// Copies one `_id` range of a collection, holding its share of what the ranges of its kind
    /// may hold (`held`) while it reads; the last range of a collection to finish records the
    /// collection as copied.
    fn copy_range<'a: 'p, 'p>(
        &'p self,
        (spec, index, range): Job<'a>,
        at: Timestamp,
        pool: &'p Pool<'a>,
        held: Held<'p>,
    ) -> futures_util::future::BoxFuture<'p, Result<()>> {
        async move {
            let ns = spec.ns();
            let reach = pool
                .tracked
                .lock()
                .expect("pool lock")
                .get(&ns)
                .map(|t| t.reach.clone())
                .unwrap_or_default();
            // A capped collection is read in natural order, and a collated one's every range
            // would scan it whole (its reads cannot use the `_id` index): neither is cut.
            let cuttable = !spec.is_capped() && !spec.is_collated();
            let running = Arc::new(Running::new(&range, reach));
            if cuttable {
                pool.running
                    .lock()
                    .expect("pool lock")
                    .push((spec, index, running.clone()));
            }
            let copied = copy::copy_documents(
                &self.source,
                &self.destination,
                &self.progress,
                copy::RangeCopy {
                    spec,
                    target: &spec.name,
                    range: &range,
                    at,
                    resume: Some(copy::Resume {
                        store: &self.store,
                        partition: index,
                    }),
                    limit: Some(pool.limit.clone()),
                    running: cuttable.then(|| running.clone()),
                    listed: Some(pool.listed),
                    checks: &pool.checks,
                },
            )
            .await;
            drop(held);
            pool.running
                .lock()
                .expect("pool lock")
                .retain(|(_, _, r)| !Arc::ptr_eq(r, &running));
            let copied = copied?;
            // The collection's last range records its last batch with the mark that sets every
            // range done. Another range records it before it counts as finished: should its own
            // mark then be refused, the last range's must not mark it done without its totals.
            let alone = pool
                .tracked
                .lock()
                .expect("pool lock")
                .get(&ns)
                .is_some_and(|t| t.unfinished == 1);
            let last = match copied.last {
                Some(last) if !alone => {
                    self.store.copied_up_to(&ns, index, &last).await?;
                    None
                }
                last => last,
            };
            let finished = {
                let mut tracked = pool.tracked.lock().expect("pool lock");
                let t = tracked.get_mut(&ns).expect("a tracked collection");
                t.unfinished -= 1;
                t.copied += copied.documents;
                (t.unfinished == 0).then_some((t.copied, t.ranges))
            };
            // The last range's end and the collection's are one write, which marks every range
            // done: the other ranges' own marks may still be on their way.
            let all = finished.map(|(_, ranges)| ranges);
            self.store
                .partition_done(&ns, index, last.as_ref(), all)
                .await?;
            self.progress.checkpointed();
            if let Some((total, _)) = finished {
                self.finish_copy(spec, total, pool, true).await?;
            }
            Ok(())
        }
        .boxed()
    }

    /// Records a collection's copy as finished, unless `recorded` with its last range, and hands
    /// it to the index builds.
    pub(super) async fn finish_copy<'a>(
        &self,
        spec: &'a CollectionSpec,
        copied: u64,
        pool: &Pool<'a>,
        recorded: bool,
    ) -> Result<()> {
        let ns = spec.ns();
        if !recorded {
            self.store.set_copy_status(&ns, CopyStatus::Copied).await?;
            self.progress.checkpointed();
        }
        self.set_collection_phase(&ns, "copied");
        tracing::info!(namespace = %ns, documents = copied, "collection copied");
        // The pool runs until every range has ended, so the receiver is still there.
        let _ = pool.copied.send(spec);
        Ok(())
    }
}
