//! `ferry check`, `ferry verify` and `ferry reset`: one-shot commands against the clusters.

use super::args::{CheckArgs, ResetArgs, VerifyArgs};
use super::{input_error, Exit};
use crate::explain;
use crate::plan::InputError;

pub async fn check(args: CheckArgs) -> Exit {
    let clusters = match args.clusters.clusters().await {
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
            eprintln!("error: {}", explain::error(&e));
            return Exit::Refused;
        }
    };
    let options = crate::preflight::Options {
        drop: args.drop,
        block_writes: !args.no_block_writes,
        reversible: args.reversible,
        direction: crate::lifecycle::Direction::Forward,
        measure: true,
    };
    let outcome = crate::preflight::run_checks(&clusters, options, &source, &destination).await;
    close([source, destination]).await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome.report).expect("a report serializes")
        );
    } else {
        print!("{}", outcome.report.to_text());
    }
    if outcome.report.blocking {
        Exit::Refused
    } else {
        Exit::Done
    }
}

pub async fn reset(args: ResetArgs) -> Exit {
    let run = async {
        let destination = crate::plan::Endpoint::parse("destination", &args.destination)
            .await?
            .with_password_file(args.destination_password_file.as_deref())?;
        let client = destination
            .client()
            .map_err(|e| InputError(explain::error(&e)))?;
        let summary = crate::reset::reset(&client, &args.state_db, args.yes).await;
        close([client]).await;
        summary.map_err(|e| InputError(explain::error(&e)))
    };
    match run.await {
        Ok(summary) => {
            println!("{summary}");
            if args.yes {
                Exit::Done
            } else {
                Exit::Refused
            }
        }
        Err(e) => input_error(e),
    }
}

pub async fn verify(args: VerifyArgs) -> Exit {
    let clusters = match args.clusters.clusters().await {
        Ok(clusters) => clusters,
        Err(e) => return input_error(e),
    };
    let comparison = crate::verify::Comparison {
        ignore_field_order: args.ignore_field_order,
    };
    let run = async {
        let source = clusters.source.client()?;
        let destination = clusters.destination.client()?;
        let report = crate::verify::verify(
            &source,
            &destination,
            &clusters.filter,
            comparison,
            crate::verify::Mode::Standalone,
            None,
        )
        .await;
        close([source, destination]).await;
        report
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
                Exit::Done
            } else {
                Exit::Failed
            }
        }
        Err(e) => {
            eprintln!("error: {}", explain::error(&e));
            if e.downcast_ref::<InputError>().is_some() {
                Exit::Refused
            } else {
                Exit::Unverified
            }
        }
    }
}

/// Shuts the clients down before the process exits: a client merely dropped at exit ends its
/// sessions in the background on a pool that may already be gone, and the driver then panics
/// onto stderr after the command's output.
async fn close<const N: usize>(clients: [mongodb::Client; N]) {
    for client in clients {
        client.shutdown().await;
    }
}
