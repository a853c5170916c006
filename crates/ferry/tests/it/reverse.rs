//! The way back after a cutover: a `--reversible` migration commits, the application writes to
//! the new cluster, and `ferry reverse` brings those writes back to the old one.

use std::time::Duration;

use crate::harness::{run_ferry, seed, Pair};
use testkit::workload::{self, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_commit_new_writes_then_reverse_with_a_kill_leaves_both_sides_equal() {
    let seed = seed("reverse_round_trip");
    let pair = Pair::start().await;
    workload::seed(&pair.src, seed, 3000).await.unwrap();

    // Forward, under the workload, to COMMITTED.
    let writer = tokio::spawn(
        Workload::new(pair.src.clone(), seed ^ 1).run_steps(1500, Duration::from_millis(1)),
    );
    let mut forward = pair.migrate(&["--reversible"]);
    tokio::task::block_in_place(|| forward.wait_can_commit());
    writer.await.unwrap().unwrap();
    tokio::task::block_in_place(|| forward.commit_and_finish());
    assert!(
        !forward
            .logged("recorded where `ferry reverse` starts")
            .is_empty(),
        "{}",
        forward.output()
    );
    pair.assert_equal(&format!("forward, seed {seed}")).await;

    // The application now writes to the new cluster (with DDL and transactions), so the old
    // one falls behind ...
    let stats = Workload::new(pair.dst.clone(), seed ^ 2)
        .run_steps(1000, Duration::ZERO)
        .await
        .unwrap();
    assert!(stats.ddl > 0 && stats.transactions > 0, "{stats:?}");
    let behind = testkit::compare::differences_in(&pair.src, &pair.dst, &Default::default())
        .await
        .unwrap();
    assert!(
        !behind.is_empty(),
        "the new cluster's writes made a difference"
    );
    // ... and the reverse brings it back while the application goes on, killed once it has
    // applied changes.
    let writer = tokio::spawn(
        Workload::new(pair.dst.clone(), seed ^ 3).run_steps(2500, Duration::from_millis(1)),
    );
    let mut reverse = pair.reverse(&[]);
    let applying = tokio::task::block_in_place(|| {
        reverse.wait_for(
            "the reverse to apply changes",
            Duration::from_secs(120),
            |p| {
                p["info"] == "change event application"
                    && ["insert", "update", "delete"]
                        .iter()
                        .any(|k| p["eventsApplied"][*k].as_u64() > Some(0))
            },
        )
    });
    assert_eq!(applying["direction"], "reverse", "{applying}");
    tokio::task::block_in_place(|| reverse.kill9());
    let mut reverse = pair.reverse(&[]);
    tokio::task::block_in_place(|| reverse.wait_can_commit());
    writer.await.unwrap().unwrap();
    tokio::task::block_in_place(|| {
        reverse.wait_for("lag 0", Duration::from_secs(60), |p| {
            p["lagTimeSeconds"] == 0
        })
    });
    tokio::task::block_in_place(|| reverse.commit_and_finish());
    let output = reverse.output();
    assert!(
        !reverse
            .logged("resuming the migration stored on the destination")
            .is_empty(),
        "the second reverse resumed the first one's state:\n{output}"
    );
    assert!(
        reverse
            .logged("phase")
            .iter()
            .all(|f| f["phase"] != "collection copy"),
        "a reverse copies nothing:\n{output}"
    );
    // `src` is the old cluster: it now equals the new one, indexes and options included.
    pair.assert_equal(&format!("reverse, seed {seed}")).await;
    // Forgetting the reverse drops its state on the old cluster, never the data there.
    let (code, said) = tokio::task::block_in_place(|| {
        run_ferry(&["reset", "--destination", &pair.source.uri(), "--yes"])
    });
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("the data stays"), "{said}");
    pair.assert_equal(&format!("after reset, seed {seed}"))
        .await;
    let databases = pair.src.list_database_names().await.unwrap();
    assert!(!databases.iter().any(|d| d == "__ferry"), "{databases:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reverse_needs_its_own_committed_reversible_migration_and_never_drops() {
    let pair = Pair::start().await;
    let orders = |client: &mongodb::Client| {
        client
            .database("shop")
            .collection::<mongodb::bson::Document>("orders")
    };
    orders(&pair.src)
        .insert_one(mongodb::bson::doc! { "_id": 1 })
        .await
        .unwrap();
    let (source, destination) = (pair.source.uri(), pair.destination.uri());
    let reverse = |extra: &[&str]| {
        let mut args = vec![
            "reverse",
            "--source",
            &source,
            "--destination",
            &destination,
        ];
        args.extend_from_slice(extra);
        tokio::task::block_in_place(|| run_ferry(&args))
    };
    let refused = |extra: &[&str], says: &str| {
        let (code, output) = reverse(extra);
        assert_eq!(code, 2, "{output}");
        assert!(output.contains(says), "expected {says:?}:\n{output}");
    };
    let forward = |extra: &[&str]| {
        let mut ferry = pair.migrate(extra);
        tokio::task::block_in_place(|| ferry.commit_and_finish());
    };
    let (code, output) = reverse(&["--drop"]);
    assert_eq!(code, 2, "{output}");
    assert_eq!(
        output.trim(),
        "error: --drop cannot reverse a migration: it would drop the old source's data; leave it out"
    );
    refused(&[], "holds no migration state");
    forward(&[]);
    refused(&[], "COMMITTED without --reversible");
    // A reverse takes the forward migration's own filters: another one would relax what the
    // forward never carried, or leave changes behind.
    forward(&["--drop", "--reversible", "--include", "shop"]);
    refused(&[], "the forward migration ran with another include");
    // The refused reverses wrote nothing on the old cluster.
    let databases = pair.src.list_database_names().await.unwrap();
    assert!(!databases.iter().any(|d| d == "__ferry"), "{databases:?}");

    let mut back = pair.reverse(&["--include", "shop"]);
    orders(&pair.dst)
        .insert_one(mongodb::bson::doc! { "_id": 2 })
        .await
        .unwrap();
    tokio::task::block_in_place(|| back.commit_and_finish());
    pair.assert_equal("first round trip").await;
    // A second round trip never resumes the first one's reverse, which is COMMITTED on the old
    // cluster: it is refused until that state is forgotten.
    forward(&["--drop", "--reversible", "--include", "shop"]);
    orders(&pair.dst)
        .insert_one(mongodb::bson::doc! { "_id": 3 })
        .await
        .unwrap();
    refused(
        &["--include", "shop"],
        "ferry reset --destination OLD --yes",
    );
    let (code, said) =
        tokio::task::block_in_place(|| run_ferry(&["reset", "--destination", &source, "--yes"]));
    assert_eq!(code, 0, "{said}");
    let mut back = pair.reverse(&["--include", "shop"]);
    tokio::task::block_in_place(|| back.commit_and_finish());
    assert_eq!(
        orders(&pair.src)
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap(),
        3
    );
    pair.assert_equal("second round trip").await;
}
