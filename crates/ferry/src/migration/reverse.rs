//! What a reverse (`ferry reverse`) does differently from a forward migration. It runs the same
//! stages the other way (the new cluster is the source, the old one the destination) except
//! the copy: at the reverse point the forward migration recorded at COMMITTED (`--reversible`)
//! the two sides were equal. Instead, the old source's constraints are relaxed in place while
//! changes flow back, and restored from the new cluster's exact catalog at the reverse's commit,
//! as a forward destination's are; and at COMMITTED the write block the forward commit left on
//! the old source is lifted, since the application returns to it.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson};
use mongodb::Client;

use super::Migration;
use crate::catalog::indexes::{self, Build};
use crate::catalog::{self, Kind};
use crate::copy;
use crate::filter::NamespaceFilter;
use crate::incarnations::Incarnations;
use crate::majority;
use crate::server_error::{already, is_code, Already, COMMAND_NOT_FOUND};
use crate::source::clock;
use crate::state::{ReversePoint, StateStore};

impl Migration<'_> {
    /// Where this reverse starts: recorded by the forward migration in its state on the
    /// reverse's source (the new cluster).
    pub(super) async fn reverse_point(&self) -> Result<ReversePoint> {
        StateStore::new(&self.source, &self.plan.filter.state_db)
            .load()
            .await?
            .and_then(|forward| forward.reverse)
            .context("the forward migration's reverse point vanished from the new cluster")
    }

    /// Relaxes, on the old source, what would break a replay (DESIGN rule 4): each unique or
    /// TTL index is replaced by its relaxed form, clustered expiry is switched off. Each index
    /// is dropped before its relaxed form is built, so a crash in between leaves it missing,
    /// which the restore at commit builds exactly; running this again finds nothing to do.
    pub(super) async fn relax_in_place(&self) -> Result<()> {
        let old_source = catalog::list_namespaces(&self.destination, &self.plan.filter).await?;
        for spec in old_source.iter().filter(|s| s.kind == Kind::Collection) {
            let database = self.destination.database(&spec.db);
            if spec.is_capped() {
                // Replayed inserts would trim on the old source's own schedule; uncapped, it
                // takes them all, and the commit rebuilds it capped from the new cluster.
                uncap(&self.destination, &spec.db, &spec.name).await?;
                self.progress.checkpointed();
                continue;
            }
            for index in spec
                .indexes
                .iter()
                .filter(|i| !catalog::is_implicit_index(i) && catalog::relax_index(i).is_some())
            {
                let name = index.get_str("name").unwrap_or_default();
                tracing::info!(namespace = %spec.ns(), index = name, "relaxing on the old source while changes flow back");
                match majority::command(
                    &database,
                    doc! { "dropIndexes": &spec.name, "index": name },
                )
                .await
                {
                    Err(e) if !already(&e, Already::Dropped) => {
                        return Err(e)
                            .with_context(|| format!("relaxing index {name} of {}", spec.ns()))
                    }
                    _ => {}
                }
                indexes::build(
                    &self.destination,
                    &spec.db,
                    &spec.name,
                    std::slice::from_ref(index),
                    Build::Relaxed,
                )
                .await?;
            }
            if spec.options.contains_key("expireAfterSeconds") {
                majority::command(
                    &database,
                    doc! { "collMod": &spec.name, "expireAfterSeconds": "off" },
                )
                .await
                .with_context(|| {
                    format!(
                        "switching off the expiry of {} while changes flow back",
                        spec.ns()
                    )
                })?;
            }
            self.progress.checkpointed();
        }
        Ok(())
    }

    /// Lifts the user-write block the forward commit left on the old source, so the
    /// application can write there again once the reverse is COMMITTED.
    pub(super) async fn reopen_old_source(&self) -> Result<()> {
        let forward = StateStore::new(&self.source, &self.plan.filter.state_db)
            .load()
            .await?;
        let blocked = forward
            .and_then(|f| f.commit)
            .is_some_and(|c| c.writes_open.is_none());
        if !blocked {
            return Ok(());
        }
        let lifted = majority::self_confirming(
            &self.destination.database("admin"),
            doc! { "setUserWriteBlockMode": 1, "global": false },
        )
        .await;
        match lifted {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, &[COMMAND_NOT_FOUND]) => Ok(()),
            Err(e) => Err(e.context("lifting the write block on the old source (db.adminCommand({setUserWriteBlockMode: 1, global: false}))")),
        }
    }
}

/// Replaces a capped collection of the old source by an uncapped copy of its documents (in
/// natural order, by `$out` into a scratch collection and one rename over the original). A
/// crash before the rename leaves the scratch collection, which the next attempt replaces.
async fn uncap(old_source: &Client, db: &str, name: &str) -> Result<()> {
    let database = old_source.database(db);
    let scratch = format!("{name}{UNCAPPED_SUFFIX}");
    tracing::info!(namespace = %format!("{db}.{name}"), "uncapping on the old source while changes flow back");
    database
        .run_command(doc! { "aggregate": name, "pipeline": [{ "$out": &scratch }], "cursor": {} })
        .await
        .with_context(|| format!("copying capped {db}.{name} into an uncapped collection"))?;
    copy::swap_in(old_source, db, &scratch, name)
        .await
        .with_context(|| format!("putting uncapped {db}.{name} in place"))
}

/// Suffix of the scratch collection a capped collection is uncapped in.
const UNCAPPED_SUFFIX: &str = ".__ferry_uncapped";

/// The reverse point of a forward migration at COMMITTED: the destination's latest write (every
/// change applied and every constraint restored, so it equals the source) and the incarnation
/// of each included namespace it holds.
pub(super) async fn reverse_point(
    destination: &Client,
    filter: &NamespaceFilter,
) -> Result<ReversePoint> {
    let time = clock::read(destination)
        .await
        .context("reading the destination's latest write time for --reversible")?
        .last_write;
    let mut incarnations = Incarnations::default();
    for spec in catalog::list_namespaces(destination, filter).await? {
        if let Some(Bson::Binary(uuid)) = &spec.uuid {
            incarnations.hold(&spec.ns(), uuid.bytes.clone());
        }
    }
    Ok(ReversePoint { time, incarnations })
}
