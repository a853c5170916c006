//! Sources from 4.4.2 to before 6.0 (4.2 is refused by the pre-flight: the driver reads
//! servers from 4.4 on), whose change streams report no catalog changes but drops, renames and
//! `dropDatabase`, and no collection UUIDs. The test server reports 8.2, but a stream opened
//! without expanded events behaves like an older server's; `FERRY_TEST_SOURCE_VERSION` makes
//! Ferry treat the source as that version everywhere. Each migration runs under the random
//! workload (CRUD, transactions, create with options, drop, rename, createIndex, dropIndex,
//! collMod, dropDatabase) and is judged by `testkit::compare`.

use std::time::Duration;

use crate::harness::{seed, Ferry, Pair};
use testkit::workload::{self, Workload};

async fn migrates_under_the_workload_as(version: &str) {
    let seed = seed(&format!("old_source_{version}"));
    let pair = Pair::start().await;
    workload::seed(&pair.src, seed, 3000).await.unwrap();
    let writer = tokio::spawn(
        Workload::new(pair.src.clone(), seed ^ 0x01d).run_steps(2500, Duration::from_millis(1)),
    );
    let mut ferry = Ferry::start_with_env(
        &pair.source.uri(),
        &pair.destination.uri(),
        &[],
        &[("FERRY_TEST_SOURCE_VERSION", version)],
    );
    let progress = tokio::task::block_in_place(|| ferry.wait_can_commit());
    assert_eq!(
        progress["source"]["expandedEvents"], false,
        "{}",
        progress["source"]
    );
    assert!(
        progress["source"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with(version)),
        "{progress}"
    );
    let stats = writer.await.unwrap().unwrap();
    assert!(stats.ddl > 0 && stats.transactions > 0, "{stats:?}");
    tokio::task::block_in_place(|| {
        ferry.wait_for("lag 0", Duration::from_secs(60), |p| {
            p["lagTimeSeconds"] == 0
        })
    });
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    let output = ferry.output();
    let warned = output.lines().any(|line| {
        line.contains("\"check\":\"versions\"")
            && line.contains("Ferry reconciles the catalog instead")
    });
    assert!(warned, "the pre-flight warns about reconciling:\n{output}");
    pair.assert_equal(&format!("source treated as {version}, seed {seed}"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_treated_as_4_4_migrates_under_the_workload() {
    migrates_under_the_workload_as("4.4.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_treated_as_5_0_migrates_under_the_workload() {
    migrates_under_the_workload_as("5.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalog_changes_without_events_reach_the_destination_by_reconciliation() {
    let pair = Pair::start().await;
    let shop = pair.src.database("shop");
    shop.collection::<mongodb::bson::Document>("orders")
        .insert_many((0..100).map(|i| mongodb::bson::doc! { "_id": i, "a": i }))
        .await
        .unwrap();
    shop.run_command(mongodb::bson::doc! { "createIndexes": "orders", "indexes": [
        { "key": { "a": 1 }, "name": "a_partial", "partialFilterExpression": { "a": { "$lt": 50 } } },
    ] })
    .await
    .unwrap();
    // Through a proxy that records what Ferry asks the source.
    let (source, _) = pair.proxies().await;
    let mut ferry = Ferry::start_with_env(
        &source.uri(),
        &pair.destination.uri(),
        &[],
        &[("FERRY_TEST_SOURCE_VERSION", "5.0")],
    );
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    // None of these is an event before 6.0: an index redefined under its name and key, a new
    // collection with a validator, a view, a validator changed in place.
    shop.run_command(mongodb::bson::doc! { "dropIndexes": "orders", "index": "a_partial" })
        .await
        .unwrap();
    shop.run_command(mongodb::bson::doc! { "createIndexes": "orders", "indexes": [
        { "key": { "a": 1 }, "name": "a_partial", "partialFilterExpression": { "a": { "$gt": 50 } } },
    ] })
    .await
    .unwrap();
    shop.run_command(
        mongodb::bson::doc! { "create": "checked", "validator": { "a": { "$exists": true } } },
    )
    .await
    .unwrap();
    shop.run_command(mongodb::bson::doc! { "create": "recent", "viewOn": "orders", "pipeline": [{ "$match": { "a": { "$gt": 90 } } }] })
        .await
        .unwrap();
    shop.run_command(
        mongodb::bson::doc! { "collMod": "orders", "validator": { "a": { "$type": "int" } } },
    )
    .await
    .unwrap();
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("catalog changes reconciled").await;
    // A 5.0 server refuses `$changeStream` fields it does not know: the option is left out.
    let streams: Vec<mongodb::bson::Document> = source
        .commands()
        .into_iter()
        .filter(|c| c.name == "aggregate")
        .filter_map(|c| {
            let pipeline = c.body.get_array("pipeline").ok()?;
            pipeline
                .first()?
                .as_document()?
                .get_document("$changeStream")
                .ok()
                .cloned()
        })
        .collect();
    assert!(
        !streams.is_empty(),
        "the change stream went through the proxy"
    );
    assert!(
        streams
            .iter()
            .all(|s| !s.contains_key("showExpandedEvents")),
        "{streams:?}"
    );
}
