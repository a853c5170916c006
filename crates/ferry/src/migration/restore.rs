//! Restoring at commit what was relaxed while syncing (DESIGN rule 4): unique and TTL indexes,
//! capped collections, clustered-collection expiry. The source is quiescent at commit, so its
//! current catalog is the exact target: every relaxed part is rebuilt from it.
//!
//! Every step is idempotent (DESIGN rule 12): a part already restored is left alone, an index is
//! dropped only while it is still relaxed, and a capped collection is swapped in by one rename, so
//! a crash or fault anywhere in the restore leaves a state the same command finishes.

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;

use crate::background;
use crate::catalog::indexes::{self, Build};
use crate::catalog::{self, CollectionSpec, Kind};
use crate::copy;
use crate::filter::NamespaceFilter;
use crate::majority;
use crate::progress::Progress;
use crate::server_error::{already, is_code, Already, NAMESPACE_NOT_FOUND};

/// Suffix of the scratch collection a capped collection is rebuilt in.
const CAPPED_REBUILD_SUFFIX: &str = ".__ferry_capped";

/// Restores every relaxed constraint on the destination to the source's exact spec, reading the
/// source at or after `at` (the commit point).
pub async fn restore(
    source: &Client,
    destination: &Client,
    filter: &NamespaceFilter,
    progress: &Progress,
    at: Timestamp,
) -> Result<()> {
    let specs: Vec<CollectionSpec> = catalog::list_namespaces(source, filter)
        .await?
        .into_iter()
        .filter(|s| s.kind == Kind::Collection)
        .collect();
    // A few collections at a time: with thousands, one after the other waits on each round
    // trip. By position: a closure over borrowed specs cannot be proven `Send` for every
    // lifetime, which spawning the migration needs.
    let specs = &specs;
    let each = (0..specs.len())
        .map(|at_position| restore_one(source, destination, &specs[at_position], progress, at));
    background::at_most(RESTORE_CONCURRENCY, each).await
}

/// Collections restored at the same time.
const RESTORE_CONCURRENCY: usize = 4;

/// Restores one collection's relaxed constraints; one that has none is not touched.
async fn restore_one(
    source: &Client,
    destination: &Client,
    spec: &CollectionSpec,
    progress: &Progress,
    at: Timestamp,
) -> Result<()> {
    if spec.is_capped() {
        return rebuild_capped(source, destination, spec, progress, at).await;
    }
    let database = destination.database(&spec.db);
    if let Some(expiry) = spec.options.get("expireAfterSeconds") {
        majority::command(
            &database,
            doc! { "collMod": &spec.name, "expireAfterSeconds": expiry.clone() },
        )
        .await
        .with_context(|| format!("restoring the expiry of {}", spec.ns()))?;
    }
    let built: Vec<&Document> = spec
        .indexes
        .iter()
        .filter(|i| !catalog::is_implicit_index(i))
        .collect();
    if !built.iter().any(|i| catalog::relax_index(i).is_some()) {
        return Ok(());
    }
    let present = match catalog::list_indexes(destination, &spec.db, &spec.name).await {
        Ok(present) => present,
        Err(e) if is_code(&e, &[NAMESPACE_NOT_FOUND]) => Vec::new(),
        Err(e) => return Err(e),
    };
    // Every index of a collection with relaxed ones: besides those, an index the relaxed
    // build left out (relaxed, it was the same index as another) is built here.
    for index in built {
        let name = index.get_str("name").unwrap_or_default();
        match present.iter().find(|p| p.get_str("name") == Ok(name)) {
            Some(there) if same_constraints(there, index) => continue,
            Some(_) => {
                match majority::command(
                    &database,
                    doc! { "dropIndexes": &spec.name, "index": name },
                )
                .await
                {
                    Err(e) if !already(&e, Already::Dropped) => {
                        return Err(e).with_context(|| {
                            format!("replacing relaxed index {name} of {}", spec.ns())
                        })
                    }
                    _ => {}
                }
            }
            None => {}
        }
        indexes::build(
            destination,
            &spec.db,
            &spec.name,
            std::slice::from_ref(index),
            Build::Exact,
        )
        .await
        .with_context(|| format!("restoring index {name} of {}: {index}", spec.ns()))?;
    }
    Ok(())
}

/// Whether an index on the destination already has the constraints of the source's spec:
/// the same key, uniqueness and expiry.
fn same_constraints(there: &Document, source: &Document) -> bool {
    let unique = |d: &Document| d.get_bool("unique").unwrap_or(false);
    let expiry = |d: &Document| d.get("expireAfterSeconds").and_then(as_f64);
    there.get_document("key").ok() == source.get_document("key").ok()
        && unique(there) == unique(source)
        && expiry(there) == expiry(source)
}

fn as_f64(value: &Bson) -> Option<f64> {
    match value {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    }
}

/// Rebuilds a capped collection with its exact options: a fresh copy of the source's documents
/// in natural order into a scratch collection, its indexes, then a rename over the synced one.
/// A collection that is capped with the source's limits already was put in place by an earlier
/// attempt.
async fn rebuild_capped(
    source: &Client,
    destination: &Client,
    spec: &CollectionSpec,
    progress: &Progress,
    at: Timestamp,
) -> Result<()> {
    if capped_in_place(destination, spec).await? {
        return Ok(());
    }
    copy::replace_with_copy(
        source,
        destination,
        progress,
        spec,
        at,
        CAPPED_REBUILD_SUFFIX,
        Build::Exact,
    )
    .await
    .with_context(|| format!("rebuilding capped {} with its exact options", spec.ns()))
}

/// Whether the destination's collection is capped with the source's limits: rebuilt already.
async fn capped_in_place(destination: &Client, spec: &CollectionSpec) -> Result<bool> {
    let current: Vec<Document> = destination
        .database(&spec.db)
        .run_cursor_command(doc! { "listCollections": 1, "filter": { "name": &spec.name } })
        .await?
        .try_collect()
        .await?;
    let limits = |options: &Document| {
        (
            options.get_bool("capped").unwrap_or(false),
            options.get("size").and_then(as_f64),
            options.get("max").and_then(as_f64),
        )
    };
    Ok(current
        .first()
        .and_then(|c| c.get_document("options").ok())
        .is_some_and(|options| limits(options) == limits(&spec.options)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_counts_as_restored_only_with_the_sources_constraints() {
        let exact = doc! { "v": 2, "key": { "email": 1 }, "name": "email_1", "unique": true };
        let relaxed = catalog::relax_index(&exact).unwrap();
        assert!(same_constraints(&exact, &exact));
        assert!(!same_constraints(&relaxed, &exact));
        let ttl = doc! { "v": 2, "key": { "at": 1 }, "name": "at_1", "expireAfterSeconds": 60 };
        let other_ttl =
            doc! { "v": 2, "key": { "at": 1 }, "name": "at_1", "expireAfterSeconds": 60.0 };
        assert!(same_constraints(&other_ttl, &ttl));
        assert!(!same_constraints(
            &catalog::relax_index(&ttl).unwrap(),
            &ttl
        ));
    }
}
