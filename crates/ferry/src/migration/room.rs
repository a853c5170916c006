//! Which of the copy pool's ranges may start: at most four large ones at a time (their
//! inserts are what the destination's write limit paces, and each holds a few batches), and
//! 96 in all when the others are ranges of small collections, whose time goes to round trips
//! and to waiting for their name checks. Ranges wait apart by kind, so that a small
//! collection's range starts while four large ones run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::copy::ranges::Size;
use crate::copy::{reader, write_limit};

/// `_id` ranges copied at the same time; how many of their inserts are in flight at once is
/// adapted to the destination (`write_limit`). More ranges than that only add source reads.
pub(super) const COPY_CONCURRENCY: usize = write_limit::MAX;
/// Ranges copied at the same time when the others are of small collections (`is_small`):
/// their time goes to round trips, not to reading or writing, and their name checks share
/// lookups (`copy::name_checks`), which answer more names the more reads wait. Copying 20,000
/// collections of 20 documents to canCommit took 206.1 s 12 at a time and 87.3 s 96 at a time
/// (`cargo xtask bench`, one run).
const SMALL_CONCURRENCY: usize = 96;
/// The most data a small collection holds. Each small range holds its first batch (the whole
/// collection) while its name is checked, so at most `SMALL_CONCURRENCY` times this: 24 MB.
const SMALL_BYTES: u64 = 256 * 1024;

/// Whether a collection is small: one read batch holds it (`copy::reader::BATCH`), and so
/// little data that `SMALL_CONCURRENCY` of them held at once stay within a few tens of
/// megabytes, by its server's metadata. A size the server could not give is not a small one.
pub(super) fn is_small(size: Option<Size>) -> bool {
    size.is_some_and(|s| {
        s.documents <= u64::from(reader::BATCH) && s.bytes.is_some_and(|b| b <= SMALL_BYTES)
    })
}

/// Whether another range may start beside the `running` ones, `large` of them large.
pub(super) fn has_room(large: &AtomicUsize, running: usize) -> bool {
    large.load(Ordering::SeqCst) < COPY_CONCURRENCY && running < SMALL_CONCURRENCY
}

/// A running range's place among the large ones, counted while it is held.
pub(super) struct Large<'p>(&'p AtomicUsize);

impl<'p> Large<'p> {
    pub fn take(count: &'p AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Large(count)
    }
}

impl Drop for Large<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ranges received and not started yet, apart by kind, so that a small collection's range
/// starts while four large ones run.
pub(super) struct Waiting<J> {
    small: VecDeque<J>,
    large: VecDeque<J>,
}

impl<J> Waiting<J> {
    pub fn new() -> Self {
        Waiting {
            small: VecDeque::new(),
            large: VecDeque::new(),
        }
    }

    pub fn add(&mut self, job: J, small: bool) {
        if small {
            self.small.push_back(job);
        } else {
            self.large.push_back(job);
        }
    }

    /// The next range that has room beside the `running` ones: a large one first (a large
    /// collection's copy is the long one), with its place among the large ones.
    pub fn next<'p>(
        &mut self,
        large: &'p AtomicUsize,
        running: usize,
    ) -> Option<(J, Option<Large<'p>>)> {
        if has_room(large, running) {
            if let Some(job) = self.large.pop_front() {
                return Some((job, Some(Large::take(large))));
            }
        }
        if running >= SMALL_CONCURRENCY {
            return None;
        }
        self.small.pop_front().map(|job| (job, None))
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
        assert!(is_small(size(20, 2_440)));
        assert!(is_small(size(1_000, SMALL_BYTES)));
        assert!(!is_small(size(1_001, 1_000)), "more than one read batch");
        assert!(
            !is_small(size(20, 20 * 1024 * 1024)),
            "twenty 1 MB documents are not small"
        );
        let counted_only = Some(Size {
            documents: 20,
            bytes: None,
        });
        assert!(!is_small(counted_only), "a size the server did not give");
        assert!(!is_small(None));
    }

    #[test]
    fn four_large_ranges_run_at_most_and_small_ones_start_beside_them() {
        let large = AtomicUsize::new(0);
        let mut waiting = Waiting::new();
        for n in 0..10 {
            waiting.add(("large", n), false);
        }
        for n in 0..SMALL_CONCURRENCY {
            waiting.add(("small", n), true);
        }
        let mut started = Vec::new();
        while let Some(next) = waiting.next(&large, started.len()) {
            started.push(next);
        }
        let kinds = |kind| started.iter().filter(|((k, _), _)| *k == kind).count();
        assert_eq!((kinds("large"), kinds("small")), (4, SMALL_CONCURRENCY - 4));
        assert_eq!(large.load(Ordering::SeqCst), 4);
        // A large range that ends gives its place to the next large one.
        let ended = started
            .iter()
            .position(|((k, _), _)| *k == "large")
            .unwrap();
        started.remove(ended);
        assert_eq!(large.load(Ordering::SeqCst), 3);
        let ((kind, _), place) = waiting.next(&large, started.len()).expect("room for one");
        assert_eq!((kind, place.is_some()), ("large", true));
        assert_eq!(large.load(Ordering::SeqCst), 4);
        assert!(!has_room(&large, started.len() + 1));
    }
}
