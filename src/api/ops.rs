//! Operator endpoints outside `/v1`: liveness, readiness, metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::AppState;

/// The process is up. Touches nothing else.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200)))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready to take traffic: the database answers within a second. The
/// seat-lock fast path is reported (`in_process`, `ok`, `degraded`) but a
/// degraded one does not make the node unready.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200), (status = 503)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = tokio::time::timeout(Duration::from_secs(1), state.store.ping()).await;
    let (ok, db_state) = match db {
        Ok(Ok(())) => (true, "ok"),
        Ok(Err(_)) => (false, "error"),
        Err(_) => (false, "timeout"),
    };
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {
            "database": {"backend": state.store.backend(), "status": db_state},
            // Degraded locks do not make the node unready: it still sells,
            // from the database alone.
            "seat_locks": {"status": state.booking.locks().status().as_str()},
        },
    });
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CACHE_CONTROL, "no-store")], Json(body))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
