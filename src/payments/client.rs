//! A Stripe-compatible HTTP client for the PaymentIntents subset.
//!
//! - Every try has a timeout, and every call (retries included) a deadline;
//!   every write carries an `Idempotency-Key`.
//! - Retries back off with full jitter and reuse the same key, so a retry
//!   of a charge that did go through gets the stored result, never a second
//!   charge. `Retry-After` on a 429 is honoured.
//! - A [`Breaker`] opens on repeated gateway failures and then answers at
//!   once, without sending, until its cooldown ends.
//! - Errors are sorted into definite ones (a decline, an invalid request)
//!   and [`GatewayError::Unknown`]: once any try of a write may have reached
//!   the gateway, a failure is reported as unknown, never as "not sent".
//!   Only when every try was refused before it ran (429, no connection) is
//!   the answer [`GatewayError::Unavailable`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::breaker::Breaker;
use super::{Gateway, GatewayError, Intent, PaymentRequest, Refund};
use crate::domain::time::Clock;

/// How the client reaches and treats the gateway.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Such as `https://api.stripe.com` or the simulator's address.
    pub base_url: String,
    /// The secret key, sent as a bearer token.
    pub api_key: String,
    /// The deadline of each try.
    pub timeout: Duration,
    /// The deadline of a whole call, retries and backoff included: a
    /// checkout must finish inside its HTTP request's deadline.
    pub deadline: Duration,
    /// Tries after the first, for failures that a retry may cure.
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Consecutive failures that open the breaker, and how long it stays open.
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
}

impl ClientSettings {
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: api_key.into(),
            timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(25),
            max_retries: 3,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

pub struct StripeClient {
    http: reqwest::Client,
    settings: ClientSettings,
    breaker: Breaker,
}

/// Stripe's error envelope.
#[derive(Deserialize)]
struct Envelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    payment_intent: Option<IntentRef>,
}

#[derive(Deserialize)]
struct IntentRef {
    id: String,
}

#[derive(Deserialize)]
struct SearchResult {
    data: Vec<Intent>,
}

/// One try's verdict.
enum Try<T> {
    Done(Result<T, GatewayError>),
    /// Worth another try: the error to report if none is left, whether the
    /// gateway may have acted on it, and a wait the gateway asked for.
    Again {
        error: String,
        maybe_executed: bool,
        wait: Option<Duration>,
    },
}

impl StripeClient {
    pub fn new(settings: ClientSettings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("boxoffice/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let breaker = Breaker::new(clock, settings.breaker_threshold, settings.breaker_cooldown);
        Ok(Self { http, settings, breaker })
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    async fn call<T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        form: &[(String, String)],
        idempotency_key: Option<&str>,
    ) -> Result<T, GatewayError> {
        let started = Instant::now();
        let mut maybe_executed = false;
        let mut last_error = String::new();
        for attempt in 0..=self.settings.max_retries {
            let Some(left) = self.settings.deadline.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) else {
                break;
            };
            let permit = match self.breaker.admit() {
                Ok(p) => p,
                // Nothing of this call reached the gateway: safe to say so.
                Err(retry_at_ms) if !maybe_executed => {
                    metrics::counter!("boxoffice_gateway_calls_total", "op" => op, "outcome" => "circuit_open")
                        .increment(1);
                    return Err(GatewayError::CircuitOpen { retry_at_ms });
                }
                Err(_) => break,
            };
            let mut request = self
                .http
                .request(method.clone(), format!("{}{}", self.settings.base_url.trim_end_matches('/'), path))
                .bearer_auth(&self.settings.api_key)
                .timeout(self.settings.timeout.min(left));
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if !form.is_empty() {
                request = request.form(form);
            }
            let verdict = match request.send().await {
                Err(e) => {
                    permit.record(false);
                    // A refused connection never reached the gateway.
                    Try::Again { error: describe(&e), maybe_executed: !e.is_connect(), wait: None }
                }
                Ok(response) => self.judge(response, permit).await,
            };
            match verdict {
                Try::Done(result) => {
                    let outcome = match &result {
                        Ok(_) => "ok",
                        Err(e) if e.outcome_unknown() => "unknown",
                        Err(_) => "refused",
                    };
                    metrics::counter!("boxoffice_gateway_calls_total", "op" => op, "outcome" => outcome).increment(1);
                    metrics::histogram!("boxoffice_gateway_call_seconds", "op" => op)
                        .record(started.elapsed().as_secs_f64());
                    return result;
                }
                Try::Again { error, maybe_executed: executed, wait } => {
                    maybe_executed |= executed;
                    tracing::debug!(op, attempt, %error, "payment gateway call failed; retrying with the same key");
                    last_error = error;
                    let left = self.settings.deadline.saturating_sub(started.elapsed());
                    if attempt < self.settings.max_retries {
                        tokio::time::sleep(wait.unwrap_or_else(|| self.backoff(attempt)).min(left)).await;
                    }
                }
            }
        }
        if !maybe_executed {
            metrics::counter!("boxoffice_gateway_calls_total", "op" => op, "outcome" => "unavailable").increment(1);
            return Err(GatewayError::Unavailable(last_error));
        }
        metrics::counter!("boxoffice_gateway_calls_total", "op" => op, "outcome" => "unknown").increment(1);
        tracing::warn!(op, error = %last_error, "payment gateway call gave up; the outcome is unknown");
        Err(GatewayError::Unknown(last_error))
    }

    async fn judge<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        permit: super::breaker::Permit<'_>,
    ) -> Try<T> {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(self.settings.backoff_cap));
        let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v.as_bytes() == b"true");
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                // Headers came but the body was lost: the call may have run.
                permit.record(false);
                return Try::Again { error: describe(&e), maybe_executed: true, wait: None };
            }
        };
        if status.is_server_error() && replayed {
            // The gateway's stored answer for this key is an error: asking
            // again gets it again, and it says nothing about the gateway's
            // health now. Only reconciliation can learn what happened.
            drop(permit);
            return Try::Done(Err(GatewayError::Unknown(format!(
                "the gateway's stored answer for this key is {status}"
            ))));
        }
        if status.is_server_error() {
            permit.record(false);
            return Try::Again { error: format!("gateway answered {status}"), maybe_executed: true, wait: None };
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Stripe refuses before running the request. Not a sign of a
            // failing gateway, so the breaker is not told either way.
            drop(permit);
            return Try::Again {
                error: "gateway rate limited the call".into(),
                maybe_executed: false,
                wait: retry_after,
            };
        }
        permit.record(true);
        if status.is_success() {
            return Try::Done(
                serde_json::from_slice(&body)
                    .map_err(|e| GatewayError::Unknown(format!("unreadable success response from the gateway: {e}"))),
            );
        }
        let Ok(Envelope { error }) = serde_json::from_slice::<Envelope>(&body) else {
            // Not the gateway's own refusal (a proxy's 408, say): the request
            // may have gone through, so it is retried like a 5xx.
            return Try::Again {
                error: format!("{status} without a gateway error body"),
                maybe_executed: true,
                wait: None,
            };
        };
        let message = error.message.unwrap_or_default();
        Try::Done(Err(match (status, error.kind.as_str(), error.code.as_deref()) {
            (StatusCode::CONFLICT, _, Some("idempotency_key_in_use")) => {
                // Another try with this key is still running at the gateway.
                return Try::Again { error: "idempotency key in use".into(), maybe_executed: true, wait: None };
            }
            (StatusCode::PAYMENT_REQUIRED, _, _) | (_, "card_error", _) => GatewayError::Card {
                code: error.code.unwrap_or_else(|| "card_declined".into()),
                decline_code: error.decline_code,
                message,
                intent_id: error.payment_intent.map(|p| p.id),
            },
            (_, "idempotency_error", _) => GatewayError::IdempotencyMismatch(message),
            (StatusCode::NOT_FOUND, _, _) => GatewayError::NotFound(message),
            _ => GatewayError::Invalid { code: error.code, param: error.param, message },
        }))
    }

    /// Full jitter: a uniform wait up to `base * 2^attempt`, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.settings.backoff_base.saturating_mul(1 << attempt.min(16)).min(self.settings.backoff_cap);
        ceiling.mul_f64(rand::rng().random::<f64>())
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the gateway did not answer in time".into()
    } else if e.is_connect() {
        "could not connect to the gateway".into()
    } else {
        format!("the gateway connection failed: {e}")
    }
}

/// Stripe's search syntax quotes values in single quotes.
fn search_query(key: &str, value: &str) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('\'', "\\'");
    format!("metadata['{}']:'{}'", quote(key), quote(value))
}

#[async_trait]
impl Gateway for StripeClient {
    async fn create_payment(&self, req: &PaymentRequest, idempotency_key: &str) -> Result<Intent, GatewayError> {
        let mut form = vec![
            ("amount".to_owned(), req.amount.to_string()),
            ("currency".to_owned(), req.currency.to_ascii_lowercase()),
            ("payment_method".to_owned(), req.payment_method.clone()),
            ("confirm".to_owned(), "true".to_owned()),
        ];
        form.extend(req.metadata.iter().map(|(k, v)| (format!("metadata[{k}]"), v.clone())));
        self.call("create_payment", Method::POST, "/v1/payment_intents", &form, Some(idempotency_key)).await
    }

    async fn retrieve(&self, intent_id: &str) -> Result<Intent, GatewayError> {
        self.call("retrieve", Method::GET, &format!("/v1/payment_intents/{}", path_segment(intent_id)?), &[], None)
            .await
    }

    async fn search_metadata(&self, key: &str, value: &str) -> Result<Vec<Intent>, GatewayError> {
        let query = search_query(key, value);
        let path = format!("/v1/payment_intents/search?query={}", form_encode(&query));
        let found: SearchResult = self.call("search", Method::GET, &path, &[], None).await?;
        let mut data = found.data;
        data.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(data)
    }

    async fn cancel(&self, intent_id: &str, idempotency_key: &str) -> Result<Intent, GatewayError> {
        let path = format!("/v1/payment_intents/{}/cancel", path_segment(intent_id)?);
        self.call("cancel", Method::POST, &path, &[], Some(idempotency_key)).await
    }

    async fn refund(
        &self,
        intent_id: &str,
        amount: Option<i64>,
        idempotency_key: &str,
    ) -> Result<Refund, GatewayError> {
        let mut form = vec![("payment_intent".to_owned(), intent_id.to_owned())];
        if let Some(a) = amount {
            form.push(("amount".to_owned(), a.to_string()));
        }
        self.call("refund", Method::POST, "/v1/refunds", &form, Some(idempotency_key)).await
    }
}

/// Gateway ids are `[A-Za-z0-9_]`; anything else is refused rather than
/// spliced into a URL.
fn path_segment(id: &str) -> Result<&str, GatewayError> {
    if !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(GatewayError::NotFound(format!("{id:?} is not a gateway id")))
    }
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_values_are_quoted() {
        assert_eq!(search_query("order_id", "ord_1"), "metadata['order_id']:'ord_1'");
        assert_eq!(search_query("k", "it's"), r"metadata['k']:'it\'s'");
    }

    #[test]
    fn ids_that_could_change_the_path_are_refused() {
        assert!(path_segment("pi_123abc").is_ok());
        for bad in ["", "../refunds", "pi_1/cancel", "pi 1", "pi_1?x=1"] {
            assert!(path_segment(bad).is_err(), "{bad}");
        }
    }
}
