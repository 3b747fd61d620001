//! The hold-expiry sweeper.
//!
//! Expiry itself is lazy: the store treats a `held` seat past its expiry as
//! available the moment it expires, so no sale waits for this job. The
//! sweeper only tidies: it marks lapsed holds `expired`, frees their
//! inventory rows and GA places, and drops their fast-path locks. A fan
//! whose last hold of an event it ended gets their waiting-room place
//! taken back for the next fan. It also deletes idempotency keys older than
//! [`KEY_RETENTION`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::booking::queue::QueueService;
use crate::booking::BookingService;
use crate::domain::time::Timestamp;

/// How many holds (or keys) one pass ends per transaction.
const BATCH: u32 = 500;

/// How long a stored idempotent response is replayed.
pub const KEY_RETENTION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub keys_reaped: u64,
}

/// Ends every hold that had lapsed at the clock's "now". A fan whose last
/// hold of an event lapsed has abandoned their turn: the waiting room gets
/// their place back now rather than when the turn's time runs out.
pub async fn run_once(booking: &BookingService, queue: &QueueService) -> anyhow::Result<SweepReport> {
    let now = booking.clock().now();
    let mut report = SweepReport::default();
    loop {
        let expired = booking.store().expire_holds(now, BATCH).await?;
        booking.forget_expired(&expired).await;
        queue.holds_ended(&expired).await;
        report.expired += expired.len();
        if expired.len() < BATCH as usize {
            break;
        }
    }
    let horizon = Timestamp::from_millis(now.as_millis() - KEY_RETENTION.as_millis() as i64);
    loop {
        let reaped = booking.store().reap_idempotency_keys(horizon, BATCH).await?;
        report.keys_reaped += reaped;
        if reaped < u64::from(BATCH) {
            return Ok(report);
        }
    }
}

/// Runs [`run_once`] every `period` until `stop` is cancelled.
pub async fn run(booking: BookingService, queue: QueueService, period: Duration, stop: CancellationToken) {
    super::every("sweeper", period, stop, || run_once(&booking, &queue)).await
}
