//! What a real replica set does that one test server does not, made to happen: read concerns
//! and write concerns checked on the wire, elections and dropped connections (the fault proxy in
//! `testkit::proxy` answers as a stepping-down primary would), cursors killed under the copy,
//! large writes, renames under a refetch, `_id`s of one value and several types, views, and
//! writes after the commit point.

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document, Timestamp};
use serde_json::Value;
use testkit::proxy::{Action, Proxy, Recorded, Rule};
use testkit::workload;

use crate::harness::{
    assert_waits_for_majority, fill, seed, unique_index, until_fired, App, Ferry, Pair,
};

/// The commands that write.
const WRITES: [&str; 10] = [
    "insert",
    "update",
    "delete",
    "create",
    "createIndexes",
    "dropIndexes",
    "collMod",
    "renameCollection",
    "drop",
    "dropDatabase",
];

/// The server's limit on one command: 16 MiB and 16 KiB.
const COMMAND_LIMIT: usize = 16 * 1024 * 1024 + 16 * 1024;

fn is_write(command: &Recorded) -> bool {
    WRITES.contains(&command.name.as_str())
}

/// A `getMore` of a cursor on `db.coll`.
fn get_more(ns: &'static str) -> impl Fn(&Recorded) -> bool + Send + Sync + 'static {
    move |c| c.name == "getMore" && c.namespace().as_deref() == Some(ns)
}

/// The time the first change stream Ferry opened starts at.
fn start_time(source: &Proxy) -> Option<Timestamp> {
    source.commands().iter().find_map(|c| {
        let stage = c.body.get_array("pipeline").ok()?.first()?.as_document()?;
        stage
            .get_document("$changeStream")
            .ok()?
            .get_timestamp("startAtOperationTime")
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_reads_see_t0_and_every_write_is_majority() {
    let seed = seed("contracts");
    let pair = Pair::start().await;
    workload::seed(&pair.src, seed, 2000).await.unwrap();
    fill(&pair.src, "big", "items", 40_000).await;
    let (source, destination) = pair.proxies().await;
    let app = App::start(&pair.src, seed);
    // A connection string's own write concern does not lower Ferry's.
    let weak = format!("{}&w=1", destination.uri());
    let mut ferry = Ferry::start(&source.uri(), &weak, &[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    app.stop().await;
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal(&format!("seed {seed}")).await;

    // The change stream starts at T0, and every copy read (an `_id`-ordered find) sees T0.
    let t0 = start_time(&source).expect("the change stream starts at a time, T0");
    let copy_reads: Vec<Recorded> = source
        .commands()
        .into_iter()
        .filter(|c| {
            c.name == "find" && c.body.get_document("sort").ok() == Some(&doc! { "_id": 1 })
        })
        .collect();
    assert!(copy_reads.len() >= 3, "{} copy reads", copy_reads.len());
    for read in &copy_reads {
        let concern = read.read_concern.clone().unwrap_or_default();
        assert_eq!(concern.get_str("level"), Ok("majority"), "{read:?}");
        let after = concern
            .get_timestamp("afterClusterTime")
            .unwrap_or_else(|_| panic!("a copy read without afterClusterTime: {read:?}"));
        assert!(after >= t0, "a copy read before T0 {t0}: {read:?}");
    }
    // Every write to the destination, Ferry's own state included, waits for a journaled
    // majority, and for a bounded time: a destination that lost its majority fails the write
    // rather than hold the migration forever.
    let writes: Vec<Recorded> = destination
        .commands()
        .into_iter()
        .filter(is_write)
        .collect();
    assert!(writes.len() > 10, "{} writes", writes.len());
    assert!(
        writes.iter().any(|w| w.db == "__ferry"),
        "no write to Ferry's state"
    );
    for write in &writes {
        assert_waits_for_majority(write);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elections_and_dropped_connections_are_ridden_out() {
    let seed = seed("elections");
    let pair = Pair::start().await;
    workload::seed(&pair.src, seed, 3000).await.unwrap();
    let (source, destination) = pair.proxies().await;
    let (source, destination) = (Arc::new(source), Arc::new(destination));
    let app = App::start(&pair.src, seed);
    // A stepdown error makes the driver look for a primary again; check twice a second, as a
    // deployment that expects elections would.
    let quick = |uri: String| format!("{uri}&heartbeatFrequencyMS=500");
    let mut ferry = Ferry::start(&quick(source.uri()), &quick(destination.uri()), &[]);
    tokio::task::block_in_place(|| {
        ferry.wait_for("the migration to start", Duration::from_secs(60), |p| {
            p["info"] != "validating"
        })
    });
    // A tenth of the destination's writes are applied but not confirmed, as during a
    // stepdown; every few seconds every connection to both ends drops.
    let stepdowns = destination.add_rule(
        Rule::new(
            is_write,
            Action::WriteConcernError {
                code: 189,
                retryable: true,
            },
        )
        .probability(0.1, seed),
    );
    let dropping = {
        let (source, destination) = (source.clone(), destination.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                destination.close_all();
                tokio::time::sleep(Duration::from_secs(2)).await;
                source.close_all();
            }
        })
    };
    let retrying = tokio::task::block_in_place(|| {
        ferry.wait_for("a retry", Duration::from_secs(120), |p| {
            p["retries"].as_u64() > Some(0)
        })
    });
    eprintln!(
        "retries {} (writes resent {})",
        retrying["retries"], retrying["writesResent"]
    );
    tokio::task::block_in_place(|| {
        ferry.wait_for("canCommit", Duration::from_secs(300), |p| {
            p["canCommit"] == true
        })
    });
    app.stop().await;
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    dropping.abort();
    assert!(stepdowns.fired() > 0);
    pair.assert_equal(&format!("seed {seed}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fault_while_unique_indexes_are_restored_is_finished_by_the_retry() {
    let pair = Pair::start().await;
    fill(&pair.src, "shop", "orders", 2000).await;
    unique_index(&pair.src, "shop", "orders", "n").await;
    let (_, destination) = pair.proxies().await;
    // The exact unique index is built only at commit, after its relaxed twin is dropped.
    let unique = |c: &Recorded| {
        c.name == "createIndexes"
            && c.body.get_array("indexes").is_ok_and(|indexes| {
                indexes
                    .iter()
                    .filter_map(Bson::as_document)
                    .any(|i| i.get_bool("unique") == Ok(true))
            })
    };
    let stepdown = destination.add_rule(
        Rule::new(
            unique,
            Action::Error {
                code: 189,
                labels: Vec::new(),
            },
        )
        .times(1),
    );
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    assert_eq!(stepdown.fired(), 1);
    assert!(ferry.retried(), "{}", ferry.output());
    pair.assert_equal("restore retried").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_refetched_after_its_collection_was_renamed_is_not_lost() {
    let pair = Pair::start().await;
    let grades = pair.src.database("school").collection::<Document>("grades");
    let documents: Vec<Document> = (0..150)
        .map(|i| doc! { "_id": i, "scores": { "2023": i } })
        .collect();
    grades.insert_many(documents).await.unwrap();
    let mut first = pair.migrate(&[]);
    tokio::task::block_in_place(|| first.wait_can_commit());
    assert_eq!(tokio::task::block_in_place(|| first.terminate()), 143);
    // While Ferry is stopped: a numeric path (ambiguous: the field "2024" or index 2024), then a
    // rename. Replayed later, each update is refetched from a collection that has moved.
    for i in 0..150 {
        grades
            .update_one(doc! { "_id": i }, doc! { "$set": { "scores.2024": i * 2 } })
            .await
            .unwrap();
    }
    pair.src
        .database("admin")
        .run_command(doc! { "renameCollection": "school.grades", "to": "school.grades_2024" })
        .await
        .unwrap();
    let mut second = pair.migrate(&[]);
    let progress = tokio::task::block_in_place(|| second.wait_can_commit());
    assert!(
        progress["eventsApplied"]["refetched"].as_u64() >= Some(150),
        "{progress}"
    );
    tokio::task::block_in_place(|| second.commit_and_finish());
    pair.assert_equal("refetch after rename").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_and_a_reinsert_under_another_numeric_type_stay_in_order() {
    let pair = Pair::start().await;
    let mixed = pair.src.database("ids").collection::<Document>("mixed");
    let documents: Vec<Document> = (0..1200).map(|i| doc! { "_id": i, "v": "int" }).collect();
    mixed.insert_many(documents).await.unwrap();
    let mut first = pair.migrate(&[]);
    tokio::task::block_in_place(|| first.wait_can_commit());
    assert_eq!(tokio::task::block_in_place(|| first.terminate()), 143);
    // 5 and 5L are one `_id` to the server: the delete and the insert must not be reordered.
    for i in 0..1200 {
        mixed.delete_one(doc! { "_id": i }).await.unwrap();
        mixed
            .insert_one(doc! { "_id": i64::from(i), "v": "long" })
            .await
            .unwrap();
    }
    let mut second = pair.migrate(&["--apply-lanes", "4"]);
    tokio::task::block_in_place(|| second.commit_and_finish());
    pair.assert_equal("delete and reinsert as another type")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_view_changed_with_its_collation_and_views_of_a_dropped_database_follow() {
    let pair = Pair::start().await;
    let reports = pair.src.database("reports");
    reports
        .collection::<Document>("sales")
        .insert_many((0..10).map(|n| doc! { "_id": n, "n": n }))
        .await
        .unwrap();
    reports
        .run_command(doc! {
            "create": "by_region", "viewOn": "sales", "pipeline": [],
            "collation": { "locale": "fr", "strength": 2 },
        })
        .await
        .unwrap();
    let gone = pair.src.database("gone");
    gone.collection::<Document>("c")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    gone.run_command(doc! { "create": "v", "viewOn": "c", "pipeline": [] })
        .await
        .unwrap();
    let mut ferry = pair.migrate(&[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    reports
        .run_command(doc! {
            "collMod": "by_region", "viewOn": "sales",
            "pipeline": [{ "$match": { "n": { "$gt": 4 } } }],
        })
        .await
        .unwrap();
    gone.drop().await.unwrap();
    tokio::task::block_in_place(|| {
        ferry.wait_for("the catalog changes", Duration::from_secs(60), |p| {
            p["eventsApplied"]["ddl"].as_u64() >= Some(3) && p["lagTimeSeconds"] == 0
        })
    });
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("views").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_batches_stay_within_the_command_limit() {
    let pair = Pair::start().await;
    let blobs = pair.src.database("blobs").collection::<Document>("b");
    blobs
        .insert_many([doc! { "_id": 0 }, doc! { "_id": 1 }])
        .await
        .unwrap();
    let (_, destination) = pair.proxies().await;
    let lanes = ["--apply-lanes", "1"];
    let mut first = Ferry::start(&pair.source.uri(), &destination.uri(), &lanes);
    tokio::task::block_in_place(|| first.wait_can_commit());
    assert_eq!(tokio::task::block_in_place(|| first.terminate()), 143);
    // Two consecutive replacements in one lane: just under the batch's byte bound, then one
    // large enough that both together pass the server's command limit.
    for (id, bytes) in [(0, 8 * 1024 * 1024 - 4096), (1, 15 * 1024 * 1024)] {
        blobs
            .replace_one(
                doc! { "_id": id },
                doc! { "_id": id, "pad": "x".repeat(bytes) },
            )
            .await
            .unwrap();
    }
    let mut second = Ferry::start(&pair.source.uri(), &destination.uri(), &lanes);
    tokio::task::block_in_place(|| second.commit_and_finish());
    for command in destination.commands() {
        assert!(
            command.bytes <= COMMAND_LIMIT,
            "a {} command of {} bytes passes the server's limit",
            command.name,
            command.bytes
        );
    }
    pair.assert_equal("large replacements").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_at_the_size_limit_is_followed_through_the_change_stream() {
    let pair = Pair::start().await;
    let mut ferry = pair.migrate(&[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    // Its event is over 16 MiB: servers that can split it send it in fragments.
    pair.src
        .database("huge")
        .collection::<Document>("docs")
        .insert_one(doc! { "_id": 1, "pad": "x".repeat(16 * 1024 * 1024 - 200) })
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        ferry.wait_for("the insert applied", Duration::from_secs(60), |p| {
            p["eventsApplied"]["insert"].as_u64() >= Some(1) && p["lagTimeSeconds"] == 0
        })
    });
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("a 16 MiB document").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_too_large_for_the_source_to_send_fails_with_the_remedy() {
    let pair = Pair::start().await;
    let (source, _) = pair.proxies().await;
    // As a source before 6.0.9, which cannot split events, answers a getMore whose next event
    // is over the limit.
    let mut ferry = Ferry::start_with_env(
        &source.uri(),
        &pair.destination.uri(),
        &[],
        &[("FERRY_TEST_SOURCE_VERSION", "6.0.8")],
    );
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    source.add_rule(Rule::new(
        |c: &Recorded| c.name == "getMore" && c.db == "admin",
        Action::Error {
            code: 10334,
            labels: Vec::new(),
        },
    ));
    let code = tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(60)));
    let output = ferry.output();
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("exceeds 16 MiB"), "{output}");
    assert!(
        output.contains("upgrade the source to MongoDB 6.0.9+ or 7.0+"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_after_the_commit_point_are_named_not_applied() {
    let pair = Pair::start().await;
    fill(&pair.src, "shop", "orders", 100).await;
    let orders = pair.src.database("shop").collection::<Document>("orders");
    unique_index(&pair.src, "shop", "orders", "n").await;
    let (source, destination) = pair.proxies().await;
    // Hold the commit after its commit point, while an application that was not stopped writes.
    destination.add_rule(
        Rule::new(
            |c: &Recorded| c.name == "dropIndexes",
            Action::Delay(Duration::from_secs(4)),
        )
        .times(1),
    );
    let mut ferry = Ferry::start(&source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    let (status, reply) = tokio::task::block_in_place(|| ferry.commit());
    assert_eq!(status, 200, "{reply}");
    assert!(reply["sourceWrites"].is_string(), "{reply}");
    tokio::task::block_in_place(|| {
        ferry.wait_for("COMMITTING", Duration::from_secs(60), |p| {
            p["state"] == "COMMITTING"
        })
    });
    for id in 1000..1005 {
        orders
            .insert_one(doc! { "_id": id, "n": id, "late": true })
            .await
            .unwrap();
    }
    let committed = tokio::task::block_in_place(|| {
        ferry.wait_for("COMMITTED", Duration::from_secs(120), |p| {
            p["state"] == "COMMITTED"
        })
    });
    let code = tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(30)));
    let output = ferry.output();
    assert_eq!(code, 4, "{output}");
    assert!(
        output.contains("stray writes: shop.orders took 5 write(s) after the commit point"),
        "{output}"
    );
    assert_eq!(
        committed["strayWrites"][0]["namespace"],
        Value::from("shop.orders"),
        "{committed}"
    );
    assert_eq!(committed["strayWrites"][0]["count"], 5, "{committed}");
    // Ferry asked the source to block writes first (the test server cannot, and says so),
    // without a write concern, which that command refuses.
    let block = source
        .commands()
        .into_iter()
        .find(|c| c.name == "setUserWriteBlockMode" && c.body.get_bool("global") == Ok(true))
        .expect("Ferry asks the source to block writes");
    assert_eq!(block.write_concern, None, "{block:?}");
    assert_eq!(committed["sourceWritesBlocked"], false, "{committed}");
    let copied = pair
        .dst
        .database("shop")
        .collection::<Document>("orders")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(copied, 100, "nothing after the commit point is applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursors_killed_under_the_copy_are_read_again() {
    let pair = Pair::start().await;
    // The pre-flight reads the first collection for a rate; this one keeps its cursor away
    // from the collections whose copies are faulted.
    fill(&pair.src, "aaa", "first", 100).await;
    fill(&pair.src, "big", "items", 20_000).await;
    let tail = pair.src.database("logs");
    tail.run_command(doc! { "create": "tail", "capped": true, "size": 4 * 1024 * 1024 })
        .await
        .unwrap();
    tail.collection::<Document>("tail")
        .insert_many((0..3000).map(|i| doc! { "_id": i, "line": format!("line {i}") }))
        .await
        .unwrap();
    let (source, _) = pair.proxies().await;
    let killed = source.add_rule(
        Rule::new(
            get_more("big.items"),
            Action::Error {
                code: 175,
                labels: Vec::new(),
            },
        )
        .times(1),
    );
    let overrun = source.add_rule(
        Rule::new(
            get_more("logs.tail"),
            Action::Error {
                code: 136,
                labels: Vec::new(),
            },
        )
        .times(1),
    );
    let mut ferry = Ferry::start(&source.uri(), &pair.destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    assert_eq!((killed.fired(), overrun.fired()), (1, 1));
    pair.assert_equal("killed cursors").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collection_renamed_during_its_copy_is_copied_whole_through_a_retry() {
    let pair = Pair::start().await;
    fill(&pair.src, "aaa", "first", 100).await;
    // Two `_id` ranges: both reads are held while the collection is renamed.
    fill(&pair.src, "big", "items", 40_000).await;
    let (source, destination) = pair.proxies().await;
    let copy_read = |c: &Recorded| {
        c.name == "find"
            && c.namespace().as_deref() == Some("big.items")
            && c.body.get_document("sort").is_ok()
    };
    let held =
        source.add_rule(Rule::new(copy_read, Action::Delay(Duration::from_secs(3))).times(2));
    let mut ferry = Ferry::start(&source.uri(), &destination.uri(), &[]);
    until_fired(&held, 2, &ferry).await;
    pair.src
        .database("admin")
        .run_command(doc! { "renameCollection": "big.items", "to": "big.moved" })
        .await
        .unwrap();
    // Then a fault makes the migration start over from its checkpoints, with the copy state
    // under the old name and the source's collection under the new one.
    let stepdown = destination.add_rule(
        Rule::new(
            |c: &Recorded| c.name == "insert" && c.db == "big",
            Action::Error {
                code: 91,
                labels: Vec::new(),
            },
        )
        .times(2),
    );
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    assert_eq!(stepdown.fired(), 2);
    assert!(ferry.retried(), "{}", ferry.output());
    pair.assert_equal("renamed during its copy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_read_sees_the_catalog_that_named_its_collection() {
    // Renamed after T0 and before the copy lists the catalog: the listing names `b`, which a
    // majority snapshot at T0 does not hold (on a real replica set such a read finds nothing, or
    // another collection). The copy's reads must wait for a snapshot that holds the name.
    let pair = Pair::start().await;
    fill(&pair.src, "d", "a", 100).await;
    let (source, destination) = pair.proxies().await;
    // The migration's start (T0) is recorded before the copy lists the catalog; the source's
    // next listing of `d` is the copy's, which is held while the collection is renamed.
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = started.clone();
    destination.add_rule(
        Rule::new(
            move |c: &Recorded| {
                if c.name == "insert" && c.namespace().as_deref() == Some("__ferry.migration") {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                false
            },
            Action::Delay(Duration::ZERO),
        )
        .times(1),
    );
    let listing = {
        let started = started.clone();
        move |c: &Recorded| {
            c.name == "listCollections"
                && c.db == "d"
                && started.load(std::sync::atomic::Ordering::SeqCst)
        }
    };
    let held = source.add_rule(Rule::new(listing, Action::Delay(Duration::from_secs(2))).times(1));
    let mut ferry = Ferry::start(&source.uri(), &destination.uri(), &[]);
    until_fired(&held, 1, &ferry).await;
    pair.src
        .database("admin")
        .run_command(doc! { "renameCollection": "d.a", "to": "d.b" })
        .await
        .unwrap();
    let hello = pair
        .src
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .unwrap();
    let renamed = hello
        .get_document("lastWrite")
        .and_then(|w| w.get_document("opTime"))
        .and_then(|t| t.get_timestamp("ts"))
        .unwrap();
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("renamed before the listing").await;
    let t0 = start_time(&source).expect("the change stream starts at a time, T0");
    assert!(
        t0 < renamed,
        "the rename at {renamed:?} must follow T0 {t0:?}"
    );
    let reads: Vec<Recorded> = source
        .commands()
        .into_iter()
        .filter(|c| {
            c.name == "find"
                && c.namespace().as_deref() == Some("d.b")
                && c.body.get_document("sort").is_ok()
        })
        .collect();
    assert!(
        !reads.is_empty(),
        "no copy read of d.b:\n{}",
        ferry.output()
    );
    for read in reads {
        let after = read
            .read_concern
            .as_ref()
            .and_then(|c| c.get_timestamp("afterClusterTime").ok())
            .unwrap_or_else(|| panic!("a copy read without afterClusterTime: {read:?}"));
        assert!(
            after >= renamed,
            "a read of d.b at {after:?}, before the rename that named it at {renamed:?}"
        );
    }
}
