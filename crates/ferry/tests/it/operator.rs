//! The operator's surface: a mongosync runbook run unchanged against `ferry serve`, pause and
//! resume, the cutover window, the API token, Prometheus metrics that agree with the progress
//! reply, and the dashboard driven in real headless Chromium.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use serde_json::Value;

use testkit::compare::Scope;

use crate::harness::{call_api, http, Ferry, Pair};

/// `ferry serve` as a process, killed on drop.
struct Served {
    child: Child,
    api: String,
}

impl Served {
    fn start(pair: &Pair, extra: &[&str]) -> Served {
        let port = testkit::server::free_port().unwrap().to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "serve",
                "--cluster0",
                &pair.source.uri(),
                "--cluster1",
                &pair.destination.uri(),
                "--port",
                &port,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Served {
            child,
            api: format!("127.0.0.1:{port}"),
        }
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, text) = http(&self.api, "POST", path, body, None).expect("the API answers");
        (status, serde_json::from_str(&text).unwrap())
    }

    /// Polls the progress reply until `condition` holds.
    fn wait_for(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some((_, reply)) = call_api(&self.api, "GET", "/api/v1/progress", None) {
                let progress = reply["progress"].clone();
                if condition(&progress) {
                    return progress;
                }
                assert_ne!(progress["state"], "FAILED", "{progress}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongosync_runbook_runs_unchanged_with_pause_and_resume() {
    let pair = Pair::start().await;
    let orders = pair.src.database("shop").collection::<Document>("orders");
    orders
        .insert_many((0..2000).map(|i| doc! { "_id": i, "n": i }))
        .await
        .unwrap();
    pair.src
        .database("other")
        .collection::<Document>("x")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    let served = tokio::task::block_in_place(|| Served::start(&pair, &[]));
    let idle = tokio::task::block_in_place(|| served.wait_for("IDLE", |p| p["state"] == "IDLE"));
    assert_eq!(idle["canCommit"], false);

    // The runbook, as written for mongosync.
    let (status, reply) = served.post(
        "/api/v1/start",
        r#"{"source": "cluster0", "destination": "cluster1", "includeNamespaces": [{"database": "shop"}], "buildIndexes": "afterDataCopy"}"#,
    );
    assert_eq!(
        (status, &reply),
        (200, &serde_json::json!({ "success": true }))
    );
    let (status, again) = served.post(
        "/api/v1/start",
        r#"{"source": "cluster0", "destination": "cluster1"}"#,
    );
    assert_eq!(status, 400, "{again}");
    assert_eq!(again["success"], false);
    assert!(
        again["errorDescription"]
            .as_str()
            .unwrap()
            .contains("started already"),
        "{again}"
    );
    tokio::task::block_in_place(|| served.wait_for("canCommit", |p| p["canCommit"] == true));

    let (status, reply) = served.post("/api/v1/pause", "{}");
    assert_eq!(
        (status, reply["success"].clone()),
        (200, Value::Bool(true)),
        "{reply}"
    );
    let paused =
        tokio::task::block_in_place(|| served.wait_for("PAUSED", |p| p["state"] == "PAUSED"));
    assert_eq!(paused["canCommit"], false);
    orders
        .insert_one(doc! { "_id": "written while paused" })
        .await
        .unwrap();
    let (status, refused) = served.post("/api/v1/commit", "{}");
    assert_eq!(status, 400, "{refused}");
    let (status, reply) = served.post("/api/v1/resume", "{}");
    assert_eq!(
        (status, reply["success"].clone()),
        (200, Value::Bool(true)),
        "{reply}"
    );

    tokio::task::block_in_place(|| served.wait_for("canCommit again", |p| p["canCommit"] == true));
    let (status, reply) = served.post("/api/v1/commit", "{}");
    assert_eq!(
        (status, reply["success"].clone()),
        (200, Value::Bool(true)),
        "{reply}"
    );
    let committed =
        tokio::task::block_in_place(|| served.wait_for("COMMITTED", |p| p["state"] == "COMMITTED"));
    assert_eq!(committed["canWrite"], true);
    // includeNamespaces is honoured: shop equal (with what was written while paused), other
    // not copied.
    let scope = Scope {
        include: vec!["shop".into()],
        ..Default::default()
    };
    pair.assert_equal_in(&scope, "the runbook's migration")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cutover_window_stops_syncing_and_extend_adds_a_day() {
    let pair = Pair::start().await;
    pair.src
        .database("a")
        .collection::<Document>("b")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    let mut ferry = pair.migrate(&["--cutover-window", "3s"]);
    let open = tokio::task::block_in_place(|| ferry.wait_can_commit());
    assert!(
        open["cutoverWindowSecondsLeft"].as_u64().unwrap() <= 3,
        "{open}"
    );
    let paused = tokio::task::block_in_place(|| {
        ferry.wait_for("the window to close", Duration::from_secs(30), |p| {
            p["state"] == "PAUSED"
        })
    });
    assert!(
        paused["pausedReason"]
            .as_str()
            .unwrap()
            .contains("cutover window ran out"),
        "{paused}"
    );
    let (status, _) = call_api(&ferry.api, "POST", "/api/v1/resume", None).unwrap();
    assert_eq!(status, 200);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    let (status, reply) = call_api(&ferry.api, "POST", "/api/v1/extend", None).unwrap();
    assert_eq!(
        (status, reply["success"].clone()),
        (200, Value::Bool(true)),
        "{reply}"
    );
    let extended = ferry.progress().unwrap();
    assert!(
        extended["cutoverWindowSecondsLeft"].as_u64().unwrap() > 86_000,
        "{extended}"
    );
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("after a paused cutover window").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_api_needs_a_token_and_never_logs_it() {
    let pair = Pair::start().await;
    pair.src
        .database("a")
        .collection::<Document>("b")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    let port = testkit::server::free_port().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "migrate",
            "--source",
            &pair.source.uri(),
            "--destination",
            &pair.destination.uri(),
        ])
        .args(["--api-addr", &format!("0.0.0.0:{port}")])
        .env_remove("FERRY_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--api-token"),
        "{output:?}"
    );

    let token = "s3cret-t0ken-value";
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "migrate",
            "--source",
            &pair.source.uri(),
            "--destination",
            &pair.destination.uri(),
        ])
        .args(["--api-addr", &format!("0.0.0.0:{port}")])
        .env("FERRY_API_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let api = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let authorized = loop {
        if let Some((200, reply)) = call_api(&api, "GET", "/api/v1/progress", Some(token)) {
            if reply["progress"]["canCommit"] == true {
                break reply;
            }
        }
        assert!(Instant::now() < deadline, "no canCommit through the token");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(authorized["progress"]["state"], "RUNNING");
    for (path, method) in [
        ("/api/v1/progress", "GET"),
        ("/api/v1/commit", "POST"),
        ("/metrics", "GET"),
        ("/", "GET"),
    ] {
        let (status, _) = http(&api, method, path, "{}", None).unwrap();
        assert_eq!(status, 401, "{method} {path} without the token");
        let (status, _) = http(&api, method, path, "{}", Some("wrong")).unwrap();
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    let status = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["status", "--api-addr", &api, "--api-token", token])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("RUNNING"),
        "{status:?}"
    );
    let commit = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["commit", "--api-addr", &api])
        .env("FERRY_API_TOKEN", token)
        .output()
        .unwrap();
    assert_eq!(commit.status.code(), Some(0), "{commit:?}");
    let finished = child.wait_with_output().unwrap();
    assert_eq!(finished.status.code(), Some(0));
    let logs = String::from_utf8_lossy(&finished.stderr);
    assert!(
        logs.contains("COMMITTED") && !logs.contains(token),
        "{logs}"
    );
    pair.assert_equal("after a commit through the token").await;
}

/// Bytes as the dashboard shows them (one decimal from KB on).
fn fmt_bytes(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let (mut value, mut unit) = (bytes as f64, 0);
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// `name{labels} value` lines of a Prometheus text reply.
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{name_and_labels} is not in the metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_migration_and_match_the_progress_reply() {
    let pair = Pair::start().await;
    let coll = pair.src.database("m").collection::<Document>("c");
    coll.insert_many((0..3000).map(|i| doc! { "_id": i }))
        .await
        .unwrap();
    let mut ferry = pair.migrate(&[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    for i in 0..50 {
        coll.update_one(doc! { "_id": i }, doc! { "$set": { "touched": true } })
            .await
            .unwrap();
    }
    let progress = tokio::task::block_in_place(|| {
        ferry.wait_for("50 updates applied", Duration::from_secs(60), |p| {
            p["eventsApplied"]["update"] == 50
        })
    });
    let (status, text) = http(&ferry.api, "GET", "/metrics", "", None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "ferry_documents_copied_total{namespace=\"m.c\"}"),
        3000.0
    );
    assert_eq!(
        metric(&text, "ferry_change_events_applied_total{type=\"update\"}"),
        50.0
    );
    // The copy carried the 3,000 documents as they were inserted, byte for byte.
    let inserted_bytes: usize = (0..3000)
        .map(|i| mongodb::bson::to_vec(&doc! { "_id": i }).unwrap().len())
        .sum();
    assert_eq!(
        metric(&text, "ferry_bytes_copied_total{namespace=\"m.c\"}"),
        inserted_bytes as f64,
        "{progress}"
    );
    assert_eq!(
        metric(&text, "ferry_phase{phase=\"change event application\"}"),
        1.0
    );
    assert_eq!(metric(&text, "ferry_state{state=\"RUNNING\"}"), 1.0);
    assert_eq!(metric(&text, "ferry_can_commit"), 1.0);
    let (_, collections) = call_api(&ferry.api, "GET", "/api/v1/collections", None).unwrap();
    let c = &collections["collections"][0];
    assert_eq!(
        (
            c["namespace"].as_str(),
            c["phase"].as_str(),
            c["copiedDocuments"].as_u64()
        ),
        (Some("m.c"), Some("indexed"), Some(3000)),
        "{collections}"
    );
    // --log-format json: every log line is one JSON object.
    let output = ferry.output();
    let log_lines: Vec<&str> = output.lines().filter(|l| l.starts_with('{')).collect();
    assert!(log_lines.len() >= 3, "{output}");
    for line in log_lines {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            parsed["level"].is_string() && parsed["fields"].is_object(),
            "{line}"
        );
    }
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    pair.assert_equal("after the metrics' migration").await;
}

/// chromedriver on a free port, killed on drop.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Driver {
    let port = testkit::server::free_port().unwrap();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed by `cargo xtask test` (Debian packages chromium and chromium-driver)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver(child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_progress_and_commits_in_headless_chromium() {
    use fantoccini::{ClientBuilder, Locator};

    let pair = Pair::start().await;
    let coll = pair.src.database("dash").collection::<Document>("items");
    for chunk in 0..10 {
        coll.insert_many(
            (0..2000).map(|i| doc! { "_id": chunk * 2000 + i, "pad": "x".repeat(500) }),
        )
        .await
        .unwrap();
    }
    // More collections than the table's page holds: the page shows them 100 at a time.
    for t in 0..150 {
        pair.src
            .database("dash")
            .collection::<Document>(&format!("t{t:03}"))
            .insert_one(doc! { "_id": t })
            .await
            .unwrap();
    }
    // With a token, the page takes it from its address (`/?token=`), as the README says.
    const TOKEN: &str = "dash-T0ken";
    let mut ferry: Ferry = pair.migrate(&["--verify", "--api-token", TOKEN]);
    let driver = chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": "/usr/bin/chromium", "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1400,900", format!("--user-data-dir={}", profile.path().display()),
        ] }),
    );
    // Two TLS back ends are linked in; the WebDriver client needs one chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let browser = ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("connecting to chromedriver");
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&artifacts).unwrap();
    let text_of = |id: &'static str| {
        let browser = browser.clone();
        async move {
            browser
                .find(Locator::Id(id))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let wait_text = |id: &'static str, want: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = text_of(id).await;
            if text.contains(want) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "#{id} never showed {want:?} (last: {text:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The table's rows, read in one script: the page redraws the table every second, which
    // leaves rows found before a redraw stale for a read one by one.
    let row_texts = || {
        let browser = browser.clone();
        async move {
            let script = "return Array.from(document.querySelectorAll('#collections tr')).map(r => r.innerText)";
            let rows = browser.execute(script, Vec::new()).await.unwrap();
            serde_json::from_value::<Vec<String>>(rows).unwrap()
        }
    };

    browser
        .goto(&format!("http://{}/?token={TOKEN}", ferry.api))
        .await
        .unwrap();
    wait_text("state", "RUNNING").await;
    let first_copied = text_of("copied").await;
    std::fs::write(
        artifacts.join("1-running.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    // The progress moves: the copy completes and the page says so, then commit becomes possible.
    let deadline = Instant::now() + Duration::from_secs(120);
    while browser
        .find(Locator::Id("commit"))
        .await
        .unwrap()
        .attr("disabled")
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "the Commit button never enabled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The page shows what the source holds, counted here, not another rendering of its own.
    let copied = text_of("copied").await;
    let source_bytes: u64 = coll
        .clone_with_type::<mongodb::bson::RawDocumentBuf>()
        .find(doc! {})
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|d| d.as_bytes().len() as u64)
        .sum();
    assert_eq!(
        copied.split(" / ").next(),
        Some(fmt_bytes(source_bytes).as_str()),
        "the copy is complete: {copied}"
    );
    assert_ne!(first_copied, "–", "the page showed progress from the start");
    let rows = row_texts().await;
    assert_eq!(rows.len(), 100);
    assert!(rows[0].contains("dash.items"));
    assert_eq!(text_of("rows").await, "collections 1–100 of 151");
    browser
        .find(Locator::Id("next"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text("rows", "collections 101–151 of 151").await;
    let rows = row_texts().await;
    assert_eq!(rows.len(), 51);
    assert!(rows[50].contains("dash.t149"));
    // The verification's first pass runs during change application and the page follows it.
    wait_text("details", "re-checking (").await;
    // Extend 24 h adds a day to the cutover window, as the API then reports it.
    let left = || {
        call_api(&ferry.api, "GET", "/api/v1/progress", Some(TOKEN))
            .expect("the API answers")
            .1["progress"]["cutoverWindowSecondsLeft"]
            .as_u64()
            .expect("the window is open once canCommit")
    };
    let before = tokio::task::block_in_place(left);
    browser
        .find(Locator::Id("extend"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::task::block_in_place(left) < before + 23 * 3600 {
        assert!(
            Instant::now() < deadline,
            "Extend 24 h did not extend the window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(
        artifacts.join("2-ready-to-commit.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();

    browser
        .find(Locator::Id("commit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    std::fs::write(
        artifacts.join("3-confirm.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    browser
        .find(Locator::Id("confirm-commit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text("state", "COMMITTED").await;
    let verified = wait_text("details", "equal (").await;
    assert!(verified.contains("0 mismatches"), "{verified}");
    std::fs::write(
        artifacts.join("4-committed.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();
    eprintln!("dashboard screenshots in {}", artifacts.display());
    browser.close().await.unwrap();
    assert_eq!(
        tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(60))),
        0,
        "{}",
        ferry.output()
    );
    pair.assert_equal("after committing from the dashboard")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_migration_is_reversed_through_the_api() {
    let pair = Pair::start().await;
    let orders =
        |client: &mongodb::Client| client.database("shop").collection::<Document>("orders");
    orders(&pair.src)
        .insert_many((0..500).map(|i| doc! { "_id": i, "n": i }))
        .await
        .unwrap();
    let served = tokio::task::block_in_place(|| Served::start(&pair, &[]));
    tokio::task::block_in_place(|| {
        served.wait_for("the API", |p| p["state"] == "IDLE");
        let (status, reply) = served.post(
            "/api/v1/start",
            r#"{"source": "cluster0", "destination": "cluster1", "reversible": true}"#,
        );
        assert_eq!(status, 200, "{reply}");
        served.wait_for("canCommit", |p| p["canCommit"] == true);
        // Not before COMMITTED.
        let (status, reply) = served.post("/api/v1/reverse", "{}");
        assert_eq!(
            (status, reply["error"].as_str()),
            (400, Some("InvalidStateError")),
            "{reply}"
        );
        assert_eq!(served.post("/api/v1/commit", "{}").0, 200);
        served.wait_for("COMMITTED", |p| p["state"] == "COMMITTED");
    });
    // The application moves to cluster1 and writes there.
    orders(&pair.dst)
        .update_many(
            doc! { "n": { "$lt": 100 } },
            doc! { "$set": { "after": "cutover" } },
        )
        .await
        .unwrap();
    orders(&pair.dst)
        .delete_many(doc! { "n": { "$gte": 400 } })
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        let (status, reply) = served.post("/api/v1/reverse", "{}");
        assert_eq!(status, 200, "{reply}");
        let reversing = served.wait_for("the reverse's canCommit", |p| {
            p["direction"] == "reverse" && p["canCommit"] == true
        });
        assert_eq!(
            reversing["directionMapping"]["Source"],
            "cluster1: destination"
        );
        assert_eq!(served.post("/api/v1/commit", "{}").0, 200);
        served.wait_for("the reverse COMMITTED", |p| p["state"] == "COMMITTED");
    });
    assert_eq!(
        orders(&pair.src)
            .count_documents(doc! { "after": "cutover" })
            .await
            .unwrap(),
        100
    );
    pair.assert_equal("after the reverse").await;
}
