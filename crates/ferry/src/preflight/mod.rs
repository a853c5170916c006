//! Pre-flight: before Ferry writes a single byte of user data, prove that the migration can
//! succeed, and when something is wrong say exactly what and how to fix it. `ferry check` prints
//! the report; `ferry migrate` runs the same checks and refuses to start on a failed one (exit 2).
//!
//! The checks, by id: `source.reachable`, `destination.reachable` (network, TLS, credentials),
//! `source.replica-set`, `destination.primary`, `clusters.distinct`, `versions`,
//! `source.privileges`, `destination.privileges`, `filters.match`, `destination.empty`,
//! `source.oplog-window`, `destination.disk`, `source.write-blocking`, `source.not-migrated`.

pub mod checks;
mod identity;
pub mod report;

use anyhow::{Context, Result};
use mongodb::bson::{doc, Document};
use mongodb::Client;

use crate::catalog;
use crate::lifecycle::Direction;
use crate::plan::{Clusters, InputError, Plan};
use crate::state::{StateStore, Stored};
use identity::{emptiness, identity, members, other_identity};
pub use report::{Check, Report, Status};

/// Why source checks are skipped on a standalone server.
const NEEDS_MEMBER: &str = "needs a replica set member as the source";

/// What the checks learned that the migration goes on with.
pub struct Outcome {
    pub report: Report,
    /// A migration stored on the destination that this command resumes.
    pub resume: Option<Stored>,
    /// The plan's identity, as stored with a new migration.
    pub identity: Document,
}

/// How the migration the checks are for will run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `--drop`: occupied namespaces are reported as what will be dropped, not as a failure.
    pub drop: bool,
    /// Writes to the source are blocked at commit (not `--no-block-writes`).
    pub block_writes: bool,
    /// `--reversible`: check what reversing will need.
    pub reversible: bool,
    /// A reverse (`ferry reverse`): the destination is the old source, which holds the data.
    pub direction: Direction,
    /// Measure the data for the oplog-window and disk checks here (`ferry check`); a migration
    /// measures it beside its copy instead, which then starts at once.
    pub measure: bool,
}

/// Runs every check.
pub async fn run_checks(
    clusters: &Clusters,
    options: Options,
    source: &Client,
    destination: &Client,
) -> Outcome {
    let drop = options.drop;
    let mut report = Report::default();
    let source_hello = checks::reachable("source.reachable", &clusters.source, source).await;
    let destination_hello =
        checks::reachable("destination.reachable", &clusters.destination, destination).await;
    let (source_hello, destination_hello) = match (source_hello, destination_hello) {
        (Ok(s), Ok(d)) => {
            report.push(Check::pass(
                "source.reachable",
                format!("connected to {}", clusters.source.redacted),
            ));
            report.push(Check::pass(
                "destination.reachable",
                format!("connected to {}", clusters.destination.redacted),
            ));
            (s, d)
        }
        (s, d) => {
            for check in [s.err(), d.err()].into_iter().flatten() {
                report.push(check);
            }
            return Outcome {
                report,
                resume: None,
                identity: Document::new(),
            };
        }
    };
    // A reverse starts from what its forward migration recorded on the new cluster.
    let forward = match options.direction {
        Direction::Reverse => Some(
            StateStore::new(source, &clusters.filter.state_db)
                .load()
                .await
                .map_err(|e| crate::explain::error(&e)),
        ),
        Direction::Forward => None,
    };
    let reverse_from = forward
        .as_ref()
        .and_then(|f| f.as_ref().ok()?.as_ref()?.reverse.as_ref())
        .map(|r| r.time);
    let identity = identity(clusters, &source_hello, options.direction, reverse_from);
    // Checks that cannot mean anything without these are skipped, not failed twice over.
    let source_member = source_hello.contains_key("setName");
    let destination_writable = destination_hello
        .get_bool("isWritablePrimary")
        .unwrap_or(false);

    report.push(checks::source_replica_set(
        &source_hello,
        &clusters.source.redacted,
    ));
    report.push(if destination_writable {
        Check::pass(
            "destination.primary",
            "the destination is a writable primary",
        )
    } else {
        Check::fail(
            "destination.primary",
            format!(
                "the destination at {} is not a writable primary",
                clusters.destination.redacted
            ),
            "connect to the destination replica set (replicaSet=NAME) or to its primary",
        )
    });
    let source_members = members(&source_hello);
    let same = members(&destination_hello)
        .iter()
        .any(|h| source_members.contains(h))
        && source_hello.get_str("setName") == destination_hello.get_str("setName");
    report.push(if same {
        Check::fail(
            "clusters.distinct",
            format!(
                "the source and the destination are the same cluster ({})",
                source_members.join(",")
            ),
            "give the new cluster as --destination",
        )
    } else {
        Check::pass(
            "clusters.distinct",
            "the source and the destination are different clusters",
        )
    });
    report.push(checks::versions(source, destination).await);
    if options.reversible {
        report.push(checks::reversible(
            &destination_hello,
            &clusters.destination.redacted,
        ));
    }

    let included = catalog::list_namespaces_unindexed(source, &clusters.filter)
        .await
        .unwrap_or_default();
    let stored = StateStore::new(destination, &clusters.filter.state_db)
        .load()
        .await
        .ok()
        .flatten()
        .filter(|_| !drop);
    // A new migration measures the data and reads the oplog alongside the checks in between: on
    // some servers they scan the collections and the oplog. One that resumes needs neither.
    let resuming = stored
        .as_ref()
        .is_some_and(|s| other_identity(s, &identity).is_none());
    let sizing = async {
        if resuming || options.direction == Direction::Reverse || !options.measure {
            return None;
        }
        Some(tokio::join!(
            crate::catalog::sizes::estimate_sizes(source, &included),
            checks::read_oplog(source, &included, &source_hello)
        ))
    };
    let in_between = async {
        let mut checks = vec![
            if source_member {
                checks::source_privileges(source, &included).await
            } else {
                Check::skip("source.privileges", NEEDS_MEMBER)
            },
            if destination_writable {
                checks::destination_privileges(destination, &clusters.filter.state_db).await
            } else {
                Check::skip(
                    "destination.privileges",
                    "needs a writable primary on the destination",
                )
            },
        ];
        let everything = crate::filter::NamespaceFilter {
            state_db: clusters.filter.state_db.clone(),
            ..Default::default()
        };
        let on_source = catalog::list_names(source, &everything)
            .await
            .unwrap_or_default();
        checks.push(checks::filters_match(&clusters.filter, &on_source));
        let (empty, resume) = match (options.direction, stored.clone()) {
            (Direction::Reverse, None) => (
                checks::reverse_ready(
                    forward.clone().expect("loaded for a reverse"),
                    clusters,
                    &destination_hello,
                    source,
                )
                .await,
                None,
            ),
            (_, stored) => destination_empty(clusters, drop, destination, stored, &identity).await,
        };
        checks.push(empty);
        (checks, resume)
    };
    let (sizing, (checks, resume)) = tokio::join!(sizing, in_between);
    for check in checks {
        report.push(check);
    }
    if let Some((measured, oplog)) = sizing {
        let data = measured.values().map(|(_, bytes)| *bytes).sum::<u64>() as f64;
        report.push(if source_member {
            checks::oplog_window(&oplog, data)
        } else {
            Check::skip("source.oplog-window", NEEDS_MEMBER)
        });
        report.push(checks::destination_disk(destination, data).await);
    } else if options.direction == Direction::Reverse {
        for id in ["source.oplog-window", "destination.disk"] {
            report.push(Check::skip(id, "a reverse copies nothing"));
        }
    } else if !resuming {
        for id in ["source.oplog-window", "destination.disk"] {
            report.push(Check::skip(
                id,
                "measured beside the copy, which starts at once",
            ));
        }
    }

    report.push(checks::write_blocking(source, options.block_writes).await);
    report.push(checks::not_migrated(source, &included).await);
    Outcome {
        report,
        resume,
        identity,
    }
}

/// The destination must hold none of the included namespaces, unless it holds a migration to
/// resume with the same arguments, or `--drop` was given.
async fn destination_empty(
    clusters: &Clusters,
    drop: bool,
    destination: &Client,
    stored: Option<Stored>,
    identity: &Document,
) -> (Check, Option<Stored>) {
    let occupied: Vec<String> = if stored.is_some() {
        Vec::new()
    } else {
        catalog::list_namespaces(destination, &clusters.filter)
            .await
            .unwrap_or_default()
            .iter()
            .map(catalog::CollectionSpec::ns)
            .collect()
    };
    emptiness(stored, identity, &occupied, drop)
}

/// The checks `ferry migrate` runs before anything else. On the first attempt every check runs
/// and a failed one refuses the start (exit 2); with `--drop`, the included namespaces and any
/// earlier state are then cleared. A retry after a transient fault only needs both ends to
/// answer and the stored state.
pub async fn validate(
    plan: &Plan,
    source: &Client,
    destination: &Client,
    first_attempt: bool,
) -> Result<Outcome> {
    let clusters = plan.clusters();
    if !first_attempt {
        let reverse_from = match plan.direction {
            Direction::Reverse => StateStore::new(source, &plan.filter.state_db)
                .load()
                .await?
                .and_then(|f| f.reverse)
                .map(|r| r.time),
            Direction::Forward => None,
        };
        let source_hello = source
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await?;
        destination
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await?;
        let stored = StateStore::new(destination, &plan.filter.state_db)
            .load()
            .await?;
        return Ok(Outcome {
            report: Report::default(),
            resume: stored,
            identity: identity(&clusters, &source_hello, plan.direction, reverse_from),
        });
    }
    let options = Options {
        drop: plan.drop,
        block_writes: plan.block_writes,
        reversible: plan.reversible,
        direction: plan.direction,
        measure: false,
    };
    let outcome = run_checks(&clusters, options, source, destination).await;
    for check in outcome
        .report
        .checks
        .iter()
        .filter(|c| c.status == Status::Warn)
    {
        tracing::warn!(
            check = check.id,
            fix = check.fix.as_deref().unwrap_or(""),
            "{}",
            check.found
        );
    }
    if outcome.report.blocking {
        return Err(InputError(outcome.report.refusal()).into());
    }
    if plan.drop {
        for spec in catalog::list_namespaces(destination, &plan.filter).await? {
            tracing::info!(namespace = %spec.ns(), "dropping on the destination (--drop)");
            destination
                .database(&spec.db)
                .collection::<Document>(&spec.name)
                .drop()
                .await
                .with_context(|| format!("dropping {} on the destination", spec.ns()))?;
        }
        StateStore::new(destination, &plan.filter.state_db)
            .clear()
            .await?;
    }
    Ok(outcome)
}
