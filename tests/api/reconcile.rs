//! Reconciliation, crash recovery and late payments, against the
//! in-process gateway simulator, with the app's fake clock.

use std::collections::BTreeMap;
use std::time::Duration;

use boxoffice::booking::checkout::Reconciled;
use boxoffice::domain::ids::{AttemptId, HoldId, OrderId};
use boxoffice::domain::time::Clock;
use boxoffice::payments::sim::FaultsPatch;
use boxoffice::payments::{IntentStatus, PaymentRequest};
use boxoffice::store::checkout::{CheckoutStart, CheckoutStarted};
use boxoffice::store::Customer;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

/// The demo event's hold TTL plus the default payment window.
const PAST_THE_WINDOW: Duration = Duration::from_secs(300 + 600 + 1);

async fn held(app: &TestApp, token: &str, event: &str, seats: &[&str]) -> String {
    let r = app.hold(token, event, json!({ "seats": seats })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.id()
}

async fn reconcile(app: &TestApp) -> Reconciled {
    app.state.checkout.reconcile(100).await.unwrap()
}

fn ledger_totals(app: &TestApp) -> (usize, i64, usize, i64) {
    let ledger = app.gateway().ledger();
    let (caps, refs): (Vec<_>, Vec<_>) = ledger.iter().partition(|e| e.kind == "capture");
    (caps.len(), caps.iter().map(|e| e.amount).sum(), refs.len(), refs.iter().map(|e| e.amount).sum())
}

async fn order(app: &TestApp, token: &str, id: &str) -> serde_json::Value {
    app.get(&format!("/v1/orders/{id}"), Some(token)).await.body
}

/// The customer behind a session token, as the API resolves it.
async fn customer_of(app: &TestApp, token: &str) -> Customer {
    let hash = boxoffice::domain::customer::TokenHash::of(token);
    app.state.store.session_customer(hash, app.clock.now()).await.unwrap().unwrap().0
}

/// What a node does before calling the gateway, as if it then died.
async fn start_only(app: &TestApp, who: &Customer, hold: &str) -> CheckoutStarted {
    app.state
        .store
        .start_checkout(CheckoutStart {
            hold_id: HoldId::parse(hold).unwrap(),
            customer_id: who.id.clone(),
            order_id: OrderId::generate(),
            attempt_id: AttemptId::generate(),
            payment_method: "pm_card_visa".into(),
            payment_window_secs: 600,
            now: app.clock.now(),
        })
        .await
        .unwrap()
        .unwrap()
}

fn payment_for(s: &CheckoutStarted, method: &str) -> PaymentRequest {
    PaymentRequest {
        amount: s.order.amount,
        currency: s.order.currency.to_string(),
        payment_method: method.into(),
        metadata: BTreeMap::from([
            ("order_id".to_owned(), s.order.id.to_string()),
            ("attempt_id".to_owned(), s.attempt.id.to_string()),
        ]),
    }
}

#[tokio::test]
async fn a_crash_after_the_attempt_was_written_ends_with_no_charge_and_the_seats_back() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let token = app.customer("fan@example.com").await;
    let fan = customer_of(&app, &token).await;
    let hold = held(&app, &token, &event, &["A1"]).await;
    let started = start_only(&app, &fan, &hold).await;
    assert_eq!(reconcile(&app).await, Reconciled::default(), "within its window the order just waits");
    assert_eq!(order(&app, &token, started.order.id.as_str()).await["status"], "pending");
    app.clock.advance(PAST_THE_WINDOW);
    assert_eq!(reconcile(&app).await.timed_out, 1);
    let o = order(&app, &token, started.order.id.as_str()).await;
    assert_eq!((o["status"].as_str(), o["failure_code"].as_str()), (Some("failed"), Some("payment_timeout")));
    assert_eq!(app.seat_statuses(&event).await["A1"], "available");
    assert_eq!(ledger_totals(&app), (0, 0, 0, 0));
    let alerts = app.state.store.outbox_due(app.clock.now(), 100).await.unwrap();
    assert_eq!(alerts.iter().filter(|m| m.topic == "ops.alert").count(), 1, "{alerts:?}");
    reconcile(&app).await;
    let alerts = app.state.store.outbox_due(app.clock.now(), 100).await.unwrap();
    assert_eq!(alerts.iter().filter(|m| m.topic == "ops.alert").count(), 1, "alerted once");
}

#[tokio::test]
async fn a_crash_after_the_gateway_captured_is_confirmed_once_even_by_two_nodes() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let token = app.customer("fan@example.com").await;
    let fan = customer_of(&app, &token).await;
    let hold = held(&app, &token, &event, &["A1", "A2"]).await;
    let started = start_only(&app, &fan, &hold).await;
    // The node charged the card and died before writing the answer down.
    let gateway = app.state.checkout.gateway();
    let intent = gateway.create_payment(&payment_for(&started, "pm_card_visa"), &started.attempt.gateway_key()).await;
    assert_eq!(intent.unwrap().status, IntentStatus::Succeeded);
    // Two reconcilers at once.
    let (a, b) = tokio::join!(reconcile(&app), reconcile(&app));
    // Each either settled it, found it settled, or found nothing left to do.
    assert!((1..=2).contains(&(a.settled + b.settled)), "{a:?} {b:?}");
    let o = order(&app, &token, started.order.id.as_str()).await;
    assert_eq!(o["status"], "confirmed", "{o}");
    assert_eq!(o["tickets"].as_array().unwrap().len(), 2);
    assert_eq!(ledger_totals(&app), (1, started.order.amount, 0, 0), "one charge, nothing refunded");
    let confirmations = app.state.store.outbox_due(app.clock.now(), 100).await.unwrap();
    assert_eq!(confirmations.iter().filter(|m| m.topic == "order.confirmed").count(), 1);
}

#[tokio::test]
async fn a_pending_payment_is_confirmed_by_reconciliation_when_it_settles() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let token = app.customer("fan@example.com").await;
    let hold = held(&app, &token, &event, &["A1"]).await;
    let r = app.checkout(&token, &hold, "k", "pm_card_processing").await;
    assert_eq!(r.body["status"], "payment_pending");
    assert_eq!(reconcile(&app).await, Reconciled::default());
    app.clock.advance(Duration::from_millis(boxoffice::payments::sim::Faults::default().settle_after_ms));
    assert_eq!(reconcile(&app).await.settled, 1);
    assert_eq!(app.seat_statuses(&event).await["A1"], "sold");
}

#[tokio::test]
async fn a_late_success_after_the_seat_was_resold_is_refunded_and_the_books_balance() {
    let app = spawn_app().await;
    app.gateway().set_faults(FaultsPatch { settle_after_ms: Some(24 * 3600 * 1000), ..Default::default() }).unwrap();
    let event = app.demo_event(json!({})).await;
    let (first, second) = (app.customer("first@example.com").await, app.customer("second@example.com").await);
    let hold = held(&app, &first, &event, &["A1"]).await;
    let pending = app.checkout(&first, &hold, "k", "pm_card_processing").await;
    assert_eq!(pending.body["status"], "payment_pending");
    app.clock.advance(PAST_THE_WINDOW);
    assert_eq!(reconcile(&app).await.timed_out, 1);
    assert_eq!(app.seat_statuses(&event).await["A1"], "available", "the window passed: the seat sells again");
    // Someone else buys it.
    let resold = held(&app, &second, &event, &["A1"]).await;
    let bought = app.checkout(&second, &resold, "k", "pm_card_visa").await;
    assert_eq!(bought.body["status"], "confirmed");
    // The first payment succeeds after all.
    let intent = app.state.checkout.gateway().search_metadata("order_id", &pending.id()).await.unwrap()[0].id.clone();
    app.gateway().settle(&intent, true).unwrap();
    assert_eq!(reconcile(&app).await.late_refunds, 1);
    assert_eq!(reconcile(&app).await.late_refunds, 0, "refunded once");
    let (captures, captured, refunds, refunded) = ledger_totals(&app);
    assert_eq!((captures, refunds), (2, 1));
    let confirmed_value = bought.body["amount"].as_i64().unwrap();
    assert_eq!(captured - refunded, confirmed_value, "captured - refunded = the value of confirmed orders");
    let o = order(&app, &first, &pending.id()).await;
    assert_eq!((o["status"].as_str(), o["failure_code"].as_str()), (Some("failed"), Some("payment_timeout")));
    assert_eq!(app.seat_statuses(&event).await["A1"], "sold");
    let grace = boxoffice::audit::Grace { sweep: Duration::from_secs(15), reconcile: Duration::from_secs(120) };
    let ledger = app.gateway().ledger();
    let found = boxoffice::audit::run(&app.state.store, Some(&ledger), app.clock.now(), grace).await.unwrap();
    assert!(found.is_empty(), "audit is clean: {found:?}");
}

#[tokio::test]
async fn an_abandoned_three_d_secure_payment_is_cancelled_and_its_hold_released() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let token = app.customer("fan@example.com").await;
    let hold = held(&app, &token, &event, &["A1"]).await;
    let r = app.checkout(&token, &hold, "k", "pm_card_threeDSecure2Required").await;
    assert_eq!(r.body["status"], "requires_action");
    let url = r.body["action_url"].as_str().unwrap().to_owned();
    app.clock.advance(PAST_THE_WINDOW);
    assert_eq!(reconcile(&app).await.timed_out, 1);
    assert_eq!(app.seat_statuses(&event).await["A1"], "available");
    let late = app.client.post(&url).form(&[("outcome", "succeeded")]).send().await.unwrap();
    assert_eq!(late.status(), 400, "a cancelled payment cannot be completed");
    assert_eq!(ledger_totals(&app), (0, 0, 0, 0));
    assert_eq!(reconcile(&app).await, Reconciled::default(), "nothing left open");
}

#[tokio::test]
async fn a_second_capture_for_a_confirmed_order_is_refunded_once_and_alerted() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let token = app.customer("fan@example.com").await;
    let hold = held(&app, &token, &event, &["A1"]).await;
    let paid = app.checkout(&token, &hold, "k", "pm_card_visa").await;
    assert_eq!(paid.body["status"], "confirmed");
    let amount = paid.body["amount"].as_i64().unwrap();
    // The gateway charges the same order again (a double submit elsewhere).
    let again = PaymentRequest {
        amount,
        currency: "USD".into(),
        payment_method: "pm_card_visa".into(),
        metadata: BTreeMap::from([("order_id".to_owned(), paid.id())]),
    };
    app.state.checkout.gateway().create_payment(&again, "someone-elses-key").await.unwrap();
    assert_eq!(reconcile(&app).await.duplicates_refunded, 0, "too fresh: a racing duplicate may still land");
    app.clock.advance(Duration::from_secs(61));
    assert_eq!(reconcile(&app).await.duplicates_refunded, 1);
    assert_eq!(reconcile(&app).await.duplicates_refunded, 0, "refunded once");
    let (captures, captured, refunds, refunded) = ledger_totals(&app);
    assert_eq!((captures, refunds), (2, 1));
    assert_eq!(captured - refunded, amount, "the order keeps exactly one payment");
    assert_eq!(order(&app, &token, &paid.id()).await["status"], "confirmed");
    let alerts = app.state.store.outbox_due(app.clock.now(), 100).await.unwrap();
    assert!(alerts.iter().any(|m| m.topic == "ops.alert" && m.payload.contains("duplicate_capture")), "{alerts:?}");
}

#[tokio::test]
async fn a_refund_owed_for_a_wrong_amount_is_retried_until_the_gateway_confirms_it() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let token = app.customer("fan@example.com").await;
    let hold = held(&app, &token, &event, &["A1"]).await;
    app.gateway().set_faults(FaultsPatch { fail_refunds_next: Some(100), ..Default::default() }).unwrap();
    let r = app.checkout(&token, &hold, "k", "pm_card_captureWrongAmount").await;
    assert_eq!((r.body["status"].as_str(), r.body["failure_code"].as_str()), (Some("failed"), Some("amount_mismatch")));
    assert_eq!(ledger_totals(&app).2, 0, "the refund failed at the gateway");
    reconcile(&app).await;
    assert_eq!(ledger_totals(&app).2, 0, "still failing");
    app.gateway().set_faults(FaultsPatch { fail_refunds_next: Some(0), ..Default::default() }).unwrap();
    app.clock.advance(Duration::from_secs(31)); // past the breaker's cooldown
    let done = reconcile(&app).await;
    assert_eq!(done.late_refunds, 1, "{done:?}");
    let (captures, captured, refunds, refunded) = ledger_totals(&app);
    assert_eq!((captures, refunds, captured - refunded), (1, 1, 0), "the wrong capture is returned in full, once");
    assert_eq!(reconcile(&app).await, Reconciled::default(), "nothing is owed any more");
    let notes = app.state.store.outbox_due(app.clock.now(), 100).await.unwrap();
    assert!(!notes.iter().any(|m| m.topic == "order.late_payment_refunded"), "not a late payment: {notes:?}");
}
