//! `boxoffice audit`, the binary, against a copy of a real database and the
//! live gateway ledger: clean books pass, and each injected violation is
//! reported.

use std::collections::BTreeMap;
use std::process::Command;

use boxoffice::payments::PaymentRequest;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_boxoffice");

/// Runs the binary off the runtime's thread: the ledger it reads is served
/// by this test's runtime.
async fn audit(db: &std::path::Path, ledger: &str) -> (bool, String) {
    let (db, ledger) = (db.to_owned(), ledger.to_owned());
    tokio::task::spawn_blocking(move || run_audit(&db, &ledger)).await.unwrap()
}

fn run_audit(db: &std::path::Path, ledger: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["audit", "--ledger-url", ledger])
        .env("BOXOFFICE_DATABASE_URL", format!("sqlite://{}", db.display()))
        .env_remove("BOXOFFICE_PAYMENTS")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn audit_passes_clean_books_and_reports_each_injected_violation() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"max_tickets_per_customer": 10})).await;
    let fan = app.customer("fan@example.com").await;
    let mut orders = Vec::new();
    for (i, body) in
        [json!({"seats": ["A1", "A2"]}), json!({"ga": {"area": "floor", "count": 2}}), json!({"seats": ["A3"]})]
            .into_iter()
            .enumerate()
    {
        let h = app.hold(&fan, &event, body).await;
        assert_eq!(h.status, StatusCode::CREATED, "{}", h.body);
        let paid = app.checkout(&fan, &h.id(), &format!("k{i}"), "pm_card_visa").await;
        assert_eq!(paid.body["status"], "confirmed", "{}", paid.body);
        orders.push(paid.id());
    }
    // One refunded, one declined, one hold still live.
    let refunded = app.post(&format!("/v1/orders/{}/refund", orders[2]), Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(refunded.body["status"], "refunded");
    let declined_hold = app.hold(&fan, &event, json!({"seats": ["C1"]})).await.id();
    let declined = app.checkout(&fan, &declined_hold, "kd", "pm_card_chargeDeclined").await;
    assert_eq!(declined.body["status"], "failed");
    assert_eq!(app.hold(&fan, &event, json!({"seats": ["D1"]})).await.status, StatusCode::CREATED);

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    let live = rusqlite::Connection::open(app.sqlite_path()).unwrap();
    live.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
    let ledger = app.gateway().base_url().unwrap().to_owned();

    let (ok, text) = audit(&copy, &ledger).await;
    assert!(ok, "clean books pass: {text}");
    assert!(text.contains("audit: clean"), "{text}");

    // Break each invariant in the copy, and charge one order twice.
    let db = rusqlite::Connection::open(&copy).unwrap();
    db.execute_batch(&format!(
        "DROP INDEX tickets_live_seat;
         INSERT INTO tickets (id, order_id, event_id, customer_id, seat_id, code, status, created_at)
             SELECT 'tkt_dup', order_id, event_id, customer_id, seat_id, code, 'valid', 0 FROM tickets
             WHERE seat_id = 'A1';
         UPDATE seats SET status = 'sold', order_id = 'ord_fake', hold_id = 'hld_fake' WHERE seat_id = 'B5';
         UPDATE holds SET expires_at = 1000 WHERE status = 'held';
         UPDATE ga_inventory SET sold = sold + 1;
         UPDATE orders SET status = 'confirmed', payment_intent = 'pi_never' WHERE id = '{}';",
        declined.id()
    ))
    .unwrap();
    let extra = PaymentRequest {
        amount: 100,
        currency: "USD".into(),
        payment_method: "pm_card_visa".into(),
        metadata: BTreeMap::from([("order_id".to_owned(), orders[0].clone())]),
    };
    app.state.checkout.gateway().create_payment(&extra, "a-second-charge").await.unwrap();

    let (ok, text) = audit(&copy, &ledger).await;
    assert!(!ok, "violations fail the audit: {text}");
    for expected in [
        "invariant 1: more than one live ticket for one seat",
        "invariant 1: a seat is sold without a confirmed order",
        "invariant 1: a sold seat has no live ticket",
        "invariant 4: a held hold outlived its expiry",
        "invariant 5: a GA area's sold count differs from its live tickets",
        "invariant 5: a confirmed order's live tickets differ from its quantity",
        "which the gateway never captured",
        &format!("invariant 3: order {} is charged 2 times", orders[0]),
        "invariant 5: usd: captured − refunded",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
