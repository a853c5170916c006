//! Sources before 6.0, whose change streams report no catalog changes but drops, renames and
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
async fn a_source_treated_as_4_2_migrates_under_the_workload() {
    migrates_under_the_workload_as("4.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_treated_as_4_4_migrates_under_the_workload() {
    migrates_under_the_workload_as("4.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_treated_as_5_0_migrates_under_the_workload() {
    migrates_under_the_workload_as("5.0").await;
}
