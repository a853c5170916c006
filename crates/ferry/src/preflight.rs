//! Checks that run before Ferry writes anything: both ends reachable, the source a replica set
//! with a change stream, the destination a writable primary and not the source itself, and
//! either a migration to resume with the same arguments, or no included namespace on the
//! destination unless `--drop`. Each refusal is an [`InputError`] that says what was found and
//! what to do (exit code 2).

use anyhow::{Context, Result};
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

use crate::catalog;
use crate::plan::{Endpoint, InputError, Plan};
use crate::state::{StateStore, Stored};

/// Asks a server who it is; the error names the end and the redacted address.
async fn hello(client: &Client, endpoint: &Endpoint) -> Result<Document> {
    client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .with_context(|| {
            format!(
                "cannot reach the {} at {}: check the host, port, credentials and TLS options",
                endpoint.role, endpoint.redacted
            )
        })
}

fn members(hello: &Document) -> Vec<String> {
    let mut hosts: Vec<String> = hello
        .get_array("hosts")
        .map(|h| {
            h.iter()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(me) = hello.get_str("me") {
        hosts.push(me.to_string());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

fn refuse(message: String) -> anyhow::Error {
    InputError(message).into()
}

/// What identifies a migration across restarts: the source replica set and the filters.
fn identity(plan: &Plan, source_hello: &Document) -> Document {
    let mut described = plan.describe();
    described.insert(
        "sourceSet",
        source_hello.get_str("setName").unwrap_or_default(),
    );
    described.insert("sourceHosts", members(source_hello));
    described
}

/// The fields of the stored plan that must match for a resume, with how to name them.
const IDENTITY_FIELDS: [(&str, &str); 4] = [
    ("sourceSet", "source replica set"),
    ("sourceHosts", "source hosts"),
    ("include", "--include"),
    ("exclude", "--exclude"),
];

/// Runs the checks. Returns the stored state of a migration to resume, or `None` for a fresh
/// start (after clearing the destination when `--drop` is given and `allow_drop` is true).
/// Also returns the plan as it is to be stored.
pub async fn validate(
    plan: &Plan,
    source: &Client,
    destination: &Client,
    allow_drop: bool,
) -> Result<(Option<Stored>, Document)> {
    let source_hello = hello(source, &plan.source).await?;
    let destination_hello = hello(destination, &plan.destination).await?;

    if source_hello.get_str("setName").is_err() {
        return Err(refuse(format!(
            "the source at {} is not a replica set member: Ferry follows the source's change stream, which needs a replica set (convert the standalone to a single-node replica set first)",
            plan.source.redacted
        )));
    }
    if !destination_hello
        .get_bool("isWritablePrimary")
        .unwrap_or(false)
    {
        return Err(refuse(format!(
            "the destination at {} is not a writable primary: connect to the destination replica set (replicaSet=NAME) or its primary",
            plan.destination.redacted
        )));
    }
    let source_members = members(&source_hello);
    if members(&destination_hello)
        .iter()
        .any(|host| source_members.contains(host))
        && source_hello.get_str("setName") == destination_hello.get_str("setName")
    {
        return Err(refuse(format!(
            "the source and the destination are the same cluster ({}): give the new cluster as --destination",
            source_members.join(",")
        )));
    }

    let planned = identity(plan, &source_hello);
    let store = StateStore::new(destination, &plan.filter.state_db);
    let stored = store.load().await?;
    if let Some(stored) = stored {
        if !(plan.drop && allow_drop) {
            if let Some((field, name)) = IDENTITY_FIELDS
                .iter()
                .find(|(field, _)| stored.plan.get(field) != planned.get(field))
            {
                return Err(refuse(format!(
                    "the destination holds a migration started with another {name} ({} then, {} now): run the original command to resume it, or give --drop (or run `ferry reset`) to start over",
                    show(stored.plan.get(*field)),
                    show(planned.get(*field))
                )));
            }
            return Ok((Some(stored), planned));
        }
    }

    let mut occupied = Vec::new();
    for spec in catalog::list_namespaces(destination, &plan.filter).await? {
        occupied.push(spec.ns());
    }
    if plan.drop && allow_drop {
        for ns in &occupied {
            let (db, coll) = ns.split_once('.').expect("namespaces have a dot");
            tracing::info!(namespace = %ns, "dropping on the destination (--drop)");
            destination
                .database(db)
                .collection::<Document>(coll)
                .drop()
                .await
                .with_context(|| format!("dropping {ns} on the destination"))?;
        }
        store.clear().await?;
        return Ok((None, planned));
    }
    if !occupied.is_empty() {
        let shown: Vec<&str> = occupied.iter().take(5).map(String::as_str).collect();
        return Err(refuse(format!(
            "the destination already holds {} included namespace(s) ({}{}): give --drop to replace them, or narrow the migration with --include/--exclude",
            occupied.len(),
            shown.join(", "),
            if occupied.len() > shown.len() { ", ..." } else { "" }
        )));
    }
    Ok((None, planned))
}

fn show(value: Option<&Bson>) -> String {
    match value {
        Some(Bson::String(s)) => s.clone(),
        Some(Bson::Array(items)) if items.is_empty() => "none".into(),
        Some(Bson::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
        None => "none".into(),
    }
}
