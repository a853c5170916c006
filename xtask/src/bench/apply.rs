//! Change application under load: four clients writing at their maximum rate and one hot
//! document updated in a tight loop beside them; the steady lag, then the catch-up after a
//! one-minute backlog.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mongodb::bson::{doc, RawDocumentBuf};
use mongodb::Client;

use super::document;
use super::ferry_run::FerryRun;

/// Clients writing at their maximum rate, beside the hot document's.
const WRITERS: i64 = 4;

/// A source writer at one client's maximum rate: inserts and updates of ~1 KB documents, its
/// `_id`s from `first` on.
fn max_rate_writer(
    source: &Client,
    first: i64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Result<()>> {
    let collection = source
        .database("bench")
        .collection::<RawDocumentBuf>("live");
    tokio::spawn(async move {
        let mut id = first;
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

/// One document updated in a tight loop: every event of it lands in the same apply lane, in
/// order.
fn hot_document_writer(
    source: &Client,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Result<()>> {
    let collection = source.database("bench").collection::<RawDocumentBuf>("hot");
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            collection
                .update_one(doc! { "_id": "hot" }, doc! { "$inc": { "n": 1 } })
                .upsert(true)
                .await?;
            done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    })
}

pub struct ApplyResult {
    pub writers: i64,
    /// Source writes per second by all writers together, and by the hot document's alone.
    pub source_rate: f64,
    pub hot_rate: f64,
    pub apply_rate: f64,
    pub steady_lag_max: u64,
    pub steady_lag_mean: f64,
    pub backlog_seconds: f64,
    pub catch_up_seconds: f64,
}

pub fn measure_apply(
    runtime: &tokio::runtime::Runtime,
    source: &Client,
    run: &mut FerryRun,
) -> Result<ApplyResult> {
    eprintln!("bench: change application against {WRITERS} clients writing at their maximum rate and a hot document");
    let stop = Arc::new(AtomicBool::new(false));
    let (done, hot) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writers: Vec<_> = {
        let _inside = runtime.enter();
        (0..WRITERS)
            .map(|w| max_rate_writer(source, (10 + w) * 1_000_000_000, stop.clone(), done.clone()))
            .chain(std::iter::once(hot_document_writer(
                source,
                stop.clone(),
                hot.clone(),
            )))
            .collect()
    };
    std::thread::sleep(Duration::from_secs(5));
    let (mut lags, mut applied) = (Vec::new(), Vec::new());
    let ops = || done.load(Ordering::Relaxed) + hot.load(Ordering::Relaxed);
    let (start_ops, start_hot, started) = (ops(), hot.load(Ordering::Relaxed), Instant::now());
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let progress = run.progress().context("progress during the steady state")?;
        lags.push(progress["lagTimeSeconds"].as_u64().unwrap_or(u64::MAX));
        applied.push(progress["rates"]["eventsPerSecond"].as_f64().unwrap_or(0.0));
    }
    let source_rate = (ops() - start_ops) as f64 / started.elapsed().as_secs_f64();
    let hot_rate =
        (hot.load(Ordering::Relaxed) - start_hot) as f64 / started.elapsed().as_secs_f64();
    eprintln!("bench: a one-minute backlog (paused while the source keeps writing)");
    run.post("pause")?;
    run.wait_for("PAUSED", Duration::from_secs(60), |p| {
        p["state"] == "PAUSED"
    })?;
    let backlog_started = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        runtime.block_on(writer)??;
    }
    let backlog_seconds = backlog_started.elapsed().as_secs_f64();
    let resumed = Instant::now();
    run.post("resume")?;
    run.wait_for("the backlog applied", Duration::from_secs(1200), |p| {
        p["state"] == "RUNNING" && p["lagTimeSeconds"] == 0
    })?;
    let catch_up_seconds = resumed.elapsed().as_secs_f64();
    Ok(ApplyResult {
        writers: WRITERS,
        source_rate,
        hot_rate,
        apply_rate: applied.iter().sum::<f64>() / applied.len() as f64,
        steady_lag_max: lags.iter().copied().max().unwrap_or(0),
        steady_lag_mean: lags.iter().sum::<u64>() as f64 / lags.len() as f64,
        backlog_seconds,
        catch_up_seconds,
    })
}
