//! The simulator's test payment methods: Stripe's `pm_card_*` names, their
//! test card numbers, and a few simulator-only methods for the failure
//! modes Stripe has no test card for. Each one is documented in
//! `docs/payments.md`.

/// What confirming a payment with a given method does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Captured at once.
    Succeed,
    /// Refused with HTTP 402: Stripe's `code` and `decline_code`.
    Decline { code: &'static str, decline_code: Option<&'static str>, message: &'static str },
    /// 3-D Secure: `requires_action` until the fan authenticates.
    RequiresAction,
    /// `processing`: the bank answers later (it settles by itself after the
    /// simulator's `settle_after_ms`, or through `/sim/intents/{id}/settle`).
    Pending,
    /// The bank times out: the gateway answers 500 (stored and replayed
    /// under the idempotency key) while the intent stays `processing` and
    /// settles later as a pending one does.
    BankTimeout,
    /// Captures a different amount from the one asked for (a misbehaving
    /// gateway or acquirer), so the amount-mismatch guard can be tested.
    CaptureWrongAmount,
}

const DECLINED: Behaviour = Behaviour::Decline {
    code: "card_declined",
    decline_code: Some("generic_decline"),
    message: "Your card was declined.",
};
const INSUFFICIENT: Behaviour = Behaviour::Decline {
    code: "card_declined",
    decline_code: Some("insufficient_funds"),
    message: "Your card has insufficient funds.",
};
const EXPIRED: Behaviour =
    Behaviour::Decline { code: "expired_card", decline_code: Some("expired_card"), message: "Your card has expired." };
const INCORRECT_CVC: Behaviour = Behaviour::Decline {
    code: "incorrect_cvc",
    decline_code: Some("incorrect_cvc"),
    message: "Your card's security code is incorrect.",
};
const INCORRECT_NUMBER: Behaviour = Behaviour::Decline {
    code: "incorrect_number",
    decline_code: Some("incorrect_number"),
    message: "Your card number is incorrect.",
};
const PROCESSING_ERROR: Behaviour = Behaviour::Decline {
    code: "processing_error",
    decline_code: Some("processing_error"),
    message: "An error occurred while processing your card. Try again in a little bit.",
};
const FRAUD: Behaviour =
    Behaviour::Decline { code: "card_declined", decline_code: Some("fraudulent"), message: "Your card was declined." };

/// The table: method ids and card numbers side by side.
const TABLE: &[(&str, &str, Behaviour)] = &[
    ("pm_card_visa", "4242424242424242", Behaviour::Succeed),
    ("pm_card_mastercard", "5555555555554444", Behaviour::Succeed),
    ("pm_card_amex", "378282246310005", Behaviour::Succeed),
    ("pm_card_chargeDeclined", "4000000000000002", DECLINED),
    ("pm_card_chargeDeclinedInsufficientFunds", "4000000000009995", INSUFFICIENT),
    ("pm_card_chargeDeclinedExpiredCard", "4000000000000069", EXPIRED),
    ("pm_card_chargeDeclinedIncorrectCvc", "4000000000000127", INCORRECT_CVC),
    ("pm_card_chargeDeclinedIncorrectNumber", "4242424242424241", INCORRECT_NUMBER),
    ("pm_card_chargeDeclinedProcessingError", "4000000000000119", PROCESSING_ERROR),
    ("pm_card_chargeDeclinedFraudulent", "4100000000000019", FRAUD),
    ("pm_card_radarBlock", "4100000000000019", FRAUD),
    ("pm_card_threeDSecure2Required", "4000000000003220", Behaviour::RequiresAction),
    ("pm_card_authenticationRequired", "4000002760003184", Behaviour::RequiresAction),
    ("pm_card_processing", "", Behaviour::Pending),
    ("pm_card_bankTimeout", "", Behaviour::BankTimeout),
    ("pm_card_captureWrongAmount", "", Behaviour::CaptureWrongAmount),
];

/// The behaviour of a payment method id or a test card number (spaces
/// allowed), or `None` for one the simulator does not know.
pub fn behaviour(method: &str) -> Option<Behaviour> {
    let digits: String = method.chars().filter(|c| !c.is_whitespace()).collect();
    TABLE.iter().find(|(id, number, _)| *id == method || (!number.is_empty() && *number == digits)).map(|(_, _, b)| *b)
}

/// Every method id the simulator knows, for its help text.
pub fn method_ids() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|(id, _, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_card_numbers_agree() {
        assert_eq!(behaviour("pm_card_visa"), Some(Behaviour::Succeed));
        assert_eq!(behaviour("4242 4242 4242 4242"), Some(Behaviour::Succeed));
        assert_eq!(behaviour("4000000000009995"), behaviour("pm_card_chargeDeclinedInsufficientFunds"));
        assert_eq!(behaviour("4100000000000019"), Some(FRAUD));
        assert_eq!(behaviour("pm_card_nonsense"), None);
        assert_eq!(behaviour(""), None, "an empty method matches no number-less entry");
    }
}
