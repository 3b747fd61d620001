//! The embedded store: one SQLite file in WAL mode.
//!
//! * Writes go through one connection owned by the [`writer`] thread, in
//!   `BEGIN IMMEDIATE` transactions with group commit.
//! * Reads use a small pool of separate connections, which WAL lets run
//!   concurrently with the writer and never block it.
//! * Every connection has a busy timeout, and migrations are embedded in
//!   the binary and applied on open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::checkout::{
    Attempt, AttemptStatus, CheckIn, CheckoutRefusal, CheckoutStart, CheckoutStarted, KeyClaim, Order, OutboxMessage,
    OutboxProgress, OutboxRow, Refunded, Settled, Settlement, Ticket,
};
use super::codec::{
    decode_prices, decode_seats, decode_waiting_room, encode_prices, encode_seats, encode_waiting_room,
};
use super::{
    priced_hold, tally, Availability, Customer, EventQuery, ExpiredHold, GaCounters, GaRow, HoldPlacement,
    HoldRejection, NewSession, Placed, ReleaseOutcome, SeatMapState, SeatState, SeatStatus, Store, StoreError,
    StoreResult,
};
use crate::domain::customer::{Email, TokenHash};
use crate::domain::event::Event;
use crate::domain::hold::{check_purchase_limit, GaSelection, Hold, HoldStatus, Selection};
use crate::domain::ids::{
    AreaId, AttemptId, Category, CustomerId, EventId, HoldId, OrderId, SeatId, TicketId, VenueId,
};
use crate::domain::money::Currency;
use crate::domain::seating::{pick_best, FreeSeat};
use crate::domain::time::Timestamp;
use crate::domain::venue::Venue;

mod checkout;
mod writer;

use writer::{Durability, Keep, Writer};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READERS: u32 = 8;
/// How many of the best-placed free seats best-available considers.
const BEST_AVAILABLE_CANDIDATES: u32 = 4000;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_holds_by_customer.sql")),
    (3, include_str!("migrations/0003_lean_holds.sql")),
    (4, include_str!("migrations/0004_checkout.sql")),
];

/// How hard SQLite works to make a commit durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit survives power loss: the WAL is synced at each group
    /// commit.
    Full,
    /// No commit waits for the disk; a power cut may lose the last ones,
    /// a process crash never does.
    Normal,
    /// `Full` for group commits that carry anything that must survive
    /// power loss (catalog changes, money), `Normal` for those made only
    /// of holds, releases and expiries.
    #[default]
    Auto,
}

pub struct SqliteStore {
    writer: Writer,
    readers: r2d2::Pool<SqliteConnectionManager>,
    path: PathBuf,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Process-wide SQLite settings, for a program to make at its start, before
/// any thread uses SQLite (`sqlite3_config` is not thread-safe): no
/// memory-usage statistics. With them on, every allocation SQLite makes
/// takes a global mutex to update its counters, and the writer allocates on
/// every statement; nothing here reads those counters or sets a heap limit.
/// The `boxoffice` binary and the benchmark call it first thing; without
/// it (tests, or a library user) SQLite keeps its default: slower, never
/// wrong. Called again, or after SQLite has started, it changes nothing.
pub fn configure_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int argument. The caller
        // runs this before any other SQLite use in the process (see above);
        // once SQLite is initialised the call returns SQLITE_MISUSE and
        // changes nothing.
        let rc = unsafe { rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int) };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(rc, "SQLite was already initialised; memory statistics stay on");
        }
    });
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path, sync: Synchronous) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("opening SQLite database {}", path.display()))?;
        configure(&conn)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("SQLite refused WAL mode (got {mode}) for {}", path.display());
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Checkpoints run on their own thread (below), not inside a commit
        // on the writer thread, so their I/O never stalls a group commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "cache_size", -16 * 1024)?;
        migrate(&conn).with_context(|| format!("migrating {}", path.display()))?;
        spawn_checkpointer(path)?;

        let manager = SqliteConnectionManager::file(path).with_init(|c| {
            configure(c)?;
            c.pragma_update(None, "query_only", "ON")
        });
        let readers = r2d2::Pool::builder()
            .max_size(READERS)
            .min_idle(Some(1))
            .connection_timeout(BUSY_TIMEOUT)
            .build(manager)
            .context("opening SQLite read connections")?;
        Ok(SqliteStore { writer: Writer::spawn(conn, sync)?, readers, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get().map_err(|e| StoreError::Unavailable(e.into()))?;
            f(&conn).map_err(classify)
        })
        .await
        .map_err(|e| StoreError::Internal(anyhow!("read task failed: {e}")))?
    }

    /// A write that must survive power loss once it returns.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<(T, Keep)> + Send + 'static,
    {
        self.writer.write(Durability::PowerLoss, f).await.map_err(classify)
    }

    /// A write of hold state only: it must survive a crash, and may be
    /// undone by a power cut (see [`Durability::Crash`]).
    async fn write_hold_state<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<(T, Keep)> + Send + 'static,
    {
        self.writer.write(Durability::Crash, f).await.map_err(classify)
    }
}

/// Maps SQLite's own errors onto the store's: busy means unavailable,
/// a unique violation means duplicate.
fn classify(e: anyhow::Error) -> StoreError {
    if let Some(w) = e.downcast_ref::<writer::WriteFailed>() {
        return if w.transient() { StoreError::Unavailable(e) } else { StoreError::Internal(e) };
    }
    if let Some(se) = e.downcast_ref::<StoreError>() {
        return match se {
            StoreError::Conflict => StoreError::Conflict,
            StoreError::Duplicate(s) => StoreError::Duplicate(s.clone()),
            _ => StoreError::Internal(e),
        };
    }
    if let Some(rusqlite::Error::SqliteFailure(f, msg)) = e.downcast_ref::<rusqlite::Error>() {
        match f.code {
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                return StoreError::Unavailable(e)
            }
            rusqlite::ErrorCode::ConstraintViolation
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                return StoreError::Duplicate(msg.clone().unwrap_or_default())
            }
            _ => {}
        }
    }
    StoreError::Internal(e)
}

/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(2000);
/// A WAL longer than this many frames (about 40 MiB) gets a RESTART
/// checkpoint, which briefly waits for the writer so the next commit
/// starts the WAL over instead of growing it.
const WAL_RESTART_FRAMES: i64 = 10_000;

/// Copies committed WAL frames into the main database file. PASSIVE
/// checkpoints never block the writer or readers, but under constant
/// writes they never catch up, so the WAL would grow without end; once it
/// is long, a RESTART checkpoint makes the writer start it over. Stops when
/// the database file goes away (a test's temporary directory).
fn spawn_checkpointer(path: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(path).context("opening the checkpoint connection")?;
    configure(&conn)?;
    let path = path.to_owned();
    let checkpoint = move |mode: &str| -> rusqlite::Result<i64> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(1))
    };
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            if !path.exists() {
                return;
            }
            let done = checkpoint("PASSIVE").and_then(|frames| {
                if frames > WAL_RESTART_FRAMES {
                    checkpoint("RESTART").map(|_| ())
                } else {
                    Ok(())
                }
            });
            if let Err(e) = done {
                tracing::warn!(error = %e, "SQLite checkpoint failed; will retry");
            }
        })
        .context("starting the SQLite checkpoint thread")?;
    Ok(())
}

fn migrate(conn: &Connection) -> anyhow::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        bail!("the database is at schema version {current}, newer than this binary's {newest}; upgrade boxoffice");
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let applied = conn.execute_batch(sql).and_then(|()| {
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, chrono::Utc::now().timestamp_millis()],
            )
        });
        match applied {
            Ok(_) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e).with_context(|| format!("applying migration {version}"));
            }
        }
        tracing::info!(version, "applied SQLite migration");
    }
    Ok(())
}

fn ts(r: &Row, i: usize) -> rusqlite::Result<Timestamp> {
    r.get::<_, i64>(i).map(Timestamp::from_millis)
}

const EVENT_COLUMNS: &str = "id, venue_id, city, title, category, starts_at, on_sale_at, currency, prices, \
     max_tickets_per_customer, hold_ttl_seconds, waiting_room, high_demand, cancelled, created_at, updated_at, version";

fn event_from_row(r: &Row) -> anyhow::Result<Event> {
    let currency: String = r.get(7)?;
    Ok(Event {
        id: EventId::from_trusted(r.get(0)?),
        venue_id: VenueId::from_trusted(r.get(1)?),
        city: r.get(2)?,
        title: r.get(3)?,
        category: Category::from_trusted(r.get(4)?),
        starts_at: ts(r, 5)?,
        on_sale_at: ts(r, 6)?,
        currency: Currency::parse(&currency).ok_or_else(|| anyhow!("bad stored currency {currency:?}"))?,
        prices: decode_prices(&r.get::<_, String>(8)?)?,
        max_tickets_per_customer: r.get(9)?,
        hold_ttl_seconds: r.get(10)?,
        waiting_room: decode_waiting_room(r.get::<_, Option<String>>(11)?.as_deref())?,
        high_demand: r.get(12)?,
        cancelled: r.get(13)?,
        created_at: ts(r, 14)?,
        updated_at: ts(r, 15)?,
        version: r.get(16)?,
    })
}

/// The one row `sql` finds for `id`, decoded by `decode`, if any.
fn find_one<T>(
    conn: &Connection,
    sql: &str,
    id: &str,
    decode: fn(&Row) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    let mut st = conn.prepare_cached(sql)?;
    let mut rows = st.query([id])?;
    rows.next()?.map(decode).transpose()
}

fn load_event(conn: &Connection, id: &str) -> anyhow::Result<Option<Event>> {
    find_one(conn, &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"), id, event_from_row)
}

/// Events the writer has read, decoded, keyed by id, with the
/// `data_version` they were read at. Every hold needs its event; reading and
/// decoding it each time was about an eighth of the writer's work.
struct EventCache {
    data_version: i64,
    events: HashMap<String, Event>,
}

/// More events than this and the cache starts over.
const EVENT_CACHE_MAX: usize = 1024;

thread_local! {
    /// Only the writer thread uses it (the hold paths run there).
    static WRITER_EVENTS: std::cell::RefCell<EventCache> =
        std::cell::RefCell::new(EventCache { data_version: i64::MIN, events: HashMap::new() });
}

/// [`load_event`] through the writer's cache. The cache is right as long as
/// nothing else changed the events: this connection's own event writes
/// call [`forget_cached_events`], as does a rolled-back group commit, and
/// `PRAGMA data_version` changes when another connection (another process
/// on the same file) commits.
fn writer_event(conn: &Connection, id: &str) -> anyhow::Result<Option<Event>> {
    let version: i64 = conn.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))?;
    let hit = WRITER_EVENTS.with_borrow_mut(|c| {
        if c.data_version != version {
            c.events.clear();
            c.data_version = version;
        }
        c.events.get(id).cloned()
    });
    if hit.is_some() {
        return Ok(hit);
    }
    let loaded = load_event(conn, id)?;
    if let Some(e) = &loaded {
        WRITER_EVENTS.with_borrow_mut(|c| {
            if c.events.len() >= EVENT_CACHE_MAX {
                c.events.clear();
            }
            c.events.insert(id.to_owned(), e.clone());
        });
    }
    Ok(loaded)
}

/// Empties the writer's event cache; see [`writer_event`].
pub(super) fn forget_cached_events() {
    WRITER_EVENTS.with_borrow_mut(|c| c.events.clear());
}

const HOLD_COLUMNS: &str =
    "id, event_id, customer_id, status, seats, ga_area, ga_count, amount, currency, created_at, expires_at, version";

fn hold_from_row(r: &Row) -> anyhow::Result<Hold> {
    let status: String = r.get(3)?;
    let currency: String = r.get(8)?;
    let ga_area: Option<String> = r.get(5)?;
    Ok(Hold {
        id: HoldId::from_trusted(r.get(0)?),
        event_id: EventId::from_trusted(r.get(1)?),
        customer_id: CustomerId::from_trusted(r.get(2)?),
        status: HoldStatus::parse(&status).ok_or_else(|| anyhow!("bad stored hold status {status:?}"))?,
        seats: decode_seats(&r.get::<_, String>(4)?)?,
        ga: ga_area
            .map(|a| -> rusqlite::Result<GaSelection> {
                Ok(GaSelection { area: AreaId::from_trusted(a), count: r.get(6)? })
            })
            .transpose()?,
        amount: r.get(7)?,
        currency: Currency::parse(&currency).ok_or_else(|| anyhow!("bad stored currency {currency:?}"))?,
        created_at: ts(r, 9)?,
        expires_at: ts(r, 10)?,
        version: r.get(11)?,
    })
}

fn load_hold(conn: &Connection, id: &str) -> anyhow::Result<Option<Hold>> {
    find_one(conn, &format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = ?1"), id, hold_from_row)
}

/// Ends one hold if it is still `held` and past its expiry, giving its
/// seats and GA places back. Returns whether this call ended it, so the
/// inventory is released exactly once however many callers race.
fn expire_one(conn: &Connection, id: &str, now: Timestamp) -> anyhow::Result<Option<ExpiredHold>> {
    let ended = conn
        .prepare_cached(
            "UPDATE holds SET status = 'expired', version = version + 1 \
             WHERE id = ?1 AND status = 'held' AND expires_at <= ?2 \
             RETURNING event_id, seats, ga_area, ga_count, customer_id, buyer",
        )?
        .query_row(params![id, now.as_millis()], |r| {
            let buyer = Customer { id: CustomerId::from_trusted(r.get(4)?), email: Email::from_trusted(r.get(5)?) };
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, u32>(3)?,
                buyer,
            ))
        })
        .optional()?;
    let Some((event_id, seats, ga_area, ga_count, buyer)) = ended else { return Ok(None) };
    let freed = release_inventory(conn, id, &event_id, &seats, ga_area.as_deref(), i64::from(ga_count))?;
    Ok(Some(ExpiredHold {
        id: HoldId::from_trusted(id.to_owned()),
        event_id: EventId::from_trusted(event_id),
        seats: decode_seats(&seats)?,
        freed,
        ga: ga_area.map(|a| GaSelection { area: AreaId::from_trusted(a), count: ga_count }),
        buyer,
    }))
}

/// Frees whatever of `seats` (a JSON array) is still held by `hold_id`,
/// and its GA places. Seats another hold has since taken over carry that
/// hold's id and are left alone.
fn release_inventory(
    conn: &Connection,
    hold_id: &str,
    event_id: &str,
    seats: &str,
    ga_area: Option<&str>,
    ga_count: i64,
) -> anyhow::Result<Vec<SeatId>> {
    let freed = conn
        .prepare_cached(
            "UPDATE seats SET status = 'available', hold_id = NULL, hold_expires_at = NULL, version = version + 1 \
             WHERE event_id = ?2 AND seat_id IN (SELECT value FROM json_each(?3)) AND hold_id = ?1 AND status = 'held' \
             RETURNING seat_id",
        )?
        .query_map(params![hold_id, event_id, seats], |r| r.get::<_, String>(0).map(SeatId::from_trusted))?
        .collect::<rusqlite::Result<_>>()?;
    if let Some(area) = ga_area {
        conn.prepare_cached("UPDATE ga_inventory SET held = held - ?3 WHERE event_id = ?1 AND area_id = ?2")?
            .execute(params![event_id, area, ga_count])?;
    }
    Ok(freed)
}

/// Takes exactly `seats` for the hold, or nothing. Returns the category
/// of each seat taken, or the rejection. One primary-key UPDATE per seat:
/// cheaper than one statement over a JSON list, and the writer's savepoint
/// makes the set all-or-nothing. The UPDATE has no `RETURNING`: SQLite
/// collects returned rows in a throwaway B-tree that it opens and closes on
/// every run, which cost more than reading the category back from the
/// page the UPDATE has just written.
fn take_seats(
    conn: &Connection,
    event_id: &str,
    seats: &[SeatId],
    hold_id: &str,
    expires_at: Timestamp,
    now: Timestamp,
) -> anyhow::Result<Result<Vec<Category>, HoldRejection>> {
    let mut take = conn.prepare_cached(
        "UPDATE seats SET status = 'held', hold_id = ?1, hold_expires_at = ?2, version = version + 1 \
         WHERE event_id = ?3 AND seat_id = ?4 \
           AND (status = 'available' OR (status = 'held' AND hold_expires_at <= ?5))",
    )?;
    let mut missed = Vec::new();
    for seat in seats {
        let params = params![hold_id, expires_at.as_millis(), event_id, seat.as_str(), now.as_millis()];
        if take.execute(params)? == 0 {
            missed.push(seat.as_str());
        }
    }
    if missed.is_empty() {
        let mut category = conn.prepare_cached("SELECT category FROM seats WHERE event_id = ?1 AND seat_id = ?2")?;
        return Ok(Ok(seats
            .iter()
            .map(|seat| category.query_row(params![event_id, seat.as_str()], |r| r.get(0)).map(Category::from_trusted))
            .collect::<rusqlite::Result<_>>()?));
    }
    // Someone has some of them, or they do not exist. The caller rolls the
    // partial update back; work out which answer to give.
    let mut exists = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM seats WHERE event_id = ?1 AND seat_id = ?2)")?;
    let mut unknown = Vec::new();
    for seat in &missed {
        if !exists.query_row(params![event_id, seat], |r| r.get::<_, bool>(0))? {
            unknown.push((*seat).to_owned());
        }
    }
    if !unknown.is_empty() {
        return Ok(Err(HoldRejection::InvalidSeats(unknown)));
    }
    Ok(Err(HoldRejection::Unavailable(missed.into_iter().map(str::to_owned).collect())))
}

fn free_seats(
    conn: &Connection,
    event_id: &str,
    category: Option<&Category>,
    now: Timestamp,
) -> anyhow::Result<Vec<FreeSeat>> {
    let mut st = conn.prepare_cached(
        "SELECT seat_id, section, row_label, number, category, x, y FROM seats \
         WHERE event_id = ?1 AND (?2 IS NULL OR category = ?2) \
           AND (status = 'available' OR (status = 'held' AND hold_expires_at <= ?3)) \
         ORDER BY y, x LIMIT ?4",
    )?;
    let rows = st
        .query_map(
            params![event_id, category.map(Category::as_str), now.as_millis(), BEST_AVAILABLE_CANDIDATES],
            |r| {
                Ok(FreeSeat {
                    id: SeatId::from_trusted(r.get(0)?),
                    section: r.get(1)?,
                    row: r.get(2)?,
                    number: r.get(3)?,
                    category: Category::from_trusted(r.get(4)?),
                    x: r.get(5)?,
                    y: r.get(6)?,
                })
            },
        )?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Takes `count` places in the area, or gives the rejection; with the
/// category, the area's lapsed holds it ended first (see [`Placed`]).
fn take_ga(
    conn: &Connection,
    event_id: &str,
    area: &AreaId,
    count: u32,
    now: Timestamp,
) -> anyhow::Result<Result<(Category, Vec<ExpiredHold>), HoldRejection>> {
    // Lazy expiry for GA: hand back this area's lapsed holds first, so an
    // expired hold's places are available at once.
    let lapsed: Vec<String> = conn
        .prepare_cached(
            "SELECT id FROM holds WHERE event_id = ?1 AND ga_area = ?2 AND status = 'held' AND expires_at <= ?3",
        )?
        .query_map(params![event_id, area.as_str(), now.as_millis()], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut reclaimed = Vec::with_capacity(lapsed.len());
    for id in lapsed {
        reclaimed.extend(expire_one(conn, &id, now)?);
    }
    let category: Option<String> = conn
        .prepare_cached(
            "UPDATE ga_inventory SET held = held + ?3 \
             WHERE event_id = ?1 AND area_id = ?2 AND held + sold + ?3 <= capacity RETURNING category",
        )?
        .query_row(params![event_id, area.as_str(), count], |r| r.get(0))
        .optional()?;
    if let Some(c) = category {
        return Ok(Ok((Category::from_trusted(c), reclaimed)));
    }
    let exists: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM ga_inventory WHERE event_id = ?1 AND area_id = ?2)")?
        .query_row(params![event_id, area.as_str()], |r| r.get(0))?;
    Ok(Err(if exists {
        HoldRejection::Unavailable(vec![area.as_str().to_owned()])
    } else {
        HoldRejection::InvalidSeats(vec![area.as_str().to_owned()])
    }))
}

/// What a buyer already holds of an event, for the purchase limit (live
/// holds, holds in checkout, and purchased ones): three ranges of the
/// covering index `holds_live_by_buyer`, so no hold rows are read. SQLite
/// uses a partial index only when the query implies its WHERE, which it
/// proves for this OR of equalities; the index's own `status IN (…)` form
/// would do too, but SQLite then builds a throwaway table for the list on
/// every run, which was the writer's costliest single step per hold.
const LIMIT_SUM: &str = "SELECT (SELECT COALESCE(SUM(quantity), 0) FROM holds \
                 WHERE buyer = ?1 AND event_id = ?2 AND (status = 'held' OR status = 'checkout' OR status = 'purchased') \
                   AND status = 'held' AND expires_at > ?3) \
              + (SELECT COALESCE(SUM(quantity), 0) FROM holds \
                 WHERE buyer = ?1 AND event_id = ?2 AND (status = 'held' OR status = 'checkout' OR status = 'purchased') \
                   AND status = 'checkout') \
              + (SELECT COALESCE(SUM(quantity), 0) FROM holds \
                 WHERE buyer = ?1 AND event_id = ?2 AND (status = 'held' OR status = 'checkout' OR status = 'purchased') \
                   AND status = 'purchased')";

/// The whole hold, inside the writer's transaction.
fn place_hold_tx(conn: &Connection, p: &HoldPlacement) -> anyhow::Result<Result<Placed, HoldRejection>> {
    let Some(event) = writer_event(conn, p.event_id.as_str())? else {
        return Ok(Err(HoldRejection::EventNotFound));
    };
    if let Err(n) = event.check_on_sale(p.now) {
        return Ok(Err(HoldRejection::NotOnSale(n.0)));
    }
    let requested = p.selection.quantity();
    let already: i64 = conn
        .prepare_cached(LIMIT_SUM)?
        .query_row(params![p.customer.email.as_str(), p.event_id.as_str(), p.now.as_millis()], |r| r.get(0))?;
    let already = u32::try_from(already).unwrap_or(u32::MAX);
    if let Err(e) = check_purchase_limit(already, requested, event.max_tickets_per_customer) {
        return Ok(Err(HoldRejection::LimitExceeded(e)));
    }

    let expires_at = p.now.plus_secs(event.hold_ttl_seconds);
    let mut reclaimed = Vec::new();
    let (seats, ga, categories) = match &p.selection {
        Selection::Seats(seats) => {
            match take_seats(conn, p.event_id.as_str(), seats, p.hold_id.as_str(), expires_at, p.now)? {
                Ok(cats) => (seats.clone(), None, cats),
                Err(r) => return Ok(Err(r)),
            }
        }
        Selection::BestAvailable { count, category } => {
            let order = match category {
                Some(c) if event.prices.contains_key(c) => vec![c.clone()],
                Some(c) => return Ok(Err(HoldRejection::InvalidSeats(vec![c.as_str().to_owned()]))),
                None => event.categories_best_first(),
            };
            let free = free_seats(conn, p.event_id.as_str(), category.as_ref(), p.now)?;
            let Some(picked) = pick_best(&free, *count as usize, &order) else {
                return Ok(Err(HoldRejection::Unavailable(vec![])));
            };
            match take_seats(conn, p.event_id.as_str(), &picked, p.hold_id.as_str(), expires_at, p.now)? {
                Ok(cats) => (picked, None, cats),
                // The single writer means the seats just read are still
                // free; anything else is a bug worth surfacing.
                Err(r) => bail!("best-available lost seats it had just read: {r:?}"),
            }
        }
        Selection::Ga { area, count } => match take_ga(conn, p.event_id.as_str(), area, *count, p.now)? {
            Ok((cat, ended)) => {
                reclaimed = ended;
                (vec![], Some(GaSelection { area: area.clone(), count: *count }), vec![cat; *count as usize])
            }
            Err(r) => return Ok(Err(r)),
        },
    };

    let hold = priced_hold(p, &event, seats, ga, &categories)?;
    conn.prepare_cached(
        "INSERT INTO holds (id, event_id, customer_id, buyer, status, seats, ga_area, ga_count, quantity, \
                            amount, currency, created_at, expires_at, version) \
         VALUES (?1, ?2, ?3, ?4, 'held', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 1)",
    )?
    .execute(params![
        hold.id.as_str(),
        hold.event_id.as_str(),
        hold.customer_id.as_str(),
        p.customer.email.as_str(),
        encode_seats(&hold.seats),
        hold.ga.as_ref().map(|g| g.area.as_str()),
        hold.ga.as_ref().map_or(0, |g| g.count),
        requested,
        hold.amount,
        hold.currency.as_str(),
        hold.created_at.as_millis(),
        hold.expires_at.as_millis(),
    ])?;
    Ok(Ok(Placed { hold, reclaimed }))
}

fn keep_if_ok<T, E>(r: Result<T, E>) -> (Result<T, E>, Keep) {
    let keep = if r.is_ok() { Keep::Commit } else { Keep::Rollback };
    (r, keep)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(|_| ())?)).await
    }

    async fn create_session(&self, s: NewSession) -> StoreResult<()> {
        self.write(move |c| {
            c.prepare_cached("INSERT INTO customers (id, email, created_at) VALUES (?1, ?2, ?3)")?.execute(params![
                s.customer.id.as_str(),
                s.customer.email.as_str(),
                s.created_at.as_millis()
            ])?;
            c.prepare_cached(
                "INSERT INTO sessions (token_hash, customer_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                &s.token_hash.0[..],
                s.customer.id.as_str(),
                s.created_at.as_millis(),
                s.expires_at.as_millis()
            ])?;
            Ok(((), Keep::Commit))
        })
        .await
    }

    async fn session_customer(&self, token: TokenHash, now: Timestamp) -> StoreResult<Option<(Customer, Timestamp)>> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT c.id, c.email, s.expires_at FROM sessions s JOIN customers c ON c.id = s.customer_id \
                 WHERE s.token_hash = ?1 AND s.expires_at > ?2",
            )?
            .query_row(params![&token.0[..], now.as_millis()], |r| {
                let customer =
                    Customer { id: CustomerId::from_trusted(r.get(0)?), email: Email::from_trusted(r.get(1)?) };
                Ok((customer, ts(r, 2)?))
            })
            .optional()?)
        })
        .await
    }

    async fn insert_venue(&self, v: &Venue, now: Timestamp) -> StoreResult<()> {
        let doc = serde_json::to_string(v).context("encoding venue")?;
        let (id, name, city) = (v.id.to_string(), v.name.clone(), v.city.clone());
        self.write(move |c| {
            c.prepare_cached("INSERT INTO venues (id, name, city, doc, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![id, name, city, doc, now.as_millis()])?;
            Ok(((), Keep::Commit))
        })
        .await
    }

    async fn venue(&self, id: &VenueId) -> StoreResult<Option<Venue>> {
        let id = id.to_string();
        self.read(move |c| {
            let doc: Option<String> =
                c.prepare_cached("SELECT doc FROM venues WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()?;
            doc.map(|d| serde_json::from_str::<Venue>(&d).context("decoding stored venue")).transpose()
        })
        .await
    }

    async fn insert_event(&self, e: &Event, venue: &Venue) -> StoreResult<()> {
        let e = e.clone();
        let venue = venue.clone();
        self.write(move |c| {
            forget_cached_events();
            c.prepare_cached(&format!(
                "INSERT INTO events ({EVENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ))?
            .execute(params![
                e.id.as_str(),
                e.venue_id.as_str(),
                e.city,
                e.title,
                e.category.as_str(),
                e.starts_at.as_millis(),
                e.on_sale_at.as_millis(),
                e.currency.as_str(),
                encode_prices(&e.prices),
                e.max_tickets_per_customer,
                e.hold_ttl_seconds,
                encode_waiting_room(&e.waiting_room),
                e.high_demand,
                e.cancelled,
                e.created_at.as_millis(),
                e.updated_at.as_millis(),
                e.version,
            ])?;
            let mut seat = c.prepare_cached(
                "INSERT INTO seats (event_id, seat_id, section, row_label, number, category, x, y) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (section, s) in venue.seats() {
                seat.execute(params![
                    e.id.as_str(),
                    s.id.as_str(),
                    section.name,
                    s.row,
                    s.number,
                    s.category.as_str(),
                    s.x,
                    s.y
                ])?;
            }
            let mut ga = c.prepare_cached(
                "INSERT INTO ga_inventory (event_id, area_id, name, category, capacity) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for a in &venue.ga_areas {
                ga.execute(params![e.id.as_str(), a.id.as_str(), a.name, a.category.as_str(), a.capacity])?;
            }
            Ok(((), Keep::Commit))
        })
        .await
    }

    async fn event(&self, id: &EventId) -> StoreResult<Option<Event>> {
        let id = id.to_string();
        self.read(move |c| load_event(c, &id)).await
    }

    async fn update_event(&self, e: &Event) -> StoreResult<()> {
        let e = e.clone();
        self.write(move |c| {
            // Whether this commits or rolls back, the next read is fresh.
            forget_cached_events();
            let n = c
                .prepare_cached(
                    "UPDATE events SET title = ?2, prices = ?3, max_tickets_per_customer = ?4, hold_ttl_seconds = ?5, \
                     waiting_room = ?6, high_demand = ?7, cancelled = ?8, updated_at = ?9, version = ?10 \
                     WHERE id = ?1 AND version = ?10 - 1",
                )?
                .execute(params![
                    e.id.as_str(),
                    e.title,
                    encode_prices(&e.prices),
                    e.max_tickets_per_customer,
                    e.hold_ttl_seconds,
                    encode_waiting_room(&e.waiting_room),
                    e.high_demand,
                    e.cancelled,
                    e.updated_at.as_millis(),
                    e.version,
                ])?;
            if n == 1 {
                Ok(((), Keep::Commit))
            } else {
                Err(StoreError::Conflict.into())
            }
        })
        .await
    }

    async fn search_events(&self, q: &EventQuery) -> StoreResult<Vec<Event>> {
        let q = q.clone();
        self.read(move |c| {
            let like = q.like_pattern();
            let (after_ts, after_id) = q.after_binds();
            let mut st = c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events \
                 WHERE cancelled = 0 \
                   AND (?1 IS NULL OR city = ?1 COLLATE NOCASE) \
                   AND (?2 IS NULL OR title LIKE ?2 ESCAPE '\\') \
                   AND (?3 IS NULL OR category = ?3) \
                   AND (?4 IS NULL OR starts_at >= ?4) \
                   AND (?5 IS NULL OR starts_at < ?5) \
                   AND (?6 IS NULL OR (starts_at, id) > (?6, ?7)) \
                 ORDER BY starts_at, id LIMIT ?8"
            ))?;
            let mut rows = st.query(params![
                q.city,
                like,
                q.category.as_ref().map(Category::as_str),
                q.from.map(Timestamp::as_millis),
                q.to.map(Timestamp::as_millis),
                after_ts,
                after_id,
                q.limit,
            ])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(event_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn availability(&self, id: &EventId, now: Timestamp) -> StoreResult<Option<Availability>> {
        let id = id.to_string();
        self.read(move |c| {
            if !event_exists(c, &id)? {
                return Ok(None);
            }
            let seats = c
                .prepare_cached(
                    "SELECT category, COUNT(*), \
                            SUM(status = 'sold'), \
                            SUM(status = 'checkout' OR (status = 'held' AND hold_expires_at > ?2)) \
                     FROM seats WHERE event_id = ?1 GROUP BY category",
                )?
                .query_map(params![id, now.as_millis()], |r| {
                    let (total, sold, held): (i64, i64, i64) = (r.get(1)?, r.get(2)?, r.get(3)?);
                    Ok((Category::from_trusted(r.get(0)?), total as u64, sold as u64, held as u64))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(tally(seats, &ga_states(c, &id, now)?)))
        })
        .await
    }

    async fn seat_map_state(&self, id: &EventId, now: Timestamp) -> StoreResult<Option<SeatMapState>> {
        let id = id.to_string();
        self.read(move |c| {
            if !event_exists(c, &id)? {
                return Ok(None);
            }
            let seats = c
                .prepare_cached(
                    "SELECT seat_id, category, \
                        CASE WHEN status = 'sold' THEN 2 \
                             WHEN status = 'checkout' OR (status = 'held' AND hold_expires_at > ?2) THEN 1 \
                             ELSE 0 END \
                     FROM seats WHERE event_id = ?1 ORDER BY section, y, x",
                )?
                .query_map(params![id, now.as_millis()], |r| {
                    Ok(SeatState {
                        id: SeatId::from_trusted(r.get(0)?),
                        category: Category::from_trusted(r.get(1)?),
                        status: SeatStatus::from_code(r.get(2)?),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let ga_areas = ga_states(c, &id, now)?.into_iter().map(|a| a.state).collect();
            Ok(Some(SeatMapState { seats, ga_areas }))
        })
        .await
    }

    async fn place_hold(&self, p: HoldPlacement) -> StoreResult<Result<Placed, HoldRejection>> {
        self.write_hold_state(move |c| place_hold_tx(c, &p).map(keep_if_ok)).await
    }

    async fn hold(&self, id: &HoldId) -> StoreResult<Option<Hold>> {
        let id = id.to_string();
        self.read(move |c| load_hold(c, &id)).await
    }

    async fn customer_holds(&self, customer: &Customer, now: Timestamp, limit: u32) -> StoreResult<Vec<Hold>> {
        let (id, buyer) = (customer.id.to_string(), customer.email.as_str().to_owned());
        self.read(move |c| {
            // Through holds_live_by_buyer (its WHERE stated verbatim, or SQLite
            // will not use it): a customer's holds carry their email.
            let mut st = c.prepare_cached(&format!(
                "SELECT {HOLD_COLUMNS} FROM holds WHERE buyer = ?1 AND customer_id = ?2 \
                   AND status IN ('held', 'checkout', 'purchased') \
                   AND status IN ('held', 'checkout') AND (status = 'checkout' OR expires_at > ?3) \
                 ORDER BY created_at DESC LIMIT ?4"
            ))?;
            let mut rows = st.query(params![buyer, id, now.as_millis(), limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(hold_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn release_hold(&self, id: &HoldId, customer: &CustomerId, now: Timestamp) -> StoreResult<ReleaseOutcome> {
        let (id, customer) = (id.to_string(), customer.clone());
        self.write_hold_state(move |c| {
            let Some(hold) = load_hold(c, &id)?.filter(|h| h.customer_id == customer) else {
                return Ok((ReleaseOutcome::NotFound, Keep::Rollback));
            };
            match hold.effective_status(now) {
                HoldStatus::Checkout => Ok((ReleaseOutcome::InCheckout(hold), Keep::Rollback)),
                HoldStatus::Purchased => Ok((ReleaseOutcome::Purchased(hold), Keep::Rollback)),
                HoldStatus::Released => Ok((ReleaseOutcome::AlreadyEnded(hold), Keep::Rollback)),
                HoldStatus::Expired => {
                    // Tidy now rather than wait for the sweeper.
                    let ended = expire_one(c, &id, now)?;
                    let hold = load_hold(c, &id)?.unwrap_or(hold);
                    Ok((
                        match ended {
                            Some(e) => ReleaseOutcome::Lapsed { hold, freed: e.freed },
                            None => ReleaseOutcome::AlreadyEnded(hold),
                        },
                        Keep::Commit,
                    ))
                }
                HoldStatus::Held => {
                    let n = c
                        .prepare_cached(
                            "UPDATE holds SET status = 'released', version = version + 1 \
                             WHERE id = ?1 AND status = 'held' AND version = ?2",
                        )?
                        .execute(params![id, hold.version])?;
                    if n != 1 {
                        bail!("hold {id} changed under the single writer");
                    }
                    release_inventory(
                        c,
                        &id,
                        hold.event_id.as_str(),
                        &encode_seats(&hold.seats),
                        hold.ga.as_ref().map(|g| g.area.as_str()),
                        hold.ga.as_ref().map_or(0, |g| i64::from(g.count)),
                    )?;
                    let hold = Hold { status: HoldStatus::Released, version: hold.version + 1, ..hold };
                    Ok((ReleaseOutcome::Released(hold), Keep::Commit))
                }
            }
        })
        .await
    }

    async fn expire_holds(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<ExpiredHold>> {
        self.write_hold_state(move |c| {
            let ids: Vec<String> = c
                .prepare_cached(
                    "SELECT id FROM holds WHERE status = 'held' AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2",
                )?
                .query_map(params![now.as_millis(), limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.extend(expire_one(c, &id, now)?);
            }
            Ok((out, Keep::Commit))
        })
        .await
    }

    async fn start_checkout(&self, s: CheckoutStart) -> StoreResult<Result<CheckoutStarted, CheckoutRefusal>> {
        self.write(move |c| checkout::start_checkout(c, &s).map(keep_if_ok)).await
    }

    async fn settle(&self, s: Settlement) -> StoreResult<Settled> {
        self.write(move |c| checkout::settle(c, &s).map(|r| (r, Keep::Commit))).await
    }

    async fn order(&self, id: &OrderId) -> StoreResult<Option<Order>> {
        let id = id.to_string();
        self.read(move |c| checkout::load_order(c, &id)).await
    }

    async fn order_for_hold(&self, hold: &HoldId) -> StoreResult<Option<Order>> {
        let hold = hold.to_string();
        self.read(move |c| checkout::load_order_for_hold(c, &hold)).await
    }

    async fn customer_orders(&self, customer: &CustomerId, limit: u32) -> StoreResult<Vec<Order>> {
        let customer = customer.to_string();
        self.read(move |c| {
            let sql = format!(
                "SELECT {} FROM orders WHERE customer_id = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2",
                checkout::ORDER_COLUMNS
            );
            checkout::query_all(c, &sql, params![customer, limit], checkout::order_from_row)
        })
        .await
    }

    async fn order_attempts(&self, order: &OrderId) -> StoreResult<Vec<Attempt>> {
        let order = order.to_string();
        self.read(move |c| {
            let sql = format!(
                "SELECT {} FROM payment_attempts WHERE order_id = ?1 ORDER BY created_at, id",
                checkout::ATTEMPT_COLUMNS
            );
            checkout::query_all(c, &sql, params![order], checkout::attempt_from_row)
        })
        .await
    }

    async fn order_tickets(&self, order: &OrderId) -> StoreResult<Vec<Ticket>> {
        let order = order.to_string();
        self.read(move |c| {
            let sql = format!("SELECT {} FROM tickets WHERE order_id = ?1 ORDER BY id", checkout::TICKET_COLUMNS);
            checkout::query_all(c, &sql, params![order], checkout::ticket_from_row)
        })
        .await
    }

    async fn ticket(&self, id: &TicketId) -> StoreResult<Option<Ticket>> {
        let id = id.to_string();
        self.read(move |c| checkout::load_ticket(c, &id)).await
    }

    async fn check_in(&self, id: &TicketId, now: Timestamp) -> StoreResult<CheckIn> {
        let id = id.to_string();
        self.write(move |c| checkout::check_in(c, &id, now).map(|r| (r, Keep::Commit))).await
    }

    async fn claim_idempotency_key(
        &self,
        customer: &CustomerId,
        key: &str,
        request_hash: [u8; 32],
        now: Timestamp,
        lease: Duration,
    ) -> StoreResult<KeyClaim> {
        let (customer, key) = (customer.to_string(), key.to_owned());
        let lease_ms = lease.as_millis().min(i64::MAX as u128) as i64;
        self.write(move |c| {
            checkout::claim_key(c, &customer, &key, &request_hash, now, lease_ms).map(|r| (r, Keep::Commit))
        })
        .await
    }

    async fn stored_response(
        &self,
        customer: &CustomerId,
        key: &str,
        request_hash: [u8; 32],
    ) -> StoreResult<Option<(u16, Vec<u8>)>> {
        let (customer, key) = (customer.to_string(), key.to_owned());
        self.read(move |c| {
            let row: Option<(Vec<u8>, Option<u16>, Option<Vec<u8>>)> = c
                .prepare_cached(
                    "SELECT request_hash, status, body FROM idempotency_keys WHERE customer_id = ?1 AND key = ?2",
                )?
                .query_row(params![customer, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            Ok(match row {
                Some((hash, Some(status), body)) if hash == request_hash => Some((status, body.unwrap_or_default())),
                _ => None,
            })
        })
        .await
    }

    async fn finish_idempotency_key(
        &self,
        customer: &CustomerId,
        key: &str,
        status: u16,
        body: Vec<u8>,
    ) -> StoreResult<()> {
        let (customer, key) = (customer.to_string(), key.to_owned());
        self.write(move |c| checkout::finish_key(c, &customer, &key, status, &body).map(|r| (r, Keep::Commit))).await
    }

    async fn abandon_idempotency_key(&self, customer: &CustomerId, key: &str) -> StoreResult<()> {
        let (customer, key) = (customer.to_string(), key.to_owned());
        self.write(move |c| checkout::abandon_key(c, &customer, &key).map(|r| (r, Keep::Commit))).await
    }

    async fn reap_idempotency_keys(&self, created_before: Timestamp, limit: u32) -> StoreResult<u64> {
        self.write_hold_state(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM idempotency_keys WHERE (customer_id, key) IN \
                     (SELECT customer_id, key FROM idempotency_keys WHERE created_at < ?1 LIMIT ?2)",
                )?
                .execute(params![created_before.as_millis(), limit])?;
            Ok((n as u64, Keep::Commit))
        })
        .await
    }

    async fn unsettled_orders(&self, limit: u32) -> StoreResult<Vec<Order>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {} FROM orders WHERE status IN ('pending', 'requires_action', 'payment_pending') \
                 ORDER BY updated_at LIMIT ?1",
                checkout::ORDER_COLUMNS
            );
            checkout::query_all(c, &sql, params![limit], checkout::order_from_row)
        })
        .await
    }

    async fn orders_confirmed_between(&self, from: Timestamp, to: Timestamp, limit: u32) -> StoreResult<Vec<Order>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {} FROM orders WHERE status = 'confirmed' AND updated_at >= ?1 AND updated_at < ?2 \
                 ORDER BY updated_at, id LIMIT ?3",
                checkout::ORDER_COLUMNS
            );
            checkout::query_all(c, &sql, params![from.as_millis(), to.as_millis(), limit], checkout::order_from_row)
        })
        .await
    }

    async fn orphaned_attempts(&self, limit: u32) -> StoreResult<Vec<Attempt>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {} FROM payment_attempts a \
                 WHERE a.status IN ('started', 'requires_action', 'processing') \
                   AND EXISTS (SELECT 1 FROM orders o WHERE o.id = a.order_id \
                               AND o.status NOT IN ('pending', 'requires_action', 'payment_pending')) \
                 ORDER BY a.updated_at LIMIT ?1",
                checkout::ATTEMPT_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ")
            );
            checkout::query_all(c, &sql, params![limit], checkout::attempt_from_row)
        })
        .await
    }

    async fn close_attempt(
        &self,
        attempt: &AttemptId,
        status: AttemptStatus,
        intent_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let (attempt, intent_id) = (attempt.to_string(), intent_id.map(str::to_owned));
        self.write(move |c| {
            checkout::close_attempt(c, &attempt, status, intent_id.as_deref(), now).map(|r| (r, Keep::Commit))
        })
        .await
    }

    async fn alert_once(&self, dedup_key: &str, message: OutboxMessage, now: Timestamp) -> StoreResult<bool> {
        let key = dedup_key.to_owned();
        self.write(move |c| checkout::alert_once(c, &key, &message, now).map(|r| (r, Keep::Commit))).await
    }

    async fn refund_order(&self, order: &OrderId, outbox: OutboxMessage, now: Timestamp) -> StoreResult<Refunded> {
        let order = order.to_string();
        self.write(move |c| checkout::refund_order(c, &order, &outbox, now).map(|r| (r, Keep::Commit))).await
    }

    async fn outbox_due(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<OutboxRow>> {
        self.read(move |c| {
            let sql = format!(
                "SELECT {} FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= ?1 \
                 ORDER BY next_attempt_at, id LIMIT ?2",
                checkout::OUTBOX_COLUMNS
            );
            checkout::query_all(c, &sql, params![now.as_millis(), limit], checkout::outbox_from_row)
        })
        .await
    }

    async fn claim_outbox(&self, now: Timestamp, lease: Duration, limit: u32) -> StoreResult<Vec<OutboxRow>> {
        let until = now.plus(lease).as_millis();
        self.write(move |c| {
            let sql = format!(
                "UPDATE outbox SET next_attempt_at = ?2, attempts = attempts + 1 WHERE id IN \
                 (SELECT id FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= ?1 \
                  ORDER BY next_attempt_at, id LIMIT ?3) RETURNING {}",
                checkout::OUTBOX_COLUMNS
            );
            let mut rows =
                checkout::query_all(c, &sql, params![now.as_millis(), until, limit], checkout::outbox_from_row)?;
            rows.sort_by_key(|r| r.id);
            Ok((rows, Keep::Commit))
        })
        .await
    }

    async fn outbox_progress(&self, id: i64, attempts: u32, p: OutboxProgress, now: Timestamp) -> StoreResult<bool> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE outbox SET done_channels = ?3, delivered_at = CASE WHEN ?4 THEN ?5 END, \
                         next_attempt_at = ?6, last_error = ?7 \
                     WHERE id = ?1 AND attempts = ?2 AND delivered_at IS NULL",
                )?
                .execute(params![
                    id,
                    attempts,
                    p.done_channels,
                    p.delivered,
                    now.as_millis(),
                    p.next_attempt_at.as_millis(),
                    p.last_error
                ])?;
            Ok((n == 1, Keep::Commit))
        })
        .await
    }

    async fn customer_email(&self, id: &CustomerId) -> StoreResult<Option<String>> {
        let id = id.to_string();
        self.read(move |c| {
            Ok(c.prepare_cached("SELECT email FROM customers WHERE id = ?1")?
                .query_row([&id], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn audit_query(&self, sql: &'static str, params: Vec<i64>) -> StoreResult<Vec<Vec<Option<String>>>> {
        self.read(move |c| {
            let mut st = c.prepare(sql)?;
            for (i, v) in params.iter().enumerate() {
                if let Some(index) = st.parameter_index(&format!("${}", i + 1))? {
                    st.raw_bind_parameter(index, v)?;
                }
            }
            let columns = st.column_count();
            let mut rows = st.raw_query();
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut row = Vec::with_capacity(columns);
                for i in 0..columns {
                    row.push(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => None,
                        rusqlite::types::ValueRef::Integer(n) => Some(n.to_string()),
                        rusqlite::types::ValueRef::Real(f) => Some(f.to_string()),
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            Some(String::from_utf8_lossy(t).into_owned())
                        }
                    });
                }
                out.push(row);
            }
            Ok(out)
        })
        .await
    }

    async fn put_setting(&self, name: &str, value: Vec<u8>) -> StoreResult<()> {
        let name = name.to_owned();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![name, value])?;
            Ok(((), Keep::Commit))
        })
        .await
    }

    async fn ensure_setting(&self, name: &str, value: Vec<u8>) -> StoreResult<Vec<u8>> {
        let name = name.to_owned();
        self.write(move |c| {
            c.prepare_cached("INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
                .execute(params![name, value])?;
            let stored =
                c.prepare_cached("SELECT value FROM settings WHERE name = ?1")?.query_row([&name], |r| r.get(0))?;
            Ok((stored, Keep::Commit))
        })
        .await
    }
}

fn event_exists(c: &Connection, id: &str) -> anyhow::Result<bool> {
    Ok(c.prepare_cached("SELECT EXISTS (SELECT 1 FROM events WHERE id = ?1)")?.query_row([id], |r| r.get(0))?)
}

/// GA areas with lapsed-but-unswept holds counted as available.
fn ga_states(c: &Connection, event_id: &str, now: Timestamp) -> anyhow::Result<Vec<GaRow>> {
    let mut st = c.prepare_cached(
        "SELECT g.area_id, g.name, g.category, g.capacity, g.held, g.sold, \
                COALESCE((SELECT SUM(h.ga_count) FROM holds h \
                          WHERE h.event_id = g.event_id AND h.ga_area = g.area_id \
                            AND h.status = 'held' AND h.expires_at <= ?2), 0) \
         FROM ga_inventory g WHERE g.event_id = ?1 ORDER BY g.area_id",
    )?;
    let rows = st
        .query_map(params![event_id, now.as_millis()], |r| {
            let stored = GaCounters { capacity: r.get(3)?, held: r.get(4)?, sold: r.get(5)?, lapsed: r.get(6)? };
            Ok(GaRow::new(AreaId::from_trusted(r.get(0)?), r.get(1)?, Category::from_trusted(r.get(2)?), stored))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database made by an older binary keeps its holds through later
    /// migrations, and the purchase-limit sum reads only its covering index.
    #[test]
    fn migrations_keep_existing_holds_and_the_limit_sum_uses_its_index() {
        let conn = Connection::open_in_memory().unwrap();
        configure(&conn).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0), (2, 0);",
        )
        .unwrap();
        conn.execute_batch(MIGRATIONS[0].1).unwrap();
        conn.execute_batch(MIGRATIONS[1].1).unwrap();
        conn.execute_batch(
            "INSERT INTO venues VALUES ('ven_1', 'Hall', 'Oslo', '{}', 0);
             INSERT INTO events VALUES ('evt_1', 'ven_1', 'Oslo', 'Show', 'music', 0, 0, 'EUR', '{}', 4, 300,
                                        NULL, 0, 0, 0, 0, 1);
             INSERT INTO customers VALUES ('cus_1', 'a@example.com', 0);
             INSERT INTO holds VALUES ('hld_1', 'evt_1', 'cus_1', 'a@example.com', 'held', '[\"A1\"]', NULL, 0, 1,
                                       5000, 'EUR', 0, 300000, 1);",
        )
        .unwrap();

        migrate(&conn).unwrap();

        let kept: (String, String, i64) = conn
            .query_row("SELECT id, buyer, amount FROM holds", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        assert_eq!(kept, ("hld_1".into(), "a@example.com".into(), 5000));
        let version: i64 = conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.last().unwrap().0);

        // One column of `EXPLAIN [QUERY PLAN] LIMIT_SUM`'s rows.
        let explain = |how: &str, column: usize| -> Vec<String> {
            conn.prepare(&format!("{how} {LIMIT_SUM}"))
                .unwrap()
                .query_map(params!["a@example.com", "evt_1", 0], |r| r.get(column))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        let plan = explain("EXPLAIN QUERY PLAN", 3);
        let searches: Vec<&String> = plan.iter().filter(|p| p.starts_with("SEARCH")).collect();
        assert_eq!(searches.len(), 3, "{plan:?}");
        let ops = explain("EXPLAIN", 1);
        assert!(!ops.iter().any(|op| op == "OpenEphemeral"), "no throwaway tables per hold: {ops:?}");
        let purchased: (String, i64) =
            conn.query_row("SELECT status, extended FROM holds", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(purchased, ("held".into(), 0), "kept holds start unextended");
        assert!(searches.iter().all(|p| p.contains("USING COVERING INDEX holds_live_by_buyer")), "{plan:?}");
    }
}
