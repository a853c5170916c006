//! One `ferry migrate` run as the benchmark drives it: its API polled for the phases, the first
//! copied byte and the largest progress reply; its peak memory from `/proc`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use testkit::Server;

pub struct FerryRun {
    pub child: Child,
    api: String,
    /// When each phase (`info` of the progress) was first seen.
    pub phases: Vec<(String, Instant)>,
    /// When the progress first showed copied bytes.
    pub first_copied: Option<Instant>,
    /// The largest progress reply seen, in bytes.
    pub largest_reply: usize,
}

impl FerryRun {
    /// Starts `ferry migrate`; its log goes to `log`.
    pub fn start(
        ferry: &std::path::Path,
        source: &Server,
        destination: &Server,
        log: &std::path::Path,
    ) -> Result<Self> {
        let api = format!("127.0.0.1:{}", testkit::server::free_port()?);
        let child = Command::new(ferry)
            .args([
                "migrate",
                "--source",
                &source.uri(),
                "--destination",
                &destination.uri(),
                "--api-addr",
                &api,
            ])
            .args(
                std::env::var("FERRY_BENCH_FERRY_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("starting ferry")?;
        Ok(Self {
            child,
            api,
            phases: Vec::new(),
            first_copied: None,
            largest_reply: 0,
        })
    }

    pub fn progress(&mut self) -> Option<Value> {
        let mut response = ureq::get(&format!("http://{}/api/v1/progress", self.api))
            .call()
            .ok()?;
        let body = response.body_mut().read_to_string().ok()?;
        self.largest_reply = self.largest_reply.max(body.len());
        let progress = serde_json::from_str::<Value>(&body).ok()?["progress"].clone();
        if self.first_copied.is_none()
            && progress["collectionCopy"]["estimatedCopiedBytes"].as_u64() > Some(0)
        {
            self.first_copied = Some(Instant::now());
        }
        Some(progress)
    }

    /// Seconds from `started` to when `phase` was first seen.
    pub fn seen(&self, phase: &str, started: Instant) -> Option<f64> {
        self.phases
            .iter()
            .find(|(p, _)| p == phase)
            .map(|(_, at)| at.duration_since(started).as_secs_f64())
    }

    pub fn post(&self, action: &str) -> Result<()> {
        ureq::post(&format!("http://{}/api/v1/{action}", self.api))
            .header("Content-Type", "application/json")
            .send("{}")
            .with_context(|| format!("POST {action}"))?;
        Ok(())
    }

    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(progress) = self.progress() {
                if let Some(phase) = progress["info"].as_str() {
                    if !self.phases.iter().any(|(p, _)| p == phase) {
                        self.phases.push((phase.to_string(), Instant::now()));
                    }
                }
                if condition(&progress) {
                    return Ok(progress);
                }
                if progress["state"] == "FAILED" {
                    bail!("ferry FAILED: {}", progress["error"]);
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("ferry exited ({status}) while waiting for {what}");
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident memory so far (Linux VmHWM), in bytes.
    pub fn peak_memory(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }

    pub fn commit_and_wait(&mut self) -> Result<()> {
        self.wait_for("lag 0", Duration::from_secs(600), |p| {
            p["canCommit"] == true && p["lagTimeSeconds"] == 0
        })?;
        self.post("commit")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("ferry exited with {status}");
        }
        Ok(())
    }
}

/// Another build of Ferry (`FERRY_BENCH_BASELINE=path/to/ferry`) on the same source, into a
/// destination of its own: seconds from launch to `canCommit`, or `None` when no baseline is
/// set. Its log goes beside Ferry's, named after `label`.
pub fn baseline_to_can_commit(
    ferry: &std::path::Path,
    source: &Server,
    label: &str,
) -> Result<Option<f64>> {
    let Some(baseline) = std::env::var_os("FERRY_BENCH_BASELINE") else {
        return Ok(None);
    };
    eprintln!(
        "bench: baseline ferry ({}), {label}, launch to canCommit",
        baseline.to_string_lossy()
    );
    let other = Server::start()?;
    let log = ferry.with_file_name(format!("bench-baseline-{label}.log"));
    let started = Instant::now();
    let mut run = FerryRun::start(std::path::Path::new(&baseline), source, &other, &log)?;
    run.wait_for("canCommit", Duration::from_secs(3600), |p| {
        p["canCommit"] == true
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = run.child.kill();
    let _ = run.child.wait();
    Ok(Some(seconds))
}
