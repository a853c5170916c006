//! Following catalog changes on a source without expanded change events (before 6.0). Its
//! change stream reports drops, renames and `dropDatabase`, but no `create`, `createIndexes`,
//! `dropIndexes` or `modify`, and no collection UUID. So the catalog is reconciled instead:
//! while changes are applied, every few seconds, the source's current catalog is compared with
//! the destination's and each difference is applied (a collection created with its options, an
//! index built or dropped, a validator changed, a view created or redefined); and at commit, with
//! every change applied and the source quiescent, exactly: a namespace the destination holds and
//! the source does not is dropped, and one whose options cannot change in place (a collation, a
//! clustered index, a view become a collection) or that is missing is copied again. The source's
//! catalog may be ahead of the changes applied so far; applying its state early is harmless,
//! since every change after it is still replayed in order, and the commit settles the rest.

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, Document, Timestamp};

use super::ddl::view_definition;
use super::Applier;
use crate::catalog::indexes::{self, Build};
use crate::catalog::{self, CollectionSpec, Kind};
use crate::copy;
use crate::majority;

/// When the catalog is reconciled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconcile {
    /// While changes are applied: what can be changed in place, nothing dropped.
    WhileSyncing,
    /// At commit, every change up to the commit point (`at`) applied: exactly.
    AtCommit(Timestamp),
}

/// Collection options `collMod` can change.
const MUTABLE_OPTIONS: [&str; 3] = ["validator", "validationLevel", "validationAction"];

/// The value of a mutable option on a collection created without it.
fn absent(option: &str) -> Bson {
    match option {
        "validationLevel" => Bson::String("strict".into()),
        "validationAction" => Bson::String("error".into()),
        _ => Bson::Document(Document::new()),
    }
}

/// Collection options fixed at creation (beyond those relaxed while syncing, which the commit
/// restores): a collection that differs in one is copied again at commit.
const FIXED_OPTIONS: [&str; 2] = ["collation", "clusteredIndex"];

impl Applier {
    /// Applies the differences between the source's catalog and the destination's.
    pub async fn reconcile(&mut self, when: Reconcile) -> Result<()> {
        let source = catalog::list_namespaces(&self.source, &self.filter)
            .await
            .context("reading the source's catalog to reconcile it")?;
        let destination = catalog::list_namespaces(&self.destination, &self.filter)
            .await
            .context("reading the destination's catalog to reconcile it")?;
        for spec in &source {
            let there = destination
                .iter()
                .find(|d| d.db == spec.db && d.name == spec.name);
            if spec.is_collated() {
                self.collated.insert(spec.ns());
            }
            match (spec.kind, there) {
                // Not migrated (the pre-flight says so).
                (Kind::Timeseries, _) => {}
                (Kind::View, Some(view))
                    if view.kind == Kind::View
                        && view_definition(&view.options) == view_definition(&spec.options) => {}
                // Writes to the collection may still be on their way: settled at commit.
                (Kind::View, Some(d))
                    if d.kind != Kind::View && when == Reconcile::WhileSyncing => {}
                (Kind::View, there) => {
                    tracing::info!(namespace = %spec.ns(), "reconciling a view with the source's");
                    if there.is_some() {
                        majority::drop(&self.destination.database(&spec.db), &spec.name).await?;
                    }
                    copy::create_namespace(&self.destination, spec).await?;
                }
                (Kind::Collection, there) => {
                    let at_commit = matches!(when, Reconcile::AtCommit(_));
                    let replace = match there {
                        None => true,
                        Some(d) => {
                            d.kind != Kind::Collection
                                || fixed_options_differ(spec, d)
                                // At commit, exactly: `collMod` cannot take an option away, and
                                // servers spell out defaults after it differently.
                                || (at_commit && mutable_options_differ(spec, d))
                        }
                    };
                    match (there, when) {
                        (Some(d), _) if !replace => {
                            self.reconcile_options(spec, d).await?;
                            self.reconcile_indexes(spec, &d.indexes).await?;
                        }
                        (_, Reconcile::AtCommit(at)) => {
                            self.recopy(&spec.db, &spec.name, at).await?;
                        }
                        // A view holds no documents: one the source replaced by a collection
                        // goes now, before the collection's writes arrive.
                        (_, Reconcile::WhileSyncing)
                            if there.is_none_or(|d| d.kind == Kind::View) =>
                        {
                            tracing::info!(namespace = %spec.ns(), "creating a collection the source created");
                            if there.is_some() {
                                majority::drop(&self.destination.database(&spec.db), &spec.name)
                                    .await?;
                            }
                            copy::create_namespace(&self.destination, spec).await?;
                            self.reconcile_indexes(spec, &[]).await?;
                        }
                        // Settled at commit: replacing it now would lose the changes applied.
                        (_, Reconcile::WhileSyncing) => {}
                    }
                }
            }
        }
        if matches!(when, Reconcile::AtCommit(_)) {
            for extra in destination
                .iter()
                .filter(|d| !source.iter().any(|s| s.db == d.db && s.name == d.name))
            {
                tracing::info!(namespace = %extra.ns(), "dropping a namespace the source no longer has");
                majority::drop(&self.destination.database(&extra.db), &extra.name).await?;
                self.incarnations.release(&extra.ns());
            }
        }
        Ok(())
    }

    /// Sets the validator and its level and action where they differ from the source's.
    async fn reconcile_options(&self, spec: &CollectionSpec, there: &CollectionSpec) -> Result<()> {
        let mut command = doc! { "collMod": &spec.name };
        for option in MUTABLE_OPTIONS {
            let wanted = spec
                .options
                .get(option)
                .cloned()
                .unwrap_or_else(|| absent(option));
            let held = there
                .options
                .get(option)
                .cloned()
                .unwrap_or_else(|| absent(option));
            if wanted != held {
                command.insert(option, wanted);
            }
        }
        if command.len() == 1 {
            return Ok(());
        }
        tracing::info!(namespace = %spec.ns(), "reconciling collection options with the source's");
        majority::command(&self.destination.database(&spec.db), command)
            .await
            .with_context(|| format!("changing the options of {} on the destination", spec.ns()))?;
        Ok(())
    }

    /// Builds (relaxed) the source's indexes the destination lacks by name or holds on another
    /// key, and drops the destination's indexes the source no longer has.
    async fn reconcile_indexes(&self, spec: &CollectionSpec, held: &[Document]) -> Result<()> {
        let database = self.destination.database(&spec.db);
        let name = |i: &Document| i.get_str("name").unwrap_or_default().to_string();
        for index in held.iter().filter(|i| !catalog::is_implicit_index(i)) {
            let wanted = spec.indexes.iter().find(|s| name(s) == name(index));
            if wanted.is_none_or(|s| !same_index(s, index)) {
                tracing::info!(namespace = %spec.ns(), index = %name(index), "dropping an index the source no longer has");
                let dropped = majority::command(
                    &database,
                    doc! { "dropIndexes": &spec.name, "index": name(index) },
                )
                .await;
                if let Err(e) = dropped {
                    if !crate::server_error::already(&e, crate::server_error::Already::Dropped) {
                        return Err(e);
                    }
                }
            }
        }
        let missing: Vec<Document> = spec
            .indexes
            .iter()
            .filter(|s| !held.iter().any(|h| name(h) == name(s) && same_index(s, h)))
            .cloned()
            .collect();
        if missing.iter().any(|i| !catalog::is_implicit_index(i)) {
            indexes::build(
                &self.destination,
                &spec.db,
                &spec.name,
                &missing,
                Build::Relaxed,
            )
            .await?;
        }
        Ok(())
    }
}

/// Index options that make two indexes of one name and key different indexes (uniqueness and
/// expiry are relaxed while syncing and restored at commit).
const INDEX_OPTIONS: [&str; 6] = [
    "key",
    "partialFilterExpression",
    "sparse",
    "hidden",
    "collation",
    "weights",
];

/// Whether the destination's index is the source's, as far as it is built while syncing.
fn same_index(source: &Document, destination: &Document) -> bool {
    INDEX_OPTIONS.iter().all(|option| {
        let held = destination.get(*option);
        match (source.get(*option), held) {
            // Servers omit `hidden: false` and `sparse: false`.
            (None, Some(Bson::Boolean(false))) | (Some(Bson::Boolean(false)), None) => true,
            (wanted, held) => wanted == held,
        }
    })
}

/// Whether the two sides' validator options differ as listed (not only in effect).
fn mutable_options_differ(source: &CollectionSpec, destination: &CollectionSpec) -> bool {
    MUTABLE_OPTIONS
        .iter()
        .any(|option| source.options.get(*option) != destination.options.get(*option))
}

/// Whether a collection's options fixed at creation differ between the two sides.
fn fixed_options_differ(source: &CollectionSpec, destination: &CollectionSpec) -> bool {
    FIXED_OPTIONS
        .iter()
        .any(|option| source.options.get(*option) != destination.options.get(*option))
}
