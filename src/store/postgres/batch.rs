//! Group commit for explicit-seat holds on PostgreSQL.
//!
//! One hold in its own transaction costs about seven round trips; most of a
//! hold's latency and the database's work is per transaction, not per seat.
//! So holds for explicit seats are queued, and a few worker tasks each take
//! whatever is waiting (up to [`MAX_BATCH`]) and settle it in **one**
//! transaction of four statements and five round trips, whatever the batch
//! size:
//!
//! 1. the events of the batch, with the purchase-limit advisory lock of
//!    every (buyer, event), taken in key order;
//! 2. in one snapshot taken after those locks: what each buyer already
//!    holds, and every requested seat row, locked `FOR UPDATE` in
//!    (event, seat) order;
//! 3. decisions in arrival order, in Rust, on those locked rows: the limit
//!    counted in turn, then all of a job's seats or none, and a seat to the
//!    first job that asked for it;
//! 4. one statement that updates the winners' seats (still conditional on
//!    their being free) and inserts the winners' holds, whose row counts are
//!    checked;
//! 5. COMMIT — and only then does any caller get an answer.
//!
//! The row locks of step 2 are what make step 3's decisions safe: no other
//! transaction can change those seats until this one ends. Locks are taken
//! in one global order (advisory keys sorted, then rows sorted), as the
//! single-hold path does, so batches cannot deadlock each other; if
//! PostgreSQL still reports a deadlock or serialization failure, the whole
//! batch, which wrote nothing, is run again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};

use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{classify, event_from_row, retryable, EVENT_COLUMNS, HOLD_ATTEMPTS};
use crate::domain::event::Event;
use crate::domain::hold::{check_purchase_limit, Hold, Selection};
use crate::domain::ids::{Category, SeatId};
use crate::store::codec::encode_seats;
use crate::store::{priced_hold, HoldPlacement, HoldRejection, StoreError, StoreResult};

/// The most holds one transaction settles.
const MAX_BATCH: usize = 256;
/// Batches in flight at once (each on its own pooled connection).
const WORKERS: usize = 4;
/// Holds waiting beyond this make callers wait to enqueue (backpressure).
const QUEUE_DEPTH: usize = 4096;

type Outcome = StoreResult<Result<Hold, HoldRejection>>;

struct Job {
    placement: HoldPlacement,
    reply: oneshot::Sender<Outcome>,
}

/// The queue in front of the batch workers. Dropping it stops them once
/// the queue is drained.
pub(super) struct HoldBatcher {
    tx: mpsc::Sender<Job>,
}

impl HoldBatcher {
    pub(super) fn spawn(pool: PgPool) -> HoldBatcher {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WORKERS {
            tokio::spawn(work(pool.clone(), rx.clone()));
        }
        HoldBatcher { tx }
    }

    /// Places one explicit-seat hold as part of the next batch; answers
    /// once that batch's transaction has committed (or failed).
    pub(super) async fn place(&self, placement: HoldPlacement) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable(anyhow!("the hold batcher has stopped"));
        self.tx.send(Job { placement, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn work(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        metrics::histogram!("boxoffice_postgres_hold_batch_jobs").record(batch.len() as f64);
        let placements: Vec<&HoldPlacement> = batch.iter().map(|j| &j.placement).collect();
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match settle(&pool, &placements).await {
                Err(e) if retryable(&e) && attempt < HOLD_ATTEMPTS => {
                    metrics::counter!("boxoffice_postgres_hold_retries_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(rand::random_range(1..=5u64) * u64::from(attempt))).await;
                }
                other => break other,
            }
        };
        match outcome {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(e) => {
                let e = classify(e);
                // Before COMMIT nothing was written; a failure of the COMMIT
                // itself leaves it unknown, and any hold it did write lapses
                // at its expiry like one whose caller went away.
                tracing::warn!(error = %e, jobs = batch.len(), "a hold batch failed; its callers get the error");
                for job in batch {
                    let _ = job.reply.send(Err(e.replicate()));
                }
            }
        }
    }
}

/// A requested seat as locked in step 2.
struct LockedSeat {
    category: Category,
    free: bool,
}

/// Runs one batch in one transaction; `Ok` means it committed and holds the
/// answer for each placement, in order.
async fn settle(pool: &PgPool, batch: &[&HoldPlacement]) -> anyhow::Result<Vec<Result<Hold, HoldRejection>>> {
    let mut answers: Vec<Option<Result<Hold, HoldRejection>>> = batch.iter().map(|_| None).collect();
    // The batch's earliest "now" decides what has lapsed: a hold that lapsed
    // for a later caller but not the earliest still counts, and its seats
    // are not yet free. Both err on the strict side.
    let Some(now) = batch.iter().map(|p| p.now).min() else { return Ok(vec![]) };
    let mut tx = pool.begin().await?;

    // 1. The events, and the purchase-limit lock of every (buyer, event) in
    //    key order (an init plan: it runs once, before any row is returned).
    let event_ids: Vec<&str> = distinct(batch.iter().map(|p| p.event_id.as_str()));
    let keys: Vec<String> = distinct(batch.iter().map(|p| limit_key(p)));
    let events: HashMap<String, Event> = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE id = ANY($1) \
           AND (SELECT count(pg_advisory_xact_lock(k)) FROM \
                (SELECT DISTINCT hashtextextended(key, 0) AS k FROM unnest($2::text[]) AS key ORDER BY k) l) >= 0"
    ))
    .bind(&event_ids)
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| event_from_row(r).map(|e| (e.id.to_string(), e)))
    .collect::<anyhow::Result<_>>()?;
    for (i, p) in batch.iter().enumerate() {
        match events.get(p.event_id.as_str()) {
            None => answers[i] = Some(Err(HoldRejection::EventNotFound)),
            Some(e) => {
                if let Err(n) = e.check_on_sale(p.now) {
                    answers[i] = Some(Err(HoldRejection::NotOnSale(n.0)));
                }
            }
        }
    }
    let open: Vec<usize> = (0..batch.len()).filter(|&i| answers[i].is_none()).collect();
    if open.is_empty() {
        tx.rollback().await?;
        return Ok(answers.into_iter().flatten().collect());
    }

    // 2. In one statement (so one snapshot, taken after the limit locks):
    //    what each buyer already holds, and every requested seat row, locked
    //    in (event, seat) order.
    let (buyers, buyer_events): (Vec<&str>, Vec<&str>) =
        distinct(open.iter().map(|&i| (batch[i].customer.email.as_str(), batch[i].event_id.as_str())))
            .into_iter()
            .unzip();
    let (seat_events, seat_ids): (Vec<&str>, Vec<&str>) = distinct(
        open.iter().flat_map(|&i| seats_of(batch[i]).iter().map(move |s| (batch[i].event_id.as_str(), s.as_str()))),
    )
    .into_iter()
    .unzip();
    let mut already: HashMap<(String, String), u32> = HashMap::new();
    let mut locked: HashMap<(String, String), LockedSeat> = HashMap::new();
    for r in sqlx::query(
        "WITH locked AS MATERIALIZED ( \
             SELECT event_id, seat_id, category, \
                    (status = 'available' OR (status = 'held' AND hold_expires_at <= $5)) AS free \
             FROM seats WHERE (event_id, seat_id) IN (SELECT * FROM unnest($3::text[], $4::text[])) \
             ORDER BY event_id, seat_id FOR UPDATE) \
         SELECT event_id AS a, seat_id AS b, category, free, NULL::bigint AS n FROM locked \
         UNION ALL \
         SELECT k.buyer, k.event_id, NULL, NULL, \
                (SELECT COALESCE(SUM(h.quantity), 0) FROM holds h \
                 WHERE h.buyer = k.buyer AND h.event_id = k.event_id AND h.status IN ('held', 'checkout') \
                   AND (h.status = 'checkout' OR h.expires_at > $5))::bigint \
         FROM unnest($1::text[], $2::text[]) AS k(buyer, event_id)",
    )
    .bind(&buyers)
    .bind(&buyer_events)
    .bind(&seat_events)
    .bind(&seat_ids)
    .bind(now.as_millis())
    .fetch_all(&mut *tx)
    .await?
    {
        let key = (r.try_get("a")?, r.try_get("b")?);
        match r.try_get::<Option<i64>, _>("n")? {
            Some(n) => {
                already.insert(key, u32::try_from(n).unwrap_or(u32::MAX));
            }
            None => {
                let seat =
                    LockedSeat { category: Category::from_trusted(r.try_get("category")?), free: r.try_get("free")? };
                locked.insert(key, seat);
            }
        }
    }

    // 3. Decide, in arrival order: the limit counted in turn per buyer, then
    //    all of a placement's seats or none, each seat to the first asker.
    let mut claimed: HashSet<(String, String)> = HashSet::new();
    let mut winners: Vec<(usize, Hold)> = Vec::new();
    for &i in &open {
        let p = batch[i];
        let event = &events[p.event_id.as_str()];
        let counted = already.entry((p.customer.email.as_str().to_owned(), p.event_id.to_string())).or_insert(0);
        let requested = p.selection.quantity();
        if let Err(e) = check_purchase_limit(*counted, requested, event.max_tickets_per_customer) {
            answers[i] = Some(Err(HoldRejection::LimitExceeded(e)));
            continue;
        }
        let key = |s: &SeatId| (p.event_id.to_string(), s.to_string());
        let seats = seats_of(p);
        let unknown: Vec<String> =
            seats.iter().filter(|s| !locked.contains_key(&key(s))).map(|s| s.to_string()).collect();
        if !unknown.is_empty() {
            answers[i] = Some(Err(HoldRejection::InvalidSeats(unknown)));
            continue;
        }
        let taken: Vec<String> = seats
            .iter()
            .filter(|s| !locked[&key(s)].free || claimed.contains(&key(s)))
            .map(|s| s.to_string())
            .collect();
        if !taken.is_empty() {
            answers[i] = Some(Err(HoldRejection::Unavailable(taken)));
            continue;
        }
        let categories: Vec<Category> = seats.iter().map(|s| locked[&key(s)].category.clone()).collect();
        winners.push((i, priced_hold(p, event, seats.to_vec(), None, &categories)?));
        *counted += requested;
        claimed.extend(seats.iter().map(key));
    }

    // 4. The winners' seats, still conditional on being free, and their
    //    holds, in one statement whose counts are checked.
    if !winners.is_empty() {
        let (mut u, mut h) = (SeatUpdate::default(), HoldInsert::default());
        for (i, hold) in &winners {
            for s in &hold.seats {
                u.event_ids.push(hold.event_id.as_str());
                u.seat_ids.push(s.as_str());
                u.hold_ids.push(hold.id.as_str());
                u.expires.push(hold.expires_at.as_millis());
            }
            h.ids.push(hold.id.as_str());
            h.event_ids.push(hold.event_id.as_str());
            h.customer_ids.push(hold.customer_id.as_str());
            h.buyers.push(batch[*i].customer.email.as_str());
            h.seats.push(encode_seats(&hold.seats));
            h.quantities.push(hold.quantity() as i32);
            h.amounts.push(hold.amount);
            h.currencies.push(hold.currency.as_str());
            h.created.push(hold.created_at.as_millis());
            h.expires.push(hold.expires_at.as_millis());
        }
        let row = sqlx::query(
            "WITH taken AS ( \
                 UPDATE seats s SET status = 'held', hold_id = u.hold_id, hold_expires_at = u.expires_at, \
                                    version = s.version + 1 \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) \
                      AS u(event_id, seat_id, hold_id, expires_at) \
                 WHERE s.event_id = u.event_id AND s.seat_id = u.seat_id \
                   AND (s.status = 'available' OR (s.status = 'held' AND s.hold_expires_at <= $5)) \
                 RETURNING 1), \
             added AS ( \
                 INSERT INTO holds (id, event_id, customer_id, buyer, status, seats, ga_area, ga_count, quantity, \
                                    amount, currency, created_at, expires_at, version) \
                 SELECT id, event_id, customer_id, buyer, 'held', seats, NULL, 0, quantity, amount, currency, \
                        created_at, expires_at, 1 \
                 FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int[], \
                             $12::bigint[], $13::text[], $14::bigint[], $15::bigint[]) \
                      AS h(id, event_id, customer_id, buyer, seats, quantity, amount, currency, created_at, \
                           expires_at) \
                 RETURNING 1) \
             SELECT (SELECT count(*) FROM taken) AS seats, (SELECT count(*) FROM added) AS holds",
        )
        .bind(&u.event_ids)
        .bind(&u.seat_ids)
        .bind(&u.hold_ids)
        .bind(&u.expires)
        .bind(now.as_millis())
        .bind(&h.ids)
        .bind(&h.event_ids)
        .bind(&h.customer_ids)
        .bind(&h.buyers)
        .bind(&h.seats)
        .bind(&h.quantities)
        .bind(&h.amounts)
        .bind(&h.currencies)
        .bind(&h.created)
        .bind(&h.expires)
        .fetch_one(&mut *tx)
        .await?;
        let (seats, holds): (i64, i64) = (row.try_get("seats")?, row.try_get("holds")?);
        if seats != u.seat_ids.len() as i64 || holds != h.ids.len() as i64 {
            // The rows are locked by this transaction, so this cannot happen
            // unless the decisions above are wrong: write nothing.
            bail!("hold batch wrote {seats} seats and {holds} holds, decided {} and {}", u.seat_ids.len(), h.ids.len());
        }
    }

    // 5. Commit, then answer.
    tx.commit().await?;
    for (i, hold) in winners {
        answers[i] = Some(Ok(hold));
    }
    answers.into_iter().map(|a| a.ok_or_else(|| anyhow!("hold batch left a placement undecided"))).collect()
}

#[derive(Default)]
struct SeatUpdate<'a> {
    event_ids: Vec<&'a str>,
    seat_ids: Vec<&'a str>,
    hold_ids: Vec<&'a str>,
    expires: Vec<i64>,
}

#[derive(Default)]
struct HoldInsert<'a> {
    ids: Vec<&'a str>,
    event_ids: Vec<&'a str>,
    customer_ids: Vec<&'a str>,
    buyers: Vec<&'a str>,
    seats: Vec<String>,
    quantities: Vec<i32>,
    amounts: Vec<i64>,
    currencies: Vec<&'a str>,
    created: Vec<i64>,
    expires: Vec<i64>,
}

/// The purchase-limit lock key of a placement; the single-hold path locks
/// the same key.
pub(super) fn limit_key(p: &HoldPlacement) -> String {
    format!("limit|{}|{}", p.customer.email.as_str(), p.event_id)
}

fn seats_of(p: &HoldPlacement) -> &[SeatId] {
    match &p.selection {
        Selection::Seats(s) => s,
        // Only explicit-seat holds are batched (see `PgStore::place_hold`).
        _ => &[],
    }
}

/// The distinct values, sorted.
fn distinct<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    items.collect::<BTreeSet<T>>().into_iter().collect()
}
