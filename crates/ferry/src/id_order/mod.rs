//! MongoDB's order of `_id` values across BSON types, for merging two `_id`-sorted streams, and
//! the filters that select an `_id` range in it (`filters`). And its equality, for routing by
//! `_id` (DESIGN rule 10): values the server compares as equal are one document, whatever their
//! bytes.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use mongodb::bson::spec::ElementType;
use mongodb::bson::{Bson, RawBsonRef};

mod filters;
pub use filters::{after, between, up_to};

/// BSON type codes grouped by comparison bracket (the server's canonical types), in sort order:
/// MinKey, undefined, null, numbers, strings, objects, arrays, binary, ObjectId, booleans,
/// dates, timestamps, regular expressions, DBPointers, code, code with scope, MaxKey. A range
/// query compares within one bracket only, so [`after`] and [`up_to`] must not merge any two.
const BRACKETS: [&[i32]; 17] = [
    &[-1],
    &[6],
    &[10],
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
    &[12],
    &[13],
    &[15],
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

/// Compares two values as MongoDB sorts them with the simple collation: by type bracket, then
/// by value. Numbers compare exactly across types (a 64-bit integer past a double's precision is
/// not equal to its nearest double; NaN sorts first); documents and arrays field by field (each
/// field's bracket, then its name, then its value, the shorter first), never by their bytes,
/// which begin with their length.
pub fn compare(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> Ordering {
    let by_bracket = bracket(a.element_type()).cmp(&bracket(b.element_type()));
    if by_bracket != Ordering::Equal {
        return by_bracket;
    }
    if let (Some(x), Some(y)) = (Number::of(a), Number::of(b)) {
        return x.compare(y);
    }
    if let (Some(x), Some(y)) = (text(a), text(b)) {
        return x.as_bytes().cmp(y.as_bytes());
    }
    match (a, b) {
        (RawBsonRef::Document(x), RawBsonRef::Document(y)) => compare_fields(
            x.iter().map(|field| field.map(|(k, v)| (Some(k), v))),
            y.iter().map(|field| field.map(|(k, v)| (Some(k), v))),
        ),
        (RawBsonRef::Array(x), RawBsonRef::Array(y)) => compare_fields(
            x.into_iter().map(|value| value.map(|v| (None, v))),
            y.into_iter().map(|value| value.map(|v| (None, v))),
        ),
        (RawBsonRef::ObjectId(x), RawBsonRef::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (RawBsonRef::Boolean(x), RawBsonRef::Boolean(y)) => x.cmp(&y),
        (RawBsonRef::DateTime(x), RawBsonRef::DateTime(y)) => x.cmp(&y),
        (RawBsonRef::Timestamp(x), RawBsonRef::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (RawBsonRef::Binary(x), RawBsonRef::Binary(y)) => binary_length(&x)
            .cmp(&binary_length(&y))
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(y.bytes)),
        (RawBsonRef::RegularExpression(x), RawBsonRef::RegularExpression(y)) => {
            (x.pattern, x.options).cmp(&(y.pattern, y.options))
        }
        (RawBsonRef::JavaScriptCodeWithScope(x), RawBsonRef::JavaScriptCodeWithScope(y)) => x
            .code
            .as_bytes()
            .cmp(y.code.as_bytes())
            .then_with(|| compare(RawBsonRef::Document(x.scope), RawBsonRef::Document(y.scope))),
        (RawBsonRef::DbPointer(_), RawBsonRef::DbPointer(_)) => db_pointer(a).cmp(&db_pointer(b)),
        _ => Ordering::Equal,
    }
}

/// Two documents' (or arrays') fields in order, compared pairwise; array elements have no name
/// here, their positions being equal.
fn compare_fields<'a, E>(
    mut a: impl Iterator<Item = Result<(Option<&'a str>, RawBsonRef<'a>), E>>,
    mut b: impl Iterator<Item = Result<(Option<&'a str>, RawBsonRef<'a>), E>>,
) -> Ordering {
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(Ok((kx, x))), Some(Ok((ky, y)))) => {
                let order = bracket(x.element_type())
                    .cmp(&bracket(y.element_type()))
                    .then_with(|| kx.map(str::as_bytes).cmp(&ky.map(str::as_bytes)))
                    .then_with(|| compare(x, y));
                if order != Ordering::Equal {
                    return order;
                }
            }
            // Malformed BSON: the server would not have stored it.
            _ => return Ordering::Equal,
        }
    }
}

/// A binary value's length as the server stores it: the old binary subtype holds a second length
/// inside, which the client strips.
fn binary_length(binary: &mongodb::bson::RawBinaryRef<'_>) -> usize {
    match binary.subtype {
        mongodb::bson::spec::BinarySubtype::BinaryOld => binary.bytes.len() + 4,
        _ => binary.bytes.len(),
    }
}

/// A DBPointer as the server compares it: its namespace's length, its namespace, its ObjectId
/// (the client's type keeps its parts private; its extended JSON shows them).
fn db_pointer(value: RawBsonRef<'_>) -> Option<(usize, String, String)> {
    let json = Bson::try_from(value.to_raw_bson())
        .ok()?
        .into_canonical_extjson();
    let pointer = json.get("$dbPointer")?;
    let namespace = pointer.get("$ref")?.as_str()?.to_string();
    let id = pointer.get("$id")?.get("$oid")?.as_str()?.to_string();
    Some((namespace.len(), namespace, id))
}

/// The text of strings, symbols and JavaScript code: compared by their bytes.
fn text(value: RawBsonRef<'_>) -> Option<&str> {
    match value {
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) | RawBsonRef::JavaScriptCode(s) => Some(s),
        _ => None,
    }
}

/// A number as the server compares it: integers exactly, doubles (and decimals, approximated
/// by their nearest double) with NaN below every other number.
#[derive(Clone, Copy)]
enum Number {
    Integer(i64),
    Float(f64),
}

impl Number {
    fn of(value: RawBsonRef<'_>) -> Option<Self> {
        match value {
            RawBsonRef::Int32(n) => Some(Self::Integer(i64::from(n))),
            RawBsonRef::Int64(n) => Some(Self::Integer(n)),
            other => number(other).map(Self::Float),
        }
    }

    fn compare(self, other: Self) -> Ordering {
        match (self, other) {
            (Self::Integer(x), Self::Integer(y)) => x.cmp(&y),
            (Self::Float(x), Self::Float(y)) => match (x.is_nan(), y.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            },
            (Self::Integer(x), Self::Float(y)) => integer_to_float(x, y),
            (Self::Float(x), Self::Integer(y)) => integer_to_float(y, x).reverse(),
        }
    }
}

/// An integer against a double, exactly: the double's whole part as an integer, then its
/// fraction.
fn integer_to_float(integer: i64, float: f64) -> Ordering {
    // 2^63: every double at or above it exceeds every i64, every one below -2^63 is under it.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if float.is_nan() {
        return Ordering::Greater;
    }
    if float >= TWO_63 {
        return Ordering::Less;
    }
    if float < -TWO_63 {
        return Ordering::Greater;
    }
    let whole = float.trunc();
    integer.cmp(&(whole as i64)).then_with(|| {
        0.0_f64
            .partial_cmp(&(float - whole))
            .unwrap_or(Ordering::Equal)
    })
}

/// How strings compare in a collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strings {
    /// By their bytes (the simple collation).
    Simple,
    /// By a collation Ferry does not evaluate: any two strings may be equal.
    Collated,
}

/// Feeds `value` to `hasher` so that values the server compares as equal hash alike: numbers of
/// every type by their value (`5`, `5L`, `5.0` and `NumberDecimal("5")` are one `_id`), -0 as 0,
/// documents and arrays element by element, and under a collation every string alike. Unequal
/// values may hash alike too; that only costs parallelism.
pub fn hash_as_compared(value: RawBsonRef<'_>, strings: Strings, hasher: &mut impl Hasher) {
    bracket(value.element_type()).hash(hasher);
    if let Some(n) = number(value) {
        let canonical = if n.is_nan() {
            f64::NAN.to_bits()
        } else if n == 0.0 {
            0.0_f64.to_bits()
        } else {
            n.to_bits()
        };
        return canonical.hash(hasher);
    }
    match value {
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) => {
            if strings == Strings::Simple {
                s.hash(hasher);
            }
        }
        RawBsonRef::Document(document) => {
            for (key, value) in document.into_iter().flatten() {
                key.hash(hasher);
                hash_as_compared(value, strings, hasher);
            }
        }
        RawBsonRef::Array(array) => {
            for value in array.into_iter().flatten() {
                hash_as_compared(value, strings, hasher);
            }
        }
        RawBsonRef::JavaScriptCodeWithScope(code) => {
            code.code.hash(hasher);
            hash_as_compared(RawBsonRef::Document(code.scope), strings, hasher);
        }
        RawBsonRef::Null | RawBsonRef::Undefined | RawBsonRef::MinKey | RawBsonRef::MaxKey => {}
        other => format!("{other:?}").hash(hasher),
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

    fn hashed(value: RawBsonRef<'_>, strings: Strings) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        hash_as_compared(value, strings, &mut hasher);
        hasher.finish()
    }

    #[test]
    fn values_the_server_finds_equal_hash_alike() {
        let five = hashed(RawBsonRef::Int32(5), Strings::Simple);
        let decimal: mongodb::bson::Decimal128 = "5.0".parse().unwrap();
        for same in [
            RawBsonRef::Int64(5),
            RawBsonRef::Double(5.0),
            RawBsonRef::Decimal128(decimal),
        ] {
            assert_eq!(hashed(same, Strings::Simple), five, "{same:?}");
        }
        assert_eq!(
            hashed(RawBsonRef::Double(-0.0), Strings::Simple),
            hashed(RawBsonRef::Int32(0), Strings::Simple)
        );
        assert_ne!(hashed(RawBsonRef::Int32(6), Strings::Simple), five);
        let nested = mongodb::bson::rawdoc! { "a": 5, "b": [1_i64, "x"] };
        let nested_long = mongodb::bson::rawdoc! { "a": 5.0, "b": [1.0, "x"] };
        assert_eq!(
            hashed(RawBsonRef::Document(&nested), Strings::Simple),
            hashed(RawBsonRef::Document(&nested_long), Strings::Simple)
        );
        // Strings are equal by bytes, unless a collation may make "A" and "a" one key.
        assert_ne!(
            hashed(RawBsonRef::String("A"), Strings::Simple),
            hashed(RawBsonRef::String("a"), Strings::Simple)
        );
        assert_eq!(
            hashed(RawBsonRef::String("A"), Strings::Collated),
            hashed(RawBsonRef::String("a"), Strings::Collated)
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

    #[test]
    fn documents_compare_field_by_field_and_wide_integers_exactly() {
        use mongodb::bson::{rawdoc, RawDocumentBuf};
        // In the server's order (as `find().sort({_id: 1})` returns them).
        let documents: Vec<RawDocumentBuf> = vec![
            rawdoc! { "a": 1 },
            rawdoc! { "a": 1, "b": 2 },
            rawdoc! { "a": 1.5, "b": 0 },
            rawdoc! { "a": 2 },
            rawdoc! { "b": 0 },
            rawdoc! { "a": "x" },
            rawdoc! { "a": [1] },
            rawdoc! { "a": [1, 2] },
            rawdoc! { "a": [2] },
        ];
        for pair in documents.windows(2) {
            assert_eq!(
                compare(
                    RawBsonRef::Document(&pair[0]),
                    RawBsonRef::Document(&pair[1])
                ),
                Ordering::Less,
                "{:?} before {:?}",
                pair[0],
                pair[1]
            );
        }
        let numbers = [
            RawBsonRef::Double(f64::NAN),
            RawBsonRef::Double(f64::NEG_INFINITY),
            RawBsonRef::Int64(i64::MIN),
            RawBsonRef::Int32(-5),
            RawBsonRef::Double(-4.5),
            RawBsonRef::Int64(-4),
            RawBsonRef::Double(9_007_199_254_740_992.0),
            RawBsonRef::Int64(9_007_199_254_740_993),
            RawBsonRef::Int64(i64::MAX),
            RawBsonRef::Double(9_223_372_036_854_775_808.0),
            RawBsonRef::Double(f64::INFINITY),
        ];
        for pair in numbers.windows(2) {
            assert_eq!(
                compare(pair[0], pair[1]),
                Ordering::Less,
                "{:?} before {:?}",
                pair[0],
                pair[1]
            );
            assert_eq!(compare(pair[1], pair[0]), Ordering::Greater);
        }
        assert_eq!(
            compare(RawBsonRef::Double(f64::NAN), RawBsonRef::Double(f64::NAN)),
            Ordering::Equal
        );
        // Code with scope by its code, then its scope; DBPointers by namespace, then ObjectId.
        let scope = rawdoc! { "x": 1 };
        let with_scope = |code| {
            RawBsonRef::JavaScriptCodeWithScope(mongodb::bson::RawJavaScriptCodeWithScopeRef {
                code,
                scope: &scope,
            })
        };
        assert_eq!(compare(with_scope("a"), with_scope("b")), Ordering::Less);
        // The old binary subtype's inner length counts: 4 + 4 bytes after 6.
        let binary =
            |subtype, bytes| RawBsonRef::Binary(mongodb::bson::RawBinaryRef { subtype, bytes });
        use mongodb::bson::spec::BinarySubtype;
        assert_eq!(
            compare(
                binary(BinarySubtype::BinaryOld, &[1; 4]),
                binary(BinarySubtype::Generic, &[0; 6])
            ),
            Ordering::Greater
        );
        let pointers: Vec<mongodb::bson::RawBson> = ["b.c", "a.cc"]
            .iter()
            .map(|ns| {
                let pointer = Bson::try_from(serde_json::json!({ "$dbPointer": {
                    "$ref": ns, "$id": { "$oid": "650000000000000000000001" } } }))
                .unwrap();
                mongodb::bson::RawBson::try_from(pointer).unwrap()
            })
            .collect();
        assert_eq!(
            compare(pointers[0].as_raw_bson_ref(), pointers[1].as_raw_bson_ref()),
            Ordering::Less,
            "the shorter namespace first"
        );
    }
}
