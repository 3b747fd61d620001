//! The waiting room: `POST /v1/events/{id}/queue`,
//! `GET /v1/events/{id}/queue/{entry_id}`, and the organizers' view
//! `GET /v1/events/{id}/queue` (admin).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::catalog::parse_event_id;
use super::error::{ApiError, Problem};
use super::extract::{Admin, ApiPath, CurrentCustomer};
use super::AppState;
use crate::booking::queue::{Entry, Overview, QueueError};
use crate::domain::admission::NotAdmitted;
use crate::domain::event::Event;
use crate::store::Customer;

#[derive(Serialize, ToSchema)]
pub struct EntryView {
    pub entry_id: String,
    /// `prequeue`, `waiting`, `admitted`, `expired`, or `sold_out` (every
    /// ticket is sold while the fan waits; not final: tickets that come back
    /// make it `waiting` again).
    pub status: String,
    /// 1-based; null in the pre-queue, before the draw at the on-sale.
    pub position: Option<u32>,
    pub estimated_wait_seconds: Option<u64>,
    /// Only when admitted: send it as `Admission-Token` to hold and pay.
    pub admission_token: Option<String>,
    /// When the admission token stops admitting.
    pub admitted_until: Option<String>,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        EntryView {
            entry_id: e.entry_id,
            status: e.status.to_owned(),
            position: e.position,
            estimated_wait_seconds: e.estimated_wait_seconds,
            admission_token: e.admission_token,
            admitted_until: e.admitted_until.map(|t| t.to_rfc3339()),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::EventNotFound => ApiError::not_found("event_not_found", "no such event"),
            QueueError::NoWaitingRoom => ApiError::conflict("no_waiting_room", "this event has no waiting room"),
            QueueError::NotOpen(at) => {
                ApiError::conflict("queue_not_open", format!("the waiting room opens at {}", at.to_rfc3339()))
                    .with("opens_at", at.to_rfc3339())
            }
            QueueError::Closed => ApiError::conflict("queue_closed", "the sale is over"),
            QueueError::SoldOut => ApiError::conflict("sold_out", "every ticket for this event is sold"),
            QueueError::EntryNotFound => ApiError::not_found("entry_not_found", "no such queue entry"),
            QueueError::Store(s) => s.into(),
            QueueError::Unavailable(e) => {
                tracing::warn!(error = format!("{e:#}"), "waiting room backend failed");
                ApiError::unavailable("queue_unavailable", "the waiting room is briefly unavailable; retry shortly")
            }
        }
    }
}

impl From<NotAdmitted> for ApiError {
    fn from(e: NotAdmitted) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "not_admitted",
            format!("{e}; join the waiting room and wait for your turn"),
        )
    }
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// The `Admission-Token` header, if any.
pub fn admission_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("admission-token").and_then(|v| v.to_str().ok())
}

/// Refuses a hold or checkout for an event with a waiting room unless the
/// request carries this customer's valid token for it.
pub async fn require_admission(
    state: &AppState,
    customer: &Customer,
    event: &Event,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    state.queue.admit(&customer.id, event, admission_token(headers)).await.map_err(|e| {
        metrics::counter!("boxoffice_queue_rejections_total").increment(1);
        ApiError::from(e)
    })
}

/// Joins the event's waiting room: 201 the first time, 200 with the same
/// entry after.
#[utoipa::path(post, path = "/v1/events/{id}/queue", tag = "queue", security(("customer" = [])),
    params(("id" = String, Path)),
    responses((status = 201, body = EntryView), (status = 200, description = "already in the queue", body = EntryView),
              (status = 404, description = "event_not_found", body = Problem),
              (status = 409, description = "no_waiting_room, queue_not_open, queue_closed, sold_out", body = Problem),
              (status = 503, description = "queue_unavailable", body = Problem)))]
pub async fn join(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath(id): ApiPath,
) -> Result<Response, ApiError> {
    let event = parse_event_id(&id)?;
    let (entry, new) = state.queue.join(&customer, &event).await?;
    if new {
        metrics::counter!("boxoffice_queue_joins_total").increment(1);
    }
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, no_store(), Json(EntryView::from(entry))).into_response())
}

/// The caller's place in the queue; while admitted, also the admission token.
#[utoipa::path(get, path = "/v1/events/{id}/queue/{entry_id}", tag = "queue", security(("customer" = [])),
    params(("id" = String, Path), ("entry_id" = String, Path)),
    responses((status = 200, body = EntryView), (status = 404, description = "entry_not_found", body = Problem),
              (status = 503, description = "queue_unavailable", body = Problem)))]
pub async fn status(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath((id, entry)): ApiPath<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let event = parse_event_id(&id)?;
    let entry = state.queue.status(&customer, &event, &entry).await?;
    Ok((no_store(), Json(EntryView::from(entry))))
}

/// The live state of an event's waiting room.
#[utoipa::path(get, path = "/v1/events/{id}/queue", tag = "queue", security(("admin" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = Overview), (status = 409, description = "no_waiting_room", body = Problem)))]
pub async fn overview(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath,
) -> Result<impl IntoResponse, ApiError> {
    let overview = state.queue.overview(&parse_event_id(&id)?).await?;
    Ok((no_store(), Json(overview)))
}

/// The caller's entry over server-sent events: an `entry` event now and at
/// every change (checked each second), until the turn comes or ends.
#[utoipa::path(get, path = "/v1/events/{id}/queue/{entry_id}/stream", tag = "queue", security(("customer" = [])),
    params(("id" = String, Path), ("entry_id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "`entry` events in the shape of EntryView"),
              (status = 404, description = "entry_not_found", body = Problem),
              (status = 503, description = "overloaded: too many open streams on this node; queue_unavailable", body = Problem)))]
pub async fn stream(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath((id, entry)): ApiPath<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let event = parse_event_id(&id)?;
    // The first read answers 404 before any stream is opened.
    let first = state.queue.status(&customer, &event, &entry).await?;
    let permit = state
        .seat_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::unavailable("overloaded", "too many open streams on this node; retry shortly"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(8);
    tokio::spawn(async move {
        let _permit = permit;
        let mut last: Option<Entry> = None;
        let mut current = Ok(first);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let Ok(now) = current else { return };
            if last.as_ref() != Some(&now) {
                let done = matches!(now.status, "admitted" | "expired");
                let Ok(msg) = SseEvent::default().event("entry").json_data(EntryView::from(now.clone())) else {
                    return;
                };
                if tx.send(msg).await.is_err() || done {
                    return;
                }
                last = Some(now);
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tick.tick() => {}
            }
            current = state.queue.status(&customer, &event, &entry).await;
        }
    });
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>);
    Ok((no_store(), Sse::new(events).keep_alive(KeepAlive::default())))
}
