//! The `ferry` binary: parse the command line, set up logging, run, and turn how the command
//! ended into the exit code, the one place that policy lives.

use std::io::IsTerminal;

use ferry::cli::{Exit, LogWriter, Parsed, Signal};

fn main() {
    let cli = match ferry::cli::parse(std::env::args_os().collect()) {
        Parsed::Run(cli) => *cli,
        Parsed::Exit(exit) => std::process::exit(code(exit)),
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| {
                // On a terminal the live view tells the story; only warnings interrupt it.
                let terminal = std::io::stderr().is_terminal() && cli.log_format == "text";
                tracing_subscriber::EnvFilter::new(if terminal { "warn" } else { "info" })
            }),
        )
        .with_target(false);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let exit = runtime.block_on(ferry::cli::run(cli));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code(exit));
}

/// What each way a command can end means to a shell.
fn code(exit: Exit) -> i32 {
    match exit {
        Exit::Done => 0,
        Exit::Failed => 1,
        Exit::Refused => 2,
        Exit::Unverified => 3,
        Exit::StrayWrites => 4,
        Exit::Stopped(Signal::Interrupt) => 130,
        Exit::Stopped(Signal::Terminate) => 143,
    }
}
