//! Payments: the gateway seam, a Stripe-compatible HTTP client, and the
//! gateway simulator.
//!
//! The rest of boxoffice sees only [`Gateway`]. Its one implementation is
//! [`client::StripeClient`], which speaks the PaymentIntents subset of the
//! Stripe API with an `Idempotency-Key` on every write. It talks either to a
//! real Stripe-compatible gateway or to [`sim`], the simulator, which serves
//! the same subset and reproduces every failure mode boxoffice handles. The
//! embedded default runs the simulator in-process on a loopback port, so the
//! code path under test is the code path in production.
//!
//! What the caller must know about an error is one question: did the
//! gateway *definitely not* take the money? [`GatewayError::outcome_unknown`]
//! answers it. A caller that sees an unknown outcome keeps the attempt's
//! idempotency key and lets reconciliation settle it; it never mints a new
//! key while the previous outcome is unknown.

pub mod breaker;
pub mod client;
pub mod sim;
pub mod verdict;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use client::{ClientSettings, StripeClient};

/// What a payment is for, as the gateway is asked to charge it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRequest {
    /// Minor units, as everywhere in boxoffice.
    pub amount: i64,
    /// ISO 4217, upper case; the wire form is lower case as Stripe's.
    pub currency: String,
    /// A gateway payment-method id such as `pm_card_visa` (the simulator
    /// also takes Stripe's test card numbers).
    pub payment_method: String,
    /// Searchable tags; boxoffice sets `order_id` and `attempt_id`.
    pub metadata: BTreeMap<String, String>,
}

/// The state of a PaymentIntent, as Stripe names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    Processing,
    RequiresCapture,
    Canceled,
    Succeeded,
}

impl IntentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentStatus::RequiresPaymentMethod => "requires_payment_method",
            IntentStatus::RequiresConfirmation => "requires_confirmation",
            IntentStatus::RequiresAction => "requires_action",
            IntentStatus::Processing => "processing",
            IntentStatus::RequiresCapture => "requires_capture",
            IntentStatus::Canceled => "canceled",
            IntentStatus::Succeeded => "succeeded",
        }
    }
}

/// The last failure recorded on an intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentError {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// A PaymentIntent, with the fields boxoffice reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: String,
    pub amount: i64,
    /// Lower case on the wire, as Stripe sends it.
    pub currency: String,
    pub status: IntentStatus,
    #[serde(default)]
    pub amount_received: i64,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub last_payment_error: Option<PaymentError>,
    /// For `requires_action`: where the fan completes 3-D Secure.
    #[serde(default)]
    pub next_action: Option<serde_json::Value>,
    /// Seconds since the Unix epoch.
    #[serde(default)]
    pub created: i64,
}

impl Intent {
    /// The URL a fan visits to authenticate, for `requires_action`.
    pub fn action_url(&self) -> Option<&str> {
        self.next_action.as_ref()?.get("redirect_to_url")?.get("url")?.as_str()
    }
}

/// A refund, with the fields boxoffice reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub payment_intent: String,
    pub status: String,
}

/// Why a gateway call did not return what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The card was refused: declined, expired, wrong details, fraud, a
    /// processing error. Definite: this attempt took no money.
    #[error("card error {code}{}", decline_code.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Card { code: String, decline_code: Option<String>, message: String, intent_id: Option<String> },
    /// The gateway refused the request itself (an unsupported currency, a
    /// missing object). Definite: nothing was charged by it.
    #[error("invalid request{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Invalid { code: Option<String>, param: Option<String>, message: String },
    /// The object does not exist at the gateway.
    #[error("not found at the gateway: {0}")]
    NotFound(String),
    /// The idempotency key was used before with different parameters: a bug
    /// on our side. Definite for this request, which did not run.
    #[error("idempotency key reused with different parameters: {0}")]
    IdempotencyMismatch(String),
    /// The circuit breaker is open: the request was not sent.
    #[error("the payment gateway is failing; calls are paused until {retry_at_ms} (epoch ms)")]
    CircuitOpen { retry_at_ms: i64 },
    /// Every try was refused before it ran (rate limited, or no connection
    /// could be made). Definite: nothing was charged; try again later.
    #[error("the payment gateway did not take the request: {0}")]
    Unavailable(String),
    /// Timeouts, connection failures, 5xx, a lost response, or rate limits
    /// and key conflicts that outlasted every retry: the gateway may or may
    /// not have acted. Only reconciliation may settle it.
    #[error("payment outcome unknown: {0}")]
    Unknown(String),
}

impl GatewayError {
    /// True when the gateway may have acted on the request, so the caller
    /// must keep the same idempotency key and reconcile.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, GatewayError::Unknown(_))
    }

    /// The machine-readable reason boxoffice records on a failed order.
    pub fn failure_code(&self) -> &str {
        match self {
            GatewayError::Card { code, decline_code, .. } => match (code.as_str(), decline_code.as_deref()) {
                ("card_declined", Some(d)) if d != "generic_decline" => d,
                (c, _) => c,
            },
            GatewayError::Invalid { code: Some(c), .. } => c,
            GatewayError::Invalid { .. } => "invalid_request",
            GatewayError::NotFound(_) => "resource_missing",
            GatewayError::IdempotencyMismatch(_) => "idempotency_error",
            GatewayError::CircuitOpen { .. } | GatewayError::Unavailable(_) => "gateway_unavailable",
            GatewayError::Unknown(_) => "outcome_unknown",
        }
    }
}

/// The payment gateway, as boxoffice uses it. Every write carries the
/// caller's idempotency key; a retry with the same key can never charge
/// twice.
#[async_trait]
pub trait Gateway: Send + Sync + 'static {
    /// Creates and confirms a PaymentIntent in one call.
    async fn create_payment(&self, req: &PaymentRequest, idempotency_key: &str) -> Result<Intent, GatewayError>;
    async fn retrieve(&self, intent_id: &str) -> Result<Intent, GatewayError>;
    /// Every intent whose metadata has `key` = `value`, oldest first.
    async fn search_metadata(&self, key: &str, value: &str) -> Result<Vec<Intent>, GatewayError>;
    async fn cancel(&self, intent_id: &str, idempotency_key: &str) -> Result<Intent, GatewayError>;
    /// Refunds `amount` (all that is left when `None`) of a captured intent.
    async fn refund(&self, intent_id: &str, amount: Option<i64>, idempotency_key: &str)
        -> Result<Refund, GatewayError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_name_the_specific_decline() {
        let card = |code: &str, decline: Option<&str>| GatewayError::Card {
            code: code.into(),
            decline_code: decline.map(Into::into),
            message: String::new(),
            intent_id: None,
        };
        assert_eq!(card("card_declined", Some("insufficient_funds")).failure_code(), "insufficient_funds");
        assert_eq!(card("card_declined", Some("fraudulent")).failure_code(), "fraudulent");
        assert_eq!(card("card_declined", Some("generic_decline")).failure_code(), "card_declined");
        assert_eq!(card("expired_card", None).failure_code(), "expired_card");
        assert!(!card("card_declined", None).outcome_unknown());
        assert!(GatewayError::Unknown("timeout".into()).outcome_unknown());
        assert!(!GatewayError::CircuitOpen { retry_at_ms: 0 }.outcome_unknown());
    }
}
