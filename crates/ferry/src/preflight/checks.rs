//! The individual pre-flight checks. Each asks the servers (or probes them with the exact
//! operations the migration will run) and returns a [`Check`] with a stable id, what it found,
//! and the fix when something is wrong.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::error::ErrorKind;
use mongodb::Client;

use super::report::Check;
use crate::catalog::{CollectionSpec, Kind};
use crate::filter::NamespaceFilter;
use crate::plan::Endpoint;
use crate::redact::redact_uri;
use crate::reply::number;
use crate::server_error::{self, UNAUTHORIZED};
use crate::source::info::{self, build_version, fcv, Version};

/// Why a connection failed, and what to do, from the driver's error.
pub fn connection_failure(endpoint: &Endpoint, error: &mongodb::error::Error) -> (String, String) {
    let role = endpoint.role;
    let at = &endpoint.redacted;
    let text = redact_uri(&error.to_string());
    let lower = text.to_lowercase();
    if matches!(error.kind.as_ref(), ErrorKind::Authentication { .. }) {
        return (
            format!("authentication failed at {at}: {text}"),
            format!("check the user name, password, authSource and authMechanism in --{role}; the user must exist on that cluster"),
        );
    }
    if [
        "certificate",
        "tls",
        "ssl",
        "handshake",
        "unknownissuer",
        "unknown ca",
        "alert",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
    {
        return (
            format!("the TLS handshake with {at} failed: {text}"),
            format!("check that the server speaks TLS and that tlsCAFile in --{role} names the CA that signed its certificate"),
        );
    }
    (
        format!("no server answered at {at}: {text}"),
        format!("check the host and port in --{role}, that the server runs, and that this machine may reach it"),
    )
}

/// `hello` on one end: the reply, or the failed check.
pub async fn reachable(
    id: &'static str,
    endpoint: &Endpoint,
    client: &Client,
) -> Result<Document, Check> {
    match client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
    {
        Ok(hello) => Ok(hello),
        Err(e) => {
            let (found, fix) = connection_failure(endpoint, &e);
            Err(Check::fail(id, found, fix))
        }
    }
}

/// The source must be a replica set member reached through its primary: Ferry follows the
/// change stream and takes the commit point there, where the writes happen. A connection held to
/// a secondary (`directConnection=true`) would measure a lagging node's time.
pub fn source_replica_set(hello: &Document, at: &str) -> Check {
    const ID: &str = "source.replica-set";
    let Ok(set) = hello.get_str("setName") else {
        return Check::fail(
            ID,
            format!("the source at {at} is a standalone server, not a replica set member"),
            "Ferry follows the source's change stream, which needs a replica set: restart the server as a single-node replica set (--replSet) and run rs.initiate()",
        );
    };
    if !hello.get_bool("isWritablePrimary").unwrap_or(false) {
        return Check::fail(
            ID,
            format!(
                "the source connection {at} reaches {}, a member of replica set {set} that is not its primary",
                hello.get_str("me").unwrap_or("a node")
            ),
            format!("Ferry reads the change stream and the commit point from the primary: connect with replicaSet={set} and the members' hosts, without directConnection=true to a secondary"),
        );
    }
    Check::pass(ID, format!("replica set {set}, through its primary"))
}

/// Why the source's writes will stay open at commit, if they will: `--no-block-writes`, or a
/// source version that cannot block them.
pub fn writes_open_at_commit(block_writes: bool, version: Version) -> Option<String> {
    if !block_writes {
        Some("--no-block-writes was given".into())
    } else if !version.blocks_user_writes() {
        Some(format!(
            "the source ({version}) cannot block writes: setUserWriteBlockMode needs MongoDB 6.0+"
        ))
    } else {
        None
    }
}

/// Whether Ferry can block the source's writes at commit (DESIGN: a forgotten writer fails
/// loudly instead of writing where nobody reads), and what it means when it cannot.
pub async fn write_blocking(source: &Client, block_writes: bool) -> Check {
    const ID: &str = "source.write-blocking";
    const STOP_WRITERS: &str = "stop every application writing to the source before committing: a write after the commit point is not applied, and is reported (strayWrites, exit code 4)";
    let version = info::source_version(source).await;
    if let Some(reason) = version.and_then(|v| writes_open_at_commit(block_writes, v)) {
        return Check::warn(
            ID,
            format!("the source's writes stay open at commit: {reason}"),
            STOP_WRITERS,
        );
    }
    // Without its required `global` field the command is refused before it runs: this asks
    // whether the server knows it, and changes nothing.
    let known = source
        .database("admin")
        .run_command(doc! { "setUserWriteBlockMode": 1 })
        .await
        .map_err(anyhow::Error::from);
    if let Err(e) = &known {
        if server_error::code_of(e) == Some(server_error::COMMAND_NOT_FOUND) {
            return Check::warn(
                ID,
                "the source does not support setUserWriteBlockMode, so its writes stay open at commit",
                STOP_WRITERS,
            );
        }
    }
    if may_block_writes(source).await == Some(false) {
        return Check::warn(
            ID,
            "the source user may not run setUserWriteBlockMode, so the source's writes stay open at commit",
            format!("grant the source user the restore role (or the setUserWriteBlockMode action on the cluster), or {STOP_WRITERS}"),
        );
    }
    Check::pass(
        ID,
        "Ferry blocks the source's writes before it takes the commit point (setUserWriteBlockMode); they stay blocked after COMMITTED. Users with bypassWriteBlockingMode (the restore and root roles) are not blocked, and index builds in progress on the source are aborted",
    )
}

/// Whether the source user holds the `setUserWriteBlockMode` action on the cluster; `None`
/// when the server does not say (authentication off, or no answer).
async fn may_block_writes(source: &Client) -> Option<bool> {
    let status = source
        .database("admin")
        .run_command(doc! { "connectionStatus": 1, "showPrivileges": true })
        .await
        .ok()?;
    let info = status.get_document("authInfo").ok()?;
    if info
        .get_array("authenticatedUsers")
        .map_or(true, |u| u.is_empty())
    {
        return None;
    }
    let privileges = info.get_array("authenticatedUserPrivileges").ok()?;
    Some(privileges.iter().filter_map(Bson::as_document).any(|p| {
        p.get_document("resource")
            .is_ok_and(|r| r.get_bool("cluster") == Ok(true))
            && p.get_array("actions").is_ok_and(|actions| {
                actions
                    .iter()
                    .any(|a| a.as_str() == Some("setUserWriteBlockMode"))
            })
    }))
}

/// Runs one probe; a missing privilege names the action and the role that grants it.
async fn probe<T, E: Into<anyhow::Error>>(
    what: &str,
    action: &str,
    roles: &str,
    operation: impl std::future::IntoFuture<Output = Result<T, E>>,
) -> Result<(), String> {
    match operation.await.map_err(Into::into) {
        Ok(_) => Ok(()),
        Err(e) if server_error::code_of(&e) == Some(UNAUTHORIZED) => Err(format!(
            "not allowed to {what} (missing action {action}); grant the user {roles}"
        )),
        Err(e) => Err(format!(
            "could not {what}: {}",
            redact_uri(&format!("{e:#}"))
        )),
    }
}

const SOURCE_ROLES: &str = "the roles readAnyDatabase and clusterMonitor";

/// Proves the source privileges by running what the migration will run, read-only.
pub async fn source_privileges(source: &Client, included: &[CollectionSpec]) -> Check {
    const ID: &str = "source.privileges";
    let mut problems = Vec::new();
    if let Err(p) = probe(
        "list the databases",
        "listDatabases",
        SOURCE_ROLES,
        source.list_database_names(),
    )
    .await
    {
        problems.push(p);
    }
    if let Err(p) = probe(
        "read the server status",
        "serverStatus",
        SOURCE_ROLES,
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
        SOURCE_ROLES,
        source.watch(),
    )
    .await
    {
        problems.push(p);
    }
    for spec in included.iter().filter(|s| s.kind == Kind::Collection) {
        let collection = source
            .database(&spec.db)
            .collection::<RawDocumentBuf>(&spec.name);
        // A point read by `_id` proves the privilege without scanning on any server.
        let read = collection.find_one(doc! { "_id": Bson::MinKey });
        if let Err(p) = probe(&format!("read {}", spec.ns()), "find", SOURCE_ROLES, read).await {
            problems.push(p);
            break;
        }
    }
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
            DESTINATION_ROLES,
            db.create_collection("preflight_probe"),
        )
        .await?;
        probe(
            "create indexes",
            "createIndex",
            DESTINATION_ROLES,
            crate::majority::command(
                &db,
                doc! { "createIndexes": "preflight_probe", "indexes": [{ "key": { "probe": 1 }, "name": "probe_1" }] },
            ),
        )
        .await?;
        probe(
            "write documents",
            "insert",
            DESTINATION_ROLES,
            probe_coll.insert_one(doc! { "probe": 1 }),
        )
        .await?;
        // Every copy and change write bypasses validation (a replay passes through states a
        // validator may refuse), which `readWrite` alone does not allow.
        probe(
            "write documents past validation",
            "bypassDocumentValidation",
            DESTINATION_ROLES,
            probe_coll
                .insert_one(doc! { "probe": 2 })
                .bypass_document_validation(true),
        )
        .await?;
        probe(
            "drop collections",
            "dropCollection",
            DESTINATION_ROLES,
            probe_coll.drop(),
        )
        .await
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

/// The supported version matrix: source 6.0 or newer (expanded change events), destination
/// not older than the source, and a destination featureCompatibilityVersion not below the
/// source's. The source's version is the one Ferry treats it as (see `source::info`).
pub async fn versions(source: &Client, destination: &Client) -> Check {
    const ID: &str = "versions";
    let (Some(reported), Some(dv)) = (
        build_version(source).await,
        build_version(destination).await,
    ) else {
        return Check::warn(
            ID,
            "a server did not report its version (buildInfo)",
            "check by hand that the destination is not older than the source",
        );
    };
    let (sfcv, dfcv) = (fcv(source).await, fcv(destination).await);
    let treated = info::overridden();
    let sv = match treated {
        Some(version) => format!(
            "{reported}, treated as {version} ({})",
            info::VERSION_OVERRIDE
        ),
        None => reported.clone(),
    };
    let found = format!(
        "source {sv} (FCV {}), destination {dv} (FCV {})",
        sfcv.as_deref().unwrap_or("?"),
        dfcv.as_deref().unwrap_or("?")
    );
    let (Some(s), Some(d)) = (
        treated.or_else(|| Version::parse(&reported)),
        Version::parse(&dv),
    ) else {
        return Check::warn(
            ID,
            found,
            "check by hand that the destination is not older than the source",
        );
    };
    if s < Version::new(6, 0, 0) {
        return Check::fail(ID, found, "upgrade the source to MongoDB 6.0 or newer: Ferry needs its expanded change events to follow DDL");
    }
    if (d.major, d.minor) < (s.major, s.minor) {
        return Check::fail(
            ID,
            found,
            "use a destination of the same or a newer MongoDB version than the source",
        );
    }
    if let (Some(sf), Some(df)) = (
        sfcv.as_deref().and_then(Version::parse),
        dfcv.as_deref().and_then(Version::parse),
    ) {
        if df < sf {
            return Check::fail(ID, found, "raise the destination's featureCompatibilityVersion to at least the source's (setFeatureCompatibilityVersion)");
        }
    }
    Check::pass(ID, found)
}

/// Bytes per second read from the largest included collection, over a short sample.
async fn read_rate(source: &Client, included: &[CollectionSpec]) -> Option<f64> {
    let spec = included.iter().find(|s| s.kind == Kind::Collection)?;
    let started = Instant::now();
    let mut cursor = source
        .database(&spec.db)
        .collection::<RawDocumentBuf>(&spec.name)
        .find(doc! {})
        .limit(20_000)
        .await
        .ok()?;
    let mut bytes = 0usize;
    while let Ok(Some(document)) = cursor.try_next().await {
        bytes += document.as_bytes().len();
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    (bytes > 1_000_000 && seconds > 0.0).then(|| bytes as f64 / seconds)
}

/// What the pre-flight learns about the source's oplog and read speed.
#[derive(Debug, Default, PartialEq)]
pub struct OplogReading {
    /// The oplog's size and maximum size in bytes, when the server reports them.
    pub size: Option<(f64, f64)>,
    /// Seconds between the oldest entry and the newest write; `None` when unread.
    pub span: Option<f64>,
    /// Bytes per second read from the largest collection.
    pub read_rate: Option<f64>,
    /// The oplog could not be read at all.
    pub unreadable: bool,
    /// The server did not answer within [`OPLOG_READING_BUDGET`].
    pub slow: bool,
}

/// How long the pre-flight waits for each of the oplog's statistics. They only inform a
/// forecast, and some servers (or a loaded primary) take long to answer them; the migration
/// measures the window as it runs (`oplogWindowSeconds`).
const OPLOG_READING_BUDGET: Duration = Duration::from_secs(3);

/// The server code for an operation stopped by its `maxTimeMS`.
const MAX_TIME_EXPIRED: i32 = 50;

/// Reads the oplog's size and the read speed at once, and the oldest entry only when the size
/// is known: without it no window can be forecast, and on servers that keep the oplog as an
/// ordinary collection finding the oldest entry scans all of it. A read that does not answer
/// within [`OPLOG_READING_BUDGET`] makes the reading `slow`.
pub async fn read_oplog(
    source: &Client,
    included: &[CollectionSpec],
    hello: &Document,
) -> OplogReading {
    let (reading, read_rate) = tokio::join!(
        oplog_size_and_span(source, hello),
        read_rate(source, included)
    );
    OplogReading {
        read_rate,
        ..reading
    }
}

/// The oplog's size and maximum, and its span when the size is known.
async fn oplog_size_and_span(source: &Client, hello: &Document) -> OplogReading {
    let slow = OplogReading {
        slow: true,
        ..Default::default()
    };
    let local = source.database("local");
    let budget = OPLOG_READING_BUDGET.as_millis() as i64;
    let stats = tokio::time::timeout(
        OPLOG_READING_BUDGET,
        local.run_command(doc! { "collStats": "oplog.rs", "maxTimeMS": budget }),
    )
    .await;
    let stats = match stats {
        Err(_) => return slow,
        Ok(Err(e)) if server_error::driver_code(&e) == Some(MAX_TIME_EXPIRED) => return slow,
        Ok(Err(_)) => {
            return OplogReading {
                unreadable: true,
                ..Default::default()
            }
        }
        Ok(Ok(stats)) => stats,
    };
    let size = match (number(&stats, "size"), number(&stats, "maxSize")) {
        (Some(size), Some(max)) if size > 0.0 && max > 0.0 => Some((size, max)),
        _ => None,
    };
    let mut reading = OplogReading {
        size,
        ..Default::default()
    };
    if size.is_none() {
        return reading;
    }
    let newest = hello
        .get_document("lastWrite")
        .and_then(|w| w.get_document("opTime"))
        .and_then(|o| o.get_timestamp("ts"));
    match (
        tokio::time::timeout(
            OPLOG_READING_BUDGET,
            crate::source::oplog::oldest_entry(source),
        )
        .await,
        newest,
    ) {
        (Err(_), _) => reading.slow = true,
        (Ok(Ok(Some(oldest))), Ok(newest)) => {
            reading.span = Some(f64::from(newest.time.saturating_sub(oldest.time)));
        }
        _ => reading.unreadable = true,
    }
    reading
}

/// The source's oplog window against the time the copy of `data` bytes will take.
pub fn oplog_window(reading: &OplogReading, data: f64) -> Check {
    const ID: &str = "source.oplog-window";
    if reading.unreadable {
        return Check::warn(ID, "could not read the source's oplog (local.oplog.rs)", "grant the source user read access to the local database, and make sure the oplog is large enough for the whole copy");
    }
    let hours = |s: f64| format!("{:.1} h", s / 3600.0);
    let estimate = reading.read_rate.map(|rate| data / rate * 2.0);
    let copy_time = estimate.map_or(String::new(), |e| {
        format!(", the copy will take about {}", hours(e))
    });
    let (Some((size, max)), Some(span)) = (reading.size, reading.span) else {
        let missing = if reading.slow {
            format!(
                "the source did not report its oplog within {} s",
                OPLOG_READING_BUDGET.as_secs()
            )
        } else {
            "the source does not report its oplog's size".to_string()
        };
        return Check::warn(
            ID,
            format!("{missing}, so its window cannot be forecast{copy_time}"),
            "make sure the source's oplog holds more than the copy time; Ferry shows the history left as oplogWindowSeconds while it runs",
        );
    };
    // A full oplog's window is its span; a filling one will hold about span × max / size.
    let capacity = if size >= 0.9 * max {
        Some(span)
    } else if span >= 60.0 {
        Some(span * max / size)
    } else {
        None
    };
    match (capacity, estimate) {
        (Some(capacity), Some(estimate)) if capacity < estimate => Check::fail(
            ID,
            format!("the oplog holds about {} of history, the copy will take about {}", hours(capacity), hours(estimate)),
            "enlarge the source's oplog (replSetResizeOplog, oplogMinRetentionHours) to well over the copy time, or the changes made during the copy will be lost",
        ),
        (Some(capacity), Some(estimate)) if capacity < 3.0 * estimate => Check::warn(
            ID,
            format!("the oplog holds about {} of history, the copy will take about {}", hours(capacity), hours(estimate)),
            "the margin is thin: enlarge the source's oplog before migrating",
        ),
        (Some(capacity), _) => Check::pass(
            ID,
            format!("the oplog holds about {} of history{copy_time}", hours(capacity)),
        ),
        (None, _) => Check::pass(ID, format!("the oplog is not full yet ({span:.0} s of history so far)")),
    }
}

/// Room on the destination for the source's data, where the server reports its disk.
pub async fn destination_disk(destination: &Client, source_bytes: f64) -> Check {
    const ID: &str = "destination.disk";
    let stats = destination
        .database("admin")
        .run_command(doc! { "dbStats": 1, "freeStorage": 1 })
        .await
        .ok();
    let free = stats
        .as_ref()
        .and_then(|s| Some(number(s, "fsTotalSize")? - number(s, "fsUsedSize")?));
    let gb = |b: f64| format!("{:.1} GB", b / 1e9);
    match free {
        Some(free) if free > 0.0 && free < source_bytes => Check::fail(
            ID,
            format!(
                "{} free on the destination's disk, {} of data to copy",
                gb(free),
                gb(source_bytes)
            ),
            "give the destination more disk than the source's data (plus indexes and growth)",
        ),
        Some(free) if free > 0.0 && free < 1.5 * source_bytes => Check::warn(
            ID,
            format!(
                "{} free on the destination's disk, {} of data to copy",
                gb(free),
                gb(source_bytes)
            ),
            "the margin is thin: indexes and the oplog need room too",
        ),
        Some(free) if free > 0.0 => Check::pass(
            ID,
            format!("{} free, {} of data to copy", gb(free), gb(source_bytes)),
        ),
        _ => Check::pass(
            ID,
            format!(
                "the destination does not report its disk; {} of data to copy",
                gb(source_bytes)
            ),
        ),
    }
}

/// Each `--include` must match something on the source; an `--exclude` that matches nothing
/// is probably a typo.
pub fn filters_match(filter: &NamespaceFilter, on_source: &[(String, String)]) -> Check {
    const ID: &str = "filters.match";
    let matches = |p: &crate::filter::NsPattern| {
        on_source
            .iter()
            .any(|(db, coll)| p.db == *db && p.coll.as_ref().is_none_or(|c| c == coll))
    };
    let unmatched: Vec<String> = filter
        .include
        .iter()
        .filter(|p| !matches(p))
        .map(ToString::to_string)
        .collect();
    if !unmatched.is_empty() {
        return Check::fail(
            ID,
            format!(
                "--include {} matches nothing on the source",
                unmatched.join(", ")
            ),
            "check the spelling of the database and collection names (names are case-sensitive)",
        );
    }
    let unused: Vec<String> = filter
        .exclude
        .iter()
        .filter(|p| !matches(p))
        .map(ToString::to_string)
        .collect();
    if !unused.is_empty() {
        return Check::warn(
            ID,
            format!(
                "--exclude {} matches nothing on the source",
                unused.join(", ")
            ),
            "check the spelling",
        );
    }
    Check::pass(ID, "the namespace filters select what exists")
}

/// What the migration does not carry: users and roles, time-series collections.
pub async fn not_migrated(source: &Client, included: &[CollectionSpec]) -> Check {
    const ID: &str = "source.not-migrated";
    let mut notes = Vec::new();
    if let Ok(reply) = source
        .database("admin")
        .run_command(doc! { "usersInfo": { "forAllDBs": true } })
        .await
    {
        let users: Vec<String> = reply
            .get_array("users")
            .map(|u| {
                u.iter()
                    .filter_map(|u| u.as_document())
                    .map(|u| {
                        format!(
                            "{}@{}",
                            u.get_str("user").unwrap_or("?"),
                            u.get_str("db").unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !users.is_empty() {
            notes.push(format!(
                "{} users are not migrated ({})",
                users.len(),
                users.join(", ")
            ));
        }
    }
    let series: Vec<String> = included
        .iter()
        .filter(|s| s.kind == Kind::Timeseries)
        .map(CollectionSpec::ns)
        .collect();
    if !series.is_empty() {
        notes.push(format!(
            "time-series collections are not migrated ({})",
            series.join(", ")
        ));
    }
    if notes.is_empty() {
        Check::pass(
            ID,
            "no users, roles or time-series collections to leave behind",
        )
    } else {
        Check::warn(ID, notes.join("; "), "recreate users and roles on the destination (createUser, createRole), and move time-series collections with mongodump/mongorestore")
    }
}

#[cfg(test)]
mod tests {
    use super::{doc, oplog_window, source_replica_set, OplogReading};
    use crate::preflight::Status;

    #[test]
    fn the_source_must_be_reached_through_its_primary() {
        let primary = doc! { "setName": "rs0", "isWritablePrimary": true, "me": "a:1" };
        assert_eq!(source_replica_set(&primary, "a:1").status, Status::Pass);
        let secondary =
            doc! { "setName": "rs0", "isWritablePrimary": false, "secondary": true, "me": "b:1" };
        let check = source_replica_set(&secondary, "b:1");
        assert_eq!(check.status, Status::Fail);
        assert!(check.found.contains("not its primary"), "{}", check.found);
        assert!(check.fix.unwrap().contains("replicaSet=rs0"));
        let standalone = doc! { "isWritablePrimary": true };
        assert_eq!(source_replica_set(&standalone, "c:1").status, Status::Fail);
    }

    const GB: f64 = 1e9;

    fn reading(size: Option<(f64, f64)>, span: Option<f64>) -> OplogReading {
        OplogReading {
            size,
            span,
            // 10 MB/s: copying 36 GB then takes about 2 h (twice the read time).
            read_rate: Some(10e6),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_oplog_shorter_than_the_copy_refuses_and_a_roomy_one_passes() {
        let full_one_hour = reading(Some((GB, GB)), Some(3600.0));
        let check = oplog_window(&full_one_hour, 36.0 * GB);
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.found.contains("1.0 h of history"), "{check:?}");
        assert!(check.found.contains("2.0 h"), "{check:?}");
        let thin = oplog_window(&reading(Some((GB, GB)), Some(4.0 * 3600.0)), 36.0 * GB);
        assert_eq!(thin.status, Status::Warn, "{thin:?}");
        let roomy = oplog_window(&reading(Some((GB, GB)), Some(24.0 * 3600.0)), 36.0 * GB);
        assert_eq!(roomy.status, Status::Pass, "{roomy:?}");
    }

    #[test]
    fn a_filling_oplog_is_judged_by_what_it_will_hold() {
        // A quarter full after one hour: it will hold about four hours.
        let filling = oplog_window(&reading(Some((GB, 4.0 * GB)), Some(3600.0)), 36.0 * GB);
        assert_eq!(filling.status, Status::Warn, "{filling:?}");
        assert!(filling.found.contains("4.0 h of history"), "{filling:?}");
        let young = oplog_window(&reading(Some((GB, 4.0 * GB)), Some(10.0)), 36.0 * GB);
        assert_eq!(young.status, Status::Pass, "{young:?}");
        assert!(young.found.contains("not full yet"), "{young:?}");
    }

    #[test]
    fn an_oplog_without_a_size_or_unreadable_is_a_warning_that_says_what_to_watch() {
        let no_size = oplog_window(&reading(None, None), 36.0 * GB);
        assert_eq!(no_size.status, Status::Warn, "{no_size:?}");
        assert!(no_size.found.contains("cannot be forecast"), "{no_size:?}");
        assert!(
            no_size
                .fix
                .as_deref()
                .unwrap()
                .contains("oplogWindowSeconds"),
            "{no_size:?}"
        );
        let unreadable = OplogReading {
            unreadable: true,
            ..Default::default()
        };
        let check = oplog_window(&unreadable, GB);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(check.found.contains("could not read"), "{check:?}");
        // A late answer is named as late, not as missing.
        let slow = OplogReading {
            size: Some((GB, GB)),
            slow: true,
            ..Default::default()
        };
        let check = oplog_window(&slow, GB);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(
            check.found.contains("did not report its oplog within 3 s"),
            "{check:?}"
        );
    }
}
