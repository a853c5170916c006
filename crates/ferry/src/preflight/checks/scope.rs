//! What the migration covers: the filters match the source, and what it does not carry (users,
//! roles, time-series collections) is said.

use mongodb::bson::doc;
use mongodb::Client;

use crate::catalog::{CollectionSpec, Kind};
use crate::filter::NamespaceFilter;
use crate::preflight::report::Check;

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
