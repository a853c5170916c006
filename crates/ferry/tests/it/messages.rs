//! What a person reads when something is wrong: one line per problem, the cause in words (the
//! host and port, refused, no answer, TLS, authentication, a missing privilege, a standalone
//! server, a bad connection string or flag) and the fix, never the driver's dumps. Each message
//! class is produced by a real broken set-up and compared whole.

use std::time::Duration;

use mongodb::Client;
use testkit::proxy::{Action, Proxy, Rule};
use testkit::{Server, ServerOptions};

use crate::harness::{run_ferry, Ferry, Pair};

/// Fails when `text` holds anything of the driver's debug output: its `Kind:` dumps, `Some(…)`,
/// raw reply documents, or a long run of hex.
fn assert_no_dump(text: &str) {
    for needle in [
        "Kind:",
        "Some(",
        "RawDocumentBuf",
        "labels: {",
        "server response:",
    ] {
        assert!(!text.contains(needle), "`{needle}` in:\n{text}");
    }
    let longest_hex = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest_hex < 32, "a hex dump in:\n{text}");
}

/// `ferry check` in text between two URIs: (exit code, everything it printed).
fn check_text(source: &str, destination: &str) -> (i32, String) {
    tokio::task::block_in_place(|| {
        run_ferry(&["check", "--source", source, "--destination", destination])
    })
}

/// The line of check `id` in a text report, its columns joined by one space.
fn line_of(report: &str, id: &str) -> String {
    let line = report
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(id))
        .unwrap_or_else(|| panic!("no {id} line in:\n{report}"));
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The fix printed under check `id`.
fn fix_of(report: &str, id: &str) -> String {
    let mut lines = report
        .lines()
        .skip_while(|l| l.split_whitespace().nth(1) != Some(id));
    lines.next();
    let fix = lines.next().unwrap_or_default().trim();
    fix.strip_prefix("fix: ").unwrap_or(fix).to_string()
}

const QUICK: &str = "directConnection=true&serverSelectionTimeoutMS=2000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_refusing_and_silent_servers_are_named_by_address() {
    let destination = Server::start().unwrap();
    let closed = testkit::server::free_port().unwrap();
    let (code, report) = check_text(
        &format!("mongodb://127.0.0.1:{closed}/?{QUICK}"),
        &destination.uri(),
    );
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        line_of(&report, "source.reachable"),
        format!("FAIL source.reachable cannot reach 127.0.0.1:{closed}: connection refused")
    );
    assert_eq!(
        fix_of(&report, "source.reachable"),
        "check the host and port in --source, that the server runs, and that this machine may reach it"
    );
    assert_no_dump(&report);

    let (code, report) = check_text(
        &format!("mongodb://nohost.invalid:27017/?{QUICK}"),
        &destination.uri(),
    );
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        line_of(&report, "source.reachable"),
        "FAIL source.reachable cannot reach nohost.invalid:27017: the host name could not be resolved"
    );
    assert_no_dump(&report);

    let silent = Proxy::start(&format!("127.0.0.1:{}", destination.port))
        .await
        .unwrap();
    silent.set_silent(true);
    let (code, report) = check_text(
        &format!("mongodb://127.0.0.1:{}/?{QUICK}", silent.port()),
        &destination.uri(),
    );
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        line_of(&report, "source.reachable"),
        format!(
            "FAIL source.reachable no answer from 127.0.0.1:{} before the server selection timeout",
            silent.port()
        )
    );
    assert_no_dump(&report);

    let (code, report) = check_text(
        &format!(
            "mongodb://127.0.0.1:{}/?replicaSet=nope&serverSelectionTimeoutMS=2000",
            destination.port
        ),
        &destination.uri(),
    );
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        line_of(&report, "source.reachable"),
        "FAIL source.reachable no host answered as a member of replica set nope: check the hosts and replicaSet=nope"
    );
    assert_no_dump(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_authentication_and_privilege_failures_say_what_failed() {
    let files = testkit::tls::TlsFiles::generate().unwrap();
    let tls = ServerOptions {
        tls: Some((files.server_cert.clone(), files.server_key.clone())),
        ..Default::default()
    };
    let auth = ServerOptions {
        auth: true,
        ..Default::default()
    };
    if crate::harness::skipped(&tls) || crate::harness::skipped(&auth) {
        return;
    }
    let secure = Server::start_with(&tls).unwrap();
    let destination = Server::start().unwrap();
    let (code, report) = check_text(
        &format!(
            "mongodb://127.0.0.1:{}/?{QUICK}&tls=true&tlsCAFile={}",
            secure.port,
            files.other_ca.display()
        ),
        &destination.uri(),
    );
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        line_of(&report, "source.reachable"),
        format!("FAIL source.reachable cannot reach 127.0.0.1:{}: the TLS handshake failed: the server's certificate is not trusted (signed by an unknown authority: UnknownIssuer)", secure.port)
    );
    assert!(
        fix_of(&report, "source.reachable").contains("tlsCAFile"),
        "{report}"
    );
    assert_no_dump(&report);

    let guarded = Server::start_with(&auth).unwrap();
    let anonymous = Client::with_uri_str(guarded.uri()).await.unwrap();
    testkit::server::create_user(&anonymous, "admin", "admin-pw", &[("root", "admin")])
        .await
        .unwrap();
    let admin_uri = |user: &str, password: &str| {
        format!(
            "mongodb://{user}:{password}@127.0.0.1:{}/?directConnection=true&authSource=admin",
            guarded.port
        )
    };
    let admin = Client::with_uri_str(admin_uri("admin", "admin-pw"))
        .await
        .unwrap();
    testkit::server::create_user(&admin, "narrow", "narrow-pw", &[("read", "shop")])
        .await
        .unwrap();
    let (code, report) = check_text(&admin_uri("admin", "wrong-pw"), &destination.uri());
    assert_eq!(code, 2, "{report}");
    let line = line_of(&report, "source.reachable");
    assert!(
        line.starts_with(&format!(
            "FAIL source.reachable authentication failed for user admin on authSource admin at 127.0.0.1:{}: ",
            guarded.port
        )),
        "{report}"
    );
    assert!(!report.contains("wrong-pw"), "{report}");
    assert_no_dump(&report);

    let (code, report) = check_text(&admin_uri("narrow", "narrow-pw"), &destination.uri());
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        line_of(&report, "source.privileges"),
        "FAIL source.privileges not allowed to read the server status (missing action serverStatus); not allowed to open a change stream on the cluster (missing action changeStream)"
    );
    assert_eq!(
        fix_of(&report, "source.privileges"),
        "grant the source user the roles readAnyDatabase and clusterMonitor"
    );
    assert_no_dump(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_source_fails_once_and_the_checks_that_need_a_member_are_skipped() {
    let options = ServerOptions {
        standalone: true,
        ..Default::default()
    };
    if crate::harness::skipped(&options) {
        return;
    }
    let standalone = Server::start_with(&options).unwrap();
    let destination = Server::start().unwrap();
    let (code, report) = check_text(&standalone.uri(), &destination.uri());
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        line_of(&report, "source.replica-set"),
        format!("FAIL source.replica-set the source at {} is a standalone server, not a replica set member", standalone.uri())
    );
    for id in ["source.privileges", "source.oplog-window"] {
        assert_eq!(
            line_of(&report, id),
            format!("skip {id} needs a replica set member as the source")
        );
    }
    assert_eq!(
        report.lines().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "only the replica set check fails:\n{report}"
    );
    assert_no_dump(&report);
}

#[test]
fn a_bad_connection_string_and_a_bad_flag_are_one_line_each() {
    let (code, text) = run_ferry(&[
        "check",
        "--source",
        "mongodb://alice:s3cret@h:99999/",
        "--destination",
        "mongodb://h/",
    ]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(
        text.trim_end(),
        "error: --source mongodb://alice:****@h:99999/ is not a valid MongoDB connection string: invalid setting: invalid server address h:99999: the port must be an integer between 1 and 65535, got 99999; write it as mongodb://[user:password@]host[:port][,host...]/?replicaSet=NAME"
    );

    let (code, text) = run_ferry(&["migrate", "--sourc", "mongodb://h/"]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(
        text.trim_end(),
        "error: unexpected argument '--sourc' found; tip: a similar argument exists: '--source'; see `ferry migrate --help`"
    );

    let (code, text) = run_ferry(&["migrate"]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(
        text.trim_end(),
        "error: the following required arguments were not provided: --source <URI>; --destination <URI>; see `ferry migrate --help` (each may also come from a FERRY_* variable or the --config file)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_error_during_a_migration_is_one_line_in_the_log_and_at_exit() {
    let pair = Pair::with_one_order().await;
    let (_, destination) = pair.proxies().await;
    // A transient refusal is retried with its reason, shown in the API while it lasts; a
    // lasting one fails the migration.
    let stepped_down = destination.add_rule(Rule::new(
        testkit::proxy::on("insert", "shop.orders"),
        Action::Error {
            code: 189,
            labels: vec![],
        },
    ));
    let mut ferry = Ferry::start(&pair.source.uri(), &destination.uri(), &[]);
    let retrying = "writing documents of shop.orders: test proxy: failing insert with PrimarySteppedDown (PrimarySteppedDown, code 189)";
    let progress = tokio::task::block_in_place(|| {
        ferry.wait_for("the API to show the retry", Duration::from_secs(60), |p| {
            p["retrying"].is_string()
        })
    });
    assert_eq!(progress["retrying"], retrying);
    assert_no_dump(&progress.to_string());
    stepped_down.remove();
    destination.add_rule(Rule::new(
        testkit::proxy::on("insert", "shop.orders"),
        Action::Error {
            code: 2,
            labels: vec![],
        },
    ));
    let code = tokio::task::block_in_place(|| ferry.wait_exit(Duration::from_secs(120)));
    assert_eq!(code, 1, "{}", ferry.output());
    let output = ferry.output();
    let failed = ferry.logged("migration FAILED");
    assert_eq!(
        failed[0]["error"],
        "writing documents of shop.orders: test proxy: failing insert with BadValue (BadValue, code 2)",
        "{output}"
    );
    assert!(
        !ferry.logged(&format!("retrying: {retrying}")).is_empty(),
        "{output}"
    );
    assert!(
        output.contains(&format!("error: {}", failed[0]["error"].as_str().unwrap())),
        "the exit says it too:\n{output}"
    );
    assert_no_dump(&output);
}
