//! Background jobs. Each exposes a `run_once` that tests drive directly
//! with a fake clock, and a loop that runs it on an interval until shutdown.
//! Every job is idempotent and safe to run on several nodes at once.

pub mod outbox;
pub mod reconcile;
pub mod sweeper;
