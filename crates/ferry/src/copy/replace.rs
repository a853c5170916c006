//! Replacing a destination collection by a fresh copy of the source's, in one step: copied into
//! a scratch collection beside it, then renamed over it, so that a crash or fault midway leaves
//! the target as it was. Used where a collection must be copied anew (a catalog change the
//! stream cannot replay, a capped collection rebuilt at commit); a reverse puts its own scratch
//! copies in place with `swap_in`.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Timestamp};
use mongodb::Client;

use super::name_checks::NameChecks;
use super::{copy_documents, RangeCopy};
use crate::catalog::indexes::{self, Build};
use crate::catalog::{self, CollectionSpec};
use crate::majority;
use crate::progress::Progress;
use crate::server_error::{is_code, NAMESPACE_NOT_FOUND};

/// Replaces the destination's `spec` collection by a fresh copy of the source's documents, read
/// at or after `at`: copied into a scratch collection (its name with `suffix`) created with the
/// collection's options and indexes, built `how` (relaxed while syncing, exact at commit), then
/// renamed over the target in one step, so a crash or fault midway leaves the target as it was.
pub async fn replace_with_copy(
    source: &Client,
    destination: &Client,
    progress: &Progress,
    spec: &CollectionSpec,
    at: Timestamp,
    suffix: &str,
    how: Build,
) -> Result<()> {
    let database = destination.database(&spec.db);
    let scratch = format!("{}{suffix}", spec.name);
    majority::drop(&database, &scratch).await?;
    let mut copy = spec.clone();
    copy.name = scratch.clone();
    majority::command(&database, copy.create_command(how == Build::Relaxed))
        .await
        .with_context(|| format!("creating a new copy of {} on the destination", spec.ns()))?;
    copy_documents(
        source,
        destination,
        progress,
        RangeCopy {
            spec,
            target: &scratch,
            range: &Default::default(),
            at,
            resume: None,
            limit: None,
            running: None,
            listed: None,
            checks: &NameChecks::default(),
        },
    )
    .await?;
    indexes::build(destination, &spec.db, &scratch, &spec.indexes, how)
        .await
        .with_context(|| format!("building the indexes of the new copy of {}", spec.ns()))?;
    swap_in(destination, &spec.db, &scratch, &spec.name).await
}

/// Renames `db.scratch` over `db.name`, dropping what was there. Sent again after an unconfirmed
/// first attempt that did it, the rename finds no scratch collection: done, if the target is there.
pub async fn swap_in(client: &Client, db: &str, scratch: &str, name: &str) -> Result<()> {
    let renamed = majority::command(
        &client.database("admin"),
        doc! { "renameCollection": format!("{db}.{scratch}"), "to": format!("{db}.{name}"), "dropTarget": true },
    )
    .await;
    match renamed {
        Err(e)
            if is_code(&e, &[NAMESPACE_NOT_FOUND])
                && catalog::describe_one(client, db, scratch).await?.is_none()
                && catalog::describe_one(client, db, name).await?.is_some() =>
        {
            Ok(())
        }
        other => other
            .map(drop)
            .with_context(|| format!("putting the new {db}.{name} in place")),
    }
}
