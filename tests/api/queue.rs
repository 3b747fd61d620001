//! The waiting room over HTTP, with the app's fake clock: one place per
//! fan, the pre-queue draw, paced admission, and admission tokens enforced
//! on holds and checkout. Every case runs on the in-process rooms and on
//! the Redis rooms; the last runs three nodes on one Redis queue.

use std::time::Duration;

use boxoffice::domain::draw::{permute, verify_commitment, DrawKey};
use boxoffice::domain::time::Clock;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, spawn_cluster, Backend, Reply, Setup, TestApp, ADMIN_TOKEN};
use crate::redis_support::redis_url;

/// Each case as two tests: `in_process::case` and `redis::case`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod in_process {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::spawn_app().await).await
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::spawn_redis_app().await).await
            })*
        }
    };
}

on_both_backends!(
    one_place_per_fan_and_the_prequeue_waits_for_the_draw,
    fans_are_let_in_at_the_rate_and_only_their_own_token_admits_them,
    the_stream_reports_the_entry_until_the_turn_comes,
    a_retried_checkout_gets_its_stored_answer_after_the_token_has_expired,
    a_live_change_of_pace_keeps_the_room_on_and_admits_at_the_new_rate,
    a_fan_who_lets_the_hold_lapse_gives_the_place_back_when_it_is_swept,
    a_fan_still_waiting_when_the_event_sells_out_is_told_so,
    a_lapsed_ga_hold_taken_back_by_another_fan_gives_the_place_back_at_once,
    a_sold_out_event_takes_no_more_fans,
);

/// The embedded store with scale-out rooms (and seat locks) in Redis.
async fn spawn_redis_app() -> TestApp {
    spawn_app_with(Setup { backend: Backend::Sqlite, redis_url: Some(redis_url()) }).await
}

/// An event with a waiting room (60 fans a minute, at most `max_active`
/// shopping) going on sale 100 s from now.
async fn queued_event(app: &TestApp, max_active: u32) -> String {
    let now = app.clock.now();
    app.demo_event(json!({
        "on_sale_at": now.plus_secs(100).to_rfc3339(),
        "waiting_room": {
            "enabled": true, "admission_rate_per_minute": 60, "max_active_shoppers": max_active,
            "prequeue_opens_at": now.to_rfc3339(),
        }
    }))
    .await
}

async fn join(app: &TestApp, token: &str, event: &str) -> Reply {
    app.post(&format!("/v1/events/{event}/queue"), Some(token), json!({})).await
}

/// `n` fans, each signed in and joined once (201): (session token, entry id).
async fn join_fans(app: &TestApp, event: &str, n: u32) -> Vec<(String, String)> {
    let mut fans = Vec::new();
    for i in 0..n {
        let token = app.customer(&format!("fan{i}@example.com")).await;
        let e = join(app, &token, event).await;
        assert_eq!(e.status, StatusCode::CREATED, "{}", e.body);
        fans.push((token, e.body["entry_id"].as_str().unwrap().to_owned()));
    }
    fans
}

async fn entry(app: &TestApp, token: &str, event: &str, entry_id: &str) -> Value {
    let r = app.get(&format!("/v1/events/{event}/queue/{entry_id}"), Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body
}

async fn hold_with(app: &TestApp, token: &str, event: &str, seat: &str, admission: Option<&str>) -> Reply {
    hold_body_with(app, token, event, json!({"seats": [seat]}), admission).await
}

async fn hold_body_with(app: &TestApp, token: &str, event: &str, body: Value, admission: Option<&str>) -> Reply {
    let mut req = app.client.post(app.url(&format!("/v1/events/{event}/holds"))).bearer_auth(token).json(&body);
    if let Some(a) = admission {
        req = req.header("Admission-Token", a);
    }
    crate::helpers::reply(req.send().await.unwrap()).await
}

async fn checkout_with(app: &TestApp, token: &str, hold: &str, key: &str, admission: Option<&str>) -> Reply {
    let mut req = app
        .client
        .post(app.url(&format!("/v1/holds/{hold}/checkout")))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&json!({"payment_method": "pm_card_visa"}));
    if let Some(a) = admission {
        req = req.header("Admission-Token", a);
    }
    crate::helpers::reply(req.send().await.unwrap()).await
}

async fn one_place_per_fan_and_the_prequeue_waits_for_the_draw(app: TestApp) {
    let event = queued_event(&app, 100).await;
    let fan = app.customer("fan@example.com").await;
    let first = join(&app, &fan, &event).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["status"], "prequeue");
    assert_eq!(first.body["position"], Value::Null, "no place before the draw");
    assert_eq!(first.body["estimated_wait_seconds"], 100);
    let again = join(&app, &fan, &event).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["entry_id"], first.body["entry_id"]);
    let other = app.customer("other@example.com").await;
    let r =
        app.get(&format!("/v1/events/{event}/queue/{}", first.body["entry_id"].as_str().unwrap()), Some(&other)).await;
    r.assert_problem(404, "entry_not_found");
    // No waiting room, no queue.
    let plain = app.demo_event(json!({})).await;
    join(&app, &fan, &plain).await.assert_problem(409, "no_waiting_room");
    assert_eq!(hold_with(&app, &fan, &plain, "A1", None).await.status, StatusCode::CREATED, "no token needed");
}

async fn fans_are_let_in_at_the_rate_and_only_their_own_token_admits_them(app: TestApp) {
    let event = queued_event(&app, 100).await;
    let fans = join_fans(&app, &event, 5).await;
    let overview = app.get(&format!("/v1/events/{event}/queue"), Some(ADMIN_TOKEN)).await;
    let commitment = overview.body["draw_commitment"].as_str().unwrap().to_owned();
    assert_eq!(overview.body["draw_key"], Value::Null, "the key stays secret until the draw");
    assert_eq!(overview.body["drawn"], Value::Null, "nobody is drawn before the on-sale");
    app.clock.advance(Duration::from_secs(102)); // two seconds into the sale: two fans in
    let mut admitted = Vec::new();
    let mut positions = Vec::new();
    let mut placed = Vec::new();
    for (token, entry_id) in &fans {
        let e = entry(&app, token, &event, entry_id).await;
        positions.push(e["position"].as_u64().unwrap());
        placed.push((entry_id.clone(), e["position"].as_u64().unwrap()));
        match e["status"].as_str().unwrap() {
            "admitted" => admitted.push((token.clone(), e["admission_token"].as_str().unwrap().to_owned())),
            "waiting" => assert!(e["estimated_wait_seconds"].as_u64().unwrap() <= 3, "{e}"),
            other => panic!("{other}: {e}"),
        }
    }
    positions.sort();
    assert_eq!(positions, vec![1, 2, 3, 4, 5], "one distinct place each");
    assert_eq!(admitted.len(), 2, "60 a minute: two in two seconds");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in ["boxoffice_queue_joins_total", "boxoffice_queue_admitted_total"] {
        assert!(metrics.contains(name), "{name} is exported");
    }
    let overview = app.get(&format!("/v1/events/{event}/queue"), Some(ADMIN_TOKEN)).await;
    let key_hex = overview.body["draw_key"].as_str().unwrap();
    assert!(verify_commitment(key_hex, &commitment), "the published key is the one committed to");
    // An auditor recomputes every drawn fan's place from what is published.
    let (key, drawn) = (DrawKey::from_hex(key_hex).unwrap(), overview.body["drawn"].as_u64().unwrap());
    assert_eq!(drawn, 5, "{}", overview.body);
    for (entry_id, position) in &placed {
        let slot: u64 = entry_id.strip_prefix("qe_").unwrap().parse().unwrap();
        assert_eq!(permute(&key, drawn, slot) + 1, *position, "{entry_id}");
    }

    let (fan, admission) = &admitted[0];
    let (other_fan, other_admission) = &admitted[1];
    let rejections_before = app.counter("boxoffice_queue_rejections_total").await;
    hold_with(&app, fan, &event, "A1", None).await.assert_problem(403, "not_admitted");
    hold_with(&app, fan, &event, "A1", Some(other_admission)).await.assert_problem(403, "not_admitted");
    hold_with(&app, fan, &event, "A1", Some("forged.token")).await.assert_problem(403, "not_admitted");
    let waiting_fan = fans.iter().find(|(t, _)| t != fan && t != other_fan).unwrap();
    hold_with(&app, &waiting_fan.0, &event, "A2", Some(admission)).await.assert_problem(403, "not_admitted");
    let held = hold_with(&app, fan, &event, "A1", Some(admission)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
    let rejections = app.counter("boxoffice_queue_rejections_total").await;
    assert!(
        rejections >= rejections_before + 4.0,
        "each refused token is counted: {rejections_before} -> {rejections}"
    );

    // Checkout needs the token too; paying frees the place for the next fan.
    let hold_id = held.id();
    checkout_with(&app, fan, &hold_id, "without-token", None).await.assert_problem(403, "not_admitted");
    let paid = checkout_with(&app, fan, &hold_id, "with-token", Some(admission)).await;
    assert_eq!(paid.body["status"], "confirmed", "{}", paid.body);
    let overview = app.get(&format!("/v1/events/{event}/queue"), Some(ADMIN_TOKEN)).await;
    assert_eq!(overview.body["active"], 1, "the buyer's place is free: {}", overview.body);
    let after = hold_with(&app, fan, &event, "A5", Some(admission)).await;
    after.assert_problem(403, "not_admitted"); // a finished turn's token admits no more

    // A token for another event does not open this one.
    let second = queued_event(&app, 100).await;
    let e = join(&app, fan, &second).await;
    app.clock.advance(Duration::from_secs(101));
    let there = entry(&app, fan, &second, e.body["entry_id"].as_str().unwrap()).await;
    let there_token = there["admission_token"].as_str().expect("admitted at the second event").to_owned();
    hold_with(&app, fan, &event, "A3", Some(&there_token)).await.assert_problem(403, "not_admitted");
    // Turns end: after the claim window and shopping time the token expires.
    app.clock.advance(Duration::from_secs(120 + 900 + 1));
    hold_with(&app, other_fan, &event, "A4", Some(other_admission)).await.assert_problem(403, "not_admitted");
}

/// An organizer speeds the room up during the sale with a `PATCH` that names
/// only the rate: the room stays on, and the next second lets in fans at the
/// new pace. Turning it off takes `enabled: false`.
async fn a_live_change_of_pace_keeps_the_room_on_and_admits_at_the_new_rate(app: TestApp) {
    let event = queued_event(&app, 100).await;
    app.clock.advance(Duration::from_secs(100)); // on sale: fans now queue in order
    let path = format!("/v1/events/{event}");
    let patch = |body: Value| app.send(Method::PATCH, &path, Some(ADMIN_TOKEN), Some(body));
    let faster = patch(json!({"waiting_room": {"admission_rate_per_minute": 600}})).await;
    assert_eq!(faster.status, StatusCode::OK, "{}", faster.body);
    assert_eq!(faster.body["waiting_room"]["enabled"], true, "{}", faster.body);
    assert_eq!(faster.body["waiting_room"]["admission_rate_per_minute"], 600);
    assert_eq!(faster.body["waiting_room"]["max_active_shoppers"], 100, "unnamed settings keep their values");

    let fans = join_fans(&app, &event, 20).await;
    app.clock.advance(Duration::from_secs(1));
    let mut admitted = 0;
    for (token, entry_id) in &fans {
        if entry(&app, token, &event, entry_id).await["status"] == "admitted" {
            admitted += 1;
        }
    }
    // 60 a minute would let in one fan a second; 600 a minute lets in ten.
    assert!((3..=10).contains(&admitted), "{admitted} admitted in one second at 600 a minute");
    hold_with(&app, &fans[19].0, &event, "A1", None).await.assert_problem(403, "not_admitted");

    let off = patch(json!({"waiting_room": {"enabled": false}})).await;
    assert_eq!(off.body["waiting_room"]["enabled"], false, "{}", off.body);
    join(&app, &fans[0].0, &event).await.assert_problem(409, "no_waiting_room");
    assert_eq!(hold_with(&app, &fans[19].0, &event, "A1", None).await.status, StatusCode::CREATED, "no token needed");
}

/// A demo event (60 s holds) whose room lets `max_active` fans shop at
/// once, and `max_active + 1` fans who joined in the pre-queue, two seconds
/// into the sale: the shoppers (session and admission tokens) and the one
/// fan still waiting (session token and entry).
async fn shoppers_and_one_waiting(app: &TestApp, max_active: u32) -> (String, Vec<(String, String)>, (String, String)) {
    let now = app.clock.now();
    let event = app
        .demo_event(json!({
            "on_sale_at": now.plus_secs(100).to_rfc3339(),
            "hold_ttl_seconds": 60,
            "waiting_room": {
                "enabled": true, "admission_rate_per_minute": 60, "max_active_shoppers": max_active,
                "prequeue_opens_at": now.to_rfc3339(),
            }
        }))
        .await;
    let fans = join_fans(app, &event, max_active + 1).await;
    app.clock.advance(Duration::from_secs(102));
    let (mut shoppers, mut waiting) = (Vec::new(), None);
    for (token, entry_id) in &fans {
        let e = entry(app, token, &event, entry_id).await;
        match e["status"].as_str().unwrap() {
            "admitted" => shoppers.push((token.clone(), e["admission_token"].as_str().unwrap().to_owned())),
            "waiting" => waiting = Some((token.clone(), entry_id.clone())),
            other => panic!("{other}: {e}"),
        }
    }
    assert_eq!(shoppers.len(), max_active as usize, "a roomful shopping");
    (event, shoppers, waiting.expect("one waiting"))
}

/// One shopper at a time: the admitted fan holds a seat and walks away. When
/// the sweeper ends the lapsed hold, the place goes to the next fan at once,
/// not when the turn's 15 minutes run out.
async fn a_fan_who_lets_the_hold_lapse_gives_the_place_back_when_it_is_swept(app: TestApp) {
    let (event, shoppers, (next, next_entry)) = shoppers_and_one_waiting(&app, 1).await;
    let (fan, admission) = shoppers[0].clone();
    let held = hold_with(&app, &fan, &event, "A1", Some(&admission)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);

    app.clock.advance(Duration::from_secs(61)); // the hold lapses; the turn has 14 minutes left
    assert_eq!(entry(&app, &next, &event, &next_entry).await["status"], "waiting", "the room is full");
    let swept = boxoffice::jobs::sweeper::run_once(&app.state.booking, &app.state.queue).await.unwrap();
    assert_eq!(swept.expired, 1);
    app.clock.advance(Duration::from_secs(1));
    let e = entry(&app, &next, &event, &next_entry).await;
    assert_eq!(e["status"], "admitted", "the next fan is in: {e}");
    hold_with(&app, &fan, &event, "A2", Some(&admission)).await.assert_problem(403, "not_admitted");
}

/// Two shoppers at a time, three fans: one lets a GA hold lapse, and the
/// other's next GA hold takes its places back (lazy expiry, before any
/// sweep). That ends the lapsed hold there and then, so its fan's place
/// frees at once and the waiting fan is let in, without the sweeper.
async fn a_lapsed_ga_hold_taken_back_by_another_fan_gives_the_place_back_at_once(app: TestApp) {
    let (event, shoppers, (next, next_entry)) = shoppers_and_one_waiting(&app, 2).await;
    let ((walker, walker_pass), (buyer, buyer_pass)) = (shoppers[0].clone(), shoppers[1].clone());
    let floor = |count: u32| json!({"ga": {"area": "floor", "count": count}});
    let lapsing = hold_body_with(&app, &walker, &event, floor(2), Some(&walker_pass)).await;
    assert_eq!(lapsing.status, StatusCode::CREATED, "{}", lapsing.body);

    app.clock.advance(Duration::from_secs(61)); // the hold lapses; nobody sweeps
    assert_eq!(entry(&app, &next, &event, &next_entry).await["status"], "waiting", "the room is full");
    let took = hold_body_with(&app, &buyer, &event, floor(1), Some(&buyer_pass)).await;
    assert_eq!(took.status, StatusCode::CREATED, "{}", took.body);
    app.clock.advance(Duration::from_secs(1));
    let e = entry(&app, &next, &event, &next_entry).await;
    assert_eq!(e["status"], "admitted", "the walker's place went to the next fan: {e}");
    hold_body_with(&app, &walker, &event, floor(1), Some(&walker_pass)).await.assert_problem(403, "not_admitted");
    let swept = boxoffice::jobs::sweeper::run_once(&app.state.booking, &app.state.queue).await.unwrap();
    assert_eq!(swept.expired, 0, "the hold had already ended");
}

/// A two-seat hall with a room for one shopper at a time and three fans:
/// the first fan drawn buys both seats. The second, whose turn that frees,
/// keeps the turn; the third, still waiting, is told the event is sold out
/// (with their place and no estimate) instead of waiting for a turn that
/// would find nothing, and the stream says so too.
async fn a_fan_still_waiting_when_the_event_sells_out_is_told_so(app: TestApp) {
    let now = app.clock.now();
    let venue = app.create_venue(boxoffice::demo::sized_venue_json("Tiny Hall", "Smalltown", 1, 2, 0)).await;
    let event = app
        .create_event(
            &venue,
            json!({
                "prices": {"premium": 2500},
                "on_sale_at": now.plus_secs(100).to_rfc3339(),
                "waiting_room": {
                    "enabled": true, "admission_rate_per_minute": 60, "max_active_shoppers": 1,
                    "prequeue_opens_at": now.to_rfc3339(),
                }
            }),
        )
        .await;
    let fans = join_fans(&app, &event, 3).await;
    app.clock.advance(Duration::from_secs(102));
    // Each fan's place, from the published draw (asking a waiting fan
    // before the sale would make this node count early).
    let overview = app.get(&format!("/v1/events/{event}/queue"), Some(ADMIN_TOKEN)).await;
    let key = DrawKey::from_hex(overview.body["draw_key"].as_str().unwrap()).unwrap();
    let mut by_place = fans.clone();
    by_place.sort_by_key(|(_, entry_id)| permute(&key, 3, entry_id.strip_prefix("qe_").unwrap().parse().unwrap()));
    let [(buyer, buyer_entry), (second, second_entry), (third, third_entry)] = &by_place[..] else { unreachable!() };
    let turn = entry(&app, buyer, &event, buyer_entry).await;
    let admission = turn["admission_token"].as_str().expect("the first fan's turn").to_owned();
    let held = hold_body_with(&app, buyer, &event, json!({"seats": ["A1", "A2"]}), Some(&admission)).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
    let paid = checkout_with(&app, buyer, &held.id(), "pay-all", Some(&admission)).await;
    assert_eq!(paid.body["status"], "confirmed", "{}", paid.body);

    app.clock.advance(Duration::from_secs(1)); // the freed place goes to the next fan
    let next = entry(&app, second, &event, second_entry).await;
    assert_eq!(next["status"], "admitted", "a turn that has come stays the fan's: {next}");
    let told = entry(&app, third, &event, third_entry).await;
    assert_eq!(told["status"], "sold_out", "{told}");
    assert_eq!(told["position"], 3, "the place they had: {told}");
    assert_eq!(told["estimated_wait_seconds"], Value::Null);
    let mut stream = app
        .client
        .get(app.url(&format!("/v1/events/{event}/queue/{third_entry}/stream")))
        .bearer_auth(third)
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await.expect("an event at once");
    let first = String::from_utf8(first.unwrap().unwrap().to_vec()).unwrap();
    assert!(first.contains("\"status\":\"sold_out\""), "the stream says so: {first}");
}

/// A two-seat hall sells both seats, then its organizer turns a room on: a
/// fan who comes now is told it is sold out instead of being put in line.
/// Another event with seats left still queues.
async fn a_sold_out_event_takes_no_more_fans(app: TestApp) {
    let venue = app.create_venue(boxoffice::demo::sized_venue_json("Tiny Hall", "Smalltown", 1, 2, 0)).await;
    let event = app.create_event(&venue, json!({"prices": {"premium": 2500}})).await;
    let buyer = app.customer("buyer@example.com").await;
    let held = app.hold(&buyer, &event, json!({"seats": ["A1", "A2"]})).await;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
    let paid = app.checkout(&buyer, &held.id(), "pay-both", "pm_card_visa").await;
    assert_eq!(paid.body["status"], "confirmed", "{}", paid.body);
    let room = json!({"waiting_room": {"enabled": true, "admission_rate_per_minute": 60, "max_active_shoppers": 10}});
    let on = app.send(Method::PATCH, &format!("/v1/events/{event}"), Some(ADMIN_TOKEN), Some(room.clone())).await;
    assert_eq!(on.status, StatusCode::OK, "{}", on.body);
    let fan = app.customer("fan@example.com").await;
    join(&app, &fan, &event).await.assert_problem(409, "sold_out");

    let open =
        app.create_event(&venue, json!({"prices": {"premium": 2500}, "waiting_room": room["waiting_room"]})).await;
    assert_eq!(join(&app, &fan, &open).await.status, StatusCode::CREATED, "seats left: the fan queues");
}

/// The entry over SSE: the pre-queue state at once, then the turn when it
/// comes, and the stream ends.
async fn the_stream_reports_the_entry_until_the_turn_comes(app: TestApp) {
    let event = queued_event(&app, 100).await;
    let fan = app.customer("fan@example.com").await;
    let entry_id = join(&app, &fan, &event).await.body["entry_id"].as_str().unwrap().to_owned();
    let other = app.customer("other@example.com").await;
    let path = format!("/v1/events/{event}/queue/{entry_id}/stream");
    app.get(&path, Some(&other)).await.assert_problem(404, "entry_not_found");
    let mut response = app.client.get(app.url(&path)).bearer_auth(&fan).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut seen: Vec<Value> = Vec::new();
    let mut buffer = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                    let entry: Value = serde_json::from_str(data.trim()).unwrap();
                    if entry["status"] == "prequeue" && seen.is_empty() {
                        app.clock.advance(Duration::from_secs(102)); // the sale opens; the turn comes
                    }
                    seen.push(entry);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the stream ended");
    let statuses: Vec<&str> = seen.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.first(), Some(&"prequeue"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"admitted"), "{statuses:?}");
    assert!(seen.last().unwrap()["admission_token"].is_string());
}

async fn a_retried_checkout_gets_its_stored_answer_after_the_token_has_expired(app: TestApp) {
    let event = queued_event(&app, 100).await;
    let fan = app.customer("fan@example.com").await;
    let entry_id = join(&app, &fan, &event).await.body["entry_id"].as_str().unwrap().to_owned();
    app.clock.advance(Duration::from_secs(101));
    let admitted = entry(&app, &fan, &event, &entry_id).await;
    let token = admitted["admission_token"].as_str().expect("admitted").to_owned();
    let hold = hold_with(&app, &fan, &event, "A1", Some(&token)).await.id();
    let paid = checkout_with(&app, &fan, &hold, "pay-1", Some(&token)).await;
    assert_eq!(paid.body["status"], "confirmed", "{}", paid.body);
    app.clock.advance(Duration::from_secs(120 + 900 + 1)); // the token has expired
    let replay = checkout_with(&app, &fan, &hold, "pay-1", None).await;
    assert_eq!((replay.status, &replay.body), (paid.status, &paid.body), "the stored answer, without a token");
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    checkout_with(&app, &fan, &hold, "pay-2", None).await.assert_problem(403, "not_admitted");
}

/// Three nodes behind a load balancer share one queue in Redis: fans who
/// join through different nodes get distinct places, and the room lets
/// them in at the event's rate, not once per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_run_one_queue() {
    let cluster = spawn_cluster(3, Some(redis_url())).await;
    let first = &cluster.nodes[0];
    let event = queued_event(first, 100).await;
    let mut fans = Vec::new();
    for i in 0..9 {
        let node = &cluster.nodes[i % 3];
        let token = node.customer(&format!("fan{i}@example.com")).await;
        let e = join(node, &token, &event).await;
        assert_eq!(e.status, StatusCode::CREATED, "{}", e.body);
        fans.push((token, e.body["entry_id"].as_str().unwrap().to_owned()));
    }
    // A second join through another node finds the same place.
    let again = join(&cluster.nodes[1], &fans[0].0, &event).await;
    assert_eq!((again.status, again.body["entry_id"].as_str()), (StatusCode::OK, Some(fans[0].1.as_str())));
    first.clock.advance(Duration::from_secs(103)); // three seconds into the sale: three fans in
    let mut positions = Vec::new();
    let mut admitted = 0;
    for (i, (token, entry_id)) in fans.iter().enumerate() {
        let e = entry(&cluster.nodes[(i + 1) % 3], token, &event, entry_id).await;
        positions.push(e["position"].as_u64().unwrap());
        admitted += usize::from(e["status"] == "admitted");
    }
    positions.sort();
    assert_eq!(positions, (1..=9).collect::<Vec<_>>(), "one queue, one distinct place each");
    assert_eq!(admitted, 3, "60 a minute for the event, however many nodes");
    let overview = cluster.nodes[2].get(&format!("/v1/events/{event}/queue"), Some(ADMIN_TOKEN)).await;
    assert_eq!((overview.body["joined"].as_u64(), overview.body["admitted"].as_u64()), (Some(9), Some(3)));
}

/// With the rooms' Redis down, joins and status reads get a clear 503
/// (fans retry) while a fan already admitted keeps holding with the token.
/// This Redis keeps nothing on disk, so when it is back the room starts
/// afresh and fans join again.
#[tokio::test]
async fn with_redis_down_the_queue_says_so_and_admitted_fans_keep_shopping() {
    let mut redis = crate::redis_support::OwnRedis::start();
    let app = spawn_app_with(Setup { backend: Backend::Sqlite, redis_url: Some(redis.url()) }).await;
    let event = queued_event(&app, 100).await;
    let fan = app.customer("fan@example.com").await;
    let entry_id = join(&app, &fan, &event).await.body["entry_id"].as_str().unwrap().to_owned();
    app.clock.advance(Duration::from_secs(101));
    let token = entry(&app, &fan, &event, &entry_id).await["admission_token"].as_str().expect("admitted").to_owned();

    redis.stop();
    let path = format!("/v1/events/{event}/queue/{entry_id}");
    let down = app.get(&path, Some(&fan)).await;
    down.assert_problem(503, "queue_unavailable");
    assert!(down.headers.contains_key("retry-after"));
    let late = app.customer("late@example.com").await;
    join(&app, &late, &event).await.assert_problem(503, "queue_unavailable");
    let held = hold_with(&app, &fan, &event, "A1", Some(&token)).await;
    assert_eq!(held.status, StatusCode::CREATED, "the signed token still admits: {}", held.body);

    redis.restart();
    let back = crate::helpers::eventually(Duration::from_secs(10), || async {
        join(&app, &late, &event).await.status == StatusCode::CREATED
    })
    .await;
    assert!(back, "the queue takes joins again once Redis is back");
}
