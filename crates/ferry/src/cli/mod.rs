//! The command line: what was typed (`args`), one module per kind of subcommand, and how each
//! command ended ([`Exit`]), which `main` turns into the exit code.

mod args;
mod client;
mod config;
mod migrate;
mod tools;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::lifecycle::Direction;
use crate::plan::InputError;
pub use crate::surface::view::LogWriter;
use args::{ApiArgs, CheckArgs, MigrateArgs, ResetArgs, ServeArgs, VerifyArgs};

/// The version, with the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FERRY_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version = VERSION,
    about = "Live-migrate a MongoDB replica set into another one",
    after_help = "Every flag can be set in a TOML file given with --config (keys are the long flags without dashes); single-valued ones also as FERRY_* environment variables (FERRY_SOURCE for --source). Flags win over variables, variables over the file."
)]
pub struct Cli {
    /// Log lines as `text` or `json`.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"], env = "FERRY_LOG_FORMAT")]
    pub log_format: String,
    /// Read settings from this TOML file; flags and FERRY_* variables win over it.
    #[arg(long, global = true, value_name = "FILE", env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// What parsing the command line came to.
pub enum Parsed {
    /// A command to run.
    Run(Box<Cli>),
    /// Nothing to run: help or the version was printed, or a mistake was (one line).
    Exit(Exit),
}

/// Parses the command line with the `--config` file beneath it. A mistake prints one line that
/// says what to do and refuses (exit 2).
pub fn parse(args: Vec<OsString>) -> Parsed {
    let command = Cli::command();
    let args = match config::with_config(args, &command) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            return Parsed::Exit(Exit::Refused);
        }
    };
    let subcommand = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| command.find_subcommand(a).is_some())
        .map(str::to_string);
    match Cli::try_parse_from(args) {
        Ok(cli) => Parsed::Run(Box::new(cli)),
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            Parsed::Exit(Exit::Done)
        }
        Err(error) => {
            let mut line = one_line(&error.render().to_string(), subcommand.as_deref());
            if error.kind() == clap::error::ErrorKind::MissingRequiredArgument {
                line.push_str(" (each may also come from a FERRY_* variable or the --config file)");
            }
            eprintln!("{line}");
            Parsed::Exit(Exit::Refused)
        }
    }
}

/// clap's error, usage and tips as one line, ending with where the flags are listed.
fn one_line(rendered: &str, subcommand: Option<&str>) -> String {
    let mut line = String::new();
    for part in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if part.starts_with("Usage:") || part.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    let help = match subcommand {
        Some(name) => format!("ferry {name} --help"),
        None => "ferry --help".into(),
    };
    format!("{line}; see `{help}`")
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy everything, follow changes, and commit on the operator's word.
    Migrate(MigrateArgs),
    /// Go back after a cutover: follow the destination's changes from the commit of a
    /// `--reversible` migration and apply them to the source. Takes the forward migration's own
    /// arguments (--source is still the old cluster); commit it like a migration.
    Reverse(MigrateArgs),
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
    /// Print a completion script for a shell (e.g. `ferry completions bash > /etc/bash_completion.d/ferry`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), of ferry or of one command (`ferry man migrate | man -l -`).
    Man {
        /// The command whose page to print.
        command: Option<String>,
    },
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
        Command::Migrate(args) => migrate::migrate(args, Direction::Forward).await,
        Command::Reverse(args) => migrate::migrate(args, Direction::Reverse).await,
        Command::Serve(args) => migrate::serve(args).await,
        Command::Commit(args) => client::control(args, "commit").await,
        Command::Status(args) => client::status(args).await,
        Command::Pause(args) => client::control(args, "pause").await,
        Command::Resume(args) => client::control(args, "resume").await,
        Command::Verify(args) => tools::verify(args).await,
        Command::Check(args) => tools::check(args).await,
        Command::Reset(args) => tools::reset(args).await,
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "ferry", &mut std::io::stdout());
            Exit::Done
        }
        Command::Man { command } => man(command.as_deref()),
    }
}

/// Prints the manual page of ferry, or of one of its commands.
fn man(name: Option<&str>) -> Exit {
    let ferry = Cli::command();
    let page = match name {
        None => ferry,
        Some(name) => match ferry.find_subcommand(name) {
            Some(sub) => sub
                .clone()
                .display_name(format!("ferry-{name}"))
                .bin_name(format!("ferry {name}")),
            None => {
                eprintln!("error: `{name}` is not a ferry command; see `ferry --help`");
                return Exit::Refused;
            }
        },
    };
    match clap_mangen::Man::new(page).render(&mut std::io::stdout()) {
        Ok(()) => Exit::Done,
        Err(e) => {
            eprintln!("error: writing the manual page: {e}");
            Exit::Failed
        }
    }
}

fn input_error(error: InputError) -> Exit {
    eprintln!("error: {error}");
    Exit::Refused
}
