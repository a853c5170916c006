//! Where a migration is in its life: its state (named as mongosync names them, so runbooks
//! carry over) and, while it runs, its phase. Shared by the state kept on the destination, the
//! progress reply and the operator's controls.

use serde::Serialize;

/// `canCommit` needs the lag at or below this many seconds.
pub const COMMITTABLE_LAG_SECONDS: u64 = 5;

/// Whether a migration may be committed: running, with the copy and index build done (the
/// lag is measured only once changes are applied) and the lag within
/// [`COMMITTABLE_LAG_SECONDS`].
pub fn can_commit(state: State, lag_seconds: u64) -> bool {
    state == State::Running && lag_seconds <= COMMITTABLE_LAG_SECONDS
}

/// The migration's state, named as mongosync names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Idle,
    Running,
    Paused,
    Committing,
    Committed,
    Failed,
}

impl State {
    /// Reads a stored state name (unknown names read as RUNNING).
    pub fn parse(text: &str) -> Self {
        match text {
            "IDLE" => State::Idle,
            "PAUSED" => State::Paused,
            "COMMITTING" => State::Committing,
            "COMMITTED" => State::Committed,
            "FAILED" => State::Failed,
            _ => State::Running,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "IDLE",
            State::Running => "RUNNING",
            State::Paused => "PAUSED",
            State::Committing => "COMMITTING",
            State::Committed => "COMMITTED",
            State::Failed => "FAILED",
        }
    }
}

/// Which way the data flows: forward (source to destination), or reverse after a forward
/// migration's commit (the new cluster's changes back to the old one, `ferry reverse`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Forward,
    Reverse,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

/// What the migration is doing while RUNNING (mongosync's `info`), in the order it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub enum Phase {
    #[serde(rename = "validating")]
    Validating,
    #[serde(rename = "collection copy")]
    CollectionCopy,
    #[serde(rename = "index building")]
    IndexBuilding,
    #[serde(rename = "change event application")]
    ChangeEventApplication,
    #[serde(rename = "restoring constraints")]
    RestoringConstraints,
    #[serde(rename = "done")]
    Done,
}

impl Phase {
    /// Reads a stored phase name (unknown names read as the first phase).
    pub fn parse(text: &str) -> Self {
        [
            Phase::CollectionCopy,
            Phase::IndexBuilding,
            Phase::ChangeEventApplication,
            Phase::RestoringConstraints,
            Phase::Done,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
        .unwrap_or(Phase::Validating)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Validating => "validating",
            Phase::CollectionCopy => "collection copy",
            Phase::IndexBuilding => "index building",
            Phase::ChangeEventApplication => "change event application",
            Phase::RestoringConstraints => "restoring constraints",
            Phase::Done => "done",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_migration_close_behind_can_commit() {
        assert!(can_commit(State::Running, 0));
        assert!(can_commit(State::Running, COMMITTABLE_LAG_SECONDS));
        assert!(!can_commit(State::Running, COMMITTABLE_LAG_SECONDS + 1));
        for state in [
            State::Paused,
            State::Committing,
            State::Committed,
            State::Failed,
        ] {
            assert!(!can_commit(state, 0), "{state:?}");
        }
    }
}
