//! The Redis seat-lock fast path in front of PostgreSQL, over HTTP: it
//! absorbs the stampede, and losing it never costs correctness.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;

use crate::helpers::{race, spawn_app_with, winners, Backend, Setup, TestApp};
use crate::redis_support::{redis_url, OwnRedis};

/// `n` fans race for one seat; returns how many got it.
async fn race_for_a7(app: &Arc<TestApp>, event: &str, n: usize) -> usize {
    let tokens = app.customers(n).await;
    let path = format!("/v1/events/{event}/holds");
    winners(&race(std::slice::from_ref(app), &tokens, |_| (path.clone(), json!({"seats": ["A7"]}))).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_clicks_on_one_seat_cost_about_one_database_write() {
    let app = Arc::new(spawn_app_with(Setup { backend: Backend::Postgres, redis_url: Some(redis_url()) }).await);
    let event = app.demo_event(json!({})).await;
    assert_eq!(race_for_a7(&app, &event, 1000).await, 1);
    let reached = app.state.booking.store_hold_attempts();
    assert!(reached <= 10, "{reached} of 1000 requests reached the database");
    assert_eq!(app.get("/readyz", None).await.body["checks"]["seat_locks"]["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_the_database_alone_still_sells_each_seat_once() {
    let mut redis = OwnRedis::start();
    let app = Arc::new(spawn_app_with(Setup { backend: Backend::Postgres, redis_url: Some(redis.url()) }).await);
    let event = app.demo_event(json!({})).await;
    redis.stop();

    assert_eq!(race_for_a7(&app, &event, 200).await, 1, "exactly one winner without Redis");
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::OK, "degraded, not down");
    assert_eq!(ready.body["checks"]["seat_locks"]["status"], "degraded");

    // Redis comes back: the node uses it again, no restart needed.
    redis.restart();
    assert!(fast_path_comes_back(&app, &event).await, "the fast path recovered on its own");
    let mut c = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let fan = app.customer("after@example.com").await;
    assert_eq!(app.hold(&fan, &event, json!({"seats": ["B1"]})).await.status, StatusCode::CREATED);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*seat:B1").query(&mut c).unwrap();
    assert_eq!(keys.len(), 1, "new holds are recorded in Redis again");
}

/// 300 fans, each wanting two neighbouring seats of row A (heavy overlap),
/// race while `disrupt` does something to Redis (it starts as the fans
/// connect and should keep at it for about a second, the race's length).
/// No seat may go to two holds, no request may fail with a 5xx, and the
/// seat map must agree with the winners. Returns what `disrupt` returned.
async fn race_while<F, T>(redis_url: String, disrupt: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let app = Arc::new(spawn_app_with(Setup { backend: Backend::Postgres, redis_url: Some(redis_url) }).await);
    let event = app.demo_event(json!({"max_tickets_per_customer": 100})).await;
    let tokens = app.customers(300).await;
    let want = |i: usize| vec![format!("A{}", i % 8 + 1), format!("A{}", i % 8 + 2)];
    let path = format!("/v1/events/{event}/holds");
    let disruptor = tokio::spawn(disrupt);
    let results = race(std::slice::from_ref(&app), &tokens, |i| (path.clone(), json!({ "seats": want(i) }))).await;
    let disrupted = disruptor.await.unwrap();
    let mut owner = std::collections::HashMap::new();
    for (i, r) in &results {
        assert!(r.status.as_u16() < 500, "no 5xx: {}", r.body);
        if r.status == StatusCode::CREATED {
            for s in want(*i) {
                assert!(owner.insert(s.clone(), r.id()).is_none(), "{s} sold twice");
            }
        }
    }
    let statuses = app.seat_statuses(&event).await;
    for n in 1..=9 {
        let s = format!("A{n}");
        assert_eq!(statuses[&s] == "held", owner.contains_key(&s), "seat {s} agrees with the winners");
    }
    disrupted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushing_redis_mid_race_never_double_sells() {
    let redis = OwnRedis::start();
    let url = redis.url();
    race_while(redis.url(), async move {
        let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        for _ in 0..100 {
            let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_redis_mid_race_never_double_sells() {
    let redis = OwnRedis::start();
    let url = redis.url();
    // The server comes back from the disruptor and is dropped (stopped)
    // when the test ends.
    let _redis = race_while(url, async move {
        tokio::task::spawn_blocking(move || {
            let mut redis = redis;
            std::thread::sleep(std::time::Duration::from_millis(100));
            redis.stop();
            std::thread::sleep(std::time::Duration::from_millis(300));
            redis.restart();
            redis
        })
        .await
        .unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_the_fast_path_and_cache_invalidation_work() {
    let redis = crate::redis_support::OwnRedisCluster::start();
    let cluster = crate::helpers::spawn_cluster(2, Some(redis.urls().join(","))).await;
    let (a, b) = (cluster.nodes[0].clone(), cluster.nodes[1].clone());
    let event = a.demo_event(json!({})).await;
    assert_eq!(a.get("/readyz", None).await.body["checks"]["seat_locks"]["status"], "ok");

    // A race split over both nodes, through the cluster's locks.
    let tokens = a.customers(200).await;
    let barrier = Arc::new(Barrier::new(tokens.len()));
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (node, barrier, event) = (cluster.nodes[i % 2].clone(), barrier.clone(), event.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                node.hold(&t, &event, json!({"seats": ["A7", "A8"]})).await.status
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::CREATED {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    let reached: u64 = cluster.nodes.iter().map(|n| n.state.booking.store_hold_attempts()).sum();
    assert!(reached <= 10, "{reached} requests reached the database");

    // Cache invalidation travels over the cluster's pub/sub.
    let path = format!("/v1/events/{event}");
    assert_eq!(b.get(&path, None).await.body["title"], "Opening Night");
    a.send(reqwest::Method::PATCH, &path, Some(crate::helpers::ADMIN_TOKEN), Some(json!({"title": "Encore"}))).await;
    let fresh = crate::helpers::eventually(std::time::Duration::from_secs(1), || async {
        b.get(&path, None).await.body["title"] == "Encore"
    })
    .await;
    assert!(fresh, "node B still serves the old title after 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_starts_and_sells_while_redis_is_down_then_uses_it_when_it_returns() {
    let mut redis = OwnRedis::start();
    redis.stop();
    let app = Arc::new(spawn_app_with(Setup { backend: Backend::Postgres, redis_url: Some(redis.url()) }).await);
    let event = app.demo_event(json!({})).await;
    assert_eq!(app.get("/readyz", None).await.body["checks"]["seat_locks"]["status"], "degraded");
    assert_eq!(race_for_a7(&app, &event, 100).await, 1);

    redis.restart();
    assert!(fast_path_comes_back(&app, &event).await, "the node connected to Redis once it came up");
}

/// Keeps holding (and releasing) a seat until `/readyz` reports the seat
/// locks `ok` again, for up to 10 s: the node reconnects in the background.
async fn fast_path_comes_back(app: &TestApp, event: &str) -> bool {
    let fan = app.customer("later@example.com").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let r = app.hold(&fan, event, json!({"seats": ["C1"]})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        app.send(reqwest::Method::DELETE, &format!("/v1/holds/{}", r.id()), Some(&fan), None).await;
        if app.get("/readyz", None).await.body["checks"]["seat_locks"]["status"] == "ok" {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}
