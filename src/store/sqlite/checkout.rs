//! Checkout on SQLite: each function runs inside the single writer's
//! transaction (or on a read connection), so "conditional on the hold still
//! being in checkout" is checked and acted on with no other writer between.

use anyhow::{anyhow, bail};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{find_one, load_hold};
use crate::domain::hold::{Hold, HoldStatus};
use crate::domain::ids::{AreaId, AttemptId, CustomerId, EventId, HoldId, OrderId, SeatId, TicketId};
use crate::domain::money::Currency;
use crate::domain::order::{HoldFate, OrderStatus};
use crate::domain::time::Timestamp;
use crate::store::checkout::{
    Attempt, AttemptStatus, CheckIn, CheckoutRefusal, CheckoutStart, CheckoutStarted, KeyClaim, Order, OutboxMessage,
    OutboxRow, Refunded, Settled, Settlement, Ticket, TicketStatus,
};
use crate::store::codec::encode_seats;

pub(super) const ORDER_COLUMNS: &str = "id, hold_id, event_id, customer_id, status, amount, currency, quantity, \
     failure_code, action_url, payment_intent, created_at, updated_at, version";

fn currency(s: String) -> anyhow::Result<Currency> {
    Currency::parse(&s).ok_or_else(|| anyhow!("bad stored currency {s:?}"))
}

pub(super) fn order_from_row(r: &Row) -> anyhow::Result<Order> {
    let status: String = r.get(4)?;
    Ok(Order {
        id: OrderId::from_trusted(r.get(0)?),
        hold_id: HoldId::from_trusted(r.get(1)?),
        event_id: EventId::from_trusted(r.get(2)?),
        customer_id: CustomerId::from_trusted(r.get(3)?),
        status: OrderStatus::parse(&status).ok_or_else(|| anyhow!("bad stored order status {status:?}"))?,
        amount: r.get(5)?,
        currency: currency(r.get(6)?)?,
        quantity: r.get(7)?,
        failure_code: r.get(8)?,
        action_url: r.get(9)?,
        payment_intent: r.get(10)?,
        created_at: Timestamp::from_millis(r.get(11)?),
        updated_at: Timestamp::from_millis(r.get(12)?),
        version: r.get(13)?,
    })
}

pub(super) const ATTEMPT_COLUMNS: &str =
    "id, order_id, payment_method, amount, currency, status, intent_id, failure_code, created_at";

pub(super) fn attempt_from_row(r: &Row) -> anyhow::Result<Attempt> {
    let status: String = r.get(5)?;
    Ok(Attempt {
        id: AttemptId::from_trusted(r.get(0)?),
        order_id: OrderId::from_trusted(r.get(1)?),
        payment_method: r.get(2)?,
        amount: r.get(3)?,
        currency: currency(r.get(4)?)?,
        status: AttemptStatus::parse(&status).ok_or_else(|| anyhow!("bad stored attempt status {status:?}"))?,
        intent_id: r.get(6)?,
        failure_code: r.get(7)?,
        created_at: Timestamp::from_millis(r.get(8)?),
    })
}

pub(super) const TICKET_COLUMNS: &str = "id, order_id, event_id, customer_id, seat_id, ga_area, code, status, used_at";

pub(super) fn ticket_from_row(r: &Row) -> anyhow::Result<Ticket> {
    let status: String = r.get(7)?;
    Ok(Ticket {
        id: TicketId::from_trusted(r.get(0)?),
        order_id: OrderId::from_trusted(r.get(1)?),
        event_id: EventId::from_trusted(r.get(2)?),
        customer_id: CustomerId::from_trusted(r.get(3)?),
        seat: r.get::<_, Option<String>>(4)?.map(SeatId::from_trusted),
        ga_area: r.get::<_, Option<String>>(5)?.map(AreaId::from_trusted),
        code: r.get(6)?,
        status: TicketStatus::parse(&status).ok_or_else(|| anyhow!("bad stored ticket status {status:?}"))?,
        used_at: r.get::<_, Option<i64>>(8)?.map(Timestamp::from_millis),
    })
}

pub(super) fn load_order(conn: &Connection, id: &str) -> anyhow::Result<Option<Order>> {
    find_one(conn, &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"), id, order_from_row)
}

pub(super) fn load_order_for_hold(conn: &Connection, hold_id: &str) -> anyhow::Result<Option<Order>> {
    find_one(conn, &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE hold_id = ?1"), hold_id, order_from_row)
}

fn quantity(hold: &Hold) -> u32 {
    hold.seats.len() as u32 + hold.ga.as_ref().map_or(0, |g| g.count)
}

pub(super) fn start_checkout(
    conn: &Connection,
    s: &CheckoutStart,
) -> anyhow::Result<Result<CheckoutStarted, CheckoutRefusal>> {
    let Some(hold) = load_hold(conn, s.hold_id.as_str())?.filter(|h| h.customer_id == s.customer_id) else {
        return Ok(Err(CheckoutRefusal::HoldNotFound));
    };
    match hold.effective_status(s.now) {
        HoldStatus::Held => {}
        HoldStatus::Expired => return Ok(Err(CheckoutRefusal::HoldExpired)),
        status => {
            let order = load_order_for_hold(conn, hold.id.as_str())?.map(Box::new);
            return Ok(Err(CheckoutRefusal::HoldNotActive { status, order }));
        }
    }
    let now = s.now.as_millis();
    // The payment window is added once per hold, however many attempts.
    let (expires_at, version): (i64, i64) = conn
        .prepare_cached(
            "UPDATE holds SET status = 'checkout', \
                 expires_at = CASE WHEN extended = 0 THEN expires_at + ?3 ELSE expires_at END, \
                 extended = 1, version = version + 1 \
             WHERE id = ?1 AND status = 'held' AND expires_at > ?2 RETURNING expires_at, version",
        )?
        .query_row(params![hold.id.as_str(), now, i64::from(s.payment_window_secs) * 1000], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let moved = conn
        .prepare_cached(
            "UPDATE seats SET status = 'checkout', hold_expires_at = ?4, version = version + 1 \
             WHERE event_id = ?2 AND seat_id IN (SELECT value FROM json_each(?3)) AND hold_id = ?1 \
               AND status = 'held'",
        )?
        .execute(params![hold.id.as_str(), hold.event_id.as_str(), encode_seats(&hold.seats), expires_at])?;
    if moved != hold.seats.len() {
        bail!("hold {} is live but holds {moved} of its {} seats", hold.id, hold.seats.len());
    }
    let order = conn
        .prepare_cached(&format!(
            "INSERT INTO orders (id, hold_id, event_id, customer_id, status, amount, currency, quantity, \
                                 created_at, updated_at, version) \
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?8, 1) \
             ON CONFLICT (hold_id) DO UPDATE SET status = 'pending', failure_code = NULL, action_url = NULL, \
                 updated_at = excluded.updated_at, version = orders.version + 1 \
             RETURNING {ORDER_COLUMNS}"
        ))?
        .query_row(
            params![
                s.order_id.as_str(),
                hold.id.as_str(),
                hold.event_id.as_str(),
                hold.customer_id.as_str(),
                hold.amount,
                hold.currency.as_str(),
                quantity(&hold),
                now
            ],
            |r| Ok(order_from_row(r)),
        )??;
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
    conn.prepare_cached(
        "INSERT INTO payment_attempts (id, order_id, payment_method, amount, currency, status, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'started', ?6, ?6)",
    )?
    .execute(params![
        attempt.id.as_str(),
        order.id.as_str(),
        attempt.payment_method,
        attempt.amount,
        attempt.currency.as_str(),
        now
    ])?;
    let hold = Hold { status: HoldStatus::Checkout, expires_at: Timestamp::from_millis(expires_at), version, ..hold };
    Ok(Ok(CheckoutStarted { hold, order, attempt }))
}

pub(super) fn settle(conn: &Connection, s: &Settlement) -> anyhow::Result<Settled> {
    let Some(order) = load_order(conn, s.order_id.as_str())? else { return Ok(Settled::NotFound) };
    if !order.status.unsettled() {
        return Ok(Settled::AlreadySettled(order));
    }
    let now = s.now.as_millis();
    // Only a running attempt of this order can be settled, and only once.
    let final_attempt = matches!(s.attempt_status, AttemptStatus::Succeeded | AttemptStatus::Failed);
    let attempt_moved = conn
        .prepare_cached(
            "UPDATE payment_attempts SET status = ?3, intent_id = COALESCE(?4, intent_id), failure_code = ?5, \
                 updated_at = ?6 \
             WHERE id = ?1 AND order_id = ?2 AND status IN ('started', 'requires_action', 'processing')",
        )?
        .execute(params![
            s.attempt_id.as_str(),
            order.id.as_str(),
            s.attempt_status.as_str(),
            s.intent_id,
            s.failure_code,
            now
        ])?;
    if attempt_moved != 1 {
        return Ok(Settled::AlreadySettled(order));
    }
    let hold = load_hold(conn, order.hold_id.as_str())?.ok_or_else(|| anyhow!("order {} has no hold", order.id))?;
    let in_checkout = hold.status == HoldStatus::Checkout;
    let seats = encode_seats(&hold.seats);
    let (status, failure_code, lost) = match s.hold {
        HoldFate::Sell if !in_checkout => {
            // Paid for seats it no longer holds: the attempt stays open, so
            // reconciliation refunds it until the gateway confirms.
            conn.prepare_cached("UPDATE payment_attempts SET status = 'processing' WHERE id = ?1")?
                .execute([s.attempt_id.as_str()])?;
            (OrderStatus::Failed, Some("hold_expired".to_owned()), true)
        }
        HoldFate::Sell => {
            let sold = conn
                .prepare_cached(
                    "UPDATE seats SET status = 'sold', order_id = ?3, hold_expires_at = NULL, version = version + 1 \
                     WHERE event_id = ?2 AND seat_id IN (SELECT value FROM json_each(?4)) AND hold_id = ?1 \
                       AND status = 'checkout'",
                )?
                .execute(params![hold.id.as_str(), hold.event_id.as_str(), order.id.as_str(), seats])?;
            if sold != hold.seats.len() {
                bail!("hold {} is in checkout but holds {sold} of its {} seats", hold.id, hold.seats.len());
            }
            if let Some(g) = &hold.ga {
                conn.prepare_cached(
                    "UPDATE ga_inventory SET held = held - ?3, sold = sold + ?3 WHERE event_id = ?1 AND area_id = ?2",
                )?
                .execute(params![hold.event_id.as_str(), g.area.as_str(), g.count])?;
            }
            set_hold_status(conn, &hold, "purchased")?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO tickets (id, order_id, event_id, customer_id, seat_id, ga_area, code, status, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'valid', ?8)",
            )?;
            for t in &s.tickets {
                insert.execute(params![
                    t.id.as_str(),
                    order.id.as_str(),
                    order.event_id.as_str(),
                    order.customer_id.as_str(),
                    t.seat.as_ref().map(SeatId::as_str),
                    t.ga_area.as_ref().map(AreaId::as_str),
                    t.code,
                    now
                ])?;
            }
            (OrderStatus::Confirmed, None, false)
        }
        HoldFate::AwaitOutcome => {
            if !in_checkout {
                bail!("hold {} of unsettled order {} is {}", hold.id, order.id, hold.status.as_str());
            }
            (s.order_status, s.failure_code.clone(), false)
        }
        HoldFate::Keep => {
            if in_checkout {
                set_hold_status(conn, &hold, "held")?;
                conn.prepare_cached(
                    "UPDATE seats SET status = 'held', hold_expires_at = ?3, version = version + 1 \
                     WHERE event_id = ?2 AND seat_id IN (SELECT value FROM json_each(?4)) AND hold_id = ?1 \
                       AND status = 'checkout'",
                )?
                .execute(params![
                    hold.id.as_str(),
                    hold.event_id.as_str(),
                    hold.expires_at.as_millis(),
                    seats
                ])?;
            }
            (s.order_status, s.failure_code.clone(), false)
        }
        HoldFate::Release => {
            if in_checkout {
                set_hold_status(conn, &hold, "released")?;
                conn.prepare_cached(
                    "UPDATE seats SET status = 'available', hold_id = NULL, hold_expires_at = NULL, \
                         version = version + 1 \
                     WHERE event_id = ?2 AND seat_id IN (SELECT value FROM json_each(?3)) AND hold_id = ?1 \
                       AND status = 'checkout'",
                )?
                .execute(params![hold.id.as_str(), hold.event_id.as_str(), seats])?;
                if let Some(g) = &hold.ga {
                    conn.prepare_cached(
                        "UPDATE ga_inventory SET held = held - ?3 WHERE event_id = ?1 AND area_id = ?2",
                    )?
                    .execute(params![hold.event_id.as_str(), g.area.as_str(), g.count])?;
                }
            }
            (s.order_status, s.failure_code.clone(), false)
        }
    };
    let captured =
        if final_attempt && s.attempt_status == AttemptStatus::Succeeded { s.intent_id.clone() } else { None };
    let order = conn
        .prepare_cached(&format!(
            "UPDATE orders SET status = ?2, failure_code = ?3, action_url = ?4, \
                 payment_intent = COALESCE(?5, payment_intent), updated_at = ?6, version = version + 1 \
             WHERE id = ?1 RETURNING {ORDER_COLUMNS}"
        ))?
        .query_row(params![order.id.as_str(), status.as_str(), failure_code, s.action_url, captured, now], |r| {
            Ok(order_from_row(r))
        })??;
    let mut outbox = conn
        .prepare_cached("INSERT INTO outbox (topic, payload, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?3)")?;
    for m in &s.outbox {
        outbox.execute(params![m.topic, m.payload, now])?;
    }
    Ok(if lost { Settled::HoldLost(order) } else { Settled::Applied(order) })
}

fn set_hold_status(conn: &Connection, hold: &Hold, status: &str) -> anyhow::Result<()> {
    let n = conn
        .prepare_cached(
            "UPDATE holds SET status = ?2, version = version + 1 WHERE id = ?1 AND status = 'checkout' AND version = ?3",
        )?
        .execute(params![hold.id.as_str(), status, hold.version])?;
    if n != 1 {
        bail!("hold {} changed under the single writer", hold.id);
    }
    Ok(())
}

pub(super) fn claim_key(
    conn: &Connection,
    customer: &str,
    key: &str,
    hash: &[u8; 32],
    now: Timestamp,
    lease_ms: i64,
) -> anyhow::Result<KeyClaim> {
    let now = now.as_millis();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO idempotency_keys (customer_id, key, request_hash, locked_until, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute(params![customer, key, &hash[..], now + lease_ms, now])?;
    if inserted == 1 {
        return Ok(KeyClaim::Claimed);
    }
    let (stored_hash, status, body, locked_until): (Vec<u8>, Option<u16>, Option<Vec<u8>>, i64) = conn
        .prepare_cached(
            "SELECT request_hash, status, body, locked_until FROM idempotency_keys WHERE customer_id = ?1 AND key = ?2",
        )?
        .query_row(params![customer, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    if stored_hash != hash {
        return Ok(KeyClaim::Mismatch);
    }
    match status {
        Some(status) => Ok(KeyClaim::Replay { status, body: body.unwrap_or_default() }),
        None if locked_until > now => Ok(KeyClaim::InFlight),
        None => {
            // Its request's node died mid-request: take the key over.
            conn.prepare_cached(
                "UPDATE idempotency_keys SET locked_until = ?3 WHERE customer_id = ?1 AND key = ?2 AND status IS NULL",
            )?
            .execute(params![customer, key, now + lease_ms])?;
            Ok(KeyClaim::Claimed)
        }
    }
}

pub(super) fn finish_key(conn: &Connection, customer: &str, key: &str, status: u16, body: &[u8]) -> anyhow::Result<()> {
    conn.prepare_cached(
        "UPDATE idempotency_keys SET status = ?3, body = ?4 WHERE customer_id = ?1 AND key = ?2 AND status IS NULL",
    )?
    .execute(params![customer, key, status, body])?;
    Ok(())
}

pub(super) fn abandon_key(conn: &Connection, customer: &str, key: &str) -> anyhow::Result<()> {
    conn.prepare_cached("DELETE FROM idempotency_keys WHERE customer_id = ?1 AND key = ?2 AND status IS NULL")?
        .execute(params![customer, key])?;
    Ok(())
}

pub(super) fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: fn(&Row) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let mut st = conn.prepare_cached(sql)?;
    let mut rows = st.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(decode(r)?);
    }
    Ok(out)
}

pub(super) fn load_ticket(conn: &Connection, id: &str) -> anyhow::Result<Option<Ticket>> {
    find_one(conn, &format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE id = ?1"), id, ticket_from_row)
}

pub(super) fn check_in(conn: &Connection, id: &str, now: Timestamp) -> anyhow::Result<CheckIn> {
    let admitted = conn
        .prepare_cached(&format!(
            "UPDATE tickets SET status = 'used', used_at = ?2 WHERE id = ?1 AND status = 'valid' RETURNING {TICKET_COLUMNS}"
        ))?
        .query_row(params![id, now.as_millis()], |r| Ok(ticket_from_row(r)))
        .optional()?
        .transpose()?;
    if let Some(t) = admitted {
        return Ok(CheckIn::Admitted(t));
    }
    Ok(match load_ticket(conn, id)? {
        Some(t) if t.status == TicketStatus::Void => CheckIn::Void(t),
        Some(t) => CheckIn::AlreadyUsed(t),
        None => CheckIn::NotFound,
    })
}

pub(super) fn close_attempt(
    conn: &Connection,
    id: &str,
    status: AttemptStatus,
    intent_id: Option<&str>,
    now: Timestamp,
) -> anyhow::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE payment_attempts SET status = ?2, intent_id = COALESCE(?3, intent_id), updated_at = ?4 \
             WHERE id = ?1 AND status IN ('started', 'requires_action', 'processing')",
        )?
        .execute(params![id, status.as_str(), intent_id, now.as_millis()])?;
    Ok(n == 1)
}

pub(super) fn alert_once(
    conn: &Connection,
    dedup_key: &str,
    m: &OutboxMessage,
    now: Timestamp,
) -> anyhow::Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO outbox (topic, payload, created_at, next_attempt_at, dedup_key) VALUES (?1, ?2, ?3, ?3, ?4) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![m.topic, m.payload, now.as_millis(), dedup_key])?;
    Ok(n == 1)
}

pub(super) fn refund_order(conn: &Connection, id: &str, m: &OutboxMessage, now: Timestamp) -> anyhow::Result<Refunded> {
    let Some(order) = load_order(conn, id)? else { return Ok(Refunded::NotFound) };
    match order.status {
        OrderStatus::Confirmed => {}
        OrderStatus::Refunded => return Ok(Refunded::Already(order)),
        _ => return Ok(Refunded::NotConfirmed(order)),
    }
    let hold = load_hold(conn, order.hold_id.as_str())?.ok_or_else(|| anyhow!("order {} has no hold", order.id))?;
    let now_ms = now.as_millis();
    conn.prepare_cached(
        "UPDATE seats SET status = 'available', hold_id = NULL, order_id = NULL, version = version + 1 \
         WHERE event_id = ?1 AND order_id = ?2 AND status = 'sold'",
    )?
    .execute(params![order.event_id.as_str(), order.id.as_str()])?;
    if let Some(g) = &hold.ga {
        conn.prepare_cached("UPDATE ga_inventory SET sold = sold - ?3 WHERE event_id = ?1 AND area_id = ?2")?
            .execute(params![hold.event_id.as_str(), g.area.as_str(), g.count])?;
    }
    conn.prepare_cached("UPDATE tickets SET status = 'void' WHERE order_id = ?1 AND status <> 'void'")?
        .execute([order.id.as_str()])?;
    conn.prepare_cached(
        "UPDATE holds SET status = 'released', version = version + 1 WHERE id = ?1 AND status = 'purchased'",
    )?
    .execute([hold.id.as_str()])?;
    conn.prepare_cached("INSERT INTO outbox (topic, payload, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?3)")?
        .execute(params![m.topic, m.payload, now_ms])?;
    let order = conn
        .prepare_cached(&format!(
            "UPDATE orders SET status = 'refunded', updated_at = ?2, version = version + 1 \
             WHERE id = ?1 AND status = 'confirmed' RETURNING {ORDER_COLUMNS}"
        ))?
        .query_row(params![order.id.as_str(), now_ms], |r| Ok(order_from_row(r)))??;
    Ok(Refunded::Done(order))
}

pub(super) const OUTBOX_COLUMNS: &str = "id, topic, payload, attempts, done_channels, created_at";

pub(super) fn outbox_from_row(r: &Row) -> anyhow::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        topic: r.get(1)?,
        payload: r.get(2)?,
        attempts: r.get(3)?,
        done_channels: r.get(4)?,
        created_at: Timestamp::from_millis(r.get(5)?),
    })
}
