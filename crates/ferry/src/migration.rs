//! The migration state machine: validate, take T0, copy, build indexes, apply changes until the
//! operator commits, then drain to the commit point, restore constraints and record COMMITTED.
//!
//! Every step resumes from the state stored on the destination, so one mechanism serves a
//! restart after a crash and the retry after a transient fault: `run` re-enters the state
//! machine with backoff until the fault passes or the retry window (time without durable
//! progress) runs out. `run` takes its stop signal as an argument; the CLI and the HTTP API only
//! read the shared [`Progress`] and ask for a commit through it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{FutureExt, StreamExt};
use mongodb::bson::{doc, Bson, Timestamp};
use mongodb::Client;
use tokio_util::sync::CancellationToken;

use crate::apply::{Applier, Paths};
use crate::background::Background;
use crate::catalog::indexes::{self, Build};
use crate::catalog::{self, CollectionSpec, Kind};
use crate::changes::{self, StreamFrom};
use crate::copy::write_limit;
use crate::incarnations::Incarnations;
use crate::lifecycle::{Phase, State};
use crate::plan::{InputError, Plan};
use crate::progress::{CollectionProgress, Progress};
use crate::redact::redact_uri;
use crate::server_error::{self, COMMAND_NOT_FOUND, UNAUTHORIZED};
use crate::source::clock::{self, seconds_between};
use crate::source::info::{self, Version};
use crate::source::oplog;
use crate::state::{
    Checkpoint, CollectionState, CommitPoint, CopyStatus, Partition, StateStore, Stored,
};
use crate::{constraints, copy, majority, preflight, strays, stream, verify};

/// `_id` ranges copied at the same time; how many of their inserts are in flight at once is
/// adapted to the destination (`write_limit`). More ranges than that only add source reads.
const COPY_CONCURRENCY: usize = write_limit::MAX;
/// Checkpoints are written at most this often while applying changes.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the source's oplog window is measured at most, and the share of the source's time
/// the measurement may take (on some servers finding the oldest entry scans the oplog).
const OPLOG_WINDOW_INTERVAL: Duration = Duration::from_secs(10);
const OPLOG_WINDOW_COST_SHARE: u32 = 20;
/// How often the source's featureCompatibilityVersion is compared with its value at start.
const FCV_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// `canCommit` needs the lag at or below this many seconds.
pub const COMMITTABLE_LAG_SECONDS: u64 = 5;
/// Backoff between retries after a transient fault.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// How a migration ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Stopped by the operator before commit; the destination is a consistent staging copy.
    Stopped,
    /// Stopped on its own at a consistent point, for the given reason (the cutover window ran
    /// out); a resume continues it.
    Paused(String),
}

/// Runs a migration to its end, riding out transient faults, and records FAILED with the
/// reason when it fails for good.
pub async fn run(plan: Plan, progress: Progress, stop: CancellationToken) -> Result<Outcome> {
    progress.update(|s| {
        s.state = State::Running;
        s.cutover_window = plan.cutover_window;
    });
    let source = plan.source.client()?;
    let destination = plan.destination.client()?;
    let store = StateStore::new(&destination, &plan.filter.state_db);
    let mut backoff = FIRST_BACKOFF;
    let mut first_attempt = true;
    // When the last failure happened, by the last durable progress before it.
    let mut failed_after = None;
    loop {
        let attempt = Migration {
            plan: &plan,
            source: source.clone(),
            destination: destination.clone(),
            store: store.clone(),
            progress: progress.clone(),
            stop: stop.clone(),
            first_attempt,
        }
        .run()
        .await;
        let error = match attempt {
            Ok(outcome) => {
                progress.update(|s| s.retrying = None);
                return Ok(outcome);
            }
            Err(error) => error,
        };
        let snapshot = progress.snapshot();
        // A fault before anything was started is a setting to fix, not a fault to ride out.
        let started = !first_attempt || snapshot.phase > Phase::Validating;
        first_attempt = false;
        let stalled = snapshot.last_progress.elapsed();
        // Progress since the previous failure: the faults are passing, start the backoff over.
        if failed_after.is_some_and(|before| snapshot.last_progress > before) {
            backoff = FIRST_BACKOFF;
        }
        failed_after = Some(snapshot.last_progress);
        if started
            && server_error::is_transient(&error)
            && stalled < plan.retry_window
            && !stop.is_cancelled()
        {
            let reason = redact_uri(&format!("{error:#}"));
            tracing::warn!(reason = %reason, retry_in_ms = backoff.as_millis() as u64, "retrying: {reason}");
            progress.update(|s| {
                s.retrying = Some(reason);
                s.retries += 1;
                *s.errors.entry("transient".into()).or_default() += 1;
            });
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return Ok(Outcome::Stopped),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        let mut message = redact_uri(&format!("{error:#}"));
        if snapshot.source_writes_blocked == Some(true) {
            message.push_str("; the source's user writes are still blocked: lift the block with db.adminCommand({setUserWriteBlockMode: 1, global: false}) before the application writes to the source again");
        }
        let kind = if error.downcast_ref::<InputError>().is_some() {
            "refused"
        } else {
            "fatal"
        };
        let phase = progress.update(|s| {
            *s.errors.entry(kind.into()).or_default() += 1;
            s.state = State::Failed;
            s.can_commit = false;
            s.retrying = None;
            s.error = Some(message.clone());
            s.phase
        });
        tracing::error!(phase = phase.as_str(), error = %message, "migration FAILED");
        if error.downcast_ref::<InputError>().is_none() {
            if let Err(e) = store.set_state(State::Failed, phase, Some(&message)).await {
                tracing::warn!(error = %redact_uri(&e.to_string()), "could not record FAILED on the destination");
            }
        }
        return Err(error);
    }
}

struct Migration<'a> {
    plan: &'a Plan,
    source: Client,
    destination: Client,
    store: StateStore,
    progress: Progress,
    stop: CancellationToken,
    /// The full checks (and `--drop`) run on the first attempt only, never on a retry.
    first_attempt: bool,
}

/// The `_id` ranges handed to the copy pool: the collection, the range's index in its stored
/// state, and the range.
type Jobs<'a> = tokio::sync::mpsc::UnboundedSender<(&'a CollectionSpec, usize, Partition)>;

/// Where change application starts.
struct StreamStart {
    from: StreamFrom,
    /// Every change up to this source time is applied.
    settled: Timestamp,
    incarnations: Incarnations,
    commit: Option<CommitPoint>,
}

/// The version to assume of a source that does not report one: the oldest the pre-flight admits.
const OLDEST_SOURCE: Version = Version::new(6, 0, 0);

impl Migration<'_> {
    async fn run(&self) -> Result<Outcome> {
        let validated = preflight::validate(
            self.plan,
            &self.source,
            &self.destination,
            self.first_attempt,
        )
        .await?;
        let stored = match validated.resume {
            Some(stored) => {
                tracing::info!(
                    state = stored.state.as_str(),
                    phase = stored.phase.as_str(),
                    "resuming the migration stored on the destination"
                );
                stored
            }
            None => {
                // T0, taken before the first document is read: the change stream starts there
                // and every copy read sees at least it.
                let start_time = changes::start_time(&self.source).await?;
                self.store.start(validated.identity, start_time).await?;
                Stored {
                    state: State::Running,
                    phase: Phase::Validating,
                    plan: Default::default(),
                    start_time,
                    checkpoint: None,
                    commit: None,
                }
            }
        };
        let version = info::source_version(&self.source)
            .await
            .unwrap_or(OLDEST_SOURCE);
        let writes_open = preflight::checks::writes_open_at_commit(self.plan.block_writes, version);
        self.progress
            .update(|s| s.writes_open_at_commit = writes_open.clone());
        if stored.state == State::Committed {
            self.progress.update(|s| {
                s.state = State::Committed;
                s.phase = Phase::Done;
                s.can_write = true;
            });
            tracing::info!("this migration was already COMMITTED");
            return Ok(Outcome::Committed);
        }
        if stored.state == State::Committing {
            self.progress.update(|s| {
                s.state = State::Committing;
                s.commit_requested = true;
            });
        }
        self.touch();
        let _oplog_watch = watch_oplog(self.source.clone(), self.progress.clone());

        let specs = catalog::list_namespaces(&self.source, &self.plan.filter).await?;
        if stored.phase > Phase::CollectionCopy {
            self.show_finished_copy().await?;
        }
        if stored.phase <= Phase::CollectionCopy {
            self.enter(Phase::CollectionCopy).await?;
            let copying = self.copy_all(&specs, validated.sizes, stored.start_time);
            if self.until_stopped(copying).await?.is_none() {
                return Ok(Outcome::Stopped);
            }
        }
        if stored.phase <= Phase::IndexBuilding {
            self.enter(Phase::IndexBuilding).await?;
            if self
                .until_stopped(self.build_indexes(&specs))
                .await?
                .is_none()
            {
                return Ok(Outcome::Stopped);
            }
        }
        if let (Phase::RestoringConstraints, Some(commit)) = (stored.phase, &stored.commit) {
            self.finish_commit(commit, version).await?;
            return Ok(Outcome::Committed);
        }
        self.enter(Phase::ChangeEventApplication).await?;
        let start = match stored.checkpoint {
            Some(checkpoint) => StreamStart {
                from: StreamFrom::Token(checkpoint.resume_token),
                settled: checkpoint.applied_time,
                incarnations: checkpoint.incarnations,
                commit: stored.commit,
            },
            None => StreamStart {
                from: StreamFrom::Time(stored.start_time),
                settled: stream::just_before(stored.start_time),
                incarnations: self.copied_incarnations().await?,
                commit: stored.commit,
            },
        };
        self.follow_changes(start, &specs, version).await
    }

    /// Records durable progress: the retry window counts from here.
    fn touch(&self) {
        self.progress.update(|s| {
            s.last_progress = Instant::now();
            s.retrying = None;
        });
    }

    /// Runs `work` unless the operator stops the migration first (`None`).
    async fn until_stopped<T>(
        &self,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<Option<T>> {
        tokio::select! {
            result = work => result.map(Some),
            _ = self.stop.cancelled() => Ok(None),
        }
    }

    async fn enter(&self, phase: Phase) -> Result<()> {
        let state = self.progress.update(|s| {
            s.phase = phase;
            s.state
        });
        tracing::info!(state = state.as_str(), phase = phase.as_str(), "phase");
        self.store.set_state(state, phase, None).await
    }

    /// Copies every collection not yet copied, continuing each from its last checkpoint.
    /// `sizes` are the pre-flight's estimates (documents, bytes) by namespace; missing ones are
    /// measured here.
    async fn copy_all(
        &self,
        specs: &[CollectionSpec],
        mut sizes: HashMap<String, (u64, u64)>,
        at: Timestamp,
    ) -> Result<()> {
        let collections: Vec<&CollectionSpec> = specs
            .iter()
            .filter(|s| s.kind == Kind::Collection)
            .collect();
        let mut stored: HashMap<String, CollectionState> = HashMap::new();
        for state in self.store.collections().await? {
            // A collection renamed during an earlier attempt's copy is listed under its new
            // name now, while that copy lies under the old one: a replayed rename would put the
            // partial copy over the whole one. Copy states are the source's incarnations, so
            // such an orphan is dropped and the collection copied again under its new name.
            let renamed = state.uuid.is_some()
                && collections
                    .iter()
                    .any(|s| s.uuid == state.uuid && s.ns() != state.ns);
            if renamed {
                tracing::info!(namespace = %state.ns, "the collection was renamed during its copy; copying it again under its new name");
                if let Some((db, coll)) = state.ns.split_once('.') {
                    majority::drop(&self.destination.database(db), coll).await?;
                }
                self.store.forget_copy(&state.ns).await?;
                continue;
            }
            stored.insert(state.ns.clone(), state);
        }
        let unmeasured: Vec<&CollectionSpec> = collections
            .iter()
            .copied()
            .filter(|s| !sizes.contains_key(&s.ns()))
            .collect();
        sizes.extend(catalog::sizes::estimate_sizes(&self.source, unmeasured).await);
        for spec in &collections {
            let ns = spec.ns();
            let (documents, bytes) = sizes.get(&ns).copied().unwrap_or_default();
            let resumed = stored.get(&ns).filter(|c| c.uuid == spec.uuid);
            self.progress.update(|s| {
                s.collections.retain(|c| c.namespace != ns);
                s.collections.push(CollectionProgress {
                    namespace: ns.clone(),
                    estimated_total_documents: documents,
                    estimated_total_bytes: bytes,
                    copied_documents: resumed.map_or(0, |c| c.copied_documents),
                    copied_bytes: resumed.map_or(0, |c| c.copied_bytes),
                    done: resumed.is_some_and(|c| c.status != CopyStatus::Copying),
                    phase: match resumed.map(|c| c.status) {
                        Some(CopyStatus::Indexed) => "indexed",
                        Some(CopyStatus::Copied) => "copied",
                        Some(CopyStatus::Copying) => "copying",
                        None => "pending",
                    },
                    indexes_built: 0,
                })
            });
        }
        for spec in specs.iter().filter(|s| s.kind == Kind::Timeseries) {
            tracing::warn!(namespace = %spec.ns(), "time-series collections are not migrated");
        }
        // Every `_id` range left to copy, across all collections, runs in one bounded pool,
        // which takes a collection's ranges as soon as they are planned: the small collections
        // are copied while a large one's `_id`s are still being sampled.
        let left = std::sync::Mutex::new(HashMap::<String, (usize, u64)>::new());
        let limit = std::sync::Arc::new(write_limit::WriteLimit::new());
        let (jobs, mut planned) = tokio::sync::mpsc::unbounded_channel();
        // Collected first: a lazy map over borrowed specs cannot be proven `Send` for every
        // lifetime, which spawning the migration needs.
        let plans: Vec<futures_util::future::BoxFuture<'_, Result<()>>> = collections
            .iter()
            .map(|spec| {
                let ns = spec.ns();
                let bytes = sizes.get(&ns).map_or(0, |(_, bytes)| *bytes);
                self.plan_ranges(spec, stored.get(&ns), bytes, &left, jobs.clone())
            })
            .collect();
        drop(jobs);
        let planning = futures_util::future::try_join_all(plans);
        let copying = async {
            let mut running = futures_util::stream::FuturesUnordered::new();
            let mut planning = true;
            loop {
                tokio::select! {
                    job = planned.recv(), if planning && running.len() < COPY_CONCURRENCY => {
                        match job {
                            Some((spec, index, range)) => {
                                running.push(self.copy_range(spec, index, range, at, &left, limit.clone()));
                            }
                            None => planning = false,
                        }
                    }
                    Some(copied) = running.next(), if !running.is_empty() => copied?,
                    else => return Ok::<(), anyhow::Error>(()),
                }
            }
        };
        tokio::try_join!(planning, copying)?;
        tracing::info!(
            concurrent_writes = limit.limit(),
            "copy write concurrency at the end of the copy"
        );
        for view in specs.iter().filter(|s| s.kind == Kind::View) {
            copy::create_namespace(&self.destination, view).await?;
        }
        Ok(())
    }

    /// Plans one collection's copy and hands its unfinished `_id` ranges to the copy pool.
    fn plan_ranges<'a>(
        &'a self,
        spec: &'a CollectionSpec,
        stored: Option<&'a CollectionState>,
        bytes: u64,
        left: &'a std::sync::Mutex<HashMap<String, (usize, u64)>>,
        jobs: Jobs<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<()>> {
        async move {
            let ns = spec.ns();
            let Some(ranges) = self.plan_copy(spec, stored, bytes).await? else {
                return Ok(());
            };
            copy::create_namespace(&self.destination, spec).await?;
            self.set_collection_phase(&ns, "copying", None);
            let remaining: Vec<(usize, Partition)> = ranges
                .into_iter()
                .enumerate()
                .filter(|(_, r)| !r.done)
                .collect();
            if remaining.is_empty() {
                return self.finish_copy(&ns, 0).await;
            }
            left.lock()
                .expect("copy tracker lock")
                .insert(ns, (remaining.len(), 0));
            for (index, range) in remaining {
                // The pool runs until every sender is gone, so the receiver is still there.
                let _ = jobs.send((spec, index, range));
            }
            Ok(())
        }
        .boxed()
    }

    /// Copies one `_id` range of a collection; the last range of a collection to finish
    /// records the collection as copied. `left` counts each collection's unfinished ranges and
    /// the documents copied so far.
    fn copy_range<'a>(
        &'a self,
        spec: &'a CollectionSpec,
        index: usize,
        range: Partition,
        at: Timestamp,
        left: &'a std::sync::Mutex<HashMap<String, (usize, u64)>>,
        limit: std::sync::Arc<write_limit::WriteLimit>,
    ) -> futures_util::future::BoxFuture<'a, Result<()>> {
        async move {
            let ns = spec.ns();
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
                    limit: Some(limit),
                },
            )
            .await?;
            self.store.partition_done(&ns, index).await?;
            self.touch();
            let finished = {
                let mut left = left.lock().expect("copy tracker lock");
                let entry = left.get_mut(&ns).expect("a tracked collection");
                entry.0 -= 1;
                entry.1 += copied;
                (entry.0 == 0).then_some(entry.1)
            };
            if let Some(total) = finished {
                self.finish_copy(&ns, total).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn set_collection_phase(&self, ns: &str, phase: &'static str, indexes_built: Option<u64>) {
        self.progress.update(|s| {
            if let Some(c) = s.collections.iter_mut().find(|c| c.namespace == ns) {
                c.phase = phase;
                c.done = phase != "copying";
                if let Some(built) = indexes_built {
                    c.indexes_built = built;
                }
            }
        });
    }

    /// Shows the stored copy counts of a copy that finished before a restart.
    async fn show_finished_copy(&self) -> Result<()> {
        let stored = self.store.collections().await?;
        self.progress.update(|s| {
            s.collections = stored
                .iter()
                .map(|c| CollectionProgress {
                    namespace: c.ns.clone(),
                    estimated_total_documents: c.copied_documents,
                    estimated_total_bytes: c.copied_bytes,
                    copied_documents: c.copied_documents,
                    copied_bytes: c.copied_bytes,
                    done: true,
                    phase: "indexed",
                    indexes_built: 0,
                })
                .collect();
        });
        Ok(())
    }

    /// The `_id` ranges of a collection's copy: the stored ones when resuming the same
    /// incarnation, new ones otherwise; `None` when it is copied already.
    async fn plan_copy(
        &self,
        spec: &CollectionSpec,
        stored: Option<&CollectionState>,
        bytes: u64,
    ) -> Result<Option<Vec<Partition>>> {
        let ns = spec.ns();
        match stored {
            Some(state) if state.uuid == spec.uuid && state.status != CopyStatus::Copying => {
                tracing::info!(namespace = %ns, "already copied");
                return Ok(None);
            }
            Some(state) if state.uuid == spec.uuid && !state.partitions.is_empty() => {
                let done = state.partitions.iter().filter(|p| p.done).count();
                tracing::info!(namespace = %ns, partitions = state.partitions.len(), done, "resuming the copy");
                return Ok(Some(state.partitions.clone()));
            }
            Some(_) => {
                // The source holds a new incarnation: start this collection over.
                majority::drop(&self.destination.database(&spec.db), &spec.name).await?;
            }
            None => {}
        }
        let ranges = match copy::ranges::range_count(spec, bytes) {
            1 => vec![Partition::default()],
            count => copy::ranges::ranges_between(
                &copy::ranges::sample_bounds(&self.source, spec, count).await?,
            ),
        };
        if ranges.len() > 1 {
            tracing::info!(namespace = %ns, partitions = ranges.len(), "copying in parallel _id ranges");
        }
        self.store
            .begin_copy(&ns, spec.uuid.as_ref(), &ranges)
            .await?;
        Ok(Some(ranges))
    }

    /// Records a collection's copy as finished.
    async fn finish_copy(&self, ns: &str, copied: u64) -> Result<()> {
        self.store.set_copy_status(ns, CopyStatus::Copied).await?;
        self.touch();
        self.set_collection_phase(ns, "copied", None);
        tracing::info!(namespace = %ns, documents = copied, "collection copied");
        Ok(())
    }

    async fn build_indexes(&self, specs: &[CollectionSpec]) -> Result<()> {
        let stored = self.store.collections().await?;
        for spec in specs.iter().filter(|s| s.kind == Kind::Collection) {
            let state = stored
                .iter()
                .find(|c| c.ns == spec.ns() && c.uuid == spec.uuid);
            if state.is_some_and(|c| c.status == CopyStatus::Indexed) {
                continue;
            }
            indexes::build(
                &self.destination,
                &spec.db,
                &spec.name,
                &spec.indexes,
                Build::Relaxed,
            )
            .await?;
            let built = spec
                .indexes
                .iter()
                .filter(|i| !catalog::is_implicit_index(i))
                .count();
            self.set_collection_phase(&spec.ns(), "indexed", Some(built as u64));
            if state.is_some() {
                self.store
                    .set_copy_status(&spec.ns(), CopyStatus::Indexed)
                    .await?;
            }
            self.touch();
        }
        Ok(())
    }

    /// The incarnations the copy left on the destination: each copied namespace holds the
    /// source UUID it was copied from.
    async fn copied_incarnations(&self) -> Result<Incarnations> {
        let mut incarnations = Incarnations::default();
        for state in self.store.collections().await? {
            if let Some(Bson::Binary(uuid)) = &state.uuid {
                incarnations.hold(&state.ns, uuid.bytes.clone());
            }
        }
        Ok(incarnations)
    }

    /// Applies changes from `start` on, until a commit completes or the operator stops.
    async fn follow_changes(
        &self,
        start: StreamStart,
        specs: &[CollectionSpec],
        version: Version,
    ) -> Result<Outcome> {
        let split = version.splits_large_events();
        // The next round is read from the source while this one is written to the destination.
        let (_reader, mut rounds) = stream::read_ahead(self.source.clone(), start.from, split);
        let mut token = None;
        let mut applier = Applier::new(
            self.source.clone(),
            self.destination.clone(),
            self.plan.filter.clone(),
            start.incarnations,
            self.progress.clone(),
        )
        .with_lanes(self.plan.apply_lanes)
        .with_paths(if version.disambiguates_paths() {
            Paths::Disambiguated
        } else {
            Paths::Ambiguous
        })
        .with_collated(
            specs
                .iter()
                .filter(|s| s.is_collated())
                .map(CollectionSpec::ns)
                .collect(),
        );
        let mut verification = None;
        if self.plan.verify {
            applier = applier.with_verification(verify::ChangeTracker::new(
                &self.destination,
                &self.plan.filter.state_db,
            ));
            verification = Some(Background::spawn(verify::alongside_changes(
                self.source.clone(),
                self.destination.clone(),
                self.plan.filter.clone(),
                self.progress.clone(),
            )));
        }
        let mut settled = start.settled;
        let mut commit = start.commit;
        let mut last_checkpoint = Instant::now();
        let fcv = info::fcv(&self.source).await;
        let mut last_fcv_check = Instant::now();
        loop {
            if last_fcv_check.elapsed() >= FCV_CHECK_INTERVAL {
                last_fcv_check = Instant::now();
                let now = info::fcv(&self.source).await;
                if now.is_some() && now != fcv {
                    anyhow::bail!(
                        "the source's featureCompatibilityVersion changed from {} to {} during the migration; an upgrade or downgrade changes what the destination must accept, so Ferry stops: finish the change on the source, match it on the destination, then start over with --drop",
                        fcv.as_deref().unwrap_or("?"),
                        now.as_deref().unwrap_or("?")
                    );
                }
            }
            if self.stop.is_cancelled() {
                self.checkpoint(token.clone(), settled, &applier).await?;
                return Ok(Outcome::Stopped);
            }
            let mut round = rounds
                .recv()
                .await
                .context("the change stream reader stopped")??;
            settled = stream::settled_after(settled, &round);
            // Nothing after the commit point is applied: such writes are stray, and reported.
            let past = commit
                .as_ref()
                .and_then(|c| round.events.iter().position(|e| e.cluster_time > c.time));
            match past {
                Some(first_stray) => {
                    round.events.truncate(first_stray);
                    if let Some(last) = round.events.last() {
                        token = Some(last.resume_token()?);
                    }
                    applier.apply(round.events).await?;
                }
                None => {
                    applier.apply(round.events).await?;
                    token = round.token.or(token);
                }
            }
            let lag = seconds_between(settled, round.clock.last_write);
            let (commit_requested, window_closed) = self.progress.update(|s| {
                s.lag_time_seconds = Some(lag);
                s.resume_time = Some(settled);
                s.can_commit = s.state == State::Running && lag <= COMMITTABLE_LAG_SECONDS;
                if s.can_commit && s.cutover_deadline.is_none() {
                    s.cutover_deadline = Some(Instant::now() + s.cutover_window);
                }
                let closed = s.cutover_deadline.is_some_and(|d| Instant::now() >= d);
                (s.commit_requested, closed && !s.commit_requested)
            });
            if window_closed {
                self.checkpoint(token.clone(), settled, &applier).await?;
                return Ok(Outcome::Paused(
                    "the cutover window ran out before a commit: Ferry stopped syncing rather than run unattended; resume to continue (and extend the window), or commit after resuming".into(),
                ));
            }
            if commit_requested && commit.is_none() {
                commit = Some(self.begin_commit(version).await?);
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL || commit.is_some() {
                self.checkpoint(token.clone(), settled, &applier).await?;
                last_checkpoint = Instant::now();
            }
            if let Some(point) = commit.as_ref().filter(|c| settled >= c.time) {
                // The final pass takes over from the verification that ran alongside.
                drop(verification);
                self.finish_commit(point, version).await?;
                return Ok(Outcome::Committed);
            }
        }
    }

    async fn checkpoint(
        &self,
        token: Option<Bson>,
        settled: Timestamp,
        applier: &Applier,
    ) -> Result<()> {
        let Some(resume_token) = token else {
            return Ok(());
        };
        self.store
            .checkpoint(&Checkpoint {
                resume_token,
                applied_time: settled,
                incarnations: applier.incarnations().clone(),
            })
            .await?;
        self.touch();
        Ok(())
    }

    /// Enters COMMITTING and returns the commit point: the time of the source primary's latest
    /// write once its writes are blocked (or, where they cannot be, right after the operator's
    /// request). Everything up to it is applied before COMMITTED, nothing after it.
    async fn begin_commit(&self, version: Version) -> Result<CommitPoint> {
        let writes_open =
            match preflight::checks::writes_open_at_commit(self.plan.block_writes, version) {
                None => self.block_source_writes().await?,
                open => open,
            };
        let time = clock::read(&self.source).await?.last_write;
        let point = CommitPoint { time, writes_open };
        self.store.set_commit_point(&point).await?;
        self.progress.update(|s| {
            s.state = State::Committing;
            s.can_commit = false;
            s.source_writes_blocked = Some(point.writes_open.is_none());
        });
        match &point.writes_open {
            None => {
                tracing::info!(commit_point = %time, "COMMITTING: the source's writes are blocked; applying the last changes")
            }
            Some(reason) => {
                tracing::warn!(commit_point = %time, reason = %reason, "COMMITTING without blocking the source's writes ({reason}): every application must have stopped writing to it; a write after the commit point is reported, not applied")
            }
        }
        Ok(point)
    }

    /// Blocks every user write on the source (`setUserWriteBlockMode`, 6.0+), so that a
    /// forgotten writer fails loudly instead of writing past the commit point. Returns why the
    /// writes stay open when the server does not know the command (the pre-flight said so);
    /// any other failure stops the commit, since the operator was told writes would be blocked.
    async fn block_source_writes(&self) -> Result<Option<String>> {
        let blocked = majority::self_confirming(
            &self.source.database("admin"),
            doc! { "setUserWriteBlockMode": 1, "global": true },
        )
        .await;
        match blocked {
            Ok(_) => Ok(None),
            Err(e) if server_error::is_code(&e, &[COMMAND_NOT_FOUND]) => Ok(Some(
                "the source does not support setUserWriteBlockMode".into(),
            )),
            Err(e) if server_error::is_transient(&e) => Err(e),
            Err(e) => {
                let remedy = if server_error::is_code(&e, &[UNAUTHORIZED]) {
                    "grant the source user the restore role (it holds setUserWriteBlockMode)"
                } else {
                    "make the source accept setUserWriteBlockMode"
                };
                Err(e.context(format!(
                    "could not block the source's writes before the commit point: {remedy} and run the same command again, or run it with --no-block-writes once every application has stopped writing to the source"
                )))
            }
        }
    }

    /// Restores the relaxed constraints, verifies (`--verify`), names the writes after the commit
    /// point, and records COMMITTED. Every step can run again after a crash.
    async fn finish_commit(&self, commit: &CommitPoint, version: Version) -> Result<()> {
        self.progress.update(|s| {
            s.state = State::Committing;
            s.source_writes_blocked = Some(commit.writes_open.is_none());
        });
        self.enter(Phase::RestoringConstraints).await?;
        constraints::restore(
            &self.source,
            &self.destination,
            &self.plan.filter,
            &self.progress,
            commit.time,
        )
        .await
        .context("restoring relaxed constraints at commit")?;
        if self.plan.verify {
            self.verify_before_committed(commit.time).await?;
        }
        let stored = self
            .store
            .load()
            .await?
            .context("Ferry's state vanished during the commit")?;
        let from = match stored.checkpoint {
            Some(checkpoint) => StreamFrom::Token(checkpoint.resume_token),
            None => StreamFrom::Time(stored.start_time),
        };
        let stray = strays::after(
            &self.source,
            from,
            version.splits_large_events(),
            commit.time,
            &self.plan.filter,
        )
        .await
        .context("reading the source's writes after the commit point")?;
        for writes in &stray {
            tracing::warn!(
                namespace = %writes.namespace,
                count = writes.count,
                first_time = writes.first_time,
                "stray writes: the source took writes after the commit point, which are not on the destination"
            );
        }
        self.store.set_committed(&stray).await?;
        self.progress.update(|s| {
            s.state = State::Committed;
            s.phase = Phase::Done;
            s.lag_time_seconds = Some(0);
            s.can_write = true;
            s.stray_writes = stray;
        });
        tracing::info!(
            state = "COMMITTED",
            "the destination is ready: point the application at it"
        );
        Ok(())
    }
}

impl Migration<'_> {
    /// The final verification (`--verify`): the source is quiescent and every change applied,
    /// so any difference is real and the commit is refused with the report.
    async fn verify_before_committed(&self, commit_point: Timestamp) -> Result<()> {
        tracing::info!("verifying the destination before COMMITTED");
        let queue = verify::RecheckQueue::new(&self.destination, &self.plan.filter.state_db);
        let report = verify::verify(
            &self.source,
            &self.destination,
            &self.plan.filter,
            verify::Comparison::default(),
            verify::Mode::Final(&queue, commit_point),
            Some(&self.progress),
        )
        .await?;
        tracing::info!(
            documents = report.documents_checked,
            read_at_commit = report.documents_checked - report.documents_resumed,
            rechecked = report.rechecked,
            equal = report.equal,
            "verification finished"
        );
        if !report.equal {
            anyhow::bail!(
                "verification found differences, so the commit is refused:\n{}",
                report.to_text()
            );
        }
        Ok(())
    }
}

/// Measures the source's oplog window in the background while a migration attempt runs: first
/// after one interval (an attempt's start is busy: planning the copy, or a resumed catch-up),
/// then as often as the interval and the measurement's own cost allow.
fn watch_oplog(source: Client, progress: Progress) -> Background {
    Background::spawn(async move {
        let start = clock::read(&source).await.ok().map(|c| c.last_write);
        let mut pause = OPLOG_WINDOW_INTERVAL;
        loop {
            tokio::time::sleep(pause).await;
            let measuring = Instant::now();
            let oldest = oplog::oldest_entry(&source).await;
            pause = OPLOG_WINDOW_INTERVAL.max(measuring.elapsed() * OPLOG_WINDOW_COST_SHARE);
            if let Ok(Some(oldest)) = oldest {
                let resume = progress.snapshot().resume_time.or(start);
                if let Some(resume) = resume {
                    progress
                        .update(|s| s.oplog_window_seconds = Some(seconds_between(oldest, resume)));
                }
            }
        }
    })
}
