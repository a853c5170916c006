//! Raw command-line arguments turned into a validated migration plan: parsed connection strings
//! (kept secret, shown redacted), the namespace filter, and the API address. Everything here is
//! checked before anything touches a server, and each mistake is an [`InputError`] (exit code 2).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::filter::{NamespaceFilter, NsPattern};
use crate::lifecycle::Direction;
use crate::redact::redact_uri;

/// A mistake in what the user gave: reported in one line with the fix, exit code 2.
#[derive(Debug)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// One end of the migration.
#[derive(Clone)]
pub struct Endpoint {
    /// `source` or `destination`, for messages.
    pub role: &'static str,
    /// The connection string with its password hidden.
    pub redacted: String,
    options: ClientOptions,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.redacted)
    }
}

/// How long to look for a server before calling it unreachable.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(15);

impl Endpoint {
    /// Parses a connection string. Writes wait for a journaled majority, whatever it asks.
    pub async fn parse(role: &'static str, uri: &str) -> Result<Self, InputError> {
        let redacted = redact_uri(uri);
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            InputError(format!(
                "--{role} {redacted} is not a valid MongoDB connection string: {}; write it as mongodb://[user:password@]host[:port][,host...]/?replicaSet=NAME",
                redact_uri(&crate::explain::driver_error(&e))
            ))
        })?;
        options.app_name.get_or_insert_with(|| "ferry".to_string());
        options
            .server_selection_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        // Whatever the connection string asks (`w=1`, say): a write an election can roll back
        // must never be named by a checkpoint (DESIGN rule 5).
        options.write_concern = Some(crate::majority::write_concern());
        if let Some(mongodb::options::Tls::Enabled(tls)) = &options.tls {
            for (file, option) in [
                (&tls.ca_file_path, "tlsCAFile"),
                (&tls.cert_key_file_path, "tlsCertificateKeyFile"),
            ] {
                if let Some(path) = file {
                    std::fs::File::open(path).map_err(|e| {
                        InputError(format!(
                            "--{role}: cannot read {option} {}: {e}; give a readable PEM file",
                            path.display()
                        ))
                    })?;
                }
            }
        }
        Ok(Self {
            role,
            redacted,
            options,
        })
    }

    /// Takes the password from a file (`--source-password-file`), so that it stays off the
    /// command line; the connection string names the user. The file's trailing line break is
    /// not part of the password.
    pub fn with_password_file(mut self, path: Option<&Path>) -> Result<Self, InputError> {
        let Some(path) = path else {
            return Ok(self);
        };
        let role = self.role;
        let text = std::fs::read_to_string(path).map_err(|e| {
            InputError(format!(
                "cannot read --{role}-password-file {}: {e}; give a readable file that holds only the password",
                path.display()
            ))
        })?;
        let password = text.trim_end_matches(['\n', '\r']).to_string();
        match self.options.credential.as_mut() {
            Some(credential) if credential.username.is_some() => {
                credential.password = Some(password);
                Ok(self)
            }
            _ => Err(InputError(format!(
                "--{role}-password-file needs a user name in --{role}: write it as mongodb://USER@host/ (without the password)"
            ))),
        }
    }

    /// The user name and authSource the connection string authenticates with (`(none)` when it
    /// names no user).
    pub fn user(&self) -> (String, String) {
        let credential = self.options.credential.as_ref();
        let user = credential
            .and_then(|c| c.username.clone())
            .unwrap_or_else(|| "(none)".into());
        let source = credential
            .and_then(|c| c.source.clone())
            .or_else(|| self.options.default_database.clone())
            .unwrap_or_else(|| "admin".into());
        (user, source)
    }

    /// The hosts of the connection string, comma-separated.
    pub fn hosts(&self) -> String {
        let hosts: Vec<String> = self.options.hosts.iter().map(|h| h.to_string()).collect();
        hosts.join(",")
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::with_options(self.options.clone())?)
    }
}

/// Parses `90s`, `30m`, `2h` or a number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// The two ends and the namespace filter, validated.
#[derive(Clone, Debug)]
pub struct Clusters {
    pub source: Endpoint,
    pub destination: Endpoint,
    pub filter: NamespaceFilter,
}

impl Clusters {
    /// The two ends with a validated namespace filter.
    pub fn new(
        source: Endpoint,
        destination: Endpoint,
        include: &[String],
        exclude: &[String],
        state_db: &str,
    ) -> Result<Self, InputError> {
        Ok(Self {
            filter: namespace_filter(include, exclude, state_db)?,
            source,
            destination,
        })
    }
}

/// How a migration runs, as asked for (from the command line or `ferry serve`'s settings),
/// before validation.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub drop: bool,
    pub verify: bool,
    pub apply_lanes: u16,
    /// `90s`, `30m`, `2h` or seconds.
    pub retry_window: String,
    pub cutover_window: String,
    pub block_writes: bool,
    /// Keep the way back open: check what reversing needs, and record the destination's
    /// change-stream position at COMMITTED.
    pub reversible: bool,
}

/// The namespace filter from `--include`/`--exclude` patterns and the state database's name.
pub fn namespace_filter(
    include: &[String],
    exclude: &[String],
    state_db: &str,
) -> Result<NamespaceFilter, InputError> {
    let parse_all = |patterns: &[String], flag: &str| -> Result<Vec<NsPattern>, InputError> {
        patterns
            .iter()
            .map(|p| NsPattern::parse(p).map_err(|e| InputError(format!("--{flag}: {e}"))))
            .collect()
    };
    if state_db.is_empty() || state_db.contains(['.', '/', '\\', ' ', '"', '$']) {
        return Err(InputError(format!(
            "--state-db {state_db:?} is not a valid database name; use letters, digits and underscores, e.g. __ferry"
        )));
    }
    let filter = NamespaceFilter {
        include: parse_all(include, "include")?,
        exclude: parse_all(exclude, "exclude")?,
        state_db: state_db.to_string(),
    };
    if let Some(both) = filter.include.iter().find(|p| filter.exclude.contains(p)) {
        return Err(InputError(format!(
            "--include {both} and --exclude {both} contradict each other: give one of them"
        )));
    }
    Ok(filter)
}

/// A validated migration plan.
#[derive(Clone, Debug)]
pub struct Plan {
    pub source: Endpoint,
    pub destination: Endpoint,
    pub filter: NamespaceFilter,
    /// Clear the included namespaces (and earlier Ferry state) on the destination first.
    pub drop: bool,
    /// Verify the destination while changes are applied and at commit.
    pub verify: bool,
    /// Parallel lanes for document changes.
    pub apply_lanes: usize,
    /// How long to ride out transient faults without progress before failing.
    pub retry_window: Duration,
    /// How long the cutover window stays open once `canCommit` turns true.
    pub cutover_window: Duration,
    /// Block the source's user writes at commit, before the commit point is taken.
    pub block_writes: bool,
    /// `--reversible`: a forward migration that keeps the way back open.
    pub reversible: bool,
    /// Forward, or the reverse of a committed forward migration.
    pub direction: Direction,
}

impl Plan {
    pub fn new(clusters: Clusters, run: &RunSettings) -> Result<Self, InputError> {
        let duration = |text: &str, flag: &str, example: &str| {
            parse_duration(text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    InputError(format!(
                        "--{flag} {text:?} is not a duration: write it like {example}"
                    ))
                })
        };
        Ok(Self {
            source: clusters.source,
            destination: clusters.destination,
            filter: clusters.filter,
            drop: run.drop,
            // The way back starts from a point proven equal: `--reversible` verifies at commit.
            verify: run.verify || run.reversible,
            apply_lanes: usize::from(run.apply_lanes),
            retry_window: duration(&run.retry_window, "retry-window", "90s, 30m or 2h")?,
            cutover_window: duration(&run.cutover_window, "cutover-window", "72h or 90m")?,
            block_writes: run.block_writes,
            reversible: run.reversible,
            direction: Direction::Forward,
        })
    }

    /// The reverse of the forward migration this plan describes (`ferry reverse` takes the
    /// forward migration's own arguments): the destination's changes flow back to the source,
    /// whose data is already there, so nothing is dropped and nothing is copied.
    pub fn reversed(self) -> Result<Self, InputError> {
        if self.drop {
            return Err(InputError(
                "--drop cannot reverse a migration: it would drop the old source's data; leave it out".into(),
            ));
        }
        // In the reverse, the new cluster is the source and the old one the destination.
        let mut source = self.destination.clone();
        let mut destination = self.source.clone();
        source.role = "source";
        destination.role = "destination";
        Ok(Self {
            source,
            destination,
            reversible: false,
            direction: Direction::Reverse,
            ..self
        })
    }

    /// The two ends and the filter of this plan.
    pub fn clusters(&self) -> Clusters {
        Clusters {
            source: self.source.clone(),
            destination: self.destination.clone(),
            filter: self.filter.clone(),
        }
    }
}

/// Parses an API address; anything but a loopback address needs a token.
pub fn api_address(text: &str, token: Option<&str>) -> Result<SocketAddr, InputError> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        InputError(format!(
            "--api-addr {text:?} is not HOST:PORT; write it like 127.0.0.1:27182"
        ))
    })?;
    if !addr.ip().is_loopback() && token.is_none_or(str::is_empty) {
        return Err(InputError(format!(
            "the API on {addr} would be reachable from other machines: give --api-token (or FERRY_API_TOKEN) so that every request must carry it, or bind 127.0.0.1"
        )));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5d"), None);
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::Endpoint;

    #[tokio::test]
    async fn an_unreadable_ca_file_is_bad_input() {
        let error = Endpoint::parse(
            "source",
            "mongodb://h/?tls=true&tlsCAFile=/nonexistent/ca.pem",
        )
        .await
        .unwrap_err();
        assert!(
            error
                .0
                .contains("cannot read tlsCAFile /nonexistent/ca.pem"),
            "{error}"
        );
    }
}
