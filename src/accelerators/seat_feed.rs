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
//! made through any node; one relay task per node keeps them in order. If
//! Redis cannot take a change, it is delivered on this node alone.

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
            while let Some((event, change)) = rx.recv().await {
                if !bus.publish_seats(&event, &change).await {
                    match weak.upgrade() {
                        Some(feed) => feed.deliver(&event, change),
                        None => return,
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

#[cfg(test)]
mod tests {
    use super::*;

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
