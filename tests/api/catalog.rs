//! Catalog reads and writes: venues, events, search, availability, seats,
//! and the operator endpoints.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{spawn_app, ADMIN_TOKEN};
use boxoffice::demo;
use boxoffice::domain::time::Clock;

#[tokio::test]
async fn search_filters_by_city_text_category_and_dates_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    let pune = app.create_venue(demo::sized_venue_json("Pune Hall", "Pune", 3, 5, 0)).await;
    let goa = app.create_venue(demo::sized_venue_json("Goa Hall", "Goa", 3, 5, 0)).await;
    let day = |d: u32| app.clock.now().plus_secs(d * 86_400).to_rfc3339();
    let mut ids = Vec::new();
    for d in 1..=7 {
        ids.push(
            app.create_event(
                &pune,
                json!({"title": format!("Jazz Night {d}"), "category": "concert", "starts_at": day(d)}),
            )
            .await,
        );
    }
    app.create_event(&pune, json!({"title": "Silent Film", "category": "movie", "starts_at": day(2)})).await;
    app.create_event(&goa, json!({"title": "Jazz on the Beach", "category": "concert", "starts_at": day(3)})).await;

    // Page through Pune jazz concerts, three at a time.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/events?city=pune&q=jazz&category=concert&limit=3".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get(&path, None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for e in page.body["data"].as_array().unwrap() {
            assert_eq!(e["city"], "Pune");
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "all seven, in start order, each once");

    let window = app.get(&format!("/v1/events?q=JAZZ&from={}&to={}", day(3), day(5)).replace('+', "%2B"), None).await;
    let titles: BTreeSet<&str> =
        window.body["data"].as_array().unwrap().iter().map(|e| e["title"].as_str().unwrap()).collect();
    assert_eq!(titles, BTreeSet::from(["Jazz Night 3", "Jazz Night 4", "Jazz on the Beach"]));
    let movies = app.get("/v1/events?category=movie", None).await;
    assert_eq!(movies.body["data"].as_array().unwrap().len(), 1);
    assert!(movies.headers["cache-control"].to_str().unwrap().contains("max-age"));
}

#[tokio::test]
async fn event_detail_availability_and_seats_agree_with_holds() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let detail = app.get(&format!("/v1/events/{event}"), None).await;
    assert_eq!(detail.body["status"], "on_sale");
    assert_eq!(detail.body["prices"], json!({"premium": 4000, "standard": 1500}));

    let h = app.hold(&fan, &event, json!({"seats": ["A1", "C1"]})).await;
    assert_eq!(h.body["amount"], 5500, "premium + standard");
    let ga = app.hold(&fan, &event, json!({"ga": {"area": "floor", "count": 3}})).await;
    assert_eq!(ga.body["amount"], 4500);
    assert_eq!(ga.body["ga"], json!({"area": "floor", "count": 3}));

    let seats = app.get(&format!("/v1/events/{event}/seats"), None).await;
    assert_eq!(seats.headers["cache-control"], "no-store");
    let list = seats.body["seats"].as_array().unwrap();
    assert_eq!(list.len(), 300);
    let a1 = list.iter().find(|s| s["id"] == "A1").unwrap();
    assert_eq!(
        (a1["status"].as_str(), a1["price"].as_i64(), a1["category"].as_str()),
        (Some("held"), Some(4000), Some("premium"))
    );
    assert_eq!(seats.body["ga_areas"][0]["available"], 497);

    let a = app.get(&format!("/v1/events/{event}/availability"), None).await;
    assert_eq!(a.body["total"], 800);
    assert_eq!(a.body["held"], 5);
    assert_eq!(a.body["available"], 795);
    assert_eq!(a.body["by_category"]["premium"], json!({"total": 40, "available": 39, "held": 1, "sold": 0}));
    app.get("/v1/events/evt_00000000000000000000000000000000", None).await.assert_problem(404, "event_not_found");
}

#[tokio::test]
async fn best_available_gives_adjacent_seats_in_the_best_category_first() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let r = app.hold(&fan, &event, json!({"best_available": {"count": 4}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let seats: Vec<&str> = r.body["seats"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(seats, ["A9", "A10", "A11", "A12"], "front row, centre, premium");
    let std = app.hold(&fan, &event, json!({"best_available": {"count": 2, "category": "standard"}})).await;
    let seats: Vec<&str> = std.body["seats"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(seats, ["C10", "C11"]);
}

#[tokio::test]
async fn venues_round_trip_and_admin_patches_take_effect() {
    let app = spawn_app().await;
    let venue = app.create_venue(demo::venue_json()).await;
    let got = app.get(&format!("/v1/venues/{venue}"), None).await;
    assert_eq!(got.body["sections"][0]["seats"].as_array().unwrap().len(), 300);
    assert_eq!(got.body["ga_areas"][0]["capacity"], 500);

    let event = app.create_event(&venue, json!({})).await;
    let patched = app
        .send(
            Method::PATCH,
            &format!("/v1/events/{event}"),
            Some(ADMIN_TOKEN),
            Some(json!({"prices": {"premium": 4500}, "high_demand": true, "hold_ttl_seconds": 120})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let fan = app.customer("fan@example.com").await;
    let h = app.hold(&fan, &event, json!({"seats": ["A3"]})).await;
    assert_eq!(h.body["amount"], 4500, "new price applies to new holds");
    let detail = app.get(&format!("/v1/events/{event}"), None).await;
    assert_eq!(detail.body["high_demand"], true);
    assert_eq!(detail.body["hold_ttl_seconds"], 120);
}

#[tokio::test]
async fn operator_endpoints_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["checks"]["database"]["backend"], "sqlite");
    let spec = app.get("/openapi.json", None).await;
    for path in ["/v1/sessions", "/v1/events/{id}/holds", "/v1/holds/{id}", "/v1/events/{id}/seats", "/v1/venues"] {
        assert!(spec.body["paths"][path].is_object(), "{path} is documented");
    }
    assert!(spec.body["components"]["securitySchemes"]["admin"].is_object());
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
}

/// Reads the next server-sent event: its name and JSON data.
pub(crate) async fn next_sse(resp: &mut reqwest::Response, buf: &mut String) -> (String, serde_json::Value) {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if name.is_empty() {
                continue; // keep-alive comment
            }
            return (name, serde_json::from_str(&data).unwrap());
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), resp.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("stream still open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn the_seat_stream_sends_a_snapshot_then_every_change() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let mut resp = app.client.get(app.url(&format!("/v1/events/{event}/seats/stream"))).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();

    let (name, snap) = next_sse(&mut resp, &mut buf).await;
    assert_eq!(name, "snapshot");
    assert_eq!(snap["seats"].as_array().unwrap().len(), 300);

    let h = app.hold(&fan, &event, json!({"seats": ["A5", "A6"]})).await.id();
    let (name, change) = next_sse(&mut resp, &mut buf).await;
    assert_eq!((name.as_str(), &change), ("change", &json!({"seats": ["A5", "A6"], "status": "held"})));

    app.send(Method::DELETE, &format!("/v1/holds/{h}"), Some(&fan), None).await;
    let (_, change) = next_sse(&mut resp, &mut buf).await;
    assert_eq!(change, json!({"seats": ["A5", "A6"], "status": "available"}));

    app.hold(&fan, &event, json!({"ga": {"area": "floor", "count": 2}})).await;
    let (name, ga) = next_sse(&mut resp, &mut buf).await;
    assert_eq!(name, "ga");
    assert_eq!(ga["ga_areas"][0]["available"], 498);
}

#[tokio::test]
async fn catalog_reads_carry_an_etag_and_answer_304_until_they_change() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let url = app.url(&format!("/v1/events/{event}"));
    let first = app.client.get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(first.headers()["cache-control"].to_str().unwrap().contains("max-age"));

    let again = app.client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().await.unwrap().is_empty());

    app.send(Method::PATCH, &format!("/v1/events/{event}"), Some(ADMIN_TOKEN), Some(json!({"title": "Second Night"})))
        .await;
    let changed = app.client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK, "a changed event is sent again");
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);

    let search = app.client.get(app.url("/v1/events")).send().await.unwrap();
    let tag = search.headers()["etag"].to_str().unwrap().to_owned();
    let same = app.client.get(app.url("/v1/events")).header("if-none-match", tag).send().await.unwrap();
    assert_eq!(same.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn seat_streams_beyond_the_node_limit_are_refused_politely() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({})).await;
    let path = format!("/v1/events/{event}/seats/stream");
    // Take every stream slot this node has.
    let all = app.state.seat_streams.available_permits() as u32;
    let taken = app.state.seat_streams.clone().acquire_many_owned(all).await.unwrap();
    let refused = app.get(&path, None).await;
    refused.assert_problem(503, "overloaded");
    assert!(refused.headers.contains_key("retry-after"));
    drop(taken);
    let mut ok = app.client.get(app.url(&path)).send().await.unwrap();
    let (name, _) = next_sse(&mut ok, &mut String::new()).await;
    assert_eq!(name, "snapshot");
}

#[tokio::test]
async fn letting_go_of_a_lapsed_hold_updates_the_seat_stream() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"hold_ttl_seconds": 30})).await;
    let fan = app.customer("fan@example.com").await;
    let h = app.hold(&fan, &event, json!({"seats": ["H1"]})).await.id();
    let mut resp = app.client.get(app.url(&format!("/v1/events/{event}/seats/stream"))).send().await.unwrap();
    let mut buf = String::new();
    let (_, snap) = next_sse(&mut resp, &mut buf).await;
    let h1 = snap["seats"].as_array().unwrap().iter().find(|s| s["id"] == "H1").unwrap().clone();
    assert_eq!(h1["status"], "held");

    app.clock.advance(std::time::Duration::from_secs(30));
    app.send(Method::DELETE, &format!("/v1/holds/{h}"), Some(&fan), None).await;
    let (name, change) = next_sse(&mut resp, &mut buf).await;
    assert_eq!((name.as_str(), &change), ("change", &json!({"seats": ["H1"], "status": "available"})));
}
