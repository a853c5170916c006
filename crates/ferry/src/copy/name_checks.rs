//! The check each copy read makes once its cursor is open: that the collection's name still
//! holds the incarnation the copy reads (DESIGN rule 11), answered for many reads at once.
//!
//! Copying many small collections, every read asks, and on the test server each lookup reads
//! the database's whole catalog: copying 3,000 collections of 20 documents took the source
//! 23.4 s of CPU with a lookup per read, 5.5 s with none (measured). So the reads of one
//! database share their lookups: a read asks, then waits for its database's turn; whoever takes
//! the turn looks up every name asked so far and answers them all. A lookup starts only after
//! each read it answers asked, so after that read's cursor opened, as a lookup of its own would.
//!
//! Several names are asked in one `listCollections` (`name: {$in: [...]}`), or each by equality
//! all at once, whichever took less time per name in that database (`Costs`): a real server
//! answers a lookup of one name by equality from that one catalog entry, but goes through the
//! database's every collection for any other filter, which in a database of tens of thousands
//! of collections costs more than the lookups it saves; the test server reads the whole catalog
//! either way. While asking together is the cheaper, the cost by equality is measured again by
//! asking one name that way beside the turn's lookup, never the whole turn's names: copying
//! 20,000 collections, turns asked again all by equality (every 16th, about 8 names each) made
//! a third of the source's lookups (1,483 of 4,459, measured).
//!
//! A lookup of names together costs the same however many names it asks, so after one the
//! database's turn rests as long as the lookup took before it looks up again, and the reads
//! asking meanwhile share the next: lookups then take at most half of the database's time.
//! Copying 20,000 collections in 10 databases, the source made 173 lookups instead of 504, and
//! spent 21.6 s of CPU instead of 28.0 s (measured beside more reads at once, `room`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::Timestamp;
use mongodb::{Client, ClientSession};
use tokio::sync::oneshot::{self, error::TryRecvError};

use crate::catalog;
use crate::source::reads;

/// The shared lookups of every database being copied.
#[derive(Default)]
pub struct NameChecks {
    databases: Mutex<HashMap<String, Arc<Database>>>,
}

/// The checks of one database: those asked and not yet taken, and the turn to look up, which
/// holds what the database's lookups cost.
#[derive(Default)]
struct Database {
    asked: Mutex<Vec<Asked>>,
    turn: tokio::sync::Mutex<Costs>,
}

/// How long the source spent per name on the lookups of one database, by equality and together
/// (a moving average of each lookup's own time, summed over the lookups of a turn, so that
/// lookups run at once are not counted as cheaper). Until both are known a turn probes; then it
/// asks in the way that cost less, and every `RETRY_EVERY` turns of several names measures the
/// other way again, in case it has become the cheaper.
#[derive(Default)]
struct Costs {
    single: Option<Duration>,
    together: Option<Duration>,
    turns: u32,
    /// Until when the turn rests after a lookup together.
    rest_until: Option<Instant>,
}

const RETRY_EVERY: u32 = 16;

/// Lookups by equality of one turn run at once: with many reads waiting a turn may answer a
/// hundred names, and more lookups than the driver's connections (ten by default) would wait
/// for one, their waits counted as their cost.
const LOOKUPS_AT_ONCE: usize = 8;

/// The longest a turn rests: a lookup that took long waiting for a connection or a server (an
/// election) says little about what the next one costs.
const MOST_REST: Duration = Duration::from_secs(1);

/// How a turn asks its names.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    /// Each name by equality, all at once.
    Each,
    /// Every name in one `$in`.
    Together,
    /// Every name in one `$in`, and the first beside it by equality: both costs measured for
    /// one lookup more than asking together.
    Probe,
}

impl Costs {
    /// How `names` are asked this turn.
    fn choose(&mut self, names: usize) -> Way {
        if names < 2 {
            return Way::Each;
        }
        self.turns += 1;
        let retry = self.turns % RETRY_EVERY == 0;
        match (self.single, self.together) {
            (Some(single), Some(together)) if together < single => {
                if retry {
                    Way::Probe
                } else {
                    Way::Together
                }
            }
            (Some(_), Some(_)) => {
                if retry {
                    Way::Together
                } else {
                    Way::Each
                }
            }
            _ => Way::Probe,
        }
    }

    /// After a turn that asked as `way` and was answered in `took`: a lookup together costs the
    /// same for any number of names, so the next turn waits as long (`MOST_REST` at most), and
    /// answers the reads asking meanwhile with one lookup; lookups by equality cost by the name,
    /// and do not wait. A failed turn does not rest: its reads ask on their own.
    fn rest_after(&mut self, way: Way, took: Duration) {
        self.rest_until = (way != Way::Each).then(|| Instant::now() + took.min(MOST_REST));
    }

    /// Waits out the rest after the last turn's lookup together.
    async fn rest(&mut self) {
        if let Some(until) = self.rest_until.take() {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    fn record(&mut self, together: bool, names: usize, took: Duration) {
        let per_name = took / names.max(1) as u32;
        let cost = if together {
            &mut self.together
        } else {
            &mut self.single
        };
        *cost = Some(cost.map_or(per_name, |c| (c * 3 + per_name) / 4));
    }
}

/// One read's check: the name, the incarnation it must hold, and where the answer goes.
struct Asked {
    name: String,
    uuid: Vec<u8>,
    answer: oneshot::Sender<Answer>,
}

/// Whether the name holds the incarnation, and the time the lookup's reply carried; `None` when
/// the shared lookup failed, and the read asks on its own (its error is then its own).
type Answer = Option<(bool, Option<Timestamp>)>;

impl NameChecks {
    /// Whether collection `name` of database `db` is the incarnation whose UUID is `uuid`, asked
    /// by a read in `session` whose cursor is open. The session's time is then advanced past
    /// the lookup's reply, as a lookup in it would have advanced it.
    pub async fn holds(
        &self,
        client: &Client,
        session: &mut ClientSession,
        db: &str,
        name: &str,
        uuid: &[u8],
    ) -> Result<bool> {
        let database = self.database(db);
        let (answer, mut answered) = oneshot::channel();
        database
            .asked
            .lock()
            .expect("name checks lock")
            .push(Asked {
                name: name.to_string(),
                uuid: uuid.to_vec(),
                answer,
            });
        let answer = {
            let mut costs = database.turn.lock().await;
            // A lookup answers every check it took before it gives the turn up: this one was
            // either answered by an earlier turn or is still waiting to be taken. A check taken
            // by a turn that was given up unanswered (its task stopped) is asked on its own.
            match answered.try_recv() {
                Ok(answer) => answer,
                Err(TryRecvError::Closed) => None,
                Err(TryRecvError::Empty) => {
                    costs.rest().await;
                    let asked =
                        std::mem::take(&mut *database.asked.lock().expect("name checks lock"));
                    look_up(client, db, &mut costs, asked).await;
                    answered.try_recv().ok().flatten()
                }
            }
        };
        match answer {
            Some((holds, time)) => {
                if let Some(time) = time {
                    session.advance_operation_time(time);
                }
                Ok(holds)
            }
            None => catalog::holds(client, session, db, name, uuid).await,
        }
    }

    fn database(&self, db: &str) -> Arc<Database> {
        let mut databases = self.databases.lock().expect("name checks lock");
        databases.entry(db.to_string()).or_default().clone()
    }
}

/// One lookup's reply: how its names were asked and how many, how long it took, the time its
/// reply carried, and the UUID each name held.
struct Reply {
    together: bool,
    names: usize,
    took: Duration,
    time: Option<Timestamp>,
    held: HashMap<String, Vec<u8>>,
}

/// Looks up every name of `asked` in the way `costs` chooses, and answers each.
async fn look_up(client: &Client, db: &str, costs: &mut Costs, asked: Vec<Asked>) {
    let mut names: Vec<&str> = asked.iter().map(|a| a.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    // Each lookup: whether its names are asked together, and the names.
    let way = costs.choose(names.len());
    let started = Instant::now();
    tracing::debug!(db, names = names.len(), ?way, "name checks: a turn");
    let lookups: Vec<(bool, Vec<&str>)> = match way {
        Way::Each => names.into_iter().map(|name| (false, vec![name])).collect(),
        Way::Together => vec![(true, names)],
        Way::Probe => vec![(false, vec![names[0]]), (true, names)],
    };
    // By position: a closure over borrowed names cannot be proven `Send` for every lifetime,
    // which spawning the migration needs.
    let lookups = &lookups;
    let replies: Result<Vec<Reply>> = futures_util::stream::iter(0..lookups.len())
        .map(|at| {
            let (together, names) = &lookups[at];
            look_up_one(client, db, *together, names)
        })
        .buffer_unordered(LOOKUPS_AT_ONCE)
        .try_collect()
        .await;
    let held = match replies {
        Ok(replies) => {
            costs.rest_after(way, started.elapsed());
            for together in [false, true] {
                let (names, took) = replies
                    .iter()
                    .filter(|reply| reply.together == together)
                    .fold((0, Duration::ZERO), |(n, t), r| (n + r.names, t + r.took));
                if names > 0 {
                    costs.record(together, names, took);
                }
            }
            let time = replies.iter().filter_map(|reply| reply.time).max();
            let held: HashMap<String, Vec<u8>> =
                replies.into_iter().flat_map(|reply| reply.held).collect();
            Some((held, time))
        }
        Err(e) => {
            let reason = crate::explain::error(&e);
            tracing::debug!(db, reason = %reason, "a shared name check failed; each read asks on its own");
            None
        }
    };
    for check in asked {
        let answer = held.as_ref().map(|(held, time)| {
            let holds = held.get(&check.name).is_some_and(|u| *u == check.uuid);
            (holds, *time)
        });
        // A read that stopped waiting needs no answer.
        let _ = check.answer.send(answer);
    }
}

/// One lookup of `names`, in a session of its own.
async fn look_up_one(client: &Client, db: &str, together: bool, names: &[&str]) -> Result<Reply> {
    let mut session = reads::session(client, None).await?;
    let started = Instant::now();
    let held = catalog::uuids_of(client, &mut session, db, names).await?;
    Ok(Reply {
        together,
        names: names.len(),
        took: started.elapsed(),
        time: session.operation_time(),
        held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_probe_until_both_costs_are_known_then_ask_the_cheaper_way() {
        let ms = Duration::from_millis;
        let mut costs = Costs::default();
        assert_eq!(
            costs.choose(1),
            Way::Each,
            "one name is always asked by equality"
        );
        assert_eq!(costs.choose(4), Way::Probe, "nothing measured: probe");
        costs.record(false, 1, ms(2));
        assert_eq!(costs.choose(4), Way::Probe, "together not measured yet");
        // Together took 40 ms for 4 names (a catalog scan): 10 ms a name against 2.
        costs.record(true, 4, ms(40));
        let ways: Vec<Way> = (0..RETRY_EVERY).map(|_| costs.choose(4)).collect();
        assert_eq!(ways.iter().filter(|&&w| w == Way::Each).count(), 15);
        assert_eq!(
            ways.iter().filter(|&&w| w == Way::Together).count(),
            1,
            "together measured again once"
        );
        // Lookups by equality slow down (the test server reads the whole catalog for each):
        // asked together, and equality measured again by a probe, never by a whole turn.
        for _ in 0..8 {
            costs.record(false, 1, ms(30));
        }
        let ways: Vec<Way> = (0..RETRY_EVERY).map(|_| costs.choose(8)).collect();
        assert_eq!(ways.iter().filter(|&&w| w == Way::Together).count(), 15);
        assert_eq!(ways.iter().filter(|&&w| w == Way::Probe).count(), 1);
        assert!(!ways.contains(&Way::Each));
    }

    #[tokio::test]
    async fn a_turn_after_a_lookup_together_rests_as_long_as_it_took() {
        let mut costs = Costs::default();
        for (way, rests) in [
            (Way::Together, true),
            (Way::Probe, true),
            (Way::Each, false),
        ] {
            costs.rest_after(way, Duration::from_millis(30));
            let started = Instant::now();
            costs.rest().await;
            let rested = started.elapsed();
            assert_eq!(
                rested >= Duration::from_millis(30),
                rests,
                "{way:?} rested {rested:?}"
            );
            // A rest is waited out once.
            let again = Instant::now();
            costs.rest().await;
            assert!(again.elapsed() < Duration::from_millis(30));
        }
        costs.rest_after(Way::Together, Duration::from_secs(3600));
        assert!(costs.rest_until.unwrap() <= Instant::now() + MOST_REST);
    }

    #[tokio::test]
    async fn a_failed_lookup_together_answers_nothing_and_does_not_rest() {
        // Nothing listens on port 1: the lookup fails once server selection gives up.
        let client = Client::with_uri_str(
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300&directConnection=true",
        )
        .await
        .unwrap();
        let mut costs = Costs::default();
        let mut answers = Vec::new();
        let asked: Vec<Asked> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let (answer, answered) = oneshot::channel();
                answers.push(answered);
                Asked {
                    name: name.to_string(),
                    uuid: vec![1],
                    answer,
                }
            })
            .collect();
        look_up(&client, "db", &mut costs, asked).await;
        for answered in answers {
            assert_eq!(
                answered.await.unwrap(),
                None,
                "a failed lookup answers nothing"
            );
        }
        assert!(
            costs.rest_until.is_none(),
            "a failed lookup's reads ask on their own at once; the turn rests for nothing"
        );
    }
}
