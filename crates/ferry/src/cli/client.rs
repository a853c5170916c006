//! `ferry status`, `commit`, `pause` and `resume`: clients of a running migration's API.

use std::time::Duration;

use super::args::ApiArgs;
use super::Exit;

/// Sends one request to a running migration's API and returns its JSON reply.
fn call_api(
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
) -> Result<serde_json::Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let bearer = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let response = match method {
        "POST" => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Authorization", &bearer)
            .send("{}"),
        _ => agent.get(&url).header("Authorization", &bearer).call(),
    }
    .map_err(|e| format!("no Ferry migration answers at {addr} ({e}); is `ferry migrate` running with this --api-addr?"))?;
    let body = response
        .into_body()
        .read_to_string()
        .map_err(|e| format!("reading the reply from {addr}: {e}"))?;
    serde_json::from_str(&body)
        .map_err(|_| format!("{addr} answered with something that is not Ferry's API: {body}"))
}

/// One call to the migration named by `args`; the reply's body, or `None` after saying why
/// there is none.
async fn request(args: &ApiArgs, method: &'static str, path: String) -> Option<serde_json::Value> {
    let addr = args.api_addr.clone();
    let token = args.token.token();
    let reply =
        tokio::task::spawn_blocking(move || call_api(&addr, token.as_deref(), method, &path))
            .await
            .expect("the API call panicked");
    match reply {
        Ok(body) => Some(body),
        Err(message) => {
            eprintln!("error: {message}");
            None
        }
    }
}

/// `ferry commit`, `ferry pause`, `ferry resume`: one POST to the running migration.
pub async fn control(args: ApiArgs, action: &'static str) -> Exit {
    let Some(body) = request(&args, "POST", format!("/api/v1/{action}")).await else {
        return Exit::Failed;
    };
    match body {
        body if args.json => {
            println!("{body}");
            if body["success"] == true {
                Exit::Done
            } else {
                Exit::Failed
            }
        }
        body if body["success"] == true => {
            println!(
                "{}",
                match action {
                    "commit" => "commit accepted: Ferry applies the last changes, restores constraints and reports COMMITTED",
                    "pause" => "paused at a consistent point; `ferry resume` continues",
                    _ => "resumed",
                }
            );
            if let Some(writes) = body["sourceWrites"].as_str() {
                println!("source writes: {writes}");
            }
            Exit::Done
        }
        body => {
            eprintln!(
                "{action} refused: {}",
                body["errorDescription"]
                    .as_str()
                    .unwrap_or("no reason given")
            );
            Exit::Failed
        }
    }
}

pub async fn status(args: ApiArgs) -> Exit {
    let Some(body) = request(&args, "GET", "/api/v1/progress".into()).await else {
        return Exit::Failed;
    };
    match body {
        body if args.json => {
            println!("{body}");
            Exit::Done
        }
        body => {
            let p = &body["progress"];
            println!(
                "state {}  ·  {}  ·  canCommit {}  ·  lag {}  ·  copied {} of {} bytes",
                p["state"].as_str().unwrap_or("?"),
                p["info"].as_str().unwrap_or("?"),
                p["canCommit"],
                p["lagTimeSeconds"],
                p["collectionCopy"]["estimatedCopiedBytes"],
                p["collectionCopy"]["estimatedTotalBytes"]
            );
            if let Some(error) = p["error"].as_str() {
                println!("error: {error}");
            }
            Exit::Done
        }
    }
}
