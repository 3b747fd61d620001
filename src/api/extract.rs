//! Extractors that turn every malformed request into a problem document:
//! JSON bodies, query strings, and the two kinds of bearer auth.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::domain::customer::TokenHash;
use crate::domain::time::Timestamp;
use crate::store::Customer;

/// `axum::Json`, but a bad body becomes a problem document:
/// 400 `malformed_json` (not JSON, not UTF-8), 422 `invalid_body` (JSON of
/// the wrong shape), 415 `unsupported_media_type`, 413 `payload_too_large`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(r: JsonRejection) -> ApiError {
    let detail = r.body_text();
    match r {
        JsonRejection::JsonDataError(_) => ApiError::unprocessable("invalid_body", detail),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("malformed_json", detail),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
        }
        other => ApiError::bad_request("unreadable_body", other.body_text()),
    }
}

/// `axum::extract::Query` with 400 `invalid_query` on failure.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request("invalid_query", r.body_text()))
            }
            Err(r) => Err(ApiError::bad_request("invalid_query", r.body_text())),
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
    let value = value.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
    bearer_token(value).ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))
}

/// The token of an `Authorization: Bearer <token>` value (any case of the
/// scheme, surrounding blanks ignored): the one parse every caller shares.
pub(super) fn bearer_token(value: &str) -> Option<&str> {
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Some(token.trim())
        }
        _ => None,
    }
}

/// A signed-in customer, from `POST /v1/sessions`'s token.
pub struct CurrentCustomer(pub Customer);

impl FromRequestParts<AppState> for CurrentCustomer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(SignedIn(c)) = parts.extensions.get::<SignedIn>() {
            return Ok(CurrentCustomer(c.clone()));
        }
        let token = bearer(parts)?;
        if token.len() > 256 {
            return Err(ApiError::unauthorized("unknown or expired session token"));
        }
        // The traffic guard may have hashed this token already.
        let hash = match parts.extensions.get::<TokenHash>() {
            Some(h) => *h,
            None => TokenHash::of(token),
        };
        match session_customer(state, hash).await? {
            Some(c) => Ok(CurrentCustomer(c)),
            None => Err(ApiError::unauthorized("unknown or expired session token")),
        }
    }
}

/// The request's customer, as the traffic guard already resolved them from
/// the bearer token (the request's own extension, never client input).
#[derive(Clone)]
pub struct SignedIn(pub Customer);

/// The customer whose live session token hashes to `hash`, through the
/// session cache. The cache keeps each session's own expiry, so a cached
/// session ends exactly when the stored one does.
pub async fn session_customer(state: &AppState, hash: TokenHash) -> Result<Option<Customer>, ApiError> {
    let now = state.clock.now();
    if let Some((c, expires_at)) = state.sessions.get(&hash) {
        if now < expires_at {
            return Ok(Some(c));
        }
        state.sessions.invalidate(&hash);
    }
    Ok(match state.store.session_customer(hash, now).await? {
        Some((c, expires_at)) => {
            remember_session(state, hash, c.clone(), expires_at);
            Some(c)
        }
        None => None,
    })
}

/// Puts a stored session in this node's session cache, with its own expiry.
/// Sign-in calls it too, so a fan's first request after signing in needs no
/// database read; sessions are never revoked early, so the cache cannot
/// outlive what is stored.
pub fn remember_session(state: &AppState, hash: TokenHash, customer: Customer, expires_at: Timestamp) {
    state.sessions.insert(hash, (customer, expires_at));
}

/// The operator, holding `BOXOFFICE_ADMIN_TOKEN`. Any other bearer token
/// (a customer's, say) is 403; no token is 401.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = TokenHash::of(bearer(parts)?);
        if bool::from(presented.0.ct_eq(&state.admin_token_hash.0)) {
            Ok(Admin)
        } else {
            Err(ApiError::forbidden("this needs the admin token"))
        }
    }
}

/// Door staff: the scanner token (`BOXOFFICE_SCANNER_TOKEN`) or the admin
/// token. The scanner token opens check-in and nothing else.
pub struct Scanner;

/// Whether a bearer token is the admin or the scanner token (compared in
/// constant time).
pub(super) fn is_operator(state: &AppState, presented: TokenHash) -> bool {
    let admin = bool::from(presented.0.ct_eq(&state.admin_token_hash.0));
    admin || state.scanner_token_hash.is_some_and(|h| bool::from(presented.0.ct_eq(&h.0)))
}

impl FromRequestParts<AppState> for Scanner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if is_operator(state, TokenHash::of(bearer(parts)?)) {
            Ok(Scanner)
        } else {
            Err(ApiError::forbidden("this needs the scanner or admin token"))
        }
    }
}

/// Path segments as text: one (`ApiPath`) or several (`ApiPath<(String,
/// String)>`); undecodable segments are 404 `not_found`.
pub struct ApiPath<T = String>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(_) => Err(ApiError::not_found("not_found", "no such resource")),
        }
    }
}
