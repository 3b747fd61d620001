//! Orders: what a checkout of a hold becomes, and its states.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// A payment attempt is under way and its outcome not yet known.
    Pending,
    /// The fan must authenticate (3-D Secure); the hold stays.
    RequiresAction,
    /// The gateway has not settled; reconciliation will.
    PaymentPending,
    /// Paid: seats sold, tickets issued.
    Confirmed,
    /// The last attempt failed; `failure_code` says why.
    Failed,
    /// Paid and then refunded; its seats are available again.
    Refunded,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::RequiresAction => "requires_action",
            OrderStatus::PaymentPending => "payment_pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Failed => "failed",
            OrderStatus::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => OrderStatus::Pending,
            "requires_action" => OrderStatus::RequiresAction,
            "payment_pending" => OrderStatus::PaymentPending,
            "confirmed" => OrderStatus::Confirmed,
            "failed" => OrderStatus::Failed,
            "refunded" => OrderStatus::Refunded,
            _ => return None,
        })
    }

    /// An outcome is still to come: reconciliation watches these.
    pub fn unsettled(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::RequiresAction | OrderStatus::PaymentPending)
    }
}

/// What happens to the hold after a payment attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldFate {
    /// Seats sold (only with a matching capture).
    Sell,
    /// Stays in checkout while the outcome is awaited.
    AwaitOutcome,
    /// Back to `held` until its expiry: the fan may try another card.
    Keep,
    /// Released at once.
    Release,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        use OrderStatus::*;
        for s in [Pending, RequiresAction, PaymentPending, Confirmed, Failed, Refunded] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert!(PaymentPending.unsettled() && !Confirmed.unsettled());
    }
}
