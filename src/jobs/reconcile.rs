//! Payment reconciliation: settles what the checkout flow could not.
//!
//! Each pass (see `CheckoutService::reconcile`):
//! - asks the gateway about every order whose outcome is open
//!   (`pending`, `requires_action`, `payment_pending`) and settles it:
//!   captured → confirmed (or refunded if the seats are gone), failed →
//!   released or kept per the failure table;
//! - releases the hold of an order still open past its checkout window
//!   (cancelling a 3-D Secure payment first), and raises an alert (metric,
//!   error log, `ops.alert` outbox row) when the outcome is still unknown;
//! - refunds a payment that succeeded after its order ended.
//!
//! Safe on several nodes at once: every settlement is conditional on the
//! attempt still being open, and gateway writes carry keys derived from the
//! attempt, so two nodes doing the same work refund or cancel once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::booking::checkout::{CheckoutService, Reconciled};

/// Orders and attempts looked at per pass.
const BATCH: u32 = 200;

pub async fn run_once(checkout: &CheckoutService) -> anyhow::Result<Reconciled> {
    Ok(checkout.reconcile(BATCH).await?)
}

/// Runs [`run_once`] every `period` until `stop` is cancelled.
pub async fn run(checkout: CheckoutService, period: Duration, stop: CancellationToken) {
    super::every("reconciliation", period, stop, || run_once(&checkout)).await
}
