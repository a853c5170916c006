//! A MongoDB-aware TCP fault proxy for integration tests. It sits between `ferry` and a test
//! server and plays the part of mongod's `failCommand` fail point, which the single-node test
//! server lacks: rules fail chosen commands with stepdown-shaped errors, add a
//! `writeConcernError` to a reply whose write did happen, drop connections before or after a
//! command runs, or delay it. It also records every command the client sends (name, namespace,
//! read and write concern, session, size) so tests can assert Ferry's contracts on the wire:
//! reads carry `readConcern.afterClusterTime`, writes use majority write concern, no command is
//! too large. It speaks plain TCP only (no TLS) and sees uncompressed `OP_MSG` commands only:
//! other opcodes, `OP_COMPRESSED` included, pass through untouched, so clients must not enable
//! compression.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document, RawBsonRef, RawDocument};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

const HEADER_LEN: usize = 16;
const OP_MSG: i32 = 2013;
const CHECKSUM_PRESENT: u32 = 1;
const MORE_TO_COME: u32 = 1 << 1;
/// Larger than any message a server accepts (48 MB); anything longer is a framing error.
const MAX_MESSAGE_LEN: usize = 64 << 20;
/// Recorded values larger than this are replaced by a placeholder.
const ELIDE_OVER: usize = 4 << 10;
/// The driver's handshake, authentication and monitoring commands, left alone by `any_command`.
const HANDSHAKE: [&str; 7] = [
    "hello",
    "isMaster",
    "ismaster",
    "saslStart",
    "saslContinue",
    "ping",
    "endSessions",
];

/// A command the client sent, as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The command name: the body's first key.
    pub name: String,
    /// The body's `$db`.
    pub db: String,
    /// The first key's value when it is a string (`collection` for `getMore`).
    pub collection: Option<String>,
    pub read_concern: Option<Document>,
    pub write_concern: Option<Document>,
    /// Whether the command carries an `lsid`.
    pub has_session: bool,
    pub txn_number: Option<i64>,
    /// The whole message's length, header included.
    pub bytes: usize,
    /// The command body, with every value larger than 4 KiB replaced by a placeholder string
    /// (documents larger than that keep their small fields).
    pub body: Document,
    /// How many documents the message's document sequences (kind-1 sections) hold.
    pub sequence_documents: usize,
    /// When the proxy received it.
    pub at: Instant,
}

impl Recorded {
    /// `db.collection`, when the command names a collection.
    pub fn namespace(&self) -> Option<String> {
        Some(format!("{}.{}", self.db, self.collection.as_ref()?))
    }

    /// How many elements the body's array `field` holds, whether it was recorded whole or
    /// elided for its size (`elide`).
    pub fn array_len(&self, field: &str) -> Option<usize> {
        match self.body.get(field)? {
            Bson::Array(array) => Some(array.len()),
            Bson::String(elided) => elided
                .strip_prefix("<array of ")?
                .split(' ')
                .next()?
                .parse()
                .ok(),
            _ => None,
        }
    }
}

/// What a matching rule does to a command.
#[derive(Clone, Debug)]
pub enum Action {
    /// Do not forward; answer `{ok: 0, errmsg, code, codeName, errorLabels}` (labels only when
    /// some are given, e.g. `"RetryableWriteError"`; no answer to a request that expects none).
    Error { code: i32, labels: Vec<String> },
    /// Forward, and add `writeConcernError: {code, codeName, errmsg}` to the server's reply, as
    /// mongod's `failCommand` does: the write happened, its majority confirmation failed. With
    /// `retryable`, the reply also gets the `RetryableWriteError` label.
    WriteConcernError { code: i32, retryable: bool },
    /// Close the client connection without forwarding.
    CloseBefore,
    /// Forward, then close the client connection when the server's reply arrives, without
    /// passing it on: the command ran, the client never learns its outcome. (A request that
    /// expects no reply, `moreToCome`, closes right after it is forwarded.)
    CloseAfter,
    /// Wait this long, then forward.
    Delay(Duration),
}

type Matcher = Box<dyn Fn(&Recorded) -> bool + Send + Sync>;

/// A fault rule: which commands it applies to, what it does to them, how often.
pub struct Rule {
    matcher: Matcher,
    action: Action,
    times: Option<usize>,
    chance: Option<(f64, StdRng)>,
}

impl Rule {
    /// A rule applying `action` to every command `matcher` accepts. A custom matcher also sees
    /// the driver's handshake and monitoring commands; see [`any_command`]. Matchers run with
    /// the rules locked: they must not call the proxy. Commands whose body is not valid BSON
    /// are forwarded without being recorded or matched.
    pub fn new(
        matcher: impl Fn(&Recorded) -> bool + Send + Sync + 'static,
        action: Action,
    ) -> Rule {
        Rule {
            matcher: Box::new(matcher),
            action,
            times: None,
            chance: None,
        }
    }

    /// Applies to the first `n` matching commands only.
    pub fn times(self, n: usize) -> Rule {
        Rule {
            times: Some(n),
            ..self
        }
    }

    /// Applies to each matching command with probability `p`, drawn from a generator seeded
    /// with `seed` (the same seed and commands fire the same way). A command it passes over is
    /// offered to the next rules.
    ///
    /// # Panics
    /// When `p` is not within 0..=1.
    pub fn probability(self, p: f64, seed: u64) -> Rule {
        assert!(
            (0.0..=1.0).contains(&p),
            "probability {p} is not within 0..=1"
        );
        Rule {
            chance: Some((p, StdRng::seed_from_u64(seed))),
            ..self
        }
    }

    /// Whether the rule applies to this command now; counts the use when it does.
    fn fires(&mut self, command: &Recorded) -> bool {
        if self.times == Some(0) || !(self.matcher)(command) {
            return false;
        }
        if let Some((p, rng)) = &mut self.chance {
            if !rng.random_bool(*p) {
                return false;
            }
        }
        if let Some(times) = &mut self.times {
            *times -= 1;
        }
        true
    }
}

/// Matches the command `name` exactly (case-sensitive, e.g. `"insert"`).
pub fn command(name: &str) -> impl Fn(&Recorded) -> bool + Send + Sync + 'static {
    let name = name.to_owned();
    move |command| command.name == name
}

/// Matches the command `name` on the namespace `db.collection`.
///
/// # Panics
/// When `namespace` has no `.`.
pub fn on(name: &str, namespace: &str) -> impl Fn(&Recorded) -> bool + Send + Sync + 'static {
    let (db, collection) = namespace
        .split_once('.')
        .unwrap_or_else(|| panic!("namespace {namespace:?} is not db.collection"));
    let (name, db, collection) = (name.to_owned(), db.to_owned(), collection.to_owned());
    move |command| {
        command.name == name && command.db == db && command.collection.as_ref() == Some(&collection)
    }
}

/// Matches every command except the driver's handshake, authentication and monitoring ones
/// (`hello`, `isMaster`, `saslStart`, `saslContinue`, `ping`, `endSessions`).
pub fn any_command() -> impl Fn(&Recorded) -> bool + Send + Sync + 'static {
    |command| !HANDSHAKE.contains(&command.name.as_str())
}

/// An installed rule: how often it fired, and a way to remove it.
pub struct RuleHandle {
    id: u64,
    fired: Arc<AtomicUsize>,
    shared: Arc<Shared>,
}

impl RuleHandle {
    /// How many commands the rule has applied to.
    pub fn fired(&self) -> usize {
        self.fired.load(Ordering::SeqCst)
    }

    /// Removes the rule; the commands that follow are not offered to it.
    pub fn remove(&self) {
        lock(&self.shared.rules).retain(|installed| installed.id != self.id);
    }
}

struct Installed {
    id: u64,
    fired: Arc<AtomicUsize>,
    rule: Rule,
}

/// What the proxy and its connections share.
#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Installed>>,
    next_rule: AtomicU64,
    record: Mutex<Vec<Recorded>>,
    /// Each open connection's task; aborting it closes both of its sockets.
    connections: Mutex<HashMap<u64, AbortHandle>>,
    /// Request ids of the replies the proxy makes up.
    next_request_id: AtomicI32,
    /// Forward nothing from clients, as a network that drops every packet does.
    silent: AtomicBool,
}

impl Shared {
    fn add_rule(self: &Arc<Self>, rule: Rule) -> RuleHandle {
        let id = self.next_rule.fetch_add(1, Ordering::SeqCst);
        let fired = Arc::new(AtomicUsize::new(0));
        lock(&self.rules).push(Installed {
            id,
            fired: fired.clone(),
            rule,
        });
        RuleHandle {
            id,
            fired,
            shared: self.clone(),
        }
    }

    /// The action of the first rule that applies to `command`, if any.
    fn action(&self, command: &Recorded) -> Option<Action> {
        let mut rules = lock(&self.rules);
        let installed = rules
            .iter_mut()
            .find_map(|installed| installed.rule.fires(command).then_some(installed))?;
        installed.fired.fetch_add(1, Ordering::SeqCst);
        Some(installed.rule.action.clone())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A spawned task, aborted when this is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running proxy; it stops listening and closes its connections on drop.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    _listener: AbortOnDrop<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (any port) and forwards every connection to `upstream`
    /// (e.g. `"127.0.0.1:27017"`). The proxy runs on the calling Tokio runtime: a test that
    /// blocks that runtime's only thread while clients use the proxy stalls them.
    pub async fn start(upstream: &str) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let accepting = tokio::spawn(accept(listener, upstream.to_owned(), shared.clone()));
        Ok(Proxy {
            port,
            shared,
            _listener: AbortOnDrop(accepting),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`; append options with `&`.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Adds a rule after the existing ones. Each command is offered to the rules in the order
    /// they were added; the first that applies decides.
    pub fn add_rule(&self, rule: Rule) -> RuleHandle {
        self.shared.add_rule(rule)
    }

    pub fn clear_rules(&self) {
        lock(&self.shared.rules).clear();
    }

    /// Every command clients sent so far (handshake and monitoring ones included), in arrival
    /// order.
    pub fn commands(&self) -> Vec<Recorded> {
        lock(&self.shared.record).clone()
    }

    pub fn clear_record(&self) {
        lock(&self.shared.record).clear();
    }

    /// Holds every client message (any opcode, the driver's handshake included) until this is
    /// turned off again: a server that accepts connections and never answers.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::SeqCst);
    }

    /// Closes every open client connection, and its upstream connection, now.
    pub fn close_all(&self) {
        let connections: Vec<AbortHandle> = lock(&self.shared.connections)
            .drain()
            .map(|(_, task)| task)
            .collect();
        for task in connections {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.close_all();
    }
}

async fn accept(listener: TcpListener, upstream: String, shared: Arc<Shared>) {
    let upstream: Arc<str> = upstream.into();
    for id in 0.. {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                eprintln!("test proxy: accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Registered under the lock, so the task cannot finish and unregister before it is.
        let mut connections = lock(&shared.connections);
        let task = tokio::spawn(serve(id, client, upstream.clone(), shared.clone()));
        connections.insert(id, task.abort_handle());
    }
}

async fn serve(id: u64, client: TcpStream, upstream: Arc<str>, shared: Arc<Shared>) {
    if let Err(error) = pump(client, &upstream, shared.clone()).await {
        if error.kind() == io::ErrorKind::InvalidData {
            eprintln!("test proxy: closing connection {id}: {error}");
        }
    }
    lock(&shared.connections).remove(&id);
}

/// What to do with the reply to a request, by the request's id.
type Pending = Arc<Mutex<HashMap<i32, ReplyAction>>>;

enum ReplyAction {
    WriteConcernError { code: i32, retryable: bool },
    Close,
}

/// Connects to the upstream server and pumps both directions until either ends; then both
/// sockets close.
async fn pump(client: TcpStream, upstream: &str, shared: Arc<Shared>) -> io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let client_write = Arc::new(tokio::sync::Mutex::new(client_write));
    let pending = Pending::default();
    let mut requests = AbortOnDrop(tokio::spawn(requests(
        client_read,
        server_write,
        client_write.clone(),
        pending.clone(),
        shared,
    )));
    let mut replies = AbortOnDrop(tokio::spawn(replies(server_read, client_write, pending)));
    let ended = tokio::select! {
        ended = &mut requests.0 => ended,
        ended = &mut replies.0 => ended,
    };
    // A panicked pump has reported itself already.
    ended.unwrap_or(Ok(()))
}

/// Client to server: records each command, applies the rules, forwards.
async fn requests(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    client_write: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
    shared: Arc<Shared>,
) -> io::Result<()> {
    while let Some(message) = read_message(&mut client).await? {
        while shared.silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let header = Header::of(&message);
        if header.op_code != OP_MSG {
            server.write_all(&message).await?;
            continue;
        }
        let msg = OpMsg::parse(&message)?;
        let Some(recorded) = record(&message, &msg) else {
            server.write_all(&message).await?;
            continue;
        };
        let action = shared.action(&recorded);
        let name = recorded.name.clone();
        lock(&shared.record).push(recorded);
        let expects_reply = msg.flags & MORE_TO_COME == 0;
        match action {
            None => {}
            Some(Action::Error { code, labels }) => {
                if expects_reply {
                    let request_id = shared.next_request_id.fetch_add(1, Ordering::SeqCst);
                    let reply = error_reply(request_id, header.request_id, &name, code, &labels)?;
                    client_write.lock().await.write_all(&reply).await?;
                }
                continue;
            }
            Some(Action::WriteConcernError { code, retryable }) => {
                lock(&pending).insert(
                    header.request_id,
                    ReplyAction::WriteConcernError { code, retryable },
                );
            }
            Some(Action::CloseBefore) => return Ok(()),
            Some(Action::CloseAfter) if expects_reply => {
                lock(&pending).insert(header.request_id, ReplyAction::Close);
            }
            Some(Action::CloseAfter) => {
                server.write_all(&message).await?;
                return Ok(());
            }
            Some(Action::Delay(delay)) => tokio::time::sleep(delay).await,
        }
        server.write_all(&message).await?;
    }
    Ok(())
}

/// Server to client: forwards every reply, unprompted ones (`moreToCome`) included, altered as
/// the rules asked.
async fn replies(
    mut server: OwnedReadHalf,
    client: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
) -> io::Result<()> {
    while let Some(message) = read_message(&mut server).await? {
        let header = Header::of(&message);
        let action = if header.op_code == OP_MSG {
            lock(&pending).remove(&header.response_to)
        } else {
            None
        };
        let message = match action {
            None => message,
            Some(ReplyAction::WriteConcernError { code, retryable }) => {
                add_write_concern_error(&message, code, retryable)?
            }
            Some(ReplyAction::Close) => return Ok(()),
        };
        client.lock().await.write_all(&message).await?;
    }
    Ok(())
}

/// Reads one whole message; `None` at the end of the stream.
async fn read_message(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0; HEADER_LEN];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = usize::try_from(i32_at(&header, 0)).unwrap_or(0);
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&length) {
        return Err(invalid(format!("message length {length}")));
    }
    let mut message = vec![0; length];
    message[..HEADER_LEN].copy_from_slice(&header);
    reader.read_exact(&mut message[HEADER_LEN..]).await?;
    Ok(Some(message))
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad wire message: {what}"),
    )
}

/// Reads a little-endian i32 at `at`; the caller has checked the bounds.
fn i32_at(bytes: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

struct Header {
    request_id: i32,
    response_to: i32,
    op_code: i32,
}

impl Header {
    /// The header of a message `read_message` returned (at least 16 bytes long).
    fn of(message: &[u8]) -> Header {
        Header {
            request_id: i32_at(message, 4),
            response_to: i32_at(message, 8),
            op_code: i32_at(message, 12),
        }
    }
}

/// An `OP_MSG`'s parts, borrowed from the message.
struct OpMsg<'a> {
    flags: u32,
    /// The kind-0 section: the command or reply document.
    body: &'a [u8],
    /// The kind-1 sections, each whole (kind byte included).
    sequences: Vec<&'a [u8]>,
    sequence_documents: usize,
}

impl<'a> OpMsg<'a> {
    /// Splits a whole `OP_MSG` (header included) into its sections.
    fn parse(message: &'a [u8]) -> io::Result<OpMsg<'a>> {
        if message.len() < HEADER_LEN + 4 {
            return Err(invalid("OP_MSG without flags"));
        }
        let flags = i32_at(message, HEADER_LEN) as u32;
        let mut end = message.len();
        if flags & CHECKSUM_PRESENT != 0 {
            end -= 4;
        }
        let mut at = HEADER_LEN + 4;
        let (mut body, mut sequences, mut sequence_documents) = (None, Vec::new(), 0);
        while at < end {
            let start = at;
            at += 1;
            match message[start] {
                0 => {
                    let length = document_length(message, at, end)?;
                    if body.replace(&message[at..at + length]).is_some() {
                        return Err(invalid("OP_MSG with two body sections"));
                    }
                    at += length;
                }
                1 => {
                    if at + 4 > end {
                        return Err(invalid("truncated document sequence"));
                    }
                    let size = usize::try_from(i32_at(message, at)).unwrap_or(0);
                    if size < 5 || at + size > end {
                        return Err(invalid(format!("document sequence size {size}")));
                    }
                    let section_end = at + size;
                    let identifier_end = message[at + 4..section_end]
                        .iter()
                        .position(|&byte| byte == 0)
                        .ok_or_else(|| invalid("unterminated document sequence identifier"))?;
                    at += 4 + identifier_end + 1;
                    while at < section_end {
                        at += document_length(message, at, section_end)?;
                        sequence_documents += 1;
                    }
                    sequences.push(&message[start..section_end]);
                }
                kind => return Err(invalid(format!("section kind {kind}"))),
            }
        }
        Ok(OpMsg {
            flags,
            body: body.ok_or_else(|| invalid("OP_MSG without a body section"))?,
            sequences,
            sequence_documents,
        })
    }
}

/// The length of the BSON document at `at`, checked to fit before `end`.
fn document_length(bytes: &[u8], at: usize, end: usize) -> io::Result<usize> {
    if at + 4 > end {
        return Err(invalid("truncated document"));
    }
    let length = usize::try_from(i32_at(bytes, at)).unwrap_or(0);
    if length < 5 || at + length > end {
        return Err(invalid(format!("document length {length}")));
    }
    Ok(length)
}

/// The record of a command; `None` when its body is not valid BSON or names no command.
fn record(message: &[u8], msg: &OpMsg) -> Option<Recorded> {
    let raw = RawDocument::from_bytes(msg.body).ok()?;
    let (name, first) = raw.iter().next()?.ok()?;
    let collection = match (name, first) {
        ("getMore", _) => raw.get_str("collection").ok(),
        (_, RawBsonRef::String(collection)) => Some(collection),
        _ => None,
    };
    let document = |key| raw.get_document(key).ok()?.try_into().ok();
    Some(Recorded {
        name: name.to_owned(),
        db: raw.get_str("$db").unwrap_or_default().to_owned(),
        collection: collection.map(str::to_owned),
        read_concern: document("readConcern"),
        write_concern: document("writeConcern"),
        has_session: raw.get("lsid").ok()?.is_some(),
        txn_number: match raw.get("txnNumber").ok()? {
            Some(RawBsonRef::Int64(number)) => Some(number),
            Some(RawBsonRef::Int32(number)) => Some(number.into()),
            _ => None,
        },
        bytes: message.len(),
        body: elide(raw)?,
        sequence_documents: msg.sequence_documents,
        at: Instant::now(),
    })
}

/// `raw` as a `Document`, with its values larger than `ELIDE_OVER` replaced by a placeholder
/// string (large documents are elided field by field).
fn elide(raw: &RawDocument) -> Option<Document> {
    let mut document = Document::new();
    for element in raw.iter_elements() {
        let element = element.ok()?;
        let value = element.value().ok()?;
        let value = match value {
            _ if element.len() <= ELIDE_OVER => value.try_into().ok()?,
            RawBsonRef::Document(inner) => Bson::Document(elide(inner)?),
            RawBsonRef::Array(array) => Bson::String(format!(
                "<array of {} elements, {} bytes>",
                array.into_iter().count(),
                element.len()
            )),
            _ => Bson::String(format!(
                "<{:?} of {} bytes>",
                element.element_type(),
                element.len()
            )),
        };
        document.insert(element.key(), value);
    }
    Some(document)
}

/// The code names of the errors tests use; `UnknownError` for the others.
fn code_name(code: i32) -> &'static str {
    match code {
        2 => "BadValue",
        6 => "HostUnreachable",
        43 => "CursorNotFound",
        50 => "MaxTimeMSExpired",
        64 => "WriteConcernFailed",
        89 => "NetworkTimeout",
        91 => "ShutdownInProgress",
        112 => "WriteConflict",
        136 => "CappedPositionLost",
        175 => "QueryPlanKilled",
        189 => "PrimarySteppedDown",
        251 => "NoSuchTransaction",
        262 => "ExceededTimeLimit",
        9001 => "SocketException",
        10107 => "NotWritablePrimary",
        10334 => "BSONObjectTooLarge",
        11600 => "InterruptedAtShutdown",
        11602 => "InterruptedDueToReplStateChange",
        13435 => "NotPrimaryNoSecondaryOk",
        13436 => "NotPrimaryOrSecondary",
        _ => "UnknownError",
    }
}

/// Encodes an `OP_MSG` with a body and, verbatim, document sequences.
fn encode_op_msg(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &Document,
    sequences: &[&[u8]],
) -> io::Result<Vec<u8>> {
    let mut message = vec![0; HEADER_LEN];
    message.extend_from_slice(&flags.to_le_bytes());
    message.push(0);
    body.to_writer(&mut message).map_err(invalid)?;
    for sequence in sequences {
        message.extend_from_slice(sequence);
    }
    let length = i32::try_from(message.len()).map_err(invalid)?;
    message[0..4].copy_from_slice(&length.to_le_bytes());
    message[4..8].copy_from_slice(&request_id.to_le_bytes());
    message[8..12].copy_from_slice(&response_to.to_le_bytes());
    message[12..16].copy_from_slice(&OP_MSG.to_le_bytes());
    Ok(message)
}

/// The reply of a command failed with `code`.
fn error_reply(
    request_id: i32,
    response_to: i32,
    command: &str,
    code: i32,
    labels: &[String],
) -> io::Result<Vec<u8>> {
    let mut body = doc! {
        "ok": 0.0,
        "errmsg": format!("test proxy: failing {command} with {}", code_name(code)),
        "code": code,
        "codeName": code_name(code),
    };
    if !labels.is_empty() {
        body.insert("errorLabels", labels);
    }
    encode_op_msg(request_id, response_to, 0, &body, &[])
}

/// `reply` with a `writeConcernError` added (and the `RetryableWriteError` label when
/// `retryable`), re-encoded without a checksum.
fn add_write_concern_error(reply: &[u8], code: i32, retryable: bool) -> io::Result<Vec<u8>> {
    let header = Header::of(reply);
    let msg = OpMsg::parse(reply)?;
    let raw = RawDocument::from_bytes(msg.body).map_err(invalid)?;
    let mut body = Document::try_from(raw).map_err(invalid)?;
    body.insert(
        "writeConcernError",
        doc! {
            "code": code,
            "codeName": code_name(code),
            "errmsg": format!("test proxy: write concern failed with {}", code_name(code)),
        },
    );
    if retryable {
        let label = Bson::from("RetryableWriteError");
        match body.get_array_mut("errorLabels") {
            Ok(labels) if labels.contains(&label) => {}
            Ok(labels) => labels.push(label),
            Err(_) => {
                body.insert("errorLabels", vec![label]);
            }
        }
    }
    encode_op_msg(
        header.request_id,
        header.response_to,
        msg.flags & !CHECKSUM_PRESENT,
        &body,
        &msg.sequences,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind-1 section: identifier and documents.
    fn sequence(identifier: &str, documents: &[Document]) -> Vec<u8> {
        let mut payload = identifier.as_bytes().to_vec();
        payload.push(0);
        for document in documents {
            document.to_writer(&mut payload).unwrap();
        }
        let mut section = vec![1];
        section.extend_from_slice(&(payload.len() as i32 + 4).to_le_bytes());
        section.extend_from_slice(&payload);
        section
    }

    fn insert_request() -> Vec<u8> {
        let body = doc! {
            "insert": "c",
            "ordered": true,
            "writeConcern": { "w": "majority" },
            "lsid": { "id": 1 },
            "txnNumber": 7_i64,
            "$db": "db",
        };
        let documents = [doc! { "_id": 1 }, doc! { "_id": 2, "x": "y" }];
        encode_op_msg(42, 0, 0, &body, &[&sequence("documents", &documents)]).unwrap()
    }

    fn body_of(message: &[u8]) -> Document {
        let msg = OpMsg::parse(message).unwrap();
        Document::try_from(RawDocument::from_bytes(msg.body).unwrap()).unwrap()
    }

    /// `message` with a checksum: the flag set and four bytes appended.
    fn with_checksum(message: &[u8]) -> Vec<u8> {
        let mut message = message.to_vec();
        message[16] |= CHECKSUM_PRESENT as u8;
        message.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let length = message.len() as i32;
        message[0..4].copy_from_slice(&length.to_le_bytes());
        message
    }

    #[test]
    fn an_arrays_length_is_read_whole_or_elided() {
        let updates = |n: usize| -> Vec<Document> {
            (0..n)
                .map(|i| doc! { "q": { "_id": format!("db.c{i:05}") }, "u": { "$set": { "done": true } } })
                .collect()
        };
        for n in [2, 500] {
            let body = doc! { "update": "c", "updates": updates(n), "$db": "db" };
            let raw = mongodb::bson::to_vec(&body).unwrap();
            let recorded = Recorded {
                name: "update".into(),
                db: "db".into(),
                collection: Some("c".into()),
                read_concern: None,
                write_concern: None,
                has_session: false,
                txn_number: None,
                bytes: raw.len(),
                body: elide(RawDocument::from_bytes(&raw).unwrap()).unwrap(),
                sequence_documents: 0,
                at: Instant::now(),
            };
            assert_eq!(recorded.body.get_array("updates").is_ok(), n == 2);
            assert_eq!(recorded.array_len("updates"), Some(n));
            assert_eq!(recorded.array_len("update"), None);
        }
    }

    #[test]
    fn records_an_insert_with_a_document_sequence() {
        let message = insert_request();
        assert_eq!(i32_at(&message, 0) as usize, message.len());
        let header = Header::of(&message);
        assert_eq!((header.request_id, header.op_code), (42, OP_MSG));
        let msg = OpMsg::parse(&message).unwrap();
        assert_eq!(msg.sequences.len(), 1);
        let recorded = record(&message, &msg).unwrap();
        assert_eq!(recorded.name, "insert");
        assert_eq!(recorded.db, "db");
        assert_eq!(recorded.collection.as_deref(), Some("c"));
        assert_eq!(recorded.namespace().as_deref(), Some("db.c"));
        assert_eq!(recorded.write_concern, Some(doc! { "w": "majority" }));
        assert_eq!(recorded.read_concern, None);
        assert!(recorded.has_session);
        assert_eq!(recorded.txn_number, Some(7));
        assert_eq!(recorded.sequence_documents, 2);
        assert_eq!(recorded.bytes, message.len());
        assert!(on("insert", "db.c")(&recorded));
        assert!(!on("insert", "db.d")(&recorded));
        assert!(command("insert")(&recorded) && !command("Insert")(&recorded));
        assert!(any_command()(&recorded));
    }

    #[test]
    fn records_collections_of_get_more_and_aggregate() {
        let get_more = encode_op_msg(
            1,
            0,
            0,
            &doc! { "getMore": 12_i64, "collection": "c", "readConcern": { "level": "majority" }, "$db": "db" },
            &[],
        )
        .unwrap();
        let recorded = record(&get_more, &OpMsg::parse(&get_more).unwrap()).unwrap();
        assert_eq!(recorded.collection.as_deref(), Some("c"));
        assert_eq!(recorded.read_concern, Some(doc! { "level": "majority" }));
        assert!(!recorded.has_session);

        let aggregate = encode_op_msg(
            2,
            0,
            0,
            &doc! { "aggregate": 1, "pipeline": [], "$db": "admin" },
            &[],
        )
        .unwrap();
        let recorded = record(&aggregate, &OpMsg::parse(&aggregate).unwrap()).unwrap();
        assert_eq!(
            (recorded.name.as_str(), recorded.collection),
            ("aggregate", None)
        );

        let hello = encode_op_msg(3, 0, 0, &doc! { "hello": 1, "$db": "admin" }, &[]).unwrap();
        let recorded = record(&hello, &OpMsg::parse(&hello).unwrap()).unwrap();
        assert!(!any_command()(&recorded) && command("hello")(&recorded));
    }

    #[test]
    fn elides_large_values() {
        let big = "x".repeat(10_000);
        let updates: Vec<Document> = (0..100)
            .map(|i| doc! { "q": { "_id": i }, "u": { "v": "y".repeat(100) } })
            .collect();
        let body = doc! {
            "update": "c",
            "updates": updates,
            "filter": { "small": 1, "big": &big },
            "$db": "db",
        };
        let message = encode_op_msg(1, 0, 0, &body, &[]).unwrap();
        let recorded = record(&message, &OpMsg::parse(&message).unwrap()).unwrap();
        let updates = recorded.body.get_str("updates").unwrap();
        assert!(updates.starts_with("<array of 100 elements"), "{updates}");
        let filter = recorded.body.get_document("filter").unwrap();
        assert_eq!(filter.get_i32("small"), Ok(1));
        assert!(filter.get_str("big").unwrap().len() < 100);
        assert_eq!(recorded.body.get_str("update"), Ok("c"));
    }

    #[test]
    fn adds_a_write_concern_error_to_a_reply() {
        let reply = encode_op_msg(9, 42, 0, &doc! { "n": 1, "ok": 1.0 }, &[]).unwrap();
        let changed = add_write_concern_error(&reply, 189, true).unwrap();
        assert_eq!(i32_at(&changed, 0) as usize, changed.len());
        let header = Header::of(&changed);
        assert_eq!((header.request_id, header.response_to), (9, 42));
        let body = body_of(&changed);
        assert_eq!(body.get_i32("n"), Ok(1));
        let error = body.get_document("writeConcernError").unwrap();
        assert_eq!(error.get_i32("code"), Ok(189));
        assert_eq!(error.get_str("codeName"), Ok("PrimarySteppedDown"));
        assert_eq!(
            body.get_array("errorLabels").unwrap(),
            &vec![Bson::from("RetryableWriteError")]
        );

        let labelled = encode_op_msg(
            9,
            42,
            0,
            &doc! { "ok": 1.0, "errorLabels": ["TransientTransactionError"] },
            &[],
        )
        .unwrap();
        let body = body_of(&add_write_concern_error(&labelled, 91, true).unwrap());
        assert_eq!(
            body.get_array("errorLabels").unwrap(),
            &vec![
                Bson::from("TransientTransactionError"),
                Bson::from("RetryableWriteError")
            ]
        );
        let body = body_of(&add_write_concern_error(&reply, 64, false).unwrap());
        assert!(!body.contains_key("errorLabels"));
    }

    #[test]
    fn drops_the_checksum_of_a_changed_reply() {
        let reply = with_checksum(&encode_op_msg(9, 42, 0, &doc! { "ok": 1.0 }, &[]).unwrap());
        let msg = OpMsg::parse(&reply).unwrap();
        assert_eq!(msg.flags & CHECKSUM_PRESENT, CHECKSUM_PRESENT);
        assert_eq!(msg.body.len(), reply.len() - HEADER_LEN - 4 - 1 - 4);

        let changed = add_write_concern_error(&reply, 189, false).unwrap();
        assert_eq!(i32_at(&changed, 0) as usize, changed.len());
        let msg = OpMsg::parse(&changed).unwrap();
        assert_eq!(msg.flags & CHECKSUM_PRESENT, 0);
        assert_eq!(msg.body.len(), changed.len() - HEADER_LEN - 4 - 1);
        assert!(body_of(&changed).contains_key("writeConcernError"));

        let request = with_checksum(&insert_request());
        let msg = OpMsg::parse(&request).unwrap();
        assert_eq!(record(&request, &msg).unwrap().sequence_documents, 2);
    }

    #[test]
    fn rejects_bad_framing() {
        let message = insert_request();
        assert!(OpMsg::parse(&message[..message.len() - 3]).is_err());
        let mut bad_kind = message.clone();
        bad_kind[20] = 7;
        assert!(OpMsg::parse(&bad_kind).is_err());
        let no_body = {
            let mut message = vec![0; HEADER_LEN + 4];
            message.extend_from_slice(&sequence("documents", &[doc! {}]));
            message
        };
        assert!(OpMsg::parse(&no_body).is_err());
    }

    #[test]
    fn fabricates_error_replies() {
        let reply = error_reply(5, 42, "insert", 10107, &["RetryableWriteError".into()]).unwrap();
        let header = Header::of(&reply);
        assert_eq!((header.response_to, header.op_code), (42, OP_MSG));
        let body = body_of(&reply);
        assert_eq!(body.get_f64("ok"), Ok(0.0));
        assert_eq!(body.get_i32("code"), Ok(10107));
        assert_eq!(body.get_str("codeName"), Ok("NotWritablePrimary"));
        assert_eq!(
            body.get_array("errorLabels").unwrap(),
            &vec![Bson::from("RetryableWriteError")]
        );
        let body = body_of(&error_reply(5, 42, "find", 12345, &[]).unwrap());
        assert_eq!(body.get_str("codeName"), Ok("UnknownError"));
        assert!(!body.contains_key("errorLabels"));
    }

    #[test]
    fn rules_fire_in_order_times_and_probability() {
        let shared = Arc::new(Shared::default());
        let message = insert_request();
        let insert = record(&message, &OpMsg::parse(&message).unwrap()).unwrap();
        let once = shared.add_rule(Rule::new(command("insert"), Action::CloseBefore).times(1));
        let always = shared.add_rule(Rule::new(
            command("insert"),
            Action::Delay(Duration::from_millis(1)),
        ));
        assert!(matches!(shared.action(&insert), Some(Action::CloseBefore)));
        assert!(matches!(shared.action(&insert), Some(Action::Delay(_))));
        assert_eq!((once.fired(), always.fired()), (1, 1));
        always.remove();
        assert!(shared.action(&insert).is_none());

        let sometimes =
            shared.add_rule(Rule::new(any_command(), Action::CloseAfter).probability(0.5, 7));
        let fired: Vec<bool> = (0..64).map(|_| shared.action(&insert).is_some()).collect();
        assert_eq!(sometimes.fired(), fired.iter().filter(|&&f| f).count());
        assert!(
            (16..48).contains(&sometimes.fired()),
            "{}",
            sometimes.fired()
        );
        sometimes.remove();
        shared.add_rule(Rule::new(any_command(), Action::CloseAfter).probability(0.5, 7));
        let replayed: Vec<bool> = (0..64).map(|_| shared.action(&insert).is_some()).collect();
        assert_eq!(fired, replayed);
    }

    /// Through the test server with the official driver; skipped when the server is missing.
    #[test]
    fn through_the_test_server() {
        use mongodb::error::ErrorKind;

        let binary = crate::server::secantus_binary();
        if std::env::var_os("FERRY_TEST_MONGOD").is_none() && !binary.exists() {
            eprintln!("skipped: no test server at {}", binary.display());
            return;
        }
        let server = crate::Server::start().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let proxy = Proxy::start(&format!("127.0.0.1:{}", server.port))
                .await
                .unwrap();
            let uri = format!(
                "{}&retryWrites=false&w=majority&heartbeatFrequencyMS=500",
                proxy.uri()
            );
            let client = mongodb::Client::with_uri_str(uri).await.unwrap();
            let collection = client.database("db").collection::<Document>("c");

            collection.insert_one(doc! { "_id": 1 }).await.unwrap();
            let inserts: Vec<Recorded> = proxy
                .commands()
                .into_iter()
                .filter(|command| command.name == "insert")
                .collect();
            assert_eq!(inserts.len(), 1);
            assert_eq!(inserts[0].namespace().as_deref(), Some("db.c"));
            assert_eq!(inserts[0].write_concern, Some(doc! { "w": "majority" }));
            assert_eq!(inserts[0].sequence_documents, 1);
            assert!(inserts[0].has_session);

            let stepdown = Action::Error {
                code: 189,
                labels: Vec::new(),
            };
            let rule = proxy.add_rule(Rule::new(on("insert", "db.c"), stepdown).times(1));
            let error = collection.insert_one(doc! { "_id": 2 }).await.unwrap_err();
            assert!(
                matches!(&*error.kind, ErrorKind::Command(error) if error.code == 189),
                "{error}"
            );
            collection.insert_one(doc! { "_id": 2 }).await.unwrap();
            assert_eq!(rule.fired(), 1);

            let write_concern_error = Action::WriteConcernError {
                code: 189,
                retryable: false,
            };
            proxy.add_rule(Rule::new(on("insert", "db.c"), write_concern_error).times(1));
            let reply = client
                .database("db")
                .run_command(doc! { "insert": "c", "documents": [{ "_id": 3 }] })
                .await
                .unwrap();
            let write_concern_error = reply.get_document("writeConcernError").unwrap();
            assert_eq!(write_concern_error.get_i32("code"), Ok(189));
            let written = collection.find_one(doc! { "_id": 3 }).await.unwrap();
            assert!(written.is_some());

            proxy.add_rule(Rule::new(on("insert", "db.c"), Action::CloseBefore).times(1));
            let error = collection.insert_one(doc! { "_id": 4 }).await.unwrap_err();
            assert!(matches!(&*error.kind, ErrorKind::Io(_)), "{error}");
            let written = collection.find_one(doc! { "_id": 4 }).await.unwrap();
            assert!(written.is_none());

            // Forwarded, then the connection closes before the reply: written, never confirmed.
            proxy.add_rule(Rule::new(on("insert", "db.c"), Action::CloseAfter).times(1));
            let error = collection.insert_one(doc! { "_id": 5 }).await.unwrap_err();
            assert!(matches!(&*error.kind, ErrorKind::Io(_)), "{error}");
            let written = collection.find_one(doc! { "_id": 5 }).await.unwrap();
            assert!(written.is_some());

            let delay = Duration::from_millis(300);
            proxy.add_rule(Rule::new(on("find", "db.c"), Action::Delay(delay)).times(1));
            let started = Instant::now();
            collection.find_one(doc! {}).await.unwrap();
            assert!(started.elapsed() >= delay);
        });
    }
}
