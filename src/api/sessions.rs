//! `POST /v1/sessions`: sign in with an email, get a bearer token.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::ApiJson;
use super::AppState;
use crate::domain::customer::{Email, SessionToken};
use crate::domain::ids::CustomerId;
use crate::store::{Customer, NewSession};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    #[schema(example = "fan@example.com")]
    pub email: String,
}

#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    /// Send as `Authorization: Bearer <session_token>`. Shown once.
    pub session_token: String,
    pub customer_id: String,
}

/// Every sign-in is a new customer (see `domain::customer`): without proof
/// of email ownership, a token must never open another session's holds.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = SessionRequest,
    responses((status = 201, body = SessionResponse), (status = 422, description = "invalid_email", body = Problem)))]
pub async fn create_session(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SessionRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let email = Email::parse(&req.email)
        .ok_or_else(|| ApiError::unprocessable("invalid_email", "that does not look like an email address"))?;
    let token = SessionToken::generate();
    let now = state.clock.now();
    let customer = Customer { id: CustomerId::generate(), email };
    let expires_at = now.plus(state.session_ttl);
    state
        .store
        .create_session(NewSession {
            customer: customer.clone(),
            token_hash: token.hash(),
            created_at: now,
            expires_at,
        })
        .await?;
    let body = SessionResponse { session_token: token.expose().to_owned(), customer_id: customer.id.to_string() };
    // Stored first: the cache only ever holds sessions the store has.
    super::extract::remember_session(&state, token.hash(), customer, expires_at);
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(body)))
}
