//! The `ferry` binary: parse the command line, set up logging, run, exit with the command's code.

use std::io::IsTerminal;

use clap::Parser;

fn main() {
    let cli = ferry::cli::Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
    let code = runtime.block_on(ferry::cli::run(cli));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}
