//! Which namespaces a migration moves: every user collection, minus system namespaces and Ferry's
//! own state database, narrowed by `--include` / `--exclude` (`db` or `db.coll`).

use std::fmt;

use crate::namespace::Namespace;

/// A `db` or `db.coll` pattern given on the command line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NsPattern {
    pub db: String,
    pub coll: Option<String>,
}

impl NsPattern {
    /// Parses `db` or `db.coll` (the collection part may itself contain dots).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (db, coll) = match Namespace::parse(text) {
            Some(ns) => (ns.db, Some(ns.coll)),
            None => (text.to_string(), None),
        };
        if db.is_empty() || coll.as_ref().is_some_and(String::is_empty) {
            return Err(format!(
                "namespace pattern {text:?} is malformed: write `db` for a whole database or `db.collection` for one collection"
            ));
        }
        if db.contains(['/', '\\', ' ', '"', '$', '\0']) {
            return Err(format!(
                "namespace pattern {text:?} names a database that MongoDB cannot have (no / \\ space \" $ in database names)"
            ));
        }
        Ok(Self { db, coll })
    }

    fn matches(&self, db: &str, coll: Option<&str>) -> bool {
        self.db == db
            && match (&self.coll, coll) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
            }
    }
}

impl fmt::Display for NsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.coll {
            Some(coll) => write!(f, "{}.{}", self.db, coll),
            None => f.write_str(&self.db),
        }
    }
}

/// The namespace filter of one migration.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamespaceFilter {
    pub include: Vec<NsPattern>,
    pub exclude: Vec<NsPattern>,
    pub state_db: String,
}

/// Databases that never hold user data to migrate.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

impl NamespaceFilter {
    /// Whether any collection of `db` could be migrated (used to skip whole databases early).
    pub fn wants_database(&self, db: &str) -> bool {
        if SYSTEM_DATABASES.contains(&db) || db == self.state_db {
            return false;
        }
        let included = self.include.is_empty() || self.include.iter().any(|p| p.db == db);
        let excluded_whole = self.exclude.iter().any(|p| p.db == db && p.coll.is_none());
        included && !excluded_whole
    }

    /// Whether the collection or view `db.coll` is migrated.
    pub fn wants(&self, db: &str, coll: &str) -> bool {
        if !self.wants_database(db) || coll.starts_with("system.") {
            return false;
        }
        let included =
            self.include.is_empty() || self.include.iter().any(|p| p.matches(db, Some(coll)));
        included && !self.exclude.iter().any(|p| p.matches(db, Some(coll)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> NamespaceFilter {
        NamespaceFilter {
            include: include
                .iter()
                .map(|p| NsPattern::parse(p).unwrap())
                .collect(),
            exclude: exclude
                .iter()
                .map(|p| NsPattern::parse(p).unwrap())
                .collect(),
            state_db: "__ferry".into(),
        }
    }

    #[test]
    fn system_and_state_namespaces_are_never_migrated() {
        let f = filter(&[], &[]);
        assert!(f.wants("shop", "orders"));
        assert!(!f.wants("admin", "users"));
        assert!(!f.wants("local", "oplog.rs"));
        assert!(!f.wants("config", "x"));
        assert!(!f.wants("__ferry", "state"));
        assert!(!f.wants("shop", "system.views"));
    }

    #[test]
    fn include_and_exclude_narrow_by_database_and_collection() {
        let f = filter(&["shop", "crm.people"], &["shop.audit"]);
        assert!(f.wants("shop", "orders"));
        assert!(!f.wants("shop", "audit"));
        assert!(f.wants("crm", "people"));
        assert!(!f.wants("crm", "leads"));
        assert!(!f.wants("other", "x"));
        assert!(f.wants_database("crm"));
        assert!(!f.wants_database("other"));
    }

    #[test]
    fn collection_names_may_contain_dots() {
        let p = NsPattern::parse("db.a.b").unwrap();
        assert_eq!(p.coll.as_deref(), Some("a.b"));
        assert!(NsPattern::parse("db.").is_err());
        assert!(NsPattern::parse(".x").is_err());
        assert!(NsPattern::parse("a b.c").is_err());
    }
}
