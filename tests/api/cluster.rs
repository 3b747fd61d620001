//! Three stateless nodes on one PostgreSQL and one Redis, requests spread
//! over them as a load balancer would.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{eventually, race, sell_out, spawn_cluster, winners};
use crate::redis_support::redis_url;
use boxoffice::demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_fans_across_three_nodes_get_one_seat_once() {
    let cluster = spawn_cluster(3, Some(redis_url())).await;
    let first = &cluster.nodes[0];
    let event = first.demo_event(json!({})).await;
    let tokens = first.customers(1000).await;
    let path = format!("/v1/events/{event}/holds");
    let wins = winners(&race(&cluster.nodes, &tokens, |_| (path.clone(), json!({"seats": ["A7"]}))).await);
    assert_eq!(wins, 1);
    let reached: u64 = cluster.nodes.iter().map(|n| n.state.booking.store_hold_attempts()).sum();
    assert!(reached <= 10, "{reached} requests reached the database");
    for node in &cluster.nodes {
        assert_eq!(node.seat_statuses(&event).await["A7"], "held", "every node sees the same seat map");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn best_available_from_three_nodes_sells_out_exactly() {
    let cluster = spawn_cluster(3, Some(redis_url())).await;
    let first = &cluster.nodes[0];
    let venue = first.create_venue(demo::sized_venue_json("Cluster Hall", "Springfield", 15, 20, 0)).await;
    let event = first.create_event(&venue, json!({"max_tickets_per_customer": 100})).await;
    let tokens = first.customers(300).await;
    let owner = sell_out(&cluster.nodes, &tokens, &event).await;
    assert_eq!(owner.len(), 300);
    let a = first.get(&format!("/v1/events/{event}/availability"), None).await;
    assert_eq!((a.body["total"].as_u64(), a.body["held"].as_u64()), (Some(300), Some(300)));
}

/// An admin marks the event high-demand through `node`: an event change
/// every node hears of, which also pre-warms them.
async fn mark_high_demand(node: &crate::helpers::TestApp, event: &str) -> crate::helpers::Reply {
    let path = format!("/v1/events/{event}");
    node.send(reqwest::Method::PATCH, &path, Some(crate::helpers::ADMIN_TOKEN), Some(json!({"high_demand": true})))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_price_change_on_one_node_is_served_by_another_within_a_second() {
    let cluster = spawn_cluster(2, Some(redis_url())).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let event = a.demo_event(json!({})).await;
    // B caches the event (prices are cached for up to 10 s).
    assert_eq!(b.get(&format!("/v1/events/{event}"), None).await.body["prices"]["standard"], 1500);

    let patched = a
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/events/{event}"),
            Some(crate::helpers::ADMIN_TOKEN),
            Some(json!({"prices": {"standard": 2100}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let path = format!("/v1/events/{event}");
    let seen = eventually(std::time::Duration::from_secs(1), || async {
        b.get(&path, None).await.body["prices"]["standard"] == 2100
    })
    .await;
    assert!(seen, "node B still serves the old price after 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn marking_an_event_high_demand_prewarms_every_node() {
    let cluster = spawn_cluster(3, Some(redis_url())).await;
    let a = &cluster.nodes[0];
    let event = a.demo_event(json!({})).await;
    let id = boxoffice::domain::ids::EventId::parse(&event).unwrap();
    assert!(cluster.nodes.iter().all(|n| !n.state.catalog.has_event(&id)), "nothing cached yet");
    let r = mark_high_demand(a, &event).await;
    assert_eq!(r.body["high_demand"], true);
    let warmed = eventually(std::time::Duration::from_secs(1), || async {
        cluster.nodes.iter().all(|n| n.state.catalog.has_event(&id))
    })
    .await;
    assert!(warmed, "every node holds the event in its cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_watching_one_node_sees_holds_made_through_another() {
    let cluster = spawn_cluster(2, Some(redis_url())).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let event = a.demo_event(json!({})).await;
    let fan = a.customer("fan@example.com").await;
    let mut stream = b.client.get(b.url(&format!("/v1/events/{event}/seats/stream"))).send().await.unwrap();
    let mut buf = String::new();
    let (name, _) = crate::catalog::next_sse(&mut stream, &mut buf).await;
    assert_eq!(name, "snapshot");

    let h = a.hold(&fan, &event, json!({"seats": ["D4", "D5"]})).await.id();
    let (name, change) = crate::catalog::next_sse(&mut stream, &mut buf).await;
    assert_eq!((name.as_str(), &change), ("change", &json!({"seats": ["D4", "D5"], "status": "held"})));

    a.send(reqwest::Method::DELETE, &format!("/v1/holds/{h}"), Some(&fan), None).await;
    let (_, change) = crate::catalog::next_sse(&mut stream, &mut buf).await;
    assert_eq!(change, json!({"seats": ["D4", "D5"], "status": "available"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_share_event_details_through_redis_until_an_admin_changes_them() {
    let cluster = spawn_cluster(2, Some(redis_url())).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let event = a.demo_event(json!({})).await;
    let path = format!("/v1/events/{event}");
    assert_eq!(a.get(&path, None).await.body["title"], "Opening Night", "A reads the store and shares it");

    // Change the row behind the API's back: a node that read the store
    // now would see it; one served from the shared tier would not.
    retitle_behind_the_api(&cluster, &event).await;
    assert_eq!(b.get(&path, None).await.body["title"], "Opening Night", "B was served A's shared copy");

    // An admin change drops the shared copy and every node's own.
    let r = mark_high_demand(a, &event).await;
    assert_eq!(r.status, StatusCode::OK);
    let fresh = eventually(std::time::Duration::from_secs(1), || async {
        b.get(&path, None).await.body["title"] == "Changed Behind The API"
    })
    .await;
    assert!(fresh, "B reads the store again after the change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_share_availability_counts_through_redis_for_at_most_a_second() {
    use sqlx::Connection;
    let cluster = spawn_cluster(2, Some(redis_url())).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut db = sqlx::PgConnection::connect(cluster.database_url()).await.unwrap();
    let mut redis = redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    // The shared copy lives a real second; on a machine too slow to read it
    // twice within that, the attempt cannot tell anything: try a new event.
    for _ in 0..5 {
        let event = a.demo_event(json!({})).await;
        let path = format!("/v1/events/{event}/availability");
        let before = a.get(&path, None).await.body;
        assert_eq!(before["sold"].as_u64(), Some(0), "A reads the store and shares the counts");
        // Sell a seat behind the API: a node that read the store now would count it.
        sqlx::query("UPDATE seats SET status = 'sold', order_id = 'ord_behind' WHERE event_id = $1 AND seat_id = 'A1'")
            .bind(&event)
            .execute(&mut db)
            .await
            .unwrap();
        let seen = b.get(&path, None).await.body;
        let key = format!("{}{{{event}}}:availability", cluster.redis_prefix());
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut redis).unwrap();
        if ttl <= 0 {
            continue;
        }
        assert_eq!(seen, before, "B was served A's shared counts");
        // At most a second in Redis plus a second on B: about two seconds old at worst.
        assert!(ttl <= 1000, "the shared counts expire within a second: {ttl} ms");
        return;
    }
    panic!("five attempts never found the shared counts within their second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_share_search_results_through_redis_until_an_event_changes() {
    let cluster = spawn_cluster(2, Some(redis_url())).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let event = a.demo_event(json!({})).await;
    let titles = |r: &crate::helpers::Reply| -> Vec<String> {
        r.body["data"].as_array().unwrap().iter().map(|e| e["title"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(titles(&a.get("/v1/events?city=springfield", None).await), ["Opening Night"]);

    retitle_behind_the_api(&cluster, &event).await;
    assert_eq!(
        titles(&b.get("/v1/events?city=springfield", None).await),
        ["Opening Night"],
        "B was served A's shared result"
    );

    let r = mark_high_demand(a, &event).await;
    assert_eq!(r.status, StatusCode::OK);
    let fresh = eventually(std::time::Duration::from_secs(1), || async {
        titles(&b.get("/v1/events?city=springfield", None).await) == ["Changed Behind The API"]
    })
    .await;
    assert!(fresh, "an event change retires every shared search");
}

/// Changes an event's title in the database directly, so a node that
/// reads the store sees it and one served from a cache does not.
async fn retitle_behind_the_api(cluster: &crate::helpers::Cluster, event: &str) {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(cluster.database_url()).await.unwrap();
    sqlx::query("UPDATE events SET title = 'Changed Behind The API' WHERE id = $1")
        .bind(event)
        .execute(&mut db)
        .await
        .unwrap();
}
