//! The command line as a user meets it: bad input is refused with a clear message and exit code
//! 2 before anything is written; commit is refused while it is not safe; secrets never print.

use std::time::Duration;

use mongodb::bson::{doc, Document};

use testkit::proxy::{on, Action, Rule};

use crate::harness::{run_ferry, Ferry, Pair};

#[test]
fn malformed_input_is_refused_with_exit_code_2_and_a_fix() {
    let (code, text) = run_ferry(&[
        "migrate",
        "--source",
        "postgres://x",
        "--destination",
        "mongodb://localhost",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("--source") && text.contains("not a valid MongoDB connection string"),
        "{text}"
    );

    let (code, text) = run_ferry(&[
        "migrate",
        "--source",
        "mongodb://a",
        "--destination",
        "mongodb://b",
        "--include",
        "db.",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("--include") && text.contains("db.collection"),
        "{text}"
    );

    let (code, text) = run_ferry(&[
        "migrate",
        "--source",
        "mongodb://a",
        "--destination",
        "mongodb://b",
        "--api-addr",
        "nowhere",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("HOST:PORT"), "{text}");

    let (code, text) = run_ferry(&["migrate", "--source", "mongodb://a"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--destination"), "{text}");
}

#[test]
fn passwords_in_bad_uris_are_never_printed() {
    let (code, text) = run_ferry(&[
        "migrate",
        "--source",
        "mongodb://alice:hunter2-secret@127.0.0.1:1/?replicaSet=rs0&bogusOption=&authMechanism=NOPE",
        "--destination",
        "mongodb://bob:other-secret@127.0.0.1:2/",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(
        !text.contains("hunter2-secret") && !text.contains("other-secret"),
        "{text}"
    );
    assert!(text.contains("alice:****@"), "{text}");
}

#[test]
fn commit_without_a_running_migration_says_so() {
    let port = testkit::server::free_port().unwrap();
    let (code, text) = run_ferry(&["commit", "--api-addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no Ferry migration answers"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_empty_destination_is_refused_unless_drop_is_given() {
    let pair = Pair::start().await;
    pair.src
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    let stale = pair.dst.database("shop").collection::<Document>("orders");
    stale.insert_one(doc! { "_id": "stale" }).await.unwrap();

    let mut refused = pair.migrate(&[]);
    let code = tokio::task::block_in_place(|| refused.wait_exit(Duration::from_secs(60)));
    assert_eq!(code, 2, "{}", refused.output());
    assert!(
        refused
            .output()
            .contains("already holds 1 included namespace(s) (shop.orders)"),
        "{}",
        refused.output()
    );
    assert!(refused.output().contains("--drop"), "{}", refused.output());
    assert_eq!(
        stale
            .count_documents(doc! { "_id": "stale" })
            .await
            .unwrap(),
        1,
        "nothing was written"
    );

    let mut ferry = pair.migrate(&["--drop"]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("after --drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_is_refused_until_can_commit_and_status_reports_progress() {
    let pair = Pair::start().await;
    let coll = pair.src.database("slow").collection::<Document>("c");
    let docs: Vec<Document> = (0..20_000)
        .map(|i| doc! { "_id": i, "pad": "x".repeat(200) })
        .collect();
    coll.insert_many(docs).await.unwrap();
    // The copy is held (a delayed insert), so the commit request meets a migration that cannot
    // commit yet, whatever the machine's speed.
    let (_, destination) = pair.proxies().await;
    let held = destination.add_rule(
        Rule::new(
            on("insert", "slow.c"),
            Action::Delay(Duration::from_secs(3)),
        )
        .times(1),
    );
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while held.fired() == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", ferry.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, reply) = tokio::task::block_in_place(|| ferry.commit());
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["success"], false);
    assert_eq!(reply["error"], "InvalidStateError");
    assert!(
        reply["errorDescription"]
            .as_str()
            .unwrap()
            .contains("canCommit"),
        "{reply}"
    );
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    let (code, text) = run_ferry(&["status", "--api-addr", &ferry.api]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("RUNNING") && text.contains("canCommit true"),
        "{text}"
    );
    let (code, text) = run_ferry(&["commit", "--api-addr", &ferry.api]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("commit accepted"), "{text}");
    assert_eq!(
        tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(60))),
        0,
        "{}",
        ferry.output()
    );
    pair.assert_equal("after CLI commit").await;
}
