//! The single SQLite writer, with group commit.
//!
//! SQLite allows one writer at a time. Rather than have many connections
//! queue on the file lock, one thread owns the only write connection and
//! takes jobs from a channel. It drains whatever jobs are waiting (up to
//! [`MAX_BATCH`]), runs them in one `BEGIN IMMEDIATE` transaction, each
//! inside its own `SAVEPOINT`, and commits once. A job that fails or
//! declines is rolled back to its savepoint without touching the others.
//!
//! A job's result is sent to its caller only after the `COMMIT` succeeded,
//! so a caller never acts on a write that did not become durable. If the
//! commit fails, every job in the batch gets the error and nothing was
//! written.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::Synchronous;

/// The most jobs one transaction carries.
const MAX_BATCH: usize = 256;
/// Jobs waiting beyond this make callers wait to enqueue (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// Whether a job's writes stay in the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Keep {
    Commit,
    Rollback,
}

/// How durable a job's commit must be; see [`super::Synchronous`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Durability {
    /// Must survive power loss once acknowledged: catalog changes, and
    /// anything about money.
    PowerLoss,
    /// Must survive a process crash; a power cut may undo it. Holds,
    /// releases and expiries: losing one equals an early expiry, and every
    /// later step re-checks the database.
    Crash,
}

/// Why a write did not happen, in a form the store maps to a status:
/// transient failures become 503, anything else 500.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteFailed {
    /// The batch's transaction could not start or broke before this job ran.
    #[error("the SQLite write transaction failed before this write ran")]
    NotRun,
    #[error("commit failed: {message}")]
    Commit { message: String, busy: bool },
}

impl WriteFailed {
    pub(super) fn transient(&self) -> bool {
        matches!(self, WriteFailed::NotRun | WriteFailed::Commit { busy: true, .. })
    }

    fn commit(e: &anyhow::Error) -> WriteFailed {
        let busy = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<rusqlite::Error>(),
                Some(rusqlite::Error::SqliteFailure(f, _))
                    if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            )
        });
        WriteFailed::Commit { message: format!("{e:#}"), busy }
    }
}

type Finisher = Box<dyn FnOnce(Result<(), Arc<anyhow::Error>>) + Send>;
type Work = Box<dyn FnOnce(&Connection) -> (Keep, Finisher) + Send>;

struct Job {
    durability: Durability,
    run: Work,
}

#[derive(Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread, which owns `conn` until every `Writer`
    /// handle is dropped.
    pub(super) fn spawn(conn: Connection, policy: Synchronous) -> anyhow::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, policy))
            .context("starting the SQLite writer thread")?;
        Ok(Writer { tx })
    }

    /// Runs `f` inside the next group transaction and returns its value
    /// once that transaction has committed.
    pub(super) async fn write<T, F>(&self, durability: Durability, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<(T, Keep)> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<anyhow::Result<T>>();
        let run: Work = Box::new(move |conn| {
            let outcome =
                catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or_else(|_| Err(anyhow!("a write job panicked")));
            match outcome {
                Ok((value, keep)) => (
                    keep,
                    Box::new(move |committed: Result<(), Arc<anyhow::Error>>| {
                        let _ = reply.send(committed.map(|()| value).map_err(|e| WriteFailed::commit(&e).into()));
                    }),
                ),
                Err(e) => (
                    Keep::Rollback,
                    Box::new(move |_| {
                        let _ = reply.send(Err(e));
                    }),
                ),
            }
        });
        self.tx.send(Job { durability, run }).await.map_err(|_| anyhow!("the SQLite writer has stopped"))?;
        answer.await.map_err(|_| WriteFailed::NotRun)?
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Job>, policy: Synchronous) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut current: Option<&'static str> = None;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("boxoffice_sqlite_group_commit_jobs").record(batch.len() as f64);
        // The level applies at COMMIT; a FULL commit also makes every
        // earlier NORMAL one durable, since the WAL is synced in order.
        let level = match policy {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Auto if batch.iter().any(|j| j.durability == Durability::PowerLoss) => "FULL",
            Synchronous::Auto => "NORMAL",
        };
        if current != Some(level) {
            match conn.pragma_update(None, "synchronous", level) {
                Ok(()) => current = Some(level),
                Err(e) => tracing::error!(error = %e, "could not set SQLite synchronous level"),
            }
        }
        run_batch(&conn, &mut batch);
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn run_batch(conn: &Connection, batch: &mut Vec<Job>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let e = Arc::new(anyhow::Error::new(e).context("BEGIN IMMEDIATE"));
        tracing::error!(error = %e, "SQLite write transaction did not start");
        // Dropping a job that never ran answers its caller with an error.
        batch.clear();
        return;
    }
    let mut finishers: Vec<Finisher> = Vec::with_capacity(batch.len());
    let mut broken: Option<Arc<anyhow::Error>> = None;
    for job in batch.drain(..) {
        if broken.is_some() {
            continue; // dropped: its caller gets an error
        }
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            broken = Some(Arc::new(anyhow::Error::new(e).context("SAVEPOINT")));
            continue;
        }
        let (keep, finish) = (job.run)(conn);
        let end = match keep {
            Keep::Commit => exec(conn, "RELEASE job"),
            Keep::Rollback => exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job")),
        };
        if let Err(e) = end {
            broken = Some(Arc::new(anyhow::Error::new(e).context("ending a savepoint")));
        }
        finishers.push(finish);
    }
    let result = match broken {
        Some(e) => Err(e),
        None => exec(conn, "COMMIT").map_err(|e| Arc::new(anyhow::Error::new(e).context("COMMIT"))),
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "SQLite group commit failed; the whole batch is rolled back");
        let _ = exec(conn, "ROLLBACK");
        // Events read inside the lost transaction may not be what is stored.
        super::forget_cached_events();
    }
    for finish in finishers {
        finish(result.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_commit_is_transient_and_other_failures_are_not() {
        let busy = anyhow::Error::new(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ))
        .context("COMMIT");
        assert!(WriteFailed::commit(&busy).transient());
        let full = anyhow::Error::new(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        ));
        assert!(!WriteFailed::commit(&full).transient());
        assert!(WriteFailed::NotRun.transient());
    }
}
