//! The start of an attempt: both ends validated (every pre-flight check on the first attempt,
//! a reachability check on a retry), then the migration stored on the destination resumed, or
//! a new one begun at T0, the source's majority time taken before the first document is read
//! (for a reverse, at the reverse point the forward migration recorded).

use anyhow::Result;

use super::Migration;
use crate::changes;
use crate::lifecycle::{Direction, Phase, State};
use crate::preflight;
use crate::state::Stored;

impl Migration<'_> {
    /// Validates both ends (every check on the first attempt), then resumes the migration
    /// stored on the destination or begins one: T0 is taken here, before the first document is
    /// read. Returns the stored state.
    pub(super) async fn start(&self) -> Result<Stored> {
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
                let start_time = match self.plan.direction {
                    // T0, taken before the first document is read: the change stream starts
                    // there and every copy read sees at least it.
                    Direction::Forward => changes::start_time(&self.source).await?,
                    // A reverse copies nothing: the two sides were equal at the reverse point.
                    Direction::Reverse => self.reverse_point().await?.time,
                };
                self.store.start(validated.identity, start_time).await?;
                Stored {
                    state: State::Running,
                    phase: Phase::Validating,
                    plan: Default::default(),
                    start_time,
                    checkpoint: None,
                    commit: None,
                    reverse: None,
                }
            }
        };
        Ok(stored)
    }
}
