//! The commit stage: the source's writes blocked, the commit point taken on its primary, and,
//! once every change up to it is applied, the relaxed constraints restored (`restore`), the
//! final verification, the writes after the point named (`strays`), and COMMITTED recorded.
//! Every step can run again after a crash (DESIGN rule 12).

use anyhow::{Context, Result};
use mongodb::bson::{doc, Timestamp};

use super::{restore, reverse, strays, Migration};
use crate::changes::{Capture, StreamFrom};
use crate::lifecycle::{Direction, Phase, State};
use crate::server_error::{self, COMMAND_NOT_FOUND, UNAUTHORIZED};
use crate::source::clock;
use crate::source::info::Version;
use crate::state::CommitPoint;
use crate::{majority, preflight, verify};

impl Migration<'_> {
    /// Enters COMMITTING and returns the commit point: the time of the source primary's latest
    /// write once its writes are blocked (or, where they cannot be, right after the operator's
    /// request). Everything up to it is applied before COMMITTED, nothing after it.
    pub(super) async fn begin_commit(&self, version: Version) -> Result<CommitPoint> {
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
    pub(super) async fn block_source_writes(&self) -> Result<Option<String>> {
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
    pub(super) async fn finish_commit(&self, commit: &CommitPoint, version: Version) -> Result<()> {
        self.progress.update(|s| {
            s.state = State::Committing;
            s.source_writes_blocked = Some(commit.writes_open.is_none());
        });
        self.enter(Phase::RestoringConstraints).await?;
        restore::restore(
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
            &self.destination,
            from,
            Capture::of(version),
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
        match self.plan.direction {
            // The way back starts here: after the restore, before the application moves.
            Direction::Forward if self.plan.reversible => {
                let point = reverse::reverse_point(&self.destination, &self.plan.filter).await?;
                self.store.set_reverse_point(&point).await?;
                tracing::info!(reverse_point = %point.time, "recorded where `ferry reverse` starts");
            }
            Direction::Forward => {}
            Direction::Reverse => self.reopen_old_source().await?,
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

    /// The final verification (`--verify`): the source is quiescent and every change applied,
    /// so any difference is real and the commit is refused with the report.
    pub(super) async fn verify_before_committed(&self, commit_point: Timestamp) -> Result<()> {
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
            expired = report.expired,
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
