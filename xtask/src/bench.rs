//! `cargo xtask bench`: Ferry's speed and memory against baselines measured in the same run on
//! the same machine, written to `docs/BENCHMARKS.md`.
//!
//! For each data size (`FERRY_BENCH_DOCS`, default `500000,1000000`): the destination's raw
//! write ceiling (best of several concurrencies of unordered bulk inserts of documents already
//! in memory), a naive single-stream copy with the same driver, and Ferry from launch to
//! `canCommit` with its peak memory. Once: change application against a source written as fast
//! as one client can, the steady lag, and the catch-up after a one-minute backlog
//! (`FERRY_BENCH_APPLY=0` leaves that out, for quick copy measurements).
//! `FERRY_BENCH_FERRY_ARGS` adds arguments to `ferry migrate` (`--apply-lanes 1`, say).
//! `FERRY_BENCH_BASELINE=path/to/ferry` also runs another build on the same data, to canCommit,
//! just before this one (after the naive copy has warmed the caches for both).

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mongodb::bson::{doc, rawdoc, RawDocumentBuf};
use mongodb::{Client, Collection};
use serde_json::Value;
use testkit::Server;

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
        .run_command(doc! { "createIndexes": "big", "indexes": [{ "key": { "group": 1, "score": -1 }, "name": "group_score" }] })
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

/// The destination's raw write ceiling: the best of several concurrencies of unordered bulk
/// inserts of documents already in memory. (documents/s, bytes/s, concurrency)
async fn write_ceiling(destination: &Client, documents: i64) -> Result<(f64, f64, usize)> {
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
async fn naive_copy(source: &Client, destination: &Client) -> Result<f64> {
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

struct FerryRun {
    child: Child,
    api: String,
    /// When each phase (`info` of the progress) was first seen.
    phases: Vec<(String, Instant)>,
}

impl FerryRun {
    /// Starts `ferry migrate`; its log goes to `log`.
    fn start(
        ferry: &std::path::Path,
        source: &Server,
        destination: &Server,
        log: &std::path::Path,
    ) -> Result<Self> {
        let api = format!("127.0.0.1:{}", testkit::server::free_port()?);
        let child = Command::new(ferry)
            .args([
                "migrate",
                "--source",
                &source.uri(),
                "--destination",
                &destination.uri(),
                "--api-addr",
                &api,
            ])
            .args(
                std::env::var("FERRY_BENCH_FERRY_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting ferry")?;
        Ok(Self {
            child,
            api,
            phases: Vec::new(),
        })
    }

    fn progress(&self) -> Option<Value> {
        let mut response = ureq::get(&format!("http://{}/api/v1/progress", self.api))
            .call()
            .ok()?;
        let body = response.body_mut().read_to_string().ok()?;
        Some(serde_json::from_str::<Value>(&body).ok()?["progress"].clone())
    }

    fn post(&self, action: &str) -> Result<()> {
        ureq::post(&format!("http://{}/api/v1/{action}", self.api))
            .header("Content-Type", "application/json")
            .send("{}")
            .with_context(|| format!("POST {action}"))?;
        Ok(())
    }

    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(progress) = self.progress() {
                if let Some(phase) = progress["info"].as_str() {
                    if !self.phases.iter().any(|(p, _)| p == phase) {
                        self.phases.push((phase.to_string(), Instant::now()));
                    }
                }
                if condition(&progress) {
                    return Ok(progress);
                }
                if progress["state"] == "FAILED" {
                    bail!("ferry FAILED: {}", progress["error"]);
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("ferry exited ({status}) while waiting for {what}");
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident memory so far (Linux VmHWM), in bytes.
    fn peak_memory(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }

    fn commit_and_wait(&mut self) -> Result<()> {
        self.wait_for("lag 0", Duration::from_secs(600), |p| {
            p["canCommit"] == true && p["lagTimeSeconds"] == 0
        })?;
        self.post("commit")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("ferry exited with {status}");
        }
        Ok(())
    }
}

/// A source writer at one client's maximum rate: inserts and updates of ~1 KB documents.
fn max_rate_writer(
    source: &Client,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Result<()>> {
    let collection = source
        .database("bench")
        .collection::<RawDocumentBuf>("live");
    tokio::spawn(async move {
        let mut id = 10_000_000_000i64;
        while !stop.load(Ordering::Relaxed) {
            collection.insert_one(document(id)).await?;
            if id % 2 == 0 {
                collection
                    .update_one(doc! { "_id": id - 1 }, doc! { "$inc": { "group": 1 } })
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            done.fetch_add(1, Ordering::Relaxed);
            id += 1;
        }
        Ok(())
    })
}

struct SizeResult {
    documents: i64,
    ferry_seconds: f64,
    /// Seconds from launch to the copy, in the copy, and in the index build.
    pre_copy_seconds: f64,
    copy_seconds: f64,
    index_seconds: f64,
    naive_seconds: f64,
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

struct ApplyResult {
    source_rate: f64,
    apply_rate: f64,
    steady_lag_max: u64,
    steady_lag_mean: f64,
    backlog_seconds: f64,
    catch_up_seconds: f64,
}

pub fn run() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    super::run(Command::new(&cargo).args(["build", "--release", "--quiet", "-p", "ferry"]))?;
    let ferry = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ferry");
    let sizes: Vec<i64> = std::env::var("FERRY_BENCH_DOCS")
        .unwrap_or_else(|_| "500000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("FERRY_BENCH_DOCS must be a comma-separated list of document counts")?;
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
            ceiling = Some(runtime.block_on(write_ceiling(&dst, 200_000))?);
        }
        eprintln!("bench: naive single-stream copy");
        let naive_seconds = runtime.block_on(naive_copy(&src, &dst))?;
        // Another build of Ferry (`FERRY_BENCH_BASELINE=path/to/ferry`) on the same data, into
        // a destination of its own, just before this one: a change measured in one run.
        let baseline_seconds = match std::env::var_os("FERRY_BENCH_BASELINE") {
            Some(baseline) => {
                eprintln!(
                    "bench: baseline ferry ({}), launch to canCommit",
                    baseline.to_string_lossy()
                );
                let other = Server::start()?;
                let log = ferry.with_file_name(format!("bench-baseline-{documents}.log"));
                let started = Instant::now();
                let mut run =
                    FerryRun::start(std::path::Path::new(&baseline), &source, &other, &log)?;
                run.wait_for("canCommit", Duration::from_secs(3600), |p| {
                    p["canCommit"] == true
                })?;
                let seconds = started.elapsed().as_secs_f64();
                let _ = run.child.kill();
                let _ = run.child.wait();
                Some(seconds)
            }
            None => None,
        };
        eprintln!("bench: ferry copy, launch to canCommit");
        let started = Instant::now();
        let log = ferry.with_file_name(format!("bench-ferry-{documents}.log"));
        let mut run = FerryRun::start(&ferry, &source, &destination, &log)?;
        let ready = run.wait_for("canCommit", Duration::from_secs(3600), |p| {
            p["canCommit"] == true
        })?;
        let ferry_seconds = started.elapsed().as_secs_f64();
        let copy_memory = run.peak_memory();
        let seen = |phase: &str| {
            run.phases
                .iter()
                .find(|(p, _)| p == phase)
                .map(|(_, at)| at.duration_since(started).as_secs_f64())
        };
        let copy_started = seen("collection copy").unwrap_or(0.0);
        let index_started = seen("index building").unwrap_or(copy_started);
        let apply_started = seen("change event application").unwrap_or(ferry_seconds);
        let data_bytes = ready["collectionCopy"]["estimatedCopiedBytes"]
            .as_f64()
            .unwrap_or(0.0);
        if n == 0 && std::env::var("FERRY_BENCH_APPLY").as_deref() != Ok("0") {
            apply = Some(measure_apply(&runtime, &src, &mut run)?);
        }
        let peak_memory = run.peak_memory();
        run.commit_and_wait()?;
        results.push(SizeResult {
            documents,
            ferry_seconds,
            pre_copy_seconds: copy_started,
            copy_seconds: index_started - copy_started,
            index_seconds: apply_started - index_started,
            naive_seconds,
            baseline_seconds,
            peak_memory,
            copy_memory,
            data_bytes,
        });
        // Written after every size, so that a later size that fails leaves the earlier ones.
        let report = render(ceiling.expect("measured"), &results, apply.as_ref());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/BENCHMARKS.md");
        std::fs::write(&path, &report)?;
        eprintln!(
            "bench: {documents} documents done, written to {}",
            path.display()
        );
    }
    Ok(())
}

fn measure_apply(
    runtime: &tokio::runtime::Runtime,
    source: &Client,
    run: &mut FerryRun,
) -> Result<ApplyResult> {
    eprintln!("bench: change application against a source written at one client's maximum rate");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = {
        let _inside = runtime.enter();
        max_rate_writer(source, stop.clone(), done.clone())
    };
    std::thread::sleep(Duration::from_secs(5));
    let (mut lags, mut applied) = (Vec::new(), Vec::new());
    let (start_ops, started) = (done.load(Ordering::Relaxed), Instant::now());
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let progress = run.progress().context("progress during the steady state")?;
        lags.push(progress["lagTimeSeconds"].as_u64().unwrap_or(u64::MAX));
        applied.push(progress["rates"]["eventsPerSecond"].as_f64().unwrap_or(0.0));
    }
    let source_rate =
        (done.load(Ordering::Relaxed) - start_ops) as f64 / started.elapsed().as_secs_f64();
    eprintln!("bench: a one-minute backlog (paused while the source keeps writing)");
    run.post("pause")?;
    run.wait_for("PAUSED", Duration::from_secs(60), |p| {
        p["state"] == "PAUSED"
    })?;
    let backlog_started = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(writer)??;
    let backlog_seconds = backlog_started.elapsed().as_secs_f64();
    let resumed = Instant::now();
    run.post("resume")?;
    run.wait_for("the backlog applied", Duration::from_secs(1200), |p| {
        p["state"] == "RUNNING" && p["lagTimeSeconds"] == 0
    })?;
    let catch_up_seconds = resumed.elapsed().as_secs_f64();
    Ok(ApplyResult {
        source_rate,
        apply_rate: applied.iter().sum::<f64>() / applied.len() as f64,
        steady_lag_max: lags.iter().copied().max().unwrap_or(0),
        steady_lag_mean: lags.iter().sum::<u64>() as f64 / lags.len() as f64,
        backlog_seconds,
        catch_up_seconds,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .map_or("?".into(), |kb| {
            format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    format!("{cores} cores ({cpu}), {memory} memory; source, destination, Ferry and the load generator on the same machine; servers: secantusd-rs {}", testkit::server::SECANTUS_VERSION)
}

fn render(
    ceiling: (f64, f64, usize),
    results: &[SizeResult],
    apply: Option<&ApplyResult>,
) -> String {
    let mut out = String::new();
    let mb = |b: f64| b / 1_000_000.0;
    let _ = writeln!(
        out,
        "# Benchmarks\n\nMade by `cargo xtask bench` on {}.\n",
        machine()
    );
    let _ = writeln!(
        out,
        "Destination write ceiling (unordered bulk inserts of in-memory ~1 KB documents, best of 1/2/4/8 writers): **{:.0} documents/s, {:.1} MB/s** ({} writers).\n",
        ceiling.0,
        mb(ceiling.1),
        ceiling.2
    );
    let _ = writeln!(out, "## Initial copy (launch to canCommit)\n");
    let _ = writeln!(out, "| documents | data | Ferry | Ferry docs/s | Ferry MB/s | Ferry / ceiling | naive copy | Ferry / naive (speed) | Ferry peak memory to canCommit | Ferry peak memory, whole run |");
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let megabytes = |m: Option<u64>| m.map_or("?".into(), |m| format!("{:.0} MB", m as f64 / 1e6));
    for r in results {
        let rate = r.copied_documents() / r.ferry_seconds;
        let _ = writeln!(
            out,
            "| {} | {:.0} MB | {:.1} s | {:.0} | {:.1} | {:.0}% | {:.1} s | {:.2}× | {} | {} |",
            r.documents,
            mb(r.data_bytes),
            r.ferry_seconds,
            rate,
            mb(r.data_bytes / r.ferry_seconds),
            rate / ceiling.0 * 100.0,
            r.naive_seconds,
            r.naive_seconds / r.ferry_seconds,
            megabytes(r.copy_memory),
            megabytes(r.peak_memory)
        );
    }
    for r in results {
        if let Some(baseline) = r.baseline_seconds {
            let _ = writeln!(
                out,
                "\n{} documents, the baseline build (`FERRY_BENCH_BASELINE`) in the same run: {:.1} s to canCommit, this build {:.1} s ({:.2}× the speed).",
                r.documents,
                baseline,
                r.ferry_seconds,
                baseline / r.ferry_seconds
            );
        }
    }
    let _ = writeln!(
        out,
        "\nWhere Ferry's time goes, and the copy phase alone against the ceiling:\n"
    );
    let _ = writeln!(out, "| documents | launch → copy (pre-flight) | copy (planning + documents) | index build | copy phase docs/s | copy phase / ceiling |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
    for r in results {
        let rate = r.copied_documents() / r.copy_seconds;
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {:.1} s | {:.1} s | {:.0} | {:.0}% |",
            r.documents,
            r.pre_copy_seconds,
            r.copy_seconds,
            r.index_seconds,
            rate,
            rate / ceiling.0 * 100.0
        );
    }
    for pair in results.windows(2) {
        let (small, large) = (&pair[0], &pair[1]);
        let _ = writeln!(
            out,
            "\nScaling {} → {}: {:.1}× the data took {:.2}× the time.",
            small.documents,
            large.documents,
            large.documents as f64 / small.documents as f64,
            large.ferry_seconds / small.ferry_seconds,
        );
    }
    if let (Some(first), Some(last)) = (results.first(), results.last()) {
        if results.len() > 1 {
            let _ = writeln!(
                out,
                "\nPeak memory to canCommit {} → {} documents: {:+.0}%.",
                first.documents,
                last.documents,
                (last.copy_memory.unwrap_or(0) as f64 / first.copy_memory.unwrap_or(1) as f64
                    - 1.0)
                    * 100.0
            );
        }
    }
    if let Some(a) = apply {
        let _ = writeln!(out, "\n## Change application\n");
        let _ = writeln!(out, "| source writes/s (one client, max) | applied events/s | steady lag (mean / max) | backlog | catch-up | catch-up speed |");
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
        let _ = writeln!(
            out,
            "| {:.0} | {:.0} | {:.1} s / {} s | {:.0} s | {:.1} s | {:.1}× |",
            a.source_rate,
            a.apply_rate,
            a.steady_lag_mean,
            a.steady_lag_max,
            a.backlog_seconds,
            a.catch_up_seconds,
            a.backlog_seconds / a.catch_up_seconds
        );
    }
    out
}
