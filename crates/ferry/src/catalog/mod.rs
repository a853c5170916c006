//! The source's catalog: which collections and views exist, with their options and index specs
//! kept as whole BSON documents so that no option is lost on the way to the destination; what
//! they weigh (`sizes`), which parts would break a replay and how they are relaxed while syncing
//! (`relax`, DESIGN rule 4), and how their indexes are built (`indexes`).

pub mod indexes;
pub mod relax;
pub mod sizes;
pub mod ttl;

pub use relax::{has_collation, relax_coll_mod, relax_collection_options, relax_index};

use std::collections::HashMap;

use anyhow::{Context, Result};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, Document};
use mongodb::{Client, ClientSession};

use crate::filter::NamespaceFilter;
use crate::namespace::Namespace;
use crate::server_error::{is_code, NAMESPACE_NOT_FOUND};

/// What a namespace is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Collection,
    View,
    Timeseries,
}

/// One collection or view of the source, as `listCollections` and `listIndexes` describe it.
#[derive(Clone, Debug)]
pub struct CollectionSpec {
    pub db: String,
    pub name: String,
    pub kind: Kind,
    /// The `options` document of `listCollections`, exactly as the server reported it.
    pub options: Document,
    /// The source collection's UUID (views have none).
    pub uuid: Option<Bson>,
    /// `listIndexes` entries, in the server's order (empty for views).
    pub indexes: Vec<Document>,
}

impl CollectionSpec {
    /// Collection `d.c` with `options` and `indexes`, for tests that need only its shape.
    #[cfg(test)]
    pub fn shaped(options: Document, indexes: Vec<Document>) -> Self {
        CollectionSpec {
            db: "d".into(),
            name: "c".into(),
            kind: Kind::Collection,
            options,
            uuid: None,
            indexes,
        }
    }

    pub fn ns(&self) -> String {
        self.namespace().to_string()
    }

    pub fn namespace(&self) -> Namespace {
        Namespace::new(&self.db, &self.name)
    }

    pub fn is_capped(&self) -> bool {
        self.options.get_bool("capped").unwrap_or(false)
    }

    /// Whether the namespace compares strings by a collation other than the simple one.
    pub fn is_collated(&self) -> bool {
        has_collation(&self.options)
    }

    /// The `create` command that makes this namespace, relaxed for syncing or exact for commit.
    pub fn create_command(&self, relaxed: bool) -> Document {
        let mut cmd = doc! { "create": &self.name };
        let options = if relaxed {
            relax_collection_options(&self.options)
        } else {
            self.options.clone()
        };
        cmd.extend(options);
        cmd
    }
}

/// Lists every migrated collection and view of the source, with options and indexes.
pub async fn list_namespaces(
    client: &Client,
    filter: &NamespaceFilter,
) -> Result<Vec<CollectionSpec>> {
    list(client, filter, Indexes::Listed).await
}

/// Lists every migrated collection and view of the source with its options, but no indexes
/// (each spec's `indexes` is empty): for the pre-flight's checks, which read none, where
/// listing them is a round trip per collection (20,000 of them, measured).
pub async fn list_namespaces_unindexed(
    client: &Client,
    filter: &NamespaceFilter,
) -> Result<Vec<CollectionSpec>> {
    list(client, filter, Indexes::Left).await
}

/// Whether a listing lists each collection's indexes.
#[derive(Clone, Copy, PartialEq)]
enum Indexes {
    Listed,
    Left,
}

async fn list(
    client: &Client,
    filter: &NamespaceFilter,
    indexes: Indexes,
) -> Result<Vec<CollectionSpec>> {
    let mut specs = Vec::new();
    for db in wanted_databases(client, filter).await? {
        for spec in list_database(client, &db, filter, indexes).await? {
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// The databases the filter migrates.
async fn wanted_databases(client: &Client, filter: &NamespaceFilter) -> Result<Vec<String>> {
    let databases = client
        .list_database_names()
        .await
        .context("listing the source's databases")?;
    Ok(databases
        .into_iter()
        .filter(|db| filter.wants_database(db))
        .collect())
}

/// Lists the migrated collections and views of one database.
async fn list_database(
    client: &Client,
    db: &str,
    filter: &NamespaceFilter,
    indexes: Indexes,
) -> Result<Vec<CollectionSpec>> {
    let database = client.database(db);
    let entries: Vec<Document> = database
        .run_cursor_command(doc! { "listCollections": 1 })
        .await
        .with_context(|| format!("listing the collections of database {db:?}"))?
        .try_collect()
        .await
        .with_context(|| format!("listing the collections of database {db:?}"))?;
    let wanted = entries
        .into_iter()
        .filter(|entry| filter.wants(db, entry.get_str("name").unwrap_or_default()));
    // Each collection's indexes are one round trip: thousands of them one after the other
    // took most of a listing.
    let described: Vec<Option<CollectionSpec>> = futures_util::stream::iter(wanted)
        .map(|entry| describe(client, db, entry, indexes))
        .buffered(DESCRIBED_AT_ONCE)
        .try_collect()
        .await?;
    Ok(described.into_iter().flatten().collect())
}

/// Collections whose indexes are listed at the same time.
const DESCRIBED_AT_ONCE: usize = 16;

/// The names of every migrated collection and view of the source, as `(database, name)`: the
/// listing without the options and indexes.
pub async fn list_names(
    client: &Client,
    filter: &NamespaceFilter,
) -> Result<Vec<(String, String)>> {
    let mut names = Vec::new();
    for db in wanted_databases(client, filter).await? {
        let listed = client
            .database(&db)
            .list_collection_names()
            .await
            .with_context(|| format!("listing the collections of database {db:?}"))?;
        for name in listed.into_iter().filter(|name| filter.wants(&db, name)) {
            names.push((db.clone(), name));
        }
    }
    Ok(names)
}

/// The spec of one namespace, or `None` when it does not exist (any more).
pub async fn describe_one(client: &Client, db: &str, name: &str) -> Result<Option<CollectionSpec>> {
    let entries: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! { "listCollections": 1, "filter": { "name": name } })
        .await
        .with_context(|| format!("describing {db}.{name}"))?
        .try_collect()
        .await?;
    match entries.into_iter().next() {
        Some(entry) => describe(client, db, entry, Indexes::Listed).await,
        None => Ok(None),
    }
}

async fn describe(
    client: &Client,
    db: &str,
    entry: Document,
    indexes: Indexes,
) -> Result<Option<CollectionSpec>> {
    let name = entry.get_str("name").unwrap_or_default().to_string();
    let kind = match entry.get_str("type").unwrap_or("collection") {
        "view" => Kind::View,
        "timeseries" => Kind::Timeseries,
        _ => Kind::Collection,
    };
    let options = entry.get_document("options").cloned().unwrap_or_default();
    let uuid = entry
        .get_document("info")
        .ok()
        .and_then(|info| info.get("uuid").cloned());
    let indexes = if kind == Kind::View || indexes == Indexes::Left {
        Vec::new()
    } else {
        match list_indexes(client, db, &name).await {
            Ok(indexes) => indexes,
            Err(e) if is_code(&e, &[NAMESPACE_NOT_FOUND]) => return Ok(None),
            Err(e) => return Err(e),
        }
    };
    Ok(Some(CollectionSpec {
        db: db.to_string(),
        name,
        kind,
        options,
        uuid,
        indexes,
    }))
}

/// The current name of the collection whose UUID is `uuid` in database `db` (a rename within a
/// database keeps the UUID), or `None` when it no longer exists there. Asked in `session`, so
/// that the reads that follow in it see at least this catalog (see `source::reads`).
pub async fn name_of(
    client: &Client,
    session: &mut ClientSession,
    db: &str,
    uuid: &[u8],
) -> Result<Option<String>> {
    let uuid = Binary {
        subtype: BinarySubtype::Uuid,
        bytes: uuid.to_vec(),
    };
    let entry = first_listed(client, session, db, doc! { "info.uuid": uuid })
        .await
        .with_context(|| format!("finding a collection of database {db:?} by its UUID"))?;
    Ok(entry.and_then(|e| e.get_str("name").ok().map(str::to_string)))
}

/// Whether collection `name` of database `db` is the incarnation whose UUID is `uuid`. Asked by
/// name, which a server answers without reading the database's whole catalog, and in
/// `session`, like [`name_of`].
pub async fn holds(
    client: &Client,
    session: &mut ClientSession,
    db: &str,
    name: &str,
    uuid: &[u8],
) -> Result<bool> {
    let held = uuids_of(client, session, db, &[name]).await?;
    Ok(held.get(name).is_some_and(|held| held == uuid))
}

/// The UUID of each collection of database `db` named in `names` (a name that holds no
/// collection, or a view, is left out), in one `listCollections` asked in `session`, like
/// [`name_of`]. One name is asked by equality, which a server answers without reading the
/// database's whole catalog; several by `$in`.
pub async fn uuids_of(
    client: &Client,
    session: &mut ClientSession,
    db: &str,
    names: &[&str],
) -> Result<HashMap<String, Vec<u8>>> {
    let filter = match names {
        [name] => doc! { "name": *name },
        _ => doc! { "name": { "$in": names } },
    };
    let looked_up = async {
        let mut cursor = client
            .database(db)
            .run_cursor_command(doc! { "listCollections": 1, "filter": filter })
            .session(&mut *session)
            .await?;
        let mut held = HashMap::new();
        while let Some(entry) = cursor.next(&mut *session).await.transpose()? {
            let uuid = entry.get_document("info").ok().and_then(|i| i.get("uuid"));
            if let (Ok(name), Some(Bson::Binary(uuid))) = (entry.get_str("name"), uuid) {
                held.insert(name.to_string(), uuid.bytes.clone());
            }
        }
        Ok::<_, mongodb::error::Error>(held)
    };
    looked_up
        .await
        .with_context(|| format!("looking up collections {names:?} of database {db:?}"))
}

/// The first entry `listCollections` gives for `filter` in database `db`, asked in `session`.
async fn first_listed(
    client: &Client,
    session: &mut ClientSession,
    db: &str,
    filter: Document,
) -> Result<Option<Document>> {
    let mut cursor = client
        .database(db)
        .run_cursor_command(doc! { "listCollections": 1, "filter": filter })
        .session(&mut *session)
        .await?;
    Ok(cursor.next(&mut *session).await.transpose()?)
}

/// `listIndexes` of one collection, each spec exactly as the server reports it.
pub async fn list_indexes(client: &Client, db: &str, coll: &str) -> Result<Vec<Document>> {
    let cursor = client
        .database(db)
        .run_cursor_command(doc! { "listIndexes": coll })
        .await
        .map_err(anyhow::Error::from)?;
    Ok(cursor.try_collect().await?)
}

/// Whether an index is built by the server itself (`_id` and clustered indexes).
pub fn is_implicit_index(spec: &Document) -> bool {
    spec.get_str("name") == Ok("_id_") || spec.get_bool("clustered").unwrap_or(false)
}
