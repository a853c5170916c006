//! What the source's collections weigh, as the server estimates it (`collStats`): for the
//! pre-flight's disk and oplog checks, the copy's range planning and the progress bars.

use std::collections::HashMap;

use mongodb::bson::doc;
use mongodb::Client;

use super::{CollectionSpec, Kind};
use crate::reply::number;

/// The source's size estimates of the collections among `specs`, measured at once, by
/// namespace: (documents, bytes).
pub async fn estimate_sizes<'a>(
    source: &Client,
    specs: impl IntoIterator<Item = &'a CollectionSpec>,
) -> HashMap<String, (u64, u64)> {
    let collections: Vec<&CollectionSpec> = specs
        .into_iter()
        .filter(|s| s.kind == Kind::Collection)
        .collect();
    let sizes =
        futures_util::future::join_all(collections.iter().map(|spec| estimate_size(source, spec)))
            .await;
    collections.iter().map(|s| s.ns()).zip(sizes).collect()
}

/// The source's size estimate of a collection: (documents, bytes).
async fn estimate_size(source: &Client, spec: &CollectionSpec) -> (u64, u64) {
    let stats = source
        .database(&spec.db)
        .run_command(doc! { "collStats": &spec.name })
        .await;
    match stats {
        Ok(stats) => {
            let count = |field| number(&stats, field).unwrap_or(0.0).max(0.0) as u64;
            (count("count"), count("size"))
        }
        Err(_) => (0, 0),
    }
}
