//! What the store keeps about paying for holds: orders, payment attempts,
//! tickets, stored idempotent responses and the notification outbox.
//! Shared by every backend; the conformance suite holds them to the same
//! behaviour.

use crate::domain::hold::{Hold, HoldStatus};
use crate::domain::ids::{AreaId, AttemptId, CustomerId, EventId, HoldId, OrderId, SeatId, TicketId};
use crate::domain::money::Currency;
use crate::domain::order::{HoldFate, OrderStatus};
use crate::domain::time::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub hold_id: HoldId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    pub status: OrderStatus,
    pub amount: i64,
    pub currency: Currency,
    pub quantity: u32,
    /// Why the last attempt failed.
    pub failure_code: Option<String>,
    /// For `requires_action`: where the fan authenticates.
    pub action_url: Option<String>,
    /// The gateway intent whose capture paid for the order.
    pub payment_intent: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: i64,
}

/// One try at paying. Its id derives the gateway idempotency key, and it is
/// written before the gateway is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptStatus {
    /// Persisted; the gateway call is under way or its answer was lost.
    Started,
    RequiresAction,
    Processing,
    Succeeded,
    Failed,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Started => "started",
            AttemptStatus::RequiresAction => "requires_action",
            AttemptStatus::Processing => "processing",
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "started" => AttemptStatus::Started,
            "requires_action" => AttemptStatus::RequiresAction,
            "processing" => AttemptStatus::Processing,
            "succeeded" => AttemptStatus::Succeeded,
            "failed" => AttemptStatus::Failed,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub id: AttemptId,
    pub order_id: OrderId,
    pub payment_method: String,
    pub amount: i64,
    pub currency: Currency,
    pub status: AttemptStatus,
    pub intent_id: Option<String>,
    pub failure_code: Option<String>,
    pub created_at: Timestamp,
}

impl Attempt {
    /// The gateway idempotency key of this attempt: derived, never minted,
    /// so a retry after a crash uses the same one.
    pub fn gateway_key(&self) -> String {
        format!("boxoffice-{}", self.id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketStatus {
    Valid,
    Used,
    /// Refunded: no longer admits anyone.
    Void,
}

impl TicketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::Valid => "valid",
            TicketStatus::Used => "used",
            TicketStatus::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "valid" => TicketStatus::Valid,
            "used" => TicketStatus::Used,
            "void" => TicketStatus::Void,
            _ => return None,
        })
    }
}

/// A ticket as issued: one seat, or one place in a GA area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTicket {
    pub id: TicketId,
    pub seat: Option<SeatId>,
    pub ga_area: Option<AreaId>,
    /// The signed code (see `domain::ticket`).
    pub code: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub id: TicketId,
    pub order_id: OrderId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    pub seat: Option<SeatId>,
    pub ga_area: Option<AreaId>,
    pub code: String,
    pub status: TicketStatus,
    pub used_at: Option<Timestamp>,
}

/// A notification to deliver, written in the same transaction as the change
/// it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Such as `order.confirmed`, `hold.expired`, `order.refunded`, `ops.alert`.
    pub topic: String,
    /// JSON.
    pub payload: String,
}

/// An outbox row waiting for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub topic: String,
    pub payload: String,
    /// Delivery tries so far, this one included once claimed.
    pub attempts: u32,
    /// Channels already delivered to, comma-separated.
    pub done_channels: String,
    pub created_at: Timestamp,
}

/// Where a delivery try left an outbox row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxProgress {
    pub done_channels: String,
    /// Every channel has it.
    pub delivered: bool,
    /// When to try again, if not delivered.
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
}

/// Starting a checkout: the hold moves to `checkout` (its expiry extended
/// once by the payment window), its order is created or reopened, and the
/// payment attempt is written, all in one transaction.
#[derive(Clone, Debug)]
pub struct CheckoutStart {
    pub hold_id: HoldId,
    pub customer_id: CustomerId,
    /// Used when the hold has no order yet.
    pub order_id: OrderId,
    pub attempt_id: AttemptId,
    pub payment_method: String,
    pub payment_window_secs: u32,
    pub now: Timestamp,
}

#[derive(Clone, Debug)]
pub struct CheckoutStarted {
    pub hold: Hold,
    pub order: Order,
    pub attempt: Attempt,
}

/// Why a checkout did not start. Nothing was written.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckoutRefusal {
    /// No such hold, or another customer's.
    HoldNotFound,
    /// The hold ran out of time (410).
    HoldExpired,
    /// Released, paid for, or payment already under way (409); the order,
    /// when there is one.
    HoldNotActive { status: HoldStatus, order: Option<Box<Order>> },
}

/// The end of a payment attempt, as the checkout flow or reconciliation
/// decided it.
#[derive(Clone, Debug)]
pub struct Settlement {
    pub order_id: OrderId,
    pub attempt_id: AttemptId,
    pub attempt_status: AttemptStatus,
    pub order_status: OrderStatus,
    pub hold: HoldFate,
    pub failure_code: Option<String>,
    pub intent_id: Option<String>,
    pub action_url: Option<String>,
    /// Issued when the hold is sold.
    pub tickets: Vec<NewTicket>,
    pub outbox: Vec<OutboxMessage>,
    pub now: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Settled {
    /// Written; the order as it is now.
    Applied(Order),
    /// The order had already reached an end (another node or reconciliation
    /// settled it first); nothing was written.
    AlreadySettled(Order),
    /// A sale was asked for, but the hold is no longer in checkout (it was
    /// released, or lapsed and was expired): the money captured must be
    /// refunded. The order is now `failed` with `hold_expired`, and the
    /// attempt stays open with its intent, so reconciliation refunds it
    /// until the gateway confirms.
    HoldLost(Order),
    NotFound,
}

/// The answer to claiming an idempotency key for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyClaim {
    /// This request runs; finish the key with its response.
    Claimed,
    /// The same key with a different request.
    Mismatch,
    /// Another request with this key is still running.
    InFlight,
    /// The stored first response.
    Replay { status: u16, body: Vec<u8> },
}

/// What scanning a ticket did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckIn {
    /// First scan: the ticket is `used` now.
    Admitted(Ticket),
    /// Scanned before, at `used_at`.
    AlreadyUsed(Ticket),
    /// Refunded: it admits nobody.
    Void(Ticket),
    NotFound,
}

/// What refunding an order did.
#[derive(Clone, Debug, PartialEq)]
pub enum Refunded {
    /// Now `refunded`: seats available, tickets void, the hold released,
    /// an `order.refunded` outbox row written.
    Done(Order),
    /// Already refunded before; nothing changed.
    Already(Order),
    /// Not a confirmed order; nothing changed.
    NotConfirmed(Order),
    NotFound,
}
