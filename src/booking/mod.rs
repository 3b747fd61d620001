//! The booking service: the one place that puts the fast path and the
//! store together for a hold. The HTTP layer and the in-process benchmark
//! both call it.
//!
//! Flow of a hold on explicit seats:
//! 1. lock every seat in the fast path with the new hold's id, or answer
//!    409 at once if any is locked by another hold;
//! 2. place the hold in the store: one transaction, one conditional UPDATE
//!    over the seats, all or nothing. This is the only decision that counts;
//! 3. on success extend the locks to the hold's expiry; on failure release
//!    them (compare-and-delete).
//!
//! Best-available and GA holds go straight to the store, which chooses
//! inside its transaction; the chosen seats are then locked.

pub mod checkout;
pub mod queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::accelerators::{ChangeStatus, GaChange, LockOutcome, SeatChange, SeatFeed, SeatLocks};
use crate::domain::hold::{Hold, Selection};
use crate::domain::ids::{EventId, HoldId, SeatId};
use crate::domain::time::Clock;
use crate::store::{Customer, DynStore, ExpiredHold, HoldPlacement, HoldRejection, Placed, ReleaseOutcome, StoreError};

/// How long a lock taken before the database answers may live. Long enough
/// for any store call to finish; short enough that a lost request frees the
/// seat's fast path quickly.
const PENDING_LOCK_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("hold rejected: {0:?}")]
    Rejected(HoldRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct BookingService {
    store: DynStore,
    locks: Arc<dyn SeatLocks>,
    feed: Arc<SeatFeed>,
    clock: Arc<dyn Clock>,
    store_attempts: Arc<std::sync::atomic::AtomicU64>,
}

impl BookingService {
    pub fn new(store: DynStore, locks: Arc<dyn SeatLocks>, clock: Arc<dyn Clock>) -> Self {
        Self::with_feed(store, locks, clock, Arc::new(SeatFeed::new()))
    }

    /// With a given seat feed (a Redis-relayed one in scale-out).
    pub fn with_feed(store: DynStore, locks: Arc<dyn SeatLocks>, clock: Arc<dyn Clock>, feed: Arc<SeatFeed>) -> Self {
        Self { store, locks, feed, clock, store_attempts: Default::default() }
    }

    /// Live seat changes, for the seat-map stream.
    pub fn feed(&self) -> &Arc<SeatFeed> {
        &self.feed
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn locks(&self) -> &Arc<dyn SeatLocks> {
        &self.locks
    }

    /// How many hold requests reached the store (the rest were answered by
    /// the fast path). Per service instance, for tests and benchmarks.
    pub fn store_hold_attempts(&self) -> u64 {
        self.store_attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Places the hold. A GA hold may end lapsed holds of its area on the
    /// way ([`Placed::reclaimed`]); their locks and seat-feed messages are
    /// handled here, and the caller frees their fans' waiting-room places.
    #[tracing::instrument(level = "debug", skip_all, fields(event.id = %event_id, customer.id = %customer.id))]
    pub async fn place_hold(
        &self,
        customer: &Customer,
        event_id: &EventId,
        selection: Selection,
    ) -> Result<Placed, HoldError> {
        let hold_id = HoldId::generate();
        let now = self.clock.now();
        let explicit: Option<Vec<SeatId>> = match &selection {
            Selection::Seats(s) => Some(s.clone()),
            _ => None,
        };

        let mut locked = false;
        if let Some(seats) = &explicit {
            match self.locks.try_lock(event_id, seats, &hold_id, now.plus(PENDING_LOCK_TTL), now).await {
                Ok(LockOutcome::Acquired) => locked = true,
                Ok(LockOutcome::Conflict(taken)) => {
                    metrics::counter!("boxoffice_fastpath_rejections_total").increment(1);
                    return Err(HoldError::Rejected(HoldRejection::Unavailable(
                        taken.iter().map(|s| s.as_str().to_owned()).collect(),
                    )));
                }
                Err(e) => {
                    // Degraded: the database alone still decides correctly.
                    metrics::counter!("boxoffice_fastpath_errors_total").increment(1);
                    // Logged once per outage by the lock service; per hold only at debug.
                    tracing::debug!(error = %e, "seat-lock fast path unavailable; going to the database");
                }
            }
        }

        let placement = HoldPlacement {
            hold_id: hold_id.clone(),
            event_id: event_id.clone(),
            customer: customer.clone(),
            selection,
            now,
        };
        self.store_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = self.store.place_hold(placement).await;

        match &result {
            Ok(Ok(Placed { hold, reclaimed })) => {
                metrics::counter!("boxoffice_holds_placed_total").increment(1);
                if !reclaimed.is_empty() {
                    self.forget_expired(reclaimed).await;
                }
                self.feed.publish(
                    event_id,
                    SeatChange {
                        seats: hold.seats.clone(),
                        status: ChangeStatus::Held,
                        ga: hold.ga.as_ref().map(|g| GaChange { area: g.area.clone() }),
                    },
                );
                if !hold.seats.is_empty() {
                    if let Err(e) = self.locks.set(event_id, &hold.seats, &hold.id, hold.expires_at, now).await {
                        tracing::debug!(error = %e, "could not record a placed hold in the fast path");
                    }
                }
            }
            _ => {
                metrics::counter!("boxoffice_holds_rejected_total").increment(1);
                if let (true, Some(seats)) = (locked, &explicit) {
                    self.forget_locks(event_id, seats, &hold_id).await;
                }
            }
        }
        result?.map_err(HoldError::Rejected)
    }

    /// The customer's own hold; anyone else's reads as absent.
    pub async fn hold_for(&self, customer: &Customer, id: &HoldId) -> Result<Option<Hold>, StoreError> {
        Ok(self.store.hold(id).await?.filter(|h| h.customer_id == customer.id))
    }

    pub async fn release(&self, customer: &Customer, id: &HoldId) -> Result<ReleaseOutcome, StoreError> {
        let outcome = self.store.release_hold(id, &customer.id, self.clock.now()).await?;
        let (hold, freed) = match &outcome {
            ReleaseOutcome::Released(h) => (h, &h.seats),
            ReleaseOutcome::Lapsed { hold, freed } => (hold, freed),
            ReleaseOutcome::AlreadyEnded(h) => {
                self.forget_locks(&h.event_id, &h.seats, &h.id).await;
                return Ok(outcome);
            }
            ReleaseOutcome::InCheckout(_) | ReleaseOutcome::Purchased(_) | ReleaseOutcome::NotFound => {
                return Ok(outcome)
            }
        };
        self.forget_locks(&hold.event_id, &hold.seats, &hold.id).await;
        let ga = hold.ga.as_ref().map(|g| GaChange { area: g.area.clone() });
        if !freed.is_empty() || ga.is_some() {
            self.feed.publish(&hold.event_id, SeatChange { seats: freed.clone(), status: ChangeStatus::Available, ga });
        }
        Ok(outcome)
    }

    /// For lapsed holds that were ended (by the sweeper, or taken back by a
    /// GA hold): counts them, drops their fast-path locks and tells the
    /// seat-map stream.
    pub async fn forget_expired(&self, expired: &[ExpiredHold]) {
        metrics::counter!("boxoffice_holds_expired_total").increment(expired.len() as u64);
        // One lock release and one seat-feed message per event, not per
        // hold: a sweep ends hundreds of holds at once.
        #[derive(Default)]
        struct Ended {
            locks: Vec<(SeatId, HoldId)>,
            freed: Vec<SeatId>,
        }
        let mut by_event: HashMap<&EventId, Ended> = HashMap::new();
        for h in expired {
            let ended = by_event.entry(&h.event_id).or_default();
            ended.locks.extend(h.seats.iter().map(|s| (s.clone(), h.id.clone())));
            ended.freed.extend(h.freed.iter().cloned());
            if let Some(g) = &h.ga {
                let ga = Some(GaChange { area: g.area.clone() });
                self.feed.publish(&h.event_id, SeatChange { seats: vec![], status: ChangeStatus::Available, ga });
            }
        }
        for (event, ended) in by_event {
            lock_release_failed(self.locks.release_each(event, &ended.locks).await);
            if !ended.freed.is_empty() {
                self.feed.publish(event, SeatChange { seats: ended.freed, status: ChangeStatus::Available, ga: None });
            }
        }
    }

    async fn forget_locks(&self, event: &EventId, seats: &[SeatId], owner: &HoldId) {
        if seats.is_empty() {
            return;
        }
        lock_release_failed(self.locks.release(event, seats, owner).await);
    }
}

/// A lock that could not be dropped lapses at its TTL: logged, not fatal.
fn lock_release_failed(r: anyhow::Result<()>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "could not release fast-path locks");
    }
}
