//! The copy at scale: a collection's indexes are built as soon as its copy ends, beside the
//! copies still running, and reported while they build; many collections keep the progress
//! reply small, with their detail paged; the reads of one database share the lookups that
//! prove each reads its own collection; and a checkpoint writes the incarnations of every
//! collection only when they changed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use serde_json::Value;
use testkit::proxy::{on, Action, Proxy, Recorded, Rule};

use crate::harness::{
    call_api, fill, http, recorded_ranges, small_collections, unique_index, until_fired, Ferry,
    Pair,
};

/// Whether the reply's array `field` holds a row for `namespace` matching `also`.
/// When the proxy received each command `which` matches, in order.
fn sent_at(proxy: &Proxy, which: impl Fn(&Recorded) -> bool) -> Vec<Instant> {
    proxy
        .commands()
        .into_iter()
        .filter(|c| which(c))
        .map(|c| c.at)
        .collect()
}

fn lists(p: &Value, field: &str, namespace: &str, also: impl Fn(&Value) -> bool) -> bool {
    p[field]
        .as_array()
        .is_some_and(|rows| rows.iter().any(|r| r["namespace"] == namespace && also(r)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collections_indexes_are_built_while_others_still_copy() {
    let pair = Pair::start().await;
    fill(&pair.src, "big", "items", 20_000).await;
    let small = pair.src.database("small").collection::<Document>("c");
    small
        .insert_many((0..100).map(|i| doc! { "_id": i, "n": i, "k": format!("k{i}") }))
        .await
        .unwrap();
    unique_index(&pair.src, "small", "c", "k").await;
    // The large copy's writes are slowed down, and so is the small collection's index build,
    // so that the build is seen while it runs.
    let (_, destination) = pair.proxies().await;
    destination.add_rule(Rule::new(
        on("insert", "big.items"),
        Action::Delay(Duration::from_millis(150)),
    ));
    destination.add_rule(
        Rule::new(
            on("createIndexes", "small.c"),
            Action::Delay(Duration::from_millis(1500)),
        )
        .times(1),
    );
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    let seen = tokio::task::block_in_place(|| {
        ferry.wait_for(
            "small.c's index build while big.items copies",
            Duration::from_secs(120),
            |p| {
                lists(p, "indexBuilding", "small.c", |r| r["indexes"] == 1)
                    && lists(p, "collections", "big.items", |r| r["phase"] == "copying")
            },
        )
    });
    assert_eq!(seen["collectionCounts"]["indexing"], 1, "{seen}");
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("after indexes built beside the copy")
        .await;
    // On the wire: the small collection's index was created before the large copy's last write.
    let commands = destination.commands();
    let built = commands
        .iter()
        .find(|c| c.name == "createIndexes" && c.namespace().as_deref() == Some("small.c"))
        .expect("small.c's indexes were built")
        .at;
    let last_insert = commands
        .iter()
        .filter(|c| c.name == "insert" && c.namespace().as_deref() == Some("big.items"))
        .map(|c| c.at)
        .max()
        .expect("big.items was copied");
    assert!(
        built + Duration::from_millis(500) < last_insert,
        "small.c's indexes were built {:?} after big.items' last insert",
        built.saturating_duration_since(last_insert)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_collections_keep_the_progress_reply_small_and_page_their_detail() {
    const COLLECTIONS: usize = 600;
    let pair = Pair::start().await;
    let db = pair.src.database("tenants");
    for t in 0..COLLECTIONS {
        let name = format!("tenant{t:04}");
        db.collection::<Document>(&name)
            .insert_many((0..3).map(|i| doc! { "_id": i, "email": format!("{t}-{i}@x") }))
            .await
            .unwrap();
        unique_index(&pair.src, "tenants", &name, "email").await;
    }
    let mut ferry = pair.migrate(&[]);
    // Every reply along the way stays small: with each collection's row in it, this many
    // collections would make it about 120 KB.
    let (ready, largest) = tokio::task::block_in_place(|| {
        let started = Instant::now();
        let mut largest = 0;
        loop {
            let (status, body) =
                http(&ferry.api, "GET", "/api/v1/progress", "", None).unwrap_or((0, String::new()));
            if status == 200 {
                largest = largest.max(body.len());
                let p = serde_json::from_str::<Value>(&body).unwrap()["progress"].clone();
                assert_ne!(p["state"], "FAILED", "{p}");
                if p["canCommit"] == true {
                    return (p, largest);
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "{}",
                ferry.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(largest < 16 * 1024, "a progress reply of {largest} bytes");
    assert_eq!(ready["collectionCounts"]["total"], COLLECTIONS, "{ready}");
    assert_eq!(ready["collectionCounts"]["indexed"], COLLECTIONS, "{ready}");
    // The detail, a page at a time.
    let (_, page) = tokio::task::block_in_place(|| {
        call_api(
            &ferry.api,
            "GET",
            "/api/v1/collections?offset=500&limit=300",
            None,
        )
        .expect("the API answers")
    });
    let rows = page["collections"].as_array().unwrap();
    assert_eq!(
        (page["total"].as_u64(), rows.len()),
        (Some(COLLECTIONS as u64), 100)
    );
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["namespace"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"tenants.tenant0599"), "{names:?}");
    assert!(
        rows.iter()
            .all(|r| r["phase"] == "indexed" && r["indexesBuilt"] == 1),
        "{page}"
    );
    let (status, body) = tokio::task::block_in_place(|| {
        http(
            &ferry.api,
            "GET",
            "/api/v1/collections?offset=ten",
            "",
            None,
        )
        .unwrap()
    });
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("offset must be a whole number, not \\\"ten\\\""),
        "{body}"
    );
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("after many collections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_workers_take_over_half_of_a_running_range_and_a_crash_keeps_every_half() {
    let pair = Pair::start().await;
    // 40,000 documents of ~1 KB whose `_id`s crowd the top of their span, above five old ones:
    // cut by value before the copy, one range holds nearly all of them, and the density that
    // decides the cuts while it runs is that of the recent reads.
    let items = pair.src.database("big").collection::<Document>("items");
    items
        .insert_many((0..5).map(|i| doc! { "_id": i, "pad": "x".repeat(1000) }))
        .await
        .unwrap();
    for chunk in 0..20 {
        items
            .insert_many((0..2000).map(|i| {
                doc! { "_id": 1_000_000 + chunk * 2000 + i, "pad": "x".repeat(1000) }
            }))
            .await
            .unwrap();
    }
    let (source, destination) = pair.proxies().await;
    destination.add_rule(Rule::new(
        on("insert", "big.items"),
        Action::Delay(Duration::from_millis(30)),
    ));
    let mut first = Ferry::start(&source.uri(), &destination.uri(), &[]);
    // On the wire: the range reads of the collection.
    let range_reads = || {
        source
            .commands()
            .iter()
            .filter(|c| {
                c.name == "find"
                    && c.namespace().as_deref() == Some("big.items")
                    && c.body
                        .get_document("sort")
                        .is_ok_and(|s| s.contains_key("_id"))
                    && !c.body.contains_key("limit")
            })
            .count()
    };
    // Planned as three ranges by value (the last one holds nearly everything); killed once two
    // cuts are recorded and read from: every part must be copied after the restart.
    let deadline = Instant::now() + Duration::from_secs(120);
    while recorded_ranges(&pair, "big.items").await < 5 || range_reads() < 5 {
        assert!(
            first.copied("big.items").is_none() && Instant::now() < deadline,
            "no range was cut and read before the copy ended ({} range reads):\n{}",
            range_reads(),
            first.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill9();
    let mut second = pair.migrate(&[]);
    tokio::task::block_in_place(|| second.commit_and_finish());
    pair.assert_equal("after cuts of running ranges and a crash")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_of_embedded_document_ids_are_cut_in_the_servers_order() {
    let pair = Pair::start().await;
    // `_id`s that are documents: the client's byte order of `{k: 20065}` and `{k: 60000}` is
    // not the server's, so where a cut range ends must be the server's bound.
    let items = pair.src.database("docs").collection::<Document>("items");
    for chunk in 0..20 {
        items
            .insert_many((0..2000).map(|i| {
                doc! { "_id": { "k": chunk * 2000 + i }, "pad": "x".repeat(1000) }
            }))
            .await
            .unwrap();
    }
    let (_, destination) = pair.proxies().await;
    destination.add_rule(Rule::new(
        on("insert", "docs.items"),
        Action::Delay(Duration::from_millis(50)),
    ));
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    let cuts = ferry.logged("an idle copy worker takes over half of a running range");
    assert!(
        cuts.iter()
            .any(|fields| fields["namespace"] == "docs.items"),
        "{}",
        ferry.output()
    );
    pair.assert_equal("ranges of document _ids").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_share_their_name_checks_and_each_reads_its_own_collection() {
    let pair = Pair::start().await;
    let names = ["a", "b", "c"];
    for name in names {
        pair.src
            .database("d")
            .collection::<Document>(name)
            .insert_many((0..50).map(|i| doc! { "_id": i, "from": name }))
            .await
            .unwrap();
    }
    let (source, destination) = pair.proxies().await;
    // The three copy reads are held while `a` and `b` swap names: each read then opens on the
    // other's collection, and only its name check can tell.
    let held = source.add_rule(
        Rule::new(
            |c: &Recorded| c.name == "find" && c.db == "d" && c.body.get_document("sort").is_ok(),
            Action::Delay(Duration::from_secs(2)),
        )
        .times(3),
    );
    // Then the first name check is slowed down, so that the other two wait for it and share
    // the next lookup.
    let reading = Arc::new(AtomicBool::new(false));
    let read = reading.clone();
    source.add_rule(
        Rule::new(
            move |c: &Recorded| {
                let check = c.name == "listCollections" && c.db == "d";
                let name = c
                    .body
                    .get_document("filter")
                    .and_then(|f| f.get_str("name"));
                check && name.is_ok() && read.load(Ordering::SeqCst)
            },
            Action::Delay(Duration::from_millis(1500)),
        )
        .times(1),
    );
    let mut ferry = Ferry::start(&source.uri(), &destination.uri(), &[]);
    until_fired(&held, 3, &ferry).await;
    for (from, to) in [("d.a", "d.tmp"), ("d.b", "d.a"), ("d.tmp", "d.b")] {
        pair.src
            .database("admin")
            .run_command(doc! { "renameCollection": from, "to": to })
            .await
            .unwrap();
    }
    reading.store(true, Ordering::SeqCst);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("names swapped under the copy's reads")
        .await;
    let shared = source.commands().into_iter().any(|c| {
        let names = c
            .body
            .get_document("filter")
            .and_then(|f| f.get_document("name"));
        let asked = names
            .and_then(|n| n.get_array("$in"))
            .map_or(0, |n| n.len());
        c.name == "listCollections" && c.db == "d" && asked >= 2
    });
    assert!(shared, "no lookup checked two names at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_databases_next_name_check_waits_as_long_as_its_lookup_of_names_together_took() {
    const LOOKUP: Duration = Duration::from_millis(200);
    let pair = Pair::start().await;
    small_collections(&pair.src, 128, 2).await;
    let (source, destination) = pair.proxies().await;
    let together = |c: &Recorded| {
        let names = c
            .body
            .get_document("filter")
            .and_then(|f| f.get_document("name"));
        c.name == "listCollections" && names.is_ok_and(|n| n.contains_key("$in"))
    };
    source.add_rule(Rule::new(together, Action::Delay(LOOKUP)));
    // Lookups by equality cost more a name, so that turns ask together.
    source.add_rule(Rule::new(
        |c: &Recorded| {
            let name = c
                .body
                .get_document("filter")
                .and_then(|f| f.get_str("name"));
            c.name == "listCollections" && c.db == "many" && name.is_ok()
        },
        Action::Delay(LOOKUP / 2),
    ));
    // The collections are created a few waves apart, so that their reads ask over a second.
    destination.add_rule(Rule::new(
        |c: &Recorded| c.name == "create" && c.db == "many",
        Action::Delay(Duration::from_millis(150)),
    ));
    let mut ferry = Ferry::start(&source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("small collections").await;
    let asked = sent_at(&source, together);
    assert!(asked.len() >= 2, "{} lookups together", asked.len());
    // Each lookup took at least LOOKUP, and the next waited as long again.
    let gaps: Vec<Duration> = asked.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|gap| *gap >= LOOKUP * 7 / 4),
        "lookups together {gaps:?} apart"
    );
}

/// A copy read of one of the `small_collections`.
fn small_copy_read(c: &Recorded) -> bool {
    c.name == "find" && c.db == "many" && c.body.contains_key("sort")
}

/// Copies through `source` to the commit with each copy read held a second, and checks that
/// more than four ranges ran at once: four at a time would send four reads in the first
/// second, and the next only as those end.
async fn copy_with_slow_reads(pair: &Pair, source: &Proxy, destination: &Proxy, what: &str) {
    source.add_rule(Rule::new(
        small_copy_read,
        Action::Delay(Duration::from_secs(1)),
    ));
    let mut ferry = Ferry::start(&source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal(what).await;
    let sent = sent_at(source, small_copy_read);
    let first = *sent.iter().min().expect("copy reads");
    let together = sent
        .iter()
        .filter(|&&at| at < first + Duration::from_millis(800))
        .count();
    assert!(
        together >= 8,
        "{what}: {together} of {} copy reads were sent in the first 0.8 s",
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_collections_are_copied_more_than_four_at_a_time() {
    let pair = Pair::start().await;
    small_collections(&pair.src, 12, 20).await;
    let (source, destination) = pair.proxies().await;
    copy_with_slow_reads(&pair, &source, &destination, "small collections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_collections_resumed_after_a_crash_are_copied_more_than_four_at_a_time() {
    const COLLECTIONS: usize = 12;
    let pair = Pair::start().await;
    small_collections(&pair.src, COLLECTIONS, 20).await;
    let (source, destination) = pair.proxies().await;
    // Killed once every collection's one range is stored, while the reads are held (longer
    // than the test: those beyond the driver's ten connections are never sent): each is resumed.
    let held = source.add_rule(Rule::new(
        small_copy_read,
        Action::Delay(Duration::from_secs(600)),
    ));
    let mut first = Ferry::start(&source.uri(), &destination.uri(), &[]);
    let states = pair
        .dst
        .database("__ferry")
        .collection::<Document>("collections");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = states.count_documents(doc! {}).await.unwrap();
        if stored >= COLLECTIONS as u64 && !sent_at(&source, small_copy_read).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} copy states stored:\n{}",
            first.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill9();
    held.remove();
    source.clear_record();
    copy_with_slow_reads(&pair, &source, &destination, "small collections resumed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_state_writes_asked_together_go_in_one_command() {
    const COLLECTIONS: usize = 40;
    let pair = Pair::start().await;
    small_collections(&pair.src, COLLECTIONS, 5).await;
    // Each write to the copy states is held a little, so that others are asked meanwhile.
    let (_, destination) = pair.proxies().await;
    let state_write = |c: &Recorded| {
        c.name == "update" && c.db == "__ferry" && c.body.get_str("update") == Ok("collections")
    };
    destination.add_rule(Rule::new(
        state_write,
        Action::Delay(Duration::from_millis(100)),
    ));
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("small collections").await;
    let sent: Vec<usize> = destination
        .commands()
        .into_iter()
        .filter(|c| state_write(c))
        .map(|c| c.array_len("updates").expect("an update's statements"))
        .collect();
    let statements: usize = sent.iter().sum();
    assert!(
        statements >= 3 * COLLECTIONS,
        "{statements} copy-state writes for {COLLECTIONS} collections"
    );
    assert!(
        sent.len() * 5 <= statements * 3,
        "{statements} copy-state writes went in {} commands",
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collection_one_batch_holds_records_its_last_batch_with_its_done_mark() {
    const COLLECTIONS: usize = 40;
    let pair = Pair::start().await;
    small_collections(&pair.src, COLLECTIONS, 5).await;
    let (_, destination) = pair.proxies().await;
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("small collections").await;
    let statements: usize = destination
        .commands()
        .into_iter()
        .filter(|c| {
            c.name == "update" && c.db == "__ferry" && c.body.get_str("update") == Ok("collections")
        })
        .map(|c| c.array_len("updates").expect("an update's statements"))
        .sum();
    // Registered, copied with its one batch, indexed: three writes each. Its batch recorded on
    // its own made four (a writer that finishes before its reader has ended still does).
    assert!(
        (3 * COLLECTIONS..4 * COLLECTIONS).contains(&statements),
        "{statements} copy-state writes for {COLLECTIONS} collections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_recorded_while_other_ranges_write_their_state_does_not_stall_the_copy() {
    let pair = Pair::start().await;
    fill(&pair.src, "big", "items", 20_000).await;
    small_collections(&pair.src, 20, 5).await;
    // Every write to the copy states is slow: a cut is recorded while the other ranges' states
    // are still being written, and theirs wait for it.
    let (_, destination) = pair.proxies().await;
    destination.add_rule(Rule::new(
        |c: &Recorded| c.name == "update" && c.db == "__ferry",
        Action::Delay(Duration::from_millis(200)),
    ));
    destination.add_rule(Rule::new(
        on("insert", "big.items"),
        Action::Delay(Duration::from_millis(100)),
    ));
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| {
        ferry.wait_for("canCommit", Duration::from_secs(120), |p| {
            p["canCommit"] == true
        })
    });
    assert!(
        recorded_ranges(&pair, "big.items").await >= 2,
        "big.items was never cut:\n{}",
        ferry.output()
    );
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("cuts beside state writes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_writes_the_incarnations_only_when_they_changed() {
    const COLLECTIONS: usize = 40;
    let pair = Pair::start().await;
    small_collections(&pair.src, COLLECTIONS, 5).await;
    let (_, destination) = pair.proxies().await;
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    // A checkpoint a second: several with nothing to change, then a drop to record.
    tokio::time::sleep(Duration::from_secs(4)).await;
    pair.src
        .database("many")
        .collection::<Document>("c00")
        .drop()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pair
        .dst
        .database("many")
        .list_collection_names()
        .await
        .unwrap()
        .contains(&"c00".to_string())
    {
        assert!(Instant::now() < deadline, "the drop was not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Another writer's map (a second Ferry on this destination, a late write of an earlier
    // run): the next checkpoint must not pair this run's token with it.
    let state = pair
        .dst
        .database("__ferry")
        .collection::<Document>("migration");
    state
        .update_one(
            doc! { "_id": "migration" },
            doc! { "$set": { "incarnations": [], "incarnationsStamp": { "run": "another", "changes": 0_i64 } } },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored = state
        .find_one(doc! { "_id": "migration" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.get_array("incarnations").map(Vec::len),
        Ok(COLLECTIONS - 1),
        "the checkpoint after another writer's map"
    );
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("after a drop").await;
    // Each checkpoint, and how many incarnations it wrote (`None`: it left them as they were).
    let checkpoints: Vec<Option<usize>> = destination
        .commands()
        .into_iter()
        .filter(|c| c.name == "update" && c.db == "__ferry")
        .filter_map(|c| {
            let update = c.body.get_array("updates").ok()?.first()?.as_document()?;
            let set = update.get_document("u").ok()?.get_document("$set").ok()?;
            // 40 incarnations are well under the size the proxy elides.
            let written = set.get_array("incarnations").ok().map(Vec::len);
            set.contains_key("resumeToken").then_some(written)
        })
        .collect();
    assert!(checkpoints.len() >= 6, "{checkpoints:?}");
    let written: Vec<usize> = checkpoints.iter().flatten().copied().collect();
    assert_eq!(
        written.first(),
        Some(&COLLECTIONS),
        "the first checkpoint writes every incarnation: {checkpoints:?}"
    );
    assert_eq!(
        written.last(),
        Some(&(COLLECTIONS - 1)),
        "the drop is recorded: {checkpoints:?}"
    );
    assert!(
        written.len() <= 4,
        "{} of {} checkpoints rewrote the unchanged incarnations: {checkpoints:?}",
        written.len(),
        checkpoints.len()
    );
}
