//! The source of truth for customers, the catalog, seat inventory and holds.
//!
//! Callers see only the [`Store`] trait. Each backend implements every
//! state change as conditional writes inside one transaction, so the
//! database alone decides who gets a seat; nothing above this layer
//! (locks, caches) can make it sell a seat twice.
//!
//! Backends: [`sqlite::SqliteStore`] (embedded default). The conformance
//! suite in `tests/store_conformance.rs` runs against every backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::customer::{Email, TokenHash};
use crate::domain::event::{Event, EventStatus};
use crate::domain::hold::{GaSelection, Hold, LimitExceeded, Selection};
use crate::domain::ids::{
    AreaId, AttemptId, Category, CustomerId, EventId, HoldId, OrderId, SeatId, TicketId, VenueId,
};
use crate::domain::time::Timestamp;
use crate::domain::venue::Venue;

pub mod checkout;
mod codec;

use checkout::{
    Attempt, AttemptStatus, CheckIn, CheckoutRefusal, CheckoutStart, CheckoutStarted, KeyClaim, Order, OutboxMessage,
    OutboxProgress, OutboxRow, Refunded, Settled, Settlement, Ticket,
};
pub mod postgres;
pub mod sqlite;

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached in time; the caller may retry.
    #[error("the database is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A uniqueness rule held: the thing already exists.
    #[error("already exists: {0}")]
    Duplicate(String),
    /// A version check failed: someone else changed the row first.
    #[error("changed concurrently")]
    Conflict,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StoreError {
    /// The same failure again, for each caller of a shared batch.
    pub(crate) fn replicate(&self) -> StoreError {
        match self {
            StoreError::Unavailable(e) => StoreError::Unavailable(anyhow::anyhow!("{e:#}")),
            StoreError::Duplicate(s) => StoreError::Duplicate(s.clone()),
            StoreError::Conflict => StoreError::Conflict,
            StoreError::Internal(e) => StoreError::Internal(anyhow::anyhow!("{e:#}")),
        }
    }
}

/// A signed-in customer, as a session token resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Customer {
    pub id: CustomerId,
    /// Also the buyer key that purchase limits count by.
    pub email: Email,
}

pub struct NewSession {
    pub customer: Customer,
    pub token_hash: TokenHash,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// How many seats/places are in each state. `held` includes `checkout`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub total: u64,
    pub available: u64,
    pub held: u64,
    pub sold: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.total += o.total;
        self.available += o.available;
        self.held += o.held;
        self.sold += o.sold;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Availability {
    pub all: Counts,
    pub by_category: BTreeMap<Category, Counts>,
}

impl Availability {
    pub fn from_categories(by_category: BTreeMap<Category, Counts>) -> Self {
        let mut all = Counts::default();
        for c in by_category.values() {
            all.add(c);
        }
        Self { all, by_category }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatStatus {
    Available,
    Held,
    Sold,
}

impl SeatStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SeatStatus::Available => "available",
            SeatStatus::Held => "held",
            SeatStatus::Sold => "sold",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SeatState {
    pub id: SeatId,
    pub category: Category,
    pub status: SeatStatus,
}

#[derive(Clone, Debug)]
pub struct GaState {
    pub id: AreaId,
    pub name: String,
    pub category: Category,
    pub capacity: u32,
    pub available: u32,
}

#[derive(Clone, Debug, Default)]
pub struct SeatMapState {
    pub seats: Vec<SeatState>,
    pub ga_areas: Vec<GaState>,
}

impl SeatStatus {
    /// The status a store's seat query encodes as 2 (sold), 1 (held and
    /// not lapsed, or in checkout) or 0 (available).
    pub(crate) fn from_code(code: i64) -> SeatStatus {
        match code {
            2 => SeatStatus::Sold,
            1 => SeatStatus::Held,
            _ => SeatStatus::Available,
        }
    }
}

/// One GA area as a store reads it, with the places of lapsed holds the
/// sweeper has not reached yet counted as available.
pub(crate) struct GaRow {
    pub state: GaState,
    pub sold: u32,
}

impl GaRow {
    pub(crate) fn new(id: AreaId, name: String, category: Category, stored: GaCounters) -> GaRow {
        let GaCounters { capacity, held, sold, lapsed } = stored;
        let available = capacity.saturating_sub(held.saturating_sub(lapsed)).saturating_sub(sold);
        GaRow { state: GaState { id, name, category, capacity, available }, sold }
    }
}

/// A GA area's stored counters, and the places of its lapsed holds.
pub(crate) struct GaCounters {
    pub capacity: u32,
    pub held: u32,
    pub sold: u32,
    pub lapsed: u32,
}

/// Availability from each category's seat counts `(category, total, sold,
/// held)` and the GA areas.
pub(crate) fn tally(seats: impl IntoIterator<Item = (Category, u64, u64, u64)>, ga: &[GaRow]) -> Availability {
    let mut by: BTreeMap<Category, Counts> = BTreeMap::new();
    for (category, total, sold, held) in seats {
        let e = by.entry(category).or_default();
        e.total += total;
        e.sold += sold;
        e.held += held;
        e.available += total.saturating_sub(sold + held);
    }
    for a in ga {
        let g = &a.state;
        let e = by.entry(g.category.clone()).or_default();
        e.total += u64::from(g.capacity);
        e.available += u64::from(g.available);
        e.sold += u64::from(a.sold);
        e.held += u64::from(g.capacity.saturating_sub(g.available).saturating_sub(a.sold));
    }
    Availability::from_categories(by)
}

/// Search filters. Results come in `(starts_at, id)` order.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub city: Option<String>,
    pub text: Option<String>,
    pub category: Option<Category>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// Resume after this `(starts_at, id)`.
    pub after: Option<(Timestamp, EventId)>,
    pub limit: u32,
}

impl EventQuery {
    /// The text filter as a `LIKE` pattern (escape character `\`) that
    /// matches it anywhere, its own `%`, `_` and `\` taken literally.
    pub(crate) fn like_pattern(&self) -> Option<String> {
        self.text.as_ref().map(|t| {
            let escaped = t.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("%{escaped}%")
        })
    }

    /// The cursor as bind values: `(starts_at millis, id)`, both absent
    /// on the first page.
    pub(crate) fn after_binds(&self) -> (Option<i64>, Option<String>) {
        match &self.after {
            Some((t, id)) => (Some(t.as_millis()), Some(id.to_string())),
            None => (None, None),
        }
    }
}

/// Everything the store needs to place one hold atomically.
#[derive(Clone, Debug)]
pub struct HoldPlacement {
    pub hold_id: HoldId,
    pub event_id: EventId,
    pub customer: Customer,
    pub selection: Selection,
    pub now: Timestamp,
}

/// Why a hold was not placed. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldRejection {
    EventNotFound,
    NotOnSale(EventStatus),
    LimitExceeded(LimitExceeded),
    /// Seat ids or areas that the venue does not have.
    InvalidSeats(Vec<String>),
    /// Seats (or a GA area) someone else has: held, in checkout or sold.
    Unavailable(Vec<String>),
}

#[derive(Clone, Debug)]
pub enum ReleaseOutcome {
    /// The hold was active and its seats are free now.
    Released(Hold),
    /// The hold had already ended (released or expired).
    AlreadyEnded(Hold),
    /// The hold had lapsed and this call ended it, freeing these seats
    /// (the ones no other hold had taken over meanwhile).
    Lapsed {
        hold: Hold,
        freed: Vec<SeatId>,
    },
    /// Payment is under way; only checkout's own flow can end it.
    InCheckout(Hold),
    /// Paid for: its seats belong to an order now (a refund frees them).
    Purchased(Hold),
    NotFound,
}

/// A hold the sweeper ended, so locks can be dropped and fans told.
#[derive(Clone, Debug)]
pub struct ExpiredHold {
    pub id: HoldId,
    pub event_id: EventId,
    pub seats: Vec<SeatId>,
    /// The seats this expiry actually freed: those no other hold had
    /// already taken over after the hold lapsed.
    pub freed: Vec<SeatId>,
    pub ga: Option<GaSelection>,
    /// Whose hold it was: a waiting room frees their place once nothing
    /// else of theirs at the event is live.
    pub buyer: Customer,
}

/// A placed hold, and the lapsed holds its placement ended on the way: a
/// GA hold first hands back its area's lapsed holds (lazy expiry), and
/// those end here rather than in the sweeper, so the caller does for them
/// what the sweeper would (their fans' waiting-room places free at once).
#[derive(Clone, Debug)]
pub struct Placed {
    pub hold: Hold,
    pub reclaimed: Vec<ExpiredHold>,
}

impl Placed {
    pub fn alone(hold: Hold) -> Placed {
        Placed { hold, reclaimed: Vec::new() }
    }
}

/// The hold a successful placement creates: priced from the event's
/// current prices for the categories taken, expiring after its TTL.
pub(crate) fn priced_hold(
    p: &HoldPlacement,
    event: &Event,
    seats: Vec<SeatId>,
    ga: Option<GaSelection>,
    categories: &[Category],
) -> anyhow::Result<Hold> {
    let amount = event
        .amount_for(categories)
        .ok_or_else(|| anyhow::anyhow!("event {} cannot price categories {categories:?}", event.id))?;
    Ok(Hold {
        id: p.hold_id.clone(),
        event_id: p.event_id.clone(),
        customer_id: p.customer.id.clone(),
        status: crate::domain::hold::HoldStatus::Held,
        seats,
        ga,
        amount,
        currency: event.currency,
        created_at: p.now,
        expires_at: p.now.plus_secs(event.hold_ttl_seconds),
        version: 1,
    })
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and `/readyz`: `sqlite`, `postgres`.
    fn backend(&self) -> &'static str;

    /// A cheap round trip that proves the database answers.
    async fn ping(&self) -> StoreResult<()>;

    async fn create_session(&self, s: NewSession) -> StoreResult<()>;
    /// The customer a live session token belongs to, and when it expires.
    async fn session_customer(&self, token: TokenHash, now: Timestamp) -> StoreResult<Option<(Customer, Timestamp)>>;

    async fn insert_venue(&self, v: &Venue, now: Timestamp) -> StoreResult<()>;
    async fn venue(&self, id: &VenueId) -> StoreResult<Option<Venue>>;

    /// Creates the event and one inventory row per seat and GA area.
    async fn insert_event(&self, e: &Event, venue: &Venue) -> StoreResult<()>;
    async fn event(&self, id: &EventId) -> StoreResult<Option<Event>>;
    /// Writes `e` if the stored version is still `e.version - 1`;
    /// otherwise [`StoreError::Conflict`].
    async fn update_event(&self, e: &Event) -> StoreResult<()>;
    async fn search_events(&self, q: &EventQuery) -> StoreResult<Vec<Event>>;

    async fn availability(&self, id: &EventId, now: Timestamp) -> StoreResult<Option<Availability>>;
    async fn seat_map_state(&self, id: &EventId, now: Timestamp) -> StoreResult<Option<SeatMapState>>;

    /// All or nothing: either every requested seat/place is held by the new
    /// hold, or nothing changed.
    async fn place_hold(&self, p: HoldPlacement) -> StoreResult<Result<Placed, HoldRejection>>;
    async fn hold(&self, id: &HoldId) -> StoreResult<Option<Hold>>;
    /// The customer's live holds (held and not lapsed, or in checkout),
    /// newest first, at most `limit`.
    async fn customer_holds(&self, customer: &Customer, now: Timestamp, limit: u32) -> StoreResult<Vec<Hold>>;
    /// Releases the customer's own hold; someone else's is `NotFound`.
    async fn release_hold(&self, id: &HoldId, customer: &CustomerId, now: Timestamp) -> StoreResult<ReleaseOutcome>;
    /// Ends up to `limit` holds whose time ran out. Idempotent and safe to
    /// run concurrently: each hold is ended by exactly one caller.
    async fn expire_holds(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<ExpiredHold>>;

    /// Moves the customer's live hold to `checkout`, creates or reopens its
    /// order and writes the payment attempt: one transaction, conditional on
    /// the hold being `held` and not lapsed.
    async fn start_checkout(&self, s: CheckoutStart) -> StoreResult<Result<CheckoutStarted, CheckoutRefusal>>;
    /// Records how a payment attempt ended and does what it means for the
    /// hold. A sale is one transaction conditional on the hold still being in
    /// checkout: seats sold, order confirmed, tickets and outbox rows written.
    async fn settle(&self, s: Settlement) -> StoreResult<Settled>;
    async fn order(&self, id: &OrderId) -> StoreResult<Option<Order>>;
    async fn order_for_hold(&self, hold: &HoldId) -> StoreResult<Option<Order>>;
    /// Newest first, at most `limit`.
    async fn customer_orders(&self, customer: &CustomerId, limit: u32) -> StoreResult<Vec<Order>>;
    /// Oldest first.
    async fn order_attempts(&self, order: &OrderId) -> StoreResult<Vec<Attempt>>;
    async fn order_tickets(&self, order: &OrderId) -> StoreResult<Vec<Ticket>>;
    async fn ticket(&self, id: &TicketId) -> StoreResult<Option<Ticket>>;
    /// Admits a valid ticket once: one conditional UPDATE, so of any number
    /// of simultaneous scans exactly one is `Admitted`.
    async fn check_in(&self, id: &TicketId, now: Timestamp) -> StoreResult<CheckIn>;

    /// Claims `key` for one request of `customer` (see [`KeyClaim`]). A
    /// claim left running past `lease` (its node died) may be taken over.
    async fn claim_idempotency_key(
        &self,
        customer: &CustomerId,
        key: &str,
        request_hash: [u8; 32],
        now: Timestamp,
        lease: std::time::Duration,
    ) -> StoreResult<KeyClaim>;
    /// The stored response of a finished key whose request had this hash,
    /// without claiming anything: `(status, body)`.
    async fn stored_response(
        &self,
        customer: &CustomerId,
        key: &str,
        request_hash: [u8; 32],
    ) -> StoreResult<Option<(u16, Vec<u8>)>>;
    /// Stores the response of a claimed key, to be replayed.
    async fn finish_idempotency_key(
        &self,
        customer: &CustomerId,
        key: &str,
        status: u16,
        body: Vec<u8>,
    ) -> StoreResult<()>;
    /// Gives up a claim whose request did not run, so the key can be used again.
    async fn abandon_idempotency_key(&self, customer: &CustomerId, key: &str) -> StoreResult<()>;
    /// Deletes up to `limit` keys created before `created_before`; how many.
    async fn reap_idempotency_keys(&self, created_before: Timestamp, limit: u32) -> StoreResult<u64>;

    /// Orders whose outcome is still open (`pending`, `requires_action`,
    /// `payment_pending`), least recently updated first.
    async fn unsettled_orders(&self, limit: u32) -> StoreResult<Vec<Order>>;
    /// Confirmed orders last changed in `[from, to)`, oldest first.
    async fn orders_confirmed_between(&self, from: Timestamp, to: Timestamp, limit: u32) -> StoreResult<Vec<Order>>;
    /// Attempts still open (`started`, `requires_action`, `processing`) whose
    /// order has already ended: payments that may yet succeed late.
    async fn orphaned_attempts(&self, limit: u32) -> StoreResult<Vec<Attempt>>;
    /// Ends an open attempt of an order that has already ended; false if it
    /// was no longer open (another node closed it).
    async fn close_attempt(
        &self,
        attempt: &AttemptId,
        status: AttemptStatus,
        intent_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool>;
    /// Writes `message` to the outbox once per `dedup_key` (such as
    /// `duplicate_capture:<intent>`): false if it was written before.
    async fn alert_once(&self, dedup_key: &str, message: OutboxMessage, now: Timestamp) -> StoreResult<bool>;

    /// Undoes a confirmed order after its refund at the gateway, in one
    /// transaction: order `refunded`, seats and GA places available again,
    /// tickets void, the hold `released` (it no longer counts towards the
    /// purchase limit), and `outbox` written.
    async fn refund_order(&self, order: &OrderId, outbox: OutboxMessage, now: Timestamp) -> StoreResult<Refunded>;

    /// Undelivered outbox rows due at `now`, oldest first.
    async fn outbox_due(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<OutboxRow>>;
    /// Claims up to `limit` due rows for one relay: each is pushed `lease`
    /// into the future (and its attempts counted) by a conditional update,
    /// so two relays never deliver the same row at once.
    async fn claim_outbox(&self, now: Timestamp, lease: std::time::Duration, limit: u32)
        -> StoreResult<Vec<OutboxRow>>;
    /// Records a delivery try of a row claimed with `attempts` tries: false,
    /// and nothing written, if the row has since been claimed again (its
    /// lease ran out) or delivered.
    async fn outbox_progress(
        &self,
        id: i64,
        attempts: u32,
        progress: OutboxProgress,
        now: Timestamp,
    ) -> StoreResult<bool>;
    /// The email a customer signed in with.
    async fn customer_email(&self, id: &CustomerId) -> StoreResult<Option<String>>;

    /// Runs one of `audit`'s read-only checks on the primary: `sql` uses
    /// `$1`, `$2`, … for `params` and casts every column to text. For the
    /// audit only: it lets one SQL text check both backends.
    async fn audit_query(&self, sql: &'static str, params: Vec<i64>) -> StoreResult<Vec<Vec<Option<String>>>>;

    /// The stored value of setting `name`, storing `value` first if there is
    /// none: the first node to ask decides, every later one reads it.
    async fn ensure_setting(&self, name: &str, value: Vec<u8>) -> StoreResult<Vec<u8>>;
    /// Stores `value` as setting `name`, replacing any value it had.
    async fn put_setting(&self, name: &str, value: Vec<u8>) -> StoreResult<()>;
}

pub type DynStore = Arc<dyn Store>;
