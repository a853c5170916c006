//! The operator's controls over one migration: start (for `ferry serve`), pause, resume,
//! extend the cutover window, and the request to commit (refused until `canCommit`). A migration is a task running [`migration::run`]; pausing stops
//! it at a consistent point (the same stop as Ctrl-C) and resuming starts it again from the
//! state stored on the destination.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::{Direction, State};
use crate::migration::{self, Outcome};
use crate::plan::{InputError, Plan};
use crate::progress::Progress;

/// How a migration ended, for the process that hosts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Committed,
    Failed,
    /// Refused before it started: bad input or a failed pre-flight check.
    Refused,
    /// Stopped by a signal before commit.
    Stopped,
}

/// Hours added by one `extend` of the cutover window.
pub const EXTENSION: Duration = Duration::from_secs(24 * 3600);

struct Run {
    stop: CancellationToken,
    /// Set when the stop is a pause, not a shutdown.
    pausing: bool,
    /// The task running the migration, awaited by a pause.
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts, pauses and resumes the migration; shared by the API and the CLI.
#[derive(Clone)]
pub struct Controller {
    progress: Progress,
    plan: Arc<Mutex<Option<Plan>>>,
    run: Arc<Mutex<Option<Run>>>,
    finished: watch::Sender<Option<Finish>>,
}

impl Controller {
    pub fn new(progress: Progress) -> Self {
        Self {
            progress,
            plan: Arc::default(),
            run: Arc::default(),
            finished: watch::channel(None).0,
        }
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Starts a migration; refused when one was started already.
    pub fn start(&self, plan: Plan) -> Result<(), String> {
        {
            let mut current = self.plan.lock().expect("plan lock");
            if current.is_some() {
                return Err(
                    "a migration was started already; it can be paused, resumed or committed"
                        .into(),
                );
            }
            *current = Some(plan);
        }
        self.spawn();
        Ok(())
    }

    fn spawn(&self) {
        let plan = self
            .plan
            .lock()
            .expect("plan lock")
            .clone()
            .expect("a plan to run");
        let stop = CancellationToken::new();
        let mut run = self.run.lock().expect("run lock");
        *run = Some(Run {
            stop: stop.clone(),
            pausing: false,
            task: None,
        });
        let controller = self.clone();
        let task = tokio::spawn(async move {
            let outcome = migration::run(plan, controller.progress.clone(), stop).await;
            let pausing = controller
                .run
                .lock()
                .expect("run lock")
                .take()
                .is_some_and(|r| r.pausing);
            let finish = match outcome {
                Ok(Outcome::Committed) => Some(Finish::Committed),
                Ok(Outcome::Paused(reason)) => {
                    controller.enter_paused(&reason);
                    None
                }
                Ok(Outcome::Stopped) if pausing => {
                    controller.enter_paused("paused by the operator");
                    None
                }
                Ok(Outcome::Stopped) => Some(Finish::Stopped),
                Err(e) if e.downcast_ref::<InputError>().is_some() => Some(Finish::Refused),
                Err(_) => Some(Finish::Failed),
            };
            if finish.is_some() {
                controller.finished.send_replace(finish);
            }
        });
        if let Some(run) = run.as_mut() {
            run.task = Some(task);
        }
    }

    fn enter_paused(&self, reason: &str) {
        tracing::info!(
            reason,
            "PAUSED: the destination is a consistent staging copy; resume to continue"
        );
        self.progress.update(|s| {
            s.state = State::Paused;
            s.can_commit = false;
            s.paused_reason = Some(reason.to_string());
        });
    }

    /// Pauses at a consistent point; returns once the migration has stopped.
    pub async fn pause(&self) -> Result<(), String> {
        let state = self.progress.snapshot().state;
        if state != State::Running {
            return Err(format!(
                "only a RUNNING migration can be paused; this one is {}",
                state.as_str()
            ));
        }
        let task = {
            let mut run = self.run.lock().expect("run lock");
            let Some(run) = run.as_mut() else {
                return Err("no migration is running".into());
            };
            run.pausing = true;
            run.stop.cancel();
            run.task.take()
        };
        if let Some(task) = task {
            // The run stops at a consistent point; its end marks the migration PAUSED.
            let _ = task.await;
        }
        Ok(())
    }

    /// Starts the reverse of the COMMITTED migration this controller ran (`--reversible`): the
    /// new cluster's changes flow back to the old one, with the same controls.
    pub async fn reverse(&self) -> Result<(), String> {
        let state = self.progress.snapshot().state;
        let reversed = {
            let current = self.plan.lock().expect("plan lock");
            let forward = match current.as_ref() {
                Some(plan) if state == State::Committed && plan.direction == Direction::Forward => {
                    plan
                }
                _ => {
                    return Err(format!(
                        "only a COMMITTED forward migration can be reversed; this one is {}",
                        state.as_str()
                    ))
                }
            };
            if !forward.reversible {
                return Err("this migration was started without reversible: true, so where the new cluster's changes start was not recorded; start the next one with it".into());
            }
            forward.clone().reversed().map_err(|e| e.0)?
        };
        // COMMITTED is shown just before the forward run's task ends: let it end first.
        let task = self
            .run
            .lock()
            .expect("run lock")
            .as_mut()
            .and_then(|r| r.task.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        {
            let mut current = self.plan.lock().expect("plan lock");
            if current
                .as_ref()
                .is_some_and(|p| p.direction == Direction::Reverse)
            {
                return Err("a reverse was started already".into());
            }
            *current = Some(reversed);
        }
        self.progress.reset();
        self.finished.send_replace(None);
        self.spawn();
        Ok(())
    }

    /// Continues a PAUSED migration from its stored state (never dropping anything again).
    pub fn resume(&self) -> Result<(), String> {
        let state = self.progress.snapshot().state;
        if state != State::Paused {
            return Err(format!(
                "only a PAUSED migration can be resumed; this one is {}",
                state.as_str()
            ));
        }
        if let Some(plan) = self.plan.lock().expect("plan lock").as_mut() {
            plan.drop = false;
        }
        self.progress.update(|s| {
            s.state = State::Running;
            s.paused_reason = None;
            s.cutover_deadline = None;
            // Unknown until the resumed run measures it: the lag before the pause is stale.
            s.lag_time_seconds = None;
        });
        self.spawn();
        Ok(())
    }

    /// Asks the migration to commit: accepted once `canCommit` is true (and again while it
    /// commits), refused with the reason otherwise. Returns why the source's writes will stay
    /// open at commit, when they will.
    pub fn request_commit(&self) -> Result<Option<String>, String> {
        self.progress.update(|s| {
            if s.commit_requested || matches!(s.state, State::Committing | State::Committed) {
                return Ok(s.writes_open_at_commit.clone());
            }
            if s.can_commit {
                s.commit_requested = true;
                return Ok(s.writes_open_at_commit.clone());
            }
            Err(match s.state {
                State::Failed => format!(
                    "the migration FAILED and cannot be committed: {}",
                    s.error.as_deref().unwrap_or("see the log")
                ),
                _ => format!(
                    "the migration cannot be committed yet: it is in {} ({}) with lag {}; wait until canCommit is true",
                    s.state.as_str(),
                    s.phase.as_str(),
                    s.lag_time_seconds.map_or("unknown".to_string(), |l| format!("{l} s"))
                ),
            })
        })
    }

    /// Adds [`EXTENSION`] to the cutover window.
    pub fn extend(&self) -> Result<(), String> {
        self.progress.update(|s| match s.cutover_deadline.as_mut() {
            Some(deadline) => {
                *deadline += EXTENSION;
                Ok(())
            }
            None => Err(
                "the cutover window has not started: it starts when canCommit first turns true"
                    .into(),
            ),
        })
    }

    /// Stops the migration for good (a signal).
    pub fn shutdown(&self) {
        if let Some(run) = self.run.lock().expect("run lock").as_ref() {
            run.stop.cancel();
        }
    }

    /// Waits until the migration has ended.
    pub async fn finished(&self) -> Finish {
        let mut receiver = self.finished.subscribe();
        loop {
            if let Some(finish) = *receiver.borrow_and_update() {
                return finish;
            }
            if receiver.changed().await.is_err() {
                return Finish::Stopped;
            }
        }
    }
}
