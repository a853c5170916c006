//! Building a collection's indexes on the destination, the one loop every stage uses: the copy
//! and replayed `createIndexes` build them relaxed, the commit builds them exactly.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Document};
use mongodb::Client;

use crate::majority;
use crate::server_error::{already, Already};

/// How indexes are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Without the constraints that would break a replay.
    Relaxed,
    /// Relaxed, for a replayed `createIndexes`: one already there counts as built (the copy
    /// may have built it from a later listing, with options the relaxing made alike).
    Replayed,
    /// With the source's exact spec.
    Exact,
}

/// Builds `indexes` (server-built ones left out) on `db.coll` of the destination, in one
/// `createIndexes`.
pub async fn build(
    destination: &Client,
    db: &str,
    coll: &str,
    indexes: &[Document],
    how: Build,
) -> Result<()> {
    let specs: Vec<Document> = indexes
        .iter()
        .filter(|index| !super::is_implicit_index(index))
        .map(|index| match how {
            Build::Relaxed | Build::Replayed => {
                super::relax_index(index).unwrap_or_else(|| index.clone())
            }
            Build::Exact => index.clone(),
        })
        .collect();
    if specs.is_empty() {
        return Ok(());
    }
    let built = majority::command(
        &destination.database(db),
        doc! { "createIndexes": coll, "indexes": specs },
    )
    .await;
    match built {
        Err(e) if how == Build::Replayed && already(&e, Already::Indexed) => Ok(()),
        other => other
            .map(drop)
            .with_context(|| format!("building the indexes of {db}.{coll} on the destination")),
    }
}
