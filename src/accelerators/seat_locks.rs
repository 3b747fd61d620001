//! The seat-lock fast path: keeps a stampede on a hot seat away from the
//! database. It never decides who gets a seat.
//!
//! Before a hold for explicit seats goes to the store, the booking service
//! tries to lock every seat at once, with the new hold's id as the owner.
//! If any seat is locked by someone else, the request is answered
//! `409 seat_unavailable` at once. Otherwise the store's conditional UPDATE
//! decides, and the locks are then either extended to the hold's expiry
//! (success) or released by compare-and-delete (failure).
//!
//! Losing locks (a restart, a flush, an expiry) only sends more requests
//! to the database, which still lets exactly one win. A lock that outlives
//! its hold can only cause a spurious 409 until it expires; locks always
//! carry an expiry, so that window is bounded.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use crate::domain::ids::{EventId, HoldId, SeatId};
use crate::domain::time::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// Every seat is now locked by the caller.
    Acquired,
    /// These seats are locked by others; nothing was locked.
    Conflict(Vec<SeatId>),
}

#[async_trait]
pub trait SeatLocks: Send + Sync + 'static {
    /// All-or-nothing: locks every seat for `owner` until `until`, unless
    /// some seat has a live lock by another owner.
    async fn try_lock(
        &self,
        event: &EventId,
        seats: &[SeatId],
        owner: &HoldId,
        until: Timestamp,
        now: Timestamp,
    ) -> anyhow::Result<LockOutcome>;

    /// Sets the locks to `owner` until `until`, whoever had them. Used once
    /// the database has granted the seats to `owner`.
    async fn set(
        &self,
        event: &EventId,
        seats: &[SeatId],
        owner: &HoldId,
        until: Timestamp,
        now: Timestamp,
    ) -> anyhow::Result<()>;

    /// Compare-and-delete: removes only the locks `owner` still has.
    async fn release(&self, event: &EventId, seats: &[SeatId], owner: &HoldId) -> anyhow::Result<()> {
        let locks: Vec<(SeatId, HoldId)> = seats.iter().map(|s| (s.clone(), owner.clone())).collect();
        self.release_each(event, &locks).await
    }

    /// Compare-and-delete for many holds of one event in one call (the
    /// sweeper ends hundreds at once): each seat's lock is removed only if
    /// the hold paired with it still has it.
    async fn release_each(&self, event: &EventId, locks: &[(SeatId, HoldId)]) -> anyhow::Result<()>;

    /// Whether the fast path is working, for `/readyz`.
    fn status(&self) -> LockStatus {
        LockStatus::InProcess
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockStatus {
    /// In-process locks: always available.
    InProcess,
    /// A shared lock service (Redis) that answers.
    Ok,
    /// The shared lock service failed recently; holds go straight to the
    /// database, slower but just as correct.
    Degraded,
}

impl LockStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LockStatus::InProcess => "in_process",
            LockStatus::Ok => "ok",
            LockStatus::Degraded => "degraded",
        }
    }
}

#[derive(Clone, Debug)]
struct Lock {
    owner: HoldId,
    until: Timestamp,
}

type EventLocks = Arc<Mutex<HashMap<SeatId, Lock>>>;

/// The embedded implementation: a map of seat → lock per event.
#[derive(Default)]
pub struct InProcessSeatLocks {
    events: RwLock<HashMap<EventId, EventLocks>>,
}

impl InProcessSeatLocks {
    pub fn new() -> Self {
        Self::default()
    }

    fn event(&self, id: &EventId) -> EventLocks {
        if let Some(m) = self.events.read().get(id) {
            return m.clone();
        }
        self.events.write().entry(id.clone()).or_default().clone()
    }

    /// Locks currently held, live or lapsed; for tests and metrics.
    pub fn len(&self) -> usize {
        self.events.read().values().map(|m| m.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SeatLocks for InProcessSeatLocks {
    async fn try_lock(
        &self,
        event: &EventId,
        seats: &[SeatId],
        owner: &HoldId,
        until: Timestamp,
        now: Timestamp,
    ) -> anyhow::Result<LockOutcome> {
        let locks = self.event(event);
        let mut map = locks.lock();
        let taken: Vec<SeatId> =
            seats.iter().filter(|s| map.get(*s).is_some_and(|l| l.until > now && &l.owner != owner)).cloned().collect();
        if !taken.is_empty() {
            return Ok(LockOutcome::Conflict(taken));
        }
        for s in seats {
            map.insert(s.clone(), Lock { owner: owner.clone(), until });
        }
        Ok(LockOutcome::Acquired)
    }

    async fn set(
        &self,
        event: &EventId,
        seats: &[SeatId],
        owner: &HoldId,
        until: Timestamp,
        _now: Timestamp,
    ) -> anyhow::Result<()> {
        let locks = self.event(event);
        let mut map = locks.lock();
        for s in seats {
            map.insert(s.clone(), Lock { owner: owner.clone(), until });
        }
        Ok(())
    }

    async fn release_each(&self, event: &EventId, locks: &[(SeatId, HoldId)]) -> anyhow::Result<()> {
        let Some(map) = self.events.read().get(event).cloned() else { return Ok(()) };
        let mut map = map.lock();
        for (s, owner) in locks {
            if map.get(s).is_some_and(|l| &l.owner == owner) {
                map.remove(s);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seats(v: &[&str]) -> Vec<SeatId> {
        v.iter().map(|s| SeatId::parse(s).unwrap()).collect()
    }

    #[tokio::test]
    async fn multi_seat_locks_are_all_or_nothing() {
        let l = InProcessSeatLocks::new();
        let e = EventId::generate();
        let (a, b) = (HoldId::generate(), HoldId::generate());
        let t = |ms| Timestamp::from_millis(ms);
        assert_eq!(l.try_lock(&e, &seats(&["A1", "A2"]), &a, t(100), t(0)).await.unwrap(), LockOutcome::Acquired);
        assert_eq!(
            l.try_lock(&e, &seats(&["A2", "A3"]), &b, t(100), t(0)).await.unwrap(),
            LockOutcome::Conflict(seats(&["A2"]))
        );
        // A3 was not locked by the failed attempt.
        assert_eq!(l.try_lock(&e, &seats(&["A3"]), &b, t(100), t(0)).await.unwrap(), LockOutcome::Acquired);
    }

    #[tokio::test]
    async fn lapsed_locks_do_not_block_and_release_is_compare_and_delete() {
        let l = InProcessSeatLocks::new();
        let e = EventId::generate();
        let (a, b) = (HoldId::generate(), HoldId::generate());
        let t = |ms| Timestamp::from_millis(ms);
        l.try_lock(&e, &seats(&["A1"]), &a, t(100), t(0)).await.unwrap();
        assert_eq!(l.try_lock(&e, &seats(&["A1"]), &b, t(300), t(100)).await.unwrap(), LockOutcome::Acquired);
        // a's late release must not remove b's lock.
        l.release(&e, &seats(&["A1"]), &a).await.unwrap();
        assert!(matches!(l.try_lock(&e, &seats(&["A1"]), &a, t(300), t(150)).await.unwrap(), LockOutcome::Conflict(_)));
        l.release(&e, &seats(&["A1"]), &b).await.unwrap();
        assert!(l.is_empty());
    }
}
