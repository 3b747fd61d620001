//! The catalog: venues and events. Admins write; anyone reads.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::{Admin, ApiJson, ApiPath, ApiQuery};
use super::AppState;
use crate::accelerators::CatalogChange;
use crate::domain::event::{Event, EventDraft, EventPatch, EventStatus};
use crate::domain::ids::{Category, EventId, VenueId};
use crate::domain::time::Timestamp;
use crate::domain::venue::{Venue, VenueDraft};
use crate::store::{Availability, Counts, EventQuery, SeatMapState, StoreError};
use sha2::{Digest, Sha256};

const SEARCH_DEFAULT_LIMIT: u32 = 20;
const SEARCH_MAX_LIMIT: u32 = 100;

fn cache(value: &'static str) -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static(value))]
}

/// A cacheable JSON answer with a strong `ETag` (a hash of the body); a
/// request whose `If-None-Match` names it gets `304 Not Modified`.
fn with_etag<T: Serialize>(req: &HeaderMap, cache_control: &'static str, body: &T) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(_) => return ApiError::internal().into_response(),
    };
    let digest = Sha256::digest(&bytes);
    let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest[..16]));
    let matches = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (headers, bytes).into_response()
}

pub(crate) fn parse_event_id(raw: &str) -> Result<EventId, ApiError> {
    EventId::parse(raw).ok_or_else(|| ApiError::not_found("event_not_found", "no such event"))
}

// ---------------------------------------------------------------- venues

#[utoipa::path(post, path = "/v1/venues", tag = "catalog", security(("admin" = [])), request_body = VenueDraft,
    responses((status = 201, body = Venue), (status = 422, description = "invalid_seat_map", body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn create_venue(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(draft): ApiJson<VenueDraft>,
) -> Result<impl IntoResponse, ApiError> {
    let venue = Venue::from_draft(VenueId::generate(), draft)?;
    state.store.insert_venue(&venue, state.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(venue)))
}

#[utoipa::path(get, path = "/v1/venues/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = Venue), (status = 404, description = "venue_not_found", body = Problem)))]
pub async fn get_venue(State(state): State<AppState>, ApiPath(id): ApiPath) -> Result<impl IntoResponse, ApiError> {
    let not_found = || ApiError::not_found("venue_not_found", "no such venue");
    let id = VenueId::parse(&id).ok_or_else(not_found)?;
    let venue = state.catalog.venue(&id).await?.ok_or_else(not_found)?;
    Ok((cache("public, max-age=60"), Json(venue.as_ref().clone())))
}

// ---------------------------------------------------------------- events

#[derive(Serialize, ToSchema)]
pub struct WaitingRoomView {
    pub enabled: bool,
    pub admission_rate_per_minute: u32,
    pub max_active_shoppers: u32,
    pub prequeue_opens_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub venue_id: String,
    pub title: String,
    pub category: String,
    pub city: String,
    pub starts_at: String,
    pub on_sale_at: String,
    pub currency: String,
    /// Minor units per seat category.
    pub prices: BTreeMap<String, i64>,
    pub max_tickets_per_customer: u32,
    pub hold_ttl_seconds: u32,
    pub waiting_room: Option<WaitingRoomView>,
    pub high_demand: bool,
    pub status: EventStatus,
    pub updated_at: String,
}

impl EventView {
    pub fn new(e: &Event, now: Timestamp) -> Self {
        EventView {
            id: e.id.to_string(),
            venue_id: e.venue_id.to_string(),
            title: e.title.clone(),
            category: e.category.to_string(),
            city: e.city.clone(),
            starts_at: e.starts_at.to_rfc3339(),
            on_sale_at: e.on_sale_at.to_rfc3339(),
            currency: e.currency.to_string(),
            prices: e.prices.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            max_tickets_per_customer: e.max_tickets_per_customer,
            hold_ttl_seconds: e.hold_ttl_seconds,
            waiting_room: e.waiting_room.as_ref().map(|w| WaitingRoomView {
                enabled: w.enabled,
                admission_rate_per_minute: w.admission_rate_per_minute,
                max_active_shoppers: w.max_active_shoppers,
                prequeue_opens_at: w.prequeue_opens_at.map(Timestamp::to_rfc3339),
            }),
            high_demand: e.high_demand,
            status: e.status(now),
            updated_at: e.updated_at.to_rfc3339(),
        }
    }
}

#[utoipa::path(post, path = "/v1/events", tag = "catalog", security(("admin" = [])), request_body = EventDraft,
    responses((status = 201, body = EventView), (status = 422, description = "invalid_event", body = Problem),
              (status = 404, description = "venue_not_found", body = Problem), (status = 403, body = Problem)))]
pub async fn create_event(
    _: Admin,
    State(state): State<AppState>,
    ApiJson(draft): ApiJson<EventDraft>,
) -> Result<impl IntoResponse, ApiError> {
    let not_found = || ApiError::not_found("venue_not_found", "no such venue");
    let venue_id = match draft.venue_id.as_deref() {
        None => return Err(ApiError::unprocessable("invalid_event", "venue_id is required")),
        Some(v) => VenueId::parse(v).ok_or_else(not_found)?,
    };
    let venue = state.store.venue(&venue_id).await?.ok_or_else(not_found)?;
    let now = state.clock.now();
    let event = Event::from_draft(EventId::generate(), draft, &venue, now)?;
    state.store.insert_event(&event, &venue).await?;
    // New events must show up in every node's cached searches at once.
    state.catalog.changed(CatalogChange::Event(event.id.clone()), now).await;
    Ok((StatusCode::CREATED, Json(EventView::new(&event, now))))
}

#[utoipa::path(patch, path = "/v1/events/{id}", tag = "catalog", security(("admin" = [])), request_body = EventPatch,
    params(("id" = String, Path)),
    responses((status = 200, body = EventView), (status = 422, description = "invalid_event", body = Problem),
              (status = 404, description = "event_not_found", body = Problem)))]
pub async fn patch_event(
    _: Admin,
    State(state): State<AppState>,
    ApiPath(id): ApiPath,
    ApiJson(patch): ApiJson<EventPatch>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_event_id(&id)?;
    // Optimistic concurrency: re-read and re-apply if another admin wrote first.
    for _ in 0..5 {
        let current =
            state.store.event(&id).await?.ok_or_else(|| ApiError::not_found("event_not_found", "no such event"))?;
        let now = state.clock.now();
        let next = current.patched(&patch, now)?;
        match state.store.update_event(&next).await {
            Ok(()) => {
                state.catalog.changed(CatalogChange::Event(id.clone()), now).await;
                if patch.high_demand == Some(true) {
                    state.catalog.changed(CatalogChange::Warm(id.clone()), now).await;
                }
                return Ok(Json(EventView::new(&next, now)));
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict("conflict", "the event kept changing; retry"))
}

#[utoipa::path(get, path = "/v1/events/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = EventView), (status = 404, description = "event_not_found", body = Problem)))]
pub async fn get_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_event_id(&id)?;
    let event =
        state.catalog.event(&id).await?.ok_or_else(|| ApiError::not_found("event_not_found", "no such event"))?;
    Ok(with_etag(&headers, "public, max-age=10", &EventView::new(&event, state.clock.now())))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Exact city, case-insensitive.
    pub city: Option<String>,
    /// Words in the title.
    pub q: Option<String>,
    pub category: Option<String>,
    /// Events starting at or after this RFC 3339 time.
    pub from: Option<String>,
    /// Events starting before this RFC 3339 time.
    pub to: Option<String>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1-100 (default 20).
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct SearchResponse {
    pub data: Vec<EventView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

fn encode_cursor(e: &Event) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", e.starts_at.as_millis(), e.id))
}

fn decode_cursor(s: &str) -> Option<(Timestamp, EventId)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
    let (ms, id) = raw.split_once(':')?;
    Some((Timestamp::from_millis(ms.parse().ok()?), EventId::parse(id)?))
}

fn bounded_text(name: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) {
        Some(s) if s.chars().count() > 100 => {
            Err(ApiError::bad_request("invalid_query", format!("{name} must be at most 100 characters")))
        }
        other => Ok(other),
    }
}

#[utoipa::path(get, path = "/v1/events", tag = "catalog", params(SearchParams),
    responses((status = 200, body = SearchResponse), (status = 400, description = "invalid_query", body = Problem)))]
pub async fn search_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> Result<impl IntoResponse, ApiError> {
    let time = |name: &str, v: Option<String>| -> Result<Option<Timestamp>, ApiError> {
        v.map(|s| {
            Timestamp::parse_rfc3339(&s)
                .ok_or_else(|| ApiError::bad_request("invalid_query", format!("{name} must be an RFC 3339 time")))
        })
        .transpose()
    };
    let limit = p.limit.unwrap_or(SEARCH_DEFAULT_LIMIT);
    if !(1..=SEARCH_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be 1-{SEARCH_MAX_LIMIT}")));
    }
    let category = match p.category.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(Category::parse(c).ok_or_else(|| ApiError::bad_request("invalid_query", "unknown category"))?),
    };
    let after = match p.cursor.as_deref() {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::bad_request("invalid_query", "bad cursor"))?),
    };
    let q = EventQuery {
        city: bounded_text("city", p.city)?,
        text: bounded_text("q", p.q)?,
        category,
        from: time("from", p.from)?,
        to: time("to", p.to)?,
        after,
        limit: limit + 1,
    };
    let found = state.catalog.search(&q).await?;
    let page = &found[..found.len().min(limit as usize)];
    let next_cursor = if found.len() > limit as usize { page.last().map(encode_cursor) } else { None };
    let now = state.clock.now();
    let data = page.iter().map(|e| EventView::new(e, now)).collect();
    Ok(with_etag(&headers, "public, max-age=10", &SearchResponse { data, next_cursor }))
}

// ------------------------------------------------------- availability and seats

#[derive(Serialize, ToSchema, Clone)]
pub struct CountsView {
    pub total: u64,
    pub available: u64,
    pub held: u64,
    pub sold: u64,
}

impl From<&Counts> for CountsView {
    fn from(c: &Counts) -> Self {
        CountsView { total: c.total, available: c.available, held: c.held, sold: c.sold }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AvailabilityView {
    pub total: u64,
    pub available: u64,
    /// Held or in checkout.
    pub held: u64,
    pub sold: u64,
    pub by_category: BTreeMap<String, CountsView>,
}

impl From<&Availability> for AvailabilityView {
    fn from(a: &Availability) -> Self {
        AvailabilityView {
            total: a.all.total,
            available: a.all.available,
            held: a.all.held,
            sold: a.all.sold,
            by_category: a.by_category.iter().map(|(k, v)| (k.to_string(), v.into())).collect(),
        }
    }
}

/// Counts may be up to about a second stale (cached per node).
#[utoipa::path(get, path = "/v1/events/{id}/availability", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = AvailabilityView), (status = 404, description = "event_not_found", body = Problem)))]
pub async fn availability(State(state): State<AppState>, ApiPath(id): ApiPath) -> Result<impl IntoResponse, ApiError> {
    let id = parse_event_id(&id)?;
    let a = state
        .catalog
        .availability(&id, state.clock.now())
        .await?
        .ok_or_else(|| ApiError::not_found("event_not_found", "no such event"))?;
    Ok((cache("public, max-age=1"), Json(AvailabilityView::from(a.as_ref()))))
}

#[derive(Serialize, ToSchema, Clone)]
pub struct SeatView {
    pub id: String,
    pub category: String,
    pub price: i64,
    /// `available`, `held` or `sold`.
    pub status: String,
}

#[derive(Serialize, ToSchema, Clone)]
pub struct GaAreaView {
    pub id: String,
    pub name: String,
    pub category: String,
    pub price: i64,
    pub capacity: u32,
    pub available: u32,
}

#[derive(Serialize, ToSchema, Clone)]
pub struct SeatsView {
    pub currency: String,
    pub seats: Vec<SeatView>,
    pub ga_areas: Vec<GaAreaView>,
}

fn seats_view(event: &Event, s: SeatMapState) -> SeatsView {
    let price = |c: &Category| event.price_of(c).unwrap_or(0);
    SeatsView {
        currency: event.currency.to_string(),
        seats: s
            .seats
            .into_iter()
            .map(|x| SeatView {
                price: price(&x.category),
                id: x.id.to_string(),
                category: x.category.to_string(),
                status: x.status.as_str().to_owned(),
            })
            .collect(),
        ga_areas: s
            .ga_areas
            .into_iter()
            .map(|a| GaAreaView {
                price: price(&a.category),
                id: a.id.to_string(),
                name: a.name,
                category: a.category.to_string(),
                capacity: a.capacity,
                available: a.available,
            })
            .collect(),
    }
}

/// Live seat status, read from the database; never cached.
#[utoipa::path(get, path = "/v1/events/{id}/seats", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = SeatsView), (status = 404, description = "event_not_found", body = Problem)))]
pub async fn seats(State(state): State<AppState>, ApiPath(id): ApiPath) -> Result<impl IntoResponse, ApiError> {
    let id = parse_event_id(&id)?;
    let not_found = || ApiError::not_found("event_not_found", "no such event");
    // Prices may be 10 s old; seat status is read live.
    let event = state.catalog.event(&id).await?.ok_or_else(not_found)?;
    let map = state.store.seat_map_state(&id, state.clock.now()).await?.ok_or_else(not_found)?;
    Ok((cache("no-store"), Json(seats_view(&event, map))))
}

/// Seat status as it changes: first a `snapshot` event (the same body as
/// `GET /v1/events/{id}/seats`), then `change` events
/// (`{"seats": [...], "status": "held"}`) and `ga` events with fresh GA
/// counts. After a `snapshot`, the client's map is exact again; one is
/// resent whenever this subscriber fell behind.
#[utoipa::path(get, path = "/v1/events/{id}/seats/stream", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "snapshot, change and ga events"),
              (status = 404, description = "event_not_found", body = Problem)))]
pub async fn seats_stream(State(state): State<AppState>, ApiPath(id): ApiPath) -> Result<impl IntoResponse, ApiError> {
    let id = parse_event_id(&id)?;
    let permit = state.seat_streams.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!("boxoffice_seat_streams_refused_total").increment(1);
        ApiError::unavailable("overloaded", "too many open seat streams on this node; retry shortly")
    })?;
    let event =
        state.catalog.event(&id).await?.ok_or_else(|| ApiError::not_found("event_not_found", "no such event"))?;
    let event = event.as_ref().clone();
    // Subscribe before the snapshot is read, so no change falls between.
    let mut changes = state.booking.feed().subscribe(&id);
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        // Held until the stream ends.
        let _permit = permit;
        let snapshot = |state: AppState, event: Event| async move {
            let map = state.store.seat_map_state(&event.id, state.clock.now()).await.ok().flatten()?;
            SseEvent::default().event("snapshot").json_data(seats_view(&event, map)).ok()
        };
        let Some(first) = snapshot(state.clone(), event.clone()).await else { return };
        if tx.send(first).await.is_err() {
            return;
        }
        let mut ga_dirty = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                msg = changes.recv() => match msg {
                    Ok(change) => {
                        ga_dirty |= change.ga.is_some();
                        if change.seats.is_empty() {
                            continue;
                        }
                        SseEvent::default().event("change").json_data(&change).ok()
                    }
                    Err(RecvError::Lagged(_)) => snapshot(state.clone(), event.clone()).await,
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick(), if ga_dirty => {
                    ga_dirty = false;
                    match state.store.seat_map_state(&event.id, state.clock.now()).await {
                        Ok(Some(map)) => {
                            let view = seats_view(&event, map);
                            SseEvent::default().event("ga").json_data(serde_json::json!({"ga_areas": view.ga_areas})).ok()
                        }
                        _ => None,
                    }
                }
            };
            if let Some(e) = next {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok((cache("no-store"), Sse::new(stream).keep_alive(KeepAlive::default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = EventId::generate();
        let raw = URL_SAFE_NO_PAD.encode(format!("{}:{}", 42, id));
        assert_eq!(decode_cursor(&raw), Some((Timestamp::from_millis(42), id)));
        assert_eq!(decode_cursor("!!!"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("42:evt_nope")), None);
    }
}
