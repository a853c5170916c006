//! What the machine allows, measured in the same run as Ferry: the destination's write ceiling,
//! a naive single-stream copy, and the floor of a copy (range pipes with known bounds, then the
//! index build).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::Client;

use super::{collect_all, document, SMALL_COLLECTIONS};

/// The destination's raw write ceiling: the best of several concurrencies of unordered bulk
/// inserts of documents already in memory. (documents/s, bytes/s, concurrency)
pub async fn write_ceiling(destination: &Client, documents: i64) -> Result<(f64, f64, usize)> {
    let prepared: Arc<Vec<RawDocumentBuf>> = Arc::new((0..documents).map(document).collect());
    let bytes: usize = prepared.iter().map(|d| d.as_bytes().len()).sum();
    let mut best = (0.0, 0.0, 0);
    for concurrency in [1usize, 2, 4, 8] {
        let collection = destination
            .database("ceiling")
            .collection::<RawDocumentBuf>(&format!("c{concurrency}"));
        let started = Instant::now();
        let chunk = prepared.len().div_ceil(concurrency);
        let tasks = (0..concurrency)
            .map(|i| {
                let (collection, prepared) = (collection.clone(), prepared.clone());
                tokio::spawn(async move {
                    let end = ((i + 1) * chunk).min(prepared.len());
                    for batch in prepared[i * chunk..end].chunks(1000) {
                        collection
                            .insert_many(batch.to_vec())
                            .ordered(false)
                            .await?;
                    }
                    Ok(())
                })
            })
            .collect();
        collect_all(tasks).await?;
        let seconds = started.elapsed().as_secs_f64();
        let rate = prepared.len() as f64 / seconds;
        eprintln!("bench: ceiling with {concurrency} writers: {rate:.0} documents/s");
        if rate > best.0 {
            best = (rate, bytes as f64 / seconds, concurrency);
        }
    }
    destination.database("ceiling").drop().await?;
    Ok(best)
}

/// A naive copy: one cursor, one writer, batches of 1,000. Seconds.
pub async fn naive_copy(source: &Client, destination: &Client) -> Result<f64> {
    use futures_util::TryStreamExt;
    let started = Instant::now();
    for name in std::iter::once("big".to_string())
        .chain((0..SMALL_COLLECTIONS).map(|i| format!("small{i}")))
    {
        let mut cursor = source
            .database("bench")
            .collection::<RawDocumentBuf>(&name)
            .find(doc! {})
            .await?;
        let target = destination
            .database("naive")
            .collection::<RawDocumentBuf>(&name);
        let mut batch = Vec::with_capacity(1000);
        while let Some(document) = cursor.try_next().await? {
            batch.push(document);
            if batch.len() == 1000 {
                target.insert_many(std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            target.insert_many(batch).await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    destination.database("naive").drop().await?;
    Ok(seconds)
}

/// The floor of a copy of the large collection on this machine: the best of several numbers of
/// range pipes with bounds known in advance (the seeded `_id`s are `0..documents`), each a
/// cursor piping batches into unordered inserts; then the source's indexes built on that copy.
/// And, on a second copy, the indexes created before the documents, to choose by measurement.
pub struct Floor {
    pub pipes: usize,
    pub copy_seconds: f64,
    pub index_seconds: f64,
    pub indexes_first_seconds: f64,
}

impl Floor {
    pub fn seconds(&self) -> f64 {
        self.copy_seconds + self.index_seconds
    }
}

/// The pipe counts tried for the floor.
const FLOOR_PIPES: [usize; 3] = [2, 4, 8];

/// Copies `bench.big` into `floor.<name>` with `pipes` range pipes: seconds.
async fn pipe(
    source: &Client,
    destination: &Client,
    documents: i64,
    pipes: usize,
    name: &str,
) -> Result<f64> {
    use futures_util::TryStreamExt;
    let started = Instant::now();
    let per = (documents + pipes as i64 - 1) / pipes as i64;
    let tasks = (0..pipes as i64)
        .map(|p| {
            let from = source.database("bench").collection::<RawDocumentBuf>("big");
            let to = destination
                .database("floor")
                .collection::<RawDocumentBuf>(name);
            tokio::spawn(async move {
                let mut cursor = from
                    .find(doc! { "_id": { "$gte": p * per, "$lt": (p + 1) * per } })
                    .await?;
                let mut batch = Vec::with_capacity(1000);
                while let Some(document) = cursor.try_next().await? {
                    batch.push(document);
                    if batch.len() == 1000 {
                        to.insert_many(std::mem::take(&mut batch))
                            .ordered(false)
                            .await?;
                    }
                }
                if !batch.is_empty() {
                    to.insert_many(batch).ordered(false).await?;
                }
                Ok(())
            })
        })
        .collect();
    collect_all(tasks).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Measures the floor (see [`Floor`]) and leaves the destination as it was.
pub async fn floor(source: &Client, destination: &Client, documents: i64) -> Result<Floor> {
    use futures_util::TryStreamExt;
    let indexes: Vec<Document> = source
        .database("bench")
        .collection::<Document>("big")
        .list_indexes()
        .await?
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .filter(|i| i.keys.get("_id").is_none())
        .map(|i| {
            let mut spec = doc! { "key": i.keys, "name": i.options.as_ref().and_then(|o| o.name.clone()).unwrap_or_default() };
            if i.options.as_ref().and_then(|o| o.unique) == Some(true) {
                spec.insert("unique", true);
            }
            spec
        })
        .collect();
    let floor = destination.database("floor");
    let mut best = (f64::MAX, 0);
    for pipes in FLOOR_PIPES {
        let seconds = pipe(source, destination, documents, pipes, &format!("p{pipes}")).await?;
        eprintln!("bench: floor, {pipes} range pipes: {seconds:.1} s");
        if seconds < best.0 {
            best = (seconds, pipes);
        }
    }
    let started = Instant::now();
    floor
        .run_command(doc! { "createIndexes": format!("p{}", best.1), "indexes": indexes.clone() })
        .await?;
    let index_seconds = started.elapsed().as_secs_f64();
    eprintln!("bench: floor, index build: {index_seconds:.1} s");
    floor
        .run_command(doc! { "createIndexes": "first", "indexes": indexes })
        .await?;
    let indexes_first_seconds = pipe(source, destination, documents, best.1, "first").await?;
    eprintln!(
        "bench: floor, indexes first then {} pipes: {indexes_first_seconds:.1} s",
        best.1
    );
    floor.drop().await?;
    Ok(Floor {
        pipes: best.1,
        copy_seconds: best.0,
        index_seconds,
        indexes_first_seconds,
    })
}
