//! What a payment's outcome means for its order and hold.
//!
//! [`Verdict::of`] is the one place that turns a gateway answer into what
//! happens next. It is the table in design.md ("Payments"), row by row; the
//! tests below walk that table.

use super::{GatewayError, Intent, IntentStatus};
use crate::domain::order::{HoldFate, OrderStatus};

/// What a payment attempt's outcome means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub order: OrderStatus,
    pub hold: HoldFate,
    pub failure_code: Option<String>,
    /// The intent that captured money, when one did.
    pub captured: Option<String>,
    /// Money was captured that must not be kept (wrong amount): refund it
    /// and raise an alert.
    pub refund_and_alert: bool,
}

impl Verdict {
    fn new(order: OrderStatus, hold: HoldFate, failure_code: Option<&str>) -> Self {
        Self { order, hold, failure_code: failure_code.map(Into::into), captured: None, refund_and_alert: false }
    }

    /// The verdict on a payment for `amount` minor units of `currency`.
    pub fn of(result: &Result<Intent, GatewayError>, amount: i64, currency: &str) -> Verdict {
        match result {
            Ok(intent) => Self::of_intent(intent, amount, currency),
            Err(e) => Self::of_error(e),
        }
    }

    pub fn of_intent(intent: &Intent, amount: i64, currency: &str) -> Verdict {
        match intent.status {
            IntentStatus::Succeeded => {
                let exact = intent.amount_received == amount && intent.currency.eq_ignore_ascii_case(currency);
                if exact {
                    Verdict {
                        captured: Some(intent.id.clone()),
                        ..Self::new(OrderStatus::Confirmed, HoldFate::Sell, None)
                    }
                } else {
                    // 13: never fulfil against the wrong amount.
                    Verdict {
                        refund_and_alert: true,
                        captured: Some(intent.id.clone()),
                        ..Self::new(OrderStatus::Failed, HoldFate::Keep, Some("amount_mismatch"))
                    }
                }
            }
            // 7: the hold stays while the fan authenticates.
            IntentStatus::RequiresAction => Self::new(OrderStatus::RequiresAction, HoldFate::AwaitOutcome, None),
            // 8: reconcile.
            IntentStatus::Processing | IntentStatus::RequiresCapture | IntentStatus::RequiresConfirmation => {
                Self::new(OrderStatus::PaymentPending, HoldFate::AwaitOutcome, None)
            }
            IntentStatus::RequiresPaymentMethod => {
                let code = intent
                    .last_payment_error
                    .as_ref()
                    .and_then(|e| e.decline_code.clone().or_else(|| e.code.clone()))
                    .unwrap_or_else(|| "card_declined".into());
                Self::of_decline(&code)
            }
            // 15: the fan (or we) cancelled.
            IntentStatus::Canceled => Self::new(OrderStatus::Failed, HoldFate::Release, Some("canceled")),
        }
    }

    fn of_error(e: &GatewayError) -> Verdict {
        match e {
            GatewayError::Card { .. } => Self::of_decline(e.failure_code()),
            // 12: fail clearly; no card can pay in a currency the gateway refuses.
            GatewayError::Invalid { code: Some(c), .. } if c == "currency_not_supported" => {
                Self::new(OrderStatus::Failed, HoldFate::Release, Some(c))
            }
            // A payment method the gateway does not know: like invalid card details.
            GatewayError::Invalid { param: Some(p), .. } if p == "payment_method" => {
                Self::new(OrderStatus::Failed, HoldFate::Keep, Some("invalid_payment_method"))
            }
            // Our own credentials refused: an operator's problem, not the
            // fan's card; nothing was charged.
            GatewayError::Invalid { code: Some(c), .. } if c.starts_with("api_key") => {
                tracing::error!(code = %c, "the payment gateway refused boxoffice's API key");
                Self::new(OrderStatus::Failed, HoldFate::Keep, Some("gateway_unavailable"))
            }
            // Any other refusal (an amount out of the gateway's range, say),
            // named as the gateway named it; nothing was charged.
            GatewayError::Invalid { code, .. } => {
                Self::new(OrderStatus::Failed, HoldFate::Keep, Some(code.as_deref().unwrap_or("payment_rejected")))
            }
            GatewayError::NotFound(_) => Self::new(OrderStatus::Failed, HoldFate::Keep, Some("invalid_payment_method")),
            // 3 (breaker open) and 10 (rate limited past every retry): nothing
            // was charged, so the fan may simply try again.
            GatewayError::CircuitOpen { .. } | GatewayError::Unavailable(_) => {
                Self::new(OrderStatus::Failed, HoldFate::Keep, Some("gateway_unavailable"))
            }
            // 2, 3, 9 (and a key mismatch, which is our bug): the money may
            // have moved; only reconciliation may decide.
            GatewayError::Unknown(_) | GatewayError::IdempotencyMismatch(_) => {
                Self::new(OrderStatus::PaymentPending, HoldFate::AwaitOutcome, None)
            }
        }
    }

    fn of_decline(code: &str) -> Verdict {
        let fate = match code {
            // 4, 5, 9: the fan can fix it or try again; the hold stays.
            "expired_card"
            | "incorrect_cvc"
            | "incorrect_number"
            | "invalid_cvc"
            | "invalid_expiry_month"
            | "invalid_expiry_year"
            | "invalid_number"
            | "processing_error"
            | "authentication_required" => HoldFate::Keep,
            // 1 and 6: declined or blocked as fraud; no retry.
            _ => HoldFate::Release,
        };
        Self::new(OrderStatus::Failed, fate, Some(code))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::payments::PaymentError;

    fn intent(status: IntentStatus, received: i64) -> Intent {
        Intent {
            id: "pi_1".into(),
            amount: 3000,
            currency: "usd".into(),
            status,
            amount_received: received,
            metadata: BTreeMap::new(),
            last_payment_error: None,
            next_action: None,
            created: 0,
        }
    }

    fn card(code: &str, decline: Option<&str>) -> GatewayError {
        GatewayError::Card {
            code: code.into(),
            decline_code: decline.map(Into::into),
            message: String::new(),
            intent_id: None,
        }
    }

    fn verdict(r: Result<Intent, GatewayError>) -> (OrderStatus, HoldFate, Option<String>) {
        let v = Verdict::of(&r, 3000, "USD");
        (v.order, v.hold, v.failure_code)
    }

    #[test]
    fn design_table_rows_map_to_the_documented_responses() {
        use HoldFate::*;
        use OrderStatus::*;
        let s = |c: &str| Some(c.to_owned());
        // 1 declined / insufficient funds: fail, release.
        assert_eq!(
            verdict(Err(card("card_declined", Some("insufficient_funds")))),
            (Failed, Release, s("insufficient_funds"))
        );
        assert_eq!(verdict(Err(card("card_declined", Some("generic_decline")))), (Failed, Release, s("card_declined")));
        // 2, 3, 9 outcome unknown: pending, reconcile, hold stays in checkout.
        assert_eq!(verdict(Err(GatewayError::Unknown("timeout".into()))), (PaymentPending, AwaitOutcome, None));
        // 3 breaker open: nothing sent; the fan may retry.
        assert_eq!(
            verdict(Err(GatewayError::CircuitOpen { retry_at_ms: 0 })),
            (Failed, Keep, s("gateway_unavailable"))
        );
        // 4, 5: tell the fan; the hold stays.
        assert_eq!(verdict(Err(card("incorrect_number", None))), (Failed, Keep, s("incorrect_number")));
        assert_eq!(verdict(Err(card("expired_card", Some("expired_card")))), (Failed, Keep, s("expired_card")));
        // 6 fraud: fail, no retry.
        assert_eq!(verdict(Err(card("card_declined", Some("fraudulent")))), (Failed, Release, s("fraudulent")));
        // 7 3-D Secure.
        assert_eq!(verdict(Ok(intent(IntentStatus::RequiresAction, 0))), (RequiresAction, AwaitOutcome, None));
        // 8 pending.
        assert_eq!(verdict(Ok(intent(IntentStatus::Processing, 0))), (PaymentPending, AwaitOutcome, None));
        // 9 processing error: retry is the fan's (the hold stays).
        assert_eq!(
            verdict(Err(card("processing_error", Some("processing_error")))),
            (Failed, Keep, s("processing_error"))
        );
        // 10 rate limited past every retry.
        assert_eq!(verdict(Err(GatewayError::Unavailable("429".into()))), (Failed, Keep, s("gateway_unavailable")));
        // 12 currency.
        let currency =
            GatewayError::Invalid { code: s("currency_not_supported"), param: s("currency"), message: String::new() };
        assert_eq!(verdict(Err(currency)), (Failed, Release, s("currency_not_supported")));
        // Refusals that are not the card's fault keep their own names.
        let small = GatewayError::Invalid { code: s("amount_too_small"), param: s("amount"), message: String::new() };
        assert_eq!(verdict(Err(small)), (Failed, Keep, s("amount_too_small")));
        let key = GatewayError::Invalid { code: s("api_key_invalid"), param: None, message: String::new() };
        assert_eq!(verdict(Err(key)), (Failed, Keep, s("gateway_unavailable")));
        let pm =
            GatewayError::Invalid { code: s("resource_missing"), param: s("payment_method"), message: String::new() };
        assert_eq!(verdict(Err(pm)), (Failed, Keep, s("invalid_payment_method")));
        // 15 cancelled.
        assert_eq!(verdict(Ok(intent(IntentStatus::Canceled, 0))), (Failed, Release, s("canceled")));
        // Success.
        assert_eq!(verdict(Ok(intent(IntentStatus::Succeeded, 3000))), (Confirmed, Sell, None));
    }

    #[test]
    fn a_capture_of_the_wrong_amount_or_currency_is_never_fulfilled() {
        for (received, currency) in [(3100, "USD"), (3000, "EUR")] {
            let v = Verdict::of(&Ok(intent(IntentStatus::Succeeded, received)), 3000, currency);
            assert_eq!(v.order, OrderStatus::Failed);
            assert_ne!(v.hold, HoldFate::Sell);
            assert!(v.refund_and_alert, "the money is returned and someone is told");
            assert_eq!(v.failure_code.as_deref(), Some("amount_mismatch"));
        }
    }

    #[test]
    fn a_failed_intent_reports_its_decline_code() {
        let mut i = intent(IntentStatus::RequiresPaymentMethod, 0);
        i.last_payment_error = Some(PaymentError {
            kind: "card_error".into(),
            code: Some("card_declined".into()),
            decline_code: Some("insufficient_funds".into()),
            message: None,
        });
        assert_eq!(Verdict::of_intent(&i, 3000, "USD").failure_code.as_deref(), Some("insufficient_funds"));
    }
}
