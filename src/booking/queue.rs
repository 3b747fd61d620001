//! The waiting room service: a room per event whose `waiting_room` is
//! enabled, and admission tokens for the fans it lets in.
//!
//! The rooms live in a [`WaitingRooms`] backend: in this process (embedded
//! mode) or in Redis (scale-out, one queue across every node). Either way
//! they are accelerators: losing them loses places in line (fans join
//! again), never a seat or an order, which the database decides.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::accelerators::waiting_room::{fan_key, RoomSettings, RoomSpec, Status, WaitingRooms};
use crate::accelerators::CatalogCache;
use crate::domain::admission::{AdmissionClaims, AdmissionKey, NotAdmitted};
use crate::domain::draw::DrawKey;
use crate::domain::event::Event;
use crate::domain::ids::{CustomerId, EventId};
use crate::domain::time::{Clock, Timestamp};
use crate::store::{Customer, DynStore, ExpiredHold, StoreError};

/// How long a fan may wait to claim a turn, and how long a claimed turn
/// lasts after that.
#[derive(Clone, Copy, Debug)]
pub struct QueueSettings {
    pub claim_window: Duration,
    pub shopping_time: Duration,
}

/// A fan's entry as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub entry_id: String,
    /// `prequeue`, `waiting`, `admitted` or `expired`.
    pub status: &'static str,
    pub position: Option<u32>,
    pub estimated_wait_seconds: Option<u64>,
    pub admission_token: Option<String>,
    /// When the admission token stops admitting.
    pub admitted_until: Option<Timestamp>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no such event")]
    EventNotFound,
    #[error("this event has no waiting room")]
    NoWaitingRoom,
    #[error("the waiting room opens at {0:?}")]
    NotOpen(Timestamp),
    #[error("the sale is over")]
    Closed,
    #[error("every ticket is sold")]
    SoldOut,
    #[error("no such entry")]
    EntryNotFound,
    /// The rooms' backend (Redis) did not answer.
    #[error("the waiting room is unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct QueueService(Arc<Inner>);

struct Inner {
    store: DynStore,
    rooms: Arc<dyn WaitingRooms>,
    /// Each event's draw key, read once from the database.
    draw_keys: RwLock<HashMap<EventId, DrawKey>>,
    key: AdmissionKey,
    catalog: Arc<CatalogCache>,
    clock: Arc<dyn Clock>,
    settings: QueueSettings,
}

impl QueueService {
    pub fn new(
        store: DynStore,
        rooms: Arc<dyn WaitingRooms>,
        catalog: Arc<CatalogCache>,
        clock: Arc<dyn Clock>,
        key: AdmissionKey,
        settings: QueueSettings,
    ) -> Self {
        Self(Arc::new(Inner { store, rooms, draw_keys: RwLock::new(HashMap::new()), key, catalog, clock, settings }))
    }

    /// The rooms' backend.
    pub fn rooms(&self) -> &Arc<dyn WaitingRooms> {
        &self.0.rooms
    }

    async fn event(&self, id: &EventId) -> Result<Arc<Event>, QueueError> {
        self.0.catalog.event(id).await?.ok_or(QueueError::EventNotFound)
    }

    /// The event's room; `None` when the event has no enabled waiting
    /// room. Its draw key is kept in the database, so the published
    /// commitment survives a restart and every node draws alike.
    async fn room(&self, event: &Event) -> Result<Option<RoomSpec>, StoreError> {
        let Some(w) = event.waiting_room.as_ref().filter(|w| w.enabled) else { return Ok(None) };
        let known = self.0.draw_keys.read().get(&event.id).copied();
        let key = match known {
            Some(key) => key,
            None => {
                let fresh = crate::domain::customer::random_secret().to_vec();
                let stored = self.0.store.ensure_setting(&format!("draw_key:{}", event.id), fresh).await?;
                let key = DrawKey(
                    stored.try_into().map_err(|_| StoreError::Internal(anyhow::anyhow!("bad stored draw key")))?,
                );
                *self.0.draw_keys.write().entry(event.id.clone()).or_insert(key)
            }
        };
        let settings = RoomSettings {
            rate_per_minute: w.admission_rate_per_minute,
            max_active: w.max_active_shoppers,
            on_sale_at: event.on_sale_at,
            claim_window: self.0.settings.claim_window,
            shopping_time: self.0.settings.shopping_time,
        };
        Ok(Some(RoomSpec { event: event.id.clone(), settings, key }))
    }

    /// Joins the fan to the event's queue: `(entry, true)` the first time,
    /// the same entry with `false` after.
    pub async fn join(&self, customer: &Customer, event: &EventId) -> Result<(Entry, bool), QueueError> {
        let event = self.event(event).await?;
        let room = self.room(&event).await?.ok_or(QueueError::NoWaitingRoom)?;
        let now = self.0.clock.now();
        if let Some(opens) = event.waiting_room.as_ref().and_then(|w| w.prequeue_opens_at) {
            if now < opens && now < event.on_sale_at {
                return Err(QueueError::NotOpen(opens));
            }
        }
        if now >= event.starts_at || event.cancelled {
            return Err(QueueError::Closed);
        }
        // Nothing sells before the on-sale, so the pre-queue (where most
        // fans of a big on-sale join) needs no count.
        if now >= event.on_sale_at && self.sold_out(&event.id, now).await {
            return Err(QueueError::SoldOut);
        }
        let fan = fan_key(customer.email.as_str());
        let (slot, new, status) = self.0.rooms.join(&room, fan, now).await.map_err(QueueError::Unavailable)?;
        Ok((self.entry(&room, &customer.id, slot, status, now), new))
    }

    /// Whether every seat and place of the event is sold and none is held
    /// (a held one may come back). The counts are this node's last
    /// (refreshed in the background every few seconds), so neither a join nor a
    /// waiting fan's poll waits on the store; a fan who joins within a few
    /// seconds of the last sale may still get in line (and is told at a
    /// later poll). Without counts (the store did not answer the first
    /// count), the event is taken as not sold out: the check only spares
    /// fans a pointless wait, so it never fails a join or a poll.
    async fn sold_out(&self, event: &EventId, now: Timestamp) -> bool {
        match self.0.catalog.availability_now(event, now).await {
            Ok(counts) => counts.is_some_and(|a| a.all.total > 0 && a.all.sold >= a.all.total),
            Err(e) => {
                tracing::warn!(error = %e, event.id = %event, "no availability counts for the sold-out check");
                false
            }
        }
    }

    /// The fan's own entry; anyone else's reads as absent. Asking while
    /// admitted claims the turn and returns the admission token. While the
    /// event is sold out, a fan still waiting is told so (`sold_out`, with
    /// their place and no estimate) rather than waiting for a turn that
    /// would find nothing; it is not final (a refund or a failed payment
    /// brings tickets back, and the next poll says `waiting` again). A fan
    /// whose turn has come keeps it: the turn is already theirs.
    pub async fn status(&self, customer: &Customer, event: &EventId, entry_id: &str) -> Result<Entry, QueueError> {
        let event = self.event(event).await?;
        let room = self.room(&event).await?.ok_or(QueueError::NoWaitingRoom)?;
        let slot = slot_of_entry_id(entry_id).ok_or(QueueError::EntryNotFound)?;
        let now = self.0.clock.now();
        let fan = fan_key(customer.email.as_str());
        let status = self.0.rooms.status(&room, fan, slot, now).await.map_err(QueueError::Unavailable)?;
        let mut entry = self.entry(&room, &customer.id, slot, status.ok_or(QueueError::EntryNotFound)?, now);
        // (`waiting` comes only after the on-sale: the pre-queue needs no count.)
        if entry.status == "waiting" && self.sold_out(&event.id, now).await {
            entry = Entry { status: "sold_out", estimated_wait_seconds: None, ..entry };
        }
        Ok(entry)
    }

    /// The entry as the fan sees it; an admitted one carries its token.
    fn entry(&self, room: &RoomSpec, customer: &CustomerId, slot: u32, status: Status, now: Timestamp) -> Entry {
        let base = Entry {
            entry_id: entry_id_of(slot),
            status: "waiting",
            position: None,
            estimated_wait_seconds: None,
            admission_token: None,
            admitted_until: None,
        };
        match status {
            Status::PreQueue { on_sale_at } => Entry {
                status: "prequeue",
                estimated_wait_seconds: Some(((on_sale_at.as_millis() - now.as_millis()).max(0) / 1000) as u64),
                ..base
            },
            Status::Waiting { position, estimated_wait, .. } => {
                Entry { position: Some(position), estimated_wait_seconds: estimated_wait.map(|d| d.as_secs()), ..base }
            }
            Status::Admitted { position, until } => {
                let claims = AdmissionClaims {
                    customer_id: customer.to_string(),
                    event_id: room.event.to_string(),
                    expires_at: until.as_millis(),
                    position: u64::from(position),
                };
                Entry {
                    status: "admitted",
                    position: Some(position),
                    estimated_wait_seconds: Some(0),
                    admission_token: Some(self.0.key.issue(&claims)),
                    admitted_until: Some(until),
                    ..base
                }
            }
            Status::Expired { position } => Entry { status: "expired", position: Some(position), ..base },
        }
    }

    /// Whether this request may hold seats or check out for `event`: always
    /// when the event has no waiting room, else only with a valid token of a
    /// turn that has not been finished.
    pub async fn admit(&self, customer: &CustomerId, event: &Event, token: Option<&str>) -> Result<(), NotAdmitted> {
        if !event.has_waiting_room() {
            return Ok(());
        }
        let claims = self.0.key.verify(token, customer, &event.id, self.0.clock.now())?;
        // Without an answer from the rooms the signed token stands: it still
        // names this fan and this event, and it expires.
        if let Ok(Some(room)) = self.room(event).await {
            let position = u32::try_from(claims.position).unwrap_or(u32::MAX);
            if self.0.rooms.is_finished(&room, position).await.unwrap_or(false) {
                return Err(NotAdmitted::Expired);
            }
        }
        Ok(())
    }

    /// For holds that lapsed and were ended (by the sweeper, or reclaimed by
    /// a GA hold): [`QueueService::done_shopping`] once per fan and event,
    /// however many of their holds ended.
    pub async fn holds_ended(&self, ended: &[ExpiredHold]) {
        let fans: BTreeMap<_, _> = ended.iter().map(|h| ((h.buyer.id.as_str(), h.event_id.as_str()), h)).collect();
        for h in fans.into_values() {
            self.done_shopping(&h.buyer, &h.event_id).await;
        }
    }

    /// Frees the fan's waiting-room place once they hold nothing more of the
    /// event: they paid, let go of their last hold, or let it lapse (the
    /// sweeper calls this for every hold it ends).
    pub async fn done_shopping(&self, customer: &Customer, event: &EventId) {
        // Most events have no room: no database read for them.
        let has_room = self.0.catalog.event(event).await.ok().flatten().is_some_and(|e| e.has_waiting_room());
        if !has_room {
            return;
        }
        let live = self.0.store.customer_holds(customer, self.0.clock.now(), 100).await;
        if live.is_ok_and(|holds| !holds.iter().any(|h| &h.event_id == event)) {
            self.finished(customer, event).await;
        }
    }

    /// The fan is done shopping (paid, or let the hold go): their place is
    /// free for the next fan at once, and their token admits no more.
    pub async fn finished(&self, customer: &Customer, event: &EventId) {
        let Ok(event) = self.event(event).await else { return };
        let Ok(Some(room)) = self.room(&event).await else { return };
        let fan = fan_key(customer.email.as_str());
        if let Err(e) = self.0.rooms.finish(&room, fan, self.0.clock.now()).await {
            // The place comes back when the turn ends anyway.
            tracing::warn!(error = format!("{e:#}"), "could not free a finished shopper's place");
        }
    }

    /// The live state of an event's room, for organizers.
    pub async fn overview(&self, event: &EventId) -> Result<Overview, QueueError> {
        let event = self.event(event).await?;
        let room = self.room(&event).await?.ok_or(QueueError::NoWaitingRoom)?;
        let now = self.0.clock.now();
        let (counts, measured) = self.0.rooms.overview(&room, now).await.map_err(QueueError::Unavailable)?;
        Ok(Overview {
            joined: counts.joined,
            drawn: counts.drawn,
            waiting: counts.waiting,
            admitted: counts.serving,
            active: counts.active,
            rate_per_minute: room.settings.rate_per_minute,
            measured_rate_per_minute: measured,
            draw_commitment: room.key.commitment(),
            // Published once the draw has happened.
            draw_key: (now >= room.settings.on_sale_at).then(|| room.key.to_hex()),
        })
    }
}

/// What organizers see of a room (`GET /v1/events/{id}/queue`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Overview {
    pub joined: u32,
    /// How many fans joined before the on-sale and were placed by the draw
    /// (join slots `0..drawn`; an entry `qe_N` has slot N); null before it.
    /// With `draw_key`, anyone can recompute each drawn fan's position.
    pub drawn: Option<u32>,
    pub waiting: u32,
    pub admitted: u32,
    /// Admitted and still shopping (or yet to claim).
    pub active: u32,
    pub rate_per_minute: u32,
    pub measured_rate_per_minute: f64,
    /// SHA-256 of the draw key, published before the on-sale.
    pub draw_commitment: String,
    /// The draw key, published once the draw has happened.
    pub draw_key: Option<String>,
}

fn entry_id_of(slot: u32) -> String {
    format!("qe_{slot}")
}

fn slot_of_entry_id(entry_id: &str) -> Option<u32> {
    entry_id.strip_prefix("qe_")?.parse().ok().filter(|s| entry_id_of(*s) == entry_id)
}
