//! The initial copy: creates each collection on the destination with its (relaxed) options,
//! streams its documents as raw BSON from a reader task into a writer task through a bounded
//! channel, and builds the indexes once the data is in.

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::options::ReadConcern;
use mongodb::Client;
use tokio::sync::mpsc;

use crate::catalog::{self, CollectionSpec, Kind};
use crate::id_order;
use crate::progress::Progress;
use crate::server_error::{is_code, only_duplicates, NAMESPACE_EXISTS};
use crate::state::StateStore;

/// Documents per insert batch, and the byte size at which a batch is sent early.
const BATCH_DOCUMENTS: usize = 1000;
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Batches buffered between the reader and the writer of one collection.
const BATCHES_IN_FLIGHT: usize = 4;

/// The source's size estimate of a collection: (documents, bytes).
pub async fn estimate_size(source: &Client, spec: &CollectionSpec) -> (u64, u64) {
    let stats = source
        .database(&spec.db)
        .run_command(doc! { "collStats": &spec.name })
        .await;
    match stats {
        Ok(stats) => (number(&stats, "count"), number(&stats, "size")),
        Err(_) => (0, 0),
    }
}

fn number(doc: &Document, field: &str) -> u64 {
    match doc.get(field) {
        Some(mongodb::bson::Bson::Int32(n)) => (*n).max(0) as u64,
        Some(mongodb::bson::Bson::Int64(n)) => (*n).max(0) as u64,
        Some(mongodb::bson::Bson::Double(n)) => n.max(0.0) as u64,
        _ => 0,
    }
}

/// Creates a namespace on the destination: collections with relaxed options, views exactly.
/// An existing namespace is left as it is.
pub async fn create_namespace(destination: &Client, spec: &CollectionSpec) -> Result<()> {
    let command = spec.create_command(spec.kind == Kind::Collection);
    match destination
        .database(&spec.db)
        .run_command(command)
        .await
        .map_err(anyhow::Error::from)
    {
        Err(e) if is_code(&e, &[NAMESPACE_EXISTS]) => Ok(()),
        other => other
            .map(drop)
            .with_context(|| format!("creating {} on the destination", spec.ns())),
    }
}

/// Where a collection's copy records its progress, and where it resumes.
pub struct Resume<'a> {
    pub store: &'a StateStore,
    /// The greatest `_id` already acknowledged: reading continues after it.
    pub after: Option<Bson>,
}

/// Copies every document of one collection into the destination collection `target` of the same
/// database, in `_id` order (natural order for capped ones, whose insertion order is part of their
/// content). With `resume`, each acknowledged batch is checkpointed and reading starts after the
/// last checkpointed `_id`. Returns the number of documents copied.
pub async fn copy_documents(
    source: &Client,
    destination: &Client,
    spec: &CollectionSpec,
    target: &str,
    progress: &Progress,
    resume: Option<Resume<'_>>,
) -> Result<u64> {
    let ns = spec.ns();
    let reader = source
        .database(&spec.db)
        .collection_with_options::<RawDocumentBuf>(
            &spec.name,
            mongodb::options::CollectionOptions::builder()
                .read_concern(ReadConcern::majority())
                .build(),
        );
    let writer = destination
        .database(&spec.db)
        .collection::<RawDocumentBuf>(target);
    let (store, after) = match resume {
        Some(Resume { store, after }) => (Some(store.clone()), after),
        None => (None, None),
    };
    // Capped collections are read in natural order, so they restart from the beginning; the
    // documents already there are refused as duplicates and skipped.
    let ordered = !spec.is_capped();
    let filter = match (&after, ordered) {
        (Some(last), true) => id_order::after(last),
        _ => doc! {},
    };

    let (batches, mut incoming) = mpsc::channel::<Vec<RawDocumentBuf>>(BATCHES_IN_FLIGHT);
    let write_progress = progress.clone();
    let write_ns = ns.clone();
    let write_task = tokio::spawn(async move {
        let mut written = 0u64;
        while let Some(batch) = incoming.recv().await {
            let documents = batch.len() as u64;
            let bytes: u64 = batch.iter().map(|d| d.as_bytes().len() as u64).sum();
            let last_id = batch
                .last()
                .and_then(|d| d.get("_id").ok().flatten())
                .map(|id| id.to_raw_bson());
            match writer
                .insert_many(batch)
                .ordered(false)
                .bypass_document_validation(true)
                .await
            {
                Ok(_) => {}
                Err(e) if only_duplicates(&e) => {}
                Err(e) => {
                    return Err(anyhow::Error::from(e))
                        .with_context(|| format!("writing documents of {write_ns}"))
                }
            }
            if let (Some(store), Some(last_id), true) = (&store, last_id, ordered) {
                let last_id: Bson = last_id.try_into()?;
                store
                    .copied_up_to(&write_ns, &last_id, documents, bytes)
                    .await?;
            }
            written += documents;
            write_progress.add_copied(&write_ns, documents, bytes);
        }
        Ok::<u64, anyhow::Error>(written)
    });

    let mut find = reader.find(filter).batch_size(BATCH_DOCUMENTS as u32);
    if ordered {
        find = find.sort(doc! { "_id": 1 });
    }
    let read = async {
        let mut cursor = find
            .await
            .with_context(|| format!("reading documents of {ns}"))?;
        let mut batch = Vec::with_capacity(BATCH_DOCUMENTS);
        let mut batch_bytes = 0usize;
        while let Some(document) = cursor
            .try_next()
            .await
            .with_context(|| format!("reading documents of {ns}"))?
        {
            batch_bytes += document.as_bytes().len();
            batch.push(document);
            if batch.len() >= BATCH_DOCUMENTS || batch_bytes >= BATCH_BYTES {
                batch_bytes = 0;
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_DOCUMENTS));
                if batches.send(full).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
        }
        if !batch.is_empty() {
            let _ = batches.send(batch).await;
        }
        drop(batches);
        Ok::<(), anyhow::Error>(())
    };
    let read_result = read.await;
    let written = write_task
        .await
        .context("the copy writer task panicked")??;
    read_result?;
    Ok(written)
}

/// Builds a collection's indexes on the destination, relaxed (no unique, no TTL) while syncing.
pub async fn build_indexes(destination: &Client, spec: &CollectionSpec) -> Result<()> {
    let indexes: Vec<Document> = spec
        .indexes
        .iter()
        .filter(|index| !catalog::is_implicit_index(index))
        .map(|index| catalog::relax_index(index).unwrap_or_else(|| index.clone()))
        .collect();
    if indexes.is_empty() {
        return Ok(());
    }
    destination
        .database(&spec.db)
        .run_command(doc! { "createIndexes": &spec.name, "indexes": indexes })
        .await
        .with_context(|| format!("building the indexes of {} on the destination", spec.ns()))?;
    Ok(())
}
