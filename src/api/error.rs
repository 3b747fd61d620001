//! The one error type of the HTTP boundary. Every failure a client can see
//! is an RFC 9457 `application/problem+json` document with a stable,
//! machine-readable `code`; the mapping from cause to status and code lives
//! here and nowhere else. Internal error text never reaches a client: it is
//! logged once, here, with its cause chain.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::booking::HoldError;
use crate::domain::event::{InvalidEvent, NotOnSale};
use crate::domain::hold::BadHoldRequest;
use crate::domain::venue::InvalidVenue;
use crate::store::{HoldRejection, StoreError};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The documented shape of every error body.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:boxoffice:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable and machine-readable, such as `seat_unavailable`.
    pub code: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    extra: Map<String, Value>,
    retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), extra: Map::new(), retry_after_secs: None }
    }

    /// Adds a member beside the standard ones, such as `unavailable`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "something went wrong on our side; it has been logged")
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(1)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("type".into(), format!("urn:boxoffice:problem:{}", self.code).into());
        body.insert("title".into(), self.status.canonical_reason().unwrap_or("Error").into());
        body.insert("status".into(), self.status.as_u16().into());
        body.insert("detail".into(), self.detail.into());
        body.insert("code".into(), self.code.into());
        body.extend(self.extra);
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        let mut res = (self.status, bytes).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(s) = self.retry_after_secs {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "database unavailable");
                ApiError::unavailable("unavailable", "the database is busy; retry shortly")
            }
            StoreError::Conflict => ApiError::conflict("conflict", "changed concurrently; retry"),
            StoreError::Duplicate(what) => {
                tracing::error!(what, "unexpected duplicate");
                ApiError::internal()
            }
            StoreError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "store failure");
                ApiError::internal()
            }
        }
    }
}

impl From<HoldRejection> for ApiError {
    fn from(r: HoldRejection) -> Self {
        match r {
            HoldRejection::EventNotFound => ApiError::not_found("event_not_found", "no such event"),
            HoldRejection::NotOnSale(status) => {
                let s = serde_json::to_value(status).unwrap_or(Value::Null);
                ApiError::conflict(
                    "event_not_on_sale",
                    format!("the event is not on sale (it is {})", s.as_str().unwrap_or("?")),
                )
                .with("event_status", s)
            }
            HoldRejection::LimitExceeded(l) => ApiError::unprocessable(
                "purchase_limit_exceeded",
                format!(
                    "at most {} tickets per customer; you hold {} and asked for {}",
                    l.limit, l.already, l.requested
                ),
            )
            .with("limit", l.limit)
            .with("already_held", l.already)
            .with("requested", l.requested),
            HoldRejection::InvalidSeats(ids) => ApiError::unprocessable(
                "invalid_seat",
                format!("not part of this event's seat map: {}", ids.join(", ")),
            )
            .with("invalid", ids),
            HoldRejection::Unavailable(ids) if ids.is_empty() => {
                ApiError::conflict("seat_unavailable", "not enough seats are available together for that request")
                    .with("unavailable", Vec::<String>::new())
            }
            HoldRejection::Unavailable(ids) => {
                ApiError::conflict("seat_unavailable", format!("already taken: {}", ids.join(", ")))
                    .with("unavailable", ids)
            }
        }
    }
}

impl From<HoldError> for ApiError {
    fn from(e: HoldError) -> Self {
        match e {
            HoldError::Rejected(r) => r.into(),
            HoldError::Store(s) => s.into(),
        }
    }
}

impl From<BadHoldRequest> for ApiError {
    fn from(e: BadHoldRequest) -> Self {
        match e {
            BadHoldRequest::Empty => ApiError::unprocessable("empty_hold", "ask for at least one seat or place"),
            BadHoldRequest::TooMany { requested } => ApiError::unprocessable(
                "purchase_limit_exceeded",
                format!(
                    "{requested} is more than any event allows in one hold ({})",
                    crate::domain::event::MAX_TICKETS_PER_HOLD
                ),
            )
            .with("requested", requested),
            BadHoldRequest::InvalidSeats(ids) => {
                let shown: Vec<String> = ids.iter().take(20).map(|s| s.chars().take(40).collect()).collect();
                ApiError::unprocessable("invalid_seat", "seat ids must be distinct, 1-16 of A-Z a-z 0-9 - _")
                    .with("invalid", shown)
            }
            BadHoldRequest::Malformed(why) => ApiError::unprocessable("invalid_hold_request", why),
        }
    }
}

impl From<InvalidVenue> for ApiError {
    fn from(e: InvalidVenue) -> Self {
        ApiError::unprocessable("invalid_seat_map", e.0.first().cloned().unwrap_or_default()).with("errors", e.0)
    }
}

impl From<InvalidEvent> for ApiError {
    fn from(e: InvalidEvent) -> Self {
        ApiError::unprocessable("invalid_event", e.0.first().cloned().unwrap_or_default()).with("errors", e.0)
    }
}

impl From<NotOnSale> for ApiError {
    fn from(n: NotOnSale) -> Self {
        HoldRejection::NotOnSale(n.0).into()
    }
}
