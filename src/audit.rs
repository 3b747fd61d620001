//! `boxoffice audit`: checks design.md's invariants 1–5 against a database,
//! and against the payment gateway's ledger when one is given, and reports
//! every violation it finds.
//!
//! The database checks are plain read-only SQL, one text for both backends
//! (`Store::audit_query`); the money checks compare the orders with the
//! ledger's captures and refunds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::domain::time::Timestamp;
use crate::payments::sim::LedgerEntry;
use crate::store::{DynStore, StoreResult};

/// One broken invariant, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's number in design.md.
    pub invariant: u8,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invariant {}: {}", self.invariant, self.detail)
    }
}

/// How late a job may be before a hold it should have ended counts.
#[derive(Clone, Copy, Debug)]
pub struct Grace {
    /// A `held` hold past its expiry by more than this was never ended.
    pub sweep: Duration,
    /// A `checkout` hold past its (extended) expiry by more than this was
    /// never settled by reconciliation.
    pub reconcile: Duration,
}

/// (invariant, what a row means, SQL). Every column is text; `$1` is the
/// sweep horizon and `$2` the reconciliation horizon (epoch ms).
const CHECKS: &[(u8, &str, &str)] = &[
    (
        1,
        "more than one live ticket for one seat",
        "SELECT event_id, seat_id, CAST(COUNT(*) AS TEXT) FROM tickets \
         WHERE status <> 'void' AND seat_id IS NOT NULL GROUP BY event_id, seat_id HAVING COUNT(*) > 1",
    ),
    (
        1,
        "a seat is sold without a confirmed order",
        "SELECT s.event_id, s.seat_id, s.order_id FROM seats s LEFT JOIN orders o ON o.id = s.order_id \
         WHERE s.status = 'sold' AND (o.id IS NULL OR o.status <> 'confirmed')",
    ),
    (
        1,
        "a sold seat has no live ticket",
        "SELECT s.event_id, s.seat_id, s.order_id FROM seats s WHERE s.status = 'sold' AND NOT EXISTS \
         (SELECT 1 FROM tickets t WHERE t.event_id = s.event_id AND t.seat_id = s.seat_id AND t.status <> 'void')",
    ),
    (
        1,
        "a live ticket's seat is not sold to its order",
        "SELECT t.id, t.event_id, t.seat_id FROM tickets t WHERE t.status <> 'void' AND t.seat_id IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM seats s WHERE s.event_id = t.event_id AND s.seat_id = t.seat_id \
                         AND s.status = 'sold' AND s.order_id = t.order_id)",
    ),
    (
        4,
        "a held hold outlived its expiry plus a sweeper period",
        "SELECT id, event_id, CAST(expires_at AS TEXT) FROM holds WHERE status = 'held' AND expires_at < $1",
    ),
    (
        4,
        "a hold in checkout outlived its payment window plus a reconciliation period",
        "SELECT id, event_id, CAST(expires_at AS TEXT) FROM holds WHERE status = 'checkout' AND expires_at < $2",
    ),
    (
        5,
        "a GA area's counters break its capacity",
        "SELECT event_id, area_id, CAST(held AS TEXT), CAST(sold AS TEXT), CAST(capacity AS TEXT) FROM ga_inventory \
         WHERE held < 0 OR sold < 0 OR held + sold > capacity",
    ),
    (
        5,
        "a GA area's sold count differs from its live tickets",
        "SELECT g.event_id, g.area_id, CAST(g.sold AS TEXT), CAST((SELECT COUNT(*) FROM tickets t \
             WHERE t.event_id = g.event_id AND t.ga_area = g.area_id AND t.status <> 'void') AS TEXT) \
         FROM ga_inventory g WHERE g.sold <> (SELECT COUNT(*) FROM tickets t \
             WHERE t.event_id = g.event_id AND t.ga_area = g.area_id AND t.status <> 'void')",
    ),
    (
        5,
        "a confirmed order's live tickets differ from its quantity",
        "SELECT o.id, CAST(o.quantity AS TEXT), CAST((SELECT COUNT(*) FROM tickets t \
             WHERE t.order_id = o.id AND t.status <> 'void') AS TEXT) \
         FROM orders o WHERE o.status = 'confirmed' AND o.quantity <> (SELECT COUNT(*) FROM tickets t \
             WHERE t.order_id = o.id AND t.status <> 'void')",
    ),
];

const CONFIRMED_ORDERS: &str =
    "SELECT id, CAST(amount AS TEXT), currency, payment_intent FROM orders WHERE status = 'confirmed'";

/// Every violation in the database, and in its money when `ledger` is given.
pub async fn run(
    store: &DynStore,
    ledger: Option<&[LedgerEntry]>,
    now: Timestamp,
    grace: Grace,
) -> StoreResult<Vec<Violation>> {
    let horizon = |d: Duration| now.as_millis() - d.as_millis().min(i64::MAX as u128) as i64;
    let params = vec![horizon(grace.sweep), horizon(grace.reconcile)];
    let mut found = Vec::new();
    for (invariant, meaning, sql) in CHECKS {
        for row in store.audit_query(sql, params.clone()).await? {
            let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect();
            found.push(Violation { invariant: *invariant, detail: format!("{meaning}: {}", cells.join(" ")) });
        }
    }
    if let Some(ledger) = ledger {
        let orders = store.audit_query(CONFIRMED_ORDERS, vec![]).await?;
        found.extend(money(&orders, ledger));
    }
    Ok(found)
}

/// Invariants 2, 3 and 5 (money): every capture maps to one confirmed order
/// or is refunded; no order is charged twice; captured − refunded equals
/// the value of confirmed orders, per currency.
fn money(orders: &[Vec<Option<String>>], ledger: &[LedgerEntry]) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut refunded: HashMap<&str, i64> = HashMap::new();
    for e in ledger.iter().filter(|e| e.kind == "refund") {
        *refunded.entry(e.payment_intent.as_str()).or_default() += e.amount;
    }
    // intent → (order id, amount, currency) of confirmed orders.
    let mut confirmed: HashMap<String, (String, i64, String)> = HashMap::new();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for row in orders {
        let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let (id, amount, currency, intent) = (cell(0), cell(1).parse::<i64>().unwrap_or(0), cell(2), cell(3));
        *expected.entry(currency.to_ascii_lowercase()).or_default() += amount;
        if intent.is_empty() {
            found.push(Violation { invariant: 2, detail: format!("confirmed order {id} names no payment") });
        } else {
            confirmed.insert(intent, (id, amount, currency));
        }
    }
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    let mut kept_by_order: HashMap<String, Vec<&str>> = HashMap::new();
    let mut captured_intents = std::collections::HashSet::new();
    for c in ledger.iter().filter(|e| e.kind == "capture") {
        captured_intents.insert(c.payment_intent.as_str());
        let kept = c.amount - refunded.get(c.payment_intent.as_str()).copied().unwrap_or(0);
        *net.entry(c.currency.to_ascii_lowercase()).or_default() += kept;
        let order = c.metadata.get("order_id").cloned().unwrap_or_else(|| "(none)".into());
        if kept <= 0 {
            continue;
        }
        kept_by_order.entry(order.clone()).or_default().push(c.payment_intent.as_str());
        match confirmed.get(&c.payment_intent) {
            Some((_, amount, _)) if *amount == kept => {}
            Some((id, amount, _)) => found.push(Violation {
                invariant: 2,
                detail: format!("capture {} keeps {kept}, but its order {id} is for {amount}", c.payment_intent),
            }),
            None => found.push(Violation {
                invariant: 2,
                detail: format!(
                    "capture {} of order {order} ({kept} {}) maps to no confirmed order and was not refunded",
                    c.payment_intent, c.currency
                ),
            }),
        }
    }
    for (order, intents) in kept_by_order.iter().filter(|(_, v)| v.len() > 1) {
        found.push(Violation {
            invariant: 3,
            detail: format!("order {order} is charged {} times: {}", intents.len(), intents.join(", ")),
        });
    }
    for (intent, (id, _, _)) in &confirmed {
        if !captured_intents.contains(intent.as_str()) {
            found.push(Violation {
                invariant: 2,
                detail: format!("confirmed order {id} names payment {intent}, which the gateway never captured"),
            });
        }
    }
    let currencies: std::collections::BTreeSet<&String> = net.keys().chain(expected.keys()).collect();
    for cur in currencies {
        let (n, e) = (net.get(cur).copied().unwrap_or(0), expected.get(cur).copied().unwrap_or(0));
        if n != e {
            found.push(Violation {
                invariant: 5,
                detail: format!("{cur}: captured − refunded is {n}, confirmed orders are worth {e}"),
            });
        }
    }
    found
}

/// The gateway's ledger (`GET {base}/sim/ledger`), or `None` when the
/// gateway has no ledger endpoint (a real Stripe account).
pub async fn fetch_ledger(base: &str) -> anyhow::Result<Option<Vec<LedgerEntry>>> {
    #[derive(serde::Deserialize)]
    struct Ledger {
        entries: Vec<LedgerEntry>,
    }
    let url = format!("{}/sim/ledger", base.trim_end_matches('/'));
    let response = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?.get(&url).send().await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let ledger: Ledger = response.error_for_status()?.json().await?;
    Ok(Some(ledger.entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, intent: &str, order: &str, amount: i64) -> LedgerEntry {
        LedgerEntry {
            kind: kind.into(),
            id: format!("{kind}_{intent}"),
            payment_intent: intent.into(),
            amount,
            currency: "usd".into(),
            metadata: BTreeMap::from([("order_id".to_owned(), order.to_owned())]),
            at_ms: 0,
        }
    }

    fn order(id: &str, amount: i64, intent: &str) -> Vec<Option<String>> {
        vec![Some(id.into()), Some(amount.to_string()), Some("USD".into()), Some(intent.into())]
    }

    #[test]
    fn balanced_books_are_clean() {
        let ledger = [
            entry("capture", "pi_1", "ord_1", 3000),
            entry("capture", "pi_2", "ord_2", 500),
            entry("refund", "pi_2", "ord_2", 500),
        ];
        assert_eq!(money(&[order("ord_1", 3000, "pi_1")], &ledger), vec![]);
    }

    #[test]
    fn an_unmatched_capture_a_double_charge_and_an_unpaid_order_are_each_reported() {
        let ledger = [
            entry("capture", "pi_1", "ord_1", 3000),
            entry("capture", "pi_1b", "ord_1", 3000),
            entry("capture", "pi_x", "ord_gone", 700),
        ];
        let found = money(&[order("ord_1", 3000, "pi_1"), order("ord_2", 100, "pi_never")], &ledger);
        let invariants: Vec<u8> = found.iter().map(|v| v.invariant).collect();
        assert!(found.iter().any(|v| v.invariant == 3 && v.detail.contains("ord_1")), "{found:?}");
        assert!(found.iter().any(|v| v.detail.contains("pi_x")), "{found:?}");
        assert!(found.iter().any(|v| v.detail.contains("pi_never")), "{found:?}");
        assert!(invariants.contains(&5), "the totals differ too: {found:?}");
    }
}
