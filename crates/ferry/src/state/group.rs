//! Copy-state writes sent together. Each copied collection's state is written several times
//! (registered with its ranges, its ranges done, copied, indexed): copying 20,000 collections of
//! 20 documents sent 80,000 `update` commands, a fifth of the destination's CPU went to them
//! (measured: 0.2 ms each alone, 0.07 ms a statement in a command of 64).
//!
//! So the writes asked at the same time go in one `update` command of many statements: the
//! group's own task sends what is asked, and while a command is out the next writes wait to go
//! together in the one after it; it answers each writer. A writer still returns only once a majority acknowledged its own
//! statement (DESIGN rule 5). A statement whose writer stopped waiting is not sent.
//!
//! Only absolute statements come here (`$set`, a replacement): a command that failed
//! transiently is sent again in place (`majority::command`), which must leave the same result.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Result};
use mongodb::bson::{doc, Document};
use mongodb::Database;
use tokio::sync::{mpsc, oneshot};

use crate::majority;
use crate::server_error::{WriteConcernFailed, WriteRefused, NETWORK_TIMEOUT};

/// Statements sent in one command at most, by count and by size (a server takes 100,000 and
/// 16 MB; a copy state's statement is small, but an `_id` may be large).
const GROUP_MOST: usize = 1000;
const GROUP_BYTES: usize = 8 * 1024 * 1024;

/// The writes to one state collection, sent by a task of their own: a writer only waits for its
/// answer, so a writer that is not polled meanwhile (a future of the copy pool's, while the pool
/// records a cut) never holds up the others.
pub(super) struct Group {
    database: Database,
    collection: String,
    /// Started by the first write, inside the runtime (again if it has ended); it ends when the
    /// group is dropped.
    sender: Mutex<Option<mpsc::UnboundedSender<Ask>>>,
}

/// What the task is asked: a statement to write, or to answer once everything asked before is
/// settled.
enum Ask {
    Write(Asked),
    Settle(oneshot::Sender<()>),
}

/// One statement, its size, and where its outcome goes.
struct Asked {
    statement: Document,
    bytes: usize,
    answer: oneshot::Sender<Result<()>>,
}

/// How long one command may take, resends in place included, before its writers are answered
/// with a transient failure (their attempt then retries from its checkpoints).
const SEND_LIMIT: Duration = Duration::from_secs(4 * 60);

impl Group {
    pub fn new(database: Database, collection: &str) -> Self {
        Group {
            database,
            collection: collection.to_string(),
            sender: Mutex::new(None),
        }
    }

    fn ask(&self, ask: Ask) -> Result<()> {
        let mut sender = self.sender.lock().expect("state group lock");
        let running = sender.as_ref().filter(|s| !s.is_closed()).cloned();
        let sender = running.unwrap_or_else(|| {
            let (started, asked) = mpsc::unbounded_channel();
            tokio::spawn(send_all(
                self.database.clone(),
                self.collection.clone(),
                asked,
            ));
            *sender = Some(started.clone());
            started
        });
        sender
            .send(ask)
            .map_err(|_| anyhow!("the state writer has stopped"))
    }

    /// Applies update statement `statement` (`{q, u, upsert}`), with the other statements
    /// asked meanwhile, once a majority has acknowledged it.
    pub async fn update(&self, statement: Document) -> Result<()> {
        let bytes = mongodb::bson::to_vec(&statement).map_or(0, |b| b.len());
        let (answer, answered) = oneshot::channel();
        self.ask(Ask::Write(Asked {
            statement,
            bytes,
            answer,
        }))?;
        answered
            .await
            .unwrap_or_else(|_| Err(anyhow!("the state writer stopped before it answered")))
    }

    /// Returns once every statement asked before is written, refused or given up: a new
    /// attempt starts after an ended one's last writes, which could otherwise land over what it
    /// reads and records.
    pub async fn settle(&self) {
        let (settled, done) = oneshot::channel();
        if self.ask(Ask::Settle(settled)).is_ok() {
            let _ = done.await;
        }
    }
}

/// Sends the statements as they are asked: everything asked while a command was out goes in
/// the next one.
async fn send_all(database: Database, collection: String, mut asked: mpsc::UnboundedReceiver<Ask>) {
    let mut waiting: VecDeque<Ask> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match asked.recv().await {
                Some(next) => waiting.push_back(next),
                None => return,
            }
        }
        while let Ok(next) = asked.try_recv() {
            waiting.push_back(next);
        }
        // A writer that stopped waiting (its attempt ended) is not written for: a later attempt
        // decides again what to record.
        waiting.retain(|ask| !matches!(ask, Ask::Write(a) if a.answer.is_closed()));
        if let Some(Ask::Settle(_)) = waiting.front() {
            if let Some(Ask::Settle(settled)) = waiting.pop_front() {
                let _ = settled.send(());
            }
            continue;
        }
        // The statements up to the next settle, within the limits.
        let (mut count, mut bytes) = (0, 0);
        while let Some(Ask::Write(next)) = waiting.get(count) {
            if count == GROUP_MOST || (count > 0 && bytes + next.bytes > GROUP_BYTES) {
                break;
            }
            bytes += next.bytes;
            count += 1;
        }
        let group: Vec<Asked> = waiting
            .drain(..count)
            .filter_map(|ask| match ask {
                Ask::Write(asked) => Some(asked),
                Ask::Settle(_) => None,
            })
            .collect();
        for unsent in send(&database, &collection, group).await.into_iter().rev() {
            waiting.push_front(Ask::Write(unsent));
        }
    }
}

/// What became of statement `at` of `len` sent in one ordered command whose reply refused the
/// one at `refused`, if any.
#[derive(Debug, PartialEq)]
enum Fate {
    Written,
    Refused,
    /// After the refused one: the server never ran it.
    Unsent,
}

fn fate(at: usize, len: usize, refused: Option<usize>) -> Fate {
    match refused {
        None => Fate::Written,
        // A position the command did not have: nothing in it is known written.
        Some(failed) if failed >= len => Fate::Refused,
        Some(failed) if at < failed => Fate::Written,
        Some(failed) if at == failed => Fate::Refused,
        Some(_) => Fate::Unsent,
    }
}

/// Sends `group` in one ordered command and answers each statement the server reached: those
/// before a refused one were written; it is refused; those after it are handed back unsent.
async fn send(database: &Database, collection: &str, group: Vec<Asked>) -> Vec<Asked> {
    if group.is_empty() {
        return group;
    }
    let statements: Vec<Document> = group.iter().map(|a| a.statement.clone()).collect();
    let command = doc! { "update": collection, "updates": statements, "ordered": true };
    let reply = match tokio::time::timeout(SEND_LIMIT, majority::command(database, command)).await {
        Ok(reply) => reply,
        Err(_) => Err(anyhow::Error::from(WriteConcernFailed {
            code: NETWORK_TIMEOUT,
            message: format!("no answer to the state writes within {SEND_LIMIT:?}"),
        })),
    };
    let refused = reply.as_ref().ok().and_then(first_write_error);
    let len = group.len();
    let mut unsent = Vec::new();
    for (at, asked) in group.into_iter().enumerate() {
        let outcome = match (&reply, &refused) {
            (Err(e), _) => Err(shared(e)),
            (Ok(_), refused) => match fate(at, len, refused.as_ref().map(|r| r.0)) {
                Fate::Written => Ok(()),
                Fate::Refused => Err(anyhow::Error::from(
                    refused.as_ref().expect("a refusal").1.clone(),
                )),
                Fate::Unsent => {
                    unsent.push(asked);
                    continue;
                }
            },
        };
        // A writer that stopped waiting needs no answer.
        let _ = asked.answer.send(outcome);
    }
    unsent
}

/// The position of the first statement an `update` reply refused, and the refusal.
fn first_write_error(reply: &Document) -> Option<(usize, WriteRefused)> {
    let error = reply
        .get_array("writeErrors")
        .ok()?
        .first()?
        .as_document()?;
    let at = error.get_i32("index").map_or(0, |i| i.max(0) as usize);
    let refusal = WriteRefused {
        code: error.get_i32("code").unwrap_or_default(),
        message: error.get_str("errmsg").unwrap_or("no message").to_string(),
    };
    Some((at, refusal))
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
        assert!(first_write_error(&doc! { "ok": 1, "n": 3 }).is_none());
        let refused = doc! {
            "ok": 1, "n": 1,
            "writeErrors": [{ "index": 1, "code": 17419, "errmsg": "too large" }],
        };
        let (at, refusal) = first_write_error(&refused).unwrap();
        assert_eq!(
            (at, refusal.code, refusal.message.as_str()),
            (1, 17419, "too large")
        );
        let stepped_down = doc! {
            "ok": 1, "n": 0,
            "writeErrors": [{ "index": 0, "code": 10107, "errmsg": "not primary" }],
        };
        let (_, refusal) = first_write_error(&stepped_down).unwrap();
        assert!(
            server_error::is_transient(&anyhow::Error::from(refusal)),
            "a stepdown between statements is retried"
        );
    }

    #[test]
    fn statements_after_a_refused_one_are_sent_again_and_a_position_out_of_range_refuses_all() {
        let fates = |refused| (0..3).map(|at| fate(at, 3, refused)).collect::<Vec<_>>();
        assert_eq!(fates(None), [Fate::Written, Fate::Written, Fate::Written]);
        assert_eq!(fates(Some(1)), [Fate::Written, Fate::Refused, Fate::Unsent]);
        assert_eq!(fates(Some(0)), [Fate::Refused, Fate::Unsent, Fate::Unsent]);
        assert_eq!(
            fates(Some(7)),
            [Fate::Refused, Fate::Refused, Fate::Refused]
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
