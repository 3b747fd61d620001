//! Expiry with a fake clock: lazy expiry makes seats available the moment
//! a hold lapses; the sweeper tidies afterwards. Nothing here sleeps.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;
use boxoffice::jobs::sweeper;

#[tokio::test]
async fn a_lapsed_hold_frees_its_seats_at_once_without_the_sweeper() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"hold_ttl_seconds": 60})).await;
    let (alice, bob) = (app.customer("alice@example.com").await, app.customer("bob@example.com").await);

    let first = app.hold(&alice, &event, json!({"seats": ["C3", "C4"]})).await;
    assert_eq!(first.status, StatusCode::CREATED);
    app.clock.advance(Duration::from_secs(59));
    app.hold(&bob, &event, json!({"seats": ["C4"]})).await.assert_problem(409, "seat_unavailable");

    app.clock.advance(Duration::from_secs(1));
    let second = app.hold(&bob, &event, json!({"seats": ["C4"]})).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);

    let old = app.get(&format!("/v1/holds/{}", first.id()), Some(&alice)).await;
    assert_eq!(old.body["status"], "expired");
    let seats = app.seat_statuses(&event).await;
    assert_eq!(seats["C3"], "available", "lapsed hold's other seat reads available");
    assert_eq!(seats["C4"], "held");
}

#[tokio::test]
async fn the_sweeper_ends_lapsed_holds_and_leaves_live_ones() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"hold_ttl_seconds": 120})).await;
    let fan = app.customer("fan@example.com").await;
    let early = app.hold(&fan, &event, json!({"seats": ["D1"]})).await.id();
    let ga = app.hold(&fan, &event, json!({"ga": {"area": "floor", "count": 2}})).await.id();
    app.clock.advance(Duration::from_secs(60));
    let late = app.hold(&fan, &event, json!({"seats": ["D2"]})).await.id();

    app.clock.advance(Duration::from_secs(60));
    let report = sweeper::run_once(&app.state.booking, &app.state.queue).await.unwrap();
    assert_eq!(report.expired, 2, "the seat hold and the GA hold made at t=0");
    assert_eq!(sweeper::run_once(&app.state.booking, &app.state.queue).await.unwrap().expired, 0, "idempotent");

    for (id, status) in [(&early, "expired"), (&ga, "expired"), (&late, "held")] {
        assert_eq!(app.get(&format!("/v1/holds/{id}"), Some(&fan)).await.body["status"], status, "{id}");
    }
    let seats = app.get(&format!("/v1/events/{event}/seats"), None).await;
    let floor = &seats.body["ga_areas"][0];
    assert_eq!(floor["available"], 500);
    let statuses = app.seat_statuses(&event).await;
    assert_eq!((statuses["D1"].as_str(), statuses["D2"].as_str()), ("available", "held"));
}

#[tokio::test]
async fn ga_places_come_back_when_a_hold_lapses() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"hold_ttl_seconds": 30, "max_tickets_per_customer": 100})).await;
    let tokens = app.customers(6).await;
    // 500 places: five fans take 100 each.
    for t in &tokens[..5] {
        let r = app.hold(t, &event, json!({"ga": {"area": "floor", "count": 100}})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let full = app.hold(&tokens[5], &event, json!({"ga": {"area": "floor", "count": 1}})).await;
    full.assert_problem(409, "seat_unavailable");
    assert_eq!(full.body["unavailable"], json!(["floor"]));

    app.clock.advance(Duration::from_secs(30));
    let r = app.hold(&tokens[5], &event, json!({"ga": {"area": "floor", "count": 100}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "lapsed GA holds are reclaimed at once: {}", r.body);
    let seats = app.get(&format!("/v1/events/{event}/seats"), None).await;
    assert_eq!(seats.body["ga_areas"][0]["available"], 400);
}

#[tokio::test]
async fn releasing_a_hold_frees_its_seats_immediately_and_is_repeatable() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let (alice, bob) = (app.customer("alice@example.com").await, app.customer("bob@example.com").await);
    let h = app.hold(&alice, &event, json!({"seats": ["E5", "E6"]})).await.id();
    let path = format!("/v1/holds/{h}");
    assert_eq!(app.send(Method::DELETE, &path, Some(&alice), None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.send(Method::DELETE, &path, Some(&alice), None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&path, Some(&alice)).await.body["status"], "released");
    let r = app.hold(&bob, &event, json!({"seats": ["E5", "E6"]})).await;
    assert_eq!(r.status, StatusCode::CREATED, "released seats are free at once: {}", r.body);
}
