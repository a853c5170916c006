//! Errors as one line a person can act on. The driver's own text for an error is a debug dump
//! (`Kind: …, labels: {…}, source: None, server response: Some(RawDocumentBuf { data: "…" })`,
//! and a failed server selection prints the whole topology); here each kind is named in words:
//! the host and port that refused or did not answer, the TLS problem, the failed
//! authentication, the command a user may not run, the server's own message with its code
//! name. Secrets are redacted. The raw form goes to a debug-level log line only.

use mongodb::error::{ErrorKind, WriteFailure};

use crate::redact::redact_uri;

/// The error and its context, outermost first, on one line: `copying shop.orders: cannot reach
/// db1:27017: connection refused`.
pub fn error(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let part = match cause.downcast_ref::<mongodb::error::Error>() {
            Some(driver) => driver_error(driver),
            None => clean(&cause.to_string()),
        };
        // A context that already quotes its cause says it once.
        if !parts.last().is_some_and(|last| last.contains(&part)) {
            parts.push(part);
        }
        if cause.is::<mongodb::error::Error>() {
            break;
        }
    }
    one_line(&redact_uri(&parts.join(": ")))
}

/// One driver error in words.
pub fn driver_error(error: &mongodb::error::Error) -> String {
    tracing::debug!(raw = %redact_uri(&format!("{error:?}")), "error detail");
    let text = match error.kind.as_ref() {
        ErrorKind::Command(c) => command(c.code, Some(&c.code_name), &c.message),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            command(w.code, w.code_name.as_deref(), &w.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => format!(
            "the write was not confirmed by the write concern: {}",
            command(w.code, Some(&w.code_name), &w.message)
        ),
        ErrorKind::InsertMany(e) => {
            let refused = e.write_errors.as_deref().unwrap_or_default();
            match (refused.first(), &e.write_concern_error) {
                (Some(first), _) => format!(
                    "{} document(s) of the batch were refused; the first: {}",
                    refused.len(),
                    command(first.code, first.code_name.as_deref(), &first.message)
                ),
                (None, Some(w)) => format!(
                    "the write was not confirmed by the write concern: {}",
                    command(w.code, Some(&w.code_name), &w.message)
                ),
                (None, None) => "the insert failed".to_string(),
            }
        }
        ErrorKind::BulkWrite(e) => match e.write_errors.values().next() {
            Some(first) => format!(
                "{} write(s) of the batch were refused; the first: {}",
                e.write_errors.len(),
                command(first.code, first.code_name.as_deref(), &first.message)
            ),
            None => match e.write_concern_errors.first() {
                Some(w) => format!(
                    "the write was not confirmed by the write concern: {}",
                    command(w.code, Some(&w.code_name), &w.message)
                ),
                None => "the bulk write failed".to_string(),
            },
        },
        ErrorKind::Authentication { message, .. } => {
            format!("authentication failed ({})", clean(message))
        }
        ErrorKind::ServerSelection { message, .. } => server_selection(&clean(message)),
        ErrorKind::Io(io) => io_error(io.kind(), &io.to_string()),
        ErrorKind::DnsResolve { message, .. } => {
            format!("the host name could not be resolved ({})", clean(message))
        }
        ErrorKind::InvalidArgument { message, .. } => {
            format!("invalid setting: {}", clean(message))
        }
        ErrorKind::InvalidTlsConfig { message, .. } => {
            format!("the TLS settings are invalid: {}", clean(message))
        }
        _ => clean(&error.kind.to_string()),
    };
    one_line(&text)
}

/// A server's refusal: its message, then its code name and number. A missing privilege is
/// named by the command and database the server quotes, not the whole command it echoes.
fn command(code: i32, code_name: Option<&str>, message: &str) -> String {
    const UNAUTHORIZED: i32 = 13;
    if code == UNAUTHORIZED {
        if let Some(what) = unauthorized(message) {
            return what;
        }
    }
    const USER_WRITES_BLOCKED: i32 = 371;
    let message = clean(message);
    let said = match code_name.filter(|n| !n.is_empty()) {
        Some(name) => format!("{message} ({name}, code {code})"),
        None => format!("{message} (code {code})"),
    };
    if code == USER_WRITES_BLOCKED {
        // Ferry writes to a blocked cluster only in a reverse, into the old source.
        return format!("{said}: the cluster's user writes are blocked (setUserWriteBlockMode); grant Ferry's user there the bypassWriteBlockingMode privilege (the restore role holds it)");
    }
    said
}

/// `not authorized on admin to execute command { serverStatus: 1, … }` in words.
fn unauthorized(message: &str) -> Option<String> {
    let rest = message.strip_prefix("not authorized on ")?;
    let (db, command) = rest.split_once(" to execute command ")?;
    let name = command
        .trim_start_matches(['{', ' '])
        .split([':', ' ', '}'])
        .next()
        .filter(|n| !n.is_empty())?;
    Some(format!(
        "the user is not authorized to run {name} on database {db} (Unauthorized, code 13)"
    ))
}

/// A failed server selection: each server's own failure with its address, or why the servers
/// that answered did not fit.
fn server_selection(message: &str) -> String {
    let servers = servers(message);
    let failures: Vec<String> = servers
        .iter()
        .filter_map(|(address, _, error)| {
            let error = error.as_ref()?;
            Some(format!("cannot reach {address}: {}", io_error_text(error)))
        })
        .collect();
    if !failures.is_empty() {
        return failures.join("; ");
    }
    if servers.is_empty() {
        // The driver leaves out a host that answers as another set or as a standalone.
        return match set_name(message) {
            Some(set) => format!("no host answered as a member of replica set {set}: check the hosts and replicaSet={set}"),
            None => "no server was found".into(),
        };
    }
    let addresses: Vec<&str> = servers.iter().map(|(a, _, _)| a.as_str()).collect();
    if servers.iter().all(|(_, kind, _)| kind == "Unknown") {
        return format!(
            "no answer from {} before the server selection timeout",
            addresses.join(", ")
        );
    }
    let kinds: Vec<String> = servers
        .iter()
        .map(|(address, kind, _)| format!("{address} is {}", server_kind(kind)))
        .collect();
    let wanted = if message.contains("Primary") {
        "none of the servers that answered is a primary"
    } else {
        "none of the servers that answered fits"
    };
    format!("{wanted} ({})", kinds.join(", "))
}

/// The replica set name a topology description expects.
fn set_name(message: &str) -> Option<&str> {
    let rest = message.split_once("Set Name: ")?.1;
    rest.split([',', ' ', '}']).next().filter(|s| !s.is_empty())
}

/// `(address, type, error)` of each server a topology description lists.
fn servers(message: &str) -> Vec<(String, String, Option<String>)> {
    message
        .split("{ Address: ")
        .skip(1)
        .map(|server| {
            let (address, rest) = server.split_once(", ").unwrap_or((server, ""));
            let kind = rest
                .strip_prefix("Type: ")
                .and_then(|r| r.split([',', ' ']).next())
                .unwrap_or("Unknown");
            let error = rest
                .split_once("Error: ")
                .map(|(_, e)| e.split(" }").next().unwrap_or(e).trim().to_string());
            (address.to_string(), kind.to_string(), error)
        })
        .collect()
}

fn server_kind(kind: &str) -> &str {
    match kind {
        "RsSecondary" => "a secondary",
        "RsPrimary" => "a primary",
        "RsArbiter" => "an arbiter",
        "RsOther" | "RsGhost" => "a replica set member that cannot serve",
        "Standalone" => "a standalone server",
        "Mongos" => "a mongos",
        _ => "unknown",
    }
}

/// A network error in words, from its kind and its text.
fn io_error(kind: std::io::ErrorKind, text: &str) -> String {
    use std::io::ErrorKind as Io;
    match kind {
        Io::ConnectionRefused => "connection refused".into(),
        Io::TimedOut => "timed out".into(),
        Io::ConnectionReset => "the connection was reset".into(),
        Io::ConnectionAborted | Io::UnexpectedEof | Io::BrokenPipe => {
            "the server closed the connection".into()
        }
        _ => io_error_text(text),
    }
}

/// A network error in words, from its text alone (the driver flattens a server's failure into
/// its topology description).
fn io_error_text(text: &str) -> String {
    let text = text.trim_start_matches("I/O error: ");
    let lower = text.to_lowercase();
    if lower.contains("connection refused") {
        "connection refused".into()
    } else if lower.contains("timed out") {
        "timed out".into()
    } else if lower.contains("invalid peer certificate") || lower.contains("certificate") {
        let problem = text.rsplit(": ").next().unwrap_or(text);
        format!(
            "the TLS handshake failed: the server's certificate is not trusted ({})",
            certificate_problem(problem)
        )
    } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
        "the TLS handshake failed: the server does not speak TLS".into()
    } else if lower.contains("failed to lookup address") || lower.contains("name or service") {
        "the host name could not be resolved".into()
    } else if lower.contains("connection reset") {
        "the connection was reset".into()
    } else if lower.contains("unexpected end of file") || lower.contains("early eof") {
        "the server closed the connection (does it expect TLS?)".into()
    } else {
        text.to_string()
    }
}

/// rustls's certificate verdicts in words.
fn certificate_problem(problem: &str) -> String {
    let said = match problem.trim() {
        "UnknownIssuer" => "signed by an unknown authority",
        "Expired" => "expired",
        "NotValidYet" => "not valid yet",
        "BadSignature" => "badly signed",
        "Revoked" => "revoked",
        p if p.starts_with("NotValidForName") || p.contains("not valid for name") => {
            "issued for another host name"
        }
        _ => return problem.trim().to_string(),
    };
    format!("{said}: {}", problem.trim())
}

/// Text with every embedded driver dump reduced to its message: `Kind: X, labels: {…},
/// source: …, server response: …` becomes `X`, however deeply nested.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("Kind: ") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "Kind: ".len()..];
        match after.find(", labels: ") {
            Some(end) => {
                out.push_str(&clean(&after[..end]));
                rest = skip_dump_fields(&after[end..]);
            }
            None => {
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Skips the `, labels: {…}`, `, source: …` and `, server response: …` fields of a dump.
fn skip_dump_fields(mut text: &str) -> &str {
    loop {
        let Some((field, after)) = [", labels: ", ", source: ", ", server response: "]
            .iter()
            .find_map(|f| text.strip_prefix(f).map(|a| (*f, a)))
        else {
            return text;
        };
        text = if let Some(rest) = after.strip_prefix("None") {
            rest
        } else if field == ", labels: " {
            skip_balanced(after, '{', '}')
        } else {
            skip_balanced(after, '(', ')')
        };
    }
}

/// Skips text up to and including the bracket that closes the first `open`.
fn skip_balanced(text: &str, open: char, close: char) -> &str {
    let mut depth = 0usize;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == open && !quoted => depth += 1,
            c if c == close && !quoted => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &text[i + c.len_utf8()..];
                }
            }
            _ => {}
        }
    }
    ""
}

/// Whitespace runs (line breaks included) as one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = r#"Server selection timeout: No available servers. Topology: { Type: Unknown, Servers: [ { Address: 127.0.0.1:1, Type: Unknown, Error: Kind: I/O error: Connection refused (os error 111), labels: {"SystemOverloadedError", "RetryableError"}, source: None, server response: None } ] }, labels: {}, source: None, server response: None"#;

    #[test]
    fn a_refused_server_selection_names_the_host_and_the_cause() {
        assert_eq!(
            server_selection(&clean(REFUSED)),
            "cannot reach 127.0.0.1:1: connection refused"
        );
    }

    #[test]
    fn dumps_are_reduced_to_their_message_however_nested() {
        let nested = r#"Kind: Connection pool for h:1 cleared because another operation failed with: Kind: I/O error: Connection reset by peer (os error 104), labels: {}, source: None, server response: None, labels: {"RetryableWriteError"}, source: Some(Error { kind: Io(Custom { kind: Other, error: "x)" }) }), server response: Some(RawDocumentBuf { data: "80000000016f6b" })"#;
        assert_eq!(
            clean(nested),
            "Connection pool for h:1 cleared because another operation failed with: I/O error: Connection reset by peer (os error 104)"
        );
    }

    #[test]
    fn servers_that_answered_but_do_not_fit_are_named() {
        let text = "Server selection timeout: None of the available servers suitable for criteria Primary. Topology: { Type: ReplicaSetNoPrimary, Set Name: rs0, Servers: [ { Address: a:1, Type: RsSecondary, Average RTT: 1ms }, { Address: b:2, Type: Unknown, Error: I/O error: timed out } ] }";
        assert_eq!(server_selection(text), "cannot reach b:2: timed out");
        let text = "Server selection timeout: None of the available servers suitable for criteria Primary. Topology: { Type: ReplicaSetNoPrimary, Servers: [ { Address: a:1, Type: RsSecondary, Average RTT: 1ms } ] }";
        assert_eq!(
            server_selection(text),
            "none of the servers that answered is a primary (a:1 is a secondary)"
        );
        let text = "Server selection timeout: No available servers. Topology: { Type: Unknown, Servers: [ { Address: a:1, Type: Unknown } ] }";
        assert_eq!(
            server_selection(text),
            "no answer from a:1 before the server selection timeout"
        );
    }

    #[test]
    fn a_replica_set_name_no_host_answers_to_is_named() {
        let text = "Server selection timeout: No available servers. Topology: { Type: ReplicaSetNoPrimary, Set Name: wrong }";
        assert_eq!(
            server_selection(text),
            "no host answered as a member of replica set wrong: check the hosts and replicaSet=wrong"
        );
    }

    #[test]
    fn tls_problems_are_named() {
        assert_eq!(
            io_error_text("I/O error: invalid peer certificate: UnknownIssuer"),
            "the TLS handshake failed: the server's certificate is not trusted (signed by an unknown authority: UnknownIssuer)"
        );
        assert_eq!(
            io_error_text("received corrupt message of type InvalidContentType"),
            "the TLS handshake failed: the server does not speak TLS"
        );
    }

    #[test]
    fn blocked_writes_name_the_privilege_that_passes_them() {
        let line = command(371, Some("UserWritesBlocked"), "User writes blocked");
        assert!(
            line.starts_with("User writes blocked (UserWritesBlocked, code 371): ")
                && line.contains("bypassWriteBlockingMode"),
            "{line}"
        );
    }

    #[test]
    fn a_missing_privilege_names_the_command_and_database() {
        assert_eq!(
            command(
                13,
                Some("Unauthorized"),
                "not authorized on admin to execute command { serverStatus: 1, $db: \"admin\", lsid: { id: UUID(\"0\") } }"
            ),
            "the user is not authorized to run serverStatus on database admin (Unauthorized, code 13)"
        );
        assert_eq!(
            command(11000, Some("DuplicateKey"), "E11000 duplicate key\nerror"),
            "E11000 duplicate key\nerror (DuplicateKey, code 11000)"
        );
    }

    #[test]
    fn context_and_cause_make_one_line() {
        let error = anyhow::anyhow!("refused\nfor a reason").context("copying shop.orders");
        assert_eq!(
            super::error(&error),
            "copying shop.orders: refused for a reason"
        );
    }
}
