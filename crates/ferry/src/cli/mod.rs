//! The command line: what was typed (`args`), one module per kind of subcommand, and how each
//! command ended ([`Exit`]), which `main` turns into the exit code.

mod args;
mod client;
mod migrate;
mod tools;

use clap::{Parser, Subcommand};

use crate::plan::InputError;
use args::{ApiArgs, CheckArgs, MigrateArgs, ResetArgs, ServeArgs, VerifyArgs};

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Live-migrate a MongoDB replica set into another one"
)]
pub struct Cli {
    /// Log lines as `text` or `json`.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy everything, follow changes, and commit on the operator's word.
    Migrate(MigrateArgs),
    /// Serve the mongosync-compatible API and dashboard, idle until `POST /api/v1/start`.
    Serve(ServeArgs),
    /// Ask a running migration to commit (the application must have stopped writing).
    Commit(ApiArgs),
    /// Show a running migration's progress.
    Status(ApiArgs),
    /// Pause a running migration at a consistent point.
    Pause(ApiArgs),
    /// Resume a paused migration.
    Resume(ApiArgs),
    /// Prove that the destination holds what the source holds (exit 0 equal, 1 not).
    Verify(VerifyArgs),
    /// Check that a migration can succeed, without starting it (exit 0 ready, 2 blocked).
    Check(CheckArgs),
    /// Forget a migration: drop its state and the namespaces it wrote on the destination.
    Reset(ResetArgs),
}

/// How a command ended; `main` maps it to the process's exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done: COMMITTED, ready to migrate, equal, accepted.
    Done,
    /// The work failed, and the reason was printed: a migration FAILED, the clusters differ, a
    /// request was refused.
    Failed,
    /// Bad input or a failed pre-flight check; nothing was written.
    Refused,
    /// A verification that could not run.
    Unverified,
    /// COMMITTED, but the source took writes after the commit point, which the destination
    /// lacks.
    StrayWrites,
    /// Stopped by a signal before commit.
    Stopped(Signal),
}

/// The signal that stopped a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Exit {
    match cli.command {
        Command::Migrate(args) => migrate::migrate(args).await,
        Command::Serve(args) => migrate::serve(args).await,
        Command::Commit(args) => client::control(args, "commit").await,
        Command::Status(args) => client::status(args).await,
        Command::Pause(args) => client::control(args, "pause").await,
        Command::Resume(args) => client::control(args, "resume").await,
        Command::Verify(args) => tools::verify(args).await,
        Command::Check(args) => tools::check(args).await,
        Command::Reset(args) => tools::reset(args).await,
    }
}

fn input_error(error: InputError) -> Exit {
    eprintln!("error: {error}");
    Exit::Refused
}
