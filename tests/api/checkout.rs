//! Checkout over real HTTP against the in-process gateway simulator: every
//! failure mode's documented answer, idempotency, tickets and check-in.

use std::sync::Arc;

use boxoffice::domain::ticket::TicketVerifier;
use boxoffice::payments::sim::FaultsPatch;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_on, spawn_app_tuned, Backend, Reply, TestApp, ADMIN_TOKEN};

async fn held(app: &TestApp, token: &str, event: &str, seats: &[&str]) -> String {
    let r = app.hold(token, event, json!({ "seats": seats })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.id()
}

fn captures(app: &TestApp) -> usize {
    app.gateway().ledger().iter().filter(|e| e.kind == "capture").count()
}

async fn hold_status(app: &TestApp, token: &str, hold: &str) -> String {
    app.get(&format!("/v1/holds/{hold}"), Some(token)).await.body["status"].as_str().unwrap().to_owned()
}

async fn a_paid_order_gets_tickets_that_check_in_once(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1", "A2"]).await;
    let r = app.checkout(&fan, &hold, "k1", "pm_card_visa").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "confirmed");
    assert_eq!(r.body["hold_id"], hold.as_str());
    assert_eq!(r.body["failure_code"], serde_json::Value::Null);
    let tickets = r.body["tickets"].as_array().unwrap().clone();
    let mut seats: Vec<&str> = tickets.iter().map(|t| t["seat"].as_str().unwrap()).collect();
    seats.sort();
    assert_eq!(seats, ["A1", "A2"]);
    assert_eq!(captures(&app), 1);
    let amount = r.body["amount"].as_i64().unwrap();
    assert_eq!(app.gateway().ledger()[0].amount, amount, "the gateway charged the order's amount");
    let statuses = app.seat_statuses(&event).await;
    assert_eq!((statuses["A1"].as_str(), statuses["A2"].as_str()), ("sold", "sold"));
    assert_eq!(hold_status(&app, &fan, &hold).await, "purchased");

    // The order is the fan's alone.
    let order = r.id();
    assert_eq!(app.get(&format!("/v1/orders/{order}"), Some(&fan)).await.body["status"], "confirmed");
    let other = app.customer("other@example.com").await;
    app.get(&format!("/v1/orders/{order}"), Some(&other)).await.assert_problem(404, "order_not_found");
    app.checkout(&other, &hold, "k-other", "pm_card_visa").await.assert_problem(404, "hold_not_found");
    let mine = app.get("/v1/customers/me/orders", Some(&fan)).await;
    assert_eq!(mine.body["data"].as_array().unwrap().len(), 1);
    assert!(app.get("/v1/customers/me/orders", Some(&other)).await.body["data"].as_array().unwrap().is_empty());

    // Codes verify offline with the published key alone.
    let key = app.get("/v1/tickets/public-key", None).await;
    let verifier = TicketVerifier::from_public_key(key.body["public_key"].as_str().unwrap()).unwrap();
    let code = tickets[0]["code"].as_str().unwrap();
    let claims = verifier.verify(code).unwrap();
    assert_eq!(
        (claims.ticket_id.as_str(), claims.event_id.as_str()),
        (tickets[0]["id"].as_str().unwrap(), event.as_str())
    );

    // The QR code, for its owner only.
    let qr = app.client.get(app.url(tickets[0]["qr_url"].as_str().unwrap())).bearer_auth(&fan).send().await.unwrap();
    assert_eq!(qr.headers()["content-type"], "image/svg+xml");
    assert!(qr.text().await.unwrap().contains("<svg"));
    app.get(tickets[0]["qr_url"].as_str().unwrap(), Some(&other)).await.assert_problem(404, "ticket_not_found");

    // Check-in: once valid, then already used; tampering and forgery are invalid.
    let app = &app;
    let scan = |code: String| async move { app.post("/v1/checkins", Some(ADMIN_TOKEN), json!({ "code": code })).await };
    let first = scan(code.to_owned()).await;
    assert_eq!(first.body["result"], "valid", "{}", first.body);
    assert_eq!(first.body["ticket"]["seat"], tickets[0]["seat"]);
    assert_eq!(scan(code.to_owned()).await.body["result"], "already_used");
    let mut tampered = code.to_owned().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(scan(String::from_utf8(tampered).unwrap()).await.body["result"], "invalid");
    let forged = boxoffice::domain::ticket::TicketSigner::from_seed(&[9; 32]).sign(&claims);
    assert_eq!(scan(forged).await.body["result"], "invalid");
    // At another event's door the ticket is invalid, and not used up.
    let second = tickets[1]["code"].as_str().unwrap().to_owned();
    let elsewhere =
        app.post("/v1/checkins", Some(ADMIN_TOKEN), json!({ "code": second, "event_id": "evt_other" })).await;
    assert_eq!(elsewhere.body["result"], "invalid");
    let here = app.post("/v1/checkins", Some(ADMIN_TOKEN), json!({ "code": second, "event_id": event })).await;
    assert_eq!(here.body["result"], "valid");
    let by_fan = app.post("/v1/checkins", Some(&fan), json!({ "code": code })).await;
    assert!(matches!(by_fan.status.as_u16(), 401 | 403), "{}", by_fan.body);
}

#[tokio::test]
async fn a_paid_order_gets_tickets_that_check_in_once_on_sqlite() {
    a_paid_order_gets_tickets_that_check_in_once(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_paid_order_gets_tickets_that_check_in_once_on_postgres() {
    a_paid_order_gets_tickets_that_check_in_once(Backend::Postgres).await;
}

/// design.md's failure table, row by row: what the order says and what
/// became of the hold.
#[tokio::test]
async fn each_failure_mode_gets_its_documented_answer() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"max_tickets_per_customer": 20})).await;
    let fan = app.customer("fan@example.com").await;
    let rows: &[(&str, &str, Option<&str>, &str)] = &[
        ("pm_card_chargeDeclined", "failed", Some("card_declined"), "released"),
        ("pm_card_chargeDeclinedInsufficientFunds", "failed", Some("insufficient_funds"), "released"),
        ("pm_card_chargeDeclinedIncorrectNumber", "failed", Some("incorrect_number"), "held"),
        ("pm_card_chargeDeclinedIncorrectCvc", "failed", Some("incorrect_cvc"), "held"),
        ("pm_card_chargeDeclinedExpiredCard", "failed", Some("expired_card"), "held"),
        ("pm_card_chargeDeclinedFraudulent", "failed", Some("fraudulent"), "released"),
        ("pm_card_chargeDeclinedProcessingError", "failed", Some("processing_error"), "held"),
        ("pm_card_threeDSecure2Required", "requires_action", None, "checkout"),
        ("pm_card_processing", "payment_pending", None, "checkout"),
        ("pm_card_bankTimeout", "payment_pending", None, "checkout"),
        ("pm_card_captureWrongAmount", "failed", Some("amount_mismatch"), "held"),
        ("pm_card_nonexistent", "failed", Some("invalid_payment_method"), "held"),
    ];
    for (i, (pm, status, code, hold_after)) in rows.iter().enumerate() {
        let seat = format!("C{}", i + 1);
        let hold = held(&app, &fan, &event, &[&seat]).await;
        let r = app.checkout(&fan, &hold, &format!("key-{i}"), pm).await;
        assert_eq!(r.status, StatusCode::OK, "{pm}: {}", r.body);
        assert_eq!(r.body["status"], *status, "{pm}: {}", r.body);
        assert_eq!(r.body["failure_code"].as_str(), *code, "{pm}: {}", r.body);
        assert_eq!(hold_status(&app, &fan, &hold).await, *hold_after, "{pm}");
        assert!(r.body["tickets"].as_array().unwrap().is_empty(), "{pm}");
        let seat_now = app.seat_statuses(&event).await[&seat].clone();
        let expected_seat = if *hold_after == "released" { "available" } else { "held" };
        assert_eq!(seat_now, expected_seat, "{pm}");
        if *pm == "pm_card_threeDSecure2Required" {
            assert!(r.body["action_url"].as_str().unwrap().contains("/authenticate"), "{}", r.body);
        }
    }
    // 13: the wrong-amount capture was refunded, not kept.
    let ledger = app.gateway().ledger();
    let refunded: i64 = ledger.iter().filter(|e| e.kind == "refund").map(|e| e.amount).sum();
    let wrong = ledger.iter().find(|e| e.kind == "capture").unwrap();
    assert_eq!(refunded, wrong.amount, "{ledger:?}");
    // A hold that stayed can be paid with another card.
    let fixable = held(&app, &fan, &event, &["D1"]).await;
    let failed = app.checkout(&fan, &fixable, "d1-a", "pm_card_chargeDeclinedExpiredCard").await;
    assert_eq!(failed.body["status"], "failed");
    let paid = app.checkout(&fan, &fixable, "d1-b", "pm_card_visa").await;
    assert_eq!(paid.body["status"], "confirmed", "{}", paid.body);
    assert_eq!(paid.id(), failed.id(), "the same order, paid by its second attempt");
    // A hold that was released cannot be paid.
    let released = held(&app, &fan, &event, &["D2"]).await;
    app.checkout(&fan, &released, "d2-a", "pm_card_chargeDeclined").await;
    app.checkout(&fan, &released, "d2-b", "pm_card_visa").await.assert_problem(409, "hold_not_active");
}

#[tokio::test]
async fn an_unsupported_currency_fails_clearly_and_releases() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"currency": "XTS"})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1"]).await;
    let r = app.checkout(&fan, &hold, "k", "pm_card_visa").await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["failure_code"].as_str()),
        (Some("failed"), Some("currency_not_supported"))
    );
    assert_eq!(hold_status(&app, &fan, &hold).await, "released");
}

#[tokio::test]
async fn checkout_needs_a_live_hold_and_an_idempotency_key() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"hold_ttl_seconds": 60})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1"]).await;
    let no_key =
        app.post(&format!("/v1/holds/{hold}/checkout"), Some(&fan), json!({"payment_method": "pm_card_visa"})).await;
    no_key.assert_problem(400, "idempotency_key_required");
    app.checkout(&fan, &hold, "bad key", "pm_card_visa").await.assert_problem(400, "invalid_idempotency_key");
    app.checkout(&fan, &hold, "k", "").await.assert_problem(422, "invalid_payment_method");
    app.checkout(&fan, "hld_nope", "k2", "pm_card_visa").await.assert_problem(404, "hold_not_found");
    let anonymous = app
        .client
        .post(app.url(&format!("/v1/holds/{hold}/checkout")))
        .header("Idempotency-Key", "k3")
        .json(&json!({"payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    app.clock.advance(std::time::Duration::from_secs(60));
    app.checkout(&fan, &hold, "k4", "pm_card_visa").await.assert_problem(410, "hold_expired");
    assert_eq!(captures(&app), 0, "nothing was charged");
}

#[tokio::test]
async fn the_same_idempotency_key_replays_refuses_other_bodies_and_pays_once_under_concurrency() {
    let app = Arc::new(spawn_app().await);
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1"]).await;
    let first = app.checkout(&fan, &hold, "same", "pm_card_visa").await;
    let again = app.checkout(&fan, &hold, "same", "pm_card_visa").await;
    assert_eq!((first.status, &first.body), (again.status, &again.body), "the identical response");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    app.checkout(&fan, &hold, "same", "pm_card_mastercard").await.assert_problem(422, "idempotency_key_mismatch");
    // A failed checkout is replayed as it was, too.
    let h2 = held(&app, &fan, &event, &["A2"]).await;
    let declined = app.checkout(&fan, &h2, "d", "pm_card_chargeDeclined").await;
    assert_eq!(app.checkout(&fan, &h2, "d", "pm_card_chargeDeclined").await.body, declined.body);
    assert_eq!(captures(&app), 1);

    // 50 requests with one key at once: one payment; the rest are told the
    // key is in use, or get the replay.
    app.gateway().set_faults(FaultsPatch { latency_ms: Some(300), ..Default::default() }).unwrap();
    let h3 = held(&app, &fan, &event, &["A3"]).await;
    let n = 50;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (app, barrier, fan, h3) = (app.clone(), barrier.clone(), fan.clone(), h3.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                app.checkout(&fan, &h3, "burst", "pm_card_visa").await
            })
        })
        .collect();
    let mut orders = std::collections::HashSet::new();
    for t in tasks {
        let r: Reply = t.await.unwrap();
        match r.status.as_u16() {
            200 => {
                assert_eq!(r.body["status"], "confirmed");
                orders.insert(r.id());
            }
            409 => assert_eq!(r.code(), "idempotency_key_in_use", "{}", r.body),
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(orders.len(), 1);
    assert_eq!(captures(&app), 2, "one more payment for the burst, not fifty");
}

#[tokio::test]
async fn a_lost_gateway_response_still_confirms_with_one_charge() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1"]).await;
    app.gateway().set_faults(FaultsPatch { drop_responses_next: Some(1), ..Default::default() }).unwrap();
    let r = app.checkout(&fan, &hold, "k", "pm_card_visa").await;
    assert_eq!(r.body["status"], "confirmed", "{}", r.body);
    assert_eq!(captures(&app), 1);
}

#[tokio::test]
async fn three_d_secure_and_pending_payments_settle_when_the_order_is_read() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let h1 = held(&app, &fan, &event, &["A1"]).await;
    let r = app.checkout(&fan, &h1, "k1", "pm_card_threeDSecure2Required").await;
    assert_eq!(r.body["status"], "requires_action");
    let url = r.body["action_url"].as_str().unwrap().to_owned();
    let done = app.client.post(&url).form(&[("outcome", "succeeded")]).send().await.unwrap();
    assert_eq!(done.status(), 200);
    let after = app.get(&format!("/v1/orders/{}", r.id()), Some(&fan)).await;
    assert_eq!(after.body["status"], "confirmed", "{}", after.body);
    assert_eq!(after.body["tickets"].as_array().unwrap().len(), 1);

    let h2 = held(&app, &fan, &event, &["A2"]).await;
    let pending = app.checkout(&fan, &h2, "k2", "pm_card_processing").await;
    assert_eq!(pending.body["status"], "payment_pending");
    let still = app.get(&format!("/v1/orders/{}", pending.id()), Some(&fan)).await;
    assert_eq!(still.body["status"], "payment_pending", "not settled yet at the gateway");
    app.clock.advance(std::time::Duration::from_millis(boxoffice::payments::sim::Faults::default().settle_after_ms));
    let settled = app.get(&format!("/v1/orders/{}", pending.id()), Some(&fan)).await;
    assert_eq!(settled.body["status"], "confirmed", "{}", settled.body);
    assert_eq!(app.seat_statuses(&event).await["A2"], "sold");
    assert_eq!(captures(&app), 2);
}

#[tokio::test]
async fn a_gateway_outage_leaves_orders_pending_and_then_the_breaker_answers_at_once() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    app.gateway().set_faults(FaultsPatch { outage: Some(true), ..Default::default() }).unwrap();
    // Each checkout tries 4 times (3 retries); the 5th failure in a row
    // opens the breaker, during the second checkout.
    for (who, seat) in [("a@example.com", "A1"), ("b@example.com", "A2")] {
        let fan = app.customer(who).await;
        let hold = held(&app, &fan, &event, &[seat]).await;
        let r = app.checkout(&fan, &hold, "k", "pm_card_visa").await;
        assert_eq!(r.body["status"], "payment_pending", "the outcome is unknown: {}", r.body);
        assert_eq!(hold_status(&app, &fan, &hold).await, "checkout", "kept for reconciliation");
    }
    let fan = app.customer("c@example.com").await;
    let hold = held(&app, &fan, &event, &["A3"]).await;
    let r = app.checkout(&fan, &hold, "k", "pm_card_visa").await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["failure_code"].as_str()),
        (Some("failed"), Some("gateway_unavailable")),
        "{}",
        r.body
    );
    assert_eq!(hold_status(&app, &fan, &hold).await, "held", "nothing was sent, so the fan may try again");
    assert_eq!(captures(&app), 0);
}

#[tokio::test]
async fn the_purchase_limit_counts_what_was_bought() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"max_tickets_per_customer": 2})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1", "A2"]).await;
    assert_eq!(app.checkout(&fan, &hold, "k", "pm_card_visa").await.body["status"], "confirmed");
    app.hold(&fan, &event, json!({"seats": ["B1"]})).await.assert_problem(422, "purchase_limit_exceeded");
}

async fn a_refund_frees_the_seats_voids_the_tickets_and_returns_the_money(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let event = app.demo_event(json!({"max_tickets_per_customer": 2})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1", "A2"]).await;
    let paid = app.checkout(&fan, &hold, "k", "pm_card_visa").await;
    let (order, amount) = (paid.id(), paid.body["amount"].as_i64().unwrap());
    let code = paid.body["tickets"][0]["code"].as_str().unwrap().to_owned();
    let path = format!("/v1/orders/{order}/refund");
    let by_fan = app.post(&path, Some(&fan), json!({})).await;
    assert!(matches!(by_fan.status.as_u16(), 401 | 403), "{}", by_fan.body);
    let refunded = app.post(&path, Some(ADMIN_TOKEN), json!({})).await;
    assert_eq!(refunded.status, StatusCode::OK, "{}", refunded.body);
    assert_eq!(refunded.body["status"], "refunded");
    assert!(refunded.body["tickets"].as_array().unwrap().iter().all(|t| t["status"] == "void"));
    let statuses = app.seat_statuses(&event).await;
    assert_eq!((statuses["A1"].as_str(), statuses["A2"].as_str()), ("available", "available"));
    let refunds: Vec<i64> = app.gateway().ledger().iter().filter(|e| e.kind == "refund").map(|e| e.amount).collect();
    assert_eq!(refunds, vec![amount]);
    // Again: the same answer, no second refund.
    assert_eq!(app.post(&path, Some(ADMIN_TOKEN), json!({})).await.body["status"], "refunded");
    assert_eq!(app.gateway().ledger().iter().filter(|e| e.kind == "refund").count(), 1);
    // A void ticket admits nobody; the fan may buy again up to the limit.
    let scan = app.post("/v1/checkins", Some(ADMIN_TOKEN), json!({ "code": code })).await;
    assert_eq!(scan.body["result"], "invalid");
    assert_eq!(app.hold(&fan, &event, json!({"seats": ["B1", "B2"]})).await.status, StatusCode::CREATED);
    let notes = app.state.store.outbox_due(boxoffice::domain::time::Clock::now(&app.clock), 100).await.unwrap();
    assert_eq!(notes.iter().filter(|m| m.topic == "order.refunded").count(), 1);
    // Only confirmed orders can be refunded.
    let other = app.customer("third@example.com").await;
    let h3 = held(&app, &other, &event, &["C2"]).await;
    let failed = app.checkout(&other, &h3, "k", "pm_card_chargeDeclined").await;
    app.post(&format!("/v1/orders/{}/refund", failed.id()), Some(ADMIN_TOKEN), json!({}))
        .await
        .assert_problem(409, "order_not_refundable");
    app.post("/v1/orders/ord_nope/refund", Some(ADMIN_TOKEN), json!({})).await.assert_problem(404, "order_not_found");
}

#[tokio::test]
async fn a_refund_frees_the_seats_voids_the_tickets_and_returns_the_money_on_sqlite() {
    a_refund_frees_the_seats_voids_the_tickets_and_returns_the_money(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_refund_frees_the_seats_voids_the_tickets_and_returns_the_money_on_postgres() {
    a_refund_frees_the_seats_voids_the_tickets_and_returns_the_money(Backend::Postgres).await;
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_a_day() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"hold_ttl_seconds": 3600})).await;
    let fan = app.customer("fan@example.com").await;
    let first = held(&app, &fan, &event, &["A1"]).await;
    let paid = app.checkout(&fan, &first, "k", "pm_card_visa").await;
    assert_eq!(paid.body["status"], "confirmed");
    app.clock.advance(std::time::Duration::from_secs(23 * 3600));
    let second = held(&app, &fan, &event, &["A2"]).await;
    app.checkout(&fan, &second, "k", "pm_card_visa").await.assert_problem(422, "idempotency_key_mismatch");
    app.clock.advance(std::time::Duration::from_secs(3600 + 1));
    let swept = boxoffice::jobs::sweeper::run_once(&app.state.booking, &app.state.queue).await.unwrap();
    assert!(swept.keys_reaped >= 1, "{swept:?}");
    let third = held(&app, &fan, &event, &["A3"]).await;
    let again = app.checkout(&fan, &third, "k", "pm_card_visa").await;
    assert_eq!(again.body["status"], "confirmed", "{}", again.body);
    assert_ne!(again.id(), paid.id(), "a new request, not the day-old replay");
}

/// Row 15: the fan gives up while 3-D Secure waits.
#[tokio::test]
async fn a_fan_can_cancel_a_payment_waiting_for_three_d_secure() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1"]).await;
    let waiting = app.checkout(&fan, &hold, "k", "pm_card_threeDSecure2Required").await;
    assert_eq!(waiting.body["status"], "requires_action");
    let path = format!("/v1/orders/{}/cancel", waiting.id());
    let other = app.customer("other@example.com").await;
    app.post(&path, Some(&other), json!({})).await.assert_problem(404, "order_not_found");
    let cancelled = app.post(&path, Some(&fan), json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(
        (cancelled.body["status"].as_str(), cancelled.body["failure_code"].as_str()),
        (Some("failed"), Some("canceled"))
    );
    assert_eq!(hold_status(&app, &fan, &hold).await, "released");
    assert_eq!(app.seat_statuses(&event).await["A1"], "available");
    app.post(&path, Some(&fan), json!({})).await.assert_problem(409, "order_not_cancellable");
    // A paid order cannot be cancelled (only refunded).
    let h2 = held(&app, &fan, &event, &["A2"]).await;
    let paid = app.checkout(&fan, &h2, "k2", "pm_card_visa").await;
    app.post(&format!("/v1/orders/{}/cancel", paid.id()), Some(&fan), json!({}))
        .await
        .assert_problem(409, "order_not_cancellable");
    assert_eq!(captures(&app), 1);
}

/// Row 2: the gateway answers too late; the retry with the same key gets
/// the stored result.
#[tokio::test]
async fn a_gateway_timeout_is_retried_with_the_same_key_and_charges_once() {
    let app = spawn_app_tuned(|c| c.gateway_timeout_ms = 300).await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1"]).await;
    app.gateway()
        .set_faults(FaultsPatch { slow_responses_next: Some(1), slow_response_ms: Some(5_000), ..Default::default() })
        .unwrap();
    let r = app.checkout(&fan, &hold, "k", "pm_card_visa").await;
    assert_eq!(r.body["status"], "confirmed", "{}", r.body);
    assert_eq!(captures(&app), 1);
}

/// Row 10: the gateway rate-limits; the client backs off and retries.
#[tokio::test]
async fn a_rate_limited_gateway_is_backed_off_and_the_payment_goes_through() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1"]).await;
    app.gateway().set_faults(FaultsPatch { rate_limit_next: Some(2), ..Default::default() }).unwrap();
    let r = app.checkout(&fan, &hold, "k", "pm_card_visa").await;
    assert_eq!(r.body["status"], "confirmed", "{}", r.body);
    assert_eq!(captures(&app), 1);
}

#[tokio::test]
async fn door_staff_scan_with_the_scanner_token_and_nothing_else() {
    const SCANNER: &str = "scanner-token-0123456789";
    let app = spawn_app_tuned(|c| c.scanner_token = Some(SCANNER.into())).await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let hold = held(&app, &fan, &event, &["A1"]).await;
    let paid = app.checkout(&fan, &hold, "k", "pm_card_visa").await;
    let code = paid.body["tickets"][0]["code"].as_str().unwrap().to_owned();
    let scan = app.post("/v1/checkins", Some(SCANNER), json!({ "code": code })).await;
    assert_eq!(scan.body["result"], "valid", "{}", scan.body);
    let venue = app.post("/v1/venues", Some(SCANNER), boxoffice::demo::venue_json()).await;
    venue.assert_problem(403, "forbidden");
    let refund = app.post(&format!("/v1/orders/{}/refund", paid.id()), Some(SCANNER), json!({})).await;
    refund.assert_problem(403, "forbidden");
}
