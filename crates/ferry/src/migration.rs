//! The migration state machine: validate, take T0, copy, build indexes, apply changes until the
//! operator commits, then drain to the commit point, restore constraints and record COMMITTED.
//!
//! `run` takes its stop signal as an argument; the CLI and the HTTP API only read the shared
//! [`Progress`] and ask for a commit through it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{stream, StreamExt, TryStreamExt};
use mongodb::bson::{Bson, RawDocumentBuf, Timestamp};
use mongodb::change_stream::ChangeStream;
use mongodb::Client;
use tokio_util::sync::CancellationToken;

use crate::apply::incarnations::Incarnations;
use crate::apply::Applier;
use crate::catalog::{self, CollectionSpec, Kind};
use crate::changes::{self, ChangeEvent};
use crate::plan::Plan;
use crate::progress::{CollectionProgress, Phase, Progress, State};
use crate::redact::redact_uri;
use crate::source_clock::{self, seconds_between};
use crate::state::{Checkpoint, StateStore};
use crate::{constraints, copy, preflight};

/// Collections copied at the same time.
const COPY_CONCURRENCY: usize = 4;
/// A round of change application reads at most this many events, or for at most this long.
const ROUND_EVENTS: usize = 5000;
const ROUND_TIME: Duration = Duration::from_millis(300);
/// Checkpoints are written at most this often while applying changes.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// `canCommit` needs the lag at or below this many seconds.
pub const COMMITTABLE_LAG_SECONDS: u64 = 5;

/// How a migration ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Stopped by the operator before commit; the destination is a consistent staging copy.
    Stopped,
}

/// Runs a migration to its end, recording FAILED with the reason when it fails.
pub async fn run(plan: Plan, progress: Progress, stop: CancellationToken) -> Result<Outcome> {
    progress.update(|s| s.state = State::Running);
    let source = plan.source.client()?;
    let destination = plan.destination.client()?;
    let store = StateStore::new(&destination, &plan.filter.state_db);
    let result = Migration {
        plan: &plan,
        source,
        destination,
        store: store.clone(),
        progress: progress.clone(),
        stop,
    }
    .run()
    .await;
    if let Err(error) = &result {
        let message = redact_uri(&format!("{error:#}"));
        let phase = progress.update(|s| {
            s.state = State::Failed;
            s.can_commit = false;
            s.error = Some(message.clone());
            s.phase
        });
        tracing::error!(phase = phase.as_str(), error = %message, "migration FAILED");
        if let Err(e) = store.set_state(State::Failed, phase, Some(&message)).await {
            tracing::warn!(error = %redact_uri(&e.to_string()), "could not record FAILED on the destination");
        }
    }
    result
}

struct Migration<'a> {
    plan: &'a Plan,
    source: Client,
    destination: Client,
    store: StateStore,
    progress: Progress,
    stop: CancellationToken,
}

impl Migration<'_> {
    async fn run(&self) -> Result<Outcome> {
        self.enter(Phase::Validating).await?;
        preflight::validate(self.plan, &self.source, &self.destination).await?;

        // T0: the change stream's starting point, taken before the first document is read.
        let start_token = changes::start_point(&self.source).await?;
        self.store.start(self.plan.describe(), start_token.clone()).await?;

        let specs = catalog::list_namespaces(&self.source, &self.plan.filter).await?;
        self.enter(Phase::CollectionCopy).await?;
        let Some(incarnations) = self.until_stopped(self.copy_all(&specs)).await? else {
            return Ok(Outcome::Stopped);
        };
        self.enter(Phase::IndexBuilding).await?;
        if self.until_stopped(self.build_indexes(&specs)).await?.is_none() {
            return Ok(Outcome::Stopped);
        }
        self.enter(Phase::ChangeEventApplication).await?;
        self.follow_changes(start_token, incarnations).await
    }

    /// Runs `work` unless the operator stops the migration first (`None`).
    async fn until_stopped<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<Option<T>> {
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
        self.store.set_state(state, phase, None).await.or_else(|e| {
            // Before T0 is recorded there is no state document to update yet.
            if phase == Phase::Validating {
                Ok(())
            } else {
                Err(e)
            }
        })
    }

    async fn copy_all(&self, specs: &[CollectionSpec]) -> Result<Incarnations> {
        let collections: Vec<&CollectionSpec> =
            specs.iter().filter(|s| s.kind == Kind::Collection).collect();
        for spec in &collections {
            let (documents, bytes) = copy::estimate_size(&self.source, spec).await;
            self.progress.update(|s| {
                s.collections.push(CollectionProgress {
                    namespace: spec.ns(),
                    estimated_total_documents: documents,
                    estimated_total_bytes: bytes,
                    ..Default::default()
                })
            });
        }
        for spec in specs.iter().filter(|s| s.kind == Kind::Timeseries) {
            tracing::warn!(namespace = %spec.ns(), "time-series collections are not migrated");
        }
        stream::iter(collections.iter().map(|spec| async move {
            copy::create_namespace(&self.destination, spec).await?;
            let copied =
                copy::copy_documents(&self.source, &self.destination, spec, &spec.name, &self.progress)
                    .await?;
            self.progress.update(|s| {
                if let Some(c) = s.collections.iter_mut().find(|c| c.namespace == spec.ns()) {
                    c.done = true;
                }
            });
            tracing::info!(namespace = %spec.ns(), documents = copied, "collection copied");
            Ok::<(), anyhow::Error>(())
        }))
        .buffer_unordered(COPY_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
        for view in specs.iter().filter(|s| s.kind == Kind::View) {
            copy::create_namespace(&self.destination, view).await?;
        }
        let mut incarnations = Incarnations::default();
        for spec in &collections {
            if let Some(Bson::Binary(uuid)) = &spec.uuid {
                incarnations.hold(&spec.ns(), uuid.bytes.clone());
            }
        }
        Ok(incarnations)
    }

    async fn build_indexes(&self, specs: &[CollectionSpec]) -> Result<()> {
        for spec in specs.iter().filter(|s| s.kind == Kind::Collection) {
            copy::build_indexes(&self.destination, spec).await?;
        }
        Ok(())
    }

    /// Applies changes from T0 on, until a commit completes or the operator stops.
    async fn follow_changes(&self, start_token: Bson, incarnations: Incarnations) -> Result<Outcome> {
        let mut stream = changes::open(&self.source, Some(&start_token)).await?;
        let mut applier = Applier::new(
            self.source.clone(),
            self.destination.clone(),
            self.plan.filter.clone(),
            incarnations,
            self.progress.clone(),
        );
        let mut applied = Timestamp { time: 0, increment: 0 };
        let mut commit_point: Option<Timestamp> = None;
        let mut last_checkpoint = Instant::now();
        loop {
            if self.stop.is_cancelled() {
                self.checkpoint(&stream, applied).await?;
                return Ok(Outcome::Stopped);
            }
            let clock = source_clock::read(&self.source).await?;
            let (events, caught_up) = read_round(&mut stream).await?;
            if let Some(last) = events.last() {
                applied = applied.max(last.cluster_time);
            }
            applier.apply(events).await?;
            if caught_up {
                // Every change the source had majority-committed before this round is applied.
                applied = applied.max(clock.majority);
            }
            let lag = seconds_between(applied, clock.last_write);
            let commit_requested = self.progress.update(|s| {
                s.lag_time_seconds = Some(lag);
                s.can_commit = s.state == State::Running && lag <= COMMITTABLE_LAG_SECONDS;
                s.commit_requested
            });
            if commit_requested && commit_point.is_none() {
                commit_point = Some(self.begin_commit().await?);
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL || commit_point.is_some() {
                self.checkpoint(&stream, applied).await?;
                last_checkpoint = Instant::now();
            }
            if commit_point.is_some_and(|point| applied >= point) {
                self.finish_commit().await?;
                return Ok(Outcome::Committed);
            }
        }
    }

    async fn checkpoint(&self, stream: &ChangeStream<RawDocumentBuf>, applied: Timestamp) -> Result<()> {
        let Some(token) = stream.resume_token() else {
            return Ok(());
        };
        self.store
            .checkpoint(&Checkpoint {
                resume_token: mongodb::bson::to_bson(&token)?,
                applied_time: applied,
            })
            .await
    }

    /// Enters COMMITTING and returns the commit point: the source's latest write right after the
    /// operator's request. Everything up to it must be applied before COMMITTED.
    async fn begin_commit(&self) -> Result<Timestamp> {
        let point = source_clock::read(&self.source).await?.last_write;
        self.progress.update(|s| {
            s.state = State::Committing;
            s.can_commit = false;
        });
        tracing::info!(commit_point = %point, "COMMITTING: applying the last changes");
        self.store
            .set_state(State::Committing, Phase::ChangeEventApplication, None)
            .await?;
        Ok(point)
    }

    async fn finish_commit(&self) -> Result<()> {
        self.enter(Phase::RestoringConstraints).await?;
        constraints::restore(&self.source, &self.destination, &self.plan.filter, &self.progress)
            .await
            .context("restoring relaxed constraints at commit")?;
        self.progress.update(|s| {
            s.state = State::Committed;
            s.phase = Phase::Done;
            s.lag_time_seconds = Some(0);
            s.can_write = true;
        });
        self.store
            .set_state(State::Committed, Phase::Done, None)
            .await?;
        tracing::info!(state = "COMMITTED", "the destination is ready: point the application at it");
        Ok(())
    }
}

/// Reads one round of events: up to [`ROUND_EVENTS`], for about [`ROUND_TIME`], or until the
/// stream has nothing more (`caught_up`).
async fn read_round(stream: &mut ChangeStream<RawDocumentBuf>) -> Result<(Vec<ChangeEvent>, bool)> {
    let started = Instant::now();
    let mut events = Vec::new();
    loop {
        match stream
            .next_if_any()
            .await
            .context("reading the source's change stream")?
        {
            Some(raw) => {
                events.push(ChangeEvent::decode(raw)?);
                if events.len() >= ROUND_EVENTS || started.elapsed() >= ROUND_TIME {
                    return Ok((events, false));
                }
            }
            None => return Ok((events, true)),
        }
    }
}
