//! Restoring at commit what was relaxed while syncing (DESIGN rule 4): unique and TTL indexes,
//! capped collections, clustered-collection expiry. The source is quiescent at commit, so its
//! current catalog is the exact target: every relaxed part is rebuilt from it.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Document};
use mongodb::Client;

use crate::catalog::{self, CollectionSpec, Kind};
use crate::copy;
use crate::filter::NamespaceFilter;
use crate::progress::Progress;

/// Suffix of the scratch collection a capped collection is rebuilt in.
const CAPPED_REBUILD_SUFFIX: &str = ".__ferry_capped";

/// Restores every relaxed constraint on the destination to the source's exact spec.
pub async fn restore(
    source: &Client,
    destination: &Client,
    filter: &NamespaceFilter,
    progress: &Progress,
) -> Result<()> {
    for spec in catalog::list_namespaces(source, filter).await? {
        if spec.kind != Kind::Collection {
            continue;
        }
        if spec.is_capped() {
            rebuild_capped(source, destination, &spec, progress).await?;
            continue;
        }
        let database = destination.database(&spec.db);
        if let Some(expiry) = spec.options.get("expireAfterSeconds") {
            database
                .run_command(doc! { "collMod": &spec.name, "expireAfterSeconds": expiry.clone() })
                .await
                .with_context(|| format!("restoring the expiry of {}", spec.ns()))?;
        }
        for index in &spec.indexes {
            if catalog::is_implicit_index(index) || catalog::relax_index(index).is_none() {
                continue;
            }
            let name = index.get_str("name").unwrap_or_default();
            database
                .run_command(doc! { "dropIndexes": &spec.name, "index": name })
                .await
                .with_context(|| format!("replacing relaxed index {name} of {}", spec.ns()))?;
            database
                .run_command(doc! { "createIndexes": &spec.name, "indexes": [index.clone()] })
                .await
                .with_context(|| format!("restoring index {name} of {}: {index}", spec.ns()))?;
        }
    }
    Ok(())
}

/// Rebuilds a capped collection with its exact options: a fresh copy of the source's documents
/// in natural order into a scratch collection, its indexes, then a rename over the synced one.
async fn rebuild_capped(
    source: &Client,
    destination: &Client,
    spec: &CollectionSpec,
    progress: &Progress,
) -> Result<()> {
    let scratch = format!("{}{CAPPED_REBUILD_SUFFIX}", spec.name);
    let database = destination.database(&spec.db);
    database.collection::<Document>(&scratch).drop().await?;
    let mut exact = spec.clone();
    exact.name = scratch.clone();
    database
        .run_command(exact.create_command(false))
        .await
        .with_context(|| format!("creating capped {} with its exact options", spec.ns()))?;
    copy::copy_documents(
        source,
        destination,
        spec,
        &scratch,
        &Default::default(),
        progress,
        None,
        None,
    )
    .await?;
    let indexes: Vec<Document> = spec
        .indexes
        .iter()
        .filter(|index| !catalog::is_implicit_index(index))
        .cloned()
        .collect();
    if !indexes.is_empty() {
        database
            .run_command(doc! { "createIndexes": &scratch, "indexes": indexes })
            .await
            .with_context(|| format!("building the indexes of capped {}", spec.ns()))?;
    }
    destination
        .database("admin")
        .run_command(doc! {
            "renameCollection": format!("{}.{scratch}", spec.db),
            "to": spec.ns(),
            "dropTarget": true,
        })
        .await
        .with_context(|| format!("putting rebuilt capped {} in place", spec.ns()))?;
    Ok(())
}
