//! How many insert commands the copy keeps in flight, adapted to what the destination sustains.
//!
//! Each acknowledged batch reports its latency per byte. The fastest seen is the destination's
//! unloaded speed; the smoothed current one, against it, tells how many commands are queueing
//! in the destination instead of being served (as TCP Vegas reads a network's queue). Too few
//! queued and one more writer is let in; too many, which is the destination slowing down, and
//! one is taken away, or a quarter of them when latency has more than tripled.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Commands in flight at the start, and the most ever allowed.
pub const INITIAL: usize = 2;
pub const MAX: usize = 4;
/// The limit changes at most this often, so that each change is seen in the latencies first.
const SETTLE: Duration = Duration::from_millis(500);
/// Queued commands below which the limit grows, and above which it shrinks.
const GROW_BELOW: f64 = 1.0;
const SHRINK_ABOVE: f64 = 3.0;
/// Weight of the newest latency in the smoothed one.
const SMOOTHING: f64 = 0.3;

pub struct WriteLimit {
    permits: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    limit: usize,
    /// Permits still to take out of circulation after a decrease.
    to_retire: usize,
    fastest: Option<f64>,
    smoothed: Option<f64>,
    changed: Instant,
}

impl WriteLimit {
    pub fn new() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(INITIAL)),
            state: Mutex::new(State {
                limit: INITIAL,
                to_retire: 0,
                fastest: None,
                smoothed: None,
                changed: Instant::now(),
            }),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.state.lock().expect("write limit lock").limit
    }

    /// Waits for a turn to send one insert command.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Returns a turn, with how long its command took for how many bytes.
    pub fn release(&self, permit: OwnedSemaphorePermit, latency: Duration, bytes: u64) {
        let mut state = self.state.lock().expect("write limit lock");
        if state.to_retire > 0 {
            state.to_retire -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
        if bytes == 0 {
            return;
        }
        let per_byte = latency.as_secs_f64() / bytes as f64;
        let fastest = state.fastest.map_or(per_byte, |f| f.min(per_byte));
        let smoothed = state
            .smoothed
            .map_or(per_byte, |s| s + SMOOTHING * (per_byte - s));
        state.fastest = Some(fastest);
        state.smoothed = Some(smoothed);
        if state.changed.elapsed() < SETTLE {
            return;
        }
        let target = next_limit(state.limit, fastest, smoothed);
        if target > state.limit {
            self.permits.add_permits(target - state.limit);
        } else if target < state.limit {
            state.to_retire += state.limit - target;
        }
        if target != state.limit {
            tracing::debug!(from = state.limit, to = target, "copy write concurrency");
            state.limit = target;
            state.changed = Instant::now();
        }
    }
}

impl Default for WriteLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// The next limit, from the fastest and the smoothed current latency per byte.
fn next_limit(limit: usize, fastest: f64, current: f64) -> usize {
    if current > 3.0 * fastest {
        return (limit - limit / 4).max(1);
    }
    let queued = limit as f64 * (1.0 - fastest / current);
    if queued < GROW_BELOW {
        (limit + 1).min(MAX)
    } else if queued > SHRINK_ABOVE {
        (limit - 1).max(1)
    } else {
        limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the rule against a destination that serves `capacity` commands at once at one unit
    /// of latency each; more commands than that queue and wait.
    fn settle(capacity: usize, rounds: usize) -> Vec<usize> {
        let mut limit = INITIAL;
        let mut seen = Vec::new();
        for _ in 0..rounds {
            let latency = (limit as f64 / capacity as f64).max(1.0);
            limit = next_limit(limit, 1.0, latency);
            seen.push(limit);
        }
        seen
    }

    #[test]
    fn grows_while_the_destination_keeps_up() {
        assert_eq!(*settle(16, 20).last().unwrap(), MAX);
    }

    #[test]
    fn settles_near_what_the_destination_serves_at_once() {
        let seen = settle(3, 40);
        let last = *seen.last().unwrap();
        assert!((3..=6).contains(&last), "{seen:?}");
        assert!(seen.iter().rev().take(10).all(|&l| l == last), "{seen:?}");
    }

    #[test]
    fn backs_off_when_the_destination_slows_down() {
        assert_eq!(next_limit(8, 1.0, 4.0), 6);
        assert_eq!(next_limit(8, 1.0, 2.5), 7);
        assert_eq!(next_limit(1, 1.0, 10.0), 1);
    }
}
