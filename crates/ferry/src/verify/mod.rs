//! Verification: proves that the destination holds what the source holds, namespace by
//! namespace (existence, options, view definitions, indexes) and document by document (hashed
//! partitions of the `_id` space, descending only where they differ), and says exactly where it
//! does not. Resumable, with memory that does not grow with the data.
//!
//! Inside a migration (`--verify`) it runs in two passes: a first pass while changes are applied,
//! whose differences and every document written after it are queued for re-check, and a final
//! pass at commit that covers what the first pass did not and re-checks the queue, so the
//! downtime pays only for what changed.

mod compare;
mod documents;
mod expiry;
mod metadata;
mod recheck;
pub mod report;
mod store;
mod tracker;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use mongodb::bson::Timestamp;
use mongodb::Client;

use crate::catalog::{self, CollectionSpec, Kind};
use crate::explain;
use crate::filter::NamespaceFilter;
use crate::progress::Progress;
pub use compare::Comparison;
use compare::Sides;
use documents::Differences;
pub use recheck::RecheckQueue;
pub use report::{NamespaceReport, Report};
pub use tracker::ChangeTracker;

/// How often the re-check queue is worked through while changes are applied.
const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Which verification runs.
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// A one-off `ferry verify`: every difference is reported.
    Standalone,
    /// The migration's first pass, while changes are applied: documents only (the catalog may
    /// still change), and differences are queued for re-check, not reported.
    FirstPass(&'a RecheckQueue),
    /// The migration's final pass, with the source quiescent and every change applied: metadata,
    /// the documents the first pass did not cover, then the re-check queue, reading the source
    /// at or after the commit point. What stays different is reported.
    Final(&'a RecheckQueue, Timestamp),
}

/// Verifies every included namespace of both clusters. With `progress`, the verification's
/// state is shown there as it goes.
pub async fn verify(
    source: &Client,
    destination: &Client,
    filter: &NamespaceFilter,
    comparison: Comparison,
    mode: Mode<'_>,
    progress: Option<&Progress>,
) -> Result<Report> {
    let (place, differences, running) = match mode {
        Mode::Standalone => (store::STANDALONE, Differences::Report, "running"),
        Mode::FirstPass(queue) => (store::MIGRATION, Differences::Queue(queue), "first pass"),
        Mode::Final(queue, _) => (store::MIGRATION, Differences::Queue(queue), "final pass"),
    };
    let sides = Sides {
        source,
        destination,
        source_at: match mode {
            Mode::Final(_, at) => Some(at),
            _ => None,
        },
        comparison,
    };
    let store = store::VerifyStore::new(destination, &filter.state_db, place);
    let mut namespaces: BTreeMap<String, (Option<CollectionSpec>, Option<CollectionSpec>)> =
        BTreeMap::new();
    for spec in catalog::list_namespaces(source, filter).await? {
        let ns = spec.ns();
        namespaces.entry(ns).or_default().0 = Some(spec);
    }
    for spec in catalog::list_namespaces(destination, filter).await? {
        let ns = spec.ns();
        namespaces.entry(ns).or_default().1 = Some(spec);
    }
    let show = |report: &Report, current: &NamespaceReport, state: &str| {
        if let Some(progress) = progress {
            let done: u64 = report.namespaces.iter().map(|n| n.documents_checked).sum();
            let mismatches =
                |n: &NamespaceReport| n.missing + n.extra + n.different + n.metadata.len() as u64;
            progress.update(|s| {
                let shown = s.verification.get_or_insert_with(Default::default);
                shown.state = state.to_string();
                shown.documents_checked = done + current.documents_checked;
                shown.mismatches =
                    report.namespaces.iter().map(mismatches).sum::<u64>() + mismatches(current);
            });
        }
    };
    let mut report = Report::default();
    let mut expiry = expiry::Expiry::new(sides);
    for (ns, (on_source, on_destination)) in namespaces {
        let mut checked = NamespaceReport {
            namespace: ns,
            ..Default::default()
        };
        if !matches!(mode, Mode::FirstPass(_)) {
            checked.metadata = metadata::differences(on_source.as_ref(), on_destination.as_ref());
        }
        let is_collection =
            |s: &Option<CollectionSpec>| s.as_ref().is_some_and(|s| s.kind == Kind::Collection);
        if is_collection(&on_source) || is_collection(&on_destination) {
            let spec = on_source
                .as_ref()
                .or(on_destination.as_ref())
                .expect("one side has it");
            show(&report, &checked, running);
            documents::verify_documents(
                &sides,
                &spec.db,
                &spec.name,
                &store,
                differences,
                &mut expiry,
                &mut checked,
            )
            .await
            .with_context(|| format!("reading {} for verification", spec.ns()))?;
        }
        report.namespaces.push(checked);
    }
    if let Mode::Final(queue, _) = mode {
        show(&report, &NamespaceReport::default(), "re-checking");
        let namespaces = &mut report.namespaces;
        let counts = queue
            .recheck(&sides, &mut |ns, mismatch| match namespaces
                .iter_mut()
                .find(|n| n.namespace == ns)
            {
                Some(known) => known.record(mismatch),
                None => {
                    let mut gone = NamespaceReport {
                        namespace: ns.to_string(),
                        ..Default::default()
                    };
                    gone.record(mismatch);
                    namespaces.push(gone);
                }
            })
            .await?;
        report.rechecked = counts.checked;
        if let Some(progress) = progress {
            progress.update(|s| {
                let shown = s.verification.get_or_insert_with(Default::default);
                shown.rechecked += counts.checked;
                shown.recheck_queued = counts.checked - counts.cleared;
            });
        }
    }
    let report = report.finish();
    match mode {
        Mode::Standalone => store.clear().await?,
        Mode::Final(queue, _) if report.equal => {
            store.clear().await?;
            queue.clear().await?;
        }
        // The first pass keeps its places for the final one; a failed final pass keeps its
        // evidence.
        _ => {}
    }
    let state = match mode {
        Mode::FirstPass(_) => "re-checking",
        _ if report.equal => "equal",
        _ => "different",
    };
    show(&report, &NamespaceReport::default(), state);
    Ok(report)
}

/// The migration's verification while changes are applied: the first pass, then the re-check
/// queue worked through every few seconds so that little is left for the commit. Runs until
/// dropped; a fault is logged and the work resumes where it stood.
pub async fn alongside_changes(
    source: Client,
    destination: Client,
    filter: NamespaceFilter,
    progress: Progress,
) {
    let queue = RecheckQueue::new(&destination, &filter.state_db);
    let comparison = Comparison::default();
    let pass = Mode::FirstPass(&queue);
    while let Err(error) = verify(
        &source,
        &destination,
        &filter,
        comparison,
        pass,
        Some(&progress),
    )
    .await
    {
        tracing::warn!(error = %explain::error(&error), "the first verification pass stopped; it resumes in a moment");
        tokio::time::sleep(RECHECK_INTERVAL).await;
    }
    tracing::info!("first verification pass finished; re-checking changed documents");
    let sides = Sides {
        source: &source,
        destination: &destination,
        source_at: None,
        comparison,
    };
    loop {
        let rechecked = queue.recheck(&sides, &mut |_, _| {}).await;
        let queued = queue.len().await;
        match (rechecked, queued) {
            (Ok(counts), Ok(queued)) => progress.update(|s| {
                let shown = s.verification.get_or_insert_with(Default::default);
                shown.rechecked += counts.checked;
                shown.recheck_queued = queued;
            }),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(error = %explain::error(&error), "re-checking changed documents failed; it is tried again")
            }
        }
        tokio::time::sleep(RECHECK_INTERVAL).await;
    }
}
