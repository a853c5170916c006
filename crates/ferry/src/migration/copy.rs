//! The copy stage: every collection not copied yet is planned, 32 at a time, and its ranges
//! join one bounded pool with the other collections' at once (`pool`): a small collection is
//! one `_id` range, a large one (by the server's document count) is cut into bounded ranges
//! first, and the pool cuts ranges again as they run; a resumed one continues its stored
//! ranges. Each range checkpoints its last `_id`, the last range of a collection marks it
//! copied, and its indexes are then built beside the other copies (`indexing`). The pre-flight
//! measures nothing for the copy: the sizes, for the progress and the disk and oplog checks,
//! are taken from the plans' counts and the copy's first batches, or from `collStats` for a
//! collection that has copied nothing yet (`measure`).

use std::collections::HashMap;

use anyhow::{Context, Result};
use futures_util::FutureExt;
use mongodb::bson::{Bson, Timestamp};

use super::pool::{Job, Pool, Tracked};
use super::Migration;
use crate::background;
use crate::catalog::{CollectionSpec, Kind};
use crate::copy;
use crate::copy::ranges::Reach;
use crate::majority;
use crate::namespace::Namespace;
use crate::progress::CollectionProgress;
use crate::source::clock;
use crate::state::{CollectionState, CopyStatus, Partition};

/// Collections planned at the same time (their sizes, creation and stored ranges; fewer cut a
/// large collection at once, `pool::PLAN_READS`): with many small collections the plans are
/// what feeds the pool. Copying 20,000 collections of 20 documents to canCommit took 28.7 s and
/// 32.2 s 32 at a time, against 34.2 s and 34.3 s 8 at a time (alternating runs on one
/// machine).
const PLAN_CONCURRENCY: usize = 32;

/// What a collection's copy does, given what is stored of it.
#[derive(Debug, PartialEq)]
enum CopyPlan {
    /// Copied already (this incarnation).
    Done,
    /// Continue these ranges (this incarnation, copy under way).
    Resume(Vec<Partition>),
    /// The stored copy is of another incarnation: drop it and copy anew.
    StartOver,
    /// Nothing stored: copy it.
    New,
}

/// The plan for a collection's copy from its stored copy state.
fn copy_plan(spec: &CollectionSpec, stored: Option<&CollectionState>) -> CopyPlan {
    match stored {
        Some(state) if state.uuid != spec.uuid => CopyPlan::StartOver,
        Some(state) if state.status != CopyStatus::Copying => CopyPlan::Done,
        Some(state) if !state.partitions.is_empty() => CopyPlan::Resume(state.partitions.clone()),
        // Registered, but its ranges never recorded: plan them again.
        Some(_) => CopyPlan::StartOver,
        None => CopyPlan::New,
    }
}

/// Each collection's namespace by its source UUID: where a stored copy's collection is now,
/// looked up once per stored copy (a scan of every collection for each was 3.2 s at 20,000).
fn names_by_uuid<'s>(collections: &[&'s CollectionSpec]) -> HashMap<&'s [u8], String> {
    collections
        .iter()
        .filter_map(|spec| Some((uuid_bytes(&spec.uuid)?, spec.ns())))
        .collect()
}

fn uuid_bytes(uuid: &Option<Bson>) -> Option<&[u8]> {
    match uuid {
        Some(Bson::Binary(binary)) => Some(&binary.bytes),
        _ => None,
    }
}

impl Migration<'_> {
    /// Copies every collection not yet copied, continuing each from its last checkpoint.
    pub(super) async fn copy_all(&self, specs: &[CollectionSpec], at: Timestamp) -> Result<()> {
        let collections: Vec<&CollectionSpec> = specs
            .iter()
            .filter(|s| s.kind == Kind::Collection)
            .collect();
        let mut stored: HashMap<String, CollectionState> = HashMap::new();
        let names = names_by_uuid(&collections);
        for state in self.store.collections().await? {
            // A collection renamed during an earlier attempt's copy is listed under its new
            // name now, while that copy lies under the old one: a replayed rename would put the
            // partial copy over the whole one. Copy states are the source's incarnations, so
            // such an orphan is dropped and the collection copied again under its new name.
            let renamed = uuid_bytes(&state.uuid)
                .and_then(|uuid| names.get(uuid))
                .is_some_and(|name| *name != state.ns);
            if renamed {
                tracing::info!(namespace = %state.ns, "the collection was renamed during its copy; copying it again under its new name");
                if let Some(orphan) = Namespace::parse(&state.ns) {
                    majority::drop(&self.destination.database(&orphan.db), &orphan.coll).await?;
                }
                self.store.forget_copy(&state.ns).await?;
                continue;
            }
            stored.insert(state.ns.clone(), state);
        }
        for spec in &collections {
            let ns = spec.ns();
            let resumed = stored.get(&ns).filter(|c| c.uuid == spec.uuid);
            self.progress.update(|s| {
                s.collections.set(CollectionProgress {
                    namespace: ns.clone(),
                    copied_documents: resumed.map_or(0, |c| c.copied_documents),
                    copied_bytes: resumed.map_or(0, |c| c.copied_bytes),
                    done: resumed.is_some_and(|c| c.status != CopyStatus::Copying),
                    phase: match resumed.map(|c| c.status) {
                        Some(CopyStatus::Indexed) => "indexed",
                        Some(CopyStatus::Copied) => "copied",
                        Some(CopyStatus::Copying) => "copying",
                        None => "pending",
                    },
                    ..Default::default()
                })
            });
        }
        for spec in specs.iter().filter(|s| s.kind == Kind::Timeseries) {
            tracing::warn!(namespace = %spec.ns(), "time-series collections are not migrated");
        }
        // Every `_id` range left to copy, across all collections, runs in one bounded pool,
        // which takes a collection's ranges as soon as they are planned: the small collections
        // are copied while a large one's ranges are still being planned.
        // One reading of the source's clock, after `specs` were listed, for every range's reads
        // to see at least that catalog.
        let listed = clock::read(&self.source)
            .await
            .context("reading the source's clock before the copy")?
            .last_write;
        let (pool, finished) = Pool::new(listed);
        let (jobs, planned) = tokio::sync::mpsc::unbounded_channel();
        let planning = {
            let (pool, stored) = (&pool, &stored);
            // The plans hold the only senders: the pool sees the end of planning when they end.
            // By position: a closure over borrowed specs cannot be proven `Send` for every
            // lifetime, which spawning the migration needs.
            let collections = &collections;
            let plans = (0..collections.len()).map(move |at_position| {
                let spec = collections[at_position];
                self.plan_ranges(spec, stored.get(&spec.ns()), at, pool, jobs.clone())
            });
            background::at_most(PLAN_CONCURRENCY, plans)
        };
        // The measurements wait for the plans: they take the plans' counts, and the copy's rate
        // once the plans' reads are over (on the test server a large collection's count and
        // ends each read the whole collection).
        let (planned_all, plans_done) = tokio::sync::oneshot::channel::<()>();
        let planning = async {
            let planned = planning.await;
            let _ = planned_all.send(());
            planned
        };
        let copying = async {
            tokio::try_join!(planning, self.run_pool(&pool, planned, finished, at)).map(drop)
        };
        let measuring = async {
            // A failed plan ends the copy too: then there is nothing to measure for.
            let _ = plans_done.await;
        };
        self.measure_beside(copying, measuring, &collections)
            .await?;
        tracing::info!(
            concurrent_writes = pool.write_concurrency(),
            "copy write concurrency at the end of the copy"
        );
        for view in specs.iter().filter(|s| s.kind == Kind::View) {
            copy::create_namespace(&self.destination, view).await?;
        }
        Ok(())
    }

    /// Plans one collection's copy and hands its unfinished `_id` ranges to the copy pool.
    pub(super) fn plan_ranges<'a: 'p, 'p>(
        &'p self,
        spec: &'a CollectionSpec,
        stored: Option<&'p CollectionState>,
        at: Timestamp,
        pool: &'p Pool<'a>,
        jobs: tokio::sync::mpsc::UnboundedSender<Job<'a>>,
    ) -> futures_util::future::BoxFuture<'p, Result<()>> {
        async move {
            let ns = spec.ns();
            let Some((ranges, reach, small)) = self.plan_copy(spec, stored, at, pool).await? else {
                return Ok(());
            };
            let recorded = ranges.len();
            copy::create_namespace(&self.destination, spec).await?;
            self.set_collection_phase(&ns, "copying");
            let remaining: Vec<(usize, Partition)> = ranges
                .into_iter()
                .enumerate()
                .filter(|(_, r)| !r.done)
                .collect();
            if remaining.is_empty() {
                return self.finish_copy(spec, 0, pool, false).await;
            }
            pool.track(
                ns,
                Tracked {
                    unfinished: remaining.len(),
                    copied: 0,
                    ranges: recorded,
                    reach,
                    looking: false,
                    small,
                },
            );
            for (index, range) in remaining {
                // The pool runs until every sender is gone, so the receiver is still there.
                let _ = jobs.send((spec, index, range));
            }
            Ok(())
        }
        .boxed()
    }

    pub(super) fn set_collection_phase(&self, ns: &str, phase: &'static str) {
        self.progress.update(|s| {
            if let Some(c) = s.collections.get_mut(ns) {
                c.phase = phase;
                c.done = phase != "copying";
            }
        });
    }

    /// Shows the stored copy counts of a copy that finished before a restart.
    pub(super) async fn show_finished_copy(&self) -> Result<()> {
        let stored = self.store.collections().await?;
        self.progress.update(|s| {
            s.collections = stored
                .iter()
                .map(|c| CollectionProgress {
                    namespace: c.ns.clone(),
                    estimated_total_documents: c.copied_documents,
                    estimated_total_bytes: c.copied_bytes,
                    copied_documents: c.copied_documents,
                    copied_bytes: c.copied_bytes,
                    done: true,
                    phase: "indexed",
                    ..Default::default()
                })
                .collect();
        });
        Ok(())
    }

    /// The `_id` ranges of a collection's copy: the stored ones when resuming the same
    /// incarnation, else new ones, with how far the collection reaches when that was read, and
    /// what it holds when it is small (`room::small_bytes`; a resumed copy of several ranges is
    /// not); `None` when it is copied already. Cutting a large collection reads its ends or a
    /// sample under `pool`'s limit on such reads.
    pub(super) async fn plan_copy(
        &self,
        spec: &CollectionSpec,
        stored: Option<&CollectionState>,
        at: Timestamp,
        pool: &Pool<'_>,
    ) -> Result<Option<(Vec<Partition>, Reach, Option<u64>)>> {
        let ns = spec.ns();
        match copy_plan(spec, stored) {
            CopyPlan::Done => {
                tracing::info!(namespace = %ns, "already copied");
                return Ok(None);
            }
            CopyPlan::Resume(partitions) => {
                let done = partitions.iter().filter(|p| p.done).count();
                tracing::info!(namespace = %ns, partitions = partitions.len(), done, "resuming the copy");
                // One range left of a small collection runs beside the large ones as a new one
                // would: a retry of many small collections' copy is not four at a time.
                let small = match partitions.len() {
                    1 => {
                        let size = copy::ranges::estimated_size(&self.source, spec).await;
                        super::room::small_bytes(size)
                    }
                    _ => None,
                };
                return Ok(Some((partitions, Reach::Unknown, small)));
            }
            CopyPlan::StartOver => {
                // The source holds a new incarnation: start this collection over.
                majority::drop(&self.destination.database(&spec.db), &spec.name).await?;
            }
            CopyPlan::New => {}
        }
        let size = copy::ranges::estimated_size(&self.source, spec).await;
        let documents = size.map_or(0, |s| s.documents);
        self.progress.update(|s| {
            if let Some(c) = s.collections.get_mut(&ns) {
                c.estimated_total_documents = documents;
            }
        });
        let (ranges, reach) = match copy::ranges::range_count(spec, documents) {
            1 => (vec![Partition::default()], Reach::Unknown),
            count => {
                let _reading = pool.plan_reads.acquire().await?;
                let (bounds, reach) = copy::ranges::plan(&self.source, spec, count, at).await?;
                (copy::ranges::ranges_between(&bounds), reach)
            }
        };
        if ranges.len() > 1 {
            tracing::info!(namespace = %ns, partitions = ranges.len(), "copying in parallel _id ranges");
        }
        self.store
            .begin_copy(&ns, spec.uuid.as_ref(), &ranges)
            .await?;
        Ok(Some((ranges, reach, super::room::small_bytes(size))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn a_copy_resumes_only_its_own_incarnation() {
        let uuid = |n: u8| {
            Some(Bson::Binary(mongodb::bson::Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Uuid,
                bytes: vec![n; 16],
            }))
        };
        let spec = CollectionSpec {
            db: "d".into(),
            name: "c".into(),
            kind: Kind::Collection,
            options: doc! {},
            uuid: uuid(1),
            indexes: Vec::new(),
        };
        let state = |status, partitions: Vec<Partition>, id| CollectionState {
            ns: "d.c".into(),
            uuid: uuid(id),
            status,
            partitions,
            copied_documents: 0,
            copied_bytes: 0,
        };
        let half = vec![Partition {
            last_id: Some(Bson::Int32(5)),
            ..Default::default()
        }];
        assert_eq!(copy_plan(&spec, None), CopyPlan::New);
        assert_eq!(
            copy_plan(&spec, Some(&state(CopyStatus::Copying, half.clone(), 1))),
            CopyPlan::Resume(half.clone())
        );
        assert_eq!(
            copy_plan(&spec, Some(&state(CopyStatus::Copied, half.clone(), 1))),
            CopyPlan::Done
        );
        assert_eq!(
            copy_plan(&spec, Some(&state(CopyStatus::Copying, half, 2))),
            CopyPlan::StartOver,
            "a new incarnation under the same name"
        );
    }

    #[test]
    fn a_collection_is_found_by_its_uuid_under_its_new_name() {
        let spec = |name: &str, n: u8| CollectionSpec {
            db: "d".into(),
            name: name.into(),
            kind: Kind::Collection,
            options: doc! {},
            uuid: Some(Bson::Binary(mongodb::bson::Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Uuid,
                bytes: vec![n; 16],
            })),
            indexes: Vec::new(),
        };
        let (renamed, kept) = (spec("new", 1), spec("kept", 2));
        let names = names_by_uuid(&[&renamed, &kept]);
        let now = |n: u8| names.get(&[n; 16][..]).map(String::as_str);
        assert_eq!(
            (now(1), now(2), now(3)),
            (Some("d.new"), Some("d.kept"), None)
        );
        assert_eq!(uuid_bytes(&None), None);
    }
}
