//! Crashes, restarts, stops and lost history: each case ends with a full equality check, and
//! resumed runs must not copy again what was already copied.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::Client;

use testkit::proxy::{on, Action, Proxy, Recorded, Rule, RuleHandle};

use crate::harness::{fill, recorded_ranges, seed, unique_index, App, Ferry, Pair};
use testkit::workload;

/// Waits until a proxy rule has fired once (the command it holds is under way).
async fn wait_until_fired(rule: &RuleHandle, ferry: &Ferry) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while rule.fired() == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", ferry.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The documents the proxy saw sent to `ns` in `insert` commands.
fn inserted(proxy: &Proxy, ns: &str) -> u64 {
    proxy
        .commands()
        .iter()
        .filter(|c| c.name == "insert" && c.namespace().as_deref() == Some(ns))
        .map(|c| c.sequence_documents as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_copy_resumes_without_copying_again() {
    let seed = seed("kill_during_copy");
    let pair = Pair::start().await;
    workload::seed(&pair.src, seed, 500).await.unwrap();
    fill(&pair.src, "big", "items", 60_000).await;
    let app = App::start(&pair.src, seed);

    let (_, destination) = pair.proxies().await;
    let through = |extra| Ferry::start(&pair.source.uri(), &destination.uri(), extra);
    let mut first = through(&[]);
    // Killed once the big collection runs as several ranges and a sixth of it is copied.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let copied = first.progress().and_then(|p| {
            p["collections"].as_array()?.iter().find_map(|c| {
                (c["namespace"] == "big.items").then(|| c["copiedDocuments"].as_u64())?
            })
        });
        if recorded_ranges(&pair, "big.items").await >= 3 && copied > Some(10_000) {
            break;
        }
        assert!(
            first.copied("big.items").is_none() && std::time::Instant::now() < deadline,
            "the big copy ended before it ran as several ranges:\n{}",
            first.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill9();
    assert!(
        first.copied("big.items").is_none(),
        "the copy had finished already"
    );
    let small_done: Vec<&str> = ["wl_main.capped", "wl_main.validated", "wl_main.people"]
        .into_iter()
        .filter(|ns| first.copied(ns).is_some())
        .collect();
    assert!(!small_done.is_empty(), "{}", first.output());
    // What the destination holds of the big collection when the first run dies.
    let there = pair
        .dst
        .database("big")
        .collection::<Document>("items")
        .count_documents(doc! {})
        .await
        .unwrap();
    destination.clear_record();

    let mut second = through(&[]);
    tokio::task::block_in_place(|| second.wait_can_commit());
    let output = second.output();
    assert!(
        !second
            .logged("resuming the migration stored on the destination")
            .is_empty(),
        "{output}"
    );
    // Counted on the wire: the second run sends what was missing, plus at most one batch
    // (1,000 documents) for each of the four ranges the copy runs at once: the batch a range
    // had sent but not yet checkpointed when the first run died.
    let sent = inserted(&destination, "big.items");
    assert!(
        sent <= 60_000 - there + 4 * 1000,
        "the second run sent {sent} documents of big.items; the destination held {there} of 60,000:\n{output}"
    );
    for ns in small_done {
        assert_eq!(inserted(&destination, ns), 0, "{ns} was copied again");
    }
    app.stop().await;
    tokio::task::block_in_place(|| second.commit_and_finish());
    pair.assert_equal(&format!("seed {seed}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_change_application_under_load_resumes_from_the_checkpoint() {
    let seed = seed("kill_during_apply");
    let pair = Pair::start().await;
    workload::seed(&pair.src, seed, 2000).await.unwrap();
    let app = App::start(&pair.src, seed);
    let (source, _) = pair.proxies().await;
    let through = |extra| Ferry::start(&source.uri(), &pair.destination.uri(), extra);
    let mut first = through(&[]);
    tokio::task::block_in_place(|| {
        first.wait_for("changes applied", Duration::from_secs(120), |p| {
            p["info"] == "change event application"
                && p["eventsApplied"]["update"].as_u64() > Some(50)
        })
    });
    // Killed once a checkpoint is on the destination.
    let state = pair
        .dst
        .database("__ferry")
        .collection::<Document>("migration");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while state
        .find_one(doc! { "resumeToken": { "$exists": true } })
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint was written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    source.clear_record();
    let mut second = through(&[]);
    tokio::task::block_in_place(|| second.wait_can_commit());
    let output = second.output();
    assert!(
        second.logged("collection copied").is_empty(),
        "nothing is copied again:\n{output}"
    );
    // Change application continued from its checkpoint, not from T0 (which would pass too,
    // replays being harmless): the second run's stream resumes after a token.
    let opened = source
        .commands()
        .into_iter()
        .find_map(|c| {
            let stage = c
                .body
                .get_array("pipeline")
                .ok()?
                .first()?
                .as_document()?
                .clone();
            // The migration's stream, not the pre-flight's privilege probe.
            let options = stage.get_document("$changeStream").ok()?.clone();
            (options.get_bool("showExpandedEvents") == Ok(true)).then_some(options)
        })
        .expect("the second run opens the change stream");
    assert!(
        opened.contains_key("resumeAfter") && !opened.contains_key("startAtOperationTime"),
        "{opened}"
    );
    app.stop().await;
    tokio::task::block_in_place(|| second.commit_and_finish());
    pair.assert_equal(&format!("seed {seed}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_index_build_finishes_what_is_missing() {
    let pair = Pair::start().await;
    fill(&pair.src, "idx", "c", 30_000).await;
    let c = pair.src.database("idx").collection::<Document>("c");
    for (i, key) in ["n", "pad"].iter().enumerate() {
        c.create_index(
            mongodb::IndexModel::builder()
                .keys(doc! { *key: 1 })
                .options(
                    mongodb::options::IndexOptions::builder()
                        .name(format!("i{i}"))
                        .unique(i == 0)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    }
    // The index build is held by the proxy, so the kill lands inside it.
    let (_, destination) = pair.proxies().await;
    let held = destination.add_rule(
        Rule::new(
            on("createIndexes", "idx.c"),
            Action::Delay(Duration::from_secs(5)),
        )
        .times(1),
    );
    let mut first = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    wait_until_fired(&held, &first).await;
    first.kill9();
    // The held command dies with the process instead of reaching the server later.
    destination.close_all();
    let mut second = pair.migrate(&[]);
    tokio::task::block_in_place(|| second.commit_and_finish());
    assert!(second.copied("idx.c").is_none(), "{}", second.output());
    pair.assert_equal("kill during index build").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_between_commit_request_and_committed_finishes_the_commit() {
    let pair = Pair::start().await;
    fill(&pair.src, "shop", "orders", 40_000).await;
    unique_index(&pair.src, "shop", "orders", "n").await;
    // The restore of the unique index is held by the proxy, so the kill lands inside the commit.
    let (_, destination) = pair.proxies().await;
    let held = destination.add_rule(
        Rule::new(
            |c: &Recorded| c.name == "dropIndexes",
            Action::Delay(Duration::from_secs(5)),
        )
        .times(1),
    );
    let mut first = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| first.wait_can_commit());
    let (status, _) = first.commit();
    assert_eq!(status, 200);
    wait_until_fired(&held, &first).await;
    assert_eq!(first.progress().unwrap()["state"], "COMMITTING");
    first.kill9();
    // The held command dies with the process instead of reaching the server later.
    destination.close_all();

    // The same command again finishes the commit without being asked twice.
    let mut second = pair.migrate(&[]);
    let code = tokio::task::block_in_place(|| second.wait_exit(Duration::from_secs(120)));
    assert_eq!(code, 0, "{}", second.output());
    assert!(second.output().contains("COMMITTED"), "{}", second.output());
    pair.assert_equal("kill during commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_cleanly_and_the_same_command_resumes() {
    let seed = seed("sigterm");
    let pair = Pair::start().await;
    workload::seed(&pair.src, seed, 1000).await.unwrap();
    let app = App::start(&pair.src, seed);
    let mut first = pair.migrate(&[]);
    tokio::task::block_in_place(|| first.wait_can_commit());
    let code = tokio::task::block_in_place(|| first.terminate());
    assert_eq!(code, 143, "{}", first.output());
    assert!(
        first.output().contains("run the same command again"),
        "{}",
        first.output()
    );

    // The destination stays a staging copy; more writes happen while Ferry is down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, destination) = pair.proxies().await;
    let mut second = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| second.wait_can_commit());
    // Nothing of the seeded collections is copied again: their changes arrive as updates.
    for ns in ["wl_main.people", "wl_main.orders", "wl_main.clustered"] {
        assert_eq!(inserted(&destination, ns), 0, "{ns} was copied again");
    }
    app.stop().await;
    tokio::task::block_in_place(|| second.commit_and_finish());
    pair.assert_equal(&format!("seed {seed}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_other_arguments_is_refused() {
    let pair = Pair::start().await;
    fill(&pair.src, "a", "x", 10).await;
    let mut first = pair.migrate(&[]);
    tokio::task::block_in_place(|| first.wait_can_commit());
    first.kill9();
    let mut other = pair.migrate(&["--include", "a"]);
    let code = tokio::task::block_in_place(|| other.wait_exit(Duration::from_secs(60)));
    assert_eq!(code, 2, "{}", other.output());
    assert!(
        other
            .output()
            .contains("another --include (none then, a now)"),
        "{}",
        other.output()
    );
    // The report of such a refusal still holds every check, the measured ones too.
    let (code, report) = tokio::task::block_in_place(|| {
        crate::harness::run_ferry(&[
            "check",
            "--source",
            &pair.source.uri(),
            "--destination",
            &pair.destination.uri(),
            "--include",
            "a",
            "--json",
        ])
    });
    assert_eq!(code, 2, "{report}");
    for id in [
        "destination.empty",
        "source.oplog-window",
        "destination.disk",
    ] {
        assert!(report.contains(&format!("\"{id}\"")), "{id}: {report}");
    }
    let mut fresh = pair.migrate(&["--include", "a", "--drop"]);
    tokio::task::block_in_place(|| fresh.commit_and_finish());
    pair.assert_equal("after starting over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_history_fails_loudly_with_the_remedy() {
    let options = testkit::ServerOptions {
        oplog_max_entries: Some(200),
        ..Default::default()
    };
    if crate::harness::skipped(&options) {
        return;
    }
    let pair = Pair::start_with(&options).await;
    fill(&pair.src, "a", "x", 100).await;
    let mut first = pair.migrate(&[]);
    tokio::task::block_in_place(|| first.wait_can_commit());
    assert_eq!(tokio::task::block_in_place(|| first.terminate()), 143);
    // While Ferry is stopped, the source writes more than its oplog keeps.
    let x = pair.src.database("a").collection::<Document>("x");
    for i in 0..600 {
        x.update_one(doc! { "_id": i % 100 }, doc! { "$inc": { "n": 1 } })
            .await
            .unwrap();
    }
    testkit::server::trim_oplog(&pair.src).await;
    let mut second = pair.migrate(&[]);
    let code = tokio::task::block_in_place(|| second.wait_exit(Duration::from_secs(120)));
    assert_eq!(code, 1, "{}", second.output());
    let output = second.output();
    assert!(output.contains("history lost"), "{output}");
    assert!(output.contains("enlarge the source's oplog"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_servers_are_ridden_out_mid_copy_and_mid_stream() {
    let seed = seed("restarts");
    // Servers that keep what they acknowledged through a kill -9, as mongod's journaled
    // majority writes do.
    let mut pair = Pair::start_with(&testkit::ServerOptions {
        durable: true,
        ..Default::default()
    })
    .await;
    workload::seed(&pair.src, seed, 500).await.unwrap();
    fill(&pair.src, "big", "items", 60_000).await;
    // A short server selection timeout lets the outages surface as errors Ferry must retry,
    // rather than being waited out inside the driver.
    let quick = |uri: String| format!("{uri}&serverSelectionTimeoutMS=1000");
    let mut ferry = crate::harness::Ferry::start(
        &quick(pair.source.uri()),
        &quick(pair.destination.uri()),
        &[],
    );
    tokio::task::block_in_place(|| {
        ferry.wait_for("the copy under way", Duration::from_secs(120), |p| {
            p["collectionCopy"]["estimatedCopiedBytes"].as_u64() > Some(5_000_000)
        })
    });
    // Mid-copy: the destination, then the source, go down and come back.
    pair.destination.restart(Duration::from_secs(3)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pair.source.restart(Duration::from_secs(3)).unwrap();
    pair.src = Client::with_uri_str(pair.source.uri()).await.unwrap();
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    assert!(ferry.retried(), "{}", ferry.output());

    // Mid-stream, under writes: the source, then the destination.
    for (round, restart_source) in [(1, true), (2, false)] {
        let app = App::start(&pair.src, seed ^ round);
        tokio::time::sleep(Duration::from_secs(2)).await;
        app.stop().await;
        if restart_source {
            pair.source.restart(Duration::from_secs(3)).unwrap();
            pair.src = Client::with_uri_str(pair.source.uri()).await.unwrap();
        } else {
            pair.destination.restart(Duration::from_secs(3)).unwrap();
        }
    }
    let app = App::start(&pair.src, seed ^ 3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.stop().await;
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.dst = Client::with_uri_str(pair.destination.uri()).await.unwrap();
    pair.assert_equal(&format!("seed {seed}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_checkpoint_sent_again_after_a_write_concern_error_counts_its_batch_once() {
    let pair = Pair::start().await;
    fill(&pair.src, "d", "c", 3_000).await;
    let (_, destination) = pair.proxies().await;
    // The first three checkpoints of the copy are written, but their majority confirmation
    // fails: each is sent again in place.
    let checkpoint = |c: &Recorded| {
        c.name == "update"
            && c.db == "__ferry"
            && c.body.get_array("updates").is_ok_and(|updates| {
                updates.iter().any(|u| {
                    u.as_document()
                        .and_then(|u| u.get_document("u").ok())
                        .and_then(|u| u.get_document("$set").ok())
                        .is_some_and(|set| set.keys().any(|k| k.ends_with(".lastId")))
                })
            })
    };
    let failed = destination.add_rule(
        Rule::new(
            checkpoint,
            Action::WriteConcernError {
                code: 189,
                retryable: false,
            },
        )
        .times(3),
    );
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    assert_eq!(failed.fired(), 3, "{}", ferry.output());
    let state = pair
        .dst
        .database("__ferry")
        .collection::<Document>("collections")
        .find_one(doc! { "_id": "d.c" })
        .await
        .unwrap()
        .expect("the copy state of d.c");
    let ranges = state.get_array("partitions").unwrap();
    let counted: i64 = state.get_i64("copiedDocuments").unwrap_or(0)
        + ranges
            .iter()
            .filter_map(|p| p.as_document()?.get_i64("documents").ok())
            .sum::<i64>();
    assert_eq!(counted, 3_000, "{state}");
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("checkpoints sent again").await;
}
