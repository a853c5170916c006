//! The privileges each end needs, proven by running what the migration will run: read-only on
//! the source, with a scratch collection in the state database on the destination.

use futures_util::StreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;

use crate::catalog::{CollectionSpec, Kind};
use crate::explain;
use crate::preflight::report::Check;
use crate::server_error::{self, UNAUTHORIZED};

/// Runs one probe; a missing privilege names the action (the check's fix names the roles).
async fn probe<T, E: Into<anyhow::Error>>(
    what: &str,
    action: &str,
    operation: impl std::future::IntoFuture<Output = Result<T, E>>,
) -> Result<(), String> {
    match operation.await.map_err(Into::into) {
        Ok(_) => Ok(()),
        Err(e) if server_error::code_of(&e) == Some(UNAUTHORIZED) => {
            Err(format!("not allowed to {what} (missing action {action})"))
        }
        Err(e) => Err(format!("could not {what}: {}", explain::error(&e))),
    }
}

/// Collections whose read privilege is probed at the same time.
const PROBES_AT_ONCE: usize = 16;

const SOURCE_ROLES: &str = "the roles readAnyDatabase and clusterMonitor";

/// Proves the source privileges by running what the migration will run, read-only.
pub async fn source_privileges(source: &Client, included: &[CollectionSpec]) -> Check {
    const ID: &str = "source.privileges";
    let mut problems = Vec::new();
    if let Err(p) = probe(
        "list the databases",
        "listDatabases",
        source.list_database_names(),
    )
    .await
    {
        problems.push(p);
    }
    if let Err(p) = probe(
        "read the server status",
        "serverStatus",
        source
            .database("admin")
            .run_command(doc! { "serverStatus": 1 }),
    )
    .await
    {
        problems.push(p);
    }
    if let Err(p) = probe(
        "open a change stream on the cluster",
        "changeStream",
        source.watch(),
    )
    .await
    {
        problems.push(p);
    }
    // A point read by `_id` per collection proves the privilege without scanning on any
    // server; a few at a time, so that thousands of collections take a few round trips each.
    let collections: Vec<&CollectionSpec> = included
        .iter()
        .filter(|s| s.kind == Kind::Collection)
        .collect();
    let collections = &collections;
    let unreadable = futures_util::stream::iter(0..collections.len())
        .map(|at| async move {
            let spec = collections[at];
            let collection = source
                .database(&spec.db)
                .collection::<RawDocumentBuf>(&spec.name);
            let read = collection.find_one(doc! { "_id": Bson::MinKey });
            probe(&format!("read {}", spec.ns()), "find", read).await
        })
        .buffered(PROBES_AT_ONCE)
        .filter_map(|read| std::future::ready(read.err()))
        .next()
        .await;
    problems.extend(unreadable);
    if problems.is_empty() {
        Check::pass(ID, format!("can list databases, read server status, open a change stream and read all {} included collections", included.len()))
    } else {
        Check::fail(
            ID,
            problems.join("; "),
            format!("grant the source user {SOURCE_ROLES}"),
        )
    }
}

const DESTINATION_ROLES: &str =
    "the roles readWriteAnyDatabase and dbAdminAnyDatabase (or restore)";

/// Proves the destination privileges with a scratch collection in the state database, which it
/// removes again: create a collection and an index, write, and drop.
pub async fn destination_privileges(destination: &Client, state_db: &str) -> Check {
    const ID: &str = "destination.privileges";
    let db = destination.database(state_db);
    let probe_coll = db.collection::<Document>("preflight_probe");
    let steps = async {
        probe(
            "create collections",
            "createCollection",
            db.create_collection("preflight_probe"),
        )
        .await?;
        probe(
            "create indexes",
            "createIndex",
            crate::majority::command(
                &db,
                doc! { "createIndexes": "preflight_probe", "indexes": [{ "key": { "probe": 1 }, "name": "probe_1" }] },
            ),
        )
        .await?;
        probe(
            "write documents",
            "insert",
            probe_coll.insert_one(doc! { "probe": 1 }),
        )
        .await?;
        // Every copy and change write bypasses validation (a replay passes through states a
        // validator may refuse), which `readWrite` alone does not allow.
        probe(
            "write documents past validation",
            "bypassDocumentValidation",
            probe_coll
                .insert_one(doc! { "probe": 2 })
                .bypass_document_validation(true),
        )
        .await?;
        probe("drop collections", "dropCollection", probe_coll.drop()).await
    };
    let result = steps.await;
    let _ = probe_coll.drop().await;
    match result {
        Ok(()) => Check::pass(
            ID,
            "can create collections and indexes, write (past validation) and drop",
        ),
        Err(problem) => Check::fail(
            ID,
            problem,
            format!("grant the destination user {DESTINATION_ROLES}"),
        ),
    }
}
