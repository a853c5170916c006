//! `ferry reset`: deliberately forget a migration on the destination, dropping its state and
//! every namespace it included, so that the next `ferry migrate` starts over. A reverse's
//! destination is the old source, whose data Ferry did not create: there only the state goes.

use anyhow::{bail, Context, Result};
use mongodb::bson::Document;
use mongodb::Client;

use crate::catalog;
use crate::filter::{NamespaceFilter, NsPattern};
use crate::namespace::Namespace;
use crate::state::StateStore;

/// Drops the stored migration's namespaces and state (with `confirmed`), or says what it would
/// drop. Returns a summary for the operator.
pub async fn reset(destination: &Client, state_db: &str, confirmed: bool) -> Result<String> {
    let store = StateStore::new(destination, state_db);
    let Some(stored) = store.load().await? else {
        bail!(
            "the destination holds no Ferry migration in database {state_db:?}: nothing to reset"
        );
    };
    // A reverse wrote into the old source's own data, which no reset may drop: only its state.
    if stored.plan.get_str("direction") == Ok("reverse") {
        if !confirmed {
            return Ok(format!(
                "would drop Ferry's state ({state_db}) of a reverse; the data stays (it is the old source's own), and indexes or capped collections the reverse relaxed stay relaxed until a reverse commits; run again with --yes to do it"
            ));
        }
        store.clear().await?;
        return Ok(format!(
            "dropped Ferry's state ({state_db}) of a reverse; the data stays (it is the old source's own), and indexes or capped collections the reverse relaxed stay relaxed until a reverse commits"
        ));
    }
    let patterns = |field: &str| -> Vec<NsPattern> {
        stored
            .plan
            .get_array(field)
            .map(|a| {
                a.iter()
                    .filter_map(|p| NsPattern::parse(p.as_str()?).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let filter = NamespaceFilter {
        include: patterns("include"),
        exclude: patterns("exclude"),
        state_db: state_db.to_string(),
    };
    let namespaces: Vec<String> = catalog::list_namespaces(destination, &filter)
        .await?
        .iter()
        .map(catalog::CollectionSpec::ns)
        .collect();
    if !confirmed {
        return Ok(format!(
            "would drop Ferry's state ({state_db}) and {} namespace(s): {}; run again with --yes to do it",
            namespaces.len(),
            namespaces.join(", ")
        ));
    }
    for ns in &namespaces {
        let Namespace { db, coll } = Namespace::parse(ns).expect("listed namespaces have a dot");
        destination
            .database(&db)
            .collection::<Document>(&coll)
            .drop()
            .await
            .with_context(|| format!("dropping {ns}"))?;
    }
    store.clear().await?;
    Ok(format!(
        "dropped Ferry's state ({state_db}) and {} namespace(s); the next `ferry migrate` starts over",
        namespaces.len()
    ))
}
