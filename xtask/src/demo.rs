//! `cargo xtask demo`: two local servers, sample data, an application that keeps writing, Ferry
//! migrating live, the application stopped, the commit once the lag is zero, and a summary that
//! proves the two sides are equal. `--reverse` goes on: the application writes to the new side
//! and `ferry reverse` brings it back to the old one, with a SIGKILL on the way.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use testkit::workload::{self, Workload};
use testkit::Server;

const SEED: u64 = 20_261_126;
const DOCUMENTS_PER_COLLECTION: u32 = 25_000;

/// `reverse`: after the commit, the application moves to the destination and `ferry reverse`
/// brings its writes back to the source (killed with SIGKILL once on the way, and resumed).
pub fn run(reverse: bool) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("demo: building ferry (release)");
    super::run(Command::new(&cargo).args(["build", "--release", "--quiet", "-p", "ferry"]))?;
    let ferry = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ferry");

    let source = Server::start()?;
    let destination = Server::start()?;
    eprintln!("demo: source      {}", source.uri());
    eprintln!("demo: destination {}", destination.uri());

    let runtime = tokio::runtime::Runtime::new()?;
    let src = runtime.block_on(mongodb::Client::with_uri_str(source.uri()))?;
    let dst = runtime.block_on(mongodb::Client::with_uri_str(destination.uri()))?;
    eprintln!(
        "demo: seeding the source: {} documents in each of 4 collections, plus capped, validated, collated and clustered collections, indexes and a view",
        DOCUMENTS_PER_COLLECTION
    );
    runtime.block_on(workload::seed(&src, SEED, DOCUMENTS_PER_COLLECTION))?;

    let clusters = [
        "--source",
        &source.uri(),
        "--destination",
        &destination.uri(),
    ]
    .map(String::from);
    let mut args = vec!["migrate".to_string()];
    args.extend(clusters.iter().cloned());
    if reverse {
        args.push("--reversible".into());
    }
    eprintln!(
        "demo: the application starts writing (inserts, updates, deletes, transactions, DDL)"
    );
    let started = Instant::now();
    let stats = run_live(&runtime, &ferry, &args, &src, SEED + 1, false)?;
    let elapsed = started.elapsed();
    let differences = runtime.block_on(testkit::compare::differences(&src, &dst))?;
    eprintln!("\n──────── demo summary ────────");
    eprintln!(
        "migration time (launch to COMMITTED): {:.1} s",
        elapsed.as_secs_f64()
    );
    eprintln!(
        "application writes during the migration: {} operations ({} transactions, {} DDL)",
        stats.operations, stats.transactions, stats.ddl
    );
    equal(&differences)?;
    if !reverse {
        return Ok(());
    }

    eprintln!("\ndemo: the application now writes to the destination; `ferry reverse` brings its writes back to the source");
    let mut args = vec!["reverse".to_string()];
    args.extend(clusters.iter().cloned());
    let started = Instant::now();
    let stats = run_live(&runtime, &ferry, &args, &dst, SEED + 2, true)?;
    let elapsed = started.elapsed();
    let differences = runtime.block_on(testkit::compare::differences(&src, &dst))?;
    eprintln!("\n──────── reverse summary ────────");
    eprintln!(
        "reverse time (launch to COMMITTED, with one SIGKILL): {:.1} s",
        elapsed.as_secs_f64()
    );
    eprintln!(
        "application writes on the destination: {} operations ({} transactions, {} DDL)",
        stats.operations, stats.transactions, stats.ddl
    );
    equal(&differences)
}

fn equal(differences: &[String]) -> Result<()> {
    if differences.is_empty() {
        eprintln!("verified: every database, collection, option, index and document is equal on both sides");
        Ok(())
    } else {
        bail!("the two sides differ:\n{}", differences.join("\n"))
    }
}

/// Runs `ferry ARGS` to COMMITTED while the application writes to `app_client`: the commit once
/// `canCommit` holds and the application has stopped and the lag is zero. With `kill`, Ferry is
/// killed with SIGKILL once it applies changes, and started again with the same arguments.
fn run_live(
    runtime: &tokio::runtime::Runtime,
    ferry: &std::path::Path,
    args: &[String],
    app_client: &mongodb::Client,
    seed: u64,
    kill: bool,
) -> Result<testkit::workload::Stats> {
    let stop_app = Arc::new(AtomicBool::new(false));
    let app = runtime.spawn(
        Workload::new(app_client.clone(), seed).run(stop_app.clone(), Duration::from_millis(2)),
    );
    let api = format!("127.0.0.1:{}", testkit::server::free_port()?);
    let start = || {
        Command::new(ferry)
            .args(args)
            .args(["--api-addr", &api])
            .stdin(Stdio::null())
            .spawn()
            .context("starting ferry")
    };
    let mut migration = start()?;
    let progress = |api: &str| -> Option<Value> {
        let body = ureq_get(&format!("http://{api}/api/v1/progress"))?;
        Some(serde_json::from_str::<Value>(&body).ok()?["progress"].clone())
    };
    if kill {
        wait_until(&mut migration, Duration::from_secs(600), || {
            progress(&api).is_some_and(|p| p["info"] == "change event application")
        })?;
        std::thread::sleep(Duration::from_secs(2));
        eprintln!("\ndemo: SIGKILL to ferry while it applies changes; starting it again");
        migration.kill()?;
        migration.wait()?;
        migration = start()?;
    }
    wait_until(&mut migration, Duration::from_secs(600), || {
        progress(&api).is_some_and(|p| p["canCommit"] == true)
    })?;
    eprintln!("\ndemo: canCommit is true; the application keeps writing for 5 more seconds");
    std::thread::sleep(Duration::from_secs(5));
    stop_app.store(true, Ordering::Relaxed);
    let stats = runtime.block_on(app)??;
    eprintln!(
        "\ndemo: the application stopped after {} operations; waiting for lag 0",
        stats.operations
    );
    wait_until(&mut migration, Duration::from_secs(120), || {
        progress(&api).is_some_and(|p| p["lagTimeSeconds"] == 0)
    })?;
    eprintln!("\ndemo: lag is 0: committing");
    super::run(Command::new(ferry).args(["commit", "--api-addr", &api]))?;
    let status = migration.wait()?;
    if !status.success() {
        bail!("ferry exited with {status}");
    }
    Ok(stats)
}

fn ureq_get(url: &str) -> Option<String> {
    let mut response = ureq::get(url).call().ok()?;
    response.body_mut().read_to_string().ok()
}

fn wait_until(
    migration: &mut std::process::Child,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if let Some(status) = migration.try_wait()? {
            bail!("ferry exited early with {status}");
        }
        if Instant::now() > deadline {
            let _ = migration.kill();
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
