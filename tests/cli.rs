//! The binary itself, as a newcomer runs it: `migrate`, and `demo`
//! answering over HTTP with its seeded event.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_boxoffice");

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` and returns it with what it printed up to and including
/// the first line containing `last`; gives up after 60 s rather than hang.
fn start_and_read(mut command: Command, last: &'static str) -> (Kill, String) {
    let mut child = Kill(command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut printed = String::new();
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        for line in lines.by_ref() {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains(last) {
                break;
            }
        }
        let _ = tx.send(printed);
        // Keep reading, so that a later print cannot fail on a closed pipe.
        lines.for_each(drop);
    });
    let printed = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no line with {last:?}"));
    (child, printed)
}

#[test]
fn migrate_creates_the_embedded_database_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).arg("migrate").env("BOXOFFICE_DATA_DIR", dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("boxoffice.db").exists());
    // Running it again is a no-op.
    let again = Command::new(BIN).arg("migrate").env("BOXOFFICE_DATA_DIR", dir.path()).output().unwrap();
    assert!(again.status.success());
}

#[test]
fn a_bad_setting_stops_the_process_with_its_name() {
    let out = Command::new(BIN).arg("migrate").env("BOXOFFICE_DATABASE_URL", "mysql://x").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database_url"));
}

#[tokio::test]
async fn demo_serves_a_seeded_event_and_prints_how_to_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(BIN);
    demo.arg("demo")
        .env("BOXOFFICE_DATA_DIR", dir.path())
        .env("BOXOFFICE_LISTEN", "127.0.0.1:0")
        .env_remove("BOXOFFICE_ADMIN_TOKEN");
    let (_child, banner) = start_and_read(demo, "Press Ctrl-C");
    let base = banner.split_whitespace().find(|w| w.starts_with("http://")).expect("a base URL").to_owned();
    let event = banner.split_whitespace().find(|w| w.starts_with("evt_")).expect("an event id").to_owned();
    assert!(banner.contains("admin token : bxa_"), "{banner}");
    assert!(banner.contains("curl"), "{banner}");

    let seats: serde_json::Value =
        reqwest::get(format!("{base}/v1/events/{event}/seats")).await.unwrap().json().await.unwrap();
    assert_eq!(seats["seats"].as_array().unwrap().len(), 300);
    assert_eq!(seats["ga_areas"][0]["capacity"], 500);
    let a7 = seats["seats"].as_array().unwrap().iter().find(|s| s["id"] == "A7").unwrap().clone();
    assert_eq!(a7["category"], "premium");
    let detail: serde_json::Value =
        reqwest::get(format!("{base}/v1/events/{event}")).await.unwrap().json().await.unwrap();
    assert_eq!(detail["status"], "on_sale");
}

/// `migrate` against PostgreSQL, on a database made for this test.
#[tokio::test]
async fn migrate_also_runs_against_postgres() {
    use sqlx::Connection;
    let admin =
        std::env::var("BOXOFFICE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("boxoffice_cli_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL is reachable (see .ci/run)");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let out = Command::new(BIN).arg("migrate").env("BOXOFFICE_DATABASE_URL", &url).output().unwrap();
    let tables: i64 = {
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('seats', 'holds', 'events')",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
        n
    };
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut c).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("postgres"));
    assert_eq!(tables, 3);
}

/// `gateway-sim` as an operator starts it: it prints where it listens and
/// takes a payment there.
#[tokio::test]
async fn gateway_sim_serves_the_stripe_subset_and_its_ledger() {
    let mut sim = Command::new(BIN);
    sim.args(["gateway-sim", "--listen", "127.0.0.1:0", "--api-key", "sk_test_cli"]);
    let (_child, line) = start_and_read(sim, "listening on");
    let base = line.split_whitespace().find(|w| w.starts_with("http://")).expect("a base URL").to_owned();
    let http = reqwest::Client::new();
    let pay = |key: &'static str| {
        http.post(format!("{base}/v1/payment_intents"))
            .bearer_auth(key)
            .header("Idempotency-Key", "cli-1")
            .form(&[("amount", "2500"), ("currency", "eur"), ("payment_method", "pm_card_visa"), ("confirm", "true")])
            .send()
    };
    assert_eq!(pay("sk_wrong").await.unwrap().status(), 401);
    let intent: serde_json::Value = pay("sk_test_cli").await.unwrap().json().await.unwrap();
    assert_eq!(intent["status"], "succeeded");
    let ledger: serde_json::Value = http.get(format!("{base}/sim/ledger")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ledger["entries"][0]["payment_intent"], intent["id"]);
    assert_eq!(ledger["entries"][0]["amount"], 2500);
}

const SERVE_ADMIN: &str = "cli-admin-token-0123456789";
const SIM_KEY: &str = "sk_test_cli_serve";

/// A `gateway-sim` process requiring [`SIM_KEY`], with `extra` arguments;
/// returns it and its base URL.
fn start_gateway(extra: &[&str]) -> (Kill, String) {
    let mut sim = Command::new(BIN);
    sim.args(["gateway-sim", "--listen", "127.0.0.1:0", "--api-key", SIM_KEY]).args(extra);
    let (sim, line) = start_and_read(sim, "listening on");
    let gateway = line.split_whitespace().find(|w| w.starts_with("http://")).expect("a base URL").to_owned();
    (sim, gateway)
}

/// `serve --role all` on `dir`, paying through `gateway` (with
/// `BOXOFFICE_PAYMENTS=stripe`), reconciling every second; returns the
/// process and its base URL, read from its "serving" log line.
fn start_serve(dir: &std::path::Path, gateway: &str) -> (Kill, String) {
    let mut serve = Command::new(BIN);
    serve
        .args(["serve", "--role", "all"])
        .env("BOXOFFICE_DATA_DIR", dir)
        .env("BOXOFFICE_LISTEN", "127.0.0.1:0")
        .env("BOXOFFICE_ADMIN_TOKEN", SERVE_ADMIN)
        .env("BOXOFFICE_PAYMENTS", "stripe")
        .env("BOXOFFICE_STRIPE_URL", gateway)
        .env("BOXOFFICE_STRIPE_KEY", SIM_KEY)
        .env("BOXOFFICE_RECONCILE_INTERVAL_SECONDS", "1")
        .env("BOXOFFICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Kill(serve.spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        let found = lines.by_ref().find(|l| l.contains("boxoffice is serving"));
        let _ = tx.send(found.unwrap_or_default());
        lines.for_each(drop);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("serve started");
    let addr = line.split("addr=").nth(1).and_then(|r| r.split_whitespace().next()).expect("an address").to_owned();
    (child, format!("http://{addr}"))
}

/// A POST with a fresh `Idempotency-Key`, answered as JSON.
async fn json_post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: serde_json::Value,
) -> serde_json::Value {
    let mut request = http.post(url).header("Idempotency-Key", uuid::Uuid::new_v4().to_string()).json(&body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    request.send().await.unwrap().json().await.unwrap()
}

/// A venue, an event on sale and a signed-in fan on `base`: the event id
/// and the fan's token.
async fn seed_sale(http: &reqwest::Client, base: &str) -> (String, String) {
    let venue = json_post(http, format!("{base}/v1/venues"), Some(SERVE_ADMIN), boxoffice::demo::venue_json()).await;
    let now = boxoffice::domain::time::Timestamp::from_millis(chrono::Utc::now().timestamp_millis());
    let event_json = boxoffice::demo::event_json(venue["id"].as_str().unwrap(), now);
    let event = json_post(http, format!("{base}/v1/events"), Some(SERVE_ADMIN), event_json).await;
    let session =
        json_post(http, format!("{base}/v1/sessions"), None, serde_json::json!({"email": "f@example.com"})).await;
    (event["id"].as_str().unwrap().to_owned(), session["session_token"].as_str().unwrap().to_owned())
}

/// The fan's hold on one seat: its id.
async fn hold_seat(http: &reqwest::Client, base: &str, event: &str, token: &str, seat: &str) -> String {
    let hold =
        json_post(http, format!("{base}/v1/events/{event}/holds"), Some(token), serde_json::json!({"seats": [seat]}))
            .await;
    hold["id"].as_str().unwrap().to_owned()
}

/// Pays for the fan's hold with `payment_method`: the order as answered.
async fn pay_hold(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    hold: &str,
    payment_method: &str,
) -> serde_json::Value {
    let body = serde_json::json!({"payment_method": payment_method});
    json_post(http, format!("{base}/v1/holds/{hold}/checkout"), Some(token), body).await
}

/// A checkout with a visa card, left running in the background.
fn checkout_in_background(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    hold: &str,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let request = http
        .post(format!("{base}/v1/holds/{hold}/checkout"))
        .bearer_auth(token)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&serde_json::json!({"payment_method": "pm_card_visa"}));
    tokio::spawn(request.send())
}

/// `serve` with `BOXOFFICE_PAYMENTS=stripe` pays through the HTTP client,
/// here against a separate `gateway-sim` process.
#[tokio::test]
async fn serve_pays_through_a_stripe_compatible_gateway_when_configured() {
    let (_sim, gateway) = start_gateway(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (_node, base) = start_serve(dir.path(), &gateway);
    let http = reqwest::Client::new();
    let (event, token) = seed_sale(&http, &base).await;
    let hold = hold_seat(&http, &base, &event, &token, "A7").await;
    let order = pay_hold(&http, &base, &token, &hold, "pm_card_visa").await;
    assert_eq!(order["status"], "confirmed", "{order}");
    let ledger: serde_json::Value =
        http.get(format!("{gateway}/sim/ledger")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ledger["entries"][0]["metadata"]["order_id"], order["id"], "the separate gateway took the payment");
}

/// The service is killed (SIGKILL) at each recovery point of a checkout and
/// started again on the same database; reconciliation reaches a consistent
/// state against the same gateway, which outlives it: no double charge, no
/// lost order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_mid_checkout_recovers_on_restart() {
    let (_sim, gateway) = start_gateway(&["--settle-after-ms", "1500"]);
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let (mut node, base) = start_serve(dir.path(), &gateway);
    let (event, token) = seed_sale(&http, &base).await;
    let ledger = || async {
        let l: serde_json::Value = reqwest::get(format!("{gateway}/sim/ledger")).await.unwrap().json().await.unwrap();
        l["entries"].as_array().unwrap().clone()
    };
    let faults = |patch: serde_json::Value| {
        let (http, gateway) = (http.clone(), gateway.clone());
        async move {
            assert!(http
                .patch(format!("{gateway}/sim/config"))
                .json(&patch)
                .send()
                .await
                .unwrap()
                .status()
                .is_success())
        }
    };

    // Point 1: killed after the gateway captured, before the answer was written.
    faults(serde_json::json!({"slow_responses_next": 1, "slow_response_ms": 30000})).await;
    let hold = hold_seat(&http, &base, &event, &token, "A1").await;
    let pay = checkout_in_background(&http, &base, &token, &hold);
    for _ in 0..200 {
        if !ledger().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ledger().await.len(), 1, "the gateway captured");
    let _ = node.0.kill();
    let _ = node.0.wait();
    assert!(pay.await.unwrap().is_err(), "the fan never got an answer");

    // Point 2: killed after the attempt was written, before the gateway ran it.
    let (mut node, base) = start_serve(dir.path(), &gateway);
    let hold2 = hold_seat(&http, &base, &event, &token, "A2").await;
    faults(serde_json::json!({"latency_ms": 30000})).await;
    let pay2 = checkout_in_background(&http, &base, &token, &hold2);
    for _ in 0..200 {
        let h: serde_json::Value = http
            .get(format!("{base}/v1/holds/{hold2}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if h["status"] == "checkout" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = node.0.kill();
    let _ = node.0.wait();
    let _ = pay2.await;
    faults(serde_json::json!({"latency_ms": 0})).await;

    // Point 3: a pending payment, killed before it was confirmed.
    let (mut node, base) = start_serve(dir.path(), &gateway);
    let hold3 = hold_seat(&http, &base, &event, &token, "A3").await;
    let pending = pay_hold(&http, &base, &token, &hold3, "pm_card_processing").await;
    assert_eq!(pending["status"], "payment_pending", "{pending}");
    let _ = node.0.kill();
    let _ = node.0.wait();

    // Restart: reconciliation settles what it can know.
    let (_node, base) = start_serve(dir.path(), &gateway);
    let mut orders = serde_json::Value::Null;
    for _ in 0..100 {
        orders = http
            .get(format!("{base}/v1/customers/me/orders"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let statuses: Vec<&str> =
            orders["data"].as_array().unwrap().iter().map(|o| o["status"].as_str().unwrap()).collect();
        if statuses.iter().filter(|s| **s == "confirmed").count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let by_hold =
        |h: &str| orders["data"].as_array().unwrap().iter().find(|o| o["hold_id"] == h).cloned().unwrap_or_default();
    assert_eq!(by_hold(&hold)["status"], "confirmed", "captured before the crash: confirmed, not lost: {orders}");
    assert_eq!(by_hold(&hold3)["status"], "confirmed", "pending before the crash: confirmed when it settled: {orders}");
    assert_eq!(
        by_hold(&hold2)["status"],
        "pending",
        "never reached the gateway: no charge, still in its window: {orders}"
    );
    let captures = ledger().await.iter().filter(|e| e["kind"] == "capture").count();
    assert_eq!(captures, 2, "no double charge");
    let out = Command::new(BIN)
        .args(["audit", "--ledger-url", &gateway])
        .env("BOXOFFICE_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "audit is clean: {}", String::from_utf8_lossy(&out.stdout));
}
