//! The payment gateway simulator and the Stripe-compatible client, over
//! real HTTP on loopback: every test payment method, Stripe's idempotency
//! rules, each fault knob, and the client's retries and circuit breaker.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice::domain::time::FakeClock;
use boxoffice::payments::sim::{Faults, FaultsPatch, LedgerEntry, Simulator};
use boxoffice::payments::{ClientSettings, Gateway, GatewayError, IntentStatus, PaymentRequest, StripeClient};
use serde_json::Value;

struct Rig {
    sim: Simulator,
    base: String,
    clock: FakeClock,
    client: StripeClient,
}

fn quick_settings(base: &str) -> ClientSettings {
    ClientSettings {
        timeout: Duration::from_millis(500),
        max_retries: 3,
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_secs(30),
        ..ClientSettings::new(base, "sk_test_boxoffice")
    }
}

async fn rig_with(api_key: Option<&str>, tune: impl FnOnce(&mut ClientSettings)) -> Rig {
    let clock = FakeClock::starting_now();
    let sim = Simulator::new(Arc::new(clock.clone()), api_key.map(Into::into), Faults::default());
    let base = sim.spawn_loopback().await.unwrap();
    let mut settings = quick_settings(&base);
    tune(&mut settings);
    let client = StripeClient::new(settings, Arc::new(clock.clone())).unwrap();
    Rig { sim, base, clock, client }
}

async fn rig() -> Rig {
    rig_with(None, |_| {}).await
}

fn payment(method: &str, order: &str) -> PaymentRequest {
    PaymentRequest {
        amount: 3000,
        currency: "USD".into(),
        payment_method: method.into(),
        metadata: BTreeMap::from([("order_id".to_owned(), order.to_owned())]),
    }
}

fn captures(ledger: &[LedgerEntry]) -> Vec<&LedgerEntry> {
    ledger.iter().filter(|e| e.kind == "capture").collect()
}

fn patch(sim: &Simulator, p: FaultsPatch) {
    sim.set_faults(p).unwrap();
}

#[tokio::test]
async fn every_test_payment_method_gets_its_named_outcome() {
    let r = rig().await;
    for (i, (method, expected)) in [
        ("pm_card_visa", Ok(IntentStatus::Succeeded)),
        ("pm_card_mastercard", Ok(IntentStatus::Succeeded)),
        ("4242 4242 4242 4242", Ok(IntentStatus::Succeeded)),
        ("pm_card_chargeDeclined", Err("card_declined")),
        ("pm_card_chargeDeclinedInsufficientFunds", Err("insufficient_funds")),
        ("4000000000009995", Err("insufficient_funds")),
        ("pm_card_chargeDeclinedExpiredCard", Err("expired_card")),
        ("pm_card_chargeDeclinedIncorrectCvc", Err("incorrect_cvc")),
        ("pm_card_chargeDeclinedIncorrectNumber", Err("incorrect_number")),
        ("pm_card_chargeDeclinedProcessingError", Err("processing_error")),
        ("pm_card_chargeDeclinedFraudulent", Err("fraudulent")),
        ("pm_card_radarBlock", Err("fraudulent")),
        ("pm_card_threeDSecure2Required", Ok(IntentStatus::RequiresAction)),
        ("pm_card_processing", Ok(IntentStatus::Processing)),
        ("pm_card_unknown", Err("resource_missing")),
    ]
    .into_iter()
    .enumerate()
    {
        let got = r.client.create_payment(&payment(method, &format!("ord_{i}")), &format!("key_{i}")).await;
        match (&got, expected) {
            (Ok(intent), Ok(status)) => {
                assert_eq!(intent.status, status, "{method}");
                assert_eq!(intent.metadata["order_id"], format!("ord_{i}"));
            }
            (Err(e), Err(code)) => {
                assert_eq!(e.failure_code(), code, "{method}: {e}");
                assert!(!e.outcome_unknown(), "{method}: a refusal is definite");
            }
            _ => panic!("{method}: expected {expected:?}, got {got:?}"),
        }
    }
    let ledger = r.sim.ledger();
    assert_eq!(captures(&ledger).len(), 3, "only the three successful methods captured money: {ledger:?}");
}

#[tokio::test]
async fn an_unsupported_currency_fails_clearly() {
    let r = rig().await;
    patch(&r.sim, FaultsPatch { currencies: Some(vec!["eur".into()]), ..Default::default() });
    let err = r.client.create_payment(&payment("pm_card_visa", "ord_c"), "k1").await.unwrap_err();
    assert_eq!(err.failure_code(), "currency_not_supported");
    assert!(matches!(err, GatewayError::Invalid { ref param, .. } if param.as_deref() == Some("currency")));
    assert!(r.sim.ledger().is_empty());
}

#[tokio::test]
async fn a_wrong_amount_capture_is_visible_to_the_caller() {
    let r = rig().await;
    let intent = r.client.create_payment(&payment("pm_card_captureWrongAmount", "ord_w"), "k1").await.unwrap();
    assert_eq!(intent.status, IntentStatus::Succeeded);
    assert_ne!(intent.amount_received, 3000, "the simulator captured a different amount");
    assert_eq!(captures(&r.sim.ledger())[0].amount, intent.amount_received);
}

#[tokio::test]
async fn three_d_secure_completes_when_the_fan_authenticates() {
    let r = rig().await;
    let intent = r.client.create_payment(&payment("pm_card_authenticationRequired", "ord_3ds"), "k1").await.unwrap();
    assert_eq!(intent.status, IntentStatus::RequiresAction);
    let url = intent.action_url().expect("a redirect for the fan").to_owned();
    assert!(url.starts_with(&r.base), "{url}");
    let page = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(page.contains("Complete authentication"));
    assert!(captures(&r.sim.ledger()).is_empty(), "nothing is captured before authentication");
    let done = reqwest::Client::new().post(&url).form(&[("outcome", "succeeded")]).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(r.client.retrieve(&intent.id).await.unwrap().status, IntentStatus::Succeeded);
    assert_eq!(captures(&r.sim.ledger()).len(), 1);
}

#[tokio::test]
async fn pending_and_bank_timeout_payments_settle_later_and_search_finds_them() {
    let r = rig().await;
    let pending = r.client.create_payment(&payment("pm_card_processing", "ord_p"), "k1").await.unwrap();
    assert_eq!(pending.status, IntentStatus::Processing);
    // A bank timeout: the gateway answers 500 to every retry with the same
    // key (the stored response is replayed), so the outcome is unknown.
    let err = r.client.create_payment(&payment("pm_card_bankTimeout", "ord_t"), "k2").await.unwrap_err();
    assert!(err.outcome_unknown(), "{err}");
    // The replayed 500 ended the retries early and is no sign of an
    // unhealthy gateway: one bank's timeout must not open the breaker.
    let err = r.client.create_payment(&payment("pm_card_bankTimeout", "ord_t2"), "k3").await.unwrap_err();
    assert!(err.outcome_unknown(), "{err}");
    assert_eq!(r.client.breaker().state(), boxoffice::payments::breaker::BreakerState::Closed);
    let found = r.client.search_metadata("order_id", "ord_t").await.unwrap();
    assert_eq!(found.len(), 1, "exactly one intent, whatever the retries");
    assert_eq!(found[0].status, IntentStatus::Processing);
    assert!(captures(&r.sim.ledger()).is_empty());
    // Settling is the simulator's own clock passing settle_after_ms.
    r.clock.advance(Duration::from_millis(Faults::default().settle_after_ms));
    assert_eq!(r.client.retrieve(&pending.id).await.unwrap().status, IntentStatus::Succeeded);
    assert_eq!(r.client.retrieve(&found[0].id).await.unwrap().status, IntentStatus::Succeeded);
    assert_eq!(captures(&r.sim.ledger()).len(), 3);
}

#[tokio::test]
async fn a_pending_payment_can_be_settled_as_failed() {
    let r = rig().await;
    let pending = r.client.create_payment(&payment("pm_card_processing", "ord_pf"), "k1").await.unwrap();
    let url = format!("{}/sim/intents/{}/settle", r.base, pending.id);
    let res = reqwest::Client::new().post(&url).form(&[("outcome", "failed")]).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let after = r.client.retrieve(&pending.id).await.unwrap();
    assert_eq!(after.status, IntentStatus::RequiresPaymentMethod);
    assert!(after.last_payment_error.is_some());
    r.clock.advance(Duration::from_secs(3600));
    assert!(r.sim.ledger().is_empty(), "a failed settlement never captures later");
}

async fn raw_post(base: &str, key: &str, body: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/payment_intents"))
        .bearer_auth("sk_test_raw")
        .header("Idempotency-Key", key)
        .form(body)
        .send()
        .await
        .unwrap();
    let replayed = res.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
    (res.status().as_u16(), replayed, res.json().await.unwrap())
}

#[tokio::test]
async fn idempotency_replays_the_first_response_including_500s_and_refuses_other_parameters() {
    let r = rig().await;
    let visa = [("amount", "3000"), ("currency", "usd"), ("payment_method", "pm_card_visa"), ("confirm", "true")];
    let (s1, replay1, first) = raw_post(&r.base, "key-a", &visa).await;
    assert_eq!((s1, replay1), (200, None));
    let (s2, replay2, second) = raw_post(&r.base, "key-a", &visa).await;
    assert_eq!((s2, replay2.as_deref()), (200, Some("true")));
    assert_eq!(first, second, "the stored response, byte for byte");
    let mut other = visa;
    other[0] = ("amount", "4000");
    let (s3, _, err) = raw_post(&r.base, "key-a", &other).await;
    assert_eq!(s3, 400);
    assert_eq!(err["error"]["type"], "idempotency_error");
    assert_eq!(captures(&r.sim.ledger()).len(), 1, "one key, one charge");

    let timeout =
        [("amount", "3000"), ("currency", "usd"), ("payment_method", "pm_card_bankTimeout"), ("confirm", "true")];
    let (t1, _, b1) = raw_post(&r.base, "key-b", &timeout).await;
    let (t2, replayed, b2) = raw_post(&r.base, "key-b", &timeout).await;
    assert_eq!((t1, t2), (500, 500));
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(b1, b2);
    // A decline is stored and replayed too.
    let declined =
        [("amount", "3000"), ("currency", "usd"), ("payment_method", "pm_card_chargeDeclined"), ("confirm", "true")];
    let (d1, _, db1) = raw_post(&r.base, "key-c", &declined).await;
    let (d2, _, db2) = raw_post(&r.base, "key-c", &declined).await;
    assert_eq!((d1, d2), (402, 402));
    assert_eq!(db1, db2);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_make_one_payment() {
    let r = rig().await;
    // The first request holds its key for 300 ms; the others arrive meanwhile.
    patch(&r.sim, FaultsPatch { latency_ms: Some(300), ..Default::default() });
    let n = 20;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, base) = (barrier.clone(), r.base.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                raw_post(
                    &base,
                    "same-key",
                    &[("amount", "3000"), ("currency", "usd"), ("payment_method", "pm_card_visa"), ("confirm", "true")],
                )
                .await
            })
        })
        .collect();
    let mut ok_ids = HashSet::new();
    let mut in_use = 0;
    for t in tasks {
        let (status, replayed, body) = t.await.unwrap();
        match status {
            200 => {
                ok_ids.insert(body["id"].as_str().unwrap().to_owned());
                let _ = replayed;
            }
            409 => {
                assert_eq!(body["error"]["code"], "idempotency_key_in_use");
                in_use += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok_ids.len(), 1, "every success is the same payment");
    assert!(in_use >= 1, "requests that overlapped the first were told the key is in use");
    assert_eq!(captures(&r.sim.ledger()).len(), 1, "exactly one charge");
}

#[tokio::test]
async fn a_lost_response_is_recovered_by_retrying_with_the_same_key() {
    let r = rig().await;
    patch(&r.sim, FaultsPatch { drop_responses_next: Some(1), ..Default::default() });
    let intent = r.client.create_payment(&payment("pm_card_visa", "ord_lost"), "k-lost").await.unwrap();
    assert_eq!(intent.status, IntentStatus::Succeeded);
    let ledger = r.sim.ledger();
    assert_eq!(captures(&ledger).len(), 1, "the retry got the stored result, not a second charge");
    assert_eq!(captures(&ledger)[0].payment_intent, intent.id);
}

#[tokio::test]
async fn a_late_response_times_out_and_the_retry_gets_the_stored_result() {
    let r = rig_with(None, |s| s.timeout = Duration::from_millis(200)).await;
    patch(&r.sim, FaultsPatch { slow_responses_next: Some(1), slow_response_ms: Some(5_000), ..Default::default() });
    let started = Instant::now();
    let intent = r.client.create_payment(&payment("pm_card_visa", "ord_slow"), "k-slow").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "the client gave up on the slow answer and retried");
    assert_eq!(intent.status, IntentStatus::Succeeded);
    assert_eq!(captures(&r.sim.ledger()).len(), 1);
}

#[tokio::test]
async fn lost_responses_on_every_try_leave_the_outcome_unknown_but_charged_once() {
    let r = rig().await;
    patch(&r.sim, FaultsPatch { drop_responses_next: Some(10), ..Default::default() });
    let err = r.client.create_payment(&payment("pm_card_visa", "ord_gone"), "k-gone").await.unwrap_err();
    assert!(err.outcome_unknown(), "{err}");
    patch(&r.sim, FaultsPatch { drop_responses_next: Some(0), ..Default::default() });
    // Four lost answers in a row opened the breaker; reconciliation runs
    // after its cooldown.
    assert_eq!(r.client.breaker().state(), boxoffice::payments::breaker::BreakerState::Open);
    r.clock.advance(Duration::from_secs(30));
    // What reconciliation does: ask the gateway by order.
    let found = r.client.search_metadata("order_id", "ord_gone").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].status, IntentStatus::Succeeded);
    assert_eq!(captures(&r.sim.ledger()).len(), 1);
}

#[tokio::test]
async fn rate_limits_are_backed_off_and_retried_and_never_mistaken_for_unknown_outcomes() {
    let r = rig().await;
    patch(&r.sim, FaultsPatch { rate_limit_next: Some(2), ..Default::default() });
    let intent = r.client.create_payment(&payment("pm_card_visa", "ord_rl"), "k-rl").await.unwrap();
    assert_eq!(intent.status, IntentStatus::Succeeded);
    patch(&r.sim, FaultsPatch { rate_limit_next: Some(100), ..Default::default() });
    let err = r.client.create_payment(&payment("pm_card_visa", "ord_rl2"), "k-rl2").await.unwrap_err();
    assert!(matches!(err, GatewayError::Unavailable(_)), "a 429 never ran, so it is definite: {err}");
    assert_eq!(r.client.breaker().state(), boxoffice::payments::breaker::BreakerState::Closed, "429s do not trip it");
    assert_eq!(captures(&r.sim.ledger()).len(), 1);
}

#[tokio::test]
async fn an_outage_opens_the_breaker_which_then_answers_at_once_until_a_probe_succeeds() {
    let r = rig_with(None, |s| s.max_retries = 0).await;
    patch(&r.sim, FaultsPatch { outage: Some(true), ..Default::default() });
    for i in 0..3 {
        let err = r.client.create_payment(&payment("pm_card_visa", "ord_o"), &format!("k-o{i}")).await.unwrap_err();
        assert!(err.outcome_unknown(), "a 503 may come after the work was done: {err}");
    }
    // The gateway is healthy again, but the open breaker does not send:
    // if it did, this payment would succeed.
    patch(&r.sim, FaultsPatch { outage: Some(false), ..Default::default() });
    let err = r.client.create_payment(&payment("pm_card_visa", "ord_o"), "k-o3").await.unwrap_err();
    assert!(matches!(err, GatewayError::CircuitOpen { .. }), "{err}");
    assert!(!err.outcome_unknown(), "nothing was sent");
    assert!(captures(&r.sim.ledger()).is_empty());
    r.clock.advance(Duration::from_secs(30));
    let intent = r.client.create_payment(&payment("pm_card_visa", "ord_o"), "k-o3").await.unwrap();
    assert_eq!(intent.status, IntentStatus::Succeeded);
    assert_eq!(r.client.breaker().state(), boxoffice::payments::breaker::BreakerState::Closed);
}

#[tokio::test]
async fn refunds_and_cancels_follow_the_gateway_rules() {
    let r = rig().await;
    let paid = r.client.create_payment(&payment("pm_card_visa", "ord_r"), "k1").await.unwrap();
    let part = r.client.refund(&paid.id, Some(1000), "r1").await.unwrap();
    assert_eq!(part.amount, 1000);
    let again = r.client.refund(&paid.id, Some(1000), "r1").await.unwrap();
    assert_eq!(again.id, part.id, "a refund retried with its key is the same refund");
    let rest = r.client.refund(&paid.id, None, "r2").await.unwrap();
    assert_eq!(rest.amount, 2000);
    let err = r.client.refund(&paid.id, None, "r3").await.unwrap_err();
    assert_eq!(err.failure_code(), "charge_already_refunded");
    let err = r.client.cancel(&paid.id, "c1").await.unwrap_err();
    assert_eq!(err.failure_code(), "payment_intent_unexpected_state");
    let action = r.client.create_payment(&payment("pm_card_threeDSecure2Required", "ord_c"), "k2").await.unwrap();
    assert_eq!(r.client.cancel(&action.id, "c2").await.unwrap().status, IntentStatus::Canceled);
    let ledger = r.sim.ledger();
    let refunded: i64 = ledger.iter().filter(|e| e.kind == "refund").map(|e| e.amount).sum();
    assert_eq!((captures(&ledger).len(), refunded), (1, 3000));
    assert!(matches!(r.client.retrieve("pi_missing").await, Err(GatewayError::NotFound(_))));
}

#[tokio::test]
async fn search_lists_every_intent_of_an_order_oldest_first() {
    let r = rig().await;
    let a = r.client.create_payment(&payment("pm_card_visa", "ord_dup"), "k1").await.unwrap();
    r.clock.advance(Duration::from_secs(2));
    let b = r.client.create_payment(&payment("pm_card_visa", "ord_dup"), "k2").await.unwrap();
    r.client.create_payment(&payment("pm_card_visa", "ord_other"), "k3").await.unwrap();
    let found: Vec<String> =
        r.client.search_metadata("order_id", "ord_dup").await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(found, vec![a.id, b.id]);
}

#[tokio::test]
async fn a_wrong_api_key_is_refused_definitely() {
    let r = rig_with(Some("sk_expected"), |_| {}).await;
    let err = r.client.create_payment(&payment("pm_card_visa", "ord_k"), "k1").await.unwrap_err();
    assert_eq!(err.failure_code(), "api_key_invalid");
    assert!(!err.outcome_unknown());
    assert!(r.sim.ledger().is_empty());
}

#[tokio::test]
async fn fault_knobs_change_at_runtime_over_http() {
    let r = rig().await;
    let http = reqwest::Client::new();
    let res = http
        .patch(format!("{}/sim/config", r.base))
        .json(&serde_json::json!({"rate_limit_rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "a rate above 1 is refused");
    let res = http
        .patch(format!("{}/sim/config", r.base))
        .json(&serde_json::json!({"latency_ms": 7, "outage_for_ms": 60000}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cfg: Value = http.get(format!("{}/sim/config", r.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(cfg["latency_ms"], 7);
    assert!(cfg["outage_until_ms"].as_i64().is_some());
    let (status, _, body) = raw_post(
        &r.base,
        "k",
        &[("amount", "3000"), ("currency", "usd"), ("payment_method", "pm_card_visa"), ("confirm", "true")],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    r.clock.advance(Duration::from_secs(61));
    let (status, _, _) = raw_post(
        &r.base,
        "k",
        &[("amount", "3000"), ("currency", "usd"), ("payment_method", "pm_card_visa"), ("confirm", "true")],
    )
    .await;
    assert_eq!(status, 200, "the outage window ended, and the 503 was not stored under the key");
    let ledger: Value = http.get(format!("{}/sim/ledger", r.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ledger["entries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_call_gives_up_at_its_deadline_with_the_outcome_unknown() {
    let r = rig_with(None, |s| {
        s.timeout = Duration::from_millis(200);
        s.deadline = Duration::from_millis(500);
        s.max_retries = 10;
        s.breaker_threshold = 100;
    })
    .await;
    // Three slow answers fill the deadline; without it, the fourth try
    // would get the stored success.
    patch(&r.sim, FaultsPatch { slow_responses_next: Some(3), slow_response_ms: Some(5_000), ..Default::default() });
    let err = r.client.create_payment(&payment("pm_card_visa", "ord_deadline"), "k-deadline").await.unwrap_err();
    assert!(err.outcome_unknown(), "{err}");
    assert_eq!(captures(&r.sim.ledger()).len(), 1, "it did charge; only reconciliation can know");
}

#[tokio::test]
async fn a_share_of_slow_answers_is_absorbed_by_same_key_retries() {
    let r = rig_with(None, |s| s.timeout = Duration::from_millis(150)).await;
    // Every answer is late until the rate is lifted; the payment ran once.
    patch(&r.sim, FaultsPatch { slow_response_rate: Some(1.0), slow_response_ms: Some(2_000), ..Default::default() });
    let err = r.client.create_payment(&payment("pm_card_visa", "ord_rate"), "k-rate").await.unwrap_err();
    assert!(err.outcome_unknown(), "{err}");
    patch(&r.sim, FaultsPatch { slow_response_rate: Some(0.0), ..Default::default() });
    r.clock.advance(Duration::from_secs(30)); // the breaker's cooldown
    let paid = r.client.create_payment(&payment("pm_card_visa", "ord_rate"), "k-rate").await.unwrap();
    assert_eq!(paid.status, IntentStatus::Succeeded);
    assert_eq!(captures(&r.sim.ledger()).len(), 1, "the same key never charged twice");
}
