//! Checkout, orders, tickets and check-in:
//! `POST /v1/holds/{id}/checkout`, `GET /v1/orders/{id}`,
//! `GET /v1/customers/me/orders`, `GET /v1/tickets/{id}/qr.svg`,
//! `GET /v1/tickets/public-key`, `POST /v1/checkins`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{Admin, ApiJson, ApiPath, CurrentCustomer, Scanner};
use super::{idempotency, AppState};
use crate::booking::checkout::{CancelOutcome, CheckoutError, Receipt, RefundError};
use crate::domain::ids::{HoldId, OrderId, TicketId};
use crate::domain::order::OrderStatus;
use crate::domain::ticket;
use crate::store::checkout::{CheckIn, CheckoutRefusal, Ticket};

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// A gateway payment-method id such as `pm_card_visa` (the simulator
    /// also takes Stripe test card numbers).
    pub payment_method: String,
}

#[derive(Serialize, ToSchema)]
pub struct TicketView {
    pub id: String,
    /// The seat, or null for a general-admission place.
    pub seat: Option<String>,
    pub ga_area: Option<String>,
    /// The signed code (`BXT1.…`), checkable offline with the public key.
    pub code: String,
    /// `valid`, `used` or `void`.
    pub status: String,
    pub qr_url: String,
}

impl TicketView {
    fn new(t: &Ticket) -> Self {
        TicketView {
            id: t.id.to_string(),
            seat: t.seat.as_ref().map(ToString::to_string),
            ga_area: t.ga_area.as_ref().map(ToString::to_string),
            code: t.code.clone(),
            status: t.status.as_str().to_owned(),
            qr_url: format!("/v1/tickets/{}/qr.svg", t.id),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct OrderView {
    pub id: String,
    pub status: OrderStatus,
    pub hold_id: String,
    pub event_id: String,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    /// Why the last payment attempt failed: `card_declined`,
    /// `insufficient_funds`, `expired_card`, `incorrect_number`, `fraudulent`, …
    pub failure_code: Option<String>,
    /// For `requires_action`: where the fan completes 3-D Secure.
    pub action_url: Option<String>,
    pub tickets: Vec<TicketView>,
    pub created_at: String,
    pub updated_at: String,
}

impl OrderView {
    fn new(r: &Receipt) -> Self {
        let o = &r.order;
        OrderView {
            id: o.id.to_string(),
            status: o.status,
            hold_id: o.hold_id.to_string(),
            event_id: o.event_id.to_string(),
            amount: o.amount,
            currency: o.currency.to_string(),
            failure_code: o.failure_code.clone(),
            action_url: o.action_url.clone(),
            tickets: r.tickets.iter().map(TicketView::new).collect(),
            created_at: o.created_at.to_rfc3339(),
            updated_at: o.updated_at.to_rfc3339(),
        }
    }
}

fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

fn hold_not_found() -> ApiError {
    ApiError::not_found("hold_not_found", "no such hold")
}

fn order_not_found() -> ApiError {
    ApiError::not_found("order_not_found", "no such order")
}

impl From<CheckoutError> for ApiError {
    fn from(e: CheckoutError) -> Self {
        match e {
            CheckoutError::Store(s) => s.into(),
            CheckoutError::Refused(CheckoutRefusal::HoldNotFound) => hold_not_found(),
            CheckoutError::Refused(CheckoutRefusal::HoldExpired) => {
                ApiError::new(StatusCode::GONE, "hold_expired", "the hold ran out of time; hold the seats again")
            }
            CheckoutError::Refused(CheckoutRefusal::HoldNotActive { status, order }) => {
                let mut e = ApiError::conflict(
                    "hold_not_active",
                    format!("the hold is {}; only a held hold can be checked out", status.as_str()),
                )
                .with("hold_status", status.as_str());
                if let Some(o) = order {
                    e = e.with("order_id", o.id.to_string()).with("order_status", o.status.as_str());
                }
                e
            }
        }
    }
}

/// Pays for a hold. Needs `Idempotency-Key`: a retry with the same key and
/// body gets the first answer, never a second charge.
#[utoipa::path(post, path = "/v1/holds/{id}/checkout", tag = "orders", security(("customer" = [])),
    params(("id" = String, Path), ("Idempotency-Key" = String, Header)), request_body = CheckoutRequest,
    responses(
        (status = 200, description = "The order: confirmed (with tickets), payment_pending, requires_action or failed", body = OrderView),
        (status = 400, description = "idempotency_key_required, invalid_idempotency_key", body = Problem),
        (status = 403, description = "not_admitted: the event has a waiting room and no valid Admission-Token was sent", body = Problem),
        (status = 404, description = "hold_not_found", body = Problem),
        (status = 409, description = "hold_not_active, idempotency_key_in_use", body = Problem),
        (status = 410, description = "hold_expired", body = Problem),
        (status = 422, description = "idempotency_key_mismatch, invalid_payment_method", body = Problem),
        (status = 401, body = Problem)))]
pub async fn checkout(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath(id): ApiPath,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CheckoutRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency::key(&headers)?;
    let pm = req.payment_method.trim();
    if pm.is_empty() || pm.len() > 255 || pm.chars().any(char::is_control) {
        return Err(ApiError::unprocessable("invalid_payment_method", "payment_method must be 1 to 255 characters"));
    }
    let fingerprint = idempotency::fingerprint(&[b"checkout", id.as_bytes(), pm.as_bytes()]);
    // A retry of a request that already has its answer gets it, token or not.
    if let Some(replayed) = idempotency::stored(&state, &customer, &key, fingerprint).await {
        return Ok(replayed);
    }
    // A waiting room's admission is checked before the key is claimed: a
    // refusal for want of a token is not the request's stored answer.
    let hold = HoldId::parse(&id).ok_or_else(hold_not_found)?;
    let event_id = state.booking.hold_for(&customer, &hold).await?.map(|h| h.event_id);
    if let Some(event) = match &event_id {
        Some(e) => state.catalog.event(e).await?,
        None => None,
    } {
        super::queue::require_admission(&state, &customer, &event, &headers).await?;
    }
    Ok(idempotency::once(&state, &customer, &key, fingerprint, async {
        let receipt = state.checkout.checkout(&customer, &hold, pm).await?;
        if receipt.order.status == OrderStatus::Confirmed {
            // Done shopping: the waiting room's next fan takes the place.
            state.queue.done_shopping(&customer, &receipt.order.event_id).await;
        }
        Ok((no_store(), Json(OrderView::new(&receipt))).into_response())
    })
    .await)
}

#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", security(("customer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = OrderView), (status = 404, description = "order_not_found", body = Problem)))]
pub async fn get_order(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath(id): ApiPath,
) -> Result<impl IntoResponse, ApiError> {
    let id = OrderId::parse(&id).ok_or_else(order_not_found)?;
    let receipt = state.checkout.order_for(&customer, &id).await?.ok_or_else(order_not_found)?;
    Ok((no_store(), Json(OrderView::new(&receipt))))
}

/// Gives up on a payment that is still waiting (3-D Secure): it is
/// cancelled and the seats are released.
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", security(("customer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "The order, now failed with `canceled`", body = OrderView),
              (status = 404, description = "order_not_found", body = Problem),
              (status = 409, description = "order_not_cancellable: already paid, failed, or being processed", body = Problem)))]
pub async fn cancel_order(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath(id): ApiPath,
) -> Result<impl IntoResponse, ApiError> {
    let id = OrderId::parse(&id).ok_or_else(order_not_found)?;
    match state.checkout.cancel(&customer, &id).await?.ok_or_else(order_not_found)? {
        CancelOutcome::Cancelled(r) => Ok((no_store(), Json(OrderView::new(&r)))),
        CancelOutcome::TooLate(r) => Err(ApiError::conflict(
            "order_not_cancellable",
            format!("the payment can no longer be cancelled; the order is {}", r.order.status.as_str()),
        )
        .with("order_status", r.order.status.as_str())),
    }
}

#[derive(Serialize, ToSchema)]
pub struct OrderList {
    pub data: Vec<OrderView>,
}

/// The caller's orders, newest first (at most 100).
#[utoipa::path(get, path = "/v1/customers/me/orders", tag = "orders", security(("customer" = [])),
    responses((status = 200, body = OrderList), (status = 401, body = Problem)))]
pub async fn my_orders(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
) -> Result<impl IntoResponse, ApiError> {
    let mut data = Vec::new();
    for order in state.store.customer_orders(&customer.id, 100).await? {
        data.push(OrderView::new(&state.checkout.receipt(order).await?));
    }
    Ok((no_store(), Json(OrderList { data })))
}

impl From<RefundError> for ApiError {
    fn from(e: RefundError) -> Self {
        match e {
            RefundError::NotFound => order_not_found(),
            RefundError::NotConfirmed(o) => ApiError::conflict(
                "order_not_refundable",
                format!("only a confirmed order can be refunded; this one is {}", o.status.as_str()),
            )
            .with("order_status", o.status.as_str()),
            RefundError::Gateway(g) if g.outcome_unknown() || g.failure_code() == "gateway_unavailable" => {
                tracing::warn!(error = %g, "refund not confirmed by the gateway");
                ApiError::unavailable("gateway_unavailable", "the payment gateway did not confirm the refund; retry")
            }
            RefundError::Gateway(g) => {
                tracing::error!(error = %g, "the gateway refused a refund");
                ApiError::new(StatusCode::BAD_GATEWAY, "gateway_error", format!("the payment gateway refused: {g}"))
            }
            RefundError::Store(s) => s.into(),
        }
    }
}

/// Refunds a confirmed order in full: the money goes back, the seats become
/// available, the tickets stop admitting, and the fan is told. Repeating it
/// is harmless.
#[utoipa::path(post, path = "/v1/orders/{id}/refund", tag = "orders", security(("admin" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "The order, now refunded", body = OrderView),
              (status = 404, description = "order_not_found", body = Problem),
              (status = 409, description = "order_not_refundable", body = Problem),
              (status = 502, description = "gateway_error", body = Problem),
              (status = 503, description = "gateway_unavailable", body = Problem)))]
pub async fn refund_order(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath,
) -> Result<impl IntoResponse, ApiError> {
    let id = OrderId::parse(&id).ok_or_else(order_not_found)?;
    let receipt = state.checkout.refund(&id).await?;
    Ok((no_store(), Json(OrderView::new(&receipt))))
}

fn ticket_not_found() -> ApiError {
    ApiError::not_found("ticket_not_found", "no such ticket")
}

/// The ticket's code as a QR symbol, for the fan's own tickets.
#[utoipa::path(get, path = "/v1/tickets/{id}/qr.svg", tag = "orders", security(("customer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, content_type = "image/svg+xml", body = String),
              (status = 404, description = "ticket_not_found", body = Problem)))]
pub async fn ticket_qr(
    State(state): State<AppState>,
    CurrentCustomer(customer): CurrentCustomer,
    ApiPath(id): ApiPath,
) -> Result<Response, ApiError> {
    let id = TicketId::parse(&id).ok_or_else(ticket_not_found)?;
    let t = state.store.ticket(&id).await?.filter(|t| t.customer_id == customer.id).ok_or_else(ticket_not_found)?;
    let svg = ticket::qr_svg(&t.code).ok_or_else(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "private, max-age=3600")], svg)
        .into_response())
}

#[derive(Serialize, ToSchema)]
pub struct PublicKey {
    /// Always `Ed25519`.
    pub algorithm: String,
    /// The 32-byte public key, base64url without padding.
    pub public_key: String,
    /// How a code is built: `BXT1.<base64url claims JSON>.<base64url signature over "BXT1.<claims>">`.
    pub format: String,
}

/// The key that checks ticket codes offline.
#[utoipa::path(get, path = "/v1/tickets/public-key", tag = "orders", responses((status = 200, body = PublicKey)))]
pub async fn public_key(State(state): State<AppState>) -> impl IntoResponse {
    let key = PublicKey {
        algorithm: "Ed25519".into(),
        public_key: state.checkout.verifier().public_key(),
        format: "BXT1.<claims>.<signature>; claims = {\"t\": ticket id, \"e\": event id, \"s\": seat or GA:<area>}"
            .into(),
    };
    ([(header::CACHE_CONTROL, "public, max-age=3600")], Json(key))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInRequest {
    pub code: String,
    /// The event at this door: a ticket for another event is `invalid` (and
    /// not used up). Optional.
    #[serde(default)]
    pub event_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckInResult {
    /// `valid` (admitted now), `already_used`, or `invalid` (forged,
    /// tampered, unknown or refunded).
    pub result: String,
    pub ticket: Option<CheckedTicket>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckedTicket {
    pub id: String,
    pub event_id: String,
    pub seat: Option<String>,
    pub ga_area: Option<String>,
    pub used_at: Option<String>,
}

impl CheckedTicket {
    fn new(t: &Ticket) -> Self {
        CheckedTicket {
            id: t.id.to_string(),
            event_id: t.event_id.to_string(),
            seat: t.seat.as_ref().map(ToString::to_string),
            ga_area: t.ga_area.as_ref().map(ToString::to_string),
            used_at: t.used_at.map(|u| u.to_rfc3339()),
        }
    }
}

/// Scans a ticket at the door: each ticket is admitted once. Takes the
/// scanner token or the admin token.
#[utoipa::path(post, path = "/v1/checkins", tag = "orders", security(("admin" = [])),
    request_body = CheckInRequest,
    responses((status = 200, body = CheckInResult), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn check_in(
    State(state): State<AppState>,
    _door: Scanner,
    ApiJson(req): ApiJson<CheckInRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let invalid = || CheckInResult { result: "invalid".into(), ticket: None };
    let Ok(claims) = state.checkout.verifier().verify(req.code.trim()) else {
        return Ok((no_store(), Json(invalid())));
    };
    let Some(id) = TicketId::parse(&claims.ticket_id) else {
        return Ok((no_store(), Json(invalid())));
    };
    // The code must be the one issued, and for this door's event, before
    // the ticket is used up.
    let issued = state.store.ticket(&id).await?;
    let genuine = issued
        .as_ref()
        .is_some_and(|t| t.code == req.code.trim() && req.event_id.as_deref().is_none_or(|e| e == t.event_id.as_str()));
    if !genuine {
        return Ok((no_store(), Json(invalid())));
    }
    let result = match state.store.check_in(&id, state.clock.now()).await? {
        CheckIn::Admitted(t) => ("valid", Some(t)),
        CheckIn::AlreadyUsed(t) => ("already_used", Some(t)),
        CheckIn::Void(_) | CheckIn::NotFound => ("invalid", None),
    };
    Ok((no_store(), Json(CheckInResult { result: result.0.into(), ticket: result.1.as_ref().map(CheckedTicket::new) })))
}
