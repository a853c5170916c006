//! What the README promises that no other test covered: the state database's name, SIGINT,
//! pause and resume from the command line, the version and reachability checks, the retry
//! window running out, catalog changes of every kind while syncing, and `_id` ranges whose
//! bounds cross BSON types.

use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use testkit::compare::Scope;
use testkit::proxy::{Action, Recorded, Rule};

use crate::harness::{check_named as named, check_with, run_ferry, Ferry, Pair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_lives_in_the_database_named_by_state_db() {
    let pair = Pair::start().await;
    crate::harness::fill(&pair.src, "shop", "orders", 100).await;
    let mut ferry = pair.migrate(&["--state-db", "ferry_state"]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    let databases = pair.dst.list_database_names().await.unwrap();
    assert!(
        databases.contains(&"ferry_state".to_string()),
        "{databases:?}"
    );
    assert!(!databases.contains(&"__ferry".to_string()), "{databases:?}");
    let scope = Scope {
        state_db: "ferry_state".into(),
        ..Default::default()
    };
    pair.assert_equal_in(&scope, "with --state-db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_at_a_consistent_point_with_exit_130() {
    let pair = Pair::start().await;
    crate::harness::fill(&pair.src, "shop", "orders", 100).await;
    let mut ferry = pair.migrate(&[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    let code = tokio::task::block_in_place(|| ferry.signal("-INT"));
    assert_eq!(code, 130, "{}", ferry.output());
    assert!(
        ferry.output().contains("run the same command again"),
        "{}",
        ferry.output()
    );
    let mut again = pair.migrate(&[]);
    tokio::task::block_in_place(|| again.commit_and_finish());
    pair.assert_equal("after SIGINT and a resume").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_from_the_command_line() {
    let pair = Pair::start().await;
    let orders = pair.src.database("shop").collection::<Document>("orders");
    orders
        .insert_many((0..100).map(|i| doc! { "_id": i }))
        .await
        .unwrap();
    let mut ferry = pair.migrate(&[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    let (code, text) = run_ferry(&["pause", "--api-addr", &ferry.api]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(ferry.progress().unwrap()["state"], "PAUSED");
    orders
        .insert_one(doc! { "_id": "while paused" })
        .await
        .unwrap();
    let (code, text) = run_ferry(&["resume", "--api-addr", &ferry.api]);
    assert_eq!(code, 0, "{text}");
    tokio::task::block_in_place(|| {
        ferry.wait_for("the write while paused", Duration::from_secs(60), |p| {
            p["state"] == "RUNNING" && p["eventsApplied"]["insert"].as_u64() >= Some(1)
        })
    });
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("after pause and resume").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_source_an_unreachable_destination_and_users_are_reported() {
    let pair = Pair::start().await;
    testkit::server::create_user(&pair.src, "app", "app-Pa55word!", &[("readWrite", "shop")])
        .await
        .unwrap();
    let (code, report) = tokio::task::block_in_place(|| {
        check_with(
            &pair.source.uri(),
            &pair.destination.uri(),
            &[],
            &[("FERRY_TEST_SOURCE_VERSION", "4.2")],
        )
    });
    assert_eq!(code, 2, "{report}");
    let versions = named(&report, "versions");
    assert_eq!(versions["status"], "fail", "{versions}");
    assert!(
        versions["fix"]
            .as_str()
            .unwrap()
            .contains("upgrade the source in place to MongoDB 4.4.2 or newer first"),
        "{versions}"
    );
    let users = named(&report, "source.not-migrated");
    assert_eq!(users["status"], "warn", "{users}");
    assert!(
        users["found"].as_str().unwrap().contains("app@admin"),
        "{users}"
    );

    let closed = testkit::server::free_port().unwrap();
    let nowhere = format!(
        "mongodb://127.0.0.1:{closed}/?directConnection=true&serverSelectionTimeoutMS=1000"
    );
    let (code, report) =
        tokio::task::block_in_place(|| check_with(&pair.source.uri(), &nowhere, &[], &[]));
    assert_eq!(code, 2, "{report}");
    let reachable = named(&report, "destination.reachable");
    assert_eq!(reachable["status"], "fail", "{reachable}");
    assert!(
        reachable["found"].as_str().unwrap().contains(&format!(
            "cannot reach 127.0.0.1:{closed}: connection refused"
        )),
        "{reachable}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_longer_than_the_retry_window_fails_the_migration() {
    let pair = Pair::start().await;
    crate::harness::fill(&pair.src, "shop", "orders", 100).await;
    let (_, destination) = pair.proxies().await;
    let mut ferry = Ferry::start(
        &pair.source.uri(),
        &destination.uri(),
        &["--retry-window", "4s"],
    );
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    // From now on the destination refuses every write, as a cluster without a primary would.
    destination.add_rule(Rule::new(
        |c: &Recorded| {
            ["insert", "update", "delete", "createIndexes", "drop"].contains(&c.name.as_str())
        },
        Action::Error {
            code: 189,
            labels: Vec::new(),
        },
    ));
    let retrying = tokio::task::block_in_place(|| {
        ferry.wait_for("a retry", Duration::from_secs(60), |p| {
            p["retrying"].is_string()
        })
    });
    assert!(retrying["retries"].as_u64() >= Some(1), "{retrying}");
    let code = tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(120)));
    assert_eq!(code, 1, "{}", ferry.output());
    assert!(
        ferry.output().contains("PrimarySteppedDown"),
        "{}",
        ferry.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_changes_of_every_kind_while_syncing_reach_the_destination() {
    let pair = Pair::start().await;
    let db = pair.src.database("cat");
    let events = db.collection::<Document>("events");
    events
        .insert_many((0..50).map(|i| doc! { "_id": i, "at": mongodb::bson::DateTime::now() }))
        .await
        .unwrap();
    pair.src
        .database("elsewhere")
        .collection::<Document>("moving")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    let (_, destination) = pair.proxies().await;
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    // A TTL index, then its expiry changed; a capped collection, a clustered collection with
    // expiry, a view, all created while syncing; a rename across databases.
    db.run_command(doc! {
        "createIndexes": "events",
        "indexes": [{ "key": { "at": 1 }, "name": "at_ttl", "expireAfterSeconds": 3600 }],
    })
    .await
    .unwrap();
    db.run_command(doc! {
        "collMod": "events",
        "index": { "name": "at_ttl", "expireAfterSeconds": 7200 },
    })
    .await
    .unwrap();
    db.run_command(doc! { "create": "tail", "capped": true, "size": 65536, "max": 100 })
        .await
        .unwrap();
    db.collection::<Document>("tail")
        .insert_many((0..150).map(|i| doc! { "_id": i }))
        .await
        .unwrap();
    db.run_command(doc! {
        "create": "sessions",
        "clusteredIndex": { "key": { "_id": 1 }, "unique": true },
        "expireAfterSeconds": 86400,
    })
    .await
    .unwrap();
    db.collection::<Document>("sessions")
        .insert_one(doc! { "_id": mongodb::bson::DateTime::now() })
        .await
        .unwrap();
    db.run_command(doc! { "create": "recent", "viewOn": "events", "pipeline": [{ "$limit": 5 }] })
        .await
        .unwrap();
    pair.src
        .database("admin")
        .run_command(doc! { "renameCollection": "elsewhere.moving", "to": "cat.arrived" })
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        ferry.wait_for("the catalog changes", Duration::from_secs(60), |p| {
            p["eventsApplied"]["ddl"].as_u64() >= Some(6) && p["lagTimeSeconds"] == 0
        })
    });
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    // The clustered collection's expiry was relaxed while syncing and restored at commit.
    let restored = destination.commands().into_iter().any(|c| {
        c.name == "collMod"
            && c.namespace().as_deref() == Some("cat.sessions")
            && c.body.get("expireAfterSeconds").is_some()
    });
    assert!(
        restored,
        "the clustered collection's expiry is restored at commit"
    );
    if std::env::var_os("FERRY_TEST_MONGOD").is_none() {
        // The test server answers that collMod with ok but keeps no expiry on a clustered
        // collection (checked by hand), so that one option cannot be compared here.
        for client in [&pair.src, &pair.dst] {
            client
                .database("cat")
                .collection::<Document>("sessions")
                .drop()
                .await
                .unwrap();
        }
    }
    pair.assert_equal("catalog changes while syncing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_ranges_whose_bounds_cross_types_are_copied_whole() {
    let pair = Pair::start().await;
    let mixed = pair.src.database("mixed").collection::<Document>("ids");
    let pad = "x".repeat(1000);
    let id = |i: i64| match i % 4 {
        0 => Bson::Int64(i),
        1 => Bson::String(format!("k{i:06}")),
        2 => Bson::ObjectId(ObjectId::from_bytes([
            (i % 256) as u8,
            (i / 256 % 256) as u8,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
            7,
        ])),
        _ => Bson::Double(i as f64 + 0.5),
    };
    for chunk in 0..40 {
        let documents: Vec<Document> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| doc! { "_id": id(i), "pad": &pad })
            .collect();
        mixed.insert_many(documents).await.unwrap();
    }
    let mut ferry = pair.migrate(&[]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    // Mixed types have no value to cut by: the ranges come from a sample of the `_id`s.
    assert!(
        ferry
            .logged("copying in parallel _id ranges")
            .iter()
            .any(|fields| fields["namespace"] == "mixed.ids"),
        "{}",
        ferry.output()
    );
    pair.assert_equal("ranges across types").await;
}
