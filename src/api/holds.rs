//! Holds: `POST /v1/events/{id}/holds`, `GET` and `DELETE /v1/holds/{id}`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::catalog::parse_event_id;
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, CurrentCustomer};
use super::AppState;
use crate::domain::hold::{GaSelection, Hold, HoldDraft, HoldStatus, Selection};
use crate::domain::ids::HoldId;
use crate::domain::time::Timestamp;
use crate::store::ReleaseOutcome;

#[derive(Serialize, ToSchema)]
pub struct HoldView {
    pub id: String,
    pub status: HoldStatus,
    pub event_id: String,
    pub seats: Vec<String>,
    pub ga: Option<GaSelection>,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    pub created_at: String,
    pub expires_at: String,
}

impl HoldView {
    fn new(h: &Hold, now: Timestamp) -> Self {
        HoldView {
            id: h.id.to_string(),
            status: h.effective_status(now),
            event_id: h.event_id.to_string(),
            seats: h.seats.iter().map(ToString::to_string).collect(),
            ga: h.ga.clone(),
            amount: h.amount,
            currency: h.currency.to_string(),
            created_at: h.created_at.to_rfc3339(),
            expires_at: h.expires_at.to_rfc3339(),
        }
    }
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

fn hold_not_found() -> ApiError {
    ApiError::not_found("hold_not_found", "no such hold")
}

/// Holds seats for a few minutes: all of them or none.
#[utoipa::path(post, path = "/v1/events/{id}/holds", tag = "holds", security(("customer" = [])),
    params(("id" = String, Path)), request_body = HoldDraft,
    responses(
        (status = 201, body = HoldView),
        (status = 409, description = "seat_unavailable (with `unavailable`) or event_not_on_sale", body = Problem),
        (status = 422, description = "purchase_limit_exceeded, invalid_seat, empty_hold, invalid_hold_request", body = Problem),
        (status = 404, description = "event_not_found", body = Problem),
        (status = 403, description = "not_admitted: the event has a waiting room and no valid Admission-Token was sent", body = Problem),
        (status = 401, body = Problem)))]
pub async fn create_hold(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath(event_id): ApiPath,
    headers: HeaderMap,
    ApiJson(draft): ApiJson<HoldDraft>,
) -> Result<Response, ApiError> {
    let event_id = parse_event_id(&event_id)?;
    let selection = Selection::parse(draft)?;
    // An unknown event is answered by the booking path below.
    if let Some(event) = state.catalog.event(&event_id).await? {
        super::queue::require_admission(&state, &customer, &event, &headers).await?;
    }
    let placed = state.booking.place_hold(&customer, &event_id, selection).await?;
    // Lapsed holds this one reclaimed ended here, not in the sweeper, which
    // will not see them again: free their fans' places on a task of its own,
    // so a client that hangs up (dropping this handler) cannot stop it. The
    // answer waits for it, so the fan after them is in line at once.
    if !placed.reclaimed.is_empty() {
        let (queue, ended) = (state.queue.clone(), placed.reclaimed);
        let _ = tokio::spawn(async move { queue.holds_ended(&ended).await }).await;
    }
    let hold = placed.hold;
    let location = HeaderValue::from_str(&format!("/v1/holds/{}", hold.id)).map_err(|_| ApiError::internal())?;
    let body = Json(HoldView::new(&hold, state.clock.now()));
    Ok((StatusCode::CREATED, no_store(), [(header::LOCATION, location)], body).into_response())
}

#[utoipa::path(get, path = "/v1/holds/{id}", tag = "holds", security(("customer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = HoldView), (status = 404, description = "hold_not_found", body = Problem)))]
pub async fn get_hold(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath(id): ApiPath,
) -> Result<impl IntoResponse, ApiError> {
    let id = HoldId::parse(&id).ok_or_else(hold_not_found)?;
    let hold = state.booking.hold_for(&customer, &id).await?.ok_or_else(hold_not_found)?;
    Ok((no_store(), Json(HoldView::new(&hold, state.clock.now()))))
}

#[derive(Serialize, ToSchema)]
pub struct HoldList {
    pub data: Vec<HoldView>,
}

/// The caller's live holds, newest first (at most 100): how a fan finds a
/// hold whose answer never reached them.
#[utoipa::path(get, path = "/v1/customers/me/holds", tag = "holds", security(("customer" = [])),
    responses((status = 200, body = HoldList), (status = 401, body = Problem)))]
pub async fn my_holds(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
) -> Result<impl IntoResponse, ApiError> {
    let now = state.clock.now();
    let holds = state.store.customer_holds(&customer, now, 100).await?;
    Ok((no_store(), Json(HoldList { data: holds.iter().map(|h| HoldView::new(h, now)).collect() })))
}

/// Lets go of a hold; its seats are available at once. Releasing a hold
/// that already ended is a no-op.
#[utoipa::path(delete, path = "/v1/holds/{id}", tag = "holds", security(("customer" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, description = "hold_not_found", body = Problem),
              (status = 409, description = "hold_not_active: payment is under way", body = Problem)))]
pub async fn delete_hold(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath(id): ApiPath,
) -> Result<StatusCode, ApiError> {
    let id = HoldId::parse(&id).ok_or_else(hold_not_found)?;
    match state.booking.release(&customer, &id).await? {
        ReleaseOutcome::Released(h) | ReleaseOutcome::Lapsed { hold: h, .. } => {
            // Done shopping: the waiting room's next fan takes the place.
            state.queue.done_shopping(&customer, &h.event_id).await;
            Ok(StatusCode::NO_CONTENT)
        }
        ReleaseOutcome::AlreadyEnded(_) => Ok(StatusCode::NO_CONTENT),
        ReleaseOutcome::InCheckout(_) => {
            Err(ApiError::conflict("hold_not_active", "payment for this hold is under way; it cannot be released"))
        }
        ReleaseOutcome::Purchased(_) => Err(ApiError::conflict(
            "hold_not_active",
            "this hold was paid for; its seats belong to the order (an organizer can refund it)",
        )),
        ReleaseOutcome::NotFound => Err(hold_not_found()),
    }
}
