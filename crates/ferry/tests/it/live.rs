//! Live migration under a concurrent random workload: copy, follow changes, commit, and compare.

use std::time::Duration;

use mongodb::bson::{doc, Document};

use crate::harness::{assert_waits_for_majority, seed, Ferry, Pair};
use testkit::proxy::Recorded;
use testkit::workload::{self, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_workload_during_copy_and_streaming_converges_exactly() {
    let seed = seed("random_workload");
    let pair = Pair::start().await;
    workload::seed(&pair.src, seed, 8000).await.unwrap();

    // A fixed number of steps: what the seed drives does not depend on the clock.
    let writer = tokio::spawn(
        Workload::new(pair.src.clone(), seed ^ 0x5eed).run_steps(4000, Duration::from_millis(1)),
    );
    let (_, destination) = pair.proxies().await;
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &["--verify"]);
    let progress = tokio::task::block_in_place(|| ferry.wait_can_commit());
    assert_eq!(progress["info"], "change event application");
    // Keep writing while changes are applied: the first verification pass runs alongside, and
    // the documents the workload changes are queued and re-checked.
    let verifying = tokio::task::block_in_place(|| {
        ferry.wait_for(
            "the first verification pass and a re-check",
            Duration::from_secs(120),
            |p| {
                p["verification"]["state"] == "re-checking"
                    && p["verification"]["rechecked"].as_u64() > Some(0)
            },
        )
    });
    // The first pass covered the seeded data before re-checking began.
    assert!(
        verifying["verification"]["documentsChecked"].as_u64() >= Some(8000),
        "{verifying}"
    );
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
    // The re-check queue is durable like the rest of Ferry's state.
    let queued: Vec<Recorded> = destination
        .commands()
        .into_iter()
        .filter(|c| c.namespace().as_deref() == Some("__ferry.migration.recheck"))
        .filter(|c| c.name == "update" || c.name == "delete")
        .collect();
    assert!(!queued.is_empty(), "no re-check queue writes");
    for write in &queued {
        assert_waits_for_majority(write);
    }
    let output = ferry.output();
    let finished = ferry
        .logged("verification finished")
        .pop()
        .unwrap_or_else(|| panic!("no final verification:\n{output}"));
    eprintln!("{finished}");
    assert_eq!(finished["equal"], true, "{finished}");
    // The commit-time pass read only what the first pass had not covered (namespaces the
    // workload's DDL replaced), and re-checked the queue, not every document.
    let documents = finished["documents"].as_u64().unwrap_or_default();
    let read_at_commit = finished["read_at_commit"].as_u64().unwrap_or_default();
    assert!(
        documents >= 8000 && read_at_commit * 4 < documents,
        "{finished}"
    );
    assert!(
        ferry
            .logged("phase")
            .iter()
            .any(|fields| fields["phase"] == "collection copy"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_difference_rechecking_does_not_clear_refuses_the_commit() {
    let pair = Pair::start().await;
    let items = pair.src.database("shop").collection::<Document>("items");
    let documents: Vec<Document> = (0..3000)
        .map(|i| doc! { "_id": i, "x": i, "y": 0, "pad": "x".repeat(200) })
        .collect();
    items.insert_many(documents).await.unwrap();
    let mut ferry = pair.migrate(&["--verify"]);
    tokio::task::block_in_place(|| {
        ferry.wait_for(
            "the first verification pass",
            Duration::from_secs(120),
            |p| p["verification"]["state"] == "re-checking",
        )
    });
    // Damage two documents on the destination behind Ferry's back, then change each on the
    // source in a way that does not repair the damage: the re-check queue must catch both.
    let copy = pair.dst.database("shop").collection::<Document>("items");
    copy.update_one(doc! { "_id": 7 }, doc! { "$set": { "x": "damaged" } })
        .await
        .unwrap();
    copy.delete_one(doc! { "_id": 8 }).await.unwrap();
    for id in [7, 8] {
        items
            .update_one(doc! { "_id": id }, doc! { "$set": { "y": 1 } })
            .await
            .unwrap();
    }
    tokio::task::block_in_place(|| {
        ferry.wait_for("the changes applied", Duration::from_secs(60), |p| {
            p["eventsApplied"]["update"].as_u64() >= Some(2) && p["lagTimeSeconds"] == 0
        });
        let (status, reply) = ferry.commit();
        assert_eq!(status, 200, "{reply}");
        let code = ferry.wait_exit(Duration::from_secs(120));
        let output = ferry.output();
        assert_ne!(code, 0, "the commit must be refused:\n{output}");
        assert!(!output.contains("the destination is ready"), "{output}");
        // The report as the command prints it (the log line before it is JSON).
        let report = output
            .rsplit_once("error: verification found differences")
            .map(|(_, report)| report)
            .unwrap_or_else(|| panic!("no verification report:\n{output}"));
        assert!(report.contains("DIFFERENT shop.items"), "{report}");
        assert!(report.contains("different _id 7"), "{report}");
        assert!(
            report.contains("x: source 7, destination \"damaged\""),
            "{report}"
        );
        assert!(report.contains("missing _id 8"), "{report}");
        assert!(
            report.contains("1 missing, 0 extra, 1 different"),
            "{report}"
        );
    });
}

/// A source whose writes cannot be blocked keeps deleting expired documents through the commit,
/// and the destination's restored TTL index deletes them on its own clock: neither is a
/// difference, since both servers remove them. The commit must not be refused for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documents_expiring_through_the_commit_do_not_refuse_it() {
    let pair = Pair::start().await;
    for server in [&pair.src, &pair.dst] {
        server
            .database("admin")
            .run_command(doc! { "setParameter": 1, "ttlMonitorSleepSecs": 1 })
            .await
            .unwrap();
    }
    let sessions = pair.src.database("app").collection::<Document>("sessions");
    pair.src
        .database("app")
        .run_command(doc! {
            "createIndexes": "sessions",
            "indexes": [{ "key": { "at": 1 }, "name": "at_ttl", "expireAfterSeconds": 0 }],
        })
        .await
        .unwrap();
    let now = mongodb::bson::DateTime::now().timestamp_millis();
    let at = |ms: i64| mongodb::bson::DateTime::from_millis(now + ms);
    let lasting: Vec<Document> = (0..2000)
        .map(|i| doc! { "_id": i, "at": at(86_400_000), "pad": "x".repeat(100) })
        .collect();
    sessions.insert_many(lasting).await.unwrap();
    let mut ferry = pair.migrate(&["--verify"]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    // Sessions that expire one every 5 ms from now on, through the whole commit: each side's
    // TTL monitor deletes a few every second, each on its own schedule.
    let start = mongodb::bson::DateTime::now().timestamp_millis() - now;
    let expiring: Vec<Document> = (0..3000)
        .map(|i| doc! { "_id": 10_000 + i, "at": at(start + 5 * i64::from(i)) })
        .collect();
    sessions.insert_many(expiring).await.unwrap();
    tokio::task::block_in_place(|| {
        ferry.wait_for("the sessions applied", Duration::from_secs(60), |p| {
            p["eventsApplied"]["insert"].as_u64() >= Some(3000) && p["lagTimeSeconds"] == 0
        });
        ferry.commit_and_finish();
    });
    let finished = ferry.logged("verification finished").pop().unwrap();
    assert_eq!(finished["equal"], true, "{finished}");
    assert!(
        finished["expired"].as_u64() > Some(0),
        "no document expired between the two sides' reads: the commit was not tested\n{finished}"
    );
    // The source's TTL monitor went on deleting after the commit point: expiries, not stray
    // writes (which would have made ferry exit 4).
    let expiries: u64 = ferry
        .logged("documents expired after the commit point: the source's TTL monitor deleted them, and the destination's TTL index deletes them too")
        .iter()
        .filter_map(|fields| fields["count"].as_u64())
        .sum();
    assert!(expiries > 0, "{}", ferry.output());
    // Once every session has expired and both TTL monitors have run, the two sides are equal.
    let gone = doc! { "_id": { "$gte": 10_000 } };
    let destination = pair.dst.database("app").collection::<Document>("sessions");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sessions.count_documents(gone.clone()).await.unwrap() > 0
        || destination.count_documents(gone.clone()).await.unwrap() > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "sessions never expired"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pair.assert_equal("after every session expired").await;
}
