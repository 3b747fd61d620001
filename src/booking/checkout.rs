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
use crate::payments::verdict::Verdict;
use crate::payments::{Gateway, GatewayError, Intent, PaymentRequest};
use crate::store::checkout::{
    Attempt, AttemptStatus, CheckoutRefusal, CheckoutStart, NewTicket, Order, OutboxMessage, Settled, Settlement,
    Ticket,
};
use crate::store::{Customer, DynStore, StoreError};

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
        let attempts = self.store().order_attempts(&order.id).await?;
        let Some(attempt) = attempts.into_iter().rev().find(|a| {
            matches!(a.status, AttemptStatus::Started | AttemptStatus::RequiresAction | AttemptStatus::Processing)
        }) else {
            return self.receipt(order).await;
        };
        let found = match &attempt.intent_id {
            Some(id) => self.0.gateway.retrieve(id).await.map(Some),
            None => self
                .0
                .gateway
                .search_metadata("attempt_id", attempt.id.as_str())
                .await
                .map(|found| found.into_iter().next()),
        };
        let intent = match found {
            Ok(Some(intent)) => intent,
            Ok(None) | Err(_) => return self.receipt(order).await,
        };
        let Some(hold) = self.store().hold(&order.hold_id).await? else {
            return Err(StoreError::Internal(anyhow::anyhow!("order {} has no hold", order.id)));
        };
        self.apply(&order, &attempt, &hold, Ok(intent)).await
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
            (HoldFate::Keep | HoldFate::Release, _) if verdict.refund_and_alert => AttemptStatus::Succeeded,
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
                self.refund(id, attempt).await;
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
                    self.refund(id, attempt).await;
                }
                o
            }
            Settled::NotFound => return Err(StoreError::Internal(anyhow::anyhow!("order {} vanished", order.id))),
        };
        self.receipt(order).await
    }

    /// Refunds a capture with a key derived from the attempt, so repeating
    /// this (here or in reconciliation) can never refund twice.
    async fn refund(&self, intent_id: &str, attempt: &Attempt) {
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

    /// The customer's own order, refreshed from the gateway when its outcome
    /// is still open; anyone else's reads as absent.
    pub async fn order_for(&self, customer: &Customer, id: &OrderId) -> Result<Option<Receipt>, StoreError> {
        let Some(order) = self.store().order(id).await?.filter(|o| o.customer_id == customer.id) else {
            return Ok(None);
        };
        self.refresh(order).await.map(Some)
    }
}
