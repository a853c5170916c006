//! Whole-cluster equality for tests: the same databases, the same collections and views with the
//! same options, the same indexes, and every document byte for byte (field order included).

use anyhow::Result;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;

const NOT_MIGRATED: [&str; 4] = ["admin", "local", "config", "__ferry"];

/// Every difference between the user data of two clusters, described for a person; empty when
/// they are equal.
pub async fn differences(source: &Client, destination: &Client) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut databases = user_databases(source).await?;
    databases.extend(user_databases(destination).await?);
    databases.sort();
    databases.dedup();
    for db in databases {
        compare_database(source, destination, &db, &mut found).await?;
    }
    Ok(found)
}

async fn user_databases(client: &Client) -> Result<Vec<String>> {
    let mut names: Vec<String> = client
        .list_database_names()
        .await?
        .into_iter()
        .filter(|db| !NOT_MIGRATED.contains(&db.as_str()))
        .collect();
    names.sort();
    Ok(names)
}

/// (name, type, options) of every collection and view of a database, sorted by name.
async fn catalog(client: &Client, db: &str) -> Result<Vec<(String, String, Document)>> {
    let mut entries: Vec<(String, String, Document)> = client
        .database(db)
        .run_cursor_command(doc! { "listCollections": 1 })
        .await?
        .try_collect::<Vec<Document>>()
        .await?
        .into_iter()
        .map(|e| {
            (
                e.get_str("name").unwrap_or_default().to_string(),
                e.get_str("type").unwrap_or("collection").to_string(),
                normalized(e.get_document("options").cloned().unwrap_or_default()),
            )
        })
        .filter(|(name, _, _)| !name.starts_with("system."))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// A spec with its top-level fields sorted (their order carries no meaning; nested order does).
fn normalized(spec: Document) -> Document {
    let mut fields: Vec<(String, Bson)> = spec.into_iter().collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.into_iter().collect()
}

async fn indexes(client: &Client, db: &str, coll: &str) -> Result<Vec<Document>> {
    let mut specs: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! { "listIndexes": coll })
        .await?
        .try_collect::<Vec<Document>>()
        .await?
        .into_iter()
        .map(normalized)
        .collect();
    specs.sort_by(|a, b| a.get_str("name").ok().cmp(&b.get_str("name").ok()));
    Ok(specs)
}

async fn documents(
    client: &Client,
    db: &str,
    coll: &str,
    capped: bool,
) -> Result<Vec<RawDocumentBuf>> {
    let collection = client.database(db).collection::<RawDocumentBuf>(coll);
    let mut find = collection.find(doc! {});
    if !capped {
        find = find.sort(doc! { "_id": 1 });
    }
    Ok(find.await?.try_collect().await?)
}

async fn compare_database(
    source: &Client,
    destination: &Client,
    db: &str,
    found: &mut Vec<String>,
) -> Result<()> {
    let source_catalog = catalog(source, db).await?;
    let destination_catalog = catalog(destination, db).await?;
    let names =
        |c: &[(String, String, Document)]| c.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    if names(&source_catalog) != names(&destination_catalog) {
        found.push(format!(
            "database {db}: source has {:?}, destination has {:?}",
            names(&source_catalog),
            names(&destination_catalog)
        ));
        return Ok(());
    }
    for (s, d) in source_catalog.iter().zip(&destination_catalog) {
        let ns = format!("{db}.{}", s.0);
        if s.1 != d.1 || s.2 != d.2 {
            found.push(format!(
                "{ns}: source is a {} with options {}, destination a {} with options {}",
                s.1, s.2, d.1, d.2
            ));
            continue;
        }
        if s.1 != "collection" {
            continue;
        }
        let (source_indexes, destination_indexes) = (
            indexes(source, db, &s.0).await?,
            indexes(destination, db, &s.0).await?,
        );
        if source_indexes != destination_indexes {
            found.push(format!(
                "{ns}: indexes differ:\n  source      {source_indexes:?}\n  destination {destination_indexes:?}"
            ));
        }
        let capped = s.2.get_bool("capped").unwrap_or(false);
        let source_docs = documents(source, db, &s.0, capped).await?;
        let destination_docs = documents(destination, db, &s.0, capped).await?;
        if source_docs.len() != destination_docs.len() {
            found.push(format!(
                "{ns}: source has {} documents, destination {}",
                source_docs.len(),
                destination_docs.len()
            ));
        }
        if let Some((a, b)) = source_docs
            .iter()
            .zip(&destination_docs)
            .find(|(a, b)| a.as_bytes() != b.as_bytes())
        {
            found.push(format!(
                "{ns}: first differing document:\n  source      {}\n  destination {}",
                show(a),
                show(b)
            ));
        }
    }
    Ok(())
}

fn show(document: &RawDocumentBuf) -> String {
    let text = Document::try_from(document.as_ref())
        .map(|d| d.to_string())
        .unwrap_or_else(|e| format!("<{e}>"));
    if text.chars().count() > 400 {
        format!("{}…", text.chars().take(400).collect::<String>())
    } else {
        text
    }
}
