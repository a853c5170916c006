//! MongoDB's order of `_id` values across BSON types, for merging two `_id`-sorted streams and
//! for filters that select an `_id` range: `$gt`/`$lte` only compare within one type bracket, so
//! the other brackets are added by `$type`.

use std::cmp::Ordering;

use mongodb::bson::spec::ElementType;
use mongodb::bson::{doc, Bson, Document, RawBsonRef};

/// BSON type codes grouped by comparison bracket, in sort order: MinKey, null, numbers,
/// strings, objects, arrays, binary, ObjectId, booleans, dates, timestamps, regular
/// expressions and the rest, MaxKey.
const BRACKETS: [&[i32]; 14] = [
    &[-1],
    &[6, 10],
    &[1, 16, 18, 19],
    &[2, 14],
    &[3],
    &[4],
    &[5],
    &[7],
    &[8],
    &[9],
    &[17],
    &[11],
    &[12, 13, 15],
    &[127],
];

fn type_code(kind: ElementType) -> i32 {
    match kind {
        ElementType::MinKey => -1,
        other => other as i32,
    }
}

fn bracket(kind: ElementType) -> usize {
    let code = type_code(kind);
    BRACKETS
        .iter()
        .position(|b| b.contains(&code))
        .unwrap_or(BRACKETS.len() - 1)
}

fn codes(brackets: &[&[i32]]) -> Vec<i32> {
    brackets.iter().flat_map(|b| b.iter().copied()).collect()
}

/// The documents whose `_id` sorts after `last`.
pub fn after(last: &Bson) -> Document {
    let later = codes(&BRACKETS[bracket(last.element_type()) + 1..]);
    if later.is_empty() {
        return doc! { "_id": { "$gt": last.clone() } };
    }
    doc! { "$or": [ { "_id": { "$gt": last.clone() } }, { "_id": { "$type": later } } ] }
}

/// The documents whose `_id` sorts at or before `last`.
pub fn up_to(last: &Bson) -> Document {
    let earlier = codes(&BRACKETS[..bracket(last.element_type())]);
    if earlier.is_empty() {
        return doc! { "_id": { "$lte": last.clone() } };
    }
    doc! { "$or": [ { "_id": { "$lte": last.clone() } }, { "_id": { "$type": earlier } } ] }
}

/// The documents whose `_id` sorts after `lo` and at or before `hi`. When both bounds are of one
/// type bracket no other type can sort between them, so the range is a plain `$gt`/`$lte` that
/// an index scan serves directly.
pub fn between(lo: &Bson, hi: &Bson) -> Document {
    if bracket(lo.element_type()) == bracket(hi.element_type()) {
        return doc! { "_id": { "$gt": lo.clone(), "$lte": hi.clone() } };
    }
    doc! { "$and": [after(lo), up_to(hi)] }
}

/// Compares two `_id` values as MongoDB sorts them with the simple collation.
pub fn compare(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> Ordering {
    let by_bracket = bracket(a.element_type()).cmp(&bracket(b.element_type()));
    if by_bracket != Ordering::Equal {
        return by_bracket;
    }
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    }
    match (a, b) {
        (RawBsonRef::String(x), RawBsonRef::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (RawBsonRef::ObjectId(x), RawBsonRef::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (RawBsonRef::Boolean(x), RawBsonRef::Boolean(y)) => x.cmp(&y),
        (RawBsonRef::DateTime(x), RawBsonRef::DateTime(y)) => x.cmp(&y),
        (RawBsonRef::Timestamp(x), RawBsonRef::Timestamp(y)) => x.cmp(&y),
        (RawBsonRef::Binary(x), RawBsonRef::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(y.bytes)),
        (RawBsonRef::Document(x), RawBsonRef::Document(y)) => x.as_bytes().cmp(y.as_bytes()),
        _ => Ordering::Equal,
    }
}

fn number(value: RawBsonRef<'_>) -> Option<f64> {
    match value {
        RawBsonRef::Int32(n) => Some(f64::from(n)),
        RawBsonRef::Int64(n) => Some(n as f64),
        RawBsonRef::Double(n) => Some(n),
        RawBsonRef::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[test]
    fn ranges_take_the_other_type_brackets_too() {
        assert_eq!(
            after(&Bson::Int32(5)),
            doc! { "$or": [
                { "_id": { "$gt": 5 } },
                { "_id": { "$type": [2, 14, 3, 4, 5, 7, 8, 9, 17, 11, 12, 13, 15, 127] } },
            ] }
        );
        assert_eq!(
            up_to(&Bson::String("m".into())),
            doc! { "$or": [ { "_id": { "$lte": "m" } }, { "_id": { "$type": [-1, 6, 10, 1, 16, 18, 19] } } ] }
        );
    }

    #[test]
    fn a_range_within_one_type_is_a_plain_index_range() {
        assert_eq!(
            between(&Bson::Int32(5), &Bson::Int64(9)),
            doc! { "_id": { "$gt": 5, "$lte": 9_i64 } }
        );
        assert_eq!(
            between(&Bson::Int32(5), &Bson::String("a".into())),
            doc! { "$and": [after(&Bson::Int32(5)), up_to(&Bson::String("a".into()))] }
        );
    }

    #[test]
    fn ids_compare_across_types_as_mongodb_sorts_them() {
        let oid = ObjectId::new();
        assert_eq!(
            compare(RawBsonRef::Int32(2), RawBsonRef::Double(1.5)),
            Ordering::Greater
        );
        assert_eq!(
            compare(RawBsonRef::Int64(7), RawBsonRef::Int32(7)),
            Ordering::Equal
        );
        assert_eq!(
            compare(RawBsonRef::Int32(100), RawBsonRef::String("a")),
            Ordering::Less
        );
        assert_eq!(
            compare(RawBsonRef::String("b"), RawBsonRef::String("a")),
            Ordering::Greater
        );
        assert_eq!(
            compare(RawBsonRef::ObjectId(oid), RawBsonRef::String("z")),
            Ordering::Greater
        );
        assert_eq!(
            compare(RawBsonRef::Null, RawBsonRef::Int32(0)),
            Ordering::Less
        );
    }
}
