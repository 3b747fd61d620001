//! Live seat-status changes for `GET /v1/events/{id}/seats/stream`.
//!
//! The booking service publishes a change after each state change it
//! commits; each subscriber gets a snapshot from the store first, then
//! these deltas. A subscriber that falls behind is told so and re-reads a
//! snapshot, so a lost message costs a refresh, never a wrong seat map.
//! Lapsed holds are published when the sweeper ends them, up to one sweep
//! period after the seats actually became available.
//!
//! With Redis configured, changes travel through the Redis channel
//! `<prefix>seats` to every node (this one included), so a fan sees holds
//! made through any node; one relay task per node keeps each event's changes
//! in order, merging what has queued up into as few messages as that order
//! allows. If Redis cannot take a change, it is delivered on this node alone.

use std::collections::HashMap;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use super::catalog_cache::RedisBus;
use crate::domain::ids::{AreaId, EventId, SeatId};

/// Messages buffered per event before a slow subscriber lags.
const BUFFER: usize = 1024;
/// Changes waiting for the relay before they are delivered locally only.
const RELAY_QUEUE: usize = 10_000;
/// The most waiting changes the relay merges into one round of messages.
const RELAY_BATCH: usize = 1024;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChangeStatus {
    Available,
    Held,
    Sold,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeatChange {
    /// The seats whose status changed, all to `status`.
    pub seats: Vec<SeatId>,
    pub status: ChangeStatus,
    /// A GA area whose free places changed. The stream answers it with a
    /// fresh count from the store (at most once a second), since lapsed
    /// GA holds free places without any change being published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ga: Option<GaChange>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GaChange {
    pub area: AreaId,
}

/// Fan-out of seat changes per event.
#[derive(Default)]
pub struct SeatFeed {
    channels: RwLock<HashMap<EventId, broadcast::Sender<SeatChange>>>,
    relay: Option<mpsc::Sender<(EventId, SeatChange)>>,
}

impl SeatFeed {
    /// A feed for this node alone.
    pub fn new() -> Self {
        Self::default()
    }

    /// A feed whose changes go through Redis to every node. Spawns the
    /// relay task; the node's bus listener delivers what comes back.
    pub fn relayed(bus: RedisBus) -> std::sync::Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<(EventId, SeatChange)>(RELAY_QUEUE);
        let feed = std::sync::Arc::new(SeatFeed { channels: Default::default(), relay: Some(tx) });
        let weak = std::sync::Arc::downgrade(&feed);
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            while let Some(first) = rx.recv().await {
                waiting.push(first);
                while waiting.len() < RELAY_BATCH {
                    match rx.try_recv() {
                        Ok(next) => waiting.push(next),
                        Err(_) => break,
                    }
                }
                for (event, change) in coalesce(waiting.drain(..)) {
                    if !bus.publish_seats(&event, &change).await {
                        match weak.upgrade() {
                            Some(feed) => feed.deliver(&event, change),
                            None => return,
                        }
                    }
                }
            }
        });
        feed
    }

    /// Publishes a committed change to every subscriber of the event.
    pub fn publish(&self, event: &EventId, change: SeatChange) {
        match &self.relay {
            None => self.deliver(event, change),
            Some(relay) => {
                if let Err(
                    mpsc::error::TrySendError::Full((event, change))
                    | mpsc::error::TrySendError::Closed((event, change)),
                ) = relay.try_send((event.clone(), change))
                {
                    tracing::warn!("seat-change relay is backed up; delivering on this node only");
                    self.deliver(&event, change);
                }
            }
        }
    }

    /// Sends to this node's current subscribers; with none, it is dropped.
    pub fn deliver(&self, event: &EventId, change: SeatChange) {
        let sender = self.channels.read().get(event).cloned();
        if let Some(tx) = sender {
            if tx.send(change).is_err() {
                // Nobody listens any more: forget the channel.
                let mut map = self.channels.write();
                if map.get(event).is_some_and(|tx| tx.receiver_count() == 0) {
                    map.remove(event);
                }
            }
        }
    }

    pub fn subscribe(&self, event: &EventId) -> broadcast::Receiver<SeatChange> {
        if let Some(tx) = self.channels.read().get(event) {
            return tx.subscribe();
        }
        self.channels.write().entry(event.clone()).or_insert_with(|| broadcast::channel(BUFFER).0).subscribe()
    }
}

/// Merges waiting changes into fewer messages, keeping each event's order:
/// an event's consecutive changes to the same status (no GA area) become one
/// change. Under load this turns one Redis message per hold into a few per
/// event per round.
fn coalesce(changes: impl Iterator<Item = (EventId, SeatChange)>) -> Vec<(EventId, SeatChange)> {
    let mut out: Vec<(EventId, SeatChange)> = Vec::new();
    // Where each event's latest change sits in `out`.
    let mut last: HashMap<EventId, usize> = HashMap::new();
    for (event, change) in changes {
        if let Some(&i) = last.get(&event) {
            let prev = &mut out[i].1;
            if prev.status == change.status && prev.ga.is_none() && change.ga.is_none() {
                prev.seats.extend(change.seats);
                continue;
            }
        }
        last.insert(event.clone(), out.len());
        out.push((event, change));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seats: &[&str], status: ChangeStatus) -> SeatChange {
        SeatChange { seats: seats.iter().map(|s| SeatId::parse(s).unwrap()).collect(), status, ga: None }
    }

    #[test]
    fn coalescing_merges_runs_per_event_and_keeps_each_events_order() {
        let (a, b) = (EventId::generate(), EventId::generate());
        let ga = SeatChange {
            seats: vec![],
            status: ChangeStatus::Available,
            ga: Some(GaChange { area: AreaId::parse("floor").unwrap() }),
        };
        let merged = coalesce(
            vec![
                (a.clone(), change(&["A1"], ChangeStatus::Held)),
                (b.clone(), change(&["B1"], ChangeStatus::Held)),
                (a.clone(), change(&["A2"], ChangeStatus::Held)),
                // A1 freed after it was held: must stay after the held run.
                (a.clone(), change(&["A1"], ChangeStatus::Available)),
                (a.clone(), change(&["A3"], ChangeStatus::Held)),
                (b.clone(), ga.clone()),
                (b.clone(), change(&["B2"], ChangeStatus::Held)),
            ]
            .into_iter(),
        );
        assert_eq!(
            merged,
            vec![
                (a.clone(), change(&["A1", "A2"], ChangeStatus::Held)),
                (b.clone(), change(&["B1"], ChangeStatus::Held)),
                (a.clone(), change(&["A1"], ChangeStatus::Available)),
                (a.clone(), change(&["A3"], ChangeStatus::Held)),
                (b.clone(), ga),
                (b.clone(), change(&["B2"], ChangeStatus::Held)),
            ]
        );
    }

    #[tokio::test]
    async fn subscribers_get_changes_for_their_event_only() {
        let feed = SeatFeed::new();
        let (a, b) = (EventId::generate(), EventId::generate());
        let mut rx = feed.subscribe(&a);
        let change = SeatChange { seats: vec![SeatId::parse("A1").unwrap()], status: ChangeStatus::Held, ga: None };
        feed.publish(&b, change.clone());
        feed.publish(&a, change.clone());
        assert_eq!(rx.recv().await.unwrap(), change);
        assert!(rx.try_recv().is_err(), "b's change did not arrive");
    }
}
