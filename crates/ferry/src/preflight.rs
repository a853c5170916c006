//! Checks that run before Ferry writes anything: both ends reachable, the source a replica set
//! with a change stream, the destination a writable primary and not the source itself, and no
//! included namespace (nor an earlier migration's state) on the destination unless `--drop`.
//! Each failure says what was found and what to do.

use anyhow::{bail, Context, Result};
use mongodb::bson::{doc, Document};
use mongodb::Client;

use crate::catalog;
use crate::plan::{Endpoint, Plan};
use crate::state::StateStore;

/// Asks a server who it is; the error names the end and the redacted address.
async fn hello(client: &Client, endpoint: &Endpoint) -> Result<Document> {
    client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(|e| anyhow::anyhow!(crate::redact::redact_uri(&e.to_string())))
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
        .map(|h| h.iter().filter_map(|h| h.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if let Ok(me) = hello.get_str("me") {
        hosts.push(me.to_string());
    }
    hosts
}

/// Runs the checks; with `--drop`, clears what the destination holds of the included namespaces.
pub async fn validate(plan: &Plan, source: &Client, destination: &Client) -> Result<()> {
    let source_hello = hello(source, &plan.source).await?;
    let destination_hello = hello(destination, &plan.destination).await?;

    if source_hello.get_str("setName").is_err() {
        bail!(
            "the source at {} is not a replica set member: Ferry follows the source's change stream, which needs a replica set (convert the standalone to a single-node replica set first)",
            plan.source.redacted
        );
    }
    if !destination_hello.get_bool("isWritablePrimary").unwrap_or(false) {
        bail!(
            "the destination at {} is not a writable primary: connect to the destination replica set (replicaSet=NAME) or its primary",
            plan.destination.redacted
        );
    }
    let source_members = members(&source_hello);
    if members(&destination_hello)
        .iter()
        .any(|host| source_members.contains(host))
        && source_hello.get_str("setName") == destination_hello.get_str("setName")
    {
        bail!(
            "the source and the destination are the same cluster ({}): give the new cluster as --destination",
            source_members.join(",")
        );
    }

    let store = StateStore::new(destination, &plan.filter.state_db);
    let mut occupied = Vec::new();
    for spec in catalog::list_namespaces(destination, &plan.filter).await? {
        occupied.push(spec.ns());
    }
    let earlier_state = store.exists().await?;
    if plan.drop {
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
        return Ok(());
    }
    if !occupied.is_empty() {
        let shown: Vec<&str> = occupied.iter().take(5).map(String::as_str).collect();
        bail!(
            "the destination already holds {} included namespace(s) ({}{}): give --drop to replace them, or narrow the migration with --include/--exclude",
            occupied.len(),
            shown.join(", "),
            if occupied.len() > shown.len() { ", ..." } else { "" }
        );
    }
    if earlier_state {
        bail!(
            "the destination holds the state of an earlier Ferry migration in database {:?}: give --drop to start over",
            plan.filter.state_db
        );
    }
    Ok(())
}
