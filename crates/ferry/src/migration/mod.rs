//! The migration's flow, one stage a file: `start` (validate, resume or begin, T0), `copy`
//! (ranges, checkpoints), `pool` (the ranges copied at once, cut when a worker is idle),
//! `measure` (sizes and the checks that need them, beside the copy), `indexing` (each
//! collection's indexes, as its copy ends), `sync` (change rounds, lag, the cutover
//! window), `commit` (write blocking, the commit point, the drain, `restore`, the final
//! verification, `strays`). This file wires them and rides out faults.
//!
//! Every stage resumes from the state stored on the destination, so one mechanism serves a
//! restart after a crash and the retry after a transient fault: `run` runs the stages again
//! with backoff until the fault passes or the retry window (time without durable progress)
//! runs out. `run` takes its stop signal as an argument; the CLI and the HTTP API only read the
//! shared [`Progress`] and ask for a commit through the controller.

mod commit;
mod copy;
mod indexing;
mod measure;
mod pool;
mod restore;
mod reverse;
mod room;
mod start;
mod strays;
mod sync;

use std::time::{Duration, Instant};

use anyhow::Result;
use mongodb::Client;
use tokio_util::sync::CancellationToken;

use crate::background::beside;
use crate::catalog;
use crate::changes::rounds;
use crate::changes::StreamFrom;
use crate::explain;
use crate::lifecycle::{Direction, Phase, State};
use crate::plan::{InputError, Plan};
use crate::preflight;
use crate::progress::Progress;
use crate::server_error;
use crate::source::clock::{self, seconds_between};
use crate::source::info::{self, Version};
use crate::source::oplog;
use crate::state::{StateStore, Stored};
use sync::StreamStart;

/// How often the source's oplog window is measured at most, and the share of the source's time
/// the measurement may take (on some servers finding the oldest entry scans the oplog).
const OPLOG_WINDOW_INTERVAL: Duration = Duration::from_secs(10);
const OPLOG_WINDOW_COST_SHARE: u32 = 20;
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
        s.direction = plan.direction;
        s.cutover_window = plan.cutover_window;
        // The retry window counts from here until the first durable progress.
        s.last_progress = Instant::now();
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
        .attempt()
        .await;
        let error = match attempt {
            Ok(outcome) => {
                progress.update(|s| s.retrying = None);
                return Ok(outcome);
            }
            Err(error) => error,
        };
        let snapshot = progress.snapshot();
        let fault = Fault {
            started: !first_attempt || snapshot.phase > Phase::Validating,
            transient: server_error::is_transient(&error),
            stalled: snapshot.last_progress.elapsed(),
            stopped: stop.is_cancelled(),
        };
        first_attempt = false;
        // Progress since the previous failure: the faults are passing, start the backoff over.
        if failed_after.is_some_and(|before| snapshot.last_progress > before) {
            backoff = FIRST_BACKOFF;
        }
        failed_after = Some(snapshot.last_progress);
        if fault.ride_out(plan.retry_window) {
            let reason = explain::error(&error);
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
        let mut message = explain::error(&error);
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
                tracing::warn!(error = %explain::error(&e), "could not record FAILED on the destination");
            }
        }
        return Err(error);
    }
}

/// What is known of an attempt's failure when deciding whether to try again.
#[derive(Clone, Copy, Debug)]
struct Fault {
    /// Something was started already (on the first attempt, past validation).
    started: bool,
    /// The error is one that passes (a network fault, an election, a restart).
    transient: bool,
    /// Time since the last durable progress.
    stalled: Duration,
    /// The operator stopped the migration.
    stopped: bool,
}

impl Fault {
    /// Whether to ride the fault out: a transient one, once something was started (a fault
    /// before that is a setting to fix), within the retry window, and not when stopping.
    fn ride_out(self, retry_window: Duration) -> bool {
        self.started && self.transient && self.stalled < retry_window && !self.stopped
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

/// The version to assume of a source that does not report one: the oldest with expanded events.
const OLDEST_SOURCE: Version = Version::new(6, 0, 0);
impl Migration<'_> {
    /// One attempt: start, then every stage not done yet.
    async fn attempt(&self) -> Result<Outcome> {
        // An ended attempt's copy-state writes may still be on their way.
        self.store.settle().await;
        let stored = self.start().await?;
        // Reconnected: no longer retrying (the retry window still counts from the last progress).
        self.progress.update(|s| s.retrying = None);
        let reported = info::source_version(&self.source).await;
        let version = reported.unwrap_or(OLDEST_SOURCE);
        self.progress.update(|s| s.source_version = reported);
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
        // Not progress: starting an attempt again must not hold the retry window open.
        let stages = self.stages(stored, version);
        beside(
            stages,
            watch_oplog(self.source.clone(), self.progress.clone()),
        )
        .await
    }

    /// The stages not done yet, from the stored state on.
    async fn stages(&self, stored: Stored, version: Version) -> Result<Outcome> {
        let specs = catalog::list_namespaces(&self.source, &self.plan.filter).await?;
        if stored.phase > Phase::CollectionCopy {
            self.show_finished_copy().await?;
        }
        let forward = self.plan.direction == Direction::Forward;
        if forward && stored.phase <= Phase::CollectionCopy {
            self.enter(Phase::CollectionCopy).await?;
            let copying = self.copy_all(&specs, stored.start_time);
            if self.until_stopped(copying).await?.is_none() {
                return Ok(Outcome::Stopped);
            }
        }
        if stored.phase <= Phase::IndexBuilding {
            self.enter(Phase::IndexBuilding).await?;
            let building = async {
                match self.plan.direction {
                    Direction::Forward => self.build_indexes(&specs).await,
                    Direction::Reverse => self.relax_in_place().await,
                }
            };
            if self.until_stopped(building).await?.is_none() {
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
                settled: rounds::just_before(stored.start_time),
                incarnations: match self.plan.direction {
                    Direction::Forward => self.store.copied_incarnations().await?,
                    Direction::Reverse => self.reverse_point().await?.incarnations,
                },
                commit: stored.commit,
            },
        };
        self.follow_changes(start, &specs, version).await
    }

    /// Runs `work` unless the operator stops the migration first (`None`).
    pub(super) async fn until_stopped<T>(
        &self,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<Option<T>> {
        tokio::select! {
            result = work => result.map(Some),
            _ = self.stop.cancelled() => Ok(None),
        }
    }

    pub(super) async fn enter(&self, phase: Phase) -> Result<()> {
        let state = self.progress.update(|s| {
            s.phase = phase;
            s.state
        });
        tracing::info!(state = state.as_str(), phase = phase.as_str(), "phase");
        self.store.set_state(state, phase, None).await
    }
}

/// Measures the source's oplog window in the background while a migration attempt runs: first
/// after one interval (an attempt's start is busy: planning the copy, or a resumed catch-up),
/// then as often as the interval and the measurement's own cost allow.
async fn watch_oplog(source: Client, progress: Progress) {
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
                progress.update(|s| s.oplog_window_seconds = Some(seconds_between(oldest, resume)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_fault_is_ridden_out_only_after_a_start_and_within_the_window() {
        let window = Duration::from_secs(60);
        let fault = Fault {
            started: true,
            transient: true,
            stalled: Duration::from_secs(10),
            stopped: false,
        };
        assert!(fault.ride_out(window));
        for failing in [
            Fault {
                started: false,
                ..fault
            },
            Fault {
                transient: false,
                ..fault
            },
            Fault {
                stalled: Duration::from_secs(61),
                ..fault
            },
            Fault {
                stopped: true,
                ..fault
            },
        ] {
            assert!(!failing.ride_out(window), "{failing:?}");
        }
    }
}
