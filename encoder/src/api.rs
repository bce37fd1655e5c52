//! `encoder serve`: the job queue over HTTP.
//!
//! `POST /v1/jobs` (a `SubmitRequest` as JSON: 201 with the new job, 200 when
//! the same submission exists), `GET /v1/jobs/{id}`, `GET /v1/jobs?limit=N`,
//! `DELETE /v1/jobs/{id}` (cancel). Errors are `{"error": "…"}` with 400
//! (bad submission), 404 (no such job), 409 (conflicts with a job's state or
//! another active job of the title) or 5xx (the queue database).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::queue::{now_ms, Queue, QueueError, SubmitRequest};

/// The routes, over a shared queue.
pub fn router(queue: Arc<Queue>) -> Router {
    Router::new()
        .route("/v1/jobs", get(list).post(submit))
        .route("/v1/jobs/{id}", get(status).delete(cancel))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see /v1/jobs".into()) })
        .with_state(queue)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn run(
    queue: Arc<Queue>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(queue)).with_graceful_shutdown(shutdown).await
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl IntoResponse for QueueError {
    fn into_response(self) -> Response {
        let status = match &self {
            QueueError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueueError::NotFound(_) => StatusCode::NOT_FOUND,
            QueueError::Conflict(_) => StatusCode::CONFLICT,
            QueueError::Db(_) | QueueError::Migrate(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueueError::BadLocation(_) | QueueError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, self.to_string())
    }
}

async fn submit(State(queue): State<Arc<Queue>>, body: Bytes) -> Response {
    let req: SubmitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body is not a job submission: {e}")),
    };
    let job = match req.prepare().await {
        Ok(job) => job,
        Err(e) => return e.into_response(),
    };
    match queue.submit(&job, now_ms()).await {
        Ok(outcome) => {
            let code = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
            let location = format!("/v1/jobs/{}", outcome.id);
            (code, [(header::LOCATION, location)], Json(outcome)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn status(State(queue): State<Arc<Queue>>, Path(id): Path<String>) -> Response {
    match queue.status(&id).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    State(queue): State<Arc<Queue>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query: {e} (the only parameter is limit=N)")),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, format!("limit must be between 1 and 1000, got {limit}"));
    }
    match queue.list(limit).await {
        Ok(jobs) => Json(json!({ "jobs": jobs })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cancel(State(queue): State<Arc<Queue>>, Path(id): Path<String>) -> Response {
    if let Err(e) = queue.cancel(&id, now_ms()).await {
        return e.into_response();
    }
    match queue.status(&id).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => e.into_response(),
    }
}
