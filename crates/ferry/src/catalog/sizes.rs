//! What the source's collections weigh, as the server estimates it (`collStats`): for the
//! disk and oplog checks of a pre-flight that measures (`ferry check`). A migration takes its
//! sizes from its copy instead (`migration::measure`).

use std::collections::HashMap;

use futures_util::StreamExt;
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
    // A few at a time: with thousands of collections, all at once would only queue on the
    // connection pool. By position: a closure over borrowed specs cannot be proven `Send` for
    // every lifetime, which spawning the migration needs.
    let collections = &collections;
    futures_util::stream::iter(0..collections.len())
        .map(|at| async move {
            let spec = collections[at];
            (spec.ns(), estimate_size(source, spec).await)
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await
}

/// Collections measured at the same time.
const AT_ONCE: usize = 16;

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
