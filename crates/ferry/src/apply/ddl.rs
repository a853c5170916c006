//! Catalog changes (DDL) replayed on the destination: create, drop, rename, createIndexes,
//! dropIndexes and collMod, each only when the destination holds the incarnation it happened to
//! (see `incarnations`), with constraints relaxed as during the copy. A rename that cannot be
//! replayed (the copy saw the collections in between) re-copies the target from the source.

use anyhow::{bail, Context, Result};
use mongodb::bson::{doc, Bson, Document};

use super::Applier;
use crate::catalog::{self, Kind};
use crate::changes::{ChangeEvent, Op};
use crate::copy;
use crate::server_error::{
    is_code, INDEX_ALREADY_EXISTS, INDEX_KEY_SPECS_CONFLICT, INDEX_NOT_FOUND,
    INDEX_OPTIONS_CONFLICT, NAMESPACE_EXISTS, NAMESPACE_NOT_FOUND,
};

impl Applier {
    pub(super) async fn apply_catalog_change(&mut self, event: &ChangeEvent) -> Result<()> {
        let Some(coll) = event.coll.as_deref() else {
            // dropDatabase: the server reports a drop for each collection first, and those
            // carry the UUIDs that tell which incarnation to drop.
            return Ok(());
        };
        if event.op == Op::Rename {
            return self.rename(event, coll).await;
        }
        if !self.filter.wants(&event.db, coll) {
            return Ok(());
        }
        let ns = event.ns();
        let uuid = event.collection_uuid.as_ref();
        if event.op == Op::Create {
            return self.create(event, coll).await;
        }
        if !self.incarnations.applies(&ns, uuid) {
            return Ok(());
        }
        let database = self.destination.database(&event.db);
        match &event.op {
            Op::Drop => {
                ignore(
                    database
                        .collection::<Document>(coll)
                        .drop()
                        .await
                        .map_err(Into::into),
                    &[NAMESPACE_NOT_FOUND],
                )
                .with_context(|| format!("dropping {ns} on the destination"))?;
                self.incarnations.release(&ns);
            }
            Op::CreateIndexes => {
                let indexes: Vec<Document> = description_indexes(event)?
                    .iter()
                    .map(|spec| catalog::relax_index(spec).unwrap_or_else(|| spec.clone()))
                    .collect();
                ignore(
                    database
                        .run_command(doc! { "createIndexes": coll, "indexes": indexes })
                        .await
                        .map_err(Into::into),
                    &[
                        INDEX_ALREADY_EXISTS,
                        INDEX_OPTIONS_CONFLICT,
                        INDEX_KEY_SPECS_CONFLICT,
                    ],
                )
                .with_context(|| format!("creating an index on {ns} on the destination"))?;
            }
            Op::DropIndexes => {
                for spec in description_indexes(event)? {
                    let name = spec.get_str("name").unwrap_or_default();
                    ignore(
                        database
                            .run_command(doc! { "dropIndexes": coll, "index": name })
                            .await
                            .map_err(Into::into),
                        &[INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND],
                    )
                    .with_context(|| format!("dropping index {name} of {ns} on the destination"))?;
                }
            }
            Op::Modify => {
                let description: Document = event.document("operationDescription")?.try_into()?;
                let relaxed = catalog::relax_coll_mod(&description);
                if !relaxed.is_empty() {
                    let mut command = doc! { "collMod": coll };
                    command.extend(relaxed);
                    ignore(
                        database.run_command(command).await.map_err(Into::into),
                        &[NAMESPACE_NOT_FOUND, INDEX_NOT_FOUND],
                    )
                    .with_context(|| format!("modifying {ns} on the destination"))?;
                }
            }
            Op::Invalidate => {
                bail!("the source's change stream was invalidated at {ns}; restart the migration")
            }
            Op::Other(name) => {
                tracing::warn!(event = %name, namespace = %ns, "ignoring a change event Ferry does not replay");
            }
            Op::Create | Op::Rename | Op::DropDatabase => {}
            Op::Insert | Op::Update | Op::Replace | Op::Delete => {
                bail!("a document change reached the catalog path")
            }
        }
        Ok(())
    }

    async fn create(&mut self, event: &ChangeEvent, coll: &str) -> Result<()> {
        let ns = event.ns();
        let ns_type = event.raw.get_str("nsType").unwrap_or("collection");
        if ns_type == "timeseries" {
            tracing::warn!(namespace = %ns, "time-series collections are not migrated");
            return Ok(());
        }
        if let Some(uuid) = &event.collection_uuid {
            if !self.incarnations.needs_create(&ns) {
                return Ok(());
            }
            self.incarnations.hold(&ns, uuid.clone());
        }
        let description: Document = event.document("operationDescription")?.try_into()?;
        let mut command = doc! { "create": coll };
        if ns_type == "view" {
            command.extend(description);
        } else {
            command.extend(catalog::relax_collection_options(&description));
        }
        ignore(
            self.destination
                .database(&event.db)
                .run_command(command)
                .await
                .map_err(Into::into),
            &[NAMESPACE_EXISTS],
        )
        .with_context(|| format!("creating {ns} on the destination"))
    }

    async fn rename(&mut self, event: &ChangeEvent, coll: &str) -> Result<()> {
        let (to_db, to_coll) = event.rename_target()?;
        let from_ns = event.ns();
        let to_ns = format!("{to_db}.{to_coll}");
        let from_wanted = self.filter.wants(&event.db, coll);
        let to_wanted = self.filter.wants(&to_db, &to_coll);
        let Some(uuid) = event.collection_uuid.clone() else {
            bail!("the rename event of {from_ns} has no collection UUID (showExpandedEvents is required)");
        };
        if from_wanted && self.incarnations.applies(&from_ns, Some(&uuid)) {
            if to_wanted && to_db == event.db {
                let renamed = self
                    .destination
                    .database("admin")
                    .run_command(doc! {
                        "renameCollection": &from_ns, "to": &to_ns, "dropTarget": true,
                    })
                    .await
                    .map_err(anyhow::Error::from);
                self.incarnations.release(&from_ns);
                match renamed {
                    Ok(_) => self.incarnations.hold(&to_ns, uuid),
                    // Replayed after a restart, the rename may already be done: the
                    // destination no longer has the source of it. Copy the target again.
                    Err(e) if is_code(&e, &[NAMESPACE_NOT_FOUND]) => {
                        self.recopy(&to_db, &to_coll).await?
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("renaming {from_ns} to {to_ns} on the destination")
                        })
                    }
                }
                return Ok(());
            }
            ignore(
                self.destination
                    .database(&event.db)
                    .collection::<Document>(coll)
                    .drop()
                    .await
                    .map_err(Into::into),
                &[NAMESPACE_NOT_FOUND],
            )?;
            self.incarnations.release(&from_ns);
        }
        if to_wanted && self.incarnations.held(&to_ns) != Some(&uuid) {
            self.recopy(&to_db, &to_coll).await?;
        }
        Ok(())
    }

    /// Replaces the destination's `db.coll` with a fresh copy of the source's current one.
    async fn recopy(&mut self, db: &str, coll: &str) -> Result<()> {
        let ns = format!("{db}.{coll}");
        tracing::info!(namespace = %ns, "copying a renamed collection again from the source");
        ignore(
            self.destination
                .database(db)
                .collection::<Document>(coll)
                .drop()
                .await
                .map_err(Into::into),
            &[NAMESPACE_NOT_FOUND],
        )?;
        self.incarnations.release(&ns);
        let Some(spec) = catalog::describe_one(&self.source, db, coll).await? else {
            return Ok(());
        };
        copy::create_namespace(&self.destination, &spec).await?;
        if spec.kind == Kind::Collection {
            copy::copy_documents(
                &self.source,
                &self.destination,
                &spec,
                coll,
                &Default::default(),
                &self.progress,
                None,
                None,
            )
            .await?;
            copy::build_indexes(&self.destination, &spec).await?;
            if let Some(Bson::Binary(uuid)) = &spec.uuid {
                self.incarnations.hold(&ns, uuid.bytes.clone());
            }
        }
        Ok(())
    }
}

fn description_indexes(event: &ChangeEvent) -> Result<Vec<Document>> {
    let description: Document = event.document("operationDescription")?.try_into()?;
    Ok(description
        .get_array("indexes")
        .map(|indexes| {
            indexes
                .iter()
                .filter_map(|i| i.as_document().cloned())
                .collect()
        })
        .unwrap_or_default())
}

/// Treats the given server error codes as success (the effect is already there).
fn ignore<T>(result: Result<T>, codes: &[i32]) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_code(&e, codes) => Ok(()),
        Err(e) => Err(e),
    }
}
