//! Many namespaces: multi-tenant deployments hold tens of thousands of small collections. Each
//! size (`FERRY_BENCH_NAMESPACES`, default `3000,20000`; `0` leaves it out) is seeded with 20
//! documents and one secondary index per collection, then copied by a naive single client
//! (create, copy, index, one collection after the other) and by Ferry, to `canCommit` and
//! through the commit, in the same run.

use std::time::{Duration, Instant};

use anyhow::Result;
use mongodb::bson::{doc, Document};
use mongodb::Client;
use testkit::Server;

use super::collect_all;
use super::ferry_run::{baseline_to_can_commit, FerryRun};

/// Databases the collections are spread over.
const DATABASES: usize = 10;
const DOCUMENTS: i32 = 20;

pub struct NamespacesResult {
    pub collections: usize,
    pub naive_seconds: f64,
    /// Another build's launch to canCommit on the same data (`FERRY_BENCH_BASELINE`).
    pub baseline_seconds: Option<f64>,
    pub ferry_seconds: f64,
    pub peak_memory: Option<u64>,
    pub largest_reply: usize,
    pub commit_seconds: f64,
}

fn name(c: usize) -> (String, String) {
    (format!("tenant{}", c % DATABASES), format!("c{c:05}"))
}

async fn seed(source: &Client, collections: usize) -> Result<()> {
    let writers = 8;
    let tasks = (0..writers)
        .map(|w| {
            let source = source.clone();
            tokio::spawn(async move {
                for c in (w..collections).step_by(writers) {
                    let (db, coll) = name(c);
                    let database = source.database(&db);
                    database
                        .collection::<Document>(&coll)
                        .insert_many((0..DOCUMENTS).map(|i| doc! { "_id": i, "email": format!("{c}-{i}@example.com"), "n": i }))
                        .await?;
                    database
                        .run_command(doc! { "createIndexes": &coll, "indexes": [{ "key": { "email": 1 }, "name": "email_1" }] })
                        .await?;
                }
                Ok(())
            })
        })
        .collect();
    collect_all(tasks).await
}

/// One client, one collection after the other: create, copy, index. Seconds.
async fn naive(source: &Client, destination: &Client, collections: usize) -> Result<f64> {
    use futures_util::TryStreamExt;
    let started = Instant::now();
    for c in 0..collections {
        let (db, coll) = name(c);
        let documents: Vec<Document> = source
            .database(&db)
            .collection::<Document>(&coll)
            .find(doc! {})
            .await?
            .try_collect()
            .await?;
        let target = destination.database(&format!("naive_{db}"));
        target.create_collection(&coll).await?;
        target
            .collection::<Document>(&coll)
            .insert_many(documents)
            .await?;
        target
            .run_command(doc! { "createIndexes": &coll, "indexes": [{ "key": { "email": 1 }, "name": "email_1" }] })
            .await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    for d in 0..DATABASES {
        destination
            .database(&format!("naive_tenant{d}"))
            .drop()
            .await?;
    }
    Ok(seconds)
}

pub fn measure(
    runtime: &tokio::runtime::Runtime,
    ferry: &std::path::Path,
    collections: usize,
) -> Result<NamespacesResult> {
    let source = Server::start()?;
    let destination = Server::start()?;
    let src = runtime.block_on(Client::with_uri_str(source.uri()))?;
    let dst = runtime.block_on(Client::with_uri_str(destination.uri()))?;
    eprintln!("bench: seeding {collections} collections of {DOCUMENTS} documents and one index");
    runtime.block_on(seed(&src, collections))?;
    runtime.block_on(testkit::server::trim_oplog(&src));
    eprintln!("bench: naive single client, {collections} collections");
    let naive_seconds = runtime.block_on(naive(&src, &dst, collections))?;
    let baseline_seconds =
        baseline_to_can_commit(ferry, &source, &format!("{collections}-collections"))?;
    eprintln!("bench: ferry, {collections} collections, launch to canCommit");
    let log = ferry.with_file_name(format!("bench-ferry-{collections}-collections.log"));
    let started = Instant::now();
    let mut run = FerryRun::start(ferry, &source, &destination, &log)?;
    run.wait_for("canCommit", Duration::from_secs(3600), |p| {
        p["canCommit"] == true
    })?;
    let ferry_seconds = started.elapsed().as_secs_f64();
    let committing = Instant::now();
    let peak_memory = run.peak_memory();
    run.commit_and_wait()?;
    Ok(NamespacesResult {
        collections,
        naive_seconds,
        baseline_seconds,
        ferry_seconds,
        peak_memory,
        largest_reply: run.largest_reply,
        commit_seconds: committing.elapsed().as_secs_f64(),
    })
}
