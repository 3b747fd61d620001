//! Who may do what: anonymous, customers, admins; and privacy between
//! customers.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{spawn_app, ADMIN_TOKEN};
use boxoffice::demo;

#[tokio::test]
async fn another_customers_hold_is_not_found_and_cannot_be_released() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let alice = app.customer("alice@example.com").await;
    // Same email, new session: still a different customer.
    let mallory = app.customer("alice@example.com").await;
    let h = app.hold(&alice, &event, json!({"seats": ["B2"]})).await.id();
    let path = format!("/v1/holds/{h}");

    app.get(&path, Some(&mallory)).await.assert_problem(404, "hold_not_found");
    app.send(Method::DELETE, &path, Some(&mallory), None).await.assert_problem(404, "hold_not_found");
    let mine = app.get(&path, Some(&alice)).await;
    assert_eq!(mine.body["status"], "held", "the owner's hold is untouched");
}

#[tokio::test]
async fn holds_need_a_valid_customer_session() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let path = format!("/v1/events/{event}/holds");
    let body = json!({"seats": ["A1"]});

    let anonymous = app.post(&path, None, body.clone()).await;
    anonymous.assert_problem(401, "unauthorized");
    assert_eq!(anonymous.headers["www-authenticate"], "Bearer");
    app.post(&path, Some("bxs_forged"), body.clone()).await.assert_problem(401, "unauthorized");
    // The admin token is not a customer session either.
    app.post(&path, Some(ADMIN_TOKEN), body).await.assert_problem(401, "unauthorized");
    assert_eq!(app.seat_statuses(&event).await["A1"], "available");
}

#[tokio::test]
async fn customers_cannot_call_admin_endpoints() {
    let app = spawn_app().await;
    let fan = app.customer("fan@example.com").await;
    let venue = app.post("/v1/venues", Some(&fan), demo::venue_json()).await;
    venue.assert_problem(403, "forbidden");
    app.post("/v1/venues", None, demo::venue_json()).await.assert_problem(401, "unauthorized");

    let event = app.demo_event(json!({})).await;
    let patch = app
        .send(Method::PATCH, &format!("/v1/events/{event}"), Some(&fan), Some(json!({"prices": {"standard": 1}})))
        .await;
    patch.assert_problem(403, "forbidden");
    let after = app.get(&format!("/v1/events/{event}"), None).await;
    assert_eq!(after.body["prices"]["standard"], 1500, "nothing changed");

    // And the admin can.
    let ok = app
        .send(
            Method::PATCH,
            &format!("/v1/events/{event}"),
            Some(ADMIN_TOKEN),
            Some(json!({"prices": {"standard": 1800}})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["prices"]["standard"], 1800);
}

#[tokio::test]
async fn a_session_stops_working_when_it_expires_even_if_cached() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"hold_ttl_seconds": 60})).await;
    let fan = app.customer("fan@example.com").await;
    let h = app.hold(&fan, &event, json!({"seats": ["F1"]})).await.id();
    assert_eq!(app.get(&format!("/v1/holds/{h}"), Some(&fan)).await.status, StatusCode::OK);
    // Sessions last 30 days by default.
    app.clock.advance(std::time::Duration::from_secs(30 * 24 * 3600));
    app.get(&format!("/v1/holds/{h}"), Some(&fan)).await.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn my_holds_lists_mine_and_never_anyone_elses() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let (alice, bob) = (app.customer("alice@example.com").await, app.customer("bob@example.com").await);
    let a = app.hold(&alice, &event, json!({"seats": ["K1"]})).await.id();
    app.hold(&bob, &event, json!({"seats": ["K2"]})).await;
    let mine = app.get("/v1/customers/me/holds", Some(&alice)).await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(mine.headers["cache-control"], "no-store");
    let ids: Vec<&str> = mine.body["data"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![a.as_str()]);
    app.get("/v1/customers/me/holds", None).await.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn signing_in_puts_the_stored_session_in_the_nodes_cache() {
    use boxoffice::domain::customer::TokenHash;
    use boxoffice::domain::time::Clock;
    let app = spawn_app().await;
    let token = app.customer("fan@example.com").await;
    let hash = TokenHash::of(&token);
    let (cached, cached_expiry) = app.state.sessions.get(&hash).expect("sign-in caches the session");
    let (stored, stored_expiry) =
        app.state.store.session_customer(hash, app.clock.now()).await.unwrap().expect("the session is stored");
    assert_eq!((cached.id.as_str(), cached.email.as_str()), (stored.id.as_str(), stored.email.as_str()));
    assert_eq!(cached_expiry, stored_expiry, "the cached session ends when the stored one does");
}
