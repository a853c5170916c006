//! Verification: proves that the destination holds what the source holds, namespace by
//! namespace (existence, options, view definitions, indexes) and document by document (hashed
//! partitions of the `_id` space, descending only where they differ), and says exactly where it
//! does not. Resumable, with memory that does not grow with the data.

mod documents;
mod metadata;
pub mod report;
mod store;

use std::collections::BTreeMap;

use anyhow::Result;
use mongodb::Client;

use crate::catalog::{self, CollectionSpec, Kind};
use crate::filter::NamespaceFilter;
use crate::progress::{Progress, VerificationProgress};
pub use documents::Comparison;
pub use report::{NamespaceReport, Report};
pub use store::VerifyStore;

/// Verifies every included namespace of both clusters. With `progress`, the verification's
/// state is shown there as it goes.
pub async fn verify(
    source: &Client,
    destination: &Client,
    filter: &NamespaceFilter,
    comparison: Comparison,
    progress: Option<&Progress>,
) -> Result<Report> {
    let store = VerifyStore::new(destination, &filter.state_db);
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
                s.verification = Some(VerificationProgress {
                    state: state.to_string(),
                    documents_checked: done + current.documents_checked,
                    mismatches: report.namespaces.iter().map(mismatches).sum::<u64>()
                        + mismatches(current),
                })
            });
        }
    };
    let mut report = Report::default();
    for (ns, (on_source, on_destination)) in namespaces {
        let mut checked = NamespaceReport {
            namespace: ns,
            metadata: metadata::differences(on_source.as_ref(), on_destination.as_ref()),
            ..Default::default()
        };
        let is_collection =
            |s: &Option<CollectionSpec>| s.as_ref().is_some_and(|s| s.kind == Kind::Collection);
        if is_collection(&on_source) || is_collection(&on_destination) {
            let spec = on_source
                .as_ref()
                .or(on_destination.as_ref())
                .expect("one side has it");
            show(&report, &checked, "running");
            documents::verify_documents(
                source,
                destination,
                &spec.db,
                &spec.name,
                comparison,
                &store,
                &mut checked,
            )
            .await?;
        }
        report.namespaces.push(checked);
    }
    store.clear().await?;
    let report = report.finish();
    let state = if report.equal { "equal" } else { "different" };
    show(&report, &NamespaceReport::default(), state);
    Ok(report)
}
