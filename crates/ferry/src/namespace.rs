//! A namespace, `db.coll`: a database and a collection (or view) in it, as one value rather than
//! text built with `format!` and taken apart with `split_once`. Database names cannot hold a dot,
//! collection names can, so the text splits at its first dot.

use std::fmt;

/// A collection's (or view's) full name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

impl Namespace {
    pub fn new(db: &str, coll: &str) -> Self {
        Self {
            db: db.to_string(),
            coll: coll.to_string(),
        }
    }

    /// Reads `db.coll`; `None` without a dot.
    pub fn parse(text: &str) -> Option<Self> {
        let (db, coll) = text.split_once('.')?;
        Some(Self::new(db, coll))
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_splits_at_the_first_dot() {
        let ns = Namespace::parse("shop.orders.2024").unwrap();
        assert_eq!((ns.db.as_str(), ns.coll.as_str()), ("shop", "orders.2024"));
        assert_eq!(ns.to_string(), "shop.orders.2024");
        assert_eq!(Namespace::parse("shop"), None);
    }
}
