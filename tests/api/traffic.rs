//! Rate limits and load shedding over HTTP.

use std::sync::Arc;
use std::time::Duration;

use boxoffice::domain::hold::HoldStatus;
use boxoffice::domain::ids::HoldId;
use boxoffice::payments::sim::FaultsPatch;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app_tuned, spawn_app_with_tuned, spawn_cluster_tuned, Backend, Setup, ADMIN_TOKEN};
use crate::redis_support::redis_url;

#[tokio::test]
async fn a_customer_past_their_rate_gets_429_with_retry_after() {
    let app = spawn_app_tuned(|c| {
        c.rate_limit_customer_per_second = 1;
        c.rate_limit_customer_burst = 3;
    })
    .await;
    let (fan, other) = (app.customer("fan@example.com").await, app.customer("other@example.com").await);
    let limited_before = app.counter("boxoffice_rate_limited_total").await;
    for _ in 0..3 {
        assert_eq!(app.get("/v1/customers/me/holds", Some(&fan)).await.status, StatusCode::OK);
    }
    let limited = app.get("/v1/customers/me/holds", Some(&fan)).await;
    limited.assert_problem(429, "rate_limited");
    let retry: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(app.get("/v1/customers/me/holds", Some(&other)).await.status, StatusCode::OK, "per customer");
    // Per person, not per sign-in: a fresh session for the same email
    // shares the budget.
    let again = app.customer("fan@example.com").await;
    assert_ne!(again, fan);
    app.get("/v1/customers/me/holds", Some(&again)).await.assert_problem(429, "rate_limited");
    assert!(app.counter("boxoffice_rate_limited_total").await >= limited_before + 2.0, "both refusals are counted");
    for _ in 0..5 {
        let admin = app.post("/v1/venues", Some(ADMIN_TOKEN), boxoffice::demo::venue_json()).await;
        assert_eq!(admin.status, StatusCode::CREATED, "the operator is not rate limited");
    }
}

#[tokio::test]
async fn client_addresses_come_from_x_forwarded_for_only_when_trusted() {
    let app = spawn_app_tuned(|c| {
        c.rate_limit_ip_per_second = 1;
        c.rate_limit_ip_burst = 2;
        c.trust_forwarded_for = true;
    })
    .await;
    // The proxy appends the address it saw; whatever the client put before
    // it is ignored, so a made-up header does not buy a fresh budget.
    let get = |claimed: &'static str, seen: &'static str| {
        let req = app.client.get(app.url("/v1/events?limit=1")).header("x-forwarded-for", format!("{claimed}, {seen}"));
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(get("1.1.1.1", "203.0.113.1").await, StatusCode::OK);
    assert_eq!(get("2.2.2.2", "203.0.113.1").await, StatusCode::OK);
    assert_eq!(get("3.3.3.3", "203.0.113.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(get("3.3.3.3", "203.0.113.2").await, StatusCode::OK, "another client");
}

#[tokio::test]
async fn overload_sheds_browsing_at_once_while_checkout_keeps_working() {
    overload_sheds_browsing_while_checkout_works(None).await;
}

/// The same with the rate limits (and locks and rooms) in Redis.
#[tokio::test]
async fn overload_sheds_browsing_at_once_while_checkout_keeps_working_on_redis() {
    overload_sheds_browsing_while_checkout_works(Some(redis_url())).await;
}

/// Two slow payments fill the general capacity; browsing and made-up tokens
/// are shed, a fan's requests are shed before their rate limit is asked
/// (so shedding spends none of the fan's budget), and a third payment gets
/// through on the reserve while a crowd is shed.
async fn overload_sheds_browsing_while_checkout_works(redis_url: Option<String>) {
    let setup = Setup { backend: Backend::Sqlite, redis_url };
    let app = Arc::new(
        spawn_app_with_tuned(setup, |c| {
            c.max_in_flight = 3;
            c.reserved_in_flight = 1;
            c.rate_limit_customer_per_second = 1;
            c.rate_limit_customer_burst = 2;
        })
        .await,
    );
    let event = app.demo_event(json!({})).await;
    let shed_before = app.counter("boxoffice_shed_total").await;
    let mut holds = Vec::new();
    for i in 0..3 {
        let fan = app.customer(&format!("fan{i}@example.com")).await;
        let h = app.hold(&fan, &event, json!({"seats": [format!("A{}", i + 1)]})).await;
        holds.push((fan, h.id()));
    }
    let eager = app.customer("eager@example.com").await;
    // Two slow payments fill the general capacity.
    app.gateway().set_faults(FaultsPatch { latency_ms: Some(3_000), ..Default::default() }).unwrap();
    let slow: Vec<_> = holds[..2]
        .iter()
        .cloned()
        .map(|(fan, hold)| {
            let app = app.clone();
            tokio::spawn(async move { app.checkout(&fan, &hold, "k", "pm_card_visa").await })
        })
        .collect();
    for (_, hold) in &holds[..2] {
        let id = HoldId::parse(hold).unwrap();
        for _ in 0..200 {
            if app.state.store.hold(&id).await.unwrap().unwrap().status == HoldStatus::Checkout {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let browse = app.get(&format!("/v1/events/{event}"), None).await;
    browse.assert_problem(503, "overloaded");
    assert!(browse.headers.contains_key("retry-after"));
    // The reserve is for real sessions: a made-up token on the payment
    // route is shed like browsing, not let through to fail auth.
    let made_up = app.checkout("made-up-token", &holds[2].1, "junk", "pm_card_visa").await;
    made_up.assert_problem(503, "overloaded");
    // Shed before the rate limit is asked: five requests past a burst of
    // two are all 503, none 429 (asked first, the limit would refuse three).
    for _ in 0..5 {
        app.get("/v1/customers/me/holds", Some(&eager)).await.assert_problem(503, "overloaded");
    }
    // A crowd far past the limit, released at once, with a third payment
    // among them: the crowd is shed, the payment gets through on the
    // reserve.
    let crowd = 200;
    let barrier = Arc::new(tokio::sync::Barrier::new(crowd + 1));
    let shed: Vec<_> = (0..crowd)
        .map(|i| {
            let (app, barrier, event) = (app.clone(), barrier.clone(), event.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let path = if i % 2 == 0 { format!("/v1/events/{event}") } else { format!("/v1/events/{event}/seats") };
                app.get(&path, None).await
            })
        })
        .collect();
    let (fan, hold) = holds[2].clone();
    let paying = {
        let (app, barrier) = (app.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            app.checkout(&fan, &hold, "k", "pm_card_visa").await
        })
    };
    for r in shed {
        r.await.unwrap().assert_problem(503, "overloaded");
    }
    let paid = paying.await.unwrap();
    assert_eq!(paid.body["status"], "confirmed", "{}", paid.body);
    for t in slow {
        assert_eq!(t.await.unwrap().body["status"], "confirmed");
    }
    assert_eq!(app.get(&format!("/v1/events/{event}"), None).await.status, StatusCode::OK, "capacity is back");
    assert_eq!(app.get("/v1/customers/me/holds", Some(&eager)).await.status, StatusCode::OK);
    let shed = app.counter("boxoffice_shed_total").await;
    assert!(shed >= shed_before + crowd as f64 + 1.0, "every shed request is counted: {shed_before} -> {shed}");
}

/// Scaled out, a client's rate is one budget across every node (GCRA in
/// Redis, on Redis's clock), not one per node. The limit is 1 a second with
/// a burst of 3, so over `e` seconds at most `3 + e` requests pass; two
/// nodes with a budget each would pass 6 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_are_shared_by_every_node() {
    let cluster = spawn_cluster_tuned(2, Some(redis_url()), |c| {
        c.rate_limit_customer_per_second = 1;
        c.rate_limit_customer_burst = 3;
        c.rate_limit_ip_per_second = 1;
        c.rate_limit_ip_burst = 3;
        c.trust_forwarded_for = true;
    })
    .await;
    let fan = cluster.nodes[0].customer("fan@example.com").await;
    let started = std::time::Instant::now();
    let mut passed = 0;
    for i in 0..10 {
        let node = &cluster.nodes[i % 2];
        // Each request from its own address: only the customer limit binds.
        let r = node
            .client
            .get(node.url("/v1/customers/me/holds"))
            .bearer_auth(&fan)
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => assert!(r.headers().contains_key("retry-after")),
            other => panic!("{other}"),
        }
    }
    let elapsed = started.elapsed().as_secs() as usize;
    assert!(passed >= 3 && passed <= 3 + elapsed, "{passed} passed in about {elapsed} s");
    // One address across both nodes, anonymous: the address limit binds.
    let started = std::time::Instant::now();
    let mut passed = 0;
    for i in 0..10 {
        let node = &cluster.nodes[i % 2];
        let r = node.client.get(node.url("/v1/events?limit=1")).header("x-forwarded-for", "203.0.113.9");
        passed += usize::from(r.send().await.unwrap().status() == StatusCode::OK);
    }
    let elapsed = started.elapsed().as_secs() as usize;
    assert!(passed >= 3 && passed <= 3 + elapsed, "{passed} passed in about {elapsed} s");
}

/// Every request has a deadline: one still running at `request_timeout` is
/// answered with a 503 problem document. The clock is tokio's, paused, so
/// the 30 s pass without waiting.
#[tokio::test]
async fn a_request_past_its_deadline_gets_a_503_problem() {
    use axum::body::Body;
    use axum::http::Request;
    use boxoffice::api::HttpLimits;
    use tower::ServiceExt;

    let app = crate::helpers::spawn_app().await;
    let slow = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "finished"
        }),
    );
    let limits = HttpLimits { request_timeout: Duration::from_secs(30), ..HttpLimits::default() };
    let router = boxoffice::api::router_with(app.state.clone(), &limits, slow);
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let response = router.oneshot(Request::get("/slow").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let took = started.elapsed();
    assert!((Duration::from_secs(30)..Duration::from_secs(31)).contains(&took), "cut off at the deadline: {took:?}");
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["code"], "timeout", "{problem}");
}
