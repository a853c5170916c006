//! The command line: `ferry migrate` runs a migration with its API and live view, `ferry commit`
//! and `ferry status` talk to a running one over its API. Each subcommand returns the process
//! exit code (0 done, 1 failed, 2 bad input, 130/143 stopped by SIGINT/SIGTERM).

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::migration::{self, Outcome};
use crate::plan::{InputError, Plan};
use crate::progress::Progress;
use crate::redact::redact_uri;
use crate::{api, report};

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:27182";

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Live-migrate a MongoDB replica set into another one"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy everything, follow changes, and commit on the operator's word.
    Migrate(MigrateArgs),
    /// Ask a running migration to commit (the application must have stopped writing).
    Commit(ApiArgs),
    /// Show a running migration's progress.
    Status(ApiArgs),
    /// Prove that the destination holds what the source holds (exit 0 equal, 1 not).
    Verify(VerifyArgs),
    /// Check that a migration can succeed, without starting it (exit 0 ready, 2 blocked).
    Check(CheckArgs),
    /// Forget a migration: drop its state and the namespaces it wrote on the destination.
    Reset(ResetArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Check as `ferry migrate --drop` would (occupied namespaces will be dropped).
    #[arg(long)]
    pub drop: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    /// Connection string of the destination replica set.
    #[arg(long, value_name = "URI")]
    pub destination: String,
    /// Database on the destination that holds Ferry's own state.
    #[arg(long, value_name = "NAME", default_value = "__ferry")]
    pub state_db: String,
    /// Really drop (without it, only say what would be dropped).
    #[arg(long)]
    pub yes: bool,
}

/// The two clusters and the namespaces a command works on.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Connection string of the source replica set.
    #[arg(long, value_name = "URI")]
    pub source: String,
    /// Connection string of the destination replica set.
    #[arg(long, value_name = "URI")]
    pub destination: String,
    /// Only this database (`db`) or collection (`db.coll`); repeatable.
    #[arg(long, value_name = "NS")]
    pub include: Vec<String>,
    /// Leave out this database or collection; repeatable.
    #[arg(long, value_name = "NS")]
    pub exclude: Vec<String>,
    /// Database on the destination that holds Ferry's own state.
    #[arg(long, value_name = "NAME", default_value = "__ferry")]
    pub state_db: String,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Address of the HTTP API (progress, commit).
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_API_ADDR)]
    pub api_addr: String,
    /// Drop the included namespaces and any earlier Ferry state on the destination first.
    #[arg(long)]
    pub drop: bool,
    /// Verify the whole destination at commit, before COMMITTED; a difference fails the commit.
    #[arg(long)]
    pub verify: bool,
    /// How long to ride out network errors, restarts and elections without progress.
    #[arg(long, value_name = "DURATION", default_value = "30m")]
    pub retry_window: String,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Compare documents without regard to field order (MongoDB compares in order).
    #[arg(long)]
    pub ignore_field_order: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Address of the running migration's HTTP API.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_API_ADDR)]
    pub api_addr: String,
    /// Print the API's JSON reply instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// Runs a parsed command and returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Migrate(args) => migrate(args).await,
        Command::Commit(args) => commit(args).await,
        Command::Status(args) => status(args).await,
        Command::Verify(args) => verify(args).await,
        Command::Check(args) => check(args).await,
        Command::Reset(args) => reset(args).await,
    }
}

async fn check(args: CheckArgs) -> i32 {
    let clusters = match crate::plan::Clusters::new(&args.clusters).await {
        Ok(clusters) => clusters,
        Err(e) => return input_error(e),
    };
    let clients = clusters
        .source
        .client()
        .and_then(|s| Ok((s, clusters.destination.client()?)));
    let (source, destination) = match clients {
        Ok(clients) => clients,
        Err(e) => {
            eprintln!("error: {}", redact_uri(&format!("{e:#}")));
            return 2;
        }
    };
    let outcome = crate::preflight::run_checks(&clusters, args.drop, &source, &destination).await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome.report).expect("a report serializes")
        );
    } else {
        print!("{}", outcome.report.to_text());
    }
    if outcome.report.blocking {
        2
    } else {
        0
    }
}

async fn reset(args: ResetArgs) -> i32 {
    let run = async {
        let destination = crate::plan::Endpoint::parse("destination", &args.destination).await?;
        let client = destination
            .client()
            .map_err(|e| InputError(e.to_string()))?;
        crate::reset::reset(&client, &args.state_db, args.yes)
            .await
            .map_err(|e| InputError(redact_uri(&format!("{e:#}"))))
    };
    match run.await {
        Ok(summary) => {
            println!("{summary}");
            if args.yes {
                0
            } else {
                2
            }
        }
        Err(e) => input_error(e),
    }
}

async fn verify(args: VerifyArgs) -> i32 {
    let clusters = match crate::plan::Clusters::new(&args.clusters).await {
        Ok(clusters) => clusters,
        Err(e) => return input_error(e),
    };
    let comparison = crate::verify::Comparison {
        ignore_field_order: args.ignore_field_order,
    };
    let run = async {
        let source = clusters.source.client()?;
        let destination = clusters.destination.client()?;
        crate::verify::verify(&source, &destination, &clusters.filter, comparison, None).await
    };
    match run.await {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report serializes")
                );
            } else {
                print!("{}", report.to_text());
            }
            if report.equal {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("error: {}", redact_uri(&format!("{e:#}")));
            if e.downcast_ref::<InputError>().is_some() {
                2
            } else {
                3
            }
        }
    }
}

fn input_error(error: InputError) -> i32 {
    eprintln!("error: {error}");
    2
}

async fn migrate(args: MigrateArgs) -> i32 {
    let plan = match Plan::new(&args).await {
        Ok(plan) => plan,
        Err(e) => return input_error(e),
    };
    let listener = match tokio::net::TcpListener::bind(plan.api_addr).await {
        Ok(listener) => listener,
        Err(e) => {
            return input_error(InputError(format!(
                "cannot serve the API on {}: {e}; choose another address with --api-addr",
                plan.api_addr
            )))
        }
    };
    tracing::info!(
        source = %plan.source.redacted,
        destination = %plan.destination.redacted,
        api = %format!("http://{}", plan.api_addr),
        "starting migration"
    );

    let progress = Progress::default();
    let stop = CancellationToken::new();
    let quit = CancellationToken::new();
    let signal = tokio::spawn(stop_on_signal(stop.clone()));
    let server = axum::serve(listener, api::router(progress.clone()));
    let server_quit = quit.clone();
    tokio::spawn(async move {
        let _ = server
            .with_graceful_shutdown(async move { server_quit.cancelled().await })
            .await;
    });
    let terminal = std::io::stderr().is_terminal();
    let reporter = tokio::spawn(report::run(progress.clone(), terminal, quit.clone()));

    let result = migration::run(plan, progress.clone(), stop.clone()).await;
    quit.cancel();
    let _ = reporter.await;
    match result {
        Ok(Outcome::Committed) => {
            let s = progress.snapshot();
            eprintln!(
                "COMMITTED: {} documents copied, {} changes applied, in {} s",
                s.copied_documents(),
                s.events.total(),
                s.started.elapsed().as_secs()
            );
            0
        }
        Ok(Outcome::Stopped) => {
            let code = if signal.is_finished() {
                signal.await.unwrap_or(130)
            } else {
                130
            };
            eprintln!("stopped before commit; run the same command again to continue");
            code
        }
        Err(e) => {
            eprintln!("error: {}", redact_uri(&format!("{e:#}")));
            if e.downcast_ref::<InputError>().is_some() {
                2
            } else {
                1
            }
        }
    }
}

/// Cancels `stop` on SIGINT or SIGTERM and returns the exit code that signal calls for.
async fn stop_on_signal(stop: CancellationToken) -> i32 {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => 130,
        _ = term.recv() => 143,
    };
    tracing::warn!("stop requested: stopping at a consistent point");
    stop.cancel();
    code
}

/// Sends one request to a running migration's API: (HTTP status, JSON body).
fn call_api(addr: &str, method: &str, path: &str) -> Result<(u16, serde_json::Value), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let response = match method {
        "POST" => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send("{}"),
        _ => agent.get(&url).call(),
    }
    .map_err(|e| format!("no Ferry migration answers at {addr} ({e}); is `ferry migrate` running with this --api-addr?"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .read_to_string()
        .map_err(|e| format!("reading the reply from {addr}: {e}"))?;
    let json = serde_json::from_str(&body)
        .map_err(|_| format!("{addr} answered with something that is not Ferry's API: {body}"))?;
    Ok((status, json))
}

async fn commit(args: ApiArgs) -> i32 {
    let addr = args.api_addr.clone();
    let reply = tokio::task::spawn_blocking(move || call_api(&addr, "POST", "/api/v1/commit"))
        .await
        .expect("the API call panicked");
    match reply {
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
        Ok((_, body)) if args.json => {
            println!("{body}");
            if body["success"] == true {
                0
            } else {
                1
            }
        }
        Ok((_, body)) if body["success"] == true => {
            println!("commit accepted: Ferry applies the last changes, restores constraints and reports COMMITTED");
            0
        }
        Ok((_, body)) => {
            eprintln!(
                "commit refused: {}",
                body["errorDescription"]
                    .as_str()
                    .unwrap_or("no reason given")
            );
            1
        }
    }
}

async fn status(args: ApiArgs) -> i32 {
    let addr = args.api_addr.clone();
    let reply = tokio::task::spawn_blocking(move || call_api(&addr, "GET", "/api/v1/progress"))
        .await
        .expect("the API call panicked");
    match reply {
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
        Ok((_, body)) if args.json => {
            println!("{body}");
            0
        }
        Ok((_, body)) => {
            let p = &body["progress"];
            println!(
                "state {}  ·  {}  ·  canCommit {}  ·  lag {}  ·  copied {} of {} bytes",
                p["state"].as_str().unwrap_or("?"),
                p["info"].as_str().unwrap_or("?"),
                p["canCommit"],
                p["lagTimeSeconds"],
                p["collectionCopy"]["estimatedCopiedBytes"],
                p["collectionCopy"]["estimatedTotalBytes"]
            );
            if let Some(error) = p["error"].as_str() {
                println!("error: {error}");
            }
            0
        }
    }
}
