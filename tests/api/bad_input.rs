//! Nothing a client sends may cause a 5xx, a panic, or a half-written
//! change. Every rejection is a problem document with a code.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Reply, TestApp, ADMIN_TOKEN};
use boxoffice::demo;
use boxoffice::domain::time::Clock;

enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>),
    /// Raw bytes with no content type at all.
    Untyped(Vec<u8>),
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    auth: Auth,
    body: Body,
    status: u16,
    code: &'static str,
}

#[derive(Clone, Copy)]
enum Auth {
    None,
    Fan,
    Admin,
}

async fn send(app: &TestApp, fan: &str, c: &Case) -> Reply {
    let token = match c.auth {
        Auth::None => None,
        Auth::Fan => Some(fan),
        Auth::Admin => Some(ADMIN_TOKEN),
    };
    match &c.body {
        Body::None => app.send(c.method.clone(), &c.path, token, None).await,
        Body::Json(v) => app.send(c.method.clone(), &c.path, token, Some(v.clone())).await,
        Body::Raw(b) => app.send_raw(c.method.clone(), &c.path, token, b.clone()).await,
        Body::Untyped(b) => {
            let mut req = app.client.request(c.method.clone(), app.url(&c.path)).body(b.clone());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            crate::helpers::reply(req.send().await.unwrap()).await
        }
    }
}

/// Everything observable that a bad request might have changed.
async fn snapshot(app: &TestApp, event: &str) -> (Value, Value, Value) {
    (
        app.get(&format!("/v1/events/{event}/seats"), None).await.body,
        app.get(&format!("/v1/events/{event}"), None).await.body,
        app.get("/v1/events?limit=100", None).await.body,
    )
}

#[tokio::test]
async fn every_bad_request_gets_a_coded_4xx_and_changes_nothing() {
    let app = spawn_app().await;
    let venue = app.create_venue(demo::venue_json()).await;
    let event = app.create_event(&venue, json!({})).await;
    let fan = app.customer("fan@example.com").await;
    let holds = format!("/v1/events/{event}/holds");
    let hold = |body: Value, status, code, name| Case {
        name,
        method: Method::POST,
        path: holds.clone(),
        auth: Auth::Fan,
        body: Body::Json(body),
        status,
        code,
    };
    let ten_thousand: Vec<String> = (0..10_000).map(|i| format!("S{i}")).collect();
    let mut bad_venue = demo::venue_json();
    bad_venue["sections"][0]["seats"][1]["id"] = json!("A1");
    let mut no_coords = demo::venue_json();
    no_coords["sections"][0]["seats"][0].as_object_mut().unwrap().remove("x");

    let cases = vec![
        Case {
            name: "malformed JSON",
            method: Method::POST,
            path: holds.clone(),
            auth: Auth::Fan,
            body: Body::Raw(b"{\"seats\": [".to_vec()),
            status: 400,
            code: "malformed_json",
        },
        Case {
            name: "invalid UTF-8",
            method: Method::POST,
            path: holds.clone(),
            auth: Auth::Fan,
            body: Body::Raw(vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']),
            status: 400,
            code: "malformed_json",
        },
        Case {
            name: "empty body",
            method: Method::POST,
            path: holds.clone(),
            auth: Auth::Fan,
            body: Body::Raw(vec![]),
            status: 400,
            code: "malformed_json",
        },
        Case {
            name: "no content type",
            method: Method::POST,
            path: holds.clone(),
            auth: Auth::Fan,
            body: Body::Untyped(b"{\"seats\":[\"A1\"]}".to_vec()),
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "oversized body",
            method: Method::POST,
            path: holds.clone(),
            auth: Auth::Fan,
            body: Body::Raw(format!("{{\"seats\": [\"{}\"]}}", "A".repeat(400_000)).into_bytes()),
            status: 413,
            code: "payload_too_large",
        },
        hold(json!({"seats": ["A1", "Z99"]}), 422, "invalid_seat", "unknown seat"),
        hold(json!({"seats": ["A1", "A1"]}), 422, "invalid_seat", "duplicate seats"),
        hold(json!({"seats": ["A 1"]}), 422, "invalid_seat", "malformed seat id"),
        hold(json!({"seats": []}), 422, "empty_hold", "no seats"),
        hold(json!({}), 422, "empty_hold", "no selection"),
        hold(json!({"seats": ten_thousand}), 422, "purchase_limit_exceeded", "10,000-element array"),
        hold(json!({"best_available": {"count": 0}}), 422, "empty_hold", "zero count"),
        hold(json!({"best_available": {"count": -2}}), 422, "invalid_hold_request", "negative count"),
        hold(json!({"best_available": {"count": 7}}), 422, "purchase_limit_exceeded", "count above the event limit"),
        hold(json!({"best_available": {"count": 1_000_000_000_000i64}}), 422, "purchase_limit_exceeded", "huge count"),
        hold(json!({"best_available": {"count": 1e30}}), 422, "invalid_body", "count beyond 64 bits"),
        hold(json!({"best_available": {"count": "two"}}), 422, "invalid_body", "count as text"),
        hold(json!({"best_available": {"count": 2, "category": "royal"}}), 422, "invalid_seat", "unknown category"),
        hold(json!({"ga": {"area": "balcony", "count": 2}}), 422, "invalid_seat", "unknown GA area"),
        hold(json!({"ga": {"area": "floor", "count": -1}}), 422, "invalid_hold_request", "negative GA count"),
        hold(
            json!({"seats": ["A1"], "ga": {"area": "floor", "count": 1}}),
            422,
            "invalid_hold_request",
            "two selections",
        ),
        hold(json!({"seats": "A1"}), 422, "invalid_body", "seats as a string"),
        hold(json!({"seats": ["A1"], "extra": true}), 422, "invalid_body", "unknown field"),
        hold(json!([1, 2, 3]), 422, "invalid_body", "array instead of object"),
        Case {
            name: "unknown event id",
            method: Method::POST,
            path: "/v1/events/evt_00000000000000000000000000000000/holds".into(),
            auth: Auth::Fan,
            body: Body::Json(json!({"seats": ["A1"]})),
            status: 404,
            code: "event_not_found",
        },
        Case {
            name: "malformed event id",
            method: Method::POST,
            path: "/v1/events/..%2F..%2Fetc/holds".into(),
            auth: Auth::Fan,
            body: Body::Json(json!({"seats": ["A1"]})),
            status: 404,
            code: "event_not_found",
        },
        Case {
            name: "malformed hold id",
            method: Method::GET,
            path: "/v1/holds/hld_'%20OR%201=1".into(),
            auth: Auth::Fan,
            body: Body::None,
            status: 404,
            code: "hold_not_found",
        },
        Case {
            name: "unknown hold id",
            method: Method::DELETE,
            path: "/v1/holds/hld_00000000000000000000000000000000".into(),
            auth: Auth::Fan,
            body: Body::None,
            status: 404,
            code: "hold_not_found",
        },
        Case {
            name: "malformed event id on read",
            method: Method::GET,
            path: "/v1/events/42/availability".into(),
            auth: Auth::None,
            body: Body::None,
            status: 404,
            code: "event_not_found",
        },
        Case {
            name: "malformed venue id",
            method: Method::GET,
            path: "/v1/venues/ven_x".into(),
            auth: Auth::None,
            body: Body::None,
            status: 404,
            code: "venue_not_found",
        },
        Case {
            name: "invalid email",
            method: Method::POST,
            path: "/v1/sessions".into(),
            auth: Auth::None,
            body: Body::Json(json!({"email": "not-an-email"})),
            status: 422,
            code: "invalid_email",
        },
        Case {
            name: "duplicate seat ids in a venue",
            method: Method::POST,
            path: "/v1/venues".into(),
            auth: Auth::Admin,
            body: Body::Json(bad_venue),
            status: 422,
            code: "invalid_seat_map",
        },
        Case {
            name: "seat without coordinates",
            method: Method::POST,
            path: "/v1/venues".into(),
            auth: Auth::Admin,
            body: Body::Json(no_coords),
            status: 422,
            code: "invalid_seat_map",
        },
        Case {
            name: "event with zero hold TTL",
            method: Method::POST,
            path: "/v1/events".into(),
            auth: Auth::Admin,
            body: Body::Json({
                let mut e = demo::event_json(&venue, app.clock.now());
                e["hold_ttl_seconds"] = json!(0);
                e
            }),
            status: 422,
            code: "invalid_event",
        },
        Case {
            name: "event at an unknown venue",
            method: Method::POST,
            path: "/v1/events".into(),
            auth: Auth::Admin,
            body: Body::Json(demo::event_json("ven_00000000000000000000000000000000", app.clock.now())),
            status: 404,
            code: "venue_not_found",
        },
        Case {
            name: "patch to an unknown status",
            method: Method::PATCH,
            path: format!("/v1/events/{event}"),
            auth: Auth::Admin,
            body: Body::Json(json!({"status": "on_sale", "prices": {"standard": 1}})),
            status: 422,
            code: "invalid_event",
        },
        Case {
            name: "negative price",
            method: Method::PATCH,
            path: format!("/v1/events/{event}"),
            auth: Auth::Admin,
            body: Body::Json(json!({"prices": {"standard": -5}})),
            status: 422,
            code: "invalid_event",
        },
        Case {
            name: "bad search cursor",
            method: Method::GET,
            path: "/v1/events?cursor=%%%".into(),
            auth: Auth::None,
            body: Body::None,
            status: 400,
            code: "invalid_query",
        },
        Case {
            name: "bad search date",
            method: Method::GET,
            path: "/v1/events?from=tomorrow".into(),
            auth: Auth::None,
            body: Body::None,
            status: 400,
            code: "invalid_query",
        },
        Case {
            name: "search limit zero",
            method: Method::GET,
            path: "/v1/events?limit=0".into(),
            auth: Auth::None,
            body: Body::None,
            status: 400,
            code: "invalid_query",
        },
        Case {
            name: "queue entry id that is not UTF-8",
            method: Method::GET,
            path: format!("/v1/events/{event}/queue/%FF%FE"),
            auth: Auth::Fan,
            body: Body::None,
            status: 404,
            code: "not_found",
        },
        Case {
            name: "unknown route",
            method: Method::GET,
            path: "/v1/nothing".into(),
            auth: Auth::None,
            body: Body::None,
            status: 404,
            code: "not_found",
        },
        Case {
            name: "wrong method",
            method: Method::PUT,
            path: "/v1/sessions".into(),
            auth: Auth::None,
            body: Body::None,
            status: 405,
            code: "method_not_allowed",
        },
    ];

    let before = snapshot(&app, &event).await;
    for c in &cases {
        let r = send(&app, &fan, c).await;
        assert_eq!(r.status.as_u16(), c.status, "{}: {}", c.name, r.body);
        assert_eq!(r.content_type, "application/problem+json", "{}", c.name);
        assert_eq!(r.code(), c.code, "{}: {}", c.name, r.body);
    }
    assert_eq!(snapshot(&app, &event).await, before, "no bad request changed anything");
}

#[tokio::test]
async fn holds_before_on_sale_or_on_a_cancelled_event_are_refused() {
    let app = spawn_app().await;
    let venue = app.create_venue(demo::venue_json()).await;
    let later = app.clock.now().plus_secs(3600).to_rfc3339();
    let upcoming = app.create_event(&venue, json!({"on_sale_at": later})).await;
    let fan = app.customer("fan@example.com").await;
    let r = app.hold(&fan, &upcoming, json!({"seats": ["A1"]})).await;
    r.assert_problem(409, "event_not_on_sale");
    assert_eq!(r.body["event_status"], "scheduled");

    let live = app.create_event(&venue, json!({})).await;
    let cancel = app
        .send(Method::PATCH, &format!("/v1/events/{live}"), Some(ADMIN_TOKEN), Some(json!({"status": "cancelled"})))
        .await;
    assert_eq!(cancel.body["status"], "cancelled");
    app.hold(&fan, &live, json!({"seats": ["A1"]})).await.assert_problem(409, "event_not_on_sale");
    assert_eq!(app.seat_statuses(&live).await["A1"], "available");
}

#[tokio::test]
async fn the_purchase_limit_counts_every_active_hold_of_the_same_buyer() {
    let app = spawn_app().await;
    let event = app.demo_event(json!({"max_tickets_per_customer": 4})).await;
    let phone = app.customer("fan@example.com").await;
    let laptop = app.customer("FAN@example.com").await;
    assert_eq!(app.hold(&phone, &event, json!({"seats": ["A1", "A2", "A3"]})).await.status, 201);
    let r = app.hold(&laptop, &event, json!({"seats": ["B1", "B2"]})).await;
    r.assert_problem(422, "purchase_limit_exceeded");
    assert_eq!((r.body["limit"].as_u64(), r.body["already_held"].as_u64()), (Some(4), Some(3)));
    assert_eq!(app.hold(&laptop, &event, json!({"seats": ["B1"]})).await.status, 201);
    let s = app.seat_statuses(&event).await;
    assert_eq!(s["B2"], "available", "the refused hold left nothing behind");
}
