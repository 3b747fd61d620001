//! The checkout service: pays for a hold and turns it into an order with
//! tickets, or into a clear reason why not.
//!
//! Flow of a checkout (see ARCHITECTURE.md, "The flow of a checkout"):
//! 1. `Store::start_checkout`: the hold moves to `checkout` (expiry
//!    extended once by the payment window), the order is created or
//!    reopened, and the payment attempt is written — before any gateway
//!    call;
//! 2. the gateway is asked to charge, with the attempt's derived key;
//! 3. [`Verdict::of`] decides what the answer means;
//! 4. `Store::settle` records it in one transaction conditional on the hold
//!    still being in checkout: a sale sells the seats, confirms the order,
//!    issues tickets and writes the outbox row together.
//!
//! [`CheckoutService::refresh`] runs steps 3–4 again for an order whose
//! outcome was not known, from what the gateway says now; the reconciliation
//! job and order reads both use it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use crate::accelerators::{ChangeStatus, GaChange, SeatChange};
use crate::booking::BookingService;
use crate::domain::hold::Hold;
use crate::domain::ids::{AttemptId, HoldId, OrderId, TicketId};
use crate::domain::order::{HoldFate, OrderStatus};
use crate::domain::ticket::{TicketClaims, TicketSigner, TicketVerifier};
use crate::domain::time::Timestamp;
use crate::payments::verdict::Verdict;
use crate::payments::{Gateway, GatewayError, Intent, IntentStatus, PaymentRequest};
use crate::store::checkout::{
    Attempt, AttemptStatus, CheckoutRefusal, CheckoutStart, NewTicket, Order, OutboxMessage, Refunded, Settled,
    Settlement, Ticket,
};
use crate::store::{Customer, DynStore, StoreError};

/// How long after its confirmation an order is checked for a second
/// capture, so that a duplicate racing the first has landed.
const DUPLICATE_LAG: std::time::Duration = std::time::Duration::from_secs(60);

/// The setting that holds how far the duplicate-capture check has reached.
const CHECKED_UNTIL: &str = "duplicate_check_until";

/// An attempt that never reached the gateway is closed after this long.
const ORPHAN_GIVE_UP_MS: i64 = 24 * 3600 * 1000;

/// What one reconciliation pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Unsettled orders the gateway's answer settled.
    pub settled: u32,
    /// Unsettled orders past their window whose hold was released.
    pub timed_out: u32,
    /// Payments that succeeded after their order ended, refunded.
    pub late_refunds: u32,
    /// Open attempts of ended orders found failed and closed.
    pub closed: u32,
    /// Second captures of confirmed orders, refunded.
    pub duplicates_refunded: u32,
}

/// An order and its tickets, as a fan sees them.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub order: Order,
    pub tickets: Vec<Ticket>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("checkout refused: {0:?}")]
    Refused(CheckoutRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a fan's cancellation did.
#[derive(Clone, Debug)]
pub enum CancelOutcome {
    /// Cancelled at the gateway; the order failed with `canceled` and its
    /// hold was released.
    Cancelled(Receipt),
    /// The payment had already ended, or cannot be stopped now.
    TooLate(Receipt),
}

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("no such order")]
    NotFound,
    #[error("order is {}, not confirmed", .0.status.as_str())]
    NotConfirmed(Box<Order>),
    /// The gateway refused, or its answer was lost (a retry is safe: the
    /// refund's key is derived from the order).
    #[error(transparent)]
    Gateway(GatewayError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct CheckoutService(Arc<Inner>);

struct Inner {
    booking: BookingService,
    gateway: Arc<dyn Gateway>,
    signer: TicketSigner,
    payment_window_secs: u32,
}

impl CheckoutService {
    pub fn new(
        booking: BookingService,
        gateway: Arc<dyn Gateway>,
        signer: TicketSigner,
        payment_window_secs: u32,
    ) -> Self {
        Self(Arc::new(Inner { booking, gateway, signer, payment_window_secs }))
    }

    fn store(&self) -> &DynStore {
        self.0.booking.store()
    }

    /// The published half of the ticket key.
    pub fn verifier(&self) -> TicketVerifier {
        self.0.signer.verifier()
    }

    pub fn gateway(&self) -> &Arc<dyn Gateway> {
        &self.0.gateway
    }

    /// Pays for the customer's hold with `payment_method`.
    pub async fn checkout(
        &self,
        customer: &Customer,
        hold_id: &HoldId,
        payment_method: &str,
    ) -> Result<Receipt, CheckoutError> {
        let now = self.0.booking.clock().now();
        let started = self
            .store()
            .start_checkout(CheckoutStart {
                hold_id: hold_id.clone(),
                customer_id: customer.id.clone(),
                order_id: OrderId::generate(),
                attempt_id: AttemptId::generate(),
                payment_method: payment_method.to_owned(),
                payment_window_secs: self.0.payment_window_secs,
                now,
            })
            .await?
            .map_err(CheckoutError::Refused)?;
        let (order, attempt, hold) = (started.order, started.attempt, started.hold);
        let request = PaymentRequest {
            amount: order.amount,
            currency: order.currency.as_str().to_owned(),
            payment_method: payment_method.to_owned(),
            metadata: BTreeMap::from([
                ("order_id".to_owned(), order.id.to_string()),
                ("attempt_id".to_owned(), attempt.id.to_string()),
                ("hold_id".to_owned(), hold.id.to_string()),
            ]),
        };
        let result = self.0.gateway.create_payment(&request, &attempt.gateway_key()).await;
        Ok(self.apply(&order, &attempt, &hold, result).await?)
    }

    /// What the gateway says now about an unsettled order's running
    /// attempt, applied. Settled orders, and answers that settle nothing
    /// (the gateway unreachable, no intent found yet), leave it as it is.
    pub async fn refresh(&self, order: Order) -> Result<Receipt, StoreError> {
        if !order.status.unsettled() {
            return self.receipt(order).await;
        }
        let Some(attempt) = self.running_attempt(&order).await? else {
            return self.receipt(order).await;
        };
        let intent = match self.find_intent(&attempt).await {
            Ok(Some(intent)) => intent,
            Ok(None) | Err(_) => return self.receipt(order).await,
        };
        let Some(hold) = self.store().hold(&order.hold_id).await? else {
            return Err(StoreError::Internal(anyhow::anyhow!("order {} has no hold", order.id)));
        };
        self.apply(&order, &attempt, &hold, Ok(intent)).await
    }

    /// Refunds a confirmed order in full (an organizer's decision): first at
    /// the gateway, with a key derived from the order so a retry refunds
    /// once, then in the store, which frees the seats and voids the tickets.
    pub async fn refund(&self, id: &OrderId) -> Result<Receipt, RefundError> {
        let order = self.store().order(id).await?.ok_or(RefundError::NotFound)?;
        match order.status {
            OrderStatus::Confirmed => {}
            OrderStatus::Refunded => return Ok(self.receipt(order).await?),
            _ => return Err(RefundError::NotConfirmed(Box::new(order))),
        }
        let intent = order
            .payment_intent
            .clone()
            .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("confirmed order {} has no payment", order.id)))?;
        match self.0.gateway.refund(&intent, None, &format!("boxoffice-refund-order-{}", order.id)).await {
            Ok(_) => {}
            Err(GatewayError::Invalid { code: Some(c), .. }) if c == "charge_already_refunded" => {}
            Err(e) => return Err(RefundError::Gateway(e)),
        }
        let note = OutboxMessage {
            topic: "order.refunded".into(),
            payload: json!({
                "order_id": order.id, "customer_id": order.customer_id, "event_id": order.event_id,
                "amount": order.amount, "currency": order.currency,
            })
            .to_string(),
        };
        let now = self.0.booking.clock().now();
        let order = match self.store().refund_order(&order.id, note, now).await? {
            Refunded::Done(o) => {
                if let Some(hold) = self.store().hold(&o.hold_id).await? {
                    self.tell_seat_map(&hold, HoldFate::Release).await;
                }
                o
            }
            Refunded::Already(o) => o,
            Refunded::NotConfirmed(o) => return Err(RefundError::NotConfirmed(Box::new(o))),
            Refunded::NotFound => return Err(RefundError::NotFound),
        };
        Ok(self.receipt(order).await?)
    }

    /// One reconciliation pass over at most `limit` unsettled orders and
    /// `limit` orphaned attempts (see `jobs::reconcile`).
    pub async fn reconcile(&self, limit: u32) -> Result<Reconciled, StoreError> {
        let mut done = Reconciled::default();
        for order in self.store().unsettled_orders(limit).await? {
            let receipt = self.refresh(order).await?;
            if !receipt.order.status.unsettled() {
                done.settled += 1;
                continue;
            }
            let now = self.0.booking.clock().now();
            let lapsed = self.store().hold(&receipt.order.hold_id).await?.filter(|h| h.expires_at <= now);
            if let Some(hold) = lapsed {
                if self.time_out(&receipt.order, &hold).await? {
                    done.timed_out += 1;
                }
            }
        }
        for attempt in self.store().orphaned_attempts(limit).await? {
            match self.close_orphan(&attempt).await? {
                Some(true) => done.late_refunds += 1,
                Some(false) => done.closed += 1,
                None => {}
            }
        }
        done.duplicates_refunded = self.refund_second_captures(limit).await?;
        Ok(done)
    }

    /// Each order confirmed since the last pass (and at least
    /// [`DUPLICATE_LAG`] ago) is looked up at the gateway once: a capture
    /// for it other than the one that paid for it is refunded, and an alert
    /// raised. Returns how many were refunded.
    async fn refund_second_captures(&self, limit: u32) -> Result<u32, StoreError> {
        let now = self.0.booking.clock().now();
        let to = Timestamp::from_millis(now.as_millis() - DUPLICATE_LAG.as_millis() as i64);
        // Where the check has reached is kept in the database, so a restart
        // (or another node) goes on from there.
        let first = Timestamp::from_millis(to.as_millis() - 3_600_000);
        let stored = self.store().ensure_setting(CHECKED_UNTIL, first.as_millis().to_be_bytes().to_vec()).await?;
        let from = Timestamp::from_millis(i64::from_be_bytes(stored.try_into().unwrap_or([0; 8])));
        if to <= from {
            return Ok(0);
        }
        let orders = self.store().orders_confirmed_between(from, to, limit).await?;
        let mut refunded = 0;
        let mut reached = to;
        for order in &orders {
            let Ok(found) = self.0.gateway.search_metadata("order_id", order.id.as_str()).await else {
                // Ask again next pass, from this order on.
                reached = reached.min(order.updated_at);
                break;
            };
            for extra in found
                .iter()
                .filter(|i| i.status == IntentStatus::Succeeded && Some(&i.id) != order.payment_intent.as_ref())
            {
                let key = format!("boxoffice-refund-dup-{}", extra.id);
                match self.0.gateway.refund(&extra.id, None, &key).await {
                    Ok(_) => {}
                    Err(GatewayError::Invalid { code: Some(c), .. }) if c == "charge_already_refunded" => continue,
                    Err(e) => {
                        tracing::warn!(intent = %extra.id, error = %e, "could not refund a second capture; will retry");
                        reached = reached.min(order.updated_at);
                        continue;
                    }
                }
                refunded += 1;
                tracing::error!(order = %order.id, intent = %extra.id, "second capture for one order refunded");
                metrics::counter!("boxoffice_payment_alerts_total", "kind" => "duplicate_capture").increment(1);
                let alert = OutboxMessage {
                    topic: "ops.alert".into(),
                    payload: json!({"kind": "duplicate_capture", "order_id": order.id, "intent": extra.id}).to_string(),
                };
                self.store().alert_once(&format!("duplicate_capture:{}", extra.id), alert, now).await?;
            }
        }
        if orders.len() == limit as usize {
            reached = reached.min(orders.last().map_or(to, |o| o.updated_at));
        }
        self.store().put_setting(CHECKED_UNTIL, reached.as_millis().to_be_bytes().to_vec()).await?;
        Ok(refunded)
    }

    /// An unsettled order whose checkout window has passed: the hold is
    /// released, so its seats can sell again. A payment waiting for 3-D
    /// Secure is cancelled first; one whose outcome is still unknown keeps
    /// its attempt open (a late success is refunded by [`Self::close_orphan`])
    /// and raises an alert. Returns whether this call released the hold.
    async fn time_out(&self, order: &Order, hold: &Hold) -> Result<bool, StoreError> {
        let Some(attempt) = self.running_attempt(order).await? else { return Ok(false) };
        let mut attempt_status = attempt.status;
        if let (AttemptStatus::RequiresAction, Some(intent)) = (attempt.status, &attempt.intent_id) {
            match self.0.gateway.cancel(intent, &format!("boxoffice-cancel-{}", attempt.id)).await {
                Ok(_) => attempt_status = AttemptStatus::Failed,
                // It moved on at the gateway (paid, or processing): the next
                // pass reads it again.
                Err(_) => return Ok(false),
            }
        }
        let settled = self
            .store()
            .settle(Settlement {
                order_id: order.id.clone(),
                attempt_id: attempt.id.clone(),
                attempt_status,
                order_status: OrderStatus::Failed,
                hold: HoldFate::Release,
                failure_code: Some("payment_timeout".into()),
                intent_id: None,
                action_url: None,
                tickets: vec![],
                outbox: vec![OutboxMessage {
                    topic: "order.expired".into(),
                    payload:
                        json!({"order_id": order.id, "customer_id": order.customer_id, "event_id": order.event_id})
                            .to_string(),
                }],
                now: self.0.booking.clock().now(),
            })
            .await?;
        let Settled::Applied(_) = settled else { return Ok(false) };
        self.tell_seat_map(hold, HoldFate::Release).await;
        if attempt_status != AttemptStatus::Failed {
            tracing::error!(order = %order.id, attempt = %attempt.id, "payment outcome still unknown after its window");
            metrics::counter!("boxoffice_payment_alerts_total", "kind" => "outcome_unknown").increment(1);
            let alert = OutboxMessage {
                topic: "ops.alert".into(),
                payload: json!({"kind": "payment_outcome_unknown", "order_id": order.id, "attempt_id": attempt.id})
                    .to_string(),
            };
            let key = format!("outcome_unknown:{}", order.id);
            self.store().alert_once(&key, alert, self.0.booking.clock().now()).await?;
        }
        Ok(true)
    }

    async fn running_attempt(&self, order: &Order) -> Result<Option<Attempt>, StoreError> {
        let attempts = self.store().order_attempts(&order.id).await?;
        Ok(attempts.into_iter().rev().find(|a| {
            matches!(a.status, AttemptStatus::Started | AttemptStatus::RequiresAction | AttemptStatus::Processing)
        }))
    }

    /// What the gateway knows of an attempt: by intent id, or by the
    /// attempt's metadata when its answer was lost. `Ok(None)`: no intent.
    async fn find_intent(&self, attempt: &Attempt) -> Result<Option<Intent>, GatewayError> {
        match &attempt.intent_id {
            Some(id) => self.0.gateway.retrieve(id).await.map(Some),
            None => Ok(self.0.gateway.search_metadata("attempt_id", attempt.id.as_str()).await?.into_iter().next()),
        }
    }

    /// An attempt still open after its order ended. A capture is refunded
    /// (14: the seats may be someone else's by now); a failure closes it.
    /// `Some(true)`: refunded; `Some(false)`: closed; `None`: still open.
    async fn close_orphan(&self, attempt: &Attempt) -> Result<Option<bool>, StoreError> {
        let now = self.0.booking.clock().now();
        let intent = match self.find_intent(attempt).await {
            Ok(Some(i)) => i,
            // Never reached the gateway: after a day nothing will arrive.
            Ok(None) if now.as_millis() - attempt.created_at.as_millis() > ORPHAN_GIVE_UP_MS => {
                return Ok(self
                    .store()
                    .close_attempt(&attempt.id, AttemptStatus::Failed, None, now)
                    .await?
                    .then_some(false))
            }
            Ok(None) | Err(_) => return Ok(None),
        };
        match intent.status {
            IntentStatus::Succeeded => {
                let key = format!("boxoffice-refund-{}", attempt.id);
                match self.0.gateway.refund(&intent.id, None, &key).await {
                    Ok(_) => {}
                    Err(GatewayError::Invalid { code: Some(c), .. }) if c == "charge_already_refunded" => {}
                    Err(e) => {
                        tracing::warn!(attempt = %attempt.id, error = %e, "late refund failed; will retry");
                        return Ok(None);
                    }
                }
                let order = self.store().order(&attempt.order_id).await?;
                // A capture of the wrong amount was alerted when it was seen;
                // anything else is a payment that came after its order ended.
                if order.as_ref().and_then(|o| o.failure_code.as_deref()) != Some("amount_mismatch") {
                    tracing::warn!(order = %attempt.order_id, intent = %intent.id, "late payment refunded");
                    metrics::counter!("boxoffice_late_payments_refunded_total").increment(1);
                    let note = OutboxMessage {
                        topic: "order.late_payment_refunded".into(),
                        payload: json!({
                            "order_id": attempt.order_id, "customer_id": order.map(|o| o.customer_id),
                            "intent": intent.id, "amount": intent.amount_received, "currency": intent.currency,
                        })
                        .to_string(),
                    };
                    self.store().alert_once(&format!("late_payment:{}", attempt.id), note, now).await?;
                }
                let closed =
                    self.store().close_attempt(&attempt.id, AttemptStatus::Succeeded, Some(&intent.id), now).await?;
                Ok(closed.then_some(true))
            }
            IntentStatus::RequiresAction => {
                let key = format!("boxoffice-cancel-{}", attempt.id);
                if self.0.gateway.cancel(&intent.id, &key).await.is_err() {
                    return Ok(None);
                }
                Ok(self
                    .store()
                    .close_attempt(&attempt.id, AttemptStatus::Failed, Some(&intent.id), now)
                    .await?
                    .then_some(false))
            }
            IntentStatus::RequiresPaymentMethod | IntentStatus::Canceled => Ok(self
                .store()
                .close_attempt(&attempt.id, AttemptStatus::Failed, Some(&intent.id), now)
                .await?
                .then_some(false)),
            IntentStatus::Processing | IntentStatus::RequiresCapture | IntentStatus::RequiresConfirmation => Ok(None),
        }
    }

    /// Records what `result` means for the attempt, its order and its hold.
    async fn apply(
        &self,
        order: &Order,
        attempt: &Attempt,
        hold: &Hold,
        result: Result<Intent, GatewayError>,
    ) -> Result<Receipt, StoreError> {
        let verdict = Verdict::of(&result, order.amount, order.currency.as_str());
        let intent_id = match &result {
            Ok(i) => Some(i.id.clone()),
            Err(GatewayError::Card { intent_id, .. }) => intent_id.clone(),
            Err(_) => None,
        };
        let attempt_status = match (verdict.hold, verdict.order) {
            (HoldFate::Sell, _) => AttemptStatus::Succeeded,
            (HoldFate::AwaitOutcome, OrderStatus::RequiresAction) => AttemptStatus::RequiresAction,
            (HoldFate::AwaitOutcome, _) if intent_id.is_some() => AttemptStatus::Processing,
            // The answer was lost: the attempt stays started until the
            // gateway is asked again.
            (HoldFate::AwaitOutcome, _) => AttemptStatus::Started,
            // A refund is owed: the attempt stays open (with its intent) until
            // reconciliation sees the refund through.
            (HoldFate::Keep | HoldFate::Release, _) if verdict.refund_and_alert => AttemptStatus::Processing,
            (HoldFate::Keep | HoldFate::Release, _) => AttemptStatus::Failed,
        };
        let mut outbox = Vec::new();
        if verdict.refund_and_alert {
            // 13: money was captured that does not match the order: never
            // fulfil it; give it back and tell a human.
            let captured = result.as_ref().map(|i| (i.amount_received, i.currency.clone())).ok();
            tracing::error!(order = %order.id, ?captured, expected = order.amount, "payment amount mismatch");
            metrics::counter!("boxoffice_payment_alerts_total", "kind" => "amount_mismatch").increment(1);
            if let Some(id) = &verdict.captured {
                self.refund_capture(id, attempt).await;
            }
            outbox.push(OutboxMessage {
                topic: "ops.alert".into(),
                payload: json!({
                    "kind": "amount_mismatch", "order_id": order.id, "intent": verdict.captured,
                    "expected": order.amount, "captured": captured.map(|c| c.0),
                })
                .to_string(),
            });
        }
        let tickets = if verdict.hold == HoldFate::Sell { self.issue(order, hold) } else { vec![] };
        if verdict.hold == HoldFate::Sell {
            outbox.push(OutboxMessage {
                topic: "order.confirmed".into(),
                payload: json!({
                    "order_id": order.id, "customer_id": order.customer_id, "event_id": order.event_id,
                    "amount": order.amount, "currency": order.currency,
                    "tickets": tickets.iter().map(|t| t.id.to_string()).collect::<Vec<_>>(),
                })
                .to_string(),
            });
        }
        let action_url = result.as_ref().ok().and_then(Intent::action_url).map(str::to_owned);
        let settled = self
            .store()
            .settle(Settlement {
                order_id: order.id.clone(),
                attempt_id: attempt.id.clone(),
                attempt_status,
                order_status: verdict.order,
                hold: verdict.hold,
                failure_code: verdict.failure_code.clone(),
                intent_id,
                action_url,
                tickets,
                outbox,
                now: self.0.booking.clock().now(),
            })
            .await?;
        let order = match settled {
            Settled::Applied(o) => {
                self.tell_seat_map(hold, verdict.hold).await;
                o
            }
            Settled::AlreadySettled(o) => o,
            Settled::HoldLost(o) => {
                // 14: paid after the seats were gone: give the money back.
                tracing::warn!(order = %o.id, "payment captured after its hold ended; refunding");
                if let Some(id) = &o.payment_intent {
                    self.refund_capture(id, attempt).await;
                }
                o
            }
            Settled::NotFound => return Err(StoreError::Internal(anyhow::anyhow!("order {} vanished", order.id))),
        };
        self.receipt(order).await
    }

    /// Refunds a capture with a key derived from the attempt, so repeating
    /// this (here or in reconciliation) can never refund twice.
    async fn refund_capture(&self, intent_id: &str, attempt: &Attempt) {
        let key = format!("boxoffice-refund-{}", attempt.id);
        if let Err(e) = self.0.gateway.refund(intent_id, None, &key).await {
            tracing::error!(intent = intent_id, error = %e, "refund failed; reconciliation will retry it");
        }
    }

    /// Signed tickets for every seat and GA place of the hold.
    fn issue(&self, order: &Order, hold: &Hold) -> Vec<NewTicket> {
        let mut out = Vec::new();
        let mut sign = |seat: Option<crate::domain::ids::SeatId>, area: Option<crate::domain::ids::AreaId>| {
            let id = TicketId::generate();
            let label = match (&seat, &area) {
                (Some(s), _) => s.to_string(),
                (None, Some(a)) => format!("GA:{a}"),
                (None, None) => String::new(),
            };
            let code = self.0.signer.sign(&TicketClaims {
                ticket_id: id.to_string(),
                event_id: order.event_id.to_string(),
                seat: label,
            });
            out.push(NewTicket { id, seat, ga_area: area, code });
        };
        for s in &hold.seats {
            sign(Some(s.clone()), None);
        }
        if let Some(g) = &hold.ga {
            for _ in 0..g.count {
                sign(None, Some(g.area.clone()));
            }
        }
        out
    }

    /// Seat-map subscribers learn at once; released seats drop their
    /// fast-path locks.
    async fn tell_seat_map(&self, hold: &Hold, fate: HoldFate) {
        let status = match fate {
            HoldFate::Sell => ChangeStatus::Sold,
            HoldFate::Release => {
                if let Err(e) = self.0.booking.locks().release(&hold.event_id, &hold.seats, &hold.id).await {
                    tracing::debug!(error = %e, "could not release fast-path locks");
                }
                ChangeStatus::Available
            }
            HoldFate::Keep | HoldFate::AwaitOutcome => return,
        };
        let ga = hold.ga.as_ref().map(|g| GaChange { area: g.area.clone() });
        self.0.booking.feed().publish(&hold.event_id, SeatChange { seats: hold.seats.clone(), status, ga });
    }

    /// The order with its tickets.
    pub async fn receipt(&self, order: Order) -> Result<Receipt, StoreError> {
        let tickets = if order.status == OrderStatus::Confirmed || order.status == OrderStatus::Refunded {
            self.store().order_tickets(&order.id).await?
        } else {
            vec![]
        };
        Ok(Receipt { order, tickets })
    }

    /// The fan gives up on a payment still waiting (3-D Secure, or not yet
    /// sent): it is cancelled at the gateway, and the hold released (design
    /// row 15). A payment the gateway is already processing, or that
    /// succeeded, cannot be cancelled; the answer is the order as it is.
    pub async fn cancel(&self, customer: &Customer, id: &OrderId) -> Result<Option<CancelOutcome>, StoreError> {
        let Some(order) = self.store().order(id).await?.filter(|o| o.customer_id == customer.id) else {
            return Ok(None);
        };
        // One gateway call when the attempt knows its intent: the cancel
        // itself, whose refusal means the payment moved on.
        let attempt = if order.status.unsettled() { self.running_attempt(&order).await? } else { None };
        let Some(attempt) = attempt else { return Ok(Some(CancelOutcome::TooLate(self.receipt(order).await?))) };
        let intent_id = match &attempt.intent_id {
            Some(id) => id.clone(),
            None => match self.find_intent(&attempt).await {
                Ok(Some(i)) => i.id,
                // Nothing reached the gateway (yet): the order stays as it is
                // until reconciliation knows.
                Ok(None) | Err(_) => return Ok(Some(CancelOutcome::TooLate(self.receipt(order).await?))),
            },
        };
        match self.0.gateway.cancel(&intent_id, &format!("boxoffice-cancel-{}", attempt.id)).await {
            Ok(canceled) => {
                let Some(hold) = self.store().hold(&order.hold_id).await? else {
                    return Err(StoreError::Internal(anyhow::anyhow!("order {} has no hold", order.id)));
                };
                let after = self.apply(&order, &attempt, &hold, Ok(canceled)).await?;
                Ok(Some(CancelOutcome::Cancelled(after)))
            }
            // It moved on (processing or paid): report where it is now.
            Err(_) => Ok(Some(CancelOutcome::TooLate(self.refresh(order).await?))),
        }
    }

    /// The customer's own order, refreshed from the gateway when its outcome
    /// is still open; anyone else's reads as absent.
    pub async fn order_for(&self, customer: &Customer, id: &OrderId) -> Result<Option<Receipt>, StoreError> {
        let Some(order) = self.store().order(id).await?.filter(|o| o.customer_id == customer.id) else {
            return Ok(None);
        };
        self.refresh(order).await.map(Some)
    }
}
