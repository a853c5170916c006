//! `cargo xtask bench`: Ferry's speed and memory against baselines measured in the same run on
//! the same machine, written to `docs/BENCHMARKS.md`.
//!
//! For each data size (`FERRY_BENCH_DOCS`, default `500000,2000000`; `0` leaves them out): the
//! destination's raw write ceiling (best of several concurrencies of unordered bulk inserts of
//! documents already in memory), a naive single-stream copy with the same driver, the floor
//! (`baselines::floor`: range pipes with known bounds, then the index build), and Ferry from
//! launch to `canCommit` with its phases and peak memory. Once: change application against four
//! clients writing as fast as they can and a hot document (`apply`; `FERRY_BENCH_APPLY=0`
//! leaves it out). Then many namespaces (`namespaces`, `FERRY_BENCH_NAMESPACES`).
//! `FERRY_BENCH_FERRY_ARGS` adds arguments to `ferry migrate` (`--apply-lanes 1`, say).
//! `FERRY_BENCH_BASELINE=path/to/ferry` also runs another build on the same data, to canCommit,
//! just before this one (after the naive copy has warmed the caches for both).

mod apply;
mod baselines;
mod ferry_run;
mod namespaces;
mod report;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mongodb::bson::{doc, rawdoc, RawDocumentBuf};
use mongodb::{Client, Collection};
use testkit::Server;

use ferry_run::FerryRun;

/// Awaits every task, returning the first error.
async fn collect_all(tasks: Vec<tokio::task::JoinHandle<Result<()>>>) -> Result<()> {
    for task in tasks {
        task.await??;
    }
    Ok(())
}

const SMALL_COLLECTIONS: usize = 5;
const SMALL_DOCUMENTS: u32 = 2_000;
/// The source's oplog holds at most this many entries: more than the change-application
/// measurement writes (about 300,000), less than the largest seed.
const SOURCE_OPLOG_ENTRIES: u64 = 1_000_000;

/// A ~1 KB document.
fn document(id: i64) -> RawDocumentBuf {
    rawdoc! {
        "_id": id,
        "name": format!("customer-{id:010}"),
        "group": (id % 97) as i32,
        "score": (id as f64) * 0.5,
        "tags": ["a", "b", "c"],
        "payload": "x".repeat(900),
    }
}

async fn insert_all(
    collection: &Collection<RawDocumentBuf>,
    ids: std::ops::Range<i64>,
) -> Result<()> {
    let mut batch = Vec::with_capacity(1000);
    for id in ids {
        batch.push(document(id));
        if batch.len() == 1000 {
            collection
                .insert_many(std::mem::take(&mut batch))
                .ordered(false)
                .await?;
        }
    }
    if !batch.is_empty() {
        collection.insert_many(batch).ordered(false).await?;
    }
    Ok(())
}

async fn seed(source: &Client, documents: i64) -> Result<()> {
    let big = source.database("bench").collection::<RawDocumentBuf>("big");
    let writers = 4;
    let per = documents / writers;
    let tasks = (0..writers)
        .map(|w| {
            let big = big.clone();
            let end = if w == writers - 1 {
                documents
            } else {
                (w + 1) * per
            };
            tokio::spawn(async move { insert_all(&big, w * per..end).await })
        })
        .collect();
    collect_all(tasks).await?;
    source
        .database("bench")
        .run_command(doc! { "createIndexes": "big", "indexes": [
            { "key": { "group": 1, "score": -1 }, "name": "group_score" },
            { "key": { "name": 1 }, "name": "name_1", "unique": true },
        ] })
        .await?;
    for i in 0..SMALL_COLLECTIONS {
        let name = format!("small{i}");
        let small = source.database("bench").collection::<RawDocumentBuf>(&name);
        insert_all(&small, 0..i64::from(SMALL_DOCUMENTS)).await?;
        source
            .database("bench")
            .run_command(doc! { "createIndexes": name, "indexes": [{ "key": { "name": 1 }, "name": "name_1", "unique": true }] })
            .await?;
    }
    Ok(())
}

pub struct SizeResult {
    documents: i64,
    ferry_seconds: f64,
    /// Seconds from launch to the copy, in the copy (with the index builds that overlap it),
    /// and in the index builds left after it.
    pre_copy_seconds: f64,
    copy_seconds: f64,
    index_seconds: f64,
    /// Seconds from the copy's start (the pre-flight's end) to the first copied bytes shown.
    first_copied_seconds: Option<f64>,
    naive_seconds: f64,
    floor: baselines::Floor,
    /// Another build's launch to canCommit on the same data (`FERRY_BENCH_BASELINE`).
    baseline_seconds: Option<f64>,
    /// Ferry's peak memory over the whole run, and up to `canCommit`.
    peak_memory: Option<u64>,
    copy_memory: Option<u64>,
    data_bytes: f64,
}

impl SizeResult {
    /// The documents Ferry copies: the large collection and the small ones.
    fn copied_documents(&self) -> f64 {
        self.documents as f64 + SMALL_COLLECTIONS as f64 * f64::from(SMALL_DOCUMENTS)
    }
}

pub fn run() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    super::run(Command::new(&cargo).args(["build", "--release", "--quiet", "-p", "ferry"]))?;
    let ferry = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ferry");
    let sizes = counts("FERRY_BENCH_DOCS", "500000,2000000")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut ceiling = None;
    let mut results = Vec::new();
    let mut apply = None;
    for (n, &documents) in sizes.iter().enumerate() {
        // An oplog sized like a production one for this data (about 1 GB of these documents);
        // on the stand-in every oplog read is a scan, which an unbounded oplog makes grow with
        // each size.
        let source = Server::start_with(&testkit::server::ServerOptions {
            oplog_max_entries: Some(SOURCE_OPLOG_ENTRIES),
            ..Default::default()
        })?;
        let destination = Server::start()?;
        let src = runtime.block_on(Client::with_uri_str(source.uri()))?;
        let dst = runtime.block_on(Client::with_uri_str(destination.uri()))?;
        eprintln!("bench: seeding {documents} documents of ~1 KB plus {SMALL_COLLECTIONS} small collections");
        runtime.block_on(seed(&src, documents))?;
        runtime.block_on(testkit::server::trim_oplog(&src));
        if ceiling.is_none() {
            ceiling = Some(runtime.block_on(baselines::write_ceiling(&dst, 200_000))?);
        }
        eprintln!("bench: naive single-stream copy");
        let naive_seconds = runtime.block_on(baselines::naive_copy(&src, &dst))?;
        let floor = runtime.block_on(baselines::floor(&src, &dst, documents))?;
        // Another build of Ferry (`FERRY_BENCH_BASELINE=path/to/ferry`) on the same data, into
        // a destination of its own, just before this one: a change measured in one run.
        let baseline_seconds =
            ferry_run::baseline_to_can_commit(&ferry, &source, &documents.to_string())?;
        eprintln!("bench: ferry copy, launch to canCommit");
        let started = Instant::now();
        let log = ferry.with_file_name(format!("bench-ferry-{documents}.log"));
        let mut run = FerryRun::start(&ferry, &source, &destination, &log)?;
        let ready = run.wait_for("canCommit", Duration::from_secs(3600), |p| {
            p["canCommit"] == true
        })?;
        let ferry_seconds = started.elapsed().as_secs_f64();
        let copy_memory = run.peak_memory();
        let copy_started = run.seen("collection copy", started).unwrap_or(0.0);
        let apply_started = run
            .seen("change event application", started)
            .unwrap_or(ferry_seconds);
        // The index-building phase is short now (builds run beside the copy): it may pass
        // between two polls.
        let index_started = run.seen("index building", started).unwrap_or(apply_started);
        let first_copied = run
            .first_copied
            .map(|at| at.duration_since(started).as_secs_f64() - copy_started);
        let data_bytes = ready["collectionCopy"]["estimatedCopiedBytes"]
            .as_f64()
            .unwrap_or(0.0);
        if n == 0 && std::env::var("FERRY_BENCH_APPLY").as_deref() != Ok("0") {
            apply = Some(apply::measure_apply(&runtime, &src, &mut run)?);
        }
        let peak_memory = run.peak_memory();
        run.commit_and_wait()?;
        results.push(SizeResult {
            documents,
            ferry_seconds,
            pre_copy_seconds: copy_started,
            copy_seconds: index_started - copy_started,
            index_seconds: apply_started - index_started,
            first_copied_seconds: first_copied,
            naive_seconds,
            floor,
            baseline_seconds,
            peak_memory,
            copy_memory,
            data_bytes,
        });
        // Written after every size, so that a later size that fails leaves the earlier ones.
        write_report(ceiling, &results, apply.as_ref(), &[])?;
        eprintln!("bench: {documents} documents done");
    }
    let mut namespaces = Vec::new();
    for collections in counts("FERRY_BENCH_NAMESPACES", "3000,20000")? {
        namespaces.push(namespaces::measure(&runtime, &ferry, collections as usize)?);
        write_report(ceiling, &results, apply.as_ref(), &namespaces)?;
        eprintln!("bench: {collections} collections done");
    }
    Ok(())
}

/// The comma-separated counts in the variable `name` (zeros left out), or `default`'s.
fn counts(name: &str, default: &str) -> Result<Vec<i64>> {
    let counts: Vec<i64> = std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{name} must be a comma-separated list of counts"))?;
    Ok(counts.into_iter().filter(|&c| c > 0).collect())
}

fn write_report(
    ceiling: Option<(f64, f64, usize)>,
    results: &[SizeResult],
    apply: Option<&apply::ApplyResult>,
    namespaces: &[namespaces::NamespacesResult],
) -> Result<()> {
    let report = report::render(ceiling, results, apply, namespaces);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/BENCHMARKS.md");
    std::fs::write(&path, &report)?;
    eprintln!("bench: written to {}", path.display());
    Ok(())
}
