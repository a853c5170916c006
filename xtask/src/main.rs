//! Project tasks, so that a fresh machine needs one command for each:
//!
//! - `cargo xtask install-server`: build the pinned test server once per machine (cached);
//! - `cargo xtask test [ARGS]`: install the server and the test browser if missing, then run
//!   every test;
//! - `cargo xtask demo [--reverse]`: a live migration between two local servers while an
//!   application writes (and with `--reverse`, the way back after the commit);
//! - `cargo xtask bench`: Ferry's speed and memory against same-run baselines (docs/BENCHMARKS.md).

mod bench;
mod demo;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use testkit::server::{secantus_binary, secantus_root, SECANTUS_VERSION};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("install-server") => install_server(),
        Some("test") => install_server()
            .and_then(|()| install_browser())
            .and_then(|()| test(&args[1..])),
        Some("demo") => {
            let reverse = args.iter().any(|a| a == "--reverse");
            install_server().and_then(|()| demo::run(reverse))
        }
        Some("bench") => install_server().and_then(|()| bench::run()),
        _ => {
            eprintln!(
                "usage: cargo xtask <install-server | test [cargo test args] | demo [--reverse] | bench>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the stand-in server (`secantusd-rs`) into the per-machine cache unless it is there.
fn install_server() -> Result<()> {
    if secantus_binary().exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: building the test server secantusd-rs {SECANTUS_VERSION} (once per machine, about 10 minutes on two cores)"
    );
    if !have("cmake") {
        eprintln!("xtask: installing cmake, which the server's storage engine needs to build");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", "cmake"]))?;
    }
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "secantus-mdb",
                "--locked",
                "--ignore-rust-version",
            ])
            .arg("--version")
            .arg(format!("={SECANTUS_VERSION}"))
            .arg("--root")
            .arg(secantus_root()),
    )?;
    if !secantus_binary().exists() {
        bail!(
            "the server build finished but {} is missing",
            secantus_binary().display()
        );
    }
    Ok(())
}

/// Installs Debian's Chromium and ChromeDriver for the dashboard's browser test, unless there.
fn install_browser() -> Result<()> {
    if have("chromedriver") && std::path::Path::new("/usr/bin/chromium").exists() {
        return Ok(());
    }
    eprintln!("xtask: installing chromium and chromium-driver for the dashboard test");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq", "chromium", "chromium-driver"]))
}

/// Runs the whole test suite (extra arguments go to `cargo test`).
fn test(extra: &[String]) -> Result<()> {
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "--workspace"])
            .args(extra),
    )
}
