//! Pre-flight checks against real servers (authentication, TLS, a standalone source, an occupied
//! destination, the same server twice, an unreachable port), bad input refused with exit code 2
//! and nothing written, and secrets that never appear in any output.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use serde_json::Value;
use testkit::{Server, ServerOptions};

use crate::harness::{check_named, check_with, run_ferry, Ferry, Pair};

/// Asserts that check `id` failed, and found what `found` says.
fn assert_failed(report: &Value, id: &str, found: &str) {
    let check = check_named(report, id);
    assert_eq!(check["status"], "fail", "{report}");
    assert!(check["found"].as_str().unwrap().contains(found), "{check}");
}

/// `ferry check --json` between two URIs: (exit code, report).
fn check(source: &str, destination: &str, extra: &[&str]) -> (i32, Value) {
    check_with(source, destination, extra, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_pair_passes_every_check() {
    let pair = Pair::with_one_order().await;
    let (code, report) =
        tokio::task::block_in_place(|| check(&pair.source.uri(), &pair.destination.uri(), &[]));
    assert_eq!(code, 0, "{report}");
    // Each check's exact outcome: a warning passes only where this pair warrants one.
    let on_mongod = std::env::var_os("FERRY_TEST_MONGOD").is_some();
    for (id, status) in [
        ("source.reachable", "pass"),
        ("destination.reachable", "pass"),
        ("source.replica-set", "pass"),
        ("destination.primary", "pass"),
        ("clusters.distinct", "pass"),
        ("versions", "pass"),
        ("source.privileges", "pass"),
        ("destination.privileges", "pass"),
        ("filters.match", "pass"),
        ("destination.empty", "pass"),
        // The test server does not report its oplog's size, so no window can be forecast.
        ("source.oplog-window", "warn"),
        ("destination.disk", "pass"),
        // The test server has no setUserWriteBlockMode.
        (
            "source.write-blocking",
            if on_mongod { "pass" } else { "warn" },
        ),
        ("source.not-migrated", "pass"),
    ] {
        let found = &check_named(&report, id)["status"];
        // A real mongod reports its oplog's size; whether its window then passes depends on
        // the machine (not verified here).
        if on_mongod && id == "source.oplog-window" {
            assert_ne!(found, "fail", "{id}: {report}");
        } else {
            assert_eq!(found, status, "{id}: {report}");
        }
    }
    // Whether the source's writes can be blocked at commit is said before the migration starts:
    // the test server has no setUserWriteBlockMode, a real one does.
    let blocking = check_named(&report, "source.write-blocking");
    if std::env::var_os("FERRY_TEST_MONGOD").is_some() {
        assert_eq!(blocking["status"], "pass", "{blocking}");
    } else {
        assert_eq!(blocking["status"], "warn", "{blocking}");
        assert!(
            blocking["found"]
                .as_str()
                .unwrap()
                .contains("does not support setUserWriteBlockMode"),
            "{blocking}"
        );
    }
    let (_, open) = tokio::task::block_in_place(|| {
        check(
            &pair.source.uri(),
            &pair.destination.uri(),
            &["--no-block-writes"],
        )
    });
    let blocking = check_named(&open, "source.write-blocking");
    assert_eq!(blocking["status"], "warn", "{blocking}");
    assert!(
        blocking["found"]
            .as_str()
            .unwrap()
            .contains("--no-block-writes"),
        "{blocking}"
    );
    let (text_code, text) = tokio::task::block_in_place(|| {
        run_ferry(&[
            "check",
            "--source",
            &pair.source.uri(),
            "--destination",
            &pair.destination.uri(),
        ])
    });
    assert_eq!(text_code, 0, "{text}");
    assert!(text.contains("nothing blocks the migration"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_source_the_same_server_twice_and_an_unreachable_port_are_refused() {
    let options = ServerOptions {
        standalone: true,
        ..Default::default()
    };
    if crate::harness::skipped(&options) {
        return;
    }
    let standalone = Server::start_with(&options).unwrap();
    let destination = Server::start().unwrap();
    let (code, report) =
        tokio::task::block_in_place(|| check(&standalone.uri(), &destination.uri(), &[]));
    assert_eq!(code, 2, "{report}");
    let rs = check_named(&report, "source.replica-set");
    assert_eq!(rs["status"], "fail");
    assert!(rs["found"].as_str().unwrap().contains("standalone"), "{rs}");
    assert!(rs["fix"].as_str().unwrap().contains("--replSet"), "{rs}");

    let same = format!(
        "mongodb://localhost:{}/?directConnection=true",
        destination.port
    );
    let (code, report) = tokio::task::block_in_place(|| check(&destination.uri(), &same, &[]));
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        check_named(&report, "clusters.distinct")["status"],
        "fail",
        "{report}"
    );

    let nowhere = format!(
        "mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=2000",
        testkit::server::free_port().unwrap()
    );
    let started = Instant::now();
    let (code, report) = tokio::task::block_in_place(|| check(&nowhere, &destination.uri(), &[]));
    assert_eq!(code, 2, "{report}");
    let reachable = check_named(&report, "source.reachable");
    assert!(
        reachable["found"]
            .as_str()
            .unwrap()
            .contains("cannot reach 127.0.0.1:"),
        "{reachable}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the check hung"
    );

    // `ferry migrate` refuses with the same message, exit 2.
    let mut refused = Ferry::start(&standalone.uri(), &destination.uri(), &[]);
    let code = tokio::task::block_in_place(|| refused.wait_exit(Duration::from_secs(60)));
    assert_eq!(code, 2, "{}", refused.output());
    assert!(
        refused.output().contains("[source.replica-set]"),
        "{}",
        refused.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_occupied_destination_blocks_and_drop_says_what_it_will_drop() {
    let pair = Pair::with_one_order().await;
    pair.dst
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": 2 })
        .await
        .unwrap();
    let (code, report) =
        tokio::task::block_in_place(|| check(&pair.source.uri(), &pair.destination.uri(), &[]));
    assert_eq!(code, 2);
    assert!(
        check_named(&report, "destination.empty")["found"]
            .as_str()
            .unwrap()
            .contains("shop.orders"),
        "{report}"
    );
    let (code, report) = tokio::task::block_in_place(|| {
        check(&pair.source.uri(), &pair.destination.uri(), &["--drop"])
    });
    assert_eq!(code, 0, "{report}");
    let empty = check_named(&report, "destination.empty");
    assert_eq!(empty["status"], "warn");
    assert!(
        empty["found"]
            .as_str()
            .unwrap()
            .contains("--drop will drop 1 namespace(s) on the destination: shop.orders"),
        "{empty}"
    );
    assert_eq!(
        pair.dst
            .database("shop")
            .collection::<Document>("orders")
            .count_documents(doc! {})
            .await
            .unwrap(),
        1,
        "check drops nothing"
    );
}

/// Users on an `--auth` server: an administrator, and the given others.
async fn with_users(server: &Server, users: &[(&str, &[(&str, &str)])]) {
    let anonymous = Client::with_uri_str(server.uri()).await.unwrap();
    testkit::server::create_user(&anonymous, "admin", "admin-pw", &[("root", "admin")])
        .await
        .unwrap();
    let admin = Client::with_uri_str(auth_uri(server, "admin", "admin-pw"))
        .await
        .unwrap();
    for (user, roles) in users {
        testkit::server::create_user(&admin, user, &format!("{user}-Pa55word!"), roles)
            .await
            .unwrap();
    }
}

fn auth_uri(server: &Server, user: &str, password: &str) -> String {
    format!(
        "mongodb://{user}:{password}@127.0.0.1:{}/?directConnection=true&authSource=admin",
        server.port
    )
}

fn user_uri(server: &Server, user: &str) -> String {
    auth_uri(server, user, &format!("{user}-Pa55word!"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_privileges_are_proven_and_secrets_never_print() {
    let auth = ServerOptions {
        auth: true,
        ..Default::default()
    };
    if crate::harness::skipped(&auth) {
        return;
    }
    let source = Server::start_with(&auth).unwrap();
    let destination = Server::start_with(&auth).unwrap();
    with_users(
        &source,
        &[
            (
                "reader",
                &[("readAnyDatabase", "admin"), ("clusterMonitor", "admin")],
            ),
            ("narrow", &[("read", "shop")]),
        ],
    )
    .await;
    with_users(
        &destination,
        &[
            (
                "writer",
                &[
                    ("readWriteAnyDatabase", "admin"),
                    ("dbAdminAnyDatabase", "admin"),
                ],
            ),
            ("viewer", &[("readAnyDatabase", "admin")]),
            ("loader", &[("readWriteAnyDatabase", "admin")]),
        ],
    )
    .await;
    let admin = Client::with_uri_str(auth_uri(&source, "admin", "admin-pw"))
        .await
        .unwrap();
    admin
        .database("shop")
        .collection::<Document>("orders")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    admin
        .database("crm")
        .collection::<Document>("people")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();

    let wrong = auth_uri(&source, "reader", "not-the-Pa55word");
    let (code, report) =
        tokio::task::block_in_place(|| check(&wrong, &user_uri(&destination, "writer"), &[]));
    assert_eq!(code, 2, "{report}");
    let reachable = check_named(&report, "source.reachable");
    assert!(
        reachable["found"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{reachable}"
    );
    assert!(!report.to_string().contains("not-the-Pa55word"), "{report}");

    let (code, report) = tokio::task::block_in_place(|| {
        check(
            &user_uri(&source, "narrow"),
            &user_uri(&destination, "viewer"),
            &[],
        )
    });
    assert_eq!(code, 2, "{report}");
    let source_privileges = check_named(&report, "source.privileges");
    assert_eq!(source_privileges["status"], "fail", "{report}");
    assert!(
        source_privileges["found"]
            .as_str()
            .unwrap()
            .contains("missing action"),
        "{source_privileges}"
    );
    assert!(
        source_privileges["fix"]
            .as_str()
            .unwrap()
            .contains("readAnyDatabase and clusterMonitor"),
        "{source_privileges}"
    );
    assert_failed(
        &report,
        "destination.privileges",
        "missing action createCollection",
    );

    // Every write bypasses validation, which readWrite alone does not allow: the pre-flight
    // says so, rather than the copy failing on its first batch.
    let (code, report) = tokio::task::block_in_place(|| {
        check(
            &user_uri(&source, "reader"),
            &user_uri(&destination, "loader"),
            &[],
        )
    });
    assert_eq!(code, 2, "{report}");
    assert_failed(
        &report,
        "destination.privileges",
        "missing action bypassDocumentValidation",
    );

    // With the right users, the whole migration runs; no output ever shows a password.
    let (source_uri, destination_uri) = (
        user_uri(&source, "reader"),
        user_uri(&destination, "writer"),
    );
    let (code, report) = tokio::task::block_in_place(|| check(&source_uri, &destination_uri, &[]));
    assert_eq!(code, 0, "{report}");
    let mut ferry = Ferry::start(&source_uri, &destination_uri, &["--verify"]);
    let progress = tokio::task::block_in_place(|| ferry.wait_can_commit());
    let metrics = crate::harness::http(&ferry.api, "GET", "/metrics", "", None)
        .unwrap()
        .1;
    tokio::task::block_in_place(|| ferry.commit_and_finish());
    // Judged independently of Ferry, as the administrator sees both clusters.
    let destination_admin = Client::with_uri_str(auth_uri(&destination, "admin", "admin-pw"))
        .await
        .unwrap();
    let differences = testkit::compare::differences(&admin, &destination_admin)
        .await
        .unwrap();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    let (verify_code, verify_text) = tokio::task::block_in_place(|| {
        run_ferry(&[
            "verify",
            "--source",
            &source_uri,
            "--destination",
            &destination_uri,
            "--json",
        ])
    });
    assert_eq!(verify_code, 0, "{verify_text}");
    let (_, failing) = tokio::task::block_in_place(|| {
        run_ferry(&[
            "migrate",
            "--source",
            &source_uri,
            "--destination",
            &auth_uri(&destination, "writer", "wrong-Pa55word!"),
        ])
    });
    for (what, output) in [
        ("the migration's log", ferry.output()),
        ("the progress reply", progress.to_string()),
        ("the metrics", metrics),
        ("the check report", report.to_string()),
        ("the verify report", verify_text),
        ("a failed start", failing),
    ] {
        for secret in ["reader-Pa55word!", "writer-Pa55word!", "wrong-Pa55word!"] {
            assert!(
                !output.contains(secret),
                "{what} shows a password:\n{output}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_checked_with_the_ca_given() {
    let files = testkit::tls::TlsFiles::generate().unwrap();
    let tls = ServerOptions {
        tls: Some((files.server_cert.clone(), files.server_key.clone())),
        ..Default::default()
    };
    if crate::harness::skipped(&tls) {
        return;
    }
    let source = Server::start_with(&tls).unwrap();
    let destination = Server::start().unwrap();
    let with_ca = |ca: &std::path::Path| {
        format!("mongodb://127.0.0.1:{}/?directConnection=true&tls=true&tlsCAFile={}&serverSelectionTimeoutMS=3000", source.port, ca.display())
    };
    let (code, report) =
        tokio::task::block_in_place(|| check(&with_ca(&files.ca), &destination.uri(), &[]));
    assert_eq!(code, 0, "{report}");

    let (code, report) =
        tokio::task::block_in_place(|| check(&with_ca(&files.other_ca), &destination.uri(), &[]));
    assert_eq!(code, 2, "{report}");
    let reachable = check_named(&report, "source.reachable");
    assert!(
        reachable["found"]
            .as_str()
            .unwrap()
            .contains("TLS handshake"),
        "{reachable}"
    );
    assert!(
        reachable["fix"].as_str().unwrap().contains("tlsCAFile"),
        "{reachable}"
    );

    let missing = std::path::Path::new("/nonexistent/ca.pem");
    let (code, text) = tokio::task::block_in_place(|| {
        run_ferry(&[
            "check",
            "--source",
            &with_ca(missing),
            "--destination",
            &destination.uri(),
        ])
    });
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("cannot read tlsCAFile /nonexistent/ca.pem"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_exit_2_and_nothing_written() {
    let pair = Pair::with_one_order().await;
    let (src, dst) = (pair.source.uri(), pair.destination.uri());
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["migrate", "--source", "mongodb://", "--destination", &dst],
            "not a valid MongoDB connection string",
        ),
        (
            vec![
                "migrate",
                "--source",
                &src,
                "--destination",
                &dst,
                "--bogus",
            ],
            "unexpected argument '--bogus'",
        ),
        (
            vec![
                "migrate",
                "--source",
                &src,
                "--destination",
                &dst,
                "--include",
                "shop",
                "--exclude",
                "shop",
            ],
            "contradict each other",
        ),
        (
            vec![
                "migrate",
                "--source",
                &src,
                "--destination",
                &dst,
                "--include",
                "nosuchdb",
            ],
            "--include nosuchdb matches nothing on the source",
        ),
        (
            vec![
                "migrate",
                "--source",
                &src,
                "--destination",
                &dst,
                "--api-addr",
                &busy_addr,
            ],
            "cannot serve the API on",
        ),
        (
            vec![
                "migrate",
                "--source",
                &src,
                "--destination",
                &dst,
                "--retry-window",
                "forever",
            ],
            "--retry-window",
        ),
    ];
    for (args, message) in cases {
        let (code, text) = tokio::task::block_in_place(|| run_ferry(&args));
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(
            text.contains(message),
            "{args:?} should say {message:?}: {text}"
        );
        assert!(
            text.lines().filter(|l| l.contains("error")).count() <= 2,
            "one clear error line: {text}"
        );
        let databases = pair.dst.list_database_names().await.unwrap();
        assert!(
            databases
                .iter()
                .all(|d| ["admin", "local", "config"].contains(&d.as_str())),
            "{args:?} wrote to the destination: {databases:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_checks_no_access_is_read_once_to_prove_the_read_privilege() {
    let pair = Pair::start().await;
    crate::harness::small_collections(&pair.src, 30, 1).await;
    let (source, _) = pair.proxies().await;
    let mut ferry = Ferry::start(&source.uri(), &pair.destination.uri(), &[]);
    tokio::task::block_in_place(|| ferry.wait_can_commit());
    let probes = source
        .commands()
        .into_iter()
        .filter(|c| {
            c.name == "find"
                && c.body
                    .get_document("filter")
                    .is_ok_and(|f| f.get("_id") == Some(&mongodb::bson::Bson::MinKey))
        })
        .count();
    assert_eq!(probes, 1, "reads proving the read privilege");
}
