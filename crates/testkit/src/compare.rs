//! Whole-cluster equality for tests, independent of Ferry: the same databases, the same
//! collections and views with the same options, the same indexes, and every document byte for
//! byte (field order included), over the namespaces a migration includes ([`Scope`]); what it
//! leaves out must not appear on the destination.

use anyhow::Result;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;

/// Databases that are never user data.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

/// Which namespaces a migration includes: `db` or `db.coll` patterns, as `--include` and
/// `--exclude` take them, and the destination database that holds Ferry's own state.
#[derive(Clone, Debug)]
pub struct Scope {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub state_db: String,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
            state_db: "__ferry".into(),
        }
    }
}

impl Scope {
    fn matches(pattern: &str, db: &str, coll: Option<&str>) -> bool {
        match (pattern.split_once('.'), coll) {
            (Some((p_db, p_coll)), Some(coll)) => p_db == db && p_coll == coll,
            (Some(_), None) => false,
            (None, _) => pattern == db,
        }
    }

    fn wants_database(&self, db: &str) -> bool {
        !SYSTEM_DATABASES.contains(&db)
            && db != self.state_db
            && (self.include.is_empty()
                || self
                    .include
                    .iter()
                    .any(|p| p == db || p.starts_with(&format!("{db}."))))
            && !self.exclude.iter().any(|p| p == db)
    }

    /// Whether `db.coll` is migrated.
    pub fn wants(&self, db: &str, coll: &str) -> bool {
        self.wants_database(db)
            && (self.include.is_empty()
                || self
                    .include
                    .iter()
                    .any(|p| Self::matches(p, db, Some(coll))))
            && !self
                .exclude
                .iter()
                .any(|p| Self::matches(p, db, Some(coll)))
    }
}

/// Every difference between the user data of two clusters, described for a person; empty when
/// they are equal.
pub async fn differences(source: &Client, destination: &Client) -> Result<Vec<String>> {
    differences_in(source, destination, &Scope::default()).await
}

/// Every difference between the namespaces `scope` includes on both clusters, and every
/// namespace it leaves out that the destination holds anyway.
pub async fn differences_in(
    source: &Client,
    destination: &Client,
    scope: &Scope,
) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut databases = client_databases(source).await?;
    databases.extend(client_databases(destination).await?);
    databases.sort();
    databases.dedup();
    for db in databases {
        if SYSTEM_DATABASES.contains(&db.as_str()) || db == scope.state_db {
            continue;
        }
        compare_database(source, destination, &db, scope, &mut found).await?;
    }
    Ok(found)
}

async fn client_databases(client: &Client) -> Result<Vec<String>> {
    let mut names = client.list_database_names().await?;
    names.sort();
    Ok(names)
}

/// Collections compared as data: user collections, and `system.js` (stored functions, which
/// users migrate); the other `system.*` namespaces are the server's (views are compared as the
/// views they define).
fn compared(name: &str) -> bool {
    !name.starts_with("system.") || name == "system.js"
}

/// (name, type, options) of every collection and view of a database, sorted by name.
async fn catalog(client: &Client, db: &str) -> Result<Vec<(String, String, Document)>> {
    let mut entries: Vec<(String, String, Document)> = client
        .database(db)
        .run_cursor_command(doc! { "listCollections": 1 })
        .await?
        .try_collect::<Vec<Document>>()
        .await?
        .into_iter()
        .map(|e| {
            (
                e.get_str("name").unwrap_or_default().to_string(),
                e.get_str("type").unwrap_or("collection").to_string(),
                normalized(e.get_document("options").cloned().unwrap_or_default()),
            )
        })
        .filter(|(name, _, _)| compared(name))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// A spec with its top-level fields sorted (their order carries no meaning; nested order does).
fn normalized(spec: Document) -> Document {
    let mut fields: Vec<(String, Bson)> = spec.into_iter().collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.into_iter().collect()
}

async fn indexes(client: &Client, db: &str, coll: &str) -> Result<Vec<Document>> {
    let mut specs: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! { "listIndexes": coll })
        .await?
        .try_collect::<Vec<Document>>()
        .await?
        .into_iter()
        .map(normalized)
        .collect();
    specs.sort_by(|a, b| a.get_str("name").ok().cmp(&b.get_str("name").ok()));
    Ok(specs)
}

async fn documents(
    client: &Client,
    db: &str,
    coll: &str,
    capped: bool,
) -> Result<Vec<RawDocumentBuf>> {
    let collection = client.database(db).collection::<RawDocumentBuf>(coll);
    let mut find = collection.find(doc! {});
    if !capped {
        find = find.sort(doc! { "_id": 1 });
    }
    Ok(find.await?.try_collect().await?)
}

async fn compare_database(
    source: &Client,
    destination: &Client,
    db: &str,
    scope: &Scope,
    found: &mut Vec<String>,
) -> Result<()> {
    let wanted = |entries: Vec<(String, String, Document)>| -> Vec<(String, String, Document)> {
        entries
            .into_iter()
            .filter(|(name, _, _)| scope.wants(db, name))
            .collect()
    };
    let source_catalog = wanted(catalog(source, db).await?);
    let everything_there = catalog(destination, db).await?;
    for (name, _, _) in &everything_there {
        if !scope.wants(db, name) {
            found.push(format!("{db}.{name}: on the destination, but not included"));
        }
    }
    let destination_catalog = wanted(everything_there);
    let names =
        |c: &[(String, String, Document)]| c.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    if names(&source_catalog) != names(&destination_catalog) {
        found.push(format!(
            "database {db}: source has {:?}, destination has {:?}",
            names(&source_catalog),
            names(&destination_catalog)
        ));
        return Ok(());
    }
    for (s, d) in source_catalog.iter().zip(&destination_catalog) {
        let ns = format!("{db}.{}", s.0);
        if s.1 != d.1 || s.2 != d.2 {
            found.push(format!(
                "{ns}: source is a {} with options {}, destination a {} with options {}",
                s.1, s.2, d.1, d.2
            ));
            continue;
        }
        if s.1 != "collection" {
            continue;
        }
        let (source_indexes, destination_indexes) = (
            indexes(source, db, &s.0).await?,
            indexes(destination, db, &s.0).await?,
        );
        if source_indexes != destination_indexes {
            found.push(format!(
                "{ns}: indexes differ:\n  source      {source_indexes:?}\n  destination {destination_indexes:?}"
            ));
        }
        let capped = s.2.get_bool("capped").unwrap_or(false);
        let source_docs = documents(source, db, &s.0, capped).await?;
        let destination_docs = documents(destination, db, &s.0, capped).await?;
        if source_docs.len() != destination_docs.len() {
            found.push(format!(
                "{ns}: source has {} documents, destination {}",
                source_docs.len(),
                destination_docs.len()
            ));
        }
        if let Some((a, b)) = source_docs
            .iter()
            .zip(&destination_docs)
            .find(|(a, b)| a.as_bytes() != b.as_bytes())
        {
            found.push(format!(
                "{ns}: first differing document:\n  source      {}\n  destination {}",
                show(a),
                show(b)
            ));
        }
    }
    Ok(())
}

fn show(document: &RawDocumentBuf) -> String {
    let text = Document::try_from(document.as_ref())
        .map(|d| d.to_string())
        .unwrap_or_else(|e| format!("<{e}>"));
    if text.chars().count() > 400 {
        format!("{}…", text.chars().take(400).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_includes_and_excludes_as_the_flags_do() {
        let scope = Scope {
            include: vec!["keep".into(), "partly.in".into()],
            exclude: vec!["keep.secret".into()],
            state_db: "__ferry".into(),
        };
        assert!(scope.wants("keep", "x"));
        assert!(!scope.wants("keep", "secret"));
        assert!(scope.wants("partly", "in"));
        assert!(!scope.wants("partly", "out"));
        assert!(!scope.wants("other", "y"));
        assert!(!scope.wants("__ferry", "migration"));
        assert!(!scope.wants("admin", "x"));
        assert!(Scope::default().wants("any", "thing"));
        assert!(compared("system.js") && !compared("system.views"));
    }
}
