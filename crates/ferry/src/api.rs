//! The HTTP API, shaped like mongosync's so existing runbooks and scripts work:
//! `GET /api/v1/progress` and `POST /api/v1/commit`.

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::progress::{Progress, State};

/// The API's routes over one migration's progress.
pub fn router(progress: Progress) -> Router {
    Router::new()
        .route("/api/v1/progress", get(get_progress))
        .route("/api/v1/commit", post(commit))
        .with_state(progress)
}

async fn get_progress(AxumState(progress): AxumState<Progress>) -> Json<Value> {
    Json(progress.snapshot().to_api_json())
}

/// A mongosync-style error reply.
fn refusal(status: StatusCode, error: &str, description: String) -> Response {
    (
        status,
        Json(json!({ "success": false, "error": error, "errorDescription": description })),
    )
        .into_response()
}

async fn commit(AxumState(progress): AxumState<Progress>, body: Option<Json<Value>>) -> Response {
    if !body.is_some_and(|Json(body)| body.is_object()) {
        return refusal(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "the commit request needs a JSON object body: send {}".into(),
        );
    }
    let refused = progress.update(|s| {
        if s.commit_requested || matches!(s.state, State::Committing | State::Committed) {
            return None;
        }
        if s.can_commit {
            s.commit_requested = true;
            return None;
        }
        Some(match s.state {
            State::Failed => format!(
                "the migration FAILED and cannot be committed: {}",
                s.error.as_deref().unwrap_or("see the log")
            ),
            _ => format!(
                "the migration cannot be committed yet: it is in {} ({}) with lag {}; wait until canCommit is true",
                s.state.as_str(),
                s.phase.as_str(),
                s.lag_time_seconds
                    .map_or("unknown".to_string(), |l| format!("{l} s"))
            ),
        })
    });
    match refused {
        None => Json(json!({ "success": true })).into_response(),
        Some(description) => refusal(StatusCode::BAD_REQUEST, "InvalidStateError", description),
    }
}
