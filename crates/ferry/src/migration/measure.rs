//! What the copy does not wait for: each collection's size (the progress bars and the copy's
//! time left), and the two checks that need the size of the data left to copy, the source's
//! oplog window against the copy's duration and the destination's free disk (on every attempt
//! of the copy: a fault or a stop before they end must not skip them). A warning is logged as
//! the pre-flight's are, and a failed check stops the migration with the same line and fix.
//!
//! The sizes come from the copy itself where it can tell: a collection's document count, which
//! planning its ranges reads (metadata on a real server; counted here for a resumed copy), times
//! the average size of the documents copied of it so far; and the copy's own rate. Only the
//! collections that have copied nothing after a short wait are measured with the server's
//! statistics (`collStats`). On the test server a `collStats` reads the whole collection, and
//! beside a copy of 2,000,000 documents those reads slowed it by about a fifth.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_util::StreamExt;
use mongodb::bson::doc;

use super::Migration;
use crate::catalog::{self, CollectionSpec};
use crate::copy::ranges;
use crate::preflight::{checks, Status};
use crate::progress::{CollectionProgress, Collections};

/// Once every collection is planned, the copy's rate is measured over at least `RATE_WINDOW`
/// (before, the plans' reads hold it back), and the measurement waits at most `SAMPLE_WAIT` for
/// each collection still copying to have copied a first batch (its average document size).
const RATE_WINDOW: Duration = Duration::from_secs(3);
const SAMPLE_WAIT: Duration = Duration::from_secs(10);
const SAMPLE_POLL: Duration = Duration::from_millis(100);
/// Collections counted at the same time, for those whose plan did not count them.
const COUNT_AT_ONCE: usize = 16;

impl Migration<'_> {
    /// Runs `copying` with the measurements beside it, once `ready` has ended: the copy's
    /// result, or the failed check's.
    pub(super) async fn measure_beside(
        &self,
        copying: impl Future<Output = Result<()>>,
        ready: impl Future<Output = ()>,
        collections: &[&CollectionSpec],
    ) -> Result<()> {
        let measuring = async {
            ready.await;
            self.measure(collections).await
        };
        tokio::pin!(copying, measuring);
        tokio::select! {
            biased;
            copied = &mut copying => copied,
            measured = &mut measuring => {
                measured?;
                copying.await
            }
        }
    }

    async fn measure(&self, collections: &[&CollectionSpec]) -> Result<()> {
        let started = (Instant::now(), self.progress.snapshot().copied_bytes());
        // This attempt's collections: rows of an earlier attempt's (a collection dropped or
        // renamed since) are not copied any more.
        let ours: HashSet<String> = collections.iter().map(|s| s.ns()).collect();
        self.count_unplanned(collections).await;
        loop {
            let waited = started.0.elapsed();
            let rows = self.progress.snapshot().collections;
            let sampled = !ours.iter().any(|ns| rows.get(ns).is_some_and(unsampled));
            if waited >= SAMPLE_WAIT || (waited >= RATE_WINDOW && sampled) {
                break;
            }
            tokio::time::sleep(SAMPLE_POLL).await;
        }
        // The collections still waiting for their first batch: the server's statistics.
        let rows = self.progress.snapshot().collections;
        let waiting = specs_where(collections, &rows, unsampled);
        let stats = catalog::sizes::estimate_sizes(&self.source, waiting).await;
        // What is left to copy: a resumed copy needs room and history for the rest only.
        let (data, copied) = self.progress.update(|s| {
            let estimates: Vec<(String, u64, u64)> = s
                .collections
                .iter()
                .filter(|c| ours.contains(&c.namespace))
                .map(|c| {
                    let (documents, bytes) = match stats.get(&c.namespace) {
                        Some(&(documents, bytes)) => (documents, bytes),
                        None => (c.estimated_total_documents, estimated_bytes(c)),
                    };
                    let documents = documents.max(c.copied_documents);
                    (c.namespace.clone(), documents, bytes.max(c.copied_bytes))
                })
                .collect();
            let mut left = 0;
            for (ns, documents, bytes) in estimates {
                if let Some(c) = s.collections.get_mut(&ns) {
                    c.estimated_total_documents = documents;
                    c.estimated_total_bytes = bytes;
                    if !c.done {
                        left += bytes.saturating_sub(c.copied_bytes);
                    }
                }
            }
            (left as f64, s.copied_bytes())
        });
        let seconds = started.0.elapsed().as_secs_f64();
        let rate_bytes = copied.saturating_sub(started.1) as f64;
        let hello = self
            .source
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await?;
        let mut found = Vec::new();
        if hello.contains_key("setName") {
            let mut oplog = checks::oplog_size_and_span(&self.source, &hello).await;
            oplog.copy_rate = (rate_bytes > 1e6 && seconds > 0.0).then(|| rate_bytes / seconds);
            found.push(checks::oplog_window(&oplog, data));
        }
        found.push(checks::destination_disk(&self.destination, data).await);
        for check in found {
            let fix = check.fix.as_deref().unwrap_or("");
            match check.status {
                Status::Warn => tracing::warn!(check = check.id, fix, "{}", check.found),
                Status::Fail => return Err(anyhow!("{}: {}", check.found, fix)),
                Status::Pass => tracing::info!(check = check.id, "{}", check.found),
                Status::Skip => {}
            }
        }
        Ok(())
    }

    /// Counts the collections still copying that no plan counted: those resumed.
    async fn count_unplanned(&self, collections: &[&CollectionSpec]) {
        let rows = self.progress.snapshot().collections;
        let uncounted = specs_where(collections, &rows, |c| {
            !c.done && c.estimated_total_documents == 0
        });
        // By position: a closure over borrowed specs cannot be proven `Send` for every
        // lifetime, which spawning the migration needs.
        let (uncounted, source) = (&uncounted, &self.source);
        let counts: Vec<(String, u64)> = futures_util::stream::iter(0..uncounted.len())
            .map(move |at| async move {
                let spec = uncounted[at];
                (
                    spec.ns(),
                    ranges::estimated_count(source, spec).await.unwrap_or(0),
                )
            })
            .buffer_unordered(COUNT_AT_ONCE)
            .collect()
            .await;
        self.progress.update(|s| {
            for (ns, documents) in counts {
                if let Some(c) = s.collections.get_mut(&ns) {
                    c.estimated_total_documents = documents;
                }
            }
        });
    }
}

/// This attempt's collections whose progress row is `wanted`: rows of an earlier attempt's (a
/// collection dropped or renamed since) are not copied any more.
fn specs_where<'c>(
    collections: &[&'c CollectionSpec],
    rows: &Collections,
    wanted: impl Fn(&CollectionProgress) -> bool,
) -> Vec<&'c CollectionSpec> {
    collections
        .iter()
        .copied()
        .filter(|spec| rows.get(&spec.ns()).is_some_and(&wanted))
        .collect()
}

/// Still copying and nothing copied yet: no average size of its own.
fn unsampled(row: &CollectionProgress) -> bool {
    !row.done && row.copied_documents == 0
}

/// A collection's estimated size in bytes: its document count times the average size of the
/// documents copied of it; never less than what is copied.
fn estimated_bytes(row: &CollectionProgress) -> u64 {
    let average = match row.copied_documents {
        0 => 0.0,
        documents => row.copied_bytes as f64 / documents as f64,
    };
    ((row.estimated_total_documents as f64 * average) as u64).max(row.copied_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(total: u64, documents: u64, bytes: u64) -> CollectionProgress {
        CollectionProgress {
            estimated_total_documents: total,
            copied_documents: documents,
            copied_bytes: bytes,
            ..Default::default()
        }
    }

    #[test]
    fn a_size_is_the_count_times_the_average_copied_document() {
        assert_eq!(
            estimated_bytes(&row(2_000_000, 4_000, 4_100_000)),
            2_050_000_000
        );
        assert_eq!(
            estimated_bytes(&row(10, 20, 2_000)),
            2_000,
            "more copied than counted: what is copied"
        );
        assert_eq!(estimated_bytes(&row(10, 0, 0)), 0, "nothing copied yet");
    }

    #[test]
    fn only_this_attempts_collections_copying_and_without_a_batch_are_unsampled() {
        let mut rows = Collections::default();
        for (name, documents, done) in [("d.a", 0, false), ("d.b", 5, false), ("d.c", 0, true)] {
            rows.set(CollectionProgress {
                namespace: name.into(),
                copied_documents: documents,
                done,
                ..Default::default()
            });
        }
        rows.set(CollectionProgress {
            namespace: "d.gone".into(),
            ..Default::default()
        });
        let specs: Vec<CollectionSpec> = ["a", "b", "c"]
            .map(|name| CollectionSpec {
                db: "d".into(),
                name: name.into(),
                kind: crate::catalog::Kind::Collection,
                options: doc! {},
                uuid: None,
                indexes: Vec::new(),
            })
            .into();
        let ours: Vec<&CollectionSpec> = specs.iter().collect();
        let waiting = specs_where(&ours, &rows, unsampled);
        assert_eq!(waiting.iter().map(|s| s.ns()).collect::<Vec<_>>(), ["d.a"]);
    }
}
