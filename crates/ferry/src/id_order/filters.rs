//! Filters that select an `_id` range as MongoDB orders `_id`s: `$gt`/`$lte` compare within one
//! type bracket only, so the other brackets are added by `$type`; and NaN, which sorts before
//! every other number but which no range operator matches, is added by equality.

use mongodb::bson::{doc, Bson, Document, RawBsonRef};

use super::{bracket, codes, number, BRACKETS};

/// The documents whose `_id` sorts after `last`.
pub fn after(last: &Bson) -> Document {
    let later = codes(&BRACKETS[bracket(last.element_type()) + 1..]);
    let within = greater_than(last);
    if later.is_empty() {
        return within;
    }
    doc! { "$or": [ within, { "_id": { "$type": later } } ] }
}

/// The documents whose `_id` sorts at or before `last`.
pub fn up_to(last: &Bson) -> Document {
    let earlier = codes(&BRACKETS[..bracket(last.element_type())]);
    let mut alternatives = vec![doc! { "_id": { "$lte": last.clone() } }];
    if is_number(last) && !is_nan(last) {
        // NaN sorts before every other number, but `$lte` never matches it: by equality.
        alternatives.push(doc! { "_id": f64::NAN });
    }
    if !earlier.is_empty() {
        alternatives.push(doc! { "_id": { "$type": earlier } });
    }
    match alternatives.len() {
        1 => alternatives.remove(0),
        _ => doc! { "$or": alternatives },
    }
}

/// The documents whose `_id` sorts after `lo` and at or before `hi`. When both bounds are of one
/// type bracket no other type can sort between them, so the range is a plain `$gt`/`$lte` that
/// an index scan serves directly.
pub fn between(lo: &Bson, hi: &Bson) -> Document {
    if bracket(lo.element_type()) == bracket(hi.element_type()) {
        let mut range = greater_than(lo);
        if let Ok(bounds) = range.get_document_mut("_id") {
            bounds.insert("$lte", hi.clone());
        }
        return range;
    }
    doc! { "$and": [after(lo), up_to(hi)] }
}

/// The documents of `value`'s bracket whose `_id` sorts after it. After NaN come every other
/// number, which `$gt: NaN` never matches: they are those from minus infinity on.
fn greater_than(value: &Bson) -> Document {
    if is_nan(value) {
        return doc! { "_id": { "$gte": f64::NEG_INFINITY } };
    }
    doc! { "_id": { "$gt": value.clone() } }
}

fn is_number(value: &Bson) -> bool {
    matches!(
        value,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
    )
}

/// A NaN (double or decimal) `_id`: the server sorts it before every other number, yet its range
/// operators match it only against NaN (`$lte: 5` does not match it).
fn is_nan(value: &Bson) -> bool {
    match value {
        Bson::Double(n) => n.is_nan(),
        Bson::Decimal128(d) => number(RawBsonRef::Decimal128(*d)).is_some_and(f64::is_nan),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Code sorts before code with scope: a range after one takes the other by its type.
        assert_eq!(
            after(&Bson::JavaScriptCode("f".into())),
            doc! { "$or": [
                { "_id": { "$gt": Bson::JavaScriptCode("f".into()) } },
                { "_id": { "$type": [15, 127] } },
            ] }
        );
    }

    #[test]
    fn a_nan_id_is_taken_by_equality_before_numbers_and_numbers_from_minus_infinity_after_it() {
        // NaN != NaN, so the filters are compared as text.
        let text = |d: Document| format!("{d}");
        assert_eq!(
            text(up_to(&Bson::Int32(5))),
            text(doc! { "$or": [
                { "_id": { "$lte": 5 } },
                { "_id": f64::NAN },
                { "_id": { "$type": [-1, 6, 10] } },
            ] })
        );
        let nan = Bson::Double(f64::NAN);
        assert_eq!(
            text(between(&nan, &Bson::Int64(9))),
            text(doc! { "_id": { "$gte": f64::NEG_INFINITY, "$lte": 9_i64 } })
        );
        assert_eq!(
            text(between(&Bson::Int32(1), &Bson::Int64(9))),
            text(doc! { "_id": { "$gt": 1, "$lte": 9_i64 } }),
            "NaN sorts before 1: not in the range"
        );
        let after_nan = text(after(&nan));
        assert!(
            after_nan.starts_with(r#"{ "$or": [{ "_id": { "$gte": -inf } }"#),
            "{after_nan}"
        );
        assert_eq!(
            text(up_to(&nan)),
            text(
                doc! { "$or": [ { "_id": { "$lte": f64::NAN } }, { "_id": { "$type": [-1, 6, 10] } } ] }
            )
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
}
