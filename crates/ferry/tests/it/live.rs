//! Live migration under a concurrent random workload: copy, follow changes, commit, and compare.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{seed, Pair};
use testkit::workload::{self, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_workload_during_copy_and_streaming_converges_exactly() {
    let seed = seed("random_workload");
    let pair = Pair::start().await;
    workload::seed(&pair.src, seed, 8000).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(
        Workload::new(pair.src.clone(), seed ^ 0x5eed).run(stop.clone(), Duration::ZERO),
    );
    let mut ferry = pair.migrate(&["--verify"]);
    let progress = tokio::task::block_in_place(|| ferry.wait_can_commit());
    assert_eq!(progress["info"], "change event application");
    // Keep writing while changes are applied, then stop the application and commit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let stats = writer.await.unwrap().unwrap();
    eprintln!("workload: {stats:?}");
    assert!(
        stats.operations > 100 && stats.ddl > 0 && stats.transactions > 0,
        "{stats:?}"
    );
    // With the application stopped, the lag falls to zero.
    let idle = tokio::task::block_in_place(|| {
        ferry.wait_for("lag 0", Duration::from_secs(60), |p| {
            p["lagTimeSeconds"] == 0
        })
    });
    let applied = &idle["eventsApplied"];
    assert!(
        applied["update"].as_u64() > Some(0) && applied["ddl"].as_u64() > Some(0),
        "{idle}"
    );
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal(&format!("seed {seed}")).await;
    let output = ferry.output();
    assert!(
        output.contains("verification finished") && output.contains("equal=true"),
        "{output}"
    );
    assert!(output.contains("collection copy"), "{output}");
}
