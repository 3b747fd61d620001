//! The scale-out store: PostgreSQL through sqlx.
//!
//! Every change is the same conditional write as in SQLite, in its own
//! transaction at READ COMMITTED. Why that is enough: an `UPDATE … WHERE
//! <precondition>` takes a row lock on each row it changes; a second
//! transaction updating the same row waits for the first to commit, then
//! re-checks the WHERE clause against the row's *new* version (PostgreSQL's
//! EvalPlanQual recheck) and skips it if the precondition no longer holds.
//! So two holds can never both change one seat, and the rows-changed count
//! tells each transaction exactly what it got. See ARCHITECTURE.md.
//!
//! * Pools have an acquire timeout, and every statement a server-side
//!   `statement_timeout`.
//! * Multi-seat updates first lock their rows in seat-id order
//!   (`ORDER BY seat_id FOR UPDATE`), and deadlock or serialization
//!   failures are retried.
//! * The purchase limit takes a transaction-scoped advisory lock per
//!   (buyer, event), so two concurrent holds of one buyer are counted in turn.
//! * Explicit-seat holds are settled many to a transaction by the hold
//!   batcher (`batch.rs`): the same locks in the same order, decisions on
//!   locked rows, and the same conditional UPDATE with a checked count.
//!   Best-available and GA holds run one to a transaction, here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

mod batch;
mod checkout;

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

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_holds_by_customer.sql")),
    (3, include_str!("migrations/0003_lean_holds.sql")),
    (4, include_str!("migrations/0004_checkout.sql")),
];
/// Serialises migrations across nodes starting at once.
const MIGRATION_LOCK: i64 = 0x626f_786f_6666_6963; // "boxoffic"
/// How many of the best-placed free seats best-available chooses from.
const BEST_AVAILABLE_CANDIDATES: i64 = 4000;
/// Re-picks within one transaction when picked seats were taken meanwhile.
const PICK_ROUNDS: usize = 16;
/// Attempts for a hold that hit a deadlock, a serialization failure or a
/// best-available race.
const HOLD_ATTEMPTS: u32 = 6;

/// Connection settings for [`PgStore::connect`].
#[derive(Clone, Debug)]
pub struct PgSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

pub struct PgStore {
    /// The primary: every write, and reads that must see the latest write.
    pool: PgPool,
    /// Replicas for search and catalog reads that may lag a little, used in
    /// turn; the primary when none is configured.
    replicas: Vec<PgPool>,
    next_replica: AtomicUsize,
    /// Group commit for explicit-seat holds.
    batcher: batch::HoldBatcher,
}

/// See [`pool`].
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

async fn pool(url: &str, s: &PgSettings) -> anyhow::Result<PgPool> {
    pool_options(s).connect_with(connect_options(url, s)?).await.context("connecting to PostgreSQL")
}

fn connect_options(url: &str, s: &PgSettings) -> anyhow::Result<PgConnectOptions> {
    let opts: PgConnectOptions = url.parse().with_context(|| "parsing a PostgreSQL URL")?;
    Ok(opts.options([("statement_timeout", format!("{}", s.statement_timeout.as_millis()))]))
}

fn pool_options(s: &PgSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(s.max_connections)
        .acquire_timeout(s.acquire_timeout)
        // A connection is pinged before reuse only if it has been idle for a
        // while: one that answered a moment ago is alive, and a ping per
        // acquire cost a round trip per hold batch. A connection that died
        // anyway fails its statement, which the caller sees as 503.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

impl PgStore {
    /// Connects to the primary and any replicas, and migrates the primary.
    pub async fn connect(primary: &str, replicas: &[String], s: &PgSettings) -> anyhow::Result<PgStore> {
        let pool = pool(primary, s).await?;
        migrate(&pool).await?;
        let mut pools = Vec::with_capacity(replicas.len());
        for url in replicas {
            pools.push(self::pool(url, s).await.context("connecting to a read replica")?);
        }
        let batcher = batch::HoldBatcher::spawn(pool_options(s), connect_options(primary, s)?)?;
        Ok(PgStore { pool, replicas: pools, next_replica: AtomicUsize::new(0), batcher })
    }

    /// The pool for a lag-tolerant read.
    fn replica(&self) -> &PgPool {
        if self.replicas.is_empty() {
            return &self.pool;
        }
        let i = self.next_replica.fetch_add(1, Ordering::Relaxed);
        &self.replicas[i % self.replicas.len()]
    }
}

async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetch_one(&mut *tx).await?;
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        bail!("the database is at schema version {current}, newer than this binary's {newest}; upgrade boxoffice");
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        sqlx::raw_sql(sql).execute(&mut *tx).await.with_context(|| format!("applying migration {version}"))?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&mut *tx)
            .await?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    tx.commit().await?;
    Ok(())
}

/// PostgreSQL error codes this store acts on.
fn db_code(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(d)) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Deadlocks and serialization failures: the transaction did nothing and
/// may simply be run again.
fn retryable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Retry>().is_some() || matches!(db_code(e).as_deref(), Some("40P01" | "40001"))
}

/// A best-available pick lost a seat to a concurrent hold between reading
/// and taking; pick again.
#[derive(Debug, thiserror::Error)]
#[error("seats changed between pick and take")]
struct Retry;

fn classify(e: anyhow::Error) -> StoreError {
    if matches!(e.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_))) {
        return StoreError::Unavailable(e);
    }
    match db_code(&e).as_deref() {
        Some("23505") => StoreError::Duplicate(format!("{e:#}")),
        // statement timeout, too many connections, shutting down, and a
        // deadlock or serialization failure that outlived its retries
        Some("57014" | "53300" | "57P01" | "57P03" | "40P01" | "40001") => StoreError::Unavailable(e),
        _ => StoreError::Internal(e),
    }
}

fn err<E: Into<anyhow::Error>>(e: E) -> StoreError {
    classify(e.into())
}

type Tx = Transaction<'static, Postgres>;

const EVENT_COLUMNS: &str = "id, venue_id, city, title, category, starts_at, on_sale_at, currency, prices, \
     max_tickets_per_customer, hold_ttl_seconds, waiting_room, high_demand, cancelled, created_at, updated_at, version";

fn event_from_row(r: &PgRow) -> anyhow::Result<Event> {
    let currency: String = r.try_get("currency")?;
    Ok(Event {
        id: EventId::from_trusted(r.try_get("id")?),
        venue_id: VenueId::from_trusted(r.try_get("venue_id")?),
        city: r.try_get("city")?,
        title: r.try_get("title")?,
        category: Category::from_trusted(r.try_get("category")?),
        starts_at: Timestamp::from_millis(r.try_get("starts_at")?),
        on_sale_at: Timestamp::from_millis(r.try_get("on_sale_at")?),
        currency: Currency::parse(&currency).ok_or_else(|| anyhow!("bad stored currency {currency:?}"))?,
        prices: decode_prices(r.try_get("prices")?)?,
        max_tickets_per_customer: r.try_get::<i32, _>("max_tickets_per_customer")? as u32,
        hold_ttl_seconds: r.try_get::<i32, _>("hold_ttl_seconds")? as u32,
        waiting_room: decode_waiting_room(r.try_get::<Option<&str>, _>("waiting_room")?)?,
        high_demand: r.try_get("high_demand")?,
        cancelled: r.try_get("cancelled")?,
        created_at: Timestamp::from_millis(r.try_get("created_at")?),
        updated_at: Timestamp::from_millis(r.try_get("updated_at")?),
        version: r.try_get("version")?,
    })
}

const HOLD_COLUMNS: &str =
    "id, event_id, customer_id, status, seats, ga_area, ga_count, amount, currency, created_at, expires_at, version";

fn hold_from_row(r: &PgRow) -> anyhow::Result<Hold> {
    let status: String = r.try_get("status")?;
    let currency: String = r.try_get("currency")?;
    let ga_area: Option<String> = r.try_get("ga_area")?;
    let ga_count: i32 = r.try_get("ga_count")?;
    Ok(Hold {
        id: HoldId::from_trusted(r.try_get("id")?),
        event_id: EventId::from_trusted(r.try_get("event_id")?),
        customer_id: CustomerId::from_trusted(r.try_get("customer_id")?),
        status: HoldStatus::parse(&status).ok_or_else(|| anyhow!("bad stored hold status {status:?}"))?,
        seats: decode_seats(r.try_get("seats")?)?,
        ga: ga_area.map(|a| GaSelection { area: AreaId::from_trusted(a), count: ga_count as u32 }),
        amount: r.try_get("amount")?,
        currency: Currency::parse(&currency).ok_or_else(|| anyhow!("bad stored currency {currency:?}"))?,
        created_at: Timestamp::from_millis(r.try_get("created_at")?),
        expires_at: Timestamp::from_millis(r.try_get("expires_at")?),
        version: r.try_get("version")?,
    })
}

async fn load_event(tx: &mut Tx, id: &str) -> anyhow::Result<Option<Event>> {
    let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(event_from_row).transpose()
}

fn ids(seats: &[SeatId]) -> Vec<String> {
    let mut v: Vec<String> = seats.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Locks the rows of several seats in seat-id order first, so two
/// transactions touching overlapping seat sets always wait for each other in
/// the same order and cannot deadlock. One seat needs no ordering.
async fn lock_in_order(tx: &mut Tx, event_id: &str, wanted: &[String]) -> anyhow::Result<()> {
    if wanted.len() > 1 {
        sqlx::query("SELECT 1 FROM seats WHERE event_id = $1 AND seat_id = ANY($2) ORDER BY seat_id FOR UPDATE")
            .bind(event_id)
            .bind(wanted)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The conditional UPDATE that takes seats; all or nothing is decided by
/// the caller from the rows returned.
async fn take_seats(
    tx: &mut Tx,
    event_id: &str,
    seats: &[SeatId],
    hold_id: &str,
    expires_at: Timestamp,
    now: Timestamp,
) -> anyhow::Result<Result<Vec<Category>, HoldRejection>> {
    let wanted = ids(seats);
    lock_in_order(tx, event_id, &wanted).await?;
    let taken: Vec<(String, String)> = sqlx::query_as(
        "UPDATE seats SET status = 'held', hold_id = $1, hold_expires_at = $2, version = version + 1 \
         WHERE event_id = $3 AND seat_id = ANY($4) \
           AND (status = 'available' OR (status = 'held' AND hold_expires_at <= $5)) \
         RETURNING seat_id, category",
    )
    .bind(hold_id)
    .bind(expires_at.as_millis())
    .bind(event_id)
    .bind(&wanted)
    .bind(now.as_millis())
    .fetch_all(&mut **tx)
    .await?;
    if taken.len() == seats.len() {
        let by_id: BTreeMap<String, String> = taken.into_iter().collect();
        return Ok(Ok(seats.iter().map(|s| Category::from_trusted(by_id[s.as_str()].clone())).collect()));
    }
    let known: HashSet<String> =
        sqlx::query_scalar("SELECT seat_id FROM seats WHERE event_id = $1 AND seat_id = ANY($2)")
            .bind(event_id)
            .bind(&wanted)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    let unknown: Vec<String> = seats.iter().filter(|s| !known.contains(s.as_str())).map(|s| s.to_string()).collect();
    if !unknown.is_empty() {
        return Ok(Err(HoldRejection::InvalidSeats(unknown)));
    }
    let got: HashSet<&str> = taken.iter().map(|(s, _)| s.as_str()).collect();
    Ok(Err(HoldRejection::Unavailable(
        seats.iter().filter(|s| !got.contains(s.as_str())).map(|s| s.to_string()).collect(),
    )))
}

/// Frees, for each of `holds`, whatever of its seats is still held by it,
/// and its GA places: a fixed number of statements however many holds (the
/// sweeper ends hundreds at a time). Returns the seats freed per hold, in
/// order. Seat rows are locked in (event, seat) order first, as everywhere.
async fn release_inventory(tx: &mut Tx, holds: &[Hold]) -> anyhow::Result<Vec<Vec<SeatId>>> {
    let mut u = (Vec::new(), Vec::new(), Vec::new());
    for h in holds {
        for seat in &h.seats {
            u.0.push(h.id.as_str());
            u.1.push(h.event_id.as_str());
            u.2.push(seat.as_str());
        }
    }
    let mut freed: HashMap<String, Vec<SeatId>> = HashMap::new();
    if u.2.len() > 1 {
        sqlx::query(
            "SELECT 1 FROM seats WHERE (event_id, seat_id) IN (SELECT * FROM unnest($1::text[], $2::text[])) \
             ORDER BY event_id, seat_id FOR UPDATE",
        )
        .bind(&u.1)
        .bind(&u.2)
        .execute(&mut **tx)
        .await?;
    }
    if !u.2.is_empty() {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "UPDATE seats s SET status = 'available', hold_id = NULL, hold_expires_at = NULL, version = s.version + 1 \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS u(hold_id, event_id, seat_id) \
             WHERE s.event_id = u.event_id AND s.seat_id = u.seat_id AND s.hold_id = u.hold_id \
               AND s.status = 'held' \
             RETURNING u.hold_id, s.seat_id",
        )
        .bind(&u.0)
        .bind(&u.1)
        .bind(&u.2)
        .fetch_all(&mut **tx)
        .await?;
        for (hold, seat) in rows {
            freed.entry(hold).or_default().push(SeatId::from_trusted(seat));
        }
    }
    let mut ga: BTreeMap<(&str, &str), i32> = BTreeMap::new();
    for h in holds {
        if let Some(g) = &h.ga {
            *ga.entry((h.event_id.as_str(), g.area.as_str())).or_default() += g.count as i32;
        }
    }
    if !ga.is_empty() {
        let (keys, counts): (Vec<_>, Vec<i32>) = ga.into_iter().unzip();
        let (events, areas): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
        sqlx::query(
            "UPDATE ga_inventory g SET held = g.held - d.n \
             FROM unnest($1::text[], $2::text[], $3::int[]) AS d(event_id, area_id, n) \
             WHERE g.event_id = d.event_id AND g.area_id = d.area_id",
        )
        .bind(&events)
        .bind(&areas)
        .bind(&counts)
        .execute(&mut **tx)
        .await?;
    }
    Ok(holds
        .iter()
        .map(|h| {
            let mut seats = freed.remove(h.id.as_str()).unwrap_or_default();
            seats.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            seats
        })
        .collect())
}

/// Gives back the inventory of holds that were just moved out of `held`
/// (each by exactly one caller: the `status = 'held'` guard re-checks after
/// any concurrent change).
/// The rows carry [`HOLD_COLUMNS`] and `buyer`.
async fn expire(tx: &mut Tx, rows: Vec<PgRow>) -> anyhow::Result<Vec<ExpiredHold>> {
    let holds: Vec<Hold> = rows.iter().map(hold_from_row).collect::<anyhow::Result<_>>()?;
    let buyers: Vec<String> = rows.iter().map(|r| r.try_get("buyer")).collect::<Result<_, _>>()?;
    let freed = release_inventory(tx, &holds).await?;
    Ok(holds
        .into_iter()
        .zip(freed)
        .zip(buyers)
        .map(|((h, freed), email)| ExpiredHold {
            buyer: Customer { id: h.customer_id, email: Email::from_trusted(email) },
            id: h.id,
            event_id: h.event_id,
            seats: h.seats,
            freed,
            ga: h.ga,
        })
        .collect())
}

/// Takes `count` places in the area, or gives the rejection; with the
/// category, the area's lapsed holds it ended first (see [`Placed`]).
async fn take_ga(
    tx: &mut Tx,
    event_id: &str,
    area: &AreaId,
    count: u32,
    now: Timestamp,
) -> anyhow::Result<Result<(Category, Vec<ExpiredHold>), HoldRejection>> {
    // Lazy expiry for GA: hand this area's lapsed holds back first.
    let lapsed = sqlx::query(&format!(
        "UPDATE holds SET status = 'expired', version = version + 1 \
         WHERE event_id = $1 AND ga_area = $2 AND status = 'held' AND expires_at <= $3 RETURNING {HOLD_COLUMNS}, buyer"
    ))
    .bind(event_id)
    .bind(area.as_str())
    .bind(now.as_millis())
    .fetch_all(&mut **tx)
    .await?;
    let reclaimed = expire(tx, lapsed).await?;
    let category: Option<String> = sqlx::query_scalar(
        "UPDATE ga_inventory SET held = held + $3 \
         WHERE event_id = $1 AND area_id = $2 AND held + sold + $3 <= capacity RETURNING category",
    )
    .bind(event_id)
    .bind(area.as_str())
    .bind(count as i32)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(c) = category {
        return Ok(Ok((Category::from_trusted(c), reclaimed)));
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ga_inventory WHERE event_id = $1 AND area_id = $2)")
            .bind(event_id)
            .bind(area.as_str())
            .fetch_one(&mut **tx)
            .await?;
    Ok(Err(if exists {
        HoldRejection::Unavailable(vec![area.to_string()])
    } else {
        HoldRejection::InvalidSeats(vec![area.to_string()])
    }))
}

/// The best-placed free seats, as of this statement (not locked).
async fn free_seats(
    tx: &mut Tx,
    event_id: &str,
    category: Option<&Category>,
    now: Timestamp,
) -> anyhow::Result<Vec<FreeSeat>> {
    let rows = sqlx::query(
        "SELECT seat_id, section, row_label, number, category, x, y FROM seats \
         WHERE event_id = $1 AND ($2::text IS NULL OR category = $2) \
           AND (status = 'available' OR (status = 'held' AND hold_expires_at <= $3)) \
         ORDER BY y, x LIMIT $4",
    )
    .bind(event_id)
    .bind(category.map(Category::as_str))
    .bind(now.as_millis())
    .bind(BEST_AVAILABLE_CANDIDATES)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(FreeSeat {
                id: SeatId::from_trusted(r.try_get("seat_id")?),
                section: r.try_get("section")?,
                row: r.try_get("row_label")?,
                number: r.try_get::<i32, _>("number")? as u32,
                category: Category::from_trusted(r.try_get("category")?),
                x: r.try_get("x")?,
                y: r.try_get("y")?,
            })
        })
        .collect()
}

/// Best-available without queueing: pick from a snapshot of free seats,
/// then lock the picked rows with `FOR UPDATE SKIP LOCKED` (re-checking
/// they are still free). Seats another pick has locked, or that were taken
/// meanwhile, are dropped from the candidates and the pick is made again.
/// Concurrent picks thus spread over different seats instead of waiting on
/// one another; the caller's conditional UPDATE remains the fence.
async fn pick_and_lock(
    tx: &mut Tx,
    event_id: &str,
    count: u32,
    category: Option<&Category>,
    order: &[Category],
    now: Timestamp,
) -> anyhow::Result<Option<Vec<SeatId>>> {
    let mut free = free_seats(tx, event_id, category, now).await?;
    for _ in 0..PICK_ROUNDS {
        let Some(picked) = pick_best(&free, count as usize, order) else { return Ok(None) };
        let wanted = ids(&picked);
        let locked: HashSet<String> = sqlx::query_scalar(
            "SELECT seat_id FROM seats WHERE event_id = $1 AND seat_id = ANY($2) \
               AND (status = 'available' OR (status = 'held' AND hold_expires_at <= $3)) \
             ORDER BY seat_id FOR UPDATE SKIP LOCKED",
        )
        .bind(event_id)
        .bind(&wanted)
        .bind(now.as_millis())
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
        if locked.len() == picked.len() {
            return Ok(Some(picked));
        }
        let lost: HashSet<&str> = wanted.iter().map(String::as_str).filter(|s| !locked.contains(*s)).collect();
        free.retain(|s| !lost.contains(s.id.as_str()));
    }
    Err(Retry.into())
}

/// What a buyer already holds of an event, for the purchase limit: holds
/// held and not lapsed, in checkout, or purchased. The arguments are SQL expressions
/// (placeholders, or an outer query's columns); both hold paths count this way.
fn held_by_buyer(buyer: &str, event: &str, now: &str) -> String {
    format!(
        "SELECT COALESCE(SUM(quantity), 0)::bigint FROM holds \
         WHERE buyer = {buyer} AND event_id = {event} AND status IN ('held', 'checkout', 'purchased') \
           AND (status <> 'held' OR expires_at > {now})"
    )
}

/// One attempt at a hold. `Ok(Err(_))` is a refusal (nothing written);
/// a [`Retry`] or deadlock error means "run it again".
async fn try_place_hold(pool: &PgPool, p: &HoldPlacement) -> anyhow::Result<Result<Placed, HoldRejection>> {
    // The purchase-limit lock first, so every read below sees the holds of
    // whoever had it before.
    let mut tx = pool.begin_with(batch::begin_locking(&[batch::limit_lock(p)].into())).await?;
    let Some(event) = load_event(&mut tx, p.event_id.as_str()).await? else {
        return Ok(Err(HoldRejection::EventNotFound));
    };
    if let Err(n) = event.check_on_sale(p.now) {
        return Ok(Err(HoldRejection::NotOnSale(n.0)));
    }
    let buyer = p.customer.email.as_str();
    let already: i64 = sqlx::query_scalar(&held_by_buyer("$1", "$2", "$3"))
        .bind(buyer)
        .bind(p.event_id.as_str())
        .bind(p.now.as_millis())
        .fetch_one(&mut *tx)
        .await?;
    let requested = p.selection.quantity();
    if let Err(e) =
        check_purchase_limit(u32::try_from(already).unwrap_or(u32::MAX), requested, event.max_tickets_per_customer)
    {
        return Ok(Err(HoldRejection::LimitExceeded(e)));
    }

    let expires_at = p.now.plus_secs(event.hold_ttl_seconds);
    let mut reclaimed = Vec::new();
    let (seats, ga, categories) = match &p.selection {
        Selection::Seats(_) => bail!("explicit-seat holds are settled by the hold batcher"),
        Selection::BestAvailable { count, category } => {
            let order = match category {
                Some(c) if event.prices.contains_key(c) => vec![c.clone()],
                Some(c) => return Ok(Err(HoldRejection::InvalidSeats(vec![c.to_string()]))),
                None => event.categories_best_first(),
            };
            let Some(picked) =
                pick_and_lock(&mut tx, p.event_id.as_str(), *count, category.as_ref(), &order, p.now).await?
            else {
                return Ok(Err(HoldRejection::Unavailable(vec![])));
            };
            match take_seats(&mut tx, p.event_id.as_str(), &picked, p.hold_id.as_str(), expires_at, p.now).await? {
                Ok(cats) => (picked, None, cats),
                // The rows are locked by us; losing one means a bug, but
                // a retry is still the safe answer.
                Err(_) => return Err(Retry.into()),
            }
        }
        Selection::Ga { area, count } => match take_ga(&mut tx, p.event_id.as_str(), area, *count, p.now).await? {
            Ok((cat, ended)) => {
                reclaimed = ended;
                (vec![], Some(GaSelection { area: area.clone(), count: *count }), vec![cat; *count as usize])
            }
            Err(r) => return Ok(Err(r)),
        },
    };
    let hold = priced_hold(p, &event, seats, ga, &categories)?;
    sqlx::query(
        "INSERT INTO holds (id, event_id, customer_id, buyer, status, seats, ga_area, ga_count, quantity, \
                            amount, currency, created_at, expires_at, version) \
         VALUES ($1, $2, $3, $4, 'held', $5, $6, $7, $8, $9, $10, $11, $12, 1)",
    )
    .bind(hold.id.as_str())
    .bind(hold.event_id.as_str())
    .bind(hold.customer_id.as_str())
    .bind(buyer)
    .bind(encode_seats(&hold.seats))
    .bind(hold.ga.as_ref().map(|g| g.area.as_str()))
    .bind(hold.ga.as_ref().map_or(0, |g| g.count as i32))
    .bind(hold.quantity() as i32)
    .bind(hold.amount)
    .bind(hold.currency.as_str())
    .bind(hold.created_at.as_millis())
    .bind(hold.expires_at.as_millis())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ok(Placed { hold, reclaimed }))
}

/// GA areas with lapsed-but-unswept holds counted as available.
async fn ga_states(pool: &PgPool, event_id: &str, now: Timestamp) -> anyhow::Result<Vec<GaRow>> {
    let rows = sqlx::query(
        "SELECT g.area_id, g.name, g.category, g.capacity, g.held, g.sold, \
                COALESCE((SELECT SUM(h.ga_count) FROM holds h \
                          WHERE h.event_id = g.event_id AND h.ga_area = g.area_id \
                            AND h.status = 'held' AND h.expires_at <= $2), 0)::int AS lapsed \
         FROM ga_inventory g WHERE g.event_id = $1 ORDER BY g.area_id",
    )
    .bind(event_id)
    .bind(now.as_millis())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let count = |c: &str| r.try_get::<i32, _>(c).map(|n| n as u32);
            let stored = GaCounters {
                capacity: count("capacity")?,
                held: count("held")?,
                sold: count("sold")?,
                lapsed: count("lapsed")?,
            };
            let (id, name) = (AreaId::from_trusted(r.try_get("area_id")?), r.try_get("name")?);
            Ok(GaRow::new(id, name, Category::from_trusted(r.try_get("category")?), stored))
        })
        .collect()
}

async fn event_exists(pool: &PgPool, id: &str) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)").bind(id).fetch_one(pool).await?)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ()).map_err(err)
    }

    async fn create_session(&self, s: NewSession) -> StoreResult<()> {
        async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("INSERT INTO customers (id, email, created_at) VALUES ($1, $2, $3)")
                .bind(s.customer.id.as_str())
                .bind(s.customer.email.as_str())
                .bind(s.created_at.as_millis())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO sessions (token_hash, customer_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&s.token_hash.0[..])
            .bind(s.customer.id.as_str())
            .bind(s.created_at.as_millis())
            .bind(s.expires_at.as_millis())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            anyhow::Ok(())
        }
        .await
        .map_err(classify)
    }

    async fn session_customer(&self, token: TokenHash, now: Timestamp) -> StoreResult<Option<(Customer, Timestamp)>> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT c.id, c.email, s.expires_at FROM sessions s JOIN customers c ON c.id = s.customer_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(&token.0[..])
        .bind(now.as_millis())
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        Ok(row.map(|(id, email, expires)| {
            (
                Customer { id: CustomerId::from_trusted(id), email: Email::from_trusted(email) },
                Timestamp::from_millis(expires),
            )
        }))
    }

    async fn insert_venue(&self, v: &Venue, now: Timestamp) -> StoreResult<()> {
        let doc = serde_json::to_string(v).context("encoding venue")?;
        sqlx::query("INSERT INTO venues (id, name, city, doc, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(v.id.as_str())
            .bind(&v.name)
            .bind(&v.city)
            .bind(doc)
            .bind(now.as_millis())
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn venue(&self, id: &VenueId) -> StoreResult<Option<Venue>> {
        // The primary: event creation reads the venue it was just given,
        // which a lagging replica may not have yet. The catalog cache keeps
        // this off the hot path.
        let doc: Option<String> = sqlx::query_scalar("SELECT doc FROM venues WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        doc.map(|d| serde_json::from_str::<Venue>(&d).context("decoding stored venue")).transpose().map_err(err)
    }

    async fn insert_event(&self, e: &Event, venue: &Venue) -> StoreResult<()> {
        async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(&format!(
                "INSERT INTO events ({EVENT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            ))
            .bind(e.id.as_str())
            .bind(e.venue_id.as_str())
            .bind(&e.city)
            .bind(&e.title)
            .bind(e.category.as_str())
            .bind(e.starts_at.as_millis())
            .bind(e.on_sale_at.as_millis())
            .bind(e.currency.as_str())
            .bind(encode_prices(&e.prices))
            .bind(e.max_tickets_per_customer as i32)
            .bind(e.hold_ttl_seconds as i32)
            .bind(encode_waiting_room(&e.waiting_room))
            .bind(e.high_demand)
            .bind(e.cancelled)
            .bind(e.created_at.as_millis())
            .bind(e.updated_at.as_millis())
            .bind(e.version)
            .execute(&mut *tx)
            .await?;
            let seats: Vec<_> = venue.seats().collect();
            for chunk in seats.chunks(10_000) {
                sqlx::query(
                    "INSERT INTO seats (event_id, seat_id, section, row_label, number, category, x, y) \
                     SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int[], $6::text[], \
                                              $7::float8[], $8::float8[])",
                )
                .bind(e.id.as_str())
                .bind(chunk.iter().map(|(_, s)| s.id.to_string()).collect::<Vec<_>>())
                .bind(chunk.iter().map(|(sec, _)| sec.name.clone()).collect::<Vec<_>>())
                .bind(chunk.iter().map(|(_, s)| s.row.clone()).collect::<Vec<_>>())
                .bind(chunk.iter().map(|(_, s)| s.number as i32).collect::<Vec<_>>())
                .bind(chunk.iter().map(|(_, s)| s.category.to_string()).collect::<Vec<_>>())
                .bind(chunk.iter().map(|(_, s)| s.x).collect::<Vec<_>>())
                .bind(chunk.iter().map(|(_, s)| s.y).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
            }
            for a in &venue.ga_areas {
                sqlx::query(
                    "INSERT INTO ga_inventory (event_id, area_id, name, category, capacity) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(e.id.as_str())
                .bind(a.id.as_str())
                .bind(&a.name)
                .bind(a.category.as_str())
                .bind(a.capacity as i32)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            anyhow::Ok(())
        }
        .await
        .map_err(classify)
    }

    async fn event(&self, id: &EventId) -> StoreResult<Option<Event>> {
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.as_ref().map(event_from_row).transpose().map_err(err)
    }

    async fn update_event(&self, e: &Event) -> StoreResult<()> {
        let n = sqlx::query(
            "UPDATE events SET title = $2, prices = $3, max_tickets_per_customer = $4, hold_ttl_seconds = $5, \
             waiting_room = $6, high_demand = $7, cancelled = $8, updated_at = $9, version = $10 \
             WHERE id = $1 AND version = $10 - 1",
        )
        .bind(e.id.as_str())
        .bind(&e.title)
        .bind(encode_prices(&e.prices))
        .bind(e.max_tickets_per_customer as i32)
        .bind(e.hold_ttl_seconds as i32)
        .bind(encode_waiting_room(&e.waiting_room))
        .bind(e.high_demand)
        .bind(e.cancelled)
        .bind(e.updated_at.as_millis())
        .bind(e.version)
        .execute(&self.pool)
        .await
        .map_err(err)?
        .rows_affected();
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn search_events(&self, q: &EventQuery) -> StoreResult<Vec<Event>> {
        let like = q.like_pattern();
        let (after_ts, after_id) = q.after_binds();
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events \
             WHERE NOT cancelled \
               AND ($1::text IS NULL OR lower(city) = lower($1)) \
               AND ($2::text IS NULL OR title ILIKE $2 ESCAPE '\\') \
               AND ($3::text IS NULL OR category = $3) \
               AND ($4::bigint IS NULL OR starts_at >= $4) \
               AND ($5::bigint IS NULL OR starts_at < $5) \
               AND ($6::bigint IS NULL OR (starts_at, id) > ($6, $7::text)) \
             ORDER BY starts_at, id LIMIT $8"
        ))
        .bind(q.city.as_deref())
        .bind(like)
        .bind(q.category.as_ref().map(Category::as_str))
        .bind(q.from.map(Timestamp::as_millis))
        .bind(q.to.map(Timestamp::as_millis))
        .bind(after_ts)
        .bind(after_id)
        .bind(i64::from(q.limit))
        .fetch_all(self.replica())
        .await
        .map_err(err)?;
        rows.iter().map(event_from_row).collect::<anyhow::Result<_>>().map_err(err)
    }

    async fn availability(&self, id: &EventId, now: Timestamp) -> StoreResult<Option<Availability>> {
        async {
            if !event_exists(&self.pool, id.as_str()).await? {
                return Ok(None);
            }
            let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
                "SELECT category, COUNT(*), \
                        COUNT(*) FILTER (WHERE status = 'sold'), \
                        COUNT(*) FILTER (WHERE status = 'checkout' OR (status = 'held' AND hold_expires_at > $2)) \
                 FROM seats WHERE event_id = $1 GROUP BY category",
            )
            .bind(id.as_str())
            .bind(now.as_millis())
            .fetch_all(&self.pool)
            .await?;
            let seats = rows
                .into_iter()
                .map(|(cat, total, sold, held)| (Category::from_trusted(cat), total as u64, sold as u64, held as u64));
            Ok(Some(tally(seats, &ga_states(&self.pool, id.as_str(), now).await?)))
        }
        .await
        .map_err(classify)
    }

    async fn seat_map_state(&self, id: &EventId, now: Timestamp) -> StoreResult<Option<SeatMapState>> {
        async {
            if !event_exists(&self.pool, id.as_str()).await? {
                return Ok(None);
            }
            let rows: Vec<(String, String, i32)> = sqlx::query_as(
                "SELECT seat_id, category, \
                    CASE WHEN status = 'sold' THEN 2 \
                         WHEN status = 'checkout' OR (status = 'held' AND hold_expires_at > $2) THEN 1 \
                         ELSE 0 END \
                 FROM seats WHERE event_id = $1 ORDER BY section, y, x",
            )
            .bind(id.as_str())
            .bind(now.as_millis())
            .fetch_all(&self.pool)
            .await?;
            let seats = rows
                .into_iter()
                .map(|(s, c, st)| SeatState {
                    id: SeatId::from_trusted(s),
                    category: Category::from_trusted(c),
                    status: SeatStatus::from_code(i64::from(st)),
                })
                .collect();
            let ga_areas = ga_states(&self.pool, id.as_str(), now).await?.into_iter().map(|a| a.state).collect();
            Ok(Some(SeatMapState { seats, ga_areas }))
        }
        .await
        .map_err(classify)
    }

    async fn place_hold(&self, p: HoldPlacement) -> StoreResult<Result<Placed, HoldRejection>> {
        if matches!(p.selection, Selection::Seats(_)) {
            return Ok(self.batcher.place(p).await?.map(Placed::alone));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match try_place_hold(&self.pool, &p).await {
                Err(e) if retryable(&e) && attempt < HOLD_ATTEMPTS => {
                    metrics::counter!("boxoffice_postgres_hold_retries_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(rand::random_range(1..=5u64) * u64::from(attempt))).await;
                }
                // A pick that kept losing its seats: report no block free
                // rather than an error; the fan can simply try again.
                Err(e) if e.downcast_ref::<Retry>().is_some() => return Ok(Err(HoldRejection::Unavailable(vec![]))),
                other => return other.map_err(classify),
            }
        }
    }

    async fn hold(&self, id: &HoldId) -> StoreResult<Option<Hold>> {
        let row = sqlx::query(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)?;
        row.as_ref().map(hold_from_row).transpose().map_err(err)
    }

    async fn customer_holds(&self, customer: &Customer, now: Timestamp, limit: u32) -> StoreResult<Vec<Hold>> {
        let rows = sqlx::query(&format!(
            // Through holds_live_by_buyer: a customer's holds carry their email.
            "SELECT {HOLD_COLUMNS} FROM holds WHERE buyer = $4 AND customer_id = $1 \
               AND status IN ('held', 'checkout') AND (status = 'checkout' OR expires_at > $2) \
             ORDER BY created_at DESC LIMIT $3"
        ))
        .bind(customer.id.as_str())
        .bind(now.as_millis())
        .bind(i64::from(limit))
        .bind(customer.email.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        rows.iter().map(hold_from_row).collect::<anyhow::Result<_>>().map_err(err)
    }

    async fn release_hold(&self, id: &HoldId, customer: &CustomerId, now: Timestamp) -> StoreResult<ReleaseOutcome> {
        async {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = $1 FOR UPDATE"))
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(hold) = row.as_ref().map(hold_from_row).transpose()?.filter(|h| &h.customer_id == customer) else {
                return Ok(ReleaseOutcome::NotFound);
            };
            let outcome = match hold.effective_status(now) {
                HoldStatus::Checkout => ReleaseOutcome::InCheckout(hold),
                HoldStatus::Purchased => ReleaseOutcome::Purchased(hold),
                HoldStatus::Released => ReleaseOutcome::AlreadyEnded(hold),
                // Stored as `expired`: the sweeper or a lazy GA reclaim
                // already gave its inventory back.
                HoldStatus::Expired if hold.status == HoldStatus::Expired => ReleaseOutcome::AlreadyEnded(hold),
                status @ (HoldStatus::Held | HoldStatus::Expired) => {
                    let new = if status == HoldStatus::Held { "released" } else { "expired" };
                    // Gate: only the transaction that moves the hold out of
                    // `held` gives its inventory back.
                    let moved = sqlx::query(
                        "UPDATE holds SET status = $2, version = version + 1 WHERE id = $1 AND status = 'held'",
                    )
                    .bind(id.as_str())
                    .bind(new)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    let freed = if moved == 1 {
                        release_inventory(&mut tx, std::slice::from_ref(&hold)).await?.pop().unwrap_or_default()
                    } else {
                        vec![]
                    };
                    let ended =
                        Hold { status: HoldStatus::parse(new).unwrap_or(status), version: hold.version + 1, ..hold };
                    match (status, moved) {
                        (HoldStatus::Held, 1) => ReleaseOutcome::Released(ended),
                        (_, 1) => ReleaseOutcome::Lapsed { hold: ended, freed },
                        _ => ReleaseOutcome::AlreadyEnded(ended),
                    }
                }
            };
            tx.commit().await?;
            Ok(outcome)
        }
        .await
        .map_err(classify)
    }

    async fn expire_holds(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<ExpiredHold>> {
        async {
            let mut tx = self.pool.begin().await?;
            // SKIP LOCKED: sweepers on several nodes split the work.
            let rows = sqlx::query(&format!(
                "WITH due AS (SELECT id FROM holds WHERE status = 'held' AND expires_at <= $1 \
                              ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE holds h SET status = 'expired', version = h.version + 1 FROM due \
                 WHERE h.id = due.id AND h.status = 'held' RETURNING {}, h.buyer",
                HOLD_COLUMNS.split(", ").map(|c| format!("h.{c}")).collect::<Vec<_>>().join(", ")
            ))
            .bind(now.as_millis())
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            let out = expire(&mut tx, rows).await?;
            tx.commit().await?;
            Ok(out)
        }
        .await
        .map_err(classify)
    }

    async fn start_checkout(&self, s: CheckoutStart) -> StoreResult<Result<CheckoutStarted, CheckoutRefusal>> {
        checkout::start_checkout(&self.pool, &s).await.map_err(classify)
    }

    async fn settle(&self, s: Settlement) -> StoreResult<Settled> {
        checkout::settle(&self.pool, &s).await.map_err(classify)
    }

    async fn order(&self, id: &OrderId) -> StoreResult<Option<Order>> {
        checkout::order_where(&self.pool, "id", id.as_str()).await.map_err(classify)
    }

    async fn order_for_hold(&self, hold: &HoldId) -> StoreResult<Option<Order>> {
        checkout::order_where(&self.pool, "hold_id", hold.as_str()).await.map_err(classify)
    }

    async fn customer_orders(&self, customer: &CustomerId, limit: u32) -> StoreResult<Vec<Order>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM orders WHERE customer_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
            checkout::ORDER_COLUMNS
        ))
        .bind(customer.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        rows.iter().map(checkout::order_from_row).collect::<anyhow::Result<_>>().map_err(err)
    }

    async fn order_attempts(&self, order: &OrderId) -> StoreResult<Vec<Attempt>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM payment_attempts WHERE order_id = $1 ORDER BY created_at, id",
            checkout::ATTEMPT_COLUMNS
        ))
        .bind(order.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        rows.iter().map(checkout::attempt_from_row).collect::<anyhow::Result<_>>().map_err(err)
    }

    async fn order_tickets(&self, order: &OrderId) -> StoreResult<Vec<Ticket>> {
        let rows =
            sqlx::query(&format!("SELECT {} FROM tickets WHERE order_id = $1 ORDER BY id", checkout::TICKET_COLUMNS))
                .bind(order.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(err)?;
        rows.iter().map(checkout::ticket_from_row).collect::<anyhow::Result<_>>().map_err(err)
    }

    async fn ticket(&self, id: &TicketId) -> StoreResult<Option<Ticket>> {
        checkout::ticket(&self.pool, id.as_str()).await.map_err(classify)
    }

    async fn check_in(&self, id: &TicketId, now: Timestamp) -> StoreResult<CheckIn> {
        checkout::check_in(&self.pool, id.as_str(), now).await.map_err(classify)
    }

    async fn claim_idempotency_key(
        &self,
        customer: &CustomerId,
        key: &str,
        request_hash: [u8; 32],
        now: Timestamp,
        lease: Duration,
    ) -> StoreResult<KeyClaim> {
        let lease_ms = lease.as_millis().min(i64::MAX as u128) as i64;
        checkout::claim_key(&self.pool, customer.as_str(), key, &request_hash, now, lease_ms).await.map_err(classify)
    }

    async fn stored_response(
        &self,
        customer: &CustomerId,
        key: &str,
        request_hash: [u8; 32],
    ) -> StoreResult<Option<(u16, Vec<u8>)>> {
        let row: Option<(Vec<u8>, Option<i32>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE customer_id = $1 AND key = $2",
        )
        .bind(customer.as_str())
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        Ok(match row {
            Some((hash, Some(status), body)) if hash == request_hash => Some((status as u16, body.unwrap_or_default())),
            _ => None,
        })
    }

    async fn finish_idempotency_key(
        &self,
        customer: &CustomerId,
        key: &str,
        status: u16,
        body: Vec<u8>,
    ) -> StoreResult<()> {
        checkout::finish_key(&self.pool, customer.as_str(), key, status, &body).await.map_err(classify)
    }

    async fn abandon_idempotency_key(&self, customer: &CustomerId, key: &str) -> StoreResult<()> {
        checkout::abandon_key(&self.pool, customer.as_str(), key).await.map_err(classify)
    }

    async fn reap_idempotency_keys(&self, created_before: Timestamp, limit: u32) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (customer_id, key) IN \
             (SELECT customer_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(created_before.as_millis())
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(done.rows_affected())
    }

    async fn unsettled_orders(&self, limit: u32) -> StoreResult<Vec<Order>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM orders WHERE status IN ('pending', 'requires_action', 'payment_pending') \
             ORDER BY updated_at LIMIT $1",
            checkout::ORDER_COLUMNS
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        rows.iter().map(checkout::order_from_row).collect::<anyhow::Result<_>>().map_err(err)
    }

    async fn orders_confirmed_between(&self, from: Timestamp, to: Timestamp, limit: u32) -> StoreResult<Vec<Order>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM orders WHERE status = 'confirmed' AND updated_at >= $1 AND updated_at < $2 \
             ORDER BY updated_at, id LIMIT $3",
            checkout::ORDER_COLUMNS
        ))
        .bind(from.as_millis())
        .bind(to.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        rows.iter().map(checkout::order_from_row).collect::<anyhow::Result<_>>().map_err(err)
    }

    async fn orphaned_attempts(&self, limit: u32) -> StoreResult<Vec<Attempt>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM payment_attempts a \
             WHERE a.status IN ('started', 'requires_action', 'processing') \
               AND EXISTS (SELECT 1 FROM orders o WHERE o.id = a.order_id \
                           AND o.status NOT IN ('pending', 'requires_action', 'payment_pending')) \
             ORDER BY a.updated_at LIMIT $1",
            checkout::ATTEMPT_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ")
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        rows.iter().map(checkout::attempt_from_row).collect::<anyhow::Result<_>>().map_err(err)
    }

    async fn close_attempt(
        &self,
        attempt: &AttemptId,
        status: AttemptStatus,
        intent_id: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        checkout::close_attempt(&self.pool, attempt.as_str(), status, intent_id, now).await.map_err(classify)
    }

    async fn alert_once(&self, dedup_key: &str, message: OutboxMessage, now: Timestamp) -> StoreResult<bool> {
        checkout::alert_once(&self.pool, dedup_key, &message, now).await.map_err(classify)
    }

    async fn refund_order(&self, order: &OrderId, outbox: OutboxMessage, now: Timestamp) -> StoreResult<Refunded> {
        checkout::refund_order(&self.pool, order.as_str(), &outbox, now).await.map_err(classify)
    }

    async fn outbox_due(&self, now: Timestamp, limit: u32) -> StoreResult<Vec<OutboxRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2",
            checkout::OUTBOX_COLUMNS
        ))
        .bind(now.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        rows.iter().map(checkout::outbox_from_row).collect::<anyhow::Result<_>>().map_err(err)
    }

    async fn claim_outbox(&self, now: Timestamp, lease: Duration, limit: u32) -> StoreResult<Vec<OutboxRow>> {
        // SKIP LOCKED: relays on several nodes split the rows.
        let rows = sqlx::query(&format!(
            "UPDATE outbox SET next_attempt_at = $2, attempts = attempts + 1 WHERE id IN \
             (SELECT id FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
              ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING {}",
            checkout::OUTBOX_COLUMNS
        ))
        .bind(now.as_millis())
        .bind(now.plus(lease).as_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let mut rows: Vec<OutboxRow> =
            rows.iter().map(checkout::outbox_from_row).collect::<anyhow::Result<_>>().map_err(err)?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    async fn outbox_progress(&self, id: i64, attempts: u32, p: OutboxProgress, now: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE outbox SET done_channels = $3, delivered_at = CASE WHEN $4 THEN $5 END, \
                 next_attempt_at = $6, last_error = $7 \
             WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL",
        )
        .bind(id)
        .bind(attempts as i32)
        .bind(&p.done_channels)
        .bind(p.delivered)
        .bind(now.as_millis())
        .bind(p.next_attempt_at.as_millis())
        .bind(&p.last_error)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn customer_email(&self, id: &CustomerId) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT email FROM customers WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(err)
    }

    async fn audit_query(&self, sql: &'static str, params: Vec<i64>) -> StoreResult<Vec<Vec<Option<String>>>> {
        let mut q = sqlx::query(sql);
        for p in params {
            q = q.bind(p);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(err)?;
        rows.iter()
            .map(|r| (0..r.len()).map(|i| r.try_get::<Option<String>, _>(i)).collect::<Result<Vec<_>, _>>())
            .collect::<Result<_, _>>()
            .map_err(err)
    }

    async fn put_setting(&self, name: &str, value: Vec<u8>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(&value)
        .execute(&self.pool)
        .await
        .map_err(err)?;
        Ok(())
    }

    async fn ensure_setting(&self, name: &str, value: Vec<u8>) -> StoreResult<Vec<u8>> {
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(&value)
            .execute(&self.pool)
            .await
            .map_err(err)?;
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(err)
    }
}
