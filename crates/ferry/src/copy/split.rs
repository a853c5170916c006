//! Dynamic splitting: a running `_id` range shares its position and end with the copy pool, so
//! that a worker left idle takes over the back half of the largest unfinished range instead of
//! waiting for it. Ranges planned in advance are cut evenly by value; the data seldom is, and
//! the last ranges of a copy would otherwise run alone.
//!
//! A cut is safe at any moment: the pool records the new range and the old one's lower end
//! before it lowers the end the reader sees, so a crash between the two resumes both; a reader
//! that passed the cut meanwhile only hands on documents the new range copies again, which the
//! destination refuses as duplicates.

use std::cmp::Ordering;
use std::sync::Mutex;

use mongodb::bson::{Bson, RawBson, RawDocumentBuf};

use super::ranges;
use crate::id_order;
use crate::state::Partition;

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
    /// The range's end (inclusive; `None`: the collection's end), which a cut lowers.
    hi: Option<Bson>,
    /// The collection's last `_id` when planned: how far an open-ended range reaches.
    last: Option<Bson>,
    ended: bool,
}

fn raw(id: &Bson) -> Option<RawBson> {
    RawBson::try_from(id.clone()).ok()
}

fn id_of(document: &RawDocumentBuf) -> Option<Bson> {
    Bson::try_from(document.get("_id").ok()??.to_raw_bson()).ok()
}

impl Running {
    /// A range about to be read, continuing after its last copied `_id`; `last` is the
    /// collection's last `_id` when planned.
    pub fn new(range: &Partition, last: Option<Bson>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                start: range.last_id.clone(),
                position: None,
                handed: 0,
                hi: range.hi.clone(),
                last,
                ended: false,
            }),
        }
    }

    /// The range's end now.
    pub fn end(&self) -> Option<Bson> {
        self.lock().hi.clone()
    }

    /// Takes a batch about to be handed on: drops the documents past the range's end and
    /// records the position. True when the range ends within the batch (stop reading).
    pub fn admit(&self, batch: &mut Vec<RawDocumentBuf>) -> bool {
        let mut inner = self.lock();
        let mut ended = false;
        if let Some(hi) = inner.hi.as_ref().and_then(raw) {
            let past = batch.iter().position(|d| {
                d.get("_id").ok().flatten().is_some_and(|id| {
                    id_order::compare(id, hi.as_raw_bson_ref()) == Ordering::Greater
                })
            });
            if let Some(past) = past {
                batch.truncate(past);
                ended = true;
            }
        }
        if inner.start.is_none() {
            inner.start = batch.first().and_then(id_of);
        }
        if let Some(last) = batch.last().and_then(id_of) {
            inner.position = Some(last);
        }
        inner.handed += batch.len() as u64;
        inner.ended |= ended;
        ended
    }

    /// Records that the reader has read the whole range.
    pub fn finish(&self) {
        self.lock().ended = true;
    }

    /// About how many documents are left, from the density of those read so far, when the
    /// range's `_id`s are numbers or ObjectIds.
    pub fn left(&self) -> Option<f64> {
        let inner = self.lock();
        if inner.ended {
            return None;
        }
        let start = ranges::value_of(inner.start.as_ref()?)?;
        let position = ranges::value_of(inner.position.as_ref()?)?;
        let end = ranges::value_of(inner.hi.as_ref().or(inner.last.as_ref())?)?;
        (position > start && end > position)
            .then(|| inner.handed as f64 * (end - position) / (position - start))
    }

    /// Where to cut the range so that another reader takes the back half: a value strictly
    /// between the position and the end, when enough is left.
    pub fn cut(&self) -> Option<Bson> {
        if self.left()? < MIN_SPLIT_DOCUMENTS {
            return None;
        }
        let inner = self.lock();
        let position = inner.position.as_ref()?;
        let end = inner.hi.as_ref().or(inner.last.as_ref())?;
        let cut = ranges::midpoint(position, end)?;
        let (p, c, e) = (
            ranges::value_of(position)?,
            ranges::value_of(&cut)?,
            ranges::value_of(end)?,
        );
        (p < c && c < e).then_some(cut)
    }

    /// Lowers the range's end to `cut` (recorded by the caller first): the reader stops there.
    pub fn lower_end(&self, cut: Bson) {
        self.lock().hi = Some(cut);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("running range lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::rawdoc;

    fn batch(ids: std::ops::Range<i64>) -> Vec<RawDocumentBuf> {
        ids.map(|id| rawdoc! { "_id": id }).collect()
    }

    #[test]
    fn a_cut_range_stops_at_its_new_end_and_the_back_half_is_shared() {
        // The last range of a collection whose last `_id` is 100,000, read from the start.
        let running = Running::new(
            &Partition {
                lo: Some(Bson::Int64(0)),
                ..Default::default()
            },
            Some(Bson::Int64(100_000)),
        );
        assert_eq!(running.cut(), None, "nothing read yet: no density");
        let mut first = batch(1..10_001);
        assert!(!running.admit(&mut first));
        let left = running.left().unwrap();
        assert!((left - 90_000.0).abs() < 100.0, "{left}");
        assert_eq!(
            running.lock().start,
            Some(Bson::Int64(1)),
            "from the first _id read"
        );
        let cut = running.cut().unwrap();
        assert_eq!(cut, Bson::Int64(55_000));
        running.lower_end(cut.clone());
        assert_eq!(running.end(), Some(cut));
        // The reader had read past the cut: what lies beyond it is dropped, and the range ends.
        let mut crossing = batch(54_990..56_000);
        assert!(running.admit(&mut crossing));
        assert_eq!(crossing.len(), 11);
        assert_eq!(running.left(), None, "an ended range is not cut again");
    }

    #[test]
    fn small_or_unsplittable_ranges_are_left_alone() {
        let running = Running::new(&Partition::default(), Some(Bson::Int64(8_000)));
        running.admit(&mut batch(0..1000));
        assert_eq!(running.cut(), None, "about 7,000 left, too few to share");
        let strings = Running::new(&Partition::default(), Some(Bson::String("zz".into())));
        let mut named: Vec<RawDocumentBuf> = (0..10_000)
            .map(|i| rawdoc! { "_id": format!("k{i:05}") })
            .collect();
        strings.admit(&mut named);
        assert_eq!(strings.left(), None, "strings have no value to cut by");
        assert_eq!(
            Running::new(&Partition::default(), None).cut(),
            None,
            "no end known"
        );
    }
}
