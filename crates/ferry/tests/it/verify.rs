//! `ferry verify` against real servers: clean when equal, precise about each corruption,
//! bounded in memory, resumable.

use std::process::Command;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::Client;
use serde_json::Value;

use crate::harness::Pair;

/// Runs `ferry verify` between the pair's servers; (exit code, JSON report).
fn verify(pair: &Pair, extra: &[&str]) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "verify",
            "--source",
            &pair.source.uri(),
            "--destination",
            &pair.destination.uri(),
            "--json",
        ])
        .args(extra)
        .output()
        .expect("running ferry verify");
    let text = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "not a JSON report: {text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

/// The same data, options, indexes and view on a cluster.
async fn build(client: &Client, documents: i64) {
    let db = client.database("v");
    db.run_command(doc! { "create": "people", "validator": { "age": { "$type": "int" } } })
        .await
        .unwrap();
    db.run_command(doc! { "createIndexes": "people", "indexes": [
        { "key": { "email": 1 }, "name": "email_1", "unique": true },
        { "key": { "age": 1 }, "name": "age_1" },
    ] })
    .await
    .unwrap();
    db.run_command(doc! { "create": "grown_ups", "viewOn": "people", "pipeline": [{ "$match": { "age": { "$gte": 18 } } }] })
        .await
        .unwrap();
    let people = db.collection::<Document>("people");
    let batch: Vec<Document> = (0..documents)
        .map(|i| doc! { "_id": i, "email": format!("p{i}@x"), "age": (i % 90) as i32, "nested": { "a": i, "b": [1, 2] } })
        .collect();
    for chunk in batch.chunks(5000) {
        people.insert_many(chunk.to_vec()).await.unwrap();
    }
    // Mixed _id types, so partitions cross type brackets.
    people.insert_many(vec![
        doc! { "_id": "text-id", "email": "t@x", "age": 1 },
        doc! { "_id": mongodb::bson::oid::ObjectId::parse_str("650000000000000000000001").unwrap(), "email": "o@x", "age": 2 },
    ])
    .await
    .unwrap();
}

fn namespace<'a>(report: &'a Value, ns: &str) -> &'a Value {
    report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == ns)
        .unwrap_or_else(|| panic!("{ns} is not in the report: {report}"))
}

/// A namespace report's (missing, extra, different) document counts.
fn mismatches(namespace: &Value) -> (Option<u64>, Option<u64>, Option<u64>) {
    (
        namespace["missing"].as_u64(),
        namespace["extra"].as_u64(),
        namespace["different"].as_u64(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_clusters_verify_clean_and_each_corruption_is_found() {
    let pair = Pair::start().await;
    build(&pair.src, 25_000).await;
    build(&pair.dst, 25_000).await;
    let (code, report) = tokio::task::block_in_place(|| verify(&pair, &[]));
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["equal"], true);
    assert_eq!(report["documentsChecked"], 25_002);

    let people = pair.dst.database("v").collection::<Document>("people");
    people
        .update_one(doc! { "_id": 17 }, doc! { "$set": { "age": 99 } })
        .await
        .unwrap();
    people.delete_one(doc! { "_id": 12_345 }).await.unwrap();
    people
        .insert_one(doc! { "_id": 99_999, "email": "extra@x", "age": 5 })
        .await
        .unwrap();
    people
        .replace_one(doc! { "_id": 20_000 }, doc! { "age": 20_000 % 90, "_id": 20_000_i64, "email": "p20000@x", "nested": { "a": 20_000_i64, "b": [1, 2] } })
        .await
        .unwrap();
    let db = pair.dst.database("v");
    db.run_command(doc! { "dropIndexes": "people", "index": "age_1" })
        .await
        .unwrap();
    db.run_command(doc! { "collMod": "people", "validator": { "age": { "$type": "long" } } })
        .await
        .unwrap();
    db.collection::<Document>("grown_ups").drop().await.unwrap();
    db.run_command(doc! { "createIndexes": "people", "indexes": [{ "key": { "age": 1 }, "name": "age_1", "sparse": true }] })
        .await
        .unwrap();

    let (code, report) = tokio::task::block_in_place(|| verify(&pair, &[]));
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["equal"], false);
    let people = namespace(&report, "v.people");
    assert_eq!(mismatches(people), (Some(1), Some(1), Some(2)), "{people}");
    let example = |id: i64| {
        people["examples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("_id {id} is not among the examples: {people}"))
            .clone()
    };
    assert_eq!(example(12_345)["kind"], "missing");
    assert_eq!(example(99_999)["kind"], "extra");
    assert_eq!(example(17)["diff"][0], "age: source 17, destination 99");
    assert!(
        example(20_000)["diff"][0]
            .as_str()
            .unwrap()
            .starts_with("field order differs"),
        "{people}"
    );
    let metadata = people["metadata"].to_string();
    assert!(metadata.contains("option validator differs"), "{metadata}");
    assert!(metadata.contains("index age_1 differs"), "{metadata}");
    let view = namespace(&report, "v.grown_ups");
    assert!(
        view["metadata"][0]
            .as_str()
            .unwrap()
            .contains("view is missing on the destination"),
        "{view}"
    );

    // Field order is ignored on request; the rest still differs.
    let (_, loose) = tokio::task::block_in_place(|| verify(&pair, &["--ignore-field-order"]));
    assert_eq!(namespace(&loose, "v.people")["different"], 1, "{loose}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_index_is_named() {
    let pair = Pair::start().await;
    build(&pair.src, 10).await;
    build(&pair.dst, 10).await;
    pair.dst
        .database("v")
        .run_command(doc! { "dropIndexes": "people", "index": "email_1" })
        .await
        .unwrap();
    let (code, report) = tokio::task::block_in_place(|| verify(&pair, &[]));
    assert_eq!(code, 1);
    let metadata = namespace(&report, "v.people")["metadata"].to_string();
    assert!(
        metadata.contains("index email_1 is missing on the destination"),
        "{metadata}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_with_the_collection_and_a_killed_verification_resumes() {
    let pair = Pair::start().await;
    build(&pair.src, 300_000).await;
    build(&pair.dst, 300_000).await;
    let (code, large) = tokio::task::block_in_place(|| verify(&pair, &[]));
    assert_eq!(code, 0, "{large}");
    assert_eq!(large["documentsChecked"], 300_002);

    let small_pair = Pair::start().await;
    build(&small_pair.src, 30_000).await;
    build(&small_pair.dst, 30_000).await;
    let (_, small) = tokio::task::block_in_place(|| verify(&small_pair, &[]));
    let (small_peak, large_peak) = (
        small["peakMemoryBytes"].as_u64().unwrap(),
        large["peakMemoryBytes"].as_u64().unwrap(),
    );
    eprintln!("peak memory: {small_peak} bytes for 30,000 documents, {large_peak} for 300,000");
    assert!(
        large_peak < small_peak + small_peak / 4,
        "memory grew with the data: {small_peak} → {large_peak}"
    );

    // Kill a verification halfway, then run it again: it continues after its last partition.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "verify",
            "--source",
            &pair.source.uri(),
            "--destination",
            &pair.destination.uri(),
        ])
        .env("FERRY_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let place = pair
        .dst
        .database("__ferry")
        .collection::<Document>("verification");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(stored) = place.find_one(doc! {}).await.unwrap() {
            if stored.get_i64("checked").unwrap_or(0) >= 100_000 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the verification never got halfway"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let output = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "verify",
                "--source",
                &pair.source.uri(),
                "--destination",
                &pair.destination.uri(),
            ])
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("resuming the verification"), "{text}");
    assert!(
        text.contains("EQUAL: 2 namespaces, 300002 documents checked"),
        "{text}"
    );
}

#[test]
fn a_verification_that_cannot_run_exits_3_with_one_line() {
    let closed = testkit::server::free_port().unwrap();
    let source = format!("mongodb://127.0.0.1:{closed}/?serverSelectionTimeoutMS=1000");
    let (code, output) =
        crate::harness::run_ferry(&["verify", "--source", &source, "--destination", &source]);
    assert_eq!(code, 3, "{output}");
    assert_eq!(
        output.trim(),
        format!("error: listing the source's databases: cannot reach 127.0.0.1:{closed}: connection refused")
    );
}

/// `_id`s whose client-side order differs from the server's: compound `_id`s (compared field by
/// field, not by their bytes, which begin with their length), 64-bit integers beyond a double's
/// precision, and NaN. With two documents missing on the destination, exactly those two are
/// reported: a merge in the wrong order reports present documents as missing or extra.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compound_and_wide_ids_are_merged_in_the_servers_order() {
    use mongodb::bson::Bson;
    let pair = Pair::start().await;
    let ids: Vec<Bson> = vec![
        Bson::Double(f64::NAN),
        Bson::Int64(-5),
        Bson::Double(9_007_199_254_740_992.0),
        Bson::Int64(9_007_199_254_740_993),
        Bson::Document(doc! { "a": 1 }),
        Bson::Document(doc! { "a": 1, "b": 2 }),
        Bson::Document(doc! { "a": 1.5, "b": 0 }),
        Bson::Document(doc! { "a": 2 }),
        Bson::Document(doc! { "b": 0 }),
        Bson::Document(doc! { "a": "x" }),
        Bson::Document(doc! { "a": [1] }),
    ];
    let documents = |ids: &[Bson]| -> Vec<Document> {
        ids.iter()
            .map(|id| doc! { "_id": id.clone(), "v": 1 })
            .collect()
    };
    let dropped = [2, 6];
    let kept: Vec<Bson> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains(i))
        .map(|(_, id)| id.clone())
        .collect();
    for (client, ids) in [(&pair.src, &ids), (&pair.dst, &kept)] {
        client
            .database("v")
            .collection::<Document>("keys")
            .insert_many(documents(ids))
            .await
            .unwrap();
    }
    let (code, report) = tokio::task::block_in_place(|| verify(&pair, &[]));
    assert_eq!(code, 1, "{report}");
    let keys = namespace(&report, "v.keys");
    assert_eq!(mismatches(keys), (Some(2), Some(0), Some(0)), "{keys}");
}

/// A NaN `_id` sorts before every number, but `$lte: 5` does not match it: a collection cut
/// into number ranges must still copy it (the first range takes it by equality), and a
/// verification whose first partition ends at a number must still see it missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_id_is_copied_and_verified_in_a_collection_cut_into_ranges() {
    let pair = Pair::start().await;
    crate::harness::fill(&pair.src, "n", "items", 40_000).await;
    let items = |client: &Client| client.database("n").collection::<Document>("items");
    items(&pair.src)
        .insert_one(doc! { "_id": f64::NAN, "pad": "nan" })
        .await
        .unwrap();
    let mut ferry = pair.migrate(&[]);
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    assert!(
        crate::harness::recorded_ranges(&pair, "n.items").await >= 2,
        "the collection must be cut into ranges"
    );
    pair.assert_equal("a NaN _id beside number ranges").await;

    items(&pair.dst)
        .delete_one(doc! { "_id": f64::NAN })
        .await
        .unwrap();
    let (code, report) = tokio::task::block_in_place(|| verify(&pair, &[]));
    assert_eq!(code, 1, "{report}");
    let found = namespace(&report, "n.items");
    assert_eq!(mismatches(found), (Some(1), Some(0), Some(0)), "{found}");
}
