//! What the copy does not wait for: each collection's size (the progress bars and the copy's
//! time left), and the two checks that need the size of the data left to copy, the source's
//! oplog window against the copy's duration and the destination's free disk (on every attempt
//! of the copy: a fault or a stop before they end must not skip them). On some servers
//! measuring reads whole collections and the oplog (the test server's `collStats` scans), so
//! it runs beside the copy instead of before its first byte; a warning is logged as the
//! pre-flight's are, and a failed check stops the migration with the same line and fix.

use std::future::Future;

use anyhow::{anyhow, Result};
use mongodb::bson::doc;

use super::Migration;
use crate::catalog::{self, CollectionSpec};
use crate::preflight::{checks, Status};

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
        let sizes = catalog::sizes::estimate_sizes(&self.source, collections.iter().copied()).await;
        // What is left to copy: a resumed copy needs room and history for the rest only.
        let data = self.progress.update(|s| {
            let mut left = 0;
            for (ns, (documents, bytes)) in &sizes {
                if let Some(c) = s.collections.get_mut(ns) {
                    c.estimated_total_documents = *documents;
                    c.estimated_total_bytes = *bytes;
                    if !c.done {
                        left += bytes.saturating_sub(c.copied_bytes);
                    }
                }
            }
            left as f64
        });
        let hello = self
            .source
            .database("admin")
            .run_command(doc! { "hello": 1 })
            .await?;
        let mut found = Vec::new();
        if hello.contains_key("setName") {
            let included: Vec<CollectionSpec> = collections.iter().map(|&s| s.clone()).collect();
            let oplog = checks::read_oplog(&self.source, &included, &hello).await;
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
}
