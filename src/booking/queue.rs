//! The waiting room service: one in-process [`Room`] per event whose
//! `waiting_room` is enabled, and admission tokens for the fans it lets in.
//!
//! The rooms live in this process (embedded mode): they are accelerators,
//! and a restart loses them (fans join again; the database, which decides
//! every seat, is untouched). The scale-out Redis room is to come.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::accelerators::waiting_room::{fan_key, Room, RoomSettings, Status};
use crate::accelerators::CatalogCache;
use crate::domain::admission::{AdmissionClaims, AdmissionKey, NotAdmitted};
use crate::domain::draw::DrawKey;
use crate::domain::event::Event;
use crate::domain::ids::{CustomerId, EventId};
use crate::domain::time::{Clock, Timestamp};
use crate::store::{Customer, DynStore, StoreError};

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
    #[error("no such entry")]
    EntryNotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct QueueService(Arc<Inner>);

struct Inner {
    store: DynStore,
    rooms: RwLock<HashMap<EventId, Arc<Mutex<Room>>>>,
    key: AdmissionKey,
    catalog: Arc<CatalogCache>,
    clock: Arc<dyn Clock>,
    settings: QueueSettings,
}

impl QueueService {
    pub fn new(
        store: DynStore,
        catalog: Arc<CatalogCache>,
        clock: Arc<dyn Clock>,
        key: AdmissionKey,
        settings: QueueSettings,
    ) -> Self {
        Self(Arc::new(Inner { store, rooms: RwLock::new(HashMap::new()), key, catalog, clock, settings }))
    }

    async fn event(&self, id: &EventId) -> Result<Arc<Event>, QueueError> {
        self.0.catalog.event(id).await?.ok_or(QueueError::EventNotFound)
    }

    /// The event's room, made on first use; `None` when the event has no
    /// enabled waiting room. Its draw key is kept in the database, so the
    /// published commitment survives a restart.
    async fn room(&self, event: &Event) -> Result<Option<Arc<Mutex<Room>>>, StoreError> {
        let Some(w) = event.waiting_room.as_ref().filter(|w| w.enabled) else { return Ok(None) };
        if let Some(room) = self.0.rooms.read().get(&event.id).cloned() {
            return Ok(Some(room));
        }
        let fresh = crate::domain::customer::random_secret().to_vec();
        let stored = self.0.store.ensure_setting(&format!("draw_key:{}", event.id), fresh).await?;
        let key = DrawKey(stored.try_into().map_err(|_| StoreError::Internal(anyhow::anyhow!("bad stored draw key")))?);
        let settings = RoomSettings {
            rate_per_minute: w.admission_rate_per_minute,
            max_active: w.max_active_shoppers,
            on_sale_at: event.on_sale_at,
            claim_window: self.0.settings.claim_window,
            shopping_time: self.0.settings.shopping_time,
        };
        let room = self
            .0
            .rooms
            .write()
            .entry(event.id.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Room::new(settings, key))))
            .clone();
        Ok(Some(room))
    }

    /// Locks `room`, first bringing its pace (and, before the draw, its
    /// on-sale time) in step with `event`.
    fn lock<'r>(room: &'r Mutex<Room>, event: &Event) -> parking_lot::MutexGuard<'r, Room> {
        let mut guard = room.lock();
        if let Some(w) = &event.waiting_room {
            guard.set_pace(w.admission_rate_per_minute, w.max_active_shoppers, event.on_sale_at);
        }
        guard
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
        let mut room = Self::lock(&room, &event);
        let now = self.0.clock.now(); // read under the lock: rooms see time only move on
        let (slot, new) = room.join(fan_key(customer.email.as_str()), now);
        Ok((self.entry(&mut room, &customer.id, &event.id, slot, now), new))
    }

    /// The fan's own entry; anyone else's reads as absent. Asking while
    /// admitted claims the turn and returns the admission token.
    pub async fn status(&self, customer: &Customer, event: &EventId, entry_id: &str) -> Result<Entry, QueueError> {
        let event = self.event(event).await?;
        let room = self.room(&event).await?.ok_or(QueueError::NoWaitingRoom)?;
        let mut room = Self::lock(&room, &event);
        let slot = room
            .slot_of(fan_key(customer.email.as_str()))
            .filter(|s| entry_id_of(*s) == entry_id)
            .ok_or(QueueError::EntryNotFound)?;
        let now = self.0.clock.now();
        Ok(self.entry(&mut room, &customer.id, &event.id, slot, now))
    }

    fn entry(&self, room: &mut Room, customer: &CustomerId, event: &EventId, slot: u32, now: Timestamp) -> Entry {
        let base = Entry {
            entry_id: entry_id_of(slot),
            status: "waiting",
            position: None,
            estimated_wait_seconds: None,
            admission_token: None,
            admitted_until: None,
        };
        match room.status(slot, now) {
            Status::PreQueue { on_sale_at } => Entry {
                status: "prequeue",
                estimated_wait_seconds: Some(((on_sale_at.as_millis() - now.as_millis()).max(0) / 1000) as u64),
                ..base
            },
            Status::Waiting { position, estimated_wait, .. } => {
                Entry { position: Some(position), estimated_wait_seconds: Some(estimated_wait.as_secs()), ..base }
            }
            Status::Admitted { position, until } => {
                let claims = AdmissionClaims {
                    customer_id: customer.to_string(),
                    event_id: event.to_string(),
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
        if let Ok(Some(room)) = self.room(event).await {
            let position = u32::try_from(claims.position).unwrap_or(u32::MAX);
            if room.lock().is_finished(position) {
                return Err(NotAdmitted::Expired);
            }
        }
        Ok(())
    }

    /// The fan is done shopping (paid, or let the hold go): their place is
    /// free for the next fan at once, and their token admits no more.
    pub async fn finished(&self, customer: &Customer, event: &EventId) {
        let Ok(event) = self.event(event).await else { return };
        let Ok(Some(room)) = self.room(&event).await else { return };
        let mut room = Self::lock(&room, &event);
        if let Some(slot) = room.slot_of(fan_key(customer.email.as_str())) {
            room.finish(slot, self.0.clock.now());
        }
    }

    /// The live state of an event's room, for organizers.
    pub async fn overview(&self, event: &EventId) -> Result<Overview, QueueError> {
        let event = self.event(event).await?;
        let room = self.room(&event).await?.ok_or(QueueError::NoWaitingRoom)?;
        let mut room = Self::lock(&room, &event);
        let now = self.0.clock.now();
        room.advance(now);
        let counts = room.counts();
        Ok(Overview {
            joined: counts.joined,
            waiting: counts.waiting,
            admitted: counts.serving,
            active: counts.active,
            rate_per_minute: room.settings().rate_per_minute,
            measured_rate_per_minute: room.measured_rate_per_minute(),
            draw_commitment: room.draw_commitment(),
            draw_key: room.draw_key(now),
        })
    }
}

/// What organizers see of a room (`GET /v1/events/{id}/queue`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Overview {
    pub joined: u32,
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
