//! Checkout on PostgreSQL. Each change runs in its own transaction at READ
//! COMMITTED with the hold's row locked first (`FOR UPDATE`), so the
//! checkout flow, reconciliation and a release on other nodes act on a
//! hold one at a time; the seat rows are then locked in seat-id order, as
//! every other multi-seat path does.

use anyhow::{anyhow, bail};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::{hold_from_row, ids, lock_in_order, Tx, HOLD_COLUMNS};
use crate::domain::hold::{Hold, HoldStatus};
use crate::domain::ids::{AreaId, AttemptId, CustomerId, EventId, HoldId, OrderId, SeatId, TicketId};
use crate::domain::money::Currency;
use crate::domain::order::{HoldFate, OrderStatus};
use crate::domain::time::Timestamp;
use crate::store::checkout::{
    Attempt, AttemptStatus, CheckIn, CheckoutRefusal, CheckoutStart, CheckoutStarted, KeyClaim, Order, OutboxMessage,
    OutboxRow, Refunded, Settled, Settlement, Ticket, TicketStatus,
};

pub(super) const ORDER_COLUMNS: &str = "id, hold_id, event_id, customer_id, status, amount, currency, quantity, \
     failure_code, action_url, payment_intent, created_at, updated_at, version";

fn currency(s: String) -> anyhow::Result<Currency> {
    Currency::parse(&s).ok_or_else(|| anyhow!("bad stored currency {s:?}"))
}

pub(super) fn order_from_row(r: &PgRow) -> anyhow::Result<Order> {
    let status: String = r.try_get("status")?;
    Ok(Order {
        id: OrderId::from_trusted(r.try_get("id")?),
        hold_id: HoldId::from_trusted(r.try_get("hold_id")?),
        event_id: EventId::from_trusted(r.try_get("event_id")?),
        customer_id: CustomerId::from_trusted(r.try_get("customer_id")?),
        status: OrderStatus::parse(&status).ok_or_else(|| anyhow!("bad stored order status {status:?}"))?,
        amount: r.try_get("amount")?,
        currency: currency(r.try_get("currency")?)?,
        quantity: r.try_get::<i32, _>("quantity")? as u32,
        failure_code: r.try_get("failure_code")?,
        action_url: r.try_get("action_url")?,
        payment_intent: r.try_get("payment_intent")?,
        created_at: Timestamp::from_millis(r.try_get("created_at")?),
        updated_at: Timestamp::from_millis(r.try_get("updated_at")?),
        version: r.try_get("version")?,
    })
}

pub(super) const ATTEMPT_COLUMNS: &str =
    "id, order_id, payment_method, amount, currency, status, intent_id, failure_code, created_at";

pub(super) fn attempt_from_row(r: &PgRow) -> anyhow::Result<Attempt> {
    let status: String = r.try_get("status")?;
    Ok(Attempt {
        id: AttemptId::from_trusted(r.try_get("id")?),
        order_id: OrderId::from_trusted(r.try_get("order_id")?),
        payment_method: r.try_get("payment_method")?,
        amount: r.try_get("amount")?,
        currency: currency(r.try_get("currency")?)?,
        status: AttemptStatus::parse(&status).ok_or_else(|| anyhow!("bad stored attempt status {status:?}"))?,
        intent_id: r.try_get("intent_id")?,
        failure_code: r.try_get("failure_code")?,
        created_at: Timestamp::from_millis(r.try_get("created_at")?),
    })
}

pub(super) const TICKET_COLUMNS: &str = "id, order_id, event_id, customer_id, seat_id, ga_area, code, status, used_at";

pub(super) fn ticket_from_row(r: &PgRow) -> anyhow::Result<Ticket> {
    let status: String = r.try_get("status")?;
    Ok(Ticket {
        id: TicketId::from_trusted(r.try_get("id")?),
        order_id: OrderId::from_trusted(r.try_get("order_id")?),
        event_id: EventId::from_trusted(r.try_get("event_id")?),
        customer_id: CustomerId::from_trusted(r.try_get("customer_id")?),
        seat: r.try_get::<Option<String>, _>("seat_id")?.map(SeatId::from_trusted),
        ga_area: r.try_get::<Option<String>, _>("ga_area")?.map(AreaId::from_trusted),
        code: r.try_get("code")?,
        status: TicketStatus::parse(&status).ok_or_else(|| anyhow!("bad stored ticket status {status:?}"))?,
        used_at: r.try_get::<Option<i64>, _>("used_at")?.map(Timestamp::from_millis),
    })
}

/// The order of `column` = `value`, read on `executor`.
pub(super) async fn order_where<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    column: &str,
    value: &str,
) -> anyhow::Result<Option<Order>> {
    let row = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE {column} = $1"))
        .bind(value)
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(order_from_row).transpose()
}

async fn lock_hold(tx: &mut Tx, id: &str) -> anyhow::Result<Option<Hold>> {
    let row = sqlx::query(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(hold_from_row).transpose()
}

fn quantity(hold: &Hold) -> i32 {
    (hold.seats.len() as u32 + hold.ga.as_ref().map_or(0, |g| g.count)) as i32
}

pub(super) async fn start_checkout(
    pool: &PgPool,
    s: &CheckoutStart,
) -> anyhow::Result<Result<CheckoutStarted, CheckoutRefusal>> {
    let mut tx = pool.begin().await?;
    let Some(hold) = lock_hold(&mut tx, s.hold_id.as_str()).await?.filter(|h| h.customer_id == s.customer_id) else {
        return Ok(Err(CheckoutRefusal::HoldNotFound));
    };
    match hold.effective_status(s.now) {
        HoldStatus::Held => {}
        HoldStatus::Expired => return Ok(Err(CheckoutRefusal::HoldExpired)),
        status => {
            let order = order_where(&mut *tx, "hold_id", hold.id.as_str()).await?.map(Box::new);
            return Ok(Err(CheckoutRefusal::HoldNotActive { status, order }));
        }
    }
    let now = s.now.as_millis();
    // The payment window is added once per hold, however many attempts.
    let (expires_at, version): (i64, i64) = sqlx::query_as(
        "UPDATE holds SET status = 'checkout', \
             expires_at = CASE WHEN extended THEN expires_at ELSE expires_at + $3 END, \
             extended = true, version = version + 1 \
         WHERE id = $1 AND status = 'held' AND expires_at > $2 RETURNING expires_at, version",
    )
    .bind(hold.id.as_str())
    .bind(now)
    .bind(i64::from(s.payment_window_secs) * 1000)
    .fetch_one(&mut *tx)
    .await?;
    let seats = ids(&hold.seats);
    lock_in_order(&mut tx, hold.event_id.as_str(), &seats).await?;
    let moved = sqlx::query(
        "UPDATE seats SET status = 'checkout', hold_expires_at = $4, version = version + 1 \
         WHERE event_id = $2 AND seat_id = ANY($3) AND hold_id = $1 AND status = 'held'",
    )
    .bind(hold.id.as_str())
    .bind(hold.event_id.as_str())
    .bind(&seats)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved as usize != hold.seats.len() {
        bail!("hold {} is live but holds {moved} of its {} seats", hold.id, hold.seats.len());
    }
    let row = sqlx::query(&format!(
        "INSERT INTO orders (id, hold_id, event_id, customer_id, status, amount, currency, quantity, \
                             created_at, updated_at, version) \
         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $8, 1) \
         ON CONFLICT (hold_id) DO UPDATE SET status = 'pending', failure_code = NULL, action_url = NULL, \
             updated_at = excluded.updated_at, version = orders.version + 1 \
         RETURNING {ORDER_COLUMNS}"
    ))
    .bind(s.order_id.as_str())
    .bind(hold.id.as_str())
    .bind(hold.event_id.as_str())
    .bind(hold.customer_id.as_str())
    .bind(hold.amount)
    .bind(hold.currency.as_str())
    .bind(quantity(&hold))
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let order = order_from_row(&row)?;
    let attempt = Attempt {
        id: s.attempt_id.clone(),
        order_id: order.id.clone(),
        payment_method: s.payment_method.clone(),
        amount: order.amount,
        currency: order.currency,
        status: AttemptStatus::Started,
        intent_id: None,
        failure_code: None,
        created_at: s.now,
    };
    sqlx::query(
        "INSERT INTO payment_attempts (id, order_id, payment_method, amount, currency, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'started', $6, $6)",
    )
    .bind(attempt.id.as_str())
    .bind(order.id.as_str())
    .bind(&attempt.payment_method)
    .bind(attempt.amount)
    .bind(attempt.currency.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let hold = Hold { status: HoldStatus::Checkout, expires_at: Timestamp::from_millis(expires_at), version, ..hold };
    Ok(Ok(CheckoutStarted { hold, order, attempt }))
}

pub(super) async fn settle(pool: &PgPool, s: &Settlement) -> anyhow::Result<Settled> {
    let mut tx = pool.begin().await?;
    // The hold's lock first (the order names it), as start_checkout takes it.
    let Some(hold_id) = order_where(&mut *tx, "id", s.order_id.as_str()).await?.map(|o| o.hold_id) else {
        return Ok(Settled::NotFound);
    };
    let hold =
        lock_hold(&mut tx, hold_id.as_str()).await?.ok_or_else(|| anyhow!("order {} has no hold", s.order_id))?;
    let order = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 FOR UPDATE"))
        .bind(s.order_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
    let order = order_from_row(&order)?;
    if !order.status.unsettled() {
        return Ok(Settled::AlreadySettled(order));
    }
    let now = s.now.as_millis();
    // Only a running attempt of this order can be settled, and only once.
    let attempt_moved = sqlx::query(
        "UPDATE payment_attempts SET status = $3, intent_id = COALESCE($4, intent_id), failure_code = $5, \
             updated_at = $6 \
         WHERE id = $1 AND order_id = $2 AND status IN ('started', 'requires_action', 'processing')",
    )
    .bind(s.attempt_id.as_str())
    .bind(order.id.as_str())
    .bind(s.attempt_status.as_str())
    .bind(&s.intent_id)
    .bind(&s.failure_code)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if attempt_moved != 1 {
        return Ok(Settled::AlreadySettled(order));
    }
    let in_checkout = hold.status == HoldStatus::Checkout;
    let seats = ids(&hold.seats);
    let (status, failure_code, lost) = match s.hold {
        HoldFate::Sell if !in_checkout => {
            // Paid for seats it no longer holds: the attempt stays open, so
            // reconciliation refunds it until the gateway confirms.
            sqlx::query("UPDATE payment_attempts SET status = 'processing' WHERE id = $1")
                .bind(s.attempt_id.as_str())
                .execute(&mut *tx)
                .await?;
            (OrderStatus::Failed, Some("hold_expired".to_owned()), true)
        }
        HoldFate::Sell => {
            lock_in_order(&mut tx, hold.event_id.as_str(), &seats).await?;
            let sold = sqlx::query(
                "UPDATE seats SET status = 'sold', order_id = $3, hold_expires_at = NULL, version = version + 1 \
                 WHERE event_id = $2 AND seat_id = ANY($4) AND hold_id = $1 AND status = 'checkout'",
            )
            .bind(hold.id.as_str())
            .bind(hold.event_id.as_str())
            .bind(order.id.as_str())
            .bind(&seats)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if sold as usize != hold.seats.len() {
                bail!("hold {} is in checkout but holds {sold} of its {} seats", hold.id, hold.seats.len());
            }
            if let Some(g) = &hold.ga {
                sqlx::query(
                    "UPDATE ga_inventory SET held = held - $3, sold = sold + $3 WHERE event_id = $1 AND area_id = $2",
                )
                .bind(hold.event_id.as_str())
                .bind(g.area.as_str())
                .bind(g.count as i32)
                .execute(&mut *tx)
                .await?;
            }
            set_hold_status(&mut tx, &hold, "purchased").await?;
            for t in &s.tickets {
                sqlx::query(
                    "INSERT INTO tickets (id, order_id, event_id, customer_id, seat_id, ga_area, code, status, \
                                          created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'valid', $8)",
                )
                .bind(t.id.as_str())
                .bind(order.id.as_str())
                .bind(order.event_id.as_str())
                .bind(order.customer_id.as_str())
                .bind(t.seat.as_ref().map(SeatId::as_str))
                .bind(t.ga_area.as_ref().map(AreaId::as_str))
                .bind(&t.code)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            (OrderStatus::Confirmed, None, false)
        }
        HoldFate::AwaitOutcome => {
            if !in_checkout {
                bail!("hold {} of unsettled order {} is {}", hold.id, order.id, hold.status.as_str());
            }
            (s.order_status, s.failure_code.clone(), false)
        }
        HoldFate::Keep | HoldFate::Release => {
            if in_checkout {
                lock_in_order(&mut tx, hold.event_id.as_str(), &seats).await?;
                if s.hold == HoldFate::Keep {
                    set_hold_status(&mut tx, &hold, "held").await?;
                    sqlx::query(
                        "UPDATE seats SET status = 'held', hold_expires_at = $3, version = version + 1 \
                         WHERE event_id = $2 AND seat_id = ANY($4) AND hold_id = $1 AND status = 'checkout'",
                    )
                    .bind(hold.id.as_str())
                    .bind(hold.event_id.as_str())
                    .bind(hold.expires_at.as_millis())
                    .bind(&seats)
                    .execute(&mut *tx)
                    .await?;
                } else {
                    set_hold_status(&mut tx, &hold, "released").await?;
                    sqlx::query(
                        "UPDATE seats SET status = 'available', hold_id = NULL, hold_expires_at = NULL, \
                             version = version + 1 \
                         WHERE event_id = $2 AND seat_id = ANY($3) AND hold_id = $1 AND status = 'checkout'",
                    )
                    .bind(hold.id.as_str())
                    .bind(hold.event_id.as_str())
                    .bind(&seats)
                    .execute(&mut *tx)
                    .await?;
                    if let Some(g) = &hold.ga {
                        sqlx::query("UPDATE ga_inventory SET held = held - $3 WHERE event_id = $1 AND area_id = $2")
                            .bind(hold.event_id.as_str())
                            .bind(g.area.as_str())
                            .bind(g.count as i32)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            (s.order_status, s.failure_code.clone(), false)
        }
    };
    let captured = (s.attempt_status == AttemptStatus::Succeeded).then(|| s.intent_id.clone()).flatten();
    let row = sqlx::query(&format!(
        "UPDATE orders SET status = $2, failure_code = $3, action_url = $4, \
             payment_intent = COALESCE($5, payment_intent), updated_at = $6, version = version + 1 \
         WHERE id = $1 RETURNING {ORDER_COLUMNS}"
    ))
    .bind(order.id.as_str())
    .bind(status.as_str())
    .bind(&failure_code)
    .bind(&s.action_url)
    .bind(&captured)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let order = order_from_row(&row)?;
    for m in &s.outbox {
        sqlx::query("INSERT INTO outbox (topic, payload, created_at, next_attempt_at) VALUES ($1, $2, $3, $3)")
            .bind(&m.topic)
            .bind(&m.payload)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(if lost { Settled::HoldLost(order) } else { Settled::Applied(order) })
}

async fn set_hold_status(tx: &mut Tx, hold: &Hold, status: &str) -> anyhow::Result<()> {
    let n = sqlx::query(
        "UPDATE holds SET status = $2, version = version + 1 WHERE id = $1 AND status = 'checkout' AND version = $3",
    )
    .bind(hold.id.as_str())
    .bind(status)
    .bind(hold.version)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if n != 1 {
        bail!("hold {} changed while its row was locked", hold.id);
    }
    Ok(())
}

pub(super) async fn claim_key(
    pool: &PgPool,
    customer: &str,
    key: &str,
    hash: &[u8; 32],
    now: Timestamp,
    lease_ms: i64,
) -> anyhow::Result<KeyClaim> {
    let now = now.as_millis();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (customer_id, key, request_hash, locked_until, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(customer)
    .bind(key)
    .bind(&hash[..])
    .bind(now + lease_ms)
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(KeyClaim::Claimed);
    }
    let (stored_hash, status, body, locked_until): (Vec<u8>, Option<i32>, Option<Vec<u8>>, i64) = sqlx::query_as(
        "SELECT request_hash, status, body, locked_until FROM idempotency_keys WHERE customer_id = $1 AND key = $2",
    )
    .bind(customer)
    .bind(key)
    .fetch_one(pool)
    .await?;
    if stored_hash != hash {
        return Ok(KeyClaim::Mismatch);
    }
    match status {
        Some(status) => Ok(KeyClaim::Replay { status: status as u16, body: body.unwrap_or_default() }),
        None if locked_until > now => Ok(KeyClaim::InFlight),
        None => {
            // Its request's node died mid-request: take the key over, once.
            let taken = sqlx::query(
                "UPDATE idempotency_keys SET locked_until = $3 \
                 WHERE customer_id = $1 AND key = $2 AND status IS NULL AND locked_until = $4",
            )
            .bind(customer)
            .bind(key)
            .bind(now + lease_ms)
            .bind(locked_until)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(if taken == 1 { KeyClaim::Claimed } else { KeyClaim::InFlight })
        }
    }
}

pub(super) async fn finish_key(
    pool: &PgPool,
    customer: &str,
    key: &str,
    status: u16,
    body: &[u8],
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, body = $4 WHERE customer_id = $1 AND key = $2 AND status IS NULL",
    )
    .bind(customer)
    .bind(key)
    .bind(i32::from(status))
    .bind(body)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn abandon_key(pool: &PgPool, customer: &str, key: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM idempotency_keys WHERE customer_id = $1 AND key = $2 AND status IS NULL")
        .bind(customer)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn ticket(pool: &PgPool, id: &str) -> anyhow::Result<Option<Ticket>> {
    let row = sqlx::query(&format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(ticket_from_row).transpose()
}

pub(super) async fn check_in(pool: &PgPool, id: &str, now: Timestamp) -> anyhow::Result<CheckIn> {
    let admitted = sqlx::query(&format!(
        "UPDATE tickets SET status = 'used', used_at = $2 WHERE id = $1 AND status = 'valid' RETURNING {TICKET_COLUMNS}"
    ))
    .bind(id)
    .bind(now.as_millis())
    .fetch_optional(pool)
    .await?;
    if let Some(row) = admitted {
        return Ok(CheckIn::Admitted(ticket_from_row(&row)?));
    }
    Ok(match ticket(pool, id).await? {
        Some(t) if t.status == TicketStatus::Void => CheckIn::Void(t),
        Some(t) => CheckIn::AlreadyUsed(t),
        None => CheckIn::NotFound,
    })
}

pub(super) async fn close_attempt(
    pool: &PgPool,
    id: &str,
    status: AttemptStatus,
    intent_id: Option<&str>,
    now: Timestamp,
) -> anyhow::Result<bool> {
    let n = sqlx::query(
        "UPDATE payment_attempts SET status = $2, intent_id = COALESCE($3, intent_id), updated_at = $4 \
         WHERE id = $1 AND status IN ('started', 'requires_action', 'processing')",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(intent_id)
    .bind(now.as_millis())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

pub(super) async fn alert_once(
    pool: &PgPool,
    dedup_key: &str,
    m: &OutboxMessage,
    now: Timestamp,
) -> anyhow::Result<bool> {
    let n = sqlx::query(
        "INSERT INTO outbox (topic, payload, created_at, next_attempt_at, dedup_key) VALUES ($1, $2, $3, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&m.topic)
    .bind(&m.payload)
    .bind(now.as_millis())
    .bind(dedup_key)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

pub(super) async fn refund_order(
    pool: &PgPool,
    id: &str,
    m: &OutboxMessage,
    now: Timestamp,
) -> anyhow::Result<Refunded> {
    let mut tx = pool.begin().await?;
    let Some(hold_id) = order_where(&mut *tx, "id", id).await?.map(|o| o.hold_id) else {
        return Ok(Refunded::NotFound);
    };
    let hold = lock_hold(&mut tx, hold_id.as_str()).await?.ok_or_else(|| anyhow!("order {id} has no hold"))?;
    let row = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let order = order_from_row(&row)?;
    match order.status {
        OrderStatus::Confirmed => {}
        OrderStatus::Refunded => return Ok(Refunded::Already(order)),
        _ => return Ok(Refunded::NotConfirmed(order)),
    }
    let now_ms = now.as_millis();
    let seats = ids(&hold.seats);
    lock_in_order(&mut tx, hold.event_id.as_str(), &seats).await?;
    sqlx::query(
        "UPDATE seats SET status = 'available', hold_id = NULL, order_id = NULL, version = version + 1 \
         WHERE event_id = $1 AND order_id = $2 AND status = 'sold'",
    )
    .bind(order.event_id.as_str())
    .bind(order.id.as_str())
    .execute(&mut *tx)
    .await?;
    if let Some(g) = &hold.ga {
        sqlx::query("UPDATE ga_inventory SET sold = sold - $3 WHERE event_id = $1 AND area_id = $2")
            .bind(hold.event_id.as_str())
            .bind(g.area.as_str())
            .bind(g.count as i32)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE tickets SET status = 'void' WHERE order_id = $1 AND status <> 'void'")
        .bind(order.id.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE holds SET status = 'released', version = version + 1 WHERE id = $1 AND status = 'purchased'")
        .bind(hold.id.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO outbox (topic, payload, created_at, next_attempt_at) VALUES ($1, $2, $3, $3)")
        .bind(&m.topic)
        .bind(&m.payload)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(&format!(
        "UPDATE orders SET status = 'refunded', updated_at = $2, version = version + 1 \
         WHERE id = $1 AND status = 'confirmed' RETURNING {ORDER_COLUMNS}"
    ))
    .bind(order.id.as_str())
    .bind(now_ms)
    .fetch_one(&mut *tx)
    .await?;
    let order = order_from_row(&row)?;
    tx.commit().await?;
    Ok(Refunded::Done(order))
}

pub(super) const OUTBOX_COLUMNS: &str = "id, topic, payload, attempts, done_channels, created_at";

pub(super) fn outbox_from_row(r: &PgRow) -> anyhow::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.try_get("id")?,
        topic: r.try_get("topic")?,
        payload: r.try_get("payload")?,
        attempts: r.try_get::<i32, _>("attempts")? as u32,
        done_channels: r.try_get("done_channels")?,
        created_at: Timestamp::from_millis(r.try_get("created_at")?),
    })
}
