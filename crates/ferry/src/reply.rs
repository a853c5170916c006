//! Reading server replies: a number may come as int32, int64 or double, whichever the server
//! (or its version) chose.

use mongodb::bson::{Bson, Document};

/// A number field of a reply, whatever its BSON type.
pub fn number(doc: &Document, field: &str) -> Option<f64> {
    match doc.get(field)? {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    }
}
