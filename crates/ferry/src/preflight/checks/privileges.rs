//! The privileges each end needs, proven by running what the migration will run: read-only on
//! the source, with a scratch collection in the state database on the destination.

use std::collections::HashSet;

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

/// What the source user's privileges already prove readable (`connectionStatus`): reading
/// each of 20,000 collections once was 20,000 reads of the pre-flight's, a fifth of the
/// source's commands in the copy of that many collections.
#[derive(Debug, PartialEq)]
enum Readable {
    /// `find` on every database's collections (`readAnyDatabase`, `root`, ...).
    All,
    /// `find` on every collection of these databases (`read` on a database, ...).
    Databases(HashSet<String>),
    /// No user is logged in: the server checks no access, or refuses everything.
    NoUser,
}

impl Readable {
    fn covers(&self, db: &str) -> bool {
        match self {
            Readable::All => true,
            Readable::Databases(databases) => databases.contains(db),
            Readable::NoUser => false,
        }
    }
}

/// What the logged-in user may read by its privileges; nothing proven when the server does not
/// say.
async fn proven_readable(source: &Client) -> Readable {
    let status = source
        .database("admin")
        .run_command(doc! { "connectionStatus": 1, "showPrivileges": true })
        .await;
    readable_by(
        status
            .as_ref()
            .ok()
            .and_then(|s| s.get_document("authInfo").ok()),
    )
}

/// [`proven_readable`] from a `connectionStatus` reply's `authInfo`.
fn readable_by(auth: Option<&Document>) -> Readable {
    let Some(auth) = auth else {
        return Readable::Databases(HashSet::new());
    };
    if auth
        .get_array("authenticatedUsers")
        .is_ok_and(|users| users.is_empty())
    {
        return Readable::NoUser;
    }
    let mut databases = HashSet::new();
    let privileges = auth.get_array("authenticatedUserPrivileges");
    for privilege in privileges
        .into_iter()
        .flatten()
        .filter_map(Bson::as_document)
    {
        let finds = privilege
            .get_array("actions")
            .is_ok_and(|actions| actions.iter().any(|a| a.as_str() == Some("find")));
        let Ok(resource) = privilege.get_document("resource") else {
            continue;
        };
        if !finds {
            continue;
        }
        if resource.get_bool("anyResource") == Ok(true) {
            return Readable::All;
        }
        // A resource of every collection (not `system.*` ones, which are never migrated) of
        // one database, or of every database when the database is empty too.
        match (resource.get_str("db"), resource.get_str("collection")) {
            (Ok(""), Ok("")) => return Readable::All,
            (Ok(db), Ok("")) => {
                databases.insert(db.to_string());
            }
            _ => {}
        }
    }
    Readable::Databases(databases)
}

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
    // A point read by `_id` proves the privilege without scanning on any server; only the
    // collections the user's privileges do not already cover are read, a few at a time.
    let readable = proven_readable(source).await;
    let mut collections: Vec<&CollectionSpec> = included
        .iter()
        .filter(|s| s.kind == Kind::Collection && !readable.covers(&s.db))
        .collect();
    if readable == Readable::NoUser {
        // With no user, a read that passes means the server checks no access: one is proof.
        collections.truncate(1);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_on_whole_databases_prove_their_collections_readable() {
        let auth = |privileges: Vec<Document>| {
            doc! { "authenticatedUsers": [{ "user": "u", "db": "admin" }], "authenticatedUserPrivileges": privileges }
        };
        let find_on = |db: &str, collection: &str| {
            doc! { "resource": { "db": db, "collection": collection }, "actions": ["find", "listIndexes"] }
        };
        assert_eq!(
            readable_by(Some(&auth(vec![find_on("", "")]))),
            Readable::All
        );
        assert_eq!(
            readable_by(Some(&auth(vec![
                doc! { "resource": { "anyResource": true }, "actions": ["find"] }
            ]))),
            Readable::All
        );
        let some = readable_by(Some(&auth(vec![
            find_on("shop", ""),
            find_on("crm", "people"),
            doc! { "resource": { "db": "", "collection": "" }, "actions": ["insert"] },
        ])));
        assert!(some.covers("shop"));
        assert!(!some.covers("crm"), "one collection proves no other");
        assert!(
            !some.covers("hr"),
            "an action other than find proves nothing"
        );
        let nobody = doc! { "authenticatedUsers": [], "authenticatedUserPrivileges": [] };
        assert_eq!(readable_by(Some(&nobody)), Readable::NoUser);
        assert!(!readable_by(None).covers("shop"));
    }
}
