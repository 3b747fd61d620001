//! Background jobs. Each exposes a `run_once` that tests drive directly
//! with a fake clock, and a loop that runs it on an interval until shutdown.
//! Every job is idempotent and safe to run on several nodes at once.

pub mod outbox;
pub mod reconcile;
pub mod sweeper;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `pass` every `period` until `stop` is cancelled: the loop every job
/// shares. A pass that falls behind delays the next rather than bunching
/// them; a failed pass is logged, and the next one tries again.
pub async fn every<F, Fut, R>(job: &'static str, period: Duration, stop: CancellationToken, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
    R: std::fmt::Debug + Default + PartialEq,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match pass().await {
            Ok(r) if r != R::default() => tracing::info!(job, report = ?r, "background job did work"),
            Ok(_) => {}
            Err(e) => tracing::error!(job, error = format!("{e:#}"), "background job pass failed"),
        }
    }
}
