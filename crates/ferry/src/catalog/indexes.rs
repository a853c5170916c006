//! Building a collection's indexes on the destination, the one loop every stage uses: the copy
//! and replayed `createIndexes` build them relaxed, the commit builds them exactly.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

use crate::majority;
use crate::server_error::{already, Already};

/// How indexes are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Without the constraints that would break a replay. An index already there by name or
    /// key counts as built: a replayed `dropIndexes`/`createIndexes` or the commit's restore
    /// (which compares key, uniqueness and expiry by name) puts right any difference.
    Relaxed,
    /// With the source's exact spec.
    Exact,
}

/// Builds `indexes` (server-built ones left out) on `db.coll` of the destination, in one
/// `createIndexes` (relaxed ones one at a time after a conflict, so that one index already
/// there does not leave the others unbuilt).
pub async fn build(
    destination: &Client,
    db: &str,
    coll: &str,
    indexes: &[Document],
    how: Build,
) -> Result<()> {
    let specs = specs_to_build(indexes, how);
    if specs.is_empty() {
        return Ok(());
    }
    let database = destination.database(db);
    let create = |specs: Vec<Document>| {
        majority::command(&database, doc! { "createIndexes": coll, "indexes": specs })
    };
    let context = || format!("building the indexes of {db}.{coll} on the destination");
    match create(specs.clone()).await {
        Err(e) if how == Build::Relaxed && already(&e, Already::Indexed) => {
            for spec in specs {
                let name = spec.get_str("name").unwrap_or_default().to_string();
                match create(vec![spec]).await {
                    Err(e) if already(&e, Already::Indexed) => {
                        tracing::debug!(namespace = %format!("{db}.{coll}"), index = %name, "an index of that name or key is there already");
                    }
                    other => other.map(drop).with_context(context)?,
                }
            }
            Ok(())
        }
        other => other.map(drop).with_context(context),
    }
}

/// The specs `build` sends: server-built indexes left out, relaxed ones relaxed, and a relaxed
/// spec dropped when an earlier one became the same index (on 5.0+ a source may hold two
/// indexes on one key that differ only in `unique`; relaxed they would conflict, and the commit
/// builds the second exactly).
fn specs_to_build(indexes: &[Document], how: Build) -> Vec<Document> {
    let mut specs: Vec<Document> = Vec::new();
    for index in indexes.iter().filter(|i| !super::is_implicit_index(i)) {
        let spec = match how {
            Build::Relaxed => super::relax_index(index).unwrap_or_else(|| index.clone()),
            Build::Exact => index.clone(),
        };
        if how == Build::Relaxed && specs.iter().any(|s| signature(s) == signature(&spec)) {
            continue;
        }
        specs.push(spec);
    }
    specs
}

/// An index spec without its name, in field order: what makes two specs one index.
fn signature(spec: &Document) -> Vec<(&String, &Bson)> {
    let mut fields: Vec<(&String, &Bson)> = spec.iter().filter(|(k, _)| *k != "name").collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_specs_that_become_one_index_are_built_once() {
        let plain = doc! { "v": 2, "key": { "a": 1 }, "name": "a_1" };
        let unique = doc! { "v": 2, "unique": true, "key": { "a": 1 }, "name": "a_u" };
        let other = doc! { "v": 2, "key": { "b": 1 }, "name": "b_1", "unique": true };
        let id = doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" };
        let all = [id, unique.clone(), plain.clone(), other];
        let relaxed = specs_to_build(&all, Build::Relaxed);
        let names: Vec<&str> = relaxed.iter().map(|s| s.get_str("name").unwrap()).collect();
        assert_eq!(names, ["a_u", "b_1"]);
        assert!(relaxed.iter().all(|s| !s.contains_key("unique")));
        let exact = specs_to_build(&all, Build::Exact);
        assert_eq!(exact, vec![unique, plain, all[3].clone()]);
    }
}
