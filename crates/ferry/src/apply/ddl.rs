//! Catalog changes (DDL) replayed on the destination: create, drop, rename, createIndexes,
//! dropIndexes and collMod, each only when the destination holds the incarnation it happened to
//! (see `incarnations`), with constraints relaxed as during the copy. A rename that cannot be
//! replayed (the copy saw the collections in between) re-copies the target from the source.

use anyhow::{bail, Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};

use super::Applier;
use crate::catalog::indexes::{self, Build};
use crate::catalog::{self, Kind};
use crate::changes::{ChangeEvent, Op};
use crate::copy;
use crate::majority;
use crate::namespace::Namespace;
use crate::server_error::{already, is_code, Already, NAMESPACE_NOT_FOUND};

impl Applier {
    pub(super) async fn apply_catalog_change(&mut self, event: &ChangeEvent) -> Result<()> {
        let Some(coll) = event.coll.as_deref() else {
            // dropDatabase: the server reports a drop for each collection first, and those
            // carry the UUIDs that tell which incarnation to drop; views go with it silently.
            if event.op == Op::DropDatabase {
                return self.drop_views(&event.db).await;
            }
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
        if event.op == Op::Modify && is_view_change(event) {
            return self.modify_view(event, coll).await;
        }
        if !self.incarnations.applies(&ns, uuid) {
            return Ok(());
        }
        let database = self.destination.database(&event.db);
        match &event.op {
            Op::Drop => {
                majority::drop(&database, coll)
                    .await
                    .with_context(|| format!("dropping {ns} on the destination"))?;
                self.incarnations.release(&ns);
            }
            Op::CreateIndexes => {
                indexes::build(
                    &self.destination,
                    &event.db,
                    coll,
                    &description_indexes(event)?,
                    Build::Relaxed,
                )
                .await
                .with_context(|| format!("creating an index on {ns} on the destination"))?;
            }
            Op::DropIndexes => {
                for spec in description_indexes(event)? {
                    let name = spec.get_str("name").unwrap_or_default();
                    ignore(
                        majority::command(&database, doc! { "dropIndexes": coll, "index": name })
                            .await,
                        Already::Dropped,
                    )
                    .with_context(|| format!("dropping index {name} of {ns} on the destination"))?;
                }
            }
            Op::Modify => {
                let description: Document = event.document("operationDescription")?.try_into()?;
                let change = catalog::relax_coll_mod(&description);
                if !change.is_empty() {
                    let mut command = doc! { "collMod": coll };
                    command.extend(change);
                    ignore(
                        majority::command(&database, command).await,
                        Already::Dropped,
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
        if catalog::has_collation(&description) {
            self.collated.insert(ns.clone());
        }
        let mut command = doc! { "create": coll };
        if ns_type == "view" {
            command.extend(view_definition(&description));
        } else {
            command.extend(catalog::relax_collection_options(&description));
        }
        ignore(
            majority::command(&self.destination.database(&event.db), command).await,
            Already::Created,
        )
        .with_context(|| format!("creating {ns} on the destination"))
    }

    async fn rename(&mut self, event: &ChangeEvent, coll: &str) -> Result<()> {
        let (to_db, to_coll) = event.rename_target()?;
        let from_ns = event.ns();
        let to_ns = Namespace::new(&to_db, &to_coll).to_string();
        if self.collated.contains(&from_ns) {
            self.collated.insert(to_ns.clone());
        }
        let from_wanted = self.filter.wants(&event.db, coll);
        let to_wanted = self.filter.wants(&to_db, &to_coll);
        let Some(uuid) = event.collection_uuid.clone() else {
            // Before 6.0 a rename carries no UUID, so whether the destination holds the renamed
            // incarnation is unknown: rather than guess, the target is copied again.
            if from_wanted {
                majority::drop(&self.destination.database(&event.db), coll)
                    .await
                    .with_context(|| format!("dropping {from_ns} on the destination"))?;
                self.incarnations.release(&from_ns);
            }
            if to_wanted {
                self.recopy(&to_db, &to_coll, event.cluster_time).await?;
            }
            return Ok(());
        };
        if from_wanted && self.incarnations.applies(&from_ns, Some(&uuid)) {
            if to_wanted && to_db == event.db {
                let renamed = majority::command(
                    &self.destination.database("admin"),
                    doc! { "renameCollection": &from_ns, "to": &to_ns, "dropTarget": true },
                )
                .await;
                self.incarnations.release(&from_ns);
                match renamed {
                    Ok(_) => self.incarnations.hold(&to_ns, uuid),
                    // Replayed after a restart, the rename may already be done: the
                    // destination no longer has the source of it. Copy the target again.
                    Err(e) if is_code(&e, &[NAMESPACE_NOT_FOUND]) => {
                        self.recopy(&to_db, &to_coll, event.cluster_time).await?
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("renaming {from_ns} to {to_ns} on the destination")
                        })
                    }
                }
                return Ok(());
            }
            majority::drop(&self.destination.database(&event.db), coll)
                .await
                .with_context(|| format!("dropping {from_ns} on the destination"))?;
            self.incarnations.release(&from_ns);
        }
        if to_wanted && self.incarnations.held(&to_ns) != Some(&uuid) {
            self.recopy(&to_db, &to_coll, event.cluster_time).await?;
        }
        Ok(())
    }

    /// Replaces the destination's `db.coll` with a fresh copy of the source's current one, read
    /// at or after `at` (the rename or the commit that asked for it). A collection is copied
    /// into a scratch collection and renamed over the target only once complete, so a crash or
    /// fault midway leaves the target as it was, and whatever asked for the copy asks again.
    pub(super) async fn recopy(&mut self, db: &str, coll: &str, at: Timestamp) -> Result<()> {
        let ns = Namespace::new(db, coll).to_string();
        let database = self.destination.database(db);
        let Some(spec) = catalog::describe_one(&self.source, db, coll).await? else {
            majority::drop(&database, coll)
                .await
                .with_context(|| format!("dropping {ns} on the destination"))?;
            self.incarnations.release(&ns);
            return Ok(());
        };
        tracing::info!(namespace = %ns, "copying a collection again from the source");
        if spec.is_collated() {
            self.collated.insert(ns.clone());
        }
        if spec.kind != Kind::Collection {
            majority::drop(&database, coll)
                .await
                .with_context(|| format!("dropping {ns} on the destination"))?;
            self.incarnations.release(&ns);
            return copy::create_namespace(&self.destination, &spec).await;
        }
        copy::replace_with_copy(
            &self.source,
            &self.destination,
            &self.progress,
            &spec,
            at,
            RECOPY_SUFFIX,
            Build::Relaxed,
        )
        .await?;
        self.incarnations.release(&ns);
        if let Some(Bson::Binary(uuid)) = &spec.uuid {
            self.incarnations.hold(&ns, uuid.bytes.clone());
        }
        Ok(())
    }
}

/// Suffix of the scratch collection a collection is copied again in.
const RECOPY_SUFFIX: &str = ".__ferry_recopy";

/// Whether a `modify` event changed a view: its description is the view's definition, or (on
/// servers that describe the change by the state before it) that state was a view.
fn is_view_change(event: &ChangeEvent) -> bool {
    let described = event
        .document("operationDescription")
        .is_ok_and(|d| d.get("viewOn").ok().flatten().is_some());
    let was_view = event
        .raw
        .get_document("stateBeforeChange")
        .and_then(|state| state.get_document("collectionOptions"))
        .is_ok_and(|options| options.get("viewOn").ok().flatten().is_some());
    described || was_view
}

impl Applier {
    /// Replays a view's new definition. The event holds the whole definition, collation
    /// included, but `collMod` takes only `viewOn` and `pipeline` (a view's collation cannot
    /// change); where the event does not hold it, the source's current definition is read (a
    /// later change of the view comes with its own event, so the two converge).
    async fn modify_view(&self, event: &ChangeEvent, coll: &str) -> Result<()> {
        let described: Document = event.document("operationDescription")?.try_into()?;
        let definition = if described.contains_key("viewOn") {
            described
        } else {
            match catalog::describe_one(&self.source, &event.db, coll).await? {
                Some(spec) if spec.kind == Kind::View => spec.options,
                // Gone or no longer a view: its drop is still to come in the stream.
                _ => return Ok(()),
            }
        };
        let mut command = doc! { "collMod": coll };
        let mut definition = view_definition(&definition);
        definition.remove("collation");
        command.extend(definition);
        ignore(
            majority::command(&self.destination.database(&event.db), command).await,
            Already::Dropped,
        )
        .with_context(|| format!("modifying view {} on the destination", event.ns()))
    }

    /// Drops the destination's views of database `db` that the migration includes: a
    /// `dropDatabase` removes `system.views` without an event per view. A view the source
    /// created again after the drop comes back with its own `create` event.
    async fn drop_views(&self, db: &str) -> Result<()> {
        let database = self.destination.database(db);
        let views: Vec<Document> = database
            .run_cursor_command(
                doc! { "listCollections": 1, "filter": { "type": "view" }, "nameOnly": true },
            )
            .await
            .with_context(|| format!("listing the views of {db} on the destination"))?
            .try_collect()
            .await?;
        for name in views.iter().filter_map(|v| v.get_str("name").ok()) {
            if self.filter.wants(db, name) {
                majority::drop(&database, name)
                    .await
                    .with_context(|| format!("dropping view {db}.{name} on the destination"))?;
            }
        }
        Ok(())
    }
}

/// A view's definition from an event's description: `viewOn`, `pipeline` (named
/// `viewPipeline` by some servers) and `collation`, and nothing else a description may hold.
pub(super) fn view_definition(description: &Document) -> Document {
    let mut definition = Document::new();
    if let Some(on) = description.get("viewOn") {
        definition.insert("viewOn", on.clone());
    }
    if let Some(pipeline) = description
        .get("pipeline")
        .or_else(|| description.get("viewPipeline"))
    {
        definition.insert("pipeline", pipeline.clone());
    }
    if let Some(collation) = description.get("collation") {
        definition.insert("collation", collation.clone());
    }
    definition
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

/// Treats a refusal that says the effect is already there as success.
fn ignore<T>(result: Result<T>, what: Already) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if already(&e, what) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_views_definition_is_read_from_either_shape_of_event() {
        let want =
            doc! { "viewOn": "e", "pipeline": [{ "$limit": 5 }], "collation": { "locale": "fr" } };
        // As mongod describes a view it created: the view's document.
        let mongod =
            doc! { "viewOn": "e", "pipeline": [{ "$limit": 5 }], "collation": { "locale": "fr" } };
        assert_eq!(view_definition(&mongod), want);
        // As the test server describes it: another name for the pipeline, and an idIndex.
        let other = doc! {
            "collation": { "locale": "fr" }, "viewOn": "e", "viewPipeline": [{ "$limit": 5 }],
            "idIndex": { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
        };
        assert_eq!(view_definition(&other), want);
    }
}
