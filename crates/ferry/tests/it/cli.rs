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
    let pair = Pair::with_one_order().await;
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

/// Runs ferry with these environment variables (and no other `FERRY_*` ones than the test's
/// own): (exit code, everything it printed).
fn ferry_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FERRY_")) {
        command.env_remove(name);
    }
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running ferry");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_win_over_ferry_variables_which_win_over_the_config_file() {
    let pair = Pair::with_one_order().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "source = \"{}\"\ndestination = \"{}\"\ninclude = [\"shop\"]\njson = true\n",
            pair.source.uri(),
            pair.destination.uri()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let closed = format!(
        "mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=1000",
        testkit::server::free_port().unwrap()
    );
    let run = |args: &[&str], env: &[(&str, &str)]| {
        tokio::task::block_in_place(|| ferry_with_env(args, env))
    };

    // Everything from the file: both ends answer, and the report is JSON (`json = true`).
    let (code, text) = run(&["check", "--config", config], &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.trim_start().starts_with('{'), "{text}");
    // A variable wins over the file, and a flag over the variable.
    let (code, text) = run(&["check", "--config", config], &[("FERRY_SOURCE", &closed)]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("cannot reach 127.0.0.1:"), "{text}");
    let source = pair.source.uri();
    let (code, text) = run(
        &["check", "--config", config, "--source", &source],
        &[("FERRY_SOURCE", &closed)],
    );
    assert_eq!(code, 0, "{text}");
    // The file can come from a variable too.
    let (code, text) = run(&["check"], &[("FERRY_CONFIG", config)]);
    assert_eq!(code, 0, "{text}");

    std::fs::write(dir.path().join("typo.toml"), "sauce = \"x\"\n").unwrap();
    let typo = dir.path().join("typo.toml");
    let (code, text) = run(&["check", "--config", typo.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(
        text.trim_end(),
        format!("error: --config {}: `sauce` is not a setting of `ferry check`; the settings are its long flags without the dashes (see `ferry check --help`)", typo.display())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_keeps_the_password_off_the_command_line() {
    let auth = testkit::ServerOptions {
        auth: true,
        ..Default::default()
    };
    if crate::harness::skipped(&auth) {
        return;
    }
    let source = testkit::Server::start_with(&auth).unwrap();
    let destination = testkit::Server::start().unwrap();
    let anonymous = mongodb::Client::with_uri_str(source.uri()).await.unwrap();
    testkit::server::create_user(&anonymous, "admin", "file-Pa55word", &[("root", "admin")])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("source-password");
    std::fs::write(&password, "file-Pa55word\n").unwrap();
    let user_only = format!(
        "mongodb://admin@127.0.0.1:{}/?directConnection=true&authSource=admin",
        source.port
    );
    let destination_uri = destination.uri();
    let check = |uri: &str, file: &str| {
        tokio::task::block_in_place(|| {
            ferry_with_env(
                &[
                    "check",
                    "--source",
                    uri,
                    "--destination",
                    &destination_uri,
                    "--source-password-file",
                    file,
                ],
                &[],
            )
        })
    };
    let (code, text) = check(&user_only, password.to_str().unwrap());
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("file-Pa55word"), "{text}");

    let (code, text) = check(&user_only, "/nonexistent/password");
    assert_eq!(code, 2, "{text}");
    assert_eq!(
        text.trim_end(),
        "error: cannot read --source-password-file /nonexistent/password: No such file or directory (os error 2); give a readable file that holds only the password"
    );
    let no_user = format!("mongodb://127.0.0.1:{}/", source.port);
    let (code, text) = check(&no_user, password.to_str().unwrap());
    assert_eq!(code, 2, "{text}");
    assert_eq!(
        text.trim_end(),
        "error: --source-password-file needs a user name in --source: write it as mongodb://USER@host/ (without the password)"
    );
}

#[test]
fn completions_man_pages_and_the_version_come_from_the_command_line_definition() {
    let (code, bash) = run_ferry(&["completions", "bash"]);
    assert_eq!(code, 0, "{bash}");
    assert!(
        bash.contains("_ferry()") && bash.contains("--source-password-file"),
        "{bash}"
    );
    let (code, zsh) = run_ferry(&["completions", "zsh"]);
    assert_eq!(code, 0, "{zsh}");
    assert!(zsh.starts_with("#compdef ferry"), "{zsh}");

    let (code, page) = run_ferry(&["man"]);
    assert_eq!(code, 0, "{page}");
    assert!(page.contains(".TH ferry 1"), "{page}");
    assert!(page.contains("migrate"), "{page}");
    let (code, page) = run_ferry(&["man", "migrate"]);
    assert_eq!(code, 0, "{page}");
    assert!(page.contains(".TH ferry-migrate 1"), "{page}");
    assert!(page.contains("FERRY_SOURCE"), "{page}");
    let (code, text) = run_ferry(&["man", "nope"]);
    assert_eq!(code, 2, "{text}");

    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let (code, version) = run_ferry(&["--version"]);
    assert_eq!(code, 0, "{version}");
    assert_eq!(
        version.trim_end(),
        format!("ferry {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}
