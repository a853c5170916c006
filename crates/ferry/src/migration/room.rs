//! Which of the copy pool's ranges may start: at most four large ones at a time (their
//! inserts are what the destination's write limit paces, and each holds a few batches), and
//! 384 in all when the others are ranges of small collections, whose time goes to round trips
//! and to waiting for their name checks, as long as the small ones hold 24 MB at most between
//! them. Ranges wait apart by kind, so that a small collection's range starts while four large
//! ones run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::copy::ranges::Size;
use crate::copy::{reader, write_limit};

/// `_id` ranges copied at the same time; how many of their inserts are in flight at once is
/// adapted to the destination (`write_limit`). More ranges than that only add source reads.
pub(super) const COPY_CONCURRENCY: usize = write_limit::MAX;
/// Ranges copied at the same time when the others are of small collections (`small_bytes`):
/// their time goes to round trips, not to reading or writing, and their name checks share
/// lookups (`copy::name_checks`), which answer more names the more reads wait. Copying 20,000
/// collections of 20 documents to canCommit took 206.1 s 12 at a time and 87.3 s 96 at a time
/// (`cargo xtask bench`, one run). Beside 32 plans at once and the name checks' spaced
/// lookups, 192 and 384 at a time took the same (29.7 s and 28.7 s, against 28.7 s twice), the
/// source spending less on lookups with more reads waiting (21.3 s and 21.0 s of CPU, against
/// 19.5 s and 19.2 s; alternating runs on one machine).
const SMALL_CONCURRENCY: usize = 384;
/// The most data a small collection holds.
const SMALL_BYTES: u64 = 256 * 1024;
/// The most data the running small ranges hold together, by their server's metadata: each
/// holds its first batch (the whole collection) while its name is checked.
const SMALL_BUDGET: u64 = 24 * 1024 * 1024;

/// What a collection holds when it is small, by its server's metadata: one read batch holds
/// it (`copy::reader::BATCH`), and so little data that many of them held at once stay within
/// `SMALL_BUDGET`. A size the server could not give is not a small one.
pub(super) fn small_bytes(size: Option<Size>) -> Option<u64> {
    let size = size?;
    let bytes = size.bytes?;
    (size.documents <= u64::from(reader::BATCH) && bytes <= SMALL_BYTES).then_some(bytes)
}

/// Whether another range may start beside the `running` ones, `large` of them large.
pub(super) fn has_room(large: &AtomicU64, running: usize) -> bool {
    large.load(Ordering::SeqCst) < COPY_CONCURRENCY as u64 && running < SMALL_CONCURRENCY
}

/// A running range's share of what the ranges of its kind may hold at once (one place among
/// the large ones, or its data among the small ones'), given back when it ends.
pub(super) struct Held<'p> {
    counter: &'p AtomicU64,
    amount: u64,
}

impl<'p> Held<'p> {
    pub fn take(counter: &'p AtomicU64, amount: u64) -> Self {
        counter.fetch_add(amount, Ordering::SeqCst);
        Held { counter, amount }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.amount, Ordering::SeqCst);
    }
}

/// Ranges received and not started yet, apart by kind, so that a small collection's range
/// starts while four large ones run.
pub(super) struct Waiting<J> {
    /// With what each holds.
    small: VecDeque<(J, u64)>,
    large: VecDeque<J>,
}

impl<J> Waiting<J> {
    pub fn new() -> Self {
        Waiting {
            small: VecDeque::new(),
            large: VecDeque::new(),
        }
    }

    /// Queues `job`, of a small collection holding `small` bytes, or of a large one.
    pub fn add(&mut self, job: J, small: Option<u64>) {
        match small {
            Some(bytes) => self.small.push_back((job, bytes)),
            None => self.large.push_back(job),
        }
    }

    /// The next range that has room beside the `running` ones: a large one first (a large
    /// collection's copy is the long one), with its place among the `large` ones, or a small
    /// one with its data among what the small ones hold (`small`); a small range larger than
    /// the budget starts when the running ones hold nothing.
    pub fn next<'p>(
        &mut self,
        (large, small): (&'p AtomicU64, &'p AtomicU64),
        running: usize,
    ) -> Option<(J, Held<'p>)> {
        if has_room(large, running) {
            if let Some(job) = self.large.pop_front() {
                return Some((job, Held::take(large, 1)));
            }
        }
        let &(_, bytes) = self.small.front()?;
        let held = small.load(Ordering::SeqCst);
        if running >= SMALL_CONCURRENCY || (held > 0 && held + bytes > SMALL_BUDGET) {
            return None;
        }
        let (job, bytes) = self.small.pop_front()?;
        Some((job, Held::take(small, bytes)))
    }

    pub fn is_empty(&self) -> bool {
        self.small.is_empty() && self.large.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_collection_is_one_batch_of_little_data_by_its_servers_metadata() {
        let size = |documents, bytes| {
            Some(Size {
                documents,
                bytes: Some(bytes),
            })
        };
        assert_eq!(small_bytes(size(20, 2_440)), Some(2_440));
        assert_eq!(small_bytes(size(1_000, SMALL_BYTES)), Some(SMALL_BYTES));
        assert_eq!(
            small_bytes(size(1_001, 1_000)),
            None,
            "more than one read batch"
        );
        assert_eq!(
            small_bytes(size(20, 20 * 1024 * 1024)),
            None,
            "twenty 1 MB documents are not small"
        );
        let counted_only = Some(Size {
            documents: 20,
            bytes: None,
        });
        assert_eq!(
            small_bytes(counted_only),
            None,
            "a size the server did not give"
        );
        assert_eq!(small_bytes(None), None);
    }

    #[test]
    fn four_large_ranges_run_at_most_and_small_ones_start_beside_them() {
        let (large, small) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut waiting = Waiting::new();
        for n in 0..10 {
            waiting.add(("large", n), None);
        }
        for n in 0..SMALL_CONCURRENCY {
            waiting.add(("small", n), Some(1_000));
        }
        let mut started = Vec::new();
        while let Some(next) = waiting.next((&large, &small), started.len()) {
            started.push(next);
        }
        let kinds = |kind| started.iter().filter(|((k, _), _)| *k == kind).count();
        assert_eq!((kinds("large"), kinds("small")), (4, SMALL_CONCURRENCY - 4));
        assert_eq!(large.load(Ordering::SeqCst), 4);
        assert_eq!(
            small.load(Ordering::SeqCst),
            1_000 * (SMALL_CONCURRENCY as u64 - 4)
        );
        // A large range that ends gives its place to the next large one.
        let ended = started
            .iter()
            .position(|((k, _), _)| *k == "large")
            .unwrap();
        started.remove(ended);
        assert_eq!(large.load(Ordering::SeqCst), 3);
        let ((kind, _), _place) = waiting
            .next((&large, &small), started.len())
            .expect("room for one");
        assert_eq!(kind, "large");
        assert_eq!(large.load(Ordering::SeqCst), 4);
        assert!(!has_room(&large, started.len() + 1));
    }

    #[test]
    fn the_small_ranges_running_hold_the_budget_at_most() {
        let (large, small) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut waiting = Waiting::new();
        for n in 0..200 {
            waiting.add(n, Some(SMALL_BYTES));
        }
        let mut started = Vec::new();
        while let Some(next) = waiting.next((&large, &small), started.len()) {
            started.push(next);
        }
        assert_eq!(started.len() as u64, SMALL_BUDGET / SMALL_BYTES);
        assert_eq!(small.load(Ordering::SeqCst), SMALL_BUDGET);
        // One that ends makes room for the next.
        started.pop();
        assert!(waiting.next((&large, &small), started.len()).is_some());
        // Whatever it holds, a small range starts when the running ones hold nothing.
        let mut huge = Waiting::new();
        huge.add(0, Some(2 * SMALL_BUDGET));
        assert!(huge.next((&large, &AtomicU64::new(0)), 0).is_some());
    }
}
