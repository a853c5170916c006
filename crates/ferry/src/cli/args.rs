//! What was typed: the subcommands' arguments as clap parses them, and their conversion into
//! the plan's types (as ripgrep's low-level arguments become its high-level ones). Nothing
//! below the command line sees clap. Every single-valued flag can also come from a `FERRY_*`
//! environment variable, and every flag from the `--config` file (`config`).

use std::path::PathBuf;

use clap::Args;

use crate::plan::{Clusters, Endpoint, InputError, RunSettings};

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:27182";

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Check as `ferry migrate --drop` would (occupied namespaces will be dropped).
    #[arg(long)]
    pub drop: bool,
    /// Check as `ferry migrate --no-block-writes` would (the source stays writable at commit).
    #[arg(long, env = "FERRY_NO_BLOCK_WRITES")]
    pub no_block_writes: bool,
    /// Check as `ferry migrate --reversible` would (what a reverse will need).
    #[arg(long, env = "FERRY_REVERSIBLE")]
    pub reversible: bool,
    /// Print the report as JSON.
    #[arg(long, env = "FERRY_JSON")]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    /// Connection string of the destination replica set.
    #[arg(
        long,
        value_name = "URI",
        env = "FERRY_DESTINATION",
        hide_env_values = true
    )]
    pub destination: String,
    /// Read the destination user's password from this file instead of the connection string.
    #[arg(long, value_name = "FILE", env = "FERRY_DESTINATION_PASSWORD_FILE")]
    pub destination_password_file: Option<PathBuf>,
    /// Database on the destination that holds Ferry's own state.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "__ferry",
        env = "FERRY_STATE_DB"
    )]
    pub state_db: String,
    /// Really drop (without it, only say what would be dropped).
    #[arg(long)]
    pub yes: bool,
}

/// The two clusters and the namespaces a command works on.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Connection string of the source replica set.
    #[arg(long, value_name = "URI", env = "FERRY_SOURCE", hide_env_values = true)]
    pub source: String,
    /// Read the source user's password from this file instead of the connection string.
    #[arg(long, value_name = "FILE", env = "FERRY_SOURCE_PASSWORD_FILE")]
    pub source_password_file: Option<PathBuf>,
    /// Connection string of the destination replica set.
    #[arg(
        long,
        value_name = "URI",
        env = "FERRY_DESTINATION",
        hide_env_values = true
    )]
    pub destination: String,
    /// Read the destination user's password from this file instead of the connection string.
    #[arg(long, value_name = "FILE", env = "FERRY_DESTINATION_PASSWORD_FILE")]
    pub destination_password_file: Option<PathBuf>,
    /// Only this database (`db`) or collection (`db.coll`); repeatable (a list in --config).
    #[arg(long, value_name = "NS")]
    pub include: Vec<String>,
    /// Leave out this database or collection; repeatable (a list in --config).
    #[arg(long, value_name = "NS")]
    pub exclude: Vec<String>,
    /// Database on the destination that holds Ferry's own state.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "__ferry",
        env = "FERRY_STATE_DB"
    )]
    pub state_db: String,
}

/// How a migration runs, whoever starts it.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Drop the included namespaces and any earlier Ferry state on the destination first.
    #[arg(long)]
    pub drop: bool,
    /// Verify the destination while changes are applied and finish at commit, before COMMITTED;
    /// a difference that re-checking does not clear refuses the commit.
    #[arg(long, env = "FERRY_VERIFY")]
    pub verify: bool,
    /// Document changes are written in this many parallel lanes (by document).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32), env = "FERRY_APPLY_LANES")]
    pub apply_lanes: u16,
    /// How long to ride out network errors, restarts and elections without progress.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30m",
        env = "FERRY_RETRY_WINDOW"
    )]
    pub retry_window: String,
    /// How long to keep syncing, once it is safe to cut over, before stopping unattended.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "72h",
        env = "FERRY_CUTOVER_WINDOW"
    )]
    pub cutover_window: String,
    /// Leave the source's writes open at commit. By default Ferry blocks every user write on the
    /// source (setUserWriteBlockMode, MongoDB 6.0+) before it takes the commit point, so that a
    /// forgotten writer fails instead of writing where nobody reads; the block stays after
    /// COMMITTED (lift it with `db.adminCommand({setUserWriteBlockMode: 1, global: false})`).
    #[arg(long, env = "FERRY_NO_BLOCK_WRITES")]
    pub no_block_writes: bool,
    /// Keep a way back: verify at commit (as --verify), then record where the destination's
    /// changes start, so that `ferry reverse` can bring them back to the source (the
    /// destination must be a replica set).
    #[arg(long, env = "FERRY_REVERSIBLE")]
    pub reversible: bool,
}

/// The API token: required when the API listens beyond this machine.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// Token every API request must carry as `Authorization: Bearer <token>`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "FERRY_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
}

impl TokenArgs {
    pub fn token(&self) -> Option<String> {
        self.api_token.clone().filter(|t| !t.is_empty())
    }
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub clusters: ClusterArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Address of the HTTP API and dashboard.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_API_ADDR, env = "FERRY_API_ADDR")]
    pub api_addr: String,
    #[command(flatten)]
    pub token: TokenArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Connection string of the first cluster (`cluster0` in `/api/v1/start`).
    #[arg(
        long,
        value_name = "URI",
        env = "FERRY_CLUSTER0",
        hide_env_values = true
    )]
    pub cluster0: String,
    /// Read cluster0's password from this file instead of the connection string.
    #[arg(long, value_name = "FILE", env = "FERRY_CLUSTER0_PASSWORD_FILE")]
    pub cluster0_password_file: Option<PathBuf>,
    /// Connection string of the second cluster (`cluster1`).
    #[arg(
        long,
        value_name = "URI",
        env = "FERRY_CLUSTER1",
        hide_env_values = true
    )]
    pub cluster1: String,
    /// Read cluster1's password from this file instead of the connection string.
    #[arg(long, value_name = "FILE", env = "FERRY_CLUSTER1_PASSWORD_FILE")]
    pub cluster1_password_file: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "FERRY_HOST")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 27182, env = "FERRY_PORT")]
    pub port: u16,
    /// Database on the destination that holds Ferry's own state.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "__ferry",
        env = "FERRY_STATE_DB"
    )]
    pub state_db: String,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub token: TokenArgs,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Compare documents without regard to field order (MongoDB compares in order).
    #[arg(long, env = "FERRY_IGNORE_FIELD_ORDER")]
    pub ignore_field_order: bool,
    /// Print the report as JSON.
    #[arg(long, env = "FERRY_JSON")]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Address of the running migration's HTTP API.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_API_ADDR, env = "FERRY_API_ADDR")]
    pub api_addr: String,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Print the API's JSON reply instead of a summary.
    #[arg(long, env = "FERRY_JSON")]
    pub json: bool,
}

impl ClusterArgs {
    /// The two ends and the namespace filter, validated.
    pub async fn clusters(&self) -> Result<Clusters, InputError> {
        let source = Endpoint::parse("source", &self.source)
            .await?
            .with_password_file(self.source_password_file.as_deref())?;
        let destination = Endpoint::parse("destination", &self.destination)
            .await?
            .with_password_file(self.destination_password_file.as_deref())?;
        Clusters::new(
            source,
            destination,
            &self.include,
            &self.exclude,
            &self.state_db,
        )
    }
}

impl RunArgs {
    /// The run settings these flags give.
    pub fn settings(&self) -> RunSettings {
        RunSettings {
            drop: self.drop,
            verify: self.verify,
            apply_lanes: self.apply_lanes,
            retry_window: self.retry_window.clone(),
            cutover_window: self.cutover_window.clone(),
            block_writes: !self.no_block_writes,
            reversible: self.reversible,
        }
    }
}
