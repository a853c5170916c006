//! Real database servers for tests, the demo and the benchmark: a `secantusd-rs` process (the
//! MongoDB-wire-compatible stand-in, see DESIGN.md) per end, on an ephemeral port with its own
//! temporary storage, or a real `mongod` when `FERRY_TEST_MONGOD` names one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The pinned stand-in server version (crates.io package `secantus-mdb`).
pub const SECANTUS_VERSION: &str = "0.5.3-beta.196";

/// Where the stand-in server is installed, once per machine.
pub fn secantus_root() -> PathBuf {
    if let Ok(root) = std::env::var("FERRY_SERVER_CACHE") {
        return PathBuf::from(root);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(home)
        .join(".cache/ferry")
        .join(format!("secantus-{SECANTUS_VERSION}"))
}

/// The stand-in server's binary, `FERRY_SECANTUSD` when set.
pub fn secantus_binary() -> PathBuf {
    std::env::var("FERRY_SECANTUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|_| secantus_root().join("bin/secantusd-rs"))
}

/// Options of a test server.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Keep at most this many oplog entries (the stand-in's default is 100,000).
    pub oplog_max_entries: Option<u64>,
    /// Require SCRAM authentication (users are created through the localhost exception).
    pub auth: bool,
    /// Serve TLS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Answer as a standalone server, not a replica set member.
    pub standalone: bool,
    /// Make every acknowledged write survive a `kill -9`, as a journaled `mongod`'s majority
    /// writes do (the stand-in otherwise acknowledges before its log reaches the disk). Tests
    /// that restart a server need it; it costs an fsync per commit.
    pub durable: bool,
}

/// A running server; killed and its storage removed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    storage: tempfile::TempDir,
    options: ServerOptions,
}

/// Why these options cannot be had from a real `mongod` as this launcher starts it, when
/// `FERRY_TEST_MONGOD` names one; a test that needs them says it is skipped, and why.
pub fn unavailable_on_mongod(options: &ServerOptions) -> Option<&'static str> {
    std::env::var_os("FERRY_TEST_MONGOD").filter(|m| !m.is_empty())?;
    if options.auth {
        Some("the mongod launcher does not set up --auth and its keyfile")
    } else if options.tls.is_some() {
        Some("the mongod launcher does not set up --tlsMode")
    } else if options.standalone {
        Some("the mongod launcher always starts a replica set member")
    } else if options.oplog_max_entries.is_some() {
        Some("mongod's smallest oplog (990 MB) cannot be filled past its end in a test")
    } else {
        None
    }
}

impl Server {
    /// Starts a server with default options.
    pub fn start() -> Result<Self> {
        Self::start_with(&ServerOptions::default())
    }

    /// Starts a real `mongod` when `FERRY_TEST_MONGOD` names one, else the stand-in server.
    pub fn start_with(options: &ServerOptions) -> Result<Self> {
        match std::env::var("FERRY_TEST_MONGOD") {
            Ok(mongod) if !mongod.is_empty() => start_mongod(&mongod, options),
            _ => start_secantus(options),
        }
    }

    /// Kills the server (SIGKILL), waits `down_for`, and starts it again on the same port and
    /// storage, as a crashed and restarted server would be. Start it `durable` so that it keeps
    /// what it acknowledged.
    pub fn restart(&mut self, down_for: Duration) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        let port = self.port;
        let (child, _) = match std::env::var("FERRY_TEST_MONGOD") {
            Ok(mongod) if !mongod.is_empty() => {
                let child = spawn_mongod(&mongod, &self.options, self.storage.path(), port)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(initiate_replica_set(port))?;
                (child, port)
            }
            _ => spawn_secantus(&self.options, self.storage.path(), port)?,
        };
        self.child = child;
        Ok(())
    }

    /// A connection string for this server (a single-node replica set).
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_secantus(options: &ServerOptions) -> Result<Server> {
    let storage = tempfile::Builder::new().prefix("ferry-server-").tempdir()?;
    let (child, port) = spawn_secantus(options, storage.path(), 0)?;
    Ok(Server {
        child,
        port,
        storage,
        options: options.clone(),
    })
}

/// Starts the stand-in server on `port` (0: any) and returns it with the port it listens on.
fn spawn_secantus(options: &ServerOptions, storage: &Path, port: u16) -> Result<(Child, u16)> {
    let binary = secantus_binary();
    if !binary.exists() {
        bail!(
            "the test server is not installed at {}: run `cargo xtask install-server` (or `cargo xtask test`)",
            binary.display()
        );
    }
    let mut command = Command::new(&binary);
    command
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
        ])
        .arg(storage)
        // The stand-in builds each index in one transaction; with a smaller cache than its
        // default (4G, allocated as needed) a large build is rolled back and retried forever.
        .args(["--log-file-max", "32MB", "--log-level", "WARNING"])
        .args([
            "--oplog-max-entries",
            &options.oplog_max_entries.unwrap_or(5_000_000).to_string(),
        ])
        .args(options.auth.then_some("--auth"))
        .args(options.durable.then_some("--sync-on-commit"))
        .args(options.standalone.then_some("--standalone"));
    if let Some((cert, key)) = &options.tls {
        command
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(server_log(storage)?);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            bail!("the test server exited before saying which port it listens on");
        };
        let line = line?;
        if let Some(addr) = line.split("listening on ").nth(1) {
            break addr
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .with_context(|| format!("unexpected listening line: {line}"))?;
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, port))
}

/// Where a server's own log goes: a file in `FERRY_SERVER_LOG` (a directory) when set.
fn server_log(storage: &Path) -> Result<Stdio> {
    let Some(dir) = std::env::var_os("FERRY_SERVER_LOG") else {
        return Ok(Stdio::null());
    };
    let name = storage
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    std::fs::create_dir_all(&dir)?;
    Ok(std::fs::File::create(Path::new(&dir).join(format!("{name}.log")))?.into())
}

fn start_mongod(mongod: &str, options: &ServerOptions) -> Result<Server> {
    let storage = tempfile::Builder::new().prefix("ferry-mongod-").tempdir()?;
    let port = free_port()?;
    let child = spawn_mongod(mongod, options, storage.path(), port)?;
    let server = Server {
        child,
        port,
        storage,
        options: options.clone(),
    };
    if !options.standalone {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(initiate_replica_set(port))?;
    }
    Ok(server)
}

fn spawn_mongod(mongod: &str, options: &ServerOptions, storage: &Path, port: u16) -> Result<Child> {
    // mongod's smallest oplog is 990 MB; a tiny-oplog test cannot be reproduced exactly.
    let oplog_mb = if options.oplog_max_entries.is_some() {
        990
    } else {
        2048
    };
    Command::new(mongod)
        .args([
            "--replSet",
            "rs0",
            "--bind_ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--dbpath")
        .arg(storage)
        .args(["--oplogSize", &oplog_mb.to_string(), "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {mongod}"))
}

async fn initiate_replica_set(port: u16) -> Result<()> {
    use mongodb::bson::doc;
    let client =
        mongodb::Client::with_uri_str(format!("mongodb://127.0.0.1:{port}/?directConnection=true"))
            .await?;
    let admin = client.database("admin");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut initiated = false;
    while Instant::now() < deadline {
        if !initiated {
            initiated = admin
                .run_command(doc! { "replSetInitiate": { "_id": "rs0", "members": [{ "_id": 0, "host": format!("127.0.0.1:{port}") }] } })
                .await
                .is_ok();
        }
        if let Ok(hello) = admin.run_command(doc! { "hello": 1 }).await {
            if hello.get_bool("isWritablePrimary").unwrap_or(false) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("mongod on port {port} did not become a writable primary within 60 s")
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Makes the stand-in server drop the oplog entries beyond its bounds now (it otherwise prunes
/// only on its heartbeat). A real `mongod` trims its oplog by size on its own; there the command
/// fails and is ignored.
pub async fn trim_oplog(client: &mongodb::Client) {
    use mongodb::bson::doc;
    let _ = client
        .database("admin")
        .run_command(doc! { "secantusAdmin.pruneOplog": 1 })
        .await;
}

/// Creates a user with the given (role, database) pairs; on a server with `--auth` the first
/// user is created through the localhost exception.
pub async fn create_user(
    client: &mongodb::Client,
    user: &str,
    password: &str,
    roles: &[(&str, &str)],
) -> Result<()> {
    use mongodb::bson::doc;
    let roles: Vec<mongodb::bson::Document> = roles
        .iter()
        .map(|(role, db)| doc! { "role": *role, "db": *db })
        .collect();
    client
        .database("admin")
        .run_command(doc! { "createUser": user, "pwd": password, "roles": roles })
        .await?;
    Ok(())
}
