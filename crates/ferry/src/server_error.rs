//! Server error codes Ferry reacts to, and how to read them out of a driver error.

use std::fmt;

use mongodb::error::{ErrorKind, WriteFailure};

pub const NAMESPACE_NOT_FOUND: i32 = 26;
pub const INDEX_NOT_FOUND: i32 = 27;
pub const NAMESPACE_EXISTS: i32 = 48;
pub const INDEX_ALREADY_EXISTS: i32 = 68;
pub const INDEX_OPTIONS_CONFLICT: i32 = 85;
pub const INDEX_KEY_SPECS_CONFLICT: i32 = 86;
pub const DUPLICATE_KEY: i32 = 11000;
pub const COMMAND_NOT_FOUND: i32 = 59;
pub const UNAUTHORIZED: i32 = 13;
pub const BSON_OBJECT_TOO_LARGE: i32 = 10334;
/// A cursor killed under the read: its collection was dropped or renamed.
pub const QUERY_PLAN_KILLED: i32 = 175;
/// A capped collection overwrote the position a natural-order read had reached.
pub const CAPPED_POSITION_LOST: i32 = 136;
/// No answer in time (transient).
pub const NETWORK_TIMEOUT: i32 = 89;

/// A write the server applied but could not confirm to the write concern (a `writeConcernError`
/// in an `ok: 1` reply): during an election it may still be rolled back, so it counts as not
/// acknowledged.
#[derive(Clone, Debug)]
pub struct WriteConcernFailed {
    pub code: i32,
    pub message: String,
}

/// A statement of a write command the server refused (a `writeErrors` entry in an `ok: 1`
/// reply, for a command run by hand), with its code, so that a transient one (a stepdown
/// between statements) is retried like any other.
#[derive(Clone, Debug)]
pub struct WriteRefused {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for WriteRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the write was refused ({}: {})", self.code, self.message)
    }
}

impl std::error::Error for WriteRefused {}

/// The code of a write error Ferry read out of a reply itself.
fn reply_code(error: &anyhow::Error) -> Option<i32> {
    error.chain().find_map(|e| {
        e.downcast_ref::<WriteConcernFailed>()
            .map(|c| c.code)
            .or_else(|| e.downcast_ref::<WriteRefused>().map(|r| r.code))
    })
}

impl fmt::Display for WriteConcernFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the write was not confirmed by a majority (writeConcernError {}: {})",
            self.code, self.message
        )
    }
}

impl std::error::Error for WriteConcernFailed {}

/// The effect a write may find already there when it is sent again (a retry, a replay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Already {
    /// The namespace exists.
    Created,
    /// The namespace or index is gone.
    Dropped,
    /// An index of that name or key exists (while syncing, relaxed options do not matter).
    Indexed,
}

/// Whether `error` says that the write's effect is already there: the one place that knows
/// which refusals mean "done".
pub fn already(error: &anyhow::Error, what: Already) -> bool {
    let codes: &[i32] = match what {
        Already::Created => &[NAMESPACE_EXISTS],
        Already::Dropped => &[NAMESPACE_NOT_FOUND, INDEX_NOT_FOUND],
        Already::Indexed => &[
            INDEX_ALREADY_EXISTS,
            INDEX_OPTIONS_CONFLICT,
            INDEX_KEY_SPECS_CONFLICT,
        ],
    };
    is_code(error, codes)
}

/// The server's error code carried by an error, if any.
pub fn code_of(error: &anyhow::Error) -> Option<i32> {
    if let Some(code) = reply_code(error) {
        return Some(code);
    }
    let driver = error
        .chain()
        .find_map(|e| e.downcast_ref::<mongodb::error::Error>())?;
    driver_code(driver)
}

/// The server's error code in a driver error: a command's, a write's, or a write concern's.
pub fn driver_code(driver: &mongodb::error::Error) -> Option<i32> {
    match driver.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => Some(concern.code),
        // Duplicates are expected in a resumed copy: the write concern's code is the news.
        ErrorKind::InsertMany(failure) => {
            match (&failure.write_concern_error, &failure.write_errors) {
                (Some(concern), _) => Some(concern.code),
                (None, Some(errors)) => errors.first().map(|e| e.code),
                (None, None) => None,
            }
        }
        _ => None,
    }
}

/// Whether an error carries one of the given server codes.
pub fn is_code(error: &anyhow::Error, codes: &[i32]) -> bool {
    code_of(error).is_some_and(|code| codes.contains(&code))
}

/// Whether an `insert_many` failed only because some documents were already there.
pub fn only_duplicates(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_none()
                && failure
                    .write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|e| e.code == DUPLICATE_KEY))
        }
        _ => false,
    }
}

/// The change stream's resume point is no longer in the source's oplog.
pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
pub const CHANGE_STREAM_FATAL: i32 = 280;

/// Server codes of faults that pass: elections, restarts, shutdowns, network trouble, and a
/// write concern that could not be confirmed in time.
const TRANSIENT_CODES: [i32; 15] = [
    6,     // HostUnreachable
    7,     // HostNotFound
    43,    // CursorNotFound (the server restarted under an open cursor)
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
    112,   // WriteConflict
    64,    // WriteConcernFailed (wtimeout: the majority did not confirm in time)
];

/// Whether an error is a fault worth riding out (retry with backoff) rather than a reason to
/// fail: lost connections, unreachable servers, elections and restarts.
pub fn is_transient(error: &anyhow::Error) -> bool {
    if let Some(code) = reply_code(error) {
        return TRANSIENT_CODES.contains(&code);
    }
    let Some(driver) = error
        .chain()
        .find_map(|e| e.downcast_ref::<mongodb::error::Error>())
    else {
        return false;
    };
    if [
        "RetryableWriteError",
        "TransientTransactionError",
        "ResumableChangeStreamError",
    ]
    .iter()
    .any(|label| driver.contains_label(label))
    {
        return true;
    }
    match driver.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        _ => code_of(error).is_some_and(|code| TRANSIENT_CODES.contains(&code)),
    }
}
