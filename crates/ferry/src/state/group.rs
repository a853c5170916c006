//! Copy-state writes sent together. Each copied collection's state is written several times
//! (registered with its ranges, its ranges done, copied, indexed): copying 20,000 collections of
//! 20 documents sent 80,000 `update` commands, about a third of the destination's work there
//! (measured: 0.2 ms of its CPU each, against 0.07 ms a statement in a command of 64).
//!
//! So the writes asked at the same time go in one `update` command of many statements: a
//! writer asks, then waits for the turn; whoever takes it sends every statement asked so far and
//! answers each, as the copy's name checks share their lookups. A writer still returns only once
//! a majority acknowledged its own statement (DESIGN rule 5).
//!
//! Only absolute statements come here (`$set`, a replacement): a command that failed
//! transiently is sent again in place (`majority::command`), which must leave the same result.

use std::sync::Mutex;

use anyhow::{anyhow, Result};
use mongodb::bson::{doc, Document};
use mongodb::Database;
use tokio::sync::oneshot::{self, error::TryRecvError};

use crate::majority;
use crate::server_error::WriteConcernFailed;

/// Statements sent in one command at most (a server takes 100,000 and 16 MB; a copy state's
/// statement is small).
const GROUP_MOST: usize = 1000;

/// The writes waiting to be sent to one state collection, and the turn to send them.
pub(super) struct Group {
    database: Database,
    collection: String,
    asked: Mutex<Vec<Asked>>,
    turn: tokio::sync::Mutex<()>,
}

/// One statement and where its outcome goes.
struct Asked {
    statement: Document,
    answer: oneshot::Sender<Result<()>>,
}

impl Group {
    pub fn new(database: Database, collection: &str) -> Self {
        Group {
            database,
            collection: collection.to_string(),
            asked: Mutex::new(Vec::new()),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Applies update statement `statement` (`{q, u, upsert}`), with the other statements
    /// asked meanwhile, once a majority has acknowledged it.
    pub async fn update(&self, statement: Document) -> Result<()> {
        let mut answered = self.ask(statement.clone());
        loop {
            let _turn = self.turn.lock().await;
            match answered.try_recv() {
                Ok(outcome) => return outcome,
                // Taken by a turn that was given up before it answered (its task stopped): the
                // statement is absolute, so asking again is safe whether it was sent or not.
                Err(TryRecvError::Closed) => answered = self.ask(statement.clone()),
                Err(TryRecvError::Empty) => {
                    let group: Vec<Asked> = {
                        let mut asked = self.asked.lock().expect("state group lock");
                        let most = asked.len().min(GROUP_MOST);
                        asked.drain(..most).collect()
                    };
                    self.send(group).await;
                }
            }
        }
    }

    fn ask(&self, statement: Document) -> oneshot::Receiver<Result<()>> {
        let (answer, answered) = oneshot::channel();
        self.asked
            .lock()
            .expect("state group lock")
            .push(Asked { statement, answer });
        answered
    }

    /// Sends `group` in one ordered command and answers each statement: those before a failed
    /// one were written, it and those after it not.
    async fn send(&self, group: Vec<Asked>) {
        let (statements, answers): (Vec<Document>, Vec<_>) =
            group.into_iter().map(|a| (a.statement, a.answer)).unzip();
        let command = doc! { "update": &self.collection, "updates": statements, "ordered": true };
        let reply = majority::command(&self.database, command).await;
        let refused = reply.as_ref().ok().and_then(first_write_error);
        for (at, answer) in answers.into_iter().enumerate() {
            let outcome = match (&reply, &refused) {
                (Err(e), _) => Err(shared(e)),
                (Ok(_), Some((failed, message))) if at == *failed => Err(anyhow!("{message}")),
                (Ok(_), Some((failed, message))) if at > *failed => Err(anyhow!(
                    "not written: a state write sent before it in the same command failed: {message}"
                )),
                (Ok(_), _) => Ok(()),
            };
            // A writer that stopped waiting needs no answer.
            let _ = answer.send(outcome);
        }
    }
}

/// The position and message of the first statement an `update` reply refused.
fn first_write_error(reply: &Document) -> Option<(usize, String)> {
    let error = reply
        .get_array("writeErrors")
        .ok()?
        .first()?
        .as_document()?;
    let at = error.get_i32("index").map_or(0, |i| i.max(0) as usize);
    let code = error.get_i32("code").unwrap_or_default();
    let message = error.get_str("errmsg").unwrap_or("no message");
    Some((
        at,
        format!("the destination refused a state write: {message} (code {code})"),
    ))
}

/// The command's error for each of its writers, keeping what tells a transient fault from
/// another (the driver's error or the write concern's).
fn shared(error: &anyhow::Error) -> anyhow::Error {
    // The contexts above the typed error, outermost first.
    let mut contexts = Vec::new();
    for cause in error.chain() {
        let typed = if let Some(driver) = cause.downcast_ref::<mongodb::error::Error>() {
            Some(anyhow::Error::from(driver.clone()))
        } else {
            cause
                .downcast_ref::<WriteConcernFailed>()
                .map(|concern| anyhow::Error::from(concern.clone()))
        };
        match typed {
            Some(typed) if contexts.is_empty() => return typed,
            Some(typed) => return typed.context(contexts.join(": ")),
            None => contexts.push(cause.to_string()),
        }
    }
    anyhow!("{error:#}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_error;

    #[test]
    fn a_refused_statement_is_found_by_its_position() {
        assert_eq!(first_write_error(&doc! { "ok": 1, "n": 3 }), None);
        let refused = doc! {
            "ok": 1, "n": 1,
            "writeErrors": [{ "index": 1, "code": 17419, "errmsg": "too large" }],
        };
        let (at, message) = first_write_error(&refused).unwrap();
        assert_eq!(at, 1);
        assert!(
            message.contains("too large") && message.contains("17419"),
            "{message}"
        );
    }

    #[test]
    fn every_writer_of_a_failed_command_sees_whether_it_was_transient() {
        let stepped_down = anyhow::Error::from(WriteConcernFailed {
            code: 189,
            message: "stepped down".into(),
        })
        .context("recording the copy of d.c");
        let shared_error = shared(&stepped_down);
        assert!(server_error::is_transient(&shared_error));
        assert!(format!("{shared_error:#}").contains("recording the copy of d.c"));
        let other = shared(&anyhow!("something else"));
        assert!(!server_error::is_transient(&other));
    }
}
