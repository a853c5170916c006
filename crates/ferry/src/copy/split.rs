//! Dynamic splitting: a running `_id` range shares its position and end with the copy pool, so
//! that a worker left idle takes over the back half of the largest unfinished range instead of
//! waiting for it. Ranges planned in advance are cut evenly by value; the data seldom is, and
//! the last ranges of a copy would otherwise run alone.
//!
//! A cut is safe at any moment: the pool records the new range and the old one's lower end
//! before it lowers the end the reader sees, so a crash between the two resumes both. The reader
//! never compares `_id`s itself (the client's order of embedded documents is not the server's):
//! seeing the end lowered, it hands on the batch it holds and reads on with the new end as the
//! server's bound. What it handed past the cut the new range copies again, and the destination
//! refuses as duplicates.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Mutex;

use mongodb::bson::{Bson, RawDocumentBuf};

use super::ranges::{self, Reach};
use crate::state::Partition;

/// Batches over which a range's density is measured: the recent ones, since `_id`s are seldom
/// spread evenly (a few old ones far below the rest, say).
const DENSITY_BATCHES: usize = 8;

/// Documents a range reads before its collection is looked at: enough to tell a collection
/// that may be worth cutting from the many small ones.
const LOOK_AFTER_DOCUMENTS: u64 = 2 * super::reader::BATCH as u64;

/// A range with fewer documents left than this is not worth another reader.
const MIN_SPLIT_DOCUMENTS: f64 = 8.0 * super::reader::BATCH as f64;

/// What a running range's reader shares with the pool.
pub struct Running {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Where this run's reading started (the range's last copied `_id`, or the first `_id`
    /// handed on: a range's start bound may lie far before its first document), and the last
    /// `_id` handed on since, with how many documents that was.
    start: Option<Bson>,
    position: Option<Bson>,
    handed: u64,
    /// The position's value and the documents handed on, after each of the last batches.
    marks: VecDeque<(f64, u64)>,
    /// The range's end (inclusive; `None`: the collection's end), which a cut lowers.
    hi: Option<Bson>,
    reach: Reach,
    ended: bool,
    /// How many times the end was lowered: the reader reads on with the new end when it changes.
    cuts: u64,
}

fn id_of(document: &RawDocumentBuf) -> Option<Bson> {
    Bson::try_from(document.get("_id").ok()??.to_raw_bson()).ok()
}

impl Running {
    /// A range about to be read, continuing after its last copied `_id`.
    pub fn new(range: &Partition, reach: Reach) -> Self {
        Self {
            inner: Mutex::new(Inner {
                start: range.last_id.clone(),
                position: None,
                handed: 0,
                marks: VecDeque::new(),
                hi: range.hi.clone(),
                reach,
                ended: false,
                cuts: 0,
            }),
        }
    }

    /// Records how far the collection reaches, once looked at.
    pub fn set_reach(&self, reach: Reach) {
        self.lock().reach = reach;
    }

    /// Whether the range has read enough, and goes on, for its collection to be looked at.
    pub fn worth_a_look(&self) -> bool {
        let inner = self.lock();
        !inner.ended && inner.handed >= LOOK_AFTER_DOCUMENTS
    }

    /// The range's end now.
    pub fn end(&self) -> Option<Bson> {
        self.lock().hi.clone()
    }

    /// How many times the end was lowered so far.
    pub fn cuts(&self) -> u64 {
        self.lock().cuts
    }

    /// Records a batch handed on: the position, and the density of the last batches.
    pub fn note(&self, batch: &[RawDocumentBuf]) {
        let mut inner = self.lock();
        if inner.start.is_none() {
            inner.start = batch.first().and_then(id_of);
        }
        inner.handed += batch.len() as u64;
        if let Some(last) = batch.last().and_then(id_of) {
            if let Some(value) = ranges::value_of(&last) {
                let handed = inner.handed;
                if inner.marks.len() >= DENSITY_BATCHES {
                    inner.marks.pop_front();
                }
                inner.marks.push_back((value, handed));
            }
            inner.position = Some(last);
        }
    }

    /// Records that the reader has read the whole range.
    pub fn finish(&self) {
        self.lock().ended = true;
    }

    /// About how many documents are left, from the density of those read so far: by value
    /// for numbers and ObjectIds, else by the sample's `_id`s on either side of the position.
    pub fn left(&self) -> Option<f64> {
        let inner = self.lock();
        if inner.ended {
            return None;
        }
        let position = inner.position.as_ref()?;
        let handed = inner.handed as f64;
        match &inner.reach {
            Reach::Unknown => None,
            Reach::Last(last) => {
                // The density of the last batches: from the oldest mark, or from the start.
                let at = ranges::value_of(position)?;
                let (from, before) = match inner.marks.front() {
                    Some(&(value, count)) if inner.marks.len() > 1 && value < at => {
                        (value, count as f64)
                    }
                    _ => (ranges::value_of(inner.start.as_ref()?)?, 0.0),
                };
                let end = ranges::value_of(inner.hi.as_ref().unwrap_or(last))?;
                (at > from && end > at).then(|| (handed - before) * (end - at) / (at - from))
            }
            Reach::Sample(ids) => {
                let ahead = inner.ahead(ids).len() as f64;
                let behind = ids
                    .iter()
                    .filter(|id| {
                        inner
                            .start
                            .as_ref()
                            .is_none_or(|s| ranges::compare_ids(id, s) != Ordering::Less)
                            && ranges::compare_ids(id, position) != Ordering::Greater
                    })
                    .count();
                Some(handed * ahead / behind.max(1) as f64)
            }
        }
    }

    /// Where to cut the range so that another reader takes the back half, when enough is left:
    /// halfway by value between the position and the end, or the middle of the sampled `_id`s
    /// ahead; always past the position and before the end.
    pub fn cut(&self) -> Option<Bson> {
        if self.left()? < MIN_SPLIT_DOCUMENTS {
            return None;
        }
        let inner = self.lock();
        let position = inner.position.as_ref()?;
        match &inner.reach {
            Reach::Unknown => None,
            Reach::Last(last) => {
                let end = inner.hi.as_ref().unwrap_or(last);
                let cut = ranges::midpoint(position, end)?;
                let (p, c, e) = (
                    ranges::value_of(position)?,
                    ranges::value_of(&cut)?,
                    ranges::value_of(end)?,
                );
                (p < c && c < e).then_some(cut)
            }
            Reach::Sample(ids) => {
                // The middle of at least two `_id`s ahead: the last of them stays past the cut.
                let ahead = inner.ahead(ids);
                (ahead.len() >= 2).then(|| ahead[(ahead.len() - 1) / 2].clone())
            }
        }
    }

    /// Lowers the range's end to `cut` (recorded by the caller first): the reader reads on
    /// up to there.
    pub fn lower_end(&self, cut: Bson) {
        let mut inner = self.lock();
        inner.hi = Some(cut);
        inner.cuts += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("running range lock")
    }
}

impl Inner {
    /// The sampled `_id`s past the position, up to the end.
    fn ahead<'s>(&self, ids: &'s [Bson]) -> Vec<&'s Bson> {
        let Some(position) = &self.position else {
            return Vec::new();
        };
        ids.iter()
            .filter(|id| {
                ranges::compare_ids(id, position) == Ordering::Greater
                    && self
                        .hi
                        .as_ref()
                        .is_none_or(|hi| ranges::compare_ids(id, hi) != Ordering::Greater)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::rawdoc;
    use std::sync::Arc;

    fn batch(ids: std::ops::Range<i64>) -> Vec<RawDocumentBuf> {
        ids.map(|id| rawdoc! { "_id": id }).collect()
    }

    #[test]
    fn a_cut_lowers_the_end_the_reader_reads_on_to_and_is_not_repeated_once_ended() {
        // The last range of a collection whose last `_id` is 100,000, read from the start.
        let running = Running::new(
            &Partition {
                lo: Some(Bson::Int64(0)),
                ..Default::default()
            },
            Reach::Last(Bson::Int64(100_000)),
        );
        assert_eq!(running.cut(), None, "nothing read yet: no density");
        running.note(&batch(1..10_001));
        let left = running.left().unwrap();
        assert!((left - 90_000.0).abs() < 100.0, "{left}");
        assert_eq!(
            running.lock().start,
            Some(Bson::Int64(1)),
            "from the first _id read"
        );
        let cut = running.cut().unwrap();
        assert_eq!(cut, Bson::Int64(55_000));
        assert_eq!(running.cuts(), 0);
        running.lower_end(cut.clone());
        assert_eq!((running.end(), running.cuts()), (Some(cut), 1));
        running.finish();
        assert_eq!(running.left(), None, "an ended range is not cut again");
    }

    #[test]
    fn small_or_unsplittable_ranges_are_left_alone() {
        let running = Running::new(&Partition::default(), Reach::Last(Bson::Int64(8_000)));
        running.note(&batch(0..1000));
        assert_eq!(running.cut(), None, "about 7,000 left, too few to share");
        let strings = Running::new(
            &Partition::default(),
            Reach::Last(Bson::String("zz".into())),
        );
        let named: Vec<RawDocumentBuf> = (0..10_000)
            .map(|i| rawdoc! { "_id": format!("k{i:05}") })
            .collect();
        strings.note(&named);
        assert_eq!(strings.left(), None, "strings have no value to cut by");
        assert_eq!(
            Running::new(&Partition::default(), Reach::Unknown).cut(),
            None,
            "not looked at yet"
        );
    }

    #[test]
    fn ids_without_a_value_are_cut_at_the_sample_ahead() {
        let key = |i: usize| Bson::String(format!("k{i:06}"));
        // Every hundredth of 100,000 keys sampled.
        let sample: Vec<Bson> = (0..1000).map(|i| key(i * 100)).collect();
        let running = Running::new(&Partition::default(), Reach::Unknown);
        let first: Vec<RawDocumentBuf> = (0..10_000)
            .map(|i| rawdoc! { "_id": format!("k{i:06}") })
            .collect();
        running.note(&first);
        assert_eq!(running.cut(), None, "not looked at yet");
        assert!(running.worth_a_look());
        running.set_reach(Reach::Sample(Arc::new(sample)));
        let left = running.left().unwrap();
        assert!((left - 90_000.0).abs() < 1_000.0, "{left}");
        assert_eq!(
            running.cut(),
            Some(key(54_900)),
            "the middle of the 900 keys ahead"
        );
        running.lower_end(key(54_900));
        assert_eq!(
            running.cut(),
            Some(key(32_400)),
            "then the middle of what is left"
        );
    }

    #[test]
    fn the_density_is_that_of_the_last_batches() {
        // Five old `_id`s far below the rest, then the dense ones: 40,000 up to 1,040,000.
        let running = Running::new(&Partition::default(), Reach::Last(Bson::Int64(1_039_999)));
        running.note(&batch(0..5));
        for chunk in 0..10 {
            let from = 1_000_000 + chunk * 1000;
            running.note(&batch(from..from + 1000));
        }
        let left = running.left().unwrap();
        assert!((left - 30_000.0).abs() < 500.0, "{left}");
        assert_eq!(running.cut(), Some(Bson::Int64(1_024_999)));
    }
}
