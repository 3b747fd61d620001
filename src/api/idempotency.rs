//! Stripe-style idempotency for our own `POST`s: the first response to an
//! `Idempotency-Key` is stored in the database (per customer, 24 hours) and
//! replayed; the same key with a different request gets 422
//! `idempotency_key_mismatch`; a request whose key is still running gets
//! 409 `idempotency_key_in_use`.
//!
//! A request that failed validation before it ran, or found the database
//! unavailable, stores nothing: its key stays free for a corrected retry.

use std::future::Future;

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::{ApiError, PROBLEM_JSON};
use super::AppState;
use crate::store::checkout::KeyClaim;
use crate::store::Customer;

/// Stored responses larger than this are not kept (none of ours is).
const MAX_STORED_BODY: usize = 1024 * 1024;

/// The `Idempotency-Key` header: required, 1–255 visible ASCII characters.
pub fn key(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Err(ApiError::bad_request(
            "idempotency_key_required",
            "send an Idempotency-Key header (any unique string up to 255 characters) so a retry cannot pay twice",
        ));
    };
    match value.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(k.to_owned()),
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// What a key is bound to: the operation and its parsed parameters.
pub fn fingerprint(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// Runs `request` at most once per (customer, key), replaying its stored
/// response afterwards.
pub async fn once<F>(state: &AppState, customer: &Customer, key: &str, fingerprint: [u8; 32], request: F) -> Response
where
    F: Future<Output = Result<Response, ApiError>>,
{
    let claim =
        state.store.claim_idempotency_key(&customer.id, key, fingerprint, state.clock.now(), state.idempotency_lease);
    match claim.await {
        Err(e) => ApiError::from(e).into_response(),
        Ok(KeyClaim::Mismatch) => ApiError::unprocessable(
            "idempotency_key_mismatch",
            "this Idempotency-Key was used with a different request; use a new key for a new request",
        )
        .into_response(),
        Ok(KeyClaim::InFlight) => {
            ApiError::conflict("idempotency_key_in_use", "a request with this Idempotency-Key is still running")
                .retry_after(1)
                .into_response()
        }
        Ok(KeyClaim::Replay { status, body }) => replay(status, body),
        Ok(KeyClaim::Claimed) => {
            let response = match request.await {
                Ok(r) => r,
                Err(e) if e.status() == StatusCode::SERVICE_UNAVAILABLE && e.code() == "unavailable" => {
                    // The database was busy. Usually nothing was written; if
                    // the card was charged before a write failed, a retry
                    // finds the hold in checkout (409) and reconciliation
                    // settles the payment.
                    if let Err(err) = state.store.abandon_idempotency_key(&customer.id, key).await {
                        tracing::warn!(error = %err, "could not free an idempotency key");
                    }
                    return e.into_response();
                }
                Err(e) => e.into_response(),
            };
            let (parts, body) = response.into_parts();
            let bytes = match to_bytes(body, MAX_STORED_BODY).await {
                Ok(b) => b,
                Err(_) => return ApiError::internal().into_response(),
            };
            let stored =
                state.store.finish_idempotency_key(&customer.id, key, parts.status.as_u16(), bytes.to_vec()).await;
            if let Err(e) = stored {
                // The request ran; the key's claim lapses after its lease.
                tracing::warn!(error = %e, "could not store an idempotent response");
            }
            Response::from_parts(parts, Body::from(bytes))
        }
    }
}

/// The stored answer to this exact request, if it has one: a retry gets it
/// even when something it needed the first time (an admission token) is
/// gone by now.
pub async fn stored(state: &AppState, customer: &Customer, key: &str, fingerprint: [u8; 32]) -> Option<Response> {
    match state.store.stored_response(&customer.id, key, fingerprint).await {
        Ok(Some((status, body))) => Some(replay(status, body)),
        _ => None,
    }
}

fn replay(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() { "application/json" } else { PROBLEM_JSON };
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_required_and_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(key(&h).unwrap_err().code(), "idempotency_key_required");
        h.insert("idempotency-key", HeaderValue::from_static("order-1"));
        assert_eq!(key(&h).unwrap(), "order-1");
        for bad in ["", "has space", &"x".repeat(256)] {
            h.insert("idempotency-key", HeaderValue::from_str(bad).unwrap());
            assert_eq!(key(&h).unwrap_err().code(), "invalid_idempotency_key", "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"a", b"b"]), fingerprint(&[b"a", b"b"]));
    }
}
