//! Shared pieces of the integration tests: a source and a destination server, the `ferry`
//! binary run as a process, its API, and the equality check.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;
use serde_json::Value;
use testkit::compare::Scope;
use testkit::proxy::{Proxy, Recorded, RuleHandle};
use testkit::workload::{self, Workload};
use testkit::Server;

/// A source and a destination server with a client on each.
pub struct Pair {
    pub source: Server,
    pub destination: Server,
    pub src: Client,
    pub dst: Client,
}

impl Pair {
    pub async fn start() -> Pair {
        Self::start_with(&testkit::ServerOptions::default()).await
    }

    pub async fn start_with(options: &testkit::ServerOptions) -> Pair {
        let source = Server::start_with(options).expect("starting the source server");
        let destination = Server::start_with(&testkit::ServerOptions {
            durable: options.durable,
            ..Default::default()
        })
        .expect("starting the destination server");
        let src = Client::with_uri_str(source.uri()).await.unwrap();
        let dst = Client::with_uri_str(destination.uri()).await.unwrap();
        Pair {
            source,
            destination,
            src,
            dst,
        }
    }

    /// A pair whose source holds one document in `shop.orders`: the smallest migration.
    pub async fn with_one_order() -> Pair {
        let pair = Self::start().await;
        pair.src
            .database("shop")
            .collection::<Document>("orders")
            .insert_one(doc! { "_id": 1 })
            .await
            .unwrap();
        pair
    }

    /// Fault proxies in front of the source and the destination (see `testkit::proxy`).
    pub async fn proxies(&self) -> (Proxy, Proxy) {
        let proxy = |server: &Server| {
            let upstream = format!("127.0.0.1:{}", server.port);
            async move {
                Proxy::start(&upstream)
                    .await
                    .expect("starting a fault proxy")
            }
        };
        (proxy(&self.source).await, proxy(&self.destination).await)
    }

    /// Starts `ferry migrate` from the source to the destination with extra arguments.
    pub fn migrate(&self, extra: &[&str]) -> Ferry {
        Ferry::start(&self.source.uri(), &self.destination.uri(), extra)
    }

    /// Starts `ferry reverse` with the forward migration's arguments (source, destination).
    pub fn reverse(&self, extra: &[&str]) -> Ferry {
        Ferry::run(
            "reverse",
            &self.source.uri(),
            &self.destination.uri(),
            extra,
            &[],
        )
    }

    /// Asserts that the destination's user data equals the source's.
    pub async fn assert_equal(&self, context: &str) {
        self.assert_equal_in(&Scope::default(), context).await;
    }

    /// Asserts that the namespaces `scope` includes are equal on both sides, and that the
    /// destination holds none it leaves out.
    pub async fn assert_equal_in(&self, scope: &Scope, context: &str) {
        let differences = testkit::compare::differences_in(&self.src, &self.dst, scope)
            .await
            .expect("comparing the clusters");
        assert!(
            differences.is_empty(),
            "{context}: the destination differs from the source:\n{}",
            differences.join("\n")
        );
    }
}

/// A running `ferry migrate` process.
pub struct Ferry {
    child: Child,
    pub api: String,
    output: Arc<Mutex<String>>,
    /// The threads reading its stdout and stderr.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Ferry {
    pub fn start(source: &str, destination: &str, extra: &[&str]) -> Ferry {
        Self::start_with_env(source, destination, extra, &[])
    }

    /// [`Ferry::start`] with environment variables set for the process.
    pub fn start_with_env(
        source: &str,
        destination: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Ferry {
        Self::run("migrate", source, destination, extra, env)
    }

    /// Runs `ferry COMMAND --source … --destination …` with its API on a free port.
    pub fn run(
        command: &str,
        source: &str,
        destination: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Ferry {
        // Port 0: the API binds a free port itself, and says which in its first log line.
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                command,
                "--source",
                source,
                "--destination",
                destination,
                "--api-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ferry");
        let output = Arc::new(Mutex::new(String::new()));
        let readers = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .map(|stream| {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            })
        })
        .collect();
        let mut ferry = Ferry {
            child,
            api: String::new(),
            output,
            readers,
        };
        // Waiting blocks this thread: inside a test's runtime, tell it so its tasks run on.
        ferry.api = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| ferry.api_address()),
            Err(_) => ferry.api_address(),
        };
        ferry
    }

    /// The address the API listens on, from the `starting migration` log line; empty when ferry
    /// exits before it serves (a refused start).
    fn api_address(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(fields) = self.logged("starting migration").pop() {
                let url = fields["api"].as_str().unwrap_or_default();
                return url.trim_start_matches("http://").to_string();
            }
            if self.child.try_wait().unwrap().is_some() {
                self.join_output();
                return String::new();
            }
            assert!(
                Instant::now() < deadline,
                "ferry never said where its API listens:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until everything ferry printed is read (after it exited).
    fn join_output(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Kills ferry the hard way (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_output();
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn terminate(&mut self) -> i32 {
        self.signal("-TERM")
    }

    /// Sends a signal (`-TERM`, `-INT`) and returns the exit code.
    pub fn signal(&mut self, signal: &str) -> i32 {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("sending a signal");
        self.wait_exit(Duration::from_secs(60))
    }

    /// Everything ferry printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The fields of every structured log line with this message (`--log-format json`).
    pub fn logged(&self, message: &str) -> Vec<Value> {
        self.output()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|entry| entry["fields"].clone())
            .filter(|fields| fields["message"] == message)
            .collect()
    }

    /// Whether ferry logged that it was retrying after a fault.
    pub fn retried(&self) -> bool {
        self.output()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .any(|entry| {
                entry["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("retrying"))
            })
    }

    /// The documents a `collection copied` log line reports for `ns`, if the copy finished.
    pub fn copied(&self, ns: &str) -> Option<u64> {
        self.logged("collection copied")
            .iter()
            .find(|fields| fields["namespace"] == ns)
            .and_then(|fields| fields["documents"].as_u64())
    }

    fn call(&self, method: &str, path: &str) -> Option<(u16, Value)> {
        call_api(&self.api, method, path, None)
    }

    /// The `progress` object of `GET /api/v1/progress`, once the API answers.
    pub fn progress(&self) -> Option<Value> {
        self.call("GET", "/api/v1/progress")
            .map(|(_, v)| v["progress"].clone())
    }

    /// `POST /api/v1/commit`: (HTTP status, reply).
    pub fn commit(&self) -> (u16, Value) {
        self.call("POST", "/api/v1/commit")
            .expect("the API answers")
    }

    /// Waits until the progress satisfies `condition`; panics with ferry's output on timeout or
    /// when ferry exits first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(progress) = self.progress() {
                if condition(&progress) {
                    return progress;
                }
                if progress["state"] == "FAILED" {
                    panic!(
                        "ferry FAILED while waiting for {what}: {progress}\n{}",
                        self.output()
                    );
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ferry exited ({status}) while waiting for {what}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_can_commit(&mut self) -> Value {
        self.wait_for("canCommit", Duration::from_secs(180), |p| {
            p["canCommit"] == true
        })
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_output();
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "ferry did not exit in time:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Commits once canCommit is true and asserts a clean exit after COMMITTED.
    pub fn commit_and_finish(&mut self) {
        self.wait_can_commit();
        let (status, reply) = self.commit();
        assert_eq!(
            (status, reply["success"].clone()),
            (200, Value::Bool(true)),
            "{reply}"
        );
        let code = self.wait_exit(Duration::from_secs(180));
        assert_eq!(
            code,
            0,
            "ferry should exit 0 after COMMITTED:\n{}",
            self.output()
        );
        assert!(self.output().contains("COMMITTED"), "{}", self.output());
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request to an API at `addr`: (HTTP status, body text); `None` when nothing answers.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let bearer = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let response = match method {
        "POST" => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Authorization", &bearer)
            .send(body),
        _ => agent.get(&url).header("Authorization", &bearer).call(),
    }
    .ok()?;
    let status = response.status().as_u16();
    Some((status, response.into_body().read_to_string().ok()?))
}

/// One request to an API at `addr` that answers JSON: (HTTP status, reply).
pub fn call_api(addr: &str, method: &str, path: &str, token: Option<&str>) -> Option<(u16, Value)> {
    let (status, body) = http(addr, method, path, "{}", token)?;
    Some((status, serde_json::from_str(&body).ok()?))
}

/// `ferry check --json` between two URIs, with extra arguments and environment variables:
/// (exit code, report).
pub fn check_with(
    source: &str,
    destination: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "check",
            "--source",
            source,
            "--destination",
            destination,
            "--json",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .expect("running ferry check");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let json = text.find('{').map(|i| &text[i..]).unwrap_or("");
    let report = serde_json::from_str(json).unwrap_or_else(|_| panic!("no JSON report: {text}"));
    (output.status.code().unwrap_or(-1), report)
}

/// The check with this id in a report.
pub fn check_named<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("check {id} is not in the report: {report}"))
}

/// Creates a unique index on `key` of `db.coll`.
pub async fn unique_index(client: &Client, db: &str, coll: &str, key: &str) {
    client
        .database(db)
        .collection::<Document>(coll)
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! { key: 1 })
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
}

/// Runs ferry to completion: (exit code, stdout + stderr).
pub fn run_ferry(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("running ferry");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

/// Whether a test needing `options` cannot run here (a real mongod without that set-up); says
/// why on stderr.
pub fn skipped(options: &testkit::ServerOptions) -> bool {
    match testkit::server::unavailable_on_mongod(options) {
        Some(reason) => {
            eprintln!("skipped on FERRY_TEST_MONGOD: {reason}");
            true
        }
        None => false,
    }
}

/// A seed from `FERRY_TEST_SEED` or the clock, printed so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {seed} (replay with FERRY_TEST_SEED={seed})");
    seed
}

/// Inserts `count` documents of about 1 KB into `db.coll`.
/// `collections` small collections `many.c00`, `many.c01`, ..., of `documents` documents each.
pub async fn small_collections(client: &Client, collections: usize, documents: i32) {
    for c in 0..collections {
        client
            .database("many")
            .collection::<Document>(&format!("c{c:02}"))
            .insert_many((0..documents).map(|i| doc! { "_id": i }))
            .await
            .unwrap();
    }
}

pub async fn fill(client: &Client, db: &str, coll: &str, count: i64) {
    let collection = client.database(db).collection::<Document>(coll);
    let mut batch = Vec::new();
    for id in 0..count {
        batch.push(doc! { "_id": id, "pad": "x".repeat(1000), "n": id });
        if batch.len() == 2000 {
            collection
                .insert_many(std::mem::take(&mut batch))
                .await
                .unwrap();
        }
    }
    if !batch.is_empty() {
        collection.insert_many(batch).await.unwrap();
    }
}

/// The `_id` ranges of `ns` recorded in Ferry's state on the destination.
pub async fn recorded_ranges(pair: &Pair, ns: &str) -> usize {
    pair.dst
        .database("__ferry")
        .collection::<Document>("collections")
        .find_one(doc! { "_id": ns })
        .await
        .unwrap()
        .and_then(|c| c.get_array("partitions").ok().map(Vec::len))
        .unwrap_or(0)
}

/// A writer that runs a seeded number of workload steps beside the test.
pub struct App {
    task: tokio::task::JoinHandle<anyhow::Result<workload::Stats>>,
}

impl App {
    /// Steps an application runs: a few seconds of writes at one client's pace.
    const STEPS: u64 = 3000;

    pub fn start(client: &Client, seed: u64) -> App {
        let task = tokio::spawn(
            Workload::new(client.clone(), seed).run_steps(Self::STEPS, Duration::from_millis(1)),
        );
        App { task }
    }

    /// Waits until every step is written.
    pub async fn stop(self) -> workload::Stats {
        self.task.await.unwrap().unwrap()
    }
}

/// Waits until the proxy's `rule` has fired `times`, failing with Ferry's output after a minute.
pub async fn until_fired(rule: &RuleHandle, times: usize, ferry: &Ferry) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rule.fired() < times {
        assert!(std::time::Instant::now() < deadline, "{}", ferry.output());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks that `write` waits for a journaled majority, and for a bounded time: a destination
/// that lost its majority fails the write rather than hold the migration forever.
pub fn assert_waits_for_majority(write: &Recorded) {
    let concern = write.write_concern.clone().unwrap_or_default();
    assert_eq!(concern.get_str("w"), Ok("majority"), "{write:?}");
    assert_eq!(concern.get_bool("j"), Ok(true), "{write:?}");
    let timeout = match concern.get("wtimeout") {
        Some(Bson::Int32(t)) => i64::from(*t),
        Some(Bson::Int64(t)) => *t,
        _ => 0,
    };
    assert!(timeout > 0, "{write:?}");
}
