//! Live seat-status changes for `GET /v1/events/{id}/seats/stream`.
//!
//! The booking service publishes a change after each state change it
//! commits; each subscriber gets a snapshot from the store first, then
//! these deltas. A subscriber that falls behind is told so and re-reads a
//! snapshot, so a lost message costs a refresh, never a wrong seat map.
//! Lapsed holds are published when the sweeper ends them, up to one sweep
//! period after the seats actually became available.

use std::collections::HashMap;

use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::domain::ids::{AreaId, EventId, SeatId};

/// Messages buffered per event before a slow subscriber lags.
const BUFFER: usize = 1024;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SeatChange {
    /// The seats whose status changed, all to `status`.
    pub seats: Vec<SeatId>,
    /// `available`, `held` or `sold`.
    pub status: &'static str,
    /// A GA area whose free places changed. The stream answers it with a
    /// fresh count from the store (at most once a second), since lapsed
    /// GA holds free places without any change being published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ga: Option<GaChange>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct GaChange {
    pub area: AreaId,
}

/// Fan-out of seat changes per event, in process: a subscriber sees the
/// changes made through its own node (a cross-node relay is not built yet;
/// see ARCHITECTURE.md, known gaps).
#[derive(Default)]
pub struct SeatFeed {
    channels: RwLock<HashMap<EventId, broadcast::Sender<SeatChange>>>,
}

impl SeatFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends to current subscribers; with none, the change is dropped.
    pub fn publish(&self, event: &EventId, change: SeatChange) {
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
        let change = SeatChange { seats: vec![SeatId::parse("A1").unwrap()], status: "held", ga: None };
        feed.publish(&b, change.clone());
        feed.publish(&a, change.clone());
        assert_eq!(rx.recv().await.unwrap(), change);
        assert!(rx.try_recv().is_err(), "b's change did not arrive");
    }
}
