//! The HTTP API, shaped like mongosync's so that runbooks and scripts written for it keep
//! working (`/api/v1/start`, `progress`, `pause`, `resume`, `commit`), plus what mongosync lacks:
//! per-collection progress, `extend` for the cutover window, Prometheus `/metrics`, and the
//! dashboard at `/`. With a token, every request must carry `Authorization: Bearer <token>`.

use axum::extract::{Query, Request, State as AxumState};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::control::Controller;
use crate::plan::{Endpoint, Plan};

/// What `ferry serve` knows before `/api/v1/start`: the two clusters and the run settings.
#[derive(Clone)]
pub struct ServeSettings {
    pub cluster0: Endpoint,
    pub cluster1: Endpoint,
    pub state_db: String,
    pub run: crate::plan::RunSettings,
}

#[derive(Clone)]
struct App {
    controller: Controller,
    token: Option<String>,
    serve: Option<ServeSettings>,
}

/// The API's routes over one controller; `serve` is set for `ferry serve` (which starts idle).
pub fn router(
    controller: Controller,
    token: Option<String>,
    serve: Option<ServeSettings>,
) -> Router {
    let app = App {
        controller,
        token,
        serve,
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/progress", get(progress))
        .route("/api/v1/collections", get(collections))
        .route("/api/v1/start", post(start))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/commit", post(commit))
        .route("/api/v1/extend", post(extend))
        .route("/api/v1/reverse", post(reverse))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(app.clone(), require_token))
        .with_state(app)
}

/// A mongosync-style error reply.
fn refusal(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    let description = description.into();
    (
        status,
        Json(json!({ "success": false, "error": error, "errorDescription": description })),
    )
        .into_response()
}

fn success() -> Response {
    Json(json!({ "success": true })).into_response()
}

async fn require_token(
    AxumState(app): AxumState<App>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = app.token.as_deref() else {
        return next.run(request).await;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // The dashboard page itself may carry the token in its address (?token=...).
    let in_query =
        request.uri().path() == "/" && query.get("token").map(String::as_str) == Some(token);
    if bearer.is_some_and(|b| constant_time_eq(b.as_bytes(), token.as_bytes())) || in_query {
        next.run(request).await
    } else {
        refusal(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this API needs `Authorization: Bearer <token>` with the token given to --api-token",
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("../../assets/dashboard.html"))
}

async fn progress(AxumState(app): AxumState<App>) -> Json<Value> {
    Json(app.controller.progress().snapshot().to_api_json())
}

/// The collections' rows a page of `GET /api/v1/collections` holds unless `limit` says fewer,
/// and at most.
const PAGE_ROWS: usize = 500;
const MAX_PAGE_ROWS: usize = 5000;

/// Per-collection progress, a page at a time (`?offset=N&limit=N`): the progress reply lists
/// only the collections in flight, so that it stays small with any number of collections.
async fn collections(
    AxumState(app): AxumState<App>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let number = |name: &str, default: usize| match query.get(name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| format!("{name} must be a whole number, not {text:?}")),
    };
    let (offset, limit) = match (number("offset", 0), number("limit", PAGE_ROWS)) {
        (Ok(offset), Ok(limit)) => (offset, limit.min(MAX_PAGE_ROWS)),
        (Err(why), _) | (_, Err(why)) => {
            return refusal(StatusCode::BAD_REQUEST, "InvalidParameter", why)
        }
    };
    let snapshot = app.controller.progress().snapshot();
    Json(json!({
        "collections": snapshot.collections.page(offset, limit),
        "total": snapshot.collections.len(),
        "offset": offset,
        "limit": limit,
        "counts": snapshot.collections.counts(),
    }))
    .into_response()
}

async fn metrics(AxumState(app): AxumState<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        super::metrics::render(&app.controller.progress().snapshot()),
    )
        .into_response()
}

/// Requests with a body must send a JSON object (mongosync's scripts send `{}`).
fn object_body(body: Option<Json<Value>>) -> Option<Value> {
    match body {
        Some(Json(value)) if value.is_object() => Some(value),
        _ => None,
    }
}

fn bad_body() -> Response {
    refusal(
        StatusCode::BAD_REQUEST,
        "InvalidRequest",
        "the request needs a JSON object body: send {}",
    )
}

/// mongosync's namespace list: `[{"database": "db", "collections": ["a", "b"]}]`.
fn namespace_patterns(list: Option<&Value>) -> Result<Vec<String>, String> {
    let mut patterns = Vec::new();
    for entry in list.and_then(Value::as_array).into_iter().flatten() {
        let db = entry["database"]
            .as_str()
            .ok_or("each namespace entry needs a \"database\"")?;
        if entry.get("collectionsRegex").is_some() {
            return Err("collectionsRegex is not supported: list the collections by name".into());
        }
        match entry.get("collections").and_then(Value::as_array) {
            Some(colls) if !colls.is_empty() => {
                for coll in colls {
                    let coll = coll.as_str().ok_or("collection names must be strings")?;
                    patterns.push(crate::namespace::Namespace::new(db, coll).to_string());
                }
            }
            _ => patterns.push(db.to_string()),
        }
    }
    Ok(patterns)
}

async fn start(AxumState(app): AxumState<App>, body: Option<Json<Value>>) -> Response {
    let Some(body) = object_body(body) else {
        return bad_body();
    };
    let Some(serve) = app.serve.clone() else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "InvalidStateError",
            "this migration was started by `ferry migrate`; it cannot be started again",
        );
    };
    let ends = (body["source"].as_str(), body["destination"].as_str());
    let (source, destination) = match ends {
        (Some("cluster0"), Some("cluster1")) => (serve.cluster0, serve.cluster1),
        (Some("cluster1"), Some("cluster0")) => (serve.cluster1, serve.cluster0),
        _ => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "\"source\" and \"destination\" must name \"cluster0\" and \"cluster1\"",
            )
        }
    };
    match body["buildIndexes"].as_str() {
        None | Some("afterDataCopy") | Some("beforeDataCopy") => {}
        Some(other) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                format!("buildIndexes {other:?} is not supported: use afterDataCopy"),
            )
        }
    }
    let plan = namespace_patterns(body.get("includeNamespaces"))
        .and_then(|include| Ok((include, namespace_patterns(body.get("excludeNamespaces"))?)))
        .and_then(|(include, exclude)| {
            crate::plan::namespace_filter(&include, &exclude, &serve.state_db).map_err(|e| e.0)
        })
        .and_then(|filter| {
            let mut run = serve.run.clone();
            run.verify |= body["verification"]["enabled"] == true;
            run.reversible |= body["reversible"] == true;
            Plan::new(
                crate::plan::Clusters {
                    source,
                    destination,
                    filter,
                },
                &run,
            )
            .map_err(|e| e.0)
        });
    match plan {
        Ok(plan) => match app.controller.start(plan) {
            Ok(()) => success(),
            Err(e) => refusal(StatusCode::BAD_REQUEST, "InvalidStateError", e),
        },
        Err(e) => refusal(StatusCode::BAD_REQUEST, "InvalidRequest", e),
    }
}

async fn pause(AxumState(app): AxumState<App>, body: Option<Json<Value>>) -> Response {
    if object_body(body).is_none() {
        return bad_body();
    }
    match app.controller.pause().await {
        Ok(()) => success(),
        Err(e) => refusal(StatusCode::BAD_REQUEST, "InvalidStateError", e),
    }
}

async fn resume(AxumState(app): AxumState<App>, body: Option<Json<Value>>) -> Response {
    if object_body(body).is_none() {
        return bad_body();
    }
    match app.controller.resume() {
        Ok(()) => success(),
        Err(e) => refusal(StatusCode::BAD_REQUEST, "InvalidStateError", e),
    }
}

async fn extend(AxumState(app): AxumState<App>, body: Option<Json<Value>>) -> Response {
    if object_body(body).is_none() {
        return bad_body();
    }
    match app.controller.extend() {
        Ok(()) => success(),
        Err(e) => refusal(StatusCode::BAD_REQUEST, "InvalidStateError", e),
    }
}

async fn reverse(AxumState(app): AxumState<App>, body: Option<Json<Value>>) -> Response {
    if object_body(body).is_none() {
        return bad_body();
    }
    if app.serve.is_none() {
        return refusal(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "POST /api/v1/reverse is served by `ferry serve`; after `ferry migrate --reversible`, run `ferry reverse` with the same arguments",
        );
    }
    match app.controller.reverse().await {
        Ok(()) => success(),
        Err(e) => refusal(StatusCode::BAD_REQUEST, "InvalidStateError", e),
    }
}

async fn commit(AxumState(app): AxumState<App>, body: Option<Json<Value>>) -> Response {
    if object_body(body).is_none() {
        return bad_body();
    }
    let refused = app.controller.request_commit();
    match refused {
        Ok(None) => Json(json!({
            "success": true,
            "sourceWrites": "to be blocked: Ferry blocks every user write to the source (setUserWriteBlockMode) before it takes the commit point; sourceWritesBlocked in the progress reply says whether the source could",
        }))
        .into_response(),
        Ok(Some(reason)) => Json(json!({
            "success": true,
            "sourceWrites": format!("open ({reason}): stop every application writing to the source; writes after the commit point are not applied, and are reported in strayWrites"),
        }))
        .into_response(),
        Err(description) => refusal(StatusCode::BAD_REQUEST, "InvalidStateError", description),
    }
}

#[cfg(test)]
mod tests {
    use super::namespace_patterns;
    use serde_json::json;

    #[test]
    fn mongosync_namespace_lists_become_patterns() {
        let list = json!([{ "database": "shop" }, { "database": "crm", "collections": ["people", "leads"] }]);
        assert_eq!(
            namespace_patterns(Some(&list)).unwrap(),
            ["shop", "crm.people", "crm.leads"]
        );
        assert!(namespace_patterns(Some(&json!([{ "collections": ["x"] }]))).is_err());
        assert_eq!(namespace_patterns(None).unwrap(), Vec::<String>::new());
    }
}
