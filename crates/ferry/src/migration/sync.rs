//! The sync stage: change events are read from the source one round ahead and applied, the
//! settled time and the lag measured on the source's clock, checkpoints written after the
//! writes they name, the cutover window watched, and the commit begun and finished once the
//! operator asks for it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mongodb::bson::{Bson, Timestamp};

use super::{Migration, Outcome};
use crate::apply::{Applier, Paths, Reconcile};
use tokio::sync::mpsc::Receiver;

use crate::background::beside;
use crate::catalog::CollectionSpec;
use crate::changes::rounds::{self, Round};
use crate::changes::{Capture, StreamFrom};
use crate::incarnations::Incarnations;
use crate::lifecycle;
use crate::source::clock::seconds_between;
use crate::source::info::{self, Version};
use crate::state::{Checkpoints, CommitPoint};
use crate::verify;

/// Checkpoints are written at most this often while applying changes.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the source's featureCompatibilityVersion is compared with its value at start.
const FCV_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How often the catalog is reconciled on a source without expanded change events.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// Where change application starts.
pub(super) struct StreamStart {
    pub(super) from: StreamFrom,
    /// Every change up to this source time is applied.
    pub(super) settled: Timestamp,
    pub(super) incarnations: Incarnations,
    pub(super) commit: Option<CommitPoint>,
}

/// How the application of rounds ended.
enum Ended {
    /// Every change up to the commit point is applied.
    Commit(CommitPoint),
    /// Stopped or paused before a commit.
    Before(Outcome),
}

impl Migration<'_> {
    /// Applies changes from `start` on, until a commit completes or the operator stops. The next
    /// round is read from the source, and (`--verify`) the first verification pass runs, beside
    /// the rounds being written; both stop before the commit's own verification.
    pub(super) async fn follow_changes(
        &self,
        start: StreamStart,
        specs: &[CollectionSpec],
        version: Version,
    ) -> Result<Outcome> {
        let (reader, rounds) = rounds::read_ahead(
            self.source.clone(),
            start.from.clone(),
            Capture::of(version),
        );
        let mut applier = Applier::new(
            self.source.clone(),
            self.destination.clone(),
            self.plan.filter.clone(),
            start.incarnations.clone(),
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
        if self.plan.verify {
            applier = applier.with_verification(verify::ChangeTracker::new(
                &self.destination,
                &self.plan.filter.state_db,
            ));
        }
        let verification = async {
            if self.plan.verify {
                verify::alongside_changes(
                    self.source.clone(),
                    self.destination.clone(),
                    self.plan.filter.clone(),
                    self.progress.clone(),
                )
                .await;
            }
        };
        let applying = self.apply_rounds(rounds, applier, start, version);
        match beside(beside(applying, reader), verification).await? {
            Ended::Commit(point) => {
                self.finish_commit(&point, version).await?;
                Ok(Outcome::Committed)
            }
            Ended::Before(outcome) => Ok(outcome),
        }
    }

    /// Writes the rounds as they come, until the commit point is reached or the migration stops.
    async fn apply_rounds(
        &self,
        mut rounds: Receiver<Result<Round>>,
        mut applier: Applier,
        start: StreamStart,
        version: Version,
    ) -> Result<Ended> {
        let mut token = None;
        let mut settled = start.settled;
        let mut commit = start.commit;
        let mut last_checkpoint = Instant::now();
        let mut checkpoints = Checkpoints::new_run();
        let fcv = info::fcv(&self.source).await;
        let mut last_fcv_check = Instant::now();
        // Without expanded events, catalog changes are found by comparing catalogs (from the
        // start: the copy's catalog may be behind already).
        let reconciling = !Capture::of(version).expanded;
        let mut last_reconcile: Option<Instant> = None;
        loop {
            // Once the commit point is taken, only the exact pass at it runs: an early pass
            // after a restart would create, empty, what the exact pass must copy.
            if reconciling
                && commit.is_none()
                && last_reconcile.is_none_or(|t| t.elapsed() >= RECONCILE_INTERVAL)
            {
                applier.reconcile(Reconcile::WhileSyncing).await?;
                last_reconcile = Some(Instant::now());
            }
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
                self.checkpoint(token.clone(), settled, &applier, &mut checkpoints)
                    .await?;
                return Ok(Ended::Before(Outcome::Stopped));
            }
            let mut round = rounds
                .recv()
                .await
                .context("the change stream reader stopped")??;
            settled = rounds::settled_after(settled, &round);
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
                s.can_commit = lifecycle::can_commit(s.state, lag);
                if s.can_commit && s.cutover_deadline.is_none() {
                    s.cutover_deadline = Some(Instant::now() + s.cutover_window);
                }
                let closed = s.cutover_deadline.is_some_and(|d| Instant::now() >= d);
                (s.commit_requested, closed && !s.commit_requested)
            });
            if window_closed {
                self.checkpoint(token.clone(), settled, &applier, &mut checkpoints)
                    .await?;
                return Ok(Ended::Before(Outcome::Paused(
                    "the cutover window ran out before a commit: Ferry stopped syncing rather than run unattended; resume to continue (and extend the window), or commit after resuming".into(),
                )));
            }
            if commit_requested && commit.is_none() {
                commit = Some(self.begin_commit(version).await?);
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL || commit.is_some() {
                self.checkpoint(token.clone(), settled, &applier, &mut checkpoints)
                    .await?;
                last_checkpoint = Instant::now();
            }
            if let Some(point) = commit.take_if(|c| settled >= c.time) {
                if reconciling {
                    applier.reconcile(Reconcile::AtCommit(point.time)).await?;
                }
                return Ok(Ended::Commit(point));
            }
        }
    }

    pub(super) async fn checkpoint(
        &self,
        token: Option<Bson>,
        settled: Timestamp,
        applier: &Applier,
        checkpoints: &mut Checkpoints,
    ) -> Result<()> {
        let Some(resume_token) = token else {
            return Ok(());
        };
        self.store
            .checkpoint(checkpoints, &resume_token, settled, applier.incarnations())
            .await?;
        self.progress.checkpointed();
        Ok(())
    }
}
