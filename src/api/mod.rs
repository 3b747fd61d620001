//! The HTTP API: axum handlers, problem+json errors, auth, the OpenAPI
//! document. Handlers are thin: they parse input into domain types, call
//! the booking service or the store, and render the result.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{BoxError, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::accelerators::CatalogCache;
use crate::booking::checkout::CheckoutService;
use crate::booking::queue::QueueService;
use crate::booking::BookingService;
use crate::domain::customer::TokenHash;
use crate::domain::time::{Clock, Timestamp};
use crate::payments::sim::Simulator;
use crate::store::{Customer, DynStore};

pub mod catalog;
pub mod error;
pub mod extract;
pub mod holds;
pub mod idempotency;
pub mod openapi;
pub mod ops;
pub mod orders;
pub mod queue;
pub mod sessions;
pub mod traffic;

pub use error::ApiError;

/// Everything a handler may need. Cloned for every request, so it is one
/// `Arc`: a clone is one counter, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub store: DynStore,
    pub booking: BookingService,
    pub clock: Arc<dyn Clock>,
    /// SHA-256 of the admin token; compared in constant time.
    pub admin_token_hash: TokenHash,
    /// SHA-256 of the scanner token, when one is configured.
    pub scanner_token_hash: Option<TokenHash>,
    pub session_ttl: Duration,
    /// Token → customer, so a hot path does not read the database per request.
    pub sessions: moka::sync::Cache<TokenHash, (Customer, Timestamp)>,
    /// Catalog caches (events, venues, search, availability).
    pub catalog: Arc<CatalogCache>,
    pub metrics: Option<PrometheusHandle>,
    /// One permit per open seat-map stream.
    pub seat_streams: Arc<tokio::sync::Semaphore>,
    pub checkout: CheckoutService,
    /// Waiting rooms and admission tokens.
    pub queue: QueueService,
    /// Rate limits and load shedding.
    pub traffic: Arc<traffic::Traffic>,
    /// The in-process gateway simulator, when payments run on it.
    pub simulator: Option<Simulator>,
    /// How long a running idempotent request keeps its key before another
    /// node may take it over (its request timeout, and then some).
    pub idempotency_lease: Duration,
}

/// The payment side of [`AppState`].
pub struct Payments {
    pub checkout: CheckoutService,
    pub queue: QueueService,
    pub simulator: Option<Simulator>,
    /// Door staff's token for `POST /v1/checkins`.
    pub scanner_token: Option<String>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        booking: BookingService,
        payments: Payments,
        catalog: Arc<CatalogCache>,
        admin_token: &str,
        session_ttl: Duration,
        max_seat_streams: usize,
        request_timeout: Duration,
        traffic: traffic::Traffic,
        metrics: Option<PrometheusHandle>,
    ) -> AppState {
        AppState(Arc::new(Shared {
            store: booking.store().clone(),
            clock: booking.clock().clone(),
            booking,
            admin_token_hash: TokenHash::of(admin_token),
            scanner_token_hash: payments.scanner_token.as_deref().map(TokenHash::of),
            session_ttl,
            sessions: moka::sync::Cache::builder().max_capacity(200_000).time_to_live(Duration::from_secs(60)).build(),
            catalog,
            metrics,
            seat_streams: Arc::new(tokio::sync::Semaphore::new(max_seat_streams)),
            checkout: payments.checkout,
            queue: payments.queue,
            traffic: Arc::new(traffic),
            simulator: payments.simulator,
            idempotency_lease: request_timeout * 2,
        }))
    }
}

/// Request limits applied to every route.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    /// Venue seat maps can be large; they get their own limit.
    pub max_venue_body_bytes: usize,
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 256 * 1024,
            max_venue_body_bytes: 32 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Only the operator endpoints, for worker-role processes.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::not_found("not_found", "this process runs background jobs only") })
        .with_state(state)
}

pub fn router(state: AppState, limits: &HttpLimits) -> Router {
    router_with(state, limits, Router::new())
}

/// The full router plus `extra` routes, which get the same middleware
/// stack as `/v1` (traffic control included). The benchmark uses this to
/// add its no-op baseline route.
pub fn router_with(state: AppState, limits: &HttpLimits, extra: Router<AppState>) -> Router {
    let v1 = Router::new()
        .route("/sessions", post(sessions::create_session))
        .route("/venues", post(catalog::create_venue).layer(DefaultBodyLimit::max(limits.max_venue_body_bytes)))
        .route("/venues/{id}", get(catalog::get_venue))
        .route("/events", post(catalog::create_event).get(catalog::search_events))
        .route("/events/{id}", get(catalog::get_event).patch(catalog::patch_event))
        .route("/events/{id}/availability", get(catalog::availability))
        .route("/events/{id}/seats", get(catalog::seats))
        .route("/events/{id}/seats/stream", get(catalog::seats_stream))
        .route("/events/{id}/holds", post(holds::create_hold))
        .route("/events/{id}/queue", post(queue::join).get(queue::overview))
        .route("/events/{id}/queue/{entry_id}", get(queue::status))
        .route("/events/{id}/queue/{entry_id}/stream", get(queue::stream))
        .route("/holds/{id}", get(holds::get_hold).delete(holds::delete_hold))
        .route("/customers/me/holds", get(holds::my_holds))
        .route("/holds/{id}/checkout", post(orders::checkout))
        .route("/orders/{id}", get(orders::get_order))
        .route("/orders/{id}/refund", post(orders::refund_order))
        .route("/orders/{id}/cancel", post(orders::cancel_order))
        .route("/customers/me/orders", get(orders::my_orders))
        .route("/tickets/public-key", get(orders::public_key))
        .route("/tickets/{id}/qr.svg", get(orders::ticket_qr))
        .route("/checkins", post(orders::check_in))
        .layer(axum::middleware::from_fn_with_state(state.clone(), traffic::guard));

    let timeout = limits.request_timeout;
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(|| async { Json(openapi::ApiDoc::openapi()) }))
        .merge(extra.layer(axum::middleware::from_fn_with_state(state.clone(), traffic::guard)))
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "that method is not allowed here")
        })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    ApiError::unavailable("timeout", "the request took too long; retry")
                }))
                .timeout(timeout),
        )
        .with_state(state)
}
